#include "index/signature.h"

#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <vector>

using namespace kiv::index;

namespace {
std::vector<float> RandomVector(uint64_t* state, uint32_t n) {
  std::vector<float> v(n);
  for (float& x : v) x = static_cast<float>(static_cast<int64_t>(SplitMix64(state) >> 40) - (1 << 23)) / float(1 << 21);
  return v;
}
}  // namespace

TEST_CASE("the projection is bit-identical for a seed: pinned entries") {
  // Pinned when written: a different value means signatures in existing archives change.
  SignatureProjection p(42, 128, 64);
  const float expect[4] = {p.matrix()[0], p.matrix()[1], p.matrix()[64], p.matrix()[128 * 64 - 1]};
  uint32_t bits[4];
  std::memcpy(bits, expect, sizeof bits);
  CHECK(bits[0] == 0xbec1d000u);  // -0.37854
  CHECK(bits[1] == 0xbf80f680u);  // -1.00752
  CHECK(bits[2] == 0xbe6d9000u);  // -0.231995
  CHECK(bits[3] == 0xbf603700u);  // -0.875839
  SignatureProjection again(42, 128, 64);
  CHECK(std::memcmp(p.matrix(), again.matrix(), 128 * 64 * sizeof(float)) == 0);
  SignatureProjection other(43, 128, 64);
  CHECK(std::memcmp(p.matrix(), other.matrix(), 128 * 64 * sizeof(float)) != 0);
}

TEST_CASE("the projection entries are close to standard normal") {
  SignatureProjection p(7, 4096, 64);
  const size_t n = size_t{4096} * 64;
  double sum = 0, sq = 0;
  size_t beyond2 = 0;
  for (size_t i = 0; i < n; ++i) {
    const double x = p.matrix()[i];
    sum += x;
    sq += x * x;
    beyond2 += std::fabs(x) > 2.0;
  }
  const double mean = sum / double(n), var = sq / double(n) - mean * mean;
  CHECK(std::fabs(mean) < 0.01);
  CHECK(std::fabs(var - 1.0) < 0.02);
  CHECK(double(beyond2) / double(n) == doctest::Approx(0.0455).epsilon(0.1));  // N(0,1): 4.55 %
}

TEST_CASE("a bit is set exactly when the projected (centred) vector is positive") {
  uint64_t state = 1;
  SignatureProjection p(9, 256, 64);
  for (int trial = 0; trial < 200; ++trial) {
    const std::vector<float> x = RandomVector(&state, 64), c = RandomVector(&state, 64);
    uint64_t sig[4], sig_centred[4], sig_diff[4];
    p.Sign(x.data(), nullptr, sig);
    p.Sign(x.data(), c.data(), sig_centred);
    std::vector<float> diff(64);
    for (int j = 0; j < 64; ++j) diff[j] = x[j] - c[j];
    p.Sign(diff.data(), nullptr, sig_diff);
    CHECK(std::memcmp(sig_centred, sig_diff, sizeof sig) == 0);
    for (uint32_t i = 0; i < 256; ++i) {
      double dot = 0;
      for (int j = 0; j < 64; ++j) dot += double(p.matrix()[i * 64 + j]) * x[j];
      if (std::fabs(dot) < 1e-3) continue;  // too close to zero for float and double to agree
      CHECK(((sig[i / 64] >> (i % 64)) & 1) == (dot > 0 ? 1u : 0u));
    }
  }
}

TEST_CASE("similar vectors get similar signatures") {
  uint64_t state = 3;
  SignatureProjection p(11, 256, 64);
  const std::vector<float> a = RandomVector(&state, 64);
  std::vector<float> near = a, far = RandomVector(&state, 64);
  for (float& v : near) v += 0.01f;
  uint64_t sa[4], sn[4], sf[4];
  p.Sign(a.data(), nullptr, sa);
  p.Sign(near.data(), nullptr, sn);
  p.Sign(far.data(), nullptr, sf);
  int dn = 0, df = 0;
  for (int w = 0; w < 4; ++w) {
    dn += __builtin_popcountll(sa[w] ^ sn[w]);
    df += __builtin_popcountll(sa[w] ^ sf[w]);
  }
  CHECK(dn < 20);
  CHECK(df > 80);  // unrelated vectors: about 128 of 256
}

TEST_CASE("Sign (AVX or portable) equals the row-at-a-time reference bit for bit") {
  uint64_t state = 23;
  for (const uint32_t bits : {64u, 128u, 256u}) {
    for (const uint32_t dim : {64u, 128u}) {
      SignatureProjection p(bits * 7 + dim, bits, dim);
      for (int trial = 0; trial < 300; ++trial) {
        const std::vector<float> x = RandomVector(&state, dim), c = RandomVector(&state, dim);
        uint64_t got[4], portable[4], want[4];
        for (const float* centre : {static_cast<const float*>(nullptr), c.data()}) {
          p.Sign(x.data(), centre, got);
          p.SignPortable(x.data(), centre, portable);
          p.SignReference(x.data(), centre, want);
          CHECK(std::memcmp(got, want, p.words() * 8) == 0);
          CHECK(std::memcmp(portable, want, p.words() * 8) == 0);
        }
      }
    }
  }
}
