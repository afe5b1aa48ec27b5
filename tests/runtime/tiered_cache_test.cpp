// The tiered cache against plain full attention, on random tensors (no model needed): the
// equivalence gate, the codec alone, the ablation, and resuming from the archive bit for bit.
#include "runtime/tiered_cache.h"

#include <doctest/doctest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <sstream>
#include <fstream>
#include <string>

#include "runtime/full_cache.h"

#if KIV_TORCH_CUDA
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

using namespace kiv;

namespace {

constexpr CacheShape kShape{2, 6, 2, 64};  // 2 layers, GQA 3, one 64-dim record per head

struct Step {
  std::vector<torch::Tensor> q, k, v;  // per layer
  std::vector<int64_t> ids;
};

// A deterministic stream of chunks: prefill chunks of 100, then single-token decode steps.
std::vector<Step> MakeSteps(int64_t prefill, int64_t decode, uint64_t seed) {
  torch::manual_seed(seed);
  std::vector<Step> steps;
  int64_t done = 0;
  while (done < prefill + decode) {
    const int64_t n = done < prefill ? std::min<int64_t>(100, prefill - done) : 1;
    Step s;
    for (uint32_t l = 0; l < kShape.num_layers; ++l) {
      s.q.push_back(torch::randn({kShape.num_q_heads, n, kShape.head_dim}) * 2);
      s.k.push_back(torch::randn({kShape.num_kv_heads, n, kShape.head_dim}) * 2);
      s.v.push_back(torch::randn({kShape.num_kv_heads, n, kShape.head_dim}));
    }
    for (int64_t i = 0; i < n; ++i) s.ids.push_back(done + i);
    steps.push_back(std::move(s));
    done += n;
  }
  return steps;
}

// Feeds the steps; returns every step's output per layer, concatenated over tokens.
std::vector<torch::Tensor> Run(KvCache& cache, const std::vector<Step>& steps, size_t from = 0,
                               size_t to = SIZE_MAX) {
  std::vector<std::vector<torch::Tensor>> outs(kShape.num_layers);
  for (size_t i = from; i < std::min(to, steps.size()); ++i) {
    const int64_t first = cache.length();
    for (uint32_t l = 0; l < kShape.num_layers; ++l)
      outs[l].push_back(cache.Attend(l, steps[i].q[l], steps[i].k[l], steps[i].v[l], first));
    cache.EndChunk(steps[i].ids);
  }
  std::vector<torch::Tensor> result;
  for (auto& o : outs) result.push_back(torch::cat(o, 1));
  return result;
}

// Plain causal attention over every token: the reference.
std::vector<torch::Tensor> Reference(const std::vector<Step>& steps) {
  std::vector<torch::Tensor> result;
  for (uint32_t l = 0; l < kShape.num_layers; ++l) {
    std::vector<torch::Tensor> q, k, v;
    for (const Step& s : steps) q.push_back(s.q[l]), k.push_back(s.k[l]), v.push_back(s.v[l]);
    result.push_back(AttentionWithLse(torch::cat(q, 1), torch::cat(k, 1), torch::cat(v, 1), 0).out);
  }
  return result;
}

// ‖a − b‖ / ‖b‖ over all layers.
double RelError(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (a[i] - b[i]).pow(2).sum().item<double>();
    den += b[i].pow(2).sum().item<double>();
  }
  return std::sqrt(num / den);
}

double MaxDiff(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, (a[i] - b[i]).abs().max().item<double>());
  return m;
}

// Window 64 and k = every cold token: what an estimate of the unpicked tokens' attention aims at.
std::vector<torch::Tensor> AllCold(const std::vector<Step>& steps) {
  TieredCacheOptions o;
  o.window = 64;
  o.top_k = o.candidates = 100000;
  TieredCache all(kShape, o);
  return Run(all, steps);
}

// Window 64, k = 8 of 64 candidates: most cold attention left unpicked.
TieredCacheOptions SmallK() {
  TieredCacheOptions o;
  o.window = 64;
  o.top_k = 8;
  o.candidates = 64;
  return o;
}

// The CUDA tests' stream: 1,500 prefill tokens and 30 decode steps, on the GPU (the model hands
// the cache tensors on its own device), and small knobs so retrieval has real choices to make.
std::vector<Step> CudaSteps(uint64_t seed) {
  auto steps = MakeSteps(1500, 30, seed);
  for (Step& s : steps)
    for (auto* part : {&s.q, &s.k, &s.v})
      for (torch::Tensor& t : *part) t = t.to(torch::kCUDA);
  return steps;
}

