#!/usr/bin/env bash
# The adversarial review's SMTP findings, each tried as the hostile peer would:
# - BDAT through an upstream that never offered CHUNKING (it would read the chunk as
#   commands, XCLIENT among them): refused with 502 and the chunk skipped; huge and
#   garbled sizes end the session; with Postfix (CHUNKING) a chunk holding commands is
#   delivered as message text;
# - REQUIRETLS never offered on a plaintext leg;
# - a "220" glued to the EHLO reply before STARTTLS was sent: a protocol error, no TLS;
# - a reset during the upstream STARTTLS handshake under encrypt: 421 4.7.0, a policy
#   failure counted as tls-handshake-failure (not "unreachable");
# - the default per-client connection limit (50): silent sockets from one address do not
#   open more upstream connections than that.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/smtp_lib.sh
. "$(dirname "$0")/smtp_lib.sh"

SRV=(--cert "$CERTS/server.pem" --key "$CERTS/server.key")
start_fake nochunk --starttls none --xclient
start_fake chunk --starttls none --caps CHUNKING
start_fake reqtls "${SRV[@]}" --caps REQUIRETLS
start_fake reqtls_plain --starttls none --caps REQUIRETLS
start_fake early "${SRV[@]}" --early-220
start_fake reset "${SRV[@]}" --reset-in-handshake
start_fake reset_may "${SRV[@]}" --reset-in-handshake
start_fake many --starttls none
start_sink pfsink
pf_start pf "$(port_of pfsink)" plain=none

declare -A P=()
free_port ADMIN
conf=$T/review.conf
route() { # NAME CLIENT_TLS UPSTREAM_PORT UPSTREAM_TLS POLICY [extra]
	local name=$1 ctls=$2 up=$3 utls=$4 pol=$5 port l
	shift 5
	free_port port
	P[$name]=$port
	printf '[route %s]\nlisten = 127.0.0.1:%s\nprotocol = smtp\nclient_tls = %s\n' "$name" "$port" "$ctls"
	printf 'upstream = 127.0.0.1:%s\nupstream_tls = %s\nupstream_policy = %s\n' "$up" "$utls" "$pol"
	echo "upstream_name = localhost"
	for l in "$@"; do echo "$l"; done
	echo
}
{
	global_section "helo_name = proxy.review.test" "admin_listen = 127.0.0.1:$ADMIN"
	route nochunk none "$(port_of nochunk)" none none
	route chunk none "$(port_of chunk)" none none
	route pf starttls "${PF_PORT[pf.plain]}" none none
	route reqtls_inject none "$(port_of reqtls)" starttls verify
	route reqtls_term starttls "$(port_of reqtls_plain)" none none
	route early none "$(port_of early)" starttls verify
	route reset none "$(port_of reset)" starttls encrypt
	route reset_may none "$(port_of reset_may)" starttls may
	route many none "$(port_of many)" none none "connect_timeout = 5s"
} >"$conf"
start_proxy "$conf"
TLSV=(--ca "$CERTS/ca.pem" --name localhost)
OPEN=(expect:220 cmd:250:"EHLO app.client.test" cmd:250:"MAIL FROM:<app@client.test>"
	cmd:250:"RCPT TO:<someone@dest.test>")

# --- BDAT ----------------------------------------------------------------------------------
# 22 octets of chunk: an XCLIENT line the upstream (which takes XCLIENT) must never read.
dialog bdat_without_chunking_refused --connect "127.0.0.1:${P[nochunk]}" "${OPEN[@]}" \
	"raw:BDAT 22 LAST\r\nXCLIENT ADDR=6.6.6.6\r\n" expect:502 cmd:250:NOOP cmd:221:QUIT closed:3
dialog bdat_huge_size_closes --connect "127.0.0.1:${P[nochunk]}" "${OPEN[@]}" \
	"raw:BDAT 999999999999999999\r\nXCLIENT ADDR=6.6.6.6\r\nNOOP\r\n" expect:552 closed:3
