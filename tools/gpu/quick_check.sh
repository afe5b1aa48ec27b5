#!/usr/bin/env bash
# Runs THERE, after tools/gpu/device_setup.sh: the GPU tests of the layer, scan, encode, merge and
# attention kernels, of the prefill attention and of the cache, one tiered session's logits eager
# against graphed (byte for byte), and decode speed at 4K and 32K with the fused layer kernels and
# without (KIV_UNFUSED_LAYER=1). Logs and JSON to $OUT.
#
#   bash tools/gpu/quick_check.sh [MODEL_DIR] [extra kiv bench speed arguments]
set -uo pipefail
cd "$(dirname "$0")/../.."
source tools/gpu/env.sh
B=$KIV_BUILD_DIR
OUTDIR=${OUT:-$KIV_GPU/quick}
mkdir -p "$OUTDIR"
MODEL=${1:-/tmp/kiv-random-smollm2}; shift || true
kiv_random_model same "$MODEL" >/dev/null 2>&1 || { echo "no model"; exit 1; }
status=0
for t in kernels/kernels_layer_test kernels/kernels_scan_test kernels/kernels_encode_test kernels/kernels_merge_test kernels/kernels_gather_test \
         kernels/kernels_attention_test runtime/runtime_attention_test runtime/runtime_tiered_cache_test; do
  log=$OUTDIR/$(basename "$t").log
  if "$B/tests/$t" >"$log" 2>&1; then echo "$t: passed"; else echo "$t: FAILED"; status=1; grep -B2 -A8 ERROR "$log" | head -30; fi
done
grep -h "MESSAGE" "$OUTDIR"/kernels_layer_test.log "$OUTDIR"/kernels_scan_test.log | grep -E "share|exactly" | cut -c1-200
"$B/tests/runtime/runtime_llama_test" -tc='*CUDA graphs*' >"$OUTDIR/llama-graphs.log" 2>&1 || { echo "llama graphs test FAILED"; status=1; }
grep -E "test cases" "$OUTDIR/llama-graphs.log"
bash tools/gpu/logits_check.sh "$MODEL" || status=1
work=$(mktemp -d)
for mode in fused unfused; do
  env_set=""; [ "$mode" = unfused ] && env_set="KIV_UNFUSED_LAYER=1"
  env $env_set "$B/cli/kiv" bench speed --model "$MODEL" --contexts 4096,32768 --full-max 4096 --no-reopen \
    --dir "$work/speed" --out "$OUTDIR/speed-$mode.json" "$@" 2>&1 | grep -E "^(kiv|full)" | sed "s/^/$mode /"
done
rm -rf "$work"
exit "$status"
