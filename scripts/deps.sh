#!/usr/bin/env bash
# make deps: what the build (and, with "test", the test suite) needs on Debian 12, as root,
# and the pinned wolfSSL built from Debian's source package with its x86-64 assembly.
#
#   scripts/deps.sh build   the build and `make demo`: compiler, libuv, wolfSSL, openssl, python3
#   scripts/deps.sh test    the above and the test peers (default)
#   scripts/deps.sh private-postfix DIR   unpack Postfix into DIR only (see below)
#
# The tests' DNS server, NSD, is never installed as a package (it would add a service of
# the host): its files are unpacked under $STP_DEPS_DIR/nsd-root and the tests run it from
# there with their own configuration (its libraries are installed as packages).
#
# Safe on a real host, a mail host included:
# - no service of the host is started, stopped, restarted, disabled or replaced: packages
#   are installed under a policy-rc.d that denies every service action for the install
#   only (an existing policy-rc.d is set aside and put back), and no systemctl/service
#   call is ever made; the test peers (Postfix, stunnel, haproxy) run as private
#   instances started by the tests themselves;
# - no package is removed: an install that would remove one is refused (apt-get is asked
#   first with --simulate); when another MTA is installed, the postfix package (which
#   would displace it) is not installed: its files are unpacked privately under
#   $STP_DEPS_DIR/postfix-root and the tests run them from there;
# - the host's apt sources are not changed: the wolfSSL source package is fetched through a
#   private, temporary apt state.
# Idempotent: a second run finds everything in place and returns at once.
set -euo pipefail

WHAT=${1:-test}
WOLFSSL_VERSION=5.7.2
WOLFSSL_DEBIAN_VERSION=5.7.2-0.1+deb13u2
# Flags (and WOLFSSL_CFLAGS below) are part of the cache key: change them and the library
# is rebuilt.
WOLFSSL_FLAGS="--enable-static --disable-shared --enable-tls13 --enable-sni --enable-alpn
 --enable-session-ticket --enable-ocsp --enable-ocspstapling --enable-crl
 --enable-curve25519 --enable-ed25519 --enable-aesni --enable-intelasm --enable-sp
 --enable-sp-asm --enable-opensslextra --enable-fallback-scsv --enable-oldtls
 --enable-tlsv10 --disable-examples --disable-crypttests
 --disable-benchmark"
# WOLFSSL_ALWAYS_VERIFY_CB: the proxy's verify callback sees every certificate, good or
# bad. WOLFSSL_GETRANDOM: the RNG of each TLS connection is seeded with getrandom(2), one
# system call, instead of opening, reading and closing /dev/urandom per connection (which
# also fails where /dev is not there, as in a chroot or a sandbox without devices).
WOLFSSL_CFLAGS="-O2 -fPIC -DWOLFSSL_ALWAYS_VERIFY_CB -DWOLFSSL_GETRANDOM"
PREFIX_ROOT=${STP_DEPS_DIR:-/var/cache/starttls-proxy}
# Our own patch, applied after Debian's: the peer's certificate on the heap, not inline in
# every connection's object (the patch's header says why). Its content is in the key too.
WOLFSSL_PATCH="$(cd "$(dirname "$0")" && pwd)/wolfssl-peer-cert-heap.patch"
key=$({ echo "$WOLFSSL_DEBIAN_VERSION $WOLFSSL_FLAGS $WOLFSSL_CFLAGS"; cat "$WOLFSSL_PATCH"; } |
	sha256sum | cut -c1-12)
WOLFSSL_PREFIX="$PREFIX_ROOT/wolfssl-$WOLFSSL_VERSION-$key"
POLICY_RC=${STP_POLICY_RC:-/usr/sbin/policy-rc.d}

BUILD_PACKAGES="build-essential pkg-config libuv1-dev autoconf automake libtool dpkg-dev
 openssl ca-certificates python3 libunbound-dev dns-root-data zlib1g-dev"
TEST_PACKAGES="libcmocka-dev curl python3-aiosmtpd swaks libnet-ssleay-perl socat stunnel4
 haproxy postfix iproute2 procps psmisc libssl-dev clang nftables iptables testssl.sh
 ldnsutils python3-dnspython gdb libevent-2.1-7 libfstrm0 libprotobuf-c1 podman yamllint python3-yaml
 groff-base man-db dovecot-pop3d dovecot-imapd valgrind strace"

case $WHAT in
build) PACKAGES=$BUILD_PACKAGES ;;
test) PACKAGES="$BUILD_PACKAGES $TEST_PACKAGES" ;;
private-postfix) [ $# -eq 2 ] || { echo "usage: $0 private-postfix DIR" >&2; exit 2; } ;;
*) echo "usage: $0 [build|test|private-postfix DIR]" >&2; exit 2 ;;
esac

