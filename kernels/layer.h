// Four of a Llama layer's small steps fused into one kernel each, for the GPU runner: RMSNorm
// (eight LibTorch operations in transformers' spelling), rotary embedding (five per tensor), the
// residual add with the RMSNorm after it, and SwiGLU's silu(gate) · up (two). A decode step is
// bound by how many kernels it runs (docs/performance.md has what this saved). The device twins
// of runtime/llama.cpp's LibTorch spelling:
//
//   RMSNorm:     h = float(x);  r = rsqrt(Σ h² / dim + eps);  out = T(float(w) · float(T(h · r)))
//   RoPE:        out[i] = T(float(T(x[i] · cos[i])) + float(T(rot[i] · sin[i]))),
//                rot[i] = −x[i + d/2] for i < d/2, else x[i − d/2]
//   AddRmsNorm:  sum = T(float(h) + float(o));  out = RMSNorm(sum)
//   SwiGLU:      out[i] = T(float(T(g / (1 + exp(−g)))) · float(up[i])),  g = float(gate[i])
//
// with T the run dtype's rounding (none for float32). RoPE rounds exactly as the separate
// operations do, so it is bit-exact with them; RMSNorm sums the squares in another order than
// torch's reduction, so r may differ from it by a few float ulps (then an output by a unit of T
// or two, rarely). AddRmsNorm's sum is bit-exact with torch's add, and its norm is the RMSNorm
// kernel's bit for bit (the same reduction). SwiGLU spells ATen's CUDA silu, `x / (1 + exp(-x))`
// in float with the device expf, and the multiply as torch rounds them, so it is expected to be
// bit-exact with at::silu and `*` on the GPU. A GPU check against LibTorch on the same inputs
// must confirm that: the kernel test has no LibTorch, and the CPU reference's std::exp may differ
// from the device's expf by an ulp (so the test allows a unit of T there).
// The CPU references below compute the same formulas, RMSNorm's sum in double.
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

// The residual add and the RMSNorm after it (a layer's h + o, then post_attention_layernorm).
struct AddRmsNormParams {
  const void* h = nullptr;       // [rows][dim] contiguous, `dtype`
  const void* o = nullptr;       // [rows][dim] contiguous, `dtype`
  const void* weight = nullptr;  // [dim] `dtype`
  void* sum = nullptr;           // [rows][dim] contiguous: T(h + o)
  void* out = nullptr;           // [rows][dim] contiguous: RMSNorm(sum)
  DType dtype = DType::kFloat32;
  uint32_t rows = 0, dim = 0;    // dim ≤ 16384
  float eps = 1e-5f;
};
int LaunchAddRmsNorm(const AddRmsNormParams& p, CUstream_st* stream, std::string* error = nullptr);

// A captured decode step's writes before its cold step, in one kernel instead of three: the new
// token's k and v rows into the hot tier's buffers at the row a device word holds (as
// index_copy_ with a device index), and q in float32 (exact from bf16) for the scan and re-rank.
struct DecodeKvWriteParams {
  const void* q = nullptr;         // [q_heads][head_dim]: head h at h · q_stride elements
  const void* k = nullptr;         // [kv_heads][head_dim]: head h at h · k_stride
  const void* v = nullptr;         // [kv_heads][head_dim]: head h at h · v_stride
  void* hot_k = nullptr;           // [kv_heads][hot_rows][head_dim]: head h at h · hot_stride
  void* hot_v = nullptr;           // the same layout and strides as hot_k
  const int64_t* row = nullptr;    // device: the row to write; outside [0, hot_rows) nothing is
  float* q_out = nullptr;          // [q_heads][head_dim] contiguous
  DType dtype = DType::kFloat32;   // of q, k, v and the hot buffers
  uint32_t q_heads = 0, kv_heads = 0, head_dim = 0;
  uint64_t q_stride = 0, k_stride = 0, v_stride = 0, hot_stride = 0;  // elements
  uint64_t hot_rows = 0;
};
int LaunchDecodeKvWrite(const DecodeKvWriteParams& p, CUstream_st* stream,
                        std::string* error = nullptr);
// LaunchDecodeKvWrite's checks of `p`, its reasons named `name`: 0 with *blocks = q_heads +
// 2 · kv_heads (one block a head), or cudaErrorInvalidValue with the reason in *error.
int CheckDecodeKvWrite(const DecodeKvWriteParams& p, const char* name, uint64_t* blocks,
                       std::string* error);

// silu(gate) · up from the output of the concatenated gate/up projection.
struct SwiGluParams {
  const void* gate_up = nullptr;  // [rows][2 · inter]: gate, then up; row stride in_stride elements
  void* out = nullptr;            // [rows][inter] contiguous, `dtype`
  DType dtype = DType::kFloat32;
  uint32_t rows = 0, inter = 0;
  uint64_t in_stride = 0;         // 0: 2 · inter
};
int LaunchSwiGlu(const SwiGluParams& p, CUstream_st* stream, std::string* error = nullptr);

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

inline void AddRmsNormReference(const float* h, const float* o, const float* weight, float* sum,
                                float* out, uint32_t rows, uint32_t dim, float eps, bool bf16) {
  for (uint64_t i = 0; i < uint64_t{rows} * dim; ++i)
    sum[i] = bf16 ? RoundBf16(h[i] + o[i]) : h[i] + o[i];
  RmsNormReference(sum, weight, out, rows, dim, eps, bf16);
}

// gate_up: [rows][2 · inter] contiguous; out: [rows][inter].
inline void SwiGluReference(const float* gate_up, float* out, uint32_t rows, uint32_t inter,
                            bool bf16) {
  auto T = [bf16](float v) { return bf16 ? RoundBf16(v) : v; };
  for (uint32_t t = 0; t < rows; ++t)
    for (uint32_t i = 0; i < inter; ++i) {
      const float g = gate_up[uint64_t{t} * 2 * inter + i];
      const float up = gate_up[uint64_t{t} * 2 * inter + inter + i];
      out[uint64_t{t} * inter + i] = T(T(g / (1.0f + std::exp(-g))) * up);
    }
}

// DecodeKvWrite on float values (the copy is exact in either dtype): q heads into q_out, the k and
// v rows into hot_k / hot_v at `row` (nothing when it is outside [0, hot_rows)).
inline void DecodeKvWriteReference(const float* q, const float* k, const float* v, float* hot_k,
                                   float* hot_v, int64_t row, float* q_out,
                                   const DecodeKvWriteParams& p) {
  const uint32_t d = p.head_dim;
  for (uint32_t h = 0; h < p.q_heads; ++h)
    for (uint32_t i = 0; i < d; ++i) q_out[uint64_t{h} * d + i] = q[h * p.q_stride + i];
  if (row < 0 || uint64_t(row) >= p.hot_rows) return;
  for (uint32_t h = 0; h < p.kv_heads; ++h)
    for (uint32_t i = 0; i < d; ++i) {
      hot_k[h * p.hot_stride + uint64_t(row) * d + i] = k[h * p.k_stride + i];
      hot_v[h * p.hot_stride + uint64_t(row) * d + i] = v[h * p.v_stride + i];
    }
}

}  // namespace kiv::kernels
