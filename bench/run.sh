#!/usr/bin/env bash
# bench/run.sh - starttls-proxy side by side with stunnel4 and haproxy (TLS termination and
# TLS wrapping of a TCP stream), on loopback, in one run. Writes bench/RESULTS.md.
#
# Each proxy is started once, by this script, from its own configuration in a temp dir, on
# random loopback ports (never a packaged service). Every measurement is repeated
# BENCH_REPS times, the proxies taking turns, and the median is reported.
#
#   1. bulk throughput, one connection, both directions (TLS termination)
#   2. full TLS handshakes per second (ECDSA P-256 certificate, no resumption)
#   3. resident memory: idle, and with BENCH_CONNS idle TLS connections held open
#   4. bulk throughput in wrap mode (plaintext client -> proxy -> TLS server)
#   5. session resumption: proxy CPU per connection, full vs resumed handshakes, toward the
#      client (TLS termination) and toward the upstream (wrap)
#
# Environment:
#   STP_BIN           starttls-proxy binary (default: ./starttls-proxy of this repo)
#   BENCH_BYTES       bytes per bulk transfer (default 1073741824 = 1 GiB)
#   BENCH_REPS        repetitions of every measurement (default 3)
#   BENCH_HS_SECONDS  length of one handshake run (default 10)
#   BENCH_HS_CONC     parallel handshaking client threads (default 8)
#   BENCH_CONNS       idle connections for the memory scenario (default 1000)
#   BENCH_GROUP       TLS 1.3 key exchange group offered by the client (default X25519)
#   BENCH_OUT         report file (default bench/RESULTS.md)
#   BENCH_CERTS       certificates made by scripts/gen-test-certs.sh (default: made in a temp dir)
#   BENCH_SCENARIOS   which to run (default "mem hs bulk wrap resume": 3, 2, 1, 4, 5 above)
#   BENCH_KEEP=1      keep the temp dir (configurations, proxy logs)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
STP_BIN=${STP_BIN:-$ROOT/starttls-proxy}
case $STP_BIN in /*) ;; *) STP_BIN=$PWD/$STP_BIN ;; esac
BENCH_BYTES=${BENCH_BYTES:-1073741824}
BENCH_REPS=${BENCH_REPS:-3}
BENCH_HS_SECONDS=${BENCH_HS_SECONDS:-10}
BENCH_HS_CONC=${BENCH_HS_CONC:-8}
BENCH_CONNS=${BENCH_CONNS:-1000}
BENCH_GROUP=${BENCH_GROUP:-X25519}
BENCH_OUT=${BENCH_OUT:-$HERE/RESULTS.md}
BENCH_SCENARIOS=${BENCH_SCENARIOS:-mem hs bulk wrap resume}
CIPHER=TLS_AES_128_GCM_SHA256
PROXIES=(stp stunnel haproxy)
declare -A LABEL=([stp]=starttls-proxy [stunnel]=stunnel [haproxy]=haproxy [direct]="no proxy")

want() { case " $BENCH_SCENARIOS " in *" $1 "*) return 0 ;; esac; return 1; }
log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- tools -----------------------------------------------------------------------------

INSTALLED=()
need_pkgs=()
command -v stunnel4 >/dev/null || command -v stunnel >/dev/null || need_pkgs+=(stunnel4)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need_pkgs+=(haproxy)
command -v openssl >/dev/null || need_pkgs+=(openssl)
command -v cc >/dev/null || need_pkgs+=(gcc libc6-dev)
[ -f /usr/include/openssl/ssl.h ] || need_pkgs+=(libssl-dev)
command -v ss >/dev/null || need_pkgs+=(iproute2)
if [ ${#need_pkgs[@]} -gt 0 ]; then
	[ "$(id -u)" = 0 ] || die "missing packages: ${need_pkgs[*]} (apt-get install them as root)"
	log "installing ${need_pkgs[*]} (apt-get; their packaged services are not started)"
	# Keep package scripts from starting the packaged stunnel/haproxy services.
	made_policy=0
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod 755 /usr/sbin/policy-rc.d
		made_policy=1
	fi
	rc=0
	{ DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need_pkgs[@]}" ||
		{ apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y \
			--no-install-recommends "${need_pkgs[@]}"; }; } >&2 || rc=$?
	[ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
	[ "$rc" = 0 ] || die "apt-get install ${need_pkgs[*]} failed"
	INSTALLED=("${need_pkgs[@]}")
fi
STUNNEL=$(command -v stunnel4 || command -v stunnel)
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)
[ -x "$STP_BIN" ] || die "starttls-proxy binary not found: $STP_BIN (run make first)"

# --- temp dir, processes, cleanup ------------------------------------------------------

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
T=$(mktemp -d "${TMPDIR:-/tmp}/stp-bench.XXXXXX")
chmod 755 "$T"
PIDS=()
cleanup() {
	local rc=$? pid
	trap - EXIT INT TERM
	for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
	for pid in "${PIDS[@]}"; do
		for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
		kill -KILL "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	if [ -n "${BENCH_KEEP:-}" ]; then log "kept $T"; else rm -rf "$T"; fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Raise the descriptor limit: every proxy holds 2 sockets per connection.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
[ "$(ulimit -n)" -ge $((BENCH_CONNS * 2 + 200)) ] ||
	die "descriptor limit $(ulimit -n) too low for BENCH_CONNS=$BENCH_CONNS"

log "building the load generator (bench/stpbench.c, system OpenSSL)"
cc -O2 -Wall -o "$T/stpbench" "$HERE/stpbench.c" -lssl -lcrypto -lpthread
SB=$T/stpbench
# Handshake client: the project's wolfSSL when it is there (Debian's OpenSSL 3.0 client
# costs about 1 ms of CPU per handshake and would saturate the machine before the proxy).
WOLFSSL_PREFIX=${WOLFSSL_PREFIX:-$(cat /var/cache/starttls-proxy/wolfssl.current 2>/dev/null || true)}
HS=("$SB" hs)
HS_CLIENT="OpenSSL $(openssl version | awk '{print $2}') (\`stpbench hs\`)"
if [ -f "${WOLFSSL_PREFIX:-/nonexistent}/lib/libwolfssl.a" ] &&
	cc -O2 -Wall -I"$WOLFSSL_PREFIX/include" -o "$T/hs_wolfssl" "$HERE/hs_wolfssl.c" \
		"$WOLFSSL_PREFIX/lib/libwolfssl.a" -lm -lpthread; then
	HS=("$T/hs_wolfssl")
	HS_CLIENT="wolfSSL $(sed -n 's/^#define LIBWOLFSSL_VERSION_STRING "\(.*\)"/\1/p' \
		"$WOLFSSL_PREFIX/include/wolfssl/version.h") (\`bench/hs_wolfssl.c\`, the project's static build)"
else
	log "wolfSSL not found (WOLFSSL_PREFIX): handshakes measured with the OpenSSL client"
fi

if [ -n "${BENCH_CERTS:-}" ]; then
	CERTS=$BENCH_CERTS
	bash "$ROOT/scripts/gen-test-certs.sh" "$CERTS" >/dev/null
else
	CERTS=$T/certs
	bash "$ROOT/scripts/gen-test-certs.sh" "$CERTS" >/dev/null
fi
CERT=$CERTS/server.pem KEY=$CERTS/server.key CA=$CERTS/ca.pem

USED=" "
free_port() {
	local p
	for _ in $(seq 50); do
		p=$("$SB" port)
		case $USED in *" $p "*) continue ;; esac
		USED="$USED$p "
		echo "$p"
		return 0
	done
	die "no free port"
}

# wait_listen PORT [SECONDS]: until something listens on 127.0.0.1:PORT.
wait_listen() {
	local i
	for ((i = 0; i < ${2:-10} * 20; i++)); do
		[ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ] && return 0
		sleep 0.05
	done
	return 1
}

# spawn LOGFILE CMD...: starts CMD in the background; sets SPAWNED.
spawn() {
	local out=$1
	shift
	"$@" >"$out" 2>&1 &
	SPAWNED=$!
	PIDS+=("$SPAWNED")
}

# start_backend NAME [--tls CERT KEY]: sets BACKEND_PORT.
start_backend() {
	local name=$1 i
	shift
	spawn "$T/$name.out" "$SB" serve --group "$BENCH_GROUP" "$@"
	for ((i = 0; i < 100; i++)); do
		BACKEND_PORT=$(awk '/^port /{print $2}' "$T/$name.out")
		[ -n "$BACKEND_PORT" ] && return 0
		sleep 0.05
	done
	die "backend $name did not start: $(cat "$T/$name.out")"
}

rss_kib() { awk '/^VmRSS:/{print $2}' "/proc/$1/status"; }
threads_of() { awk '/^Threads:/{print $2}' "/proc/$1/status"; }
# CPU time (user+system, all threads) in clock ticks; field 2 (comm) has no spaces here.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)

# --- backends and proxies --------------------------------------------------------------

start_backend plain
B_PLAIN=$BACKEND_PORT
start_backend tls --tls "$CERT" "$KEY" --stats "$T/tls.stats"
B_TLS=$BACKEND_PORT
# the same without tickets or a session cache: every handshake toward it is a full one
start_backend tls_full --tls "$CERT" "$KEY" --no-resume
B_TLS_FULL=$BACKEND_PORT

declare -A PORT_TERM PORT_WRAP PORT_WRAPF PID
for p in "${PROXIES[@]}"; do
	PORT_TERM[$p]=$(free_port)
	PORT_WRAP[$p]=$(free_port)
	PORT_WRAPF[$p]=$(free_port)
done
PORT_TERM[direct]=$B_TLS

cat >"$T/stp.conf" <<EOF
[global]
workers = 1
cert = $CERT
key = $KEY
ca = $CA

[route term]
listen = 127.0.0.1:${PORT_TERM[stp]}
protocol = tcp
client_tls = implicit
client_min_tls = 1.3
upstream = 127.0.0.1:$B_PLAIN
upstream_tls = none
max_connections_per_client = 0

[route wrap]
listen = 127.0.0.1:${PORT_WRAP[stp]}
protocol = tcp
client_tls = none
upstream = 127.0.0.1:$B_TLS
upstream_tls = implicit
upstream_policy = verify
upstream_name = localhost
upstream_min_tls = 1.3
max_connections_per_client = 0

[route wrapfull]
listen = 127.0.0.1:${PORT_WRAPF[stp]}
protocol = tcp
client_tls = none
upstream = 127.0.0.1:$B_TLS_FULL
upstream_tls = implicit
upstream_policy = verify
upstream_name = localhost
upstream_min_tls = 1.3
max_connections_per_client = 0
EOF

cat >"$T/stunnel.conf" <<EOF
foreground = yes
pid =
syslog = no
output = $T/stunnel.log

[term]
accept = 127.0.0.1:${PORT_TERM[stunnel]}
connect = 127.0.0.1:$B_PLAIN
cert = $CERT
key = $KEY
sslVersionMin = TLSv1.3
ciphersuites = $CIPHER

[wrap]
client = yes
accept = 127.0.0.1:${PORT_WRAP[stunnel]}
connect = 127.0.0.1:$B_TLS
CAfile = $CA
verifyChain = yes
checkHost = localhost
sni = localhost
sslVersionMin = TLSv1.3
ciphersuites = $CIPHER

[wrapfull]
client = yes
accept = 127.0.0.1:${PORT_WRAPF[stunnel]}
connect = 127.0.0.1:$B_TLS_FULL
CAfile = $CA
verifyChain = yes
checkHost = localhost
sni = localhost
sslVersionMin = TLSv1.3
ciphersuites = $CIPHER
EOF

cat "$CERT" "$KEY" >"$T/haproxy.pem"
cat >"$T/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn $((BENCH_CONNS * 2 + 1000))
    log stderr format raw local0 info
    ssl-default-bind-ciphersuites $CIPHER
    ssl-default-bind-options ssl-min-ver TLSv1.3
    ssl-default-server-ciphersuites $CIPHER
    ssl-default-server-options ssl-min-ver TLSv1.3

defaults
    mode tcp
    log global
    option tcplog
    timeout connect 10s
    timeout client 5m
    timeout server 5m

frontend term
    bind 127.0.0.1:${PORT_TERM[haproxy]} ssl crt $T/haproxy.pem
    default_backend term_be

backend term_be
    server plain 127.0.0.1:$B_PLAIN

frontend wrap
    bind 127.0.0.1:${PORT_WRAP[haproxy]}
    default_backend wrap_be

backend wrap_be
    server tls 127.0.0.1:$B_TLS ssl verify required ca-file $CA sni str(localhost) verifyhost localhost

frontend wrapfull
    bind 127.0.0.1:${PORT_WRAPF[haproxy]}
    default_backend wrapfull_be

backend wrapfull_be
    server tls 127.0.0.1:$B_TLS_FULL ssl verify required ca-file $CA sni str(localhost) verifyhost localhost
EOF

"$STP_BIN" -t -c "$T/stp.conf" >/dev/null 2>&1 || die "starttls-proxy -t rejects $T/stp.conf: $("$STP_BIN" -t -c "$T/stp.conf" 2>&1)"
"$HAPROXY" -c -q -f "$T/haproxy.cfg" >/dev/null 2>&1 || die "haproxy -c: $("$HAPROXY" -c -f "$T/haproxy.cfg" 2>&1 | tail -3)"

log "starting starttls-proxy, stunnel, haproxy"
spawn "$T/stp.log" "$STP_BIN" -c "$T/stp.conf"
PID[stp]=$SPAWNED
spawn "$T/stunnel.stderr" "$STUNNEL" "$T/stunnel.conf"
PID[stunnel]=$SPAWNED
spawn "$T/haproxy.log" "$HAPROXY" -db -f "$T/haproxy.cfg"
PID[haproxy]=$SPAWNED
for p in "${PROXIES[@]}"; do
	for port in "${PORT_TERM[$p]}" "${PORT_WRAP[$p]}" "${PORT_WRAPF[$p]}"; do
		wait_listen "$port" 10 || die "${LABEL[$p]} does not listen on $port (see logs)"
	done
done
sleep 1

# --- results store ---------------------------------------------------------------------

declare -A RES    # "metric proxy" -> space-separated values, one per repetition
FAILURES=0
add() { RES["$1 $2"]="${RES["$1 $2"]:-}${RES["$1 $2"]:+ }$3"; }
median() { # values... -> median ("" when none)
	[ $# -gt 0 ] || return 0
	printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END{if(NR%2)print v[(NR+1)/2]; else printf "%.6g\n",(v[NR/2]+v[NR/2+1])/2}'
}
med() { # metric proxy
	# shellcheck disable=SC2086
	median ${RES["$1 $2"]:-}
}
check_alive() {
	kill -0 "${PID[$1]}" 2>/dev/null || die "${LABEL[$1]} died (see its log)"
}

# --- 3. memory (first, on fresh processes) ---------------------------------------------

for p in "${PROXIES[@]}"; do
	add rss_idle "$p" "$(rss_kib "${PID[$p]}")"
	add threads_idle "$p" "$(threads_of "${PID[$p]}")"
done

if want mem; then
	log "memory: $BENCH_CONNS idle TLS connections through each proxy, $BENCH_REPS times"
	for ((rep = 1; rep <= BENCH_REPS; rep++)); do
		for p in "${PROXIES[@]}"; do
			check_alive "$p"
			out=$T/hold.$p.$rep
			"$SB" hold --port "${PORT_TERM[$p]}" --tls --conns "$BENCH_CONNS" --max-seconds 120 \
				--group "$BENCH_GROUP" >"$out" 2>&1 &
			hp=$!
			PIDS+=("$hp")
			for ((i = 0; i < 1200; i++)); do
				grep -q '^ready' "$out" && break
				kill -0 "$hp" 2>/dev/null || break
				sleep 0.1
			done
			read -r _ opened _ failed < <(grep '^ready' "$out" || echo "ready 0 failed $BENCH_CONNS")
			sleep 1
			if [ "$opened" = "$BENCH_CONNS" ]; then
				add rss_conns "$p" "$(rss_kib "${PID[$p]}")"
				add threads_conns "$p" "$(threads_of "${PID[$p]}")"
			else
				log "memory: ${LABEL[$p]} held $opened of $BENCH_CONNS connections ($failed failed)"
				FAILURES=$((FAILURES + 1))
			fi
			kill -TERM "$hp" 2>/dev/null || true
			wait "$hp" 2>/dev/null || true
			# Let the proxy see the closes and release the sessions.
			for ((i = 0; i < 50; i++)); do
				[ "$(ss -Htn state established "( sport = :${PORT_TERM[$p]} )" | wc -l)" = 0 ] && break
				sleep 0.1
			done
			sleep 0.5
			add rss_after "$p" "$(rss_kib "${PID[$p]}")"
		done
	done
fi

# --- 2. handshakes ---------------------------------------------------------------------

# hs_run METRIC PROXY PORT [client args]: one handshake-loop run against PORT; records
# METRIC_rate (connections/s), METRIC_cpu_us (proxy CPU microseconds per connection),
# METRIC_core (proxy cores), METRIC_client_core, METRIC_errors and, with --resume,
# METRIC_resumed (% of handshakes the proxy resumed). Returns 1 when nothing succeeded.
hs_run() {
	local metric=$1 p=$2 port=$3 c0 c1 line ok errs rate ccpu secs res
	shift 3
	check_alive "$p"
	c0=$(cpu_ticks "${PID[$p]}")
	line=$("${HS[@]}" --port "$port" --seconds "$BENCH_HS_SECONDS" \
		--conc "$BENCH_HS_CONC" --group "$BENCH_GROUP" "$@" 2>&1 | tail -n 1 || true)
	c1=$(cpu_ticks "${PID[$p]}")
	ok=$(sed -n 's/.*ok=\([0-9]*\).*/\1/p' <<<"$line")
	errs=$(sed -n 's/.*errors=\([0-9]*\).*/\1/p' <<<"$line")
	rate=$(sed -n 's/.*rate=\([0-9.]*\).*/\1/p' <<<"$line")
	ccpu=$(sed -n 's/.*client_cpu=\([0-9.]*\).*/\1/p' <<<"$line")
	secs=$(sed -n 's/.*seconds=\([0-9.]*\).*/\1/p' <<<"$line")
	res=$(sed -n 's/.*resumed=\([0-9]*\).*/\1/p' <<<"$line")
	if [ -z "$ok" ] || [ "$ok" = 0 ]; then
		log "$metric: ${LABEL[$p]} failed: $line"
		FAILURES=$((FAILURES + 1))
		return 1
	fi
	[ "$errs" = 0 ] || log "$metric: ${LABEL[$p]}: $errs errors ($line)"
	add "${metric}_rate" "$p" "$rate"
	add "${metric}_errors" "$p" "$errs"
	# proxy CPU per handshake (microseconds) and share of one core
	add "${metric}_cpu_us" "$p" "$(awk -v d=$((c1 - c0)) -v hz="$HZ" -v n="$ok" 'BEGIN{printf "%.1f", d/hz/n*1e6}')"
	add "${metric}_core" "$p" "$(awk -v d=$((c1 - c0)) -v hz="$HZ" -v s="$secs" 'BEGIN{printf "%.2f", d/hz/s}')"
	add "${metric}_client_core" "$p" "$(awk -v c="$ccpu" -v s="$secs" 'BEGIN{printf "%.2f", c/s}')"
	case " $* " in *" --resume "*)
		add "${metric}_resumed" "$p" "$(awk -v r="${res:-0}" -v n="$ok" 'BEGIN{printf "%.1f", 100*r/n}')" ;;
	esac
	log "  ${LABEL[$p]} $metric: $line proxy_cpu_ticks=$((c1 - c0))"
	HS_OK=$ok
}

