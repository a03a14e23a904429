#!/usr/bin/env bash
# IMAP (protocol = imap) against a real Dovecot (dovecot_lib.sh: loopback, its own
# base_dir/state_dir/log under $T, a passwd-file user alice/secret with a maildir of two
# known messages): "legacy" (ssl = no) and "tls" (ssl = required, STARTTLS on one port and
# implicit TLS on another). Clients: curl (imap://, imaps://, --ssl-reqd), Python imaplib
# (starttls), openssl s_client -starttls imap, and a scripted client
# (tools/imap_dialog.py). TLS on the upstream hop is proven from Dovecot's log (", TLS" in
# the Login: line). A scripted fake server (tools/imap_fake.py) strips STARTTLS, greets
# PREAUTH, and injects a tagged response after its OK to STARTTLS.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

for tool in dovecot curl openssl python3; do
	if ! command -v "$tool" >/dev/null; then
		skip test_imap "$tool not installed (bash scripts/deps.sh test)"
		exit 0
	fi
done
if [ ! -x /usr/lib/dovecot/imap ]; then
	skip test_imap "dovecot-imapd not installed (bash scripts/deps.sh test)"
	exit 0
fi

# shellcheck source=tests/integration/dovecot_lib.sh
. "$(dirname "$0")/dovecot_lib.sh"
dovecot_mailstore
DV_PROTO=imap
free_port DV_PLAIN
free_port DV_TLS
free_port DV_TLS_IMPLICIT
dovecot_start legacy no "$DV_PLAIN"
dovecot_start tls required "$DV_TLS" "$DV_TLS_IMPLICIT"
TLS_LOG=$T/tls/dovecot.log

spawn fake_nostls python3 "$TOOLS/imap_fake.py" --ready "$T/fake_nostls.port" \
	--lines "$T/nostls.lines" --mode nostls
spawn fake_preauth python3 "$TOOLS/imap_fake.py" --ready "$T/fake_preauth.port" \
	--lines "$T/preauth.lines" --mode preauth
spawn fake_inject python3 "$TOOLS/imap_fake.py" --ready "$T/fake_inject.port" \
	--lines "$T/inject.lines" --mode inject --cert "$CERTS/server.pem" --key "$CERTS/server.key"
spawn fake_legacy python3 "$TOOLS/imap_fake.py" --ready "$T/fake_legacy.port" \
	--lines "$T/legacy.lines" --mode nostls

free_port P_INJECT
free_port P_TERM
free_port P_TERM_FAKE
free_port P_BRIDGE
free_port P_IMPL_CLIENT
free_port P_IMPL_UP
free_port P_STRIPPED
free_port P_PREAUTH
free_port P_PREAUTH_CLIENT
free_port P_INJECTION
free_port P_PLAIN
free_port P_STLS_IMPL
free_port P_IMPL_STLS
free_port P_IMPL_IMPL
free_port P_TABLE; free_port P_TABLE_BAD
# A policy table decides per destination, as for SMTP: one row verifies Dovecot under the
# name its certificate has, the other under a name it has not.
printf '127.0.0.1:%s verify names=localhost\n' "$DV_TLS" >"$T/good.table"
printf '127.0.0.1:%s verify names=wrong.example\n' "$DV_TLS" >"$T/bad.table"
conf=$T/imap.conf
{
	# shellcheck disable=SC2119 # no extra [global] lines
	global_section
	route() { # NAME PORT CLIENT_TLS UPSTREAM UPSTREAM_TLS [LINES...]
		local name=$1 port=$2 ctls=$3 up=$4 utls=$5
		shift 5
		printf '[route %s]\nlisten = 127.0.0.1:%s\nprotocol = imap\nclient_tls = %s\n' \
			"$name" "$port" "$ctls"
		printf 'upstream = 127.0.0.1:%s\nupstream_tls = %s\n' "$up" "$utls"
		local l
		for l in "$@"; do echo "$l"; done
		echo
	}
	verify=("upstream_policy = verify" "upstream_name = localhost")
	route inject "$P_INJECT" none "$DV_TLS" starttls "${verify[@]}"
	route terminate "$P_TERM" starttls "$DV_PLAIN" none "client_policy = encrypt"
	route terminate-fake "$P_TERM_FAKE" starttls "$(port_of fake_legacy)" none \
		"client_policy = encrypt"
	route bridge "$P_BRIDGE" starttls "$DV_TLS" starttls "client_policy = encrypt" "${verify[@]}"
	route implicit-client "$P_IMPL_CLIENT" implicit "$DV_PLAIN" none
	route implicit-upstream "$P_IMPL_UP" none "$DV_TLS_IMPLICIT" implicit "${verify[@]}"
	route plain "$P_PLAIN" none "$DV_PLAIN" none
	route starttls-implicit "$P_STLS_IMPL" starttls "$DV_TLS_IMPLICIT" implicit \
		"client_policy = encrypt" "${verify[@]}"
	route implicit-starttls "$P_IMPL_STLS" implicit "$DV_TLS" starttls "${verify[@]}"
	route implicit-implicit "$P_IMPL_IMPL" implicit "$DV_TLS_IMPLICIT" implicit "${verify[@]}"
	route stripped "$P_STRIPPED" none "$(port_of fake_nostls)" starttls "upstream_policy = encrypt"
	route preauth "$P_PREAUTH" none "$(port_of fake_preauth)" starttls "upstream_policy = encrypt"
	# the upstream policy lets a PREAUTH upstream go on in plaintext; the client's does not
	route preauth-client "$P_PREAUTH_CLIENT" starttls "$(port_of fake_preauth)" starttls \
		"client_policy = encrypt" "upstream_policy = may"
	route injection "$P_INJECTION" none "$(port_of fake_inject)" starttls \
		"upstream_policy = encrypt"
	route table "$P_TABLE" none "$DV_TLS" starttls "upstream_policy = encrypt" \
		"policy_table = $T/good.table"
	route table-bad "$P_TABLE_BAD" none "$DV_TLS" starttls "upstream_policy = encrypt" \
		"policy_table = $T/bad.table"
} >"$conf"

