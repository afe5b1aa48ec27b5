// The model runner against transformers: config parsing and refusals, safetensors views and their
// damage, the attention primitive and its log-sum-exp merge, and logits of real and tiny models
// (one pass and chunked) against reference logits from tools/model/reference_logits.py.

// LibTorch before doctest: c10's logging defines a CHECK macro that must not replace doctest's.
#include <torch/torch.h>
// (keep this order)
#include <doctest/doctest.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "runtime/full_cache.h"
#include "runtime/llama.h"
#include "runtime/model_config.h"
#include "runtime/safetensors.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string CacheDir() {
  if (const char* c = std::getenv("KIV_CACHE"); c && *c) return c;
  const char* home = std::getenv("HOME");
  return std::string(home ? home : "/root") + "/.cache/kiv";
}

// The repository root: KIV_SOURCE_DIR (a compile definition or the environment), else from this
// file's path (CMake compiles it by absolute path).
std::string RepoDir() {
  if (const char* r = std::getenv("KIV_SOURCE_DIR"); r && *r) return r;
#ifdef KIV_SOURCE_DIR
  return KIV_SOURCE_DIR;
#else
  return fs::path(__FILE__).parent_path().parent_path().parent_path().string();
#endif
}

// A fresh directory under the system temp dir, removed when the test case ends.
struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& name)
      : path(fs::temp_directory_path() /
             ("kiv_llama_test_" + std::to_string(::getpid()) + "_" + name)) {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  std::string operator/(const std::string& f) const { return (path / f).string(); }
};

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary)
      .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

struct FakeTensor {
  std::string name, dtype;
  std::vector<int64_t> shape;
  std::string bytes;
};

// A safetensors file, written the way the safetensors library does (header padded with spaces to
// a multiple of 8) unless `header_pad` says otherwise, tensors in the given order.
std::string SafetensorsBytes(const std::vector<FakeTensor>& tensors, size_t header_pad = 8) {
  json header = json::object();
  std::string data;
  for (const FakeTensor& t : tensors) {
    header[t.name] = {{"dtype", t.dtype},
                      {"shape", t.shape},
                      {"data_offsets", {data.size(), data.size() + t.bytes.size()}}};
    data += t.bytes;
  }
  std::string text = header.dump();
  text.resize((text.size() + header_pad - 1) / header_pad * header_pad, ' ');
  std::string out(8, '\0');
  const uint64_t n = text.size();
  std::memcpy(out.data(), &n, 8);
  return out + text + data;
}

std::string FloatBytes(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}

// Reference logits written by tools/model/reference_logits.py (see its docstring).
struct Reference {
  std::vector<int64_t> ids, rows, argmax;
  std::vector<double> margin;
  std::vector<uint32_t> inv_freq_bits;
  int64_t vocab = 0;
  torch::Tensor logits;  // [rows.size(), vocab] float32
};

bool ReadReference(const std::string& json_path, Reference* r) {
  std::ifstream in(json_path);
  if (!in) return false;
  json j = json::parse(in, nullptr, false);
  if (j.is_discarded()) return false;
  r->ids = j["ids"].get<std::vector<int64_t>>();
  r->rows = j["logits_positions"].get<std::vector<int64_t>>();
  r->argmax = j["argmax"].get<std::vector<int64_t>>();
  r->margin = j["top2_margin"].get<std::vector<double>>();
  r->inv_freq_bits = j["inv_freq_bits"].get<std::vector<uint32_t>>();
  r->vocab = j["vocab_size"].get<int64_t>();
  const std::string raw =
      ReadFile((fs::path(json_path).parent_path() / j["logits_file"].get<std::string>()).string());
  const int64_t rows = static_cast<int64_t>(r->rows.size());
  if (static_cast<int64_t>(raw.size()) != rows * r->vocab * 4) return false;
  r->logits = torch::empty({rows, r->vocab}, torch::kFloat);
  std::memcpy(r->logits.data_ptr(), raw.data(), raw.size());
  return true;
}

