// AttentionWithLse's fused path (ATen's flash kernel on the CPU) against the reference path, and
// MergeAttention against its reference formula, on random tensors. The CUDA branch of the fused
// path (the CUTLASS memory-efficient kernel) shares the row split tested here; only the kernel
// call differs, and that needs a GPU.

// LibTorch before doctest: c10's logging defines a CHECK of its own, and doctest's must win.
#include <torch/torch.h>
// clang-format off
#include <doctest/doctest.h>
// clang-format on

#include <cmath>
#include <limits>

#include "runtime/full_cache.h"

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// Largest |a - b| where both are finite; positions where either is infinite must agree exactly.
float MaxFiniteDiff(const torch::Tensor& a, const torch::Tensor& b) {
  torch::Tensor fa = a.to(torch::kFloat), fb = b.to(torch::kFloat);
  torch::Tensor finite = torch::isfinite(fa) & torch::isfinite(fb);
  CHECK(torch::equal(fa.masked_select(~finite), fb.masked_select(~finite)));
  if (!finite.any().item<bool>()) return 0.0f;
  return (fa - fb).abs().masked_select(finite).max().item<float>();
}

}  // namespace

// Tolerances. Both paths convert to float32 and compute the same sums in a different order
// (blocked online softmax vs. one max-subtracted pass), so each result differs by a few float32
// roundings of the largest term: scores here are O(4) (d-dim unit-variance dot products scaled
// by 1/sqrt(d)), lse O(10), outputs O(1) weighted averages of unit-variance values. 1e-5 absolute
// is about 100 ulps at 1.0 and sqrt(T)-growth of accumulated rounding for T = 2324 keys stays well
// inside it. For bf16 inputs the float32 results are equally close, but out is rounded to bf16
// at the end, and a 1e-6 float difference can move it across a rounding boundary: one bf16 ulp,
// 2^-8 relative, so out is compared with rtol 2^-7 there (lse stays float32: 1e-5).
TEST_CASE("AttentionWithLseFused equals the reference: shapes, offsets, GQA, dtypes") {
  torch::manual_seed(11);
  float worst_out_f32 = 0, worst_lse = 0, worst_out_bf16 = 0;
  int cases = 0;
  for (int64_t n : {1, 7, 1024}) {
    for (int64_t extra : {0, 37, 1300}) {
      if (n == 1024 && extra == 37) continue;  // keep the test well under a minute on 2 cores
      const int64_t t = n + extra;
      for (int64_t g : {1, 3}) {
        for (int64_t d : {64, 128}) {
          if (n == 1024 && d == 128 && g == 1) continue;
          const int64_t h_kv = 3, h_q = h_kv * g;
          // Strided q as the model passes it: [n, H_q, d] transposed.
          torch::Tensor q = torch::randn({n, h_q, d}).transpose(0, 1);
          torch::Tensor k = torch::randn({h_kv, t, d}), v = torch::randn({h_kv, t, d});
          const int64_t middle = (t - n) / 2 - n / 2;  // some rows causal, some hidden or full
          for (int64_t offset : {-n, int64_t{0}, middle, t - n, t, kiv::kNoCausalMask}) {
            for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
              CAPTURE(n);
              CAPTURE(t);
              CAPTURE(g);
              CAPTURE(d);
              CAPTURE(offset);
              CAPTURE(dtype == torch::kFloat);
              torch::Tensor qd = q.to(dtype), kd = k.to(dtype), vd = v.to(dtype);
              REQUIRE(kiv::FusedAttentionApplies(qd, kd, vd));
              kiv::PartialAttention want = kiv::AttentionWithLseReference(qd, kd, vd, offset);
              kiv::PartialAttention got = kiv::AttentionWithLseFused(qd, kd, vd, offset);
              ++cases;
              REQUIRE(got.out.sizes() == want.out.sizes());
              REQUIRE(got.lse.sizes() == want.lse.sizes());
              CHECK((got.out.scalar_type() == dtype));  // doctest cannot print a ScalarType
              CHECK((got.lse.scalar_type() == torch::kFloat));
              const float lse_diff = MaxFiniteDiff(got.lse, want.lse);
              CHECK(lse_diff <= 1e-5f);
              worst_lse = std::max(worst_lse, lse_diff);
              if (dtype == torch::kFloat) {
                const float out_diff = MaxFiniteDiff(got.out, want.out);
                CHECK(out_diff <= 1e-5f);
                worst_out_f32 = std::max(worst_out_f32, out_diff);
              } else {
                // One bf16 ulp is at most 2^-7 of the value; 1e-6 covers values near 0.
                torch::Tensor a = got.out.to(torch::kFloat), b = want.out.to(torch::kFloat);
                torch::Tensor excess = (a - b).abs() - (b.abs() * (1.0 / 128) + 1e-6);
                CHECK(excess.max().item<float>() <= 0.0f);
                worst_out_bf16 = std::max(worst_out_bf16, (a - b).abs().max().item<float>());
              }
              // Rows that see no key, r + offset < 0: exactly 0 and -inf, not merely close.
              if (offset < t && offset < 0) {
                const int64_t hidden = std::min(n, -offset);
                CHECK(got.out.narrow(1, 0, hidden).abs().max().item<float>() == 0.0f);
                CHECK(torch::all(got.lse.narrow(1, 0, hidden) == -kInf).item<bool>());
                CHECK(torch::isfinite(got.lse.narrow(1, hidden, n - hidden)).all().item<bool>());
              } else {
                CHECK(torch::isfinite(got.lse).all().item<bool>());
              }
            }
          }
        }
      }
    }
  }
  MESSAGE("cases " << cases << ", max |out diff| fp32 " << worst_out_f32 << ", max |lse diff| "
                   << worst_lse << ", max |out diff| bf16 (within one ulp) " << worst_out_bf16);
}

