#include "index/record.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "index/half.h"
#include "index/signature.h"

using namespace kiv::index;

namespace {
constexpr RecordCodec kCodecs[] = {{4, 8, false}, {4, 8, true}, {6, 6, true}, {5, 7, true}};

void RandomVector(uint64_t* state, float* out, float scale) {
  for (uint32_t i = 0; i < 64; ++i)
    out[i] = scale * (static_cast<float>(SplitMix64(state) >> 40) / float(1 << 24) - 0.5f);
}

float MaxAbs(const float* x) {
  float m = 0;
  for (int i = 0; i < 64; ++i) m = std::max(m, std::fabs(x[i]));
  return m;
}
}  // namespace

TEST_CASE("a record is 104 bytes and every codec has an id") {
  CHECK(kRecordBytes == 104);
  for (const RecordCodec& c : kCodecs) {
    CHECK(64 * (c.key_bits + c.value_bits) / 8 + 8 == kRecordBytes);
    RecordCodec back;
    REQUIRE(RecordCodec::FromId(c.id(), &back));
    CHECK(back.key_bits == c.key_bits);
    CHECK(back.value_bits == c.value_bits);
    CHECK(back.rotate == c.rotate);
  }
  RecordCodec none;
  CHECK_FALSE(RecordCodec::FromId(99, &none));
}

TEST_CASE("Hadamard64 is orthonormal and its own inverse") {
  uint64_t state = 5;
  float x[64], y[64];
  RandomVector(&state, x, 4.0f);
  std::memcpy(y, x, sizeof x);
  Hadamard64(y);
  double nx = 0, ny = 0;
  for (int i = 0; i < 64; ++i) nx += x[i] * x[i], ny += y[i] * y[i];
  CHECK(ny == doctest::Approx(nx).epsilon(1e-5));
  Hadamard64(y);
  for (int i = 0; i < 64; ++i) CHECK(y[i] == doctest::Approx(x[i]).epsilon(1e-5));
}

TEST_CASE("decoding is within half a quantization step of the input") {
  uint64_t state = 17;
  for (const RecordCodec& c : kCodecs) {
    for (int trial = 0; trial < 300; ++trial) {
      float k[64], v[64], kd[64], vd[64], ks[64], krot[64];
      RandomVector(&state, k, trial % 2 ? 30.0f : 0.5f);
      RandomVector(&state, v, trial % 3 ? 2.0f : 0.01f);
      k[trial % 64] *= 20.0f;  // an outlier channel, as real keys have
      uint8_t rec[kRecordBytes];
      c.Encode(k, v, rec);
      c.Decode(rec, kd, vd);
      c.DecodeStoredKey(rec, ks);
      c.RotateQuery(k, krot);  // the stored key is the rotated key
      // The grid: steps of (max - min) / (2^bits - 1), with fp16 rounding of scale and minimum.
      float lo = krot[0], hi = krot[0];
      for (float x : krot) lo = std::min(lo, x), hi = std::max(hi, x);
      const float kstep = (hi - lo) / float((1u << c.key_bits) - 1);
      for (int i = 0; i < 64; ++i) CHECK(std::fabs(ks[i] - krot[i]) <= 0.5f * kstep * 1.01f + 1e-3f * MaxAbs(krot));
      float vlo = v[0], vhi = v[0];
      for (float x : v) vlo = std::min(vlo, x), vhi = std::max(vhi, x);
      const float vstep = (vhi - vlo) / float((1u << c.value_bits) - 1);
      for (int i = 0; i < 64; ++i) CHECK(std::fabs(vd[i] - v[i]) <= 0.5f * vstep * 1.01f + 1e-3f * MaxAbs(v));
      // Unrotating gives back the key within the same error in norm.
      double err = 0, err_stored = 0;
      for (int i = 0; i < 64; ++i) err += (kd[i] - k[i]) * (kd[i] - k[i]), err_stored += (ks[i] - krot[i]) * (ks[i] - krot[i]);
      CHECK(std::sqrt(err) == doctest::Approx(std::sqrt(err_stored)).epsilon(1e-3).scale(1e-3));
    }
  }
}

TEST_CASE("the K4V8 byte layout is the one docs/format.md gives") {
  const RecordCodec c{4, 8, false};
  float k[64], v[64];
  for (int i = 0; i < 64; ++i) k[i] = float(i % 16), v[i] = float(i) * 2.0f;  // exact grids
  uint8_t rec[kRecordBytes];
  c.Encode(k, v, rec);
  // Keys: element 2i in the low nibble of byte i, 2i+1 in the high nibble; scale 1, min 0.
  for (int i = 0; i < 32; ++i) CHECK(rec[i] == uint8_t(((2 * i) % 16) | ((((2 * i + 1) % 16)) << 4)));
  CHECK((rec[32] | rec[33] << 8) == FloatToHalf(1.0f));
  CHECK((rec[34] | rec[35] << 8) == FloatToHalf(0.0f));
  // Values: one byte each from offset 36; scale (126 / 255), min 0 at 100..103.
  CHECK((rec[102] | rec[103] << 8) == FloatToHalf(0.0f));
  const float vscale = HalfToFloat(uint16_t(rec[100] | rec[101] << 8));
  for (int i = 0; i < 64; ++i) CHECK(std::fabs(rec[36 + i] * vscale - v[i]) <= 0.5f * vscale);
  float kd[64], vd[64];
  c.Decode(rec, kd, vd);
  for (int i = 0; i < 64; ++i) CHECK(kd[i] == k[i]);
}

