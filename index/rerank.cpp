#include "index/rerank.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <numeric>

namespace kiv::index {

size_t TopKIndices(const float* weights, size_t n, size_t k, uint32_t* out) {
  k = std::min(k, n);
  std::vector<uint32_t> order(n);
  std::iota(order.begin(), order.end(), 0u);
  auto better = [&](uint32_t a, uint32_t b) {
    return weights[a] > weights[b] || (weights[a] == weights[b] && a < b);
  };
  std::nth_element(order.begin(), order.begin() + static_cast<ptrdiff_t>(k), order.end(), better);
  std::sort(order.begin(), order.begin() + static_cast<ptrdiff_t>(k));
  std::copy(order.begin(), order.begin() + static_cast<ptrdiff_t>(k), out);
  return k;
}

size_t RerankTopK(const RecordCodec& codec, const float* queries, uint32_t g, uint32_t head_dim,
                  const uint32_t* candidates, const uint8_t* const* records, size_t c, size_t k,
                  uint32_t* out, std::vector<float>* scratch) {
  assert(head_dim % kRecordDim == 0);
  const uint32_t slices = head_dim / kRecordDim;
  const float inv_sqrt_d = 1.0f / std::sqrt(static_cast<float>(head_dim));
  scratch->assign(size_t{g} * c + c, 0.0f);
  float* logits = scratch->data();        // [g][c]
  float* weight = logits + size_t{g} * c;  // [c]
  float key[kRecordDim];
  for (size_t i = 0; i < c; ++i) {
    for (uint32_t s = 0; s < slices; ++s) {
      codec.DecodeStoredKey(records[i] + size_t{s} * kRecordBytes, key);
      for (uint32_t j = 0; j < g; ++j) {
        const float* q = queries + size_t{j} * head_dim + size_t{s} * kRecordDim;
        float dot = 0.0f;
        for (uint32_t e = 0; e < kRecordDim; ++e) dot += q[e] * key[e];
        logits[size_t{j} * c + i] += dot * inv_sqrt_d;
      }
    }
  }
  for (uint32_t j = 0; j < g; ++j) {
    float* row = logits + size_t{j} * c;
    const float m = *std::max_element(row, row + c);
    double sum = 0.0;
    for (size_t i = 0; i < c; ++i) sum += std::exp(static_cast<double>(row[i] - m));
    for (size_t i = 0; i < c; ++i)
      weight[i] += static_cast<float>(std::exp(static_cast<double>(row[i] - m)) / sum);
  }
  std::vector<uint32_t> picked(std::min(k, c));
  const size_t m = TopKIndices(weight, c, k, picked.data());
  for (size_t i = 0; i < m; ++i) out[i] = candidates[picked[i]];
  std::sort(out, out + m);
  return m;
}

}  // namespace kiv::index
