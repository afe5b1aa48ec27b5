#include "index/rerank.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "index/signature.h"

using namespace kiv::index;

TEST_CASE("RerankTopK equals a brute-force ranking of the decoded keys") {
  uint64_t state = 99;
  auto uniform = [&] { return static_cast<float>(SplitMix64(&state) >> 40) / float(1 << 24) - 0.5f; };
  for (const RecordCodec codec : {RecordCodec{4, 8, false}, RecordCodec{4, 8, true}}) {
    for (uint32_t head_dim : {64u, 128u}) {
      const uint32_t g = 3, slices = head_dim / 64;
      const size_t c = 300, k = 40;
      std::vector<uint8_t> recs(c * slices * kRecordBytes);
      std::vector<const uint8_t*> ptrs(c);
      std::vector<uint32_t> cand(c);
      for (size_t i = 0; i < c; ++i) {
        cand[i] = uint32_t(7 * i + 3);
        ptrs[i] = recs.data() + i * slices * kRecordBytes;
        for (uint32_t s = 0; s < slices; ++s) {
          float key[64], val[64];
          for (int e = 0; e < 64; ++e) key[e] = 8 * uniform(), val[e] = uniform();
          codec.Encode(key, val, recs.data() + (i * slices + s) * kRecordBytes);
        }
      }
      std::vector<float> q(g * head_dim), qr(g * head_dim);
      for (auto& x : q) x = 4 * uniform();
      for (uint32_t j = 0; j < g; ++j)
        for (uint32_t s = 0; s < slices; ++s)
          codec.RotateQuery(&q[j * head_dim + s * 64], &qr[j * head_dim + s * 64]);
      std::vector<uint32_t> got(k);
      std::vector<float> scratch;
      REQUIRE(RerankTopK(codec, qr.data(), g, head_dim, cand.data(), ptrs.data(), c, k, got.data(), &scratch) == k);

      // Brute force in double with fully decoded (unrotated) keys and unrotated queries.
      std::vector<double> weight(c, 0.0);
      for (uint32_t j = 0; j < g; ++j) {
        std::vector<double> logit(c, 0.0);
        for (size_t i = 0; i < c; ++i)
          for (uint32_t s = 0; s < slices; ++s) {
            float key[64], val[64];
            codec.Decode(ptrs[i] + s * kRecordBytes, key, val);
            for (int e = 0; e < 64; ++e) logit[i] += double(q[j * head_dim + s * 64 + e]) * key[e];
          }
        const double m = *std::max_element(logit.begin(), logit.end());
        double sum = 0;
        for (double& l : logit) sum += std::exp((l - m) / std::sqrt(double(head_dim)));
        for (size_t i = 0; i < c; ++i) weight[i] += std::exp((logit[i] - m) / std::sqrt(double(head_dim))) / sum;
      }
      std::vector<uint32_t> order(c);
      std::iota(order.begin(), order.end(), 0u);
      std::sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) { return weight[a] > weight[b]; });
      // Float and double may swap two near-equal weights at the boundary; everything clearly
      // inside the top k must be picked and everything clearly outside must not.
      const double edge = weight[order[k - 1]];
      for (size_t i = 0; i < c; ++i) {
        const bool picked = std::binary_search(got.begin(), got.end(), cand[i]);
        if (weight[i] > edge * (1 + 1e-4)) CHECK(picked);
        if (weight[i] < edge * (1 - 1e-4)) CHECK_FALSE(picked);
      }
    }
  }
}

TEST_CASE("TopKIndices breaks ties by the lower index") {
  const float w[6] = {1, 3, 3, 2, 3, 0};
  uint32_t out[3];
  REQUIRE(TopKIndices(w, 6, 3, out) == 3);
  CHECK(out[0] == 1);
  CHECK(out[1] == 2);
  CHECK(out[2] == 4);
  REQUIRE(TopKIndices(w, 6, 2, out) == 2);
  CHECK(out[0] == 1);
  CHECK(out[1] == 2);
}
