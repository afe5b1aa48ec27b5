// kiv run: one question to a model over a durable context. With --prompt-file the file's text
// comes first (a long document, prefilled in chunks with retrieval active); with --session the
// context is saved, and a later run with the same file continues the conversation.
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>

#include "cli/commands.h"
#include "cli/session_options.h"
#include "cli/util.h"

namespace kiv::cli {
namespace {

struct Options {
  SessionFlags flags;
  std::string prompt_file;
  std::string prompt;
  bool raw = false;  // no chat template: the text is fed as it is
  bool continue_ = false;  // no new text: go on generating where the session stopped
};

int RunRun(Options& o) {
  std::string text = o.prompt;
  if (!o.prompt_file.empty()) {
    std::ifstream in(o.prompt_file, std::ios::binary);
    if (!in) return Fail("cannot read the prompt file " + Quoted(o.prompt_file));
    std::stringstream ss;
    ss << in.rdbuf();
    text = ss.str() + (o.prompt.empty() ? "" : "\n\n" + o.prompt);
  }
  if (o.continue_ && !text.empty()) return UsageError("--continue takes no PROMPT or --prompt-file");
  if (o.continue_ && o.flags.session.archive.empty())
    return UsageError("--continue needs the --session to continue");
  if (text.empty() && !o.continue_) return UsageError("give a PROMPT, a --prompt-file, or both");
  InstallInterruptHandler();
  std::unique_ptr<Session> session = OpenSession(o.flags);
  if (!session) return kExitFailure;
  if (!o.flags.quiet) std::fprintf(stderr, "%s\n", session->Describe().c_str());
  const std::vector<int32_t> ids = o.continue_ ? std::vector<int32_t>{}
                                  : o.raw      ? session->tokenizer().Encode(text)
                                               : session->UserTurn(text);
  return RunTurn(*session, o.flags, ids);
}

}  // namespace

void SetupRun(CLI::App& app) {
  auto o = std::make_shared<Options>();
  CLI::App* sub = app.add_subcommand("run", "Ask a model one question over a durable context");
  sub->add_option("PROMPT", o->prompt, "The question (after the --prompt-file text, if any)");
  sub->add_option("--prompt-file", o->prompt_file, "A text file to read first (a long document)");
  sub->add_flag("--raw", o->raw, "Feed the text as it is, without the model's chat template");
  sub->add_flag("--continue", o->continue_,
                "Generate more of the last answer of --session, with no new text");
  AddSessionOptions(*sub, o->flags);
  sub->footer(R"(The answer streams to stdout; progress and a one-line summary go to stderr.
Ctrl-C stops the answer and commits what was read; a second Ctrl-C quits at once.

Examples:
  kiv run "What is the capital of France?"
  kiv run --session emma.kiv --prompt-file emma.txt "Who is Mr. Knightley?"
  kiv run --session emma.kiv "And who is Harriet Smith?"     # resumes: no prefill again)");
  OnRun(*sub, [o] { return RunRun(*o); });
}

}  // namespace kiv::cli
