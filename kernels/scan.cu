// The asymmetric scan and its top-C select on the GPU; see scan.h for what and why.
//
// Four kernels per chunk of up to kMaxChunk problems (grid.y = problem), after one memset of the
// workspace, all on one stream:
//   AsymScan  scores[p][t], and the histogram of key bits 31..21 of every score; its last block
//             picks the bin b0 holding the c-th largest, and the mode:
//   small     (the usual case: at most kCandidates scores have key >= b0 << 21)
//     Pass1   gathers those scores (index, key) in index order into the candidate buffer
//     Pass2   one block per problem: bits 20..10 and 9..0 of the threshold from the candidates,
//             then writes the selection from them in index order
//     Compact returns at once
//   large     (ties or a wide bin: the general path)
//     Pass1   histogram of key bits 20..10 of all scores inside b0; last block picks b1
//     Pass2   histogram of key bits 9..0 inside (b0, b1); last block picks b2: the threshold K
//     Compact every index with key > K, then those with key == K by index up to c, in index order
// The mode is decided on the device, so the host launches the same four kernels either way and
// never waits. A histogram kernel's last block to finish (a device-wide counter) does the picking,
// so no launch is spent on it. Compactions keep index order by a decoupled look-back over tiles.
//
// With a guess (ScanSelectArgs::guess, a decode step's scans), two kernels come first:
//   GuessScan    (MmaScanKernel<.., true>) no scores, no histogram: the tokens at or above each
//                problem's guessed key, unordered, into the candidate buffer
//   FinishGuess  one block per problem whose guess held (at least c, at most kCandidates
//                gathered): the selection from them, and the next guess
// and the four above return at once for the problems whose guess held. With
// ScanSelectArgs::sample, one more kernel comes before them:
//   SampleGuess  8 blocks a problem score a sample of its tokens (every 64th, at most 4,096)
//                against its own query; the last sets the guess at the sample's
//                ScanSampleRank-th largest score (about guess_target · c tokens reach it)
// Captured in a CUDA graph (ScanSelectArgs::conditional), the four go into the body of a
// conditional node instead, which the finish's last block turns on only when a guess of the chunk
// missed: a replay whose guesses all held launches the guess scan and the finish alone (and the
// sample before them). docs/performance.md has the times ("The
// decode select guesses its threshold"); the numbers below predate it.
//
// Measured on an H100 SXM (n = 1M, 128 bits, c = 1024, mean of 50 calls): 66 us for P = 3 and
// 154 us for P = 9, i.e. 0.95 and 1.23 TB/s of signatures + norms. Per stage at P = 3 (event
// timings, each inflated by a few us): scan 46, pass1 15, pass2 17.5 (the one-block finish),
// compact 4. The scan reaches 48 % of DRAM peak: it is bound as much by its table lookups (16
// random 4-byte shared-memory reads per token, about 3.5-way bank conflicts; ncu shows MIO-throttle
// and short-scoreboard stalls) as by memory. Problems that share a kv-head's signatures (a GQA
// group's per-query scans, ScanSelectArgs::share) now share one read of them: P = 9, c = 342,
// 155 → 136 us with share 3 (ae64437). What is left is the lookups, not the reads; the finish
// could use more blocks.
//
// Exactness: every float operation is an explicit __fadd_rn / __fmul_rn, in the order of
// index/asym_scan.cpp, so nvcc cannot contract them into FMA and results equal the CPU's bit for
// bit (the CPU build has no FMA: x86-64 without -mfma).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>
#include <cub/block/block_load.cuh>
#include <cub/block/block_scan.cuh>
#include <cuda/atomic>

#include "kernels/scan.h"

#include "index/asym_scan.h"

#include "kernels/cuda_call.cuh"
#include "kernels/decode_kv.cuh"

