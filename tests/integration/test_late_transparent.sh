#!/usr/bin/env bash
# Late binding on a transparent route: an application dials an MX itself (port 25), an
# nftables REDIRECT sends it to the proxy (upstream = original-destination), and the
# recipient domain's MTA-STS policy decides: the MX name is the one whose address the
# application dialled (RFC 8461 §4.1: it must match an mx: pattern and the certificate must
# name it); an address that is no MX of the domain is refused under enforce.
#
# Everything runs in a network namespace the test makes (its own loopback, so the MX hosts
# listen on port 25 and the policy servers on 443, as in production): a private NSD, an
# HTTPS server for mta-sts.good.example, aiosmtpd MX hosts, the proxy, the client.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/smtp_lib.sh"
. "$(dirname "$0")/dns_lib.sh"

NS=stp-late-$$
late_cleanup() {
	local rc=$?
	disown -a 2>/dev/null
	ip netns pids "$NS" 2>/dev/null | xargs -r kill -KILL 2>/dev/null
	ip netns del "$NS" 2>/dev/null
	(exit "$rc")
	smtp_cleanup
}
trap late_cleanup EXIT
if ! ip netns add "$NS" || ! ip netns exec "$NS" ip link set lo up; then
	fail setup_namespace "cannot make a network namespace"
	finish
fi
IN=(ip netns exec "$NS")

leaf mx1 mx1.good.example
leaf web mta-sts.good.example

cat >"$T/zone" <<'EOF'
good MX 10 mx1.good
good MX 20 mx2.good
mx1.good A 127.0.0.11
mx2.good A 127.0.0.12
_mta-sts.good TXT "v=STSv1; id=1;"
mta-sts.good A 127.0.0.21
EOF
DNS_PREFIX=("${IN[@]}")
dns_zone_start "$T/dns" example. "$T/zone" unsigned

mx() { # NAME ADDR [args]
	local name=$1 addr=$2
	shift 2
	spawn "$name" "${IN[@]}" "$SMTP_PY" "$TOOLS/smtp_sink.py" --listen "$addr:25" \
		--ready "$T/$name.port" --store "$T/$name.store" --raw "$T/$name.raw" "$@"
	wait_file "$T/$name.port" 10 || { fail "mx($name)" "$(tail -n 3 "$T/$name.log")"; finish; }
}
mx mx1 127.0.0.11 --cert "$T/mx1.pem" --key "$T/mx1.key"
mx mx2 127.0.0.12 --cert "$CERTS/wrongname.pem" --key "$CERTS/wrongname.key"
mx stranger 127.0.0.13 --cert "$T/mx1.pem" --key "$T/mx1.key"
printf 'version: STSv1\r\nmode: enforce\r\nmx: *.good.example\r\nmax_age: 86400\r\n' >"$T/policy.txt"
spawn web "${IN[@]}" "$SMTP_PY" "$TOOLS/https_policy.py" --listen 127.0.0.21:443 \
	--cert "$T/web.pem" --key "$T/web.key" --policy "$T/policy.txt" --ready "$T/web.port"
wait_file "$T/web.port" 10 || { fail web "$(tail -n 3 "$T/web.log")"; finish; }

cat >"$T/proxy.conf" <<EOF
$(global_section "helo_name = proxy.example" "resolver = $DNS_RESOLVER" "dnssec_trust_anchor = none")
[route mx]
listen = 127.0.0.1:2525
protocol = smtp
upstream = original-destination
upstream_tls = starttls
upstream_policy = mta-sts

[route table]                       ; the same, decided by a policy table row
listen = 127.0.0.1:2526
protocol = smtp
upstream = original-destination
upstream_tls = starttls
upstream_policy = may
policy_table = $T/late.table
EOF
printf '# per destination\n*:25 mta-sts\n* may\n' >"$T/late.table"
PROXY_PREFIX=("${IN[@]}")
start_proxy "$T/proxy.conf"
# the application's connections to any port 25 (its own source address) go to the proxy
if "${IN[@]}" nft -f - <<'EOF'; then pass nft_redirect_rules; else fail nft_redirect_rules "nft refused the rules"; finish; fi
table ip stp_late {
	chain output {
		type nat hook output priority -100;
		ip saddr 127.0.0.99 tcp dport 25 redirect to :2525
		ip saddr 127.0.0.98 tcp dport 25 redirect to :2526
	}
}
EOF

