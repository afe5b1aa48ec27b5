// The tiered cache: sinks and the recent window exact (the hot tier), every older token a 104-byte
// record in the archive plus its signature (the cold tier), retrieved per layer and kv-head at
// every step: asymmetric scan → top-C candidates → re-rank with their decoded keys → top-k.
//
// Attention runs over sinks ∪ retrieved ∪ hot ∪ the chunk itself (causal) as two parts — the hot
// part (with the causal mask) and the cold part (the retrieved tokens, all older than the chunk) —
// merged with their log-sum-exps, which equals one softmax over the union.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "index/record.h"
#include "index/signature.h"
#include "runtime/cache_options.h"
#include "runtime/full_cache.h"
#include "runtime/kv_cache.h"
#include "storage/reader.h"
#include "storage/writer.h"

namespace kiv {

class GpuSignatureIndex;
class GpuRecordArena;
class GpuColdTier;
class GuessSimulator;

// What retrieval did, summed since the cache was made (for the run summary and the benches).
struct RetrievalStats {
  uint64_t scans = 0;             // (layer, kv-head, query block) retrievals
  uint64_t tokens_scanned = 0;    // signatures scored
  uint64_t tokens_retrieved = 0;  // records decoded into attention
  uint64_t tokens_sampled = 0;    // records decoded as the sample of the unpicked (tail_samples)
};

class TieredCache : public KvCache {
 public:
  // A cache with no archive (benchmarks, tests): cold records stay in memory.
  TieredCache(const CacheShape& shape, const TieredCacheOptions& options,
              torch::Device device = torch::kCPU, torch::Dtype dtype = torch::kFloat32);
  // A cache over an archive: appends its cold tokens there, and when the archive already holds
  // tokens, restores the hot tier from its last checkpoint and the signatures from its segments.
  static Result<std::unique_ptr<TieredCache>> Open(ArchiveWriter* writer, const CacheShape& shape,
                                                   const TieredCacheOptions& options,
                                                   torch::Device device, torch::Dtype dtype,
                                                   std::vector<uint8_t>* extra);
  ~TieredCache() override;

  torch::Tensor Attend(int64_t layer, const torch::Tensor& q, const torch::Tensor& k,
                       const torch::Tensor& v, int64_t first_position) override;
  void EndChunk(const std::vector<int64_t>& token_ids) override;
  int64_t length() const override { return length_; }
  // On the GPU cold tier, once the cold tier holds at least C tokens and the hot window is full:
  // the step's hot row, hot count and cold count go to device memory (one small copy) and Attend
  // writes the new key and value at that row and attends with the counts read there.
  bool PrepareCapturedDecode(uint64_t* key) override;

  // Makes everything so far durable: the archive commits, carrying the hot tier and `extra`
  // (the runtime's own state) as its checkpoint.
  Status Commit(const std::vector<uint8_t>& extra);
  // Whether retrieval scans on the GPU (a CUDA device, options.gpu_scan, a build with kernels).
  bool scans_on_gpu() const { return gpu_index_ != nullptr; }
  // Whether the whole cold step (scan, re-rank, gather, attention) runs on the GPU: scans_on_gpu(),
  // options.gpu_cold, knobs the kernels take (GpuColdTier::Supports) and none of the CPU-only
  // benchmark modes (oracle, measure_recall, exact_cold, summary_page, tail_samples).
  bool cold_on_gpu() const { return gpu_cold_ != nullptr; }
  bool encodes_on_gpu() const { return encode_on_gpu_; }  // eviction's encoding (gpu_encode)
  // Whether the next chunk ends a prompt (the default): its last prefill_tail queries retrieve one
  // by one, where a question sits. Earlier chunks of a long prompt retrieve per block only.
  void set_chunk_ends_prompt(bool ends) { chunk_ends_prompt_ = ends; }
  // Fails the next call with this status if an archive write failed inside EndChunk.
  const Status& status() const { return status_; }

  uint64_t cold_tokens() const { return cold_tokens_; }
  uint64_t hot_tokens() const { return hot_ids_.size(); }
  const RetrievalStats& stats() const { return stats_; }
  // Bytes the cache holds on its device: the hot tier, and on CUDA the resident signatures and
  // norms (as allocated). Pinned host records are not counted (they are host memory).
  uint64_t device_bytes() const;
  // The index bytes a decode step's scans read on the GPU: every layer's kv-heads' signatures
  // (and norms) over the cold tokens; 0 when the index is not on the GPU.
  uint64_t decode_index_read_bytes() const;
  // Decode scans on the GPU whose guessed threshold held / missed so far (GpuColdTier::
  // ScanGuessCounts; waits for the device). Zeros without the GPU cold tier.
  // held, missed, and of the misses too few gathered / too many.
  std::array<uint64_t, 4> scan_guess_counts() const;
  const RecallStats& recall() const { return recall_; }  // with options.measure_recall
  const std::vector<int64_t>& hot_token_ids() const { return hot_ids_; }
  TieredCacheOptions& options() { return options_; }

