#!/usr/bin/env bash
# subs_scale.sh - a `"pattern":"**"` subscription over many streams (200,000 by default):
# how long its PUT takes, what an append on a new matching stream costs, whether /health
# stays responsive meanwhile, how long a restart takes with it, and RSS.
#
# Usage: bench/subs_scale.sh [-n STREAMS] [-k APPENDS]
# Provides: builds the server unless DS_BINARY names one, seeds the streams once into
# DS_SCALE_DIR (default .cache/subs-scale/<STREAMS>; about 1 minute and 2.4 GB for 200,000,
# reused by later runs, so a before/after comparison measures the same data) and runs
# bench/subs_scale.py, which prints a table and a `RESULT tool=subs_scale ...` line.
# Environment: DS_BINARY, DS_SCALE_DIR.
# Must not: leave a server or temp dirs behind (the seed directory is kept on purpose).
set -eu
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
n=200000
k=5
while getopts "n:k:" o; do
  case "$o" in
    n) n="$OPTARG" ;;
    k) k="$OPTARG" ;;
    *) echo "usage: $0 [-n STREAMS] [-k APPENDS]" >&2; exit 2 ;;
  esac
done
bin="${DS_BINARY:-}"
if [ -z "$bin" ]; then
  cmake -S "$here" -B "$here/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build "$here/build" -j2 --target durable-stream >/dev/null
  bin="$here/build/durable-stream"
fi
seed="${DS_SCALE_DIR:-$here/.cache/subs-scale/$n}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
echo "subs_scale: binary $bin ($(cd "$here" && git rev-parse --short HEAD 2>/dev/null || echo '?')), $n streams, $k appends"
/usr/bin/python3 "$here/bench/subs_scale.py" --binary "$bin" --seed-dir "$seed" --work "$work" \
  --streams "$n" --appends "$k"
