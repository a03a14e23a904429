#!/usr/bin/env bash
# SIGHUP during a 2,000-session load: Postfix's smtp-source sends 2,000 messages, one
# session each, 20 at a time (about 4 s on a quiet machine, long enough for 8 reloads), through an injecting route (plaintext client, STARTTLS
# verified toward a TLS sink; two workers), while the proxy is reloaded four times a
# second (at least 8 reloads), each reload also swapping the certificate of a second route. Zero failed
# sessions: smtp-source (which stops at the first unexpected reply) exits 0 and reports
# nothing, the sink holds exactly 2,000 messages, every reload succeeded, and every
# session the proxy closed ended with the client's QUIT.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/smtp_lib.sh
. "$(dirname "$0")/smtp_lib.sh"

if ! command -v smtp-source >/dev/null; then
	fail smtp_source_installed "smtp-source not found (Debian postfix: bash scripts/deps.sh test)"
	exit 1
fi
MESSAGES=${STP_STORM_MESSAGES:-2000}
start_sink tlssink --cert "$CERTS/server.pem" --key "$CERTS/server.key"
free_port PI; free_port PT
cp "$CERTS/server.pem" "$T/live.pem"
cp "$CERTS/server.key" "$T/live.key"
conf=$T/storm.conf
{
	global_section "log_level = info" | sed 's/^workers = 1$/workers = 2/; /^log_level = debug$/d'
	cat <<EOF
[route inject]
listen = 127.0.0.1:$PI
protocol = smtp
upstream = 127.0.0.1:$(port_of tlssink)
upstream_tls = starttls
upstream_policy = verify
upstream_name = localhost

[route tls]
listen = 127.0.0.1:$PT
protocol = smtp
client_tls = starttls
cert = $T/live.pem
key = $T/live.key
upstream = 127.0.0.1:$(port_of tlssink)
EOF
} >"$conf"
start_proxy "$conf"

smtp-source -s 20 -m "$MESSAGES" -l 2000 -f storm@client.test -t someone@dest.test \
	-M storm.client.test "127.0.0.1:$PI" >"$T/source.out" 2>&1 &
SRC=$!
PIDS+=("$SRC")
reloads=0
while kill -0 "$SRC" 2>/dev/null; do
	if [ $((reloads % 2)) = 0 ]; then
		cp "$CERTS/wildcard.pem" "$T/live.pem"; cp "$CERTS/wildcard.key" "$T/live.key"
	else
		cp "$CERTS/server.pem" "$T/live.pem"; cp "$CERTS/server.key" "$T/live.key"
	fi
	kill -HUP "$PROXY"
	reloads=$((reloads + 1))
	if ! wait_count 'event=reload result=ok' "$reloads" 10; then
		fail "reload_$reloads" "$(log_line 'event=reload')"
		break
	fi
	# a quarter of a second between reloads (four times what the issue asks), or less when
	# the load ends
	for _ in $(seq 3); do
		kill -0 "$SRC" 2>/dev/null || break
		sleep 0.1
	done
done
src_rc=0
wait "$SRC" || src_rc=$?
note "$reloads reloads during the load"
if [ "$src_rc" = 0 ] && [ ! -s "$T/source.out" ]; then
	pass smtp_source_no_failure
else
	fail smtp_source_no_failure "exit $src_rc: $(tail -n 3 "$T/source.out")"
fi
check reloads_during_load test "$reloads" -ge 8
check all_reloads_ok test "$(log_count 'event=reload result=ok')" -eq "$reloads"
# every message, exactly once
i=0
while [ "$(msg_count "$T/tlssink.store")" -lt "$MESSAGES" ] && [ $i -lt 100 ]; do
	sleep 0.1
	i=$((i + 1))
done
check all_messages_delivered test "$(msg_count "$T/tlssink.store")" -eq "$MESSAGES"
closes=$(log_count 'route=inject .*event=close ')
quits=$(log_count 'route=inject .*event=close reason=quit ')
if [ "$closes" -eq "$MESSAGES" ] && [ "$quits" -eq "$closes" ]; then
	pass every_session_ended_by_quit
else
	fail every_session_ended_by_quit "$closes sessions closed, $quits by QUIT: $(grep 'route=inject .*event=close ' "$PROXY_LOG" | grep -v 'reason=quit ' | head -n 2)"
fi
finish
