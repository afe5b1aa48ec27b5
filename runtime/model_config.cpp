#include "runtime/model_config.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

namespace kiv {
namespace {

using nlohmann::json;

// The architectures the runner implements, as config.json names them.
struct Family {
  const char* architecture;
  const char* model_type;
};
constexpr Family kFamilies[] = {{"LlamaForCausalLM", "llama"},
                                {"MistralForCausalLM", "mistral"},
                                {"Qwen2ForCausalLM", "qwen2"}};

std::string SupportedList() {
  std::string s;
  for (const Family& f : kFamilies) s += std::string(s.empty() ? "" : ", ") + f.architecture;
  return s;
}

// Reads config.json fields with one message shape for each way a field can be wrong.
class Fields {
 public:
  Fields(const json& j, const std::string& source) : j_(j), source_(source) {}

  bool Has(const char* key) const { return j_.contains(key) && !j_[key].is_null(); }

  Status Int(const char* key, int64_t* out, bool required) const {
    if (!Has(key)) return required ? Missing(key) : Status::Ok();
    const json& v = j_[key];
    if (!v.is_number_integer()) return Wrong(key, "an integer");
    *out = v.get<int64_t>();
    return Status::Ok();
  }
  Status Double(const char* key, double* out) const {
    if (!Has(key)) return Status::Ok();
    const json& v = j_[key];
    if (!v.is_number()) return Wrong(key, "a number");
    *out = v.get<double>();
    return Status::Ok();
  }
  Status Bool(const char* key, bool* out) const {
    if (!Has(key)) return Status::Ok();
    const json& v = j_[key];
    if (!v.is_boolean()) return Wrong(key, "true or false");
    *out = v.get<bool>();
    return Status::Ok();
  }
  Status String(const char* key, std::string* out) const {
    if (!Has(key)) return Status::Ok();
    const json& v = j_[key];
    if (!v.is_string()) return Wrong(key, "a string");
    *out = v.get<std::string>();
    return Status::Ok();
  }
  Status Missing(const char* key) const {
    return Status::InvalidArgument(source_ + ": required field '" + key + "' is missing");
  }
  Status Wrong(const char* key, const char* what) const {
    return Status::InvalidArgument(source_ + ": field '" + key + "' should be " + what + ", not " +
                                   j_[key].dump());
  }

