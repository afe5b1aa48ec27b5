// The subcommands of `kiv`. Each lives in its own file with its Options struct, a Setup function
// that registers it under its parent, and a Run function that does the work and returns the exit
// code (0 ok, 1 failure, 2 usage).
#pragma once

#include <CLI/CLI.hpp>

namespace kiv::cli {

// Under `kiv archive`.
void SetupArchiveInspect(CLI::App& archive);
void SetupArchiveVerify(CLI::App& archive);
void SetupArchiveSynth(CLI::App& archive);
// Top level (need the runtime: LibTorch).
void SetupRun(CLI::App& app);
void SetupChat(CLI::App& app);
// Under `kiv bench`.
void SetupBenchAppend(CLI::App& bench);
void SetupBenchRecall(CLI::App& bench);
void SetupBenchCodec(CLI::App& bench);
void SetupBenchFidelity(CLI::App& bench);  // needs the runtime
void SetupBenchSpeed(CLI::App& bench);     // needs the runtime

// Registers `run` as the subcommand's action. A nonzero exit code travels to main() as a
// CLI::RuntimeError, which CLI11 passes through silently; main() returns its code.
template <typename Run>
void OnRun(CLI::App& sub, Run run) {
  sub.callback([run] {
    const int code = run();
    if (code != 0) throw CLI::RuntimeError(code);
  });
}

}  // namespace kiv::cli
