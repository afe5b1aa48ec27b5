// The cold tier's signatures resident on the GPU, and the scan + top-C select over them
// (kernels/scan.h) in place of index::AsymmetricScan + SelectLargest: the step of retrieval that
// reads every cold token. Bit-exact with the CPU scan (the kernels compute every score in the same
// float order), so a session picks the same candidates on either.
//
// Selecting needs a build with the CUDA kernels (Available()); without them it fails loudly.
// GpuSignatureIndex alone brings candidate ids back to the host (the CPU then re-ranks);
// GpuColdTier runs the whole cold step on the GPU: scan → union → re-rank + gather → attention.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <vector>

#include "index/record.h"
#include "index/signature.h"
#include "runtime/cache_options.h"
#include "runtime/full_cache.h"

namespace kiv {

// An A/B switch of the GPU path that is on unless the environment sets it to "0" (KIV_SCAN_SAMPLE,
// KIV_GPU_COLD, ...).
bool SwitchOn(const char* name);

class GpuSignatureIndex {
 public:
  // Whether this build has the kernels (kernels/scan.h) that Select* run.
  static bool Available();

  // `slots` (layer, kv-head) runs of signatures of `projection.words()` words each, on `device`,
  // and beside them the keys' norms when `with_norms` (the scan's weights; 4 bytes a token and
  // slot: 377 MB at 1M tokens of SmolLM2).
  GpuSignatureIndex(uint32_t slots, const index::SignatureProjection& projection,
                    c10::Device device, bool with_norms = true);

  // Appends `count` tokens to every slot: signatures [slots][count][words] and key norms
  // [slots][count] (every slot holds the same tokens; ignored, and may be null, without norms),
  // in two copies to the device.
  void Append(const uint64_t* signatures, const float* norms, size_t count);
  // Eviction encoded on the device (kernels/encode.h), bit for bit what RecordCodec::Encode,
  // SignatureProjection::Sign and the stored key's norm give on the host: keys and values are
  // [L][H][count][d] views on this device (bf16 or float32, rows contiguous, every (layer,
  // kv-head) slot the same stride apart). Appends their signatures (and norms) to every slot and
  // copies the records to host `records` [slots][count][record_bytes] and, unless null, the
  // signatures to host `signatures` [slots][count][words]; returns when both copies are done.
  void AppendEncoded(const at::Tensor& keys, const at::Tensor& values,
                     const index::RecordCodec& codec, uint8_t* records, uint64_t* signatures);
  // Whether AppendEncoded takes this codec, head_dim and dtype (and the build has the kernels).
  static bool CanEncode(const index::RecordCodec& codec, uint32_t head_dim, c10::ScalarType dtype);
  bool has_norms() const { return norms_.defined(); }
  // Room for `tokens` in every slot without another copy (reopening knows the count).
  void Reserve(size_t tokens);
  size_t size() const { return size_; }
  size_t capacity() const { return size_t(signatures_.size(1)); }  // tokens per slot allocated
  // Device pointers to a slot's signatures [capacity][words] and norms [capacity], valid until
  // the next Append.
  const uint64_t* signatures(uint32_t slot) const;
  const float* norms(uint32_t slot) const;  // null without norms
  const at::Tensor& projection() const { return projection_; }
  uint64_t device_bytes() const;  // signatures and norms as allocated (capacity, not size)
  // Signatures and norms of the tokens held in every slot: what one scan of each slot reads.
  uint64_t held_bytes() const;

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

  void Grow(size_t need);  // room for `need` tokens per slot, growing by a quarter at a time

  uint32_t bits_, dim_, words_;
  c10::Device device_;
  at::Tensor projection_;  // [bits][dim] float on device_
  at::Tensor signatures_;  // [slots][capacity][words] int64 on device_
  at::Tensor norms_;       // [slots][capacity] float on device_; undefined without norms
  size_t size_ = 0;        // tokens held, the same in every slot
};

// Every cold record of every (layer, kv-head) slot in pinned host memory that the GPU reads in
// place (zero-copy): slot s's record of token t at base(s) + t · record_bytes, one contiguous
// reservation per slot of `capacity` tokens, pinned in pieces as it fills (cudaHostRegister of
// anonymous memory asked for huge pages). KIV_RECORD_ARENA=hostalloc instead pins each slot's
// whole capacity with cudaHostAlloc up front: the A/B of where the GPU's reads of far-apart
// records are faster (docs/performance.md).
class GpuRecordArena {
 public:
  GpuRecordArena(uint32_t slots, uint32_t record_bytes, uint64_t capacity);
  ~GpuRecordArena();
  GpuRecordArena(const GpuRecordArena&) = delete;
  GpuRecordArena& operator=(const GpuRecordArena&) = delete;

