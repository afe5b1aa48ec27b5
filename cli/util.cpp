#include "cli/util.h"

#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <iostream>

namespace kiv::cli {

std::string Hex64(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof(buf), "0x%016" PRIx64, v);
  return buf;
}

std::string Grouped(uint64_t v) {
  std::string digits = std::to_string(v);
  std::string out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

std::string Count(uint64_t n, const std::string& noun) {
  return Grouped(n) + " " + noun + (n == 1 ? "" : "s");
}

std::string HumanBytes(uint64_t bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  if (bytes < 1024) return std::to_string(bytes) + " B";
  double v = static_cast<double>(bytes);
  size_t unit = 0;
  while (v >= 1024.0 && unit + 1 < std::size(kUnits)) {
    v /= 1024.0;
    ++unit;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.2f %s", v, kUnits[unit]);
  return buf;
}

std::string HumanRate(double bytes_per_s) {
  char buf[32];
  if (bytes_per_s >= 1e9) {
    std::snprintf(buf, sizeof(buf), "%.2f GB/s", bytes_per_s / 1e9);
  } else {
    std::snprintf(buf, sizeof(buf), "%.1f MB/s", bytes_per_s / 1e6);
  }
  return buf;
}

namespace {
int PrintLine(const std::string& sentence, int code) {
  std::string line = "kiv: " + sentence;
  for (char& c : line) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  std::cout.flush();  // keep stdout's report ahead of the verdict when both go to one terminal
  std::cerr << line << '\n' << std::flush;
  return code;
}
}  // namespace

int Fail(const std::string& sentence) { return PrintLine(sentence, kExitFailure); }
int UsageError(const std::string& sentence) { return PrintLine(sentence, kExitUsage); }

std::string Quoted(const std::string& path) { return "'" + path + "'"; }

std::string KivCacheDir() {
  const char* cache = std::getenv("KIV_CACHE");
  const char* home = std::getenv("HOME");
  return cache ? cache : std::string(home ? home : ".") + "/.cache/kiv";
}

}  // namespace kiv::cli