TEST_CASE("AttentionWithLseFused: no keys, no queries, and the dispatcher") {
  torch::Tensor q = torch::randn({6, 4, 64}), k = torch::randn({2, 0, 64});
  kiv::PartialAttention none = kiv::AttentionWithLseFused(q, k, k);
  CHECK(none.out.abs().max().item<float>() == 0.0f);
  CHECK(torch::all(none.lse == -kInf).item<bool>());
  torch::Tensor k5 = torch::randn({2, 5, 64});
  kiv::PartialAttention empty = kiv::AttentionWithLseFused(q.narrow(1, 0, 0), k5, k5);
  CHECK(empty.out.sizes() == torch::IntArrayRef({6, 0, 64}));
  // Head dimensions the fused kernels are not used for go to the reference.
  CHECK_FALSE(kiv::FusedAttentionApplies(torch::randn({2, 3, 12}), torch::randn({2, 3, 12}),
                                         torch::randn({2, 3, 12})));
  CHECK_FALSE(kiv::FusedAttentionApplies(torch::ones({2, 3, 64}, torch::kLong),
                                         torch::ones({2, 3, 64}, torch::kLong),
                                         torch::ones({2, 3, 64}, torch::kLong)));
  torch::Tensor q12 = torch::randn({2, 3, 12}), k12 = torch::randn({1, 5, 12});
  CHECK(torch::equal(kiv::AttentionWithLse(q12, k12, k12, 2).out,
                     kiv::AttentionWithLseReference(q12, k12, k12, 2).out));
  // On the CPU the dispatcher keeps the reference even where the fused kernel applies (a chunk of
  // 128 queries at d 64): every CPU fidelity number was measured on it.
  torch::Tensor q64 = torch::randn({6, 128, 64}), k64 = torch::randn({2, 300, 64});
  REQUIRE(kiv::FusedAttentionApplies(q64, k64, k64));
  const kiv::PartialAttention cpu = kiv::AttentionWithLse(q64, k64, k64, 172);
  const kiv::PartialAttention ref = kiv::AttentionWithLseReference(q64, k64, k64, 172);
  CHECK(torch::equal(cpu.out, ref.out));
  CHECK(torch::equal(cpu.lse, ref.lse));
}

