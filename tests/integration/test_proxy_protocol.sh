#!/usr/bin/env bash
# proxy_protocol_in / proxy_protocol_out: the HAProxy PROXY protocol, v1 and v2.
#
# In: a private haproxy (mode tcp, send-proxy / send-proxy-v2) in front of the proxy's
# routes; the real clients connect from 127.0.0.2 while haproxy connects from 127.0.0.1, so
# the proxy's log, client_allow, per-client limits and XCLIENT show whose address they use.
# Hostile peers (no header, garbage, the other version, a header cut short then silence or
# a close, SMTP in place of a header) are closed with event=proxy_protocol result=invalid
# and never reach the upstream, a counting SMTP fake; a header sent one byte at a time
# works. Bytes after the header in the same write (a TLS ClientHello, a line) are the
# client's first bytes.
# Out: routes with proxy_protocol_out = v1 / v2 in front of a private Postfix with
# smtpd_upstream_proxy_protocol = haproxy (STARTTLS and implicit-TLS listeners), and a
# chain haproxy -> proxy (v2 in, v1 out) -> Postfix: Postfix logs the real client.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/smtp_lib.sh
. "$(dirname "$0")/smtp_lib.sh"

if ! command -v haproxy >/dev/null; then
	fail setup "haproxy not installed (make deps installs it)"
	exit 1
fi

start_sink sink
STORE=$T/sink.store
start_fake count --starttls none
start_fake xfake --starttls none --xclient
start_server echo --mode echo
wait_servers
PF_EXTRA='smtpd_upstream_proxy_protocol = haproxy'
pf_start pf "$(port_of sink)" plain=may wrap=wrapper
PFLOG=$(pf_log pf)

for v in P_IN1 P_IN2 P_DENY P_HOST2 P_HOST1 P_IMPL P_AUTO P_TCP P_XC P_PER P_OUT1 P_OUT2 \
	P_CHAIN HA1 HA2 HA3 HA4; do
	free_port "$v"
done
SINK=127.0.0.1:$(port_of sink)
free_port P_ADM

conf=$T/pp.conf
{
	global_section "helo_name = proxy.pp.test" "admin_listen = 127.0.0.1:$P_ADM"
	cat <<EOF
[route in-v1]
listen = 127.0.0.1:$P_IN1
protocol = smtp
upstream = $SINK
upstream_tls = none
proxy_protocol_in = v1
client_allow = 127.0.0.2

[route in-v2]
listen = 127.0.0.1:$P_IN2
protocol = smtp
upstream = $SINK
upstream_tls = none
proxy_protocol_in = v2
client_allow = 127.0.0.2/32

[route in-deny]
listen = 127.0.0.1:$P_DENY
protocol = smtp
upstream = $SINK
upstream_tls = none
proxy_protocol_in = v2
client_allow = 127.0.0.1

[route hostile-v2]
listen = 127.0.0.1:$P_HOST2
protocol = smtp
upstream = 127.0.0.1:$(port_of count)
upstream_tls = none
proxy_protocol_in = v2
handshake_timeout = 2s

[route hostile-v1]
listen = 127.0.0.1:$P_HOST1
protocol = smtp
upstream = 127.0.0.1:$(port_of count)
upstream_tls = none
proxy_protocol_in = v1
handshake_timeout = 2s

[route implicit]
listen = 127.0.0.1:$P_IMPL
protocol = smtp
client_tls = implicit
upstream = $SINK
upstream_tls = none
proxy_protocol_in = v2

[route auto]
listen = 127.0.0.1:$P_AUTO
protocol = smtp
client_tls = auto
detect_timeout = 300ms
upstream = $SINK
upstream_tls = none
proxy_protocol_in = v1

[route tcp]
listen = 127.0.0.1:$P_TCP
protocol = tcp
upstream = 127.0.0.1:$(port_of echo)
proxy_protocol_in = v1

[route xclient]
listen = 127.0.0.1:$P_XC
protocol = smtp
upstream = 127.0.0.1:$(port_of xfake)
upstream_tls = none
xclient = yes
proxy_protocol_in = v2

[route per]
listen = 127.0.0.1:$P_PER
protocol = smtp
upstream = $SINK
upstream_tls = none
proxy_protocol_in = v1
max_connections_per_client = 1

[route out-v1]
listen = 127.0.0.1:$P_OUT1
protocol = smtp
upstream = 127.0.0.1:${PF_PORT[pf.plain]}
upstream_tls = starttls
upstream_policy = encrypt
proxy_protocol_out = v1

[route out-v2]
listen = 127.0.0.1:$P_OUT2
protocol = smtp
upstream = 127.0.0.1:${PF_PORT[pf.wrap]}
upstream_tls = implicit
upstream_policy = encrypt
proxy_protocol_out = v2

[route chain]
listen = 127.0.0.1:$P_CHAIN
protocol = smtp
upstream = 127.0.0.1:${PF_PORT[pf.plain]}
upstream_tls = none
proxy_protocol_in = v2
proxy_protocol_out = v1
client_allow = 127.0.0.2
EOF
} >"$conf"
# haproxy, private: its own configuration, in the foreground, killed by the cleanup. Started
# (and probed) before the proxy listens, so that its readiness probes reach no route.
cat >"$T/haproxy.cfg" <<EOF
global
    maxconn 200
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend f1
    bind 127.0.0.1:$HA1
    default_backend b1
