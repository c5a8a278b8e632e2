#!/usr/bin/env bash
# protocol_valgrind.test.sh - the protocol functional tests (tests/protocol/views.mjs:
# catch-up, long-poll and SSE reads through the official client, webhook and pull-wake
# subscriptions, producers, forks, soft deletes, restarts) with every server process run
# under valgrind. views.mjs requires exit status 0 after SIGTERM, and valgrind exits 9 on
# any memory error or definite/indirect/possible leak, so either fails the test.
# Environment: DS_BINARY (default build/durable-stream).
# Must not: leave servers or temp dirs behind.
set -u
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${DS_BINARY:-$here/build/durable-stream}"
cache="${DS_CONFORMANCE_CACHE:-$here/.cache/conformance}"
command -v valgrind >/dev/null || { echo "protocol_valgrind: valgrind is not installed" >&2; exit 1; }
[ -x "$bin" ] || { echo "protocol_valgrind: binary not found: $bin" >&2; exit 1; }
. "$here/tests/lib/ds_npm.sh"
ds_npm_ensure "$cache" || exit 1
tmp="$(mktemp -d)"
copy="$cache/views.$$.mjs"
trap 'rm -rf "$tmp" "$copy"' EXIT
cat >"$tmp/ds-valgrind" <<WRAP
#!/bin/sh
exec valgrind -q --leak-check=full --show-leak-kinds=definite,indirect,possible \\
  --errors-for-leak-kinds=definite,indirect,possible --error-exitcode=9 \\
  --log-file="$tmp/vg.%p.txt" "$bin" "\$@"
WRAP
chmod +x "$tmp/ds-valgrind"
cp "$here/tests/protocol/views.mjs" "$copy"
DS_BINARY="$tmp/ds-valgrind" node "$copy"
rc=$?
for f in "$tmp"/vg.*.txt; do
  [ -s "$f" ] && { echo "protocol_valgrind: valgrind report $f:" >&2; head -60 "$f" >&2; rc=1; }
done
exit $rc
