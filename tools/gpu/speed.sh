#!/usr/bin/env bash
# Runs THERE, on the GPU machine, after tools/gpu/device_setup.sh: `kiv bench speed` for SmolLM2
# (real weights) and for a random-weight Llama of about 1B parameters (speed only), JSON to $OUT.
#
#   bash tools/gpu/speed.sh [smollm2|1b|both] [extra kiv bench speed arguments]
#
#   KIV_SPEED_CONTEXTS=4096,32768,...   context lengths (default: 4K, 32K, 128K, 512K, 1M)
#   KIV_SPEED_FULL_MAX=N                full-cache arm up to N tokens (default 131072)
set -uo pipefail
cd "$(dirname "$0")/../.."
source tools/gpu/env.sh
B=$KIV_BUILD_DIR
OUTDIR=${OUT:-$KIV_GPU/speed}
mkdir -p "$OUTDIR"
which=${1:-both}; shift || true
CONTEXTS=${KIV_SPEED_CONTEXTS:-4096,32768,131072,524288,1048576}
FULL_MAX=${KIV_SPEED_FULL_MAX:-131072}
SMOL=$KIV_CACHE/models/SmolLM2-135M-Instruct
status=0
if [ "$which" = smollm2 ] || [ "$which" = both ]; then
  echo "== kiv bench speed: SmolLM2-135M =="
  "$B/cli/kiv" bench speed --model "$SMOL" --contexts "$CONTEXTS" --full-max "$FULL_MAX" \
    --dir /tmp/kiv-speed "$@" --out "$OUTDIR/speed-smollm2.json" || status=1
  rm -rf /tmp/kiv-speed
fi
if [ "$which" = 1b ] || [ "$which" = both ]; then
  echo "== kiv bench speed: random-weight Llama 1B =="
  R1B=/tmp/kiv-random-1b
  [ -f "$R1B/model.safetensors" ] || python3 tools/gpu/make_random_model.py --tokenizer-from "$SMOL" --out "$R1B" || status=1
  "$B/cli/kiv" bench speed --model "$R1B" --contexts "$CONTEXTS" --full-max "$FULL_MAX" \
    --dir /tmp/kiv-speed "$@" --out "$OUTDIR/speed-1b.json" || status=1
  rm -rf /tmp/kiv-speed
fi
exit "$status"
