// kernels/scan against index/asym_scan: the device queries, scores and selections must equal the
// CPU's bit for bit (the CPU is the reference: QuantizeProjectedQuery, AsymmetricScan,
// SelectLargest).
#include "kernels/scan.h"

#include <cuda_runtime_api.h>
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "index/asym_scan.h"
#include "index/signature.h"

using namespace kiv;

namespace {

bool HaveDevice() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return false;
  }
  return count > 0;
}

template <typename T>
class DeviceArray {
 public:
  explicit DeviceArray(size_t size) : size_(size) {
    REQUIRE(cudaMalloc(reinterpret_cast<void**>(&data_), std::max<size_t>(size, 1) * sizeof(T)) ==
            cudaSuccess);
  }
  explicit DeviceArray(const std::vector<T>& host) : DeviceArray(host.size()) {
    REQUIRE(cudaMemcpy(data_, host.data(), size_ * sizeof(T), cudaMemcpyHostToDevice) ==
            cudaSuccess);
  }
  ~DeviceArray() { cudaFree(data_); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  T* get() const { return data_; }
  std::vector<T> Download() const {
    std::vector<T> host(size_);
    REQUIRE(cudaMemcpy(host.data(), data_, size_ * sizeof(T), cudaMemcpyDeviceToHost) ==
            cudaSuccess);
    return host;
  }

 private:
  size_t size_;
  T* data_ = nullptr;
};

float Uniform(uint64_t* s) {
  return static_cast<float>(index::SplitMix64(s) >> 40) / float(1 << 24) - 0.5f;
}

// kFew: 8 distinct signatures and 3 norms, so thousands of exact ties at any threshold.
// kSame: one signature for all. kZeros: a zero query and norms ±1, so every score is +0 or −0.
enum class Data { kRandom, kFew, kSame, kZeros };

struct Problems {
  uint32_t bits, words, n, count;
  std::vector<uint64_t> sigs;  // [count][n][words]
  std::vector<float> norms;    // [count][n]; problem 1 is scanned without norms
  std::vector<float> queries;  // [count][64]
  std::vector<index::ScanTable> tables;  // [count], by index::BuildGroupTable
  std::vector<uint8_t> blobs;  // [count][ScanQueryBytes(bits)], the same queries for the device
};

// The device's blob of the CPU's quantized query (g queries summed).
std::vector<uint8_t> HostBlob(const index::SignatureProjection& projection, const float* queries,
                              uint32_t g) {
  std::vector<int32_t> qq(projection.bits());
  const float scale = index::QuantizeProjectedQuery(projection, queries, g, qq.data());
  std::vector<uint8_t> blob(kernels::ScanQueryBytes(projection.bits()));
  kernels::PackScanQuery(qq.data(), projection.bits(), scale, blob.data());
  return blob;
}

// pr->tables and pr->blobs from pr->queries: the CPU's scan table and the device's blob of each.
void BuildTablesAndBlobs(Problems* pr) {
  const index::SignatureProjection projection(7, pr->bits, 64);
  pr->blobs.clear();
  for (uint32_t p = 0; p < pr->count; ++p) {
    index::BuildGroupTable(projection, &pr->queries[size_t{p} * 64], 1, &pr->tables[p]);
    const std::vector<uint8_t> blob = HostBlob(projection, &pr->queries[size_t{p} * 64], 1);
    pr->blobs.insert(pr->blobs.end(), blob.begin(), blob.end());
  }
}

Problems MakeProblems(uint32_t bits, uint32_t n, uint32_t count, Data data, uint64_t seed) {
  Problems pr{bits, bits / 64, n, count, {}, {}, {}, {}, {}};
  uint64_t state = seed;
  pr.sigs.resize(size_t{count} * n * pr.words);
  pr.norms.resize(size_t{count} * n);
  pr.queries.resize(size_t{count} * 64);
  pr.tables.resize(count);
  std::vector<uint64_t> pool(8 * pr.words);
  for (auto& w : pool) w = index::SplitMix64(&state);
  for (size_t t = 0; t < size_t{count} * n; ++t) {
    for (uint32_t w = 0; w < pr.words; ++w) {
      uint64_t& sig = pr.sigs[t * pr.words + w];
      if (data == Data::kRandom || data == Data::kZeros)
        sig = index::SplitMix64(&state);
      else if (data == Data::kFew)
        sig = pool[(t * 5 + t / 8) % 8 * pr.words + w];
      else
        sig = pool[w];
    }
    const uint64_t r = index::SplitMix64(&state);
    pr.norms[t] = data == Data::kZeros    ? (r & 1 ? -1.0f : 1.0f)
                  : data == Data::kRandom ? 0.5f + float(r >> 40) / float(1 << 24)
                                          : 0.5f * float(1 + r % 3);
  }
  for (auto& x : pr.queries) x = data == Data::kZeros ? 0.0f : Uniform(&state);
  BuildTablesAndBlobs(&pr);
  return pr;
}

// New queries for the same signatures and norms: a decode step after the one `pr` was made for.
void NewQueries(Problems* pr, uint64_t seed) {
  uint64_t state = seed;
  for (auto& x : pr->queries) x = Uniform(&state);
  BuildTablesAndBlobs(pr);
}

// The state a caller keeps between guessing calls (ScanSelectArgs::guess, guess_counts).
struct Guesses {
  explicit Guesses(uint32_t count)
      : values(std::vector<float>(count, std::nanf(""))), counts(std::vector<uint32_t>(4, 0)) {}
  void Set(float z) {
    const std::vector<float> all(values.Download().size(), z);
    REQUIRE(cudaMemcpy(values.get(), all.data(), all.size() * sizeof(float),
                       cudaMemcpyHostToDevice) == cudaSuccess);
  }
  uint32_t held() const { return counts.Download()[0]; }
  uint32_t missed() const { return counts.Download()[1]; }
  uint32_t missed_few() const { return counts.Download()[2]; }    // of the misses
  uint32_t missed_many() const { return counts.Download()[3]; }
  DeviceArray<float> values;
  DeviceArray<uint32_t> counts;
  bool sample = false;  // ScanSelectArgs::sample
};

size_t BitMismatches(const float* a, const float* b, size_t n, size_t* first) {
  size_t bad = 0;
  for (size_t i = 0; i < n; ++i) {
    if (std::memcmp(a + i, b + i, sizeof(float)) != 0) {
      if (bad == 0) *first = i;
      ++bad;
    }
  }
  return bad;
}

// Problems in groups of `share` read their group's first problem's signatures and norms, and
// group 1 reads no norms (as a GQA group's per-query scans share one kv-head's).
size_t SourceProblem(size_t p, uint32_t share) { return p / share * share; }
bool ReadsNorms(size_t p, uint32_t share) { return p / share != 1; }

// The device's selections ([count][c]) and counts ([count]) of `pr` over its first n tokens, and
// its scores ([count][pr.n], unless null), against AsymmetricScan + SelectLargest on the CPU.
// Problems share reads as SourceProblem and ReadsNorms say; the selections' entries past each
// count must still hold `untouched`.
void CheckAgainstCpu(const Problems& pr, uint32_t c, size_t n, uint32_t share,
                     const std::vector<float>* got_scores,
                     const std::vector<uint32_t>& got_selected,
                     const std::vector<uint32_t>& got_counts, uint32_t untouched) {
  const size_t cap = pr.n;
  std::vector<float> want_scores(n);
  std::vector<uint32_t> want(std::min<size_t>(c, n));
  for (size_t p = 0; p < pr.count; ++p) {
    CAPTURE(p);
    const size_t source = SourceProblem(p, share);
    index::AsymmetricScan(&pr.sigs[source * cap * pr.words],
                          ReadsNorms(p, share) ? &pr.norms[source * cap] : nullptr, n, pr.words,
                          pr.tables[p], want_scores.data());
    size_t first = 0;
    const size_t bad =
        got_scores ? BitMismatches(&(*got_scores)[p * cap], want_scores.data(), n, &first) : 0;
    CHECK_MESSAGE(bad == 0, bad << " scores differ, first at t = " << first << ": "
                                << (*got_scores)[p * cap + first] << " vs " << want_scores[first]);
    const size_t m = index::SelectLargest(want_scores.data(), n, c, want.data());
    REQUIRE(got_counts[p] == m);
    const uint32_t* got = &got_selected[p * c];
    CHECK(std::equal(want.begin(), want.begin() + static_cast<ptrdiff_t>(m), got));
    CHECK(std::all_of(got + m, got + c, [untouched](uint32_t x) { return x == untouched; }));
  }
}

constexpr uint32_t kUntouched = 0xFEEDF00Du;  // what selections past their count must hold

// The device side of ScanSelect over `pr` with `c` (the arguments CheckScanSelect describes):
// signatures, norms, query blobs, the count in device memory, outputs and workspace, and `args`
// pointing at them. Queries and the count can change between calls (Update), as between the
// replays of a captured decode step.
struct DeviceScan {
  DeviceScan(const Problems& pr, uint32_t c, uint32_t held, uint32_t share, Guesses* guesses)
      : sigs(pr.sigs),
        norms(pr.norms),
        scores(size_t{pr.count} * pr.n),
        blobs(pr.blobs),
        held_device(std::vector<uint32_t>{held}),
        selected(std::vector<uint32_t>(size_t{pr.count} * c, kUntouched)),
        counts(std::vector<uint32_t>(pr.count, kUntouched)),
        workspace(kernels::ScanSelectWorkspaceBytes(pr.count, pr.n)),
        problems(pr.count) {
    const size_t cap = pr.n, blob = kernels::ScanQueryBytes(pr.bits);
    for (size_t p = 0; p < pr.count; ++p) {
      const size_t source = SourceProblem(p, share);
      problems[p] = {sigs.get() + source * cap * pr.words,
                     ReadsNorms(p, share) ? norms.get() + source * cap : nullptr,
                     blobs.get() + p * blob};
    }
    args.problems = problems.data();
    args.num_problems = pr.count;
    args.n = pr.n;
    if (held > 0) args.n_device = held_device.get();
    args.share = share;
    args.words = pr.words;
    args.c = c;
    args.scores = scores.get();
    args.selected = selected.get();
    args.counts = counts.get();
    args.workspace = workspace.get();
    args.workspace_bytes = kernels::ScanSelectWorkspaceBytes(pr.count, pr.n);
    if (guesses) {
      args.guess = guesses->values.get();
      args.guess_counts = guesses->counts.get();
      args.sample = guesses->sample;
    }
  }
  // New query blobs (same size) and count in device memory, and the outputs reset to kUntouched.
  void Update(const Problems& pr, uint32_t held) {
    REQUIRE(cudaMemcpy(blobs.get(), pr.blobs.data(), pr.blobs.size(), cudaMemcpyHostToDevice) ==
            cudaSuccess);
    REQUIRE(cudaMemcpy(held_device.get(), &held, sizeof(held), cudaMemcpyHostToDevice) ==
            cudaSuccess);
    const std::vector<uint32_t> sel(size_t{pr.count} * args.c, kUntouched);
    const std::vector<uint32_t> cnt(pr.count, kUntouched);
    REQUIRE(cudaMemcpy(selected.get(), sel.data(), sel.size() * 4, cudaMemcpyHostToDevice) ==
            cudaSuccess);
    REQUIRE(cudaMemcpy(counts.get(), cnt.data(), cnt.size() * 4, cudaMemcpyHostToDevice) ==
            cudaSuccess);
  }
  // The outputs against the CPU over the first n tokens (scores too unless the call guessed).
  void Check(const Problems& pr, size_t n) const {
    const std::vector<float> got_scores = scores.Download();
    CheckAgainstCpu(pr, args.c, n, args.share, args.guess ? nullptr : &got_scores,
                    selected.Download(), counts.Download(), kUntouched);
  }