if want hs; then
	log "handshakes: ${BENCH_HS_SECONDS}s x $BENCH_REPS per proxy, $BENCH_HS_CONC client threads"
	for ((rep = 1; rep <= BENCH_REPS; rep++)); do
		for p in "${PROXIES[@]}"; do
			hs_run hs "$p" "${PORT_TERM[$p]}" || true
		done
	done
fi

# --- 5. resumption ---------------------------------------------------------------------

# backend_resumed: the resuming TLS backend's count of resumed handshakes so far.
backend_resumed() { sed -n 's/.*resumed=\([0-9]*\).*/\1/p' "$T/tls.stats" 2>/dev/null || echo 0; }

if want resume; then
	if [ "${HS[0]}" != "$T/hs_wolfssl" ]; then
		log "resumption: needs the wolfSSL client (bench/hs_wolfssl.c); skipped"
		FAILURES=$((FAILURES + 1))
	else
		log "resumption: client and upstream side, full and resumed, ${BENCH_HS_SECONDS}s x $BENCH_REPS"
		for ((rep = 1; rep <= BENCH_REPS; rep++)); do
			for p in "${PROXIES[@]}"; do
				hs_run cli_full "$p" "${PORT_TERM[$p]}" || true
				hs_run cli_res "$p" "${PORT_TERM[$p]}" --resume || true
				hs_run up_full "$p" "${PORT_WRAPF[$p]}" --plain || true
				r0=$(backend_resumed)
				HS_OK=0
				if hs_run up_res "$p" "${PORT_WRAP[$p]}" --plain; then
					r1=$(backend_resumed)
					add up_res_resumed "$p" "$(awk -v r=$((${r1:-0} - ${r0:-0})) -v n="$HS_OK" 'BEGIN{printf "%.1f", 100*r/n}')"
				fi
			done
		done
	fi
