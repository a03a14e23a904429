#!/usr/bin/env bash
# TLS session resumption on both sides.
#  Client side: two proxies sharing a ticket_key_file resume each other's sessions (TLS 1.2
#  and 1.3, Python's session_reused), a proxy without the file does not (control) but
#  resumes its own; rotation: a new first line encrypts after SIGHUP, older lines still
#  decrypt.
#  Upstream side: later sessions of a route resume the upstream session (the TLS server
#  records session_reused), for tcp wrap (TLS 1.2, 1.3) and an SMTP inject route; a server
#  that fails handshakes offering a session gets a full handshake on a new connection; a
#  session that failed verification (testing mode) is never cached; after a reload that
#  makes the policy stricter, the old session is not offered and verification fails.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/smtp_lib.sh
. "$(dirname "$0")/smtp_lib.sh"

start_server echo --mode echo
for v in 12 13; do
	start_server "up$v" --mode echo --cert "$CERTS/server.pem" --key "$CERTS/server.key" \
		--tls-max "1.${v#1}" --tls-min "1.${v#1}" --result "$T/up$v.json"
done
start_server picky --mode echo --cert "$CERTS/server.pem" --key "$CERTS/server.key" \
	--refuse-resumption --result "$T/picky.json"
start_server wrong --mode echo --cert "$CERTS/wrongname.pem" --key "$CERTS/wrongname.key" \
	--result "$T/wrong.json"
start_server good --mode echo --cert "$CERTS/server.pem" --key "$CERTS/server.key" \
	--result "$T/good.json"
wait_servers
start_fake fake --starttls offer --cert "$CERTS/server.pem" --key "$CERTS/server.key"
ECHO=$(port_of echo)

# --- client side: tickets across processes ----------------------------------------------------
KEYS=$T/tickets.key
openssl rand -hex 80 >"$KEYS"
chmod 600 "$KEYS"
free_port PA; free_port PB; free_port PC
front() { # NAME PORT [global line]: two workers (tickets must not depend on which one)
	{
		global_section "$3" | sed 's/^workers = 1$/workers = 2/'
		printf '[route front]\nlisten = 127.0.0.1:%s\nprotocol = tcp\nclient_tls = implicit\nupstream = 127.0.0.1:%s\n' \
			"$2" "$ECHO"
	} >"$T/$1.conf"
	start_proxy "$T/$1.conf" "$1"
}
front A "$PA" "ticket_key_file = $KEYS"
PID_A=$PROXY
front B "$PB" "ticket_key_file = $KEYS"
PID_B=$PROXY
front C "$PC" ""

resume() { python3 "$TOOLS/tls_resume.py" --ca "$CERTS/ca.pem" "$@"; }
# reused_of OUT STEP: the "reused" of step STEP ("" when it failed); echo_ok OUT STEP.
reused_of() { grep "\"step\": $2," <<<"$1" | json_get reused; }
echo_ok() { [ "$(grep "\"step\": $2," <<<"$1" | json_get echo)" = true ]; }
expect_reused() { # NAME OUT STEP true|false
	if [ "$(reused_of "$2" "$3")" = "$4" ] && echo_ok "$2" "$3"; then
		pass "$1"
	else
		fail "$1" "want reused=$4: $(grep "\"step\": $3," <<<"$2")"
	fi
}

hups=0
for v in 1.2 1.3; do
	out=$(resume --version "$v" "connect:$PA:save=a" "connect:$PB:offer=a:save=b" \
		"connect:$PA:offer=b" "connect:$PC:save=c" "connect:$PC:offer=c" "connect:$PC:offer=a")
	expect_reused "tls${v}_first_handshake_full" "$out" 1 false
	expect_reused "tls${v}_other_replica_resumes" "$out" 2 true
	expect_reused "tls${v}_and_back" "$out" 3 true
	expect_reused "tls${v}_without_the_key_file_own_tickets_resume" "$out" 5 true
	expect_reused "tls${v}_without_the_key_file_no_resumption" "$out" 6 false

	# Rotation: a new first line on both hosts' file, B reloads first.
	hups=$((hups + 1))
	out=$(resume --version "$v" "connect:$PA:save=old" "prepend:$KEYS:$(openssl rand -hex 80)" \
		"hup:$PID_B:$T/B.log:$hups" "connect:$PB:offer=old:save=new" "connect:$PA:offer=new" \
		"hup:$PID_A:$T/A.log:$hups" "connect:$PA:offer=new")
	if grep -q '"step": 3, "reloaded": true' <<<"$out" && grep -q '"step": 6, "reloaded": true' <<<"$out"; then
		pass "tls${v}_rotation_reloads"
	else
		fail "tls${v}_rotation_reloads" "$out"
	fi
	expect_reused "tls${v}_old_key_still_decrypts" "$out" 4 true
	expect_reused "tls${v}_new_key_encrypts_unknown_to_stale_replica" "$out" 5 false
	expect_reused "tls${v}_new_key_after_reload" "$out" 7 true
