// What the CUDA runtime can see, for callers that include no CUDA headers (the tests decide with
// it whether a GPU comparison can run; the runtime whether --device cuda can).
#pragma once

#include <cstddef>
#include <string>

namespace kiv::kernels {

// Number of CUDA devices visible; 0 when there is no driver or no device.
int CudaDeviceCount();
// "NVIDIA H100 80GB HBM3, sm_90, driver 13.0" for device `index`, or why there is none.
std::string CudaDeviceName(int index = 0);

// Pins host pages [p, p + bytes) and maps them for the GPU (cudaHostRegister, mapped; read-only
// where the device supports it). Returns the cudaError_t as int (0 = cudaSuccess).
int RegisterHostMemory(void* p, size_t bytes, bool read_only);
int UnregisterHostMemory(void* p);
// Pinned host memory the driver allocates and maps for the GPU (cudaHostAlloc, mapped), usable on
// the device at its host address where HostPointerUsableOnDevice. 0 = cudaSuccess.
int AllocMappedHost(size_t bytes, void** p);
int FreeMappedHost(void* p);
// Whether kernels on `device` may use a registered host pointer as it is (the device pointer of
// registered memory equals its host pointer: cudaDevAttrCanUseHostPointerForRegisteredMem).
bool HostPointerUsableOnDevice(int device = 0);
// Device memory of the current device: free and total bytes (cudaMemGetInfo). 0 = cudaSuccess.
int CudaMemoryInfo(size_t* free_bytes, size_t* total_bytes);
// The name of a cudaError_t given as int.
std::string CudaErrorName(int error);

}  // namespace kiv::kernels
