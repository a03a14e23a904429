#!/usr/bin/env bash
# Transparent routes and the policy table, across network namespaces the test makes (and
# always removes): an "app" namespace whose plain SMTP client (swaks) sends to "mail"
# servers on 25 and 587, routed through a "router" namespace where the proxy runs behind an
# nftables REDIRECT (then iptables, then TPROXY) with upstream = original-destination and a
# policy table:
#   10.99.2.2:25   verify names=localhost   aiosmtpd offering STARTTLS: delivered, verified
#   10.99.2.2:587  encrypt                  aiosmtpd: delivered over TLS
#   10.99.2.3:25   encrypt                  a server that strips STARTTLS: 421 4.7.0 to the
#                                            app, no MAIL reaches it in plaintext
#   10.99.2.4:25   encrypt mode=testing      the same server: delivered, failure reported
# A direct connection to the proxy's port (not redirected) is refused; TPROXY with
# source = client makes the mail server see the app's own address; over IPv6, the original
# destination of an nftables REDIRECT (IP6T_SO_ORIGINAL_DST) picks its table row too.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/smtp_lib.sh
. "$(dirname "$0")/smtp_lib.sh"

for tool in ip nft iptables swaks; do
	if ! command -v "$tool" >/dev/null; then
		fail setup "$tool is missing (make deps installs it)"
		finish
	fi
done
if [ "$(id -u)" != 0 ]; then
	skip transparent "needs root to make network namespaces"
	finish
fi

ID=$$
APP=stp-app-$ID ROUTER=stp-rtr-$ID MAIL=stp-mail-$ID
ns_cleanup() {
	local n
	disown -a 2>/dev/null # the processes inside end with their namespaces, quietly
	for n in "$APP" "$ROUTER" "$MAIL"; do
		ip netns pids "$n" 2>/dev/null | xargs -r kill -KILL 2>/dev/null
		ip netns del "$n" 2>/dev/null
	done
}
transparent_cleanup() {
	local rc=$?
	ns_cleanup
	(exit "$rc")
	smtp_cleanup
}
trap transparent_cleanup EXIT

in_ns() {
	local ns=$1
	shift
	ip netns exec "$ns" "$@"
}

# app (10.99.1.2) -- (10.99.1.1) router (10.99.2.1) -- mail (10.99.2.2 .3 .4)
setup_net() {
	ip netns add "$APP" && ip netns add "$ROUTER" && ip netns add "$MAIL" || return 1
	ip link add a0-$ID type veth peer name ra-$ID || return 1
	ip link add m0-$ID type veth peer name rm-$ID || return 1
	ip link set a0-$ID netns "$APP" && ip link set ra-$ID netns "$ROUTER" &&
		ip link set m0-$ID netns "$MAIL" && ip link set rm-$ID netns "$ROUTER" || return 1
	in_ns "$APP" ip addr add 10.99.1.2/24 dev a0-$ID
	in_ns "$ROUTER" ip addr add 10.99.1.1/24 dev ra-$ID
	in_ns "$ROUTER" ip addr add 10.99.2.1/24 dev rm-$ID
	in_ns "$MAIL" ip addr add 10.99.2.2/24 dev m0-$ID
	in_ns "$MAIL" ip addr add 10.99.2.3/24 dev m0-$ID
	in_ns "$MAIL" ip addr add 10.99.2.4/24 dev m0-$ID
	local n
	for n in "$APP:a0" "$ROUTER:ra" "$ROUTER:rm" "$MAIL:m0"; do
		in_ns "${n%%:*}" ip link set "${n#*:}-$ID" up || return 1
	done
	for n in "$APP" "$ROUTER" "$MAIL"; do
		in_ns "$n" ip link set lo up || return 1
	done
	in_ns "$APP" ip route add default via 10.99.1.1 &&
		in_ns "$MAIL" ip route add default via 10.99.2.1 &&
		in_ns "$ROUTER" sysctl -qw net.ipv4.ip_forward=1
}
if ! setup_net; then
	fail setup_namespaces "could not make the namespaces and veth pairs"
	finish
fi
pass setup_namespaces

# --- the mail side ---------------------------------------------------------------------------
# sink NAME ADDR:PORT [args]: aiosmtpd in the mail namespace, storing into $T/NAME.store.
sink() {
	local name=$1 listen=$2
	shift 2
	spawn "$name" ip netns exec "$MAIL" "$SMTP_PY" "$TOOLS/smtp_sink.py" --listen "$listen" \
		--ready "$T/$name.port" --store "$T/$name.store" "$@"
	wait_file "$T/$name.port" 10 || { fail "sink($name)" "$(tail -n 3 "$T/$name.log")"; finish; }
}
fake() {
	local name=$1 listen=$2
	shift 2
	spawn "$name" ip netns exec "$MAIL" "$SMTP_PY" "$TOOLS/smtp_fake.py" --listen "$listen" \
		--ready "$T/$name.port" --lines "$T/$name.lines" --store "$T/$name.store" "$@"
	wait_file "$T/$name.port" 10 || { fail "fake($name)" "$(tail -n 3 "$T/$name.log")"; finish; }
}
SRV=(--cert "$CERTS/server.pem" --key "$CERTS/server.key")
sink mx25 10.99.2.2:25 "${SRV[@]}"
sink mx587 10.99.2.2:587 "${SRV[@]}"
fake strip 10.99.2.3:25 --starttls none
fake strip_testing 10.99.2.4:25 --starttls none

