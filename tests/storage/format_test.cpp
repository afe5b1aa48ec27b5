// The byte format's building blocks: struct layouts, the file header, segment layout arithmetic,
// checksums, the model check, checkpoints and spec validation.
#include <doctest/doctest.h>
#include <xxhash.h>

#include <cstddef>
#include <string>
#include <vector>

#include "storage/checkpoint.h"
#include "storage/format.h"
#include "storage/spec.h"
#include "tests/storage/test_util.h"

namespace kiv {
namespace {

using format::BlockHeader;
using format::CheckpointHeader;
using format::CommitBody;
using format::FileHeader;

bool Contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

TEST_CASE("on-disk structs have the documented sizes and offsets") {
  CHECK(sizeof(FileHeader) == 512);
  CHECK(offsetof(FileHeader, magic) == 0);
  CHECK(offsetof(FileHeader, format_version) == 8);
  CHECK(offsetof(FileHeader, min_read_version) == 10);
  CHECK(offsetof(FileHeader, min_write_version) == 12);
  CHECK(offsetof(FileHeader, checksum_type) == 14);
  CHECK(offsetof(FileHeader, header_bytes) == 16);
  CHECK(offsetof(FileHeader, flags) == 20);
  CHECK(offsetof(FileHeader, architecture) == 24);
  CHECK(offsetof(FileHeader, num_layers) == 56);
  CHECK(offsetof(FileHeader, weights_hash) == 80);
  CHECK(offsetof(FileHeader, tokenizer_hash) == 88);
  CHECK(offsetof(FileHeader, codec_id) == 96);
  CHECK(offsetof(FileHeader, projection_seed) == 120);
  CHECK(offsetof(FileHeader, extension_bytes) == 128);
  CHECK(offsetof(FileHeader, extension_checksum) == 136);
  CHECK(offsetof(FileHeader, reserved) == 144);
  CHECK(offsetof(FileHeader, header_checksum) == 504);

  CHECK(sizeof(BlockHeader) == 64);
  CHECK(offsetof(BlockHeader, magic) == 0);
  CHECK(offsetof(BlockHeader, body_bytes) == 8);
  CHECK(offsetof(BlockHeader, sequence) == 16);
  CHECK(offsetof(BlockHeader, first_token) == 24);
  CHECK(offsetof(BlockHeader, token_count) == 32);
  CHECK(offsetof(BlockHeader, body_checksum) == 40);
  CHECK(offsetof(BlockHeader, header_checksum) == 56);

  CHECK(sizeof(CommitBody) == 64);
  CHECK(offsetof(CommitBody, committed_tokens) == 0);
  CHECK(offsetof(CommitBody, checkpoint_codec) == 32);
  CHECK(offsetof(CommitBody, checkpoint_raw_bytes) == 40);
  CHECK(offsetof(CommitBody, checkpoint_stored_bytes) == 48);

  CHECK(sizeof(CheckpointHeader) == 32);
  CHECK(offsetof(CheckpointHeader, extra_bytes) == 24);

  // The magic bytes spell what format.h documents, and the block magics read as text on disk.
  const uint8_t magic[8] = {0x89, 'K', 'I', 'V', '\r', '\n', 0x1A, '\n'};
  CHECK(std::memcmp(format::kMagic, magic, 8) == 0);
  uint8_t seg[4], cmt[4];
  std::memcpy(seg, &format::kSegmentMagic, 4);
  std::memcpy(cmt, &format::kCommitMagic, 4);
  CHECK(std::string(reinterpret_cast<char*>(seg), 4) == "KSEG");
  CHECK(std::string(reinterpret_cast<char*>(cmt), 4) == "KCMT");

  CHECK(format::AlignUp(0) == 0);
  CHECK(format::AlignUp(1) == 8);
  CHECK(format::AlignUp(8) == 8);
  CHECK(format::AlignUp(13) == 16);
}

void CheckSameSpec(const ArchiveSpec& a, const ArchiveSpec& b) {
  CHECK(a.model.architecture == b.model.architecture);
  CHECK(a.model.num_layers == b.model.num_layers);
  CHECK(a.model.num_q_heads == b.model.num_q_heads);
  CHECK(a.model.num_kv_heads == b.model.num_kv_heads);
  CHECK(a.model.head_dim == b.model.head_dim);
  CHECK(a.model.vocab_size == b.model.vocab_size);
  CHECK(a.model.weights_hash == b.model.weights_hash);
  CHECK(a.model.tokenizer_hash == b.model.tokenizer_hash);
  CHECK(a.codec.codec_id == b.codec.codec_id);
  CHECK(a.codec.signature_bits == b.codec.signature_bits);
  CHECK(a.codec.projection_seed == b.codec.projection_seed);
  CHECK(a.codec.sinks == b.codec.sinks);
  CHECK(a.codec.hot_window == b.codec.hot_window);
  CHECK(a.codec.centred == b.codec.centred);
  CHECK(a.codec.centring == b.codec.centring);
}

TEST_CASE("file header round trip") {
  for (bool centred : {false, true}) {
    CAPTURE(centred);
    ArchiveSpec spec = test::SmallSpec(2, 128, centred);
    spec.codec.sinks = 7;
    spec.codec.hot_window = 1000;
    spec.model.architecture = std::string(31, 'a');  // the longest name that fits
    REQUIRE(spec.Validate().ok());
    const std::vector<uint8_t> bytes = EncodeHeader(spec);
    const uint64_t ext = centred ? 2 * 2 * 64 * sizeof(float) : 0;
    REQUIRE(bytes.size() == 512 + ext);

    // The fields sit where format.h says, checksummed as it says.
    const auto h = format::Load<FileHeader>(bytes.data());
    CHECK(std::memcmp(h.magic, format::kMagic, 8) == 0);
    CHECK(h.format_version == format::kFormatVersion);
    CHECK(h.min_read_version == format::kMinReadVersion);
    CHECK(h.min_write_version == format::kMinWriteVersion);
    CHECK(h.checksum_type == format::kChecksumXxh3Offset);
    CHECK(h.header_bytes == bytes.size());
    CHECK(h.flags == (centred ? format::kFlagCentred : 0u));
    CHECK(h.num_layers == 2);
    CHECK(h.num_kv_heads == 2);
    CHECK(h.num_q_heads == 4);
    CHECK(h.head_dim == 64);
    CHECK(h.record_bytes == 104);
    CHECK(h.signature_bits == 128);
    CHECK(h.extension_bytes == ext);
    CHECK(h.header_checksum == XXH3_64bits_withSeed(bytes.data(), 504, 0));
    CHECK(h.extension_checksum == XXH3_64bits_withSeed(bytes.data() + 512, ext, 512));
    for (uint8_t b : h.reserved) CHECK(b == 0);
    if (centred) CHECK(std::memcmp(bytes.data() + 512, spec.codec.centring.data(), ext) == 0);

    uint64_t header_bytes = 0;
    auto decoded = DecodeHeader(bytes.data(), bytes.size(), &header_bytes);
    REQUIRE_MESSAGE(decoded.ok(), decoded.status().ToString());
    CHECK(header_bytes == bytes.size());
    CheckSameSpec(*decoded, spec);

    // Trailing bytes (the first block) do not disturb the decode.
    std::vector<uint8_t> longer = bytes;
    longer.resize(bytes.size() + 100, 0xAB);
    CHECK(DecodeHeader(longer.data(), longer.size(), &header_bytes).ok());

    // Every cut-short header is refused with a reason.
    for (uint64_t n = 0; n < bytes.size(); n += (n < 16 ? 1 : 37)) {
      CAPTURE(n);
      auto r = DecodeHeader(bytes.data(), n, &header_bytes);
      CHECK_FALSE(r.ok());
      CHECK_FALSE(r.status().message().empty());
    }
  }
}

TEST_CASE("file header damage is named") {
  const ArchiveSpec spec = test::SmallSpec(1, 64, true);
  const std::vector<uint8_t> good = EncodeHeader(spec);
  uint64_t hb = 0;

  SUBCASE("not a kiv file") {
    const std::string text = "hello, this is a text file and not an archive at all........";
    std::vector<uint8_t> b(text.begin(), text.end());
    b.resize(600, ' ');
    auto r = DecodeHeader(b.data(), b.size(), &hb);
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == Status::Code::kNotAnArchive);
  }
  SUBCASE("newer min_read_version") {
    std::vector<uint8_t> b = good;
    auto h = format::Load<FileHeader>(b.data());
    h.format_version = format::kFormatVersion + 1;
    h.min_read_version = format::kFormatVersion + 1;
    h.header_checksum = format::Checksum(&h, 504, 0);
    format::Store(b.data(), h);
    auto r = DecodeHeader(b.data(), b.size(), &hb);
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == Status::Code::kVersionTooNew);
  }
  SUBCASE("newer format_version that this build may still read") {
    std::vector<uint8_t> b = good;
    auto h = format::Load<FileHeader>(b.data());
    h.format_version = format::kFormatVersion + 5;  // never an exact-equality check
    h.min_write_version = format::kFormatVersion + 5;
    h.header_checksum = format::Checksum(&h, 504, 0);
    format::Store(b.data(), h);
    auto r = DecodeHeader(b.data(), b.size(), &hb);
    CHECK_MESSAGE(r.ok(), r.status().ToString());
  }
  SUBCASE("a flipped bit in the checksummed header") {
    std::vector<uint8_t> b = good;
    b[60] ^= 0x10;  // num_layers
    auto r = DecodeHeader(b.data(), b.size(), &hb);
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == Status::Code::kCorruption);
  }
  SUBCASE("a flipped bit in the centring extension") {
    std::vector<uint8_t> b = good;
    b[512 + 9] ^= 0x01;
    auto r = DecodeHeader(b.data(), b.size(), &hb);
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == Status::Code::kCorruption);
  }
}