dialog bdat_garbled_size_closes --connect "127.0.0.1:${P[nochunk]}" "${OPEN[@]}" \
	"raw:BDAT 12x LAST\r\nXCLIENT ADDR=6.6.6.6\r\nNOOP\r\n" expect:521 closed:3
dialog bdat_twenty_digits_closes --connect "127.0.0.1:${P[nochunk]}" "${OPEN[@]}" \
	"raw:BDAT 99999999999999999999\r\nXCLIENT ADDR=6.6.6.6\r\n" expect:521 closed:3
if wait_count '# disconnect' 4 5 "$T/nochunk.lines" && ! lines_have nochunk 'XCLIENT|BDAT|NOOP.*NOOP'; then
	pass bdat_upstream_never_read_the_chunk
else
	fail bdat_upstream_never_read_the_chunk "$(grep -E 'XCLIENT|BDAT' "$T/nochunk.lines" | head -n 3)"
fi
# With CHUNKING offered, the chunk is data for both: delivered as message text.
dialog bdat_with_chunking_delivered --connect "127.0.0.1:${P[chunk]}" "${OPEN[@]}" \
	"raw:BDAT 57 LAST\r\nMessage-ID: <bdat1@client.test>\r\n\r\nXCLIENT ADDR=6.6.6.6\r\n" \
	expect:250 cmd:221:QUIT closed:3
# The fake's session ended (fake_idle) and it logged the chunk as one (so its lines file
# exists and saw this session): only then does "no XCLIENT line" mean anything.
if f=$(wait_tag "$T/chunk.store" bdat1 5) && grep -q 'XCLIENT ADDR=6.6.6.6' "$f" &&
	fake_idle chunk 1 && lines_have chunk '^plain: <chunk 57 octets>$' &&
	! lines_have chunk '^plain: XCLIENT'; then
	pass bdat_chunk_is_content_for_both
else
	fail bdat_chunk_is_content_for_both "$(tail -n 5 "$T/chunk.lines")"
fi
# Postfix (CHUNKING) behind a terminate route: pipelined chunks and LAST, byte-exact text.
dialog bdat_postfix_pipelined_chunks --connect "127.0.0.1:${P[pf]}" "${TLSV[@]}" \
	expect:220 cmd:250:"EHLO app.client.test" has:CHUNKING cmd:220:STARTTLS starttls \
	cmd:250:"EHLO app.client.test" has:CHUNKING \
	"raw:MAIL FROM:<app@client.test>\r\nRCPT TO:<someone@dest.test>\r\nBDAT 35\r\nMessage-ID: <bdat2@client.test>\r\n\r\nBDAT 25 LAST\r\nXCLIENT ADDR=6.6.6.6\r\nz\r\n" \
	expect:250 expect:250 expect:250 expect:250 cmd:221:QUIT closed:3
if f=$(wait_tag "$T/pfsink.store" bdat2 10) && grep -q '^XCLIENT ADDR=6.6.6.6' "$f"; then
	pass bdat_postfix_delivered_chunk_text
else
	fail bdat_postfix_delivered_chunk_text "no message bdat2 with the chunk text"
fi
dialog bdat_postfix_huge_size_closes --connect "127.0.0.1:${P[pf]}" "${TLSV[@]}" \
	expect:220 cmd:250:"EHLO app.client.test" cmd:220:STARTTLS starttls \
	cmd:250:"EHLO app.client.test" "${OPEN[@]:2}" \
	"raw:BDAT 999999999999999999\r\nXCLIENT ADDR=6.6.6.6\r\n" expect:552 closed:3
# Fence: Postfix logged the end of its three sessions (pf_start's readiness probe and the
# two dialogs), so its log holds whatever they did.
if ! pf_sessions_done pf plain 3; then
	fail bdat_postfix_saw_no_command_from_a_chunk "Postfix did not log the end of the sessions"
elif grep -q 'XCLIENT\|improper command pipelining' "$(pf_log pf)"; then
	fail bdat_postfix_saw_no_command_from_a_chunk "$(grep -m2 'XCLIENT\|improper' "$(pf_log pf)")"
else
	pass bdat_postfix_saw_no_command_from_a_chunk
