#!/usr/bin/env bash
# The policy table on a route (not transparent) and upstream host names resolved by
# sessions:
# - `-t` reports a table's errors at the table's FILE:LINE, and refuses a verify row with no
#   name to verify on a transparent route;
# - `-t` with an upstream host name that does not resolve warns and still says OK;
# - a host name resolves when a session connects: every address is tried in turn, and
#   when the name's address changes, new sessions follow it without a reload;
# - table rows per destination (host name row, address row), logged with their line;
# - SIGHUP with a broken table keeps the running configuration; a fixed one applies.
# The proxy and the servers run in a network namespace of the test's own, whose /etc/hosts
# (ip netns exec mounts /etc/netns/NAME/hosts) names relay.test.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/smtp_lib.sh
. "$(dirname "$0")/smtp_lib.sh"

# --- -t ----------------------------------------------------------------------------------------
free_port LP
cat >"$T/bad.table" <<'EOF'
# a comment
* may
10.0.0.0/8:99999 may
mx.example strict
EOF
cat >"$T/bad.conf" <<EOF
$(global_section)
[route r]
listen = 127.0.0.1:$LP
protocol = smtp
upstream = 127.0.0.1:25
upstream_tls = starttls
upstream_policy = may
policy_table = $T/bad.table
EOF
"$STP_BIN" -t -c "$T/bad.conf" >"$T/bad.out" 2>&1
rc=$?
if [ "$rc" = 1 ] && grep -q "^$T/bad.table:3: invalid port" "$T/bad.out" &&
	grep -q "^$T/bad.table:4: invalid level \"strict\"" "$T/bad.out"; then
	pass check_table_errors_at_table_lines
else
	fail check_table_errors_at_table_lines "rc $rc: $(cat "$T/bad.out")"
fi
printf '10.0.0.0/8 verify\n* may\n' >"$T/noname.table"
cat >"$T/noname.conf" <<EOF
$(global_section)
[route r]
listen = 127.0.0.1:$LP
protocol = smtp
upstream = original-destination
upstream_tls = starttls
upstream_policy = may
policy_table = $T/noname.table
EOF
"$STP_BIN" -t -c "$T/noname.conf" >"$T/noname.out" 2>&1
rc=$?
if [ "$rc" = 1 ] && grep -q "^$T/noname.table:1: verify needs names=" "$T/noname.out"; then
	pass check_verify_row_without_name_refused
else
	fail check_verify_row_without_name_refused "rc $rc: $(cat "$T/noname.out")"
fi
cat >"$T/dns.conf" <<EOF
$(global_section)
[route r]
listen = 127.0.0.1:$LP
protocol = smtp
upstream = no-such-host.invalid:25
upstream_tls = starttls
upstream_policy = may
EOF
"$STP_BIN" -t -c "$T/dns.conf" >"$T/dns.out" 2>&1
rc=$?
if [ "$rc" = 0 ] && grep -q '^configuration OK$' "$T/dns.out" &&
	grep -q "^$T/dns.conf:[0-9]*: warning: upstream host \"no-such-host.invalid\" does not resolve now" "$T/dns.out"; then
	pass check_unresolvable_upstream_warns
else
	fail check_unresolvable_upstream_warns "rc $rc: $(cat "$T/dns.out")"
fi

# --- the namespace ----------------------------------------------------------------------------
NS=stp-dns-$$
# hosts ADDR...: the namespace's /etc/hosts for relay.test, rewritten in place (processes
# in the namespace see the file they were started with, bind-mounted: the same inode).
hosts() {
	mkdir -p "/etc/netns/$NS"
	local a text="127.0.0.1 localhost"$'\n'
	for a in "$@"; do text+="$a relay.test"$'\n'; done
	printf '%s' "$text" >"/etc/netns/$NS/hosts"
}
policy_cleanup() {
	local rc=$?
	disown -a 2>/dev/null
	ip netns pids "$NS" 2>/dev/null | xargs -r kill -KILL 2>/dev/null
	ip netns del "$NS" 2>/dev/null
	rm -rf "/etc/netns/$NS"
	(exit "$rc")
	smtp_cleanup
}
trap policy_cleanup EXIT
hosts 127.0.0.2 127.0.0.3 # nobody answers on .2
if ! ip netns add "$NS" || ! ip netns exec "$NS" ip link set lo up; then
	fail setup_namespace "cannot make a network namespace"
	finish