backend b1
    server s1 127.0.0.1:$P_IN1 send-proxy
frontend f2
    bind 127.0.0.1:$HA2
    default_backend b2
backend b2
    server s2 127.0.0.1:$P_IN2 send-proxy-v2
frontend f3
    bind 127.0.0.1:$HA3
    default_backend b3
backend b3
    server s3 127.0.0.1:$P_DENY send-proxy-v2
frontend f4
    bind 127.0.0.1:$HA4
    default_backend b4
backend b4
    server s4 127.0.0.1:$P_CHAIN send-proxy-v2
EOF
spawn haproxy haproxy -db -f "$T/haproxy.cfg"
for p in "$HA1" "$HA2" "$HA3" "$HA4"; do
	if ! port_open "$p" 10; then
		fail setup "haproxy not listening on $p: $(tail -n 5 "$T/haproxy.log")"
		exit 1
	fi
done
start_proxy "$conf"


# pp NAME STEPS...: tools/pp_client.py; PASS/FAIL NAME with why and the transcript's end.
pp_client() { "$SMTP_PY" "$TOOLS/pp_client.py" "$@"; }
pp_result() {
	local name=$1 out=$2
	"$SMTP_PY" -c '
import json, sys
try:
    r = json.loads(sys.stdin.read().strip().splitlines()[-1])
except Exception:
    print("no result from pp_client.py"); sys.exit()
print("step %s: %s; transcript: %s" % (r.get("failed_step"), r.get("why"),
      " / ".join((r.get("transcript") or [])[-6:])))' <<<"$out"
}
pp() {
	local name=$1 out
	shift
	if out=$(pp_client "$@"); then
		pass "$name"
	else
		fail "$name" "$(pp_result "$name" "$out")"
	fi
}
# pp_bg ID ARGS / pp_wait NAME ID: the same in the background.
pp_bg() {
	local id=$1
	shift
	rm -f "$T/pp_$id.rc"
	(
		pp_client "$@" >"$T/pp_$id.out" 2>&1
		echo $? >"$T/pp_$id.rc"
	) >/dev/null 2>&1 &
	PIDS+=("$!")
}
pp_wait() {
	local name=$1 id=$2
	if ! wait_file "$T/pp_$id.rc" 30; then
		fail "$name" "pp_client did not finish within 30s"
	elif [ "$(cat "$T/pp_$id.rc")" = 0 ]; then
		pass "$name"
	else
		fail "$name" "$(pp_result "$name" "$(cat "$T/pp_$id.out")")"
	fi
}
# queued_client TAG: the "client=" Postfix logged for the message TAG.
queued_client() {
	local qid
	qid=$(grep -F "message-id=<$1@client.test>" "$PFLOG" | sed -n 's/.*: \([0-9A-F]*\): message-id=.*/\1/p' | head -n 1)
	[ -n "$qid" ] && sed -n "s/.* $qid: client=\([^ ,]*\).*/\1/p" "$PFLOG" | head -n 1
}
# delivered_from_postfix CHECK TAG ORIG: the message went through Postfix to the sink, and
# Postfix queued it for client [127.0.0.2].
delivered_from_postfix() {
	local check=$1 tag=$2 c
	delivered_exact "${check}_delivered" "$STORE" "$tag" "$3" via-postfix
	c=$(queued_client "$tag")
	if [[ $c == *"[127.0.0.2]" ]]; then
		pass "${check}_postfix_queued_real_client"
	else
		fail "${check}_postfix_queued_real_client" "Postfix logged client=$c for $tag"
	fi
}

