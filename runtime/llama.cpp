#include "runtime/llama.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <cassert>
#include <cmath>
#include <optional>

#if KIV_TORCH_CUDA
#include <ATen/cuda/CUDAGraph.h>
#include <functional>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#endif

#include "runtime/kv_cache.h"
#include "runtime/safetensors.h"

#if defined(KIV_HAVE_KERNELS) && KIV_TORCH_CUDA
#include <c10/cuda/CUDAStream.h>

#include <cstdlib>
#include <string_view>
#include <initializer_list>

#include "kernels/layer.h"
#define KIV_FUSED_LAYER 1
#endif

namespace kiv {

struct LlamaModel::Layer {
  at::Tensor input_norm;            // [hidden]
  at::Tensor q_w, k_w, v_w, o_w;    // [H_q*d, hidden], [H_kv*d, hidden] x2, [hidden, H_q*d]
  at::Tensor q_b, k_b, v_b, o_b;    // biases, undefined when the model has none
  at::Tensor post_norm;             // [hidden]
  at::Tensor gate_w, up_w, down_w;  // [inter, hidden] x2, [hidden, inter]
  at::Tensor gate_b, up_b, down_b;  // undefined unless mlp_bias
  // With the fused layer kernels on CUDA: q/k/v and gate/up concatenated by rows, so the fused
  // path runs one matmul for each group; q_w ... up_b are then row views of these (one copy in
  // memory). Undefined elsewhere.
  at::Tensor qkv_w, qkv_b;          // [(H_q + 2 H_kv)*d, hidden], [(H_q + 2 H_kv)*d]
  at::Tensor gate_up_w, gate_up_b;  // [2 inter, hidden], [2 inter]
};

// The static buffers the graphs read and write, and the graphs. Segment graph s (0 ≤ s ≤ L) runs:
//   s = 0:      embedding(ids); cos, sin from pos; h and q/k/v of layer 0
//   0 < s < L:  AfterAttention(s − 1, h, attn[s − 1]); h and q/k/v of layer s (the MLP's residual
//               add in the same kernel as input_layernorm)
//   s = L:      AfterAttention(L − 1, ...); logits = Head(...)
// q/k/v[l] are outputs of graph l (tensors of its memory pool, fixed addresses); attn[l] is
// filled from the cache's eager Attend before graph l + 1 replays. When the cache can capture its
// decode step (KvCache::PrepareCapturedDecode), one graph runs all of it, Forward's layers with
// the cache's Attend, with an output of its own (a separate pool: the segments' stay valid beside
// it) and none of the segments' buffers.
struct LlamaModel::DecodeGraphs {
#if KIV_TORCH_CUDA
  struct Outputs {
    std::vector<at::Tensor> q, k, v;
    at::Tensor logits;
  };
  at::Tensor ids, pos;  // [1] int64
  at::Tensor h, cos, sin;  // the segments' only
  std::vector<at::Tensor> attn;
  Outputs segment_out;
  at::Tensor whole_logits;  // the whole step's output
  std::vector<std::unique_ptr<at::cuda::CUDAGraph>> segments;  // captured when first needed
  std::unique_ptr<at::cuda::CUDAGraph> whole;
  uint64_t whole_key = 0;
  std::optional<c10::cuda::CUDAStream> side;  // captures run here (cuBLAS is set up on it)
#endif
};

namespace {

// Loads one weight, checks its shape, and moves it to the run's device and dtype (a no-op, so
// still a view of the mapping, when they already match).
class WeightLoader {
 public:
  WeightLoader(const SafetensorsWeights& w, c10::Device device, at::ScalarType dtype)
      : w_(w), device_(device), dtype_(dtype) {}

  Status Get(const std::string& name, std::vector<int64_t> shape, at::Tensor* out) const {
    Result<at::Tensor> t = w_.Tensor(name);
    if (!t.ok()) return t.status();
    if (t->sizes().vec() != shape)
      return Status::Corruption(w_.source() + ": tensor '" + name + "' has shape " +
                                ShapeString(t->sizes().vec()) + ", the config implies " +
                                ShapeString(shape));
    *out = t->to(device_, dtype_);
    return Status::Ok();
  }
  Status GetIf(bool present, const std::string& name, std::vector<int64_t> shape,
               at::Tensor* out) const {
    return present ? Get(name, std::move(shape), out) : Status::Ok();
  }

