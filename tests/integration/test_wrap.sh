#!/usr/bin/env bash
# protocol = tcp wrapping: the four client_tls x upstream_tls combinations, openssl s_client
# and curl against an implicit-TLS listener, client certificates both ways, minimum TLS
# versions, and JSON logs.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

CA=$CERTS/ca.pem
TLSC=(--tls --ca "$CA" --name localhost)   # client.py: TLS, verify the proxy as localhost

# Upstreams.
start_server echo_plain --mode echo
start_server echo_tls --mode echo --cert "$CERTS/server.pem" --key "$CERTS/server.key"
start_server echo_tls_cca --mode echo --cert "$CERTS/server.pem" --key "$CERTS/server.key" \
	--client-ca "$CA" --result "$T/echo_tls_cca.json"
start_server echo_tls12 --mode echo --cert "$CERTS/server.pem" --key "$CERTS/server.key" \
	--tls-max 1.2
start_server echo_tls_slow --mode echo --cert "$CERTS/server.pem" --key "$CERTS/server.key" \
	--delay 0.5
wait_servers
mkdir -p "$T/www"
head -c 300000 /dev/urandom >"$T/www/file.bin"
free_port HTTP
spawn http python3 -m http.server "$HTTP" --bind 127.0.0.1 --directory "$T/www"
wait_port "$HTTP" 10 || { fail http_server "python http.server did not start"; exit 1; }

UP_PLAIN=127.0.0.1:$(port_of echo_plain)
UP_TLS=127.0.0.1:$(port_of echo_tls)

free_port P_NN; free_port P_IN; free_port P_NI; free_port P_II
free_port P_HTTP; free_port P_CCA; free_port P_UCERT; free_port P_NOCERT
free_port P_MIN13; free_port P_UMIN13; free_port P_SLOWUP

conf=$T/wrap.conf
{
	global_section
	cat <<EOF
[route nn]
listen = 127.0.0.1:$P_NN
protocol = tcp
client_tls = none
upstream = $UP_PLAIN
upstream_tls = none

[route in]
listen = 127.0.0.1:$P_IN
protocol = tcp
client_tls = implicit
upstream = $UP_PLAIN
upstream_tls = none

[route ni]
listen = 127.0.0.1:$P_NI
protocol = tcp
client_tls = none
upstream = $UP_TLS
upstream_tls = implicit
upstream_policy = verify
upstream_name = localhost

[route ii]
listen = 127.0.0.1:$P_II
protocol = tcp
client_tls = implicit
upstream = $UP_TLS
upstream_tls = implicit
upstream_policy = verify
upstream_name = localhost

[route http]
listen = 127.0.0.1:$P_HTTP
protocol = tcp
client_tls = implicit
upstream = 127.0.0.1:$HTTP
upstream_tls = none

[route cca]
listen = 127.0.0.1:$P_CCA
protocol = tcp
client_tls = implicit
client_ca = $CA
upstream = $UP_PLAIN
upstream_tls = none

[route ucert]
listen = 127.0.0.1:$P_UCERT
protocol = tcp
client_tls = none
upstream = 127.0.0.1:$(port_of echo_tls_cca)
upstream_tls = implicit
upstream_policy = verify
upstream_name = localhost
upstream_cert = $CERTS/client.pem
upstream_key = $CERTS/client.key

[route nocert]
listen = 127.0.0.1:$P_NOCERT
protocol = tcp
client_tls = none
upstream = 127.0.0.1:$(port_of echo_tls_cca)
upstream_tls = implicit
upstream_policy = verify
upstream_name = localhost

[route min13]
listen = 127.0.0.1:$P_MIN13
protocol = tcp
client_tls = implicit
client_min_tls = 1.3
upstream = $UP_PLAIN
upstream_tls = none

[route umin13]
listen = 127.0.0.1:$P_UMIN13
protocol = tcp
client_tls = none
upstream = 127.0.0.1:$(port_of echo_tls12)
upstream_tls = implicit
upstream_policy = verify
upstream_name = localhost
upstream_min_tls = 1.3

[route slowup]
listen = 127.0.0.1:$P_SLOWUP
protocol = tcp
client_tls = none
upstream = 127.0.0.1:$(port_of echo_tls_slow)
upstream_tls = implicit
upstream_policy = verify
upstream_name = localhost
EOF
} >"$conf"

start_proxy "$conf"

# Every route announced before ready.
n=$(log_count 'event=listening')
if [ "$n" -ge 11 ]; then pass listening_events; else fail listening_events "$n of 11 routes logged event=listening"; fi

