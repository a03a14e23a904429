#!/usr/bin/env bash
# System calls per connection: strace -c counts what the proxy asks of the kernel while 200
# clients, one after another, do a TLS 1.3 handshake on an implicit-TLS tcp route, send a
# line and read its echo from the upstream. On a 2-core machine most of a handshake's cost
# is the kernel's (see bench/RESULTS.md), so the count is a performance property:
#  - no file is opened per connection (wolfSSL seeds each connection's RNG with getrandom(2),
#    not by opening /dev/urandom);
#  - at most SYSCALLS_MAX (48) system calls per connection in all (about 42 today: accept,
#    the upstream's socket and connect, reads and writes, epoll, log lines, close).
# Skipped under sanitizers (ASan's own system calls would be counted).
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

N=200
SYSCALLS_MAX=${STP_SYSCALLS_MAX:-48}

if is_sanitized; then
	skip syscalls_per_connection "sanitizer build (ASan's own system calls would be counted)"
	finish
fi
command -v strace >/dev/null || { fail strace "strace is not installed (make deps installs it)"; finish; }

spawn backend python3 "$TOOLS/idle_hold.py" serve --ready "$T/backend.port"
wait_file "$T/backend.port" 15 || { fail backend "not listening: $(tail -n 3 "$T/backend.log")"; finish; }
BACKEND=$(head -n 1 "$T/backend.port")
free_port P
cat >"$T/sys.conf" <<EOF
[global]
workers = 1
log_level = info
cert = $CERTS/server.pem
key = $CERTS/server.key

[route wrap]
listen = 127.0.0.1:$P
protocol = tcp
client_tls = implicit
client_min_tls = 1.3
upstream = 127.0.0.1:$BACKEND
upstream_tls = none
max_connections_per_client = 0
EOF
start_proxy "$T/sys.conf"

clients() { # COUNT: handshakes, one echoed line each; prints how many succeeded
	/usr/bin/python3 - "$P" "$CERTS/ca.pem" "$1" <<'EOF'
import socket, ssl, sys
port, ca, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
ctx = ssl.create_default_context(cafile=ca)
ctx.minimum_version = ssl.TLSVersion.TLSv1_3
ok = 0
for i in range(n):
    with socket.create_connection(("127.0.0.1", port), 10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            msg = b"ping %d\n" % i
            s.sendall(msg)
            got = b""
            while len(got) < len(msg):
                d = s.recv(100)
                if not d:
                    break
                got += d
            ok += got == msg
print(ok)
EOF
}

# One warm-up connection (first-use allocations, the ticket key), then the counted ones.
clients 1 >/dev/null
strace -f -c -p "$PROXY" -o "$T/strace.out" 2>"$T/strace.err" &
STRACE=$!
PIDS+=("$STRACE")
for ((i = 0; i < 50; i++)); do grep -q attached "$T/strace.err" && break; sleep 0.1; done
ok=$(clients "$N")
# the last sessions end (close logged) before strace lets go
for ((i = 0; i < 50; i++)); do
	[ "$(grep -c 'event=close' "$PROXY_LOG")" -ge $((N + 1)) ] && break
	sleep 0.1
done
kill -INT "$STRACE"
wait "$STRACE" 2>/dev/null
if [ "$ok" = "$N" ]; then
	pass syscalls_clients_served
else
	fail syscalls_clients_served "$ok of $N clients got their echo"
fi
if ! grep -q '^100.00' "$T/strace.out"; then
	fail syscalls_counted "strace gave no summary: $(tail -n 3 "$T/strace.err")"
	finish
fi
total=$(awk '$1 == "100.00" { print $4 }' "$T/strace.out")
opens=$(awk '$NF == "openat" || $NF == "open" { n += $4 } END { print n + 0 }' "$T/strace.out")
awk 'NR > 2 && $1 != "100.00" && $1 !~ /^-/ { printf "  # %s %s\n", $NF, $4 }' "$T/strace.out" | head -n 20
per=$(awk -v t="$total" -v n="$N" 'BEGIN { printf "%.1f", t / n }')
note "$total system calls for $N connections: $per per connection; $opens open/openat"
if [ "$opens" -eq 0 ]; then
	pass syscalls_no_open_per_connection
else
	fail syscalls_no_open_per_connection "$opens open/openat calls for $N connections"
fi
if awk -v p="$per" -v m="$SYSCALLS_MAX" 'BEGIN { exit !(p > 0 && p <= m) }'; then
	pass syscalls_per_connection
else
	fail syscalls_per_connection "$per system calls per connection (at most $SYSCALLS_MAX)"
fi
finish
