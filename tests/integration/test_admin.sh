#!/usr/bin/env bash
# admin_listen: /healthz, /readyz (503 while draining), /metrics with the contract's metric
# names and exact values after known traffic; bad requests get HTTP errors.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

start_server echo --mode echo
start_server selfsigned --mode echo --cert "$CERTS/selfsigned.pem" --key "$CERTS/selfsigned.key"
wait_servers
free_port PADM; free_port PIN; free_port POUT; free_port PBAD; free_port PHOLD
free_port PDEAD; free_port PNOBODY; free_port PDENY

conf=$T/admin.conf
{
	global_section "admin_listen = 127.0.0.1:$PADM" | sed 's/^drain_timeout = .*/drain_timeout = 3s/'
	cat <<CONF
[route tlsin]
listen = 127.0.0.1:$PIN
protocol = tcp
client_tls = implicit
upstream = 127.0.0.1:$(port_of echo)

[route plainout]
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

[route hold]
listen = 127.0.0.1:$PHOLD
protocol = tcp
upstream = 127.0.0.1:$(port_of echo)

[route dead]
listen = 127.0.0.1:$PDEAD
protocol = tcp
upstream = 127.0.0.1:$PNOBODY

[route deny]
listen = 127.0.0.1:$PDENY
protocol = tcp
client_allow = 192.0.2.0/24
upstream = 127.0.0.1:$(port_of echo)
CONF
} >"$conf"
start_proxy "$conf"
ADM=http://127.0.0.1:$PADM

check healthz_200 sh -c "curl -sf $ADM/healthz | grep -qx ok"
check readyz_200 sh -c "curl -sf $ADM/readyz | grep -qx ready"

# Known traffic: three 5-byte echoes through plainout -> tlsin, one refused upstream.
for i in 1 2 3; do relay_ok "echo_$i" "$POUT"; done
relay_blocked bad_upstream_blocked "$PBAD"
relay_blocked dead_upstream_blocked "$PDEAD"
relay_blocked not_allowed_blocked "$PDENY"
# The counters are final once every session is counted out, which the proxy does just after
# its close line: /metrics is read again until no route has an active session (5 s at
# most; after that the checks below judge what is there).
for _ in $(seq 50); do
	curl -sf "$ADM/metrics" >"$T/metrics.txt"
	grep -q '^starttls_proxy_connections_active{' "$T/metrics.txt" &&
		! grep -q '^starttls_proxy_connections_active{.*} [1-9]' "$T/metrics.txt" && break
	sleep 0.1
done
metric() { grep -F "$1" "$T/metrics.txt" | awk '{print $NF}'; }
want() { # NAME SERIES VALUE
	local got
	got=$(metric "$2")
	if [ "$got" = "$3" ]; then pass "$1"; else fail "$1" "$2 = '$got', want $3"; fi
}
want conns_total_plainout 'starttls_proxy_connections_total{route="plainout"}' 3
want conns_total_tlsin 'starttls_proxy_connections_total{route="tlsin"}' 3
want conns_active_zero 'starttls_proxy_connections_active{route="plainout"}' 0
want hs_upstream_ok 'starttls_proxy_tls_handshakes_total{route="plainout",side="upstream",version="TLSv1.3",result="ok"}' 3
want hs_client_ok 'starttls_proxy_tls_handshakes_total{route="tlsin",side="client",version="TLSv1.3",result="ok"}' 3
want policy_failure_counted 'starttls_proxy_policy_failures_total{route="bad",result="certificate-not-trusted",mode="enforce"}' 1
# The handshake itself went through, but the certificate failed the policy: not "ok".
want hs_failed_verify_not_ok 'starttls_proxy_tls_handshakes_total{route="bad",side="upstream",version="TLSv1.3",result="certificate-not-trusted"}' 1
if grep -qF 'starttls_proxy_tls_handshakes_total{route="bad",side="upstream",version="TLSv1.3",result="ok"}' "$T/metrics.txt"; then
	fail hs_failed_verify_never_ok "a handshake that failed verification counted as ok"
else
	pass hs_failed_verify_never_ok
