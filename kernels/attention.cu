// Sparse decode attention (see attention.h), split-K in one kernel, SparseAttentionKernel, grid
// (row blocks of all sets, H_kv · ⌈g/8⌉):
//   - each block: up to 8 query heads of one kv-head against 32 rows of one set → per head
//     (max score, Σ exp, Σ exp · v) in the workspace (WritePartials);
//   - the last block of each grid row to finish (a done-counter per row, reset by that block for
//     the next launch) merges its heads' partials by their maxima, as runtime/full_cache.cpp
//     MergeAttention merges by log-sum-exp (MergeHead), one head after another, from a copy in
//     its shared memory where they fit (one wait on L2 instead of three per head).
// MergeHead is the body of the former second kernel (a block of 256 threads per head): the same
// threads sum the same partials in the same order, so the result is that kernel's bit for bit.
// Decode has a handful of query heads and a few hundred to a few thousand rows per kv-head, so
// the work is split over rows to occupy the GPU; each block reads its rows once for all the
// query heads it serves.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <utility>

#include "kernels/attention.h"

#include "kernels/cuda_call.cuh"

namespace kiv::kernels {
namespace {

constexpr uint32_t kAttnThreads = 256;
constexpr uint32_t kAttnWarps = kAttnThreads / 32;
constexpr uint32_t kBlockRows = 32;     // rows of one set per partial block
constexpr uint32_t kHeadsPerBlock = 8;  // query heads of one kv-head per partial block
constexpr uint32_t kMaxHeadDim = 128;
// 4-element pieces of the key and value tiles each thread loads.
constexpr uint32_t kTileLoads = kBlockRows * kMaxHeadDim / 4 / kAttnThreads;
constexpr uint32_t kMergeThreads = 256;

struct AttentionLaunch {
  SparseAttentionParams pr;
  uint32_t block_begin[kAttentionMaxSets + 1];  // set s owns row blocks [begin[s], begin[s + 1])
  uint32_t num_blocks;
  uint32_t group;       // g = H_q / H_kv
  uint32_t head_tiles;  // ⌈g / kHeadsPerBlock⌉
  float scale;          // 1/√d, applied to q as AttentionWithLse does
};

__device__ __forceinline__ float Load(const void* p, DType dtype, size_t i) {
  if (dtype == DType::kFloat32) return static_cast<const float*>(p)[i];
  return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
}

// Elements i .. i + 3 (i a multiple of 4; the launcher checked the alignment) as floats.
__device__ __forceinline__ float4 Load4(const void* p, DType dtype, size_t i) {
  if (dtype == DType::kFloat32)
    return *reinterpret_cast<const float4*>(static_cast<const float*>(p) + i);
  const uint2 raw = *reinterpret_cast<const uint2*>(static_cast<const __nv_bfloat16*>(p) + i);
  return make_float4(__uint_as_float(raw.x << 16), __uint_as_float(raw.x & 0xFFFF0000u),
                     __uint_as_float(raw.y << 16), __uint_as_float(raw.y & 0xFFFF0000u));
}

__device__ __forceinline__ float WarpMax(float x) {
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xFFFFFFFFu, x, o));
  return x;
}

__device__ __forceinline__ float WarpSum(float x) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xFFFFFFFFu, x, o);
  return x;
}

// A block's key and value tiles; then, in the block that merges a grid row, the row's partials.
__shared__ __align__(16) float tiles[2][kBlockRows][kMaxHeadDim];
constexpr uint32_t kStageFloats = 2 * kBlockRows * kMaxHeadDim;

