// Streaming in net::HttpClient (on_headers, on_body, idle_timeout_ms, cancel) against a raw
// scripted HTTP/1.1 server on 127.0.0.1 (port 0) that writes exactly the bytes a test gives it,
// with delays between them.

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <functional>
#include <future>
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
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// One write of the script: wait delay_ms (the server's pacing, or a stall), then send bytes.
struct Step {
  int delay_ms;
  std::string bytes;
};

// Serves one connection at a time: reads a request (headers + Content-Length body), plays the
// script, then closes. Waits are polls on the client socket, so a client that goes away ends
// the script early.
class ScriptedServer {
 public:
  explicit ScriptedServer(std::vector<Step> script) : script_(std::move(script)) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    EXPECT_EQ(::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    EXPECT_EQ(::listen(listen_fd_, 8), 0);
    socklen_t len = sizeof(addr);
    ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    thread_ = std::thread([this] { Run(); });
  }
  ~ScriptedServer() {
    stop_ = true;
    ::shutdown(listen_fd_, SHUT_RDWR);
    thread_.join();
    ::close(listen_fd_);
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_) + "/stream"; }
  int requests() const { return requests_.load(); }
  // True once the client closed the connection during the script.
  bool client_went_away() const { return client_went_away_.load(); }

 private:
  void Run() {
    while (!stop_) {
      pollfd p{listen_fd_, POLLIN, 0};
      if (::poll(&p, 1, 50) <= 0) continue;
      const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) continue;
      Serve(fd);
      ::close(fd);
    }
  }

  void Serve(int fd) {
    std::string in;
    char buf[4096];
    size_t header_end;
    while ((header_end = in.find("\r\n\r\n")) == std::string::npos) {
      const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
      if (n <= 0) return;
      in.append(buf, static_cast<size_t>(n));
    }
    ++requests_;
    for (const Step& step : script_) {
      if (step.delay_ms > 0) {
        const auto until = Clock::now() + milliseconds(step.delay_ms);
        while (Clock::now() < until && !stop_) {
          pollfd p{fd, POLLIN, 0};
          const int left = static_cast<int>(
              std::chrono::duration_cast<milliseconds>(until - Clock::now()).count());
          if (::poll(&p, 1, std::max(1, std::min(left, 20))) > 0) {
            if (::recv(fd, buf, sizeof(buf), MSG_DONTWAIT) == 0) {  // the client closed
              client_went_away_ = true;
              return;
            }
          }
        }
      }
      if (::send(fd, step.bytes.data(), step.bytes.size(), MSG_NOSIGNAL) < 0) {
        client_went_away_ = true;
        return;
      }
    }
  }

  std::vector<Step> script_;
  int listen_fd_ = -1;
  uint16_t port_ = 0;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<int> requests_{0};
  std::atomic<bool> client_went_away_{false};
};

const char kChunkedHeaders[] =
    "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
    "X-Test: yes\r\n\r\n";

std::string Chunk(const std::string& data) {
  char size[32];
  std::snprintf(size, sizeof(size), "%zx\r\n", data.size());
  return size + data + "\r\n";
}

// What the streaming callbacks saw, in order ("H<status>" for headers, "B<bytes>" for body).
struct Trace {
  std::mutex mu;
  std::vector<std::string> events;
  std::string body;
  std::atomic<int> in_callback{0};
  std::atomic<bool> overlapped{false};
  void Add(std::string e) {
    std::lock_guard<std::mutex> lock(mu);
    events.push_back(std::move(e));
  }
};

struct Outcome {
  std::promise<Result<ClientResponse>> promise;
  std::atomic<int> calls{0};
};

ClientRequest StreamRequest(const std::string& url, const std::shared_ptr<Trace>& trace,
                            std::function<bool(std::string_view)> body_hook = nullptr) {
  ClientRequest req;
  req.method = "POST";
  req.url = url;
  req.body = "{}";
  req.timeout_ms = 10'000;
  req.on_headers = [trace](int status, const Headers& headers) {
    if (trace->in_callback.fetch_add(1) != 0) trace->overlapped = true;
    trace->Add("H" + std::to_string(status) + ":" + FindHeader(headers, "x-test"));
    trace->in_callback.fetch_sub(1);
    return true;
  };
  req.on_body = [trace, body_hook](std::string_view bytes) {
    if (trace->in_callback.fetch_add(1) != 0) trace->overlapped = true;
    trace->Add("B");
    {
      std::lock_guard<std::mutex> lock(trace->mu);
      trace->body.append(bytes.data(), bytes.size());
    }
    const bool go_on = body_hook ? body_hook(bytes) : true;
    trace->in_callback.fetch_sub(1);
    return go_on;
  };
  return req;
}

std::future<Result<ClientResponse>> Issue(HttpClient& client, ClientRequest req,
                                          const std::shared_ptr<Outcome>& outcome) {
  client.Request(std::move(req), [outcome](Result<ClientResponse> r) {
    if (outcome->calls.fetch_add(1) == 0) outcome->promise.set_value(std::move(r));
  });
  return outcome->promise.get_future();
}

