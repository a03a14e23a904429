#!/usr/bin/env bash
# Installs everything the build and the tests need on a fresh Debian 12 machine (root),
# and builds the pinned wolfSSL from Debian's source package with its x86-64 assembly.
# Idempotent: a second run finds everything in place and returns at once.
set -euo pipefail

WOLFSSL_VERSION=5.7.2
WOLFSSL_DEBIAN_VERSION=5.7.2-0.1+deb13u2
# Flags are part of the cache key: change them and the library is rebuilt.
WOLFSSL_FLAGS="--enable-static --disable-shared --enable-tls13 --enable-sni --enable-alpn
 --enable-session-ticket --enable-ocsp --enable-ocspstapling --enable-crl
 --enable-curve25519 --enable-ed25519 --enable-aesni --enable-intelasm --enable-sp
 --enable-sp-asm --enable-opensslextra --enable-fallback-scsv --enable-oldtls
 --enable-tlsv10 --enable-secure-renegotiation --disable-examples --disable-crypttests
 --disable-benchmark"
PREFIX_ROOT=${STP_DEPS_DIR:-/var/cache/starttls-proxy}
key=$(echo "$WOLFSSL_DEBIAN_VERSION $WOLFSSL_FLAGS" | sha256sum | cut -c1-12)
WOLFSSL_PREFIX="$PREFIX_ROOT/wolfssl-$WOLFSSL_VERSION-$key"

PACKAGES="build-essential pkg-config libuv1-dev libcmocka-dev autoconf automake libtool
 dpkg-dev openssl curl python3 python3-aiosmtpd swaks libnet-ssleay-perl socat stunnel4 haproxy
 postfix iproute2 procps psmisc libssl-dev clang"

need_pkgs=()
for p in $PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_pkgs+=("$p")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "deps: installing ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  echo "postfix postfix/mailname string localhost" | debconf-set-selections
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${need_pkgs[@]}" >/dev/null
  # The tests start their own servers; the packaged daemons must not hold ports.
  for s in postfix stunnel4 haproxy; do
    (systemctl disable --now "$s" || service "$s" stop) >/dev/null 2>&1 || true
  done
fi

if [ -f "$WOLFSSL_PREFIX/lib/libwolfssl.a" ]; then
  echo "deps: wolfSSL $WOLFSSL_VERSION ready in $WOLFSSL_PREFIX"
else
  # Debian's source package; needs a deb-src entry for the archive (trixie carries 5.7.2).
  if ! apt-cache showsrc wolfssl 2>/dev/null | grep -q "^Version: $WOLFSSL_DEBIAN_VERSION"; then
    cat > /etc/apt/sources.list.d/starttls-proxy-src.sources <<SRC
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    apt-get update -q >/dev/null
  fi
  work=$(mktemp -d /tmp/wolfssl-build.XXXXXX)
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && chmod 755 "$work" && apt-get source -q --download-only "wolfssl=$WOLFSSL_DEBIAN_VERSION" >/dev/null)
  orig=$(ls "$work"/wolfssl_"$WOLFSSL_VERSION".orig.tar.* | grep -v '\.asc$' | head -n1)
  tar -xf "$orig" -C "$work"
  src=$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'wolfssl*' | head -n1)
  # Apply Debian's patches (security fixes) on top of the upstream tarball.
  deb=$(ls "$work"/*.debian.tar.* 2>/dev/null | head -n1 || true)
  if [ -n "$deb" ]; then
    tar -xf "$deb" -C "$src"
    if [ -f "$src/debian/patches/series" ]; then
      while read -r p; do
        case "$p" in ""|\#*) continue;; esac
        patch -d "$src" -p1 -s < "$src/debian/patches/$p"
      done < "$src/debian/patches/series"
    fi
  fi
  echo "deps: building wolfSSL $WOLFSSL_VERSION (about two minutes)"
  (cd "$src" && ./autogen.sh >/dev/null 2>&1 &&
    # shellcheck disable=SC2086
    ./configure -q --prefix="$WOLFSSL_PREFIX" $WOLFSSL_FLAGS CFLAGS="-O2 -fPIC -DWOLFSSL_ALWAYS_VERIFY_CB" >/dev/null &&
    make -s -j"$(nproc)" >/dev/null 2>&1 && mkdir -p "$PREFIX_ROOT" && make -s install >/dev/null)
  echo "deps: wolfSSL installed in $WOLFSSL_PREFIX"
fi
mkdir -p "$PREFIX_ROOT"
echo "$WOLFSSL_PREFIX" > "$PREFIX_ROOT/wolfssl.current"
