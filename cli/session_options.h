// The options `kiv run` and `kiv chat` share: the model, the session file, the cache knobs and the
// sampler; and the loop that runs one turn (prefill with a progress bar, streamed answer, commit).
#pragma once

#include <CLI/CLI.hpp>

#include <atomic>
#include <string>

#include "runtime/session.h"

namespace kiv::cli {

struct SessionFlags {
  SessionOptions session;
  uint32_t max_new = 256;
  bool no_retrieval = false;
  bool quiet = false;  // no progress bar and no summary line
  std::string logits_out;  // appends each sampled step's float32 logits here (the resume gate)
};

// The default model directory: $KIV_CACHE (or ~/.cache/kiv)/models/SmolLM2-135M-Instruct.
std::string DefaultModelDir();
void AddSessionOptions(CLI::App& sub, SessionFlags& flags);
// --tail-samples and --tail-recent (runtime/cache_options.h): run, chat and the benches.
void AddTailSampleOptions(CLI::App& sub, TieredCacheOptions& cache);

// Set by SIGINT: the answer stops, the session commits, the command exits.
extern std::atomic<bool> g_interrupted;
void InstallInterruptHandler();

// Opens the session named by the flags, with one clear sentence on failure (printed; returns null).
std::unique_ptr<Session> OpenSession(SessionFlags& flags);
// One turn: feeds `prompt_ids`, streams the answer to stdout, commits. Returns the exit code.
int RunTurn(Session& session, const SessionFlags& flags, const std::vector<int32_t>& prompt_ids);

}  // namespace kiv::cli
