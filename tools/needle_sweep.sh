#!/usr/bin/env bash
# The main job's needle (tools/up.sh: ~3,900 tokens of Emma, passkey 48213 at 25 %) answered by
# `kiv run` once per setting, to see which settings turn a near tie (docs/quality.md).
#
#   printf '%s\n' 'default' 'full --full-cache' 'k128 --k 128' | bash tools/needle_sweep.sh
#
# Each stdin line: a name, then `kiv run` flags. Prints "name [flags] (seconds): answer".
# KIV (default build/cli/kiv), KIV_NEEDLE_DEPTH (0.25), KIV_NEEDLE_KEY (48213).
set -euo pipefail
cd "$(dirname "$0")/.."
KIV=${KIV:-build/cli/kiv}
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
python3 tools/data/make_needle.py --book emma --chars 16000 --depth "${KIV_NEEDLE_DEPTH:-0.25}" \
  --exact-depth --key "${KIV_NEEDLE_KEY:-48213}" --out "$work/needle.txt" >/dev/null
Q="What is the secret passkey mentioned in the text above?"
while read -r name args; do
  [ -n "$name" ] || continue
  start=$SECONDS
  # shellcheck disable=SC2086  # the flags are meant to split
  answer=$("$KIV" run -q --max-new 24 --prompt-file "$work/needle.txt" $args "$Q" 2>&1 | tr '\n' ' ')
  echo "$name [$args] ($((SECONDS - start))s): $answer"
done