TieredCacheOptions SmallGpuOptions() {
  TieredCacheOptions o;
  o.window = 64;
  o.top_k = 32;
  o.candidates = 256;
  return o;
}

// The whole cold step's tests: SmallGpuOptions with blocks of 16 (chunks of 100: blocks of 16,
// the last one short, then 64 one by one) and the index reserved up front (the same answers).
TieredCacheOptions WholeColdStepOptions() {
  TieredCacheOptions o = SmallGpuOptions();
  o.prefill_block = 16;
  o.max_cold_tokens = 4096;
  o.reserve_cold_tokens = 3000;
  return o;
}

// The lines KIV_TRACE_RETRIEVAL wrote to `path` while `run` ran (runtime/tiered_cache.cpp).
std::vector<std::string> Traced(const std::string& path, const std::function<void()>& run) {
  std::filesystem::remove(path);
  setenv("KIV_TRACE_RETRIEVAL", path.c_str(), 1);
  run();
  unsetenv("KIV_TRACE_RETRIEVAL");
  std::vector<std::string> lines;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  std::filesystem::remove(path);
  return lines;
}

}  // namespace

TEST_CASE("KIV_TRACE_RETRIEVAL: each decode step's picks, one line per layer and kv-head") {
  const auto steps = MakeSteps(300, 5, 12);
  const std::string path = (std::filesystem::temp_directory_path() /
                            ("kiv-trace-" + std::to_string(getpid()) + ".txt"))
                               .string();
  const std::vector<std::string> lines = Traced(path, [&] {
    TieredCache cache(kShape, SmallK());
    Run(cache, steps);
  });
  // 5 decode steps × 2 layers × 2 kv-heads; prefill chunks are not traced.
  REQUIRE(lines.size() == 20);
  for (size_t i = 0; i < lines.size(); ++i) {
    CAPTURE(lines[i]);
    const std::string head = "t=" + std::to_string(300 + i / 4) + " layer=" +
                             std::to_string(i / 2 % 2) + " head=" + std::to_string(i % 2) +
                             " ids=";
    REQUIRE(lines[i].rfind(head, 0) == 0);
    std::vector<long> ids;
    std::stringstream list(lines[i].substr(head.size()));
    for (std::string id; std::getline(list, id, ',');) ids.push_back(std::stol(id));
    CHECK(ids.size() == 8);  // k
    CHECK(std::is_sorted(ids.begin(), ids.end()));
    CHECK(std::adjacent_find(ids.begin(), ids.end()) == ids.end());
    CHECK(ids.front() >= 0);
    CHECK(ids.back() < long(300 + i / 4));
  }
  // The same path again after its file was removed (nothing retrieved in between, so the trace
  // is still open on the unlinked file): a new file, the same lines.
  const std::vector<std::string> again = Traced(path, [&] {
    TieredCache cache(kShape, SmallK());
    Run(cache, steps);
  });
  CHECK(again == lines);
  // Cleared, nothing more is written.
  const std::vector<std::string> none = Traced(path + ".unused", [] {});
  TieredCache quiet(kShape, SmallK());
  Run(quiet, steps);
  CHECK(none.empty());
  CHECK_FALSE(std::filesystem::exists(path));
}

TEST_CASE("equivalence gate: exact cold tokens, k >= cold tokens: full attention") {
  const auto steps = MakeSteps(700, 20, 1);
  TieredCacheOptions o;
  o.window = 64;
  o.exact_cold = true;
  o.top_k = 100000;
  o.candidates = 100000;
  TieredCache cache(kShape, o);
  const auto got = Run(cache, steps);
  CHECK(cache.cold_tokens() > 500);  // most tokens really went through the cold tier
  const double diff = MaxDiff(got, Reference(steps));
  MESSAGE("equivalence: max |tiered - full| = " << diff);
  CHECK(diff < 1e-4);
}