# --- in: through haproxy, v1 and v2 -------------------------------------------------------
make_message "$T/m-v1" pp-in-v1
head -c -2 "$T/m-v1" >"$T/m-v1.data"
if out=$(swaks --server "127.0.0.1:$HA1" --local-interface 127.0.0.2 \
	--helo v1-client.example --from app@client.test --to someone@dest.test \
	--data "@$T/m-v1.data" 2>&1); then
	pass in_v1_haproxy_swaks_accepted
	delivered_exact in_v1_delivered "$STORE" pp-in-v1 "$T/m-v1"
else
	fail in_v1_haproxy_swaks_accepted "swaks: $(printf '%s' "$out" | grep -E '^(<~?|\*\*\*)' | tail -n 4)"
fi
expect_log in_v1_log_real_client \
	'route=in-v1 .*event=proxy_protocol result=ok version=v1 client=127\.0\.0\.2:[0-9]+ proxy=127\.0\.0\.1:[0-9]+ destination=127\.0\.0\.1:'"$HA1"'$'

make_message "$T/m-v2" pp-in-v2
dialog in_v2_haproxy_transaction --connect "127.0.0.1:$HA2" --source 127.0.0.2 \
	expect:220 cmd:250:"EHLO v2-client.example" cmd:250:"MAIL FROM:<app@client.test>" \
	cmd:250:"RCPT TO:<someone@dest.test>" cmd:354:DATA "data:$T/m-v2" expect:250 \
	cmd:221:QUIT closed:3
delivered_exact in_v2_delivered "$STORE" pp-in-v2 "$T/m-v2"
expect_log in_v2_log_real_client \
	'route=in-v2 .*event=proxy_protocol result=ok version=v2 client=127\.0\.0\.2:[0-9]+ proxy=127\.0\.0\.1:[0-9]+ destination=127\.0\.0\.1:'"$HA2"'$'

# client_allow = 127.0.0.1: haproxy's own address would pass, the real client does not.
dialog in_client_allow_refuses_real_client --connect "127.0.0.1:$HA3" --source 127.0.0.2 \
	expect:554:"Access denied" closed:3
expect_log in_client_allow_refusal_logged \
	'route=in-deny .*event=refused reason=client-not-allowed client=127\.0\.0\.2:[0-9]+ result=client-not-allowed'
log_never in_client_allow_no_upstream 'route=in-deny .*event=(policy|upstream_connected)' \
	'route=in-deny .*event=close'

