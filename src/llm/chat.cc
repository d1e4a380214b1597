// The OpenAI chat-completions wire format. Every JSON access is guarded: the servers differ in
// which fields they send, send null for "absent", and add unknown fields anywhere
// (shared/protocols/openai.md §2-§4).

#include "llm/chat.h"

#include <algorithm>
#include <utility>

#include "core/utf8.h"

namespace parley::llm {
namespace {

using nlohmann::json;

constexpr size_t kMaxErrorMessage = 200;

// The string at obj[key], or "" when absent, null or not a string.
std::string StringAt(const json& obj, const char* key) {
  if (!obj.is_object()) return {};
  auto it = obj.find(key);
  if (it == obj.end() || !it->is_string()) return {};
  return it->get<std::string>();
}

int64_t IntAt(const json& obj, const char* key) {
  if (!obj.is_object()) return 0;
  auto it = obj.find(key);
  if (it == obj.end()) return 0;
  if (it->is_number_integer() || it->is_number_unsigned()) return it->get<int64_t>();
  if (it->is_number_float()) return static_cast<int64_t>(it->get<double>());
  return 0;
}

const json* Member(const json& obj, const char* key) {
  if (!obj.is_object()) return nullptr;
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

// Message content: a string, or an array of parts whose text parts are concatenated.
std::string ContentText(const json* content) {
  if (content == nullptr) return {};
  if (content->is_string()) return content->get<std::string>();
  std::string out;
  if (content->is_array()) {
    for (const auto& part : *content) {
      if (part.is_string()) {
        out += part.get<std::string>();
      } else {
        out += StringAt(part, "text");
      }
    }
  }
  return out;
}

// `arguments` is normally a JSON string; some servers send the object itself.
std::string ArgumentsText(const json& function) {
  const json* args = Member(function, "arguments");
  if (args == nullptr) return {};
  if (args->is_string()) return args->get<std::string>();
  return args->dump(-1, ' ', false, json::error_handler_t::replace);
}

Usage ParseUsage(const json& chunk) {
  Usage usage;
  const json* u = Member(chunk, "usage");
  if (u == nullptr || !u->is_object()) return usage;
  usage.present = true;
  usage.prompt_tokens = IntAt(*u, "prompt_tokens");
  usage.completion_tokens = IntAt(*u, "completion_tokens");
  usage.total_tokens = IntAt(*u, "total_tokens");
  if (usage.total_tokens == 0) usage.total_tokens = usage.prompt_tokens + usage.completion_tokens;
  return usage;
}

// Cuts `s` to at most `max` bytes without splitting a UTF-8 sequence; control characters become
// spaces so the message stays one log line.
std::string Shorten(std::string_view s, size_t max = kMaxErrorMessage) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\n' || s.front() == '\r' ||
                        s.front() == '\t')) {
    s.remove_prefix(1);
  }
  while (!s.empty() &&
         (s.back() == ' ' || s.back() == '\n' || s.back() == '\r' || s.back() == '\t')) {
    s.remove_suffix(1);
  }
  bool cut = false;
  if (s.size() > max) {
    s = Utf8Prefix(s, max);
    cut = true;
  }
  std::string out(s);
  for (char& c : out) {
    if (static_cast<unsigned char>(c) < 0x20) c = ' ';
  }
  if (cut) out += "...";
  return out;
}

Status StatusForHttp(int http_status, std::string message) {
  if (http_status == 400) return Status::InvalidArgument(std::move(message));
  if (http_status == 401 || http_status == 403) {
    return Status::PermissionDenied(std::move(message));
  }
  if (http_status == 404) return Status::NotFound(std::move(message));
  if (http_status == 408 || http_status == 504) {
    return Status::DeadlineExceeded(std::move(message));
  }
  if (http_status == 429) return Status::ResourceExhausted(std::move(message));
  return Status::Unavailable(std::move(message));
}

// The error's text and its `code`/`type` (string or int; "" when null/absent) from an error
// document of any of the shapes in openai.md §4.
struct ErrorInfo {
  std::string message;
  std::string code;
  int int_code = 0;
};

