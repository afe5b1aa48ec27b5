// The walk over an archive's blocks that the reader, the writer's recovery and verify share.
// It decides where the committed prefix ends, and whether what follows is a torn tail (ignored)
// or damage before a commit (Corruption).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "storage/spec.h"
#include "storage/status.h"

namespace kiv {

struct SegmentInfo {
  uint64_t offset = 0;  // of its block header
  uint64_t sequence = 0;
  uint64_t first_token = 0;
  uint64_t body_offset() const { return offset + format::kBlockHeaderBytes; }
  uint64_t trailer_checksum = 0;  // from the block header
  SegmentLayout layout;           // layout.token_count is the segment's token count
};

struct CommitInfo {
  uint64_t offset = 0;  // of its block header
  uint64_t end_offset = 0;  // the byte after the commit block
  uint64_t sequence = 0;
  uint64_t index = 0;
  uint64_t committed_tokens = 0;
  uint64_t segment_count = 0;
  uint32_t checkpoint_codec = 0;
  uint32_t checkpoint_tokens = 0;
  uint64_t checkpoint_raw_bytes = 0;
  uint64_t checkpoint_stored_bytes = 0;
  uint64_t checkpoint_offset() const {
    return offset + format::kBlockHeaderBytes + format::kCommitBodyBytes;
  }
};

struct ScanResult {
  ArchiveSpec spec;
  uint64_t header_bytes = 0;
  uint64_t file_bytes = 0;
  std::vector<SegmentInfo> segments;  // committed ones only, in token order
  std::vector<CommitInfo> commits;    // every valid commit, in order
  uint64_t committed_end = 0;         // the byte after the last commit
  uint64_t committed_tokens = 0;
  uint64_t next_sequence = 0;         // the sequence a writer continuing here uses next
  // Bytes after the last commit: a write that did not finish its commit (or a damaged last
  // commit, which looks the same). Never served; a writer that opens the file drops them.
  uint64_t tail_bytes = 0;
  std::string tail_reason;  // why the walk stopped there, for people
  // Set by WalkArchive when a block before a valid commit is damaged (ScanArchive turns it into
  // a Corruption status). The committed prefix above then ends before the damage.
  bool damaged = false;
  uint64_t damage_offset = 0;
  std::string damage_what;
};

// Walks the archive in data[0, size). Validates the header, every block header and every commit
// body; segment bodies are left to VerifySegments (they are most of the file, and reading them
// all would make opening a large archive slow).
//   NotAnArchive / VersionTooNew / Corruption(header) for a bad header;
//   Corruption when a block before the last valid commit is damaged;
//   Corruption when no commit is found at all (creation never finished).
Result<ScanResult> ScanArchive(const uint8_t* data, uint64_t size);

// The same walk, but damage after the header is reported in the result (damaged, damage_offset,
// damage_what) rather than as an error, so verify can say where it is. Errors only for the header.
Result<ScanResult> WalkArchive(const uint8_t* data, uint64_t size);

}  // namespace kiv
