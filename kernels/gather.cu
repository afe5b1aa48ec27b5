// Re-rank, gather and dequantize (see gather.h). Two kernels:
//   RerankScoreKernel   grid (⌈c/32⌉, P): 32 candidates' stored keys → [P][g][c] logits;
//   RerankSelectKernel  grid P: group weights, radix top-k, sort of the ids, gather + decode.
// And the tail sample's: TailSampleKernel, grid P: the draw of index::TailSample, gather + decode.
// The score work is spread over many blocks so that many record reads are in flight at once
// (over PCIe each read costs a round trip of about a microsecond); the selection is one block per
// problem because it needs every candidate's weight.
//
// Bit-exactness with index/record.cpp: every product and sum that the CPU rounds separately is
// written with __fmul_rn / __fadd_rn / __fsub_rn, which nvcc never contracts into an FMA, so the
// result does not depend on --fmad.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <utility>

#include "kernels/gather.h"

#include "kernels/cuda_call.cuh"

namespace kiv::kernels {
namespace {

using index::kRecordBytes;
using index::kRecordDim;

constexpr uint32_t kScoreTile = 32;  // candidates per score block: one warp's worth of columns
constexpr uint32_t kScoreThreads = 256;
constexpr uint32_t kQueryChunk = 32;  // queries held in shared memory at once
constexpr uint32_t kScoreWarps = kScoreThreads / 32;
constexpr uint32_t kQueriesPerThread = kQueryChunk / kScoreWarps;
constexpr uint32_t kSelectThreads = 512;
constexpr uint32_t kSelectWarps = kSelectThreads / 32;
constexpr uint32_t kItemsPerThread = kGatherMaxCandidates / kSelectThreads;
constexpr uint32_t kQueriesPerPass = 4;  // queries whose logits GroupWeightKeys loads at once
constexpr uint32_t kGatherSlices = 128;  // 104-byte records decoded per round of the select kernel
constexpr uint32_t kRecordWords = kRecordBytes / 4;
constexpr uint32_t kMaxKeyWords = (8 * 11 + 4) / 4;  // key codes + scale + min at 11 bits
constexpr uint32_t kScoreLoads =
    (kScoreTile * 2 * kMaxKeyWords + kScoreThreads - 1) / kScoreThreads;
constexpr uint32_t kGatherLoads =
    (kGatherSlices * kRecordWords + kSelectThreads - 1) / kSelectThreads;
// Selection key: weight bits (non-negative floats order as their bits) above the inverted
// candidate index, so a larger key is a larger weight, or an equal weight at a lower index.
constexpr uint32_t kIndexBits = 13;
static_assert(kGatherMaxCandidates <= (1u << kIndexBits));
constexpr int kKeyTopShift = 40;  // 8-bit radix digits from bit 40 down cover the 45-bit keys
static_assert(32 + kIndexBits <= kKeyTopShift + 8);

// index/half.h HalfToFloat: the conversion is exact, so the hardware's is the same for every
// finite or infinite half (a NaN's payload could differ; the encoder never stores one).
__device__ __forceinline__ float HalfToFloat(uint32_t h) {
  return __half2float(__ushort_as_half(static_cast<unsigned short>(h)));
}

// One 32-bit little-endian word of a record that is not 4-byte aligned.
__device__ __forceinline__ uint32_t LoadBytes(const uint8_t* p) {
  return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
}

// Copies the first `words` 32-bit words of record slices r0 .. r0 + n − 1 into raw[(r − r0) ·
// pitch ..]; slice r is slice r % slices of token ids[r / slices]. Every load a thread makes is
// issued before any is stored, so one round trip (about a microsecond over PCIe) covers them all.
template <uint32_t kThreads, uint32_t kLoads, bool kAligned>
__device__ __forceinline__ void LoadSlices(const uint8_t* base, uint64_t stride,
                                           const uint32_t* ids, uint32_t slices, uint32_t r0,
                                           uint32_t n, uint32_t words, uint32_t* raw,
                                           uint32_t pitch) {
  const uint32_t total = n * words;
  uint32_t v[kLoads];
#pragma unroll
  for (uint32_t u = 0; u < kLoads; ++u) {
    const uint32_t w = threadIdx.x + u * kThreads;
    if (w >= total) continue;
    const uint32_t r = w / words, word = w - r * words;
    const uint32_t t = (r0 + r) / slices, s = (r0 + r) % slices;
    const uint8_t* p = base + uint64_t{ids[t]} * stride + size_t{s} * kRecordBytes + 4 * word;
    v[u] = kAligned ? *reinterpret_cast<const uint32_t*>(p) : LoadBytes(p);
  }
#pragma unroll
  for (uint32_t u = 0; u < kLoads; ++u) {
    const uint32_t w = threadIdx.x + u * kThreads;
    if (w >= total) continue;
    const uint32_t r = w / words;
    raw[r * pitch + (w - r * words)] = v[u];
  }
}

// Code i of a little-endian bit stream of `bits`-bit codes (bits <= 11: a 3-byte window holds it;
// the window's last byte may be past the codes but never past the record).
__device__ __forceinline__ uint32_t Code(const uint8_t* codes, uint32_t i, uint32_t bits) {
  const uint32_t bit = i * bits, byte = bit >> 3;
  const uint32_t window =
      uint32_t(codes[byte]) | uint32_t(codes[byte + 1]) << 8 | uint32_t(codes[byte + 2]) << 16;
  return (window >> (bit & 7)) & ((1u << bits) - 1);
}

// x = min + code · scale, as record.cpp's Unpack rounds it. `grid` points at the fp16 scale, min.
__device__ __forceinline__ float Dequant(const uint8_t* codes, const uint8_t* grid, uint32_t i,
                                         uint32_t bits) {
  const float scale = HalfToFloat(uint32_t(grid[0]) | uint32_t(grid[1]) << 8);
  const float min = HalfToFloat(uint32_t(grid[2]) | uint32_t(grid[3]) << 8);
  return __fadd_rn(min, __fmul_rn(static_cast<float>(Code(codes, i, bits)), scale));
}

// x ← (H/8) x for a 64-vector held by one warp: lo = x[lane], hi = x[lane + 32]. The same
// butterfly stages in the same order as index::Hadamard64, so the result is bit-identical.
__device__ __forceinline__ void Hadamard64Warp(float& lo, float& hi) {
  const uint32_t lane = threadIdx.x & 31;
  for (uint32_t len = 1; len < 32; len <<= 1) {
    const float plo = __shfl_xor_sync(0xFFFFFFFFu, lo, int(len));
    const float phi = __shfl_xor_sync(0xFFFFFFFFu, hi, int(len));
    if (lane & len) {  // the upper element of its pair: a − b with a the partner's
      lo = __fsub_rn(plo, lo);
      hi = __fsub_rn(phi, hi);
    } else {
      lo = __fadd_rn(lo, plo);
      hi = __fadd_rn(hi, phi);
    }
  }
  const float a = lo, b = hi;
  lo = __fmul_rn(__fadd_rn(a, b), 0.125f);
  hi = __fmul_rn(__fsub_rn(a, b), 0.125f);
}

__device__ __forceinline__ void Store(void* out, DType dtype, size_t i, float x) {
  if (dtype == DType::kFloat32)
    static_cast<float*>(out)[i] = x;
  else
    static_cast<__nv_bfloat16*>(out)[i] = __float2bfloat16_rn(x);
}

__device__ __forceinline__ uint32_t CandidatesUsed(const RerankGatherParams& pr, uint32_t p) {
  const uint32_t c = pr.num_candidates;
  return pr.candidate_counts ? min(pr.candidate_counts[p], c) : c;
}

// Logits of 32 candidates of problem blockIdx.y against all g queries: logits[p][j][i].
__global__ void __launch_bounds__(kScoreThreads)
    RerankScoreKernel(RerankGatherParams pr, float inv_sqrt_d, float* logits) {
  __shared__ uint32_t ids[kScoreTile];
  __shared__ uint32_t raw[kScoreTile * 2][kMaxKeyWords];  // key part of each record slice
  __shared__ float key[kScoreTile * 2][kRecordDim + 1];   // +1: rows in different banks
  __shared__ __align__(16) float qs[kQueryChunk][2 * kRecordDim];
  const uint32_t p = blockIdx.y, i0 = blockIdx.x * kScoreTile, tid = threadIdx.x;
  const uint32_t c = pr.num_candidates, d = pr.head_dim, slices = d / kRecordDim, g = pr.group;
  const uint32_t kb = pr.codec.key_bits, key_words = 2 * kb + 1;
  const uint32_t warp = tid / 32, lane = tid % 32;
  // Queries [j0, j0 + kQueryChunk) of the problem into qs.
  auto load_queries = [&](uint32_t j0) {
    const uint32_t jn = min(kQueryChunk, g - j0);
    const float* q = pr.queries + (size_t{p} * g + j0) * d;
#pragma unroll 4
    for (uint32_t x = tid; x < jn * d; x += kScoreThreads) qs[x / d][x % d] = q[x];
  };
  // The ids, the record base and the first queries travel together; the count is waited for
  // only after they are on their way (ids past it are read but unused).
  const uint8_t* base = pr.records[p];
  if (tid < kScoreTile && i0 + tid < c) ids[tid] = pr.candidates[size_t{p} * c + i0 + tid];
  const uint32_t used = CandidatesUsed(pr, p);
  if (i0 >= used) return;
  const uint32_t tile = min(kScoreTile, used - i0);
  load_queries(0);
  __syncthreads();
  // Only the key part (codes, scale, min) of each slice: values are read for the winners only.
  if (((reinterpret_cast<uintptr_t>(base) | pr.record_stride_bytes) & 3) == 0)
    LoadSlices<kScoreThreads, kScoreLoads, true>(base, pr.record_stride_bytes, ids, slices, 0,
                                                 tile * slices, key_words, raw[0], kMaxKeyWords);
  else
    LoadSlices<kScoreThreads, kScoreLoads, false>(base, pr.record_stride_bytes, ids, slices, 0,
                                                  tile * slices, key_words, raw[0], kMaxKeyWords);
  __syncthreads();
  for (uint32_t x = tid; x < tile * slices * kRecordDim; x += kScoreThreads) {
    const uint32_t r = x / kRecordDim, e = x % kRecordDim;
    const uint8_t* bytes = reinterpret_cast<const uint8_t*>(raw[r]);
    key[r][e] = Dequant(bytes, bytes + 8 * kb, e, kb);
  }
  for (uint32_t j0 = 0; j0 < g; j0 += kQueryChunk) {
    const uint32_t jn = min(kQueryChunk, g - j0);
    if (j0 > 0) {
      __syncthreads();  // the previous chunk's products are done with qs
      load_queries(j0);
    }
    __syncthreads();  // the keys are decoded, the queries loaded
    if (pr.codec.rotate && !pr.queries_rotated) {
      for (uint32_t v = warp; v < jn * slices; v += kScoreThreads / 32) {
        float* x = &qs[v / slices][(v % slices) * kRecordDim];
        float lo = x[lane], hi = x[lane + 32];
        Hadamard64Warp(lo, hi);
        x[lane] = lo;
        x[lane + 32] = hi;
      }
      __syncthreads();
    }
    // Lane i of warp w: candidate i against queries w, w + 8, w + 16, w + 24 of the chunk, four
    // chains in flight. Each key element is read once for the four, the queries four elements at
    // a time (one broadcast read a warp); every dot is still its own chain over e, as the CPU's.
    if (lane < tile) {
      float logit[kQueriesPerThread] = {};
      for (uint32_t s = 0; s < slices; ++s) {
        const float* kv = key[lane * slices + s];
        float dot[kQueriesPerThread] = {};
        for (uint32_t e = 0; e < kRecordDim; e += 4) {
          const float k0 = kv[e], k1 = kv[e + 1], k2 = kv[e + 2], k3 = kv[e + 3];
#pragma unroll
          for (uint32_t u = 0; u < kQueriesPerThread; ++u) {
            const uint32_t jj = warp + u * kScoreWarps;
            if (jj >= jn) break;
            const float4 q4 = *reinterpret_cast<const float4*>(&qs[jj][s * kRecordDim + e]);
            dot[u] = __fadd_rn(dot[u], __fmul_rn(q4.x, k0));
            dot[u] = __fadd_rn(dot[u], __fmul_rn(q4.y, k1));
            dot[u] = __fadd_rn(dot[u], __fmul_rn(q4.z, k2));
            dot[u] = __fadd_rn(dot[u], __fmul_rn(q4.w, k3));
          }
        }
#pragma unroll
        for (uint32_t u = 0; u < kQueriesPerThread; ++u)
          logit[u] = __fadd_rn(logit[u], __fmul_rn(dot[u], inv_sqrt_d));
      }
#pragma unroll
      for (uint32_t u = 0; u < kQueriesPerThread; ++u) {
        const uint32_t jj = warp + u * kScoreWarps;
        if (jj < jn) logits[(size_t{p} * g + j0 + jj) * c + i0 + lane] = logit[u];
      }
    }
  }
}

// A row's values in rounds of kRound a lane (lane + 32u past `base`; −inf past `used`), every
// load of a round issued before any is used: one round trip a round of 1,024 candidates.
constexpr uint32_t kRound = 32;
__device__ __forceinline__ void LoadRound(const float* row, uint32_t base, uint32_t used,
                                          float (&v)[kRound]) {
  const uint32_t lane = threadIdx.x % 32;
#pragma unroll
  for (uint32_t u = 0; u < kRound; ++u) {
    const uint32_t i = base + u * 32 + lane;
    v[u] = i < used ? row[i] : -INFINITY;
  }
}

// The group weight of each candidate this thread holds (candidate tid + r · kSelectThreads), as
// a selection key: Σ_j exp(l_ji − max_j) / Σ_i exp(l_ji − max_j), summed in query order as
// RerankTopK does, but in float (RerankTopK's exp and row sums are double): the weights agree to
// a few float roundings, which only a near-tie at the k-th place can notice. First one warp per
// query finds its maximum and normaliser (`stats`, g entries); then every thread sums its
// candidates' weights over the queries, with no barrier between queries. (Block-wide reductions
// for each query took 0.35 ms for a prefill block of g = 192 queries.)
__device__ void GroupWeightKeys(const float* lg, uint32_t g, uint32_t c, uint32_t used,
                                float2* stats, uint64_t (&keys)[kItemsPerThread]) {
  const uint32_t tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  for (uint32_t j = warp; j < g; j += kSelectWarps) {
    const float* row = lg + size_t{j} * c;
    float mx = -INFINITY;
    for (uint32_t base = 0; base < used; base += 32 * kRound) {
      float v[kRound];
      LoadRound(row, base, used, v);
#pragma unroll
      for (uint32_t u = 0; u < kRound; ++u) mx = fmaxf(mx, v[u]);
    }
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xFFFFFFFFu, mx, o));
    float total = 0.0f;  // the second pass finds the row in L1
    for (uint32_t base = 0; base < used; base += 32 * kRound) {
      float v[kRound];
      LoadRound(row, base, used, v);
#pragma unroll
      for (uint32_t u = 0; u < kRound; ++u)
        if (base + u * 32 + lane < used) total += expf(v[u] - mx);
    }
    for (int o = 16; o > 0; o >>= 1) total += __shfl_xor_sync(0xFFFFFFFFu, total, o);
    if (lane == 0) stats[j] = make_float2(mx, total);
  }
  __syncthreads();
  // The weights, kQueriesPerPass queries' logits loaded at once (one round trip for them).
  float w[kItemsPerThread] = {};
  for (uint32_t j0 = 0; j0 < g; j0 += kQueriesPerPass) {
    const uint32_t jn = min(kQueriesPerPass, g - j0);
    float l[kQueriesPerPass][kItemsPerThread];
#pragma unroll
    for (uint32_t jj = 0; jj < kQueriesPerPass; ++jj)
#pragma unroll
      for (uint32_t r = 0; r < kItemsPerThread; ++r) {
        const uint32_t i = tid + r * kSelectThreads;
        l[jj][r] = jj < jn && i < used ? lg[size_t{j0 + jj} * c + i] : 0.0f;
      }
#pragma unroll
    for (uint32_t jj = 0; jj < kQueriesPerPass; ++jj) {
      if (jj >= jn) break;
      const float2 st = stats[j0 + jj];
#pragma unroll
      for (uint32_t r = 0; r < kItemsPerThread; ++r)
        if (tid + r * kSelectThreads < used) w[r] += __fdiv_rn(expf(l[jj][r] - st.x), st.y);
    }
  }
#pragma unroll
  for (uint32_t r = 0; r < kItemsPerThread; ++r) {
    const uint32_t i = tid + r * kSelectThreads;
    keys[r] =
        i < used ? uint64_t{__float_as_uint(w[r])} << kIndexBits | ((1u << kIndexBits) - 1 - i) : 0;
  }
}

