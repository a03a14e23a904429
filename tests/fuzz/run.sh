#!/usr/bin/env bash
# Builds the libFuzzer harnesses in tests/fuzz/ and runs each for a while.
#
#   tests/fuzz/run.sh [SECONDS] [NAME...]    build, then run NAME (default: all) SECONDS each
#   tests/fuzz/run.sh build                  build only
#   build/fuzz/fuzz_NAME FILE...             replay inputs (a crash reproducer, a corpus file)
#
# Harnesses and everything in src/ except main.c are compiled with clang
# -fsanitize=fuzzer,address,undefined into build/fuzz/. Each run starts from the seeds in
# tests/fuzz/corpus/NAME/ (read only) and keeps what it learns in build/fuzz/corpus/NAME/;
# crashes go to build/fuzz/artifacts/NAME-crash-*. Exit status: 0 when every run finished
# without a finding, 1 otherwise.
#
# Environment: STP_SRC (the sources to build, default src/; point it at a patched copy to
# fuzz a candidate fix; builds then go to build/fuzz-patched/), FUZZ_OUT (the build and
# corpus directory), CC (default clang, else clang-14), FUZZ_JOBS (parallel workers per harness,
# default 1), FUZZ_FLAGS (extra libFuzzer flags), WOLFSSL_PREFIX (default: the prefix
# recorded in /var/cache/starttls-proxy/wolfssl.current).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
FUZZ_DIR=$ROOT/tests/fuzz
SRC=${STP_SRC:-$ROOT/src}
if [ -n "${STP_SRC:-}" ]; then
	OUT=${FUZZ_OUT:-$ROOT/build/fuzz-patched}
else
	OUT=${FUZZ_OUT:-$ROOT/build/fuzz}
fi
ALL=(proto_smtp proto_pop3 proto_imap imap_session ehlo config policy ticket_keys mtasts fetch dns tlsrpt rcpt proxyproto admin probe)

