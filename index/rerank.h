// Re-ranking: the C candidates of the Hamming scan, scored with their dequantized keys, give the
// top k a GQA group attends to.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "index/record.h"

namespace kiv::index {

// Group weight of a candidate: Σ_j softmax_j(q_j · k / √d) with each head's softmax taken over
// the candidates. It is the share of the group's attention (restricted to the candidates) that
// the token holds, so the top k by it hold the most of that attention.
//
// queries: [g][head_dim], already through codec.RotateQuery slice by slice (head_dim = 64 · s);
// records[i]: the s · 104 bytes of candidates[i]. Writes min(k, c) candidate token ids in
// ascending order to `out`, returns how many. `scores` is scratch.
size_t RerankTopK(const RecordCodec& codec, const float* queries, uint32_t g, uint32_t head_dim,
                  const uint32_t* candidates, const uint8_t* const* records, size_t c, size_t k,
                  uint32_t* out, std::vector<float>* scratch);

// The k of `weights[0..n)` that are largest, as indices in ascending order; ties go to the
// lower index. Shared by re-ranking and by the exact top-k of the measurements.
size_t TopKIndices(const float* weights, size_t n, size_t k, uint32_t* out);

}  // namespace kiv::index
