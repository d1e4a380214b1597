// HttpServer on Boost.Beast. One strand per connection; the handler runs on that strand and the
// Responder posts back onto it, so a connection's state is never touched by two threads at once.
//
// Per connection the cycle is: read header -> (100 Continue) -> read body -> handler -> write
// response -> read the next header (keep-alive) or close. Error responses (400/413/431/503) close
// the connection with a lingering close so the client can read them even if it is still sending.

#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/basic_stream.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/string.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/serializer.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <deque>
#include <exception>
#include <mutex>
#include <optional>
#include <string_view>
#include <type_traits>
#include <unordered_map>

#include "net/http.h"

namespace parley::net {

// What a ResponseStream shares between its writer and the connection that sends it.
struct ResponseStream::State {
  explicit State(size_t max_queued) : max_queued_bytes(max_queued) {}

  const size_t max_queued_bytes;
  std::mutex mu;  // guards everything below
  std::deque<std::string> queue;
  size_t queued_bytes = 0;
  bool ended = false;     // End() called
  bool closed = false;    // no more writes accepted
  bool finished = false;  // the outcome is known; on_close callbacks have run or are running
  Status outcome;
  std::vector<std::function<void(Status)>> on_close;
  // Set by the connection once the head is written: schedules a write of what is queued on the
  // connection's strand. Called without `mu` held.
  std::function<void()> wake;
};

namespace internal {

// The connection's side of a ResponseStream.
class StreamAccess {
 public:
  static std::shared_ptr<ResponseStream::State> StateOf(const ResponseStream& stream) {
    return stream.state_;
  }
  // Records the outcome and runs the close callbacks, once. Any thread; never under `mu`.
  static void Finish(ResponseStream::State& state, Status outcome) {
    std::vector<std::function<void(Status)>> callbacks;
    {
      std::lock_guard<std::mutex> lock(state.mu);
      if (state.finished) return;
      state.finished = true;
      state.closed = true;
      state.outcome = outcome;
      state.queue.clear();
      state.queued_bytes = 0;
      state.wake = nullptr;
      callbacks.swap(state.on_close);
    }
    for (auto& callback : callbacks) {
      try {
        if (callback) callback(outcome);
      } catch (...) {
        // A callback must not throw through the io loop; its failure is its own.
      }
    }
  }
};

}  // namespace internal

std::shared_ptr<ResponseStream> ResponseStream::Create(size_t max_queued_bytes) {
  return std::make_shared<ResponseStream>(std::make_shared<State>(max_queued_bytes));
}

bool ResponseStream::Write(std::string data) {
  std::function<void()> wake;
  bool overflow = false;
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    if (state_->closed) return false;
    if (data.empty()) return true;
    if (state_->queued_bytes + data.size() > state_->max_queued_bytes) {
      overflow = true;
    } else {
      state_->queued_bytes += data.size();
      state_->queue.push_back(std::move(data));
    }
    wake = state_->wake;
  }
  if (overflow) {
    // The connection notices the outcome on its next wake-up and closes.
    internal::StreamAccess::Finish(
        *state_, Status::ResourceExhausted("response stream queue over " +
                                           std::to_string(state_->max_queued_bytes) + " bytes"));
  }
  if (wake) wake();
  return !overflow;
}

void ResponseStream::End() {
  std::function<void()> wake;
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    if (state_->closed) return;
    state_->ended = true;
    state_->closed = true;
    wake = state_->wake;
  }
  if (wake) wake();
}

bool ResponseStream::closed() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->closed;
}

void ResponseStream::OnClose(std::function<void(Status)> callback) {
  Status outcome;
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    if (!state_->finished) {
      state_->on_close.push_back(std::move(callback));
      return;
    }
    outcome = state_->outcome;
  }
  if (callback) callback(outcome);
}

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using unix_stream = asio::local::stream_protocol;
using Strand = asio::strand<asio::io_context::executor_type>;
using ErrorCode = boost::system::error_code;

// Header block limit: generous for webhook signatures and cookies, small enough to bound memory.
constexpr uint32_t kHeaderLimitBytes = 16 * 1024;
// After an error response we read and discard at most this much of what the client still sends,
// for at most kLingerMs, so that our close does not turn into a reset that eats the response.
constexpr size_t kLingerMaxBytes = 1024 * 1024;
constexpr int kLingerMs = 2'000;
constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";

