#!/usr/bin/env bash
# xclient = yes: the proxy tells a Postfix upstream (smtpd_authorized_xclient_hosts =
# 127.0.0.1) the real client's address and HELO, so Postfix logs and applies its policy to
# the real client. Clients connect from 127.0.0.2 / 127.0.0.3 so the real address differs
# from the proxy's 127.0.0.1. A route with xclient = no is the control.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/smtp_lib.sh
. "$(dirname "$0")/smtp_lib.sh"

start_sink sink
# Postfix policy keyed on the client address: 127.0.0.3 is refused (at RCPT time).
PF_EXTRA='smtpd_client_restrictions = check_client_access inline:{ { 127.0.0.3 = REJECT blocked-by-test-policy } }'
pf_start pf "$(port_of sink)" enc=encrypt plain=may
PFLOG=$(pf_log pf)
STORE=$T/sink.store

free_port P_TLS
free_port P_PLAIN
free_port P_OFF
conf=$T/xclient.conf
{
	global_section "helo_name = proxy.xclient.test"
	cat <<EOF
[route xclient-tls]
listen = 127.0.0.1:$P_TLS
protocol = smtp
client_tls = none
upstream = 127.0.0.1:${PF_PORT[pf.enc]}
upstream_tls = starttls
upstream_policy = verify
upstream_name = localhost
xclient = yes

[route xclient-plain]
listen = 127.0.0.1:$P_PLAIN
protocol = smtp
client_tls = none
upstream = 127.0.0.1:${PF_PORT[pf.plain]}
upstream_tls = none
xclient = yes

[route xclient-off]
listen = 127.0.0.1:$P_OFF
protocol = smtp
client_tls = none
upstream = 127.0.0.1:${PF_PORT[pf.plain]}
upstream_tls = none
xclient = no
EOF
} >"$conf"
start_proxy "$conf"

# received_from TAG: the first Received: header (unfolded) of the delivered message TAG.
received_from() {
	local f
	f=$(wait_tag "$STORE" "$1" 10) || return 1
	"$SMTP_PY" -c '
import sys
lines = open(sys.argv[1], "rb").read().decode("utf-8", "replace").split("\r\n")
out = lines[0]
for l in lines[1:]:
    if not l[:1] in (" ", "\t"):
        break
    out += " " + l.strip()
print(out)' "$f"
}
# queued_client TAG: the "client=" Postfix logged for the message TAG.
queued_client() {
	local qid
	qid=$(grep -F "message-id=<$1@client.test>" "$PFLOG" | sed -n 's/.*: \([0-9A-F]*\): message-id=.*/\1/p' | head -n 1)
	[ -n "$qid" ] && sed -n "s/.* $qid: client=\([^ ,]*\).*/\1/p" "$PFLOG" | head -n 1
}

# --- swaks from 127.0.0.2 through the STARTTLS route --------------------------------------
make_message "$T/m-swaks" xc-swaks
head -c -2 "$T/m-swaks" >"$T/m-swaks.data"
if out=$(swaks --server "127.0.0.1:$P_TLS" --local-interface 127.0.0.2 \
	--helo real-client.example --from app@client.test --to someone@dest.test \
	--data "@$T/m-swaks.data" 2>&1); then
	pass xclient_tls_swaks_accepted
	rcv=$(received_from xc-swaks)
	if grep -q 'from real-client.example (.*\[127\.0\.0\.2\])' <<<"$rcv" && grep -q 'with ESMTPS' <<<"$rcv"; then
		pass xclient_tls_received_shows_real_client
	else
		fail xclient_tls_received_shows_real_client "Received: $rcv"
	fi
	c=$(queued_client xc-swaks)
	if [[ $c == *"[127.0.0.2]" ]]; then
		pass xclient_tls_postfix_log_real_address
	else
		fail xclient_tls_postfix_log_real_address "Postfix logged client=$c"
	fi
else
	fail xclient_tls_swaks_accepted "swaks: $(printf '%s' "$out" | grep -E '^(<~?|\*\*\*)' | tail -n 4)"