  DeviceArray<uint64_t> sigs;
  DeviceArray<float> norms, scores;
  DeviceArray<uint8_t> blobs;
  DeviceArray<uint32_t> held_device, selected, counts;
  DeviceArray<unsigned char> workspace;
  std::vector<kernels::ScanProblem> problems;
  kernels::ScanSelectArgs args;
};

// Runs ScanSelect on `pr` with `c` and checks scores, selections and counts against the CPU.
// held > 0: a launch sized for pr.n tokens (its capacity) that reads the count, `held`, from
// device memory, as a captured decode step does; the tokens past it must not count.
// share > 1: groups of `share` problems scan the first one's signatures and norms (group 1
// without norms), as a GQA group's per-query scans do.
// guesses: the call guesses with them (and then writes no scores where a guess holds, so only
// the selections are compared).
void CheckScanSelect(const Problems& pr, uint32_t c, uint32_t held = 0, uint32_t share = 1,
                     Guesses* guesses = nullptr, bool quick_finish = true, bool one_vote = true) {
  CAPTURE(pr.bits);
  CAPTURE(pr.n);
  CAPTURE(pr.count);
  CAPTURE(c);
  CAPTURE(held);
  CAPTURE(share);
  CAPTURE(quick_finish);
  CAPTURE(one_vote);
  DeviceScan scan(pr, c, held, share, guesses);
  scan.args.quick_finish = quick_finish;
  scan.args.one_vote = one_vote;
  std::string error;
  REQUIRE_MESSAGE(kernels::ScanSelect(scan.args, nullptr, &error) == 0, error);
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  scan.Check(pr, held > 0 ? held : pr.n);
}

// Nodes of `graph` (not inside conditional bodies) of the given type.
size_t CountNodes(cudaGraph_t graph, cudaGraphNodeType type) {
  size_t num = 0;
  REQUIRE(cudaGraphGetNodes(graph, nullptr, &num) == cudaSuccess);
  std::vector<cudaGraphNode_t> nodes(num);
  REQUIRE(cudaGraphGetNodes(graph, nodes.data(), &num) == cudaSuccess);
  size_t of_type = 0;
  for (cudaGraphNode_t node : nodes) {
    cudaGraphNodeType t;
    REQUIRE(cudaGraphNodeGetType(node, &t) == cudaSuccess);
    of_type += t == type;
  }
  return of_type;
}

}  // namespace

