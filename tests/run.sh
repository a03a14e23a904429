#!/usr/bin/env bash
# Test runner: every unit test binary (cmocka) and every tests/integration/test_*.sh.
#
#   STP_BIN=/abs/starttls-proxy STP_UNIT_DIR=/abs/build/tests STP_TEST_CERTS=/abs/certs \
#     bash tests/run.sh
#
# Optional: STP_TESTS='glob [glob...]' runs only the tests whose name (test_foo, without
# .sh) matches one of the globs; STP_TEST_TIMEOUT (seconds, default 300) bounds each
# integration script (a script may ask for more with a header line "# stp-timeout: N");
# STP_VERBOSE=1 shows the full output of unit binaries. STP_SKIP='glob...' leaves out the
# tests it matches (named in the output, not counted): the sanitizer pass of `make test`
# leaves out what does not depend on the build (STP_SKIP_REASON says why).
# The last line is "N passed, N failed, N skipped"; the exit status is non-zero on any
# failure. An integration script counts as one failure when it exits non-zero without a
# FAIL line, times out, or reports no check at all; one that only SKIPs gets a note.
set -u
set -o pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export STP_BIN=${STP_BIN:-$ROOT/starttls-proxy}
export STP_UNIT_DIR=${STP_UNIT_DIR:-$ROOT/build/tests}
export STP_TEST_CERTS=${STP_TEST_CERTS:-$ROOT/build/test-certs}
STP_TESTS=${STP_TESTS:-}
STP_SKIP=${STP_SKIP:-}
TIMEOUT=${STP_TEST_TIMEOUT:-300}

passed=0
failed=0
skipped=0
failed_names=()
not_run=()

if [ -t 1 ]; then
	RED=$'\e[31m' GREEN=$'\e[32m' YELLOW=$'\e[33m' BOLD=$'\e[1m' RESET=$'\e[0m'
else
	RED='' GREEN='' YELLOW='' BOLD='' RESET=''
fi

selected() {
	local name=$1 g
	for g in $STP_SKIP; do
		# shellcheck disable=SC2053 # glob match on purpose
		if [[ $name == $g || $name == ${g%.sh} ]]; then
			not_run+=("$name")
			return 1
		fi
	done
	[ -z "$STP_TESTS" ] && return 0
	for g in $STP_TESTS; do
		# shellcheck disable=SC2053 # glob match on purpose
		[[ $name == $g || $name == ${g%.sh} ]] && return 0
	done
	return 1
}

