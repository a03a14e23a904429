#!/usr/bin/env bash
# No mail lost, no false success, under faults toward the upstream: 100 SMTP sessions per
# route through the proxy to a private Postfix (which relays to a sink), each with a fault
# injected by a relay between the proxy and Postfix (tools/mail_faults.py): RST or FIN
# after a random number of octets either way (before, during and after DATA; on the
# injecting route also inside the TLS handshake), the upstream's reply to the end of data
# withheld, the upstream stalled, or the client itself vanishing mid-message. Then:
#  - every message the client saw acknowledged is in the sink (nothing lost);
#  - a session that was not acknowledged got a 4xx reply (421/451 ...), never a reset, a
#    5xx or a silent end;
#  - a message the client was not told about reached the sink only when the relay withheld
#    the upstream's own reply to the end of data (RFC 1047's window, which no proxy can
#    close; terminating route, where the relay reads plaintext); a client that vanished
#    mid-message never has its message delivered;
#  - Postfix saw as many disconnects as connections (no upstream session left half-open).
# The seed is printed; STP_FAULT_SEED=N repeats a run.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/smtp_lib.sh
. "$(dirname "$0")/smtp_lib.sh"

RUNS=${STP_FAULT_RUNS:-100}
SEED=${STP_FAULT_SEED:-$(( $(date +%s) % 100000 ))}
note "seed $SEED (STP_FAULT_SEED=$SEED repeats this run), $RUNS sessions per route"

start_sink sink
pf_start pf "$(port_of sink)" up=may
PF_UP=${PF_PORT[pf.up]}

free_port P_TERM; free_port P_INJ; free_port R_TERM; free_port R_INJ
conf=$T/faults.conf
{
	global_section
	cat <<EOF
[route terminate]
listen = 127.0.0.1:$P_TERM
protocol = smtp
upstream = 127.0.0.1:$R_TERM
upstream_tls = none
idle_timeout = 2s
handshake_timeout = 3s

[route inject]
listen = 127.0.0.1:$P_INJ
protocol = smtp
upstream = 127.0.0.1:$R_INJ
upstream_tls = starttls
upstream_policy = verify
upstream_name = localhost
idle_timeout = 2s
handshake_timeout = 3s
EOF
} >"$conf"
start_proxy "$conf"

mkdir -p "$T/msgs"
for mode in terminate inject; do
	if [ $mode = terminate ]; then px=$P_TERM relay=$R_TERM; else px=$P_INJ relay=$R_INJ; fi
	if ! out=$("$SMTP_PY" "$TOOLS/mail_faults.py" --relay "$relay" --upstream "127.0.0.1:$PF_UP" \
		--proxy "127.0.0.1:$px" --runs "$RUNS" --seed "$SEED" --mode $mode \
		--msgdir "$T/msgs" --out "$T/faults-$mode.json" 2>"$T/faults-$mode.err"); then
		fail "faults_$mode" "the sessions did not run: $(tail -n 3 "$T/faults-$mode.err")"
		exit 1
	fi
	note "$mode: $out"
done

# everything Postfix accepted has left its queue for the sink
if ! pf_idle pf 60; then
	fail postfix_queue_empty "messages still queued: $(find "$T/pf-pf/spool" -type f -path '*/[adhi]*/*' | head -n 3)"
fi

judge() { # MODE: the verdicts of one route's sessions against the sink
	"$SMTP_PY" - "$T/faults-$1.json" "$T/sink.store" "$1" <<'PY'
import glob, json, re, sys
data = json.load(open(sys.argv[1]))
mode = sys.argv[3]
delivered = {}
for f in glob.glob(sys.argv[2] + "/msg-*.eml"):
    m = re.search(rb"Message-ID: <([^@>]+)@client\.test>", open(f, "rb").read())
    if m:
        t = m.group(1).decode()
        delivered[t] = delivered.get(t, 0) + 1
bad = []
counts = {}
for r in data["results"]:
    t, f, got = r["tag"], r["fault"], delivered.get(r["tag"], 0)
    counts[f] = counts.get(f, 0) + 1
    rel = r["relay"] or {}
    if got > 1:
        bad.append("%s (%s k=%d): delivered %d times" % (t, f, r["k"], got))
    if r["acked"]:
        if not got:
            bad.append("%s (%s k=%d): acknowledged to the client but not delivered" % (t, f, r["k"]))
        continue
    if f == "client-abort":
        if got:
            bad.append("%s: the client vanished mid-message, yet it was delivered" % t)
        continue
    if not re.match(r"4\d\d ", r["reply"]):
        bad.append("%s (%s k=%d): not acknowledged, and the client got no 4xx reply: %s"
                   % (t, f, r["k"], r["reply"]))
    # the upstream's 250 to the end of data, or part of it, never reached the proxy
    window = rel.get("after_eod", "").startswith("250") and rel.get("withheld")
    if got and mode == "terminate" and not window:
        bad.append("%s (%s k=%d): delivered, the client told %s, and the relay withheld no "
                   "250 after the end of data (relay: %s)" % (t, f, r["k"], r["reply"], rel))
acked = sum(1 for r in data["results"] if r["acked"])
window = sum(1 for r in data["results"] if not r["acked"] and delivered.get(r["tag"]))
print("%d sessions (%s), %d acknowledged, %d delivered without the client's knowledge "
      "(upstream reply withheld)" % (len(data["results"]),
      ", ".join("%s %d" % kv for kv in sorted(counts.items())), acked, window))
for b in bad[:10]:
    print("BAD " + b)
sys.exit(1 if bad else 0)
PY
}
for mode in terminate inject; do
	if out=$(judge $mode 2>&1); then
		pass "faults_${mode}_no_mail_lost_no_false_success"
		note "$out"
	else
		fail "faults_${mode}_no_mail_lost_no_false_success" "$out"
	fi
done

# no upstream session half-open: Postfix logged a disconnect for every connection
log=$(pf_log pf)
i=0
while :; do
	c=$(grep -c 'smtpd\[[0-9]*\]: connect from' "$log")
	d=$(grep -c 'smtpd\[[0-9]*\]: disconnect from' "$log")
	[ "$c" -gt 0 ] && [ "$c" = "$d" ] && break
	[ $i -ge 300 ] && break
	sleep 0.1
	i=$((i + 1))
done
if [ "$c" -ge "$RUNS" ] && [ "$c" = "$d" ]; then
	pass upstream_sessions_all_closed
	note "Postfix: $c connections, $d disconnects"
else
	fail upstream_sessions_all_closed "Postfix: $c connections, $d disconnects"
fi
