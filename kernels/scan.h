// The asymmetric scan and its top-C select on the GPU: the device twin of
// index::QuantizeProjectedQuery, index::AsymmetricScan and index::SelectLargest
// (index/asym_scan.h), equal to them bit for bit.
//
// One call serves a whole decode step of one layer: P independent problems, each one query (or one
// summed query group) against one kv-head's resident key signatures. Per problem:
//   scores[t] = norms[t] · (scale · S_t),  S_t = Σ_i qq_i · (bit i of sig t ? +1 : −1)
// S_t is an exact integer (int8 tensor-core products of the query's halves and the bits), so
// the CPU's byte-table sum and the GPU's product agree whatever their order.
//   selected  = the c largest scores as indices in ascending order, ties to the lower index
// The select is a radix select (11 + 11 + 10 bits) on the order-preserving key of each float
// score, and a compaction that keeps index order: no sort anywhere. The scan itself histograms
// the top 11 bits; when the bin holding the c-th largest leaves at most 16384 candidates (the
// usual case) one more pass over the [P][n] scores gathers them and one block per problem
// finishes from them; otherwise (heavy ties) two histogram passes and a compaction pass over the
// scores do. scan.cu has the kernels and the numbers measured on an H100.
//
// A decode step can skip the scores altogether (ScanSelectArgs::guess): each problem keeps, from
// one call to the next, a guessed threshold below the last call's c-th largest score. A first scan
// writes no scores and no histogram; it only gathers the tokens that score above the guess. When
// at least c and at most 16384 of them did, the c largest are among them, and one block finishes
// from them; otherwise (the first call, a jump in the scores) the path above runs for that
// problem. The selection is the same either way: only the time differs. The guess is either the
// last call's (set by its finish) or, with ScanSelectArgs::sample, this call's own: the threshold
// of a small sample of the tokens scored against this call's query (kiv's decode steps: a real
// model's query tail moves from one step to the next, so the last step's guess misses often).
//
// Plain C++: no CUDA headers. Streams travel as `CUstream_st*` (what cudaStream_t is); launchers
// return a cudaError_t as int (0 = cudaSuccess) and put the reason for a refused shape in `*error`.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <string>

#include "kernels/layer.h"

struct CUstream_st;

