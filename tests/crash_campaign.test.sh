#!/bin/sh
# Crash-campaign smoke run for ctest: 40 SIGKILLs under concurrent appends and live
# subscribers (the full campaign is `python3 tests/crash/campaign.py --kills 200`).
set -e
cd "$(dirname "$0")/.."
exec python3 tests/crash/campaign.py --kills 40 --quiet
