#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <vector>

#include "index/signature.h"

namespace kiv {

int32_t Sampler::Next(const float* logits, size_t vocab) {
  if (options_.temperature <= 0.0f) {
    size_t best = 0;
    for (size_t i = 1; i < vocab; ++i)
      if (logits[i] > logits[best]) best = i;
    return int32_t(best);
  }
  // Softmax at the temperature, in double so the order of summation does not move a draw.
  const float top = *std::max_element(logits, logits + vocab);
  std::vector<double> p(vocab);
  double z = 0;
  for (size_t i = 0; i < vocab; ++i) z += p[i] = std::exp(double(logits[i] - top) / options_.temperature);
  std::vector<uint32_t> order(vocab);
  std::iota(order.begin(), order.end(), 0u);
  std::sort(order.begin(), order.end(),
            [&](uint32_t a, uint32_t b) { return p[a] > p[b] || (p[a] == p[b] && a < b); });
  // The nucleus: the most probable tokens until their mass reaches top_p.
  size_t keep = 0;
  double mass = 0;
  while (keep < vocab && (keep == 0 || mass < options_.top_p * z)) mass += p[order[keep++]];
  // A uniform draw in [0, mass) from the top 53 bits of the generator.
  const double u = double(index::SplitMix64(&state_) >> 11) / double(1ull << 53) * mass;
  double acc = 0;
  for (size_t i = 0; i < keep; ++i) {
    acc += p[order[i]];
    if (u < acc) return int32_t(order[i]);
  }
  return int32_t(order[keep - 1]);
}

std::string Sampler::Describe() const {
  if (options_.temperature <= 0.0f) return "greedy";
  char buf[96];
  std::snprintf(buf, sizeof buf, "temperature %.2f, top-p %.2f, seed %llu", options_.temperature,
                options_.top_p, static_cast<unsigned long long>(options_.seed));
  return buf;
}

}  // namespace kiv
