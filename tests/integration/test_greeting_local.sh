#!/usr/bin/env bash
# greeting = local (smtp, lmtp): the proxy greets the client itself and connects to the
# upstream only when the client's first command line is complete. Checked against a scripted
# upstream that logs every connection it gets (tools/smtp_fake.py) and an aiosmtpd sink:
#  - a client that never ends a line, one that only says QUIT, and one that trickles until
#    line_timeout cost no upstream connection (the upstream's connection count is the
#    observer, fenced by a session that does connect);
#  - the client sees one greeting (the proxy's), then the upstream's own EHLO reply;
#  - commands pipelined before the upstream is there are held and relayed in order, and the
#    message is delivered; LMTP works the same way;
#  - inject (STARTTLS toward the upstream under verify): delivered over TLS; implicit TLS
#    toward the client: greeted after the handshake, delivered; XCLIENT (xclient = yes) still
#    tells the upstream the client's address before its EHLO;
#  - terminate: what a client pipelines after its STARTTLS while the upstream is still being
#    reached never reaches the upstream;
#  - an unreachable upstream: 421 4.4.1 to the first command; one that refuses service in its
#    greeting: its 554 to the first command; the connection closes either way.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/smtp_lib.sh
. "$(dirname "$0")/smtp_lib.sh"

start_fake up --starttls none
start_fake refuser --starttls none --reply "GREETING=554 5.7.1 fake.test no service for you"
start_fake xup --starttls none --xclient
start_sink sink
start_sink tlssink --cert "$CERTS/server.pem" --key "$CERTS/server.key"
start_sink lmtpsink --lmtp
free_port PL; free_port PI; free_port PT; free_port PD; free_port PR; free_port PM; free_port PS; free_port PX
free_port DEAD
conf=$T/greeting.conf
{
	global_section "helo_name = proxy.test"
	cat <<EOF
[route local]
listen = 127.0.0.1:$PL
protocol = smtp
upstream = 127.0.0.1:$(port_of up)
upstream_tls = none
greeting = local
line_timeout = 2s

[route inject]
listen = 127.0.0.1:$PI
protocol = smtp
upstream = 127.0.0.1:$(port_of tlssink)
upstream_tls = starttls
upstream_policy = verify
upstream_name = localhost
greeting = local

[route term]
listen = 127.0.0.1:$PT
protocol = smtp
client_tls = starttls
client_policy = encrypt
upstream = 127.0.0.1:$(port_of sink)
upstream_tls = none
greeting = local

[route dead]
listen = 127.0.0.1:$PD
protocol = smtp
upstream = 127.0.0.1:$DEAD
upstream_tls = none
greeting = local

[route refuse]
listen = 127.0.0.1:$PR
protocol = smtp
upstream = 127.0.0.1:$(port_of refuser)
upstream_tls = none
greeting = local

[route smtps]
listen = 127.0.0.1:$PS
protocol = smtp
client_tls = implicit
upstream = 127.0.0.1:$(port_of sink)
upstream_tls = none
greeting = local

[route xcl]
listen = 127.0.0.1:$PX
protocol = smtp
upstream = 127.0.0.1:$(port_of xup)
upstream_tls = none
xclient = yes
greeting = local

[route lmtp]
listen = 127.0.0.1:$PM
protocol = lmtp
upstream = 127.0.0.1:$(port_of lmtpsink)
upstream_tls = none
greeting = local
EOF
} >"$conf"
start_proxy "$conf"

# --- no upstream until a whole line ------------------------------------------------------
dialog partial_line_then_gone --connect "127.0.0.1:$PL" "expect:220:proxy.test ESMTP" \
	"raw:EHLO half-a-li" "silent:0.5"
dialog quit_answered_locally --connect "127.0.0.1:$PL" "expect:220:proxy.test" \
	"cmd:221:QUIT" "closed:2"
dialog trickler_closed_by_line_timeout --connect "127.0.0.1:$PL" "expect:220" \
	"raw:EHLO tr" "sleep:1" "raw:ick" "expect:421:4.4.2" "closed:2" "after:1.8"
# The control session: greeted by the proxy alone (its next reply is the upstream's EHLO
# reply, not a second 220), then relayed.
dialog upstream_ehlo_reply_after_local_greeting --connect "127.0.0.1:$PL" \
	"expect:220:proxy.test ESMTP" "cmd:250:EHLO client.test" "contains:fake.test greets" \
	"has:SIZE" "cmd:250:NOOP" "cmd:221:QUIT" "closed:2"
if fake_idle up 1; then
	n=$(grep -c '^# connect from' "$T/up.lines")
	check upstream_connected_only_for_the_whole_line test "$n" = 1 ||
		note "the upstream saw $n connections: $(grep '^# connect' "$T/up.lines" | head -n 4)"
