#!/usr/bin/env bash
# Under policy_mode = enforce, no client byte ever reaches an upstream that failed its
# policy: for every level that can fail (verify, fingerprint, encrypt) and every failure
# type (wrong name, self-signed, expired, untrusted CA, pin mismatch, handshake failure),
# with the client speaking first and at once (its bytes wait while the upstream handshake
# runs), speaking during a slow handshake, and on tcp and SMTP routes alike. The upstream is
# `openssl s_server`, which prints every byte it decrypts: a byte of the client's secret in
# its output is a failure. Control cases (a good certificate, and testing mode) prove the
# same setup does deliver the bytes when the policy allows it.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

SECRET="AUTH secret-$RANDOM$RANDOM"
FP_SERVER=$(spki_sha256 "$CERTS/server.pem")

# s_server NAME CERT [s_server options]: one-connection TLS server printing what it reads to
# $T/NAME.out; port: S_PORT[NAME].
declare -A S_PORT=() S_PID=()
s_server() {
	local name=$1 cert=$2 p
	shift 2
	free_port p
	S_PORT[$name]=$p
	# s_server quits at EOF on its standard input: keep that open.
	spawn "srv-$name" bash -c 'exec openssl s_server "$@" < <(sleep 60)' s_server \
		-accept "127.0.0.1:$p" -cert "$CERTS/$cert.pem" -key "$CERTS/$cert.key" -quiet \
		-naccept 1 "$@"
	S_PID[$name]=$LAST_PID
}

declare -A PORT=()
conf=$T/reject.conf
global_section "helo_name = proxy.reject.test" >"$conf"
# route NAME PROTOCOL UPSTREAM_PORT POLICY [extra lines]: plaintext client, implicit TLS up.
route() {
	local name=$1 proto=$2 up=$3 policy=$4 p l
	shift 4
	free_port p
	PORT[$name]=$p
	{
		printf '[route %s]\nlisten = 127.0.0.1:%s\nprotocol = %s\nupstream = 127.0.0.1:%s\n' \
			"$name" "$p" "$proto" "$up"
		printf 'upstream_tls = implicit\nupstream_policy = %s\nupstream_name = localhost\n' "$policy"
		for l in "$@"; do echo "$l"; done
		echo
	} >>"$conf"
}

# case NAME CERT POLICY [extra route lines]: a tcp route and an smtp route toward their own
# s_server with CERT.
CASES=()
case_() {
	local name=$1 cert=$2 policy=$3
	shift 3
	s_server "$name" "$cert"
	route "$name" tcp "${S_PORT[$name]}" "$policy" "$@"
	s_server "smtp_$name" "$cert"
	route "smtp_$name" smtp "${S_PORT[smtp_$name]}" "$policy" "$@"
	CASES+=("$name")
}
case_ v_wrongname wrongname verify
case_ v_selfsigned selfsigned verify
case_ v_expired expired verify
case_ v_otherca otherca-server verify
case_ fp_mismatch selfsigned fingerprint "upstream_fingerprint = sha256:$FP_SERVER"
# A handshake that fails: the server speaks TLS 1.2 only, the route demands 1.3.
s_server enc_hsfail server -tls1_2
route enc_hsfail tcp "${S_PORT[enc_hsfail]}" encrypt "upstream_min_tls = 1.3"
# Controls: the same setup delivers when the policy passes or only reports.
s_server good server
route good tcp "${S_PORT[good]}" verify
s_server testing wrongname
route testing tcp "${S_PORT[testing]}" verify "policy_mode = testing"
# Slow handshake: the client's bytes arrive while the upstream is still connecting.
start_server slow_wrongname --mode sink --cert "$CERTS/wrongname.pem" --key "$CERTS/wrongname.key" \
	--delay 1.0 --result "$T/slow_wrongname.json"
wait_servers
route slow_wrongname tcp "$(port_of slow_wrongname)" verify
start_proxy "$conf"

# speak NAME [delay]: the client sends the secret (at once, or after delay seconds) and
# half-closes; socat waits up to 3 s for the proxy to close.
speak() {
	local port=${PORT[$1]} d=${2:-0}
	if [ "$d" = 0 ]; then
		printf '%s\r\n' "$SECRET" | timeout 10 socat -t 3 - "TCP:127.0.0.1:$port" >"$T/$1.client" 2>&1
	else
		(sleep "$d"; printf '%s\r\n' "$SECRET") |
			timeout 10 socat -t 3 - "TCP:127.0.0.1:$port" >"$T/$1.client" 2>&1
	fi
}