 private:
  static std::string ShapeString(const std::vector<int64_t>& s) {
    std::string r = "[";
    for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
    return r + "]";
  }
  const SafetensorsWeights& w_;
  c10::Device device_;
  at::ScalarType dtype_;
};

#if KIV_FUSED_LAYER
// Whether RMSNorm and RoPE on `x` run as one kernel each (kernels/layer.h): on CUDA in bf16 or
// float32, unless KIV_UNFUSED_LAYER is set (the LibTorch operations, for comparison).
bool Fused(const at::Tensor& x) {
  static const bool off = std::getenv("KIV_UNFUSED_LAYER") != nullptr;
  return !off && x.is_cuda() && (x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kFloat);
}
kiv::kernels::DType KernelDtype(const at::Tensor& x) {
  return x.scalar_type() == at::kBFloat16 ? kiv::kernels::DType::kBFloat16
                                          : kiv::kernels::DType::kFloat32;
}

// Replaces `parts` (weights with the same columns, or biases) by consecutive row blocks of one
// new tensor `*whole`, their concatenation. Nothing to do for biases the model has none of.
void ConcatenateRows(std::initializer_list<at::Tensor*> parts, at::Tensor* whole) {
  if (!(*parts.begin())->defined()) return;
  std::vector<at::Tensor> tensors;
  for (const at::Tensor* t : parts) tensors.push_back(*t);
  *whole = at::cat(tensors);
  int64_t row = 0;
  for (at::Tensor* t : parts) {
    const int64_t rows = t->size(0);
    *t = whole->narrow(0, row, rows);
    row += rows;
  }
}

// silu(gate) · up for gate_up [n, 2 inter] (gate_proj's outputs, then up_proj's) in one kernel,
// expected to be bit-exact with at::silu and the multiply (kernels/layer.h says why); those two
// LibTorch operations where the kernel does not apply.
at::Tensor SwiGlu(const at::Tensor& gate_up) {
  const int64_t inter = gate_up.size(1) / 2;
  if (Fused(gate_up) && gate_up.dim() == 2 && gate_up.stride(1) == 1) {
    at::Tensor out = at::empty({gate_up.size(0), inter}, gate_up.options());
    kiv::kernels::SwiGluParams p;
    p.gate_up = gate_up.data_ptr(), p.out = out.data_ptr();
    p.dtype = KernelDtype(gate_up);
    p.rows = uint32_t(gate_up.size(0)), p.inter = uint32_t(inter);
    p.in_stride = uint64_t(gate_up.stride(0));
    std::string error;
    TORCH_CHECK(
        kiv::kernels::LaunchSwiGlu(p, at::cuda::getCurrentCUDAStream().stream(), &error) == 0,
        "SwiGLU kernel: ", error);
    return out;
  }
  return at::silu(gate_up.narrow(1, 0, inter)) * gate_up.narrow(1, inter, inter);
}
#endif

// transformers' LlamaRMSNorm: the statistics in float32, the weight applied in the run dtype.
at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps) {
#if KIV_FUSED_LAYER
  if (Fused(x) && x.dim() == 2 && x.stride(1) == 1 && weight.is_contiguous() &&
      weight.scalar_type() == x.scalar_type()) {
    at::Tensor out = at::empty(x.sizes(), x.options());
    kiv::kernels::RmsNormParams p;
    p.x = x.data_ptr(), p.weight = weight.data_ptr(), p.out = out.data_ptr();
    p.dtype = KernelDtype(x);
    p.rows = uint32_t(x.size(0)), p.dim = uint32_t(x.size(1));
    p.x_stride = uint64_t(x.stride(0));
    p.eps = float(eps);
    std::string error;
    TORCH_CHECK(kiv::kernels::LaunchRmsNorm(p, at::cuda::getCurrentCUDAStream().stream(), &error) == 0,
                "RmsNorm kernel: ", error);
    return out;
  }
#endif
  at::Tensor h = x.to(at::kFloat);
  at::Tensor variance = h.pow(2).mean(-1, /*keepdim=*/true);
  h = h * at::rsqrt(variance + eps);
  return weight * h.to(x.scalar_type());
}

at::Tensor RotateHalf(const at::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

// x · cos + rotate_half(x) · sin for x [n, H, d] (rows of H · d contiguous values), cos and sin
// [n, d]; returned as [H, n, d] (a transposed view of [n, H, d] data).
at::Tensor Rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
#if KIV_FUSED_LAYER
  if (Fused(x) && x.stride(2) == 1 && x.stride(1) == x.size(2) && cos.is_contiguous() &&
      sin.is_contiguous() && cos.scalar_type() == x.scalar_type()) {
    at::Tensor out = at::empty(x.sizes(), x.options());
    kiv::kernels::RopeParams p;
    p.x = x.data_ptr(), p.out = out.data_ptr(), p.cos = cos.data_ptr(), p.sin = sin.data_ptr();
    p.dtype = KernelDtype(x);
    p.rows = uint32_t(x.size(0)), p.heads = uint32_t(x.size(1)), p.head_dim = uint32_t(x.size(2));
    p.x_stride = uint64_t(x.stride(0));
    std::string error;
    TORCH_CHECK(kiv::kernels::LaunchRope(p, at::cuda::getCurrentCUDAStream().stream(), &error) == 0,
                "RoPE kernel: ", error);
    return out.transpose(0, 1);
  }
#endif
  const at::Tensor t = x.transpose(0, 1);
  return t * cos + RotateHalf(t) * sin;
}

// r = h + o into *sum, then transformers' RMSNorm of r: one kernel on the fused path (its norm is
// the RmsNorm kernel's bit for bit), the add and RmsNorm otherwise.
at::Tensor AddRmsNorm(const at::Tensor& h, const at::Tensor& o, const at::Tensor& weight,
                      double eps, at::Tensor* sum) {
#if KIV_FUSED_LAYER
  if (Fused(h) && h.dim() == 2 && h.is_contiguous() && o.is_contiguous() &&
      o.sizes() == h.sizes() && o.scalar_type() == h.scalar_type() && weight.is_contiguous() &&
      weight.scalar_type() == h.scalar_type()) {
    *sum = at::empty(h.sizes(), h.options());
    at::Tensor out = at::empty(h.sizes(), h.options());
    kiv::kernels::AddRmsNormParams p;
    p.h = h.data_ptr(), p.o = o.data_ptr(), p.weight = weight.data_ptr();
    p.sum = sum->data_ptr(), p.out = out.data_ptr();
    p.dtype = KernelDtype(h);
    p.rows = uint32_t(h.size(0)), p.dim = uint32_t(h.size(1));
    p.eps = float(eps);
    std::string error;
    TORCH_CHECK(
        kiv::kernels::LaunchAddRmsNorm(p, at::cuda::getCurrentCUDAStream().stream(), &error) == 0,
        "AddRmsNorm kernel: ", error);
    return out;
  }
#endif
  *sum = h + o;
  return RmsNorm(*sum, weight, eps);
}

}  // namespace

