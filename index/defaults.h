// The retrieval defaults, chosen from measurements on real captures of SmolLM2-135M over Austen
// text: docs/quality.md has the tables, the command that printed them, and the reasons.
#pragma once

#include <cstdint>

#include "storage/format.h"

namespace kiv::index {

// K6V6 with Hadamard-rotated keys: the lowest attention-output error of the 104-byte codecs
// (1.6 % against 5.5 % for K4V8 rotated), and re-ranking with its keys loses almost nothing.
inline constexpr uint32_t kDefaultCodec = format::kCodecK6V6Rotated;
// 128 bits: the widest signature whose GPU-resident copy fits the 1.5 GB budget at 1M tokens of
// SmolLM2 (128 bits × 90 (layer, kv-head) × 1M = 1.44 GB).
inline constexpr uint32_t kDefaultSignatureBits = 128;
// Keys are signed uncentred: centring did not raise recall for the asymmetric scan and lowered it
// for the Hamming scan.
inline constexpr bool kDefaultCentred = false;
// Candidates from the asymmetric scan (without the key norm), then re-ranked to k.
inline constexpr uint32_t kDefaultCandidates = 1024;
inline constexpr uint32_t kDefaultTopK = 64;

}  // namespace kiv::index