fi

# --- 1. and 4. bulk --------------------------------------------------------------------

# bulk KIND DIR PROXY: one transfer; records MB/s and proxy CPU seconds per GB.
bulk() {
	local kind=$1 dir=$2 p=$3 port tls=() line c0=0 c1=0 mbps
	if [ "$kind" = term ]; then
		port=${PORT_TERM[$p]}
		tls=(--tls)
	else
		port=${PORT_WRAP[$p]}
	fi
	[ "$p" = direct ] || { check_alive "$p"; c0=$(cpu_ticks "${PID[$p]}"); }
	line=$("$SB" bulk --port "$port" --dir "$dir" --bytes "$BENCH_BYTES" --group "$BENCH_GROUP" \
		"${tls[@]}" 2>&1 | tail -n 1 || true)
	[ "$p" = direct ] || c1=$(cpu_ticks "${PID[$p]}")
	mbps=$(sed -n 's/.*mbps=\([0-9.]*\).*/\1/p' <<<"$line")
	if [ -z "$mbps" ]; then
		log "bulk $kind $dir: ${LABEL[$p]} failed: $line"
		FAILURES=$((FAILURES + 1))
		return 0
	fi
	add "${kind}_${dir}_mbps" "$p" "$mbps"
	if [ "$p" != direct ]; then
		add "${kind}_${dir}_cpu" "$p" "$(awk -v d=$((c1 - c0)) -v hz="$HZ" -v b="$BENCH_BYTES" 'BEGIN{printf "%.3f", d/hz/(b/1e9)}')"
	fi
	log "  $kind $dir ${LABEL[$p]}: $line proxy_cpu_ticks=$((c1 - c0))"
}

