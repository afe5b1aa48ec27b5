// What kiv needs to know about a HuggingFace model directory before it loads any weights: the
// shapes and hyperparameters from config.json for the Llama family (Llama, Mistral, Qwen2, SmolLM2)
// and the ModelFingerprint an archive records. LibTorch-free: the CLI and the session code read a
// config without compiling against torch.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "storage/spec.h"
#include "storage/status.h"

namespace kiv {

// How RoPE's inverse frequencies are derived from the base ones (see RopeInverseFrequencies in
// runtime/llama.h, which follows transformers' modeling_rope_utils.py op for op).
struct RopeScaling {
  enum class Type { kDefault, kLinear, kLlama3 };
  Type type = Type::kDefault;
  double factor = 1.0;                           // linear and llama3
  double low_freq_factor = 1.0;                  // llama3
  double high_freq_factor = 4.0;                 // llama3
  int64_t original_max_position_embeddings = 0;  // llama3; defaults to max_position_embeddings
};

// The fields of config.json that the runner uses, with transformers' defaults filled in.
struct ModelConfig {
  std::string architecture;  // "LlamaForCausalLM", "MistralForCausalLM" or "Qwen2ForCausalLM"
  std::string model_type;    // "llama", "mistral" or "qwen2"
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;    // num_hidden_layers
  int64_t num_q_heads = 0;   // num_attention_heads
  int64_t num_kv_heads = 0;  // num_key_value_heads (defaults to num_attention_heads)
  int64_t head_dim = 0;      // defaults to hidden_size / num_attention_heads
  int64_t vocab_size = 0;
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;  // q/k/v projections have a bias (Qwen2 always; Llama with attention_bias)
  bool o_bias = false;    // o_proj has a bias (Llama with attention_bias)
  bool mlp_bias = false;  // gate/up/down have a bias (Llama with mlp_bias)
  int64_t bos_token_id = -1;           // -1 when the config names none
  std::vector<int64_t> eos_token_ids;  // config.json's eos_token_id (an int or a list)

  int64_t gqa_group() const { return num_q_heads / num_kv_heads; }
};

// The weights a decode step reads, in elements: every layer's norms, projections and biases, the
// final norm and the lm_head ([vocab, hidden]); of the embedding only one row, not counted. With
// tied embeddings this is the model's parameter count (SmolLM2-135M: 134,515,008).
int64_t DecodeWeightElements(const ModelConfig& c);

// Parses config.json text. Refuses, naming them, architectures outside the Llama family and the
// features the runner does not implement (sliding-window attention, other RoPE types, activations
// other than SiLU, partial rotary embeddings). `source` names the file in messages.
Result<ModelConfig> ParseModelConfig(const std::string& json_text, const std::string& source);

// Reads and parses `dir`/config.json.
Result<ModelConfig> LoadModelConfig(const std::string& dir);

// The archive's record of the model: the architecture (model_type, e.g. "llama"), the attention
// shapes, and the two hashes (HashWeights in runtime/safetensors.h; the tokenizer's from the
// tokenizer code).
ModelFingerprint MakeModelFingerprint(const ModelConfig& config, uint64_t weights_hash,
                                      uint64_t tokenizer_hash);

}  // namespace kiv
