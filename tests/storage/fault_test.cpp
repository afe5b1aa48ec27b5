// Injected I/O faults (through IoFaults) and a real full disk (RLIMIT_FSIZE in a child): retried
// faults leave a perfect archive; fatal ones fail the writer with a clear error, and the archive
// stays as it was at its last commit.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <string>
#include <vector>

#include "storage/reader.h"
#include "storage/verify.h"
#include "storage/writer.h"
#include "tests/storage/test_check.h"
#include "tests/storage/test_util.h"

namespace kiv {
namespace {

using Code = Status::Code;

// Retryable faults on a fixed pattern: short writes, -EAGAIN and -EINTR, never twice in a row on
// the same call number so every write makes progress. The kernel has already written the whole
// range when the hook runs, so the hook scribbles over the part it claims was not written: only a
// file that really writes it again ends up with the right bytes.
class RetryableFaults : public IoFaults {
 public:
  explicit RetryableFaults(std::string path) : path_(std::move(path)) {}
  ~RetryableFaults() override {
    if (fd_ >= 0) ::close(fd_);
  }
  int OnWrite(uint64_t offset, uint32_t length, int result) override {
    ++writes;
    if (result <= 0 || static_cast<uint32_t>(result) != length) return result;
    switch (writes % 4) {
      case 0:
        if (length > 1) {
          ++short_writes;
          const uint32_t done = length / 2;
          Scribble(offset + done, length - done);
          return static_cast<int>(done);
        }
        return result;
      case 1:
        ++eagains;
        Scribble(offset, length);
        return -EAGAIN;
      case 2:
        ++eintrs;
        Scribble(offset, length);
        return -EINTR;
      default:
        return result;
    }
  }
  int OnSync(int result) override {
    ++syncs;
    if (syncs % 3 == 1 && result == 0) {
      ++sync_eintrs;
      return -EINTR;  // an interrupted fsync is retried, not fatal
    }
    return result;
  }
  uint64_t writes = 0, short_writes = 0, eagains = 0, eintrs = 0, syncs = 0, sync_eintrs = 0;
  bool scribble_failed = false;

 private:
  void Scribble(uint64_t offset, uint32_t length) {
    if (fd_ < 0) fd_ = ::open(path_.c_str(), O_WRONLY | O_CLOEXEC);
    const std::vector<uint8_t> junk(length, 0xA5);
    if (fd_ < 0 || ::pwrite(fd_, junk.data(), length, static_cast<off_t>(offset)) !=
                       static_cast<ssize_t>(length))
      scribble_failed = true;
  }
  std::string path_;
  int fd_ = -1;
};

// One fatal fault, armed on demand: the `after`-th write (0-based) or sync from arming on.
class FatalFault : public IoFaults {
 public:
  enum class On { kWrite, kSync };
  FatalFault(On on, int error) : on_(on), error_(error) {}
  void Arm(uint64_t after) {
    armed_ = true;
    countdown_ = after;
  }
  int OnWrite(uint64_t offset, uint32_t, int result) override {
    if (on_ != On::kWrite || !Fire()) return result;
    fired_offset = offset;
    return -error_;
  }
  int OnSync(int result) override { return on_ == On::kSync && Fire() ? -error_ : result; }
  bool fired = false;
  uint64_t fired_offset = 0;

