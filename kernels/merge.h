// The union of a GQA group's candidate lists on the GPU. At a decode step each query head of a
// group scans on its own and brings its best C / g tokens (kernels/scan.h), so one head's needle is
// not drowned by the others; the re-rank (kernels/gather.h) wants every token once. The device
// twin of the sort + unique in runtime/tiered_cache.cpp Retrieve.
//
// Plain C++: no CUDA headers (see kernels/dtype.h for the stream type).
#pragma once

#include <cstdint>
#include <string>

#include "kernels/dtype.h"

namespace kiv::kernels {

// g · c, the lists of one problem together: room for C = 4,096 candidates shared by up to 5 query
// heads (⌈C / g⌉ each, 4,098 for SmolLM2's g = 3).
inline constexpr uint32_t kMergeMaxTokens = 5120;
inline constexpr uint32_t kMergeMaxLists = 1024;  // g

struct MergeCandidatesArgs {
  uint32_t num_problems = 0;  // P, at most 65535
  uint32_t lists = 1;         // g lists per problem, at most kMergeMaxLists
  uint32_t length = 0;        // c entries per list (its row length); g · c ≤ kMergeMaxTokens
  const uint32_t* in = nullptr;         // [P][g][c] device: each list ascending (equal
                                        // neighbours allowed); an unsorted list gives a wrong
                                        // union (writes stay in bounds)
  const uint32_t* in_counts = nullptr;  // [P][g] device, optional: list uses its first
                                        // min(count, c) entries; nullptr: all c
  uint32_t* out = nullptr;         // [P][g · c] device: the union ascending, then left as it was
  uint32_t* out_counts = nullptr;  // [P] device: the union's size
};

// Empty when the launch is supported; otherwise what is wrong, naming the value.
std::string CheckMergeCandidates(const MergeCandidatesArgs& args);

// One kernel on `stream`, no host sync. A block per problem: the lists merged pairwise in shared
// memory, ceil(log2 g) rounds that place each entry by its rank in the partner run (a binary
// search), then equal neighbours dropped by one block-wide scan: 4 + ceil(log2 g) barriers.
// Every uint32 value is an id, 0xFFFFFFFF included. (The bitonic sort it replaced, 19.6 µs per
// call on an H100 for SmolLM2's decode, 3 lists of 342, dropped 0xFFFFFFFF as its padding.)
// Returns the cudaError_t as int (0 = cudaSuccess): cudaErrorInvalidValue for an unsupported
// shape, with CheckMergeCandidates' message in `*error` (on stderr when null).
int MergeCandidates(const MergeCandidatesArgs& args, CUstream_st* stream,
                    std::string* error = nullptr);

}  // namespace kiv::kernels