# -- unit tests (cmocka) ------------------------------------------------------------------
run_unit() {
	local bin=$1 name out rc p f s t0 secs
	name=$(basename "$bin")
	t0=$(date +%s)
	out=$(cd "$ROOT" && timeout -k 5 "$TIMEOUT" "$bin" 2>&1)
	rc=$?
	secs=$(($(date +%s) - t0))
	p=$(printf '%s\n' "$out" | sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' | tail -n 1)
	f=$(printf '%s\n' "$out" | sed -n 's/^\[  FAILED  \] \([0-9]*\) test.*/\1/p' | tail -n 1)
	s=$(printf '%s\n' "$out" | sed -n 's/^\[  SKIPPED \] \([0-9]*\) test.*/\1/p' | tail -n 1)
	p=${p:-0} f=${f:-0} s=${s:-0}
	if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
		# Crashed, timed out, or failed without a cmocka summary: one failure.
		f=1
	fi
	passed=$((passed + p))
	failed=$((failed + f))
	skipped=$((skipped + s))
	if [ "$f" -gt 0 ]; then
		failed_names+=("$name")
		printf '%s%-28s%s %d passed, %s%d failed%s, %d skipped (%ds)\n' \
			"$BOLD" "unit/$name" "$RESET" "$p" "$RED" "$f" "$RESET" "$s" "$secs"
		if [ "$rc" -eq 124 ]; then
			echo "  timed out after ${TIMEOUT}s"
		elif [ "$rc" -gt 128 ]; then
			echo "  killed by signal $((rc - 128))"
		fi
		if [ -z "$(printf '%s\n' "$out" | sed -n '/^\[  FAILED  \] [0-9]* test/p')" ]; then
			# No cmocka summary (crash, abort, timeout): the raw tail.
			printf '%s\n' "$out" | tail -n 40 | sed 's/^/  | /'
		else
			# The failing tests and their messages, not the whole chatter.
			printf '%s\n' "$out" | grep -vE '^\[( RUN      |       OK |==========)\]' |
				tail -n 40 | sed 's/^/  | /'
		fi
	else
		printf '%s%-28s%s %s%d passed%s, %d skipped (%ds)\n' \
			"$BOLD" "unit/$name" "$RESET" "$GREEN" "$p" "$RESET" "$s" "$secs"
		[ "${STP_VERBOSE:-0}" = 1 ] && printf '%s\n' "$out" | sed 's/^/  | /'
	fi
	return 0
}

# kill_leftovers TAG: processes still carrying STP_TEST_TAG=TAG in their environment were
# started by the script that just ended (which should have cleaned them up): end them.
kill_leftovers() {
	local f pid n=0
	# shellcheck disable=SC2013 # /proc paths have no spaces
	for f in $(grep -lzx "STP_TEST_TAG=$1" /proc/[0-9]*/environ 2>/dev/null); do
		pid=${f#/proc/}
		pid=${pid%/environ}
		kill -KILL "$pid" 2>/dev/null && n=$((n + 1))
	done
	[ "$n" -eq 0 ] || echo "  note: killed $n process(es) the test left behind"
}

# -- integration tests ----------------------------------------------------------------------
run_integration() {
	local script=$1 name line p=0 f=0 s=0 rc t0 secs limit=$TIMEOUT own
	name=$(basename "$script" .sh)
	# A script that needs longer says so in its header: "# stp-timeout: SECONDS".
	own=$(head -n 30 "$script" | sed -n 's/^# stp-timeout: \([0-9][0-9]*\).*$/\1/p' | head -n 1)
	[ -n "$own" ] && [ "$own" -gt "$limit" ] && limit=$own
	local tag="stp-run-$$-$name-$RANDOM$RANDOM"
	printf '%s%s%s\n' "$BOLD" "integration/$name" "$RESET"
	t0=$(date +%s)
	rc=1
	# Stream the script's output as it runs; count its PASS/FAIL/SKIP lines.
	while IFS= read -r line; do
		case $line in
		__rc=*) rc=${line#__rc=} ;;
		PASS\ *) p=$((p + 1)); printf '  %sPASS%s %s\n' "$GREEN" "$RESET" "${line#PASS }" ;;
		FAIL\ *) f=$((f + 1)); printf '  %sFAIL%s %s\n' "$RED" "$RESET" "${line#FAIL }" ;;
		SKIP\ *) s=$((s + 1)); printf '  %sSKIP%s %s\n' "$YELLOW" "$RESET" "${line#SKIP }" ;;
		*) printf '  %s\n' "$line" ;;
		esac
	done < <(cd "$ROOT" && STP_TEST_TAG=$tag timeout -k 30 "$limit" bash "$script" </dev/null 2>&1
		echo "__rc=$?")
	kill_leftovers "$tag"
	secs=$(($(date +%s) - t0))
	if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
		if [ "$f" -eq 0 ]; then
			printf '  %sFAIL%s %s: timed out after %ss\n' "$RED" "$RESET" "$name" "$limit"
			f=1
		else
			echo "  (the script timed out after ${limit}s)"
		fi
	elif [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
		printf '  %sFAIL%s %s: exited with status %s without reporting a failure\n' \
			"$RED" "$RESET" "$name" "$rc"
		f=1
	elif [ $((p + f + s)) -eq 0 ]; then
		# Status 0 and not one PASS/FAIL/SKIP line: the script checked nothing (it ended
		# early, or its checks print something else). That is no success.
		printf '  %sFAIL%s %s: reported no checks (no PASS, FAIL or SKIP line)\n' \
			"$RED" "$RESET" "$name"
		f=1
	elif [ "$p" -eq 0 ] && [ "$f" -eq 0 ]; then
		# Only SKIPs: not a failure (a missing optional tool), but nothing was proven.
		echo "  note: every check of $name was skipped: it proved nothing here"
	fi
	passed=$((passed + p))
	failed=$((failed + f))
	skipped=$((skipped + s))
	[ "$f" -gt 0 ] && failed_names+=("$name")
	printf '  -> %d passed, %d failed, %d skipped (%ds)\n' "$p" "$f" "$s" "$secs"
}

t_start=$(date +%s)
ran=0

if [ -d "$STP_UNIT_DIR" ]; then
	for bin in "$STP_UNIT_DIR"/test_*; do
		case ${bin##*/} in *.*) continue ;; esac
		if [ ! -f "$bin" ] || [ ! -x "$bin" ]; then continue; fi
		selected "$(basename "$bin")" || continue
		run_unit "$bin"
		ran=$((ran + 1))
	done
else
	echo "note: no unit test directory ($STP_UNIT_DIR)"
fi

for script in "$ROOT"/tests/integration/test_*.sh; do
	[ -f "$script" ] || continue
	selected "$(basename "$script" .sh)" || continue
	run_integration "$script"
	ran=$((ran + 1))
done

if [ "$ran" -eq 0 ]; then
	echo "no tests matched${STP_TESTS:+ STP_TESTS=\"$STP_TESTS\"}"
	failed=$((failed + 1))
fi

echo
if [ "${#not_run[@]}" -gt 0 ]; then
	echo "not run in this pass (STP_SKIP${STP_SKIP_REASON:+: $STP_SKIP_REASON}): ${not_run[*]}"
fi
if [ "${#failed_names[@]}" -gt 0 ]; then
	echo "failed: ${failed_names[*]}"
fi
echo "total time: $(($(date +%s) - t_start))s"
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