fi
expect_log xclient_tls_proxy_log 'route=xclient-tls .*event=xclient .*result=ok'
if grep -q 'postfix/enc/smtpd.*TLS connection established from localhost\[127.0.0.1\]' "$PFLOG"; then
	pass xclient_tls_hop_encrypted
else
	fail xclient_tls_hop_encrypted "no TLS connection in the Postfix log"
fi

# --- scripted client: XCLIENT is invisible to it (one greeting, no XCLIENT keyword) ---------
make_message "$T/m-dialog" xc-dialog
dialog xclient_plain_transparent_to_client --connect "127.0.0.1:$P_PLAIN" --source 127.0.0.2 \
	expect:220 cmd:250:"EHLO dialog-client.example" lacks:XCLIENT lacks:STARTTLS \
	cmd:250:"MAIL FROM:<app@client.test>" cmd:250:"RCPT TO:<someone@dest.test>" \
	cmd:354:DATA "data:$T/m-dialog" expect:250 cmd:221:QUIT closed:3
rcv=$(received_from xc-dialog)
if grep -q 'from dialog-client.example (.*\[127\.0\.0\.2\])' <<<"$rcv"; then
	pass xclient_plain_received_shows_real_client
else
	fail xclient_plain_received_shows_real_client "Received: $rcv"
fi

# NAME: the client's forward-confirmed host name (127.0.0.1 is localhost both ways in
# /etc/hosts), so Postfix logs localhost[127.0.0.1], not unknown[...]; a client without a
# name (127.0.0.2) is sent as [UNAVAILABLE] and logged as unknown.
make_message "$T/m-named" xc-named
dialog xclient_named_client --connect "127.0.0.1:$P_PLAIN" --source 127.0.0.1 \
	expect:220 cmd:250:"EHLO named-client.example" \
	cmd:250:"MAIL FROM:<app@client.test>" cmd:250:"RCPT TO:<someone@dest.test>" \
	cmd:354:DATA "data:$T/m-named" expect:250 cmd:221:QUIT closed:3
wait_tag "$STORE" xc-named 10 >/dev/null
c=$(queued_client xc-named)
if [ "$c" = "localhost[127.0.0.1]" ]; then
	pass xclient_name_sent
else
	fail xclient_name_sent "Postfix logged client=$c, want localhost[127.0.0.1]"
fi
c=$(queued_client xc-dialog)
if [ "$c" = "unknown[127.0.0.2]" ]; then
	pass xclient_no_name_unavailable
else
	fail xclient_no_name_unavailable "Postfix logged client=$c, want unknown[127.0.0.2]"
fi

# A client may not send XCLIENT itself.
dialog xclient_from_client_refused --connect "127.0.0.1:$P_PLAIN" --source 127.0.0.2 \
	expect:220 cmd:250:"EHLO dialog-client.example" \
	cmd:5..:"XCLIENT ADDR=10.9.9.9" cmd:221:QUIT closed:3

# --- SMTP smuggling: a client-made XCLIENT hidden behind a bare-LF end of data ----------
# Postfix 3.7 (smtpd_forbid_bare_newline = no) takes <LF>.<LF> as the end of data. If the
# proxy saw those bytes as message data while Postfix saw commands, the client's XCLIENT
# would come from the authorized proxy address and Postfix would believe it.
n=0
for seq in '\n.\n' '\r\n.\n' '\n.\r\n'; do
	n=$((n + 1))
	smtp_dialog_to "$T/smuggle$n.json" --connect "127.0.0.1:$P_PLAIN" --source 127.0.0.2 \
		expect:220 cmd:250:"EHLO smuggler.example" \
		cmd:250:"MAIL FROM:<app@client.test>" cmd:250:"RCPT TO:<someone@dest.test>" cmd:354:DATA \
		"raw:Subject: smuggle $n\r\n\r\nhello${seq}XCLIENT ADDR=10.66.66.$n NAME=spoofed$n.example\r\nMAIL FROM:<smuggled@evil.test>\r\nRCPT TO:<victim@dest.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nsmuggled body\r\n.\r\n" \
		"raw:\r\n.\r\nQUIT\r\n" drain:3
	# Fence: Postfix logged the end of this session (its plain listener's sessions so far:
	# pf_start's readiness probe, the two dialogs above, and n attempts), so its log holds
	# whatever the session did, a smuggled XCLIENT included.
	if ! pf_sessions_done pf plain $((3 + n)); then
		fail "smuggled_xclient_not_executed_$n" "Postfix did not log the end of the session: $(grep -c 'postfix/plain/smtpd.*disconnect from' "$PFLOG") plain sessions ended"
	elif grep -q "10\.66\.66\.$n\|spoofed$n" "$PFLOG"; then
		fail "smuggled_xclient_not_executed_$n" "$(grep -m2 "10\.66\.66\.$n\|spoofed$n" "$PFLOG")"
	else
		pass "smuggled_xclient_not_executed_$n"
	fi
