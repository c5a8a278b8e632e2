#!/bin/sh
# subs_persist.test.sh - subscriptions (webhook and pull-wake) survive SIGTERM and kill -9
# restarts with the YAML store, damaged subscription / key files are moved aside with a
# logged error, and the memory store keeps subscriptions in memory only. The test body is
# tests/protocol/subs_persist.py (Debian's python3 with python3-cryptography for the
# Ed25519 signature checks). Environment: DS_BINARY (default build/durable-stream).
# Must not: leave servers or temp dirs behind (the Python script cleans up).
set -u
cd "$(dirname "$0")/.."
export DS_BINARY="${DS_BINARY:-build/durable-stream}"
[ -x "$DS_BINARY" ] || { echo "subs_persist: binary not found: $DS_BINARY" >&2; exit 1; }
exec /usr/bin/python3 tests/protocol/subs_persist.py
