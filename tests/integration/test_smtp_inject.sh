#!/usr/bin/env bash
# SMTP/LMTP inject: legacy plaintext clients (swaks, Python smtplib, curl, a scripted
# client) -> proxy (client_tls none, upstream STARTTLS verified against the test CA) ->
# a private Postfix that requires TLS (smtpd_tls_security_level = encrypt) -> aiosmtpd sink.
# Proves delivery byte for byte and encryption of the upstream hop (Postfix refuses
# plaintext MAIL, logs the TLS connection, stamps "with ESMTPS"). LMTP: proxy with
# protocol = lmtp in front of aiosmtpd's LMTP server with STARTTLS: LHLO and per-recipient
# replies after DATA.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/smtp_lib.sh
. "$(dirname "$0")/smtp_lib.sh"

start_sink sink
start_sink lmtp --lmtp --cert "$CERTS/server.pem" --key "$CERTS/server.key"
pf_start pf "$(port_of sink)" enc=encrypt
PF_ENC=${PF_PORT[pf.enc]}
PFLOG=$(pf_log pf)

free_port P_SMTP
free_port P_LMTP
conf=$T/inject.conf
{
	global_section "helo_name = proxy.inject.test"
	cat <<EOF
[route inject]
listen = 127.0.0.1:$P_SMTP
protocol = smtp
client_tls = none
upstream = 127.0.0.1:$PF_ENC
upstream_tls = starttls
upstream_policy = verify
upstream_name = localhost

[route lmtp]
listen = 127.0.0.1:$P_LMTP
protocol = lmtp
client_tls = none
upstream = 127.0.0.1:$(port_of lmtp)
upstream_tls = starttls
upstream_policy = verify
upstream_name = localhost
EOF
} >"$conf"
start_proxy "$conf"

# --- the upstream really requires TLS ---------------------------------------------------
dialog postfix_refuses_plaintext_mail --connect "127.0.0.1:$PF_ENC" \
	expect:220 cmd:250:"EHLO direct.test" has:STARTTLS \
	cmd:530:"MAIL FROM:<direct@client.test>" cmd:221:QUIT

# --- real clients through the proxy ------------------------------------------------------
make_message "$T/m-swaks" swaks
head -c -2 "$T/m-swaks" >"$T/m-swaks.data" # swaks adds the final CRLF itself
if out=$(swaks --server "127.0.0.1:$P_SMTP" --from app@client.test --to someone@dest.test \
	--helo legacy.client.test --data "@$T/m-swaks.data" 2>&1); then
	pass swaks_plaintext_accepted
	delivered_exact swaks_delivered_byte_exact "$T/sink.store" swaks "$T/m-swaks" via-postfix
else
	fail swaks_plaintext_accepted "swaks: $(printf '%s' "$out" | grep -E '^(<~?|\*\*\*)' | tail -n 4)"
fi

make_message "$T/m-smtplib" smtplib
if out=$(smtp_send --connect "127.0.0.1:$P_SMTP" --file "$T/m-smtplib" \
	--from app@client.test --to someone@dest.test --to other@dest.test); then
	pass smtplib_plaintext_accepted
	delivered_exact smtplib_delivered_byte_exact "$T/sink.store" smtplib "$T/m-smtplib" via-postfix
	# The client saw the capabilities Postfix offers inside TLS: no STARTTLS (the hop is
	# already encrypted and this route offers none to the client).
	if grep -q '"starttls"' <<<"$out"; then
		fail smtplib_no_starttls_offered "EHLO features: $out"
	else
		pass smtplib_no_starttls_offered
	fi
else
	fail smtplib_plaintext_accepted "$out"
fi

make_message "$T/m-curl" curl
if out=$(curl -sS --max-time 20 --url "smtp://127.0.0.1:$P_SMTP" \
	--mail-from app@client.test --mail-rcpt someone@dest.test \
	--upload-file "$T/m-curl" 2>&1); then
	pass curl_plaintext_accepted
	delivered_exact curl_delivered_byte_exact "$T/sink.store" curl "$T/m-curl" via-postfix
else
	fail curl_plaintext_accepted "curl: $out"
fi

# A scripted client: the greeting is Postfix's, the capabilities are the post-TLS ones,
# the client may talk before the greeting, and a pipelined transaction works.
make_message "$T/m-dialog" dialog
dialog dialog_early_talker_pipelined --connect "127.0.0.1:$P_SMTP" \
	"raw:EHLO early.client.test\r\n" expect:220:Postfix-under-test \
	expect:250 has:PIPELINING has:8BITMIME lacks:STARTTLS \
	"raw:MAIL FROM:<app@client.test>\r\nRCPT TO:<a@dest.test>\r\nRCPT TO:<b@dest.test>\r\nDATA\r\n" \
	expect:250 expect:250 expect:250 expect:354 \
	"data:$T/m-dialog" expect:250 \
	cmd:250:NOOP cmd:250:RSET cmd:221:QUIT closed:3
delivered_exact dialog_delivered_byte_exact "$T/sink.store" dialog "$T/m-dialog" via-postfix

