// Hamming scan over one kv-head's key signatures for a GQA group of query signatures, and the
// selection of the C nearest.
//
// The group's distance to a key is the SUM of its query heads' Hamming distances: each query
// head's distance estimates the angle between that head's query and the key, and a key that
// several heads of the group point at is what the group's attention needs most.
#pragma once

#include <cstddef>
#include <cstdint>

namespace kiv::index {

// dist[t] = Σ_j popcount(keys[t] XOR queries[j]) over `words` 64-bit words, for t < n.
// keys: [n][words], queries: [g][words]. The sum must fit 16 bits: g · 64 · words < 65536.
// Uses AVX2 where the CPU has it (ScanKernelName says which ran), else scalar popcount.
void GroupHamming(const uint64_t* keys, size_t n, uint32_t words, const uint64_t* queries,
                  uint32_t g, uint16_t* dist);
// The portable reference the AVX2 path is tested against.
void GroupHammingScalar(const uint64_t* keys, size_t n, uint32_t words, const uint64_t* queries,
                        uint32_t g, uint16_t* dist);
const char* ScanKernelName();

// The indices of the `c` smallest distances, by a histogram select (distances are small
// integers): all with distance below the threshold, then those at it in index order. Writes
// min(c, n) indices in ascending index order to `out` and returns how many.
// `max_distance` bounds every dist[t].
size_t SelectSmallest(const uint16_t* dist, size_t n, uint32_t max_distance, size_t c,
                      uint32_t* out);

}  // namespace kiv::index
