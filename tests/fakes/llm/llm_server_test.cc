#include "tests/fakes/llm/llm_server.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace parley::testing {
namespace {

using Json = nlohmann::json;
using Clock = std::chrono::steady_clock;
using Kind = LlmReply::Kind;

constexpr int kIoTimeoutMs = 5000;

struct RawResponse {
  int status = 0;  // 0: the connection ended before a status line
  std::vector<std::pair<std::string, std::string>> headers;
  bool chunked = false;
  bool complete = false;            // the whole body arrived (length reached / chunked terminator)
  std::string body;                 // de-chunked
  std::vector<std::string> chunks;  // HTTP chunk payloads as received
  std::vector<Clock::time_point> chunk_times;

  std::string Header(const std::string& name) const {
    for (const auto& [k, v] : headers) {
      if (strcasecmp(k.c_str(), name.c_str()) == 0) return v;
    }
    return "";
  }
  bool HasHeader(const std::string& name) const {
    for (const auto& [k, v] : headers) {
      if (strcasecmp(k.c_str(), name.c_str()) == 0) return true;
    }
    return false;
  }
};

// A blocking POSIX client with poll() timeouts, so the exact bytes are visible and a broken
// server fails a test instead of hanging it.
class RawClient {
 public:
  explicit RawClient(uint16_t port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    ::inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  }
  ~RawClient() {
    if (fd_ >= 0) ::close(fd_);
  }
  RawClient(const RawClient&) = delete;
  RawClient& operator=(const RawClient&) = delete;

  bool connected() const { return connected_; }

  bool Send(const std::string& bytes) {
    size_t off = 0;
    while (off < bytes.size()) {
      ssize_t n = ::send(fd_, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
      if (n <= 0) return false;
      off += static_cast<size_t>(n);
    }
    return true;
  }

  // Appends what arrives within timeout_ms to buf_. False on EOF, error or timeout.
  bool Fill(int timeout_ms = kIoTimeoutMs) {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, timeout_ms) <= 0) {
      timed_out_ = true;
      return false;
    }
    char tmp[65536];
    ssize_t n = ::recv(fd_, tmp, sizeof(tmp), 0);
    if (n <= 0) {
      eof_ = true;
      return false;
    }
    buf_.append(tmp, static_cast<size_t>(n));
    return true;
  }

  // True when the server closes the connection within timeout_ms with nothing more to read.
  bool WaitEof(int timeout_ms = kIoTimeoutMs) {
    while (Fill(timeout_ms)) {
    }
    return eof_ && buf_.empty();
  }

  RawResponse ReadResponse() {
    RawResponse r;
    for (;;) {
      size_t end;
      while ((end = buf_.find("\r\n\r\n")) == std::string::npos) {
        if (!Fill()) return r;
      }
      std::string head = buf_.substr(0, end);
      buf_.erase(0, end + 4);
      size_t line_end = head.find("\r\n");
      std::string status_line = head.substr(0, line_end);
      r.status = std::stoi(status_line.substr(9, 3));
      r.headers.clear();
      size_t pos = line_end == std::string::npos ? head.size() : line_end + 2;
      while (pos < head.size()) {
        size_t e = head.find("\r\n", pos);
        if (e == std::string::npos) e = head.size();
        std::string line = head.substr(pos, e - pos);
        size_t colon = line.find(':');
        std::string value = line.substr(colon + 1);
        value.erase(0, value.find_first_not_of(' '));
        r.headers.emplace_back(line.substr(0, colon), value);
        pos = e + 2;
      }
      if (r.status != 100) break;
    }
    if (r.Header("Transfer-Encoding") == "chunked") {
      r.chunked = true;
      for (;;) {
        size_t e;
        while ((e = buf_.find("\r\n")) == std::string::npos) {
          if (!Fill()) return r;
        }
        size_t size = std::stoul(buf_.substr(0, e), nullptr, 16);
        while (buf_.size() < e + 2 + size + 2) {
          if (!Fill()) return r;
        }
        if (size == 0) {
          buf_.erase(0, e + 4);
          r.complete = true;
          return r;
        }
        std::string payload = buf_.substr(e + 2, size);
        buf_.erase(0, e + 2 + size + 2);
        r.body += payload;
        r.chunks.push_back(payload);
        r.chunk_times.push_back(Clock::now());
      }
    }
    if (r.HasHeader("Content-Length")) {
      size_t length = std::stoul(r.Header("Content-Length"));
      while (buf_.size() < length) {
        if (!Fill()) {
          r.body = buf_;
          buf_.clear();
          return r;
        }
      }
      r.body = buf_.substr(0, length);
      buf_.erase(0, length);
      r.complete = true;
    }
    return r;
  }

  // Sends one request and reads its response.
  RawResponse Exchange(const std::string& request) {
    if (!Send(request)) return RawResponse{};
    return ReadResponse();
  }

  bool eof() const { return eof_; }

 private:
  int fd_ = -1;
  bool connected_ = false;
  bool eof_ = false;
  bool timed_out_ = false;
  std::string buf_;
};