 private:
  bool Fire() {
    if (!armed_ || fired) return false;
    if (countdown_-- > 0) return false;
    fired = true;
    return true;
  }
  On on_;
  int error_;
  bool armed_ = false;
  uint64_t countdown_ = 0;
};

std::unique_ptr<ArchiveWriter> MustCreate(const std::string& path, const ArchiveSpec& spec,
                                          IoFaults* faults) {
  WriterOptions options;
  options.io.faults = faults;
  auto w = ArchiveWriter::Create(path, spec, options);
  REQUIRE_MESSAGE(w.ok(), w.status().ToString());
  return std::move(w.value());
}

// The archive at `path` is exactly at a commit of `tokens` tokens carrying `checkpoint`, cut back
// to it (no tail), and takes a new writer that appends and commits.
void CheckAtCommit(const std::string& path, uint64_t tokens, const HotCheckpoint& checkpoint) {
  {
    auto r = ArchiveReader::Open(path);
    REQUIRE_MESSAGE(r.ok(), r.status().ToString());
    CHECK((*r)->token_count() == tokens);
    const std::string bad = test::CheckContent(**r, tokens);
    CHECK_MESSAGE(bad.empty(), bad);
    auto cp = (*r)->LoadCheckpoint();
    REQUIRE_MESSAGE(cp.ok(), cp.status().ToString());
    CHECK(*cp == checkpoint);
    // The failed writer cut the file back to its last commit.
    CHECK((*r)->scan().tail_bytes == 0);
  }
  auto v = VerifyArchive(path);
  REQUIRE_MESSAGE(v.ok(), v.status().ToString());
  CHECK(v->clean());
  {
    auto w = ArchiveWriter::Open(path);
    REQUIRE_MESSAGE(w.ok(), w.status().ToString());
    CHECK((*w)->dropped_tail_bytes() == 0);
    REQUIRE_OK(test::AppendTokens(**w, 3));
    REQUIRE_OK((*w)->Commit(test::MakeCheckpoint((*w)->spec(), 77, 1)));
    REQUIRE_OK((*w)->Close());
  }
  auto r = ArchiveReader::Open(path);
  REQUIRE(r.ok());
  const std::string bad = test::CheckContent(**r, tokens + 3);
  CHECK_MESSAGE(bad.empty(), bad);
}

TEST_CASE("short writes, EAGAIN and EINTR are retried and leave a perfect archive") {
  test::TempDir dir;
  const std::string path = dir.File("retry.kiv");
  const ArchiveSpec spec = test::SmallSpec(2, 128);
  RetryableFaults faults(path);
  WriterOptions options;
  options.io.faults = &faults;
  options.io.write_bytes_max = 4096;  // several ops per segment, so faults hit mid-segment too
  options.io.queue_depth = 4;
  HotCheckpoint last;
  {
    auto w = ArchiveWriter::Create(path, spec, options);
    REQUIRE_MESSAGE(w.ok(), w.status().ToString());
    for (uint32_t i = 0; i < 12; ++i) {
      REQUIRE_OK(test::AppendTokens(**w, 1 + 7 * i));
      if (i % 3 == 2) {
        last = test::MakeCheckpoint(spec, i, i % 5);
        REQUIRE_OK((*w)->Commit(last));
      }
    }
    REQUIRE_OK((*w)->Close());
  }
  MESSAGE("writes ", faults.writes, ": ", faults.short_writes, " short, ", faults.eagains,
          " EAGAIN, ", faults.eintrs, " EINTR; syncs ", faults.syncs, ": ", faults.sync_eintrs,
          " EINTR");
  // The hook really was in the path, with every kind of fault.
  CHECK(faults.short_writes > 0);
  CHECK(faults.eagains > 0);
  CHECK(faults.eintrs > 0);
  CHECK(faults.sync_eintrs > 0);
  REQUIRE_FALSE(faults.scribble_failed);
  uint64_t tokens = 0;
  for (uint32_t i = 0; i < 12; ++i) tokens += 1 + 7 * i;
  CheckAtCommit(path, tokens, last);
}

// Commits 10 tokens, then arms `fault` and appends and commits again: the `after`-th write or
// sync from there fails. Checks what the writer answers and what the file holds afterwards.
void RunFatal(FatalFault::On on, int error, Code want_code, uint64_t after) {
  CAPTURE(after);
  test::TempDir dir;
  const std::string path = dir.File("fatal.kiv");
  const ArchiveSpec spec = test::SmallSpec(1, 64);
  FatalFault fault(on, error);
  auto w = MustCreate(path, spec, &fault);
  REQUIRE_OK(test::AppendTokens(*w, 4));
  REQUIRE_OK(test::AppendTokens(*w, 6));
  // The last commit that succeeded: the archive must end up exactly there.
  HotCheckpoint last_cp = test::MakeCheckpoint(spec, 10, 2);
  REQUIRE_OK(w->Commit(last_cp));
  uint64_t last_tokens = 10, last_bytes = w->file_bytes();

  fault.Arm(after);
  Status failed;
  for (uint32_t round = 0; round < 3 && failed.ok(); ++round) {
    failed = test::AppendTokens(*w, 5);
    if (!failed.ok()) break;
    const HotCheckpoint cp = test::MakeCheckpoint(spec, w->token_count(), 1);
    failed = w->Commit(cp);
    if (failed.ok()) {
      last_cp = cp;
      last_tokens = w->committed_tokens();
      last_bytes = w->file_bytes();
    }
  }
  REQUIRE(fault.fired);
  REQUIRE_FALSE(failed.ok());
  INFO(failed.ToString());
  CHECK(failed.code() == want_code);
  CHECK_FALSE(failed.message().empty());
  if (on == FatalFault::On::kWrite)
    CHECK(failed.message().find(std::to_string(fault.fired_offset)) != std::string::npos);
  // The writer is failed for good: every later call answers the first error.
  CHECK(w->failure().code() == want_code);
  CHECK(test::AppendTokens(*w, 1).code() == want_code);
  CHECK(w->Commit(test::MakeCheckpoint(spec, 5, 1)).code() == want_code);
  CHECK(w->committed_tokens() == last_tokens);
  w->Close();  // its answer is the failure again; the file is what matters
  w.reset();
  CHECK(test::FileSize(path) == last_bytes);
  CheckAtCommit(path, last_tokens, last_cp);
}

TEST_CASE("EIO on a write fails the writer; the archive stays at its last commit") {
  // One round is a segment write, an fsync, a commit write and an fsync: `after` 0..5 puts the
  // failure on the first segment, the first commit, and the second round's writes.
  for (uint64_t after = 0; after < 6; ++after) RunFatal(FatalFault::On::kWrite, EIO,
                                                        Code::kIOError, after);
}

TEST_CASE("EIO on fsync is fatal; the archive stays at its previous commit") {
  // after 0: the fsync before the commit record; 1: the one after it (the record is written
  // but not durable, so it must be cut away); 2, 3: the next round's.
  for (uint64_t after = 0; after < 4; ++after) RunFatal(FatalFault::On::kSync, EIO,
                                                        Code::kIOError, after);
}

TEST_CASE("ENOSPC and EFBIG on a write are reported as no space") {
  for (uint64_t after = 0; after < 3; ++after) {
    RunFatal(FatalFault::On::kWrite, ENOSPC, Code::kNoSpace, after);
    RunFatal(FatalFault::On::kWrite, EFBIG, Code::kNoSpace, after);
  }
}

TEST_CASE("a fault during Create leaves no half-made archive") {
  test::TempDir dir;
  for (FatalFault::On on : {FatalFault::On::kWrite, FatalFault::On::kSync}) {
    const std::string path = dir.File(on == FatalFault::On::kWrite ? "w.kiv" : "s.kiv");
    FatalFault fault(on, EIO);
    fault.Arm(0);
    WriterOptions options;
    options.io.faults = &fault;
    auto w = ArchiveWriter::Create(path, test::SmallSpec(), options);
    REQUIRE_FALSE(w.ok());
    CHECK(w.status().code() == Code::kIOError);
    // Either nothing is there, or what is there does not pass for an archive.
    if (::access(path.c_str(), F_OK) == 0) CHECK_FALSE(ArchiveReader::Open(path).ok());
  }
}

// A real full disk: the file-size limit, set in a forked child so it cannot leak into the test.
// Exit codes of the child.
constexpr int kChildSetupFailed = 90;
constexpr int kChildNeverFailed = 91;
constexpr int kChildNotSticky = 92;
constexpr int kChildFailedWith = 100;  // + the Status code of the first failure

[[noreturn]] void FullDiskChild(const std::string& path, int ack_fd) {
  signal(SIGXFSZ, SIG_IGN);  // get EFBIG instead of being killed
  const uint64_t size = test::FileSize(path);
  rlimit limit{};
  limit.rlim_cur = limit.rlim_max = size + 20000;  // room for a few segments and commits
  if (setrlimit(RLIMIT_FSIZE, &limit) != 0) ::_exit(kChildSetupFailed);
  auto w = ArchiveWriter::Open(path);
  if (!w.ok()) ::_exit(kChildSetupFailed);
  for (uint32_t i = 0; i < 1000; ++i) {
    Status s = test::AppendTokens(**w, 1 + i % 13);
    if (s.ok()) s = (*w)->Commit(test::MakeCheckpoint((*w)->spec(), (*w)->token_count(), 1));
    if (!s.ok()) {
      // Sticky: a second call gives the same answer.
      if (test::AppendTokens(**w, 1).code() != s.code()) ::_exit(kChildNotSticky);
      (*w)->Close();
      ::_exit(kChildFailedWith + static_cast<int>(s.code()));
    }
    const uint64_t acked = (*w)->committed_tokens();
    if (::write(ack_fd, &acked, sizeof acked) != sizeof acked) ::_exit(kChildSetupFailed);
  }
  ::_exit(kChildNeverFailed);
}

TEST_CASE("a real full disk (RLIMIT_FSIZE): no space, and the archive keeps its last commit") {
  test::TempDir dir;
  const std::string path = dir.File("full.kiv");
  const ArchiveSpec spec = test::SmallSpec(1, 64);
  {
    auto w = MustCreate(path, spec, nullptr);
    REQUIRE_OK(test::AppendTokens(*w, 8));
    REQUIRE_OK(w->Commit(test::MakeCheckpoint(spec, 8, 1)));
    REQUIRE_OK(w->Close());
  }
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::close(fds[0]);
    FullDiskChild(path, fds[1]);
  }
  ::close(fds[1]);
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  uint64_t acked = 8, value = 0, acks = 0;
  while (::read(fds[0], &value, sizeof value) == sizeof value) {
    acked = value;
    ++acks;
  }
  ::close(fds[0]);
  REQUIRE(WIFEXITED(status));
  const int code = WEXITSTATUS(status);
  MESSAGE("full disk: the child committed ", acks, " times (", acked, " tokens), then exit ",
          code);
  REQUIRE(code >= kChildFailedWith);
  CHECK(static_cast<Code>(code - kChildFailedWith) == Code::kNoSpace);
  CHECK(acks > 0);  // the limit left room for some commits first

  // The archive is at the last commit the child acknowledged: cut back, nothing after it.
  uint64_t tokens = 0;
  {
    auto r = ArchiveReader::Open(path);
    REQUIRE_MESSAGE(r.ok(), r.status().ToString());
    tokens = (*r)->token_count();
    CHECK(tokens == acked);
    const std::string bad = test::CheckContent(**r, tokens);
    CHECK_MESSAGE(bad.empty(), bad);
    auto cp = (*r)->LoadCheckpoint();
    REQUIRE(cp.ok());
    CHECK(*cp == test::MakeCheckpoint(spec, tokens, 1));
    CHECK((*r)->scan().tail_bytes == 0);
  }
  {
    auto w = ArchiveWriter::Open(path);
    REQUIRE_MESSAGE(w.ok(), w.status().ToString());
    CHECK((*w)->dropped_tail_bytes() == 0);
    REQUIRE_OK((*w)->Close());
  }
  auto v = VerifyArchive(path);
  REQUIRE_MESSAGE(v.ok(), v.status().ToString());
  CHECK(v->clean());
  CHECK(v->committed_tokens == tokens);
}

}  // namespace
}  // namespace kiv
