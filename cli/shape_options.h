// The model-shape options that `kiv archive synth` and `kiv bench append` share, and the spec
// they make.
#pragma once

#include <CLI/CLI.hpp>

#include <cstdint>
#include <string>

#include "storage/spec.h"

namespace kiv::cli {

struct ShapeOptions {  // defaults: SmolLM2-135M
  uint32_t layers = 30;
  uint32_t kv_heads = 3;
  uint32_t q_heads = 9;
  uint32_t head_dim = 64;
  uint32_t signature_bits = 128;
};

// Adds --layers, --kv-heads, --q-heads, --head-dim and --signature-bits to `sub`.
void AddShapeOptions(CLI::App& sub, ShapeOptions& shape);

// A spec of that shape for a model named `architecture` (nothing real: see the hashes' callers).
ArchiveSpec ShapeSpec(const ShapeOptions& shape, const std::string& architecture);

}  // namespace kiv::cli