  // Appends `count` tokens to every slot from [slots][count][record_bytes] host bytes, on up to
  // `threads` threads (reopening copies a whole archive).
  void Append(const uint8_t* records, uint64_t count, uint32_t threads = 1);
  // Appends `count` tokens of one slot (slot-major restores call this per slot, then Commit).
  void AppendSlot(uint32_t slot, const uint8_t* records, uint64_t at, uint64_t count);
  // Pins what AppendSlot wrote up to `size` tokens in every slot, on up to `threads` threads
  // (reopening pins a whole archive's records).
  void Grow(uint64_t size, uint32_t threads = 1);
  const uint8_t* base(uint32_t slot) const { return slot_base_[slot]; }
  uint64_t size() const { return size_; }
  uint64_t capacity() const { return capacity_; }

 private:
  uint32_t slots_, record_bytes_;
  uint64_t capacity_, slot_bytes_;
  uint8_t* base_ = nullptr;              // the reserved mapping (KIV_RECORD_ARENA=register)
  std::vector<uint8_t*> slot_base_;      // each slot's first record
  bool driver_pinned_ = false;           // KIV_RECORD_ARENA=hostalloc: slots from cudaHostAlloc
  uint64_t size_ = 0;
  uint64_t pinned_ = 0;  // tokens of every slot pinned so far
  std::vector<uint8_t*> registered_;
};

// The cold step of one layer on the GPU, for a decode step or a prefill chunk: signatures and norms
// (GpuSignatureIndex) and records (GpuRecordArena) resident; no host round trip.
//   - per-query positions (a decode step; the last prefill_tail queries of a prompt's last chunk):
//     each query head scans on its own for C / g candidates, the group's lists are united, the
//     group re-ranks them and keeps k (the CPU path's Retrieve, kernels bit-exact with it up to
//     near-ties of the float softmax);
//   - the other prefill queries share one retrieval per block of prefill_block positions (one
//     summed table per block and kv-head, C candidates, the block's g · block queries re-rank).
// Returns the attention of q over the retrieved tokens with its log-sum-exp, to merge with the
// hot tier's.
class GpuColdTier {
 public:
  // Whether the kernels take these knobs (k ≤ 1,024; a group's candidates ≤ 4,096; g x
  // prefill_block ≤ 256 queries per re-rank; tail_samples ≤ 4,096 and drawn uniformly, not by
  // tail_importance); the cache keeps the cold step on the CPU otherwise.
  static bool Supports(const CacheShape& shape, const TieredCacheOptions& options);
  GpuColdTier(const CacheShape& shape, const TieredCacheOptions& options,
              const index::RecordCodec& codec, const GpuSignatureIndex* index,
              const GpuRecordArena* arena, c10::Device device);
  ~GpuColdTier();
  // q: [H_q, n, d] on the device (any float dtype, any strides), the positions of a chunk that
  // begins at `position`. Queries [0, per_query_begin) share block retrievals; [per_query_begin,
  // n) retrieve one by one. out is float32. With options.tail_samples, each retrieval's tail
  // sample (index::TailSample) is seeded by the position of its first query, as on the CPU.
  PartialAttention Attend(int64_t layer, const at::Tensor& q, int64_t per_query_begin,
                          int64_t position);
  // A decode step (q [H_q, 1, d]): retrieval as Attend's per-query positions, and one attention
  // kernel over the retrieved tokens and the hot tier hot_k/hot_v [H_kv, n_hot, d] (rows of d
  // contiguous elements, any head stride; bf16 or float32) together: no second attention and no
  // merge. [H_q, 1, d] in out_dtype: float32, or bf16 written by the kernel itself, rounded as
  // ATen's cast rounds (the float32 result's .to(kBFloat16) bit for bit, without the cast kernel).
  at::Tensor AttendDecode(int64_t layer, const at::Tensor& q, const at::Tensor& hot_k,
                          const at::Tensor& hot_v, int64_t position,
                          at::ScalarType out_dtype = at::kFloat);

  // Counts in device memory, read by the kernels as they run: a decode step built from them may
  // be captured in a CUDA graph and replayed while the cold tier and the hot window change.
  struct DeviceCounts {
    const uint32_t* hot = nullptr;   // [H_kv] rows of the hot tier each kv-head attends to
    const uint32_t* cold = nullptr;  // [1] cold tokens in the index
    const int64_t* position = nullptr;  // [1] the step's position (seeds the tail sample)
  };
  // AttendDecode with the counts in device memory: every launch is sized for the hot tensors'
  // rows and the index's capacity, so the call may be captured. Needs the index to hold at
  // least options.candidates tokens now, and the same whenever a capture of it replays (the
  // candidates per query, fixed at capture, are then C / g).
  // blobs: the step's scan queries as WriteDecodeKv built them (undefined: built here).
  at::Tensor AttendDecodeCapturable(int64_t layer, const at::Tensor& q, const at::Tensor& hot_k,
                                    const at::Tensor& hot_v, const DeviceCounts& counts,
                                    at::ScalarType out_dtype = at::kFloat,
                                    const at::Tensor& blobs = {});

