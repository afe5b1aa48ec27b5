// Byte-level BPE from tokenizer.json. See tokenizer.h for the steps of Encode; each step here
// names the `tokenizers` (Rust) code it follows, because ids must match that library exactly.
#include "runtime/tokenizer.h"
#include "storage/mapped_file.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <utf8proc.h>
#include <xxhash.h>

#include <algorithm>
#include <array>
#include <cassert>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <queue>
#include <unordered_map>
#include <utility>

namespace kiv {
namespace {

using Json = nlohmann::json;

// ---------------------------------------------------------------------------------------------
// UTF-8

enum class Utf8Kind { kValid, kInvalid, kIncomplete };
struct Utf8Step {
  Utf8Kind kind;
  size_t len;  // bytes of the character, of the maximal invalid subpart, or present so far
};

// The well-formed byte sequences of Unicode's Table 3-7. An invalid sequence's length is its
// maximal subpart, so one U+FFFD replaces it, as Rust's from_utf8_lossy and Python do.
Utf8Step ScanUtf8(std::string_view s, size_t i) {
  const auto b0 = static_cast<uint8_t>(s[i]);
  if (b0 < 0x80) return {Utf8Kind::kValid, 1};
  size_t need = 0;
  uint8_t lo = 0x80, hi = 0xBF;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 3;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 4;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    return {Utf8Kind::kInvalid, 1};
  }
  for (size_t k = 1; k < need; ++k) {
    if (i + k >= s.size()) return {Utf8Kind::kIncomplete, k};
    const auto b = static_cast<uint8_t>(s[i + k]);
    const uint8_t klo = k == 1 ? lo : 0x80, khi = k == 1 ? hi : 0xBF;
    if (b < klo || b > khi) return {Utf8Kind::kInvalid, k};
  }
  return {Utf8Kind::kValid, need};
}

bool IsValidUtf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    if (static_cast<uint8_t>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    const Utf8Step st = ScanUtf8(s, i);
    if (st.kind != Utf8Kind::kValid) return false;
    i += st.len;
  }
  return true;
}

void AppendCodepoint(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// ---------------------------------------------------------------------------------------------
// GPT-2's byte <-> unicode table (openai/gpt-2 encoder.py bytes_to_unicode): printable bytes
// stand for themselves, the other 68 are moved to U+0100 and up, in byte order.

std::array<uint32_t, 256> ByteToCodepoint() {
  std::array<uint32_t, 256> table{};
  uint32_t next = 256;
  for (uint32_t b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    table[b] = printable ? b : next++;
  }
  return table;
}

// ByteLevel decoding of one token (decoders/byte_level.rs): if every character is in the table,
// the bytes it stands for; otherwise the token's own UTF-8 bytes (added tokens like "<|im_end|>"
// are all table characters and decode to themselves). *in_table says which.
std::string ByteLevelDecode(std::string_view token,
                            const std::unordered_map<uint32_t, uint8_t>& cp_to_byte,
                            bool* in_table) {
  std::string out;
  *in_table = false;
  for (size_t i = 0; i < token.size();) {
    const Utf8Step st = ScanUtf8(token, i);
    if (st.kind != Utf8Kind::kValid) return std::string(token);
    int32_t cp = 0;
    utf8proc_iterate(reinterpret_cast<const utf8proc_uint8_t*>(token.data() + i),
                     static_cast<utf8proc_ssize_t>(st.len), &cp);
    const auto it = cp_to_byte.find(static_cast<uint32_t>(cp));
    if (it == cp_to_byte.end()) return std::string(token);
    out.push_back(static_cast<char>(it->second));
    i += st.len;
  }
  *in_table = true;
  return out;
}

// ---------------------------------------------------------------------------------------------
// Regexes: PCRE2 with UTF and UCP, JIT-compiled.

// tokenizers compiles its patterns with Oniguruma, whose \s is Unicode White_Space. PCRE2's \s
// with UCP is \p{Z}, \h and \v, which also holds U+180E. Spell \s out so the two agree.
constexpr std::string_view kOnigSpace = R"(\t-\r\x{85}\p{Z})";

std::string OnigCompatiblePattern(std::string_view p) {
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char e = p[++i];
      if (e == 's') {
        out += in_class ? std::string(kOnigSpace) : "[" + std::string(kOnigSpace) + "]";
      } else if (e == 'S' && !in_class) {
        out += "[^" + std::string(kOnigSpace) + "]";
      } else {
        out += c;
        out += e;
      }
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out += c;
      if (i + 1 < p.size() && p[i + 1] == '^') out += p[++i];
      if (i + 1 < p.size() && p[i + 1] == ']') out += p[++i];  // a leading ] is literal
      continue;
    }
    if (in_class && c == '[' && i + 1 < p.size() && p[i + 1] == ':') {  // [:alpha:]
      const size_t end = p.find(":]", i + 2);
      if (end != std::string_view::npos) {
        out.append(p.substr(i, end + 2 - i));
        i = end + 1;
        continue;
      }
    }
    if (in_class && c == ']') in_class = false;
    out += c;
  }
  return out;
}

class Regex {
 public:
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  ~Regex() { pcre2_code_free(code_); }

