#!/usr/bin/env bash
# MTA-STS (RFC 8461) with late binding: a legacy app's outbound mail goes to each recipient
# domain's MX, under the domain's published policy.
#
# Everything is local and made by the test: a DNSSEC-signed zone "example." served by a
# private NSD (dns_lib.sh) with MX, A, _mta-sts TXT records; one HTTPS server per policy
# domain (mta-sts.DOMAIN, certificates from the test CA) on its own loopback address; real
# SMTP servers (aiosmtpd, with STARTTLS and certificates from the test CA, or without) as
# the MX hosts on their own loopback addresses. The proxy's route: upstream = mx:PORT,
# upstream_policy = mta-sts; resolver = the test's NSD, its DS as trust anchor,
# mta_sts_port = the HTTPS servers' port (RFC 8461 fixes 443; the test may not own it).
#
# Cases: enforce + good MX delivers over verified TLS; enforce + a certificate for another
# name is blocked (421 4.7.0) and the MX gets nothing of the message; enforce + MX outside
# the mx: patterns is never contacted (450 4.7.5) and the session goes on; testing delivers
# and reports; no policy is opportunistic; two recipients of domains with different
# policies in one transaction; null MX, NXDOMAIN and a DNSSEC-bogus MX answer; the policy
# cached (HTTPS servers stopped: still enforced, also after a restart, from the cache
# directory) and refetched when the TXT id changes; redirects not followed.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/smtp_lib.sh"
. "$(dirname "$0")/dns_lib.sh"
. "$(dirname "$0")/late_lib.sh"


leaf mx mx1.good.example mx2.good.example
leaf web mta-sts.good.example mta-sts.wrongcert.example mta-sts.outside.example \
	mta-sts.testing.example mta-sts.shared.example mta-sts.strict2.example \
	mta-sts.redirect.example
[ -s "$T/mx.pem" ] && [ -s "$T/web.pem" ] || { fail certificates "openssl failed"; finish; }

# --- DNS ----------------------------------------------------------------------------------
zone_body() { # ID_OF_GOOD
	cat <<EOF
good MX 10 mx1.good
good MX 20 mx2.good
mx1.good A 127.0.0.11
mx2.good A 127.0.0.12
_mta-sts.good 1 TXT "v=STSv1; id=$1;"
mta-sts.good A 127.0.0.21
wrongcert MX 10 mx.wrongcert
mx.wrongcert A 127.0.0.13
_mta-sts.wrongcert 1 TXT "v=STSv1; id=${2:-w1};"
mta-sts.wrongcert A 127.0.0.22
outside MX 10 mx.outside
mx.outside A 127.0.0.14
_mta-sts.outside TXT "v=STSv1; id=o1;"
mta-sts.outside A 127.0.0.23
testing MX 10 mx.testing
mx.testing A 127.0.0.13
_mta-sts.testing TXT "v=spf1 -all"
_mta-sts.testing TXT "v=STSv1; id=t1;"
mta-sts.testing A 127.0.0.24
nopolicy MX 10 mx.nopolicy
mx.nopolicy A 127.0.0.15
shared MX 10 mx1.good.example.
_mta-sts.shared TXT "v=STSv1; id=s1;"
mta-sts.shared A 127.0.0.25
strict2 MX 10 mx1.good.example.
_mta-sts.strict2 TXT "v=STSv1; id=x1;"
mta-sts.strict2 A 127.0.0.26
redirect MX 10 mx1.good.example.
_mta-sts.redirect TXT "v=STSv1; id=r1;"
mta-sts.redirect A 127.0.0.27
nullmx MX 0 .
slow MX 10 mx1.good.example.
_mta-sts.slow TXT "v=STSv1; id=z1;"
mta-sts.slow A 127.0.0.28
bogusmx MX 10 mx1.good.example.
EOF
}
zone_body g1 >"$T/zone1"
DNS_BOGUS_NAMES="bogusmx MX" dns_zone_start "$T/dns" example. "$T/zone1" signed

# --- MX hosts ----------------------------------------------------------------------------
free_port MXP
MXCERT=(--cert "$T/mx.pem" --key "$T/mx.key")
sink mx1 127.0.0.11 "${MXCERT[@]}"
sink wrong 127.0.0.13 --cert "$CERTS/wrongname.pem" --key "$CERTS/wrongname.key"
sink outside 127.0.0.14 "${MXCERT[@]}"
sink plain 127.0.0.15

# --- policy servers ----------------------------------------------------------------------
free_port WEBP
policy good enforce mx1.good.example '*.good.example'
policy wrongcert enforce mx.wrongcert.example
policy outside enforce mx.allowed.example
policy testing testing mx.testing.example
policy shared enforce mx1.good.example
policy strict2 enforce mx.elsewhere.example
policy redirect enforce mx1.good.example
web good 127.0.0.21
web wrongcert 127.0.0.22
web outside 127.0.0.23
web testing 127.0.0.24
web shared 127.0.0.25
web strict2 127.0.0.26
web redirect 127.0.0.27 --redirect "https://mta-sts.good.example:$WEBP/.well-known/mta-sts.txt"

