#!/usr/bin/env bash
# stp-timeout: 240
# No descriptor leaks: the proxy's open file descriptors (/proc/PID/fd) are as many after
# 1,000 SMTP sessions as before them. The sessions (tools/smtp_storm.py, 8 at a time) mix
# every way a session ends: messages delivered through an inject route (plaintext client,
# STARTTLS verified toward an aiosmtpd sink) and through a terminate route (STARTTLS from
# the client, plaintext upstream), clients gone mid-DATA, mid-command and before the
# greeting, a reset after RSET, and a route whose upstream is unreachable (421, close).
# The count before is taken once the proxy is ready and one session of each kind has run
# (descriptors a library opens on first use, once, are not leaks); the count after once
# /metrics says no session is open on any route (a bounded poll) and every listener,
# worker and admin socket is still there.
#   fds_settled             the count is stable before the run (two reads agree)
#   storm_sessions_ok       every session ended the way its kind must (delivered ones: 250
#                           after the message and 221)
#   sink_got_messages       the sink stored the delivered messages (all of them)
#   sessions_all_closed     starttls_proxy_connections_active is 0 on every route
#   fd_count_unchanged      the descriptor count after equals the count before
#   proxy_clean_exit        SIGTERM: exit 0 (finish)
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/smtp_lib.sh
. "$(dirname "$0")/smtp_lib.sh"

N=${STP_FD_SESSIONS:-1000}

start_sink tls_sink --cert "$CERTS/server.pem" --key "$CERTS/server.key"
start_sink plain_sink
free_port P_INJ
free_port P_TERM
free_port P_DEAD
free_port P_NOBODY # nothing ever listens here: the dead route's upstream
free_port P_ADM
cat >"$T/p.conf" <<CONF
$(global_section "admin_listen = 127.0.0.1:$P_ADM" | sed 's/^log_level = .*/log_level = info/')
[route inject]
listen = 127.0.0.1:$P_INJ
protocol = smtp
client_tls = none
upstream = 127.0.0.1:$(port_of tls_sink)
upstream_tls = starttls
upstream_policy = verify
upstream_name = localhost

[route terminate]
listen = 127.0.0.1:$P_TERM
protocol = smtp
client_tls = starttls
upstream = 127.0.0.1:$(port_of plain_sink)
upstream_tls = none

[route dead]
listen = 127.0.0.1:$P_DEAD
protocol = smtp
client_tls = none
upstream = 127.0.0.1:$P_NOBODY
upstream_tls = none
CONF
start_proxy "$T/p.conf"

fd_count() { find "/proc/$PROXY/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }

# active_total: the sum of starttls_proxy_connections_active over every route, "" when
# /metrics cannot be read or has no such sample.
active_total() {
	curl -sf --max-time 5 "http://127.0.0.1:$P_ADM/metrics" |
		awk '/^starttls_proxy_connections_active\{/ { s += $NF; n++ } END { if (n) print s }'
}

# wait_idle SECS: until every route reports 0 open sessions (status 1 after SECS).
wait_idle() {
	local t=$1 i=0 v
	while :; do
		v=$(active_total)
		[ "$v" = 0 ] && return 0
		[ $i -ge $((t * 10)) ] && { note "connections_active still '${v}' after ${t}s"; return 1; }
		sleep 0.1
		i=$((i + 1))
	done
}

storm() { # PORT COUNT KINDS [more smtp_storm.py options]
	local port=$1 count=$2 kinds=$3
	shift 3
	"$SMTP_PY" "$TOOLS/smtp_storm.py" --port "$port" --dead-port "$P_DEAD" --count "$count" \
		--tls-ca "$CERTS/ca.pem" --kinds "$kinds" "$@"
}

INJ_KINDS=ok,abort_data,abort_ehlo,abort_now,rset,dead
TERM_KINDS=starttls,ok,abort_data,abort_now,dead

# Warm-up: one of each kind on each route, then the count before.
if ! storm "$P_INJ" 6 "$INJ_KINDS" >"$T/warm1.json" 2>&1 ||
	! storm "$P_TERM" 5 "$TERM_KINDS" >"$T/warm2.json" 2>&1; then
	fail warmup "$(cat "$T/warm1.json" "$T/warm2.json" 2>/dev/null | tail -n 2)"
	finish
fi
wait_idle 20 || { fail warmup_idle "sessions still open after the warm-up"; finish; }
before=$(fd_count)
again=$(fd_count)
if [ "$before" -gt 0 ] && [ "$before" = "$again" ]; then
	pass fds_settled
else
	fail fds_settled "two reads of /proc/$PROXY/fd: $before, $again"
fi
note "descriptors before: $before"
ls -l "/proc/$PROXY/fd" >"$T/fds.before" 2>/dev/null

# The run: N sessions, 3/5 on the inject route and 2/5 on the terminate route, at once.
n_inj=$((N * 3 / 5))
n_term=$((N - n_inj))
t0=$(now_ns)
storm "$P_INJ" "$n_inj" "$INJ_KINDS" >"$T/storm1.json" 2>&1 &
s1=$!
storm "$P_TERM" "$n_term" "$TERM_KINDS" >"$T/storm2.json" 2>&1
r2=$?
wait "$s1"
r1=$?
note "$N sessions in $(elapsed_since "$t0")s: inject: $(json_get summary <"$T/storm1.json"); terminate: $(json_get summary <"$T/storm2.json")"
if [ "$r1" -eq 0 ] && [ "$r2" -eq 0 ]; then
	pass storm_sessions_ok
else
	fail storm_sessions_ok "$(tail -n 1 "$T/storm1.json") $(tail -n 1 "$T/storm2.json")"
fi

# Delivered messages: the ok kind on both routes and starttls on the terminate route
# (warm-up included), each stored by its sink.
want_tls=$(( (n_inj + 5) / 6 + 1 ))
want_plain=$(( (n_term + 4) / 5 + (n_term + 3) / 5 + 2 ))
i=0
while [ "$(msg_count "$T/tls_sink.store")" -lt "$want_tls" ] ||
	[ "$(msg_count "$T/plain_sink.store")" -lt "$want_plain" ]; do
	[ $i -ge 100 ] && break
	sleep 0.1
	i=$((i + 1))
done
got_tls=$(msg_count "$T/tls_sink.store")
got_plain=$(msg_count "$T/plain_sink.store")
if [ "$got_tls" = "$want_tls" ] && [ "$got_plain" = "$want_plain" ]; then
	pass sink_got_messages
else
	fail sink_got_messages "tls sink $got_tls of $want_tls, plain sink $got_plain of $want_plain"
fi

if wait_idle 30; then
	pass sessions_all_closed
else
	fail sessions_all_closed "$(curl -sf "http://127.0.0.1:$P_ADM/metrics" | grep connections_active)"
fi
after=$(fd_count)
note "descriptors after: $after"
if [ "$after" = "$before" ]; then
	pass fd_count_unchanged
else
	ls -l "/proc/$PROXY/fd" >"$T/fds.after" 2>/dev/null
	fail fd_count_unchanged "$before before, $after after: $(diff "$T/fds.before" "$T/fds.after" |
		grep '^[<>]' | sed 's/.* \([0-9]*\) -> /\1 -> /' | head -n 6 | tr '\n' ' ')"
fi
finish
