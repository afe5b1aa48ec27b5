#include "cli/shape_options.h"

namespace kiv::cli {

void AddShapeOptions(CLI::App& sub, ShapeOptions& shape) {
  sub.add_option("--layers", shape.layers, "Layers of the model shape")
      ->capture_default_str()
      ->check(CLI::Range(1, 1024));
  sub.add_option("--kv-heads", shape.kv_heads, "Key/value heads per layer")
      ->capture_default_str()
      ->check(CLI::Range(1, 1024));
  sub.add_option("--q-heads", shape.q_heads, "Query heads per layer (a multiple of --kv-heads)")
      ->capture_default_str()
      ->check(CLI::Range(1, 1024));
  sub.add_option("--head-dim", shape.head_dim, "Head dimension (a multiple of 64)")
      ->capture_default_str()
      ->check(CLI::Range(64, 1024));
  sub.add_option("--signature-bits", shape.signature_bits, "Bits per signature (a multiple of 64)")
      ->capture_default_str()
      ->check(CLI::Range(64, 4096));
}

ArchiveSpec ShapeSpec(const ShapeOptions& shape, const std::string& architecture) {
  ArchiveSpec spec;
  spec.model.architecture = architecture;
  spec.model.num_layers = shape.layers;
  spec.model.num_q_heads = shape.q_heads;
  spec.model.num_kv_heads = shape.kv_heads;
  spec.model.head_dim = shape.head_dim;
  spec.codec.signature_bits = shape.signature_bits;
  return spec;
}

}  // namespace kiv::cli