// A partial is d + 2 floats: Σ exp(score − max) · v, then max, then Σ exp(score − max);
// part[(query head · num_blocks + block) · (d + 2)]. Every thread of the block calls it.
__device__ __forceinline__ void WritePartials(const AttentionLaunch& a, float* part) {
  float(&ks)[kBlockRows][kMaxHeadDim] = tiles[0];
  float(&vs)[kBlockRows][kMaxHeadDim] = tiles[1];
  __shared__ float qs[kHeadsPerBlock][kMaxHeadDim];
  __shared__ float ps[kHeadsPerBlock][kBlockRows];  // scores, then exp(score − max)
  __shared__ float row_max[kHeadsPerBlock], row_sum[kHeadsPerBlock];
  const uint32_t tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const uint32_t b = blockIdx.x, hk = blockIdx.y / a.head_tiles;
  const uint32_t d = a.pr.head_dim, g = a.group, j0 = (blockIdx.y % a.head_tiles) * kHeadsPerBlock;
  const uint32_t jn = min(kHeadsPerBlock, g - j0), h0 = hk * g + j0;  // query heads h0 .. h0+jn
  uint32_t s = 0;
  while (b >= a.block_begin[s + 1]) ++s;
  const KvSet& kv = a.pr.sets[s];
  const uint32_t t0 = (b - a.block_begin[s]) * kBlockRows;
  const size_t stride = kv.head_stride ? kv.head_stride : size_t{kv.max_rows} * d;
  const size_t row0 = hk * stride + size_t{t0} * d;
  const size_t part_stride = size_t{a.num_blocks} * (d + 2);
  float* out = part + size_t{h0} * part_stride + size_t{b} * (d + 2);
  // The key and value tiles (every load in flight at once, and not waiting for the count: all
  // max_rows rows are readable), and the queries while they are on their way.
  const uint32_t count = kv.counts ? min(kv.counts[hk], kv.max_rows) : kv.max_rows;
  {
    float4 kx[kTileLoads], vx[kTileLoads];
    const uint32_t pieces = min(kBlockRows, kv.max_rows - t0) * d / 4;
#pragma unroll
    for (uint32_t u = 0; u < kTileLoads; ++u) {
      const uint32_t x = tid + u * kAttnThreads;
      if (x >= pieces) continue;
      kx[u] = Load4(kv.keys, kv.dtype, row0 + 4 * size_t{x});
      vx[u] = Load4(kv.values, kv.dtype, row0 + 4 * size_t{x});
    }
    for (uint32_t x = tid; x < jn * d; x += kAttnThreads)
      qs[x / d][x % d] = Load(a.pr.q, a.pr.q_dtype, size_t{h0} * d + x) * a.scale;
#pragma unroll
    for (uint32_t u = 0; u < kTileLoads; ++u) {
      const uint32_t x = tid + u * kAttnThreads;
      if (x >= pieces) continue;
      const uint32_t t = 4 * x / d, e = 4 * x % d;
      *reinterpret_cast<float4*>(&ks[t][e]) = kx[u];
      *reinterpret_cast<float4*>(&vs[t][e]) = vx[u];
    }
  }
  const uint32_t tn = t0 < count ? min(kBlockRows, count - t0) : 0;
  if (tn == 0) {  // past this kv-head's count: an empty partial
    for (uint32_t x = tid; x < jn * (d + 2); x += kAttnThreads) {
      const uint32_t jj = x / (d + 2), e = x % (d + 2);
      out[jj * part_stride + e] = e == d ? -INFINITY : 0.0f;
    }
    return;
  }
  __syncthreads();
  // Scores: a warp per row, each lane d/32 of its elements, all jn heads at once.
  const uint32_t per_lane = d / 32;
  for (uint32_t t = warp; t < tn; t += kAttnWarps) {
    float k[kMaxHeadDim / 32] = {};
#pragma unroll
    for (uint32_t q = 0; q < kMaxHeadDim / 32; ++q)
      if (q < per_lane) k[q] = ks[t][lane + 32 * q];
    for (uint32_t jj = 0; jj < jn; ++jj) {
      float dot = 0.0f;
#pragma unroll
      for (uint32_t q = 0; q < kMaxHeadDim / 32; ++q)
        if (q < per_lane) dot += qs[jj][lane + 32 * q] * k[q];
      dot = WarpSum(dot);
      if (lane == 0) ps[jj][t] = kv.bias ? dot + kv.bias[size_t{hk} * kv.max_rows + t0 + t] : dot;
    }
  }
  __syncthreads();
  for (uint32_t jj = warp; jj < jn; jj += kAttnWarps) {  // tn <= 32: a lane per row
    const float score = lane < tn ? ps[jj][lane] : -INFINITY;
    const float mx = WarpMax(score);
    const float e = lane < tn ? expf(score - mx) : 0.0f;
    if (lane < tn) ps[jj][lane] = e;
    const float sum = WarpSum(e);
    if (lane == 0) row_max[jj] = mx, row_sum[jj] = sum;
  }
  __syncthreads();
  // Weighted values: thread (e, group) accumulates heads group, group + groups, ... of element e.
  const uint32_t groups = kAttnThreads / d, e = tid % d, jg = tid / d;
  float acc[kHeadsPerBlock] = {};
  for (uint32_t t = 0; t < tn; ++t) {
    const float v = vs[t][e];
#pragma unroll
    for (uint32_t i = 0; i < kHeadsPerBlock; ++i) {
      const uint32_t jj = jg + i * groups;
      if (jj < jn) acc[i] += ps[jj][t] * v;
    }
  }
#pragma unroll
  for (uint32_t i = 0; i < kHeadsPerBlock; ++i) {
    const uint32_t jj = jg + i * groups;
    if (jj >= jn) continue;
    out[jj * part_stride + e] = acc[i];
    if (e == 0) {
      out[jj * part_stride + d] = row_max[jj];
      out[jj * part_stride + d + 1] = row_sum[jj];
    }
  }
}

