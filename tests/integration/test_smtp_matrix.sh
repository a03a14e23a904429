#!/usr/bin/env bash
# The full SMTP/LMTP matrix: every client_tls in {none, starttls, implicit} with every
# upstream_tls in {none, starttls, implicit}, for protocol = smtp and protocol = lmtp
# (18 routes in one proxy). Each route gets one message from a client speaking its
# client-side mode (Python smtplib: SMTP, SMTP + starttls(), SMTP_SSL; LMTP, LMTP +
# starttls(), LMTP over implicit TLS) toward an aiosmtpd sink speaking its upstream mode
# (plain, STARTTLS offered, implicit TLS) with the test CA's server.pem; the proxy
# verifies TLS upstreams (upstream_policy verify, upstream_name localhost).
#
# Per combination PROTO_CLIENT_UPSTREAM:
#   _delivered           the message arrived byte-exact with its envelope (LMTP: both
#                        recipients), over TLS at the sink exactly when upstream_tls != none
#   _client_tls_logged   (TLS client sides) the proxy logged event=client_tls
#   _upstream_tls_verified  (TLS upstreams) the proxy logged event=upstream_tls ... verify=ok
#   _starttls_offered_before_tls_only  (client_tls = starttls) the pre-TLS EHLO/LHLO
#                        reply offers STARTTLS, the post-TLS one does not
#   _no_starttls_offered (client_tls none|implicit) no EHLO/LHLO reply offers STARTTLS
#   _close_logged_tls_per_side  the session's event=close line says client_tls and
#                        upstream_tls = a TLS version on TLS sides, "none" on plaintext ones
#   _per_recipient_replies  (LMTP) two 250 replies after DATA, one per recipient
# and lmtp_upstream_MODE_lhlo_only: the LMTP servers never received EHLO.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/smtp_lib.sh
. "$(dirname "$0")/smtp_lib.sh"

CA=$CERTS/ca.pem
MODES=(none starttls implicit)
PROTOS=(smtp lmtp)

# --- an implicit-TLS variant of tools/smtp_sink.py -------------------------------------
# smtp_sink.py offers STARTTLS (--cert/--key) but cannot listen with implicit TLS. This
# wrapper loads it unchanged as a module and adds TLS to its listening socket; the stored
# .json then says "tls": true as with STARTTLS.
cat >"$T/sink_implicit.py" <<'PY'
import asyncio
import asyncio.base_events
import os
import runpy
import ssl
import sys

sink, cert, key = sys.argv[1:4]
sys.argv = [sink] + sys.argv[4:]
g = runpy.run_path(sink, run_name="smtp_sink_implicit")["main"].__globals__

ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
orig_create_server = asyncio.base_events.BaseEventLoop.create_server


async def create_server(self, *a, **kw):
    kw["ssl"] = ctx
    return await orig_create_server(self, *a, **kw)


asyncio.base_events.BaseEventLoop.create_server = create_server
orig_raw_logging = g["raw_logging"]


def raw_logging(base):
    class Implicit(orig_raw_logging(base)):
        def connection_made(self, transport):
            super().connection_made(transport)
            self.session.ssl = transport.get_extra_info("ssl_object") is not None
    return Implicit


g["raw_logging"] = raw_logging
os.makedirs(g["ARGS"].store, exist_ok=True)
try:
    asyncio.run(g["main"]())
except KeyboardInterrupt:
    pass
PY

# --- an LMTP client on Python's smtplib ----------------------------------------------------
# smtplib.LMTP (a subclass of SMTP, LHLO as its hello) with starttls() or, for implicit
# TLS, a socket wrapped before the greeting. sendmail() reads one reply after DATA; LMTP
# sends one per accepted recipient, so the rest are read with getreply(). Prints a JSON
# line: the LHLO keywords before/after TLS, every reply after DATA, or the error.
cat >"$T/lmtp_send.py" <<'PY'
import json
import smtplib
import ssl
import sys

connect, tls, ca, msgfile = sys.argv[1:5]
rcpts = sys.argv[5:]
host, port = connect.rsplit(":", 1)
ctx = ssl.create_default_context(cafile=ca)


class LMTP_SSL(smtplib.LMTP):
    def _get_socket(self, host, port, timeout):
        return ctx.wrap_socket(super()._get_socket(host, port, timeout), server_hostname=host)


