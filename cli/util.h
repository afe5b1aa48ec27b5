// Small helpers shared by the subcommands: number formatting for people, the one-line error, the
// exit codes.
#pragma once

#include <cstdint>
#include <string>

namespace kiv::cli {

// The exit codes every subcommand uses (see docs in main.cpp's --help footer).
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;
inline constexpr int kExitUsage = 2;

// "0x00000000deadbeef": 16 hex digits, so hashes line up and compare by eye.
std::string Hex64(uint64_t v);

// "1,234,567" for counts people read.
std::string Grouped(uint64_t v);

// "1 commit", "1,024 segments": a grouped count and its noun, plural when it is not one.
std::string Count(uint64_t n, const std::string& noun);

// "1.50 GiB" (binary units, for sizes) and "1.23 GB/s" (decimal, for rates, as disks quote them).
std::string HumanBytes(uint64_t bytes);
std::string HumanRate(double bytes_per_s);

// Prints "kiv: <sentence>" as exactly one line on stderr (newlines inside become spaces, so a
// message from the storage layer can never break the one-line promise) and returns kExitFailure.
int Fail(const std::string& sentence);
// The same, returning kExitUsage, for option values that are wrong together.
int UsageError(const std::string& sentence);

// Where kiv keeps what it fetches and makes (models, text, captures): $KIV_CACHE, else
// ~/.cache/kiv.
std::string KivCacheDir();

// 'path' quoted for messages.
std::string Quoted(const std::string& path);

}  // namespace kiv::cli