  static Result<std::unique_ptr<Regex>> Compile(std::string_view pattern, bool literal) {
    int err = 0;
    PCRE2_SIZE offset = 0;
    const std::string p = literal ? std::string(pattern) : OnigCompatiblePattern(pattern);
    // UCP changes only what classes mean, and a literal has none (PCRE2 refuses the pair).
    const uint32_t options = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(p.data()), p.size(), options,
                                     &err, &offset, nullptr);
    if (code == nullptr) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof(msg));
      return Status::Corruption("tokenizer.json: regex /" + std::string(pattern) +
                                "/ does not compile at offset " + std::to_string(offset) + ": " +
                                reinterpret_cast<const char*>(msg));
    }
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // without JIT it is slower, not wrong
    return std::unique_ptr<Regex>(new Regex(code));
  }

  // Calls fn(begin, end) for each non-empty match, left to right, as onig's find_iter. The
  // subject must be valid UTF-8 (checked once per Encode, not per call).
  template <typename F>
  void ForEachMatch(std::string_view s, pcre2_match_data* md, F&& fn) const {
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(s.data());
    size_t pos = 0;
    while (pos < s.size()) {
      int rc = pcre2_match(code_, subject, s.size(), pos, PCRE2_NO_UTF_CHECK, md, nullptr);
      if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {  // the interpreter keeps its stack on the heap
        rc = pcre2_match(code_, subject, s.size(), pos, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md,
                         nullptr);
      }
      if (rc == PCRE2_ERROR_NOMATCH) return;
      // Another error (a match limit) leaves the rest of the piece unmatched: a gap.
      if (rc < 0) return;
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
      const size_t b = ov[0], e = ov[1];
      if (e == b) {  // an empty match splits nothing; step over one character
        pos = e + (e < s.size() ? ScanUtf8(s, e).len : 1);
        continue;
      }
      fn(b, e);
      pos = e;
    }
  }

 private:
  explicit Regex(pcre2_code* code) : code_(code) {}
  pcre2_code* code_;
};

// ---------------------------------------------------------------------------------------------
// Added tokens (tokenizer/added_vocabulary.rs).

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool special = false;
  bool lstrip = false;
  bool rstrip = false;
  bool single_word = false;
  bool normalized = false;
};

// Leftmost-longest literal search, as the Aho-Corasick automaton tokenizers builds with
// MatchKind::LeftmostLongest. Tokens are few (17 in SmolLM2, 256 in Llama-3), so candidates are
// bucketed by first byte, longest first.
class LiteralMatcher {
 public:
  void Add(const AddedToken* token) {
    if (token->content.empty()) return;
    auto& bucket = by_first_[static_cast<uint8_t>(token->content[0])];
    bucket.push_back(token);
    std::stable_sort(bucket.begin(), bucket.end(), [](const AddedToken* a, const AddedToken* b) {
      return a->content.size() > b->content.size();
    });
  }
  bool empty() const {
    return std::all_of(by_first_.begin(), by_first_.end(), [](const auto& b) { return b.empty(); });
  }
  // The first match at or after `from`: its start and its token, or {npos, nullptr}.
  std::pair<size_t, const AddedToken*> Find(std::string_view text, size_t from) const {
    for (size_t i = from; i < text.size(); ++i) {
      const auto& bucket = by_first_[static_cast<uint8_t>(text[i])];
      for (const AddedToken* t : bucket) {
        if (text.compare(i, t->content.size(), t->content) == 0) return {i, t};
      }
    }
    return {std::string_view::npos, nullptr};
  }

 private:
  std::array<std::vector<const AddedToken*>, 256> by_first_;
};

// ---------------------------------------------------------------------------------------------

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using StringMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

// One pre-tokenizer step. Split and Digits are a regex with a behavior; ByteLevel is its
// optional prefix space and the GPT-2 regex (absent when use_regex is false).
struct PreStep {
  std::unique_ptr<Regex> regex;
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool invert = false;
  bool add_prefix_space = false;
};

struct MergeInfo {
  int32_t rank;
  int32_t id;
};

uint64_t PairKey(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

// The GPT-2 pattern the ByteLevel pre-tokenizer applies when use_regex is true.
constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

}  // namespace

struct Tokenizer::Impl {
  // Model.
  std::vector<std::string> id_bytes;  // [vocab_size] what each id decodes to (ByteLevel)
  std::vector<uint8_t> id_known;      // [vocab_size] 1 where the id names a token
  std::vector<uint8_t> id_special;    // [vocab_size] 1 for special added tokens
  StringMap vocab;                    // model spelling ("Ġthe") -> id
  StringMap byte_vocab;               // raw bytes (" the") -> id; only with ignore_merges
  std::unordered_map<uint64_t, MergeInfo> merges;
  std::array<int32_t, 256> byte_id{};  // initial symbol of each byte, -1 if none
  // byte_fallback's tokens for each byte, as the library looks them up: <0xXY> for each UTF-8
  // byte of the byte's table character (so 1 or 2 of them), all present or none.
  std::array<std::vector<int32_t>, 256> fallback_ids;
  int32_t unk_id = -1;
  bool fuse_unk = false;
  bool byte_fallback = false;
  bool ignore_merges = false;

  // Pipeline.
  std::vector<AddedToken> added;
  LiteralMatcher raw_added;                      // normalized=false: matched on the raw text
  LiteralMatcher normalized_added;               // normalized=true: matched after the normalizer
  std::unique_ptr<Regex> space_char, word_char;  // for lstrip/rstrip and single_word
  bool nfc = false;
  std::vector<PreStep> steps;
  int byte_level_steps = 0;
  bool byte_level_last = false;
  std::vector<int32_t> prefix_ids, suffix_ids;  // post-processor's, for add_special

  // Configs.
  int32_t bos = -1, eos = -1;
  std::vector<int32_t> stops;
  uint64_t fingerprint = 0;
  int32_t vocab_size = 0;