// Element i of the output, in float32 and/or bf16 (rounded as ATen's cast rounds).
__device__ __forceinline__ void Store(const SparseAttentionParams& pr, size_t i, float v) {
  if (pr.out) pr.out[i] = v;
  if (pr.out_bf16) static_cast<__nv_bfloat16*>(pr.out_bf16)[i] = __float2bfloat16_rn(v);
}

// A partial's float: from shared memory where the merging block staged them, else from global
// memory, where other blocks of the launch wrote them: read from L2 (__ldcg), past the L1.
template <bool kStaged>
__device__ __forceinline__ float Partial(const float* p) {
  if constexpr (kStaged) return *p;
  return __ldcg(p);
}

// Query head h's num_blocks partials ph [num_blocks][d + 2] merged into its output and lse, by
// every thread of a block of kMergeThreads: the maximum of the partials' maxima, their rescaled
// sums, and element e of the output from threads (e, group) over blocks group, group + groups, ...
template <bool kStaged>
__device__ __forceinline__ void MergeHead(uint32_t num_blocks, uint32_t d, const float* ph,
                                          uint32_t h, const SparseAttentionParams& pr) {
  __shared__ float red[kMergeThreads];
  __shared__ float total_max, total_sum;
  const uint32_t tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  // The previous head's merge is done with red, total_max and total_sum; staged partials are in.
  __syncthreads();
  float mx = -INFINITY;
  for (uint32_t b = tid; b < num_blocks; b += kMergeThreads)
    if (Partial<kStaged>(ph + b * (d + 2) + d + 1) > 0.0f)
      mx = fmaxf(mx, Partial<kStaged>(ph + b * (d + 2) + d));
  mx = WarpMax(mx);
  if (lane == 0) red[warp] = mx;
  __syncthreads();
  if (tid == 0) {
    float m = red[0];
    for (uint32_t w = 1; w < kMergeThreads / 32; ++w) m = fmaxf(m, red[w]);
    total_max = m;
  }
  __syncthreads();
  mx = total_max;
  if (mx == -INFINITY) {  // no visible key: out 0, lse −inf
    for (uint32_t e = tid; e < d; e += kMergeThreads) Store(pr, size_t{h} * d + e, 0.0f);
    if (tid == 0) pr.lse[h] = -INFINITY;
    return;
  }
  float sum = 0.0f;
  for (uint32_t b = tid; b < num_blocks; b += kMergeThreads)
    sum += Partial<kStaged>(ph + b * (d + 2) + d + 1) *
           expf(Partial<kStaged>(ph + b * (d + 2) + d) - mx);
  sum = WarpSum(sum);
  __syncthreads();  // red is reused
  if (lane == 0) red[warp] = sum;
  __syncthreads();
  if (tid == 0) {
    float s = 0.0f;
    for (uint32_t w = 0; w < kMergeThreads / 32; ++w) s += red[w];
    total_sum = s;
  }
  // An empty partial holds zeros and max −inf: weight exp(−inf) = 0, so no branch is needed and
  // the loads of consecutive partials overlap.
  const uint32_t groups = kMergeThreads / d, e = tid % d, grp = tid / d;
  float o = 0.0f;
#pragma unroll 8
  for (uint32_t b = grp; b < num_blocks; b += groups) {
    const float* pb = ph + b * (d + 2);
    o += Partial<kStaged>(pb + e) * expf(Partial<kStaged>(pb + d) - mx);
  }
  __syncthreads();  // red is reused; total_sum is written
  red[tid] = o;
  __syncthreads();
  if (grp == 0) {
    for (uint32_t r = 1; r < groups; ++r) o += red[r * d + e];
    Store(pr, size_t{h} * d + e, o / total_sum);
    if (e == 0) pr.lse[h] = mx + logf(total_sum);
  }
}

// True in every thread of the block that finished last among the gridDim.x blocks counted at
// *done; the partials every one of them wrote are then visible to it.
__device__ bool LastBlockOfRow(uint32_t* done) {
  __shared__ bool last;
  __threadfence();  // this block's partials before its count
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(done, 1u) == gridDim.x - 1;
  __syncthreads();
  if (last) __threadfence();
  return last;
}

