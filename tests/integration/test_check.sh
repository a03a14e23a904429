#!/usr/bin/env bash
# -t/--check on a good configuration and on one broken configuration per error kind
# (each error reported as FILE:LINE: message, exit 1); -V names wolfSSL and libuv.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

if [ ! -x "$STP_BIN" ]; then
	fail binary "not found: $STP_BIN"
	exit 1
fi

free_port P1
free_port P2
free_port P3

# line_of FILE REGEX: number of the first line matching REGEX (so the expectations below
# follow the heredocs when they are edited).
line_of() { grep -nE -- "$2" "$1" | head -n 1 | cut -d: -f1; }

# run_check FILE: runs -t, sets OUT and RC.
run_check() {
	OUT=$("$STP_BIN" -c "$1" -t 2>&1)
	RC=$?
}

# expect_error NAME FILE LINE MESSAGE_REGEX: -t exits 1 and prints FILE:LINE: <message>
# where message matches the (case-insensitive, extended) regex.
expect_error() {
	local name=$1 file=$2 line=$3 re=$4
	run_check "$file"
	if [ "$RC" -ne 1 ]; then
		fail "$name" "expected exit 1, got $RC; output: $(head -n 3 <<<"$OUT")"
	elif grep -q 'configuration OK' <<<"$OUT"; then
		fail "$name" "printed 'configuration OK' along with an error"
	elif ! grep -qE "^$file:$line: " <<<"$OUT"; then
		fail "$name" "no '$file:$line: ...' line; got: $(head -n 3 <<<"$OUT")"
	elif ! grep -E "^$file:$line: " <<<"$OUT" | grep -qiE -- "$re"; then
		fail "$name" "message at line $line does not match /$re/: $(grep -E "^$file:$line: " <<<"$OUT" | head -n 1)"
	else
		pass "$name"
	fi
}

# A good configuration touching every kind of value the engine uses.
good=$T/good.conf
cat >"$good" <<EOF
# a comment
[global]
log_level = info        ; trailing comment
log_format = text
workers = 1
max_connections = 100
drain_timeout = 5s
cert = $CERTS/server.pem
key = $CERTS/server.key
ca = $CERTS/ca.pem

[route tls-in]
listen = 127.0.0.1:$P1
protocol = tcp
client_tls = implicit
client_ca = $CERTS/ca.pem
client_min_tls = 1.3
upstream = 127.0.0.1:$P3
upstream_tls = none
connect_timeout = 500ms
handshake_timeout = 5s
idle_timeout = 1m

[route tls-out]
listen = 127.0.0.1:$P2
protocol = tcp
client_tls = none
upstream = localhost:$P3
upstream_tls = implicit
upstream_policy = fingerprint
upstream_fingerprint = sha256:$(spki_sha256 "$CERTS/server.pem")
policy_mode = testing
upstream_name = localhost
upstream_cert = $CERTS/client.pem
upstream_key = $CERTS/client.key
upstream_min_tls = 1.2
EOF
run_check "$good"
if [ "$RC" -eq 0 ] && grep -qx 'configuration OK' <<<"$OUT"; then
	pass good_config
else
	fail good_config "exit $RC: $(head -n 5 <<<"$OUT")"
fi

# Long options too.
OUT=$("$STP_BIN" --config "$good" --check 2>&1)
RC=$?
if [ "$RC" -eq 0 ] && grep -qx 'configuration OK' <<<"$OUT"; then
	pass good_config_long_options
else
	fail good_config_long_options "exit $RC: $(head -n 3 <<<"$OUT")"
fi

# -t must not bind: the check passes while the listen address is busy.
start_server busy --listen "127.0.0.1:$P1"
wait_servers
run_check "$good"
if [ "$RC" -eq 0 ]; then
	pass check_does_not_bind
else
	fail check_does_not_bind "exit $RC with 127.0.0.1:$P1 in use: $(head -n 3 <<<"$OUT")"
fi

# The minimal route every broken config below starts from: global section + one route.
base() {
	cat <<EOF
[global]
log_level = debug
cert = $CERTS/server.pem
key = $CERTS/server.key
ca = $CERTS/ca.pem

[route r1]
listen = 127.0.0.1:$P1
protocol = tcp
upstream = 127.0.0.1:$P3
EOF
}

f=$T/unknown-key.conf
{ base; echo "colour = blue"; } >"$f"
expect_error unknown_key "$f" "$(line_of "$f" '^colour')" 'unknown|colour'

f=$T/unknown-global-key.conf
{ base | sed '2a frobnicate = yes'; } >"$f"
expect_error unknown_global_key "$f" "$(line_of "$f" '^frobnicate')" 'unknown|frobnicate'

f=$T/bad-enum.conf
{ base; echo "client_tls = sometimes"; } >"$f"
expect_error bad_value_enum "$f" "$(line_of "$f" '^client_tls')" 'client_tls|sometimes|invalid'

f=$T/bad-duration.conf
{ base; echo "idle_timeout = 5 fortnights"; } >"$f"
expect_error bad_value_duration "$f" "$(line_of "$f" '^idle_timeout')" 'idle_timeout|duration'

