#!/usr/bin/env bash
# SMTP smuggling (the CVE-2023-51764 class): a message whose body holds a bare CR/LF
# variant of the end-of-data marker followed by a second, spoofed transaction. Through the
# proxy, on terminate routes (STARTTLS client, plaintext upstream) and inject routes
# (plaintext client, STARTTLS upstream), to aiosmtpd and to a real Postfix at its most
# lenient (smtpd_forbid_bare_newline = no): exactly one message arrives per attempt, from
# the real sender, holding the would-be second transaction as text; no message from the
# spoofed sender arrives anywhere. A control sends one variant straight to the same Postfix
# and sees it smuggle (two messages), so the check can tell. bare_newline = reject refuses
# such a message with 521 5.5.2 and nothing is delivered.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/smtp_lib.sh
. "$(dirname "$0")/smtp_lib.sh"

SRV=(--cert "$CERTS/server.pem" --key "$CERTS/server.key")
start_sink aio "${SRV[@]}"       # aiosmtpd, STARTTLS offered (inject routes use it)
start_sink aio_plain             # aiosmtpd without TLS (terminate routes)
start_sink pfsink                # behind Postfix
PF_EXTRA='smtpd_forbid_bare_newline = no'
pf_start pf "$(port_of pfsink)" plain=none enc=may

declare -A P=()
conf=$T/smuggling.conf
route() { # NAME CLIENT_TLS UPSTREAM_PORT UPSTREAM_TLS [extra]
	local name=$1 ctls=$2 up=$3 utls=$4 port l
	shift 4
	free_port port
	P[$name]=$port
	printf '[route %s]\nlisten = 127.0.0.1:%s\nprotocol = smtp\nclient_tls = %s\n' "$name" "$port" "$ctls"
	printf 'upstream = 127.0.0.1:%s\nupstream_tls = %s\nupstream_name = localhost\n' "$up" "$utls"
	[ "$utls" = starttls ] && echo "upstream_policy = verify"
	for l in "$@"; do echo "$l"; done
	echo
}
{
	global_section "helo_name = proxy.smuggling.test"
	route term_aio starttls "$(port_of aio_plain)" none
	route inj_aio none "$(port_of aio)" starttls
	route term_pf starttls "${PF_PORT[pf.plain]}" none
	route inj_pf none "${PF_PORT[pf.enc]}" starttls
	route reject_aio none "$(port_of aio_plain)" none "bare_newline = reject"
} >"$conf"
start_proxy "$conf"

VARIANTS=('\n.\n' '\n.\r\n' '\r\n.\n' '\r.\r' '\r\n.\r' '\r.\r\n' '\r.\n' '\n.\r')
TLSV=(--ca "$CERTS/ca.pem" --name localhost)

# attempt ROUTE|direct:PORT TAG VARIANT [expect for the end of data]: one message from
# app@client.test whose body smuggles a transaction from ceo@bank.test after VARIANT.
attempt() {
	local target=$1 tag=$2 v=$3 want=${4:-250} port tls=() end=(cmd:221:QUIT)
	[ "$want" = 250 ] || end=(closed:5)
	case $target in
	direct:*) port=${target#direct:} ;;
	*) port=${P[$target]} ;;
	esac
	[ "${target#term_}" != "$target" ] &&
		tls=(cmd:220:STARTTLS starttls cmd:250:"EHLO app.client.test")
	smtp_dialog_to "$T/$tag.dialog" --connect "127.0.0.1:$port" "${TLSV[@]}" \
		expect:220 cmd:250:"EHLO app.client.test" "${tls[@]}" \
		cmd:250:"MAIL FROM:<app@client.test>" cmd:250:"RCPT TO:<someone@dest.test>" \
		cmd:354:DATA \
		"raw:Message-ID: <$tag@client.test>\r\nSubject: $tag\r\n\r\nhello$v""MAIL FROM:<ceo@bank.test>\r\nRCPT TO:<victim@dest.test>\r\nDATA\r\nMessage-ID: <$tag-spoofed@client.test>\r\nFrom: ceo@bank.test\r\n\r\nspoofed $tag\r\n.\r\n" \
		expect:"$want" "${end[@]}"
}

# one_message STORE TAG CHECK: exactly one message TAG in STORE, from app@client.test, with
# the smuggled transaction in its text.
one_message() {
	local store=$1 tag=$2 check=$3 f n
	if ! f=$(wait_tag "$store" "$tag" 10); then
		fail "$check" "no message $tag arrived: $(tail -c 300 "$T/$tag.dialog")"
		return
	fi
	n=$(grep -lF "Message-ID: <$tag@client.test>" "$store"/msg-*.eml | wc -l)
	if [ "$n" -ne 1 ]; then
		fail "$check" "$n messages $tag"
	elif ! grep -q '"mail_from": "app@client.test"' "${f%.eml}.json"; then
		fail "$check" "sender: $(cat "${f%.eml}.json")"
	elif ! grep -qF 'MAIL FROM:<ceo@bank.test>' "$f" || ! grep -qF "spoofed $tag" "$f"; then
		fail "$check" "the smuggled transaction is not in the message text: $(head -c 300 "$f" | tr '\r\n' '||')"
	else
		pass "$check"
	fi
}

