// kiv bench append: how fast ArchiveWriter (io_uring) appends segments into the page cache, and
// how long the commit after them (drain, fsync, commit record, fsync) takes.
//
// A benchmark, not a test: it measures, writes a JSON result with the environment it ran in, and
// asserts nothing. One segment's buffers are generated before the clock starts, so the numbers
// are the writer's (its copy into owned buffers included), not the generator's.
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "cli/bench_env.h"
#include "cli/commands.h"
#include "cli/json.h"
#include "cli/progress.h"
#include "cli/shape_options.h"
#include "cli/util.h"
#include "storage/writer.h"

namespace kiv::cli {

namespace {

struct Options {
  std::string dir = ".";
  double gib = 4.0;
  uint32_t segment_tokens = 1024;
  ShapeOptions shape;
  uint32_t queue_depth = 32;
  uint32_t runs = 3;
  std::string out;
  bool json = false;
};

struct RunResult {
  uint64_t bytes = 0;  // appended: segment blocks only, the file's header and commits aside
  uint64_t segments = 0;
  double append_s = 0;  // first Append until every appended byte is in the page cache (Flush)
  double commit_s = 0;  // the Commit after them: fsync, commit record, fsync
  double total_s() const { return append_s + commit_s; }
  double append_gbps() const { return static_cast<double>(bytes) / append_s / 1e9; }
  double total_gbps() const { return static_cast<double>(bytes) / total_s() / 1e9; }
};

// One segment's worth of pseudo-random bytes, made once before any clock starts.
struct Segment {
  std::vector<uint8_t> records;
  std::vector<uint8_t> signatures;
  std::vector<uint32_t> token_ids;
  std::vector<uint32_t> positions;
  SegmentView view;
};

void FillRandom(std::vector<uint8_t>& v, uint64_t state) {
  for (size_t i = 0; i < v.size(); i += 8) {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);  // SplitMix64
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    std::memcpy(&v[i], &z, std::min<size_t>(8, v.size() - i));
  }
}

void MakeSegment(const ArchiveSpec& spec, uint32_t n, Segment& s) {
  s.records.resize(spec.heads_per_token() * n * spec.record_bytes());
  s.signatures.resize(spec.heads_per_token() * n * spec.signature_bytes());
  FillRandom(s.records, 1);
  FillRandom(s.signatures, 2);
  for (uint32_t i = 0; i < n; ++i) {
    s.token_ids.push_back(i % 32000);
    s.positions.push_back(i);
  }
  s.view =
      SegmentView{n, s.records.data(), s.signatures.data(), s.token_ids.data(), s.positions.data()};
}

ArchiveSpec MakeSpec(const Options& o) {
  ArchiveSpec spec = ShapeSpec(o.shape, "bench");
  spec.model.vocab_size = 32000;
  return spec;
}

// One run: create, append until target_bytes, commit, close. The archive is removed after.
Result<RunResult> RunOnce(const Options& o, const std::string& path, const ArchiveSpec& spec,
                          const Segment& seg, uint64_t target_bytes, ProgressBar& bar,
                          uint64_t bar_base) {
  WriterOptions wo;
  wo.io.queue_depth = o.queue_depth;
  Result<std::unique_ptr<ArchiveWriter>> created = ArchiveWriter::Create(path, spec, wo);
  if (!created.ok()) return created.status();
  ArchiveWriter& w = *created.value();
  HotCheckpoint empty;  // the hot tier is not what is measured here
  empty.num_layers = o.shape.layers;
  empty.num_kv_heads = o.shape.kv_heads;
  empty.head_dim = o.shape.head_dim;

  RunResult r;
  const uint64_t start_bytes = w.file_bytes();
  using Clock = std::chrono::steady_clock;
  const Clock::time_point t0 = Clock::now();
  while (w.file_bytes() - start_bytes < target_bytes) {
    KIV_RETURN_IF_ERROR(w.Append(seg.view));
    ++r.segments;
    bar.Update(bar_base + w.file_bytes() - start_bytes);
  }
  KIV_RETURN_IF_ERROR(w.Flush());
  const Clock::time_point t1 = Clock::now();
  r.bytes = w.file_bytes() - start_bytes;
  KIV_RETURN_IF_ERROR(w.Commit(empty));
  const Clock::time_point t2 = Clock::now();
  KIV_RETURN_IF_ERROR(w.Close());
  r.append_s = std::chrono::duration<double>(t1 - t0).count();
  r.commit_s = std::chrono::duration<double>(t2 - t1).count();
  return r;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

struct Medians {
  double append_gbps, total_gbps, append_s, commit_s;
};

Medians MediansOf(const std::vector<RunResult>& runs) {
  std::vector<double> a, t, as, cs;
  for (const RunResult& r : runs) {
    a.push_back(r.append_gbps());
    t.push_back(r.total_gbps());
    as.push_back(r.append_s);
    cs.push_back(r.commit_s);
  }
  return {Median(a), Median(t), Median(as), Median(cs)};
}

void WriteResultJson(std::ostream& out, const Options& o, const ArchiveSpec& spec,
                     const std::vector<RunResult>& runs, const BenchEnvironment& env) {
  const Medians m = MediansOf(runs);
  JsonWriter w(out);
  w.BeginObject().Field("benchmark", "append");
  w.Field("description",
          "ArchiveWriter::Append of one pre-generated segment, repeated, then Flush: every byte "
          "written into the page cache; then one Commit (fsync, commit record, fsync). One "
          "unmeasured warm-up run first. GB = 1e9 bytes.");
  w.Key("results").BeginObject().Field("append_gbps_median", m.append_gbps);
  w.Field("total_with_commit_gbps_median", m.total_gbps);
  w.Field("append_seconds_median", m.append_s).Field("commit_seconds_median", m.commit_s);
  w.Key("runs").BeginArray();
  for (const RunResult& r : runs) {
    w.BeginObject().Field("bytes", r.bytes).Field("segments", r.segments);
    w.Field("append_seconds", r.append_s).Field("commit_seconds", r.commit_s);
    w.Field("append_gbps", r.append_gbps()).Field("total_with_commit_gbps", r.total_gbps());
    w.EndObject();
  }
  w.EndArray().EndObject();
  w.Key("knobs").BeginObject().Field("dir", o.dir).Field("gib", o.gib);
  w.Field("segment_tokens", o.segment_tokens).Field("layers", o.shape.layers);
  w.Field("q_heads", o.shape.q_heads).Field("kv_heads", o.shape.kv_heads).Field("head_dim", o.shape.head_dim);
  w.Field("signature_bits", o.shape.signature_bits).Field("queue_depth", o.queue_depth);
  w.Field("runs", o.runs).Field("bytes_per_token", spec.bytes_per_token());
  w.Field("write_bytes_max", uint64_t{UringOptions{}.write_bytes_max});
  w.Field("buffered_bytes_max", UringOptions{}.buffered_bytes_max).EndObject();
  WriteEnvironmentJson(w, env);
  w.EndObject().Finish();
}

void PrintSummary(const Options& o, const std::vector<RunResult>& runs,
                  const BenchEnvironment& env) {
  const Medians m = MediansOf(runs);
  std::cout << "bench append: " << HumanBytes(runs.front().bytes) << " per run in "
            << o.segment_tokens << "-token segments into " << o.dir << " (" << env.filesystem
            << "), queue depth " << o.queue_depth << ", " << runs.size() << " runs\n";
  char line[160];
  std::snprintf(line, sizeof(line),
                "  appends          %7.2f GB/s median (%.3f s): written into the page cache\n",
                m.append_gbps, m.append_s);
  std::cout << line;
  std::snprintf(line, sizeof(line),
                "  appends+commit   %7.2f GB/s median (commit %.3f s): and fsynced\n",
                m.total_gbps, m.commit_s);
  std::cout << line << "  runs (append GB/s):";
  for (const RunResult& r : runs) {
    std::snprintf(line, sizeof(line), " %.2f", r.append_gbps());
    std::cout << line;
  }
  std::cout << '\n';
  if (!o.out.empty()) std::cout << "  result written to " << o.out << '\n';
}

// Refuses to start when the directory lacks room for one run, rather than failing midway.
Status CheckRoom(const std::string& dir, uint64_t need_bytes) {
  struct statvfs st{};
  if (statvfs(dir.c_str(), &st) != 0) return Status::FromErrno(errno, "statvfs " + dir);
  const uint64_t free_bytes = uint64_t{st.f_bavail} * st.f_frsize;
  if (free_bytes < need_bytes) {
    return Status::NoSpace("a run needs " + HumanBytes(need_bytes) + " but " + dir + " has " +
                           HumanBytes(free_bytes) + " free; pass a smaller --gib");
  }
  return Status::Ok();
}

Status RunAll(const Options& o, const std::string& path, std::vector<RunResult>& runs) {
  const ArchiveSpec spec = MakeSpec(o);
  const auto target = static_cast<uint64_t>(o.gib * static_cast<double>(1ull << 30));
  KIV_RETURN_IF_ERROR(CheckRoom(o.dir, target + (64ull << 20)));
  Segment seg;
  MakeSegment(spec, o.segment_tokens, seg);
  ProgressBar bar("bench", target * (o.runs + 1), ProgressBar::Unit::kBytes, !o.json);
  // Run 0 is a warm-up, not reported: the first run after other large files pays for the page
  // cache evicting them (seen: 0.5 GB/s against 3.3 GB/s for the runs after it).
  for (uint32_t i = 0; i <= o.runs; ++i) {
    Result<RunResult> r = RunOnce(o, path, spec, seg, target, bar, target * i);
    std::error_code ec;
    std::filesystem::remove(path, ec);  // also after a failure: leave no multi-GiB file behind
    if (!r.ok()) return r.status();
    if (i > 0) runs.push_back(r.value());
  }
  bar.Finish();
  return Status::Ok();
}

int RunBenchAppend(const Options& o) {
  const ArchiveSpec spec = MakeSpec(o);
  if (Status s = spec.Validate(); !s.ok()) return UsageError("invalid shape: " + s.ToString());
  const std::string path =
      (std::filesystem::path(o.dir) / ("kiv-bench-append-" + std::to_string(getpid()) + ".kiv"))
          .string();
  // Taken before the runs: the commit and command are those of the binary that measured.
  const BenchEnvironment env = CollectEnvironment(o.dir);
  std::vector<RunResult> runs;
  if (Status s = RunAll(o, path, runs); !s.ok()) {
    return Fail("bench append in " + Quoted(o.dir) + " failed: " + s.ToString());
  }
  if (!o.out.empty()) {
    std::ofstream file(o.out);
    WriteResultJson(file, o, spec, runs, env);
    if (!file) return Fail("cannot write " + Quoted(o.out));
  }
  if (o.json) {
    WriteResultJson(std::cout, o, spec, runs, env);
  } else {
    PrintSummary(o, runs, env);
  }
  return kExitOk;
}

}  // namespace

void SetupBenchAppend(CLI::App& bench) {
  auto o = std::make_shared<Options>();
  CLI::App* sub = bench.add_subcommand(
      "append", "Measure ArchiveWriter append throughput (io_uring, into the page cache)");
  sub->add_option("--dir", o->dir, "Where to write the temporary archive")->capture_default_str();
  sub->add_option("--gib", o->gib, "GiB to append per run")
      ->capture_default_str()
      ->check(CLI::Range(0.001, 1024.0));
  sub->add_option("--segment-tokens", o->segment_tokens, "Tokens per appended segment")
      ->capture_default_str()
      ->check(CLI::Range(1u, format::kMaxSegmentTokens));
  AddShapeOptions(*sub, o->shape);
  sub->add_option("--queue-depth", o->queue_depth, "io_uring writes in flight at most")
      ->capture_default_str()
      ->check(CLI::Range(1, 4096));
  sub->add_option("--runs", o->runs, "Runs; the median is reported")
      ->capture_default_str()
      ->check(CLI::Range(1, 100));
  sub->add_option("-o,--out", o->out, "Write the JSON result to this file");
  sub->add_flag("--json", o->json, "Print the JSON result instead of the summary");
  sub->footer(
      "The data is pseudo-random and the archive is deleted after each run. \"appends\" is the\n"
      "time from the first Append until every byte is written into the page cache (Flush);\n"
      "\"appends+commit\" adds the Commit that fsyncs. Both are medians, after one unmeasured\n"
      "warm-up run.\n\n"
      "Examples:\n"
      "  kiv bench append --dir /mnt/nvme --gib 4 --out append.json\n"
      "  kiv bench append --dir /tmp --gib 0.5 --queue-depth 8");
  OnRun(*sub, [o] { return RunBenchAppend(*o); });
}

}  // namespace kiv::cli