at::Tensor RopeInverseFrequencies(const ModelConfig& c) {
  // Each line mirrors a line of transformers' modeling_rope_utils.py; Python's `s / t` on a
  // tensor is t.reciprocal() * s, and `s ** t` is pow(s, t), reproduced so the float32 rounding
  // is the same.
  const int64_t dim = c.head_dim;
  at::Tensor exponent = at::arange(0, dim, 2, at::kLong).to(at::kFloat) / dim;
  at::Tensor inv_freq = at::pow(c.rope_theta, exponent).reciprocal() * 1.0;
  const RopeScaling& s = c.rope_scaling;
  if (s.type == RopeScaling::Type::kLinear) return inv_freq / s.factor;
  if (s.type != RopeScaling::Type::kLlama3) return inv_freq;
  const int64_t old_context_len = s.original_max_position_embeddings;
  const double low_freq_wavelen = static_cast<double>(old_context_len) / s.low_freq_factor;
  const double high_freq_wavelen = static_cast<double>(old_context_len) / s.high_freq_factor;
  at::Tensor wavelen = inv_freq.reciprocal() * (2 * M_PI);
  at::Tensor inv_freq_llama = at::where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq);
  at::Tensor smooth_factor = (wavelen.reciprocal() * old_context_len - s.low_freq_factor) /
                             (s.high_freq_factor - s.low_freq_factor);
  at::Tensor smoothed_inv_freq =
      at::rsub(smooth_factor, 1) * inv_freq_llama / s.factor + smooth_factor * inv_freq_llama;
  at::Tensor is_medium_freq =
      (wavelen < high_freq_wavelen).logical_not() * (wavelen > low_freq_wavelen).logical_not();
  return at::where(is_medium_freq, smoothed_inv_freq, inv_freq_llama);
}