cleanups=()
cleanup() {
	local i
	for ((i = ${#cleanups[@]} - 1; i >= 0; i--)); do eval "${cleanups[i]}" || true; done
	cleanups=()
}
trap cleanup EXIT

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

# Another mail transport agent than Postfix (exim4, sendmail, opensmtpd, ...) is installed.
foreign_mta() {
	dpkg-query -W -f='${Package}\t${Status}\t${Provides}\n' 2>/dev/null |
		awk -F'\t' '$2 ~ /install ok installed/ && $3 ~ /mail-transport-agent/ &&
			$1 != "postfix" { print $1; exit }'
}

# Denies every service action (invoke-rc.d, deb-systemd-invoke) until restore_policy_rc.
deny_services() {
	local saved=""
	if [ -e "$POLICY_RC" ]; then
		saved=$(mktemp "$POLICY_RC.stp-saved.XXXXXX")
		cp -p "$POLICY_RC" "$saved"
	fi
	cat >"$POLICY_RC" <<'POLICY'
#!/bin/sh
# starttls-proxy make deps: no service starts, stops or restarts during the install.
[ -n "${STP_POLICY_LOG:-}" ] && echo "denied $*" >>"$STP_POLICY_LOG"
exit 101
POLICY
	chmod 755 "$POLICY_RC"
	if [ -n "$saved" ]; then
		cleanups+=("mv -f '$saved' '$POLICY_RC'")
	else
		cleanups+=("rm -f '$POLICY_RC'")
	fi
}

apt_install() {
	export DEBIAN_FRONTEND=noninteractive
	echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
	echo "postfix postfix/mailname string localhost" | debconf-set-selections
	apt-get update -q >/dev/null
	local removes
	removes=$(apt-get install -s -y -q --no-install-recommends "$@" 2>/dev/null |
		awk '/^Remv /{print $2}' | tr '\n' ' ')
	if [ -n "$removes" ]; then
		echo "deps: installing $* would remove: $removes- not done; install by hand" >&2
		exit 1
	fi
	deny_services
	apt-get install -y -q --no-install-recommends "$@" >/dev/null
	cleanup
}

# unpack_private PKG ROOT WHY: the archive's candidate of PKG unpacked into ROOT (no
# maintainer script runs), unless ROOT holds that version already; 0 when it unpacked, 1
# when it was there.
unpack_private() {
	local pkg=$1 root=$2 ver dl
	ver=$(apt-cache policy "$pkg" | awk '/Candidate:/{print $2}')
	[ -n "$ver" ] && [ "$ver" != "(none)" ] || { echo "deps: no $pkg package in the archive" >&2; exit 1; }
	[ -f "$root/.complete" ] && [ "$(cat "$root/.complete")" = "$ver" ] && return 1
	echo "deps: $3: unpacking $pkg $ver privately in $root"
	dl=$(mktemp -d "/tmp/stp-$pkg.XXXXXX")
	cleanups+=("rm -rf '$dl'")
	(cd "$dl" && chmod 755 . && apt-get download -q "$pkg=$ver" >/dev/null 2>&1)
	rm -rf "$root"
	mkdir -p "$root"
	dpkg-deb -x "$dl/${pkg}_"*.deb "$root"
	echo "$ver" >"$root/.complete"
	cleanup
	return 0
}

# Postfix unpacked into $2 (default PREFIX_ROOT/postfix-root; no maintainer script runs):
# for hosts whose MTA the postfix package would replace. The tests find it through
# PREFIX_ROOT/postfix.current (smtp_lib.sh runs it with its own directories).
private_postfix() {
	local root=${2:-$PREFIX_ROOT/postfix-root}
	if unpack_private postfix "$root" "$1"; then
		# The users and groups the package would create; Postfix refuses to run without them.
		getent group postdrop >/dev/null || groupadd --system postdrop
		getent passwd postfix >/dev/null ||
			useradd --system --home-dir /var/spool/postfix --no-create-home \
				--shell /usr/sbin/nologin postfix
	fi
	[ -n "${2:-}" ] || echo "$root" >"$PREFIX_ROOT/postfix.current"
}

# NSD unpacked into PREFIX_ROOT/nsd-root (no user, no service); the tests run nsd -d from
# there with a configuration of their own.
private_nsd() {
	unpack_private nsd "$PREFIX_ROOT/nsd-root" "the tests' DNS server" || true
}

mkdir -p "$PREFIX_ROOT"
# One run at a time (two `make test` in two clones share this cache): the second waits,
# then finds everything in place.
exec 9>"$PREFIX_ROOT/.deps.lock"
flock 9

if [ "$WHAT" = private-postfix ]; then
	private_postfix "requested" "$2"
	exit 0
fi
need_pkgs=()
mta=""
private=0
for p in $PACKAGES; do
	installed "$p" && continue
	if [ "$p" = postfix ]; then
		mta=$(foreign_mta)
		if [ -n "$mta" ] || [ "${STP_PRIVATE_POSTFIX:-}" = 1 ]; then
			private=1
			# Postfix's libraries (no services among them) are installed, not Postfix.
			apt-get update -q >/dev/null
			# shellcheck disable=SC2207
			need_pkgs+=($(apt-cache depends postfix | awk '$1 == "Depends:" && $2 ~ /^lib/ {print $2}'))
			continue
		fi
	fi
	need_pkgs+=("$p")
done
[ "${STP_PRIVATE_POSTFIX:-}" = 1 ] && private=1
if [ -n "${STP_REINSTALL:-}" ]; then
	# Only for the test that proves a reinstall leaves the host's services alone.
	echo "deps: reinstalling $STP_REINSTALL (services kept from starting)"
	export DEBIAN_FRONTEND=noninteractive
	deny_services
	# shellcheck disable=SC2086
	apt-get install -y -q --reinstall --no-install-recommends $STP_REINSTALL >/dev/null
	cleanup
fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
	echo "deps: installing ${need_pkgs[*]} (services kept from starting)"
	apt_install "${need_pkgs[@]}"
fi
if [ "$WHAT" = test ]; then
	if [ "$private" = 1 ]; then
		private_postfix "${mta:+the host MTA is $mta}${mta:-STP_PRIVATE_POSTFIX=1}"
	else
		rm -f "$PREFIX_ROOT/postfix.current"
	fi
	private_nsd
fi

if [ -f "$WOLFSSL_PREFIX/lib/libwolfssl.a" ]; then
	echo "deps: wolfSSL $WOLFSSL_VERSION ready in $WOLFSSL_PREFIX"
else
	work=$(mktemp -d /tmp/wolfssl-build.XXXXXX)
	cleanups+=("rm -rf '$work'")
	chmod 755 "$work"
	# Debian 13 (trixie) carries 5.7.2; its source package comes through a private apt
	# state in $work, so the host's sources and lists stay as they are.
	mkdir -p "$work/apt/lists/partial" "$work/apt/parts"
	cat >"$work/apt/parts/wolfssl-src.sources" <<SRC
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
	apt_private=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$work/apt/parts"
		-o "Dir::State::Lists=$work/apt/lists" -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache=)
	apt-get "${apt_private[@]}" update -q >/dev/null
	(cd "$work" && apt-get "${apt_private[@]}" source -q --download-only \
		"wolfssl=$WOLFSSL_DEBIAN_VERSION" >/dev/null 2>&1)
	orig=$(ls "$work"/wolfssl_"$WOLFSSL_VERSION".orig.tar.* | grep -v '\.asc$' | head -n1)
	tar -xf "$orig" -C "$work"
	src=$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'wolfssl*' | head -n1)
	# Apply Debian's patches (security fixes) on top of the upstream tarball.
	deb=$(ls "$work"/*.debian.tar.* 2>/dev/null | head -n1 || true)
	if [ -n "$deb" ]; then
		tar -xf "$deb" -C "$src"
		if [ -f "$src/debian/patches/series" ]; then
			while read -r p; do
				case "$p" in "" | \#*) continue ;; esac
				patch -d "$src" -p1 -s <"$src/debian/patches/$p"
			done <"$src/debian/patches/series"
		fi
	fi
	patch -d "$src" -p1 -s <"$WOLFSSL_PATCH"
	echo "deps: building wolfSSL $WOLFSSL_VERSION (about two minutes)"
	(cd "$src" && ./autogen.sh >/dev/null 2>&1 &&
		# shellcheck disable=SC2086
		./configure -q --prefix="$WOLFSSL_PREFIX" $WOLFSSL_FLAGS \
			CFLAGS="$WOLFSSL_CFLAGS" >/dev/null &&
		make -s -j"$(nproc)" >/dev/null 2>&1 && make -s install >/dev/null)
	echo "deps: wolfSSL installed in $WOLFSSL_PREFIX"
	cleanup
fi
echo "$WOLFSSL_PREFIX" >"$PREFIX_ROOT/wolfssl.current"