// The smallest key the top `want` of the block's valid keys (they are distinct) share with none
// below them, by 8-bit radix digits from the top; it stops early once a whole digit bin is taken.
// `hist` is 256 counters, `shared3` three words of shared scratch.
__device__ uint64_t RadixSelect(const uint64_t (&keys)[kItemsPerThread], uint32_t used,
                                uint32_t want, uint32_t* hist, uint32_t* shared3) {
  const uint32_t tid = threadIdx.x, lane = tid % 32;
  uint64_t prefix = 0;
  for (int shift = kKeyTopShift; shift >= 0; shift -= 8) {
    if (tid < 256) hist[tid] = 0;
    __syncthreads();
#pragma unroll
    for (uint32_t r = 0; r < kItemsPerThread; ++r) {
      if (r * kSelectThreads >= used) break;  // the same for the whole block
      const bool active = tid + r * kSelectThreads < used && (keys[r] >> (shift + 8)) == prefix;
      const uint32_t digit = active ? uint32_t(keys[r] >> shift) & 0xFF : 256;
      // One atomic per distinct digit of the warp: the top digits are mostly equal.
      const uint32_t peers = __match_any_sync(0xFFFFFFFFu, digit);
      if (active && lane == uint32_t(__ffs(int(peers))) - 1) atomicAdd(&hist[digit], __popc(peers));
    }
    __syncthreads();
    if (tid < 32) {
      // Lane l owns digits 255 − 8l − q, q = 0..7: a scan from the top finds the digit where the
      // count of larger keys first reaches `want`.
      uint32_t count[8], local = 0;
      for (uint32_t q = 0; q < 8; ++q) local += count[q] = hist[255 - 8 * lane - q];
      uint32_t inclusive = local;
      for (int o = 1; o < 32; o <<= 1) {
        const uint32_t y = __shfl_up_sync(0xFFFFFFFFu, inclusive, o);
        if (int(lane) >= o) inclusive += y;
      }
      uint32_t before = inclusive - local;
      if (before < want && want <= inclusive) {
        for (uint32_t q = 0; q < 8; ++q) {
          if (before + count[q] >= want) {
            shared3[0] = 255 - 8 * lane - q;
            shared3[1] = want - before;
            shared3[2] = before + count[q] == want;  // the whole bin is taken
            break;
          }
          before += count[q];
        }
      }
    }
    __syncthreads();
    prefix = prefix << 8 | shared3[0];
    want = shared3[1];
    if (shared3[2]) return prefix << shift;
    // shared3 is rewritten only after the next pass's second barrier: everyone has read it.
  }
  return prefix;
}

