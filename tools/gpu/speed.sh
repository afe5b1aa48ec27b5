#!/usr/bin/env bash
# Runs THERE, on the GPU machine, after tools/gpu/device_setup.sh: `kiv bench speed` for SmolLM2
# (real weights) and for a random-weight Llama of about 1B parameters (speed only), JSON to $OUT.
#
#   bash tools/gpu/speed.sh [smollm2|1b|both] [extra kiv bench speed arguments]
#
#   KIV_SPEED_CONTEXTS=4096,32768,...   context lengths (default: 4K, 32K, 128K, 512K, 1M)
#   KIV_SPEED_FULL_MAX=N                full-cache arm up to N tokens (default 131072)
#   KIV_PROFILE=1                        also print where the time goes (kiv profile: lines;
#                                        synchronizes the device around each phase: slower)
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
TOK=$SMOL
status=0
if [ ! -f "$SMOL/.complete" ]; then
  # Without the real weights (they travel in two calls: tools/gpu/README.md), speed is measured on
  # random weights of the same shape: speed does not depend on the weights. prepare.sh carries
  # SmolLM2's tokenizer and config in .gpu/tokenizer for this.
  TOK=$KIV_GPU/tokenizer
  [ -f "$TOK/tokenizer.json" ] || { echo "speed: no model and no .gpu/tokenizer (carry it)"; exit 1; }
  SMOL=/tmp/kiv-random-smollm2
  echo "speed: SmolLM2's real weights are not here: random weights of its shape in $SMOL"
  kiv_random_model same "$SMOL" "$TOK" || exit 1
fi
if [ "$which" = smollm2 ] || [ "$which" = both ]; then
  echo "== kiv bench speed: SmolLM2-135M =="
  "$B/cli/kiv" bench speed --model "$SMOL" --contexts "$CONTEXTS" --full-max "$FULL_MAX" \
    --dir /tmp/kiv-speed "$@" --out "$OUTDIR/speed-smollm2.json" || status=1
  rm -rf /tmp/kiv-speed
fi
if [ "$which" = 1b ] || [ "$which" = both ]; then
  echo "== kiv bench speed: random-weight Llama 1B =="
  R1B=/tmp/kiv-random-1b
  kiv_random_model 1b "$R1B" "$TOK" || status=1
  "$B/cli/kiv" bench speed --model "$R1B" --contexts "$CONTEXTS" --full-max "$FULL_MAX" \
    --dir /tmp/kiv-speed "$@" --out "$OUTDIR/speed-1b.json" || status=1
  rm -rf /tmp/kiv-speed
fi
exit "$status"
