#include "runtime/full_cache.h"

#include <torch/torch.h>

#include <algorithm>
#include <cassert>
#include <cmath>

namespace kiv {
namespace {

// Scores of one query block stay near this many float32 elements (64 MB).
constexpr int64_t kScoreBlockElements = int64_t{1} << 24;
constexpr int64_t kMinCapacity = 256;

}  // namespace

PartialAttention AttentionWithLse(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  int64_t causal_offset) {
  assert(q.dim() == 3 && k.dim() == 3 && v.dim() == 3);
  const int64_t h_q = q.size(0), n = q.size(1), d = q.size(2);
  const int64_t h_kv = k.size(0), t = k.size(1);
  assert(h_q % h_kv == 0 && k.size(2) == d && v.size(0) == h_kv && v.size(1) == t);
  const int64_t g = h_q / h_kv;
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  if (n == 0)
    return {at::zeros({h_q, 0, d}, q.options()), at::zeros({h_q, 0}, q.options().dtype(at::kFloat))};
  const at::Tensor kf = k.to(at::kFloat), vf = v.to(at::kFloat);
  const int64_t block = std::max<int64_t>(1, kScoreBlockElements / std::max<int64_t>(1, h_q * t));
  std::vector<at::Tensor> outs, lses;
  for (int64_t i0 = 0; i0 < n; i0 += block) {
    const int64_t b = std::min(block, n - i0);
    // Keys no query of the block can see are left out of the product.
    const int64_t visible =
        causal_offset == kNoCausalMask
            ? t
            : std::clamp<int64_t>(i0 + b + std::min(causal_offset, t), 0, t);
    if (visible == 0) {
      outs.push_back(at::zeros({h_q, b, d}, kf.options()));
      lses.push_back(at::full({h_q, b}, -std::numeric_limits<float>::infinity(), kf.options()));
      continue;
    }
    // [H_q, b, d] → [H_kv, g*b, d]: one batched product per kv-head, no repeat of the keys.
    at::Tensor qb = q.narrow(1, i0, b).to(at::kFloat).reshape({h_kv, g * b, d});
    at::Tensor kb = kf.narrow(1, 0, visible), vb = vf.narrow(1, 0, visible);
    at::Tensor s = at::bmm(qb, kb.transpose(1, 2)) * scale;  // [H_kv, g*b, visible]
    if (causal_offset != kNoCausalMask) {
      at::Tensor qi = at::arange(i0, i0 + b, s.options().dtype(at::kLong)).unsqueeze(1);
      at::Tensor kj = at::arange(0, visible, s.options().dtype(at::kLong)).unsqueeze(0);
      at::Tensor hidden = (kj > qi + causal_offset).repeat({g, 1});  // [g*b, visible]
      s = s.masked_fill(hidden, -std::numeric_limits<float>::infinity());
    }
    at::Tensor m = std::get<0>(s.max(-1, /*keepdim=*/true));
    m = at::where(at::isinf(m), at::zeros_like(m), m);  // rows that see nothing: exp → 0
    at::Tensor e = at::exp(s - m);
    at::Tensor sum = e.sum(-1, /*keepdim=*/true);
    at::Tensor o = at::bmm(e, vb) / sum.clamp_min(std::numeric_limits<float>::min());
    outs.push_back(o.view({h_q, b, d}));
    lses.push_back((m + at::log(sum)).view({h_q, b}));
  }
  PartialAttention r;
  r.out = (outs.size() == 1 ? outs[0] : at::cat(outs, 1)).to(q.scalar_type());
  r.lse = lses.size() == 1 ? lses[0] : at::cat(lses, 1);
  return r;
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
