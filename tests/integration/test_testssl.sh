#!/usr/bin/env bash
# stp-timeout: 900  (two full testssl.sh audits: five minutes on a quiet 2-core machine, more on a loaded one)
# The TLS layer as an outside auditor sees it: testssl.sh against an implicit-TLS and a
# STARTTLS route with default settings; any VULNERABLE or NOT ok line fails (testssl's
# findings are printed as notes). The audit judges the TLS configuration the proxy offers,
# which is the same in every build: `make test` runs it once, against the normal build.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/smtp_lib.sh
. "$(dirname "$0")/smtp_lib.sh"

start_sink sink
SINK=$(port_of sink)
free_port P_SMTPS
free_port P_SUB
conf=$T/tls.conf
{
	global_section
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
EOF
} >"$conf"
start_proxy "$conf"

# --- testssl.sh: the audit a new user runs ---------------------------------------------
# audit_start NAME ARGS...: runs testssl in the background; audit_check NAME waits for it,
# then FAILs on any VULNERABLE or NOT ok line, and on a run that did not get through (no
# vulnerability section: a check that saw nothing proves nothing). The findings are printed
# as notes. The two audits run one after the other: testssl keeps both cores busy (run at
# once, they took as long: 302 s).
declare -A AUDIT_PID
audit_start() {
	local name=$1
	shift
	testssl --quiet --color 0 --warnings batch --add-ca "$CERTS/ca.pem" "$@" \
		>"$T/testssl-$name.txt" 2>&1 &
	AUDIT_PID[$name]=$!
	PIDS+=("$!")
}
audit_check() {
	local name=$1 out=$T/testssl-$1.txt
	wait "${AUDIT_PID[$name]}"
	grep -E 'TLS 1(\.[123])? |Obsolete CBC|Secure Client-Initiated|LUCKY13|TLS_FALLBACK_SCSV|Has server cipher order|Chain of trust' \
		"$out" | sed "s/^ */  # testssl $name: /"
	if ! grep -q 'Secure Client-Initiated Renegotiation' "$out" ||
		! grep -q 'LUCKY13' "$out"; then
		fail "testssl_$name" "testssl did not reach the vulnerability tests: $(tail -n 3 "$out")"
	elif grep -E 'VULNERABLE|NOT ok' "$out" >"$T/bad-$name.txt"; then
		fail "testssl_$name" "$(head -n 3 "$T/bad-$name.txt")"
	else
		pass "testssl_$name"
	fi
}
audit_start implicit "127.0.0.1:$P_SMTPS"
audit_check implicit
audit_start starttls -t smtp "127.0.0.1:$P_SUB"
audit_check starttls

finish