secs=60
build_only=0
if [ $# -gt 0 ]; then
	if [ "$1" = build ]; then
		build_only=1
		shift
	elif [[ $1 =~ ^[0-9]+$ ]]; then
		secs=$1
		shift
	fi
fi
names=("$@")
[ ${#names[@]} -eq 0 ] && names=("${ALL[@]}")

CC=${CC:-}
if [ -z "$CC" ]; then
	if command -v clang >/dev/null; then CC=clang; else CC=clang-14; fi
fi
WOLFSSL_PREFIX=${WOLFSSL_PREFIX:-$(cat /var/cache/starttls-proxy/wolfssl.current 2>/dev/null || true)}
if [ ! -f "$WOLFSSL_PREFIX/lib/libwolfssl.a" ]; then
	echo "wolfSSL missing (WOLFSSL_PREFIX=$WOLFSSL_PREFIX): run 'make deps'" >&2
	exit 1
fi
read -r -a UV_CFLAGS <<<"$(pkg-config --cflags libuv 2>/dev/null || true)"
read -r -a UV_LIBS <<<"$(pkg-config --libs libuv 2>/dev/null || echo -luv)"

CFLAGS=(-std=gnu11 -g -O1 -Wall -Wextra -Wno-unused-parameter -fno-strict-aliasing
	"-fsanitize=address,undefined" -fno-sanitize-recover=undefined -fno-omit-frame-pointer
	"-I$ROOT/include" "-I$WOLFSSL_PREFIX/include" "${UV_CFLAGS[@]}" -D_GNU_SOURCE
	'-DSTP_VERSION="fuzz"')
LIBS=("${UV_LIBS[@]}" "$WOLFSSL_PREFIX/lib/libwolfssl.a" -lm -lpthread -lunbound -lz)

mkdir -p "$OUT/obj" "$OUT/artifacts"

# The library objects: rebuilt when the source or any header is newer.
objs=()
newest_header=
for h in "$ROOT"/include/*.h; do
	[ -z "$newest_header" ] || [ "$h" -nt "$newest_header" ] && newest_header=$h
done
for src in "$SRC"/*.c; do
	base=$(basename "$src" .c)
	[ "$base" = main ] && continue
	obj=$OUT/obj/$base.o
	if [ ! -f "$obj" ] || [ "$src" -nt "$obj" ] || [ "$newest_header" -nt "$obj" ] ||
		[ "$0" -nt "$obj" ]; then
		"$CC" "${CFLAGS[@]}" -fsanitize=fuzzer-no-link -c -o "$obj" "$src"
	fi
	objs+=("$obj")
done

for name in "${ALL[@]}"; do
	bin=$OUT/fuzz_$name
	src=$FUZZ_DIR/fuzz_$name.c
	relink=0
	[ -x "$bin" ] || relink=1
	for dep in "$src" "$FUZZ_DIR"/*.h "$newest_header" "$0" "${objs[@]}"; do
		[ "$dep" -nt "$bin" ] && relink=1
	done
	if [ $relink = 1 ]; then
		# The harness itself (its script reader, transcripts, independent models) is
		# built without coverage: what it branches on is no feedback about the code
		# under test, and tracing its comparisons took most of the time of the session
		# harnesses. Sanitizers stay on.
		"$CC" "${CFLAGS[@]}" -c -o "$OUT/obj/fuzz_$name.o" "$src"
		"$CC" "${CFLAGS[@]}" -fsanitize=fuzzer -o "$bin" "$OUT/obj/fuzz_$name.o" \
			"${objs[@]}" "${LIBS[@]}"
	fi
done
echo "built: $(for n in "${ALL[@]}"; do printf '%s ' "${OUT#"$ROOT"/}/fuzz_$n"; done)"
[ $build_only = 1 ] && exit 0

declare -A max_len=([proto_smtp]=4096 [proto_pop3]=4096 [proto_imap]=4096 [imap_session]=4096 [ehlo]=8192 [config]=4096 [policy]=4096 [ticket_keys]=4096 [mtasts]=8192 [proxyproto]=4200 [admin]=4200 [probe]=8192)
status=0
for name in "${names[@]}"; do
	bin=$OUT/fuzz_$name
	if [ ! -x "$bin" ]; then
		echo "unknown harness: $name (have: ${ALL[*]})" >&2
		status=1
		continue
	fi
	work=$OUT/corpus/$name
	mkdir -p "$work"
	seeds=$FUZZ_DIR/corpus/$name
	log=$OUT/fuzz_$name.log
	touch "$log.start"
	echo "== fuzz_$name: ${secs}s, seeds $(find "$seeds" -type f 2>/dev/null | wc -l), log $log"
	rc=0
	par=()
	if [ "${FUZZ_JOBS:-1}" -gt 1 ]; then
		# libFuzzer's workers write fuzz-N.log into the current directory
		par=(-jobs="$FUZZ_JOBS" -workers="$FUZZ_JOBS")
	fi
	# shellcheck disable=SC2086
	(cd "$OUT" && "$bin" -max_total_time="$secs" -max_len="${max_len[$name]:-4096}" \
		-timeout=10 -rss_limit_mb=2048 -print_final_stats=1 "${par[@]}" \
		-artifact_prefix="$OUT/artifacts/$name-" ${FUZZ_FLAGS:-} "$work" "$seeds") \
		>"$log" 2>&1 || rc=$?
	{ grep -E '^stat::(number_of_executed_units|peak_rss_mb|new_units_added)' "$log" || true; } |
		sed 's/^/   /'
	# with -fork=1 -ignore_crashes=1 a run exits 0 after findings: count the artifacts too
	found=$(find "$OUT/artifacts" -name "$name-*" -newer "$log.start" 2>/dev/null | wc -l)
	if [ $rc -ne 0 ] || [ "$found" -gt 0 ]; then
		echo "   FAILED (exit $rc, $found new artifacts in ${OUT#"$ROOT"/}/artifacts): see $log"
		{ grep -E 'ERROR: |invariant violated|SUMMARY|Test unit written|differ at' "$log" ||
			true; } | head -8 | sed 's/^/   /'
		status=1
	else
		echo "   ok, corpus $(find "$work" -type f | wc -l) files"
	fi
	rm -f "$log.start"
done
exit $status
