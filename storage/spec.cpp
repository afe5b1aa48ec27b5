#include "storage/spec.h"

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <string>

namespace kiv {
namespace {

std::string Str(uint64_t v) { return std::to_string(v); }

std::string Hex(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "%016" PRIx64, v);
  return buf;
}

// The architecture name as stored: NUL-padded, at most 31 bytes, and nothing after the first NUL.
std::string ReadArchitecture(const char (&field)[32]) {
  size_t n = 0;
  while (n < sizeof field && field[n] != '\0') ++n;
  return std::string(field, n);
}

}  // namespace

Status ArchiveSpec::Validate() const {
  const ModelFingerprint& m = model;
  if (m.architecture.empty() || m.architecture.size() > 31)
    return Status::InvalidArgument("architecture name must have 1 to 31 bytes, has " +
                                   Str(m.architecture.size()));
  if (m.architecture.find('\0') != std::string::npos)
    return Status::InvalidArgument("architecture name contains a NUL byte");
  if (m.num_layers == 0 || m.num_layers > format::kMaxLayers)
    return Status::InvalidArgument("num_layers must be 1.." + Str(format::kMaxLayers) +
                                   ", is " + Str(m.num_layers));
  if (m.num_kv_heads == 0 || m.num_kv_heads > format::kMaxHeads)
    return Status::InvalidArgument("num_kv_heads must be 1.." + Str(format::kMaxHeads) +
                                   ", is " + Str(m.num_kv_heads));
  if (m.num_q_heads == 0 || m.num_q_heads > format::kMaxHeads || m.num_q_heads % m.num_kv_heads)
    return Status::InvalidArgument("num_q_heads must be a multiple of num_kv_heads (" +
                                   Str(m.num_kv_heads) + "), is " + Str(m.num_q_heads));
  if (m.head_dim == 0 || m.head_dim % 64 || m.head_dim > format::kMaxHeadDim)
    return Status::InvalidArgument("head_dim must be a multiple of 64 up to " +
                                   Str(format::kMaxHeadDim) + ", is " + Str(m.head_dim));
  if (format::CodecName(codec.codec_id) == nullptr)
    return Status::InvalidArgument("unknown codec id " + Str(codec.codec_id));
  if (codec.signature_bits == 0 || codec.signature_bits % 64 ||
      codec.signature_bits > format::kMaxSignatureBits)
    return Status::InvalidArgument("signature_bits must be a multiple of 64 up to " +
                                   Str(format::kMaxSignatureBits) + ", is " +
                                   Str(codec.signature_bits));
  const uint64_t centring_floats = heads_per_token() * m.head_dim;
  if (codec.centred && codec.centring.size() != centring_floats)
    return Status::InvalidArgument("centring needs " + Str(centring_floats) +
                                   " floats ([layers][kv_heads][head_dim]), has " +
                                   Str(codec.centring.size()));
  if (!codec.centred && !codec.centring.empty())
    return Status::InvalidArgument("centring vectors given but centred is false");
  return Status::Ok();
}

SegmentLayout SegmentLayout::For(const ArchiveSpec& spec, uint32_t token_count) {
  SegmentLayout s;
  const uint64_t n = token_count;
  const uint64_t heads = spec.model.num_kv_heads;
  s.token_count = token_count;
  s.layer_records_bytes = heads * n * spec.record_bytes();
  s.layer_signatures_bytes = heads * n * spec.signature_bytes();
  s.records_offset = 0;
  s.signatures_offset = s.records_offset + spec.model.num_layers * s.layer_records_bytes;
  s.token_ids_offset = s.signatures_offset + spec.model.num_layers * s.layer_signatures_bytes;
  s.positions_offset = s.token_ids_offset + format::AlignUp(4 * n);
  s.trailer_offset = s.positions_offset + format::AlignUp(4 * n);
  s.trailer_entries = 2 * spec.model.num_layers + 2;
  s.body_bytes = s.trailer_offset + 8ull * s.trailer_entries;
  return s;
}

std::vector<uint8_t> EncodeHeader(const ArchiveSpec& spec) {
  const uint64_t ext_bytes = spec.codec.centred ? spec.codec.centring.size() * sizeof(float) : 0;
  const uint64_t total = format::AlignUp(format::kFileHeaderBytes + ext_bytes);
  std::vector<uint8_t> out(total, 0);
  if (ext_bytes) std::memcpy(out.data() + format::kFileHeaderBytes, spec.codec.centring.data(),
                             ext_bytes);

  format::FileHeader h{};
  std::memcpy(h.magic, format::kMagic, sizeof h.magic);
  h.format_version = format::kFormatVersion;
  h.min_read_version = format::kMinReadVersion;
  h.min_write_version = format::kMinWriteVersion;
  h.checksum_type = format::kChecksumXxh3Offset;
  h.header_bytes = static_cast<uint32_t>(total);
  h.flags = spec.codec.centred ? format::kFlagCentred : 0;
  std::memcpy(h.architecture, spec.model.architecture.data(),
              std::min<size_t>(spec.model.architecture.size(), 31));
  h.num_layers = spec.model.num_layers;
  h.num_q_heads = spec.model.num_q_heads;
  h.num_kv_heads = spec.model.num_kv_heads;
  h.head_dim = spec.model.head_dim;
  h.vocab_size = spec.model.vocab_size;
  h.weights_hash = spec.model.weights_hash;
  h.tokenizer_hash = spec.model.tokenizer_hash;
  h.codec_id = spec.codec.codec_id;
  h.record_bytes = spec.record_bytes();
  h.signature_bits = spec.codec.signature_bits;
  h.sinks = spec.codec.sinks;
  h.hot_window = spec.codec.hot_window;
  h.projection_seed = spec.codec.projection_seed;
  h.extension_bytes = total - format::kFileHeaderBytes;
  h.extension_checksum = format::Checksum(out.data() + format::kFileHeaderBytes,
                                          h.extension_bytes, format::kFileHeaderBytes);
  format::Store(out.data(), h);
  h.header_checksum = format::Checksum(out.data(), format::kFileHeaderChecksummed, 0);
  format::Store(out.data(), h);
  return out;
}

