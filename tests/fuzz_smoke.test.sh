#!/bin/sh
# A short smoke run of every libFuzzer target (~10 s each over its seed corpus) so the
# fuzzers keep building and the seeds keep passing. Needs clang and libclang-rt-14-dev;
# without them it says so and exits 77, which ctest reports as skipped (SKIP_RETURN_CODE),
# never as passed (the full campaign is tests/fuzz/run.sh).
# The fuzz build lives in build/fuzz-smoke (DS_FUZZ_BUILD_DIR overrides), apart from the
# normal build. Must not: write into the repository's corpus.
set -u
cd "$(dirname "$0")/.."
if ! command -v clang >/dev/null 2>&1; then
  echo "SKIP: clang is not installed; fuzz targets not built"
  exit 77
fi
if ! ls /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a >/dev/null 2>&1 &&
   ! ls /usr/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a >/dev/null 2>&1; then
  echo "SKIP: libclang-rt-14-dev (libFuzzer runtime) is not installed"
  exit 77
fi
BDIR=${DS_FUZZ_BUILD_DIR:-${DS_BUILD_DIR:-build}/fuzz-smoke}
mkdir -p "$(dirname "$BDIR")"
exec tests/fuzz/run.sh -t "${DS_FUZZ_SMOKE_SECONDS:-10}" -b "$BDIR"
