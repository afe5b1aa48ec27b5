// Checks every checksum in an archive and names the first damage: its offset and what it belongs
// to. Used by `kiv archive verify` and by the fault tests.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "storage/scan.h"
#include "storage/status.h"

namespace kiv {

struct VerifyReport {
  uint64_t file_bytes = 0;
  uint64_t committed_tokens = 0;
  uint64_t segments = 0;
  uint64_t commits = 0;
  uint64_t checksums_checked = 0;
  uint64_t bytes_checked = 0;
  uint64_t tail_bytes = 0;  // after the last commit; not damage to committed data, but not clean
  std::string tail_reason;
  bool damaged = false;  // a checksum or structure failed before the last commit
  uint64_t damage_offset = 0;
  std::string damage_what;  // "records of layer 3 in segment 2 (tokens 512..767)"

  bool clean() const { return !damaged && tail_bytes == 0; }
};

// Progress callback: bytes checked so far, of total. May be empty.
using VerifyProgress = std::function<void(uint64_t done_bytes, uint64_t total_bytes)>;

// Verifies the archive in data[0, size). An unreadable header (not an archive, too new, damaged)
// is an error Status; everything after it is reported in the VerifyReport.
Result<VerifyReport> VerifyBytes(const uint8_t* data, uint64_t size,
                                 const VerifyProgress& progress = {});
// Opens `path` read-only, maps it and verifies it.
Result<VerifyReport> VerifyArchive(const std::string& path, const VerifyProgress& progress = {});

}  // namespace kiv
