// kill -9 at random moments while a child process appends and commits; after each kill the
// archive must open, hold every token the child had acknowledged as committed (byte-exact), take
// a writer's recovery, and verify clean. Shared by crash_test (CI, a few hundred trials) and
// kiv_crash_soak (thousands, JSON out).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kiv::test {

struct CrashOptions {
  std::string dir;                 // where the archives go
  uint64_t trials = 200;
  uint64_t seed = 1;               // of the parent's kill timing and the children's segment sizes
  uint32_t kill_after_us_max = 15000;  // the parent waits 0..this before SIGKILL
  uint32_t kill_from_fork_every = 8;   // every 8th wait counts from the fork, the rest from the
                                       // moment the child has its archive open
  uint32_t fresh_every = 25;       // start a new archive every this many trials (keeps it small)
  uint32_t segments_per_trial_max = 400;  // a child stops appending after this many, then waits
  bool verbose = false;            // one line per trial on stderr
};

struct CrashResult {
  uint64_t trials = 0;
  uint64_t losses = 0;            // trials where any check below failed
  uint64_t acked_commits = 0;     // commits the children acknowledged, over all trials
  uint64_t tokens_max = 0;        // the largest archive reached, in tokens
  uint64_t bytes_max = 0;         // and in bytes
  uint64_t torn_tails = 0;        // trials whose kill left an uncommitted tail to drop
  uint64_t unacked_gain = 0;      // trials where more was committed than acknowledged (fine)
  uint64_t children_finished = 0; // children that reached segments_per_trial_max before the kill
  std::vector<std::string> failures;  // the first few, for people
};

// Runs the trials. Returns the counts; never throws, never aborts on a loss.
CrashResult RunCrashTrials(const CrashOptions& options);

}  // namespace kiv::test
