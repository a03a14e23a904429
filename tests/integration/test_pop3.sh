#!/usr/bin/env bash
# POP3 (protocol = pop3) against a real Dovecot, started by the test on loopback with its
# own configuration (base_dir, state_dir, log under $T; a passwd-file user alice/secret with
# a maildir of two known messages): "legacy" (ssl = no) and "tls" (ssl = required, the test
# certificates, STLS on one port and implicit TLS on another). Clients: curl (pop3://,
# pop3s://, --ssl-reqd), Python poplib (stls), openssl s_client -starttls pop3, and a
# scripted client for the security checks. Dovecot treats loopback as secure, so TLS on
# the upstream hop is proven from its log (", TLS," in the Login: line), not from a refusal.
# A scripted fake server (tools/pop3_fake.py) strips STLS and injects a response after its
# +OK to STLS.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

for tool in dovecot curl openssl; do
	if ! command -v "$tool" >/dev/null; then
		fail test_pop3 "$tool not installed (make deps installs it)"
		finish
	fi
done

# --- the mail store and two Dovecot instances --------------------------------------------

# shellcheck source=tests/integration/dovecot_lib.sh
. "$(dirname "$0")/dovecot_lib.sh"
dovecot_mailstore
free_port DV_PLAIN
free_port DV_TLS
free_port DV_TLS_IMPLICIT
dovecot_start legacy no "$DV_PLAIN"
dovecot_start tls required "$DV_TLS" "$DV_TLS_IMPLICIT"
LEGACY_LOG=$T/legacy/dovecot.log
TLS_LOG=$T/tls/dovecot.log

spawn fake_nostls python3 "$TOOLS/pop3_fake.py" --ready "$T/fake_nostls.port" \
	--lines "$T/nostls.lines" --mode nostls
spawn fake_inject python3 "$TOOLS/pop3_fake.py" --ready "$T/fake_inject.port" \
	--lines "$T/inject.lines" --mode inject --cert "$CERTS/server.pem" --key "$CERTS/server.key"
# a legacy server that records every line it gets: what the terminate checks reach
spawn fake_legacy python3 "$TOOLS/pop3_fake.py" --ready "$T/fake_legacy.port" \
	--lines "$T/legacy.lines" --mode nostls

# --- the proxy ------------------------------------------------------------------------

