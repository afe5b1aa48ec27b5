// What LibTorch sees on this machine: its version and the devices it can run on. Benchmarks put
// this into their environment fingerprint; `kiv env` prints it. The header is LibTorch-free.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kiv {

struct GpuInfo {
  std::string name;
  uint64_t memory_bytes = 0;
  int compute_major = 0;
  int compute_minor = 0;
};

struct DeviceInfo {
  std::string torch_version;  // the LibTorch kiv was built against
  bool cuda_available = false;
  std::vector<GpuInfo> gpus;
};

DeviceInfo QueryDevices();

// Bytes in use on the current CUDA device (total − free: the CUDA context, LibTorch's cached
// blocks, kiv's own buffers); 0 without a device or a build without the kernels.
uint64_t GpuMemoryUsed();
// LibTorch's caching allocator on the current CUDA device: the bytes it holds from CUDA
// (reserved: tensors and its cached free blocks, CUDA graphs' pools among them) and those in live
// tensors (allocated). What GpuMemoryUsed counts beyond `reserved` is the CUDA context and
// memory kiv allocates itself. False without a CUDA LibTorch or device.
bool TorchGpuMemory(uint64_t* reserved, uint64_t* allocated);
// The device's copy bandwidth in bytes/s (read + written, a 1 GiB device-to-device copy, best of
// 5): the limit a memory-bound decode step is held against. 0 on the CPU.
double MeasureGpuBandwidth();
// Resident and peak resident host memory of this process (VmRSS, VmHWM), bytes.
uint64_t HostRss();
uint64_t HostPeakRss();

}  // namespace kiv