namespace kiv::kernels {
namespace {

constexpr uint32_t kThreads = 256;
constexpr uint32_t kMaxChunk = 64;  // problems per launch: kernel parameters stay < 4 KB
constexpr uint32_t kUnroll = 4;     // tokens in flight per thread in the streaming passes
constexpr uint32_t kScanBlocksPerSm = 3;  // MmaScanKernel's launch bound (≤ 85 registers)
constexpr uint32_t kTileItems = 16;  // compaction: tokens per thread
constexpr uint32_t kTileTokens = kThreads * kTileItems;
constexpr uint32_t kBins0 = 2048, kBins1 = 2048, kBins2 = 1024;  // key bits 31..21, 20..10, 9..0
constexpr uint32_t kHistWords = kBins0 + kBins1 + kBins2;
// Candidate buffer per problem for the small mode. For c = 1024 of 1M Gaussian-like scores the
// bin b0 (2 mantissa bits wide) holds a few thousand; more than this takes the large mode.
constexpr uint32_t kCandidates = 16384;
constexpr uint32_t kModeLarge = 0, kModeSmall = 1;
// The guess for the next call (in units of the query's scale · sqrt(Σ qq²)): where this call's
// guess gathered at least guess_target · c tokens, the score of about the (guess_target · c)-th
// largest (at 1M Gaussian-like scores with c = 342 and the default 8: z ≈ 2.8 against the c-th's
// 3.4, 18 % of room for the next query's tail to move); otherwise (the full select ran, or too
// few were gathered) guess_margin of |z| below this call's c-th (0.25: about 16 c of them at 1M).
// ScanSelectArgs::guess_target and guess_margin.
// The guess scan's gather key when a problem has no guess: above every non-NaN score's key.
constexpr uint32_t kNoGather = 0xFFFFFFFFu;

// Per problem, in the workspace.
struct PassState {
  uint32_t prefix;     // key bits chosen so far, in place
  uint32_t k;          // how many are still wanted among the keys that share those bits
  uint32_t done[3];    // blocks finished, per histogram level
  uint32_t tile_next;  // compaction: the next tile id to hand out
  uint32_t mode;       // kModeSmall or kModeLarge, set by the scan's last block
  uint32_t count;      // bucket size after ChooseBin; the candidates' count in the small mode
  uint32_t appended;   // guess: the tokens that scored at or above the guess (some may not fit)
  float unit;          // guess: the query's scale · sqrt(Σ qq²), the guess's unit
  // A chunk's first problem only, in a captured call (ScanSelectArgs::conditional): how many of
  // FinishGuessKernel's blocks have finished, and how many of their problems missed.
  uint32_t finished;
  uint32_t missed;
  uint32_t sampled;  // SampleGuessKernel: the problem's blocks that have finished
};
static_assert(sizeof(PassState) == 52);

struct Workspace {
  PassState* states;          // [P]
  uint32_t* hists;            // [P][kHistWords] global histograms of the three levels
  unsigned long long* tiles;  // [P][tiles_per_problem] compaction look-back descriptors
  uint32_t* cand_index;       // [P][kCandidates] small mode: candidate token indices, ascending
  uint32_t* cand_key;         // [P][kCandidates] small mode: their score keys
  uint32_t tiles_per_problem;
  uint32_t guess_target;  // ScanSelectArgs::guess_target
  float guess_margin;     // ScanSelectArgs::guess_margin
};

struct ProblemChunk {
  ScanProblem problems[kMaxChunk];
  uint32_t first;  // global index of problems[0]
  uint32_t share;  // problems per group that read the same signatures (ScanSelectArgs::share)
};

// The tokens of every problem: `stride` (the capacity the launch is sized for, and the scores'
// row stride), or *device when set (read as the kernel runs: a captured launch follows the count).
struct TokenCount {
  uint32_t stride;
  const uint32_t* device;
  __device__ __forceinline__ uint32_t Get() const { return device ? min(*device, stride) : stride; }
};

// Whether a problem's guess held: at least c tokens scored at or above it (so the c largest are
// among them) and they all fit the candidate buffer. Every kernel after the guess scan asks.
__device__ __forceinline__ bool GuessHeld(const PassState* state, uint32_t c, uint32_t n) {
  const uint32_t appended = state->appended;
  return c < n && appended >= c && appended <= kCandidates;
}

uint32_t TilesPerProblem(uint32_t n) { return (n + kTileTokens - 1) / kTileTokens; }

size_t Align256(size_t bytes) { return (bytes + 255) / 256 * 256; }

Workspace CarveWorkspace(void* base, uint32_t num_problems, uint32_t n) {
  char* p = static_cast<char*>(base);
  Workspace w;
  w.tiles_per_problem = TilesPerProblem(n);
  w.states = reinterpret_cast<PassState*>(p);
  p += Align256(sizeof(PassState) * num_problems);
  w.hists = reinterpret_cast<uint32_t*>(p);
  p += Align256(sizeof(uint32_t) * kHistWords * num_problems);
  w.tiles = reinterpret_cast<unsigned long long*>(p);
  p += Align256(sizeof(unsigned long long) * w.tiles_per_problem * num_problems);
  w.cand_index = reinterpret_cast<uint32_t*>(p);
  p += Align256(sizeof(uint32_t) * kCandidates * num_problems);
  w.cand_key = reinterpret_cast<uint32_t*>(p);
  return w;
}

// What must be zero at the start of a call: states, histograms, look-back descriptors.
size_t ClearedBytes(uint32_t num_problems, uint32_t n) {
  return Align256(sizeof(PassState) * num_problems) +
         Align256(sizeof(uint32_t) * kHistWords * num_problems) +
         Align256(sizeof(unsigned long long) * TilesPerProblem(n) * num_problems);
}

__device__ __forceinline__ uint32_t DeviceKey(float score) {
  return ScoreKeyFromBits(__float_as_uint(score));
}

// The float whose key is `key` (ScoreKeyFromBits inverted; −0 comes back as +0).
__device__ __forceinline__ float ScoreOfKey(uint32_t key) {
  return __uint_as_float((key & 0x80000000u) ? (key & 0x7FFFFFFFu) : ~key);
}

// The next call's guess from a key of this call: its score in the query's unit, lowered by
// `margin` of its size. NaN (no guess) where the unit is zero (a zero query).
__device__ void WriteGuess(float* guess, uint32_t key, float unit, float margin) {
  const float z = ScoreOfKey(key) / unit;
  *guess = unit > 0.0f && isfinite(z) ? z - margin * fabsf(z) : __uint_as_float(0x7FC00000u);
}

// True in every thread of the block that finished last among the grid's blocks of this problem.
// Its global histogram writes (atomics) are then all visible to it.
__device__ bool LastBlockOfProblem(uint32_t* done) {
  __shared__ bool last;
  __threadfence();  // this block's histogram atomics before its count
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(done, 1u) == gridDim.x - 1;
  __syncthreads();
  if (last) __threadfence();
  return last;
}

// The bin (counting from the top) where the running count of `hist` reaches state->k: fixes the
// bin's bits in state->prefix, leaves in state->k how many of that bin are still wanted and in
// state->count how many the bin holds. kGlobal: `hist` is global memory other blocks wrote.
template <uint32_t kBins, uint32_t kShift, bool kGlobal, uint32_t kBlock = kThreads>
__device__ void ChooseBin(const uint32_t* hist, PassState* state) {
  constexpr uint32_t kPer = kBins / kBlock;
  using Scan = cub::BlockScan<uint32_t, kBlock>;
  __shared__ typename Scan::TempStorage scan_storage;
  const uint32_t k = state->k;
  uint32_t counts[kPer], sum = 0;
#pragma unroll
  for (uint32_t j = 0; j < kPer; ++j) {  // this thread's bins, highest first
    const uint32_t bin = kBins - 1 - (threadIdx.x * kPer + j);
    counts[j] = kGlobal ? __ldcg(hist + bin) : hist[bin];
    sum += counts[j];
  }
  uint32_t above;  // count in all bins above this thread's first bin
  Scan(scan_storage).ExclusiveSum(sum, above);
#pragma unroll
  for (uint32_t j = 0; j < kPer; ++j) {
    if (above < k && above + counts[j] >= k) {
      state->prefix |= (kBins - 1 - (threadIdx.x * kPer + j)) << kShift;
      state->k = k - above;
      state->count = counts[j];
    }
    above += counts[j];
  }
}

template <uint32_t kBins>
__device__ void FlushHistogram(const uint32_t* shared_hist, uint32_t* global_hist) {
  __syncthreads();
  for (uint32_t i = threadIdx.x; i < kBins; i += kThreads)
    if (shared_hist[i] != 0) atomicAdd(global_hist + i, shared_hist[i]);
}

// One int8 tensor-core product (mma.sync m16n8k32, s8 × s8 → s32): d += a · b for a warp's
// 16 × 32 tile of a and 32 × 8 tile of b. Fragments (PTX ISA, "Matrix fragments for mma.m16n8k32"),
// g = lane / 4, t = lane % 4: a0 row g, a1 row g + 8, a2 row g, a3 row g + 8, each 4 columns
// (4t .. 4t + 3; a2, a3: + 16); b0 rows 4t .. 4t + 3, b1 + 16, column g; d0, d1 row g, d2, d3
// row g + 8, columns 2t, 2t + 1.
__device__ __forceinline__ void MmaS8(int32_t (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                      uint32_t a3, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t WarpSum(uint32_t x) {
#pragma unroll
  for (uint32_t offset = 16; offset > 0; offset /= 2) x += __shfl_xor_sync(0xFFFFFFFFu, x, offset);
  return x;
}

// The k-th largest key of the `in` items among `total` (key_of(i, &in) gives item i's), in one
// block, and in *left how many items equal to it are among the k largest. A radix select over
// the keys' own range [lo, hi], found first: each level spreads 2,048 bins across what is left of
// the range, so they fill evenly where a fixed radix's top bits would crowd a few bins (the
// candidates of a guess share their exponent) and serialise the shared atomics. Three levels at
// most (21 + 11 bits of range, then the rest). Where a level's chosen bin holds at most `direct`
// items (<= kDirectSelect; the usual case after the first level: a guess's few thousand
// candidates over 2,048 bins), they go to shared memory and each finds its rank among them, in
// place of the levels that would follow. With also_k (<= total), *also gets the lower edge of
// the first level's bin that holds the also_k-th largest: that key or a little below it.
constexpr uint32_t kDirectSelect = 64;
template <uint32_t kBlock, typename KeyOf>
__device__ uint32_t BlockSelect(uint32_t total, uint32_t k, KeyOf key_of, uint32_t* hist,
                                uint32_t* left, uint32_t direct, uint32_t also_k = 0,
                                uint32_t* also = nullptr) {
  constexpr uint32_t kBins = 2048;
  static_assert(kDirectSelect <= kBins);
  __shared__ uint32_t range_lo, range_hi, gathered, direct_key, direct_left;
  __shared__ PassState pick;
  if (threadIdx.x == 0) {
    range_lo = ~0u;
    range_hi = 0;
  }
  __syncthreads();
  uint32_t lo = ~0u, hi = 0;
  for (uint32_t i = threadIdx.x; i < total; i += kBlock) {
    bool in = true;
    const uint32_t key = key_of(i, &in);
    if (in) {
      lo = min(lo, key);
      hi = max(hi, key);
    }
  }
  lo = __reduce_min_sync(0xFFFFFFFFu, lo);
  hi = __reduce_max_sync(0xFFFFFFFFu, hi);
  if (threadIdx.x % 32 == 0) {
    atomicMin(&range_lo, lo);
    atomicMax(&range_hi, hi);
  }
  __syncthreads();
  lo = range_lo;
  hi = range_hi;
  for (;;) {
    const uint32_t wide = (hi - lo) >> 11;
    const uint32_t shift = wide ? 32 - __clz(wide) : 0;  // (hi − lo) >> shift < kBins
    for (uint32_t i = threadIdx.x; i < kBins; i += kBlock) hist[i] = 0;
    if (threadIdx.x == 0) pick = PassState{0, k, {}, 0, 0, 0, 0, 0.0f, 0, 0, 0};
    __syncthreads();
    for (uint32_t i = threadIdx.x; i < total; i += kBlock) {
      bool in = true;
      const uint32_t key = key_of(i, &in);
      if (in && key >= lo && key <= hi) atomicAdd(hist + ((key - lo) >> shift), 1u);
    }
    __syncthreads();
    ChooseBin<kBins, 0, false, kBlock>(hist, &pick);  // the bin (from the top) holding the k-th
    __syncthreads();
    const uint32_t bin = pick.prefix, in_bin = pick.count;
    k = pick.k;
    if (also_k != 0) {  // the first level: the same histogram, the also_k-th
      __syncthreads();  // pick was read
      if (threadIdx.x == 0) pick = PassState{0, also_k, {}, 0, 0, 0, 0, 0.0f, 0, 0, 0};
      __syncthreads();
      ChooseBin<kBins, 0, false, kBlock>(hist, &pick);
      __syncthreads();
      *also = lo + (pick.prefix << shift);
      also_k = 0;
    }
    lo += bin << shift;
    hi = uint32_t(min(uint64_t{hi}, uint64_t{lo} + (uint64_t{1} << shift) - 1));
    if (threadIdx.x == 0) gathered = 0;
    __syncthreads();  // pick and hist are rewritten by the next level
    if (shift == 0) {
      *left = k;
      return lo;
    }
    if (in_bin <= direct) {  // the bin's keys into hist; the k-th largest by ranks
      for (uint32_t i = threadIdx.x; i < total; i += kBlock) {
        bool in = true;
        const uint32_t key = key_of(i, &in);
        if (in && key >= lo && key <= hi) hist[atomicAdd(&gathered, 1u)] = key;
      }
      __syncthreads();
      for (uint32_t i = threadIdx.x; i < in_bin; i += kBlock) {
        const uint32_t mine = hist[i];
        uint32_t above = 0, at_least = 0;
        for (uint32_t j = 0; j < in_bin; ++j) {
          above += hist[j] > mine;
          at_least += hist[j] >= mine;
        }
        if (above < k && at_least >= k) {  // every thread holding this key writes the same
          direct_key = mine;
          direct_left = k - above;
        }
      }
      __syncthreads();
      *left = direct_left;
      return direct_key;
    }
  }
}

// Shared memory of FinishFromGuess: every candidate's key, a histogram, the chosen indices, and
// (quick) every candidate's index.
constexpr uint32_t kFinishSharedWords = 2 * kCandidates + kBins0 + kScanGuessMaxC + 4;

// The guess held, one block: the c largest are among the `appended` gathered tokens, which are in
// no order. Their keys go to shared memory once (every load in flight together); the threshold key
// by BlockSelect over them; where more tokens tie at it than are wanted, the lowest indices among
// the tied by BlockSelect over their inverted indices; then each chosen token finds its place in
// index order by counting the chosen below it. `shared`: kFinishSharedWords. quick: the
// candidates' indices come to shared memory with their keys (no later round trip to global
// memory), the selects end in a rank among a bin's few keys, and up to 8 lanes count each chosen
// token's place together (ScanSelectArgs::quick_finish; false: histogram levels to the end, one
// lane a token, indices read from global memory where needed).
template <uint32_t kBlock>
__device__ void FinishFromGuess(uint32_t p, uint32_t c, const Workspace& ws, uint32_t* selected,
                                uint32_t* counts, float* guess, uint32_t* guess_counts,
                                uint32_t* shared, bool quick) {
  const uint32_t direct = quick ? kDirectSelect : 0;
  uint32_t* keys = shared;                          // [kCandidates]
  uint32_t* hist = keys + kCandidates;              // [kBins0]
  uint32_t* chosen = hist + kBins0;                 // [kScanGuessMaxC + 4]
  uint32_t* indices = chosen + kScanGuessMaxC + 4;  // [kCandidates], quick
  __shared__ PassState local;
  __shared__ uint32_t chosen_count, equal_count;
  const uint32_t* cand_index = ws.cand_index + size_t{p} * kCandidates;
  const uint32_t* cand_key = ws.cand_key + size_t{p} * kCandidates;
  if (threadIdx.x == 0) {
    local = ws.states[p];
    chosen_count = 0;
    equal_count = 0;
  }
  __syncthreads();
  const uint32_t total = local.appended;  // <= kCandidates, >= c: the guess held
  constexpr uint32_t kLoads = 8;
  for (uint32_t base = threadIdx.x; base < total; base += kLoads * kBlock) {
    uint32_t v[kLoads], x[kLoads];
#pragma unroll
    for (uint32_t u = 0; u < kLoads; ++u) {
      const uint32_t i = base + u * kBlock;
      if (i >= total) continue;
      v[u] = __ldcg(cand_key + i);
      if (quick) x[u] = __ldcg(cand_index + i);
    }
#pragma unroll
    for (uint32_t u = 0; u < kLoads; ++u) {
      const uint32_t i = base + u * kBlock;
      if (i >= total) continue;
      keys[i] = v[u];
      if (quick) indices[i] = x[u];
    }
  }
  __syncthreads();
  auto key = [&](uint32_t i, bool*) { return keys[i]; };
  auto index_of = [&](uint32_t i) { return quick ? indices[i] : __ldcg(cand_index + i); };
  uint32_t wanted_equal = 0;
  // The next call's guess: about the (guess_target · c)-th largest when that many were gathered.
  const uint32_t target = ws.guess_target * c;
  uint32_t target_key = 0;
  const uint32_t key_k = BlockSelect<kBlock>(total, c, key, hist, &wanted_equal, direct,
                                             guess && total >= target ? target : 0, &target_key);
  uint32_t equal = 0;
  for (uint32_t i = threadIdx.x; i < total; i += kBlock) equal += keys[i] == key_k;
  equal = WarpSum(equal);
  if (threadIdx.x % 32 == 0 && equal != 0) atomicAdd(&equal_count, equal);
  __syncthreads();
  uint32_t index_limit = ~0u;  // the tied tokens kept: index <= index_limit
  if (equal_count > wanted_equal) {
    auto tied = [&](uint32_t i, bool* in) {
      *in = keys[i] == key_k;
      return *in ? ~index_of(i) : 0u;  // the largest is the lowest index
    };
    uint32_t one = 0;
    index_limit = ~BlockSelect<kBlock>(total, wanted_equal, tied, hist, &one, direct);
  }
  // Whole warps go round together: the chosen of a warp take their places with one atomic.
  const uint32_t lane = threadIdx.x % 32;
  for (uint32_t i = threadIdx.x; i < (total + 31) / 32 * 32; i += kBlock) {
    bool pick = false;
    uint32_t index = 0;
    if (i < total && keys[i] >= key_k) {
      index = index_of(i);
      pick = keys[i] > key_k || index <= index_limit;
    }
    const uint32_t picked = __ballot_sync(0xFFFFFFFFu, pick);
    if (picked == 0) continue;
    uint32_t at = 0;
    if (lane == 0) at = atomicAdd(&chosen_count, __popc(picked));
    at = __shfl_sync(0xFFFFFFFFu, at, 0) + __popc(picked & ((1u << lane) - 1));
    if (pick && at < kScanGuessMaxC) chosen[at] = index;
  }
  // Pad to a multiple of 4 with indices no chosen one is above, for 16-byte reads.
  if (threadIdx.x < 4) chosen[c + threadIdx.x] = ~0u;  // chosen has kScanGuessMaxC + 4 words
  __syncthreads();
  // Each chosen token's place: `parts` neighbouring lanes (a power of two, as many as the block
  // has threads for) count a share of the chosen below it each, then add their counts.
  uint32_t* out = selected + size_t{p} * c;
  const uint4* four = reinterpret_cast<const uint4*>(chosen);
  const uint32_t quads = (c + 3) / 4;
  uint32_t parts = 1;
  while (quick && parts < 8 && 2 * parts * c <= kBlock) parts *= 2;
  for (uint32_t base = 0; base < c * parts; base += kBlock) {  // the same trips in every thread
    const uint32_t slot = base + threadIdx.x, i = slot / parts, part = slot % parts;
    const uint32_t index = i < c ? chosen[i] : 0u;
    uint32_t rank = 0;
    if (i < c) {
#pragma unroll 4
      for (uint32_t j = part; j < quads; j += parts) {
        const uint4 x = four[j];  // at most `parts` addresses a warp, in distinct banks
        rank += uint32_t(x.x < index) + uint32_t(x.y < index) + uint32_t(x.z < index) +
                uint32_t(x.w < index);
      }
    }
    for (uint32_t offset = 1; offset < parts; offset *= 2)
      rank += __shfl_xor_sync(0xFFFFFFFFu, rank, offset);
    if (i < c && part == 0) out[rank] = index;
  }
  if (threadIdx.x == 0 && counts) counts[p] = c;
  if (threadIdx.x == 0 && guess) {
    if (total >= target)
      WriteGuess(guess + p, target_key, local.unit, 0.0f);
    else
      WriteGuess(guess + p, key_k, local.unit, ws.guess_margin);
  }
  if (threadIdx.x == 0 && guess_counts) atomicAdd(guess_counts, 1u);
  __syncthreads();  // `shared` is free again
}

// Tokens a warp scores per round: kM tiles of 16.
template <uint32_t kWords>
constexpr uint32_t kScanTiles = kWords == 4 ? 2 : 4;

// A chunk of the scan's input in shared memory: a round of every warp of a block, its signatures
// and then its norms. kScanStages of them are in flight a block.
constexpr uint32_t kScanStages = 4;
template <uint32_t kWords>
struct ScanStage {
  static constexpr uint32_t kRound = 16 * kScanTiles<kWords>, kChunk = kThreads / 32 * kRound;
  static constexpr uint32_t kSigBytes = kChunk * kWords * 8;
  static constexpr uint32_t kBytes = kSigBytes + kChunk * 4;  // + norms: 16-byte multiples
};

// cp.async of kBytes (4, 8 or 16, both addresses aligned to it) into shared memory, and its
// groups (PTX ISA, "cp.async"): L2 only (.cg) for 16 bytes, the others through L1 (.ca).
template <uint32_t kBytes>
__device__ __forceinline__ void CpAsync(void* shared_to, const void* global_from) {
  const uint32_t to = uint32_t(__cvta_generic_to_shared(shared_to));
  if constexpr (kBytes == 16)
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(to), "l"(global_from));
  else
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2;\n" ::"r"(to), "l"(global_from),
                 "n"(kBytes));
}
__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }
template <uint32_t kPending>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

// The least v = 256 · acc_hi + acc_lo whose score (2v − Σ qq) · scale, without norms, has a key
// at or above `key`: the score is non-decreasing in v (float(S) is exact for |S| < 2^24, and
// rounding a product keeps order), so the tokens with v >= the result are exactly those with
// key >= `key`. INT32_MAX: none (no v reaches the key); INT32_MIN: all.
__device__ int32_t LeastGatheredV(uint32_t key, int32_t sum, float scale) {
  auto reaches = [&](int64_t v) {
    return DeviceKey(__fmul_rn(float(2 * v - sum), scale)) >= key;
  };
  constexpr int64_t kLimit = 1 << 23;  // |v| <= 257 · 127 · 256 < 2^23 (256 bits)
  if (!reaches(kLimit)) return INT32_MAX;
  if (reaches(-kLimit)) return INT32_MIN;
  int64_t lo = -kLimit, hi = kLimit;  // reaches(lo) is false, reaches(hi) true
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    (reaches(mid) ? hi : lo) = mid;
  }
  return int32_t(hi);
}

