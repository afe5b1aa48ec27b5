#include "index/hamming.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <cstdio>
#include <numeric>
#include <vector>

#include "index/signature.h"

using namespace kiv::index;

TEST_CASE("the dispatched scan equals the scalar reference") {
  std::printf("hamming: scan kernel on this CPU: %s\n", ScanKernelName());
  uint64_t state = 21;
  for (uint32_t words : {1u, 2u, 3u, 4u, 8u}) {
    for (uint32_t g : {1u, 3u, 4u, 9u, 31u}) {
      for (size_t n : {size_t{0}, size_t{1}, size_t{7}, size_t{1000}}) {
        std::vector<uint64_t> keys(n * words), queries(g * words);
        for (auto& k : keys) k = SplitMix64(&state);
        for (auto& q : queries) q = SplitMix64(&state);
        std::vector<uint16_t> fast(n), ref(n);
        GroupHamming(keys.data(), n, words, queries.data(), g, fast.data());
        GroupHammingScalar(keys.data(), n, words, queries.data(), g, ref.data());
        CHECK(fast == ref);
      }
    }
  }
}

TEST_CASE("SelectSmallest equals a stable sort by (distance, index)") {
  uint64_t state = 5;
  for (int trial = 0; trial < 300; ++trial) {
    const size_t n = 1 + SplitMix64(&state) % 3000;
    const uint32_t max_d = 1 + uint32_t(SplitMix64(&state) % (trial % 2 ? 10 : 400));  // many ties
    std::vector<uint16_t> dist(n);
    for (auto& d : dist) d = uint16_t(SplitMix64(&state) % (max_d + 1));
    const size_t c = SplitMix64(&state) % (n + 5);
    std::vector<uint32_t> got(std::min(c, n));
    const size_t m = SelectSmallest(dist.data(), n, max_d, c, got.data());
    REQUIRE(m == std::min(c, n));
    std::vector<uint32_t> order(n);
    std::iota(order.begin(), order.end(), 0u);
    std::stable_sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) { return dist[a] < dist[b]; });
    std::vector<uint32_t> want(order.begin(), order.begin() + static_cast<ptrdiff_t>(m));
    std::sort(want.begin(), want.end());
    CHECK(got == want);
  }
}
