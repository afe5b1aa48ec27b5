// Status and Result<T>: how errors cross the storage API. No exception crosses it.
//
// An operating error (a bad file, a full disk, a failed fsync) is a returned Status. A programmer
// error (a null pointer, a layer index out of range) is an assertion.
#pragma once

#include <cassert>
#include <string>
#include <utility>
#include <variant>

namespace kiv {

class Status {
 public:
  enum class Code : int {
    kOk = 0,
    kNotFound,          // the file does not exist
    kInvalidArgument,   // the caller asked for something impossible
    kNotAnArchive,      // the bytes are not a kiv archive at all
    kVersionTooNew,     // a newer kiv wrote it; this build must not guess
    kCorruption,        // damage before the last commit: never served as data
    kIncompatible,      // a different model or codec than the archive's
    kIOError,           // the operating system refused a read, write or sync
    kNoSpace,           // the disk or the file-size limit is full
    kLocked,            // another writer holds the archive
    kNotImplemented,    // a path that is not built yet
  };

  Status() = default;
  static Status Ok() { return Status(); }
  static Status NotFound(std::string m) { return Status(Code::kNotFound, std::move(m)); }
  static Status InvalidArgument(std::string m) {
    return Status(Code::kInvalidArgument, std::move(m));
  }
  static Status NotAnArchive(std::string m) { return Status(Code::kNotAnArchive, std::move(m)); }
  static Status VersionTooNew(std::string m) { return Status(Code::kVersionTooNew, std::move(m)); }
  static Status Corruption(std::string m) { return Status(Code::kCorruption, std::move(m)); }
  static Status Incompatible(std::string m) { return Status(Code::kIncompatible, std::move(m)); }
  static Status IOError(std::string m) { return Status(Code::kIOError, std::move(m)); }
  static Status NoSpace(std::string m) { return Status(Code::kNoSpace, std::move(m)); }
  static Status Locked(std::string m) { return Status(Code::kLocked, std::move(m)); }
  static Status NotImplemented(std::string m) {
    return Status(Code::kNotImplemented, "not implemented: " + std::move(m));
  }
  // An errno from the operating system, named with what was being done.
  static Status FromErrno(int err, const std::string& what);

  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }
  // "corruption: segment 3 at offset 4096: ..." — one sentence for people.
  std::string ToString() const;
  static const char* CodeName(Code code);

 private:
  Status(Code code, std::string message) : code_(code), message_(std::move(message)) {}
  Code code_ = Code::kOk;
  std::string message_;
};

// A value or the Status that explains why there is none.
template <typename T>
class Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Status status) : v_(std::move(status)) {  // NOLINT
    assert(!std::get<Status>(v_).ok() && "a Result built from a Status must carry an error");
  }
  bool ok() const { return std::holds_alternative<T>(v_); }
  const Status& status() const {
    static const Status kOk;
    return ok() ? kOk : std::get<Status>(v_);
  }
  T& value() & {
    assert(ok());
    return std::get<T>(v_);
  }
  const T& value() const& {
    assert(ok());
    return std::get<T>(v_);
  }
  T&& value() && {
    assert(ok());
    return std::get<T>(std::move(v_));
  }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }

 private:
  std::variant<T, Status> v_;
};

#define KIV_RETURN_IF_ERROR(expr)         \
  do {                                    \
    ::kiv::Status kiv_status_ = (expr);   \
    if (!kiv_status_.ok()) return kiv_status_; \
  } while (0)

}  // namespace kiv
