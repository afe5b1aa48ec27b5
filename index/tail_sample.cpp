#include "index/tail_sample.h"

#include <algorithm>
#include <cmath>

#include "index/signature.h"

namespace kiv::index {

double TailSampleOffset(uint64_t seed, int64_t layer, uint32_t head, int64_t position) {
  uint64_t state = seed ^ (uint64_t(layer) << 48) ^ (uint64_t{head} << 40) ^ uint64_t(position);
  return double(SplitMix64(&state) >> 11) * 0x1.0p-53;
}

void TailSample(uint64_t cold, const uint32_t* picked, size_t picked_count, uint32_t samples,
                uint32_t recent_size, double u, std::vector<uint32_t>* tokens,
                std::vector<float>* log_weights) {
  const uint64_t rest = cold - picked_count;
  if (rest == 0 || samples == 0) return;
  // Strata of unpicked ranks: [0, older) and the most recent [older, rest).
  const uint64_t recent = std::min<uint64_t>(recent_size, rest), older = rest - recent;
  const uint64_t recent_samples =
      recent == 0 ? 0 : std::min<uint64_t>(recent, rest <= samples ? recent : samples / 2);
  const uint64_t older_samples = std::min<uint64_t>(older, samples - recent_samples);
  size_t j = 0;  // picked tokens at or below the current one (ranks only grow)
  auto stratum = [&](uint64_t begin, uint64_t size, uint64_t count) {
    if (size == 0 || count == 0) return;
    const double weight = double(size) / double(count);
    const float log_weight = float(std::log(weight));
    for (uint64_t i = 0; i < count; ++i) {
      const uint64_t rank =
          begin + (count == size ? i : std::min(size - 1, uint64_t((double(i) + u) * weight)));
      uint64_t token = rank + j;
      while (j < picked_count && picked[j] <= token) token = rank + ++j;
      tokens->push_back(uint32_t(token));
      log_weights->push_back(log_weight);
    }
  };
  stratum(0, older, older_samples);
  stratum(older, recent, recent_samples);
}

}  // namespace kiv::index
