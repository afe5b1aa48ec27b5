#include "cli/session_options.h"

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <iostream>

#include "cli/progress.h"
#include "cli/util.h"

namespace kiv::cli {

std::atomic<bool> g_interrupted{false};

namespace {
void OnInterrupt(int) {
  if (g_interrupted.exchange(true)) std::_Exit(130);  // a second Ctrl-C: stop now, uncommitted
}
}  // namespace

void InstallInterruptHandler() { std::signal(SIGINT, OnInterrupt); }

std::string DefaultModelDir() { return KivCacheDir() + "/models/SmolLM2-135M-Instruct"; }

void AddTailSampleOptions(CLI::App& sub, TieredCacheOptions& cache) {
  sub.add_option("--tail-samples", cache.tail_samples,
                 "Also attend to this many unpicked cold tokens, sampled and weighted (0: off; "
                 "with --window 1024 and --candidates 4096 the setting that passes docs/quality.md)")
      ->capture_default_str()
      ->check(CLI::Range(0u, 4096u));
  sub.add_option("--tail-recent", cache.tail_recent,
                 "The tail sample's most recent stratum: this many unpicked tokens, half the samples")
      ->capture_default_str();
}

void AddSessionOptions(CLI::App& sub, SessionFlags& f) {
  f.session.model_dir = DefaultModelDir();
  SessionOptions& s = f.session;
  sub.add_option("--model", s.model_dir, "HuggingFace model directory (Llama family)")
      ->capture_default_str();
  sub.add_option("--session", s.archive,
                 "Session archive (.kiv): created if missing, resumed if present");
  sub.add_option("--max-new", f.max_new, "Most tokens to generate")->capture_default_str();
  sub.add_option("--temperature", s.sampler.temperature, "0 for greedy")->capture_default_str();
  sub.add_option("--top-p", s.sampler.top_p, "Nucleus sampling mass")->capture_default_str();
  sub.add_option("--seed", s.sampler.seed, "Sampler seed")->capture_default_str();
  sub.add_option("--chunk", s.chunk_tokens, "Prefill chunk in tokens")->capture_default_str();
  sub.add_option("--sinks", s.cache.sinks, "Sink tokens kept exact")->capture_default_str();
  sub.add_option("--window", s.cache.window, "Recent tokens kept exact (hot window)")
      ->capture_default_str();
  sub.add_option("--k", s.cache.top_k, "Cold tokens retrieved per layer and kv-head")
      ->capture_default_str();
  sub.add_option("--evict-batch", s.cache.evict_batch,
                 "Decode: move hot tokens to the archive every N steps, N at a time (up to N - 1 "
                 "more exact tokens in attention; 1: the window exactly)")
      ->capture_default_str()
      ->check(CLI::Range(1u, 4096u));
  sub.add_option("--candidates", s.cache.candidates, "Candidates the scan passes to re-ranking")
      ->capture_default_str();
  sub.add_option("--prefill-block", s.cache.prefill_block,
                 "Prefill queries sharing one retrieval (a chunk's last query has its own)")
      ->capture_default_str();
  sub.add_option("--prefill-tail", s.cache.prefill_tail,
                 "Last queries of each prefill chunk that retrieve one by one")
      ->capture_default_str();
  sub.add_flag("!--no-scan-norms", s.cache.scan_norms,
               "Scan without weighting keys by their norm (no norms on the GPU)");
  AddTailSampleOptions(sub, s.cache);
  sub.add_option("--reserve-cold", s.cache.reserve_cold_tokens,
                 "GPU: room for this many cold tokens' signatures from the start (0: grow)")
      ->capture_default_str();
  sub.add_flag("--no-retrieval", f.no_retrieval, "Never read cold tokens (the ablation)");
  sub.add_flag("--full-cache", s.full_cache, "Keep every token exact, no archive (the baseline)");
  sub.add_option("--device", s.device, "cpu or cuda")->capture_default_str()
      ->check(CLI::IsMember({"cpu", "cuda"}));
  sub.add_flag("!--no-cuda-graphs", s.cuda_graphs,
               "With --device cuda: decode steps run eagerly, not as CUDA graph replays");
  sub.add_option("--threads", s.threads, "CPU threads (0: 1 on <= 2 cores, else half of them)")
      ->capture_default_str();
  sub.add_flag("-q,--quiet", f.quiet, "No progress bar and no summary line");
  sub.add_option("--logits-out", f.logits_out,
                 "Append every sampled step's float32 logits to this file (for the resume gate)");
}

std::unique_ptr<Session> OpenSession(SessionFlags& f) {
  f.session.cache.retrieval = !f.no_retrieval;
  if (f.session.full_cache && !f.session.archive.empty()) {
    UsageError("--full-cache keeps everything in memory; it cannot be combined with --session");
    return nullptr;
  }
  auto s = Session::Open(f.session);
  if (!s.ok()) {
    Fail("cannot open the session: " + s.status().ToString());
    return nullptr;
  }
  if (!f.quiet && !f.session.archive.empty()) {
    const SessionStats st = (*s)->stats();
    if (st.resumed)
      std::fprintf(stderr, "resumed %s: %llu tokens (%llu hot, %llu cold), %u turns\n",
                   f.session.archive.c_str(), (unsigned long long)st.context_tokens,
                   (unsigned long long)st.hot_tokens, (unsigned long long)st.cold_tokens, st.turns);
    else
      std::fprintf(stderr, "new session %s\n", f.session.archive.c_str());
  }
  return std::move(s.value());
}

int RunTurn(Session& session, const SessionFlags& f, const std::vector<int32_t>& prompt_ids) {
  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  {
    ProgressBar bar("prefill", prompt_ids.size(), ProgressBar::Unit::kTokens, !f.quiet);
    if (Status s = session.Prefill(prompt_ids, [&](uint64_t done, uint64_t) { bar.Update(done); });
        !s.ok())
      return Fail("prefill failed: " + s.ToString());
  }
  const auto t1 = Clock::now();
  StreamDecoder decoder(session.tokenizer(), /*skip_special=*/true);
  std::FILE* logits = f.logits_out.empty() ? nullptr : std::fopen(f.logits_out.c_str(), "ab");
  if (!f.logits_out.empty() && !logits) return Fail("cannot open " + Quoted(f.logits_out));
  auto answer = session.Generate(f.max_new, [&](int32_t id) {
    if (logits) {
      const std::vector<float>& l = session.last_logits();
      std::fwrite(l.data(), sizeof(float), l.size(), logits);
    }
    const std::string piece = decoder.Push(id);
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
    return !g_interrupted.load();
  });
  if (logits) std::fclose(logits);
  const std::string tail = decoder.Finish();
  std::fwrite(tail.data(), 1, tail.size(), stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);
  if (!answer.ok()) return Fail("generation failed: " + answer.status().ToString());
  const auto t2 = Clock::now();
  if (!f.session.archive.empty()) {
    if (Status s = session.Commit(); !s.ok()) return Fail("commit failed: " + s.ToString());
  }
  if (!f.quiet) {
    const SessionStats st = session.stats();
    const double prefill_s = std::chrono::duration<double>(t1 - t0).count();
    const double decode_s = std::chrono::duration<double>(t2 - t1).count();
    std::fprintf(stderr,
                 "[%llu context tokens: %llu hot, %llu cold | prefill %zu tokens %.1f tok/s | "
                 "decode %zu tokens %.2f tok/s%s%s]\n",
                 (unsigned long long)st.context_tokens, (unsigned long long)st.hot_tokens,
                 (unsigned long long)st.cold_tokens, prompt_ids.size(),
                 double(prompt_ids.size()) / std::max(prefill_s, 1e-9), answer->size(),
                 double(answer->size()) / std::max(decode_s, 1e-9),
                 f.session.archive.empty() ? "" : (" | archive " + HumanBytes(st.archive_bytes)).c_str(),
                 g_interrupted ? " | interrupted, committed" : "");
  }
  return g_interrupted ? 130 : kExitOk;
}

}  // namespace kiv::cli
