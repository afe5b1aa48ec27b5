// What the CUDA runtime can see, for callers that include no CUDA headers (the tests decide with
// it whether a GPU comparison can run; the runtime whether --device cuda can).
#pragma once

#include <string>

namespace kiv::kernels {

// Number of CUDA devices visible; 0 when there is no driver or no device.
int CudaDeviceCount();
// "NVIDIA H100 80GB HBM3, sm_90, driver 13.0" for device `index`, or why there is none.
std::string CudaDeviceName(int index = 0);

}  // namespace kiv::kernels