# server_done NAME: s_server NAME has ended its one connection (and printed all it read).
server_done() {
	local pid=${S_PID[$1]} i=0
	while kill -0 "$pid" 2>/dev/null; do
		[ $i -ge 100 ] && return 1
		sleep 0.1
		i=$((i + 1))
	done
	return 0
}

# nothing_reached NAME RESULT: the route logged a policy failure RESULT under enforce, the
# s_server saw the connection end, and not one byte of the secret reached it.
nothing_reached() {
	local name=$1 result=$2
	if ! wait_log "route=$name .*event=policy_failure .*result=$result .*mode=enforce" 5; then
		fail "${name}_policy_failure_logged" "no policy_failure result=$result: $(log_line "route=$name ")"
		return
	fi
	pass "${name}_policy_failure_logged"
	if ! wait_log "route=$name .*event=close" 5; then
		fail "${name}_closed" "the session did not end"
		return
	fi
	if ! server_done "$name"; then
		fail "${name}_no_client_byte_upstream" "s_server still holds the connection"
		return
	fi
	if [ ! -f "$T/srv-$name.log" ]; then
		fail "${name}_no_client_byte_upstream" "no s_server output file"
	elif grep -q "secret" "$T/srv-$name.log" || grep -q "EHLO\|MAIL" "$T/srv-$name.log"; then
		fail "${name}_no_client_byte_upstream" "the rejected upstream received: $(grep -a 'secret\|EHLO\|MAIL' "$T/srv-$name.log" | head -n 2)"
	else
		pass "${name}_no_client_byte_upstream"
	fi
}

declare -A RESULT=([v_wrongname]=certificate-host-mismatch [v_selfsigned]=certificate-not-trusted
	[v_expired]=certificate-expired [v_otherca]=certificate-not-trusted
	[fp_mismatch]=validation-failure)
CLIENTS=()
for c in "${CASES[@]}"; do
	speak "$c" &
	CLIENTS+=($!)
	# SMTP: the client pipelines its whole session at once, credentials included, and
	# keeps the connection open (no half-close) while it waits for replies.
	(printf 'EHLO app.test\r\nAUTH PLAIN %s\r\nMAIL FROM:<a@app.test>\r\n' "$SECRET"; sleep 3) |
		timeout 10 socat -t 3 - "TCP:127.0.0.1:${PORT[smtp_$c]}" >"$T/smtp_$c.client" 2>&1 &
	CLIENTS+=($!)
done
speak enc_hsfail &
CLIENTS+=($!)
speak slow_wrongname 0.3 &
CLIENTS+=($!)
speak good &
CLIENTS+=($!)
speak testing &
CLIENTS+=($!)
wait "${CLIENTS[@]}"

for c in "${CASES[@]}"; do
	nothing_reached "$c" "${RESULT[$c]}"
	nothing_reached "smtp_$c" "${RESULT[$c]}"
	if grep -q '^421 4.7.0 ' "$T/smtp_$c.client"; then
		pass "smtp_${c}_client_told_421_4.7.0"
	else
		fail "smtp_${c}_client_told_421_4.7.0" "client got: $(head -c 200 "$T/smtp_$c.client")"
	fi
done
nothing_reached enc_hsfail tls-handshake-failure

# The slow upstream (1 s before its handshake) got the connection, but no byte of data.
if wait_log "route=slow_wrongname .*event=policy_failure .*result=certificate-host-mismatch" 5 &&
	wait_file "$T/slow_wrongname.json" 5; then
	got=$(json_get received "$T/slow_wrongname.json")
	if [ "$got" = 0 ]; then
		pass slow_handshake_no_client_byte_upstream
	else
		fail slow_handshake_no_client_byte_upstream "upstream received $got bytes: $(cat "$T/slow_wrongname.json")"
	fi
else
	fail slow_handshake_no_client_byte_upstream "no policy failure or no server result"
fi

# Controls: the same client and server setup delivers the secret when the policy allows it.
for c in good testing; do
	if server_done "$c" && grep -q "$SECRET" "$T/srv-$c.log"; then
		pass "control_${c}_delivers"
	else
		fail "control_${c}_delivers" "s_server got: $(head -c 200 "$T/srv-$c.log" 2>/dev/null)"
	fi
done
expect_log testing_reported 'route=testing .*event=policy_failure .*mode=testing'
finish