std::string HttpRequest(const std::string& body, const std::string& path = "/v1/chat/completions",
                        const std::vector<std::string>& headers = {"Authorization: Bearer sk-test"},
                        const std::string& method = "POST") {
  std::string r = method + " " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\n";
  r += "Content-Type: application/json\r\n";
  for (const auto& h : headers) r += h + "\r\n";
  r += "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n";
  r += body;
  return r;
}

std::string ChatBody(bool stream, bool include_usage = false, const std::string& user = "hi") {
  Json body = {{"model", "test-model"},
               {"messages", Json::array({{{"role", "system"}, {"content", "Be brief."}},
                                         {{"role", "user"}, {"content", user}}})}};
  if (stream) body["stream"] = true;
  if (include_usage) body["stream_options"] = {{"include_usage", true}};
  return body.dump();
}

// The events of an SSE body (without their blank-line terminators).
std::vector<std::string> SseEvents(const std::string& body, const std::string& eol = "\n") {
  std::vector<std::string> out;
  const std::string sep = eol + eol;
  size_t pos = 0;
  for (;;) {
    size_t e = body.find(sep, pos);
    if (e == std::string::npos) break;
    out.push_back(body.substr(pos, e - pos));
    pos = e + sep.size();
  }
  EXPECT_EQ(pos, body.size()) << "trailing bytes after the last event";
  return out;
}

// The `data:` payloads, comments skipped.
std::vector<std::string> DataPayloads(const std::vector<std::string>& events) {
  std::vector<std::string> out;
  for (const auto& e : events) {
    if (e.rfind(":", 0) == 0) continue;
    EXPECT_EQ(e.rfind("data: ", 0), 0u) << e;
    out.push_back(e.substr(6));
  }
  return out;
}

std::vector<Json> ParseChunks(const std::vector<std::string>& payloads) {
  std::vector<Json> out;
  for (const auto& p : payloads) {
    if (p == "[DONE]") continue;
    Json j = Json::parse(p, nullptr, false);
    EXPECT_FALSE(j.is_discarded()) << p;
    out.push_back(j);
  }
  return out;
}

size_t CodePoints(const std::string& s) {
  size_t n = 0;
  for (char c : s) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  return n;
}

// Checks what every chunk of one stream shares; returns the concatenated content.
std::string CheckCommonAndConcat(const std::vector<Json>& chunks, bool usage_nulls) {
  std::string text;
  EXPECT_FALSE(chunks.empty());
  if (chunks.empty()) return text;
  for (const Json& c : chunks) {
    EXPECT_EQ(c.at("object"), "chat.completion.chunk");
    EXPECT_EQ(c.at("id"), chunks[0].at("id"));
    EXPECT_EQ(c.at("created"), chunks[0].at("created"));
    EXPECT_EQ(c.at("model"), "test-model");
    if (c.at("choices").empty()) continue;
    // With include_usage every chunk but the last carries "usage": null; without, no key.
    EXPECT_EQ(c.contains("usage"), usage_nulls) << c;
    if (c.contains("usage")) {
      EXPECT_TRUE(c.at("usage").is_null()) << c;
    }
    const Json& delta = c.at("choices").at(0).at("delta");
    if (delta.contains("content") && delta.at("content").is_string()) {
      text += delta.at("content").get<std::string>();
    }
  }
  EXPECT_EQ(chunks[0].at("id").get<std::string>().rfind("chatcmpl-", 0), 0u);
  return text;
}

// Polls pred until it holds or timeout_ms passes.
template <typename Pred>
bool WaitUntil(Pred pred, int timeout_ms = kIoTimeoutMs) {
  Clock::time_point deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  while (!pred()) {
    if (Clock::now() >= deadline) return false;
    std::this_thread::yield();
  }
  return true;
}

LlmReply Text(const std::string& text, size_t chunk_chars = 4) {
  LlmReply r;
  r.text = text;
  r.chunk_chars = chunk_chars;
  return r;
}

