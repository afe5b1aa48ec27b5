// The bytes of a .kiv archive. See ../docs/format.md for the field grammar, the file diagram and
// the reasons behind each choice; this header holds the same constants, and the two change together.
//
// Every on-disk struct here is trivially copyable with no padding (checked below) and is moved
// between memory and file bytes with memcpy (Load/Store), never by casting a pointer into mapped
// bytes. All integers are little-endian; the static_assert on std::endian keeps a big-endian
// build from silently writing a different format.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace kiv::format {

static_assert(std::endian::native == std::endian::little,
              "kiv writes little-endian structs with memcpy; a big-endian port must byte-swap");

// ---- versions ---------------------------------------------------------------------------------
// kFormatVersion is what this build writes. A file records the lowest reader version that can read
// it and the lowest writer version that may append to it. A reader opens a file when
// kFormatVersion >= file.min_read_version (never an exact-equality check).
inline constexpr uint16_t kFormatVersion = 1;
inline constexpr uint16_t kMinReadVersion = 1;   // written into new files
inline constexpr uint16_t kMinWriteVersion = 1;  // written into new files
static_assert(kMinReadVersion <= kMinWriteVersion && kMinWriteVersion <= kFormatVersion,
              "a file this build writes must be readable and appendable by this build");

// ---- magic --------------------------------------------------------------------------------------
// PNG's scheme: 0x89 (a high-bit byte catches 7-bit transports and text-mode guesses), "KIV",
// CR LF (catches newline translation), 0x1A (stops DOS `type`), LF.
inline constexpr uint8_t kMagic[8] = {0x89, 'K', 'I', 'V', '\r', '\n', 0x1A, '\n'};

inline constexpr uint32_t kSegmentMagic = 0x4745534Bu;  // "KSEG" as little-endian bytes
inline constexpr uint32_t kCommitMagic = 0x544D434Bu;   // "KCMT"

// ---- checksums ----------------------------------------------------------------------------------
// Every checksum is XXH3-64 seeded with the file offset of the first byte it covers, so a block
// written to (or read from) the wrong place fails its check.
inline constexpr uint16_t kChecksumXxh3Offset = 1;

// ---- codec --------------------------------------------------------------------------------------
inline constexpr uint32_t kRecordBytesPer64 = 104;  // one 64-dim head slice of one token
// Record codecs (docs/format.md "Records"): key bits, value bits, Hadamard-rotated keys or not.
inline constexpr uint32_t kCodecK4V8 = 1;
inline constexpr uint32_t kCodecK4V8Rotated = 2;
inline constexpr uint32_t kCodecK6V6Rotated = 3;  // the default: see docs/quality.md
inline constexpr uint32_t kCodecK5V7Rotated = 4;
inline constexpr uint32_t kCodecDefault = kCodecK6V6Rotated;
// "K6V6, rotated keys", or nullptr for an unknown id.
constexpr const char* CodecName(uint32_t codec_id) {
  switch (codec_id) {
    case kCodecK4V8: return "K4V8";
    case kCodecK4V8Rotated: return "K4V8, rotated keys";
    case kCodecK6V6Rotated: return "K6V6, rotated keys";
    case kCodecK5V7Rotated: return "K5V7, rotated keys";
    default: return nullptr;
  }
}

// ---- alignment and limits ------------------------------------------------------------------------
inline constexpr uint64_t kAlign = 8;  // every block and section starts on 8 bytes
inline constexpr uint32_t kMaxLayers = 1024;
inline constexpr uint32_t kMaxHeads = 1024;
inline constexpr uint32_t kMaxHeadDim = 1024;
inline constexpr uint32_t kMaxSignatureBits = 4096;
inline constexpr uint32_t kMaxSegmentTokens = 1u << 20;
inline constexpr uint64_t kMaxCheckpointBytes = 1ull << 34;  // 16 GiB raw
inline constexpr uint32_t kFlagCentred = 1u << 0;

constexpr uint64_t AlignUp(uint64_t n) { return (n + kAlign - 1) & ~(kAlign - 1); }

// ---- file header: 512 bytes at offset 0 ----------------------------------------------------------
struct FileHeader {
  uint8_t magic[8];
  uint16_t format_version;     // the version of the kiv that created the file
  uint16_t min_read_version;   // readers older than this must refuse the file
  uint16_t min_write_version;  // writers older than this must not append
  uint16_t checksum_type;      // kChecksumXxh3Offset
  uint32_t header_bytes;       // 512 + the extension, aligned: the offset of the first block
  uint32_t flags;              // kFlagCentred
  // Model fingerprint.
  char architecture[32];  // NUL-padded, e.g. "llama"
  uint32_t num_layers;
  uint32_t num_q_heads;
  uint32_t num_kv_heads;
  uint32_t head_dim;
  uint32_t vocab_size;
  uint32_t reserved0;
  uint64_t weights_hash;    // XXH3-64 of the weights, as the runtime defines it
  uint64_t tokenizer_hash;  // XXH3-64 of tokenizer.json
  // Codec parameters.
  uint32_t codec_id;           // kCodecK4V8 .. kCodecK5V7Rotated
  uint32_t record_bytes;       // per (token, layer, kv-head): 104 * head_dim / 64
  uint32_t signature_bits;     // per (token, layer, kv-head); a multiple of 64
  uint32_t sinks;              // hot-tier sink tokens
  uint32_t hot_window;         // hot-tier recent tokens
  uint32_t reserved1;
  uint64_t projection_seed;    // seed of the signature projection
  uint64_t extension_bytes;    // bytes after this header: f32 centring [L][H_kv][d] if centred
  uint64_t extension_checksum; // XXH3-64 of the extension, seeded with its offset (512)
  uint8_t reserved[360];       // zero; later versions may use them
  uint64_t header_checksum;    // XXH3-64 of bytes [0, 504), seed 0
};
inline constexpr uint32_t kFileHeaderBytes = 512;
inline constexpr uint32_t kFileHeaderChecksummed = 504;
static_assert(sizeof(FileHeader) == kFileHeaderBytes);
static_assert(offsetof(FileHeader, header_checksum) == kFileHeaderChecksummed);
static_assert(offsetof(FileHeader, weights_hash) == 80);
static_assert(offsetof(FileHeader, projection_seed) == 120);