fi
SRV=(--cert "$CERTS/server.pem" --key "$CERTS/server.key")
fake() {
	local name=$1 listen=$2
	shift 2
	spawn "$name" ip netns exec "$NS" "$SMTP_PY" "$TOOLS/smtp_fake.py" --listen "$listen" \
		--ready "$T/$name.port" --lines "$T/$name.lines" "$@"
	wait_file "$T/$name.port" 10 || { fail "fake($name)" "$(tail -n 3 "$T/$name.log")"; finish; }
}
fake relay3 127.0.0.3:2525 "${SRV[@]}"
fake relay4 127.0.0.4:2525 "${SRV[@]}"
fake other 127.0.0.5:2525 --starttls none

cat >"$T/good.table" <<'EOF'
# per destination
relay.test:2525       verify   names=localhost
127.0.0.5:2525        may
*                     encrypt
EOF
cp "$T/good.table" "$T/live.table"
cat >"$T/live.conf" <<EOF
$(global_section "helo_name = proxy.dns.test")
[route relay]
listen = 127.0.0.1:2600
protocol = smtp
upstream = relay.test:2525
upstream_tls = starttls
upstream_policy = encrypt
policy_table = $T/live.table

[route other]
listen = 127.0.0.1:2601
protocol = smtp
upstream = 127.0.0.5:2525
upstream_tls = starttls
upstream_policy = encrypt
policy_table = $T/live.table
EOF
PROXY_PREFIX=(ip netns exec "$NS")
start_proxy "$T/live.conf"

# session PORT TAG: one EHLO/QUIT session from inside the namespace; transcript in $T/TAG.
session() {
	ip netns exec "$NS" "$SMTP_PY" "$TOOLS/smtp_dialog.py" --connect "127.0.0.1:$1" \
		expect:220 cmd:250:"EHLO app.test" cmd:221:QUIT >"$T/$2" 2>&1
}
if session 2600 s1; then pass relay_session_ok; else fail relay_session_ok "$(tail -c 300 "$T/s1")"; fi
expect_log first_address_refused_then_next 'route=relay .*event=upstream_connect_failed upstream=127\.0\.0\.2:2525 .*action="next address"'
expect_log second_address_by_table_line_2 'route=relay .*event=policy upstream=127\.0\.0\.3:2525 policy=verify .*name=localhost source=table:2'
expect_log verified_on_second_address 'route=relay .*event=upstream_tls .*verify=ok policy=verify'
if lines_have relay3 '^plain: EHLO proxy\.dns\.test'; then pass relay3_got_the_session; else fail relay3_got_the_session "$(tail -n 3 "$T/relay3.lines" 2>&1)"; fi
if session 2601 s2; then pass address_row_may; else fail address_row_may "$(tail -c 300 "$T/s2")"; fi
expect_log address_row_logged 'route=other .*event=policy upstream=127\.0\.0\.5:2525 policy=may .*source=table:3'

# The name moves to .4: once the short cache (5 s) has expired, new sessions go there.
hosts 127.0.0.4
moved=0
for _ in $(seq 20); do
	session 2600 s3 >/dev/null 2>&1
	if lines_have relay4 '^plain: EHLO proxy\.dns\.test'; then
		moved=1
		break
	fi
	sleep 0.5
done
[ $moved = 1 ] && pass renamed_relay_followed_without_reload ||
	fail renamed_relay_followed_without_reload "relay4 never got a session: $(log_line 'route=relay .*event=policy')"

# SIGHUP with a broken table: refused at its line, the running one stays.
printf '* strict\n' >"$T/live.table"
kill -HUP "$PROXY"
if wait_log "event=reload result=failed error=\"$T/live.table:1: invalid level" 5; then
	pass reload_broken_table_refused
else
	fail reload_broken_table_refused "$(log_line 'event=reload')"
fi
n=$(log_count 'route=other .*event=policy .*source=table:3')
if session 2601 s4 && wait_count 'route=other .*event=policy .*source=table:3' $((n + 1)) 5; then
	pass old_table_still_applies
else
	fail old_table_still_applies "$(log_line 'route=other .*event=policy')"
fi
# A fixed table applies to new sessions.
printf '127.0.0.5:2525 none\n* encrypt\n' >"$T/live.table"
kill -HUP "$PROXY"
if wait_log 'event=reload result=ok' 5 && session 2601 s5 &&
	wait_log 'route=other .*event=policy upstream=127\.0\.0\.5:2525 policy=none .*source=table:1' 5; then
	pass reload_new_table_applies
else
	fail reload_new_table_applies "$(log_line 'route=other .*event=policy')"
fi
finish
