#!/usr/bin/env bash
# The TLS layer as a hostile or outdated client sees it (the outside auditor, testssl.sh,
# is test_testssl):
#  - client-initiated renegotiation refused (openssl s_client R), ALPN (ALPACA: http/1.1
#    only refused, none and smtp served), a CBC-only TLS 1.2 client refused by default and
#    a TLS 1.0 CBC device served on the one route that opts in;
#  - client_tls = auto: smtplib's SMTP_SSL and SMTP + starttls() on one port;
#  - client_allow: 127.0.0.1 served, 127.0.0.2 refused with 554 5.7.1;
#  - the upstream's TLS mode mistaken both ways (implicit toward a plaintext greeting,
#    starttls toward a server that speaks TLS first, starttls toward a silent TLS port);
#  - a failed verification logs the certificate the server presented (subject, issuer,
#    pin); -t and the log and /metrics tell when certificates expire.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/smtp_lib.sh
. "$(dirname "$0")/smtp_lib.sh"

start_sink sink
SINK=$(port_of sink)
start_server echo --mode echo
start_server up_wrongname --mode echo --cert "$CERTS/wrongname.pem" --key "$CERTS/wrongname.key"
start_server up_tls_silent --mode silent --cert "$CERTS/server.pem" --key "$CERTS/server.key"
wait_servers
ECHO=$(port_of echo)

# A server that speaks TLS first: a TLS alert record as soon as a client connects.
free_port TLSFIRST
spawn tlsfirst python3 -c '
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(8)
while True:
    c, _ = s.accept()
    c.sendall(bytes([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28]))
' "$TLSFIRST"
wait_port "$TLSFIRST" || { fail tlsfirst_server "not listening"; finish; }

free_port P_SMTPS; free_port P_SUB; free_port P_TCP; free_port P_OLD; free_port P_AUTO
free_port P_ALLOW; free_port P_IMPL_PLAIN; free_port P_START_TLSFIRST; free_port P_START_SILENT
free_port P_VFAIL; free_port ADMIN
conf=$T/tls.conf
{
	global_section "admin_listen = 127.0.0.1:$ADMIN"
	cat <<EOF
[route smtps]
listen = 127.0.0.1:$P_SMTPS
protocol = smtp
client_tls = implicit
upstream = 127.0.0.1:$SINK

[route submission]
listen = 127.0.0.1:$P_SUB
protocol = smtp
client_tls = starttls
upstream = 127.0.0.1:$SINK

[route wrap]
listen = 127.0.0.1:$P_TCP
protocol = tcp
client_tls = implicit
upstream = 127.0.0.1:$ECHO

[route printer]
listen = 127.0.0.1:$P_OLD
protocol = tcp
client_tls = implicit
client_min_tls = 1.0
client_ciphers = ECDHE-ECDSA-AES128-SHA
upstream = 127.0.0.1:$ECHO

[route auto]
listen = 127.0.0.1:$P_AUTO
protocol = smtp
client_tls = auto
detect_timeout = 1s
upstream = 127.0.0.1:$SINK

[route allow]
listen = 127.0.0.1:$P_ALLOW
protocol = smtp
client_allow = 127.0.0.1/32, ::1
upstream = 127.0.0.1:$SINK

[route implicit_to_plain]
listen = 127.0.0.1:$P_IMPL_PLAIN
protocol = smtp
upstream = 127.0.0.1:$SINK
upstream_tls = implicit
upstream_policy = encrypt

[route starttls_to_tlsfirst]
listen = 127.0.0.1:$P_START_TLSFIRST
protocol = smtp
upstream = 127.0.0.1:$TLSFIRST
upstream_tls = starttls
upstream_policy = encrypt

[route starttls_to_silent]
listen = 127.0.0.1:$P_START_SILENT
protocol = smtp
upstream = 127.0.0.1:$(port_of up_tls_silent)
upstream_tls = starttls
upstream_policy = encrypt
handshake_timeout = 2s

[route vfail]
listen = 127.0.0.1:$P_VFAIL
protocol = tcp
upstream = 127.0.0.1:$(port_of up_wrongname)
upstream_tls = implicit
upstream_policy = verify
upstream_name = localhost
EOF
} >"$conf"
start_proxy "$conf"

# --- a hostile or outdated client ---------------------------------------------------------
s_client() { timeout 10 openssl s_client -connect "$@" -CAfile "$CERTS/ca.pem" 2>&1; }

# Renegotiation: after "R", the echo of a later line never comes; the control (no R) gets it.
# (s_client reads R as a command only without -ign_eof; it ends when its input does.)
out=$( (echo first; sleep 0.5; echo R; sleep 1; echo after-reneg; sleep 1) |
	s_client "127.0.0.1:$P_TCP" -tls1_2)
