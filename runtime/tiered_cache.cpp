#include "runtime/tiered_cache.h"

#include <torch/cuda.h>
#include <torch/torch.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <cmath>
#include <cerrno>
#include <cstring>
#include <thread>

#include <sys/stat.h>

#include "index/asym_scan.h"
#include "index/rerank.h"
#include "index/tail_sample.h"
#include "runtime/full_cache.h"
#include "runtime/gpu_scan.h"
#include "runtime/guess_sim.h"
#include "runtime/parallel.h"

namespace kiv {
namespace {
// KIV_PROFILE=1: each phase of the cache's work is timed between device synchronizations (which
// slows it: a diagnosis, not a measurement of speed) and the sums go to stderr at the end.
struct PhaseTimer {
  static bool Enabled() {
    static const bool on = std::getenv("KIV_PROFILE") != nullptr;
    return on;
  }
  PhaseTimer(double* sum, bool cuda) : sum_(sum), cuda_(cuda) {
    if (!Enabled()) return;
    if (cuda_) torch::cuda::synchronize();
    t0_ = std::chrono::steady_clock::now();
  }
  ~PhaseTimer() {
    if (!Enabled()) return;
    if (cuda_) torch::cuda::synchronize();
    *sum_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
  }
  double* sum_;
  bool cuda_;
  std::chrono::steady_clock::time_point t0_;
};
// Query sets up to this size (a decode step's GQA group) scan query by query.
constexpr uint32_t kPerQueryScanMax = 8;
// The dtype the GPU cold tier writes a decode step's attention in: q's (the run dtype) where its
// kernel writes it (bf16), so no cast kernel follows; float32 and the cast otherwise.
torch::ScalarType DecodeOutDtype(const torch::Tensor& q) {
  return q.scalar_type() == torch::kBFloat16 ? torch::kBFloat16 : torch::kFloat32;
}
}  // namespace

// |k| as the record stores it, so a resumed session, which has only the records, scores the scan
// exactly as the live one did.
float TieredCache::StoredKeyNorm(const uint8_t* record) const {
  float key[index::kRecordDim];
  float norm2 = 0.0f;
  for (uint32_t s = 0; s < shape_.head_dim / 64; ++s) {
    codec_.DecodeStoredKey(record + s * index::kRecordBytes, key);
    for (float x : key) norm2 += x * x;
  }
  return std::sqrt(norm2);
}

// The records of one segment appended since the last commit, laid out as the segment is:
// [L][H_kv][n][record_bytes].
struct TieredCache::ColdRun {
  uint64_t first_token = 0;
  uint32_t count = 0;
  std::vector<uint8_t> records;
};

TieredCache::TieredCache(const CacheShape& shape, const TieredCacheOptions& options,
                         torch::Device device, torch::Dtype dtype)
    : shape_(shape),
      options_(options),
      device_(device),
      dtype_(dtype),
      projection_(options.projection_seed, options.signature_bits, shape.head_dim) {
  const bool known = index::RecordCodec::FromId(options.codec_id, &codec_);
  TORCH_CHECK(known, "unknown record codec id ", options.codec_id);
  TORCH_CHECK(shape.head_dim % 64 == 0, "head_dim must be a multiple of 64, is ", shape.head_dim);
  for (uint32_t l = 0; l < shape.num_layers; ++l) {
    hot_k_.push_back(torch::Tensor());
    hot_v_.push_back(torch::Tensor());
    if (options.exact_cold || options.measure_recall || options.oracle)
      exact_k_.push_back(torch::empty({shape.num_kv_heads, 0, shape.head_dim}, torch::kFloat32));
    if (options.exact_cold)
      exact_v_.push_back(torch::empty({shape.num_kv_heads, 0, shape.head_dim}, torch::kFloat32));
  }
  ReserveHot(int64_t{options.sinks} + options.window + 1024 + 64);
  recall_.sum.assign(shape.num_layers, 0.0);
  recall_.count.assign(shape.num_layers, 0);
  recall_.cold_mass.assign(shape.num_layers, 0.0);
  recall_.coverage.assign(shape.num_layers, 0.0);
  signatures_.resize(size_t{shape.num_layers} * shape.num_kv_heads);
  if (device.is_cuda() && options.gpu_scan && GpuSignatureIndex::Available())
    gpu_index_ = std::make_unique<GpuSignatureIndex>(uint32_t(signatures_.size()), projection_,
                                                     device, options.scan_norms);
  if (gpu_index_ && options.reserve_cold_tokens > 0)
    gpu_index_->Reserve(options.reserve_cold_tokens);
  // KIV_GPU_COLD=0: the cold step after the GPU scan on the CPU, as options.gpu_cold = false (for
  // comparison runs of the CLI, which has no flag for it).
  if (gpu_index_ && options.gpu_cold && SwitchOn("KIV_GPU_COLD") && !options.oracle &&
      !options.measure_recall && !options.exact_cold && options.summary_page == 0 &&
      GpuColdTier::Supports(shape, options)) {
    gpu_records_ = std::make_unique<GpuRecordArena>(uint32_t(signatures_.size()), record_bytes(),
                                                    options.max_cold_tokens);
    gpu_cold_ = std::make_unique<GpuColdTier>(shape, options, codec_, gpu_index_.get(),
                                              gpu_records_.get(), device);
  }
  encode_on_gpu_ = gpu_index_ && options.gpu_encode && !options.exact_cold &&
                   !options.measure_recall && !options.oracle && options.summary_page == 0 &&
                   GpuSignatureIndex::CanEncode(codec_, shape.head_dim, dtype);
  if (const char* sim = std::getenv("KIV_GUESS_SIM");
      sim && std::string(sim) == "1" && !gpu_index_) {
    guess_sim_ = std::make_unique<GuessSimulator>(
        std::vector<uint32_t>{4, 8, 16, 32}, std::vector<float>{0.25f, 0.5f},
        size_t{shape.num_layers} * shape.num_q_heads);
    guess_sim_->AddSampled(GuessSimulator::kGpuSample, {2, 4, 8, 16});
  }
  static std::atomic<uint64_t> instances{0};
  instance_ = ++instances;
  summary_k_.resize(signatures_.size());
  summary_v_.resize(signatures_.size());
  page_sums_.assign(signatures_.size(), std::vector<float>(2 * size_t{shape.head_dim}, 0.0f));
  key_norms_.resize(size_t{shape.num_layers} * shape.num_kv_heads);
}

TieredCache::~TieredCache() {
  if (guess_sim_) std::fprintf(stderr, "kiv %s", guess_sim_->Report().c_str());
  if (PhaseTimer::Enabled())
    std::fprintf(stderr,
                 "kiv profile: cache %llu calls: hot %.3f s, cold %.3f s, merge %.3f s, "
                 "evict %.3f s\n",
                 static_cast<unsigned long long>(profile_calls_), profile_[0], profile_[1],
                 profile_[2], profile_[3]);
}

uint64_t TieredCache::DecodeHotRows() const {
  return uint64_t{options_.sinks} + options_.window + std::max<uint32_t>(1, options_.evict_batch);
}

void TieredCache::CountDecodeRetrievals(uint64_t layers) {
  stats_.scans += layers * shape_.num_kv_heads;
  stats_.tokens_scanned += layers * shape_.num_q_heads * cold_tokens_;
  stats_.tokens_retrieved +=
      layers * shape_.num_kv_heads * std::min<uint64_t>(options_.top_k, cold_tokens_);
  stats_.tokens_sampled += layers * shape_.num_kv_heads * TailSampledPerRetrieval();
}

// The tail sample's size on the GPU for a retrieval that picked min(k, cold) tokens (its picks
// are fewer only where fewer candidates came).
uint64_t TieredCache::TailSampledPerRetrieval() const {
  const uint64_t rest = cold_tokens_ - std::min<uint64_t>(options_.top_k, cold_tokens_);
  return std::min<uint64_t>(options_.tail_samples, rest);
}

namespace {

// KIV_TRACE_RETRIEVAL=FILE: each decode step's retrieved cold tokens, one line per layer and
// kv-head ("t=<tokens before the step> layer=<l> head=<h> ids=<ascending, comma-separated>"),
// appended to FILE by every tiered cache of the process, on the CPU and on the GPU alike, so that
// two runs can be compared line by line (tools/trace_diff.py). Steps are not captured in CUDA
// graphs while it is set (each step's picks are read back to the host). Read at every retrieval:
// setting or clearing it takes effect at the next one.
FILE* RetrievalTrace() {
  static std::string open_path;
  static FILE* trace = nullptr;
  const char* path = std::getenv("KIV_TRACE_RETRIEVAL");
  if (path == nullptr) path = "";
  // The same path, but its file was removed since it was opened: open it again, so that the lines
  // land where the variable says and not in an unlinked file. Checked only while tracing.
  struct stat st;
  const bool unlinked = trace != nullptr && fstat(fileno(trace), &st) == 0 && st.st_nlink == 0;
  if (open_path != path || unlinked) {  // compares without building a string: runs every step
    if (trace != nullptr) std::fclose(trace);
    trace = *path == '\0' ? nullptr : std::fopen(path, "a");
    if (*path != '\0' && trace == nullptr)
      std::fprintf(stderr, "kiv: KIV_TRACE_RETRIEVAL: cannot open %s for appending: %s\n", path,
                   std::strerror(errno));
    open_path = path;
  }
  return trace;
}

void TraceRetrieval(int64_t length, int64_t layer, uint32_t head, const uint32_t* ids, size_t n) {
  FILE* trace = RetrievalTrace();
  std::fprintf(trace, "t=%lld layer=%lld head=%u ids=", static_cast<long long>(length),
               static_cast<long long>(layer), head);
  for (size_t i = 0; i < n; ++i) std::fprintf(trace, i == 0 ? "%u" : ",%u", ids[i]);
  std::fputc('\n', trace);
  std::fflush(trace);
}

}  // namespace

bool TieredCache::PrepareCapturedDecode(uint64_t* key) {
  captured_step_ = false;
  const uint64_t rows = DecodeHotRows();  // at most, after the step's append
  const uint64_t hot = hot_ids_.size();
  if (!gpu_cold_ || !options_.retrieval || !status_.ok() || hot + 1 > rows || RetrievalTrace() ||
      cold_tokens_ < options_.candidates || cold_tokens_ < options_.top_k ||
      cold_tokens_ > UINT32_MAX)
    return false;
  const int64_t H = shape_.num_kv_heads, row_at = StepRowOffset();
  ReserveHot(int64_t(rows));
  if (!step_.defined())
    step_ = torch::zeros({row_at + 4}, torch::TensorOptions().dtype(torch::kInt32).device(device_));
  std::vector<int32_t> host(size_t(row_at + 4), int32_t(hot + 1));  // the new row attends too
  host[size_t(H)] = int32_t(cold_tokens_);
  const int64_t row = int64_t(hot);
  std::memcpy(&host[size_t(row_at)], &row, sizeof(row));
  std::memcpy(&host[size_t(row_at + 2)], &length_, sizeof(length_));  // the step's position
  step_.copy_(torch::from_blob(host.data(), {row_at + 4}, torch::kInt32));  // read before it returns
  // What a captured step bakes in: the cache, its buffers' addresses and sizes, the index's.
  uint64_t h = 1469598103934665603ull;
  for (uint64_t x : {instance_, uint64_t(reinterpret_cast<uintptr_t>(hot_k_buf_.data_ptr())),
                     uint64_t(reinterpret_cast<uintptr_t>(hot_v_buf_.data_ptr())),
                     uint64_t(hot_k_buf_.size(2)),
                     uint64_t(reinterpret_cast<uintptr_t>(gpu_index_->signatures(0))),
                     uint64_t(reinterpret_cast<uintptr_t>(gpu_index_->norms(0))),
                     uint64_t(gpu_index_->capacity()), rows})
    h = (h ^ x) * 1099511628211ull;
  *key = h;
  captured_step_ = true;
  return true;
}

torch::Tensor TieredCache::Attend(int64_t layer, const torch::Tensor& q, const torch::Tensor& k,
                                  const torch::Tensor& v, int64_t first_position) {
  TORCH_CHECK(first_position == length_, "chunk starts at ", first_position, ", cache holds ",
              length_);
  if (captured_step_) {  // PrepareCapturedDecode: every count from step_, nothing on the host
    TORCH_CHECK(q.size(1) == 1, "a captured decode step takes one token, not ", q.size(1));
    const int64_t H = shape_.num_kv_heads, row_at = StepRowOffset(), rows = DecodeHotRows();
    const torch::Tensor row = step_.slice(0, row_at, row_at + 2).view(torch::kInt64);
    // One kernel for the two row writes, q's float copy and the scan's queries where the layouts
    // allow (KIV_FUSED_QUERIES=0: the scan's queries in a kernel of their own, for comparison).
    static const bool fused_queries = SwitchOn("KIV_FUSED_QUERIES");
    torch::Tensor blobs;
    torch::Tensor qf = gpu_cold_->WriteDecodeKv(q, k, v, hot_k_buf_[layer], hot_v_buf_[layer], row,
                                                fused_queries ? &blobs : nullptr);
    if (!qf.defined()) {
      hot_k_buf_[layer].index_copy_(1, row, k);
      hot_v_buf_[layer].index_copy_(1, row, v);
      qf = q;
    }
    GpuColdTier::DeviceCounts counts;
    counts.hot = reinterpret_cast<const uint32_t*>(step_.data_ptr<int32_t>());
    counts.cold = counts.hot + H;
    counts.position = step_.slice(0, row_at + 2, row_at + 4).view(torch::kInt64).data_ptr<int64_t>();
    return gpu_cold_
        ->AttendDecodeCapturable(layer, qf, hot_k_buf_[layer].narrow(1, 0, rows),
                                 hot_v_buf_[layer].narrow(1, 0, rows), counts, DecodeOutDtype(q),
                                 blobs)
        .to(q.dtype());  // nothing to do when the kernel wrote q's dtype
  }
  const bool cuda = device_.is_cuda();
  ++profile_calls_;
  const int64_t previous = hot_k_[layer].size(1);
  PartialAttention hot;
  {
    PhaseTimer t(&profile_[0], cuda);
    const int64_t n = k.size(1);
    ReserveHot(previous + n);
    hot_k_buf_[layer].narrow(1, previous, n).copy_(k);
    hot_v_buf_[layer].narrow(1, previous, n).copy_(v);
    hot_k_[layer] = hot_k_buf_[layer].narrow(1, 0, previous + n);
    hot_v_[layer] = hot_v_buf_[layer].narrow(1, 0, previous + n);
    // A decode step on the GPU: retrieved and hot tokens in one attention kernel.
    if (gpu_cold_ && q.size(1) == 1 && options_.retrieval && cold_tokens_ > 0) {
      CountDecodeRetrievals(1);
      torch::Tensor out =
          gpu_cold_->AttendDecode(layer, q, hot_k_[layer], hot_v_[layer], length_,
                                  DecodeOutDtype(q))
              .to(q.dtype());
      if (RetrievalTrace()) {
        const torch::Tensor ids = gpu_cold_->last_decode_ids().to(torch::kCPU).contiguous();
        const torch::Tensor counts = gpu_cold_->last_decode_counts().to(torch::kCPU);
        for (int64_t h = 0; h < ids.size(0); ++h)
          TraceRetrieval(length_, layer, uint32_t(h),
                         reinterpret_cast<const uint32_t*>(ids[h].data_ptr<int32_t>()),
                         size_t(counts[h].item<int32_t>()));
      }
      return out;
    }
    hot = AttentionWithLse(q, hot_k_[layer], hot_v_[layer], previous);
  }
  if (options_.retrieval && cold_tokens_ > 0) {
    // Blocks of prefill_block queries share a retrieval, except the last prefill_tail queries of
    // a prompt, which retrieve one by one: that is where a question sits, and its tokens need the
    // passage they ask about. Shared with 63 document queries, their retrieval lost a needle that
    // their own found (docs/quality.md). A decode step (one query) retrieves on its own.
    const int64_t n = q.size(1), tail = options_.prefill_tail;
    const int64_t per_query_begin =
        chunk_ends_prompt_ || options_.tail_every_chunk || n <= tail ? std::max<int64_t>(0, n - tail) : n;
    PartialAttention cold;
    std::optional<PhaseTimer> t(std::in_place, &profile_[1], cuda);
    if (gpu_cold_) {
      const int64_t hkv = shape_.num_kv_heads, B = std::max<int64_t>(1, options_.prefill_block);
      const int64_t blocks = (per_query_begin + B - 1) / B, singles = n - per_query_begin;
      stats_.scans += uint64_t((blocks + singles) * hkv);
      stats_.tokens_scanned += uint64_t(blocks * hkv + singles * shape_.num_q_heads) * cold_tokens_;
      stats_.tokens_retrieved += uint64_t((blocks + singles) * hkv) *
                                 std::min<uint64_t>(options_.top_k, cold_tokens_);
      stats_.tokens_sampled += uint64_t((blocks + singles) * hkv) * TailSampledPerRetrieval();
      cold = gpu_cold_->Attend(layer, q, per_query_begin, length_);
    } else {
      cold.out = ColdAttention(layer, q, per_query_begin, &cold.lse).to(hot.out.device());
      cold.lse = cold.lse.to(hot.out.device());
    }
    t.reset();
    t.emplace(&profile_[2], cuda);
    hot = MergeAttention(hot, cold);  // one softmax over sinks ∪ retrieved ∪ hot ∪ chunk
  }
  return hot.out.to(q.dtype());
}

torch::Tensor TieredCache::ColdAttention(int64_t layer, const torch::Tensor& q,
                                         int64_t per_query_begin, torch::Tensor* lse) {
  const uint32_t hkv = shape_.num_kv_heads, d = shape_.head_dim;
  const uint32_t g = shape_.num_q_heads / hkv;
  const int64_t n = q.size(1);
  const torch::Tensor qf = q.to(torch::kFloat32).to(torch::kCPU).contiguous();  // [Hq, n, d]
  torch::Tensor out = torch::zeros({int64_t(shape_.num_q_heads), n, d}, torch::kFloat32);
  *lse = torch::full({int64_t(shape_.num_q_heads), n}, -INFINITY, torch::kFloat32);
  const int64_t block = std::max<int64_t>(1, options_.prefill_block);
  const int64_t tail_begin = per_query_begin;
  std::vector<std::pair<int64_t, int64_t>> blocks;  // [begin, end)
  for (int64_t b0 = 0; b0 < tail_begin; b0 += block)
    blocks.push_back({b0, std::min(b0 + block, tail_begin)});
  for (int64_t i = tail_begin; i < n; ++i) blocks.push_back({i, i + 1});
  std::vector<float> queries;
  decode_retrieval_ = n == 1;
  for (uint32_t h = 0; h < hkv; ++h) {
    for (const auto& [b0, b1] : blocks) {
      const int64_t m = b1 - b0;
      // The block's queries of every head in the group share one retrieval.
      const torch::Tensor qb = qf.slice(0, h * g, (h + 1) * g).slice(1, b0, b0 + m).contiguous();
      queries.assign(qb.data_ptr<float>(), qb.data_ptr<float>() + qb.numel());
      const std::vector<uint32_t> picked =
          options_.oracle ? OracleTopK(layer, h, qb)
                          : Retrieve(layer, h, queries.data(), uint32_t(g * m));
      if (n == 1 && RetrievalTrace()) TraceRetrieval(length_, layer, h, picked.data(), picked.size());
      if (picked.empty()) continue;
      const int64_t r = int64_t(picked.size());
      torch::Tensor ks, vs;
      ColdKeysValues(layer, h, picked, &ks, &vs);
      stats_.tokens_retrieved += uint64_t(r);
      if (options_.measure_recall && m == 1) MeasureRecall(layer, h, qb, picked);
      PartialAttention o = AttentionWithLse(qb, ks.unsqueeze(0), vs.unsqueeze(0));  // [g,m,d]
      if (options_.summary_page > 0) o = MergeAttention(o, SummaryAttention(layer, h, qb, picked));
      if (options_.tail_samples > 0)
        o = MergeAttention(o, TailAttention(layer, h, qb, picked, length_ + b0));
      out.slice(0, h * g, (h + 1) * g).slice(1, b0, b0 + m).copy_(o.out);
      lse->slice(0, h * g, (h + 1) * g).slice(1, b0, b0 + m).copy_(o.lse);
    }
  }
  return out;
}

// The decoded (or, with exact_cold, exact) keys and values of cold tokens of (layer, head):
// [n, d] float32 each.
void TieredCache::ColdKeysValues(int64_t layer, uint32_t head, const std::vector<uint32_t>& tokens,
                                 torch::Tensor* ks, torch::Tensor* vs) const {
  const int64_t r = int64_t(tokens.size()), d = shape_.head_dim;
  if (options_.exact_cold) {
    const torch::Tensor idx =
        torch::from_blob(const_cast<uint32_t*>(tokens.data()), {r}, torch::kInt32)
            .to(torch::kLong);
    *ks = exact_k_[layer][head].index_select(0, idx);
    *vs = exact_v_[layer][head].index_select(0, idx);
    return;
  }
  *ks = torch::empty({r, d}, torch::kFloat32);
  *vs = torch::empty({r, d}, torch::kFloat32);
  for (int64_t i = 0; i < r; ++i) {
    const uint8_t* rec = Record(tokens[i], uint32_t(layer), head);
    for (int64_t s = 0; s < d / 64; ++s)
      codec_.Decode(rec + s * index::kRecordBytes, ks->data_ptr<float>() + i * d + s * 64,
                    vs->data_ptr<float>() + i * d + s * 64);
  }
}

// The seeded offset in [0, 1) of a systematic tail sample, fixed by (layer, kv-head, position)
// so that a resumed session draws the same.
double TieredCache::SampleOffset(int64_t layer, uint32_t head, int64_t position) const {
  return index::TailSampleOffset(options_.projection_seed, layer, head, position);
}

// The attention of the group's queries qb [g, m, d] over a sample of the cold tokens that
// `picked` does not hold, each standing for rest / tail_samples of them: a systematic sample (one
// random offset, then evenly spaced in token order, so every stretch of the context is
// represented; index::TailSample), seeded by (layer, head, position) so that a resumed session
// draws the same. Its log-sum-exp carries the weight: merged with the picked tokens' attention it
// estimates the softmax over the whole cold tier without bias in its numerator and denominator.
PartialAttention TieredCache::TailAttention(int64_t layer, uint32_t head, const torch::Tensor& qb,
                                            std::vector<uint32_t> picked, int64_t position) {
  const int64_t g = qb.size(0), m = qb.size(1), d = shape_.head_dim;
  const uint64_t n = cold_tokens_, samples = options_.tail_samples;
  std::sort(picked.begin(), picked.end());
  const uint64_t rest = n - picked.size();
  if (rest == 0)
    return {torch::zeros({g, m, d}, torch::kFloat32),
            torch::full({g, m}, -INFINITY, torch::kFloat32)};
  if (rest > samples && tail_log_mass_.size() == n)
    return ImportanceTail(layer, head, qb, picked, position);
  std::vector<uint32_t> tokens;
  std::vector<float> bias;  // log weight of each sampled token
  index::TailSample(n, picked.data(), picked.size(), options_.tail_samples, options_.tail_recent,
                    SampleOffset(layer, head, position), &tokens, &bias);
  return BiasedAttention(layer, head, qb, tokens, bias);
}

// The attention of qb [g, m, d] over cold tokens each with a log weight added to its logit.
PartialAttention TieredCache::BiasedAttention(int64_t layer, uint32_t head, const torch::Tensor& qb,
                                              const std::vector<uint32_t>& tokens,
                                              std::vector<float> bias) {
  stats_.tokens_sampled += tokens.size();
  torch::Tensor ks, vs;
  ColdKeysValues(layer, head, tokens, &ks, &vs);
  const torch::Tensor b = torch::from_blob(bias.data(), {int64_t(bias.size())}, torch::kFloat32);
  const torch::Tensor scores =
      torch::matmul(qb.to(torch::kFloat32), ks.t()) / std::sqrt(double(shape_.head_dim)) + b;
  return {torch::matmul(torch::softmax(scores, -1), vs), torch::logsumexp(scores, -1)};
}

// TailAttention's sample drawn in proportion to tail_log_mass_ (systematic PPS over the unpicked
// tokens in token order, one seeded offset): token i drawn with probability p_i = w_i / W enters
// with the log weight log(1 / (m p_i)), once per draw, so numerator and denominator stay unbiased.
PartialAttention TieredCache::ImportanceTail(int64_t layer, uint32_t head, const torch::Tensor& qb,
                                             const std::vector<uint32_t>& picked,
                                             int64_t position) {
  const uint64_t n = cold_tokens_, m = options_.tail_samples;
  std::vector<uint32_t> unpicked;
  unpicked.reserve(n - picked.size());
  for (uint64_t t = 0, j = 0; t < n; ++t) {
    if (j < picked.size() && picked[j] == t) {
      ++j;
      continue;
    }
    unpicked.push_back(uint32_t(t));
  }
  double top = -INFINITY;
  for (uint32_t t : unpicked) top = std::max(top, tail_log_mass_[t]);
  std::vector<double> cumulative(unpicked.size());
  double total = 0;
  for (size_t i = 0; i < unpicked.size(); ++i)
    cumulative[i] = total += std::exp(tail_log_mass_[unpicked[i]] - top);
  const double u = SampleOffset(layer, head, position);
  std::vector<uint32_t> tokens;
  std::vector<float> bias;
  size_t i = 0;
  for (uint64_t s = 0; s < m; ++s) {
    const double point = (double(s) + u) * total / double(m);
    while (i + 1 < unpicked.size() && cumulative[i] <= point) ++i;
    const uint32_t t = unpicked[i];
    tokens.push_back(t);
    const double p = std::exp(tail_log_mass_[t] - top) / total;
    bias.push_back(float(-std::log(double(m) * p)));
  }
  return BiasedAttention(layer, head, qb, tokens, std::move(bias));
}

std::vector<uint32_t> TieredCache::Retrieve(int64_t layer, uint32_t head, const float* queries,
                                            uint32_t count) {
  const uint32_t d = shape_.head_dim, words = options_.signature_bits / 64;
  const size_t n = cold_tokens_;
  std::vector<uint32_t> picked;
  ++stats_.scans;
  tail_log_mass_.clear();
  if (n <= options_.top_k) {  // everything cold fits: nothing to choose
    picked.resize(n);
    for (size_t t = 0; t < n; ++t) picked[t] = uint32_t(t);
    return picked;
  }
  const uint32_t slot = uint32_t(layer) * shape_.num_kv_heads + head;
  // The c best of the scan on the CPU for g queries summed (one table): the reference the GPU
  // index (gpu_index_) matches bit for bit.
  index::ScanTable table;
  std::vector<float> scores;  // sized on the first CPU scan, reused by the next
  auto cpu_scan = [&](const float* q, uint32_t g, size_t c) {
    scores.resize(n);
    index::BuildGroupTable(projection_, q, g, &table);
    index::AsymmetricScan(signatures_[slot].data(),
                          options_.scan_norms ? key_norms_[slot].data() : nullptr, n, words,
                          table, scores.data());
    std::vector<uint32_t> best(std::min(c, n));
    best.resize(index::SelectLargest(scores.data(), n, c, best.data()));
    return best;
  };
  std::vector<uint32_t> candidates;
  if (count <= kPerQueryScanMax) {
    // Each query scans on its own and brings its best C / count: one head's needle is not
    // drowned by the other heads of the group, as it is in the scan of their summed query.
    const uint32_t share = (options_.candidates + count - 1) / count;
    std::vector<std::vector<uint32_t>> best;
    if (gpu_index_) {
      best = gpu_index_->SelectPerQuery(slot, queries, count, share, options_.scan_norms);
    } else {
      const bool importance = options_.tail_samples > 0 && options_.tail_importance > 0;
      if (importance) tail_log_mass_.assign(n, -INFINITY);
      // The asymmetric score estimates bits · √(2/π) · q·k; the logit is q·k / √d.
      const double to_logit = options_.tail_importance /
                              (options_.signature_bits * std::sqrt(2.0 / M_PI) * std::sqrt(d));
      for (uint32_t j = 0; j < count; ++j) {
        best.push_back(cpu_scan(queries + size_t{j} * d, 1, share));
        if (guess_sim_ && decode_retrieval_) {  // the GPU guesses a decode step's scans only
          std::vector<int32_t> qq(options_.signature_bits);
          const float scale =
              index::QuantizeProjectedQuery(projection_, queries + size_t{j} * d, 1, qq.data());
          uint64_t squares = 0;
          for (int32_t x : qq) squares += uint64_t(int64_t{x} * x);
          const float unit = scale * std::sqrt(float(squares));  // as the GPU's guess unit
          const uint32_t g = shape_.num_q_heads / shape_.num_kv_heads;
          guess_sim_->Observe((size_t(layer) * shape_.num_kv_heads + head) * g + j, scores.data(),
                              n, share, unit);
        }
        if (!importance) continue;
        for (size_t t = 0; t < n; ++t) {  // log Σ_j exp(τ · logit_j)
          const double x = to_logit * scores[t], m = std::max(tail_log_mass_[t], x);
          tail_log_mass_[t] = m + std::log(std::exp(tail_log_mass_[t] - m) + std::exp(x - m));
        }
      }
    }
    for (const std::vector<uint32_t>& b : best)
      candidates.insert(candidates.end(), b.begin(), b.end());
    std::sort(candidates.begin(), candidates.end());
    candidates.erase(std::unique(candidates.begin(), candidates.end()), candidates.end());
    stats_.tokens_scanned += uint64_t{n} * count;
  } else {
    candidates = gpu_index_ ? gpu_index_->SelectGroup(slot, queries, count, options_.candidates,
                                                      options_.scan_norms)
                            : cpu_scan(queries, count, options_.candidates);
    stats_.tokens_scanned += n;
  }
  std::vector<float> rotated(size_t{count} * d);
  for (uint32_t j = 0; j < count; ++j)
    for (uint32_t s = 0; s < d / 64; ++s)
      codec_.RotateQuery(queries + size_t{j} * d + s * 64, rotated.data() + size_t{j} * d + s * 64);
  std::vector<const uint8_t*> records(candidates.size());
  for (size_t i = 0; i < candidates.size(); ++i)
    records[i] = Record(candidates[i], uint32_t(layer), head);
  picked.resize(std::min<size_t>(options_.top_k, candidates.size()));
  std::vector<float> scratch;
  picked.resize(index::RerankTopK(codec_, rotated.data(), count, d, candidates.data(),
                                  records.data(), candidates.size(), options_.top_k, picked.data(),
                                  &scratch));
  return picked;
}

// Folds one cold token's decoded record into its page's sums; a full page becomes a summary.
// From the record, not the exact key and value, so a resumed session rebuilds the same summaries.
void TieredCache::Summarize(uint32_t layer, uint32_t head, uint64_t token, const uint8_t* record) {
  const uint32_t d = shape_.head_dim, P = options_.summary_page;
  const size_t slot = size_t{layer} * shape_.num_kv_heads + head;
  std::vector<float>& sums = page_sums_[slot];
  float key[index::kRecordDim], value[index::kRecordDim];
  for (uint32_t s = 0; s < d / 64; ++s) {
    codec_.Decode(record + s * index::kRecordBytes, key, value);
    for (uint32_t e = 0; e < 64; ++e) sums[s * 64 + e] += key[e], sums[d + s * 64 + e] += value[e];
  }
  const uint64_t filled = token % P + 1;
  if (filled == P) {
    for (uint32_t e = 0; e < d; ++e) {
      summary_k_[slot].push_back(sums[e] / float(P));
      summary_v_[slot].push_back(sums[d + e] / float(P));
    }
    std::fill(sums.begin(), sums.end(), 0.0f);
  }
}

// Attention of the group's queries qb [g, m, d] over the page summaries of (layer, head), each
// standing for its tokens that `picked` (ascending) does not hold.
PartialAttention TieredCache::SummaryAttention(int64_t layer, uint32_t head,
                                               const torch::Tensor& qb,
                                               const std::vector<uint32_t>& picked) const {
  const size_t slot = size_t(layer) * shape_.num_kv_heads + head;
  const int64_t d = shape_.head_dim, P = options_.summary_page;
  const int64_t pages = int64_t(summary_k_[slot].size()) / d;
  const int64_t g = qb.size(0), m = qb.size(1);
  const PartialAttention none{torch::zeros({g, m, d}, torch::kFloat32),
                              torch::full({g, m}, -INFINITY, torch::kFloat32)};
  std::vector<float> bias(size_t(pages), std::log(float(P)));
  for (size_t i = 0; i < picked.size();) {  // picked is ascending: count per page
    const int64_t page = picked[i] / P;
    size_t j = i;
    while (j < picked.size() && int64_t(picked[j] / P) == page) ++j;
    if (page < pages)
      bias[size_t(page)] = j - i == size_t(P) ? -INFINITY : std::log(float(P - int64_t(j - i)));
    i = j;
  }
  // No page with an unpicked token (none yet, or all picked): nothing to add, and a softmax over
  // nothing but -inf would be NaN.
  if (std::none_of(bias.begin(), bias.end(), [](float b) { return std::isfinite(b); })) return none;
  const torch::Tensor ks =
      torch::from_blob(const_cast<float*>(summary_k_[slot].data()), {pages, d}, torch::kFloat32);
  const torch::Tensor vs =
      torch::from_blob(const_cast<float*>(summary_v_[slot].data()), {pages, d}, torch::kFloat32);
  const torch::Tensor b = torch::from_blob(bias.data(), {pages}, torch::kFloat32);
  const torch::Tensor scores =
      torch::matmul(qb, ks.t()) / std::sqrt(double(d)) + b;  // [g, m, pages]
  const torch::Tensor lse = torch::logsumexp(scores, -1);
  const torch::Tensor out = torch::matmul(torch::softmax(scores, -1), vs);
  return {out, lse};
}

// The exact attention mass of every cold token for the group's queries qb [g, m, d], summed over
// the group and the block: each query's softmax runs over the whole context (the cold tokens with
// their exact keys, and the hot tier, whose last token is the query's own). [n] float64.
torch::Tensor TieredCache::ExactColdMass(int64_t layer, uint32_t head,
                                         const torch::Tensor& qb) const {
  const double scale = 1.0 / std::sqrt(double(shape_.head_dim));
  const torch::Tensor q = qb.to(torch::kFloat64);
  const torch::Tensor cold =
      torch::matmul(q, exact_k_[layer][head].to(torch::kFloat64).t()) * scale;
  const torch::Tensor hot_k = hot_k_[layer][head].to(torch::kCPU).to(torch::kFloat64);
  const torch::Tensor hot = torch::matmul(q, hot_k.t()) * scale;  // [g, m, n_hot]
  const torch::Tensor lse = torch::logsumexp(torch::cat({cold, hot}, -1), -1, true);  // [g, m, 1]
  return torch::exp(cold - lse).sum(1).sum(0);
}

// The k cold tokens with the most exact attention mass of the group's queries qb [g, m, d],
// ascending.
std::vector<uint32_t> TieredCache::OracleTopK(int64_t layer, uint32_t head,
                                              const torch::Tensor& qb) {
  const int64_t k = std::min<int64_t>(options_.top_k, int64_t(cold_tokens_));
  ++stats_.scans;
  if (k == 0) return {};
  const torch::Tensor mass = ExactColdMass(layer, head, qb);
  const torch::Tensor idx = std::get<0>(std::get<1>(torch::topk(mass, k)).sort()).contiguous();
  const int64_t* p = idx.data_ptr<int64_t>();
  return std::vector<uint32_t>(p, p + k);
}

// One retrieval's recall (a single query's group qb [g, 1, d]): the exact mass the picked tokens
// hold over the mass the true top-k hold; also the cold share of attention and how much of it the
// picked tokens hold.
void TieredCache::MeasureRecall(int64_t layer, uint32_t head, const torch::Tensor& qb,
                                const std::vector<uint32_t>& picked) {
  const int64_t k = std::min<int64_t>(options_.top_k, int64_t(cold_tokens_));
  if (k == 0) return;
  const torch::Tensor mass = ExactColdMass(layer, head, qb);  // [n]
  const double best = std::get<0>(torch::topk(mass, k)).sum().item<double>();
  const torch::Tensor idx = torch::from_blob(const_cast<uint32_t*>(picked.data()),
                                             {int64_t(picked.size())}, torch::kInt32)
                                .to(torch::kLong);
  const double got = mass.index_select(0, idx).sum().item<double>();
  if (best > 0) {
    recall_.sum[size_t(layer)] += std::min(1.0, got / best);
    const double cold_mass = mass.sum().item<double>();
    recall_.cold_mass[size_t(layer)] += cold_mass / double(qb.size(0));
    recall_.coverage[size_t(layer)] += cold_mass > 0 ? got / cold_mass : 1.0;
    ++recall_.count[size_t(layer)];
  }
}

const uint8_t* TieredCache::Record(uint64_t token, uint32_t layer, uint32_t head) const {
  if (gpu_records_)  // every cold token, committed or not
    return gpu_records_->base(layer * shape_.num_kv_heads + head) + token * record_bytes();
  if (token < committed_tokens_) return reader_->Record(token, layer, head);
  // Runs are consecutive from committed_tokens_; find the one holding the token.
  auto it = std::upper_bound(
      runs_.begin(), runs_.end(), token,
      [](uint64_t t, const std::unique_ptr<ColdRun>& r) { return t < r->first_token; });
  const ColdRun& run = **(it - 1);
  const uint64_t index =
      (uint64_t{layer} * shape_.num_kv_heads + head) * run.count + (token - run.first_token);
  return run.records.data() + index * record_bytes();
}

void TieredCache::EndChunk(const std::vector<int64_t>& token_ids) {
  if (captured_step_) {  // Attend wrote row hot_ids_.size() of every layer on the device
    captured_step_ = false;
    TORCH_CHECK(token_ids.size() == 1, "a captured decode step ends with one token");
    const int64_t rows = int64_t(hot_ids_.size()) + 1;
    for (uint32_t l = 0; l < shape_.num_layers; ++l) {
      hot_k_[l] = hot_k_buf_[l].narrow(1, 0, rows);
      hot_v_[l] = hot_v_buf_[l].narrow(1, 0, rows);
    }
    CountDecodeRetrievals(shape_.num_layers);
  }
  for (int64_t id : token_ids) {
    hot_ids_.push_back(id);
    hot_positions_.push_back(length_++);
  }
  const uint64_t keep = uint64_t{options_.sinks} + options_.window;
  // A decode step lets the window fill up to evict_batch extra tokens; a prefill chunk does not.
  const uint64_t limit = token_ids.size() == 1 ? DecodeHotRows() - 1 : keep;
  PhaseTimer t(&profile_[3], device_.is_cuda());
  if (status_.ok() && hot_ids_.size() > limit) status_ = Evict(uint32_t(hot_ids_.size() - keep));
}

// Moves hot tokens [sinks, sinks + count) to the cold tier: records and signatures for every
// layer and head, one archive segment, and out of the hot tensors.
Status TieredCache::Evict(uint32_t count) {
  const uint32_t L = shape_.num_layers, H = shape_.num_kv_heads, d = shape_.head_dim;
  const uint32_t words = options_.signature_bits / 64, rb = record_bytes();
  const int64_t s0 = options_.sinks;
  auto run = std::make_unique<ColdRun>();
  run->first_token = cold_tokens_;
  run->count = count;
  const size_t record_bytes_all = size_t{L} * H * count * rb;
  std::vector<uint64_t> sigs(size_t{L} * H * count * words);
  if (encode_on_gpu_) {
    // On the device: only the records and (for the archive) the signatures come back. With the
    // record arena they land in pinned staging; without it in the run the CPU cold step reads.
    uint8_t* records = nullptr;
    if (gpu_records_) {
      if (!evict_staging_.defined() || size_t(evict_staging_.numel()) < record_bytes_all)
        evict_staging_ = torch::empty({int64_t(record_bytes_all)},
                                      torch::TensorOptions().dtype(torch::kUInt8).pinned_memory(true));
      records = evict_staging_.data_ptr<uint8_t>();
    } else {
      run->records.resize(record_bytes_all);
      records = run->records.data();
    }
    gpu_index_->AppendEncoded(hot_k_buf_.narrow(2, s0, count), hot_v_buf_.narrow(2, s0, count),
                              codec_, records, writer_ ? sigs.data() : nullptr);
    return FinishEvict(std::move(run), records, sigs.data());
  }
  run->records.resize(record_bytes_all);
  std::vector<float> norms(options_.scan_norms ? size_t{L} * H * count : 0);
  // Every layer's evicted keys and values in one copy to the host: [L][H][count][d] float.
  std::vector<torch::Tensor> ks, vs;
  for (uint32_t l = 0; l < L; ++l) {
    ks.push_back(hot_k_[l].slice(1, s0, s0 + count));
    vs.push_back(hot_v_[l].slice(1, s0, s0 + count));
  }
  const torch::Tensor kk = torch::stack(ks).to(torch::kFloat32).to(torch::kCPU).contiguous();
  const torch::Tensor vv = torch::stack(vs).to(torch::kFloat32).to(torch::kCPU).contiguous();
  // Records, signatures, norms (and page summaries): one (layer, kv-head) slot per task, each
  // slot's state its own; on every core when a whole chunk is evicted.
  auto encode_slot = [&](uint32_t slot) {
    const uint32_t l = slot / H, h = slot % H;
    std::vector<uint64_t>& head_sigs = signatures_[slot];
    for (uint32_t t = 0; t < count; ++t) {
      const size_t at = size_t{slot} * count + t;
      const float* key = kk.data_ptr<float>() + at * d;
      const float* value = vv.data_ptr<float>() + at * d;
      uint8_t* record = run->records.data() + at * rb;
      for (uint32_t s = 0; s < d / 64; ++s)
        codec_.Encode(key + s * 64, value + s * 64, record + s * index::kRecordBytes);
      projection_.Sign(key, nullptr, sigs.data() + at * words);
      // Summarize counts tokens per (layer, head) in step: the same token index everywhere.
      if (options_.summary_page > 0) Summarize(l, h, cold_tokens_ + t, record);
      // With the index on the GPU the host keeps no signatures or norms (they would be 1.8 GB
      // at 1M tokens of SmolLM2): norms[] only stages this eviction's upload.
      if (options_.scan_norms) norms[at] = StoredKeyNorm(record);
      if (gpu_index_) continue;
      if (options_.scan_norms) key_norms_[slot].push_back(norms[at]);
      head_sigs.insert(head_sigs.end(), sigs.data() + at * words, sigs.data() + (at + 1) * words);
    }
  };
  ParallelFor(L * H, count < 64 ? 1 : std::thread::hardware_concurrency(), encode_slot);
  for (uint32_t l = 0; l < L; ++l) {
    if (options_.exact_cold || options_.measure_recall || options_.oracle)
      exact_k_[l] = torch::cat({exact_k_[l], kk[l]}, 1);
    if (options_.exact_cold) exact_v_[l] = torch::cat({exact_v_[l], vv[l]}, 1);
  }
  if (gpu_index_) gpu_index_->Append(sigs.data(), norms.data(), count);  // [slot][count] both
  const uint8_t* records = run->records.data();
  return FinishEvict(std::move(run), records, sigs.data());
}

// What is left of Evict once the records [L][H][count][rb] (in `records`: the run's or staging)
// and signatures are made, and the GPU index holds them: the hot tier shifted down, the archive
// segment, the record arena or the run.
Status TieredCache::FinishEvict(std::unique_ptr<ColdRun> run, const uint8_t* records,
                                const uint64_t* sigs) {
  const uint32_t L = shape_.num_layers, count = run->count;
  const int64_t s0 = options_.sinks;
  // Out of the hot tier: every layer's later rows move down over the evicted ones, in one copy
  // (a clone first: the ranges overlap).
  const int64_t m = hot_k_[0].size(1), rest = m - s0 - count;
  for (torch::Tensor* buf : {&hot_k_buf_, &hot_v_buf_}) {
    if (rest > 0) buf->narrow(2, s0, rest).copy_(buf->narrow(2, s0 + count, rest).clone());
  }
  for (uint32_t l = 0; l < L; ++l) {
    hot_k_[l] = hot_k_buf_[l].narrow(1, 0, m - count);
    hot_v_[l] = hot_v_buf_[l].narrow(1, 0, m - count);
  }
  std::vector<uint32_t> ids(count), positions(count);
  for (uint32_t t = 0; t < count; ++t) {
    ids[t] = uint32_t(hot_ids_[s0 + t]);
    positions[t] = uint32_t(hot_positions_[s0 + t]);
  }
  hot_ids_.erase(hot_ids_.begin() + s0, hot_ids_.begin() + s0 + count);
  hot_positions_.erase(hot_positions_.begin() + s0, hot_positions_.begin() + s0 + count);
  if (writer_) {
    SegmentView view{count, records, reinterpret_cast<const uint8_t*>(sigs), ids.data(),
                     positions.data()};
    KIV_RETURN_IF_ERROR(writer_->Append(view));
  }
  // With a GPU record arena its copy serves every read (Record); keeping the run's own copy until
  // the next commit would double the records' host memory (11.3 GB at 1M tokens of SmolLM2).
  if (gpu_records_)
    gpu_records_->Append(records, count);
  else
    runs_.push_back(std::move(run));
  cold_tokens_ += count;
  return Status::Ok();
}

Status TieredCache::Commit(const std::vector<uint8_t>& extra) {
  KIV_RETURN_IF_ERROR(status_);
  if (!writer_) return Status::InvalidArgument("this cache has no archive to commit to");
  HotCheckpoint cp;
  cp.dtype = dtype_ == torch::kBFloat16 ? format::kDtypeBF16
             : dtype_ == torch::kHalf   ? format::kDtypeF16
                                        : format::kDtypeF32;
  cp.num_layers = shape_.num_layers;
  cp.num_kv_heads = shape_.num_kv_heads;
  cp.head_dim = shape_.head_dim;
  for (size_t i = 0; i < hot_ids_.size(); ++i) {
    cp.token_ids.push_back(uint32_t(hot_ids_[i]));
    cp.positions.push_back(uint32_t(hot_positions_[i]));
  }
  for (uint32_t l = 0; l < shape_.num_layers; ++l) {
    for (auto* dst : {&cp.keys, &cp.values}) {
      const torch::Tensor t =
          (dst == &cp.keys ? hot_k_[l] : hot_v_[l]).to(torch::kCPU).contiguous();
      const auto* p = static_cast<const uint8_t*>(t.data_ptr());
      dst->insert(dst->end(), p, p + t.nbytes());
    }
  }
  cp.extra = extra;
  KIV_RETURN_IF_ERROR(writer_->Commit(cp));
  if (!reader_) {
    auto r = ArchiveReader::Open(writer_->path());
    if (!r.ok()) return r.status();
    reader_ = std::move(r.value());
  } else {
    KIV_RETURN_IF_ERROR(reader_->Refresh());
  }
  committed_tokens_ = reader_->token_count();
  if (committed_tokens_ != cold_tokens_)
    return Status::Corruption("the archive holds " + std::to_string(committed_tokens_) +
                              " cold tokens after commit, the cache " +
                              std::to_string(cold_tokens_));
  runs_.clear();
  return Status::Ok();
}

Result<std::unique_ptr<TieredCache>> TieredCache::Open(ArchiveWriter* writer,
                                                       const CacheShape& shape,
                                                       const TieredCacheOptions& options,
                                                       torch::Device device, torch::Dtype dtype,
                                                       std::vector<uint8_t>* extra) {
  // The archive's own codec parameters win: a resumed session must continue exactly.
  const CodecParams& c = writer->spec().codec;
  TieredCacheOptions o = options;
  o.codec_id = c.codec_id;
  o.signature_bits = c.signature_bits;
  o.projection_seed = c.projection_seed;
  o.sinks = c.sinks;
  o.window = c.hot_window;
  auto cache = std::make_unique<TieredCache>(shape, o, device, dtype);
  cache->writer_ = writer;
  if (writer->commit_count() <= 1 && writer->committed_tokens() == 0) return cache;  // new
  auto r = ArchiveReader::Open(writer->path());
  if (!r.ok()) return r.status();
  cache->reader_ = std::move(r.value());
  auto cp = cache->reader_->LoadCheckpoint();
  if (!cp.ok()) return cp.status();
  KIV_RETURN_IF_ERROR(cache->Restore(cp.value()));
  if (extra) *extra = cp->extra;
  return cache;
}

Status TieredCache::Restore(const HotCheckpoint& cp) {
  const uint32_t L = shape_.num_layers, H = shape_.num_kv_heads, d = shape_.head_dim;
  const int64_t n = cp.token_count();
  if (cp.num_layers != L || cp.num_kv_heads != H || cp.head_dim != d)
    return Status::Incompatible("the archive's checkpoint shape is not the model's");
  const torch::Dtype dt = cp.dtype == format::kDtypeBF16  ? torch::kBFloat16
                          : cp.dtype == format::kDtypeF16 ? torch::kHalf
                                                          : torch::kFloat32;
  const size_t layer_bytes = size_t{H} * n * d * DtypeBytes(cp.dtype);
  for (uint32_t l = 0; l < L; ++l) {
    auto load = [&](const std::vector<uint8_t>& bytes) {
      return torch::from_blob(const_cast<uint8_t*>(bytes.data()) + l * layer_bytes, {H, n, d}, dt)
          .clone()
          .to(device_, dtype_);
    };
    ReserveHot(n);
    hot_k_buf_[l].narrow(1, 0, n).copy_(load(cp.keys));
    hot_v_buf_[l].narrow(1, 0, n).copy_(load(cp.values));
    hot_k_[l] = hot_k_buf_[l].narrow(1, 0, n);
    hot_v_[l] = hot_v_buf_[l].narrow(1, 0, n);
  }
  hot_ids_.assign(cp.token_ids.begin(), cp.token_ids.end());
  hot_positions_.assign(cp.positions.begin(), cp.positions.end());
  committed_tokens_ = cold_tokens_ = reader_->token_count();
  // The signatures come straight from the file; the key norms (and page summaries) are decoded
  // from every record, the bulk of reopening a long archive: one (layer, kv-head) slot per task,
  // on every core (each slot's vectors are its own; the mapping is read-only).
  const uint32_t words = options_.signature_bits / 64;
  const uint32_t threads = std::thread::hardware_concurrency();
  const size_t segments = reader_->segment_count();
  using Clock = std::chrono::steady_clock;
  const auto t_hot = Clock::now();
  ParallelFor(L * H, threads, [&](uint32_t slot) {
    const uint32_t l = slot / H, h = slot % H;
    for (size_t s = 0; s < segments; ++s) {
      const SignatureRun run = reader_->Signatures(s, l, h);
      if (!gpu_index_) {  // a GPU index is staged straight from the mapping below
        const auto* w = reinterpret_cast<const uint64_t*>(run.data);  // 8-aligned in the file
        signatures_[slot].insert(signatures_[slot].end(), w, w + size_t{run.token_count} * words);
      }
      if (gpu_records_ && run.token_count > 0)
        gpu_records_->AppendSlot(slot, reader_->Record(run.first_token, l, h), run.first_token,
                                 run.token_count);
      if (!options_.scan_norms && options_.summary_page == 0) continue;
      for (uint32_t t = 0; t < run.token_count; ++t) {
        const uint8_t* record = reader_->Record(run.first_token + t, l, h);
        if (options_.scan_norms) key_norms_[slot].push_back(StoredKeyNorm(record));
        if (options_.summary_page > 0) Summarize(l, h, run.first_token + t, record);
      }
    }
  });
  if (options_.exact_cold || options_.measure_recall || options_.oracle)
    return Status::NotImplemented(
        "resuming a session whose cold tier is kept exact (a test and benchmark mode)");
  const auto t_slots = Clock::now();
  if (gpu_records_) gpu_records_->Grow(cold_tokens_, threads);
  const auto t_pinned = Clock::now();
  if (gpu_index_) {  // whole segments of at least kPiece tokens at a time: the staging stays small
    gpu_index_->Reserve(std::max<uint64_t>(cold_tokens_, options_.reserve_cold_tokens));
    constexpr uint64_t kPiece = 65536;
    std::vector<uint64_t> sigs;
    std::vector<float> norms;
    for (size_t s0 = 0, s1; s0 < segments; s0 = s1) {
      const uint64_t t0 = reader_->Signatures(s0, 0, 0).first_token;
      uint64_t m = 0;
      for (s1 = s0; s1 < segments && m < kPiece; ++s1) m += reader_->Signatures(s1, 0, 0).token_count;
      sigs.resize(size_t{L} * H * m * words);
      norms.resize(options_.scan_norms ? size_t{L} * H * m : 0);
      ParallelFor(L * H, threads, [&](uint32_t slot) {
        for (size_t s = s0; s < s1; ++s) {
          const SignatureRun run = reader_->Signatures(s, slot / H, slot % H);
          std::memcpy(sigs.data() + (slot * m + run.first_token - t0) * words, run.data,
                      size_t{run.token_count} * words * sizeof(uint64_t));
        }
        if (options_.scan_norms)
          std::copy_n(key_norms_[slot].begin() + t0, m, norms.begin() + slot * m);
      });
      gpu_index_->Append(sigs.data(), norms.data(), m);
    }
    // The host norms only staged the upload (Evict keeps none with the index on the GPU).
    for (auto& v : key_norms_) std::vector<float>().swap(v);
  }
  if (PhaseTimer::Enabled()) {
    if (device_.is_cuda()) torch::cuda::synchronize();
    auto secs = [](Clock::time_point a, Clock::time_point b) {
      return std::chrono::duration<double>(b - a).count();
    };
    std::fprintf(stderr,
                 "kiv profile: reopen %llu cold tokens: signatures, norms and record copies "
                 "%.3f s, pinning the records %.3f s, signature upload %.3f s\n",
                 static_cast<unsigned long long>(cold_tokens_), secs(t_hot, t_slots),
                 secs(t_slots, t_pinned), secs(t_pinned, Clock::now()));
  }
  length_ = hot_positions_.empty() ? int64_t(cold_tokens_) : hot_positions_.back() + 1;
  return Status::Ok();
}

// The hot tier lives in two buffers [L][H_kv][capacity][d]; hot_k_[l] / hot_v_[l] are views of
// layer l's first rows (a layer is ahead of the next while a chunk goes through the model).
// Grows the buffers to hold at least `rows` per layer, keeping what they hold.
void TieredCache::ReserveHot(int64_t rows) {
  const int64_t cap = hot_k_buf_.defined() ? hot_k_buf_.size(2) : 0;
  if (rows <= cap) return;
  const int64_t L = shape_.num_layers, H = shape_.num_kv_heads, d = shape_.head_dim;
  const int64_t new_cap = std::max(rows, 2 * cap);
  const auto opts = torch::TensorOptions().dtype(dtype_).device(device_);
  torch::Tensor k = torch::zeros({L, H, new_cap, d}, opts), v = torch::zeros_like(k);
  for (int64_t l = 0; l < L; ++l) {
    const int64_t len = hot_k_[size_t(l)].defined() ? hot_k_[size_t(l)].size(1) : 0;
    if (len > 0) {
      k[l].narrow(1, 0, len).copy_(hot_k_[size_t(l)]);
      v[l].narrow(1, 0, len).copy_(hot_v_[size_t(l)]);
    }
    hot_k_[size_t(l)] = k[l].narrow(1, 0, len);
    hot_v_[size_t(l)] = v[l].narrow(1, 0, len);
  }
  hot_k_buf_ = k;
  hot_v_buf_ = v;
}

std::array<uint64_t, 4> TieredCache::scan_guess_counts() const {
  if (!gpu_cold_) return {0, 0, 0, 0};
  const GpuColdTier::GuessCounts c = gpu_cold_->ScanGuessCounts();
  return {c.held, c.missed, c.missed_few, c.missed_many};
}

uint64_t TieredCache::decode_index_read_bytes() const {
  return gpu_index_ ? gpu_index_->held_bytes() : 0;
}

uint64_t TieredCache::device_bytes() const {
  uint64_t bytes = gpu_index_ ? gpu_index_->device_bytes() : 0;
  return bytes + uint64_t(hot_k_buf_.nbytes() + hot_v_buf_.nbytes());
}

double RecallStats::Mean() const {
  double total = 0;
  uint64_t n = 0;
  for (size_t l = 0; l < sum.size(); ++l) total += sum[l], n += count[l];
  return n ? total / double(n) : std::nan("");
}

int RecallStats::WorstLayer(double* mean) const {
  int worst = -1;
  for (size_t l = 0; l < sum.size(); ++l) {
    if (count[l] == 0) continue;
    const double m = sum[l] / double(count[l]);
    if (worst < 0 || m < *mean) worst = int(l), *mean = m;
  }
  return worst;
}

}  // namespace kiv
