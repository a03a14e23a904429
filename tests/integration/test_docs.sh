#!/usr/bin/env bash
# shellcheck disable=SC2016 # the backticks in single quotes are Markdown's, not the shell's
# The documentation matches the code and stands on its own (tools/doccheck.py does the
# comparing; every check is also run once on an altered copy, which it must reject):
# 1. every key the parser accepts (global_keys[], route_keys[] of src/config.c) has its own
#    entry in starttls-proxy.conf(5), section by section, and every documented key is one
#    the parser accepts, by the arrays and by the binary (-t never calls it unknown); the
#    example of every key shows them all; the EXAMPLES of the man page pass -t;
# 2. every event name passed to log_event() in src/*.c has its entry under LOG EVENTS in
#    starttls-proxy(8), and every entry there is emitted;
# 3. every metric family the running binary's /metrics has (after traffic that fills most
#    of them) is in docs/operations.md's table (type and labels) and in starttls-proxy(8)'s
#    METRICS section, and no document names a metric that does not exist;
# 4. README.md, docs/*.md and the man pages: link targets relative and present (anchors
#    too), no URL but to standards pages, no mention of DESIGN.md or ../shared; README links
#    every doc;
# 5. both man pages render without a warning (groff -ww, man -l, lexgrog);
# 6. every integration script has its row in tests/integration/README.md, and every fuzz
#    harness its rows in tests/fuzz/README.md (with ten million executions) and its name in
#    README.md.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

DC=$TOOLS/doccheck.py
MAN5=$REPO_ROOT/man/starttls-proxy.conf.5
MAN8=$REPO_ROOT/man/starttls-proxy.8
DOCS=("$REPO_ROOT/README.md" "$REPO_ROOT"/docs/*.md "$MAN8" "$MAN5")

# doccheck NAME ARGS...: PASS when the check finds nothing, else FAIL with its findings.
doccheck() {
	local name=$1
	shift
	check "$name" python3 "$DC" "$@"
}

# must_reject NAME PATTERN ARGS...: the check, run on an altered copy, must fail and name
# what was altered (PATTERN, a grep -E regex, in its output).
must_reject() {
	local name=$1 pat=$2 out rc
	shift 2
	out=$(python3 "$DC" "$@" 2>&1)
	rc=$?
	if [ "$rc" -ne 0 ] && grep -Eq -- "$pat" <<<"$out"; then
		pass "$name"
	else
		fail "$name" "the check did not reject the altered copy (exit $rc): $(tail -n 3 <<<"$out")"
	fi
}

mkdir -p "$T/alt"

# --- 1. configuration keys --------------------------------------------------------------
doccheck keys_match_parser keys
doccheck example_shows_every_key example-keys

# The binary's own view: no documented key is unknown to it. A key it does not know gets
# "unknown key" (the control below proves -t says so).
python3 "$DC" man-keys >"$T/man-keys" 2>"$T/man-keys.err"
check man_keys_listed sh -c "[ \$(wc -l <'$T/man-keys') -ge 40 ] && [ ! -s '$T/man-keys.err' ]"
key_conf() { # KIND KEY: a configuration with KEY in that section (value "x")
	local route="listen = 127.0.0.1:1
protocol = tcp
upstream = 127.0.0.1:2"
	if [ "$1" = global ]; then
		printf '[global]\n%s = x\n\n[route r]\n%s\n' "$2" "$route"
	else
		# the route's own keys are there already; any other gets added
		grep -q "^$2 =" <<<"$route" || route="$route
$2 = x"
		printf '[route r]\n%s\n' "$route"
	fi
}
unknown=""
n=0
while read -r kind key; do
	key_conf "$kind" "$key" >"$T/key.conf"
	if "$STP_BIN" -t -c "$T/key.conf" 2>&1 | grep -Eq "unknown key \"$key\"|key \"$key\" belongs in"; then
		unknown+=" $kind:$key"
	fi
	n=$((n + 1))
done <"$T/man-keys"
if [ -z "$unknown" ] && [ "$n" -ge 40 ]; then
	pass binary_accepts_documented_keys
else
	fail binary_accepts_documented_keys "documented, refused as unknown by -t:${unknown:- (only $n keys tried)}"
fi
key_conf route no_such_key_documented >"$T/key.conf"
check binary_refuses_unknown_key sh -c "'$STP_BIN' -t -c '$T/key.conf' 2>&1 | grep -q 'unknown key \"no_such_key_documented\"'"

# The configurations under EXAMPLES pass -t (file names pointed at the test's own files).
awk '/^\.SH EXAMPLES/ { on = 1; next } /^\.SH/ { on = 0 } on && /^\.nf/ { b++; nf = 1; next }
	/^\.fi/ { nf = 0; next } on && nf { f = sprintf("%s/ex%02d", dir, b); print > f }' \
	dir="$T" "$MAN5"
n_conf=0
for f in "$T"/ex[0-9][0-9]; do
	[ -f "$f" ] || continue
	sed -e 's/\\-/-/g' -e 's/^  //' "$f" >"$f.txt"
	if grep -q '^\[route ' "$f.txt"; then
		n_conf=$((n_conf + 1))
	elif grep -Eq '^\S+\s+(none|may|encrypt|fingerprint|verify|mta-sts|dane|auto)(\s|$)' "$f.txt"; then
		cp "$f.txt" "$T/example.table"
	fi
done
mkdir -p "$T/state"
ex_ok=0 ex_bad=""
for f in "$T"/ex[0-9][0-9].txt; do
	grep -q '^\[route ' "$f" || continue
	sed -E -e "s|^(cert *= *).*|\1$CERTS/server.pem|" -e "s|^(key *= *).*|\1$CERTS/server.key|" \
		-e "s|^(policy_table *= *).*|\1$T/example.table|" \
		-e "s|^(mta_sts_cache *= *).*|\1$T/state|" "$f" >"$f.conf"
	if "$STP_BIN" -t -c "$f.conf" >"$f.out" 2>&1 && grep -qx 'configuration OK' "$f.out"; then
		ex_ok=$((ex_ok + 1))
	else
		ex_bad+=" ${f##*/}: $(grep -v 'configuration OK' "$f.out" | head -n 2)"
	fi