TEST_CASE("evict_batch: decode steps move tokens out N at a time; attention stays whole") {
  const auto steps = MakeSteps(300, 40, 3);
  TieredCacheOptions o;
  o.window = 64;
  o.exact_cold = true;  // with k = every cold token: full attention whatever the schedule
  o.top_k = 100000;
  o.candidates = 100000;
  o.evict_batch = 8;
  TieredCache cache(kShape, o);
  const uint64_t keep = o.sinks + o.window;
  std::vector<std::vector<torch::Tensor>> outs(kShape.num_layers);
  uint64_t evictions = 0, cold = 0;
  for (size_t i = 0; i < steps.size(); ++i) {
    const auto got = Run(cache, steps, i, i + 1);
    for (uint32_t l = 0; l < kShape.num_layers; ++l) outs[l].push_back(got[l]);
    if (steps[i].ids.size() > 1) {
      CHECK(cache.hot_tokens() == keep);  // a prefill chunk evicts down to the window
    } else {
      CHECK(cache.hot_tokens() >= keep);
      CHECK(cache.hot_tokens() < keep + o.evict_batch);
      if (cache.cold_tokens() != cold) {
        CHECK(cache.cold_tokens() - cold == o.evict_batch);
        ++evictions;
      }
    }
    cold = cache.cold_tokens();
  }
  CHECK(evictions == 40 / o.evict_batch);
  std::vector<torch::Tensor> got;
  for (auto& o_l : outs) got.push_back(torch::cat(o_l, 1));
  const double diff = MaxDiff(got, Reference(steps));
  MESSAGE("evict_batch 8: max |tiered - full| = " << diff << ", " << evictions
                                                  << " decode evictions of 8");
  CHECK(diff < 1e-4);
}

TEST_CASE("the codec alone (k = all cold tokens) stays close; the ablation does not") {
  const auto steps = MakeSteps(700, 20, 2);
  const auto ref = Reference(steps);
  TieredCacheOptions o;
  o.window = 64;
  o.top_k = 100000;
  o.candidates = 100000;
  TieredCache codec(kShape, o);
  const double codec_err = RelError(Run(codec, steps), ref);
  o.retrieval = false;
  TieredCache ablation(kShape, o);
  const double ablation_err = RelError(Run(ablation, steps), ref);
  MESSAGE("relative error, codec only: " << codec_err << ", no retrieval: " << ablation_err);
  CHECK(codec_err < 0.05);
  CHECK(ablation_err > 5 * codec_err);
}

TEST_CASE("retrieval with the defaults picks k tokens and stays closer than the ablation") {
  const auto steps = MakeSteps(1500, 30, 3);
  const auto ref = Reference(steps);
  TieredCacheOptions o;
  o.window = 64;
  o.top_k = 64;
  o.candidates = 256;
  TieredCache cache(kShape, o);
  const auto got = Run(cache, steps);
  CHECK(cache.stats().scans > 0);
  CHECK(cache.stats().tokens_retrieved <= cache.stats().scans * 64);
  o.retrieval = false;
  TieredCache ablation(kShape, o);
  const double err = RelError(got, ref), ablation_err = RelError(Run(ablation, steps), ref);
  MESSAGE("relative error, retrieval: " << err << ", no retrieval: " << ablation_err);
  CHECK(err < ablation_err);
}

TEST_CASE("page summaries of one token each are the unpicked tokens themselves: k = all") {
  // With summary_page = 1 every cold token the retrieval does not pick enters attention as its
  // own summary (its decoded key and value, weight log 1): the union is every cold token, as with
  // k = all, so the outputs agree to float rounding.
  const auto steps = MakeSteps(700, 20, 5);
  const auto want = AllCold(steps);
  TieredCacheOptions o = SmallK();
  o.summary_page = 1;
  TieredCache paged(kShape, o);
  const double diff = MaxDiff(Run(paged, steps), want);
  MESSAGE("summary_page 1, k = 8 against k = all: max diff " << diff);
  CHECK(diff < 1e-4);
  o.summary_page = 0;
  TieredCache plain(kShape, o);
  CHECK(MaxDiff(Run(plain, steps), want) > 100 * diff);  // without summaries: far off
}

