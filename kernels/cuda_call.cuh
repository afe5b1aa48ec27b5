// Inside a launcher that returns a cudaError_t as int: return the first failing call's error.
#pragma once

#include <cuda_runtime.h>

#define KIV_CUDA_CALL(expr)                                          \
  do {                                                               \
    const cudaError_t kiv_cuda_call_e = (expr);                      \
    if (kiv_cuda_call_e != cudaSuccess) return int(kiv_cuda_call_e); \
  } while (0)
