#include "storage/verify.h"

#include <string>

#include "storage/mapped_file.h"

namespace kiv {
namespace {

std::string Str(uint64_t v) { return std::to_string(v); }

// Checks one segment's sections against its trailer. Returns false and fills the report at the
// first section that fails.
bool VerifySegment(const uint8_t* data, const ArchiveSpec& spec, const SegmentInfo& s,
                   size_t index, VerifyReport* r) {
  const SegmentLayout& l = s.layout;
  const uint64_t body = s.body_offset();
  const uint64_t trailer = body + l.trailer_offset;
  const uint32_t layers = spec.model.num_layers;
  const std::string where = " in segment " + Str(index) + " (tokens " + Str(s.first_token) +
                            ".." + Str(s.first_token + l.token_count - 1) + ")";
  auto check = [&](uint32_t entry, uint64_t offset, uint64_t bytes, const std::string& what) {
    const uint64_t want = format::Load<uint64_t>(data + trailer + 8ull * entry);
    ++r->checksums_checked;
    r->bytes_checked += bytes;
    if (format::Checksum(data + offset, bytes, offset) == want) return true;
    r->damaged = true;
    r->damage_offset = offset;
    r->damage_what = what + where + ": checksum mismatch";
    return false;
  };
  for (uint32_t layer = 0; layer < layers; ++layer) {
    if (!check(layer, body + l.records_offset + layer * l.layer_records_bytes,
               l.layer_records_bytes, "records of layer " + Str(layer)))
      return false;
  }
  for (uint32_t layer = 0; layer < layers; ++layer) {
    if (!check(layers + layer, body + l.signatures_offset + layer * l.layer_signatures_bytes,
               l.layer_signatures_bytes, "signatures of layer " + Str(layer)))
      return false;
  }
  if (!check(2 * layers, body + l.token_ids_offset, l.positions_offset - l.token_ids_offset,
             "token ids"))
    return false;
  return check(2 * layers + 1, body + l.positions_offset, l.trailer_offset - l.positions_offset,
               "positions");
}

}  // namespace

Result<VerifyReport> VerifyBytes(const uint8_t* data, uint64_t size,
                                 const VerifyProgress& progress) {
  auto walk = WalkArchive(data, size);
  if (!walk.ok()) return walk.status();
  const ScanResult& scan = walk.value();
  VerifyReport r;
  r.file_bytes = size;
  r.committed_tokens = scan.committed_tokens;
  r.segments = scan.segments.size();
  r.commits = scan.commits.size();
  // Header, block headers, trailers and commit bodies were all checked by the walk.
  r.checksums_checked = 2 + 2 * scan.commits.size() + 2 * scan.segments.size();
  r.bytes_checked = scan.header_bytes;
  for (const CommitInfo& c : scan.commits) r.bytes_checked += c.end_offset - c.offset;
  for (const SegmentInfo& s : scan.segments)
    r.bytes_checked += format::kBlockHeaderBytes + 8ull * s.layout.trailer_entries;
  r.tail_bytes = scan.tail_bytes;
  r.tail_reason = scan.tail_reason;
  for (size_t i = 0; i < scan.segments.size(); ++i) {
    // Segments are in file order, so the first failure is the first damaged offset among them;
    // damage the walk found (later in the file) is reported only when the segments are whole.
    if (!VerifySegment(data, scan.spec, scan.segments[i], i, &r)) return r;
    if (progress) progress(scan.segments[i].offset, size);
  }
  if (scan.damaged) {
    r.damaged = true;
    r.damage_offset = scan.damage_offset;
    r.damage_what = scan.damage_what;
  }
  if (progress) progress(size, size);
  return r;
}

Result<VerifyReport> VerifyArchive(const std::string& path, const VerifyProgress& progress) {
  auto file = MappedFile::Open(path);
  if (!file.ok()) return file.status();
  return VerifyBytes(file->data(), file->size(), progress);
}

}  // namespace kiv