std::string JsonError(std::string_view code, std::string_view message) {
  // Codes and messages here are our own constants or Beast error texts: escape only what JSON
  // needs so that an unexpected character never produces invalid JSON.
  std::string out;
  out.reserve(32 + code.size() + message.size());
  out += "{\"error\":\"";
  out += code;
  out += "\",\"message\":\"";
  for (char c : message) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      out += ' ';
    } else {
      out += c;
    }
  }
  out += "\"}";
  return out;
}

HttpResponse ErrorResponse(int status, std::string_view code, std::string_view message) {
  HttpResponse r;
  r.status = status;
  r.body = JsonError(code, message);
  return r;
}

bool HasLineBreak(std::string_view s) { return s.find_first_of("\r\n") != std::string_view::npos; }

// Headers a handler may not set: framing is ours.
bool IsReservedHeader(std::string_view name) {
  return beast::iequals(name, "content-length") || beast::iequals(name, "transfer-encoding") ||
         beast::iequals(name, "connection") || beast::iequals(name, "content-type") ||
         beast::iequals(name, "server");
}

const boost::system::error_category& HttpErrorCategory() {
  static const boost::system::error_category& category =
      http::make_error_code(http::error::end_of_stream).category();
  return category;
}

class ConnectionBase;

// State shared by the server object, its listeners and its connections. Outlives the HttpServer
// while connections are still open.
class ServerCore : public std::enable_shared_from_this<ServerCore> {
 public:
  ServerCore(asio::io_context& io, HttpServerOptions options, HttpHandler handler)
      : io(io), options(options), handler(std::move(handler)) {}

  asio::io_context& io;
  const HttpServerOptions options;
  const HttpHandler handler;

  std::atomic<bool> stopped{false};
  std::atomic<size_t> in_flight{0};
  std::atomic<size_t> open_connections{0};
  std::atomic<uint64_t> accepted{0};

  void Register(ConnectionBase* conn, std::weak_ptr<ConnectionBase> weak) {
    std::lock_guard<std::mutex> lock(mu_);
    connections_.emplace(conn, std::move(weak));
  }
  void Unregister(ConnectionBase* conn) {
    std::lock_guard<std::mutex> lock(mu_);
    connections_.erase(conn);
  }
  std::vector<std::shared_ptr<ConnectionBase>> Connections() {
    std::vector<std::shared_ptr<ConnectionBase>> out;
    std::lock_guard<std::mutex> lock(mu_);
    out.reserve(connections_.size());
    for (auto& entry : connections_) {
      if (auto conn = entry.second.lock()) out.push_back(std::move(conn));
    }
    return out;
  }

 private:
  std::mutex mu_;  // guards connections_ only; taken on connect, disconnect and Stop
  std::unordered_map<ConnectionBase*, std::weak_ptr<ConnectionBase>> connections_;
};

class ConnectionBase : public std::enable_shared_from_this<ConnectionBase> {
 public:
  virtual ~ConnectionBase() = default;
  // Delivers the handler's response. Any thread; called exactly once per handed-out request.
  virtual void Complete(HttpResponse response) noexcept = 0;
  // The server is stopping: close now if idle, else after the current request. Any thread.
  virtual void OnServerStop() noexcept = 0;
};

// Shared by all copies of one Responder. Guarantees exactly one response per request: the first
// call wins, later calls are ignored, and if every copy is destroyed without a call the client
// gets a 500.
class PendingResponse {
 public:
  explicit PendingResponse(std::shared_ptr<ConnectionBase> conn) : conn_(std::move(conn)) {}
  PendingResponse(const PendingResponse&) = delete;
  PendingResponse& operator=(const PendingResponse&) = delete;
  ~PendingResponse() {
    if (!done_.exchange(true)) {
      conn_->Complete(ErrorResponse(500, "internal", "the request handler dropped the request"));
    }
  }
  void Respond(HttpResponse response) {
    if (done_.exchange(true)) return;  // a second call: ignored by contract
    conn_->Complete(std::move(response));
  }

 private:
  std::shared_ptr<ConnectionBase> conn_;
  std::atomic<bool> done_{false};
};

template <class Protocol>
class Connection final : public ConnectionBase {
 public:
  using Socket = asio::basic_stream_socket<Protocol, Strand>;
  using Stream = beast::basic_stream<Protocol, Strand>;

