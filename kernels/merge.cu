#include "kernels/merge.h"

#include <cuda_runtime.h>

#include <cstdio>

#include "kernels/cuda_call.cuh"

namespace kiv::kernels {
namespace {

constexpr uint32_t kThreads = 1024;
constexpr uint32_t kEmpty = 0xFFFFFFFFu;  // sorts last; never a token id (ids are < 2^31)

__global__ void MergeKernel(MergeCandidatesArgs a, uint32_t size) {
  __shared__ uint32_t v[kMergeMaxTokens];
  __shared__ uint32_t warp_sums[kThreads / 32];
  const uint32_t p = blockIdx.x, total = a.lists * a.length;
  const uint32_t* in = a.in + size_t{p} * total;
  for (uint32_t i = threadIdx.x; i < size; i += kThreads) {
    uint32_t x = kEmpty;
    if (i < total) {
      const uint32_t list = i / a.length, j = i % a.length;
      const uint32_t used = a.in_counts ? min(a.in_counts[p * a.lists + list], a.length) : a.length;
      if (j < used) x = in[i];
    }
    v[i] = x;
  }
  __syncthreads();
  // Bitonic sort, ascending, of `size` (a power of two) entries.
  for (uint32_t k = 2; k <= size; k <<= 1) {
    for (uint32_t j = k >> 1; j > 0; j >>= 1) {
      for (uint32_t i = threadIdx.x; i < size; i += kThreads) {
        const uint32_t partner = i ^ j;
        if (partner > i) {
          const bool up = (i & k) == 0;
          const uint32_t x = v[i], y = v[partner];
          if ((x > y) == up) v[i] = y, v[partner] = x;
        }
      }
      __syncthreads();
    }
  }
  // Keep the first of each run of equal ids: each thread owns a contiguous stretch of entries.
  const uint32_t per = (size + kThreads - 1) / kThreads, begin = threadIdx.x * per;
  uint32_t keep = 0;
  for (uint32_t i = begin; i < min(begin + per, size); ++i)
    keep += v[i] != kEmpty && (i == 0 || v[i] != v[i - 1]);
  // Exclusive prefix sum of `keep` over the block.
  const uint32_t lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  uint32_t incl = keep;
  for (uint32_t o = 1; o < 32; o <<= 1) {
    const uint32_t y = __shfl_up_sync(0xFFFFFFFFu, incl, o);
    if (lane >= o) incl += y;
  }
  if (lane == 31) warp_sums[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    uint32_t s = warp_sums[lane];
    for (uint32_t o = 1; o < 32; o <<= 1) {
      const uint32_t y = __shfl_up_sync(0xFFFFFFFFu, s, o);
      if (lane >= o) s += y;
    }
    warp_sums[lane] = s;  // inclusive over warps
  }
  __syncthreads();
  uint32_t at = incl - keep + (warp > 0 ? warp_sums[warp - 1] : 0);
  uint32_t* out = a.out + size_t{p} * total;
  for (uint32_t i = begin; i < min(begin + per, size); ++i)
    if (v[i] != kEmpty && (i == 0 || v[i] != v[i - 1])) out[at++] = v[i];
  if (threadIdx.x == kThreads - 1) a.out_counts[p] = at;
}

}  // namespace

std::string CheckMergeCandidates(const MergeCandidatesArgs& a) {
  if (a.num_problems == 0 || a.num_problems > 65535)
    return "num_problems " + std::to_string(a.num_problems) + " is not in 1..65535";
  if (a.lists == 0 || a.length == 0) return "lists and length must be >= 1";
  if (uint64_t{a.lists} * a.length > kMergeMaxTokens)
    return "lists x length " + std::to_string(uint64_t{a.lists} * a.length) + " exceeds " +
           std::to_string(kMergeMaxTokens);
  if (!a.in || !a.out || !a.out_counts) return "in, out and out_counts must be set";
  return {};
}

int MergeCandidates(const MergeCandidatesArgs& args, CUstream_st* stream, std::string* error) {
  if (std::string why = CheckMergeCandidates(args); !why.empty()) {
    if (error) *error = why;
    else std::fprintf(stderr, "kiv::kernels::MergeCandidates: %s\n", why.c_str());
    return int(cudaErrorInvalidValue);
  }
  uint32_t size = 1;
  while (size < args.lists * args.length) size <<= 1;
  MergeKernel<<<args.num_problems, kThreads, 0, stream>>>(args, size);
  KIV_CUDA_CALL(cudaGetLastError());
  return 0;
}

}  // namespace kiv::kernels
