#!/bin/sh
# install.sh - installs the pinned reference server (@durable-streams/server 0.3.7, see
# package.json next to this file) into <repo>/.cache/bench-ref/ with npm.
# Offline-safe: does nothing when the pinned version is already installed there.
# It never touches the repository's tracked files or any global npm prefix.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
dest=${DS_BENCH_REF_DIR:-$root/.cache/bench-ref}
want=0.3.7
have_file=$dest/node_modules/@durable-streams/server/package.json
if [ -f "$have_file" ] && grep -q "\"version\": \"$want\"" "$have_file"; then
  echo "reference server @durable-streams/server $want already installed in $dest"
  exit 0
fi
command -v npm >/dev/null 2>&1 || { echo "install.sh: npm not found" >&2; exit 1; }
mkdir -p "$dest"
cp "$here/package.json" "$dest/package.json"
if [ -f "$here/package-lock.json" ]; then
  cp "$here/package-lock.json" "$dest/package-lock.json"
  (cd "$dest" && npm ci --no-audit --no-fund --loglevel=error)
else
  (cd "$dest" && npm install --no-audit --no-fund --loglevel=error)
fi
grep -q "\"version\": \"$want\"" "$have_file" || { echo "install.sh: wrong version installed" >&2; exit 1; }
echo "reference server @durable-streams/server $want installed in $dest"
