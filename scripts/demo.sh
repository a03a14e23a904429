#!/usr/bin/env bash
# make demo: a legacy plaintext SMTP client reaches a legacy plaintext SMTP server through
# two proxy routes, and the hop between them is STARTTLS with certificate verification.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${STP_BIN:-./starttls-proxy}
dir=$(mktemp -d /tmp/starttls-proxy-demo.XXXXXX)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$dir"
}
trap cleanup EXIT INT TERM

free_port() {
	/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_port() {
	for _ in $(seq 100); do
		(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
		sleep 0.05
	done
	echo "demo: nothing listens on port $1" >&2
	return 1
}
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

bash scripts/gen-test-certs.sh "$dir/certs" >/dev/null
/usr/bin/python3 scripts/demo_smtp.py server "$dir/legacy.port" "$dir/legacy.out" &
pids+=($!)
for _ in $(seq 100); do [ -s "$dir/legacy.port" ] && break; sleep 0.05; done
LEGACY_PORT=$(cat "$dir/legacy.port")
APP_PORT=$(free_port); EDGE_PORT=$(free_port)
while [ "$EDGE_PORT" = "$APP_PORT" ]; do EDGE_PORT=$(free_port); done
sed -e "s|@CERTS@|$dir/certs|g" -e "s|@APP_PORT@|$APP_PORT|g" -e "s|@EDGE_PORT@|$EDGE_PORT|g" \
	-e "s|@LEGACY_PORT@|$LEGACY_PORT|g" etc/demo.conf > "$dir/demo.conf"

step "Legacy SMTP server without TLS (scripts/demo_smtp.py) on 127.0.0.1:$LEGACY_PORT"
wait_port "$LEGACY_PORT"

step "starttls-proxy with etc/demo.conf"
"$BIN" -t -c "$dir/demo.conf"
"$BIN" -c "$dir/demo.conf" 2> "$dir/proxy.log" &
pids+=($!)
for _ in $(seq 100); do grep -q 'event=ready' "$dir/proxy.log" && break; sleep 0.05; done
grep -E 'event=(listening|ready)' "$dir/proxy.log" || { cat "$dir/proxy.log"; exit 1; }

step "A legacy app (Python smtplib) sends a message in plaintext to 127.0.0.1:$APP_PORT"
/usr/bin/python3 scripts/demo_smtp.py send "$APP_PORT" 2>&1 | sed -n "s/^send: b\?'\(.*\)'$/  app> \1/p; s/^reply: b'\(.*\)'$/  app< \1/p" | sed 's/\\r\\n$//'

for _ in $(seq 100); do grep -q 'MESSAGE END' "$dir/legacy.out" && break; sleep 0.05; done
step "What the legacy server received"
sed -n '/MESSAGE FOLLOWS/,/MESSAGE END/p' "$dir/legacy.out"

step "Proxy log: which hops were encrypted"
grep -E 'event=(accept|upstream_tls|client_tls|policy_failure|message|close)' "$dir/proxy.log"

step "Summary"
if grep -q 'route=legacy-app-out event=upstream_tls version=TLSv1.[23].* verify=ok' "$dir/proxy.log" &&
	grep -q 'route=legacy-server-in event=client_tls version=TLSv1.[23]' "$dir/proxy.log" &&
	grep -q 'Hello from a client that cannot speak TLS.' "$dir/legacy.out"; then
	echo "app --plaintext--> proxy --STARTTLS, $(grep -o 'route=legacy-app-out event=upstream_tls version=[^ ]*' "$dir/proxy.log" | head -1 | sed 's/.*version=//'), certificate verified--> proxy --plaintext--> legacy server"
	echo "demo OK"
else
	echo "demo FAILED: see the log above" >&2
	exit 1
fi
