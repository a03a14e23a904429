#!/usr/bin/env bash
# Legacy TLS versions on request (client_min_tls = 1.0) and refused by default; and
# max_connections_per_client for tcp (closed) and smtp (421 4.7.0 before the close).
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

start_server echo --mode echo
wait_servers
ECHO=127.0.0.1:$(port_of echo)
free_port P_OLD; free_port P_NEW; free_port P_PER; free_port P_SMTP; free_port P_SMTPS
free_port SINK; free_port ADMIN

# A tiny SMTP server for the smtp route: greets, answers QUIT.
python3 - "$SINK" >"$T/sink.log" 2>&1 <<'PY' &
import socket, sys, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(16)
def serve(c):
    f = c.makefile("rwb")
    c.sendall(b"220 sink ESMTP\r\n")
    for line in f:
        if line.upper().startswith(b"QUIT"):
            c.sendall(b"221 bye\r\n"); break
        c.sendall(b"250 ok\r\n")
    c.close()
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
PY
PIDS+=("$!")
wait_port "$SINK"

conf=$T/limits.conf
{
	global_section "admin_listen = 127.0.0.1:$ADMIN"
	cat <<CONF
[route old]
listen = 127.0.0.1:$P_OLD
protocol = tcp
client_tls = implicit
client_min_tls = 1.0
client_ciphers = ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA
upstream = $ECHO

[route new]
listen = 127.0.0.1:$P_NEW
protocol = tcp
client_tls = implicit
upstream = $ECHO

[route per]
listen = 127.0.0.1:$P_PER
protocol = tcp
upstream = $ECHO
max_connections_per_client = 2

[route smtp]
listen = 127.0.0.1:$P_SMTP
protocol = smtp
upstream = 127.0.0.1:$SINK
max_connections_per_client = 1

[route smtps]
listen = 127.0.0.1:$P_SMTPS
protocol = smtp
client_tls = implicit
upstream = 127.0.0.1:$SINK
max_connections_per_client = 1
CONF
} >"$conf"
start_proxy "$conf"

# --- TLS versions ------------------------------------------------------------------------
# s_client_proto PORT VERSION-FLAG: prints the negotiated protocol; "refused" when the
# proxy answered the ClientHello with a protocol_version alert; nothing on any other
# outcome (no connection, a handshake cut short), which no check below accepts.
s_client_proto() {
	local out
	out=$(echo | timeout 5 openssl s_client -connect "127.0.0.1:$1" "$2" \
		-cipher 'DEFAULT@SECLEVEL=0' -CAfile "$CERTS/ca.pem" 2>&1)
	if grep -q 'Cipher is (NONE)' <<<"$out"; then
		grep -q '^CONNECTED' <<<"$out" && grep -q 'alert protocol version' <<<"$out" && echo refused
		return 0
	fi
	sed -n 's/^ *Protocol *: *//p' <<<"$out" | head -n 1
}
for v in tls1:TLSv1 tls1_1:TLSv1.1; do
	flag=-${v%%:*}
	want=${v##*:}
	got=$(s_client_proto "$P_OLD" "$flag")
	check "min10_accepts_$want" [ "$got" = "$want" ]
	got=$(s_client_proto "$P_NEW" "$flag")
	if [ "$got" = refused ]; then
		pass "default_refuses_$want"
	else
		fail "default_refuses_$want" "s_client: '${got:-no connection or no alert}', want a protocol_version alert"
	fi
done
check default_accepts_TLSv1.2 [ "$(s_client_proto "$P_NEW" -tls1_2)" = TLSv1.2 ]
expect_log old_version_logged 'route=old .*event=client_tls .*version=TLSv1 '
# A client below client_min_tls is logged as such (not as a record layer error).
expect_log below_min_logged_as_such 'route=new .*event=client_tls_failed result=tls-version-too-low offered=TLSv1 client_min_tls=1.2 '
expect_log below_min_tls11_logged 'route=new .*event=client_tls_failed result=tls-version-too-low offered=TLSv1.1 client_min_tls=1.2 '

# --- per-client limit, tcp ----------------------------------------------------------------
python3 - "$P_PER" >"$T/per.out" 2>&1 <<'PY'
import socket, sys, time
port = int(sys.argv[1])
def echo_ok(c):
    c.settimeout(3)
    c.sendall(b"ping\n")
    try:
        return c.recv(100) == b"ping\n"
    except OSError:
        return False
a = socket.create_connection(("127.0.0.1", port))
b = socket.create_connection(("127.0.0.1", port))
print("first", echo_ok(a)); print("second", echo_ok(b))
c = socket.create_connection(("127.0.0.1", port))
c.settimeout(3)
try:
    c.sendall(b"ping\n")
    got = c.recv(100)
except OSError:
    got = b""
print("third_refused", got == b"")
d = socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.2", 0))
print("other_address", echo_ok(d))
# The proxy gives the slot back just after it has seen a close: try again, 5 s at most.
a.close()
deadline = time.monotonic() + 5
while True:
    e = socket.create_connection(("127.0.0.1", port))
    ok = echo_ok(e)
    e.close()
    if ok or time.monotonic() > deadline:
        break
    time.sleep(0.1)
print("after_close", ok)
PY
for k in first second third_refused other_address after_close; do
	check "per_client_$k" grep -q "^$k True" "$T/per.out"
done
expect_log per_client_refusal_logged 'route=per .*event=refused .*reason=max_connections_per_client'

# --- per-client limit, smtp: a protocol-correct reply ------------------------------------
python3 - "$P_SMTP" >"$T/smtp.out" 2>&1 <<'PY'
import socket, sys
port = int(sys.argv[1])
a = socket.create_connection(("127.0.0.1", port)); a.settimeout(3)
print("first", a.recv(200).decode().strip())
b = socket.create_connection(("127.0.0.1", port)); b.settimeout(3)
data = b""
try:
    while True:
        x = b.recv(200)
        if not x:
            break
        data += x
except OSError:
    pass
print("second", data.decode().strip())
PY
check smtp_first_greeted grep -q '^first 220 sink ESMTP' "$T/smtp.out"
check smtp_second_421 grep -Eq '^second 421 4\.7\.0 .*Too many connections' "$T/smtp.out"

# Implicit TLS: the refusal comes inside TLS, after the handshake.
python3 - "$P_SMTPS" "$CERTS/ca.pem" >"$T/smtps.out" 2>&1 <<'PY'
import socket, ssl, sys
port, ca = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=ca)
def connect():
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost")
    s.settimeout(3)
    return s
a = connect()
print("first", a.recv(200).decode().strip())
b = connect()
data = b""
try:
    while True:
        x = b.recv(200)
        if not x:
            break
        data += x
except (OSError, ssl.SSLError):
    pass
print("second", data.decode().strip())
PY
check smtps_first_greeted grep -q '^first 220 sink ESMTP' "$T/smtps.out"
check smtps_second_421_in_tls grep -Eq '^second 421 4\.7\.0 .*Too many connections' "$T/smtps.out"
# Every refusal is counted, by route and reason.
curl -sf "http://127.0.0.1:$ADMIN/metrics" >"$T/metrics.txt"
for r in per smtp smtps; do
	check "refusal_counted_$r" grep -Eq "^starttls_proxy_refusals_total\{route=\"$r\",reason=\"max-connections-per-client\"\} [1-9]" "$T/metrics.txt"
done
finish