TEST_CASE("segment layout arithmetic") {
  for (uint32_t heads : {1u, 2u}) {
    for (uint32_t bits : {64u, 128u}) {
      for (uint32_t dim : {64u, 128u}) {
        for (uint32_t n : {1u, 2u, 3u, 64u, 1000u}) {
          CAPTURE(heads);
          CAPTURE(bits);
          CAPTURE(dim);
          CAPTURE(n);
          const ArchiveSpec spec = test::SmallSpec(heads, bits, false, dim);
          const uint64_t rb = 104 * dim / 64, sb = bits / 8, L = 2;
          CHECK(spec.record_bytes() == rb);
          CHECK(spec.signature_bytes() == sb);
          CHECK(spec.heads_per_token() == L * heads);
          CHECK(spec.bytes_per_token() == L * heads * (rb + sb) + 8);
          const SegmentLayout s = SegmentLayout::For(spec, n);
          CHECK(s.token_count == n);
          CHECK(s.layer_records_bytes == heads * n * rb);
          CHECK(s.layer_signatures_bytes == heads * n * sb);
          CHECK(s.records_offset == 0);
          CHECK(s.signatures_offset == L * heads * n * rb);
          CHECK(s.token_ids_offset == s.signatures_offset + L * heads * n * sb);
          CHECK(s.positions_offset == s.token_ids_offset + format::AlignUp(4ull * n));
          CHECK(s.trailer_offset == s.positions_offset + format::AlignUp(4ull * n));
          CHECK(s.trailer_entries == 2 * L + 2);
          CHECK(s.body_bytes == s.trailer_offset + 8ull * (2 * L + 2));
          // Every section starts on 8 bytes, as the format promises.
          CHECK(s.signatures_offset % 8 == 0);
          CHECK(s.token_ids_offset % 8 == 0);
          CHECK(s.positions_offset % 8 == 0);
          CHECK(s.trailer_offset % 8 == 0);
          CHECK(s.body_bytes % 8 == 0);
        }
      }
    }
  }
}

