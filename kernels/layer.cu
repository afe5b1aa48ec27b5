// RMSNorm, RoPE, the residual add with RMSNorm, and SwiGLU fused for the GPU runner; see layer.h
// for the formulas and the exactness.
//
// RmsNormKernel and AddRmsNormKernel: one block per row; each thread squares and sums a stride of
// the row, a block reduction, then every thread writes its elements. RopeKernel and SwiGluKernel:
// one thread per output element. Float products and sums are spelled __fmul_rn / __fadd_rn so
// they never contract into FMA (the separate LibTorch operations round each of them).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cub/block/block_reduce.cuh>

#include "kernels/cuda_call.cuh"
#include "kernels/decode_kv.cuh"
#include "kernels/layer.h"

namespace kiv::kernels {
namespace {

constexpr uint32_t kNormThreads = 256;

// Rounds to the dtype (bf16: nearest even) and stores; returns the stored value as a float.
__device__ __forceinline__ float Round(DType t, float v) {
  return t == DType::kBFloat16 ? __bfloat162float(__float2bfloat16_rn(v)) : v;
}
__device__ __forceinline__ void Write(void* p, DType t, uint64_t i, float v) {
  if (t == DType::kBFloat16)
    static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v);
  else
    static_cast<float*>(p)[i] = v;
}

// rsqrt(Σ h² / dim + eps) of a block's row from each thread's share of Σ h². RmsNormKernel and
// AddRmsNormKernel both take it from here, so AddRmsNorm(h, o) is RmsNorm(h + o) bit for bit.
__device__ __forceinline__ float RowRsqrt(float partial_sum, uint32_t dim, float eps) {
  using Reduce = cub::BlockReduce<float, kNormThreads>;
  __shared__ typename Reduce::TempStorage storage;
  __shared__ float r_shared;
  const float sum = Reduce(storage).Sum(partial_sum);
  if (threadIdx.x == 0) r_shared = rsqrtf(__fadd_rn(__fdiv_rn(sum, float(dim)), eps));
  __syncthreads();
  return r_shared;
}

__global__ void __launch_bounds__(kNormThreads) RmsNormKernel(RmsNormParams p) {
  const uint64_t xs = p.x_stride ? p.x_stride : p.dim, os = p.out_stride ? p.out_stride : p.dim;
  const uint64_t row = blockIdx.x;
  float sum = 0.0f;
  for (uint32_t i = threadIdx.x; i < p.dim; i += kNormThreads) {
    const float h = ReadAs(p.x, p.dtype, row * xs + i);
    sum = __fadd_rn(sum, __fmul_rn(h, h));
  }
  const float r = RowRsqrt(sum, p.dim, p.eps);
  for (uint32_t i = threadIdx.x; i < p.dim; i += kNormThreads) {
    const float h = Round(p.dtype, __fmul_rn(ReadAs(p.x, p.dtype, row * xs + i), r));
    Write(p.out, p.dtype, row * os + i, __fmul_rn(ReadAs(p.weight, p.dtype, i), h));
  }
}

// The same threads own the same elements in both loops, so each reads back the sum it wrote.
__global__ void __launch_bounds__(kNormThreads) AddRmsNormKernel(AddRmsNormParams p) {
  const uint64_t base = uint64_t{blockIdx.x} * p.dim;
  float sum = 0.0f;
  for (uint32_t i = threadIdx.x; i < p.dim; i += kNormThreads) {
    const uint64_t e = base + i;
    const float h = Round(p.dtype, __fadd_rn(ReadAs(p.h, p.dtype, e), ReadAs(p.o, p.dtype, e)));
    Write(p.sum, p.dtype, e, h);
    sum = __fadd_rn(sum, __fmul_rn(h, h));
  }
  const float r = RowRsqrt(sum, p.dim, p.eps);
  for (uint32_t i = threadIdx.x; i < p.dim; i += kNormThreads) {
    const float h = Round(p.dtype, __fmul_rn(ReadAs(p.sum, p.dtype, base + i), r));
    Write(p.out, p.dtype, base + i, __fmul_rn(ReadAs(p.weight, p.dtype, i), h));
  }
}

__global__ void RopeKernel(RopeParams p) {
  const uint32_t d = p.head_dim, half = d / 2;
  const uint64_t total = uint64_t{p.rows} * p.heads * d;
  const uint64_t xs = p.x_stride ? p.x_stride : uint64_t{p.heads} * d;
  const uint64_t os = p.out_stride ? p.out_stride : uint64_t{p.heads} * d;
  for (uint64_t e = blockIdx.x * uint64_t{blockDim.x} + threadIdx.x; e < total;
       e += uint64_t{gridDim.x} * blockDim.x) {
    const uint32_t i = uint32_t(e % d);
    const uint64_t th = e / d, t = th / p.heads, h = th % p.heads;
    const uint64_t in = t * xs + h * d;
    const float x = ReadAs(p.x, p.dtype, in + i);
    const float rot =
        i < half ? -ReadAs(p.x, p.dtype, in + i + half) : ReadAs(p.x, p.dtype, in + i - half);
    const float a = Round(p.dtype, __fmul_rn(x, ReadAs(p.cos, p.dtype, t * d + i)));
    const float b = Round(p.dtype, __fmul_rn(rot, ReadAs(p.sin, p.dtype, t * d + i)));
    Write(p.out, p.dtype, t * os + h * d + i, __fadd_rn(a, b));
  }
}

// ATen's CUDA silu is `x_acc / (opmath_t(1) + ::exp(-x_acc))` with opmath float: the same
// expression (expf, an IEEE division, no contraction under --fmad=false), rounded to the dtype as
// its output is, then the product as the bf16 multiply rounds it.
__global__ void SwiGluKernel(SwiGluParams p) {
  const uint64_t total = uint64_t{p.rows} * p.inter;
  const uint64_t is = p.in_stride ? p.in_stride : 2 * uint64_t{p.inter};
  for (uint64_t e = blockIdx.x * uint64_t{blockDim.x} + threadIdx.x; e < total;
       e += uint64_t{gridDim.x} * blockDim.x) {
    const uint64_t t = e / p.inter, i = e % p.inter;
    const float g = ReadAs(p.gate_up, p.dtype, t * is + i);
    const float silu = Round(p.dtype, __fdiv_rn(g, __fadd_rn(1.0f, expf(-g))));
    Write(p.out, p.dtype, e, __fmul_rn(silu, ReadAs(p.gate_up, p.dtype, t * is + p.inter + i)));
  }
}

// Block b < q_heads: q's head b to float; then kv_heads blocks of k rows, then of v rows.
__global__ void DecodeKvWriteKernel(DecodeKvWriteParams p) {
  const uint32_t b = blockIdx.x, d = p.head_dim;
  if (b < p.q_heads) {
    for (uint32_t i = threadIdx.x; i < d; i += blockDim.x)
      p.q_out[uint64_t{b} * d + i] = ReadAs(p.q, p.dtype, b * p.q_stride + i);
    return;
  }
  WriteHotRow(p, b - p.q_heads);
}

int Refuse(std::string* error, const std::string& why) {
  if (error) *error = why;
  return int(cudaErrorInvalidValue);
}

// The row shapes both norm kernels take (one block a row, the row's sums in shared memory).
int CheckNormShape(const char* name, uint32_t rows, uint32_t dim, std::string* error) {
  if (dim == 0 || dim > 16384)
    return Refuse(error, std::string(name) + ": dim = " + std::to_string(dim) + ", not in 1..16384");
  if (rows > 0x7FFFFFFFu) return Refuse(error, std::string(name) + ": rows = " + std::to_string(rows));
  return 0;
}

}  // namespace

