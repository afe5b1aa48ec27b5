// Two of a Llama layer's small steps fused into one kernel each, for the GPU runner: RMSNorm
// (eight LibTorch operations in transformers' spelling) and rotary embedding (five per tensor).
// A layer runs RMSNorm twice and RoPE twice (q and k): 26 LibTorch operations, here 4 kernels (a
// decode step is bound by how many kernels it runs; docs/performance.md has what this saved).
// The device twins of runtime/llama.cpp's LibTorch spelling:
//
//   RMSNorm:  h = float(x);  r = rsqrt(Σ h² / dim + eps);  out = T(float(w) · float(T(h · r)))
//   RoPE:     out[i] = T(float(T(x[i] · cos[i])) + float(T(rot[i] · sin[i]))),
//             rot[i] = −x[i + d/2] for i < d/2, else x[i − d/2]
//
// with T the run dtype's rounding (none for float32). RoPE rounds exactly as the separate
// operations do, so it is bit-exact with them; RMSNorm sums the squares in another order than
// torch's reduction, so r may differ from it by a few float ulps (then an output by a unit of T
// or two, rarely). The CPU references below compute the same formulas, RMSNorm's sum in double.
//
// Plain C++: no CUDA headers. Launchers return a cudaError_t as int (0 = cudaSuccess) and put
// the reason for a refused shape in `*error`.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>
#include <string>

#include "kernels/dtype.h"

namespace kiv::kernels {

struct RmsNormParams {
  const void* x = nullptr;       // [rows][dim], row stride x_stride elements, `dtype`
  const void* weight = nullptr;  // [dim] `dtype`
  void* out = nullptr;           // [rows][dim], row stride out_stride elements, `dtype`
  DType dtype = DType::kFloat32;
  uint32_t rows = 0, dim = 0;    // dim ≤ 16384
  uint64_t x_stride = 0, out_stride = 0;  // 0: dim
  float eps = 1e-5f;
};
int LaunchRmsNorm(const RmsNormParams& p, CUstream_st* stream, std::string* error = nullptr);

struct RopeParams {
  const void* x = nullptr;    // [rows][heads][d]: element (t, h, i) at t · x_stride + h · d + i
  void* out = nullptr;        // the same layout with out_stride; may not overlap x
  const void* cos = nullptr;  // [rows][d] contiguous, `dtype`
  const void* sin = nullptr;  // [rows][d] contiguous, `dtype`
  DType dtype = DType::kFloat32;
  uint32_t rows = 0, heads = 0, head_dim = 0;  // head_dim even, ≤ 1024
  uint64_t x_stride = 0, out_stride = 0;       // 0: heads · head_dim
};
int LaunchRope(const RopeParams& p, CUstream_st* stream, std::string* error = nullptr);

// ---- CPU references (float in and out; bf16 = true rounds where T does for bfloat16) ----

// Round to the nearest bfloat16, ties to even, returned as its float value (NaN stays NaN).
inline float RoundBf16(float f) {
  uint32_t u = std::bit_cast<uint32_t>(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return f;
  u = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
  return std::bit_cast<float>(u);
}

inline void RmsNormReference(const float* x, const float* weight, float* out, uint32_t rows,
                             uint32_t dim, float eps, bool bf16) {
  auto T = [bf16](float v) { return bf16 ? RoundBf16(v) : v; };
  for (uint32_t t = 0; t < rows; ++t) {
    const float* row = x + uint64_t{t} * dim;
    double sum = 0.0;
    for (uint32_t i = 0; i < dim; ++i) sum += double(row[i]) * row[i];
    const float r = 1.0f / std::sqrt(float(sum / dim) + eps);
    for (uint32_t i = 0; i < dim; ++i) out[uint64_t{t} * dim + i] = T(weight[i] * T(row[i] * r));
  }
}

inline void RopeReference(const float* x, const float* cos, const float* sin, float* out,
                          uint32_t rows, uint32_t heads, uint32_t d, bool bf16) {
  auto T = [bf16](float v) { return bf16 ? RoundBf16(v) : v; };
  for (uint32_t t = 0; t < rows; ++t)
    for (uint32_t h = 0; h < heads; ++h) {
      const float* v = x + (uint64_t{t} * heads + h) * d;
      for (uint32_t i = 0; i < d; ++i) {
        const float rot = i < d / 2 ? -v[i + d / 2] : v[i - d / 2];
        const float a = T(v[i] * cos[uint64_t{t} * d + i]);
        const float b = T(rot * sin[uint64_t{t} * d + i]);
        out[(uint64_t{t} * heads + h) * d + i] = T(a + b);
      }
    }
}

}  // namespace kiv::kernels
