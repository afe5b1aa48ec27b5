#include "index/signature.h"

#include <cassert>
#include <cstddef>
#include <cstring>

namespace kiv::index {

uint64_t SplitMix64(uint64_t* state) {
  uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

SignatureProjection::SignatureProjection(uint64_t seed, uint32_t bits, uint32_t dim)
    : seed_(seed),
      bits_(bits),
      dim_(dim),
      matrix_(std::size_t{bits} * dim),
      columns_(std::size_t{bits} * dim) {
  assert(bits > 0 && bits % 64 == 0 && dim > 0);
  uint64_t state = seed;
  for (float& m : matrix_) {
    // Irwin–Hall(12): the sum of 12 U(0,1) has mean 6 and variance 1. With 16-bit draws u_i,
    // (sum u_i − 12 · 32767.5) / 65536 = (2 · sum − 786420) / 131072: an integer over a power
    // of two below 2^24, so the float is exact.
    int64_t sum = 0;
    for (int i = 0; i < 3; ++i) {
      const uint64_t r = SplitMix64(&state);
      for (int j = 0; j < 4; ++j) sum += static_cast<int64_t>((r >> (16 * j)) & 0xFFFF);
    }
    m = static_cast<float>(2 * sum - 786420) / 131072.0f;
  }
  for (uint32_t i = 0; i < bits; ++i)
    for (uint32_t j = 0; j < dim; ++j)
      columns_[std::size_t{j} * bits + i] = matrix_[std::size_t{i} * dim + j];
}

namespace {

// Each row's dot product in index order, as SignReference computes it, but kLanes rows at once
// from the column-major copy, in vectors of W floats (GCC/Clang vector extensions: a separate
// multiply and add per lane, the reference's operations, never fused): one row's serial sum
// waits on each add, 8K dependent adds per 128-bit signature.
typedef float Floats4 __attribute__((vector_size(16)));
typedef float Floats8 __attribute__((vector_size(32)));

template <typename Floats>
__attribute__((always_inline)) inline void SignColumns(const float* columns, uint32_t bits,
                                                       uint32_t dim, const float* x,
                                                       uint64_t* out) {
  constexpr uint32_t W = sizeof(Floats) / sizeof(float), kLanes = 16, kVectors = kLanes / W;
  for (uint32_t i0 = 0; i0 < bits; i0 += kLanes) {
    Floats dot[kVectors] = {};
    for (uint32_t j = 0; j < dim; ++j) {
      const float* col = columns + std::size_t{j} * bits + i0;
      const float xj = x[j];
      for (uint32_t v = 0; v < kVectors; ++v) {
        Floats c;
        std::memcpy(&c, col + W * v, sizeof c);
        dot[v] += c * xj;
      }
    }
    for (uint32_t l = 0; l < kLanes; ++l)
      if (dot[l / W][l % W] > 0.0f) out[(i0 + l) / 64] |= uint64_t{1} << ((i0 + l) % 64);
  }
}

#if defined(__x86_64__) || defined(__i386__)
// 8-float vectors where the CPU has AVX (not FMA: products and sums stay separate roundings).
__attribute__((target("avx"))) void SignColumnsAvx(const float* columns, uint32_t bits,
                                                   uint32_t dim, const float* x, uint64_t* out) {
  SignColumns<Floats8>(columns, bits, dim, x, out);
}
bool HaveAvx() {
  static const bool have = __builtin_cpu_supports("avx");
  return have;
}
#endif

}  // namespace

// x − centre (or x) into centred[dim], and out[words] cleared.
void SignatureProjection::Start(const float* x, const float* centre, float* centred,
                                uint64_t* out) const {
  assert(dim_ <= 1024);
  for (uint32_t j = 0; j < dim_; ++j) centred[j] = centre ? x[j] - centre[j] : x[j];
  for (uint32_t w = 0; w < words(); ++w) out[w] = 0;
}

void SignatureProjection::Sign(const float* x, const float* centre, uint64_t* out) const {
#if defined(__x86_64__) || defined(__i386__)
  if (HaveAvx()) {
    float centred[1024];
    Start(x, centre, centred, out);
    return SignColumnsAvx(columns_.data(), bits_, dim_, centred, out);
  }
#endif
  SignPortable(x, centre, out);
}

void SignatureProjection::SignPortable(const float* x, const float* centre, uint64_t* out) const {
  float centred[1024];
  Start(x, centre, centred, out);
  SignColumns<Floats4>(columns_.data(), bits_, dim_, centred, out);
}

void SignatureProjection::SignReference(const float* x, const float* centre, uint64_t* out) const {
  float centred[1024];
  Start(x, centre, centred, out);
  for (uint32_t i = 0; i < bits_; ++i) {
    const float* row = matrix_.data() + std::size_t{i} * dim_;
    float dot = 0.0f;
    for (uint32_t j = 0; j < dim_; ++j) dot += row[j] * centred[j];
    if (dot > 0.0f) out[i / 64] |= uint64_t{1} << (i % 64);
  }
}

}  // namespace kiv::index