free_port P_INJECT
free_port P_TERM
free_port P_BRIDGE
free_port P_IMPL_CLIENT
free_port P_IMPL_UP
free_port P_STRIPPED
free_port P_INJECTION
free_port P_TERM_FAKE
free_port P_STLS_IMPL
free_port P_IMPL_STLS
free_port P_IMPL_IMPL
free_port P_PLAIN
free_port P_DENIED
free_port P_UNREACH
free_port P_IDLE
free_port P_AUTO
free_port NOBODY_LISTENS
free_port P_TABLE; free_port P_TABLE_BAD
# A policy table decides per destination, as for SMTP.
printf '127.0.0.1:%s verify names=localhost\n' "$DV_TLS" >"$T/good.table"
printf '127.0.0.1:%s verify names=wrong.example\n' "$DV_TLS" >"$T/bad.table"
conf=$T/pop3.conf
{
	# shellcheck disable=SC2119 # no extra [global] lines
	global_section
	for t in table:good table-bad:bad; do
		printf '[route %s]\nlisten = 127.0.0.1:%s\nprotocol = pop3\nupstream = 127.0.0.1:%s\n' \
			"${t%%:*}" "$([ "${t##*:}" = good ] && echo "$P_TABLE" || echo "$P_TABLE_BAD")" "$DV_TLS"
		printf 'upstream_tls = starttls\nupstream_policy = encrypt\npolicy_table = %s\n\n' \
			"$T/${t##*:}.table"
	done
	cat <<CONF
[route inject]
listen = 127.0.0.1:$P_INJECT
protocol = pop3
client_tls = none
upstream = 127.0.0.1:$DV_TLS
upstream_tls = starttls
upstream_policy = verify
upstream_name = localhost

[route terminate]
listen = 127.0.0.1:$P_TERM
protocol = pop3
client_tls = starttls
client_policy = encrypt
upstream = 127.0.0.1:$DV_PLAIN
upstream_tls = none

[route terminate-fake]
listen = 127.0.0.1:$P_TERM_FAKE
protocol = pop3
client_tls = starttls
client_policy = encrypt
upstream = 127.0.0.1:$(port_of fake_legacy)
upstream_tls = none

[route bridge]
listen = 127.0.0.1:$P_BRIDGE
protocol = pop3
client_tls = starttls
client_policy = encrypt
upstream = 127.0.0.1:$DV_TLS
upstream_tls = starttls
upstream_policy = verify
upstream_name = localhost

[route implicit-client]
listen = 127.0.0.1:$P_IMPL_CLIENT
protocol = pop3
client_tls = implicit
upstream = 127.0.0.1:$DV_PLAIN
upstream_tls = none

[route implicit-upstream]
listen = 127.0.0.1:$P_IMPL_UP
protocol = pop3
client_tls = none
upstream = 127.0.0.1:$DV_TLS_IMPLICIT
upstream_tls = implicit
upstream_policy = verify
upstream_name = localhost

[route stls-implicit]
listen = 127.0.0.1:$P_STLS_IMPL
protocol = pop3
client_tls = starttls
client_policy = encrypt
upstream = 127.0.0.1:$DV_TLS_IMPLICIT
upstream_tls = implicit
upstream_policy = verify
upstream_name = localhost

[route implicit-stls]
listen = 127.0.0.1:$P_IMPL_STLS
protocol = pop3
client_tls = implicit
upstream = 127.0.0.1:$DV_TLS
upstream_tls = starttls
upstream_policy = verify
upstream_name = localhost

[route implicit-implicit]
listen = 127.0.0.1:$P_IMPL_IMPL
protocol = pop3
client_tls = implicit
upstream = 127.0.0.1:$DV_TLS_IMPLICIT
upstream_tls = implicit
upstream_policy = verify
upstream_name = localhost

[route plain]
listen = 127.0.0.1:$P_PLAIN
protocol = pop3
client_tls = none
upstream = 127.0.0.1:$DV_PLAIN
upstream_tls = none

[route denied]
listen = 127.0.0.1:$P_DENIED
protocol = pop3
client_allow = 192.0.2.0/24
upstream = 127.0.0.1:$DV_PLAIN

[route unreachable]
listen = 127.0.0.1:$P_UNREACH
protocol = pop3
upstream = 127.0.0.1:$NOBODY_LISTENS

[route idle]
listen = 127.0.0.1:$P_IDLE
protocol = pop3
idle_timeout = 1s
upstream = 127.0.0.1:$DV_PLAIN

[route auto]
listen = 127.0.0.1:$P_AUTO
protocol = pop3
client_tls = auto
client_policy = encrypt
upstream = 127.0.0.1:$DV_PLAIN

[route stripped]
listen = 127.0.0.1:$P_STRIPPED
protocol = pop3
client_tls = none
upstream = 127.0.0.1:$(port_of fake_nostls)
upstream_tls = starttls
upstream_policy = encrypt

[route injection]
listen = 127.0.0.1:$P_INJECTION
protocol = pop3
client_tls = none
upstream = 127.0.0.1:$(port_of fake_inject)
upstream_tls = starttls
upstream_policy = verify
upstream_name = localhost
CONF
} >"$conf"

check config_check_pop3 "$STP_BIN" -t -c "$conf"
sed 's/^protocol = pop3$/protocol = imap/' "$conf" >"$T/imap.conf"
out=$("$STP_BIN" -t -c "$T/imap.conf" 2>&1)
rc=$?
if [ $rc -eq 0 ]; then
	pass config_imap_accepted
else
	fail config_imap_accepted "$(head -n 2 <<<"$out")"
fi
start_proxy "$conf"

dialog() { python3 "$TOOLS/pop3_dialog.py" "$@"; }
tls_logins() { grep -c 'pop3-login: Info: Login: user=<alice>.*, TLS,' "$TLS_LOG" 2>/dev/null; }
logins() { grep -c 'pop3-login: Info: Login: user=<alice>' "$1" 2>/dev/null; }

# curl_get URL FILE [CURL ARGS...]: the message at URL is FILE byte for byte
# shellcheck disable=SC2317 # called through check and tls_login_after
curl_get() {
	local url=$1 file=$2 out=$T/curl.out
	shift 2
	curl -sS --max-time 20 -u alice:secret "$@" "$url" -o "$out" || return 1
	cmp "$out" "$file"
}
# curl_same NAME URL FILE [CURL ARGS...]
curl_same() {
	local name=$1
	shift
	check "$name" curl_get "$@"
}

# curl_list NAME URL [ARGS...]: LIST shows the two messages with their sizes
curl_list() {
	local name=$1 url=$2 out want
	shift 2
	want=$(printf '1 %s\n2 %s' "$(($(stat -c %s "$MSG1")))" "$(($(stat -c %s "$MSG2")))")
	out=$(curl -sS --max-time 20 -u alice:secret "$@" "$url" 2>&1 | tr -d '\r')
	if [ "$out" = "$want" ]; then pass "$name"; else fail "$name" "got: $out"; fi
}

# tls_login_after NAME CMD...: CMD succeeds and Dovecot logged one more TLS login
tls_login_after() {
	local name=$1 before
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
# wait_file_line FILE REGEX: until a line of FILE matches (5 s)
wait_file_line() {
	local i=0
	until grep -Eq -- "$2" "$1" 2>/dev/null; do
		[ $i -ge 50 ] && return 1
		sleep 0.1
		i=$((i + 1))
	done
}
wait_until_more() {
	local i=0
	while [ "$("$1")" -le "$2" ]; do
		[ $i -ge 50 ] && return 1
		sleep 0.1
		i=$((i + 1))
	done
}

# --- inject: plaintext clients -> STLS to the TLS-requiring Dovecot ----------------------

curl_list inject_curl_list "pop3://127.0.0.1:$P_INJECT/"
tls_login_after inject_curl_retr_tls curl_get "pop3://127.0.0.1:$P_INJECT/1" "$MSG1"
curl_same inject_curl_retr2 "pop3://127.0.0.1:$P_INJECT/2" "$MSG2"
# poplib in plaintext: RETR byte-exact (poplib undoes the dot-stuffing)
tls_login_after inject_poplib python3 - "$P_INJECT" "$MSG1" <<'PY'
import poplib, sys
p = poplib.POP3("127.0.0.1", int(sys.argv[1]), timeout=10)
p.user("alice"); p.pass_("secret")
resp, lines, octets = p.retr(1)
got = b"\r\n".join(lines) + b"\r\n"
want = open(sys.argv[2], "rb").read()
assert got == want, (got, want)
p.quit()
PY
# the greeting carried Dovecot's APOP timestamp before TLS: not handed on
out=$(dialog "$P_INJECT" line:+OK send:'QUIT\r\n' line:+OK 2>&1)
if grep -q '^< +OK' <<<"$out" && ! grep -q '<.*@.*>' <<<"$out"; then
	pass inject_apop_timestamp_stripped
else
	fail inject_apop_timestamp_stripped "$out"
fi
# a CAPA after TLS: the upstream's post-TLS capabilities, without STLS
out=$(dialog "$P_INJECT" line:+OK send:'CAPA\r\n' multi:+OK send:'QUIT\r\n' line:+OK 2>&1)
if grep -qx '< USER' <<<"$out" && ! grep -qx '< STLS' <<<"$out"; then
	pass inject_capa_post_tls
else
	fail inject_capa_post_tls "$out"
fi
expect_log inject_upstream_tls_logged 'route=inject event=upstream_tls .*verify=ok'

# --- a policy table: a verify row passes, one with the wrong name blocks ------------------
tls_login_after table_row_verify_passes curl_get "pop3://127.0.0.1:$P_TABLE/1" "$MSG1"
expect_log table_row_decides 'route=table .*event=policy .*policy=verify .*source=table:1'
if curl_get "pop3://127.0.0.1:$P_TABLE_BAD/1" "$MSG1" >/dev/null 2>&1; then
	fail table_row_verify_blocks "a message was retrieved through a certificate that fails the row"
else
	pass table_row_verify_blocks
fi
expect_log table_row_block_logged 'route=table-bad .*result=certificate-host-mismatch'

# --- terminate: STLS clients -> legacy Dovecot without TLS --------------------------------

curl_same terminate_curl_ssl_reqd "pop3://localhost:$P_TERM/1" "$MSG1" --ssl-reqd --cacert "$CERTS/ca.pem"
# shellcheck disable=SC2317 # called through check and tls_login_after
python_stls() { # PORT MSGFILE
	python3 - "$@" "$CERTS/ca.pem" <<'PY'
import poplib, ssl, sys
p = poplib.POP3("127.0.0.1", int(sys.argv[1]), timeout=10)
caps = p.capa()
assert "STLS" in caps, caps
ctx = ssl.create_default_context(cafile=sys.argv[3])
ctx.check_hostname = False
p.stls(ctx)
assert "STLS" not in p.capa()
p.user("alice"); p.pass_("secret")
resp, lines, octets = p.retr(1)
assert b"\r\n".join(lines) + b"\r\n" == open(sys.argv[2], "rb").read()
p.quit()
PY
}
check terminate_poplib_stls python_stls "$P_TERM" "$MSG1"
out=$( (sleep 1; printf 'USER alice\r\nPASS secret\r\nSTAT\r\nQUIT\r\n'; sleep 2) |
	timeout 10 openssl s_client -starttls pop3 -connect "127.0.0.1:$P_TERM" -CAfile "$CERTS/ca.pem" \
		-verify_return_error -quiet 2>&1)
if grep -q '^+OK 2 ' <<<"$out"; then pass terminate_openssl_starttls; else fail terminate_openssl_starttls "$(tail -n 3 <<<"$out")"; fi
expect_log terminate_client_tls_logged 'route=terminate event=client_tls '
# the legacy greeting came in plaintext from the server itself: its timestamp stays
out=$(dialog "$P_TERM" line:+OK send:'QUIT\r\n' line:+OK 2>&1)
if grep -q '^< +OK.*<.*@.*>' <<<"$out"; then pass terminate_greeting_kept; else fail terminate_greeting_kept "$out"; fi

# client_policy = encrypt: USER/PASS/APOP/AUTH before STLS refused and never sent up;
# CAPA before STLS offers STLS and hides USER and SASL (Dovecot; then the recording
# fake server shows what went up: nothing but CAPA and QUIT)
encrypt_refusals() { # PORT
	dialog "$1" line:+OK send:'CAPA\r\n' multi:+OK \
		send:'USER alice\r\n' line:'-ERR [AUTH] ' send:'PASS secret\r\n' line:'-ERR [AUTH] ' \
		send:'APOP alice 0123456789abcdef0123456789abcdef\r\n' line:'-ERR [AUTH] ' \
		send:'AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n' line:'-ERR [AUTH] ' \
		send:'QUIT\r\n' line:+OK
}
out=$(encrypt_refusals "$P_TERM" 2>&1)
rc=$?
if [ $rc -eq 0 ] && grep -qx '< STLS' <<<"$out" && ! grep -qx '< USER' <<<"$out" &&
	! grep -q '^< SASL' <<<"$out"; then
	pass terminate_encrypt_refusals
else
	fail terminate_encrypt_refusals "$out"
fi
out=$(encrypt_refusals "$P_TERM_FAKE" 2>&1)
rc=$?
if [ $rc -eq 0 ] && wait_file_line "$T/legacy.lines" '^plain: QUIT' &&
	[ "$(tr '\n' ' ' <"$T/legacy.lines")" = "plain: CAPA plain: QUIT " ]; then
	pass terminate_encrypt_nothing_upstream
else
	fail terminate_encrypt_nothing_upstream "$out | upstream got: $(tr '\n' ' ' <"$T/legacy.lines" 2>/dev/null)"
fi

# commands pipelined after STLS: discarded, never reach the server (CVE-2011-0411)
before=$(logins "$LEGACY_LOG")
out=$(dialog "$P_TERM" --ca "$CERTS/ca.pem" line:+OK send:'STLS\r\nUSER alice\r\nPASS secret\r\n' \
	line:'+OK Begin TLS' tls send:'STAT\r\n' line:'-ERR' send:'QUIT\r\n' line:+OK 2>&1)
rc=$?
if [ $rc -eq 0 ]; then pass terminate_pipelined_after_stls_dropped; else fail terminate_pipelined_after_stls_dropped "$out"; fi
expect_log terminate_injection_logged 'route=terminate event=starttls_injection side=client bytes=[1-9][0-9]* action=discarded'
sleep 0.5
if [ "$(logins "$LEGACY_LOG")" = "$before" ]; then
	pass terminate_pipelined_never_dovecot
else
	fail terminate_pipelined_never_dovecot "$(grep 'Login:' "$LEGACY_LOG" | tail -n 1)"
fi
: >"$T/legacy.lines"
out=$(dialog "$P_TERM_FAKE" --ca "$CERTS/ca.pem" line:+OK send:'STLS\r\nUSER alice\r\nPASS secret\r\n' \
	line:'+OK Begin TLS' tls send:'STAT\r\n' line:'+OK 1 42' send:'QUIT\r\n' line:+OK 2>&1)
rc=$?
if [ $rc -eq 0 ] && wait_file_line "$T/legacy.lines" '^plain: QUIT' &&
	[ "$(tr '\n' ' ' <"$T/legacy.lines")" = "plain: STAT plain: QUIT " ]; then
	pass terminate_pipelined_never_upstream
else
	fail terminate_pipelined_never_upstream "$out | upstream got: $(tr '\n' ' ' <"$T/legacy.lines" 2>/dev/null)"
fi

# --- bridge: STLS both sides ------------------------------------------------------------

tls_login_after bridge_curl_ssl_reqd curl_get "pop3://localhost:$P_BRIDGE/2" "$MSG2" \
	--ssl-reqd --cacert "$CERTS/ca.pem"
tls_login_after bridge_poplib_stls python_stls "$P_BRIDGE" "$MSG1"

# --- implicit TLS toward the client (995 in front of legacy 110) --------------------------

curl_same implicit_client_curl_pop3s "pop3s://localhost:$P_IMPL_CLIENT/1" "$MSG1" --cacert "$CERTS/ca.pem"
curl_list implicit_client_curl_list "pop3s://localhost:$P_IMPL_CLIENT/" --cacert "$CERTS/ca.pem"
out=$(dialog "$P_IMPL_CLIENT" --implicit --ca "$CERTS/ca.pem" line:+OK send:'STLS\r\n' line:-ERR \
	send:'QUIT\r\n' line:+OK 2>&1)
rc=$?
if [ $rc -eq 0 ]; then pass implicit_client_stls_refused; else fail implicit_client_stls_refused "$out"; fi

# --- implicit TLS toward the upstream (plaintext client -> Dovecot's 995) -----------------

tls_login_after implicit_upstream_curl curl_get "pop3://127.0.0.1:$P_IMPL_UP/1" "$MSG1"

# --- the other client_tls x upstream_tls combinations -------------------------------------

tls_login_after stls_implicit_curl curl_get "pop3://localhost:$P_STLS_IMPL/1" "$MSG1" \
	--ssl-reqd --cacert "$CERTS/ca.pem"
tls_login_after implicit_stls_curl curl_get "pop3s://localhost:$P_IMPL_STLS/2" "$MSG2" \
	--cacert "$CERTS/ca.pem"
tls_login_after implicit_implicit_curl curl_get "pop3s://localhost:$P_IMPL_IMPL/1" "$MSG1" \
	--cacert "$CERTS/ca.pem"
curl_same plain_curl "pop3://127.0.0.1:$P_PLAIN/1" "$MSG1"
out=$(dialog "$P_PLAIN" line:+OK send:'STLS\r\n' line:'-ERR STLS not available' send:'QUIT\r\n' line:+OK 2>&1)
rc=$?
if [ $rc -eq 0 ]; then pass plain_stls_not_passed; else fail plain_stls_not_passed "$out"; fi

# client_tls = auto: one port for implicit-TLS and STLS clients
curl_same auto_implicit_client "pop3s://localhost:$P_AUTO/1" "$MSG1" --cacert "$CERTS/ca.pem"
curl_same auto_stls_client "pop3://localhost:$P_AUTO/2" "$MSG2" --ssl-reqd --cacert "$CERTS/ca.pem"

# --- refusals and failures: -ERR, never a silent close ------------------------------------

out=$(dialog "$P_DENIED" line:'-ERR [SYS/PERM] ' eof 2>&1)
rc=$?
if [ $rc -eq 0 ]; then pass refused_client_not_allowed; else fail refused_client_not_allowed "$out"; fi
expect_log refused_logged 'route=denied .*result=client-not-allowed'
out=$(dialog "$P_UNREACH" line:'-ERR [SYS/TEMP] Upstream server unreachable' eof 2>&1)
rc=$?
if [ $rc -eq 0 ]; then pass upstream_unreachable_err; else fail upstream_unreachable_err "$out"; fi
out=$(dialog "$P_IDLE" line:+OK line:'-ERR [SYS/TEMP] Timeout' eof 2>&1)
rc=$?
if [ $rc -eq 0 ]; then pass idle_timeout_err; else fail idle_timeout_err "$out"; fi

# --- stripped STLS under encrypt: -ERR to the client, no USER/PASS upstream ---------------

out=$(dialog "$P_STRIPPED" send:'USER alice\r\nPASS secret\r\n' line:'-ERR [SYS/TEMP]' eof 2>&1)
rc=$?
if [ $rc -eq 0 ]; then pass stripped_stls_blocked; else fail stripped_stls_blocked "$out"; fi
expect_log stripped_policy_failure_logged 'route=stripped .*result=starttls-not-supported'
sleep 0.3
if grep -q '^plain: CAPA' "$T/nostls.lines" && ! grep -Eq '^[a-z]+: (USER|PASS)' "$T/nostls.lines"; then
	pass stripped_no_credentials_upstream
else
	fail stripped_no_credentials_upstream "$(tr '\n' ' ' <"$T/nostls.lines")"
fi

# --- a response injected after the upstream's +OK to STLS: discarded ----------------------

out=$(dialog "$P_INJECTION" line:+OK send:'STAT\r\n' line:'+OK 1 42' send:'QUIT\r\n' line:+OK 2>&1)
rc=$?
if [ $rc -eq 0 ] && ! grep -q injected <<<"$out"; then
	pass upstream_injection_discarded
else
	fail upstream_injection_discarded "$out"
fi
expect_log upstream_injection_logged 'route=injection event=starttls_injection side=upstream bytes=[1-9]'
if grep -q '^tls: STAT' "$T/inject.lines"; then pass upstream_injection_session_in_tls; else fail upstream_injection_session_in_tls "$(tr '\n' ' ' <"$T/inject.lines")"; fi

# --- --probe --protocol pop3 against the TLS-requiring Dovecot -----------------------------

out=$("$STP_BIN" --probe "127.0.0.1:$DV_TLS" --protocol pop3 --name localhost --ca "$CERTS/ca.pem" 2>&1)
rc=$?
if [ $rc -eq 0 ] && grep -q 'starttls *offered' <<<"$out" && grep -q 'verification *ok' <<<"$out"; then
	pass probe_pop3_dovecot
else
	fail probe_pop3_dovecot "exit $rc: $(tr '\n' ' ' <<<"$out")"
fi
out=$("$STP_BIN" --probe "127.0.0.1:$DV_TLS_IMPLICIT" --protocol pop3 --tls implicit --name localhost --ca "$CERTS/ca.pem" 2>&1)
rc=$?
if [ $rc -eq 0 ]; then pass probe_pop3_dovecot_implicit; else fail probe_pop3_dovecot_implicit "$(tr '\n' ' ' <<<"$out")"; fi

# --- shutdown: an idle POP3 session is ended at once with -ERR [SYS/TEMP] -----------------

free_port P_DRAIN
{
	# shellcheck disable=SC2119 # no extra [global] lines
	global_section
	cat <<CONF
[route drain]
listen = 127.0.0.1:$P_DRAIN
protocol = pop3
upstream = 127.0.0.1:$DV_PLAIN
CONF
} >"$T/drain.conf"
start_proxy "$T/drain.conf" drainproxy
python3 "$TOOLS/pop3_dialog.py" "$P_DRAIN" line:+OK send:'CAPA\r\n' multi:+OK \
	line:'-ERR [SYS/TEMP] Service shutting down' eof >"$T/drain.out" 2>&1 &
drain_client=$!
PIDS+=("$drain_client")
wait_log 'route=drain event=pop3_state side=upstream from=greeting to=ready' 5 "$T/drainproxy.log"
sleep 0.3
if stop_proxy drainproxy 10; then
	PROXY_STOPPED[drainproxy]=1
fi
if wait "$drain_client"; then
	pass shutdown_idle_session_err
else
	fail shutdown_idle_session_err "$(tr '\n' ' ' <"$T/drain.out")"
fi
# ended at once as idle (the idle op), not after drain_timeout
if grep -q 'event=drain .*idle_closed=1' "$T/drainproxy.log"; then
	pass shutdown_idle_closed_at_once
else
	fail shutdown_idle_closed_at_once "$(grep 'event=drain' "$T/drainproxy.log")"
fi
PROXY_LOG=$T/proxy.log

finish
