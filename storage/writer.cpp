#include "storage/writer.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>

#include "storage/mapped_file.h"
#include "storage/scan.h"

namespace kiv {
namespace {

std::string Str(uint64_t v) { return std::to_string(v); }

// A writer killed a moment ago still holds its lock for a few milliseconds after its parent's
// waitpid returns (the kernel tears its io_uring down, and the writes in flight hold the file,
// asynchronously), so a held lock is retried every millisecond for up to `wait_ms`.
Status LockForWriting(int fd, const std::string& path, uint32_t wait_ms) {
  int err = 0;
  for (uint32_t tries = 0; tries <= wait_ms; ++tries) {
    if (::flock(fd, LOCK_EX | LOCK_NB) == 0) return Status::Ok();
    err = errno;
    if (err != EWOULDBLOCK && err != EINTR) break;
    ::usleep(1000);
  }
  if (err == EWOULDBLOCK)
    return Status::Locked("'" + path + "' is open for writing elsewhere (one writer at a time; "
                          "readers need no lock)");
  return Status::FromErrno(err, "cannot lock '" + path + "'");
}

// Makes the file's name durable: fsync of the directory that holds it.
Status SyncParentDirectory(const std::string& path) {
  std::filesystem::path dir = std::filesystem::path(path).parent_path();
  if (dir.empty()) dir = ".";
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return Status::FromErrno(errno, "cannot open directory '" + dir.string() + "'");
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) return Status::FromErrno(err, "fsync of directory '" + dir.string() + "'");
  return Status::Ok();
}

HotCheckpoint EmptyCheckpoint(const ArchiveSpec& spec) {
  HotCheckpoint cp;
  cp.num_layers = spec.model.num_layers;
  cp.num_kv_heads = spec.model.num_kv_heads;
  cp.head_dim = spec.model.head_dim;
  return cp;
}

std::vector<uint8_t> BlockBytes(uint64_t body_bytes) {
  return std::vector<uint8_t>(format::kBlockHeaderBytes + body_bytes, 0);
}

// Fills in the header of a block at file offset `offset` whose body is already in `block`.
void SealHeader(std::vector<uint8_t>* block, uint64_t offset, format::BlockHeader h) {
  h.header_checksum = format::Checksum(&h, format::kBlockHeaderChecksummed, offset);
  format::Store(block->data(), h);
}

}  // namespace

Result<std::unique_ptr<ArchiveWriter>> ArchiveWriter::Create(const std::string& path,
                                                             const ArchiveSpec& spec,
                                                             const WriterOptions& options) {
  KIV_RETURN_IF_ERROR(spec.Validate());
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) {
    if (errno == EEXIST)
      return Status::InvalidArgument("'" + path + "' already exists; open it to append, or "
                                     "remove it first");
    return Status::FromErrno(errno, "cannot create '" + path + "'");
  }
  std::unique_ptr<ArchiveWriter> w(new ArchiveWriter());
  w->path_ = path;
  w->spec_ = spec;
  auto created = [&]() -> Status {
    KIV_RETURN_IF_ERROR(LockForWriting(fd, path, options.lock_wait_ms));
    auto file = UringFile::Make(fd, path, options.io);
    if (!file.ok()) return file.status();  // fd is closed below
    w->file_ = std::move(file.value());
    std::vector<uint8_t> header = EncodeHeader(spec);
    w->end_offset_ = header.size();
    w->committed_end_ = header.size();
    KIV_RETURN_IF_ERROR(w->file_->Write(0, std::move(header)));
    KIV_RETURN_IF_ERROR(w->Commit(EmptyCheckpoint(spec)));
    return SyncParentDirectory(path);
  }();
  if (!created.ok()) {
    if (!w->file_) ::close(fd);
    w.reset();
    ::unlink(path.c_str());  // a half-made archive is of no use to anyone
    return created;
  }
  return w;
}

