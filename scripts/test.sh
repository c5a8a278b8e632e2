#!/bin/sh
# The whole test suite, as CI runs it: installs the Debian packages, builds, and runs
# ctest (cmocka unit tests, busted unit + functional specs, conformance and script suites).
set -e
cd "$(dirname "$0")/.."
sh scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build build -j2
cd build
ctest --output-on-failure --timeout 900