// The pieces of the product that MmaScanKernel and SampleGuessKernel share (see MmaScanKernel's
// comment for the layout). A lane's b fragments for one tile of 8 columns: `q` the query half
// its column g holds (hi or lo), or null (a zero column).
template <uint32_t kPieces>
__device__ __forceinline__ void LoadQueryHalf(const uint8_t* q, uint32_t t,
                                              uint32_t (&b)[kPieces][2]) {
#pragma unroll
  for (uint32_t kc = 0; kc < kPieces; ++kc) {
    b[kc][0] = q ? __ldg(reinterpret_cast<const uint32_t*>(q + kc * 32 + 4 * t)) : 0u;
    b[kc][1] = q ? __ldg(reinterpret_cast<const uint32_t*>(q + kc * 32 + 16 + 4 * t)) : 0u;
  }
}

// One signature (kWords words) from shared memory.
template <uint32_t kWords>
__device__ __forceinline__ void LoadSignature(const uint64_t* sig, uint64_t (&w)[kWords]) {
  if constexpr (kWords == 1) {
    w[0] = sig[0];
  } else {
#pragma unroll
    for (uint32_t i = 0; i < kWords / 2; ++i) {
      const ulonglong2 x = reinterpret_cast<const ulonglong2*>(sig)[i];
      w[2 * i] = x.x;
      w[2 * i + 1] = x.y;
    }
  }
}

// acc[z] += the products of a tile's rows g (w[0]) and g + 8 (w[1]) with tile z's columns.
template <uint32_t kWords, uint32_t kNT>
__device__ __forceinline__ void TileProducts(const uint64_t (&w)[2][kWords],
                                             const uint32_t (&b)[kNT][2 * kWords][2], uint32_t t,
                                             int32_t (&acc)[kNT][4]) {
#pragma unroll
  for (uint32_t kc = 0; kc < 2 * kWords; ++kc) {
    const uint32_t p0 = uint32_t(w[0][kc / 2] >> (32 * (kc % 2)));
    const uint32_t p1 = uint32_t(w[1][kc / 2] >> (32 * (kc % 2)));
    const uint32_t a0 = (p0 >> t) & 0x01010101u, a1 = (p1 >> t) & 0x01010101u;
    const uint32_t a2 = (p0 >> (t + 4)) & 0x01010101u, a3 = (p1 >> (t + 4)) & 0x01010101u;
#pragma unroll
    for (uint32_t z = 0; z < kNT; ++z) MmaS8(acc[z], a0, a1, a2, a3, b[z][kc][0], b[z][kc][1]);
  }
}

// A token's score from its product's integer v = 256 · acc_hi + acc_lo: (2v − Σ qq) · scale,
// times its key norm where there are norms (float(S) is exact: |S| < 2^23).
__device__ __forceinline__ float TokenScore(int32_t v, int32_t sum, float scale, float norm,
                                            bool has_norms) {
  const float plain = __fmul_rn(float(2 * v - sum), scale);
  return has_norms ? __fmul_rn(norm, plain) : plain;
}

// A query blob's guess unit, scale · sqrt(Σ qq²) (ScanQueryBytes).
__device__ __forceinline__ float QueryUnit(const uint8_t* blob, uint32_t bits, float scale) {
  const unsigned long long squares =
      __ldg(reinterpret_cast<const unsigned long long*>(blob + 2 * bits + 8));
  return __fmul_rn(scale, __fsqrt_rn(__ull2float_rn(squares)));
}

