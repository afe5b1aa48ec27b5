#include "runtime/guess_sim.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <sstream>

#include "kernels/scan.h"

namespace kiv {
namespace {

// Tokens the guess scan would gather at `threshold`: every token when n <= buffer (the scan takes
// them all then), else those scoring at or above it.
size_t Gathered(const float* scores, size_t n, float threshold, size_t buffer) {
  if (n <= buffer) return n;
  return size_t(std::count_if(scores, scores + n, [&](float s) { return s >= threshold; }));
}

// One scan into `tally`; whether its guess held (between c and buffer tokens gathered).
bool Count(GuessSimulator::Tally* tally, size_t gathered, size_t c, size_t buffer) {
  const bool held = gathered >= c && gathered <= buffer;
  if (held) {
    ++tally->held;
    tally->gathered += gathered;
  } else if (gathered < c) {
    ++tally->missed_few;
  } else {
    ++tally->missed_many;
  }
  return held;
}

// "held … of …, missed … too few, … too many; mean gathered when held …"
void Print(std::ostringstream& out, const GuessSimulator::Tally& y) {
  out << "held " << y.held << " of " << y.held + y.missed_few + y.missed_many << ", missed "
      << y.missed_few << " too few, " << y.missed_many << " too many; mean gathered when held "
      << (y.held ? double(y.gathered) / double(y.held) : 0.0) << "\n";
}

}  // namespace

GuessSimulator::GuessSimulator(std::vector<uint32_t> targets, std::vector<float> margins,
                               size_t problems, size_t buffer)
    : targets_(std::move(targets)),
      margins_(std::move(margins)),
      problems_(problems),
      buffer_(buffer),
      guesses_(targets_.size() * margins_.size() * problems, std::nanf("")),
      tallies_(targets_.size() * margins_.size()) {}

void GuessSimulator::AddSampled(uint32_t stride, std::vector<uint32_t> targets) {
  stride_ = stride;
  sampled_targets_ = std::move(targets);
  sampled_.assign(sampled_targets_.size(), Tally{});
}

void GuessSimulator::Observe(size_t problem, const float* scores, size_t n, size_t c,
                             float unit) {
  if (c == 0 || c >= n || problem >= problems_) return;  // the GPU guesses nothing then either
  if (stride_ > 0) {
    const size_t stride = stride_ == kGpuSample ? kernels::ScanSampleStride(uint32_t(n)) : stride_;
    sample_.clear();
    for (size_t t = 0; t < n; t += stride) sample_.push_back(scores[t]);
    std::sort(sample_.begin(), sample_.end(), std::greater<float>());
    for (size_t i = 0; i < sampled_targets_.size(); ++i) {
      const uint32_t k = kernels::SampleRank(uint32_t(sample_.size()), uint32_t(stride),
                                             uint32_t(c), sampled_targets_[i]);
      Count(&sampled_[i], Gathered(scores, n, sample_[k - 1], buffer_), c, buffer_);
    }
  }
  const uint32_t most = *std::max_element(targets_.begin(), targets_.end());
  const size_t keep = std::min(n, size_t{most} * c);
  top_.assign(scores, scores + n);
  std::partial_sort(top_.begin(), top_.begin() + keep, top_.end(), std::greater<float>());
  const float z_c = top_[c - 1] / unit;
  for (size_t t = 0; t < targets_.size(); ++t) {
    for (size_t m = 0; m < margins_.size(); ++m) {
      const size_t policy = t * margins_.size() + m;
      float& guess = guesses_[policy * problems_ + problem];
      // No guess yet (or a zero query): nothing gathered, unless the scan takes every token.
      const bool none = std::isnan(guess) || !(unit > 0.0f);
      const size_t gathered =
          none && n > buffer_ ? 0 : Gathered(scores, n, none ? 0.0f : guess * unit, buffer_);
      const bool held = Count(&tallies_[policy], gathered, c, buffer_);
      const size_t target = size_t{targets_[t]} * c;
      if (held && gathered >= target && target <= keep)
        guess = top_[target - 1] / unit;
      else
        guess = z_c - margins_[m] * std::fabs(z_c);
    }
  }
}

std::string GuessSimulator::Report() const {
  std::ostringstream out;
  out << "guess simulation (" << problems_ << " problems, buffer " << buffer_ << "):\n";
  for (size_t t = 0; t < targets_.size(); ++t) {
    for (size_t m = 0; m < margins_.size(); ++m) {
      out << "  target " << targets_[t] << " margin " << margins_[m] << ": ";
      Print(out, tallies_[t * margins_.size() + m]);
    }
  }
  for (size_t i = 0; i < sampled_.size(); ++i) {
    if (stride_ == kGpuSample)
      out << "  sampled as the GPU samples, target " << sampled_targets_[i] << ": ";
    else
      out << "  sampled every " << stride_ << "th token, target " << sampled_targets_[i] << ": ";
    Print(out, sampled_[i]);
  }
  return out.str();
}

}  // namespace kiv
