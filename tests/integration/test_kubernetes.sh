#!/usr/bin/env bash
# The Kubernetes manifests of etc/kubernetes/, without a cluster:
#   - every YAML document parses (python3-yaml) and passes yamllint (line length 100);
#   - what the API server and the kubelet would require is there (tools/k8s_manifest.py
#     validate: names, images, volumes, ConfigMap keys, probe ports, selectors, Service
#     target ports) and the security contract of docs/kubernetes.md holds;
#   - each proxy container's files, made as the kubelet would mount them (the ConfigMap's
#     keys; the gateway's Secrets from the test certificates, with its fsGroup and modes),
#     pass `starttls-proxy -t`;
#   - sidecar: the init container's command (nft -f redirect.nft, with NET_ADMIN as its only
#     capability) in a "pod" network namespace wired to a "network" namespace: the rules
#     are there, apply twice to the same ruleset, and do what they say: the application's
#     uid (1000) reaching 25/465/587 elsewhere lands on the proxy's port with its original
#     destination, other ports and loopback are left alone, IPv6 to those ports is refused;
#     uid 65532 goes straight out. Then the real proxy with the sidecar's configuration,
#     as uid 65532: one message from uid 1000 to a server's port 587 arrives there over TLS,
#     and the probes of the manifest answer;
#   - gateway: the proxy with the gateway's configuration as uid 65532 in a namespace of its
#     own, the legacy server's Service name resolved as the cluster would: the Service's
#     port 587 takes STARTTLS (and refuses MAIL before it), 465 implicit TLS, both relay to
#     the plaintext server; the manifest's probes answer.
# The namespaces are removed at the end.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/smtp_lib.sh
. "$(dirname "$0")/smtp_lib.sh"

K8S=$REPO_ROOT/etc/kubernetes
SIDECAR=$K8S/sidecar.yaml
GATEWAY=$K8S/gateway.yaml
km() { "$SMTP_PY" "$TOOLS/k8s_manifest.py" "$@"; }

if ! "$SMTP_PY" -c 'import yaml' 2>/dev/null; then
	fail setup "python3-yaml is missing (make deps installs it)"
	finish
fi

# --- the documents ----------------------------------------------------------------------------------
for f in "$SIDECAR" "$GATEWAY"; do
	n=$(basename "$f" .yaml)
	check "${n}_yaml_parses" "$SMTP_PY" -c \
		'import sys, yaml; assert list(yaml.safe_load_all(open(sys.argv[1])))' "$f"
	# (make deps installs yamllint: without it this check fails, it is not skipped)
	check "${n}_yamllint" yamllint -s -d '{extends: default, rules: {line-length: {max: 100}}}' "$f"
	check "${n}_manifest_valid" km validate "$f"
done

# config_ok NAME CONF: PASS when `starttls-proxy -t` says "configuration OK" (status 0).
config_ok() {
	local out
	if out=$("$STP_BIN" -t -c "$2" 2>&1) && grep -qx 'configuration OK' <<<"$out"; then
		pass "$1"
	else
		fail "$1" "$out"
	fi
}

# --- the configurations, mounted as the kubelet would -------------------------------------------------
mkdir -p "$T/sc" "$T/gw"
# mounted NAME ARGS...: k8s_manifest.py mount ARGS; sets CONF, ARGS, MOUNTS, or FAILs NAME
# and ends the test.
mounted() {
	local name=$1 out
	shift
	CONF="" ARGS=()
	if ! out=$(km mount "$@" 2>&1); then
		fail "$name" "k8s_manifest.py mount: $(tail -n 2 <<<"$out")"
		finish
	fi
	eval "$out"
}
mounted sidecar_mount "$SIDECAR" legacy-app starttls-proxy "$T/sc/proxy"
SC_CONF=$CONF
config_ok sidecar_config_ok "$SC_CONF"