 private:
  const json& j_;
  const std::string& source_;
};

Status CheckArchitecture(const json& j, const std::string& source, ModelConfig* c) {
  Fields f(j, source);
  KIV_RETURN_IF_ERROR(f.String("model_type", &c->model_type));
  if (f.Has("architectures")) {
    const json& a = j["architectures"];
    if (!a.is_array() || a.empty() || !a[0].is_string())
      return f.Wrong("architectures", "a list of names");
    c->architecture = a[0].get<std::string>();
  }
  for (const Family& fam : kFamilies) {
    const bool arch_ok = c->architecture.empty() || c->architecture == fam.architecture;
    const bool type_ok = c->model_type.empty() || c->model_type == fam.model_type;
    if (arch_ok && type_ok && !(c->architecture.empty() && c->model_type.empty())) {
      c->architecture = fam.architecture;
      c->model_type = fam.model_type;
      return Status::Ok();
    }
  }
  const std::string name = c->architecture.empty() ? "(none)" : c->architecture;
  const std::string type = c->model_type.empty() ? "(none)" : c->model_type;
  return Status::InvalidArgument(source + ": unsupported architecture '" + name +
                                 "' (model_type '" + type + "'); kiv runs " + SupportedList());
}

// RoPE: transformers 5 writes `rope_parameters` {rope_theta, rope_type, ...}; older configs have a
// top-level `rope_theta` and a `rope_scaling` {type or rope_type, factor, ...}. Both are read, the
// way PreTrainedConfig.standardize_rope_params merges them.
Status ParseRope(const json& j, const std::string& source, ModelConfig* c) {
  Fields top(j, source);
  KIV_RETURN_IF_ERROR(top.Double("rope_theta", &c->rope_theta));
  double partial = 1.0;
  KIV_RETURN_IF_ERROR(top.Double("partial_rotary_factor", &partial));
  json rope = json::object();
  if (top.Has("rope_parameters")) {
    rope = j["rope_parameters"];
  } else if (top.Has("rope_scaling")) {
    rope = j["rope_scaling"];
  }
  if (!rope.is_object()) return top.Wrong("rope_parameters", "an object");
  const std::string rsource = source + " rope parameters";
  Fields r(rope, rsource);
  KIV_RETURN_IF_ERROR(r.Double("rope_theta", &c->rope_theta));
  KIV_RETURN_IF_ERROR(r.Double("partial_rotary_factor", &partial));
  if (partial != 1.0)
    return Status::NotImplemented(source + ": partial_rotary_factor " + std::to_string(partial));
  std::string type = "default";
  KIV_RETURN_IF_ERROR(r.String("type", &type));
  KIV_RETURN_IF_ERROR(r.String("rope_type", &type));
  RopeScaling& s = c->rope_scaling;
  s.original_max_position_embeddings = c->max_position_embeddings;
  if (type == "default") {
    s.type = RopeScaling::Type::kDefault;
  } else if (type == "linear") {
    s.type = RopeScaling::Type::kLinear;
    if (!r.Has("factor")) return r.Missing("factor");
    KIV_RETURN_IF_ERROR(r.Double("factor", &s.factor));
  } else if (type == "llama3") {
    s.type = RopeScaling::Type::kLlama3;
    for (const char* key : {"factor", "low_freq_factor", "high_freq_factor"})
      if (!r.Has(key)) return r.Missing(key);
    KIV_RETURN_IF_ERROR(r.Double("factor", &s.factor));
    KIV_RETURN_IF_ERROR(r.Double("low_freq_factor", &s.low_freq_factor));
    KIV_RETURN_IF_ERROR(r.Double("high_freq_factor", &s.high_freq_factor));
    // Phi-3 style configs keep it at the top level; transformers gives that one priority.
    KIV_RETURN_IF_ERROR(
        r.Int("original_max_position_embeddings", &s.original_max_position_embeddings, false));
    KIV_RETURN_IF_ERROR(
        top.Int("original_max_position_embeddings", &s.original_max_position_embeddings, false));
    if (s.high_freq_factor == s.low_freq_factor)
      return Status::InvalidArgument(rsource +
                                     ": llama3 needs high_freq_factor != low_freq_factor");
  } else {
    return Status::NotImplemented(source + ": rope_type '" + type +
                                  "' (kiv implements default, linear and llama3)");
  }
  if (s.factor <= 0) return Status::InvalidArgument(rsource + ": factor must be positive");
  if (c->rope_theta <= 0) return Status::InvalidArgument(source + ": rope_theta must be positive");
  return Status::Ok();
}

// Sliding-window attention changes what a token may see beyond the window; the caches here attend
// to everything, so such a model is refused rather than run with different attention.
Status CheckNoSlidingWindow(const json& j, const std::string& source, const ModelConfig& c) {
  Fields f(j, source);
  int64_t window = 0;
  if (c.model_type == "mistral") {
    KIV_RETURN_IF_ERROR(f.Int("sliding_window", &window, false));
  } else if (c.model_type == "qwen2") {
    bool use = false;
    KIV_RETURN_IF_ERROR(f.Bool("use_sliding_window", &use));
    if (use) KIV_RETURN_IF_ERROR(f.Int("sliding_window", &window, false));
    if (use && window == 0) window = -1;
  }
  if (window != 0)
    return Status::NotImplemented(source + ": sliding-window attention (sliding_window " +
                                  std::to_string(window) + ")");
  // transformers 5 also lists each layer's attention kind.
  if (f.Has("layer_types")) {
    const json& types = j["layer_types"];
    if (!types.is_array()) return f.Wrong("layer_types", "a list");
    for (const json& t : types)
      if (t != "full_attention")
        return Status::NotImplemented(source + ": layer type " + t.dump() +
                                      " (kiv runs full_attention layers only)");
  }
  return Status::Ok();
}

Status ParseTokenIds(const json& j, const std::string& source, ModelConfig* c) {
  Fields f(j, source);
  KIV_RETURN_IF_ERROR(f.Int("bos_token_id", &c->bos_token_id, false));
  if (!f.Has("eos_token_id")) return Status::Ok();
  const json& e = j["eos_token_id"];
  if (e.is_number_integer()) {
    c->eos_token_ids.push_back(e.get<int64_t>());
    return Status::Ok();
  }
  if (!e.is_array()) return f.Wrong("eos_token_id", "an integer or a list of integers");
  for (const json& v : e) {
    if (!v.is_number_integer()) return f.Wrong("eos_token_id", "an integer or a list of integers");
    c->eos_token_ids.push_back(v.get<int64_t>());
  }
  return Status::Ok();
}

Status ParseShapes(const json& j, const std::string& source, ModelConfig* c) {
  Fields f(j, source);
  KIV_RETURN_IF_ERROR(f.Int("hidden_size", &c->hidden_size, true));
  KIV_RETURN_IF_ERROR(f.Int("intermediate_size", &c->intermediate_size, true));
  KIV_RETURN_IF_ERROR(f.Int("num_hidden_layers", &c->num_layers, true));
  KIV_RETURN_IF_ERROR(f.Int("num_attention_heads", &c->num_q_heads, true));
  KIV_RETURN_IF_ERROR(f.Int("vocab_size", &c->vocab_size, true));
  c->num_kv_heads = c->num_q_heads;
  KIV_RETURN_IF_ERROR(f.Int("num_key_value_heads", &c->num_kv_heads, false));
  // transformers' defaults for configs that leave it out.
  c->max_position_embeddings = c->model_type == "qwen2"     ? 32768
                               : c->model_type == "mistral" ? 4096 * 32
                                                            : 2048;
  KIV_RETURN_IF_ERROR(f.Int("max_position_embeddings", &c->max_position_embeddings, false));
  auto positive = [&](const char* key, int64_t v) {
    return v > 0 ? Status::Ok()
                 : Status::InvalidArgument(source + ": " + key + " must be positive, not " +
                                           std::to_string(v));
  };
  KIV_RETURN_IF_ERROR(positive("hidden_size", c->hidden_size));
  KIV_RETURN_IF_ERROR(positive("intermediate_size", c->intermediate_size));
  KIV_RETURN_IF_ERROR(positive("num_hidden_layers", c->num_layers));
  KIV_RETURN_IF_ERROR(positive("num_attention_heads", c->num_q_heads));
  KIV_RETURN_IF_ERROR(positive("num_key_value_heads", c->num_kv_heads));
  KIV_RETURN_IF_ERROR(positive("vocab_size", c->vocab_size));
  c->head_dim = c->hidden_size / c->num_q_heads;
  KIV_RETURN_IF_ERROR(f.Int("head_dim", &c->head_dim, false));
  KIV_RETURN_IF_ERROR(positive("head_dim", c->head_dim));
  if (c->head_dim % 2 != 0)
    return Status::InvalidArgument(source + ": head_dim " + std::to_string(c->head_dim) +
                                   " is odd; RoPE pairs dimension i with i + head_dim/2");
  if (c->num_q_heads % c->num_kv_heads != 0)
    return Status::InvalidArgument(
        source + ": num_attention_heads " + std::to_string(c->num_q_heads) +
        " is not a multiple of num_key_value_heads " + std::to_string(c->num_kv_heads));
  return Status::Ok();
}

}  // namespace

Result<ModelConfig> ParseModelConfig(const std::string& json_text, const std::string& source) {
  json j = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object())
    return Status::InvalidArgument(source + ": not a JSON object");
  ModelConfig c;
  KIV_RETURN_IF_ERROR(CheckArchitecture(j, source, &c));
  KIV_RETURN_IF_ERROR(ParseShapes(j, source, &c));
  Fields f(j, source);
  std::string act = "silu";
  KIV_RETURN_IF_ERROR(f.String("hidden_act", &act));
  if (act != "silu") return Status::NotImplemented(source + ": hidden_act '" + act + "'");
  KIV_RETURN_IF_ERROR(f.Double("rms_norm_eps", &c.rms_norm_eps));
  KIV_RETURN_IF_ERROR(f.Bool("tie_word_embeddings", &c.tie_word_embeddings));
  if (c.model_type == "qwen2") {
    c.qkv_bias = true;  // Qwen2Attention: q/k/v always biased, o_proj never; attention_bias unused
  } else if (c.model_type == "llama") {
    KIV_RETURN_IF_ERROR(f.Bool("attention_bias", &c.qkv_bias));
    c.o_bias = c.qkv_bias;
    KIV_RETURN_IF_ERROR(f.Bool("mlp_bias", &c.mlp_bias));
  }
  KIV_RETURN_IF_ERROR(ParseRope(j, source, &c));
  KIV_RETURN_IF_ERROR(CheckNoSlidingWindow(j, source, c));
  KIV_RETURN_IF_ERROR(ParseTokenIds(j, source, &c));
  return c;
}