TEST_CASE("score keys order floats as the CPU compares them") {
  std::vector<float> v = {0.0f,
                          -0.0f,
                          1.0f,
                          -1.0f,
                          1e-40f,
                          -1e-40f,
                          3.5f,
                          -3.5f,
                          std::numeric_limits<float>::infinity(),
                          -std::numeric_limits<float>::infinity(),
                          std::numeric_limits<float>::max(),
                          -std::numeric_limits<float>::max(),
                          std::numeric_limits<float>::denorm_min(),
                          2.0f,
                          2.0000002f};
  uint64_t state = 3;
  for (int i = 0; i < 200; ++i) v.push_back(Uniform(&state) * std::ldexp(1.0f, i % 60 - 30));
  for (float a : v) {
    for (float b : v) {
      CHECK((a > b) == (kernels::ScoreKey(a) > kernels::ScoreKey(b)));
      CHECK((a == b) == (kernels::ScoreKey(a) == kernels::ScoreKey(b)));
    }
  }
}

TEST_CASE("device query blobs equal the CPU's quantized query, packed, bit for bit") {
  if (!HaveDevice()) {
    MESSAGE("skipped: no CUDA device");
    return;
  }
  static_assert(index::kScanQueryMax == 127 * 256 + 127);
  uint64_t state = 11;
  for (uint32_t bits : {64u, 128u, 256u}) {
    for (uint32_t dim : {64u, 128u}) {
      for (uint32_t g : {1u, 3u, 192u}) {
        CAPTURE(bits);
        CAPTURE(dim);
        CAPTURE(g);
        const uint32_t num_queries = 4;
        const index::SignatureProjection projection(bits + dim, bits, dim);
        std::vector<float> queries(size_t{num_queries} * g * dim);
        for (auto& x : queries) x = Uniform(&state) * 8.0f;
        // Query 3 is zero: an all-zero blob with scale 0.
        std::fill(queries.begin() + size_t{3} * g * dim, queries.end(), 0.0f);
        std::vector<uint8_t> want;
        for (uint32_t p = 0; p < num_queries; ++p) {
          const std::vector<uint8_t> b = HostBlob(projection, &queries[size_t{p} * g * dim], g);
          want.insert(want.end(), b.begin(), b.end());
        }
        DeviceArray<float> r(
            std::vector<float>(projection.matrix(), projection.matrix() + size_t{bits} * dim));
        DeviceArray<float> q(queries);
        DeviceArray<uint8_t> blobs(want.size());
        std::string error;
        REQUIRE_MESSAGE(kernels::BuildScanQueries(r.get(), bits, dim, q.get(), g, num_queries,
                                                  blobs.get(), nullptr, &error) == 0,
                        error);
        CHECK(blobs.Download() == want);
      }
    }
  }
}

