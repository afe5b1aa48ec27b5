#include "tests/storage/crash_harness.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <random>

#include "storage/reader.h"
#include "storage/verify.h"
#include "storage/writer.h"
#include "tests/storage/test_util.h"

namespace kiv::test {
namespace {

constexpr size_t kFailuresKept = 10;
constexpr uint64_t kFinishedAck = ~0ull;    // sent by a child that appended all it was to

// The checkpoint a commit covering `committed` tokens carries: a function of that count alone, so
// the parent knows what the last commit must hold without hearing from the child.
HotCheckpoint CheckpointFor(const ArchiveSpec& spec, uint64_t committed) {
  return MakeCheckpoint(spec, committed, static_cast<uint32_t>(committed % 4));
}

bool WriteAll(int fd, const void* data, size_t n) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (n > 0) {
    const ssize_t k = ::write(fd, p, n);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return false;
    p += k;
    n -= static_cast<size_t>(k);
  }
  return true;
}

// Exit codes of a child that stopped on its own (a killed child has none).
enum ChildExit : int {
  kChildOpenFailed = 2,
  kChildAppendFailed = 3,
  kChildCommitFailed = 4,
  kChildPipeFailed = 5,
};

// The child: create or resume the archive, then append segments of 1..64 tokens and commit every
// 1..3 segments. Every acknowledgement on `ack_fd` is a committed token count the parent may rely
// on; the first one (sent once the archive is open) says the archive exists durably.
[[noreturn]] void ChildMain(const std::string& path, bool create, int ack_fd, uint64_t seed,
                            uint32_t segments_max) {
  const ArchiveSpec spec = SmallSpec(1, 64);
  auto opened = create ? ArchiveWriter::Create(path, spec) : ArchiveWriter::Open(path);
  if (!opened.ok()) {
    std::fprintf(stderr, "crash child: %s\n", opened.status().ToString().c_str());
    ::_exit(kChildOpenFailed);
  }
  ArchiveWriter& w = **opened;
  uint64_t acked = w.committed_tokens();
  if (!WriteAll(ack_fd, &acked, sizeof acked)) ::_exit(kChildPipeFailed);
  std::mt19937_64 rng(seed);
  uint32_t until_commit = 1 + static_cast<uint32_t>(rng() % 3);
  for (uint32_t segment = 0; segment < segments_max; ++segment) {
    const Status appended = AppendTokens(w, 1 + static_cast<uint32_t>(rng() % 64));
    if (!appended.ok()) {
      std::fprintf(stderr, "crash child: append: %s\n", appended.ToString().c_str());
      ::_exit(kChildAppendFailed);
    }
    if (--until_commit > 0) continue;
    const Status committed = w.Commit(CheckpointFor(spec, w.token_count()));
    if (!committed.ok()) {
      std::fprintf(stderr, "crash child: commit: %s\n", committed.ToString().c_str());
      ::_exit(kChildCommitFailed);
    }
    acked = w.committed_tokens();
    if (!WriteAll(ack_fd, &acked, sizeof acked)) ::_exit(kChildPipeFailed);
    until_commit = 1 + static_cast<uint32_t>(rng() % 3);
  }
  WriteAll(ack_fd, &kFinishedAck, sizeof kFinishedAck);
  for (;;) ::pause();  // done: wait for the kill like everyone else
}

void SleepMicros(uint64_t us) {
  timespec left{static_cast<time_t>(us / 1000000), static_cast<long>(us % 1000000) * 1000};
  while (::nanosleep(&left, &left) != 0 && errno == EINTR) {
  }
}

// Waits (bounded) until the child's first acknowledgement, "the archive is open", arrives, and
// appends it to `got`. False when it never came (the child died first, or hangs).
bool WaitForOpen(int fd, std::vector<uint8_t>* got) {
  constexpr int kOpenWaitMs = 20000;
  while (got->size() < 8) {
    pollfd p{fd, POLLIN, 0};
    const int ready = ::poll(&p, 1, kOpenWaitMs);
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) return false;
    uint8_t buf[8];
    const ssize_t n = ::read(fd, buf, 8 - got->size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    got->insert(got->end(), buf, buf + n);
  }
  return true;
}

// Reads every acknowledgement the child sent after `got`. Returns how many whole ones there are;
// *last is the last of them. *finished tells whether the child said it had done all its work.
uint64_t ReadAcks(int fd, std::vector<uint8_t> got, uint64_t* last, bool* finished) {
  uint8_t buf[4096];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got.insert(got.end(), buf, buf + n);
  }
  uint64_t whole = got.size() / 8;
  if (whole > 0) std::memcpy(last, got.data() + (whole - 1) * 8, 8);
  *finished = whole > 0 && *last == kFinishedAck;
  if (*finished) {
    --whole;
    if (whole > 0) std::memcpy(last, got.data() + (whole - 1) * 8, 8);
  }
  return whole;
}