int64_t DecodeWeightElements(const ModelConfig& c) {
  const int64_t h = c.hidden_size, q = c.num_q_heads * c.head_dim, kv = c.num_kv_heads * c.head_dim;
  int64_t layer = 2 * h + h * (q + 2 * kv) + q * h + 3 * h * c.intermediate_size;
  if (c.qkv_bias) layer += q + 2 * kv;
  if (c.o_bias) layer += h;
  if (c.mlp_bias) layer += 2 * c.intermediate_size + h;
  return c.num_layers * layer + h + c.vocab_size * h;
}

Result<ModelConfig> LoadModelConfig(const std::string& dir) {
  const std::string path = dir + "/config.json";
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::NotFound("no model config: '" + path + "' cannot be read");
  std::ostringstream text;
  text << in.rdbuf();
  if (!in.good() && !in.eof()) return Status::IOError("cannot read '" + path + "'");
  return ParseModelConfig(text.str(), path);
}

ModelFingerprint MakeModelFingerprint(const ModelConfig& config, uint64_t weights_hash,
                                      uint64_t tokenizer_hash) {
  ModelFingerprint f;
  f.architecture = config.model_type;
  f.num_layers = static_cast<uint32_t>(config.num_layers);
  f.num_q_heads = static_cast<uint32_t>(config.num_q_heads);
  f.num_kv_heads = static_cast<uint32_t>(config.num_kv_heads);
  f.head_dim = static_cast<uint32_t>(config.head_dim);
  f.vocab_size = static_cast<uint32_t>(config.vocab_size);
  f.weights_hash = weights_hash;
  f.tokenizer_hash = tokenizer_hash;
  return f;
}

}  // namespace kiv
