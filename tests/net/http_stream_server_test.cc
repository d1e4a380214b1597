// HttpServer streamed responses (HttpResponse::stream / ResponseStream) over real sockets on
// 127.0.0.1 port 0, with a plain POSIX-socket client so that every read has a deadline.

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "net/http.h"
#include "tests/support/io_threads.h"

namespace parley::net {
namespace {

using parley::testing::IoThreads;
using parley::testing::WaitFor;

namespace asio = boost::asio;
using std::chrono::milliseconds;
using SteadyClock = std::chrono::steady_clock;

// A blocking TCP client whose reads give up after 5 s.
class RawClient {
 public:
  explicit RawClient(uint16_t port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    timeval tv{5, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  }
  ~RawClient() { Close(); }
  RawClient(const RawClient&) = delete;
  RawClient& operator=(const RawClient&) = delete;

  bool connected() const { return connected_; }
  void SetReceiveBuffer(int bytes) {
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof(bytes));
  }
  bool Send(const std::string& data) {
    return ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(data.size());
  }
  void Close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  // Reads until `buffer_` contains `needle`; false on EOF, error or timeout.
  bool ReadUntil(const std::string& needle) {
    while (buffer_.find(needle) == std::string::npos) {
      if (!ReadSome()) return false;
    }
    return true;
  }
  // Reads until the peer closes; false on timeout.
  bool ReadToEof() {
    for (;;) {
      char chunk[4096];
      ssize_t n = ::recv(fd_, chunk, sizeof(chunk), 0);
      if (n == 0) return true;
      if (n < 0) return errno == ECONNRESET;
      buffer_.append(chunk, static_cast<size_t>(n));
    }
  }
  bool ReadSome() {
    char chunk[4096];
    ssize_t n = ::recv(fd_, chunk, sizeof(chunk), 0);
    if (n <= 0) return false;
    buffer_.append(chunk, static_cast<size_t>(n));
    return true;
  }
  std::string& buffer() { return buffer_; }

 private:
  int fd_ = -1;
  bool connected_ = false;
  std::string buffer_;
};

struct ParsedStream {
  std::string head;                 // status line and headers, without the blank line
  std::vector<std::string> chunks;  // chunk payloads in order
  bool terminated = false;          // the last-chunk was seen
  std::string rest;                 // bytes after the terminating chunk
};

// Reads one chunked response from client (bounded by its read timeout).
ParsedStream ReadChunkedResponse(RawClient& client) {
  ParsedStream out;
  if (!client.ReadUntil("\r\n\r\n")) return out;
  std::string& buf = client.buffer();
  size_t pos = buf.find("\r\n\r\n");
  out.head = buf.substr(0, pos);
  buf.erase(0, pos + 4);
  for (;;) {
    if (!client.ReadUntil("\r\n")) return out;
    size_t eol = buf.find("\r\n");
    const size_t size = std::stoul(buf.substr(0, eol), nullptr, 16);
    while (buf.size() < eol + 2 + size + 2) {
      if (!client.ReadSome()) return out;
    }
    if (buf.compare(eol + 2 + size, 2, "\r\n") != 0) return out;  // framing broken
    if (size == 0) {
      out.terminated = true;
      buf.erase(0, eol + 4);
      out.rest = buf;
      buf.clear();
      return out;
    }
    out.chunks.push_back(buf.substr(eol + 2, size));
    buf.erase(0, eol + 2 + size + 2);
  }
}

// A server whose handler answers "/stream" with a streamed response and parks the stream for
// the test; other paths get a plain "ok".
class StreamServer {
 public:
  explicit StreamServer(HttpServerOptions options = {},
                        size_t max_queued_bytes = ResponseStream::kDefaultMaxQueuedBytes)
      : io_(2),
        server_(io_.io, options, [this, max_queued_bytes](HttpRequest req, Responder respond) {
          if (req.path != "/stream") {
            HttpResponse r;
            r.content_type = "text/plain";
            r.body = "ok:" + req.path;
            return respond(std::move(r));
          }
          auto stream = ResponseStream::Create(max_queued_bytes);
          stream->Write("first\n");  // queued before the head is written
          {
            std::lock_guard<std::mutex> lock(mu_);
            streams_.push_back(stream);
          }
          HttpResponse r;
          r.content_type = "text/event-stream";
          r.headers.emplace_back("Cache-Control", "no-cache");
          r.headers.emplace_back("Content-Length", "5");  // reserved: must be dropped
          r.stream = stream;
          respond(std::move(r));
        }) {
    auto port = server_.ListenTcp("127.0.0.1", 0);
    EXPECT_TRUE(port.ok());
    port_ = port.ok() ? *port : 0;
  }

