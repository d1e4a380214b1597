#include "tests/fakes/llm/llm_server.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/string.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/status.hpp>
#include <boost/beast/http/string_body.hpp>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <string_view>
#include <thread>

namespace parley::testing {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using Json = nlohmann::json;
// Output JSON keeps OpenAI's key order.
using OJson = nlohmann::ordered_json;

constexpr size_t kMaxBodyBytes = 8 * 1024 * 1024;
constexpr size_t kMaxHeaderBytes = 64 * 1024;
constexpr int kDrainTimeoutMs = 5000;
constexpr int kAcceptRetryMs = 20;

// Never throws: invalid UTF-8 (only possible in scripted text) is replaced.
std::string Dump(const OJson& j) { return j.dump(-1, ' ', false, OJson::error_handler_t::replace); }

bool IsContinuationByte(char c) { return (static_cast<unsigned char>(c) & 0xC0) == 0x80; }

size_t CodePoints(std::string_view s) {
  size_t n = 0;
  for (char c : s) n += IsContinuationByte(c) ? 0 : 1;
  return n;
}

// Pieces of at most `n` code points each (n == 0: one piece); never splits a UTF-8 sequence.
std::vector<std::string> SplitChars(const std::string& s, size_t n) {
  std::vector<std::string> out;
  if (s.empty()) return out;
  if (n == 0) {
    out.push_back(s);
    return out;
  }
  size_t i = 0;
  while (i < s.size()) {
    size_t j = i;
    for (size_t chars = 0; j < s.size() && chars < n; ++chars) {
      ++j;
      while (j < s.size() && IsContinuationByte(s[j])) ++j;
    }
    out.push_back(s.substr(i, j - i));
    i = j;
  }
  return out;
}

OJson NullOr(const char* s) { return s == nullptr ? OJson(nullptr) : OJson(s); }

OJson ErrorJson(const std::string& message, const char* type, const char* param, const char* code) {
  return OJson{
      {"error",
       {{"message", message}, {"type", type}, {"param", NullOr(param)}, {"code", NullOr(code)}}}};
}

// OpenAI's error for an HTTP status, for kHttpError replies without an error_body.
OJson DefaultErrorFor(int status) {
  switch (status) {
    case 400:
      return ErrorJson("Bad request.", "invalid_request_error", nullptr, nullptr);
    case 401:
      return ErrorJson("Incorrect API key provided.", "invalid_request_error", nullptr,
                       "invalid_api_key");
    case 403:
      return ErrorJson("You are not allowed to sample from this model.", "invalid_request_error",
                       nullptr, nullptr);
    case 404:
      return ErrorJson("The model does not exist or you do not have access to it.",
                       "invalid_request_error", nullptr, "model_not_found");
    case 429:
      return ErrorJson("Rate limit reached for requests. Please try again later.", "requests",
                       nullptr, "rate_limit_exceeded");
    case 500:
      return ErrorJson("The server had an error while processing your request. Sorry about that!",
                       "server_error", nullptr, nullptr);
    case 503:
      return ErrorJson("The engine is currently overloaded, please try again later.",
                       "server_error", nullptr, nullptr);
    default:
      break;
  }
  std::string reason(http::obsolete_reason(static_cast<http::status>(status)));
  return ErrorJson(reason, status >= 500 ? "server_error" : "invalid_request_error", nullptr,
                   nullptr);
}

std::string StatusLine(int status) {
  return "HTTP/1.1 " + std::to_string(status) + " " +
         std::string(http::obsolete_reason(static_cast<http::status>(status))) + "\r\n";
}

// A complete response head; `extra` lines end in \r\n.
std::string Head(int status, const std::string& content_type, std::optional<size_t> length,
                 bool keep_alive, const std::string& request_id, const std::string& extra = "") {
  std::string h = StatusLine(status);
  h += "Content-Type: " + content_type + "\r\n";
  if (length) {
    h += "Content-Length: " + std::to_string(*length) + "\r\n";
  } else {
    h += "Transfer-Encoding: chunked\r\n";
  }
  h += keep_alive ? "Connection: keep-alive\r\n" : "Connection: close\r\n";
  h += "x-request-id: " + request_id + "\r\n";
  h += extra;
  h += "\r\n";
  return h;
}

std::string ChunkFrame(std::string_view data) {
  char size[32];
  std::snprintf(size, sizeof(size), "%zx\r\n", data.size());
  std::string out = size;
  out.append(data.data(), data.size());
  out += "\r\n";
  return out;
}

constexpr const char* kChunkEnd = "0\r\n\r\n";

// nlohmann's value() throws on a type mismatch; request JSON is untrusted.
bool IsTrue(const Json& obj, const char* key) {
  auto it = obj.find(key);
  return it != obj.end() && it->is_boolean() && it->get<bool>();
}

std::string StringField(const Json& obj, const char* key) {
  auto it = obj.find(key);
  return it != obj.end() && it->is_string() ? it->get<std::string>() : std::string();
}

// Text of a message's `content`: a string, or the text parts of an array.
std::string ContentText(const Json& content) {
  if (content.is_string()) return content.get<std::string>();
  std::string out;
  if (content.is_array()) {
    for (const Json& part : content) {
      if (part.is_object() && StringField(part, "type") == "text") {
        auto t = part.find("text");
        if (t != part.end() && t->is_string()) out += t->get<std::string>();
      }
    }
  }
  return out;
}

int64_t EstimateTokens(size_t chars) { return static_cast<int64_t>((chars + 3) / 4); }

struct Usage {
  int64_t prompt = 0;
  int64_t completion = 0;
};

OJson UsageJson(const Usage& u) {
  return OJson{{"prompt_tokens", u.prompt},
               {"completion_tokens", u.completion},
               {"total_tokens", u.prompt + u.completion},
               {"prompt_tokens_details", {{"cached_tokens", 0}, {"audio_tokens", 0}}},
               {"completion_tokens_details",
                {{"reasoning_tokens", 0},
                 {"audio_tokens", 0},
                 {"accepted_prediction_tokens", 0},
                 {"rejected_prediction_tokens", 0}}}};
}

// What every chunk / completion of one answer shares.
struct AnswerContext {
  std::string id;  // chatcmpl-...
  int64_t created = 0;
  std::string model;
  bool include_usage = false;
  Usage usage;
};

constexpr const char* kFingerprint = "fp_fake";

OJson ChunkJson(const AnswerContext& ctx, OJson delta, const char* finish_reason) {
  OJson choice = {{"index", 0},
                  {"delta", std::move(delta)},
                  {"logprobs", nullptr},
                  {"finish_reason", NullOr(finish_reason)}};
  OJson chunk = {{"id", ctx.id},
                 {"object", "chat.completion.chunk"},
                 {"created", ctx.created},
                 {"model", ctx.model},
                 {"service_tier", "default"},
                 {"system_fingerprint", kFingerprint},
                 {"choices", OJson::array({std::move(choice)})}};
  if (ctx.include_usage) chunk["usage"] = nullptr;
  return chunk;
}

OJson ToolCallHeader(size_t index, const FakeToolCall& call) {
  return OJson{{"index", index},
               {"id", call.id},
               {"type", "function"},
               {"function", {{"name", call.name}, {"arguments", ""}}}};
}

std::string FinishReason(const LlmReply& r) {
  if (!r.finish_reason.empty()) return r.finish_reason;
  return r.tool_calls.empty() ? "stop" : "tool_calls";
}

// The JSON payloads of a streamed answer, in order: the role chunk, content and tool-call
// deltas, the finish chunk, and (include_usage) the usage chunk.
std::vector<std::string> AnswerChunks(const LlmReply& r, const AnswerContext& ctx) {
  std::vector<std::string> out;
  const bool merge_first_call = r.text.empty() && !r.tool_calls.empty() && !r.whole_tool_calls;
  if (merge_first_call) {
    OJson delta = {{"role", "assistant"},
                   {"content", nullptr},
                   {"tool_calls", OJson::array({ToolCallHeader(0, r.tool_calls[0])})},
                   {"refusal", nullptr}};
    out.push_back(Dump(ChunkJson(ctx, std::move(delta), nullptr)));
  } else {
    OJson delta = {{"role", "assistant"}, {"content", ""}, {"refusal", nullptr}};
    out.push_back(Dump(ChunkJson(ctx, std::move(delta), nullptr)));
  }
  for (const std::string& piece : SplitChars(r.text, r.chunk_chars)) {
    out.push_back(Dump(ChunkJson(ctx, OJson{{"content", piece}}, nullptr)));
  }
  if (r.whole_tool_calls && !r.tool_calls.empty()) {
    OJson calls = OJson::array();
    for (size_t i = 0; i < r.tool_calls.size(); ++i) {
      const FakeToolCall& c = r.tool_calls[i];
      calls.push_back(OJson{{"index", i},
                            {"id", c.id},
                            {"type", "function"},
                            {"function", {{"name", c.name}, {"arguments", c.arguments}}}});
    }
    out.push_back(Dump(ChunkJson(ctx, OJson{{"tool_calls", std::move(calls)}}, nullptr)));
  } else {
    for (size_t i = 0; i < r.tool_calls.size(); ++i) {
      const FakeToolCall& c = r.tool_calls[i];
      if (!(i == 0 && merge_first_call)) {
        OJson delta = {{"tool_calls", OJson::array({ToolCallHeader(i, c)})}};
        out.push_back(Dump(ChunkJson(ctx, std::move(delta), nullptr)));
      }
      for (const std::string& piece : SplitChars(c.arguments, r.chunk_chars)) {
        OJson delta = {{"tool_calls",
                        OJson::array({OJson{{"index", i}, {"function", {{"arguments", piece}}}}})}};
        out.push_back(Dump(ChunkJson(ctx, std::move(delta), nullptr)));
      }
    }
  }
  const std::string finish = FinishReason(r);
  out.push_back(Dump(ChunkJson(ctx, OJson::object(), finish.c_str())));
  if (ctx.include_usage) {
    OJson chunk = {{"id", ctx.id},
                   {"object", "chat.completion.chunk"},
                   {"created", ctx.created},
                   {"model", ctx.model},
                   {"service_tier", "default"},
                   {"system_fingerprint", kFingerprint},
                   {"choices", OJson::array()},
                   {"usage", UsageJson(ctx.usage)}};
    out.push_back(Dump(chunk));
  }
  return out;
}

std::string CompletionBody(const LlmReply& r, const AnswerContext& ctx) {
  OJson message = {{"role", "assistant"}};
  if (r.text.empty() && !r.tool_calls.empty()) {
    message["content"] = nullptr;
  } else {
    message["content"] = r.text;
  }
  message["refusal"] = nullptr;
  message["annotations"] = OJson::array();
  if (!r.tool_calls.empty()) {
    OJson calls = OJson::array();
    for (const FakeToolCall& c : r.tool_calls) {
      calls.push_back(OJson{{"id", c.id},
                            {"type", "function"},
                            {"function", {{"name", c.name}, {"arguments", c.arguments}}}});
    }
    message["tool_calls"] = std::move(calls);
  }
  OJson completion = {{"id", ctx.id},
                      {"object", "chat.completion"},
                      {"created", ctx.created},
                      {"model", ctx.model},
                      {"choices", OJson::array({OJson{{"index", 0},
                                                      {"message", std::move(message)},
                                                      {"logprobs", nullptr},
                                                      {"finish_reason", FinishReason(r)}}})},
                      {"usage", UsageJson(ctx.usage)},
                      {"service_tier", "default"},
                      {"system_fingerprint", kFingerprint}};
  return Dump(completion);
}

// One socket write, after an optional delay; the connection may be closed after it.
struct Step {
  int delay_ms = 0;
  std::string bytes;
  bool close_after = false;
};

// How to answer one request.
struct Plan {
  std::vector<Step> steps;
  bool keep_alive = true;  // read the next request afterwards (else close gracefully)
  bool drain = false;      // after the steps: stop sending, read and discard input, then close
};

// An SSE event (or comment) as bytes, with the delay before it.
struct Event {
  int delay_ms = 0;
  std::string bytes;
};

Plan FixedPlan(int delay_ms, int status, const std::string& body, bool keep_alive,
               const std::string& request_id, const std::string& extra_headers = "",
               const std::string& content_type = "application/json") {
  Plan p;
  p.keep_alive = keep_alive;
  p.steps.push_back(
      Step{delay_ms,
           Head(status, content_type, body.size(), keep_alive, request_id, extra_headers) + body,
           false});
  return p;
}

Plan ErrorPlan(int status, const OJson& error, bool keep_alive, const std::string& request_id) {
  return FixedPlan(0, status, Dump(error), keep_alive, request_id);
}

// Steps for a streamed response: the head, then the events as HTTP chunks (one per event, or
// pieces of split_bytes of the concatenated events), then the chunked terminator unless the
// connection is to be cut (`cut`), in which case the last step closes the socket.
Plan StreamPlan(const LlmReply& r, const std::string& head, const std::vector<Event>& events,
                bool cut, bool keep_alive) {
  Plan p;
  p.keep_alive = keep_alive;
  p.steps.push_back(Step{r.delay_ms, head, false});
  if (r.split_bytes == 0) {
    for (const Event& e : events) {
      if (e.delay_ms > 0) {
        p.steps.push_back(Step{e.delay_ms, ChunkFrame(e.bytes), false});
      } else {
        p.steps.back().bytes += ChunkFrame(e.bytes);  // same write as what precedes it
      }
    }
  } else {
    std::string all;
    std::vector<std::pair<size_t, int>> starts;  // offset, delay
    for (const Event& e : events) {
      starts.emplace_back(all.size(), e.delay_ms);
      all += e.bytes;
    }
    size_t next_event = 0;
    for (size_t off = 0; off < all.size(); off += r.split_bytes) {
      size_t end = std::min(all.size(), off + r.split_bytes);
      int delay = 0;
      while (next_event < starts.size() && starts[next_event].first < end) {
        if (off > 0) delay = std::max(delay, starts[next_event].second);
        ++next_event;
      }
      p.steps.push_back(
          Step{delay, ChunkFrame(std::string_view(all).substr(off, end - off)), false});
    }
  }
  if (cut) {
    p.steps.back().close_after = true;
  } else {
    p.steps.back().bytes += kChunkEnd;
  }
  return p;
}

}  // namespace