# --- the proxy in the router ----------------------------------------------------------------
P25=2525 P587=2587 PT=2526 P25V6=2625
cat >"$T/table" <<EOF
# destination   level    options
10.99.2.2:25    verify   names=localhost
10.99.2.2:587   encrypt
10.99.2.3:25    encrypt
10.99.2.4:25    encrypt  mode=testing
[fd99:2::2]:25  verify   names=localhost
*               encrypt
EOF
cat >"$T/transparent.conf" <<EOF
$(global_section "helo_name = proxy.router.test")
[route out25]
listen = 0.0.0.0:$P25
protocol = smtp
upstream = original-destination
upstream_tls = starttls
upstream_policy = encrypt
policy_table = $T/table

[route out587]
listen = 0.0.0.0:$P587
protocol = smtp
upstream = original-destination
upstream_tls = starttls
upstream_policy = encrypt
policy_table = $T/table

[route out25v6]
listen = [::]:$P25V6
protocol = smtp
upstream = original-destination
upstream_tls = starttls
upstream_policy = encrypt
policy_table = $T/table

[route tproxy]
listen = 0.0.0.0:$PT
protocol = smtp
upstream = original-destination
upstream_tls = starttls
upstream_policy = encrypt
policy_table = $T/table
transparent = tproxy
source = client
EOF
if ! "$STP_BIN" -t -c "$T/transparent.conf" >"$T/check.out" 2>&1; then
	fail config_ok "$(cat "$T/check.out")"
	finish
fi
PROXY_PREFIX=(ip netns exec "$ROUTER")
start_proxy "$T/transparent.conf"

nft_redirect() {
	in_ns "$ROUTER" nft -f - <<EOF
table ip stp_nat {
	chain prerouting {
		type nat hook prerouting priority dstnat;
		iifname "ra-$ID" tcp dport 25 redirect to :$P25
		iifname "ra-$ID" tcp dport 587 redirect to :$P587
	}
}
EOF
}
if nft_redirect; then pass nft_redirect_rules; else fail nft_redirect_rules "nft refused the rules"; finish; fi

# send TAG ADDR:PORT [expect]: the app sends one message in plaintext; swaks' transcript in
# $T/TAG.swaks, its exit status returned.
send() {
	local tag=$1 server=$2
	in_ns "$APP" timeout 30 swaks --server "$server" --from app@client.test --to someone@dest.test \
		--helo app.client.test --header "Message-ID: <$tag@client.test>" \
		--header "Subject: $tag" --body "body of $tag" >"$T/$tag.swaks" 2>&1
}

# delivered CHECK STORE TAG TLS: the message TAG arrived in STORE, over TLS (true/false).
delivered() {
	local check=$1 store=$2 tag=$3 tls=$4 f
	if ! f=$(wait_tag "$store" "$tag" 10); then
		fail "$check" "not delivered: $(tail -n 5 "$T/$tag.swaks" | tr '\n' '|')"
	elif ! grep -q "\"tls\": $tls" "${f%.eml}.json"; then
		fail "$check" "delivered, but tls is not $tls: $(cat "${f%.eml}.json")"
	else
		pass "$check"
	fi
}

send n25 10.99.2.2:25
delivered nft_25_verify_delivered_over_tls "$T/mx25.store" n25 true
expect_log nft_25_policy_from_table_line_2 'route=out25 .*event=policy upstream=10\.99\.2\.2:25 policy=verify mode=enforce tls=starttls name=localhost source=table:2'
expect_log nft_25_verified 'route=out25 .*event=upstream_tls .*verify=ok policy=verify'
send n587 10.99.2.2:587
delivered nft_587_encrypt_delivered_over_tls "$T/mx587.store" n587 true
expect_log nft_587_policy_from_table 'route=out587 .*event=policy upstream=10\.99\.2\.2:587 policy=encrypt .*source=table:3'

send strip 10.99.2.3:25
if grep -q '^<\*\* *421 4\.7\.0' "$T/strip.swaks"; then
	pass stripped_blocked_421_4.7.0
else
	fail stripped_blocked_421_4.7.0 "$(grep '^<' "$T/strip.swaks" | tail -n 3 | tr '\n' '|')"
fi
fake_never stripped_no_mail_in_plaintext strip 'MAIL FROM|RCPT TO|app\.client\.test' 1 \
	'EHLO proxy\.router\.test'
expect_log stripped_policy_failure 'route=out25 .*event=policy_failure .*result=starttls-not-supported mode=enforce'

send testing 10.99.2.4:25
if [ -n "$(wait_tag "$T/strip_testing.store" testing 10)" ]; then
	pass testing_mode_delivered_in_plaintext