done
[ "$(wc -l <"$KEYS")" -eq 3 ] && pass key_file_rotated_twice || fail key_file_rotated_twice "$(wc -l <"$KEYS") lines"

# --- upstream side ------------------------------------------------------------------------------
free_port P12; free_port P13; free_port PINJ; free_port PPICKY; free_port PTEST; free_port PRE
uconf=$T/up.conf
write_up() { # the name the reverify route checks
	{
		global_section
		cat <<EOF
[route up12]
listen = 127.0.0.1:$P12
protocol = tcp
upstream = 127.0.0.1:$(port_of up12)
upstream_tls = implicit
upstream_policy = verify
upstream_name = localhost

[route up13]
listen = 127.0.0.1:$P13
protocol = tcp
upstream = 127.0.0.1:$(port_of up13)
upstream_tls = implicit
upstream_policy = verify
upstream_name = localhost

[route inject]
listen = 127.0.0.1:$PINJ
protocol = smtp
upstream = 127.0.0.1:$(port_of fake)
upstream_tls = starttls
upstream_policy = verify
upstream_name = localhost

[route picky]
listen = 127.0.0.1:$PPICKY
protocol = tcp
upstream = 127.0.0.1:$(port_of picky)
upstream_tls = implicit
upstream_policy = verify
upstream_name = localhost

[route testing]
listen = 127.0.0.1:$PTEST
protocol = tcp
upstream = 127.0.0.1:$(port_of wrong)
upstream_tls = implicit
upstream_policy = verify
upstream_name = localhost
policy_mode = testing

[route reverify]
listen = 127.0.0.1:$PRE
protocol = tcp
upstream = 127.0.0.1:$(port_of good)
upstream_tls = implicit
upstream_policy = verify
upstream_name = $1
EOF
	} >"$uconf"
}
write_up localhost
start_proxy "$uconf" U

# echo_through PORT TAG: a plaintext client's line comes back through the route.
echo_through() {
	local got
	got=$(printf '%s\n' "$2" | timeout 10 socat -T 5 - "TCP:127.0.0.1:$1" 2>/dev/null)
	[ "$got" = "$2" ]
}
# reused_list FILE: the session_reused values of the server's connections, in order.
reused_list() {
	python3 -c 'import json,sys
print(" ".join(str(json.loads(l).get("session_reused")) for l in open(sys.argv[1]) if l.strip()))' "$1"
}
# wait_conns FILE N: the server has recorded N connections.
wait_conns() {
	local i=0
	while [ "$(grep -c . "$1" 2>/dev/null || echo 0)" -lt "$2" ]; do
		[ $i -ge 50 ] && return 1
		sleep 0.1
		i=$((i + 1))
	done
}

for v in 12 13; do
	ok=1
	for i in 1 2 3; do echo_through "$(eval echo "\$P$v")" "up$v-$i" || ok=0; done
	[ $ok = 1 ] && pass "up_tls1.${v#1}_relayed" || fail "up_tls1.${v#1}_relayed" "echo lost"
	wait_conns "$T/up$v.json" 3
	got=$(reused_list "$T/up$v.json")
	[ "$got" = "False True True" ] && pass "up_tls1.${v#1}_later_sessions_resume" ||
		fail "up_tls1.${v#1}_later_sessions_resume" "server saw reused: $got"
