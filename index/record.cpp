#include "index/record.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstring>

#include "index/half.h"
#include "storage/format.h"

namespace kiv::index {
namespace {

// Codec ids as the archive stores them (docs/format.md "Records").
struct CodecIdEntry {
  uint32_t id, key_bits, value_bits;
  bool rotate;
};
constexpr CodecIdEntry kCodecIds[] = {
    {format::kCodecK4V8, 4, 8, false},
    {format::kCodecK4V8Rotated, 4, 8, true},
    {format::kCodecK6V6Rotated, 6, 6, true},
    {format::kCodecK5V7Rotated, 5, 7, true},
};

// The quantization grid of one 64-float vector: value = min + q · scale, both as stored (fp16).
struct Grid {
  uint16_t scale_h, min_h;
  float scale, min;
};

Grid MakeGrid(const float* x, uint32_t bits) {
  float lo = x[0], hi = x[0];
  for (uint32_t i = 1; i < kRecordDim; ++i) {
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
  }
  const float levels = static_cast<float>((1u << bits) - 1);
  constexpr float kHalfMax = 65504.0f;  // beyond it a grid cannot be stored: values are clamped
  lo = std::clamp(lo, -kHalfMax, kHalfMax);
  hi = std::clamp(hi, -kHalfMax, kHalfMax);
  Grid g;
  g.min_h = FloatToHalf(lo);
  g.min = HalfToFloat(g.min_h);
  // The scale is rounded up in fp16 so that (hi − min) / scale never exceeds the top level by
  // more than rounding; values past it are clamped.
  g.scale_h = FloatToHalf(std::min((hi - g.min) / levels, kHalfMax));
  g.scale = HalfToFloat(g.scale_h);
  if (g.scale * levels + g.min < hi && g.scale < kHalfMax) {
    ++g.scale_h;  // the next fp16 up: the grid reaches hi
    g.scale = HalfToFloat(g.scale_h);
  }
  return g;
}

// x rounded to the nearest integer, ties to even: std::nearbyint in the default rounding mode,
// without its library call (it saves and restores the floating-point environment). Adding
// 1.5 · 2^23 leaves a float whose unit in the last place is 1, so the add rounds; below 2^22 in
// magnitude that is exact, beyond it x is an integer already.
float RoundHalfEven(float x) {
  constexpr float kMagic = 12582912.0f;  // 1.5 · 2^23
  return std::fabs(x) < 4194304.0f ? (x + kMagic) - kMagic : x;
}

// Little-endian bit stream: element i occupies bits [i · bits, (i + 1) · bits) of `out`.
void Pack(const float* x, const Grid& g, uint32_t bits, uint8_t* out) {
  const uint32_t top = (1u << bits) - 1;
  uint64_t acc = 0;  // bits not yet written, lowest first
  uint32_t held = 0;
  for (uint32_t i = 0; i < kRecordDim; ++i) {
    uint32_t q = 0;
    if (g.scale > 0.0f) {
      const float t = RoundHalfEven((x[i] - g.min) / g.scale);
      q = static_cast<uint32_t>(std::clamp(t, 0.0f, static_cast<float>(top)));
    }
    acc |= uint64_t{q} << held;
    for (held += bits; held >= 8; held -= 8, acc >>= 8) *out++ = uint8_t(acc);
  }
}

void Unpack(const uint8_t* in, uint16_t scale_h, uint16_t min_h, uint32_t bits, float* x) {
  const float scale = HalfToFloat(scale_h), min = HalfToFloat(min_h);
  const uint32_t mask = (1u << bits) - 1;
  uint64_t acc = 0;  // bits read, not yet used, lowest first
  uint32_t held = 0;
  for (uint32_t i = 0; i < kRecordDim; ++i) {
    for (; held < bits; held += 8) acc |= uint64_t{*in++} << held;
    x[i] = min + static_cast<float>(uint32_t(acc) & mask) * scale;
    acc >>= bits;
    held -= bits;
  }
}

uint16_t Load16(const uint8_t* p) { return uint16_t(p[0] | (p[1] << 8)); }
void Store16(uint8_t* p, uint16_t v) {
  p[0] = uint8_t(v);
  p[1] = uint8_t(v >> 8);
}

}  // namespace

void Hadamard64(float* x) {
  for (uint32_t len = 1; len < kRecordDim; len <<= 1) {
    for (uint32_t i = 0; i < kRecordDim; i += 2 * len) {
      for (uint32_t j = i; j < i + len; ++j) {
        const float a = x[j], b = x[j + len];
        x[j] = a + b;
        x[j + len] = a - b;
      }
    }
  }
  for (uint32_t i = 0; i < kRecordDim; ++i) x[i] *= 0.125f;  // 1/sqrt(64): exact
}

uint32_t RecordCodec::id() const {
  for (const CodecIdEntry& e : kCodecIds)
    if (e.key_bits == key_bits && e.value_bits == value_bits && e.rotate == rotate) return e.id;
  return 0;
}

bool RecordCodec::FromId(uint32_t id, RecordCodec* out) {
  for (const CodecIdEntry& e : kCodecIds) {
    if (e.id == id) {
      *out = RecordCodec{e.key_bits, e.value_bits, e.rotate};
      return true;
    }
  }
  return false;
}

// Layout: [key bits: 8·key_bits bytes][key scale, key min: fp16 each]
//         [value bits: 8·value_bits bytes][value scale, value min: fp16 each]
void RecordCodec::Encode(const float* key, const float* value, uint8_t* record) const {
  assert(key_bits + value_bits == 12 && key_bits >= 1 && value_bits >= 1);
  float k[kRecordDim];
  std::memcpy(k, key, sizeof k);
  if (rotate) Hadamard64(k);
  const uint32_t kb = kRecordDim * key_bits / 8, vb = kRecordDim * value_bits / 8;
  const Grid gk = MakeGrid(k, key_bits), gv = MakeGrid(value, value_bits);
  Pack(k, gk, key_bits, record);
  Store16(record + kb, gk.scale_h);
  Store16(record + kb + 2, gk.min_h);
  uint8_t* v = record + kb + 4;
  Pack(value, gv, value_bits, v);
  Store16(v + vb, gv.scale_h);
  Store16(v + vb + 2, gv.min_h);
}

void RecordCodec::DecodeStoredKey(const uint8_t* record, float* key) const {
  const uint32_t kb = kRecordDim * key_bits / 8;
  Unpack(record, Load16(record + kb), Load16(record + kb + 2), key_bits, key);
}

void RecordCodec::DecodeValue(const uint8_t* record, float* value) const {
  const uint32_t kb = kRecordDim * key_bits / 8, vb = kRecordDim * value_bits / 8;
  const uint8_t* v = record + kb + 4;
  Unpack(v, Load16(v + vb), Load16(v + vb + 2), value_bits, value);
}

void RecordCodec::Decode(const uint8_t* record, float* key, float* value) const {
  DecodeStoredKey(record, key);
  if (rotate) Hadamard64(key);  // (H/8)(H/8) = I
  DecodeValue(record, value);
}

void RecordCodec::RotateQuery(const float* query, float* out) const {
  std::memcpy(out, query, kRecordDim * sizeof(float));
  if (rotate) Hadamard64(out);
}

}  // namespace kiv::index
