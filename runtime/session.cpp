#include "runtime/session.h"

#include <torch/cuda.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdlib>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <thread>

#include "runtime/full_cache.h"
#include "runtime/llama.h"
#include "runtime/model_config.h"
#include "runtime/tiered_cache.h"
#include "storage/writer.h"

namespace kiv {
namespace {

// The session's own state in a checkpoint's extra bytes: "KSS1", turns, sampler state, then the
// pending ids. Little-endian, like the rest of the archive.
constexpr uint32_t kStateMagic = 0x3153534Bu;  // "KSS1"

template <typename T>
void Put(std::vector<uint8_t>* out, T v) {
  const size_t at = out->size();
  out->resize(at + sizeof v);
  std::memcpy(out->data() + at, &v, sizeof v);
}

template <typename T>
bool Get(const std::vector<uint8_t>& in, size_t* at, T* v) {
  if (*at + sizeof *v > in.size()) return false;
  std::memcpy(v, in.data() + *at, sizeof *v);
  *at += sizeof *v;
  return true;
}

}  // namespace

struct Session::Impl {
  std::unique_ptr<LlamaModel> model;
  std::unique_ptr<ArchiveWriter> writer;
  std::unique_ptr<KvCache> cache;
  TieredCache* tiered = nullptr;  // cache, when it is the tiered one
  // KIV_PROFILE: seconds in model forward passes (synchronized), and how many.
  double forward_s = 0;
  uint64_t forwards = 0;
};

Session::Session() : impl_(std::make_unique<Impl>()) {}
Session::~Session() {
  if (impl_ && std::getenv("KIV_PROFILE"))
    std::fprintf(stderr, "kiv profile: %llu forward passes, %.3f s\n",
                 static_cast<unsigned long long>(impl_->forwards), impl_->forward_s);
  if (impl_ && impl_->writer) impl_->writer->Close();  // uncommitted work is a tail: dropped
}

Result<std::unique_ptr<Session>> Session::Open(const SessionOptions& options) {
  std::unique_ptr<Session> s(new Session());
  s->options_ = options;
  if (!std::filesystem::is_directory(options.model_dir))
    return Status::NotFound("model directory '" + options.model_dir +
                            "' does not exist (tools/model/fetch_model.sh fetches the default)");
  auto tokenizer = Tokenizer::Load(options.model_dir);
  if (!tokenizer.ok()) return tokenizer.status();
  s->tokenizer_ = std::make_unique<Tokenizer>(std::move(tokenizer.value()));
  auto chat = ChatTemplate::Load(options.model_dir);
  if (!chat.ok()) return chat.status();
  s->chat_ = chat.value();
  const uint32_t cores = std::max(1u, std::thread::hardware_concurrency());
  torch::set_num_threads(int(options.threads ? options.threads : cores <= 2 ? 1 : cores / 2));
  const c10::Device device(options.device == "cuda" ? c10::kCUDA : c10::kCPU);
  auto model = LlamaModel::Load(options.model_dir, device, DefaultDtype(device));
  if (!model.ok()) return model.status();
  if (options.cuda_graphs && device.is_cuda())
    KIV_RETURN_IF_ERROR(model.value()->EnableDecodeGraphs(true));
  Impl& m = *s->impl_;
  m.model = std::move(model.value());
  const ModelConfig& c = m.model->config();
  s->sampler_ = Sampler(options.sampler);
  if (options.full_cache) {
    m.cache = std::make_unique<FullCache>(c.num_layers);
    return s;
  }
  const CacheShape shape{uint32_t(c.num_layers), uint32_t(c.num_q_heads), uint32_t(c.num_kv_heads),
                         uint32_t(c.head_dim)};
  if (options.archive.empty()) {
    auto cache = std::make_unique<TieredCache>(shape, options.cache, device, DefaultDtype(device));
    m.tiered = cache.get();
    m.cache = std::move(cache);
    return s;
  }
  const ModelFingerprint fp =
      MakeModelFingerprint(c, m.model->weights_hash(), s->tokenizer_->fingerprint());
  if (std::filesystem::exists(options.archive)) {
    auto w = ArchiveWriter::Open(options.archive, {}, &fp);
    if (!w.ok()) return w.status();
    m.writer = std::move(w.value());
    s->resumed_ = true;
  } else {
    ArchiveSpec spec;
    spec.model = fp;
    spec.codec.codec_id = options.cache.codec_id;
    spec.codec.signature_bits = options.cache.signature_bits;
    spec.codec.projection_seed = options.cache.projection_seed;
    spec.codec.sinks = options.cache.sinks;
    spec.codec.hot_window = options.cache.window;
    auto w = ArchiveWriter::Create(options.archive, spec);
    if (!w.ok()) return w.status();
    m.writer = std::move(w.value());
  }
  std::vector<uint8_t> extra;
  auto cache = TieredCache::Open(m.writer.get(), shape, options.cache, device,
                                 DefaultDtype(device), &extra);
  if (!cache.ok()) return cache.status();
  m.tiered = cache.value().get();
  m.cache = std::move(cache.value());
  if (!extra.empty()) KIV_RETURN_IF_ERROR(s->LoadState(extra));
  return s;
}

Status Session::Feed(const std::vector<int32_t>& ids, const ProgressFn& progress) {
  Impl& m = *impl_;
  const size_t chunk = std::max<uint32_t>(1, options_.chunk_tokens);
  for (size_t at = 0; at < ids.size(); at += chunk) {
    const size_t n = std::min(chunk, ids.size() - at);
    const std::vector<int64_t> part(ids.begin() + at, ids.begin() + at + n);
    const bool last = at + n == ids.size();
    if (m.tiered) m.tiered->set_chunk_ends_prompt(last);
    static const bool profile = std::getenv("KIV_PROFILE") != nullptr;
    const bool sync = profile && m.model->device().is_cuda();
    const auto t0 = std::chrono::steady_clock::now();
    torch::Tensor logits = m.model->Forward(part, *m.cache, LlamaModel::Logits::kLast);
    if (sync) torch::cuda::synchronize();
    m.forward_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ++m.forwards;
    if (m.tiered) KIV_RETURN_IF_ERROR(m.tiered->status());
    if (last) {
      logits = logits.reshape({-1}).to(torch::kCPU).to(torch::kFloat32).contiguous();
      last_logits_.assign(logits.data_ptr<float>(), logits.data_ptr<float>() + logits.numel());
    }
    if (progress) progress(at + n, ids.size());
  }
  return Status::Ok();
}

Status Session::Prefill(const std::vector<int32_t>& tokens, const ProgressFn& progress) {
  std::vector<int32_t> ids = pending_;
  ids.insert(ids.end(), tokens.begin(), tokens.end());
  if (ids.empty()) return Status::Ok();
  pending_.clear();
  ++turns_;
  return Feed(ids, progress);
}

Result<std::vector<int32_t>> Session::Generate(uint32_t max_new, const TokenFn& on_token) {
  if (!pending_.empty()) {  // a resumed or continued generation: feed what was sampled last
    std::vector<int32_t> ids;
    ids.swap(pending_);
    KIV_RETURN_IF_ERROR(Feed(ids, {}));
  }
  if (last_logits_.empty())
    return Status::InvalidArgument("nothing to generate from: the context is empty");
  std::vector<int32_t> out;
  for (uint32_t i = 0; i < max_new; ++i) {
    const int32_t id = sampler_.Next(last_logits_.data(), last_logits_.size());
    out.push_back(id);
    const bool go_on = on_token ? on_token(id) : true;
    if (!go_on || tokenizer_->IsStop(id) || i + 1 == max_new) {
      pending_ = {id};
      break;
    }
    KIV_RETURN_IF_ERROR(Feed({id}, {}));
  }
  return out;
}

Status Session::Commit() {
  if (!impl_->writer) return Status::InvalidArgument("this session has no archive to commit to");
  return impl_->tiered->Commit(SaveState());
}

std::vector<uint8_t> Session::SaveState() const {
  std::vector<uint8_t> out;
  Put(&out, kStateMagic);
  Put(&out, turns_);
  Put(&out, sampler_.state());
  Put(&out, uint32_t(pending_.size()));
  for (int32_t id : pending_) Put(&out, id);
  return out;
}

Status Session::LoadState(const std::vector<uint8_t>& bytes) {
  size_t at = 0;
  uint32_t magic = 0, count = 0;
  uint64_t state = 0;
  if (!Get(bytes, &at, &magic) || magic != kStateMagic || !Get(bytes, &at, &turns_) ||
      !Get(bytes, &at, &state) || !Get(bytes, &at, &count) || count > bytes.size())
    return Status::Corruption("the session state in the archive's last checkpoint is unreadable");
  pending_.resize(count);
  for (int32_t& id : pending_)
    if (!Get(bytes, &at, &id)) return Status::Corruption("the session's pending tokens are cut short");
  sampler_.set_state(state);
  return Status::Ok();
}

std::vector<int32_t> Session::UserTurn(const std::string& text) const {
  if (turns_ == 0 && !resumed_) {
    const std::vector<ChatMessage> first{{"user", text}};
    return tokenizer_->Encode(ApplyChatTemplate(chat_, first, /*add_generation_prompt=*/true));
  }
  // A later turn continues the conversation: its text is what the template writes after the
  // previous assistant message's content. When that message ended on a stop token (pending, fed
  // first by Prefill), the template's own end-of-turn text is already in the context.
  static const std::string kMark = "@@kiv-assistant-content@@";
  const std::vector<ChatMessage> two{{"user", "x"}, {"assistant", kMark}, {"user", text}};
  const std::string full = ApplyChatTemplate(chat_, two, /*add_generation_prompt=*/true);
  std::string rest = full.substr(full.rfind(kMark) + kMark.size());
  if (!pending_.empty() && tokenizer_->IsStop(pending_.back())) {
    const std::string end = tokenizer_->Decode(std::vector<int32_t>{pending_.back()});
    if (rest.compare(0, end.size(), end) == 0) rest.erase(0, end.size());
  }
  return tokenizer_->Encode(rest);
}

SessionStats Session::stats() const {
  SessionStats s;
  s.context_tokens = uint64_t(impl_->cache->length());
  s.turns = turns_;
  s.resumed = resumed_;
  s.whole_step_captures = impl_->model->whole_step_captures();
  if (impl_->tiered) {
    s.hot_tokens = impl_->tiered->hot_tokens();
    s.cold_tokens = impl_->tiered->cold_tokens();
    s.cache_device_bytes = impl_->tiered->device_bytes();
    const std::array<uint64_t, 4> guesses = impl_->tiered->scan_guess_counts();
    s.scan_guess_held = guesses[0];
    s.scan_guess_missed = guesses[1];
    s.scan_guess_missed_few = guesses[2];
    s.scan_guess_missed_many = guesses[3];
  } else {
    s.hot_tokens = s.context_tokens;
  }
  if (impl_->writer) s.archive_bytes = impl_->writer->file_bytes();
  const ModelConfig& c = impl_->model->config();
  const uint64_t element = c10::elementSize(impl_->model->dtype());
  s.decode_read_bytes = element * (uint64_t(DecodeWeightElements(c)) +
                                   2 * uint64_t(c.num_layers * c.num_kv_heads * c.head_dim) *
                                       s.hot_tokens);
  if (impl_->tiered) s.decode_read_bytes += impl_->tiered->decode_index_read_bytes();
  return s;
}

RecallStats Session::recall() const {
  return impl_->tiered ? impl_->tiered->recall() : RecallStats{};
}

std::string Session::Describe() const {
  const ModelConfig& c = impl_->model->config();
  char buf[256];
  if (options_.full_cache) {
    std::snprintf(buf, sizeof buf, "%s (%lld layers) on %s, full cache, %s",
                  c.model_type.c_str(), static_cast<long long>(c.num_layers),
                  options_.device.c_str(), sampler_.Describe().c_str());
  } else {
    const TieredCacheOptions& o = impl_->tiered->options();
    std::snprintf(buf, sizeof buf,
                  "%s (%lld layers) on %s, %u sinks + %u hot, k=%u of C=%u by %u-bit signatures "
                  "scanned on the %s%s, %s",
                  c.model_type.c_str(), static_cast<long long>(c.num_layers),
                  options_.device.c_str(), o.sinks, o.window, o.top_k, o.candidates,
                  o.signature_bits,
                  impl_->tiered->cold_on_gpu()    ? "GPU (re-rank, gather, attention there too)"
                  : impl_->tiered->scans_on_gpu() ? "GPU (re-rank, gather, attention on the CPU)"
                                                  : "CPU",
                  o.retrieval ? "" : " (retrieval OFF)",
                  sampler_.Describe().c_str());
  }
  return buf;
}

}  // namespace kiv
