// Chat templates: the prompt text a chat model was trained on, for the two formats kiv runs.
//
// HuggingFace models ship their template as Jinja (chat_template.jinja, or "chat_template" in
// tokenizer_config.json). kiv does not run Jinja: it recognises the format by its markers and
// renders it in C++, byte for byte what transformers' apply_chat_template renders for plain
// text messages (tests/runtime/tokenizer_test.cpp compares them).
//   ChatML (SmolLM2, Qwen2):  <|im_start|>ROLE\nCONTENT<|im_end|>\n ... <|im_start|>assistant\n
//     with the template's default system message first when the conversation has none.
//   Llama-3:  <|begin_of_text|><|start_header_id|>ROLE<|end_header_id|>\n\nCONTENT<|eot_id|>
//     content trimmed; Llama-3.1 and later always open with a system block that carries
//     "Cutting Knowledge Date: December 2023\nToday Date: ...".
// Anything else (Mistral's [INST], Gemma's <start_of_turn>, ...) is refused by name.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "storage/status.h"

namespace kiv {

enum class ChatFormat { kChatML, kLlama3 };

struct ChatMessage {
  std::string role;  // "system", "user", "assistant"
  std::string content;
};

struct ChatTemplate {
  ChatFormat format = ChatFormat::kChatML;
  // ChatML: the system message the template inserts when the first message is not a system
  // message (SmolLM2: "You are a helpful AI assistant named SmolLM, trained by Hugging Face").
  std::optional<std::string> default_system;
  // Llama-3: the template's bos_token, written first.
  std::string bos_token;
  // Llama-3.1 and later: the system block with the knowledge and today's dates.
  bool llama3_date_header = false;
  // "26 Jul 2024" where the template fixes it; Llama-3.2's takes today's date ("%d %b %Y"),
  // filled in by Detect. Set it to make a prompt reproducible.
  std::string date_string;

  // Recognises the format of a Jinja template. bos_token is tokenizer_config.json's.
  static Result<ChatTemplate> Detect(std::string_view jinja, std::string bos_token = {});
  // Reads MODEL_DIR/chat_template.jinja, or else tokenizer_config.json's chat_template.
  static Result<ChatTemplate> Load(const std::string& model_dir);
};

// The prompt for `messages`; with add_generation_prompt, the opening of the assistant's turn.
std::string ApplyChatTemplate(const ChatTemplate& tmpl, const std::vector<ChatMessage>& messages,
                              bool add_generation_prompt);

}  // namespace kiv