res = {"ok": False}
try:
    cls = LMTP_SSL if tls == "implicit" else smtplib.LMTP
    s = cls(host, int(port), local_hostname="smtplib.lmtp.test", timeout=10)
    s.ehlo()
    res["lhlo"] = sorted(s.esmtp_features)
    if tls == "starttls":
        s.starttls(context=ctx)
        s.ehlo()
        res["lhlo_tls"] = sorted(s.esmtp_features)
    code, text = s.mail("app@client.test")
    if code != 250:
        raise smtplib.SMTPResponseException(code, text)
    for r in rcpts:
        code, text = s.rcpt(r)
        if code != 250:
            raise smtplib.SMTPResponseException(code, text)
    replies = [s.data(open(msgfile, "rb").read())]
    for _ in rcpts[1:]:
        replies.append(s.getreply())
    res["data_replies"] = [[c, t.decode("utf-8", "replace")] for c, t in replies]
    s.quit()
    res["ok"] = True
except smtplib.SMTPResponseException as e:
    res["error"] = "%d %s" % (e.smtp_code, e.smtp_error.decode("utf-8", "replace"))
except (smtplib.SMTPException, OSError) as e:
    res["error"] = "%s: %s" % (type(e).__name__, e)
print(json.dumps(res))
sys.exit(0 if res["ok"] else 1)
PY

# --- the six upstreams -----------------------------------------------------------------
# Started together (each python takes a moment), then waited for.
declare -A UP_PORT=()
for p in "${PROTOS[@]}"; do
	for u in "${MODES[@]}"; do
		name=up_${p}_$u
		args=(--ready "$T/$name.port" --store "$T/$name.store" --raw "$T/$name.raw")
		[ "$p" = lmtp ] && args+=(--lmtp)
		case $u in
		none) spawn "$name" "$SMTP_PY" "$TOOLS/smtp_sink.py" "${args[@]}" ;;
		starttls)
			spawn "$name" "$SMTP_PY" "$TOOLS/smtp_sink.py" "${args[@]}" \
				--cert "$CERTS/server.pem" --key "$CERTS/server.key"
			;;
		implicit)
			spawn "$name" "$SMTP_PY" "$T/sink_implicit.py" "$TOOLS/smtp_sink.py" \
				"$CERTS/server.pem" "$CERTS/server.key" "${args[@]}"
			;;
		esac
	done
done
for p in "${PROTOS[@]}"; do
	for u in "${MODES[@]}"; do
		name=up_${p}_$u
		if ! wait_file "$T/$name.port" 10; then
			fail "start_sink($name)" "not listening after 10s: $(tail -n 5 "$T/$name.log")"
			exit 1
		fi
		UP_PORT[$name]=$(head -n 1 "$T/$name.port")
	done
done

# --- one proxy, 18 routes ----------------------------------------------------------------
declare -A PORT=()
conf=$T/matrix.conf
{
	global_section "helo_name = proxy.matrix.test"
	for p in "${PROTOS[@]}"; do
		for c in "${MODES[@]}"; do
			for u in "${MODES[@]}"; do
				r=${p}_${c}_$u
				free_port "PORT[$r]"
				printf '[route %s]\nlisten = 127.0.0.1:%s\nprotocol = %s\nclient_tls = %s\n' \
					"$r" "${PORT[$r]}" "$p" "$c"
				[ "$c" = starttls ] && echo "client_policy = encrypt"
				printf 'upstream = 127.0.0.1:%s\nupstream_tls = %s\n' "${UP_PORT[up_${p}_$u]}" "$u"
				if [ "$u" = none ]; then
					echo "upstream_policy = none"
				else
					printf 'upstream_policy = verify\nupstream_name = localhost\n'
				fi
				echo
			done
		done
	done
} >"$conf"
start_proxy "$conf"

# --- send: all 18 at once (at most 8 running), results into $T/out_ROUTE ---------------
send_one() {
	local p=$1 c=$2 u=$3 r=${1}_${2}_$3
	if [ "$p" = smtp ]; then
		"$SMTP_PY" "$TOOLS/smtp_send.py" --connect "127.0.0.1:${PORT[$r]}" --tls "$c" \
			--ca "$CA" --file "$T/m-$r" --from app@client.test --to "someone-$r@dest.test" \
			--helo "smtplib.$r.test"
	else
		"$SMTP_PY" "$T/lmtp_send.py" "127.0.0.1:${PORT[$r]}" "$c" "$CA" "$T/m-$r" \
			"alice-$r@dest.test" "bob-$r@dest.test"
	fi
}
SENDERS=()
for p in "${PROTOS[@]}"; do
	for c in "${MODES[@]}"; do
		for u in "${MODES[@]}"; do
			r=${p}_${c}_$u
			make_message "$T/m-$r" "$r"
			while :; do
				n_live=0
				for pid in "${SENDERS[@]}"; do kill -0 "$pid" 2>/dev/null && n_live=$((n_live + 1)); done
				[ "$n_live" -lt 8 ] && break
				sleep 0.05
			done
			(send_one "$p" "$c" "$u" >"$T/out_$r" 2>&1; echo $? >"$T/rc_$r") &
			PIDS+=("$!")
			SENDERS+=("$!")
		done
	done
