#!/usr/bin/env bash
# conformance.test.sh - runs the official Durable Streams server conformance suite
# (@durable-streams/server-conformance-tests 0.3.6, pinned) against our binary.
#
# Provides: installs the suite and its runner dependencies from npm into
# .cache/conformance/ (once; later runs reuse it, so it works offline), writes a one-file
# programmatic runner (the published CLI is broken upstream: it finds no test files and
# cannot pass `subscriptions`), then for each store (yaml, memory) starts the server on a
# free port with a 500 ms long-poll timeout and every browser origin allowed and runs the suite with subscriptions on and
# off. Prints passed/failed/skipped per run from vitest's JSON report and exits non-zero
# unless every runnable test passed.
# Environment: DS_BINARY (path to the server binary; default build/durable-stream),
#   DS_SERVER_ARGS (extra server flags, e.g. "--fsync always"),
#   DS_CONFORMANCE_STORES (default "yaml memory"), DS_CONFORMANCE_SUBS (default "1 0").
# Must not: leave servers or temp dirs behind.
set -u

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${DS_BINARY:-$here/build/durable-stream}"
cache="${DS_CONFORMANCE_CACHE:-$here/.cache/conformance}"
stores="${DS_CONFORMANCE_STORES:-yaml memory}"
subs_modes="${DS_CONFORMANCE_SUBS:-1 0}"
EXPECTED_TOTAL=338

if [ ! -x "$bin" ]; then
  echo "conformance: binary not found: $bin (set DS_BINARY)" >&2
  exit 1
fi

. "$here/tests/lib/ds_npm.sh"
ds_npm_ensure "$cache" || exit 1

# The runner: one vitest file that calls the suite's programmatic entry point.
cat >"$cache/conformance.test.mjs" <<'EOF'
import { runConformanceTests } from "@durable-streams/server-conformance-tests"
runConformanceTests({
  baseUrl: process.env.CONFORMANCE_TEST_URL,
  longPollTimeoutMs: 500,
  subscriptions: process.env.SUBSCRIPTIONS === "1",
})
EOF

tmp="$(mktemp -d)"
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; fi
  rm -rf "$tmp"
}
trap cleanup EXIT

# The checkout's config.lua, plus what the suite needs of a deployment: its subscription
# block's webhook receiver listens on 127.0.0.1, which webhooks may reach only when a network
# allows it; and it checks a CORS preflight from https://example.com, i.e. a deployment that
# serves the protocol to web apps on other origins. By default only loopback origins may call
# the server (README, "CORS").
cat >"$tmp/config.lua" <<EOF
local c = dofile("$here/config.lua")
c.protocol = c.protocol or {}
c.protocol.webhook_allow_networks = { "127.0.0.0/8" }
c.cors = { allowed_origins = "*" }
return c
EOF

start_server() { # $1 = store kind
  rm -rf "$tmp/data"; mkdir -p "$tmp/data"
  : >"$tmp/server.out"
  # shellcheck disable=SC2086 # DS_SERVER_ARGS is a list of extra flags
  "$bin" --config "$tmp/config.lua" --port 0 --storage "$1" --data-dir "$tmp/data" \
    --long-poll-timeout 500 ${DS_SERVER_ARGS:-} \
    >"$tmp/server.out" 2>"$tmp/server.err" &
  pid=$!
  url=""
  for _ in $(seq 1 200); do
    url="$(grep -o 'listening on http://[^ ]*' "$tmp/server.out" | head -1 | sed 's/^listening on //')"
    [ -n "$url" ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  if [ -z "$url" ]; then
    echo "conformance: server did not start" >&2
    cat "$tmp/server.err" >&2
    return 1
  fi
}

stop_server() { # returns non-zero unless the server shut down cleanly (exit 0) on SIGTERM
  local rc
  if ! kill -0 "$pid" 2>/dev/null; then
    wait "$pid"
    echo "conformance: the server died during the run (exit status $?); its stderr ends with:" >&2
    tail -20 "$tmp/server.err" >&2
    pid=""
    return 1
  fi
  kill "$pid" 2>/dev/null
  wait "$pid"
  rc=$?
  pid=""
  if [ "$rc" != 0 ]; then
    echo "conformance: the server exited with status $rc after SIGTERM; its stderr ends with:" >&2
    tail -20 "$tmp/server.err" >&2
    return 1
  fi
}

status=0
for store in $stores; do
  for subs in $subs_modes; do
    start_server "$store" || { status=1; continue; }
    out="$tmp/report-$store-$subs.json"
    # --testTimeout: vitest's default 5 s per test is a budget for the suite's own client
    # work too (one test checks 102,400 bytes with one expect() each); on a loaded 2-core
    # machine that alone can pass 5 s. The server-side timing the suite relies on (the
    # long-poll timeout, 500 ms here) is unaffected.
    (cd "$cache" && CONFORMANCE_TEST_URL="$url" SUBSCRIPTIONS="$subs" \
       npx --no-install vitest run conformance.test.mjs --no-coverage --testTimeout=30000 \
       --reporter=json --outputFile.json="$out" >"$tmp/vitest.log" 2>&1)
    stop_server || status=1
    if [ ! -f "$out" ]; then
      echo "conformance: store=$store subscriptions=$subs: no report" >&2
      tail -30 "$tmp/vitest.log" >&2
      status=1
      continue
    fi
    summary="$(node -e '
      const r = require(process.argv[1]);
      const failed = [];
      for (const f of r.testResults) for (const t of f.assertionResults)
        if (t.status === "failed") failed.push(t.fullName + ": " + (t.failureMessages[0] || "").split("\n")[0]);
      console.log(`${r.numTotalTests} ${r.numPassedTests} ${r.numFailedTests} ${r.numPendingTests + r.numTodoTests}`);
      for (const f of failed) console.log("  FAIL " + f);
    ' "$out")"
    read -r total passed failed skipped <<<"$(head -1 <<<"$summary")"
    echo "conformance: store=$store subscriptions=$subs total=$total passed=$passed failed=$failed skipped=$skipped"
    tail -n +2 <<<"$summary"
    want=$EXPECTED_TOTAL
    [ "$subs" = 1 ] || want=$((EXPECTED_TOTAL - 6))
    if [ "$failed" != 0 ] || [ "$total" != "$EXPECTED_TOTAL" ] || [ "$passed" != "$want" ]; then
      status=1
    fi
  done
done
exit $status