check config_check_imap "$STP_BIN" -t -c "$conf"
start_proxy "$conf"

tls_logins() { grep -c 'imap-login: Info: Login: user=<alice>.*, TLS' "$TLS_LOG" 2>/dev/null; }
dialog() { python3 "$TOOLS/imap_dialog.py" "$@"; }
wait_until_more() {
	local i=0
	while [ "$("$1")" -le "$2" ]; do
		[ $i -ge 50 ] && return 1
		sleep 0.1
		i=$((i + 1))
	done
}

# curl_get URL FILE [CURL ARGS...]: the message at URL is FILE byte for byte
# shellcheck disable=SC2317 # called through check and tls_login_after
curl_get() {
	local url=$1 file=$2 out=$T/curl.out
	shift 2
	curl -sS --max-time 20 -u alice:secret "$@" "$url" -o "$out" || return 1
	cmp "$out" "$file"
}

# tls_login_after NAME CMD...: CMD succeeds and Dovecot logged one more TLS login
tls_login_after() {
	local name=$1 before out
	shift
	before=$(tls_logins)
	if ! out=$("$@" 2>&1); then
		fail "$name" "$(tail -n 3 <<<"$out")"
		return
	fi
	if wait_until_more tls_logins "$before"; then
		pass "$name"
	else
		fail "$name" "no new TLS login in Dovecot's log: $(grep 'Login:' "$TLS_LOG" | tail -n 1)"
	fi
}

# --- the four directions with real clients ------------------------------------------------

tls_login_after table_row_verify_passes curl_get "imap://127.0.0.1:$P_TABLE/INBOX;UID=1" "$MSG1"
expect_log table_row_decides 'route=table .*event=policy .*policy=verify .*source=table:1'
if curl_get "imap://127.0.0.1:$P_TABLE_BAD/INBOX;UID=1" "$MSG1" >/dev/null 2>&1; then
	fail table_row_verify_blocks "a message was fetched through a certificate that fails the row"
else
	pass table_row_verify_blocks
fi
expect_log table_row_block_logged 'route=table-bad .*result=certificate-host-mismatch'

tls_login_after inject_curl_fetch_tls curl_get "imap://127.0.0.1:$P_INJECT/INBOX;UID=1" "$MSG1"
check terminate_curl_ssl_reqd curl_get "imap://127.0.0.1:$P_TERM/INBOX;UID=2" "$MSG2" \
	--ssl-reqd --cacert "$CERTS/ca.pem" --resolve "localhost:$P_TERM:127.0.0.1"
tls_login_after bridge_curl_ssl_reqd_tls curl_get "imap://127.0.0.1:$P_BRIDGE/INBOX;UID=1" \
	"$MSG1" --ssl-reqd -k
check implicit_client_imaps curl_get "imaps://127.0.0.1:$P_IMPL_CLIENT/INBOX;UID=1" "$MSG1" -k
tls_login_after implicit_upstream_993 curl_get "imap://127.0.0.1:$P_IMPL_UP/INBOX;UID=2" "$MSG2"
# the other combinations of client_tls x upstream_tls
check plain_plain curl_get "imap://127.0.0.1:$P_PLAIN/INBOX;UID=1" "$MSG1"
tls_login_after starttls_implicit_tls curl_get "imap://127.0.0.1:$P_STLS_IMPL/INBOX;UID=1" \
	"$MSG1" --ssl-reqd -k
