#!/usr/bin/env bash
# Slow-client abuse (issue "11/11 Hardening", limits and abuse): 5,000 sockets from 250
# loopback addresses (20 each, under the default max_connections_per_client of 50) trickle
# one octet a second of an "EHLO ..." line they never end, through an SMTP route that
# fronts a legacy server (client_tls = starttls, upstream_tls = none; Postfix's smtp-sink
# upstream). 100 legitimate sessions (smtplib: EHLO, MAIL, RCPT, DATA, QUIT), one after the
# other, are timed before the load, twice beside it and after it, each followed by the same
# session straight to smtp-sink. Asserted: every session and message goes through; the
# load holds through both loaded runs; what the proxy adds to a session's median grows at
# most twofold beside the load (the end-to-end median grows more, by smtp-sink's own
# slowdown with the tricklers' 5,000 upstream connections: both are reported); no loaded
# p95 reaches 250 ms. Beside the load, the 51st connection from one address and those over
# max_connections get "421 4.7.0 Too many connections" within a second, no trickler is
# dropped, and a session goes through once they leave. Then line_timeout (the bound on one
# command line; idle_timeout starts again with every octet) closes every trickler with a
# 421 after 20 s of trickling, and /metrics shows no session left. Then the same load on a
# route with greeting = local (the proxy greets, and connects at a client's first whole
# command line): no trickler gets an upstream connection, and the sessions beside them
# stay within 2x end to end, p95 under 250 ms. About 80 s.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/smtp_lib.sh
. "$(dirname "$0")/smtp_lib.sh"

SMTP_SINK=$(command -v smtp-sink || echo /usr/sbin/smtp-sink)
if [ ! -x "$SMTP_SINK" ]; then
	fail smtp_sink_installed "smtp-sink not found (Debian postfix: bash scripts/deps.sh test)"
	exit 1
fi
TR=("$SMTP_PY" "$TOOLS/trickle.py")
SESSIONS=${STP_TRICKLE_SESSIONS:-100}
ADDRS=${STP_TRICKLE_ADDRESSES:-250}
PER=${STP_TRICKLE_PER_ADDRESS:-20}
SOCKS=$((ADDRS * PER))
LINE_TIMEOUT=${STP_TRICKLE_LINE_TIMEOUT:-20}
# max_connections: the trickling sockets, the per-client burst below (30 more from one
# address), and 20 to spare for the legitimate sessions; a further burst fills the rest.
MAXCONN=$((SOCKS + 30 + 20))

# smtp-sink, event-driven, appending every message to one dump file; -m: up to 10,000
# sessions at once (its default is 256); -t 600: it never closes an idle upstream connection
# itself (at its default 100 s it would end the tricklers before a broken line_timeout shows).
free_port SINK_PORT; free_port P; free_port PL; free_port ADMIN
mkdir -m 777 "$T/sink"
spawn sink "$SMTP_SINK" -m 10000 -t 600 -u nobody -D "$T/sink/dump" "127.0.0.1:$SINK_PORT" 4096
port_open "$SINK_PORT" 10 || { fail sink_started "$(cat "$T/sink.log")"; exit 1; }
sink_count() { grep -c "^Message-ID: <$1-[0-9]*@client.test>" "$T/sink/dump" 2>/dev/null || echo 0; }

conf=$T/trickle.conf
{
	global_section "admin_listen = 127.0.0.1:$ADMIN" "max_connections = $MAXCONN" |
		sed 's/^log_level = debug$/log_level = info/'
	cat <<EOF
[route smtp]
listen = 127.0.0.1:$P
protocol = smtp
client_tls = starttls
upstream = 127.0.0.1:$SINK_PORT
upstream_tls = none
line_timeout = ${LINE_TIMEOUT}s

[route local]
listen = 127.0.0.1:$PL
protocol = smtp
client_tls = starttls
upstream = 127.0.0.1:$SINK_PORT
upstream_tls = none
line_timeout = ${LINE_TIMEOUT}s
greeting = local
EOF
} >"$conf"
start_proxy "$conf"

metric() { curl -sf "http://127.0.0.1:$ADMIN/metrics" | sed -n "s/^$1 //p"; }
fig() { json_get "$2" "$T/$1.json"; }

