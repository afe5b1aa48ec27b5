#include "tests/storage/test_util.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>

namespace kiv::test {
namespace {

uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// `n` pseudo-random bytes that depend only on the four keys.
void FillBytes(uint64_t a, uint64_t b, uint64_t c, uint64_t salt, uint8_t* out, size_t n) {
  uint64_t state = SplitMix64(SplitMix64(SplitMix64(a ^ salt) + b) + c);
  for (size_t i = 0; i < n; i += 8) {
    state = SplitMix64(state);
    const size_t take = n - i < 8 ? n - i : 8;
    std::memcpy(out + i, &state, take);
  }
}

constexpr uint64_t kRecordSalt = 0x7265636f7264ull;     // "record"
constexpr uint64_t kSignatureSalt = 0x7369676eull;      // "sign"

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "test_util: %s: %s\n", what.c_str(), std::strerror(errno));
  std::abort();
}

}  // namespace

TempDir::TempDir() {
  std::string base = std::filesystem::temp_directory_path().string() + "/kiv-test-XXXXXX";
  std::vector<char> buf(base.begin(), base.end());
  buf.push_back('\0');
  if (mkdtemp(buf.data()) == nullptr) Die("mkdtemp " + base);
  path_ = buf.data();
}

TempDir::~TempDir() {
  if (std::getenv("KIV_KEEP_TEMP") != nullptr) {
    std::fprintf(stderr, "keeping %s\n", path_.c_str());
    return;
  }
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

ArchiveSpec SmallSpec(uint32_t kv_heads, uint32_t signature_bits, bool centred,
                      uint32_t head_dim) {
  ArchiveSpec spec;
  spec.model.architecture = "llama";
  spec.model.num_layers = 2;
  spec.model.num_kv_heads = kv_heads;
  spec.model.num_q_heads = 2 * kv_heads;
  spec.model.head_dim = head_dim;
  spec.model.vocab_size = 49152;
  spec.model.weights_hash = 0x0123456789ABCDEFull;
  spec.model.tokenizer_hash = 0xFEDCBA9876543210ull;
  spec.codec.signature_bits = signature_bits;
  spec.codec.projection_seed = 0x5EEDull;
  spec.codec.sinks = 4;
  spec.codec.hot_window = 256;
  spec.codec.centred = centred;
  if (centred) {
    spec.codec.centring.resize(spec.heads_per_token() * head_dim);
    for (size_t i = 0; i < spec.codec.centring.size(); ++i)
      spec.codec.centring[i] = static_cast<float>(i % 17) * 0.25f - 2.0f;
  }
  return spec;
}

void FillRecord(const ArchiveSpec& spec, uint64_t token, uint32_t layer, uint32_t head,
                uint8_t* out) {
  FillBytes(token, layer, head, kRecordSalt, out, spec.record_bytes());
}

void FillSignature(const ArchiveSpec& spec, uint64_t token, uint32_t layer, uint32_t head,
                   uint8_t* out) {
  FillBytes(token, layer, head, kSignatureSalt, out, spec.signature_bytes());
}

uint32_t TokenIdOf(uint64_t token) { return static_cast<uint32_t>(SplitMix64(token) % 49152); }
uint32_t PositionOf(uint64_t token) { return static_cast<uint32_t>(token * 3 + 1); }

SegmentView SegmentData::view() const {
  SegmentView v;
  v.token_count = token_count;
  v.records = records.data();
  v.signatures = signatures.data();
  v.token_ids = token_ids.data();
  v.positions = positions.data();
  return v;
}

SegmentData MakeSegment(const ArchiveSpec& spec, uint64_t first_token, uint32_t token_count) {
  SegmentData s;
  s.first_token = first_token;
  s.token_count = token_count;
  const uint64_t n = token_count, rb = spec.record_bytes(), sb = spec.signature_bytes();
  const uint32_t layers = spec.model.num_layers, heads = spec.model.num_kv_heads;
  s.records.resize(spec.heads_per_token() * n * rb);
  s.signatures.resize(spec.heads_per_token() * n * sb);
  for (uint32_t l = 0; l < layers; ++l) {
    for (uint32_t h = 0; h < heads; ++h) {
      const uint64_t run = (uint64_t{l} * heads + h) * n;  // [L][H_kv][n]
      for (uint64_t i = 0; i < n; ++i) {
        FillRecord(spec, first_token + i, l, h, s.records.data() + (run + i) * rb);
        FillSignature(spec, first_token + i, l, h, s.signatures.data() + (run + i) * sb);
      }
    }
  }
  for (uint64_t i = 0; i < n; ++i) {
    s.token_ids.push_back(TokenIdOf(first_token + i));
    s.positions.push_back(PositionOf(first_token + i));
  }
  return s;
}

HotCheckpoint MakeCheckpoint(const ArchiveSpec& spec, uint64_t seed, uint32_t token_count,
                             uint32_t dtype) {
  HotCheckpoint cp;
  cp.dtype = dtype;
  cp.num_layers = spec.model.num_layers;
  cp.num_kv_heads = spec.model.num_kv_heads;
  cp.head_dim = spec.model.head_dim;
  for (uint32_t i = 0; i < token_count; ++i) {
    cp.token_ids.push_back(static_cast<uint32_t>(SplitMix64(seed * 1000 + i) % 49152));
    cp.positions.push_back(static_cast<uint32_t>(seed + i));
  }
  cp.keys.resize(cp.tensor_bytes());
  cp.values.resize(cp.tensor_bytes());
  for (size_t i = 0; i < cp.keys.size(); ++i) {
    cp.keys[i] = static_cast<uint8_t>((seed + i / 4) % 23);
    cp.values[i] = static_cast<uint8_t>((seed * 7 + i / 2) % 29);
  }
  const size_t extra = 5 + seed % 7;
  for (size_t i = 0; i < extra; ++i) cp.extra.push_back(static_cast<uint8_t>(seed + 3 * i));
  return cp;
}

std::string CheckContent(const ArchiveReader& reader, uint64_t tokens) {
  const ArchiveSpec& spec = reader.spec();
  if (reader.token_count() < tokens)
    return "the archive holds " + std::to_string(reader.token_count()) + " tokens, expected " +
           std::to_string(tokens);
  std::vector<uint8_t> want(spec.record_bytes() > spec.signature_bytes()
                                ? spec.record_bytes()
                                : spec.signature_bytes());
  for (uint64_t t = 0; t < tokens; ++t) {
    const std::string at = " of token " + std::to_string(t);
    if (reader.TokenId(t) != TokenIdOf(t)) return "wrong token id" + at;
    if (reader.Position(t) != PositionOf(t)) return "wrong position" + at;
    for (uint32_t l = 0; l < spec.model.num_layers; ++l) {
      for (uint32_t h = 0; h < spec.model.num_kv_heads; ++h) {
        const std::string where =
            at + " layer " + std::to_string(l) + " head " + std::to_string(h);
        FillRecord(spec, t, l, h, want.data());
        if (std::memcmp(reader.Record(t, l, h), want.data(), spec.record_bytes()) != 0)
          return "wrong record" + where;
        FillSignature(spec, t, l, h, want.data());
        if (std::memcmp(reader.Signature(t, l, h), want.data(), spec.signature_bytes()) != 0)
          return "wrong signature" + where;
      }
    }
  }
  return "";
}

Status AppendTokens(ArchiveWriter& writer, uint32_t token_count) {
  const SegmentData s = MakeSegment(writer.spec(), writer.token_count(), token_count);
  return writer.Append(s.view());
}

std::vector<uint8_t> ReadFileBytes(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) Die("open " + path);
  std::vector<uint8_t> out;
  uint8_t buf[1 << 16];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) Die("read " + path);
    if (n == 0) break;
    out.insert(out.end(), buf, buf + n);
  }
  ::close(fd);
  return out;
}

void WriteFileBytes(const std::string& path, const uint8_t* data, uint64_t size) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) Die("open " + path);
  uint64_t done = 0;
  while (done < size) {
    const ssize_t n = ::write(fd, data + done, size - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) Die("write " + path);
    done += static_cast<uint64_t>(n);
  }
  ::close(fd);
}

uint64_t FileSize(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) Die("stat " + path);
  return static_cast<uint64_t>(st.st_size);
}

uint64_t EnvU64(const char* name, uint64_t fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  char* end = nullptr;
  const unsigned long long n = std::strtoull(v, &end, 10);
  return (end != nullptr && *end == '\0') ? n : fallback;
}

}  // namespace kiv::test