// Runs the reference script when its output is missing and python3 with transformers is there.
bool EnsureReference(const std::string& json_path, const std::string& args) {
  if (fs::exists(json_path)) return true;
  if (std::system("python3 -c 'import torch, transformers' >/dev/null 2>&1") != 0) return false;
  const std::string cmd =
      "python3 '" + RepoDir() + "/tools/model/reference_logits.py' " + args + " >/dev/null 2>&1";
  MESSAGE("generating reference logits: " << cmd);
  return std::system(cmd.c_str()) == 0 && fs::exists(json_path);
}

// The model's logits for `ids`, in chunks of the given sizes (cycled), through a FullCache.
torch::Tensor RunChunked(kiv::LlamaModel& model, const std::vector<int64_t>& ids,
                         const std::vector<int64_t>& chunk_sizes) {
  kiv::FullCache cache(model.config().num_layers);
  std::vector<torch::Tensor> parts;
  size_t next = 0;
  for (size_t c = 0; next < ids.size(); ++c) {
    const size_t n =
        std::min(ids.size() - next, static_cast<size_t>(chunk_sizes[c % chunk_sizes.size()]));
    std::vector<int64_t> chunk(ids.begin() + static_cast<std::ptrdiff_t>(next),
                               ids.begin() + static_cast<std::ptrdiff_t>(next + n));
    parts.push_back(model.Forward(chunk, cache));
    next += n;
  }
  CHECK(cache.length() == static_cast<int64_t>(ids.size()));
  CHECK(cache.token_ids() == ids);
  return torch::cat(parts, 0);
}

// Compares logits [n, vocab] with the reference rows and argmax; returns the max abs difference.
double CompareWithReference(const torch::Tensor& logits, const Reference& ref,
                            const std::string& what) {
  REQUIRE(logits.size(0) == static_cast<int64_t>(ref.ids.size()));
  torch::Tensor rows = logits.index_select(0, torch::tensor(ref.rows, torch::kLong));
  const double diff = (rows - ref.logits).abs().max().item<double>();
  torch::Tensor argmax = logits.argmax(-1);
  int64_t agree = 0;
  for (size_t i = 0; i < ref.argmax.size(); ++i) {
    const int64_t got = argmax[static_cast<int64_t>(i)].item<int64_t>();
    if (got == ref.argmax[i]) {
      ++agree;
    } else {
      MESSAGE(what << ": argmax differs at position " << i << " (" << got << " vs " << ref.argmax[i]
                   << ", reference margin " << ref.margin[i] << ")");
    }
  }
  MESSAGE(what << ": max |logit - transformers| = " << diff << " over " << ref.rows.size()
               << " positions; argmax agrees at " << agree << "/" << ref.argmax.size());
  CHECK(agree == static_cast<int64_t>(ref.argmax.size()));
  return diff;
}

void CheckInvFreq(const kiv::ModelConfig& config, const std::vector<uint32_t>& bits) {
  torch::Tensor f = kiv::RopeInverseFrequencies(config);
  REQUIRE(f.numel() == static_cast<int64_t>(bits.size()));
  for (int64_t i = 0; i < f.numel(); ++i) {
    const float v = f[i].item<float>();
    uint32_t b;
    std::memcpy(&b, &v, 4);
    CHECK_MESSAGE(b == bits[static_cast<size_t>(i)], "inv_freq[" << i << "]");
  }
}

const char* kSmolConfig = R"({
  "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 576,
  "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
  "num_key_value_heads": 3, "rms_norm_eps": 1e-05, "vocab_size": 49152,
  "max_position_embeddings": 8192, "tie_word_embeddings": true, "eos_token_id": 2,
  "bos_token_id": 1, "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"}})";

}  // namespace

