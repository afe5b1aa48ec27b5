#include "storage/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <utility>

namespace kiv {

Result<std::string> ReadFileToString(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) return Status::FromErrno(errno, "cannot open " + path);
  std::string data;
  char buf[1 << 16];
  size_t n = 0;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) data.append(buf, n);
  const bool failed = std::ferror(f) != 0;
  std::fclose(f);
  if (failed) return Status::IOError("cannot read " + path);
  return data;
}

MappedFile::~MappedFile() {
  Unmap();
  if (fd_ >= 0) ::close(fd_);
}

MappedFile::MappedFile(MappedFile&& o) noexcept { *this = std::move(o); }

MappedFile& MappedFile::operator=(MappedFile&& o) noexcept {
  if (this == &o) return *this;
  Unmap();
  if (fd_ >= 0) ::close(fd_);
  path_ = std::move(o.path_);
  fd_ = std::exchange(o.fd_, -1);
  data_ = std::exchange(o.data_, nullptr);
  size_ = std::exchange(o.size_, 0);
  return *this;
}

void MappedFile::Unmap() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
  data_ = nullptr;
  size_ = 0;
}

Result<MappedFile> MappedFile::Open(const std::string& path) {
  MappedFile f;
  f.path_ = path;
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    const int err = errno;
    if (err == ENOENT) return Status::NotFound("'" + path + "' does not exist");
    return Status::FromErrno(err, "cannot stat '" + path + "'");
  }
  if (S_ISDIR(st.st_mode))
    return Status::NotAnArchive("'" + path + "' is a directory");
  if (!S_ISREG(st.st_mode))
    return Status::NotAnArchive("'" + path + "' is not a regular file");
  f.fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (f.fd_ < 0) return Status::FromErrno(errno, "cannot open '" + path + "'");
  KIV_RETURN_IF_ERROR(f.Remap());
  return f;
}

Status MappedFile::Remap() {
  struct stat st;
  if (::fstat(fd_, &st) != 0) return Status::FromErrno(errno, "cannot stat '" + path_ + "'");
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size == 0) return Status::NotAnArchive("'" + path_ + "' is empty (0 bytes)");
  if (data_ && size == size_) return Status::Ok();
  void* p = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd_, 0);
  if (p == MAP_FAILED) return Status::FromErrno(errno, "cannot map '" + path_ + "'");
  Unmap();
  data_ = static_cast<const uint8_t*>(p);
  size_ = size;
  return Status::Ok();
}

}  // namespace kiv
