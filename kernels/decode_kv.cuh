// Device helpers of a decode step's row writes (kernels/layer.h, DecodeKvWriteParams), shared by
// DecodeKvWriteKernel (layer.cu) and the kernel that also builds the step's scan queries
// (scan.cu, BuildDecodeScanQueries). CUDA only: included by .cu files.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/layer.h"

namespace kiv::kernels {

// Element i of a bf16 or float32 array, as a float (exact either way).
__device__ __forceinline__ float ReadAs(const void* p, DType t, uint64_t i) {
  return t == DType::kBFloat16 ? __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i])
                               : static_cast<const float*>(p)[i];
}

// Block `b` of the kv_heads k rows and then the kv_heads v rows: that head's row into the hot
// buffer at *p.row (nothing when it is outside [0, hot_rows)), as index_copy_ writes it.
__device__ __forceinline__ void WriteHotRow(const DecodeKvWriteParams& p, uint32_t b) {
  const uint32_t d = p.head_dim;
  const int64_t row = *p.row;
  if (row < 0 || uint64_t(row) >= p.hot_rows) return;
  const bool is_v = b >= p.kv_heads;
  const uint32_t h = b - (is_v ? p.kv_heads : 0);
  const void* src = is_v ? p.v : p.k;
  void* dst = is_v ? p.hot_v : p.hot_k;
  const uint64_t from = h * (is_v ? p.v_stride : p.k_stride);
  const uint64_t to = h * p.hot_stride + uint64_t(row) * d;
  for (uint32_t i = threadIdx.x; i < d; i += blockDim.x) {
    if (p.dtype == DType::kBFloat16)
      static_cast<__nv_bfloat16*>(dst)[to + i] = static_cast<const __nv_bfloat16*>(src)[from + i];
    else
      static_cast<float*>(dst)[to + i] = static_cast<const float*>(src)[from + i];
  }
}

}  // namespace kiv::kernels
