#pragma once
// A scriptable OpenAI-compatible chat completions server for tests and benchmarks, written from
// shared/protocols/openai.md. It answers `POST /v1/chat/completions` on http://127.0.0.1:PORT/v1
// with OpenAI's wire format (non-streaming `chat.completion`, or SSE `chat.completion.chunk`
// events over chunked transfer encoding with `data: [DONE]`), and can misbehave on request:
// HTTP errors, dropped connections before the headers or mid-stream, malformed or in-band error
// events, a missing [DONE], stalls, tiny/odd write boundaries, CRLF line ends, comment pings.
//
// Replies are scripted: Push() queues replies that the next valid requests take in FIFO order;
// with the queue empty the responder (SetResponder) decides, and without one the answer is
// "You said: <last user message>". Requests rejected by the server itself (404 route, 401 key,
// 400 body, 404 model, 413 size) take no reply from the queue.
//
// Implementation: Boost.Asio + Beast on its own io_context with `threads` threads, one strand per
// connection, timers for every delay (no sleeping, no thread per connection), so tens of
// thousands of connections can each wait on a delayed answer. HTTP/1.1 keep-alive.
//
// Thread-safety: every public method is thread-safe. The responder runs on one of the server's
// io threads without the server's lock held (concurrently with itself when threads > 1); it may
// call the inspection methods and Push(), and must not throw (an exception is answered with a
// 500 error).

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