  uint16_t port() const { return port_; }
  HttpServer& server() { return server_; }
  size_t stream_count() {
    std::lock_guard<std::mutex> lock(mu_);
    return streams_.size();
  }
  std::shared_ptr<ResponseStream> stream(size_t i) {
    std::lock_guard<std::mutex> lock(mu_);
    return streams_.at(i);
  }

 private:
  IoThreads io_;
  HttpServer server_;
  uint16_t port_ = 0;
  std::mutex mu_;
  std::vector<std::shared_ptr<ResponseStream>> streams_;
};

const char kStreamRequest[] = "GET /stream HTTP/1.1\r\nHost: x\r\n\r\n";

TEST(HttpStreamServerTest, ChunkedFramingInOrderThenKeepAlive) {
  StreamServer s;
  RawClient client(s.port());
  ASSERT_TRUE(client.connected());
  ASSERT_TRUE(client.Send(kStreamRequest));
  ASSERT_TRUE(WaitFor([&] { return s.stream_count() == 1; }));
  auto stream = s.stream(0);
  std::atomic<bool> closed_ok{false};
  stream->OnClose([&](Status st) { closed_ok = st.ok(); });
  // Written from another thread, as the engine would; sizes cover 1 byte to > 1 socket write.
  std::vector<std::string> expected = {"first\n"};
  for (int i = 0; i < 200; ++i) expected.push_back(std::string(1 + (i * 37) % 9000, 'a' + i % 26));
  std::thread writer([&] {
    for (size_t i = 1; i < expected.size(); ++i) EXPECT_TRUE(stream->Write(expected[i]));
    EXPECT_TRUE(stream->Write(""));  // ignored, not a terminating chunk
    stream->End();
    EXPECT_FALSE(stream->Write("late"));
  });
  ParsedStream got = ReadChunkedResponse(client);
  writer.join();
  ASSERT_TRUE(got.terminated) << got.head;
  EXPECT_EQ(got.head.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << got.head;
  EXPECT_NE(got.head.find("Transfer-Encoding: chunked"), std::string::npos) << got.head;
  EXPECT_NE(got.head.find("Content-Type: text/event-stream"), std::string::npos);
  EXPECT_NE(got.head.find("Cache-Control: no-cache"), std::string::npos);
  EXPECT_NE(got.head.find("Server: parley"), std::string::npos);
  EXPECT_EQ(got.head.find("Content-Length"), std::string::npos) << got.head;
  // Chunks may be coalesced by nothing: each Write is one chunk, in order.
  EXPECT_EQ(got.chunks, expected);
  EXPECT_TRUE(WaitFor([&] { return closed_ok.load(); }));
  EXPECT_TRUE(stream->closed());
  EXPECT_TRUE(WaitFor([&] { return s.server().InFlight() == 0; }));

  // The connection is reused for the next request.
  ASSERT_TRUE(client.Send("GET /next HTTP/1.1\r\nHost: x\r\n\r\n"));
  ASSERT_TRUE(client.ReadUntil("ok:/next"));
  EXPECT_EQ(s.server().AcceptedConnections(), 1u);
}

TEST(HttpStreamServerTest, ClientDisconnectIsDetectedWithoutWriting) {
  StreamServer s;
  RawClient client(s.port());
  ASSERT_TRUE(client.Send(kStreamRequest));
  ASSERT_TRUE(WaitFor([&] { return s.stream_count() == 1; }));
  auto stream = s.stream(0);
  ASSERT_TRUE(client.ReadUntil("first\n"));
  std::mutex mu;
  std::optional<Status> outcome;
  stream->OnClose([&](Status st) {
    std::lock_guard<std::mutex> lock(mu);
    outcome = st;
  });
  EXPECT_FALSE(stream->closed());
  EXPECT_EQ(s.server().InFlight(), 1u);  // a streaming response counts as in flight
  client.Close();
  // Nothing is written after the hang-up: the server's watch read notices it by itself.
  ASSERT_TRUE(WaitFor([&] {
    std::lock_guard<std::mutex> lock(mu);
    return outcome.has_value();
  }));
  EXPECT_TRUE(stream->closed());
  {
    std::lock_guard<std::mutex> lock(mu);
    EXPECT_EQ(outcome->code(), Status::Code::kUnavailable) << outcome->ToString();
  }
  EXPECT_FALSE(stream->Write("nobody listens"));
  stream->End();  // harmless
  EXPECT_TRUE(WaitFor([&] { return s.server().InFlight() == 0; }));
  EXPECT_TRUE(WaitFor([&] { return s.server().OpenConnections() == 0; }));
  // A callback registered after the end runs at once with the outcome.
  bool late = false;
  stream->OnClose([&](Status st) { late = st.code() == Status::Code::kUnavailable; });
  EXPECT_TRUE(late);
}

TEST(HttpStreamServerTest, ClientThatDoesNotReadOverflowsTheQueueAndIsDropped) {
  HttpServerOptions options;
  options.request_timeout_ms = 60'000;  // the byte bound, not the write timeout, must act
  StreamServer s(options, /*max_queued_bytes=*/256 * 1024);
  RawClient client(s.port());
  client.SetReceiveBuffer(4096);
  ASSERT_TRUE(client.Send(kStreamRequest));
  ASSERT_TRUE(WaitFor([&] { return s.stream_count() == 1; }));
  auto stream = s.stream(0);
  std::atomic<int> code{-1};
  stream->OnClose([&](Status st) { code = static_cast<int>(st.code()); });
  const std::string piece(16 * 1024, 'x');
  size_t written = 0;
  const auto deadline = SteadyClock::now() + std::chrono::seconds(10);
  while (stream->Write(piece) && SteadyClock::now() < deadline) written += piece.size();
  ASSERT_TRUE(stream->closed()) << "queue never overflowed after " << written << " bytes";
  EXPECT_EQ(code.load(), static_cast<int>(Status::Code::kResourceExhausted));
  // The connection is closed without a terminating chunk.
  ASSERT_TRUE(client.ReadToEof());
  EXPECT_EQ(client.buffer().find("\r\n0\r\n\r\n"), std::string::npos);
  EXPECT_TRUE(WaitFor([&] { return s.server().InFlight() == 0; }));
}

TEST(HttpStreamServerTest, StalledWriteTimesOut) {
  HttpServerOptions options;
  options.request_timeout_ms = 300;
  StreamServer s(options, /*max_queued_bytes=*/64 * 1024 * 1024);
  RawClient client(s.port());
  client.SetReceiveBuffer(4096);
  ASSERT_TRUE(client.Send(kStreamRequest));
  ASSERT_TRUE(WaitFor([&] { return s.stream_count() == 1; }));
  auto stream = s.stream(0);
  std::atomic<int> code{-1};
  stream->OnClose([&](Status st) { code = static_cast<int>(st.code()); });
  // Fill the socket buffers so that a write stays pending; then wait for the timeout.
  const std::string piece(64 * 1024, 'y');
  for (int i = 0; i < 200 && stream->Write(piece); ++i) {
  }
  // closed() turns true just before the callbacks run: wait for the outcome itself.
  ASSERT_TRUE(WaitFor([&] { return code.load() != -1; }));
  EXPECT_TRUE(stream->closed());
  EXPECT_EQ(code.load(), static_cast<int>(Status::Code::kDeadlineExceeded));
}

TEST(HttpStreamServerTest, NoReadTimeoutWhileStreaming) {
  HttpServerOptions options;
  options.request_timeout_ms = 200;
  StreamServer s(options);
  RawClient client(s.port());
  ASSERT_TRUE(client.Send(kStreamRequest));
  ASSERT_TRUE(WaitFor([&] { return s.stream_count() == 1; }));
  auto stream = s.stream(0);
  ASSERT_TRUE(client.ReadUntil("first\n"));
  // Idle for more than twice the request timeout: the stream must stay open. (Waiting for a
  // time to pass is the point of this test; nothing else can signal "it did not close".)
  std::this_thread::sleep_for(milliseconds(600));
  EXPECT_FALSE(stream->closed());
  EXPECT_TRUE(stream->Write("still here\n"));
  stream->End();
  ASSERT_TRUE(client.ReadUntil("0\r\n\r\n"));
  EXPECT_NE(client.buffer().find("still here\n"), std::string::npos);
}

TEST(HttpStreamServerTest, ManyConcurrentStreams) {
  constexpr int kClients = 64;
  constexpr int kEvents = 30;
  StreamServer s;
  std::vector<std::unique_ptr<RawClient>> clients;
  for (int i = 0; i < kClients; ++i) {
    clients.push_back(std::make_unique<RawClient>(s.port()));
    ASSERT_TRUE(clients.back()->connected());
    ASSERT_TRUE(clients.back()->Send(
        "GET /stream HTTP/1.1\r\nHost: x\r\nX-Client: " + std::to_string(i) + "\r\n\r\n"));
  }
  ASSERT_TRUE(WaitFor([&] { return s.stream_count() == kClients; }));
  // Streams are matched to clients by the first event each client reads back, so give each
  // stream its identity first.
  std::vector<std::shared_ptr<ResponseStream>> streams;
  for (int i = 0; i < kClients; ++i) streams.push_back(s.stream(i));
  std::vector<std::thread> writers;
  for (int w = 0; w < 4; ++w) {
    writers.emplace_back([&, w] {
      for (int e = 0; e < kEvents; ++e) {
        for (int i = w; i < kClients; i += 4) {
          EXPECT_TRUE(streams[i]->Write("s" + std::to_string(i) + ":" + std::to_string(e) + "\n"));
        }
      }
      for (int i = w; i < kClients; i += 4) streams[i]->End();
    });
  }
  for (auto& t : writers) t.join();
  std::vector<bool> seen(kClients, false);
  for (auto& client : clients) {
    ParsedStream got = ReadChunkedResponse(*client);
    ASSERT_TRUE(got.terminated);
    ASSERT_EQ(got.chunks.size(), static_cast<size_t>(kEvents + 1));
    EXPECT_EQ(got.chunks[0], "first\n");
    const std::string id = got.chunks[1].substr(0, got.chunks[1].find(':'));
    const int index = std::stoi(id.substr(1));
    ASSERT_TRUE(index >= 0 && index < kClients);
    EXPECT_FALSE(seen[index]);
    seen[index] = true;
    for (int e = 0; e < kEvents; ++e) {
      EXPECT_EQ(got.chunks[1 + e], id + ":" + std::to_string(e) + "\n");
    }
  }
  EXPECT_TRUE(WaitFor([&] { return s.server().InFlight() == 0; }));
}

TEST(HttpStreamServerTest, StopLetsOpenStreamsFinishThenCloses) {
  StreamServer s;
  RawClient client(s.port());
  ASSERT_TRUE(client.Send(kStreamRequest));
  ASSERT_TRUE(WaitFor([&] { return s.stream_count() == 1; }));
  auto stream = s.stream(0);
  ASSERT_TRUE(client.ReadUntil("first\n"));
  s.server().Stop();
  EXPECT_EQ(s.server().InFlight(), 1u);
  EXPECT_TRUE(stream->Write("after stop\n"));
  stream->End();
  ASSERT_TRUE(client.ReadToEof());  // terminating chunk, then the connection closes
  EXPECT_NE(client.buffer().find("after stop\n"), std::string::npos);
  EXPECT_NE(client.buffer().find("0\r\n\r\n"), std::string::npos);
  EXPECT_TRUE(WaitFor([&] { return s.server().InFlight() == 0; }));
}

TEST(HttpStreamServerTest, Http10GetsRawBodyAndClose) {
  StreamServer s;
  RawClient client(s.port());
  ASSERT_TRUE(client.Send("GET /stream HTTP/1.0\r\n\r\n"));
  ASSERT_TRUE(WaitFor([&] { return s.stream_count() == 1; }));
  auto stream = s.stream(0);
  EXPECT_TRUE(stream->Write("second\n"));
  stream->End();
  ASSERT_TRUE(client.ReadToEof());
  const std::string& got = client.buffer();
  EXPECT_EQ(got.rfind("HTTP/1.0 200 OK\r\n", 0), 0u) << got;
  EXPECT_EQ(got.find("chunked"), std::string::npos);
  EXPECT_EQ(got.substr(got.find("\r\n\r\n") + 4), "first\nsecond\n");
}

TEST(HttpStreamServerTest, HeadGetsTheHeadOnly) {
  StreamServer s;
  RawClient client(s.port());
  ASSERT_TRUE(client.Send("HEAD /stream HTTP/1.1\r\nHost: x\r\n\r\n"));
  ASSERT_TRUE(client.ReadUntil("\r\n\r\n"));
  ASSERT_TRUE(WaitFor([&] { return s.stream_count() == 1; }));
  EXPECT_TRUE(WaitFor([&] { return s.stream(0)->closed(); }));
  EXPECT_FALSE(s.stream(0)->Write("x"));
  // Still usable for the next request, and nothing but the head was sent.
  ASSERT_TRUE(client.Send("GET /after HTTP/1.1\r\nHost: x\r\n\r\n"));
  ASSERT_TRUE(client.ReadUntil("ok:/after"));
  const std::string& got = client.buffer();
  const size_t second = got.find("HTTP/1.1 200", 1);
  ASSERT_NE(second, std::string::npos);
  EXPECT_EQ(got.find("\r\n\r\n") + 4, second);
}

TEST(HttpStreamServerTest, StreamOfADeadConnectionIsClosedWithUnavailable) {
  // The handler answers after the client has gone: the stream never starts.
  IoThreads io(1);
  std::mutex mu;
  Responder parked;
  HttpServer server(io.io, {}, [&](HttpRequest, Responder respond) {
    std::lock_guard<std::mutex> lock(mu);
    parked = std::move(respond);
  });
  auto port = server.ListenTcp("127.0.0.1", 0);
  ASSERT_TRUE(port.ok());
  {
    RawClient client(*port);
    ASSERT_TRUE(client.Send("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
    ASSERT_TRUE(WaitFor([&] {
      std::lock_guard<std::mutex> lock(mu);
      return static_cast<bool>(parked);
    }));
  }
  // Nothing watches the socket while the handler works; the hang-up is seen once the head is
  // written (by the write or the watch read). The stream must end up closed with Unavailable.
  auto stream = ResponseStream::Create();
  std::atomic<int> code{-1};
  stream->OnClose([&](Status st) { code = static_cast<int>(st.code()); });
  HttpResponse r;
  r.stream = stream;
  {
    std::lock_guard<std::mutex> lock(mu);
    parked(std::move(r));
  }
  ASSERT_TRUE(WaitFor([&] { return stream->closed(); }));
  EXPECT_TRUE(WaitFor([&] { return code.load() == static_cast<int>(Status::Code::kUnavailable); }));
  EXPECT_TRUE(WaitFor([&] { return server.InFlight() == 0; }));
}

}  // namespace
}  // namespace parley::net
