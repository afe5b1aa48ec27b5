#include "index/asym_scan.h"

#include <cmath>
#include <vector>

#include "index/rerank.h"

namespace kiv::index {

float QuantizeProjectedQuery(const SignatureProjection& p, const float* queries, uint32_t g,
                             int32_t* qq) {
  const uint32_t bits = p.bits(), dim = p.dim();
  std::vector<float> proj(bits, 0.0f);  // Σ_j r_i · q_j
  float m = 0.0f;
  bool finite = true;
  for (uint32_t i = 0; i < bits; ++i) {
    const float* row = p.matrix() + size_t{i} * dim;
    for (uint32_t j = 0; j < g; ++j) {
      float dot = 0.0f;
      for (uint32_t e = 0; e < dim; ++e) dot += row[e] * queries[size_t{j} * dim + e];
      proj[i] += dot;
    }
    m = std::max(m, std::fabs(proj[i]));
    finite = finite && std::isfinite(proj[i]);
  }
  if (!finite || m == 0.0f) {  // a zero (or unusable) query ranks nothing
    for (uint32_t i = 0; i < bits; ++i) qq[i] = 0;
    return 0.0f;
  }
  const float r = float(kScanQueryMax) / m;
  for (uint32_t i = 0; i < bits; ++i) {
    const float x = proj[i] * r;  // |x| ≤ kScanQueryMax · (1 + 2^-23): rounds to ≤ kScanQueryMax
    qq[i] = static_cast<int32_t>(std::nearbyint(x));
  }
  return m / float(kScanQueryMax);
}

void BuildGroupTable(const SignatureProjection& p, const float* queries, uint32_t g,
                     ScanTable* table) {
  const uint32_t bits = p.bits();
  std::vector<int32_t> qq(bits);
  table->scale = QuantizeProjectedQuery(p, queries, g, qq.data());
  table->entries.resize(size_t{bits / 8} * 256);
  for (uint32_t byte = 0; byte < bits / 8; ++byte) {
    int32_t* t = table->entries.data() + size_t{byte} * 256;
    for (uint32_t v = 0; v < 256; ++v) {
      int32_t s = 0;
      for (uint32_t b = 0; b < 8; ++b) s += (v >> b & 1) ? qq[byte * 8 + b] : -qq[byte * 8 + b];
      t[v] = s;
    }
  }
}

void AsymmetricScan(const uint64_t* sigs, const float* norms, size_t n, uint32_t words,
                    const ScanTable& table, float* scores) {
  const uint32_t bytes = words * 8;
  const int32_t* entries = table.entries.data();
  for (size_t t = 0; t < n; ++t) {
    const uint8_t* s = reinterpret_cast<const uint8_t*>(sigs + t * words);  // little-endian words
    int32_t sum = 0;
    for (uint32_t b = 0; b < bytes; ++b) sum += entries[size_t{b} * 256 + s[b]];
    const float score = static_cast<float>(sum) * table.scale;
    scores[t] = norms ? norms[t] * score : score;
  }
}

size_t SelectLargest(const float* scores, size_t n, size_t c, uint32_t* out) {
  return TopKIndices(scores, n, c, out);
}

}  // namespace kiv::index
