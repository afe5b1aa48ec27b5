// MergeKernel: one block per problem. The g lists are already ascending, so they are merged, not
// sorted: pairwise, ceil(log2 g) rounds in shared memory, each a binary search per entry and one
// barrier; then equal neighbours are dropped by one block-wide scan. 4 + ceil(log2 g) barriers
// in all (6 for g = 3, 7 for g = 8; two of them inside cub's scans). The bitonic sort this
// replaced (66 barrier stages for the decode's 2,048 padded slots, 78 for 4,096) measured 19.6 µs
// per call on an H100 (SmolLM2 decode, 3 lists of 342); this version has not been timed yet.
#include "kernels/merge.h"

#include <cuda_runtime.h>

#include <cstdio>
#include <cub/block/block_scan.cuh>

#include "kernels/cuda_call.cuh"

namespace kiv::kernels {
namespace {

constexpr uint32_t kThreads = 1024;
constexpr uint32_t kPer = kMergeMaxTokens / kThreads;  // entries (and lists) per thread
constexpr uint32_t kNoSlot = 0xFFFFFFFFu;              // an entry past its list's count
static_assert(kPer * kThreads == kMergeMaxTokens);
static_assert(kMergeMaxTokens <= 0xFFFF, "list starts are kept as uint16_t");
static_assert(kMergeMaxLists <= kThreads * kPer);

// One barrier per scan (the warp-scans variant: warp aggregates through shared memory).
using Scan = cub::BlockScan<uint32_t, kThreads, cub::BLOCK_SCAN_WARP_SCANS>;

// The first index in [begin, end) of the ascending v whose entry is > x (kUpper) or >= x.
template <bool kUpper>
__device__ __forceinline__ uint32_t Bound(const uint32_t* v, uint32_t begin, uint32_t end,
                                          uint32_t x) {
  while (begin < end) {
    const uint32_t mid = (begin + end) / 2;
    if (kUpper ? v[mid] <= x : v[mid] < x) begin = mid + 1;
    else end = mid;
  }
  return begin;
}

// Every slot of the merged (not yet unique) sequence belongs to one thread for the whole kernel:
// the input entry i = threadIdx.x + q · kThreads of list i / c lands, compacted, in slot
// start[list] + i % c, and that slot stays in the list's range [start[list], start[list + 1]).
// In round s the runs of 2^s lists are merged pairwise; a slot's run is list >> s (runs cover
// consecutive slots), and the entry now in it moves to its place in the pair's merged run:
// its index in its own run plus its rank in the partner run, lower_bound when the partner is on
// the right, upper_bound when it is on the left. Equal entries thus keep the left run first, so
// the positions are a permutation of the pair's range even with duplicates inside a list, and
// each round leaves every run ascending.
__global__ void __launch_bounds__(kThreads) MergeKernel(MergeCandidatesArgs a) {
  __shared__ uint32_t merged[2][kMergeMaxTokens];  // ping-pong between rounds
  __shared__ uint16_t start[kMergeMaxLists + 1];   // [g + 1] each list's first slot, then n
  __shared__ typename Scan::TempStorage scan_storage;
  const uint32_t p = blockIdx.x, g = a.lists, c = a.length, total = g * c;
  const uint32_t* in = a.in + size_t{p} * total;
  uint32_t x[kPer];  // loaded first, so that their latency may overlap the counts' scan
#pragma unroll
  for (uint32_t q = 0; q < kPer; ++q) {
    const uint32_t i = threadIdx.x + q * kThreads;
    x[q] = i < total ? in[i] : 0;
  }
  uint32_t used[kPer], first[kPer], n;  // lists kPer · threadIdx.x + q
#pragma unroll
  for (uint32_t q = 0; q < kPer; ++q) {
    const uint32_t list = threadIdx.x * kPer + q;
    used[q] = list >= g ? 0 : a.in_counts ? min(a.in_counts[p * g + list], c) : c;
  }
  Scan(scan_storage).ExclusiveSum(used, first, n);
#pragma unroll
  for (uint32_t q = 0; q < kPer; ++q)
    if (threadIdx.x * kPer + q < g) start[threadIdx.x * kPer + q] = uint16_t(first[q]);
  if (threadIdx.x == 0) start[g] = uint16_t(n);
  __syncthreads();
  uint32_t list[kPer], slot[kPer];
#pragma unroll
  for (uint32_t q = 0; q < kPer; ++q) {
    const uint32_t i = threadIdx.x + q * kThreads, l = i / c, j = i - l * c;
    list[q] = l;
    slot[q] = i < total && j < uint32_t(start[l + 1] - start[l]) ? start[l] + j : kNoSlot;
    if (slot[q] != kNoSlot) merged[0][slot[q]] = x[q];
  }
  __syncthreads();
  uint32_t src = 0;
  for (uint32_t s = 0; (1u << s) < g; ++s, src ^= 1) {
    const uint32_t* from = merged[src];
    uint32_t* to = merged[src ^ 1];
#pragma unroll
    for (uint32_t q = 0; q < kPer; ++q) {
      if (slot[q] == kNoSlot) continue;
      const uint32_t run = list[q] >> s, left = run & ~1u, right = run | 1u, y = from[slot[q]];
      if ((right << s) >= g) {  // the last run of an odd count: no partner this round
        to[slot[q]] = y;
        continue;
      }
      const uint32_t lo = start[left << s], mid = start[right << s],
                     hi = start[min((right + 1) << s, g)];
      to[run == left ? slot[q] + Bound<false>(from, mid, hi, y) - mid
                     : slot[q] - mid + Bound<true>(from, lo, mid, y)] = y;
    }
    __syncthreads();
  }
  // Keep the first of each run of equal ids: thread t owns slots kPer · t + q.
  const uint32_t* v = merged[src];
  uint32_t keep[kPer], at[kPer], unique;
#pragma unroll
  for (uint32_t q = 0; q < kPer; ++q) {
    const uint32_t e = threadIdx.x * kPer + q;
    keep[q] = e < n && (e == 0 || v[e] != v[e - 1]);
  }
  Scan(scan_storage).ExclusiveSum(keep, at, unique);  // storage free: barriers since the first
  uint32_t* out = a.out + size_t{p} * total;
#pragma unroll
  for (uint32_t q = 0; q < kPer; ++q)
    if (keep[q]) out[at[q]] = v[threadIdx.x * kPer + q];
  if (threadIdx.x == 0) a.out_counts[p] = unique;
}

}  // namespace

std::string CheckMergeCandidates(const MergeCandidatesArgs& a) {
  if (a.num_problems == 0 || a.num_problems > 65535)
    return "num_problems " + std::to_string(a.num_problems) + " is not in 1..65535";
  if (a.lists == 0 || a.length == 0) return "lists and length must be >= 1";
  if (a.lists > kMergeMaxLists)
    return "lists " + std::to_string(a.lists) + " exceeds " + std::to_string(kMergeMaxLists);
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
  MergeKernel<<<args.num_problems, kThreads, 0, stream>>>(args);
  KIV_CUDA_CALL(cudaGetLastError());
  return 0;
}

}  // namespace kiv::kernels
