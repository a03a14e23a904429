#!/usr/bin/env bash
# DANE (RFC 7672) with late binding: upstream_policy = dane and auto toward each recipient
# domain's MX, authenticated by its DNSSEC-signed TLSA records.
#
# A signed zone "example." (private NSD, dns_lib.sh) holds MX, A and TLSA records made from
# the MX hosts' certificates; the MX hosts are aiosmtpd servers with STARTTLS. Cases:
# DANE-EE (3 1 1) matches a certificate no CA vouches for, under any name: delivered; a
# TLSA record for another key: blocked (421 4.7.0), the MX gets nothing of the message;
# DANE-TA (2 0 1, the test CA presented in the chain): delivered, and with a certificate for
# another name blocked; a bogus TLSA answer (corrupt RRSIG): the MX is never contacted
# (451 4.7.5, dnssec-invalid); a domain without TLSA under dane: opportunistic; auto
# prefers DANE over an MTA-STS policy that the MX would fail, and uses MTA-STS where there
# is no TLSA.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/smtp_lib.sh"
. "$(dirname "$0")/dns_lib.sh"
. "$(dirname "$0")/late_lib.sh"

free_port MXP
free_port WEBP
# certificates: one nobody vouches for (DANE-EE), one from the test CA for the TA domain
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
	-subj "/CN=not-the-mx-name" -keyout "$T/ee.key" -out "$T/ee.pem" 2>/dev/null
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
	-subj "/CN=other" -keyout "$T/other.key" -out "$T/other.pem" 2>/dev/null
