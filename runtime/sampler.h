// Picks the next token from a step's logits: greedy, or temperature with top-p, from a seeded
// generator whose state travels in the session checkpoint, so a resumed session samples exactly
// what the uninterrupted one would have. No LibTorch: logits are a plain float array.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace kiv {

struct SamplerOptions {
  float temperature = 0.0f;  // 0: greedy (argmax, ties to the lower id)
  float top_p = 1.0f;        // nucleus: the smallest set of tokens holding this much probability
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(const SamplerOptions& options) : options_(options), state_(options.seed) {}
  int32_t Next(const float* logits, size_t vocab);

  uint64_t state() const { return state_; }
  void set_state(uint64_t state) { state_ = state; }
  const SamplerOptions& options() const { return options_; }
  std::string Describe() const;  // "greedy" or "temperature 0.7, top-p 0.9, seed 1"

 private:
  SamplerOptions options_;
  uint64_t state_;
};

}  // namespace kiv
