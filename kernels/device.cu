#include "kernels/device.h"

#include <cuda_runtime.h>

namespace kiv::kernels {

int CudaDeviceCount() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return n;
}

std::string CudaDeviceName(int index) {
  cudaDeviceProp prop{};
  if (cudaError_t e = cudaGetDeviceProperties(&prop, index); e != cudaSuccess) {
    cudaGetLastError();
    return std::string("no CUDA device: ") + cudaGetErrorString(e);
  }
  int driver = 0;
  cudaDriverGetVersion(&driver);
  return std::string(prop.name) + ", sm_" + std::to_string(prop.major) + std::to_string(prop.minor) +
         ", driver " + std::to_string(driver / 1000) + "." + std::to_string(driver % 1000 / 10);
}

int RegisterHostMemory(void* p, size_t bytes, bool read_only) {
  int dev = 0, ro = 0;
  if (cudaError_t e = cudaGetDevice(&dev); e != cudaSuccess) return int(e);
  if (read_only) cudaDeviceGetAttribute(&ro, cudaDevAttrHostRegisterReadOnlySupported, dev);
  const unsigned flags = cudaHostRegisterMapped | (ro ? cudaHostRegisterReadOnly : 0u);
  return int(cudaHostRegister(p, bytes, flags));
}

int UnregisterHostMemory(void* p) { return int(cudaHostUnregister(p)); }

int AllocMappedHost(size_t bytes, void** p) {
  return int(cudaHostAlloc(p, bytes, cudaHostAllocMapped | cudaHostAllocPortable));
}

int FreeMappedHost(void* p) { return int(cudaFreeHost(p)); }

bool HostPointerUsableOnDevice(int device) {
  int usable = 0;
  if (cudaDeviceGetAttribute(&usable, cudaDevAttrCanUseHostPointerForRegisteredMem, device) !=
      cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return usable != 0;
}

int CudaMemoryInfo(size_t* free_bytes, size_t* total_bytes) {
  return int(cudaMemGetInfo(free_bytes, total_bytes));
}

std::string CudaErrorName(int error) {
  return std::string(cudaGetErrorName(cudaError_t(error))) + " (" +
         cudaGetErrorString(cudaError_t(error)) + ")";
}

}  // namespace kiv::kernels
