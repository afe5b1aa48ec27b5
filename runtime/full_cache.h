// The plain full KV cache, the fidelity baseline: every token's keys and values stay exact in
// memory and every query attends to all of them. Also the attention primitive both caches use,
// with the log-sum-exp that lets partial attentions over disjoint key sets be merged exactly.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <limits>
#include <vector>

#include "runtime/kv_cache.h"

namespace kiv {

// Softmax attention of n queries over T keys, and the normaliser of that softmax.
struct PartialAttention {
  at::Tensor out;  // [H_q, n, d] in q's dtype: softmax-weighted sum of the visible values
  at::Tensor lse;  // [H_q, n] float32: natural log of the sum of exp(score) over visible keys
};

// causal_offset for "every key is visible".
inline constexpr int64_t kNoCausalMask = std::numeric_limits<int64_t>::max();

// The exact contract:
// - q: [H_q, n, d]; k, v: [H_kv, T, d]; H_q a multiple of H_kv; query head h reads kv-head
//   h / (H_q / H_kv) (consecutive query heads share a kv-head, as transformers' repeat_kv).
//   Any dtype and device (all three alike); strided views are fine.
// - Query i sees key j iff j <= i + causal_offset. A chunk of n new tokens whose keys are stored
//   after P earlier ones (k = [earlier P | chunk n]) uses causal_offset = P; kNoCausalMask makes
//   every key visible (keys that all precede the queries, e.g. retrieved ones).
// - score(i, j) = (q_i / sqrt(d)) . k_j, computed in float32 whatever the input dtype;
//   lse_i = log(sum over visible j of exp(score(i, j))); out_i = sum over visible j of
//   exp(score(i, j) - lse_i) v_j, accumulated in float32 and returned in q's dtype.
// - A query that sees no key (T = 0, or all masked) gets out = 0 and lse = -inf, so merging it
//   with anything leaves the other part unchanged.
// Runs AttentionWithLseFused on CUDA for 64 or more queries per head where
// FusedAttentionApplies (prefill chunks), else AttentionWithLseReference (decode steps, the CPU);
// KIV_ATTENTION_REFERENCE=1 in the environment (read once) forces the reference, for A/B runs.
PartialAttention AttentionWithLse(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  int64_t causal_offset = kNoCausalMask);

// The contract above with LibTorch operations: queries in blocks (the float32 scores of one block
// are 4 MB on the CPU, 128 MB on a GPU), keys that no query of a block can see skipped.
PartialAttention AttentionWithLseReference(const at::Tensor& q, const at::Tensor& k,
                                           const at::Tensor& v,
                                           int64_t causal_offset = kNoCausalMask);

// The contract above with ATen's fused attention kernels, which return the log-sum-exp: on CUDA
// the memory-efficient (CUTLASS) kernel, on the CPU the flash kernel; inputs converted to float32
// first. Equal to the reference up to summation order. One kernel call for a chunk after stored
// keys (T = offset + n), at most two otherwise; rows that see no key are filled without a kernel.
// Requires FusedAttentionApplies(q, k, v).
PartialAttention AttentionWithLseFused(const at::Tensor& q, const at::Tensor& k,
                                       const at::Tensor& v,
                                       int64_t causal_offset = kNoCausalMask);

// Whether AttentionWithLseFused takes these inputs: CPU or CUDA, floating point, head dimension
// a multiple of 8 in [8, 256].
bool FusedAttentionApplies(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);

// The attention over the union of two disjoint key sets from the attentions over each:
// lse = logaddexp(a.lse, b.lse), out = exp(a.lse - lse) a.out + exp(b.lse - lse) b.out
// (in float32, returned in a.out's dtype). Equal to one softmax over the union up to rounding.
// Computed as lse = logaddexp(a.lse, b.lse), out = lerp(b.out, a.out, sigmoid(a.lse - b.lse));
// MergeAttentionReference is the formula above, kept for the tests.
PartialAttention MergeAttention(const PartialAttention& a, const PartialAttention& b);
PartialAttention MergeAttentionReference(const PartialAttention& a, const PartialAttention& b);

class FullCache : public KvCache {
 public:
  explicit FullCache(int64_t num_layers);
  ~FullCache() override;

  // Appends k and v to the layer's store (first_position must equal length(): a full cache has
  // no gaps) and returns AttentionWithLse(q, stored keys, stored values, length()).out.
  at::Tensor Attend(int64_t layer, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                    int64_t first_position) override;
  void EndChunk(const std::vector<int64_t>& token_ids) override;
  int64_t length() const override { return length_; }

  // The stored keys and values of `layer`, [H_kv, length(), d] views (keys after RoPE).
  at::Tensor keys(int64_t layer) const;
  at::Tensor values(int64_t layer) const;
  const std::vector<int64_t>& token_ids() const { return token_ids_; }

 private:
  struct LayerStore {
    at::Tensor k, v;     // [H_kv, capacity, d]; capacity doubles when full
    int64_t stored = 0;  // tokens written, = length_ between chunks
  };
  std::vector<LayerStore> layers_;
  int64_t length_ = 0;
  std::vector<int64_t> token_ids_;
};

}  // namespace kiv
