# shellcheck shell=bash
# dns_lib.sh - a private authoritative DNS server for tests: NSD (unpacked by scripts/deps.sh
# under /var/cache/starttls-proxy/nsd-root, never installed nor run as a service) serving
# one zone on 127.0.0.1 and a free port, DNSSEC-signed on request with keys made for it.
# Point the code under test at it as its forwarder (dns_opts.resolver = $DNS_RESOLVER) with
# $DNS_ANCHOR as trust anchor. Use names under ".example" (libunbound answers .test,
# .invalid, .onion and localhost itself).
#
# Sourced by an integration test, after lib.sh (the server is one of the test's PIDS: lib.sh's
# cleanup stops it however the test ends; a failure to start is a FAIL and exits):
#
#   dns_zone_start DIR ZONE BODY [signed|unsigned]
#       DIR   a directory of its own for this server (made; e.g. $T/dns): zone, keys,
#             nsd.conf, nsd.log, anchor, state.
#       ZONE  the zone, e.g. "example." (the trailing dot is optional).
#       BODY  a file of records in zone-file syntax, names relative to ZONE ($ORIGIN ZONE,
#             $TTL 300 are set); the SOA (serial 1), "@ NS ns" and "ns A 127.0.0.1" are
#             added.
#       signed (default unsigned): a KSK and a ZSK made by ldns-keygen (ECDSAP256SHA256),
#             signed by ldns-signzone with NSEC, signatures valid from now-1h to now+1d.
#       DNS_BOGUS_NAMES="OWNER TYPE [OWNER TYPE ...]" (environment; signed zones): the RRSIG
#             over each of these RRsets gets a corrupt signature, so a validating resolver
#             finds the answer bogus (OWNER relative to ZONE or absolute: "bogus A",
#             "bogus.example. A"). Each must match an RRSIG, or the start fails.
#       Returns once nsd answers the zone's SOA (queried with drill until it does, 10 s at
#       most). Sets DNS_PORT, DNS_PID (nsd's main process), DNS_RESOLVER (127.0.0.1:PORT)
#       and DNS_ANCHOR (DIR/anchor: the KSK's DS record, a trust anchor file for
#       ub_ctx_add_ta_file / dns_opts.trust_anchor; "" for an unsigned zone).
#   dns_zone_reload DIR BODY
#       Serves BODY instead (same zone, keys, bogus names; SOA serial + 1): re-signs, sends
#       nsd SIGHUP and returns once the new serial is served.
#   dns_zone_stop DIR
#       SIGTERM, and waits for nsd to exit.
#
# Run as a command (the unit tests do, through system()):
#
#   bash tests/integration/dns_lib.sh start DIR ZONE BODY [signed|unsigned] [OWNER_PID]
#       as dns_zone_start, then prints DNS_PORT=..., DNS_PID=..., DNS_RESOLVER=...,
#       DNS_ANCHOR=... lines and exits 0, leaving nsd running in the caller's process
#       group; with OWNER_PID, nsd is also stopped once that process is gone (a unit test
#       binary that crashed). Exits 1 with the reason on stderr when it cannot start.
#   bash tests/integration/dns_lib.sh reload DIR BODY
#   bash tests/integration/dns_lib.sh stop DIR
#
# DIR/state keeps what reload and stop need (ZONE, PORT, PID, SIGNED, SERIAL, KEYS, BOGUS).

DNS_NSD=${DNS_NSD:-/var/cache/starttls-proxy/nsd-root/usr/sbin/nsd}
# DNS_PREFIX (an array, e.g. (ip netns exec NS)): what nsd and the checks run under, for a
# server inside the test's own network namespace (sourced use only).
# (exec: called only in subshells, a pipeline, $(...) or &, whose pid must be the program's)
_dns_pre() { exec ${DNS_PREFIX+"${DNS_PREFIX[@]}"} "$@"; }
DNS_PORT=""
DNS_PID=""
DNS_RESOLVER=""
DNS_ANCHOR=""