// The merge's weights are sigmoid(a.lse - b.lse) and its complement, the reference's
// exp(a.lse - lse) and exp(b.lse - lse): equal in exact arithmetic. In float32 the reference's
// a.lse - lse carries lse's rounding, eps * |lse| (lse up to about 60 here: 7e-6 relative in the
// weight), while a.lse - b.lse is exact or nearly so (Sterbenz) and lerp rounds twice: measured
// against float64, the new merge errs 4e-7, the reference 6e-6 (|out| up to about 4). So the new
// one is held to 1e-6 of float64, and the two to each other within the reference's own 2e-5.
TEST_CASE("MergeAttention equals the reference formula, empty parts included") {
  torch::manual_seed(12);
  for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
    CAPTURE(dtype == torch::kFloat);
    kiv::PartialAttention a{torch::randn({9, 300, 64}).to(dtype), torch::randn({9, 300}) * 20};
    kiv::PartialAttention b{torch::randn({9, 300, 64}).to(dtype), torch::randn({9, 300}) * 20};
    // Rows 0-9: a empty; 10-19: b empty; 20-29: both empty (their outs are 0 by contract).
    a.lse.narrow(1, 0, 10).fill_(-kInf);
    a.out.narrow(1, 0, 10).zero_();
    b.lse.narrow(1, 10, 10).fill_(-kInf);
    b.out.narrow(1, 10, 10).zero_();
    a.lse.narrow(1, 20, 10).fill_(-kInf);
    a.out.narrow(1, 20, 10).zero_();
    b.lse.narrow(1, 20, 10).fill_(-kInf);
    b.out.narrow(1, 20, 10).zero_();
    kiv::PartialAttention want = kiv::MergeAttentionReference(a, b);
    kiv::PartialAttention got = kiv::MergeAttention(a, b);
    CHECK((got.out.scalar_type() == dtype));
    CHECK(torch::equal(got.lse, want.lse));
    const float diff =
        (got.out.to(torch::kFloat) - want.out.to(torch::kFloat)).abs().max().item<float>();
    // Against float64 arithmetic: which of the two is closer to the exact merge.
    torch::Tensor la = a.lse.to(torch::kDouble), lb = b.lse.to(torch::kDouble);
    torch::Tensor l = torch::logaddexp(la, lb);
    torch::Tensor safe = torch::where(torch::isinf(l), torch::zeros_like(l), l);
    torch::Tensor exact = a.out.to(torch::kDouble) * torch::exp(la - safe).unsqueeze(-1) +
                          b.out.to(torch::kDouble) * torch::exp(lb - safe).unsqueeze(-1);
    const double err_got = (got.out.to(torch::kDouble) - exact).abs().max().item<double>();
    const double err_want = (want.out.to(torch::kDouble) - exact).abs().max().item<double>();
    MESSAGE("merge max |out diff| " << diff << "; vs float64: new " << err_got << ", reference "
                                    << err_want);
    if (dtype == torch::kFloat) {
      CHECK(err_got <= 1e-6);
      CHECK(diff <= 2e-5f);
    } else {
      // One bf16 ulp at |out| < 4 is 2^-6.
      CHECK(diff <= 1.0f / 64);
    }
    CHECK(torch::equal(got.out.narrow(1, 0, 10), b.out.narrow(1, 0, 10)));
    CHECK(torch::equal(got.out.narrow(1, 10, 10), a.out.narrow(1, 10, 10)));
    CHECK(got.out.narrow(1, 20, 10).abs().max().item<float>() == 0.0f);
    CHECK(torch::all(got.lse.narrow(1, 20, 10) == -kInf).item<bool>());
  }
}
