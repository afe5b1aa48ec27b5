// Every single-bit flip in a small finished archive is reported by verify; a flip in a block
// header or a commit never lets a reader open to a state that holds the commits after it.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <string>
#include <vector>

#include "storage/reader.h"
#include "storage/scan.h"
#include "storage/verify.h"
#include "storage/writer.h"
#include "tests/storage/test_util.h"

namespace kiv {
namespace {

// 2 segments of 3 and 2 tokens, a commit after each, centring vectors in the header extension:
// every kind of byte the format has.
std::vector<uint8_t> BuildSmallArchive(const std::string& path) {
  const ArchiveSpec spec = test::SmallSpec(1, 64, /*centred=*/true);
  auto w = ArchiveWriter::Create(path, spec);
  REQUIRE_MESSAGE(w.ok(), w.status().ToString());
  REQUIRE(test::AppendTokens(**w, 3).ok());
  REQUIRE((*w)->Commit(test::MakeCheckpoint(spec, 1, 1)).ok());
  REQUIRE(test::AppendTokens(**w, 2).ok());
  REQUIRE((*w)->Commit(test::MakeCheckpoint(spec, 2, 2, format::kDtypeBF16)).ok());
  REQUIRE((*w)->Close().ok());
  return test::ReadFileBytes(path);
}

TEST_CASE("every single-bit flip is detected by VerifyBytes") {
  test::TempDir dir;
  const std::vector<uint8_t> good = BuildSmallArchive(dir.File("a.kiv"));
  auto v0 = VerifyBytes(good.data(), good.size());
  REQUIRE_MESSAGE(v0.ok(), v0.status().ToString());
  REQUIRE(v0->clean());  // otherwise every flip would look "detected"
  auto scan = ScanArchive(good.data(), good.size());
  REQUIRE(scan.ok());
  REQUIRE(scan->commits.size() == 3);
  const uint64_t header_bytes = scan->header_bytes;
  const CommitInfo& last = scan->commits.back();
  const CommitInfo& before_last = scan->commits[scan->commits.size() - 2];

  std::vector<uint8_t> bytes = good;
  uint64_t flips = 0, detected = 0, as_error = 0, as_damage = 0, as_tail = 0;
  std::vector<uint64_t> missed;
  for (uint64_t i = 0; i < bytes.size(); ++i) {
    for (int bit = 0; bit < 8; ++bit) {
      bytes[i] ^= static_cast<uint8_t>(1u << bit);
      auto v = VerifyBytes(bytes.data(), bytes.size());
      ++flips;
      if (!v.ok()) {
        CHECK_FALSE(v.status().message().empty());
        ++as_error;
        ++detected;
      } else if (!v->clean()) {
        if (v->damaged) {
          ++as_damage;
          CHECK_FALSE(v->damage_what.empty());
        } else {
          ++as_tail;
        }
        ++detected;
      } else if (missed.size() < 20) {
        missed.push_back(i * 8 + static_cast<uint64_t>(bit));
      }
      // And it is reported as what it is: a bad header is an error; damage before the last
      // commit is damage; a damaged last commit is an uncommitted tail after the one before.
      if (i < header_bytes) {
        CHECK_MESSAGE(!v.ok(), "header byte ", i, " bit ", bit);
      } else if (i < last.offset) {
        CHECK_MESSAGE((v.ok() && v->damaged), "byte ", i, " bit ", bit,
                      " before the last commit is not reported as damage");
      } else if (v.ok()) {
        CHECK_MESSAGE((!v->damaged && v->tail_bytes == good.size() - before_last.end_offset &&
                       v->committed_tokens == before_last.committed_tokens),
                      "byte ", i, " bit ", bit, " in the last commit");
      } else {
        FAIL_CHECK("byte ", i, " bit ", bit, " in the last commit: ", v.status().ToString());
      }
      bytes[i] ^= static_cast<uint8_t>(1u << bit);
    }
  }
  REQUIRE(bytes == good);
  std::printf("bitflip: %llu of %llu flips detected (%llu as errors, %llu as damage, %llu as an "
              "uncommitted tail) in an archive of %zu bytes\n",
              static_cast<unsigned long long>(detected), static_cast<unsigned long long>(flips),
              static_cast<unsigned long long>(as_error),
              static_cast<unsigned long long>(as_damage),
              static_cast<unsigned long long>(as_tail), good.size());
  for (uint64_t m : missed)
    MESSAGE("undetected flip: byte ", m / 8, " bit ", m % 8);
  CHECK(flips == good.size() * 8);
  REQUIRE(detected == flips);
}

void FlipBitInFile(int fd, uint64_t offset, int bit) {
  uint8_t b = 0;
  REQUIRE(::pread(fd, &b, 1, static_cast<off_t>(offset)) == 1);
  b ^= static_cast<uint8_t>(1u << bit);
  REQUIRE(::pwrite(fd, &b, 1, static_cast<off_t>(offset)) == 1);
}

TEST_CASE("a flipped block header or commit never opens to the commits after it") {
  test::TempDir dir;
  const std::vector<uint8_t> good = BuildSmallArchive(dir.File("a.kiv"));
  auto scan = ScanArchive(good.data(), good.size());
  REQUIRE_MESSAGE(scan.ok(), scan.status().ToString());
  REQUIRE(scan->commits.size() == 3);

  // The structural regions: [start, end) of each block header and each whole commit block.
  struct Region {
    uint64_t begin, end;
  };
  std::vector<Region> regions;
  regions.push_back({0, scan->header_bytes});
  for (const SegmentInfo& s : scan->segments) {
    regions.push_back({s.offset, s.body_offset()});
    const uint64_t trailer = s.body_offset() + s.layout.trailer_offset;
    regions.push_back({trailer, trailer + 8ull * s.layout.trailer_entries});
  }
  for (const CommitInfo& c : scan->commits) regions.push_back({c.offset, c.end_offset});

  const uint64_t last_commit_offset = scan->commits.back().offset;
  const std::string path = dir.File("flipped.kiv");
  test::WriteFileBytes(path, good);
  const int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  REQUIRE(fd >= 0);
  uint64_t flips = 0, refused = 0, opened_earlier = 0;
  for (const Region& region : regions) {
    for (uint64_t i = region.begin; i < region.end; ++i) {
      for (int bit = 0; bit < 8; ++bit) {
        CAPTURE(i);
        CAPTURE(bit);
        FlipBitInFile(fd, i, bit);
        ++flips;
        auto r = ArchiveReader::Open(path);
        if (!r.ok()) {
          CHECK_FALSE(r.status().message().empty());
          // Damage after the header and before the last commit is corruption, said as such.
          if (i >= scan->header_bytes && i < last_commit_offset)
            CHECK(r.status().code() == Status::Code::kCorruption);
          ++refused;
        } else {
          // Only a damaged last commit may open (at the commit before it, a torn tail).
          CHECK(i >= last_commit_offset);
          // It may only open to a commit that ends before the flipped byte: everything it serves
          // then lies before the damage, and is exactly what was written.
          const CommitInfo& last = (*r)->scan().commits.back();
          CHECK(last.end_offset <= i);
          const std::string bad = test::CheckContent(**r, (*r)->token_count());
          CHECK_MESSAGE(bad.empty(), bad);
          ++opened_earlier;
        }
        FlipBitInFile(fd, i, bit);
      }
    }
  }
  ::close(fd);
  REQUIRE(test::ReadFileBytes(path) == good);
  std::printf("bitflip: %llu flips in headers and commits: %llu refused, %llu opened at an "
              "earlier commit\n",
              static_cast<unsigned long long>(flips), static_cast<unsigned long long>(refused),
              static_cast<unsigned long long>(opened_earlier));
  CHECK(flips > 0);
}

}  // namespace
}  // namespace kiv
