#include "index/record.h"

#include <doctest/doctest.h>

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
