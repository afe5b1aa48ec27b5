// Eviction's encoding on the GPU: the device twin of RecordCodec::Encode (index/record.h),
// SignatureProjection::Sign without a centre (index/signature.h) and the scan's key norm (the
// Euclidean norm of the stored key as RecordCodec::DecodeStoredKey returns it), bit for bit.
//
// A prefill chunk evicts every (layer, kv-head) slot's oldest window tokens at once: 1,024 tokens
// × 90 slots of SmolLM2 a chunk. Encoding them on the host needs the keys and values copied there
// as float (47 MB a chunk) and ~90,000 records and signatures encoded on its cores; here only the
// 104-byte records and 16-byte signatures cross PCIe, and the signatures never leave the device.
//
// Plain C++: no CUDA headers (see scan.h).
#pragma once

#include <cstdint>
#include <string>

#include "index/record.h"
#include "kernels/dtype.h"

namespace kiv::kernels {

struct EncodeParams {
  uint32_t num_slots = 0;   // S (layer, kv-head) slots, each with the same tokens
  uint32_t count = 0;       // tokens per slot
  uint32_t head_dim = 64;   // d = 64 · s, s ≤ 4 record slices side by side
  index::RecordCodec codec; // key_bits 4, 5 or 6 (+ value_bits = 12)
  DType in_dtype = DType::kBFloat16;  // of keys and values
  // Slot s's token t: keys + s · slot_stride + t · d (elements; d contiguous ones), device.
  const void* keys = nullptr;
  const void* values = nullptr;  // the same layout
  uint64_t slot_stride = 0;      // elements, ≥ count · d

  // SignatureProjection::matrix() on the device, [bits][d] float; null: no signatures.
  const float* projection = nullptr;
  uint32_t bits = 128;  // 64, 128 or 256

  uint8_t* records = nullptr;      // [S][count][104 · s] bytes, device, written
  uint64_t* signatures = nullptr;  // [S][count][bits / 64], device, written (with projection)
  float* norms = nullptr;          // [S][count], device, written; null: not computed
};

// Empty when the launch is supported; otherwise what is wrong, naming the value.
std::string CheckEncode(const EncodeParams& params);

// Enqueues the encoding (two kernels) on `stream`; no host sync. Returns the cudaError_t as int
// (cudaErrorInvalidValue for an unsupported shape, with CheckEncode's message in `*error`).
int LaunchEncode(const EncodeParams& params, CUstream_st* stream, std::string* error = nullptr);

}  // namespace kiv::kernels