done

# Control: the same bytes sent straight from the authorized address do smuggle an
# XCLIENT into this Postfix (so the checks above can fail).
smtp_dialog_to "$T/smuggle-control.json" --connect "127.0.0.1:${PF_PORT[pf.plain]}" \
	expect:220 cmd:250:"EHLO smuggler.example" \
	cmd:250:"MAIL FROM:<app@client.test>" cmd:250:"RCPT TO:<someone@dest.test>" cmd:354:DATA \
	"raw:Subject: smuggle control\r\n\r\nhello\n.\nXCLIENT ADDR=10.66.66.99 NAME=spoofed99.example\r\nQUIT\r\n" \
	drain:3
if wait_log 'from spoofed99\.example\[10\.66\.66\.99\]' 3 "$PFLOG"; then
	pass smuggling_control_postfix_accepts_bare_lf_xclient
else
	fail smuggling_control_postfix_accepts_bare_lf_xclient "$(cat "$T/smuggle-control.json")"
fi

# --- Postfix applies its policy to the real client ------------------------------------------
dialog xclient_postfix_policy_applies_to_real_client --connect "127.0.0.1:$P_PLAIN" --source 127.0.0.3 \
	expect:220 cmd:250:"EHLO blocked-client.example" \
	cmd:250:"MAIL FROM:<app@client.test>" cmd:5..:"RCPT TO:<someone@dest.test>" \
	contains:blocked-by-test-policy cmd:221:QUIT closed:3

# --- smtplib from 127.0.0.2 ---------------------------------------------------------------
make_message "$T/m-smtplib" xc-smtplib
if out=$(smtp_send --connect "127.0.0.1:$P_TLS" --source 127.0.0.2 --helo smtplib-client.example \
	--file "$T/m-smtplib" --from app@client.test --to someone@dest.test); then
	c=$(queued_client xc-smtplib)
	rcv=$(received_from xc-smtplib)
	if [[ $c == *"[127.0.0.2]" ]] && grep -q 'from smtplib-client.example' <<<"$rcv"; then
		pass xclient_smtplib_real_client
	else
		fail xclient_smtplib_real_client "client=$c Received: $rcv"
	fi
else
	fail xclient_smtplib_real_client "$out"
fi

# --- control: xclient = no shows the proxy's address ----------------------------------------
make_message "$T/m-off" xc-off
dialog xclient_off_transaction --connect "127.0.0.1:$P_OFF" --source 127.0.0.3 \
	expect:220 cmd:250:"EHLO off-client.example" \
	cmd:250:"MAIL FROM:<app@client.test>" cmd:250:"RCPT TO:<someone@dest.test>" \
	cmd:354:DATA "data:$T/m-off" expect:250 cmd:221:QUIT closed:3
c=$(queued_client xc-off)
if [[ $c == *"[127.0.0.1]" ]]; then
	pass xclient_off_postfix_sees_proxy
else
	fail xclient_off_postfix_sees_proxy "Postfix logged client=$c"
fi

finish