// ---------------------------------------------------------------------------------------------

class LlmServer::Impl {
 public:
  class Session;

  explicit Impl(LlmServerOptions options)
      : options_(std::move(options)),
        guard_(io_.get_executor()),
        acceptor_(asio::make_strand(io_)),
        accept_retry_(acceptor_.get_executor()) {
    boost::system::error_code ec;
    tcp::endpoint ep(asio::ip::make_address("127.0.0.1"), 0);
    acceptor_.open(ep.protocol(), ec);
    if (!ec) acceptor_.set_option(asio::socket_base::reuse_address(true), ec);
    if (!ec) acceptor_.bind(ep, ec);
    if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) {
      std::fprintf(stderr, "LlmServer: cannot listen on 127.0.0.1: %s\n", ec.message().c_str());
      std::abort();  // a test fixture that cannot listen is useless
    }
    port_ = acceptor_.local_endpoint(ec).port();
    DoAccept();
    int n = std::max(1, options_.threads);
    for (int i = 0; i < n; ++i) threads_.emplace_back([this] { io_.run(); });
  }

  ~Impl() {
    stopping_ = true;
    asio::post(acceptor_.get_executor(), [this] {
      boost::system::error_code ec;
      acceptor_.close(ec);
      accept_retry_.cancel();
      std::vector<std::shared_ptr<Session>> live;
      {
        std::lock_guard<std::mutex> lock(mu_);
        for (auto& [id, weak] : sessions_) {
          if (auto s = weak.lock()) live.push_back(std::move(s));
        }
      }
      for (auto& s : live) CloseSession(s);
    });
    guard_.reset();
    for (auto& t : threads_) t.join();
  }

  void DoAccept() {
    acceptor_.async_accept(asio::make_strand(io_),
                           [this](boost::system::error_code ec, tcp::socket socket) {
                             OnAccept(ec, std::move(socket));
                           });
  }

  void OnAccept(boost::system::error_code ec, tcp::socket socket);
  static void CloseSession(const std::shared_ptr<Session>& s);

  // Decides the answer to a complete request (records it, validates it, takes a reply).
  Plan Answer(const http::request<http::string_body>& req, const std::string& request_id);
  // The request's header said its body is over the limit.
  Plan TooLarge(const http::request_parser<http::string_body>& parser,
                const std::string& request_id);
  Plan PlanForReply(const LlmReply& reply, const Json& request, bool keep_alive,
                    const std::string& request_id);
  LlmReply NextReply(const Json& request);
  void Record(Json body, const http::fields& fields);

  void BeginActive() {
    std::lock_guard<std::mutex> lock(mu_);
    ++active_;
    max_active_ = std::max(max_active_, active_);
  }
  void EndActive() {
    std::lock_guard<std::mutex> lock(mu_);
    --active_;
  }
  void SessionGone(uint64_t id) {
    std::lock_guard<std::mutex> lock(mu_);
    sessions_.erase(id);
    --open_;
  }

  const LlmServerOptions options_;
  asio::io_context io_;
  asio::executor_work_guard<asio::io_context::executor_type> guard_;
  tcp::acceptor acceptor_;           // on its own strand
  asio::steady_timer accept_retry_;  // after accept errors such as EMFILE
  uint16_t port_ = 0;
  std::vector<std::thread> threads_;
  std::atomic<bool> stopping_{false};
  std::atomic<uint64_t> next_id_{1};

  mutable std::mutex mu_;
  mutable std::condition_variable cv_;  // signalled when a request is recorded
  std::deque<LlmReply> queue_;
  std::function<LlmReply(const Json&)> responder_;
  std::vector<Json> requests_;
  std::vector<std::vector<std::pair<std::string, std::string>>> headers_;
  size_t active_ = 0;
  size_t max_active_ = 0;
  size_t open_ = 0;
  size_t total_ = 0;
  std::map<uint64_t, std::weak_ptr<Session>> sessions_;
};

