#!/usr/bin/env bash
# Bulk relay through a plain -> TLS -> plain chain of two routes:
#   client --plain--> [route a: upstream_tls implicit, verify] --TLS--> [route b: client_tls
#   implicit] --plain--> server
# 100 MB of random data each way (STP_BULK_MB to change), checksums equal at both ends;
# half-close: the client shuts down its write side and still receives the whole reply.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

MB=${STP_BULK_MB:-100}
N=$((MB * 1024 * 1024))
TMO=20   # seconds without progress before a transfer counts as stalled

start_server up_sink --mode sink --result "$T/up_sink.json"
start_server up_source --mode source --bytes "$N" --seed 21 --result "$T/up_source.json"
start_server up_bidir --mode bidir --bytes "$N" --seed 31 --result "$T/up_bidir.json"
start_server up_half --mode sink --reply-bytes $((10 * 1024 * 1024)) --reply-seed 41 \
	--result "$T/up_half.json"
wait_servers

conf=$T/bulk.conf
global_section "log_format = text" >"$conf"
# chain NAME SERVER: route NAME_a (plain in, TLS out to NAME_b) and NAME_b (TLS in, plain
# out to SERVER). Sets PORT[NAME] to route a's port.
declare -A PORT=()
chain() {
	local name=$1 server=$2 pa pb
	free_port pa
	free_port pb
	PORT[$name]=$pa
	cat >>"$conf" <<EOF
[route ${name}_a]
listen = 127.0.0.1:$pa
protocol = tcp
client_tls = none
upstream = 127.0.0.1:$pb
upstream_tls = implicit
upstream_policy = verify
upstream_name = localhost

[route ${name}_b]
listen = 127.0.0.1:$pb
protocol = tcp
client_tls = implicit
upstream = 127.0.0.1:$(port_of "$server")
upstream_tls = none

EOF
}
chain up up_sink
chain down up_source
chain bidir up_bidir
chain half up_half
start_proxy "$conf"

# transfer NAME SERVER_RESULT CLIENT_ARGS...: runs the client, then compares both ends.
# Sets C (client JSON) and S (server JSON).
run_client() {
	local t0
	t0=$(now_ns)
	C=$(client bulk --timeout "$TMO" "$@")
	SECS=$(elapsed_since "$t0")
}
server_result() { # FILE: waits for the server's JSON line (briefly when the client failed)
	local t=30
	[ -n "$(json_get error <<<"$C")" ] && t=3
	wait_file "$1" "$t"
	S=$(tail -n 1 "$1" 2>/dev/null)
}
get() { json_get "$1" <<<"$2"; }

# --- client -> server ---------------------------------------------------------------------
run_client --connect "127.0.0.1:${PORT[up]}" --send-bytes "$N" --seed 11
server_result "$T/up_sink.json"
if [ "$(get received "$S")" = "$N" ] && [ "$(get sent_sha256 "$C")" = "$(get received_sha256 "$S")" ]; then
	pass "upstream_${MB}MB_sha256_equal"
	note "client -> server: $MB MB in ${SECS}s"
else
	fail "upstream_${MB}MB_sha256_equal" "client: $C server: $S"
fi

# --- server -> client ---------------------------------------------------------------------
run_client --connect "127.0.0.1:${PORT[down]}" --no-shutdown
server_result "$T/up_source.json"
if [ "$(get received "$C")" = "$N" ] && [ "$(get eof "$C")" = true ] &&
	[ "$(get received_sha256 "$C")" = "$(get sent_sha256 "$S")" ]; then
	pass "downstream_${MB}MB_sha256_equal"
	note "server -> client: $MB MB in ${SECS}s"
else
	fail "downstream_${MB}MB_sha256_equal" "client: $C server: $S"
fi

# --- both ways at once ----------------------------------------------------------------------
run_client --connect "127.0.0.1:${PORT[bidir]}" --send-bytes "$N" --seed 12
server_result "$T/up_bidir.json"
if [ "$(get received "$C")" = "$N" ] && [ "$(get received "$S")" = "$N" ] &&
	[ "$(get sent_sha256 "$C")" = "$(get received_sha256 "$S")" ] &&
	[ "$(get received_sha256 "$C")" = "$(get sent_sha256 "$S")" ]; then
	pass "bidirectional_${MB}MB_sha256_equal"
	note "both ways at once: 2 x $MB MB in ${SECS}s"
else
	fail "bidirectional_${MB}MB_sha256_equal" "client: $C server: $S"
fi
# The session summaries count the plaintext bytes each way, on both routes.
for r in bidir_a bidir_b; do
	if wait_log "route=$r .*event=close .*bytes_up=$N .*bytes_down=$N" 5; then
		pass "${r}_close_byte_counts"
	else
		fail "${r}_close_byte_counts" "$(log_line "route=$r .*event=close")"
	fi
done

# --- half-close: the client's EOF travels through both hops, the reply still arrives -------
run_client --connect "127.0.0.1:${PORT[half]}" --send-bytes 1048576 --seed 13
server_result "$T/up_half.json"
if [ "$(get received "$S")" = 1048576 ] && [ "$(get received "$C")" = $((10 * 1024 * 1024)) ] &&
	[ "$(get eof "$C")" = true ] &&
	[ "$(get sent_sha256 "$C")" = "$(get received_sha256 "$S")" ] &&
	[ "$(get received_sha256 "$C")" = "$(get sent_sha256 "$S")" ]; then
	pass half_close_reply_after_client_eof
else
	fail half_close_reply_after_client_eof "client: $C server: $S"
fi
for r in half_a half_b; do
	if wait_log "route=$r .*event=close .*bytes_up=1048576 .*bytes_down=10485760" 5; then
		pass "${r}_close_byte_counts"
	else
		fail "${r}_close_byte_counts" "$(log_line "route=$r .*event=close")"
	fi
done

finish
