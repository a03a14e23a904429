#!/usr/bin/env bash
# TLSRPT (RFC 8460) through the proxy: sessions of a late-binding route toward recipients'
# MX hosts are counted per policy domain, and at each period's end (tlsrpt_interval = 2s
# here) one aggregate JSON report per domain lands in tlsrpt_dir and is mailed, gzipped,
# through tlsrpt_relay to the domain's _smtp._tls rua address.
#
# Local peers, made by the test: NSD with the zone (MX, A, _mta-sts, _smtp._tls), an HTTPS
# policy server, aiosmtpd MX hosts, and an aiosmtpd relay that stores the reports mailed.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/smtp_lib.sh"
. "$(dirname "$0")/dns_lib.sh"
. "$(dirname "$0")/late_lib.sh"

free_port MXP
free_port WEBP
free_port PP
leaf mx mx1.good.example
leaf web mta-sts.good.example mta-sts.wrongcert.example
cat >"$T/zone" <<'EOF'
good MX 10 mx1.good
mx1.good A 127.0.0.11
_mta-sts.good TXT "v=STSv1; id=g1;"
mta-sts.good A 127.0.0.21
_smtp._tls.good TXT "v=TLSRPTv1; rua=mailto:tlsrpt@good.example"
wrongcert MX 10 mx.wrongcert
mx.wrongcert A 127.0.0.13
_mta-sts.wrongcert TXT "v=STSv1; id=w1;"
mta-sts.wrongcert A 127.0.0.22
_smtp._tls.wrongcert TXT "v=TLSRPTv1; rua=mailto:reports@wrongcert.example"
nopolicy MX 10 mx.nopolicy
mx.nopolicy A 127.0.0.15
EOF
dns_zone_start "$T/dns" example. "$T/zone" unsigned

sink mx1 127.0.0.11 --cert "$T/mx.pem" --key "$T/mx.key"
sink wrong 127.0.0.13 --cert "$CERTS/wrongname.pem" --key "$CERTS/wrongname.key"
sink plain 127.0.0.15
policy good enforce mx1.good.example
policy wrongcert enforce mx.wrongcert.example
web good 127.0.0.21
web wrongcert 127.0.0.22
start_sink relay --listen 127.0.0.1:0
RELAY=$(port_of relay)

mkdir -p "$T/rpt"
cat >"$T/proxy.conf" <<EOF
$(global_section "helo_name = proxy.example" "resolver = $DNS_RESOLVER" \
	"dnssec_trust_anchor = none" "mta_sts_port = $WEBP" "tlsrpt_dir = $T/rpt" \
	"tlsrpt_relay = 127.0.0.1:$RELAY" "tlsrpt_org = Example Org" "tlsrpt_interval = 2s")
$(mx_route out "$PP" mta-sts)
EOF
start_proxy "$T/proxy.conf"
make_message "$T/msg" tlsrpt

send a@good.example || fail send_good_1 "$(cat "$T/send.out")"
send b@good.example || fail send_good_2 "$(cat "$T/send.out")"
send c@wrongcert.example && fail send_wrongcert "delivered: $(cat "$T/send.out")"
send d@nopolicy.example || fail send_nopolicy "$(cat "$T/send.out")"

# The reports of the periods these sessions fell in (waits for every session's period to
# be reported: the last one ended by now + 2 s + grace).
reports() { ls "$T/rpt"/proxy.example\!"$1"\!*.json 2>/dev/null; }
wait_reports() { # DOMAIN N: the N evaluations of DOMAIN are in its reports
	local i
	for i in $(seq 100); do
		[ "$(summed "$1")" = "$2" ] && return 0
		sleep 0.1
	done
	return 1
}
# summed DOMAIN: "OK FAILED" over all reports of DOMAIN
summed() {
	local f files
	files=$(reports "$1")
	[ -n "$files" ] || { echo "none"; return; }
	# shellcheck disable=SC2086
	"$SMTP_PY" - $files <<'PY'
import json, sys
ok = failed = 0
for f in sys.argv[1:]:
    r = json.load(open(f))
    for p in r["policies"]:
        ok += p["summary"]["total-successful-session-count"]
        failed += p["summary"]["total-failure-session-count"]
print(ok, failed)
PY
}
if wait_reports good.example "2 0"; then pass good_domain_two_successes_reported; else fail good_domain_two_successes_reported "$(summed good.example) in $(ls "$T/rpt")"; fi
if wait_reports wrongcert.example "0 1"; then pass wrongcert_failure_reported; else fail wrongcert_failure_reported "$(summed wrongcert.example)"; fi
if wait_reports nopolicy.example "0 1"; then pass nopolicy_plaintext_reported; else fail nopolicy_plaintext_reported "$(summed nopolicy.example)"; fi