at::ScalarType DefaultDtype(c10::Device device) {
  // KIV_DTYPE=float32 or bfloat16 overrides the device's default (for A/B runs of precision).
  if (const char* e = std::getenv("KIV_DTYPE"); e != nullptr && *e != '\0') {
    const std::string_view v(e);
    if (v == "float32") return at::kFloat;
    if (v == "bfloat16") return at::kBFloat16;
    TORCH_CHECK(false, "KIV_DTYPE=", v, ": expected float32 or bfloat16");
  }
  return device.is_cuda() ? at::kBFloat16 : at::kFloat;
}

LlamaModel::LlamaModel(ModelConfig config, c10::Device device, at::ScalarType dtype)
    : config_(std::move(config)), device_(device), dtype_(dtype) {}

LlamaModel::~LlamaModel() = default;

Result<std::unique_ptr<LlamaModel>> LlamaModel::Load(const std::string& dir, c10::Device device,
                                                     at::ScalarType dtype) {
  if (dtype != at::kFloat && dtype != at::kBFloat16 && dtype != at::kHalf)
    return Status::InvalidArgument(std::string("cannot run a model in dtype ") +
                                   c10::toString(dtype) + " (float32, bfloat16 or float16)");
  Result<ModelConfig> config = LoadModelConfig(dir);
  if (!config.ok()) return config.status();
  Result<SafetensorsWeights> weights = SafetensorsWeights::OpenDir(dir);
  if (!weights.ok()) return weights.status();
  std::unique_ptr<LlamaModel> m(new LlamaModel(std::move(config).value(), device, dtype));
  const ModelConfig& c = m->config_;
  m->weights_hash_ = weights->HashWeights();

  c10::InferenceMode guard;
  const WeightLoader load(*weights, device, dtype);
  const int64_t hidden = c.hidden_size, inter = c.intermediate_size;
  const int64_t q_dim = c.num_q_heads * c.head_dim, kv_dim = c.num_kv_heads * c.head_dim;
  KIV_RETURN_IF_ERROR(load.Get("model.embed_tokens.weight", {c.vocab_size, hidden}, &m->embed_));
  KIV_RETURN_IF_ERROR(load.Get("model.norm.weight", {hidden}, &m->norm_));
  if (c.tie_word_embeddings) {
    m->lm_head_ = m->embed_;
  } else {
    KIV_RETURN_IF_ERROR(load.Get("lm_head.weight", {c.vocab_size, hidden}, &m->lm_head_));
  }
  m->layers_.resize(static_cast<size_t>(c.num_layers));
  for (int64_t i = 0; i < c.num_layers; ++i) {
    Layer& l = m->layers_[static_cast<size_t>(i)];
    const std::string p = "model.layers." + std::to_string(i) + ".";
    const std::string a = p + "self_attn.", f = p + "mlp.";
    KIV_RETURN_IF_ERROR(load.Get(p + "input_layernorm.weight", {hidden}, &l.input_norm));
    KIV_RETURN_IF_ERROR(load.Get(p + "post_attention_layernorm.weight", {hidden}, &l.post_norm));
    KIV_RETURN_IF_ERROR(load.Get(a + "q_proj.weight", {q_dim, hidden}, &l.q_w));
    KIV_RETURN_IF_ERROR(load.Get(a + "k_proj.weight", {kv_dim, hidden}, &l.k_w));
    KIV_RETURN_IF_ERROR(load.Get(a + "v_proj.weight", {kv_dim, hidden}, &l.v_w));
    KIV_RETURN_IF_ERROR(load.Get(a + "o_proj.weight", {hidden, q_dim}, &l.o_w));
    KIV_RETURN_IF_ERROR(load.GetIf(c.qkv_bias, a + "q_proj.bias", {q_dim}, &l.q_b));
    KIV_RETURN_IF_ERROR(load.GetIf(c.qkv_bias, a + "k_proj.bias", {kv_dim}, &l.k_b));
    KIV_RETURN_IF_ERROR(load.GetIf(c.qkv_bias, a + "v_proj.bias", {kv_dim}, &l.v_b));
    KIV_RETURN_IF_ERROR(load.GetIf(c.o_bias, a + "o_proj.bias", {hidden}, &l.o_b));
    KIV_RETURN_IF_ERROR(load.Get(f + "gate_proj.weight", {inter, hidden}, &l.gate_w));
    KIV_RETURN_IF_ERROR(load.Get(f + "up_proj.weight", {inter, hidden}, &l.up_w));
    KIV_RETURN_IF_ERROR(load.Get(f + "down_proj.weight", {hidden, inter}, &l.down_w));
    KIV_RETURN_IF_ERROR(load.GetIf(c.mlp_bias, f + "gate_proj.bias", {inter}, &l.gate_b));
    KIV_RETURN_IF_ERROR(load.GetIf(c.mlp_bias, f + "up_proj.bias", {inter}, &l.up_b));
    KIV_RETURN_IF_ERROR(load.GetIf(c.mlp_bias, f + "down_proj.bias", {hidden}, &l.down_b));
#if KIV_FUSED_LAYER
    if (device.is_cuda()) {
      ConcatenateRows({&l.q_w, &l.k_w, &l.v_w}, &l.qkv_w);
      ConcatenateRows({&l.q_b, &l.k_b, &l.v_b}, &l.qkv_b);
      ConcatenateRows({&l.gate_w, &l.up_w}, &l.gate_up_w);
      ConcatenateRows({&l.gate_b, &l.up_b}, &l.gate_up_b);
    }
#endif
  }
  m->inv_freq_ = RopeInverseFrequencies(c).to(device);
  return m;
}