f=$T/bad-address.conf
base | sed "s/^listen = .*/listen = 127.0.0.1/" >"$f"
expect_error bad_value_address "$f" "$(line_of "$f" '^listen')" 'listen|address'

f=$T/bad-tls-version.conf
{ base; echo "client_min_tls = 1.7"; } >"$f"
expect_error bad_value_tls_version "$f" "$(line_of "$f" '^client_min_tls')" 'client_min_tls|1\.7'

f=$T/bad-fingerprint.conf
{ base; echo "upstream_tls = implicit"; echo "upstream_policy = fingerprint"
  echo "upstream_fingerprint = sha256:nothex"; } >"$f"
expect_error bad_value_fingerprint "$f" "$(line_of "$f" '^upstream_fingerprint')" 'fingerprint'

f=$T/dup-route.conf
{ base; echo; echo "[route r1]"; echo "listen = 127.0.0.1:$P2"; echo "protocol = tcp"
  echo "upstream = 127.0.0.1:$P3"; } >"$f"
expect_error duplicate_route_name "$f" "$(grep -n '^\[route r1\]' "$f" | tail -n 1 | cut -d: -f1)" 'duplicate|r1'

f=$T/dup-listen.conf
{ base; echo; echo "[route r2]"; echo "protocol = tcp"; echo "listen = 127.0.0.1:$P1"
  echo "upstream = 127.0.0.1:$P3"; } >"$f"
expect_error duplicate_listen "$f" "$(grep -n '^listen' "$f" | tail -n 1 | cut -d: -f1)" 'listen|already|r1|use'

f=$T/implicit-no-cert.conf
{ base | grep -vE '^(cert|key) ='; echo "client_tls = implicit"; } >"$f"
expect_error implicit_without_cert "$f" "$(line_of "$f" '^client_tls')" 'cert'

f=$T/unreadable-cert.conf
{ base | sed "s|^cert = .*|cert = $T/no-such-cert.pem|"; echo "client_tls = implicit"; } >"$f"
expect_error unreadable_cert "$f" "$(line_of "$f" '^cert')" 'no-such-cert|cannot|read|such file'

f=$T/garbage-cert.conf
echo "this is not a certificate" >"$T/garbage.pem"
{ base; echo "client_tls = implicit"; echo "cert = $T/garbage.pem"; echo "key = $CERTS/server.key"; } >"$f"
expect_error garbage_cert "$f" "$(line_of "$f" '^cert = .*garbage')" 'cert|pem|parse|load'

f=$T/mismatch.conf
{ base; echo "client_tls = implicit"; echo "cert = $CERTS/server.pem"; echo "key = $CERTS/client.key"; } >"$f"
run_check "$f"
l_cert=$(grep -n "^cert = $CERTS/server.pem" "$f" | tail -n 1 | cut -d: -f1)
l_key=$(grep -n "^key = $CERTS/client.key" "$f" | cut -d: -f1)
if [ "$RC" -eq 1 ] && grep -qE "^$f:($l_cert|$l_key): .*(match|key)" <<<"$OUT"; then
	pass cert_key_mismatch
else
	fail cert_key_mismatch "expected exit 1 and '$f:$l_cert|$l_key: ...(match|key)...'; got exit $RC: $(head -n 3 <<<"$OUT")"
fi

f=$T/mismatch-upstream.conf
{ base; echo "upstream_tls = implicit"; echo "upstream_name = localhost"
  echo "upstream_cert = $CERTS/client.pem"; echo "upstream_key = $CERTS/server.key"; } >"$f"
run_check "$f"
l_cert=$(line_of "$f" '^upstream_cert')
l_key=$(line_of "$f" '^upstream_key')
if [ "$RC" -eq 1 ] && grep -qE "^$f:($l_cert|$l_key): " <<<"$OUT"; then
	pass upstream_cert_key_mismatch
else
	fail upstream_cert_key_mismatch "expected exit 1 and '$f:$l_cert|$l_key: ...'; got exit $RC: $(head -n 3 <<<"$OUT")"
fi

# Several errors in one file: all of them, each with its own line.
f=$T/several.conf
{ base; echo "colour = blue"; echo "idle_timeout = never"; } >"$f"
run_check "$f"
l1=$(line_of "$f" '^colour')
l2=$(line_of "$f" '^idle_timeout')
if [ "$RC" -eq 1 ] && grep -qE "^$f:$l1: " <<<"$OUT" && grep -qE "^$f:$l2: " <<<"$OUT"; then
	pass several_errors_all_reported
else
	fail several_errors_all_reported "expected lines $l1 and $l2, exit 1; got exit $RC: $(head -n 4 <<<"$OUT")"
fi

# Every line of error output has the FILE:LINE: form.
if [ "$RC" -eq 1 ] && ! grep -vqE "^$f:[0-9]+: .+" <<<"$OUT"; then
	pass error_lines_format
else
	fail error_lines_format "a line without FILE:LINE: prefix: $(grep -vE "^$f:[0-9]+: " <<<"$OUT" | head -n 2)"
