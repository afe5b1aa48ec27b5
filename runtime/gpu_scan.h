// The cold tier's signatures resident on the GPU, and the scan + top-C select over them
// (kernels/scan.h) in place of index::AsymmetricScan + SelectLargest: the step of retrieval that
// reads every cold token. Bit-exact with the CPU scan (the kernels compute every score in the same
// float order), so a session picks the same candidates on either.
//
// Selecting needs a build with the CUDA kernels (Available()); without them it fails loudly.
// Candidate ids come back to the host; the re-rank, the record gather and the attention still run
// as on the CPU (the next kernels to wire).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <vector>

#include "index/signature.h"

namespace kiv {

class GpuSignatureIndex {
 public:
  // Whether this build has the kernels (kernels/scan.h) that Select* run.
  static bool Available();

  // `slots` (layer, kv-head) runs of signatures of `projection.words()` words each, on `device`.
  GpuSignatureIndex(uint32_t slots, const index::SignatureProjection& projection,
                    c10::Device device);

  // Appends `count` tokens to every slot: signatures [slots][count][words] and key norms
  // [slots][count] (every slot holds the same tokens), in two copies to the device.
  void Append(const uint64_t* signatures, const float* norms, size_t count);
  size_t size() const { return size_; }

  // The `c` best-scoring tokens of `slot` for each of `count` queries on its own ([count][dim],
  // host floats): indices ascending per query, as index::SelectLargest gives them.
  std::vector<std::vector<uint32_t>> SelectPerQuery(uint32_t slot, const float* queries,
                                                    uint32_t count, uint32_t c, bool norms);
  // The `c` best for the summed group of `count` queries (one table, as BuildGroupTable(g =
  // count)).
  std::vector<uint32_t> SelectGroup(uint32_t slot, const float* queries, uint32_t count, uint32_t c,
                                    bool norms);

 private:
  std::vector<std::vector<uint32_t>> Select(uint32_t slot, const float* queries, uint32_t g,
                                            uint32_t tables, uint32_t c, bool norms);

  uint32_t bits_, dim_, words_;
  c10::Device device_;
  at::Tensor projection_;  // [bits][dim] float on device_
  at::Tensor signatures_;  // [slots][capacity][words] int64 on device_
  at::Tensor norms_;       // [slots][capacity] float on device_
  size_t size_ = 0;        // tokens held, the same in every slot
};

}  // namespace kiv