// scores[p][t] for every token, plus the level-0 histogram; the last block chooses b0 and the
// mode. A block serves `share` problems (blockIdx.y · share + j) that read the same signatures
// and norms: each token is loaded once and scored for all of them by int8 tensor-core products.
//
// The product: rows are tokens, k runs over a 32-bit piece of the signature, columns are the
// problems' query halves (column 2j: problem j's hi, 2j + 1: its lo; kNT tiles of 8 columns).
// The k order is permuted (the query blobs are stored in that order, ScanQueryBytes): fragment
// column 4t + i is bit t + 8i of the piece, 16 + 4t + i is bit t + 4 + 8i, so a thread's a
// register is (piece >> t) & 0x01010101 — each byte one bit, 0 or 1 — with no lookups at all.
// Then S = 2 · (256 · Σ hi·b + Σ lo·b) − Σ qq = Σ qq · (±1), exactly the CPU's integer.
//
// kGuess (the guess scan, ScanSelectArgs::guess): no scores and no histogram; each token whose
// key is at or above its problem's guessed key goes to the candidate buffer, unordered (a warp's
// tokens of one problem take their places with one atomic); without norms the test is on the
// product's integer, against the least one whose score reaches the guess (found once). Otherwise
// (the full scan) a group whose guesses all held (FinishGuessKernel finished them) returns at once.
// kOneVote (with kGuess; ScanSelectArgs::one_vote): a warp tests the rows of all its round's tiles
// first and votes once; only a round where some row reached a guess takes the gather's ballots,
// tile by tile (the usual round: none, the guess being far in the tail). Without it, a ballot for
// every 8 rows: a third of the guess scan's instructions at 128 bits, in the usual case for nothing.
template <uint32_t kWords, uint32_t kNT, bool kGuess, bool kOneVote>
__global__ void __launch_bounds__(kThreads, kScanBlocksPerSm)
    MmaScanKernel(const __grid_constant__ ProblemChunk chunk, TokenCount tokens, uint32_t c,
                  float* scores, Workspace ws, const float* guess, uint32_t* guess_counts) {
  constexpr uint32_t kBits = kWords * 64, kPieces = kWords * 2, kM = kScanTiles<kWords>;
  const uint32_t n = tokens.Get(), share = chunk.share;
  // ScanStage<kWords>::kBytes · kScanStages of staging, then share × kBins0 histograms.
  extern __shared__ __align__(16) uint8_t scan_shared[];
  uint8_t* stage = scan_shared;
  uint32_t* hists =
      reinterpret_cast<uint32_t*>(scan_shared + ScanStage<kWords>::kBytes * kScanStages);
  const uint32_t local = blockIdx.y * share;  // the group's first problem in the chunk
  if constexpr (!kGuess) {
    if (guess) {
      bool all_held = true;
      for (uint32_t j = 0; j < share; ++j)
        all_held = all_held && GuessHeld(&ws.states[chunk.first + local + j], c, n);
      if (all_held) return;
    }
  }
  const ScanProblem pr = chunk.problems[local];
  const bool has_norms = pr.norms != nullptr;
  const uint32_t lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  // b fragments: column g of tile z is problem 4z + g / 2's hi (g even) or lo half.
  uint32_t b[kNT][kPieces][2];
  // The epilogue's problem: 4z + t (columns 2t, 2t + 1 of tile z).
  int32_t sum[kNT];
  float scale[kNT];
  uint32_t gather_key[kNT];  // kGuess: the epilogue problem's guessed key
  int32_t gather_v[kNT];     // kGuess without norms: the least 256 · acc_hi + acc_lo that reaches it
#pragma unroll
  for (uint32_t z = 0; z < kNT; ++z) {
    const uint32_t j = 4 * z + g / 2;
    LoadQueryHalf(j < share ? chunk.problems[local + j].query + (g % 2) * kBits : nullptr, t,
                  b[z]);
    const uint32_t mine = 4 * z + t;
    const uint8_t* blob = mine < share ? chunk.problems[local + mine].query : nullptr;
    sum[z] = blob ? __ldg(reinterpret_cast<const int32_t*>(blob + 2 * kBits)) : 0;
    scale[z] = blob ? __ldg(reinterpret_cast<const float*>(blob + 2 * kBits + 4)) : 0.0f;
    gather_key[z] = kNoGather;
    gather_v[z] = INT32_MAX;
    if constexpr (kGuess) {
      if (blob) {
        const uint32_t p = chunk.first + local + mine;
        const float unit = QueryUnit(blob, kBits, scale[z]);
        const float z_guess = guess[p];
        if (n <= kCandidates)
          gather_key[z] = 0;  // every token: the buffer holds them all
        else if (z_guess == z_guess && unit > 0.0f && isfinite(unit))
          gather_key[z] = DeviceKey(__fmul_rn(z_guess, unit));
        if (blockIdx.x == 0 && threadIdx.x < 4) ws.states[p].unit = unit;  // g = 0: lanes 0-3
        gather_v[z] = LeastGatheredV(gather_key[z], sum[z], scale[z]);
      }
    }
  }
  if constexpr (!kGuess) {
    for (uint32_t i = threadIdx.x; i < share * kBins0; i += kThreads) hists[i] = 0;
    __syncthreads();
  }
  // The signatures (and norms) stream through shared memory, kScanStages chunks of kChunk
  // tokens in flight a block (cp.async): chunk blockIdx.x + it · gridDim.x goes to buffer
  // it % kScanStages; warp w scores the chunk's tokens [w · kRound, (w + 1) · kRound).
  using Stage = ScanStage<kWords>;
  constexpr uint32_t kRound = Stage::kRound, kChunk = Stage::kChunk;
  const uint32_t chunks = (n + kChunk - 1) / kChunk, warp = threadIdx.x / 32;
  auto issue = [&](uint32_t it) {
    const uint32_t ch = blockIdx.x + it * gridDim.x;
    if (ch < chunks) {
      const uint32_t first = ch * kChunk, valid = min(kChunk, n - first);
      uint8_t* sig = stage + (it % kScanStages) * Stage::kBytes;
      const uint8_t* from =
          reinterpret_cast<const uint8_t*>(pr.signatures + size_t{first} * kWords);
      constexpr uint32_t kPiece = kWords == 1 ? 8 : 16, kPer = kWords * 8 / kPiece;
      for (uint32_t i = threadIdx.x; i < valid * kPer; i += kThreads)
        CpAsync<kPiece>(sig + i * kPiece, from + i * kPiece);
      if (has_norms)
        for (uint32_t i = threadIdx.x; i < valid; i += kThreads)
          CpAsync<4>(sig + Stage::kSigBytes + 4 * i, pr.norms + first + i);
    }
    CpAsyncCommit();
  };
#pragma unroll
  for (uint32_t s = 0; s + 1 < kScanStages; ++s) issue(s);
  for (uint32_t it = 0; blockIdx.x + it * gridDim.x < chunks; ++it) {
    issue(it + kScanStages - 1);
    CpAsyncWait<kScanStages - 1>();  // this thread's copies of chunk `it` are in
    __syncthreads();                 // and everyone's
    const uint32_t base = (blockIdx.x + it * gridDim.x) * kChunk + warp * kRound;
    const uint8_t* buffer = stage + (it % kScanStages) * Stage::kBytes;
    const uint64_t* sig = reinterpret_cast<const uint64_t*>(buffer) + size_t{warp} * kRound * kWords;
    const float* norms = reinterpret_cast<const float*>(buffer + Stage::kSigBytes) + warp * kRound;
    // kGuess: whether the token whose product's integer is v (and `norm` its key norm) reaches
    // problem 4z + t's guess, and its key if so. Problems past `share` have no guess (INT32_MAX,
    // kNoGather); rows past n hold whatever the staging buffer held: `test` drops both.
    auto reaches = [&](uint32_t z, int32_t v, float norm, uint32_t* key) {
      if (has_norms) {
        *key = DeviceKey(TokenScore(v, sum[z], scale[z], norm, true));
        return *key >= gather_key[z];
      }
      if (v < gather_v[z]) return false;  // ⇔ key < gather_key[z]; the key only when taken
      *key = DeviceKey(TokenScore(v, sum[z], scale[z], 1.0f, false));
      return true;
    };
    auto test = [&](uint32_t z, int32_t v, float norm, uint32_t tok, uint32_t* key) {
      return 4 * z + t < share && tok < n && reaches(z, v, norm, key);
    };
    // kGuess: the warp's tokens that passed `test` take their places in their problems' buffers
    // (one atomic a problem); every lane calls it.
    auto gather = [&](uint32_t z, bool take, uint32_t key, uint32_t tok) {
      const uint32_t taken = __ballot_sync(0xFFFFFFFFu, take);
      if (taken == 0) return;  // the usual case: the guess is far in the tail
      const uint32_t p = chunk.first + local + 4 * z + t;
      const uint32_t mates = taken & (0x11111111u << t);  // lanes of problem 4z + t
      const uint32_t leader = mates ? __ffs(int(mates)) - 1 : lane;
      uint32_t at = 0;
      if (take && lane == leader) at = atomicAdd(&ws.states[p].appended, __popc(mates));
      at = __shfl_sync(0xFFFFFFFFu, at, leader) + __popc(mates & ((1u << lane) - 1));
      if (take && at < kCandidates) {
        ws.cand_index[size_t{p} * kCandidates + at] = tok;
        ws.cand_key[size_t{p} * kCandidates + at] = key;
      }
    };
    // kOneVote: each tile's integers and norms wait for the round's one vote (`any`: some row of
    // this lane may reach its guess).
    int32_t held_v[kOneVote ? kM : 1][kNT][2];
    float held_norm[kOneVote ? kM : 1][2];
    bool any = false;
#pragma unroll
    for (uint32_t m = 0; m < kM; ++m) {
      uint64_t w[2][kWords];  // row g (h = 0) and g + 8 (h = 1) of tile m; garbage past n
      float norm[2];
#pragma unroll
      for (uint32_t h = 0; h < 2; ++h) {
        const uint32_t row = 16 * m + 8 * h + g;
        LoadSignature<kWords>(sig + row * kWords, w[h]);
        norm[h] = has_norms ? norms[row] : 1.0f;
      }
      int32_t acc[kNT][4] = {};
      TileProducts<kWords, kNT>(w, b, t, acc);
      if constexpr (kGuess) {
#pragma unroll
        for (uint32_t z = 0; z < kNT; ++z) {
#pragma unroll
          for (uint32_t h = 0; h < 2; ++h) {
            const uint32_t tok = base + 16 * m + 8 * h + g;
            const int32_t v = 256 * acc[z][2 * h] + acc[z][2 * h + 1];
            uint32_t key = 0;
            if constexpr (kOneVote) {
              held_v[m][z][h] = v;
              held_norm[m][h] = norm[h];
              // No share or n test here: a row they would drop only sends the round to `test`.
              any = reaches(z, v, norm[h], &key) || any;
            } else {
              const bool take = test(z, v, norm[h], tok, &key);
              gather(z, take, key, tok);
            }
          }
        }
      } else {
#pragma unroll
        for (uint32_t z = 0; z < kNT; ++z) {
          const uint32_t j = 4 * z + t;
          if (j >= share) continue;
          float* out = scores + size_t{chunk.first + local + j} * tokens.stride;
#pragma unroll
          for (uint32_t h = 0; h < 2; ++h) {
            const uint32_t tok = base + 16 * m + 8 * h + g;
            if (tok >= n) continue;
            const float score = TokenScore(256 * acc[z][2 * h] + acc[z][2 * h + 1], sum[z],
                                           scale[z], norm[h], has_norms);
            out[tok] = score;
            atomicAdd(hists + j * kBins0 + (DeviceKey(score) >> 21), 1u);
          }
        }
      }
    }
    if constexpr (kOneVote) {
      // The round's one vote: where a token of the warp passed, the tiles go through `gather`.
      if (__any_sync(0xFFFFFFFFu, any)) {
#pragma unroll
        for (uint32_t m = 0; m < kM; ++m)
#pragma unroll
          for (uint32_t z = 0; z < kNT; ++z)
#pragma unroll
            for (uint32_t h = 0; h < 2; ++h) {
              const uint32_t tok = base + 16 * m + 8 * h + g;
              uint32_t key = 0;
              const bool take = test(z, held_v[m][z][h], held_norm[m][h], tok, &key);
              gather(z, take, key, tok);
            }
      }
    }
    __syncthreads();  // the buffer is free for chunk it + kScanStages
  }
  if constexpr (!kGuess) {
    for (uint32_t j = 0; j < share; ++j) {
      const uint32_t p = chunk.first + local + j;
      FlushHistogram<kBins0>(hists + j * kBins0, ws.hists + size_t{p} * kHistWords);
      if (!LastBlockOfProblem(&ws.states[p].done[0])) continue;
      PassState* state = &ws.states[p];
      if (c >= n) {  // everything is kept: every key is above key 0 (no non-NaN float has it)
        if (threadIdx.x == 0) *state = PassState{0, n, {}, 0, kModeLarge, n, 0, 0.0f, 0, 0, 0};
        continue;
      }
      if (guess_counts && threadIdx.x == 0 && !GuessHeld(state, c, n)) {
        atomicAdd(guess_counts + 1, 1u);  // a miss: too few gathered (or no guess), or too many
        atomicAdd(guess_counts + (state->appended < c ? 2 : 3), 1u);
      }
      if (threadIdx.x == 0) state->k = c;
      __syncthreads();
      ChooseBin<kBins0, 21, true>(ws.hists + size_t{p} * kHistWords, state);
      __syncthreads();
      if (threadIdx.x == 0) {
        const uint32_t candidates = (c - state->k) + state->count;  // above b0, and in b0
        state->mode = candidates <= kCandidates ? kModeSmall : kModeLarge;
        state->count = candidates;
      }
    }
  }
}

// SampleGuessKernel's blocks: each scores kSampleBlock of a problem's sample, so that the
// sample's scattered reads are in flight on many SMs at once (one block a problem took 13-15 us
// a layer on an H100, eight take about 4.6); its dynamic shared memory: the block's signatures
// and norms, then (the last block) the sample's keys and a histogram.
constexpr uint32_t kSampleBlock = 512, kSampleBlocks = kScanSampleMax / kSampleBlock;
constexpr size_t SampleSharedBytes(uint32_t words) {
  const size_t staging = size_t{kSampleBlock} * (words * 8 + 4);
  const size_t select = sizeof(uint32_t) * (kScanSampleMax + kBins0);
  return staging > select ? staging : select;
}

