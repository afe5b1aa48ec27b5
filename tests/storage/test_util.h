// Shared helpers for the storage tests and the programs beside them (crash soak, golden maker).
// Nothing here includes doctest: the crash harness runs this code in forked children.
//
// Content is a pure function of the token index (and the layer and head), so a test can check any
// archive, however it was segmented or recovered, against what must be in it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "storage/checkpoint.h"
#include "storage/reader.h"
#include "storage/spec.h"
#include "storage/writer.h"

namespace kiv::test {

// A fresh directory under $TMPDIR (or /tmp), removed with everything in it on destruction unless
// KIV_KEEP_TEMP is set in the environment (then its path is printed, for a post-mortem).
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// A small but complete spec: 2 layers, `kv_heads` kv-heads (twice as many query heads), head_dim
// `head_dim`, `signature_bits` signature bits, optionally with centring vectors.
ArchiveSpec SmallSpec(uint32_t kv_heads = 1, uint32_t signature_bits = 64, bool centred = false,
                      uint32_t head_dim = 64);

// The deterministic content of token `token`.
void FillRecord(const ArchiveSpec& spec, uint64_t token, uint32_t layer, uint32_t head,
                uint8_t* out);  // record_bytes()
void FillSignature(const ArchiveSpec& spec, uint64_t token, uint32_t layer, uint32_t head,
                   uint8_t* out);  // signature_bytes()
uint32_t TokenIdOf(uint64_t token);
uint32_t PositionOf(uint64_t token);

// One segment's arrays, laid out as SegmentView wants them.
struct SegmentData {
  uint64_t first_token = 0;
  uint32_t token_count = 0;
  std::vector<uint8_t> records;     // [L][H_kv][n][record_bytes]
  std::vector<uint8_t> signatures;  // [L][H_kv][n][signature_bytes]
  std::vector<uint32_t> token_ids;  // [n]
  std::vector<uint32_t> positions;  // [n]
  SegmentView view() const;
};
SegmentData MakeSegment(const ArchiveSpec& spec, uint64_t first_token, uint32_t token_count);

// A hot-tier checkpoint whose every byte follows from (`seed`, `token_count`, `dtype`). Its values
// repeat, so zstd compresses it; `extra` has an odd length so the padding rules are exercised.
HotCheckpoint MakeCheckpoint(const ArchiveSpec& spec, uint64_t seed, uint32_t token_count,
                             uint32_t dtype = format::kDtypeF32);

// Checks tokens [0, tokens) of `reader` against the deterministic content: records, signatures,
// token ids and positions. Returns "" when all match, else a sentence naming the first mismatch.
std::string CheckContent(const ArchiveReader& reader, uint64_t tokens);

// Appends `token_count` deterministic tokens to `writer` (starting at writer.token_count()).
Status AppendTokens(ArchiveWriter& writer, uint32_t token_count);

std::vector<uint8_t> ReadFileBytes(const std::string& path);  // aborts when it cannot
void WriteFileBytes(const std::string& path, const uint8_t* data, uint64_t size);
inline void WriteFileBytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  WriteFileBytes(path, bytes.data(), bytes.size());
}
uint64_t FileSize(const std::string& path);  // aborts when it cannot

// An integer from the environment, or `fallback` when unset or not a number.
uint64_t EnvU64(const char* name, uint64_t fallback);

}  // namespace kiv::test
