#include "index/tail_sample.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <set>
#include <vector>

using namespace kiv::index;

namespace {

struct Drawn {
  std::vector<uint32_t> tokens;
  std::vector<float> log_weights;
};

Drawn Draw(uint64_t cold, const std::vector<uint32_t>& picked, uint32_t samples, uint32_t recent,
           double u) {
  Drawn d;
  TailSample(cold, picked.data(), picked.size(), samples, recent, u, &d.tokens, &d.log_weights);
  return d;
}

// Every `stride`-th token of [0, cold), from `first`: a picked list.
std::vector<uint32_t> Picked(uint64_t cold, uint32_t first, uint32_t stride) {
  std::vector<uint32_t> p;
  for (uint64_t t = first; t < cold; t += stride) p.push_back(uint32_t(t));
  return p;
}

}  // namespace

TEST_CASE("TailSample draws only unpicked tokens, ascending, each weighted as those it stands for") {
  const uint64_t cold = 10000;
  const std::vector<uint32_t> picked = Picked(cold, 5, 97);  // 104 tokens
  const std::set<uint32_t> is_picked(picked.begin(), picked.end());
  for (const double u : {0.0, 0.37, 0.999999}) {
    CAPTURE(u);
    const Drawn d = Draw(cold, picked, 1024, 0, u);
    REQUIRE(d.tokens.size() == 1024);
    CHECK(std::is_sorted(d.tokens.begin(), d.tokens.end()));
    CHECK(std::adjacent_find(d.tokens.begin(), d.tokens.end()) == d.tokens.end());
    for (uint32_t t : d.tokens) {
      CHECK(t < cold);
      CHECK(is_picked.count(t) == 0);
    }
    // One stratum: every sample weighs rest / m, so the weights sum to the unpicked count.
    const double rest = double(cold - picked.size());
    for (float w : d.log_weights) CHECK(w == float(std::log(rest / 1024)));
    // Systematic: sample i is the unpicked token of rank ⌊(i + u) · rest / m⌋.
    std::vector<uint32_t> unpicked;
    for (uint32_t t = 0; t < cold; ++t)
      if (!is_picked.count(t)) unpicked.push_back(t);
    for (uint32_t i = 0; i < 1024; i += 101)
      CHECK(d.tokens[i] == unpicked[size_t((i + u) * rest / 1024)]);
  }
  // Another offset draws other tokens; the same offset the same ones.
  CHECK(Draw(cold, picked, 1024, 0, 0.1).tokens != Draw(cold, picked, 1024, 0, 0.6).tokens);
  CHECK(Draw(cold, picked, 1024, 0, 0.6).tokens == Draw(cold, picked, 1024, 0, 0.6).tokens);
}

TEST_CASE("TailSample takes every unpicked token when they fit, and nothing when none is left") {
  const std::vector<uint32_t> picked = {0, 3, 4, 9};
  const Drawn all = Draw(12, picked, 8, 0, 0.5);
  CHECK(all.tokens == std::vector<uint32_t>{1, 2, 5, 6, 7, 8, 10, 11});
  for (float w : all.log_weights) CHECK(w == 0.0f);
  CHECK(Draw(4, {0, 1, 2, 3}, 8, 0, 0.5).tokens.empty());
  CHECK(Draw(100, {}, 0, 0, 0.5).tokens.empty());
  const Drawn none_picked = Draw(5, {}, 64, 0, 0.5);
  CHECK(none_picked.tokens == std::vector<uint32_t>{0, 1, 2, 3, 4});
}

TEST_CASE("TailSample's recent stratum: half the samples from the most recent unpicked tokens") {
  const uint64_t cold = 50000;
  const std::vector<uint32_t> picked = Picked(cold, 11, 501);
  const uint64_t rest = cold - picked.size();
  const Drawn d = Draw(cold, picked, 256, 1000, 0.25);
  REQUIRE(d.tokens.size() == 256);
  CHECK(std::is_sorted(d.tokens.begin(), d.tokens.end()));
  // The 1,000 most recent unpicked tokens begin at unpicked rank rest − 1000.
  std::vector<uint32_t> unpicked;
  for (uint32_t t = 0, j = 0; t < cold; ++t) {
    if (j < picked.size() && picked[j] == t) {
      ++j;
      continue;
    }
    unpicked.push_back(t);
  }
  const uint32_t recent_first = unpicked[rest - 1000];
  const auto recent_begin = std::lower_bound(d.tokens.begin(), d.tokens.end(), recent_first);
  CHECK(recent_begin - d.tokens.begin() == 128);
  CHECK(d.log_weights.front() == float(std::log(double(rest - 1000) / 128)));
  CHECK(d.log_weights.back() == float(std::log(1000.0 / 128)));
  // A recent stratum that fits entirely is taken whole, at weight 1.
  const Drawn small = Draw(cold, picked, 256, 100, 0.25);
  CHECK(small.tokens.size() == 256);
  CHECK(small.log_weights.back() == 0.0f);
  CHECK(small.tokens.back() == unpicked.back());
}

TEST_CASE("TailSampleOffset: in [0, 1), fixed by seed, layer, head and position") {
  const double u = TailSampleOffset(7, 3, 1, 12345);
  CHECK(u >= 0.0);
  CHECK(u < 1.0);
  CHECK(TailSampleOffset(7, 3, 1, 12345) == u);
  CHECK(TailSampleOffset(7, 3, 1, 12346) != u);
  CHECK(TailSampleOffset(7, 3, 2, 12345) != u);
  CHECK(TailSampleOffset(7, 4, 1, 12345) != u);
  CHECK(TailSampleOffset(8, 3, 1, 12345) != u);
}