TEST(FakeLlmServer, StreamsTextAsOpenAiDoes) {
  LlmServer server;
  const std::string text = "Hello, wörld! 日本語 🎉 done.";
  server.Push(Text(text, 3));
  RawClient c(server.port());
  ASSERT_TRUE(c.connected());
  RawResponse r = c.Exchange(HttpRequest(ChatBody(true)));
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(r.Header("Content-Type"), "text/event-stream; charset=utf-8");
  EXPECT_TRUE(r.chunked);
  EXPECT_TRUE(r.complete);

  std::vector<std::string> events = SseEvents(r.body);
  EXPECT_EQ(r.chunks.size(), events.size());  // one HTTP chunk per event
  std::vector<std::string> payloads = DataPayloads(events);
  ASSERT_GE(payloads.size(), 3u);
  EXPECT_EQ(payloads.back(), "[DONE]");
  EXPECT_NE(payloads[0].find(R"("delta":{"role":"assistant","content":"","refusal":null})"),
            std::string::npos)
      << payloads[0];
  EXPECT_EQ(payloads[0].rfind(R"({"id":"chatcmpl-)", 0), 0u);
  std::vector<Json> chunks = ParseChunks(payloads);
  EXPECT_EQ(chunks.size(), payloads.size() - 1);
  EXPECT_EQ(CheckCommonAndConcat(chunks, /*usage_nulls=*/false), text);

  EXPECT_EQ(chunks[0].at("choices").at(0).at("delta"),
            Json({{"role", "assistant"}, {"content", ""}, {"refusal", nullptr}}));
  for (size_t i = 1; i + 1 < chunks.size(); ++i) {
    const Json& choice = chunks[i].at("choices").at(0);
    EXPECT_TRUE(choice.at("finish_reason").is_null());
    ASSERT_EQ(choice.at("delta").size(), 1u) << choice;
    std::string piece = choice.at("delta").at("content");
    EXPECT_GE(CodePoints(piece), 1u);
    EXPECT_LE(CodePoints(piece), 3u) << piece;
  }
  const Json& last = chunks.back().at("choices").at(0);
  EXPECT_EQ(last.at("delta"), Json::object());
  EXPECT_EQ(last.at("finish_reason"), "stop");
}

TEST(FakeLlmServer, UsageChunkOnlyWhenAsked) {
  LlmServer server;
  LlmReply reply = Text("Four score and seven");
  reply.prompt_tokens = 11;
  reply.completion_tokens = 7;
  server.Push(reply);
  server.Push(reply);
  RawClient c(server.port());
  RawResponse with = c.Exchange(HttpRequest(ChatBody(true, /*include_usage=*/true)));
  RawResponse without = c.Exchange(HttpRequest(ChatBody(true, /*include_usage=*/false)));
  ASSERT_EQ(with.status, 200);
  ASSERT_EQ(without.status, 200);

  std::vector<std::string> p = DataPayloads(SseEvents(with.body));
  ASSERT_GE(p.size(), 3u);
  EXPECT_EQ(p.back(), "[DONE]");
  std::vector<Json> chunks = ParseChunks(p);
  EXPECT_EQ(CheckCommonAndConcat(chunks, /*usage_nulls=*/true), "Four score and seven");
  const Json& usage_chunk = chunks.back();
  EXPECT_EQ(usage_chunk.at("choices"), Json::array());
  EXPECT_EQ(usage_chunk.at("usage").at("prompt_tokens"), 11);
  EXPECT_EQ(usage_chunk.at("usage").at("completion_tokens"), 7);
  EXPECT_EQ(usage_chunk.at("usage").at("total_tokens"), 18);
  EXPECT_EQ(chunks[chunks.size() - 2].at("choices").at(0).at("finish_reason"), "stop");
  for (size_t i = 0; i + 1 < chunks.size(); ++i) EXPECT_EQ(chunks[i].at("choices").size(), 1u);

  std::vector<Json> plain = ParseChunks(DataPayloads(SseEvents(without.body)));
  EXPECT_EQ(CheckCommonAndConcat(plain, /*usage_nulls=*/false), "Four score and seven");
  for (const Json& ch : plain) EXPECT_EQ(ch.at("choices").size(), 1u);
  EXPECT_EQ(plain.back().at("choices").at(0).at("finish_reason"), "stop");
}

TEST(FakeLlmServer, StreamsToolCallPieces) {
  LlmServer server;
  LlmReply reply;
  reply.kind = Kind::kToolCalls;
  reply.tool_calls = {{"call_a", "get_weather", R"({"city":"Paris"})"},
                      {"", "lookup", R"({"x":)"}};  // invalid JSON; id made up
  reply.chunk_chars = 5;
  server.Push(reply);
  RawClient c(server.port());
  RawResponse r = c.Exchange(HttpRequest(ChatBody(true)));
  ASSERT_EQ(r.status, 200);
  std::vector<std::string> payloads = DataPayloads(SseEvents(r.body));
  EXPECT_EQ(payloads.back(), "[DONE]");
  std::vector<Json> chunks = ParseChunks(payloads);
  CheckCommonAndConcat(chunks, false);

  // First chunk: role, content null, the first call's header (OpenAI's real shape).
  const Json& first = chunks[0].at("choices").at(0).at("delta");
  EXPECT_EQ(first.at("role"), "assistant");
  EXPECT_TRUE(first.at("content").is_null());
  EXPECT_EQ(first.at("tool_calls"), Json::parse(R"([{"index":0,"id":"call_a","type":"function",
                              "function":{"name":"get_weather","arguments":""}}])"));

  std::map<int, std::string> args;
  std::map<int, std::string> ids;
  std::map<int, std::string> names;
  for (size_t i = 0; i + 1 < chunks.size(); ++i) {
    const Json& delta = chunks[i].at("choices").at(0).at("delta");
    ASSERT_TRUE(delta.contains("tool_calls")) << delta;
    ASSERT_EQ(delta.at("tool_calls").size(), 1u);
    const Json& piece = delta.at("tool_calls").at(0);
    int index = piece.at("index");
    if (piece.contains("id")) {
      // A header: index, id, type, name, empty arguments.
      EXPECT_EQ(piece.at("type"), "function");
      EXPECT_EQ(piece.at("function").at("arguments"), "");
      EXPECT_EQ(ids.count(index), 0u);
      ids[index] = piece.at("id");
      names[index] = piece.at("function").at("name");
    } else {
      // A fragment: only index and function.arguments.
      EXPECT_EQ(piece.size(), 2u) << piece;
      EXPECT_EQ(piece.at("function").size(), 1u) << piece;
      EXPECT_EQ(ids.count(index), 1u) << "fragment before header";
      std::string frag = piece.at("function").at("arguments");
      EXPECT_LE(CodePoints(frag), 5u);
      args[index] += frag;
    }
  }
  EXPECT_EQ(ids[0], "call_a");
  EXPECT_EQ(ids[1].rfind("call_", 0), 0u);
  EXPECT_EQ(ids[1].size(), 29u);  // call_ + 24
  EXPECT_EQ(names[0], "get_weather");
  EXPECT_EQ(names[1], "lookup");
  EXPECT_EQ(args[0], R"({"city":"Paris"})");
  EXPECT_EQ(args[1], R"({"x":)");
  EXPECT_EQ(chunks.back().at("choices").at(0).at("delta"), Json::object());
  EXPECT_EQ(chunks.back().at("choices").at(0).at("finish_reason"), "tool_calls");
}

