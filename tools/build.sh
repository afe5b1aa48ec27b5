#!/usr/bin/env bash
# Configures and builds kiv into build/ (or $KIV_BUILD_DIR). Extra arguments go to cmake.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${KIV_BUILD_DIR:-build}
TORCH_PREFIX=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)' 2>/dev/null || true)
# Every option is spelled out so a reused build directory never keeps a stale one from its cache.
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DKIV_STORAGE_ONLY=OFF -DKIV_SANITIZE=OFF -DKIV_WERROR=OFF \
  ${TORCH_PREFIX:+-DCMAKE_PREFIX_PATH="$TORCH_PREFIX"} "$@" >/dev/null
cmake --build "$BUILD_DIR" -j"$(nproc)"
