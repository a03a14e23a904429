# shellcheck shell=bash
# Helpers of the late-binding tests (test_mta_sts.sh, test_dane.sh), sourced after lib.sh,
# smtp_lib.sh and dns_lib.sh. The caller sets MXP (the MX hosts' port), WEBP (the policy
# servers' port) and PP (the proxy's port) with free_port, and makes $T/msg (make_message).
#
#   sink NAME ADDR [smtp_sink.py args]   an MX host: aiosmtpd on ADDR:MXP ($T/NAME.store,
#                                        $T/NAME.raw)
#   policy DOMAIN MODE MX...             $T/policy-DOMAIN.txt, an MTA-STS policy file
#   web DOMAIN ADDR [https_policy.py args]
#                                        the HTTPS server of mta-sts.DOMAIN on ADDR:WEBP with
#                                        $T/web.pem (its pid: WEB_PID_DOMAIN)
#   send RCPT...                         one message from smtplib through the proxy on PP;
#                                        its JSON result in $T/send.out
#   mx_route NAME PORT LEVEL             a [route] to the recipients' MX hosts (mx:MXP)
#   stored STORE N                       the store holds N messages (waits up to 5 s)
#   last_meta STORE                      the envelope (JSON) of the newest message


sink() { # NAME ADDR [cert args]
	local name=$1 addr=$2
	shift 2
	start_sink "$name" --listen "$addr:$MXP" "$@"
}

policy() { # DOMAIN MODE MX...
	local d=$1 mode=$2 m
	shift 2
	{
		printf 'version: STSv1\r\nmode: %s\r\n' "$mode"
		for m in "$@"; do printf 'mx: %s\r\n' "$m"; done
		printf 'max_age: 86400\r\n'
	} >"$T/policy-$d.txt"
}

web() { # DOMAIN ADDR [args]
	local d=$1 addr=$2
	shift 2
	rm -f "$T/web-$d.port"
	spawn "web-$d" "$SMTP_PY" "$TOOLS/https_policy.py" --listen "$addr:$WEBP" \
		--cert "$T/web.pem" --key "$T/web.key" --policy "$T/policy-$d.txt" \
		--ready "$T/web-$d.port" --log "$T/web-$d.requests" "$@"
	eval "WEB_PID_${d//-/_}=$LAST_PID"
	wait_file "$T/web-$d.port" 10 || { fail "web($d)" "$(tail -n 3 "$T/web-$d.log")"; finish; }
}

send() { # RCPT... ; JSON result in $T/send.out
	local args=() r
	for r in "$@"; do args+=(--to "$r"); done
	smtp_send --connect "127.0.0.1:$PP" --file "$T/msg" --from app@legacy.example \
		"${args[@]}" >"$T/send.out" 2>&1
}

# mx_route NAME PORT LEVEL: the configuration of a late-binding route toward mx:MXP.
mx_route() {
	printf '[route %s]\nlisten = 127.0.0.1:%s\nprotocol = smtp\nupstream = mx:%s\n' "$1" "$2" "$MXP"
	printf 'upstream_tls = starttls\nupstream_policy = %s\n\n' "$3"
}

# stored STORE N: the store holds N messages (waits up to 5 s for them).
stored() {
	local i
	for i in $(seq 50); do
		[ "$(msg_count "$1")" = "$2" ] && return 0
		sleep 0.1
	done
	return 1
}
last_meta() { cat "$(ls -t "$1"/msg-*.json | head -n 1)"; }