TEST_CASE("tail samples: all unpicked tokens when they fit; an estimate closer than k alone") {
  // With tail_samples >= the unpicked count every unpicked token is its own sample (weight 1):
  // the union is every cold token, as with k = all.
  const auto steps = MakeSteps(700, 20, 6);
  const auto want = AllCold(steps);
  TieredCacheOptions o = SmallK();
  o.tail_samples = 100000;
  TieredCache every(kShape, o);
  const double diff = MaxDiff(Run(every, steps), want);
  MESSAGE("tail_samples >= unpicked, k = 8 against k = all: max diff " << diff);
  CHECK(diff < 1e-4);
  // Fewer samples than unpicked tokens: an estimate; on these diffuse random heads it must land
  // nearer the full answer than the k picked tokens alone, and repeat itself exactly.
  o.tail_samples = 64;
  TieredCache sampled(kShape, o), again(kShape, o);
  const auto got = Run(sampled, steps);
  o.tail_samples = 0;
  TieredCache plain(kShape, o);
  const double err_sampled = RelError(got, want), err_plain = RelError(Run(plain, steps), want);
  MESSAGE("relative error, k = 8: alone " << err_plain << ", with 64 tail samples " << err_sampled);
  CHECK(err_sampled < err_plain);
  CHECK(MaxDiff(Run(again, steps), got) == 0.0);
  CHECK(sampled.stats().tokens_sampled > 0);
  // Drawn in proportion to the scan's estimate of each token's attention: still an estimate that
  // beats k alone, and repeats exactly.
  o.tail_samples = 64;
  o.tail_importance = 1.0f;
  TieredCache weighted(kShape, o), weighted_again(kShape, o);
  const auto got_weighted = Run(weighted, steps);
  const double err_weighted = RelError(got_weighted, want);
  MESSAGE("relative error with 64 samples drawn by the scan's estimate: " << err_weighted);
  CHECK(err_weighted < err_plain);
  CHECK(MaxDiff(Run(weighted_again, steps), got_weighted) == 0.0);
  // A recent stratum: still an estimate that beats k alone; with every unpicked token fitting,
  // still k = all.
  o.tail_importance = 0.0f;
  o.tail_recent = 128;
  TieredCache recent(kShape, o);
  const double err_recent = RelError(Run(recent, steps), want);
  MESSAGE("relative error with 64 samples, half of them from the 128 most recent: " << err_recent);
  CHECK(err_recent < err_plain);
  o.tail_samples = 100000;
  TieredCache recent_all(kShape, o);
  CHECK(MaxDiff(Run(recent_all, steps), want) < 1e-4);
}

TEST_CASE("recall: 1 with the oracle's picks, below 1 but well above chance with retrieval") {
  const auto steps = MakeSteps(1200, 30, 6);
  TieredCacheOptions o;
  o.window = 64;
  o.top_k = 32;
  o.candidates = 256;
  o.measure_recall = true;
  TieredCache scan(kShape, o);
  Run(scan, steps);
  o.oracle = true;
  TieredCache oracle(kShape, o);
  Run(oracle, steps);
  const RecallStats& r = scan.recall();
  const RecallStats& best = oracle.recall();
  REQUIRE(r.count[0] > 30 * kShape.num_kv_heads);  // decode steps and the prefill tails
  MESSAGE("recall: retrieval " << r.Mean() << ", oracle " << best.Mean());
  CHECK(best.Mean() == doctest::Approx(1.0).epsilon(1e-9));
  CHECK(r.Mean() < 1.0);
  CHECK(r.Mean() > 0.5);
  double worst = 0;
  CHECK(r.WorstLayer(&worst) >= 0);
  CHECK(worst <= r.Mean());
}

// The archive spec of the test shape with the cache's options.
static ArchiveSpec SpecFor(const TieredCacheOptions& o) {
  ArchiveSpec spec;
  spec.model = {"test", kShape.num_layers, kShape.num_q_heads, kShape.num_kv_heads,
                kShape.head_dim, 1000, 1, 2};
  spec.codec.signature_bits = o.signature_bits;
  spec.codec.projection_seed = o.projection_seed;
  spec.codec.sinks = o.sinks;
  spec.codec.hot_window = o.window;
  return spec;
}

