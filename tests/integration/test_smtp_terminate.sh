#!/usr/bin/env bash
# SMTP terminate and bridge: modern clients (swaks --tls/--tlsc, Python smtplib, curl
# --ssl-reqd and smtps://, openssl s_client -starttls smtp, a scripted client) -> proxy
# (client_tls starttls|implicit) -> a legacy plaintext server (aiosmtpd with AUTH, no TLS).
# Checks the EHLO rewriting (STARTTLS added before TLS and removed inside it, AUTH hidden
# before TLS under client_policy = encrypt), 530 before STARTTLS without reaching the
# server, byte-exact delivery, and the bridges implicit -> STARTTLS (a Postfix requiring
# TLS) and STARTTLS -> implicit (a Postfix in wrapper mode).
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/smtp_lib.sh
. "$(dirname "$0")/smtp_lib.sh"

CA=$CERTS/ca.pem
start_sink legacy --auth
start_sink pfsink
pf_start pf "$(port_of pfsink)" enc=encrypt smtps=wrapper
LEGACY=127.0.0.1:$(port_of legacy)
LST=$T/legacy.store

free_port P_TERM
free_port P_MAY
free_port P_IMPL
free_port P_BRIDGE
free_port P_BRIDGE2
conf=$T/terminate.conf
{
	global_section "helo_name = proxy.terminate.test"
	cat <<EOF
[route term]
listen = 127.0.0.1:$P_TERM
protocol = smtp
client_tls = starttls
client_policy = encrypt
upstream = $LEGACY
upstream_tls = none

[route term-may]
listen = 127.0.0.1:$P_MAY
protocol = smtp
client_tls = starttls
client_policy = may
upstream = $LEGACY
upstream_tls = none

[route implicit]
listen = 127.0.0.1:$P_IMPL
protocol = smtp
client_tls = implicit
upstream = $LEGACY
upstream_tls = none

[route bridge-465-587]
listen = 127.0.0.1:$P_BRIDGE
protocol = smtp
client_tls = implicit
upstream = 127.0.0.1:${PF_PORT[pf.enc]}
upstream_tls = starttls
upstream_policy = verify
upstream_name = localhost

[route bridge-587-465]
listen = 127.0.0.1:$P_BRIDGE2
protocol = smtp
client_tls = starttls
client_policy = encrypt
upstream = 127.0.0.1:${PF_PORT[pf.smtps]}
upstream_tls = implicit
upstream_policy = verify
upstream_name = localhost
EOF
} >"$conf"
start_proxy "$conf"

TLSV=(--ca "$CA" --name localhost)   # smtp_dialog.py: verify the proxy as localhost

# --- EHLO rewriting and 530 enforcement (scripted client) ------------------------------
make_message "$T/m-dialog" dialog
dialog ehlo_offers_starttls_hides_auth_then_530 --connect "127.0.0.1:$P_TERM" "${TLSV[@]}" \
	expect:220 cmd:250:"EHLO modern.client.test" \
	has:STARTTLS lacks:AUTH has:8BITMIME has:SIZE \
	cmd:530:"MAIL FROM:<before-tls@client.test>" contains:"5.7.0 Must issue a STARTTLS command first" \
	cmd:530:"RCPT TO:<before-tls@dest.test>" \
	cmd:530:DATA \
	cmd:530:"AUTH PLAIN AGJlZm9yZS10bHMAc2VjcmV0" \
	cmd:250:NOOP cmd:221:QUIT closed:3
dialog starttls_then_ehlo_rewritten_and_delivery --connect "127.0.0.1:$P_TERM" "${TLSV[@]}" \
	expect:220 cmd:250:"EHLO modern.client.test" has:STARTTLS \
	cmd:5..:"STARTTLS now" \
	cmd:220:STARTTLS contains:"2.0.0 Ready to start TLS" starttls \
	cmd:5..:"MAIL FROM:<no-ehlo-after-tls@client.test>" \
	cmd:250:"EHLO modern.client.test" lacks:STARTTLS has:AUTH has:8BITMIME \
	cmd:5..:STARTTLS \
	cmd:235:"AUTH PLAIN AHVzZXIAcGFzcw==" \
	cmd:250:"MAIL FROM:<app@client.test>" cmd:5..:STARTTLS cmd:250:"RCPT TO:<a@dest.test>" \
	cmd:354:DATA "data:$T/m-dialog" expect:250 cmd:221:QUIT closed:3
