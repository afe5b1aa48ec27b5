// kiv: the command-line front end. Each subcommand lives in its own file (see commands.h); this
// file wires them into one CLI11 app and maps every outcome onto the exit codes 0 / 1 / 2.
#include <execinfo.h>
#include <unistd.h>

#include <csignal>
#include <exception>
#include <iostream>

#include "cli/commands.h"
#include "cli/util.h"

namespace {

constexpr const char* kFooter = R"(Examples:
  kiv archive synth /tmp/demo.kiv --tokens 100000   write a synthetic archive to try the tools on
  kiv archive inspect /tmp/demo.kiv                 what is in it: model, codec, tokens, commits
  kiv archive verify /tmp/demo.kiv                  check every checksum in it
  kiv bench append --dir /tmp --gib 1               measure append throughput
  kiv bench fidelity --out fidelity.json            kiv against a full cache (KL, needles)

Exit codes: 0 ok, 1 failure (a damaged or unreadable archive, an I/O error), 2 usage error.
Run `kiv <command> --help` for a command's options.)";

void SetupApp(CLI::App& app) {
  app.footer(kFooter);
  app.require_subcommand(1);

#ifdef KIV_HAVE_RUNTIME
  kiv::cli::SetupRun(app);
  kiv::cli::SetupChat(app);
#endif
  CLI::App* archive = app.add_subcommand(
      "archive", "Look inside, check and create .kiv archives (the on-disk KV cache)");
  archive->footer(R"(Examples:
  kiv archive inspect chat.kiv --json
  kiv archive verify chat.kiv --quiet && echo intact)");
  archive->require_subcommand(1);
  kiv::cli::SetupArchiveInspect(*archive);
  kiv::cli::SetupArchiveVerify(*archive);
  kiv::cli::SetupArchiveSynth(*archive);

  CLI::App* bench = app.add_subcommand(
      "bench", "Benchmarks: programs that measure and write a JSON result (not tests)");
  bench->footer(R"(Example:
  kiv bench append --dir /mnt/nvme --gib 4 --out append.json)");
  bench->require_subcommand(1);
  kiv::cli::SetupBenchAppend(*bench);
  kiv::cli::SetupBenchRecall(*bench);
  kiv::cli::SetupBenchCodec(*bench);
#ifdef KIV_HAVE_RUNTIME
  kiv::cli::SetupBenchFidelity(*bench);
  kiv::cli::SetupBenchSpeed(*bench);
#endif
}

// A crash names where it happened (a bug report, and machines without a debugger): the call
// stack to stderr, then the default action (the core dump, exit status 139).
void OnFatalSignal(int sig) {
  static const char kHead[] = "kiv: fatal signal; call stack:\n";
  (void)!write(STDERR_FILENO, kHead, sizeof kHead - 1);
  void* frames[64];
  backtrace_symbols_fd(frames, backtrace(frames, 64), STDERR_FILENO);
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}

}  // namespace

int main(int argc, char** argv) {
  void* warm[1];
  backtrace(warm, 1);  // loads the unwinder now, not first inside the signal handler
  for (int sig : {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT}) std::signal(sig, OnFatalSignal);
  // With SIGXFSZ at its default a file-size limit kills the process mid-write; ignored, the write
  // fails with EFBIG and the writer reports it like any other full disk.
  std::signal(SIGXFSZ, SIG_IGN);

  CLI::App app{"kiv: a tiered, durable KV cache for long-context language models", "kiv"};
  SetupApp(app);
  try {
    app.parse(argc, argv);  // runs the chosen subcommand's callback
  } catch (const CLI::RuntimeError& e) {
    return e.get_exit_code();  // the subcommand has already said why
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);  // prints help, or the usage error and a hint
    return code == 0 ? kiv::cli::kExitOk : kiv::cli::kExitUsage;
  } catch (const std::exception& e) {
    // Storage never throws; this is an allocation failure or a bug in the CLI itself.
    return kiv::cli::Fail(std::string("internal error: ") + e.what());
  }
  return kiv::cli::kExitOk;
}
