#include "runtime/device_info.h"

#include <torch/cuda.h>
#include <torch/torch.h>
#include <torch/version.h>

#include <chrono>
#include <fstream>
#include <string>

#if KIV_TORCH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#endif

#ifdef KIV_HAVE_KERNELS
#include "kernels/device.h"
#endif

namespace kiv {

DeviceInfo QueryDevices() {
  DeviceInfo info;
  info.torch_version = TORCH_VERSION;
  info.cuda_available = torch::cuda::is_available();
  const int64_t count = info.cuda_available ? static_cast<int64_t>(torch::cuda::device_count()) : 0;
  for (int64_t i = 0; i < count; ++i) {
#ifdef KIV_HAVE_KERNELS
    info.gpus.push_back(GpuInfo{kernels::CudaDeviceName(int(i))});
#else
    info.gpus.push_back(GpuInfo{"cuda:" + std::to_string(i)});
#endif
  }
  return info;
}

uint64_t GpuMemoryUsed() {
#ifdef KIV_HAVE_KERNELS
  size_t free_bytes = 0, total = 0;
  if (kernels::CudaDeviceCount() > 0 && kernels::CudaMemoryInfo(&free_bytes, &total) == 0)
    return total - free_bytes;
#endif
  return 0;
}

bool TorchGpuMemory(uint64_t* reserved, uint64_t* allocated) {
#if KIV_TORCH_CUDA
  if (!torch::cuda::is_available()) return false;
  // [0]: StatType::AGGREGATE, both pools.
  const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(c10::cuda::current_device());
  *reserved = uint64_t(stats.reserved_bytes[0].current);
  *allocated = uint64_t(stats.allocated_bytes[0].current);
  return true;
#else
  (void)reserved, (void)allocated;
  return false;
#endif
}

double MeasureGpuBandwidth() {
  if (!torch::cuda::is_available()) return 0;
  const int64_t bytes = int64_t{1} << 30;
  torch::Tensor a = torch::empty({bytes}, torch::dtype(torch::kUInt8).device(torch::kCUDA));
  torch::Tensor b = torch::empty_like(a);
  a.fill_(1);
  double best = 0;
  for (int i = 0; i < 6; ++i) {
    torch::cuda::synchronize();
    const auto t0 = std::chrono::steady_clock::now();
    b.copy_(a);
    torch::cuda::synchronize();
    const double s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (i > 0) best = std::max(best, 2.0 * double(bytes) / s);  // the first warms up
  }
  return best;
}

namespace {
uint64_t StatusKb(const std::string& key) {
  std::ifstream f("/proc/self/status");
  for (std::string line; std::getline(f, line);)
    if (line.rfind(key + ":", 0) == 0) return std::stoull(line.substr(key.size() + 1)) * 1024;
  return 0;
}
}  // namespace

uint64_t HostRss() { return StatusKb("VmRSS"); }
uint64_t HostPeakRss() { return StatusKb("VmHWM"); }

}  // namespace kiv
