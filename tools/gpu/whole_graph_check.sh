#!/usr/bin/env bash
# Runs THERE, on the GPU machine, after tools/gpu/device_setup.sh: the checks of the whole-step
# decode graph (the cache's attention captured with the model's operations), then where prefill
# spends its time. Logs and JSON to $OUT.
#
#   bash tools/gpu/whole_graph_check.sh [MODEL_DIR]   # default: random weights of SmolLM2's shape
#
#   1. the scan sized for a capacity with the count in device memory (kernels_scan_test);
#   2. the cache's decode step captured in a graph against the eager step (runtime_tiered_cache_test);
#   3. graph_check.sh: a tiered session's logits, eager against graphed, byte for byte; speed 4K/32K;
#   4. KIV_PROFILE=1 kiv bench speed at 64K: the prefill's phases.
set -uo pipefail
cd "$(dirname "$0")/../.."
source tools/gpu/env.sh
B=$KIV_BUILD_DIR
OUTDIR=${OUT:-$KIV_GPU/whole}
mkdir -p "$OUTDIR"
MODEL=${1:-/tmp/kiv-random-smollm2}
if [ ! -f "$MODEL/model.safetensors" ]; then
  python3 tools/gpu/make_random_model.py --shape same --tokenizer-from "$KIV_GPU/tokenizer" \
    --out "$MODEL" >"$OUTDIR/make-model.log" 2>&1 || { echo "no model"; tail -3 "$OUTDIR/make-model.log"; exit 1; }
fi
status=0
"$B/tests/kernels/kernels_scan_test" >"$OUTDIR/scan-test.log" 2>&1 || status=1
tail -3 "$OUTDIR/scan-test.log"
"$B/tests/runtime/runtime_tiered_cache_test" -tc='*CUDA*' >"$OUTDIR/tiered-test.log" 2>&1 || status=1
grep -E "MESSAGE|ERROR|CHECK|test cases|decode steps" "$OUTDIR/tiered-test.log" | tail -12
OUT=$OUTDIR bash tools/gpu/graph_check.sh "$MODEL" >"$OUTDIR/graph-check.log" 2>&1 || status=1
cat "$OUTDIR/graph-check.log" | tail -25
KIV_PROFILE=1 "$B/cli/kiv" bench speed --model "$MODEL" --contexts 65536 --full-max 0 --no-reopen \
  --decode-steps 16 --dir /tmp/kiv-prof --out "$OUTDIR/profile-64k.json" 2>"$OUTDIR/profile-64k.log" || status=1
grep -E "profile|tokens:" "$OUTDIR/profile-64k.log" | tail -12
rm -rf /tmp/kiv-prof
exit "$status"
