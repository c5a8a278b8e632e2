#!/usr/bin/env bash
# bench/profile.sh - profile our server under one load generator run.
#
#   bench/profile.sh [perf|callgrind|none] TOOL [TOOL ARGS...]
#   e.g. bench/profile.sh perf dsbench-catchup --kind agents --events 100000 --reads 10
#
# Starts build/durable-stream (or $DS_BINARY) on a free port with a fresh data dir, from
# the repository root (so ./config.lua applies; extra server flags in $DS_SERVER_ARGS),
# then runs build/bench-tools/TOOL --url <server> --server-pid <pid> ARGS while
#   perf       `perf record -g` samples the server (report: $OUT.perf.txt, top printed)
#   callgrind  the server itself runs under `valgrind --tool=callgrind` (instruction
#              counts, stable on a noisy machine; expect it ~50x slower, so use short
#              durations or fixed amounts of work); annotate in $OUT.callgrind.txt
#   none       nothing extra (a quick A/B run of one scenario)
# The tool's output is printed. $OUT defaults to /tmp/dsprof.<pid>. Only this script's own
# children are stopped at the end.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODE=${1:?usage: profile.sh perf|callgrind|none TOOL [ARGS...]}
TOOL=${2:?usage: profile.sh perf|callgrind|none TOOL [ARGS...]}
shift 2
BIN=${DS_BINARY:-$ROOT/build/durable-stream}
OUT=${OUT:-/tmp/dsprof.$$}
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
DATA=$(mktemp -d /tmp/dsprof-data.XXXXXX)
LOG=$OUT.server.log
cd "$ROOT" || exit 1
# shellcheck disable=SC2086 # DS_SERVER_ARGS is a list of words on purpose
case "$MODE" in
  callgrind)
    valgrind --tool=callgrind --callgrind-out-file="$OUT.callgrind" \
      "$BIN" --port 0 --data-dir "$DATA" ${DS_SERVER_ARGS:-} >"$LOG" 2>&1 &
    ;;
  *) "$BIN" --port 0 --data-dir "$DATA" ${DS_SERVER_ARGS:-} >"$LOG" 2>&1 & ;;
esac
SPID=$!
URL=""
for _ in $(seq 1 600); do
  URL=$(grep -o -m1 'listening on http://[^ ]*' "$LOG" 2>/dev/null | sed 's/^listening on //')
  [ -n "$URL" ] && break
  kill -0 "$SPID" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$URL" ]; then
  echo "server did not start:" >&2
  cat "$LOG" >&2
  kill "$SPID" 2>/dev/null
  exit 1
fi
PPID_REC=""
if [ "$MODE" = perf ]; then
  perf record -g -o "$OUT.perf" -p "$SPID" >/dev/null 2>&1 &
  PPID_REC=$!
  sleep 0.5
fi
PIDARG=(--server-pid "$SPID")
case "$TOOL" in dsbench-catchup) PIDARG=() ;; dsbench-idle) PIDARG=(--pid "$SPID") ;; esac # catchup takes none, idle calls it --pid
"$ROOT/build/bench-tools/$TOOL" --url "$URL" "${PIDARG[@]}" "$@"
RC=$?
if [ -n "$PPID_REC" ]; then
  kill -INT "$PPID_REC" 2>/dev/null
  wait "$PPID_REC" 2>/dev/null
fi
grep -E '^VmRSS|^VmHWM' "/proc/$SPID/status" 2>/dev/null
kill -TERM "$SPID" 2>/dev/null
wait "$SPID" 2>/dev/null
rm -rf "$DATA"
case "$MODE" in
  perf)
    perf report -i "$OUT.perf" --no-children --stdio --percent-limit 0.7 2>/dev/null |
      grep -v '^$' >"$OUT.perf.txt"
    perf report -i "$OUT.perf" --no-children --stdio -g none --percent-limit 0.7 2>/dev/null |
      grep -E '^ +[0-9]' | head -40
    echo "perf: $OUT.perf (report with call graphs: $OUT.perf.txt)"
    ;;
  callgrind)
    callgrind_annotate --inclusive=no "$OUT.callgrind" 2>/dev/null | head -60 >"$OUT.callgrind.txt"
    cat "$OUT.callgrind.txt"
    echo "callgrind: $OUT.callgrind"
    ;;
esac
exit $RC
