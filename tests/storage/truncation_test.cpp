// Truncation at every byte offset of a small archive: it opens to the last commit that lies
// wholly inside the cut, or fails with a clear error; never a crash, never a later commit.
#include <doctest/doctest.h>
#include <unistd.h>

#include <cstdio>
#include <set>
#include <string>
#include <vector>

#include "storage/reader.h"
#include "storage/scan.h"
#include "storage/verify.h"
#include "storage/writer.h"
#include "tests/storage/test_util.h"

namespace kiv {
namespace {

// What the writer said after each commit: where the commit ends and how many tokens it covers.
// Taken from the writer, not from a scan, so the scan is checked against something independent.
struct CommitPoint {
  uint64_t end_offset;
  uint64_t tokens;
  HotCheckpoint checkpoint;
};

struct Built {
  std::vector<uint8_t> bytes;
  std::vector<CommitPoint> commits;  // the creating commit first
  std::set<uint64_t> boundaries;     // block starts and the file end
};

Built BuildSmallArchive(const std::string& path) {
  const ArchiveSpec spec = test::SmallSpec(1, 64);
  Built b;
  auto w = ArchiveWriter::Create(path, spec);
  REQUIRE_MESSAGE(w.ok(), w.status().ToString());
  ArchiveWriter& writer = **w;
  b.commits.push_back({writer.file_bytes(), 0, {}});
  // Segments of 3 | 2, 1 | 4 tokens with a commit after each group, checkpoints of 0..2 tokens.
  const std::vector<std::vector<uint32_t>> groups = {{3}, {2, 1}, {4}};
  for (size_t g = 0; g < groups.size(); ++g) {
    for (uint32_t n : groups[g]) {
      const Status s = test::AppendTokens(writer, n);
      REQUIRE_MESSAGE(s.ok(), s.ToString());
    }
    HotCheckpoint cp = test::MakeCheckpoint(spec, g + 1, static_cast<uint32_t>(g));
    const Status s = writer.Commit(cp);
    REQUIRE_MESSAGE(s.ok(), s.ToString());
    b.commits.push_back({writer.file_bytes(), writer.committed_tokens(), cp});
  }
  REQUIRE(writer.Close().ok());
  b.bytes = test::ReadFileBytes(path);
  REQUIRE(b.bytes.size() == b.commits.back().end_offset);

  auto scan = ScanArchive(b.bytes.data(), b.bytes.size());
  REQUIRE_MESSAGE(scan.ok(), scan.status().ToString());
  b.boundaries.insert(0);
  b.boundaries.insert(512);
  b.boundaries.insert(scan->header_bytes);
  for (const SegmentInfo& s : scan->segments) {
    b.boundaries.insert(s.offset);
    b.boundaries.insert(s.body_offset() + s.layout.trailer_offset);
  }
  for (const CommitInfo& c : scan->commits) {
    b.boundaries.insert(c.offset);
    b.boundaries.insert(c.checkpoint_offset());
    b.boundaries.insert(c.end_offset);
  }
  // The scan agrees with the writer about where each commit ends.
  REQUIRE(scan->commits.size() == b.commits.size());
  for (size_t i = 0; i < b.commits.size(); ++i) {
    CHECK(scan->commits[i].end_offset == b.commits[i].end_offset);
    CHECK(scan->commits[i].committed_tokens == b.commits[i].tokens);
  }
  return b;
}

// The last commit lying wholly inside [0, length), or nullptr when none does.
const CommitPoint* LastCommitWithin(const Built& b, uint64_t length) {
  const CommitPoint* last = nullptr;
  for (const CommitPoint& c : b.commits)
    if (c.end_offset <= length) last = &c;
  return last;
}

bool NearBoundary(const Built& b, uint64_t length) {
  auto it = b.boundaries.lower_bound(length >= 9 ? length - 9 : 0);
  return it != b.boundaries.end() && *it <= length + 9;
}

TEST_CASE("truncation at every byte offset") {
  test::TempDir dir;
  const Built b = BuildSmallArchive(dir.File("full.kiv"));
  const uint64_t size = b.bytes.size();
  MESSAGE("archive of ", size, " bytes, ", b.commits.size(), " commits");
  REQUIRE(b.commits.size() >= 4);

  // Scan and verify of every prefix, in memory.
  uint64_t in_memory = 0;
  for (uint64_t length = 0; length < size; ++length) {
    CAPTURE(length);
    const CommitPoint* want = LastCommitWithin(b, length);
    // A copy of exactly `length` bytes, so ASan catches any read past the cut.
    std::vector<uint8_t> cut(b.bytes.begin(), b.bytes.begin() + static_cast<long>(length));
    auto scan = ScanArchive(cut.data(), cut.size());
    auto verify = VerifyBytes(cut.data(), cut.size());
    ++in_memory;
    if (want == nullptr) {
      CHECK_FALSE(scan.ok());
      CHECK_FALSE(scan.status().message().empty());
      if (verify.ok()) CHECK_FALSE(verify->clean());
      else CHECK_FALSE(verify.status().message().empty());
      continue;
    }
    REQUIRE_MESSAGE(scan.ok(), scan.status().ToString());
    CHECK(scan->committed_tokens == want->tokens);
    CHECK(scan->committed_end == want->end_offset);
    CHECK(scan->tail_bytes == length - want->end_offset);
    REQUIRE_MESSAGE(verify.ok(), verify.status().ToString());
    CHECK_FALSE(verify->damaged);
    CHECK(verify->committed_tokens == want->tokens);
    CHECK(verify->tail_bytes == length - want->end_offset);
    CHECK(verify->clean() == (length == want->end_offset));
  }

  // ArchiveReader::Open of every prefix, as a file: cut the same file shorter and shorter.
  const std::string path = dir.File("cut.kiv");
  test::WriteFileBytes(path, b.bytes);
  uint64_t opened = 0, refused = 0;
  for (uint64_t length = size; length-- > 0;) {
    CAPTURE(length);
    REQUIRE(::truncate(path.c_str(), static_cast<off_t>(length)) == 0);
    const CommitPoint* want = LastCommitWithin(b, length);
    auto r = ArchiveReader::Open(path);
    if (want == nullptr) {
      REQUIRE_FALSE(r.ok());
      CHECK_FALSE(r.status().message().empty());
      if (length == 0) CHECK(r.status().code() == Status::Code::kNotAnArchive);
      ++refused;
      continue;
    }
    // Cutting can only make a torn tail: the archive opens at the last whole commit.
    REQUIRE_MESSAGE(r.ok(), r.status().ToString());
    ++opened;
    CHECK((*r)->token_count() == want->tokens);
    CHECK((*r)->scan().tail_bytes == length - want->end_offset);
    const std::string bad = test::CheckContent(**r, want->tokens);
    CHECK_MESSAGE(bad.empty(), bad);
    auto cp = (*r)->LoadCheckpoint();
    REQUIRE_MESSAGE(cp.ok(), cp.status().ToString());
    if (want->tokens == 0) {
      CHECK(cp->token_count() == 0);  // the creating commit's empty hot tier
    } else {
      CHECK(*cp == want->checkpoint);
    }
  }
  std::printf("truncation: %llu offsets tested in memory, %llu as files (%llu opened, %llu "
              "refused)\n",
              static_cast<unsigned long long>(in_memory),
              static_cast<unsigned long long>(opened + refused),
              static_cast<unsigned long long>(opened), static_cast<unsigned long long>(refused));
  CHECK(in_memory == size);
  CHECK(opened + refused == size);
}

TEST_CASE("opening a cut archive to append recovers it to its last commit") {
  test::TempDir dir;
  const Built b = BuildSmallArchive(dir.File("full.kiv"));
  const uint64_t size = b.bytes.size();
  const std::string path = dir.File("cut.kiv");
  uint64_t tested = 0;
  for (uint64_t length = b.commits.front().end_offset; length < size; ++length) {
    if (length % 13 != 0 && !NearBoundary(b, length)) continue;
    CAPTURE(length);
    const CommitPoint* want = LastCommitWithin(b, length);
    REQUIRE(want != nullptr);
    test::WriteFileBytes(path, b.bytes.data(), length);
    {
      auto w = ArchiveWriter::Open(path);
      REQUIRE_MESSAGE(w.ok(), w.status().ToString());
      CHECK((*w)->committed_tokens() == want->tokens);
      CHECK((*w)->dropped_tail_bytes() == length - want->end_offset);
      CHECK(test::FileSize(path) == want->end_offset);
      // The recovered archive takes new commits.
      REQUIRE(test::AppendTokens(**w, 2).ok());
      REQUIRE((*w)->Commit(test::MakeCheckpoint((*w)->spec(), 99, 1)).ok());
      REQUIRE((*w)->Close().ok());
    }
    auto v = VerifyArchive(path);
    REQUIRE_MESSAGE(v.ok(), v.status().ToString());
    CHECK(v->clean());
    CHECK(v->committed_tokens == want->tokens + 2);
    auto r = ArchiveReader::Open(path);
    REQUIRE_MESSAGE(r.ok(), r.status().ToString());
    const std::string bad = test::CheckContent(**r, want->tokens + 2);
    CHECK_MESSAGE(bad.empty(), bad);
    ++tested;
  }
  std::printf("truncation: %llu cut archives recovered by a writer\n",
              static_cast<unsigned long long>(tested));
  CHECK(tested > 0);

  // Below the creating commit there is nothing to recover: the writer refuses, clearly.
  for (uint64_t length : {uint64_t{0}, uint64_t{100}, uint64_t{512},
                          b.commits.front().end_offset - 1}) {
    CAPTURE(length);
    test::WriteFileBytes(path, b.bytes.data(), length);
    auto w = ArchiveWriter::Open(path);
    REQUIRE_FALSE(w.ok());
    CHECK_FALSE(w.status().message().empty());
    CHECK(test::FileSize(path) == length);  // and leaves the file alone
  }
}

}  // namespace
}  // namespace kiv
