#!/usr/bin/env bash
# make image: the root filesystems the Containerfile copies, assembled from this host's files.
#
#   scripts/mkimage.sh BIN OUTDIR
#
# OUTDIR/rootfs      the starttls-proxy image: BIN (stripped) at /usr/bin/starttls-proxy, the
#                    shared libraries `ldd BIN` names and the dynamic loader (nothing else),
#                    the CA bundle, the DNSSEC root key, /etc/passwd and /etc/group with the
#                    user starttls-proxy (65532), /etc/nsswitch.conf, and etc/container.conf
#                    as /etc/starttls-proxy/starttls-proxy.conf. No shell, no package manager.
# OUTDIR/netinit     the init container of the Kubernetes sidecar (etc/kubernetes/sidecar.yaml):
#                    /usr/sbin/nft and its libraries, nothing else.
#
# The binary stays dynamically linked against Debian's libc (wolfSSL is static already): a
# static glibc cannot do getaddrinfo/getpwnam without loading NSS modules of the very glibc
# it was built with at run time, which defeats the point; the libraries come from the same
# Debian 12 host that built the binary, so they match it exactly. Debian 12 is a merged-/usr
# system: files go under /usr, with /lib and /lib64 as symbolic links, as on the host.
# File times are set to the last commit's (reproducible layers).
set -euo pipefail

[ $# -eq 2 ] || { echo "usage: $0 BIN OUTDIR" >&2; exit 2; }
BIN=$1
OUT=$2
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[ -x "$BIN" ] || { echo "mkimage: no binary $BIN (run make)" >&2; exit 1; }
for f in /etc/ssl/certs/ca-certificates.crt /usr/share/dns/root.key; do
	[ -f "$f" ] || { echo "mkimage: $f missing (make deps installs it)" >&2; exit 1; }
done
NFT=$(command -v nft || true)
[ -n "$NFT" ] || { echo "mkimage: nft missing (apt-get install nftables; make deps does)" >&2; exit 1; }

# usr_path PATH: where PATH lives on a merged-/usr system (/lib/x -> /usr/lib/x).
usr_path() {
	case $1 in
	/lib/* | /lib64/* | /bin/* | /sbin/*) echo "/usr$1" ;;
	*) echo "$1" ;;
	esac
}

# add_elf ROOTFS FILE DEST: FILE at DEST in ROOTFS, and every library `ldd FILE` resolves
# (the loader included), each under its own name, contents copied (no symlink chains).
add_elf() {
	local rootfs=$1 file=$2 dest=$3 lib
	install -D -m 755 "$file" "$rootfs$dest"
	ldd "$file" >"$OUT/ldd.out" 2>&1 || { cat "$OUT/ldd.out" >&2; exit 1; }
	if grep -q 'not found' "$OUT/ldd.out"; then
		echo "mkimage: $file: unresolved libraries:" >&2
		grep 'not found' "$OUT/ldd.out" >&2
		exit 1
	fi
	# "libx.so.1 => /lib/.../libx.so.1 (0x...)" and "/lib64/ld-linux-x86-64.so.2 (0x...)";
	# linux-vdso.so.1 is the kernel's and has no file.
	awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' "$OUT/ldd.out" |
		while read -r lib; do
			install -D -m 644 "$(readlink -f "$lib")" "$rootfs$(usr_path "$lib")"
		done
	rm -f "$OUT/ldd.out"
}

# merged_usr ROOTFS: /lib -> usr/lib, /lib64 -> usr/lib64 (the loader's path is /lib64/...).
merged_usr() {
	ln -s usr/lib "$1/lib"
	ln -s usr/lib64 "$1/lib64"
	chmod 755 "$1/usr/lib64/ld-linux-x86-64.so.2"
}

# self_test ROOTFS EXE ARGS...: EXE's libraries, as the rootfs's own loader resolves them with
# the rootfs's library directory first, must all come from the rootfs (the loader would fall
# back to the host's directories for a missing one: that is the failure looked for); then
# EXE ARGS runs that way. No root needed.
self_test() {
	local rootfs=$1 exe=$2 ld
	shift 2
	ld=("$rootfs/usr/lib64/ld-linux-x86-64.so.2" --inhibit-cache
		--library-path "$rootfs/usr/lib/x86_64-linux-gnu" "$rootfs$exe")
	env -i LD_TRACE_LOADED_OBJECTS=1 "${ld[@]}" >"$OUT/trace.out" 2>&1 || true
	if ! grep -q '=>' "$OUT/trace.out" ||
		awk -v r="$rootfs/" '$2 == "=>" && index($3, r) != 1 { bad = 1 } END { exit !bad }' "$OUT/trace.out"; then
		echo "mkimage: $exe: not every library resolves inside $rootfs:" >&2
		cat "$OUT/trace.out" >&2
		exit 1
	fi
	rm -f "$OUT/trace.out"
	env -i "${ld[@]}" "$@"
}

epoch=$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || date +%s)
rm -rf "$OUT/rootfs" "$OUT/netinit"
mkdir -p "$OUT"

# --- the proxy --------------------------------------------------------------------------------
R=$OUT/rootfs
mkdir -p "$R"
add_elf "$R" "$BIN" /usr/bin/starttls-proxy
strip --strip-unneeded "$R/usr/bin/starttls-proxy"
merged_usr "$R"
install -D -m 644 /etc/ssl/certs/ca-certificates.crt "$R/etc/ssl/certs/ca-certificates.crt"
install -D -m 644 /usr/share/dns/root.key "$R/usr/share/dns/root.key"
install -D -m 644 "$ROOT/etc/container.conf" "$R/etc/starttls-proxy/starttls-proxy.conf"
cat >"$R/etc/passwd" <<'EOF'
root:x:0:0:root:/nonexistent:/nonexistent
starttls-proxy:x:65532:65532:starttls-proxy:/nonexistent:/nonexistent
EOF
cat >"$R/etc/group" <<'EOF'
root:x:0:
starttls-proxy:x:65532:
EOF
# Host names: /etc/hosts (which the container runtime provides) before DNS.
cat >"$R/etc/nsswitch.conf" <<'EOF'
passwd: files
group:  files
hosts:  files dns
EOF
chmod 644 "$R/etc/passwd" "$R/etc/group" "$R/etc/nsswitch.conf"
# Mount points the runtime fills (and that the tests' chroot binds /dev onto).
mkdir -p "$R/dev" "$R/proc"
self_test "$R" /usr/bin/starttls-proxy -V >/dev/null

# --- the sidecar's init container: nft ----------------------------------------------------------
N=$OUT/netinit
mkdir -p "$N"
add_elf "$N" "$NFT" /usr/sbin/nft
merged_usr "$N"
self_test "$N" /usr/sbin/nft --version >/dev/null

find "$R" "$N" -exec touch -h -d "@$epoch" {} +
echo "mkimage: $R ($(du -sk "$R" | cut -f1) KiB), $N ($(du -sk "$N" | cut -f1) KiB)"