TEST(FakeLlmServer, StreamsTextBeforeToolCallsAndWholeCalls) {
  LlmServer server;
  LlmReply with_text;
  with_text.kind = Kind::kToolCalls;
  with_text.text = "Let me check.";
  with_text.tool_calls = {{"call_1", "search", R"({"q":"x"})"}};
  server.Push(with_text);
  LlmReply whole;
  whole.kind = Kind::kToolCalls;
  whole.whole_tool_calls = true;
  whole.tool_calls = {{"call_1", "a", R"({"n":1})"}, {"call_2", "b", R"({"n":2})"}};
  server.Push(whole);

  RawClient c(server.port());
  RawResponse r1 = c.Exchange(HttpRequest(ChatBody(true)));
  std::vector<Json> chunks = ParseChunks(DataPayloads(SseEvents(r1.body)));
  ASSERT_GE(chunks.size(), 4u);
  EXPECT_EQ(chunks[0].at("choices").at(0).at("delta"),
            Json({{"role", "assistant"}, {"content", ""}, {"refusal", nullptr}}));
  EXPECT_EQ(CheckCommonAndConcat(chunks, false), "Let me check.");
  bool saw_header = false;
  for (const Json& ch : chunks) {
    const Json& delta = ch.at("choices").at(0).at("delta");
    if (delta.contains("tool_calls") && delta.at("tool_calls").at(0).contains("id")) {
      saw_header = true;
      EXPECT_FALSE(delta.contains("content"));
    }
  }
  EXPECT_TRUE(saw_header);
  EXPECT_EQ(chunks.back().at("choices").at(0).at("finish_reason"), "tool_calls");

  RawResponse r2 = c.Exchange(HttpRequest(ChatBody(true)));
  std::vector<Json> w = ParseChunks(DataPayloads(SseEvents(r2.body)));
  size_t with_calls = 0;
  for (const Json& ch : w) {
    const Json& delta = ch.at("choices").at(0).at("delta");
    if (!delta.contains("tool_calls")) continue;
    ++with_calls;
    EXPECT_EQ(delta.at("tool_calls"), Json::parse(R"([{"index":0,"id":"call_1","type":"function",
                                "function":{"name":"a","arguments":"{\"n\":1}"}},
                               {"index":1,"id":"call_2","type":"function",
                                "function":{"name":"b","arguments":"{\"n\":2}"}}])"));
  }
  EXPECT_EQ(with_calls, 1u);
  EXPECT_EQ(w.back().at("choices").at(0).at("finish_reason"), "tool_calls");
}

TEST(FakeLlmServer, NonStreamingCompletion) {
  LlmServer server;
  LlmReply text = Text("Plain answer.");
  text.prompt_tokens = 5;
  text.completion_tokens = 3;
  server.Push(text);
  LlmReply tools;
  tools.kind = Kind::kToolCalls;
  tools.tool_calls = {{"call_9", "get_weather", R"({"location":"Shanghai"})"}};
  server.Push(tools);

  RawClient c(server.port());
  RawResponse r = c.Exchange(HttpRequest(ChatBody(false)));
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(r.Header("Content-Type"), "application/json");
  EXPECT_EQ(r.Header("Content-Length"), std::to_string(r.body.size()));
  Json j = Json::parse(r.body);
  EXPECT_EQ(j.at("object"), "chat.completion");
  EXPECT_EQ(j.at("model"), "test-model");
  EXPECT_EQ(j.at("choices").at(0).at("message").at("role"), "assistant");
  EXPECT_EQ(j.at("choices").at(0).at("message").at("content"), "Plain answer.");
  EXPECT_FALSE(j.at("choices").at(0).at("message").contains("tool_calls"));
  EXPECT_EQ(j.at("choices").at(0).at("finish_reason"), "stop");
  EXPECT_EQ(j.at("usage").at("prompt_tokens"), 5);
  EXPECT_EQ(j.at("usage").at("completion_tokens"), 3);
  EXPECT_EQ(j.at("usage").at("total_tokens"), 8);

  RawResponse r2 = c.Exchange(HttpRequest(ChatBody(false)));
  Json t = Json::parse(r2.body);
  const Json& msg = t.at("choices").at(0).at("message");
  ASSERT_TRUE(msg.contains("content"));
  EXPECT_TRUE(msg.at("content").is_null());
  EXPECT_EQ(msg.at("tool_calls"),
            Json::parse(R"([{"id":"call_9","type":"function","function":{"name":"get_weather",
                              "arguments":"{\"location\":\"Shanghai\"}"}}])"));
  EXPECT_EQ(t.at("choices").at(0).at("finish_reason"), "tool_calls");
  EXPECT_GT(t.at("usage").at("prompt_tokens").get<int>(), 0);  // estimated
  EXPECT_GT(t.at("usage").at("completion_tokens").get<int>(), 0);
}