# --- in: hostile peers, straight to the routes (no haproxy) -------------------------------
V2HDR='\r\n\r\n\x00\r\nQUIT\n\x21\x11'
pp_bg none --connect "127.0.0.1:$P_HOST2" --source 127.0.0.2 closed:6
pp_bg garbage --connect "127.0.0.1:$P_HOST2" 'raw:\x00\x01\x02garbage\r\n' send closed:3
pp_bg v1on2 --connect "127.0.0.1:$P_HOST2" hdr:v1:127.0.0.2:40000:127.0.0.1:25 \
	'raw:EHLO hostile-v1on2.example\r\n' send closed:3
pp_bg silence --connect "127.0.0.1:$P_HOST2" "raw:$V2HDR" send closed:6
pp_bg smtp2 --connect "127.0.0.1:$P_HOST2" 'raw:EHLO hostile-smtp.example\r\nMAIL FROM:<x@hostile.example>\r\n' \
	send closed:3
pp_bg smtp1 --connect "127.0.0.1:$P_HOST1" 'raw:EHLO hostile-smtp1.example\r\n' send closed:3
pp_bg v2on1 --connect "127.0.0.1:$P_HOST1" hdr:v2:127.0.0.2:40000:127.0.0.1:25 send closed:3
pp_bg long1 --connect "127.0.0.1:$P_HOST1" "raw:PROXY UNKNOWN $(printf 'x%.0s' {1..120})\r\n" send closed:3
pp_bg cut1 --connect "127.0.0.1:$P_HOST1" 'raw:PROXY TCP4 127.0.0.2 127.0' send
pp_wait hostile_no_header_closed_silently none
pp_wait hostile_garbage_closed_silently garbage
pp_wait hostile_v1_on_v2_closed_silently v1on2
pp_wait hostile_header_then_silence_closed_silently silence
pp_wait hostile_smtp_in_place_of_header_closed_silently smtp2
pp_wait hostile_smtp_on_v1_closed_silently smtp1
pp_wait hostile_v2_on_v1_closed_silently v2on1
pp_wait hostile_v1_line_too_long_closed_silently long1
pp_wait hostile_cut_header_sent cut1
inv='event=proxy_protocol result=invalid reason='
expect_log hostile_no_header_logged "route=hostile-v2 .*${inv}\"no header within handshake_timeout\""
expect_log hostile_garbage_logged "route=hostile-v2 .*${inv}\"not a PROXY v2 header\" version=v2 client=127\.0\.0\.1:[0-9]+ received=12\$"
expect_log hostile_v1_on_v2_logged "route=hostile-v2 .*${inv}\"PROXY v1 header where v2 is expected\""
expect_log hostile_silence_logged "route=hostile-v2 .*${inv}\"no complete header within handshake_timeout\" version=v2 client=127\.0\.0\.1:[0-9]+ received=14\$"
expect_log hostile_smtp_logged "route=hostile-v2 .*${inv}\"not a PROXY v2 header\" version=v2 client=127\.0\.0\.1:[0-9]+ received=58\$"
expect_log hostile_smtp_v1_logged "route=hostile-v1 .*${inv}\"not a PROXY v1 header\""
expect_log hostile_v2_on_v1_logged "route=hostile-v1 .*${inv}\"PROXY v2 header where v1 is expected\""
expect_log hostile_v1_too_long_logged "route=hostile-v1 .*${inv}\"v1 line too long\""
expect_log hostile_cut_then_close_logged "route=hostile-v1 .*${inv}\"closed before the header was complete\""
# Fence: all nine hostile sessions ended (their close lines) before any valid one began.
if wait_count 'route=hostile-v[12] .*event=close ' 9 10; then
	pass hostile_sessions_all_closed
else
	fail hostile_sessions_all_closed "$(log_count 'route=hostile-v[12] .*event=close ') of 9 closed"
fi
# and counted as refusals
check hostile_refusals_counted sh -c "curl -sf http://127.0.0.1:$P_ADM/metrics | grep -qx 'starttls_proxy_refusals_total{route=\"hostile-v2\",reason=\"proxy-protocol\"} 5' &&
	curl -sf http://127.0.0.1:$P_ADM/metrics | grep -qx 'starttls_proxy_refusals_total{route=\"hostile-v1\",reason=\"proxy-protocol\"} 4'"
