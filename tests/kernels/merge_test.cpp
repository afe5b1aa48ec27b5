// kernels/merge against the CPU: the union of each problem's sorted candidate lists, ascending,
// every id once (the sort + unique of runtime/tiered_cache.cpp Retrieve). Random lists, then
// shapes that stress the pairwise rank merge: ties across and inside lists, identical, disjoint
// and interleaved lists, empty and one-entry lists, counts short of c, many lists, extreme ids.
#include "kernels/merge.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <functional>
#include <string>
#include <vector>

#include "tests/kernels/kernel_test_util.h"

using namespace kiv::kernels;
using kiv::kernels::test::DeviceBuffer;
using kiv::kernels::test::Rng;

namespace {

constexpr uint32_t kCanary = 0xC0FFEE11u;  // out's entries past the union must keep it

// The reference: each list's first min(count, c) entries (all c without counts), sorted, unique.
// Not std::set_union, which keeps a repeated id as often as one list repeats it.
std::vector<uint32_t> UnionOf(const std::vector<uint32_t>& in, const std::vector<uint32_t>& counts,
                              uint32_t p, uint32_t g, uint32_t c) {
  std::vector<uint32_t> all;
  for (uint32_t j = 0; j < g; ++j) {
    const auto* row = in.data() + (size_t{p} * g + j) * c;
    all.insert(all.end(), row, row + (counts.empty() ? c : std::min(counts[p * g + j], c)));
  }
  std::sort(all.begin(), all.end());
  all.erase(std::unique(all.begin(), all.end()), all.end());
  return all;
}

// One launch over P problems of g lists of row length c; empty `counts`: in_counts = nullptr.
void CheckLists(uint32_t P, uint32_t g, uint32_t c, const std::vector<uint32_t>& in,
                const std::vector<uint32_t>& counts) {
  CAPTURE(P);
  CAPTURE(g);
  CAPTURE(c);
  CAPTURE(counts.empty());
  REQUIRE(in.size() == size_t{P} * g * c);
  DeviceBuffer<uint32_t> d_in(in), d_counts(std::max<size_t>(counts.size(), 1)),
      d_out(std::vector<uint32_t>(size_t{P} * g * c, kCanary)), d_out_counts(P);
  if (!counts.empty()) d_counts.Upload(counts);
  MergeCandidatesArgs a;
  a.num_problems = P, a.lists = g, a.length = c;
  a.in = d_in.get(), a.in_counts = counts.empty() ? nullptr : d_counts.get();
  a.out = d_out.get(), a.out_counts = d_out_counts.get();
  std::string error;
  REQUIRE(MergeCandidates(a, nullptr, &error) == 0);
  REQUIRE(error.empty());
  const std::vector<uint32_t> out = d_out.Download(), out_counts = d_out_counts.Download();
  for (uint32_t p = 0; p < P; ++p) {
    CAPTURE(p);
    const std::vector<uint32_t> want = UnionOf(in, counts, p, g, c);
    REQUIRE(out_counts[p] == want.size());
    const auto* got = out.data() + size_t{p} * g * c;
    CHECK(std::equal(want.begin(), want.end(), got));
    CHECK(std::all_of(got + want.size(), got + size_t{g} * c,
                      [](uint32_t x) { return x == kCanary; }));
  }
}

// make(p, list) gives a list's entries, ascending, at most c of them. The rest of its row is
// garbage the kernel must ignore; with `counts` false each list must fill its row.
void CheckMade(uint32_t P, uint32_t g, uint32_t c, bool counts,
               const std::function<std::vector<uint32_t>(uint32_t, uint32_t)>& make,
               uint64_t seed = 99) {
  Rng rng{seed};
  std::vector<uint32_t> in(size_t{P} * g * c), used;
  for (uint32_t p = 0; p < P; ++p)
    for (uint32_t j = 0; j < g; ++j) {
      const std::vector<uint32_t> list = make(p, j);
      REQUIRE(list.size() <= c);
      REQUIRE(std::is_sorted(list.begin(), list.end()));
      REQUIRE((counts || list.size() == c));
      uint32_t* row = in.data() + (size_t{p} * g + j) * c;
      std::copy(list.begin(), list.end(), row);
      for (size_t k = list.size(); k < c; ++k) row[k] = uint32_t(rng.Next());
      if (counts) used.push_back(uint32_t(list.size()));
    }
  CheckLists(P, g, c, in, used);
}

// Random sorted sets of distinct ids from [0, universe), random counts (small universes force
// shared ids), garbage past each count.
void CheckShape(uint32_t P, uint32_t g, uint32_t c, uint32_t universe, uint64_t seed) {
  CAPTURE(universe);
  Rng rng{seed};
  CheckMade(
      P, g, c, true,
      [&](uint32_t, uint32_t) {
        std::vector<uint32_t> ids;
        const uint32_t want = std::min(rng.Below(c + 1), universe);
        while (ids.size() < want) {
          const uint32_t id = rng.Below(universe);
          if (std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
        }
        std::sort(ids.begin(), ids.end());
        return ids;
      },
      seed ^ 0x5EED);
}

// A sorted list of n ids drawn (with repeats when `repeats`) from [base, base + universe).
std::vector<uint32_t> Drawn(Rng& rng, uint32_t n, uint32_t base, uint32_t universe,
                            bool repeats = false) {
  std::vector<uint32_t> ids;
  while (ids.size() < n) {
    const uint32_t id = base + rng.Below(universe);
    if (repeats || std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
  }
  std::sort(ids.begin(), ids.end());
  return ids;
}

struct Shape {
  uint32_t g, c;
};

bool SkipWithoutDevice() {
  if (kiv::kernels::test::HaveDevice()) return false;
  MESSAGE("skipped: no CUDA device");
  return true;
}

}  // namespace

TEST_CASE("the CPU reference unites lists by sort + unique, within a list too") {
  //                         list 0: 3 used   list 1: 2 used, 1 past its count
  const std::vector<uint32_t> in = {1, 1, 5, 9, 1, 4, 7, 0}, counts = {3, 2};
  CHECK(UnionOf(in, counts, 0, 2, 4) == std::vector<uint32_t>{1, 4, 5});
  CHECK(UnionOf(in, {}, 0, 2, 4) == std::vector<uint32_t>{0, 1, 4, 5, 7, 9});
  CHECK(UnionOf(in, {0, 0}, 0, 2, 4).empty());
}

TEST_CASE("the GPU union of candidate lists equals the CPU's, random lists") {
  if (SkipWithoutDevice()) return;
  CheckShape(9, 3, 342, 1u << 20, 1);    // SmolLM2's decode step: 3 kv-heads x 3 query heads
  CheckShape(9, 3, 342, 700, 2);         // many ids shared between the heads
  CheckShape(64, 4, 256, 300, 3);        // heavy overlap, full 1,024
  CheckShape(5, 1, 1, 2, 4);             // one list of one
  CheckShape(3, 8, 512, 1u << 30, 5);    // 4,096 entries
  CheckShape(3, 10, 512, 1u << 30, 12);  // the largest: 5,120 entries
  CheckShape(6, 3, 1366, 5000, 13);      // C = 4,096 shared by SmolLM2's 3 query heads
  CheckShape(1000, 2, 100, 150, 6);      // many problems
  CheckShape(4, 8, 512, 600, 7);         // the largest, heavy overlap
  CheckShape(3, 7, 585, 2000, 8);        // an odd number of lists: a run without a partner
  CheckShape(2, 64, 64, 500, 9);         // many lists, six rounds
  CheckShape(2, 1024, 1, 3000, 10);      // the most lists: ten rounds of one-entry runs
  CheckShape(2, 1024, 5, 3000, 14);      // the most lists, the most entries
  CheckShape(3, 1, 5120, 1u << 31, 11);  // one list: no round, only the compaction
}

TEST_CASE("the GPU union of candidate lists: ties, overlaps and layouts") {
  if (SkipWithoutDevice()) return;
  Rng rng{12};
  SUBCASE("all lists identical") {
    for (const Shape shape : {Shape{3, 342}, {8, 512}, {2, 1}, {5, 33}}) {
      const uint32_t g = shape.g, c = shape.c;
      std::vector<std::vector<uint32_t>> same;
      for (uint32_t p = 0; p < 3; ++p) same.push_back(Drawn(rng, c, 1000 * p, 1u << 24));
      CheckMade(3, g, c, false, [&](uint32_t p, uint32_t) { return same[p]; });
    }
  }
  SUBCASE("disjoint lists, the first list holding the largest ids") {
    for (const Shape shape : {Shape{3, 342}, {8, 512}, {6, 17}}) {
      const uint32_t g = shape.g, c = shape.c;
      CheckMade(2, g, c, false, [&](uint32_t p, uint32_t j) {
        return Drawn(rng, c, (g - 1 - j) * 4 * c + p, 4 * c);
      });
    }
  }
  SUBCASE("interleaved lists: list j holds j, j + g, j + 2g, ...") {
    for (const Shape shape : {Shape{3, 342}, {8, 512}, {5, 100}, {2, 2048}}) {
      const uint32_t g = shape.g, c = shape.c;
      CheckMade(2, g, c, false, [&](uint32_t p, uint32_t j) {
        std::vector<uint32_t> ids(c);
        for (uint32_t k = 0; k < c; ++k) ids[k] = p + j + g * k;
        return ids;
      });
    }
  }
  SUBCASE("neighbouring lists share half their ids") {
    CheckMade(3, 6, 300, false, [&](uint32_t p, uint32_t j) {
      std::vector<uint32_t> ids(300);
      for (uint32_t k = 0; k < 300; ++k) ids[k] = 7 * p + k + j * 150;
      return ids;
    });
  }
  SUBCASE("repeated ids inside a list and across lists") {
    for (const Shape shape : {Shape{4, 64}, {3, 342}, {8, 512}, {1, 300}}) {
      const uint32_t g = shape.g, c = shape.c;
      CheckMade(3, g, c, true, [&](uint32_t, uint32_t) {
        return Drawn(rng, rng.Below(c + 1), 0, std::max(c / 4, 1u), true);
      });
    }
    CheckMade(2, 8, 512, false, [](uint32_t p, uint32_t) {  // one id, 4,096 times
      return std::vector<uint32_t>(512, 42 + p);
    });
  }
  SUBCASE("one-entry and empty lists") {
    CheckMade(4, 8, 1, true, [](uint32_t p, uint32_t j) {
      return j % 2 ? std::vector<uint32_t>{p + j / 4} : std::vector<uint32_t>{};
    });
    const std::vector<uint32_t> used = {0, 1, 0, 7, 1};
    CheckMade(2, 5, 7, true,
              [&](uint32_t p, uint32_t j) { return Drawn(rng, used[(j + p) % 5], 0, 10); });
    CheckMade(3, 4, 9, true, [](uint32_t, uint32_t) { return std::vector<uint32_t>{}; });
    CheckMade(3, 1, 9, true, [](uint32_t, uint32_t) { return std::vector<uint32_t>{}; });
    CheckMade(2, 1024, 1, true, [&](uint32_t, uint32_t j) {
      return j % 3 == 0 ? std::vector<uint32_t>{rng.Below(500)} : std::vector<uint32_t>{};
    });
  }
  SUBCASE("counts shorter than c") {
    for (const Shape shape : {Shape{3, 342}, {8, 512}, {1, 100}, {7, 9}}) {
      const uint32_t g = shape.g, c = shape.c;
      CheckMade(4, g, c, true,
                [&](uint32_t, uint32_t) { return Drawn(rng, rng.Below(c / 2 + 1), 0, 3 * c); });
    }
  }
  SUBCASE("ids near 0 and 2^32 - 1") {
    const std::vector<std::vector<uint32_t>> lists = {
        {0, 1, 2, 0xFFFFFFFDu, 0xFFFFFFFEu, 0xFFFFFFFFu},
        {0, 0xFFFFFFFFu},
        {0xFFFFFFFEu, 0xFFFFFFFFu, 0xFFFFFFFFu},
        {0, 0, 1}};
    CheckMade(2, 4, 6, true, [&](uint32_t p, uint32_t j) { return lists[(j + p) % 4]; });
    CheckMade(2, 3, 342, false, [&](uint32_t p, uint32_t) {  // the decode shape at the top
      return Drawn(rng, 342, 0xFFFFFFFFu - 1000 * (p + 1) + 1, 1000 * (p + 1));
    });
    CheckMade(2, 1, 2, false,
              [](uint32_t, uint32_t) { return std::vector<uint32_t>{0xFFFFFFFFu, 0xFFFFFFFFu}; });
  }
  SUBCASE("no counts: every list uses its whole row") {
    CheckMade(9, 3, 342, false, [&](uint32_t, uint32_t) { return Drawn(rng, 342, 0, 2000); });
    CheckMade(3, 8, 512, false, [&](uint32_t, uint32_t) { return Drawn(rng, 512, 0, 1u << 20); });
    CheckMade(5, 1, 1, false, [&](uint32_t, uint32_t) { return Drawn(rng, 1, 0, 3); });
  }
}

TEST_CASE("unsupported merge shapes are refused by name") {
  MergeCandidatesArgs a;
  a.num_problems = 1, a.lists = 10, a.length = 513;
  uint32_t dummy = 0;
  a.in = &dummy, a.out = &dummy, a.out_counts = &dummy;
  CHECK(CheckMergeCandidates(a).find("exceeds 5120") != std::string::npos);
  a.lists = 1025, a.length = 1;
  CHECK(CheckMergeCandidates(a).find("lists 1025 exceeds 1024") != std::string::npos);
  a.lists = 8;
  a.length = 4, a.num_problems = 0;
  CHECK(CheckMergeCandidates(a).find("num_problems 0") != std::string::npos);
  a.num_problems = 1, a.out = nullptr;
  CHECK(CheckMergeCandidates(a).find("must be set") != std::string::npos);
}