// cos and sin [n, d] in the run dtype for `positions` [n] (int64 on device_), as
// LlamaRotaryEmbedding.forward: angles inv_freq x position in float32 (an outer product equals
// its one-term matmul exactly), cat(freqs, freqs), cos/sin in float32, then the cast.
at::Tensor LlamaModel::RopeCosSin(const at::Tensor& positions, at::Tensor* sin) const {
  at::Tensor freqs = at::outer(positions.to(at::kFloat), inv_freq_);
  at::Tensor emb = at::cat({freqs, freqs}, -1);
  *sin = emb.sin().to(dtype_);
  return emb.cos().to(dtype_);
}

namespace {
// The residual stream r + add (add undefined: r alone) into *h, and its RMSNorm: one AddRmsNorm
// kernel on the fused path (bit-exact with the add, then RmsNorm: kernels/layer.h), the add and
// RmsNorm otherwise.
at::Tensor NormOfSum(const at::Tensor& r, const at::Tensor& add, const at::Tensor& weight,
                     double eps, at::Tensor* h) {
  if (add.defined()) return AddRmsNorm(r, add, weight, eps, h);
  *h = r;
  return RmsNorm(r, weight, eps);
}
}  // namespace

void LlamaModel::QkvBlock(int64_t layer, const Residual& in, const at::Tensor& cos,
                          const at::Tensor& sin, at::Tensor* h, at::Tensor* q, at::Tensor* k,
                          at::Tensor* v) const {
  const Layer& l = layers_[static_cast<size_t>(layer)];
  const int64_t n = in.r.size(0), d = config_.head_dim;
  const int64_t hq = config_.num_q_heads, hkv = config_.num_kv_heads;
  at::Tensor x = NormOfSum(in.r, in.add, l.input_norm, config_.rms_norm_eps, h);
#if KIV_FUSED_LAYER
  if (Fused(x) && l.qkv_w.defined()) {
    // One matmul: [n, (H_q + 2 H_kv)*d] viewed as [n, H_q + 2 H_kv, d], its heads q's, k's, v's.
    // One Rope for the q and k heads together, taken as they lie (rows of H*d contiguous values,
    // any row stride): RoPE treats every head alike.
    const at::Tensor heads = at::linear(x, l.qkv_w, l.qkv_b).view({n, hq + 2 * hkv, d});
    const at::Tensor qk = Rope(heads.narrow(1, 0, hq + hkv), cos, sin);  // [H_q + H_kv, n, d]
    *q = qk.narrow(0, 0, hq);
    *k = qk.narrow(0, hq, hkv);
    *v = heads.narrow(1, hq + hkv, hkv).transpose(0, 1);
    return;
  }
#endif
  // [n, H*d] → [H, n, d]
  *q = Rope(at::linear(x, l.q_w, l.q_b).view({n, hq, d}), cos, sin);
  *k = Rope(at::linear(x, l.k_w, l.k_b).view({n, hkv, d}), cos, sin);
  *v = at::linear(x, l.v_w, l.v_b).view({n, hkv, d}).transpose(0, 1);
}