Result<std::unique_ptr<ArchiveWriter>> ArchiveWriter::Open(const std::string& path,
                                                           const WriterOptions& options,
                                                           const ModelFingerprint* expect) {
  auto mapped = MappedFile::Open(path);  // clear sentences for missing, directory, empty
  if (!mapped.ok()) return mapped.status();
  auto scan = ScanArchive(mapped->data(), mapped->size());
  if (!scan.ok()) return scan.status();
  const auto header = format::Load<format::FileHeader>(mapped->data());
  if (header.min_write_version > format::kFormatVersion)
    return Status::VersionTooNew("'" + path + "' may be read but not appended to by this kiv "
                                 "(it needs writer version " + Str(header.min_write_version) +
                                 ", this build is " + Str(format::kFormatVersion) + ")");
  if (expect) KIV_RETURN_IF_ERROR(CheckSameModel(scan->spec.model, *expect));

  const int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) return Status::FromErrno(errno, "cannot open '" + path + "' for writing");
  if (Status s = LockForWriting(fd, path, options.lock_wait_ms); !s.ok()) {
    ::close(fd);
    return s;
  }
  // The scan above ran before the lock; a writer may have committed since. Scan again.
  if (Status s = mapped->Remap(); !s.ok()) {
    ::close(fd);
    return s;
  }
  scan = ScanArchive(mapped->data(), mapped->size());
  if (!scan.ok()) {
    ::close(fd);
    return scan.status();
  }
  std::unique_ptr<ArchiveWriter> w(new ArchiveWriter());
  w->path_ = path;
  w->spec_ = scan->spec;
  if (scan->tail_bytes) {  // recovery: cut the uncommitted tail before appending after it
    if (::ftruncate(fd, static_cast<off_t>(scan->committed_end)) != 0 || ::fsync(fd) != 0) {
      const int err = errno;
      ::close(fd);
      return Status::FromErrno(err, "cannot cut the uncommitted tail of '" + path + "'");
    }
    w->dropped_tail_bytes_ = scan->tail_bytes;
  }
  auto file = UringFile::Make(fd, path, options.io);
  if (!file.ok()) {
    ::close(fd);
    return file.status();
  }
  w->file_ = std::move(file.value());
  w->end_offset_ = w->committed_end_ = scan->committed_end;
  w->next_sequence_ = scan->next_sequence;
  w->token_count_ = w->committed_tokens_ = scan->committed_tokens;
  w->segment_count_ = scan->segments.size();
  w->commit_index_ = scan->commits.size();
  w->last_commit_offset_ = scan->commits.back().offset;
  return w;
}

ArchiveWriter::~ArchiveWriter() = default;

Status ArchiveWriter::Fail(Status s) {
  if (!failure_.ok()) return failure_;
  failure_ = s;
  if (file_) {
    file_->Drain();  // its error is the one we already hold
    // Best effort: leave the file as it was at its last commit.
    if (::ftruncate(file_->fd(), static_cast<off_t>(committed_end_)) == 0) ::fsync(file_->fd());
  }
  return failure_;
}

Status ArchiveWriter::Append(const SegmentView& v) {
  if (!failure_.ok()) return failure_;
  if (!file_) return Status::InvalidArgument("the writer for '" + path_ + "' is closed");
  if (v.token_count == 0 || v.token_count > format::kMaxSegmentTokens)
    return Status::InvalidArgument("a segment holds 1.." + Str(format::kMaxSegmentTokens) +
                                   " tokens, got " + Str(v.token_count));
  if (!v.records || !v.signatures || !v.token_ids || !v.positions)
    return Status::InvalidArgument("a segment needs records, signatures, token ids and positions");
  const SegmentLayout l = SegmentLayout::For(spec_, v.token_count);
  const uint64_t offset = end_offset_;
  const uint64_t body = offset + format::kBlockHeaderBytes;
  std::vector<uint8_t> block = BlockBytes(l.body_bytes);
  uint8_t* b = block.data() + format::kBlockHeaderBytes;
  const uint32_t layers = spec_.model.num_layers;
  std::memcpy(b + l.records_offset, v.records, layers * l.layer_records_bytes);
  std::memcpy(b + l.signatures_offset, v.signatures, layers * l.layer_signatures_bytes);
  std::memcpy(b + l.token_ids_offset, v.token_ids, 4ull * v.token_count);
  std::memcpy(b + l.positions_offset, v.positions, 4ull * v.token_count);
  auto seal = [&](uint32_t entry, uint64_t at, uint64_t bytes) {
    format::Store(b + l.trailer_offset + 8ull * entry, format::Checksum(b + at, bytes, body + at));
  };
  for (uint32_t layer = 0; layer < layers; ++layer) {
    seal(layer, l.records_offset + layer * l.layer_records_bytes, l.layer_records_bytes);
    seal(layers + layer, l.signatures_offset + layer * l.layer_signatures_bytes,
         l.layer_signatures_bytes);
  }
  seal(2 * layers, l.token_ids_offset, l.positions_offset - l.token_ids_offset);
  seal(2 * layers + 1, l.positions_offset, l.trailer_offset - l.positions_offset);

  format::BlockHeader h{};
  h.magic = format::kSegmentMagic;
  h.body_bytes = l.body_bytes;
  h.sequence = next_sequence_;
  h.first_token = token_count_;
  h.token_count = v.token_count;
  h.body_checksum = format::Checksum(b + l.trailer_offset, 8ull * l.trailer_entries,
                                     body + l.trailer_offset);
  SealHeader(&block, offset, h);
  if (Status s = file_->Write(offset, std::move(block)); !s.ok()) return Fail(s);
  end_offset_ = body + l.body_bytes;
  ++next_sequence_;
  token_count_ += v.token_count;
  ++segment_count_;
  return Status::Ok();
}