  Connection(std::shared_ptr<ServerCore> core, Socket socket)
      : core_(std::move(core)), strand_(socket.get_executor()), stream_(std::move(socket)) {
    if constexpr (std::is_same_v<Protocol, tcp>) {
      ErrorCode ec;
      stream_.socket().set_option(tcp::no_delay(true), ec);
      auto endpoint = stream_.socket().remote_endpoint(ec);
      if (!ec) {
        remote_address_ = endpoint.address().to_string();
        remote_is_local_ = endpoint.address().is_loopback();
      }
    } else {
      remote_address_ = "unix";
      remote_is_local_ = true;
    }
  }

  ~Connection() override {
    core_->Unregister(this);
    core_->open_connections.fetch_sub(1, std::memory_order_relaxed);
  }

  // Called once, right after construction, from the accepting strand.
  void Start() {
    core_->Register(this, weak_from_this());
    asio::post(strand_, [self = SharedThis()] {
      if (self->core_->stopped.load()) {
        self->Close();
        return;
      }
      self->ReadHeader();
    });
  }

  void Complete(HttpResponse response) noexcept override {
    try {
      asio::dispatch(strand_, [self = SharedThis(), response = std::move(response)]() mutable {
        self->WriteHandlerResponse(std::move(response));
      });
    } catch (...) {
      // Allocation failure while posting: the connection can only be abandoned.
      core_->in_flight.fetch_sub(1, std::memory_order_relaxed);
    }
  }

  void OnServerStop() noexcept override {
    try {
      asio::post(strand_, [self = SharedThis()] {
        // Idle: waiting for a request of which nothing has arrived yet.
        if (self->state_ == State::kReading && self->buffer_.size() == 0 &&
            !(self->parser_ && self->parser_->got_some())) {
          self->Close();
        }
        // Otherwise the current request completes (handler requests) or gets a 503 (requests
        // still being read), and the connection closes after the response.
      });
    } catch (...) {
    }
  }

 private:
  enum class State { kReading, kHandling, kWriting, kClosed };

  std::shared_ptr<Connection> SharedThis() {
    return std::static_pointer_cast<Connection>(shared_from_this());
  }

  // Applies request_timeout_ms to the operations started next (<= 0: no timeout).
  void ArmTimeout() {
    if (core_->options.request_timeout_ms > 0) {
      stream_.expires_after(std::chrono::milliseconds(core_->options.request_timeout_ms));
    } else {
      stream_.expires_never();
    }
  }

  void ReadHeader() {
    state_ = State::kReading;
    is_head_ = false;
    parser_.emplace();
    parser_->header_limit(kHeaderLimitBytes);
    parser_->body_limit(core_->options.max_body_bytes);
    ArmTimeout();
    http::async_read_header(stream_, buffer_, *parser_,
                            [self = SharedThis()](ErrorCode ec, size_t) { self->OnHeader(ec); });
  }

  void OnHeader(ErrorCode ec) {
    if (state_ == State::kClosed) return;
    try {
      if (ec) return OnReadError(ec);
      if (parser_->is_done()) return OnRequest();
      auto& request = parser_->get();
      auto expect = request[http::field::expect];
      if (request.version() >= 11 && beast::iequals(expect, "100-continue")) {
        ArmTimeout();
        asio::async_write(stream_, asio::buffer(kContinue.data(), kContinue.size()),
                          [self = SharedThis()](ErrorCode ec, size_t) {
                            if (self->state_ == State::kClosed) return;
                            if (ec) return self->Close();
                            self->ReadBody();
                          });
        return;
      }
      ReadBody();
    } catch (...) {
      Close();
    }
  }

  void ReadBody() {
    ArmTimeout();
    http::async_read(stream_, buffer_, *parser_, [self = SharedThis()](ErrorCode ec, size_t) {
      if (self->state_ == State::kClosed) return;
      try {
        if (ec) return self->OnReadError(ec);
        self->OnRequest();
      } catch (...) {
        self->Close();
      }
    });
  }

  void OnReadError(ErrorCode ec) {
    if (ec.category() != HttpErrorCategory() || ec == http::error::end_of_stream ||
        ec == http::error::partial_message) {
      // Timeout, reset, EOF between or inside requests, or our own close: nothing to answer.
      return Close();
    }
    if (ec == http::error::body_limit) {
      return WriteErrorAndClose(
          413, "body_too_large",
          "request body exceeds " + std::to_string(core_->options.max_body_bytes) + " bytes");
    }
    if (ec == http::error::header_limit) {
      return WriteErrorAndClose(
          431, "headers_too_large",
          "request header block exceeds " + std::to_string(kHeaderLimitBytes) + " bytes");
    }
    WriteErrorAndClose(400, "bad_request", "malformed HTTP request: " + ec.message());
  }

