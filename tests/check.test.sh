#!/bin/sh
# `durable-stream check [--repair]` on damaged copies of a data dir the server wrote, and
# the server on each repaired copy (see tests/check/check_test.py).
set -e
cd "$(dirname "$0")/.."
exec python3 tests/check/check_test.py