leaf ta mx.ta.example
leaf tawrong mx.somewhere-else.example
leaf web mta-sts.autosts.example mta-sts.autodane.example
spki() { openssl x509 -in "$1" -noout -pubkey | openssl pkey -pubin -outform DER | sha256sum | cut -d' ' -f1; }
cert_sha256() { openssl x509 -in "$1" -outform DER | sha256sum | cut -d' ' -f1; }
EE=$(spki "$T/ee.pem")
OTHER=$(spki "$T/other.pem")
CA=$(cert_sha256 "$CERTS/ca.pem")
[ ${#EE} = 64 ] && [ ${#OTHER} = 64 ] && [ ${#CA} = 64 ] || { fail tlsa_data "openssl: $EE $OTHER $CA"; finish; }

cat >"$T/zone" <<EOF
ee MX 10 mx.ee
mx.ee A 127.0.0.31
_$MXP._tcp.mx.ee TLSA 3 1 1 $EE
eebad MX 10 mx.eebad
mx.eebad A 127.0.0.31
_$MXP._tcp.mx.eebad TLSA 3 1 1 $OTHER
ta MX 10 mx.ta
mx.ta A 127.0.0.32
_$MXP._tcp.mx.ta TLSA 2 0 1 $CA
tawrong MX 10 mx.tawrong
mx.tawrong A 127.0.0.33
_$MXP._tcp.mx.tawrong TLSA 2 0 1 $CA
bogus MX 10 mx.bogus
mx.bogus A 127.0.0.34
_$MXP._tcp.mx.bogus TLSA 3 1 1 $EE
notlsa MX 10 mx.notlsa
mx.notlsa A 127.0.0.35
unusable MX 10 mx.unusable
mx.unusable A 127.0.0.31
_$MXP._tcp.mx.unusable TLSA 1 1 1 $EE
unusableplain MX 10 mx.unusableplain
mx.unusableplain A 127.0.0.35
_$MXP._tcp.mx.unusableplain TLSA 0 0 1 $CA
autodane MX 10 mx.autodane
mx.autodane A 127.0.0.31
_$MXP._tcp.mx.autodane TLSA 3 1 1 $EE
_mta-sts.autodane TXT "v=STSv1; id=a1;"
mta-sts.autodane A 127.0.0.41
autosts MX 10 mx.autosts
mx.autosts A 127.0.0.31
_mta-sts.autosts TXT "v=STSv1; id=s1;"
mta-sts.autosts A 127.0.0.42
EOF
DNS_BOGUS_NAMES="_$MXP._tcp.mx.bogus TLSA" dns_zone_start "$T/dns" example. "$T/zone" signed

sink ee 127.0.0.31 --cert "$T/ee.pem" --key "$T/ee.key"
sink ta 127.0.0.32 --cert "$T/ta-chain.pem" --key "$T/ta.key"
sink tawrong 127.0.0.33 --cert "$T/tawrong-chain.pem" --key "$T/tawrong.key"
sink bogus 127.0.0.34 --cert "$T/ee.pem" --key "$T/ee.key"
sink notlsa 127.0.0.35
# MTA-STS policies that the MX at .31 (certificate for no MX name) would fail
policy autodane enforce mx.autodane.example
policy autosts enforce mx.autosts.example
web autodane 127.0.0.41
web autosts 127.0.0.42

free_port PP
free_port PA
cat >"$T/proxy.conf" <<EOF
$(global_section "helo_name = proxy.example" "resolver = $DNS_RESOLVER" \
	"dnssec_trust_anchor = $DNS_ANCHOR" "mta_sts_port = $WEBP")
$(mx_route dane "$PP" dane)
$(mx_route auto "$PA" auto)
EOF
start_proxy "$T/proxy.conf"
make_message "$T/msg" dane
blocked() { # CHECK PORT RCPT CODE
	dialog "$1" --connect "127.0.0.1:$2" expect:220 cmd:250:"EHLO app" \
		cmd:250:"MAIL FROM:<app@legacy.example>" cmd:"$4":"RCPT TO:<$3>"
}

# DANE-EE: the key in the TLSA record, whatever the name and issuer.
if send a@ee.example && stored "$T/ee.store" 1 && last_meta "$T/ee.store" | grep -q '"tls": true'; then
	pass dane_ee_delivers
else
	fail dane_ee_delivers "$(cat "$T/send.out")"
fi
expect_log dane_ee_policy "event=late_bind domain=ee\.example policy=dane mx=mx\.ee\.example"
expect_log dane_ee_checked "event=policy upstream=127\.0\.0\.31:$MXP policy=dane mode=enforce tls=starttls name=mx\.ee\.example source=dane"
expect_log dane_ee_verified 'event=upstream_tls .*verify=ok policy=dane'

# A TLSA record for another key: blocked, nothing of the transaction reaches the MX.
n=$(grep -ac 'MAIL FROM' "$T/ee.raw")
blocked dane_ee_mismatch_blocked "$PP" b@eebad.example 421
expect_log dane_ee_mismatch_reported 'event=policy_failure side=upstream result=validation-failure mode=enforce policy=dane .*none of the 1 usable TLSA records matches'
if [ "$(grep -ac 'MAIL FROM' "$T/ee.raw")" = "$n" ] && [ "$(grep -ac STARTTLS "$T/ee.raw")" -ge 2 ]; then
	pass dane_mismatch_mx_got_nothing
else
	fail dane_mismatch_mx_got_nothing "MAIL FROM lines: $(grep -ac 'MAIL FROM' "$T/ee.raw") (was $n)"
fi

# DANE-TA: the CA in the presented chain, the certificate naming the MX host.
if send c@ta.example && stored "$T/ta.store" 1; then pass dane_ta_delivers; else fail dane_ta_delivers "$(cat "$T/send.out")"; fi
blocked dane_ta_wrong_name_blocked "$PP" d@tawrong.example 421
expect_log dane_ta_wrong_name_reported 'event=policy_failure side=upstream result=certificate-host-mismatch mode=enforce policy=dane'
if [ "$(msg_count "$T/tawrong.store")" = 0 ]; then pass dane_ta_wrong_name_nothing_stored; else fail dane_ta_wrong_name_nothing_stored "stored"; fi

# A bogus TLSA answer: the host is unusable, never contacted, the recipient deferred.
blocked dane_bogus_deferred "$PP" e@bogus.example 451
expect_log dane_bogus_reported 'event=policy_failure side=upstream result=dnssec-invalid mode=enforce policy=dane domain=bogus\.example'
log_never dane_bogus_never_contacted "upstream=127\.0\.0\.34:" 'event=close reason=' 3

# No TLSA (securely none): opportunistic.
if send f@notlsa.example && stored "$T/notlsa.store" 1; then pass dane_no_tlsa_may; else fail dane_no_tlsa_may "$(cat "$T/send.out")"; fi
expect_log dane_no_tlsa_is_may "event=policy upstream=127\.0\.0\.35:$MXP policy=may .*source=no-policy domain=notlsa\.example"

# Only unusable TLSA records (PKIX-EE, PKIX-TA: not for SMTP): TLS stays mandatory, without
# authentication (RFC 7672 §2.2): an MX with any certificate takes the mail, one without
# STARTTLS does not.
n=$(msg_count "$T/ee.store")
if send i@unusable.example && stored "$T/ee.store" $((n + 1)); then pass dane_unusable_tls_unauthenticated; else fail dane_unusable_tls_unauthenticated "$(cat "$T/send.out")"; fi
expect_log dane_unusable_is_encrypt "event=policy upstream=127\.0\.0\.31:$MXP policy=encrypt mode=enforce tls=starttls name=mx\.unusable\.example source=dane-unusable"
n=$(msg_count "$T/notlsa.store")
blocked dane_unusable_no_plaintext "$PP" j@unusableplain.example 421
expect_log dane_unusable_plaintext_reported 'event=policy_failure side=upstream result=starttls-not-supported mode=enforce policy=encrypt'
if [ "$(msg_count "$T/notlsa.store")" = "$n" ]; then pass dane_unusable_plain_mx_got_nothing; else fail dane_unusable_plain_mx_got_nothing "stored"; fi

# auto: DANE first (the MTA-STS policy, which this MX would fail, is not used) ...
PP=$PA
n=$(msg_count "$T/ee.store")
if send g@autodane.example && stored "$T/ee.store" $((n + 1)); then pass auto_prefers_dane; else fail auto_prefers_dane "$(cat "$T/send.out")"; fi
expect_log auto_dane_bound "route=auto .*event=late_bind domain=autodane\.example policy=dane"
# ... and MTA-STS where there is no TLSA: enforced (the certificate names no MX host).
blocked auto_sts_without_tlsa_enforced "$PA" h@autosts.example 421
expect_log auto_sts_used "route=auto .*event=late_bind domain=autosts\.example policy=mta-sts mode=enforce id=s1"
finish