TEST_CASE("config.json of the Llama family parses with transformers' defaults") {
  kiv::Result<kiv::ModelConfig> c = kiv::ParseModelConfig(kSmolConfig, "smol");
  REQUIRE_MESSAGE(c.ok(), c.status().ToString());
  CHECK(c->model_type == "llama");
  CHECK(c->head_dim == 64);  // hidden / heads when head_dim is absent
  CHECK(c->gqa_group() == 3);
  CHECK(c->rope_theta == 100000.0);
  CHECK(c->tie_word_embeddings);
  CHECK_FALSE(c->qkv_bias);
  CHECK(c->eos_token_ids == std::vector<int64_t>{2});
  // A decode step reads every weight once (the tied embedding as the lm_head): the parameter
  // count of SmolLM2-135M. Biases add theirs.
  CHECK(kiv::DecodeWeightElements(*c) == 134515008);
  kiv::ModelConfig biased = *c;
  biased.qkv_bias = biased.o_bias = biased.mlp_bias = true;
  CHECK(kiv::DecodeWeightElements(biased) == 134515008 + 30 * (576 + 2 * 192 + 576 + 2 * 1536 + 576));
  const kiv::ModelFingerprint f = kiv::MakeModelFingerprint(*c, 7, 9);
  CHECK(f.architecture == "llama");
  CHECK(f.num_layers == 30);
  CHECK(f.num_kv_heads == 3);
  CHECK(f.weights_hash == 7);

  // Older configs: top-level rope_theta and rope_scaling {type: llama3}.
  kiv::Result<kiv::ModelConfig> l3 = kiv::ParseModelConfig(R"({
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 8, "vocab_size": 128256, "rope_theta": 500000.0,
    "max_position_embeddings": 131072, "eos_token_id": [128001, 128008, 128009],
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"}})",
                                                           "llama3");
  REQUIRE_MESSAGE(l3.ok(), l3.status().ToString());
  CHECK(l3->rope_scaling.type == kiv::RopeScaling::Type::kLlama3);
  CHECK(l3->rope_scaling.original_max_position_embeddings == 8192);
  CHECK(l3->rope_theta == 500000.0);
  CHECK(l3->eos_token_ids.size() == 3);

  kiv::Result<kiv::ModelConfig> qwen = kiv::ParseModelConfig(R"({
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 896,
    "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
    "num_key_value_heads": 2, "vocab_size": 151936, "rope_theta": 1000000.0,
    "sliding_window": 32768, "use_sliding_window": false})",
                                                             "qwen");
  REQUIRE_MESSAGE(qwen.ok(), qwen.status().ToString());
  CHECK(qwen->qkv_bias);
  CHECK_FALSE(qwen->o_bias);
}

TEST_CASE("unsupported architectures and features are refused by name") {
  TempDir dir("arch");
  WriteFile(dir / "config.json", R"({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
    "n_embd": 768, "n_layer": 12, "n_head": 12, "vocab_size": 50257})");
  kiv::Result<kiv::ModelConfig> c = kiv::LoadModelConfig(dir.path.string());
  REQUIRE_FALSE(c.ok());
  MESSAGE(c.status().ToString());
  CHECK(c.status().message().find("unsupported architecture 'GPT2LMHeadModel'") !=
        std::string::npos);
  CHECK(c.status().message().find("LlamaForCausalLM") != std::string::npos);
  auto model = kiv::LlamaModel::Load(dir.path.string(), torch::kCPU, torch::kFloat);
  REQUIRE_FALSE(model.ok());
  CHECK(model.status().message().find("GPT2LMHeadModel") != std::string::npos);

  auto refused = [](const std::string& patch, const char* needle) {
    json j = json::parse(kSmolConfig);
    j.merge_patch(json::parse(patch));
    kiv::Result<kiv::ModelConfig> r = kiv::ParseModelConfig(j.dump(), "config.json");
    REQUIRE_FALSE(r.ok());
    CHECK_MESSAGE(r.status().message().find(needle) != std::string::npos, r.status().ToString());
  };
  refused(R"({"architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2"})",
          "Gemma2ForCausalLM");
  refused(R"({"architectures": ["MistralForCausalLM"], "model_type": "mistral",
              "sliding_window": 4096})",
          "sliding-window");
  refused(R"({"rope_parameters": {"rope_type": "yarn", "factor": 4.0}})", "rope_type 'yarn'");
  refused(R"({"hidden_act": "gelu"})", "hidden_act 'gelu'");
  refused(R"({"num_key_value_heads": 4})", "not a multiple");
  refused(R"({"hidden_size": null})", "'hidden_size' is missing");
  refused(R"({"num_hidden_layers": "thirty"})", "should be an integer");
  CHECK_FALSE(kiv::ParseModelConfig("{not json", "x").ok());
  CHECK(kiv::LoadModelConfig("/nonexistent/kiv").status().code() == kiv::Status::Code::kNotFound);
}

