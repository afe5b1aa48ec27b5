// Tokenizer: byte-level BPE read from a HuggingFace tokenizer.json, for the Llama family
// (SmolLM2, Llama-3, Qwen2). No LibTorch.
//
// Encode follows the `tokenizers` library step by step, so ids match it exactly:
//   1. added tokens (special or not) are found literally, leftmost-longest, and never split;
//   2. the text between them is normalized (none, or NFC for Qwen2);
//   3. pre-tokenized by the file's Sequence of Split (regex or string), Digits and ByteLevel
//      (the GPT-2 regex), each piece on its own, so a lookahead never sees past a piece;
//   4. each piece's bytes are merged by rank (BPE), with a per-call cache of repeated pieces.
// Anything else in a tokenizer.json (Unigram or WordPiece models, Metaspace, other normalizers
// or decoders) is refused by name when the file is loaded, not guessed at.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "storage/status.h"

namespace kiv {

class Tokenizer {
 public:
  // Reads MODEL_DIR/tokenizer.json, and where present tokenizer_config.json (bos_token,
  // eos_token) and generation_config.json (bos_token_id, eos_token_id).
  static Result<Tokenizer> Load(const std::string& model_dir);
  // The same from the files' contents; the configs may be empty. For tests and for callers that
  // already hold the bytes.
  static Result<Tokenizer> FromJson(std::string_view tokenizer_json,
                                    std::string_view tokenizer_config_json = {},
                                    std::string_view generation_config_json = {});

  // Text to ids. Invalid UTF-8 in `text` is read as U+FFFD, as Python's
  // bytes.decode("utf-8", "replace") would. add_special adds what the file's post-processor
  // adds (Llama-3: <|begin_of_text|> first; SmolLM2 and Qwen2: nothing), as the `tokenizers`
  // library does with add_special_tokens=True.
  std::vector<int32_t> Encode(std::string_view text, bool add_special = false) const;

  // Ids to text, invalid UTF-8 replaced by U+FFFD (maximal subparts, as Rust's
  // String::from_utf8_lossy). Ids outside the vocabulary are dropped, as in `tokenizers`.
  // skip_special drops special added tokens (<|im_end|>, <|eot_id|>, ...).
  std::string Decode(std::span<const int32_t> ids, bool skip_special = false) const;

  // The bytes one token stands for (not yet UTF-8 checked); empty for an unknown id.
  std::string_view TokenBytes(int32_t id) const;
  bool IsSpecial(int32_t id) const;

  // -1 where the model names none.
  int32_t bos_id() const;
  int32_t eos_id() const;
  // Every id that ends a turn: eos_id() and generation_config.json's eos_token_id list
  // (Llama-3.1 lists three).
  const std::vector<int32_t>& stop_ids() const;
  bool IsStop(int32_t id) const;

  // The id of one token by its vocabulary spelling (byte-level form, e.g. "Ġthe"), or of an
  // added token by its content ("<|im_end|>").
  std::optional<int32_t> TokenId(std::string_view token) const;
  // One past the largest id of the vocabulary and the added tokens.
  int32_t vocab_size() const;
  // XXH3-64 of the tokenizer.json bytes: archives record it, so a session refuses a different
  // tokenizer.
  uint64_t fingerprint() const;

  struct Impl;

 private:
  explicit Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  // Immutable after loading, so copies share it and Encode may run on several threads.
  std::shared_ptr<const Impl> impl_;
  friend class StreamDecoder;
};

// Turns ids into text as they are generated. A token may end in the middle of a UTF-8 character
// (byte-level BPE splits them); those bytes are held back until the character is complete, so
// every returned piece is valid UTF-8 and the concatenation of all pieces, with Finish(), equals
// Decode() of all the ids.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer, bool skip_special = false);
  // The text that is complete after this token; often empty or a part of a word.
  std::string Push(int32_t id);
  // Whatever is held back, with U+FFFD for an incomplete character. Resets the decoder.
  std::string Finish();

 private:
  std::shared_ptr<const Tokenizer::Impl> impl_;
  bool skip_special_;
  std::string pending_;  // bytes of an incomplete UTF-8 character, at most 3
};

// Appends `bytes` to `out` as UTF-8, each maximal invalid subpart replaced by U+FFFD.
void AppendUtf8Lossy(std::string_view bytes, std::string* out);

}  // namespace kiv