  void OnRequest() {
    state_ = State::kHandling;
    auto& message = parser_->get();
    keep_alive_ = message.keep_alive();
    version_ = message.version();
    is_head_ = message.method() == http::verb::head;
    if (core_->stopped.load()) {
      return WriteErrorAndClose(503, "shutting_down", "the server is shutting down");
    }

    HttpRequest request;
    request.method = std::string(message.method_string());
    request.target = std::string(message.target());
    const size_t question = request.target.find('?');
    if (question == std::string::npos) {
      request.path = request.target;
    } else {
      request.path = request.target.substr(0, question);
      request.query = request.target.substr(question + 1);
    }
    request.headers.reserve(std::distance(message.begin(), message.end()));
    for (const auto& field : message) {
      request.headers.emplace_back(std::string(field.name_string()), std::string(field.value()));
    }
    request.body = std::move(message.body());
    request.remote_address = remote_address_;
    request.remote_is_local = remote_is_local_;
    parser_.reset();

    core_->in_flight.fetch_add(1, std::memory_order_relaxed);
    auto pending = std::make_shared<PendingResponse>(shared_from_this());
    if (!core_->handler) {
      pending->Respond(ErrorResponse(500, "internal", "no request handler"));
      return;
    }
    try {
      core_->handler(std::move(request),
                     [pending](HttpResponse response) { pending->Respond(std::move(response)); });
    } catch (...) {
      pending->Respond(ErrorResponse(500, "internal", "request handler failed"));
    }
  }

  // Runs on the strand, once per request handed to the handler.
  void WriteHandlerResponse(HttpResponse response) {
    if (state_ != State::kHandling) {  // connection already closed
      core_->in_flight.fetch_sub(1, std::memory_order_relaxed);
      if (response.stream) {
        internal::StreamAccess::Finish(
            *internal::StreamAccess::StateOf(*response.stream),
            Status::Unavailable("the connection closed before the response started"));
      }
      return;
    }
    counted_in_flight_ = true;
    try {
      const bool keep_alive = keep_alive_ && !core_->stopped.load();
      if (response.stream) return StartStream(std::move(response), keep_alive);
      BuildResponse(std::move(response), keep_alive);
      Write(/*linger_after=*/false);
    } catch (...) {
      if (counted_in_flight_) core_->in_flight.fetch_sub(1, std::memory_order_relaxed);
      counted_in_flight_ = false;
      Close();
    }
  }

  // ---- Streamed responses. Cycle: write head -> (write queued chunks)* -> terminating chunk ->
  // keep-alive or close, with a read pending meanwhile that notices the client going away.

  void StartStream(HttpResponse in, bool keep_alive) {
    std::shared_ptr<ResponseStream::State> state = internal::StreamAccess::StateOf(*in.stream);
    in.stream.reset();
    stream_chunked_ = version_ != 10;
    stream_head_.emplace();
    auto& head = *stream_head_;
    head.version(version_ == 10 ? 10 : 11);
    if (in.status < 100 || in.status > 999) in.status = 500;
    head.result(static_cast<unsigned>(in.status));
    head.set(http::field::server, "parley");
    if (!in.content_type.empty() && !HasLineBreak(in.content_type)) {
      head.set(http::field::content_type, in.content_type);
    }
    for (auto& [name, value] : in.headers) {
      if (name.empty() || HasLineBreak(name) || name.find(':') != std::string::npos ||
          HasLineBreak(value) || IsReservedHeader(name)) {
        continue;
      }
      head.insert(name, value);
    }
    // Without chunking (HTTP/1.0) the end of the body is the end of the connection.
    head.keep_alive(keep_alive && stream_chunked_);
    if (stream_chunked_) head.chunked(true);
    stream_keep_alive_ = head.keep_alive();
    body_stream_ = std::move(state);
    if (is_head_) {
      // No body for HEAD: the stream is over as soon as the head is out.
      internal::StreamAccess::Finish(*body_stream_, Status::Ok());
    }
    stream_serializer_.emplace(head);
    state_ = State::kWriting;
    ArmTimeout();
    http::async_write_header(
        stream_, *stream_serializer_,
        [self = SharedThis()](ErrorCode ec, size_t) { self->OnStreamHead(ec); });
  }

