// kiv_crash_soak: the crash test at length, for a soak run outside CI. Writes a JSON result.
//   kiv_crash_soak [--trials N] [--seed S] [--kill-after-us-max US] [--dir DIR] [--out FILE]
//                  [--verbose]
// Exit code 0 when no trial lost committed data, 1 when one did, 2 on a usage error.
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "tests/storage/crash_harness.h"
#include "tests/storage/test_util.h"

namespace {

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += c;
    }
  }
  return out + "\"";
}

int Usage(const char* why) {
  std::fprintf(stderr,
               "kiv_crash_soak: %s\nusage: kiv_crash_soak [--trials N] [--seed S] "
               "[--kill-after-us-max US] [--dir DIR] [--out FILE] [--verbose]\n",
               why);
  return 2;
}

bool ParseU64(const char* s, uint64_t* out) {
  char* end = nullptr;
  *out = std::strtoull(s, &end, 10);
  return end != s && *end == '\0';
}

}  // namespace

int main(int argc, char** argv) {
  kiv::test::CrashOptions o;
  o.trials = 2000;
  std::string out_path, dir;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const bool has_value = i + 1 < argc;
    uint64_t v = 0;
    if (arg == "--verbose") {
      o.verbose = true;
    } else if (arg == "--trials" && has_value && ParseU64(argv[i + 1], &v)) {
      o.trials = v;
      ++i;
    } else if (arg == "--seed" && has_value && ParseU64(argv[i + 1], &v)) {
      o.seed = v;
      ++i;
    } else if (arg == "--kill-after-us-max" && has_value && ParseU64(argv[i + 1], &v) &&
               v <= 10'000'000) {
      o.kill_after_us_max = static_cast<uint32_t>(v);
      ++i;
    } else if (arg == "--dir" && has_value) {
      dir = argv[++i];
    } else if (arg == "--out" && has_value) {
      out_path = argv[++i];
    } else {
      return Usage(("bad argument '" + arg + "'").c_str());
    }
  }

  kiv::test::TempDir temp;  // used unless --dir names another place (a disk to test, say)
  o.dir = dir.empty() ? temp.path() : dir;
  const auto start = std::chrono::steady_clock::now();
  const kiv::test::CrashResult r = kiv::test::RunCrashTrials(o);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  std::string failures = "[";
  for (size_t i = 0; i < r.failures.size(); ++i)
    failures += (i ? ", " : "") + JsonString(r.failures[i]);
  failures += "]";
  char body[1024];
  std::snprintf(body, sizeof body,
                "{\"trials\": %llu, \"losses\": %llu, \"seconds\": %.3f, \"seed\": %llu, "
                "\"kill_after_us_max\": %u, \"acked_commits\": %llu, \"torn_tails\": %llu, "
                "\"unacked_gain\": %llu, \"children_finished\": %llu, \"tokens_max\": %llu, "
                "\"bytes_max\": %llu, \"dir\": ",
                static_cast<unsigned long long>(r.trials),
                static_cast<unsigned long long>(r.losses), seconds,
                static_cast<unsigned long long>(o.seed), o.kill_after_us_max,
                static_cast<unsigned long long>(r.acked_commits),
                static_cast<unsigned long long>(r.torn_tails),
                static_cast<unsigned long long>(r.unacked_gain),
                static_cast<unsigned long long>(r.children_finished),
                static_cast<unsigned long long>(r.tokens_max),
                static_cast<unsigned long long>(r.bytes_max));
  const std::string json =
      std::string(body) + JsonString(o.dir) + ", \"failures\": " + failures + "}\n";
  std::printf("crash: %llu trials, %llu losses\n", static_cast<unsigned long long>(r.trials),
              static_cast<unsigned long long>(r.losses));
  if (!out_path.empty()) {
    FILE* f = std::fopen(out_path.c_str(), "w");
    if (f == nullptr || std::fputs(json.c_str(), f) < 0 || std::fclose(f) != 0) {
      std::fprintf(stderr, "kiv_crash_soak: cannot write '%s': %s\n", out_path.c_str(),
                   std::strerror(errno));
      return 1;
    }
  } else {
    std::fputs(json.c_str(), stdout);
  }
  return r.losses == 0 ? 0 : 1;
}
