#!/usr/bin/env bash
# Reload under load: 20 SIGHUPs, each one changing the certificate the STARTTLS route
# serves and the level its policy table gives the upstream, while
#  - a long SMTP session (STARTTLS, a NOOP every 0.1 s) stays open through all of them and
#    still delivers a message at the end, its TLS session the one it started with;
#  - a bulk transfer (through an implicit-TLS tcp route, echoed back, checked by sha256;
#    16 MiB at least) runs across them;
# and after each reload a new session sees the new certificate and the new policy.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/smtp_lib.sh
. "$(dirname "$0")/smtp_lib.sh"

RELOADS=20
start_sink sink
start_sink tlssink --cert "$CERTS/server.pem" --key "$CERTS/server.key"
start_server echo --mode echo
wait_servers
free_port PS; free_port PB; free_port PP
cp "$CERTS/server.pem" "$T/live.pem"
cp "$CERTS/server.key" "$T/live.key"
table() { printf '127.0.0.1:%s %s\n' "$(port_of tlssink)" "$1" >"$T/live.table"; }
table may
{
	global_section | sed 's/^workers = 1$/workers = 2/' # every worker must switch
	cat <<EOF
[route smtp]
listen = 127.0.0.1:$PS
protocol = smtp
client_tls = starttls
cert = $T/live.pem
key = $T/live.key
upstream = 127.0.0.1:$(port_of sink)
upstream_tls = none

[route bulk]
listen = 127.0.0.1:$PB
protocol = tcp
client_tls = implicit
upstream = 127.0.0.1:$(port_of echo)
idle_timeout = 60s

[route pol]
listen = 127.0.0.1:$PP
protocol = smtp
upstream = 127.0.0.1:$(port_of tlssink)
upstream_tls = starttls
upstream_policy = encrypt
policy_table = $T/live.table
EOF
} >"$T/p.conf"
start_proxy "$T/p.conf"

# The long session: STARTTLS, then NOOPs until $T/stop exists, then one message and QUIT.
# Prints "cert SHA" at the start and the end, and "sent" and "noops N" (all 250).
/usr/bin/python3 - "$PS" "$CERTS/ca.pem" "$T/stop" >"$T/long.out" 2>&1 <<'PY' &
import hashlib, os, smtplib, ssl, sys, time
port, ca, stop = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ctx = ssl.create_default_context(cafile=ca)
s = smtplib.SMTP("127.0.0.1", port, timeout=10)
s.ehlo("long.test"); s.starttls(context=ctx); s.ehlo("long.test")
cert = lambda: hashlib.sha256(s.sock.getpeercert(binary_form=True)).hexdigest()
print("cert", cert(), flush=True)
n = 0
while not os.path.exists(stop):
    code, _ = s.noop()
    if code != 250:
        print("noop failed", code, flush=True); sys.exit(1)
    n += 1
    time.sleep(0.1)
print("noops", n, flush=True)
s.sendmail("a@client.test", ["b@dest.test"], b"Subject: long\r\nMessage-ID: <long@client.test>\r\n\r\nkept\r\n")
print("sent", flush=True)
print("cert", cert(), flush=True)
s.quit()
PY
PIDS+=("$!")
LONG=$!
# The bulk transfer: 64 KiB writes, paced (about 3 MiB/s), until $T/stop exists (so it
# spans every reload) and at least 16 MiB went, read back on the same thread (one thread per TLS connection: an
# OpenSSL connection must not be read and written from two threads at once); prints
# "bulk OK N" when the sha256 of the N bytes that came back is that of what went, or
# "bulk stalled" when nothing moved either way for 30 s.
/usr/bin/python3 - "$PB" "$CERTS/ca.pem" "$T/stop" >"$T/bulk.out" 2>&1 <<'PY' &
import hashlib, os, select, socket, ssl, sys, time
port, ca, stop = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ctx = ssl.create_default_context(cafile=ca)
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=30), server_hostname="localhost")
s.setblocking(False)
chunk = 64 << 10
sent, got = hashlib.sha256(), hashlib.sha256()
data, count, n, pending = os.urandom(chunk), 0, 0, b""
t0 = last = next_t = time.time()
done_sending = stalled = False
print("started", flush=True)
while True:
    now = time.time()
    if not done_sending and not pending and now >= next_t:
        # stop once told to and at least 16 MiB went (so the check below does not
        # depend on how long the reloads took), or after 120 s whatever happened
        if (os.path.exists(stop) and count >= 16 << 20) or now - t0 >= 120:
            done_sending = True
        else:
            pending = data; sent.update(data); count += chunk; next_t = now + 0.02
    if done_sending and not pending and n >= count:
        break
    moved = False
    if pending:
        try:
            k = s.send(pending); pending = pending[k:]; moved = True
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
            pass
    try:
        d = s.recv(1 << 16)
        if not d:
            break
        got.update(d); n += len(d); moved = True
    except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
        pass
    if moved:
        last = now
    elif now - last > 30:
        stalled = True
        break
    else:
        select.select([s], [s] if pending else [], [], 0.02)
