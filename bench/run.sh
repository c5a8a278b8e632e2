#!/usr/bin/env bash
# bench/run.sh - one command for the side-by-side benchmark of durable-stream ("ours")
# against the Node reference Durable Streams server (@durable-streams/server 0.3.7).
#
#   bench/run.sh [quick] [append] [fanout] [catchup] [idle]
#
# With no scenario names every scenario runs (about 10-15 minutes on 2 cores); `quick`
# shrinks durations and sizes for a 1-2 minute smoke run. It builds our server (cmake, in
# build/, unless DS_BINARY names a binary), builds the load generators (bench/Makefile),
# installs the reference server (bench/ref/install.sh, skipped when already installed),
# starts both on free ports, runs the scenarios, prints a table with ours/reference ratios
# and writes it to bench/results/latest.md (raw tool output goes into the same file).
#
# Environment:
#   DS_BINARY        our server binary (default: build/durable-stream, built here)
#   DS_SERVER_ARGS   extra arguments for our server (default: none; it always gets
#                    --port 0 --data-dir <tmp>; storage comes from ./config.lua: yaml)
#   DS_BENCH_SERVERS which servers to run: "ours ref" (default), "ours" or "ref"
#   DS_BENCH_OUT     result file (default: bench/results/latest.md)
#
# It never reports a number it did not measure: a scenario that failed or was skipped shows
# "-" and a note saying why.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=$ROOT/bench
TOOLS=$ROOT/build/bench-tools
OUT=${DS_BENCH_OUT:-$BENCH/results/latest.md}
SERVERS=${DS_BENCH_SERVERS:-ours ref}

MODE=full
SCEN=()
for a in "$@"; do
  case "$a" in
    quick) MODE=quick ;;
    append | fanout | catchup | idle) SCEN+=("$a") ;;
    -h | --help)
      sed -n '2,24p' "$0"
      exit 0
      ;;
    *)
      echo "run.sh: unknown argument '$a' (quick, append, fanout, catchup, idle)" >&2
      exit 2
      ;;
  esac