struct Trial {
  uint64_t acks = 0;    // acknowledgements received (the first one is "the archive is open")
  uint64_t acked = 0;   // the last acknowledged committed token count
  bool killed = false;  // false: the child stopped on its own
  bool finished = false;  // it appended all it was to before the kill
  int exit_code = 0;
};

// Forks a child writer, lets it run for `sleep_us` (counted from the fork, or from the moment
// its archive is open when `from_open`), kills it and collects its acks.
bool RunChild(const std::string& path, bool create, uint64_t seed, uint64_t sleep_us,
              bool from_open, uint32_t segments_max, Trial* t, std::string* error) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) {
    *error = "pipe failed";
    return false;
  }
  std::fflush(nullptr);  // nothing buffered may be written twice
  const pid_t pid = ::fork();
  if (pid < 0) {
    *error = "fork failed";
    ::close(fds[0]);
    ::close(fds[1]);
    return false;
  }
  if (pid == 0) {
    ::close(fds[0]);
    ChildMain(path, create, fds[1], seed, segments_max);
  }
  ::close(fds[1]);
  std::vector<uint8_t> got;
  if (!from_open || WaitForOpen(fds[0], &got)) SleepMicros(sleep_us);
  ::kill(pid, SIGKILL);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  t->killed = WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
  t->exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  t->acks = ReadAcks(fds[0], std::move(got), &t->acked, &t->finished);
  ::close(fds[0]);
  return true;
}

// What a reader must see after a kill: at least `must_hold` tokens, every one exactly as written,
// and the checkpoint of the last commit. Returns "" or what did not hold.
std::string CheckReader(const std::string& path, const Trial& t, uint64_t must_hold,
                        uint64_t* tokens, uint64_t* tail, CrashResult* result) {
  auto r = ArchiveReader::Open(path);
  if (!r.ok()) return "the archive does not open: " + r.status().ToString();
  const ArchiveReader& reader = **r;
  *tokens = reader.token_count();
  *tail = reader.scan().tail_bytes;
  if (*tokens < must_hold)
    return "lost committed tokens: the archive holds " + std::to_string(*tokens) +
           ", the child acknowledged " + std::to_string(must_hold);
  if (*tokens > t.acked && t.acks > 0) ++result->unacked_gain;
  if (*tail > 0) ++result->torn_tails;
  if (std::string bad = CheckContent(reader, *tokens); !bad.empty()) return bad;
  auto cp = reader.LoadCheckpoint();
  if (!cp.ok()) return "the last checkpoint does not load: " + cp.status().ToString();
  const bool right = *tokens > 0 ? *cp == CheckpointFor(reader.spec(), *tokens)
                                 : cp->token_count() == 0;
  if (!right)
    return "the last checkpoint is not the one committed with " + std::to_string(*tokens) +
           " tokens";
  return "";
}

