// kill -9 during writes loses nothing committed. KIV_CRASH_TRIALS (default 200) and
// KIV_CRASH_SEED (default 1) override the run; kiv_crash_soak runs thousands.
#include <doctest/doctest.h>

#include <cstdio>

#include "tests/storage/crash_harness.h"
#include "tests/storage/test_util.h"

namespace kiv {
namespace {

TEST_CASE("kill -9 at random moments loses no committed token") {
  test::TempDir dir;
  test::CrashOptions o;
  o.dir = dir.path();
  o.trials = test::EnvU64("KIV_CRASH_TRIALS", 200);
  o.seed = test::EnvU64("KIV_CRASH_SEED", 1);
  o.verbose = test::EnvU64("KIV_CRASH_VERBOSE", 0) != 0;
  const test::CrashResult r = test::RunCrashTrials(o);
  std::printf("crash: %llu trials, %llu losses (seed %llu; %llu acknowledged commits, %llu torn "
              "tails dropped, largest archive %llu tokens / %llu bytes, %llu children finished "
              "before the kill)\n",
              static_cast<unsigned long long>(r.trials),
              static_cast<unsigned long long>(r.losses),
              static_cast<unsigned long long>(o.seed),
              static_cast<unsigned long long>(r.acked_commits),
              static_cast<unsigned long long>(r.torn_tails),
              static_cast<unsigned long long>(r.tokens_max),
              static_cast<unsigned long long>(r.bytes_max),
              static_cast<unsigned long long>(r.children_finished));
  for (const std::string& f : r.failures) MESSAGE(f);
  CHECK(r.trials == o.trials);
  // The kills must land while the children are committing, or the test proves nothing.
  CHECK(r.acked_commits > 0);
  REQUIRE(r.losses == 0);
}

}  // namespace
}  // namespace kiv
