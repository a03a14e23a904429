#!/usr/bin/env bash
# systemd, without a running systemd:
# 1. the shipped units: `systemd-analyze verify` passes; `systemd-analyze security` rates
#    the service at an exposure of at most 2.0, the transparent drop-in adds CAP_NET_ADMIN
#    and stays at most 2.0; Type=notify; a reload checks the file (-t) before SIGHUP;
# 2. the notification protocol, read on a NOTIFY_SOCKET the test binds: READY=1 (with
#    MAINPID) only once the listeners accept, STATUS= with session counts, WATCHDOG=1 at
#    half of WATCHDOG_USEC, RELOADING=1 + MONOTONIC_USEC then READY=1 around a reload (a
#    refused one too, with a STATUS saying so), STOPPING=1 on SIGTERM; drain_grace keeps
#    the listeners open while /readyz says 503;
# 3. socket activation with systemd-socket-activate: the socket named after a route serves
#    it (its own `listen` address is never bound), with two workers; a name that matches no
#    route is refused at start with a message naming it.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/smtp_lib.sh
. "$(dirname "$0")/smtp_lib.sh"

UNITS=$REPO_ROOT/systemd
MAX_EXPOSURE=2.0

# --- 1. the units ------------------------------------------------------------------------
mkdir -p "$T/units" "$T/root/etc/systemd/system/starttls-proxy.service.d"
sed "s|/usr/local/bin/starttls-proxy|$STP_BIN|g" "$UNITS/starttls-proxy.service" \
	>"$T/units/starttls-proxy.service"
cp "$UNITS/starttls-proxy.socket" "$T/units/"
check units_verify systemd-analyze verify --man=no "$T/units/starttls-proxy.service" \
	"$T/units/starttls-proxy.socket"

exposure() { # the "Overall exposure level" of starttls-proxy.service, under root $1 or not
	local out
	if [ -n "$1" ]; then
		out=$(systemd-analyze security --offline=true --root="$1" starttls-proxy.service 2>&1)
	else
		out=$(cd "$T/units" && systemd-analyze security --offline=true starttls-proxy.service 2>&1)
	fi
	printf '%s\n' "$out" | sed -n 's/.*Overall exposure level for starttls-proxy.service: \([0-9.]*\).*/\1/p'
}
E_BASE=$(exposure "")
cp "$T/units/starttls-proxy.service" "$T/root/etc/systemd/system/"
cp "$UNITS/starttls-proxy-transparent.conf" \
	"$T/root/etc/systemd/system/starttls-proxy.service.d/transparent.conf"
E_TPROXY=$(exposure "$T/root")
NETADMIN=$(systemd-analyze security --offline=true --root="$T/root" starttls-proxy.service 2>&1 |
	grep -c '✗ CapabilityBoundingSet=~CAP_NET_ADMIN')
note "exposure: $E_BASE (service), $E_TPROXY (with the transparent drop-in)"
check exposure_at_most_2 awk -v e="$E_BASE" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(e != "" && e + 0 <= m + 0) }'
check transparent_dropin_adds_net_admin test "$NETADMIN" -eq 1
check transparent_exposure_at_most_2 awk -v e="$E_TPROXY" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(e != "" && e + 0 <= m + 0) }'
check unit_type_notify grep -qx 'Type=notify' "$UNITS/starttls-proxy.service"
# ExecReload lines in order: the check first, then the signal (systemd runs them in order
# and stops at the first that fails, so a refused file fails `systemctl reload`).
check reload_checks_first sh -c "grep '^ExecReload=' '$UNITS/starttls-proxy.service' | head -n 1 | grep -q -- ' -t ' &&
	grep '^ExecReload=' '$UNITS/starttls-proxy.service' | tail -n 1 | grep -q 'kill -HUP'"