static_assert(kMergeThreads == kAttnThreads, "the partial blocks merge with the merge's threads");

// The merging block's heads' partials (consecutive in the workspace) into the tiles, all loads
// in flight at once: the merges then wait on shared memory, not on L2, at each of their steps.
__device__ __forceinline__ void StagePartials(const float* src, uint32_t n) {
  constexpr uint32_t kBatch = 16;  // loads in flight per thread
  float* stage = &tiles[0][0][0];
  for (uint32_t base = 0; base < n; base += kBatch * kAttnThreads) {
    float x[kBatch];
#pragma unroll
    for (uint32_t u = 0; u < kBatch; ++u) {
      const uint32_t i = base + u * kAttnThreads + threadIdx.x;
      if (i < n) x[u] = __ldcg(src + i);
    }
#pragma unroll
    for (uint32_t u = 0; u < kBatch; ++u) {
      const uint32_t i = base + u * kAttnThreads + threadIdx.x;
      if (i < n) stage[i] = x[u];
    }
  }
}

__global__ void __launch_bounds__(kAttnThreads)
    SparseAttentionKernel(AttentionLaunch a, float* part) {
  WritePartials(a, part);
  uint32_t* done = a.pr.done + blockIdx.y;
  if (!LastBlockOfRow(done)) return;  // past its barriers every thread is done with the tiles
  const uint32_t d = a.pr.head_dim, hk = blockIdx.y / a.head_tiles;
  const uint32_t j0 = (blockIdx.y % a.head_tiles) * kHeadsPerBlock;
  const uint32_t jn = min(kHeadsPerBlock, a.group - j0), h0 = hk * a.group + j0;
  const uint32_t per_head = a.num_blocks * (d + 2);  // floats of one head's partials
  const float* ph = part + size_t{h0} * per_head;
  if (uint64_t{jn} * per_head <= kStageFloats) {
    StagePartials(ph, jn * per_head);
    for (uint32_t jj = 0; jj < jn; ++jj)
      MergeHead<true>(a.num_blocks, d, &tiles[0][0][0] + jj * per_head, h0 + jj, a.pr);
  } else {
    for (uint32_t jj = 0; jj < jn; ++jj)
      MergeHead<false>(a.num_blocks, d, ph + size_t{jj} * per_head, h0 + jj, a.pr);
  }
  if (threadIdx.x == 0) *done = 0;  // every block of the row has counted: ready for the next launch
}

// No row blocks (every set empty): each head gets the merge of nothing, out 0 and lse −inf.
__global__ void __launch_bounds__(kMergeThreads)
    SparseAttentionEmptyKernel(SparseAttentionParams pr) {
  MergeHead<false>(0, pr.head_dim, nullptr, blockIdx.x, pr);
}

uint32_t RowBlocks(const KvSet& kv) { return (kv.max_rows + kBlockRows - 1) / kBlockRows; }

uint32_t TotalRowBlocks(const SparseAttentionParams& pr) {
  uint32_t n = 0;
  for (uint32_t s = 0; s < pr.num_sets && s < kAttentionMaxSets; ++s) n += RowBlocks(pr.sets[s]);
  return n;
}

}  // namespace

size_t SparseAttentionWorkspaceBytes(const SparseAttentionParams& pr) {
  return size_t{pr.num_q_heads} * TotalRowBlocks(pr) * (pr.head_dim + 2) * sizeof(float);
}

uint32_t SparseAttentionDoneCount(const SparseAttentionParams& pr) {
  if (pr.num_kv_heads == 0) return 0;
  const uint32_t g = pr.num_q_heads / pr.num_kv_heads;
  return pr.num_kv_heads * ((g + kHeadsPerBlock - 1) / kHeadsPerBlock);
}