done
if [ "$n_conf" -ge 3 ] && [ "$ex_ok" -eq "$n_conf" ] && [ -s "$T/example.table" ]; then
	pass man5_examples_pass_check
else
	[ -s "$T/example.table" ] || ex_bad+=" (no example policy table found)"
	fail man5_examples_pass_check "$ex_ok of $n_conf example configurations pass -t:$ex_bad"
fi

# The key checks can fail: an entry removed, an entry the parser does not know.
# drop_entry NAME FILE: FILE without the entry line of NAME (its text joins the entry before)
drop_entry() { sed '$!N;/^\.TP\n\.B '"$1"'$/d;P;D' "$2"; }
drop_entry detect_timeout "$MAN5" >"$T/alt/no-entry.5"
must_reject keys_check_finds_missing_entry '"detect_timeout".*no entry' keys --man "$T/alt/no-entry.5"
sed '/^\.SH ROUTE KEYS/a .TP\n.B no_such_key\nnot a key.' "$MAN5" >"$T/alt/extra-entry.5"
must_reject keys_check_finds_unknown_entry '"no_such_key" is documented' keys --man "$T/alt/extra-entry.5"
sed '/^drain_grace /d' "$REPO_ROOT/etc/starttls-proxy.conf" >"$T/alt/example.conf"
must_reject example_check_finds_missing_key 'no "drain_grace = ' example-keys --example "$T/alt/example.conf"

