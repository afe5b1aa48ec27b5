#!/usr/bin/env bash
# README command 2: set up, build with warnings as errors, run every test (ctest driving doctest),
# then build the storage tests again under AddressSanitizer + UndefinedBehaviorSanitizer and run
# them too.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
# The model tests (tests/cli/model_test.cpp, the tokenizer test) need the default model and text.
bash tools/model/fetch_model.sh
bash tools/data/austen.sh
bash tools/build.sh -DKIV_WERROR=ON
# The durability tests print their counts (flips detected, offsets truncated, crash trials and
# losses); ctest hides the output of passing tests, so keep it in a log and show those lines.
ctest --test-dir build --output-on-failure -j2 -V > build/ctest.log 2>&1 || { cat build/ctest.log; exit 1; }
grep -E "^[0-9]+: ((bitflip|truncation|crash):|.*MESSAGE: (writes|full disk))" build/ctest.log |
  sed -E 's/^[0-9]+: (.*MESSAGE: )?/  /' || true
grep -E "tests passed|Total Test time" build/ctest.log
echo
echo "== storage tests under ASan + UBSan =="
KIV_BUILD_DIR=build-asan bash tools/build.sh -DKIV_WERROR=ON -DKIV_SANITIZE=ON -DKIV_STORAGE_ONLY=ON \
  -DCMAKE_BUILD_TYPE=Debug
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir build-asan --output-on-failure -j2