# spoofed_count STORE: messages whose envelope sender is the spoofed one.
spoofed_count() { grep -l '"mail_from": "ceo@bank.test"' "$1"/msg-*.json 2>/dev/null | wc -l; }

for route in term_aio inj_aio term_pf inj_pf; do
	case $route in
	*_aio) store=$T/$([ "$route" = inj_aio ] && echo aio || echo aio_plain).store ;;
	*_pf) store=$T/pfsink.store ;;
	esac
	for i in "${!VARIANTS[@]}"; do
		attempt "$route" "$route-v$i" "${VARIANTS[$i]}"
		one_message "$store" "$route-v$i" "${route}_variant_${i}_one_message"
	done
done

# Control: the same bytes straight to Postfix smuggle a second message (so one_message and
# spoofed_count can tell), which the proxy prevented above.
attempt "direct:${PF_PORT[pf.plain]}" control-v1 '\n.\r\n'
if wait_tag "$T/pfsink.store" control-v1-spoofed 10 >/dev/null; then
	pass control_postfix_direct_smuggles
else
	fail control_postfix_direct_smuggles "the spoofed message did not arrive: the test could not see smuggling"
fi
# Fence: Postfix's queue is empty, so every message it accepted (a smuggled one included)
# has reached the sink by now.
if ! pf_idle pf; then
	fail postfix_spoofed_only_from_the_control "Postfix still holds messages: $(find "$T/pf-pf/spool/active" "$T/pf-pf/spool/deferred" -type f | wc -l)"
elif [ "$(spoofed_count "$T/pfsink.store")" -eq 1 ]; then
	pass postfix_spoofed_only_from_the_control
else
	fail postfix_spoofed_only_from_the_control "$(spoofed_count "$T/pfsink.store") messages from ceo@bank.test behind Postfix (want 1, the control's)"
fi
# The sinks did get the eight real messages each (one_message waited for them; a spoofed
# one would have come in the same session, before its QUIT was answered): a store that is
# missing or holds fewer proves nothing.
for st in aio aio_plain; do
	n=$(spoofed_count "$T/$st.store")
	real=$(msg_count "$T/$st.store")
	if [ "${real:-0}" -lt 8 ]; then
		fail "${st}_no_spoofed_message" "the sink holds ${real:-no store, 0} messages (want >= 8): it saw nothing to judge"
	elif [ "$n" -eq 0 ]; then
		pass "${st}_no_spoofed_message"
	else
		fail "${st}_no_spoofed_message" "$n messages from ceo@bank.test"
	fi
done
n=$(msg_count "$T/aio_plain.store")
[ "$n" -eq 8 ] && pass aio_plain_eight_messages || fail aio_plain_eight_messages "$n messages"

# bare_newline = reject: 521 5.5.2 at the end of data, nothing delivered.
before=$(msg_count "$T/aio_plain.store")
for i in 0 3; do
	attempt reject_aio "reject-v$i" "${VARIANTS[$i]}" "521:bare"
	if grep -q '"ok": true' "$T/reject-v$i.dialog"; then
		pass "reject_variant_${i}_521"
	else
		fail "reject_variant_${i}_521" "$(tail -c 300 "$T/reject-v$i.dialog")"
	fi
done
# A good message after them (its session starts once theirs ended) fences the count.
smtp_dialog_to "$T/fence.dialog" --connect "127.0.0.1:${P[reject_aio]}" expect:220 \
	cmd:250:"EHLO app.client.test" cmd:250:"MAIL FROM:<app@client.test>" \
	cmd:250:"RCPT TO:<someone@dest.test>" cmd:354:DATA \
	"raw:Message-ID: <fence@client.test>\r\n\r\nfine\r\n.\r\n" expect:250 cmd:221:QUIT
if wait_tag "$T/aio_plain.store" fence 10 >/dev/null; then
	after=$(msg_count "$T/aio_plain.store")
	[ "$after" -eq $((before + 1)) ] && pass reject_nothing_delivered ||
		fail reject_nothing_delivered "$((after - before - 1)) rejected messages delivered"
else
	fail reject_nothing_delivered "the fence message did not arrive: $(tail -c 300 "$T/fence.dialog")"
fi
expect_log reject_logged 'route=reject_aio .*event=bare_newline action=reject'
finish
