// The environment a benchmark ran in, recorded beside its numbers so results from different
// machines, builds and filesystems are never compared by mistake.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "cli/json.h"

namespace kiv::cli {

struct BenchEnvironment {
  std::string git_commit;       // `git rev-parse HEAD` of the source tree, or "unknown"
  int git_dirty = -1;           // uncommitted changes in the source tree: 1, 0, or -1 unknown
  std::string compiler;         // "gcc " or "clang " and __VERSION__
  std::string build_type;       // CMAKE_BUILD_TYPE
  std::string cpu_model;        // /proc/cpuinfo "model name"
  unsigned cpus = 0;            // hardware threads
  std::string kernel;           // uname: sysname release version machine
  std::string filesystem;       // of the benchmark directory, by name ("unknown" if not listed)
  std::string filesystem_type;  // statfs f_type of the benchmark directory, in hex
  std::string command_line;     // /proc/self/cmdline, shell-quoted
  std::string time_utc;         // when the result was written, ISO 8601
  // The KIV_* environment variables set when it ran (the A/B switches such as KIV_SCAN_SAMPLE=0,
  // KIV_DTYPE, ...), sorted by name: a result says which paths measured it.
  std::vector<std::pair<std::string, std::string>> kiv_variables;
};

// `dir` is the directory the benchmark wrote to.
BenchEnvironment CollectEnvironment(const std::string& dir);
// Writes "environment": {...} into the object `w` is in.
void WriteEnvironmentJson(JsonWriter& w, const BenchEnvironment& env);

}  // namespace kiv::cli