TEST_CASE("llama3 RoPE frequencies match transformers' float32 bits") {
  // tiny-llama3 of reference_logits.py: head_dim 16, theta 1e4, factor 8, low 1, high 4, original
  // 64, so the eight frequencies cover all three bands. Bits from transformers 5.17.0.
  json j = json::parse(kSmolConfig);
  j.merge_patch(json::parse(R"({"hidden_size": 64, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 16, "rope_parameters": {"rope_type": "llama3",
    "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64}})"));
  kiv::Result<kiv::ModelConfig> c = kiv::ParseModelConfig(j.dump(), "tiny-llama3");
  REQUIRE(c.ok());
  CheckInvFreq(*c, {1065353216, 1048199156, 1012248368, 998344419, 983815946, 969883192, 956502639,
                    942000992});
}

TEST_CASE("safetensors: zero-copy views, sharding-independent hash, clear damage reports") {
  TempDir dir("st");
  const std::vector<float> a = {1.5f, -2.0f, 3.25f, 0.0f, 7.0f, -1.0f};
  const uint16_t b16[] = {0x3f80, 0xc000};  // bf16 1.0, -2.0
  std::vector<FakeTensor> tensors = {
      {"a", "F32", {2, 3}, FloatBytes(a)},
      {"b", "BF16", {2}, std::string(reinterpret_cast<const char*>(b16), 4)}};
  const std::string path = dir / "model.safetensors";
  WriteFile(path, SafetensorsBytes(tensors));
  torch::Tensor view;
  uint64_t hash = 0;
  {
    kiv::Result<kiv::SafetensorsWeights> w = kiv::SafetensorsWeights::OpenDir(dir.path.string());
    REQUIRE_MESSAGE(w.ok(), w.status().ToString());
    CHECK(w->entries().size() == 2);
    kiv::Result<torch::Tensor> t = w->Tensor("a");
    REQUIRE(t.ok());
    CHECK(t->data_ptr() == static_cast<const void*>(w->Find("a")->data));  // no copy
    view = *t;
    kiv::Result<torch::Tensor> bt = w->Tensor("b");
    REQUIRE(bt.ok());
    CHECK((bt->scalar_type() == torch::kBFloat16));  // doctest cannot print a ScalarType
    CHECK(bt->to(torch::kFloat)[1].item<float>() == -2.0f);
    kiv::Result<torch::Tensor> missing = w->Tensor("model.layers.0.mlp.up_proj.weight");
    REQUIRE_FALSE(missing.ok());
    CHECK(missing.status().message().find("'model.layers.0.mlp.up_proj.weight'") !=
          std::string::npos);
    hash = w->HashWeights();
  }
  // The view outlives the SafetensorsWeights: it holds the mapping.
  CHECK(view.sizes() == torch::IntArrayRef({2, 3}));
  CHECK(view[1][0].item<float>() == 0.0f);
  CHECK(view.sum().item<float>() == 8.75f);

  // Nothing promises aligned data: an odd header length makes the floats misaligned, and the
  // tensor is then an aligned copy with the same values.
  for (size_t extra = 0; extra < 4; ++extra) {
    std::string odd = SafetensorsBytes(tensors, 1);
    uint64_t header_bytes;
    std::memcpy(&header_bytes, odd.data(), 8);
    odd.insert(8 + header_bytes - 1, std::string(extra, ' '));  // before the JSON's final '}'
    header_bytes += extra;
    std::memcpy(odd.data(), &header_bytes, 8);
    if ((8 + header_bytes) % 4 == 0) continue;  // aligned, as above
    WriteFile(dir / "odd.safetensors", odd);
    kiv::Result<kiv::SafetensorsWeights> w =
        kiv::SafetensorsWeights::OpenFile(dir / "odd.safetensors");
    REQUIRE_MESSAGE(w.ok(), w.status().ToString());
    CHECK(reinterpret_cast<uintptr_t>(w->Find("a")->data) % 4 != 0);
    kiv::Result<torch::Tensor> t = w->Tensor("a");
    REQUIRE(t.ok());
    CHECK(reinterpret_cast<uintptr_t>(t->data_ptr()) % 4 == 0);
    CHECK(torch::equal(*t, view));
    CHECK(w->HashWeights() == hash);
  }

  // Same tensors, other order: same hash. One changed bit: another hash.
  WriteFile(dir / "swapped.safetensors", SafetensorsBytes({tensors[1], tensors[0]}));
  CHECK(kiv::SafetensorsWeights::OpenFile(dir / "swapped.safetensors")->HashWeights() == hash);
  tensors[0].bytes[5] ^= 1;
  WriteFile(dir / "flipped.safetensors", SafetensorsBytes(tensors));
  CHECK(kiv::SafetensorsWeights::OpenFile(dir / "flipped.safetensors")->HashWeights() != hash);

  // Truncated: the message says so and names the tensor whose bytes are gone.
  const std::string whole = ReadFile(path);
  WriteFile(dir / "short.safetensors", whole.substr(0, whole.size() - 3));
  kiv::Result<kiv::SafetensorsWeights> t =
      kiv::SafetensorsWeights::OpenFile(dir / "short.safetensors");
  REQUIRE_FALSE(t.ok());
  MESSAGE(t.status().ToString());
  CHECK(t.status().code() == kiv::Status::Code::kCorruption);
  CHECK(t.status().message().find("truncated") != std::string::npos);
  CHECK(t.status().message().find("tensor 'b'") != std::string::npos);
  WriteFile(dir / "tiny.safetensors", whole.substr(0, 5));
  CHECK(kiv::SafetensorsWeights::OpenFile(dir / "tiny.safetensors")
            .status()
            .message()
            .find("truncated") != std::string::npos);
  WriteFile(dir / "header.safetensors", whole.substr(0, 20));
  CHECK(kiv::SafetensorsWeights::OpenFile(dir / "header.safetensors")
            .status()
            .message()
            .find("truncated: its header needs") != std::string::npos);
  std::string bad = whole;
  bad[8] = 'x';  // the JSON's opening brace
  WriteFile(dir / "bad.safetensors", bad);
  CHECK(kiv::SafetensorsWeights::OpenFile(dir / "bad.safetensors")
            .status()
            .message()
            .find("bad header") != std::string::npos);

  // A model dir whose weights are truncated fails to load with the same sentence.
  WriteFile(dir / "config.json", kSmolConfig);
  WriteFile(path, whole.substr(0, whole.size() - 3));
  auto model = kiv::LlamaModel::Load(dir.path.string(), torch::kCPU, torch::kFloat);
  REQUIRE_FALSE(model.ok());
  CHECK(model.status().message().find("truncated") != std::string::npos);
  fs::remove(path);
  model = kiv::LlamaModel::Load(dir.path.string(), torch::kCPU, torch::kFloat);
  REQUIRE_FALSE(model.ok());
  CHECK(model.status().message().find("no weights") != std::string::npos);
}