// Decodes `n` gathered record slices from `raw` (one warp each): keys un-rotated, values. Slice
// r0 + r is slice (r0 + r) % s of row (r0 + r) / s, written at row `first_row` + that row of the
// [rows][d] outputs.
__device__ void DecodeSlices(const index::RecordCodec& codec, uint32_t d, DType dtype,
                             void* out_keys, void* out_values, size_t first_row, uint32_t r0,
                             uint32_t n, const uint32_t (*raw)[kRecordWords]) {
  const uint32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const uint32_t kb = codec.key_bits, vb = codec.value_bits;
  const uint32_t slices = d / kRecordDim;
  for (uint32_t r = warp; r < n; r += kSelectWarps) {
    const uint8_t* rec = reinterpret_cast<const uint8_t*>(raw[r]);
    const uint8_t* vrec = rec + 8 * kb + 4;
    float klo = Dequant(rec, rec + 8 * kb, lane, kb);
    float khi = Dequant(rec, rec + 8 * kb, lane + 32, kb);
    if (codec.rotate) Hadamard64Warp(klo, khi);  // (H/8)(H/8) = I
    const float vlo = Dequant(vrec, vrec + 8 * vb, lane, vb);
    const float vhi = Dequant(vrec, vrec + 8 * vb, lane + 32, vb);
    const uint32_t t = (r0 + r) / slices, s = (r0 + r) % slices;
    const size_t at = (first_row + t) * d + s * kRecordDim + lane;
    Store(out_keys, dtype, at, klo);
    Store(out_keys, dtype, at + 32, khi);
    Store(out_values, dtype, at, vlo);
    Store(out_values, dtype, at + 32, vhi);
  }
}

