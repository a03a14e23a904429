#!/usr/bin/env bash
# bench/chain.sh - starttls-proxy, stunnel and haproxy side by side in a two-leg chain, and
# the machine's floor, in one run (`make bench`). Writes bench/results/chain.md, chain.png
# (gnuplot) and summary.md (the table README.md shows).
#
# The chain:  plain client -> proxy A ("wrap": plain in, TLS out) -> TLS -> proxy B (TLS in,
# plain out) -> plain backend. Every proxy and backend is started by this script from its own
# configuration in a temp dir, on random loopback ports (never a packaged service), and
# killed at exit. Proxy CPU is read from /proc/PID/stat (utime+stime+cutime+cstime, all
# threads) before and after each measurement; every measurement is repeated BENCH_REPS
# times, the systems taking turns, and the median is reported.
#
# Scenarios (BENCH_CHAIN_SCENARIOS, run in this order whatever the order given):
#   idle     BENCH_IDLE_CONNS idle connections held through the chain: RSS per connection
#   bulk     BENCH_CHAIN_BYTES through the chain, upload and download, socat (and iperf3)
#            as the load; ECDSA P-256 and RSA-2048 rows; the floor: two socat relays in the
#            same positions + AES-128-GCM encrypt and decrypt (openssl speed)
#   hs       openssl s_time -new / -reuse against an implicit-TLS tcp route, X25519 / P-256
#   scaling  starttls-proxy workers = 1 vs 2 on full handshakes
#   smtp     smtp-source -> inject (plain in, STARTTLS out) -> terminate (STARTTLS in,
#            plain out) -> smtp-sink
#
# Environment:
#   STP_BIN                starttls-proxy binary (default: ./starttls-proxy of this repo)
#   BENCH_CHAIN_SCENARIOS  default "idle bulk hs scaling smtp"
#   BENCH_REPS             repetitions (default 3, median reported)
#   BENCH_CHAIN_BYTES      bytes per bulk transfer (default 1073741824 = 1 GiB)
#   BENCH_IPERF            auto (default: if iperf3 is installable), 0 (skip), 1 (required)
#   BENCH_HS_SECONDS       length of one s_time run (default 5)
#   BENCH_HS_CLIENTS       parallel s_time processes in the hs scenario (default 2)
#   BENCH_SCALE_CLIENTS    parallel s_time processes in the scaling scenario (default 4)
#   BENCH_SMTP_MESSAGES    messages per smtp run (default 20000)
#   BENCH_SMTP_SESSIONS    parallel smtp-source sessions (default 20)
#   BENCH_SMTP_SIZE        message size in bytes (default 10240)
#   BENCH_SMTP_REUSE=1     smtp-source -d: many messages per session (default: one each)
#   BENCH_IDLE_CONNS       idle connections (default 10000; fewer when the descriptor limit
#                          cannot be raised high enough, said in the report)
#   BENCH_IDLE_REPS        repetitions of the idle scenario (default 1: it takes minutes per
#                          system with stunnel, and RSS varies little from one run to the next)
#   BENCH_RESULTS          output directory (default bench/results)
#   BENCH_KEEP=1           keep the temp dir (configurations, logs)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
STP_BIN=${STP_BIN:-$ROOT/starttls-proxy}
case $STP_BIN in /*) ;; *) STP_BIN=$PWD/$STP_BIN ;; esac
BENCH_CHAIN_SCENARIOS=${BENCH_CHAIN_SCENARIOS:-idle bulk hs scaling smtp}
BENCH_REPS=${BENCH_REPS:-3}
BENCH_CHAIN_BYTES=${BENCH_CHAIN_BYTES:-1073741824}
BENCH_IPERF=${BENCH_IPERF:-auto}
BENCH_HS_SECONDS=${BENCH_HS_SECONDS:-5}
BENCH_HS_CLIENTS=${BENCH_HS_CLIENTS:-2}
BENCH_SCALE_CLIENTS=${BENCH_SCALE_CLIENTS:-4}
BENCH_SMTP_MESSAGES=${BENCH_SMTP_MESSAGES:-20000}
BENCH_SMTP_SESSIONS=${BENCH_SMTP_SESSIONS:-20}
BENCH_SMTP_SIZE=${BENCH_SMTP_SIZE:-10240}
BENCH_IDLE_CONNS=${BENCH_IDLE_CONNS:-10000}
BENCH_IDLE_REPS=${BENCH_IDLE_REPS:-1}
BENCH_SMTP_REUSE=${BENCH_SMTP_REUSE:-0}
BENCH_RESULTS=${BENCH_RESULTS:-$HERE/results}
CIPHER=TLS_AES_128_GCM_SHA256
BUF=262144
SYSTEMS=(stp stunnel haproxy)
declare -A LABEL=([stp]=starttls-proxy [stunnel]=stunnel [haproxy]=haproxy [floor]="floor"
	[direct]="no proxy" [stp1]="starttls-proxy workers=1" [stp2]="starttls-proxy workers=2"
	[haproxy1]="haproxy nbthread 1" [haproxy2]="haproxy nbthread 2" [ec]="ECDSA P-256"
	[rsa]="RSA-2048")

want() { case " $BENCH_CHAIN_SCENARIOS " in *" $1 "*) return 0 ;; esac; return 1; }
log() { printf '[chain %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- tools -----------------------------------------------------------------------------

INSTALLED=()
NOTES=()
apt_install() { # packages... (their packaged services are never started)
	local made_policy=0 rc=0
	[ "$(id -u)" = 0 ] || { log "not root: cannot apt-get install $*"; return 1; }
	log "installing $* (apt-get; packaged services kept from starting by policy-rc.d)"
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod 755 /usr/sbin/policy-rc.d
		made_policy=1
	fi
	{ DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" ||
		{ apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y \
			--no-install-recommends "$@"; }; } >&2 || rc=$?
	[ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
	[ "$rc" = 0 ] && INSTALLED+=("$@")
	return "$rc"
}
need_pkgs=()
command -v stunnel4 >/dev/null || command -v stunnel >/dev/null || need_pkgs+=(stunnel4)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need_pkgs+=(haproxy)
command -v openssl >/dev/null || need_pkgs+=(openssl)
command -v socat >/dev/null || need_pkgs+=(socat)
command -v gnuplot >/dev/null || need_pkgs+=(gnuplot-nox)
command -v cc >/dev/null || need_pkgs+=(gcc libc6-dev)
[ -f /usr/include/openssl/ssl.h ] || need_pkgs+=(libssl-dev)
command -v ss >/dev/null || need_pkgs+=(iproute2)
if want smtp && ! command -v smtp-source >/dev/null && [ ! -x /usr/sbin/smtp-source ]; then
	need_pkgs+=(postfix)
fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
	apt_install "${need_pkgs[@]}" || die "apt-get install ${need_pkgs[*]} failed"
fi
IPERF=""
if want bulk && [ "$BENCH_IPERF" != 0 ]; then
	command -v iperf3 >/dev/null || apt_install iperf3 || true
	IPERF=$(command -v iperf3 || true)
	if [ -z "$IPERF" ]; then
		[ "$BENCH_IPERF" = 1 ] && die "iperf3 required (BENCH_IPERF=1) but not installable"
		NOTES+=("iperf3 is not installable here: the bulk scenario ran with socat only.")
	fi
fi
STUNNEL=$(command -v stunnel4 || command -v stunnel)
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)
SMTP_SOURCE=$(command -v smtp-source || echo /usr/sbin/smtp-source)
SMTP_SINK=$(command -v smtp-sink || echo /usr/sbin/smtp-sink)
[ -x "$STP_BIN" ] || die "starttls-proxy binary not found: $STP_BIN (run make first)"

# --- temp dir, processes, cleanup ------------------------------------------------------

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
DATE_START=$(date -u '+%Y-%m-%d %H:%M UTC')
T=$(mktemp -d "${TMPDIR:-/tmp}/stp-chain.XXXXXX")
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

# Every proxy holds 2 sockets per connection; the chain's client and backend 1 each.
ulimit -Hn 1048576 2>/dev/null || true
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
IDLE_ASKED=$BENCH_IDLE_CONNS
# stunnel serves at most 125/256 of its descriptor limit as clients ("Clients allowed=" in
# its log); every proxy of the chain holds two descriptors per connection.
IDLE_MAX=$(((NOFILE - 400) / 2))
[ $((NOFILE * 125 / 256 - 50)) -lt "$IDLE_MAX" ] && IDLE_MAX=$((NOFILE * 125 / 256 - 50))
if want idle && [ "$IDLE_MAX" -lt "$BENCH_IDLE_CONNS" ]; then
	BENCH_IDLE_CONNS=$IDLE_MAX
	NOTES+=("idle: $IDLE_ASKED connections asked, $BENCH_IDLE_CONNS measured (the same number for every system): the descriptor limit is $NOFILE and cannot be raised here (\`ulimit -Hn 1048576\` is refused, no CAP_SYS_RESOURCE); each proxy of the chain holds two descriptors per connection (client side and upstream side), and stunnel serves at most 125/256 of its descriptor limit as clients ($((NOFILE * 125 / 256)) here, \"Clients allowed\" in its log).")
	log "idle: descriptor limit $NOFILE: $BENCH_IDLE_CONNS connections instead of $IDLE_ASKED"
fi

log "building the helper (bench/stpbench.c: free ports, idle-connection client and backend)"
cc -O2 -Wall -o "$T/stpbench" "$HERE/stpbench.c" -lssl -lcrypto -lpthread
SB=$T/stpbench

CERTS=$T/certs
bash "$ROOT/scripts/gen-test-certs.sh" "$CERTS" >/dev/null
# gen-test-certs.sh makes ECDSA P-256 keys only: an RSA-2048 leaf for "localhost" signed by
# the same test CA for the RSA row.
openssl req -new -newkey rsa:2048 -nodes -keyout "$CERTS/rsa.key" -subj /CN=localhost \
	-out "$T/rsa.csr" 2>/dev/null
printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$T/rsa.ext"
openssl x509 -req -in "$T/rsa.csr" -CA "$CERTS/ca.pem" -CAkey "$CERTS/ca.key" -CAcreateserial \
	-sha256 -days 30 -extfile "$T/rsa.ext" -out "$CERTS/rsa.pem" 2>/dev/null
declare -A CERT=([ec]=$CERTS/server.pem [rsa]=$CERTS/rsa.pem)
declare -A KEY=([ec]=$CERTS/server.key [rsa]=$CERTS/rsa.key)
CA=$CERTS/ca.pem
for r in ec rsa; do cat "${CERT[$r]}" "${KEY[$r]}" >"$T/haproxy-$r.pem"; done

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
wait_listen() { # PORT [SECONDS]
	local i
	for ((i = 0; i < ${2:-10} * 20; i++)); do
		[ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ] && return 0
		sleep 0.05
	done
	return 1
}
spawn() { # LOGFILE CMD... -> SPAWNED
	local out=$1
	shift
	"$@" >"$out" 2>&1 &
	SPAWNED=$!
	PIDS+=("$SPAWNED")
}
HZ=$(getconf CLK_TCK)
# CPU ticks of processes (user+system of all threads, plus reaped children: the socat
# relays of the floor fork one child per connection).
cpu_ticks() {
	local s=0 p
	for p in "$@"; do s=$((s + $(awk '{print $14 + $15 + $16 + $17}' "/proc/$p/stat"))); done
	echo "$s"
}
rss_kib() {
	local s=0 p
	for p in "$@"; do s=$((s + $(awk '/^VmRSS:/{print $2}' "/proc/$p/status"))); done
	echo "$s"
}
alive() { local p; for p in "$@"; do kill -0 "$p" 2>/dev/null || return 1; done; }
now() { date +%s.%N; }
# a process's children must have been reaped before its cstime/cutime count them
wait_children() {
	local i
	for ((i = 0; i < 100; i++)); do
		[ -z "$(cat "/proc/$1/task/$1/children" 2>/dev/null)" ] && return 0
		sleep 0.05
	done
}

# --- results store ---------------------------------------------------------------------

declare -A RES # "metric key" -> values, one per repetition
FAILURES=()
add() { RES["$1 $2"]="${RES["$1 $2"]:-}${RES["$1 $2"]:+ }$3"; }
fail() { log "FAILED: $*"; FAILURES+=("$*"); }
median() {
	[ $# -gt 0 ] || return 0
	printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END{if(NR%2)print v[(NR+1)/2]; else printf "%.6g\n",(v[NR/2]+v[NR/2+1])/2}'
}
med() {
	# shellcheck disable=SC2086
	median ${RES["$1 $2"]:-}
}
calc() { awk "BEGIN{printf \"%.6g\", $1}"; }

# --- backends --------------------------------------------------------------------------

spawn "$T/hold.out" "$SB" serve
HOLD_PID=$SPAWNED
for ((i = 0; i < 100; i++)); do
	HOLD=$(awk '/^port /{print $2}' "$T/hold.out")
	[ -n "$HOLD" ] && break
	sleep 0.05
done
[ -n "$HOLD" ] || die "backend did not start: $(cat "$T/hold.out")"
FAR=$(free_port) # the bulk far end (socat sink/source, iperf3 -s), started per transfer
SINK=$(free_port)
if want smtp; then
	spawn "$T/smtp-sink.log" "$SMTP_SINK" -u nobody "127.0.0.1:$SINK" 1024
	SINK_PID=$SPAWNED
	wait_listen "$SINK" 10 || die "smtp-sink does not listen: $(cat "$T/smtp-sink.log")"
fi

# --- the chains ------------------------------------------------------------------------

# Ports: A (client side) and B (TLS side) of each chain, per system; rows ec, rsa (bulk),
# idle, smtp.
declare -A PA PB
for s in "${SYSTEMS[@]}"; do
	for r in ec rsa idle smtp; do PA[$s $r]=$(free_port); PB[$s $r]=$(free_port); done
done
PA[floor ec]=$(free_port)
PB[floor ec]=$(free_port)
MAXC=$((BENCH_IDLE_CONNS + 1000))
# haproxy refuses to start when maxconn needs more descriptors than the limit allows
HAPROXY_MAXCONN=$((BENCH_IDLE_CONNS + 100))
[ "$HAPROXY_MAXCONN" -le $(((NOFILE - 300) / 2)) ] || HAPROXY_MAXCONN=$(((NOFILE - 300) / 2))

# starttls-proxy: A wraps, B terminates; workers = 1 each.
{
	printf '[global]\nworkers = 1\nmax_connections = %s\nca = %s\nhelo_name = chain-a.test\n' "$MAXC" "$CA"
	for r in ec rsa idle; do
		cat <<EOF

[route $r]
listen = 127.0.0.1:${PA[stp $r]}
protocol = tcp
client_tls = none
upstream = 127.0.0.1:${PB[stp $r]}
upstream_tls = implicit
upstream_policy = verify
upstream_name = localhost
upstream_min_tls = 1.3
max_connections_per_client = 0
EOF
	done
	cat <<EOF

[route smtp]
listen = 127.0.0.1:${PA[stp smtp]}
protocol = smtp
client_tls = none
upstream = 127.0.0.1:${PB[stp smtp]}
upstream_tls = starttls
upstream_policy = verify
upstream_name = localhost
upstream_min_tls = 1.3
max_connections_per_client = 0
EOF
} >"$T/stp-a.conf"
{
	printf '[global]\nworkers = 1\nmax_connections = %s\ncert = %s\nkey = %s\nhelo_name = chain-b.test\n' \
		"$MAXC" "${CERT[ec]}" "${KEY[ec]}"
	for r in ec rsa idle; do
		up=127.0.0.1:$FAR
		[ "$r" = idle ] && up=127.0.0.1:$HOLD
		cat <<EOF

[route $r]
listen = 127.0.0.1:${PB[stp $r]}
protocol = tcp
client_tls = implicit
client_min_tls = 1.3
cert = ${CERT[${r/idle/ec}]}
key = ${KEY[${r/idle/ec}]}
upstream = $up
upstream_tls = none
max_connections_per_client = 0
EOF
	done
	cat <<EOF

[route smtp]
listen = 127.0.0.1:${PB[stp smtp]}
protocol = smtp
client_tls = starttls
client_min_tls = 1.3
upstream = 127.0.0.1:$SINK
upstream_tls = none
max_connections_per_client = 0
EOF
} >"$T/stp-b.conf"

# stunnel: A client = yes, B server; both with protocol = smtp on the smtp chain (A speaks
# STARTTLS toward B, B offers STARTTLS to A after relaying smtp-sink's greeting).
stunnel_common() { # logfile
	printf 'foreground = yes\npid =\nsyslog = no\noutput = %s\n' "$1"
}
{
	stunnel_common "$T/stunnel-a.log"
	for r in ec rsa idle smtp; do
		printf '\n[%s]\nclient = yes\naccept = 127.0.0.1:%s\nconnect = 127.0.0.1:%s\n' \
			"$r" "${PA[stunnel $r]}" "${PB[stunnel $r]}"
		printf 'CAfile = %s\nverifyChain = yes\ncheckHost = localhost\nsni = localhost\n' "$CA"
		printf 'sslVersionMin = TLSv1.3\nciphersuites = %s\n' "$CIPHER"
		[ "$r" = smtp ] && printf 'protocol = smtp\n'
	done
} >"$T/stunnel-a.conf"
{
	stunnel_common "$T/stunnel-b.log"
	for r in ec rsa idle smtp; do
		up=$FAR
		[ "$r" = idle ] && up=$HOLD
		[ "$r" = smtp ] && up=$SINK
		c=${r/idle/ec}
		c=${c/smtp/ec}
		printf '\n[%s]\naccept = 127.0.0.1:%s\nconnect = 127.0.0.1:%s\n' "$r" "${PB[stunnel $r]}" "$up"
		printf 'cert = %s\nkey = %s\nsslVersionMin = TLSv1.3\nciphersuites = %s\n' \
			"${CERT[$c]}" "${KEY[$c]}" "$CIPHER"
		[ "$r" = smtp ] && printf 'protocol = smtp\n'
	done
} >"$T/stunnel-b.conf"

# haproxy: A "server ... ssl", B "bind ... ssl"; nbthread 1 each. No STARTTLS in haproxy.
haproxy_global() { # nbthread
	cat <<EOF
global
    nbthread $1
    maxconn $HAPROXY_MAXCONN
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
    timeout client 10m
    timeout server 10m
EOF
}
{
	haproxy_global 1
	for r in ec rsa idle; do
		printf '\nfrontend %s\n    bind 127.0.0.1:%s\n    default_backend %s_be\n' "$r" "${PA[haproxy $r]}" "$r"
		printf '\nbackend %s_be\n    server b 127.0.0.1:%s ssl verify required ca-file %s sni str(localhost) verifyhost localhost\n' \
			"$r" "${PB[haproxy $r]}" "$CA"
	done
} >"$T/haproxy-a.cfg"
{
	haproxy_global 1
	for r in ec rsa idle; do
		up=$FAR
		[ "$r" = idle ] && up=$HOLD
		printf '\nfrontend %s\n    bind 127.0.0.1:%s ssl crt %s\n    default_backend %s_be\n' \
			"$r" "${PB[haproxy $r]}" "$T/haproxy-${r/idle/ec}.pem" "$r"
		printf '\nbackend %s_be\n    server far 127.0.0.1:%s\n' "$r" "$up"
	done
} >"$T/haproxy-b.cfg"

# Handshake targets: one implicit-TLS tcp route (ECDSA P-256) toward the plain backend.
declare -A HSP
HS_SYS=(stp1 stp2 stunnel haproxy1 haproxy2)
for h in "${HS_SYS[@]}"; do HSP[$h]=$(free_port); done
for w in 1 2; do
	cat >"$T/stp-hs$w.conf" <<EOF
[global]
workers = $w
cert = ${CERT[ec]}
key = ${KEY[ec]}

[route hs]
listen = 127.0.0.1:${HSP[stp$w]}
protocol = tcp
client_tls = implicit
client_min_tls = 1.3
upstream = 127.0.0.1:$HOLD
upstream_tls = none
max_connections_per_client = 0
EOF
	{
		haproxy_global "$w"
		printf '\nfrontend hs\n    bind 127.0.0.1:%s ssl crt %s\n    default_backend hs_be\n' \
			"${HSP[haproxy$w]}" "$T/haproxy-ec.pem"
		printf '\nbackend hs_be\n    server plain 127.0.0.1:%s\n' "$HOLD"
	} >"$T/haproxy-hs$w.cfg"
done
{
	stunnel_common "$T/stunnel-hs.log"
	printf '\n[hs]\naccept = 127.0.0.1:%s\nconnect = 127.0.0.1:%s\n' "${HSP[stunnel]}" "$HOLD"
	printf 'cert = %s\nkey = %s\nsslVersionMin = TLSv1.3\nciphersuites = %s\n' "${CERT[ec]}" "${KEY[ec]}" "$CIPHER"
} >"$T/stunnel-hs.conf"

for f in stp-a stp-b stp-hs1 stp-hs2; do
	"$STP_BIN" -t -c "$T/$f.conf" >"$T/$f.check" 2>&1 || die "starttls-proxy -t rejects $f.conf: $(cat "$T/$f.check")"
done
for f in haproxy-a haproxy-b haproxy-hs1 haproxy-hs2; do
	"$HAPROXY" -c -q -f "$T/$f.cfg" >"$T/$f.check" 2>&1 || die "haproxy -c $f.cfg: $(tail -3 "$T/$f.check")"
done

# CHAIN[sys] = "pidA pidB"; HSPID[h] = pid
declare -A CHAIN HSPID
start_chain() { # system
	local a b
	case $1 in
	stp)
		spawn "$T/stp-a.out" "$STP_BIN" -c "$T/stp-a.conf"; a=$SPAWNED
		spawn "$T/stp-b.out" "$STP_BIN" -c "$T/stp-b.conf"; b=$SPAWNED ;;
	stunnel)
		spawn "$T/stunnel-a.out" "$STUNNEL" "$T/stunnel-a.conf"; a=$SPAWNED
		spawn "$T/stunnel-b.out" "$STUNNEL" "$T/stunnel-b.conf"; b=$SPAWNED ;;
	haproxy)
		spawn "$T/haproxy-a.out" "$HAPROXY" -db -f "$T/haproxy-a.cfg"; a=$SPAWNED
		spawn "$T/haproxy-b.out" "$HAPROXY" -db -f "$T/haproxy-b.cfg"; b=$SPAWNED ;;
	floor)
		spawn "$T/floor-a.out" socat -b$BUF "TCP-LISTEN:${PA[floor ec]},bind=127.0.0.1,reuseaddr,fork" \
			"TCP:127.0.0.1:${PB[floor ec]}"; a=$SPAWNED
		spawn "$T/floor-b.out" socat -b$BUF "TCP-LISTEN:${PB[floor ec]},bind=127.0.0.1,reuseaddr,fork" \
			"TCP:127.0.0.1:$FAR"; b=$SPAWNED ;;
	esac
	CHAIN[$1]="$a $b"
}
chain_up() { # system rows... -> 0 when every port listens
	local s=$1 r
	shift
	for r in "$@"; do
		wait_listen "${PA[$s $r]}" 10 && wait_listen "${PB[$s $r]}" 10 || return 1
	done
}

log "starting the chains: starttls-proxy, stunnel, haproxy (A and B each), the floor's socat relays"
for s in "${SYSTEMS[@]}"; do start_chain "$s"; done
start_chain floor
declare -A CHAIN_OK
for s in "${SYSTEMS[@]}"; do
	rows=(ec rsa idle)
	[ "$s" = haproxy ] || rows+=(smtp)
	if chain_up "$s" "${rows[@]}"; then CHAIN_OK[$s]=1; else
		fail "${LABEL[$s]} chain did not start (see $T/$s-*.out / .log)"
	fi
done
if chain_up floor ec; then CHAIN_OK[floor]=1; else fail "floor socat relays did not start"; fi

if want hs || want scaling; then
	log "starting the handshake targets (starttls-proxy workers 1 and 2, stunnel, haproxy nbthread 1 and 2)"
	for w in 1 2; do
		spawn "$T/stp-hs$w.out" "$STP_BIN" -c "$T/stp-hs$w.conf"; HSPID[stp$w]=$SPAWNED
		spawn "$T/haproxy-hs$w.out" "$HAPROXY" -db -f "$T/haproxy-hs$w.cfg"; HSPID[haproxy$w]=$SPAWNED
	done
	spawn "$T/stunnel-hs.out" "$STUNNEL" "$T/stunnel-hs.conf"; HSPID[stunnel]=$SPAWNED
	for h in "${HS_SYS[@]}"; do
		wait_listen "${HSP[$h]}" 10 || { fail "${LABEL[$h]} (handshake target) did not start"; unset "HSPID[$h]"; }
	done
fi
sleep 1

# --- idle ------------------------------------------------------------------------------

if want idle; then
	log "idle: $BENCH_IDLE_CONNS idle connections through each chain (descriptor limit $NOFILE), $BENCH_IDLE_REPS times"
	for ((rep = 1; rep <= BENCH_IDLE_REPS; rep++)); do
		for s in "${SYSTEMS[@]}"; do
			[ -n "${CHAIN_OK[$s]:-}" ] || continue
			# shellcheck disable=SC2086
			set -- ${CHAIN[$s]}
			alive "$@" || { fail "idle: ${LABEL[$s]} died"; CHAIN_OK[$s]=; continue; }
			alive "$HOLD_PID" || die "idle: the backend (stpbench serve) died"
			base=$(rss_kib "$@")
			out=$T/idle.$s.$rep
			t0=$(now)
			"$SB" hold --port "${PA[$s idle]}" --conns "$BENCH_IDLE_CONNS" --max-seconds 600 >"$out" 2>&1 &
			hp=$!
			PIDS+=("$hp")
			for ((i = 0; i < 6000; i++)); do
				grep -q '^ready' "$out" && break
				kill -0 "$hp" 2>/dev/null || break
				sleep 0.1
			done
			read -r _ opened _ failed < <(grep '^ready' "$out" || echo "ready 0 failed ?")
			sleep 1
			if alive "$@"; then with=$(rss_kib "$@"); else with=""; fi
			secs=$(calc "$(now) - $t0")
			log "  idle ${LABEL[$s]}: $opened held, $failed failed, RSS $base -> ${with:-died} KiB (${secs}s)"
			if [ "$opened" = "$BENCH_IDLE_CONNS" ] && [ -n "$with" ]; then
				add idle_kib "$s" "$(calc "($with - $base) / $opened")"
				add idle_base "$s" "$base"
				add idle_with "$s" "$with"
			else
				fail "idle: ${LABEL[$s]} held $opened of $BENCH_IDLE_CONNS connections ($failed failed; see $out and the proxy logs)"
				add idle_reached "$s" "$opened"
			fi
			add idle_open_s "$s" "$secs"
			kill -TERM "$hp" 2>/dev/null || true
			wait "$hp" 2>/dev/null || true
			for ((i = 0; i < 100; i++)); do
				[ "$(ss -Htn state established "( sport = :${PA[$s idle]} or sport = :${PB[$s idle]} )" | wc -l)" = 0 ] && break
				sleep 0.1
			done
			sleep 0.5
		done
	done
fi

# --- bulk ------------------------------------------------------------------------------

GIB=1073741824
# bulk_socat SYSTEM ROW DIR: one transfer of BENCH_CHAIN_BYTES, the receiver counting bytes.
bulk_socat() {
	local s=$1 r=$2 dir=$3 a=${PA[$1 $2]} far_pid cli_pid t0 t1 c0 c1 got cnt=$T/count
	# shellcheck disable=SC2086
	set -- ${CHAIN[$s]}
	alive "$@" || { fail "bulk: ${LABEL[$s]} died"; return 0; }
	rm -f "$cnt"
	if [ "$dir" = up ]; then
		{ socat -u -b$BUF "TCP-LISTEN:$FAR,bind=127.0.0.1,reuseaddr" STDOUT | wc -c >"$cnt"; } 2>>"$T/far.err" &
	else
		socat -U -b$BUF "TCP-LISTEN:$FAR,bind=127.0.0.1,reuseaddr" \
			"OPEN:/dev/zero,readbytes=$BENCH_CHAIN_BYTES" 2>>"$T/far.err" &
	fi
	far_pid=$!
	wait_listen "$FAR" 10 || { fail "bulk: far end did not listen"; kill "$far_pid"; return 0; }
	c0=$(cpu_ticks "$@")
	t0=$(now)
	if [ "$dir" = up ]; then
		socat -u -b$BUF "OPEN:/dev/zero,readbytes=$BENCH_CHAIN_BYTES" "TCP:127.0.0.1:$a" 2>>"$T/cli.err" &
		cli_pid=$!
		wait "$cli_pid" || true
		wait "$far_pid" || true
	else
		{ socat -u -b$BUF "TCP:127.0.0.1:$a" STDOUT | wc -c >"$cnt"; } 2>>"$T/cli.err" &
		cli_pid=$!
		wait "$cli_pid" || true
		wait "$far_pid" || true
	fi
	t1=$(now)
	[ "$s" = floor ] && { wait_children "$1"; wait_children "$2"; }
	sleep 0.2
	c1=$(cpu_ticks "$@")
	got=$(cat "$cnt" 2>/dev/null || echo 0)
	if [ "$got" != "$BENCH_CHAIN_BYTES" ]; then
		fail "bulk socat $r $dir ${LABEL[$s]}: received $got of $BENCH_CHAIN_BYTES bytes"
		return 0
	fi
	add "socat_${r}_${dir}_cpu" "$s" "$(calc "($c1 - $c0) / $HZ / ($got / $GIB)")"
	add "socat_${r}_${dir}_mbps" "$s" "$(calc "$got / 1e6 / ($t1 - $t0)")"
	log "  socat $r $dir ${LABEL[$s]}: $(calc "$got / 1e6 / ($t1 - $t0)") MB/s, CPU $(calc "($c1 - $c0) / $HZ") s"
}
# bulk_iperf SYSTEM DIR: iperf3 through the ECDSA chain.
bulk_iperf() {
	local s=$1 dir=$2 far_pid c0 c1 j rflag=() bytes secs
	# shellcheck disable=SC2086
	set -- ${CHAIN[$s]}
	alive "$@" || { fail "bulk: ${LABEL[$s]} died"; return 0; }
	"$IPERF" -s -1 -B 127.0.0.1 -p "$FAR" >"$T/iperf-s.out" 2>&1 &
	far_pid=$!
	wait_listen "$FAR" 10 || { fail "bulk: iperf3 -s did not listen"; kill "$far_pid"; return 0; }
	[ "$dir" = down ] && rflag=(-R)
	c0=$(cpu_ticks "$@")
	j=$("$IPERF" -c 127.0.0.1 -p "${PA[$s ec]}" -n "$BENCH_CHAIN_BYTES" "${rflag[@]}" -J 2>&1 || true)
	wait "$far_pid" || true
	[ "$s" = floor ] && { wait_children "$1"; wait_children "$2"; }
	sleep 0.2
	c1=$(cpu_ticks "$@")
	read -r bytes secs < <(awk '/"sum_received"/{f=1} f&&/"seconds"/{gsub(/[",]/,"");s=$2} f&&/"bytes"/{gsub(/[",]/,"");print $2, s; exit}' <<<"$j")
	if [ -z "${bytes:-}" ] || [ "${bytes:-0}" = 0 ]; then
		fail "bulk iperf3 $dir ${LABEL[$s]}: $(grep -m1 '"error"' <<<"$j" || echo 'no result')"
		return 0
	fi
	add "iperf_ec_${dir}_cpu" "$s" "$(calc "($c1 - $c0) / $HZ / ($bytes / $GIB)")"
	add "iperf_ec_${dir}_mbps" "$s" "$(calc "$bytes / 1e6 / $secs")"
	log "  iperf3 $dir ${LABEL[$s]}: $(calc "$bytes / 1e6 / $secs") MB/s"
}

AES_ENC="" AES_DEC=""
if want bulk; then
	log "bulk: the floor's AES-128-GCM cost (openssl speed -evp aes-128-gcm -seconds 3 -bytes 16384, encrypt and -decrypt)"
	AES_ENC=$(openssl speed -mr -evp aes-128-gcm -seconds 3 -bytes 16384 2>/dev/null | awk -F: '/^\+F:/{print $4}')
	AES_DEC=$(openssl speed -mr -decrypt -evp aes-128-gcm -seconds 3 -bytes 16384 2>/dev/null | awk -F: '/^\+F:/{print $4}')
	if [ -z "$AES_ENC" ] || [ -z "$AES_DEC" ]; then fail "openssl speed gave no AES-128-GCM figure"; fi
	MIB=$(calc "$BENCH_CHAIN_BYTES / 1048576")
	log "bulk: $MIB MiB per transfer through each chain, socat${IPERF:+ and iperf3}, up and down, $BENCH_REPS times"
	for ((rep = 1; rep <= BENCH_REPS; rep++)); do
		for dir in up down; do
			for s in "${SYSTEMS[@]}" floor; do
				[ -n "${CHAIN_OK[$s]:-}" ] || continue
				bulk_socat "$s" ec "$dir"
				[ "$s" = floor ] || bulk_socat "$s" rsa "$dir"
				[ -z "$IPERF" ] || bulk_iperf "$s" "$dir"
			done
		done
	done
fi
AES_CPU=""
[ -n "$AES_ENC" ] && [ -n "$AES_DEC" ] && AES_CPU=$(calc "$GIB / $AES_ENC + $GIB / $AES_DEC")

# --- handshakes ------------------------------------------------------------------------

for g in X25519 P-256; do
	cat >"$T/group-$g.cnf" <<EOF
openssl_conf = openssl_init
[openssl_init]
ssl_conf = ssl_sect
[ssl_sect]
system_default = system_default_sect
[system_default_sect]
Groups = $g
MinProtocol = TLSv1.3
Ciphersuites = $CIPHER
EOF
done
# Check that the group setting reaches the client (s_time has no -groups option).
if want hs || want scaling; then
	for g in X25519 P-256; do
		want_key=$([ "$g" = X25519 ] && echo X25519 || echo prime256v1)
		got_key=$(OPENSSL_CONF=$T/group-$g.cnf openssl s_client -connect "127.0.0.1:${HSP[stp1]}" \
			</dev/null 2>&1 | sed -n 's/^Server Temp Key: \(.*\)/\1/p' || true)
		case $got_key in *"$want_key"*) log "hs: OPENSSL_CONF Groups = $g -> Server Temp Key: $got_key" ;;
		*) fail "hs: OPENSSL_CONF Groups = $g did not take (Server Temp Key: ${got_key:-none})" ;; esac
	done
fi

# hs_run KEY TARGET GROUP MODE CLIENTS: CLIENTS parallel s_time -MODE for BENCH_HS_SECONDS.
hs_run() {
	local key=$1 h=$2 g=$3 mode=$4 n=$5 pid=${HSPID[$2]:-} c0 c1 t0 t1 i conns=0 reused=0 k cl=()
	if [ -z "$pid" ] || ! alive "$pid"; then fail "hs: ${LABEL[$h]} is not running"; return 0; fi
	c0=$(cpu_ticks "$pid")
	t0=$(now)
	for ((i = 0; i < n; i++)); do
		OPENSSL_CONF=$T/group-$g.cnf openssl s_time -connect "127.0.0.1:${HSP[$h]}" "-$mode" \
			-time "$BENCH_HS_SECONDS" -www / >"$T/stime.$i" 2>&1 &
		cl+=($!)
	done
	for i in "${cl[@]}"; do wait "$i" || true; done
	t1=$(now)
	c1=$(cpu_ticks "$pid")
	for ((i = 0; i < n; i++)); do
		k=$(sed -n 's/^\([0-9][0-9]*\) connections in [0-9.]*s;.*/\1/p' "$T/stime.$i" | head -n 1)
		if [ -z "$k" ] || [ "$k" = 0 ]; then
			fail "hs $key ${LABEL[$h]} $g $mode: s_time: $(grep -m1 -iE 'error|unable' "$T/stime.$i" || echo 'no result')"
			return 0
		fi
		conns=$((conns + k))
		reused=$((reused + $(grep -E '^[*r123]+$' "$T/stime.$i" | tr -cd r | wc -c)))
	done
	add "${key}_${g}_${mode}_cpu" "$h" "$(calc "($c1 - $c0) / $HZ / $conns * 1000")"
	add "${key}_${g}_${mode}_rate" "$h" "$(calc "$conns / ($t1 - $t0)")"
	add "${key}_${g}_${mode}_cores" "$h" "$(calc "($c1 - $c0) / $HZ / ($t1 - $t0)")"
	add "${key}_${g}_${mode}_reused" "$h" "$(calc "100 * $reused / $conns")"
	log "  $key ${LABEL[$h]} $g -$mode: $conns handshakes, $(calc "$conns / ($t1 - $t0)")/s, proxy $(calc "($c1 - $c0) / $HZ / $conns * 1000") CPU-s per 1000, reused $reused"
}
if want hs; then
	log "hs: $BENCH_HS_CLIENTS x openssl s_time for ${BENCH_HS_SECONDS}s, -new and -reuse, X25519 and P-256, $BENCH_REPS times"
	for ((rep = 1; rep <= BENCH_REPS; rep++)); do
		for g in X25519 P-256; do
			for mode in new reuse; do
				for h in "${HS_SYS[@]}"; do hs_run hs "$h" "$g" "$mode" "$BENCH_HS_CLIENTS"; done
			done
		done
	done