namespace kiv::kernels {

// Order-preserving key of a float's bits: a > b ⇔ key(a) > key(b) and a == b ⇔ key(a) == key(b)
// for every non-NaN float; −0 and +0 share a key because they compare equal. Scores must not be
// NaN (the CPU's SelectLargest has no defined order for them either).
constexpr uint32_t ScoreKeyFromBits(uint32_t bits) {
  if (bits == 0x80000000u) bits = 0;  // −0 → +0
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}
inline uint32_t ScoreKey(float score) { return ScoreKeyFromBits(std::bit_cast<uint32_t>(score)); }

// The scan's query, on the device: index::QuantizeProjectedQuery's qq split into int8 halves
// qq = 256 · hi + lo, laid out for the tensor-core product (scan.cu, MmaScanKernel):
//   [0, bits)          hi, int8, bit i at its fragment position (a permutation of each 32 bits)
//   [bits, 2 · bits)   lo, the same
//   [2 · bits]         int32 Σ_i qq_i, then float scale, then uint64 Σ_i qq_i² (the guess's unit)
// ScanQueryBytes(bits) bytes each (a multiple of 16).
size_t ScanQueryBytes(uint32_t bits);

// One blob on the host from qq[bits] and its scale (what the device builder must equal).
void PackScanQuery(const int32_t* qq, uint32_t bits, float scale, uint8_t* blob);

// Device blobs from device queries, as index::QuantizeProjectedQuery computes them:
// projection: [bits][dim] float (SignatureProjection::matrix() copied to the device)
// queries:    [num_queries][g][dim] float; each blob is of its g queries summed
// blobs:      [num_queries][ScanQueryBytes(bits)] bytes, written
// bits ∈ {64, 128, 256}, dim ≤ 1024. Per-query scans: g = 1; one summed group: g = its size.
int BuildScanQueries(const float* projection, uint32_t bits, uint32_t dim, const float* queries,
                     uint32_t g, uint32_t num_queries, uint8_t* blobs, CUstream_st* stream,
                     std::string* error = nullptr);

// A decode step's row writes and its per-query scan blobs in one launch: LaunchDecodeKvWrite(p)
// (kernels/layer.h: q's heads to float in p.q_out, the k and v rows into the hot buffers), and
// blobs [q_heads][ScanQueryBytes(bits)] equal to BuildScanQueries(projection, bits, head_dim,
// p.q_out, 1, q_heads, blobs) after it, bit for bit. head_dim ≤ 1024, and
// BuildDecodeScanQueriesFits(bits, head_dim) (the shared memory: head_dim + bits ≤ 768).
bool BuildDecodeScanQueriesFits(uint32_t bits, uint32_t head_dim);
int BuildDecodeScanQueries(const float* projection, uint32_t bits, const DecodeKvWriteParams& p,
                           uint8_t* blobs, CUstream_st* stream, std::string* error = nullptr);

// One problem of a batched scan. All pointers are device pointers.
struct ScanProblem {
  const uint64_t* signatures;  // [n][words] uint64 key signatures of one kv-head
  const float* norms;          // [n] float key norms; null: all 1
  const uint8_t* query;        // ScanQueryBytes(words · 64) bytes (BuildScanQueries or host)
};

struct ScanSelectArgs {
  const ScanProblem* problems = nullptr;  // HOST array [num_problems]; read before the call returns
  uint32_t num_problems = 0;              // P, any number (launched in chunks of kMaxChunk)
  uint32_t n = 0;                         // tokens per problem, < 2^31; with n_device, the
                                          // capacity: the most tokens and the scores' row stride
  // Optional [1] uint32 in device memory: the tokens each problem holds now (≤ n), read by the
  // kernels when they run, so a launch captured in a CUDA graph stays valid as the cold tier
  // grows. Null: n tokens.
  const uint32_t* n_device = nullptr;
  uint32_t words = 2;                     // 64-bit words per signature: 1, 2 or 4
  uint32_t c = 0;                         // how many to keep per problem
  // Problems [s · share, (s + 1) · share) read the same signatures and norms (a GQA group's
  // per-query scans of one kv-head, or a prefill chunk's blocks): each token is loaded once and
  // scored for all of them in one product. Must divide num_problems; at most 8.
  uint32_t share = 1;
  float* scores = nullptr;                // [P][n] float, device, written (the scan's scores; row
                                          // stride n, the first *n_device of a row with it)
  uint32_t* selected = nullptr;           // [P][c] uint32, device: min(c, n) ascending indices
  uint32_t* counts = nullptr;             // [P] uint32, device: min(c, n); may be null
  void* workspace = nullptr;              // ScanSelectWorkspaceBytes(P, n) bytes, device
  size_t workspace_bytes = 0;
  // Optional [P] float, device, kept by the caller from one call to the next for the same P
  // problems (a layer's decode steps): each problem's guessed threshold, in units of its query's
  // scale · sqrt(Σ qq²), read by the scan and rewritten by the finish. Fill with NaN (no guess)
  // before the first call. Needs c <= kScanGuessMaxC. Null: no guessing (prefill's problems change
  // from call to call).
  float* guess = nullptr;
  // Optional [4] uint32, device, with a guess: += the problems (with c < n) whose guess held
  // ([0]) and did not ([1]) this call, and of those that did not, the ones whose guess gathered
  // fewer than c tokens or had none yet ([2]) and the ones where more than the candidate buffer
  // holds (16,384) reached it ([3]).
  uint32_t* guess_counts = nullptr;
  // With a guess, how the next one is set: where a guess held and gathered at least
  // guess_target · c tokens, at the score of about the (guess_target · c)-th largest; otherwise
  // guess_margin of its size below this call's c-th largest score (scan.cu). The selection does
  // not depend on them, only how often a guess holds.
  uint32_t guess_target = 8;
  float guess_margin = 0.25f;
  // With a guess, n_device, and `stream` being captured into a CUDA graph: the full select's four
  // kernels go into the body of a conditional node that the finish turns on only when a guess of
  // the chunk missed, so a replay whose guesses all held launches two kernels, not six. False:
  // they are captured as plain nodes and return at once (the A/B switch, KIV_SCAN_CONDITIONAL=0).
  bool conditional = true;
  // With a guess: the finish ends its selects in a rank among a histogram bin's few keys and
  // counts each chosen token's place with several lanes. False: histogram levels to the end and
  // one lane a token (the A/B switch, KIV_SCAN_QUICK_FINISH=0); the selection is the same.
  bool quick_finish = true;
  // With a guess: the guess scan's warps test every token of a round (64 of them, 32 with four
  // words) and vote once whether any goes to a candidate buffer. False: a vote for each 8 rows
  // of a tile (the A/B switch, KIV_SCAN_ONE_VOTE=0); the candidates are the same.
  bool one_vote = true;
  // With a guess: each call guesses from its own query (what the tail of this call's scores
  // looks like), not from the last call's. A first kernel scores a sample of each problem's
  // tokens (ScanSampleStride) and sets the guess at the sample's ScanSampleRank-th largest
  // score, where about guess_target · c tokens reach it; the last call's guess is not read and
  // the finishes write none (`guess` then holds the sample's guesses after the call; before the
  // first call it may hold anything). Costs one more kernel (about 4.6 us a layer at 1M tokens
  // on an H100). kiv's decode steps set it; KIV_SCAN_SAMPLE=0 (the A/B switch) leaves it false:
  // the last call's guess (guess_target, guess_margin as above).
  bool sample = false;
};

// The sampled guess (ScanSelectArgs::sample) of a problem of n tokens: tokens 0, s, 2s, … < n
// with s = ScanSampleStride(n) (every 64th, spread to at most 4,096 of them), and the rank in
// the sample, from the largest, of the score it guesses: ⌈target · c / s⌉, at least 1, at most
// the sample's size. Tokens at or above it: about target · c.
inline constexpr uint32_t kScanSampleStride = 64, kScanSampleMax = 4096;
constexpr uint32_t ScanSampleStride(uint32_t n) {
  const uint32_t spread = (n + kScanSampleMax - 1) / kScanSampleMax;
  return spread > kScanSampleStride ? spread : kScanSampleStride;
}
// The rank for a sample of `size` tokens taken every `stride`-th (also the CPU's guess
// simulator's, runtime/guess_sim.h, for other strides).
constexpr uint32_t SampleRank(uint32_t size, uint32_t stride, uint32_t c, uint32_t target) {
  const uint64_t want = (uint64_t{target} * c + stride - 1) / stride;
  return want < 1 ? 1 : want > size ? size : uint32_t(want);
}
constexpr uint32_t ScanSampleRank(uint32_t n, uint32_t c, uint32_t target) {
  const uint32_t s = ScanSampleStride(n);
  return SampleRank((n + s - 1) / s, s, c, target);
}

// The most a problem may keep (c) when it guesses: the finish sorts its selection in shared memory.
inline constexpr uint32_t kScanGuessMaxC = 1024;

// Device scratch for ScanSelect (histograms, pass states, compaction tile states). Cleared by
// each call on its stream, so one workspace serves calls on one stream one after another.
size_t ScanSelectWorkspaceBytes(uint32_t num_problems, uint32_t n);

// Scan + select for every problem: 4 kernels and one memset on `stream` (6 kernels with a guess;
// captured with a guess, 2 and a conditional node, ScanSelectArgs::conditional), no host sync.
// Entries of `selected` past min(c, n) are left as they were (n: *n_device when given). With
// n_device the launch shapes depend only on the capacity n, so the call may be captured.
int ScanSelect(const ScanSelectArgs& args, CUstream_st* stream, std::string* error = nullptr);

}  // namespace kiv::kernels