if want bulk; then
	log "bulk: $BENCH_BYTES bytes per transfer, TLS termination, both directions"
	for dir in up down; do
		for ((rep = 1; rep <= BENCH_REPS; rep++)); do
			for p in "${PROXIES[@]}" direct; do bulk term "$dir" "$p"; done
		done
	done
fi
if want wrap; then
	log "bulk: wrap mode (plaintext client -> proxy -> TLS server)"
	for dir in up down; do
		for ((rep = 1; rep <= BENCH_REPS; rep++)); do
			for p in "${PROXIES[@]}"; do bulk wrap "$dir" "$p"; done
		done
	done
fi

for p in "${PROXIES[@]}"; do
	check_alive "$p"
	add rss_end "$p" "$(rss_kib "${PID[$p]}")"
done

# --- report ----------------------------------------------------------------------------

log "writing $BENCH_OUT"
fmt() { # number decimals -> formatted, or n/a
	if [ -z "$1" ]; then echo "n/a"; else awk -v v="$1" -v d="$2" 'BEGIN{printf "%.*f", d, v}'; fi
}
ratio() { # a b -> a/b with 2 decimals, or n/a
	if [ -z "$1" ] || [ -z "$2" ] || awk -v b="$2" 'BEGIN{exit !(b==0)}'; then echo "n/a"; else
		awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", a/b}'; fi
}
# table_rows METRIC DECIMALS [CPU-METRIC CPU-DECIMALS]: one row per proxy plus ratios.
per_conn() { # proxy -> KiB per connection (median RSS with connections - idle RSS) / N
	local with idle
	with=$(med rss_conns "$1")
	idle=$(med rss_idle "$1")
	if [ -z "$with" ] || [ -z "$idle" ]; then echo ""; else
		awk -v w="$with" -v i="$idle" -v n="$BENCH_CONNS" 'BEGIN{printf "%.2f", (w-i)/n}'; fi
}