Result<ArchiveSpec> DecodeHeader(const uint8_t* data, uint64_t size, uint64_t* header_bytes) {
  if (size < sizeof format::kMagic || std::memcmp(data, format::kMagic, sizeof format::kMagic))
    return Status::NotAnArchive("it does not start with the kiv magic bytes");
  if (size < format::kFileHeaderBytes)
    return Status::Corruption("the file header is cut short (" + Str(size) + " of " +
                              Str(format::kFileHeaderBytes) + " bytes)");
  const auto h = format::Load<format::FileHeader>(data);
  // The version is read before the checksum: a newer kiv may checksum its header differently,
  // and its user deserves "too new" rather than "corrupt".
  if (h.min_read_version > format::kFormatVersion)
    return Status::VersionTooNew(
        "written by a newer kiv (format version " + Str(h.format_version) +
        ", readable from version " + Str(h.min_read_version) + "); this build reads up to " +
        Str(format::kFormatVersion) + ": upgrade kiv to open it");
  if (h.header_checksum != format::Checksum(data, format::kFileHeaderChecksummed, 0))
    return Status::Corruption("file header at offset 0 fails its checksum");
  if (h.checksum_type != format::kChecksumXxh3Offset)
    return Status::Corruption("file header names unknown checksum type " + Str(h.checksum_type));
  if (h.header_bytes != format::kFileHeaderBytes + h.extension_bytes || h.header_bytes % 8)
    return Status::Corruption("file header sizes disagree (header_bytes " + Str(h.header_bytes) +
                              ", extension_bytes " + Str(h.extension_bytes) + ")");
  if (size < h.header_bytes)
    return Status::Corruption("the header extension is cut short (" + Str(size) + " of " +
                              Str(h.header_bytes) + " bytes)");
  const uint8_t* ext = data + format::kFileHeaderBytes;
  if (h.extension_checksum != format::Checksum(ext, h.extension_bytes, format::kFileHeaderBytes))
    return Status::Corruption("header extension (centring vectors) at offset 512 fails its "
                              "checksum");
  ArchiveSpec spec;
  spec.model.architecture = ReadArchitecture(h.architecture);
  spec.model.num_layers = h.num_layers;
  spec.model.num_q_heads = h.num_q_heads;
  spec.model.num_kv_heads = h.num_kv_heads;
  spec.model.head_dim = h.head_dim;
  spec.model.vocab_size = h.vocab_size;
  spec.model.weights_hash = h.weights_hash;
  spec.model.tokenizer_hash = h.tokenizer_hash;
  spec.codec.codec_id = h.codec_id;
  spec.codec.signature_bits = h.signature_bits;
  spec.codec.projection_seed = h.projection_seed;
  spec.codec.sinks = h.sinks;
  spec.codec.hot_window = h.hot_window;
  spec.codec.centred = (h.flags & format::kFlagCentred) != 0;
  if (spec.codec.centred) {
    const uint64_t floats = spec.heads_per_token() * spec.model.head_dim;
    if (floats * sizeof(float) > h.extension_bytes)
      return Status::Corruption("header extension too small for its centring vectors");
    spec.codec.centring.resize(floats);
    std::memcpy(spec.codec.centring.data(), ext, floats * sizeof(float));
  }
  Status valid = spec.Validate();
  if (!valid.ok()) return Status::Corruption("file header holds an invalid spec: " + valid.message());
  if (h.record_bytes != spec.record_bytes())
    return Status::Corruption("file header record_bytes " + Str(h.record_bytes) +
                              " does not match head_dim " + Str(h.head_dim));
  *header_bytes = h.header_bytes;
  return spec;
}

Status CheckSameModel(const ModelFingerprint& have, const ModelFingerprint& want) {
  auto differ = [](const char* what, const std::string& a, const std::string& b) {
    return Status::Incompatible(std::string("the archive was made with a different model: ") +
                                what + " is " + a + " in the archive but " + b + " here");
  };
  if (have.architecture != want.architecture)
    return differ("architecture", "'" + have.architecture + "'", "'" + want.architecture + "'");
  if (have.num_layers != want.num_layers)
    return differ("num_layers", Str(have.num_layers), Str(want.num_layers));
  if (have.num_q_heads != want.num_q_heads)
    return differ("num_q_heads", Str(have.num_q_heads), Str(want.num_q_heads));
  if (have.num_kv_heads != want.num_kv_heads)
    return differ("num_kv_heads", Str(have.num_kv_heads), Str(want.num_kv_heads));
  if (have.head_dim != want.head_dim)
    return differ("head_dim", Str(have.head_dim), Str(want.head_dim));
  if (have.vocab_size != want.vocab_size)
    return differ("vocab_size", Str(have.vocab_size), Str(want.vocab_size));
  if (have.weights_hash != want.weights_hash)
    return differ("the weights hash", Hex(have.weights_hash), Hex(want.weights_hash));
  if (have.tokenizer_hash != want.tokenizer_hash)
    return differ("the tokenizer hash", Hex(have.tokenizer_hash), Hex(want.tokenizer_hash));
  return Status::Ok();
}

}  // namespace kiv
