// Writing, reopening and reading archives: content byte-exact, commits, refresh, recovery of a
// torn tail, one writer at a time, the wrong model, and files that are not archives.
#include <doctest/doctest.h>
#include <unistd.h>

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

std::unique_ptr<ArchiveWriter> MustCreate(const std::string& path, const ArchiveSpec& spec) {
  auto w = ArchiveWriter::Create(path, spec);
  REQUIRE_MESSAGE(w.ok(), w.status().ToString());
  return std::move(w.value());
}

std::unique_ptr<ArchiveReader> MustOpen(const std::string& path) {
  auto r = ArchiveReader::Open(path);
  REQUIRE_MESSAGE(r.ok(), r.status().ToString());
  return std::move(r.value());
}

void CheckVerifiesClean(const std::string& path) {
  auto v = VerifyArchive(path);
  REQUIRE_MESSAGE(v.ok(), v.status().ToString());
  CHECK_MESSAGE(v->clean(), "damaged=", v->damaged, " ", v->damage_what, " tail=", v->tail_bytes,
                " ", v->tail_reason);
}

void CheckReaderContent(const ArchiveReader& r, uint64_t tokens) {
  CHECK(r.token_count() == tokens);
  const std::string bad = test::CheckContent(r, tokens);
  CHECK_MESSAGE(bad.empty(), bad);
}

struct Commit {
  uint64_t tokens;
  HotCheckpoint checkpoint;
};

TEST_CASE("round trip: several segments and commits, every byte as appended") {
  for (uint32_t heads : {1u, 2u}) {
    for (uint32_t bits : {64u, 128u}) {
      for (bool centred : {false, true}) {
        CAPTURE(heads);
        CAPTURE(bits);
        CAPTURE(centred);
        test::TempDir dir;
        const std::string path = dir.File("a.kiv");
        const ArchiveSpec spec = test::SmallSpec(heads, bits, centred, heads == 2 ? 128 : 64);
        const uint32_t sizes[] = {1, 7, 64, 3, 2, 17, 5};
        std::vector<Commit> commits;
        {
          auto w = MustCreate(path, spec);
          CHECK(w->token_count() == 0);
          CHECK(w->committed_tokens() == 0);
          const uint64_t creation_commits = w->commit_count();
          for (size_t i = 0; i < std::size(sizes); ++i) {
            REQUIRE_OK(test::AppendTokens(*w, sizes[i]));
            if (i % 2 == 1 || i + 1 == std::size(sizes)) {
              HotCheckpoint cp = test::MakeCheckpoint(spec, i, static_cast<uint32_t>(i % 4),
                                                      i % 3 == 0 ? format::kDtypeBF16
                                                                 : format::kDtypeF32);
              REQUIRE_OK(w->Commit(cp));
              CHECK(w->committed_tokens() == w->token_count());
              commits.push_back({w->token_count(), cp});
            }
          }
          CHECK(w->commit_count() == creation_commits + commits.size());
          CHECK(w->file_bytes() == test::FileSize(path));
          REQUIRE_OK(w->Close());
        }
        auto r = MustOpen(path);
        uint64_t total = 0;
        for (uint32_t s : sizes) total += s;
        CheckReaderContent(*r, total);
        CHECK(r->segment_count() == std::size(sizes));
        CHECK(r->scan().tail_bytes == 0);
        CHECK(r->spec().model.num_kv_heads == heads);
        CHECK(r->spec().codec.signature_bits == bits);
        CHECK(r->spec().codec.centring == spec.codec.centring);

        // Segments, and each (segment, layer, head)'s signature run.
        uint64_t first = 0;
        for (size_t i = 0; i < r->segment_count(); ++i) {
          CHECK(r->segment(i).first_token == first);
          CHECK(r->segment(i).layout.token_count == sizes[i]);
          for (uint32_t l = 0; l < spec.model.num_layers; ++l) {
            for (uint32_t h = 0; h < heads; ++h) {
              const SignatureRun run = r->Signatures(i, l, h);
              CHECK(run.first_token == first);
              CHECK(run.token_count == sizes[i]);
              std::vector<uint8_t> want(spec.signature_bytes());
              for (uint32_t t = 0; t < sizes[i]; ++t) {
                test::FillSignature(spec, first + t, l, h, want.data());
                CHECK(std::memcmp(run.data + t * want.size(), want.data(), want.size()) == 0);
              }
            }
          }
          for (uint32_t t = 0; t < sizes[i]; ++t) CHECK(r->SegmentOf(first + t) == i);
          first += sizes[i];
        }

        // Every commit's checkpoint, the last one by default.
        const auto& infos = r->scan().commits;
        REQUIRE(infos.size() == commits.size() + 1);  // + the creating commit
        auto empty = r->LoadCheckpoint(infos[0]);
        REQUIRE_MESSAGE(empty.ok(), empty.status().ToString());
        CHECK(empty->token_count() == 0);
        CHECK(infos[0].committed_tokens == 0);
        for (size_t i = 0; i < commits.size(); ++i) {
          CHECK(infos[i + 1].committed_tokens == commits[i].tokens);
          CHECK(infos[i + 1].index == i + 1);
          auto cp = r->LoadCheckpoint(infos[i + 1]);
          REQUIRE_MESSAGE(cp.ok(), cp.status().ToString());
          CHECK(*cp == commits[i].checkpoint);
        }
        auto last = r->LoadCheckpoint();
        REQUIRE(last.ok());
        CHECK(*last == commits.back().checkpoint);
        CheckVerifiesClean(path);
      }
    }
  }
}