// The records of tokens ids[0 .. m) of one problem, gathered through `raw` a round of
// kGatherSlices slices at a time and decoded to rows first_row .. first_row + m of the outputs;
// then rows m .. rows of the problem zeroed, so a reader that ignores the count attends to
// nothing stale. Every thread of a kSelectThreads block calls it.
__device__ void GatherDecodeRows(const uint8_t* base, uint64_t stride, const uint32_t* ids,
                                 uint32_t m, uint32_t rows, const index::RecordCodec& codec,
                                 uint32_t d, DType dtype, void* out_keys, void* out_values,
                                 size_t first_row, uint32_t (*raw)[kRecordWords]) {
  const bool aligned = ((reinterpret_cast<uintptr_t>(base) | stride) & 3) == 0;
  const uint32_t slices = d / kRecordDim, total = m * slices;
  for (uint32_t r0 = 0; r0 < total; r0 += kGatherSlices) {
    const uint32_t n = min(kGatherSlices, total - r0);
    if (aligned)
      LoadSlices<kSelectThreads, kGatherLoads, true>(base, stride, ids, slices, r0, n,
                                                     kRecordWords, raw[0], kRecordWords);
    else
      LoadSlices<kSelectThreads, kGatherLoads, false>(base, stride, ids, slices, r0, n,
                                                      kRecordWords, raw[0], kRecordWords);
    __syncthreads();
    DecodeSlices(codec, d, dtype, out_keys, out_values, first_row, r0, n, raw);
    __syncthreads();
  }
  for (size_t x = size_t{m} * d + threadIdx.x; x < size_t{rows} * d; x += kSelectThreads) {
    Store(out_keys, dtype, first_row * d + x, 0.0f);
    Store(out_values, dtype, first_row * d + x, 0.0f);
  }
}

