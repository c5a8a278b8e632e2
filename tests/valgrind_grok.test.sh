#!/bin/sh
# The Grok transport under valgrind: the real binary talks to the fake realtime server
# (spec/fixtures/upstream/grok_fake.py), opens WebSocket connections on two paths (text and
# audio prompts), loses one mid-answer and reconnects, meets a 401 handshake, and at
# SIGTERM still holds one idle connection and one request waiting on a stalled upstream.
# Fails on any valgrind error or on any leaked block (definite, indirect or possible): the
# lws context must be destroyed in both stages.
set -e
cd "$(dirname "$0")/.."
BIN=${DS_BINARY:-build/durable-stream}
if ! command -v valgrind >/dev/null; then echo "valgrind is not installed (scripts/deps.sh installs it)"; exit 1; fi
T=$(mktemp -d)
FPID=
VPID=
cleanup() {
  [ -n "$VPID" ] && kill -9 "$VPID" 2>/dev/null || true
  [ -n "$FPID" ] && kill "$FPID" 2>/dev/null || true
  rm -rf "$T"
}
trap cleanup EXIT
/usr/bin/python3 spec/fixtures/upstream/grok_fake.py --log "$T/fake.jsonl" >"$T/fake.out" 2>"$T/fake.err" &
FPID=$!
for i in $(seq 1 100); do grep -q PORT= "$T/fake.out" 2>/dev/null && break; sleep 0.1; done
FPORT=$(sed -n 's/PORT=//p' "$T/fake.out")
[ -n "$FPORT" ] || { echo "fake did not start"; cat "$T/fake.err"; exit 1; }
cat > "$T/config.lua" <<'CFG'
return { storage = "memory", agents = { models = { grok = { ready_timeout_ms = 20000, response_timeout_ms = 20000 } } } }
CFG
XAI_API_KEY=vg-key XAI_REALTIME_URL="ws://127.0.0.1:$FPORT/v1/realtime" \
valgrind --leak-check=full --show-leak-kinds=definite,indirect,possible \
  --errors-for-leak-kinds=definite,indirect,possible --error-exitcode=9 --log-file="$T/vg.txt" \
  "$BIN" --config "$T/config.lua" --port 0 --data-dir "$T/data" >"$T/out.txt" 2>"$T/err.txt" &
VPID=$!
for i in $(seq 1 150); do grep -q listening "$T/out.txt" 2>/dev/null && break; sleep 0.2; done
PORT=$(sed -n 's/.*:\([0-9]*\)$/\1/p' "$T/out.txt")
[ -n "$PORT" ] || { echo "server did not start"; cat "$T/err.txt"; exit 1; }
U="http://127.0.0.1:$PORT"
post() { curl -s -o /dev/null -w '%{http_code}' -XPOST "$U/agents/$1" -d "$2" | grep -q 204 || { echo "POST $1 failed"; exit 1; }; }
# waits until path $1 holds $2 request ends (ended or cancelled)
wait_ends() {
  for i in $(seq 1 300); do
    n=$(curl -s "$U/agents/$1" | grep -c -E 'request-(ended|cancelled)' || true)
    [ "$n" -ge "$2" ] && return 0
    sleep 0.1
  done
  echo "timed out waiting for $2 request end(s) on $1"; curl -s "$U/agents/$1" | tail -5; exit 1
}
CFGSET='{"type":"iterate:agent:config:set","payload":{"model":"grok"}}'
msg() { printf '{"type":"iterate:agent:action:send-user-message:called","payload":{"content":"%s"}}' "$1"; }
post vg/g1 "$CFGSET"
post vg/g1 "$(msg 'hello grok')"
wait_ends vg/g1 1
post vg/g1 '{"type":"iterate:agent:action:send-user-audio:called","payload":{"audio":"AAECAwQFBgcICQ=="}}'
wait_ends vg/g1 2
post vg/g1 "$(msg 'drop me [fault:drop]')"
wait_ends vg/g1 3
post vg/g1 "$(msg 'after the drop')"
wait_ends vg/g1 4
curl -s -o /dev/null "http://127.0.0.1:$FPORT/_control?next=401"
post vg/g2 "$CFGSET"
post vg/g2 "$(msg 'rejected')"
wait_ends vg/g2 1
post vg/g2 "$(msg 'accepted, left open')"
wait_ends vg/g2 2
# a request still waiting on the upstream when SIGTERM arrives
post vg/g3 "$CFGSET"
post vg/g3 "$(msg 'stall until shutdown [fault:stall]')"
for i in $(seq 1 300); do curl -s "$U/agents/vg/g3" | grep -q 'response.created' && break; sleep 0.1; done
curl -s "$U/agents/vg/g3" | grep -q 'response.created' || { echo "the stalled answer did not start"; exit 1; }
curl -s "$U/agents/vg/g1" | grep -q 'request-ended' || { echo "no request ended"; exit 1; }
curl -s "$U/agents/vg/g2" | grep -q 'HTTP 401' || { echo "the 401 was not reported"; exit 1; }
kill -TERM $VPID
wait $VPID || { echo "server exited with $?"; tail -60 "$T/vg.txt"; exit 1; }
VPID=
grep -E "ERROR SUMMARY|in use at exit" "$T/vg.txt"
grep -q "ERROR SUMMARY: 0 errors" "$T/vg.txt" || { tail -80 "$T/vg.txt"; exit 1; }
grep -q "in use at exit: 0 bytes" "$T/vg.txt" || { tail -80 "$T/vg.txt"; exit 1; }
grep -q "leaked\|still alive\|still held" "$T/err.txt" && { cat "$T/err.txt"; exit 1; }
echo "valgrind (grok): clean"
