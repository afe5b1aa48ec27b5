// kiv bench codec: what archiving a token costs the CPU, per (layer, kv-head) slot: encoding its
// key and value into a record, signing its key, decoding a record (re-ranking and attention read
// records back), and the plain reference loops the fast paths are tested against.
//
// A benchmark, not a test: it measures on one core, writes a JSON result with the environment it
// ran in, and asserts nothing. Eviction does this for every (layer, kv-head) of every evicted
// token: 90 slots a token for SmolLM2, 94 million at 1M tokens of context.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "cli/bench_env.h"
#include "cli/commands.h"
#include "cli/json.h"
#include "cli/util.h"
#include "index/record.h"
#include "index/signature.h"
#include "storage/format.h"

namespace kiv::cli {

namespace {

struct Options {
  uint32_t tokens = 20000;
  uint32_t runs = 5;
  std::string out;
};

// Seconds per item of the best of `runs` passes of f over `items` items.
template <typename F>
double BestPerItem(uint32_t runs, uint32_t items, F f) {
  double best = 1e30;
  for (uint32_t r = 0; r < runs; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best / items;
}

int RunBenchCodec(const Options& o) {
  constexpr uint32_t kDim = index::kRecordDim;
  const uint32_t n = o.tokens;
  uint64_t state = 7;
  std::vector<float> keys(size_t{n} * kDim), values(size_t{n} * kDim), k(kDim), v(kDim);
  for (float& x : keys) x = float(int64_t(index::SplitMix64(&state) >> 40) - (1 << 23)) / float(1 << 21);
  for (float& x : values) x = float(int64_t(index::SplitMix64(&state) >> 40) - (1 << 23)) / float(1 << 23);
  std::vector<uint8_t> records(size_t{n} * index::kRecordBytes);
  const BenchEnvironment env = CollectEnvironment(".");
  std::ofstream file;
  if (!o.out.empty()) file.open(o.out);
  if (!o.out.empty() && !file) return Fail("cannot write " + Quoted(o.out));
  std::ostream& json_out = o.out.empty() ? static_cast<std::ostream&>(std::cout) : file;
  JsonWriter w(json_out);
  w.BeginObject().Field("benchmark", "codec");
  w.Key("knobs").BeginObject().Field("tokens", n).Field("runs", o.runs).EndObject();
  std::cerr << "per (layer, kv-head) slot and token, 1 core, best of " << o.runs << " passes over "
            << n << " random tokens:\n| codec | encode us | decode us |\n| --- | --- | --- |\n";
  w.Key("codecs").BeginArray();
  for (uint32_t id : {format::kCodecK4V8, format::kCodecK4V8Rotated, format::kCodecK6V6Rotated,
                      format::kCodecK5V7Rotated}) {
    index::RecordCodec c;
    index::RecordCodec::FromId(id, &c);
    const double enc = BestPerItem(o.runs, n, [&] {
      for (uint32_t t = 0; t < n; ++t)
        c.Encode(&keys[size_t{t} * kDim], &values[size_t{t} * kDim],
                 &records[size_t{t} * index::kRecordBytes]);
    });
    const double dec = BestPerItem(o.runs, n, [&] {
      for (uint32_t t = 0; t < n; ++t) c.Decode(&records[size_t{t} * index::kRecordBytes], k.data(), v.data());
    });
    w.BeginObject().Field("id", id).Field("name", format::CodecName(id));
    w.Field("encode_us", enc * 1e6).Field("decode_us", dec * 1e6).EndObject();
    char line[128];
    std::snprintf(line, sizeof line, "| %s | %.3f | %.3f |\n", format::CodecName(id), enc * 1e6, dec * 1e6);
    std::cerr << line;
  }
  w.EndArray();
  std::cerr << "\n| signature bits | Sign us | SignReference us |\n| --- | --- | --- |\n";
  w.Key("signatures").BeginArray();
  for (uint32_t bits : {64u, 128u, 256u}) {
    const index::SignatureProjection p(0x6b6976, bits, kDim);
    std::vector<uint64_t> sigs(size_t{n} * p.words());
    const double fast = BestPerItem(o.runs, n, [&] {
      for (uint32_t t = 0; t < n; ++t) p.Sign(&keys[size_t{t} * kDim], nullptr, &sigs[size_t{t} * p.words()]);
    });
    const double plain = BestPerItem(o.runs, n, [&] {
      for (uint32_t t = 0; t < n; ++t)
        p.SignReference(&keys[size_t{t} * kDim], nullptr, &sigs[size_t{t} * p.words()]);
    });
    w.BeginObject().Field("bits", bits).Field("sign_us", fast * 1e6);
    w.Field("sign_reference_us", plain * 1e6).EndObject();
    char line[128];
    std::snprintf(line, sizeof line, "| %u | %.3f | %.3f |\n", bits, fast * 1e6, plain * 1e6);
    std::cerr << line;
  }
  w.EndArray();
  WriteEnvironmentJson(w, env);
  w.EndObject().Finish();
  if (!o.out.empty()) std::cerr << "result written to " << o.out << '\n';
  return kExitOk;
}

}  // namespace

void SetupBenchCodec(CLI::App& bench) {
  auto o = std::make_shared<Options>();
  CLI::App* sub = bench.add_subcommand(
      "codec", "Measure the CPU cost per token and slot of encoding, decoding and signing");
  sub->add_option("--tokens", o->tokens, "Random tokens per pass")
      ->capture_default_str()
      ->check(CLI::Range(1u, 10000000u));
  sub->add_option("--runs", o->runs, "Passes; the best is reported")
      ->capture_default_str()
      ->check(CLI::Range(1u, 100u));
  sub->add_option("-o,--out", o->out, "Write the JSON result here (else to stdout)");
  sub->footer(R"(Eviction encodes and signs every evicted token once per (layer, kv-head); a CPU
re-rank decodes C records per retrieval. Tables go to stderr.

Example:
  kiv bench codec --out codec.json)");
  OnRun(*sub, [o] { return RunBenchCodec(*o); });
}

}  // namespace kiv::cli
