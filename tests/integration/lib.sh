# shellcheck shell=bash
# Sourced by every tests/integration/test_*.sh.
#
# Environment (set by tests/run.sh; defaults let a script run on its own from the repo):
#   STP_BIN         absolute path of the starttls-proxy binary   (default: ./starttls-proxy)
#   STP_TEST_CERTS  directory made by scripts/gen-test-certs.sh  (default: generated in $T)
#
# Output contract (read by tests/run.sh): one line per check, "PASS name",
# "FAIL name: why" or "SKIP name: why"; the script exits non-zero when any check failed.
#
# Everything a test starts is tracked and killed on exit, and the temp dir is removed,
# whether the test passes, fails, or is interrupted.

set -u
set -o pipefail

LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TOOLS=$LIB_DIR/tools
REPO_ROOT=$(cd "$LIB_DIR/../.." && pwd)
TEST_NAME=$(basename "$0" .sh)

STP_BIN=${STP_BIN:-$REPO_ROOT/starttls-proxy}
T=$(mktemp -d "${TMPDIR:-/tmp}/stp-$TEST_NAME.XXXXXX")
chmod 755 "$T"

N_PASS=0
N_FAIL=0
N_SKIP=0
PIDS=()            # every background process started by the test
PROXY_NAMES=()     # proxies started with start_proxy, by name
declare -A PROXY_PID=()
declare -A PROXY_STOPPED=()
USED_PORTS=" "
PROXY_LOG=$T/proxy.log
PROXY=""           # pid of the last proxy started

# --- reporting -------------------------------------------------------------------------

pass() { N_PASS=$((N_PASS + 1)); echo "PASS $1"; }
fail() {
	N_FAIL=$((N_FAIL + 1))
	# Keep the reason on one line.
	local why=${2:-failed}
	why=${why//$'\n'/ | }
	echo "FAIL $1: $why"
}
skip() { N_SKIP=$((N_SKIP + 1)); echo "SKIP $1: ${2:-skipped}"; }
note() { echo "  # $*"; }

# check NAME CMD...: PASS when CMD exits 0, else FAIL with the tail of its output.
check() {
	local name=$1 out rc
	shift
	out=$("$@" 2>&1)
	rc=$?
	if [ "$rc" -eq 0 ]; then
		pass "$name"
	else
		fail "$name" "exit $rc: $(printf '%s' "$out" | tail -n 3)"
	fi
	return "$rc"
}

# --- cleanup ---------------------------------------------------------------------------

show_proxy_logs() {
	local name log
	for name in "${PROXY_NAMES[@]}"; do
		log=$T/$name.log
		[ -f "$log" ] || continue
		echo "  --- last 40 lines of $name.log ($TEST_NAME) ---"
		tail -n 40 "$log" | sed 's/^/  | /'
	done
}

cleanup() {
	local rc=$? pid
	trap - EXIT INT TERM
	for pid in "${PIDS[@]}"; do
		kill -TERM "$pid" 2>/dev/null
	done
	for pid in "${PIDS[@]}"; do
		# Bounded: a process that ignores TERM for 2 s gets KILL.
		local i=0
		while kill -0 "$pid" 2>/dev/null && [ $i -lt 20 ]; do
			sleep 0.1
			i=$((i + 1))
		done
		kill -KILL "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
	done
	if [ "$N_FAIL" -gt 0 ] || [ "$rc" -ne 0 ]; then
		show_proxy_logs
	fi
	rm -rf "$T"
	if [ "$N_FAIL" -gt 0 ]; then
		exit 1
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'echo "FAIL $TEST_NAME: interrupted"; N_FAIL=$((N_FAIL + 1)); exit 130' INT TERM

# --- certificates ----------------------------------------------------------------------

if [ -z "${STP_TEST_CERTS:-}" ] || [ ! -f "${STP_TEST_CERTS}/ca.pem" ]; then
	STP_TEST_CERTS=$T/certs
	bash "$REPO_ROOT/scripts/gen-test-certs.sh" "$STP_TEST_CERTS" >/dev/null 2>&1 ||
		{ fail setup "scripts/gen-test-certs.sh failed"; exit 1; }
fi
CERTS=$STP_TEST_CERTS

# spki_sha256 CERT.pem: the pin format of upstream_fingerprint (hex of sha256 of the SPKI).
spki_sha256() {
	openssl x509 -in "$1" -pubkey -noout | openssl pkey -pubin -outform DER |
		sha256sum | cut -d' ' -f1
}

# --- ports and processes ---------------------------------------------------------------

# free_port: prints a loopback TCP port that is free now and not yet handed out by this test.
free_port() {
	local p
	while :; do
		p=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
		case $USED_PORTS in
		*" $p "*) continue ;;
		esac
		USED_PORTS="$USED_PORTS$p "
		echo "$p"
		return 0
	done
}

# free_ports N: N ports separated by spaces (in the current shell: USED_PORTS updated).
# Use as: read -r P1 P2 <<<"$(free_ports 2)" is NOT possible (subshell); call free_port.

# spawn NAME CMD...: runs CMD in the background, output to $T/NAME.log; sets LAST_PID.
spawn() {
	local name=$1
	shift
	"$@" >"$T/$name.log" 2>&1 &
	LAST_PID=$!
	PIDS+=("$LAST_PID")
}

# wait_file FILE [TIMEOUT]
wait_file() {
	local f=$1 t=${2:-10} i=0
	while [ ! -s "$f" ]; do
		[ $i -ge $((t * 10)) ] && return 1
		sleep 0.1
		i=$((i + 1))
	done
	return 0
}

# wait_port PORT [TIMEOUT]: until something accepts on 127.0.0.1:PORT.
wait_port() {
	local p=$1 t=${2:-10} i=0
	until python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$p),0.5).close()" 2>/dev/null; do
		[ $i -ge $((t * 5)) ] && return 1
		sleep 0.2
		i=$((i + 1))
	done
	return 0
}