# The RFC 8460 fields of the failure report.
# shellcheck disable=SC2046
if "$SMTP_PY" - $(reports wrongcert.example) >"$T/check.out" 2>&1 <<'PY'
import json, re, sys
found = False
for f in sys.argv[1:]:
    r = json.load(open(f))
    assert r["organization-name"] == "Example Org", r["organization-name"]
    assert r["contact-info"] == "postmaster@proxy.example", r["contact-info"]
    dr = r["date-range"]
    for k in ("start-datetime", "end-datetime"):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", dr[k]), dr[k]
    assert re.fullmatch(r"\d+\.[0-9a-f]{16}@proxy\.example", r["report-id"]), r["report-id"]
    for p in r["policies"]:
        pol = p["policy"]
        if pol["policy-type"] != "sts" or not p.get("failure-details"):
            continue
        assert pol["policy-domain"] == "wrongcert.example", pol
        assert "mode: enforce" in pol["policy-string"], pol["policy-string"]
        assert pol["mx-host"] == ["mx.wrongcert.example"], pol["mx-host"]
        d = p["failure-details"][0]
        assert d["result-type"] == "certificate-host-mismatch", d
        assert d["receiving-mx-hostname"] == "mx.wrongcert.example", d
        assert d["receiving-ip"] == "127.0.0.13", d
        assert d["sending-mta-ip"] == "127.0.0.1", d
        assert d["failed-session-count"] == 1, d
        found = True
assert found, "no sts failure-details"
PY
then
	pass report_fields_as_rfc8460
else
	fail report_fields_as_rfc8460 "$(tail -n 3 "$T/check.out")"
fi

# Mailed to the rua address through the relay: multipart/report, gzipped JSON attached.
mailed() {
	local i
	for i in $(seq 50); do
		grep -l '"tlsrpt@good.example"' "$T/relay.store"/msg-*.json >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	return 1
}
if mailed && "$SMTP_PY" - "$T/relay.store" >"$T/mail.out" 2>&1 <<'PY'
import email, glob, gzip, json, os, re, sys
store = sys.argv[1]
for meta in glob.glob(os.path.join(store, "msg-*.json")):
    env = json.load(open(meta))
    if env["rcpt_tos"] != ["tlsrpt@good.example"]:
        continue
    msg = email.message_from_bytes(open(meta[:-5] + ".eml", "rb").read())
    assert msg.get_content_type() == "multipart/report", msg.get_content_type()
    assert msg.get_param("report-type") == "tlsrpt", msg.get_param("report-type")
    assert msg["TLS-Report-Domain"] == "good.example", msg["TLS-Report-Domain"]
    assert msg["TLS-Report-Submitter"] == "proxy.example", msg["TLS-Report-Submitter"]
    subject = re.sub(r"\r?\n", "", msg["Subject"])  # unfolded (RFC 5322 §2.2.3)
    assert re.fullmatch(r"Report Domain: good\.example Submitter: proxy\.example "
                        r"Report-ID: <\d+\.[0-9a-f]{16}@proxy\.example>", subject), subject
    parts = [p for p in msg.walk() if p.get_content_type() == "application/tlsrpt+gzip"]
    assert len(parts) == 1, [p.get_content_type() for p in msg.walk()]
    report = json.loads(gzip.decompress(parts[0].get_payload(decode=True)))
    assert report["policies"][0]["policy"]["policy-domain"] == "good.example", report
    print("ok")
    sys.exit(0)
sys.exit("no report mail for tlsrpt@good.example")
PY
then
	pass report_mailed_to_rua
else
	fail report_mailed_to_rua "$(tail -n 3 "$T/mail.out" 2>&1)"
fi
expect_log report_logged 'event=tlsrpt domain=good\.example .*result=sent'
expect_log no_rua_written_only 'event=tlsrpt domain=nopolicy\.example .*result=written'
finish
