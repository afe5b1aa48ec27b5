#include "runtime/sampler.h"

#include <doctest/doctest.h>

#include <vector>

using namespace kiv;

TEST_CASE("greedy takes the largest logit, ties to the lower id") {
  Sampler s({});
  const float logits[5] = {1, 4, 2, 4, 0};
  CHECK(s.Next(logits, 5) == 1);
}

TEST_CASE("sampling is reproducible from the seed and from a saved state") {
  std::vector<float> logits(100);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = float(i % 7) * 0.5f;
  Sampler a({0.8f, 0.9f, 42}), b({0.8f, 0.9f, 42});
  std::vector<int32_t> xs, ys;
  for (int i = 0; i < 50; ++i) xs.push_back(a.Next(logits.data(), logits.size()));
  for (int i = 0; i < 20; ++i) ys.push_back(b.Next(logits.data(), logits.size()));
  Sampler c({0.8f, 0.9f, 42});
  c.set_state(b.state());  // a resumed session
  for (int i = 20; i < 50; ++i) ys.push_back(c.Next(logits.data(), logits.size()));
  CHECK(xs == ys);
  Sampler other({0.8f, 0.9f, 43});
  std::vector<int32_t> zs;
  for (int i = 0; i < 50; ++i) zs.push_back(other.Next(logits.data(), logits.size()));
  CHECK(zs != xs);
}

TEST_CASE("top-p keeps only the nucleus") {
  // Token 0 holds almost all the probability: with top-p 0.5 nothing else can be drawn.
  std::vector<float> logits = {10, 0, 0, 0, 0};
  Sampler s({1.0f, 0.5f, 7});
  for (int i = 0; i < 200; ++i) CHECK(s.Next(logits.data(), logits.size()) == 0);
  // With top-p 1 and a flat distribution every token shows up.
  std::vector<float> flat(5, 0.0f);
  Sampler t({1.0f, 1.0f, 7});
  std::vector<int> seen(5, 0);
  for (int i = 0; i < 500; ++i) ++seen[t.Next(flat.data(), flat.size())];
  for (int n : seen) CHECK(n > 50);
}