delivered_exact dialog_delivered_byte_exact "$LST" dialog "$T/m-dialog"
# The second session's MAIL (after its refused one, and after the whole first session)
# reached the server: so would have the refused commands.
raw_never legacy_never_saw_commands_before_tls "$T/legacy.raw" 'before-tls|no-ehlo-after-tls' \
	'^MAIL FROM:<app@client\.test>$'

# AUTH LOGIN inside TLS: the 334 continuation lines are credentials, not commands, and
# they are never logged.
dialog auth_login_continuations --connect "127.0.0.1:$P_TERM" "${TLSV[@]}" \
	expect:220 cmd:250:"EHLO modern.client.test" cmd:220:STARTTLS starttls \
	cmd:250:"EHLO modern.client.test" has:AUTH \
	cmd:334:"AUTH LOGIN" cmd:334:"dXNlci1zZWNyZXQtbmFtZQ==" cmd:235:"cGFzcy1zZWNyZXQtd29yZA==" \
	cmd:250:NOOP cmd:221:QUIT closed:3
# Fence: the close of the third session on route term (this one), logged after its QUIT.
log_never credentials_not_logged 'dXNlci1zZWNyZXQtbmFtZQ|cGFzcy1zZWNyZXQtd29yZA|AHVzZXIAcGFzcw|secret-word' \
	'route=term .*event=close .*reason=quit' 3

# PIPELINING with a refused recipient: DATA is refused too (503), so what follows is a
# command again (RSET), not message data; then a clean transaction in the same session.
make_message "$T/m-pipe" pipe
dialog pipelined_refused_data_stays_in_sync --connect "127.0.0.1:$P_TERM" "${TLSV[@]}" \
	expect:220 cmd:250:"EHLO modern.client.test" cmd:220:STARTTLS starttls \
	cmd:250:"EHLO modern.client.test" \
	"raw:MAIL FROM:<app@client.test>\r\nRCPT TO:<reject-me@dest.test>\r\nDATA\r\n" \
	expect:250 expect:550 expect:5 \
	"raw:RSET\r\nMAIL FROM:<app@client.test>\r\nRCPT TO:<ok@dest.test>\r\nDATA\r\n" \
	expect:250 expect:250 expect:250 expect:354 "data:$T/m-pipe" expect:250 \
	cmd:221:QUIT closed:3
delivered_exact pipelined_delivered_byte_exact "$LST" pipe "$T/m-pipe"

# --- real clients, STARTTLS ------------------------------------------------------------
make_message "$T/m-swaks" swaks
head -c -2 "$T/m-swaks" >"$T/m-swaks.data" # swaks adds the final CRLF itself
if ! swaks_has_tls; then
	skip swaks_starttls_accepted "swaks cannot do TLS here: install libnet-ssleay-perl"
elif out=$(swaks --server "127.0.0.1:$P_TERM" --tls --tls-verify --tls-ca-path "$CA" \
	--from app@client.test --to someone@dest.test --data "@$T/m-swaks.data" 2>&1); then
	pass swaks_starttls_accepted
	delivered_exact swaks_delivered_byte_exact "$LST" swaks "$T/m-swaks"
else
	fail swaks_starttls_accepted "swaks: $(printf '%s' "$out" | grep -E '^(<~?|\*\*\*)' | tail -n 4)"
fi

make_message "$T/m-smtplib" smtplib
if out=$(smtp_send --connect "127.0.0.1:$P_TERM" --tls starttls --ca "$CA" \
	--file "$T/m-smtplib" --from app@client.test --to someone@dest.test --login user:pass); then
	pass smtplib_starttls_login_accepted
	delivered_exact smtplib_delivered_byte_exact "$LST" smtplib "$T/m-smtplib"
	if "$SMTP_PY" -c '
import json, sys
r = json.loads(sys.argv[1])
before, after = r["ehlo"], r["ehlo_tls"]
ok = "starttls" in before and "auth" not in before and "starttls" not in after and "auth" in after
sys.exit(0 if ok else 1)' "$out"; then
		pass smtplib_features_before_after_tls
	else
		fail smtplib_features_before_after_tls "$out"
	fi
