// Eviction's encoding on the GPU; see encode.h for what and why.
//
// Two kernels:
//   EncodeRecordsKernel  one thread per (slot, token): its s record slices in turn, each the
//                        CPU's Encode step for step (Hadamard, grids, packing), and the key's norm
//                        from the codes just packed (what DecodeStoredKey would return)
//   SignKernel           one block per (slot, 8 tokens), one thread per signature bit: the row's
//                        dot product with each token's key in index order, then a warp ballot
// Exactness: every float operation is an explicit __fadd_rn / __fmul_rn / __fdiv_rn /
// __fsqrt_rn in the CPU code's order (--fmad=false for the rest), min and max keep the first of
// equal values as std::min / std::max do (−0 and +0 compare equal but are stored differently),
// and FloatToHalf is index/half.h's integer code. The CPU build has no FMA (x86-64 without -mfma).
#include "kernels/encode.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdio>

#include "kernels/cuda_call.cuh"

namespace kiv::kernels {
namespace {

using index::kRecordBytes;
using index::kRecordDim;

constexpr uint32_t kRecordThreads = 128;
constexpr uint32_t kSignTokens = 8;  // tokens a SignKernel block signs: each row read once for 8
constexpr uint32_t kMaxSlices = 4;
constexpr float kHalfMax = 65504.0f;

// index/half.h FloatToHalf, the same integer steps.
__device__ __forceinline__ uint32_t FloatToHalf(float f) {
  const uint32_t x = __float_as_uint(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t abs = x & 0x7FFFFFFFu;
  if (abs >= 0x7F800000u) return sign | (abs > 0x7F800000u ? 0x7E00u : 0x7C00u);
  if (abs >= 0x477FF000u) return sign | 0x7C00u;
  if (abs < 0x38800000u) {
    if (abs < 0x33000000u) return sign;
    const uint32_t e = abs >> 23;
    const uint32_t m = (abs & 0x7FFFFFu) | 0x800000u;
    const uint32_t shift = 126 - e;
    uint32_t half = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1), mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (half & 1))) ++half;
    return sign | half;
  }
  uint32_t half = (abs >> 13) - ((127u - 15u) << 10);
  const uint32_t rem = abs & 0x1FFFu;
  if (rem > 0x1000u || (rem == 0x1000u && (half & 1))) ++half;
  return sign | half;
}

// The conversion back is exact, so the hardware's equals index/half.h's for every non-NaN half.
__device__ __forceinline__ float HalfToFloat(uint32_t h) {
  return __half2float(__ushort_as_half(static_cast<unsigned short>(h)));
}

// std::min / std::max / std::clamp exactly: the first argument wins unless the other compares
// strictly past it (so of −0 and +0 the earlier stays, and a NaN `v` passes clamp unchanged).
__device__ __forceinline__ float StdMin(float a, float b) { return b < a ? b : a; }
__device__ __forceinline__ float StdMax(float a, float b) { return a < b ? b : a; }
__device__ __forceinline__ float StdClamp(float v, float lo, float hi) {
  return v < lo ? lo : hi < v ? hi : v;
}

// record.cpp RoundHalfEven: x + 1.5 · 2^23 − 1.5 · 2^23 below 2^22 in magnitude.
__device__ __forceinline__ float RoundHalfEven(float x) {
  constexpr float kMagic = 12582912.0f;
  return fabsf(x) < 4194304.0f ? __fsub_rn(__fadd_rn(x, kMagic), kMagic) : x;
}

__device__ __forceinline__ float Load(const void* p, DType dtype, uint64_t i) {
  if (dtype == DType::kFloat32) return static_cast<const float*>(p)[i];
  return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
}

struct Grid {
  uint32_t scale_h, min_h;
  float scale, min;
};

// record.cpp MakeGrid.
template <uint32_t kBits>
__device__ __forceinline__ Grid MakeGrid(const float (&x)[kRecordDim]) {
  float lo = x[0], hi = x[0];
#pragma unroll
  for (uint32_t i = 1; i < kRecordDim; ++i) {
    lo = StdMin(lo, x[i]);
    hi = StdMax(hi, x[i]);
  }
  const float levels = static_cast<float>((1u << kBits) - 1);
  lo = StdClamp(lo, -kHalfMax, kHalfMax);
  hi = StdClamp(hi, -kHalfMax, kHalfMax);
  Grid g;
  g.min_h = FloatToHalf(lo);
  g.min = HalfToFloat(g.min_h);
  g.scale_h = FloatToHalf(StdMin(__fdiv_rn(__fsub_rn(hi, g.min), levels), kHalfMax));
  g.scale = HalfToFloat(g.scale_h);
  if (__fadd_rn(__fmul_rn(g.scale, levels), g.min) < hi && g.scale < kHalfMax) {
    ++g.scale_h;
    g.scale = HalfToFloat(g.scale_h);
  }
  return g;
}