// One block per problem: weights, top-k, ids ascending, then the winners' records decoded.
__global__ void __launch_bounds__(kSelectThreads)
    RerankSelectKernel(RerankGatherParams pr, const float* logits) {
  __shared__ float2 stats[kGatherMaxGroup];
  __shared__ uint32_t hist[256], shared3[3], picked_count;
  __shared__ uint32_t picked[kGatherMaxTopK], sorted[kGatherMaxTopK];
  __shared__ uint32_t raw[kGatherSlices][kRecordWords];
  const uint32_t p = blockIdx.x, tid = threadIdx.x;
  const uint32_t c = pr.num_candidates, g = pr.group, k = pr.top_k, d = pr.head_dim;
  const uint32_t used = CandidatesUsed(pr, p), m = min(k, used);
  const uint8_t* base = pr.records[p];  // loaded now, used at the end: off the critical path
  if (tid == 0) picked_count = 0;
  uint64_t keys[kItemsPerThread];
  GroupWeightKeys(logits + size_t{p} * g * c, g, c, used, stats, keys);
  // With m = used every candidate is chosen: threshold 0 takes them all.
  const uint64_t threshold = m < used ? RadixSelect(keys, used, m, hist, shared3) : 0;
  const uint32_t* cand = pr.candidates + size_t{p} * c;
#pragma unroll
  for (uint32_t r = 0; r < kItemsPerThread; ++r) {
    const uint32_t i = tid + r * kSelectThreads;
    if (i < used && keys[r] >= threshold) picked[atomicAdd(&picked_count, 1u)] = cand[i];
  }
  __syncthreads();
  // Ascending ids (as RerankTopK's std::sort), by counting: m is small.
  for (uint32_t t = tid; t < m; t += kSelectThreads) {
    const uint32_t id = picked[t];
    uint32_t rank = 0;
    for (uint32_t u = 0; u < m; ++u) rank += picked[u] < id || (picked[u] == id && u < t);
    sorted[rank] = id;
  }
  __syncthreads();
  for (uint32_t t = tid; t < k; t += kSelectThreads)
    pr.out_ids[size_t{p} * k + t] = t < m ? sorted[t] : 0;
  if (tid == 0) pr.out_counts[p] = m;
  GatherDecodeRows(base, pr.record_stride_bytes, sorted, m, k, pr.codec, d, pr.out_dtype,
                   pr.out_keys, pr.out_values, size_t{p} * k, raw);
}