// ScanSelectArgs::sample, before the guess scan; grid (kSampleBlocks, problems). Each block
// scores its part of the sample (ScanSampleStride; its loads in flight at once, into shared
// memory) by the same products as MmaScanKernel's, with the problem's own query in columns 0
// and 1 of one tile, and leaves the keys in the problem's candidate buffer (free until the
// guess scan); the problem's last block sets the guess at their ScanSampleRank-th largest.
// Nothing where the guess scan gathers every token (n <= kCandidates) or nothing is left to
// choose (c >= n).
template <uint32_t kWords>
__global__ void __launch_bounds__(kThreads)
    SampleGuessKernel(const __grid_constant__ ProblemChunk chunk, TokenCount tokens, uint32_t c,
                      Workspace ws, float* guess) {
  constexpr uint32_t kBits = kWords * 64;
  const uint32_t n = tokens.Get();
  if (c >= n || n <= kCandidates) return;
  const uint32_t p = chunk.first + blockIdx.y;
  const ScanProblem pr = chunk.problems[blockIdx.y];
  const bool has_norms = pr.norms != nullptr;
  const uint32_t stride = ScanSampleStride(n), size = (n + stride - 1) / stride;
  const uint32_t first = blockIdx.x * kSampleBlock;
  const uint32_t mine = first < size ? min(kSampleBlock, size - first) : 0;
  extern __shared__ __align__(16) uint8_t sample_shared[];
  uint64_t* sigs = reinterpret_cast<uint64_t*>(sample_shared);  // [kSampleBlock][kWords]
  float* norms = reinterpret_cast<float*>(sigs + kSampleBlock * kWords);
  constexpr uint32_t kPiece = kWords == 1 ? 8 : 16, kPer = kWords * 8 / kPiece;
  for (uint32_t i = threadIdx.x; i < mine * kPer; i += kThreads) {
    const uint32_t s = i / kPer, part = i % kPer;
    const uint64_t* from = pr.signatures + size_t{first + s} * stride * kWords;
    CpAsync<kPiece>(reinterpret_cast<uint8_t*>(sigs + s * kWords) + part * kPiece,
                    reinterpret_cast<const uint8_t*>(from) + part * kPiece);
  }
  if (has_norms)
    for (uint32_t s = threadIdx.x; s < mine; s += kThreads)
      CpAsync<4>(norms + s, pr.norms + size_t{first + s} * stride);
  CpAsyncCommit();
  const uint8_t* blob = pr.query;
  const int32_t sum = __ldg(reinterpret_cast<const int32_t*>(blob + 2 * kBits));
  const float scale = __ldg(reinterpret_cast<const float*>(blob + 2 * kBits + 4));
  const uint32_t lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  uint32_t b[1][2 * kWords][2];  // column 0: the query's hi, column 1: its lo, the rest zero
  LoadQueryHalf(g < 2 ? blob + g * kBits : nullptr, t, b[0]);
  CpAsyncWait<0>();
  __syncthreads();
  uint32_t* sample_keys = ws.cand_key + size_t{p} * kCandidates;  // [size]
  for (uint32_t tile = threadIdx.x / 32; tile * 16 < mine; tile += kThreads / 32) {
    uint64_t w[2][kWords];  // rows past the block's samples hold whatever shared memory held
#pragma unroll
    for (uint32_t h = 0; h < 2; ++h)
      LoadSignature<kWords>(sigs + (16 * tile + 8 * h + g) * kWords, w[h]);
    int32_t acc[1][4] = {};
    TileProducts<kWords, 1>(w, b, t, acc);
#pragma unroll
    for (uint32_t h = 0; h < 2; ++h) {
      const uint32_t row = 16 * tile + 8 * h + g;
      if (t == 0 && row < mine)
        sample_keys[first + row] =
            DeviceKey(TokenScore(256 * acc[0][2 * h] + acc[0][2 * h + 1], sum, scale,
                                 has_norms ? norms[row] : 1.0f, has_norms));
    }
  }
  if (!LastBlockOfProblem(&ws.states[p].sampled)) return;
  uint32_t* keys = reinterpret_cast<uint32_t*>(sample_shared);  // the staging is done with
  uint32_t* hist = keys + kScanSampleMax;
  for (uint32_t i = threadIdx.x; i < size; i += kThreads) keys[i] = __ldcg(sample_keys + i);
  __syncthreads();
  uint32_t left = 0;
  const uint32_t key = BlockSelect<kThreads>(
      size, ScanSampleRank(n, c, ws.guess_target), [&](uint32_t i, bool*) { return keys[i]; },
      hist, &left, kDirectSelect);
  if (threadIdx.x == 0) WriteGuess(guess + p, key, QueryUnit(blob, kBits, scale), 0.0f);
}

// Large mode: histogram of the next key bits among the scores whose higher bits equal the chosen
// prefix; the last block chooses the bin.
template <uint32_t kLevel>
__device__ void HistPass(uint32_t p, uint32_t n, uint32_t stride, const float* scores,
                         const Workspace& ws) {
  constexpr uint32_t kBins = kLevel == 1 ? kBins1 : kBins2;
  constexpr uint32_t kShift = kLevel == 1 ? 10 : 0;   // of this level's bits
  constexpr uint32_t kFixed = kLevel == 1 ? 21 : 10;  // key >> kFixed must match
  __shared__ uint32_t hist[kBins];
  PassState* state = &ws.states[p];
  const uint32_t want = state->prefix >> kFixed;
  for (uint32_t i = threadIdx.x; i < kBins; i += kThreads) hist[i] = 0;
  __syncthreads();
  const float* in = scores + size_t{p} * stride;
  const uint32_t step = gridDim.x * kThreads * kUnroll;
  for (uint32_t base = blockIdx.x * kThreads * kUnroll + threadIdx.x; base < n; base += step) {
    float s[kUnroll];
#pragma unroll
    for (uint32_t u = 0; u < kUnroll; ++u)
      if (base + u * kThreads < n) s[u] = in[base + u * kThreads];
#pragma unroll
    for (uint32_t u = 0; u < kUnroll; ++u) {
      if (base + u * kThreads >= n) break;
      const uint32_t key = DeviceKey(s[u]);
      if ((key >> kFixed) == want) atomicAdd(hist + ((key >> kShift) & (kBins - 1)), 1u);
    }
  }
  uint32_t* global_hist =
      ws.hists + size_t{p} * kHistWords + (kLevel == 1 ? kBins0 : kBins0 + kBins1);
  FlushHistogram<kBins>(hist, global_hist);
  if (!LastBlockOfProblem(&state->done[kLevel])) return;
  ChooseBin<kBins, kShift, true>(global_hist, state);
}

// Look-back descriptor of a compaction tile: 2 flag bits, then two 31-bit counts (n < 2^31).
constexpr unsigned long long kFlagAggregate = 1ull << 62, kFlagInclusive = 2ull << 62;
__device__ __forceinline__ unsigned long long Pack(uint32_t above, uint32_t equal) {
  return (static_cast<unsigned long long>(above) << 31) | equal;
}
__device__ __forceinline__ uint32_t Above(unsigned long long d) {
  return uint32_t(d >> 31) & 0x7FFFFFFF;
}
__device__ __forceinline__ uint32_t Equal(unsigned long long d) { return uint32_t(d) & 0x7FFFFFFF; }

// Counts (above, equal) of all tiles before `tile` by decoupled look-back (warp 0 only); publishes
// this tile's inclusive counts.
__device__ unsigned long long LookBack(unsigned long long* descriptors, uint32_t tile,
                                       uint32_t above, uint32_t equal) {
  using Ref = cuda::atomic_ref<unsigned long long, cuda::thread_scope_device>;
  const uint32_t lane = threadIdx.x % 32;
  if (tile == 0) {
    if (lane == 0)
      Ref(descriptors[0]).store(kFlagInclusive | Pack(above, equal), cuda::memory_order_relaxed);
    return 0;
  }
  if (lane == 0)
    Ref(descriptors[tile]).store(kFlagAggregate | Pack(above, equal), cuda::memory_order_relaxed);
  uint32_t before_above = 0, before_equal = 0;
  for (int64_t last = int64_t{tile} - 1;; last -= 32) {
    const int64_t pred = last - lane;
    unsigned long long d;
    do {  // one descriptor per lane, nearest predecessor in lane 0; wait until all are published
      d = pred >= 0 ? Ref(descriptors[pred]).load(cuda::memory_order_relaxed) : kFlagInclusive;
    } while (__any_sync(0xFFFFFFFFu, (d >> 62) == 0));
    const uint32_t inclusive = __ballot_sync(0xFFFFFFFFu, (d >> 62) == 2);
    const uint32_t stop = inclusive ? uint32_t(__ffs(int(inclusive))) - 1 : 31;
    before_above += WarpSum(lane <= stop ? Above(d) : 0u);
    before_equal += WarpSum(lane <= stop ? Equal(d) : 0u);
    if (inclusive) break;
  }
  if (lane == 0)
    Ref(descriptors[tile])
        .store(kFlagInclusive | Pack(before_above + above, before_equal + equal),
               cuda::memory_order_relaxed);
  return Pack(before_above, before_equal);
}

// One tile of an order-keeping compaction over scores[0, n) of one problem: writes, in index
// order, every index with key > key_k and the first `wanted_equal` with key == key_k to
// out_index (and their keys to out_key unless null). Tiles are handed out in block start order,
// so a tile's predecessors are all running or done. Returns the tile.
__device__ uint32_t CompactTile(uint32_t n, const float* scores, uint32_t key_k,
                                uint32_t wanted_equal, uint32_t* out_index, uint32_t* out_key,
                                unsigned long long* descriptors, uint32_t* tile_next) {
  using Load = cub::BlockLoad<float, kThreads, kTileItems, cub::BLOCK_LOAD_WARP_TRANSPOSE>;
  using Scan = cub::BlockScan<unsigned long long, kThreads>;
  __shared__ union {
    typename Load::TempStorage load;
    typename Scan::TempStorage scan;
  } storage;
  __shared__ uint32_t tile_shared;
  __shared__ unsigned long long before_shared;
  if (threadIdx.x == 0) tile_shared = atomicAdd(tile_next, 1u);
  __syncthreads();
  const uint32_t tile = tile_shared, base = tile * kTileTokens;
  // Tiles past the tokens held (a launch sized for capacity): none of the tiles before it waits
  // on it, so it has nothing to publish.
  if (base >= n) return tile;
  float s[kTileItems];
  Load(storage.load).Load(scores + base, s, int(min(kTileTokens, n - base)), 0.0f);
  uint32_t above = 0, equal = 0;  // this thread's items are base + threadIdx.x * kTileItems + j
#pragma unroll
  for (uint32_t j = 0; j < kTileItems; ++j) {
    if (base + threadIdx.x * kTileItems + j >= n) break;
    const uint32_t key = DeviceKey(s[j]);
    above += key > key_k;
    equal += key == key_k;
  }
  __syncthreads();  // storage.load is reused by the scan
  unsigned long long mine = (static_cast<unsigned long long>(above) << 32) | equal, aggregate;
  Scan(storage.scan).ExclusiveSum(mine, mine, aggregate);
  if (threadIdx.x < 32) {
    const unsigned long long before =
        LookBack(descriptors, tile, uint32_t(aggregate >> 32), uint32_t(aggregate));
    if (threadIdx.x == 0) before_shared = before;
  }
  __syncthreads();
  uint32_t rank_above = Above(before_shared) + uint32_t(mine >> 32);
  uint32_t rank_equal = Equal(before_shared) + uint32_t(mine);
#pragma unroll
  for (uint32_t j = 0; j < kTileItems; ++j) {
    const uint32_t t = base + threadIdx.x * kTileItems + j;
    if (t >= n) break;
    const uint32_t key = DeviceKey(s[j]);
    uint32_t pos = ~0u;
    if (key > key_k) {
      pos = rank_above + min(rank_equal, wanted_equal);
      ++rank_above;
    } else if (key == key_k) {
      if (rank_equal < wanted_equal) pos = rank_above + rank_equal;
      ++rank_equal;
    }
    if (pos != ~0u) {
      out_index[pos] = t;
      if (out_key) out_key[pos] = key;
    }
  }
  return tile;
}