done
# While a session is open, later ones still resume: what a session keeps at the end of
# its handshake must not replace a resumable session with one that is not (TLS 1.3: the
# server's ticket comes after the handshake).
( printf 'held\n'; sleep 3 ) | timeout 10 socat -T 5 - "TCP:127.0.0.1:$P13" >/dev/null 2>&1 &
PIDS+=($!)
wait_conns "$T/up13.json" 3
wait_count 'route=up13 .*event=upstream_tls ' 4 5 "$T/U.log"
echo_through "$P13" up13-while-held || fail up13_while_held "echo lost"
wait_conns "$T/up13.json" 4
got=$(reused_list "$T/up13.json" | awk '{print $4}')
[ "$got" = True ] && pass up_tls1.3_resumes_while_another_session_is_open ||
	fail up_tls1.3_resumes_while_another_session_is_open "server saw reused: $(reused_list "$T/up13.json"); $(cut -c1-120 "$T/up13.json" | tail -n 2)"
expect_log up_resumed_logged 'route=up13 .*event=upstream_tls .*verify=resumed .*resumption=accepted' 5 "$T/U.log"

# SMTP inject: three legacy clients, one full handshake toward the upstream.
for i in 1 2 3; do
	make_message "$T/inj$i.eml" "inject-$i"
	r=$(smtp_send --connect "127.0.0.1:$PINJ" --file "$T/inj$i.eml" --from a@client.test --to b@example.test)
	[ "$(json_get ok <<<"$r")" = true ] || fail "inject_send_$i" "$r"
done
for i in 1 2 3; do delivered_exact "inject_delivered_$i" "$T/fake.store" "inject-$i" "$T/inj$i.eml"; done
got=$(grep -o 'tls established TLSv1.3 session=[a-z]*' "$T/fake.lines" | sed 's/.*=//' | tr '\n' ' ')
[ "$got" = "new reused reused " ] && pass inject_upstream_resumed ||
	fail inject_upstream_resumed "upstream saw: $got"

# A server that fails handshakes offering a session: a new connection, a full handshake.
ok=1
for i in 1 2 3; do echo_through "$PPICKY" "picky-$i" || ok=0; done
[ $ok = 1 ] && pass picky_every_client_relayed || fail picky_every_client_relayed "echo lost"
wait_conns "$T/picky.json" 5
got=$(python3 -c 'import json,sys
print(" ".join("refused" if "error" in json.loads(l) else str(json.loads(l)["session_reused"]) for l in open(sys.argv[1]) if l.strip()))' "$T/picky.json")
[ "$got" = "False refused False refused False" ] && pass picky_falls_back_to_full_handshake ||
	fail picky_falls_back_to_full_handshake "server saw: $got"
expect_log picky_logged 'route=picky .*event=upstream_tls resumption=failed .*action="reconnect for a full handshake"' 5 "$T/U.log"
log_never picky_no_policy_failure 'route=picky .*event=policy_failure' 'route=picky .*event=close ' 3 5 "$T/U.log"

# testing mode: the session goes on after a failed verification, but is never cached (a
# resumed session skips the check: caching it would turn the next failure into "ok").
for i in 1 2 3; do echo_through "$PTEST" "testing-$i" >/dev/null; done
wait_conns "$T/wrong.json" 3
got=$(reused_list "$T/wrong.json")
[ "$got" = "False False False" ] && pass failed_verification_never_resumed ||
	fail failed_verification_never_resumed "server saw reused: $got"
if [ "$(log_count 'route=testing .*event=policy_failure .*result=certificate-host-mismatch' "$T/U.log")" -eq 3 ]; then
	pass failed_verification_reported_every_time
else
	fail failed_verification_reported_every_time "$(log_count 'route=testing .*event=policy_failure' "$T/U.log") failures logged"
fi

# A reload that makes the policy stricter: the cached session is not offered.
echo_through "$PRE" re-1 && echo_through "$PRE" re-2 && pass reverify_relayed || fail reverify_relayed "echo lost"
wait_conns "$T/good.json" 2
write_up wrong.example
kill -HUP "${PROXY_PID[U]}"
wait_count 'event=reload result=ok' 1 5 "$T/U.log" || fail reverify_reload "no reload"
if echo_through "$PRE" re-3; then
	fail stricter_policy_blocks_after_reload "the line went through to a server named localhost"
else
	pass stricter_policy_blocks_after_reload
fi
wait_conns "$T/good.json" 3
got=$(reused_list "$T/good.json")
[ "$got" = "False True False" ] && pass stricter_policy_not_resumed ||
	fail stricter_policy_not_resumed "server saw reused: $got"
expect_log stricter_policy_verified 'route=reverify .*event=policy_failure .*result=certificate-host-mismatch' 5 "$T/U.log"

finish
