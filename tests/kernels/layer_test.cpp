// kernels/layer (fused RMSNorm and RoPE) against their CPU references: RoPE bit for bit in float32
// and bfloat16, RMSNorm within the last-bit difference its summation order allows.
#include "kernels/layer.h"

#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "tests/kernels/kernel_test_util.h"

using namespace kiv::kernels;
using namespace kiv::kernels::test;

namespace {

// Values in the run dtype: bf16 ones already rounded (as the model's tensors are), as float for
// the reference and as the device's bytes.
struct Values {
  std::vector<float> f;
  std::vector<uint16_t> bf16;
};

Values Make(size_t n, Rng& rng, float scale, bool bf16) {
  Values v;
  for (size_t i = 0; i < n; ++i) {
    const float x = rng.Uniform() * scale;
    v.f.push_back(bf16 ? Bf16ToFloat(FloatToBf16(x)) : x);
    v.bf16.push_back(FloatToBf16(x));
  }
  return v;
}

// A device copy of `v` in the dtype.
struct DeviceValues {
  DeviceValues(const Values& v, bool bf16)
      : f(bf16 ? std::vector<float>{} : v.f), h(bf16 ? v.bf16 : std::vector<uint16_t>{}) {}
  void* get() { return f.size() ? static_cast<void*>(f.get()) : static_cast<void*>(h.get()); }
  DeviceBuffer<float> f;
  DeviceBuffer<uint16_t> h;
};

std::vector<float> Download(DeviceValues& d, bool bf16) {
  if (!bf16) return d.f.Download();
  std::vector<float> out;
  for (uint16_t x : d.h.Download()) out.push_back(Bf16ToFloat(x));
  return out;
}

}  // namespace

TEST_CASE("RoPE equals its reference bit for bit, and refuses odd head_dim") {
  if (!HaveDevice()) {
    MESSAGE("skipped: no CUDA device");
    return;
  }
  for (const bool bf16 : {false, true}) {
    for (const uint32_t rows : {1u, 7u, 1024u}) {
      CAPTURE(bf16);
      CAPTURE(rows);
      const uint32_t heads = 9, d = 64, stride = heads * d + 3 * d;  // rows padded: a strided view
      Rng rng{rows + 17u * bf16};
      Values x = Make(size_t{rows} * stride, rng, 8.0f, bf16);
      Values c = Make(size_t{rows} * d, rng, 2.0f, bf16), s = Make(size_t{rows} * d, rng, 2.0f, bf16);
      DeviceValues dx(x, bf16), dc(c, bf16), ds(s, bf16);
      DeviceValues dout(Make(size_t{rows} * heads * d, rng, 1.0f, bf16), bf16);
      RopeParams p;
      p.x = dx.get(), p.out = dout.get(), p.cos = dc.get(), p.sin = ds.get();
      p.dtype = bf16 ? DType::kBFloat16 : DType::kFloat32;
      p.rows = rows, p.heads = heads, p.head_dim = d, p.x_stride = stride;
      std::string error;
      REQUIRE_MESSAGE(LaunchRope(p, nullptr, &error) == 0, error);
      KIV_CUDA_REQUIRE(cudaDeviceSynchronize());
      std::vector<float> packed;  // the reference takes rows of heads · d
      for (uint32_t t = 0; t < rows; ++t)
        packed.insert(packed.end(), x.f.begin() + t * stride, x.f.begin() + t * stride + heads * d);
      std::vector<float> want(size_t{rows} * heads * d);
      RopeReference(packed.data(), c.f.data(), s.f.data(), want.data(), rows, heads, d, bf16);
      const std::vector<float> got = Download(dout, bf16);
      size_t bad = 0;
      for (size_t i = 0; i < want.size(); ++i) bad += std::memcmp(&got[i], &want[i], 4) != 0;
      CHECK(bad == 0);
    }
  }
  RopeParams p;
  float dummy = 0;
  p.x = p.cos = p.sin = &dummy;
  p.out = &dummy;
  p.rows = 1, p.heads = 1, p.head_dim = 63;
  std::string error;
  CHECK(LaunchRope(p, nullptr, &error) != 0);
  CHECK(error.find("head_dim = 63") != std::string::npos);
}

TEST_CASE("RMSNorm equals its reference up to the summation order") {
  CHECK(RoundBf16(1.0f + 0x1p-8f) == 1.0f);  // a tie: to even
  CHECK(RoundBf16(1.0f + 0x1.8p-8f) == 1.0f + 0x1p-7f);
  if (!HaveDevice()) {
    MESSAGE("skipped: no CUDA device");
    return;
  }
  for (const bool bf16 : {false, true}) {
    for (const uint32_t dim : {64u, 576u, 2048u, 5000u}) {
      CAPTURE(bf16);
      CAPTURE(dim);
      const uint32_t rows = 33;
      Rng rng{dim + 3u * bf16};
      Values x = Make(size_t{rows} * dim, rng, 6.0f, bf16), w = Make(dim, rng, 3.0f, bf16);
      DeviceValues dx(x, bf16), dw(w, bf16), dout(Make(size_t{rows} * dim, rng, 1, bf16), bf16);
      RmsNormParams p;
      p.x = dx.get(), p.weight = dw.get(), p.out = dout.get();
      p.dtype = bf16 ? DType::kBFloat16 : DType::kFloat32;
      p.rows = rows, p.dim = dim, p.eps = 1e-5f;
      std::string error;
      REQUIRE_MESSAGE(LaunchRmsNorm(p, nullptr, &error) == 0, error);
      KIV_CUDA_REQUIRE(cudaDeviceSynchronize());
      std::vector<float> want(size_t{rows} * dim);
      RmsNormReference(x.f.data(), w.f.data(), want.data(), rows, dim, p.eps, bf16);
      const std::vector<float> got = Download(dout, bf16);
      // r differs by a few float ulps (the GPU's tree sum in float against the reference's in
      // double); after the dtype's roundings an output then differs by up to two of its units.
      size_t bad = 0, exact = 0;
      for (size_t i = 0; i < want.size(); ++i) {
        const float unit = bf16 ? std::ldexp(std::fabs(want[i]), -6) : std::fabs(want[i]) * 4e-6f;
        bad += std::fabs(got[i] - want[i]) > unit + 1e-30f;
        exact += got[i] == want[i];
      }
      MESSAGE((bf16 ? "bf16" : "fp32") << " dim " << dim << ": " << exact << " of " << want.size()
                                       << " outputs equal the reference exactly");
      CHECK(bad == 0);
    }
  }
}
