// kernels/encode (records, signatures and key norms of evicted tokens) against the CPU code it
// replaces: RecordCodec::Encode, SignatureProjection::Sign and the norm of the decoded stored key,
// bit for bit, for every codec with an archive id, head_dim 64 and 128, float32 and bf16 inputs,
// signatures of 64, 128 and 256 bits, and rows that reach the codec's edge cases (constant rows:
// a zero scale; values past fp16's range: clamped grids; −0 beside +0; fp16-subnormal steps).
#include "kernels/encode.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "index/record.h"
#include "index/signature.h"
#include "storage/format.h"
#include "tests/kernels/kernel_test_util.h"

using namespace kiv;
using namespace kiv::kernels;
using namespace kiv::kernels::test;

namespace {

// Row r of `count` tokens' worth of d values: mostly Gaussian-like, with edge-case rows mixed in.
std::vector<float> MakeRows(uint32_t rows, uint32_t d, Rng& rng, bool bf16) {
  std::vector<float> x(size_t{rows} * d);
  for (uint32_t r = 0; r < rows; ++r) {
    float* row = x.data() + size_t{r} * d;
    const uint32_t kind = r % 7;
    for (uint32_t i = 0; i < d; ++i) {
      float v = (rng.Uniform() + rng.Uniform() + rng.Uniform()) * 4.0f;
      if (kind == 1) v = 0.75f;                                   // constant: scale 0
      if (kind == 2) v = (i % 3 == 0) ? -0.0f : (i % 3 == 1 ? 0.0f : std::fabs(v));  // ±0 minimum
      if (kind == 3 && i % 9 == 0) v *= 40000.0f;                 // past 65504: clamped grid
      if (kind == 4) v *= 1e-5f;                                   // steps among fp16 subnormals
      if (kind == 5 && i == 5) v = -1000.0f;                       // one outlier channel
      row[i] = bf16 ? Bf16ToFloat(FloatToBf16(v)) : v;
    }
  }
  return x;
}

struct Case {
  uint32_t codec_id, d, bits, slots, count;
  bool bf16, norms;
};

void RunCase(const Case& c) {
  CAPTURE(c.codec_id);
  CAPTURE(c.d);
  CAPTURE(c.bits);
  CAPTURE(c.count);
  CAPTURE(c.bf16);
  index::RecordCodec codec;
  REQUIRE(index::RecordCodec::FromId(c.codec_id, &codec));
  const index::SignatureProjection projection(0x6b6976 + c.bits, c.bits, c.d);
  const uint32_t slices = c.d / 64, words = c.bits / 64;
  const uint64_t stride = uint64_t{c.count + 5} * c.d;  // slots apart by more than count rows
  Rng rng{uint64_t{c.codec_id} * 1000 + c.d + c.count + c.bf16};
  const std::vector<float> keys = MakeRows(uint32_t(stride / c.d) * c.slots, c.d, rng, c.bf16);
  const std::vector<float> values = MakeRows(uint32_t(stride / c.d) * c.slots, c.d, rng, c.bf16);

  // The CPU's bytes, signatures and norms.
  const size_t items = size_t{c.slots} * c.count;
  std::vector<uint8_t> want_records(items * slices * index::kRecordBytes);
  std::vector<uint64_t> want_sigs(items * words, 0);
  std::vector<float> want_norms(items);
  for (uint32_t s = 0; s < c.slots; ++s) {
    for (uint32_t t = 0; t < c.count; ++t) {
      const size_t item = size_t{s} * c.count + t, row = s * stride + size_t{t} * c.d;
      uint8_t* rec = want_records.data() + item * slices * index::kRecordBytes;
      float norm2 = 0.0f;
      for (uint32_t k = 0; k < slices; ++k) {
        codec.Encode(keys.data() + row + k * 64, values.data() + row + k * 64,
                     rec + k * index::kRecordBytes);
        float stored[64];
        codec.DecodeStoredKey(rec + k * index::kRecordBytes, stored);
        for (float x : stored) norm2 += x * x;
      }
      want_norms[item] = std::sqrt(norm2);
      projection.Sign(keys.data() + row, nullptr, want_sigs.data() + item * words);
    }
  }

  // The device's.
  auto upload = [&](const std::vector<float>& v, DeviceBuffer<float>& f, DeviceBuffer<uint16_t>& h) {
    if (!c.bf16) {
      f.Upload(v);
      return static_cast<const void*>(f.get());
    }
    std::vector<uint16_t> b;
    for (float x : v) b.push_back(FloatToBf16(x));
    h.Upload(b);
    return static_cast<const void*>(h.get());
  };
  DeviceBuffer<float> kf(c.bf16 ? 0 : keys.size()), vf(c.bf16 ? 0 : values.size());
  DeviceBuffer<uint16_t> kh(c.bf16 ? keys.size() : 0), vh(c.bf16 ? values.size() : 0);
  DeviceBuffer<float> proj(std::vector<float>(projection.matrix(),
                                              projection.matrix() + size_t{c.bits} * c.d));
  DeviceBuffer<uint8_t> records(want_records.size());
  DeviceBuffer<uint64_t> sigs(want_sigs.size());
  DeviceBuffer<float> norms(items);
  EncodeParams p;
  p.num_slots = c.slots, p.count = c.count, p.head_dim = c.d, p.codec = codec;
  p.in_dtype = c.bf16 ? DType::kBFloat16 : DType::kFloat32;
  p.keys = upload(keys, kf, kh), p.values = upload(values, vf, vh), p.slot_stride = stride;
  p.projection = proj.get(), p.bits = c.bits;
  p.records = records.get(), p.signatures = sigs.get(), p.norms = c.norms ? norms.get() : nullptr;
  std::string error;
  REQUIRE_MESSAGE(LaunchEncode(p, nullptr, &error) == 0, error);
  KIV_CUDA_REQUIRE(cudaDeviceSynchronize());

  const std::vector<uint8_t> got_records = records.Download();
  size_t bad_records = 0;
  for (size_t i = 0; i < items * slices; ++i)
    bad_records += std::memcmp(got_records.data() + i * index::kRecordBytes,
                               want_records.data() + i * index::kRecordBytes,
                               index::kRecordBytes) != 0;
  CHECK(bad_records == 0);
  CHECK(sigs.Download() == want_sigs);
  if (c.norms) {
    const std::vector<float> got_norms = norms.Download();
    size_t bad_norms = 0;
    for (size_t i = 0; i < items; ++i)
      bad_norms += std::memcmp(&got_norms[i], &want_norms[i], 4) != 0;
    CHECK(bad_norms == 0);
  }
}

}  // namespace