ctl=$( (echo first; sleep 0.5; echo after-plain; sleep 1) | s_client "127.0.0.1:$P_TCP" -tls1_2)
if grep -q '^after-plain' <<<"$ctl" && grep -q RENEGOTIATING <<<"$out" &&
	! grep -q '^after-reneg' <<<"$out" && grep -q 'alert' <<<"$out"; then
	pass renegotiation_refused
else
	fail renegotiation_refused "control: $(grep -c after-plain <<<"$ctl"), with R: $(grep -E 'RENEG|alert|after' <<<"$out" | head -n 3)"
fi

out=$(echo | s_client "127.0.0.1:$P_SMTPS" -alpn http/1.1)
if grep -q 'no application protocol' <<<"$out" && ! grep -q 'ALPN protocol:' <<<"$out"; then
	pass alpn_http_only_refused
else
	fail alpn_http_only_refused "$(grep -E 'ALPN|alert|Cipher is' <<<"$out" | head -n 3)"
fi
out=$(echo QUIT | s_client "127.0.0.1:$P_SMTPS" -alpn smtp -ign_eof)
if grep -q 'ALPN protocol: smtp' <<<"$out" && grep -q '^220 ' <<<"$out"; then
	pass alpn_smtp_served
else
	fail alpn_smtp_served "$(grep -E 'ALPN|alert|^220' <<<"$out" | head -n 3)"
fi
out=$(echo QUIT | s_client "127.0.0.1:$P_SMTPS" -ign_eof)
if grep -q 'No ALPN negotiated' <<<"$out" && grep -q '^220 ' <<<"$out"; then
	pass alpn_none_served
else
	fail alpn_none_served "$(grep -E 'ALPN|alert|^220' <<<"$out" | head -n 3)"
fi

out=$(echo | s_client "127.0.0.1:$P_TCP" -tls1_2 -cipher ECDHE-ECDSA-AES128-SHA)
if grep -q 'Cipher is (NONE)' <<<"$out" && grep -q 'handshake failure' <<<"$out"; then
	pass cbc_only_client_refused_by_default
else
	fail cbc_only_client_refused_by_default "$(grep -E 'Cipher is|alert' <<<"$out" | head -n 2)"
fi
out=$( (echo legacy-device; sleep 1) |
	s_client "127.0.0.1:$P_OLD" -tls1 -cipher 'ECDHE-ECDSA-AES128-SHA@SECLEVEL=0')
if grep -q 'TLSv1.0, Cipher is ECDHE-ECDSA-AES128-SHA' <<<"$out" && grep -q '^legacy-device' <<<"$out"; then
	pass tls10_cbc_device_served_on_its_route
else
	fail tls10_cbc_device_served_on_its_route "$(grep -E 'Cipher is|alert|legacy' <<<"$out" | head -n 3)"
fi
# ... and only there: the same device on the default route.
out=$(echo | s_client "127.0.0.1:$P_TCP" -tls1 -cipher 'ECDHE-ECDSA-AES128-SHA@SECLEVEL=0')
if grep -q 'Cipher is (NONE)' <<<"$out"; then
	pass tls10_refused_elsewhere
else
	fail tls10_refused_elsewhere "$(grep -E 'Cipher is|alert' <<<"$out" | head -n 2)"
fi

# --- client_tls = auto ---------------------------------------------------------------------
make_message "$T/m1.eml" auto-implicit
make_message "$T/m2.eml" auto-starttls
make_message "$T/m3.eml" auto-plain
r1=$(smtp_send --connect "127.0.0.1:$P_AUTO" --tls implicit --ca "$CERTS/ca.pem" \
	--file "$T/m1.eml" --from a@client.test --to b@example.test)
r2=$(smtp_send --connect "127.0.0.1:$P_AUTO" --tls starttls --ca "$CERTS/ca.pem" \
	--file "$T/m2.eml" --from a@client.test --to b@example.test)
r3=$(smtp_send --connect "127.0.0.1:$P_AUTO" --tls none \
	--file "$T/m3.eml" --from a@client.test --to b@example.test)
[ "$(json_get ok <<<"$r1")" = true ] && pass auto_smtp_ssl_sent || fail auto_smtp_ssl_sent "$r1"
[ "$(json_get ok <<<"$r2")" = true ] && pass auto_starttls_sent || fail auto_starttls_sent "$r2"
if [ "$(json_get ok <<<"$r3")" = true ] && grep -qi starttls <<<"$r3"; then
	pass auto_plain_client_offered_starttls
else
	fail auto_plain_client_offered_starttls "$r3"