TEST(FakeLlmServer, RejectsBadRequestsWithOpenAiErrors) {
  LlmServer server;
  RawClient c(server.port());
  auto error_of = [](const RawResponse& r) {
    Json j = Json::parse(r.body, nullptr, false);
    EXPECT_TRUE(j.is_object()) << r.body;
    if (!j.is_object()) return Json();
    const Json& e = j.at("error");
    EXPECT_TRUE(e.contains("message") && e.contains("type") && e.contains("param") &&
                e.contains("code"))
        << e;
    EXPECT_TRUE(e.at("message").is_string());
    return e;
  };

  RawResponse missing = c.Exchange(HttpRequest(ChatBody(false), "/v1/chat/completions", {}));
  EXPECT_EQ(missing.status, 401);
  EXPECT_EQ(error_of(missing).at("code"), "invalid_api_key");
  RawResponse wrong = c.Exchange(
      HttpRequest(ChatBody(false), "/v1/chat/completions", {"Authorization: Bearer sk-wrong"}));
  EXPECT_EQ(wrong.status, 401);
  EXPECT_EQ(error_of(wrong).at("code"), "invalid_api_key");
  EXPECT_EQ(error_of(wrong).at("type"), "invalid_request_error");

  RawResponse path = c.Exchange(HttpRequest(ChatBody(false), "/v1/nope"));
  EXPECT_EQ(path.status, 404);
  EXPECT_EQ(Json::parse(path.body),
            Json::parse(R"j({"error":{"message":"Invalid URL (POST /v1/nope)",
                            "type":"invalid_request_error","param":null,"code":null}})j"));

  Json other_model = Json::parse(ChatBody(false));
  other_model["model"] = "gpt-9";
  RawResponse model = c.Exchange(HttpRequest(other_model.dump()));
  EXPECT_EQ(model.status, 404);
  EXPECT_EQ(error_of(model).at("code"), "model_not_found");
  EXPECT_NE(error_of(model).at("message").get<std::string>().find("gpt-9"), std::string::npos);

  RawResponse not_json = c.Exchange(HttpRequest("{nope"));
  EXPECT_EQ(not_json.status, 400);
  EXPECT_EQ(error_of(not_json).at("type"), "invalid_request_error");
  RawResponse no_messages = c.Exchange(HttpRequest(R"({"model":"test-model"})"));
  EXPECT_EQ(no_messages.status, 400);
  EXPECT_EQ(error_of(no_messages).at("param"), "messages");
  RawResponse bad_messages = c.Exchange(HttpRequest(R"({"model":"test-model","messages":"hi"})"));
  EXPECT_EQ(bad_messages.status, 400);
  EXPECT_EQ(error_of(bad_messages).at("code"), "invalid_type");
  RawResponse no_model = c.Exchange(HttpRequest(R"({"messages":[]})"));
  EXPECT_EQ(no_model.status, 400);
  error_of(no_model);

  // Every chat.completions request is recorded, rejected ones included (not the bad path).
  EXPECT_EQ(server.RequestCount(), 7u);
  std::vector<Json> requests = server.Requests();
  ASSERT_EQ(requests.size(), 7u);
  EXPECT_EQ(requests[3], Json("{nope"));
  EXPECT_EQ(server.Pending(), 0u);
}