# --- 2. log events -----------------------------------------------------------------------
doccheck events_documented events
drop_entry starttls_injection "$MAN8" >"$T/alt/no-event.8"
must_reject events_check_finds_missing_entry '"starttls_injection".*no entry' events --man "$T/alt/no-event.8"
mkdir -p "$T/alt/src"
cp "$REPO_ROOT"/src/*.c "$T/alt/src/"
cat >"$T/alt/src/zz_new.c" <<'EOF'
void f(void) { log_event(LOG_INFO, NULL, NULL, "zz_undocumented", "k", "v", NULL); }
void g(const char *e) { log_event(LOG_INFO, NULL, NULL, e, NULL); }
EOF
must_reject events_check_finds_new_event '"zz_undocumented"' events --src "$T/alt/src"
must_reject events_check_finds_variable_event 'non-literal event name \(e\)' events --src "$T/alt/src"

# --- 3. metrics -------------------------------------------------------------------------
# Traffic that fills most families: a plain client through "out" (TLS toward "in"), "in"
# (TLS from clients, plain to the echo server); "bad" toward a self-signed server (a policy
# failure); "deny" (a client refused by client_allow).
start_server echo --mode echo
start_server selfsigned --mode echo --cert "$CERTS/selfsigned.pem" --key "$CERTS/selfsigned.key"
wait_servers
free_port PADM; free_port PIN; free_port POUT; free_port PBAD; free_port PDENY
cat >"$T/metrics.conf" <<EOF
$(global_section "admin_listen = 127.0.0.1:$PADM")
[route in]
listen = 127.0.0.1:$PIN
protocol = tcp
client_tls = implicit
upstream = 127.0.0.1:$(port_of echo)

[route out]
listen = 127.0.0.1:$POUT
protocol = tcp
upstream = 127.0.0.1:$PIN
upstream_tls = implicit
upstream_name = localhost

[route bad]
listen = 127.0.0.1:$PBAD
protocol = tcp
upstream = 127.0.0.1:$(port_of selfsigned)
upstream_tls = implicit
upstream_name = localhost

[route deny]
listen = 127.0.0.1:$PDENY
protocol = tcp
client_allow = 192.0.2.0/24
upstream = 127.0.0.1:$(port_of echo)
EOF
start_proxy "$T/metrics.conf"
relay_ok relay_through_out_and_in "$POUT"
relay_blocked blocked_by_policy "$PBAD"
relay_blocked blocked_by_client_allow "$PDENY"
wait_count 'event=close' 3 5
curl -sf "http://127.0.0.1:$PADM/metrics" >"$T/metrics.txt"
check metrics_fetched grep -q '^starttls_proxy_policy_failures_total{route="bad"' "$T/metrics.txt"
doccheck metrics_documented metrics --metrics "$T/metrics.txt" --docs "${DOCS[@]}" \
	"$REPO_ROOT/etc/starttls-proxy.conf"
# ... and those checks can fail: a table row gone, a man entry gone, a label gone, a
# metric name that does not exist.
grep -v '^| `starttls_proxy_messages_total`' "$REPO_ROOT/docs/operations.md" >"$T/alt/ops-row.md"
must_reject metrics_check_finds_missing_row 'messages_total, the metrics table has no row' \
	metrics --metrics "$T/metrics.txt" --ops "$T/alt/ops-row.md"
drop_entry starttls_proxy_upstream_connect_seconds "$MAN8" >"$T/alt/no-metric.8"
must_reject metrics_check_finds_missing_man_entry 'upstream_connect_seconds, the METRICS section has no entry' \
	metrics --metrics "$T/metrics.txt" --man "$T/alt/no-metric.8"
sed 's/^\(| `starttls_proxy_bytes_total` | counter | `route`\), `direction`/\1/' \
	"$REPO_ROOT/docs/operations.md" >"$T/alt/ops-label.md"
must_reject metrics_check_finds_missing_label 'bytes_total does not name its label `direction`' \
	metrics --metrics "$T/metrics.txt" --ops "$T/alt/ops-label.md"
printf 'Alert on `starttls_proxy_tls_failures_total`.\n' >"$T/alt/stale.md"
must_reject metrics_check_finds_stale_name 'starttls_proxy_tls_failures_total is no metric' \
	metrics --metrics "$T/metrics.txt" --docs "$T/alt/stale.md"

# --- 4. links ---------------------------------------------------------------------------
doccheck links_relative_and_present links "${DOCS[@]}"
doccheck readme_links_every_doc readme
for bad in '[the contract](../../shared/DESIGN.md)' '[gone](docs/no-such-file.md)' \
	'[elsewhere](https://example.com/starttls)' '[anchor](docs/operations.md#no-such-heading)' \
	'see https://github.com/example/starttls-proxy' 'as DESIGN.md says'; do
	{ cat "$REPO_ROOT/README.md"; printf '\n%s\n' "$bad"; } >"$T/alt/README.md"
	case $bad in
	*shared*) pat='leaves the repository|DESIGN|outside the repository' ;;
	*no-such-file*) pat='no such file' ;;
	*example.com*) pat='must be relative' ;;
	*no-such-heading*) pat='no heading for #no-such-heading' ;;
	*github*) pat='URL https://github.com' ;;
	*) pat='mentions DESIGN.md' ;;
	esac
	must_reject "links_check_rejects: $bad" "$pat" links "$T/alt/README.md=$REPO_ROOT/README.md"
done
sed 's|^\.BR starttls-proxy.conf (5);$|.BR starttls-proxy.conf (5); docs/gone.md|' "$MAN8" >"$T/alt/path.8"
must_reject links_check_rejects_missing_path_in_man 'names docs/gone.md' links "$T/alt/path.8=$MAN8"
grep -v 'docs/operations.md' "$REPO_ROOT/README.md" >"$T/alt/README-nolink.md"
must_reject readme_check_finds_missing_link 'does not link docs/operations.md' readme --readme "$T/alt/README-nolink.md"

# --- 5. the man pages render cleanly ------------------------------------------------------
render_clean() { # FILE: no warning from groff -ww, man or lexgrog
	local f=$1 err
	command -v groff >/dev/null || { echo "groff missing (make deps installs groff-base)"; return 1; }
	err=$(groff -man -Tutf8 -ww "$f" 2>&1 >/dev/null) || { echo "groff failed: $err"; return 1; }
	[ -z "$err" ] || { echo "groff: $err"; return 1; }
	command -v man >/dev/null || { echo "man missing (make deps installs man-db)"; return 1; }
	err=$(MANWIDTH=80 man --warnings -l "$f" 2>&1 >/dev/null) || { echo "man -l failed: $err"; return 1; }
	[ -z "$err" ] || { echo "man -l: $err"; return 1; }
	if command -v lexgrog >/dev/null; then
		lexgrog "$f" >/dev/null 2>&1 || { echo "lexgrog cannot read its NAME section"; return 1; }
	fi
	return 0
}
check man8_renders_cleanly render_clean "$MAN8"
check man5_renders_cleanly render_clean "$MAN5"
sed 's/^\.SH EXAMPLES$/.SH EXAMPLES\n.XX not a macro\n\\fBunclosed/' "$MAN8" >"$T/alt/broken.8"
if out=$(render_clean "$T/alt/broken.8"); then
	fail render_check_finds_warning "a page with an undefined macro rendered clean"
else
	pass render_check_finds_warning
	note "broken page: $out"
fi


# Every integration script has its row in tests/integration/README.md (and every row names
# a script that exists).
tests_listed() {
	local t b bad=0 readme=$1 dir=$2
	for t in "$dir"/test_*.sh; do
		b=${t##*/}
		grep -q "^| \`$b\` |" "$readme" || { echo "$b: no row in $readme"; bad=1; }
	done
	for b in $(sed -n 's/^| `\(test_[a-z0-9_]*\.sh\)` |.*/\1/p' "$readme"); do
		[ -f "$dir/$b" ] || { echo "$b: listed, but no such script"; bad=1; }
	done
	return $bad
}
check integration_readme_lists_every_script tests_listed "$LIB_DIR/README.md" "$LIB_DIR"
mkdir -p "$T/fake-tests"
cp "$LIB_DIR"/test_*.sh "$T/fake-tests/"
touch "$T/fake-tests/test_unlisted_new.sh"
if tests_listed "$LIB_DIR/README.md" "$T/fake-tests" >/dev/null; then
	fail integration_readme_check_rejects_unlisted "a script without a row passed"
