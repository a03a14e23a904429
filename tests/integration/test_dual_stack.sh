#!/usr/bin/env bash
# listen = [::]:PORT serves IPv4 and IPv6 clients on one socket (dual-stack); an IPv4
# client is an IPv4 client everywhere (logs, client_allow, XCLIENT), never ::ffff:a.b.c.d.
# A specific IPv6 address listens on IPv6 only.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

if ! /usr/bin/python3 -c 'import socket; s = socket.socket(socket.AF_INET6); s.bind(("::1", 0))' 2>/dev/null; then
	fail ipv6_loopback "this host has no ::1; the dual-stack checks need it"
	finish
fi
start_server echo --mode echo
wait_servers
free_port_any PD; free_port_any PV4; free_port P6
{
	global_section
	cat <<EOF2
[route dual]
listen = [::]:$PD
protocol = tcp
upstream = 127.0.0.1:$(port_of echo)

[route v4only]
listen = [::]:$PV4
protocol = tcp
client_allow = 127.0.0.0/8
upstream = 127.0.0.1:$(port_of echo)

[route six]
listen = [::1]:$P6
protocol = tcp
upstream = 127.0.0.1:$(port_of echo)
EOF2
} >"$T/p.conf"
start_proxy "$T/p.conf"

echo_via() { # FAMILY_ADDR PORT: 0 when a line comes back through the proxy
	/usr/bin/python3 - "$1" "$2" <<'PY'
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
s.sendall(b"dual\n")
sys.exit(0 if s.recv(10) == b"dual\n" else 1)
PY
}
check dual_serves_ipv4 echo_via 127.0.0.1 "$PD"
check dual_serves_ipv6 echo_via ::1 "$PD"
check ipv4_client_logged_as_ipv4 wait_log 'route=dual .*event=accept client=127\.0\.0\.1:[0-9]+$' 5
check ipv6_client_logged_as_ipv6 wait_log 'route=dual .*event=accept client=\[::1\]:[0-9]+$' 5
if grep -q 'ffff' "$PROXY_LOG"; then
	fail no_mapped_addresses_in_log "$(grep -m1 ffff "$PROXY_LOG")"
else
	pass no_mapped_addresses_in_log
fi
# client_allow = 127.0.0.0/8 on a dual-stack listener: the IPv4 client is in it, ::1 not.
check v4_allow_admits_ipv4_on_dual echo_via 127.0.0.1 "$PV4"
if echo_via ::1 "$PV4" 2>/dev/null; then
	fail v4_allow_refuses_ipv6 "::1 was relayed"
else
	pass v4_allow_refuses_ipv6
fi
expect_log v4_allow_refusal_logged 'route=v4only .*event=refused reason=client-not-allowed client=\[::1\]:'
# [::1] is IPv6 only: nothing on 127.0.0.1 at that port.
check specific_v6_serves_v6 echo_via ::1 "$P6"
if echo_via 127.0.0.1 "$P6" 2>/dev/null; then
	fail specific_v6_is_v6_only "127.0.0.1:$P6 relayed"
else
	pass specific_v6_is_v6_only
fi
finish