// Commits after all but the last 15 steps, closes, reopens the archive and runs those: the
// outputs must be those of one uninterrupted cache, bit for bit.
static void CheckResume(const std::vector<Step>& steps, const TieredCacheOptions& o,
                        torch::Device device) {
  const std::string path = (std::filesystem::temp_directory_path() /
                            ("kiv-tiered-" + std::to_string(getpid()) + ".kiv"))
                               .string();
  std::filesystem::remove(path);
  const ArchiveSpec spec = SpecFor(o);

  // Uninterrupted, in memory.
  TieredCache whole(kShape, o, device, torch::kFloat32);
  const auto want = Run(whole, steps);

  // Interrupted: first part, commit, close; reopen, second part.
  const size_t cut = steps.size() - 15;
  std::vector<torch::Tensor> first, second;
  {
    auto w = ArchiveWriter::Create(path, spec);
    REQUIRE(w.ok());
    auto cache = TieredCache::Open(w->get(), kShape, o, device, torch::kFloat32, nullptr);
    REQUIRE(cache.ok());
    first = Run(**cache, steps, 0, cut);
    REQUIRE((*cache)->Commit({7, 7}).ok());
    REQUIRE((*w)->Close().ok());
  }
  {
    auto w = ArchiveWriter::Open(path);
    REQUIRE(w.ok());
    std::vector<uint8_t> extra;
    auto cache = TieredCache::Open(w->get(), kShape, o, device, torch::kFloat32, &extra);
    REQUIRE(cache.ok());
    CHECK((*cache)->cold_on_gpu() == whole.cold_on_gpu());
    CHECK(extra == std::vector<uint8_t>{7, 7});
    CHECK((*cache)->length() == whole.length() - int64_t(steps.size() - cut));
    second = Run(**cache, steps, cut);
  }
  for (uint32_t l = 0; l < kShape.num_layers; ++l) {
    const torch::Tensor resumed = torch::cat({first[l], second[l]}, 1);
    CHECK(torch::equal(resumed.cpu(), want[l].cpu()));
    CHECK(torch::equal(first[l].cpu(), want[l].slice(1, 0, first[l].size(1)).cpu()));
  }
  std::filesystem::remove(path);
}

TEST_CASE("resume: commit, reopen the archive, continue: bit-for-bit the same") {
  for (const uint32_t summary_page : {0u, 16u}) {  // summaries are rebuilt from the records
    CAPTURE(summary_page);
    TieredCacheOptions o;
    o.window = 64;
    o.top_k = 32;
    o.candidates = 128;
    o.summary_page = summary_page;
    CheckResume(MakeSteps(900, 40, 4), o, torch::kCPU);
  }
}

TEST_CASE("on CUDA, resume on the GPU cold tier: the records, signatures and norms come back") {
  if (!torch::cuda::is_available()) {
    MESSAGE("skipped: no CUDA device for LibTorch");
    return;
  }
  for (const bool norms : {true, false}) {
    CAPTURE(norms);
    TieredCacheOptions o = SmallGpuOptions();
    o.scan_norms = norms;
    o.evict_batch = norms ? 1 : 4;  // segments of one token and of four
    CheckResume(CudaSteps(10), o, torch::kCUDA);
  }
  // The tail sample is seeded by position: a resumed session draws what the first one would have.
  TieredCacheOptions o = SmallGpuOptions();
  o.tail_samples = 128;
  CheckResume(CudaSteps(10), o, torch::kCUDA);
}

// Runs `steps` into a fresh archive at `path` with the options, commits and closes it; returns
// the outputs and whether eviction encoded on the GPU.
static std::vector<torch::Tensor> RunIntoArchive(const std::string& path,
                                                 const std::vector<Step>& steps,
                                                 const TieredCacheOptions& o, bool* on_gpu) {
  std::filesystem::remove(path);
  auto w = ArchiveWriter::Create(path, SpecFor(o));
  REQUIRE(w.ok());
  auto cache = TieredCache::Open(w->get(), kShape, o, torch::kCUDA, torch::kFloat32, nullptr);
  REQUIRE(cache.ok());
  *on_gpu = (*cache)->encodes_on_gpu();
  auto out = Run(**cache, steps);
  REQUIRE((*cache)->Commit({1}).ok());
  REQUIRE((*w)->Close().ok());
  return out;
}

static std::string FileBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

