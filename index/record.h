// The cold-tier record: one token's key and value for one 64-dim slice of one kv-head, in exactly
// 104 bytes. See ../docs/format.md "Records" for the byte layout and the rounding.
//
// Keys are quantized to `key_bits` and values to `value_bits` (key_bits + value_bits = 12), each
// with a per-record fp16 scale and minimum (asymmetric, round to nearest even). With `rotate`, the
// key is first multiplied by the orthonormal 64×64 Hadamard matrix H/8, which spreads outlier
// channels over all 64 so 4-bit steps fit them better; q·k is the same in the rotated space, so
// retrieval re-ranks there (RotateQuery) and only attention needs the key rotated back.
#pragma once

#include <cstdint>

namespace kiv::index {

inline constexpr uint32_t kRecordBytes = 104;
inline constexpr uint32_t kRecordDim = 64;

struct RecordCodec {
  uint32_t key_bits = 4;
  uint32_t value_bits = 8;
  bool rotate = true;

  // The archive's codec_id for this codec, or 0 if it has none.
  uint32_t id() const;
  static bool FromId(uint32_t id, RecordCodec* out);

  void Encode(const float* key, const float* value, uint8_t* record) const;  // 64 + 64 floats
  void Decode(const uint8_t* record, float* key, float* value) const;        // key unrotated
  // The key as stored: rotated when `rotate` (for dot products with RotateQuery'd queries).
  void DecodeStoredKey(const uint8_t* record, float* key) const;
  void DecodeValue(const uint8_t* record, float* value) const;
  // q → (H/8) q when `rotate`, else a copy. (H/8)q · (H/8)k = q · k.
  void RotateQuery(const float* query, float* out) const;
};

// In place: x ← (H/8) x for the 64-dim Sylvester Hadamard matrix H (its own inverse up to 64).
void Hadamard64(float* x);

}  // namespace kiv::index
