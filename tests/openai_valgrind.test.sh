#!/bin/sh
# A short run of the real binary under valgrind driving the `openai` model against the fake
# upstream (spec/fixtures/upstream/openai_fake.py): a full streamed answer, a slow answer
# interrupted by a new prompt (upstream transfer aborted), a reset mid-answer (error path),
# and a slow answer still streaming at SIGTERM (shutdown must cancel the transfer and close
# every curl socket and timer). Fails on any valgrind error, any leaked block (definite,
# indirect or possible), an unclean exit, or a leak report from the Lua host.
set -e
cd "$(dirname "$0")/.."
BIN=${DS_BINARY:-build/durable-stream}
if ! command -v valgrind >/dev/null; then echo "valgrind is not installed"; exit 1; fi
T=$(mktemp -d)
FPID=
cleanup() {
  [ -n "$FPID" ] && kill "$FPID" 2>/dev/null || true
  rm -rf "$T"
}
trap cleanup EXIT
/usr/bin/python3 spec/fixtures/upstream/openai_fake.py --log "$T/fake.jsonl" --pace-ms 20 >"$T/fake.port" 2>"$T/fake.err" &
FPID=$!
for i in $(seq 1 100); do [ -s "$T/fake.port" ] && break; sleep 0.1; done
FPORT=$(head -1 "$T/fake.port")
[ -n "$FPORT" ] || { echo "fake did not start"; cat "$T/fake.err"; exit 1; }
cat > "$T/config.lua" <<CFG
return { agents = { models = { openai = { api_key = "sk-valgrind", base_url = "http://127.0.0.1:$FPORT/v1" } } } }
CFG
env -u OPENAI_API_KEY -u OPENAI_BASE_URL valgrind --leak-check=full --show-leak-kinds=definite,indirect,possible \
  --errors-for-leak-kinds=definite,indirect,possible --error-exitcode=9 --log-file="$T/vg.txt" \
  "$BIN" --config "$T/config.lua" --port 0 --data-dir "$T/data" >"$T/out.txt" 2>"$T/err.txt" &
VPID=$!
for i in $(seq 1 150); do grep -q listening "$T/out.txt" 2>/dev/null && break; sleep 0.2; done
PORT=$(sed -n 's/.*:\([0-9]*\)$/\1/p' "$T/out.txt")
[ -n "$PORT" ] || { echo "server did not start"; cat "$T/err.txt"; exit 1; }
U="http://127.0.0.1:$PORT/agents"
post() { curl -s -o /dev/null -XPOST "$U/$1" -d "$2"; }
msg() { post "$1" "{\"type\":\"iterate:agent:action:send-user-message:called\",\"payload\":{\"content\":\"$2\"}}"; }
# waits until the path's file holds $2 events of type $3
wait_count() {
  for i in $(seq 1 300); do
    n=$(grep -c "^type: $3\$" "$T/data/streams/$1.yaml" 2>/dev/null || true)
    [ "${n:-0}" -ge "$2" ] && return 0
    sleep 0.1
  done
  echo "timed out waiting for $2 x $3 on $1"; cat "$T/err.txt"; exit 1
}
post vg/a '{"type":"iterate:agent:config:set","payload":{"model":"openai"}}'
msg vg/a "full answer [[tokens:5]]"
wait_count vg/a 1 iterate:llm-loop:request-ended
msg vg/a "slow answer [[fault:slow]]"
wait_count vg/a 11 iterate:llm-loop:response:sse # 9 parts of the first answer, then two
msg vg/a "interrupting [[tokens:3]]"
wait_count vg/a 2 iterate:llm-loop:request-ended
grep -q '"client_closed".*slow answer' "$T/fake.jsonl" || { echo "the fake did not see the slow transfer closed"; exit 1; }
msg vg/a "cut [[fault:reset]] [[tokens:6]]"
wait_count vg/a 2 iterate:llm-loop:request-cancelled
msg vg/b "still streaming at shutdown [[fault:slow]]"
wait_count vg/b 2 iterate:llm-loop:response:sse
kill -TERM $VPID
wait $VPID || { echo "server exited with $?"; tail -40 "$T/vg.txt"; exit 1; }
if grep -E "leaked|still alive" "$T/err.txt"; then echo "the Lua host reported leaks"; exit 1; fi
grep -q "ERROR SUMMARY: 0 errors" "$T/vg.txt" || { tail -40 "$T/vg.txt"; exit 1; }
grep -q '"client_closed".*still streaming at shutdown' "$T/fake.jsonl" || {
  echo "the transfer in flight at shutdown was not closed"; exit 1; }
grep -E "in use at exit|definitely lost|indirectly lost|possibly lost|no leaks are possible|ERROR SUMMARY" "$T/vg.txt" | sed "s/==[0-9]*== //"