TEST_CASE("on CUDA, eviction encoded on the GPU writes the CPU's archive byte for byte") {
  if (!torch::cuda::is_available()) {
    MESSAGE("skipped: no CUDA device for LibTorch");
    return;
  }
  const auto steps = CudaSteps(12);
  const std::string base = (std::filesystem::temp_directory_path() /
                            ("kiv-encode-" + std::to_string(getpid()))).string();
  for (const bool norms : {true, false}) {
    for (const bool gpu_cold : {true, false}) {  // records to the pinned arena, or to the runs
      CAPTURE(norms);
      CAPTURE(gpu_cold);
      TieredCacheOptions o = SmallGpuOptions();
      o.scan_norms = norms;
      o.gpu_cold = gpu_cold;
      o.evict_batch = 4;
      bool gpu = false, cpu = true;
      const auto got = RunIntoArchive(base + "-gpu.kiv", steps, o, &gpu);
      if (!gpu) {
        MESSAGE("skipped: this build has no CUDA kernels (KIV_WITH_CUDA)");
        return;
      }
      o.gpu_encode = false;
      const auto want = RunIntoArchive(base + "-cpu.kiv", steps, o, &cpu);
      CHECK_FALSE(cpu);
      const std::string a = FileBytes(base + "-gpu.kiv"), b = FileBytes(base + "-cpu.kiv");
      CHECK(a.size() > 1500u * 104 * kShape.num_layers * kShape.num_kv_heads / 2);
      CHECK(a == b);
      for (uint32_t l = 0; l < kShape.num_layers; ++l)
        CHECK(torch::equal(got[l].cpu(), want[l].cpu()));
    }
  }
  std::filesystem::remove(base + "-gpu.kiv");
  std::filesystem::remove(base + "-cpu.kiv");
}

TEST_CASE("on CUDA, the scan on the GPU picks what the CPU scan picks: outputs bit for bit") {
  if (!torch::cuda::is_available()) {
    MESSAGE("skipped: no CUDA device for LibTorch");
    return;
  }
  const auto steps = CudaSteps(7);
  uint64_t bytes[2] = {0, 0};
  for (const bool norms : {true, false}) {
    CAPTURE(norms);
    TieredCacheOptions o = SmallGpuOptions();
    o.gpu_cold = false;  // the scan alone on the GPU
    o.scan_norms = norms;
    TieredCache gpu(kShape, o, torch::kCUDA, torch::kFloat32);
    CHECK_FALSE(gpu.cold_on_gpu());
    if (!gpu.scans_on_gpu()) {
      MESSAGE("skipped: this build has no CUDA kernels (KIV_WITH_CUDA)");
      return;
    }
    o.gpu_scan = false;
    TieredCache cpu(kShape, o, torch::kCUDA, torch::kFloat32);
    CHECK_FALSE(cpu.scans_on_gpu());
    const auto got = Run(gpu, steps), want = Run(cpu, steps);
    CHECK(gpu.stats().scans == cpu.stats().scans);
    CHECK(gpu.stats().tokens_retrieved == cpu.stats().tokens_retrieved);
    for (uint32_t l = 0; l < kShape.num_layers; ++l)
      CHECK(torch::equal(got[l].cpu(), want[l].cpu()));
    bytes[norms ? 0 : 1] = gpu.device_bytes();
  }
  MESSAGE("cache on the GPU: " << bytes[0] << " bytes with key norms, " << bytes[1] << " without");
  CHECK(bytes[1] < bytes[0]);
}

TEST_CASE("on CUDA, the whole cold step on the GPU matches the CPU path") {
  if (!torch::cuda::is_available()) {
    MESSAGE("skipped: no CUDA device for LibTorch");
    return;
  }
  const auto steps = CudaSteps(8);
  TieredCacheOptions o = WholeColdStepOptions();
  TieredCache gpu(kShape, o, torch::kCUDA, torch::kFloat32);
  if (!gpu.cold_on_gpu()) {
    MESSAGE("skipped: this build has no CUDA kernels (KIV_WITH_CUDA)");
    return;
  }
  o.gpu_scan = false;
  TieredCache cpu(kShape, o, torch::kCUDA, torch::kFloat32);
  CHECK_FALSE(cpu.cold_on_gpu());
  const auto got = Run(gpu, steps), want = Run(cpu, steps);
  CHECK(gpu.stats().scans == cpu.stats().scans);
  // The same picks but where the re-rank's float softmax (GPU) and double one (CPU) order a
  // near-tie differently; attention sums in another order.
  const double err = RelError(got, want);
  MESSAGE("GPU cold step vs CPU: relative error " << err);
  CHECK(err < 1e-3);
  // Earlier chunks of a long prompt retrieve per block only: one scan per block and kv-head.
  TieredCache blocks(kShape, o, torch::kCUDA, torch::kFloat32);
  o.gpu_scan = true;
  TieredCache blocks_gpu(kShape, o, torch::kCUDA, torch::kFloat32);
  blocks.set_chunk_ends_prompt(false);
  blocks_gpu.set_chunk_ends_prompt(false);
  const std::vector<Step> prefill(steps.begin(), steps.begin() + 15);
  const auto b_cpu = Run(blocks, prefill), b_gpu = Run(blocks_gpu, prefill);
  CHECK(blocks.stats().scans == blocks_gpu.stats().scans);
  CHECK(blocks_gpu.stats().scans < gpu.stats().scans);
  CHECK(RelError(b_gpu, b_cpu) < 1e-3);
}