int LaunchRmsNorm(const RmsNormParams& p, CUstream_st* stream, std::string* error) {
  if (!p.x || !p.weight || !p.out) return Refuse(error, "RmsNorm: a null x, weight or out");
  if (const int rc = CheckNormShape("RmsNorm", p.rows, p.dim, error)) return rc;
  if (p.rows == 0) return 0;
  RmsNormKernel<<<p.rows, kNormThreads, 0, stream>>>(p);
  return int(cudaGetLastError());
}

int LaunchRope(const RopeParams& p, CUstream_st* stream, std::string* error) {
  if (!p.x || !p.out || !p.cos || !p.sin) return Refuse(error, "Rope: a null pointer");
  if (p.head_dim == 0 || p.head_dim % 2 != 0 || p.head_dim > 1024)
    return Refuse(error, "Rope: head_dim = " + std::to_string(p.head_dim) +
                             ", not even and in 2..1024");
  const uint64_t total = uint64_t{p.rows} * p.heads * p.head_dim;
  if (total == 0) return 0;
  const uint32_t threads = 256;
  const uint64_t blocks = std::min<uint64_t>((total + threads - 1) / threads, 65535);
  RopeKernel<<<uint32_t(blocks), threads, 0, stream>>>(p);
  return int(cudaGetLastError());
}