TEST_CASE("AttentionWithLse equals an explicit masked softmax, and merges exactly") {
  torch::manual_seed(3);
  const int64_t h_q = 6, h_kv = 2, n = 5, p = 7, d = 16;
  torch::Tensor q = torch::randn({h_q, n, d}), k = torch::randn({h_kv, p + n, d});
  torch::Tensor v = torch::randn({h_kv, p + n, d});
  kiv::PartialAttention got = kiv::AttentionWithLse(q, k, v, p);
  // Reference: repeat kv-heads, explicit scores, mask j > i + p, softmax.
  torch::Tensor kr = k.repeat_interleave(h_q / h_kv, 0), vr = v.repeat_interleave(h_q / h_kv, 0);
  torch::Tensor s = torch::matmul(q, kr.transpose(1, 2)) / std::sqrt(double(d));
  torch::Tensor mask = torch::arange(p + n).unsqueeze(0) > (torch::arange(n).unsqueeze(1) + p);
  s = s.masked_fill(mask, -INFINITY);
  CHECK(torch::allclose(got.out, torch::matmul(torch::softmax(s, -1), vr), 1e-5, 1e-6));
  CHECK(torch::allclose(got.lse, torch::logsumexp(s, -1), 1e-5, 1e-6));

  // The earlier keys (all visible) merged with the chunk's own (causal) give the whole.
  kiv::PartialAttention past = kiv::AttentionWithLse(q, k.narrow(1, 0, p), v.narrow(1, 0, p));
  kiv::PartialAttention self = kiv::AttentionWithLse(q, k.narrow(1, p, n), v.narrow(1, p, n), 0);
  kiv::PartialAttention merged = kiv::MergeAttention(past, self);
  CHECK(torch::allclose(merged.out, got.out, 1e-5, 1e-6));
  CHECK(torch::allclose(merged.lse, got.lse, 1e-5, 1e-6));

  // No visible key: out 0, lse -inf, and merging it changes nothing.
  kiv::PartialAttention none = kiv::AttentionWithLse(q, k.narrow(1, 0, 0), v.narrow(1, 0, 0));
  CHECK(none.out.abs().max().item<float>() == 0.0f);
  CHECK(std::isinf(none.lse.max().item<float>()));
  CHECK(torch::allclose(kiv::MergeAttention(none, got).out, got.out));
  kiv::PartialAttention masked = kiv::AttentionWithLse(q, k, v, -100);
  CHECK(masked.out.abs().max().item<float>() == 0.0f);

  // Long enough for several query blocks (the scores of a CPU block are capped at 2^20 floats),
  // each skipping the keys it cannot see, and strided views as the model passes them.
  {
    const int64_t bn = 200, bp = 2800, bt = bp + bn;
    torch::Tensor bq = torch::randn({bn, 4, d}).transpose(0, 1);  // [4, bn, d], strided
    torch::Tensor bk = torch::randn({2, bt, d}), bv = torch::randn({2, bt, d});
    for (int64_t offset : {bp, int64_t{-3}, int64_t{150}}) {
      CAPTURE(offset);
      kiv::PartialAttention blocked = kiv::AttentionWithLse(bq, bk, bv, offset);
      torch::Tensor bs =
          torch::matmul(bq, bk.repeat_interleave(2, 0).transpose(1, 2)) / std::sqrt(double(d));
      bs = bs.masked_fill(torch::arange(bt).unsqueeze(0) > torch::arange(bn).unsqueeze(1) + offset,
                          -INFINITY);
      torch::Tensor want = torch::matmul(torch::softmax(bs, -1), bv.repeat_interleave(2, 0));
      torch::Tensor seen = torch::isfinite(bs).any(-1).unsqueeze(-1);  // rows with a visible key
      CHECK(torch::allclose(blocked.out, torch::where(seen, want, torch::zeros_like(want)), 1e-5,
                            1e-6));
      CHECK(torch::equal(torch::isinf(blocked.lse), ~seen.squeeze(-1)));
    }
  }

  // bf16 inputs: scores and softmax still in float32, output back in bf16.
  kiv::PartialAttention half = kiv::AttentionWithLse(q.to(torch::kBFloat16), k.to(torch::kBFloat16),
                                                     v.to(torch::kBFloat16), p);
  CHECK((half.out.scalar_type() == torch::kBFloat16));  // doctest cannot print a ScalarType
  CHECK((half.lse.scalar_type() == torch::kFloat));     // doctest cannot print a ScalarType
  CHECK(torch::allclose(half.out.to(torch::kFloat), got.out, 0.05, 0.05));
}

