// Element types the kernels read and write, named in their parameter structs. Plain C++: no CUDA
// headers, so runtime/ and the tests include it freely.
#pragma once

#include <cstdint>

struct CUstream_st;  // cudaStream_t is CUstream_st*; launchers take it without the CUDA headers

namespace kiv::kernels {

enum class DType : uint32_t {
  kFloat32 = 0,
  kBFloat16 = 1,  // round to nearest even on write; read as its exact float value
};

inline constexpr uint32_t DTypeBytes(DType t) { return t == DType::kFloat32 ? 4 : 2; }

}  // namespace kiv::kernels
