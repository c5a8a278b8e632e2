#!/bin/sh
# Installs the Debian packages, builds, and runs the server on its defaults
# (config.lua: 127.0.0.1:3000, YAML store in .data/). Extra arguments go to the server.
set -e
cd "$(dirname "$0")/.."
sh scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j2
exec ./build/durable-stream "$@"
