// kernels/layer (fused RMSNorm, RoPE, residual add + RMSNorm, SwiGLU) against their CPU
// references: RoPE and AddRmsNorm's sum bit for bit in float32 and bfloat16, RMSNorm within the
// last-bit difference its summation order allows (and AddRmsNorm's norm equal to the RMSNorm
// kernel's), SwiGLU within what the device expf's last bit allows.
#include "kernels/layer.h"
#include "kernels/scan.h"

#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "index/asym_scan.h"
#include "index/signature.h"
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

// How far an output may be from its reference after a float ulp of difference upstream (a sum
// in another order, another expf) changed one rounding to the dtype, then another: two units of
// the dtype (bf16), a few float ulps (float32).
bool WithinTwoUnits(float got, float want, bool bf16) {
  const float unit = bf16 ? std::ldexp(std::fabs(want), -6) : std::fabs(want) * 4e-6f;
  return std::fabs(got - want) <= unit + 1e-30f;
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

// The norm tests' shapes, float32 and bf16: 33 rows of a dim from one warp's worth to past what
// one block holds at once.
template <typename Body>
void ForEachNormShape(Body body) {
  for (const bool bf16 : {false, true}) {
    for (const uint32_t dim : {64u, 576u, 2048u, 5000u}) {
      CAPTURE(bf16);
      CAPTURE(dim);
      body(bf16, dim, /*rows=*/33u);
    }
  }
}

TEST_CASE("RMSNorm equals its reference up to the summation order") {
  CHECK(RoundBf16(1.0f + 0x1p-8f) == 1.0f);  // a tie: to even
  CHECK(RoundBf16(1.0f + 0x1.8p-8f) == 1.0f + 0x1p-7f);
  if (!HaveDevice()) {
    MESSAGE("skipped: no CUDA device");
    return;
  }
  ForEachNormShape([](bool bf16, uint32_t dim, uint32_t rows) {
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
      bad += !WithinTwoUnits(got[i], want[i], bf16);
      exact += got[i] == want[i];
    }
    MESSAGE((bf16 ? "bf16" : "fp32") << " dim " << dim << ": " << exact << " of " << want.size()
                                     << " outputs equal the reference exactly");
    CHECK(bad == 0);
  });
}

TEST_CASE("AddRmsNorm: its sum is h + o bit for bit, its norm the RMSNorm kernel's of that sum") {
  if (!HaveDevice()) {
    MESSAGE("skipped: no CUDA device");
    return;
  }
  ForEachNormShape([](bool bf16, uint32_t dim, uint32_t rows) {
    const size_t n = size_t{rows} * dim;
    Rng rng{dim + 5u * bf16};
    Values h = Make(n, rng, 6.0f, bf16), o = Make(n, rng, 3.0f, bf16);
    Values w = Make(dim, rng, 3.0f, bf16);
    DeviceValues dh(h, bf16), dproj(o, bf16), dw(w, bf16);
    DeviceValues dsum(Make(n, rng, 1, bf16), bf16), dout(Make(n, rng, 1, bf16), bf16);
    DeviceValues dnorm(Make(n, rng, 1, bf16), bf16);
    AddRmsNormParams p;
    p.h = dh.get(), p.o = dproj.get(), p.weight = dw.get();
    p.sum = dsum.get(), p.out = dout.get();
    p.dtype = bf16 ? DType::kBFloat16 : DType::kFloat32;
    p.rows = rows, p.dim = dim, p.eps = 1e-5f;
    std::string error;
    REQUIRE_MESSAGE(LaunchAddRmsNorm(p, nullptr, &error) == 0, error);
    RmsNormParams q;  // the separate kernel on the fused one's sum
    q.x = dsum.get(), q.weight = dw.get(), q.out = dnorm.get();
    q.dtype = p.dtype, q.rows = rows, q.dim = dim, q.eps = p.eps;
    REQUIRE_MESSAGE(LaunchRmsNorm(q, nullptr, &error) == 0, error);
    KIV_CUDA_REQUIRE(cudaDeviceSynchronize());
    std::vector<float> want_sum(n), want(n);
    AddRmsNormReference(h.f.data(), o.f.data(), w.f.data(), want_sum.data(), want.data(), rows,
                        dim, p.eps, bf16);
    const std::vector<float> sum = Download(dsum, bf16), got = Download(dout, bf16);
    const std::vector<float> norm = Download(dnorm, bf16);
    size_t bad_sum = 0, bad = 0, unlike_norm = 0;
    for (size_t i = 0; i < n; ++i) {
      bad_sum += std::memcmp(&sum[i], &want_sum[i], 4) != 0;
      bad += !WithinTwoUnits(got[i], want[i], bf16);
      unlike_norm += std::memcmp(&got[i], &norm[i], 4) != 0;
    }
    CHECK(bad_sum == 0);
    CHECK(bad == 0);
    CHECK(unlike_norm == 0);
  });
  AddRmsNormParams p;
  float dummy = 0;
  p.h = p.o = p.weight = &dummy;
  p.sum = p.out = &dummy;
  p.rows = 1, p.dim = 20000;
  std::string error;
  CHECK(LaunchAddRmsNorm(p, nullptr, &error) != 0);
  CHECK(error.find("dim = 20000") != std::string::npos);
}

