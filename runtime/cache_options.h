// The tiered cache's knobs and the model shape it serves, LibTorch-free so that the CLI and the
// session options can name them without compiling LibTorch headers.
#pragma once

#include <cstdint>
#include <vector>

#include "index/defaults.h"

namespace kiv {

struct TieredCacheOptions {
  uint32_t sinks = 4;
  uint32_t window = 256;
  uint32_t top_k = index::kDefaultTopK;
  uint32_t candidates = index::kDefaultCandidates;
  uint32_t signature_bits = index::kDefaultSignatureBits;
  uint32_t codec_id = index::kDefaultCodec;
  uint64_t projection_seed = 0x6b6976;  // "kiv"
  // A decode step moves tokens out of the hot window only once window + evict_batch recent tokens
  // are hot, and then all but the window at once: one encode, one archive segment and one upload
  // of signatures per batch instead of per token, at the price of up to evict_batch − 1 more exact
  // tokens in attention. 1: every step keeps exactly the window (the rule of the CPU path's
  // fidelity numbers). A prefill chunk always evicts down to the window.
  uint32_t evict_batch = 1;
  // Prefill queries share one retrieval per block of this many (per kv-head): retrieving for
  // each of 1,024 queries of a chunk would cost more than the attention it feeds.
  uint32_t prefill_block = 64;
  // ... except the last prefill_tail queries of each chunk, which retrieve one by one.
  uint32_t prefill_tail = 64;
  // true: every prefill chunk's last prefill_tail queries retrieve one by one (the rule before
  // the GPU path), not only those of the chunk that ends a prompt. For comparison runs.
  bool tail_every_chunk = false;
  // Weight the scan's score by the key's norm (an estimate of q·k rather than of q·k/|k|).
  bool scan_norms = true;
  // Cold tokens that retrieval did not pick still hold attention (a diffuse head spreads half of
  // its mass over them). With summary_page = P > 0 each full page of P cold tokens also enters
  // attention as one summary: the mean of its decoded keys and values, weighted as the page's
  // unpicked tokens (score q·k̄/√d + log(P − picked in page)). 0: off.
  uint32_t summary_page = 0;
  // With tail_samples = m > 0, m of the cold tokens retrieval did not pick also enter attention,
  // a systematic sample in token order, each weighted as rest / m tokens: an unbiased estimate of
  // the attention the unpicked tokens hold. 0: off.
  uint32_t tail_samples = 0;
  // With tail_samples and tail_importance = τ > 0 (CPU scan, single-query retrievals): the sample
  // is drawn with probability ∝ exp(τ · the scan's estimate of the group's attention logit),
  // systematic PPS, each drawn token weighted by 1 / (m · its probability): still unbiased, with
  // less variance where the estimate follows the true attention. 0: a uniform sample.
  float tail_importance = 0.0f;
  // With tail_samples and tail_recent = R > 0: the R most recent unpicked cold tokens (just
  // outside the hot window, where attention is densest) are a stratum of their own with half the
  // samples (all of them when they fit), the older ones the other. 0: one stratum.
  uint32_t tail_recent = 0;
  // On a CUDA device, keep the signatures on the GPU and scan them there (kernels/scan.h,
  // bit-exact with the CPU scan); false scans on the CPU (the reference). Needs a build with
  // the CUDA kernels; ignored on the CPU.
  bool gpu_scan = true;
  // With gpu_scan: run the rest of the cold step on the GPU too (the union of the group's
  // candidates, re-rank, record gather from pinned host memory, attention; runtime/gpu_scan.h
  // GpuColdTier). false: only the scan, the rest on the CPU as without a GPU (bit-exact with it).
  bool gpu_cold = true;
  // With gpu_scan: eviction encodes records, signatures and key norms on the GPU
  // (kernels/encode.h, bit-exact with the CPU's encoding): only the records and signatures
  // cross to the host. false, or with exact_cold, measure_recall, oracle or page summaries (which
  // read the evicted keys on the host): encoded on the host's cores.
  bool gpu_encode = true;
  // The most cold tokens a session on the GPU holds: the pinned record arena reserves address
  // space for this many (it pins only what it fills).
  uint64_t max_cold_tokens = uint64_t{1} << 22;
  // With gpu_scan: room for this many cold tokens' signatures (and norms) on the GPU from the
  // start. Without it the index grows by a quarter at a time, each growth a copy that holds the
  // old and the new allocation at once (1.8 GB for a moment at 1M tokens). 0: grow as needed.
  uint64_t reserve_cold_tokens = 0;
  bool retrieval = true;     // false: the ablation arm, cold tokens are never seen
  bool exact_cold = false;   // true: cold keys and values kept exact (the codec bypassed)
  // Measure recall (QUALITY.md 5) at every single-query retrieval: keeps the exact cold keys in
  // memory beside the records and scores each retrieval against the exact attention. Costs a full
  // attention over the cold tier per step: a benchmark mode.
  bool measure_recall = false;
  // Retrieval replaced by an oracle: the k cold tokens with the most exact attention mass of the
  // group (exact keys kept in memory, records still decoded for attention). A benchmark mode that
  // shows what top-k selection can reach at best.
  bool oracle = false;
};

// Recall of retrieval, per layer: the share of the exact attention mass of the true top-k cold
// tokens that the retrieved set holds, the mass of a token being the sum over the GQA group's
// query heads of its exact attention probability (over the whole context, hot tier included).
struct RecallStats {
  std::vector<double> sum;       // per layer: sum of recall over retrievals
  std::vector<uint64_t> count;   // per layer: retrievals measured
  // Per layer, summed like `sum`: the share of the group's attention (mean over its heads) that
  // falls on cold tokens, and the share of that cold mass the retrieved tokens hold.
  std::vector<double> cold_mass, coverage;
  double Mean() const;           // over all retrievals, NaN when none
  // The layer with the lowest mean recall (-1 when none) and that mean.
  int WorstLayer(double* mean) const;
};

struct CacheShape {
  uint32_t num_layers = 0;
  uint32_t num_q_heads = 0;
  uint32_t num_kv_heads = 0;
  uint32_t head_dim = 0;
};

}  // namespace kiv
