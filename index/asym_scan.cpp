#include "index/asym_scan.h"

#include <vector>

#include "index/rerank.h"

namespace kiv::index {

void BuildGroupTable(const SignatureProjection& p, const float* queries, uint32_t g, float* table) {
  const uint32_t bits = p.bits(), dim = p.dim();
  std::vector<float> proj(bits, 0.0f);  // Σ_j r_i · q_j
  for (uint32_t i = 0; i < bits; ++i) {
    const float* row = p.matrix() + size_t{i} * dim;
    for (uint32_t j = 0; j < g; ++j) {
      float dot = 0.0f;
      for (uint32_t e = 0; e < dim; ++e) dot += row[e] * queries[size_t{j} * dim + e];
      proj[i] += dot;
    }
  }
  for (uint32_t byte = 0; byte < bits / 8; ++byte) {
    float* t = table + size_t{byte} * 256;
    for (uint32_t v = 0; v < 256; ++v) {
      float s = 0.0f;
      for (uint32_t b = 0; b < 8; ++b) s += (v >> b & 1) ? proj[byte * 8 + b] : -proj[byte * 8 + b];
      t[v] = s;
    }
  }
}

void AsymmetricScan(const uint64_t* sigs, const float* norms, size_t n, uint32_t words,
                    const float* table, float* scores) {
  const uint32_t bytes = words * 8;
  for (size_t t = 0; t < n; ++t) {
    const uint8_t* s = reinterpret_cast<const uint8_t*>(sigs + t * words);  // little-endian words
    float sum = 0.0f;
    for (uint32_t b = 0; b < bytes; ++b) sum += table[size_t{b} * 256 + s[b]];
    scores[t] = norms ? norms[t] * sum : sum;
  }
}

size_t SelectLargest(const float* scores, size_t n, size_t c, uint32_t* out) {
  return TopKIndices(scores, n, c, out);
}

}  // namespace kiv::index