TEST_CASE("an empty archive opens at once") {
  test::TempDir dir;
  const std::string path = dir.File("empty.kiv");
  { REQUIRE_OK(MustCreate(path, test::SmallSpec())->Close()); }
  auto r = MustOpen(path);
  CHECK(r->token_count() == 0);
  CHECK(r->segment_count() == 0);
  CHECK(r->scan().commits.size() == 1);
  auto cp = r->LoadCheckpoint();
  REQUIRE(cp.ok());
  CHECK(cp->token_count() == 0);
  CheckVerifiesClean(path);
}

TEST_CASE("readers see the committed prefix; Refresh picks up later commits") {
  test::TempDir dir;
  const std::string path = dir.File("live.kiv");
  const ArchiveSpec spec = test::SmallSpec(2, 64);
  auto w = MustCreate(path, spec);
  REQUIRE_OK(test::AppendTokens(*w, 10));
  REQUIRE_OK(w->Commit(test::MakeCheckpoint(spec, 1, 2)));

  auto r = MustOpen(path);
  CheckReaderContent(*r, 10);

  // Appended but not committed: a reader opened now, and a refreshed one, see only the 10.
  REQUIRE_OK(test::AppendTokens(*w, 5));
  REQUIRE_OK(test::AppendTokens(*w, 6));
  CHECK(w->token_count() == 21);
  CHECK(w->committed_tokens() == 10);
  {
    auto during = MustOpen(path);
    CheckReaderContent(*during, 10);
    auto cp = during->LoadCheckpoint();
    REQUIRE(cp.ok());
    CHECK(*cp == test::MakeCheckpoint(spec, 1, 2));
  }
  REQUIRE_OK(r->Refresh());
  CheckReaderContent(*r, 10);

  // Committed now: the old reader still sees its 10 until it refreshes, then all 21.
  REQUIRE_OK(w->Commit(test::MakeCheckpoint(spec, 2, 3)));
  CHECK(r->token_count() == 10);
  REQUIRE_OK(r->Refresh());
  CheckReaderContent(*r, 21);
  CHECK(r->segment_count() == 3);
  auto cp = r->LoadCheckpoint();
  REQUIRE(cp.ok());
  CHECK(*cp == test::MakeCheckpoint(spec, 2, 3));

  // Several commits in a row, refreshing in between and after.
  for (uint32_t i = 0; i < 4; ++i) {
    REQUIRE_OK(test::AppendTokens(*w, i + 1));
    REQUIRE_OK(w->Commit(test::MakeCheckpoint(spec, 10 + i, i)));
  }
  REQUIRE_OK(r->Refresh());
  CheckReaderContent(*r, 31);
  REQUIRE_OK(r->Refresh());  // nothing new: still fine
  CheckReaderContent(*r, 31);
  REQUIRE_OK(w->Close());
  CheckVerifiesClean(path);
}