TEST_CASE("the test rows reach the codec's edge cases") {
  // Checked on the CPU, so that the device comparison below covers what it claims to.
  Rng rng{1};
  const std::vector<float> x = MakeRows(7, 64, rng, true);
  index::RecordCodec codec;
  REQUIRE(index::RecordCodec::FromId(kiv::format::kCodecK4V8, &codec));
  uint8_t rec[index::kRecordBytes];
  codec.Encode(x.data() + 64, x.data() + 64, rec);  // constant row: fp16 scale 0
  CHECK((rec[32] | rec[33]) == 0);
  codec.Encode(x.data() + 128, x.data() + 128, rec);  // row 2: its minimum is −0 (stored first)
  CHECK((rec[34] | rec[35] << 8) == 0x8000);
  float largest = 0.0f;  // row 3 holds values past fp16's range: its grid is clamped
  for (uint32_t i = 0; i < 64; ++i) largest = std::max(largest, std::fabs(x[192 + i]));
  CHECK(largest > 65504.0f);
}

TEST_CASE("encoding on the GPU equals the CPU's records, signatures and norms bit for bit") {
  if (!HaveDevice()) {
    MESSAGE("skipped: no CUDA device");
    return;
  }
  using namespace kiv::format;
  for (const uint32_t codec : {kCodecK4V8, kCodecK4V8Rotated, kCodecK6V6Rotated, kCodecK5V7Rotated})
    for (const bool bf16 : {true, false})
      RunCase({codec, 64, 128, 5, 37, bf16, true});
  RunCase({kCodecK6V6Rotated, 128, 256, 3, 20, true, true});
  RunCase({kCodecK6V6Rotated, 64, 64, 2, 9, true, false});
  RunCase({kCodecK6V6Rotated, 64, 128, 90, 1024, true, false});  // a SmolLM2 prefill chunk
}

TEST_CASE("encode refuses what it does not support, naming it") {
  EncodeParams p;
  p.num_slots = 1, p.count = 1, p.head_dim = 96, p.slot_stride = 96;
  CHECK(CheckEncode(p).find("head_dim") != std::string::npos);
  p.head_dim = 64;
  p.codec = index::RecordCodec{3, 9, true};
  CHECK(CheckEncode(p).find("key_bits") != std::string::npos);
  p.codec = index::RecordCodec{6, 6, true};
  p.slot_stride = 10;
  CHECK(CheckEncode(p).find("slot_stride") != std::string::npos);
  p.slot_stride = 64;
  float dummy = 0;
  uint8_t rec = 0;
  p.keys = p.values = &dummy, p.records = &rec, p.projection = &dummy, p.bits = 96;
  CHECK(CheckEncode(p).find("bits") != std::string::npos);
  p.bits = 128;
  CHECK(CheckEncode(p).find("signatures") != std::string::npos);
}
