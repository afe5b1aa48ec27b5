#include "runtime/gpu_scan.h"

#include <torch/torch.h>

#include <algorithm>
#include <string>

#ifdef KIV_HAVE_KERNELS
#include "kernels/scan.h"
#endif

namespace kiv {
#ifdef KIV_HAVE_KERNELS
namespace {

// A tensor's data as the kernels' raw pointer types.
template <typename T>
T* Ptr(const torch::Tensor& t) {
  return reinterpret_cast<T*>(t.data_ptr());
}

void Check(int err, const std::string& error, const char* what) {
  TORCH_CHECK(err == 0, what, " failed: CUDA error ", err, " ", error);
}

}  // namespace
#endif

bool GpuSignatureIndex::Available() {
#ifdef KIV_HAVE_KERNELS
  return true;
#else
  return false;
#endif
}

GpuSignatureIndex::GpuSignatureIndex(uint32_t slots, const index::SignatureProjection& projection,
                                     c10::Device device)
    : bits_(projection.bits()),
      dim_(projection.dim()),
      words_(projection.words()),
      device_(device) {
  projection_ = torch::from_blob(const_cast<float*>(projection.matrix()),
                                 {int64_t(bits_), int64_t(dim_)}, torch::kFloat32)
                    .to(device_);
  const auto opts = torch::TensorOptions().device(device_);
  signatures_ = torch::empty({int64_t(slots), 1024, int64_t(words_)}, opts.dtype(torch::kInt64));
  norms_ = torch::empty({int64_t(slots), 1024}, opts.dtype(torch::kFloat32));
}

void GpuSignatureIndex::Append(const uint64_t* signatures, const float* norms, size_t count) {
  if (count == 0) return;
  const int64_t slots = signatures_.size(0), at = int64_t(size_), need = at + int64_t(count);
  if (need > signatures_.size(1)) {  // grow by doubling: amortized O(1) per token
    const int64_t cap = std::max<int64_t>(need, 2 * signatures_.size(1));
    torch::Tensor s = torch::empty({slots, cap, int64_t(words_)}, signatures_.options());
    torch::Tensor n = torch::empty({slots, cap}, norms_.options());
    s.slice(1, 0, at).copy_(signatures_.slice(1, 0, at));
    n.slice(1, 0, at).copy_(norms_.slice(1, 0, at));
    signatures_ = s;
    norms_ = n;
  }
  signatures_.slice(1, at, need)
      .copy_(torch::from_blob(const_cast<uint64_t*>(signatures),
                              {slots, int64_t(count), int64_t(words_)}, torch::kInt64));
  norms_.slice(1, at, need)
      .copy_(torch::from_blob(const_cast<float*>(norms), {slots, int64_t(count)}, torch::kFloat32));
  size_ = size_t(need);
}

std::vector<std::vector<uint32_t>> GpuSignatureIndex::Select(uint32_t slot, const float* queries,
                                                             uint32_t g, uint32_t tables,
                                                             uint32_t c, bool norms) {
#ifdef KIV_HAVE_KERNELS
  const uint32_t n = uint32_t(size_);
  c = std::min(c, n);
  std::vector<std::vector<uint32_t>> out(tables);
  if (c == 0) return out;
  const auto opts = torch::TensorOptions().device(device_);
  const torch::Tensor q =
      torch::from_blob(const_cast<float*>(queries), {int64_t(tables) * g * dim_}, torch::kFloat32)
          .to(device_);
  torch::Tensor table =
      torch::empty({int64_t(tables), int64_t(bits_ / 8) * 256}, opts.dtype(torch::kFloat32));
  std::string error;
  Check(kernels::BuildScanTables(Ptr<const float>(projection_), bits_, dim_, Ptr<const float>(q), g,
                                 tables, Ptr<float>(table), nullptr, &error),
        error, "BuildScanTables");
  std::vector<kernels::ScanProblem> problems(tables);
  for (uint32_t t = 0; t < tables; ++t)
    problems[t] = {Ptr<const uint64_t>(signatures_[slot]),  // a slot's rows are contiguous
                   norms ? Ptr<const float>(norms_[slot]) : nullptr,
                   Ptr<const float>(table) + size_t{t} * (bits_ / 8) * 256};
  torch::Tensor scores = torch::empty({int64_t(tables), int64_t(n)}, opts.dtype(torch::kFloat32));
  torch::Tensor selected = torch::empty({int64_t(tables), int64_t(c)}, opts.dtype(torch::kInt32));
  torch::Tensor workspace = torch::empty({int64_t(kernels::ScanSelectWorkspaceBytes(tables, n))},
                                         opts.dtype(torch::kUInt8));
  kernels::ScanSelectArgs args;
  args.problems = problems.data();
  args.num_problems = tables;
  args.n = n;
  args.words = words_;
  args.c = c;
  args.scores = Ptr<float>(scores);
  args.selected = Ptr<uint32_t>(selected);
  args.workspace = workspace.data_ptr();
  args.workspace_bytes = size_t(workspace.numel());
  Check(kernels::ScanSelect(args, nullptr, &error), error, "ScanSelect");
  const torch::Tensor host = selected.to(torch::kCPU).contiguous();  // waits for the kernels
  for (uint32_t t = 0; t < tables; ++t) {
    const auto* p = reinterpret_cast<const uint32_t*>(host.data_ptr<int32_t>()) + size_t{t} * c;
    out[t].assign(p, p + c);
  }
  return out;
#else
  (void)slot, (void)queries, (void)g, (void)tables, (void)c, (void)norms;
  TORCH_CHECK(false,
              "not implemented: the GPU scan in a build without the CUDA kernels (KIV_WITH_CUDA)");
  return {};
#endif
}

std::vector<std::vector<uint32_t>> GpuSignatureIndex::SelectPerQuery(uint32_t slot,
                                                                     const float* queries,
                                                                     uint32_t count, uint32_t c,
                                                                     bool norms) {
  return Select(slot, queries, 1, count, c, norms);
}

std::vector<uint32_t> GpuSignatureIndex::SelectGroup(uint32_t slot, const float* queries,
                                                     uint32_t count, uint32_t c, bool norms) {
  return std::move(Select(slot, queries, count, 1, c, norms)[0]);
}

}  // namespace kiv