Status ArchiveWriter::Commit(const HotCheckpoint& cp) {
  if (!failure_.ok()) return failure_;
  if (!file_) return Status::InvalidArgument("the writer for '" + path_ + "' is closed");
  if (cp.num_layers != spec_.model.num_layers || cp.num_kv_heads != spec_.model.num_kv_heads ||
      cp.head_dim != spec_.model.head_dim)
    return Status::InvalidArgument("the checkpoint's shape [" + Str(cp.num_layers) + ", " +
                                   Str(cp.num_kv_heads) + ", " + Str(cp.head_dim) +
                                   "] is not the archive's");
  auto stored = CompressCheckpoint(cp);
  if (!stored.ok()) return stored.status();
  // First everything the commit covers is durable, then the commit record, then it too.
  if (Status s = file_->Sync(); !s.ok()) return Fail(s);

  const uint64_t offset = end_offset_;
  const uint64_t body_bytes = format::AlignUp(format::kCommitBodyBytes + stored->bytes.size());
  std::vector<uint8_t> block = BlockBytes(body_bytes);
  uint8_t* b = block.data() + format::kBlockHeaderBytes;
  format::CommitBody c{};
  c.committed_tokens = token_count_;
  c.segment_count = segment_count_;
  c.prev_commit_offset = last_commit_offset_;
  c.commit_index = commit_index_;
  c.checkpoint_codec = stored->codec;
  c.checkpoint_tokens = cp.token_count();
  c.checkpoint_raw_bytes = stored->raw_bytes;
  c.checkpoint_stored_bytes = stored->bytes.size();
  format::Store(b, c);
  std::memcpy(b + format::kCommitBodyBytes, stored->bytes.data(), stored->bytes.size());

  format::BlockHeader h{};
  h.magic = format::kCommitMagic;
  h.body_bytes = body_bytes;
  h.sequence = next_sequence_;
  h.first_token = token_count_;
  h.body_checksum = format::Checksum(b, body_bytes, offset + format::kBlockHeaderBytes);
  SealHeader(&block, offset, h);
  if (Status s = file_->Write(offset, std::move(block)); !s.ok()) return Fail(s);
  if (Status s = file_->Sync(); !s.ok()) return Fail(s);

  end_offset_ = committed_end_ = offset + format::kBlockHeaderBytes + body_bytes;
  ++next_sequence_;
  committed_tokens_ = token_count_;
  last_commit_offset_ = offset;
  ++commit_index_;
  return Status::Ok();
}

Status ArchiveWriter::Flush() {
  if (!failure_.ok()) return failure_;
  if (!file_) return Status::InvalidArgument("the writer for '" + path_ + "' is closed");
  if (Status s = file_->Drain(); !s.ok()) return Fail(s);
  return Status::Ok();
}

Status ArchiveWriter::Close() {
  if (!file_) return failure_;
  Status s = file_->Drain();
  file_.reset();  // closes the descriptor, which releases the lock
  return failure_.ok() ? s : failure_;
}

}  // namespace kiv
