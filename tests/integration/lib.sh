# shellcheck shell=bash
# Sourced by every tests/integration/test_*.sh.
#
# Environment (set by tests/run.sh; defaults let a script run on its own from the repo):
#   STP_BIN         absolute path of the starttls-proxy binary   (default: ./starttls-proxy)
#   STP_TEST_CERTS  directory made by scripts/gen-test-certs.sh  (default: generated in $T)
#   STP_LOG_TAIL    lines of each proxy log shown when a check failed (default 40)
#
# Output contract (read by tests/run.sh): one line per check, "PASS name",
# "FAIL name: why" or "SKIP name: why"; the script exits non-zero when any check failed.
# A script that prints none of them counts as failed.
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

# Every process the test starts inherits this tag, so cleanup can find stragglers (say, the
# python child of a killed subshell) by their own environment, never by name.
export STP_LIB_TAG="stp-lib-$$-$RANDOM$RANDOM"

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
		echo "  --- last ${STP_LOG_TAIL:-40} lines of $name.log ($TEST_NAME) ---"
		tail -n "${STP_LOG_TAIL:-40}" "$log" | sed 's/^/  | /'
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
	local f
	# shellcheck disable=SC2013 # /proc paths have no spaces
	for f in $(grep -lzx "STP_LIB_TAG=$STP_LIB_TAG" /proc/[0-9]*/environ 2>/dev/null); do
		pid=${f#/proc/}
		pid=${pid%/environ}
		[ "$pid" = "$$" ] || kill -KILL "$pid" 2>/dev/null
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

# free_port VAR: sets VAR to a loopback TCP port that is free now and not yet handed out by
# this test. Ports come from a pool filled 16 at a time by one python3 call (starting
# python is slow on some machines), so call it directly, not in $(...).
# free_port (no argument) prints a port instead (usable as $(free_port), but then the
# test-wide bookkeeping cannot see it).
PORT_POOL=()
free_port() {
	local _fp
	if [ $# -eq 0 ]; then
		python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
		return
	fi
	while :; do
		if [ "${#PORT_POOL[@]}" -eq 0 ]; then
			mapfile -t PORT_POOL < <(python3 -c '
import socket
socks = []
for _ in range(16):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
for s in socks:
    print(s.getsockname()[1])')
			[ "${#PORT_POOL[@]}" -gt 0 ] || { fail free_port "python3 could not bind"; exit 1; }
		fi
		_fp=${PORT_POOL[0]}
		PORT_POOL=("${PORT_POOL[@]:1}")
		case $USED_PORTS in
		*" $_fp "*) continue ;;
		esac
		USED_PORTS="$USED_PORTS$_fp "
		printf -v "$1" '%s' "$_fp"
		return 0
	done
}

# free_port_any VAR: like free_port, for a listener on the wildcard address ([::] serving
# IPv4 too): the port is one the kernel gives a dual-stack socket bound to [::]:0, so that it
# is free on every address (a port free on 127.0.0.1 may still be the local port of some
# other connection, which a wildcard bind collides with).
free_port_any() {
	local _fp
	while :; do
		_fp=$(/usr/bin/python3 -c '
import socket
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", 0))
print(s.getsockname()[1])') || { fail free_port_any "python3 could not bind [::]:0"; exit 1; }
		case $USED_PORTS in
		*" $_fp "*) continue ;;
		esac
		USED_PORTS="$USED_PORTS$_fp "
		printf -v "$1" '%s' "$_fp"
		return 0
	done
}

# spawn NAME CMD...: runs CMD in the background, output to $T/NAME.log; sets LAST_PID.
spawn() {
	local name=$1
	shift
	"$@" >"$T/$name.log" 2>&1 &
	LAST_PID=$!
	PIDS+=("$LAST_PID")
}

# wait_file FILE [TIMEOUT]: until FILE exists (the tools create their files atomically).
wait_file() {
	local f=$1 t=${2:-10} i=0
	while [ ! -e "$f" ]; do
		[ $i -ge $((t * 10)) ] && return 1
		sleep 0.1
		i=$((i + 1))
	done
	return 0
}

# wait_refused PORT [TIMEOUT]: until a connect to 127.0.0.1:PORT is refused (nothing
# listens there any more); status 1 if connects still succeed after TIMEOUT (10) s.
wait_refused() {
	local p=$1 t=${2:-10} i=0
	while (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do
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

# start_server NAME [server.py args]: starts tools/server.py in the background; it writes
# its port to $T/NAME.port once listening. wait_servers waits for all of them; the port is
# $(port_of NAME).
PENDING_SERVERS=()
start_server() {
	local name=$1
	shift
	spawn "$name" python3 "$TOOLS/server.py" --ready "$T/$name.port" "$@"
	PENDING_SERVERS+=("$name")
}
wait_servers() {
	local name
	for name in "${PENDING_SERVERS[@]}"; do
		if ! wait_file "$T/$name.port" 15; then
			fail "start_server($name)" "not listening after 15s: $(tail -n 5 "$T/$name.log")"
			exit 1
		fi
	done
	PENDING_SERVERS=()
}
port_of() { wait_file "$T/$1.port" 15 && head -n 1 "$T/$1.port"; }

# client ARGS...: runs tools/client.py in the foreground, prints its JSON line.
client() { python3 "$TOOLS/client.py" "$@"; }

# client_bg ID ARGS...: runs tools/client.py ARGS in the background (at most 8 at a time);
# client_wait ID waits for it, sets CLIENT_OUT to its JSON line and returns its status.
CLIENTS_RUNNING=()
client_bg() {
	local id=$1 pid live
	shift
	while :; do
		live=()
		for pid in "${CLIENTS_RUNNING[@]}"; do
			kill -0 "$pid" 2>/dev/null && live+=("$pid")
		done
		CLIENTS_RUNNING=("${live[@]}")
		[ "${#CLIENTS_RUNNING[@]}" -lt 8 ] && break
		sleep 0.05
	done
	rm -f "$T/client_$id.rc"
	(
		python3 "$TOOLS/client.py" "$@" >"$T/client_$id.out" 2>&1
		echo $? >"$T/client_$id.rc"
	) >/dev/null 2>&1 &
	PIDS+=("$!")
	CLIENTS_RUNNING+=("$!")
}
client_wait() {
	local id=$1 i=0
	while [ ! -s "$T/client_$id.rc" ]; do
		if [ $i -ge 1200 ]; then
			CLIENT_OUT='{"why": "client did not finish within 60s"}'
			return 99
		fi
		sleep 0.05
		i=$((i + 1))
	done
	CLIENT_OUT=$(tail -n 1 "$T/client_$id.out")
	return "$(cat "$T/client_$id.rc")"
}

# relay_start NAME ok|blocked PORT [client.py connection options]: starts a check in the
# background: "ok" = a line sent through 127.0.0.1:PORT comes back (the upstream echoes);
# "blocked" = the proxy closes the connection within 5 s and not one byte comes back.
# relay_result NAME reports PASS/FAIL NAME. relay_ok / relay_blocked do both at once.
declare -A RELAY_KIND=()
relay_start() {
	local name=$1 kind=$2 port=$3
	shift 3
	RELAY_KIND[$name]=$kind
	if [ "$kind" = ok ]; then
		client_bg "$name" steps --connect "127.0.0.1:$port" "$@" "send:ping-$name" "expect:ping-$name"
	else
		client_bg "$name" steps --connect "127.0.0.1:$port" "$@" "sendq:ping-$name" "closed:5"
	fi
}
relay_result() {
	local name=$1 what
	[ "${RELAY_KIND[$name]}" = ok ] && what="no relay" || what="not blocked"
	if client_wait "$name"; then
		pass "$name"
	else
		fail "$name" "$what: $(json_get failed_step <<<"$CLIENT_OUT"): $(json_get why <<<"$CLIENT_OUT")"
	fi
}
relay_ok() {
	local name=$1
	shift
	relay_start "$name" ok "$@"
	relay_result "$name"
}
relay_blocked() {
	local name=$1
	shift
	relay_start "$name" blocked "$@"
	relay_result "$name"
}

# relay_ok_within NAME SECS PORT [client options]: relay_ok, tried again every 0.2 s until a
# line relays or SECS seconds have passed (then FAIL with the last attempt's reason). For a
# resource the proxy frees just after the last event a test can see (a connection slot is
# given back after the session's event=close line).
relay_ok_within() {
	local name=$1 secs=$2 t0
	shift 2
	t0=$(now_ns)
	while :; do
		relay_start "$name" ok "$@"
		if client_wait "$name"; then
			pass "$name"
			return 0
		fi
		if awk -v e="$(elapsed_since "$t0")" -v s="$secs" 'BEGIN { exit !(e >= s) }'; then
			fail "$name" "no relay within ${secs}s: $(json_get failed_step <<<"$CLIENT_OUT"): $(json_get why <<<"$CLIENT_OUT")"
			return 1
		fi
		sleep 0.2
	done
}

# json_get KEY [FILE]: value of KEY in the last line of FILE (or stdin), a flat JSON object
# as the tools print it (strings unescaped only for \" and \\; null gives "").
json_get() {
	local key=$1 line v
	line=$(grep -v '^[[:space:]]*$' "${2:-/dev/stdin}" | tail -n 1)
	v=$(sed -nE 's/.*"'"$key"'": ("(([^"\\]|\\.)*)"|([^,}]*)).*/\2\4/p' <<<"$line")
	[ "$v" = null ] && v=""
	v=${v//\\\"/\"}
	printf '%s\n' "${v//\\\\/\\}"
}

# leaf NAME DNS...: a certificate from the test CA ($CERTS) for these names: $T/NAME.pem
# (the leaf), $T/NAME.key, and $T/NAME-chain.pem (leaf and CA).
leaf() {
	local name=$1 san="" d
	shift
	for d in "$@"; do san+="${san:+,}DNS:$d"; done
	openssl ecparam -name prime256v1 -genkey -noout -out "$T/$name.key" 2>/dev/null
	openssl req -new -key "$T/$name.key" -subj "/CN=$1" -out "$T/$name.csr" 2>/dev/null
	printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\n' "$san" >"$T/$name.ext"
	openssl x509 -req -in "$T/$name.csr" -CA "$CERTS/ca.pem" -CAkey "$CERTS/ca.key" \
		-CAcreateserial -days 30 -sha256 -extfile "$T/$name.ext" -out "$T/$name.pem" 2>/dev/null
	cat "$T/$name.pem" "$CERTS/ca.pem" >"$T/$name-chain.pem"
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
	# PROXY_PREFIX (an array, e.g. ip netns exec NS): what the proxy runs under.
	spawn "$name" ${PROXY_PREFIX+"${PROXY_PREFIX[@]}"} "$STP_BIN" -c "$conf"
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
export STOP_SECS=""
stop_proxy() {
	local name=$1 t=${2:-10}
	kill -TERM "${PROXY_PID[$name]}" 2>/dev/null
	wait_proxy_exit "$name" "$t"
}

# wait_proxy_exit NAME TIMEOUT: waits (without signalling) for proxy NAME to exit; sets
# STOP_STATUS and STOP_SECS like stop_proxy.
wait_proxy_exit() {
	local name=$1 t=$2 pid i=0 t0
	pid=${PROXY_PID[$name]}
	PROXY_STOPPED[$name]=1
	t0=$(now_ns)
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

# log_count PATTERN [LOG]: prints the number of matching lines (0 included) and returns 0.
# A missing log is not "0 lines": it prints nothing, says so on stderr and returns 2, so
# that "[ "$(log_count RE)" -eq 0 ]" is false and "log_count RE | grep -qx 0" fails.
log_count() {
	local log=${2:-$PROXY_LOG}
	if [ ! -f "$log" ]; then
		echo "log_count: no log file $log" >&2
		return 2
	fi
	grep -Ec -- "$1" "$log"
	return 0
}

# log_line PATTERN [LOG]: the last matching line.
log_line() { grep -E -- "$1" "${2:-$PROXY_LOG}" 2>/dev/null | tail -n 1; }

# wait_count PATTERN N [TIMEOUT [LOG]]: until at least N lines match; status 1 when the
# time runs out first, a missing log included (it never counts as enough lines).
wait_count() {
	local pat=$1 n=$2 t=${3:-5} log=${4:-$PROXY_LOG} i=0 c
	while :; do
		c=$(log_count "$pat" "$log" 2>/dev/null)
		[ -n "$c" ] && [ "$c" -ge "$n" ] && return 0
		[ $i -ge $((t * 10)) ] && return 1
		sleep 0.1
		i=$((i + 1))
	done
}

# log_never NAME PATTERN FENCE [N [TIMEOUT [LOG]]]: a check of absence. PASS NAME when the
# log exists, N (default 1) lines matching FENCE show up within TIMEOUT (5) s, and then no
# line matches PATTERN. FENCE is an event that can only be logged after any PATTERN line
# would have been (the end of the session concerned, say; N picks the Nth such session):
# without it the check proves nothing, and a missing log or a FENCE that never comes is a
# FAIL, not a PASS.
log_never() {
	local name=$1 pat=$2 fence=$3 n=${4:-1} t=${5:-5} log=${6:-$PROXY_LOG}
	if [ ! -f "$log" ]; then
		fail "$name" "no log file $log"
	elif ! wait_count "$fence" "$n" "$t" "$log"; then
		fail "$name" "$(log_count "$fence" "$log") of $n fence lines /$fence/ after ${t}s: nothing proves the events were logged"
	elif grep -Eq -- "$pat" "$log"; then
		fail "$name" "$(grep -Em1 -- "$pat" "$log")"
	else
		pass "$name"
	fi
}

# expect_log NAME PATTERN [TIMEOUT [LOG]]: PASS when the pattern shows up in the log.
expect_log() {
	if wait_log "$2" "${3:-5}" "${4:-$PROXY_LOG}"; then
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
