// kiv archive synth FILE --tokens N: writes an archive of synthetic tokens through the real
// writer, for trying the archive tools and measuring storage without a model.
//
// Every byte is a pure function of the seed and the token's index (and layer and head), so two
// runs with the same options write the same archive, and a token's bytes do not depend on how
// the tokens were cut into segments. The records are random bytes, not encodings of real keys
// and values: the model runtime writes real archives.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "cli/json.h"
#include "cli/progress.h"
#include "cli/shape_options.h"
#include "cli/util.h"
#include "storage/writer.h"

namespace kiv::cli {

namespace {

struct Options {
  std::string path;
  uint64_t tokens = 0;
  ShapeOptions shape;
  uint32_t vocab = 32000;
  uint32_t segment_tokens = 256;
  uint64_t commit_every = 4096;
  uint64_t seed = 1;
  bool force = false;
  bool json = false;
};

// SplitMix64's finalizer: a bijective mix of 64 bits, so distinct inputs give distinct outputs.
uint64_t Mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// A SplitMix64 stream started from a hash of its coordinates.
class Stream {
 public:
  explicit Stream(uint64_t start) : state_(start) {}
  uint64_t Next() { return Mix(state_ += 0x9E3779B97F4A7C15ull); }
  void Fill(uint8_t* dst, size_t n) {
    for (size_t i = 0; i < n; i += 8) {
      const uint64_t v = Next();
      std::memcpy(dst + i, &v, std::min<size_t>(8, n - i));
    }
  }

