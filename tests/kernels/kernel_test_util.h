// Shared by the gather and attention kernel tests: device detection, buffers, record placement
// (device memory or registered host memory), bf16 rounding and a seeded generator.
#pragma once

#include <cuda_runtime.h>
#include <doctest/doctest.h>
#include <sys/mman.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace kiv::kernels::test {

#define KIV_CUDA_REQUIRE(expr)                                                      \
  do {                                                                              \
    const cudaError_t kiv_e_ = (expr);                                              \
    REQUIRE_MESSAGE(kiv_e_ == cudaSuccess, #expr ": ", cudaGetErrorString(kiv_e_)); \
  } while (0)

inline bool HaveDevice() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

// SplitMix64: the same stream on every machine.
struct Rng {
  uint64_t state;
  uint64_t Next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  float Uniform() {
    return static_cast<float>(Next() >> 40) / float(1 << 24) - 0.5f;
  }  // [-0.5, 0.5)
  uint32_t Below(uint32_t n) { return static_cast<uint32_t>(Next() % n); }
};

inline uint16_t FloatToBf16(float f) {  // round to nearest even (no NaNs here)
  uint32_t x;
  std::memcpy(&x, &f, 4);
  return static_cast<uint16_t>((x + 0x7FFFu + ((x >> 16) & 1u)) >> 16);
}

inline float Bf16ToFloat(uint16_t h) {
  const uint32_t x = uint32_t{h} << 16;
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

template <typename T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t n) : n_(n) {
    KIV_CUDA_REQUIRE(cudaMalloc(reinterpret_cast<void**>(&p_), (n ? n : 1) * sizeof(T)));
  }
  explicit DeviceBuffer(const std::vector<T>& v) : DeviceBuffer(v.size()) { Upload(v); }
  ~DeviceBuffer() { cudaFree(p_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void Upload(const std::vector<T>& v) {
    REQUIRE(v.size() <= n_);
    KIV_CUDA_REQUIRE(cudaMemcpy(p_, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
  }
  std::vector<T> Download() const {
    std::vector<T> v(n_);
    KIV_CUDA_REQUIRE(cudaMemcpy(v.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost));
    return v;
  }
  T* get() const { return p_; }
  size_t size() const { return n_; }

 private:
  T* p_ = nullptr;
  size_t n_;
};

// Where records lie for the kernels: device memory; registered host memory (4 KB pages from
// aligned_alloc, as the tests have always used); registered anonymous memory asked for huge pages
// (MADV_HUGEPAGE, as runtime/gpu_scan.cpp's GpuRecordArena); pinned memory the driver allocates
// (cudaHostAlloc, mapped). The last two are timing placements: whether the GPU's reads of host
// memory care how far apart the records lie (docs/decode-step-inventory.md, RerankScore).
enum class Place { kDevice, kMappedHost, kMappedHostHuge, kHostAlloc };
inline const char* PlaceName(Place p) {
  switch (p) {
    case Place::kDevice: return "device";
    case Place::kMappedHost: return "mapped host";
    case Place::kMappedHostHuge: return "mapped host, huge pages asked";
    case Place::kHostAlloc: return "cudaHostAlloc";
  }
  return "?";
}

// Record bytes the CPU writes and reads at host(), and the kernels read at device(): a device copy
// (after Publish) or the same host pages, mapped (zero-copy over PCIe).
class RecordBuffer {
 public:
  RecordBuffer(size_t bytes, Place place) : bytes_(bytes), place_(place) {
    rounded_ = (bytes + kHuge - 1) / kHuge * kHuge;
    if (place == Place::kHostAlloc) {
      KIV_CUDA_REQUIRE(cudaHostAlloc(reinterpret_cast<void**>(&host_), rounded_,
                                     cudaHostAllocMapped));
      KIV_CUDA_REQUIRE(cudaHostGetDevicePointer(reinterpret_cast<void**>(&device_), host_, 0));
      std::memset(host_, 0, rounded_);
      return;
    }
    if (place == Place::kMappedHostHuge) {
      void* p = mmap(nullptr, rounded_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      REQUIRE(p != MAP_FAILED);
      madvise(p, rounded_, MADV_HUGEPAGE);
      host_ = static_cast<uint8_t*>(p);
      mapped_ = true;
    } else {
      host_ = static_cast<uint8_t*>(std::aligned_alloc(4096, rounded_));
      REQUIRE(host_ != nullptr);
    }
    std::memset(host_, 0, rounded_);
    if (place == Place::kDevice) {
      KIV_CUDA_REQUIRE(cudaMalloc(reinterpret_cast<void**>(&device_), bytes));
    } else {
      // Read-only registration lets the GPU skip coherence work; fall back where unsupported.
      int dev = 0, read_only = 0;
      KIV_CUDA_REQUIRE(cudaGetDevice(&dev));
      cudaDeviceGetAttribute(&read_only, cudaDevAttrHostRegisterReadOnlySupported, dev);
      const unsigned flags = cudaHostRegisterMapped | (read_only ? cudaHostRegisterReadOnly : 0u);
      KIV_CUDA_REQUIRE(cudaHostRegister(host_, rounded_, flags));
      registered_ = true;
      KIV_CUDA_REQUIRE(cudaHostGetDevicePointer(reinterpret_cast<void**>(&device_), host_, 0));
    }
  }
  ~RecordBuffer() {
    if (registered_) cudaHostUnregister(host_);
    if (place_ == Place::kDevice) cudaFree(device_);
    if (place_ == Place::kHostAlloc)
      cudaFreeHost(host_);
    else if (mapped_)
      munmap(host_, rounded_);
    else
      std::free(host_);
  }
  RecordBuffer(const RecordBuffer&) = delete;
  RecordBuffer& operator=(const RecordBuffer&) = delete;
  // Makes the host bytes visible to the kernels (mapped host memory already is).
  void Publish() {
    if (place_ == Place::kDevice)
      KIV_CUDA_REQUIRE(cudaMemcpy(device_, host_, bytes_, cudaMemcpyHostToDevice));
  }
  uint8_t* host() const { return host_; }
  uint8_t* device() const { return device_; }

 private:
  static constexpr size_t kHuge = size_t{2} << 20;
  size_t bytes_, rounded_ = 0;
  Place place_;
  uint8_t* host_ = nullptr;
  uint8_t* device_ = nullptr;
  bool registered_ = false, mapped_ = false;
};

}  // namespace kiv::kernels::test
