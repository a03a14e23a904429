#!/usr/bin/env bash
# Failure paths: upstream down, connect timeout, idle timeout, handshake timeouts (both
# sides), max_connections, and SIGTERM draining (sessions finish, then exit 0; or
# drain_timeout cuts them).
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

start_server echo --mode echo
start_server silent --mode silent --hold 30
start_server backlog --mode backlog
wait_servers
ECHO=127.0.0.1:$(port_of echo)

free_port DEAD      # nothing listens here
free_port P_DOWN; free_port P_DOWN_TLS; free_port P_CTO; free_port P_IDLE
free_port P_HS_UP; free_port P_HS_CLIENT

conf=$T/failures.conf
{
	global_section
	cat <<EOF
[route down]
listen = 127.0.0.1:$P_DOWN
protocol = tcp
upstream = 127.0.0.1:$DEAD

[route down_tls]
listen = 127.0.0.1:$P_DOWN_TLS
protocol = tcp
client_tls = implicit
upstream = 127.0.0.1:$DEAD

[route cto]
listen = 127.0.0.1:$P_CTO
protocol = tcp
upstream = 127.0.0.1:$(port_of backlog)
connect_timeout = 1s

[route idle]
listen = 127.0.0.1:$P_IDLE
protocol = tcp
upstream = $ECHO
idle_timeout = 1s

[route hs_up]
listen = 127.0.0.1:$P_HS_UP
protocol = tcp
upstream = 127.0.0.1:$(port_of silent)
upstream_tls = implicit
upstream_policy = encrypt
upstream_name = localhost
handshake_timeout = 1s

[route hs_client]
listen = 127.0.0.1:$P_HS_CLIENT
protocol = tcp
client_tls = implicit
upstream = $ECHO
handshake_timeout = 1s
EOF
} >"$conf"
start_proxy "$conf"

# closed_within NAME MIN MAX: the last client (CLIENT_OUT) saw the close between MIN and
# MAX seconds after it connected.
closed_within() {
	local name=$1 min=$2 max=$3 t
	t=$(json_get closed_after <<<"$CLIENT_OUT")
	if [ -n "$t" ] && awk -v t="$t" -v a="$min" -v b="$max" 'BEGIN { exit !(t >= a && t <= b) }'; then
		pass "$name"
	else
		fail "$name" "closed after ${t:-?}s, expected between ${min}s and ${max}s"
	fi
}

# --- upstream down -----------------------------------------------------------------------------
relay_blocked upstream_down_closes_client "$P_DOWN"
expect_log upstream_down_logged "route=down .*event=upstream_unreachable .*result=upstream-unreachable"
expect_log upstream_down_close_reason 'route=down .*event=close .*reason="?upstream unreachable'
relay_blocked upstream_down_tls_client_closed "$P_DOWN_TLS" --tls --ca "$CERTS/ca.pem" --name localhost
expect_log upstream_down_tls_logged "route=down_tls .*event=upstream_unreachable .*result=upstream-unreachable"

# --- connect timeout: the upstream's accept queue is full, its SYNs go unanswered ---------
if [ "$(sed -n 2p "$T/backlog.port")" = full ]; then
	client_bg cto steps --connect "127.0.0.1:$P_CTO" sendq:hello closed:6
	if client_wait cto; then
		pass connect_timeout_closes_client
		closed_within connect_timeout_on_time 0.8 4
	else
		fail connect_timeout_closes_client "$(json_get why <<<"$CLIENT_OUT")"
	fi
	expect_log connect_timeout_logged 'route=cto .*event=upstream_unreachable .*result=upstream-unreachable .*error="?connect timeout'
else
	skip connect_timeout "could not fill a listen queue on this kernel (connects do not hang)"
fi

# --- idle timeout --------------------------------------------------------------------------------
# Traffic every 0.6 s for 2.4 s keeps the session (idle_timeout = 1s) alive; then silence
# closes it about 1 s later.
client_bg idle steps --connect "127.0.0.1:$P_IDLE" send:a expect:a sleep:0.6 send:b expect:b \
	sleep:0.6 send:c expect:c sleep:0.6 send:d expect:d sleep:0.6 send:e expect:e closed:5
