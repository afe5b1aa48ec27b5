// Key signatures: b sign bits of a seeded Gaussian projection of a (centred) key.
//
// The projection is made from integers only (Irwin–Hall: a sum of 12 uniform 16-bit draws from
// SplitMix64, scaled by a power of two), so every entry is an exact float and the matrix is
// bit-identical on every machine for the same seed. Signatures are then bit-exact wherever float
// dot products are computed in the same order without contraction into FMA (the CPU code here).
#pragma once

#include <cstdint>
#include <vector>

namespace kiv::index {

class SignatureProjection {
 public:
  SignatureProjection(uint64_t seed, uint32_t bits, uint32_t dim);

  uint32_t bits() const { return bits_; }
  uint32_t dim() const { return dim_; }
  uint32_t words() const { return bits_ / 64; }
  const float* matrix() const { return matrix_.data(); }  // [bits][dim] row-major

  // out[words]: bit i (word i / 64, bit i % 64) is set when row i · (x − centre) > 0.
  // `centre` may be null (no centring). Queries are signed without a centre: q·(k − μ) ranks
  // keys exactly as q·k does, since q·μ is the same for every key.
  void Sign(const float* x, const float* centre, uint64_t* out) const;
  // The same bits, one row at a time (the plain loop Sign is tested against), and with 4-float
  // vectors whatever the CPU (what Sign runs where it has no AVX).
  void SignReference(const float* x, const float* centre, uint64_t* out) const;
  void SignPortable(const float* x, const float* centre, uint64_t* out) const;

 private:
  void Start(const float* x, const float* centre, float* centred, uint64_t* out) const;

  uint64_t seed_;
  uint32_t bits_;
  uint32_t dim_;
  std::vector<float> matrix_;
  std::vector<float> columns_;  // the matrix column-major, [dim][bits]: Sign's layout
};

// SplitMix64 step: the generator behind the projection (and the tests' data).
uint64_t SplitMix64(uint64_t* state);

}  // namespace kiv::index