make_message "$T/msg" transparent
SRC=127.0.0.99
app() { # MX-ADDRESS RCPT: the application sends to that MX itself
	"${IN[@]}" "$SMTP_PY" "$TOOLS/smtp_send.py" --connect "$1:25" --source "$SRC" \
		--file "$T/msg" --from app@legacy.example --to "$2" >"$T/app.out" 2>&1
}

# The app dials mx1.good.example: that is its MX name, in the policy, on its certificate.
if app 127.0.0.11 a@good.example && [ "$(msg_count "$T/mx1.store")" = 1 ] &&
	grep -q '"tls": true' "$T/mx1.store"/msg-*.json; then
	pass dialled_mx_verified_delivers
else
	fail dialled_mx_verified_delivers "$(cat "$T/app.out")"
fi
expect_log original_destination_named 'event=late_bind domain=good\.example policy=mta-sts mode=enforce id=1 mx=mx1\.good\.example'
expect_log verified_as_mx1 'event=policy upstream=127\.0\.0\.11:25 policy=verify mode=enforce tls=starttls name=mx1\.good\.example source=mta-sts'

# The app dials mx2.good.example, whose certificate names another host: blocked.
if ! app 127.0.0.12 b@good.example && grep -q '421' "$T/app.out"; then
	pass dialled_mx_wrong_certificate_blocked
else
	fail dialled_mx_wrong_certificate_blocked "$(cat "$T/app.out")"
fi
expect_log wrong_certificate_reported 'event=policy_failure side=upstream result=certificate-host-mismatch mode=enforce policy=verify upstream=127\.0\.0\.12:25'
if ! grep -aq 'MAIL FROM' "$T/mx2.raw" && grep -aq STARTTLS "$T/mx2.raw"; then
	pass wrong_certificate_mx_got_nothing
else
	fail wrong_certificate_mx_got_nothing "$(tr -d '\r' <"$T/mx2.raw" | head -c 200)"
fi

# The app dials an address that is no MX of the recipient's domain: 450 4.7.5, never
# contacted (even though its certificate would pass).
if ! app 127.0.0.13 c@good.example && grep -q '450' "$T/app.out" && grep -q '4.7.5' "$T/app.out"; then
	pass not_an_mx_of_the_domain_refused
else
	fail not_an_mx_of_the_domain_refused "$(cat "$T/app.out")"
fi
expect_log not_an_mx_reported 'event=policy_failure side=upstream result=validation-failure mode=enforce policy=mta-sts domain=good\.example .*no MX host of good\.example in its MTA-STS policy is at 127\.0\.0\.13'
# (the fence: a session of our own to it afterwards must be the first thing it ever got)
"${IN[@]}" "$SMTP_PY" "$TOOLS/smtp_dialog.py" --connect 127.0.0.13:25 expect:220 \
	cmd:250:"EHLO fence.example" cmd:221:QUIT >"$T/fence.out" 2>&1
if [ "$(head -n 1 "$T/stranger.raw" 2>&1 | tr -d '\r')" = "EHLO fence.example" ]; then
	pass stranger_never_contacted
else
	fail stranger_never_contacted "$(head -c 200 "$T/stranger.raw" 2>&1) / $(cat "$T/fence.out")"
fi

# The same through the route whose policy table row (*:25 mta-sts) makes it bind late.
SRC=127.0.0.98
if app 127.0.0.11 d@good.example && [ "$(msg_count "$T/mx1.store")" = 2 ]; then
	pass table_row_late_delivers
else
	fail table_row_late_delivers "$(cat "$T/app.out")"
fi
expect_log table_row_decided 'route=table .*event=late_binding policy=mta-sts source=table:2'
expect_log table_row_verified 'route=table .*event=policy upstream=127\.0\.0\.11:25 policy=verify mode=enforce tls=starttls name=mx1\.good\.example source=mta-sts'
if ! app 127.0.0.12 e@good.example && grep -q '421' "$T/app.out"; then
	pass table_row_late_blocks
else
	fail table_row_late_blocks "$(cat "$T/app.out")"
fi
finish