CPU_MODEL=$(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)
MEM_TOTAL=$(awk '/^MemTotal:/{printf "%.1f GiB", $2/1048576}' /proc/meminfo)
STP_V=$("$STP_BIN" -V 2>&1 | head -n 1 || true)
STUNNEL_V=$("$STUNNEL" -version 2>&1 | grep -E '^stunnel|^Running' | paste -sd ';' | sed 's/;/; /g' || true)
HAPROXY_V=$("$HAPROXY" -v 2>&1 | head -n 1 || true)
HAPROXY_TLS=$("$HAPROXY" -vv 2>&1 | sed -n 's/^Running on \(OpenSSL.*\)/\1/p' | head -n 1 || true)
OPENSSL_V=$(openssl version)
MIB=$(awk -v b="$BENCH_BYTES" 'BEGIN{printf "%g", b/1048576}')

{
	echo "# starttls-proxy benchmark: side by side with stunnel and haproxy"
	echo
	echo "Written by \`bench/run.sh\` (\`make bench-classic\`) on $(date -u '+%Y-%m-%d %H:%M UTC'). Loopback only;"
	echo "every figure is the median of $BENCH_REPS runs (the proxies take turns within each run)."
	echo
	echo "## Machine and versions"
	echo
	echo "| | |"
	echo "|---|---|"
	echo "| CPU | $CPU_MODEL, $(nproc) cores (nproc) |"
	echo "| memory / kernel | $MEM_TOTAL / Linux $(uname -r) |"
	echo "| load average (1/5/15 min) | $LOAD_START when the run started (other work on the machine makes the figures noisy) |"
	echo "| starttls-proxy | $STP_V |"
	echo "| stunnel | $STUNNEL_V |"
	echo "| haproxy | $HAPROXY_V (TLS: ${HAPROXY_TLS:-?}) |"
	echo "| openssl | $OPENSSL_V (load generator and backends: \`bench/stpbench.c\` built with \`-lssl -lcrypto\` from libssl-dev) |"
	if [ ${#INSTALLED[@]} -gt 0 ]; then
		echo "| installed by this run | ${INSTALLED[*]} (apt-get) |"
	fi
	echo
	echo "## Setup"
	echo
	echo "- Same job for all three: **TLS termination** (TLS client -> proxy -> plaintext TCP"
	echo "  backend) and **wrap** (plaintext client -> proxy -> TLS server, i.e. stunnel"
	echo "  \`client = yes\`), \`protocol = tcp\` for starttls-proxy."
	echo "- TLS 1.3 only, \`$CIPHER\`, key exchange \`$BENCH_GROUP\` (the client offers nothing"
	echo "  else; the TLS backend accepts nothing else), ECDSA P-256 certificate from"
	echo "  \`scripts/gen-test-certs.sh\` (\`server.pem\`). No session resumption except in section 5."
	echo "- starttls-proxy: \`workers = 1\`, default \`log_level = info\`, stderr to a file;"
	echo "  wrap route with \`upstream_policy = verify\`, \`upstream_name = localhost\`."
	echo "- stunnel: defaults (one thread per connection, so it may use both cores), log"
	echo "  level notice to a file; wrap with \`verifyChain\` + \`checkHost = localhost\`."
	echo "- haproxy: \`nbthread 1\`, \`mode tcp\`, \`option tcplog\` to stderr (a file), default"
	echo "  buffers (\`tune.bufsize\` 16 KiB); wrap with \`ssl verify required\` + \`verifyhost\`."
	echo "- Load generator and backends: \`bench/stpbench.c\` (OpenSSL client with read-ahead,"
	echo "  epoll plaintext backend, thread-per-connection OpenSSL TLS backend), and"
	echo "  \`bench/hs_wolfssl.c\` for the handshake rate (see section 2). They share the"
	echo "  $(nproc) cores with the proxy under test; nothing is pinned."
	echo "- Proxy CPU is read from \`/proc/PID/stat\` (user+system, all threads) around each run."
	echo "- Ratios are starttls-proxy / peer. For throughput and handshakes, > 1 means"
	echo "  starttls-proxy is better; for CPU and memory, < 1 means starttls-proxy is better."
	echo "- Reading the figures: load generator, backend and proxy share $(nproc) cores, so rates"
	echo "  (MB/s, handshakes/s) also depend on how much CPU the proxy leaves to the others; the"
	echo "  CPU columns (proxy CPU seconds per GB, microseconds per connection) compare the"
	echo "  proxies' own cost and move less when other work runs on the machine."
	echo
	if want bulk; then
		echo "## 1. Bulk throughput, TLS termination ($MIB MiB through one connection)"
		echo
		echo "MB/s = 10^6 bytes per second, timed from the end of the handshake to the last byte."
		echo "*up*: client -> proxy (decrypt) -> backend sink; *down*: backend source -> proxy"
		echo "(encrypt) -> client. *CPU s/GB*: proxy CPU seconds per 10^9 bytes relayed."
		echo
		echo "| proxy | up MB/s | up CPU s/GB | down MB/s | down CPU s/GB |"
		echo "|---|---:|---:|---:|---:|"
		for p in "${PROXIES[@]}"; do
			echo "| ${LABEL[$p]} | $(fmt "$(med term_up_mbps "$p")" 0) | $(fmt "$(med term_up_cpu "$p")" 3) | $(fmt "$(med term_down_mbps "$p")" 0) | $(fmt "$(med term_down_cpu "$p")" 3) |"
		done
		echo "| *no proxy (client -> OpenSSL TLS backend)* | *$(fmt "$(med term_up_mbps direct)" 0)* | | *$(fmt "$(med term_down_mbps direct)" 0)* | |"
		for peer in stunnel haproxy; do
			echo "| **ratio vs ${LABEL[$peer]}** | **$(ratio "$(med term_up_mbps stp)" "$(med term_up_mbps "$peer")")** | $(ratio "$(med term_up_cpu stp)" "$(med term_up_cpu "$peer")") | **$(ratio "$(med term_down_mbps stp)" "$(med term_down_mbps "$peer")")** | $(ratio "$(med term_down_cpu stp)" "$(med term_down_cpu "$peer")") |"
		done
		echo
	fi
	if want hs; then
		echo "## 2. Full TLS handshakes per second"
		echo
		echo "Client: $HS_CLIENT."
		echo "$BENCH_HS_CONC client threads for ${BENCH_HS_SECONDS} s; each connection: TCP connect, full"
		echo "TLS 1.3 handshake, one byte to the backend and back, close_notify, close. The proxy"
		echo "opens a backend connection for each. *proxy CPU*: proxy CPU microseconds per"
		echo "connection; *proxy cores* / *client cores*: CPU used over the run (of $(nproc))."
		echo
		echo "| proxy | handshakes/s | proxy CPU us/conn | proxy cores | client cores | errors |"
		echo "|---|---:|---:|---:|---:|---:|"
		for p in "${PROXIES[@]}"; do
			# shellcheck disable=SC2086
			errs=$(awk '{s=0; for(i=1;i<=NF;i++) s+=$i; print s}' <<<"${RES["hs_errors $p"]:-}")
			echo "| ${LABEL[$p]} | $(fmt "$(med hs_rate "$p")" 0) | $(fmt "$(med hs_cpu_us "$p")" 0) | $(fmt "$(med hs_core "$p")" 2) | $(fmt "$(med hs_client_core "$p")" 2) | ${errs:-n/a} |"
		done
		for peer in stunnel haproxy; do
			echo "| **ratio vs ${LABEL[$peer]}** | **$(ratio "$(med hs_rate stp)" "$(med hs_rate "$peer")")** | $(ratio "$(med hs_cpu_us stp)" "$(med hs_cpu_us "$peer")") | | | |"
		done
		echo
	fi
	if want mem; then
		echo "## 3. Memory (resident set size of the proxy process)"
		echo
		echo "*idle*: fresh process, before any traffic. *with N*: $BENCH_CONNS TLS connections"
		echo "established (handshake + one round trip to the backend) and left idle, 1 s settle."
		echo "*per conn* = (with N - idle) / N. *after close*: once those connections are closed."
		echo
		echo "| proxy | idle KiB | with $BENCH_CONNS KiB | per conn KiB | after close KiB | threads idle / with $BENCH_CONNS |"
		echo "|---|---:|---:|---:|---:|---:|"
		for p in "${PROXIES[@]}"; do
			echo "| ${LABEL[$p]} | $(fmt "$(med rss_idle "$p")" 0) | $(fmt "$(med rss_conns "$p")" 0) | $(fmt "$(per_conn "$p")" 1) | $(fmt "$(med rss_after "$p")" 0) | $(fmt "$(med threads_idle "$p")" 0) / $(fmt "$(med threads_conns "$p")" 0) |"
		done
		for peer in stunnel haproxy; do
			echo "| **ratio vs ${LABEL[$peer]}** | $(ratio "$(med rss_idle stp)" "$(med rss_idle "$peer")") | $(ratio "$(med rss_conns stp)" "$(med rss_conns "$peer")") | **$(ratio "$(per_conn stp)" "$(per_conn "$peer")")** | | |"
		done
		echo
	fi
	if want wrap; then
		echo "## 4. Bulk throughput, wrap mode (plaintext client -> proxy -> TLS server)"
		echo
		echo "$MIB MiB through one connection. *up*: client -> proxy (encrypt) -> TLS backend sink;"
		echo "*down*: TLS backend source -> proxy (decrypt) -> client."
		echo
		echo "| proxy | up MB/s | up CPU s/GB | down MB/s | down CPU s/GB |"
		echo "|---|---:|---:|---:|---:|"
		for p in "${PROXIES[@]}"; do
			echo "| ${LABEL[$p]} | $(fmt "$(med wrap_up_mbps "$p")" 0) | $(fmt "$(med wrap_up_cpu "$p")" 3) | $(fmt "$(med wrap_down_mbps "$p")" 0) | $(fmt "$(med wrap_down_cpu "$p")" 3) |"
		done
		for peer in stunnel haproxy; do
			echo "| **ratio vs ${LABEL[$peer]}** | **$(ratio "$(med wrap_up_mbps stp)" "$(med wrap_up_mbps "$peer")")** | $(ratio "$(med wrap_up_cpu stp)" "$(med wrap_up_cpu "$peer")") | **$(ratio "$(med wrap_down_mbps stp)" "$(med wrap_down_mbps "$peer")")** | $(ratio "$(med wrap_down_cpu stp)" "$(med wrap_down_cpu "$peer")") |"
		done
		echo
	fi
	if want resume; then
		echo "## 5. Session resumption: proxy handshakes per CPU-second, full and resumed"
		echo
		echo "The handshake loop of section 2 ($BENCH_HS_CONC threads, ${BENCH_HS_SECONDS} s). *Client side*: TLS"
		echo "termination; *full*: every connection a full handshake; *resumed*: each client thread"
		echo "offers the TLS 1.3 ticket of its previous connection (\`hs_wolfssl --resume\`)."
		echo "*Upstream side*: wrap (plaintext client, \`hs_wolfssl --plain\`); *full*: toward a"
		echo "TLS backend without tickets or session cache; *resumed*: toward one that resumes,"
		echo "so the proxy may offer the session of an earlier connection. *conn/CPU-s*: connections"
		echo "per second of proxy CPU (10^6 / proxy CPU us per connection); *resumed %*: share of"
		echo "handshakes resumed (client side: as the client saw it; upstream side: as the backend"
		echo "counted it). \`openssl s_time -reuse\` is no help here: it never reads the TLS 1.3"
		echo "tickets, so each of its connections is a full handshake."
		echo
		echo "| proxy | client full conn/CPU-s | client resumed conn/CPU-s | gain | resumed % | upstream full conn/CPU-s | upstream resumed conn/CPU-s | gain | resumed % |"
		echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
		per_cpu() { local v; v=$(med "$1" "$2"); [ -n "$v" ] && awk -v u="$v" 'BEGIN{printf "%.0f", 1e6/u}'; }
		for p in "${PROXIES[@]}"; do
			cf=$(per_cpu cli_full_cpu_us "$p"); cr=$(per_cpu cli_res_cpu_us "$p")
			uf=$(per_cpu up_full_cpu_us "$p"); ur=$(per_cpu up_res_cpu_us "$p")
			echo "| ${LABEL[$p]} | $(fmt "$cf" 0) | $(fmt "$cr" 0) | $(ratio "$cr" "$cf") | $(fmt "$(med cli_res_resumed "$p")" 0) | $(fmt "$uf" 0) | $(fmt "$ur" 0) | $(ratio "$ur" "$uf") | $(fmt "$(med up_res_resumed "$p")" 0) |"
		done
		for peer in stunnel haproxy; do
			echo "| **ratio vs ${LABEL[$peer]}** | **$(ratio "$(per_cpu cli_full_cpu_us stp)" "$(per_cpu cli_full_cpu_us "$peer")")** | **$(ratio "$(per_cpu cli_res_cpu_us stp)" "$(per_cpu cli_res_cpu_us "$peer")")** | | | **$(ratio "$(per_cpu up_full_cpu_us stp)" "$(per_cpu up_full_cpu_us "$peer")")** | **$(ratio "$(per_cpu up_res_cpu_us stp)" "$(per_cpu up_res_cpu_us "$peer")")** | | |"
		done
		echo
	fi
	echo "RSS at the end of the run (after all scenarios): $(for p in "${PROXIES[@]}"; do printf '%s %s KiB; ' "${LABEL[$p]}" "$(med rss_end "$p")"; done)"
	echo
	if [ "$FAILURES" -gt 0 ]; then
		echo "**$FAILURES measurement(s) failed during this run; see the run's output.**"
		echo
	fi
	echo "## Raw values (one per repetition)"
	echo
	echo '```'
	for k in $(printf '%s\n' "${!RES[@]}" | awk '{print $1}' | sort -u); do
		for p in "${PROXIES[@]}" direct; do
			[ -n "${RES["$k $p"]:-}" ] && printf '%-16s %-15s %s\n' "$k" "${LABEL[$p]}" "${RES["$k $p"]}"
		done
	done
	echo '```'
	echo
	echo "## How to reproduce"
	echo
	echo '```sh'
	echo 'make && make bench-classic    # or: STP_BIN=./starttls-proxy bash bench/run.sh'
	echo '```'
	echo
	echo "Needs stunnel4, haproxy, openssl, gcc and libssl-dev (the script apt-get installs what"
	echo "is missing when run as root, without starting the packaged services). Knobs:"
	echo "\`BENCH_BYTES\` (default 1 GiB), \`BENCH_REPS\` (3), \`BENCH_HS_SECONDS\` (10),"
	echo "\`BENCH_HS_CONC\` (8), \`BENCH_CONNS\` (1000), \`BENCH_GROUP\` (X25519), \`BENCH_OUT\`,"
	echo "\`BENCH_SCENARIOS\` (\"mem hs bulk wrap resume\"; e.g. \`BENCH_SCENARIOS=bulk\` while optimising),"
	echo "\`BENCH_KEEP=1\` keeps the temp dir (configurations and proxy logs)."
	echo "This run took $((SECONDS / 60)) min $((SECONDS % 60)) s."
	# A hand-written part (what limits each figure) follows the marker line: kept as it is.
	if [ -f "$BENCH_OUT" ] && grep -q '^<!-- hand-written below: kept by bench/run.sh -->$' "$BENCH_OUT"; then
		echo
		sed -n '/^<!-- hand-written below: kept by bench\/run.sh -->$/,$p' "$BENCH_OUT"
	fi
} >"$BENCH_OUT.tmp"
mv "$BENCH_OUT.tmp" "$BENCH_OUT"
log "done in ${SECONDS}s: $BENCH_OUT"
[ "$FAILURES" = 0 ]