TEST_CASE("on CUDA, the tail sample on the GPU matches the CPU path's") {
  if (!torch::cuda::is_available()) {
    MESSAGE("skipped: no CUDA device for LibTorch");
    return;
  }
  const auto steps = CudaSteps(8);
  for (const uint32_t recent : {0u, 100u}) {
    CAPTURE(recent);
    TieredCacheOptions o = WholeColdStepOptions();
    o.tail_samples = 256;
    o.tail_recent = recent;
    TieredCache gpu(kShape, o, torch::kCUDA, torch::kFloat32);
    if (!gpu.cold_on_gpu()) {
      MESSAGE("skipped: this build has no CUDA kernels (KIV_WITH_CUDA)");
      return;
    }
    o.gpu_cold = false;  // the scan on the GPU (the same picks), the rest on the CPU
    TieredCache cpu(kShape, o, torch::kCUDA, torch::kFloat32);
    CHECK_FALSE(cpu.cold_on_gpu());
    o.tail_samples = 0;
    o.gpu_cold = true;
    TieredCache unsampled(kShape, o, torch::kCUDA, torch::kFloat32);
    const auto got = Run(gpu, steps), want = Run(cpu, steps), plain = Run(unsampled, steps);
    CHECK(gpu.stats().tokens_sampled == cpu.stats().tokens_sampled);
    CHECK(gpu.stats().tokens_sampled > 0);
    // The same draws from the same picks; the re-rank's float softmax may order a near-tie
    // differently (one pick apart shifts that retrieval's sample by a rank), and attention sums
    // in another order. Without the sample the answer is far from both.
    const double err = RelError(got, want), err_plain = RelError(plain, want);
    MESSAGE("tail sample on the GPU vs the CPU path: relative error " << err
                                                                      << "; without the sample "
                                                                      << err_plain);
    CHECK(err < 1e-3);
    CHECK(err_plain > 100 * err);
  }
}

TEST_CASE("on CUDA, KIV_TRACE_RETRIEVAL traces the GPU's decode picks as the CPU path's") {
  if (!torch::cuda::is_available()) {
    MESSAGE("skipped: no CUDA device for LibTorch");
    return;
  }
  const auto steps = CudaSteps(8);
  TieredCacheOptions o = WholeColdStepOptions();
  const std::string path = (std::filesystem::temp_directory_path() /
                            ("kiv-trace-cuda-" + std::to_string(getpid()) + ".txt"))
                               .string();
  bool on_gpu = false;
  const std::vector<std::string> gpu = Traced(path, [&] {
    TieredCache cache(kShape, o, torch::kCUDA, torch::kFloat32);
    on_gpu = cache.cold_on_gpu();
    Run(cache, steps);
  });
  if (!on_gpu) {
    MESSAGE("skipped: this build has no CUDA kernels (KIV_WITH_CUDA)");
    return;
  }
  o.gpu_scan = false;
  const std::vector<std::string> cpu = Traced(path, [&] {
    TieredCache cache(kShape, o, torch::kCUDA, torch::kFloat32);
    Run(cache, steps);
  });
  REQUIRE(gpu.size() == 30 * 2 * 2);  // decode steps × layers × kv-heads
  REQUIRE(cpu.size() == gpu.size());
  size_t same = 0;
  for (size_t i = 0; i < gpu.size(); ++i) same += gpu[i] == cpu[i];
  // The same picks but where the re-rank's float and double softmax order a near-tie apart.
  MESSAGE(same << " of " << gpu.size() << " traced decode picks identical, GPU and CPU");
  CHECK(same * 10 >= gpu.size() * 9);
}