// index::SplitMix64 and index::TailSampleOffset, on the device.
__device__ __forceinline__ double TailSampleOffset(uint64_t seed, uint32_t layer, uint32_t head,
                                                  int64_t position) {
  uint64_t z = seed ^ (uint64_t{layer} << 48) ^ (uint64_t{head} << 40) ^ uint64_t(position);
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return double(z >> 11) * 0x1.0p-53;
}

// One block per problem: index::TailSample's draw, then the drawn records decoded. Sample i's rank
// r among the unpicked is computed on its own, and the unpicked token of rank r is r + (the
// number of picked ids j with picked[j] − j ≤ r): a binary search over that nondecreasing list.
__global__ void __launch_bounds__(kSelectThreads) TailSampleKernel(TailSampleParams pr) {
  __shared__ uint32_t shifted[kGatherMaxTopK];  // picked[j] − j
  __shared__ uint32_t ids[kTailMaxSamples];
  __shared__ uint32_t raw[kGatherSlices][kRecordWords];
  const uint32_t p = blockIdx.x, tid = threadIdx.x, m = pr.samples;
  const uint32_t head = p % pr.kv_heads, rep = p / pr.kv_heads;
  const uint8_t* base = pr.records[p];
  const uint64_t cold = pr.cold_device ? *pr.cold_device : pr.cold;
  const uint32_t count = min(pr.picked_counts[p], pr.picked_stride);
  const uint32_t* picked = pr.picked + size_t{p} * pr.picked_stride;
  for (uint32_t j = tid; j < count; j += kSelectThreads) shifted[j] = picked[j] - j;
  const int64_t position = (pr.position_device ? *pr.position_device : 0) + pr.position +
                           int64_t{rep} * pr.position_step;
  const double u = TailSampleOffset(pr.seed, pr.layer, head, position);
  const uint64_t rest = cold > count ? cold - count : 0;
  const uint64_t recent = min(uint64_t{pr.recent}, rest), older = rest - recent;
  const uint64_t recent_samples =
      recent == 0 ? 0 : min(recent, rest <= m ? recent : uint64_t{m / 2});
  const uint64_t older_samples = min(older, uint64_t{m} - recent_samples);
  const uint32_t total = uint32_t(older_samples + recent_samples);
  __syncthreads();
  for (uint32_t i = tid; i < m; i += kSelectThreads) {
    if (i >= total) {
      pr.out_ids[size_t{p} * m + i] = 0;
      pr.out_log_weights[size_t{p} * m + i] = 0.0f;
      continue;
    }
    const bool old = i < older_samples;
    const uint64_t begin = old ? 0 : older, size = old ? older : recent;
    const uint64_t samples = old ? older_samples : recent_samples, ii = old ? i : i - older_samples;
    const double weight = double(size) / double(samples);
    const uint64_t rank =
        begin + (samples == size ? ii : min(size - 1, uint64_t((double(ii) + u) * weight)));
    uint32_t lo = 0, hi = count;  // the first j with shifted[j] > rank
    while (lo < hi) {
      const uint32_t mid = (lo + hi) / 2;
      if (shifted[mid] <= rank) lo = mid + 1;
      else hi = mid;
    }
    const uint32_t token = uint32_t(rank + lo);
    ids[i] = token;
    pr.out_ids[size_t{p} * m + i] = token;
    pr.out_log_weights[size_t{p} * m + i] = float(log(weight));
  }
  if (tid == 0) pr.out_counts[p] = total;
  __syncthreads();
  GatherDecodeRows(base, pr.record_stride_bytes, ids, total, m, pr.codec, pr.head_dim,
                   pr.out_dtype, pr.out_keys, pr.out_values, size_t{p} * m, raw);
}

}  // namespace

