// Chat templates rendered in C++. See chat_template.h for the formats; each renderer below
// quotes the Jinja it stands for.
#include "runtime/chat_template.h"
#include "storage/mapped_file.h"

#include <cerrno>
#include <cstdio>
#include <ctime>
#include <nlohmann/json.hpp>
#include <utility>

namespace kiv {
namespace {

using Json = nlohmann::json;

// Jinja's trim filter is Python's str.strip(): it removes the characters for which
// str.isspace() is true, at both ends.
bool IsPythonSpace(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 ||
         cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
         cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

// The code point starting at s[i] and its length; invalid bytes count as one non-space unit.
std::pair<uint32_t, size_t> DecodeAt(std::string_view s, size_t i) {
  const auto b0 = static_cast<uint8_t>(s[i]);
  size_t len = b0 < 0x80 ? 1 : b0 >= 0xF0 ? 4 : b0 >= 0xE0 ? 3 : b0 >= 0xC0 ? 2 : 1;
  if (i + len > s.size()) return {0xFFFD, 1};
  uint32_t cp = len == 1 ? b0 : b0 & (0x7F >> len);
  for (size_t k = 1; k < len; ++k) {
    const auto b = static_cast<uint8_t>(s[i + k]);
    if ((b & 0xC0) != 0x80) return {0xFFFD, 1};
    cp = (cp << 6) | (b & 0x3F);
  }
  return {cp, len};
}

std::string_view TrimPython(std::string_view s) {
  size_t begin = 0;
  while (begin < s.size()) {
    const auto [cp, len] = DecodeAt(s, begin);
    if (!IsPythonSpace(cp)) break;
    begin += len;
  }
  size_t end = s.size();
  while (end > begin) {
    size_t start = end - 1;
    while (start > begin && (static_cast<uint8_t>(s[start]) & 0xC0) == 0x80) --start;
    const auto [cp, len] = DecodeAt(s, start);
    if (start + len != end || !IsPythonSpace(cp)) break;
    end = start;
  }
  return s.substr(begin, end - begin);
}

// ChatML templates put their default system message in a string literal:
//   '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, ...<|im_end|>\n'
// (SmolLM2 has a real newline there, Qwen2.5 the escape \n). A literal that is cut by an
// expression ('<|im_start|>system\n' + messages[0]['content'] ...) is not a default.
std::optional<std::string> FindDefaultSystem(std::string_view jinja) {
  constexpr std::string_view kOpen = "<|im_start|>system";
  constexpr std::string_view kClose = "<|im_end|>";
  for (size_t at = jinja.find(kOpen); at != std::string_view::npos;
       at = jinja.find(kOpen, at + 1)) {
    if (at == 0) continue;
    const char quote = jinja[at - 1];
    if (quote != '\'' && quote != '"') continue;
    size_t i = at + kOpen.size();
    if (jinja.substr(i, 1) == "\n") {
      i += 1;
    } else if (jinja.substr(i, 2) == "\\n") {
      i += 2;
    } else {
      continue;
    }
    const size_t end = jinja.find(kClose, i);
    if (end == std::string_view::npos) continue;
    std::string text;
    bool literal = true;
    for (size_t k = i; k < end && literal; ++k) {
      const char c = jinja[k];
      if (c == quote || c == '{' || c == '}') literal = false;
      if (c != '\\') {
        text += c;
        continue;
      }
      if (++k >= end) break;
      const char e = jinja[k];
      text += e == 'n' ? '\n' : e == 't' ? '\t' : e;
    }
    if (literal && !text.empty()) return text;
  }
  return std::nullopt;
}

// Names the family of a template kiv does not render, for the refusal.
std::string KnownMarkers(std::string_view jinja) {
  static const std::pair<std::string_view, std::string_view> kMarkers[] = {
      {"[INST]", "[INST] (Mistral, Llama-2)"},
      {"<start_of_turn>", "<start_of_turn> (Gemma)"},
      {"<|user|>", "<|user|> (Phi-3, Zephyr)"},
      {"<|START_OF_TURN_TOKEN|>", "<|START_OF_TURN_TOKEN|> (Command-R)"},
      {"<\xEF\xBD\x9CUser\xEF\xBD\x9C>", "<\xEF\xBD\x9CUser\xEF\xBD\x9C> (DeepSeek)"},
      {"<|turn>", "<|turn> (Gemma 4)"},
      {"### Instruction", "### Instruction (Alpaca)"},
  };
  std::string found;
  for (const auto& [marker, name] : kMarkers) {
    if (jinja.find(marker) == std::string_view::npos) continue;
    found += found.empty() ? "" : ", ";
    found += name;
  }
  return found;
}

std::string Today() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  localtime_r(&now, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%d %b %Y", &tm);
  return buf;
}

// Jinja for one message, SmolLM2 (Qwen2's says the same for plain messages):
//   {% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system
//   ...<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' +
//   message['content'] + '<|im_end|>' + '\n'}} ... {{ '<|im_start|>assistant\n' }}
std::string RenderChatML(const ChatTemplate& t, const std::vector<ChatMessage>& messages,
                         bool add_generation_prompt) {
  std::string out;
  if (!messages.empty() && messages[0].role != "system" && t.default_system) {
    out += "<|im_start|>system\n" + *t.default_system + "<|im_end|>\n";
  }
  for (const ChatMessage& m : messages) {
    out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
  }
  if (add_generation_prompt) out += "<|im_start|>assistant\n";
  return out;
}

// Llama-3:  {% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'
//   + message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content =
//   bos_token + content %}{% endif %} ... '<|start_header_id|>assistant<|end_header_id|>\n\n'
// Llama-3.1 and later (without tools): bos_token, then always a system block
//   "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
//   "Today Date: " + date_string + "\n\n" + system_message|trim + "<|eot_id|>"
// taking the first message when it is a system message, then the others as in Llama-3.
std::string RenderLlama3(const ChatTemplate& t, const std::vector<ChatMessage>& messages,
                         bool add_generation_prompt) {
  auto block = [](std::string_view role, std::string_view content) {
    std::string b = "<|start_header_id|>";
    b += role;
    b += "<|end_header_id|>\n\n";
    b += TrimPython(content);
    b += "<|eot_id|>";
    return b;
  };
  std::string out;
  size_t first = 0;
  if (t.llama3_date_header) {
    std::string_view system;
    if (!messages.empty() && messages[0].role == "system") {
      system = messages[0].content;
      first = 1;
    }
    out += t.bos_token;
    out += "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n";
    out += "Today Date: " + t.date_string + "\n\n";
    out += TrimPython(system);
    out += "<|eot_id|>";
  } else if (!messages.empty()) {
    out += t.bos_token;
  }
  for (size_t i = first; i < messages.size(); ++i) {
    out += block(messages[i].role, messages[i].content);
  }
  if (add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
  return out;
}

}  // namespace

Result<ChatTemplate> ChatTemplate::Detect(std::string_view jinja, std::string bos_token) {
  ChatTemplate t;
  if (jinja.find("<|im_start|>") != std::string_view::npos) {
    t.format = ChatFormat::kChatML;
    t.default_system = FindDefaultSystem(jinja);
    return t;
  }
  if (jinja.find("<|start_header_id|>") != std::string_view::npos) {
    t.format = ChatFormat::kLlama3;
    // Templates write bos_token; a few spell <|begin_of_text|> out.
    if (jinja.find("bos_token") != std::string_view::npos) {
      t.bos_token = std::move(bos_token);
    } else if (jinja.find("<|begin_of_text|>") != std::string_view::npos) {
      t.bos_token = "<|begin_of_text|>";
    }
    t.llama3_date_header = jinja.find("Cutting Knowledge Date") != std::string_view::npos;
    if (t.llama3_date_header) {
      constexpr std::string_view kSet = "date_string = \"";
      const size_t at = jinja.find(kSet);
      if (jinja.find("strftime_now") != std::string_view::npos) {
        t.date_string = Today();  // transformers defines strftime_now, so this branch wins
      } else if (at != std::string_view::npos) {
        const size_t begin = at + kSet.size();
        t.date_string = std::string(jinja.substr(begin, jinja.find('"', begin) - begin));
      } else {
        t.date_string = "26 Jul 2024";
      }
    }
    return t;
  }
  const std::string found = KnownMarkers(jinja);
  const std::string opening(jinja.substr(0, 60));
  return Status::NotImplemented(
      "chat template " +
      (found.empty() ? "with no known markers (it begins '" + opening + "')"
                     : "with the markers " + found) +
      ": kiv renders ChatML (<|im_start|>) and Llama-3 (<|start_header_id|>) templates");
}

Result<ChatTemplate> ChatTemplate::Load(const std::string& model_dir) {
  const std::string dir =
      model_dir.empty() || model_dir.back() == '/' ? model_dir : model_dir + "/";
  std::string jinja, bos_token;
  Json config;
  auto config_text = ReadFileToString(dir + "tokenizer_config.json");
  if (config_text.ok()) {
    config = Json::parse(config_text.value(), nullptr, /*allow_exceptions=*/false);
    if (config.is_discarded()) {
      return Status::Corruption(dir + "tokenizer_config.json: malformed JSON");
    }
    if (config.is_object() && config.contains("bos_token")) {
      const Json& b = config["bos_token"];
      if (b.is_string()) bos_token = b.get<std::string>();
      if (b.is_object() && b.contains("content") && b["content"].is_string()) {
        bos_token = b["content"].get<std::string>();
      }
    }
  } else if (config_text.status().code() != Status::Code::kNotFound) {
    return config_text.status();
  }
  auto file = ReadFileToString(dir + "chat_template.jinja");
  if (file.ok()) {
    jinja = std::move(file).value();
  } else if (file.status().code() != Status::Code::kNotFound) {
    return file.status();
  } else if (config.is_object() && config.contains("chat_template")) {
    const Json& c = config["chat_template"];
    if (c.is_string()) jinja = c.get<std::string>();
    if (c.is_array()) {  // [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
      for (const Json& named : c) {
        if (!named.is_object() || !named.contains("template") || !named["template"].is_string())
          continue;
        if (jinja.empty() || named.value("name", "") == "default") jinja = named["template"];
      }
    }
  }
  if (jinja.empty()) {
    return Status::NotFound("no chat template in " + dir +
                            ": neither chat_template.jinja nor tokenizer_config.json's "
                            "chat_template");
  }
  return Detect(jinja, std::move(bos_token));
}

std::string ApplyChatTemplate(const ChatTemplate& tmpl, const std::vector<ChatMessage>& messages,
                              bool add_generation_prompt) {
  switch (tmpl.format) {
    case ChatFormat::kChatML:
      return RenderChatML(tmpl, messages, add_generation_prompt);
    case ChatFormat::kLlama3:
      return RenderLlama3(tmpl, messages, add_generation_prompt);
  }
  return {};
}

}  // namespace kiv
