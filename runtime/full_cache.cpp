#include "runtime/full_cache.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstdlib>
#include <optional>
#include <string_view>

namespace kiv {
namespace {

// Float32 scores per query block. On the CPU a 4 MB block stays in cache across the softmax's
// passes (5x faster than one large block for 1K x 1K on 2 cores); on a GPU larger blocks mean
// fewer kernel launches.
constexpr int64_t kScoreBlockElementsCpu = int64_t{1} << 20;
constexpr int64_t kScoreBlockElementsGpu = int64_t{1} << 25;
constexpr int64_t kMinCapacity = 256;
// Queries per head from which AttentionWithLse takes the fused kernel on CUDA.
constexpr int64_t kFusedMinQueries = 64;

}  // namespace

PartialAttention AttentionWithLseReference(const at::Tensor& q, const at::Tensor& k,
                                           const at::Tensor& v, int64_t causal_offset) {
  assert(q.dim() == 3 && k.dim() == 3 && v.dim() == 3);
  const int64_t h_q = q.size(0), n = q.size(1), d = q.size(2);
  const int64_t h_kv = k.size(0), t = k.size(1);
  assert(h_q % h_kv == 0 && k.size(2) == d && v.size(0) == h_kv && v.size(1) == t);
  const int64_t g = h_q / h_kv;
  if (n == 0)
    return {at::zeros({h_q, 0, d}, q.options()),
            at::zeros({h_q, 0}, q.options().dtype(at::kFloat))};
  const float kInf = std::numeric_limits<float>::infinity();
  // The scale goes on q (n*d products, not n*T); [H_q, n, d] → [H_kv, g, n, d].
  const at::Tensor qs =
      (q.to(at::kFloat) * (1.0 / std::sqrt(static_cast<double>(d)))).view({h_kv, g, n, d});
  const at::Tensor kf = k.to(at::kFloat), vf = v.to(at::kFloat);
  const int64_t budget = q.is_cpu() ? kScoreBlockElementsCpu : kScoreBlockElementsGpu;
  const int64_t block = std::max<int64_t>(1, budget / std::max<int64_t>(1, h_q * t));
  // An offset >= T hides nothing and one below -n hides everything: clamping keeps the index
  // arithmetic below far from overflow.
  const bool masked = causal_offset < t;
  const int64_t offset = masked ? std::max<int64_t>(causal_offset, -n) : 0;
  at::Tensor out = at::empty({h_kv, g, n, d}, kf.options());
  at::Tensor lse = at::empty({h_kv, g, n}, kf.options());
  for (int64_t i0 = 0; i0 < n; i0 += block) {
    const int64_t b = std::min(block, n - i0);
    at::Tensor ob = out.narrow(2, i0, b), lb = lse.narrow(2, i0, b);
    // Query i0 + r sees keys [0, i0 + r + causal_offset]; keys no query of the block sees are
    // left out of the products.
    const int64_t visible = masked ? std::clamp<int64_t>(i0 + b + offset, 0, t) : t;
    if (visible == 0) {
      ob.zero_();
      lb.fill_(-kInf);
      continue;
    }
    // [H_kv, g*b, d] x [H_kv, d, visible]: one batched product per kv-head, no repeat of keys.
    at::Tensor s = at::bmm(qs.narrow(2, i0, b).reshape({h_kv, g * b, d}),
                           kf.narrow(1, 0, visible).transpose(1, 2));
    // Only keys after the block's first query's horizon can be hidden: mask that strip in place.
    const int64_t first_hidden =
        masked ? std::clamp<int64_t>(i0 + offset + 1, 0, visible) : visible;
    if (first_hidden < visible) {
      const int64_t w = visible - first_hidden;
      at::Tensor qi = at::arange(i0, i0 + b, s.options().dtype(at::kLong)).unsqueeze(1);
      at::Tensor kj = at::arange(first_hidden, visible, s.options().dtype(at::kLong));
      s.view({h_kv, g, b, visible})
          .narrow(3, first_hidden, w)
          .masked_fill_(kj.unsqueeze(0) > qi + offset, -kInf);
    }
    at::Tensor m = std::get<0>(s.max(-1, /*keepdim=*/true));
    m.masked_fill_(at::isinf(m), 0.0);  // rows that see nothing: exp(-inf - 0) = 0
    s.sub_(m).exp_();
    at::Tensor sum = s.sum(-1, /*keepdim=*/true);
    at::Tensor o = at::bmm(s, vf.narrow(1, 0, visible));
    o.div_(sum.clamp_min(std::numeric_limits<float>::min()));
    ob.copy_(o.view({h_kv, g, b, d}));
    lb.copy_((m + at::log(sum)).view({h_kv, g, b}));
  }
  return {out.view({h_q, n, d}).to(q.scalar_type()), lse.view({h_q, n})};
}

namespace {

// One fused-kernel call: every query of q [H_kv, g, m, d] (float32) over k, v [H_kv, tk, d]
// (float32), either unmasked or bottom-right causal (query r sees keys j <= r + tk - m, which
// needs tk >= m so that every query sees a key). Returns out [H_kv, g, m, d], lse [H_kv, g, m].
PartialAttention FusedBlock(const at::Tensor& qf, const at::Tensor& kf, const at::Tensor& vf,
                            bool bottom_right_causal) {
  const int64_t h_kv = qf.size(0), g = qf.size(1), m = qf.size(2), d = qf.size(3);
  const int64_t tk = kf.size(1);
  assert(!bottom_right_causal || tk >= m);
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  if (qf.is_cuda()) {
    // The memory-efficient (CUTLASS) kernel in [B, M, H, K]: batch = kv-head, heads = the group,
    // keys expanded over the group with head stride 0 (the kernel reads strides; no copy).
    // _efficient_attention_forward rather than _scaled_dot_product_efficient_attention: the
    // latter's is_causal is top-left aligned, this one takes CausalFromBottomRight (2).
    // float32 runs on tensor cores as 3xTF32 (OpMultiplyAddFastF32), about float32's accuracy.
    constexpr int64_t kNoMask = 0, kCausalFromBottomRight = 2;
    auto [out, lse, seed, offset, max_q, max_k] = at::_efficient_attention_forward(
        qf.transpose(1, 2), kf.unsqueeze(2).expand({h_kv, tk, g, d}),
        vf.unsqueeze(2).expand({h_kv, tk, g, d}), /*bias=*/std::nullopt,
        /*cu_seqlens_q=*/std::nullopt, /*cu_seqlens_k=*/std::nullopt,
        /*max_seqlen_q=*/std::nullopt, /*max_seqlen_k=*/std::nullopt, /*dropout_p=*/0.0,
        bottom_right_causal ? kCausalFromBottomRight : kNoMask, /*compute_log_sumexp=*/true,
        scale);
    // out [H_kv, m, g, d]; lse [H_kv, g, m rounded up to 32], padded with +inf.
    return {out.transpose(1, 2), lse.narrow(2, 0, m)};
  }
  // The CPU flash kernel takes [B, H, L, E] with any strides, but its is_causal is top-left
  // aligned: the bottom-right mask goes in as an additive [m, tk] float bias (0 / -inf).
  std::optional<at::Tensor> mask;
  if (bottom_right_causal)
    mask = at::full({m, tk}, -std::numeric_limits<float>::infinity(), qf.options())
               .triu_(tk - m + 1);
  auto [out, lse] = at::_scaled_dot_product_flash_attention_for_cpu(
      qf, kf.unsqueeze(1).expand({h_kv, g, tk, d}), vf.unsqueeze(1).expand({h_kv, g, tk, d}),
      /*dropout_p=*/0.0, /*is_causal=*/false, mask, scale);
  return {out, lse};
}

}  // namespace

bool FusedAttentionApplies(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  // Head dimensions the CUTLASS kernel has float32 variants for with 16-byte-aligned rows; the
  // CPU flash kernel takes any, but one rule for both keeps the CPU tests honest for the GPU.
  const int64_t d = q.size(2);
  const bool floating = at::isFloatingType(q.scalar_type()) &&
                        at::isFloatingType(k.scalar_type()) && at::isFloatingType(v.scalar_type());
  return (q.is_cuda() || q.is_cpu()) && floating && d % 8 == 0 && d >= 8 && d <= 256;
}

PartialAttention AttentionWithLseFused(const at::Tensor& q, const at::Tensor& k,
                                       const at::Tensor& v, int64_t causal_offset) {
  assert(q.dim() == 3 && k.dim() == 3 && v.dim() == 3 && FusedAttentionApplies(q, k, v));
  const int64_t h_q = q.size(0), n = q.size(1), d = q.size(2);
  const int64_t h_kv = k.size(0), t = k.size(1);
  assert(h_q % h_kv == 0 && k.size(2) == d && v.size(0) == h_kv && v.size(1) == t);
  const int64_t g = h_q / h_kv;
  const at::TensorOptions f32 = q.options().dtype(at::kFloat);
  if (n == 0 || t == 0)
    return {at::zeros({h_q, n, d}, q.options()),
            at::full({h_q, n}, -std::numeric_limits<float>::infinity(), f32)};
  // Query r sees keys [0, min(T, r + offset + 1)). Three row ranges, so that no kernel sees a
  // row without keys (the kernels give such a row lse 0, not -inf) and a bottom-right causal
  // mask over the first tk keys says exactly that:
  //   [0, hidden)       r + offset < 0: nothing visible; out 0, lse -inf without a kernel;
  //   [hidden, full)    r + offset < T: causal over keys [0, full + offset), bottom-right;
  //   [full, n)         every key visible, no mask (empty unless offset > T - n).
  // A chunk after P stored keys (offset P, T = P + n) is all in the middle range: one call.
  const bool masked = causal_offset < t;
  const int64_t offset = masked ? std::max<int64_t>(causal_offset, -n) : 0;  // no overflow
  const int64_t hidden = masked ? std::clamp<int64_t>(-offset, 0, n) : 0;
  const int64_t full = masked ? std::clamp<int64_t>(t - offset, hidden, n) : 0;
  const at::Tensor qf = q.to(at::kFloat).view({h_kv, g, n, d});
  const at::Tensor kf = k.to(at::kFloat), vf = v.to(at::kFloat);
  struct Range {
    int64_t begin, end, keys;
    bool causal;
  };
  const Range ranges[] = {{hidden, full, full + offset, true}, {full, n, t, false}};
  if (hidden == 0 && (full == n || full == 0)) {
    const Range& r = full == n ? ranges[0] : ranges[1];
    PartialAttention a = FusedBlock(qf, kf.narrow(1, 0, r.keys), vf.narrow(1, 0, r.keys), r.causal);
    return {a.out.reshape({h_q, n, d}).to(q.scalar_type()), a.lse.reshape({h_q, n})};
  }
  at::Tensor out = at::empty({h_kv, g, n, d}, f32), lse = at::empty({h_kv, g, n}, f32);
  out.narrow(2, 0, hidden).zero_();
  lse.narrow(2, 0, hidden).fill_(-std::numeric_limits<float>::infinity());
  for (const Range& r : ranges) {
    if (r.begin == r.end) continue;
    PartialAttention a = FusedBlock(qf.narrow(2, r.begin, r.end - r.begin),
                                    kf.narrow(1, 0, r.keys), vf.narrow(1, 0, r.keys), r.causal);
    out.narrow(2, r.begin, r.end - r.begin).copy_(a.out);
    lse.narrow(2, r.begin, r.end - r.begin).copy_(a.lse);
  }
  return {out.view({h_q, n, d}).to(q.scalar_type()), lse.view({h_q, n})};
}

PartialAttention AttentionWithLse(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  int64_t causal_offset) {
  // KIV_ATTENTION_REFERENCE=1 forces the unfused path, for A/B runs.
  static const bool reference = [] {
    const char* e = std::getenv("KIV_ATTENTION_REFERENCE");
    return e != nullptr && std::string_view(e) != "0";
  }();
  // Fused on CUDA for chunks of queries only. A decode step's few queries (a full cache's decode)
  // ran 2x slower through it (the float copies of every key, 9 blocks of the kernel), and on the
  // CPU the flash kernel's rounding turned the CI needle (tests/cli/model_test.cpp) from a pass
  // into a miss: the CPU keeps the reference, the path every CPU fidelity number was measured on.
  if (!reference && q.is_cuda() && q.size(1) >= kFusedMinQueries && FusedAttentionApplies(q, k, v))
    return AttentionWithLseFused(q, k, v, causal_offset);
  return AttentionWithLseReference(q, k, v, causal_offset);
}

PartialAttention MergeAttentionReference(const PartialAttention& a, const PartialAttention& b) {
  at::Tensor lse = at::logaddexp(a.lse, b.lse);
  // Both parts empty: lse = -inf; keep the weights at 0 instead of exp(nan).
  at::Tensor safe = at::where(at::isinf(lse), at::zeros_like(lse), lse);
  at::Tensor wa = at::exp(a.lse - safe).unsqueeze(-1), wb = at::exp(b.lse - safe).unsqueeze(-1);
  PartialAttention r;
  r.out = (a.out.to(at::kFloat) * wa + b.out.to(at::kFloat) * wb).to(a.out.scalar_type());
  r.lse = lse;
  return r;
}

PartialAttention MergeAttention(const PartialAttention& a, const PartialAttention& b) {
  // exp(a.lse - logaddexp(a.lse, b.lse)) = sigmoid(a.lse - b.lse), and the other weight is its
  // complement, so out = lerp(b.out, a.out, wa): five launches instead of the reference's
  // eleven. Both parts empty: the difference is nan, the weight 0, and out = b.out = 0.
  at::Tensor wa = at::sigmoid(a.lse - b.lse).nan_to_num_(0.0).unsqueeze(-1);
  PartialAttention r;
  r.out = at::lerp(b.out.to(at::kFloat), a.out.to(at::kFloat), wa).to(a.out.scalar_type());
  r.lse = at::logaddexp(a.lse, b.lse);
  return r;
}

FullCache::FullCache(int64_t num_layers) : layers_(static_cast<size_t>(num_layers)) {}

FullCache::~FullCache() = default;

at::Tensor FullCache::Attend(int64_t layer, const at::Tensor& q, const at::Tensor& k,
                             const at::Tensor& v, [[maybe_unused]] int64_t first_position) {
  assert(layer >= 0 && layer < static_cast<int64_t>(layers_.size()));
  assert(first_position == length_ && "a full cache stores every position, without gaps");
  LayerStore& s = layers_[static_cast<size_t>(layer)];
  assert(s.stored == length_ && "each layer sees each chunk once");
  const int64_t n = k.size(1), need = length_ + n;
  const int64_t capacity = s.k.defined() ? s.k.size(1) : 0;
  if (need > capacity) {
    // Doubling keeps the copying amortised O(1) per token (a cat per chunk would be O(T) each).
    const int64_t grown = std::max({need, 2 * capacity, kMinCapacity});
    at::Tensor nk = at::empty({k.size(0), grown, k.size(2)}, k.options());
    at::Tensor nv = at::empty({v.size(0), grown, v.size(2)}, v.options());
    if (length_ > 0) {
      nk.narrow(1, 0, length_).copy_(s.k.narrow(1, 0, length_));
      nv.narrow(1, 0, length_).copy_(s.v.narrow(1, 0, length_));
    }
    s.k = nk;
    s.v = nv;
  }
  s.k.narrow(1, length_, n).copy_(k);
  s.v.narrow(1, length_, n).copy_(v);
  s.stored = need;
  return AttentionWithLse(q, s.k.narrow(1, 0, need), s.v.narrow(1, 0, need), length_).out;
}

void FullCache::EndChunk(const std::vector<int64_t>& token_ids) {
  const int64_t n = static_cast<int64_t>(token_ids.size());
  for ([[maybe_unused]] const LayerStore& s : layers_)
    assert(s.stored == length_ + n && "EndChunk before every layer attended the chunk");
  length_ += n;
  token_ids_.insert(token_ids_.end(), token_ids.begin(), token_ids.end());
}

at::Tensor FullCache::keys(int64_t layer) const {
  const LayerStore& s = layers_[static_cast<size_t>(layer)];
  return s.k.defined() ? s.k.narrow(1, 0, length_) : at::Tensor();
}

at::Tensor FullCache::values(int64_t layer) const {
  const LayerStore& s = layers_[static_cast<size_t>(layer)];
  return s.v.defined() ? s.v.narrow(1, 0, length_) : at::Tensor();
}

}  // namespace kiv
