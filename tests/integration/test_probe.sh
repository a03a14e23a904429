#!/usr/bin/env bash
# starttls-proxy --probe HOST:PORT: against a verifiable STARTTLS server, one with a wrong
# name, a self-signed one, an implicit-TLS one (Postfix's wrapper mode), one that strips
# STARTTLS, one that refuses it, and a port nobody listens on; in text and JSON; the exit
# codes (0 would pass, 1 would block, 2 unreachable); and with -c FILE --route NAME, the
# route's policy and its table row.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/smtp_lib.sh
. "$(dirname "$0")/smtp_lib.sh"

start_fake good --cert "$CERTS/server.pem" --key "$CERTS/server.key"
start_fake wrongname --cert "$CERTS/wrongname.pem" --key "$CERTS/wrongname.key"
start_fake selfsigned --cert "$CERTS/selfsigned.pem" --key "$CERTS/selfsigned.key"
start_fake stripped --starttls none
start_fake refused --starttls refuse
start_sink pfsink
pf_start pf "$(port_of pfsink)" smtps=wrapper
free_port DEAD
CA=(--ca "$CERTS/ca.pem")
PIN=$(spki_sha256 "$CERTS/server.pem")

# probe NAME [args]: runs --probe, output in $T/NAME.out, exit status in $T/NAME.rc.
probe() {
	local name=$1
	shift
	timeout 30 "$STP_BIN" --probe "$@" >"$T/$name.out" 2>&1
	echo $? >"$T/$name.rc"
}
# expect CHECK PROBE RC PATTERN...: probe PROBE exited RC and its output has every pattern.
expect() {
	local check=$1 name=$2 rc=$3 pat
	shift 3
	if [ ! -f "$T/$name.rc" ] || [ "$(cat "$T/$name.rc")" != "$rc" ]; then
		fail "$check" "exit $(cat "$T/$name.rc" 2>&1), want $rc: $(tr '\n' '|' <"$T/$name.out" 2>&1)"
		return
	fi
	for pat in "$@"; do
		if ! grep -Eq -- "$pat" "$T/$name.out"; then
			fail "$check" "no /$pat/ in: $(tr '\n' '|' <"$T/$name.out")"
			return
		fi
	done
	pass "$check"
}

probe good "127.0.0.1:$(port_of good)" --name localhost "${CA[@]}"
expect probe_good_exit_0 good 0 '^  greeting      220 fake.test' '^  starttls      offered' \
	'^  tls           TLSv1\.[23] ' '^  certificate 0 subject=/CN=localhost' \
	'issuer=/CN=starttls-proxy test CA' 'names=localhost' 'expires=20[0-9-]+T' \
	"^  spki pin      sha256:$PIN\$" '^  verification  ok \(name localhost\)' \
	'verdicts      none=pass may=pass encrypt=pass fingerprint=unset verify=pass' \
	'would pass'
probe good_json "127.0.0.1:$(port_of good)" --name localhost "${CA[@]}" --json
if [ "$(cat "$T/good_json.rc")" = 0 ] && python3 - "$T/good_json.out" "$PIN" <<'PY'
import json, sys
r = json.loads(open(sys.argv[1]).read())
assert r["starttls_offered"] == "yes", r
assert r["tls_version"] in ("TLSv1.2", "TLSv1.3"), r
assert r["spki_pin"] == "sha256:" + sys.argv[2], r
assert r["verification"] == "ok", r
assert r["chain"][0]["subject"] == "/CN=localhost", r
assert r["verdicts"] == {"none": "pass", "may": "pass", "encrypt": "pass",
                         "fingerprint": "unset", "verify": "pass"}, r
assert r["policy"] == "verify" and r["policy_verdict"] == "pass" and r["exit"] == 0, r
PY
then pass probe_json_fields; else fail probe_json_fields "$(cat "$T/good_json.out")"; fi

probe wrongname "127.0.0.1:$(port_of wrongname)" --name localhost "${CA[@]}"
expect probe_wrong_name_exit_1 wrongname 1 'verification  certificate-host-mismatch' 'encrypt=pass' \
	'verify=fail' 'would block, certificate-host-mismatch'
probe selfsigned "127.0.0.1:$(port_of selfsigned)" --name localhost "${CA[@]}"
expect probe_self_signed_exit_1 selfsigned 1 'verification  certificate-not-trusted' \
	'would block, certificate-not-trusted'
probe stripped "127.0.0.1:$(port_of stripped)" "${CA[@]}"
expect probe_stripped_exit_1 stripped 1 'starttls      not offered' 'encrypt=fail' \
	'would block, starttls-not-supported'
if lines_have stripped '^plain: QUIT'; then pass probe_says_quit; else fail probe_says_quit "$(tail -n 3 "$T/stripped.lines")"; fi
probe refused "127.0.0.1:$(port_of refused)" "${CA[@]}"
expect probe_refused_exit_1 refused 1 'starttls      offered, refused: 454 4.7.0' \
	'would block, starttls-not-supported'
probe implicit "127.0.0.1:${PF_PORT[pf.smtps]}" --tls implicit --name localhost "${CA[@]}"
expect probe_implicit_postfix implicit 0 '^probe .*\(smtp, implicit\)' \
	'greeting      220 pf-pf.test ESMTP Postfix-under-test' 'verification  ok'
probe dead "127.0.0.1:$DEAD" "${CA[@]}"
expect probe_unreachable_exit_2 dead 2 'error         cannot connect'
probe notsmtp "127.0.0.1:$(port_of good)" --protocol pop3 "${CA[@]}"
expect probe_wrong_protocol_exit_2 notsmtp 2 'no POP3 greeting'

# With a route: its policy and its table row decide the verdict.
cat >"$T/table" <<EOF
127.0.0.1:$(port_of wrongname)  encrypt
127.0.0.1:$(port_of good)       fingerprint sha256=$PIN
127.0.0.1:$(port_of selfsigned) verify names=localhost mode=testing
EOF
free_port LP
cat >"$T/probe.conf" <<EOF
$(global_section)
[route out]
listen = 127.0.0.1:$LP
protocol = smtp
upstream = 127.0.0.1:$(port_of good)
upstream_tls = starttls
upstream_policy = verify
upstream_name = localhost
policy_table = $T/table
EOF
probe route_row_encrypt "127.0.0.1:$(port_of wrongname)" -c "$T/probe.conf" --route out
expect probe_route_table_encrypt route_row_encrypt 0 'policy        encrypt, enforce \(route out, table:1\): would pass'
probe route_row_pin "127.0.0.1:$(port_of good)" -c "$T/probe.conf" --route out
expect probe_route_table_fingerprint route_row_pin 0 'fingerprint=pass' \
	'policy        fingerprint, enforce \(route out, table:2\): would pass'
probe route_row_testing "127.0.0.1:$(port_of selfsigned)" -c "$T/probe.conf" --route out
expect probe_route_table_testing route_row_testing 0 'verify=fail' 'verify, testing \(route out, table:3\): would block' \
	'testing mode: reported, not enforced'
probe route_default "127.0.0.1:$(port_of stripped)" -c "$T/probe.conf" --route out
expect probe_route_default_verify route_default 1 'policy        verify, enforce \(route out, route\): would block'
probe route_missing "127.0.0.1:$(port_of good)" -c "$T/probe.conf" --route nosuch
expect probe_unknown_route route_missing 2 'no route "nosuch"'
finish
