#include "storage/status.h"

#include <cerrno>
#include <cstring>

namespace kiv {

Status Status::FromErrno(int err, const std::string& what) {
  std::string m = what + ": " + std::strerror(err);
  switch (err) {
    case ENOENT:
      return NotFound(std::move(m));
    case ENOSPC:
    case EFBIG:
    case EDQUOT:
      return NoSpace(std::move(m));
    default:
      return IOError(std::move(m));
  }
}

const char* Status::CodeName(Code code) {
  switch (code) {
    case Code::kOk: return "ok";
    case Code::kNotFound: return "not found";
    case Code::kInvalidArgument: return "invalid argument";
    case Code::kNotAnArchive: return "not an archive";
    case Code::kVersionTooNew: return "format too new";
    case Code::kCorruption: return "corruption";
    case Code::kIncompatible: return "incompatible";
    case Code::kIOError: return "I/O error";
    case Code::kNoSpace: return "no space";
    case Code::kLocked: return "locked";
    case Code::kNotImplemented: return "not implemented";
  }
  return "unknown";
}

std::string Status::ToString() const {
  if (ok()) return "ok";
  if (code_ == Code::kNotImplemented) return message_;
  return std::string(CodeName(code_)) + ": " + message_;
}

}  // namespace kiv