// One connection. Everything runs on the socket's strand.
class LlmServer::Impl::Session : public std::enable_shared_from_this<Session> {
 public:
  Session(Impl* server, tcp::socket socket, uint64_t id)
      : server_(server), id_(id), socket_(std::move(socket)), timer_(socket_.get_executor()) {}

  ~Session() {
    if (answering_) server_->EndActive();
    server_->SessionGone(id_);
  }

  asio::any_io_executor executor() { return socket_.get_executor(); }

  void Start() {
    boost::system::error_code ec;
    socket_.set_option(tcp::no_delay(true), ec);
    asio::dispatch(socket_.get_executor(), [self = shared_from_this()] { self->DoRead(); });
  }

  // Cuts the connection (idempotent).
  void Close() {
    if (closed_) return;
    closed_ = true;
    EndAnswer();
    boost::system::error_code ec;
    socket_.shutdown(tcp::socket::shutdown_both, ec);
    socket_.close(ec);
    timer_.cancel();
  }

 private:
  void DoRead() {
    if (closed_) return;
    if (server_->stopping_) {
      Close();
      return;
    }
    parser_.emplace();
    parser_->body_limit(kMaxBodyBytes);
    parser_->header_limit(kMaxHeaderBytes);
    http::async_read_header(
        socket_, buffer_, *parser_,
        [self = shared_from_this()](boost::system::error_code ec, size_t) { self->OnHeader(ec); });
  }