else
	fail smtplib_starttls_login_accepted "$out"
fi

make_message "$T/m-curl" curl
if out=$(curl -sS --max-time 20 --url "smtp://localhost:$P_TERM" --ssl-reqd --cacert "$CA" \
	--mail-from app@client.test --mail-rcpt someone@dest.test \
	--upload-file "$T/m-curl" 2>&1); then
	pass curl_ssl_reqd_accepted
	delivered_exact curl_delivered_byte_exact "$LST" curl "$T/m-curl"
else
	fail curl_ssl_reqd_accepted "curl: $out"
fi

# A 5 MB message (60000 lines) inside TLS: streamed, byte-exact.
make_message "$T/m-big" big
"$SMTP_PY" -c '
import sys
with open(sys.argv[1], "ab") as f:
    for i in range(60000):
        f.write(b"line %06d " % i + b"z" * 70 + b"\r\n")' "$T/m-big"
if out=$(smtp_send --connect "127.0.0.1:$P_TERM" --tls starttls --ca "$CA" \
	--file "$T/m-big" --from app@client.test --to someone@dest.test); then
	delivered_exact big_message_5mb_byte_exact "$LST" big "$T/m-big"
else
	fail big_message_5mb_byte_exact "$out"
fi

# openssl s_client: its own EHLO and STARTTLS, then our commands with pauses (DATA
# waits for 354). LF lines + -crlf; -nocommands so "QUIT"/"RCPT" are not s_client keys.
make_message "$T/m-openssl" openssl
sed 's/\r$//; s/^\./../' "$T/m-openssl" >"$T/m-openssl.lf"
{
	sleep 0.5
	printf 'EHLO openssl.client.test\nMAIL FROM:<app@client.test>\nRCPT TO:<someone@dest.test>\nDATA\n'
	sleep 0.7
	cat "$T/m-openssl.lf"
	printf '.\n'
	sleep 0.5
	printf 'QUIT\n'
	sleep 0.5
} | timeout 20 openssl s_client -connect "127.0.0.1:$P_TERM" -starttls smtp \
	-CAfile "$CA" -verify_return_error -verify_hostname localhost \
	-crlf -quiet -nocommands >"$T/openssl.out" 2>"$T/openssl.err"
if grep -q '^250 2.0.0 Ok: queued as' "$T/openssl.out" && grep -q '^221' "$T/openssl.out"; then
	pass openssl_s_client_starttls_accepted
	delivered_exact openssl_delivered_byte_exact "$LST" openssl "$T/m-openssl"
else
	fail openssl_s_client_starttls_accepted "out: $(tail -n 5 "$T/openssl.out") err: $(tail -n 3 "$T/openssl.err")"
fi

# The legacy server never heard of STARTTLS or TLS: the proxy answered it.
# The control is the last session's EHLO, sent inside TLS after s_client's STARTTLS.
raw_never legacy_never_saw_starttls "$T/legacy.raw" '[Ss][Tt][Aa][Rr][Tt][Tt][Ll][Ss]' \
	'^EHLO openssl\.client\.test$'
expect_log proxy_log_client_tls 'route=term .*event=client_tls .*version=TLSv1\.[23]'

# --- client_policy = may: plaintext allowed, AUTH passes through --------------------------
make_message "$T/m-may" may
dialog may_plaintext_with_auth_offered --connect "127.0.0.1:$P_MAY" \
	expect:220 cmd:250:"EHLO old.client.test" has:STARTTLS has:AUTH \
	cmd:250:"MAIL FROM:<app@client.test>" cmd:503:STARTTLS cmd:250:"RCPT TO:<a@dest.test>" \
	cmd:354:DATA "data:$T/m-may" expect:250 cmd:221:QUIT closed:3
delivered_exact may_delivered_byte_exact "$LST" may "$T/m-may"

# --- implicit TLS toward the client (port 465 style) ------------------------------------
dialog implicit_ehlo_no_starttls --connect "127.0.0.1:$P_IMPL" --implicit "${TLSV[@]}" \
	expect:220 cmd:250:"EHLO modern.client.test" lacks:STARTTLS has:AUTH \
	cmd:5..:STARTTLS cmd:221:QUIT closed:3

