// Reads a capture written by tools/capture/capture.py (format "kiv-capture-1", see
// tools/capture/README.md): post-RoPE queries and keys and the values of a real model, per layer.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "storage/status.h"

namespace kiv::cli {

struct CaptureMeta {
  std::string dir;
  std::string model;
  uint32_t tokens = 0;
  uint32_t num_layers = 0;
  uint32_t num_q_heads = 0;
  uint32_t num_kv_heads = 0;
  uint32_t head_dim = 0;
  std::vector<uint32_t> layers;  // captured layer indices
};

struct CaptureLayer {
  uint32_t layer = 0;
  std::vector<float> q;  // [H_q][T][d]
  std::vector<float> k;  // [H_kv][T][d]
  std::vector<float> v;  // [H_kv][T][d]
};

Result<CaptureMeta> ReadCaptureMeta(const std::string& dir);
Result<CaptureLayer> ReadCaptureLayer(const CaptureMeta& meta, uint32_t layer);

}  // namespace kiv::cli