TEST_CASE("scan + select equal AsymmetricScan + SelectLargest bit for bit") {
  if (!HaveDevice()) {
    MESSAGE("skipped: no CUDA device");
    return;
  }
  const uint32_t c = 1024;
  for (uint32_t bits : {64u, 128u, 256u}) {
    for (uint32_t n : {1u, 63u, c - 1, c, c + 1, 5000u, 1u << 20})
      CheckScanSelect(MakeProblems(bits, n, 3, Data::kRandom, bits * 1000 + n), c);
  }
}

TEST_CASE("scan + select: small and odd c") {
  if (!HaveDevice()) {
    MESSAGE("skipped: no CUDA device");
    return;
  }
  for (uint32_t c : {1u, 7u, 4095u, 4096u, 4097u, 4999u})
    CheckScanSelect(MakeProblems(128, 5000, 3, Data::kRandom, c), c);
  // More candidates than the small mode's buffer holds: the general path, without ties.
  CheckScanSelect(MakeProblems(128, 1u << 17, 3, Data::kRandom, 17), 20000);
}

TEST_CASE("scan + select: ties from duplicate signatures, equal norms and ±0") {
  if (!HaveDevice()) {
    MESSAGE("skipped: no CUDA device");
    return;
  }
  for (Data data : {Data::kFew, Data::kSame, Data::kZeros}) {
    for (uint32_t n : {63u, 5000u, 100000u}) {
      for (uint32_t c : {1u, 10u, 1024u}) CheckScanSelect(MakeProblems(128, n, 3, data, n + c), c);
    }
  }
  CheckScanSelect(MakeProblems(64, 1u << 20, 2, Data::kFew, 5), 1024);
}

TEST_CASE("scan + select sized for a capacity, the count read from device memory") {
  if (!HaveDevice()) {
    MESSAGE("skipped: no CUDA device");
    return;
  }
  // The tokens past the count are random signatures that would win if they were scanned.
  for (uint32_t held : {1u, 341u, 342u, 343u, 4096u, 40000u, 99999u})
    CheckScanSelect(MakeProblems(128, 100000, 9, Data::kRandom, held), 342, held);
  CheckScanSelect(MakeProblems(128, 1u << 20, 3, Data::kRandom, 3), 1024, 700000);
  CheckScanSelect(MakeProblems(128, 30000, 3, Data::kFew, 4), 1024, 20000);  // ties: large mode
}

TEST_CASE("scan + select: a group of problems over one kv-head's signatures reads them once") {
  if (!HaveDevice()) {
    MESSAGE("skipped: no CUDA device");
    return;
  }
  for (uint32_t bits : {64u, 128u, 256u})
    for (uint32_t share : {2u, 3u, 4u, 5u, 8u})
      CheckScanSelect(MakeProblems(bits, 5000, 3 * share, Data::kRandom, bits + share), 342, 0,
                      share);
  CheckScanSelect(MakeProblems(128, 1u << 20, 9, Data::kRandom, 11), 342, 0, 3);
  CheckScanSelect(MakeProblems(128, 100000, 9, Data::kRandom, 12), 342, 70000, 3);
  CheckScanSelect(MakeProblems(128, 3000, 96, Data::kRandom, 13), 100, 0, 3);  // > 1 launch
  CheckScanSelect(MakeProblems(128, 5000, 6, Data::kFew, 14), 1024, 0, 3);     // ties
  std::string error;
  Problems pr = MakeProblems(128, 100, 4, Data::kRandom, 15);
  kernels::ScanSelectArgs args;
  std::vector<kernels::ScanProblem> problems(4, kernels::ScanProblem{nullptr, nullptr, nullptr});
  DeviceArray<uint64_t> sigs(pr.sigs);
  DeviceArray<uint8_t> blobs(pr.blobs);
  DeviceArray<float> scores(400);
  DeviceArray<uint32_t> selected(40);
  DeviceArray<unsigned char> workspace(kernels::ScanSelectWorkspaceBytes(4, 100));
  for (size_t p = 0; p < 4; ++p)
    problems[p] = {sigs.get() + p * 100 * 2, nullptr, blobs.get() + p * kernels::ScanQueryBytes(128)};
  args.problems = problems.data();
  args.num_problems = 4;
  args.n = 100;
  args.c = 10;
  args.scores = scores.get();
  args.selected = selected.get();
  args.workspace = workspace.get();
  args.workspace_bytes = kernels::ScanSelectWorkspaceBytes(4, 100);
  args.share = 3;  // does not divide 4
  CHECK(kernels::ScanSelect(args, nullptr, &error) != 0);
  CHECK(error.find("share = 3") != std::string::npos);
  args.share = 16;  // more than two products' columns hold
  CHECK(kernels::ScanSelect(args, nullptr, &error) != 0);
  CHECK(error.find("at most 8") != std::string::npos);
  args.share = 2;  // problems 0 and 1 read different signatures
  CHECK(kernels::ScanSelect(args, nullptr, &error) != 0);
  CHECK(error.find("does not read its group's signatures") != std::string::npos);
}

TEST_CASE("scan + select: more problems than one launch holds") {
  if (!HaveDevice()) {
    MESSAGE("skipped: no CUDA device");
    return;
  }
  CheckScanSelect(MakeProblems(128, 3000, 70, Data::kRandom, 70), 100);
}

