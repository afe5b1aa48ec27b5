// kernels/merge against the CPU's std::set_union: the union of each problem's sorted candidate
// lists, ascending, every id once.
#include "kernels/merge.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <iterator>
#include <string>
#include <vector>

#include "tests/kernels/kernel_test_util.h"

using namespace kiv::kernels;
using kiv::kernels::test::DeviceBuffer;
using kiv::kernels::test::Rng;

namespace {

// The reference: each list's first `used` entries merged, duplicates dropped.
std::vector<uint32_t> UnionOf(const std::vector<uint32_t>& in, const std::vector<uint32_t>& counts,
                              uint32_t p, uint32_t g, uint32_t c) {
  std::vector<uint32_t> all;
  for (uint32_t j = 0; j < g; ++j) {
    const auto* row = in.data() + (size_t{p} * g + j) * c;
    std::vector<uint32_t> merged;
    std::set_union(all.begin(), all.end(), row, row + std::min(counts[p * g + j], c),
                   std::back_inserter(merged));
    all = std::move(merged);
  }
  return all;
}

void CheckShape(uint32_t P, uint32_t g, uint32_t c, uint32_t universe, uint64_t seed) {
  CAPTURE(P);
  CAPTURE(g);
  CAPTURE(c);
  CAPTURE(universe);
  Rng rng{seed};
  std::vector<uint32_t> in(size_t{P} * g * c, 0), counts(size_t{P} * g);
  for (uint32_t row = 0; row < P * g; ++row) {
    // A sorted set of distinct ids from [0, universe): small universes force shared ids.
    std::vector<uint32_t> ids;
    const uint32_t want = rng.Below(c + 1);
    while (ids.size() < std::min(want, universe)) {
      const uint32_t id = rng.Below(universe);
      if (std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
    }
    std::sort(ids.begin(), ids.end());
    std::copy(ids.begin(), ids.end(), in.begin() + size_t{row} * c);
    counts[row] = uint32_t(ids.size());
    // Entries past the count are garbage the kernel must ignore.
    for (size_t j = ids.size(); j < c; ++j) in[size_t{row} * c + j] = rng.Below(universe);
  }
  DeviceBuffer<uint32_t> d_in(in), d_counts(counts), d_out(size_t{P} * g * c),
      d_out_counts(P);
  MergeCandidatesArgs a;
  a.num_problems = P, a.lists = g, a.length = c;
  a.in = d_in.get(), a.in_counts = d_counts.get();
  a.out = d_out.get(), a.out_counts = d_out_counts.get();
  std::string error;
  REQUIRE(MergeCandidates(a, nullptr, &error) == 0);
  REQUIRE(error.empty());
  const std::vector<uint32_t> out = d_out.Download(), out_counts = d_out_counts.Download();
  for (uint32_t p = 0; p < P; ++p) {
    const std::vector<uint32_t> want = UnionOf(in, counts, p, g, c);
    REQUIRE(out_counts[p] == want.size());
    const auto* got = out.data() + size_t{p} * g * c;
    CHECK(std::equal(want.begin(), want.end(), got));
  }
}

}  // namespace

TEST_CASE("the GPU union of candidate lists equals the CPU's set union") {
  if (!kiv::kernels::test::HaveDevice()) {
    MESSAGE("skipped: no CUDA device");
    return;
  }
  CheckShape(9, 3, 342, 1u << 20, 1);    // SmolLM2's decode step: 3 kv-heads x 3 query heads
  CheckShape(9, 3, 342, 700, 2);         // many ids shared between the heads
  CheckShape(64, 4, 256, 300, 3);        // heavy overlap, full 1,024
  CheckShape(5, 1, 1, 2, 4);             // one list of one
  CheckShape(3, 8, 512, 1u << 30, 5);    // the largest: 4,096 entries
  CheckShape(1000, 2, 100, 150, 6);      // many problems
}

TEST_CASE("unsupported merge shapes are refused by name") {
  MergeCandidatesArgs a;
  a.num_problems = 1, a.lists = 8, a.length = 513;
  uint32_t dummy = 0;
  a.in = &dummy, a.out = &dummy, a.out_counts = &dummy;
  CHECK(CheckMergeCandidates(a).find("exceeds 4096") != std::string::npos);
  a.length = 4, a.num_problems = 0;
  CHECK(CheckMergeCandidates(a).find("num_problems 0") != std::string::npos);
  a.num_problems = 1, a.out = nullptr;
  CHECK(CheckMergeCandidates(a).find("must be set") != std::string::npos);
}
