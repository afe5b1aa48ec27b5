#!/usr/bin/env bash
# Captures post-RoPE queries, keys and values of SmolLM2-135M-Instruct over the first 8,192
# tokens of Pride and Prejudice (format kiv-capture-1, see tools/capture/README.md).
#
#   tools/capture/capture.sh [CACHE_DIR]       CACHE_DIR defaults to ${KIV_CACHE:-~/.cache/kiv}
#
# Fetches the model and the text first (both scripts exit at once when their output is there),
# then runs capture.py with its defaults into $CACHE/captures/smollm2-austen-8k. Exits at once
# when that capture is complete for the same parameters (it prints "capture: present at ...").
set -euo pipefail

[ $# -le 1 ] || { echo "usage: $0 [CACHE_DIR]" >&2; exit 1; }
CACHE=${1:-${KIV_CACHE:-$HOME/.cache/kiv}}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TOOLS=$(dirname "$HERE")
PYTHON=${PYTHON:-python3}

"$TOOLS/model/fetch_model.sh" "$CACHE"
"$TOOLS/data/austen.sh" "$CACHE"
exec "$PYTHON" "$HERE/capture.py" \
  --model "$CACHE/models/SmolLM2-135M-Instruct" \
  --text "$CACHE/text/austen/pride_and_prejudice.txt" \
  --out "$CACHE/captures/smollm2-austen-8k"