TEST_CASE("opening to append drops an uncommitted tail and continues") {
  test::TempDir dir;
  const std::string path = dir.File("tail.kiv");
  const ArchiveSpec spec = test::SmallSpec(1, 128);
  {
    auto w = MustCreate(path, spec);
    REQUIRE_OK(test::AppendTokens(*w, 4));
    REQUIRE_OK(w->Commit(test::MakeCheckpoint(spec, 4, 1)));
    REQUIRE_OK(test::AppendTokens(*w, 3));  // never committed
    REQUIRE_OK(w->Close());
  }
  const uint64_t committed_end = [&] {
    auto r = MustOpen(path);
    CheckReaderContent(*r, 4);
    CHECK(r->scan().tail_bytes > 0);
    CHECK(r->scan().committed_end + r->scan().tail_bytes == test::FileSize(path));
    return r->scan().committed_end;
  }();
  {
    auto v = VerifyArchive(path);
    REQUIRE(v.ok());
    CHECK_FALSE(v->damaged);
    CHECK(v->tail_bytes > 0);
    CHECK_FALSE(v->clean());
  }

  SUBCASE("a whole segment that was never committed") {}
  SUBCASE("a torn write: the tail cut in the middle of a block") {
    REQUIRE(::truncate(path.c_str(), static_cast<off_t>(committed_end + 100)) == 0);
  }
  SUBCASE("garbage after the last commit") {
    std::vector<uint8_t> bytes = test::ReadFileBytes(path);
    bytes.resize(committed_end);
    bytes.insert(bytes.end(), 300, 0xEE);
    test::WriteFileBytes(path, bytes);
  }

  const uint64_t tail = test::FileSize(path) - committed_end;
  {
    auto w = ArchiveWriter::Open(path);
    REQUIRE_MESSAGE(w.ok(), w.status().ToString());
    CHECK((*w)->dropped_tail_bytes() == tail);
    CHECK((*w)->committed_tokens() == 4);
    CHECK((*w)->token_count() == 4);
    CHECK(test::FileSize(path) == committed_end);
    REQUIRE_OK(test::AppendTokens(**w, 9));
    REQUIRE_OK((*w)->Commit(test::MakeCheckpoint(spec, 13, 2)));
    REQUIRE_OK((*w)->Close());
  }
  auto r = MustOpen(path);
  CheckReaderContent(*r, 13);
  CHECK(r->scan().tail_bytes == 0);
  auto cp = r->LoadCheckpoint();
  REQUIRE(cp.ok());
  CHECK(*cp == test::MakeCheckpoint(spec, 13, 2));
  CheckVerifiesClean(path);

  // A clean archive reopened to append drops nothing.
  auto again = ArchiveWriter::Open(path);
  REQUIRE(again.ok());
  CHECK((*again)->dropped_tail_bytes() == 0);
}

