#!/usr/bin/env bash
# SMTP security cases, each as a check, against scripted upstreams (tools/smtp_fake.py):
# pipelined bytes after STARTTLS from the client (CVE-2011-0411 style), response injection
# after the upstream's 220 (CVE-2014-3556 style), STARTTLS stripped under every policy
# level and under testing mode, STARTTLS refused, replies in 1-byte segments, a stalled
# reply, an oversized reply, oversized command lines, certificate failures, an unreachable
# upstream, and an upstream lost during DATA (451 4.4.2: never a 250 the upstream did not
# give).
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/smtp_lib.sh
. "$(dirname "$0")/smtp_lib.sh"

SRV=(--cert "$CERTS/server.pem" --key "$CERTS/server.key")
start_fake inject "${SRV[@]}" --inject
start_fake nost_may --starttls none
start_fake nost_encrypt --starttls none
start_fake nost_verify --starttls none
start_fake nost_fingerprint --starttls none
start_fake nost_testing --starttls none
start_fake hidden_encrypt "${SRV[@]}" --starttls hidden
start_fake lookalike "${SRV[@]}" --starttls lookalike
start_fake lowercase "${SRV[@]}" --starttls lowercase
start_fake refuse_encrypt --starttls refuse
start_fake refuse554_verify --starttls refuse --refuse-reply "554 5.7.0 Not now"
start_fake refuse_may --starttls refuse
start_fake bytewise "${SRV[@]}" --bytewise --multiline-greeting
start_fake stall --stall ehlo
start_fake stall_mail "${SRV[@]}" --stall mail
start_fake huge --huge-ehlo 100000
start_fake expired --cert "$CERTS/expired.pem" --key "$CERTS/expired.key"
start_fake selfsigned --cert "$CERTS/selfsigned.pem" --key "$CERTS/selfsigned.key"
start_fake wrongname --cert "$CERTS/wrongname.pem" --key "$CERTS/wrongname.key"
start_fake otherca --cert "$CERTS/otherca-server.pem" --key "$CERTS/otherca-server.key"
start_fake pin_ok --cert "$CERTS/selfsigned.pem" --key "$CERTS/selfsigned.key"
start_fake pin_mismatch --cert "$CERTS/wrongname.pem" --key "$CERTS/wrongname.key"
start_fake die_in_data "${SRV[@]}" --die-in-data 3000
start_fake die_after_data "${SRV[@]}" --die-after-data
start_fake legacy_may --starttls none
start_fake legacy_encrypt --starttls none
start_fake legacy_long --starttls none
start_fake lost --starttls none
free_port DEAD # nothing listens here

declare -A P=()
conf=$T/security.conf
PIN=$(spki_sha256 "$CERTS/server.pem")
PIN_SELF=$(spki_sha256 "$CERTS/selfsigned.pem")
# inject_route NAME FAKE UPSTREAM_TLS POLICY [extra lines...]: a route with a plaintext
# client side toward the fake FAKE (DEAD: a port nobody listens on); its port: P[NAME].
# terminate_route NAME FAKE CLIENT_POLICY: STARTTLS offered to the client, plain upstream.
inject_route() {
	local name=$1 fake=$2 utls=$3 pol=$4 port up
	shift 4
	free_port port
	P[$name]=$port
	if [ "$fake" = DEAD ]; then up=127.0.0.1:$DEAD; else up=127.0.0.1:$(port_of "$fake"); fi
	printf '[route %s]\nlisten = 127.0.0.1:%s\nprotocol = smtp\nclient_tls = none\n' "$name" "$port"
	printf 'upstream = %s\nupstream_tls = %s\nupstream_policy = %s\nupstream_name = localhost\n' \
		"$up" "$utls" "$pol"
	local l
	for l in "$@"; do echo "$l"; done
	echo
}
terminate_route() {
	local name=$1 fake=$2 cpol=$3 port
	free_port port
	P[$name]=$port
	printf '[route %s]\nlisten = 127.0.0.1:%s\nprotocol = smtp\nclient_tls = starttls\n' "$name" "$port"
	printf 'client_policy = %s\nupstream = 127.0.0.1:%s\nupstream_tls = none\n\n' \
		"$cpol" "$(port_of "$fake")"
}
{
	global_section "helo_name = proxy.security.test"
	inject_route inject inject starttls verify
	inject_route nost_may nost_may starttls may
	inject_route nost_encrypt nost_encrypt starttls encrypt
	inject_route nost_verify nost_verify starttls verify
	inject_route nost_fingerprint nost_fingerprint starttls fingerprint "upstream_fingerprint = sha256:$PIN"
	inject_route nost_testing nost_testing starttls encrypt "policy_mode = testing"
	inject_route hidden_encrypt hidden_encrypt starttls encrypt
	inject_route lookalike lookalike starttls encrypt
	inject_route lowercase lowercase starttls verify
	inject_route refuse_encrypt refuse_encrypt starttls encrypt
	inject_route refuse554_verify refuse554_verify starttls verify
	inject_route refuse_may refuse_may starttls may
	inject_route bytewise bytewise starttls verify
	inject_route stall stall starttls verify "handshake_timeout = 2s"
	inject_route stall_mail stall_mail starttls verify "idle_timeout = 2s"
	inject_route huge huge starttls verify
	inject_route expired expired starttls verify
	inject_route selfsigned selfsigned starttls verify
	inject_route wrongname wrongname starttls verify
	inject_route otherca otherca starttls verify
	inject_route pin_ok pin_ok starttls fingerprint "upstream_fingerprint = sha256:$PIN_SELF"
	inject_route pin_mismatch pin_mismatch starttls fingerprint "upstream_fingerprint = sha256:$PIN"
	inject_route unreachable DEAD starttls verify "connect_timeout = 3s"
	inject_route die_in_data die_in_data starttls verify
	inject_route die_after_data die_after_data starttls verify
	terminate_route legacy_may legacy_may may
	terminate_route legacy_encrypt legacy_encrypt encrypt
	inject_route legacy_long legacy_long none none
	inject_route lost lost none none
} >"$conf"
start_proxy "$conf"