if client_wait idle; then
	pass idle_timeout_closes_idle_session
	el=$(json_get closed_after <<<"$CLIENT_OUT")
	# Activity lasted ~2.4 s; the close must come ~1 s after the last echo, not before.
	if awk -v t="$el" 'BEGIN { exit !(t >= 3.2 && t <= 6) }'; then
		pass idle_timeout_reset_by_traffic
	else
		fail idle_timeout_reset_by_traffic "closed after ${el}s (traffic until ~2.4s, idle_timeout 1s)"
	fi
else
	fail idle_timeout_closes_idle_session "$(json_get failed_step <<<"$CLIENT_OUT"): $(json_get why <<<"$CLIENT_OUT")"
fi
expect_log idle_timeout_logged 'route=idle .*event=close .*reason="?idle'

# --- handshake timeouts ----------------------------------------------------------------------
# Upstream accepts TCP but never answers the ClientHello.
client_bg hs_up steps --connect "127.0.0.1:$P_HS_UP" sendq:hello closed:6
if client_wait hs_up; then
	pass upstream_handshake_timeout_closes_client
	closed_within upstream_handshake_timeout_on_time 0.8 4
else
	fail upstream_handshake_timeout_closes_client "$(json_get why <<<"$CLIENT_OUT")"
fi
expect_log upstream_handshake_timeout_logged 'route=hs_up .*event=policy_failure .*result=tls-handshake-failure'
# A client that connects to an implicit-TLS listener and never sends a ClientHello.
client_bg hs_client steps --connect "127.0.0.1:$P_HS_CLIENT" closed:6
if client_wait hs_client; then
	pass client_handshake_timeout_closes_client
	closed_within client_handshake_timeout_on_time 0.8 4
else
	fail client_handshake_timeout_closes_client "$(json_get why <<<"$CLIENT_OUT")"
fi
expect_log client_handshake_timeout_logged \
	'route=hs_client .*event=client_tls_failed .*result=tls-handshake-failure .*error="?handshake timeout'
expect_log client_handshake_timeout_close_reason 'route=hs_client .*event=close .*reason="?client handshake timeout'

# --- max_connections = 2 ------------------------------------------------------------------------
free_port P_MAX; free_port P_MAXADM
cat >"$T/max.conf" <<EOF
$(global_section "max_connections = 2" "admin_listen = 127.0.0.1:$P_MAXADM")
[route max]
listen = 127.0.0.1:$P_MAX
protocol = tcp
upstream = $ECHO
EOF
start_proxy "$T/max.conf" proxy_max
client_bg m1 steps --connect "127.0.0.1:$P_MAX" send:one expect:one "touch:$T/m1.up" "wait:$T/m.release"
client_bg m2 steps --connect "127.0.0.1:$P_MAX" send:two expect:two "touch:$T/m2.up" "wait:$T/m.release"
if wait_file "$T/m1.up" 10 && wait_file "$T/m2.up" 10; then
	pass max_connections_two_open
	relay_blocked max_connections_third_refused "$P_MAX"
else
	fail max_connections_two_open "the first two sessions did not relay"
fi
touch "$T/m.release"
client_wait m1
client_wait m2
expect_log max_connections_logged 'route=max .*max_connections' 1 "$T/proxy_max.log"
check max_connections_refusal_counted sh -c "curl -sf http://127.0.0.1:$P_MAXADM/metrics | grep -qx 'starttls_proxy_refusals_total{route=\"max\",reason=\"max-connections\"} 1'"
# The slots come back once the two sessions have closed: the proxy frees a slot just after
# the session's close line, so the relay is tried until it works (5 s at most).
if wait_count 'route=max .*event=close' 3 5; then
	relay_ok_within max_connections_slot_reused 5 "$P_MAX"