ErrorInfo ReadError(const json& doc) {
  ErrorInfo info;
  const json* error = Member(doc, "error");
  if (error != nullptr && error->is_string()) {
    info.message = error->get<std::string>();
    return info;
  }
  const json& e = (error != nullptr && error->is_object()) ? *error : doc;
  info.message = StringAt(e, "message");
  if (info.message.empty()) info.message = StringAt(e, "detail");
  if (info.message.empty()) {
    const json* detail = Member(e, "detail");
    if (detail != nullptr) info.message = detail->dump(-1, ' ', false, json::error_handler_t::replace);
  }
  const json* code = Member(e, "code");
  if (code != nullptr && code->is_string()) {
    info.code = code->get<std::string>();
  } else if (code != nullptr && (code->is_number_integer() || code->is_number_unsigned())) {
    info.int_code = code->get<int>();
  }
  if (info.code.empty()) info.code = StringAt(e, "type");
  if (info.message.empty() && error != nullptr && !error->is_object()) {
    info.message = error->dump(-1, ' ', false, json::error_handler_t::replace);
  }
  return info;
}

std::string DescribeError(int http_status, const ErrorInfo& info) {
  std::string out = "HTTP " + std::to_string(http_status);
  if (!info.code.empty()) out += " (" + Shorten(info.code, 64) + ")";
  if (!info.message.empty()) out += ": " + Shorten(info.message);
  return out;
}

}  // namespace

std::string BuildRequestBody(const ChatRequest& request, const BodyOptions& options) {
  json body = json::object();
  body["model"] = options.model;
  json messages = json::array();
  for (const ChatMessage& m : request.messages) {
    json msg = json::object();
    msg["role"] = m.role;
    if (m.role == "assistant" && !m.tool_calls.empty()) {
      msg["content"] = m.content.empty() ? json(nullptr) : json(m.content);
      json calls = json::array();
      for (const ToolCall& call : m.tool_calls) {
        calls.push_back({{"id", call.id},
                         {"type", "function"},
                         {"function", {{"name", call.name}, {"arguments", call.arguments}}}});
      }
      msg["tool_calls"] = std::move(calls);
    } else {
      msg["content"] = m.content;
    }
    if (m.role == "tool") msg["tool_call_id"] = m.tool_call_id;
    messages.push_back(std::move(msg));
  }
  body["messages"] = std::move(messages);
  if (!request.tools.empty()) {
    json tools = json::array();
    for (const ToolSpec& tool : request.tools) {
      json function = {{"name", tool.name}};
      if (!tool.description.empty()) function["description"] = tool.description;
      function["parameters"] = tool.parameters.is_object()
                                   ? tool.parameters
                                   : json{{"type", "object"}, {"properties", json::object()}};
      tools.push_back({{"type", "function"}, {"function", std::move(function)}});
    }
    body["tools"] = std::move(tools);
  }
  if (options.temperature >= 0) body["temperature"] = options.temperature;
  if (options.max_tokens > 0) body["max_tokens"] = options.max_tokens;
  if (request.stream) {
    body["stream"] = true;
    body["stream_options"] = {{"include_usage", true}};
  }
  std::string out = body.dump(-1, ' ', false, json::error_handler_t::replace);
  // dump() grows the string by doubling; the body lives as long as its call (retries reuse it),
  // so give back the slack.
  out.shrink_to_fit();
  return out;
}

Result<ChatResult> ParseCompletion(std::string_view body) {
  const json doc = json::parse(body.begin(), body.end(), nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) return Status::InvalidArgument("completion response is not JSON");
  if (!doc.is_object()) return Status::InvalidArgument("completion response is not an object");
  const json* choices = Member(doc, "choices");
  if (choices == nullptr) {
    if (Member(doc, "error") != nullptr) {
      return Status::InvalidArgument("completion response carries an error object");
    }
    return Status::InvalidArgument("completion response has no choices");
  }
  if (!choices->is_array()) return Status::InvalidArgument("completion choices is not an array");
  ChatResult result;
  result.usage = ParseUsage(doc);
  // The choice with index 0 (n > 1 is never requested); the first one when none says so.
  const json* choice = nullptr;
  for (const auto& c : *choices) {
    if (!c.is_object()) continue;
    if (choice == nullptr || IntAt(c, "index") == 0) {
      choice = &c;
      if (IntAt(c, "index") == 0) break;
    }
  }
  if (choice == nullptr) return result;  // "choices": [] — an empty answer
  result.finish_reason = StringAt(*choice, "finish_reason");
  const json* message = Member(*choice, "message");
  if (message == nullptr || !message->is_object()) return result;
  result.content = ContentText(Member(*message, "content"));
  const json* calls = Member(*message, "tool_calls");
  if (calls != nullptr && calls->is_array()) {
    for (const auto& c : *calls) {
      if (!c.is_object()) continue;
      ToolCall call;
      call.id = StringAt(c, "id");
      if (const json* function = Member(c, "function"); function != nullptr) {
        call.name = StringAt(*function, "name");
        call.arguments = ArgumentsText(*function);
      }
      if (call.id.empty()) call.id = "call_" + std::to_string(result.tool_calls.size());
      result.tool_calls.push_back(std::move(call));
    }
  }
  return result;
}

