// A one-line progress bar on stderr for work that may take more than a second.
//
// It draws only when stderr is a terminal (never into logs or pipes), only once the work has run
// for a second (short runs stay silent), and at most ten times a second (a caller may report
// progress as often as it likes). Finish() erases the line so the report that follows starts
// clean.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace kiv::cli {

class ProgressBar {
 public:
  enum class Unit { kBytes, kTokens };

  // `enabled` lets a caller turn it off (--quiet, --json); it is also off when stderr is not a tty.
  ProgressBar(std::string label, uint64_t total, Unit unit, bool enabled = true);
  ~ProgressBar() { Finish(); }
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

  // `done` of `total` so far; `bytes` (for a token count) drives the rate shown beside it.
  void Update(uint64_t done, uint64_t bytes = 0);
  void Finish();

 private:
  using Clock = std::chrono::steady_clock;
  void Draw(uint64_t done, uint64_t bytes, double elapsed_s);

  std::string label_;
  uint64_t total_;
  Unit unit_;
  bool enabled_;
  bool drawn_ = false;
  Clock::time_point start_;
  Clock::time_point last_draw_;
};

}  // namespace kiv::cli