fi
# relay_ok sends "ping-NAME\n": 12 bytes for echo_N, each way.
want bytes_up 'starttls_proxy_bytes_total{route="plainout",direction="up"}' 36
want bytes_down 'starttls_proxy_bytes_total{route="tlsin",direction="down"}' 36
check type_lines grep -q '^# TYPE starttls_proxy_connections_active gauge' "$T/metrics.txt"
# Durations: three client handshakes on tlsin and three upstream ones on plainout, in the
# histograms (the +Inf bucket and the count agree); three TCP connects per route; the
# policy each connect was given, by source; the refused upstream (certificate) is a policy
# failure, not a refusal: no refusal series for it.
want hs_hist_client_count 'starttls_proxy_handshake_duration_seconds_count{route="tlsin",side="client"}' 3
want hs_hist_client_inf 'starttls_proxy_handshake_duration_seconds_bucket{route="tlsin",side="client",le="+Inf"}' 3
want hs_hist_upstream_count 'starttls_proxy_handshake_duration_seconds_count{route="plainout",side="upstream"}' 3
want connect_hist_count 'starttls_proxy_upstream_connect_seconds_count{route="plainout"}' 3
want decisions_by_source 'starttls_proxy_policy_decisions_total{route="plainout",source="route",policy="verify"}' 3
want refusal_unreachable 'starttls_proxy_refusals_total{route="dead",reason="upstream-unreachable"} ' 1
want refusal_not_allowed 'starttls_proxy_refusals_total{route="deny",reason="client-not-allowed"} ' 1
if grep -q 'starttls_proxy_refusals_total{route="bad"' "$T/metrics.txt"; then
	fail policy_block_not_a_refusal "$(grep 'refusals_total{route="bad"' "$T/metrics.txt")"
else
	pass policy_block_not_a_refusal
fi
check process_metrics sh -c "grep -Eq '^process_open_fds [1-9][0-9]*$' '$T/metrics.txt' &&
	grep -Eq '^process_resident_memory_bytes [1-9][0-9]*$' '$T/metrics.txt' &&
	grep -Eq '^process_cpu_seconds_total [0-9.]+$' '$T/metrics.txt'"

# An open session shows in the gauge.
/usr/bin/python3 - "$PHOLD" "$T/hold.stop" >"$T/hold.out" 2>&1 <<'PY' &
import os, socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"x\n"); s.recv(10); print("open", flush=True)
while not os.path.exists(sys.argv[2]):
    time.sleep(0.05)
PY
PIDS+=("$!")
hold=$!
for _ in $(seq 50); do grep -q open "$T/hold.out" && break; sleep 0.1; done
check active_gauge_one sh -c "curl -sf $ADM/metrics | grep -qF 'starttls_proxy_connections_active{route=\"hold\"} 1'"

# HTTP errors.
code() { curl -s -o /dev/null -w '%{http_code}' "$@"; }
check not_found_404 [ "$(code "$ADM/nope")" = 404 ]
check post_405 [ "$(code -X POST "$ADM/metrics")" = 405 ]
check garbage_400 sh -c "printf 'hello\r\n\r\n' | timeout 5 socat - TCP:127.0.0.1:$PADM | head -n1 | grep -q '^HTTP/1.1 400'"
check oversized_431 sh -c "head -c 5000 /dev/zero | tr '\\\\0' a | timeout 5 socat - TCP:127.0.0.1:$PADM | head -n1 | grep -q '^HTTP/1.1 431'"

# SIGTERM with a session open: /readyz turns 503 while draining, the process exits 0.
kill -TERM "$PROXY"
# /readyz turns 503 just after event=shutdown: polled, 2 s at most (drain_timeout is 3 s).
for _ in $(seq 20); do
	[ "$(code "$ADM/readyz")" = 503 ] && break
	sleep 0.1
done
check readyz_503_while_draining [ "$(code "$ADM/readyz")" = 503 ]
check healthz_while_draining [ "$(code "$ADM/healthz")" = 200 ]
touch "$T/hold.stop"
wait "$hold" 2>/dev/null
if wait_proxy_exit proxy 10; then pass drained_exit_0; else fail drained_exit_0 "status $STOP_STATUS"; fi
finish
