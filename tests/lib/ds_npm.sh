# ds_npm.sh - shared by the node-based script tests: installs the pinned Durable Streams
# npm packages (the server conformance suite 0.3.6, vitest, fast-check and the official
# TypeScript client) into a cache directory once, so later runs work offline.
# Usage: . tests/lib/ds_npm.sh; ds_npm_ensure "$cache" || exit 1
# Must not: install anything into the repository outside the cache directory.

DS_SUITE_VERSION=0.3.6
DS_CLIENT_VERSION=0.2.7

ds_npm_ensure() {
  local cache="$1"
  mkdir -p "$cache" || return 1
  # several script tests may start at once on a fresh machine: one installs, the others wait
  (
    flock 9 || exit 1
    ds_npm_install_locked "$cache"
  ) 9>"$cache/.install.lock"
}

ds_npm_install_locked() {
  local cache="$1"
  local suite_pkg="$cache/node_modules/@durable-streams/server-conformance-tests/package.json"
  local client_pkg="$cache/node_modules/@durable-streams/client/package.json"
  if [ -f "$suite_pkg" ] && grep -q "\"version\": \"$DS_SUITE_VERSION\"" "$suite_pkg" \
     && [ -f "$client_pkg" ] && [ -f "$cache/node_modules/vitest/package.json" ]; then
    return 0
  fi
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "ds_npm: node/npm not available" >&2
    return 1
  fi
  mkdir -p "$cache"
  [ -f "$cache/package.json" ] ||
    printf '{"name":"ds-conformance-runner","private":true,"type":"module"}\n' >"$cache/package.json"
  echo "ds_npm: installing @durable-streams/server-conformance-tests@$DS_SUITE_VERSION into $cache"
  (cd "$cache" && npm install --no-audit --no-fund --loglevel=error \
     "@durable-streams/server-conformance-tests@$DS_SUITE_VERSION" vitest@4.1.12 \
     fast-check@4.10.2 "@durable-streams/client@$DS_CLIENT_VERSION") || {
    echo "ds_npm: npm install failed" >&2
    return 1
  }
}
