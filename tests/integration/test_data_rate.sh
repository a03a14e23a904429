#!/usr/bin/env bash
# min_data_rate (smtp, lmtp): a client that trickles its message data is cut off once it falls
# behind the rate, with line_timeout as the most time it may bank; its message is never
# acknowledged and never completed at the upstream. Against tools/smtp_fake.py upstreams:
#  - DATA trickled at 20 octets/s against min_data_rate = 100 and line_timeout = 2s: 421 4.4.2
#    about 2.4 s after the 354, the connection closes, "event=close reason="data timeout"";
#    the upstream got the DATA command and never a message;
#  - the same with a BDAT chunk;
#  - a client that sends at 200 octets/s for longer than line_timeout is not cut: delivered;
#  - min_data_rate = 0: the same trickle as the first case is delivered (no bound);
#  - an upstream that reads nothing for 4 s while a 12 MiB message comes fast: the proxy
#    stops reading the client meanwhile, which is not the client's time: delivered.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/smtp_lib.sh
. "$(dirname "$0")/smtp_lib.sh"

start_fake up --starttls none --caps CHUNKING
start_fake slowup --starttls none --caps CHUNKING
start_fake stall --starttls none --pause-in-data 4
free_port PR; free_port PN; free_port PS
conf=$T/rate.conf
# route NAME PORT UPSTREAM MIN_DATA_RATE
route() {
	cat <<EOF
[route $1]
listen = 127.0.0.1:$2
protocol = smtp
upstream = 127.0.0.1:$(port_of "$3")
upstream_tls = none
line_timeout = 2s
min_data_rate = $4
idle_timeout = 30s

EOF
}
{
	global_section "helo_name = proxy.test"
	route rate "$PR" slowup 100
	route norate "$PN" up 0
	route stall "$PS" stall 100
} >"$conf"
start_proxy "$conf"

open_tx=("expect:220" "cmd:250:EHLO client.test" "cmd:250:MAIL FROM:<a@client.test>"
	"cmd:250:RCPT TO:<b@dest.test>")
# trickle N SEC: N steps of 10 octets (one header line), SEC seconds apart
trickle() {
	local i
	for i in $(seq 1 "$1"); do
		printf '%s\n' "sleep:$2" "raw:X-S$((i % 10)): ab\r\n"
	done
}
mapfile -t slow5 < <(trickle 5 0.5)

# --- too slow: cut off, nothing acknowledged, nothing completed upstream -------------------
# After the 354 (t = 0) the deadline is 2 s (line_timeout), and every 10 octets add 0.1 s:
# 2.4 s once the fifth has come at t = 2.0. (Before min_data_rate: idle_timeout, 30 s.)
dialog data_trickle_cut --connect "127.0.0.1:$PR" --timeout 8 "${open_tx[@]}" \
	"cmd:354:DATA" "raw:Message-ID: <slowdata@client.test>\r\n" "${slow5[@]}" \
	"expect:421:4.4.2" "closed:2" "after:2.3" "before:4.5"
dialog bdat_trickle_cut --connect "127.0.0.1:$PR" --timeout 8 "${open_tx[@]}" \
	"raw:BDAT 400 LAST\r\nMessage-ID: <slowbdat@client.test>\r\n" "${slow5[@]}" \
	"expect:421:4.4.2" "closed:2" "after:2.3" "before:4.5"
fake_never data_trickle_never_completed_upstream slowup '<data [0-9]+ octets>' 2 '^plain: DATA$'
if lines_have slowup '^plain: BDAT 400 LAST$'; then
	pass bdat_trickle_reached_upstream
else
	fail bdat_trickle_reached_upstream "$(tail -n 4 "$T/slowup.lines")"
fi
n=$(msg_count "$T/slowup.store") || n=missing
check trickled_messages_not_stored test "$n" = 0
check data_timeout_logged test "$(log_count 'route=rate .*event=close reason="data timeout" .*detail="message data slower than min_data_rate \(100 octets/s\)"')" = 2

# --- fast enough, for longer than line_timeout: delivered ----------------------------------
steady=()
for i in $(seq 1 15); do
	steady+=("sleep:0.2" "raw:X-Steady-$(printf %02d "$i"): $(printf 'a%.0s' $(seq 1 24))\r\n")
done
dialog data_steady_200_octets_per_second --connect "127.0.0.1:$PR" --timeout 8 \
	"${open_tx[@]}" "cmd:354:DATA" "raw:Message-ID: <steady@client.test>\r\n" "${steady[@]}" \
	"raw:\r\nbody\r\n.\r\n" "expect:250" "after:3" "cmd:221:QUIT"
check steady_message_stored wait_tag "$T/slowup.store" steady 5

# --- min_data_rate = 0: no bound -----------------------------------------------------------
mapfile -t slow8 < <(trickle 8 0.5)
dialog no_rate_bound_trickle_delivered --connect "127.0.0.1:$PN" --timeout 8 "${open_tx[@]}" \
	"cmd:354:DATA" "raw:Message-ID: <norate@client.test>\r\n" "${slow8[@]}" \
	"raw:\r\nbody\r\n.\r\n" "expect:250" "after:4" "cmd:221:QUIT"
check norate_message_stored wait_tag "$T/up.store" norate 5

# --- the upstream holds the proxy back: not the client's time ------------------------------
make_message "$T/big.eml" bigstall
"$SMTP_PY" -c '
import sys
with open(sys.argv[1], "ab") as f:
    f.write((("y" * 998 + "\r\n") * (12 * 1024)).encode())' "$T/big.eml"
dialog upstream_stall_not_blamed_on_client --connect "127.0.0.1:$PS" --timeout 30 \
	"${open_tx[@]}" "cmd:354:DATA" "data:$T/big.eml" "expect:250" "after:4" "cmd:221:QUIT"
if lines_have stall '^# reading again$'; then
	pass upstream_did_stall
else
	fail upstream_did_stall "$(tail -n 4 "$T/stall.lines")"
fi
delivered_exact big_message_delivered "$T/stall.store" bigstall "$T/big.eml"
check no_data_timeout_on_stall test "$(log_count 'route=stall .*reason="data timeout"')" = 0
finish