tls_login_after implicit_starttls_tls curl_get "imaps://127.0.0.1:$P_IMPL_STLS/INBOX;UID=2" \
	"$MSG2" -k
tls_login_after implicit_implicit_tls curl_get "imaps://127.0.0.1:$P_IMPL_IMPL/INBOX;UID=1" \
	"$MSG1" -k

# curl's mailbox list through the terminating route
out=$(curl -sS --max-time 20 -u alice:secret --ssl-reqd -k "imap://127.0.0.1:$P_TERM/" 2>&1)
if grep -q 'INBOX' <<<"$out"; then pass terminate_curl_list; else fail terminate_curl_list "$out"; fi

# Python imaplib: STARTTLS, login, list, fetch byte-exact
cat >"$T/imaplib_check.py" <<'PY'
import imaplib, ssl, sys
port, msg = int(sys.argv[1]), open(sys.argv[2], "rb").read()
ctx = ssl.create_default_context(cafile=sys.argv[3])
ctx.check_hostname = False
m = imaplib.IMAP4("127.0.0.1", port)
assert "STARTTLS" in m.capabilities, m.capabilities
assert "LOGINDISABLED" in m.capabilities, m.capabilities
m.starttls(ssl_context=ctx)
caps = m.capability()[1][0].decode()
assert "STARTTLS" not in caps.split(), caps
m.login("alice", "secret")
typ, boxes = m.list()
assert typ == "OK" and any(b"INBOX" in b for b in boxes), boxes
m.select("INBOX")
typ, data = m.uid("FETCH", "1", "(BODY.PEEK[])")
assert data[0][1] == msg, data
m.logout()
PY
check terminate_imaplib_starttls python3 "$T/imaplib_check.py" "$P_TERM" "$MSG1" "$CERTS/ca.pem"

# openssl s_client -starttls imap through the terminating route
out=$(printf 'a1 LOGIN alice secret\r\na2 SELECT INBOX\r\na3 LOGOUT\r\n' |
	timeout 20 openssl s_client -quiet -starttls imap -connect "127.0.0.1:$P_TERM" \
		-CAfile "$CERTS/ca.pem" 2>&1)
if grep -q '^a1 OK' <<<"$out" && grep -q '^a2 OK' <<<"$out"; then
	pass terminate_openssl_starttls
else
	fail terminate_openssl_starttls "$(tail -n 3 <<<"$out")"
fi

# IDLE, ID and ENABLE pass through
out=$(dialog --port "$P_PLAIN" --wait 1 --send 'a1 LOGIN alice secret\r\n' \
	--send 'a2 SELECT INBOX\r\n' --send 'a3 IDLE\r\n' --send 'DONE\r\n' \
	--send 'a4 ID NIL\r\n' --send 'a5 ENABLE CONDSTORE\r\n' --send 'a7 LOGOUT\r\n')
if grep -q '^+ idling' <<<"$out" && grep -q '^a3 OK' <<<"$out" && grep -q '^\* ID ' <<<"$out" &&
	grep -q '^a4 OK' <<<"$out" && grep -q '^\* ENABLED CONDSTORE' <<<"$out" &&
	grep -q '^a7 OK' <<<"$out"; then
	pass idle_id_enable_pass
else
	fail idle_id_enable_pass "$(tr '\r\n' '  ' <<<"$out")"
fi

# COMPRESS=DEFLATE passes through after login (refused before it): the fetched message is
# byte-exact through the compressed stream (tools/imap_compress.py), on the terminating
# route (STARTTLS with the client, legacy Dovecot), the injecting one (TLS to Dovecot,
# proven from its log) and implicit TLS on both legs
compress() { python3 "$TOOLS/imap_compress.py" "$@"; }
check compress_terminate compress --port "$P_TERM" --starttls --expect "$MSG1"
tls_login_after compress_inject compress --port "$P_INJECT" --uid 2 --expect "$MSG2"
tls_login_after compress_implicit_implicit compress --port "$P_IMPL_IMPL" --tls --expect "$MSG1"

# --- security ------------------------------------------------------------------------------

# a LOGIN before STARTTLS is refused without reaching the upstream
: >"$T/legacy.lines.before"
out=$(dialog --port "$P_TERM_FAKE" --send 'a1 LOGIN alice secret\r\n')
if grep -q '^a1 NO \[PRIVACYREQUIRED\]' <<<"$out" && ! grep -q LOGIN "$T/legacy.lines"; then
	pass terminate_login_before_tls_refused