  void OnStreamHead(ErrorCode ec) {
    if (state_ == State::kClosed) return;
    stream_serializer_.reset();
    stream_head_.reset();
    if (ec) return FailStream(ec);
    if (is_head_) return FinishStreamedResponse();
    {
      std::weak_ptr<ConnectionBase> weak = weak_from_this();
      Strand strand = strand_;
      std::lock_guard<std::mutex> lock(body_stream_->mu);
      if (!body_stream_->finished) {
        body_stream_->wake = [weak, strand] {
          try {
            asio::post(strand, [weak] {
              if (auto conn = weak.lock()) {
                std::static_pointer_cast<Connection>(conn)->PumpStream();
              }
            });
          } catch (...) {
            // Allocation failure: the queued data goes out with the next wake-up.
          }
        };
      }
    }
    WatchForHangup();
    PumpStream();
  }

  // Writes what the stream has queued, if no write is under way. Strand only.
  void PumpStream() {
    if (state_ == State::kClosed || !body_stream_ || stream_writing_) return;
    std::string out;
    bool last = false;
    bool dropped = false;
    {
      std::lock_guard<std::mutex> lock(body_stream_->mu);
      if (body_stream_->finished) {
        dropped = true;  // by the writer's side (queue overflow): the body cannot be completed
      } else {
        for (std::string& chunk : body_stream_->queue) {
          if (stream_chunked_) {
            char size_line[24];
            std::snprintf(size_line, sizeof(size_line), "%zx\r\n", chunk.size());
            out += size_line;
            out += chunk;
            out += "\r\n";
          } else {
            out += chunk;
          }
        }
        body_stream_->queue.clear();
        body_stream_->queued_bytes = 0;
        if (body_stream_->ended) {
          last = true;
          if (stream_chunked_) out += "0\r\n\r\n";
        }
      }
    }
    if (dropped) {
      EndStream(Status::Ok());  // outcome already recorded; this only releases the stream
      return Close();
    }
    if (out.empty()) {
      if (last) FinishStreamedResponse();
      return;
    }
    stream_writing_ = true;
    stream_out_ = std::move(out);
    ArmTimeout();  // a write stalled longer than request_timeout_ms drops the client
    asio::async_write(stream_, asio::buffer(stream_out_),
                      [self = SharedThis(), last](ErrorCode ec, size_t) {
                        self->stream_writing_ = false;
                        self->stream_out_.clear();
                        if (self->state_ == State::kClosed) return;
                        if (ec) return self->FailStream(ec);
                        if (last) return self->FinishStreamedResponse();
                        self->PumpStream();
                      });
  }

  // A read pending while the body streams: EOF or an error means the client went away. Bytes of
  // a pipelined next request are kept in buffer_ (up to a bound) for after the response.
  void WatchForHangup() {
    if (state_ == State::kClosed || watching_ || !body_stream_) return;
    const size_t limit = kHeaderLimitBytes + core_->options.max_body_bytes;
    if (buffer_.size() >= limit) return;  // stop watching; writes still detect a dead peer
    watching_ = true;
    stream_.expires_never();  // applies to the read only: a write may be pending
    stream_.async_read_some(
        buffer_.prepare(std::min<size_t>(4096, limit - buffer_.size())),
        [self = SharedThis()](ErrorCode ec, size_t n) {
          self->watching_ = false;
          self->buffer_.commit(n);
          if (self->state_ == State::kClosed) return;
          if (!self->body_stream_) {
            // The response finished while this read was pending; carry on with the next one.
            if (self->resume_after_watch_) {
              self->resume_after_watch_ = false;
              if (ec && ec != asio::error::operation_aborted) return self->Close();
              try {
                self->ReadHeader();
              } catch (...) {
                self->Close();
              }
            }
            return;
          }
          if (ec == asio::error::operation_aborted && self->stream_writing_) {
            return;  // a write timed out and closed the socket; the write reports it
          }
          if (ec) return self->FailStream(ec);
          self->WatchForHangup();
        });
  }

  // The terminating chunk is out (or there is no body): the request is complete.
  void FinishStreamedResponse() {
    EndStream(Status::Ok());
    if (!stream_keep_alive_ || core_->stopped.load()) return Close();
    if (watching_) {
      // Cancel the hang-up watch; its handler then reads the next request.
      resume_after_watch_ = true;
      ErrorCode ignored;
      stream_.socket().cancel(ignored);
      return;
    }
    try {
      ReadHeader();
    } catch (...) {
      Close();
    }
  }