# --- unloaded ---------------------------------------------------------------------------
# legit TAG: the 100 sessions, each followed by the same one straight to smtp-sink (its own
# share of the time at that moment: it scans a list of all its connections on every event,
# so the tricklers' upstream connections slow it down by themselves).
legit() {
	"${TR[@]}" legit --connect "127.0.0.1:$P" --direct "127.0.0.1:$SINK_PORT" \
		--sessions "$SESSIONS" --tag "$1" >"$T/$1.json" 2>&1
}
legit idle
check unloaded_sessions_ok test "$(fig idle ok) $(fig idle direct_ok)" = "$SESSIONS $SESSIONS" ||
	note "$(cat "$T/idle.json")"

# --- the trickle load -------------------------------------------------------------------
spawn trickle "${TR[@]}" trickle --connect "127.0.0.1:$P" --addresses "$ADDRS" --per-address "$PER" \
	--status "$T/trickle.status" --duration 300
st() { json_get "$1" "$T/trickle.status"; }
t0=$(now_ns)
i=0
while [ "$(st greeted 2>/dev/null)" != "$SOCKS" ] && [ $i -lt 300 ]; do
	sleep 0.1
	i=$((i + 1))
done
ramp=$(elapsed_since "$t0")
if [ "$(st greeted)" = "$SOCKS" ]; then
	pass trickle_sockets_greeted
else
	fail trickle_sockets_greeted "after ${ramp}s: $(cat "$T/trickle.status" 2>/dev/null)"