if [ "$(log_count 'route=hostile-v[12] .*event=(policy|upstream_connected|upstream_unreachable)')" = 0 ]; then
	pass hostile_no_upstream_attempt_logged
else
	fail hostile_no_upstream_attempt_logged "$(log_line 'route=hostile-v[12] .*event=(policy|upstream_connected)')"
fi

# A header one byte at a time, 20 ms apart, works (v2 and v1): the counting upstream's only
# two sessions.
pp hostile_v2_header_byte_by_byte_works --connect "127.0.0.1:$P_HOST2" --source 127.0.0.2 \
	hdr:v2:127.0.0.2:40002:127.0.0.1:25 sendslow:0.02 expect:220 \
	cmd:250:"EHLO slow-v2.example" cmd:221:QUIT
pp hostile_v1_header_byte_by_byte_works --connect "127.0.0.1:$P_HOST1" --source 127.0.0.2 \
	hdr:v1:127.0.0.2:40001:127.0.0.1:25 sendslow:0.02 expect:220 \
	cmd:250:"EHLO slow-v1.example" cmd:221:QUIT
expect_log slow_header_real_client \
	'route=hostile-v2 .*event=proxy_protocol result=ok version=v2 client=127\.0\.0\.2:40002 '
if ! fake_idle count 2; then
	fail hostile_upstream_saw_only_the_valid_sessions "$FAKE_WHY"
else
	n=$(grep -c '^# connect from' "$T/count.lines")
	if [ "$n" = 2 ] && lines_have count 'EHLO slow-v2\.example' && lines_have count 'EHLO slow-v1\.example'; then
		pass hostile_upstream_saw_only_the_valid_sessions
	else
		fail hostile_upstream_saw_only_the_valid_sessions "$n connections: $(grep -v '^#' "$T/count.lines" | head -n 6)"
	fi
fi
fake_never hostile_upstream_no_hostile_byte count 'hostile|MAIL FROM|PROXY' 2 'EHLO slow-v1\.example'

# --- in: the client's own bytes in the header's write -------------------------------------
pp implicit_clienthello_with_header --connect "127.0.0.1:$P_IMPL" --source 127.0.0.2 \
	hdr:v2:127.0.0.2:40003:127.0.0.1:465 clienthello send expect:220 tls:TLSv1.3 \
	cmd:250:"EHLO implicit.example" cmd:221:QUIT
expect_log implicit_tls_after_header 'route=implicit .*event=client_tls version=TLSv1\.3'
pp auto_clienthello_with_header --connect "127.0.0.1:$P_AUTO" \
	hdr:v1:127.0.0.2:40004:127.0.0.1:25 clienthello send expect:220 tls:TLSv1.3 cmd:221:QUIT
pp auto_waiting_client_gets_plaintext --connect "127.0.0.1:$P_AUTO" \
	hdr:v1:127.0.0.2:40005:127.0.0.1:25 send expect:220 cmd:250:"EHLO auto.example" cmd:221:QUIT
expect_log auto_detection_after_header 'route=auto .*event=client_detected tls=implicit'
pp tcp_line_with_header --connect "127.0.0.1:$P_TCP" \
	hdr:v1:127.0.0.2:40006:127.0.0.1:7 'raw:ping-after-header\n' send line:ping-after-header

# --- in: the real address in XCLIENT and in max_connections_per_client -------------------
pp xclient_session --connect "127.0.0.1:$P_XC" hdr:v2:192.0.2.77:4242:127.0.0.1:25 send \
	expect:220 cmd:250:"EHLO xc.example" cmd:221:QUIT
if fake_idle xfake 1 && lines_have xfake '^plain: XCLIENT .*ADDR=192\.0\.2\.77( |$)' &&
	lines_have xfake '^plain: XCLIENT .*PORT=4242( |$)'; then
	pass xclient_carries_header_address
