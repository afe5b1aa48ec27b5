#include "runtime/gpu_scan.h"

#include <torch/torch.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>

#include <sys/mman.h>

#include <thread>

#include "kernels/gather.h"  // plain C++ (the launch limits); the kernels link with KIV_HAVE_KERNELS
#include "kernels/merge.h"
#include "runtime/parallel.h"
#ifdef KIV_HAVE_KERNELS
#include "kernels/attention.h"
#include "kernels/device.h"
#include "kernels/encode.h"
#include "kernels/layer.h"
#include "kernels/scan.h"
#endif
#if KIV_TORCH_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

namespace kiv {

bool SwitchOn(const char* name) {
  const char* value = std::getenv(name);
  return value == nullptr || std::string(value) != "0";
}

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

// Device scratch of at least `bytes` bytes for one launch (uint8), rounded up to a power of two
// from 1 MiB on. The scans' scores and workspaces grow with the cold tier, a little every prefill
// chunk, and LibTorch's caching allocator reuses a cached block only for a request no larger than
// it: exact sizes leave one new block a chunk in its cache. Rounded, a few sizes serve a whole
// prefill. KIV_SCRATCH_ROUND=0: exact sizes (for comparison).
torch::Tensor Scratch(size_t bytes, const torch::TensorOptions& opts) {
  static const bool round = SwitchOn("KIV_SCRATCH_ROUND");
  size_t size = bytes;
  if (round && bytes > (size_t{1} << 20))
    for (size = size_t{1} << 20; size < bytes;) size <<= 1;
  return torch::empty({int64_t(size)}, opts.dtype(torch::kUInt8));
}

// A number from the environment, or `fallback` when unset; refused unless it is all a number.
double EnvNumber(const char* name, double fallback) {
  const char* value = std::getenv(name);
  if (value == nullptr) return fallback;
  char* end = nullptr;
  const double x = std::strtod(value, &end);
  TORCH_CHECK(end != value && *end == '\0', name, " must be a number, not '", value, "'");
  return x;
}

// LibTorch's current stream, where the tensors around the kernels are read and written (and
// the one a CUDA graph captures); the legacy default stream without a CUDA LibTorch.
CUstream_st* CurrentStream() {
#if KIV_TORCH_CUDA
  return at::cuda::getCurrentCUDAStream().stream();
#else
  return nullptr;
#endif
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
                                     c10::Device device, bool with_norms)
    : bits_(projection.bits()),
      dim_(projection.dim()),
      words_(projection.words()),
      device_(device) {
  projection_ = torch::from_blob(const_cast<float*>(projection.matrix()),
                                 {int64_t(bits_), int64_t(dim_)}, torch::kFloat32)
                    .to(device_);
  const auto opts = torch::TensorOptions().device(device_);
  signatures_ = torch::empty({int64_t(slots), 1024, int64_t(words_)}, opts.dtype(torch::kInt64));
  if (with_norms) norms_ = torch::empty({int64_t(slots), 1024}, opts.dtype(torch::kFloat32));
}

void GpuSignatureIndex::Reserve(size_t tokens) {
  const int64_t slots = signatures_.size(0), at = int64_t(size_), cap = int64_t(tokens);
  if (cap <= signatures_.size(1)) return;
  torch::Tensor s = torch::empty({slots, cap, int64_t(words_)}, signatures_.options());
  s.slice(1, 0, at).copy_(signatures_.slice(1, 0, at));
  signatures_ = s;
  if (!norms_.defined()) return;
  torch::Tensor n = torch::empty({slots, cap}, norms_.options());
  n.slice(1, 0, at).copy_(norms_.slice(1, 0, at));
  norms_ = n;
}

void GpuSignatureIndex::Grow(size_t need) {
  const int64_t old_cap = signatures_.size(1);
  if (int64_t(need) <= old_cap) return;
  // Grow by a quarter (at least 64K tokens): amortized O(1) copies per token, and at most a
  // quarter of the signatures' memory idle (doubling left up to half of it: 1.9 GB instead of
  // 0.94 GB for SmolLM2 at 512K tokens).
  Reserve(size_t(std::max<int64_t>(int64_t(need), old_cap + std::max<int64_t>(old_cap / 4, 65536))));
}

void GpuSignatureIndex::Append(const uint64_t* signatures, const float* norms, size_t count) {
  if (count == 0) return;
  const int64_t slots = signatures_.size(0), at = int64_t(size_), need = at + int64_t(count);
  Grow(size_t(need));
  signatures_.slice(1, at, need)
      .copy_(torch::from_blob(const_cast<uint64_t*>(signatures),
                              {slots, int64_t(count), int64_t(words_)}, torch::kInt64));
  if (norms_.defined())
    norms_.slice(1, at, need)
        .copy_(torch::from_blob(const_cast<float*>(norms), {slots, int64_t(count)},
                                torch::kFloat32));
  size_ = size_t(need);
}

bool GpuSignatureIndex::CanEncode(const index::RecordCodec& codec, uint32_t head_dim,
                                  c10::ScalarType dtype) {
#ifdef KIV_HAVE_KERNELS
  kernels::EncodeParams p;
  p.num_slots = 1, p.head_dim = head_dim, p.codec = codec, p.slot_stride = head_dim;
  return (dtype == torch::kBFloat16 || dtype == torch::kFloat32) && kernels::CheckEncode(p).empty();
#else
  (void)codec, (void)head_dim, (void)dtype;
  return false;
#endif
}

void GpuSignatureIndex::AppendEncoded(const at::Tensor& keys, const at::Tensor& values,
                                      const index::RecordCodec& codec, uint8_t* records,
                                      uint64_t* signatures) {
#ifdef KIV_HAVE_KERNELS
  const int64_t slots = signatures_.size(0), count = keys.size(2), d = keys.size(3);
  if (count == 0) return;
  for (const at::Tensor* t : {&keys, &values}) {
    TORCH_CHECK(t->dim() == 4 && t->size(0) * t->size(1) == slots && t->sizes() == keys.sizes() &&
                    t->strides() == keys.strides() && t->scalar_type() == keys.scalar_type() &&
                    t->is_cuda() == device_.is_cuda() &&
                    (!device_.has_index() || t->device().index() == device_.index()),
                "AppendEncoded: keys and values must be alike [L][H][count][d] on the index's device");
    TORCH_CHECK(t->stride(3) == 1 && t->stride(2) == d && t->stride(0) == t->size(1) * t->stride(1),
                "AppendEncoded: rows must be contiguous and the slots evenly strided");
  }
  const int64_t at = int64_t(size_), need = at + count;
  Grow(size_t(need));
  const auto opts = torch::TensorOptions().device(device_);
  const int64_t record_bytes = d / index::kRecordDim * index::kRecordBytes;
  torch::Tensor recs = torch::empty({slots, count, record_bytes}, opts.dtype(torch::kUInt8));
  torch::Tensor sigs = torch::empty({slots, count, int64_t(words_)}, opts.dtype(torch::kInt64));
  torch::Tensor norms;
  if (norms_.defined()) norms = torch::empty({slots, count}, opts.dtype(torch::kFloat32));
  TORCH_CHECK(keys.scalar_type() == torch::kBFloat16 || keys.scalar_type() == torch::kFloat32,
              "AppendEncoded: keys must be bf16 or float32");
  kernels::EncodeParams p;
  p.num_slots = uint32_t(slots), p.count = uint32_t(count), p.head_dim = uint32_t(d);
  p.codec = codec;
  p.in_dtype = keys.scalar_type() == torch::kBFloat16 ? kernels::DType::kBFloat16
                                                      : kernels::DType::kFloat32;
  p.keys = keys.data_ptr(), p.values = values.data_ptr(), p.slot_stride = uint64_t(keys.stride(1));
  p.projection = Ptr<const float>(projection_), p.bits = bits_;
  p.records = Ptr<uint8_t>(recs), p.signatures = Ptr<uint64_t>(sigs);
  p.norms = norms.defined() ? Ptr<float>(norms) : nullptr;
  std::string error;
  Check(kernels::LaunchEncode(p, CurrentStream(), &error), error, "LaunchEncode");
  signatures_.slice(1, at, need).copy_(sigs);
  if (norms_.defined()) norms_.slice(1, at, need).copy_(norms);
  size_ = size_t(need);
  torch::from_blob(records, {slots, count, record_bytes}, torch::kUInt8).copy_(recs);
  if (signatures)
    torch::from_blob(signatures, {slots, count, int64_t(words_)}, torch::kInt64).copy_(sigs);
#else
  (void)keys, (void)values, (void)codec, (void)records, (void)signatures;
  TORCH_CHECK(false, "AppendEncoded: not implemented in a build without the CUDA kernels");
#endif
}

uint64_t GpuSignatureIndex::device_bytes() const {
  return uint64_t(signatures_.nbytes() + (norms_.defined() ? norms_.nbytes() : 0) +
                  projection_.nbytes());
}

uint64_t GpuSignatureIndex::held_bytes() const {
  const uint64_t per_token = uint64_t{words_} * 8 + (norms_.defined() ? 4 : 0);
  return uint64_t(signatures_.size(0)) * size_ * per_token;
}

const uint64_t* GpuSignatureIndex::signatures(uint32_t slot) const {
  return reinterpret_cast<const uint64_t*>(signatures_[slot].data_ptr());
}

const float* GpuSignatureIndex::norms(uint32_t slot) const {
  return norms_.defined() ? norms_[slot].data_ptr<float>() : nullptr;
}

std::vector<std::vector<uint32_t>> GpuSignatureIndex::Select(uint32_t slot, const float* queries,
                                                             uint32_t g, uint32_t tables,
                                                             uint32_t c, bool norms) {
#ifdef KIV_HAVE_KERNELS
  TORCH_CHECK(!norms || norms_.defined(), "a scan with key norms over an index built without");
  const uint32_t n = uint32_t(size_);
  c = std::min(c, n);
  std::vector<std::vector<uint32_t>> out(tables);
  if (c == 0) return out;
  const auto opts = torch::TensorOptions().device(device_);
  const torch::Tensor q =
      torch::from_blob(const_cast<float*>(queries), {int64_t(tables) * g * dim_}, torch::kFloat32)
          .to(device_);
  const size_t blob = kernels::ScanQueryBytes(bits_);
  torch::Tensor blobs = torch::empty({int64_t(tables * blob)}, opts.dtype(torch::kUInt8));
  std::string error;
  Check(kernels::BuildScanQueries(Ptr<const float>(projection_), bits_, dim_, Ptr<const float>(q),
                                  g, tables, Ptr<uint8_t>(blobs), CurrentStream(), &error),
        error, "BuildScanQueries");
  std::vector<kernels::ScanProblem> problems(tables);
  for (uint32_t t = 0; t < tables; ++t)
    problems[t] = {Ptr<const uint64_t>(signatures_[slot]),  // a slot's rows are contiguous
                   norms ? this->norms(slot) : nullptr, Ptr<const uint8_t>(blobs) + t * blob};
  torch::Tensor scores = Scratch(size_t{tables} * n * sizeof(float), opts);
  torch::Tensor selected = torch::empty({int64_t(tables), int64_t(c)}, opts.dtype(torch::kInt32));
  torch::Tensor workspace = Scratch(kernels::ScanSelectWorkspaceBytes(tables, n), opts);
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
  Check(kernels::ScanSelect(args, CurrentStream(), &error), error, "ScanSelect");
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

// ---- GpuRecordArena ----

namespace {
constexpr uint64_t kPinPiece = 65536;  // tokens pinned at a time while the arena fills
constexpr uint64_t kPage = 4096;
}  // namespace

GpuRecordArena::GpuRecordArena(uint32_t slots, uint32_t record_bytes, uint64_t capacity)
    : slots_(slots), record_bytes_(record_bytes), capacity_(capacity) {
#ifdef KIV_HAVE_KERNELS
  TORCH_CHECK(kernels::HostPointerUsableOnDevice(),
              "not implemented: a GPU that cannot read registered host memory at its host "
              "address (cudaDevAttrCanUseHostPointerForRegisteredMem)");
#endif
  slot_bytes_ = (capacity * record_bytes + kPage - 1) / kPage * kPage;
  slot_base_.resize(slots);
  const char* placement = std::getenv("KIV_RECORD_ARENA");
  driver_pinned_ = placement != nullptr && std::string(placement) == "hostalloc";
  TORCH_CHECK(placement == nullptr || driver_pinned_ || std::string(placement) == "register",
              "KIV_RECORD_ARENA must be 'register' (the default) or 'hostalloc', not '", placement,
              "'");
  if (driver_pinned_) {
    // Each slot's whole capacity pinned by the driver up front (the A/B of whether the GPU reads
    // such memory faster when the records lie far apart; docs/performance.md).
#ifdef KIV_HAVE_KERNELS
    for (uint32_t slot = 0; slot < slots; ++slot) {
      void* p = nullptr;
      const int e = kernels::AllocMappedHost(slot_bytes_, &p);
      TORCH_CHECK(e == 0, "KIV_RECORD_ARENA=hostalloc: pinning ", slot_bytes_,
                  " bytes for a slot of the GPU record arena failed: ", kernels::CudaErrorName(e));
      slot_base_[slot] = static_cast<uint8_t*>(p);
    }
    pinned_ = capacity;
    return;
#else
    TORCH_CHECK(false, "not implemented: KIV_RECORD_ARENA=hostalloc in a build without CUDA");
#endif
  }
  void* p = mmap(nullptr, slot_bytes_ * slots, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  TORCH_CHECK(p != MAP_FAILED, "cannot reserve ", slot_bytes_ * slots,
              " bytes of address space for the GPU record arena");
  base_ = static_cast<uint8_t*>(p);
  for (uint32_t slot = 0; slot < slots; ++slot) slot_base_[slot] = base_ + slot * slot_bytes_;
  // Huge pages where the kernel has them: 512× fewer page faults while it fills and pages for the
  // driver to pin (11 GB at 1M tokens of SmolLM2). Only a hint: without them, 4 KB pages.
  madvise(p, slot_bytes_ * slots, MADV_HUGEPAGE);
}

GpuRecordArena::~GpuRecordArena() {
#ifdef KIV_HAVE_KERNELS
  for (uint8_t* r : registered_) kernels::UnregisterHostMemory(r);
  if (driver_pinned_)
    for (uint8_t* slot : slot_base_)
      if (slot) kernels::FreeMappedHost(slot);
#endif
  if (base_) munmap(base_, slot_bytes_ * slots_);
}

void GpuRecordArena::AppendSlot(uint32_t slot, const uint8_t* records, uint64_t at,
                                uint64_t count) {
  TORCH_CHECK(at + count <= capacity_, "the context outgrew the GPU record arena (",
              capacity_, " tokens; raise --max-context)");
  std::memcpy(slot_base_[slot] + at * record_bytes_, records, count * record_bytes_);
}

void GpuRecordArena::Append(const uint8_t* records, uint64_t count, uint32_t threads) {
  const uint64_t at = size_;
  ParallelFor(slots_, threads, [&](uint32_t slot) {
    AppendSlot(slot, records + slot * count * record_bytes_, at, count);
  });
  Grow(at + count);
}

void GpuRecordArena::Grow(uint64_t size, uint32_t threads) {
  TORCH_CHECK(size <= capacity_, "the context outgrew the GPU record arena");
  size_ = std::max(size_, size);
  if (size_ <= pinned_) return;
  const uint64_t want = std::min(capacity_, (size_ + kPinPiece - 1) / kPinPiece * kPinPiece);
#ifdef KIV_HAVE_KERNELS
  const uint64_t from = pinned_ * record_bytes_ / kPage * kPage;
  const uint64_t to = std::min(slot_bytes_, (want * record_bytes_ + kPage - 1) / kPage * kPage);
  std::vector<int> errors(slots_, 0);
  ParallelFor(slots_, threads, [&](uint32_t slot) {
    errors[slot] = kernels::RegisterHostMemory(slot_base_[slot] + from, to - from,
                                               /*read_only=*/false);
  });
  for (uint32_t slot = 0; slot < slots_; ++slot) {
    if (errors[slot] == 0) registered_.push_back(slot_base_[slot] + from);
  }
  for (uint32_t slot = 0; slot < slots_; ++slot)
    TORCH_CHECK(errors[slot] == 0, "pinning ", to - from, " bytes of the GPU record arena failed: ",
                kernels::CudaErrorName(errors[slot]));
#else
  (void)threads;
#endif
  pinned_ = want;
}

// ---- GpuColdTier ----

bool GpuColdTier::Supports(const CacheShape& shape, const TieredCacheOptions& o) {
  const uint64_t g = shape.num_q_heads / std::max<uint32_t>(1, shape.num_kv_heads);
  const uint64_t share = (uint64_t{o.candidates} + g - 1) / g;
  return o.top_k >= 1 && o.top_k <= kernels::kGatherMaxTopK &&
         o.candidates <= kernels::kGatherMaxCandidates && o.candidates <= kernels::kMergeMaxTokens &&
         share * g <= kernels::kMergeMaxTokens &&
         g * std::max<uint32_t>(1, o.prefill_block) <= kernels::kGatherMaxGroup &&
         shape.head_dim <= 128 && o.tail_samples <= kernels::kTailMaxSamples &&
         (o.tail_samples == 0 || o.tail_importance == 0.0f);
}

GpuColdTier::GpuColdTier(const CacheShape& shape, const TieredCacheOptions& options,
                         const index::RecordCodec& codec, const GpuSignatureIndex* index,
                         const GpuRecordArena* arena, c10::Device device)
    : shape_(shape),
      options_(options),
      codec_(codec),
      index_(index),
      arena_(arena),
      device_(device),
      max_reps_(1024) {
  const uint32_t L = shape.num_layers, H = shape.num_kv_heads;
  std::vector<int64_t> bases(size_t{L} * max_reps_ * H);
  for (uint32_t l = 0; l < L; ++l)
    for (uint32_t r = 0; r < max_reps_; ++r)
      for (uint32_t h = 0; h < H; ++h)
        bases[(size_t{l} * max_reps_ + r) * H + h] =
            int64_t(reinterpret_cast<uintptr_t>(arena->base(l * H + h)));
  record_bases_ = torch::from_blob(bases.data(), {int64_t(bases.size())}, torch::kInt64)
                      .to(device_);
#ifdef KIV_HAVE_KERNELS
  // Retrieve's largest attention launch: max_reps_ problems (kv-heads of the kernel) of
  // g · prefill_block queries (block retrieval) or g (one by one).
  const uint32_t g = shape.num_q_heads / H;
  kernels::SparseAttentionParams most;
  most.num_kv_heads = max_reps_ * H;
  most.num_q_heads = most.num_kv_heads * g * std::max<uint32_t>(1, options.prefill_block);
  attn_done_ = torch::zeros({int64_t(kernels::SparseAttentionDoneCount(most))},
                            torch::TensorOptions().dtype(torch::kInt32).device(device_));
  if (SwitchOn("KIV_SCAN_GUESS"))
    scan_guess_ = torch::full({int64_t(L), int64_t(H) * g}, std::nanf(""),
                              torch::TensorOptions().dtype(torch::kFloat32).device(device_));
  scan_guess_counts_ =
      torch::zeros({4}, torch::TensorOptions().dtype(torch::kInt32).device(device_));
  const double target = EnvNumber("KIV_SCAN_GUESS_TARGET", scan_guess_target_);
  scan_guess_margin_ = float(EnvNumber("KIV_SCAN_GUESS_MARGIN", scan_guess_margin_));
  TORCH_CHECK(target >= 1 && target <= 64 && target == std::floor(target) &&
                  scan_guess_margin_ >= 0.0f && scan_guess_margin_ < 1.0f,
              "KIV_SCAN_GUESS_TARGET must be a whole number in 1..64 and KIV_SCAN_GUESS_MARGIN in "
              "[0, 1)");
  scan_guess_target_ = uint32_t(target);
  scan_conditional_ = SwitchOn("KIV_SCAN_CONDITIONAL");
  scan_quick_finish_ = SwitchOn("KIV_SCAN_QUICK_FINISH");
  scan_one_vote_ = SwitchOn("KIV_SCAN_ONE_VOTE");
  scan_sample_ = SwitchOn("KIV_SCAN_SAMPLE");
#endif
}

GpuColdTier::~GpuColdTier() = default;

GpuColdTier::GuessCounts GpuColdTier::ScanGuessCounts() const {
  GuessCounts out;
  if (!scan_guess_counts_.defined()) return out;
  const torch::Tensor host = scan_guess_counts_.to(torch::kCPU);
  out.held = uint32_t(host[0].item<int32_t>());
  out.missed = uint32_t(host[1].item<int32_t>());
  out.missed_few = uint32_t(host[2].item<int32_t>());
  out.missed_many = uint32_t(host[3].item<int32_t>());
  return out;
}

PartialAttention GpuColdTier::Attend(int64_t layer, const torch::Tensor& q,
                                     int64_t per_query_begin, int64_t position) {
  const int64_t Hkv = shape_.num_kv_heads, g = shape_.num_q_heads / Hkv, d = shape_.head_dim;
  const int64_t n = q.size(1), B = std::max<int64_t>(1, options_.prefill_block);
  const torch::Tensor qf = q.to(torch::kFloat32).reshape({Hkv, g, n, d});
  std::vector<torch::Tensor> outs, lses;
  if (per_query_begin > 0) {  // blocks of B positions: [nb, H_kv, g·B, d]
    const int64_t nb = (per_query_begin + B - 1) / B;
    torch::Tensor qb = qf.slice(2, 0, per_query_begin);
    if (nb * B > per_query_begin)  // zero queries add nothing to a block's table
      qb = torch::constant_pad_nd(qb, {0, 0, 0, nb * B - per_query_begin});
    qb = qb.reshape({Hkv, g, nb, B, d}).permute({2, 0, 1, 3, 4}).reshape({nb, Hkv, g * B, d});
    for (int64_t r0 = 0; r0 < nb; r0 += max_reps_) {
      const int64_t r1 = std::min<int64_t>(nb, r0 + max_reps_);
      PartialAttention o = Retrieve(layer, qb.slice(0, r0, r1).contiguous(), uint32_t(r1 - r0),
                                    uint32_t(g * B), /*per_query=*/false, position + r0 * B, B);
      outs.push_back(o.out.reshape({r1 - r0, Hkv, g, B, d}).permute({1, 2, 0, 3, 4})
                         .reshape({Hkv * g, (r1 - r0) * B, d}));
      lses.push_back(o.lse.reshape({r1 - r0, Hkv, g, B}).permute({1, 2, 0, 3})
                         .reshape({Hkv * g, (r1 - r0) * B}));
    }
    if (nb * B > per_query_begin) {
      outs.back() = outs.back().slice(1, 0, outs.back().size(1) - (nb * B - per_query_begin));
      lses.back() = lses.back().slice(1, 0, lses.back().size(1) - (nb * B - per_query_begin));
    }
  }
  // One position at a time: [m, H_kv, g, d], in pieces that keep the scan's scores small.
  const int64_t m = n - per_query_begin;
  if (m > 0) {
    const torch::Tensor qt = qf.slice(2, per_query_begin, n).permute({2, 0, 1, 3});
    const int64_t cold = int64_t(index_->size());
    const int64_t piece = std::clamp<int64_t>((int64_t{64} << 20) / (cold * Hkv * g), 1,
                                              max_reps_);
    for (int64_t r0 = 0; r0 < m; r0 += piece) {
      const int64_t r1 = std::min(m, r0 + piece);
      PartialAttention o = Retrieve(layer, qt.slice(0, r0, r1).contiguous(), uint32_t(r1 - r0),
                                    uint32_t(g), /*per_query=*/true,
                                    position + per_query_begin + r0, 1);
      outs.push_back(o.out.reshape({r1 - r0, Hkv * g, d}).permute({1, 0, 2}));
      lses.push_back(o.lse.reshape({r1 - r0, Hkv * g}).permute({1, 0}));
    }
  }
  return {torch::cat(outs, 1), torch::cat(lses, 1)};
}

// One decode step: q [H_q, 1, d]; the retrieved tokens and the hot tier hot_k/hot_v [H_kv, n_hot,
// d] (rows contiguous, any head stride; bf16 or float32) attend in one kernel call, one softmax
// over both. [H_q, 1, d] in out_dtype (float32 or bf16).
torch::Tensor GpuColdTier::AttendDecode(int64_t layer, const torch::Tensor& q,
                                        const torch::Tensor& hot_k, const torch::Tensor& hot_v,
                                        int64_t position, torch::ScalarType out_dtype) {
  const int64_t Hkv = shape_.num_kv_heads, g = shape_.num_q_heads / Hkv, d = shape_.head_dim;
  TORCH_CHECK(q.size(1) == 1, "AttendDecode takes one position, not ", q.size(1));
  TORCH_CHECK(out_dtype == torch::kFloat32 || out_dtype == torch::kBFloat16,
              "AttendDecode writes float32 or bf16, not ", out_dtype);
  const torch::Tensor qf = q.to(torch::kFloat32).reshape({1, Hkv, g, d}).contiguous();
  return Retrieve(layer, qf, 1, uint32_t(g), /*per_query=*/true, position, 0, &hot_k, &hot_v,
                  nullptr, out_dtype == torch::kBFloat16)
      .out.view({Hkv * g, 1, d});
}

torch::Tensor GpuColdTier::AttendDecodeCapturable(int64_t layer, const torch::Tensor& q,
                                                  const torch::Tensor& hot_k,
                                                  const torch::Tensor& hot_v,
                                                  const DeviceCounts& counts,
                                                  torch::ScalarType out_dtype,
                                                  const torch::Tensor& blobs) {
  const int64_t Hkv = shape_.num_kv_heads, g = shape_.num_q_heads / Hkv, d = shape_.head_dim;
  TORCH_CHECK(q.size(1) == 1, "AttendDecodeCapturable takes one position, not ", q.size(1));
  TORCH_CHECK(counts.hot && counts.cold, "AttendDecodeCapturable needs both device counts");
  TORCH_CHECK(options_.tail_samples == 0 || counts.position,
              "AttendDecodeCapturable with a tail sample needs the step's position on the device");
  TORCH_CHECK(index_->size() >= options_.candidates, "a capturable decode step needs at least ",
              options_.candidates, " cold tokens (C), the index holds ", index_->size());
  TORCH_CHECK(out_dtype == torch::kFloat32 || out_dtype == torch::kBFloat16,
              "AttendDecodeCapturable writes float32 or bf16, not ", out_dtype);
  const torch::Tensor qf = q.to(torch::kFloat32).reshape({1, Hkv, g, d}).contiguous();
  return Retrieve(layer, qf, 1, uint32_t(g), /*per_query=*/true, 0, 0, &hot_k, &hot_v, &counts,
                  out_dtype == torch::kBFloat16, blobs.defined() ? &blobs : nullptr)
      .out.view({Hkv * g, 1, d});
}

torch::Tensor GpuColdTier::WriteDecodeKv(const torch::Tensor& q, const torch::Tensor& k,
                                         const torch::Tensor& v, const torch::Tensor& hot_k,
                                         const torch::Tensor& hot_v,
                                         const torch::Tensor& row, torch::Tensor* blobs) const {
#ifdef KIV_HAVE_KERNELS
  const auto dtype = q.scalar_type();
  const int64_t d = shape_.head_dim;
  const bool rows_contiguous = q.dim() == 3 && k.dim() == 3 && v.dim() == 3 && q.size(1) == 1 &&
                               k.size(1) == 1 && v.size(1) == 1 && q.stride(2) == 1 &&
                               k.stride(2) == 1 && v.stride(2) == 1 && hot_k.stride(2) == 1 &&
                               hot_k.stride(1) == d && hot_v.strides() == hot_k.strides();
  const bool alike = (dtype == torch::kBFloat16 || dtype == torch::kFloat32) &&
                     k.scalar_type() == dtype && v.scalar_type() == dtype &&
                     hot_k.scalar_type() == dtype && hot_v.scalar_type() == dtype &&
                     row.scalar_type() == torch::kInt64 && row.numel() == 1 && q.is_cuda() &&
                     k.device() == q.device() && hot_k.device() == q.device() &&
                     row.device() == q.device();
  if (!rows_contiguous || !alike || q.size(2) != d || hot_k.size(2) != d) return {};
  torch::Tensor qf = torch::empty({q.size(0), 1, d}, q.options().dtype(torch::kFloat32));
  kernels::DecodeKvWriteParams p;
  p.q = q.data_ptr(), p.k = k.data_ptr(), p.v = v.data_ptr();
  p.hot_k = hot_k.data_ptr(), p.hot_v = hot_v.data_ptr();
  p.row = row.data_ptr<int64_t>(), p.q_out = Ptr<float>(qf);
  p.dtype = dtype == torch::kBFloat16 ? kernels::DType::kBFloat16 : kernels::DType::kFloat32;
  p.q_heads = uint32_t(q.size(0)), p.kv_heads = uint32_t(k.size(0)), p.head_dim = uint32_t(d);
  p.q_stride = uint64_t(q.stride(0)), p.k_stride = uint64_t(k.stride(0));
  p.v_stride = uint64_t(v.stride(0)), p.hot_stride = uint64_t(hot_k.stride(0));
  p.hot_rows = uint64_t(hot_k.size(1));
  std::string error;
  const uint32_t bits = options_.signature_bits;
  // The same launch builds the step's scan queries (g = 1 each) from qf, where they fit it.
  if (blobs && kernels::BuildDecodeScanQueriesFits(bits, uint32_t(d))) {
    *blobs = torch::empty({int64_t(p.q_heads * kernels::ScanQueryBytes(bits))},
                          q.options().dtype(torch::kUInt8));
    Check(kernels::BuildDecodeScanQueries(Ptr<const float>(index_->projection()), bits, p,
                                          Ptr<uint8_t>(*blobs), CurrentStream(), &error),
          error, "BuildDecodeScanQueries");
    return qf;
  }
  Check(kernels::LaunchDecodeKvWrite(p, CurrentStream(), &error), error, "LaunchDecodeKvWrite");
  return qf;
#else
  (void)q, (void)k, (void)v, (void)hot_k, (void)hot_v, (void)row, (void)blobs;
  return {};
#endif
}

// queries: [reps][H_kv][G][d] float, contiguous. Problem p = (rep, kv-head) re-ranks with its G
// queries; per_query: each of them first scans on its own (G = g), else their sum scans once.
PartialAttention GpuColdTier::Retrieve(int64_t layer, const torch::Tensor& queries, uint32_t reps,
                                       uint32_t G, bool per_query, int64_t position,
                                       int64_t position_step, const torch::Tensor* hot_k,
                                       const torch::Tensor* hot_v, const DeviceCounts* dc,
                                       bool bf16_out, const torch::Tensor* prebuilt_blobs) {
#ifdef KIV_HAVE_KERNELS
  const uint32_t Hkv = shape_.num_kv_heads, d = shape_.head_dim, bits = options_.signature_bits;
  const uint32_t P = reps * Hkv, n = uint32_t(index_->size());
  // With device counts the scan is sized for the index's capacity and reads the count there.
  const uint32_t scan_n = dc ? uint32_t(index_->capacity()) : n;
  const uint32_t tables = per_query ? P * G : P;
  const uint32_t c = std::min<uint32_t>(
      n, per_query ? (options_.candidates + G - 1) / G : options_.candidates);
  const auto opts = torch::TensorOptions().device(device_);
  const auto i32 = opts.dtype(torch::kInt32), f32 = opts.dtype(torch::kFloat32);
  std::string error;
  const size_t blob = kernels::ScanQueryBytes(bits);
  torch::Tensor blobs;
  if (prebuilt_blobs) {
    TORCH_CHECK(per_query && prebuilt_blobs->numel() == int64_t(tables * blob),
                "Retrieve: prebuilt blobs of ", prebuilt_blobs->numel(), " bytes for ", tables,
                " queries");
    blobs = *prebuilt_blobs;
  } else {
    blobs = torch::empty({int64_t(tables * blob)}, opts.dtype(torch::kUInt8));
    Check(kernels::BuildScanQueries(Ptr<const float>(index_->projection()), bits, d,
                                    Ptr<const float>(queries), per_query ? 1 : G, tables,
                                    Ptr<uint8_t>(blobs), CurrentStream(), &error),
          error, "BuildScanQueries");
  }
  // Problems that read one kv-head's signatures go side by side, `share` of them scored from one
  // read: a GQA group's per-query scans (t = (rep · H_kv + h) · G + j) already are; a prefill
  // chunk's summed block queries (t = rep · H_kv + h) go to the scan kv-head-major instead,
  // t' = h · reps + rep, and their selections come back in the blocks' order after it.
  const bool regroup = !per_query && reps > 1;
  uint32_t share = per_query && G <= 8 ? G : 1;
  if (regroup)
    for (share = 8; reps % share != 0;) --share;
  std::vector<kernels::ScanProblem> problems(tables);
  for (uint32_t t = 0; t < tables; ++t) {
    const uint32_t h = regroup ? t / reps : (per_query ? t / G : t) % Hkv;
    const uint32_t query = regroup ? (t % reps) * Hkv + h : t;
    const uint32_t slot = uint32_t(layer) * Hkv + h;
    problems[t] = {index_->signatures(slot), options_.scan_norms ? index_->norms(slot) : nullptr,
                   Ptr<const uint8_t>(blobs) + query * blob};
  }
  torch::Tensor scores = Scratch(size_t{tables} * scan_n * sizeof(float), opts);
  torch::Tensor selected = torch::empty({int64_t(tables), int64_t(c)}, i32);
  torch::Tensor counts = torch::empty({int64_t(tables)}, i32);
  torch::Tensor workspace = Scratch(kernels::ScanSelectWorkspaceBytes(tables, scan_n), opts);
  kernels::ScanSelectArgs args;
  args.problems = problems.data();
  args.num_problems = tables;
  args.n = scan_n;
  args.n_device = dc ? dc->cold : nullptr;
  args.share = share;
  args.words = bits / 64;
  args.c = c;
  args.scores = Ptr<float>(scores);
  args.selected = Ptr<uint32_t>(selected);
  args.counts = Ptr<uint32_t>(counts);
  args.workspace = workspace.data_ptr();
  args.workspace_bytes = size_t(workspace.numel());
  // A decode step's per-query scans guess their thresholds (from a sample of their own scores,
  // or from the layer's previous step: the same H_q problems in the same order every step).
  if (per_query && reps == 1 && scan_guess_.defined() && c <= kernels::kScanGuessMaxC &&
      tables == uint32_t(scan_guess_.size(1))) {
    args.guess = Ptr<float>(scan_guess_) + size_t(layer) * tables;
    args.guess_counts = Ptr<uint32_t>(scan_guess_counts_);
    args.conditional = scan_conditional_;
    args.quick_finish = scan_quick_finish_;
    args.one_vote = scan_one_vote_;
    args.sample = scan_sample_;
    args.guess_target = scan_guess_target_;
    args.guess_margin = scan_guess_margin_;
  }
  Check(kernels::ScanSelect(args, CurrentStream(), &error), error, "ScanSelect");
  if (regroup) {  // [H_kv][reps] → [reps][H_kv]
    selected = selected.view({int64_t(Hkv), int64_t(reps), int64_t(c)}).transpose(0, 1)
                   .contiguous().view({int64_t(P), int64_t(c)});
    counts = counts.view({int64_t(Hkv), int64_t(reps)}).t().contiguous().view({int64_t(P)});
  }
  torch::Tensor candidates = selected, candidate_counts = counts;
  uint32_t row = c;
  if (per_query && G > 1) {  // the group's lists, united
    row = G * c;
    candidates = torch::empty({int64_t(P), int64_t(row)}, i32);
    candidate_counts = torch::empty({int64_t(P)}, i32);
    kernels::MergeCandidatesArgs m;
    m.num_problems = P, m.lists = G, m.length = c;
    m.in = Ptr<const uint32_t>(selected), m.in_counts = Ptr<const uint32_t>(counts);
    m.out = Ptr<uint32_t>(candidates), m.out_counts = Ptr<uint32_t>(candidate_counts);
    Check(kernels::MergeCandidates(m, CurrentStream(), &error), error, "MergeCandidates");
  }
  const uint32_t k = std::min<uint32_t>(options_.top_k, row);
  torch::Tensor ids = torch::empty({int64_t(P), int64_t(k)}, i32);
  torch::Tensor picked = torch::empty({int64_t(P)}, i32);
  torch::Tensor keys = torch::empty({int64_t(P), int64_t(k), int64_t(d)}, f32);
  torch::Tensor values = torch::empty_like(keys);
  kernels::RerankGatherParams rg;
  rg.num_problems = P;
  rg.head_dim = d;
  rg.group = G;
  rg.num_candidates = row;
  rg.top_k = k;
  rg.codec = codec_;
  rg.out_dtype = kernels::DType::kFloat32;
  rg.record_stride_bytes = index::kRecordBytes * (d / 64);
  rg.records = reinterpret_cast<const uint8_t* const*>(record_bases_.data_ptr<int64_t>() +
                                                       size_t(layer) * max_reps_ * Hkv);
  rg.candidates = Ptr<const uint32_t>(candidates);
  rg.candidate_counts = Ptr<const uint32_t>(candidate_counts);
  rg.queries = Ptr<const float>(queries);
  rg.out_ids = Ptr<uint32_t>(ids);
  rg.out_counts = Ptr<uint32_t>(picked);
  rg.out_keys = keys.data_ptr();
  rg.out_values = values.data_ptr();
  torch::Tensor rg_workspace = Scratch(kernels::RerankGatherWorkspaceBytes(rg), opts);
  rg.workspace = rg_workspace.data_ptr();
  rg.workspace_bytes = size_t(rg_workspace.numel());
  Check(kernels::LaunchRerankGather(rg, CurrentStream(), &error), error, "LaunchRerankGather");
  if (hot_k && !dc) {  // an eager decode step: its picks, for KIV_TRACE_RETRIEVAL
    last_decode_ids_ = ids;
    last_decode_counts_ = picked;
  }
  // bf16_out: the kernel rounds the output itself, straight into the tensor the caller reads.
  torch::Tensor out =
      torch::empty({int64_t(P) * G, int64_t(d)}, bf16_out ? opts.dtype(torch::kBFloat16) : f32);
  torch::Tensor lse = torch::empty({int64_t(P) * G}, f32);
  kernels::SparseAttentionParams at;
  at.num_q_heads = P * G;
  at.num_kv_heads = P;
  at.head_dim = d;
  at.q = queries.data_ptr();
  at.q_dtype = kernels::DType::kFloat32;
  at.sets[0].keys = keys.data_ptr();
  at.sets[0].values = values.data_ptr();
  at.sets[0].dtype = kernels::DType::kFloat32;
  at.sets[0].max_rows = k;
  at.sets[0].counts = Ptr<const uint32_t>(picked);
  at.num_sets = 1;
  // The unpicked tokens' sample, each weighted as those it stands for: alive until the attention
  // that reads it is enqueued (a tensor freed earlier could be handed to its output).
  torch::Tensor sample_ids, sampled, log_weights, sample_keys, sample_values;
  if (options_.tail_samples > 0) {
    const uint32_t m = options_.tail_samples;
    sample_ids = torch::empty({int64_t(P), int64_t(m)}, i32);
    sampled = torch::empty({int64_t(P)}, i32);
    log_weights = torch::empty({int64_t(P), int64_t(m)}, f32);
    sample_keys = torch::empty({int64_t(P), int64_t(m), int64_t(d)}, f32);
    sample_values = torch::empty_like(sample_keys);
    kernels::TailSampleParams ts;
    ts.num_problems = P;
    ts.kv_heads = Hkv;
    ts.head_dim = d;
    ts.samples = m;
    ts.recent = options_.tail_recent;
    ts.codec = codec_;
    ts.out_dtype = kernels::DType::kFloat32;
    ts.record_stride_bytes = rg.record_stride_bytes;
    ts.records = rg.records;
    ts.picked = Ptr<const uint32_t>(ids);
    ts.picked_counts = Ptr<const uint32_t>(picked);
    ts.picked_stride = k;
    ts.cold = n;
    ts.cold_device = dc ? dc->cold : nullptr;
    ts.seed = options_.projection_seed;
    ts.layer = uint32_t(layer);
    ts.position = position;
    ts.position_device = dc ? dc->position : nullptr;
    ts.position_step = position_step;
    ts.out_ids = Ptr<uint32_t>(sample_ids);
    ts.out_counts = Ptr<uint32_t>(sampled);
    ts.out_log_weights = Ptr<float>(log_weights);
    ts.out_keys = sample_keys.data_ptr();
    ts.out_values = sample_values.data_ptr();
    Check(kernels::LaunchTailSample(ts, CurrentStream(), &error), error, "LaunchTailSample");
    kernels::KvSet& tail = at.sets[at.num_sets++];
    tail.keys = sample_keys.data_ptr();
    tail.values = sample_values.data_ptr();
    tail.dtype = kernels::DType::kFloat32;
    tail.max_rows = m;
    tail.counts = Ptr<const uint32_t>(sampled);
    tail.bias = Ptr<const float>(log_weights);
  }
  if (hot_k) {  // a decode step: the hot tier in the same softmax
    TORCH_CHECK(reps == 1 && hot_k->stride(2) == 1 && hot_k->stride(1) == d &&
                    hot_v->stride(2) == 1 && hot_v->stride(1) == d &&
                    hot_v->stride(0) == hot_k->stride(0) &&
                    hot_k->scalar_type() == hot_v->scalar_type(),
                "the fused decode attention takes one position and hot keys/values with rows "
                "of d contiguous elements");
    kernels::KvSet& hot = at.sets[at.num_sets++];
    hot.keys = hot_k->data_ptr();
    hot.values = hot_v->data_ptr();
    hot.dtype = hot_k->scalar_type() == torch::kBFloat16 ? kernels::DType::kBFloat16
                                                         : kernels::DType::kFloat32;
    TORCH_CHECK(hot_k->scalar_type() == torch::kBFloat16 || hot_k->scalar_type() == torch::kFloat32,
                "hot tier dtype ", hot_k->scalar_type(), " is not bf16 or float32");
    hot.max_rows = uint32_t(hot_k->size(1));
    hot.head_stride = uint64_t(hot_k->stride(0));
    if (dc) hot.counts = dc->hot;
  }
  if (bf16_out)
    at.out_bf16 = out.data_ptr();
  else
    at.out = Ptr<float>(out);
  at.lse = Ptr<float>(lse);
  TORCH_CHECK(kernels::SparseAttentionDoneCount(at) <= uint64_t(attn_done_.numel()),
              "the attention's done-counters are too few for ", at.num_q_heads, " heads");
  at.done = Ptr<uint32_t>(attn_done_);
  torch::Tensor at_workspace = Scratch(kernels::SparseAttentionWorkspaceBytes(at), opts);
  at.workspace = at_workspace.data_ptr();
  at.workspace_bytes = size_t(at_workspace.numel());
  Check(kernels::LaunchSparseDecodeAttention(at, CurrentStream(), &error), error,
        "LaunchSparseDecodeAttention");
  return {out, lse};
#else
  (void)layer, (void)queries, (void)reps, (void)G, (void)per_query, (void)position,
      (void)position_step, (void)hot_k, (void)hot_v,
      (void)dc, (void)bf16_out;
  TORCH_CHECK(false, "not implemented: the GPU cold tier in a build without the CUDA kernels");
  return {};
#endif
}

}  // namespace kiv
