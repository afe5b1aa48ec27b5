// One helper for the loops that split (layer, kv-head) slots over the cores: eviction's encoding,
// reopening's copies and the record arena's pinning. Each index is handed out once, in order, to
// whichever thread asks next; fn must be safe to call from several threads for distinct indices.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

namespace kiv {

template <typename Fn>
void ParallelFor(uint32_t count, uint32_t threads, const Fn& fn) {
  std::atomic<uint32_t> next{0};
  auto work = [&] {
    for (uint32_t i; (i = next.fetch_add(1)) < count;) fn(i);
  };
  std::vector<std::thread> pool;
  for (uint32_t i = 1; i < std::min(threads, count); ++i) pool.emplace_back(work);
  work();
  for (std::thread& t : pool) t.join();
}

}  // namespace kiv