__device__ __forceinline__ void Store16(uint8_t* p, uint32_t v) {
  p[0] = uint8_t(v);
  p[1] = uint8_t(v >> 8);
}

// record.cpp Pack into out[8 · kBits bytes], then the grid (scale, min) after the codes. With
// norm2: adds each stored value's square, decoded as Unpack does (min + code · scale), in order.
template <uint32_t kBits>
__device__ __forceinline__ void PackVector(const float (&x)[kRecordDim], uint8_t* out,
                                           float* norm2) {
  const Grid g = MakeGrid<kBits>(x);
  constexpr uint32_t kTop = (1u << kBits) - 1;
  uint64_t acc = 0;
  uint32_t held = 0;
#pragma unroll
  for (uint32_t i = 0; i < kRecordDim; ++i) {
    uint32_t q = 0;
    if (g.scale > 0.0f) {
      const float t = RoundHalfEven(__fdiv_rn(__fsub_rn(x[i], g.min), g.scale));
      q = static_cast<uint32_t>(StdClamp(t, 0.0f, static_cast<float>(kTop)));
    }
    if (norm2) {
      const float v = __fadd_rn(g.min, __fmul_rn(static_cast<float>(q), g.scale));
      *norm2 = __fadd_rn(*norm2, __fmul_rn(v, v));
    }
    acc |= uint64_t{q} << held;
    for (held += kBits; held >= 8; held -= 8, acc >>= 8) *out++ = uint8_t(acc);
  }
  Store16(out, g.scale_h);
  Store16(out + 2, g.min_h);
}

// index::Hadamard64: the same butterfly stages in the same order, then · 1/8 (exact).
__device__ __forceinline__ void Hadamard64(float (&x)[kRecordDim]) {
#pragma unroll
  for (uint32_t len = 1; len < kRecordDim; len <<= 1) {
#pragma unroll
    for (uint32_t i = 0; i < kRecordDim; i += 2 * len) {
#pragma unroll
      for (uint32_t j = i; j < i + len; ++j) {
        const float a = x[j], b = x[j + len];
        x[j] = __fadd_rn(a, b);
        x[j + len] = __fsub_rn(a, b);
      }
    }
  }
#pragma unroll
  for (uint32_t i = 0; i < kRecordDim; ++i) x[i] = __fmul_rn(x[i], 0.125f);
}

template <uint32_t kKeyBits>
__global__ void __launch_bounds__(kRecordThreads) EncodeRecordsKernel(EncodeParams p) {
  constexpr uint32_t kValueBits = 12 - kKeyBits;
  const uint64_t item = uint64_t{blockIdx.x} * kRecordThreads + threadIdx.x;
  if (item >= uint64_t{p.num_slots} * p.count) return;
  const uint32_t slot = uint32_t(item / p.count), t = uint32_t(item % p.count);
  const uint32_t slices = p.head_dim / kRecordDim;
  const uint64_t row = uint64_t{slot} * p.slot_stride + uint64_t{t} * p.head_dim;
  uint8_t* record = p.records + item * slices * kRecordBytes;
  float norm2 = 0.0f;
  for (uint32_t s = 0; s < slices; ++s, record += kRecordBytes) {
    float x[kRecordDim];
#pragma unroll
    for (uint32_t i = 0; i < kRecordDim; ++i)
      x[i] = Load(p.keys, p.in_dtype, row + s * kRecordDim + i);
    if (p.codec.rotate) Hadamard64(x);
    PackVector<kKeyBits>(x, record, p.norms ? &norm2 : nullptr);
#pragma unroll
    for (uint32_t i = 0; i < kRecordDim; ++i)
      x[i] = Load(p.values, p.in_dtype, row + s * kRecordDim + i);
    PackVector<kValueBits>(x, record + 8 * kKeyBits + 4, nullptr);
  }
  if (p.norms) p.norms[item] = __fsqrt_rn(norm2);
}

