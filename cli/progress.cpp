#include "cli/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>

#include "cli/util.h"

namespace kiv::cli {

namespace {
constexpr double kShowAfterS = 1.0;    // short runs never draw
constexpr double kRedrawEveryS = 0.1;  // at most ten draws a second
constexpr int kBarWidth = 30;
}  // namespace

ProgressBar::ProgressBar(std::string label, uint64_t total, Unit unit, bool enabled)
    : label_(std::move(label)),
      total_(total),
      unit_(unit),
      enabled_(enabled && isatty(STDERR_FILENO) == 1),
      start_(Clock::now()),
      last_draw_(start_) {}

void ProgressBar::Update(uint64_t done, uint64_t bytes) {
  if (!enabled_) return;
  const Clock::time_point now = Clock::now();
  const double elapsed_s = std::chrono::duration<double>(now - start_).count();
  if (elapsed_s < kShowAfterS) return;
  if (drawn_ && std::chrono::duration<double>(now - last_draw_).count() < kRedrawEveryS) return;
  last_draw_ = now;
  Draw(done, unit_ == Unit::kBytes ? done : bytes, elapsed_s);
}

void ProgressBar::Draw(uint64_t done, uint64_t bytes, double elapsed_s) {
  const double fraction =
      total_ == 0 ? 1.0 : std::min(1.0, static_cast<double>(done) / static_cast<double>(total_));
  const int filled = static_cast<int>(fraction * kBarWidth);
  std::string bar(static_cast<size_t>(filled), '=');
  if (filled < kBarWidth) bar += '>';
  bar.resize(kBarWidth, ' ');

  std::string amount;
  if (unit_ == Unit::kBytes) {
    amount = HumanBytes(done) + " / " + HumanBytes(total_);
  } else {
    amount = Grouped(done) + " / " + Grouped(total_) + " tokens";
  }
  const double rate = static_cast<double>(bytes) / elapsed_s;
  std::string eta;
  if (fraction > 0.0 && fraction < 1.0) {
    char buf[32];
    std::snprintf(buf, sizeof(buf), "  eta %.0f s", elapsed_s * (1.0 - fraction) / fraction);
    eta = buf;
  }
  // \r returns to the line start and \033[K clears what a longer previous draw left behind.
  std::fprintf(stderr, "\r%s [%s] %3d%%  %s  %s%s\033[K", label_.c_str(), bar.c_str(),
               static_cast<int>(fraction * 100.0), amount.c_str(), HumanRate(rate).c_str(),
               eta.c_str());
  std::fflush(stderr);
  drawn_ = true;
}

void ProgressBar::Finish() {
  if (!drawn_) return;
  std::fprintf(stderr, "\r\033[K");
  std::fflush(stderr);
  drawn_ = false;
  enabled_ = false;
}

}  // namespace kiv::cli
