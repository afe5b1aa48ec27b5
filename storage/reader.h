// Reads an archive through mmap: the committed prefix only, addressed in O(1).
//
// Open validates the header and every commit; a torn tail after the last commit is ignored and
// damage before it is an error. Many readers may open one file, also while its writer appends;
// each sees the committed prefix of the moment it opened (or last called Refresh).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "storage/checkpoint.h"
#include "storage/mapped_file.h"
#include "storage/scan.h"
#include "storage/status.h"

namespace kiv {

// One (segment, layer, kv-head)'s signatures: token_count signatures of signature_bytes each,
// contiguous, for tokens [first_token, first_token + token_count).
struct SignatureRun {
  const uint8_t* data = nullptr;
  uint64_t first_token = 0;
  uint32_t token_count = 0;
};

class ArchiveReader {
 public:
  static Result<std::unique_ptr<ArchiveReader>> Open(const std::string& path);
  ArchiveReader(const ArchiveReader&) = delete;
  ArchiveReader& operator=(const ArchiveReader&) = delete;

  // Maps what has been appended since and picks up new commits.
  Status Refresh();

  const ArchiveSpec& spec() const { return scan_.spec; }
  const ScanResult& scan() const { return scan_; }
  uint64_t token_count() const { return scan_.committed_tokens; }
  size_t segment_count() const { return scan_.segments.size(); }
  const SegmentInfo& segment(size_t i) const { return scan_.segments[i]; }
  size_t SegmentOf(uint64_t token) const { return segment_of_token_[token]; }

  // The record_bytes() of token `token`, layer `layer`, kv-head `head`. Token < token_count().
  const uint8_t* Record(uint64_t token, uint32_t layer, uint32_t head) const;
  const uint8_t* Signature(uint64_t token, uint32_t layer, uint32_t head) const;
  SignatureRun Signatures(size_t segment, uint32_t layer, uint32_t head) const;
  uint32_t TokenId(uint64_t token) const;
  uint32_t Position(uint64_t token) const;

  // The hot tier stored by the last commit (empty for the creating commit).
  Result<HotCheckpoint> LoadCheckpoint() const;
  Result<HotCheckpoint> LoadCheckpoint(const CommitInfo& commit) const;

  const uint8_t* data() const { return file_.data(); }
  uint64_t mapped_bytes() const { return file_.size(); }

 private:
  ArchiveReader() = default;
  void IndexTokens();

  MappedFile file_;
  ScanResult scan_;
  std::vector<uint32_t> segment_of_token_;  // [token_count] index into scan_.segments
};

}  // namespace kiv
