#pragma once
// The OpenAI chat-completions wire format (see shared/protocols/openai.md): request bodies,
// non-streaming responses, server-sent-event framing and the assembly of streamed chunks
// (text deltas, tool-call fragments by index, usage, in-band errors). Pure functions and small
// state machines, no I/O.
// Thread-safety: functions are thread-safe; SseParser and StreamAssembler are single-owner.

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/status.h"
#include "net/sse.h"

namespace parley::llm {

// One call the model asked for. `arguments` is the JSON text the model wrote, unparsed: it may be
// invalid JSON or violate the tool's schema.
struct ToolCall {
  std::string id;
  std::string name;
  std::string arguments;
};

struct ChatMessage {
  std::string role;     // "system" | "user" | "assistant" | "tool"
  std::string content;  // assistant with tool calls and empty content: sent as null
  std::vector<ToolCall> tool_calls;  // assistant only; echoed verbatim in the next round
  std::string tool_call_id;          // tool only
};

// A tool offered to the model: {"type":"function","function":{name, description, parameters}}.
struct ToolSpec {
  std::string name;
  std::string description;
  nlohmann::json parameters;  // JSON Schema (an object)
};

struct ChatRequest {
  std::vector<ChatMessage> messages;
  std::vector<ToolSpec> tools;  // empty: no "tools" key is sent
  bool stream = true;
};

// Fields the body builder needs besides the request itself.
struct BodyOptions {
  std::string model;
  double temperature = -1;  // < 0: not sent
  int max_tokens = 0;       // 0: not sent
};

struct Usage {
  bool present = false;
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  int64_t total_tokens = 0;
};

struct ChatResult {
  std::string content;               // the assistant's text (may be empty with tool calls)
  std::vector<ToolCall> tool_calls;  // in index order; a missing id is generated ("call_<n>")
  std::string finish_reason;         // "stop", "length", "tool_calls", ... ; may be empty
  Usage usage;
};

// The JSON body for POST {base_url}/chat/completions. Streaming requests ask for usage
// (stream_options.include_usage).
std::string BuildRequestBody(const ChatRequest& request, const BodyOptions& options);

// Parses a non-streaming 200 response. InvalidArgument (with a short reason, never the body) when
// it is not a chat completion.
Result<ChatResult> ParseCompletion(std::string_view body);

// Maps an error response (any status >= 400, any of the servers' error shapes: `error` as object
// or string, `code` string/int/null, or a non-JSON body such as a proxy's HTML page) to a Status:
// 400 InvalidArgument, 401/403 PermissionDenied, 404 NotFound, 408/504 DeadlineExceeded,
// 429 ResourceExhausted, 5xx and anything else Unavailable. The message names the status and the
// server's message (truncated to 200 characters), never the request.
Status StatusFromErrorResponse(int http_status, std::string_view body);

// Server-sent events framing (net/sse.h), as the client reads streamed completions.
using net::SseEvent;
using net::SseParser;

// Turns the data of streamed chat.completion.chunk events into text deltas and a final result.
// Accepts every server's variant: the first delta's role with "" or null content, content
// null/"" later, tool calls in fragments keyed by index (id/name from whichever piece carries
// them, arguments concatenated) or whole in one piece (Ollama), the usage chunk with
// "choices": [], extra fields anywhere.
class StreamAssembler {
 public:
  // One event's data. "[DONE]" marks the end. Text deltas are passed to on_text (non-empty only).
  // Errors: an in-band {"error":...} -> the mapped Status (as StatusFromErrorResponse with 500
  // when no status is given); data that is not JSON or not a chunk -> Corruption. After an error
  // the assembler must not be fed again.
  Status OnData(std::string_view data, const std::function<void(std::string_view)>& on_text);
  // True once "[DONE]" was seen.
  bool done() const { return done_; }
  // True once a finish_reason arrived (some proxies drop [DONE]).
  bool finished() const { return !result_.finish_reason.empty(); }
  // The assembled result. Call after the stream ended.
  ChatResult Take();

 private:
  ChatResult result_;
  std::map<int64_t, ToolCall> calls_;
  bool done_ = false;
};

}  // namespace parley::llm
