// Appends segments and commits to an archive through io_uring. One writer per archive, enforced
// with flock(2); readers need no lock.
//
// Durability: Append only queues writes. Commit waits for them, fsyncs, writes the commit record
// (carrying the hot-tier checkpoint) and fsyncs again; only a returned-ok Commit is durable. After
// any I/O error the writer is failed: it cuts the file back to its last commit (best effort) and
// answers every later call with the first error. See docs/fault_model.md.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "storage/checkpoint.h"
#include "storage/spec.h"
#include "storage/status.h"
#include "storage/uring_file.h"

namespace kiv {

// One segment's worth of tokens, as the caller holds them. Copied by Append.
struct SegmentView {
  uint32_t token_count = 0;
  const uint8_t* records = nullptr;     // [L][H_kv][n][record_bytes]
  const uint8_t* signatures = nullptr;  // [L][H_kv][n][signature_bytes]
  const uint32_t* token_ids = nullptr;  // [n]
  const uint32_t* positions = nullptr;  // [n]
};

struct WriterOptions {
  UringOptions io;
  // How long to wait for the lock of a writer that is going away (a killed process keeps its
  // lock for a few milliseconds); a live second writer is refused after this.
  uint32_t lock_wait_ms = 1000;
};

class ArchiveWriter {
 public:
  // Creates a new archive (refuses to overwrite one) and commits it empty, so it opens at once.
  static Result<std::unique_ptr<ArchiveWriter>> Create(const std::string& path,
                                                       const ArchiveSpec& spec,
                                                       const WriterOptions& options = {});
  // Opens an existing archive to append. A torn tail after the last commit is cut off (and
  // counted in dropped_tail_bytes). When `expect` is given, a different model is refused.
  static Result<std::unique_ptr<ArchiveWriter>> Open(const std::string& path,
                                                     const WriterOptions& options = {},
                                                     const ModelFingerprint* expect = nullptr);
  ~ArchiveWriter();
  ArchiveWriter(const ArchiveWriter&) = delete;
  ArchiveWriter& operator=(const ArchiveWriter&) = delete;

  Status Append(const SegmentView& segment);
  Status Commit(const HotCheckpoint& checkpoint);
  // Waits until every appended byte has reached the file (the page cache), without making it
  // durable. For measuring and for readers in the same process; Commit is what persists.
  Status Flush();
  // Waits for queued writes and releases the lock. Does not commit: what was appended since the
  // last commit is a tail the next open drops.
  Status Close();

  const ArchiveSpec& spec() const { return spec_; }
  const std::string& path() const { return path_; }
  uint64_t token_count() const { return token_count_; }  // appended, committed or not
  uint64_t committed_tokens() const { return committed_tokens_; }
  uint64_t file_bytes() const { return end_offset_; }
  uint64_t commit_count() const { return commit_index_; }
  uint64_t dropped_tail_bytes() const { return dropped_tail_bytes_; }
  const Status& failure() const { return failure_; }

 private:
  ArchiveWriter() = default;
  Status Fail(Status s);  // records the first failure and cuts the file back
  Status WriteCommit(const HotCheckpoint& checkpoint);

  std::string path_;
  ArchiveSpec spec_;
  std::unique_ptr<UringFile> file_;
  uint64_t end_offset_ = 0;        // where the next block goes
  uint64_t committed_end_ = 0;     // the byte after the last durable commit
  uint64_t next_sequence_ = 0;
  uint64_t token_count_ = 0;
  uint64_t committed_tokens_ = 0;
  uint64_t segment_count_ = 0;
  uint64_t commit_index_ = 0;      // commits so far
  uint64_t last_commit_offset_ = format::kNoCommit;
  uint64_t dropped_tail_bytes_ = 0;
  Status failure_;
};

}  // namespace kiv
