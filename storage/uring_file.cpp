#include "storage/uring_file.h"

#include <liburing.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <deque>

namespace kiv {
namespace {

// A write that keeps failing with -EAGAIN/-EINTR or making no progress is given up on after this
// many tries in a row, so no loop here is unbounded.
constexpr uint32_t kRetriesMax = 10000;

std::string Str(uint64_t v) { return std::to_string(v); }

}  // namespace

struct UringFile::Ring {
  io_uring ring{};
  std::deque<std::unique_ptr<Op>> queue;  // ops waiting for a submission slot
};

struct UringFile::Buffer {
  std::vector<uint8_t> bytes;
};

struct UringFile::Op {
  bool is_sync = false;
  std::shared_ptr<Buffer> buffer;  // keeps the bytes alive until the op completes
  uint64_t offset = 0;             // where the remaining bytes go
  const uint8_t* data = nullptr;   // the remaining bytes
  uint32_t length = 0;
  uint32_t chunk_bytes = 0;        // the op's size when queued, for the buffered-bytes bound
  uint32_t retries = 0;
  int sync_result = 1;             // set when a sync op completes
};

Result<std::unique_ptr<UringFile>> UringFile::Make(int fd, std::string path,
                                                   const UringOptions& options) {
  std::unique_ptr<UringFile> f(new UringFile());
  f->fd_ = fd;
  f->path_ = std::move(path);
  f->options_ = options;
  if (f->options_.queue_depth == 0) f->options_.queue_depth = 1;
  if (f->options_.write_bytes_max < 4096) f->options_.write_bytes_max = 4096;
  f->ring_ = std::make_unique<Ring>();
  const int err = io_uring_queue_init(f->options_.queue_depth, &f->ring_->ring, 0);
  if (err < 0) {
    f->ring_.reset();
    f->fd_ = -1;  // the caller still owns it
    return Status::FromErrno(-err, "io_uring is not available (kiv writes archives through it)");
  }
  return f;
}

UringFile::~UringFile() {
  if (ring_) {
    Drain();  // the kernel may still read our buffers: wait for it
    io_uring_queue_exit(&ring_->ring);
  }
  if (fd_ >= 0) ::close(fd_);
}

Status UringFile::Write(uint64_t offset, std::vector<uint8_t> bytes) {
  if (!error_.ok()) return error_;
  auto buffer = std::make_shared<Buffer>();
  buffer->bytes = std::move(bytes);
  const uint8_t* p = buffer->bytes.data();
  uint64_t left = buffer->bytes.size();
  while (left > 0) {
    auto op = std::make_unique<Op>();
    op->buffer = buffer;
    op->offset = offset;
    op->data = p;
    op->length = static_cast<uint32_t>(std::min<uint64_t>(left, options_.write_bytes_max));
    op->chunk_bytes = op->length;
    buffered_bytes_ += op->length;
    offset += op->length;
    p += op->length;
    left -= op->length;
    ring_->queue.push_back(std::move(op));
  }
  KIV_RETURN_IF_ERROR(Pump());
  while (buffered_bytes_ > options_.buffered_bytes_max && in_flight_ > 0) {
    KIV_RETURN_IF_ERROR(ReapOne());
    KIV_RETURN_IF_ERROR(Pump());
  }
  return error_;
}

Status UringFile::Pump() {
  bool submitted = false;
  while (error_.ok() && in_flight_ < options_.queue_depth && !ring_->queue.empty()) {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_->ring);
    if (!sqe) break;  // the submission queue is full until we submit
    Op* op = ring_->queue.front().release();
    ring_->queue.pop_front();
    if (op->is_sync) {
      io_uring_prep_fsync(sqe, fd_, IORING_FSYNC_DATASYNC);
    } else {
      io_uring_prep_write(sqe, fd_, op->data, op->length, op->offset);
    }
    io_uring_sqe_set_data(sqe, op);
    ++in_flight_;
    submitted = true;
  }
  if (submitted) {
    int n;
    do {
      n = io_uring_submit(&ring_->ring);
    } while (n == -EINTR || n == -EAGAIN);
    if (n < 0) error_ = Status::FromErrno(-n, "io_uring submit for '" + path_ + "'");
  }
  return error_;
}

Status UringFile::ReapOne() {
  io_uring_cqe* cqe = nullptr;
  int err;
  do {
    err = io_uring_wait_cqe(&ring_->ring, &cqe);
  } while (err == -EINTR || err == -EAGAIN);
  if (err < 0) {
    error_ = Status::FromErrno(-err, "waiting for io_uring on '" + path_ + "'");
    in_flight_ = 0;  // nothing more can be learned from this ring
    return error_;
  }
  std::unique_ptr<Op> op(static_cast<Op*>(io_uring_cqe_get_data(cqe)));
  int res = cqe->res;
  io_uring_cqe_seen(&ring_->ring, cqe);
  --in_flight_;

  if (op->is_sync) {
    if (options_.faults) res = options_.faults->OnSync(res);
    if ((res == -EINTR || res == -EAGAIN) && ++op->retries < kRetriesMax) {
      ring_->queue.push_front(std::move(op));
      return Status::Ok();
    }
    op->sync_result = res;
    if (res < 0 && error_.ok())
      error_ = Status::FromErrno(-res, "fsync of '" + path_ + "' failed (fatal: what was "
                                       "written since the last commit may be lost)");
    return error_;
  }
  if (options_.faults) res = options_.faults->OnWrite(op->offset, op->length, res);
  const bool retry = res == -EAGAIN || res == -EINTR || (res > 0 && uint32_t(res) < op->length);
  if (retry && ++op->retries < kRetriesMax) {
    if (res > 0) {  // a short write: requeue what is left
      op->offset += uint32_t(res);
      op->data += res;
      op->length -= uint32_t(res);
      op->retries = 0;
    }
    ring_->queue.push_front(std::move(op));
    return Status::Ok();
  }
  buffered_bytes_ -= op->chunk_bytes;
  if (res == int(op->length)) return Status::Ok();
  if (error_.ok()) {
    const std::string what = "write of " + Str(op->length) + " bytes at offset " +
                             Str(op->offset) + " to '" + path_ + "'";
    error_ = res < 0 ? Status::FromErrno(-res, what)
                     : Status::IOError(what + " made no progress after " + Str(op->retries) +
                                       " tries");
  }
  return error_;
}

Status UringFile::Drain() {
  while (in_flight_ > 0 || (error_.ok() && !ring_->queue.empty())) {
    Pump();
    if (in_flight_ == 0) break;
    ReapOne();
  }
  if (!error_.ok()) {  // what was never submitted never will be
    for (auto& op : ring_->queue) buffered_bytes_ -= op->chunk_bytes;
    ring_->queue.clear();
  }
  return error_;
}

Status UringFile::Sync() {
  KIV_RETURN_IF_ERROR(Drain());
  auto op = std::make_unique<Op>();
  op->is_sync = true;
  ring_->queue.push_back(std::move(op));
  return Drain();
}

}  // namespace kiv