TLSV=(--ca "$CERTS/ca.pem" --name localhost)
make_message "$T/msg" security

# transaction ROUTE CHECK [smtp_dialog.py options]: a whole transaction from a plaintext
# client through ROUTE succeeds (message: $T/msg).
transaction() {
	local name=$1 check=$2
	shift 2
	dialog "$check" --connect "127.0.0.1:${P[$name]}" "$@" \
		expect:220 cmd:250:"EHLO legacy.client.test" \
		cmd:250:"MAIL FROM:<app@client.test>" cmd:250:"RCPT TO:<someone@dest.test>" \
		cmd:354:DATA "data:$T/msg" expect:250 cmd:221:QUIT closed:3
}
# blocked NAME CHECK: the client of route NAME gets 421 4.7.0 (before any greeting) and
# the connection closes.
blocked() {
	dialog "$2" --connect "127.0.0.1:${P[$1]}" "raw:EHLO legacy.client.test\r\n" \
		expect:"421:4.7.0" closed:3
}
# fake_got_no_mail FAKE CHECK: the fake saw its one session (opened with the proxy's own
# EHLO) end, and never received MAIL, RCPT nor the client's EHLO.
fake_got_no_mail() {
	fake_never "$2" "$1" 'MAIL FROM|RCPT TO|legacy\.client\.test' 1 '^plain: EHLO proxy\.security\.test$'
}
# stored_over FAKE TLS CHECK: the fake stored the message, over TLS (true) or not (false).
stored_over() {
	local f
	if ! f=$(wait_tag "$T/$1.store" security 5); then
		fail "$3" "no message stored by $1"
	elif ! grep -q "\"tls\": $2" "${f%.eml}.json"; then
		fail "$3" "stored, but not with tls=$2: $(cat "${f%.eml}.json")"
	elif ! same_message "$T/msg" "$f" >/dev/null; then
		fail "$3" "$(same_message "$T/msg" "$f")"
	else
		pass "$3"
	fi
}

# --- pipelined bytes after STARTTLS from the client ---------------------------------------
# The MAIL pipelined behind STARTTLS (in the same write) must be discarded: never relayed,
# never answered. The first reply inside TLS is the one to EHLO.
for r in legacy_may legacy_encrypt; do
	dialog "client_pipelined_after_starttls_discarded_$r" --connect "127.0.0.1:${P[$r]}" "${TLSV[@]}" \
		expect:220 cmd:250:"EHLO modern.client.test" has:STARTTLS \
		"raw:STARTTLS\r\nMAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@dest.test>\r\n" \
		expect:220 starttls \
		cmd:250:"EHLO modern.client.test" contains:"fake.test greets" lacks:STARTTLS \
		cmd:250:NOOP silent:0.5 cmd:221:QUIT closed:3
	# The NOOP sent after the handshake reached the upstream: so would have the pipelined
	# commands sent before it.
	fake_never "upstream_never_saw_pipelined_command_$r" "$r" 'evil@attacker|victim@dest' 1 '^plain: NOOP$'
	# and the attempt is a logged security event with the bytes dropped (two lines, 60)
	expect_log "client_injection_logged_$r" \
		"route=$r .*event=starttls_injection side=client bytes=60 action=discarded security=yes"
