#!/usr/bin/env bash
# smoke.sh - checks that the dsbench-* tools work end to end, in about 30 s:
# each tool runs briefly against the tiny Python /agents server (fake_agents_server.py)
# and against the Node reference server (protocol kind), and its RESULT line is checked
# for completeness (no errors, every event delivered once, every read counted right).
#   bench/test/smoke.sh            (needs: make -C bench, bench/ref/install.sh done)
# It tests the load generators only; it says nothing about any server's speed.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
T=${DSBENCH_TOOLS:-$ROOT/build/bench-tools}   # e.g. a sanitizer build of the tools
make -s -C "$ROOT/bench" || exit 1
"$ROOT/bench/ref/install.sh" >/dev/null || exit 1
WORK=$(mktemp -d /tmp/dsbench-smoke.XXXXXX)
FAKE_PID="" REF_PID=""
cleanup() {
  for p in $FAKE_PID $REF_PID; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
  rm -rf "$WORK"
}
trap cleanup EXIT

wait_url() {
  local i u
  for i in $(seq 1 100); do
    u=$(grep -o -m1 'listening on http://[^ ]*' "$1" 2>/dev/null | sed 's/^listening on //')
    [ -n "$u" ] && { echo "$u"; return 0; }
    sleep 0.1
  done
  return 1
}
/usr/bin/python3 "$ROOT/bench/test/fake_agents_server.py" --port 0 >"$WORK/fake.log" 2>&1 &
FAKE_PID=$!
node "$ROOT/bench/ref/ref-server.mjs" --port 0 >"$WORK/ref.log" 2>&1 &
REF_PID=$!
FAKE=$(wait_url "$WORK/fake.log") || { echo "fake server did not start"; exit 1; }
REF=$(wait_url "$WORK/ref.log") || { echo "reference server did not start"; exit 1; }

FAILS=0
# check <name> <expression over RESULT fields, in awk> -- command...
check() {
  local name=$1 expr=$2
  shift 3
  local out rc
  out=$("$@" 2>&1)
  rc=$?
  local res
  res=$(printf '%s\n' "$out" | sed -n 's/^RESULT //p')
  # the tool must exit 0 and, in a sanitizer build, report nothing
  if [ $rc -eq 0 ] && ! printf '%s\n' "$out" | grep -qE 'Sanitizer|runtime error:' &&
    [ -n "$res" ] && printf '%s\n' "$res" | tr ' ' '\n' |
    awk -F= '{ v[$1] = $2 } END { exit !('"$expr"') }'; then
    echo "ok   $name"
  else
    echo "FAIL $name"
    printf '%s\n' "$out" | sed 's/^/     /'
    FAILS=$((FAILS + 1))
  fi
}

for kind_url in "agents $FAKE" "protocol $REF"; do
  set -- $kind_url
  k=$1 u=$2
  check "append $k 1 path" 'v["ok"] > 0 && v["errors"] == 0 && v["non2xx"] == 0' -- \
    "$T/dsbench-append" --url "$u" --kind "$k" -c 4 -d 1 --warmup 0.2
  check "append $k 20 paths pipelined" 'v["ok"] > 0 && v["errors"] == 0 && v["non2xx"] == 0' -- \
    "$T/dsbench-append" --url "$u" --kind "$k" -c 4 --pipeline 4 --paths 20 -d 1 --warmup 0.2
  check "fanout $k 50 subscribers" 'v["expected"] > 0 && v["delivered"] == v["expected"] && v["dups"] == 0 && v["missed"] == 0' -- \
    "$T/dsbench-fanout" --url "$u" --kind "$k" -s 50 -r 50 -d 1 --warmup 0.2
  check "catchup $k 2000 events" 'v["full_ok"] == 1 && v["tail_ok"] == 1' -- \
    "$T/dsbench-catchup" --url "$u" --kind "$k" --events 2000 --reads 2 --tail-reads 5
  check "catchup $k again (already seeded)" 'v["full_ok"] == 1' -- \
    "$T/dsbench-catchup" --url "$u" --kind "$k" --events 2000 --reads 1 --tail-reads 0
done
check "idle agents 200 connections" 'v["held"] == 200' -- \
  "$T/dsbench-idle" --url "$FAKE" --pid "$FAKE_PID" --kind agents -c 200 --settle 0.3
check "idle protocol 200 connections" 'v["held"] == 200' -- \
  "$T/dsbench-idle" --url "$REF" --pid "$REF_PID" --kind protocol -c 200 --settle 0.3
# broken delivery must show up in the figures: a server that drops every 10th live event
# and one that sends every event twice
FAULTY=""
for fault in FAKE_DROP_EVERY=10 FAKE_DUPLICATE=1; do
  env "$fault" /usr/bin/python3 "$ROOT/bench/test/fake_agents_server.py" --port 0 >"$WORK/faulty.log" 2>&1 &
  FAULTY=$!
  FU=$(wait_url "$WORK/faulty.log") || { echo "faulty server did not start"; exit 1; }
  if [ "$fault" = FAKE_DROP_EVERY=10 ]; then
    check "fanout notices missed events" 'v["missed"] > 0 && v["delivered"] < v["expected"] && v["dups"] == 0' -- \
      "$T/dsbench-fanout" --url "$FU" --kind agents -s 5 -r 50 -d 1 --warmup 0.2 --drain 1
  else
    check "fanout notices duplicated events" 'v["dups"] > 0 && v["missed"] == 0' -- \
      "$T/dsbench-fanout" --url "$FU" --kind agents -s 5 -r 50 -d 1 --warmup 0.2
  fi
  kill "$FAULTY"; wait "$FAULTY" 2>/dev/null; rm -f "$WORK/faulty.log"
done
# a stream that already holds more events than asked for must be refused, not measured
if "$T/dsbench-catchup" --url "$FAKE" --kind agents --events 1000 --path bench/catchup-2000 \
  --reads 1 --tail-reads 1 >"$WORK/over.out" 2>&1; then
  echo "FAIL catchup refuses an over-full stream"; FAILS=$((FAILS + 1))
else
  echo "ok   catchup refuses an over-full stream"
fi
[ $FAILS -eq 0 ] && echo "smoke: all passed" || echo "smoke: $FAILS failed"
exit $((FAILS > 0))