size_t RerankGatherWorkspaceBytes(const RerankGatherParams& pr) {
  return size_t{pr.num_problems} * pr.group * pr.num_candidates * sizeof(float);
}

namespace {

std::string Bad(const char* what, uint64_t value) {
  return std::string(what) + " (got " + std::to_string(value) + ")";
}

// The checks both launches make of the problem count, the records and the outputs.
std::string CheckRecords(uint32_t num_problems, uint32_t head_dim, const index::RecordCodec& codec,
                         DType out_dtype, uint64_t record_stride_bytes) {
  if (num_problems > 65535) return Bad("num_problems must be at most 65535", num_problems);
  if (head_dim != 64 && head_dim != 128) return Bad("head_dim must be 64 or 128", head_dim);
  if (codec.key_bits < 1 || codec.key_bits > 11)
    return Bad("codec.key_bits must be in 1..11", codec.key_bits);
  if (codec.key_bits + codec.value_bits != 12)
    return Bad("codec.key_bits + codec.value_bits must be 12", codec.key_bits + codec.value_bits);
  if (out_dtype != DType::kFloat32 && out_dtype != DType::kBFloat16)
    return Bad("out_dtype must be kFloat32 or kBFloat16", uint32_t(out_dtype));
  const uint64_t record = uint64_t{head_dim / 64} * index::kRecordBytes;
  if (record_stride_bytes < record)
    return Bad("record_stride_bytes must be at least 104 * head_dim / 64", record_stride_bytes);
  return {};
}

// True (and the reason in *error, else on stderr) when `why` refuses the launch.
bool Refused(std::string why, const char* launch, std::string* error) {
  if (why.empty()) return false;
  if (error)
    *error = std::move(why);
  else
    std::fprintf(stderr, "kiv kernels: %s: %s\n", launch, why.c_str());
  return true;
}

}  // namespace