TEST_CASE("device query blobs feed the scan: the runtime's per-query decode path") {
  if (!HaveDevice()) {
    MESSAGE("skipped: no CUDA device");
    return;
  }
  // 3 queries, each its own blob and its own problem over one kv-head's signatures.
  Problems pr = MakeProblems(128, 20000, 3, Data::kRandom, 99);
  const index::SignatureProjection projection(7, 128, 64);
  DeviceArray<float> r(std::vector<float>(projection.matrix(), projection.matrix() + 128 * 64));
  DeviceArray<float> q(pr.queries);
  DeviceArray<uint8_t> blobs(pr.blobs.size());
  REQUIRE(kernels::BuildScanQueries(r.get(), 128, 64, q.get(), 1, 3, blobs.get(), nullptr) == 0);
  REQUIRE(blobs.Download() == pr.blobs);
  CheckScanSelect(pr, 342);  // ceil(1024 / 3)
}

TEST_CASE("scan + select with a guess: the same selections, whether the guess holds or not") {
  if (!HaveDevice()) {
    MESSAGE("skipped: no CUDA device");
    return;
  }
  // Both finishes (ScanSelectArgs::quick_finish) and both ways the guess scan votes
  // (ScanSelectArgs::one_vote) must give the same selections.
  struct Path {
    bool quick_finish, one_vote;
  };
  for (const Path path : {Path{true, true}, Path{false, true}, Path{true, false}}) {
    // A decode step's shape: 3 kv-heads × 3 query heads, C / g = 342, a group's scans sharing
    // reads.
    Problems pr = MakeProblems(128, 100000, 9, Data::kRandom, 21);
    Guesses guesses(9);
    // No guess yet: every problem takes the full select.
    CheckScanSelect(pr, 342, 0, 3, &guesses, path.quick_finish, path.one_vote);
    CHECK(guesses.held() == 0);
    CHECK(guesses.missed() == 9);
    CHECK(guesses.missed_few() == 9);  // no guess yet counts as too few
    CHECK(guesses.missed_many() == 0);
    for (uint64_t step = 1; step <= 3; ++step) {  // later steps: new queries, the guesses hold
      NewQueries(&pr, 100 + step);
      CheckScanSelect(pr, 342, 0, 3, &guesses, path.quick_finish, path.one_vote);
    }
    CHECK(guesses.held() == 27);
    CHECK(guesses.missed() == 9);
    guesses.Set(1e30f);  // above every score: fewer than c tokens at or above it
    CheckScanSelect(pr, 342, 0, 3, &guesses, path.quick_finish, path.one_vote);
    CHECK(guesses.missed() == 18);
    CHECK(guesses.missed_few() == 18);
    guesses.Set(-1e30f);  // below every score: more tokens than the candidate buffer holds
    CheckScanSelect(pr, 342, 0, 3, &guesses, path.quick_finish, path.one_vote);
    CHECK(guesses.missed() == 27);
    CHECK(guesses.missed_many() == 9);
    NewQueries(&pr, 200);  // the last call (a miss) set the guesses again: they hold
    CheckScanSelect(pr, 342, 0, 3, &guesses, path.quick_finish, path.one_vote);
    CHECK(guesses.held() == 36);
    // A launch sized for a capacity, the count in device memory; then fewer tokens than c (the
    // "take all" path, which guesses nothing).
    Problems big = MakeProblems(128, 200000, 9, Data::kRandom, 22);
    Guesses grown(9);
    for (uint32_t held : {50000u, 50000u, 120000u, 300u}) {
      NewQueries(&big, held);
      CheckScanSelect(big, 342, held, 3, &grown, path.quick_finish, path.one_vote);
    }
    CHECK(grown.held() == 18);
    CHECK(grown.missed() == 9);
    // At most 16384 tokens: every token is a candidate, so the guess holds from the first call;
    // ties (few distinct signatures, one signature, ±0 scores) go to the lower indices among them.
    for (Data data : {Data::kRandom, Data::kFew, Data::kSame, Data::kZeros}) {
      for (uint32_t c : {1u, 10u, 342u, 1024u}) {
        Guesses small(6);
        CheckScanSelect(MakeProblems(128, 16384, 6, data, c), c, 0, 3, &small, path.quick_finish,
                        path.one_vote);
        CHECK(small.held() == 6);
        CHECK(small.missed() == 0);
      }
    }
    // Heavy ties (24 distinct scores): whichever way the second call's guess goes, the same
    // selection.
    Guesses ties(3);
    for (int i = 0; i < 2; ++i)
      CheckScanSelect(MakeProblems(128, 100000, 3, Data::kFew, 5), 342, 0, 1, &ties,
                      path.quick_finish, path.one_vote);
    CHECK(ties.held() + ties.missed() == 6);
    // Two product tiles (share > 4).
    Guesses wide(8);
    Problems w = MakeProblems(128, 50000, 8, Data::kRandom, 23);
    for (uint64_t step = 0; step < 3; ++step) {
      NewQueries(&w, 300 + step);
      CheckScanSelect(w, 342, 0, 8, &wide, path.quick_finish, path.one_vote);
    }
    CHECK(wide.held() == 16);
    for (uint32_t bits : {64u, 256u}) {
      Guesses other(4);
      Problems q = MakeProblems(bits, 70000, 4, Data::kRandom, bits);
      for (uint64_t step = 0; step < 3; ++step) {
        NewQueries(&q, bits + step);
        CheckScanSelect(q, 1000, 0, 1, &other, path.quick_finish, path.one_vote);
      }
      CHECK(other.held() == 8);
    }
  }
  // A guess needs c <= kScanGuessMaxC.
  const Problems pr = MakeProblems(128, 100000, 1, Data::kRandom, 21);
  Guesses guesses(1);
  std::string error;
  kernels::ScanSelectArgs args;
  std::vector<kernels::ScanProblem> problems(1);
  DeviceArray<uint64_t> sigs(pr.sigs);
  DeviceArray<uint8_t> blobs(pr.blobs);
  DeviceArray<float> scores(100000);
  DeviceArray<uint32_t> selected(2000);
  DeviceArray<unsigned char> workspace(kernels::ScanSelectWorkspaceBytes(1, 100000));
  problems[0] = {sigs.get(), nullptr, blobs.get()};
  args.problems = problems.data();
  args.num_problems = 1;
  args.n = 100000;
  args.c = kernels::kScanGuessMaxC + 1;
  args.scores = scores.get();
  args.selected = selected.get();
  args.workspace = workspace.get();
  args.workspace_bytes = kernels::ScanSelectWorkspaceBytes(1, 100000);
  args.guess = guesses.values.get();
  CHECK(kernels::ScanSelect(args, nullptr, &error) != 0);
  CHECK(error.find("with a guess") != std::string::npos);
  // And a policy for the next guess that the finish can follow.
  args.c = 342;
  for (const auto& [target, margin] : {std::pair{0u, 0.25f}, std::pair{65u, 0.25f},
                                       std::pair{8u, -0.1f}, std::pair{8u, 1.0f},
                                       std::pair{8u, std::nanf("")}}) {
    args.guess_target = target;
    args.guess_margin = margin;
    error.clear();
    CHECK(kernels::ScanSelect(args, nullptr, &error) != 0);
    CHECK(error.find("guess_target must be in 1..64") != std::string::npos);
  }
}

