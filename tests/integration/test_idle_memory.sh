#!/usr/bin/env bash
# Memory held per idle connection through a TLS hop: route a (plain in, TLS 1.3 out, verify)
# hands each connection to route b (TLS in, plain out) of the same proxy, toward an echo
# backend; 1,000 connections are opened, each proves the whole path with one echoed line,
# and are then held. The proxy's RSS growth divided by the connections (two sessions and
# two TLS connections each, as in the benchmark's chain: bench/chain.sh "idle") must stay
# at most IDLE_KIB_MAX KiB. Skipped under sanitizers (ASan's shadow memory counts in RSS).
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

CONNS=${STP_IDLE_CONNS:-1000}
# The ceiling is the benchmark's target (issue 10/11): 15.6 KiB measured with this layout
# since the peer certificate is dropped after the handshake's checks and is not held inline
# in every wolfSSL object (scripts/wolfssl-peer-cert-heap.patch); 24.4 KiB before that, and
# 31.3 KiB before the session shrank.
IDLE_KIB_MAX=${STP_IDLE_KIB_MAX:-20}

spawn backend python3 "$TOOLS/idle_hold.py" serve --ready "$T/backend.port"
wait_file "$T/backend.port" 15 || { fail backend "not listening: $(tail -n 3 "$T/backend.log")"; finish; }
BACKEND=$(head -n 1 "$T/backend.port")

free_port PA
free_port PB
conf=$T/idle.conf
{
	global_section "max_connections = 5000"
	cat <<EOF
[route a]
listen = 127.0.0.1:$PA
protocol = tcp
client_tls = none
upstream = 127.0.0.1:$PB
upstream_tls = implicit
upstream_policy = verify
upstream_name = localhost
upstream_min_tls = 1.3
max_connections_per_client = 0

[route b]
listen = 127.0.0.1:$PB
protocol = tcp
client_tls = implicit
client_min_tls = 1.3
upstream = 127.0.0.1:$BACKEND
upstream_tls = none
max_connections_per_client = 0
EOF
} >"$conf"
start_proxy "$conf"
rss0=$(rss_kb "$PROXY")

spawn hold python3 "$TOOLS/idle_hold.py" hold --connect "$PA" --conns "$CONNS" \
	--ready "$T/hold.ready" --release "$T/hold.release" --timeout 300
HOLD=$LAST_PID
if ! wait_file "$T/hold.ready" 240; then
	fail idle_held "the client did not finish opening $CONNS connections: $(tail -n 3 "$T/hold.log")"
	finish
fi
read -r _ opened failed <"$T/hold.ready"
rss1=$(rss_kb "$PROXY")
if [ "$opened" = "$CONNS" ] && [ "$failed" = 0 ]; then
	pass idle_held
else
	fail idle_held "$opened of $CONNS connections echoed through the chain, $failed failed: $(head -n 3 "$T/hold.log")"
fi
per=$(awk -v a="$rss0" -v b="$rss1" -v n="$CONNS" 'BEGIN { printf "%.1f", (b - a) / n }')
note "RSS ${rss0} -> ${rss1} KiB with $CONNS connections: $per KiB per connection (two sessions, two TLS connections)"
if is_sanitized; then
	skip idle_kib_per_connection "sanitizer build (ASan's shadow memory and quarantine inflate RSS): $per KiB"
elif awk -v p="$per" -v m="$IDLE_KIB_MAX" 'BEGIN { exit !(p > 0 && p <= m) }'; then
	pass idle_kib_per_connection
else
	fail idle_kib_per_connection "$per KiB per connection (at most $IDLE_KIB_MAX)"
fi

# Every connection was still open when released (no timeout or limit closed one).
touch "$T/hold.release"
if wait "$HOLD"; then
	pass idle_all_open_at_release
else
	fail idle_all_open_at_release "$(tail -n 1 "$T/hold.log")"
fi
finish
