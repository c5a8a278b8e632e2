#!/bin/sh
# A short functional run of the real binary under valgrind: appends (valid and invalid),
# history reads, live SSE readers that disconnect and stay connected through shutdown,
# an agent request on the echo model, then SIGTERM. Fails on any valgrind error or on
# any leaked block (definite, indirect or possible).
set -e
cd "$(dirname "$0")/.."
BIN=${DS_BINARY:-build/durable-stream}
if ! command -v valgrind >/dev/null; then echo "valgrind is not installed (scripts/deps.sh installs it)"; exit 1; fi
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
cat > "$T/config.lua" <<'CFG'
return { limits = { subscriber_backlog_bytes = 65536 } }
CFG
valgrind --leak-check=full --show-leak-kinds=definite,indirect,possible \
  --errors-for-leak-kinds=definite,indirect,possible --error-exitcode=9 --log-file="$T/vg.txt" \
  "$BIN" --config "$T/config.lua" --port 0 --data-dir "$T/data" >"$T/out.txt" 2>"$T/err.txt" &
VPID=$!
for i in $(seq 1 100); do grep -q listening "$T/out.txt" 2>/dev/null && break; sleep 0.2; done
PORT=$(sed -n 's/.*:\([0-9]*\)$/\1/p' "$T/out.txt")
[ -n "$PORT" ] || { echo "server did not start"; cat "$T/err.txt"; exit 1; }
U="http://127.0.0.1:$PORT"
for i in $(seq 1 30); do
  curl -s -o /dev/null -XPOST "$U/agents/vg/a" -d "{\"type\":\"t\",\"payload\":{\"i\":$i,\"s\":\"\\u00e9\\n\",\"big\":12345678901234567890}}"
done
curl -s -o /dev/null -XPOST "$U/agents/vg/a" -d '{"type":"iterate:agent:config:set","payload":{"model":"echo"}}'
curl -s -o /dev/null -XPOST "$U/agents/vg/a" -d '{"type":"iterate:agent:action:send-user-message:called","payload":{"content":"a b c"}}'
curl -s -o /dev/null -XPOST "$U/agents/vg/a" -d 'not json'
curl -s -o /dev/null "$U/agents/%2e%2e/x"
curl -s -o /dev/null "$U/agents/vg/a?offset=garbage"
curl -s -o /dev/null --max-time 2 -N "$U/agents/vg/a?live=sse" || true
curl -s -o /dev/null -N "$U/agents/vg/b?live=sse" &
CPID=$!
curl -s -o /dev/null "$U/agents/vg/a?offset=5"
curl -s -o /dev/null -I "$U/agents/vg/a"
# a live reader that never reads: dropped once its backlog passes the limit
python3 -c "
import socket, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
s.connect(('127.0.0.1', $PORT))
s.sendall(b'GET /agents/vg/slow?live=sse HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')
time.sleep(8)
" &
SPID=$!
sleep 1
BIG=$(head -c 60000 /dev/zero | tr '\0' x)
for i in $(seq 1 60); do
  curl -s -o /dev/null -XPOST "$U/agents/vg/slow" -d "{\"type\":\"big\",\"payload\":{\"x\":\"$BIG\"}}"
done
curl -s -o /dev/null "$U/debug/stats"
curl -s -o /dev/null -XPUT "$U/v1/stream/vg-proto" -H 'Content-Type: application/json' || true
curl -s -o /dev/null -XPOST "$U/v1/stream/vg-proto" -H 'Content-Type: application/json' -d '[{"a":1},{"b":2}]' || true
curl -s -o /dev/null "$U/v1/stream/vg-proto?offset=-1" || true
sleep 2
kill -TERM $VPID
wait $VPID || { echo "server exited with $?"; cat "$T/vg.txt" | tail -40; exit 1; }
wait $CPID 2>/dev/null || true
kill $SPID 2>/dev/null || true
grep -q "dropping reader of vg/slow" "$T/err.txt" || { echo "the slow reader was not dropped"; cat "$T/err.txt"; exit 1; }
grep -E "ERROR SUMMARY|in use at exit" "$T/vg.txt"
grep -q "ERROR SUMMARY: 0 errors" "$T/vg.txt" || { tail -60 "$T/vg.txt"; exit 1; }
grep -q "in use at exit: 0 bytes" "$T/vg.txt" || grep -q "definitely lost: 0 bytes" "$T/vg.txt" || { tail -60 "$T/vg.txt"; exit 1; }
echo "valgrind: clean"
