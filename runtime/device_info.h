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

}  // namespace kiv