else
	pass integration_readme_check_rejects_unlisted
fi

# Every fuzz harness (tests/fuzz/fuzz_*.c) has its row in tests/fuzz/README.md's table of
# harnesses and in its table of ten-million runs with 10,000,000 executions or more, and
# README.md names it: a harness added without a long run, or a run below the goal, fails.
fuzz_listed() {
	local f n w total bad=0 fz=$1 dir=$2 readme=$3 row
	for f in "$dir"/fuzz_*.c; do
		n=${f##*/}
		n=${n%.c}
		grep -q "^| \`$n.c\` |" "$fz" || { echo "$n: no row in the harness table of $fz"; bad=1; }
		row=$(sed -n '/^### Ten million executions/,$p' "$fz" | grep -m1 "^| \`$n\`")
		if [ -z "$row" ]; then
			echo "$n: no row in the ten-million table of $fz"
			bad=1
		else
			# the executions column: "N" or "N + N + ...", commas as thousands separators
			total=$(awk -F'|' '{ c = $3; gsub(/[ ,]/, "", c); n = split(c, eq, "=")
				k = split(eq[1], a, "+"); s = 0
				for (i = 1; i <= k; i++) if (a[i] ~ /^[0-9]+$/) s += a[i]; else { print "unreadable"; exit }
				if (n == 2 && eq[2] + 0 != s) { print "unreadable"; exit } print s }' <<<"$row")
			[ "$total" -ge 10000000 ] 2>/dev/null ||
				{ echo "$n: $total executions in the ten-million table (needs 10,000,000 or more, its parts adding up to its total)"; bad=1; }
		fi
		case ${n#fuzz_} in
		proto_smtp) w='SMTP/LMTP' ;; imap_session) w='IMAP and POP3 sessions' ;;
		proto_pop3) w='POP3 sessions' ;; proto_imap) w='IMAP reader' ;; ehlo) w='EHLO rewriter' ;;
		config) w='configuration' ;; policy) w='policy table' ;; ticket_keys) w='ticket key' ;;
		mtasts) w='MTA-STS' ;; dns) w='DNS' ;; fetch) w='HTTP response' ;; tlsrpt) w='TLSRPT' ;;
		rcpt) w='recipient-domain' ;; proxyproto) w='PROXY protocol' ;;
		admin) w='admin request' ;; probe) w='`--probe` reply' ;;
		*) echo "$n: the check knows no name for it in README.md"; bad=1; continue ;;
		esac
		sed -n '/^- Fuzzing:/,/^- [A-Z]/p' "$readme" | tr '\n' ' ' | tr -s ' ' | grep -qF -- "$w" ||
			{ echo "$n: README.md's Fuzzing entry does not name it ($w)"; bad=1; }
	done
	return $bad
}
check fuzz_harnesses_documented fuzz_listed "$REPO_ROOT/tests/fuzz/README.md" "$REPO_ROOT/tests/fuzz" "$REPO_ROOT/README.md"
mkdir -p "$T/fake-fuzz"
cp "$REPO_ROOT"/tests/fuzz/fuzz_*.c "$T/fake-fuzz/"
touch "$T/fake-fuzz/fuzz_unlisted_new.c"
if out=$(fuzz_listed "$REPO_ROOT/tests/fuzz/README.md" "$T/fake-fuzz" "$REPO_ROOT/README.md") ||
	! grep -q 'fuzz_unlisted_new: no row in the ten-million table' <<<"$out"; then
	fail fuzz_check_rejects_unlisted "a harness without rows passed: $out"
