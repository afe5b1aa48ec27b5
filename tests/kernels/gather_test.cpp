// kernels/gather against its CPU reference: index::RerankTopK for the choice, and
// RecordCodec::Decode, bit for bit, for the keys and values, with records in device memory and
// in registered host memory read zero-copy.
#include "kernels/gather.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <numeric>
#include <string>
#include <unordered_map>
#include <vector>

#include "index/record.h"
#include "index/rerank.h"
#include "index/tail_sample.h"
#include "tests/kernels/kernel_test_util.h"

namespace kiv::kernels::test {
namespace {

using index::kRecordBytes;
using index::RecordCodec;

// RerankTopK's group weights, recomputed here so the test can see how close the k-th and the
// (k+1)-th are (it does not return them).
std::vector<float> ReferenceWeights(const RecordCodec& codec, const float* rotated_queries,
                                    uint32_t g, uint32_t d, const uint8_t* const* records,
                                    size_t c) {
  std::vector<float> logits(g * c, 0.0f), weight(c, 0.0f);
  float key[64];
  for (size_t i = 0; i < c; ++i)
    for (uint32_t s = 0; s < d / 64; ++s) {
      codec.DecodeStoredKey(records[i] + s * kRecordBytes, key);
      for (uint32_t j = 0; j < g; ++j) {
        float dot = 0.0f;
        for (uint32_t e = 0; e < 64; ++e) dot += rotated_queries[j * d + s * 64 + e] * key[e];
        logits[j * c + i] += dot * (1.0f / std::sqrt(float(d)));
      }
    }
  for (uint32_t j = 0; j < g; ++j) {
    const float* row = &logits[j * c];
    const float m = *std::max_element(row, row + c);
    double sum = 0.0;
    for (size_t i = 0; i < c; ++i) sum += std::exp(double(row[i] - m));
    for (size_t i = 0; i < c; ++i) weight[i] += float(std::exp(double(row[i] - m)) / sum);
  }
  return weight;
}

// The GPU's choice equals the CPU's, or differs only where the k-th and (k+1)-th weights are
// within 1e-5 relative (the GPU's exp may round such a near-tie the other way), and then only
// among candidates at the boundary. Returns whether it was such a near-tie.
bool CheckChoice(const std::vector<float>& weight, const uint32_t* cand, size_t used, size_t k,
                 const std::vector<uint32_t>& cpu, const std::vector<uint32_t>& gpu) {
  REQUIRE(cpu.size() == gpu.size());
  if (cpu == gpu) return false;
  REQUIRE(used > k);
  std::vector<float> sorted(weight.begin(), weight.begin() + used);
  std::sort(sorted.begin(), sorted.end(), std::greater<float>());
  const float wk = sorted[k - 1], wk1 = sorted[k];
  REQUIRE_MESSAGE(wk - wk1 <= 1e-5f * wk, "choices differ although the k-th weight ", wk,
                  " leads the next ", wk1);
  std::unordered_map<uint32_t, float> by_id;
  for (size_t i = 0; i < used; ++i) by_id[cand[i]] = weight[i];
  for (uint32_t id : gpu) CHECK(by_id.at(id) >= wk1 * (1.0f - 1e-5f));
  return true;
}

// P slots of N tokens' records, each d / 64 slices, token t of slot p at offset + (p · N + t) ·
// stride of the buffer in `place`: random keys with a few outlier channels, random values.
struct RandomRecords {
  RecordBuffer buf;
  uint32_t n;
  uint64_t stride, offset;
  RandomRecords(const RecordCodec& codec, uint32_t P, uint32_t N, uint32_t d, uint64_t stride_bytes,
                uint64_t offset_bytes, Place place, Rng& rng)
      : buf(offset_bytes + uint64_t{P} * N * stride_bytes, place),
        n(N),
        stride(stride_bytes),
        offset(offset_bytes) {
    for (uint32_t p = 0; p < P; ++p)
      for (uint32_t t = 0; t < N; ++t)
        for (uint32_t s = 0; s < d / 64; ++s) {
          float key[64], value[64];
          for (uint32_t e = 0; e < 64; ++e) {
            key[e] = 4 * rng.Uniform() * (e % 16 == 3 ? 6.0f : 1.0f);
            value[e] = 2 * rng.Uniform();
          }
          codec.Encode(key, value, At(buf.host(), p, t) + s * kRecordBytes);
        }
    buf.Publish();
  }
  uint8_t* At(uint8_t* base, uint32_t p, uint32_t t) const {
    return base + offset + (uint64_t{p} * n + t) * stride;
  }
};

// Rows first_row .. first_row + rows of the launch's keys and values ([..][d], float32 or bf16
// bytes) against RecordCodec::Decode of tokens ids[0 ..), bit for bit, and zero past them.
void CheckDecodedRows(const RecordCodec& codec, uint32_t d, bool bf16,
                      const std::vector<uint8_t>& keys, const std::vector<uint8_t>& values,
                      size_t first_row, uint32_t rows, const std::vector<uint32_t>& ids,
                      const std::function<const uint8_t*(uint32_t)>& record) {
  size_t mismatches = 0;
  for (uint32_t t = 0; t < rows; ++t) {
    float key[128] = {}, value[128] = {};
    if (t < ids.size())
      for (uint32_t s = 0; s < d / 64; ++s)
        codec.Decode(record(ids[t]) + s * kRecordBytes, key + s * 64, value + s * 64);
    for (uint32_t e = 0; e < d; ++e) {
      const size_t at = (first_row + t) * d + e;
      if (bf16) {
        uint16_t gk, gv;
        std::memcpy(&gk, &keys[at * 2], 2);
        std::memcpy(&gv, &values[at * 2], 2);
        mismatches += gk != FloatToBf16(key[e]) || gv != FloatToBf16(value[e]);
      } else {
        mismatches += std::memcmp(&keys[at * 4], &key[e], 4) != 0 ||
                      std::memcmp(&values[at * 4], &value[e], 4) != 0;
      }
    }
  }
  CHECK_MESSAGE(mismatches == 0, mismatches, " decoded elements differ from RecordCodec::Decode");
}

struct Case {
  uint32_t codec_id, head_dim;
  Place place;
  uint32_t base_offset, stride_pad;  // misaligned or padded record placement
  bool rotate_on_host, bf16_out, with_counts;
  uint32_t group = 3;  // queries per problem: a decode step's GQA group, or a prefill block's
  uint32_t candidates = 1000;
};

std::string Describe(const Case& cs) {
  return "codec " + std::to_string(cs.codec_id) + ", d " + std::to_string(cs.head_dim) + ", " +
         PlaceName(cs.place) + ", offset " + std::to_string(cs.base_offset) + ", stride pad " +
         std::to_string(cs.stride_pad) + (cs.rotate_on_host ? ", host-rotated q" : "") +
         (cs.bf16_out ? ", bf16 out" : "") + (cs.with_counts ? ", counts" : "") + ", g " +
         std::to_string(cs.group) + ", c " + std::to_string(cs.candidates);
}

void RunCase(const Case& cs) {
  INFO(Describe(cs));
  RecordCodec codec;
  REQUIRE(RecordCodec::FromId(cs.codec_id, &codec));
  const uint32_t P = 3, g = cs.group, c = cs.candidates, N = std::max(2500u, 2 * c), k = 64;
  const uint32_t d = cs.head_dim, slices = d / 64;
  const uint64_t stride = slices * kRecordBytes + cs.stride_pad;
  Rng rng{1000 + cs.codec_id * 10 + d + uint32_t(cs.place)};
  RandomRecords recs(codec, P, N, d, stride, cs.base_offset, cs.place, rng);
  auto record = [&](uint8_t* base, uint32_t p, uint32_t t) { return recs.At(base, p, t); };
  RecordBuffer& buf = recs.buf;
  std::vector<uint32_t> cand(P * c), counts = {c, 40, 0};
  for (uint32_t p = 0; p < P; ++p) {  // c distinct ids per problem, in random order
    std::vector<uint32_t> ids(N);
    std::iota(ids.begin(), ids.end(), 0u);
    for (uint32_t i = 0; i < c; ++i) std::swap(ids[i], ids[i + rng.Below(N - i)]);
    std::copy(ids.begin(), ids.begin() + c, cand.begin() + p * c);
  }
  std::vector<float> q(P * g * d), qr(P * g * d);
  for (float& x : q) x = 4 * rng.Uniform();
  for (uint32_t v = 0; v < P * g * slices; ++v) codec.RotateQuery(&q[v * 64], &qr[v * 64]);

  std::vector<const uint8_t*> bases(P);
  for (uint32_t p = 0; p < P; ++p) bases[p] = record(buf.device(), p, 0);
  DeviceBuffer<const uint8_t*> d_bases(bases);
  DeviceBuffer<uint32_t> d_cand(cand), d_counts(counts), d_ids(P * k), d_count(P);
  DeviceBuffer<float> d_q(cs.rotate_on_host ? qr : q);
  const size_t elem = cs.bf16_out ? 2 : 4;
  DeviceBuffer<uint8_t> d_keys(P * k * d * elem), d_values(P * k * d * elem);
  RerankGatherParams pr;
  pr.num_problems = P;
  pr.head_dim = d;
  pr.group = g;
  pr.num_candidates = c;
  pr.top_k = k;
  pr.codec = codec;
  pr.queries_rotated = cs.rotate_on_host;
  pr.out_dtype = cs.bf16_out ? DType::kBFloat16 : DType::kFloat32;
  pr.record_stride_bytes = stride;
  pr.records = d_bases.get();
  pr.candidates = d_cand.get();
  pr.candidate_counts = cs.with_counts ? d_counts.get() : nullptr;
  pr.queries = d_q.get();
  pr.out_ids = d_ids.get();
  pr.out_counts = d_count.get();
  pr.out_keys = d_keys.get();
  pr.out_values = d_values.get();
  DeviceBuffer<uint8_t> ws(RerankGatherWorkspaceBytes(pr));
  pr.workspace = ws.get();
  pr.workspace_bytes = ws.size();
  KIV_CUDA_REQUIRE(cudaError_t(LaunchRerankGather(pr, nullptr)));
  KIV_CUDA_REQUIRE(cudaDeviceSynchronize());
  const std::vector<uint32_t> ids = d_ids.Download(), got_count = d_count.Download();
  const std::vector<uint8_t> keys = d_keys.Download(), values = d_values.Download();

  uint32_t near_ties = 0;
  for (uint32_t p = 0; p < P; ++p) {
    INFO("problem ", p);
    const size_t used = cs.with_counts ? counts[p] : c;
    std::vector<const uint8_t*> ptrs(used);
    for (size_t i = 0; i < used; ++i) ptrs[i] = record(buf.host(), p, cand[p * c + i]);
    std::vector<uint32_t> cpu(std::min<size_t>(k, used));
    std::vector<float> scratch;
    if (used > 0)  // RerankTopK needs a candidate (it takes the maximum logit)
      REQUIRE(index::RerankTopK(codec, &qr[p * g * d], g, d, &cand[p * c], ptrs.data(), used, k,
                                cpu.data(), &scratch) == cpu.size());
    REQUIRE(got_count[p] == cpu.size());
    const std::vector<uint32_t> gpu(ids.begin() + p * k, ids.begin() + p * k + cpu.size());
    CHECK(std::is_sorted(gpu.begin(), gpu.end()));
    for (uint32_t t = uint32_t(cpu.size()); t < k; ++t) CHECK(ids[p * k + t] == 0);
    if (used > 0)
      near_ties += CheckChoice(ReferenceWeights(codec, &qr[p * g * d], g, d, ptrs.data(), used),
                               &cand[p * c], used, k, cpu, gpu);
    // Every row against RecordCodec::Decode of the record the GPU chose, bit for bit.
    CheckDecodedRows(codec, d, cs.bf16_out, keys, values, size_t{p} * k, k, gpu,
                     [&](uint32_t id) { return record(buf.host(), p, id); });
  }
  if (near_ties) MESSAGE(near_ties, " problems chose differently within a 1e-5 near-tie");
}

TEST_CASE("RerankGather chooses as RerankTopK and decodes as RecordCodec::Decode, bit for bit") {
  if (!HaveDevice()) {
    MESSAGE("skipped: no CUDA device");
    return;
  }
  for (uint32_t id = 1; id <= 4; ++id)
    for (uint32_t d : {64u, 128u})
      for (Place place : {Place::kDevice, Place::kMappedHost}) {
        Case cs{id,
                d,
                place,
                0,
                0,
                id % 2 == 0,
                place == Place::kMappedHost && d == 64,
                place == Place::kMappedHost};
        if (id == 2) cs.stride_pad = 8;                      // padded but aligned
        if (id == 4) cs.base_offset = 1, cs.stride_pad = 3;  // byte-aligned records
        RunCase(cs);
      }
  // A prefill block's re-rank: g · 64 queries, in several of the score kernel's query chunks.
  for (uint32_t d : {64u, 128u})
    for (uint32_t g : {37u, 192u}) RunCase(Case{3, d, Place::kMappedHost, 0, 0, false, false, true, g});
  // The most candidates: C = 4,096 split over SmolLM2's 3 query heads unites up to 4,098.
  RunCase(Case{2, 64, Place::kMappedHost, 0, 0, false, false, true, 3, 4098});
  RunCase(Case{1, 128, Place::kDevice, 0, 0, false, false, false, 3, 5120});
}

struct TailCase {
  uint32_t head_dim, samples, recent;
  Place place;
  bool bf16_out, device_counts;  // cold count and position read from device memory
  uint32_t base_offset = 0;      // 1: byte-aligned records
};

// LaunchTailSample against index::TailSample (ids and log weights, bit for bit) and
// RecordCodec::Decode of the drawn records (bit for bit): 2 reps × 3 kv-heads, picked lists of
// 64, 10 and 0 ids, the reps at positions `position` and `position` + 7.
void RunTailCase(const TailCase& cs) {
  INFO("d ", cs.head_dim, ", samples ", cs.samples, ", recent ", cs.recent, ", ",
       PlaceName(cs.place), cs.bf16_out ? ", bf16 out" : "",
       cs.device_counts ? ", device counts" : "", cs.base_offset ? ", byte-aligned" : "");
  RecordCodec codec;
  REQUIRE(RecordCodec::FromId(2, &codec));
  const uint32_t H = 3, reps = 2, P = reps * H, N = 3000, stride_ids = 64, d = cs.head_dim;
  const uint32_t slices = d / 64, m = cs.samples;
  const uint64_t stride = slices * kRecordBytes, seed = 0x6b6976, layer = 5;
  const int64_t position = 123456, step = 7;
  Rng rng{77 + d + m};
  RandomRecords recs(codec, P, N, d, stride, cs.base_offset, cs.place, rng);
  auto record = [&](uint8_t* base, uint32_t p, uint32_t t) { return recs.At(base, p, t); };
  RecordBuffer& buf = recs.buf;
  // Picked ids ascending and distinct; past the count, garbage the kernel must not read.
  const std::vector<uint32_t> counts = {64, 10, 0, 64, 64, 3};
  std::vector<uint32_t> picked(size_t{P} * stride_ids, 0xDEADBEEFu);
  for (uint32_t p = 0; p < P; ++p) {
    std::vector<uint32_t> ids(N);
    std::iota(ids.begin(), ids.end(), 0u);
    for (uint32_t i = 0; i < counts[p]; ++i) std::swap(ids[i], ids[i + rng.Below(N - i)]);
    if (p == 4) std::iota(ids.begin(), ids.begin() + 64, N - 64);  // the 64 most recent
    std::sort(ids.begin(), ids.begin() + counts[p]);
    std::copy(ids.begin(), ids.begin() + counts[p], picked.begin() + size_t{p} * stride_ids);
  }
  std::vector<const uint8_t*> bases(P);
  for (uint32_t p = 0; p < P; ++p) bases[p] = record(buf.device(), p, 0);
  DeviceBuffer<const uint8_t*> d_bases(bases);
  DeviceBuffer<uint32_t> d_picked(picked), d_counts(counts), d_ids(size_t{P} * m), d_out_count(P);
  DeviceBuffer<uint32_t> d_cold(std::vector<uint32_t>{N});
  DeviceBuffer<int64_t> d_position(std::vector<int64_t>{position - 1000});
  DeviceBuffer<float> d_logw(size_t{P} * m);
  const size_t elem = cs.bf16_out ? 2 : 4;
  DeviceBuffer<uint8_t> d_keys(size_t{P} * m * d * elem), d_values(size_t{P} * m * d * elem);
  KIV_CUDA_REQUIRE(cudaMemset(d_keys.get(), 0x7F, d_keys.size()));  // stale rows must be zeroed
  TailSampleParams pr;
  pr.num_problems = P;
  pr.kv_heads = H;
  pr.head_dim = d;
  pr.samples = m;
  pr.recent = cs.recent;
  pr.codec = codec;
  pr.out_dtype = cs.bf16_out ? DType::kBFloat16 : DType::kFloat32;
  pr.record_stride_bytes = stride;
  pr.records = d_bases.get();
  pr.picked = d_picked.get();
  pr.picked_counts = d_counts.get();
  pr.picked_stride = stride_ids;
  pr.cold = cs.device_counts ? 17 : N;  // a stale host value the device count overrides
  pr.cold_device = cs.device_counts ? d_cold.get() : nullptr;
  pr.seed = seed;
  pr.layer = layer;
  pr.position = cs.device_counts ? 1000 : position;
  pr.position_device = cs.device_counts ? d_position.get() : nullptr;
  pr.position_step = step;
  pr.out_ids = d_ids.get();
  pr.out_counts = d_out_count.get();
  pr.out_log_weights = d_logw.get();
  pr.out_keys = d_keys.get();
  pr.out_values = d_values.get();
  REQUIRE(CheckTailSample(pr).empty());
  KIV_CUDA_REQUIRE(cudaError_t(LaunchTailSample(pr, nullptr)));
  KIV_CUDA_REQUIRE(cudaDeviceSynchronize());
  const std::vector<uint32_t> ids = d_ids.Download(), got_count = d_out_count.Download();
  const std::vector<float> logw = d_logw.Download();
  const std::vector<uint8_t> keys = d_keys.Download(), values = d_values.Download();
  for (uint32_t p = 0; p < P; ++p) {
    INFO("problem ", p);
    const uint32_t head = p % H, rep = p / H;
    std::vector<uint32_t> want;
    std::vector<float> want_logw;
    index::TailSample(N, &picked[size_t{p} * stride_ids], counts[p], m, cs.recent,
                      index::TailSampleOffset(seed, layer, head, position + rep * step), &want,
                      &want_logw);
    REQUIRE(got_count[p] == want.size());
    const std::vector<uint32_t> got(ids.begin() + size_t{p} * m,
                                    ids.begin() + size_t{p} * m + want.size());
    CHECK(got == want);
    CHECK(std::memcmp(&logw[size_t{p} * m], want_logw.data(), want.size() * sizeof(float)) == 0);
    for (size_t i = want.size(); i < m; ++i) CHECK(ids[size_t{p} * m + i] == 0);
    CheckDecodedRows(codec, d, cs.bf16_out, keys, values, size_t{p} * m, m, want,
                     [&](uint32_t id) { return record(buf.host(), p, id); });
  }
}

TEST_CASE("TailSample draws as index::TailSample and decodes as RecordCodec::Decode, bit for bit") {
  if (!HaveDevice()) {
    MESSAGE("skipped: no CUDA device");
    return;
  }
  RunTailCase({64, 1024, 0, Place::kMappedHost, false, false});
  RunTailCase({64, 1024, 0, Place::kDevice, false, true});
  RunTailCase({128, 1024, 300, Place::kMappedHost, true, true});
  RunTailCase({64, 256, 5000, Place::kDevice, false, false});  // the recent stratum is all
  RunTailCase({64, 4096, 0, Place::kMappedHost, false, true});  // more than unpicked: all, weight 1
  RunTailCase({128, 1, 0, Place::kDevice, false, false, 1});
}

TEST_CASE("TailSample refuses unsupported shapes, naming the value") {
  TailSampleParams pr;
  pr.num_problems = 1;
  pr.picked_stride = 64;
  pr.samples = 0;
  CHECK(CheckTailSample(pr).find("samples") != std::string::npos);
  pr.samples = kTailMaxSamples + 1;
  CHECK(CheckTailSample(pr).find("4096") != std::string::npos);
  pr.samples = 64;
  pr.picked_stride = 2000;
  CHECK(CheckTailSample(pr).find("picked_stride") != std::string::npos);
  pr.picked_stride = 64;
  pr.head_dim = 96;
  CHECK(CheckTailSample(pr).find("head_dim") != std::string::npos);
  pr.head_dim = 64;
  CHECK(CheckTailSample(pr).find("null") != std::string::npos);
  pr.num_problems = 0;
  CHECK(CheckTailSample(pr).empty());
}

TEST_CASE("RerankGather breaks equal weights toward the lower candidate index") {
  if (!HaveDevice()) {
    MESSAGE("skipped: no CUDA device");
    return;
  }
  // Every token has the same record, so every weight is equal and RerankTopK takes the first k
  // candidates (by position in the list, not by token id).
  const RecordCodec codec{6, 6, true};
  const uint32_t N = 800, c = 300, k = 64, g = 2, d = 128;
  RecordBuffer buf(N * 2 * kRecordBytes, Place::kMappedHost);
  Rng rng{7};
  float key[64], value[64];
  for (int e = 0; e < 64; ++e) key[e] = rng.Uniform(), value[e] = rng.Uniform();
  codec.Encode(key, value, buf.host());
  for (uint32_t r = 1; r < 2 * N; ++r)
    std::memcpy(buf.host() + r * kRecordBytes, buf.host(), kRecordBytes);
  std::vector<uint32_t> cand(c);
  for (uint32_t i = 0; i < c; ++i) cand[i] = (i * 577 + 123) % N;  // distinct, scrambled
  std::vector<float> q(g * d);
  for (float& x : q) x = rng.Uniform();
  std::vector<float> qr(q.size());
  for (uint32_t v = 0; v < g * 2; ++v) codec.RotateQuery(&q[v * 64], &qr[v * 64]);
  std::vector<const uint8_t*> ptrs(c);
  for (uint32_t i = 0; i < c; ++i) ptrs[i] = buf.host() + cand[i] * 2 * kRecordBytes;
  std::vector<uint32_t> cpu(k);
  std::vector<float> scratch;
  REQUIRE(index::RerankTopK(codec, qr.data(), g, d, cand.data(), ptrs.data(), c, k, cpu.data(),
                            &scratch) == k);
  std::vector<uint32_t> expected(cand.begin(), cand.begin() + k);
  std::sort(expected.begin(), expected.end());
  REQUIRE(cpu == expected);

  DeviceBuffer<const uint8_t*> d_bases(std::vector<const uint8_t*>{buf.device()});
  DeviceBuffer<uint32_t> d_cand(cand), d_ids(k), d_count(1);
  DeviceBuffer<float> d_q(q), d_keys(k * d), d_values(k * d);
  RerankGatherParams pr;
  pr.num_problems = 1;
  pr.head_dim = d;
  pr.group = g;
  pr.num_candidates = c;
  pr.top_k = k;
  pr.codec = codec;
  pr.record_stride_bytes = 2 * kRecordBytes;
  pr.records = d_bases.get();
  pr.candidates = d_cand.get();
  pr.queries = d_q.get();
  pr.out_ids = d_ids.get();
  pr.out_counts = d_count.get();
  pr.out_keys = d_keys.get();
  pr.out_values = d_values.get();
  DeviceBuffer<uint8_t> ws(RerankGatherWorkspaceBytes(pr));
  pr.workspace = ws.get();
  pr.workspace_bytes = ws.size();
  KIV_CUDA_REQUIRE(cudaError_t(LaunchRerankGather(pr, nullptr)));
  KIV_CUDA_REQUIRE(cudaDeviceSynchronize());
  CHECK(d_count.Download()[0] == k);
  CHECK(d_ids.Download() == expected);
}

TEST_CASE("RerankGather refuses unsupported shapes, naming the value") {
  RerankGatherParams pr;
  pr.num_problems = 1;
  pr.top_k = 8;
  pr.head_dim = 96;
  CHECK(CheckRerankGather(pr).find("head_dim must be 64 or 128 (got 96)") != std::string::npos);
  pr.head_dim = 64;
  pr.num_candidates = 6000;
  CHECK(CheckRerankGather(pr).find("at most 5120 (got 6000)") != std::string::npos);
  pr.num_candidates = 10;
  pr.codec = RecordCodec{4, 7, true};
  CHECK(CheckRerankGather(pr).find("must be 12 (got 11)") != std::string::npos);
  pr.codec = RecordCodec{};
  pr.record_stride_bytes = 100;
  CHECK(CheckRerankGather(pr).find("record_stride_bytes") != std::string::npos);
  pr.record_stride_bytes = 104;
  CHECK(CheckRerankGather(pr).find("pointer is null") != std::string::npos);
}

// Reports only (no pass/fail on time): re-rank + gather of C = 1024 candidates to k = 64 for the
// 3 kv-heads of each of 30 layers (SmolLM2-135M's shape), records read zero-copy from 256 MB of
// registered host memory, one launch per layer; the same from device memory for comparison.
TEST_CASE("RerankGather timing (reported, not asserted)") {
  if (!HaveDevice()) {
    MESSAGE("skipped: no CUDA device");
    return;
  }
  const uint32_t L = 30, H = 3, g = 3, c = 1024, k = 64, d = 64, iterations = 10;
  // KIV_GATHER_TIMING_MB=10240: records spread over 10 GB (SmolLM2's at 1M tokens) in every
  // placement, to see whether the GPU's reads of host memory slow with distance (RerankScore took
  // 12 us a layer at 4K and 28 at 1M, docs/decode-step-inventory.md). Default: 256 MB.
  const char* mb = std::getenv("KIV_GATHER_TIMING_MB");
  const size_t bytes = size_t{mb ? std::strtoull(mb, nullptr, 10) : 256} << 20;
  REQUIRE(bytes > 0);
  const uint32_t N = uint32_t(bytes / (size_t{L} * H * kRecordBytes));  // tokens per (layer, head)
  const RecordCodec codec{6, 6, true};
  std::vector<float> q(L * H * g * d);
  Rng rng{11};
  for (float& x : q) x = rng.Uniform();
  std::vector<uint32_t> cand(size_t{iterations + 1} * L * H * c);
  for (uint32_t& id : cand) id = rng.Below(N);
  DeviceBuffer<uint32_t> d_cand(cand), d_ids(H * k), d_count(H);
  DeviceBuffer<float> d_q(q), d_keys(H * k * d), d_values(H * k * d);
  DeviceBuffer<uint8_t> flush(size_t{128} << 20);  // evicts L2 between timed iterations
  std::vector<Place> places = {Place::kMappedHost, Place::kDevice};
  if (mb) places = {Place::kMappedHost, Place::kMappedHostHuge, Place::kHostAlloc, Place::kDevice};
  const std::string size_name = std::to_string(bytes >> 20) + " MB";
  for (Place place : places) {
    RecordBuffer buf(bytes, place);
    // Random codes; fp16 scales and minima that decode to ordinary numbers. The first 64K
    // records, then copies of them.
    const size_t records = size_t{L} * H * N, drawn = std::min<size_t>(records, 65536);
    for (size_t r = 0; r < drawn; ++r) {
      uint8_t* rec = buf.host() + r * kRecordBytes;
      for (uint32_t w = 0; w < kRecordBytes / 8; ++w) {
        const uint64_t x = rng.Next();
        std::memcpy(rec + 8 * w, &x, 8);
      }
      const uint8_t grid[4] = {0x00, 0x2C, 0x00, 0xC0};  // scale 1/16, min −2
      std::memcpy(rec + 48, grid, 4);
      std::memcpy(rec + 100, grid, 4);
    }
    for (size_t r = drawn; r < records; r += drawn)
      std::memcpy(buf.host() + r * kRecordBytes, buf.host(),
                  std::min(drawn, records - r) * kRecordBytes);
    buf.Publish();
    std::vector<const uint8_t*> bases(L * H);
    for (uint32_t i = 0; i < L * H; ++i) bases[i] = buf.device() + size_t{i} * N * kRecordBytes;
    DeviceBuffer<const uint8_t*> d_bases(bases);
    RerankGatherParams pr;
    pr.num_problems = H;
    pr.head_dim = d;
    pr.group = g;
    pr.num_candidates = c;
    pr.top_k = k;
    pr.codec = codec;
    pr.out_ids = d_ids.get();
    pr.out_counts = d_count.get();
    pr.out_keys = d_keys.get();
    pr.out_values = d_values.get();
    DeviceBuffer<uint8_t> ws(RerankGatherWorkspaceBytes(pr));
    pr.workspace = ws.get();
    pr.workspace_bytes = ws.size();
    // Iteration it, layer l: its own candidates (so no run reads what an earlier one cached).
    auto enqueue = [&](uint32_t it, cudaStream_t stream) {
      for (uint32_t l = 0; l < L; ++l) {
        pr.records = d_bases.get() + l * H;
        pr.candidates = d_cand.get() + (size_t{it} * L + l) * H * c;
        pr.queries = d_q.get() + size_t{l} * H * g * d;
        KIV_CUDA_REQUIRE(cudaError_t(LaunchRerankGather(pr, stream)));
      }
    };
    // Launched one by one (host launch cost included), and as one CUDA graph per run.
    cudaStream_t stream;
    KIV_CUDA_REQUIRE(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    std::vector<cudaGraphExec_t> graphs(iterations + 1);
    for (uint32_t it = 0; it <= iterations; ++it) {
      cudaGraph_t graph;
      KIV_CUDA_REQUIRE(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
      enqueue(it, stream);
      KIV_CUDA_REQUIRE(cudaStreamEndCapture(stream, &graph));
      KIV_CUDA_REQUIRE(cudaGraphInstantiate(&graphs[it], graph, 0));
      KIV_CUDA_REQUIRE(cudaGraphDestroy(graph));
    }
    cudaEvent_t start, stop;
    KIV_CUDA_REQUIRE(cudaEventCreate(&start));
    KIV_CUDA_REQUIRE(cudaEventCreate(&stop));
    for (bool use_graph : {false, true}) {
      float total_ms = 0, best_ms = 1e30f;
      for (uint32_t it = 0; it <= iterations; ++it) {  // iteration 0 warms up
        KIV_CUDA_REQUIRE(cudaMemsetAsync(flush.get(), int(it), flush.size(), stream));
        KIV_CUDA_REQUIRE(cudaEventRecord(start, stream));
        if (use_graph)
          KIV_CUDA_REQUIRE(cudaGraphLaunch(graphs[it], stream));
        else
          enqueue(it, stream);
        KIV_CUDA_REQUIRE(cudaEventRecord(stop, stream));
        KIV_CUDA_REQUIRE(cudaEventSynchronize(stop));
        float ms = 0;
        KIV_CUDA_REQUIRE(cudaEventElapsedTime(&ms, start, stop));
        if (it > 0) total_ms += ms, best_ms = std::min(best_ms, ms);
      }
      MESSAGE("rerank+gather, C=1024 -> k=64, 3 kv-heads, g=3, d=64, records in ",
              std::string(PlaceName(place)), " (", size_name, "), ",
              std::string(use_graph ? "one graph of 30 layers" : "30 launches"), ": ",
              1000.0 * total_ms / iterations / L, " us/layer mean, ", 1000.0 * best_ms / L,
              " us/layer best of ", iterations);
    }
    for (cudaGraphExec_t exec : graphs) cudaGraphExecDestroy(exec);
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    cudaStreamDestroy(stream);
  }
}

}  // namespace
}  // namespace kiv::kernels::test
