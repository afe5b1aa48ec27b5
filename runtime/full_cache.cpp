#include "runtime/full_cache.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cassert>
#include <cmath>

namespace kiv {
namespace {

// Float32 scores per query block. On the CPU a 4 MB block stays in cache across the softmax's
// passes (5x faster than one large block for 1K x 1K on 2 cores); on a GPU larger blocks mean
// fewer kernel launches.
constexpr int64_t kScoreBlockElementsCpu = int64_t{1} << 20;
constexpr int64_t kScoreBlockElementsGpu = int64_t{1} << 25;
constexpr int64_t kMinCapacity = 256;

}  // namespace

PartialAttention AttentionWithLse(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  int64_t causal_offset) {
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

PartialAttention MergeAttention(const PartialAttention& a, const PartialAttention& b) {
  at::Tensor lse = at::logaddexp(a.lse, b.lse);
  // Both parts empty: lse = -inf; keep the weights at 0 instead of exp(nan).
  at::Tensor safe = at::where(at::isinf(lse), at::zeros_like(lse), lse);
  at::Tensor wa = at::exp(a.lse - safe).unsqueeze(-1), wb = at::exp(b.lse - safe).unsqueeze(-1);
  PartialAttention r;
  r.out = (a.out.to(at::kFloat) * wa + b.out.to(at::kFloat) * wb).to(a.out.scalar_type());
  r.lse = lse;
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