# --- the four combinations: 1 MiB echoed, checksums and logged byte counts ----------------
MB=1048576
combo() { # NAME PORT [client options]
	local name=$1 port=$2 out
	shift 2
	out=$(client bulk --connect "127.0.0.1:$port" "$@" --send-bytes $MB --expect-bytes $MB --timeout 10)
	if [ "$(json_get received <<<"$out")" = $MB ] &&
		[ "$(json_get sent_sha256 <<<"$out")" = "$(json_get received_sha256 <<<"$out")" ]; then
		pass "combo_$name"
	else
		fail "combo_$name" "echo mismatch: $out"
	fi
	if wait_log "route=$name .*event=close .*bytes_up=$MB .*bytes_down=$MB" 5 ||
		wait_log "route=$name .*event=close .*bytes_down=$MB .*bytes_up=$MB" 1; then
		pass "combo_${name}_close_logged"
	else
		fail "combo_${name}_close_logged" "no close event with bytes_up=$MB bytes_down=$MB: $(log_line "route=$name .*event=close")"
	fi
}
combo nn "$P_NN"
combo in "$P_IN" "${TLSC[@]}"
combo ni "$P_NI"
combo ii "$P_II" "${TLSC[@]}"
# The client sends 1 MiB at once while the upstream's TLS handshake takes 0.5 s: the proxy
# holds what arrives early (and pauses the client), then must flush and resume.
combo slowup "$P_SLOWUP"

expect_log session_id_format 'session=[0-9a-f]{16} .*event=accept .*client=127\.0\.0\.1:[0-9]+'
expect_log upstream_connected_logged "route=nn .*event=upstream_connected .*upstream=$UP_PLAIN"
expect_log client_tls_logged 'route=in .*event=client_tls .*version=TLSv1\.3 .*cipher=[A-Z0-9_-]+'
expect_log upstream_tls_logged 'route=ni .*event=upstream_tls .*version=TLSv1\.[23] .*verify=ok'
expect_log close_reports_tls 'route=ii .*event=close .*client_tls=.*upstream_tls='

# --- openssl s_client ---------------------------------------------------------------------
sclient() { # PORT [extra s_client args]: prints the transcript; status of s_client
	local port=$1
	shift
	(printf 'hello-sclient\n'; sleep 1) |
		timeout 10 openssl s_client -connect "127.0.0.1:$port" -servername localhost \
			-CAfile "$CA" -verify_return_error -verify_hostname localhost -no_ign_eof "$@" 2>&1
}
out=$(sclient "$P_IN")
rc=$?
if [ $rc -eq 0 ] && grep -q 'Verify return code: 0 (ok)' <<<"$out" && grep -q '^hello-sclient' <<<"$out"; then
	pass s_client_verified_echo
else
	fail s_client_verified_echo "rc=$rc: $(grep -E 'Verify|error|hello' <<<"$out" | head -n 3)"
fi
out=$(sclient "$P_IN" -tls1_2)
rc=$?
if [ $rc -eq 0 ] && grep -q 'Protocol *: TLSv1.2' <<<"$out" && grep -q '^hello-sclient' <<<"$out"; then
	pass s_client_tls12_default_min
else
	fail s_client_tls12_default_min "rc=$rc: $(grep -E 'Protocol|error|hello' <<<"$out" | head -n 3)"
fi
# Chain verification against a CA that did not sign the proxy's certificate must fail, and
# fail at the verification (a refused connect or a handshake cut short is not that).
out=$( (sleep 1) | timeout 10 openssl s_client -connect "127.0.0.1:$P_IN" -servername localhost \
	-CAfile "$CERTS/other-ca.pem" -verify_return_error 2>&1)
rc=$?
if [ $rc -ne 0 ] && grep -q 'certificate verify failed' <<<"$out"; then
	pass s_client_wrong_ca_rejected
else
	fail s_client_wrong_ca_rejected "rc=$rc, want a verification failure: $(grep -E 'Verif|error' <<<"$out" | head -n 2)"
fi

# --- curl through an implicit-TLS route in front of a plain HTTP server ---------------------
if curl -sS --max-time 10 --cacert "$CA" -o "$T/got.bin" "https://localhost:$P_HTTP/file.bin" 2>"$T/curl.err" &&
	cmp -s "$T/got.bin" "$T/www/file.bin"; then
	pass curl_https_get
else
	fail curl_https_get "$(cat "$T/curl.err")"
fi
code=$(curl -sS --max-time 10 --cacert "$CA" --tlsv1.2 --tls-max 1.2 -o /dev/null -w '%{http_code}' \
	"https://localhost:$P_HTTP/file.bin" 2>"$T/curl.err")
if [ "$code" = 200 ]; then pass curl_tls12; else fail curl_tls12 "http code '$code': $(cat "$T/curl.err")"; fi
# curl exit 60: the peer certificate cannot be authenticated (any other failure is not that).
curl -sS --max-time 10 --cacert "$CERTS/other-ca.pem" -o /dev/null "https://localhost:$P_HTTP/file.bin" 2>"$T/curl.err"
rc=$?
if [ $rc -eq 60 ]; then
	pass curl_wrong_ca_rejected
