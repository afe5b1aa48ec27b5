// An append-only file written through io_uring with a bounded queue depth.
//
// Writes are submitted asynchronously from buffers the file owns. A short write is requeued for
// its remainder; -EAGAIN and -EINTR are requeued as they are; every other errno becomes an error
// Status that names the offset. Sync() waits for every queued write, then fsyncs.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "storage/status.h"

namespace kiv {

// Test hook: sees every completion before the file acts on it and may replace its result, to
// inject short writes, -EAGAIN, -EIO, -ENOSPC or a failed fsync. Production code passes none.
class IoFaults {
 public:
  virtual ~IoFaults() = default;
  // `result` is what the kernel returned for a write of `length` bytes at `offset`.
  virtual int OnWrite(uint64_t offset, uint32_t length, int result) = 0;
  virtual int OnSync(int result) = 0;
};

struct UringOptions {
  uint32_t queue_depth = 32;                    // writes in flight at most
  uint32_t write_bytes_max = 1u << 20;          // one write op moves at most this much
  uint64_t buffered_bytes_max = 256ull << 20;   // queued-but-unfinished bytes before Write waits
  IoFaults* faults = nullptr;
};

class UringFile {
 public:
  // Takes ownership of `fd` (opened for writing) on success; on failure the caller keeps it.
  // `path` is only for messages.
  static Result<std::unique_ptr<UringFile>> Make(int fd, std::string path,
                                                 const UringOptions& options);
  ~UringFile();
  UringFile(const UringFile&) = delete;
  UringFile& operator=(const UringFile&) = delete;

  // Queues `bytes` to be written at `offset`. May wait for earlier writes to bound memory.
  Status Write(uint64_t offset, std::vector<uint8_t> bytes);
  // Waits for every queued write to finish (or fail).
  Status Drain();
  // Drain(), then fsync through the ring. An fsync error is fatal for the archive (fault model).
  Status Sync();
  int fd() const { return fd_; }

 private:
  struct Buffer;
  struct Op;
  UringFile() = default;
  Status ReapOne();  // waits for one completion and handles it
  Status Pump();     // submits what the queue depth allows

  int fd_ = -1;
  std::string path_;
  UringOptions options_;
  struct Ring;
  std::unique_ptr<Ring> ring_;  // the io_uring and the ops waiting for a slot in it
  uint32_t in_flight_ = 0;
  uint64_t buffered_bytes_ = 0;
  Status error_;
};

}  // namespace kiv
