#!/usr/bin/env bash
# Backpressure: the upstream tries to send 200 MB, the client reads 10 KB/s. Through a TLS
# hop inside the proxy (route a: plain in, TLS out to route b; route b: TLS in, plain out to
# the source), so both the TLS writer and the TLS reader buffering are covered. Over ~10 s
# the proxy's RSS stays under 64 MB and the source manages to send far less than 200 MB.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

TOTAL=$((200 * 1024 * 1024))
RATE=10240              # client read rate, bytes/s
SECONDS_SLOW=${STP_SLOW_SECONDS:-10}
RSS_LIMIT_KB=$((64 * 1024))
# "Far less than 200 MB": kernel socket buffers on three hops (they autotune, up to tens of
# MB on some kernels) plus the proxy's watermarks; and flat over the second half.
SENT_LIMIT=$((100 * 1024 * 1024))
GROWTH_LIMIT=$((8 * 1024 * 1024))

start_server source --mode source --bytes "$TOTAL" --seed 5 --progress "$T/source.progress"
start_server echo --mode echo
wait_servers

free_port PA
free_port PB
free_port PE
conf=$T/slow.conf
{
	global_section "log_format = text"
	cat <<EOF
[route a]
listen = 127.0.0.1:$PA
protocol = tcp
client_tls = none
upstream = 127.0.0.1:$PB
upstream_tls = implicit
upstream_policy = verify
upstream_name = localhost

[route b]
listen = 127.0.0.1:$PB
protocol = tcp
client_tls = implicit
upstream = 127.0.0.1:$(port_of source)
upstream_tls = none

[route e]
listen = 127.0.0.1:$PE
protocol = tcp
upstream = 127.0.0.1:$(port_of echo)
EOF
} >"$conf"
start_proxy "$conf"
rss0=$(rss_kb "$PROXY")

# The slow reader, in the background; it stops after SECONDS_SLOW + 1 s.
spawn slow python3 "$TOOLS/client.py" bulk --connect "127.0.0.1:$PA" --no-shutdown \
	--read-rate $RATE --duration $((SECONDS_SLOW + 1)) --timeout 60
SLOW=$LAST_PID

# Sample the proxy's RSS twice a second while the reader crawls.
max_rss=0
samples=0
curve=""
half=$(($(date +%s) + SECONDS_SLOW / 2))
sent_mid=""
end=$(($(date +%s) + SECONDS_SLOW))
while [ "$(date +%s)" -lt "$end" ]; do
	r=$(rss_kb "$PROXY")
	[ -n "$r" ] || break
	[ "$r" -gt "$max_rss" ] && max_rss=$r
	samples=$((samples + 1))
	now_sent=$(cat "$T/source.progress" 2>/dev/null || echo 0)
	curve="$curve $((now_sent / 1048576))"
	[ -z "$sent_mid" ] && [ "$(date +%s)" -ge "$half" ] && sent_mid=$now_sent
	sleep 0.5
done
sent=$(cat "$T/source.progress" 2>/dev/null || echo 0)

# While one session is backpressured the event loop still serves others.
relay_ok other_sessions_still_served "$PE"

wait "$SLOW"
slow_out=$(tail -n 1 "$T/slow.log")
received=$(json_get received <<<"$slow_out")
note "proxy RSS: ${rss0:-?} kB at start, max ${max_rss} kB over $samples samples;" \
	"source sent $((sent / 1024)) kB; client read $((${received:-0} / 1024)) kB"
note "source MB sent, every 0.5 s:$curve"

if is_sanitized; then
	skip rss_below_64MB "sanitizer build (ASan's shadow memory and quarantine inflate RSS); max ${max_rss} kB"
elif [ "$samples" -ge 5 ] && [ "$max_rss" -gt 0 ] && [ "$max_rss" -lt "$RSS_LIMIT_KB" ]; then
	pass rss_below_64MB
else
	fail rss_below_64MB "max RSS ${max_rss} kB over $samples samples (limit $RSS_LIMIT_KB kB)"
fi

growth=$((${sent:-0} - ${sent_mid:-0}))
if [ "${sent:-0}" -gt 0 ] && [ "$sent" -lt "$SENT_LIMIT" ] && [ "$growth" -lt "$GROWTH_LIMIT" ]; then
	pass upstream_held_back
else
	fail upstream_held_back "source sent $sent of $TOTAL bytes in ${SECONDS_SLOW}s (limit $SENT_LIMIT), $growth in the second half (limit $GROWTH_LIMIT): no backpressure"
fi

# The reader got its trickle: about RATE bytes/s, no stall (at least half the rate).
if [ "${received:-0}" -ge $((RATE * SECONDS_SLOW / 2)) ] && [ "${received:-0}" -le $((RATE * (SECONDS_SLOW + 3))) ]; then
	pass slow_reader_served
else
	fail slow_reader_served "client read ${received:-?} bytes in $((SECONDS_SLOW + 1))s at $RATE B/s: $slow_out"
fi

# The client went away with 190+ MB unsent: both sessions end and the memory goes back.
if wait_log 'route=a .*event=close' 10 && wait_log 'route=b .*event=close' 10; then
	pass sessions_closed_after_client_left
else
	fail sessions_closed_after_client_left "a: $(log_line 'route=a .*event=close') b: $(log_line 'route=b .*event=close')"
fi

finish
