#!/usr/bin/env bash
# Runs THERE, after tools/gpu/device_setup.sh with both model halves (the two back-to-back calls of
# tools/gpu/README.md): kiv's fidelity on CUDA with the real SmolLM2-135M-Instruct weights.
#
#   bash tools/gpu/fidelity.sh [PARTS]     PARTS: a comma list of
#     kl            KL against the full cache (bf16, defaults, no codec arm, no recall)
#     needle        the needle grid (bf16, defaults)
#     needle-fp32   the needle grid with the model in float32 (KIV_DTYPE=float32), as on the CPU
#     faithful      the needle grid in float32 at the setting that passes, on the CPU, every needle
#                   the full cache passes (--window 1024 --tail-samples 1024 --candidates 4096;
#                   docs/quality.md), then the KL at it (bf16, no codec arm, no recall). Before
#                   883a633 the tail sample kept the cold step on the CPU and the grid alone ran
#                   ~11 minutes (2026-12-07); the parts below split it to fit a call each:
#     faithful-a    the grid's cells 0-9 at that setting (2K and 4K tokens; ~6 minutes)
#     faithful-b    cells 10-14 (8K tokens)
#     kl-faithful   the KL at that setting (bf16, no codec arm, no recall)
#     kl-faithful-fp32  the same with the model in float32 (KIV_DTYPE=float32), as on the CPU
#     faithful-cold-ab  the faithful grid's cells $KIV_NEEDLE_CELLS (default 12,13: 8K at depths
#                   0.5 and 0.75) in float32, the cold step on the GPU and, with KIV_GPU_COLD=0,
#                   on the CPU after the GPU's scan
#     cell-ab       the grid's cells $KIV_NEEDLE_CELLS (default 9: 4096 tokens, depth 0.9, the one
#                   the CPU passes and CUDA missed) in float32, once as is and once with each of
#                   KIV_ATTENTION_REFERENCE=1, KIV_UNFUSED_LAYER=1, KIV_SCAN_GUESS=0: which GPU
#                   path flips it; then each decode step's picks on CUDA and on the CPU
#                   (KIV_TRACE_RETRIEVAL), compared by tools/trace_diff.py into fidelity.log
#   default: kl,needle,needle-fp32
#
# JSON and logs to $OUT (or .gpu/fidelity): kl.json, needle.json, needle-fp32.json and one
# fidelity.log with every run's summary lines.
set -uo pipefail
cd "$(dirname "$0")/../.."
source tools/gpu/env.sh
B=$KIV_BUILD_DIR
OUTDIR=${OUT:-$KIV_GPU/fidelity}
mkdir -p "$OUTDIR"
PARTS=${1:-kl,needle,needle-fp32}
MODEL=$KIV_CACHE/models/SmolLM2-135M-Instruct
[ -f "$MODEL/.complete" ] || { echo "fidelity: no model at $MODEL (carry both halves)"; exit 1; }
F=(--model "$MODEL" --text-dir "$KIV_CACHE/text/austen" --device cuda)
has() { case ",$PARTS," in *",$1,"*) return 0 ;; esac; return 1; }
status=0
run() {  # name, env assignment or "", kiv bench fidelity arguments...
  local name=$1 env_set=$2; shift 2
  echo "== $name ($env_set $*)" >>"$OUTDIR/fidelity.log"
  if ! env $env_set "$B/cli/kiv" bench fidelity "${F[@]}" "$@" --out "$OUTDIR/$name.json" \
      2>>"$OUTDIR/fidelity.log"; then
    echo "$name: FAILED"; status=1
  fi
}
has kl && run kl "" --parts kl --no-codec-arm --no-recall
has needle && run needle "" --parts needle
has needle-fp32 && run needle-fp32 "KIV_DTYPE=float32" --parts needle
FAITHFUL=(--window 1024 --tail-samples 1024 --candidates 4096)
has faithful && run needle-faithful-fp32 "KIV_DTYPE=float32" --parts needle "${FAITHFUL[@]}"
has faithful-a && run needle-faithful-fp32-a "KIV_DTYPE=float32" --parts needle \
  --needle-cells 0,1,2,3,4,5,6,7,8,9 "${FAITHFUL[@]}"
has faithful-b && run needle-faithful-fp32-b "KIV_DTYPE=float32" --parts needle \
  --needle-cells 10,11,12,13,14 "${FAITHFUL[@]}"
{ has faithful || has kl-faithful; } &&
  run kl-faithful "" --parts kl --no-codec-arm --no-recall "${FAITHFUL[@]}"
has kl-faithful-fp32 &&
  run kl-faithful-fp32 "KIV_DTYPE=float32" --parts kl --no-codec-arm --no-recall "${FAITHFUL[@]}"
if has faithful-cold-ab; then
  CELLS=(--parts needle --needle-cells "${KIV_NEEDLE_CELLS:-12,13}" "${FAITHFUL[@]}")
  run faithful-cells-gpu-cold "KIV_DTYPE=float32" "${CELLS[@]}"
  run faithful-cells-cpu-cold "KIV_DTYPE=float32 KIV_GPU_COLD=0" "${CELLS[@]}"
fi
if has cell-ab; then
  CELLS=(--parts needle --needle-cells "${KIV_NEEDLE_CELLS:-9}")
  run cell-fp32 "KIV_DTYPE=float32" "${CELLS[@]}"
  run cell-fp32-reference "KIV_DTYPE=float32 KIV_ATTENTION_REFERENCE=1" "${CELLS[@]}"
  run cell-fp32-unfused "KIV_DTYPE=float32 KIV_UNFUSED_LAYER=1" "${CELLS[@]}"
  run cell-fp32-no-guess "KIV_DTYPE=float32 KIV_SCAN_GUESS=0" "${CELLS[@]}"
  # Each decode step's picks on CUDA and on this machine's CPU, compared (tools/trace_diff.py).
  rm -f "$OUTDIR/cuda.trace" "$OUTDIR/cpu.trace"
  env KIV_DTYPE=float32 KIV_TRACE_RETRIEVAL="$OUTDIR/cuda.trace" "$B/cli/kiv" bench fidelity \
    "${F[@]}" "${CELLS[@]}" --out /dev/null 2>>"$OUTDIR/fidelity.log"
  env KIV_TRACE_RETRIEVAL="$OUTDIR/cpu.trace" "$B/cli/kiv" bench fidelity --model "$MODEL" \
    --text-dir "$KIV_CACHE/text/austen" --device cpu "${CELLS[@]}" --out /dev/null \
    2>>"$OUTDIR/fidelity.log"
  python3 tools/trace_diff.py "$OUTDIR/cpu.trace" "$OUTDIR/cuda.trace" --show 8 >>"$OUTDIR/fidelity.log"
fi
tail -40 "$OUTDIR/fidelity.log"
exit "$status"