TEST_CASE("checksums are XXH3-64 seeded with the offset") {
  std::vector<uint8_t> data(300);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 7);
  const uint64_t at0 = format::Checksum(data.data(), data.size(), 0);
  const uint64_t at512 = format::Checksum(data.data(), data.size(), 512);
  const uint64_t at520 = format::Checksum(data.data(), data.size(), 520);
  CHECK(at0 == XXH3_64bits_withSeed(data.data(), data.size(), 0));
  CHECK(at512 == XXH3_64bits_withSeed(data.data(), data.size(), 512));
  // The same bytes at another offset do not pass: a misdirected block fails its check.
  CHECK(at0 != at512);
  CHECK(at512 != at520);
  CHECK(format::Checksum(data.data(), data.size(), 512) == at512);  // and it is deterministic
  data[17] ^= 1;
  CHECK(format::Checksum(data.data(), data.size(), 512) != at512);
}

TEST_CASE("CheckSameModel names the field that differs") {
  const ModelFingerprint base = test::SmallSpec().model;
  CHECK(CheckSameModel(base, base).ok());

  struct Case {
    const char* field;  // what the message must name
    void (*change)(ModelFingerprint&);
    const char* value;  // a value the message must show
  };
  const Case cases[] = {
      {"architecture", [](ModelFingerprint& m) { m.architecture = "mistral"; }, "mistral"},
      {"num_layers", [](ModelFingerprint& m) { m.num_layers = 37; }, "37"},
      {"num_q_heads", [](ModelFingerprint& m) { m.num_q_heads = 38; }, "38"},
      {"num_kv_heads", [](ModelFingerprint& m) { m.num_kv_heads = 39; }, "39"},
      {"head_dim", [](ModelFingerprint& m) { m.head_dim = 576; }, "576"},
      {"vocab_size", [](ModelFingerprint& m) { m.vocab_size = 12345; }, "12345"},
      {"weights", [](ModelFingerprint& m) { m.weights_hash = 0xABCDEF12ull; }, "abcdef12"},
      {"tokenizer", [](ModelFingerprint& m) { m.tokenizer_hash = 0x77665544ull; }, "77665544"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.field);
    ModelFingerprint other = base;
    c.change(other);
    const Status s = CheckSameModel(base, other);
    REQUIRE_FALSE(s.ok());
    CHECK(s.code() == Status::Code::kIncompatible);
    INFO(s.ToString());
    CHECK(Contains(s.message(), c.field));
    CHECK(Contains(s.message(), c.value));
  }
}

