// Runs the built `kiv` binary as a user would: the helpers the CLI tests share.
#pragma once

#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

namespace kiv::test {

namespace fs = std::filesystem;

struct Outcome {
  bool exited = false;  // false: killed by a signal
  int code = -1;        // exit status when exited, else the signal
  std::string out;
  std::string err;
  std::string all() const { return out + err; }
  size_t err_lines() const {
    size_t n = 0;
    for (char c : err) n += c == '\n';
    return n + (!err.empty() && err.back() != '\n');
  }
};

inline std::string ReadFile(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

inline void WriteFile(const fs::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out << bytes;
}

// A fresh directory under the system temp dir, removed with everything in it.
class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    path_ = fs::temp_directory_path() /
            ("kiv-cli-test-" + std::to_string(getpid()) + "-" + std::to_string(counter++));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  fs::path operator/(const std::string& name) const { return path_ / name; }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// Runs kiv with `args`, stdout and stderr captured to files. `fsize_limit_bytes` > 0 sets
// RLIMIT_FSIZE in the child only.
inline Outcome RunKiv(const std::vector<std::string>& args, rlim_t fsize_limit_bytes = 0) {
  TempDir io;
  const std::string out_path = (io / "stdout").string();
  const std::string err_path = (io / "stderr").string();
  std::vector<std::string> argv_s = {KIV_BINARY};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);

  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    const int out = open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int err = open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (out < 0 || err < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0) _exit(126);
    if (fsize_limit_bytes > 0) {
      const rlimit lim{fsize_limit_bytes, fsize_limit_bytes};
      if (setrlimit(RLIMIT_FSIZE, &lim) != 0) _exit(126);
    }
    execv(argv[0], argv.data());
    _exit(127);
  }
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  Outcome o;
  o.exited = WIFEXITED(status);
  o.code = o.exited ? WEXITSTATUS(status) : WTERMSIG(status);
  o.out = ReadFile(out_path);
  o.err = ReadFile(err_path);
  return o;
}

}  // namespace kiv::test