  struct EncodeState {
    std::vector<int32_t>* out;
    std::vector<pcre2_match_data*> match_data;   // one per step: steps nest
    pcre2_match_data* aux_match_data = nullptr;  // for the added tokens' rules
    StringMap cache_index;                       // piece bytes -> offset into cache_ids
    std::vector<int32_t> cache_ids;              // [len, ids...] per cached piece
    ~EncodeState() {
      for (pcre2_match_data* md : match_data) pcre2_match_data_free(md);
      pcre2_match_data_free(aux_match_data);
    }
  };

  void EncodeSegment(std::string_view text, EncodeState& st) const;
  void SplitAdded(std::string_view text, const LiteralMatcher& matcher, EncodeState& st,
                  bool normalized_pass) const;
  void PreTokenize(size_t step, std::string_view piece, EncodeState& st) const;
  void Bpe(std::string_view piece, EncodeState& st) const;
  void MergeWord(std::string_view piece, std::vector<int32_t>* out) const;
};

// ---------------------------------------------------------------------------------------------
// Encoding

namespace {

// The last and the first character of s (for the single-word and strip rules of added tokens).
std::string_view LastChar(std::string_view s) {
  size_t b = s.size();
  while (b > 0 && (static_cast<uint8_t>(s[b - 1]) & 0xC0) == 0x80) --b;
  return s.substr(b == 0 ? 0 : b - 1);
}
std::string_view FirstChar(std::string_view s) { return s.substr(0, ScanUtf8(s, 0).len); }

bool WholeMatch(const Regex& re, std::string_view s, pcre2_match_data* md) {
  bool found = false;
  re.ForEachMatch(s, md, [&](size_t b, size_t e) { found = found || (b == 0 && e == s.size()); });
  return found;
}

}  // namespace

// added_vocabulary.rs find_matches: the text is cut around each added token; single_word drops a
// match inside a word, lstrip and rstrip take the whitespace beside it into the token.
void Tokenizer::Impl::SplitAdded(std::string_view text, const LiteralMatcher& matcher,
                                 EncodeState& st, bool normalized_pass) const {
  auto gap = [&](size_t b, size_t e) {
    if (e <= b) return;
    if (normalized_pass) {
      PreTokenize(0, text.substr(b, e - b), st);
    } else {
      EncodeSegment(text.substr(b, e - b), st);
    }
  };
  size_t done = 0, search = 0;
  while (search < text.size()) {
    auto [start, token] = matcher.Find(text, search);
    if (token == nullptr) break;
    size_t stop = start + token->content.size();
    search = stop;
    if (token->single_word) {
      const bool word_before =
          start > 0 && WholeMatch(*word_char, LastChar(text.substr(0, start)), st.aux_match_data);
      const bool word_after =
          stop < text.size() &&
          WholeMatch(*word_char, FirstChar(text.substr(stop)), st.aux_match_data);
      if (word_before || word_after) continue;
    }
    if (token->lstrip) {
      while (start > done &&
             WholeMatch(*space_char, LastChar(text.substr(0, start)), st.aux_match_data)) {
        start -= LastChar(text.substr(0, start)).size();
      }
    }
    if (token->rstrip) {
      while (stop < text.size() &&
             WholeMatch(*space_char, FirstChar(text.substr(stop)), st.aux_match_data)) {
        stop += FirstChar(text.substr(stop)).size();
      }
    }
    start = std::max(start, done);
    gap(done, start);
    st.out->push_back(token->id);
    done = stop;
  }
  gap(done, text.size());
}

// The normalizer runs on the text between raw added tokens; then normalized added tokens are
// found in its output, and the rest is pre-tokenized.
void Tokenizer::Impl::EncodeSegment(std::string_view text, EncodeState& st) const {
  std::string normalized;
  // Every character below U+0300 (lead bytes below 0xCC) is unchanged by NFC, and cannot
  // combine with another below it.
  if (nfc && std::any_of(text.begin(), text.end(),
                         [](char c) { return static_cast<uint8_t>(c) >= 0xCC; })) {
    utf8proc_uint8_t* dst = nullptr;
    const utf8proc_ssize_t n =
        utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data()),
                     static_cast<utf8proc_ssize_t>(text.size()), &dst,
                     static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
    if (n >= 0) {
      normalized.assign(reinterpret_cast<const char*>(dst), static_cast<size_t>(n));
      text = normalized;
    }
    std::free(dst);
  }
  if (normalized_added.empty()) {
    PreTokenize(0, text, st);
  } else {
    SplitAdded(text, normalized_added, st, /*normalized_pass=*/true);
  }
}