int LaunchAddRmsNorm(const AddRmsNormParams& p, CUstream_st* stream, std::string* error) {
  if (!p.h || !p.o || !p.weight || !p.sum || !p.out)
    return Refuse(error, "AddRmsNorm: a null h, o, weight, sum or out");
  if (const int rc = CheckNormShape("AddRmsNorm", p.rows, p.dim, error)) return rc;
  if (p.rows == 0) return 0;
  AddRmsNormKernel<<<p.rows, kNormThreads, 0, stream>>>(p);
  return int(cudaGetLastError());
}

int LaunchSwiGlu(const SwiGluParams& p, CUstream_st* stream, std::string* error) {
  if (!p.gate_up || !p.out) return Refuse(error, "SwiGlu: a null gate_up or out");
  if (p.in_stride != 0 && p.in_stride < 2 * uint64_t{p.inter})
    return Refuse(error, "SwiGlu: in_stride = " + std::to_string(p.in_stride) +
                             ", less than 2 * inter = " + std::to_string(2 * uint64_t{p.inter}));
  const uint64_t total = uint64_t{p.rows} * p.inter;
  if (total == 0) return 0;
  const uint32_t threads = 256;
  const uint64_t blocks = std::min<uint64_t>((total + threads - 1) / threads, 65535);
  SwiGluKernel<<<uint32_t(blocks), threads, 0, stream>>>(p);
  return int(cudaGetLastError());
}

int CheckDecodeKvWrite(const DecodeKvWriteParams& p, const char* name, uint64_t* blocks,
                       std::string* error) {
  if (!p.q || !p.k || !p.v || !p.hot_k || !p.hot_v || !p.row || !p.q_out)
    return Refuse(error, std::string(name) + ": a null pointer");
  if (p.head_dim == 0 || p.head_dim > 1024)
    return Refuse(error, std::string(name) + ": head_dim = " + std::to_string(p.head_dim) +
                             ", not in 1..1024");
  if (p.hot_stride < p.hot_rows * p.head_dim)
    return Refuse(error, std::string(name) + ": hot_stride = " + std::to_string(p.hot_stride) +
                             " is less than hot_rows * head_dim");
  *blocks = uint64_t{p.q_heads} + 2 * uint64_t{p.kv_heads};
  if (*blocks > 65535) return Refuse(error, std::string(name) + ": more than 65535 heads");
  return 0;
}

int LaunchDecodeKvWrite(const DecodeKvWriteParams& p, CUstream_st* stream, std::string* error) {
  uint64_t blocks = 0;
  if (const int rc = CheckDecodeKvWrite(p, "DecodeKvWrite", &blocks, error)) return rc;
  if (blocks == 0) return 0;
  DecodeKvWriteKernel<<<uint32_t(blocks), std::min(p.head_dim, 256u), 0, stream>>>(p);
  return int(cudaGetLastError());
}

}  // namespace kiv::kernels