std::string CheckSparseAttention(const SparseAttentionParams& pr) {
  auto bad = [](const std::string& what, uint64_t value) {
    return what + " (got " + std::to_string(value) + ")";
  };
  if (pr.head_dim != 64 && pr.head_dim != 128)
    return bad("head_dim must be 64 or 128", pr.head_dim);
  if (pr.num_kv_heads == 0) return bad("num_kv_heads must be positive", pr.num_kv_heads);
  if (pr.num_q_heads % pr.num_kv_heads != 0)
    return bad("num_q_heads must be a multiple of num_kv_heads", pr.num_q_heads);
  if (pr.num_sets > kAttentionMaxSets) return bad("num_sets must be at most 3", pr.num_sets);
  if (pr.q_dtype != DType::kFloat32 && pr.q_dtype != DType::kBFloat16)
    return bad("q_dtype must be kFloat32 or kBFloat16", uint32_t(pr.q_dtype));
  const uint32_t g = pr.num_q_heads / pr.num_kv_heads;
  if (uint64_t{pr.num_kv_heads} * ((g + kHeadsPerBlock - 1) / kHeadsPerBlock) > 65535)
    return bad("num_q_heads / 8 (rounded up per kv-head) must be at most 65535", pr.num_q_heads);
  for (uint32_t s = 0; s < pr.num_sets; ++s) {
    const KvSet& kv = pr.sets[s];
    const std::string name = "sets[" + std::to_string(s) + "].";
    if (kv.max_rows == 0) continue;
    if (!kv.keys || !kv.values) return name + "keys and values must be set when max_rows > 0";
    if (kv.dtype != DType::kFloat32 && kv.dtype != DType::kBFloat16)
      return bad(name + "dtype must be kFloat32 or kBFloat16", uint32_t(kv.dtype));
    if (kv.head_stride != 0 && kv.head_stride < uint64_t{kv.max_rows} * pr.head_dim)
      return bad(name + "head_stride must be 0 or at least max_rows * head_dim", kv.head_stride);
    // Tiles are read 4 elements at a time.
    if (kv.head_stride % 4 != 0)
      return bad(name + "head_stride must be a multiple of 4", kv.head_stride);
    const uintptr_t align = 4 * DTypeBytes(kv.dtype);
    const uintptr_t off =
        (reinterpret_cast<uintptr_t>(kv.keys) | reinterpret_cast<uintptr_t>(kv.values)) % align;
    if (off != 0)
      return bad(name + "keys and values must be aligned to " + std::to_string(align) +
                     " bytes (4 elements); their addresses mod " + std::to_string(align),
                 off);
  }
  if (pr.num_q_heads == 0) return {};
  if (!pr.q || !pr.lse || (!pr.out && !pr.out_bf16))
    return "q, lse and out or out_bf16 must be set";
  if (reinterpret_cast<uintptr_t>(pr.out_bf16) % 2 != 0)
    return bad("out_bf16 must be aligned to 2 bytes; its address mod 2",
               reinterpret_cast<uintptr_t>(pr.out_bf16) % 2);
  if (!pr.done)
    return "done must be set: SparseAttentionDoneCount counters, zero before the first launch";
  if (pr.workspace_bytes < SparseAttentionWorkspaceBytes(pr) ||
      (pr.workspace_bytes > 0 && !pr.workspace))
    return bad("workspace_bytes is below SparseAttentionWorkspaceBytes", pr.workspace_bytes);
  return {};
}

int LaunchSparseDecodeAttention(const SparseAttentionParams& pr, CUstream_st* stream,
                                std::string* error) {
  if (std::string why = CheckSparseAttention(pr); !why.empty()) {
    if (error)
      *error = std::move(why);
    else
      std::fprintf(stderr, "kiv kernels: LaunchSparseDecodeAttention: %s\n", why.c_str());
    return int(cudaErrorInvalidValue);
  }
  if (pr.num_q_heads == 0) return int(cudaSuccess);
  AttentionLaunch a{};
  a.pr = pr;
  a.block_begin[0] = 0;
  for (uint32_t s = 0; s < kAttentionMaxSets; ++s)
    a.block_begin[s + 1] = a.block_begin[s] + (s < pr.num_sets ? RowBlocks(pr.sets[s]) : 0);
  a.num_blocks = a.block_begin[kAttentionMaxSets];
  a.group = pr.num_q_heads / pr.num_kv_heads;
  a.head_tiles = (a.group + kHeadsPerBlock - 1) / kHeadsPerBlock;
  // AttentionWithLse multiplies q by 1/sqrt(d) computed in double, then rounded to float.
  a.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(pr.head_dim)));
  if (a.num_blocks == 0) {
    SparseAttentionEmptyKernel<<<pr.num_q_heads, kMergeThreads, 0, stream>>>(pr);
  } else {
    const dim3 grid(a.num_blocks, pr.num_kv_heads * a.head_tiles);
    SparseAttentionKernel<<<grid, kAttnThreads, 0, stream>>>(a, static_cast<float*>(pr.workspace));
  }
  return int(cudaGetLastError());
}

}  // namespace kiv::kernels
