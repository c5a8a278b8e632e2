#!/usr/bin/env bash
# protocol_views.test.sh - functional tests of the /v1/stream view with the official
# TypeScript client: an agent conversation written through /agents read by
# @durable-streams/client (catch-up, long-poll, SSE) with offsets resuming across the two
# views, and a restart test (streams, metadata, producer state, closure, forks). The test
# body is tests/protocol/views.mjs; npm packages come from .cache/conformance/.
# Environment: DS_BINARY (default build/durable-stream).
# Must not: leave servers or temp dirs behind (views.mjs cleans up).
set -u
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export DS_BINARY="${DS_BINARY:-$here/build/durable-stream}"
cache="${DS_CONFORMANCE_CACHE:-$here/.cache/conformance}"
[ -x "$DS_BINARY" ] || { echo "protocol_views: binary not found: $DS_BINARY" >&2; exit 1; }
. "$here/tests/lib/ds_npm.sh"
ds_npm_ensure "$cache" || exit 1
# ESM resolves packages from the importing file's directory, so run a copy in the cache
# (per-process name: the valgrind variant may run at the same time)
copy="$cache/views.$$.mjs"
trap 'rm -f "$copy"' EXIT
cp "$here/tests/protocol/views.mjs" "$copy"
node "$copy"