TEST_CASE("one writer at a time") {
  test::TempDir dir;
  const std::string path = dir.File("locked.kiv");
  const ArchiveSpec spec = test::SmallSpec();
  auto w = MustCreate(path, spec);
  REQUIRE_OK(test::AppendTokens(*w, 3));
  REQUIRE_OK(w->Commit(test::MakeCheckpoint(spec, 3, 1)));
  const std::vector<uint8_t> before = test::ReadFileBytes(path);

  auto second = ArchiveWriter::Open(path);
  REQUIRE_FALSE(second.ok());
  CHECK(second.status().code() == Code::kLocked);
  CHECK_FALSE(second.status().message().empty());

  // Create over a file held by a writer is refused too, and touches nothing.
  auto created = ArchiveWriter::Create(path, spec);
  REQUIRE_FALSE(created.ok());
  INFO(created.status().ToString());
  CHECK((created.status().code() == Code::kLocked ||
         created.status().code() == Code::kInvalidArgument));
  CHECK(test::ReadFileBytes(path) == before);

  // Readers need no lock.
  auto r = MustOpen(path);
  CheckReaderContent(*r, 3);

  // The first writer is unharmed, and once it is closed another may open.
  REQUIRE_OK(test::AppendTokens(*w, 2));
  REQUIRE_OK(w->Commit(test::MakeCheckpoint(spec, 5, 1)));
  REQUIRE_OK(w->Close());
  auto third = ArchiveWriter::Open(path);
  REQUIRE_MESSAGE(third.ok(), third.status().ToString());
  CHECK((*third)->committed_tokens() == 5);
  auto fourth = ArchiveWriter::Open(path);
  REQUIRE_FALSE(fourth.ok());
  CHECK(fourth.status().code() == Code::kLocked);
  third->reset();  // destroying a writer releases the lock too
  auto fifth = ArchiveWriter::Open(path);
  CHECK_MESSAGE(fifth.ok(), fifth.status().ToString());
}

TEST_CASE("Create refuses an existing file") {
  test::TempDir dir;
  const std::string path = dir.File("exists.kiv");
  const ArchiveSpec spec = test::SmallSpec();
  {
    auto w = MustCreate(path, spec);
    REQUIRE_OK(test::AppendTokens(*w, 2));
    REQUIRE_OK(w->Commit(test::MakeCheckpoint(spec, 2, 1)));
    REQUIRE_OK(w->Close());
  }
  const std::vector<uint8_t> before = test::ReadFileBytes(path);
  auto again = ArchiveWriter::Create(path, spec);
  REQUIRE_FALSE(again.ok());
  CHECK_FALSE(again.status().message().empty());
  CHECK(test::ReadFileBytes(path) == before);

  // Not only archives: any file is left alone.
  const std::string other = dir.File("notes.txt");
  test::WriteFileBytes(other, std::vector<uint8_t>{'h', 'i', '\n'});
  CHECK_FALSE(ArchiveWriter::Create(other, spec).ok());
  CHECK(test::ReadFileBytes(other) == std::vector<uint8_t>{'h', 'i', '\n'});

  // An invalid spec creates nothing.
  ArchiveSpec bad = spec;
  bad.model.head_dim = 65;
  auto made = ArchiveWriter::Create(dir.File("bad.kiv"), bad);
  REQUIRE_FALSE(made.ok());
  CHECK(made.status().code() == Code::kInvalidArgument);
  CHECK(::access(dir.File("bad.kiv").c_str(), F_OK) != 0);
}

TEST_CASE("a different model is refused when opening to append") {
  test::TempDir dir;
  const std::string path = dir.File("model.kiv");
  const ArchiveSpec spec = test::SmallSpec();
  {
    auto w = MustCreate(path, spec);
    REQUIRE_OK(test::AppendTokens(*w, 2));
    REQUIRE_OK(w->Commit(test::MakeCheckpoint(spec, 2, 1)));
  }
  const std::vector<uint8_t> before = test::ReadFileBytes(path);

  ModelFingerprint same = spec.model;
  {
    auto w = ArchiveWriter::Open(path, {}, &same);
    REQUIRE_MESSAGE(w.ok(), w.status().ToString());
  }
  ModelFingerprint other = spec.model;
  other.weights_hash ^= 1;
  auto w = ArchiveWriter::Open(path, {}, &other);
  REQUIRE_FALSE(w.ok());
  CHECK(w.status().code() == Code::kIncompatible);
  CHECK(w.status().message().find("weights") != std::string::npos);
  other = spec.model;
  other.num_layers = 3;
  w = ArchiveWriter::Open(path, {}, &other);
  REQUIRE_FALSE(w.ok());
  CHECK(w.status().code() == Code::kIncompatible);
  CHECK(test::ReadFileBytes(path) == before);
}