// Small mode, one block: the threshold's low 21 bits from the candidates (every score with key
// >= b0 << 21, in index order), then the selection written from them in index order.
__device__ void FinishFromCandidates(uint32_t p, uint32_t n, uint32_t c, const Workspace& ws,
                                     uint32_t* selected, uint32_t* counts, float* guess) {
  using Scan = cub::BlockScan<unsigned long long, kThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  __shared__ uint32_t hist[kBins1];
  __shared__ PassState local;
  const uint32_t* cand_index = ws.cand_index + size_t{p} * kCandidates;
  const uint32_t* cand_key = ws.cand_key + size_t{p} * kCandidates;
  if (threadIdx.x == 0) local = ws.states[p];
  for (uint32_t i = threadIdx.x; i < kBins1; i += kThreads) hist[i] = 0;
  __syncthreads();
  const uint32_t total = local.count, want1 = local.prefix >> 21;
  for (uint32_t i = threadIdx.x; i < total; i += kThreads) {
    const uint32_t key = cand_key[i];
    if ((key >> 21) == want1) atomicAdd(hist + ((key >> 10) & (kBins1 - 1)), 1u);
  }
  __syncthreads();
  ChooseBin<kBins1, 10, false>(hist, &local);
  __syncthreads();
  for (uint32_t i = threadIdx.x; i < kBins2; i += kThreads) hist[i] = 0;
  __syncthreads();
  const uint32_t want2 = local.prefix >> 10;
  for (uint32_t i = threadIdx.x; i < total; i += kThreads) {
    const uint32_t key = cand_key[i];
    if ((key >> 10) == want2) atomicAdd(hist + (key & (kBins2 - 1)), 1u);
  }
  __syncthreads();
  ChooseBin<kBins2, 0, false>(hist, &local);
  __syncthreads();
  const uint32_t key_k = local.prefix, wanted_equal = local.k;
  uint32_t* out = selected + size_t{p} * c;
  // Each thread a contiguous run of the candidates: its counts, one block scan of them, then its
  // run written in order (one scan in all, where a scan per 256 candidates cost ~0.5 µs each).
  const uint32_t per = (total + kThreads - 1) / kThreads;
  const uint32_t begin = min(total, threadIdx.x * per), end = min(total, begin + per);
  uint32_t above = 0, equal = 0;
  for (uint32_t i = begin; i < end; ++i) {
    const uint32_t key = cand_key[i];
    above += key > key_k;
    equal += key == key_k;
  }
  unsigned long long mine = (static_cast<unsigned long long>(above) << 32) | equal;
  Scan(scan_storage).ExclusiveSum(mine, mine);
  uint32_t rank_above = uint32_t(mine >> 32), rank_equal = uint32_t(mine);
  for (uint32_t i = begin; i < end; ++i) {
    const uint32_t key = cand_key[i];
    if (key > key_k) {
      out[rank_above + min(rank_equal, wanted_equal)] = cand_index[i];
      ++rank_above;
    } else if (key == key_k) {
      if (rank_equal < wanted_equal) out[rank_above + rank_equal] = cand_index[i];
      ++rank_equal;
    }
  }
  if (threadIdx.x == 0 && counts) counts[p] = min(c, n);
  if (threadIdx.x == 0 && guess) WriteGuess(guess + p, key_k, local.unit, ws.guess_margin);
}

// A block of kFinishThreads per problem: FinishFromGuess where the guess held, else nothing.
// set_fallback (a captured call, ScanSelectArgs::conditional): the chunk's last block to get here
// sets `fallback`, the condition of the graph node that holds the full select's four kernels, to
// whether any problem of the chunk missed; one block alone sets it (concurrent sets are undefined).
constexpr uint32_t kFinishThreads = 1024;
__global__ void __launch_bounds__(kFinishThreads)
    FinishGuessKernel(uint32_t first, TokenCount tokens, uint32_t c, Workspace ws,
                      uint32_t* selected, uint32_t* counts, float* guess, uint32_t* guess_counts,
                      bool set_fallback, cudaGraphConditionalHandle fallback, bool quick) {
  extern __shared__ __align__(16) uint32_t finish_shared[];
  const uint32_t p = first + blockIdx.x;
  const bool held = GuessHeld(&ws.states[p], c, tokens.Get());
  if (set_fallback && threadIdx.x == 0) {
    PassState* chunk_state = &ws.states[first];
    if (!held) atomicAdd(&chunk_state->missed, 1u);
    __threadfence();
    if (atomicAdd(&chunk_state->finished, 1u) == gridDim.x - 1) {
      __threadfence();
      cudaGraphSetConditional(fallback, atomicAdd(&chunk_state->missed, 0u) != 0 ? 1u : 0u);
    }
  }
  if (!held) return;
  FinishFromGuess<kFinishThreads>(p, c, ws, selected, counts, guess, guess_counts, finish_shared,
                                  quick);
}

// Grid (blocks, problems); in the small mode each block compacts tiles until one lies past n.
__global__ void __launch_bounds__(kThreads)
    Pass1Kernel(uint32_t first, TokenCount tokens, uint32_t c, const float* scores, Workspace ws) {
  const uint32_t p = first + blockIdx.y, n = tokens.Get();
  if (c >= n) return;  // the scan chose "take all": the compaction alone
  PassState* state = &ws.states[p];
  if (GuessHeld(state, c, n)) return;  // FinishGuessKernel finished it
  if (state->mode == kModeLarge) {
    HistPass<1>(p, n, tokens.stride, scores, ws);
    return;
  }
  // Every key >= b0 << 21: key > b0 << 21, and all of those equal to it. Tiles until one lies
  // past the tokens held (the grid is a resident wave, not one block per tile of the capacity).
  for (;;) {
    const uint32_t tile = CompactTile(n, scores + size_t{p} * tokens.stride, state->prefix, ~0u,
                                      ws.cand_index + size_t{p} * kCandidates,
                                      ws.cand_key + size_t{p} * kCandidates,
                                      ws.tiles + size_t{p} * ws.tiles_per_problem,
                                      &state->tile_next);
    if (uint64_t{tile} * kTileTokens >= n) break;
  }
}

__global__ void __launch_bounds__(kThreads)
    Pass2Kernel(uint32_t first, TokenCount tokens, uint32_t c, const float* scores,
                uint32_t* selected, uint32_t* counts, Workspace ws, float* guess) {
  const uint32_t p = first + blockIdx.y, n = tokens.Get();
  if (c >= n) return;
  if (GuessHeld(&ws.states[p], c, n)) return;  // FinishGuessKernel finished it
  if (ws.states[p].mode == kModeLarge) {
    HistPass<2>(p, n, tokens.stride, scores, ws);
  } else if (blockIdx.x == 0) {
    FinishFromCandidates(p, n, c, ws, selected, counts, guess);
  }
}

// Large mode (and c >= n): selected[p][*] = the indices with key > K and the first state.k with
// key == K, in index order. Grid (blocks, problems), each block compacting tiles until one lies
// past n.
__global__ void __launch_bounds__(kThreads)
    CompactKernel(uint32_t first, TokenCount tokens, uint32_t c, const float* scores,
                  uint32_t* selected, uint32_t* counts, Workspace ws, float* guess) {
  const uint32_t p = first + blockIdx.y, n = tokens.Get();
  PassState* state = &ws.states[p];
  if (GuessHeld(state, c, n) || state->mode != kModeLarge) return;
  if (guess && c < n && blockIdx.x == 0 && threadIdx.x == 0)
    WriteGuess(guess + p, state->prefix, state->unit, ws.guess_margin);
  for (;;) {
    const uint32_t tile = CompactTile(n, scores + size_t{p} * tokens.stride, state->prefix,
                                      state->k, selected + size_t{p} * c, nullptr,
                                      ws.tiles + size_t{p} * ws.tiles_per_problem,
                                      &state->tile_next);
    if (tile == 0 && threadIdx.x == 0 && counts) counts[p] = min(c, n);
    if (uint64_t{tile} * kTileTokens >= n) break;
  }
}

// Position of bit i of a signature in a query blob's half (the k order of MmaScanKernel): within
// each 32-bit piece, bit t + 8i goes to 4t + i and bit t + 4 + 8i to 16 + 4t + i (t, i < 4).
__host__ __device__ __forceinline__ uint32_t FragmentPosition(uint32_t bit) {
  const uint32_t piece = bit / 32, b = bit % 32, t = b % 4, high = (b / 4) % 2, i = b / 8;
  return piece * 32 + high * 16 + 4 * t + i;
}

// qq = 256 · hi + lo with hi and lo in [−127, 127] (|qq| ≤ kScanQueryMax): the int8 halves the
// product takes, as the bytes a blob stores.
__host__ __device__ __forceinline__ void SplitQuery(int32_t qq, uint8_t* hi, uint8_t* lo) {
  const int32_t h = (qq + 128) >> 8;
  *hi = uint8_t(int8_t(h));
  *lo = uint8_t(int8_t(qq - 256 * h));
}

// Queries BuildQueriesKernel holds in shared memory at once, and the shared memory that takes.
constexpr uint32_t kQueryChunk = 16;
size_t BuildQueriesSharedBytes(uint32_t bits, uint32_t dim) {
  return sizeof(float) * kQueryChunk * (size_t{dim} + bits);
}
constexpr size_t kQueriesMaxShared = 48 * 1024;  // what a launch gets without asking

// ScanQueryBytes(bits), for the kernels too.
__host__ __device__ constexpr size_t QueryBlobBytes(uint32_t bits) { return 2 * size_t{bits} + 16; }