fi

# Missing configuration file.
OUT=$("$STP_BIN" -c "$T/does-not-exist.conf" -t 2>&1)
RC=$?
if [ "$RC" -eq 1 ] && grep -q "does-not-exist.conf" <<<"$OUT"; then
	pass missing_config_file
else
	fail missing_config_file "exit $RC: $(head -n 2 <<<"$OUT")"
fi

# A broken configuration also stops a real start: exit 1 with the FILE:LINE: error, no
# event=ready (a crash or a timeout is not a refusal).
f=$T/unknown-key.conf
out=$(timeout 5 "$STP_BIN" -c "$f" 2>&1)
rc=$?
if [ "$rc" -eq 1 ] && grep -qE "^$f:[0-9]+: " <<<"$out" && ! grep -q 'event=ready' <<<"$out"; then
	pass start_refuses_broken_config
else
	fail start_refuses_broken_config "exit $rc: $(head -n 2 <<<"$out")"
fi

# -V: version, wolfSSL and libuv versions.
OUT=$("$STP_BIN" -V 2>&1)
RC=$?
if [ "$RC" -eq 0 ] && grep -qi 'wolfssl[^0-9]*[0-9]\+\.[0-9]\+' <<<"$OUT" &&
	grep -qi 'libuv[^0-9]*[0-9]\+\.[0-9]\+' <<<"$OUT"; then
	pass version
else
	fail version "exit $RC: $OUT"
fi
OUT=$("$STP_BIN" --version 2>&1)
RC=$?
if [ "$RC" -eq 0 ] && grep -qi 'wolfssl' <<<"$OUT"; then
	pass version_long_option
else
	fail version_long_option "exit $RC: $OUT"
fi

OUT=$("$STP_BIN" -h 2>&1)
RC=$?
if [ "$RC" -eq 0 ] && grep -q -- '-c' <<<"$OUT" && grep -q -- '-t' <<<"$OUT"; then
	pass help
else
	fail help "exit $RC: $(head -n 3 <<<"$OUT")"
fi

# The shipped example (every key) passes -t once its files point at real ones: the
# documentation cannot drift from what the binary accepts.
sed -e "s#/etc/starttls-proxy/tls/cert.pem#$CERTS/server.pem#" \
	-e "s#/etc/starttls-proxy/tls/key.pem#$CERTS/server.key#" \
	-e "s#/etc/starttls-proxy/policy.table#$REPO_ROOT/etc/policy.table#" \
	-e "s#^;ticket_key_file = .*#ticket_key_file = $T/tickets.key#" \
	"$REPO_ROOT/etc/starttls-proxy.conf" >"$T/example.conf"
openssl rand -hex 80 >"$T/tickets.key"
chmod 600 "$T/tickets.key"
run_check "$T/example.conf"
if [ "$RC" -eq 0 ] && grep -q '^configuration OK' <<<"$OUT" && ! grep -qv -e '^configuration OK' -e 'does not resolve now' <<<"$OUT"; then
	pass example_configuration_checks
else
	fail example_configuration_checks "exit $RC: $(grep -v 'does not resolve' <<<"$OUT" | head -n 3)"
fi

# An encrypted key says so (the proxy cannot ask for a passphrase), at the key's line.
openssl pkey -in "$CERTS/server.key" -aes256 -passout pass:secret -out "$T/enc.key" 2>/dev/null
cat >"$T/enc.conf" <<EOF
[global]
cert = $CERTS/server.pem
key = $T/enc.key

[route a]
listen = 127.0.0.1:$P1
protocol = smtp
client_tls = implicit
upstream = 127.0.0.1:$P2
upstream_tls = none
EOF
expect_error encrypted_key_says_so "$T/enc.conf" "$(line_of "$T/enc.conf" '^key = ')" \
	'encrypted \(passphrase-protected\) private key'

# A [global] cert/key error is reported once, as global, however many routes use it.
cat >"$T/global.conf" <<EOF
[global]
cert = $CERTS/server.pem
key = $CERTS/client.key

[route a]
listen = 127.0.0.1:$P1
protocol = smtp
client_tls = implicit
upstream = 127.0.0.1:$P2
upstream_tls = none

[route b]
listen = 127.0.0.1:$P3
protocol = smtp
client_tls = starttls
upstream = 127.0.0.1:$P2
upstream_tls = none
EOF
expect_error global_identity_error "$T/global.conf" "$(line_of "$T/global.conf" '^key = ')" \
	'\[global\] key ".*" does not match'
check global_identity_error_once test "$(grep -c 'does not match' <<<"$OUT")" -eq 1

# Exit 1 with the usage text (a crash is no rejection).
OUT=$("$STP_BIN" --no-such-option 2>&1)
RC=$?
if [ "$RC" -eq 1 ] && grep -q '^usage:' <<<"$OUT"; then
	pass unknown_option_rejected
else
	fail unknown_option_rejected "exit $RC: $(head -n 2 <<<"$OUT")"
fi

finish