Result<ClientResponse> Get(std::future<Result<ClientResponse>>& f) {
  if (f.wait_for(std::chrono::seconds(10)) != std::future_status::ready) {
    return Status::Internal("test: no callback within 10 s");
  }
  return f.get();
}

TEST(HttpStreamTest, HeadersOnceThenBodyPiecesInOrder) {
  ScriptedServer server({{0, "HTTP/1.1 100 Continue\r\n\r\n"},
                         {0, kChunkedHeaders},
                         {0, Chunk("data: one\n\n")},
                         {60, Chunk("data: two\n\n")},
                         {60, Chunk("data: three\n\n") + "0\r\n\r\n"}});
  IoThreads io(2);
  auto client = MakeCurlHttpClient(io.io);
  auto trace = std::make_shared<Trace>();
  auto outcome = std::make_shared<Outcome>();
  auto future = Issue(*client, StreamRequest(server.url(), trace), outcome);
  Result<ClientResponse> r = Get(future);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, "");  // streamed, not accumulated
  EXPECT_EQ(FindHeader(r->headers, "x-test"), "yes");
  std::lock_guard<std::mutex> lock(trace->mu);
  EXPECT_EQ(trace->body, "data: one\n\ndata: two\n\ndata: three\n\n");
  ASSERT_GE(trace->events.size(), 4u);  // headers + at least the three paced pieces
  EXPECT_EQ(trace->events[0], "H200:yes");
  for (size_t i = 1; i < trace->events.size(); ++i) EXPECT_EQ(trace->events[i], "B");
  EXPECT_FALSE(trace->overlapped.load());
  EXPECT_EQ(outcome->calls.load(), 1);
}

TEST(HttpStreamTest, ErrorStatusBodyAlsoStreams) {
  ScriptedServer server({{0, "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 7\r\n"
                             "X-Test: e\r\n\r\nloading"}});
  IoThreads io(1);
  auto client = MakeCurlHttpClient(io.io);
  auto trace = std::make_shared<Trace>();
  auto outcome = std::make_shared<Outcome>();
  auto future = Issue(*client, StreamRequest(server.url(), trace), outcome);
  Result<ClientResponse> r = Get(future);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->status, 503);
  std::lock_guard<std::mutex> lock(trace->mu);
  EXPECT_EQ(trace->events.front(), "H503:e");
  EXPECT_EQ(trace->body, "loading");
}

TEST(HttpStreamTest, FalseFromOnBodyAbortsWithCancelled) {
  std::vector<Step> script = {{0, kChunkedHeaders}};
  for (int i = 0; i < 50; ++i) script.push_back({20, Chunk("data: x\n\n")});
  ScriptedServer server(script);
  IoThreads io(2);
  auto client = MakeCurlHttpClient(io.io);
  auto trace = std::make_shared<Trace>();
  auto outcome = std::make_shared<Outcome>();
  auto pieces = std::make_shared<std::atomic<int>>(0);
  const auto start = Clock::now();
  auto future = Issue(
      *client,
      StreamRequest(server.url(), trace, [pieces](std::string_view) { return ++*pieces < 2; }),
      outcome);
  Result<ClientResponse> r = Get(future);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Status::Code::kUnavailable);
  EXPECT_EQ(r.status().message(), "cancelled");
  EXPECT_EQ(pieces->load(), 2);  // nothing after the false return
  EXPECT_LT(Clock::now() - start, milliseconds(900));  // the 50 pieces would take 1 s
  // Exactly one completion, even after the server's remaining writes.
  EXPECT_TRUE(WaitFor([&] { return server.client_went_away(); }));
  EXPECT_EQ(outcome->calls.load(), 1);
}

TEST(HttpStreamTest, FalseFromOnHeadersAbortsBeforeAnyBody) {
  ScriptedServer server({{0, kChunkedHeaders}, {0, Chunk("data: x\n\n")}, {0, "0\r\n\r\n"}});
  IoThreads io(1);
  auto client = MakeCurlHttpClient(io.io);
  auto trace = std::make_shared<Trace>();
  auto outcome = std::make_shared<Outcome>();
  ClientRequest req = StreamRequest(server.url(), trace);
  req.on_headers = [trace](int status, const Headers&) {
    trace->Add("H" + std::to_string(status));
    return false;
  };
  auto future = Issue(*client, std::move(req), outcome);
  Result<ClientResponse> r = Get(future);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Status::Code::kUnavailable);
  std::lock_guard<std::mutex> lock(trace->mu);
  EXPECT_EQ(trace->events, (std::vector<std::string>{"H200"}));
}

