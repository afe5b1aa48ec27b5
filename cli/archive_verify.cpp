// kiv archive verify FILE [--json] [--quiet]: checks every checksum in an archive (header,
// commits, every segment's records, signatures, ids and positions) and names the first damage.
//
// Exit 0 only for a clean archive. A damaged one, one with bytes after its last commit, and one
// that cannot be read at all exit 1 with one sentence on stderr that says which.
#include <chrono>
#include <cstdio>
#include <iostream>
#include <memory>
#include <string>

#include "cli/commands.h"
#include "cli/json.h"
#include "cli/progress.h"
#include "cli/util.h"
#include "storage/verify.h"

namespace kiv::cli {

namespace {

struct Options {
  std::string path;
  bool json = false;
  bool quiet = false;
};

double Rate(uint64_t bytes, double seconds) {
  return seconds > 0 ? static_cast<double>(bytes) / seconds : 0.0;
}

std::string Verdict(const VerifyReport& r) {
  if (r.damaged) return "damaged";
  if (r.tail_bytes > 0) return "uncommitted_tail";
  return "clean";
}

void PrintHuman(const Options& o, const VerifyReport& r, double seconds) {
  std::cout << (r.clean() ? "ok" : "checked") << ": " << o.path << '\n'
            << "  " << Count(r.segments, "segment") << " and " << Count(r.commits, "commit")
            << " holding " << Count(r.committed_tokens, "token") << '\n'
            << "  " << Grouped(r.checksums_checked) << " checksums over "
            << Grouped(r.bytes_checked) << " bytes (" << HumanBytes(r.bytes_checked) << ") of "
            << Grouped(r.file_bytes) << " in the file\n";
  char timing[64];
  std::snprintf(timing, sizeof(timing), "  %.3f s, ", seconds);
  std::cout << timing << HumanRate(Rate(r.bytes_checked, seconds)) << '\n' << std::flush;
}

void PrintJson(const Options& o, const VerifyReport& r, double seconds) {
  JsonWriter w(std::cout);
  w.BeginObject().Field("path", o.path).Field("verdict", Verdict(r)).Field("clean", r.clean());
  w.Field("file_bytes", r.file_bytes).Field("committed_tokens", r.committed_tokens);
  w.Field("segments", r.segments).Field("commits", r.commits);
  w.Field("checksums_checked", r.checksums_checked).Field("bytes_checked", r.bytes_checked);
  w.Field("seconds", seconds).Field("bytes_per_second", Rate(r.bytes_checked, seconds));
  w.Field("damaged", r.damaged);
  w.Key("damage_offset");
  if (r.damaged) {
    w.Uint(r.damage_offset);
  } else {
    w.Null();
  }
  w.Field("damage_what", r.damage_what);
  w.Field("tail_bytes", r.tail_bytes).Field("tail_reason", r.tail_reason);
  w.EndObject().Finish();
}

// The one sentence for a report that is not clean.
std::string Problem(const Options& o, const VerifyReport& r) {
  if (r.damaged) {
    return Quoted(o.path) + " is damaged at offset " + std::to_string(r.damage_offset) + ": " +
           r.damage_what;
  }
  const uint64_t last_commit_end = r.file_bytes - r.tail_bytes;
  std::string s = Quoted(o.path) + ": " + Grouped(r.tail_bytes) +
                  " bytes after the last commit at offset " + std::to_string(last_commit_end) +
                  " are not committed (an unfinished write, or a damaged final commit";
  if (!r.tail_reason.empty()) s += ": " + r.tail_reason;
  return s + "); committed data is intact; opening the archive for writing drops them";
}

int RunArchiveVerify(const Options& o) {
  // The total is only known once the file is mapped, so the bar learns it from the first call.
  std::unique_ptr<ProgressBar> sized;
  const auto progress = [&](uint64_t done, uint64_t total) {
    if (!sized)
      sized = std::make_unique<ProgressBar>("verify", total, ProgressBar::Unit::kBytes,
                                            !o.quiet && !o.json);
    sized->Update(done);
  };
  const auto start = std::chrono::steady_clock::now();
  Result<VerifyReport> verified = VerifyArchive(o.path, progress);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (sized) sized->Finish();
  if (!verified.ok()) {
    return Fail("cannot verify " + Quoted(o.path) + ": " + verified.status().ToString());
  }
  const VerifyReport& r = verified.value();
  if (o.json) {
    PrintJson(o, r, seconds);
  } else if (!o.quiet) {
    PrintHuman(o, r, seconds);
  }
  return r.clean() ? kExitOk : Fail(Problem(o, r));
}

}  // namespace

void SetupArchiveVerify(CLI::App& archive) {
  auto o = std::make_shared<Options>();
  CLI::App* sub = archive.add_subcommand(
      "verify", "Check every checksum in an archive and name the first damage (offset and what)");
  sub->add_option("FILE", o->path, "The .kiv archive")->required();
  sub->add_flag("--json", o->json, "Print the report as one JSON object");
  sub->add_flag("-q,--quiet", o->quiet, "Print nothing when the archive is clean");
  sub->footer(R"(Exit 0: every checksum is valid and nothing follows the last commit.
Exit 1: damage (its offset is printed), bytes after the last commit (an unfinished write), or an
        archive that cannot be read (missing, not an archive, written by a newer kiv).

Examples:
  kiv archive verify chat.kiv
  kiv archive verify chat.kiv --quiet || echo "chat.kiv needs attention")");
  OnRun(*sub, [o] { return RunArchiveVerify(*o); });
}

}  // namespace kiv::cli
