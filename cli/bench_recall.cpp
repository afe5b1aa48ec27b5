// kiv bench recall: measures the cold tier on real captures of the model — how much the record
// codec loses, and how much of the true top-k attention mass the Hamming scan (+ re-rank)
// retrieves — over a grid of signature bits, candidate counts and centring. A benchmark: it
// writes JSON and asserts nothing.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "cli/bench_env.h"
#include "cli/capture.h"
#include "cli/commands.h"
#include "cli/json.h"
#include "cli/progress.h"
#include "cli/util.h"
#include "index/asym_scan.h"
#include "index/hamming.h"
#include "index/record.h"
#include "index/rerank.h"
#include "index/signature.h"
#include "storage/format.h"

namespace kiv::cli {
namespace {

using index::RecordCodec;

struct Options {
  std::string capture;
  uint32_t steps = 256;   // scored positions: the last `steps` of the capture
  uint32_t stride = 1;    // score every stride-th of them
  uint32_t sinks = 4;
  uint32_t window = 256;  // hot window: never cold at the step that reads it
  uint32_t k = 64;
  uint32_t centre_tokens = 1024;  // the centring vector is the mean key of the first ones
  uint32_t recall_codec = 2;
  uint64_t seed = 0x6b6976;  // "kiv"
  std::vector<uint32_t> bits = {64, 128, 256};
  std::vector<uint32_t> candidates = {128, 256, 512, 1024};
  std::string out;
};

constexpr uint32_t kCodecIds[] = {1, 2, 3, 4};

// Running mean per (config, layer), so the report can give the mean and the worst layer.
struct Tally {
  std::map<std::string, std::map<uint32_t, std::pair<double, uint64_t>>> sums;
  void Add(const std::string& config, uint32_t layer, double x) {
    auto& s = sums[config][layer];
    s.first += x;
    ++s.second;
  }
  // mean over layers of per-layer means, and the worst layer's mean (lowest or highest).
  std::pair<double, std::pair<uint32_t, double>> Summary(const std::string& config,
                                                         bool lower_is_worse) const {
    const auto& layers = sums.at(config);
    double total = 0;
    std::pair<uint32_t, double> worst{0, lower_is_worse ? 1e30 : -1e30};
    for (const auto& [layer, s] : layers) {
      const double m = s.first / double(s.second);
      total += m;
      if (lower_is_worse ? m < worst.second : m > worst.second) worst = {layer, m};
    }
    return {total / double(layers.size()), worst};
  }
};

// The two ways of scoring signatures against a query; see index/hamming.h and index/asym_scan.h.
// "asym_nonorm" drops the key norm (it costs GPU memory beside the signature).
constexpr const char* kScans[] = {"hamming", "asym", "asym_nonorm"};

std::string RecallKey(const std::string& scan, uint32_t bits, bool centred, const std::string& c) {
  return scan + "_b" + std::to_string(bits) + (centred ? "_centred" : "_plain") + "_C" + c;
}

double Norm(const float* x, uint32_t d) {
  double s = 0;
  for (uint32_t i = 0; i < d; ++i) s += double(x[i]) * x[i];
  return std::sqrt(s);
}

// Exact attention of query head j over the cold tokens [lo, hi): probabilities in `p`.
void ExactProbs(const float* q, const float* keys, uint32_t d, uint32_t lo, uint32_t hi,
                std::vector<double>* p) {
  const double scale = 1.0 / std::sqrt(double(d));
  p->resize(hi - lo);
  double m = -1e300;
  for (uint32_t t = lo; t < hi; ++t) {
    double s = 0;
    for (uint32_t e = 0; e < d; ++e) s += double(q[e]) * keys[size_t{t} * d + e];
    (*p)[t - lo] = s * scale;
    m = std::max(m, (*p)[t - lo]);
  }
  double z = 0;
  for (double& x : *p) z += (x = std::exp(x - m));
  for (double& x : *p) x /= z;
}

// Σ of the k largest of p: the mass the true top-k holds.
double TopMass(const std::vector<double>& p, uint32_t k) {
  std::vector<double> s(p);
  const size_t kk = std::min<size_t>(k, s.size());
  std::nth_element(s.begin(), s.begin() + static_cast<ptrdiff_t>(kk) - 1, s.end(), std::greater<>());
  double m = 0;
  for (size_t i = 0; i < kk; ++i) m += s[i];
  return m;
}

// Everything one kv-head of one layer needs, built once.
struct HeadData {
  uint32_t layer = 0, head = 0, g = 0, d = 0, tokens = 0;
  const float* q = nullptr;  // [T][d] of query head (head·g + j) at q + j·T·d
  const float* k = nullptr;  // [T][d]
  const float* v = nullptr;  // [T][d]
  std::vector<float> centre;
};

void CodecErrors(const Options& o, const HeadData& h, Tally* t) {
  const uint32_t d = h.d, T = h.tokens, slices = d / 64;
  for (uint32_t id : kCodecIds) {
    RecordCodec codec;
    RecordCodec::FromId(id, &codec);
    std::vector<float> kd(size_t{T} * d), vd(size_t{T} * d);
    uint8_t rec[index::kRecordBytes];
    for (uint32_t tok = 0; tok < T; ++tok) {
      for (uint32_t s = 0; s < slices; ++s) {
        const size_t at = size_t{tok} * d + s * 64;
        codec.Encode(h.k + at, h.v + at, rec);
        codec.Decode(rec, kd.data() + at, vd.data() + at);
      }
      std::vector<float> dk(d), dv(d);
      for (uint32_t e = 0; e < d; ++e) {
        dk[e] = kd[size_t{tok} * d + e] - h.k[size_t{tok} * d + e];
        dv[e] = vd[size_t{tok} * d + e] - h.v[size_t{tok} * d + e];
      }
      const std::string c = "codec" + std::to_string(id);
      t->Add(c + "_k", h.layer, Norm(dk.data(), d) / std::max(1e-12, Norm(h.k + size_t{tok} * d, d)));
      t->Add(c + "_v", h.layer, Norm(dv.data(), d) / std::max(1e-12, Norm(h.v + size_t{tok} * d, d)));
    }
    // Attention output over the cold tokens: exact against decoded keys and values.
    std::vector<double> p, pd;
    for (uint32_t step = T - o.steps; step < T; step += o.stride * 4) {
      const uint32_t lo = o.sinks, hi = step + 1 - o.window;
      for (uint32_t j = 0; j < h.g; ++j) {
        const float* q = h.q + (size_t{j} * T + step) * d;
        ExactProbs(q, h.k, d, lo, hi, &p);
        ExactProbs(q, kd.data(), d, lo, hi, &pd);
        std::vector<double> out(d, 0.0), outd(d, 0.0);
        for (uint32_t tok = lo; tok < hi; ++tok)
          for (uint32_t e = 0; e < d; ++e) {
            out[e] += p[tok - lo] * h.v[size_t{tok} * d + e];
            outd[e] += pd[tok - lo] * vd[size_t{tok} * d + e];
          }
        double num = 0, den = 0;
        for (uint32_t e = 0; e < d; ++e) num += (outd[e] - out[e]) * (outd[e] - out[e]), den += out[e] * out[e];
        t->Add("codec" + std::to_string(id) + "_attn", h.layer, std::sqrt(num / std::max(den, 1e-30)));
      }
    }
  }
}

void Recall(const Options& o, const HeadData& h, Tally* t) {
  const uint32_t d = h.d, T = h.tokens, g = h.g, slices = d / 64;
  RecordCodec codec;
  RecordCodec::FromId(o.recall_codec, &codec);
  std::vector<uint8_t> records(size_t{T} * slices * index::kRecordBytes);
  for (uint32_t tok = 0; tok < T; ++tok)
    for (uint32_t s = 0; s < slices; ++s)
      codec.Encode(h.k + size_t{tok} * d + s * 64, h.v + size_t{tok} * d + s * 64,
                   records.data() + (size_t{tok} * slices + s) * index::kRecordBytes);
  // Key signatures per (bits, centring).
  std::map<std::pair<uint32_t, bool>, std::vector<uint64_t>> sigs;
  std::vector<float> norms[2];  // |k| and |k − centre| per token
  norms[0].resize(T), norms[1].resize(T);
  for (uint32_t tok = 0; tok < T; ++tok) {
    std::vector<float> c(d);
    for (uint32_t e = 0; e < d; ++e) c[e] = h.k[size_t{tok} * d + e] - h.centre[e];
    norms[0][tok] = float(Norm(h.k + size_t{tok} * d, d));
    norms[1][tok] = float(Norm(c.data(), d));
  }
  std::map<uint32_t, std::unique_ptr<index::SignatureProjection>> proj;
  for (uint32_t b : o.bits) {
    proj[b] = std::make_unique<index::SignatureProjection>(o.seed, b, d);
    for (bool centred : {false, true}) {
      auto& s = sigs[{b, centred}];
      s.resize(size_t{T} * (b / 64));
      for (uint32_t tok = 0; tok < T; ++tok)
        proj[b]->Sign(h.k + size_t{tok} * d, centred ? h.centre.data() : nullptr,
                      s.data() + size_t{tok} * (b / 64));
    }
  }
  std::vector<double> p;
  std::vector<std::vector<double>> probs(g);
  std::vector<double> top_mass(g);
  std::vector<double> group;      // Σ_j p_j(t): the kv-head group's exact attention per cold token
  double group_top_mass = 0;      // what the group's true top-k of it holds
  std::vector<float> rq(size_t{g} * d), scratch;
  std::vector<uint16_t> dist;
  std::vector<float> scores;
  index::ScanTable table;
  std::vector<uint32_t> cand, picked;
  std::vector<const uint8_t*> ptrs;
  // Two recalls of one retrieved set: against the kv-head group's true top-k (the best one
  // shared set can do: the headline), and against each query head's own top-k (stricter: three
  // heads cannot all get their own 64 from one shared 64).
  auto score = [&](const std::vector<uint32_t>& tokens_picked, uint32_t lo, const std::string& key) {
    double r = 0, gm = 0;
    for (uint32_t j = 0; j < g; ++j) {
      double mass = 0;
      for (uint32_t tok : tokens_picked) mass += probs[j][tok - lo];
      r += mass / top_mass[j];
    }
    for (uint32_t tok : tokens_picked) gm += group[tok - lo];
    t->Add(key, h.layer, gm / group_top_mass);
    t->Add(key + "_perhead", h.layer, r / g);
  };
  auto rerank = [&](uint32_t lo, size_t c, const std::string& key) {
    ptrs.resize(c);
    for (size_t i = 0; i < c; ++i) ptrs[i] = records.data() + size_t{cand[i]} * slices * index::kRecordBytes;
    picked.resize(o.k);
    const size_t m = index::RerankTopK(codec, rq.data(), g, d, cand.data(), ptrs.data(), c, o.k,
                                       picked.data(), &scratch);
    picked.resize(m);
    score(picked, lo, key);
  };
  for (uint32_t step = T - o.steps; step < T; step += o.stride) {
    const uint32_t lo = o.sinks, hi = step + 1 - o.window, n = hi - lo;
    for (uint32_t j = 0; j < g; ++j) {
      const float* q = h.q + (size_t{j} * T + step) * d;
      ExactProbs(q, h.k, d, lo, hi, &probs[j]);
      top_mass[j] = TopMass(probs[j], o.k);
      for (uint32_t s = 0; s < slices; ++s) codec.RotateQuery(q + s * 64, rq.data() + size_t{j} * d + s * 64);
    }
    group.assign(n, 0.0);
    for (uint32_t j = 0; j < g; ++j)
      for (uint32_t i = 0; i < n; ++i) group[i] += probs[j][i];
    group_top_mass = TopMass(group, o.k);
    cand.resize(n);  // the ceiling: re-rank every cold token (what the codec alone allows)
    for (uint32_t i = 0; i < n; ++i) cand[i] = lo + i;
    rerank(lo, n, "rerank_all");
    for (uint32_t b : o.bits) {
      const uint32_t words = b / 64;
      std::vector<uint64_t> qsig(size_t{g} * words);
      for (uint32_t j = 0; j < g; ++j)
        proj[b]->Sign(h.q + (size_t{j} * T + step) * d, nullptr, qsig.data() + size_t{j} * words);
      std::vector<float> qs(size_t{g} * d);
      for (uint32_t j = 0; j < g; ++j)
        std::copy_n(h.q + (size_t{j} * T + step) * d, d, qs.begin() + size_t{j} * d);
      index::BuildGroupTable(*proj[b], qs.data(), g, &table);
      for (bool centred : {false, true}) {
        const uint64_t* key_sigs = sigs[{b, centred}].data() + size_t{lo} * words;
        dist.resize(n);
        index::GroupHamming(key_sigs, n, words, qsig.data(), g, dist.data());
        scores.resize(n);
        index::AsymmetricScan(key_sigs, norms[centred].data() + lo, n, words, table,
                              scores.data());
        std::vector<float> scores_nonorm(n);
        index::AsymmetricScan(key_sigs, nullptr, n, words, table, scores_nonorm.data());
        // The c best of the cold tokens by one scan, as token indices.
        auto select = [&](const std::string& scan, size_t c) {
          cand.resize(n);
          const size_t m = scan == "hamming"
                               ? index::SelectSmallest(dist.data(), n, g * b, c, cand.data())
                               : index::SelectLargest(
                                     scan == "asym" ? scores.data() : scores_nonorm.data(), n, c,
                                     cand.data());
          cand.resize(m);
          for (uint32_t& x : cand) x += lo;
          return m;
        };
        for (const std::string scan : kScans) {
          select(scan, o.k);
          score(cand, lo, RecallKey(scan, b, centred, "scan"));
          for (uint32_t c : o.candidates)
            rerank(lo, select(scan, c), RecallKey(scan, b, centred, std::to_string(c)));
        }
      }
    }
  }
}

// 1M tokens of one head: the scan (GroupHamming) and the top-C select, per signature width.
void ScanSpeed(JsonWriter& w, std::ostream& text) {
  constexpr size_t kTokens = 1 << 20;
  constexpr uint32_t kGroup = 3, kC = 1024, kRepeats = 5;
  uint64_t state = 1;
  w.Key("scan_speed").BeginObject().Field("tokens", uint64_t{kTokens}).Field("group", kGroup);
  w.Field("kernel", index::ScanKernelName()).Key("rows").BeginArray();
  text << "\nscan speed, 1 core, " << kTokens << " tokens of one kv-head, GQA group " << kGroup
       << ", kernel " << index::ScanKernelName() << ":\n"
       << "| bits | scan ms | signatures/s | scan + top-" << kC << " select ms | scalar scan ms "
       << "| asymmetric scan ms |\n| --- | --- | --- | --- | --- | --- |\n";
  for (uint32_t bits : {64u, 128u, 256u}) {
    const uint32_t words = bits / 64;
    std::vector<uint64_t> keys(kTokens * words), q(kGroup * words);
    for (auto& x : keys) x = index::SplitMix64(&state);
    for (auto& x : q) x = index::SplitMix64(&state);
    std::vector<uint16_t> dist(kTokens);
    std::vector<uint32_t> out(kC);
    double scan = 1e30, total = 1e30, scalar = 1e30, asym = 1e30;
    std::vector<float> scores(kTokens), norms(kTokens, 1.0f);
    index::ScanTable table;
    table.scale = 0.01f;
    table.entries.resize(size_t{bits / 8} * 256);
    for (auto& x : table.entries) x = int32_t(index::SplitMix64(&state) % 1000);
    using Clock = std::chrono::steady_clock;
    for (uint32_t r = 0; r < kRepeats; ++r) {
      const auto t0 = Clock::now();
      index::GroupHamming(keys.data(), kTokens, words, q.data(), kGroup, dist.data());
      const auto t1 = Clock::now();
      index::SelectSmallest(dist.data(), kTokens, kGroup * bits, kC, out.data());
      const auto t2 = Clock::now();
      index::GroupHammingScalar(keys.data(), kTokens, words, q.data(), kGroup, dist.data());
      const auto t3 = Clock::now();
      scan = std::min(scan, std::chrono::duration<double>(t1 - t0).count());
      total = std::min(total, std::chrono::duration<double>(t2 - t0).count());
      scalar = std::min(scalar, std::chrono::duration<double>(t3 - t2).count());
      index::AsymmetricScan(keys.data(), norms.data(), kTokens, words, table, scores.data());
      asym = std::min(asym, std::chrono::duration<double>(Clock::now() - t3).count());
    }
    w.BeginObject().Field("bits", bits).Field("scan_ms", scan * 1e3);
    w.Field("signatures_per_s", double(kTokens) / scan).Field("scan_select_ms", total * 1e3);
    w.Field("scalar_scan_ms", scalar * 1e3).Field("asymmetric_scan_ms", asym * 1e3).EndObject();
    char line[160];
    std::snprintf(line, sizeof line, "| %u | %.2f | %.3g | %.2f | %.2f | %.2f |\n", bits, scan * 1e3,
                  double(kTokens) / scan, total * 1e3, scalar * 1e3, asym * 1e3);
    text << line;
  }
  w.EndArray().EndObject();
}


void WriteSummary(JsonWriter& w, const Tally& t, const std::string& key, bool lower_is_worse) {
  const auto [mean, worst] = t.Summary(key, lower_is_worse);
  w.Key(key).BeginObject().Field("mean", mean).Field("worst_layer", worst.first);
  w.Field("worst", worst.second).EndObject();
}

std::string Cell(const Tally& t, const std::string& key, bool lower_is_worse) {
  const auto [mean, worst] = t.Summary(key, lower_is_worse);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.3f (%.3f, L%u)", mean, worst.second, worst.first);
  return buf;
}

void Report(const Options& o, const CaptureMeta& m, const Tally& t, JsonWriter& w,
            std::ostream& text) {
  text << "codec error on " << m.model << ", " << m.layers.size() << " layers, " << m.tokens
       << " tokens: mean relative error (worst layer)\n"
       << "| codec | id | K | V | attention output over cold tokens |\n| --- | --- | --- | --- | --- |\n";
  w.Key("codec_error").BeginObject();
  for (uint32_t id : kCodecIds) {
    const std::string c = "codec" + std::to_string(id);
    text << "| " << format::CodecName(id) << " | " << id << " | " << Cell(t, c + "_k", false) << " | "
         << Cell(t, c + "_v", false) << " | " << Cell(t, c + "_attn", false) << " |\n";
    w.Key(c).BeginObject().Field("name", format::CodecName(id));
    WriteSummary(w, t, c + "_k", false);
    WriteSummary(w, t, c + "_v", false);
    WriteSummary(w, t, c + "_attn", false);
    w.EndObject();
  }
  w.EndObject();
  text << "\nrecall of the true top-" << o.k << " attention mass, mean (worst layer), codec "
       << format::CodecName(o.recall_codec) << "; re-ranking all cold tokens: "
       << Cell(t, "rerank_all", true) << " (per query head: " << Cell(t, "rerank_all_perhead", true)
       << ")\n| scan | bits | centred | scan only |";
  for (uint32_t c : o.candidates) text << " C=" << c << " |";
  text << "\n| --- | --- | --- | --- |";
  for (size_t i = 0; i < o.candidates.size(); ++i) text << " --- |";
  text << '\n';
  w.Key("recall").BeginObject();
  WriteSummary(w, t, "rerank_all", true);
  WriteSummary(w, t, "rerank_all_perhead", true);
  for (const std::string scan : kScans) {
    for (uint32_t b : o.bits) {
      for (bool centred : {false, true}) {
        text << "| " << scan << " | " << b << " | " << (centred ? "yes" : "no") << " | "
             << Cell(t, RecallKey(scan, b, centred, "scan"), true) << " |";
        WriteSummary(w, t, RecallKey(scan, b, centred, "scan"), true);
        for (uint32_t c : o.candidates) {
          const std::string key = RecallKey(scan, b, centred, std::to_string(c));
          text << ' ' << Cell(t, key, true) << " |";
          WriteSummary(w, t, key, true);
          WriteSummary(w, t, key + "_perhead", true);
        }
        text << '\n';
      }
    }
  }
  w.EndObject();
}

int RunBenchRecall(const Options& o) {
  auto meta = ReadCaptureMeta(o.capture);
  if (!meta.ok()) return Fail(meta.status().ToString());
  const CaptureMeta& m = meta.value();
  if (o.steps + o.window + o.sinks + o.k >= m.tokens || o.stride == 0)
    return UsageError("--steps, --window, --sinks and --k leave no cold tokens in a capture of " +
                      std::to_string(m.tokens));
  // Taken before the run: the commit and command are those of the binary that measured.
  const BenchEnvironment env = CollectEnvironment(".");
  Tally tally;
  const uint32_t g = m.num_q_heads / m.num_kv_heads, T = m.tokens, d = m.head_dim;
  ProgressBar bar("recall", uint64_t{m.layers.size()} * m.num_kv_heads, ProgressBar::Unit::kTokens);
  uint64_t done = 0;
  for (uint32_t layer : m.layers) {
    auto data = ReadCaptureLayer(m, layer);
    if (!data.ok()) return Fail(data.status().ToString());
    for (uint32_t h = 0; h < m.num_kv_heads; ++h) {
      HeadData hd;
      hd.layer = layer, hd.head = h, hd.g = g, hd.d = d, hd.tokens = T;
      hd.q = data->q.data() + size_t{h} * g * T * d;
      hd.k = data->k.data() + size_t{h} * T * d;
      hd.v = data->v.data() + size_t{h} * T * d;
      hd.centre.assign(d, 0.0f);
      const uint32_t n = std::min(o.centre_tokens, T);
      for (uint32_t tok = 0; tok < n; ++tok)
        for (uint32_t e = 0; e < d; ++e) hd.centre[e] += hd.k[size_t{tok} * d + e] / float(n);
      CodecErrors(o, hd, &tally);
      Recall(o, hd, &tally);
      bar.Update(++done);
    }
  }
  bar.Finish();
  std::ostringstream text;
  std::ofstream file;
  if (!o.out.empty()) file.open(o.out);
  std::ostream& json_out = o.out.empty() ? static_cast<std::ostream&>(std::cout) : file;
  JsonWriter w(json_out);
  w.BeginObject().Field("benchmark", "recall").Field("capture", o.capture).Field("model", m.model);
  w.Key("knobs").BeginObject().Field("tokens", T).Field("steps", o.steps).Field("stride", o.stride);
  w.Field("sinks", o.sinks).Field("window", o.window).Field("k", o.k);
  w.Field("centre_tokens", o.centre_tokens).Field("recall_codec", o.recall_codec);
  w.Field("seed", o.seed).Field("group", g).EndObject();
  Report(o, m, tally, w, text);
  ScanSpeed(w, text);
  WriteEnvironmentJson(w, env);
  w.EndObject().Finish();
  std::cerr << text.str();
  if (!o.out.empty()) std::cerr << "result written to " << o.out << '\n';
  return kExitOk;
}

std::string DefaultCapture() { return KivCacheDir() + "/captures/smollm2-austen-8k"; }

}  // namespace

void SetupBenchRecall(CLI::App& bench) {
  auto o = std::make_shared<Options>();
  o->capture = DefaultCapture();
  CLI::App* sub = bench.add_subcommand(
      "recall", "Measure the record codec and Hamming-scan recall on a real capture (CPU)");
  sub->add_option("--capture", o->capture, "Capture directory (tools/capture/capture.sh)")
      ->capture_default_str();
  sub->add_option("--steps", o->steps, "Scored positions: the last N of the capture")->capture_default_str();
  sub->add_option("--stride", o->stride, "Score every Nth of them")->capture_default_str();
  sub->add_option("--sinks", o->sinks, "Sink tokens (never cold)")->capture_default_str();
  sub->add_option("--window", o->window, "Hot-window tokens (never cold)")->capture_default_str();
  sub->add_option("--k", o->k, "Tokens retrieved per kv-head")->capture_default_str();
  sub->add_option("--bits", o->bits, "Signature widths to try (comma-separated)")
      ->delimiter(',')
      ->capture_default_str();
  sub->add_option("--candidates", o->candidates, "Candidate counts C to try (comma-separated)")
      ->delimiter(',')
      ->capture_default_str();
  sub->add_option("--recall-codec", o->recall_codec, "Codec id whose keys re-rank")
      ->capture_default_str()
      ->check(CLI::IsMember({1u, 2u, 3u, 4u}));
  sub->add_option("-o,--out", o->out, "Write the JSON result here (else to stdout)");
  sub->footer(R"(Tables go to stderr as Markdown, the JSON result to --out or stdout. Recall is the
share of the exact attention mass of each query head's true top-k (over the cold tokens) that the
k retrieved tokens of its kv-head hold.

Example:
  tools/capture/capture.sh && kiv bench recall --out recall.json)");
  OnRun(*sub, [o] { return RunBenchRecall(*o); });
}

}  // namespace kiv::cli
