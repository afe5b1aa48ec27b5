#include "storage/reader.h"

#include <cassert>

namespace kiv {

Result<std::unique_ptr<ArchiveReader>> ArchiveReader::Open(const std::string& path) {
  auto file = MappedFile::Open(path);
  if (!file.ok()) return file.status();
  std::unique_ptr<ArchiveReader> r(new ArchiveReader());
  r->file_ = std::move(file.value());
  auto scan = ScanArchive(r->file_.data(), r->file_.size());
  if (!scan.ok()) return Status(scan.status());
  r->scan_ = std::move(scan.value());
  r->IndexTokens();
  return r;
}

Status ArchiveReader::Refresh() {
  KIV_RETURN_IF_ERROR(file_.Remap());
  auto scan = ScanArchive(file_.data(), file_.size());
  if (!scan.ok()) return scan.status();
  if (scan->committed_tokens < scan_.committed_tokens)
    return Status::Corruption("the archive lost committed tokens since it was opened (" +
                              std::to_string(scan_.committed_tokens) + " -> " +
                              std::to_string(scan->committed_tokens) + ")");
  scan_ = std::move(scan.value());
  IndexTokens();
  return Status::Ok();
}

void ArchiveReader::IndexTokens() {
  segment_of_token_.resize(scan_.committed_tokens);
  for (size_t i = 0; i < scan_.segments.size(); ++i) {
    const SegmentInfo& s = scan_.segments[i];
    for (uint32_t t = 0; t < s.layout.token_count; ++t)
      segment_of_token_[s.first_token + t] = static_cast<uint32_t>(i);
  }
}

const uint8_t* ArchiveReader::Record(uint64_t token, uint32_t layer, uint32_t head) const {
  assert(token < token_count() && layer < spec().model.num_layers &&
         head < spec().model.num_kv_heads);
  const SegmentInfo& s = scan_.segments[segment_of_token_[token]];
  const uint64_t n = s.layout.token_count;
  const uint64_t index = (uint64_t{layer} * spec().model.num_kv_heads + head) * n +
                         (token - s.first_token);
  return data() + s.body_offset() + s.layout.records_offset + index * spec().record_bytes();
}

const uint8_t* ArchiveReader::Signature(uint64_t token, uint32_t layer, uint32_t head) const {
  assert(token < token_count());
  const SegmentInfo& s = scan_.segments[segment_of_token_[token]];
  const SignatureRun run = Signatures(segment_of_token_[token], layer, head);
  return run.data + (token - s.first_token) * spec().signature_bytes();
}

SignatureRun ArchiveReader::Signatures(size_t segment, uint32_t layer, uint32_t head) const {
  assert(segment < segment_count() && layer < spec().model.num_layers &&
         head < spec().model.num_kv_heads);
  const SegmentInfo& s = scan_.segments[segment];
  const uint64_t n = s.layout.token_count;
  const uint64_t first = (uint64_t{layer} * spec().model.num_kv_heads + head) * n;
  SignatureRun run;
  run.data = data() + s.body_offset() + s.layout.signatures_offset +
             first * spec().signature_bytes();
  run.first_token = s.first_token;
  run.token_count = s.layout.token_count;
  return run;
}

uint32_t ArchiveReader::TokenId(uint64_t token) const {
  assert(token < token_count());
  const SegmentInfo& s = scan_.segments[segment_of_token_[token]];
  return format::Load<uint32_t>(data() + s.body_offset() + s.layout.token_ids_offset +
                                4 * (token - s.first_token));
}

uint32_t ArchiveReader::Position(uint64_t token) const {
  assert(token < token_count());
  const SegmentInfo& s = scan_.segments[segment_of_token_[token]];
  return format::Load<uint32_t>(data() + s.body_offset() + s.layout.positions_offset +
                                4 * (token - s.first_token));
}

Result<HotCheckpoint> ArchiveReader::LoadCheckpoint() const {
  assert(!scan_.commits.empty());  // ScanArchive refuses an archive without one
  return LoadCheckpoint(scan_.commits.back());
}

Result<HotCheckpoint> ArchiveReader::LoadCheckpoint(const CommitInfo& c) const {
  auto cp = DecompressCheckpoint(c.checkpoint_codec, data() + c.checkpoint_offset(),
                                 c.checkpoint_stored_bytes, c.checkpoint_raw_bytes);
  const std::string where =
      "checkpoint of commit " + std::to_string(c.index) + " at offset " + std::to_string(c.offset);
  if (!cp.ok()) return Status::Corruption(where + ": " + cp.status().message());
  if (cp->token_count() != c.checkpoint_tokens)
    return Status::Corruption(where + " holds " + std::to_string(cp->token_count()) +
                              " tokens, its commit says " + std::to_string(c.checkpoint_tokens));
  return cp;
}

}  // namespace kiv
