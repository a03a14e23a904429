#!/usr/bin/env bash
# The container image (Containerfile, scripts/mkimage.sh), built offline with podman into a
# private storage under $T (vfs driver; the host's podman storage and caches are not
# touched: every podman call runs in a private mount namespace where /var/lib, /var/cache
# and /var/tmp are empty tmpfs, and the test checks they stayed as they were). Then, the
# image mounted (`podman image mount`) and run with chroot as a container runtime would
# (a fresh /dev with null, zero, random, urandom; /proc):
#   - its metadata: user 65532:65532, entrypoint, command, ports, OCI labels, size;
#   - its contents: no shell, exactly the libraries `ldd` names, a stripped binary, root-owned;
#   - -V; -t on the shipped configuration as the image's user; `user = starttls-proxy`
#     resolves through the image's own passwd;
#   - the image's entrypoint and command, unchanged, in a network namespace of its own:
#     ready, /readyz answers, a client gets 421 4.4.1 (no network there, by design);
#   - one message relayed through the proxy inside the image, as uid 65532, toward a
#     private upstream with STARTTLS, the certificate verified: the shipped libraries are
#     complete (libc, libuv, libunbound, zlib, loader; wolfSSL is linked in);
#   - the netinit image's nft installs the sidecar's rules (etc/kubernetes/sidecar.yaml) in
#     a network namespace.
# stp-timeout: 300
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=tests/integration/smtp_lib.sh
. "$(dirname "$0")/smtp_lib.sh"

for tool in podman unshare chroot nsenter ip nft readelf strip curl; do
	if ! command -v "$tool" >/dev/null; then
		fail setup "$tool is missing (make deps installs it)"
		finish
	fi
done
if [ "$(id -u)" != 0 ]; then
	skip container "needs root (podman storage of its own, chroot, mount namespaces)"
	finish
fi

VERSION=$("$STP_BIN" -V | awk '{print $2; exit}')
IMG=localhost/starttls-proxy:stp-test
NETINIT=localhost/starttls-proxy-netinit:stp-test
USER_ID=65532:65532
NS=stp-img-$$

# What podman writes outside --root/--runroot if left alone: it must stay as it is.
host_state() {
	local d
	for d in /var/lib/containers /var/cache/containers /etc/cni/net.d /run/containers /run/libpod; do
		if [ -e "$d" ]; then find "$d" -printf '%p %y\n' 2>/dev/null | sort; else echo "$d absent"; fi
	done
}
host_state >"$T/host-before"

# pm ARGS: podman with a storage of its own under $T, in a private mount namespace whose
# /var/lib, /var/cache and /var/tmp are empty (its blob-info cache, short-name lock and
# big temporary files land there and vanish with it).
mkdir -p "$T/podman/tmp" "$T/podman/cni"
# shellcheck disable=SC2016 # the inner script expands its own arguments
pm() {
	TMPDIR=$T/podman/tmp unshare --mount --propagation private -- sh -c '
		for d in /var/lib /var/cache /var/tmp; do
			mount -n -t tmpfs -o mode=755 stp-test "$d" || exit 125
		done
		exec "$@"' sh podman --root "$T/podman/root" --runroot "$T/podman/run" \
		--tmpdir "$T/podman/tmp" --storage-driver vfs --cgroup-manager cgroupfs \
		--events-backend file --network-config-dir "$T/podman/cni" "$@"
}
MOUNTED=()
container_cleanup() {
	local rc=$? i
	disown -a 2>/dev/null
	ip netns pids "$NS" 2>/dev/null | xargs -r kill -KILL 2>/dev/null
	ip netns del "$NS" 2>/dev/null
	for i in "${MOUNTED[@]}"; do pm image unmount "$i" >/dev/null 2>&1; done
	(exit "$rc")
	smtp_cleanup
}
trap container_cleanup EXIT

