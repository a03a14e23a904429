#!/usr/bin/env bash
# SIGTERM with SMTP sessions open: an idle session (between transactions) gets
# "421 4.3.2 ... shutting down" at once instead of waiting out drain_timeout; a session in
# the middle of a message finishes it (250, the message delivered), then gets its 421; the
# log counts the sessions (event=drain) and the process exits long before drain_timeout.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/smtp_lib.sh
. "$(dirname "$0")/smtp_lib.sh"

start_sink sink
free_port P
{
	global_section | sed 's/^drain_timeout = .*/drain_timeout = 20s/'
	cat <<EOF
[route in]
listen = 127.0.0.1:$P
protocol = smtp
upstream = 127.0.0.1:$(port_of sink)
upstream_tls = none
EOF
} >"$T/p.conf"
start_proxy "$T/p.conf"
make_message "$T/m" drain1

# A: greeted, EHLO, then waits for whatever comes (the 421), then the close.
smtp_dialog_to "$T/a.json" --connect "127.0.0.1:$P" --timeout 15 expect:220 \
	cmd:250:"EHLO idle.test" expect:421:"shutting down" closed:5 &
PIDS+=("$!")
A=$!
# B: in DATA when the drain starts; sends its message 3 s later.
smtp_dialog_to "$T/b.json" --connect "127.0.0.1:$P" --timeout 15 expect:220 \
	cmd:250:"EHLO busy.test" cmd:250:"MAIL FROM:<a@client.test>" \
	cmd:250:"RCPT TO:<b@dest.test>" cmd:354:DATA sleep:3 "data:$T/m" expect:250 \
	expect:421:"shutting down" closed:5 &
PIDS+=("$!")
B=$!
wait_log 'event=smtp_command verb=EHLO' 10 && wait_count 'event=smtp_command verb=EHLO' 2 10 &&
	wait_log 'event=smtp_state side=client from=wait-data to=body' 10 ||
	fail setup "the two sessions did not get in place: $(tail -n 5 "$PROXY_LOG")"
T0=$(now_ns)
kill -TERM "$PROXY"
check drain_logged wait_log 'event=drain worker=0 sessions=2 idle_closed=1' 5
wait "$A"
check idle_session_gets_421 grep -q '"ok": true' "$T/a.json"
IDLE_CLOSED=$(elapsed_since "$T0")
check idle_closed_at_once awk -v t="$IDLE_CLOSED" 'BEGIN { exit !(t < 2.5) }'
wait "$B"
check busy_session_finishes_then_421 grep -q '"ok": true' "$T/b.json"
check message_delivered wait_tag "$T/sink.store" drain1 5
if wait_proxy_exit proxy 15; then
	pass exit_before_drain_timeout
else
	fail exit_before_drain_timeout "status $STOP_STATUS after ${STOP_SECS}s"
fi
check exit_well_before_timeout awk -v t="$(elapsed_since "$T0")" 'BEGIN { exit !(t < 10) }'
check no_drain_timeout sh -c "! grep -q 'event=drain_timeout' '$PROXY_LOG'"
finish