// A writer's recovery drops exactly the tail the reader saw, and leaves an archive that verifies
// clean with the same tokens.
std::string CheckRecovery(const std::string& path, uint64_t tokens, uint64_t tail,
                          CrashResult* result) {
  {
    // The dead child's flock outlives waitpid by a few milliseconds (its io_uring is torn down
    // asynchronously); ArchiveWriter::Open waits for such a lock, bounded by lock_wait_ms.
    auto w = ArchiveWriter::Open(path);
    if (!w.ok()) return "recovery (ArchiveWriter::Open) failed: " + w.status().ToString();
    if ((*w)->dropped_tail_bytes() != tail)
      return "recovery dropped " + std::to_string((*w)->dropped_tail_bytes()) +
             " bytes, the reader saw a tail of " + std::to_string(tail);
    if ((*w)->committed_tokens() != tokens) return "recovery sees another token count";
    if (Status s = (*w)->Close(); !s.ok()) return "recovery Close failed: " + s.ToString();
  }
  auto v = VerifyArchive(path);
  if (!v.ok()) return "verify after recovery failed: " + v.status().ToString();
  if (!v->clean())
    return "verify after recovery is not clean: " +
           (v->damaged ? v->damage_what : "tail of " + std::to_string(v->tail_bytes) + " bytes");
  if (v->committed_tokens != tokens) return "verify counts another token count";
  result->tokens_max = std::max(result->tokens_max, tokens);
  result->bytes_max = std::max(result->bytes_max, v->file_bytes);
  return "";
}

// Everything that must hold after a kill. `durable` is the least the archive must hold (what
// earlier trials saw committed); it is raised to what this one sees.
std::string CheckAfterKill(const std::string& path, const Trial& t, uint64_t* durable,
                           CrashResult* result) {
  uint64_t tokens = 0, tail = 0;
  std::string bad =
      CheckReader(path, t, std::max(*durable, t.acked), &tokens, &tail, result);
  if (bad.empty()) bad = CheckRecovery(path, tokens, tail, result);
  if (bad.empty()) *durable = tokens;  // a killed process loses no page cache: it stays
  return bad;
}

}  // namespace

CrashResult RunCrashTrials(const CrashOptions& o) {
  CrashResult result;
  std::mt19937_64 rng(o.seed);
  const std::string path = o.dir + "/crash.kiv";
  uint64_t durable = 0;  // tokens the current archive must hold
  bool exists = false;   // whether the current archive has been made
  for (uint64_t trial = 0; trial < o.trials; ++trial) {
    if (o.fresh_every > 0 && trial % o.fresh_every == 0) {
      ::unlink(path.c_str());
      exists = false;
      durable = 0;
    }
    const uint64_t sleep_us = rng() % (uint64_t{o.kill_after_us_max} + 1);
    // Most kills are timed from the moment the archive is open, so they land among appends and
    // commits; every few are timed from the fork, so some land inside Create and recovery.
    const bool from_open = o.kill_from_fork_every == 0 || trial % o.kill_from_fork_every != 0;
    const uint64_t child_seed = o.seed * 1000003 + trial;
    Trial t;
    std::string failure;
    if (!RunChild(path, !exists, child_seed, sleep_us, from_open, o.segments_per_trial_max, &t,
                  &failure)) {
      failure = "could not start a child: " + failure;
    } else if (!t.killed) {
      failure = "the child stopped on its own with exit code " + std::to_string(t.exit_code);
    } else if (!exists && t.acks == 0) {
      // Killed inside Create: nothing was promised. The file may be absent, or a header with no
      // commit; either way the next trial creates the archive afresh.
      ::unlink(path.c_str());
    } else {
      exists = true;
      failure = CheckAfterKill(path, t, &durable, &result);
      result.acked_commits += t.acks > 0 ? t.acks - 1 : 0;
      if (t.finished) ++result.children_finished;
    }
    ++result.trials;
    if (!failure.empty()) {
      ++result.losses;
      if (result.failures.size() < kFailuresKept)
        result.failures.push_back("trial " + std::to_string(trial) + ": " + failure);
      // Start over so one broken archive does not fail every later trial.
      ::unlink(path.c_str());
      exists = false;
      durable = 0;
    }
    if (o.verbose)
      std::fprintf(stderr, "trial %llu: slept %llu us, %llu acks, last %llu, durable %llu%s%s\n",
                   static_cast<unsigned long long>(trial),
                   static_cast<unsigned long long>(sleep_us),
                   static_cast<unsigned long long>(t.acks),
                   static_cast<unsigned long long>(t.acked),
                   static_cast<unsigned long long>(durable), failure.empty() ? "" : ": ",
                   failure.c_str());
  }
  ::unlink(path.c_str());
  return result;
}

}  // namespace kiv::test
