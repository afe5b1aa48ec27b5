#include "tests/storage/golden.h"

#include <cstdio>
#include <cstring>

#include "storage/writer.h"

namespace kiv::golden {

ArchiveSpec Spec() {
  ArchiveSpec spec;
  spec.model.architecture = "llama";
  spec.model.num_layers = 2;
  spec.model.num_q_heads = 4;
  spec.model.num_kv_heads = 1;
  spec.model.head_dim = 64;
  spec.model.vocab_size = 256;
  spec.model.weights_hash = 0x1111222233334444ull;
  spec.model.tokenizer_hash = 0x5555666677778888ull;
  spec.codec.codec_id = format::kCodecK4V8;
  spec.codec.signature_bits = 64;
  spec.codec.projection_seed = 0x0102030405060708ull;
  spec.codec.sinks = 4;
  spec.codec.hot_window = 256;
  spec.codec.centred = true;
  spec.codec.centring.resize(2 * 1 * 64);
  for (size_t i = 0; i < spec.codec.centring.size(); ++i)  // exact in binary: i/16 - 4
    spec.codec.centring[i] = static_cast<float>(i) / 16.0f - 4.0f;
  return spec;
}

std::vector<uint32_t> SegmentTokens() { return {3, 2}; }

uint8_t RecordByte(uint64_t token, uint32_t layer, uint32_t head, uint32_t i) {
  return static_cast<uint8_t>(token * 37 + layer * 11 + head * 5 + i);
}

uint8_t SignatureByte(uint64_t token, uint32_t layer, uint32_t head, uint32_t i) {
  return static_cast<uint8_t>((token << 4) | (layer << 3) | (head << 2) | (i & 3));
}

uint32_t TokenId(uint64_t token) { return static_cast<uint32_t>(100 + 7 * token); }
uint32_t Position(uint64_t token) { return static_cast<uint32_t>(token); }

HotCheckpoint Checkpoint(uint32_t k) {
  const ArchiveSpec spec = Spec();
  HotCheckpoint cp;
  cp.dtype = k == 1 ? format::kDtypeF32 : format::kDtypeBF16;
  cp.num_layers = spec.model.num_layers;
  cp.num_kv_heads = spec.model.num_kv_heads;
  cp.head_dim = spec.model.head_dim;
  const uint32_t n = k;  // commit k keeps k hot tokens
  for (uint32_t t = 0; t < n; ++t) {
    cp.token_ids.push_back(200 + 10 * k + t);
    cp.positions.push_back(1000 * k + t);
  }
  const uint64_t elements = uint64_t{cp.num_layers} * cp.num_kv_heads * n * cp.head_dim;
  const size_t width = DtypeBytes(cp.dtype);
  cp.keys.resize(elements * width);
  cp.values.resize(elements * width);
  for (uint64_t e = 0; e < elements; ++e) {
    const float key = static_cast<float>(e % 64) * 0.5f - 8.0f;
    const float value = static_cast<float>(e % 32) * 0.25f + static_cast<float>(k);
    uint32_t kb, vb;
    std::memcpy(&kb, &key, 4);
    std::memcpy(&vb, &value, 4);
    if (width == 2) {  // bf16: the top half of the f32 (these values are exact in bf16)
      kb >>= 16;
      vb >>= 16;
    }
    std::memcpy(cp.keys.data() + e * width, &kb, width);
    std::memcpy(cp.values.data() + e * width, &vb, width);
  }
  const std::string extra = "turn:" + std::to_string(k);
  cp.extra.assign(extra.begin(), extra.end());
  return cp;
}

Status Write(const std::string& path) {
  const ArchiveSpec spec = Spec();
  auto w = ArchiveWriter::Create(path, spec);
  if (!w.ok()) return w.status();
  const uint32_t L = spec.model.num_layers, H = spec.model.num_kv_heads;
  const uint32_t rb = spec.record_bytes(), sb = spec.signature_bytes();
  uint64_t first = 0;
  uint32_t commit = 0;
  for (uint32_t n : SegmentTokens()) {
    std::vector<uint8_t> records(uint64_t{L} * H * n * rb), signatures(uint64_t{L} * H * n * sb);
    std::vector<uint32_t> ids, positions;
    for (uint32_t l = 0; l < L; ++l) {
      for (uint32_t h = 0; h < H; ++h) {
        for (uint32_t t = 0; t < n; ++t) {
          const uint64_t at = (uint64_t{l} * H + h) * n + t;  // [L][H_kv][n]
          for (uint32_t i = 0; i < rb; ++i) records[at * rb + i] = RecordByte(first + t, l, h, i);
          for (uint32_t i = 0; i < sb; ++i)
            signatures[at * sb + i] = SignatureByte(first + t, l, h, i);
        }
      }
    }
    for (uint32_t t = 0; t < n; ++t) {
      ids.push_back(TokenId(first + t));
      positions.push_back(Position(first + t));
    }
    SegmentView v;
    v.token_count = n;
    v.records = records.data();
    v.signatures = signatures.data();
    v.token_ids = ids.data();
    v.positions = positions.data();
    KIV_RETURN_IF_ERROR((*w)->Append(v));
    KIV_RETURN_IF_ERROR((*w)->Commit(Checkpoint(++commit)));
    first += n;
  }
  return (*w)->Close();
}

std::string XxdDump(const std::vector<uint8_t>& bytes) {
  std::string out;
  char buf[32];
  for (size_t line = 0; line < bytes.size(); line += 16) {
    std::snprintf(buf, sizeof buf, "%08zx: ", line);
    out += buf;
    std::string text;
    for (size_t j = 0; j < 16; ++j) {
      if (line + j < bytes.size()) {
        const uint8_t b = bytes[line + j];
        std::snprintf(buf, sizeof buf, "%02x", b);
        out += buf;
        text += (b >= 0x20 && b < 0x7F) ? static_cast<char>(b) : '.';
      } else {
        out += "  ";
      }
      if (j % 2 == 1) out += ' ';
    }
    out += ' ';
    out += text;
    out += '\n';
  }
  return out;
}

}  // namespace kiv::golden