 private:
  uint64_t state_;
};

// Distinct streams for each (seed, what, token, layer, head).
enum What : uint64_t { kRecord = 1, kSignature, kTokenId, kKey, kValue, kWeights, kTokenizer };
uint64_t StreamStart(uint64_t seed, What what, uint64_t token, uint64_t layer, uint64_t head) {
  return Mix(Mix(Mix(Mix(seed ^ (what << 56)) ^ token) ^ layer) ^ head);
}

uint32_t TokenId(const Options& o, uint64_t token) {
  return static_cast<uint32_t>(Mix(StreamStart(o.seed, kTokenId, token, 0, 0)) % o.vocab);
}

ArchiveSpec MakeSpec(const Options& o) {
  ArchiveSpec spec = ShapeSpec(o.shape, "synthetic");
  spec.model.vocab_size = o.vocab;
  spec.model.weights_hash = Mix(StreamStart(o.seed, kWeights, 0, 0, 0));
  spec.model.tokenizer_hash = Mix(StreamStart(o.seed, kTokenizer, 0, 0, 0));
  spec.codec.projection_seed = o.seed;
  return spec;
}

// One segment's buffers, reused for every segment.
struct SegmentBuffers {
  std::vector<uint8_t> records;     // [L][H_kv][n][record_bytes]
  std::vector<uint8_t> signatures;  // [L][H_kv][n][signature_bytes]
  std::vector<uint32_t> token_ids;  // [n]
  std::vector<uint32_t> positions;  // [n]
};

SegmentView FillSegment(const Options& o, const ArchiveSpec& spec, uint64_t first, uint32_t n,
                        SegmentBuffers& b) {
  const size_t rb = spec.record_bytes();
  const size_t sb = spec.signature_bytes();
  b.records.resize(spec.heads_per_token() * n * rb);
  b.signatures.resize(spec.heads_per_token() * n * sb);
  b.token_ids.resize(n);
  b.positions.resize(n);
  for (uint32_t l = 0; l < o.shape.layers; ++l) {
    for (uint32_t h = 0; h < o.shape.kv_heads; ++h) {
      const size_t run = (size_t{l} * o.shape.kv_heads + h) * n;  // first (l, h, token) slot
      for (uint32_t i = 0; i < n; ++i) {
        Stream(StreamStart(o.seed, kRecord, first + i, l, h)).Fill(&b.records[(run + i) * rb], rb);
        Stream(StreamStart(o.seed, kSignature, first + i, l, h))
            .Fill(&b.signatures[(run + i) * sb], sb);
      }
    }
  }
  for (uint32_t i = 0; i < n; ++i) {
    b.token_ids[i] = TokenId(o, first + i);
    b.positions[i] = static_cast<uint32_t>(first + i);
  }
  return SegmentView{n, b.records.data(), b.signatures.data(), b.token_ids.data(),
                     b.positions.data()};
}

// A value that looks like a real activation's spread (multiples of 1/32 in [-4, 4)) and, having
// few distinct values, compresses somewhat as real bf16-derived tensors do.
float SyntheticFloat(Stream& s) { return static_cast<float>(static_cast<int8_t>(s.Next())) / 32; }

// The hot tier after `count` tokens: the last min(count, hot_window) of them.
HotCheckpoint MakeCheckpoint(const Options& o, const ArchiveSpec& spec, uint64_t count) {
  const uint64_t n = std::min<uint64_t>(count, spec.codec.hot_window);
  const uint64_t first = count - n;
  HotCheckpoint cp;
  cp.dtype = format::kDtypeF32;
  cp.num_layers = o.shape.layers;
  cp.num_kv_heads = o.shape.kv_heads;
  cp.head_dim = o.shape.head_dim;
  for (uint64_t t = first; t < count; ++t) {
    cp.token_ids.push_back(TokenId(o, t));
    cp.positions.push_back(static_cast<uint32_t>(t));
  }
  const size_t elements = size_t{o.shape.layers} * o.shape.kv_heads * n * o.shape.head_dim;
  cp.keys.resize(elements * sizeof(float));    // [L][H_kv][n][d] f32
  cp.values.resize(elements * sizeof(float));  // [L][H_kv][n][d] f32
  size_t at = 0;                               // byte offset of the next element
  for (uint32_t l = 0; l < o.shape.layers; ++l) {
    for (uint32_t h = 0; h < o.shape.kv_heads; ++h) {
      for (uint64_t t = first; t < count; ++t) {
        Stream ks(StreamStart(o.seed, kKey, t, l, h));
        Stream vs(StreamStart(o.seed, kValue, t, l, h));
        for (uint32_t j = 0; j < o.shape.head_dim; ++j, at += sizeof(float)) {
          const float k = SyntheticFloat(ks);
          const float v = SyntheticFloat(vs);
          std::memcpy(&cp.keys[at], &k, sizeof(float));
          std::memcpy(&cp.values[at], &v, sizeof(float));
        }
      }
    }
  }
  return cp;
}

struct SynthStats {
  uint64_t segments = 0;
  uint64_t commits = 0;  // including the one Create writes
  uint64_t file_bytes = 0;
  double seconds = 0;
};

// Appends o.tokens tokens and commits every o.commit_every and at the end.
Status WriteTokens(const Options& o, ArchiveWriter& writer, SynthStats& stats) {
  const ArchiveSpec& spec = writer.spec();
  SegmentBuffers buffers;
  ProgressBar bar("synth", o.tokens, ProgressBar::Unit::kTokens, !o.json);
  uint64_t next_commit = o.commit_every;
  for (uint64_t t = 0; t < o.tokens;) {
    // Segments end at commit points, so commits land exactly every commit_every tokens.
    const uint64_t n = std::min({uint64_t{o.segment_tokens}, next_commit - t, o.tokens - t});
    KIV_RETURN_IF_ERROR(writer.Append(FillSegment(o, spec, t, static_cast<uint32_t>(n), buffers)));
    ++stats.segments;
    t += n;
    if (t == next_commit || t == o.tokens) {
      KIV_RETURN_IF_ERROR(writer.Commit(MakeCheckpoint(o, spec, t)));
      next_commit += o.commit_every;
    }
    bar.Update(t, writer.file_bytes());
  }
  bar.Finish();
  stats.commits = writer.commit_count();
  stats.file_bytes = writer.file_bytes();
  return writer.Close();
}

void PrintReport(const Options& o, const SynthStats& s) {
  const double rate = s.seconds > 0 ? static_cast<double>(s.file_bytes) / s.seconds : 0.0;
  if (o.json) {
    JsonWriter w(std::cout);
    w.BeginObject().Field("path", o.path).Field("synthetic", true).Field("tokens", o.tokens);
    w.Field("segments", s.segments).Field("commits", s.commits);
    w.Field("file_bytes", s.file_bytes).Field("seconds", s.seconds);
    w.Field("bytes_per_second", rate).Field("seed", o.seed).EndObject().Finish();
    return;
  }
  char timing[48];
  std::snprintf(timing, sizeof(timing), "%.2f s", s.seconds);
  std::cout << "wrote " << o.path << ": " << Count(o.tokens, "synthetic token") << " in "
            << Count(s.segments, "segment") << " and " << Count(s.commits, "commit") << ", "
            << Grouped(s.file_bytes) << " bytes (" << HumanBytes(s.file_bytes) << ") in " << timing
            << ", " << HumanRate(rate) << '\n';
}

int RunArchiveSynth(const Options& o) {
  const ArchiveSpec spec = MakeSpec(o);
  if (Status s = spec.Validate(); !s.ok()) return UsageError("invalid shape: " + s.ToString());
  std::error_code ec;
  if (std::filesystem::exists(std::filesystem::symlink_status(o.path, ec))) {
    if (!o.force) return Fail(Quoted(o.path) + " already exists; pass --force to replace it");
    if (!std::filesystem::remove(o.path, ec)) {
      return Fail("cannot remove " + Quoted(o.path) + ": " + ec.message());
    }
  }
  const auto start = std::chrono::steady_clock::now();
  Result<std::unique_ptr<ArchiveWriter>> created = ArchiveWriter::Create(o.path, spec);
  if (!created.ok()) {
    return Fail("cannot create " + Quoted(o.path) + ": " + created.status().ToString());
  }
  SynthStats stats;
  if (Status s = WriteTokens(o, *created.value(), stats); !s.ok()) {
    // The writer keeps every commit that returned ok; say how much of the request that is.
    return Fail("cannot write " + Quoted(o.path) + ": " + s.ToString() + "; it holds the " +
                Grouped(created.value()->committed_tokens()) + " tokens committed before that");
  }
  stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  PrintReport(o, stats);
  return kExitOk;
}

}  // namespace

void SetupArchiveSynth(CLI::App& archive) {
  auto o = std::make_shared<Options>();
  CLI::App* sub = archive.add_subcommand(
      "synth", "Write an archive of SYNTHETIC tokens (for trying the tools and measuring storage)");
  sub->add_option("FILE", o->path, "The archive to create")->required();
  sub->add_option("-n,--tokens", o->tokens, "How many tokens to write")
      ->required()
      ->check(CLI::Range(uint64_t{0}, uint64_t{1} << 32));
  AddShapeOptions(*sub, o->shape);
  sub->add_option("--vocab", o->vocab, "Vocabulary size; token ids are below it")
      ->capture_default_str()
      ->check(CLI::Range(1u, ~0u));
  sub->add_option("--segment-tokens", o->segment_tokens, "Tokens per segment")
      ->capture_default_str()
      ->check(CLI::Range(1u, format::kMaxSegmentTokens));
  sub->add_option("--commit-every", o->commit_every,
                  "Commit after this many tokens (and at the end)")
      ->capture_default_str()
      ->check(CLI::Range(uint64_t{1}, ~uint64_t{0}));
  sub->add_option("--seed", o->seed, "Seed of every synthetic byte")->capture_default_str();
  sub->add_flag("-f,--force", o->force, "Replace FILE if it exists");
  sub->add_flag("--json", o->json, "Print the summary as one JSON object");
  sub->footer(R"(The data is SYNTHETIC: records and signatures are pseudo-random bytes from --seed,
token ids a function of the index, positions the index. Use it to try `kiv archive inspect` and
`kiv archive verify` and to measure storage; the model runtime writes real archives. The model
is named "synthetic" and its weights and tokenizer hashes derive from the seed, so a synthetic
archive never passes for a real model's.

Examples:
  kiv archive synth /tmp/demo.kiv --tokens 100000
  kiv archive synth /tmp/big.kiv --tokens 1000000 --segment-tokens 1024 --force)");
  OnRun(*sub, [o] { return RunArchiveSynth(*o); });
}

}  // namespace kiv::cli
