#!/usr/bin/env bash
# README command 2: set up, build with warnings as errors, run every test (ctest driving doctest),
# then build the storage tests again under AddressSanitizer + UndefinedBehaviorSanitizer and run
# them too.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
bash tools/build.sh -DKIV_WERROR=ON
ctest --test-dir build --output-on-failure -j2
echo
echo "== storage tests under ASan + UBSan =="
KIV_BUILD_DIR=build-asan bash tools/build.sh -DKIV_WERROR=ON -DKIV_SANITIZE=ON -DKIV_STORAGE_ONLY=ON \
  -DCMAKE_BUILD_TYPE=Debug
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir build-asan --output-on-failure -j2
