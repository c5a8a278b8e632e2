#!/bin/sh
# bench/soak.sh - soak run: mixed load against a real server for a while, RSS and descriptors
# sampled (bench/soak.py does the load and the checks).
#
# Usage: bench/soak.sh [-d seconds] [-r rss_ref_seconds] [-v] [-o outdir]
#   -d  load duration (default 600 = 10 minutes); -r sample compared with the end (default 120)
#   -v  run the server under valgrind (use a short -d, e.g. 60): fails on any valgrind error
#       or leaked block; RSS is not judged then (valgrind's own heap dominates it)
#   -o  keep logs and samples.csv in this directory (default: a temp dir, removed)
# Load: 4 appenders (10 events/s each), 4 live SSE subscribers joining and leaving, catch-ups
# from recent offsets, agent requests taking turns over 300 echo paths and 300 openai paths (the
# fake upstream spec/fixtures/upstream/openai_fake.py). Server config: tail_cache_bytes 8 KiB
# and tail_cache_total_bytes 512 KiB so the caches (44 busy streams, 600 agent paths touched
# over time) reach their bound within the first two minutes, and
# agents.max_cached_paths 8: the agent holds 8 of the 600 conversations in memory and rebuilds
# the others from their streams (a held conversation grows with every turn by design).
# Memory that grows with stored data by design remains: 8 bytes per event (the offset index of
# an open stream) - about 150 KB over 10 minutes at these rates.
# Exit status: 0 when soak.py reports PASS (and valgrind is clean with -v).
set -u
cd "$(dirname "$0")/.."
DUR=600
REF=120
VG=0
OUT=""
while getopts d:r:vo: o; do
  case $o in
    d) DUR=$OPTARG ;;
    r) REF=$OPTARG ;;
    v) VG=1 ;;
    o) OUT=$OPTARG ;;
    *) echo "usage: $0 [-d secs] [-r ref_secs] [-v] [-o dir]" >&2; exit 2 ;;
  esac
done
BIN=${DS_BINARY:-build/durable-stream}
[ -x "$BIN" ] || { echo "no server binary at $BIN (build first)" >&2; exit 2; }
T=$(mktemp -d /tmp/ds-soak-XXXXXX)
[ -n "$OUT" ] && mkdir -p "$OUT"
FPID=""
SPID=""
cleanup() {
  [ -n "$SPID" ] && kill -9 "$SPID" 2>/dev/null
  [ -n "$FPID" ] && kill "$FPID" 2>/dev/null
  if [ -n "$OUT" ]; then cp "$T"/*.txt "$T"/*.csv "$OUT"/ 2>/dev/null; fi
  rm -rf "$T"
}
trap cleanup EXIT

/usr/bin/python3 spec/fixtures/upstream/openai_fake.py --log "$T/fake.log" --pace-ms 2 --tokens 6 >"$T/fake.txt" 2>&1 &
FPID=$!
for i in $(seq 1 100); do [ -s "$T/fake.txt" ] && break; sleep 0.1; done
FPORT=$(head -1 "$T/fake.txt" | tr -dc 0-9)
[ -n "$FPORT" ] || { echo "the fake upstream did not start" >&2; cat "$T/fake.txt"; exit 1; }

mkdir -p "$T/plugins"
cp plugins/echo.lua "$T/plugins/"
cat >"$T/config.lua" <<CFG
return {
  port = 0, data_dir = "$T/data", fsync = "interval", log_level = "warn",
  limits = { tail_cache_bytes = 8192, tail_cache_total_bytes = 524288 },
  agents = {
    default_model = "echo", plugin_dir = "$T/plugins", max_cached_paths = 8,
    models = { openai = { base_url = "http://127.0.0.1:$FPORT/v1", api_key_env = "SOAK_OPENAI_KEY" } },
  },
}
CFG
export SOAK_OPENAI_KEY=sk-soak-test
export OPENAI_BASE_URL="http://127.0.0.1:$FPORT/v1"
if [ "$VG" = 1 ]; then
  valgrind --leak-check=full --show-leak-kinds=definite,indirect,possible \
    --errors-for-leak-kinds=definite,indirect,possible --error-exitcode=9 --log-file="$T/valgrind.txt" \
    "$BIN" --config "$T/config.lua" >"$T/server-out.txt" 2>"$T/server-err.txt" &
else
  "$BIN" --config "$T/config.lua" >"$T/server-out.txt" 2>"$T/server-err.txt" &
fi
SPID=$!
for i in $(seq 1 300); do grep -q listening "$T/server-out.txt" 2>/dev/null && break; sleep 0.1; done
PORT=$(sed -n 's/.*:\([0-9]*\)$/\1/p' "$T/server-out.txt")
[ -n "$PORT" ] || { echo "server did not start" >&2; cat "$T/server-err.txt"; exit 1; }
echo "soak: server pid $SPID port $PORT, fake upstream port $FPORT, ${DUR}s$( [ "$VG" = 1 ] && echo ' under valgrind')"

TOL=5
EXTRA="${SOAK_ARGS:-}"
# under valgrind the rates are lower and RSS is valgrind's own; judge only errors and descriptors
if [ "$VG" = 1 ]; then TOL=100000; EXTRA="--append-rate 5 --subscribers 2 ${SOAK_ARGS:-}"; fi
/usr/bin/python3 bench/soak.py --port "$PORT" --pid "$SPID" --duration "$DUR" --rss-ref "$REF" \
  --rss-tolerance "$TOL" $( [ "${SOAK_NO_OPENAI:-0}" = 1 ] || echo --openai) --upstream-port "$FPORT" --csv "$T/samples.csv" $EXTRA | tee "$T/soak.txt"
rc=$(grep -c "^soak: PASS" "$T/soak.txt")
kill -TERM "$SPID"
wait "$SPID"
src=$?
SPID=""
if [ "$VG" = 1 ]; then
  if [ "$src" != 0 ]; then
    echo "valgrind: server exited with $src"
    tail -60 "$T/valgrind.txt"
    exit 1
  fi
  echo "valgrind: $(grep 'ERROR SUMMARY' "$T/valgrind.txt" | sed 's/==[0-9]*== //')"
  grep -E "definitely lost|indirectly lost|possibly lost|All heap blocks" "$T/valgrind.txt" | sed 's/==[0-9]*== //'
fi
[ "$src" = 0 ] || { echo "server exited with $src"; tail -20 "$T/server-err.txt"; exit 1; }
[ "$rc" = 1 ] || exit 1
echo "soak.sh: PASS"
