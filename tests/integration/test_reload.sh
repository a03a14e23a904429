#!/usr/bin/env bash
# SIGHUP: the configuration and the certificates are loaded again without dropping the
# sessions already open; a changed route takes effect for new sessions, a new route
# listens, a removed one stops; a broken file leaves the running configuration in place.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

start_server echo1 --mode echo
start_server echo2 --mode echo
wait_servers
E1=127.0.0.1:$(port_of echo1)
E2=127.0.0.1:$(port_of echo2)
free_port PA; free_port PB; free_port PC; free_port PT

# The TLS route's certificate lives in a file the test replaces before the reload.
cp "$CERTS/server.pem" "$T/live.pem"
cp "$CERTS/server.key" "$T/live.key"

write_conf() { # UPSTREAM_OF_A WITH_B WITH_C
	{
		global_section
		cat <<CONF
[route a]
listen = 127.0.0.1:$PA
protocol = tcp
upstream = $1

[route tls]
listen = 127.0.0.1:$PT
protocol = tcp
client_tls = implicit
cert = $T/live.pem
key = $T/live.key
upstream = $E1
CONF
		if [ "$2" = yes ]; then
			printf '\n[route b]\nlisten = 127.0.0.1:%s\nprotocol = tcp\nupstream = %s\n' "$PB" "$E2"
		fi
		if [ "$3" = yes ]; then
			printf '\n[route c]\nlisten = 127.0.0.1:%s\nprotocol = tcp\nupstream = %s\n' "$PC" "$E1"
		fi
	} | sed 's/^workers = 1$/workers = 2/' >"$T/reload.conf" # every worker must switch
}

issuer_of() { # PORT: the issuer CN of the certificate the proxy shows
	echo | timeout 5 openssl s_client -connect "127.0.0.1:$1" 2>/dev/null |
		openssl x509 -noout -issuer 2>/dev/null
}

write_conf "$E1" no yes
start_proxy "$T/reload.conf"

# A session that stays open across the reloads: it echoes before and after.
/usr/bin/python3 - "$PA" "$T/held.fifo" >"$T/held.out" 2>&1 <<'PY' &
import os, socket, sys, time
port, fifo = int(sys.argv[1]), sys.argv[2]
s = socket.create_connection(("127.0.0.1", port)); s.settimeout(5)
s.sendall(b"before\n"); print("before", s.recv(100) == b"before\n", flush=True)
while not os.path.exists(fifo):
    time.sleep(0.05)
s.sendall(b"after\n"); print("after", s.recv(100) == b"after\n", flush=True)
PY
PIDS+=("$!")
held=$!
wait_file "$T/held.out" 5 >/dev/null
for _ in $(seq 50); do grep -q '^before' "$T/held.out" && break; sleep 0.1; done
check held_session_before grep -q '^before True' "$T/held.out"
check tls_issuer_before grep -q 'starttls-proxy test CA' <(issuer_of "$PT")
# Control for removed_route_c_closed: route c does listen (and relay) before the reload.
relay_ok route_c_relays_before "$PC"

# Reload 1: a's upstream changes, b appears, c goes; the TLS certificate is replaced.
cp "$CERTS/otherca-server.pem" "$T/live.pem"
cp "$CERTS/otherca-server.key" "$T/live.key"
write_conf "$E2" yes no
kill -HUP "$PROXY"
if wait_log 'event=reload result=ok' 5; then pass reload_ok_logged; else fail reload_ok_logged "no event=reload result=ok"; fi
# result=ok is logged when the workers have been handed the new configuration; each worker
# switches (and closes its own socket for route c) a moment later. c's address refuses
# connections only once no worker listens there: that is the fence for all that follows.
if wait_refused "$PC" 5; then
	pass removed_route_c_closed
else
	fail removed_route_c_closed "127.0.0.1:$PC still accepts connections 5s after the reload"
fi
touch "$T/held.fifo"
wait "$held" 2>/dev/null
check held_session_survives grep -q '^after True' "$T/held.out"

relay_ok new_session_on_a "$PA"
expect_log a_uses_new_upstream "route=a .*event=upstream_connected .*upstream=$E2"
relay_ok new_route_b_listens "$PB"
check tls_certificate_reloaded grep -q 'untrusted test CA' <(issuer_of "$PT")

# Reload 2: a broken file is refused with FILE:LINE, and everything keeps running.
printf '[route broken]\nlisten = 127.0.0.1:%s\nprotocol = nonsense\n' "$PC" >>"$T/reload.conf"
kill -HUP "$PROXY"
if wait_log 'event=reload result=failed error=".*reload\.conf:[0-9]+: ' 5; then
	pass broken_reload_refused_with_line
else
	fail broken_reload_refused_with_line "$(log_line 'event=reload')"
fi
relay_ok a_still_works "$PA"
relay_ok b_still_works "$PB"
finish