make_message "$T/m-swaks-tlsc" swaks-tlsc
head -c -2 "$T/m-swaks-tlsc" >"$T/m-swaks-tlsc.data"
if ! swaks_has_tls; then
	skip swaks_tlsc_accepted "swaks cannot do TLS here: install libnet-ssleay-perl"
elif out=$(swaks --server "127.0.0.1:$P_IMPL" --tlsc --tls-verify --tls-ca-path "$CA" \
	--from app@client.test --to someone@dest.test --data "@$T/m-swaks-tlsc.data" 2>&1); then
	pass swaks_tlsc_accepted
	delivered_exact swaks_tlsc_delivered_byte_exact "$LST" swaks-tlsc "$T/m-swaks-tlsc"
else
	fail swaks_tlsc_accepted "swaks: $(printf '%s' "$out" | grep -E '^(<~?|\*\*\*)' | tail -n 4)"
fi

make_message "$T/m-smtps" smtps
if out=$(curl -sS --max-time 20 --url "smtps://localhost:$P_IMPL" --cacert "$CA" \
	--mail-from app@client.test --mail-rcpt someone@dest.test \
	--upload-file "$T/m-smtps" 2>&1); then
	pass curl_smtps_accepted
	delivered_exact curl_smtps_delivered_byte_exact "$LST" smtps "$T/m-smtps"
else
	fail curl_smtps_accepted "curl: $out"
fi

make_message "$T/m-smtp-ssl" smtp-ssl
if out=$(smtp_send --connect "127.0.0.1:$P_IMPL" --tls implicit --ca "$CA" \
	--file "$T/m-smtp-ssl" --from app@client.test --to someone@dest.test); then
	delivered_exact smtplib_smtp_ssl_delivered_byte_exact "$LST" smtp-ssl "$T/m-smtp-ssl"
else
	fail smtplib_smtp_ssl_delivered_byte_exact "$out"
fi

# --- bridges -------------------------------------------------------------------------------
# Implicit TLS client -> proxy -> STARTTLS to Postfix (encrypt): 465 -> 587.
make_message "$T/m-bridge" bridge
if out=$(curl -sS --max-time 20 --url "smtps://localhost:$P_BRIDGE" --cacert "$CA" \
	--mail-from app@client.test --mail-rcpt someone@dest.test \
	--upload-file "$T/m-bridge" 2>&1); then
	pass bridge_implicit_to_starttls_accepted
	delivered_exact bridge_implicit_to_starttls_byte_exact "$T/pfsink.store" bridge "$T/m-bridge" via-postfix
else
	fail bridge_implicit_to_starttls_accepted "curl: $out"
fi
expect_log bridge_proxy_log_both_sides_tls 'route=bridge-465-587 .*event=upstream_tls .*verify=ok'
expect_log bridge_proxy_log_client_tls 'route=bridge-465-587 .*event=client_tls .*version=TLSv1\.[23]'

# STARTTLS client -> proxy -> implicit TLS to Postfix (wrapper mode): 587 -> 465.
make_message "$T/m-bridge2" bridge2
dialog bridge_starttls_to_implicit --connect "127.0.0.1:$P_BRIDGE2" "${TLSV[@]}" \
	expect:220:Postfix-under-test cmd:250:"EHLO modern.client.test" has:STARTTLS \
	cmd:530:"MAIL FROM:<app@client.test>" \
	cmd:220:STARTTLS starttls cmd:250:"EHLO modern.client.test" lacks:STARTTLS \
	cmd:250:"MAIL FROM:<app@client.test>" cmd:250:"RCPT TO:<a@dest.test>" \
	cmd:354:DATA "data:$T/m-bridge2" expect:250 cmd:221:QUIT closed:3
delivered_exact bridge_starttls_to_implicit_byte_exact "$T/pfsink.store" bridge2 "$T/m-bridge2" via-postfix
n_esmtps=$(grep -l 'with ESMTPS' "$T/pfsink.store"/msg-*.eml 2>/dev/null | wc -l)
if [ "$n_esmtps" -ge 2 ] && [ "$n_esmtps" -eq "$(msg_count "$T/pfsink.store")" ]; then
	pass bridge_postfix_received_with_esmtps
else
	fail bridge_postfix_received_with_esmtps "$n_esmtps of $(msg_count "$T/pfsink.store") say 'with ESMTPS'"
fi

finish
