// The tokenizer against the Python `tokenizers` library, and the chat templates against
// transformers' apply_chat_template.
//
// Two kinds of case:
//   - with the fetched SmolLM2 (tools/model/fetch_model.sh) and the Austen text
//     (tools/data/austen.sh): ids identical to the library over the whole text, and over a
//     multilingual stress text under Llama-3's, Qwen2's, GPT-2's and every Split behavior's
//     pre-tokenizers. The references come from tools/data/reference_tokens.py, which this test
//     runs itself when they are missing (into ./tokenizer_reference/, beside the test binary).
//     Without the model they print why they were skipped.
//   - with a tiny tokenizer.json written here: merge order, bytes outside the vocabulary, added
//     tokens, streaming decode, and the errors for files kiv cannot read.
#include "runtime/tokenizer.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <filesystem>
#include <string>
#include <tuple>
#include <vector>

#include "runtime/chat_template.h"

namespace kiv {
namespace {

using Json = nlohmann::json;

std::string ReadText(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

bool Exists(const std::string& path) { return std::ifstream(path).good(); }

std::vector<int32_t> ReadIds(const std::string& path) {
  const std::string bytes = ReadText(path);
  std::vector<int32_t> ids(bytes.size() / 4);
  for (size_t i = 0; i < ids.size(); ++i) {
    uint32_t v = 0;
    for (int b = 3; b >= 0; --b) v = (v << 8) | static_cast<uint8_t>(bytes[i * 4 + b]);
    ids[i] = static_cast<int32_t>(v);
  }
  return ids;
}

std::string CacheDir() {
  if (const char* c = std::getenv("KIV_CACHE"); c != nullptr && *c != '\0') return c;
  const char* home = std::getenv("HOME");
  return std::string(home != nullptr ? home : "") + "/.cache/kiv";
}
std::string ModelDir() { return CacheDir() + "/models/SmolLM2-135M-Instruct"; }
std::string AustenPath() { return CacheDir() + "/text/austen/all.txt"; }

std::string ShellQuote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// The folder of references for this tokenizer.json, text and script, made by
// reference_tokens.py when missing; empty (with the reason in *why) when it cannot be.
std::string ReferenceDir(const Tokenizer& tokenizer, const std::string& text, std::string* why) {
  const std::string script = std::string(KIV_SOURCE_DIR) + "/tools/data/reference_tokens.py";
  char key[64];
  std::snprintf(key, sizeof(key), "%016llx-%016zx-%016zx",
                static_cast<unsigned long long>(tokenizer.fingerprint()),
                std::hash<std::string>{}(text), std::hash<std::string>{}(ReadText(script)));
  const std::string dir = "tokenizer_reference/" + std::string(key);
  if (Exists(dir + "/manifest.json")) return dir;
  if (std::system("python3 -c 'import tokenizers, transformers' >/dev/null 2>&1") != 0) {
    *why = "python3 with tokenizers and transformers is not available to make the references";
    return {};
  }
  std::filesystem::create_directories("tokenizer_reference");
  const std::string cmd = "python3 " + ShellQuote(script) + " all --model " +
                          ShellQuote(ModelDir()) + " --text " + ShellQuote(AustenPath()) +
                          " --out-dir " + ShellQuote(dir) + " > " + ShellQuote(dir + ".log") +
                          " 2>&1";
  MESSAGE("making the reference ids: " << cmd);
  if (std::system(cmd.c_str()) != 0 || !Exists(dir + "/manifest.json")) {
    *why = "reference_tokens.py failed; see " + dir + ".log";
    return {};
  }
  return dir;
}

// How many ids agree, position by position, and a note on the first that does not.
size_t CountIdentical(const std::vector<int32_t>& got, const std::vector<int32_t>& want,
                      std::string* first_difference) {
  size_t same = 0;
  for (size_t i = 0; i < std::min(got.size(), want.size()); ++i) {
    if (got[i] == want[i]) {
      ++same;
    } else if (first_difference->empty()) {
      *first_difference = "first difference at id " + std::to_string(i) + ": " +
                          std::to_string(got[i]) + " vs " + std::to_string(want[i]);
    }
  }
  return same;
}

bool IsValidUtf8(const std::string& s) {
  std::string copy;
  AppendUtf8Lossy(s, &copy);
  return copy == s && s.find("\xEF\xBF\xBD") == std::string::npos;
}

struct ModelFixture {
  std::string skipped;  // why, when the model-dependent cases cannot run
  std::optional<Tokenizer> tokenizer;
  std::string text;
  std::string ref;

  ModelFixture() {
    if (!Exists(ModelDir() + "/tokenizer.json")) {
      skipped = ModelDir() + " not found (tools/model/fetch_model.sh fetches it)";
      return;
    }
    if (!Exists(AustenPath())) {
      skipped = AustenPath() + " not found (tools/data/austen.sh fetches it)";
      return;
    }
    auto t = Tokenizer::Load(ModelDir());
    REQUIRE_MESSAGE(t.ok(), t.status().ToString());
    tokenizer = std::move(t).value();
    text = ReadText(AustenPath());
    ref = ReferenceDir(*tokenizer, text, &skipped);
  }
  bool Skip(const std::string& what) const {
    if (skipped.empty()) return false;
    MESSAGE("skipped " << what << ": " << skipped);
    return true;
  }
};

ModelFixture& Model() {
  static ModelFixture fixture;
  return fixture;
}

// ---------------------------------------------------------------------------------------------
// With the model

TEST_CASE("SmolLM2: the whole Austen text encodes to the tokenizers library's ids") {
  ModelFixture& m = Model();
  if (m.Skip("the Austen comparison")) return;
  const Tokenizer& t = *m.tokenizer;
  CHECK(t.bos_id() == 1);
  CHECK(t.eos_id() == 2);
  CHECK(t.stop_ids() == std::vector<int32_t>{2});
  CHECK(t.vocab_size() == 49152);

  const auto start = std::chrono::steady_clock::now();
  const std::vector<int32_t> ids = t.Encode(m.text);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const std::vector<int32_t> want = ReadIds(m.ref + "/austen.u32");
  std::string difference;
  const size_t same = CountIdentical(ids, want, &difference);
  MESSAGE("tokenizer: " << same << " of " << want.size() << " ids identical (" << ids.size()
                        << " encoded from " << m.text.size() << " bytes in " << seconds << " s) "
                        << difference);
  CHECK(ids.size() == want.size());
  CHECK(same == want.size());
  CHECK(t.Decode(ids) == m.text);
}

TEST_CASE("SmolLM2 and other pre-tokenizers on the stress text") {
  ModelFixture& m = Model();
  if (m.Skip("the stress text")) return;
  const std::string stress = ReadText(m.ref + "/stress.txt");
  const Json manifest = Json::parse(ReadText(m.ref + "/manifest.json"));
  SUBCASE("SmolLM2 itself") {
    const std::vector<int32_t> ids = m.tokenizer->Encode(stress);
    std::string difference;
    const std::vector<int32_t> want = ReadIds(m.ref + "/stress.u32");
    const size_t same = CountIdentical(ids, want, &difference);
    MESSAGE("stress text: " << same << " of " << want.size() << " ids identical " << difference);
    CHECK(ids == want);
    CHECK(m.tokenizer->Decode(ids) == stress);
  }
  for (const std::string name : manifest.at("variants")) {
    SUBCASE(name.c_str()) {
      const std::string base = m.ref + "/variant_" + name;
      auto t = Tokenizer::FromJson(ReadText(base + ".json"));
      REQUIRE_MESSAGE(t.ok(), t.status().ToString());
      for (const auto& [suffix, text, special] :
           {std::tuple{std::string(".stress.u32"), &stress, false},
            {std::string(".stress_special.u32"), &stress, true},
            {std::string(".austen.u32"), &m.text, false}}) {
        const std::vector<int32_t> want = ReadIds(base + suffix);
        std::string difference;
        const size_t same = CountIdentical(t->Encode(*text, special), want, &difference);
        MESSAGE(name << suffix << ": " << same << " of " << want.size() << " ids identical "
                     << difference);
        CHECK(same == want.size());
        CHECK(t->Encode(*text, special).size() == want.size());
      }
    }
  }
}

TEST_CASE("SmolLM2: decoding windows that cut characters, and streaming") {
  ModelFixture& m = Model();
  if (m.Skip("decoding")) return;
  const Tokenizer& t = *m.tokenizer;
  const Json windows = Json::parse(ReadText(m.ref + "/decode.json"));
  size_t same = 0;
  for (const Json& w : windows) {
    const std::vector<int32_t> ids = w.at("ids");
    same += t.Decode(ids) == w.at("text").get<std::string>() &&
            t.Decode(ids, /*skip_special=*/true) == w.at("text_skip_special").get<std::string>();
  }
  MESSAGE("decode: " << same << " of " << windows.size() << " windows identical");
  CHECK(same == windows.size());

  // Streaming the stress text's ids one by one gives valid UTF-8 pieces that join to Decode.
  const std::vector<int32_t> ids = ReadIds(m.ref + "/stress.u32");
  StreamDecoder stream(t);
  std::string joined;
  bool all_valid = true;
  for (const int32_t id : ids) {
    const std::string piece = stream.Push(id);
    all_valid = all_valid && IsValidUtf8(piece);
    joined += piece;
  }
  joined += stream.Finish();
  CHECK(all_valid);
  CHECK(joined == t.Decode(ids));
}

TEST_CASE("SmolLM2: chat template as transformers renders it, special tokens as one id") {
  ModelFixture& m = Model();
  if (m.Skip("the chat template")) return;
  const Tokenizer& t = *m.tokenizer;
  auto own = ChatTemplate::Load(ModelDir());
  REQUIRE_MESSAGE(own.ok(), own.status().ToString());
  CHECK(own->format == ChatFormat::kChatML);
  const Json ref = Json::parse(ReadText(m.ref + "/chat.json"));
  auto llama3 = ChatTemplate::Detect(ref.at("llama3_template").get<std::string>(),
                                     ref.at("bos_token").get<std::string>());
  REQUIRE(llama3.ok());
  CHECK(llama3->format == ChatFormat::kLlama3);
  for (const Json& c : ref.at("cases")) {
    std::vector<ChatMessage> messages;
    for (const Json& msg : c.at("messages")) messages.push_back({msg["role"], msg["content"]});
    const ChatTemplate& tmpl = c.at("template") == "model" ? *own : *llama3;
    const std::string got = ApplyChatTemplate(tmpl, messages, c.at("add_generation_prompt"));
    CAPTURE(c.at("name").get<std::string>());
    CHECK(got == c.at("expected").get<std::string>());
    CHECK(t.Encode(got) == c.at("expected_ids").get<std::vector<int32_t>>());
  }

  const std::vector<int32_t> ids = t.Encode("<|im_start|>user\nHi<|im_end|>\n<|im_end|>");
  REQUIRE(ids.size() >= 5);
  CHECK(ids.front() == 1);
  CHECK(std::count(ids.begin(), ids.end(), 2) == 2);
  CHECK(ids.back() == 2);
  CHECK(t.TokenId("<|im_end|>") == 2);
  CHECK(t.IsSpecial(2));
  CHECK(t.Decode(ids, /*skip_special=*/true) == "user\nHi\n");
  CHECK(t.Encode("Hi", /*add_special=*/true) == t.Encode("Hi"));  // SmolLM2 adds no bos
}

// ---------------------------------------------------------------------------------------------
// Without the model: a tiny byte-level tokenizer.json.
//   bytes: a b c Ġ(space) Ã © (é is C3 A9)    merges: a b, ab c, Ġ a, b c, Ã ©
//   added: <|end|> (special), id 16: the library numbers added tokens that are not in the
//   vocabulary from its size, whatever id the file gives

std::string TinyJson(const std::string& merges, const std::string& model_extra = "",
                     const std::string& pre = "") {
  const std::string pre_tokenizer =
      pre.empty() ? R"({"type": "ByteLevel", "add_prefix_space": false, "use_regex": true})" : pre;
  return R"({"version": "1.0",
    "added_tokens": [{"id": 20, "content": "<|end|>", "single_word": false, "lstrip": false,
                      "rstrip": false, "normalized": false, "special": true}],
    "normalizer": null,
    "pre_tokenizer": )" +
         pre_tokenizer + R"(,
    "post_processor": null,
    "decoder": {"type": "ByteLevel", "add_prefix_space": true, "use_regex": true},
    "model": {"type": "BPE", "dropout": null, "unk_token": null, )" +
         model_extra + R"(
      "vocab": {"a": 0, "b": 1, "c": 2, "Ġ": 3, "Ã": 4, "©": 5, "ab": 6, "abc": 7, "Ġa": 8,
                "bc": 9, "Ã©": 10, "<unk>": 11, "<0x7A>": 12, "<0xC3>": 13, "<0xA2>": 14,
                "ac": 15},
      "merges": )" +
         merges + "}}";
}

constexpr const char* kMergesAsPairs =
    R"([["a", "b"], ["ab", "c"], ["Ġ", "a"], ["b", "c"], ["Ã", "©"]])";
constexpr const char* kMergesAsStrings = R"(["a b", "ab c", "Ġ a", "b c", "Ã ©"])";

Tokenizer Tiny(const std::string& json) {
  auto t = Tokenizer::FromJson(json, R"({"eos_token": "<|end|>"})");
  REQUIRE_MESSAGE(t.ok(), t.status().ToString());
  return std::move(t).value();
}

using Ids = std::vector<int32_t>;

TEST_CASE("tiny: merges by rank, in either spelling") {
  const Tokenizer t = Tiny(TinyJson(kMergesAsPairs));
  CHECK(t.Encode("abc") == Ids{7});           // a b (rank 0), then ab c (rank 1)
  CHECK(t.Encode("abc ab") == Ids{7, 3, 6});  // " ab": a b (rank 0) before Ġ a (rank 2)
  CHECK(t.Encode(" ac") == Ids{8, 2});
  CHECK(t.Encode("bca") == Ids{9, 0});
  CHECK(t.eos_id() == 16);
  CHECK(t.bos_id() == -1);
  CHECK(t.vocab_size() == 17);
  // b c ranked first: "abc" is then a + bc, and no merge joins those.
  const Tokenizer swapped = Tiny(TinyJson(R"([["b", "c"], ["a", "b"], ["ab", "c"]])"));
  CHECK(swapped.Encode("abc") == Ids{0, 9});
  const Tokenizer strings = Tiny(TinyJson(kMergesAsStrings));
  CHECK(strings.Encode("abc ab bca é") == t.Encode("abc ab bca é"));
  CHECK(strings.fingerprint() != t.fingerprint());
}

TEST_CASE("tiny: non-ASCII bytes, byte fallback, unknown bytes") {
  const Tokenizer t = Tiny(TinyJson(kMergesAsPairs));
  CHECK(t.Encode("é") == Ids{10});  // C3 A9 as Ã ©, merged
  CHECK(t.Decode(Ids{10}) == "é");
  CHECK(t.Decode(Ids{4}) == "\xEF\xBF\xBD");  // half a character
  // Bytes with no token are dropped, as the library drops them.
  CHECK(t.Encode("a€b") == Ids{0, 1});
  // byte_fallback looks up <0xXY> for the UTF-8 bytes of each byte's table character: 'z' is
  // itself, <0x7A>; € is E2 82 AC, E2 is â (C3 A2), and 82 and AC have no such tokens here.
  const Tokenizer fallback = Tiny(TinyJson(kMergesAsPairs, R"("byte_fallback": true,)"));
  CHECK(fallback.Encode("z") == Ids{12});
  CHECK(fallback.Encode("a€b") == Ids{0, 13, 14, 1});
  const Tokenizer unk =
      Tiny(TinyJson(kMergesAsPairs, R"("unk_token": "<unk>", "fuse_unk": true,)"));
  CHECK(unk.Encode("a€b") == Ids{0, 11, 1});
  const Tokenizer unfused = Tiny(TinyJson(kMergesAsPairs, R"("unk_token": "<unk>",)"));
  CHECK(unfused.Encode("a€b") == Ids{0, 11, 11, 11, 1});
  // ignore_merges (Llama-3): a piece that is a whole token is taken whole.
  CHECK(t.Encode("ac") == Ids{0, 2});
  CHECK(Tiny(TinyJson(kMergesAsPairs, R"("ignore_merges": true,)")).Encode("ac") == Ids{15});
  // Invalid UTF-8 is read as U+FFFD (EF BF BD), whose bytes have no tokens here.
  CHECK(t.Encode("a\377b") == Ids{0, 1});  // \377 is the byte FF
}

TEST_CASE("tiny: the NFC normalizer (Qwen2) composes before pre-tokenizing") {
  std::string json = TinyJson(kMergesAsPairs);
  const std::string null_normalizer = R"("normalizer": null)";
  json.replace(json.find(null_normalizer), null_normalizer.size(),
               R"("normalizer": {"type": "NFC"})");
  const Tokenizer nfc = Tiny(json);
  CHECK(nfc.Encode("e\xCC\x81") == Ids{10});  // e + U+0301 is é, C3 A9
  CHECK(nfc.Encode("ab\xC3\xA9") == Ids{6, 10});
  CHECK(Tiny(TinyJson(kMergesAsPairs)).Encode("e\xCC\x81").empty());  // no e, no CC 81
}

TEST_CASE("tiny: added tokens are matched literally and never split") {
  const Tokenizer t = Tiny(TinyJson(kMergesAsPairs));
  CHECK(t.Encode("ab<|end|>c") == Ids{6, 16, 2});
  CHECK(t.Encode("<|end|><|end|>") == Ids{16, 16});
  CHECK(t.Encode("abc<|end") == Ids{7});  // a partial one is ordinary text ('<' '|' have no ids)
  CHECK(t.TokenId("<|end|>") == 16);
  CHECK(t.TokenId("Ġa") == 8);
  CHECK(!t.TokenId("zzz").has_value());
  CHECK(t.IsSpecial(16));
  CHECK(t.Decode(Ids{6, 16, 2}) == "ab<|end|>c");
  CHECK(t.Decode(Ids{6, 16, 2}, /*skip_special=*/true) == "abc");
  CHECK(t.Decode(Ids{6, 99, -1, 2}) == "abc");  // unknown ids are dropped
  CHECK(t.IsStop(16));
}

const std::string kFFFD = "\xEF\xBF\xBD";  // U+FFFD, the replacement character

TEST_CASE("tiny: streaming decode holds back a split character") {
  const Tokenizer t = Tiny(TinyJson(kMergesAsPairs));
  StreamDecoder s(t);
  CHECK(s.Push(0) == "a");
  CHECK(s.Push(4).empty());  // Ã = C3, the first byte of é
  CHECK(s.Push(5) == "é");   // © = A9 completes it
  CHECK(s.Push(4).empty());
  CHECK(s.Push(0) == kFFFD + "a");  // C3 then 'a': the C3 can never complete
  CHECK(s.Push(4).empty());
  CHECK(s.Finish() == "\xEF\xBF\xBD");
  CHECK(s.Finish().empty());
  StreamDecoder skipping(t, /*skip_special=*/true);
  CHECK(skipping.Push(16).empty());
  CHECK(skipping.Push(7) == "abc");
}

TEST_CASE("UTF-8 repair matches from_utf8_lossy: one U+FFFD per maximal subpart") {
  const std::string r = "\xEF\xBF\xBD";
  auto lossy = [](std::string_view s) {
    std::string out;
    AppendUtf8Lossy(s, &out);
    return out;
  };
  CHECK(lossy("abc") == "abc");
  CHECK(lossy("\xC3") == r);
  CHECK(lossy("\xE2\x82\x41") == r + "A");    // 41 is A
  CHECK(lossy("\xED\xA0\x80") == r + r + r);  // a surrogate: ED is no prefix of A0
  CHECK(lossy("\xF0\x9F\x98") == r);
  CHECK(lossy("\xF0\x9F\x98\x80") == "\xF0\x9F\x98\x80");
  CHECK(lossy("\xC0\xAF") == r + r);
  CHECK(lossy("\xF4\x90\x80\x80") == r + r + r + r);
}

TEST_CASE("tokenizer.json that kiv cannot read is refused by name") {
  auto malformed = Tokenizer::FromJson(R"({"model": )");
  REQUIRE(!malformed.ok());
  CHECK(malformed.status().code() == Status::Code::kCorruption);
  CHECK(malformed.status().message().find("malformed JSON") != std::string::npos);

  auto unigram = Tokenizer::FromJson(R"({"model": {"type": "Unigram", "vocab": []}})");
  REQUIRE(!unigram.ok());
  CHECK(unigram.status().code() == Status::Code::kNotImplemented);
  CHECK(unigram.status().message().find("'Unigram'") != std::string::npos);

  auto metaspace = Tokenizer::FromJson(
      TinyJson(kMergesAsPairs, "", R"({"type": "Metaspace", "replacement": "▁"})"));
  REQUIRE(!metaspace.ok());
  CHECK(metaspace.status().message().find("pre-tokenizer 'Metaspace'") != std::string::npos);

  auto no_byte_level = Tokenizer::FromJson(
      TinyJson(kMergesAsPairs, "", R"({"type": "Digits", "individual_digits": true})"));
  REQUIRE(!no_byte_level.ok());
  CHECK(no_byte_level.status().message().find("ByteLevel") != std::string::npos);

  auto bad_merge = Tokenizer::FromJson(TinyJson(R"([["a", "zz"]])"));
  REQUIRE(!bad_merge.ok());
  CHECK(bad_merge.status().code() == Status::Code::kCorruption);

  auto bad_regex = Tokenizer::FromJson(TinyJson(kMergesAsPairs, "", R"({"type": "Sequence",
      "pretokenizers": [{"type": "Split", "pattern": {"Regex": "(unclosed"},
                         "behavior": "Isolated", "invert": false},
                        {"type": "ByteLevel", "add_prefix_space": false, "use_regex": false}]})"));
  REQUIRE(!bad_regex.ok());
  CHECK(bad_regex.status().message().find("(unclosed") != std::string::npos);

  auto missing = Tokenizer::Load("/nonexistent/kiv-model");
  REQUIRE(!missing.ok());
  CHECK(missing.status().code() == Status::Code::kNotFound);
  CHECK(missing.status().message().find("/nonexistent/kiv-model/tokenizer.json") !=
        std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// Chat templates without the model.

const std::vector<ChatMessage> kConversation = {
    {"user", "  Hello  "}, {"assistant", "Hi."}, {"user", "Bye\n"}};

TEST_CASE("chat: ChatML with the default system message a template carries") {
  // Qwen2.5 writes its default with the escape \n inside a Jinja string.
  auto qwen = ChatTemplate::Detect(
      "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + "
      "messages[0]['content'] + '<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\nYou are "
      "Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}{%- endif %}");
  REQUIRE(qwen.ok());
  CHECK(qwen->default_system ==
        "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.");
  CHECK(ApplyChatTemplate(*qwen, {{"user", "Hi"}}, true) ==
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
        "assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  CHECK(ApplyChatTemplate(*qwen, {{"system", "S"}, {"user", "Hi"}}, false) ==
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n");
  auto plain = ChatTemplate::Detect(
      "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
      "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}");
  REQUIRE(plain.ok());
  CHECK(!plain->default_system.has_value());
  CHECK(ApplyChatTemplate(*plain, kConversation, false) ==
        "<|im_start|>user\n  Hello  <|im_end|>\n<|im_start|>assistant\nHi.<|im_end|>\n"
        "<|im_start|>user\nBye\n<|im_end|>\n");
}

TEST_CASE("chat: Llama-3 and Llama-3.1 formats") {
  auto llama3 = ChatTemplate::Detect(
      "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ "
      "message['content'] | trim + '<|eot_id|>' %}{% set content = bos_token + content %}",
      "<|begin_of_text|>");
  REQUIRE(llama3.ok());
  CHECK(!llama3->llama3_date_header);
  CHECK(ApplyChatTemplate(*llama3, kConversation, true) ==
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHi.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n");
  // Llama-3.1's opening block, as transformers renders it without tools.
  auto llama31 = ChatTemplate::Detect(
      "{{- bos_token }}{%- if not date_string is defined %}{%- set date_string = \"26 Jul 2024\" "
      "%}{%- endif %}{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}{{- \"Cutting "
      "Knowledge Date: December 2023\\n\" }}<|eot_id|>",
      "<|begin_of_text|>");
  REQUIRE(llama31.ok());
  CHECK(llama31->llama3_date_header);
  CHECK(llama31->date_string == "26 Jul 2024");
  CHECK(ApplyChatTemplate(*llama31, {{"system", " Be brief. "}, {"user", "Hi"}}, true) ==
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge "
        "Date: December 2023\nToday Date: 26 Jul 2024\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n");
  CHECK(ApplyChatTemplate(*llama31, {{"user", "Hi"}}, false) ==
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge "
        "Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>");
}

TEST_CASE("chat: other formats are refused by name") {
  auto mistral = ChatTemplate::Detect("{{ bos_token }}[INST] {{ message['content'] }} [/INST]");
  REQUIRE(!mistral.ok());
  CHECK(mistral.status().code() == Status::Code::kNotImplemented);
  CHECK(mistral.status().message().find("[INST] (Mistral, Llama-2)") != std::string::npos);
  auto unknown = ChatTemplate::Detect("{{ messages }}");
  REQUIRE(!unknown.ok());
  CHECK(unknown.status().message().find("no known markers") != std::string::npos);
  auto missing = ChatTemplate::Load("/nonexistent/kiv-model");
  REQUIRE(!missing.ok());
  CHECK(missing.status().code() == Status::Code::kNotFound);
}

}  // namespace
}  // namespace kiv