TEST_CASE("SwiGLU equals its reference up to the device expf's last bit") {
  {  // the reference itself: silu(1) = 0.7310586, silu(0) = 0, in bf16 rounded twice
    const float gate_up[4] = {1.0f, 0.0f, 3.0f, 5.0f};
    float out[2];
    SwiGluReference(gate_up, out, 1, 2, /*bf16=*/false);
    CHECK(out[0] == doctest::Approx(3 * 0.7310586f));
    CHECK(out[1] == 0.0f);
    SwiGluReference(gate_up, out, 1, 2, /*bf16=*/true);
    CHECK(out[0] == RoundBf16(3 * RoundBf16(0.7310586f)));
  }
  if (!HaveDevice()) {
    MESSAGE("skipped: no CUDA device");
    return;
  }
  for (const bool bf16 : {false, true}) {
    for (const uint32_t rows : {1u, 7u, 300u}) {
      CAPTURE(bf16);
      CAPTURE(rows);
      const uint32_t inter = 1536, stride = 2 * inter + 64;  // rows padded: a strided view
      Rng rng{rows + 11u * bf16};
      Values x = Make(size_t{rows} * stride, rng, 24.0f, bf16);  // silu's tails and its middle
      DeviceValues dx(x, bf16), dout(Make(size_t{rows} * inter, rng, 1, bf16), bf16);
      SwiGluParams p;
      p.gate_up = dx.get(), p.out = dout.get();
      p.dtype = bf16 ? DType::kBFloat16 : DType::kFloat32;
      p.rows = rows, p.inter = inter, p.in_stride = stride;
      std::string error;
      REQUIRE_MESSAGE(LaunchSwiGlu(p, nullptr, &error) == 0, error);
      KIV_CUDA_REQUIRE(cudaDeviceSynchronize());
      std::vector<float> packed;  // the reference takes rows of 2 · inter
      for (uint32_t t = 0; t < rows; ++t)
        packed.insert(packed.end(), x.f.begin() + t * stride, x.f.begin() + t * stride + 2 * inter);
      std::vector<float> want(size_t{rows} * inter);
      SwiGluReference(packed.data(), want.data(), rows, inter, bf16);
      const std::vector<float> got = Download(dout, bf16);
      size_t bad = 0, exact = 0;
      for (size_t i = 0; i < want.size(); ++i) {
        bad += !WithinTwoUnits(got[i], want[i], bf16);
        exact += std::memcmp(&got[i], &want[i], 4) == 0;
      }
      MESSAGE((bf16 ? "bf16" : "fp32") << " SwiGLU rows " << rows << ": " << exact << " of "
                                       << want.size() << " outputs equal the reference exactly");
      CHECK(bad == 0);
    }
  }
  SwiGluParams p;
  float dummy = 0;
  p.gate_up = &dummy;
  p.out = &dummy;
  p.rows = 1, p.inter = 8, p.in_stride = 15;
  std::string error;
  CHECK(LaunchSwiGlu(p, nullptr, &error) != 0);
  CHECK(error.find("in_stride = 15") != std::string::npos);
}

