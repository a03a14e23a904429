#!/usr/bin/env bash
# Every libFuzzer harness of tests/fuzz/, briefly: built with tests/fuzz/run.sh (clang,
# ASan/UBSan, into build/fuzz/ or STP_FUZZ_OUT, incrementally), then per harness one check:
# each seed of tests/fuzz/corpus/NAME/ replayed (the regressions kept there stay fixed),
# then STP_FUZZ_SECONDS (default 3) of fuzzing from those seeds, with a corpus of its own
# under $T. A failure names the harness, the input and the broken invariant; a fuzzing
# finding is kept as build/fuzz/artifacts/test_fuzz-NAME-*. Also: every fuzz_*.c is in
# run.sh's list (else it would never be built). clang is installed by scripts/deps.sh
# test, so its absence is a failure, not a skip.
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

FUZZ_DIR=$REPO_ROOT/tests/fuzz
RUN=$FUZZ_DIR/run.sh
OUT=${STP_FUZZ_OUT:-$REPO_ROOT/build/fuzz}
SECS=${STP_FUZZ_SECONDS:-3}

# The harnesses and their max_len, from run.sh (one list to keep).
names=$(sed -n 's/^ALL=(\(.*\))$/\1/p' "$RUN")
declare -A max_len=()
eval "$(sed -n 's/^declare -A max_len=/max_len=/p' "$RUN")"
if [ -z "$names" ]; then
	fail fuzz_list "no ALL=(...) line in tests/fuzz/run.sh"
	exit 1
fi
missing=""
for src in "$FUZZ_DIR"/fuzz_*.c; do
	n=$(basename "$src" .c)
	n=${n#fuzz_}
	[[ " $names " == *" $n "* ]] || missing="$missing $n"
done
if [ -n "$missing" ]; then
	fail fuzz_list "harnesses not in run.sh's ALL:$missing"
else
	pass fuzz_list
fi

if ! command -v clang >/dev/null && ! command -v clang-14 >/dev/null; then
	fail fuzz_build "clang not installed (scripts/deps.sh test installs it: run 'make deps')"
	exit 1
fi
t0=$(date +%s)
if ! out=$(FUZZ_OUT=$OUT bash "$RUN" build 2>&1); then
	fail fuzz_build "tests/fuzz/run.sh build: $(tail -n 5 <<<"$out")"
	exit 1
fi
pass fuzz_build
note "build: $(($(date +%s) - t0))s into ${OUT#"$REPO_ROOT"/}"

mkdir -p "$OUT/artifacts"
for name in $names; do
	bin=$OUT/fuzz_$name
	seeds=$FUZZ_DIR/corpus/$name
	log=$T/fuzz_$name.log
	if [ ! -x "$bin" ]; then
		fail "fuzz_$name" "not built: $bin"
		continue
	fi
	# 1. the seeds, each replayed whole (a file argument runs that input once)
	files=()
	[ -d "$seeds" ] && mapfile -t files < <(find "$seeds" -type f | sort)
	if [ ${#files[@]} -gt 0 ] && ! (cd "$T" && "$bin" "${files[@]}") >"$log" 2>&1; then
		# the last input it began is the one that failed
		bad=$(sed -n 's/^Running: //p' "$log" | tail -n 1)
		why=$(grep -a -E -m 3 'invariant violated|ERROR: |SUMMARY|^  ' "$log" | tr '\n' ' ')
		fail "fuzz_$name" "seed ${bad#"$REPO_ROOT"/} fails: $why"
		continue
	fi
	# 2. a few seconds of fuzzing
	mkdir -p "$T/corpus/$name" "$T/artifacts"
	rc=0
	(cd "$T" && "$bin" -max_total_time="$SECS" -max_len="${max_len[$name]:-4096}" -timeout=10 \
		-rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$T/artifacts/$name-" \
		"$T/corpus/$name" ${files[@]:+"$seeds"}) >"$log" 2>&1 || rc=$?
	art=$(find "$T/artifacts" -name "$name-*" -type f | head -n 1)
	if [ $rc -ne 0 ] || [ -n "$art" ]; then
		kept=""
		if [ -n "$art" ]; then
			kept=$OUT/artifacts/test_fuzz-$(basename "$art")
			cp "$art" "$kept"
		fi
		why=$(grep -a -E -m 3 'invariant violated|ERROR: |SUMMARY|^  ' "$log" | tr '\n' ' ')
		fail "fuzz_$name" "finding (exit $rc), artifact ${kept:-none}: $why"
		continue
	fi
	execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
	pass "fuzz_$name"
	note "fuzz_$name: ${#files[@]} seeds replayed, ${execs:-?} runs in ${SECS}s"
done