else
	fail max_connections_slot_reused "sessions did not close: $(log_line 'route=max .*event=close')"
fi

# --- SIGTERM: drain open sessions, refuse new ones, exit 0 -----------------------------------------
free_port P_DRAIN
cat >"$T/drain.conf" <<EOF
$(global_section | sed 's/^drain_timeout = .*/drain_timeout = 8s/')
[route drain]
listen = 127.0.0.1:$P_DRAIN
protocol = tcp
upstream = $ECHO
EOF
start_proxy "$T/drain.conf" proxy_drain
client_bg d1 steps --connect "127.0.0.1:$P_DRAIN" send:before expect:before "touch:$T/d1.up" \
	"wait:$T/d1.go" send:during-drain expect:during-drain
if wait_file "$T/d1.up" 10; then
	t0=$(now_ns)
	kill -TERM "${PROXY_PID[proxy_drain]}"
	expect_log drain_shutdown_logged 'event=shutdown|"event": *"shutdown"' 3 "$T/proxy_drain.log"
	# New connections are refused (the listener is closed) while the old session drains.
	# The worker closes its listener a moment after event=shutdown: awaited, 5 s at most.
	if wait_refused "$P_DRAIN" 5; then
		pass drain_refuses_new_connections
	else
		fail drain_refuses_new_connections "127.0.0.1:$P_DRAIN still accepts connections 5s after SIGTERM"
	fi
	if kill -0 "${PROXY_PID[proxy_drain]}" 2>/dev/null; then
		pass drain_waits_for_open_session
	else
		fail drain_waits_for_open_session "the proxy exited with a session still open"
	fi
	touch "$T/d1.go"
	if client_wait d1; then
		pass drain_session_still_relays
	else
		fail drain_session_still_relays "$(json_get failed_step <<<"$CLIENT_OUT"): $(json_get why <<<"$CLIENT_OUT")"
	fi
	# The last session ended: the proxy exits at once (well before drain_timeout = 8s), 0.
	if wait_proxy_exit proxy_drain 10; then
		secs=$(elapsed_since "$t0")
		if awk -v t="$secs" 'BEGIN { exit !(t < 6) }'; then
			pass drain_exit_0_after_last_session
		else
			fail drain_exit_0_after_last_session "exit 0, but only ${secs}s after SIGTERM (drain_timeout 8s): did not notice the last session end"
		fi
	else
		fail drain_exit_0_after_last_session "exit status $STOP_STATUS"
	fi
else
	fail drain_session_open "the session did not relay before SIGTERM"
fi

# drain_timeout cuts a session that does not end.
free_port P_CUT
cat >"$T/cut.conf" <<EOF
$(global_section | sed 's/^drain_timeout = .*/drain_timeout = 1s/')
[route cut]
listen = 127.0.0.1:$P_CUT
protocol = tcp
upstream = $ECHO
EOF
start_proxy "$T/cut.conf" proxy_cut
client_bg c1 steps --connect "127.0.0.1:$P_CUT" send:x expect:x "touch:$T/c1.up" closed:10
if wait_file "$T/c1.up" 10; then
	t0=$(now_ns)
	kill -TERM "${PROXY_PID[proxy_cut]}"
	if wait_proxy_exit proxy_cut 10; then
		secs=$(elapsed_since "$t0")
		if awk -v t="$secs" 'BEGIN { exit !(t >= 0.8 && t < 4) }'; then
			pass drain_timeout_exit_0
		else
			fail drain_timeout_exit_0 "exited 0 after ${secs}s, drain_timeout is 1s"
		fi
	else
		fail drain_timeout_exit_0 "exit status $STOP_STATUS"
	fi
	if client_wait c1; then
		pass drain_timeout_closes_session
	else
		fail drain_timeout_closes_session "$(json_get why <<<"$CLIENT_OUT")"
	fi
else
	fail drain_timeout_session_open "the session did not relay before SIGTERM"
fi

finish
