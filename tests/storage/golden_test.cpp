// The golden archive: this build writes exactly the checked-in bytes, and reads every value of
// the checked-in file back. A failure of the first kind means the format (or its encoder)
// changed: bump the version and regenerate on purpose, or fix the regression.
#include <doctest/doctest.h>

#include <cstdio>
#include <string>
#include <vector>

#include "storage/reader.h"
#include "storage/verify.h"
#include "tests/storage/golden.h"
#include "tests/storage/test_util.h"

#ifndef KIV_SOURCE_DIR
#error "KIV_SOURCE_DIR must name the source tree (tests/storage/CMakeLists.txt sets it)"
#endif

namespace kiv {
namespace {

const std::string kFixture = std::string(KIV_SOURCE_DIR) + "/fixtures/golden/small.kiv";

// Which block of the archive `offset` lies in, for a message that says where bytes differ.
std::string WhereIs(const std::vector<uint8_t>& bytes, uint64_t offset) {
  auto scan = ScanArchive(bytes.data(), bytes.size());
  if (!scan.ok()) return "(the archive does not scan: " + scan.status().ToString() + ")";
  if (offset < scan->header_bytes) return "the file header";
  for (const SegmentInfo& s : scan->segments)
    if (offset >= s.offset && offset < s.body_offset() + s.layout.body_bytes)
      return "segment at " + std::to_string(s.offset);
  for (const CommitInfo& c : scan->commits)
    if (offset >= c.offset && offset < c.end_offset)
      return "commit " + std::to_string(c.index) +
             (offset >= c.checkpoint_offset() ? " (its stored checkpoint, codec " +
                                                    std::to_string(c.checkpoint_codec) + ")"
                                              : "");
  return "past the last commit";
}

TEST_CASE("this build writes the golden archive byte for byte") {
  const std::vector<uint8_t> want = test::ReadFileBytes(kFixture);
  test::TempDir dir;
  const std::string path = dir.File("small.kiv");
  const Status s = golden::Write(path);
  REQUIRE_MESSAGE(s.ok(), s.ToString());
  const std::vector<uint8_t> got = test::ReadFileBytes(path);
  uint64_t first_diff = 0;
  while (first_diff < got.size() && first_diff < want.size() && got[first_diff] == want[first_diff])
    ++first_diff;
  INFO("sizes ", got.size(), " (written) and ", want.size(), " (fixture); first difference at ",
       first_diff, ", in ", WhereIs(want, first_diff));
  CHECK(got == want);
  // Writing twice gives the same bytes: nothing depends on time, memory or chance.
  const std::string again = dir.File("again.kiv");
  REQUIRE(golden::Write(again).ok());
  CHECK(test::ReadFileBytes(again) == got);
}

TEST_CASE("the hex dump beside the golden archive is its xxd dump") {
  const std::vector<uint8_t> bytes = test::ReadFileBytes(kFixture);
  const std::vector<uint8_t> hex = test::ReadFileBytes(kFixture + ".hex");
  CHECK(std::string(hex.begin(), hex.end()) == golden::XxdDump(bytes));
}

TEST_CASE("the golden archive reads back value by value") {
  auto v = VerifyArchive(kFixture);
  REQUIRE_MESSAGE(v.ok(), v.status().ToString());
  CHECK(v->clean());

  auto opened = ArchiveReader::Open(kFixture);
  REQUIRE_MESSAGE(opened.ok(), opened.status().ToString());
  const ArchiveReader& r = **opened;

  // The header, as the fixture's README describes it.
  const ArchiveSpec want = golden::Spec();
  const ArchiveSpec& spec = r.spec();
  CHECK(spec.model.architecture == "llama");
  CHECK(spec.model.num_layers == 2);
  CHECK(spec.model.num_q_heads == 4);
  CHECK(spec.model.num_kv_heads == 1);
  CHECK(spec.model.head_dim == 64);
  CHECK(spec.model.vocab_size == 256);
  CHECK(spec.model.weights_hash == 0x1111222233334444ull);
  CHECK(spec.model.tokenizer_hash == 0x5555666677778888ull);
  CHECK(spec.codec.codec_id == format::kCodecK4V8);
  CHECK(spec.codec.signature_bits == 64);
  CHECK(spec.codec.projection_seed == 0x0102030405060708ull);
  CHECK(spec.codec.sinks == 4);
  CHECK(spec.codec.hot_window == 256);
  CHECK(spec.codec.centred);
  CHECK(spec.codec.centring == want.codec.centring);
  REQUIRE(spec.codec.centring.size() == 128);
  CHECK(spec.codec.centring[0] == -4.0f);
  CHECK(spec.codec.centring[127] == 127.0f / 16.0f - 4.0f);
  const auto header = format::Load<format::FileHeader>(r.data());
  CHECK(header.format_version == 1);
  CHECK(header.min_read_version == 1);
  CHECK(header.min_write_version == 1);
  CHECK(header.header_bytes == 1024);  // 512 + 2 x 1 x 64 floats of centring
  CHECK(r.scan().header_bytes == 1024);

  // Segments and commits.
  REQUIRE(r.token_count() == 5);
  REQUIRE(r.segment_count() == 2);
  CHECK(r.segment(0).first_token == 0);
  CHECK(r.segment(0).layout.token_count == 3);
  CHECK(r.segment(1).first_token == 3);
  CHECK(r.segment(1).layout.token_count == 2);
  const auto& commits = r.scan().commits;
  REQUIRE(commits.size() == 3);
  CHECK(commits[0].offset == 1024);  // the creating commit comes first
  CHECK(r.segment(0).offset == commits[0].end_offset);
  CHECK(commits[1].offset == r.segment(0).body_offset() + r.segment(0).layout.body_bytes);
  CHECK(r.segment(1).offset == commits[1].end_offset);
  CHECK(commits[0].committed_tokens == 0);
  CHECK(commits[1].committed_tokens == 3);
  CHECK(commits[2].committed_tokens == 5);
  CHECK(commits[2].end_offset == r.mapped_bytes());
  CHECK(r.scan().tail_bytes == 0);

  // Every record, signature, token id and position.
  for (uint64_t t = 0; t < 5; ++t) {
    CAPTURE(t);
    CHECK(r.TokenId(t) == 100 + 7 * t);
    CHECK(r.Position(t) == t);
    for (uint32_t l = 0; l < 2; ++l) {
      const uint8_t* rec = r.Record(t, l, 0);
      for (uint32_t i = 0; i < 104; ++i) CHECK(rec[i] == golden::RecordByte(t, l, 0, i));
      const uint8_t* sig = r.Signature(t, l, 0);
      for (uint32_t i = 0; i < 8; ++i) CHECK(sig[i] == golden::SignatureByte(t, l, 0, i));
    }
  }
  CHECK(r.Record(4, 1, 0)[0] == static_cast<uint8_t>(4 * 37 + 11));  // spelled out once

  // Every checkpoint.
  auto c0 = r.LoadCheckpoint(commits[0]);
  REQUIRE_MESSAGE(c0.ok(), c0.status().ToString());
  CHECK(c0->token_count() == 0);
  for (uint32_t k = 1; k <= 2; ++k) {
    CAPTURE(k);
    auto cp = r.LoadCheckpoint(commits[k]);
    REQUIRE_MESSAGE(cp.ok(), cp.status().ToString());
    CHECK(*cp == golden::Checkpoint(k));
    CHECK(cp->token_count() == k);
    CHECK(std::string(cp->extra.begin(), cp->extra.end()) == "turn:" + std::to_string(k));
  }
  auto last = r.LoadCheckpoint();
  REQUIRE(last.ok());
  CHECK(last->dtype == format::kDtypeBF16);
  CHECK(last->positions == std::vector<uint32_t>{2000, 2001});
}

}  // namespace
}  // namespace kiv
