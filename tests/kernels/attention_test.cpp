// kernels/attention against a plain reference (one softmax over the union of the sets, in
// double); its bf16 output against its float one rounded; two launches in a row (the first
// leaves its done-counters zero for the second) bit for bit alike; and the two kernels chained as
// the runtime chains them: records → RerankGather → SparseDecodeAttention beside a bf16 hot tier,
// against RerankTopK + Decode + the reference.
#include "kernels/attention.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "index/record.h"
#include "index/rerank.h"
#include "kernels/gather.h"
#include "tests/kernels/kernel_test_util.h"

namespace kiv::kernels::test {
namespace {

// One set as the reference sees it: float values (bf16 ones already widened), plus the bytes the
// kernel reads in the set's dtype.
struct HostSet {
  DType dtype = DType::kFloat32;
  uint32_t rows = 0;             // max_rows
  uint32_t head_stride = 0;      // elements; rows · d plus padding
  std::vector<float> k, v;       // [H_kv][head_stride]
  std::vector<uint32_t> counts;  // empty: every row
  std::vector<float> bias;       // empty: none; else [H_kv][rows], added to each row's score
  uint32_t Used(uint32_t h) const { return counts.empty() ? rows : std::min(counts[h], rows); }
};

HostSet RandomSet(Rng& rng, uint32_t hkv, uint32_t d, uint32_t rows, uint32_t pad_rows, DType dtype,
                  std::vector<uint32_t> counts = {}) {
  HostSet s;
  s.dtype = dtype;
  s.rows = rows;
  s.head_stride = (rows + pad_rows) * d;
  s.k.resize(size_t{hkv} * s.head_stride);
  s.v.resize(s.k.size());
  for (size_t i = 0; i < s.k.size(); ++i) {
    s.k[i] = 2 * rng.Uniform();
    s.v[i] = 2 * rng.Uniform();
    if (dtype == DType::kBFloat16)
      s.k[i] = Bf16ToFloat(FloatToBf16(s.k[i])), s.v[i] = Bf16ToFloat(FloatToBf16(s.v[i]));
  }
  s.counts = std::move(counts);
  return s;
}

// Device copies of a HostSet, kept alive for the launch.
struct DeviceSet {
  DeviceBuffer<uint8_t> k, v;
  DeviceBuffer<uint32_t> counts;
  DeviceBuffer<float> bias;
  explicit DeviceSet(const HostSet& s)
      : k(s.k.size() * DTypeBytes(s.dtype)),
        v(s.v.size() * DTypeBytes(s.dtype)),
        counts(s.counts.size()),
        bias(s.bias.size()) {
    k.Upload(Bytes(s.k, s.dtype));
    v.Upload(Bytes(s.v, s.dtype));
    if (!s.counts.empty()) counts.Upload(s.counts);
    if (!s.bias.empty()) bias.Upload(s.bias);
  }
  static std::vector<uint8_t> Bytes(const std::vector<float>& x, DType dtype) {
    std::vector<uint8_t> out(x.size() * DTypeBytes(dtype));
    for (size_t i = 0; i < x.size(); ++i) {
      if (dtype == DType::kFloat32) {
        std::memcpy(&out[i * 4], &x[i], 4);
      } else {
        const uint16_t h = FloatToBf16(x[i]);
        std::memcpy(&out[i * 2], &h, 2);
      }
    }
    return out;
  }
  KvSet View(const HostSet& s) const {
    KvSet kv;
    kv.keys = k.get();
    kv.values = v.get();
    kv.dtype = s.dtype;
    kv.max_rows = s.rows;
    kv.head_stride = s.head_stride;
    kv.counts = s.counts.empty() ? nullptr : counts.get();
    kv.bias = s.bias.empty() ? nullptr : bias.get();
    return kv;
  }
};

struct Reference {
  std::vector<double> out, scale;  // scale[h·d + e] = Σ p_t |v_te|: the size of the terms
  std::vector<double> lse;
};

// One softmax over the union of the sets, in double.
Reference ReferenceAttention(const std::vector<float>& q, uint32_t hq, uint32_t hkv, uint32_t d,
                             const std::vector<const HostSet*>& sets) {
  Reference r;
  r.out.assign(size_t{hq} * d, 0.0);
  r.scale.assign(size_t{hq} * d, 0.0);
  r.lse.assign(hq, -std::numeric_limits<double>::infinity());
  const uint32_t g = hq / hkv;
  for (uint32_t h = 0; h < hq; ++h) {
    const uint32_t kvh = h / g;
    std::vector<double> scores;
    std::vector<const float*> vrows;
    for (const HostSet* s : sets)
      for (uint32_t t = 0; t < s->Used(kvh); ++t) {
        const float* krow = &s->k[size_t{kvh} * s->head_stride + size_t{t} * d];
        double dot = 0;
        for (uint32_t e = 0; e < d; ++e) dot += double(q[h * d + e]) * krow[e];
        scores.push_back(dot / std::sqrt(double(d)) +
                         (s->bias.empty() ? 0.0 : s->bias[size_t{kvh} * s->rows + t]));
        vrows.push_back(&s->v[size_t{kvh} * s->head_stride + size_t{t} * d]);
      }
    if (scores.empty()) continue;
    const double m = *std::max_element(scores.begin(), scores.end());
    double sum = 0;
    for (double x : scores) sum += std::exp(x - m);
    r.lse[h] = m + std::log(sum);
    for (size_t t = 0; t < scores.size(); ++t) {
      const double p = std::exp(scores[t] - m) / sum;
      for (uint32_t e = 0; e < d; ++e) {
        r.out[h * d + e] += p * vrows[t][e];
        r.scale[h * d + e] += p * std::fabs(vrows[t][e]);
      }
    }
  }
  return r;
}

// Within 1e-5 relative: of the terms' size for the output (a weighted sum may cancel), of the
// value for the log-sum-exp; a head that sees nothing must give exactly 0 and −inf.
void CheckAgainst(const Reference& r, const std::vector<float>& out, const std::vector<float>& lse,
                  uint32_t hq, uint32_t d) {
  size_t bad = 0;
  for (uint32_t h = 0; h < hq; ++h) {
    if (std::isinf(r.lse[h])) {
      CHECK(std::isinf(lse[h]));
      CHECK(lse[h] < 0);
      for (uint32_t e = 0; e < d; ++e) bad += out[h * d + e] != 0.0f;
      continue;
    }
    CHECK_MESSAGE(std::fabs(lse[h] - r.lse[h]) <= 1e-5 * std::max(1.0, std::fabs(r.lse[h])),
                  "head ", h, ": lse ", lse[h], " vs ", r.lse[h]);
    for (uint32_t e = 0; e < d; ++e) {
      const double want = r.out[h * d + e], tol = 1e-5 * std::max(r.scale[h * d + e], 1e-30);
      if (std::fabs(out[h * d + e] - want) > tol) {
        if (bad < 5) MESSAGE("head ", h, " element ", e, ": ", out[h * d + e], " vs ", want);
        ++bad;
      }
    }
  }
  CHECK_MESSAGE(bad == 0, bad, " output elements out of tolerance");
}

struct AttnCase {
  const char* name;
  uint32_t d, hq, hkv;
  DType q_dtype;
  float q_scale;
  std::vector<HostSet> sets;
};

void RunAttention(Rng& rng, const AttnCase& cs) {
  INFO(cs.name);
  const uint32_t d = cs.d, hq = cs.hq;
  std::vector<float> q(size_t{hq} * d);
  for (float& x : q) {
    x = 2 * cs.q_scale * rng.Uniform();
    if (cs.q_dtype == DType::kBFloat16) x = Bf16ToFloat(FloatToBf16(x));
  }
  DeviceBuffer<uint8_t> d_q(DeviceSet::Bytes(q, cs.q_dtype));
  std::vector<std::unique_ptr<DeviceSet>> dsets;
  SparseAttentionParams pr;
  pr.num_q_heads = hq;
  pr.num_kv_heads = cs.hkv;
  pr.head_dim = d;
  pr.q = d_q.get();
  pr.q_dtype = cs.q_dtype;
  pr.num_sets = uint32_t(cs.sets.size());
  std::vector<const HostSet*> refs;
  for (size_t s = 0; s < cs.sets.size(); ++s) {
    dsets.push_back(std::make_unique<DeviceSet>(cs.sets[s]));
    pr.sets[s] = dsets.back()->View(cs.sets[s]);
    refs.push_back(&cs.sets[s]);
  }
  DeviceBuffer<float> d_out(size_t{hq} * d), d_lse(hq);
  DeviceBuffer<uint16_t> d_out16(size_t{hq} * d);
  pr.out = d_out.get();
  pr.out_bf16 = d_out16.get();
  pr.lse = d_lse.get();
  DeviceBuffer<uint8_t> ws(SparseAttentionWorkspaceBytes(pr));
  pr.workspace = ws.get();
  pr.workspace_bytes = ws.size();
  const std::vector<uint32_t> zeros(SparseAttentionDoneCount(pr), 0u);
  DeviceBuffer<uint32_t> d_done(zeros);
  pr.done = d_done.get();
  REQUIRE(CheckSparseAttention(pr).empty());
  struct Result {
    std::vector<float> out, lse;
    std::vector<uint16_t> out16;
  };
  auto launch = [&] {
    KIV_CUDA_REQUIRE(cudaMemset(d_out.get(), 0xFF, d_out.size() * sizeof(float)));  // NaNs
    KIV_CUDA_REQUIRE(cudaMemset(d_out16.get(), 0xFF, d_out16.size() * sizeof(uint16_t)));
    KIV_CUDA_REQUIRE(cudaError_t(LaunchSparseDecodeAttention(pr, nullptr)));
    KIV_CUDA_REQUIRE(cudaDeviceSynchronize());
    return Result{d_out.Download(), d_lse.Download(), d_out16.Download()};
  };
  const Result first = launch();
  CheckAgainst(ReferenceAttention(q, hq, cs.hkv, d, refs), first.out, first.lse, hq, d);
  size_t bad = 0;
  for (size_t i = 0; i < first.out.size(); ++i) bad += first.out16[i] != FloatToBf16(first.out[i]);
  CHECK_MESSAGE(bad == 0, bad, " bf16 outputs are not the float output rounded to nearest even");
  CHECK(d_done.Download() == zeros);
  // The counters the first launch left behind serve the second: the same bits.
  const Result second = launch();
  CHECK(std::memcmp(first.out.data(), second.out.data(), first.out.size() * sizeof(float)) == 0);
  CHECK(std::memcmp(first.lse.data(), second.lse.data(), first.lse.size() * sizeof(float)) == 0);
  CHECK(first.out16 == second.out16);
  // bf16 alone (no float output): the same bf16 bits.
  pr.out = nullptr;
  const Result bf16_only = launch();
  CHECK(bf16_only.out16 == first.out16);
  CHECK(std::memcmp(first.lse.data(), bf16_only.lse.data(), first.lse.size() * sizeof(float)) == 0);
  CHECK(d_done.Download() == zeros);
}

TEST_CASE("SparseDecodeAttention equals one softmax over the union of its sets") {
  if (!HaveDevice()) {
    MESSAGE("skipped: no CUDA device");
    return;
  }
  Rng rng{5};
  const DType f32 = DType::kFloat32, bf16 = DType::kBFloat16;
  std::vector<AttnCase> cases;
  // SmolLM2's shape: hot (float, padded heads), retrieved with per-head counts, bf16 sinks.
  cases.push_back(
      {"9/3 heads, d 64: hot, retrieved with counts, sinks",
       64,
       9,
       3,
       f32,
       1.0f,
       {RandomSet(rng, 3, 64, 300, 5, f32), RandomSet(rng, 3, 64, 64, 0, f32, {64, 17, 0}),
        RandomSet(rng, 3, 64, 4, 0, bf16)}});
  // The merging block stages its heads' partials in shared memory when they fit (8,192 floats),
  // as in every case here but this one (8 heads × 34 blocks × 130 floats): merged from L2.
  cases.push_back({"16/1 heads (two head tiles), d 128, bf16 q and hot",
                   128,
                   16,
                   1,
                   bf16,
                   1.0f,
                   {RandomSet(rng, 1, 128, 1000, 0, bf16), RandomSet(rng, 1, 128, 64, 0, f32)}});
  cases.push_back(
      {"12/4 heads, d 64, one key", 64, 12, 4, f32, 1.0f, {RandomSet(rng, 4, 64, 1, 0, f32)}});
  cases.push_back({"8/8 heads, d 128, peaky scores",
                   128,
                   8,
                   8,
                   f32,
                   8.0f,
                   {RandomSet(rng, 8, 128, 257, 3, bf16),
                    RandomSet(rng, 8, 128, 64, 0, f32, {0, 1, 2, 63, 64, 65, 30, 0})}});
  cases.push_back({"4/2 heads, d 64, every count zero",
                   64,
                   4,
                   2,
                   f32,
                   1.0f,
                   {RandomSet(rng, 2, 64, 0, 0, bf16), RandomSet(rng, 2, 64, 64, 0, f32, {0, 0})}});
  cases.push_back({"3/1 heads, no sets", 64, 3, 1, f32, 1.0f, {}});
  // A tail sample's rows weigh several tokens each: a log weight per row, added to its score.
  {
    HostSet sample = RandomSet(rng, 3, 64, 100, 0, f32, {100, 37, 0});
    sample.bias.resize(3 * 100);
    for (float& b : sample.bias) b = 4.0f * std::fabs(rng.Uniform());
    cases.push_back({"9/3 heads, d 64: retrieved, a biased tail sample, hot",
                     64,
                     9,
                     3,
                     f32,
                     1.0f,
                     {RandomSet(rng, 3, 64, 64, 0, f32, {64, 64, 5}), std::move(sample),
                      RandomSet(rng, 3, 64, 260, 0, bf16)}});
  }
  for (const AttnCase& cs : cases) RunAttention(rng, cs);
}

TEST_CASE("SparseDecodeAttention refuses unsupported shapes, naming the value") {
  SparseAttentionParams pr;
  pr.num_q_heads = 9;
  pr.num_kv_heads = 2;
  CHECK(CheckSparseAttention(pr).find("multiple of num_kv_heads (got 9)") != std::string::npos);
  pr.num_kv_heads = 3;
  pr.head_dim = 80;
  CHECK(CheckSparseAttention(pr).find("head_dim must be 64 or 128 (got 80)") != std::string::npos);
  pr.head_dim = 64;
  pr.num_sets = 1;
  pr.sets[0].max_rows = 10;
  CHECK(CheckSparseAttention(pr).find("sets[0].keys and values") != std::string::npos);
  std::vector<uint16_t> storage(64);
  pr.sets[0].dtype = DType::kBFloat16;
  pr.sets[0].keys = storage.data() + 1;  // 2-byte aligned: the kernel reads 8 bytes at a time
  pr.sets[0].values = storage.data();
  CHECK(CheckSparseAttention(pr).find("aligned to 8 bytes") != std::string::npos);
  pr.num_sets = 0;
  float dummy[2];
  pr.q = dummy, pr.lse = dummy;
  CHECK(CheckSparseAttention(pr).find("out or out_bf16 must be set") != std::string::npos);
  pr.out_bf16 = reinterpret_cast<uint8_t*>(storage.data()) + 1;
  CHECK(CheckSparseAttention(pr).find("out_bf16 must be aligned to 2 bytes") != std::string::npos);
  pr.out_bf16 = storage.data();
  CHECK(CheckSparseAttention(pr).find("done must be set") != std::string::npos);
  uint32_t done[3] = {};
  pr.done = done;
  CHECK(CheckSparseAttention(pr).empty());
}

// The runtime's chain for one layer: the group's queries re-rank candidates from records in
// registered host memory, the winners are decoded on the GPU and attended to beside the hot tier.
TEST_CASE("RerankGather feeds SparseDecodeAttention: equal to RerankTopK + Decode + reference") {
  if (!HaveDevice()) {
    MESSAGE("skipped: no CUDA device");
    return;
  }
  const index::RecordCodec codec{6, 6, true};
  const uint32_t hq = 9, hkv = 3, g = 3, d = 64, N = 3000, c = 512, k = 64;
  Rng rng{21};
  RecordBuffer buf(size_t{hkv} * N * index::kRecordBytes, Place::kMappedHost);
  for (uint32_t r = 0; r < hkv * N; ++r) {
    float key[64], value[64];
    for (int e = 0; e < 64; ++e) key[e] = 4 * rng.Uniform(), value[e] = 2 * rng.Uniform();
    codec.Encode(key, value, buf.host() + size_t{r} * index::kRecordBytes);
  }
  std::vector<float> q(hq * d);  // [H_q][d] is [P = H_kv][g][d]: the gather's query layout
  for (float& x : q) x = 4 * rng.Uniform();
  std::vector<uint32_t> cand(hkv * c);
  for (uint32_t h = 0; h < hkv; ++h)
    for (uint32_t i = 0; i < c; ++i) cand[h * c + i] = (i * 2861 + 17 * h) % N;  // distinct
  std::vector<const uint8_t*> bases(hkv);
  for (uint32_t h = 0; h < hkv; ++h) bases[h] = buf.device() + size_t{h} * N * index::kRecordBytes;
  DeviceBuffer<const uint8_t*> d_bases(bases);
  DeviceBuffer<uint32_t> d_cand(cand), d_ids(hkv * k), d_count(hkv);
  DeviceBuffer<float> d_q(q), d_keys(hkv * k * d), d_values(hkv * k * d);
  RerankGatherParams gp;
  gp.num_problems = hkv;
  gp.head_dim = d;
  gp.group = g;
  gp.num_candidates = c;
  gp.top_k = k;
  gp.codec = codec;
  gp.records = d_bases.get();
  gp.candidates = d_cand.get();
  gp.queries = d_q.get();
  gp.out_ids = d_ids.get();
  gp.out_counts = d_count.get();
  gp.out_keys = d_keys.get();
  gp.out_values = d_values.get();
  DeviceBuffer<uint8_t> gws(RerankGatherWorkspaceBytes(gp));
  gp.workspace = gws.get();
  gp.workspace_bytes = gws.size();

  HostSet hot = RandomSet(rng, hkv, d, 300, 0, DType::kBFloat16);
  DeviceSet d_hot(hot);
  SparseAttentionParams ap;
  ap.num_q_heads = hq;
  ap.num_kv_heads = hkv;
  ap.head_dim = d;
  ap.q = d_q.get();
  ap.num_sets = 2;
  ap.sets[0] = d_hot.View(hot);
  ap.sets[1].keys = d_keys.get();
  ap.sets[1].values = d_values.get();
  ap.sets[1].max_rows = k;
  ap.sets[1].counts = d_count.get();
  DeviceBuffer<float> d_out(hq * d), d_lse(hq);
  ap.out = d_out.get();
  ap.lse = d_lse.get();
  DeviceBuffer<uint8_t> aws(SparseAttentionWorkspaceBytes(ap));
  ap.workspace = aws.get();
  ap.workspace_bytes = aws.size();
  DeviceBuffer<uint32_t> d_done(std::vector<uint32_t>(SparseAttentionDoneCount(ap), 0u));
  ap.done = d_done.get();
  KIV_CUDA_REQUIRE(cudaError_t(LaunchRerankGather(gp, nullptr)));
  KIV_CUDA_REQUIRE(cudaError_t(LaunchSparseDecodeAttention(ap, nullptr)));
  KIV_CUDA_REQUIRE(cudaDeviceSynchronize());

  // CPU: RerankTopK per kv-head on the rotated queries, Decode of the picks, the reference.
  HostSet retrieved;
  retrieved.rows = k;
  retrieved.head_stride = k * d;
  retrieved.k.assign(hkv * k * d, 0.0f);
  retrieved.v.assign(hkv * k * d, 0.0f);
  const std::vector<uint32_t> gpu_ids = d_ids.Download();
  for (uint32_t h = 0; h < hkv; ++h) {
    std::vector<float> qr(g * d);
    for (uint32_t j = 0; j < g; ++j) codec.RotateQuery(&q[(h * g + j) * d], &qr[j * d]);
    std::vector<const uint8_t*> ptrs(c);
    for (uint32_t i = 0; i < c; ++i)
      ptrs[i] = buf.host() + (size_t{h} * N + cand[h * c + i]) * index::kRecordBytes;
    std::vector<uint32_t> picked(k);
    std::vector<float> scratch;
    REQUIRE(index::RerankTopK(codec, qr.data(), g, d, &cand[h * c], ptrs.data(), c, k,
                              picked.data(), &scratch) == k);
    CHECK(std::equal(picked.begin(), picked.end(), gpu_ids.begin() + h * k));
    retrieved.counts.push_back(k);
    for (uint32_t t = 0; t < k; ++t)
      codec.Decode(buf.host() + (size_t{h} * N + picked[t]) * index::kRecordBytes,
                   &retrieved.k[(h * k + t) * d], &retrieved.v[(h * k + t) * d]);
  }
  CHECK(d_keys.Download() == retrieved.k);
  CHECK(d_values.Download() == retrieved.v);
  CheckAgainst(ReferenceAttention(q, hq, hkv, d, {&hot, &retrieved}), d_out.Download(),
               d_lse.Download(), hq, d);
}

// Reports only: one layer's attention for SmolLM2-135M (9/3 heads, d 64) and a Llama-8B-like
// layer (32/8 heads, d 128), bf16 hot tier beside 64 retrieved rows and 4 sinks.
TEST_CASE("SparseDecodeAttention timing (reported, not asserted)") {
  if (!HaveDevice()) {
    MESSAGE("skipped: no CUDA device");
    return;
  }
  Rng rng{3};
  struct Shape {
    uint32_t hq, hkv, d, hot;
  };
  for (const Shape& sh : {Shape{9, 3, 64, 512}, Shape{32, 8, 128, 2048}}) {
    HostSet hot = RandomSet(rng, sh.hkv, sh.d, sh.hot, 0, DType::kBFloat16);
    HostSet ret = RandomSet(rng, sh.hkv, sh.d, 64, 0, DType::kFloat32);
    HostSet sinks = RandomSet(rng, sh.hkv, sh.d, 4, 0, DType::kBFloat16);
    DeviceSet dh(hot), dr(ret), ds(sinks);
    std::vector<float> q(sh.hq * sh.d);
    for (float& x : q) x = rng.Uniform();
    DeviceBuffer<float> d_q(q), d_out(sh.hq * sh.d), d_lse(sh.hq);
    SparseAttentionParams pr;
    pr.num_q_heads = sh.hq;
    pr.num_kv_heads = sh.hkv;
    pr.head_dim = sh.d;
    pr.q = d_q.get();
    pr.num_sets = 3;
    pr.sets[0] = ds.View(sinks);
    pr.sets[1] = dr.View(ret);
    pr.sets[2] = dh.View(hot);
    pr.out = d_out.get();
    pr.lse = d_lse.get();
    DeviceBuffer<uint8_t> ws(SparseAttentionWorkspaceBytes(pr));
    pr.workspace = ws.get();
    pr.workspace_bytes = ws.size();
    DeviceBuffer<uint32_t> done(std::vector<uint32_t>(SparseAttentionDoneCount(pr), 0u));
    pr.done = done.get();
    // 30 layers' launches back to back, one by one and as one CUDA graph.
    const uint32_t layers = 30, runs = 20;
    cudaStream_t stream;
    KIV_CUDA_REQUIRE(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    auto enqueue = [&] {
      for (uint32_t l = 0; l < layers; ++l)
        KIV_CUDA_REQUIRE(cudaError_t(LaunchSparseDecodeAttention(pr, stream)));
    };
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    KIV_CUDA_REQUIRE(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    enqueue();
    KIV_CUDA_REQUIRE(cudaStreamEndCapture(stream, &graph));
    KIV_CUDA_REQUIRE(cudaGraphInstantiate(&exec, graph, 0));
    cudaEvent_t start, stop;
    KIV_CUDA_REQUIRE(cudaEventCreate(&start));
    KIV_CUDA_REQUIRE(cudaEventCreate(&stop));
    for (bool use_graph : {false, true}) {
      float best_ms = 1e30f;
      for (uint32_t r = 0; r <= runs; ++r) {  // run 0 warms up
        KIV_CUDA_REQUIRE(cudaEventRecord(start, stream));
        if (use_graph)
          KIV_CUDA_REQUIRE(cudaGraphLaunch(exec, stream));
        else
          enqueue();
        KIV_CUDA_REQUIRE(cudaEventRecord(stop, stream));
        KIV_CUDA_REQUIRE(cudaEventSynchronize(stop));
        float ms = 0;
        KIV_CUDA_REQUIRE(cudaEventElapsedTime(&ms, start, stop));
        if (r > 0) best_ms = std::min(best_ms, ms);
      }
      MESSAGE("sparse decode attention, ", sh.hq, "/", sh.hkv, " heads, d ", sh.d, ", ", sh.hot,
              " bf16 hot + 64 retrieved + 4 sinks, ",
              std::string(use_graph ? "graph of 30" : "30 launches"), ": ",
              1000.0 * best_ms / layers, " us/layer (best of ", runs, ")");
    }
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    cudaStreamDestroy(stream);
  }
}

}  // namespace
}  // namespace kiv::kernels::test