  // A captured decode step's writes before AttendDecodeCapturable, in one kernel: k and v
  // ([H_kv, 1, d]) into the hot buffers ([H_kv, rows, d], rows of d contiguous) at the row that
  // `row` (one int64 on the device) holds, as index_copy_(1, row, ·) writes them; returns q
  // ([H_q, 1, d]) in float32. An undefined tensor, with nothing written, where the layouts do not
  // fit the kernel (rows of d contiguous elements, one dtype): the caller copies with LibTorch.
  // blobs: the same launch also builds the step's scan queries from q's float copy into *blobs
  // (kernels/scan.h, BuildDecodeScanQueries), for AttendDecodeCapturable: one kernel less a layer.
  at::Tensor WriteDecodeKv(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           const at::Tensor& hot_k, const at::Tensor& hot_v, const at::Tensor& row,
                           at::Tensor* blobs = nullptr) const;

  // A decode step's scans guess each query head's threshold from the layer's previous step
  // (kernels/scan.h, ScanSelectArgs::guess): how many of those (layer, query head) scans found
  // their guess held and how many fell back to the full select, so far. Waits for the device.
  // KIV_SCAN_GUESS=0 turns the guessing off (every scan takes the full select); in a captured
  // step the full select is launched only when a guess missed (KIV_SCAN_CONDITIONAL=0: always,
  // returning at once where the guesses held).
  struct GuessCounts {
    uint64_t held = 0, missed = 0;
    uint64_t missed_few = 0, missed_many = 0;  // of the misses: too few gathered (or no guess
                                               // yet), more than the candidate buffer holds
  };
  GuessCounts ScanGuessCounts() const;
  // The last AttendDecode's retrieved token ids ([H_kv][k] int32 device, ascending, then zeros)
  // and their counts ([H_kv]): for KIV_TRACE_RETRIEVAL (runtime/tiered_cache.cpp). Undefined
  // before the first one; captured steps (AttendDecodeCapturable) do not set them.
  const at::Tensor& last_decode_ids() const { return last_decode_ids_; }
  const at::Tensor& last_decode_counts() const { return last_decode_counts_; }

 private:
  // bf16_out: the attention's out is bf16 (AttendDecode's out_dtype), else float32.
  // rep r's position (its first query's: the tail sample's seed) is position + r ·
  // position_step, plus counts->position with device counts.
  PartialAttention Retrieve(int64_t layer, const at::Tensor& queries, uint32_t reps,
                            uint32_t per_problem, bool per_query, int64_t position,
                            int64_t position_step, const at::Tensor* hot_k = nullptr,
                            const at::Tensor* hot_v = nullptr,
                            const DeviceCounts* counts = nullptr, bool bf16_out = false,
                            const at::Tensor* prebuilt_blobs = nullptr);

  CacheShape shape_;
  TieredCacheOptions options_;
  index::RecordCodec codec_;
  const GpuSignatureIndex* index_;
  const GpuRecordArena* arena_;
  c10::Device device_;
  uint32_t max_reps_;
  at::Tensor record_bases_;  // [L][max_reps][H_kv] uint64 device: the arena's slot bases
  // The attention kernel's done-counters (kernels/attention.h), enough for Retrieve's largest
  // launch: zeroed once here, every launch leaves them zero, so captured steps replay with them.
  at::Tensor attn_done_;  // int32 device
  // [L][H_q] float device: each decode scan's guessed threshold, NaN until its first step; empty
  // with KIV_SCAN_GUESS=0.
  at::Tensor scan_guess_;
  at::Tensor scan_guess_counts_;  // [4] int32 device: held, missed, missed_few, missed_many
  // The next guess's policy (kernels/scan.h, ScanSelectArgs::guess_target, guess_margin):
  // KIV_SCAN_GUESS_TARGET, KIV_SCAN_GUESS_MARGIN.
  uint32_t scan_guess_target_ = 8;
  float scan_guess_margin_ = 0.25f;
  // A captured decode step's full select (taken only where a guess missed) sits in a conditional
  // graph node (kernels/scan.h, ScanSelectArgs::conditional); KIV_SCAN_CONDITIONAL=0: plain nodes
  // that return at once.
  bool scan_conditional_ = true;
  // The guess finish's quick selects (kernels/scan.h, ScanSelectArgs::quick_finish);
  // KIV_SCAN_QUICK_FINISH=0: histogram levels to the end.
  bool scan_quick_finish_ = true;
  // The guess scan's one vote a round (kernels/scan.h, ScanSelectArgs::one_vote);
  // KIV_SCAN_ONE_VOTE=0: a ballot for every 8 rows.
  bool scan_one_vote_ = true;
  // Each decode scan guesses from a sample scored against its own query (kernels/scan.h,
  // ScanSelectArgs::sample); KIV_SCAN_SAMPLE=0: from the layer's last step.
  bool scan_sample_ = true;
  at::Tensor last_decode_ids_, last_decode_counts_;
};

}  // namespace kiv