else
	fail xclient_carries_header_address "${FAKE_WHY:-} $(grep XCLIENT "$T/xfake.lines" 2>&1 | head -n 2)"
fi

pp_bg hold --connect "127.0.0.1:$P_PER" hdr:v1:192.0.2.50:1000:127.0.0.1:25 send expect:220 \
	sleep:3 cmd:221:QUIT
if wait_log 'route=per .*event=proxy_protocol result=ok .*client=192\.0\.2\.50:1000 ' 10; then
	pp per_client_second_from_same_address_refused --connect "127.0.0.1:$P_PER" \
		hdr:v1:192.0.2.50:1001:127.0.0.1:25 send expect:421 closed:3
	pp per_client_other_address_admitted --connect "127.0.0.1:$P_PER" \
		hdr:v1:192.0.2.51:1002:127.0.0.1:25 send expect:220 cmd:221:QUIT
else
	fail per_client_first_session "no proxy_protocol line for 192.0.2.50:1000"
fi
pp_wait per_client_first_session hold
expect_log per_client_refusal_logged \
	'route=per .*event=refused reason=max_connections_per_client client=192\.0\.2\.50:1001'

# --- out: Postfix with smtpd_upstream_proxy_protocol = haproxy -----------------------------
make_message "$T/m-o1" pp-out-v1
dialog out_v1_starttls_transaction --connect "127.0.0.1:$P_OUT1" --source 127.0.0.2 \
	expect:220 cmd:250:"EHLO out1.example" cmd:250:"MAIL FROM:<app@client.test>" \
	cmd:250:"RCPT TO:<someone@dest.test>" cmd:354:DATA "data:$T/m-o1" expect:250 \
	cmd:221:QUIT closed:3
delivered_from_postfix out_v1 pp-out-v1 "$T/m-o1"
expect_log out_v1_postfix_tls 'postfix/plain/smtpd\[[0-9]+\]: .*TLS connection established from [^ ]*\[127\.0\.0\.2\]' 5 "$PFLOG"
expect_log out_v1_header_logged \
	"route=out-v1 .*event=proxy_protocol side=upstream version=v1 client=127\.0\.0\.2:[0-9]+ destination=127\.0\.0\.1:$P_OUT1 "

make_message "$T/m-o2" pp-out-v2
dialog out_v2_implicit_transaction --connect "127.0.0.1:$P_OUT2" --source 127.0.0.2 \
	expect:220 cmd:250:"EHLO out2.example" cmd:250:"MAIL FROM:<app@client.test>" \
	cmd:250:"RCPT TO:<someone@dest.test>" cmd:354:DATA "data:$T/m-o2" expect:250 \
	cmd:221:QUIT closed:3
delivered_from_postfix out_v2 pp-out-v2 "$T/m-o2"
expect_log out_v2_postfix_tls 'postfix/wrap/smtpd\[[0-9]+\]: .*TLS connection established from [^ ]*\[127\.0\.0\.2\]' 5 "$PFLOG"

# haproxy (v2) -> proxy (v2 in, v1 out) -> Postfix: two hops, the real client all the way.
make_message "$T/m-ch" pp-chain
dialog chain_transaction --connect "127.0.0.1:$HA4" --source 127.0.0.2 \
	expect:220 cmd:250:"EHLO chain.example" cmd:250:"MAIL FROM:<app@client.test>" \
	cmd:250:"RCPT TO:<someone@dest.test>" cmd:354:DATA "data:$T/m-ch" expect:250 \
	cmd:221:QUIT closed:3
delivered_from_postfix chain pp-chain "$T/m-ch"
expect_log chain_header_destination \
	"route=chain .*event=proxy_protocol side=upstream version=v1 client=127\.0\.0\.2:[0-9]+ destination=127\.0\.0\.1:$HA4 "

finish