TEST_CASE("a checkpoint of another shape is refused without failing the writer") {
  test::TempDir dir;
  const std::string path = dir.File("shape.kiv");
  const ArchiveSpec spec = test::SmallSpec(2, 64);
  auto w = MustCreate(path, spec);
  REQUIRE_OK(test::AppendTokens(*w, 3));
  const Status s = w->Commit(test::MakeCheckpoint(test::SmallSpec(1, 64), 1, 1));
  CHECK_FALSE(s.ok());
  CHECK(s.code() == Code::kInvalidArgument);
  SegmentView empty;
  CHECK(w->Append(empty).code() == Code::kInvalidArgument);
  REQUIRE_OK(w->Commit(test::MakeCheckpoint(spec, 1, 1)));
  REQUIRE_OK(w->Close());
  auto r = MustOpen(path);
  CheckReaderContent(*r, 3);
}

TEST_CASE("files that are not archives get a clear error") {
  test::TempDir dir;
  auto expect = [](const std::string& path, Code code) {
    auto r = ArchiveReader::Open(path);
    REQUIRE_FALSE(r.ok());
    INFO(r.status().ToString());
    CHECK(r.status().code() == code);
    CHECK_FALSE(r.status().message().empty());
    auto w = ArchiveWriter::Open(path);
    REQUIRE_FALSE(w.ok());
    CHECK(w.status().code() == code);
    // Verify reports damage after a readable header in its report, and errors for the rest.
    auto v = VerifyArchive(path);
    if (v.ok()) {
      CHECK(code == Code::kCorruption);
      CHECK(v->damaged);
      CHECK_FALSE(v->damage_what.empty());
    } else {
      CHECK(v.status().code() == code);
    }
  };
  expect(dir.File("missing.kiv"), Code::kNotFound);
  test::WriteFileBytes(dir.File("empty.kiv"), std::vector<uint8_t>{});
  expect(dir.File("empty.kiv"), Code::kNotAnArchive);
  std::vector<uint8_t> text(4000, 'x');
  test::WriteFileBytes(dir.File("text.kiv"), text);
  expect(dir.File("text.kiv"), Code::kNotAnArchive);
  expect(dir.path(), Code::kNotAnArchive);  // a directory

  // A header alone, with no creating commit: creation never finished.
  const std::vector<uint8_t> header = EncodeHeader(test::SmallSpec());
  test::WriteFileBytes(dir.File("header-only.kiv"), header);
  expect(dir.File("header-only.kiv"), Code::kCorruption);

  // A newer format: readers and writers refuse it rather than guess.
  const std::string path = dir.File("new.kiv");
  { REQUIRE_OK(MustCreate(path, test::SmallSpec())->Close()); }
  std::vector<uint8_t> bytes = test::ReadFileBytes(path);
  auto h = format::Load<format::FileHeader>(bytes.data());
  h.format_version = h.min_read_version = h.min_write_version = format::kFormatVersion + 1;
  h.header_checksum = format::Checksum(&h, format::kFileHeaderChecksummed, 0);
  format::Store(bytes.data(), h);
  test::WriteFileBytes(path, bytes);
  expect(path, Code::kVersionTooNew);

  // Readable but not appendable by this build: the reader opens, the writer refuses.
  h.min_read_version = format::kFormatVersion;
  h.header_checksum = format::Checksum(&h, format::kFileHeaderChecksummed, 0);
  format::Store(bytes.data(), h);
  test::WriteFileBytes(path, bytes);
  auto r = ArchiveReader::Open(path);
  CHECK_MESSAGE(r.ok(), r.status().ToString());
  auto w = ArchiveWriter::Open(path);
  REQUIRE_FALSE(w.ok());
  CHECK(w.status().code() == Code::kVersionTooNew);
}

}  // namespace
}  // namespace kiv