// pre_tokenizer.rs and normalizer.rs split: each step cuts each piece of the step before.
void Tokenizer::Impl::PreTokenize(size_t step, std::string_view piece, EncodeState& st) const {
  if (piece.empty()) return;
  if (step == steps.size()) {
    Bpe(piece, st);
    return;
  }
  const PreStep& s = steps[step];
  std::string prefixed;
  if (s.add_prefix_space && piece[0] != ' ') {
    prefixed.reserve(piece.size() + 1);
    prefixed.push_back(' ');
    prefixed.append(piece);
    piece = prefixed;
  }
  if (s.regex == nullptr) {
    PreTokenize(step + 1, piece, st);
    return;
  }
  pcre2_match_data* md = st.match_data[step];
  if (s.behavior == SplitBehavior::kIsolated) {  // matches and gaps alike become pieces
    size_t prev = 0;
    s.regex->ForEachMatch(piece, md, [&](size_t b, size_t e) {
      PreTokenize(step + 1, piece.substr(prev, b - prev), st);
      PreTokenize(step + 1, piece.substr(b, e - b), st);
      prev = e;
    });
    PreTokenize(step + 1, piece.substr(prev), st);
    return;
  }
  struct Part {
    size_t begin, end;
    bool match;
  };
  std::vector<Part> parts;
  size_t prev = 0;
  s.regex->ForEachMatch(piece, md, [&](size_t b, size_t e) {
    if (b > prev) parts.push_back({prev, b, s.invert});
    parts.push_back({b, e, !s.invert});
    prev = e;
  });
  if (prev < piece.size()) parts.push_back({prev, piece.size(), s.invert});
  std::vector<Part> out;
  bool previous_match = false;
  if (s.behavior == SplitBehavior::kMergedWithNext) std::reverse(parts.begin(), parts.end());
  for (const Part& p : parts) {
    switch (s.behavior) {
      case SplitBehavior::kRemoved:
        if (!p.match) out.push_back(p);
        break;
      case SplitBehavior::kContiguous:
        if (!out.empty() && p.match == previous_match) {
          out.back().end = p.end;
        } else {
          out.push_back(p);
        }
        break;
      case SplitBehavior::kMergedWithPrevious:
      case SplitBehavior::kMergedWithNext:
        if (!out.empty() && p.match && !previous_match) {
          if (s.behavior == SplitBehavior::kMergedWithPrevious) out.back().end = p.end;
          if (s.behavior == SplitBehavior::kMergedWithNext) out.back().begin = p.begin;
        } else {
          out.push_back(p);
        }
        break;
      case SplitBehavior::kIsolated:
        assert(false);
    }
    previous_match = p.match;
  }
  if (s.behavior == SplitBehavior::kMergedWithNext) std::reverse(out.begin(), out.end());
  for (const Part& p : out) PreTokenize(step + 1, piece.substr(p.begin, p.end - p.begin), st);
}

// models/bpe/model.rs tokenize_with_cache.
void Tokenizer::Impl::Bpe(std::string_view piece, EncodeState& st) const {
  if (ignore_merges) {  // Llama-3: a piece that is a whole token is taken as it is
    const auto it = byte_vocab.find(piece);
    if (it != byte_vocab.end()) {
      st.out->push_back(it->second);
      return;
    }
  }
  // Long pieces are rare and not worth keeping; the cache is bounded like the library's.
  constexpr size_t kCachedPieceBytesMax = 256;
  constexpr size_t kCacheEntriesMax = size_t{1} << 20;
  const bool cacheable = piece.size() < kCachedPieceBytesMax;
  if (cacheable) {
    const auto it = st.cache_index.find(piece);
    if (it != st.cache_index.end()) {
      const auto at = static_cast<size_t>(it->second);
      const auto n = static_cast<size_t>(st.cache_ids[at]);
      st.out->insert(st.out->end(), st.cache_ids.begin() + static_cast<std::ptrdiff_t>(at + 1),
                     st.cache_ids.begin() + static_cast<std::ptrdiff_t>(at + 1 + n));
      return;
    }
  }
  const size_t before = st.out->size();
  MergeWord(piece, st.out);
  if (cacheable && st.cache_index.size() < kCacheEntriesMax) {
    const auto at = static_cast<int32_t>(st.cache_ids.size());
    st.cache_ids.push_back(static_cast<int32_t>(st.out->size() - before));
    st.cache_ids.insert(st.cache_ids.end(), st.out->begin() + static_cast<std::ptrdiff_t>(before),
                        st.out->end());
    st.cache_index.emplace(std::string(piece), at);
  }
}

// models/bpe/model.rs merge_word and word.rs merge_all: one symbol per byte, then the pair of
// lowest rank (leftmost among equals) is merged until no pair has a merge.
void Tokenizer::Impl::MergeWord(std::string_view piece, std::vector<int32_t>* out) const {
  struct Symbol {
    int32_t id, prev, next;
    bool alive;
  };
  std::vector<Symbol> sym;
  sym.reserve(piece.size());
  auto add = [&](int32_t id) {
    const auto i = static_cast<int32_t>(sym.size());
    sym.push_back({id, i - 1, -1, true});
    if (i > 0) sym[static_cast<size_t>(i - 1)].next = i;
  };
  bool pending_unk = false;
  for (const char c : piece) {
    const auto b = static_cast<uint8_t>(c);
    if (byte_id[b] >= 0) {
      if (pending_unk) add(unk_id);
      pending_unk = false;
      add(byte_id[b]);
    } else if (byte_fallback && !fallback_ids[b].empty()) {
      for (const int32_t id : fallback_ids[b]) add(id);  // no flush of a pending unk, as there
    } else if (unk_id >= 0) {
      if (pending_unk && !fuse_unk) add(unk_id);
      pending_unk = true;
    }  // with neither, the byte is dropped, as the library drops it
  }
  if (pending_unk) add(unk_id);

  struct Entry {
    int32_t rank, pos, id;
  };
  auto later = [](const Entry& a, const Entry& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
  };
  std::priority_queue<Entry, std::vector<Entry>, decltype(later)> queue(later);
  auto push = [&](int32_t left) {
    const int32_t right = sym[static_cast<size_t>(left)].next;
    if (right < 0) return;
    const auto it =
        merges.find(PairKey(sym[static_cast<size_t>(left)].id, sym[static_cast<size_t>(right)].id));
    if (it != merges.end()) queue.push({it->second.rank, left, it->second.id});
  };
  for (size_t i = 0; i + 1 < sym.size(); ++i) push(static_cast<int32_t>(i));
  while (!queue.empty()) {
    const Entry top = queue.top();
    queue.pop();
    Symbol& s = sym[static_cast<size_t>(top.pos)];
    if (!s.alive || s.next < 0) continue;
    const int32_t right = s.next;
    const auto it = merges.find(PairKey(s.id, sym[static_cast<size_t>(right)].id));
    if (it == merges.end() || it->second.id != top.id) continue;  // a stale entry
    s.id = top.id;
    sym[static_cast<size_t>(right)].alive = false;
    s.next = sym[static_cast<size_t>(right)].next;
    if (s.next >= 0) sym[static_cast<size_t>(s.next)].prev = top.pos;
    if (s.prev >= 0) push(s.prev);
    push(top.pos);
  }
  for (int32_t i = sym.empty() ? -1 : 0; i >= 0; i = sym[static_cast<size_t>(i)].next) {
    out->push_back(sym[static_cast<size_t>(i)].id);
  }
}

