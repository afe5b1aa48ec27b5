// The guess simulator (runtime/guess_sim.h) replays the GPU's guess rule on given scores.
#include "runtime/guess_sim.h"

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <vector>

namespace kiv {
namespace {

// n scores spread evenly over (−1, 1], largest first at index 0.
std::vector<float> Even(size_t n, float shift = 0.0f) {
  std::vector<float> s(n);
  for (size_t i = 0; i < n; ++i) s[i] = 1.0f - 2.0f * float(i) / float(n) + shift;
  return s;
}

TEST_CASE("the simulated guess misses first, then holds where the scores stay") {
  GuessSimulator sim({8}, {0.25f}, 1, 16384);
  const std::vector<float> s = Even(100000);
  sim.Observe(0, s.data(), s.size(), 100, 1.0f);  // no guess yet: a miss, too few
  CHECK(sim.tally(0).missed_few == 1);
  sim.Observe(0, s.data(), s.size(), 100, 1.0f);  // guess 0.25 below the 100th: ~12,600 reach it
  CHECK(sim.tally(0).held == 1);
  CHECK(sim.tally(0).gathered > 12000);
  CHECK(sim.tally(0).gathered < 13000);
  sim.Observe(0, s.data(), s.size(), 100, 1.0f);  // now at the 800th largest: 800 gathered
  CHECK(sim.tally(0).held == 2);
  CHECK(sim.tally(0).gathered - 12000 < 1500);
}

TEST_CASE("the simulated guess misses both ways when the scores move") {
  GuessSimulator sim({8}, {0.25f}, 1, 16384);
  const std::vector<float> s = Even(100000);
  sim.Observe(0, s.data(), s.size(), 100, 1.0f);
  sim.Observe(0, s.data(), s.size(), 100, 1.0f);
  sim.Observe(0, s.data(), s.size(), 100, 1.0f);  // the guess is the 800th largest, ~0.984
  const std::vector<float> down = Even(100000, -0.1f);
  sim.Observe(0, down.data(), down.size(), 100, 1.0f);  // none reach it
  CHECK(sim.tally(0).missed_few == 2);
  const std::vector<float> up = Even(100000, 0.5f);
  sim.Observe(0, up.data(), up.size(), 100, 1.0f);  // 41 % of them reach the new guess
  CHECK(sim.tally(0).missed_many == 1);
  // At most the buffer's tokens: every token is gathered, the guess always holds.
  GuessSimulator small({8}, {0.25f}, 1, 16384);
  const std::vector<float> few = Even(10000);
  small.Observe(0, few.data(), few.size(), 100, 1.0f);
  CHECK(small.tally(0).held == 1);
  CHECK(small.Report().find("held 1 of 1") != std::string::npos);
}

TEST_CASE("the sampled guess sets its threshold from the scan's own scores") {
  GuessSimulator sim({8}, {0.25f}, 1, 16384);
  sim.AddSampled(64, {8, 1000});
  const std::vector<float> s = Even(100000);
  // Target 8 of c = 100: the sample's 13th largest (index 768 of the scores): 769 gathered.
  sim.Observe(0, s.data(), s.size(), 100, 1.0f);
  const std::vector<float> up = Even(100000, 0.5f);  // moved: the sample moves with it
  sim.Observe(0, up.data(), up.size(), 100, 1.0f);
  const std::string report = sim.Report();
  CHECK(report.find("target 8: held 2 of 2, missed 0 too few, 0 too many; mean gathered when "
                    "held 769") != std::string::npos);
  // Target 1000: the 1,563rd of 1,563 samples, below every other score: all gathered, too many.
  CHECK(report.find("target 1000: held 0 of 2, missed 0 too few, 2 too many") !=
        std::string::npos);
  // The GPU's own sample: every 64th up to 262,144 tokens (the same as above at 100,000), spread
  // beyond. At 1,000,000 tokens: every 245th (4,082 samples), target 8 of c = 100 at the
  // ⌈800 / 245⌉ = 4th largest sample, index 735 of the scores: 736 gathered.
  GuessSimulator gpu({8}, {0.25f}, 1, 16384);
  gpu.AddSampled(GuessSimulator::kGpuSample, {8});
  gpu.Observe(0, s.data(), s.size(), 100, 1.0f);
  const std::vector<float> big = Even(1000000);
  gpu.Observe(0, big.data(), big.size(), 100, 1.0f);
  CHECK(gpu.Report().find("sampled as the GPU samples, target 8: held 2 of 2, missed 0 too few, "
                          "0 too many; mean gathered when held 752.5") != std::string::npos);
}

}  // namespace
}  // namespace kiv