# --- build --------------------------------------------------------------------------------------
# The context as `make image` leaves it: the tree's Containerfile and .containerignore, and
# build/image made by scripts/mkimage.sh from the binary under test.
CTX=$T/ctx
mkdir -p "$CTX"
cp "$REPO_ROOT/Containerfile" "$REPO_ROOT/.containerignore" "$CTX/"
check mkimage_rootfs bash "$REPO_ROOT/scripts/mkimage.sh" "$STP_BIN" "$CTX/build/image" || finish
echo "not for the image" >"$CTX/stray-file"
if ! pm build --build-arg "VERSION=$VERSION" -t "$IMG" "$CTX" >"$T/build.log" 2>&1; then
	fail podman_build "$(tail -n 5 "$T/build.log")"
	finish
fi
pass podman_build
check podman_build_netinit pm build --target netinit --build-arg "VERSION=$VERSION" \
	-t "$NETINIT" "$CTX"

inspect() { pm image inspect --format "$2" "$1"; }
# same NAME GOT WANT: PASS when GOT is WANT.
same() {
	if [ "$2" = "$3" ]; then pass "$1"; else fail "$1" "got '$2', expected '$3'"; fi
}
same runs_as_non_root_user "$(inspect "$IMG" '{{.Config.User}}')" "$USER_ID"
same entrypoint_and_cmd "$(inspect "$IMG" '{{json .Config.Entrypoint}} {{json .Config.Cmd}}')" \
	'["/usr/bin/starttls-proxy"] ["-c","/etc/starttls-proxy/starttls-proxy.conf"]'
same exposed_ports "$(inspect "$IMG" '{{json .Config.ExposedPorts}}')" '{"2525/tcp":{},"9465/tcp":{}}'
same label_version "$(inspect "$IMG" '{{index .Config.Labels "org.opencontainers.image.version"}}')" "$VERSION"
# The licence label names the project's licence (LICENSE).
lic=$(inspect "$IMG" '{{index .Config.Labels "org.opencontainers.image.licenses"}}')
if [ "$lic" = GPL-2.0-or-later ]; then pass label_licenses; else fail label_licenses "licenses label: '$lic', want GPL-2.0-or-later"; fi
same one_layer "$(inspect "$IMG" '{{len .RootFS.Layers}}')" 1
# 9.4 MB measured (binary 3.3 MB stripped, libraries 5.9 MB, CA bundle 0.2 MB); 12 MB leaves
# a quarter for library updates and catches a base distribution or an extra copy of libc.
SIZE=$(inspect "$IMG" '{{.Size}}')
note "image size: $SIZE bytes; netinit: $(inspect "$NETINIT" '{{.Size}}') bytes"
if is_sanitized; then
	skip image_size_below_12MB "a sanitizer build carries its runtimes"
else
	if [ "$SIZE" -lt 12000000 ]; then pass image_size_below_12MB; else fail image_size_below_12MB "$SIZE bytes"; fi
fi

# --- contents -------------------------------------------------------------------------------------
if ! M=$(pm image mount "$IMG" 2>"$T/mount.err") || [ ! -x "$M/usr/bin/starttls-proxy" ]; then
	fail image_mount "$(cat "$T/mount.err")"
	finish
fi
MOUNTED+=("$IMG")
pass image_mount
if [ -e "$M/bin/sh" ] || [ -n "$(find "$M" -name sh -o -name bash -o -name busybox -o -name dash)" ]; then
	fail no_shell "$(find "$M" -name sh -o -name bash -o -name busybox -o -name dash)"
else
	pass no_shell
fi
if [ -e "$M/stray-file" ] || [ -e "$M/build" ]; then
	fail nothing_else_from_the_context "$(ls -d "$M/stray-file" "$M/build" 2>/dev/null | tr '\n' ' ')"
else
	pass nothing_else_from_the_context
fi
# Libraries: exactly the ones ldd names for the binary, by name.
ldd "$STP_BIN" | awk '$2 == "=>" && $3 ~ /^\// { print $1 } $1 ~ /^\// { print $1 }' |
	sed 's|.*/||' | sort >"$T/libs-ldd"
find "$M/usr/lib" "$M/usr/lib64" -type f -printf '%f\n' | sort >"$T/libs-image"
if diff "$T/libs-ldd" "$T/libs-image" >"$T/libs.diff"; then
	pass libraries_exactly_ldd
else
	fail libraries_exactly_ldd "$(tr '\n' ' ' <"$T/libs.diff")"