openssl rand -hex 80 >"$T/tickets.key"
mounted gateway_mount "$GATEWAY" starttls-proxy-gateway starttls-proxy "$T/gw/proxy" \
	--secret "mail-gateway-tls/tls.crt=$CERTS/server.pem" \
	--secret "mail-gateway-tls/tls.key=$CERTS/server.key" \
	--secret "starttls-proxy-tickets/tickets.key=$T/tickets.key"
GW_CONF=$CONF
config_ok gateway_config_ok "$GW_CONF"

# --- network namespaces --------------------------------------------------------------------------------
for tool in ip nft setpriv; do
	if ! command -v "$tool" >/dev/null; then
		fail setup "$tool is missing (make deps installs it)"
		finish
	fi
done
if [ "$(id -u)" != 0 ]; then
	skip namespaces "needs root to make network namespaces"
	finish
fi
# The pod's processes run under other uids, which cannot reach a checkout in a private
# directory (a clone in a 0700 home, or under mktemp -d): they get copies under $T (0755).
mkdir -p "$T/tools" "$T/certs"
cp "$TOOLS"/*.py "$T/tools/" && cp "$CERTS"/* "$T/certs/" && cp "$STP_BIN" "$T/starttls-proxy"
chmod 755 "$T/tools" "$T/certs" "$T/starttls-proxy"
chmod 644 "$T/tools"/*.py "$T/certs"/*
TOOLS=$T/tools CERTS=$T/certs STP_BIN=$T/starttls-proxy
ID=$$
POD=stp-pod-$ID NET=stp-net-$ID GW=stp-gw-$ID
ns_cleanup() {
	local n
	disown -a 2>/dev/null # the processes inside end with their namespaces, quietly
	for n in "$POD" "$NET" "$GW"; do
		ip netns pids "$n" 2>/dev/null | xargs -r kill -KILL 2>/dev/null
		ip netns del "$n" 2>/dev/null
	done
}
k8s_cleanup() {
	local rc=$?
	ns_cleanup
	(exit "$rc")
	smtp_cleanup
}
trap k8s_cleanup EXIT
in_ns() {
	local ns=$1
	shift
	ip netns exec "$ns" "$@"
}
as_uid() {
	local ns=$1 uid=$2
	shift 2
	ip netns exec "$ns" setpriv --reuid "$uid" --regid "$uid" --clear-groups "$@"
}

# pod (10.77.0.2, fd77::2) -- network (10.77.0.1, fd77::1; servers at 203.0.113.9, 2001:db8::9)
setup_net() {
	ip netns add "$POD" && ip netns add "$NET" || return 1
	ip link add p0-$ID type veth peer name n0-$ID || return 1
	ip link set p0-$ID netns "$POD" && ip link set n0-$ID netns "$NET" || return 1
	in_ns "$POD" ip addr add 10.77.0.2/24 dev p0-$ID &&
		in_ns "$NET" ip addr add 10.77.0.1/24 dev n0-$ID &&
		in_ns "$POD" ip -6 addr add fd77::2/64 dev p0-$ID nodad &&
		in_ns "$NET" ip -6 addr add fd77::1/64 dev n0-$ID nodad &&
		in_ns "$NET" ip addr add 203.0.113.9/32 dev lo &&
		in_ns "$NET" ip -6 addr add 2001:db8::9/128 dev lo nodad || return 1
	in_ns "$POD" ip link set lo up && in_ns "$POD" ip link set p0-$ID up &&
		in_ns "$NET" ip link set lo up && in_ns "$NET" ip link set n0-$ID up || return 1
	in_ns "$POD" ip route add default via 10.77.0.1 &&
		in_ns "$POD" ip -6 route add default via fd77::1
}
if ! setup_net 2>"$T/net.err"; then
	fail setup_namespaces "$(head -n 3 "$T/net.err" | tr '\n' ' ')"
	finish
fi
pass setup_namespaces

# --- sidecar: the init container's rules -------------------------------------------------------------
mounted redirect_mount "$SIDECAR" legacy-app redirect "$T/sc/redirect"
REDIRECT_ARGS=("${ARGS[@]}")
# The image's entrypoint is nft; NET_ADMIN is the one capability the manifest gives.
apply_rules() {
	in_ns "$POD" setpriv --bounding-set -all,+net_admin --inh-caps -all nft "${REDIRECT_ARGS[@]}"
}
if out=$(apply_rules 2>&1); then
	pass redirect_rules_apply_with_net_admin_only
else
	fail redirect_rules_apply_with_net_admin_only "$out"
fi
in_ns "$POD" nft list ruleset >"$T/ruleset1"
# The proxy's port: the sidecar route's listen.
PROXY_ADDR=$(sed -n 's/^listen *= *\([0-9.]*:[0-9]*\).*/\1/p' "$SC_CONF" | head -n 1)
PROXY_PORT=${PROXY_ADDR##*:}
note "sidecar proxy listens on $PROXY_ADDR"
rule_has() {
	local name=$1 table=$2 re=$3
	if awk -v t="$table" '$0 ~ "^table " t " " { on = 1 } /^}/ { on = 0 } on' "$T/ruleset1" | grep -Eq -- "$re"; then
		pass "$name"
	else
		fail "$name" "no /$re/ in $table: $(tr '\n\t' '  ' <"$T/ruleset1")"
	fi
}
rule_has nft_nat_output_hook 'ip starttls_proxy' 'type nat hook output priority (-100|dstnat)'
rule_has nft_uid_65532_exempt 'ip starttls_proxy' '^[[:space:]]*meta skuid 65532 return$'
rule_has nft_redirect_25_465_587 'ip starttls_proxy' "tcp dport \\{ 25, 465, 587 \\} redirect to :$PROXY_PORT\$"
rule_has nft_ipv6_uid_65532_exempt 'ip6 starttls_proxy' '^[[:space:]]*meta skuid 65532 return$'
rule_has nft_ipv6_refused 'ip6 starttls_proxy' 'tcp dport \{ 25, 465, 587 \} reject with tcp reset$'
apply_rules >/dev/null 2>&1
in_ns "$POD" nft list ruleset >"$T/ruleset2"
check redirect_rules_idempotent diff "$T/ruleset1" "$T/ruleset2"

# Where connections land: a stand-in for the proxy on its port (it answers with the
# original destination), servers in the network namespace.
P=$TOOLS/redirect_probe.py
spawn standin ip netns exec "$POD" "$SMTP_PY" "$P" serve --ready "$T/standin.ready" --proxy "$PROXY_ADDR" \
	--direct 127.0.0.1:25
STANDIN=$LAST_PID
spawn servers ip netns exec "$NET" "$SMTP_PY" "$P" serve --ready "$T/servers.ready" \
	--direct 203.0.113.9:25 --direct 203.0.113.9:465 --direct 203.0.113.9:587 \
	--direct 203.0.113.9:2525 --direct '[2001:db8::9]:25' --direct '[2001:db8::9]:587'
SERVERS=$LAST_PID
if ! wait_file "$T/standin.ready" 10 || ! wait_file "$T/servers.ready" 10; then
	fail redirect_probe_listeners "$(tail -n 3 "$T/standin.log" "$T/servers.log")"
	finish
fi
TARGETS=(203.0.113.9:25 203.0.113.9:465 203.0.113.9:587 203.0.113.9:2525 127.0.0.1:25
	'[2001:db8::9]:25' '[2001:db8::9]:587')
as_uid "$POD" 1000 "$SMTP_PY" "$P" connect "${TARGETS[@]}" >"$T/uid1000.out" 2>&1
as_uid "$POD" 65532 "$SMTP_PY" "$P" connect "${TARGETS[@]}" >"$T/uid65532.out" 2>&1
# landed NAME FILE TARGET ANSWER: the connection to TARGET got ANSWER.
landed() {
	local got
	got=$(awk -v t="$3" '$1 == t { $1 = ""; sub(/^ /, ""); print }' "$2")
	if [ "$got" = "$4" ]; then pass "$1"; else fail "$1" "$3: \"$got\", expected \"$4\""; fi
}
for p in 25 465 587; do
	landed "app_${p}_redirected_to_proxy" "$T/uid1000.out" "203.0.113.9:$p" "proxy 203.0.113.9:$p"
done
landed app_2525_not_redirected "$T/uid1000.out" 203.0.113.9:2525 "direct 203.0.113.9:2525"
landed app_loopback_25_not_redirected "$T/uid1000.out" 127.0.0.1:25 "direct 127.0.0.1:25"
landed app_ipv6_25_refused "$T/uid1000.out" '[2001:db8::9]:25' refused
landed app_ipv6_587_refused "$T/uid1000.out" '[2001:db8::9]:587' refused
for p in 25 465 587; do
	landed "proxy_uid_${p}_goes_out" "$T/uid65532.out" "203.0.113.9:$p" "direct 203.0.113.9:$p"
done
landed proxy_uid_ipv6_25_goes_out "$T/uid65532.out" '[2001:db8::9]:25' "direct [2001:db8::9]:25"
kill "$STANDIN" "$SERVERS" 2>/dev/null
wait "$STANDIN" "$SERVERS" 2>/dev/null

# --- sidecar: the real proxy, as uid 65532 ----------------------------------------------------------------
spawn mx587 ip netns exec "$NET" "$SMTP_PY" "$TOOLS/smtp_sink.py" --listen 203.0.113.9:587 \
	--ready "$T/mx587.port" --store "$T/mx587.store" --cert "$CERTS/server.pem" --key "$CERTS/server.key"
wait_file "$T/mx587.port" 10 || { fail sink_mx587 "$(tail -n 3 "$T/mx587.log")"; finish; }
PROXY_PREFIX=(ip netns exec "$POD" setpriv --reuid 65532 --regid 65532 --clear-groups)
start_proxy "$SC_CONF" sidecar
make_message "$T/m587" sidecar587
if out=$(as_uid "$POD" 1000 "$SMTP_PY" "$TOOLS/smtp_send.py" --connect 203.0.113.9:587 \
	--file "$T/m587" --from app@client.test --to someone@dest.test 2>&1); then
	delivered_exact sidecar_587_delivered "$T/mx587.store" sidecar587 "$T/m587"
	f=$(wait_tag "$T/mx587.store" sidecar587 1)
	check sidecar_587_over_tls grep -q '"tls": true' "${f%.eml}.json"
else
	fail sidecar_587_delivered "$out"
fi
row=$(grep -n '^\*:587 ' "$(dirname "$SC_CONF")/policy.table" | cut -d: -f1)
expect_log sidecar_policy_from_table "route=outbound .*event=policy upstream=203\\.0\\.113\\.9:587 policy=encrypt .*source=table:$row"
# probes CHECK NS FILE WORKLOAD CONTAINER: each HTTP probe of the manifest gets 200.
probes() {
	local name=$1 ns=$2 kind path port code
	while read -r kind path port; do
		code=$(in_ns "$ns" curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port$path")
		if [ "$code" = 200 ]; then pass "${name}_${kind}"; else fail "${name}_${kind}" "$path on $port: HTTP $code"; fi
	done < <(km probes "$3" "$4" "$5")
}
probes sidecar "$POD" "$SIDECAR" legacy-app starttls-proxy

# --- gateway ------------------------------------------------------------------------------------------
if ! ip netns add "$GW" || ! in_ns "$GW" ip link set lo up; then
	fail gateway_namespace "ip netns add $GW"
	finish
fi
UPSTREAM=$(sed -n 's/^upstream *= *\([^ ;]*\).*/\1/p' "$GW_CONF" | sort -u)
UP_HOST=${UPSTREAM%:*} UP_PORT=${UPSTREAM##*:}
note "gateway upstream: $UPSTREAM"
spawn legacy ip netns exec "$GW" "$SMTP_PY" "$TOOLS/smtp_sink.py" --listen "127.0.0.1:$UP_PORT" \
	--ready "$T/legacy.port" --store "$T/legacy.store"
wait_file "$T/legacy.port" 10 || { fail sink_legacy "$(tail -n 3 "$T/legacy.log")"; finish; }
# The Service name resolves as cluster DNS would make it (an /etc/hosts of the proxy's own).
echo "127.0.0.1 $UP_HOST" >"$T/hosts"
# shellcheck disable=SC2016 # expanded by the inner sh
PROXY_PREFIX=(ip netns exec "$GW" unshare --mount --propagation private -- sh -c \
	'mount -n --bind "$0" /etc/hosts && exec "$@"' "$T/hosts"
	setpriv --reuid 65532 --regid 65532 --clear-groups)
start_proxy "$GW_CONF" gateway
# Service port -> container port, from the manifest.
svc_port() {
	"$SMTP_PY" - "$GATEWAY" "$1" <<'PY'
import sys, yaml
docs = list(yaml.safe_load_all(open(sys.argv[1])))
svc = [d for d in docs if d and d["kind"] == "Service"][0]
dep = [d for d in docs if d and d["kind"] == "Deployment"][0]
port = [p for p in svc["spec"]["ports"] if p["port"] == int(sys.argv[2])][0]["targetPort"]
for c in dep["spec"]["template"]["spec"]["containers"]:
    for p in c.get("ports", []):
        if port in (p.get("name"), p.get("containerPort")):
            print(p["containerPort"])
PY
}
P587=$(svc_port 587) P465=$(svc_port 465)
note "Service 587 -> $P587, 465 -> $P465"
make_message "$T/g587" gw587
make_message "$T/g465" gw465
in_ns "$GW" "$SMTP_PY" "$TOOLS/smtp_dialog.py" --connect "127.0.0.1:$P587" \
	expect:220 cmd:250:"EHLO modern.client.test" has:STARTTLS \
	cmd:530:"MAIL FROM:<a@client.test>" >"$T/plain587.out" 2>&1
check gateway_587_refuses_mail_before_starttls grep -q '"ok": true' "$T/plain587.out"
if out=$(in_ns "$GW" "$SMTP_PY" "$TOOLS/smtp_send.py" --connect "127.0.0.1:$P587" --tls starttls \
	--ca "$CERTS/ca.pem" --name localhost --file "$T/g587" --from a@client.test --to b@dest.test 2>&1); then
	delivered_exact gateway_587_starttls_delivered "$T/legacy.store" gw587 "$T/g587"
else
	fail gateway_587_starttls_delivered "$out"
fi
if out=$(in_ns "$GW" "$SMTP_PY" "$TOOLS/smtp_send.py" --connect "127.0.0.1:$P465" --tls implicit \
	--ca "$CERTS/ca.pem" --name localhost --file "$T/g465" --from a@client.test --to b@dest.test 2>&1); then
	delivered_exact gateway_465_implicit_delivered "$T/legacy.store" gw465 "$T/g465"
else
	fail gateway_465_implicit_delivered "$out"
fi
# (log_format = json in the gateway's configuration)
expect_log gateway_587_client_tls '"route":"submission","event":"client_tls","version":"TLSv1\.[23]"'
expect_log gateway_465_client_tls '"route":"submissions","event":"client_tls","version":"TLSv1\.[23]"'
expect_log gateway_upstream_service_name \
	'"route":"submission","event":"policy","upstream":"127\.0\.0\.1:'"$UP_PORT"'","policy":"none",.*"name":"'"${UP_HOST//./\\.}"'"'
probes gateway "$GW" "$GATEWAY" starttls-proxy-gateway starttls-proxy
finish
