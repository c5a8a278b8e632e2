#!/bin/sh
# tests/fuzz/run.sh - the libFuzzer campaign: builds every tests/fuzz/fuzz_*.c target with
# clang (ASan + UBSan + libFuzzer) into a separate build dir, then runs each target over a
# scratch copy of its seed corpus for a time or execution budget and reports, per target,
# executions, corpus size and whether it crashed, leaked or tripped a sanitizer.
#
# Usage: tests/fuzz/run.sh [-t seconds] [-n max_executions] [-b build_dir] [-j parallel]
#                          [target ...]
#   -t  seconds per target (default 600); -n stop a target earlier at this many runs
#   -b  build dir (default build-fuzz); -j targets run at once (default 1)
# Exit status: 0 when every target finished clean, 1 otherwise. Crash inputs are kept in
# <build_dir>/fuzz-out/<target>/ (artifacts); add a fixed one to tests/fuzz/corpus/<target>/
# as a regression seed. The grown corpus is not written back to the repository.
# Must not: write into the repository's corpus or need root.
set -u
cd "$(dirname "$0")/../.."
SECS=600
MAXRUNS=0
BDIR=build-fuzz
PAR=1
while getopts t:n:b:j: o; do
  case $o in
    t) SECS=$OPTARG ;;
    n) MAXRUNS=$OPTARG ;;
    b) BDIR=$OPTARG ;;
    j) PAR=$OPTARG ;;
    *) echo "usage: $0 [-t secs] [-n runs] [-b dir] [-j par] [target...]" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))

if ! command -v clang >/dev/null 2>&1; then echo "clang not found" >&2; exit 2; fi
CC=clang cmake -S . -B "$BDIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDS_FUZZ=ON -DDS_SANITIZE=ON \
  >"$BDIR.cmake.log" 2>&1 || { echo "cmake failed (see $BDIR.cmake.log)" >&2; exit 2; }
rm -f "$BDIR.cmake.log"
cmake --build "$BDIR" -j2 >"$BDIR/build.log" 2>&1 || { tail -30 "$BDIR/build.log" >&2; exit 2; }

if [ $# -eq 0 ]; then
  set -- $(ls tests/fuzz/fuzz_*.c | sed 's|.*/||; s|\.c$||')
fi
OUT="$BDIR/fuzz-out"
mkdir -p "$OUT"
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:symbolize=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"

run_one() {
  t=$1
  bin="$BDIR/fuzz/$t"
  d="$OUT/$t"
  rm -rf "$d"
  mkdir -p "$d/corpus" "$d/artifacts"
  [ -d "tests/fuzz/corpus/$t" ] && cp -r "tests/fuzz/corpus/$t/." "$d/corpus/"
  dict=""
  [ -f "tests/fuzz/$t.dict" ] && dict="-dict=tests/fuzz/$t.dict"
  case $t in fuzz_json|fuzz_roundtrip|fuzz_yaml_load) [ -f tests/fuzz/codec.dict ] && dict="-dict=tests/fuzz/codec.dict" ;; esac
  runs=""
  [ "$MAXRUNS" -gt 0 ] && runs="-runs=$MAXRUNS"
  start=$(date +%s)
  "$bin" "$d/corpus" $dict $runs -max_total_time="$SECS" -print_final_stats=1 \
    -artifact_prefix="$d/artifacts/" -timeout=25 -rss_limit_mb=2048 >"$d/log.txt" 2>&1
  rc=$?
  el=$(( $(date +%s) - start ))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$d/log.txt" | tail -1)
  ncorp=$(ls "$d/corpus" | wc -l)
  crashes=$(ls "$d/artifacts" | wc -l)
  leaks=$(grep -c "ERROR: LeakSanitizer" "$d/log.txt")
  sans=$(grep -c -E "ERROR: AddressSanitizer|runtime error:" "$d/log.txt")
  echo "$t: rc=$rc seconds=$el executions=${execs:-?} corpus=$ncorp crashes=$crashes leaks=$leaks sanitizer_reports=$sans" | tee "$d/summary.txt"
}

fail=0
i=0
for t in "$@"; do
  [ -x "$BDIR/fuzz/$t" ] || { echo "$t: not built" >&2; fail=1; continue; }
  run_one "$t" &
  i=$((i + 1))
  if [ "$i" -ge "$PAR" ]; then wait; i=0; fi
done
wait
echo "---- summary ----"
for t in "$@"; do
  s="$OUT/$t/summary.txt"
  [ -f "$s" ] || continue
  cat "$s"
  grep -q "rc=0 .*crashes=0 leaks=0 sanitizer_reports=0" "$s" || fail=1
done
exit $fail