std::string CheckRerankGather(const RerankGatherParams& pr) {
  if (pr.group < 1 || pr.group > kGatherMaxGroup) return Bad("group must be in 1..256", pr.group);
  if (pr.num_candidates > kGatherMaxCandidates)
    return Bad(("num_candidates must be at most " + std::to_string(kGatherMaxCandidates)).c_str(),
               pr.num_candidates);
  if (pr.top_k < 1 || pr.top_k > kGatherMaxTopK) return Bad("top_k must be in 1..1024", pr.top_k);
  if (std::string why = CheckRecords(pr.num_problems, pr.head_dim, pr.codec, pr.out_dtype,
                                     pr.record_stride_bytes);
      !why.empty())
    return why;
  if (pr.num_problems == 0) return {};
  if (!pr.records || !pr.queries || !pr.out_ids || !pr.out_counts || !pr.out_keys ||
      !pr.out_values || (pr.num_candidates > 0 && !pr.candidates))
    return "a required pointer is null (records, candidates, queries or an output)";
  if (pr.workspace_bytes < RerankGatherWorkspaceBytes(pr) ||
      (pr.workspace_bytes > 0 && !pr.workspace))
    return Bad("workspace_bytes is below RerankGatherWorkspaceBytes", pr.workspace_bytes);
  return {};
}

int LaunchRerankGather(const RerankGatherParams& pr, CUstream_st* stream, std::string* error) {
  if (Refused(CheckRerankGather(pr), "LaunchRerankGather", error))
    return int(cudaErrorInvalidValue);
  if (pr.num_problems == 0) return int(cudaSuccess);
  float* logits = static_cast<float*>(pr.workspace);
  // As RerankTopK computes it (1/8 exactly for d = 64).
  const float inv_sqrt_d = 1.0f / std::sqrt(static_cast<float>(pr.head_dim));
  if (pr.num_candidates > 0) {
    const dim3 grid((pr.num_candidates + kScoreTile - 1) / kScoreTile, pr.num_problems);
    RerankScoreKernel<<<grid, kScoreThreads, 0, stream>>>(pr, inv_sqrt_d, logits);
    KIV_CUDA_CALL(cudaGetLastError());
  }
  RerankSelectKernel<<<pr.num_problems, kSelectThreads, 0, stream>>>(pr, logits);
  return int(cudaGetLastError());
}

std::string CheckTailSample(const TailSampleParams& pr) {
  if (pr.kv_heads < 1) return Bad("kv_heads must be at least 1", pr.kv_heads);
  if (pr.samples < 1 || pr.samples > kTailMaxSamples)
    return Bad("samples must be in 1..4096", pr.samples);
  if (pr.picked_stride < 1 || pr.picked_stride > kGatherMaxTopK)
    return Bad("picked_stride must be in 1..1024", pr.picked_stride);
  if (std::string why = CheckRecords(pr.num_problems, pr.head_dim, pr.codec, pr.out_dtype,
                                     pr.record_stride_bytes);
      !why.empty())
    return why;
  if (pr.num_problems == 0) return {};
  if (!pr.records || !pr.picked || !pr.picked_counts || !pr.out_ids || !pr.out_counts ||
      !pr.out_log_weights || !pr.out_keys || !pr.out_values)
    return "a required pointer is null (records, picked, picked_counts or an output)";
  return {};
}

int LaunchTailSample(const TailSampleParams& pr, CUstream_st* stream, std::string* error) {
  if (Refused(CheckTailSample(pr), "LaunchTailSample", error)) return int(cudaErrorInvalidValue);
  if (pr.num_problems == 0) return int(cudaSuccess);
  TailSampleKernel<<<pr.num_problems, kSelectThreads, 0, stream>>>(pr);
  return int(cudaGetLastError());
}

}  // namespace kiv::kernels