else
	fail terminate_login_before_tls_refused "$(tr '\r\n' '  ' <<<"$out")"
fi

# commands pipelined after STARTTLS are discarded: they never reach the upstream
out=$(dialog --port "$P_TERM_FAKE" --send 'a1 STARTTLS\r\na2 LOGIN pipelined secret\r\n')
sleep 0.5
if grep -q '^a1 OK Begin TLS' <<<"$out" && ! grep -q pipelined "$T/legacy.lines" &&
	grep -q 'event=starttls_injection side=client' "$PROXY_LOG"; then
	pass terminate_pipelined_after_starttls_discarded
else
	fail terminate_pipelined_after_starttls_discarded "$(tr '\r\n' '  ' <<<"$out")"
fi

# a STARTTLS inside a literal is data: it reaches the upstream as the literal's octets
out=$(dialog --port "$P_TERM_FAKE" --send 'a1 NOOP {13+}\r\nX1 STARTTLS\r\n\r\n')
if ! grep -q 'Begin TLS' <<<"$out" && grep -q '^X1 STARTTLS' "$T/legacy.lines"; then
	pass terminate_starttls_in_literal_is_data
else
	fail terminate_starttls_in_literal_is_data "$(tr '\r\n' '  ' <<<"$out")"
fi

# an oversized command line ends the session with BYE
long=$(head -c 9000 /dev/zero | tr '\0' 'a')
out=$(dialog --port "$P_TERM_FAKE" --send "a1 NOOP $long\\r\\n")
if grep -q '^\* BYE \[TOOBIG\]' <<<"$out" && ! grep -q "$long" "$T/legacy.lines"; then
	pass oversized_line_refused
else
	fail oversized_line_refused "$(head -c 200 <<<"$out")"
fi

# a stripped STARTTLS (the upstream does not offer it) is a policy failure under encrypt
out=$(dialog --port "$P_STRIPPED" --send 'a1 LOGIN alice secret\r\n')
if grep -q '^\* BYE \[UNAVAILABLE\]' <<<"$out" && ! grep -q LOGIN "$T/nostls.lines"; then
	pass stripped_starttls_blocked
else
	fail stripped_starttls_blocked "$(tr '\r\n' '  ' <<<"$out")"
fi

# a PREAUTH greeting cannot be upgraded: blocked under encrypt
out=$(dialog --port "$P_PREAUTH" --send 'a1 SELECT INBOX\r\n')
if grep -q '^\* BYE \[UNAVAILABLE\]' <<<"$out" && ! grep -q SELECT "$T/preauth.lines"; then
	pass preauth_greeting_blocked
else
	fail preauth_greeting_blocked "$(tr '\r\n' '  ' <<<"$out")"
fi

# ... and under client_policy = encrypt also where the upstream policy (may) lets a PREAUTH
# upstream go on in plaintext: the client would be authenticated without TLS
out=$(dialog --port "$P_PREAUTH_CLIENT" --send 'a2 EXAMINE INBOX\r\n')
if grep -q '^\* BYE \[UNAVAILABLE\] Upstream server greeted PREAUTH' <<<"$out" &&
	! grep -q EXAMINE "$T/preauth.lines"; then
	pass preauth_client_encrypt_blocked
else
	fail preauth_client_encrypt_blocked "$(tr '\r\n' '  ' <<<"$out")"
fi

# a response injected after the upstream's tagged OK to STARTTLS is discarded, and an
# untagged response before that OK is dropped
out=$(dialog --port "$P_INJECTION" --send 'A1 CAPABILITY\r\n')
if ! grep -q 'injected\|untagged before' <<<"$out" && grep -q '^A1 OK done' <<<"$out" &&
	grep -q 'event=starttls_injection side=upstream' "$PROXY_LOG"; then
	pass upstream_injection_after_ok_discarded
else
	fail upstream_injection_after_ok_discarded "$(tr '\r\n' '  ' <<<"$out")"
fi

# --- --probe --protocol imap against the TLS-requiring Dovecot ------------------------------

out=$("$STP_BIN" --probe "127.0.0.1:$DV_TLS" --protocol imap --name localhost --ca "$CERTS/ca.pem" 2>&1)
rc=$?
if [ $rc -eq 0 ]; then
	pass probe_imap_dovecot
else
	fail probe_imap_dovecot "exit $rc: $(tr '\n' ' ' <<<"$out")"
fi

finish