# --- the proxy ---------------------------------------------------------------------------
mkdir -p "$T/sts-cache"
free_port PP
cat >"$T/proxy.conf" <<EOF
$(global_section "helo_name = proxy.example" "resolver = $DNS_RESOLVER" \
	"dnssec_trust_anchor = $DNS_ANCHOR" "mta_sts_cache = $T/sts-cache" "mta_sts_port = $WEBP")
$(mx_route out "$PP" mta-sts)
EOF
start_proxy "$T/proxy.conf"

make_message "$T/msg" sts

# 1. enforce, the MX's certificate names it: delivered over verified TLS.
if send bob@good.example && stored "$T/mx1.store" 1 &&
	last_meta "$T/mx1.store" | grep -q '"tls": true' &&
	last_meta "$T/mx1.store" | grep -q '"bob@good.example"'; then
	pass enforce_good_mx_delivers
else
	fail enforce_good_mx_delivers "$(cat "$T/send.out")"
fi
expect_log enforce_policy_fetched 'event=mta_sts domain=good\.example policy=enforce id=g1 source=fetched'
expect_log enforce_bound_to_first_mx 'event=late_bind domain=good\.example policy=mta-sts mode=enforce id=g1 mx=mx1\.good\.example'
expect_log enforce_verified_mx_name "event=policy upstream=127\.0\.0\.11:$MXP policy=verify mode=enforce tls=starttls name=mx1\.good\.example source=mta-sts domain=good\.example"
expect_log enforce_tls_verify_ok 'event=upstream_tls .*verify=ok policy=verify'
if grep -q '^GET /.well-known/mta-sts.txt mta-sts.good.example' "$T/web-good.requests"; then
	pass policy_fetched_with_host_header
else
	fail policy_fetched_with_host_header "$(cat "$T/web-good.requests" 2>&1)"
fi
if grep -q '^id: g1$' "$T/sts-cache/good.example" && grep -q '^mode: enforce' "$T/sts-cache/good.example"; then
	pass policy_kept_in_cache_dir
else
	fail policy_kept_in_cache_dir "$(cat "$T/sts-cache/good.example" 2>&1)"
fi

# 2. enforce, the MX shows a certificate for another name: 421 4.7.0 at the RCPT, and the
# MX got the STARTTLS but nothing of the transaction.
dialog enforce_wrong_name_blocked --connect "127.0.0.1:$PP" expect:220 cmd:250:"EHLO app" \
	cmd:250:"MAIL FROM:<app@legacy.example>" cmd:421:"RCPT TO:<carol@wrongcert.example>" \
	contains:4.7.0 closed:5
expect_log wrong_name_reported 'event=policy_failure side=upstream result=certificate-host-mismatch mode=enforce policy=verify'
if grep -aq 'STARTTLS' "$T/wrong.raw" && ! grep -aq 'MAIL FROM\|RCPT TO\|carol' "$T/wrong.raw" &&
	[ "$(msg_count "$T/wrong.store")" = 0 ]; then
	pass wrong_name_mx_got_nothing
else
	fail wrong_name_mx_got_nothing "$(tr -d '\r' <"$T/wrong.raw" 2>&1 | head -c 300)"
fi

# 3. enforce, the domain's MX is outside its mx: patterns: never contacted, 450 4.7.5 for
# that recipient only; the session goes on with another domain.
dialog enforce_mx_outside_patterns --connect "127.0.0.1:$PP" expect:220 cmd:250:"EHLO app" \
	cmd:250:"MAIL FROM:<app@legacy.example>" cmd:450:"RCPT TO:<dave@outside.example>" \
	contains:4.7.5 cmd:250:"RCPT TO:<erin@good.example>" cmd:354:DATA data:"$T/msg" \
	expect:250 cmd:221:QUIT
expect_log outside_reported 'event=policy_failure side=upstream result=validation-failure mode=enforce policy=mta-sts domain=outside\.example'
log_never outside_never_contacted "upstream=127\.0\.0\.14:" "event=close reason=quit" 2
if stored "$T/mx1.store" 2; then pass outside_then_good_delivered; else fail outside_then_good_delivered "mx1 has $(msg_count "$T/mx1.store")"; fi

# 4. testing: a certificate for another name is reported, the mail delivered (in TLS).
if send frank@testing.example && stored "$T/wrong.store" 1 &&
	last_meta "$T/wrong.store" | grep -q '"tls": true'; then
	pass testing_delivers
else
	fail testing_delivers "$(cat "$T/send.out")"