std::vector<int32_t> Tokenizer::Encode(std::string_view text, bool add_special) const {
  const Impl& m = *impl_;
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 4 + 8);
  if (add_special) ids = m.prefix_ids;
  std::string clean;
  if (!IsValidUtf8(text)) {
    AppendUtf8Lossy(text, &clean);
    text = clean;
  }
  Impl::EncodeState st;
  st.out = &ids;
  for (size_t i = 0; i < m.steps.size(); ++i) {
    st.match_data.push_back(pcre2_match_data_create(4, nullptr));
  }
  st.aux_match_data = pcre2_match_data_create(4, nullptr);
  if (m.raw_added.empty()) {
    m.EncodeSegment(text, st);
  } else {
    m.SplitAdded(text, m.raw_added, st, /*normalized_pass=*/false);
  }
  if (add_special) ids.insert(ids.end(), m.suffix_ids.begin(), m.suffix_ids.end());
  return ids;
}

// ---------------------------------------------------------------------------------------------
// Decoding

void AppendUtf8Lossy(std::string_view bytes, std::string* out) {
  out->reserve(out->size() + bytes.size());
  size_t i = 0;
  while (i < bytes.size()) {
    const size_t run_begin = i;
    while (i < bytes.size() && static_cast<uint8_t>(bytes[i]) < 0x80) ++i;
    out->append(bytes.substr(run_begin, i - run_begin));
    if (i == bytes.size()) break;
    const Utf8Step st = ScanUtf8(bytes, i);
    if (st.kind == Utf8Kind::kValid) {
      out->append(bytes.substr(i, st.len));
    } else {
      out->append(kReplacement);
    }
    i += st.len;
  }
}

std::string Tokenizer::Decode(std::span<const int32_t> ids, bool skip_special) const {
  std::string bytes;
  for (const int32_t id : ids) {
    if (id < 0 || id >= impl_->vocab_size || !impl_->id_known[static_cast<size_t>(id)]) continue;
    if (skip_special && impl_->id_special[static_cast<size_t>(id)]) continue;
    bytes += impl_->id_bytes[static_cast<size_t>(id)];
  }
  std::string out;
  AppendUtf8Lossy(bytes, &out);
  return out;
}

std::string_view Tokenizer::TokenBytes(int32_t id) const {
  if (id < 0 || id >= impl_->vocab_size) return {};
  return impl_->id_bytes[static_cast<size_t>(id)];
}

bool Tokenizer::IsSpecial(int32_t id) const {
  return id >= 0 && id < impl_->vocab_size && impl_->id_special[static_cast<size_t>(id)];
}

StreamDecoder::StreamDecoder(const Tokenizer& tokenizer, bool skip_special)
    : impl_(tokenizer.impl_), skip_special_(skip_special) {}

std::string StreamDecoder::Push(int32_t id) {
  const Tokenizer::Impl& m = *impl_;
  if (id < 0 || id >= m.vocab_size || !m.id_known[static_cast<size_t>(id)]) return {};
  if (skip_special_ && m.id_special[static_cast<size_t>(id)]) return {};
  pending_ += m.id_bytes[static_cast<size_t>(id)];
  // Everything up to an incomplete character at the end goes out. The cut falls where Decode's
  // scan of all the bytes would also pass, so the pieces join to Decode's text.
  size_t i = 0;
  while (i < pending_.size()) {
    if (static_cast<uint8_t>(pending_[i]) < 0x80) {
      ++i;
      continue;
    }
    const Utf8Step st = ScanUtf8(pending_, i);
    if (st.kind == Utf8Kind::kIncomplete) break;
    i += st.len;
  }
  std::string out;
  AppendUtf8Lossy(std::string_view(pending_).substr(0, i), &out);
  pending_.erase(0, i);
  return out;
}

std::string StreamDecoder::Finish() {
  std::string out;
  AppendUtf8Lossy(pending_, &out);
  pending_.clear();
  return out;
}

// ---------------------------------------------------------------------------------------------
// Accessors

int32_t Tokenizer::bos_id() const { return impl_->bos; }
int32_t Tokenizer::eos_id() const { return impl_->eos; }
const std::vector<int32_t>& Tokenizer::stop_ids() const { return impl_->stops; }
bool Tokenizer::IsStop(int32_t id) const {
  return std::find(impl_->stops.begin(), impl_->stops.end(), id) != impl_->stops.end();
}
int32_t Tokenizer::vocab_size() const { return impl_->vocab_size; }
uint64_t Tokenizer::fingerprint() const { return impl_->fingerprint; }