// ---- block header: 64 bytes before every segment and commit --------------------------------------
struct BlockHeader {
  uint32_t magic;          // kSegmentMagic or kCommitMagic
  uint32_t reserved0;
  uint64_t body_bytes;     // bytes after this header, a multiple of 8
  uint64_t sequence;       // 0-based index of this block in the file
  uint64_t first_token;    // segment: index of its first token; commit: tokens committed in all
  uint32_t token_count;    // segment: tokens in it; commit: 0
  uint32_t reserved1;
  uint64_t body_checksum;  // segment: of its trailer; commit: of its whole body
  uint64_t reserved2;
  uint64_t header_checksum;  // XXH3-64 of bytes [0, 56), seeded with the block's offset
};
inline constexpr uint32_t kBlockHeaderBytes = 64;
inline constexpr uint32_t kBlockHeaderChecksummed = 56;
static_assert(sizeof(BlockHeader) == kBlockHeaderBytes);
static_assert(offsetof(BlockHeader, header_checksum) == kBlockHeaderChecksummed);

// ---- commit body: 64 bytes, then the checkpoint --------------------------------------------------
struct CommitBody {
  uint64_t committed_tokens;    // tokens in all segments before this commit
  uint64_t segment_count;       // segments before this commit
  uint64_t prev_commit_offset;  // kNoCommit for the first commit
  uint64_t commit_index;        // 0-based
  uint32_t checkpoint_codec;    // kCheckpointRaw or kCheckpointZstd
  uint32_t checkpoint_tokens;   // tokens in the hot-tier checkpoint
  uint64_t checkpoint_raw_bytes;     // after decompression
  uint64_t checkpoint_stored_bytes;  // as stored; followed by zero padding to 8
  uint64_t reserved1;
};
inline constexpr uint32_t kCommitBodyBytes = 64;
inline constexpr uint64_t kNoCommit = ~0ull;
inline constexpr uint32_t kCheckpointRaw = 0;
inline constexpr uint32_t kCheckpointZstd = 1;
static_assert(sizeof(CommitBody) == kCommitBodyBytes);

// ---- hot-tier checkpoint, inside a commit (before compression) ----------------------------------
// Followed by u32 token_ids[n], u32 positions[n], keys [L][H_kv][n][d], values [L][H_kv][n][d] in
// `dtype`, then `extra_bytes` of runtime state; each part padded to 8.
struct CheckpointHeader {
  uint32_t magic;  // kCheckpointMagic
  uint32_t token_count;
  uint32_t dtype;  // kDtypeF32, kDtypeBF16, kDtypeF16
  uint32_t num_layers;
  uint32_t num_kv_heads;
  uint32_t head_dim;
  uint64_t extra_bytes;
};
inline constexpr uint32_t kCheckpointMagic = 0x5450484Bu;  // "KHPT"
inline constexpr uint32_t kCheckpointHeaderBytes = 32;
inline constexpr uint32_t kDtypeF32 = 1;
inline constexpr uint32_t kDtypeBF16 = 2;
inline constexpr uint32_t kDtypeF16 = 3;
static_assert(sizeof(CheckpointHeader) == kCheckpointHeaderBytes);

// No padding anywhere: every byte of every struct is a named field or reserved.
static_assert(std::has_unique_object_representations_v<FileHeader>);
static_assert(std::has_unique_object_representations_v<BlockHeader>);
static_assert(std::has_unique_object_representations_v<CommitBody>);
static_assert(std::has_unique_object_representations_v<CheckpointHeader>);

// memcpy helpers: the only way bytes become structs and back.
template <typename T>
T Load(const uint8_t* src) {
  static_assert(std::is_trivially_copyable_v<T>);
  T out;
  std::memcpy(&out, src, sizeof(T));
  return out;
}
template <typename T>
void Store(uint8_t* dst, const T& v) {
  static_assert(std::is_trivially_copyable_v<T>);
  std::memcpy(dst, &v, sizeof(T));
}

// XXH3-64 of [data, data + n) seeded with `offset`, the file offset of data[0].
uint64_t Checksum(const void* data, size_t n, uint64_t offset);

}  // namespace kiv::format
