#!/bin/sh
# crash_states.test.sh - crash-state explorer (tests/crash/explore.py), ctest smoke run.
#
# First checks the recorder and the model on every call they handle (fsrec_selftest.py), then
# shows that the explorer can fail: a recording under `never` judged with `always`'s
# promise must report lost acknowledged appends, and an `always` state with an acknowledged,
# fsynced append removed (--seed-violation drop-acked) must be reported. Then explores a
# sample of crash states per fsync policy (always, interval, never) and fails on any
# violation that is not a known, routed one (tests/crash/known_violations.json).
#   sh tests/crash_states.test.sh           smoke run (30 distinct states per policy + seeds)
#   sh tests/crash_states.test.sh --full    1,000 distinct crash states per policy (minutes)
# Extra arguments go to explore.py (--strict, --seed S, --keep --out DIR, ...).
# Environment: DS_BINARY (default build/durable-stream), DS_BUILD_DIR (for the recorder
# library tests/libdsfsrec.so), DS_FSREC (the library itself).
# Must not: leave servers or temporary directories behind (explore.py cleans up).
set -u
cd "$(dirname "$0")/.."
BUILD="${DS_BUILD_DIR:-build}"
export DS_BINARY="${DS_BINARY:-$BUILD/durable-stream}"
export DS_FSREC="${DS_FSREC:-$BUILD/tests/libdsfsrec.so}"
export PYTHONDONTWRITEBYTECODE=1
PY=python3
[ -x "$DS_BINARY" ] || { echo "crash_states: binary not found: $DS_BINARY" >&2; exit 1; }
[ -f "$DS_FSREC" ] || { echo "crash_states: recorder not found: $DS_FSREC (cmake --build)" >&2; exit 1; }

if [ "${1:-}" = "--full" ]; then
  shift
  exec $PY tests/crash/explore.py --full "$@"
fi

fail=0
# 0. the recorder and the model on calls the server does not make today (openat, pwritev, ...)
$PY tests/crash/fsrec_selftest.py || fail=1
# 1. seeded violations: each run must exit 1 and name what it found
out=$($PY tests/crash/explore.py --policies never --judge-as always --states 8 --max-report 0 2>&1)
rc=$?
if [ $rc -ne 1 ] || ! printf '%s\n' "$out" | grep -q 'NEW *never *lost-ack'; then
  printf '%s\n' "$out"
  echo "crash_states: FAIL: a never recording judged as always must report lost acknowledged appends (exit $rc)"
  fail=1
else
  echo "crash_states: seeded violation found: never judged as always: $(printf '%s\n' "$out" | grep 'NEW *never *lost-ack' | head -1 | sed 's/^ *//')"
fi
out=$($PY tests/crash/explore.py --policies always --states 4 --seed-violation drop-acked --max-report 2 2>&1)
rc=$?
if [ $rc -ne 1 ] || ! printf '%s\n' "$out" | grep -q 'NEW *always *lost-ack *\[seeded\]'; then
  printf '%s\n' "$out"
  echo "crash_states: FAIL: an always state without an acknowledged append must be reported (exit $rc)"
  fail=1
else
  echo "crash_states: seeded violation found: $(printf '%s\n' "$out" | grep 'NEW *always *lost-ack *\[seeded\]' | sed 's/^ *//')"
fi
# 2. the sample
$PY tests/crash/explore.py --states 30 --max-report 6 "$@" || fail=1
exit $fail