else
	fail curl_wrong_ca_rejected "curl exit $rc, want 60 (certificate not trusted): $(cat "$T/curl.err")"
fi

# --- client certificates required (client_ca) -------------------------------------------
relay_blocked client_ca_no_cert_refused "$P_CCA" "${TLSC[@]}"
relay_ok client_ca_with_cert "$P_CCA" "${TLSC[@]}" --cert "$CERTS/client.pem" --key "$CERTS/client.key"
relay_blocked client_ca_untrusted_cert_refused "$P_CCA" "${TLSC[@]}" \
	--cert "$CERTS/otherca-server.pem" --key "$CERTS/otherca-server.key"

# --- client certificate toward the upstream (upstream_cert/upstream_key) ---------------------
relay_ok upstream_cert_presented "$P_UCERT"
# The server writes its result line when the connection has ended.
if wait_log '"peer_cn": "test-client"' 5 "$T/echo_tls_cca.json"; then
	pass upstream_cert_seen_by_server
else
	fail upstream_cert_seen_by_server "server saw: $(head -n 2 "$T/echo_tls_cca.json" 2>/dev/null)"
fi
relay_blocked upstream_without_cert_refused "$P_NOCERT"

# --- minimum TLS versions --------------------------------------------------------------------
# Refused by the proxy with a protocol_version alert (not a refused connect or a lost peer).
out=$(sclient "$P_MIN13" -tls1_2)
rc=$?
if [ $rc -ne 0 ] && ! grep -q '^hello-sclient' <<<"$out" && grep -q 'alert protocol version' <<<"$out"; then
	pass client_min_tls13_refuses_tls12
else
	fail client_min_tls13_refuses_tls12 "s_client -tls1_2 rc=$rc, want a protocol_version alert: $(grep -E 'Protocol|hello|alert|error' <<<"$out" | head -n 2)"
fi
out=$(sclient "$P_MIN13" -tls1_3)
rc=$?
if [ $rc -eq 0 ] && grep -q '^hello-sclient' <<<"$out"; then
	pass client_min_tls13_accepts_tls13
else
	fail client_min_tls13_accepts_tls13 "rc=$rc: $(grep -E 'Protocol|error' <<<"$out" | head -n 2)"
fi
relay_blocked upstream_min_tls13_refuses_tls12_server "$P_UMIN13"
expect_log upstream_min_tls_logged 'route=umin13 .*event=policy_failure .*side=upstream .*result=tls-handshake-failure'

# --- log_format = json ------------------------------------------------------------------------
free_port P_J
jconf=$T/json.conf
{
	global_section "log_format = json"
	cat <<EOF
[route j]
listen = 127.0.0.1:$P_J
protocol = tcp
client_tls = implicit
upstream = $UP_PLAIN
upstream_tls = none
EOF
} >"$jconf"
start_proxy "$jconf" proxy_json
relay_ok json_route_relays "$P_J" "${TLSC[@]}"
wait_log '"event": *"close"' 5 "$T/proxy_json.log"
want=$(printf 'ping-json_route_relays\n' | wc -c)
if out=$(python3 - "$T/proxy_json.log" "$want" 2>&1 <<'EOF'
import json, re, sys
events = []
for n, line in enumerate(open(sys.argv[1]), 1):
    if not line.strip():
        continue
    try:
        obj = json.loads(line)
    except ValueError as e:
        sys.exit("line %d is not JSON (%s): %r" % (n, e, line[:120]))
    if not isinstance(obj, dict):
        sys.exit("line %d is not an object" % n)
    for k in ("ts", "level", "event"):
        if k not in obj:
            sys.exit("line %d has no %r: %r" % (n, k, line[:120]))
    events.append(obj)
names = [e["event"] for e in events]
for want in ("listening", "ready", "accept", "client_tls", "upstream_connected", "close"):
    if want not in names:
        sys.exit("no %r event among %s" % (want, sorted(set(names))))
close = [e for e in events if e["event"] == "close"][-1]
want = int(sys.argv[2])
if close.get("bytes_up") != want or close.get("bytes_down") != want:
    sys.exit("close event byte counts (want numbers %d/%d): %r" % (want, want, close))
if not re.fullmatch(r"[0-9a-f]{16}", str(close.get("session", ""))):
    sys.exit("close event session id: %r" % close.get("session"))
if close.get("route") != "j":
    sys.exit("close event route: %r" % close.get("route"))
print("%d JSON lines" % len(events))
EOF
); then
	pass json_log_valid
else
	fail json_log_valid "$out"
fi

finish