// proj[i] in index::QuantizeProjectedQuery's order, then qq, then the blob. Block per query.
// proj[i] = Σ_j dot(r_i, q_j), every dot a chain over e and the sum a chain over j, as the CPU
// rounds them; but the dots of different j are independent, so a chunk of kQueryChunk queries is
// computed at once: thread (i, h) of kThreads / kBits per bit takes queries h, h + lanes, ...,
// several chains in flight, each row element loaded once for all of them; thread (i, 0) then adds
// the chunk's dots in order. (One chain of g · dim dependent steps per bit took 0.94 ms for a
// prefill block of g = 192 queries.)
// `load(x)`: element x of the block's g queries ([g][dim] floats); `blob` the block's output.
template <uint32_t kBits, typename Load>
__device__ void BuildQueryBlob(const float* projection, uint32_t dim, uint32_t g, bool vec4,
                               Load load, uint8_t* blob) {
  static_assert(kThreads % kBits == 0 && kQueryChunk % (kThreads / kBits) == 0);
  constexpr uint32_t kLanes = kThreads / kBits, kPer = kQueryChunk / kLanes;
  constexpr uint32_t bits = kBits;
  extern __shared__ float shared[];
  float* qs = shared;                            // [kQueryChunk][dim]
  float* dots = shared + size_t{kQueryChunk} * dim;  // [kQueryChunk][kBits]
  __shared__ float top[kThreads / 32];
  __shared__ int32_t sums[kThreads / 32];
  __shared__ unsigned long long squares[kThreads / 32];
  const uint32_t i = threadIdx.x % kBits, h = threadIdx.x / kBits;
  const float* row = projection + size_t{i} * dim;
  float acc = 0.0f;
  for (uint32_t j0 = 0; j0 < g; j0 += kQueryChunk) {
    const uint32_t jn = min(kQueryChunk, g - j0);
    __syncthreads();  // the previous chunk's queries and dots are used up
    for (uint32_t x = threadIdx.x; x < jn * dim; x += kThreads) qs[x] = load(j0 * dim + x);
    __syncthreads();
    float dot[kPer];
#pragma unroll
    for (uint32_t u = 0; u < kPer; ++u) dot[u] = 0.0f;
    // Unrolled so that several row loads are in flight: with one query (a decode step) each
    // iteration otherwise waited a round trip to L2 for its row element.
    if (vec4) {  // dim % 4 == 0, rows and queries 16-byte aligned
#pragma unroll 8
      for (uint32_t e = 0; e < dim; e += 4) {
        const float4 r = *reinterpret_cast<const float4*>(row + e);
#pragma unroll
        for (uint32_t u = 0; u < kPer; ++u) {
          const uint32_t jj = h + u * kLanes;
          if (jj >= jn) break;
          const float4 x = *reinterpret_cast<const float4*>(qs + size_t{jj} * dim + e);
          dot[u] = __fadd_rn(dot[u], __fmul_rn(r.x, x.x));
          dot[u] = __fadd_rn(dot[u], __fmul_rn(r.y, x.y));
          dot[u] = __fadd_rn(dot[u], __fmul_rn(r.z, x.z));
          dot[u] = __fadd_rn(dot[u], __fmul_rn(r.w, x.w));
        }
      }
    } else {
#pragma unroll 8
      for (uint32_t e = 0; e < dim; ++e) {
        const float r = row[e];
#pragma unroll
        for (uint32_t u = 0; u < kPer; ++u) {
          const uint32_t jj = h + u * kLanes;
          if (jj >= jn) break;
          dot[u] = __fadd_rn(dot[u], __fmul_rn(r, qs[size_t{jj} * dim + e]));
        }
      }
    }
#pragma unroll
    for (uint32_t u = 0; u < kPer; ++u) {
      const uint32_t jj = h + u * kLanes;
      if (jj < jn) dots[jj * kBits + i] = dot[u];
    }
    __syncthreads();
    if (h == 0)
      for (uint32_t jj = 0; jj < jn; ++jj) acc = __fadd_rn(acc, dots[jj * kBits + i]);
  }
  float m = 0.0f;
  bool finite = true;
  if (h == 0) {  // thread (i, 0) holds proj[i] = acc
    m = fabsf(acc);
    finite = isfinite(acc);
  }
  finite = __syncthreads_and(finite);
  for (uint32_t o = 16; o > 0; o /= 2) m = fmaxf(m, __shfl_xor_sync(0xFFFFFFFFu, m, o));
  if (threadIdx.x % 32 == 0) top[threadIdx.x / 32] = m;
  __syncthreads();
  m = 0.0f;
  for (uint32_t w = 0; w < kThreads / 32; ++w) m = fmaxf(m, top[w]);  // max: order-free, exact
  const bool zero = !finite || m == 0.0f;
  const float r = zero ? 0.0f : __fdiv_rn(float(index::kScanQueryMax), m);
  int32_t part = 0;
  unsigned long long square = 0;
  if (h == 0) {
    const int32_t qq = zero ? 0 : __float2int_rn(__fmul_rn(acc, r));
    SplitQuery(qq, &blob[FragmentPosition(i)], &blob[bits + FragmentPosition(i)]);
    part = qq;
    square = static_cast<unsigned long long>(int64_t{qq} * qq);
  }
  for (uint32_t o = 16; o > 0; o /= 2) {
    part += __shfl_xor_sync(0xFFFFFFFFu, part, o);
    square += __shfl_xor_sync(0xFFFFFFFFu, square, o);
  }
  if (threadIdx.x % 32 == 0) {
    sums[threadIdx.x / 32] = part;
    squares[threadIdx.x / 32] = square;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int32_t total = 0;
    unsigned long long total_squares = 0;
    for (uint32_t w = 0; w < kThreads / 32; ++w) {
      total += sums[w];
      total_squares += squares[w];
    }
    *reinterpret_cast<int32_t*>(blob + 2 * bits) = total;
    *reinterpret_cast<float*>(blob + 2 * bits + 4) =
        zero ? 0.0f : __fdiv_rn(m, float(index::kScanQueryMax));
    *reinterpret_cast<unsigned long long*>(blob + 2 * bits + 8) = total_squares;
  }
}

template <uint32_t kBits>
__global__ void __launch_bounds__(kThreads)
    BuildQueriesKernel(const float* projection, uint32_t dim, const float* queries, uint32_t g,
                       bool vec4, uint8_t* blobs) {
  const float* q = queries + size_t{blockIdx.x} * g * dim;
  BuildQueryBlob<kBits>(projection, dim, g, vec4, [q](uint32_t x) { return q[x]; },
                        blobs + size_t{blockIdx.x} * QueryBlobBytes(kBits));
}

// A decode step's DecodeKvWriteKernel (layer.cu) and its scan queries in one launch: block
// b < q_heads takes q's head b to float (p.q_out) and builds its blob as BuildQueriesKernel does
// for g = 1 from that float copy; the blocks after them write the k and v rows.
template <uint32_t kBits>
__global__ void __launch_bounds__(kThreads)
    DecodeQueriesKernel(const float* projection, DecodeKvWriteParams p, bool vec4, uint8_t* blobs) {
  const uint32_t b = blockIdx.x, d = p.head_dim;
  if (b >= p.q_heads) {
    WriteHotRow(p, b - p.q_heads);
    return;
  }
  float* q_out = p.q_out + uint64_t{b} * d;
  auto load = [&p, q_out, b](uint32_t x) {  // each x once (g = 1): the float copy goes out too
    const float v = ReadAs(p.q, p.dtype, b * p.q_stride + x);
    q_out[x] = v;
    return v;
  };
  BuildQueryBlob<kBits>(projection, d, 1, vec4, load, blobs + size_t{b} * QueryBlobBytes(kBits));
}

int Refuse(std::string* error, const std::string& why) {
  if (error) *error = why;
  return int(cudaErrorInvalidValue);
}

bool Aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// Where a launcher's kernels go: onto `stream`, or, with `graph` set, into that graph as a chain
// of kernel nodes after `last` (a conditional node's body, built while `stream` is captured).
struct LaunchSink {
  cudaStream_t stream = nullptr;
  cudaGraph_t graph = nullptr;
  cudaGraphNode_t last = nullptr;
};

// kernel<<<grid, block, smem>>>(args...) into `sink`; the arguments are converted to the
// kernel's parameter types first (a kernel node copies them from these addresses).
template <typename... Params, typename... Args>
cudaError_t Launch(LaunchSink* sink, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
           Args&&... args) {
  static_assert(sizeof...(Params) == sizeof...(Args));
  std::tuple<std::remove_cv_t<std::remove_reference_t<Params>>...> values(
      std::forward<Args>(args)...);
  void* pointers[sizeof...(Params)];
  std::apply([&pointers](auto&... v) {
    size_t i = 0;
    ((pointers[i++] = static_cast<void*>(&v)), ...);
  }, values);
  const void* func = reinterpret_cast<const void*>(kernel);
  if (sink->graph == nullptr)
    return cudaLaunchKernel(func, grid, block, pointers, smem, sink->stream);
  cudaKernelNodeParams node{};
  node.func = const_cast<void*>(func);
  node.gridDim = grid;
  node.blockDim = block;
  node.sharedMemBytes = unsigned(smem);
  node.kernelParams = pointers;
  cudaGraphNode_t added = nullptr;
  const cudaError_t e = cudaGraphAddKernelNode(
      &added, sink->graph, sink->last ? &sink->last : nullptr, sink->last ? 1 : 0, &node);
  if (e == cudaSuccess) sink->last = added;
  return e;
}

// Dynamic shared memory of MmaScanKernel: `share` histograms.
size_t ScanSharedBytes(uint32_t share) { return share * kBins0 * sizeof(uint32_t); }
constexpr uint32_t kMaxShare = 8;          // two tiles of 8 columns: 4 problems' hi and lo each

// A full GPU of blocks (as many a SM as its shared memory lets stay resident, at most
// kScanBlocksPerSm) over the groups, each looping over chunks of the tokens.
template <uint32_t kWords, uint32_t kNT, bool kGuess, bool kOneVote>
int LaunchScan(const ProblemChunk& chunk, uint32_t groups, uint32_t sms, const ScanSelectArgs& a,
               const Workspace& ws, LaunchSink* sink) {
  const size_t staging = size_t{ScanStage<kWords>::kBytes} * kScanStages;
  const size_t smem = kGuess ? staging : staging + ScanSharedBytes(chunk.share);
  // Above 40 KB of histograms the kernel's own static shared memory (the select's scan storage)
  // would pass the 48 KB a launch gets without asking.
  if (smem > 40 * 1024)
    KIV_CUDA_CALL(cudaFuncSetAttribute(MmaScanKernel<kWords, kNT, kGuess, kOneVote>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  int per_sm = 0;
  KIV_CUDA_CALL(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
      &per_sm, MmaScanKernel<kWords, kNT, kGuess, kOneVote>, kThreads, smem));
  const uint32_t chunks = (a.n + ScanStage<kWords>::kChunk - 1) / ScanStage<kWords>::kChunk;
  const uint32_t blocks =
      std::clamp((sms * uint32_t(std::max(per_sm, 1)) + groups - 1) / groups, 1u, chunks);
  return int(Launch(sink, MmaScanKernel<kWords, kNT, kGuess, kOneVote>, dim3(blocks, groups),
                    dim3(kThreads), smem, chunk, TokenCount{a.n, a.n_device}, a.c, a.scores, ws,
                    a.guess, a.guess ? a.guess_counts : nullptr));
}

template <uint32_t kWords, bool kGuess, bool kOneVote>
int LaunchScanWords(const ProblemChunk& chunk, uint32_t groups, uint32_t sms,
                    const ScanSelectArgs& a, const Workspace& ws, LaunchSink* sink) {
  return chunk.share <= 4
             ? LaunchScan<kWords, 1, kGuess, kOneVote>(chunk, groups, sms, a, ws, sink)
             : LaunchScan<kWords, 2, kGuess, kOneVote>(chunk, groups, sms, a, ws, sink);
}

template <bool kGuess, bool kOneVote = false>
int LaunchScanAny(const ProblemChunk& chunk, uint32_t groups, uint32_t sms,
                  const ScanSelectArgs& a, const Workspace& ws, LaunchSink* sink) {
  return a.words == 1   ? LaunchScanWords<1, kGuess, kOneVote>(chunk, groups, sms, a, ws, sink)
         : a.words == 2 ? LaunchScanWords<2, kGuess, kOneVote>(chunk, groups, sms, a, ws, sink)
                        : LaunchScanWords<4, kGuess, kOneVote>(chunk, groups, sms, a, ws, sink);
}

}  // namespace

size_t ScanQueryBytes(uint32_t bits) { return QueryBlobBytes(bits); }

void PackScanQuery(const int32_t* qq, uint32_t bits, float scale, uint8_t* blob) {
  std::fill(blob, blob + ScanQueryBytes(bits), uint8_t{0});
  int32_t total = 0;
  for (uint32_t i = 0; i < bits; ++i) {
    SplitQuery(qq[i], &blob[FragmentPosition(i)], &blob[bits + FragmentPosition(i)]);
    total += qq[i];
  }
  uint64_t squares = 0;
  for (uint32_t i = 0; i < bits; ++i) squares += uint64_t(int64_t{qq[i]} * qq[i]);
  std::memcpy(blob + 2 * bits, &total, 4);
  std::memcpy(blob + 2 * bits + 4, &scale, 4);
  std::memcpy(blob + 2 * bits + 8, &squares, 8);
}

int BuildScanQueries(const float* projection, uint32_t bits, uint32_t dim, const float* queries,
                     uint32_t g, uint32_t num_queries, uint8_t* blobs, CUstream_st* stream,
                     std::string* error) {
  if (bits != 64 && bits != 128 && bits != 256)
    return Refuse(error,
                  "BuildScanQueries: bits = " + std::to_string(bits) + ", not 64, 128 or 256");
  if (dim == 0 || g == 0)
    return Refuse(error,
                  "BuildScanQueries: dim = " + std::to_string(dim) + ", g = " + std::to_string(g));
  if (num_queries == 0) return 0;
  if (num_queries >= (1u << 31))
    return Refuse(error,
                  "BuildScanQueries: num_queries = " + std::to_string(num_queries) + " >= 2^31");
  const size_t smem = BuildQueriesSharedBytes(bits, dim);
  if (smem > kQueriesMaxShared)
    return Refuse(error, "BuildScanQueries: dim = " + std::to_string(dim) + " needs " +
                             std::to_string(smem) + " bytes of shared memory, more than 48 KB");
  const bool vec4 = dim % 4 == 0 && Aligned(projection, 16) && Aligned(queries, 16);
  if (bits == 64)
    BuildQueriesKernel<64><<<num_queries, kThreads, smem, stream>>>(projection, dim, queries, g,
                                                                    vec4, blobs);
  else if (bits == 128)
    BuildQueriesKernel<128><<<num_queries, kThreads, smem, stream>>>(projection, dim, queries, g,
                                                                     vec4, blobs);
  else
    BuildQueriesKernel<256><<<num_queries, kThreads, smem, stream>>>(projection, dim, queries, g,
                                                                     vec4, blobs);
  return int(cudaGetLastError());
}

