// The asymmetric scan: a key's signature bits scored against the query's *projected values*
// rather than the query's own sign bits.
//
// For a Gaussian row r, E[(r·q) · sign(r·k)] = sqrt(2/π) · q·k / |k|. So with b rows,
//   score(k) = |k| · Σ_i (r_i·q) · (bit_i(k) ? +1 : −1)
// estimates b · sqrt(2/π) · q·k: the dot product itself, not just the angle Hamming distance
// estimates, and without throwing away the query's magnitudes. A GQA group's score is the sum of
// its heads' (that is, that of their summed query). The sum over bits runs as byte lookups: a
// table of 256 partial sums per signature byte, so a 128-bit key costs 16 lookups and adds.
#pragma once

#include <cstddef>
#include <cstdint>

#include "index/signature.h"

namespace kiv::index {

// table: [bits / 8][256]; entry [B][v] = Σ over the 8 bits i of byte B of ±(Σ_j r_i · q_j),
// + where bit i of v is set. queries: [g][dim].
void BuildGroupTable(const SignatureProjection& p, const float* queries, uint32_t g, float* table);

// scores[t] = norms[t] · Σ_B table[B][byte B of sigs[t]] (norms may be null: all 1).
void AsymmetricScan(const uint64_t* sigs, const float* norms, size_t n, uint32_t words,
                    const float* table, float* scores);

// The c largest scores as indices in ascending order (ties: lower index). Returns min(c, n).
size_t SelectLargest(const float* scores, size_t n, size_t c, uint32_t* out);

}  // namespace kiv::index
