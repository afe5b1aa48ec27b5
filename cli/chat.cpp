// kiv chat: an interactive, multi-turn conversation; with --session it is saved after every turn
// and resumed by the next `kiv chat --session` on the same file.
#include <unistd.h>

#include <iostream>
#include <memory>
#include <string>

#include "cli/commands.h"
#include "cli/session_options.h"
#include "cli/util.h"

namespace kiv::cli {
namespace {

int RunChat(SessionFlags& flags) {
  InstallInterruptHandler();
  std::unique_ptr<Session> session = OpenSession(flags);
  if (!session) return kExitFailure;
  const bool tty = isatty(STDIN_FILENO);
  if (tty) std::cerr << "kiv chat: " << session->Describe() << "\n(empty line or /quit ends)\n";
  std::string line;
  while (!g_interrupted) {
    if (tty) std::cerr << "> " << std::flush;
    if (!std::getline(std::cin, line) || line.empty() || line == "/quit") break;
    const int code = RunTurn(*session, flags, session->UserTurn(line));
    if (code != kExitOk) return code;
  }
  return g_interrupted ? 130 : kExitOk;
}

}  // namespace

void SetupChat(CLI::App& app) {
  auto flags = std::make_shared<SessionFlags>();
  CLI::App* sub = app.add_subcommand("chat", "Talk with a model; every turn is saved to --session");
  AddSessionOptions(*sub, *flags);
  sub->footer(R"(Reads one message per line from stdin (a prompt "> " when it is a terminal).
Each turn commits the session, so a crash loses at most the turn in progress.

Examples:
  kiv chat --session notes.kiv
  printf 'Hello!\nWhat did I just say?\n' | kiv chat --session notes.kiv)");
  OnRun(*sub, [flags] { return RunChat(*flags); });
}

}  // namespace kiv::cli