std::optional<int32_t> Tokenizer::TokenId(std::string_view token) const {
  for (const AddedToken& t : impl_->added) {
    if (t.content == token) return t.id;
  }
  const auto it = impl_->vocab.find(token);
  if (it == impl_->vocab.end()) return std::nullopt;
  return it->second;
}

// ---------------------------------------------------------------------------------------------
// Loading

namespace {

bool FileExists(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f != nullptr) std::fclose(f);
  return f != nullptr;
}

Result<Json> ParseJson(std::string_view text, const char* what) {
  Json j = Json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    return Status::Corruption(std::string(what) + ": malformed JSON");
  }
  return j;
}

// A type name for messages: "Metaspace", or "(none)".
std::string TypeOf(const Json& j) {
  if (j.is_null()) return "(none)";
  if (j.is_object() && j.contains("type") && j["type"].is_string()) return j["type"];
  return "(untyped)";
}

Status NotSupported(const std::string& what, const std::string& name) {
  return Status::NotImplemented("tokenizer.json " + what + " '" + name +
                                "': kiv reads byte-level BPE tokenizers (SmolLM2, Llama-3, Qwen2)");
}

Status LoadModel(const Json& model, Tokenizer::Impl& m) {
  const std::string type = model.value("type", model.contains("merges") ? "BPE" : "(untyped)");
  if (type != "BPE") return NotSupported("model type", type);
  if (model.contains("dropout") && !model["dropout"].is_null() && model["dropout"] != 0.0) {
    return NotSupported("BPE option", "dropout");
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (model.contains(key) && model[key].is_string() && !model[key].get<std::string>().empty()) {
      return NotSupported("BPE option", key);
    }
  }
  for (const auto& [token, id] : model.at("vocab").items()) {
    m.vocab[token] = id.get<int32_t>();
    m.vocab_size = std::max(m.vocab_size, id.get<int32_t>() + 1);
  }
  const Json& merges = model.at("merges");
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const Json& e = merges[rank];
    std::string a, b;
    if (e.is_string()) {  // "a b", the older form
      const std::string s = e;
      const size_t sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos) {
        return Status::Corruption("tokenizer.json: merge " + std::to_string(rank) + " '" + s +
                                  "' is not two tokens");
      }
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else {  // ["a", "b"]
      a = e.at(0).get<std::string>();
      b = e.at(1).get<std::string>();
    }
    const auto ia = m.vocab.find(a), ib = m.vocab.find(b), iab = m.vocab.find(a + b);
    if (ia == m.vocab.end() || ib == m.vocab.end() || iab == m.vocab.end()) {
      return Status::Corruption("tokenizer.json: merge " + std::to_string(rank) + " ('" + a +
                                "', '" + b + "') names a token that is not in the vocabulary");
    }
    // A repeated pair keeps its last rank, as the library's map does.
    m.merges[PairKey(ia->second, ib->second)] = {static_cast<int32_t>(rank), iab->second};
  }
  auto flag = [&](const char* key) {
    return model.contains(key) && model[key].is_boolean() && model[key].get<bool>();
  };
  m.byte_fallback = flag("byte_fallback");
  m.fuse_unk = flag("fuse_unk");
  m.ignore_merges = flag("ignore_merges");
  if (model.contains("unk_token") && model["unk_token"].is_string()) {
    const auto it = m.vocab.find(model["unk_token"].get<std::string>());
    if (it == m.vocab.end()) return Status::Corruption("tokenizer.json: unk_token not in vocab");
    m.unk_id = it->second;
  }
  return Status::Ok();
}

Status LoadNormalizer(const Json& n, Tokenizer::Impl& m) {
  const std::string type = TypeOf(n);
  if (type == "(none)") return Status::Ok();
  if (type == "NFC") {
    m.nfc = true;
    return Status::Ok();
  }
  if (type == "Sequence") {
    for (const Json& each : n.at("normalizers")) KIV_RETURN_IF_ERROR(LoadNormalizer(each, m));
    return Status::Ok();
  }
  return NotSupported("normalizer", type);
}