fi
check binary_stripped sh -c "! readelf -S '$M/usr/bin/starttls-proxy' | grep -Eq '\\.(symtab|debug_info)'"
not_root=$(find "$M" ! -user 0 -o ! -group 0 | head -n 3)
if [ -z "$not_root" ]; then pass files_owned_by_root; else fail files_owned_by_root "$not_root"; fi
for f in etc/ssl/certs/ca-certificates.crt usr/share/dns/root.key etc/passwd etc/group \
	etc/nsswitch.conf etc/starttls-proxy/starttls-proxy.conf; do
	if [ -s "$M/$f" ]; then pass "has_$(basename "$f")"; else fail "has_$(basename "$f")" "no /$f"; fi
done
check passwd_user_65532 grep -qx 'starttls-proxy:x:65532:65532:.*' "$M/etc/passwd"

# IN_IMAGE_SH, run as: sh -c "$IN_IMAGE_SH" sh ROOT CONFDIR UID:GID CMD... in a private mount
# namespace: CMD in the image ROOT as a runtime would give it (a tmpfs /dev with the
# standard nodes, /proc), CONFDIR (unless empty) over /etc/starttls-proxy. Every step
# execs: the process started is the proxy itself (signals reach it, its status is its own).
# shellcheck disable=SC2016 # expanded by the inner sh
IN_IMAGE_SH='m=$1 conf=$2 user=$3
shift 3
mount -n -t tmpfs -o mode=755,nosuid stp-dev "$m/dev" || exit 125
for n in null zero random urandom; do
	touch "$m/dev/$n" && mount -n --bind "/dev/$n" "$m/dev/$n" || exit 125
done
mount -n -t proc proc "$m/proc" || exit 125
if [ -n "$conf" ]; then mount -n --bind "$conf" "$m/etc/starttls-proxy" || exit 125; fi
exec chroot --userspec="$user" "$m" "$@"'
# in_image CONFDIR UID:GID CMD...
in_image() {
	unshare --mount --propagation private -- sh -c "$IN_IMAGE_SH" sh "$M" "$@"
}

out=$(in_image "" "$USER_ID" /usr/bin/starttls-proxy -V 2>&1) # (with /proc: a sanitizer build needs it)
if [[ $out == "starttls-proxy $VERSION (wolfSSL "* ]]; then
	pass version_in_image
else
	fail version_in_image "$out"
fi
if out=$(in_image "" "$USER_ID" /usr/bin/starttls-proxy -t -c /etc/starttls-proxy/starttls-proxy.conf 2>&1) &&
	grep -qx 'configuration OK' <<<"$out"; then
	pass shipped_config_ok_as_65532
else
	fail shipped_config_ok_as_65532 "$out"
fi
# user = NAME is looked up with getpwnam: the image's passwd and nsswitch.conf answer it.
mkdir -p "$T/conf-user"
sed 's/^\[global\]$/[global]\nuser = starttls-proxy/' "$M/etc/starttls-proxy/starttls-proxy.conf" \
	>"$T/conf-user/starttls-proxy.conf"
if out=$(in_image "$T/conf-user" 0:0 /usr/bin/starttls-proxy -t 2>&1) &&
	grep -qx 'configuration OK' <<<"$out"; then
	pass user_resolves_in_image
else
	fail user_resolves_in_image "$out"
fi

# --- the image's own entrypoint and command, in a network namespace of their own --------------------
mapfile -t CMDLINE < <(inspect "$IMG" '{{range .Config.Entrypoint}}{{println .}}{{end}}{{range .Config.Cmd}}{{println .}}{{end}}' | sed '/^$/d')
PROXY_NAMES+=(default)
spawn default unshare --net --mount --propagation private -- \
	sh -c "ip link set lo up || exit 125; $IN_IMAGE_SH" sh "$M" "" "$USER_ID" "${CMDLINE[@]}"
PROXY_PID[default]=$LAST_PID
PROXY_LOG=$T/default.log
if wait_log 'event=ready' 10; then
	pass default_cmd_ready
	net=/proc/$LAST_PID/ns/net
	check default_readyz_200 sh -c "nsenter --net=$net curl -sf http://127.0.0.1:9465/readyz | grep -qx ready"
	# No network in there, no resolver: the upstream cannot be reached, and the client is
	# told so the protocol's way.
	if out=$(nsenter --net="$net" "$SMTP_PY" "$TOOLS/smtp_dialog.py" --connect 127.0.0.1:2525 \
		expect:421:4.4.1 closed:5 2>&1); then
		pass default_route_421_4.4.1_without_network
	else
		fail default_route_421_4.4.1_without_network "$out"
	fi