// The sampled guess (ScanSelectArgs::sample) of problem p over its first n tokens, on the CPU:
// the sample's ScanSampleRank-th largest score over the query's unit, as the device computes it.
float SampledGuess(const Problems& pr, size_t p, uint32_t share, uint32_t n, uint32_t c,
                   uint32_t target) {
  const size_t source = SourceProblem(p, share);
  std::vector<float> scores(n);
  index::AsymmetricScan(&pr.sigs[source * pr.n * pr.words],
                        ReadsNorms(p, share) ? &pr.norms[source * pr.n] : nullptr, n, pr.words,
                        pr.tables[p], scores.data());
  std::vector<float> sample;
  for (uint32_t t = 0; t < n; t += kernels::ScanSampleStride(n)) sample.push_back(scores[t]);
  const uint32_t k = kernels::ScanSampleRank(n, c, target);
  std::nth_element(sample.begin(), sample.begin() + (k - 1), sample.end(), std::greater<float>());
  const uint8_t* blob = &pr.blobs[p * kernels::ScanQueryBytes(pr.bits) + 2 * pr.bits];
  float scale = 0.0f;
  uint64_t squares = 0;
  std::memcpy(&scale, blob + 4, sizeof(scale));
  std::memcpy(&squares, blob + 8, sizeof(squares));
  const float unit = scale * std::sqrt(static_cast<float>(squares));
  return unit > 0.0f ? sample[k - 1] / unit : std::nanf("");
}

TEST_CASE("the sample's rank and stride") {
  using kernels::ScanSampleRank, kernels::ScanSampleStride;
  CHECK(ScanSampleStride(100000) == 64);    // 1,563 samples
  CHECK(ScanSampleStride(262144) == 64);    // 4,096
  CHECK(ScanSampleStride(262145) == 65);    // spread to at most 4,096
  CHECK(ScanSampleStride(1048576) == 256);  // 4,096
  CHECK(ScanSampleRank(100000, 342, 8) == 43);    // ⌈2,736 / 64⌉
  CHECK(ScanSampleRank(1048576, 342, 8) == 11);   // ⌈2,736 / 256⌉
  CHECK(ScanSampleRank(1048576, 1, 1) == 1);      // at least one
  CHECK(ScanSampleRank(20000, 1024, 64) == 313);  // at most the sample: 313 of 20,000 / 64
}