# start_server NAME [server.py args]: starts tools/server.py, waits until it listens.
# The port: $(port_of NAME).
start_server() {
	local name=$1
	shift
	spawn "$name" python3 "$TOOLS/server.py" --ready "$T/$name.port" "$@"
	if ! wait_file "$T/$name.port" 10; then
		fail "start_server($name)" "not listening after 10s: $(tail -n 5 "$T/$name.log")"
		exit 1
	fi
}
port_of() { head -n 1 "$T/$1.port"; }

# client ARGS...: runs tools/client.py in the foreground, prints its JSON line.
client() { python3 "$TOOLS/client.py" "$@"; }

# relay_ok NAME PORT [client.py connection options]: a line sent through 127.0.0.1:PORT
# comes back (the upstream is an echo server). PASS/FAIL NAME.
relay_ok() {
	local name=$1 port=$2 out
	shift 2
	if out=$(client steps --connect "127.0.0.1:$port" "$@" "send:ping-$name" "expect:ping-$name"); then
		pass "$name"
	else
		fail "$name" "no relay: $(json_get failed_step <<<"$out"): $(json_get why <<<"$out")"
	fi
}

# relay_blocked NAME PORT [client.py connection options]: the proxy closes the connection
# (within 5 s) and not one byte comes back. PASS/FAIL NAME.
relay_blocked() {
	local name=$1 port=$2 out
	shift 2
	if out=$(client steps --connect "127.0.0.1:$port" "$@" "sendq:ping-$name" "closed:5"); then
		pass "$name"
	else
		fail "$name" "not blocked: $(json_get failed_step <<<"$out"): $(json_get why <<<"$out")"
	fi
}

# json_get KEY [FILE]: value of KEY in the last JSON line of FILE (or stdin).
json_get() {
	python3 -c '
import json, sys
lines = [l for l in open(sys.argv[2] if len(sys.argv) > 2 else 0) if l.strip()]
v = json.loads(lines[-1]).get(sys.argv[1]) if lines else None
print("" if v is None else (str(v).lower() if isinstance(v, bool) else v))' "$@"
}

# --- the proxy -------------------------------------------------------------------------

# global_section [EXTRA LINES...]: the [global] block used by most tests.
global_section() {
	cat <<EOF
[global]
log_level = debug
workers = 1
drain_timeout = 2s
cert = $CERTS/server.pem
key = $CERTS/server.key
ca = $CERTS/ca.pem
EOF
	local l
	for l in "$@"; do echo "$l"; done
	echo
}