else
	fail upstream_connected_only_for_the_whole_line "$FAKE_WHY"
fi
check connect_logged_at_first_command test "$(log_count 'route=local .*event=upstream_connect reason="first command"')" = 1
expect_log local_quit_logged 'route=local .*event=close reason=quit'
expect_log line_timeout_before_upstream 'route=local .*event=close reason="line timeout"'

# --- pipelined before the upstream is there ------------------------------------------------
make_message "$T/m1.eml" pipelined
dialog pipelined_before_upstream_relayed --connect "127.0.0.1:$PL" "expect:220" \
	"raw:EHLO client.test\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<b@dest.test>\r\nDATA\r\n" \
	"expect:250:fake.test greets" "expect:250" "expect:250" "expect:354" "data:$T/m1.eml" \
	"expect:250" "cmd:221:QUIT"
check pipelined_message_stored wait_tag "$T/up.store" pipelined 5

# --- the sink, inject, terminate, lmtp -----------------------------------------------------
make_message "$T/m2.eml" viainject
if smtp_send --connect "127.0.0.1:$PI" --file "$T/m2.eml" --from a@client.test --to b@dest.test \
	>"$T/inject.out" 2>&1; then
	pass inject_sent
else
	fail inject_sent "$(tail -n 3 "$T/inject.out")"
fi
delivered_exact inject_delivered "$T/tlssink.store" viainject "$T/m2.eml"
check inject_upstream_tls grep -q '"tls": true' "$(grep -l viainject "$T"/tlssink.store/*.eml | sed 's/\.eml$/.json/')"
expect_log inject_verified 'route=inject .*event=upstream_tls .*verify=ok'

make_message "$T/m3.eml" afterstarttls
dialog term_pipelined_after_starttls_dropped --connect "127.0.0.1:$PT" --ca "$CERTS/ca.pem" \
	--name localhost "expect:220:proxy.test" \
	"raw:EHLO client.test\r\nSTARTTLS\r\nMAIL FROM:<evil@attacker.test>\r\n" \
	"expect:250" "expect:220" "starttls" "cmd:250:EHLO client.test" \
	"cmd:250:MAIL FROM:<a@client.test>" "cmd:250:RCPT TO:<b@dest.test>" "cmd:354:DATA" \
	"data:$T/m3.eml" "expect:250" "cmd:221:QUIT"
check term_message_stored wait_tag "$T/sink.store" afterstarttls 5
raw_never term_injected_command_never_upstream "$T/sink.raw" 'evil@attacker' '^RCPT TO:<b@dest.test>'

make_message "$T/m5.eml" viasmtps
dialog implicit_tls_local_greeting --connect "127.0.0.1:$PS" --implicit --ca "$CERTS/ca.pem" \
	--name localhost "expect:220:proxy.test ESMTP" "cmd:250:EHLO client.test" \
	"cmd:250:MAIL FROM:<a@client.test>" "cmd:250:RCPT TO:<b@dest.test>" "cmd:354:DATA" \
	"data:$T/m5.eml" "expect:250" "cmd:221:QUIT"
check implicit_tls_message_stored wait_tag "$T/sink.store" viasmtps 5

dialog xclient_after_local_greeting --connect "127.0.0.1:$PX" --source 127.0.0.2 \
	"expect:220:proxy.test ESMTP" "cmd:250:EHLO client.test" "cmd:221:QUIT"
if lines_have xup '^plain: XCLIENT .*ADDR=127\.0\.0\.2'; then
	pass xclient_real_address_upstream
else
	fail xclient_real_address_upstream "$(grep -m 3 'XCLIENT\|EHLO' "$T/xup.lines")"
fi
expect_log xclient_logged 'route=xcl .*event=xclient .*result=ok'

make_message "$T/m4.eml" vialmtp
dialog lmtp_local_greeting --connect "127.0.0.1:$PM" "expect:220:proxy.test LMTP" \
	"cmd:250:LHLO client.test" "cmd:250:MAIL FROM:<a@client.test>" \
	"cmd:250:RCPT TO:<b@dest.test>" "cmd:354:DATA" "data:$T/m4.eml" "expect:250" \
	"cmd:221:QUIT"
check lmtp_message_stored wait_tag "$T/lmtpsink.store" vialmtp 5

# --- upstream failures answer the first command ------------------------------------------
dialog unreachable_421_to_first_command --connect "127.0.0.1:$PD" "expect:220:proxy.test" \
	"cmd:421:EHLO client.test" "contains:4.4.1" "closed:2"
dialog refusal_554_to_first_command --connect "127.0.0.1:$PR" "expect:220:proxy.test" \
	"cmd:554:EHLO client.test" "contains:no service for you" "closed:2"
finish