else
	fail testing_mode_delivered_in_plaintext "$(tail -n 5 "$T/testing.swaks" | tr '\n' '|')"
fi
expect_log testing_mode_reported 'route=out25 .*event=policy_failure .*result=starttls-not-supported mode=testing'

# A connection to the proxy's own port, not redirected, is refused (and logged).
if in_ns "$APP" "$SMTP_PY" - <<PY; then
import socket, sys
s = socket.create_connection(("10.99.1.1", $P25), 5)
s.settimeout(5)
sys.exit(0 if s.recv(100) == b"" else 1)
PY
	pass direct_connection_closed
else
	fail direct_connection_closed "the proxy answered a connection that was not redirected"
fi
expect_log direct_connection_logged 'route=out25 .*event=refused reason="no original destination" .*detail="the proxy itself'

# --- the same with iptables ---------------------------------------------------------------------
in_ns "$ROUTER" nft delete table ip stp_nat
if in_ns "$ROUTER" iptables -t nat -A PREROUTING -i ra-$ID -p tcp --dport 25 -j REDIRECT --to-ports $P25; then
	send i25 10.99.2.2:25
	delivered iptables_25_verify_delivered_over_tls "$T/mx25.store" i25 true
	in_ns "$ROUTER" iptables -t nat -F PREROUTING
else
	fail iptables_redirect_rule "iptables refused the rule: $(in_ns "$ROUTER" iptables -t nat -L 2>&1 | head -n 2)"
fi

# --- IPv6: the original destination of a REDIRECT is IP6T_SO_ORIGINAL_DST ------------------------
setup_net6() {
	in_ns "$APP" ip -6 addr add fd99:1::2/64 dev a0-$ID nodad &&
		in_ns "$ROUTER" ip -6 addr add fd99:1::1/64 dev ra-$ID nodad &&
		in_ns "$ROUTER" ip -6 addr add fd99:2::1/64 dev rm-$ID nodad &&
		in_ns "$MAIL" ip -6 addr add fd99:2::2/64 dev m0-$ID nodad &&
		in_ns "$APP" ip -6 route add default via fd99:1::1 &&
		in_ns "$MAIL" ip -6 route add default via fd99:2::1 &&
		in_ns "$ROUTER" sysctl -qw net.ipv6.conf.all.forwarding=1 &&
		in_ns "$ROUTER" nft -f - <<EOF
table ip6 stp_nat6 {
	chain prerouting {
		type nat hook prerouting priority dstnat;
		iifname "ra-$ID" tcp dport 25 redirect to :$P25V6
	}
}
EOF
}
if ! setup_net6 2>"$T/net6.err"; then
	fail ipv6_setup "$(head -n 3 "$T/net6.err" | tr '\n' ' ')"
else
	sink mx25v6 '[fd99:2::2]:25' "${SRV[@]}"
	# (Python's smtplib: swaks needs IO::Socket::INET6 for IPv6)
	make_message "$T/v6.eml" v6
	in_ns "$APP" timeout 30 "$SMTP_PY" "$TOOLS/smtp_send.py" --connect '[fd99:2::2]:25' \
		--file "$T/v6.eml" --from app@client.test --to someone@dest.test >"$T/v6.swaks" 2>&1
	delivered ipv6_nft_25_verify_delivered_over_tls "$T/mx25v6.store" v6 true
	expect_log ipv6_original_destination_and_row \
		'route=out25v6 .*event=policy upstream=\[fd99:2::2\]:25 policy=verify mode=enforce tls=starttls name=localhost source=table:6'
	expect_log ipv6_verified 'route=out25v6 .*event=upstream_tls .*verify=ok policy=verify'
fi

# --- TPROXY, with the client's own address toward the server -------------------------------------
tproxy_rules() {
	in_ns "$ROUTER" ip rule add fwmark 1 lookup 100 &&
		in_ns "$ROUTER" ip route add local 0.0.0.0/0 dev lo table 100 &&
		in_ns "$ROUTER" nft -f - <<EOF
table ip stp_tproxy {
	chain prerouting {
		type filter hook prerouting priority mangle;
		meta l4proto tcp socket transparent 1 meta mark set 1 accept
		iifname "ra-$ID" tcp dport 25 tproxy to :$PT meta mark set 1 accept
	}
}
EOF
}
if ! tproxy_rules 2>"$T/tproxy.err"; then
	skip tproxy "the kernel refused the TPROXY rules: $(head -n 2 "$T/tproxy.err" | tr '\n' ' ')"
else
	send t25 10.99.2.2:25
	delivered tproxy_25_verify_delivered_over_tls "$T/mx25.store" t25 true
	expect_log tproxy_policy 'route=tproxy .*event=policy upstream=10\.99\.2\.2:25 policy=verify .*source=table:2'
	f=$(wait_tag "$T/mx25.store" t25 1)
	if [ -n "$f" ] && grep -q '"peer": "10.99.1.2:' "${f%.eml}.json"; then
		pass tproxy_source_client_address
	else
		fail tproxy_source_client_address "the server saw: $(cat "${f%.eml}.json" 2>&1)"
	fi
fi
finish