void CheckCheckpointRoundTrip(const HotCheckpoint& cp) {
  auto raw = SerializeCheckpoint(cp);
  REQUIRE_MESSAGE(raw.ok(), raw.status().ToString());
  CHECK(raw->size() % 8 == 0);
  CHECK(raw->size() >= format::kCheckpointHeaderBytes + 2 * cp.tensor_bytes());
  const auto h = format::Load<CheckpointHeader>(raw->data());
  CHECK(h.magic == format::kCheckpointMagic);
  CHECK(h.token_count == cp.token_count());
  CHECK(h.dtype == cp.dtype);
  CHECK(h.extra_bytes == cp.extra.size());
  auto parsed = ParseCheckpoint(raw->data(), raw->size());
  REQUIRE_MESSAGE(parsed.ok(), parsed.status().ToString());
  CHECK(*parsed == cp);

  auto stored = CompressCheckpoint(cp);
  REQUIRE_MESSAGE(stored.ok(), stored.status().ToString());
  CHECK(stored->raw_bytes == raw->size());
  CHECK((stored->codec == format::kCheckpointZstd || stored->codec == format::kCheckpointRaw));
  if (stored->codec == format::kCheckpointRaw) CHECK(stored->bytes == *raw);
  auto back = DecompressCheckpoint(stored->codec, stored->bytes.data(), stored->bytes.size(),
                                   stored->raw_bytes);
  REQUIRE_MESSAGE(back.ok(), back.status().ToString());
  CHECK(*back == cp);

  // A cut-short or padded stored form is refused, never half-read.
  if (!stored->bytes.empty()) {
    auto shorter = DecompressCheckpoint(stored->codec, stored->bytes.data(),
                                        stored->bytes.size() - 1, stored->raw_bytes);
    CHECK_FALSE(shorter.ok());
  }
  auto wrong_raw = DecompressCheckpoint(stored->codec, stored->bytes.data(), stored->bytes.size(),
                                        stored->raw_bytes + 8);
  CHECK_FALSE(wrong_raw.ok());
  CHECK_FALSE(ParseCheckpoint(raw->data(), raw->size() - 8).ok());
}

TEST_CASE("checkpoint serialize/parse and compress/decompress round trips") {
  const ArchiveSpec spec = test::SmallSpec(2, 64);
  SUBCASE("f32 with tokens") { CheckCheckpointRoundTrip(test::MakeCheckpoint(spec, 3, 5)); }
  SUBCASE("bf16 with an odd token count") {
    CheckCheckpointRoundTrip(test::MakeCheckpoint(spec, 4, 3, format::kDtypeBF16));
  }
  SUBCASE("f16") { CheckCheckpointRoundTrip(test::MakeCheckpoint(spec, 5, 2, format::kDtypeF16)); }
  SUBCASE("no tokens, shape given") { CheckCheckpointRoundTrip(test::MakeCheckpoint(spec, 6, 0)); }
  SUBCASE("default-constructed (the creating commit's)") { CheckCheckpointRoundTrip({}); }
  SUBCASE("repetitive data compresses") {
    HotCheckpoint cp = test::MakeCheckpoint(spec, 1, 64);
    std::fill(cp.keys.begin(), cp.keys.end(), uint8_t{0});
    auto stored = CompressCheckpoint(cp);
    REQUIRE(stored.ok());
    CHECK(stored->codec == format::kCheckpointZstd);
    CHECK(stored->bytes.size() < stored->raw_bytes);
    CheckCheckpointRoundTrip(cp);
  }
  SUBCASE("DtypeBytes") {
    CHECK(DtypeBytes(format::kDtypeF32) == 4);
    CHECK(DtypeBytes(format::kDtypeBF16) == 2);
    CHECK(DtypeBytes(format::kDtypeF16) == 2);
    CHECK(DtypeBytes(0) == 0);
    CHECK(DtypeBytes(99) == 0);
  }
}

