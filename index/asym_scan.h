// The asymmetric scan: a key's signature bits scored against the query's *projected values*
// rather than the query's own sign bits.
//
// For a Gaussian row r, E[(r·q) · sign(r·k)] = sqrt(2/π) · q·k / |k|. So with b rows,
//   score(k) = |k| · Σ_i (r_i·q) · (bit_i(k) ? +1 : −1)
// estimates b · sqrt(2/π) · q·k: the dot product itself, not just the angle Hamming distance
// estimates, and without throwing away the query's magnitudes. A GQA group's score is the sum of
// its heads' (that is, that of their summed query).
//
// The projected query is quantized to integers before the sum: proj_i ≈ scale · qq_i with
// |qq_i| ≤ kScanQueryMax (15 bits and a sign; scale = max_i |proj_i| / kScanQueryMax), so that
//   score(k) = |k| · (scale · S),   S = Σ_i qq_i · (bit_i(k) ? +1 : −1)   (an exact integer)
// S is the same whatever order it is summed in: a table of byte lookups here, int8 tensor-core
// products on the GPU (kernels/scan.h), equal bit for bit. The rounding moves each term by at
// most scale / 2, 1/65,278 of the largest: far below what 128 sign bits say about a key.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "index/signature.h"

namespace kiv::index {

// The largest |qq_i|: 127 · 256 + 127, so qq splits into int8 halves qq = 256 · hi + lo, hi and lo
// in [−127, 127] (what the GPU's int8 products take).
constexpr int32_t kScanQueryMax = 32639;

// qq[bits] for the summed query of g queries [g][dim]: proj_i = Σ_j (Σ_e r_i[e] · q_j[e]) in float
// (that order, no FMA), then qq_i = round-half-even(proj_i · (kScanQueryMax / m)), m = max |proj_i|
// (all 0 when m is 0). Returns scale = m / kScanQueryMax (float division).
float QuantizeProjectedQuery(const SignatureProjection& p, const float* queries, uint32_t g,
                             int32_t* qq);

// A query's byte table: entries [bits / 8][256], entry [B][v] = Σ over the 8 bits b of byte B of
// ±qq[8B + b], + where bit b of v is set.
struct ScanTable {
  std::vector<int32_t> entries;
  float scale = 0.0f;
};
void BuildGroupTable(const SignatureProjection& p, const float* queries, uint32_t g,
                     ScanTable* table);

// scores[t] = norms[t] · (scale · float(S_t)), S_t = Σ_B entries[B][byte B of sigs[t]] (norms may
// be null: all 1; float(S) is exact, |S| < 2^23).
void AsymmetricScan(const uint64_t* sigs, const float* norms, size_t n, uint32_t words,
                    const ScanTable& table, float* scores);

// The c largest scores as indices in ascending order (ties: lower index). Returns min(c, n).
size_t SelectLargest(const float* scores, size_t n, size_t c, uint32_t* out);

}  // namespace kiv::index