TEST(FakeLlmServer, ScriptedHttpErrorsAndRetryAfter) {
  LlmServer server;
  LlmReply limited;
  limited.kind = Kind::kHttpError;
  limited.status = 429;
  limited.retry_after_s = 7;
  server.Push(limited);
  LlmReply custom;
  custom.kind = Kind::kHttpError;
  custom.status = 503;
  custom.error_body = R"({"error":"Unauthorized"})";
  server.Push(custom);
  LlmReply plain500;
  plain500.kind = Kind::kHttpError;
  plain500.status = 500;
  server.Push(plain500);
  LlmReply html;
  html.kind = Kind::kHttpError;
  html.status = 502;
  html.content_type = "text/html";
  html.error_body = "<html><body>Bad gateway</body></html>";
  server.Push(html);

  RawClient c(server.port());
  RawResponse r = c.Exchange(HttpRequest(ChatBody(true)));
  EXPECT_EQ(r.status, 429);
  EXPECT_EQ(r.Header("Retry-After"), "7");
  Json e = Json::parse(r.body);
  EXPECT_EQ(e.at("error").at("code"), "rate_limit_exceeded");
  EXPECT_TRUE(e.at("error").at("param").is_null());

  RawResponse r2 = c.Exchange(HttpRequest(ChatBody(false)));
  EXPECT_EQ(r2.status, 503);
  EXPECT_EQ(r2.body, R"({"error":"Unauthorized"})");
  EXPECT_FALSE(r2.HasHeader("Retry-After"));

  RawResponse r3 = c.Exchange(HttpRequest(ChatBody(false)));
  EXPECT_EQ(r3.status, 500);
  EXPECT_EQ(Json::parse(r3.body).at("error").at("type"), "server_error");
  RawResponse r4 = c.Exchange(HttpRequest(ChatBody(true)));
  EXPECT_EQ(r4.status, 502);
  EXPECT_EQ(r4.Header("Content-Type"), "text/html");
  EXPECT_EQ(r4.body, "<html><body>Bad gateway</body></html>");
  // Still the same keep-alive connection.
  EXPECT_EQ(server.TotalConnections(), 1u);
}

TEST(FakeLlmServer, DropsBeforeHeaders) {
  LlmServer server;
  LlmReply drop;
  drop.kind = Kind::kDropBeforeHeaders;
  server.Push(drop);
  RawClient c(server.port());
  RawResponse r = c.Exchange(HttpRequest(ChatBody(true)));
  EXPECT_EQ(r.status, 0);
  EXPECT_TRUE(c.eof());
  EXPECT_EQ(server.RequestCount(), 1u);
}

TEST(FakeLlmServer, DropsMidStream) {
  LlmServer server;
  LlmReply drop = Text("one two three four five six seven");
  drop.kind = Kind::kDropMidStream;
  drop.drop_after_chunks = 3;
  server.Push(drop);
  RawClient c(server.port());
  RawResponse r = c.Exchange(HttpRequest(ChatBody(true)));
  EXPECT_EQ(r.status, 200);
  EXPECT_FALSE(r.complete);  // no chunked terminator
  EXPECT_TRUE(c.eof());
  std::vector<std::string> payloads = DataPayloads(SseEvents(r.body));
  ASSERT_EQ(payloads.size(), 3u);
  std::vector<Json> chunks = ParseChunks(payloads);
  EXPECT_EQ(CheckCommonAndConcat(chunks, false), "one two ");
  for (const Json& ch : chunks) EXPECT_TRUE(ch.at("choices").at(0).at("finish_reason").is_null());
}

TEST(FakeLlmServer, MalformedInBandErrorAndNoDone) {
  LlmServer server;
  LlmReply malformed = Text("abcdefgh");
  malformed.kind = Kind::kMalformedChunk;
  server.Push(malformed);
  LlmReply in_band = Text("abcdefgh");
  in_band.kind = Kind::kInBandError;
  server.Push(in_band);
  LlmReply no_done = Text("abcdefgh");
  no_done.kind = Kind::kNoDone;
  server.Push(no_done);

  RawClient c(server.port());
  RawResponse r1 = c.Exchange(HttpRequest(ChatBody(true)));
  std::vector<std::string> p1 = DataPayloads(SseEvents(r1.body));
  ASSERT_EQ(p1.size(), 4u);
  EXPECT_EQ(p1[2], "{not json");
  EXPECT_EQ(p1[3], "[DONE]");
  EXPECT_TRUE(r1.complete);

  RawResponse r2 = c.Exchange(HttpRequest(ChatBody(true)));
  EXPECT_EQ(r2.status, 200);
  std::vector<std::string> p2 = DataPayloads(SseEvents(r2.body));
  ASSERT_EQ(p2.size(), 4u);
  Json err = Json::parse(p2[2]);
  EXPECT_EQ(err.at("error").at("type"), "server_error");
  EXPECT_TRUE(err.at("error").contains("code"));
  EXPECT_EQ(p2[3], "[DONE]");

  RawResponse r3 = c.Exchange(HttpRequest(ChatBody(true, true)));
  EXPECT_TRUE(r3.complete);
  std::vector<std::string> p3 = DataPayloads(SseEvents(r3.body));
  ASSERT_FALSE(p3.empty());
  EXPECT_EQ(std::count(p3.begin(), p3.end(), "[DONE]"), 0);
  std::vector<Json> chunks = ParseChunks(p3);
  EXPECT_EQ(CheckCommonAndConcat(chunks, true), "abcdefgh");
  EXPECT_EQ(chunks[chunks.size() - 2].at("choices").at(0).at("finish_reason"), "stop");
  EXPECT_EQ(chunks.back().at("choices"), Json::array());
  // The connection stays usable after a stream without [DONE].
  RawResponse r4 = c.Exchange(HttpRequest(ChatBody(false)));
  EXPECT_EQ(r4.status, 200);
  EXPECT_EQ(server.TotalConnections(), 1u);
}

