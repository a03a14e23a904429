#!/usr/bin/env bash
# stp-timeout: 300
# Memcheck on the real binary: the proxy runs under valgrind (--leak-check=full, definite
# and indirect leaks count as errors, --error-exitcode=99) through an integration subset,
# a reload and a clean stop, and valgrind must find nothing:
#   - SMTP inject (plaintext client, STARTTLS verified toward aiosmtpd): messages, clients
#     gone mid-DATA, mid-command and before the greeting, a reset after RSET;
#   - SMTP terminate (STARTTLS from the client, plaintext aiosmtpd): messages over TLS and
#     in plaintext, clients gone mid-DATA;
#   - a route whose upstream is unreachable (421 4.4.1);
#   - a tcp route wrapping a plaintext client into TLS toward an echo server;
#   - a PROXY protocol v1 route (SMTP after the header), and lines that are no header;
#   - POP3 inject toward a private Dovecot that requires STLS (dovecot_lib.sh);
#   - SIGHUP (event=reload result=ok), a few sessions more, then SIGTERM.
# Checks:
#   *_sessions_ok          every session of that kind ended as it must (tools/smtp_storm.py)
#   pop3_sessions_ok       USER, PASS, LIST, RETR, QUIT through the proxy, each time
#   reloaded               event=reload result=ok after SIGHUP
#   after_reload_ok        sessions still work after the reload
#   valgrind_exit_0        SIGTERM: valgrind's exit status is 0 (99: it found errors)
#   valgrind_no_errors     its log says "ERROR SUMMARY: 0 errors"
#   valgrind_no_leaks      no block definitely or indirectly lost
# Suppressions: tests/integration/tools/valgrind.supp (each entry says why; none of them
# names a frame of src/).
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/smtp_lib.sh
. "$(dirname "$0")/smtp_lib.sh"
# shellcheck source=tests/integration/dovecot_lib.sh
. "$(dirname "$0")/dovecot_lib.sh"

# make deps installs valgrind and Dovecot: their absence is a failure, not a skip
if ! command -v valgrind >/dev/null; then
	fail valgrind "valgrind is not installed (make deps installs it)"
	exit 1
fi
if is_sanitized; then
	skip valgrind "the binary is built with ASan: valgrind cannot run it"
	exit 0
fi

VG_LOG=$T/valgrind.log
SUPP=$TOOLS/valgrind.supp

start_sink tls_sink --cert "$CERTS/server.pem" --key "$CERTS/server.key"
start_sink plain_sink
start_server echo_up --mode echo --cert "$CERTS/server.pem" --key "$CERTS/server.key"
wait_servers
HAVE_DOVECOT=0
if ! command -v dovecot >/dev/null; then
	fail dovecot "dovecot is not installed (make deps installs it)"
	exit 1
else
	HAVE_DOVECOT=1
	dovecot_mailstore
	free_port DV_TLS
	dovecot_start tls required "$DV_TLS"
fi
free_port P_INJ
free_port P_TERM
free_port P_DEAD
free_port P_NOBODY # nothing listens here: the dead route's upstream
free_port P_WRAP
free_port P_PP
free_port P_POP

conf() {
	# shellcheck disable=SC2119 # no extra [global] lines
	global_section | sed 's/^log_level = .*/log_level = info/'
	cat <<CONF
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
upstream = 127.0.0.1:$P_NOBODY
upstream_tls = none

[route wrap]
listen = 127.0.0.1:$P_WRAP
protocol = tcp
upstream = 127.0.0.1:$(port_of echo_up)
upstream_tls = implicit
upstream_policy = verify
upstream_name = localhost

[route pp]
listen = 127.0.0.1:$P_PP
protocol = smtp
upstream = 127.0.0.1:$(port_of plain_sink)
upstream_tls = none
proxy_protocol_in = v1
CONF
	if [ "$HAVE_DOVECOT" = 1 ]; then
		cat <<CONF

[route pop3]
listen = 127.0.0.1:$P_POP
protocol = pop3
client_tls = none
upstream = 127.0.0.1:$DV_TLS
upstream_tls = starttls
upstream_policy = verify
upstream_name = localhost
CONF
	fi
}
conf >"$T/p.conf"

# The proxy under valgrind: its own log in $T/proxy.log, valgrind's in $VG_LOG. Valgrind
# starts slowly: up to 120 s for event=ready.
PROXY_NAMES+=(proxy)
spawn proxy valgrind --tool=memcheck --leak-check=full \
	--show-leak-kinds=definite,indirect --errors-for-leak-kinds=definite,indirect \
	--error-exitcode=99 --track-fds=no --num-callers=30 --suppressions="$SUPP" \
	--log-file="$VG_LOG" "$STP_BIN" -c "$T/p.conf"