  // curl sends `Expect: 100-continue` with large bodies and waits a second for the interim
  // answer; give it at once (unless the header alone already decides the answer: 413).
  void OnHeader(boost::system::error_code ec) {
    if (closed_) return;
    if (ec) {
      OnRead(ec);
      return;
    }
    auto expect = parser_->get().find(http::field::expect);
    if (expect != parser_->get().end() && beast::iequals(expect->value(), "100-continue")) {
      static const std::string kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
      asio::async_write(socket_, asio::buffer(kContinue),
                        [self = shared_from_this()](boost::system::error_code ec, size_t) {
                          if (self->closed_) return;
                          if (ec) {
                            self->Close();
                            return;
                          }
                          self->ReadBody();
                        });
      return;
    }
    ReadBody();
  }

  void ReadBody() {
    http::async_read(
        socket_, buffer_, *parser_,
        [self = shared_from_this()](boost::system::error_code ec, size_t) { self->OnRead(ec); });
  }

  void OnRead(boost::system::error_code ec) {
    if (closed_) return;
    std::string request_id = "req_fake" + std::to_string(server_->next_id_++);
    if (ec == http::error::body_limit) {
      BeginAnswer();
      plan_ = server_->TooLarge(*parser_, request_id);
    } else if (ec) {
      Close();  // end of stream, reset, or a request that is not HTTP
      return;
    } else {
      BeginAnswer();
      plan_ = server_->Answer(parser_->get(), request_id);
    }
    parser_.reset();
    step_ = 0;
    waited_ = false;
    RunStep();
  }