fi

# --- REQUIRETLS --------------------------------------------------------------------------
dialog requiretls_hidden_from_plaintext_client --connect "127.0.0.1:${P[reqtls_inject]}" \
	expect:220 cmd:250:"EHLO app.client.test" contains:"fake.test greets" lacks:REQUIRETLS \
	cmd:221:QUIT closed:3
dialog requiretls_only_inside_tls --connect "127.0.0.1:${P[reqtls_term]}" "${TLSV[@]}" \
	expect:220 cmd:250:"EHLO app.client.test" has:STARTTLS lacks:REQUIRETLS \
	cmd:220:STARTTLS starttls cmd:250:"EHLO app.client.test" has:REQUIRETLS cmd:221:QUIT closed:3

# --- a reply before its command ------------------------------------------------------------
dialog early_220_is_a_protocol_error --connect "127.0.0.1:${P[early]}" \
	"raw:EHLO app.client.test\r\n" expect:421:4.4.1 closed:3
expect_log early_220_logged 'route=early .*event=protocol_error .*error="reply before its command was sent"'
if [ "$(log_count 'route=early .*event=(upstream_tls|policy_failure)')" = 0 ]; then
	pass early_220_no_tls_started
else
	fail early_220_no_tls_started "$(log_line 'route=early .*event=(upstream_tls|policy_failure)')"
fi

# --- reset during the upstream handshake ----------------------------------------------------
dialog reset_in_handshake_is_policy_failure --connect "127.0.0.1:${P[reset]}" \
	"raw:EHLO app.client.test\r\n" expect:421:4.7.0 closed:3
expect_log reset_in_handshake_logged 'route=reset .*event=policy_failure .*result=tls-handshake-failure .*mode=enforce'
curl -sf "http://127.0.0.1:$ADMIN/metrics" >"$T/metrics.txt"
if grep -qF 'starttls_proxy_policy_failures_total{route="reset",result="tls-handshake-failure",mode="enforce"} 1' "$T/metrics.txt"; then
	pass reset_in_handshake_counted
else
	fail reset_in_handshake_counted "$(grep 'route="reset"' "$T/metrics.txt" | head -n 5)"
fi
if [ "$(log_count 'route=reset .*upstream_unreachable')" = 0 ]; then
	pass reset_in_handshake_not_unreachable
else
	fail reset_in_handshake_not_unreachable "$(log_line 'route=reset .*upstream_unreachable')"
fi
# Under may, the same reset means "no TLS here": a plaintext retry, as with a failed handshake.
dialog reset_in_handshake_may_retries_plain --connect "127.0.0.1:${P[reset_may]}" \
	expect:220 cmd:250:"EHLO app.client.test" cmd:221:QUIT closed:3

# --- the default per-client limit -------------------------------------------------------------
# 60 connections from 127.0.0.1 that never speak: 50 get the upstream's greeting through the
# proxy, 10 get 421 4.7.0 from the proxy; the upstream saw 50 connections.
"$SMTP_PY" - "${P[many]}" >"$T/many.out" 2>&1 <<'PY'
import socket, sys, time
port = int(sys.argv[1])
socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(60)]
got = {"220": 0, "421": 0, "other": 0}
for s in socks:
    s.settimeout(5)
    try:
        d = s.recv(200)
    except OSError:
        d = b""
    k = d[:3].decode("latin-1")
    got[k if k in got else "other"] += 1
    if k == "421" and b"4.7.0" not in d:
        got["other"] += 1
print("%d %d %d" % (got["220"], got["421"], got["other"]))
for s in socks:
    s.close()
PY
if [ "$(tail -n 1 "$T/many.out")" = "50 10 0" ]; then
	pass per_client_default_limit_50
else
	fail per_client_default_limit_50 "greeted, refused, other: $(tail -n 3 "$T/many.out")"
fi
n=$(grep -c '# connect from' "$T/many.lines")
[ "$n" -eq 50 ] && pass per_client_upstream_saw_50 || fail per_client_upstream_saw_50 "$n upstream connections"
finish