// o_proj, the residual, post_attention_layernorm and the SwiGLU MLP; the MLP's residual add is
// left to the next norm (the next layer's input_layernorm or the final norm).
LlamaModel::Residual LlamaModel::AfterAttention(int64_t layer, const at::Tensor& h,
                                                const at::Tensor& attn) const {
  const Layer& l = layers_[static_cast<size_t>(layer)];
  const int64_t n = h.size(0);
  assert(attn.size(0) == config_.num_q_heads && attn.size(1) == n);
  at::Tensor o = at::linear(attn.transpose(0, 1).reshape({n, config_.num_q_heads * config_.head_dim}),
                            l.o_w, l.o_b);
  at::Tensor r;
  at::Tensor x = AddRmsNorm(h, o, l.post_norm, config_.rms_norm_eps, &r);
#if KIV_FUSED_LAYER
  if (Fused(x) && l.gate_up_w.defined())
    return {r, at::linear(SwiGlu(at::linear(x, l.gate_up_w, l.gate_up_b)), l.down_w, l.down_b)};
#endif
  at::Tensor gate = at::silu(at::linear(x, l.gate_w, l.gate_b));
  return {r, at::linear(gate * at::linear(x, l.up_w, l.up_b), l.down_w, l.down_b)};
}

at::Tensor LlamaModel::Head(const Residual& in) const {
  at::Tensor h;
  return at::linear(NormOfSum(in.r, in.add, norm_, config_.rms_norm_eps, &h), lm_head_)
      .to(at::kFloat);
}

LlamaModel::Residual LlamaModel::Layers(const at::Tensor& ids, const at::Tensor& positions,
                                        KvCache& cache, int64_t first_position) {
  at::Tensor sin;
  const at::Tensor cos = RopeCosSin(positions, &sin);
  Residual stream{at::embedding(embed_, ids), {}};  // [n, hidden]
  for (int64_t i = 0; i < config_.num_layers; ++i) {
    at::Tensor h, q, k, v;
    QkvBlock(i, stream, cos, sin, &h, &q, &k, &v);
    stream = AfterAttention(i, h, cache.Attend(i, q, k, v, first_position));
  }
  return stream;
}

at::Tensor LlamaModel::Forward(const std::vector<int64_t>& tokens, KvCache& cache, Logits which) {
  assert(!tokens.empty());
  c10::InferenceMode guard;
  if (use_graphs_ && tokens.size() == 1) return ForwardGraphed(tokens[0], cache);
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t first_position = cache.length();
  Residual stream = Layers(
      at::tensor(tokens, at::kLong).to(device_),
      at::arange(first_position, first_position + n, at::TensorOptions(device_).dtype(at::kLong)),
      cache, first_position);
  if (which == Logits::kLast) {
    stream.r = stream.r.narrow(0, n - 1, 1);
    if (stream.add.defined()) stream.add = stream.add.narrow(0, n - 1, 1);
  }
  at::Tensor logits = Head(stream);
  cache.EndChunk(tokens);
  return logits;
}

#if KIV_TORCH_CUDA

Status LlamaModel::EnableDecodeGraphs(bool on) {
  if (on && !device_.is_cuda())
    return Status::InvalidArgument("CUDA graphs need a model on a CUDA device");
  use_graphs_ = on;
  if (!on) graphs_.reset();
  return Status::Ok();
}