else
	pass fuzz_check_rejects_unlisted
fi
sed 's/^| `fuzz_dns` | 10,000,000 |/| `fuzz_dns` | 9,999,999 |/' "$REPO_ROOT/tests/fuzz/README.md" >"$T/alt/fuzz-short.md"
if out=$(fuzz_listed "$T/alt/fuzz-short.md" "$REPO_ROOT/tests/fuzz" "$REPO_ROOT/README.md") ||
	! grep -q 'fuzz_dns: 9999999 executions in the ten-million table' <<<"$out"; then
	fail fuzz_check_rejects_short_run "a run below ten million passed: $out"
else
	pass fuzz_check_rejects_short_run
fi
grep -v 'request and `--probe` reply parsers' "$REPO_ROOT/README.md" >"$T/alt/README-nofuzz.md"
if out=$(fuzz_listed "$REPO_ROOT/tests/fuzz/README.md" "$REPO_ROOT/tests/fuzz" "$T/alt/README-nofuzz.md") ||
	! grep -q 'fuzz_probe: README.md' <<<"$out"; then
	fail fuzz_check_rejects_unnamed "a harness README.md does not name passed: $out"
else
	pass fuzz_check_rejects_unnamed
fi

# A doc's links never climb out of its folder ("](../"): a reader of docs/ on a forge or
# in an installed doc directory has no parent to climb to; files elsewhere are named.
if grep -n '](\.\./' "$REPO_ROOT/README.md" "$REPO_ROOT"/docs/*.md; then
	fail docs_links_stay_below "links with ../ (above)"
else
	pass docs_links_stay_below
fi
finish