else
	fail default_cmd_ready "$(tail -n 5 "$T/default.log")"
fi

# --- one message through the proxy inside the image ------------------------------------------------
start_sink up --cert "$CERTS/server.pem" --key "$CERTS/server.key"
free_port P
free_port PADM
mkdir -p "$T/conf-relay"
cp "$CERTS/ca.pem" "$T/conf-relay/ca.pem"
cat >"$T/conf-relay/starttls-proxy.conf" <<EOF
[global]
workers = 1
log_level = debug
drain_timeout = 2s
admin_listen = 127.0.0.1:$PADM
ca = /etc/starttls-proxy/ca.pem

[route relay]
listen = 127.0.0.1:$P
protocol = smtp
client_tls = none
upstream = 127.0.0.1:$(port_of up)
upstream_tls = starttls
upstream_policy = verify
upstream_name = localhost
EOF
chmod 644 "$T/conf-relay/"*
PROXY_NAMES+=(relay)
spawn relay unshare --mount --propagation private -- sh -c "$IN_IMAGE_SH" sh "$M" "$T/conf-relay" \
	"$USER_ID" /usr/bin/starttls-proxy -c /etc/starttls-proxy/starttls-proxy.conf
PROXY_PID[relay]=$LAST_PID
PROXY_LOG=$T/relay.log
if ! wait_log 'event=ready' 10; then
	fail relay_proxy_ready "$(tail -n 5 "$T/relay.log")"
	finish
fi
pass relay_proxy_ready
if [ "$(awk '/^Uid:/ {print $2}' "/proc/$LAST_PID/status")" = 65532 ]; then
	pass relay_proxy_runs_as_65532
else
	fail relay_proxy_runs_as_65532 "$(grep -E '^(Name|Uid):' "/proc/$LAST_PID/status" | tr '\n' ' ')"
fi
make_message "$T/m1" image1
if out=$(smtp_send --connect "127.0.0.1:$P" --file "$T/m1" --from app@client.test --to someone@dest.test); then
	delivered_exact relayed_through_image "$T/up.store" image1 "$T/m1"
	f=$(wait_tag "$T/up.store" image1 1)
	check relayed_over_tls grep -q '"tls": true' "${f%.eml}.json"
else
	fail relayed_through_image "$out"
fi
expect_log upstream_verified_in_image 'route=relay .*event=upstream_tls .*verify=ok'

# --- the netinit image applies the sidecar's rules ---------------------------------------------------
if ! NM=$(pm image mount "$NETINIT" 2>"$T/mount2.err"); then
	fail netinit_mount "$(cat "$T/mount2.err")"
	finish
fi
MOUNTED+=("$NETINIT")
check netinit_no_shell [ -z "$(find "$NM" -name sh -o -name bash -o -name busybox)" ]
"$SMTP_PY" "$TOOLS/k8s_manifest.py" data "$REPO_ROOT/etc/kubernetes/sidecar.yaml" \
	starttls-proxy-sidecar redirect.nft >"$T/redirect.nft"
if ip netns add "$NS" && ip netns exec "$NS" chroot "$NM" /usr/sbin/nft -f - <"$T/redirect.nft" 2>"$T/nft.err"; then
	pass netinit_nft_applies_rules
	check netinit_rules_in_place sh -c "ip netns exec '$NS' nft list table ip starttls_proxy | grep -q 'redirect to :10025'"
else
	fail netinit_nft_applies_rules "$(cat "$T/nft.err")"
fi

for i in "${MOUNTED[@]}"; do pm image unmount "$i" >/dev/null 2>&1; done
MOUNTED=()
host_state >"$T/host-after"
if diff "$T/host-before" "$T/host-after" >"$T/host.diff"; then
	pass host_podman_state_untouched
else
	fail host_podman_state_untouched "$(head -n 5 "$T/host.diff" | tr '\n' ' ')"
fi
finish