// Replaces the per-answer id and created time so two streams can be compared byte for byte.
std::string Normalize(std::string body) {
  size_t id = body.find("\"id\":\"");
  if (id == std::string::npos) return body;
  size_t id_end = body.find('"', id + 6);
  std::string id_field = body.substr(id, id_end + 1 - id);
  size_t cr = body.find("\"created\":");
  size_t cr_end = body.find(',', cr);
  std::string created_field = body.substr(cr, cr_end - cr);
  for (const std::string& f : {id_field, created_field}) {
    for (size_t p = body.find(f); p != std::string::npos; p = body.find(f, p)) {
      body.replace(p, f.size(), "X");
    }
  }
  return body;
}

TEST(FakeLlmServer, SplitWritesCarryTheSameBytes) {
  LlmServer server;
  LlmReply base = Text("Grüße aus 東京 — 🎉🎉 and more text to cut", 2);
  base.crlf = true;
  base.prompt_tokens = 3;
  base.completion_tokens = 4;
  LlmReply split = base;
  split.split_bytes = 7;
  server.Push(base);
  server.Push(split);
  RawClient c(server.port());
  RawResponse whole = c.Exchange(HttpRequest(ChatBody(true, true)));
  RawResponse pieces = c.Exchange(HttpRequest(ChatBody(true, true)));
  ASSERT_TRUE(whole.complete);
  ASSERT_TRUE(pieces.complete);
  EXPECT_EQ(Normalize(pieces.body), Normalize(whole.body));
  EXPECT_NE(Normalize(whole.body), whole.body);  // the normalization did something
  ASSERT_GT(pieces.chunks.size(), 10u);
  for (size_t i = 0; i + 1 < pieces.chunks.size(); ++i) EXPECT_EQ(pieces.chunks[i].size(), 7u);
  EXPECT_LE(pieces.chunks.back().size(), 7u);

  // CRLF line ends throughout, no bare \n.
  std::vector<std::string> events = SseEvents(whole.body, "\r\n");
  EXPECT_EQ(DataPayloads(events).back(), "[DONE]");
  for (size_t i = 0; i < whole.body.size(); ++i) {
    if (whole.body[i] == '\n') {
      ASSERT_GT(i, 0u);
      EXPECT_EQ(whole.body[i - 1], '\r') << "bare LF at " << i;
    }
  }
  EXPECT_EQ(CheckCommonAndConcat(ParseChunks(DataPayloads(events)), true),
            "Grüße aus 東京 — 🎉🎉 and more text to cut");
}

TEST(FakeLlmServer, CommentPings) {
  LlmServer server;
  LlmReply reply = Text("ping pong");
  reply.comment_pings = true;
  server.Push(reply);
  RawClient c(server.port());
  RawResponse r = c.Exchange(HttpRequest(ChatBody(true)));
  std::vector<std::string> events = SseEvents(r.body);
  size_t pings = std::count(events.begin(), events.end(), ": ping");
  std::vector<std::string> payloads = DataPayloads(events);
  EXPECT_EQ(pings, payloads.size() - 1);  // one between each pair of data events
  EXPECT_EQ(events[0].rfind("data: ", 0), 0u);
  EXPECT_EQ(CheckCommonAndConcat(ParseChunks(payloads), false), "ping pong");
}

TEST(FakeLlmServer, StallsAfterTheFirstChunk) {
  LlmServer server;
  LlmReply stall = Text("slow answer");
  stall.kind = Kind::kStall;
  stall.stall_ms = 400;
  server.Push(stall);
  RawClient c(server.port());
  Clock::time_point sent = Clock::now();
  RawResponse r = c.Exchange(HttpRequest(ChatBody(true)));
  ASSERT_TRUE(r.complete);
  ASSERT_GE(r.chunks.size(), 3u);
  EXPECT_EQ(r.chunk_times[0] < r.chunk_times[1], true);
  EXPECT_GE(r.chunk_times[1] - sent, std::chrono::milliseconds(400));
  EXPECT_EQ(CheckCommonAndConcat(ParseChunks(DataPayloads(SseEvents(r.body))), false),
            "slow answer");
}

TEST(FakeLlmServer, DefaultResponderAndFifo) {
  LlmServer server;
  server.Push(Text("first"));
  server.Push(Text("second"));
  RawClient c(server.port());
  auto content = [&](const std::string& body) {
    RawResponse r = c.Exchange(HttpRequest(body));
    return Json::parse(r.body).at("choices").at(0).at("message").at("content").get<std::string>();
  };
  EXPECT_EQ(content(ChatBody(false)), "first");
  EXPECT_EQ(content(ChatBody(false)), "second");
  EXPECT_EQ(content(ChatBody(false, false, "what now")), "You said: what now");
  Json parts = Json::parse(ChatBody(false));
  parts["messages"].push_back({{"role", "user"},
                               {"content", Json::array({{{"type", "text"}, {"text", "a"}},
                                                        {{"type", "text"}, {"text", "b"}}})}});
  EXPECT_EQ(content(parts.dump()), "You said: ab");

  server.SetResponder([](const Json& request) {
    return Text("n=" + std::to_string(request.at("messages").size()));
  });
  EXPECT_EQ(content(ChatBody(false)), "n=2");
  server.SetResponder(nullptr);
  EXPECT_EQ(content(ChatBody(false, false, "x")), "You said: x");

  std::vector<std::vector<std::pair<std::string, std::string>>> headers = server.RequestHeaders();
  ASSERT_EQ(headers.size(), 6u);
  bool saw_auth = false;
  for (const auto& [k, v] : headers[0]) {
    if (k == "Authorization") saw_auth = v == "Bearer sk-test";
  }
  EXPECT_TRUE(saw_auth);
  EXPECT_EQ(server.Requests()[2].at("messages")[1].at("content"), "what now");
}