TEST_CASE("FullCache grows by doubling and keeps every key in order") {
  torch::manual_seed(5);
  kiv::FullCache cache(2);
  std::vector<torch::Tensor> all_k;
  for (int64_t chunk = 0; chunk < 40; ++chunk) {
    const int64_t n = 1 + chunk % 13;
    torch::Tensor k = torch::randn({3, n, 8}), v = torch::randn({3, n, 8});
    torch::Tensor q = torch::randn({6, n, 8});
    for (int64_t layer = 0; layer < 2; ++layer) {
      torch::Tensor out = cache.Attend(layer, q, k, v, cache.length());
      CHECK(out.sizes() == torch::IntArrayRef({6, n, 8}));
    }
    all_k.push_back(k);
    cache.EndChunk(std::vector<int64_t>(static_cast<size_t>(n), chunk));
  }
  CHECK(torch::equal(cache.keys(1), torch::cat(all_k, 1)));
  CHECK(cache.length() == cache.keys(0).size(1));
}

// The tiny reference models (made once by tools/model/reference_logits.py), or "" with a
// message when they cannot be made here.
static std::string TinyReferenceRoot() {
  const std::string root = CacheDir() + "/reference/tiny";
  if (EnsureReference(root + "/tiny-mistral/reference.json", "tiny --out '" + root + "'"))
    return root;
  MESSAGE("skipped: no tiny reference models in " << root
                                                  << " and python3 with transformers is absent");
  return "";
}