TEST_CASE("on CUDA, decode steps captured in one CUDA graph equal the eager steps bit for bit") {
#if !KIV_TORCH_CUDA
  MESSAGE("skipped: this build's LibTorch has no CUDA");
#else
  if (!torch::cuda::is_available()) {
    MESSAGE("skipped: no CUDA device for LibTorch");
    return;
  }
  const auto steps = CudaSteps(9);
  for (const std::pair<uint32_t, uint32_t> config : {std::pair{1u, 0u}, {8u, 0u}, {8u, 200u}}) {
    const uint32_t batch = config.first, tail = config.second;
    CAPTURE(batch);
    CAPTURE(tail);
    TieredCacheOptions o = SmallGpuOptions();
    o.evict_batch = batch;  // 8: the hot count changes from step to step under one graph
    o.tail_samples = tail;  // seeded by the step's position, which the graph reads on the device
    TieredCache eager(kShape, o, torch::kCUDA, torch::kFloat32);
    TieredCache graphed(kShape, o, torch::kCUDA, torch::kFloat32);
    if (!graphed.cold_on_gpu()) {
      MESSAGE("skipped: this build has no CUDA kernels (KIV_WITH_CUDA)");
      return;
    }
    size_t first_decode = 0;
    while (steps[first_decode].ids.size() > 1) ++first_decode;
    const auto want = Run(eager, steps);
    uint64_t key = 0;
    CHECK_FALSE(graphed.PrepareCapturedDecode(&key));  // empty: nothing cold yet
    Run(graphed, steps, 0, first_decode);
    // The step's inputs live at fixed addresses, as a model's graph outputs do.
    std::vector<torch::Tensor> q, k, v, out(kShape.num_layers);
    for (uint32_t l = 0; l < kShape.num_layers; ++l) {
      q.push_back(steps[first_decode].q[l].clone());
      k.push_back(steps[first_decode].k[l].clone());
      v.push_back(steps[first_decode].v[l].clone());
    }
    auto step = [&] {
      for (uint32_t l = 0; l < kShape.num_layers; ++l)
        out[l] = graphed.Attend(l, q[l], k[l], v[l], graphed.length());
    };
    std::unique_ptr<at::cuda::CUDAGraph> graph;
    uint64_t graph_key = 0, captures = 0;
    std::vector<std::vector<torch::Tensor>> got(kShape.num_layers);
    c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool();
    for (size_t i = first_decode; i < steps.size(); ++i) {
      for (uint32_t l = 0; l < kShape.num_layers; ++l) {
        q[l].copy_(steps[i].q[l]);
        k[l].copy_(steps[i].k[l]);
        v[l].copy_(steps[i].v[l]);
      }
      REQUIRE(graphed.PrepareCapturedDecode(&key));
      if (!graph || key != graph_key) {
        c10::cuda::device_synchronize();
        {
          c10::cuda::CUDAStreamGuard on_side(side);
          step();  // a warm-up: the same writes the capture will repeat
          side.synchronize();
          graph = std::make_unique<at::cuda::CUDAGraph>();
          graph->capture_begin();
          step();
          graph->capture_end();
        }
        c10::cuda::device_synchronize();
        graph_key = key;
        ++captures;
      }
      graph->replay();
      for (uint32_t l = 0; l < kShape.num_layers; ++l) got[l].push_back(out[l].clone());
      graphed.EndChunk(steps[i].ids);
    }
    const int64_t decoded = int64_t(steps.size() - first_decode);
    const int64_t at = want[0].size(1) - decoded;
    for (uint32_t l = 0; l < kShape.num_layers; ++l)
      CHECK(torch::equal(torch::cat(got[l], 1).cpu(), want[l].slice(1, at).cpu()));
    CHECK(captures == 1);  // one graph served every step: the cold tier grew under it
    CHECK(graphed.stats().scans == eager.stats().scans);
    CHECK(graphed.stats().tokens_scanned == eager.stats().tokens_scanned);
    CHECK(graphed.cold_tokens() == eager.cold_tokens());
    MESSAGE("evict_batch " << batch << ": " << decoded << " decode steps replayed from "
                           << captures << " capture, " << graphed.cold_tokens()
                           << " cold tokens at the end");
  }
#endif
}
