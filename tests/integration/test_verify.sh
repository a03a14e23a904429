#!/usr/bin/env bash
# Upstream verification levels (may, encrypt, fingerprint, verify) against a good
# certificate, a self-signed one, a wrong name, an expired one and one from an untrusted CA;
# wildcard names; policy_mode = testing. Each case checks the relay outcome (echo or a
# close without a single byte) AND the logged result type.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

# One TLS echo server per certificate, plus a plain (non-TLS) echo server.
for c in server selfsigned wrongname expired otherca-server wildcard; do
	start_server "up_$c" --mode echo --cert "$CERTS/$c.pem" --key "$CERTS/$c.key" \
		--result "$T/up_$c.json"
done
start_server up_plain --mode echo
wait_servers
up() { echo "127.0.0.1:$(port_of "up_$1")"; }

FP_SELF=$(spki_sha256 "$CERTS/selfsigned.pem")
FP_SERVER=$(spki_sha256 "$CERTS/server.pem")

# route NAME UPSTREAM POLICY [extra lines...]: one client-plain -> upstream-implicit route.
declare -A PORT=()
conf=$T/verify.conf
global_section "log_format = text" >"$conf"
route() {
	local name=$1 upstream=$2 policy=$3 l p
	shift 3
	free_port p
	PORT[$name]=$p
	{
		echo "[route $name]"
		echo "listen = 127.0.0.1:${PORT[$name]}"
		echo "protocol = tcp"
		echo "client_tls = none"
		echo "upstream = $upstream"
		echo "upstream_tls = implicit"
		echo "upstream_policy = $policy"
		for l in "$@"; do echo "$l"; done
		echo
	} >>"$conf"
}

# may: TLS without verification.
route may_good "$(up server)" may "upstream_name = localhost"
route may_selfsigned "$(up selfsigned)" may "upstream_name = localhost"
route may_expired "$(up expired)" may "upstream_name = localhost"
# encrypt: TLS required, no verification.
route enc_selfsigned "$(up selfsigned)" encrypt "upstream_name = localhost"
route enc_wrongname "$(up wrongname)" encrypt "upstream_name = localhost"
route enc_plain "$(up plain)" encrypt "upstream_name = localhost"
# fingerprint: SPKI pin.
route fp_good "$(up selfsigned)" fingerprint "upstream_name = localhost" \
	"upstream_fingerprint = sha256:$FP_SELF"
route fp_bad "$(up selfsigned)" fingerprint "upstream_name = localhost" \
	"upstream_fingerprint = sha256:$FP_SERVER"
route fp_colons "$(up server)" fingerprint "upstream_name = localhost" \
	"upstream_fingerprint = sha256:$(sed 's/../&:/g; s/:$//' <<<"${FP_SERVER^^}")"
# verify: chain to ca + name.
route v_good "$(up server)" verify "upstream_name = localhost"
route v_selfsigned "$(up selfsigned)" verify "upstream_name = localhost"
route v_wrongname "$(up wrongname)" verify "upstream_name = localhost"
route v_expired "$(up expired)" verify "upstream_name = localhost"
route v_otherca "$(up otherca-server)" verify "upstream_name = localhost"
route v_otherca_trusted "$(up otherca-server)" verify "upstream_name = localhost" \
	"upstream_ca = $CERTS/other-ca.pem"
route v_plain "$(up plain)" verify "upstream_name = localhost"
route v_wild_one "$(up wildcard)" verify "upstream_name = a.example.test"
route v_wild_two "$(up wildcard)" verify "upstream_name = a.b.example.test"
route v_wild_base "$(up wildcard)" verify "upstream_name = example.test"
route v_case "$(up server)" verify "upstream_name = LocalHost"
route v_default_name "localhost:$(port_of up_server)" verify
# policy_mode = testing: failures are logged, the session goes on.
route t_selfsigned "$(up selfsigned)" verify "upstream_name = localhost" "policy_mode = testing"
route t_wrongname "$(up wrongname)" verify "upstream_name = localhost" "policy_mode = testing"
route t_expired "$(up expired)" verify "upstream_name = localhost" "policy_mode = testing"
route t_fp_bad "$(up selfsigned)" fingerprint "upstream_name = localhost" \
	"upstream_fingerprint = sha256:$FP_SERVER" "policy_mode = testing"

start_proxy "$conf"

# The cases: ROUTE EXPECTATION [RESULT]
#   ok V          relays; logs upstream_tls verify=V and no policy_failure
#   blocked RES   closed without a byte; logs policy_failure result=RES mode=enforce
#   testing RES   relays anyway; logs policy_failure result=RES mode=testing
CASES=(
	"may_good ok skipped"
	"may_selfsigned ok skipped"
	"may_expired ok skipped"
	"enc_selfsigned ok skipped"
	"enc_wrongname ok skipped"
	"enc_plain blocked tls-handshake-failure"
	"fp_good ok ok"
	"fp_bad blocked validation-failure"
	"fp_colons ok ok"
	"v_good ok ok"
	"v_selfsigned blocked certificate-not-trusted"
	"v_wrongname blocked certificate-host-mismatch"
	"v_expired blocked certificate-expired"
	"v_otherca blocked certificate-not-trusted"
	"v_otherca_trusted ok ok"
	"v_plain blocked tls-handshake-failure"
	"v_wild_one ok ok"
	"v_wild_two blocked certificate-host-mismatch"
	"v_wild_base blocked certificate-host-mismatch"
	"v_case ok ok"
	"v_default_name ok ok"
	"t_selfsigned testing certificate-not-trusted"
	"t_wrongname testing certificate-host-mismatch"
	"t_expired testing certificate-expired"
	"t_fp_bad testing validation-failure"
)

# All connections at once (starting python is the slow part), then the verdicts.
for c in "${CASES[@]}"; do
	read -r r kind _ <<<"$c"
	[ "$kind" = blocked ] || kind=ok
	relay_start "$r" "$kind" "${PORT[$r]}"
done

PF='event=policy_failure .*side=upstream'
for c in "${CASES[@]}"; do
	read -r r kind res <<<"$c"
	relay_result "$r"
	case $kind in
	ok)
		if wait_log "route=$r .*event=upstream_tls .*verify=$res( |$)" 3 &&
			[ "$(log_count "route=$r .*$PF")" = 0 ]; then
			pass "${r}_logged"
		else
			fail "${r}_logged" "want upstream_tls verify=$res and no policy_failure; got: $(log_line "route=$r .*event=(upstream_tls|policy_failure)")"
		fi
		;;
	blocked | testing)
		mode=enforce
		[ "$kind" = testing ] && mode=testing
		if wait_log "route=$r .*$PF .*result=($res)( |$).*mode=$mode|route=$r .*$PF .*mode=$mode.*result=($res)( |$)" 3; then
			pass "${r}_logged"
		else
			fail "${r}_logged" "want policy_failure result=$res mode=$mode; got: $(log_line "route=$r .*(policy_failure|event=close)")"
		fi
		;;
	esac
done
expect_log fp_good_fingerprint_ok "route=fp_good .*event=upstream_tls .*fingerprint=ok"
expect_log fp_bad_fingerprint_mismatch "route=fp_bad .*event=upstream_tls .*fingerprint=mismatch"

# SNI: the upstream received upstream_name (and never an IP literal). The server writes its
# result line once the connection has ended: awaited.
if wait_log '"sni": "a.example.test"' 5 "$T/up_wildcard.json"; then
	pass sni_sent
else
	fail sni_sent "server saw: $(head -n 1 "$T/up_wildcard.json" 2>/dev/null)"
fi

finish
