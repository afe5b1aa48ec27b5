#!/usr/bin/env bash
# Runs THERE, on the GPU machine, after tools/gpu/device_setup.sh (graph_check.sh and
# quick_check.sh call it): one tiered session, ~3,000 tokens of Emma and 48 greedy tokens, run
# eagerly and with CUDA graphs; every step's float32 logits must be identical byte for byte
# (`kiv run --logits-out`), and so must the answers. Exit 0 only then.
#
#   bash tools/gpu/logits_check.sh MODEL_DIR     # KIV_LOGITS_DEVICE=cpu runs it on the CPU
#   KIV_LOGITS_BYTES=80000 (default 12000): a longer prompt (~20K tokens: more than the 16,384
#   cold tokens below which the decode scans gather every token, so their guesses are sampled)
set -uo pipefail
cd "$(dirname "$0")/../.."
source tools/gpu/env.sh
B=$KIV_BUILD_DIR
MODEL=${1:?usage: logits_check.sh MODEL_DIR}
DEVICE=${KIV_LOGITS_DEVICE:-cuda}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
status=0
head -c "${KIV_LOGITS_BYTES:-12000}" "$KIV_CACHE/text/austen/emma.txt" >"$work/prompt.txt"
for mode in eager graphs; do
  flag="--no-cuda-graphs"; [ "$mode" = graphs ] && flag=""
  # shellcheck disable=SC2086
  "$B/cli/kiv" run --model "$MODEL" --device "$DEVICE" $flag --prompt-file "$work/prompt.txt" \
    --max-new 48 --logits-out "$work/logits-$mode.bin" "Who is Emma?" \
    >"$work/answer-$mode.txt" 2>"$work/run-$mode.log" || { echo "logits: kiv run ($mode) failed"; tail -5 "$work/run-$mode.log"; status=1; }
  tail -1 "$work/run-$mode.log"
done
if cmp -s "$work/logits-eager.bin" "$work/logits-graphs.bin" && [ -s "$work/logits-eager.bin" ]; then
  echo "logits: a tiered session's $(($(stat -c %s "$work/logits-eager.bin") / 4)) logits identical, eager and graphed"
else
  echo "logits: a tiered session's logits DIFFER between eager and graphed"; status=1
fi
cmp -s "$work/answer-eager.txt" "$work/answer-graphs.txt" || { echo "logits: answers differ"; status=1; }
exit "$status"