TEST_CASE("checkpoints that do not add up are refused") {
  const ArchiveSpec spec = test::SmallSpec(1, 64);
  const HotCheckpoint good = test::MakeCheckpoint(spec, 9, 4);
  SUBCASE("keys of the wrong size") {
    HotCheckpoint cp = good;
    cp.keys.pop_back();
    CHECK_FALSE(SerializeCheckpoint(cp).ok());
  }
  SUBCASE("values of the wrong size") {
    HotCheckpoint cp = good;
    cp.values.push_back(0);
    CHECK_FALSE(SerializeCheckpoint(cp).ok());
  }
  SUBCASE("positions and ids disagree") {
    HotCheckpoint cp = good;
    cp.positions.pop_back();
    CHECK_FALSE(SerializeCheckpoint(cp).ok());
  }
  SUBCASE("unknown dtype") {
    HotCheckpoint cp = good;
    cp.dtype = 77;
    CHECK_FALSE(SerializeCheckpoint(cp).ok());
    CHECK_FALSE(CompressCheckpoint(cp).ok());
  }
  SUBCASE("parse: bad magic, garbage, unknown codec") {
    auto raw = SerializeCheckpoint(good);
    REQUIRE(raw.ok());
    std::vector<uint8_t> b = *raw;
    b[0] ^= 0xFF;
    CHECK_FALSE(ParseCheckpoint(b.data(), b.size()).ok());
    CHECK_FALSE(ParseCheckpoint(raw->data(), 31).ok());
    CHECK_FALSE(ParseCheckpoint(raw->data(), 0).ok());
    std::vector<uint8_t> junk(64, 0x5A);
    CHECK_FALSE(DecompressCheckpoint(format::kCheckpointZstd, junk.data(), junk.size(), 200).ok());
    CHECK_FALSE(DecompressCheckpoint(7, raw->data(), raw->size(), raw->size()).ok());
  }
}

TEST_CASE("Validate accepts good specs and names what is wrong in bad ones") {
  CHECK(test::SmallSpec().Validate().ok());
  CHECK(test::SmallSpec(2, 128, true, 128).Validate().ok());

  struct Case {
    const char* what;
    void (*change)(ArchiveSpec&);
  };
  const Case cases[] = {
      {"head_dim 32", [](ArchiveSpec& s) { s.model.head_dim = 32; }},
      {"head_dim 96", [](ArchiveSpec& s) { s.model.head_dim = 96; }},
      {"head_dim 0", [](ArchiveSpec& s) { s.model.head_dim = 0; }},
      {"head_dim too large", [](ArchiveSpec& s) { s.model.head_dim = format::kMaxHeadDim + 64; }},
      {"signature_bits 100", [](ArchiveSpec& s) { s.codec.signature_bits = 100; }},
      {"signature_bits 0", [](ArchiveSpec& s) { s.codec.signature_bits = 0; }},
      {"signature_bits too many",
       [](ArchiveSpec& s) { s.codec.signature_bits = format::kMaxSignatureBits + 64; }},
      {"0 layers", [](ArchiveSpec& s) { s.model.num_layers = 0; }},
      {"too many layers", [](ArchiveSpec& s) { s.model.num_layers = format::kMaxLayers + 1; }},
      {"0 kv heads", [](ArchiveSpec& s) { s.model.num_kv_heads = 0; }},
      {"too many kv heads",
       [](ArchiveSpec& s) { s.model.num_kv_heads = s.model.num_q_heads = format::kMaxHeads + 1; }},
      {"empty architecture", [](ArchiveSpec& s) { s.model.architecture.clear(); }},
      {"architecture too long", [](ArchiveSpec& s) { s.model.architecture.assign(32, 'x'); }},
      {"unknown codec", [](ArchiveSpec& s) { s.codec.codec_id = 99; }},
      {"centred without vectors", [](ArchiveSpec& s) { s.codec.centred = true; }},
      {"centring of the wrong length", [](ArchiveSpec& s) {
         s.codec.centred = true;
         s.codec.centring.assign(5, 1.0f);
       }},
  };
  for (const Case& c : cases) {
    CAPTURE(c.what);
    ArchiveSpec spec = test::SmallSpec();
    c.change(spec);
    const Status s = spec.Validate();
    CHECK_FALSE(s.ok());
    CHECK(s.code() == Status::Code::kInvalidArgument);
    CHECK_FALSE(s.message().empty());
  }
}

}  // namespace
}  // namespace kiv