  void BeginAnswer() {
    answering_ = true;
    server_->BeginActive();
  }
  void EndAnswer() {
    if (!answering_) return;
    answering_ = false;
    server_->EndActive();
  }

  void RunStep() {
    if (closed_) return;
    if (step_ >= plan_.steps.size()) {
      EndAnswer();
      if (plan_.drain) {
        Drain();
      } else if (plan_.keep_alive) {
        DoRead();
      } else {
        boost::system::error_code ec;
        socket_.shutdown(tcp::socket::shutdown_send, ec);
        Close();
      }
      return;
    }
    Step& s = plan_.steps[step_];
    if (s.delay_ms > 0 && !waited_) {
      waited_ = true;
      timer_.expires_after(std::chrono::milliseconds(s.delay_ms));
      timer_.async_wait([self = shared_from_this()](boost::system::error_code ec) {
        if (ec || self->closed_) return;
        self->RunStep();
      });
      return;
    }
    waited_ = false;
    if (s.bytes.empty()) {
      AfterWrite();
      return;
    }
    asio::async_write(socket_, asio::buffer(s.bytes),
                      [self = shared_from_this()](boost::system::error_code ec, size_t) {
                        if (self->closed_) return;
                        if (ec) {
                          self->Close();
                          return;
                        }
                        self->AfterWrite();
                      });
  }

  void AfterWrite() {
    bool close = plan_.steps[step_].close_after;
    ++step_;
    if (close) {
      Close();
      return;
    }
    RunStep();
  }

  // Stop sending, then read and discard whatever the client still sends (so it sees our answer
  // instead of a reset while it is still writing), until EOF or kDrainTimeoutMs.
  void Drain() {
    boost::system::error_code ec;
    socket_.shutdown(tcp::socket::shutdown_send, ec);
    timer_.expires_after(std::chrono::milliseconds(kDrainTimeoutMs));
    timer_.async_wait([self = shared_from_this()](boost::system::error_code ec) {
      if (!ec) self->Close();
    });
    DrainRead();
  }

  void DrainRead() {
    socket_.async_read_some(asio::buffer(drain_buf_),
                            [self = shared_from_this()](boost::system::error_code ec, size_t) {
                              if (self->closed_) return;
                              if (ec) {
                                self->Close();
                                return;
                              }
                              self->DrainRead();
                            });
  }

  Impl* const server_;
  const uint64_t id_;
  tcp::socket socket_;
  asio::steady_timer timer_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  Plan plan_;
  size_t step_ = 0;
  bool waited_ = false;  // the current step's delay has passed
  bool closed_ = false;
  bool answering_ = false;
  std::array<char, 16384> drain_buf_{};
};

void LlmServer::Impl::OnAccept(boost::system::error_code ec, tcp::socket socket) {
  if (stopping_ || ec == asio::error::operation_aborted) return;
  if (ec) {
    // Out of descriptors or a transient failure: try again shortly instead of spinning.
    accept_retry_.expires_after(std::chrono::milliseconds(kAcceptRetryMs));
    accept_retry_.async_wait([this](boost::system::error_code wec) {
      if (!wec && !stopping_) DoAccept();
    });
    return;
  }
  uint64_t id = next_id_++;
  auto session = std::make_shared<Session>(this, std::move(socket), id);
  {
    std::lock_guard<std::mutex> lock(mu_);
    sessions_[id] = session;
    ++open_;
    ++total_;
  }
  session->Start();
  DoAccept();
}