TEST_CASE("tiny Llama3 / Qwen2 / Mistral models match transformers, whole and chunked") {
  const std::string root = TinyReferenceRoot();
  if (root.empty()) return;
  for (const std::string name : {"tiny-llama3", "tiny-qwen2", "tiny-mistral"}) {
    CAPTURE(name);
    const std::string dir = root + "/" + name;
    Reference ref;
    REQUIRE(ReadReference(dir + "/reference.json", &ref));
    auto model = kiv::LlamaModel::Load(dir, torch::kCPU, torch::kFloat);
    REQUIRE_MESSAGE(model.ok(), model.status().ToString());
    CheckInvFreq((*model)->config(), ref.inv_freq_bits);
    torch::Tensor whole = RunChunked(**model, ref.ids, {1 << 30});
    CHECK(CompareWithReference(whole, ref, name) < 1e-4);
    torch::Tensor chunked = RunChunked(**model, ref.ids, {5, 1, 11, 3});
    const double chunk_diff = (chunked - whole).abs().max().item<double>();
    MESSAGE(name << ": chunked vs one pass max diff " << chunk_diff);
    CHECK(chunk_diff < 1e-4);
  }
}

TEST_CASE("decode steps replaying CUDA graphs give the eager path's logits bit for bit") {
  const std::string root = TinyReferenceRoot();
  if (root.empty()) return;
  {
    auto cpu = kiv::LlamaModel::Load(root + "/tiny-llama3", torch::kCPU, torch::kFloat);
    REQUIRE_MESSAGE(cpu.ok(), cpu.status().ToString());
    const kiv::Status refused = (*cpu)->EnableDecodeGraphs(true);
    CHECK(!refused.ok());
    MESSAGE("on the CPU: " << refused.ToString());
    CHECK((*cpu)->EnableDecodeGraphs(false).ok());
  }
  if (!torch::cuda::is_available()) {
    MESSAGE("skipped on CUDA: no GPU here");
    return;
  }
  for (const std::string name : {"tiny-llama3", "tiny-qwen2", "tiny-mistral"}) {
    for (const torch::ScalarType dtype : {torch::kBFloat16, torch::kFloat}) {
      CAPTURE(name);
      CAPTURE(dtype);
      const std::string dir = root + "/" + name;
      Reference ref;
      REQUIRE(ReadReference(dir + "/reference.json", &ref));
      REQUIRE(ref.ids.size() > 12);
      auto eager = kiv::LlamaModel::Load(dir, torch::kCUDA, dtype);
      auto graphed = kiv::LlamaModel::Load(dir, torch::kCUDA, dtype);
      REQUIRE(eager.ok());
      REQUIRE(graphed.ok());
      REQUIRE((*graphed)->EnableDecodeGraphs(true).ok());
      const int64_t L = (*eager)->config().num_layers;
      kiv::FullCache ce(L), cg(L);
      const std::vector<int64_t> prompt(ref.ids.begin(), ref.ids.begin() + 8);
      CHECK(torch::equal((*eager)->Forward(prompt, ce), (*graphed)->Forward(prompt, cg)));
      size_t equal = 0, steps = 0;
      for (size_t t = 8; t < ref.ids.size(); ++t, ++steps) {
        const torch::Tensor a = (*eager)->Forward({ref.ids[t]}, ce);
        const torch::Tensor b = (*graphed)->Forward({ref.ids[t]}, cg);
        equal += torch::equal(a, b);
      }
      MESSAGE(name << " " << dtype << ": " << equal << " of " << steps
                   << " graphed decode steps equal the eager ones bit for bit");
      CHECK(equal == steps);
    }
  }
}

