// kiv bench fidelity: how faithful kiv is to the same model with a plain full cache
// (../shared/QUALITY.md, Fidelity 1–5), on the real model and Austen text:
//   equivalence  codec bypassed and k = all: logits equal the full cache's to float tolerance;
//                the real codec with k = all: the KL that the codec alone costs;
//   resume       generate N tokens; generate n < N, close, reopen the archive, continue: the
//                tokens and logits must be identical, bit for bit;
//   kl           teacher-forced: a long context, then scored positions fed one by one as decode
//                steps; per-step KL(full ‖ kiv) over the whole vocabulary and top-1 agreement;
//                the CPU decode speed of both at that context;
//   recall       the share of the exact top-k attention mass that retrieval found, per layer,
//                measured at every decode step of a second kiv run over the same text;
//   needle       a passkey at several depths of Emma, three arms: full cache, kiv, and kiv with
//                cold retrieval off (the ablation).
// A benchmark: it writes JSON and asserts nothing; the JSON says which goals were met.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "cli/bench_env.h"
#include "cli/commands.h"
#include "cli/json.h"
#include "cli/progress.h"
#include "cli/session_options.h"
#include "cli/util.h"
#include "index/signature.h"
#include "storage/mapped_file.h"

namespace kiv::cli {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

struct Options {
  SessionFlags flags;  // model, device, chunk and the cache knobs of the kiv arms
  std::string text_dir;
  std::string out;
  std::vector<std::string> parts = {"equivalence", "resume", "kl", "needle"};
  std::string kl_book = "pride_and_prejudice";
  uint32_t kl_context = 8192;
  uint32_t kl_scored = 256;
  bool kl_codec_only = true;  // also the arm with the real codec and k = all
  bool recall = true;         // the recall arm (a second kiv run over the KL text)
  uint32_t equivalence_tokens = 2048;
  uint32_t equivalence_scored = 16;
  uint32_t equivalence_chunk = 512;
  uint32_t resume_new = 24;
  uint32_t resume_cut = 8;
  std::string needle_book = "emma";
  std::vector<uint32_t> needle_lengths = {2048, 4096, 8192};
  std::vector<double> needle_depths = {0.10, 0.25, 0.50, 0.75, 0.90};
  std::vector<uint32_t> needle_cells;  // empty: every cell of the grid
  uint32_t needle_new = 32;
  uint64_t seed = 0x6b6976;
};

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// One book of the Austen text, at least `min_chars` long; empty after saying why (Fail).
std::string ReadBook(const Options& o, const std::string& book, size_t min_chars) {
  const std::string path = (fs::path(o.text_dir) / (book + ".txt")).string();
  Result<std::string> text = ReadFileToString(path);
  if (!text.ok()) {
    Fail("cannot read the Austen text " + Quoted(path) +
         " (tools/data/austen.sh fetches it): " + text.status().ToString());
    return {};
  }
  if (text->size() < min_chars) {
    Fail(Quoted(path) + " has " + std::to_string(text->size()) +
         " characters; the benchmark needs " + std::to_string(min_chars));
    return {};
  }
  return std::move(text).value();
}

// Haystacks and the resume prompt start at this character of the book (past the title pages),
// as tools/data/make_needle.py takes it.
constexpr size_t kBookOffset = 20000;

// The session options of one arm, from the kiv arm's.
enum class Arm { kFull, kKiv, kAblation, kExact, kCodecOnly, kRecall };
const char* ArmName(Arm a) {
  switch (a) {
    case Arm::kFull:
      return "full";
    case Arm::kKiv:
      return "kiv";
    case Arm::kAblation:
      return "ablation";
    case Arm::kExact:
      return "exact_cold_k_all";
    case Arm::kCodecOnly:
      return "codec_k_all";
    case Arm::kRecall:
      return "kiv_recall";
  }
  return "?";
}

SessionOptions ArmOptions(const Options& o, Arm arm) {
  SessionOptions s = o.flags.session;
  s.archive.clear();
  s.sampler = SamplerOptions{};  // greedy
  constexpr uint32_t kAll = 1u << 30;
  switch (arm) {
    case Arm::kFull:
      s.full_cache = true;
      break;
    case Arm::kKiv:
      break;
    case Arm::kAblation:
      s.cache.retrieval = false;
      break;
    case Arm::kExact:
      s.cache.exact_cold = true;
      [[fallthrough]];
    case Arm::kCodecOnly:
      s.cache.top_k = s.cache.candidates = kAll;
      break;
    case Arm::kRecall:
      s.cache.measure_recall = true;
      break;
  }
  return s;
}

std::unique_ptr<Session> OpenArm(const SessionOptions& s) {
  auto r = Session::Open(s);
  if (!r.ok()) {
    Fail("cannot open a session: " + r.status().ToString());
    return nullptr;
  }
  return std::move(r.value());
}

// Teacher forcing: prefill ids[0, context) in chunks, then feed ids[context, context + scored - 1)
// one by one. Returns the logits after each of the `scored` feeds that end a position (the last
// prefill position first), each of which predicts the next token of the text.
struct ForcedRun {
  std::vector<std::vector<float>> logits;
  double prefill_s = 0, decode_s = 0;
  uint32_t decode_steps = 0;
  RecallStats recall;
  bool ok = false;
};

ForcedRun TeacherForce(const SessionOptions& s, const std::vector<int32_t>& ids, uint32_t context,
                       uint32_t scored, const std::string& label) {
  ForcedRun run;
  std::unique_ptr<Session> session = OpenArm(s);
  if (!session) return run;
  const std::vector<int32_t> prefix(ids.begin(), ids.begin() + context);
  const auto t0 = Clock::now();
  {
    ProgressBar bar(label + " prefill", prefix.size(), ProgressBar::Unit::kTokens);
    if (Status st = session->Prefill(prefix, [&](uint64_t d, uint64_t) { bar.Update(d); });
        !st.ok()) {
      Fail(label + ": prefill failed: " + st.ToString());
      return run;
    }
  }
  const auto t1 = Clock::now();
  run.logits.push_back(session->last_logits());
  {
    ProgressBar bar(label + " decode", scored - 1, ProgressBar::Unit::kTokens);
    for (uint32_t i = 0; i + 1 < scored; ++i) {
      if (Status st = session->Prefill({ids[context + i]}); !st.ok()) {
        Fail(label + ": decode step failed: " + st.ToString());
        return run;
      }
      run.logits.push_back(session->last_logits());
      bar.Update(i + 1);
    }
  }
  const auto t2 = Clock::now();
  run.prefill_s = Seconds(t0, t1);
  run.decode_s = Seconds(t1, t2);
  run.decode_steps = scored - 1;
  run.recall = session->recall();
  run.ok = true;
  std::fprintf(stderr, "%s: prefill %u tokens %.1f tok/s, %u decode steps %.2f tok/s\n",
               label.c_str(), context, context / std::max(run.prefill_s, 1e-9), run.decode_steps,
               run.decode_steps / std::max(run.decode_s, 1e-9));
  return run;
}

// log-softmax in double.
std::vector<double> LogSoftmax(const std::vector<float>& x) {
  double m = -INFINITY;
  for (float v : x) m = std::max(m, double(v));
  double s = 0;
  for (float v : x) s += std::exp(double(v) - m);
  const double lse = m + std::log(s);
  std::vector<double> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = double(x[i]) - lse;
  return out;
}

size_t Argmax(const std::vector<float>& x) {
  return size_t(std::max_element(x.begin(), x.end()) - x.begin());  // first of equal maxima
}

double Quantile(std::vector<double> v, double q) {
  if (v.empty()) return std::nan("");
  std::sort(v.begin(), v.end());
  const double at = q * double(v.size() - 1);
  const size_t lo = size_t(std::floor(at)), hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (at - double(lo));
}

struct Divergence {
  std::vector<double> kl;
  double max_abs_logit = 0;
  uint32_t top1_agree = 0;
};

Divergence Compare(const ForcedRun& base, const ForcedRun& arm) {
  Divergence d;
  for (size_t i = 0; i < base.logits.size() && i < arm.logits.size(); ++i) {
    const std::vector<double> p = LogSoftmax(base.logits[i]), q = LogSoftmax(arm.logits[i]);
    double kl = 0;
    for (size_t t = 0; t < p.size(); ++t) kl += std::exp(p[t]) * (p[t] - q[t]);
    d.kl.push_back(std::max(0.0, kl));
    for (size_t t = 0; t < p.size(); ++t)
      d.max_abs_logit =
          std::max(d.max_abs_logit, double(std::fabs(base.logits[i][t] - arm.logits[i][t])));
    d.top1_agree += Argmax(base.logits[i]) == Argmax(arm.logits[i]);
  }
  return d;
}

void WriteDivergence(JsonWriter& w, const Divergence& d) {
  w.Field("positions", uint64_t(d.kl.size()));
  w.Field("kl_median", Quantile(d.kl, 0.5)).Field("kl_p95", Quantile(d.kl, 0.95));
  w.Field("kl_max", d.kl.empty() ? 0.0 : *std::max_element(d.kl.begin(), d.kl.end()));
  w.Field("top1_agreement", d.kl.empty() ? 0.0 : double(d.top1_agree) / double(d.kl.size()));
  w.Field("max_abs_logit_diff", d.max_abs_logit);
}

void WriteSpeed(JsonWriter& w, const ForcedRun& r, uint32_t context) {
  w.Field("prefill_tokens", context).Field("prefill_s", r.prefill_s);
  w.Field("prefill_tok_s", context / std::max(r.prefill_s, 1e-9));
  w.Field("decode_steps", r.decode_steps).Field("decode_s", r.decode_s);
  w.Field("decode_tok_s", r.decode_steps / std::max(r.decode_s, 1e-9));
}

void WriteRecall(JsonWriter& w, const RecallStats& r) {
  double worst_mean = std::nan("");
  const int worst = r.WorstLayer(&worst_mean);
  uint64_t n = 0;
  for (uint64_t c : r.count) n += c;
  w.Field("retrievals", n).Field("mean", r.Mean()).Field("worst_layer", worst);
  w.Field("worst_layer_mean", worst_mean);
  auto per_layer = [&](const char* key, const std::vector<double>& v) {
    w.Key(key).BeginArray();
    for (size_t l = 0; l < v.size(); ++l)
      w.Double(r.count[l] ? v[l] / double(r.count[l]) : std::nan(""));
    w.EndArray();
  };
  per_layer("per_layer", r.sum);
  per_layer("cold_attention_share_per_layer", r.cold_mass);
  per_layer("cold_mass_retrieved_per_layer", r.coverage);
}

// Tokens of a book's text from its start (the capture's text for kl).
std::vector<int32_t> BookTokens(const Session& s, const std::string& text, size_t want) {
  const size_t chars = std::min(text.size(), want * 6 + 4096);  // ~4.5 chars a token in Austen
  std::vector<int32_t> ids = s.tokenizer().Encode(std::string_view(text).substr(0, chars));
  if (ids.size() > want) ids.resize(want);
  return ids;
}

int Equivalence(const Options& o, const std::vector<int32_t>& text_ids, JsonWriter& w) {
  const uint32_t n = o.equivalence_tokens, scored = o.equivalence_scored;
  if (text_ids.size() < n + scored) return Fail("the equivalence text is too short");
  SessionOptions full = ArmOptions(o, Arm::kFull), exact = ArmOptions(o, Arm::kExact);
  SessionOptions codec = ArmOptions(o, Arm::kCodecOnly);
  for (SessionOptions* s : {&full, &exact, &codec}) s->chunk_tokens = o.equivalence_chunk;
  const ForcedRun base = TeacherForce(full, text_ids, n, scored, "equivalence full");
  const ForcedRun ex = TeacherForce(exact, text_ids, n, scored, "equivalence exact");
  const ForcedRun co = TeacherForce(codec, text_ids, n, scored, "equivalence codec");
  if (!base.ok || !ex.ok || !co.ok) return kExitFailure;
  const Divergence de = Compare(base, ex), dc = Compare(base, co);
  w.Key("equivalence").BeginObject();
  w.Field("context", n).Field("chunk", o.equivalence_chunk);
  w.Key(ArmName(Arm::kExact)).BeginObject();
  WriteDivergence(w, de);
  w.EndObject();
  w.Key(ArmName(Arm::kCodecOnly)).BeginObject();
  WriteDivergence(w, dc);
  w.EndObject();
  // Float tolerance: the tiered cache sums the same terms in another order (two partial
  // softmaxes merged by their log-sum-exps), so float32 logits differ in the last bits.
  const double tolerance = 1e-3;
  w.Field("tolerance", tolerance).Field("pass", de.max_abs_logit <= tolerance);
  w.EndObject();
  std::fprintf(stderr,
               "equivalence: exact cold, k = all: max |logit diff| %.3g; codec, k = all: KL median "
               "%.3g, max %.3g\n",
               de.max_abs_logit, Quantile(dc.kl, 0.5),
               dc.kl.empty() ? 0.0 : *std::max_element(dc.kl.begin(), dc.kl.end()));
  return kExitOk;
}

int Resume(const Options& o, const std::string& text, JsonWriter& w) {
  const fs::path dir = fs::temp_directory_path() / ("kiv-fidelity-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  SessionOptions s = ArmOptions(o, Arm::kKiv);
  s.sampler.temperature = 0.8f;
  s.sampler.seed = 5;
  struct Trace {
    std::vector<int32_t> ids;
    std::vector<std::vector<float>> logits;
  };
  // One generation of `count` tokens on the archive at `path`, text first when given.
  auto generate = [&](const std::string& path, const std::string& prompt, uint32_t count,
                      Trace* t) -> bool {
    SessionOptions so = s;
    so.archive = path;
    std::unique_ptr<Session> session = OpenArm(so);
    if (!session) return false;
    if (!prompt.empty() && !session->Prefill(session->UserTurn(prompt)).ok()) return false;
    auto got = session->Generate(count, [&](int32_t) {
      t->logits.push_back(session->last_logits());
      return true;
    });
    if (!got.ok()) return false;
    t->ids.insert(t->ids.end(), got->begin(), got->end());
    return session->Commit().ok();
  };
  const std::string prompt = text + "\n\nTell me about Emma.";
  Trace whole, cut;
  const auto t0 = Clock::now();
  const bool ran = generate((dir / "whole.kiv").string(), prompt, o.resume_new, &whole) &&
                   generate((dir / "cut.kiv").string(), prompt, o.resume_cut, &cut) &&
                   generate((dir / "cut.kiv").string(), "", o.resume_new - o.resume_cut, &cut);
  const double s_total = Seconds(t0, Clock::now());
  std::error_code ec;
  fs::remove_all(dir, ec);
  if (!ran) return Fail("the resume gate could not run its sessions");
  bool same = whole.ids == cut.ids && whole.logits.size() == cut.logits.size();
  for (size_t i = 0; same && i < whole.logits.size(); ++i)
    same = whole.logits[i].size() == cut.logits[i].size() &&
           std::memcmp(whole.logits[i].data(), cut.logits[i].data(),
                       whole.logits[i].size() * sizeof(float)) == 0;
  w.Key("resume").BeginObject();
  w.Field("tokens", o.resume_new).Field("cut_after", o.resume_cut);
  w.Field("temperature", 0.8).Field("seed", 5);
  w.Field("process",
          "same process, sessions closed and reopened (tests/cli/model_test.cpp runs the gate "
          "across processes)");
  w.Field("identical_tokens", whole.ids == cut.ids).Field("identical_logits_bitwise", same);
  w.Field("seconds", s_total).Field("pass", same).EndObject();
  std::fprintf(stderr, "resume: %u tokens, cut after %u: %s\n", o.resume_new, o.resume_cut,
               same ? "identical, bit for bit" : "DIFFERENT");
  return kExitOk;
}

int Kl(const Options& o, const std::vector<int32_t>& ids, JsonWriter& w) {
  const uint32_t n = o.kl_context, scored = o.kl_scored;
  if (ids.size() < size_t{n} + scored) return Fail("the KL text is too short");
  const ForcedRun base = TeacherForce(ArmOptions(o, Arm::kFull), ids, n, scored, "kl full");
  const ForcedRun kiv = TeacherForce(ArmOptions(o, Arm::kKiv), ids, n, scored, "kl kiv");
  if (!base.ok || !kiv.ok) return kExitFailure;
  const Divergence d = Compare(base, kiv);
  w.Key("kl").BeginObject();
  w.Field("book", o.kl_book).Field("context", n).Field("scored", scored);
  w.Field("chunk", o.flags.session.chunk_tokens);
  w.Key("kiv").BeginObject();
  WriteDivergence(w, d);
  const double median = Quantile(d.kl, 0.5), p95 = Quantile(d.kl, 0.95);
  const double top1 = double(d.top1_agree) / double(std::max<size_t>(1, d.kl.size()));
  w.Key("goals").BeginObject();
  w.Field("kl_median_le_0.001", median <= 0.001).Field("kl_p95_le_0.01", p95 <= 0.01);
  w.Field("top1_ge_0.97", top1 >= 0.97).EndObject();
  w.Key("speed").BeginObject();
  WriteSpeed(w, kiv, n);
  w.EndObject().EndObject();
  w.Key("full").BeginObject().Key("speed").BeginObject();
  WriteSpeed(w, base, n);
  w.EndObject().EndObject();
  std::fprintf(
      stderr, "kl: kiv against full at %u tokens: median %.3g, p95 %.3g, max %.3g, top-1 %.4f\n", n,
      median, p95, d.kl.empty() ? 0.0 : *std::max_element(d.kl.begin(), d.kl.end()), top1);
  if (o.kl_codec_only) {
    const ForcedRun co = TeacherForce(ArmOptions(o, Arm::kCodecOnly), ids, n, scored, "kl codec");
    if (!co.ok) return kExitFailure;
    const Divergence dc = Compare(base, co);
    w.Key(ArmName(Arm::kCodecOnly)).BeginObject();
    WriteDivergence(w, dc);
    w.EndObject();
    std::fprintf(stderr, "kl: codec only (k = all): median %.3g, p95 %.3g\n", Quantile(dc.kl, 0.5),
                 Quantile(dc.kl, 0.95));
  }
  w.EndObject();
  if (o.recall) {
    const ForcedRun rec = TeacherForce(ArmOptions(o, Arm::kRecall), ids, n, scored, "recall");
    if (!rec.ok) return kExitFailure;
    w.Key("recall").BeginObject();
    w.Field("what",
            "single-query retrievals (decode steps and the one-by-one prefill tail) of a kiv run "
            "over the KL text");
    w.Field("k", o.flags.session.cache.top_k);
    WriteRecall(w, rec.recall);
    w.EndObject();
    double worst = 0;
    const int layer = rec.recall.WorstLayer(&worst);
    std::fprintf(stderr, "recall: mean %.3f, worst layer %d: %.3f\n", rec.recall.Mean(), layer,
                 worst);
  }
  return kExitOk;
}

// The needle grid. The depth is measured over the part of the document that is cold when the
// question is read (all but its last window + 64 tokens), so that no needle sits in the hot window.
struct NeedleCell {
  uint32_t length = 0;
  double depth = 0;
  std::string key;
  std::vector<int32_t> prompt;
  int64_t needle_token = -1;  // position of the needle's first token in the prompt
};

NeedleCell MakeNeedle(const Options& o, const Session& s, const std::vector<int32_t>& hay_all,
                      uint32_t length, double depth, uint64_t salt) {
  const Tokenizer& tok = s.tokenizer();
  NeedleCell c;
  c.length = length, c.depth = depth;
  uint64_t state = o.seed + salt;
  c.key = std::to_string(10000 + index::SplitMix64(&state) % 90000);
  const std::string needle = " The secret passkey is " + c.key + ". Remember it. ";
  const std::string question = "\n\nWhat is the secret passkey mentioned in the text above?";
  const size_t overhead = s.UserTurn(question).size() + tok.Encode(needle).size();
  const size_t hay = std::min(hay_all.size(), size_t(length) - std::min<size_t>(length, overhead));
  const size_t reserve = size_t{o.flags.session.cache.window} + 64;
  const size_t at = size_t(depth * double(hay > reserve ? hay - reserve : 0));
  const std::vector<int32_t> before(hay_all.begin(), hay_all.begin() + at);
  const std::vector<int32_t> after(hay_all.begin() + at, hay_all.begin() + hay);
  const std::string head = tok.Decode(before);
  c.prompt = s.UserTurn(head + needle + tok.Decode(after) + question);
  // Where the needle landed: the token at which the prompt's bytes pass "passkey".
  static constexpr std::string_view kMark = "secret passkey";
  std::string bytes;
  for (size_t i = 0; i < c.prompt.size(); ++i) {
    const size_t from = bytes.size() >= kMark.size() ? bytes.size() - kMark.size() + 1 : 0;
    bytes += tok.TokenBytes(c.prompt[i]);
    if (bytes.find(kMark, from) != std::string::npos) {  // only matches this token completes
      c.needle_token = int64_t(i);
      break;
    }
  }
  return c;
}

// `probe`: a fresh session, for its tokenizer and chat template.
int Needle(const Options& o, const Session& probe, const std::string& text, JsonWriter& w) {
  const uint32_t longest = *std::max_element(o.needle_lengths.begin(), o.needle_lengths.end());
  const std::vector<int32_t> hay = BookTokens(probe, text.substr(kBookOffset), longest);
  if (hay.size() < longest)
    return Fail(o.needle_book + " has " + std::to_string(hay.size()) + " tokens after character " +
                std::to_string(kBookOffset) + "; the longest needle needs " +
                std::to_string(longest));
  const size_t grid = o.needle_lengths.size() * o.needle_depths.size();
  for (uint32_t cell : o.needle_cells)
    if (cell >= grid)
      return Fail("--needle-cells " + std::to_string(cell) + ": the grid has " +
                  std::to_string(grid) + " cells (0 to " + std::to_string(grid - 1) + ")");
  const Arm arms[] = {Arm::kFull, Arm::kKiv, Arm::kAblation};
  uint32_t passed[3] = {0, 0, 0}, cells = 0, kiv_missed_full = 0, ablation_found = 0, misplaced = 0;
  uint32_t grid_index = 0;  // the cell's place in the grid: its passkey's salt
  w.Key("needle").BeginObject();
  w.Field("book", o.needle_book).Field("new_tokens", o.needle_new);
  w.Field("depth_over", "the document's tokens that are cold when the question is read");
  w.Key("cells").BeginArray();
  for (uint32_t length : o.needle_lengths) {
    for (size_t di = 0; di < o.needle_depths.size(); ++di) {
      const uint32_t index = grid_index++;
      if (!o.needle_cells.empty() &&
          std::find(o.needle_cells.begin(), o.needle_cells.end(), index) == o.needle_cells.end())
        continue;
      const NeedleCell c = MakeNeedle(o, probe, hay, length, o.needle_depths[di], index);
      ++cells;
      const int64_t from_end = int64_t(c.prompt.size()) - c.needle_token;
      const bool outside = c.needle_token >= 0 && from_end > int64_t(o.flags.session.cache.window);
      misplaced += !outside;
      w.BeginObject().Field("cell", index).Field("length", length).Field("depth", c.depth);
      w.Field("key", c.key);
      w.Field("prompt_tokens", uint64_t(c.prompt.size())).Field("needle_token", c.needle_token);
      w.Field("needle_outside_hot_window", outside);
      bool pass[3] = {false, false, false};
      for (int a = 0; a < 3; ++a) {
        std::unique_ptr<Session> s = OpenArm(ArmOptions(o, arms[a]));
        if (!s) return kExitFailure;
        const auto t0 = Clock::now();
        if (Status st = s->Prefill(c.prompt); !st.ok())
          return Fail("needle prefill: " + st.ToString());
        const auto t1 = Clock::now();
        auto out = s->Generate(o.needle_new);
        if (!out.ok()) return Fail("needle generation: " + out.status().ToString());
        const std::string answer = s->tokenizer().Decode(out.value(), /*skip_special=*/true);
        pass[a] = answer.find(c.key) != std::string::npos;
        passed[a] += pass[a];
        w.Key(ArmName(arms[a])).BeginObject().Field("pass", pass[a]).Field("answer", answer);
        w.Field("prefill_s", Seconds(t0, t1)).Field("generate_s", Seconds(t1, Clock::now()));
        w.EndObject();
        std::fprintf(stderr, "needle %5u tokens, depth %.2f, %-8s %s  %s\n", length, c.depth,
                     ArmName(arms[a]), pass[a] ? "PASS" : "fail", answer.substr(0, 60).c_str());
      }
      kiv_missed_full += pass[0] && !pass[1];
      ablation_found += pass[2] && outside;
      w.EndObject();
    }
  }
  w.EndArray();
  w.Key("summary").BeginObject().Field("cells", cells);
  w.Field("full_passed", passed[0])
      .Field("kiv_passed", passed[1])
      .Field("ablation_passed", passed[2]);
  w.Field("needles_inside_hot_window", misplaced);
  w.Field("kiv_passes_every_full_pass", kiv_missed_full == 0);
  w.Field("ablation_fails_outside_hot_window", ablation_found == 0);
  w.EndObject().EndObject();
  std::fprintf(
      stderr,
      "needle: %u cells: full %u, kiv %u, ablation %u passed; kiv missed %u the full cache found\n",
      cells, passed[0], passed[1], passed[2], kiv_missed_full);
  return kExitOk;
}

bool Has(const Options& o, const std::string& part) {
  return std::find(o.parts.begin(), o.parts.end(), part) != o.parts.end();
}

int RunBenchFidelity(Options& o) {
  for (const std::string& p : o.parts)
    if (p != "equivalence" && p != "resume" && p != "kl" && p != "needle")
      return UsageError("unknown --parts entry '" + p + "' (equivalence, resume, kl, needle)");
  if (o.resume_cut == 0 || o.resume_cut >= o.resume_new)
    return UsageError("--resume-cut must be between 1 and --resume-new - 1");
  if (o.kl_scored < 2) return UsageError("--kl-scored must be at least 2");
  const std::string kl_text = ReadBook(o, o.kl_book, 1);
  if (kl_text.empty()) return kExitFailure;
  const bool wants_book = Has(o, "resume") || Has(o, "needle");
  const std::string needle_text = wants_book ? ReadBook(o, o.needle_book, kBookOffset + 6000) : "";
  if (wants_book && needle_text.empty()) return kExitFailure;
  const BenchEnvironment env = CollectEnvironment(".");  // the binary and command that measure
  std::unique_ptr<Session> probe = OpenArm(ArmOptions(o, Arm::kKiv));  // describes the kiv arm
  if (!probe) return kExitFailure;
  std::ofstream file;
  if (!o.out.empty()) file.open(o.out);
  if (!o.out.empty() && !file) return Fail("cannot write " + Quoted(o.out));
  std::ostream& json_out = o.out.empty() ? static_cast<std::ostream&>(std::cout) : file;
  JsonWriter w(json_out);
  const TieredCacheOptions& c = o.flags.session.cache;
  w.BeginObject().Field("benchmark", "fidelity").Field("model", o.flags.session.model_dir);
  w.Field("description", probe->Describe());
  w.Key("knobs").BeginObject().Field("device", o.flags.session.device);
  w.Field("sinks", c.sinks).Field("window", c.window).Field("k", c.top_k);
  w.Field("candidates", c.candidates).Field("signature_bits", c.signature_bits);
  w.Field("codec", c.codec_id).Field("chunk", o.flags.session.chunk_tokens);
  w.Field("prefill_block", c.prefill_block).Field("prefill_tail", c.prefill_tail);
  w.Field("scan_norms", c.scan_norms).Field("summary_page", c.summary_page);
  w.Field("tail_samples", c.tail_samples).Field("tail_every_chunk", c.tail_every_chunk);
  w.Field("tail_importance", double(c.tail_importance)).Field("tail_recent", c.tail_recent);
  w.Field("oracle", c.oracle).EndObject();
  const std::vector<int32_t> kl_ids =
      BookTokens(*probe, kl_text,
                 std::max<size_t>(size_t{o.kl_context} + o.kl_scored,
                                  size_t{o.equivalence_tokens} + o.equivalence_scored));
  int code = kExitOk;
  if (code == kExitOk && Has(o, "equivalence")) code = Equivalence(o, kl_ids, w);
  if (code == kExitOk && Has(o, "resume"))
    code = Resume(o, needle_text.substr(kBookOffset, 6000), w);
  if (code == kExitOk && Has(o, "kl")) code = Kl(o, kl_ids, w);
  if (code == kExitOk && Has(o, "needle")) code = Needle(o, *probe, needle_text, w);
  WriteEnvironmentJson(w, env);
  w.EndObject().Finish();
  if (!o.out.empty()) std::cerr << "result written to " << o.out << '\n';
  return code;
}

}  // namespace

void SetupBenchFidelity(CLI::App& bench) {
  auto o = std::make_shared<Options>();
  o->text_dir = KivCacheDir() + "/text/austen";
  CLI::App* sub = bench.add_subcommand(
      "fidelity", "Measure kiv against a full cache: equivalence, resume, KL, recall, needles");
  SessionOptions& s = o->flags.session;
  s.model_dir = DefaultModelDir();
  sub->add_option("--model", s.model_dir, "HuggingFace model directory")->capture_default_str();
  sub->add_option("--text-dir", o->text_dir, "Austen text (tools/data/austen.sh)")
      ->capture_default_str();
  sub->add_option("--parts", o->parts, "What to measure: equivalence,resume,kl,needle")
      ->delimiter(',')
      ->capture_default_str();
  sub->add_option("--device", s.device, "cpu or cuda")
      ->capture_default_str()
      ->check(CLI::IsMember({"cpu", "cuda"}));
  sub->add_option("--threads", s.threads, "CPU threads (0: 1 on <= 2 cores, else half)")
      ->capture_default_str();
  sub->add_option("--chunk", s.chunk_tokens, "Prefill chunk of every arm")->capture_default_str();
  sub->add_option("--sinks", s.cache.sinks, "Sink tokens")->capture_default_str();
  sub->add_option("--window", s.cache.window, "Hot window")->capture_default_str();
  sub->add_option("--k", s.cache.top_k, "Cold tokens retrieved per layer and kv-head")
      ->capture_default_str();
  sub->add_option("--candidates", s.cache.candidates, "Scan candidates re-ranked")
      ->capture_default_str();
  sub->add_flag("!--no-scan-norms", s.cache.scan_norms, "Scan without weighting keys by their norm");
  sub->add_flag("--oracle", s.cache.oracle,
                "kiv arms pick the true top-k by exact attention (the ceiling of any selection)");
  sub->add_flag("--tail-every-chunk", s.cache.tail_every_chunk,
                "Every prefill chunk's last queries retrieve one by one (not only a prompt's last)");
  AddTailSampleOptions(*sub, s.cache);
  sub->add_option("--tail-importance", s.cache.tail_importance,
                  "Draw the tail sample in proportion to exp(this x the scan's logit estimate; "
                  "the CPU's scan makes the estimate: on cuda the sample stays uniform)")
      ->capture_default_str();
  sub->add_option("--summary-page", s.cache.summary_page,
                  "Cold pages of this many tokens also attend as one summary (0: off)")
      ->capture_default_str();
  sub->add_option("--kl-book", o->kl_book, "Book whose opening is the KL text")
      ->capture_default_str();
  sub->add_option("--kl-context", o->kl_context, "KL: context tokens before the scored ones")
      ->capture_default_str();
  sub->add_option("--kl-scored", o->kl_scored, "KL: scored positions (decode steps)")
      ->capture_default_str();
  sub->add_flag("!--no-codec-arm", o->kl_codec_only,
                "KL: skip the arm with the real codec and k = all");
  sub->add_flag("!--no-recall", o->recall, "Skip the recall run");
  sub->add_option("--resume-new", o->resume_new, "Resume gate: tokens generated")
      ->capture_default_str();
  sub->add_option("--resume-cut", o->resume_cut, "Resume gate: close and reopen after this many")
      ->capture_default_str();
  sub->add_option("--needle-book", o->needle_book, "Needle haystack book")->capture_default_str();
  sub->add_option("--needle-lengths", o->needle_lengths, "Needle prompt lengths in tokens")
      ->delimiter(',')
      ->capture_default_str();
  sub->add_option("--needle-depths", o->needle_depths, "Needle depths, 0..1")
      ->delimiter(',')
      ->capture_default_str();
  sub->add_option("--needle-cells", o->needle_cells,
                  "Only these cells of the grid (0-based, lengths outer, depths inner), each with the "
                  "passkey it has in the whole grid (default: all)")
      ->delimiter(',');
  sub->add_option("--needle-new", o->needle_new, "Greedy tokens generated per needle answer")
      ->capture_default_str();
  sub->add_option("-o,--out", o->out, "Write the JSON result here (else to stdout)");
  sub->footer(R"(Every comparison is against the same model with a plain full cache. Progress and a
summary line per part go to stderr; the JSON result to --out or stdout. On a 2-core CPU the whole
run takes about an hour; --parts picks what to run.

Examples:
  kiv bench fidelity --out fidelity.json
  kiv bench fidelity --parts kl --kl-context 4096 --out kl4k.json
  kiv bench fidelity --parts needle --needle-lengths 4096 --needle-depths 0.25,0.5
  kiv bench fidelity --parts needle --needle-cells 9   # the default grid's 4096 tokens, depth 0.9)");
  OnRun(*sub, [o] { return RunBenchFidelity(*o); });
}

}  // namespace kiv::cli