fi
if want scaling; then
	log "scaling: starttls-proxy workers 1 vs 2, $BENCH_SCALE_CLIENTS x s_time -new X25519, $BENCH_REPS times"
	for ((rep = 1; rep <= BENCH_REPS; rep++)); do
		for h in stp1 stp2; do hs_run scale "$h" X25519 new "$BENCH_SCALE_CLIENTS"; done
	done
fi

# --- smtp ------------------------------------------------------------------------------

smtp_run() { # system ("direct": smtp-source straight into smtp-sink)
	local s=$1 port pids=() c0=0 c1=0 t0 t1 out=$T/smtp.$1 last reuse=()
	[ "$BENCH_SMTP_REUSE" = 1 ] && reuse=(-d)
	if [ "$s" = direct ]; then port=$SINK; else
		port=${PA[$s smtp]}
		# shellcheck disable=SC2206
		pids=(${CHAIN[$s]})
		alive "${pids[@]}" || { fail "smtp: ${LABEL[$s]} died"; return 0; }
		c0=$(cpu_ticks "${pids[@]}")
	fi
	alive "$SINK_PID" || { fail "smtp: smtp-sink died"; return 0; }
	t0=$(now)
	"$SMTP_SOURCE" "${reuse[@]}" -c -s "$BENCH_SMTP_SESSIONS" -m "$BENCH_SMTP_MESSAGES" -l "$BENCH_SMTP_SIZE" \
		-f bench@example.test -t sink@example.test "127.0.0.1:$port" >"$out" 2>"$out.err" || true
	t1=$(now)
	[ "$s" = direct ] || c1=$(cpu_ticks "${pids[@]}")
	last=$(tr '\r' '\n' <"$out" | grep -E '^[0-9]+$' | tail -n 1 || true)
	if [ "${last:-0}" != "$BENCH_SMTP_MESSAGES" ] || [ -s "$out.err" ]; then
		fail "smtp ${LABEL[$s]}: ${last:-0} of $BENCH_SMTP_MESSAGES messages: $(head -c 300 "$out.err")"
		return 0
	fi
	add smtp_secs "$s" "$(calc "$t1 - $t0")"
	add smtp_ms_per_msg "$s" "$(calc "($t1 - $t0) * 1000 * $BENCH_SMTP_SESSIONS / $BENCH_SMTP_MESSAGES")"
	[ "$s" = direct ] || add smtp_msg_per_cpu "$s" "$(calc "$BENCH_SMTP_MESSAGES / (($c1 - $c0) / $HZ)")"
	log "  smtp ${LABEL[$s]}: $BENCH_SMTP_MESSAGES messages in $(calc "$t1 - $t0") s, proxy CPU $(calc "($c1 - $c0) / $HZ") s"
}
if want smtp; then
	log "smtp: smtp-source -s $BENCH_SMTP_SESSIONS -m $BENCH_SMTP_MESSAGES -l $BENCH_SMTP_SIZE through the inject -> terminate chains, $BENCH_REPS times"
	for ((rep = 1; rep <= BENCH_REPS; rep++)); do
		for s in stp stunnel direct; do
			[ "$s" = direct ] || [ -n "${CHAIN_OK[$s]:-}" ] || continue
			smtp_run "$s"
		done
	done
