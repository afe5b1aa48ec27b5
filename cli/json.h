// A tiny streaming JSON writer for the CLI's --json output and benchmark results. No external
// JSON library: the CLI writes a handful of flat objects and this is all it needs.
//
// Strings are escaped per RFC 8259; bytes that are not valid UTF-8 (an archive's architecture
// field is whatever a file says) become U+FFFD so the output always parses. Non-finite doubles
// become null, since JSON has no NaN or infinity.
#pragma once

#include <charconv>
#include <cmath>
#include <cstdint>
#include <ostream>
#include <string>
#include <string_view>
#include <vector>

namespace kiv::cli {

// Length of the valid UTF-8 sequence starting at s[i], or 0 if the bytes there are not one.
inline size_t Utf8SequenceLength(std::string_view s, size_t i) {
  const auto byte = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = byte(i);
  size_t n = 0;
  uint32_t min_code = 0;
  if (c >= 0xC2 && c <= 0xDF) {
    n = 2, min_code = 0x80;
  } else if (c >= 0xE0 && c <= 0xEF) {
    n = 3, min_code = 0x800;
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4, min_code = 0x10000;
  } else {
    return 0;
  }
  if (i + n > s.size()) return 0;
  uint32_t code = c & (0x7Fu >> n);
  for (size_t k = 1; k < n; ++k) {
    if ((byte(i + k) & 0xC0) != 0x80) return 0;
    code = (code << 6) | (byte(i + k) & 0x3F);
  }
  // Overlong forms, UTF-16 surrogates and code points past U+10FFFF are not valid UTF-8.
  if (code < min_code || (code >= 0xD800 && code <= 0xDFFF) || code > 0x10FFFF) return 0;
  return n;
}

// `s` as a quoted JSON string.
inline std::string JsonQuote(std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out = "\"";
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x80) {
      const size_t n = Utf8SequenceLength(s, i);
      if (n == 0) {
        out += "\\ufffd";
        ++i;
      } else {
        out.append(s.substr(i, n));
        i += n;
      }
      continue;
    }
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20 || c == 0x7F) {
          out += "\\u00";
          out += kHex[c >> 4];
          out += kHex[c & 0xF];
        } else {
          out += static_cast<char>(c);
        }
    }
    ++i;
  }
  out += '"';
  return out;
}

// Writes one JSON value, pretty-printed with two-space indentation. Calls must nest correctly
// (Key before every value inside an object); that is the caller's job, checked only by tests.
class JsonWriter {
 public:
  explicit JsonWriter(std::ostream& out) : out_(out) {}

  JsonWriter& BeginObject() { return Open('{'); }
  JsonWriter& EndObject() { return Close('}'); }
  JsonWriter& BeginArray() { return Open('['); }
  JsonWriter& EndArray() { return Close(']'); }

  JsonWriter& Key(std::string_view key) {
    Separate();
    out_ << JsonQuote(key) << ": ";
    after_key_ = true;
    return *this;
  }
  JsonWriter& String(std::string_view v) { return Raw(JsonQuote(v)); }
  JsonWriter& Bool(bool v) { return Raw(v ? "true" : "false"); }
  JsonWriter& Null() { return Raw("null"); }
  JsonWriter& Uint(uint64_t v) { return Raw(std::to_string(v)); }
  JsonWriter& Int(int64_t v) { return Raw(std::to_string(v)); }
  JsonWriter& Double(double v) {
    if (!std::isfinite(v)) return Null();
    char buf[64];
    const auto r = std::to_chars(buf, buf + sizeof(buf), v);
    return Raw(std::string(buf, r.ptr));
  }

  // Key and value in one call, for the common case.
  JsonWriter& Field(std::string_view k, std::string_view v) { return Key(k).String(v); }
  JsonWriter& Field(std::string_view k, const char* v) { return Key(k).String(v); }
  JsonWriter& Field(std::string_view k, bool v) { return Key(k).Bool(v); }
  JsonWriter& Field(std::string_view k, uint64_t v) { return Key(k).Uint(v); }
  JsonWriter& Field(std::string_view k, uint32_t v) { return Key(k).Uint(v); }
  JsonWriter& Field(std::string_view k, int64_t v) { return Key(k).Int(v); }
  JsonWriter& Field(std::string_view k, int v) { return Key(k).Int(v); }
  JsonWriter& Field(std::string_view k, double v) { return Key(k).Double(v); }

  // Ends the document with a newline. Call once, after the outermost End*.
  void Finish() { out_ << '\n' << std::flush; }

 private:
  JsonWriter& Open(char c) {
    Separate();
    out_ << c;
    first_.push_back(true);
    return *this;
  }
  JsonWriter& Close(char c) {
    const bool empty = first_.back();
    first_.pop_back();
    if (!empty) Newline();
    out_ << c;
    return *this;
  }
  JsonWriter& Raw(std::string_view text) {
    Separate();
    out_ << text;
    return *this;
  }
  // Before a key, or a value that has no key (top level or in an array): a comma if needed and a
  // new line. After a key the value follows on the same line.
  void Separate() {
    if (after_key_) {
      after_key_ = false;
      return;
    }
    if (first_.empty()) return;
    if (!first_.back()) out_ << ',';
    first_.back() = false;
    Newline();
  }
  void Newline() {
    out_ << '\n';
    for (size_t i = 0; i < first_.size(); ++i) out_ << "  ";
  }

  std::ostream& out_;
  std::vector<bool> first_;  // per open container: nothing written in it yet
  bool after_key_ = false;
};

}  // namespace kiv::cli