if stalled:
    print("bulk stalled", n, "of", count, flush=True)
else:
    print("bulk", "OK" if n == count and got.digest() == sent.digest() else "BAD", n,
          "bytes", "enough" if count >= 16 << 20 else "short", flush=True)
PY
PIDS+=("$!")
BULK=$!
wait_log 'route=smtp .*event=client_tls ' 10 || fail long_session_started "$(cat "$T/long.out")"
wait_file "$T/bulk.out" 10 && wait_log 'route=bulk .*event=client_tls ' 10 ||
	fail bulk_started "$(cat "$T/bulk.out")"

served_cert() { # PORT: sha256 of the certificate a new STARTTLS session is shown
	/usr/bin/python3 - "$1" "$CERTS/ca.pem" <<'PY'
import hashlib, smtplib, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[2]); ctx.check_hostname = False
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=10)
s.ehlo("probe.test"); s.starttls(context=ctx)
print(hashlib.sha256(s.sock.getpeercert(binary_form=True)).hexdigest()); s.quit()
PY
}
fp() { openssl x509 -in "$1" -outform DER | sha256sum | cut -d' ' -f1; }
FP_A=$(fp "$CERTS/server.pem")
FP_B=$(fp "$CERTS/wildcard.pem")
CERT_OK=0 POLICY_OK=0
for i in $(seq "$RELOADS"); do
	if [ $((i % 2)) = 1 ]; then
		cp "$CERTS/wildcard.pem" "$T/live.pem"; cp "$CERTS/wildcard.key" "$T/live.key"
		table encrypt; want_fp=$FP_B; want_level=encrypt
	else
		cp "$CERTS/server.pem" "$T/live.pem"; cp "$CERTS/server.key" "$T/live.key"
		table may; want_fp=$FP_A; want_level=may
	fi
	kill -HUP "$PROXY"
	if ! wait_count 'event=reload result=ok' "$i" 10; then
		fail "reload_$i" "$(log_line 'event=reload')"
		break
	fi
	# workers switch just after result=ok: the new certificate within 2 s
	for _ in $(seq 20); do
		[ "$(served_cert "$PS")" = "$want_fp" ] && { CERT_OK=$((CERT_OK + 1)); break; }
		sleep 0.1
	done
	before=$(log_count "route=pol .*event=policy .*policy=$want_level .*source=table:1")
	smtp_send --connect "127.0.0.1:$PP" --file /dev/null --from a@client.test --to "r$i@dest.test" >/dev/null 2>&1
	[ "$(log_count "route=pol .*event=policy .*policy=$want_level .*source=table:1")" -gt "$before" ] &&
		POLICY_OK=$((POLICY_OK + 1))
done
check new_sessions_see_new_certificate test "$CERT_OK" -eq "$RELOADS"
check new_sessions_see_new_policy test "$POLICY_OK" -eq "$RELOADS"
check bulk_still_running kill -0 "$BULK"
touch "$T/stop"
wait "$LONG"
check long_session_kept_through_reloads grep -q '^sent$' "$T/long.out"
check long_session_same_tls_session test "$(grep -c "^cert $FP_A\$" "$T/long.out")" -eq 2
check long_session_noops sh -c "awk '/^noops/ { exit !(\$2 >= 20) }' '$T/long.out'"
check long_message_delivered wait_tag "$T/sink.store" long 5
wait "$BULK"
check bulk_transfer_intact grep -Eq '^bulk OK [0-9]+ bytes enough$' "$T/bulk.out"
note "$(cat "$T/bulk.out" | tail -n 1)"
check no_reload_failed sh -c "! grep -q 'event=reload result=failed' '$PROXY_LOG'"
check long_sessions_not_closed_early sh -c "[ \$(grep -c 'route=\(smtp\|bulk\) .*event=close .*reason=\"\\?\(shutdown\|idle\)' '$PROXY_LOG') -eq 0 ]"
finish