Result<SplitBehavior> ParseBehavior(const std::string& name) {
  if (name == "Removed") return SplitBehavior::kRemoved;
  if (name == "Isolated") return SplitBehavior::kIsolated;
  if (name == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (name == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (name == "Contiguous") return SplitBehavior::kContiguous;
  return NotSupported("Split behavior", name);
}

Status LoadPreTokenizer(const Json& p, Tokenizer::Impl& m) {
  const std::string type = TypeOf(p);
  if (type == "Sequence") {
    for (const Json& each : p.at("pretokenizers")) KIV_RETURN_IF_ERROR(LoadPreTokenizer(each, m));
    return Status::Ok();
  }
  PreStep step;
  if (type == "Split") {
    const Json& pattern = p.at("pattern");
    const bool literal = pattern.contains("String");
    const std::string text = literal ? pattern["String"] : pattern.at("Regex");
    auto re = Regex::Compile(text, literal);
    if (!re.ok()) return re.status();
    step.regex = std::move(re).value();
    auto behavior = ParseBehavior(p.at("behavior"));
    if (!behavior.ok()) return behavior.status();
    step.behavior = behavior.value();
    step.invert = p.value("invert", false);
  } else if (type == "Digits") {
    // Rust's char::is_numeric is the N categories; one piece per digit, or per run of them.
    auto re = Regex::Compile(p.value("individual_digits", false) ? R"(\p{N})" : R"(\p{N}+)", false);
    if (!re.ok()) return re.status();
    step.regex = std::move(re).value();
  } else if (type == "ByteLevel") {
    step.add_prefix_space = p.value("add_prefix_space", true);
    if (p.value("use_regex", true)) {
      auto re = Regex::Compile(kGpt2Pattern, false);
      if (!re.ok()) return re.status();
      step.regex = std::move(re).value();
    }
  } else {
    return NotSupported("pre-tokenizer", type);
  }
  m.steps.push_back(std::move(step));
  if (type == "ByteLevel") m.byte_level_steps++;
  m.byte_level_last = type == "ByteLevel";
  return Status::Ok();
}

Status LoadDecoder(const Json& d) {
  const std::string type = TypeOf(d);
  if (type == "ByteLevel") return Status::Ok();
  if (type == "Sequence" && d.at("decoders").size() == 1) return LoadDecoder(d["decoders"][0]);
  return NotSupported("decoder", type);
}

Status LoadPostProcessor(const Json& p, const Json& root, Tokenizer::Impl& m) {
  const std::string type = TypeOf(p);
  if (type == "(none)" || type == "ByteLevel") return Status::Ok();
  if (type == "Sequence") {
    for (const Json& each : p.at("processors")) {
      KIV_RETURN_IF_ERROR(LoadPostProcessor(each, root, m));
    }
    return Status::Ok();
  }
  if (type != "TemplateProcessing") return NotSupported("post-processor", type);
  bool after_sequence = false;
  for (const Json& piece : p.at("single")) {
    if (piece.contains("Sequence")) {
      after_sequence = true;
      continue;
    }
    const std::string name = piece.at("SpecialToken").at("id");
    for (const Json& id : p.at("special_tokens").at(name).at("ids")) {
      (after_sequence ? m.suffix_ids : m.prefix_ids).push_back(id.get<int32_t>());
    }
  }
  return Status::Ok();
}

// tokenizer/serialization.rs and added_vocabulary.rs add_tokens: the ids written in the file are
// not used. A token whose content is in the vocabulary takes that id; the others are numbered
// from the vocabulary's size, in file order. (In SmolLM2, Llama-3 and Qwen2 this gives the
// file's ids.) A repeated content keeps its first id and takes the last properties.
Status LoadAddedTokens(const Json& list, Tokenizer::Impl& m) {
  auto next_id = static_cast<int32_t>(m.vocab.size());
  for (const Json& t : list) {
    AddedToken a;
    a.content = t.at("content").get<std::string>();
    if (a.content.empty()) continue;
    a.special = t.value("special", false);
    a.lstrip = t.value("lstrip", false);
    a.rstrip = t.value("rstrip", false);
    a.single_word = t.value("single_word", false);
    a.normalized = t.value("normalized", !a.special);
    auto same = std::find_if(m.added.begin(), m.added.end(),
                             [&](const AddedToken& e) { return e.content == a.content; });
    if (same != m.added.end()) {
      a.id = same->id;
      *same = std::move(a);
      continue;
    }
    const auto in_vocab = m.vocab.find(a.content);
    a.id = in_vocab != m.vocab.end() ? in_vocab->second : next_id++;
    m.vocab_size = std::max(m.vocab_size, a.id + 1);
    m.added.push_back(std::move(a));
  }
  return Status::Ok();
}

// Fills the per-id tables once the vocabulary and added tokens are known.
void BuildTables(Tokenizer::Impl& m) {
  const std::array<uint32_t, 256> to_cp = ByteToCodepoint();
  std::unordered_map<uint32_t, uint8_t> to_byte;
  for (uint32_t b = 0; b < 256; ++b) to_byte[to_cp[b]] = static_cast<uint8_t>(b);
  const auto n = static_cast<size_t>(m.vocab_size);
  m.id_bytes.assign(n, {});
  m.id_known.assign(n, 0);
  m.id_special.assign(n, 0);
  bool in_table = false;
  for (const auto& [token, id] : m.vocab) {
    if (id < 0) continue;
    m.id_bytes[static_cast<size_t>(id)] = ByteLevelDecode(token, to_byte, &in_table);
    m.id_known[static_cast<size_t>(id)] = 1;
    // ignore_merges looks a piece up by its table spelling, which only such tokens have.
    if (m.ignore_merges && in_table) m.byte_vocab[m.id_bytes[static_cast<size_t>(id)]] = id;
  }
  for (AddedToken& a : m.added) {
    if (a.id < 0) continue;
    const auto i = static_cast<size_t>(a.id);
    m.id_bytes[i] = ByteLevelDecode(a.content, to_byte, &in_table);
    m.id_known[i] = 1;
    m.id_special[i] = a.special ? 1 : 0;
  }
  for (uint32_t b = 0; b < 256; ++b) {
    std::string ch;
    AppendCodepoint(to_cp[b], &ch);
    const auto it = m.vocab.find(ch);
    m.byte_id[b] = it == m.vocab.end() ? -1 : it->second;
    for (const char c : ch) {
      char hex[8];
      std::snprintf(hex, sizeof(hex), "<0x%02X>", static_cast<uint8_t>(c));
      const auto fb = m.vocab.find(std::string_view(hex));
      if (fb == m.vocab.end()) {
        m.fallback_ids[b].clear();
        break;
      }
      m.fallback_ids[b].push_back(fb->second);
    }
  }
  // Normalized added tokens are looked for in normalized text, so in their normalized form.
  for (AddedToken& a : m.added) {
    if (a.normalized && m.nfc) {
      char* nfc = reinterpret_cast<char*>(
          utf8proc_NFC(reinterpret_cast<const utf8proc_uint8_t*>(a.content.c_str())));
      if (nfc != nullptr) a.content = nfc;
      std::free(nfc);
    }
  }
  for (const AddedToken& a : m.added) (a.normalized ? m.normalized_added : m.raw_added).Add(&a);
}

// bos_token / eos_token are a string or {"content": ...}; the generation config's ids are a
// number or a list.
std::optional<int32_t> ConfigToken(const Json& config, const char* key, const Tokenizer& t) {
  if (!config.is_object() || !config.contains(key)) return std::nullopt;
  const Json& v = config[key];
  if (v.is_string()) return t.TokenId(v.get<std::string>());
  if (v.is_object() && v.contains("content")) return t.TokenId(v["content"].get<std::string>());
  return std::nullopt;
}

std::vector<int32_t> ConfigIds(const Json& config, const char* key) {
  std::vector<int32_t> ids;
  if (!config.is_object() || !config.contains(key)) return ids;
  const Json& v = config[key];
  if (v.is_number_integer()) ids.push_back(v.get<int32_t>());
  if (v.is_array()) {
    for (const Json& e : v) {
      if (e.is_number_integer()) ids.push_back(e.get<int32_t>());
    }
  }
  return ids;
}

}  // namespace

Result<Tokenizer> Tokenizer::FromJson(std::string_view tokenizer_json,
                                      std::string_view tokenizer_config_json,
                                      std::string_view generation_config_json) {
  auto impl = std::make_shared<Impl>();
  Impl& m = *impl;
  Json tok_config, gen_config;
  try {
    auto root = ParseJson(tokenizer_json, "tokenizer.json");
    if (!root.ok()) return root.status();
    const Json& r = root.value();
    if (!r.is_object()) return Status::Corruption("tokenizer.json: not a JSON object");
    KIV_RETURN_IF_ERROR(LoadModel(r.at("model"), m));
    KIV_RETURN_IF_ERROR(LoadNormalizer(r.value("normalizer", Json()), m));
    KIV_RETURN_IF_ERROR(LoadPreTokenizer(r.value("pre_tokenizer", Json()), m));
    KIV_RETURN_IF_ERROR(LoadDecoder(r.value("decoder", Json())));
    KIV_RETURN_IF_ERROR(LoadPostProcessor(r.value("post_processor", Json()), r, m));
    KIV_RETURN_IF_ERROR(LoadAddedTokens(r.value("added_tokens", Json::array()), m));
    if (!tokenizer_config_json.empty()) {
      auto c = ParseJson(tokenizer_config_json, "tokenizer_config.json");
      if (!c.ok()) return c.status();
      tok_config = std::move(c).value();
    }
    if (!generation_config_json.empty()) {
      auto c = ParseJson(generation_config_json, "generation_config.json");
      if (!c.ok()) return c.status();
      gen_config = std::move(c).value();
    }
  } catch (const Json::exception& e) {
    return Status::Corruption(std::string("tokenizer.json: unexpected structure: ") + e.what());
  }
  // A byte-level BPE maps bytes to characters in its last pre-tokenizer step; without it the
  // vocabulary's spellings do not match the text.
  if (m.byte_level_steps != 1 || !m.byte_level_last) {
    return NotSupported("pre-tokenizer", "without a final ByteLevel step");
  }
  BuildTables(m);
  auto space = Regex::Compile(R"(\s)", false), word = Regex::Compile(R"(\w)", false);
  if (!space.ok()) return space.status();
  if (!word.ok()) return word.status();
  m.space_char = std::move(space).value();
  m.word_char = std::move(word).value();
  m.fingerprint = XXH3_64bits(tokenizer_json.data(), tokenizer_json.size());

  Tokenizer t(impl);
  m.bos = ConfigToken(tok_config, "bos_token", t).value_or(-1);
  m.eos = ConfigToken(tok_config, "eos_token", t).value_or(-1);
  const std::vector<int32_t> gen_bos = ConfigIds(gen_config, "bos_token_id");
  const std::vector<int32_t> gen_eos = ConfigIds(gen_config, "eos_token_id");
  if (m.bos < 0 && !gen_bos.empty()) m.bos = gen_bos[0];
  if (m.eos < 0 && !gen_eos.empty()) m.eos = gen_eos[0];
  if (m.eos >= 0) m.stops.push_back(m.eos);
  for (const int32_t id : gen_eos) {
    if (std::find(m.stops.begin(), m.stops.end(), id) == m.stops.end()) m.stops.push_back(id);
  }
  return t;
}

Result<Tokenizer> Tokenizer::Load(const std::string& model_dir) {
  const std::string dir =
      model_dir.empty() || model_dir.back() == '/' ? model_dir : model_dir + "/";
  auto json = ReadFileToString(dir + "tokenizer.json");
  if (!json.ok()) return json.status();
  std::string config, generation;
  for (auto [name, dst] : {std::pair{"tokenizer_config.json", &config},
                           std::pair{"generation_config.json", &generation}}) {
    if (!FileExists(dir + name)) continue;
    auto data = ReadFileToString(dir + name);
    if (!data.ok()) return data.status();
    *dst = std::move(data).value();
  }
  auto t = FromJson(json.value(), config, generation);
  if (!t.ok() && t.status().code() == Status::Code::kNotImplemented) {
    // Name the folder too: "not implemented: tokenizer.json model type 'Unigram' ... (in DIR)".
    constexpr std::string_view kPrefix = "not implemented: ";
    std::string m = t.status().message();
    if (m.starts_with(kPrefix)) m.erase(0, kPrefix.size());
    return Status::NotImplemented(m + " (in " + dir + ")");
  }
  return t;
}

}  // namespace kiv
