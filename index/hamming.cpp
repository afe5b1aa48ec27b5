#include "index/hamming.h"

#include <immintrin.h>

#include <algorithm>
#include <cassert>
#include <vector>

namespace kiv::index {
namespace {

__attribute__((target("popcnt"))) void GroupHammingPopcnt(const uint64_t* keys, size_t n,
                                                            uint32_t words,
                                                            const uint64_t* queries, uint32_t g,
                                                            uint16_t* dist) {
  for (size_t t = 0; t < n; ++t) {
    const uint64_t* k = keys + t * words;
    uint32_t d = 0;
    for (uint32_t j = 0; j < g; ++j) {
      const uint64_t* q = queries + size_t{j} * words;
      for (uint32_t w = 0; w < words; ++w) d += uint32_t(__builtin_popcountll(k[w] ^ q[w]));
    }
    dist[t] = uint16_t(d);
  }
}

// AVX2: 256 bits hold 4 words, i.e. 4/words tokens. Popcount by nibble lookup (vpshufb); byte
// counts of up to 31 queries are summed before one vpsadbw turns them into per-word totals.
__attribute__((target("avx2,popcnt"))) void GroupHammingAvx2(const uint64_t* keys, size_t n,
                                                               uint32_t words,
                                                               const uint64_t* queries,
                                                               uint32_t g, uint16_t* dist) {
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,  //
                                       0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i nibble = _mm256_set1_epi8(0x0F);
  __m256i qv[32];
  for (uint32_t j = 0; j < g; ++j) {
    alignas(32) uint64_t lanes[4];
    for (uint32_t l = 0; l < 4; ++l) lanes[l] = queries[size_t{j} * words + l % words];
    qv[j] = _mm256_load_si256(reinterpret_cast<const __m256i*>(lanes));
  }
  const uint32_t tokens_per_vec = 4 / words;
  const size_t vecs = n / tokens_per_vec;
  for (size_t v = 0; v < vecs; ++v) {
    const __m256i k = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(keys + v * 4));
    __m256i bytes = _mm256_setzero_si256();
    for (uint32_t j = 0; j < g; ++j) {
      const __m256i x = _mm256_xor_si256(k, qv[j]);
      const __m256i lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(x, nibble));
      const __m256i hi = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(x, 4), nibble));
      bytes = _mm256_add_epi8(bytes, _mm256_add_epi8(lo, hi));
    }
    alignas(32) uint64_t sums[4];
    _mm256_store_si256(reinterpret_cast<__m256i*>(sums), _mm256_sad_epu8(bytes, _mm256_setzero_si256()));
    for (uint32_t t = 0; t < tokens_per_vec; ++t) {
      uint64_t d = 0;
      for (uint32_t w = 0; w < words; ++w) d += sums[t * words + w];
      dist[v * tokens_per_vec + t] = uint16_t(d);
    }
  }
  const size_t done = vecs * tokens_per_vec;
  GroupHammingPopcnt(keys + done * words, n - done, words, queries, g, dist + done);
}

bool HaveAvx2() {
  static const bool have = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt");
  return have;
}

bool HavePopcnt() {
  static const bool have = __builtin_cpu_supports("popcnt");
  return have;
}

}  // namespace

void GroupHammingScalar(const uint64_t* keys, size_t n, uint32_t words, const uint64_t* queries,
                        uint32_t g, uint16_t* dist) {
  for (size_t t = 0; t < n; ++t) {
    uint32_t d = 0;
    for (uint32_t j = 0; j < g; ++j) {
      for (uint32_t w = 0; w < words; ++w) {
        uint64_t x = keys[t * words + w] ^ queries[size_t{j} * words + w];
        while (x) {  // Kernighan: one step per set bit; portable, no popcnt instruction
          x &= x - 1;
          ++d;
        }
      }
    }
    dist[t] = uint16_t(d);
  }
}

void GroupHamming(const uint64_t* keys, size_t n, uint32_t words, const uint64_t* queries,
                  uint32_t g, uint16_t* dist) {
  assert(size_t{g} * 64 * words < 65536);
  // 8 bits per byte per query: up to 31 queries fit a byte lane before vpsadbw.
  if (HaveAvx2() && (words == 1 || words == 2 || words == 4) && g <= 31) {
    GroupHammingAvx2(keys, n, words, queries, g, dist);
  } else if (HavePopcnt()) {
    GroupHammingPopcnt(keys, n, words, queries, g, dist);
  } else {
    GroupHammingScalar(keys, n, words, queries, g, dist);
  }
}

const char* ScanKernelName() { return HaveAvx2() ? "avx2" : HavePopcnt() ? "popcnt" : "scalar"; }

size_t SelectSmallest(const uint16_t* dist, size_t n, uint32_t max_distance, size_t c,
                      uint32_t* out) {
  if (c >= n) {
    for (size_t t = 0; t < n; ++t) out[t] = uint32_t(t);
    return n;
  }
  std::vector<uint32_t> histogram(max_distance + 1, 0);
  for (size_t t = 0; t < n; ++t) {
    assert(dist[t] <= max_distance);
    ++histogram[dist[t]];
  }
  // threshold: the smallest distance at which the running count reaches c.
  size_t below = 0;
  uint32_t threshold = 0;
  while (below + histogram[threshold] < c) below += histogram[threshold++];
  size_t at_threshold = c - below;  // how many of the ties are taken, lowest index first
  size_t m = 0;
  for (size_t t = 0; t < n; ++t) {
    if (dist[t] < threshold) {
      out[m++] = uint32_t(t);
    } else if (dist[t] == threshold && at_threshold > 0) {
      out[m++] = uint32_t(t);
      --at_threshold;
    }
  }
  return m;
}

}  // namespace kiv::index