void LlmServer::Impl::CloseSession(const std::shared_ptr<Session>& s) {
  asio::post(s->executor(), [s] { s->Close(); });
}

void LlmServer::Impl::Record(Json body, const http::fields& fields) {
  std::vector<std::pair<std::string, std::string>> headers;
  for (const auto& f : fields) {
    headers.emplace_back(std::string(f.name_string()), std::string(f.value()));
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    requests_.push_back(std::move(body));
    headers_.push_back(std::move(headers));
  }
  cv_.notify_all();
}

Plan LlmServer::Impl::TooLarge(const http::request_parser<http::string_body>& parser,
                               const std::string& request_id) {
  const auto& req = parser.get();
  std::string_view target = req.target();
  std::string_view path = target.substr(0, target.find('?'));
  if (req.method() == http::verb::post && path == "/v1/chat/completions") {
    Record(nullptr, req.base());
  }
  OJson error =
      ErrorJson("Request body too large: the limit is " + std::to_string(kMaxBodyBytes) + " bytes.",
                "invalid_request_error", nullptr, nullptr);
  Plan p = ErrorPlan(413, error, /*keep_alive=*/false, request_id);
  p.drain = true;
  return p;
}

LlmReply LlmServer::Impl::NextReply(const Json& request) {
  std::function<LlmReply(const Json&)> responder;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!queue_.empty()) {
      LlmReply r = std::move(queue_.front());
      queue_.pop_front();
      return r;
    }
    responder = responder_;
  }
  if (responder) {
    try {
      return responder(request);
    } catch (const std::exception& e) {
      LlmReply r;
      r.kind = LlmReply::Kind::kHttpError;
      r.status = 500;
      r.error_body = Dump(
          ErrorJson(std::string("responder threw: ") + e.what(), "server_error", nullptr, nullptr));
      return r;
    } catch (...) {
      LlmReply r;
      r.kind = LlmReply::Kind::kHttpError;
      r.status = 500;
      return r;
    }
  }
  std::string last_user;
  for (const Json& m : request["messages"]) {
    if (m.is_object() && StringField(m, "role") == "user") {
      auto c = m.find("content");
      if (c != m.end()) last_user = ContentText(*c);
    }
  }
  LlmReply r;
  r.text = "You said: " + last_user;
  return r;
}

Plan LlmServer::Impl::Answer(const http::request<http::string_body>& req,
                             const std::string& request_id) {
  const bool keep_alive = req.keep_alive();
  std::string_view target = req.target();
  std::string_view path = target.substr(0, target.find('?'));
  if (req.method() != http::verb::post || path != "/v1/chat/completions") {
    std::string message =
        "Invalid URL (" + std::string(req.method_string()) + " " + std::string(path) + ")";
    return ErrorPlan(404, ErrorJson(message, "invalid_request_error", nullptr, nullptr), keep_alive,
                     request_id);
  }

  Json body = Json::parse(req.body(), nullptr, /*allow_exceptions=*/false);
  const bool parsed = !body.is_discarded();
  Record(parsed ? body : Json(req.body()), req.base());

  if (!options_.api_key.empty()) {
    auto it = req.find(http::field::authorization);
    if (it == req.end()) {
      return ErrorPlan(401,
                       ErrorJson("You didn't provide an API key. You need to provide your API "
                                 "key in an Authorization header using Bearer auth (i.e. "
                                 "Authorization: Bearer YOUR_KEY).",
                                 "invalid_request_error", nullptr, "invalid_api_key"),
                       keep_alive, request_id);
    }
    std::string_view value = it->value();
    if (value != "Bearer " + options_.api_key) {
      std::string key(value.substr(0, 7) == "Bearer " ? value.substr(7) : value);
      std::string masked =
          key.size() > 8 ? key.substr(0, 3) + "***" + key.substr(key.size() - 4) : "***";
      return ErrorPlan(401,
                       ErrorJson("Incorrect API key provided: " + masked +
                                     ". You can find your API key at "
                                     "https://platform.openai.com/account/api-keys.",
                                 "invalid_request_error", nullptr, "invalid_api_key"),
                       keep_alive, request_id);
    }
  }

  if (!parsed) {
    return ErrorPlan(400,
                     ErrorJson("We could not parse the JSON body of your request. (HINT: This "
                               "likely means you aren't using your HTTP library correctly. The "
                               "OpenAI API expects a JSON payload, but what was sent was not "
                               "valid JSON.)",
                               "invalid_request_error", nullptr, nullptr),
                     keep_alive, request_id);
  }
  if (!body.is_object()) {
    return ErrorPlan(400,
                     ErrorJson("Invalid type for request body: expected an object, but got " +
                                   std::string(body.type_name()) + " instead.",
                               "invalid_request_error", nullptr, "invalid_type"),
                     keep_alive, request_id);
  }
  auto model = body.find("model");
  if (model == body.end() || model->is_null()) {
    return ErrorPlan(
        400,
        ErrorJson("you must provide a model parameter", "invalid_request_error", nullptr, nullptr),
        keep_alive, request_id);
  }
  if (!model->is_string()) {
    return ErrorPlan(400,
                     ErrorJson("Invalid type for 'model': expected a string, but got " +
                                   std::string(model->type_name()) + " instead.",
                               "invalid_request_error", "model", "invalid_type"),
                     keep_alive, request_id);
  }
  auto messages = body.find("messages");
  if (messages == body.end() || messages->is_null()) {
    return ErrorPlan(400,
                     ErrorJson("Missing required parameter: 'messages'.", "invalid_request_error",
                               "messages", "missing_required_parameter"),
                     keep_alive, request_id);
  }
  if (!messages->is_array()) {
    return ErrorPlan(400,
                     ErrorJson("Invalid type for 'messages': expected an array of objects, but "
                               "got " +
                                   std::string(messages->type_name()) + " instead.",
                               "invalid_request_error", "messages", "invalid_type"),
                     keep_alive, request_id);
  }
  const bool stream = IsTrue(body, "stream");
  auto stream_options = body.find("stream_options");
  const bool has_stream_options = stream_options != body.end() && !stream_options->is_null();
  if (has_stream_options && !stream) {
    return ErrorPlan(400,
                     ErrorJson("The 'stream_options' parameter is only allowed when 'stream' is "
                               "enabled.",
                               "invalid_request_error", "stream_options", nullptr),
                     keep_alive, request_id);
  }
  if (model->get<std::string>() != options_.model) {
    return ErrorPlan(404,
                     ErrorJson("The model `" + model->get<std::string>() +
                                   "` does not exist or you do not have access to it.",
                               "invalid_request_error", nullptr, "model_not_found"),
                     keep_alive, request_id);
  }

  LlmReply reply = NextReply(body);
  return PlanForReply(reply, body, keep_alive, request_id);
}

