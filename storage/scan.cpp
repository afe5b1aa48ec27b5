#include "storage/scan.h"

#include <string>

namespace kiv {
namespace {

std::string Str(uint64_t v) { return std::to_string(v); }

// What the walk knows when it reaches a block.
struct WalkState {
  uint64_t sequence = 0;
  uint64_t tokens = 0;            // appended, committed or not
  uint64_t segments = 0;          // appended, committed or not
  uint64_t last_commit = format::kNoCommit;
  uint64_t commits = 0;
};

// One block at `offset`, checked against the state; `reason` is empty when it is whole.
struct Block {
  std::string reason;
  format::BlockHeader header{};
  uint64_t end = 0;  // the byte after the block
  SegmentInfo segment;
  CommitInfo commit;
};

std::string CheckSegment(const uint8_t* data, const ArchiveSpec& spec, const WalkState& st,
                         uint64_t offset, Block* b) {
  const format::BlockHeader& h = b->header;
  if (h.token_count == 0 || h.token_count > format::kMaxSegmentTokens)
    return "segment holds " + Str(h.token_count) + " tokens, outside 1.." +
           Str(format::kMaxSegmentTokens);
  if (h.first_token != st.tokens)
    return "segment starts at token " + Str(h.first_token) + ", expected " + Str(st.tokens);
  SegmentInfo& s = b->segment;
  s.layout = SegmentLayout::For(spec, h.token_count);
  if (h.body_bytes != s.layout.body_bytes)
    return "segment body is " + Str(h.body_bytes) + " bytes, its shape needs " +
           Str(s.layout.body_bytes);
  s.offset = offset;
  s.sequence = h.sequence;
  s.first_token = h.first_token;
  s.trailer_checksum = h.body_checksum;
  const uint64_t trailer = s.body_offset() + s.layout.trailer_offset;
  if (format::Checksum(data + trailer, 8ull * s.layout.trailer_entries, trailer) != h.body_checksum)
    return "segment trailer at offset " + Str(trailer) + " fails its checksum";
  return "";
}

std::string CheckCommit(const uint8_t* data, const WalkState& st, uint64_t offset, Block* b) {
  const format::BlockHeader& h = b->header;
  const uint64_t body_off = offset + format::kBlockHeaderBytes;
  if (h.body_bytes < format::kCommitBodyBytes) return "commit body is too short";
  if (format::Checksum(data + body_off, h.body_bytes, body_off) != h.body_checksum)
    return "commit body fails its checksum";
  const auto c = format::Load<format::CommitBody>(data + body_off);
  if (c.committed_tokens != st.tokens || h.first_token != st.tokens)
    return "commit covers " + Str(c.committed_tokens) + " tokens, the segments before it hold " +
           Str(st.tokens);
  if (c.segment_count != st.segments) return "commit counts the wrong number of segments";
  if (c.prev_commit_offset != st.last_commit) return "commit does not point to the one before";
  if (c.commit_index != st.commits) return "commit has index " + Str(c.commit_index) +
                                           ", expected " + Str(st.commits);
  if (format::AlignUp(format::kCommitBodyBytes + c.checkpoint_stored_bytes) != h.body_bytes)
    return "commit checkpoint size disagrees with the commit body";
  CommitInfo& ci = b->commit;
  ci.offset = offset;
  ci.end_offset = b->end;
  ci.sequence = h.sequence;
  ci.index = c.commit_index;
  ci.committed_tokens = c.committed_tokens;
  ci.segment_count = c.segment_count;
  ci.checkpoint_codec = c.checkpoint_codec;
  ci.checkpoint_tokens = c.checkpoint_tokens;
  ci.checkpoint_raw_bytes = c.checkpoint_raw_bytes;
  ci.checkpoint_stored_bytes = c.checkpoint_stored_bytes;
  return "";
}

Block CheckBlock(const uint8_t* data, uint64_t size, const ArchiveSpec& spec,
                 const WalkState& st, uint64_t offset) {
  Block b;
  if (size - offset < format::kBlockHeaderBytes) {
    b.reason = "a block header is cut short (" + Str(size - offset) + " bytes)";
    return b;
  }
  b.header = format::Load<format::BlockHeader>(data + offset);
  const format::BlockHeader& h = b.header;
  if (h.magic != format::kSegmentMagic && h.magic != format::kCommitMagic) {
    b.reason = "no block starts here";
    return b;
  }
  if (format::Checksum(data + offset, format::kBlockHeaderChecksummed, offset) != h.header_checksum) {
    b.reason = "block header fails its checksum";
    return b;
  }
  if (h.sequence != st.sequence) {
    b.reason = "block has sequence " + Str(h.sequence) + ", expected " + Str(st.sequence);
    return b;
  }
  const uint64_t room = size - offset - format::kBlockHeaderBytes;
  if (h.body_bytes % format::kAlign || h.body_bytes > room) {
    b.reason = "block body of " + Str(h.body_bytes) + " bytes is cut short (" + Str(room) +
               " bytes left)";
    return b;
  }
  b.end = offset + format::kBlockHeaderBytes + h.body_bytes;
  b.reason = h.magic == format::kSegmentMagic ? CheckSegment(data, spec, st, offset, &b)
                                              : CheckCommit(data, st, offset, &b);
  return b;
}

// A whole, valid commit block anywhere at or after `from`, judged on its own (its checksums are
// seeded with its offset, so bytes that merely look like one do not pass).
bool ValidCommitAfter(const uint8_t* data, uint64_t size, uint64_t from, uint64_t* found) {
  for (uint64_t off = format::AlignUp(from); off + format::kBlockHeaderBytes <= size;
       off += format::kAlign) {
    if (format::Load<uint32_t>(data + off) != format::kCommitMagic) continue;
    const auto h = format::Load<format::BlockHeader>(data + off);
    if (format::Checksum(data + off, format::kBlockHeaderChecksummed, off) != h.header_checksum)
      continue;
    const uint64_t body = off + format::kBlockHeaderBytes;
    if (h.body_bytes > size - body) continue;
    if (format::Checksum(data + body, h.body_bytes, body) != h.body_checksum) continue;
    *found = off;
    return true;
  }
  return false;
}

}  // namespace

Result<ScanResult> WalkArchive(const uint8_t* data, uint64_t size) {
  ScanResult r;
  r.file_bytes = size;
  auto spec = DecodeHeader(data, size, &r.header_bytes);
  if (!spec.ok()) return spec.status();
  r.spec = std::move(spec.value());

  WalkState st;
  std::vector<SegmentInfo> uncommitted;
  uint64_t off = r.header_bytes;
  std::string stop;
  while (off < size) {
    Block b = CheckBlock(data, size, r.spec, st, off);
    if (!b.reason.empty()) {
      stop = b.reason;
      break;
    }
    if (b.header.magic == format::kSegmentMagic) {
      uncommitted.push_back(b.segment);
      st.tokens += b.header.token_count;
      ++st.segments;
    } else {
      r.segments.insert(r.segments.end(), uncommitted.begin(), uncommitted.end());
      uncommitted.clear();
      r.commits.push_back(b.commit);
      r.committed_end = b.end;
      r.committed_tokens = st.tokens;
      st.last_commit = off;
      ++st.commits;
      r.next_sequence = st.sequence + 1;
    }
    ++st.sequence;
    off = b.end;
  }
  if (!stop.empty()) {
    uint64_t later = 0;
    if (ValidCommitAfter(data, size, off + 1, &later)) {
      r.damaged = true;
      r.damage_offset = off;
      r.damage_what = "block at offset " + Str(off) + ": " + stop +
                      "; a valid commit follows at offset " + Str(later) +
                      ", so this is damage to committed data, not a torn write";
    }
  }
  if (r.commits.empty() && !r.damaged) {
    r.damaged = true;
    r.damage_offset = off;
    r.damage_what = "no complete commit (the archive's creation did not finish)" +
                    (stop.empty() ? std::string() : ": at offset " + Str(off) + ", " + stop);
  }
  r.tail_bytes = size - (r.commits.empty() ? r.header_bytes : r.committed_end);
  if (r.tail_bytes) {
    r.tail_reason = stop.empty() ? "segments after the last commit were never committed"
                                 : "at offset " + Str(off) + ", " + stop;
  }
  return r;
}

Result<ScanResult> ScanArchive(const uint8_t* data, uint64_t size) {
  auto r = WalkArchive(data, size);
  if (r.ok() && r->damaged) return Status::Corruption(r->damage_what);
  return r;
}

}  // namespace kiv
