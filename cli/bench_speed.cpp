// kiv bench speed: decode and prefill speed, memory and reopening, from 4K to 1M tokens of
// context (../shared/QUALITY.md, "Speed and memory"). One session over an archive grows through
// the context lengths: at each it is prefilled up to the length (Austen text, repeated as needed),
// then decodes greedily and times every step. At the end the archive is committed, closed and
// reopened, and the time to the first token is set against prefilling again. The same model with
// a plain full cache runs beside it up to --full-max tokens. A benchmark: it writes JSON and
// asserts nothing.
#include <algorithm>
#include <chrono>
#include <cmath>
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
#include "runtime/device_info.h"
#include "runtime/session.h"
#include "storage/mapped_file.h"

namespace kiv::cli {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

struct Options {
  SessionFlags flags;
  std::string text_dir;
  std::string dir = "/tmp/kiv-bench-speed";
  std::string out;
  std::vector<uint64_t> contexts = {4096, 32768, 131072, 524288, 1048576};
  uint32_t decode_steps = 64;
  uint32_t warmup = 4;
  uint64_t full_max = 131072;  // the full-cache arm stops here (its prefill attention is O(n) per
                               // chunk in memory: 1M tokens would need tens of GB of scores)
  bool reopen = true;
  bool reserve = true;  // reserve the GPU index for the longest context
};

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

double Median(std::vector<double> v) {
  if (v.empty()) return std::nan("");
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

// The six novels, end to end and repeated, tokenized up to `want` tokens.
std::vector<int32_t> TextTokens(const Options& o, const Session& s, uint64_t want) {
  static const char* kBooks[] = {"sense_and_sensibility", "pride_and_prejudice", "mansfield_park",
                                 "emma", "northanger_abbey", "persuasion"};
  std::vector<int32_t> one;
  for (const char* book : kBooks) {
    const std::string path = (fs::path(o.text_dir) / (std::string(book) + ".txt")).string();
    Result<std::string> text = ReadFileToString(path);
    if (!text.ok()) {
      Fail("cannot read the Austen text " + Quoted(path) +
           " (tools/data/austen.sh fetches it): " + text.status().ToString());
      return {};
    }
    std::vector<int32_t> ids = s.tokenizer().Encode(*text);
    one.insert(one.end(), ids.begin(), ids.end());
    if (one.size() >= want) break;
  }
  std::vector<int32_t> ids;
  while (ids.size() < want) ids.insert(ids.end(), one.begin(), one.end());
  ids.resize(want);
  return ids;
}

struct Point {
  uint64_t context = 0;
  double prefill_s = 0;        // cumulative: from an empty session to this context
  double decode_ms_median = 0;
  double decode_ms_p90 = 0;
  uint32_t steps = 0;
  uint64_t gpu_used_bytes = 0;  // device memory in use after the decode steps
  uint64_t cache_device_bytes = 0;
  uint64_t host_rss = 0;
  uint64_t archive_bytes = 0;
  uint64_t cold_tokens = 0;
  uint64_t whole_step_captures = 0;  // so far in the arm: 0 when no step ran as one graph
  // The point's decode steps (warm-up included): GPU scans whose guessed threshold held, and
  // those that fell back to the full select (kernels/scan.h).
  uint64_t scan_guess_held = 0, scan_guess_missed = 0;
  uint64_t scan_guess_missed_few = 0, scan_guess_missed_many = 0;
  // SessionStats::decode_read_bytes at the point, and that over the measured GPU bandwidth
  // (the step's limit; NaN without a measurement).
  uint64_t decode_read_bytes = 0;
  double decode_limit_ms = std::nan("");
  // LibTorch's caching allocator after the decode steps (TorchGpuMemory); 0 without CUDA.
  uint64_t torch_reserved_bytes = 0, torch_allocated_bytes = 0;
};

// Grows one session through the contexts; false after saying why.
// bandwidth: the GPU's measured bandwidth in bytes/s, or 0.
bool RunArm(const Options& o, const SessionOptions& so, const std::vector<int32_t>& ids,
            uint64_t max_context, double bandwidth, const std::string& label,
            std::vector<Point>* points, double* prefill_rate) {
  auto r = Session::Open(so);
  if (!r.ok()) {
    Fail(label + ": cannot open a session: " + r.status().ToString());
    return false;
  }
  Session& s = **r;
  uint64_t fed = 0;
  double prefill_s = 0;
  for (uint64_t context : o.contexts) {
    if (context > max_context) break;
    if (context > ids.size()) break;
    {
      ProgressBar bar(label + " prefill to " + std::to_string(context), context - fed,
                      ProgressBar::Unit::kTokens);
      const std::vector<int32_t> part(ids.begin() + fed, ids.begin() + context);
      const auto t0 = Clock::now();
      if (Status st = s.Prefill(part, [&](uint64_t d, uint64_t) { bar.Update(d); }); !st.ok()) {
        Fail(label + ": prefill failed: " + st.ToString());
        return false;
      }
      prefill_s += Seconds(t0, Clock::now());
      fed = context;
    }
    const SessionStats before = s.stats();
    std::vector<double> ms;
    const size_t want = size_t{o.warmup} + 1 + o.decode_steps;
    for (int call = 0; call < 16 && ms.size() < want; ++call) {  // a stop token ends a call
      auto last = Clock::now();
      auto g = s.Generate(uint32_t(want - ms.size()), [&](int32_t) {
        const auto now = Clock::now();
        ms.push_back(1e3 * Seconds(last, now));
        last = now;
        return true;
      });
      if (!g.ok()) {
        Fail(label + ": decode failed: " + g.status().ToString());
        return false;
      }
    }
    // The first steps warm up; the first one also feeds the prompt's last token.
    ms.erase(ms.begin(), ms.begin() + std::min<size_t>(ms.size(), o.warmup + 1));
    Point p;
    p.context = context;
    p.prefill_s = prefill_s;
    p.decode_ms_median = Median(ms);
    std::vector<double> sorted = ms;
    std::sort(sorted.begin(), sorted.end());
    p.decode_ms_p90 = sorted.empty() ? std::nan("") : sorted[sorted.size() * 9 / 10];
    p.steps = uint32_t(ms.size());
    p.gpu_used_bytes = GpuMemoryUsed();
    TorchGpuMemory(&p.torch_reserved_bytes, &p.torch_allocated_bytes);
    const SessionStats st = s.stats();
    p.cache_device_bytes = st.cache_device_bytes;
    p.host_rss = HostRss();
    p.archive_bytes = st.archive_bytes;
    p.cold_tokens = st.cold_tokens;
    p.whole_step_captures = st.whole_step_captures;
    p.scan_guess_held = st.scan_guess_held - before.scan_guess_held;
    p.scan_guess_missed = st.scan_guess_missed - before.scan_guess_missed;
    p.scan_guess_missed_few = st.scan_guess_missed_few - before.scan_guess_missed_few;
    p.scan_guess_missed_many = st.scan_guess_missed_many - before.scan_guess_missed_many;
    p.decode_read_bytes = st.decode_read_bytes;
    if (bandwidth > 0) p.decode_limit_ms = 1e3 * double(p.decode_read_bytes) / bandwidth;
    std::cerr << label << ": " << context << " tokens: prefill " << prefill_s << " s, decode "
              << p.decode_ms_median << " ms/token (" << 1e3 / p.decode_ms_median
              << " tokens/s)";
    if (p.gpu_used_bytes > 0) std::cerr << ", GPU " << double(p.gpu_used_bytes) / 1e9 << " GB in use";
    if (p.torch_reserved_bytes > 0)
      std::cerr << " (LibTorch holds " << double(p.torch_reserved_bytes) / 1e9 << " GB, "
                << double(p.torch_allocated_bytes) / 1e9 << " GB in tensors)";
    if (p.whole_step_captures > 0)
      std::cerr << ", whole-step graphs captured " << p.whole_step_captures;
    if (bandwidth > 0)
      std::cerr << ", reads ~" << double(p.decode_read_bytes) / 1e9 << " GB a step (limit "
                << p.decode_limit_ms << " ms)";
    if (p.scan_guess_held + p.scan_guess_missed > 0)
      std::cerr << ", scan guesses held " << p.scan_guess_held << " missed "
                << p.scan_guess_missed << " (" << p.scan_guess_missed_few << " too few, "
                << p.scan_guess_missed_many << " too many)";
    std::cerr << '\n';
    points->push_back(p);
  }
  *prefill_rate = double(fed) / std::max(prefill_s, 1e-9);
  if (!so.archive.empty()) {
    if (Status st = s.Commit(); !st.ok()) {
      Fail(label + ": commit failed: " + st.ToString());
      return false;
    }
  }
  return true;
}

void WritePoints(JsonWriter& w, const std::vector<Point>& points) {
  w.BeginArray();
  for (const Point& p : points) {
    w.BeginObject().Field("context", p.context).Field("prefill_s", p.prefill_s);
    w.Field("decode_ms_median", p.decode_ms_median).Field("decode_ms_p90", p.decode_ms_p90);
    w.Field("decode_tok_s", 1e3 / p.decode_ms_median).Field("decode_steps", p.steps);
    w.Field("gpu_used_bytes", p.gpu_used_bytes).Field("cache_device_bytes", p.cache_device_bytes);
    w.Field("torch_reserved_bytes", p.torch_reserved_bytes)
        .Field("torch_allocated_bytes", p.torch_allocated_bytes);
    w.Field("host_rss_bytes", p.host_rss).Field("archive_bytes", p.archive_bytes);
    w.Field("cold_tokens", p.cold_tokens).Field("whole_step_captures", p.whole_step_captures);
    w.Field("scan_guess_held", p.scan_guess_held).Field("scan_guess_missed", p.scan_guess_missed);
    w.Field("scan_guess_missed_few", p.scan_guess_missed_few)
        .Field("scan_guess_missed_many", p.scan_guess_missed_many);
    if (p.cold_tokens > 0)
      w.Field("archive_bytes_per_cold_token", double(p.archive_bytes) / double(p.cold_tokens));
    w.Field("decode_read_bytes", p.decode_read_bytes).Field("decode_limit_ms", p.decode_limit_ms);
    w.EndObject();
  }
  w.EndArray();
}

int Run(const Options& o) {
  if (o.contexts.empty()) return UsageError("--contexts needs at least one length");
  if (!std::is_sorted(o.contexts.begin(), o.contexts.end()))
    return UsageError("--contexts must be ascending");
  const BenchEnvironment env = CollectEnvironment(o.dir);
  std::error_code ec;
  fs::create_directories(o.dir, ec);
  const std::string archive = (fs::path(o.dir) / "speed.kiv").string();
  fs::remove(archive, ec);
  SessionOptions kiv_options = o.flags.session;
  kiv_options.archive = archive;
  SessionOptions probe_options = kiv_options;  // for the tokenizer only
  probe_options.archive.clear();
  probe_options.full_cache = true;
  probe_options.device = "cpu";
  auto probe = Session::Open(probe_options);
  if (!probe.ok()) return Fail("cannot load the model: " + probe.status().ToString());
  const uint64_t max_context = o.contexts.back();
  // A user who knows the document's length reserves the index for it (no growth copies): here
  // the longest context and every token the points decode on the way (each point's tokens stay
  // in the session, so the last point holds them all; reserving the context alone made the 1M
  // point grow the index by a quarter, 1.92 GB instead of 1.54 GB).
  if (o.reserve)
    kiv_options.cache.reserve_cold_tokens =
        max_context + o.contexts.size() * (uint64_t{o.warmup} + 1 + o.decode_steps);
  std::cerr << "tokenizing the Austen text ...\n";
  const std::vector<int32_t> ids = TextTokens(o, **probe, max_context);
  if (ids.empty()) return kExitFailure;
  probe->reset();
  double bandwidth = 0;
  if (kiv_options.device == "cuda") {
    std::cerr << "measuring the device's copy bandwidth ...\n";
    bandwidth = MeasureGpuBandwidth();
  }
  const uint64_t gpu_idle = GpuMemoryUsed();

  std::vector<Point> kiv_points, full_points;
  double kiv_rate = 0, full_rate = 0;
  if (!RunArm(o, kiv_options, ids, max_context, bandwidth, "kiv", &kiv_points, &kiv_rate))
    return kExitFailure;
  // Reopen the archive and produce the first token, against prefilling the context again.
  double reopen_s = std::nan(""), first_token_s = std::nan("");
  if (o.reopen && !kiv_points.empty()) {
    const auto t0 = Clock::now();
    auto r = Session::Open(kiv_options);
    if (!r.ok()) return Fail("reopening failed: " + r.status().ToString());
    const auto t1 = Clock::now();
    auto g = (*r)->Generate(1);
    if (!g.ok()) return Fail("the first token after reopening failed: " + g.status().ToString());
    reopen_s = Seconds(t0, t1);
    first_token_s = Seconds(t0, Clock::now());
    std::cerr << "reopen " << reopen_s << " s, first token " << first_token_s << " s after open\n";
  }
  SessionOptions full_options = o.flags.session;
  full_options.full_cache = true;
  full_options.archive.clear();
  if (o.full_max > 0 &&
      !RunArm(o, full_options, ids, std::min(o.full_max, max_context), bandwidth, "full",
              &full_points, &full_rate))
    return kExitFailure;

  std::ofstream file;
  if (!o.out.empty()) file.open(o.out);
  if (!o.out.empty() && !file) return Fail("cannot write " + Quoted(o.out));
  std::ostream& json_out = o.out.empty() ? static_cast<std::ostream&>(std::cout) : file;
  JsonWriter w(json_out);
  const TieredCacheOptions& c = kiv_options.cache;
  w.BeginObject().Field("benchmark", "speed").Field("model", kiv_options.model_dir);
  const DeviceInfo dev = QueryDevices();
  w.Field("gpu", dev.gpus.empty() ? std::string("none") : dev.gpus[0].name);
  w.Field("torch", dev.torch_version);
  w.Key("knobs").BeginObject().Field("device", kiv_options.device);
  w.Field("cuda_graphs", kiv_options.cuda_graphs);
  w.Field("sinks", c.sinks).Field("window", c.window).Field("k", c.top_k);
  w.Field("evict_batch", c.evict_batch);
  w.Field("scan_norms", c.scan_norms).Field("reserve_cold_tokens", c.reserve_cold_tokens);
  w.Field("candidates", c.candidates).Field("signature_bits", c.signature_bits);
  w.Field("codec", c.codec_id).Field("chunk", kiv_options.chunk_tokens);
  w.Field("prefill_block", c.prefill_block).Field("prefill_tail", c.prefill_tail);
  w.Field("tail_samples", c.tail_samples).Field("tail_recent", c.tail_recent);
  w.Field("decode_steps", o.decode_steps).Field("warmup", o.warmup).EndObject();
  w.Field("gpu_copy_bandwidth_bytes_s", bandwidth).Field("gpu_used_idle_bytes", gpu_idle);
  w.Key("kiv").BeginObject().Key("points");
  WritePoints(w, kiv_points);
  w.Field("prefill_tok_s", kiv_rate).Field("reopen_s", reopen_s);
  w.Field("reopen_first_token_s", first_token_s).EndObject();
  w.Key("full_cache").BeginObject().Key("points");
  WritePoints(w, full_points);
  w.Field("prefill_tok_s", full_rate).EndObject();
  w.Field("host_peak_rss_bytes", HostPeakRss());
  WriteEnvironmentJson(w, env);
  w.EndObject().Finish();
  if (!o.out.empty()) std::cerr << "result written to " << o.out << '\n';
  return kExitOk;
}

}  // namespace

void SetupBenchSpeed(CLI::App& bench) {
  auto o = std::make_shared<Options>();
  o->text_dir = KivCacheDir() + "/text/austen";
  CLI::App* sub = bench.add_subcommand(
      "speed", "Measure decode and prefill speed, memory and reopening from 4K to 1M tokens");
  SessionOptions& s = o->flags.session;
  s.model_dir = DefaultModelDir();
  s.device = "cuda";
  sub->add_option("--model", s.model_dir, "HuggingFace model directory")->capture_default_str();
  sub->add_option("--text-dir", o->text_dir, "Austen text (tools/data/austen.sh)")
      ->capture_default_str();
  sub->add_option("--dir", o->dir, "Where the session archive is written")->capture_default_str();
  sub->add_option("--contexts", o->contexts, "Context lengths in tokens, ascending")
      ->delimiter(',')
      ->capture_default_str();
  sub->add_option("--decode-steps", o->decode_steps, "Timed decode steps at each length")
      ->capture_default_str();
  sub->add_option("--warmup", o->warmup, "Untimed decode steps before them")->capture_default_str();
  sub->add_option("--full-max", o->full_max, "Full-cache arm up to this context (0: none)")
      ->capture_default_str();
  sub->add_flag("!--no-reopen", o->reopen, "Skip reopening the archive");
  sub->add_option("--device", s.device, "cpu or cuda")
      ->capture_default_str()
      ->check(CLI::IsMember({"cpu", "cuda"}));
  sub->add_flag("!--no-cuda-graphs", s.cuda_graphs,
                "Decode steps run eagerly, not as CUDA graph replays (both arms)");
  sub->add_option("--threads", s.threads, "CPU threads (0: 1 on <= 2 cores, else half)")
      ->capture_default_str();
  sub->add_option("--chunk", s.chunk_tokens, "Prefill chunk")->capture_default_str();
  sub->add_option("--window", s.cache.window, "Hot window")->capture_default_str();
  sub->add_option("--k", s.cache.top_k, "Cold tokens retrieved per layer and kv-head")
      ->capture_default_str();
  sub->add_option("--candidates", s.cache.candidates, "Scan candidates re-ranked")
      ->capture_default_str();
  sub->add_option("--evict-batch", s.cache.evict_batch,
                  "Decode: move hot tokens to the archive every N steps, N at a time")
      ->capture_default_str()
      ->check(CLI::Range(1u, 4096u));
  sub->add_option("--max-cold", s.cache.max_cold_tokens,
                  "Cold tokens the GPU record arena reserves address space for")
      ->capture_default_str();
  sub->add_flag("!--no-scan-norms", s.cache.scan_norms,
                "Scan without key norms (none on the GPU: 377 MB less at 1M tokens of SmolLM2)");
  AddTailSampleOptions(*sub, s.cache);
  sub->add_flag("!--no-reserve", o->reserve,
                "Let the GPU index grow by quarters instead of reserving the longest context and "
                "the tokens decoded on the way");
  sub->add_option("-o,--out", o->out, "Write the JSON result here (else to stdout)");
  sub->footer(R"(On an H100 the default lengths take several minutes (1M tokens of prefill); the
session archive for 1M tokens of SmolLM2 is about 10 GB under --dir. Progress and one line per
length go to stderr; the JSON result to --out or stdout.

Examples:
  kiv bench speed --out speed.json
  kiv bench speed --contexts 4096,32768 --full-max 32768 --out small.json
  kiv bench speed --model /tmp/random-1b --full-max 32768 --out speed-1b.json)");
  OnRun(*sub, [o] { return Run(*o); });
}

}  // namespace kiv::cli