# _dns_fail WHAT WHY: a FAIL line and exit when sourced by a test (lib.sh's fail), else the
# reason on stderr and status 1.
_dns_fail() {
	if [ -z "${_DNS_CLI:-}" ] && declare -F fail >/dev/null; then
		fail "$1" "$2"
		exit 1
	fi
	echo "dns_lib: $1: $2" >&2
	return 1
}

_dns_abs() { case $1 in *.) echo "$1" ;; *) echo "$1." ;; esac; }

# _dns_write_zone DIR BODY: DIR/zone from the state and BODY, then DIR/zone.signed when
# signed (with the bogus names corrupted).
_dns_write_zone() {
	local dir=$1 body=$2 zone serial signed keys bogus now
	zone=$(_dns_state "$dir" ZONE)
	serial=$(_dns_state "$dir" SERIAL)
	signed=$(_dns_state "$dir" SIGNED)
	[ -f "$body" ] || { _dns_fail "dns_zone($zone)" "no zone body file $body"; return 1; }
	{
		echo "\$ORIGIN $zone"
		echo "\$TTL 300"
		echo "@ IN SOA ns.$zone hostmaster.$zone $serial 3600 600 86400 300"
		echo "@ IN NS ns.$zone"
		echo "ns IN A 127.0.0.1"
		cat "$body"
		echo
	} >"$dir/zone"
	if [ "$signed" != signed ]; then
		cp "$dir/zone" "$dir/zone.served"
		return 0
	fi
	keys=$(_dns_state "$dir" KEYS)
	bogus=$(_dns_state "$dir" BOGUS)
	now=$(date +%s)
	# shellcheck disable=SC2086 # two key base names
	if ! (cd "$dir" && ldns-signzone -o "$zone" -i $((now - 3600)) -e $((now + 86400)) \
		-f zone.signed zone $keys) >"$dir/sign.log" 2>&1; then
		_dns_fail "dns_zone($zone)" "ldns-signzone: $(tail -n 3 "$dir/sign.log")"
		return 1
	fi
	# shellcheck disable=SC2086 # OWNER TYPE pairs
	if ! python3 - "$dir/zone.signed" "$dir/zone.served" "$zone" $bogus \
		>"$dir/bogus.log" 2>&1 <<'EOF'; then
import base64, sys
src, dst, zone, *names = sys.argv[1:]
if len(names) % 2:
    sys.exit("DNS_BOGUS_NAMES: OWNER TYPE pairs expected")
def absolute(n):
    n = n.lower()
    if n.endswith("."):
        return n
    return (n + "." + zone).lower() if n != "@" else zone.lower()
want = {(absolute(names[i]), names[i + 1].upper()) for i in range(0, len(names), 2)}
hit = set()
out = []
for line in open(src):
    f = line.split()
    if len(f) > 12 and f[3] == "RRSIG" and (f[0].lower(), f[4].upper()) in want:
        sig = bytearray(base64.b64decode("".join(f[12:])))
        sig[len(sig) // 2] ^= 0x5A
        line = "\t".join(f[:12] + [base64.b64encode(bytes(sig)).decode()]) + "\n"
        hit.add((f[0].lower(), f[4].upper()))
    out.append(line)
missing = want - hit
if missing:
    sys.exit("no RRSIG for " + ", ".join("%s %s" % m for m in sorted(missing)))
open(dst, "w").writelines(out)
EOF
		_dns_fail "dns_zone($zone)" "DNS_BOGUS_NAMES: $(tail -n 1 "$dir/bogus.log")"
		return 1
	fi
}

_dns_state() { sed -n "s/^$2=//p" "$1/state" 2>/dev/null | tail -n 1; }
_dns_set_state() {
	local dir=$1 key=$2 val=$3
	{ grep -v "^$key=" "$dir/state" 2>/dev/null; echo "$key=$val"; } >"$dir/state.new"
	mv "$dir/state.new" "$dir/state"
}

# _dns_serial PORT ZONE: the SOA serial served, or nothing.
_dns_serial() {
	_dns_pre drill -p "$1" @127.0.0.1 SOA "$2" 2>/dev/null |
		awk '!/^;/ && $4 == "SOA" { print $7; exit }'
}

# _dns_wait_serial DIR SERIAL: until nsd serves SERIAL (10 s), nsd alive meanwhile.
_dns_wait_serial() {
	local dir=$1 want=$2 port pid zone i=0
	port=$(_dns_state "$dir" PORT)
	pid=$(_dns_state "$dir" PID)
	zone=$(_dns_state "$dir" ZONE)
	until [ "$(_dns_serial "$port" "$zone")" = "$want" ]; do
		if ! kill -0 "$pid" 2>/dev/null; then
			_dns_fail "dns_zone($zone)" "nsd exited: $(tail -n 3 "$dir/nsd.log" "$dir/nsd.out" 2>/dev/null | tr '\n' ' ')"
			return 1
		fi
		if [ $i -ge 100 ]; then
			_dns_fail "dns_zone($zone)" "serial $want not served on port $port after 10s: $(tail -n 3 "$dir/nsd.log" 2>/dev/null | tr '\n' ' ')"
			return 1
		fi
		sleep 0.1
		i=$((i + 1))
	done
}

dns_zone_start() {
	local dir=$1 zone body=$3 mode=${4:-unsigned} ksk zsk port pid
	zone=$(_dns_abs "$2")
	case $mode in signed | unsigned) ;; *) _dns_fail "dns_zone($zone)" "mode $mode: signed or unsigned"; return 1 ;; esac
	[ -x "$DNS_NSD" ] || { _dns_fail "dns_zone($zone)" "nsd not found at $DNS_NSD (make deps)"; return 1; }
	mkdir -p "$dir" || return 1
	dir=$(cd "$dir" && pwd)
	chmod 755 "$dir"
	: >"$dir/state"
	_dns_set_state "$dir" ZONE "$zone"
	_dns_set_state "$dir" SIGNED "$mode"
	_dns_set_state "$dir" SERIAL 1
	_dns_set_state "$dir" BOGUS "${DNS_BOGUS_NAMES:-}"
	DNS_ANCHOR=""
	if [ "$mode" = signed ]; then
		ksk=$(cd "$dir" && ldns-keygen -a ECDSAP256SHA256 -k "$zone" 2>"$dir/keygen.log")
		zsk=$(cd "$dir" && ldns-keygen -a ECDSAP256SHA256 "$zone" 2>>"$dir/keygen.log")
		if [ -z "$ksk" ] || [ -z "$zsk" ] || [ ! -f "$dir/$ksk.ds" ]; then
			_dns_fail "dns_zone($zone)" "ldns-keygen: $(tail -n 2 "$dir/keygen.log")"
			return 1
		fi
		_dns_set_state "$dir" KEYS "$ksk $zsk"
		cp "$dir/$ksk.ds" "$dir/anchor"
		DNS_ANCHOR=$dir/anchor
	fi
	_dns_write_zone "$dir" "$body" || return 1

	# A free port: TCP and UDP both bindable now (nsd needs both).
	port=$(_dns_pre python3 -c '
import socket
while True:
    t = socket.socket(); t.bind(("127.0.0.1", 0)); p = t.getsockname()[1]
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.bind(("127.0.0.1", p))
    except OSError:
        continue
    print(p); break') || { _dns_fail "dns_zone($zone)" "no free port"; return 1; }
	cat >"$dir/nsd.conf" <<EOF
server:
	ip-address: 127.0.0.1@$port
	username: ""
	chroot: ""
	zonesdir: "$dir"
	database: ""
	zonelistfile: "$dir/zone.list"
	xfrdfile: "$dir/xfrd.state"
	xfrdir: "$dir"
	pidfile: "$dir/nsd.pid"
	logfile: "$dir/nsd.log"
	server-count: 1
	reuseport: no
	hide-version: yes
	verbosity: 1
remote-control:
	control-enable: no
zone:
	name: "$zone"
	zonefile: "$dir/zone.served"
EOF
	if [ -z "${_DNS_CLI:-}" ] && declare -F spawn >/dev/null; then
		spawn "nsd-$(basename "$dir")" _dns_pre "$DNS_NSD" -d -c "$dir/nsd.conf"
		pid=$LAST_PID
	else
		"$DNS_NSD" -d -c "$dir/nsd.conf" >"$dir/nsd.out" 2>&1 </dev/null &
		pid=$!
	fi
	_dns_set_state "$dir" PORT "$port"
	_dns_set_state "$dir" PID "$pid"
	_dns_wait_serial "$dir" 1 || { kill -TERM "$pid" 2>/dev/null; return 1; }
	DNS_PORT=$port
	DNS_PID=$pid
	DNS_RESOLVER=127.0.0.1:$port
	return 0
}

