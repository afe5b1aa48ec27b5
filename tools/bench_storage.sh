#!/usr/bin/env bash
# Storage benchmarks (programs that write JSON, not tests): append throughput through io_uring
# and the kill -9 crash soak. Results go to ${1:-build/results}/. Needs a build (tools/build.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-build/results}
DIR=${KIV_BENCH_DIR:-/tmp}
mkdir -p "$OUT"
build/cli/kiv bench append --dir "$DIR" --gib 2 --runs 5 --out "$OUT/append.json"
build/tests/storage/kiv_crash_soak --trials "${KIV_CRASH_TRIALS:-2000}" --seed 11 --dir "$DIR" \
  --out "$OUT/crash_soak.json"
echo "results in $OUT/"
