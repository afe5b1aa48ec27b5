// What an archive is about: the model it belongs to and how its tokens are encoded. The file
// header (format.h) is this struct's on-disk form; DecodeHeader/EncodeHeader move between them.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "storage/format.h"
#include "storage/status.h"

namespace kiv {

// Identifies the model an archive was made with. Opening an archive with a different model is
// refused (CheckSameModel) because its keys and values mean nothing to another model.
struct ModelFingerprint {
  std::string architecture;  // at most 31 bytes, e.g. "llama"
  uint32_t num_layers = 0;
  uint32_t num_q_heads = 0;
  uint32_t num_kv_heads = 0;
  uint32_t head_dim = 0;
  uint32_t vocab_size = 0;
  uint64_t weights_hash = 0;
  uint64_t tokenizer_hash = 0;
};

struct CodecParams {
  uint32_t codec_id = format::kCodecDefault;
  uint32_t signature_bits = 128;
  uint64_t projection_seed = 0;
  uint32_t sinks = 4;
  uint32_t hot_window = 256;
  bool centred = false;
  std::vector<float> centring;  // [L][H_kv][d] when centred, else empty
};

struct ArchiveSpec {
  ModelFingerprint model;
  CodecParams codec;

  uint32_t record_bytes() const { return format::kRecordBytesPer64 * (model.head_dim / 64); }
  uint32_t signature_bytes() const { return codec.signature_bits / 8; }
  uint64_t heads_per_token() const {
    return uint64_t{model.num_layers} * model.num_kv_heads;
  }
  // Bytes one token adds to the archive's records and signatures (ids and positions aside).
  uint64_t bytes_per_token() const {
    return heads_per_token() * (record_bytes() + signature_bytes()) + 8;
  }
  // Every field in range and consistent; the message names the first that is not.
  Status Validate() const;
};

// Where each section of a segment of `token_count` tokens lies, relative to the segment's body
// (the byte after its block header). See docs/format.md "Segments".
struct SegmentLayout {
  uint32_t token_count = 0;
  uint64_t records_offset = 0;     // [L][H_kv][n][record_bytes]
  uint64_t signatures_offset = 0;  // [L][H_kv][n][signature_bytes]
  uint64_t token_ids_offset = 0;   // u32[n], padded to 8
  uint64_t positions_offset = 0;   // u32[n], padded to 8
  uint64_t trailer_offset = 0;     // u64[2L + 2] checksums
  uint64_t body_bytes = 0;
  uint64_t layer_records_bytes = 0;     // one layer's records, all heads
  uint64_t layer_signatures_bytes = 0;  // one layer's signatures, all heads
  uint32_t trailer_entries = 0;         // 2L + 2

  static SegmentLayout For(const ArchiveSpec& spec, uint32_t token_count);
};

// Header bytes <-> spec. Encode writes the 512-byte header followed by the extension.
std::vector<uint8_t> EncodeHeader(const ArchiveSpec& spec);
// Decodes and checks the header at the start of `data` (size bytes available). On success,
// *header_bytes is the offset of the first block.
Result<ArchiveSpec> DecodeHeader(const uint8_t* data, uint64_t size, uint64_t* header_bytes);

// Ok when `have` (the archive's) and `want` (the caller's model) are the same model; otherwise an
// Incompatible status naming the first field that differs and both values.
Status CheckSameModel(const ModelFingerprint& have, const ModelFingerprint& want);

}  // namespace kiv