# BDAT (CHUNKING, offered by Postfix): chunk octets are never parsed (the message has a
# lone "." line, unstuffed here) and arrive unchanged.
make_message "$T/m-bdat" bdat
dialog bdat_chunks --connect "127.0.0.1:$P_SMTP" \
	expect:220 cmd:250:"EHLO legacy.client.test" has:CHUNKING \
	cmd:250:"MAIL FROM:<app@client.test>" cmd:250:"RCPT TO:<a@dest.test>" \
	"bdat:$T/m-bdat" cmd:250:NOOP cmd:221:QUIT closed:3
delivered_exact bdat_delivered_byte_exact "$T/sink.store" bdat "$T/m-bdat" via-postfix

# --- proof of encryption on the upstream hop ---------------------------------------------
# Every message that reached the sink went through the encrypt-only Postfix listener and
# says so in its Received: header.
n_esmtps=$(grep -l '^	by pf-pf.test (Postfix) with ESMTPS' "$T/sink.store"/msg-*.eml 2>/dev/null | wc -l)
n_msgs=$(msg_count "$T/sink.store")
if [ "$n_msgs" -ge 5 ] && [ "$n_esmtps" -eq "$n_msgs" ]; then
	pass postfix_received_with_esmtps
else
	fail postfix_received_with_esmtps "$n_esmtps of $n_msgs messages say 'with ESMTPS' (want >= 5, all)"
fi
n_tls=$(grep -c 'postfix/enc/smtpd\[[0-9]*\]: .*TLS connection established from localhost\[127.0.0.1\]' "$PFLOG")
if [ "$n_tls" -ge 4 ]; then
	pass postfix_log_tls_from_proxy
else
	fail postfix_log_tls_from_proxy "$n_tls TLS connections in the Postfix log (want >= 4): $(grep -m3 smtpd "$PFLOG")"
fi
if grep -q 'postfix/enc/smtpd.*disconnect from localhost\[127.0.0.1\] ehlo=2 starttls=1' "$PFLOG"; then
	pass postfix_log_starttls_then_ehlo
else
	fail postfix_log_starttls_then_ehlo "no 'ehlo=2 starttls=1' disconnect line"
fi
expect_log proxy_log_upstream_tls_verified \
	'route=inject .*event=upstream_tls .*version=TLSv1\.[23] .*cipher=[A-Z0-9_-]+ .*verify=ok'
# Fence: the five sessions above (swaks, smtplib, curl, dialog, bdat) ended.
log_never proxy_log_no_policy_failure 'route=inject .*event=policy_failure' 'route=inject .*event=close' 5

# --- LMTP ---------------------------------------------------------------------------------
make_message "$T/m-lmtp" lmtp
dialog lmtp_lhlo_per_recipient_replies --connect "127.0.0.1:$P_LMTP" \
	expect:220 cmd:250:"LHLO legacy.lmtp.test" has:8BITMIME lacks:STARTTLS \
	cmd:250:"MAIL FROM:<app@client.test>" \
	cmd:250:"RCPT TO:<alice@dest.test>" \
	cmd:550:"RCPT TO:<reject-bob@dest.test>" \
	cmd:250:"RCPT TO:<defer-carol@dest.test>" \
	cmd:250:"RCPT TO:<dave@dest.test>" \
	cmd:354:DATA "data:$T/m-lmtp" \
	expect:250:alice@dest.test expect:452:defer-carol@dest.test expect:250:dave@dest.test \
	cmd:250:NOOP cmd:221:QUIT closed:3
if f=$(wait_tag "$T/lmtp.store" lmtp 5); then
	meta=$(cat "${f%.eml}.json")
	if same_message "$T/m-lmtp" "$f" >/dev/null &&
		grep -q '"delivered": \["<\?alice@dest.test>\?", "<\?dave@dest.test>\?"\]' <<<"$meta" &&
		grep -q '"tls": true' <<<"$meta" && grep -q '"helo": "legacy.lmtp.test"' <<<"$meta"; then
		pass lmtp_delivered_byte_exact_over_tls
	else
		fail lmtp_delivered_byte_exact_over_tls "$(same_message "$T/m-lmtp" "$f") meta: $meta"
	fi
else
	fail lmtp_delivered_byte_exact_over_tls "no LMTP message stored"
fi
# LMTP upstream: the proxy's own hello is LHLO, so the server never saw EHLO.
if grep -qa '^EHLO' "$T/lmtp.raw"; then
	fail lmtp_upstream_lhlo_only "the LMTP server received EHLO"
elif grep -qa '^LHLO proxy.inject.test' "$T/lmtp.raw"; then
	pass lmtp_upstream_lhlo_only
else
	fail lmtp_upstream_lhlo_only "no LHLO from the proxy: $(head -c 300 "$T/lmtp.raw" | tr -c '[:print:]\n' .)"
fi
expect_log proxy_log_lmtp_upstream_tls 'route=lmtp .*event=upstream_tls .*verify=ok'

finish