TEST(HttpStreamTest, IdleTimeoutFiresAfterTheGapNotBefore) {
  ScriptedServer server({{0, kChunkedHeaders}, {0, Chunk("data: first\n\n")},
                         {5000, Chunk("data: late\n\n") + "0\r\n\r\n"}});
  IoThreads io(1);
  auto client = MakeCurlHttpClient(io.io);
  auto trace = std::make_shared<Trace>();
  auto outcome = std::make_shared<Outcome>();
  auto first_at = std::make_shared<std::atomic<int64_t>>(0);
  ClientRequest req = StreamRequest(server.url(), trace, [first_at](std::string_view) {
    first_at->store(Clock::now().time_since_epoch().count());
    return true;
  });
  req.idle_timeout_ms = 250;
  auto future = Issue(*client, std::move(req), outcome);
  Result<ClientResponse> r = Get(future);
  const auto end = Clock::now();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Status::Code::kDeadlineExceeded) << r.status().ToString();
  const auto gap = end - Clock::time_point(Clock::duration(first_at->load()));
  EXPECT_GE(gap, milliseconds(240));
  EXPECT_LT(gap, milliseconds(1000));  // precise: not curl's 1-second low-speed check
  EXPECT_EQ(outcome->calls.load(), 1);
}

TEST(HttpStreamTest, IdleTimerRestartsOnEveryPiece) {
  std::vector<Step> script = {{0, kChunkedHeaders}};
  for (int i = 0; i < 8; ++i) script.push_back({100, Chunk("data: x\n\n")});
  script.push_back({100, "0\r\n\r\n"});
  ScriptedServer server(script);
  IoThreads io(1);
  auto client = MakeCurlHttpClient(io.io);
  auto trace = std::make_shared<Trace>();
  auto outcome = std::make_shared<Outcome>();
  ClientRequest req = StreamRequest(server.url(), trace);
  req.idle_timeout_ms = 400;  // the whole stream takes ~900 ms, every gap ~100 ms
  auto future = Issue(*client, std::move(req), outcome);
  Result<ClientResponse> r = Get(future);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  std::lock_guard<std::mutex> lock(trace->mu);
  EXPECT_EQ(trace->body.size(), 8 * std::string("data: x\n\n").size());
}

TEST(HttpStreamTest, CancelFlagAbortsAStalledTransfer) {
  ScriptedServer server({{0, kChunkedHeaders}, {0, Chunk("data: first\n\n")},
                         {8000, "0\r\n\r\n"}});
  IoThreads io(1);
  auto client = MakeCurlHttpClient(io.io);
  auto trace = std::make_shared<Trace>();
  auto outcome = std::make_shared<Outcome>();
  ClientRequest req = StreamRequest(server.url(), trace);
  req.cancel = std::make_shared<std::atomic<bool>>(false);
  auto cancel = req.cancel;
  auto future = Issue(*client, std::move(req), outcome);
  ASSERT_TRUE(WaitFor([&] {
    std::lock_guard<std::mutex> lock(trace->mu);
    return !trace->body.empty();
  }));
  const auto cancelled_at = Clock::now();
  cancel->store(true);
  Result<ClientResponse> r = Get(future);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Status::Code::kUnavailable);
  EXPECT_EQ(r.status().message(), "cancelled");
  EXPECT_LT(Clock::now() - cancelled_at, milliseconds(2500));  // next progress callback
  EXPECT_EQ(outcome->calls.load(), 1);
}

TEST(HttpStreamTest, CancelledBeforeStartNeverConnects) {
  ScriptedServer server({{0, kChunkedHeaders}, {0, "0\r\n\r\n"}});
  IoThreads io(1);
  auto client = MakeCurlHttpClient(io.io);
  auto trace = std::make_shared<Trace>();
  auto outcome = std::make_shared<Outcome>();
  ClientRequest req = StreamRequest(server.url(), trace);
  req.cancel = std::make_shared<std::atomic<bool>>(true);
  auto future = Issue(*client, std::move(req), outcome);
  Result<ClientResponse> r = Get(future);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(), "cancelled");
  EXPECT_EQ(server.requests(), 0);
}

TEST(HttpStreamTest, MaxResponseBytesBoundsAStreamedBody) {
  std::vector<Step> script = {{0, kChunkedHeaders}};
  for (int i = 0; i < 10; ++i) script.push_back({5, Chunk(std::string(100, 'x'))});
  script.push_back({0, "0\r\n\r\n"});
  ScriptedServer server(script);
  IoThreads io(1);
  auto client = MakeCurlHttpClient(io.io);
  auto trace = std::make_shared<Trace>();
  auto outcome = std::make_shared<Outcome>();
  ClientRequest req = StreamRequest(server.url(), trace);
  req.max_response_bytes = 450;
  auto future = Issue(*client, std::move(req), outcome);
  Result<ClientResponse> r = Get(future);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Status::Code::kResourceExhausted);
  std::lock_guard<std::mutex> lock(trace->mu);
  EXPECT_LE(trace->body.size(), 450u);
}

TEST(HttpStreamTest, PlainRequestsStillAccumulateTheBody) {
  ScriptedServer server({{0, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"}});
  IoThreads io(1);
  auto client = MakeCurlHttpClient(io.io);
  ClientRequest req;
  req.url = server.url();
  auto outcome = std::make_shared<Outcome>();
  auto future = Issue(*client, std::move(req), outcome);
  Result<ClientResponse> r = Get(future);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->body, "hello");
}

}  // namespace
}  // namespace parley::net