namespace parley::testing {

struct FakeToolCall {
  std::string id;  // empty: the server makes one up ("call_" + 24 characters)
  std::string name;
  std::string arguments;  // raw text sent as the arguments string; may be invalid JSON
};

// One scripted answer. The answer's content is `text` (may be empty) followed by `tool_calls` (if
// any), for every kind that streams an answer; `kind` says how it is delivered.
struct LlmReply {
  enum class Kind {
    // An answer: `text` streamed in deltas of chunk_chars characters (code points; a delta never
    // splits a UTF-8 sequence), then any tool calls. finish_reason "stop" ("tool_calls" when
    // tool_calls is non-empty).
    kText,
    // Same as kText; named for readability when the reply is `tool_calls` (with optional `text`
    // content before them). Streamed as OpenAI does: the first piece of each call carries index,
    // id, type "function", function.name and arguments ""; then pieces with only index and
    // function.arguments fragments of chunk_chars characters. With only tool calls (no text) the
    // first call's header rides in the first chunk next to role "assistant" and content null, as
    // OpenAI sends it. Non-streaming: message.content is null when text is empty.
    kToolCalls,
    // HTTP `status` with `error_body` (as is), or an OpenAI-shaped error for that status when
    // empty. Retry-After: retry_after_s is added (any status) when retry_after_s >= 0.
    kHttpError,
    // Read the request, wait delay_ms, then close the socket without answering.
    kDropBeforeHeaders,
    // Stream the first `drop_after_chunks` chunks (data events; the role chunk counts as the
    // first), then close the socket: no finish chunk beyond those, no [DONE], no chunked
    // terminator. Non-streaming: headers announcing the whole body, half of it, then close.
    kDropMidStream,
    // Stream the first `drop_after_chunks` chunks, then a `data: {not json` event, then
    // `data: [DONE]`. Non-streaming: HTTP 200 with body `{not json`.
    kMalformedChunk,
    // HTTP 200 and a stream: the first `drop_after_chunks` chunks, then `data: <error>` where
    // <error> is error_body or, when empty, an OpenAI server_error object, then `data: [DONE]`
    // (as vLLM does). Non-streaming: HTTP 200 with that error object as the body.
    kInBandError,
    // The whole answer (finish chunk, usage chunk when asked) and a proper end of the chunked
    // body, but no `data: [DONE]`. Non-streaming: same as kText.
    kNoDone,
    // Headers and the first chunk, then nothing for stall_ms, then the rest. Non-streaming:
    // headers, stall_ms of silence, then the body.
    kStall,
  };
  Kind kind = Kind::kText;
  std::string text;
  std::vector<FakeToolCall> tool_calls;
  // Ollama style: every call whole (index, id, name, full arguments) in one delta.
  bool whole_tool_calls = false;
  std::string finish_reason;  // empty: "stop", or "tool_calls" when tool_calls is non-empty
  int status = 200;           // kHttpError only
  std::string error_body;     // kHttpError / kInBandError; empty = OpenAI-shaped default
  int retry_after_s = -1;     // kHttpError: Retry-After header when >= 0
  std::string content_type;   // kHttpError; empty = "application/json" (or an HTML page)
  int delay_ms = 0;           // before the response headers (every kind)
  int chunk_delay_ms = 0;     // between streamed events
  size_t chunk_chars = 4;     // characters per content / arguments delta; 0 = all in one
  // > 0: write the SSE byte stream (everything after the headers) in pieces of this many bytes,
  // each its own HTTP chunk and its own socket write, cutting events, lines, CRLFs and UTF-8
  // sequences anywhere. A delay (chunk_delay_ms, stall_ms) applies before the piece in which the
  // delayed event starts. 0: one HTTP chunk per event, and events with no delay before them share
  // one socket write (so a client sees them in one read, as it would from a fast server).
  size_t split_bytes = 0;
  bool crlf = false;             // end SSE lines with \r\n instead of \n
  bool comment_pings = false;    // a ": ping" comment event between data events (llama.cpp)
  size_t drop_after_chunks = 2;  // kDropMidStream, kMalformedChunk, kInBandError
  int stall_ms = 0;
  int64_t prompt_tokens = 0, completion_tokens = 0;  // usage to report; 0 = estimated from lengths
};

struct LlmServerOptions {
  // Required as "Authorization: Bearer <key>"; empty = no check. Wrong or missing: 401 with an
  // OpenAI error, code "invalid_api_key".
  std::string api_key = "sk-test";
  // The request's `model` must equal this, else 404 with an OpenAI error, code "model_not_found".
  std::string model = "test-model";
  int threads = 1;  // io threads owned by the server (at least 1)
};

class LlmServer {
 public:
  // Binds 127.0.0.1 on a free port and starts serving. Aborts if it cannot listen.
  explicit LlmServer(LlmServerOptions options = {});
  // Closes every connection (mid-answer ones are cut) and joins the io threads.
  ~LlmServer();
  LlmServer(const LlmServer&) = delete;
  LlmServer& operator=(const LlmServer&) = delete;

  uint16_t port() const;
  std::string base_url() const;  // "http://127.0.0.1:PORT/v1"

  // Queues a reply: the next valid request(s) get the queued replies, in order.
  void Push(LlmReply reply);
  // Replies left in the queue.
  size_t Pending() const;
  // Used when the queue is empty; the default answers kText "You said: <content of the last user
  // message>" (text parts of a content array are concatenated). Pass nullptr for the default.
  void SetResponder(std::function<LlmReply(const nlohmann::json& request)> responder);

  // Bodies of every POST /v1/chat/completions request, in arrival order, including ones answered
  // with errors: a body that is not JSON is recorded as a JSON string holding the raw text, a
  // body over the 8 MiB limit (413, never read) as null.
  std::vector<nlohmann::json> Requests() const;
  // The headers of those requests (name as sent, value), same order.
  std::vector<std::vector<std::pair<std::string, std::string>>> RequestHeaders() const;
  size_t RequestCount() const;
  // True once RequestCount() >= n; false after timeout_ms.
  bool WaitForRequests(size_t n, int timeout_ms) const;
  // Requests being answered now (from the end of reading the request to the last byte written
  // or the connection closed), and the peak of that number.
  size_t ActiveRequests() const;
  size_t MaxConcurrent() const;
  size_t OpenConnections() const;
  // Connections accepted since the start.
  size_t TotalConnections() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace parley::testing