fi
expect_log testing_reported 'event=policy_failure side=upstream result=certificate-host-mismatch mode=testing policy=verify'
expect_log testing_txt_among_others 'event=mta_sts domain=testing\.example policy=testing id=t1 source=fetched'

# 5. no policy: opportunistic, an MX without STARTTLS gets the mail in plaintext.
if send gina@nopolicy.example && stored "$T/plain.store" 1; then
	pass no_policy_delivers
else
	fail no_policy_delivers "$(cat "$T/send.out")"
fi
expect_log no_policy_is_may "event=policy upstream=127\.0\.0\.15:$MXP policy=may .*source=no-policy domain=nopolicy\.example"

# 6. two recipients whose domains have different policies, one transaction bound to mx1:
# shared.example (same MX, its policy names it) is taken, strict2.example (its policy names
# another MX) gets 450 4.7.5, nopolicy.example (another MX) 452 4.5.3; one message with the
# two taken recipients arrives.
n1=$(msg_count "$T/mx1.store")
dialog two_domains_one_transaction --connect "127.0.0.1:$PP" expect:220 cmd:250:"EHLO app" \
	cmd:250:"MAIL FROM:<app@legacy.example>" cmd:250:"RCPT TO:<h1@good.example>" \
	cmd:250:"RCPT TO:<h2@shared.example>" cmd:450:"RCPT TO:<h3@strict2.example>" \
	contains:4.7.5 cmd:452:"RCPT TO:<h4@nopolicy.example>" contains:4.5.3 \
	cmd:354:DATA data:"$T/msg" expect:250 cmd:221:QUIT
if stored "$T/mx1.store" $((n1 + 1)) &&
	last_meta "$T/mx1.store" | grep -q '"rcpt_tos": \["h1@good.example", "h2@shared.example"\]'; then
	pass two_domains_right_recipients
else
	fail two_domains_right_recipients "$(last_meta "$T/mx1.store" 2>&1)"
fi
expect_log strict2_reported 'event=policy_failure side=upstream result=validation-failure mode=enforce policy=mta-sts domain=strict2\.example'

# 7. what DNS says: null MX, no such domain, a DNSSEC-bogus MX answer.
dialog dns_answers_per_recipient --connect "127.0.0.1:$PP" expect:220 cmd:250:"EHLO app" \
	cmd:250:"MAIL FROM:<app@legacy.example>" cmd:556:"RCPT TO:<x@nullmx.example>" \
	cmd:550:"RCPT TO:<x@nosuchdomain.example>" cmd:451:"RCPT TO:<x@bogusmx.example>" \
	contains:4.4.3 cmd:221:QUIT
expect_log bogus_mx_logged 'event=late_bind domain=bogusmx\.example result=refused .*DNSSEC bogus'

# 7b. a policy server that accepts and never answers stalls only its own session: another
# session on the same worker delivers meanwhile; the stalled one, after the fetch timeout,
# goes on without a policy (may) and reports the failure.
start_server slowweb --mode silent --listen "127.0.0.28:$WEBP" --hold 30
wait_servers
n1=$(msg_count "$T/mx1.store")
smtp_send --connect "127.0.0.1:$PP" --file "$T/msg" --from app@legacy.example \
	--to k@slow.example --timeout 40 >"$T/slow.out" 2>&1 &
slow_pid=$!
wait_log 'event=late_bind domain=slow\.example$' 5 || wait_log 'event=late_bind domain=slow\.example' 5
t0=$(now_ns)
if send l@nopolicy.example && awk -v s="$(elapsed_since "$t0")" 'BEGIN { exit !(s < 3) }'; then
	pass other_sessions_not_blocked_by_a_stalled_fetch
else
	fail other_sessions_not_blocked_by_a_stalled_fetch "took $(elapsed_since "$t0") s: $(cat "$T/send.out")"
fi
if wait "$slow_pid" && stored "$T/mx1.store" $((n1 + 1)); then
	pass stalled_fetch_then_delivered_as_may
else
	fail stalled_fetch_then_delivered_as_may "$(cat "$T/slow.out")"
fi
expect_log stalled_fetch_reported 'event=mta_sts domain=slow\.example policy=none result=sts-policy-fetch-error detail=".*timeout'

# 8. a redirect is not followed: no policy (the fetch failure reported), the mail is sent as
# under may; the target of the redirect was never asked.
n_good=$(grep -c . "$T/web-good.requests")
if send ivy@redirect.example; then pass redirect_domain_delivers_as_may; else fail redirect_domain_delivers_as_may "$(cat "$T/send.out")"; fi
expect_log redirect_not_followed 'event=mta_sts domain=redirect\.example policy=none result=sts-policy-fetch-error detail=".*HTTP 301'
if [ "$(grep -c . "$T/web-good.requests")" = "$n_good" ] && [ -s "$T/web-redirect.requests" ]; then
	pass redirect_target_not_fetched