TEST(FakeLlmServer, RejectsOversizedBodies) {
  LlmServer server;
  RawClient c(server.port());
  std::string head =
      "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-test\r\n"
      "Content-Type: application/json\r\nContent-Length: " +
      std::to_string(9 * 1024 * 1024) + "\r\n\r\n";
  RawResponse r = c.Exchange(head + "{\"model\":");
  EXPECT_EQ(r.status, 413);
  EXPECT_EQ(r.Header("Connection"), "close");
  EXPECT_TRUE(Json::parse(r.body).at("error").contains("message"));
  EXPECT_EQ(server.RequestCount(), 1u);
  EXPECT_TRUE(server.Requests()[0].is_null());
}

TEST(FakeLlmServer, CountsConcurrentDelayedRequests) {
  LlmServer server;
  constexpr int kClients = 6;
  constexpr int kDelayMs = 1000;
  server.SetResponder([](const Json&) {
    LlmReply r = Text("late");
    r.delay_ms = kDelayMs;
    return r;
  });
  std::atomic<int> ok{0};
  Clock::time_point start = Clock::now();
  std::vector<std::thread> threads;
  for (int i = 0; i < kClients; ++i) {
    threads.emplace_back([&] {
      RawClient c(server.port());
      RawResponse r = c.Exchange(HttpRequest(ChatBody(true)));
      if (r.status == 200 && r.complete) ++ok;
    });
  }
  EXPECT_TRUE(server.WaitForRequests(kClients, 5000));
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), kClients);
  EXPECT_GE(Clock::now() - start, std::chrono::milliseconds(kDelayMs));
  EXPECT_EQ(server.MaxConcurrent(), static_cast<size_t>(kClients));
  // The last write's completion handler may run just after the client saw the bytes.
  EXPECT_TRUE(WaitUntil([&] { return server.ActiveRequests() == 0; }));
  EXPECT_EQ(server.TotalConnections(), static_cast<size_t>(kClients));
}

TEST(FakeLlmServer, OpenConnectionsFollowClients) {
  LlmServer server({"", "m", 2});  // no key check, two io threads
  {
    RawClient a(server.port());
    RawClient b(server.port());
    RawResponse r =
        a.Exchange(HttpRequest(R"({"model":"m","messages":[]})", "/v1/chat/completions", {}));
    EXPECT_EQ(r.status, 200);
    b.Exchange(HttpRequest(R"({"model":"m","messages":[]})", "/v1/chat/completions", {}));
    EXPECT_EQ(server.OpenConnections(), 2u);
  }
  EXPECT_TRUE(WaitUntil([&] { return server.OpenConnections() == 0; }));
}

// A real HTTP client (libcurl) reads a stream cut into 5-byte pieces with pauses.
size_t CollectBody(char* data, size_t size, size_t nmemb, void* user) {
  static_cast<std::string*>(user)->append(data, size * nmemb);
  return size * nmemb;
}

TEST(FakeLlmServer, LibcurlReadsSplitDelayedStream) {
  LlmServer server;
  LlmReply reply = Text("curl sees the whole thing", 3);
  reply.split_bytes = 5;
  reply.chunk_delay_ms = 2;
  server.Push(reply);
  CURL* curl = curl_easy_init();
  ASSERT_NE(curl, nullptr);
  std::string url = server.base_url() + "/chat/completions";
  std::string body = ChatBody(true);
  std::string received;
  curl_slist* headers = nullptr;
  headers = curl_slist_append(headers, "Authorization: Bearer sk-test");
  headers = curl_slist_append(headers, "Content-Type: application/json");
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body.c_str());
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, CollectBody);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &received);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, 5000L);
  CURLcode rc = curl_easy_perform(curl);
  long status = 0;
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
  curl_slist_free_all(headers);
  curl_easy_cleanup(curl);
  ASSERT_EQ(rc, CURLE_OK) << curl_easy_strerror(rc);
  EXPECT_EQ(status, 200);
  std::vector<std::string> payloads = DataPayloads(SseEvents(received));
  EXPECT_EQ(payloads.back(), "[DONE]");
  EXPECT_EQ(CheckCommonAndConcat(ParseChunks(payloads), false), "curl sees the whole thing");
  EXPECT_EQ(server.base_url(), "http://127.0.0.1:" + std::to_string(server.port()) + "/v1");
}

}  // namespace
}  // namespace parley::testing