at::Tensor LlamaModel::ForwardGraphed(int64_t token, KvCache& cache) {
  const int64_t L = config_.num_layers, first_position = cache.length();
  using Outputs = DecodeGraphs::Outputs;
  auto segment = [this, L](DecodeGraphs& g, Outputs& o, int64_t s) {
    Residual in;
    if (s == 0) {
      in.r = at::embedding(embed_, g.ids);
      at::Tensor sin;
      g.cos.copy_(RopeCosSin(g.pos, &sin));
      g.sin.copy_(sin);
    } else {
      in = AfterAttention(s - 1, g.h, g.attn[size_t(s - 1)]);
    }
    if (s < L) {
      at::Tensor h;
      QkvBlock(s, in, g.cos, g.sin, &h, &o.q[size_t(s)], &o.k[size_t(s)], &o.v[size_t(s)]);
      g.h.copy_(h);  // the next segment's residual input
    } else {
      o.logits = Head(in);
    }
  };
  // The whole step, the cache's Attend included (a cache that PrepareCapturedDecode'd): Forward's
  // own layers, with nothing static but ids, pos and the logits. The attention output goes to
  // o_proj where the cache wrote it and the residual stream stays in the capture's tensors, with
  // no copies into the segments' buffers.
  auto whole = [&](DecodeGraphs& g) {
    g.whole_logits = Head(Layers(g.ids, g.pos, cache, first_position));
  };
  // Runs `body` once on the side stream (a warm-up: cuBLAS sets up its workspace for a stream
  // on first use, which must not happen inside a capture), then captures it into `graph`.
  auto capture = [](DecodeGraphs& g, const std::function<void()>& body, at::cuda::CUDAGraph* graph,
                    decltype(at::cuda::graph_pool_handle()) pool) {
    c10::cuda::device_synchronize();
    {
      c10::cuda::CUDAStreamGuard on_side(*g.side);
      body();
      g.side->synchronize();
      graph->capture_begin(pool);
      body();
      graph->capture_end();
    }
    c10::cuda::device_synchronize();
  };
  if (!graphs_) {
    auto g = std::make_unique<DecodeGraphs>();
    const auto opts = at::TensorOptions().device(device_);
    g->ids = at::zeros({1}, opts.dtype(at::kLong));
    g->pos = at::zeros({1}, opts.dtype(at::kLong));
    g->h = at::zeros({1, config_.hidden_size}, opts.dtype(dtype_));
    g->cos = at::zeros({1, config_.head_dim}, opts.dtype(dtype_));
    g->sin = at::zeros_like(g->cos);
    Outputs& o = g->segment_out;
    o.q.resize(size_t(L)), o.k.resize(size_t(L)), o.v.resize(size_t(L));
    for (int64_t l = 0; l < L; ++l)
      g->attn.push_back(at::zeros({config_.num_q_heads, 1, config_.head_dim}, opts.dtype(dtype_)));
    g->side = c10::cuda::getStreamFromPool();
    graphs_ = std::move(g);
  }
  DecodeGraphs& g = *graphs_;
  g.ids.fill_(token);
  g.pos.fill_(first_position);
  uint64_t key = 0;
  if (cache.PrepareCapturedDecode(&key)) {
    if (!g.whole || g.whole_key != key) {
      g.whole.reset();  // its pool goes back before the next one is taken
      g.whole = std::make_unique<at::cuda::CUDAGraph>();
      capture(g, [&] { whole(g); }, g.whole.get(), at::cuda::graph_pool_handle());
      g.whole_key = key;
      ++whole_captures_;
    }
    g.whole->replay();
    at::Tensor logits = g.whole_logits.clone();  // the next replay overwrites it
    cache.EndChunk({token});
    return logits;
  }
  if (g.segments.empty()) {
    const auto pool = at::cuda::graph_pool_handle();
    for (int64_t s = 0; s <= L; ++s) {
      g.segments.push_back(std::make_unique<at::cuda::CUDAGraph>());
      capture(g, [&] { segment(g, g.segment_out, s); }, g.segments.back().get(), pool);
    }
  }
  g.segments[0]->replay();
  for (int64_t l = 0; l < L; ++l) {
    const size_t i = size_t(l);
    g.attn[i].copy_(cache.Attend(l, g.segment_out.q[i], g.segment_out.k[i], g.segment_out.v[i],
                                 first_position));
    g.segments[i + 1]->replay();
  }
  at::Tensor logits = g.segment_out.logits.clone();  // the next replay overwrites it
  cache.EndChunk({token});
  return logits;
}

#else

Status LlamaModel::EnableDecodeGraphs(bool on) {
  if (on)
    return Status::NotImplemented(
        "CUDA graphs: this build's LibTorch has no CUDA (build with a CUDA torch)");
  return Status::Ok();
}

at::Tensor LlamaModel::ForwardGraphed(int64_t, KvCache&) {
  TORCH_CHECK(false, "not implemented: CUDA graphs in a build without CUDA LibTorch");
}

#endif  // KIV_TORCH_CUDA

}  // namespace kiv