# --- 2. notifications ------------------------------------------------------------------------
start_sink sink
SINK=$(port_of sink)
free_port P; free_port ADMIN
conf() { # $1: extra [global] lines
	{
		global_section "admin_listen = 127.0.0.1:$ADMIN" "drain_grace = 2s" "$@"
		cat <<CONF
[route in]
listen = 127.0.0.1:$P
protocol = smtp
upstream = 127.0.0.1:$SINK
upstream_tls = none
CONF
	}
}
conf >"$T/good.conf"
cp "$T/good.conf" "$T/proxy.conf"
NOTES=$T/notes.log
spawn notify python3 "$TOOLS/notify_listen.py" --socket "$T/notify.sock" --out "$NOTES" \
	--ready "$T/notify.ready"
wait_file "$T/notify.ready" 10 || { fail notify_listener "not bound"; finish; }

# The test polls the port from the moment READY=1 arrives: it must accept at once.
PROXY_PREFIX=(env NOTIFY_SOCKET="$T/notify.sock" WATCHDOG_USEC=1000000)
start_proxy "$T/proxy.conf"
unset PROXY_PREFIX
wait_note() { # wait_note PATTERN [N [TIMEOUT]]: N notification lines match
	wait_count "$1" "${2:-1}" "${3:-5}" "$NOTES"
}
if wait_note ' READY=1'; then
	if (exec 3<>"/dev/tcp/127.0.0.1/$P") 2>/dev/null; then
		pass ready_when_listening
	else
		fail ready_when_listening "READY=1 sent, but 127.0.0.1:$P refuses"
	fi
else
	fail ready_when_listening "no READY=1: $(cat "$NOTES")"
fi
check ready_first sh -c "head -n 1 '$NOTES' | grep -q ' READY=1|MAINPID=$PROXY\$'"
check status_serving wait_note ' STATUS=serving: sessions open 0, since start 0, routes 1'
# WATCHDOG_USEC=1s: fed every 0.5 s, about 6 in 3 s (5 to 8: neither skipped nor a flood)
T0=$(log_count ' WATCHDOG=1' "$NOTES")
sleep 3
T1=$(log_count ' WATCHDOG=1' "$NOTES")
note "WATCHDOG=1 in 3 s: $((T1 - T0))"
check watchdog_fed awk -v n=$((T1 - T0)) 'BEGIN { exit !(n >= 5 && n <= 8) }'
# the workers' beat is faster than the watchdog: a loop that turns is never "stalled"
check no_false_stall sh -c "! grep -q 'result=worker-stalled' '$PROXY_LOG'"