TEST_CASE("scan + select with a sampled guess: each call guesses from its own query") {
  if (!HaveDevice()) {
    MESSAGE("skipped: no CUDA device");
    return;
  }
  // A decode step's shape: the guess holds from the first call (no guess yet), whatever the
  // buffer held before (the last call's guess is not read), and equals the CPU's bit for bit.
  Problems pr = MakeProblems(128, 100000, 9, Data::kRandom, 41);
  Guesses guesses(9);
  guesses.sample = true;
  auto check_guesses = [&](const Problems& at, uint32_t n, uint32_t c, uint32_t share,
                           const Guesses& g) {
    const std::vector<float> got = g.values.Download();
    for (size_t p = 0; p < at.count; ++p) {
      CAPTURE(p);
      const float want = SampledGuess(at, p, share, n, c, 8);
      CHECK(std::memcmp(&got[p], &want, sizeof(float)) == 0);
    }
  };
  CheckScanSelect(pr, 342, 0, 3, &guesses);
  CHECK(guesses.held() == 9);
  CHECK(guesses.missed() == 0);
  check_guesses(pr, 100000, 342, 3, guesses);
  for (float stale : {1e30f, -1e30f, std::nanf("")}) {  // would miss as the last call's guess
    NewQueries(&pr, 700 + uint64_t(stale > 0));
    guesses.Set(stale);
    CheckScanSelect(pr, 342, 0, 3, &guesses);
    check_guesses(pr, 100000, 342, 3, guesses);
  }
  CHECK(guesses.held() == 36);
  // A capacity with the count in device memory: the sample spans the tokens held; at most
  // 16,384 of them every token is a candidate (nothing sampled); fewer than c take all.
  Problems big = MakeProblems(128, 300000, 9, Data::kRandom, 42);
  Guesses grown(9);
  grown.sample = true;
  for (uint32_t held : {300000u, 50000u, 16384u, 300u, 270000u}) {
    NewQueries(&big, held);
    CheckScanSelect(big, 342, held, 3, &grown);
    if (held > 16384) check_guesses(big, held, 342, 3, grown);
  }
  CHECK(grown.held() == 4 * 9);
  CHECK(grown.missed() == 0);
  // 64 and 256 bits, one problem a group, c = 1000 and 1 (the smallest rank).
  for (uint32_t bits : {64u, 256u}) {
    for (uint32_t c : {1000u, 1u}) {
      Guesses other(4);
      other.sample = true;
      const Problems q = MakeProblems(bits, 70000, 4, Data::kRandom, bits + c);
      CheckScanSelect(q, c, 0, 1, &other);
      CHECK(other.held() == 4);
      check_guesses(q, 70000, c, 1, other);
    }
  }
  // Heavy ties and ±0 scores of a zero query (no unit: no guess, the full select): the same
  // selections either way.
  for (Data data : {Data::kFew, Data::kZeros}) {
    Guesses odd(3);
    odd.sample = true;
    CheckScanSelect(MakeProblems(128, 100000, 3, data, 43), 342, 0, 1, &odd);
    CHECK(odd.held() + odd.missed() == 3);
    if (data == Data::kZeros) CHECK(odd.missed() == 3);
  }
}

TEST_CASE("scan + select with a guess in a CUDA graph: the full select runs only on a miss") {
  if (!HaveDevice()) {
    MESSAGE("skipped: no CUDA device");
    return;
  }
  // One capture replayed as a decode step's is: new queries and a new count in device memory
  // between replays. The full select's kernels sit in a conditional node's body, run by the
  // replays where a guess missed (no guess yet, a guess set too high or too low, fewer tokens
  // than c); every replay's selections must equal the CPU's.
  Problems pr = MakeProblems(128, 200000, 9, Data::kRandom, 31);
  Guesses guesses(9);
  DeviceScan scan(pr, 342, 50000, 3, &guesses);
  cudaStream_t stream = nullptr;
  REQUIRE(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) == cudaSuccess);
  for (const auto& [conditional, sample] :
       {std::pair{true, false}, std::pair{false, false}, std::pair{true, true}}) {
    CAPTURE(conditional);
    CAPTURE(sample);
    scan.args.conditional = conditional;
    scan.args.sample = sample;
    cudaGraph_t graph = nullptr;
    REQUIRE(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal) == cudaSuccess);
    std::string error;
    const int rc = kernels::ScanSelect(scan.args, stream, &error);
    REQUIRE(cudaStreamEndCapture(stream, &graph) == cudaSuccess);
    REQUIRE_MESSAGE(rc == 0, error);
    // Guess scan and finish outside (after the sample), the scan, Pass1, Pass2 and Compact in
    // the body, or not.
    CHECK(CountNodes(graph, cudaGraphNodeTypeConditional) == (conditional ? 1 : 0));
    CHECK(CountNodes(graph, cudaGraphNodeTypeKernel) == (conditional ? 2 : 6) + (sample ? 1 : 0));
    cudaGraphExec_t exec = nullptr;
    REQUIRE(cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess);
    guesses.Set(std::nanf(""));
    const uint32_t held0 = guesses.held(), missed0 = guesses.missed();
    struct Step {
      uint32_t tokens;
      float guess;  // set before the replay; 0: keep the last replay's
    };
    const Step steps[] = {{50000, std::nanf("")}, {50000, 0}, {120000, 0}, {120000, 1e30f},
                          {120000, 0},            {200000, -1e30f}, {200000, 0}, {300, 0},
                          {60000, 0}};
    uint64_t seed = 500;
    for (const Step& step : steps) {
      CAPTURE(step.tokens);
      CAPTURE(step.guess);
      NewQueries(&pr, ++seed);
      scan.Update(pr, step.tokens);
      if (step.guess != 0) guesses.Set(step.guess);
      REQUIRE(cudaGraphLaunch(exec, stream) == cudaSuccess);
      REQUIRE(cudaStreamSynchronize(stream) == cudaSuccess);
      scan.Check(pr, step.tokens);
    }
    // Misses: no guess, too high, too low (more than the candidate buffer holds); "take all"
    // (300 tokens < c) counts neither; the five other replays hold. Sampled, the buffer's
    // guess is not read: the eight replays that choose all hold.
    CHECK(guesses.missed() - missed0 == (sample ? 0 : 3 * 9));
    CHECK(guesses.held() - held0 == (sample ? 8 : 5) * 9);
    REQUIRE(cudaGraphExecDestroy(exec) == cudaSuccess);
    REQUIRE(cudaGraphDestroy(graph) == cudaSuccess);
  }
  REQUIRE(cudaStreamDestroy(stream) == cudaSuccess);
}

TEST_CASE("refused shapes name the value") {
  std::string error;
  kernels::ScanSelectArgs args;
  args.num_problems = 1;
  args.n = 10;
  args.c = 5;
  args.words = 3;
  CHECK(kernels::ScanSelect(args, nullptr, &error) != 0);
  CHECK(error.find("words = 3") != std::string::npos);
  CHECK(kernels::BuildScanQueries(nullptr, 96, 64, nullptr, 1, 1, nullptr, nullptr, &error) != 0);
  CHECK(error.find("bits = 96") != std::string::npos);
}