  void FailStream(ErrorCode ec) {
    if (ec == beast::error::timeout) {
      EndStream(Status::DeadlineExceeded("a response stream write timed out"));
    } else {
      EndStream(Status::Unavailable("the client went away: " + ec.message()));
    }
    Close();
  }

  // Releases the stream with its outcome (ignored if the outcome is already known) and counts
  // the request out of in_flight. Strand only.
  void EndStream(Status outcome) {
    if (!body_stream_) return;
    std::shared_ptr<ResponseStream::State> state = std::move(body_stream_);
    body_stream_.reset();
    internal::StreamAccess::Finish(*state, std::move(outcome));
    if (counted_in_flight_) {
      counted_in_flight_ = false;
      core_->in_flight.fetch_sub(1, std::memory_order_relaxed);
    }
  }

  void WriteErrorAndClose(int status, std::string_view code, const std::string& message) {
    try {
      BuildResponse(ErrorResponse(status, code, message), /*keep_alive=*/false);
      Write(/*linger_after=*/true);
    } catch (...) {
      Close();
    }
  }

  void BuildResponse(HttpResponse in, bool keep_alive) {
    response_ = {};
    response_.version(version_ == 10 ? 10 : 11);
    if (in.status < 100 || in.status > 999) {
      in = ErrorResponse(500, "internal", "the request handler returned an invalid status");
    }
    response_.result(static_cast<unsigned>(in.status));
    response_.set(http::field::server, "parley");
    if (!in.content_type.empty() && !HasLineBreak(in.content_type)) {
      response_.set(http::field::content_type, in.content_type);
    }
    for (auto& [name, value] : in.headers) {
      if (name.empty() || HasLineBreak(name) || name.find(':') != std::string::npos ||
          HasLineBreak(value) || IsReservedHeader(name)) {
        continue;  // would break framing or inject headers
      }
      response_.insert(name, value);
    }
    response_.keep_alive(keep_alive);
    if (is_head_) {
      // The length of the body a GET would return, and no body.
      response_.content_length(in.body.size());
    } else {
      response_.body() = std::move(in.body);
      response_.prepare_payload();
    }
  }

  void Write(bool linger_after) {
    state_ = State::kWriting;
    ArmTimeout();
    http::async_write(stream_, response_,
                      [self = SharedThis(), linger_after](ErrorCode ec, size_t) {
                        self->OnWrite(ec, linger_after);
                      });
  }

  void OnWrite(ErrorCode ec, bool linger_after) {
    if (counted_in_flight_) {
      counted_in_flight_ = false;
      core_->in_flight.fetch_sub(1, std::memory_order_relaxed);
    }
    if (state_ == State::kClosed) return;
    try {
      if (ec) return Close();
      if (linger_after) return LingeringClose();
      if (!response_.keep_alive() || core_->stopped.load()) return Close();
      response_ = {};  // free the body while idle
      ReadHeader();
    } catch (...) {
      Close();
    }
  }

  // Half-closes, then discards what the client still sends (bounded in bytes and time) before
  // closing, so the kernel sends FIN rather than RST and the client can read our response.
  void LingeringClose() {
    ErrorCode ec;
    stream_.socket().shutdown(Protocol::socket::shutdown_send, ec);
    if (ec) return Close();
    state_ = State::kWriting;
    linger_buffer_ = std::make_unique<char[]>(kLingerBufferBytes);
    const int timeout_ms = core_->options.request_timeout_ms;
    stream_.expires_after(
        std::chrono::milliseconds(timeout_ms > 0 ? std::min(kLingerMs, timeout_ms) : kLingerMs));
    Drain();
  }

  void Drain() {
    stream_.async_read_some(asio::buffer(linger_buffer_.get(), kLingerBufferBytes),
                            [self = SharedThis()](ErrorCode ec, size_t n) {
                              if (self->state_ == State::kClosed) return;
                              self->lingered_bytes_ += n;
                              if (ec || self->lingered_bytes_ >= kLingerMaxBytes) {
                                return self->Close();
                              }
                              self->Drain();
                            });
  }

  void Close() {
    if (state_ == State::kClosed) return;
    EndStream(Status::Unavailable("the connection closed"));
    state_ = State::kClosed;
    ErrorCode ec;
    stream_.socket().shutdown(Protocol::socket::shutdown_both, ec);
    stream_.close();
    parser_.reset();
  }

  static constexpr size_t kLingerBufferBytes = 4096;

