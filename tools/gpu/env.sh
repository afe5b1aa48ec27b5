# Source me (bash): the environment for building and running kiv on the GPU machine, with the
# packages that tools/gpu/device_setup.sh unpacked into .gpu/prefix (it sources this file too).
#
#   source tools/gpu/env.sh
#
# Sets KIV_ROOT, KIV_GPU (.gpu), KIV_GPU_PREFIX (.gpu/prefix), KIV_CACHE (default .gpu/cache: an
# ignored folder of the checkout, so a warm machine keeps it between `run` calls), TORCH_PREFIX,
# and prepends .gpu/prefix to PATH, PKG_CONFIG_PATH, CMAKE_PREFIX_PATH, LD_LIBRARY_PATH and
# CPATH; .gpu/site (the gguf wheel) to PYTHONPATH. Idempotent.

KIV_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export KIV_ROOT
export KIV_GPU=$KIV_ROOT/.gpu
export KIV_GPU_PREFIX=$KIV_GPU/prefix
export KIV_CACHE=${KIV_CACHE:-$KIV_GPU/cache}
export KIV_BUILD_DIR=${KIV_GPU_BUILD_DIR:-$KIV_ROOT/build-gpu}

# Prepends $2 to the colon list named $1, once.
_kiv_prepend() {
  local cur=${!1:-}
  case ":$cur:" in *":$2:"*) return ;; esac
  export "$1=$2${cur:+:$cur}"
}

# nvcc: the CUDA toolkit's, when it is not on PATH already.
if ! command -v nvcc >/dev/null 2>&1; then
  for _d in /usr/local/cuda/bin /usr/local/cuda-13*/bin; do
    if [ -x "$_d/nvcc" ]; then _kiv_prepend PATH "$_d"; break; fi
  done
fi

_kiv_usr=$KIV_GPU_PREFIX/usr
_kiv_lib=$_kiv_usr/lib/x86_64-linux-gnu
if [ -d "$_kiv_usr" ]; then
  [ -d "$_kiv_usr/bin" ] && _kiv_prepend PATH "$_kiv_usr/bin"
  [ -d "$_kiv_usr/share/pkgconfig" ] && _kiv_prepend PKG_CONFIG_PATH "$_kiv_usr/share/pkgconfig"
  [ -d "$_kiv_lib/pkgconfig" ] && _kiv_prepend PKG_CONFIG_PATH "$_kiv_lib/pkgconfig"
  _kiv_prepend CMAKE_PREFIX_PATH "$_kiv_usr"
  # Not LIBRARY_PATH: the compiler would report it as an implicit link directory, and CMake then
  # leaves it out of the binaries' RPATH (device_setup.sh also passes it as CMAKE_BUILD_RPATH).
  [ -d "$_kiv_lib" ] && _kiv_prepend LD_LIBRARY_PATH "$_kiv_lib"
  [ -d "$_kiv_usr/include" ] && _kiv_prepend CPATH "$_kiv_usr/include"
fi
[ -d "$KIV_GPU/site" ] && _kiv_prepend PYTHONPATH "$KIV_GPU/site"
unset _kiv_usr _kiv_lib _d

if [ -z "${TORCH_PREFIX:-}" ]; then
  TORCH_PREFIX=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)' 2>/dev/null || true)
  export TORCH_PREFIX
fi
# Random weights of a model's shape in DIR unless it has them already (speed does not depend on the
# weights): kiv_random_model SHAPE DIR [TOKENIZER_DIR], SHAPE as make_random_model.py --shape
# takes it (same, 1b); the tokenizer from .gpu/tokenizer unless given.
kiv_random_model() {
  [ -f "$2/model.safetensors" ] || python3 "$KIV_ROOT/tools/gpu/make_random_model.py" \
    --shape "$1" --tokenizer-from "${3:-$KIV_GPU/tokenizer}" --out "$2"
}
# Tokenizers and transformers: never reach for the network (there is none there).
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
# Multi-GPU kinds: keep NVLink multicast off (KINDS.md); harmless on one GPU.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