fi
delivered_exact auto_implicit_delivered "$T/sink.store" auto-implicit "$T/m1.eml"
delivered_exact auto_starttls_delivered "$T/sink.store" auto-starttls "$T/m2.eml"
expect_log auto_logged_both_kinds "route=auto .*event=client_tls version=TLSv1.3"
if [ "$(log_count 'route=auto .*event=client_tls ')" -ge 2 ]; then
	pass auto_two_tls_sessions
else
	fail auto_two_tls_sessions "$(log_count 'route=auto .*event=client_tls ') client_tls events"
fi

# --- client_allow --------------------------------------------------------------------------
make_message "$T/m4.eml" allowed
r_ok=$(smtp_send --connect "127.0.0.1:$P_ALLOW" --source 127.0.0.1 \
	--file "$T/m4.eml" --from a@client.test --to b@example.test)
r_no=$(smtp_send --connect "127.0.0.1:$P_ALLOW" --source 127.0.0.2 \
	--file "$T/m4.eml" --from a@client.test --to b@example.test)
[ "$(json_get ok <<<"$r_ok")" = true ] && pass allow_listed_client_served ||
	fail allow_listed_client_served "$r_ok"
if [ "$(json_get ok <<<"$r_no")" != true ] && grep -q '554' <<<"$r_no" && grep -q '5.7.1' <<<"$r_no"; then
	pass other_client_refused_554
else
	fail other_client_refused_554 "$r_no"
fi
expect_log other_client_logged 'route=allow .*event=refused .*client=127\.0\.0\.2:[0-9]+ result=client-not-allowed'

# --- the upstream's TLS mode, mistaken -----------------------------------------------------
# implicit toward a plaintext greeting: at once, with what to set; the client gets a 421.
t0=$(now_ns)
out=$(timeout 10 socat -u -T 8 "TCP:127.0.0.1:$P_IMPL_PLAIN" - 2>&1)
secs=$(elapsed_since "$t0")
if grep -q '^421' <<<"$out" && awk -v s="$secs" 'BEGIN { exit !(s < 3) }'; then
	pass implicit_to_plaintext_fails_at_once
else
	fail implicit_to_plaintext_fails_at_once "${secs}s: $out"
fi
expect_log implicit_to_plaintext_says_so \
	'route=implicit_to_plain .*event=upstream_tls_mismatch .*upstream speaks plaintext.*set upstream_tls = starttls'
# starttls toward a server whose first bytes are a TLS record.
t0=$(now_ns)
out=$(timeout 10 socat -u -T 8 "TCP:127.0.0.1:$P_START_TLSFIRST" - 2>&1)
secs=$(elapsed_since "$t0")
if grep -q '^421' <<<"$out" && awk -v s="$secs" 'BEGIN { exit !(s < 3) }'; then
	pass starttls_to_tls_first_fails_at_once
else
	fail starttls_to_tls_first_fails_at_once "${secs}s: $out"
fi
expect_log starttls_to_tls_first_says_so \
	'route=starttls_to_tlsfirst .*event=upstream_tls_mismatch .*upstream speaks implicit TLS.*set upstream_tls = implicit'
# starttls toward a silent implicit-TLS port: only its timeout can tell; it says what to check.
out=$(timeout 10 socat -u -T 8 "TCP:127.0.0.1:$P_START_SILENT" - 2>&1)
grep -q '^421' <<<"$out" && pass silent_tls_port_421 || fail silent_tls_port_421 "$out"
expect_log silent_tls_port_hint \
	'route=starttls_to_silent .*no greeting from the upstream in time .*set upstream_tls = implicit'

# -t knows the well-known ports: STARTTLS toward 465, implicit TLS toward 25.
cat >"$T/ports.conf" <<EOF
[route to465]
listen = 127.0.0.1:$(free_port)
protocol = smtp
upstream = 127.0.0.1:465
upstream_tls = starttls
upstream_policy = encrypt

[route to25]
listen = 127.0.0.1:$(free_port)
protocol = smtp
upstream = 127.0.0.1:25
upstream_tls = implicit
upstream_policy = encrypt
EOF
out=$("$STP_BIN" -t -c "$T/ports.conf" 2>&1)
if grep -q "^$T/ports.conf:4: warning: route \"to465\": port 465 is an implicit-TLS port but upstream_tls = starttls (set upstream_tls = implicit)" <<<"$out" &&
	grep -q "^$T/ports.conf:11: warning: route \"to25\": port 25 greets in plaintext but upstream_tls = implicit (set upstream_tls = starttls)" <<<"$out"; then
	pass check_warns_tls_mode_of_well_known_ports
else
	fail check_warns_tls_mode_of_well_known_ports "$out"
fi