TEST_CASE("SmolLM2-135M-Instruct matches transformers on Emma, whole and in chunks of 64") {
  const std::string model_dir = CacheDir() + "/models/SmolLM2-135M-Instruct";
  if (!fs::exists(model_dir + "/model.safetensors")) {
    MESSAGE("skipped: the default model is not in " << model_dir
                                                    << " (tools/model/fetch_model.sh fetches it)");
    return;
  }
  const std::string ref_dir = CacheDir() + "/reference/SmolLM2-135M-Instruct";
  if (!EnsureReference(ref_dir + "/emma300.json",
                       "model --model '" + model_dir + "' --out '" + ref_dir + "'")) {
    MESSAGE("skipped: no reference logits in " << ref_dir
                                               << " and python3 with transformers is absent");
    return;
  }
  Reference ref;
  REQUIRE(ReadReference(ref_dir + "/emma300.json", &ref));
  auto model = kiv::LlamaModel::Load(model_dir, torch::kCPU, torch::kFloat);
  REQUIRE_MESSAGE(model.ok(), model.status().ToString());
  const kiv::ModelConfig& c = (*model)->config();
  CHECK(c.num_layers == 30);
  CHECK(c.num_kv_heads == 3);
  CHECK(c.vocab_size == ref.vocab);
  char hash[17];
  std::snprintf(hash, sizeof hash, "%016llx",
                static_cast<unsigned long long>((*model)->weights_hash()));
  MESSAGE("weights hash (XXH3-64) " << std::string(hash));
  CheckInvFreq(c, ref.inv_freq_bits);

  torch::Tensor whole = RunChunked(**model, ref.ids, {1 << 30});
  const double diff = CompareWithReference(whole, ref, "one chunk");
  CHECK(diff < 5e-4);
  torch::Tensor chunked = RunChunked(**model, ref.ids, {64});
  const double chunk_ref_diff = CompareWithReference(chunked, ref, "chunks of 64");
  CHECK(chunk_ref_diff < 5e-4);
  const double chunk_diff = (chunked - whole).abs().max().item<double>();
  MESSAGE("chunks of 64 vs one chunk: max diff " << chunk_diff);
  CHECK(chunk_diff < 5e-4);

  // Logits::kLast returns the last row of kAll.
  kiv::FullCache cache(c.num_layers);
  torch::Tensor last = (*model)->Forward(ref.ids, cache, kiv::LlamaModel::Logits::kLast);
  CHECK(last.sizes() == torch::IntArrayRef({1, c.vocab_size}));
  CHECK(torch::allclose(last[0], whole[-1], 1e-4, 1e-4));
}
