// A read-only mmap of a whole file, with one clear sentence for each way opening can fail
// (missing, a directory, empty, unreadable).
#pragma once

#include <cstdint>
#include <string>

#include "storage/status.h"

namespace kiv {

// The whole of a (small) file as a string: config and tokenizer files.
Result<std::string> ReadFileToString(const std::string& path);

class MappedFile {
 public:
  MappedFile() = default;
  ~MappedFile();
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  static Result<MappedFile> Open(const std::string& path);
  // Maps the file again at its current size (it may have grown since).
  Status Remap();

  const uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  void Unmap();
  std::string path_;
  int fd_ = -1;
  const uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

}  // namespace kiv