 private:
  struct ColdRun;  // records of one appended-but-uncommitted segment
  torch::Tensor ColdAttention(int64_t layer, const torch::Tensor& q, int64_t per_query_begin,
                              torch::Tensor* lse);
  std::vector<uint32_t> Retrieve(int64_t layer, uint32_t head, const float* queries,
                                 uint32_t count);
  void Summarize(uint32_t layer, uint32_t head, uint64_t token, const uint8_t* record);
  void ColdKeysValues(int64_t layer, uint32_t head, const std::vector<uint32_t>& tokens,
                      torch::Tensor* ks, torch::Tensor* vs) const;
  double SampleOffset(int64_t layer, uint32_t head, int64_t position) const;
  PartialAttention TailAttention(int64_t layer, uint32_t head, const torch::Tensor& qb,
                                 std::vector<uint32_t> picked, int64_t position);
  PartialAttention BiasedAttention(int64_t layer, uint32_t head, const torch::Tensor& qb,
                                   const std::vector<uint32_t>& tokens, std::vector<float> bias);
  PartialAttention ImportanceTail(int64_t layer, uint32_t head, const torch::Tensor& qb,
                                  const std::vector<uint32_t>& picked, int64_t position);
  PartialAttention SummaryAttention(int64_t layer, uint32_t head, const torch::Tensor& qb,
                                    const std::vector<uint32_t>& picked) const;
  torch::Tensor ExactColdMass(int64_t layer, uint32_t head, const torch::Tensor& qb) const;
  std::vector<uint32_t> OracleTopK(int64_t layer, uint32_t head, const torch::Tensor& qb);
  void MeasureRecall(int64_t layer, uint32_t head, const torch::Tensor& qb,
                     const std::vector<uint32_t>& picked);
  const uint8_t* Record(uint64_t token, uint32_t layer, uint32_t head) const;
  float StoredKeyNorm(const uint8_t* record) const;
  uint32_t record_bytes() const { return index::kRecordBytes * (shape_.head_dim / 64); }
  Status Evict(uint32_t count);
  Status FinishEvict(std::unique_ptr<ColdRun> run, const uint8_t* records, const uint64_t* sigs);
  // The most hot rows a decode step attends to: sinks + window + evict_batch (the hot tier after
  // the step's append, before its eviction).
  uint64_t DecodeHotRows() const;
  // step_'s int32 offset of the step's hot row (an int64): after the H_kv hot counts and the cold
  // count, rounded up to an even offset.
  int64_t StepRowOffset() const { return (int64_t{shape_.num_kv_heads} + 2) / 2 * 2; }
  // The stats of GPU decode retrievals over `layers` layers (one per kv-head and layer).
  void CountDecodeRetrievals(uint64_t layers);
  uint64_t TailSampledPerRetrieval() const;
  void ReserveHot(int64_t rows);
  Status Restore(const HotCheckpoint& cp);

  CacheShape shape_;
  TieredCacheOptions options_;
  torch::Device device_;
  torch::Dtype dtype_;
  index::RecordCodec codec_;
  index::SignatureProjection projection_;
  ArchiveWriter* writer_ = nullptr;             // not owned; null for an in-memory cache
  std::unique_ptr<ArchiveReader> reader_;       // the committed records, mapped
  // Records after the reader's committed prefix; none with a GPU record arena, which holds them.
  std::vector<std::unique_ptr<ColdRun>> runs_;
  uint64_t committed_tokens_ = 0;               // records the reader serves

  // Hot tier: per layer [H_kv, n_hot, d] keys (post-RoPE) and values; the same tokens in all.
  std::vector<torch::Tensor> hot_k_, hot_v_;  // views of hot_*_buf_ (ReserveHot)
  torch::Tensor hot_k_buf_, hot_v_buf_;          // [L][H_kv][capacity][d]
  std::vector<int64_t> hot_ids_, hot_positions_;
  // Cold tier: per (layer, kv-head) signatures [n_cold][words]; exact keys/values when
  // exact_cold (keys also for measure_recall), per layer [H_kv, n_cold, d].
  std::vector<std::vector<uint64_t>> signatures_;
  std::vector<std::vector<float>> key_norms_;     // per (layer, kv-head) [n_cold] |k|, for the scan
  std::unique_ptr<GpuSignatureIndex> gpu_index_;  // the same on the GPU (options.gpu_scan on CUDA)
  std::unique_ptr<GpuRecordArena> gpu_records_;   // the records, pinned for the GPU (cold_on_gpu)
  std::unique_ptr<GpuColdTier> gpu_cold_;
  bool encode_on_gpu_ = false;  // options.gpu_encode where it applies (Evict)
  torch::Tensor evict_staging_;  // pinned host bytes: an eviction's records on their way
  bool chunk_ends_prompt_ = true;
  // A captured-decode step is under way (PrepareCapturedDecode until EndChunk): Attend takes the
  // device counts in step_, and EndChunk widens the hot views by the row Attend wrote.
  bool captured_step_ = false;
  // int32 [H_kv + pad + 4] on the device: the hot rows each kv-head attends to, the cold count,
  // then (as int64s at an even offset) the row the step's key and value go to and the step's
  // position (the tail sample's seed).
  torch::Tensor step_;
  uint64_t instance_ = 0;  // told apart from other caches in PrepareCapturedDecode's key
  std::vector<torch::Tensor> exact_k_, exact_v_;
  // Page summaries (options.summary_page): per (layer, kv-head) the mean decoded key and value of
  // each full page [pages][d], and the running sums of the page being filled [2][d].
  std::vector<std::vector<float>> summary_k_, summary_v_, page_sums_;
  uint64_t cold_tokens_ = 0;
  int64_t length_ = 0;
  RetrievalStats stats_;
  RecallStats recall_;
  // The last single-query CPU retrieval's estimate of each cold token's group attention logit
  // (τ-scaled, tail_importance), for TailAttention; empty when the last retrieval made none.
  std::vector<double> tail_log_mass_;
  // KIV_GUESS_SIM=1 on the CPU path: each decode scan's scores replayed through the GPU's guess
  // rule under several policies (runtime/guess_sim.h), reported when the cache is destroyed.
  std::unique_ptr<GuessSimulator> guess_sim_;
  bool decode_retrieval_ = false;  // ColdAttention is retrieving for one position (a decode step)
  double profile_[4] = {};  // KIV_PROFILE: seconds in hot, cold, merge, evict
  uint64_t profile_calls_ = 0;
  Status status_;
};

}  // namespace kiv
