#include "runtime/device_info.h"

#include <torch/cuda.h>
#include <torch/version.h>

namespace kiv {

DeviceInfo QueryDevices() {
  DeviceInfo info;
  info.torch_version = TORCH_VERSION;
  info.cuda_available = torch::cuda::is_available();
  // Device properties need the CUDA runtime headers; the GPU issue fills them in from kernels/.
  const int64_t count = info.cuda_available ? static_cast<int64_t>(torch::cuda::device_count()) : 0;
  for (int64_t i = 0; i < count; ++i) info.gpus.push_back(GpuInfo{"cuda:" + std::to_string(i)});
  return info;
}

}  // namespace kiv