fi
note "$SOCKS trickling sockets connected and greeted in ${ramp}s"
# They trickle from now on: at least an octet from each before the load counts.
i=0
while [ "$(st bytes_sent)" -lt "$SOCKS" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done

# Two runs beside the load, one after the other.
legit load
held_load=$(st open)
legit load2
held_load2=$(st open)
check loaded_sessions_ok test "$(fig load ok) $(fig load2 ok)" = "$SESSIONS $SESSIONS" ||
	note "$(cat "$T/load.json" "$T/load2.json")"
# The load was there all along (a proxy that stalls can let line_timeout end it early).
check load_held_through_both_runs test "$held_load $held_load2" = "$SOCKS $SOCKS"
note "$(st bytes_sent) bytes trickled so far"

# --- the limits, beside the load -------------------------------------------------------
# burst NAME SOURCE COUNT: COUNT connections from SOURCE, held until $T/release exists;
# its JSON line in $T/NAME.log.
burst() {
	spawn "$1" "${TR[@]}" burst --connect "127.0.0.1:$P" --source "$2" --count "$3" --until "$T/release"
	wait_count '^\{' 1 20 "$T/$1.log" || fail "$1" "no result after 20s: $(tail -n 3 "$T/$1.log")"
}
# refusals_ok NAME: every refusal of burst NAME was the SMTP 421 4.7.0, within 1 s of the
# connect (before any upstream connection: not a stall), and no connection went silent.
refusals_ok() {
	$SMTP_PY - "$T/$1.log" <<'PY'
import json, re, sys
r = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
bad = [x for x in r["refused"]
       if not re.match(r"421 4\.7\.0 .*Too many connections", x[0]) or x[1] >= 1.0]
if not r["refused"] or bad or r["silent"]:
    sys.exit("refused %s, silent %d" % (r["refused"][:3], r["silent"]))
PY
}
# max_connections_per_client (default 50): 127.1.0.1 has 20 trickling sockets; 30 more are
# greeted, the 51st gets the 421 at once.
burst per 127.1.0.1 31
if [ "$(json_get greeted "$T/per.log")" = 30 ] && why=$(refusals_ok per 2>&1) &&
	[ "$(grep -o '"421 4' "$T/per.log" | wc -l)" = 1 ]; then
	pass per_client_51st_refused_at_once
else
	fail per_client_51st_refused_at_once "${why:-} $(tail -n 1 "$T/per.log")"
fi
# max_connections: the proxy holds about $((SOCKS + 30)) of $MAXCONN; from another address
# a few more are greeted, then every one gets the 421 at once.
burst max 127.3.0.1 40
g=$(json_get greeted "$T/max.log")
if [ -n "$g" ] && [ "$g" -le 20 ] && why=$(refusals_ok max 2>&1); then
	pass max_connections_refused_at_once
else
	fail max_connections_refused_at_once "${why:-} $(tail -n 1 "$T/max.log")"
fi
expect_log max_connections_refusal_logged 'route=smtp .*event=refused reason=max_connections '
expect_log per_client_refusal_logged 'route=smtp .*event=refused reason=max_connections_per_client '
# Nobody else was stalled or dropped: every trickling socket is still open, and once the
# bursts go a legitimate session goes through again.
check trickle_load_held test "$(st open)" = "$SOCKS"
touch "$T/release"
t1=$(now_ns)
until "${TR[@]}" legit --connect "127.0.0.1:$P" --sessions 1 --tag after >"$T/after.json" 2>&1; do
	awk -v e="$(elapsed_since "$t1")" 'BEGIN { exit !(e >= 5) }' && break
	sleep 0.2
done
check session_after_limits_ok test "$(fig after ok)" = 1 || note "$(cat "$T/after.json")"

# --- timeouts reclaim them --------------------------------------------------------------
# Each socket trickles an endless command line: idle_timeout never fires (an octet a second
# is activity), line_timeout does, LINE_TIMEOUT s after the line's first octet.
i=0
while [ "$(st closed_by_peer)" != "$SOCKS" ] && [ $i -lt $(((LINE_TIMEOUT + 30) * 10)) ]; do
	sleep 0.1
	i=$((i + 1))
done
note "trickling sockets closed by the proxy: $(st closed_by_peer) of $SOCKS, after" \
	"$(st trickled_min) to $(st trickled_max) s of trickling; replies $(json_get 421 "$T/trickle.status") x 421"
if [ "$(st closed_by_peer)" = "$SOCKS" ] && [ "$(json_get 421 "$T/trickle.status")" = "$SOCKS" ] &&
	awk -v lo="$(st trickled_min)" -v hi="$(st trickled_max)" -v t="$LINE_TIMEOUT" \
		'BEGIN { exit !(lo >= t - 2 && hi <= t + 10) }'; then
	pass trickle_reclaimed_by_line_timeout
else
	fail trickle_reclaimed_by_line_timeout "$(cat "$T/trickle.status")"
fi
check line_timeout_logged test "$(log_count 'event=close reason="line timeout"')" = "$SOCKS"
i=0
until [ "$(metric 'starttls_proxy_connections_active{route="smtp"}')" = 0 ] || [ $i -ge 50 ]; do
	sleep 0.1
	i=$((i + 1))
done
check metrics_no_session_left test "$(metric 'starttls_proxy_connections_active{route="smtp"}')" = 0

# --- unloaded again, and the latency checks -------------------------------------------------
legit calm
check unloaded_again_sessions_ok test "$(fig calm ok)" = "$SESSIONS" || note "$(cat "$T/calm.json")"
ms() { awk -v v="$1" 'BEGIN { if (v == "") print "?"; else printf "%.2f", v * 1000 }'; }
for r in idle load load2 calm; do
	note "$r: via the proxy p50 $(ms "$(fig $r p50)") ms, p95 $(ms "$(fig $r p95)") ms," \
		"max $(ms "$(fig $r max)") ms; smtp-sink alone p50 $(ms "$(fig $r direct_p50)") ms;" \
		"the proxy's share p50 $(ms "$(fig $r proxy_p50)") ms"
done
# The machine is shared (two cores), and its other work moves the median of a hundred
# 1-5 ms sessions by as much as 3x within a minute, both ways. So the unloaded figure is
# the larger of the runs before and after the load, the loaded one the smaller of the two
# runs beside it (p95: the larger). big/small KEY [RUN RUN]: the larger of two runs (idle,
# calm), the smaller of two (load, load2); worst KEY [RUN RUN]: the larger of load/load2.
pick() { awk -v a="$(fig "$2" "$1")" -v b="$(fig "$3" "$1")" -v op="$4" 'BEGIN { if (a == "" || b == "") print ""; else if (op == "max") print (a > b ? a : b); else print (a < b ? a : b) }'; }
big() { pick "$1" "${2:-idle}" "${3:-calm}" max; }
small() { pick "$1" "${2:-load}" "${3:-load2}" min; }
worst() { pick "$1" "${2:-load}" "${3:-load2}" max; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b <= 0) print "none"; else printf "%.2f", a / b }'; }
note "loaded / unloaded p50: via the proxy x$(ratio "$(small p50)" "$(big p50)")," \
	"smtp-sink alone x$(ratio "$(small direct_p50)" "$(big direct_p50)")"
# What the proxy adds to a session (p50 via it minus p50 straight to the sink, measured
# side by side) grows at most twofold beside the load (a floor of 0.5 ms for the unloaded
# share, which noise can bring near zero). A proxy that spends a mere 0.2 ms on each
# trickled octet fails this by far.
share=$(awk -v u="$(big proxy_p50)" 'BEGIN { if (u == "") print ""; else print (u > 0.0005 ? u : 0.0005) }')
r50=$(ratio "$(small proxy_p50)" "$share")
if awk -v r="$r50" 'BEGIN { exit !(r != "none" && r <= 2) }'; then
	pass proxy_share_p50_within_2x
else
	fail proxy_share_p50_within_2x "loaded/unloaded $r50: $(ms "$(small proxy_p50)") ms / $(ms "$share") ms"
fi
# No stall: in both loaded runs 95 of 100 sessions within 250 ms (unloaded: a few ms).
if awk -v p="$(worst p95)" 'BEGIN { exit !(p != "" && p < 0.25) }'; then
	pass loaded_p95_under_250ms
else
	fail loaded_p95_under_250ms "loaded p95 $(ms "$(worst p95)") ms"
fi
# Every legitimate message reached the sink, each once.
i=0
while [ "$(sink_count calm)" -lt "$SESSIONS" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
check all_messages_delivered test "$(sink_count idle) $(sink_count load) $(sink_count load2) $(sink_count calm)" = \
	"$SESSIONS $SESSIONS $SESSIONS $SESSIONS"

# --- greeting = local: the same load costs the upstream nothing ---------------------------
# Route "local" greets the clients itself and connects at a client's first whole command
# line: the tricklers never get an upstream connection, so smtp-sink keeps its pace and the
# sessions beside them stay within 2x end to end (the figure above that misses it on a
# route that greets with the upstream's banner). Its unloaded runs are local0 (before) and
# local9 (after); the loaded ones local1 and local2.
legit_local() {
	"${TR[@]}" legit --connect "127.0.0.1:$PL" --direct "127.0.0.1:$SINK_PORT" \
		--sessions "$SESSIONS" --tag "$1" >"$T/$1.json" 2>&1
}
legit_local local0
spawn trickle2 "${TR[@]}" trickle --connect "127.0.0.1:$PL" --addresses "$ADDRS" --per-address "$PER" \
	--status "$T/trickle2.status" --first-octet 127.4 --duration 120
TRICKLE2=$LAST_PID
st2() { json_get "$1" "$T/trickle2.status"; }
i=0
while [ "$(st2 greeted 2>/dev/null)" != "$SOCKS" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
check local_trickle_sockets_greeted test "$(st2 greeted)" = "$SOCKS" || note "$(cat "$T/trickle2.status")"
i=0
while [ "$(st2 bytes_sent)" -lt "$SOCKS" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
legit_local local1
legit_local local2
held_local=$(st2 open)
kill -TERM "$TRICKLE2" 2>/dev/null
wait "$TRICKLE2" 2>/dev/null
legit_local local9
check local_sessions_ok test "$(fig local0 ok) $(fig local1 ok) $(fig local2 ok) $(fig local9 ok)" = \
	"$SESSIONS $SESSIONS $SESSIONS $SESSIONS" || note "$(cat "$T/local1.json" "$T/local2.json")"
check local_load_held test "$held_local" = "$SOCKS"
# One upstream connection per legitimate session (4 x SESSIONS), none for the 5,000.
check local_tricklers_no_upstream test "$(log_count 'route=local .*event=policy ')" = $((4 * SESSIONS))
for r in local0 local1 local2 local9; do
	note "$r: via the proxy p50 $(ms "$(fig $r p50)") ms, p95 $(ms "$(fig $r p95)") ms;" \
		"smtp-sink alone p50 $(ms "$(fig $r direct_p50)") ms"
done
e2e=$(ratio "$(small p50 local1 local2)" "$(big p50 local0 local9)")
note "greeting = local, loaded / unloaded p50 end to end: x$e2e," \
	"smtp-sink alone x$(ratio "$(small direct_p50 local1 local2)" "$(big direct_p50 local0 local9)")"
if awk -v r="$e2e" 'BEGIN { exit !(r != "none" && r <= 2) }'; then
	pass local_end_to_end_p50_within_2x
else
	fail local_end_to_end_p50_within_2x "loaded/unloaded $e2e: $(ms "$(small p50 local1 local2)") ms / $(ms "$(big p50 local0 local9)") ms"
fi
if awk -v p="$(worst p95 local1 local2)" 'BEGIN { exit !(p != "" && p < 0.25) }'; then
	pass local_loaded_p95_under_250ms
else
	fail local_loaded_p95_under_250ms "loaded p95 $(ms "$(worst p95 local1 local2)") ms"
fi

finish
