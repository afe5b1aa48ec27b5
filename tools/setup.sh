#!/usr/bin/env bash
# Installs what kiv needs to build and test, and nothing when all of it is already there.
# Debian packages through apt-get, LibTorch through pip (torch==2.13.0, the CPU build).
set -euo pipefail

APT_PACKAGES=(build-essential cmake ninja-build pkg-config git xxd
              liburing-dev libzstd-dev libxxhash-dev libcli11-dev doctest-dev
              libpcre2-dev libutf8proc-dev nlohmann-json3-dev)
TORCH_VERSION=2.13.0

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Exactly this torch: a newer one would pull several GB of CUDA packages.
have_torch=$(python3 -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || true)
if [ "$have_torch" != "$TORCH_VERSION" ]; then
  echo "setup: installing torch==$TORCH_VERSION (LibTorch for the runtime)"
  python3 -m pip install -q "torch==$TORCH_VERSION"
fi
echo "setup: dependencies present"
