// The tail sample: a few of the cold tokens that retrieval did not pick, drawn so that their
// attention, each weighted as the unpicked tokens it stands for, estimates the attention all the
// unpicked tokens hold (runtime/cache_options.h, tail_samples and tail_recent). A systematic
// sample in token order (one random offset, then evenly spaced), seeded by (layer, kv-head,
// position), so a resumed session draws the same. The CPU's rule, which the GPU's
// (kernels/gather.h, LaunchTailSample) follows bit for bit.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace kiv::index {

// The sample's offset in [0, 1) for (layer, kv-head, position) under a session's projection seed:
// the top 53 bits of one SplitMix64 step.
double TailSampleOffset(uint64_t seed, int64_t layer, uint32_t head, int64_t position);

// Of `cold` tokens, those not in `picked` (ascending, distinct, each < cold) are the unpicked.
// Draws at most `samples` of them with offset u (TailSampleOffset) and appends their ids
// (ascending) to *tokens and each one's log weight, log(unpicked it stands for), to *log_weights.
// With recent = R > 0 the R most recent unpicked tokens are a stratum of their own with half the
// samples (all of them when they fit), the older ones the rest. When the unpicked tokens number
// at most `samples`, every one is drawn with weight 1 (log weight 0).
void TailSample(uint64_t cold, const uint32_t* picked, size_t picked_count, uint32_t samples,
                uint32_t recent, double u, std::vector<uint32_t>* tokens,
                std::vector<float>* log_weights);

}  // namespace kiv::index
