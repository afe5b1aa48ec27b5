// The exact hot tier, as a commit carries it, so a reopened session continues exactly where the
// live one stopped. Storage treats the tensors as bytes; the runtime gives them meaning.
#pragma once

#include <cstdint>
#include <vector>

#include "storage/format.h"
#include "storage/status.h"

namespace kiv {

struct HotCheckpoint {
  uint32_t dtype = format::kDtypeF32;  // element type of keys and values
  uint32_t num_layers = 0;
  uint32_t num_kv_heads = 0;
  uint32_t head_dim = 0;
  std::vector<uint32_t> token_ids;  // [n]
  std::vector<uint32_t> positions;  // [n] absolute positions
  std::vector<uint8_t> keys;        // [L][H_kv][n][d] post-RoPE, `dtype`
  std::vector<uint8_t> values;      // [L][H_kv][n][d], `dtype`
  std::vector<uint8_t> extra;       // runtime state (sampler, turn markers), opaque here

  uint32_t token_count() const { return static_cast<uint32_t>(token_ids.size()); }
  // Bytes the keys (and the values) must have for the shape and dtype.
  uint64_t tensor_bytes() const;
  bool operator==(const HotCheckpoint&) const = default;
};

size_t DtypeBytes(uint32_t dtype);  // 0 for an unknown dtype

// The raw (uncompressed) checkpoint bytes, laid out as docs/format.md "Checkpoint" says.
Result<std::vector<uint8_t>> SerializeCheckpoint(const HotCheckpoint& cp);
Result<HotCheckpoint> ParseCheckpoint(const uint8_t* data, uint64_t size);

// zstd around the serialized form. Compress picks the codec (zstd unless it does not help).
struct StoredCheckpoint {
  uint32_t codec = format::kCheckpointRaw;
  uint64_t raw_bytes = 0;
  std::vector<uint8_t> bytes;
};
Result<StoredCheckpoint> CompressCheckpoint(const HotCheckpoint& cp);
Result<HotCheckpoint> DecompressCheckpoint(uint32_t codec, const uint8_t* data,
                                           uint64_t stored_bytes, uint64_t raw_bytes);

}  // namespace kiv