fi

LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# --- report ----------------------------------------------------------------------------

mkdir -p "$BENCH_RESULTS"
OUT=$BENCH_RESULTS/chain.md
SUMMARY=$BENCH_RESULTS/summary.md
PNG=$BENCH_RESULTS/chain.png
log "writing $OUT, $SUMMARY, $PNG"
fmt() { if [ -z "$1" ]; then echo "n/a"; else awk -v v="$1" -v d="$2" 'BEGIN{printf "%.*f", d, v}'; fi; }
ratio() { # a b -> a/b (2 decimals) or n/a
	if [ -z "$1" ] || [ -z "$2" ] || awk -v b="$2" 'BEGIN{exit !(b==0)}'; then echo "n/a"; else
		awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", a/b}'; fi
}
# target VALUE OP LIMIT -> "met"/"missed"/"n/a" (OP: le or ge)
target() {
	if [ -z "$1" ] || [ "$1" = n/a ] || [ -z "$3" ] || [ "$3" = n/a ]; then echo "n/a"; return; fi
	if awk -v v="$1" -v l="$3" -v op="$2" 'BEGIN{exit !((op=="le") ? v<=l : v>=l)}'; then echo "**met**"; else echo "**missed**"; fi
}
per_cpu_s() { local v; v=$(med "$1" "$2"); [ -n "$v" ] && calc "1000 / $v"; } # CPU-s per 1000 -> per CPU-s

