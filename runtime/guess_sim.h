// A diagnostic: how often the GPU's guessed scan threshold (kernels/scan.h, ScanSelectArgs::guess)
// would hold, under several policies at once, replayed on the CPU path's exact scores of each
// decode step. KIV_GUESS_SIM=1 turns it on for a CPU session (runtime/tiered_cache.cpp); the
// report goes to stderr when the cache is destroyed. The GPU counts only its own policy
// (kiv bench speed's "scan guesses held … missed …"); this shows which way the misses go and what
// another policy would do, without a GPU. Plain C++, no LibTorch.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace kiv {

class GuessSimulator {
 public:
  // Every (target, margin) pair is a policy: after a call whose guess held and gathered at least
  // target · c tokens, the next guess is the (target · c)-th largest score; otherwise the c-th
  // largest lowered by margin of its size (scan.cu's WriteGuess). Scores are in units of the
  // query's `unit` (scale · sqrt(Σ qq²)). A guess holds when between c and `buffer` tokens reach
  // it, or when n <= buffer (every token is gathered).
  GuessSimulator(std::vector<uint32_t> targets, std::vector<float> margins, size_t problems,
                 size_t buffer = 16384);
  // Also a guess from the scan's own query, with no memory of the last step: every `stride`-th
  // token's score (a fixed sample), and the threshold at the sample's ⌈target · c / stride⌉-th
  // largest, for each of `targets`. Reported after the policies above. stride = kGpuSample:
  // the GPU's own sample (kernels/scan.h, ScanSampleStride: every 64th token up to 262,144
  // tokens, at most 4,096 tokens beyond), what ScanSelectArgs::sample does.
  static constexpr uint32_t kGpuSample = 0xFFFFFFFFu;
  void AddSampled(uint32_t stride, std::vector<uint32_t> targets);

  // One decode scan of `problem`: its n scores and the c it keeps.
  void Observe(size_t problem, const float* scores, size_t n, size_t c, float unit);

  struct Tally {
    uint64_t held = 0, missed_few = 0, missed_many = 0;
    uint64_t gathered = 0;  // tokens gathered by the guesses that held
  };
  const Tally& tally(size_t policy) const { return tallies_[policy]; }
  size_t policies() const { return tallies_.size(); }
  std::string Report() const;

 private:
  std::vector<uint32_t> targets_;
  std::vector<float> margins_;
  size_t problems_, buffer_;
  std::vector<float> guesses_;  // [policy][problem]; NaN: none yet
  std::vector<Tally> tallies_;
  std::vector<float> top_;      // scratch: the largest scores, descending
  uint32_t stride_ = 0;
  std::vector<uint32_t> sampled_targets_;
  std::vector<Tally> sampled_;  // [sampled target]
  std::vector<float> sample_;   // scratch
};

}  // namespace kiv
