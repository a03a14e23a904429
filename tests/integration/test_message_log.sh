#!/usr/bin/env bash
# One log line per message relayed (event=message), as mail admins trace mail: the sender's
# domain, the count and domains of the recipients the upstream accepted, the size, the
# upstream's final reply with its queue id (the one Postfix logged for that message), the
# TLS of both legs; addresses only at log_level = debug. A refused message and a deferred
# one are logged with their reply and counted in starttls_proxy_messages_total. LMTP: the
# per-recipient replies are counted (delivered=). bytes_down counts the proxy's own replies.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/smtp_lib.sh
. "$(dirname "$0")/smtp_lib.sh"

start_sink sink
PF_EXTRA='smtpd_recipient_restrictions = check_recipient_access inline:{ { refused@dest.test = REJECT no-such-user } { later@dest.test = DEFER_IF_PERMIT try-later } }, permit_mynetworks, reject'
pf_start pf "$(port_of sink)" enc=may
PFLOG=$(pf_log pf)
start_fake lmtp --lmtp --starttls none
free_port P_INFO; free_port P_DEBUG; free_port P_LMTP; free_port ADMIN
conf() { # LEVEL PORT
	{
		global_section "admin_listen = 127.0.0.1:$ADMIN" | sed "s/^log_level = debug/log_level = $1/"
		cat <<EOF
[route trace]
listen = 127.0.0.1:$2
protocol = smtp
client_tls = starttls
upstream = 127.0.0.1:${PF_PORT[pf.enc]}
upstream_tls = starttls
upstream_policy = verify
upstream_name = localhost

[route lmtp]
listen = 127.0.0.1:$P_LMTP
protocol = lmtp
upstream = 127.0.0.1:$(port_of lmtp)
upstream_tls = none
EOF
	}
}
conf info "$P_INFO" >"$T/info.conf"
start_proxy "$T/info.conf" info
INFO_LOG=$PROXY_LOG

# Two recipients, one refused by Postfix: rcpts=1 and only that one's domain.
make_message "$T/m1" trace1
SIZE=$(stat -c %s "$T/m1")
if swaks --server "127.0.0.1:$P_INFO" --tls --tls-verify --tls-ca-path "$CERTS/ca.pem" \
	--from sender@client.test --to "someone@dest.test,refused@dest.test" \
	--data "@$T/m1" --suppress-data >"$T/swaks1.log" 2>&1 || grep -q '^<~ *250 .*queued as' "$T/swaks1.log"; then
	:
fi
if wait_log 'route=trace .*event=message ' 10 "$INFO_LOG"; then
	L=$(log_line 'route=trace .*event=message ' "$INFO_LOG")
	note "$L"
	QID=$(sed -n 's/.*reply="250 2.0.0 Ok: queued as \([0-9A-F]*\)".*/\1/p' <<<"$L")
	check message_result_accepted grep -q 'result=accepted' <<<"$L"
	check message_from_domain grep -q 'from_domain=client.test' <<<"$L"
	check message_rcpts_accepted_only grep -q 'rcpts=1 rcpt_domains=dest.test ' <<<"$L"
	check message_queue_id test -n "$QID"
	check message_queue_id_is_postfix_s grep -q ": $QID: client=" "$PFLOG"
	check message_tls_both_legs grep -Eq 'client_tls=TLSv1\.[23] upstream_tls=TLSv1\.[23]' <<<"$L"
	# the size relayed is the message as swaks sent it, without the end marker
	check message_size_plausible awk -v l="$L" -v s="$SIZE" 'BEGIN { match(l, /size=[0-9]+/); n = substr(l, RSTART + 5, RLENGTH - 5) + 0; exit !(n >= s - 4 && n <= s + 200) }'
	if grep -q 'sender@client.test\|someone@dest.test' <<<"$L"; then
		fail message_no_addresses_at_info "$L"
	else
		pass message_no_addresses_at_info
	fi
else
	fail message_logged "no event=message: $(tail -n 5 "$T/swaks1.log")"
fi

# A deferred and a rejected message (every recipient refused at DATA's end is not possible
# with Postfix's RCPT checks: a message whose only recipient is deferred gets no DATA).
# smtp_dialog: MAIL, a deferred RCPT (450), DATA refused (554 no valid recipients).
smtp_dialog_to "$T/deferred.json" --connect "127.0.0.1:$P_INFO" --ca "$CERTS/ca.pem" --name localhost \
	expect:220 cmd:250:"EHLO c.test" cmd:220:STARTTLS starttls cmd:250:"EHLO c.test" \
	cmd:250:"MAIL FROM:<a@client.test>" cmd:450:"RCPT TO:<later@dest.test>" cmd:554:DATA \
	cmd:221:QUIT closed:5
check message_deferred_dialog grep -q '"ok": true' "$T/deferred.json"
check message_refused_data_logged wait_log 'route=trace .*event=message result=rejected .*rcpts=0 .*reply="554 5.5.1 Error: no valid recipients"' 5 "$INFO_LOG"

# bytes_down: exactly what the client received (every reply line of the dialog's
# transcript), the proxy's own "220 2.0.0 Ready to start TLS" and its rewritten EHLO reply
# included, and not what the upstream sent the proxy (its replies to the proxy's own EHLO
# and STARTTLS). The dialog's session is the route's second close.
wait_count 'route=trace .*event=close' 2 5 "$INFO_LOG"
DOWN=$(log_line 'route=trace .*event=close' "$INFO_LOG" | sed -n 's/.*bytes_down=\([0-9]*\).*/\1/p')
GOT=$("$SMTP_PY" -c '
import json, sys
t = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])["transcript"]
print(sum(len(l[3:].encode()) + 2 for l in t if l.startswith("S: ")))' "$T/deferred.json")
check bytes_down_is_what_the_client_got test "${DOWN:-x}" = "$GOT"

# LMTP: one final reply per recipient, counted.
make_message "$T/m2" trace2
smtp_send --lmtp --connect "127.0.0.1:$P_LMTP" --file "$T/m2" --from a@client.test \
	--to x@one.test --to y@two.test --to z@one.test >/dev/null 2>&1
check lmtp_message_logged wait_log 'route=lmtp .*event=message result=accepted .*rcpts=3 rcpt_domains=one.test,two.test delivered=3 ' 5 "$INFO_LOG"

# The counter, by result.
ADM=http://127.0.0.1:$ADMIN
check messages_metric sh -c "curl -sf $ADM/metrics | grep -qx 'starttls_proxy_messages_total{route=\"trace\",result=\"accepted\"} 1' &&
	curl -sf $ADM/metrics | grep -qx 'starttls_proxy_messages_total{route=\"trace\",result=\"rejected\"} 1'"
stop_proxy info

# At debug: the addresses too.
conf debug "$P_DEBUG" >"$T/debug.conf"
start_proxy "$T/debug.conf" debug
make_message "$T/m3" trace3
swaks --server "127.0.0.1:$P_DEBUG" --tls --tls-verify --tls-ca-path "$CERTS/ca.pem" \
	--from sender@client.test --to "someone@dest.test" --data "@$T/m3" --suppress-data >/dev/null 2>&1
check message_addresses_at_debug wait_log 'route=trace .*event=message .*from=sender@client.test .*to=someone@dest.test ' 10
finish