# A stuck worker: its thread stopped (gdb in non-stop mode: the main thread keeps running)
# for 3 s. WATCHDOG=1 stops (the manager would restart the service), worker-stalled is
# logged; once the worker runs again, the watchdog is fed again.
WTID=$(grep -lx 'stp-worker-0' /proc/"$PROXY"/task/*/comm 2>/dev/null | head -n 1 | cut -d/ -f5)
if [ -z "$WTID" ]; then
	fail worker_thread_named "no thread named stp-worker-0 in /proc/$PROXY/task"
else
	pass worker_thread_named
	MONO="/usr/bin/python3 -c 'import time; print(time.monotonic())'"
	timeout 30 gdb -q -batch -ex 'set non-stop on' -ex "attach $PROXY" -ex 'thread 1' \
		-ex 'continue &' \
		-ex "python [t.switch() for t in gdb.selected_inferior().threads() if t.ptid[1] == $WTID]" \
		-ex 'interrupt' -ex "shell $MONO >$T/stopped_at" -ex 'shell sleep 3' \
		-ex "shell $MONO >$T/resumed_at" -ex 'detach' >"$T/gdb.out" 2>&1
	kill -CONT "$PROXY" # (a thread gdb interrupted stays stopped after the detach)
	S1=$(log_count ' WATCHDOG=1' "$NOTES")
	# the notifications from 1 s after the stop (the beat is then older than the 1 s
	# watchdog) to the resume: none (fed every 0.5 s, there would be 4)
	FED=$(awk -v a="$(cat "$T/stopped_at" 2>/dev/null || echo 1e18)" -v b="$(cat "$T/resumed_at" 2>/dev/null || echo 0)" \
		'$2 == "WATCHDOG=1" && $1 > a + 1.05 && $1 < b { n++ } END { print n + 0 }' "$NOTES")
	note "WATCHDOG=1 while the worker was stuck: $FED"
	check watchdog_unfed_while_stuck test "$FED" -eq 0 -a -s "$T/resumed_at"
	check worker_stalled_logged grep -q 'event=watchdog result=worker-stalled worker=0' "$PROXY_LOG"
	check watchdog_fed_again wait_count ' WATCHDOG=1' $((S1 + 2)) 3 "$NOTES"
fi

# An idle session shows in STATUS (sent every 2 s); the connection of ready_when_listening
# was the first.
exec 7<>"/dev/tcp/127.0.0.1/$P"
check status_counts_sessions wait_note ' STATUS=serving: sessions open 1, since start 2,' 1 6
exec 7>&-

# A reload: RELOADING=1 with MONOTONIC_USEC (CLOCK_MONOTONIC, the clock systemd compares),
# then READY=1.
BEFORE=$(python3 -c 'import time; print(int(time.monotonic() * 1e6))')
kill -HUP "$PROXY"
wait_note ' RELOADING=1\|MONOTONIC_USEC=[0-9]+$'
AFTER=$(python3 -c 'import time; print(int(time.monotonic() * 1e6))')
MONO=$(grep -Eo 'RELOADING=1\|MONOTONIC_USEC=[0-9]+' "$NOTES" | tail -n 1 | sed 's/.*=//')
check reloading_monotonic_usec awk -v m="${MONO:-0}" -v a="$BEFORE" -v b="$AFTER" 'BEGIN { exit !(m >= a && m <= b + 2000000) }'
check ready_after_reload sh -c "wait_n=0; until grep -A1 'RELOADING=1' '$NOTES' | tail -n 1 | grep -q ' READY=1\$'; do
	[ \$wait_n -ge 50 ] && exit 1; sleep 0.1; wait_n=\$((wait_n + 1)); done"
check status_reloaded wait_note ' STATUS=serving \(reloaded\)'
# `systemctl reload` runs the unit's ExecReload lines in order and fails at the first that
# fails: run them as systemd would (the binary, the file and $MAINPID put in): with a
# refused file the -t line fails, so no SIGHUP is sent and the reload reports failure.
exec_reload() { # CONF: exit status of the ExecReload sequence
	local line cmd
	while IFS= read -r line; do
		cmd=${line#ExecReload=}
		cmd=${cmd//\/usr\/local\/bin\/starttls-proxy/$STP_BIN}
		cmd=${cmd//\/etc\/starttls-proxy\/starttls-proxy.conf/$1}
		cmd=${cmd//\$MAINPID/$PROXY}
		eval "$cmd" >/dev/null 2>&1 || return 1
	done < <(grep '^ExecReload=' "$UNITS/starttls-proxy.service")
}
cp "$T/proxy.conf" "$T/refused.conf"
echo "bogus_key = 1" >>"$T/refused.conf"
R0=$(log_count 'event=reload ')
if exec_reload "$T/refused.conf"; then
	fail systemctl_reload_fails_on_refused_file "the ExecReload sequence succeeded"
else
	pass systemctl_reload_fails_on_refused_file
fi
# Fence: the same sequence with the good file does reload (one more event=reload line);
# had the refused attempt sent a SIGHUP, there would be two.
check systemctl_reload_good_file exec_reload "$T/proxy.conf"
wait_count 'event=reload ' $((R0 + 1)) 5
check refused_file_no_sighup test "$(log_count 'event=reload ')" -eq $((R0 + 1))
# A refused reload reaching the process anyway (kill -HUP by hand): the same pair, and a
# STATUS that says so.
echo "bogus_key = 1" >>"$T/proxy.conf"
kill -HUP "$PROXY"
check reload_refused_status wait_note 'STATUS=serving; the last reload was refused'
check reload_refused_ready wait_note ' READY=1$' 2
check reload_refused_logged wait_log 'event=reload .*result=failed'
cp "$T/good.conf" "$T/proxy.conf"

# SIGTERM: STOPPING=1, /readyz 503 at once, the listener still accepts during drain_grace
# (2 s), then closes; the process exits 0.
ADM=http://127.0.0.1:$ADMIN
check readyz_before sh -c "curl -sf $ADM/readyz | grep -qx ready"
kill -TERM "$PROXY"
check stopping_sent wait_note ' STOPPING=1$'
check readyz_503_in_grace sh -c "for i in \$(seq 20); do
	[ \"\$(curl -s -o /dev/null -w '%{http_code}' $ADM/readyz)\" = 503 ] && exit 0; sleep 0.05; done; exit 1"
if (exec 3<>"/dev/tcp/127.0.0.1/$P") 2>/dev/null; then
	pass accepts_during_grace
else
	fail accepts_during_grace "127.0.0.1:$P refused during drain_grace"
fi
check listener_closes_after_grace wait_refused "$P" 5
if wait_proxy_exit proxy 10; then # not in check's subshell: it waits for its own child
	pass stopped_after_grace
else
	fail stopped_after_grace "status $STOP_STATUS after ${STOP_SECS}s"
fi
check grace_logged grep -q 'event=shutdown.*drain_grace_ms=2000' "$PROXY_LOG"
check no_ready_after_stopping sh -c "! sed -n '/STOPPING=1/,\$p' '$NOTES' | grep -q ' READY=1'"

# --- 3. socket activation -----------------------------------------------------------------
free_port PS; free_port PNEVER
{
	global_section "workers = 2"
	cat <<CONF
[route smtp-in]
listen = 127.0.0.1:$PNEVER
protocol = smtp
upstream = 127.0.0.1:$SINK
upstream_tls = none
CONF
} | grep -v '^workers = 1$' >"$T/sa.conf"
PROXY_NAMES+=(activated)
spawn activated systemd-socket-activate -l "127.0.0.1:$PS" --fdname=smtp-in \
	"$STP_BIN" -c "$T/sa.conf"
PROXY_PID[activated]=$LAST_PID
wait_port "$PS" 10 || fail activate_listen "systemd-socket-activate not listening"
make_message "$T/m.eml" sa
SENT=0
for i in 1 2 3 4; do
	smtp_send --connect "127.0.0.1:$PS" --file "$T/m.eml" --from a@client.test \
		--to "b$i@example.test" >/dev/null 2>&1 && SENT=$((SENT + 1))
done
check activated_messages_sent test "$SENT" -eq 4
check activated_messages_stored sh -c "[ \"\$(ls '$T/sink.store' | wc -l)\" -ge 4 ]"
check activated_socket_logged grep -q 'event=listening .*socket=passed' "$T/activated.log"
if (exec 3<>"/dev/tcp/127.0.0.1/$PNEVER") 2>/dev/null; then
	fail route_listen_not_bound "the route's own listen address 127.0.0.1:$PNEVER accepts"
else
	pass route_listen_not_bound
fi

# A reload that moves the route's listen address: the passed socket stays, and the log
# says the new address is not bound.
free_port PMOVED
sed -i "s/^listen = 127.0.0.1:$PNEVER\$/listen = 127.0.0.1:$PMOVED/" "$T/sa.conf"
kill -HUP "${PROXY_PID[activated]}"
check activated_reload_note wait_log 'route=smtp-in event=reload note="the route keeps the socket systemd passed' 5 "$T/activated.log"
check activated_socket_still_serves smtp_send --connect "127.0.0.1:$PS" --file "$T/m.eml" --from a@client.test --to after@example.test

# A socket whose name matches no route: refused at start, with the name in the message.
free_port PBAD
PROXY_NAMES+=(misnamed)
spawn misnamed systemd-socket-activate -l "127.0.0.1:$PBAD" --fdname=no-such-route \
	"$STP_BIN" -c "$T/sa.conf"
PROXY_PID[misnamed]=$LAST_PID
wait_port "$PBAD" 10
(exec 3<>"/dev/tcp/127.0.0.1/$PBAD") 2>/dev/null # the connection starts the service
wait_proxy_exit misnamed 10
check misnamed_refused test "$STOP_STATUS" = 1
check misnamed_message wait_log 'socket \\"no-such-route\\" \(descriptor 3\) matches no route' 5 "$T/misnamed.log"
finish