TEST_CASE("DecodeKvWrite equals its reference bit for bit; rows outside the buffer are not written") {
  if (!HaveDevice()) {
    MESSAGE("skipped: no CUDA device");
    return;
  }
  // BuildDecodeScanQueries (kernels/scan.h) makes the same writes and also each q head's scan
  // blob, which must be the CPU's quantized query of the float copy (QuantizeProjectedQuery,
  // PackScanQuery), bit for bit.
  const kiv::index::SignatureProjection projection(11, 128, 64);
  DeviceBuffer<float> dproj(
      std::vector<float>(projection.matrix(), projection.matrix() + 128 * 64));
  const size_t blob_bytes = ScanQueryBytes(128);
  for (const bool with_blobs : {false, true}) {
    for (const bool bf16 : {false, true}) {
      for (const int64_t row : {int64_t{0}, int64_t{5}, int64_t{19}, int64_t{20}, int64_t{-1}}) {
        CAPTURE(with_blobs);
        CAPTURE(bf16);
        CAPTURE(row);
        DecodeKvWriteParams p;
        p.dtype = bf16 ? DType::kBFloat16 : DType::kFloat32;
        p.q_heads = 9, p.kv_heads = 3, p.head_dim = 64;
        // q, k, v as the fused qkv projection lays them out: heads of one row side by side, v a
        // view with its own stride; the hot buffers padded between heads.
        p.q_stride = 64, p.k_stride = 64, p.v_stride = 128, p.hot_rows = 20;
        p.hot_stride = 20 * 64 + 32;
        Rng rng{uint64_t(row + 100) + 7u * bf16};
        Values q = Make(9 * 64, rng, 8.0f, bf16), k = Make(3 * 64, rng, 8.0f, bf16);
        Values v = Make(3 * 128, rng, 8.0f, bf16);
        Values hk = Make(3 * p.hot_stride, rng, 1.0f, bf16);
        Values hv = Make(3 * p.hot_stride, rng, 1.0f, bf16);
        DeviceValues dq(q, bf16), dk(k, bf16), dv(v, bf16), dhk(hk, bf16), dhv(hv, bf16);
        DeviceBuffer<int64_t> drow(std::vector<int64_t>{row});
        DeviceBuffer<float> dqo(9 * 64);
        DeviceBuffer<uint8_t> dblobs(9 * blob_bytes);
        p.q = dq.get(), p.k = dk.get(), p.v = dv.get(), p.hot_k = dhk.get(), p.hot_v = dhv.get();
        p.row = drow.get(), p.q_out = dqo.get();
        std::string error;
        if (with_blobs)
          REQUIRE_MESSAGE(
              BuildDecodeScanQueries(dproj.get(), 128, p, dblobs.get(), nullptr, &error) == 0,
              error);
        else
          REQUIRE_MESSAGE(LaunchDecodeKvWrite(p, nullptr, &error) == 0, error);
        KIV_CUDA_REQUIRE(cudaDeviceSynchronize());
        std::vector<float> want_q(9 * 64), want_k = hk.f, want_v = hv.f;
        DecodeKvWriteReference(q.f.data(), k.f.data(), v.f.data(), want_k.data(), want_v.data(),
                               row, want_q.data(), p);
        CHECK(std::memcmp(dqo.Download().data(), want_q.data(), want_q.size() * 4) == 0);
        const std::vector<float> got_k = Download(dhk, bf16), got_v = Download(dhv, bf16);
        CHECK(std::memcmp(got_k.data(), want_k.data(), want_k.size() * 4) == 0);
        CHECK(std::memcmp(got_v.data(), want_v.data(), want_v.size() * 4) == 0);
        if (!with_blobs) continue;
        const std::vector<uint8_t> got_blobs = dblobs.Download();
        std::vector<int32_t> qq(128);
        std::vector<uint8_t> want_blob(blob_bytes);
        for (size_t h = 0; h < 9; ++h) {
          CAPTURE(h);
          const float scale =
              kiv::index::QuantizeProjectedQuery(projection, &want_q[h * 64], 1, qq.data());
          PackScanQuery(qq.data(), 128, scale, want_blob.data());
          CHECK(std::memcmp(&got_blobs[h * blob_bytes], want_blob.data(), blob_bytes) == 0);
        }
      }
    }
  }
  DecodeKvWriteParams p;
  std::string error;
  CHECK(LaunchDecodeKvWrite(p, nullptr, &error) != 0);
  CHECK(error.find("null") != std::string::npos);
  error.clear();
  CHECK(BuildDecodeScanQueries(dproj.get(), 128, p, nullptr, nullptr, &error) != 0);
  CHECK(error.find("null") != std::string::npos);
}
