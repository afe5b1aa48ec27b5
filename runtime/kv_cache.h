// The seam between the model runner and the cache: the runner computes q, k, v for a chunk of
// tokens in one layer (after RoPE) and the cache returns that chunk's attention output. A plain
// full cache (the fidelity baseline) and the tiered cache (hot window + archive) both implement
// it, so the model code never knows which one it talks to.
#pragma once

#include <torch/torch.h>

#include <cstdint>

namespace kiv {

class KvCache {
 public:
  virtual ~KvCache() = default;

  // One layer of one chunk of n new tokens at absolute positions [first_position, first_position
  // + n). q: [H_q, n, d]; k, v: [H_kv, n, d], keys after RoPE. Stores k and v (as the cache
  // sees fit) and returns the attention output [H_q, n, d]: each new token attends causally to
  // every earlier token the cache makes visible and to the chunk's tokens up to itself.
  virtual torch::Tensor Attend(int64_t layer, const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& v, int64_t first_position) = 0;

  // Called once after every layer has seen the chunk (the tiered cache moves tokens out of the
  // hot window here). `token_ids` are the chunk's n token ids.
  virtual void EndChunk(const std::vector<int64_t>& token_ids) = 0;

  // Tokens stored so far (the next chunk's first position).
  virtual int64_t length() const = 0;

  // Whether the next decode step (one token) may be captured whole in a CUDA graph: its Attend
  // calls then read every count and position from device memory, which this call sets for the
  // step, and launch only work whose shapes and pointers depend on `*key` alone. A graph captured
  // under one key may be replayed for any later step that returns true with the same key (the
  // caller still calls EndChunk after each). false: run this step eagerly (the default).
  virtual bool PrepareCapturedDecode(uint64_t* key) {
    (void)key;
    return false;
  }
};

}  // namespace kiv