bool BuildDecodeScanQueriesFits(uint32_t bits, uint32_t head_dim) {
  return BuildQueriesSharedBytes(bits, head_dim) <= kQueriesMaxShared;
}

int BuildDecodeScanQueries(const float* projection, uint32_t bits, const DecodeKvWriteParams& p,
                           uint8_t* blobs, CUstream_st* stream, std::string* error) {
  if (!projection || !blobs) return Refuse(error, "BuildDecodeScanQueries: a null pointer");
  if (bits != 64 && bits != 128 && bits != 256)
    return Refuse(error, "BuildDecodeScanQueries: bits = " + std::to_string(bits));
  uint64_t blocks = 0;
  if (const int rc = CheckDecodeKvWrite(p, "BuildDecodeScanQueries", &blocks, error)) return rc;
  if (blocks == 0) return 0;
  const size_t smem = BuildQueriesSharedBytes(bits, p.head_dim);
  if (smem > kQueriesMaxShared)
    return Refuse(error, "BuildDecodeScanQueries: head_dim = " + std::to_string(p.head_dim) +
                             " needs " + std::to_string(smem) + " bytes of shared memory");
  const bool vec4 = p.head_dim % 4 == 0 && Aligned(projection, 16);
  const uint32_t grid = uint32_t(blocks);
  if (bits == 64)
    DecodeQueriesKernel<64><<<grid, kThreads, smem, stream>>>(projection, p, vec4, blobs);
  else if (bits == 128)
    DecodeQueriesKernel<128><<<grid, kThreads, smem, stream>>>(projection, p, vec4, blobs);
  else
    DecodeQueriesKernel<256><<<grid, kThreads, smem, stream>>>(projection, p, vec4, blobs);
  return int(cudaGetLastError());
}

size_t ScanSelectWorkspaceBytes(uint32_t num_problems, uint32_t n) {
  return ClearedBytes(num_problems, n) +
         2 * Align256(sizeof(uint32_t) * kCandidates * num_problems);
}

int ScanSelect(const ScanSelectArgs& a, CUstream_st* stream, std::string* error) {
  if (a.words != 1 && a.words != 2 && a.words != 4)
    return Refuse(error, "ScanSelect: words = " + std::to_string(a.words) + ", not 1, 2 or 4");
  if (a.n >= (1u << 31))
    return Refuse(error, "ScanSelect: n = " + std::to_string(a.n) + " >= 2^31");
  if (a.num_problems == 0) return 0;
  if (a.n == 0 || a.c == 0) {
    if (a.counts)
      KIV_CUDA_CALL(cudaMemsetAsync(a.counts, 0, sizeof(uint32_t) * a.num_problems, stream));
    return 0;
  }
  const size_t need = ScanSelectWorkspaceBytes(a.num_problems, a.n);
  if (a.workspace_bytes < need)
    return Refuse(error, "ScanSelect: workspace_bytes = " + std::to_string(a.workspace_bytes) +
                             ", needs " + std::to_string(need));
  if (!a.problems || !a.scores || !a.selected || !a.workspace)
    return Refuse(error, "ScanSelect: a null problems, scores, selected or workspace pointer");
  if (a.guess && (a.guess_target < 1 || a.guess_target > 64 || !(a.guess_margin >= 0.0f) ||
                  a.guess_margin >= 1.0f))
    return Refuse(error, "ScanSelect: guess_target must be in 1..64 and guess_margin in [0, 1) "
                         "(got " + std::to_string(a.guess_target) + ", " +
                             std::to_string(a.guess_margin) + ")");
  if (a.guess && a.c > kScanGuessMaxC)
    return Refuse(error, "ScanSelect: c = " + std::to_string(a.c) + " with a guess (at most " +
                             std::to_string(kScanGuessMaxC) + ")");
  if (a.share == 0 || a.share > kMaxShare || a.num_problems % a.share != 0)
    return Refuse(error, "ScanSelect: share = " + std::to_string(a.share) + " with " +
                             std::to_string(a.num_problems) + " problems (must divide them, at most " +
                             std::to_string(kMaxShare) + ")");
  for (uint32_t i = 0; i < a.num_problems; ++i) {
    const ScanProblem& lead = a.problems[i / a.share * a.share];
    if (a.problems[i].signatures != lead.signatures || a.problems[i].norms != lead.norms)
      return Refuse(error, "ScanSelect: problem " + std::to_string(i) +
                               " does not read its group's signatures and norms (share = " +
                               std::to_string(a.share) + ")");
  }
  for (uint32_t i = 0; i < a.num_problems; ++i) {
    const ScanProblem& pr = a.problems[i];
    if (!pr.signatures || !pr.query)
      return Refuse(error,
                    "ScanSelect: problem " + std::to_string(i) + " has no signatures or query");
    if (!Aligned(pr.signatures, a.words == 1 ? 8 : 16) || !Aligned(pr.query, 16))
      return Refuse(error, "ScanSelect: problem " + std::to_string(i) +
                               "'s signatures or query are not aligned for 16-byte loads");
  }
  int device = 0, sms = 0;
  KIV_CUDA_CALL(cudaGetDevice(&device));
  KIV_CUDA_CALL(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  KIV_CUDA_CALL(cudaMemsetAsync(a.workspace, 0, ClearedBytes(a.num_problems, a.n), stream));
  Workspace ws = CarveWorkspace(a.workspace, a.num_problems, a.n);
  ws.guess_target = a.guess_target;
  ws.guess_margin = a.guess_margin;
  const uint32_t rounds = (a.n + kThreads * kUnroll - 1) / (kThreads * kUnroll);
  const TokenCount tokens{a.n, a.n_device};
  const uint32_t per_launch = kMaxChunk / a.share * a.share;  // whole groups in a chunk
  const bool guessing = a.guess && (a.n_device || a.c < a.n);
  // A captured call with a guess puts each chunk's full select (the four kernels below) in the
  // body of a conditional node that runs only when one of the chunk's guesses missed.
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  cudaGraph_t graph = nullptr;
  if (guessing && a.conditional)
    KIV_CUDA_CALL(cudaStreamGetCaptureInfo(stream, &capture, nullptr, &graph));
  const bool conditional = capture == cudaStreamCaptureStatusActive;
  // Where the finishes write the next call's guess: nowhere when each call samples its own.
  float* const next_guess = a.sample ? nullptr : a.guess;
  for (uint32_t first = 0; first < a.num_problems; first += per_launch) {
    const uint32_t count = std::min(per_launch, a.num_problems - first);
    const uint32_t groups = count / a.share;
    ProblemChunk chunk{};
    std::copy(a.problems + first, a.problems + first + count, chunk.problems);
    chunk.first = first;
    chunk.share = a.share;
    // With a guess the passes serve only the problems whose guess missed (rare): a quarter of
    // the blocks, so that the usual call's launches that return at once cost less.
    const uint32_t per_sm = a.guess ? 1 : 4;
    const uint32_t pass_blocks =
        std::clamp((uint32_t(sms) * per_sm + count - 1) / count, 1u, rounds);
    // The compactions hand tiles out in order and loop until one lies past the tokens held: a
    // wave of blocks that stay resident, not one block per tile of the capacity (at 1M tokens of
    // capacity that was 256 blocks a problem, nearly all of them returning at once at 4K).
    const uint32_t compact_blocks = std::clamp((uint32_t(sms) * 2 * per_sm + count - 1) / count,
                                               1u, ws.tiles_per_problem);
    LaunchSink sink{stream};
    // With a guess, the guess scan first; the full scan then returns at once for every group
    // whose guesses held (skipped when the host knows that nothing is left to choose).
    if (guessing) {
      if (a.sample) {
        const size_t smem = SampleSharedBytes(a.words);
        auto* kernel = a.words == 1   ? SampleGuessKernel<1>
                       : a.words == 2 ? SampleGuessKernel<2>
                                      : SampleGuessKernel<4>;
        KIV_CUDA_CALL(Launch(&sink, kernel, dim3(kSampleBlocks, count), dim3(kThreads), smem,
                             chunk, tokens, a.c, ws, a.guess));
      }
      const int rc = a.one_vote
                         ? LaunchScanAny<true, true>(chunk, groups, uint32_t(sms), a, ws, &sink)
                         : LaunchScanAny<true, false>(chunk, groups, uint32_t(sms), a, ws, &sink);
      if (rc != 0) return rc;
      cudaGraphConditionalHandle fallback = 0;
      if (conditional)  // 1 unless the finish sets it: a finish that never ran costs only time
        KIV_CUDA_CALL(cudaGraphConditionalHandleCreate(&fallback, graph, 1,
                                                       cudaGraphCondAssignDefault));
      constexpr size_t kFinishBytes = sizeof(uint32_t) * kFinishSharedWords;
      KIV_CUDA_CALL(cudaFuncSetAttribute(FinishGuessKernel,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         int(kFinishBytes)));
      KIV_CUDA_CALL(Launch(&sink, FinishGuessKernel, dim3(count), dim3(kFinishThreads),
                           kFinishBytes, first, tokens, a.c, ws, a.selected, a.counts,
                           next_guess, a.guess_counts, conditional, fallback, a.quick_finish));
      if (conditional) {
        const cudaGraphNode_t* deps = nullptr;
        const cudaGraphEdgeData* edges = nullptr;
        size_t num_deps = 0;
        KIV_CUDA_CALL(
            cudaStreamGetCaptureInfo(stream, &capture, nullptr, &graph, &deps, &edges, &num_deps));
        cudaGraphNodeParams node{};
        node.type = cudaGraphNodeTypeConditional;
        node.conditional.handle = fallback;
        node.conditional.type = cudaGraphCondTypeIf;
        node.conditional.size = 1;
        cudaGraphNode_t added = nullptr;
        KIV_CUDA_CALL(cudaGraphAddNode(&added, graph, deps, edges, num_deps, &node));
        KIV_CUDA_CALL(cudaStreamUpdateCaptureDependencies(stream, &added, nullptr, 1,
                                                          cudaStreamSetCaptureDependencies));
        sink = LaunchSink{stream, node.conditional.phGraph_out[0], nullptr};
      }
    }
    const int rc = LaunchScanAny<false>(chunk, groups, uint32_t(sms), a, ws, &sink);
    if (rc != 0) return rc;
    // With c >= n the scan's last blocks set "take all" and the passes return at once; they are
    // skipped when the host knows it (no n_device).
    if (a.n_device || a.c < a.n) {
      KIV_CUDA_CALL(Launch(&sink, Pass1Kernel, dim3(compact_blocks, count), dim3(kThreads), 0,
                           first, tokens, a.c, a.scores, ws));
      KIV_CUDA_CALL(Launch(&sink, Pass2Kernel, dim3(pass_blocks, count), dim3(kThreads), 0, first,
                           tokens, a.c, a.scores, a.selected, a.counts, ws, next_guess));
    }
    KIV_CUDA_CALL(Launch(&sink, CompactKernel, dim3(compact_blocks, count), dim3(kThreads), 0,
                         first, tokens, a.c, a.scores, a.selected, a.counts, ws, next_guess));
  }
  return 0;
}

}  // namespace kiv::kernels