done

# --- response injection by the upstream after its 220 -----------------------------------
dialog upstream_injected_reply_discarded --connect "127.0.0.1:${P[inject]}" \
	expect:220 cmd:250:"EHLO legacy.client.test" absent:injected \
	cmd:250:"MAIL FROM:<app@client.test>" absent:injected \
	cmd:250:"RCPT TO:<someone@dest.test>" absent:injected \
	cmd:354:DATA "data:$T/msg" expect:250:fake- \
	cmd:250:NOOP absent:injected silent:0.5 cmd:221:QUIT closed:3
stored_over inject true injection_message_delivered_over_tls
expect_log upstream_injection_logged \
	'route=inject .*event=starttls_injection side=upstream bytes=[1-9][0-9]* action=discarded security=yes'

# --- STARTTLS stripped by the upstream -----------------------------------------------------
transaction nost_may stripped_may_delivered_plaintext
stored_over nost_may false stripped_may_stored_in_plaintext
expect_log stripped_may_logged_tls_none 'route=nost_may .*event=upstream_tls .*tls=none'

for lvl in encrypt verify fingerprint; do
	blocked "nost_$lvl" "stripped_${lvl}_blocked_421"
	fake_got_no_mail "nost_$lvl" "stripped_${lvl}_no_mail_upstream"
	expect_log "stripped_${lvl}_logged" \
		"route=nost_$lvl .*event=policy_failure .*side=upstream .*result=starttls-not-supported .*mode=enforce"
done

transaction nost_testing stripped_testing_delivered
stored_over nost_testing false stripped_testing_stored
expect_log stripped_testing_logged \
	'route=nost_testing .*event=policy_failure .*result=starttls-not-supported .*mode=testing'

# STARTTLS not advertised but accepted if tried: under encrypt the proxy may block or
# try it, but the client's session never goes upstream in plaintext.
smtp_dialog_to "$T/hidden.json" --connect "127.0.0.1:${P[hidden_encrypt]}" \
	expect:2 cmd:2..:"EHLO legacy.client.test" cmd:2..:"MAIL FROM:<app@client.test>"
fake_never stripped_hidden_never_plaintext hidden_encrypt '^plain: (MAIL|RCPT|EHLO legacy)' 1 \
	'^plain: EHLO proxy\.security\.test$'

# Only a whole EHLO keyword is an offer: "X-STARTTLS", "STARTTLSX" and the word STARTTLS
# in the first line's domain text are not; lower case "starttls" is.
blocked lookalike starttls_lookalikes_not_an_offer
fake_never starttls_lookalikes_never_tried lookalike '^plain: STARTTLS' 1 '^plain: EHLO proxy\.security\.test$'
transaction lowercase starttls_lowercase_offer_used
stored_over lowercase true starttls_lowercase_stored_over_tls

# --- STARTTLS refused ----------------------------------------------------------------------
blocked refuse_encrypt refused_454_encrypt_blocked_421
fake_got_no_mail refuse_encrypt refused_454_encrypt_no_mail_upstream
blocked refuse554_verify refused_554_verify_blocked_421
fake_got_no_mail refuse554_verify refused_554_verify_no_mail_upstream
transaction refuse_may refused_454_may_delivered_plaintext
stored_over refuse_may false refused_454_may_stored_in_plaintext

# --- replies in 1-byte segments (before and inside TLS, multi-line greeting) -------------
transaction bytewise one_byte_segments_transaction --timeout 20
stored_over bytewise true one_byte_segments_stored_over_tls

# --- stalled and oversized replies --------------------------------------------------------
dialog stalled_ehlo_reply_421_after_timeout --connect "127.0.0.1:${P[stall]}" --timeout 8 \
	expect:421 after:1.5 before:6 closed:3
fake_got_no_mail stall stalled_no_mail_upstream
dialog stalled_mid_session_421_after_idle_timeout --connect "127.0.0.1:${P[stall_mail]}" --timeout 8 \
	expect:220 cmd:250:"EHLO legacy.client.test" \
	send:"MAIL FROM:<app@client.test>" expect:"421:4.4.2" after:1.5 before:6 closed:3
dialog oversized_reply_421 --connect "127.0.0.1:${P[huge]}" --timeout 8 \
	"raw:EHLO legacy.client.test\r\n" expect:421 closed:3
fake_got_no_mail huge oversized_reply_no_mail_upstream