  const std::shared_ptr<ServerCore> core_;
  const Strand strand_;
  Stream stream_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  http::response<http::string_body> response_;
  std::string remote_address_;
  bool remote_is_local_ = false;
  State state_ = State::kReading;
  bool keep_alive_ = false;
  bool is_head_ = false;
  unsigned version_ = 11;
  bool counted_in_flight_ = false;  // the response being written came from the handler
  std::unique_ptr<char[]> linger_buffer_;
  size_t lingered_bytes_ = 0;
  // Streamed response (strand only).
  std::shared_ptr<ResponseStream::State> body_stream_;  // set while a body streams
  std::optional<http::response<http::empty_body>> stream_head_;
  std::optional<http::response_serializer<http::empty_body>> stream_serializer_;
  std::string stream_out_;      // bytes being written
  bool stream_chunked_ = true;  // false for HTTP/1.0: raw body, close at the end
  bool stream_keep_alive_ = false;
  bool stream_writing_ = false;
  bool watching_ = false;  // hang-up watch read pending
  bool resume_after_watch_ = false;
};

class ListenerBase {
 public:
  virtual ~ListenerBase() = default;
  // Stops accepting. Any thread.
  virtual void Close() = 0;
};

template <class Protocol>
class Listener final : public ListenerBase,
                       public std::enable_shared_from_this<Listener<Protocol>> {
 public:
  using Acceptor = asio::basic_socket_acceptor<Protocol, Strand>;

  Listener(std::shared_ptr<ServerCore> core, Acceptor acceptor)
      : core_(std::move(core)),
        acceptor_(std::move(acceptor)),
        retry_timer_(acceptor_.get_executor()) {}

  void Start() {
    asio::post(acceptor_.get_executor(), [self = this->shared_from_this()] { self->Accept(); });
  }

  void Close() override {
    asio::post(acceptor_.get_executor(), [self = this->shared_from_this()] {
      ErrorCode ec;
      self->acceptor_.close(ec);
      self->retry_timer_.cancel();
    });
  }

 private:
  void Accept() {
    if (!acceptor_.is_open()) return;
    acceptor_.async_accept(asio::make_strand(core_->io),
                           [self = this->shared_from_this()](ErrorCode ec, auto socket) {
                             self->OnAccept(ec, std::move(socket));
                           });
  }

  template <class AcceptedSocket>
  void OnAccept(ErrorCode ec, AcceptedSocket socket) {
    if (ec == asio::error::operation_aborted || !acceptor_.is_open()) return;
    if (ec) {
      // Typically EMFILE/ENFILE: retry shortly rather than spinning on the error.
      retry_timer_.expires_after(std::chrono::milliseconds(50));
      retry_timer_.async_wait([self = this->shared_from_this()](ErrorCode ec) {
        if (!ec) self->Accept();
      });
      return;
    }
    core_->accepted.fetch_add(1, std::memory_order_relaxed);
    const size_t open = core_->open_connections.fetch_add(1, std::memory_order_relaxed);
    if (core_->stopped.load() || open >= core_->options.max_connections) {
      core_->open_connections.fetch_sub(1, std::memory_order_relaxed);
      ErrorCode ignored;
      socket.close(ignored);
    } else {
      try {
        auto conn = std::make_shared<Connection<Protocol>>(core_, std::move(socket));
        conn->Start();
      } catch (...) {
        // Allocation failure: the socket (owned by the half-built connection) is closed.
      }
    }
    Accept();
  }

  const std::shared_ptr<ServerCore> core_;
  Acceptor acceptor_;
  asio::basic_waitable_timer<std::chrono::steady_clock,
                             asio::wait_traits<std::chrono::steady_clock>, Strand>
      retry_timer_;
};

}  // namespace

class HttpServer::Impl : public ServerCore {
 public:
  using ServerCore::ServerCore;
  // Listen*/Stop thread only.
  std::vector<std::shared_ptr<ListenerBase>> listeners;
  std::vector<std::string> unix_paths;
};

HttpServer::HttpServer(boost::asio::io_context& io, HttpServerOptions options, HttpHandler handler)
    : impl_(std::make_shared<Impl>(io, options, std::move(handler))) {}

HttpServer::~HttpServer() { Stop(); }