// Bit i of token t: row i of the projection · key t, summed in index order (the CPU's Sign).
__global__ void SignKernel(EncodeParams p) {
  extern __shared__ float keys[];  // [kSignTokens][d]
  const uint32_t slot = blockIdx.y, t0 = blockIdx.x * kSignTokens, d = p.head_dim;
  const uint32_t tokens = min(kSignTokens, p.count - t0);
  const uint64_t base = uint64_t{slot} * p.slot_stride + uint64_t{t0} * d;
  for (uint32_t e = threadIdx.x; e < tokens * d; e += blockDim.x)
    keys[e] = Load(p.keys, p.in_dtype, base + e);
  __syncthreads();
  const uint32_t i = threadIdx.x;  // blockDim.x = bits
  const float* row = p.projection + uint64_t{i} * d;
  float dot[kSignTokens] = {};
  for (uint32_t j = 0; j < d; ++j) {
    const float c = __ldg(row + j);
#pragma unroll
    for (uint32_t u = 0; u < kSignTokens; ++u)
      dot[u] = __fadd_rn(dot[u], __fmul_rn(c, keys[(u < tokens ? u : 0) * d + j]));
  }
  const uint32_t words32 = p.bits / 32;  // the signature as little-endian 32-bit halves
  auto* out = reinterpret_cast<uint32_t*>(p.signatures) +
              (uint64_t{slot} * p.count + t0) * words32 + i / 32;
#pragma unroll
  for (uint32_t u = 0; u < kSignTokens; ++u) {
    const uint32_t bits = __ballot_sync(0xFFFFFFFFu, dot[u] > 0.0f);
    if (u < tokens && (i & 31) == 0) out[u * words32] = bits;
  }
}

}  // namespace

std::string CheckEncode(const EncodeParams& p) {
  char buf[160];
  auto fail = [&](const char* what, uint64_t v) {
    std::snprintf(buf, sizeof buf, "encode: %s (%llu) is not supported", what,
                  static_cast<unsigned long long>(v));
    return std::string(buf);
  };
  if (p.num_slots == 0 || p.num_slots > 65535) return fail("num_slots outside 1..65535", p.num_slots);
  if (p.head_dim == 0 || p.head_dim % kRecordDim || p.head_dim > kMaxSlices * kRecordDim)
    return fail("head_dim not 64, 128, 192 or 256", p.head_dim);
  if (p.codec.key_bits + p.codec.value_bits != 12 || p.codec.key_bits < 4 || p.codec.key_bits > 6)
    return fail("codec key_bits not 4, 5 or 6 with key_bits + value_bits = 12", p.codec.key_bits);
  if (p.in_dtype != DType::kFloat32 && p.in_dtype != DType::kBFloat16)
    return fail("in_dtype", uint32_t(p.in_dtype));
  if (p.slot_stride < uint64_t{p.count} * p.head_dim) return fail("slot_stride below count · d", p.slot_stride);
  if (p.count > 0 && (!p.keys || !p.values || !p.records))
    return "encode: keys, values and records must be set";
  if (p.projection) {
    if (p.bits != 64 && p.bits != 128 && p.bits != 256) return fail("bits not 64, 128 or 256", p.bits);
    if (!p.signatures) return "encode: a projection needs signatures to write";
  }
  return {};
}

int LaunchEncode(const EncodeParams& p, CUstream_st* stream, std::string* error) {
  const std::string why = CheckEncode(p);
  if (!why.empty()) {
    if (error)
      *error = why;
    else
      std::fprintf(stderr, "%s\n", why.c_str());
    return int(cudaErrorInvalidValue);
  }
  if (p.count == 0) return int(cudaSuccess);
  const uint64_t items = uint64_t{p.num_slots} * p.count;
  const dim3 grid(uint32_t((items + kRecordThreads - 1) / kRecordThreads));
  switch (p.codec.key_bits) {
    case 4: EncodeRecordsKernel<4><<<grid, kRecordThreads, 0, stream>>>(p); break;
    case 5: EncodeRecordsKernel<5><<<grid, kRecordThreads, 0, stream>>>(p); break;
    default: EncodeRecordsKernel<6><<<grid, kRecordThreads, 0, stream>>>(p); break;
  }
  KIV_CUDA_CALL(cudaGetLastError());
  if (p.projection) {
    const dim3 sign_grid((p.count + kSignTokens - 1) / kSignTokens, p.num_slots);
    const size_t shared = size_t{kSignTokens} * p.head_dim * sizeof(float);
    SignKernel<<<sign_grid, p.bits, shared, stream>>>(p);
    KIV_CUDA_CALL(cudaGetLastError());
  }
  return int(cudaSuccess);
}

}  // namespace kiv::kernels
