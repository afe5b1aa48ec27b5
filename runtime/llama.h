// The Llama-family model runner (Llama incl. llama3 RoPE scaling, Mistral, Qwen2, SmolLM2): one
// forward pass over a chunk of tokens, with attention delegated to a KvCache (runtime/kv_cache.h)
// so the same code runs over the full cache and the tiered one.
//
// It computes what transformers' LlamaForCausalLM computes, op for op where rounding depends on
// it: RMSNorm in float32, RoPE angles in float32 (inv_freq x position), rotate_half pairing
// dimension i with i + d/2, SwiGLU, lm_head tied to the embedding when the config says so.
// Weights stay in the mmapped safetensors when the file's dtype and device already match (fp32 on
// the CPU); otherwise they are converted once at load (bf16 on CUDA, where q/k/v and gate/up are
// also concatenated, one matmul for each group on the fused kernel path).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "runtime/model_config.h"
#include "storage/status.h"

namespace kiv {

class KvCache;

// RoPE inverse frequencies [head_dim / 2] float32 on the CPU, computed with the same tensor ops
// in the same order as transformers (compute_default_rope_parameters and
// _compute_llama3_parameters / _compute_linear_scaling_rope_parameters), so they match its
// float32 values bit for bit.
at::Tensor RopeInverseFrequencies(const ModelConfig& config);

// The dtype kiv runs a model in on `device`: float32 on the CPU, bfloat16 on CUDA; the environment
// variable KIV_DTYPE (float32 or bfloat16) overrides it.
at::ScalarType DefaultDtype(c10::Device device);

class LlamaModel {
 public:
  // Which positions of a chunk Forward returns logits for. Prefill usually needs only the last
  // one, and the lm_head over every position is a large share of prefill time.
  enum class Logits { kAll, kLast };

  // Reads `dir`/config.json and the safetensors weights. Checks every weight's shape against
  // the config; names a missing tensor or a wrong shape.
  static Result<std::unique_ptr<LlamaModel>> Load(const std::string& dir, c10::Device device,
                                                  at::ScalarType dtype);
  ~LlamaModel();

  // Runs `tokens` (non-empty ids < vocab_size) at absolute positions [cache.length(),
  // cache.length() + n): for each layer, q/k/v after RoPE go to cache.Attend (in the run dtype,
  // as strided [H, n, d] views of [n, H', d] data, H' ≥ H: a cache must not assume they are
  // contiguous); then cache.EndChunk(tokens). Returns float32 logits on the model's device,
  // [n, vocab] for kAll and [1, vocab] (the chunk's last token) for kLast.
  at::Tensor Forward(const std::vector<int64_t>& tokens, KvCache& cache,
                     Logits which = Logits::kAll);

  // Decode steps (Forward of one token) on CUDA replay CUDA graphs of the model's own operations:
  // one graph before the first layer's attention (embedding, RoPE angles, q/k/v), one between
  // each pair of layers (o_proj, MLP, the next layer's q/k/v) and one after the last (the head),
  // captured on the first decode step after this call. The cache's Attend runs eagerly between
  // them, so its shapes may change from step to step. The logits are the eager path's bit for
  // bit (the same operations on the same values). An error on the CPU, or where this build's
  // LibTorch has no CUDA.
  Status EnableDecodeGraphs(bool on);
  bool decode_graphs() const { return use_graphs_; }
  // How many times a whole decode step (the cache's attention included) was captured: when the
  // cache can capture its step (KvCache::PrepareCapturedDecode; the tiered cache on the GPU cold
  // tier once C tokens are cold), one graph replays all of it, captured again only when the cache
  // says its buffers moved.
  uint64_t whole_step_captures() const { return whole_captures_; }

  const ModelConfig& config() const { return config_; }
  c10::Device device() const { return device_; }
  at::ScalarType dtype() const { return dtype_; }
  // SafetensorsWeights::HashWeights of the loaded files (computed once at load).
  uint64_t weights_hash() const { return weights_hash_; }

 private:
  struct Layer;
  // The residual stream between layers, [n, hidden]: r + add, with the add left to the next
  // RMSNorm, which does both in one kernel (AddRmsNorm); add undefined: r alone (the embedding).
  struct Residual {
    at::Tensor r, add;
  };
  LlamaModel(ModelConfig config, c10::Device device, at::ScalarType dtype);
  at::Tensor RopeCosSin(const at::Tensor& positions, at::Tensor* sin) const;
  // The pieces of a layer around the cache's Attend, shared by the eager and the graphed paths.
  // QkvBlock: the layer's input `in`; *h = its sum (the layer's residual input), q [H_q, n, d],
  // k and v [H_kv, n, d] after RoPE.
  void QkvBlock(int64_t layer, const Residual& in, const at::Tensor& cos, const at::Tensor& sin,
                at::Tensor* h, at::Tensor* q, at::Tensor* k, at::Tensor* v) const;
  // The residual stream after layer `layer`, from its input h and the attention output
  // [H_q, n, d].
  Residual AfterAttention(int64_t layer, const at::Tensor& h, const at::Tensor& attn) const;
  at::Tensor Head(const Residual& in) const;  // final norm and lm_head: float32 logits
  // Embedding and every layer for `ids` [n] at `positions` [n] (int64 on the device), the cache's
  // Attend in each: the residual stream before the final norm. Forward and the whole-step graph.
  Residual Layers(const at::Tensor& ids, const at::Tensor& positions, KvCache& cache,
                  int64_t first_position);
  at::Tensor ForwardGraphed(int64_t token, KvCache& cache);

  struct DecodeGraphs;

  ModelConfig config_;
  c10::Device device_;
  at::ScalarType dtype_;
  uint64_t weights_hash_ = 0;
  std::vector<Layer> layers_;
  at::Tensor embed_;     // [vocab, hidden]
  at::Tensor norm_;      // [hidden]
  at::Tensor lm_head_;   // [vocab, hidden]; the same tensor as embed_ when tied
  at::Tensor inv_freq_;  // [head_dim / 2] float32 on device_
  bool use_graphs_ = false;
  std::unique_ptr<DecodeGraphs> graphs_;  // captured on the first graphed decode step
  uint64_t whole_captures_ = 0;
};

}  // namespace kiv
