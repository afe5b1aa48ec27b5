#include "storage/checkpoint.h"

#include <zstd.h>

#include <string>

namespace kiv {
namespace {

constexpr int kZstdLevel = 3;  // fast; checkpoints are written at every commit

std::string Str(uint64_t v) { return std::to_string(v); }

}  // namespace

size_t DtypeBytes(uint32_t dtype) {
  switch (dtype) {
    case format::kDtypeF32: return 4;
    case format::kDtypeBF16: return 2;
    case format::kDtypeF16: return 2;
    default: return 0;
  }
}

uint64_t HotCheckpoint::tensor_bytes() const {
  return uint64_t{num_layers} * num_kv_heads * token_count() * head_dim * DtypeBytes(dtype);
}

Result<std::vector<uint8_t>> SerializeCheckpoint(const HotCheckpoint& cp) {
  const uint64_t n = cp.token_count();
  if (DtypeBytes(cp.dtype) == 0)
    return Status::InvalidArgument("checkpoint dtype " + Str(cp.dtype) + " is unknown");
  if (cp.positions.size() != n)
    return Status::InvalidArgument("checkpoint has " + Str(n) + " token ids but " +
                                   Str(cp.positions.size()) + " positions");
  if (cp.keys.size() != cp.tensor_bytes() || cp.values.size() != cp.tensor_bytes())
    return Status::InvalidArgument("checkpoint keys/values must have " + Str(cp.tensor_bytes()) +
                                   " bytes each for its shape, have " + Str(cp.keys.size()) +
                                   " and " + Str(cp.values.size()));
  const uint64_t ids = format::AlignUp(4 * n), tensors = format::AlignUp(cp.tensor_bytes());
  const uint64_t total = format::kCheckpointHeaderBytes + 2 * ids + 2 * tensors +
                         format::AlignUp(cp.extra.size());
  if (total > format::kMaxCheckpointBytes)
    return Status::InvalidArgument("checkpoint of " + Str(total) + " bytes is over the limit");
  std::vector<uint8_t> out(total, 0);
  format::CheckpointHeader h{format::kCheckpointMagic, static_cast<uint32_t>(n), cp.dtype,
                             cp.num_layers, cp.num_kv_heads, cp.head_dim, cp.extra.size()};
  format::Store(out.data(), h);
  uint8_t* p = out.data() + format::kCheckpointHeaderBytes;
  if (n) std::memcpy(p, cp.token_ids.data(), 4 * n);
  p += ids;
  if (n) std::memcpy(p, cp.positions.data(), 4 * n);
  p += ids;
  if (tensors) std::memcpy(p, cp.keys.data(), cp.keys.size());
  p += tensors;
  if (tensors) std::memcpy(p, cp.values.data(), cp.values.size());
  p += tensors;
  if (!cp.extra.empty()) std::memcpy(p, cp.extra.data(), cp.extra.size());
  return out;
}

Result<HotCheckpoint> ParseCheckpoint(const uint8_t* data, uint64_t size) {
  if (size < format::kCheckpointHeaderBytes)
    return Status::Corruption("checkpoint shorter than its header");
  const auto h = format::Load<format::CheckpointHeader>(data);
  if (h.magic != format::kCheckpointMagic) return Status::Corruption("checkpoint magic is wrong");
  HotCheckpoint cp;
  cp.dtype = h.dtype;
  cp.num_layers = h.num_layers;
  cp.num_kv_heads = h.num_kv_heads;
  cp.head_dim = h.head_dim;
  if (DtypeBytes(h.dtype) == 0) return Status::Corruption("checkpoint dtype is unknown");
  if (h.num_layers > format::kMaxLayers || h.num_kv_heads > format::kMaxHeads ||
      h.head_dim > format::kMaxHeadDim || h.extra_bytes > size)
    return Status::Corruption("checkpoint shape is out of range");
  const uint64_t n = h.token_count;
  const uint64_t tensor = uint64_t{h.num_layers} * h.num_kv_heads * n * h.head_dim *
                          DtypeBytes(h.dtype);
  const uint64_t ids = format::AlignUp(4 * n), tensors = format::AlignUp(tensor);
  const uint64_t need = format::kCheckpointHeaderBytes + 2 * ids + 2 * tensors +
                        format::AlignUp(h.extra_bytes);
  if (need != size)
    return Status::Corruption("checkpoint holds " + Str(size) + " bytes, its header says " +
                              Str(need));
  const uint8_t* p = data + format::kCheckpointHeaderBytes;
  cp.token_ids.resize(n);
  cp.positions.resize(n);
  if (n) std::memcpy(cp.token_ids.data(), p, 4 * n);
  p += ids;
  if (n) std::memcpy(cp.positions.data(), p, 4 * n);
  p += ids;
  cp.keys.assign(p, p + tensor);
  p += tensors;
  cp.values.assign(p, p + tensor);
  p += tensors;
  cp.extra.assign(p, p + h.extra_bytes);
  return cp;
}

Result<StoredCheckpoint> CompressCheckpoint(const HotCheckpoint& cp) {
  auto raw = SerializeCheckpoint(cp);
  if (!raw.ok()) return raw.status();
  StoredCheckpoint out;
  out.raw_bytes = raw->size();
  std::vector<uint8_t> z(ZSTD_compressBound(raw->size()));
  const size_t zn = ZSTD_compress(z.data(), z.size(), raw->data(), raw->size(), kZstdLevel);
  if (ZSTD_isError(zn))
    return Status::IOError(std::string("zstd could not compress the checkpoint: ") +
                           ZSTD_getErrorName(zn));
  if (zn < raw->size()) {
    z.resize(zn);
    out.codec = format::kCheckpointZstd;
    out.bytes = std::move(z);
  } else {  // incompressible (random test data): store as it is
    out.codec = format::kCheckpointRaw;
    out.bytes = std::move(raw.value());
  }
  return out;
}

Result<HotCheckpoint> DecompressCheckpoint(uint32_t codec, const uint8_t* data,
                                           uint64_t stored_bytes, uint64_t raw_bytes) {
  if (codec == format::kCheckpointRaw) {
    if (stored_bytes != raw_bytes)
      return Status::Corruption("raw checkpoint sizes disagree");
    return ParseCheckpoint(data, stored_bytes);
  }
  if (codec != format::kCheckpointZstd)
    return Status::Corruption("checkpoint codec " + Str(codec) + " is unknown");
  if (raw_bytes > format::kMaxCheckpointBytes)
    return Status::Corruption("checkpoint raw size " + Str(raw_bytes) + " is over the limit");
  std::vector<uint8_t> raw(raw_bytes);
  const size_t n = ZSTD_decompress(raw.data(), raw.size(), data, stored_bytes);
  if (ZSTD_isError(n))
    return Status::Corruption(std::string("checkpoint does not decompress: ") +
                              ZSTD_getErrorName(n));
  if (n != raw_bytes)
    return Status::Corruption("checkpoint decompressed to " + Str(n) + " bytes, expected " +
                              Str(raw_bytes));
  return ParseCheckpoint(raw.data(), raw.size());
}

}  // namespace kiv