# floor per load/row/dir = relays' CPU/GiB + AES enc+dec per GiB
floor_cpu() { # load dir
	local f
	f=$(med "${1}_ec_${2}_cpu" floor)
	[ -n "$f" ] && [ -n "$AES_CPU" ] && calc "$f + $AES_CPU"
}

CPU_MODEL=$(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)
MEM_TOTAL=$(awk '/^MemTotal:/{printf "%.1f GiB", $2/1048576}' /proc/meminfo)
STP_V=$("$STP_BIN" -V 2>&1 | head -n 1 || true)
STUNNEL_V=$("$STUNNEL" -version 2>&1 | grep -E '^stunnel|^Running' | paste -sd ';' | sed 's/;/; /g' || true)
HAPROXY_V=$("$HAPROXY" -v 2>&1 | head -n 1 || true)
HAPROXY_TLS=$("$HAPROXY" -vv 2>&1 | sed -n 's/^Running on \(OpenSSL.*\)/\1/p' | head -n 1 || true)
SOCAT_V=$(socat -V 2>/dev/null | sed -n 's/^socat version \([^ ]*\).*/\1/p' | head -n 1)
IPERF_V=$([ -n "$IPERF" ] && "$IPERF" -v 2>/dev/null | head -n 1 || echo "not used")
POSTFIX_V=$(dpkg-query -W -f '${Version}' postfix 2>/dev/null || echo "?")
GNUPLOT_V=$(gnuplot --version 2>/dev/null || echo "?")

