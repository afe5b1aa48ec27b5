// A session: a model, its tokenizer and a cache, over an archive that makes the context durable.
// `kiv run` and `kiv chat` and the fidelity benchmark drive it. LibTorch-free header.
//
// Opening an existing archive resumes it: the hot tier comes back from the last commit's
// checkpoint, the cold tier from the archive's segments, and the session's own state (the token
// sampled but not yet fed, the sampler's generator, the turn count) from the checkpoint's extra
// bytes, so generation continues exactly where the committed session stopped.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "runtime/cache_options.h"
#include "runtime/chat_template.h"
#include "runtime/sampler.h"
#include "runtime/tokenizer.h"
#include "storage/status.h"

namespace kiv {

struct SessionOptions {
  std::string model_dir;
  std::string archive;     // the session file; empty for a session that is never saved
  bool full_cache = false; // the fidelity baseline: every token exact, no archive
  TieredCacheOptions cache;
  uint32_t chunk_tokens = 1024;  // prefill chunk: retrieval stays active inside long prompts
  SamplerOptions sampler;
  std::string device = "cpu";    // "cpu" or "cuda"
  // On CUDA, decode steps replay CUDA graphs of the model's operations
  // (LlamaModel::EnableDecodeGraphs: the eager path's logits bit for bit, ~2.5x faster on an H100).
  bool cuda_graphs = true;
  // CPU threads for LibTorch; 0 picks: 1 on machines with at most 2 cores (there, a second
  // OpenMP thread spin-waits against everything else and decode ran 40x slower: 0.5 against
  // 23 tokens/s), else half the cores.
  uint32_t threads = 0;
};

struct SessionStats {
  uint64_t context_tokens = 0;  // tokens fed to the model so far
  uint64_t hot_tokens = 0;
  uint64_t cold_tokens = 0;
  uint64_t archive_bytes = 0;
  uint64_t cache_device_bytes = 0;  // what the cache holds on the model's device (hot tier, and
                                    // on CUDA the signatures and norms)
  uint32_t turns = 0;
  bool resumed = false;
  uint64_t whole_step_captures = 0;  // CUDA graphs of a whole decode step captured so far
  // Decode scans on the GPU (one per layer and query head a step) whose guessed threshold held,
  // and those that fell back to the full select (kernels/scan.h), so far.
  uint64_t scan_guess_held = 0, scan_guess_missed = 0;
  // Of the misses: too few tokens reached the guess (or there was none yet), or more than the
  // candidate buffer holds.
  uint64_t scan_guess_missed_few = 0, scan_guess_missed_many = 0;
  // An estimate of the memory a decode step reads where the model runs: the weights
  // (DecodeWeightElements), the attended keys and values (the hot tier's; a full cache's all),
  // and on the GPU the scans' signatures and norms. Not counted: the records the step reads from
  // host memory, activations, scratch. Over the GPU's memory bandwidth: the step's limit.
  uint64_t decode_read_bytes = 0;
};

using ProgressFn = std::function<void(uint64_t done, uint64_t total)>;
// Called with each generated id; return false to stop early.
using TokenFn = std::function<bool(int32_t id)>;

class Session {
 public:
  static Result<std::unique_ptr<Session>> Open(const SessionOptions& options);
  ~Session();

  // Feeds `tokens` (after any token still pending from the last turn) in chunks.
  Status Prefill(const std::vector<int32_t>& tokens, const ProgressFn& progress = {});
  // Samples up to `max_new` tokens, feeding each but the last; stops after a stop id. The last
  // token is kept pending, to be fed first by the next Prefill or Generate.
  Result<std::vector<int32_t>> Generate(uint32_t max_new, const TokenFn& on_token = {});
  // Makes the context durable (a no-op error for a session without an archive).
  Status Commit();

  // The prompt for one user turn: the chat template's text for it, as ids. The first turn gets
  // the template's opening (system message); later turns continue the conversation.
  std::vector<int32_t> UserTurn(const std::string& text) const;

  // Float32 logits of the last fed position [vocab] (empty before anything was fed).
  const std::vector<float>& last_logits() const { return last_logits_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  SessionStats stats() const;
  // Retrieval's recall so far (empty unless options.cache.measure_recall on a tiered cache).
  RecallStats recall() const;
  std::string Describe() const;  // model, device, cache knobs: for the run summary

 private:
  struct Impl;
  Session();
  Status Feed(const std::vector<int32_t>& ids, const ProgressFn& progress);
  std::vector<uint8_t> SaveState() const;
  Status LoadState(const std::vector<uint8_t>& bytes);

  std::unique_ptr<Impl> impl_;
  SessionOptions options_;
  std::unique_ptr<Tokenizer> tokenizer_;
  ChatTemplate chat_;
  Sampler sampler_{SamplerOptions{}};
  std::vector<int32_t> pending_;
  std::vector<float> last_logits_;
  uint32_t turns_ = 0;
  bool resumed_ = false;
};

}  // namespace kiv