done
for pid in "${SENDERS[@]}"; do wait "$pid" 2>/dev/null; done

# json_check ROUTE PYEXPR: PYEXPR (over r, the client's JSON result) is true.
json_check() {
	"$SMTP_PY" -c '
import json, sys
r = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
sys.exit(0 if eval("(" + sys.argv[2] + ")") else 1)' "$T/out_$1" "$2" 2>/dev/null
}
client_said() { tail -n 3 "$T/out_$1" | tr '\n' ' '; }

# --- check every combination -------------------------------------------------------------
for p in "${PROTOS[@]}"; do
	for c in "${MODES[@]}"; do
		for u in "${MODES[@]}"; do
			r=${p}_${c}_$u
			st=$T/up_${p}_$u.store
			if [ "$(cat "$T/rc_$r" 2>/dev/null)" != 0 ]; then
				fail "${r}_delivered" "client: $(client_said "$r")"
			elif ! f=$(wait_tag "$st" "$r" 5); then
				fail "${r}_delivered" "accepted but not at the sink; client: $(client_said "$r")"
			elif ! why=$(same_message "$T/m-$r" "$f"); then
				fail "${r}_delivered" "$why"
			else
				[ "$u" = none ] && want_tls=false || want_tls=true
				if [ "$p" = smtp ]; then
					rcpts="\"someone-$r@dest.test\""
				else
					rcpts="\"alice-$r@dest.test\", \"bob-$r@dest.test\""
				fi
				meta=$(cat "${f%.eml}.json")
				if grep -q "\"delivered\": \[$rcpts\]" <<<"$meta" &&
					grep -q '"mail_from": "app@client.test"' <<<"$meta" &&
					grep -q "\"tls\": $want_tls" <<<"$meta"; then
					pass "${r}_delivered"
				else
					fail "${r}_delivered" "envelope or TLS at the sink (want tls=$want_tls): $meta"
				fi
			fi

			if [ "$c" != none ]; then
				expect_log "${r}_client_tls_logged" \
					"route=$r .*event=client_tls .*version=TLSv1\.[23]" 2
			fi
			if [ "$u" != none ]; then
				expect_log "${r}_upstream_tls_verified" \
					"route=$r .*event=upstream_tls .*version=TLSv1\.[23] .*verify=ok" 2
			fi

			# The close line names both sides: a TLS version or "none".
			[ "$c" = none ] && ct=none || ct='TLSv1\.[23]'
			[ "$u" = none ] && ut=none || ut='TLSv1\.[23]'
			expect_log "${r}_close_logged_tls_per_side" \
				"route=$r event=close reason=quit .*client_tls=$ct .*upstream_tls=$ut( |\$)" 2

			if [ "$p" = smtp ]; then hello=ehlo; else hello=lhlo; fi
			if [ "$c" = starttls ]; then
				if json_check "$r" "'starttls' in r['$hello'] and 'starttls' not in r['${hello}_tls']"; then
					pass "${r}_starttls_offered_before_tls_only"
				else
					fail "${r}_starttls_offered_before_tls_only" "$(client_said "$r")"
				fi
			else
				if json_check "$r" "'$hello' in r and 'starttls' not in r['$hello']"; then
					pass "${r}_no_starttls_offered"
				else
					fail "${r}_no_starttls_offered" "$(client_said "$r")"
				fi
			fi

			if [ "$p" = lmtp ]; then
				if json_check "$r" "[x[0] for x in r['data_replies']] == [250, 250]
						and 'alice-$r@dest.test' in r['data_replies'][0][1]
						and 'bob-$r@dest.test' in r['data_replies'][1][1]"; then
					pass "${r}_per_recipient_replies"
				else
					fail "${r}_per_recipient_replies" "$(client_said "$r")"
				fi
			fi
		done
	done
done

# The LMTP upstreams heard LHLO from the proxy (and its clients), never EHLO.
for u in "${MODES[@]}"; do
	raw=$T/up_lmtp_$u.raw
	if grep -qai '^EHLO' "$raw"; then
		fail "lmtp_upstream_${u}_lhlo_only" "EHLO reached the LMTP server: $(grep -aim1 '^EHLO' "$raw")"
	elif [ "$(grep -aci '^LHLO' "$raw")" -ge 3 ]; then
		pass "lmtp_upstream_${u}_lhlo_only"
	else
		fail "lmtp_upstream_${u}_lhlo_only" "$(grep -aci '^LHLO' "$raw") LHLO lines for 3 sessions"
	fi
done

finish