HS_G=X25519

{
	echo "# starttls-proxy in a two-leg TLS chain, side by side with stunnel and haproxy, and the floor"
	echo
	echo "Written by \`bench/chain.sh\` (\`make bench\`) on $DATE_START. Loopback only; every"
	echo "figure is the median of $BENCH_REPS runs (the systems take turns within each run)."
	echo "Chart: [chain.png](chain.png). Older single-proxy figures: [../RESULTS.md](../RESULTS.md)."
	echo
	echo "## Machine and versions"
	echo
	echo "| | |"
	echo "|---|---|"
	echo "| CPU | $CPU_MODEL, $(nproc) cores (nproc) |"
	echo "| memory / kernel | $MEM_TOTAL / Linux $(uname -r) |"
	echo "| load average (1/5/15 min) | **$LOAD_START** at the start, **$LOAD_END** at the end (load generators, backends and proxies share the $(nproc) cores; other work on the machine makes the figures noisy) |"
	echo "| starttls-proxy | $STP_V (\`workers = 1\` in the chains) |"
	echo "| stunnel | $STUNNEL_V |"
	echo "| haproxy | $HAPROXY_V (TLS: ${HAPROXY_TLS:-?}) |"
	echo "| openssl (s_time, speed) | $(openssl version) |"
	echo "| socat / iperf3 | $SOCAT_V / $IPERF_V |"
	echo "| smtp-source, smtp-sink | Postfix $POSTFIX_V |"
	echo "| gnuplot | $GNUPLOT_V |"
	if [ ${#INSTALLED[@]} -gt 0 ]; then
		echo "| installed by this run | ${INSTALLED[*]} (apt-get, services not started) |"
	fi
	echo "| sizes | bulk $BENCH_CHAIN_BYTES bytes; hs ${BENCH_HS_SECONDS} s x $BENCH_HS_CLIENTS clients; scaling $BENCH_SCALE_CLIENTS clients; smtp $BENCH_SMTP_MESSAGES x $BENCH_SMTP_SIZE B, $BENCH_SMTP_SESSIONS sessions; idle $BENCH_IDLE_CONNS connections ($IDLE_ASKED asked) |"
	echo
	echo "## The chain"
	echo
	echo "\`plain client -> proxy A (plain in, TLS out) -> TLS 1.3 -> proxy B (TLS in, plain out) -> plain backend\`,"
	echo "two processes per system, on loopback:"
	echo
	echo "- **starttls-proxy**: A \`protocol = tcp\`, \`client_tls = none\`, \`upstream_tls = implicit\`,"
	echo "  \`upstream_policy = verify\`, \`upstream_name = localhost\`; B \`client_tls = implicit\`,"
	echo "  \`upstream_tls = none\`; \`workers = 1\` each, default \`log_level = info\` to a file."
	echo "- **stunnel**: A \`client = yes\` with \`verifyChain\` + \`checkHost = localhost\`; B a server"
	echo "  service; defaults otherwise (one thread per connection)."
	echo "- **haproxy**: A \`server ... ssl verify required ... verifyhost localhost\`; B \`bind ... ssl crt\`;"
	echo "  \`nbthread 1\`, \`mode tcp\`, \`option tcplog\` to a file."
	echo "- **floor**: two \`socat -b$BUF TCP-LISTEN:PORT,bind=127.0.0.1,reuseaddr,fork TCP:127.0.0.1:NEXT\`"
	echo "  relays in the positions of A and B (\`fork\` keeps the listener; the child's CPU is read"
	echo "  from the parent's cutime/cstime once reaped), **plus** twice the AES-128-GCM cost:"
	echo "  \`openssl speed -evp aes-128-gcm -seconds 3 -bytes 16384\` (encrypt: $(fmt "$(calc "${AES_ENC:-0} / 1e6")" 0) MB/s)"
	echo "  and the same with \`-decrypt\` ($(fmt "$(calc "${AES_DEC:-0} / 1e6")" 0) MB/s): $(fmt "$AES_CPU" 3) CPU-s per GiB for one"
	echo "  encryption and one decryption. The floor is what relaying plus the TLS record cipher"
	echo "  cost at the least on this machine; the proxies' figures are shown as multiples of it."
	echo "- TLS 1.3 only, \`$CIPHER\`, the ECDSA P-256 leaf of \`scripts/gen-test-certs.sh\`; the RSA"
	echo "  row uses an RSA-2048 leaf the script signs with the same test CA."
	echo "- Proxy CPU: \`/proc/PID/stat\` utime+stime+cutime+cstime of A and B, summed, before and after"
	echo "  each measurement. MB/s = 10^6 bytes/s, wall time from the client's start to the"
	echo "  receiver's last byte (the receiver counts the bytes: a short transfer is a failure)."
	echo
	if want idle; then
		echo "## Idle connections: RSS per connection through the chain"
		echo
		echo "Client: \`stpbench hold --port A --conns $BENCH_IDLE_CONNS\` (bench/stpbench.c: opens the connections one"
		echo "by one, one ping round trip to the backend each, then holds them); backend: \`stpbench serve\`"
		echo "(epoll, answers the ping, holds). *per conn* = (VmRSS of A+B with the connections, 1 s"
		echo "after the last one opened - VmRSS of A+B just before) / $BENCH_IDLE_CONNS. Descriptor limit: $NOFILE."
		echo "$BENCH_IDLE_REPS repetition(s) (BENCH_IDLE_REPS). *open s*: time to open them all, one by one."
		echo
		echo "| system | A+B before KiB | A+B with $BENCH_IDLE_CONNS KiB | per conn KiB | open s | target |"
		echo "|---|---:|---:|---:|---:|---|"
		for s in "${SYSTEMS[@]}"; do
			t=""
			[ "$s" = stp ] && t="<= 20 KiB: $(target "$(med idle_kib stp)" le 20)"
			reached=$(med idle_reached "$s")
			pc=$(fmt "$(med idle_kib "$s")" 1)
			[ -n "$reached" ] && [ "$pc" = n/a ] && pc="n/a (reached $reached)"
			echo "| ${LABEL[$s]} | $(fmt "$(med idle_base "$s")" 0) | $(fmt "$(med idle_with "$s")" 0) | $pc | $(fmt "$(med idle_open_s "$s")" 0) | $t |"
		done
		r=$(ratio "$(med idle_kib stunnel)" "$(med idle_kib stp)")
		echo "| **stunnel / starttls-proxy** | | | **$r** | | >= 1.5: $(target "$r" ge 1.5) |"
		echo "| **haproxy / starttls-proxy** | | | **$(ratio "$(med idle_kib haproxy)" "$(med idle_kib stp)")** | | |"
		echo
	fi
	if want bulk; then
		echo "## Bulk through the chain: proxy CPU-seconds per GiB (A+B) and wall MB/s"
		echo
		echo "$(fmt "$MIB" 0) MiB per transfer, one connection. Load (socat):"
		echo
		echo '```sh'
		echo "# upload: far end, then client"
		echo "socat -u -b$BUF TCP-LISTEN:FAR,bind=127.0.0.1,reuseaddr STDOUT | wc -c"
		echo "socat -u -b$BUF OPEN:/dev/zero,readbytes=$BENCH_CHAIN_BYTES TCP:127.0.0.1:A"
		echo "# download"
		echo "socat -U -b$BUF TCP-LISTEN:FAR,bind=127.0.0.1,reuseaddr OPEN:/dev/zero,readbytes=$BENCH_CHAIN_BYTES"
		echo "socat -u -b$BUF TCP:127.0.0.1:A STDOUT | wc -c"
		if [ -n "$IPERF" ]; then
			echo "# iperf3 (ECDSA chain only)"
			echo "iperf3 -s -1 -B 127.0.0.1 -p FAR"
			echo "iperf3 -c 127.0.0.1 -p A -n $BENCH_CHAIN_BYTES [-R] -J"
		fi
		echo '```'
		echo
		echo "*x floor*: CPU/GiB divided by the floor of the same load and direction (socat relays"
		echo "measured with that load + $(fmt "$AES_CPU" 3) s/GiB of AES-128-GCM). Targets: starttls-proxy"
		echo "<= 1.15 x floor; stunnel and haproxy >= 1.6 x starttls-proxy's CPU/GiB."
		echo
		loads=(socat)
		[ -n "$IPERF" ] && loads+=(iperf)
		for load in "${loads[@]}"; do
			rows=(ec rsa)
			[ "$load" = iperf ] && rows=(ec)
			echo "### Load: $load"
			echo
			echo "| system | cert | up CPU s/GiB | up x floor | up MB/s | down CPU s/GiB | down x floor | down MB/s |"
			echo "|---|---|---:|---:|---:|---:|---:|---:|"
			fu=$(floor_cpu "$load" up)
			fd=$(floor_cpu "$load" down)
			for s in "${SYSTEMS[@]}"; do
				for r in "${rows[@]}"; do
					cu=$(med "${load}_${r}_up_cpu" "$s")
					cd=$(med "${load}_${r}_down_cpu" "$s")
					echo "| ${LABEL[$s]} | ${LABEL[$r]} | $(fmt "$cu" 3) | $(ratio "$cu" "$fu") | $(fmt "$(med "${load}_${r}_up_mbps" "$s")" 0) | $(fmt "$cd" 3) | $(ratio "$cd" "$fd") | $(fmt "$(med "${load}_${r}_down_mbps" "$s")" 0) |"
				done
			done
			echo "| *socat relays alone* | none | *$(fmt "$(med "${load}_ec_up_cpu" floor)" 3)* | | *$(fmt "$(med "${load}_ec_up_mbps" floor)" 0)* | *$(fmt "$(med "${load}_ec_down_cpu" floor)" 3)* | | *$(fmt "$(med "${load}_ec_down_mbps" floor)" 0)* |"
			echo "| **floor** (relays + AES enc+dec) | | **$(fmt "$fu" 3)** | 1.00 | | **$(fmt "$fd" 3)** | 1.00 | |"
			for r in "${rows[@]}"; do
				su=$(med "${load}_${r}_up_cpu" stp)
				sd=$(med "${load}_${r}_down_cpu" stp)
				for peer in stunnel haproxy; do
					pu=$(ratio "$(med "${load}_${r}_up_cpu" "$peer")" "$su")
					pd=$(ratio "$(med "${load}_${r}_down_cpu" "$peer")" "$sd")
					echo "| ${LABEL[$peer]} CPU / starttls-proxy CPU, ${LABEL[$r]} | | **$pu** ($(target "$pu" ge 1.6)) | | | **$pd** ($(target "$pd" ge 1.6)) | | |"
				done
				echo "| starttls-proxy x floor, ${LABEL[$r]}: target <= 1.15 | | $(target "$(ratio "$su" "$fu")" le 1.15) | | | $(target "$(ratio "$sd" "$fd")" le 1.15) | | |"
			done
			echo
		done
	fi
	if want hs; then
		echo "## Handshakes: proxy CPU per 1,000 handshakes, implicit-TLS tcp route"
		echo
		echo "\`client -> proxy (client_tls = implicit, ECDSA P-256) -> plain backend\` (the proxy opens a backend"
		echo "connection for every handshake, full or resumed). Load: $BENCH_HS_CLIENTS parallel s_time processes"
		echo "for ${BENCH_HS_SECONDS} s per measurement:"
		echo
		echo '```sh'
		echo "OPENSSL_CONF=group.cnf openssl s_time -connect 127.0.0.1:PORT -new   -time $BENCH_HS_SECONDS -www /"
		echo "OPENSSL_CONF=group.cnf openssl s_time -connect 127.0.0.1:PORT -reuse -time $BENCH_HS_SECONDS -www /"
		echo '```'
		echo
		echo "s_time has no \`-groups\` option: the group is set through \`OPENSSL_CONF\`, a config file"
		echo "whose \`system_default\` section says \`Groups = X25519\` (or \`P-256\`), \`MinProtocol = TLSv1.3\`,"
		echo "\`Ciphersuites = $CIPHER\`; the script checks with \`openssl s_client\` that the server's"
		echo "temporary key is of that group. \`-www /\` makes s_time send a request and read until the"
		echo "connection closes (the backend closes on it, the proxy passes the close on), so it reads"
		echo "the TLS 1.3 session tickets and \`-reuse\` really resumes (*resumed %* counts s_time's \`r\`"
		echo "marks). *per CPU-s*: handshakes per second of proxy CPU = 1000 / (CPU-s per 1000)."
		echo "stunnel: defaults (a thread per connection); haproxy \`nbthread 1\` and \`2\`."
		echo
		echo "| system | group | full: CPU-s / 1000 | full: per CPU-s | full: hs/s | resumed: CPU-s / 1000 | resumed: per CPU-s | resumed: hs/s | resumed % | resumed / full per CPU-s |"
		echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
		for g in X25519 P-256; do
			for h in "${HS_SYS[@]}"; do
				nf=$(per_cpu_s "hs_${g}_new_cpu" "$h")
				nr=$(per_cpu_s "hs_${g}_reuse_cpu" "$h")
				echo "| ${LABEL[$h]} | $g | $(fmt "$(med "hs_${g}_new_cpu" "$h")" 3) | $(fmt "$nf" 0) | $(fmt "$(med "hs_${g}_new_rate" "$h")" 0) | $(fmt "$(med "hs_${g}_reuse_cpu" "$h")" 3) | $(fmt "$nr" 0) | $(fmt "$(med "hs_${g}_reuse_rate" "$h")" 0) | $(fmt "$(med "hs_${g}_reuse_reused" "$h")" 0) | $(ratio "$nr" "$nf") |"
			done
		done
		echo
		echo "Targets (starttls-proxy \`workers = 1\` against stunnel and haproxy \`nbthread 1\`, full handshakes per proxy CPU-second; resumed vs full):"
		echo
		echo "| group | vs haproxy (>= 1.5) | vs stunnel (>= 2.5) | resumed / full (>= 3) |"
		echo "|---|---:|---:|---:|"
		for g in X25519 P-256; do
			sf=$(per_cpu_s "hs_${g}_new_cpu" stp1)
			vh=$(ratio "$sf" "$(per_cpu_s "hs_${g}_new_cpu" haproxy1)")
			vs=$(ratio "$sf" "$(per_cpu_s "hs_${g}_new_cpu" stunnel)")
			rf=$(ratio "$(per_cpu_s "hs_${g}_reuse_cpu" stp1)" "$sf")
			echo "| $g | $vh $(target "$vh" ge 1.5) | $vs $(target "$vs" ge 2.5) | $rf $(target "$rf" ge 3) |"
		done
		echo
	fi
	if want scaling; then
		echo "## Scaling: starttls-proxy workers = 1 vs 2 (full handshakes, X25519)"
		echo
		echo "$BENCH_SCALE_CLIENTS parallel \`openssl s_time -new -time $BENCH_HS_SECONDS -www /\` against the same route. The"
		echo "s_time clients (OpenSSL, about as much CPU per handshake as the proxy or more) share the"
		echo "$(nproc) cores with the proxy, so the handshake rate is bounded by the clients as much as by"
		echo "the proxy; *proxy cores* says how much CPU the proxy got."
		echo
		echo "| workers | handshakes/s | proxy CPU-s / 1000 | proxy cores |"
		echo "|---|---:|---:|---:|"
		for w in 1 2; do
			echo "| $w | $(fmt "$(med scale_X25519_new_rate "stp$w")" 0) | $(fmt "$(med scale_X25519_new_cpu "stp$w")" 3) | $(fmt "$(med scale_X25519_new_cores "stp$w")" 2) |"
		done
		sr=$(ratio "$(med scale_X25519_new_rate stp2)" "$(med scale_X25519_new_rate stp1)")
		echo "| **2 / 1** | **$sr** (target >= 1.8: $(target "$sr" ge 1.8)) | | |"
		echo
	fi
	if want smtp; then
		echo "## SMTP: inject -> terminate"
		echo
		echo "\`smtp-source -> A (plain in, STARTTLS out) -> B (STARTTLS in, plain out) -> smtp-sink\`."
		echo "starttls-proxy: A \`protocol = smtp\`, \`client_tls = none\`, \`upstream_tls = starttls\`,"
		echo "\`upstream_policy = verify\`; B \`client_tls = starttls\`, \`upstream_tls = none\`. stunnel: A"
		echo "\`client = yes\` + \`protocol = smtp\` (reads B's greeting, sends EHLO and STARTTLS); B"
		echo "\`protocol = smtp\` (server side: relays smtp-sink's greeting, answers EHLO with STARTTLS"
		echo "itself). haproxy has no STARTTLS: no haproxy row. Load:"
		echo
		echo '```sh'
		echo "smtp-sink -u nobody 127.0.0.1:SINK 1024"
		echo "smtp-source $([ "$BENCH_SMTP_REUSE" = 1 ] && echo '-d ')-c -s $BENCH_SMTP_SESSIONS -m $BENCH_SMTP_MESSAGES -l $BENCH_SMTP_SIZE -f bench@example.test -t sink@example.test 127.0.0.1:A"
		echo '```'
		echo
		if [ "$BENCH_SMTP_REUSE" = 1 ]; then
			echo "\`-d\` (BENCH_SMTP_REUSE=1): each of the $BENCH_SMTP_SESSIONS sessions sends its messages over one"
			echo "connection, so one STARTTLS handshake between A and B per session."
		else
			echo "One SMTP session (and one STARTTLS handshake between A and B) per message, as smtp-source"
			echo "does without \`-d\` (BENCH_SMTP_REUSE=1 adds it)."
		fi
		echo "*latency*: wall time x sessions / messages (mean time one session spends per message;"
		echo "smtp-source reports no per-message times); *no proxy*: smtp-source straight into smtp-sink."
		echo
		echo "| system | messages per proxy CPU-s | wall s | latency ms/msg |"
		echo "|---|---:|---:|---:|"
		for s in stp stunnel direct; do
			echo "| ${LABEL[$s]} | $(fmt "$(med smtp_msg_per_cpu "$s")" 0) | $(fmt "$(med smtp_secs "$s")" 1) | $(fmt "$(med smtp_ms_per_msg "$s")" 2) |"
		done
		r=$(ratio "$(med smtp_msg_per_cpu stp)" "$(med smtp_msg_per_cpu stunnel)")
		echo "| **starttls-proxy / stunnel** | **$r** (target >= 2: $(target "$r" ge 2)) | | |"
		echo
	fi
	if [ ${#NOTES[@]} -gt 0 ] || [ ${#FAILURES[@]} -gt 0 ]; then
		echo "## Notes and failures"
		echo
		for n in "${NOTES[@]}"; do echo "- $n"; done
		for n in "${FAILURES[@]}"; do echo "- **failed**: $n"; done
		echo
	fi
	echo "## Raw values (one per repetition)"
	echo
	echo '```'
	for k in $(printf '%s\n' "${!RES[@]}" | awk '{print $1}' | sort -u); do
		for s in "${SYSTEMS[@]}" floor direct "${HS_SYS[@]}"; do
			[ -n "${RES["$k $s"]:-}" ] && printf '%-26s %-26s %s\n' "$k" "${LABEL[$s]}" "${RES["$k $s"]}"
		done
	done
	echo "aes-128-gcm bytes/s: encrypt ${AES_ENC:-n/a}, decrypt ${AES_DEC:-n/a}"
	echo '```'
	echo
	echo "## How to reproduce"
	echo
	echo '```sh'
	echo 'make && make bench      # or: STP_BIN=./starttls-proxy bash bench/chain.sh'
	echo '```'
	echo
	echo "Knobs: \`BENCH_CHAIN_SCENARIOS\` (\"idle bulk hs scaling smtp\"), \`BENCH_REPS\` (3),"
	echo "\`BENCH_CHAIN_BYTES\` (1 GiB), \`BENCH_IPERF\` (auto/0/1), \`BENCH_HS_SECONDS\` (5),"
	echo "\`BENCH_HS_CLIENTS\` (2), \`BENCH_SCALE_CLIENTS\` (4), \`BENCH_SMTP_MESSAGES\` (20000),"
	echo "\`BENCH_SMTP_SESSIONS\` (20), \`BENCH_SMTP_SIZE\` (10240), \`BENCH_SMTP_REUSE\` (0),"
	echo "\`BENCH_IDLE_CONNS\` (10000), \`BENCH_IDLE_REPS\` (1),"
	echo "\`BENCH_RESULTS\`, \`BENCH_KEEP=1\`. This run took $((SECONDS / 60)) min $((SECONDS % 60)) s."
} >"$OUT.tmp"
mv "$OUT.tmp" "$OUT"

# --- summary (README) ------------------------------------------------------------------

{
	echo "| metric (chain of two proxies, loopback) | starttls-proxy | stunnel | haproxy | floor | target |"
	echo "|---|---:|---:|---:|---:|---|"
	if want bulk; then
		for dir in up down; do
			fl=$(floor_cpu socat "$dir")
			sv=$(med "socat_ec_${dir}_cpu" stp)
			echo "| bulk $dir, proxy CPU-s per GiB (ECDSA, socat) | $(fmt "$sv" 2) ($(ratio "$sv" "$fl")x floor) | $(fmt "$(med "socat_ec_${dir}_cpu" stunnel)" 2) | $(fmt "$(med "socat_ec_${dir}_cpu" haproxy)" 2) | $(fmt "$fl" 2) | <= 1.15x floor: $(target "$(ratio "$sv" "$fl")" le 1.15) |"
			echo "| bulk $dir, MB/s | $(fmt "$(med "socat_ec_${dir}_mbps" stp)" 0) | $(fmt "$(med "socat_ec_${dir}_mbps" stunnel)" 0) | $(fmt "$(med "socat_ec_${dir}_mbps" haproxy)" 0) | $(fmt "$(med "socat_ec_${dir}_mbps" floor)" 0) | |"
		done
	fi
	if want hs; then
		sf=$(per_cpu_s "hs_${HS_G}_new_cpu" stp1)
		echo "| full TLS 1.3 handshakes per proxy CPU-s ($HS_G) | $(fmt "$sf" 0) | $(fmt "$(per_cpu_s "hs_${HS_G}_new_cpu" stunnel)" 0) | $(fmt "$(per_cpu_s "hs_${HS_G}_new_cpu" haproxy1)" 0) | | >= 1.5x haproxy: $(target "$(ratio "$sf" "$(per_cpu_s "hs_${HS_G}_new_cpu" haproxy1)")" ge 1.5), >= 2.5x stunnel: $(target "$(ratio "$sf" "$(per_cpu_s "hs_${HS_G}_new_cpu" stunnel)")" ge 2.5) |"
		sr=$(per_cpu_s "hs_${HS_G}_reuse_cpu" stp1)
		echo "| resumed handshakes per proxy CPU-s ($HS_G) | $(fmt "$sr" 0) | $(fmt "$(per_cpu_s "hs_${HS_G}_reuse_cpu" stunnel)" 0) | $(fmt "$(per_cpu_s "hs_${HS_G}_reuse_cpu" haproxy1)" 0) | | >= 3x full: $(target "$(ratio "$sr" "$sf")" ge 3) |"
	fi
	if want idle; then
		echo "| idle, KiB RSS per connection (A+B, $BENCH_IDLE_CONNS conns) | $(fmt "$(med idle_kib stp)" 1) | $(fmt "$(med idle_kib stunnel)" 1) | $(fmt "$(med idle_kib haproxy)" 1) | | <= 20: $(target "$(med idle_kib stp)" le 20), stunnel >= 1.5x: $(target "$(ratio "$(med idle_kib stunnel)" "$(med idle_kib stp)")" ge 1.5) |"
	fi
	if want smtp; then
		echo "| smtp, messages per proxy CPU-s | $(fmt "$(med smtp_msg_per_cpu stp)" 0) | $(fmt "$(med smtp_msg_per_cpu stunnel)" 0) | (no STARTTLS) | | >= 2x stunnel: $(target "$(ratio "$(med smtp_msg_per_cpu stp)" "$(med smtp_msg_per_cpu stunnel)")" ge 2) |"
	fi
	if want scaling; then
		sr=$(ratio "$(med scale_X25519_new_rate stp2)" "$(med scale_X25519_new_rate stp1)")
		echo "| handshakes/s, workers 2 / workers 1 | $sr | | | | >= 1.8: $(target "$sr" ge 1.8) |"
	fi
	echo
	echo "$(nproc) cores ($CPU_MODEL), load average $LOAD_START at the start and $LOAD_END at the end of the run, $DATE_START; medians of $BENCH_REPS (idle: $BENCH_IDLE_REPS); details: [chain.md](chain.md)."
} >"$SUMMARY"

# --- chart -----------------------------------------------------------------------------

val() { local v; v=$(med "$1" "$2"); echo "${v:-?}"; }
{
	echo "# row stp stunnel haproxy floor"
	for dir in up down; do
		echo "\"$dir ECDSA\" $(val socat_ec_${dir}_cpu stp) $(val socat_ec_${dir}_cpu stunnel) $(val socat_ec_${dir}_cpu haproxy) $(v=$(floor_cpu socat "$dir"); echo "${v:-?}")"
		echo "\"$dir RSA\" $(val socat_rsa_${dir}_cpu stp) $(val socat_rsa_${dir}_cpu stunnel) $(val socat_rsa_${dir}_cpu haproxy) $(v=$(floor_cpu socat "$dir"); echo "${v:-?}")"
	done
} >"$T/bulk.dat"
pcs() { local v; v=$(per_cpu_s "$1" "$2"); echo "${v:-?}"; }
{
	echo "# row stp1 stp2 stunnel haproxy1 haproxy2"
	for g in X25519 P-256; do
		for mode in new reuse; do
			m=full
			[ "$mode" = reuse ] && m=resumed
			echo "\"$g $m\" $(pcs "hs_${g}_${mode}_cpu" stp1) $(pcs "hs_${g}_${mode}_cpu" stp2) $(pcs "hs_${g}_${mode}_cpu" stunnel) $(pcs "hs_${g}_${mode}_cpu" haproxy1) $(pcs "hs_${g}_${mode}_cpu" haproxy2)"
		done
	done
} >"$T/hs.dat"
{
	echo "# metric stp stunnel haproxy"
	echo "\"idle KiB/conn\" $(val idle_kib stp) $(val idle_kib stunnel) $(val idle_kib haproxy)"
	echo "\"smtp msg/CPU-s\" $(val smtp_msg_per_cpu stp) $(val smtp_msg_per_cpu stunnel) ?"
} >"$T/misc.dat"
# one panel per scenario that has figures
has_data() { awk '!/^#/{for(i=2;i<=NF;i++) if($i ~ /^[0-9.]+([eE][-+]?[0-9]+)?$/) f=1} END{exit !f}' "$@"; }
sed -n 2p "$T/misc.dat" >"$T/idle.dat"
sed -n 3p "$T/misc.dat" >"$T/smtp.dat"
PLOTS=()
has_data "$T/bulk.dat" && PLOTS+=("set title \"bulk: proxy CPU-s per GiB (A+B, socat load; lower is better)\"
plot \"$T/bulk.dat\" using 2:xtic(1) title \"starttls-proxy\", '' using 3 title \"stunnel\", '' using 4 title \"haproxy\", '' using 5 title \"floor\"")
has_data "$T/hs.dat" && PLOTS+=("set title \"handshakes per proxy CPU-second (higher is better)\"
plot \"$T/hs.dat\" using 2:xtic(1) title \"starttls-proxy w1\", '' using 3 title \"starttls-proxy w2\", '' using 4 title \"stunnel\", '' using 5 title \"haproxy nbthread 1\", '' using 6 title \"haproxy nbthread 2\"")
has_data "$T/idle.dat" && PLOTS+=("set title \"idle: KiB RSS per connection through the chain (lower is better)\"
plot \"$T/idle.dat\" using 2:xtic(1) title \"starttls-proxy\", '' using 3 title \"stunnel\", '' using 4 title \"haproxy\"")
has_data "$T/smtp.dat" && PLOTS+=("set title \"smtp: messages per proxy CPU-second (higher is better)\"
plot \"$T/smtp.dat\" using 2:xtic(1) title \"starttls-proxy\", '' using 3 title \"stunnel\"")
case ${#PLOTS[@]} in 0) LAYOUT="" ;; 1) LAYOUT="1,1" ;; 2) LAYOUT="1,2" ;; *) LAYOUT="2,2" ;; esac
HEIGHT=1000
[ "${LAYOUT%%,*}" = 1 ] && HEIGHT=560
{
	cat <<EOF
set terminal pngcairo size 1400,$HEIGHT font ",10"
set output "$PNG"
set datafile missing "?"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set key top left opaque
set grid ytics
set yrange [0:*]
set multiplot layout $LAYOUT title "starttls-proxy vs stunnel vs haproxy, two-leg TLS chain ($DATE_START, $(nproc) cores, load $LOAD_START)"
EOF
	printf '%s\n' "${PLOTS[@]}"
	echo "unset multiplot"
} >"$T/chain.gp"
if [ -z "$LAYOUT" ]; then
	log "no figures to chart"
	rm -f "$PNG"
elif ! gnuplot "$T/chain.gp" 2>"$T/gnuplot.err"; then
	log "gnuplot: $(head -c 400 "$T/gnuplot.err")"
	sed -i 's/^set terminal pngcairo.*/set terminal png size 1400,1000/' "$T/chain.gp"
	gnuplot "$T/chain.gp" 2>>"$T/gnuplot.err" || fail "gnuplot failed: $(tail -c 400 "$T/gnuplot.err")"
fi

log "done in ${SECONDS}s: $OUT ($(cut -d' ' -f1-3 /proc/loadavg) load now)"
if [ ${#FAILURES[@]} -gt 0 ]; then
	log "${#FAILURES[@]} failure(s):"
	printf '  %s\n' "${FAILURES[@]}" >&2
	exit 1
fi
