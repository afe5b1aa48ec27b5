// Re-rank, gather and dequantize cold records on the GPU: the device twin of index::RerankTopK
// followed by RecordCodec::Decode of the winners (what runtime/tiered_cache.cpp Retrieve and
// ColdAttention do on the CPU). See ../docs/format.md "Records" for the 104-byte layout.
//
// One launch serves P independent problems (e.g. the kv-heads of one layer). For problem p:
//   1. each of its c candidates' stored keys is decoded and scored against the g queries
//      (logit = Σ_slices (q_slice · k_slice) / √d in float, the CPU's order and rounding);
//   2. each query's softmax over the candidates is summed into a group weight, and the k
//      largest weights are chosen, ties to the lower candidate index. The softmax is in float
//      where RerankTopK takes exp and the row sums in double: the weights agree to a few float
//      roundings, so the choice can differ only where two weights at the k-th place nearly tie;
//   3. the chosen token ids are written in ascending order, and their records are decoded in
//      that order: keys un-rotated, exactly as RecordCodec::Decode returns them (bit for bit),
//      and values.
// Records are read straight from `records[p] + token * record_stride_bytes`: device memory, or
// host memory registered with cudaHostRegister(cudaHostRegisterMapped) and addressed through its
// device pointer (zero-copy over PCIe); the kernels do not care which. Any byte stride and base
// alignment works; 4-byte aligned records are read a word at a time, others a byte at a time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "index/record.h"
#include "kernels/dtype.h"

namespace kiv::kernels {

inline constexpr uint32_t kGatherMaxCandidates = 5120;  // c (C = 4,096 split over 3 query heads
                                                        // unites up to 4,098)
inline constexpr uint32_t kGatherMaxTopK = 1024;        // k
inline constexpr uint32_t kGatherMaxGroup = 256;        // g

struct RerankGatherParams {
  uint32_t num_problems = 0;    // P, at most 65535
  uint32_t head_dim = 64;       // d = 64 · s: s = 1 or 2 records side by side per token
  uint32_t group = 1;           // g queries per problem
  uint32_t num_candidates = 0;  // c: the row length of `candidates`
  uint32_t top_k = 0;           // k >= 1
  index::RecordCodec codec;     // key_bits + value_bits = 12, key_bits in 1..11
  // false: the kernel applies RecordCodec::RotateQuery to each 64-dim slice (bit-exact with the
  // CPU's), so queries can come straight from the model; true: they already went through it.
  bool queries_rotated = false;
  DType out_dtype = DType::kFloat32;  // of out_keys and out_values
  uint64_t record_stride_bytes =
      index::kRecordBytes;  // token t+1's record minus token t's, >= 104·s

  // [P] device array of device-accessible pointers: problem p's record of token t (its s slices
  // side by side) starts at records[p] + t * record_stride_bytes. Token ids are trusted: the
  // caller keeps them inside the mapped range.
  const uint8_t* const* records = nullptr;
  const uint32_t* candidates = nullptr;        // [P][c] device: candidate token ids
  const uint32_t* candidate_counts = nullptr;  // [P] device, optional: problem p uses its first
                                               // min(count, c) candidates; nullptr: all c
  const float* queries = nullptr;              // [P][g][d] device

  uint32_t* out_ids = nullptr;     // [P][k] device: chosen token ids ascending, then zeros
  uint32_t* out_counts = nullptr;  // [P] device: min(k, candidates used)
  void* out_keys =
      nullptr;  // [P][k][d] out_dtype: decoded keys (un-rotated), zero rows past the count
  void* out_values = nullptr;  // [P][k][d] out_dtype: decoded values, likewise

  void* workspace = nullptr;  // device scratch of RerankGatherWorkspaceBytes(*this) bytes
  size_t workspace_bytes = 0;
};

// Scratch the launch needs: the [P][g][c] float logits.
size_t RerankGatherWorkspaceBytes(const RerankGatherParams& params);

// Empty when the launch is supported; otherwise what is wrong, naming the value.
std::string CheckRerankGather(const RerankGatherParams& params);

// Enqueues the two kernels on `stream` (nullptr: the legacy default stream); no host sync.
// Returns the cudaError_t as int (0 = cudaSuccess): cudaErrorInvalidValue for an unsupported
// shape, with CheckRerankGather's message in `*error` (on stderr when error is null), else the
// launch status.
int LaunchRerankGather(const RerankGatherParams& params, CUstream_st* stream,
                       std::string* error = nullptr);

// The tail sample on the GPU: the device twin of index::TailSample followed by RecordCodec::Decode
// of the drawn tokens (runtime/cache_options.h, tail_samples). One launch serves P problems, each
// one (rep, kv-head) of a layer, p = rep · kv_heads + head: of the `cold` tokens of its slot, those
// not among its picked ids (RerankGather's out_ids and out_counts) are the unpicked; it draws at
// most `samples` of them with the offset index::TailSampleOffset(seed, layer, head, position + rep ·
// position_step), bit for bit the CPU's ids and log weights, and decodes their records as
// RerankGather decodes its winners.
inline constexpr uint32_t kTailMaxSamples = 4096;

struct TailSampleParams {
  uint32_t num_problems = 0;  // P, at most 65535
  uint32_t kv_heads = 1;      // problem p is kv-head p % kv_heads of rep p / kv_heads
  uint32_t head_dim = 64;     // d = 64 · s
  uint32_t samples = 0;       // m, 1..kTailMaxSamples
  uint32_t recent = 0;        // index::TailSample's recent stratum (0: one stratum)
  index::RecordCodec codec;
  DType out_dtype = DType::kFloat32;  // of out_keys and out_values
  uint64_t record_stride_bytes = index::kRecordBytes;
  const uint8_t* const* records = nullptr;  // [P] device array, as RerankGatherParams::records

  const uint32_t* picked = nullptr;         // [P][picked_stride] device: ids ascending
  const uint32_t* picked_counts = nullptr;  // [P] device: problem p's first min(count, stride)
  uint32_t picked_stride = 0;               // 1..kGatherMaxTopK
  uint32_t cold = 0;                        // cold tokens of every problem's slot
  const uint32_t* cold_device = nullptr;    // [1] device, optional: read instead of `cold`

  uint64_t seed = 0;                          // the session's projection seed
  uint32_t layer = 0;
  int64_t position = 0;                       // rep 0's position
  const int64_t* position_device = nullptr;   // [1] device, optional: added to `position`
  int64_t position_step = 0;                  // rep r's position: position + r · position_step

  uint32_t* out_ids = nullptr;       // [P][m] device: drawn ids ascending, then zeros
  uint32_t* out_counts = nullptr;    // [P] device: ids drawn (≤ m; 0 when nothing is unpicked)
  float* out_log_weights = nullptr;  // [P][m] device: each drawn token's log weight, then zeros
  void* out_keys = nullptr;          // [P][m][d] out_dtype: decoded keys, zero rows past the count
  void* out_values = nullptr;        // [P][m][d] out_dtype: decoded values, likewise
};

// Empty when the launch is supported; otherwise what is wrong, naming the value.
std::string CheckTailSample(const TailSampleParams& params);

// Enqueues the kernel on `stream` (nullptr: the legacy default stream); no host sync. Returns the
// cudaError_t as int, as LaunchRerankGather does.
int LaunchTailSample(const TailSampleParams& params, CUstream_st* stream,
                     std::string* error = nullptr);

}  // namespace kiv::kernels