# --- a failed verification shows the certificate ---------------------------------------------
PIN_WRONG=$(spki_sha256 "$CERTS/wrongname.pem")
(echo x | timeout 5 socat -T 3 - "TCP:127.0.0.1:$P_VFAIL" >/dev/null 2>&1) || true
expect_log vfail_presented_certificate_logged \
	"route=vfail .*event=upstream_certificate .*subject=\"?/CN=wrong.example\"? .*issuer=\"?/CN=starttls-proxy test CA\"? pin=sha256:$PIN_WRONG"
expect_log vfail_counted_as_mismatch \
	'route=vfail .*event=policy_failure .*result=certificate-host-mismatch'

# --- certificate expiry ------------------------------------------------------------------------
# The gauge: seconds left on the route's certificate (825-day test leaf).
metrics=$(curl -s "http://127.0.0.1:$ADMIN/metrics")
left=$(sed -nE 's/^starttls_proxy_certificate_expiry_seconds\{route="smtps",side="client"\} (-?[0-9]+)$/\1/p' <<<"$metrics")
want=$(($(date -d "$(openssl x509 -in "$CERTS/server.pem" -noout -enddate | cut -d= -f2)" +%s) - $(date +%s)))
if [ -n "$left" ] && [ $((left - want)) -le 5 ] && [ $((want - left)) -le 5 ]; then
	pass expiry_gauge_seconds_left
else
	fail expiry_gauge_seconds_left "gauge '$left', certificate says $want"
fi
grep -q 'certificate_expiry_seconds{route="wrap",side="client"}' <<<"$metrics" &&
	! grep -q 'certificate_expiry_seconds{route="allow"' <<<"$metrics" &&
	pass expiry_gauge_only_where_a_certificate_is_served ||
	fail expiry_gauge_only_where_a_certificate_is_served "$(grep expiry_seconds <<<"$metrics" | head -n 3)"
expect_log expiry_logged_at_start 'route=smtps event=certificate side=client .*not_after=20[0-9-]+T.* status=ok'

# A certificate within 14 days: -t warns with FILE:LINE; the daemon logs a warning.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$T/soon.key" \
	-out "$T/soon.pem" -days 5 -subj /CN=localhost >/dev/null 2>&1
cat >"$T/soon.conf" <<EOF
[global]
log_level = info
[route soon]
listen = 127.0.0.1:$P_SMTPS
protocol = smtp
client_tls = implicit
cert = $T/soon.pem
key = $T/soon.key
upstream = 127.0.0.1:$SINK
EOF
out=$("$STP_BIN" -t -c "$T/soon.conf" 2>&1)
rc=$?
if [ $rc -eq 0 ] && grep -q "^$T/soon.conf:7: warning: route \"soon\": cert \"$T/soon.pem\" expires on .* (in [45] days)" <<<"$out" &&
	grep -q 'configuration OK' <<<"$out"; then
	pass check_warns_expiring_certificate
else
	fail check_warns_expiring_certificate "exit $rc: $out"
fi
out=$("$STP_BIN" -t -c "$conf" 2>&1)
if grep -q 'expires on' <<<"$out"; then
	fail check_quiet_for_a_long_lived_certificate "$out"
else
	pass check_quiet_for_a_long_lived_certificate
fi
# An expired one: -t refuses it at its line.
sed "s#$T/soon#$CERTS/expired#" "$T/soon.conf" >"$T/expired.conf"
out=$("$STP_BIN" -t -c "$T/expired.conf" 2>&1)
rc=$?
if [ $rc -ne 0 ] && grep -q "^$T/expired.conf:7: route \"soon\": cert \"$CERTS/expired.pem\" expired on " <<<"$out" &&
	! grep -q 'configuration OK' <<<"$out"; then
	pass check_refuses_expired_certificate
else
	fail check_refuses_expired_certificate "exit $rc: $out"
fi
# Reload onto the soon-expiring certificate: logged as a warning, gauge follows.
cat >>"$conf" <<EOF
[route soon]
listen = 127.0.0.1:$(free_port)
protocol = smtp
client_tls = implicit
cert = $T/soon.pem
key = $T/soon.key
upstream = 127.0.0.1:$SINK
EOF
kill -HUP "$PROXY"
# (the gauge is set before this line is logged)
expect_log expiring_logged_at_reload 'level=warn route=soon event=certificate side=client .*days_left=[45] status=expiring'
left=$(curl -s "http://127.0.0.1:$ADMIN/metrics" |
	sed -nE 's/^starttls_proxy_certificate_expiry_seconds\{route="soon",side="client"\} (-?[0-9]+)$/\1/p')
if [ -n "$left" ] && [ "$left" -gt $((4 * 86400)) ] && [ "$left" -le $((5 * 86400)) ]; then
	pass expiry_gauge_after_reload
else
	fail expiry_gauge_after_reload "gauge '$left'"
fi

finish