PROXY=$LAST_PID
PROXY_LOG=$T/proxy.log
PROXY_PID[proxy]=$PROXY
i=0
while ! grep -q 'event=ready' "$PROXY_LOG" 2>/dev/null; do
	if ! kill -0 "$PROXY" 2>/dev/null || [ $i -ge 1200 ]; then
		fail start_under_valgrind "no event=ready (exited, or 120s): $(tail -n 3 "$PROXY_LOG" 2>/dev/null) $(grep -m3 -E 'ERROR|Invalid|error' "$VG_LOG" 2>/dev/null)"
		exit 1
	fi
	sleep 0.1
	i=$((i + 1))
done
pass start_under_valgrind

storm() { # NAME PORT COUNT KINDS [options]
	local name=$1 port=$2 count=$3 kinds=$4
	shift 4
	"$SMTP_PY" "$TOOLS/smtp_storm.py" --port "$port" --dead-port "$P_DEAD" --count "$count" \
		--tls-ca "$CERTS/ca.pem" --kinds "$kinds" --parallel 4 --timeout 60 "$@" \
		>"$T/$name.json" 2>&1
}
storm_bg() { # NAME ...: storm in the background; storm_check NAME waits and reports
	local name=$1
	storm "$@" &
	STORM_PID[$name]=$!
}
declare -A STORM_PID=()
storm_check() {
	local name=$1
	if wait "${STORM_PID[$name]}"; then
		pass "${name}_sessions_ok"
		note "$name: $(json_get summary <"$T/$name.json")"
	else
		fail "${name}_sessions_ok" "$(tail -n 1 "$T/$name.json")"
	fi
}

pop3_sessions() { # COUNT: sequential (one maildir: Dovecot locks it per session)
	"$SMTP_PY" - "$P_POP" "$1" <<'PY'
import poplib, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
for i in range(n):
    p = poplib.POP3("127.0.0.1", port, timeout=60)
    p.user("alice")
    p.pass_("secret")
    resp, items, _ = p.list()
    if len(items) != 2:
        sys.exit("session %d: LIST gave %r" % (i, items))
    resp, lines, _ = p.retr(2)
    if b"Second message." not in lines:
        sys.exit("session %d: RETR 2 gave %r" % (i, lines[:5]))
    p.quit()
print("ok")
PY
}

t0=$(now_ns)
storm_bg inject "$P_INJ" 144 ok,abort_data,abort_ehlo,abort_now,rset,dead
storm_bg terminate "$P_TERM" 120 starttls,ok,abort_data,abort_now,dead
storm_bg wrap "$P_WRAP" 72 echo,echo,abort_now
storm_bg pp "$P_PP" 72 ok,abort_data,pp_garbage --pp-v1
if [ "$HAVE_DOVECOT" = 1 ]; then
	if out=$(pop3_sessions 24 2>&1); then
		pass pop3_sessions_ok
	else
		fail pop3_sessions_ok "$(tail -n 2 <<<"$out")"
	fi
else
	skip pop3_sessions_ok "dovecot is not installed (make deps)"
fi
for n in inject terminate wrap pp; do storm_check "$n"; done
note "sessions under valgrind: $(elapsed_since "$t0")s"

# Reload, then a few sessions through the new configuration.
kill -HUP "$PROXY"
expect_log reloaded 'event=reload result=ok' 60
storm_bg after "$P_INJ" 6 ok,abort_data,dead
storm_bg after_term "$P_TERM" 4 starttls,abort_now
if wait "${STORM_PID[after]}" && wait "${STORM_PID[after_term]}"; then
	pass after_reload_ok
else
	fail after_reload_ok "$(tail -n 1 "$T/after.json") $(tail -n 1 "$T/after_term.json")"
fi

# SIGTERM: valgrind writes its report as the proxy exits.
if stop_proxy proxy 120; then
	pass valgrind_exit_0
else
	fail valgrind_exit_0 "exit status $STOP_STATUS (99: valgrind found errors)"
fi
if grep -q 'ERROR SUMMARY: 0 errors' "$VG_LOG"; then
	pass valgrind_no_errors
else
	fail valgrind_no_errors "$(grep -m1 'ERROR SUMMARY' "$VG_LOG" || echo "no ERROR SUMMARY in $VG_LOG")"
fi
# "definitely lost: 0 bytes in 0 blocks" (or no leak summary at all: every block freed)
lost=$(grep -E '(definitely|indirectly) lost: [1-9]' "$VG_LOG")
if [ -z "$lost" ] && grep -Eq 'All heap blocks were freed|definitely lost: 0 bytes' "$VG_LOG"; then
	pass valgrind_no_leaks
else
	fail valgrind_no_leaks "${lost:-no leak summary in $VG_LOG}"
fi
if [ "$N_FAIL" -gt 0 ]; then
	echo "  --- valgrind's report (first errors) ---"
	grep -E '^==[0-9]+== ' "$VG_LOG" | sed -n '1,80p' | sed 's/^/  | /'
fi
finish