else
	fail redirect_target_not_fetched "good's server got $(grep -c . "$T/web-good.requests") requests, was $n_good"
fi

# 9. the policy servers stop: cached policies still apply (the mail to the wrong-name MX
# still blocked, good.example still delivered); a changed TXT id whose fetch fails keeps
# the cached policy too.
kill "$WEB_PID_good" "$WEB_PID_wrongcert" 2>/dev/null
wait "$WEB_PID_good" "$WEB_PID_wrongcert" 2>/dev/null
dialog cached_enforce_still_blocks --connect "127.0.0.1:$PP" expect:220 cmd:250:"EHLO app" \
	cmd:250:"MAIL FROM:<app@legacy.example>" cmd:421:"RCPT TO:<carol@wrongcert.example>" \
	contains:4.7.0 closed:5
expect_log cached_policy_used 'event=mta_sts domain=wrongcert\.example policy=enforce id=w1 source=cache'
zone_body g1 w2 >"$T/zone2"
dns_zone_reload "$T/dns" "$T/zone2"
# (the resolver keeps the old TXT for its TTL, 1 s: sessions until the new id is seen)
fetch_failed='event=mta_sts domain=wrongcert\.example policy=enforce id=w1 source=cache result=sts-policy-fetch-error detail=.*the cached policy \(id w1\) applies'
for _ in $(seq 20); do
	smtp_dialog_to "$T/retry.out" --connect "127.0.0.1:$PP" expect:220 cmd:250:"EHLO app" \
		cmd:250:"MAIL FROM:<app@legacy.example>" cmd:421:"RCPT TO:<carol@wrongcert.example>"
	log_count "$fetch_failed" | grep -qv '^0$' && break
	sleep 0.25
done
expect_log fetch_failure_keeps_cache "$fetch_failed"
dialog new_id_fetch_fails_cached_applies --connect "127.0.0.1:$PP" expect:220 \
	cmd:250:"EHLO app" cmd:250:"MAIL FROM:<app@legacy.example>" \
	cmd:421:"RCPT TO:<carol@wrongcert.example>" contains:4.7.0 closed:5

# 10. a restart: the policy comes from the cache directory (no server to fetch it from).
stop_proxy proxy
start_proxy "$T/proxy.conf" proxy2
dialog restart_cached_enforce --connect "127.0.0.1:$PP" expect:220 cmd:250:"EHLO app" \
	cmd:250:"MAIL FROM:<app@legacy.example>" cmd:421:"RCPT TO:<carol@wrongcert.example>" \
	contains:4.7.0 closed:5
expect_log restart_policy_from_disk 'event=mta_sts domain=wrongcert\.example policy=enforce id=w1 source=cache'

# 11. the id changes and the server is back: refetched, the new policy (testing) applies.
policy good testing mx1.good.example
web good 127.0.0.21
zone_body g2 w2 >"$T/zone3"
dns_zone_reload "$T/dns" "$T/zone3"
if send judy@good.example; then pass new_id_delivers; else fail new_id_delivers "$(cat "$T/send.out")"; fi
expect_log new_id_refetched 'event=mta_sts domain=good\.example policy=testing id=g2 source=fetched'
if grep -q '^id: g2$' "$T/sts-cache/good.example"; then pass cache_file_updated; else fail cache_file_updated "$(head -n 4 "$T/sts-cache/good.example")"; fi

# 12. without mta_sts_cache, policies live in memory: kept across a reload (SIGHUP) while
# their server is gone.
stop_proxy proxy2
grep -v '^mta_sts_cache' "$T/proxy.conf" >"$T/memory.conf"
start_proxy "$T/memory.conf" proxy3
dialog memory_first_fetch --connect "127.0.0.1:$PP" expect:220 cmd:250:"EHLO app" \
	cmd:250:"MAIL FROM:<app@legacy.example>" cmd:450:"RCPT TO:<m@outside.example>" cmd:221:QUIT
expect_log memory_policy_fetched 'event=mta_sts domain=outside\.example policy=enforce id=o1 source=fetched'
kill "$WEB_PID_outside" 2>/dev/null
wait "$WEB_PID_outside" 2>/dev/null
kill -HUP "$PROXY"
wait_log 'event=reload result=ok' 5 || fail memory_reload "no event=reload result=ok"
dialog memory_policy_survives_reload --connect "127.0.0.1:$PP" expect:220 cmd:250:"EHLO app" \
	cmd:250:"MAIL FROM:<app@legacy.example>" cmd:450:"RCPT TO:<n@outside.example>" cmd:221:QUIT
expect_log memory_policy_from_cache 'event=mta_sts domain=outside\.example policy=enforce id=o1 source=cache'
finish