dns_zone_reload() {
	local dir=$1 body=$2 serial pid
	[ -f "$dir/state" ] || { _dns_fail "dns_zone_reload" "no server in $dir"; return 1; }
	serial=$(($(_dns_state "$dir" SERIAL) + 1))
	_dns_set_state "$dir" SERIAL "$serial"
	_dns_write_zone "$dir" "$body" || return 1
	pid=$(_dns_state "$dir" PID)
	kill -HUP "$pid" 2>/dev/null || { _dns_fail "dns_zone_reload" "nsd (pid $pid) is gone"; return 1; }
	_dns_wait_serial "$dir" "$serial"
}

dns_zone_stop() {
	local dir=$1 pid i=0
	pid=$(_dns_state "$dir" PID)
	[ -n "$pid" ] || return 0
	kill -TERM "$pid" 2>/dev/null
	while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do
		sleep 0.1
		i=$((i + 1))
	done
	kill -KILL "$pid" 2>/dev/null
	wait "$pid" 2>/dev/null
	_dns_set_state "$dir" PID ""
	return 0
}

# --- as a command ---------------------------------------------------------------------------

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
	set -u
	_DNS_CLI=1
	cmd=${1:-}
	shift || true
	case $cmd in
	start)
		[ $# -ge 3 ] || { echo "usage: $0 start DIR ZONE BODY [signed|unsigned] [OWNER_PID]" >&2; exit 2; }
		dns_zone_start "$1" "$2" "$3" "${4:-unsigned}" || exit 1
		owner=${5:-}
		if [ -n "$owner" ]; then
			# Stops nsd once the owner is gone (it polls: nothing else can wait for a
			# process that is not our child).
			(
				while kill -0 "$owner" 2>/dev/null && kill -0 "$DNS_PID" 2>/dev/null; do
					sleep 0.5
				done
				kill -TERM "$DNS_PID" 2>/dev/null
			) </dev/null >/dev/null 2>&1 &
		fi
		echo "DNS_PORT=$DNS_PORT"
		echo "DNS_PID=$DNS_PID"
		echo "DNS_RESOLVER=$DNS_RESOLVER"
		echo "DNS_ANCHOR=$DNS_ANCHOR"
		;;
	reload)
		[ $# -eq 2 ] || { echo "usage: $0 reload DIR BODY" >&2; exit 2; }
		dns_zone_reload "$1" "$2" || exit 1
		;;
	stop)
		[ $# -eq 1 ] || { echo "usage: $0 stop DIR" >&2; exit 2; }
		dns_zone_stop "$1"
		;;
	*)
		echo "usage: $0 start|reload|stop ... (see the top of $0)" >&2
		exit 2
		;;
	esac
	exit 0
fi