Plan LlmServer::Impl::PlanForReply(const LlmReply& reply_in, const Json& request, bool keep_alive,
                                   const std::string& request_id) {
  using Kind = LlmReply::Kind;
  LlmReply r = reply_in;
  const uint64_t serial = next_id_++;
  for (size_t i = 0; i < r.tool_calls.size(); ++i) {
    if (r.tool_calls[i].id.empty()) {
      char id[64];
      std::snprintf(id, sizeof(id), "call_fake%020llu",
                    static_cast<unsigned long long>(serial * 100 + i));
      r.tool_calls[i].id = id;
    }
  }

  if (r.kind == Kind::kHttpError) {
    std::string body = r.error_body.empty() ? Dump(DefaultErrorFor(r.status)) : r.error_body;
    std::string extra;
    if (r.retry_after_s >= 0) extra = "Retry-After: " + std::to_string(r.retry_after_s) + "\r\n";
    return FixedPlan(r.delay_ms, r.status, body, keep_alive, request_id, extra,
                     r.content_type.empty() ? "application/json" : r.content_type);
  }
  if (r.kind == Kind::kDropBeforeHeaders) {
    Plan p;
    p.steps.push_back(Step{r.delay_ms, "", /*close_after=*/true});
    return p;
  }

  AnswerContext ctx;
  char id[64];
  std::snprintf(id, sizeof(id), "chatcmpl-fake%011llu", static_cast<unsigned long long>(serial));
  ctx.id = id;
  ctx.created = static_cast<int64_t>(std::time(nullptr));
  ctx.model = options_.model;
  const bool stream = IsTrue(request, "stream");
  if (stream) {
    auto so = request.find("stream_options");
    ctx.include_usage = so != request.end() && so->is_object() && IsTrue(*so, "include_usage");
  }
  if (r.prompt_tokens > 0) {
    ctx.usage.prompt = r.prompt_tokens;
  } else {
    size_t chars = 0;
    for (const Json& m : request["messages"]) {
      if (!m.is_object()) continue;
      auto c = m.find("content");
      if (c != m.end()) chars += CodePoints(c->is_string() ? c->get<std::string>() : c->dump());
      chars += 16;  // role and framing
    }
    ctx.usage.prompt = std::max<int64_t>(1, EstimateTokens(chars));
  }
  if (r.completion_tokens > 0) {
    ctx.usage.completion = r.completion_tokens;
  } else {
    size_t chars = CodePoints(r.text);
    for (const FakeToolCall& c : r.tool_calls) {
      chars += CodePoints(c.name) + CodePoints(c.arguments) + 8;
    }
    ctx.usage.completion = std::max<int64_t>(1, EstimateTokens(chars));
  }

  const std::string error_payload =
      r.error_body.empty()
          ? Dump(ErrorJson(
                "The server had an error while processing your request. Sorry about that!",
                "server_error", nullptr, nullptr))
          : r.error_body;

  if (!stream) {
    std::string body = CompletionBody(r, ctx);
    switch (r.kind) {
      case Kind::kDropMidStream: {
        Plan p;
        p.steps.push_back(Step{r.delay_ms,
                               Head(200, "application/json", body.size(), keep_alive, request_id) +
                                   body.substr(0, body.size() / 2),
                               /*close_after=*/true});
        return p;
      }
      case Kind::kMalformedChunk:
        return FixedPlan(r.delay_ms, 200, "{not json", keep_alive, request_id);
      case Kind::kInBandError:
        return FixedPlan(r.delay_ms, 200, error_payload, keep_alive, request_id);
      case Kind::kStall: {
        Plan p;
        p.keep_alive = keep_alive;
        p.steps.push_back(Step{
            r.delay_ms, Head(200, "application/json", body.size(), keep_alive, request_id), false});
        p.steps.push_back(Step{r.stall_ms, body, false});
        return p;
      }
      default:
        return FixedPlan(r.delay_ms, 200, body, keep_alive, request_id);
    }
  }

  const std::string eol = r.crlf ? "\r\n" : "\n";
  auto data_event = [&](const std::string& payload) { return "data: " + payload + eol + eol; };
  std::vector<std::string> chunks = AnswerChunks(r, ctx);
  std::vector<std::string> payloads;  // data event payloads in order
  bool cut = false;
  switch (r.kind) {
    case Kind::kDropMidStream:
      payloads.assign(chunks.begin(), chunks.begin() + static_cast<std::ptrdiff_t>(std::min(
                                                           r.drop_after_chunks, chunks.size())));
      cut = true;
      break;
    case Kind::kMalformedChunk:
    case Kind::kInBandError:
      payloads.assign(chunks.begin(), chunks.begin() + static_cast<std::ptrdiff_t>(std::min(
                                                           r.drop_after_chunks, chunks.size())));
      payloads.push_back(r.kind == Kind::kMalformedChunk ? "{not json" : error_payload);
      payloads.push_back("[DONE]");
      break;
    case Kind::kNoDone:
      payloads = chunks;
      break;
    default:
      payloads = chunks;
      payloads.push_back("[DONE]");
      break;
  }

  std::vector<Event> events;
  for (size_t i = 0; i < payloads.size(); ++i) {
    int delay = i == 0 ? 0 : r.chunk_delay_ms;
    if (r.kind == Kind::kStall && i == 1) delay += r.stall_ms;
    if (r.comment_pings && i > 0) {
      events.push_back(Event{delay / 2, ": ping" + eol + eol});
      delay -= delay / 2;
    }
    events.push_back(Event{delay, data_event(payloads[i])});
  }
  std::string head = Head(200, "text/event-stream; charset=utf-8", std::nullopt, keep_alive,
                          request_id, "Cache-Control: no-cache\r\n");
  return StreamPlan(r, head, events, cut, keep_alive);
}