# start_proxy CONF [NAME]: starts "$STP_BIN -c CONF" (log: $T/NAME.log) and waits up to
# 10 s for event=ready. Sets PROXY (pid) and PROXY_LOG. On failure: FAIL and exit.
start_proxy() {
	local conf=$1 name=${2:-proxy} i=0
	if [ ! -x "$STP_BIN" ]; then
		fail "start_proxy($name)" "binary not found: $STP_BIN"
		exit 1
	fi
	PROXY_NAMES+=("$name")
	spawn "$name" "$STP_BIN" -c "$conf"
	PROXY=$LAST_PID
	PROXY_LOG=$T/$name.log
	PROXY_PID[$name]=$PROXY
	while ! grep -q 'event=ready\|"event": *"ready"' "$PROXY_LOG" 2>/dev/null; do
		if ! kill -0 "$PROXY" 2>/dev/null; then
			wait "$PROXY" 2>/dev/null
			fail "start_proxy($name)" "exited with status $? before event=ready"
			exit 1
		fi
		if [ $i -ge 100 ]; then
			fail "start_proxy($name)" "no event=ready after 10s"
			exit 1
		fi
		sleep 0.1
		i=$((i + 1))
	done
}

# stop_proxy NAME [TIMEOUT]: SIGTERM, wait up to TIMEOUT (default 10) s. Sets STOP_STATUS to
# the exit status (or "timeout") and STOP_SECS to the time it took. Returns 0 on status 0.
# Not in a subshell: it must wait for its own child.
STOP_STATUS=""
STOP_SECS=""
stop_proxy() {
	local name=$1 t=${2:-10} pid i=0 t0
	pid=${PROXY_PID[$name]}
	PROXY_STOPPED[$name]=1
	t0=$(date +%s%N)
	kill -TERM "$pid" 2>/dev/null
	while kill -0 "$pid" 2>/dev/null; do
		if [ $i -ge $((t * 20)) ]; then
			STOP_STATUS=timeout
			STOP_SECS=$(elapsed_since "$t0")
			return 1
		fi
		sleep 0.05
		i=$((i + 1))
	done
	wait "$pid" 2>/dev/null
	STOP_STATUS=$?
	STOP_SECS=$(elapsed_since "$t0")
	[ "$STOP_STATUS" -eq 0 ]
}

# now_ns / elapsed_since NS: wall-clock timing in seconds with two decimals.
now_ns() { date +%s%N; }
elapsed_since() { awk -v a="$1" -v b="$(date +%s%N)" 'BEGIN { printf "%.2f", (b - a) / 1e9 }'; }

# wait_log PATTERN [TIMEOUT [LOG]]: until an extended regex matches a line of the log.
wait_log() {
	local pat=$1 t=${2:-5} log=${3:-$PROXY_LOG} i=0
	while ! grep -Eq -- "$pat" "$log" 2>/dev/null; do
		[ $i -ge $((t * 10)) ] && return 1
		sleep 0.1
		i=$((i + 1))
	done
	return 0
}

# log_count PATTERN [LOG]: number of matching lines.
log_count() { grep -Ec -- "$1" "${2:-$PROXY_LOG}" 2>/dev/null; }

# log_line PATTERN [LOG]: the last matching line.
log_line() { grep -E -- "$1" "${2:-$PROXY_LOG}" 2>/dev/null | tail -n 1; }

# expect_log NAME PATTERN [TIMEOUT]: PASS when the pattern shows up in the proxy log.
expect_log() {
	if wait_log "$2" "${3:-5}"; then
		pass "$1"
	else
		fail "$1" "no log line matching /$2/"
	fi
}

# rss_kb PID: resident set size in KiB.
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null; }

# is_sanitized: the binary was built with ASan (RSS limits and timings don't apply).
is_sanitized() { grep -aq '__asan_init' "$STP_BIN" 2>/dev/null; }

# finish: stops every running proxy with SIGTERM and checks that it exited 0 and that
# its log holds no sanitizer report; then the script ends (status from the checks).
finish() {
	local name log
	for name in "${PROXY_NAMES[@]}"; do
		log=$T/$name.log
		if [ -z "${PROXY_STOPPED[$name]:-}" ]; then
			if ! kill -0 "${PROXY_PID[$name]}" 2>/dev/null; then
				wait "${PROXY_PID[$name]}" 2>/dev/null
				fail "${name}_survived" "proxy exited during the test (status $?)"
			else
				if stop_proxy "$name" 10; then
					pass "${name}_clean_exit"
				else
					fail "${name}_clean_exit" "SIGTERM: exit status $STOP_STATUS"
				fi
			fi
		fi
		if grep -Eq 'ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:' "$log"; then
			fail "${name}_sanitizer" "$(grep -Em1 'ERROR: (Address|Leak)Sanitizer|runtime error:' "$log")"
		fi
	done
	exit 0
}
