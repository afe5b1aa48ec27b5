#!/usr/bin/env bash
# Runs THERE, on the GPU machine, after tools/gpu/device_setup.sh: checks that decode steps
# replaying CUDA graphs (the default on CUDA; `--no-cuda-graphs` runs them eagerly) compute what
# the eager path computes, and times both.
#
#   bash tools/gpu/graph_check.sh MODEL_DIR     # SmolLM2, or random weights of a shape
#
#   1. the runner alone: tests/runtime's graph test (tiny models, full cache, bf16 and fp32);
#   2. a whole session on the tiered cache (GPU cold tier): logits_check.sh, ~3,000 tokens of
#      Emma, 48 greedy tokens, every step's float32 logits compared byte for byte;
#   3. `kiv bench speed` at 4K and 32K, eager and graphed, JSON to $OUT.
# Exit 0 only when 1 and 2 hold.
set -uo pipefail
cd "$(dirname "$0")/../.."
source tools/gpu/env.sh
B=$KIV_BUILD_DIR
OUTDIR=${OUT:-$KIV_GPU/graphs}
MODEL=${1:?usage: graph_check.sh MODEL_DIR}
mkdir -p "$OUTDIR"
work=$(mktemp -d)
status=0

if "$B/tests/runtime/runtime_llama_test" -tc='*CUDA graphs*' >"$work/test.log" 2>&1; then
  echo "graphs: runner test passed"
else
  echo "graphs: runner test FAILED"; status=1
fi
grep -E "MESSAGE|ERROR|CHECK|test cases" "$work/test.log" | tail -12

bash tools/gpu/logits_check.sh "$MODEL" || status=1

for mode in eager graphs; do
  flag="--no-cuda-graphs"; [ "$mode" = graphs ] && flag=""
  # shellcheck disable=SC2086
  "$B/cli/kiv" bench speed --model "$MODEL" --contexts 4096,32768 --full-max 4096 --no-reopen \
    $flag --dir "$work/speed" --out "$OUTDIR/speed-$mode.json" 2>"$work/speed-$mode.log" ||
    { echo "graphs: bench speed ($mode) failed"; tail -5 "$work/speed-$mode.log"; status=1; }
  echo "== $mode"; grep -E "^(kiv|full)" "$work/speed-$mode.log" | tail -4
done
rm -rf "$work"
exit "$status"