TEST_CASE("a constant vector and huge values are stored without NaN") {
  for (const RecordCodec& c : kCodecs) {
    float k[64], v[64], kd[64], vd[64];
    for (int i = 0; i < 64; ++i) k[i] = 3.0f, v[i] = (i % 2 ? 1e6f : -1e6f);
    uint8_t rec[kRecordBytes];
    c.Encode(k, v, rec);
    c.Decode(rec, kd, vd);
    for (int i = 0; i < 64; ++i) {
      CHECK(std::isfinite(kd[i]));
      CHECK(std::isfinite(vd[i]));
      CHECK(std::fabs(vd[i]) <= 65504.0f * 1.01f);  // clamped to the fp16 range, sign kept
      CHECK((vd[i] > 0) == (v[i] > 0));
    }
    if (!c.rotate) for (int i = 0; i < 64; ++i) CHECK(kd[i] == 3.0f);
  }
}

namespace {
// The plain per-bit forms of the codec's packing, as first written: element i's q in bits
// [i · bits, (i + 1) · bits) of a little-endian stream, q = nearbyint((x − min) / scale) clamped.
std::vector<uint8_t> PackReference(const float* x, uint16_t scale_h, uint16_t min_h, uint32_t bits) {
  const float scale = HalfToFloat(scale_h), min = HalfToFloat(min_h);
  const uint32_t top = (1u << bits) - 1;
  std::vector<uint8_t> out(64 * bits / 8, 0);
  for (uint32_t i = 0; i < 64; ++i) {
    uint32_t q = 0;
    if (scale > 0.0f)
      q = static_cast<uint32_t>(std::clamp(std::nearbyint((x[i] - min) / scale), 0.0f, float(top)));
    for (uint32_t b = 0; b < bits; ++b)
      if (q & (1u << b)) out[(i * bits + b) / 8] |= uint8_t(1u << ((i * bits + b) % 8));
  }
  return out;
}

void UnpackReference(const uint8_t* in, uint16_t scale_h, uint16_t min_h, uint32_t bits, float* x) {
  const float scale = HalfToFloat(scale_h), min = HalfToFloat(min_h);
  for (uint32_t i = 0; i < 64; ++i) {
    uint32_t q = 0;
    for (uint32_t b = 0; b < bits; ++b)
      q |= uint32_t((in[(i * bits + b) / 8] >> ((i * bits + b) % 8)) & 1) << b;
    x[i] = min + static_cast<float>(q) * scale;
  }
}
}  // namespace

TEST_CASE("packing and unpacking equal the per-bit reference, for every codec") {
  uint64_t state = 17;
  int records = 0;
  for (const RecordCodec& c : kCodecs) {
    CAPTURE(c.key_bits);
    CAPTURE(c.rotate);
    const uint32_t kb = 64 * c.key_bits / 8, vb = 64 * c.value_bits / 8;
    for (int trial = 0; trial < 500; ++trial) {
      float k[64], v[64];
      // Scales from tiny to large, and values on exact grid points (ties to even matter).
      RandomVector(&state, k, trial % 3 == 0 ? 1e-3f : trial % 3 == 1 ? 8.0f : 3000.0f);
      RandomVector(&state, v, trial % 2 ? 0.5f : 40.0f);
      if (trial % 5 == 0)
        for (int i = 0; i < 64; ++i) v[i] = float(i % 7) * 0.5f;
      uint8_t rec[kRecordBytes];
      c.Encode(k, v, rec);
      float kr[64];
      std::memcpy(kr, k, sizeof kr);
      if (c.rotate) Hadamard64(kr);
      auto load16 = [&](size_t at) { return uint16_t(rec[at] | rec[at + 1] << 8); };
      const std::vector<uint8_t> want_k = PackReference(kr, load16(kb), load16(kb + 2), c.key_bits);
      const std::vector<uint8_t> want_v =
          PackReference(v, load16(kb + 4 + vb), load16(kb + 4 + vb + 2), c.value_bits);
      CHECK(std::memcmp(rec, want_k.data(), kb) == 0);
      CHECK(std::memcmp(rec + kb + 4, want_v.data(), vb) == 0);
      float got_k[64], got_v[64], ref_k[64], ref_v[64];
      c.DecodeStoredKey(rec, got_k);
      c.DecodeValue(rec, got_v);
      UnpackReference(rec, load16(kb), load16(kb + 2), c.key_bits, ref_k);
      UnpackReference(rec + kb + 4, load16(kb + 4 + vb), load16(kb + 4 + vb + 2), c.value_bits,
                      ref_v);
      CHECK(std::memcmp(got_k, ref_k, sizeof got_k) == 0);
      CHECK(std::memcmp(got_v, ref_v, sizeof got_v) == 0);
      ++records;
    }
  }
  CHECK(records == 2000);
}