// ---------------------------------------------------------------------------------------------

LlmServer::LlmServer(LlmServerOptions options)
    : impl_(std::make_unique<Impl>(std::move(options))) {}

LlmServer::~LlmServer() = default;

uint16_t LlmServer::port() const { return impl_->port_; }

std::string LlmServer::base_url() const {
  return "http://127.0.0.1:" + std::to_string(impl_->port_) + "/v1";
}

void LlmServer::Push(LlmReply reply) {
  std::lock_guard<std::mutex> lock(impl_->mu_);
  impl_->queue_.push_back(std::move(reply));
}

size_t LlmServer::Pending() const {
  std::lock_guard<std::mutex> lock(impl_->mu_);
  return impl_->queue_.size();
}

void LlmServer::SetResponder(std::function<LlmReply(const nlohmann::json& request)> responder) {
  std::lock_guard<std::mutex> lock(impl_->mu_);
  impl_->responder_ = std::move(responder);
}

std::vector<nlohmann::json> LlmServer::Requests() const {
  std::lock_guard<std::mutex> lock(impl_->mu_);
  return impl_->requests_;
}

std::vector<std::vector<std::pair<std::string, std::string>>> LlmServer::RequestHeaders() const {
  std::lock_guard<std::mutex> lock(impl_->mu_);
  return impl_->headers_;
}

size_t LlmServer::RequestCount() const {
  std::lock_guard<std::mutex> lock(impl_->mu_);
  return impl_->requests_.size();
}

bool LlmServer::WaitForRequests(size_t n, int timeout_ms) const {
  std::unique_lock<std::mutex> lock(impl_->mu_);
  return impl_->cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms),
                             [&] { return impl_->requests_.size() >= n; });
}

size_t LlmServer::ActiveRequests() const {
  std::lock_guard<std::mutex> lock(impl_->mu_);
  return impl_->active_;
}

size_t LlmServer::MaxConcurrent() const {
  std::lock_guard<std::mutex> lock(impl_->mu_);
  return impl_->max_active_;
}

size_t LlmServer::OpenConnections() const {
  std::lock_guard<std::mutex> lock(impl_->mu_);
  return impl_->open_;
}

size_t LlmServer::TotalConnections() const {
  std::lock_guard<std::mutex> lock(impl_->mu_);
  return impl_->total_;
}

}  // namespace parley::testing