# --- oversized command lines from the client ---------------------------------------------
# SMTP_CMD_MAX is 12288 octets; the text after the bound must never run as a command.
for off in 12286 12288 100000; do
	dialog "oversized_command_500_at_$off" --connect "127.0.0.1:${P[legacy_long]}" \
		expect:220 cmd:250:"EHLO legacy.client.test" \
		"long:$off:MAIL FROM:<tail-$off@evil.test>" expect:"500:5.5.2 Line too long" \
		cmd:250:NOOP cmd:250:"MAIL FROM:<ok@client.test>" cmd:250:RSET cmd:221:QUIT closed:3
done
# Three sessions, each with a MAIL after the overlong line that the upstream answered.
fake_never oversized_command_tail_not_executed legacy_long 'tail-|AAAAAAAA' 3 \
	'^plain: MAIL FROM:<ok@client\.test>$'

# Message data is not a command line: a 20000-octet line inside DATA passes unchanged.
"$SMTP_PY" -c '
import sys
open(sys.argv[1], "wb").write(b"Message-ID: <longdata@client.test>\r\n\r\n" + b"q" * 20000 + b"\r\nend\r\n")' "$T/longdata"
dialog data_long_line_not_a_command --connect "127.0.0.1:${P[legacy_long]}" \
	expect:220 cmd:250:"EHLO legacy.client.test" \
	cmd:250:"MAIL FROM:<app@client.test>" cmd:250:"RCPT TO:<someone@dest.test>" \
	cmd:354:DATA "data:$T/longdata" expect:250 cmd:221:QUIT closed:3
if f=$(wait_tag "$T/legacy_long.store" longdata 5) && cmp -s "$f" "$T/longdata"; then
	pass data_long_line_byte_exact
else
	fail data_long_line_byte_exact "stored message missing or different"
fi

# The client vanishes in the middle of DATA: the upstream must not get an end of data
# (no partial message is delivered). The fake "lost" serves this session only: once it has
# ended there (fake_idle), an end of data it did not get will not come.
dialog client_lost_mid_data_dialog --connect "127.0.0.1:${P[lost]}" \
	expect:220 cmd:250:"EHLO legacy.client.test" \
	cmd:250:"MAIL FROM:<app@client.test>" cmd:250:"RCPT TO:<someone@dest.test>" \
	cmd:354:DATA "raw:Message-ID: <partial@client.test>\r\n\r\nhalf a message\r\n"
fake_never client_lost_mid_data_no_delivery lost '<data [0-9]+ octets>' 1 '^plain: DATA$'
if [ "$(msg_count "$T/lost.store")" = 0 ]; then
	pass client_lost_mid_data_nothing_stored
else
	fail client_lost_mid_data_nothing_stored "the upstream stored $(msg_count "$T/lost.store") message(s)"
fi

# --- certificate failures -----------------------------------------------------------------
for c in expired:certificate-expired selfsigned:certificate-not-trusted \
	wrongname:certificate-host-mismatch otherca:certificate-not-trusted; do
	name=${c%%:*}
	result=${c#*:}
	blocked "$name" "cert_${name}_blocked_421"
	expect_log "cert_${name}_logged_$result" \
		"route=$name .*event=policy_failure .*side=upstream .*result=$result .*mode=enforce"
	fake_got_no_mail "$name" "cert_${name}_no_mail_upstream"
done

# fingerprint: the pin is the whole trust (a self-signed certificate with the right SPKI
# is fine), and any other key is refused.
transaction pin_ok fingerprint_pinned_selfsigned_delivered
stored_over pin_ok true fingerprint_pinned_stored_over_tls
blocked pin_mismatch fingerprint_mismatch_blocked_421
expect_log fingerprint_mismatch_logged \
	'route=pin_mismatch .*event=policy_failure .*side=upstream .*mode=enforce'
fake_got_no_mail pin_mismatch fingerprint_mismatch_no_mail_upstream

# --- upstream unreachable ------------------------------------------------------------------
dialog unreachable_421_4_4_1 --connect "127.0.0.1:${P[unreachable]}" \
	expect:"421:4.4.1" closed:3
expect_log unreachable_logged 'route=unreachable .*event=upstream_unreachable .*result=upstream-unreachable'

# --- upstream lost during DATA: never a 250 ------------------------------------------------
make_message "$T/big" big
for i in $(seq 1 40); do printf 'filler line %03d %s\r\n' "$i" "$(printf 'y%.0s' $(seq 1 80))"; done >>"$T/big"
for r in die_in_data die_after_data; do
	dialog "upstream_lost_${r}_4xx_not_250" --connect "127.0.0.1:${P[$r]}" \
		expect:220 cmd:250:"EHLO legacy.client.test" \
		cmd:250:"MAIL FROM:<app@client.test>" cmd:250:"RCPT TO:<someone@dest.test>" \
		cmd:354:DATA "data:$T/big" expect:"451:4.4.2" closed:5
done

finish