done
[ ${#SCEN[@]} -eq 0 ] && SCEN=(append fanout catchup idle)
want() { local s; for s in "${SCEN[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }
use_server() { case " $SERVERS " in *" $1 "*) return 0 ;; esac; return 1; }

# ---- scenario sizes ------------------------------------------------------------------
if [ "$MODE" = quick ]; then
  APPEND_CASES="16:1 64:1 64:1000"; APPEND_D=2; APPEND_W=0.5
  FANOUT_CASES="1:200 100:200 1000:200"; FANOUT_BIG=""; FANOUT_D=2; FANOUT_W=0.5
  CATCHUP_N=10000; TAIL_BIG=100000; TAIL_SMALL=100; CATCHUP_READS=1; TAIL_READS=20
  IDLE_CASES="1000"; IDLE_SETTLE=1
else
  APPEND_CASES="16:1 64:1 16:1000 64:1000"; APPEND_D=8; APPEND_W=2
  FANOUT_CASES="1:200 100:200 1000:200"; FANOUT_BIG="10000:20"; FANOUT_D=10; FANOUT_W=1
  CATCHUP_N=100000; TAIL_BIG=1000000; TAIL_SMALL=100; CATCHUP_READS=7; TAIL_READS=50
  IDLE_CASES="1000 10000"; IDLE_SETTLE=3
fi

# ---- limits --------------------------------------------------------------------------
# 10,000 subscribers need 10,000+ descriptors in the generator and in each server.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)

WORK=$(mktemp -d /tmp/dsbench.XXXXXX)
OURS_PID="" REF_PID="" OURS_URL="" REF_URL="" STARTS=0 STARTS_OURS=0 REF_ON=0
OURS_AGENTS=0 OURS_PROTOCOL=0
NOTES=()
ROWS=()
note() { NOTES+=("$*"); echo "note: $*"; }

stop_pid() {
  local pid=$1 i
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  stop_pid "$OURS_PID"
  stop_pid "$REF_PID"
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Waits for "listening on http://HOST:PORT" in $1 while pid $2 lives; prints the URL.
wait_listen() {
  local log=$1 pid=$2 i url
  for i in $(seq 1 300); do
    url=$(grep -o -m1 'listening on http://[^ ]*' "$log" 2>/dev/null | sed 's/^listening on //')
    if [ -n "$url" ]; then echo "$url"; return 0; fi
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# start_ours [extra server args...]: a fresh instance of our server (fresh data dir)
start_ours() {
  stop_pid "$OURS_PID"
  OURS_PID="" OURS_URL=""
  use_server ours || return 0
  local data=$WORK/ours-data-$RANDOM
  mkdir -p "$data"
  # shellcheck disable=SC2086 # DS_SERVER_ARGS is a list of words on purpose
  STARTS_OURS=$((++STARTS))
  local log=$WORK/ours.$STARTS_OURS.log
  (cd "$ROOT" && exec "$DS_BINARY" --port 0 --data-dir "$data" ${DS_SERVER_ARGS:-} "$@") \
    >"$log" 2>&1 &
  OURS_PID=$!
  if ! OURS_URL=$(wait_listen "$log" "$OURS_PID"); then
    note "our server did not start (no 'listening on' line); its output: $(tail -n 3 "$log" | tr '\n' ' ')"
    stop_pid "$OURS_PID"
    OURS_PID="" OURS_URL=""
    return 0
  fi
  echo "our server: $OURS_URL (pid $OURS_PID, data $data)"
}

start_ref() {
  stop_pid "$REF_PID"
  REF_PID="" REF_URL=""
  use_server ref || return 0
  local log=$WORK/ref.$((++STARTS)).log
  node "$BENCH/ref/ref-server.mjs" --port 0 >"$log" 2>&1 &
  REF_PID=$!
  if ! REF_URL=$(wait_listen "$log" "$REF_PID"); then
    note "reference server did not start; its output: $(tail -n 3 "$log" | tr '\n' ' ')"
    stop_pid "$REF_PID"
    REF_PID="" REF_URL=""
    return 0
  fi
  echo "reference server: $REF_URL (pid $REF_PID)"
}

http_code() { curl -s -o /dev/null -m 10 -w '%{http_code}' "$@" 2>/dev/null || echo 000; }

# Which of our APIs answer? Sets OURS_AGENTS / OURS_PROTOCOL to 1 or 0.
probe_ours() {
  OURS_AGENTS=0 OURS_PROTOCOL=0
  [ -n "$OURS_URL" ] || return 0
  local c
  c=$(http_code -X POST -H 'Content-Type: application/json' \
    --data '{"type":"bench:probe","payload":{}}' "$OURS_URL/agents/bench-probe/agents")
  if [ "${c:0:1}" = 2 ]; then OURS_AGENTS=1; else note "our /agents API answered POST with HTTP $c: agents scenarios skipped for ours"; fi
  c=$(http_code -X PUT -H 'Content-Type: application/json' "$OURS_URL/v1/stream/bench-probe/protocol")
  if [ "${c:0:1}" = 2 ]; then OURS_PROTOCOL=1; else note "our /v1/stream answered PUT with HTTP $c: protocol-vs-protocol rows skipped"; fi
}

# ---- running tools and collecting RESULT lines ----------------------------------------
RUN_LOG=$WORK/raw.txt
: >"$RUN_LOG"
# run <id> <tool> args...: runs a generator (bounded by a timeout), keeps its output in
# $WORK/<id>.out and in the raw log.
run() {
  local id=$1 tool=$2
  shift 2
  echo "== $id: $tool $*" | tee -a "$RUN_LOG"
  timeout 600 "$TOOLS/$tool" "$@" >"$WORK/$id.out" 2>&1
  local rc=$?
  cat "$WORK/$id.out" >>"$RUN_LOG"
  grep -v '^RESULT' "$WORK/$id.out" | sed 's/^/   /'
  [ $rc -eq 0 ] || { echo "   (exit status $rc)" | tee -a "$RUN_LOG"; note "$id: $tool exited with status $rc"; }
  # a server that died must not be blamed on the next scenarios: stop using it
  if [ -n "$OURS_PID" ] && ! kill -0 "$OURS_PID" 2>/dev/null; then
    note "our server exited during $id; last output: $(tail -n 3 "$WORK/ours.$STARTS_OURS.log" 2>/dev/null | tr '\n' ' ')"
    wait "$OURS_PID" 2>/dev/null
    OURS_PID="" OURS_URL="" OURS_AGENTS=0 OURS_PROTOCOL=0
  fi
  if [ -n "$REF_PID" ] && ! kill -0 "$REF_PID" 2>/dev/null; then
    note "the reference server exited during $id"
    wait "$REF_PID" 2>/dev/null
    REF_PID="" REF_URL="" REF_ON=0
  fi
  return 0
}
# get <id> <key>: a field of the tool's RESULT line ("" if absent)
get() { [ -f "$WORK/$1.out" ] && sed -n 's/^RESULT //p' "$WORK/$1.out" | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n1; }
ratio() {
  awk -v a="$1" -v b="$2" 'BEGIN {
    if (a == "" || b == "" || b + 0 == 0) { print "-"; exit }
    r = a / b
    if (r >= 10) printf "%.1f", r; else if (r >= 0.1) printf "%.2f", r; else printf "%.2g", r
  }'
}
row() { ROWS+=("| $1 | $2 | ${3:--} | ${4:--} | $(ratio "${3:-}" "${4:-}") | $5 | ${6:-} |"); }
# flags <id>: short notes about a run (saturation, errors, gaps)
flags() {
  local id=$1 f=""
  [ -f "$WORK/$id.out" ] || { echo "not run"; return; }
  grep -q '^RESULT' "$WORK/$id.out" || { echo "failed (see raw output)"; return; }
  [ "$(get "$id" saturated)" = 1 ] && f="$f generator saturated;"
  local v
  v=$(get "$id" server_cpu)
  [ -n "$v" ] && [ "${v:0:1}" != - ] && f="$f srv cpu $(awk -v x="$v" 'BEGIN { printf "%.0f", x * 100 }')%;"
  # run-queue waits above 10 %: other processes (or the other side) starved this one
  v=$(get "$id" server_wait)
  [ -n "$v" ] && awk -v x="$v" 'BEGIN { exit !(x > 0.10) }' && f="$f srv waited for CPU $(awk -v x="$v" 'BEGIN { printf "%.0f", x * 100 }')%;"
  v=$(get "$id" gen_wait)
  [ -n "$v" ] && awk -v x="$v" 'BEGIN { exit !(x > 0.10) }' && f="$f gen waited for CPU $(awk -v x="$v" 'BEGIN { printf "%.0f", x * 100 }')%;"
  v=$(get "$id" errors); [ -n "$v" ] && [ "$v" != 0 ] && f="$f $v errors;"
  v=$(get "$id" non2xx); [ -n "$v" ] && [ "$v" != 0 ] && f="$f $v non-2xx;"
  v=$(get "$id" missed); [ -n "$v" ] && [ "$v" != 0 ] && f="$f $v missed;"
  v=$(get "$id" dups); [ -n "$v" ] && [ "$v" != 0 ] && f="$f $v duplicated;"
  v=$(get "$id" dropped); [ -n "$v" ] && [ "$v" != 0 ] && f="$f $v subscribers dropped;"
  v=$(get "$id" sustained); [ "$v" = 0 ] && f="$f rate not sustained ($(get "$id" actual_rate)/s);"
  v=$(get "$id" held); [ -n "$v" ] && [ "$v" != "$(get "$id" conns)" ] && f="$f only $v of $(get "$id" conns) connections held;"
  echo "${f# }"
}
both_flags() {
  local a b
  a=$(flags "$1"); b=$(flags "$2")
  local s=""
  [ -n "$a" ] && s="ours: $a "
  [ -n "$b" ] && s="${s}ref: $b"
  echo "$s"
}

# ---- build -----------------------------------------------------------------------------
echo "== building"
if [ -z "${DS_BINARY:-}" ]; then
  if use_server ours; then
    cmake -S "$ROOT" -B "$ROOT/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$WORK/cmake.log" 2>&1 &&
      cmake --build "$ROOT/build" -j2 >>"$WORK/cmake.log" 2>&1 ||
      { tail -n 20 "$WORK/cmake.log"; echo "run.sh: building our server failed" >&2; exit 1; }
  fi
  DS_BINARY=$ROOT/build/durable-stream
fi
make -s -C "$BENCH" || { echo "run.sh: building the load generators failed" >&2; exit 1; }
if use_server ref; then
  "$BENCH/ref/install.sh" || { echo "run.sh: installing the reference server failed" >&2; exit 1; }
fi

start_ours
start_ref
probe_ours
REF_ON=0; [ -n "$REF_URL" ] && REF_ON=1
PROBED_AGENTS=$OURS_AGENTS PROBED_PROTOCOL=$OURS_PROTOCOL
T_START=$(date +%s)
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
awk -v l="${LOAD_BEFORE%% *}" 'BEGIN { exit !(l > 0.5) }' &&
  note "the machine was busy before the run (load average $LOAD_BEFORE): other work competes with servers and generators, so figures are noisy"

# ---- append --------------------------------------------------------------------------
if want append; then
  for cp in $APPEND_CASES; do
    c=${cp%%:*} p=${cp##*:}
    args=(-c "$c" --paths "$p" -d "$APPEND_D" --warmup "$APPEND_W")
    [ "$OURS_AGENTS" = 1 ] && run "append-$c-$p-ours-agents" dsbench-append --url "$OURS_URL" --server-pid "$OURS_PID" --kind agents --prefix "bench/a$c-$p-ag" "${args[@]}"
    [ "$OURS_PROTOCOL" = 1 ] && run "append-$c-$p-ours-protocol" dsbench-append --url "$OURS_URL" --server-pid "$OURS_PID" --kind protocol --prefix "bench/a$c-$p-pr" "${args[@]}"
    [ "$REF_ON" = 1 ] && run "append-$c-$p-ref" dsbench-append --url "$REF_URL" --server-pid "$REF_PID" --kind protocol --prefix "bench/a$c-$p-pr" "${args[@]}"
    sc="append, $c conns, $p path$([ "$p" != 1 ] && echo s)"
    a="append-$c-$p-ours-agents" r="append-$c-$p-ref" q="append-$c-$p-ours-protocol"
    row "$sc" "req/s: ours /agents vs ref JSON append" "$(get $a rps)" "$(get $r rps)" "higher" "$(both_flags $a $r)"
    row "$sc" "p50 ms: ours /agents vs ref" "$(get $a p50_ms)" "$(get $r p50_ms)" "lower" ""
    row "$sc" "p99 ms: ours /agents vs ref" "$(get $a p99_ms)" "$(get $r p99_ms)" "lower" ""
    if [ "$OURS_PROTOCOL" = 1 ]; then
      row "$sc" "req/s: /v1/stream vs /v1/stream" "$(get $q rps)" "$(get $r rps)" "higher" "$(both_flags $q $r)"
      row "$sc" "p99 ms: /v1/stream vs /v1/stream" "$(get $q p99_ms)" "$(get $r p99_ms)" "lower" ""
    fi
  done
  # How close an append comes to our own HTTP ceiling: GET /health (no parsing of a body, no
  # storage, no publication) from the same generator at 64 connections.
  if [ "$OURS_AGENTS" = 1 ]; then
    run "health-64-ours" dsbench-append --url "$OURS_URL" --server-pid "$OURS_PID" --kind health -c 64 -d "$APPEND_D" --warmup "$APPEND_W"
    a="append-64-1-ours-agents" h="health-64-ours"
    ROWS+=("| HTTP ceiling, 64 conns | req/s: ours append (1 path) vs ours GET /health (ratio = share of the ceiling) | $(get $a rps) | $(get $h rps) | $(ratio "$(get $a rps)" "$(get $h rps)") | ~1 = at the ceiling | $(flags $h) |")
  fi
fi

# ---- fan-out ---------------------------------------------------------------------------
fanout_rows() {
  local S=$1 R=$2 a=$3 r=$4 label=$5
  local sc="fan-out, $S subscribers, $R ev/s"
  row "$sc" "p50 ms: $label" "$(get $a p50_ms)" "$(get $r p50_ms)" "lower" "$(both_flags $a $r)"
  row "$sc" "p99 ms: $label" "$(get $a p99_ms)" "$(get $r p99_ms)" "lower" ""
  row "$sc" "writer ev/s achieved: $label" "$(get $a actual_rate)" "$(get $r actual_rate)" "higher" ""
  local da dr
  da=$(awk -v d="$(get $a delivered)" -v e="$(get $a expected)" 'BEGIN { if (e > 0) printf "%.4f", d / e }')
  dr=$(awk -v d="$(get $r delivered)" -v e="$(get $r expected)" 'BEGIN { if (e > 0) printf "%.4f", d / e }')
  row "$sc" "delivered/expected: $label" "$da" "$dr" "higher" ""
}
if want fanout; then
  for sr in $FANOUT_CASES $FANOUT_BIG; do
    S=${sr%%:*} R=${sr##*:}
    big=0; [ "$sr" = "$FANOUT_BIG" ] && big=1
    args=(-s "$S" -r "$R" -d "$FANOUT_D" --warmup "$FANOUT_W")
    [ "$OURS_AGENTS" = 1 ] && run "fanout-$S-ours-agents" dsbench-fanout --url "$OURS_URL" --server-pid "$OURS_PID" --kind agents "${args[@]}"
    [ "$OURS_PROTOCOL" = 1 ] && run "fanout-$S-ours-protocol" dsbench-fanout --url "$OURS_URL" --server-pid "$OURS_PID" --kind protocol "${args[@]}"
    # the reference is not asked to hold 10,000 subscribers (ours only, by design)
    [ "$REF_ON" = 1 ] && [ $big = 0 ] && run "fanout-$S-ref" dsbench-fanout --url "$REF_URL" --server-pid "$REF_PID" --kind protocol "${args[@]}"
    fanout_rows "$S" "$R" "fanout-$S-ours-agents" "fanout-$S-ref" "ours /agents SSE vs ref SSE"
    [ "$OURS_PROTOCOL" = 1 ] && fanout_rows "$S" "$R" "fanout-$S-ours-protocol" "fanout-$S-ref" "/v1/stream SSE vs /v1/stream SSE"
  done
fi

# ---- catch-up ----------------------------------------------------------------------------
if want catchup; then
  cargs=(--reads "$CATCHUP_READS" --tail-reads "$TAIL_READS")
  if [ "$OURS_AGENTS" = 1 ]; then
    run "catchup-$CATCHUP_N-ours-agents" dsbench-catchup --url "$OURS_URL" --server-pid "$OURS_PID" --kind agents --events "$CATCHUP_N" --path "bench/catchup-$CATCHUP_N" "${cargs[@]}"
    run "tail-$TAIL_BIG-ours-agents" dsbench-catchup --url "$OURS_URL" --kind agents --events "$TAIL_BIG" --path "bench/tail-$TAIL_BIG" --reads 0 --tail-reads "$TAIL_READS" --seed-conns 16 --seed-depth 32
    run "tail-$TAIL_SMALL-ours-agents" dsbench-catchup --url "$OURS_URL" --kind agents --events "$TAIL_SMALL" --path "bench/tail-$TAIL_SMALL" --reads 0 --tail-reads "$TAIL_READS"
  fi
  [ "$OURS_PROTOCOL" = 1 ] && run "catchup-$CATCHUP_N-ours-protocol" dsbench-catchup --url "$OURS_URL" --server-pid "$OURS_PID" --kind protocol --events "$CATCHUP_N" --path "bench/catchup-$CATCHUP_N-pr" "${cargs[@]}"
  [ "$REF_ON" = 1 ] && run "catchup-$CATCHUP_N-ref" dsbench-catchup --url "$REF_URL" --server-pid "$REF_PID" --kind protocol --events "$CATCHUP_N" --path "bench/catchup-$CATCHUP_N-pr" "${cargs[@]}"
  a="catchup-$CATCHUP_N-ours-agents" r="catchup-$CATCHUP_N-ref" q="catchup-$CATCHUP_N-ours-protocol"
  sc="catch-up, $CATCHUP_N events"
  row "$sc" "full read events/s: ours /agents vs ref" "$(get $a full_eps)" "$(get $r full_eps)" "higher" "$(both_flags $a $r)"
  row "$sc" "full read MB/s (own wire format): ours /agents vs ref" "$(get $a full_mbps)" "$(get $r full_mbps)" "-" "formats differ (SSE frames vs JSON array)"
  [ "$OURS_PROTOCOL" = 1 ] && row "$sc" "full read events/s: /v1/stream vs /v1/stream" "$(get $q full_eps)" "$(get $r full_eps)" "higher" "$(both_flags $q $r)"
  row "$sc" "last-10 read median ms: ours /agents vs ref" "$(get $a tail_med_ms)" "$(get $r tail_med_ms)" "lower" ""
  # The same full read with the hot-tail cache off (limits.tail_cache_bytes = 1 holds no
  # event): every event is read from the YAML file and transcoded, as after a restart or
  # for history older than the cache. A separate instance, so the row above is untouched.
  if [ "$PROBED_AGENTS" = 1 ]; then
    printf 'local c = dofile("%s")\nc.limits = c.limits or {}\nc.limits.tail_cache_bytes = 1\nreturn c\n' \
      "$ROOT/config.lua" >"$WORK/cold.lua"
    start_ours --config "$WORK/cold.lua"
    [ -n "$OURS_URL" ] && run "catchup-$CATCHUP_N-ours-cold" dsbench-catchup --url "$OURS_URL" --server-pid "$OURS_PID" --kind agents --events "$CATCHUP_N" --path "bench/catchup-$CATCHUP_N" --reads "$CATCHUP_READS" --tail-reads 0
    c="catchup-$CATCHUP_N-ours-cold"
    row "$sc" "full read events/s, hot tail off (all from the YAML file): ours /agents vs ref" "$(get $c full_eps)" "$(get $r full_eps)" "higher" "$(both_flags $c $r)"
  fi
  b="tail-$TAIL_BIG-ours-agents" s="tail-$TAIL_SMALL-ours-agents"
  ROWS+=("| last-10 read, ours | median ms: $TAIL_BIG-event stream vs $TAIL_SMALL-event stream (ratio = big/small) | $(get $b tail_med_ms) | $(get $s tail_med_ms) | $(ratio "$(get $b tail_med_ms)" "$(get $s tail_med_ms)") | ~1 = indexed | $(flags $b) |")
fi

# ---- idle connections ------------------------------------------------------------------------
# the per-connection figure only when every connection was held while measuring
idle_val() { [ -n "$(get "$1" held)" ] && [ "$(get "$1" held)" = "$(get "$1" conns)" ] && get "$1" per_conn_bytes; }
if want idle; then
  for C in $IDLE_CASES; do
    # fresh servers: garbage from earlier scenarios must not blur the RSS reading
    # (memory a process once grew and freed is reused without raising its RSS, so each
    # measurement gets a server of its own)
    if [ "$PROBED_AGENTS" = 1 ]; then
      start_ours
      [ -n "$OURS_URL" ] && run "idle-$C-ours-agents" dsbench-idle --url "$OURS_URL" --pid "$OURS_PID" --kind agents -c "$C" --settle "$IDLE_SETTLE"
    fi
    if [ "$PROBED_PROTOCOL" = 1 ]; then
      start_ours
      [ -n "$OURS_URL" ] && run "idle-$C-ours-protocol" dsbench-idle --url "$OURS_URL" --pid "$OURS_PID" --kind protocol -c "$C" --settle "$IDLE_SETTLE"
    fi
    start_ref
    [ -n "$REF_URL" ] && run "idle-$C-ref" dsbench-idle --url "$REF_URL" --pid "$REF_PID" --kind protocol -c "$C" --settle "$IDLE_SETTLE"
    a="idle-$C-ours-agents" r="idle-$C-ref" q="idle-$C-ours-protocol"
    row "idle SSE, $C connections" "server RSS bytes/connection: ours /agents vs ref" "$(idle_val $a)" "$(idle_val $r)" "lower" "$(both_flags $a $r)"
    [ "$OURS_PROTOCOL" = 1 ] && row "idle SSE, $C connections" "server RSS bytes/connection: /v1/stream vs /v1/stream" "$(idle_val $q)" "$(idle_val $r)" "lower" ""
  done
fi

T_END=$(date +%s)
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- report ------------------------------------------------------------------------------
for f in "$WORK"/*.out; do
  [ -f "$f" ] || continue
  grep -q '^NOTE: generator saturated' "$f" && note "$(basename "$f" .out): generator saturated (its CPU > 90% of one core); the server figure is a lower bound"
done
mkdir -p "$(dirname "$OUT")"
{
  echo "# durable-stream benchmark results"
  echo
  echo "Measured by \`bench/run.sh${*:+ $*}\` on $(date -u '+%Y-%m-%d %H:%M UTC'), mode **$MODE**, wall time $((T_END - T_START)) s."
  echo
  echo "* machine: $(nproc) cores, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n1), $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), Linux $(uname -r); open-file limit $NOFILE"
  echo "* ours: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null) \`$DS_BINARY --port 0 --data-dir <tmp> ${DS_SERVER_ARGS:-}\` (storage and fsync from config.lua); /agents: $([ "$OURS_AGENTS" = 1 ] && echo yes || echo no), /v1/stream: $([ "$OURS_PROTOCOL" = 1 ] && echo yes || echo no)"
  echo "* reference: @durable-streams/server 0.3.7 (in-memory store, compression off) on Node $(node --version 2>/dev/null)"
  echo "* load generators: bench/tools (single-threaded epoll, HTTP/1.1 keep-alive), on the same machine as the servers"
  echo "* load average (1/5/15 min): $LOAD_BEFORE before the scenarios, $LOAD_AFTER after"
  echo
  echo "Ratio = ours / reference (for the last-10 row: big stream / small stream). \"better\" says which direction is good for ours."
  echo "Notes: \"srv cpu\" = CPU the server process used during the measured window, all threads, as a share of one core (above 100 % = more than one core); \"srv/gen waited for CPU\" = share of the window the server's main thread / the load generator was runnable but not running (shown above 10 %: the figure is then limited by competition for the 2 cores, not by the server alone)."
  echo
  echo "| scenario | metric | ours | reference | ratio | better | notes |"
  echo "| --- | --- | --- | --- | --- | --- | --- |"
  for r in "${ROWS[@]}"; do echo "$r"; done
  echo
  if [ ${#NOTES[@]} -gt 0 ]; then
    echo "## Notes"
    echo
    for n in "${NOTES[@]}"; do echo "* $n"; done
    echo
  fi
  echo "## Raw tool output"
  echo
  echo '```'
  cat "$RUN_LOG"
  echo '```'
} >"$OUT"
echo
sed -n '/^| scenario/,/^$/p' "$OUT"
for n in "${NOTES[@]}"; do echo "note: $n"; done
echo "written: $OUT"
