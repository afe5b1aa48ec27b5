// The golden archive fixtures/golden/small.kiv: what it holds and the code that writes it.
// kiv_make_golden writes it; golden_test regenerates it and compares byte for byte, and reads the
// checked-in file back value by value. Its content is spelled out here (not taken from test_util)
// so that no change elsewhere can move a byte of it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "storage/checkpoint.h"
#include "storage/spec.h"
#include "storage/status.h"

namespace kiv::golden {

// 2 layers, 4 query heads, 1 kv-head, head_dim 64, 64 signature bits, centred.
ArchiveSpec Spec();

// Tokens per segment, in order: {3, 2}. A commit follows each segment.
std::vector<uint32_t> SegmentTokens();

uint8_t RecordByte(uint64_t token, uint32_t layer, uint32_t head, uint32_t i);     // i < 104
uint8_t SignatureByte(uint64_t token, uint32_t layer, uint32_t head, uint32_t i);  // i < 8
uint32_t TokenId(uint64_t token);
uint32_t Position(uint64_t token);
// The checkpoint of commit `k` (1-based; commit 0 is the empty creating commit).
HotCheckpoint Checkpoint(uint32_t k);

// Writes the golden archive to `path`, which must not exist. Uses no time and no randomness.
Status Write(const std::string& path);

// The text `xxd` prints for `bytes` (its default format), for the .hex beside the fixture.
std::string XxdDump(const std::vector<uint8_t>& bytes);

}  // namespace kiv::golden