TEST_CASE("timing: 1M tokens, 128 bits") {
  if (!HaveDevice()) {
    MESSAGE("skipped: no CUDA device");
    return;
  }
  // (problems, share, c): 3 kv-heads with one summed query each; a decode step's 9 query heads
  // each with its own query (C / g = 342), without and with a group's scans sharing one read;
  // a prefill chunk's 16 blocks × 3 kv-heads, without and with 8 blocks sharing a read.
  // The last three: the decode step's shape with a guess (held on every timed call: the queries
  // do not change), with norms and without (kiv's speed runs scan without: --no-scan-norms), and
  // without a guess and without norms, to compare; then the guess without norms and without the
  // finish's quick selects (ScanSelectArgs::quick_finish = false), and with a ballot for every
  // 8 rows (ScanSelectArgs::one_vote = false): the A/Bs. Last, the guess sampled from each
  // call's own query (ScanSelectArgs::sample), without norms.
  const uint32_t configs[][8] = {
      {3, 1, 1024, 0, 1, 1, 1, 0}, {9, 1, 1024, 0, 1, 1, 1, 0}, {9, 1, 342, 0, 1, 1, 1, 0},
      {9, 3, 342, 0, 1, 1, 1, 0},  {48, 1, 1024, 0, 1, 1, 1, 0}, {48, 8, 1024, 0, 1, 1, 1, 0},
      {9, 3, 342, 1, 1, 1, 1, 0},  {9, 3, 342, 1, 0, 1, 1, 0},  {9, 3, 342, 0, 0, 1, 1, 0},
      {9, 3, 342, 1, 0, 0, 1, 0},  {9, 3, 342, 1, 0, 1, 0, 0},  {9, 3, 342, 1, 0, 1, 1, 1}};
  // KIV_SCAN_TIMING_CONFIGS=3,6 runs only those (tools/gpu/scan_profile.sh, to profile a few).
  const char* only = std::getenv("KIV_SCAN_TIMING_CONFIGS");
  int index = -1;
  for (const auto& [count, share, c, guess, with_norms, quick, one_vote, sample] : configs) {
    ++index;
    if (only && ("," + std::string(only) + ",").find("," + std::to_string(index) + ",") ==
                    std::string::npos)
      continue;
    const uint32_t n = 1u << 20, iterations = 50;
    Problems pr = MakeProblems(128, n, count, Data::kRandom, count);
    DeviceArray<uint64_t> sigs(pr.sigs);
    DeviceArray<float> norms(pr.norms), scores(size_t{count} * n);
    DeviceArray<uint8_t> blobs(pr.blobs);
    DeviceArray<uint32_t> selected(size_t{count} * c), counts(count);
    std::vector<kernels::ScanProblem> problems(count);
    for (size_t p = 0; p < count; ++p)
      problems[p] = {sigs.get() + p / share * share * n * 2,
                     with_norms ? norms.get() + p / share * share * n : nullptr,
                     blobs.get() + p * kernels::ScanQueryBytes(128)};
    DeviceArray<unsigned char> workspace(kernels::ScanSelectWorkspaceBytes(count, n));
    kernels::ScanSelectArgs args;
    args.problems = problems.data();
    args.num_problems = count;
    args.n = n;
    args.words = 2;
    args.c = c;
    args.share = share;
    args.scores = scores.get();
    args.selected = selected.get();
    args.counts = counts.get();
    args.workspace = workspace.get();
    args.workspace_bytes = kernels::ScanSelectWorkspaceBytes(count, n);
    args.quick_finish = quick != 0;
    args.one_vote = one_vote != 0;
    args.sample = sample != 0;
    Guesses guesses(count);
    if (guess) {
      args.guess = guesses.values.get();
      args.guess_counts = guesses.counts.get();
    }
    for (int i = 0; i < 5; ++i) REQUIRE(kernels::ScanSelect(args, nullptr) == 0);
    cudaEvent_t start, stop;
    REQUIRE(cudaEventCreate(&start) == cudaSuccess);
    REQUIRE(cudaEventCreate(&stop) == cudaSuccess);
    REQUIRE(cudaEventRecord(start) == cudaSuccess);
    for (uint32_t i = 0; i < iterations; ++i) REQUIRE(kernels::ScanSelect(args, nullptr) == 0);
    REQUIRE(cudaEventRecord(stop) == cudaSuccess);
    REQUIRE(cudaEventSynchronize(stop) == cudaSuccess);
    float ms = 0;
    REQUIRE(cudaEventElapsedTime(&ms, start, stop) == cudaSuccess);
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    const double us = double(ms) * 1000.0 / iterations;
    const double read_bytes =  // signatures (+ norms), once
        double(count / share) * n * (16 + (with_norms ? 4 : 0));
    MESSAGE("ScanSelect n = 1M, P = " << count << ", share " << share << ", 128 bits, c = " << c
                                      << std::string(guess ? ", guessing" : "")
                                      << std::string(with_norms ? "" : ", no norms")
                                      << std::string(quick ? "" : ", slow finish")
                                      << std::string(one_vote ? "" : ", a vote every 8 rows")
                                      << std::string(sample ? ", sampled" : "")
                                      << ": " << us
                                      << " us per call, " << read_bytes / (us * 1e3)
                                      << " GB/s of signatures + norms");
    if (guess) {
      MESSAGE("  guesses held " << guesses.held() << ", missed " << guesses.missed());
      CHECK(guesses.missed() == (sample ? 0 : count));  // the first call's only, unsampled
    }
  }
}