Status StatusFromErrorResponse(int http_status, std::string_view body) {
  const json doc = json::parse(body.begin(), body.end(), nullptr, /*allow_exceptions=*/false);
  ErrorInfo info;
  if (!doc.is_discarded() && doc.is_object()) {
    info = ReadError(doc);
  } else if (!doc.is_discarded() && doc.is_string()) {
    info.message = doc.get<std::string>();
  } else {
    info.message = std::string(body);  // a proxy's HTML page or plain text
  }
  return StatusForHttp(http_status, DescribeError(http_status, info));
}

// --- StreamAssembler ---

Status StreamAssembler::OnData(std::string_view data,
                               const std::function<void(std::string_view)>& on_text) {
  if (done_) return Status::Ok();  // anything after [DONE] is ignored
  std::string_view trimmed = data;
  while (!trimmed.empty() && (trimmed.front() == ' ' || trimmed.front() == '\n')) {
    trimmed.remove_prefix(1);
  }
  while (!trimmed.empty() && (trimmed.back() == ' ' || trimmed.back() == '\n')) {
    trimmed.remove_suffix(1);
  }
  if (trimmed == "[DONE]") {
    done_ = true;
    return Status::Ok();
  }
  const json chunk =
      json::parse(trimmed.begin(), trimmed.end(), nullptr, /*allow_exceptions=*/false);
  if (chunk.is_discarded()) return Status::Corruption("stream chunk is not JSON");
  if (!chunk.is_object()) return Status::Corruption("stream chunk is not an object");
  if (Member(chunk, "error") != nullptr) {
    const ErrorInfo info = ReadError(chunk);
    int status = 500;
    if (info.int_code >= 400 && info.int_code <= 599) status = info.int_code;
    return StatusForHttp(status, "in-stream error: " + DescribeError(status, info));
  }
  if (const Usage usage = ParseUsage(chunk); usage.present) result_.usage = usage;
  const json* choices = Member(chunk, "choices");
  if (choices == nullptr) return Status::Ok();  // e.g. a usage-only chunk without choices
  if (!choices->is_array()) return Status::Corruption("stream chunk choices is not an array");
  for (const auto& choice : *choices) {
    if (!choice.is_object() || IntAt(choice, "index") != 0) continue;  // n > 1 never requested
    const std::string finish = StringAt(choice, "finish_reason");
    const json* delta = Member(choice, "delta");
    if (delta != nullptr && delta->is_object()) {
      const std::string text = ContentText(Member(*delta, "content"));
      if (!text.empty()) {
        result_.content += text;
        on_text(text);
      }
      const json* calls = Member(*delta, "tool_calls");
      if (calls != nullptr && calls->is_array()) {
        for (const auto& piece : *calls) {
          if (!piece.is_object()) continue;
          const std::string id = StringAt(piece, "id");
          const json* function = Member(piece, "function");
          const std::string name = function != nullptr ? StringAt(*function, "name") : "";
          const std::string args = function != nullptr ? ArgumentsText(*function) : "";
          const json* index_field = Member(piece, "index");
          int64_t index;
          if (index_field != nullptr && index_field->is_number()) {
            index = IntAt(piece, "index");
            auto it = calls_.find(index);
            // Ollama-compatible servers may reuse index 0 for parallel calls sent whole: a
            // different id at an index that already has one starts a new call.
            if (it != calls_.end() && !id.empty() && !it->second.id.empty() &&
                it->second.id != id) {
              index = calls_.rbegin()->first + 1;
            }
          } else if (!id.empty() || !name.empty() || calls_.empty()) {
            index = calls_.empty() ? 0 : calls_.rbegin()->first + 1;  // no index: a new call
          } else {
            index = calls_.rbegin()->first;  // no index, no header: continues the last call
          }
          ToolCall& call = calls_[index];
          if (call.id.empty()) call.id = id;
          if (call.name.empty()) call.name = name;
          call.arguments += args;
        }
      }
    }
    if (!finish.empty()) result_.finish_reason = finish;
  }
  return Status::Ok();
}

ChatResult StreamAssembler::Take() {
  ChatResult out = std::move(result_);
  out.tool_calls.clear();
  for (auto& [index, call] : calls_) {
    if (call.id.empty()) call.id = "call_" + std::to_string(index);
    out.tool_calls.push_back(std::move(call));
  }
  calls_.clear();
  result_ = ChatResult();
  return out;
}

}  // namespace parley::llm
