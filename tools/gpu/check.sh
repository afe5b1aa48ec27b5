#!/usr/bin/env bash
# Runs THERE, after tools/gpu/device_setup.sh: one call's worth of evidence for a change to the
# GPU path, packed so that it fits the device tool's few returned files.
#
#   bash tools/gpu/check.sh [STEPS]        STEPS: a comma list of
#     quick     tools/gpu/quick_check.sh (every GPU test, eager == graphed logits, 4K/32K decode)
#     prefill   256K prefill with KIV_PROFILE=1 (per-phase seconds of the cache)
#     prefill-ab  the same with the fused attention and with KIV_ATTENTION_REFERENCE=1
#     1m        kiv bench speed at 4K and 1M (decode median, prefill seconds, GPU memory)
#     1m-plain  the same with KIV_SCAN_CONDITIONAL=0 KIV_FUSED_QUERIES=0 (the full select
#               captured as plain nodes that return at once, not in a conditional node; the scan's
#               queries in a kernel of their own): the decode step before 2026-12-06, on one machine
#     1m-slow   the same with KIV_SCAN_QUICK_FINISH=0 (the guess finish's selects by histogram
#               levels to the end, one lane a chosen token's place): before 2026-12-07
#     1m-votes  the same with KIV_SCAN_ONE_VOTE=0 (the guess scan's ballot for every 8 rows, not
#               one vote a round): before the third 2026-12-07 session
#     1m-hostalloc  the same with KIV_RECORD_ARENA=hostalloc (the records in cudaHostAlloc memory,
#               not registered anonymous memory)
#     1m-last   the same with KIV_SCAN_SAMPLE=0 (each decode scan's guess from the layer's last
#               step, not from a sample of its own scores): before the fourth 2026-12-07 session
#   default: quick,1m. Speed flags: --no-scan-norms --evict-batch 16 (docs/performance.md).
#   The 1m steps run in the order given and may repeat (an A/B/A: 1m,1m-slow,1m).
#
# Writes $OUT/check.log (the summary: what passed, the printed speed lines) and
# $OUT/check.tgz (every log and JSON). Exit status: nonzero when a test failed.
set -uo pipefail
cd "$(dirname "$0")/../.."
source tools/gpu/env.sh
B=$KIV_BUILD_DIR
STEPS=${1:-quick,1m}
OUTDIR=${OUT:-$KIV_GPU/check}
mkdir -p "$OUTDIR"
work=$(mktemp -d)
MODEL=/tmp/kiv-random-smollm2
FLAGS=(--no-scan-norms --evict-batch 16)
status=0
log() { echo "$@" | tee -a "$OUTDIR/check.log"; }
has() { case ",$STEPS," in *",$1,"*) return 0 ;; esac; return 1; }

log "# check.sh $STEPS on $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)"
if has quick; then
  OUT=$work/quick bash tools/gpu/quick_check.sh "$MODEL" "${FLAGS[@]}" 2>&1 | tee -a "$OUTDIR/check.log"
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi
kiv_random_model same "$MODEL" >/dev/null 2>&1
if has prefill || has prefill-ab; then
  modes=fused; has prefill-ab && modes="fused reference"
  for mode in $modes; do
    env_set=""; [ "$mode" = reference ] && env_set="KIV_ATTENTION_REFERENCE=1"
    env KIV_PROFILE=1 $env_set "$B/cli/kiv" bench speed --model "$MODEL" --contexts 262144 \
      --full-max 0 --no-reopen "${FLAGS[@]}" --dir "$work/ks" --out "$work/prefill-256k-$mode.json" \
      >"$work/prefill-256k-$mode.log" 2>&1
    rm -rf "$work/ks"
    grep -E "^kiv" "$work/prefill-256k-$mode.log" | sed "s/^/$mode /" | tee -a "$OUTDIR/check.log"
  done
fi
run=0
for mode in ${STEPS//,/ }; do
  case $mode in
    1m) env_set="" ;;
    1m-plain) env_set="KIV_SCAN_CONDITIONAL=0 KIV_FUSED_QUERIES=0" ;;
    1m-slow) env_set="KIV_SCAN_QUICK_FINISH=0" ;;
    1m-votes) env_set="KIV_SCAN_ONE_VOTE=0" ;;
    1m-hostalloc) env_set="KIV_RECORD_ARENA=hostalloc" ;;
    1m-last) env_set="KIV_SCAN_SAMPLE=0" ;;
    *) continue ;;
  esac
  run=$((run + 1))
  name=speed-$run-$mode
  env $env_set "$B/cli/kiv" bench speed --model "$MODEL" --contexts 4096,1048576 --full-max 0 \
    --no-reopen "${FLAGS[@]}" --dir "$work/ks" --out "$work/$name.json" >"$work/$name.log" 2>&1
  rm -rf "$work/ks"
  grep -E "^(kiv|full)|GPU|memory" "$work/$name.log" | sed "s/^/$run $mode /" |
    tee -a "$OUTDIR/check.log"
done
tar czf "$OUTDIR/check.tgz" -C "$work" . && rm -rf "$work"
log "# status $status"
exit "$status"