Result<uint16_t> HttpServer::ListenTcp(const std::string& host, uint16_t port) {
  if (impl_->stopped.load()) return Status::FailedPrecondition("server is stopped");
  try {
    ErrorCode ec;
    tcp::endpoint endpoint;
    const auto address = asio::ip::make_address(host, ec);
    if (!ec) {
      endpoint = tcp::endpoint(address, port);
    } else {
      tcp::resolver resolver(impl_->io);
      auto results = resolver.resolve(host, std::to_string(port),
                                      tcp::resolver::passive | tcp::resolver::numeric_service, ec);
      if (ec || results.empty()) {
        return Status::InvalidArgument("cannot resolve listen host '" + host +
                                       "': " + (ec ? ec.message() : "no address"));
      }
      endpoint = results.begin()->endpoint();
    }
    const std::string where = host + ":" + std::to_string(port);
    Listener<tcp>::Acceptor acceptor(asio::make_strand(impl_->io));
    acceptor.open(endpoint.protocol(), ec);
    if (ec) return Status::Unavailable("listen " + where + ": " + ec.message());
    acceptor.set_option(asio::socket_base::reuse_address(true), ec);
    acceptor.bind(endpoint, ec);
    if (ec) return Status::Unavailable("bind " + where + ": " + ec.message());
    acceptor.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) return Status::Unavailable("listen " + where + ": " + ec.message());
    const uint16_t bound = acceptor.local_endpoint(ec).port();
    if (ec) return Status::Unavailable("listen " + where + ": " + ec.message());
    auto listener = std::make_shared<Listener<tcp>>(impl_, std::move(acceptor));
    listener->Start();
    impl_->listeners.push_back(std::move(listener));
    return bound;
  } catch (const std::exception& e) {
    return Status::Internal(std::string("listen: ") + e.what());
  }
}

Status HttpServer::ListenUnix(const std::string& path) {
  if (impl_->stopped.load()) return Status::FailedPrecondition("server is stopped");
  if (path.empty() || path.size() >= sizeof(sockaddr_un{}.sun_path)) {
    return Status::InvalidArgument("unix socket path is empty or too long: " + path);
  }
  try {
    ErrorCode ec;
    struct stat st {};
    if (::lstat(path.c_str(), &st) == 0) {
      if (!S_ISSOCK(st.st_mode)) {
        return Status::FailedPrecondition(path + " exists and is not a socket");
      }
      // A socket file: in use if someone accepts on it, stale otherwise.
      unix_stream::socket probe(impl_->io);
      probe.connect(unix_stream::endpoint(path), ec);
      if (!ec) return Status::AlreadyExists(path + " is in use by another server");
      if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
        return Status::IoError("cannot remove stale socket " + path);
      }
    }
    Listener<unix_stream>::Acceptor acceptor(asio::make_strand(impl_->io));
    acceptor.open(unix_stream(), ec);
    if (ec) return Status::Unavailable("listen " + path + ": " + ec.message());
    acceptor.bind(unix_stream::endpoint(path), ec);
    if (ec) return Status::Unavailable("bind " + path + ": " + ec.message());
    // Before listen(): nobody can connect while the file still has the umask's mode.
    if (::chmod(path.c_str(), 0600) != 0) {
      acceptor.close(ec);
      ::unlink(path.c_str());
      return Status::IoError("chmod 0600 " + path + " failed");
    }
    acceptor.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) {
      acceptor.close(ec);
      ::unlink(path.c_str());
      return Status::Unavailable("listen " + path + ": " + ec.message());
    }
    auto listener = std::make_shared<Listener<unix_stream>>(impl_, std::move(acceptor));
    listener->Start();
    impl_->listeners.push_back(std::move(listener));
    impl_->unix_paths.push_back(path);
    return Status::Ok();
  } catch (const std::exception& e) {
    return Status::Internal(std::string("listen ") + path + ": " + e.what());
  }
}

void HttpServer::Stop() {
  impl_->stopped.store(true);
  try {
    for (auto& listener : impl_->listeners) listener->Close();
    impl_->listeners.clear();
    for (const auto& path : impl_->unix_paths) ::unlink(path.c_str());
    impl_->unix_paths.clear();
    for (auto& conn : impl_->Connections()) conn->OnServerStop();
  } catch (...) {
    // Allocation failure while stopping: connections still close after their current request.
  }
}

size_t HttpServer::InFlight() const { return impl_->in_flight.load(); }

uint64_t HttpServer::AcceptedConnections() const { return impl_->accepted.load(); }

size_t HttpServer::OpenConnections() const { return impl_->open_connections.load(); }

}  // namespace parley::net
