// Sparse decode attention on the GPU: one decode step of one layer, each query head attending to
// the union of up to three key/value sets (e.g. the hot tier, the retrieved records of
// kernels/gather.h, the sinks), as one softmax over that union. The device twin of
// runtime/full_cache.h AttentionWithLse (with every key visible), applied to the concatenation.
//
// score(h, t) = (q_h / √d) · k_t (+ the set's bias of row t) in float32;
// lse_h = log Σ_t exp(score(h, t)); out_h = Σ_t exp(score(h, t) − lse_h) v_t. Query head h reads kv-head h / (H_q / H_kv).
// A head that sees no key gets out = 0 and lse = −inf (so merging it with anything is a no-op).
// Computed split-K in one kernel: blocks of 32 keys give partial (max, sum, weighted values); the
// last block of a head's group to finish merges them (a done-counter per group), in a fixed order,
// so the result does not depend on which block finished last. `out` may be written in bf16 as
// well or instead, rounded as ATen's float→bf16 cast rounds: a decode step writes the layer's
// attention output in the model's dtype where o_proj reads it, with no cast kernel after.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "kernels/dtype.h"

namespace kiv::kernels {

inline constexpr uint32_t kAttentionMaxSets = 3;

// One key/value set: element (kv-head h, row t, dim e) of the keys is at
// keys[h · head_stride + t · d + e] (likewise values), rows contiguous within a head.
struct KvSet {
  const void* keys = nullptr;    // [H_kv][..][d] device, `dtype`
  const void* values = nullptr;  // [H_kv][..][d] device, `dtype`
  DType dtype = DType::kFloat32;
  uint32_t max_rows = 0;             // rows per kv-head the launch covers (0: the set is empty);
                                     // all of them must be readable, even past `counts`
  uint64_t head_stride = 0;          // elements from one kv-head to the next; 0 means max_rows · d
  const uint32_t* counts = nullptr;  // [H_kv] device, optional: kv-head h uses its first
                                     // min(counts[h], max_rows) rows (e.g. gather's out_counts)
  const float* bias = nullptr;  // [H_kv][max_rows] device, optional: added to row t's score for
                                // kv-head h (bias[h · max_rows + t]): a log weight, as a tail
                                // sample's token stands for several (gather.h, LaunchTailSample)
};

struct SparseAttentionParams {
  uint32_t num_q_heads = 0;   // H_q, a multiple of H_kv
  uint32_t num_kv_heads = 0;  // H_kv
  uint32_t head_dim = 64;     // d: 64 or 128
  const void* q = nullptr;    // [H_q][d] device, `q_dtype`
  DType q_dtype = DType::kFloat32;
  KvSet sets[kAttentionMaxSets];
  uint32_t num_sets = 0;      // sets[0 .. num_sets) are attended to
  float* out = nullptr;       // [H_q][d] device float32; may be null when out_bf16 is set
  void* out_bf16 = nullptr;   // [H_q][d] device bfloat16, optional: out rounded to nearest even
                              // (__float2bfloat16_rn, the rounding of ATen's cast)
  float* lse = nullptr;       // [H_q] device: natural log of the softmax normaliser
  void* workspace = nullptr;  // device scratch of SparseAttentionWorkspaceBytes(*this) bytes
  size_t workspace_bytes = 0;
  // [SparseAttentionDoneCount(*this)] device counters: zero before a launch, and zero again after
  // it (each group's last block resets its own), so one buffer zeroed once serves every launch,
  // CUDA graph replays included. Launches that share it must not overlap (one stream).
  uint32_t* done = nullptr;
};

// Scratch for the partial results: H_q × (number of 32-row blocks over all sets) × (d + 2) floats.
size_t SparseAttentionWorkspaceBytes(const SparseAttentionParams& params);

// Done-counters a launch uses: one per kv-head and group of up to 8 of its query heads,
// H_kv · ⌈(H_q / H_kv) / 8⌉ (0 without kv-heads).
uint32_t SparseAttentionDoneCount(const SparseAttentionParams& params);

// Empty when the launch is supported; otherwise what is wrong, naming the value.
std::string CheckSparseAttention(const SparseAttentionParams& params);

// Enqueues the kernel on `stream` (nullptr: the legacy default stream); no host sync. Returns
// the cudaError_t as int (0 = cudaSuccess): cudaErrorInvalidValue for an unsupported shape, with
// CheckSparseAttention's message in `*error` (on stderr when error is null), else the launch
// status.
int LaunchSparseDecodeAttention(const SparseAttentionParams& params, CUstream_st* stream,
                                std::string* error = nullptr);

}  // namespace kiv::kernels
