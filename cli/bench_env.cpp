#include "cli/bench_env.h"

#include <sys/statfs.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <sstream>
#include <string_view>
#include <thread>

#ifndef KIV_BUILD_TYPE
#define KIV_BUILD_TYPE "unknown"
#endif
#ifndef KIV_SOURCE_DIR
#define KIV_SOURCE_DIR "."
#endif

namespace kiv::cli {

namespace {

// The command's stdout with the trailing newline removed, or "" when it fails.
std::string CommandOutput(const std::string& command) {
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return "";
  std::string out;
  char buf[256];
  while (size_t n = std::fread(buf, 1, sizeof(buf), pipe)) out.append(buf, n);
  if (pclose(pipe) != 0) return "";
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  return out;
}

std::string ShellQuote(const std::string& s) {
  if (!s.empty() && s.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                        "0123456789-_./=:,+@%") == std::string::npos) {
    return s;
  }
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

std::string CpuModel() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      const size_t colon = line.find(':');
      if (colon != std::string::npos) return line.substr(line.find_first_not_of(" \t", colon + 1));
    }
  }
  return "unknown";
}

std::string Kernel() {
  struct utsname u{};
  if (uname(&u) != 0) return "unknown";
  return std::string(u.sysname) + " " + u.release + " " + u.version + " " + u.machine;
}

const char* FilesystemName(unsigned long type) {
  switch (type) {
    case 0xEF53:
      return "ext4";  // also ext2 and ext3, which share the magic
    case 0x58465342:
      return "xfs";
    case 0x9123683E:
      return "btrfs";
    case 0x01021994:
      return "tmpfs";
    case 0x794C7630:
      return "overlayfs";
    case 0x2FC12FC1:
      return "zfs";
    case 0x6969:
      return "nfs";
    case 0xF2F52010:
      return "f2fs";
    case 0x65735546:
      return "fuse";
    default:
      return "unknown";
  }
}

void Filesystem(const std::string& dir, BenchEnvironment& env) {
  env.filesystem = env.filesystem_type = "unknown";
  struct statfs st{};
  if (statfs(dir.c_str(), &st) != 0) return;
  const auto type = static_cast<unsigned long>(st.f_type);
  char hex[32];
  std::snprintf(hex, sizeof(hex), "0x%lx", type);
  env.filesystem = FilesystemName(type);
  env.filesystem_type = hex;
}

std::string Compiler() {
#if defined(__clang__)
  return std::string("clang ") + __VERSION__;  // __VERSION__ already names clang; kept whole
#elif defined(__GNUC__)
  return std::string("gcc ") + __VERSION__;
#else
  return __VERSION__;
#endif
}

std::string CommandLine() {
  std::ifstream in("/proc/self/cmdline", std::ios::binary);
  std::string arg, out;
  while (std::getline(in, arg, '\0')) out += (out.empty() ? "" : " ") + ShellQuote(arg);
  return out;
}

std::vector<std::pair<std::string, std::string>> KivVariables() {
  std::vector<std::pair<std::string, std::string>> out;
  for (char** e = environ; e && *e; ++e) {
    const std::string_view entry(*e);
    const size_t eq = entry.find('=');
    if (entry.starts_with("KIV_") && eq != std::string_view::npos)
      out.emplace_back(std::string(entry.substr(0, eq)), std::string(entry.substr(eq + 1)));
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::string TimeUtc() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

}  // namespace

BenchEnvironment CollectEnvironment(const std::string& dir) {
  BenchEnvironment env;
  const std::string git = "git -C " + ShellQuote(KIV_SOURCE_DIR) + " ";
  env.git_commit = CommandOutput(git + "rev-parse HEAD 2>/dev/null");
  if (env.git_commit.empty()) {
    env.git_commit = "unknown";
  } else {
    // Exit status tells a clean tree (0) from a dirty one (1); anything else leaves it unknown.
    const int rc = std::system((git + "diff --quiet HEAD -- >/dev/null 2>&1").c_str());
    if (rc != -1 && WIFEXITED(rc) && WEXITSTATUS(rc) <= 1) env.git_dirty = WEXITSTATUS(rc);
  }
  env.compiler = Compiler();
  env.build_type = KIV_BUILD_TYPE;
  env.cpu_model = CpuModel();
  env.cpus = std::thread::hardware_concurrency();
  env.kernel = Kernel();
  Filesystem(dir, env);
  env.command_line = CommandLine();
  env.kiv_variables = KivVariables();
  env.time_utc = TimeUtc();
  return env;
}

void WriteEnvironmentJson(JsonWriter& w, const BenchEnvironment& env) {
  w.Key("environment").BeginObject().Field("git_commit", env.git_commit);
  w.Key("git_dirty");
  if (env.git_dirty < 0) {
    w.Null();
  } else {
    w.Bool(env.git_dirty == 1);
  }
  w.Field("compiler", env.compiler);
  w.Field("build_type", env.build_type).Field("cpu_model", env.cpu_model);
  w.Field("cpus", uint32_t{env.cpus}).Field("kernel", env.kernel);
  w.Field("filesystem", env.filesystem).Field("filesystem_type", env.filesystem_type);
  w.Field("command_line", env.command_line);
  w.Key("kiv_variables").BeginObject();
  for (const auto& [name, value] : env.kiv_variables) w.Field(name, value);
  w.EndObject();
  w.Field("time_utc", env.time_utc).EndObject();
}

}  // namespace kiv::cli
