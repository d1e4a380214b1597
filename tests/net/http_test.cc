// HttpServer + CurlHttpClient over real sockets on 127.0.0.1 (port 0) and Unix-domain sockets.

#include "net/http.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/io_threads.h"

namespace parley::net {
namespace {

using parley::testing::IoThreads;
using parley::testing::WaitFor;

namespace asio = boost::asio;
using std::chrono::milliseconds;
using std::chrono::seconds;
using Clock = std::chrono::steady_clock;

// Issues one request and waits (bounded) for its callback.
// Starts a request; its result arrives in the future.
std::future<Result<ClientResponse>> Start(HttpClient& client, ClientRequest request) {
  auto promise = std::make_shared<std::promise<Result<ClientResponse>>>();
  auto future = promise->get_future();
  client.Request(std::move(request),
                 [promise](Result<ClientResponse> r) { promise->set_value(std::move(r)); });
  return future;
}

Result<ClientResponse> Call(HttpClient& client, ClientRequest request,
                            milliseconds limit = milliseconds(10000)) {
  auto future = Start(client, std::move(request));
  if (future.wait_for(limit) != std::future_status::ready) {
    return Status::Internal("test: no callback within the deadline");
  }
  return future.get();
}

ClientRequest Get(const std::string& url) {
  ClientRequest r;
  r.url = url;
  return r;
}

std::string BaseUrl(uint16_t port) { return "http://127.0.0.1:" + std::to_string(port); }

// A blocking POSIX TCP connection for speaking raw HTTP to the server.
class RawConnection {
 public:
  explicit RawConnection(uint16_t port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  }
  ~RawConnection() { ::close(fd_); }
  bool connected() const { return connected_; }

  bool Send(const std::string& data) {
    size_t sent = 0;
    while (sent < data.size()) {
      const ssize_t n = ::send(fd_, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
      if (n <= 0) return false;
      sent += static_cast<size_t>(n);
    }
    return true;
  }

  // Reads until the peer closes, `until` has been received, or `limit` passes.
  std::string Read(milliseconds limit, const std::string& until = "") {
    const auto deadline = Clock::now() + limit;
    while (!closed_ && (until.empty() || received_.find(until) == std::string::npos)) {
      const auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now());
      if (left.count() <= 0) break;
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
      char buf[4096];
      const ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
      if (n <= 0) {
        closed_ = true;
        break;
      }
      received_.append(buf, static_cast<size_t>(n));
    }
    return received_;
  }
  bool closed() const { return closed_; }
  void Clear() { received_.clear(); }

 private:
  int fd_ = -1;
  bool connected_ = false;
  bool closed_ = false;
  std::string received_;
};

// Accepts one TCP connection on 127.0.0.1, reads the request head, writes `reply` verbatim and
// closes. Bounded by poll timeouts so a failing test cannot hang.
class CannedServer {
 public:
  explicit CannedServer(std::string reply) : reply_(std::move(reply)) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    ::listen(listen_fd_, 4);
    socklen_t len = sizeof(addr);
    ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    thread_ = std::thread([this] { Serve(); });
  }
  ~CannedServer() {
    thread_.join();
    ::close(listen_fd_);
  }
  uint16_t port() const { return port_; }

 private:
  void Serve() {
    pollfd p{listen_fd_, POLLIN, 0};
    if (::poll(&p, 1, 5000) <= 0) return;
    const int fd = ::accept(listen_fd_, nullptr, nullptr);
    if (fd < 0) return;
    std::string head;
    while (head.find("\r\n\r\n") == std::string::npos) {
      pollfd q{fd, POLLIN, 0};
      if (::poll(&q, 1, 5000) <= 0) break;
      char buf[1024];
      const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
      if (n <= 0) break;
      head.append(buf, static_cast<size_t>(n));
    }
    ::send(fd, reply_.data(), reply_.size(), MSG_NOSIGNAL);
    ::shutdown(fd, SHUT_WR);
    ::close(fd);
  }

  std::string reply_;
  int listen_fd_ = -1;
  uint16_t port_ = 0;
  std::thread thread_;
};

// Echoes the request as "method|path|query|x-test header|body" with a custom response header.
HttpHandler EchoHandler(std::atomic<int>* calls = nullptr) {
  return [calls](HttpRequest req, Responder respond) {
    if (calls != nullptr) ++*calls;
    HttpResponse res;
    res.content_type = "text/plain";
    res.headers.emplace_back("X-Echo", "yes");
    res.body = req.method + "|" + req.path + "|" + req.query + "|" +
               FindHeader(req.headers, "x-test") + "|" + req.body;
    respond(std::move(res));
  };
}

// Keeps responders for the test to answer later.
class HeldResponders {
 public:
  HttpHandler Handler() {
    return [this](HttpRequest req, Responder respond) {
      std::lock_guard<std::mutex> lock(mu_);
      requests_.push_back(std::move(req));
      responders_.push_back(std::move(respond));
    };
  }
  size_t Count() {
    std::lock_guard<std::mutex> lock(mu_);
    return responders_.size();
  }
  void RespondAll(int status, const std::string& body) {
    std::vector<Responder> all;
    {
      std::lock_guard<std::mutex> lock(mu_);
      all.swap(responders_);
    }
    for (auto& r : all) {
      HttpResponse res;
      res.status = status;
      res.body = body;
      r(std::move(res));
    }
  }

 private:
  std::mutex mu_;
  std::vector<HttpRequest> requests_;
  std::vector<Responder> responders_;
};

TEST(HttpServerClientTest, GetAndPostRoundTrip) {
  IoThreads io(2);
  std::atomic<int> calls{0};
  HttpServer server(io.io, {}, EchoHandler(&calls));
  auto port = server.ListenTcp("127.0.0.1", 0);
  ASSERT_TRUE(port.ok()) << port.status().ToString();
  ASSERT_NE(*port, 0);
  auto client = MakeCurlHttpClient(io.io);

  ClientRequest get = Get(BaseUrl(*port) + "/v1/items?limit=5&x=y");
  get.headers.emplace_back("X-Test", "hello");
  auto r = Call(*client, get);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, "GET|/v1/items|limit=5&x=y|hello|");
  EXPECT_EQ(FindHeader(r->headers, "content-type"), "text/plain");
  EXPECT_EQ(FindHeader(r->headers, "SERVER"), "parley");
  EXPECT_EQ(FindHeader(r->headers, "x-echo"), "yes");
  EXPECT_EQ(FindHeader(r->headers, "content-length"), std::to_string(r->body.size()));

  ClientRequest post;
  post.method = "POST";
  post.url = BaseUrl(*port) + "/v1/messages";
  post.headers.emplace_back("Content-Type", "application/json");
  post.body = R"({"text":"hi"})";
  r = Call(*client, post);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, R"(POST|/v1/messages|||{"text":"hi"})");

  ClientRequest put = post;
  put.method = "PUT";
  put.body = "replace";
  r = Call(*client, put);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->body, "PUT|/v1/messages|||replace");

  ClientRequest del = Get(BaseUrl(*port) + "/v1/messages/7");
  del.method = "DELETE";
  r = Call(*client, del);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->body, "DELETE|/v1/messages/7|||");
  EXPECT_EQ(calls.load(), 4);
}

TEST(HttpServerClientTest, AnyHttpStatusIsASuccessfulResult) {
  IoThreads io(1);
  HttpServer server(io.io, {}, [](HttpRequest, Responder respond) {
    HttpResponse res;
    res.status = 404;
    res.headers.emplace_back("Retry-After", "3");
    res.headers.emplace_back("Content-Length", "999");       // framing is the server's: dropped
    res.headers.emplace_back("X-Evil", "a\r\nInjected: 1");  // would inject a header: dropped
    res.body = R"({"error":"not_found"})";
    respond(std::move(res));
  });
  auto port = server.ListenTcp("127.0.0.1", 0);
  ASSERT_TRUE(port.ok());
  auto client = MakeCurlHttpClient(io.io);
  auto r = Call(*client, Get(BaseUrl(*port) + "/missing"));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->status, 404);
  EXPECT_EQ(r->body, R"({"error":"not_found"})");
  EXPECT_EQ(FindHeader(r->headers, "retry-after"), "3");
  EXPECT_EQ(FindHeader(r->headers, "content-type"), "application/json");
  EXPECT_EQ(FindHeader(r->headers, "content-length"), std::to_string(r->body.size()));
  EXPECT_EQ(FindHeader(r->headers, "injected"), "");
  EXPECT_EQ(FindHeader(r->headers, "x-evil"), "");
}

TEST(HttpServerClientTest, HeadGetsTheLengthButNoBody) {
  IoThreads io(1);
  HttpServer server(io.io, {}, [](HttpRequest req, Responder respond) {
    HttpResponse res;
    res.body = "abcdef";
    respond(std::move(res));
  });
  auto port = server.ListenTcp("127.0.0.1", 0);
  ASSERT_TRUE(port.ok());
  auto client = MakeCurlHttpClient(io.io);
  ClientRequest head = Get(BaseUrl(*port) + "/h");
  head.method = "HEAD";
  auto r = Call(*client, head);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, "");
  EXPECT_EQ(FindHeader(r->headers, "content-length"), "6");
  r = Call(*client, Get(BaseUrl(*port) + "/h"));  // same connection, framing intact
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->body, "abcdef");
  EXPECT_EQ(server.AcceptedConnections(), 1u);
}

TEST(HttpServerClientTest, KeepAliveReusesOneConnection) {
  IoThreads io(2);
  HttpServer server(io.io, {}, EchoHandler());
  auto port = server.ListenTcp("127.0.0.1", 0);
  ASSERT_TRUE(port.ok());
  auto client = MakeCurlHttpClient(io.io);
  for (int i = 0; i < 50; ++i) {
    ClientRequest req = Get(BaseUrl(*port) + "/n?i=" + std::to_string(i));
    if (i % 2 == 1) {
      req.method = "POST";
      req.body = "b" + std::to_string(i);
    }
    auto r = Call(*client, req);
    ASSERT_TRUE(r.ok()) << i << ": " << r.status().ToString();
    ASSERT_EQ(r->status, 200);
    ASSERT_EQ(r->body, req.method + "|/n|i=" + std::to_string(i) + "||" + req.body);
  }
  EXPECT_EQ(server.AcceptedConnections(), 1u);
  EXPECT_EQ(server.OpenConnections(), 1u);
}

TEST(HttpServerClientTest, OversizedBodyGets413AndSkipsTheHandler) {
  IoThreads io(2);
  std::atomic<int> calls{0};
  HttpServerOptions options;
  options.max_body_bytes = 1024;
  HttpServer server(io.io, options, EchoHandler(&calls));
  auto port = server.ListenTcp("127.0.0.1", 0);
  ASSERT_TRUE(port.ok());
  auto client = MakeCurlHttpClient(io.io);

  for (size_t size : {size_t{10 * 1024}, size_t{512 * 1024}}) {
    ClientRequest post;
    post.method = "POST";
    post.url = BaseUrl(*port) + "/upload";
    post.body.assign(size, 'x');
    auto r = Call(*client, post);
    ASSERT_TRUE(r.ok()) << size << ": " << r.status().ToString();
    EXPECT_EQ(r->status, 413);
    EXPECT_EQ(FindHeader(r->headers, "content-type"), "application/json");
    EXPECT_NE(r->body.find(R"("error":"body_too_large")"), std::string::npos) << r->body;
    EXPECT_NE(r->body.find(R"("message":")"), std::string::npos) << r->body;
    EXPECT_EQ(FindHeader(r->headers, "connection"), "close");
  }
  // At the limit is fine.
  ClientRequest ok;
  ok.method = "POST";
  ok.url = BaseUrl(*port) + "/upload";
  ok.body.assign(1024, 'y');
  auto r = Call(*client, ok);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(calls.load(), 1);
}

TEST(HttpServerClientTest, ChunkedBodyOverTheLimitGets413) {
  IoThreads io(1);
  std::atomic<int> calls{0};
  HttpServerOptions options;
  options.max_body_bytes = 16;
  HttpServer server(io.io, options, EchoHandler(&calls));
  auto port = server.ListenTcp("127.0.0.1", 0);
  ASSERT_TRUE(port.ok());
  RawConnection conn(*port);
  ASSERT_TRUE(conn.connected());
  ASSERT_TRUE(
      conn.Send("POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                "10\r\n0123456789abcdef\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n"));
  const std::string reply = conn.Read(milliseconds(5000));
  EXPECT_EQ(reply.rfind("HTTP/1.1 413", 0), 0u) << reply;
  EXPECT_NE(reply.find("body_too_large"), std::string::npos) << reply;
  EXPECT_TRUE(conn.closed());
  EXPECT_EQ(calls.load(), 0);
}

TEST(HttpServerClientTest, MalformedRequestsGet400AndClose) {
  IoThreads io(1);
  std::atomic<int> calls{0};
  HttpServer server(io.io, {}, EchoHandler(&calls));
  auto port = server.ListenTcp("127.0.0.1", 0);
  ASSERT_TRUE(port.ok());
  for (const std::string& bad :
       {std::string("GARBAGE\r\n\r\n"),
        std::string("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n"),
        std::string("GET / HTTP/9.9\r\nHost: x\r\n\r\n")}) {
    RawConnection conn(*port);
    ASSERT_TRUE(conn.connected());
    ASSERT_TRUE(conn.Send(bad));
    const std::string reply = conn.Read(milliseconds(5000));
    EXPECT_EQ(reply.rfind("HTTP/1.1 400", 0), 0u) << reply;
    EXPECT_NE(reply.find(R"({"error":"bad_request","message":")"), std::string::npos) << reply;
    EXPECT_NE(reply.find("Server: parley"), std::string::npos) << reply;
    EXPECT_TRUE(conn.closed()) << bad;
  }
  EXPECT_EQ(calls.load(), 0);
}

TEST(HttpServerClientTest, ExpectContinueIsAnswered) {
  IoThreads io(1);
  HttpServer server(io.io, {}, EchoHandler());
  auto port = server.ListenTcp("127.0.0.1", 0);
  ASSERT_TRUE(port.ok());
  RawConnection conn(*port);
  ASSERT_TRUE(conn.connected());
  ASSERT_TRUE(
      conn.Send("POST /e HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                "Content-Length: 5\r\n\r\n"));
  std::string got = conn.Read(milliseconds(5000), "\r\n\r\n");
  ASSERT_EQ(got, "HTTP/1.1 100 Continue\r\n\r\n");
  conn.Clear();
  ASSERT_TRUE(conn.Send("hello"));
  got = conn.Read(milliseconds(5000), "POST|/e|||hello");
  EXPECT_EQ(got.rfind("HTTP/1.1 200", 0), 0u) << got;
  EXPECT_NE(got.find("POST|/e|||hello"), std::string::npos) << got;
}

TEST(HttpServerClientTest, HandlerMayRespondLaterFromAnotherThread) {
  IoThreads io(2);
  HeldResponders held;
  HttpServer server(io.io, {}, held.Handler());
  auto port = server.ListenTcp("127.0.0.1", 0);
  ASSERT_TRUE(port.ok());
  auto client = MakeCurlHttpClient(io.io);

  auto future = Start(*client, Get(BaseUrl(*port) + "/slow"));
  ASSERT_TRUE(WaitFor([&] { return held.Count() == 1; }));
  EXPECT_EQ(server.InFlight(), 1u);
  std::thread responder([&] { held.RespondAll(202, "later"); });
  responder.join();
  ASSERT_EQ(future.wait_for(seconds(10)), std::future_status::ready);
  auto r = future.get();
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->status, 202);
  EXPECT_EQ(r->body, "later");
  EXPECT_TRUE(WaitFor([&] { return server.InFlight() == 0; }));
}

TEST(HttpServerClientTest, DroppedResponderGives500) {
  IoThreads io(2);
  HttpServer server(io.io, {}, [](HttpRequest, Responder) { /* drops the responder */ });
  auto port = server.ListenTcp("127.0.0.1", 0);
  ASSERT_TRUE(port.ok());
  auto client = MakeCurlHttpClient(io.io);
  auto r = Call(*client, Get(BaseUrl(*port) + "/dropped"));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->status, 500);
  EXPECT_NE(r->body.find(R"("error":"internal")"), std::string::npos) << r->body;
  // The connection is still usable afterwards.
  r = Call(*client, Get(BaseUrl(*port) + "/dropped"));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 500);
  EXPECT_EQ(server.AcceptedConnections(), 1u);
  EXPECT_TRUE(WaitFor([&] { return server.InFlight() == 0; }));
}

TEST(HttpServerClientTest, ThrowingHandlerGives500) {
  IoThreads io(1);
  HttpServer server(
      io.io, {}, [](HttpRequest, Responder) -> void { throw std::runtime_error("handler bug"); });
  auto port = server.ListenTcp("127.0.0.1", 0);
  ASSERT_TRUE(port.ok());
  auto client = MakeCurlHttpClient(io.io);
  auto r = Call(*client, Get(BaseUrl(*port) + "/throws"));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->status, 500);
}

TEST(HttpServerClientTest, SecondResponderCallIsIgnored) {
  IoThreads io(2);
  HttpServer server(io.io, {}, [](HttpRequest, Responder respond) {
    HttpResponse first;
    first.body = "first";
    HttpResponse second;
    second.status = 500;
    second.body = "second";
    Responder copy = respond;
    respond(first);
    copy(second);
  });
  auto port = server.ListenTcp("127.0.0.1", 0);
  ASSERT_TRUE(port.ok());
  auto client = MakeCurlHttpClient(io.io);
  for (int i = 0; i < 3; ++i) {
    auto r = Call(*client, Get(BaseUrl(*port) + "/twice"));
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(r->status, 200);
    EXPECT_EQ(r->body, "first");
  }
  EXPECT_EQ(server.AcceptedConnections(), 1u);
  EXPECT_TRUE(WaitFor([&] { return server.InFlight() == 0; }));
}

class UnixSocketTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/parley_net_test_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/http.sock";
  }
  void TearDown() override {
    ::unlink(path_.c_str());
    ::rmdir(dir_.c_str());
  }
  std::string dir_;
  std::string path_;
};

TEST_F(UnixSocketTest, ListenReplacesStaleSocketAndServesClient) {
  // A stale socket file: bound, never listened on, closed without unlinking.
  {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path_.c_str(), sizeof(addr.sun_path) - 1);
    ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    ::close(fd);
  }
  IoThreads io(2);
  std::atomic<bool> saw_unix{false};
  HttpServer server(io.io, {}, [&saw_unix](HttpRequest req, Responder respond) {
    saw_unix = req.remote_address == "unix" && req.remote_is_local;
    HttpResponse res;
    res.body = req.path + "?" + req.query;
    respond(std::move(res));
  });
  ASSERT_TRUE(server.ListenUnix(path_).ok());
  auto tcp_port = server.ListenTcp("127.0.0.1", 0);  // both kinds on one server
  ASSERT_TRUE(tcp_port.ok());
  struct stat st {};
  ASSERT_EQ(::stat(path_.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0600u);

  auto client = MakeCurlHttpClient(io.io);
  ClientRequest req = Get("http://localhost/over/unix?a=1");
  req.unix_socket_path = path_;
  auto r = Call(*client, req);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, "/over/unix?a=1");
  EXPECT_TRUE(saw_unix.load());

  r = Call(*client, Get(BaseUrl(*tcp_port) + "/over/tcp"));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->body, "/over/tcp?");
  EXPECT_FALSE(saw_unix.load());

  // A live socket is not taken over.
  HttpServer second(io.io, {}, EchoHandler());
  Status taken = second.ListenUnix(path_);
  EXPECT_EQ(taken.code(), Status::Code::kAlreadyExists) << taken.ToString();

  server.Stop();
  EXPECT_NE(::access(path_.c_str(), F_OK), 0) << "Stop() removes the socket file";
}

TEST_F(UnixSocketTest, RefusesToReplaceARegularFile) {
  FILE* f = std::fopen(path_.c_str(), "w");
  ASSERT_NE(f, nullptr);
  std::fclose(f);
  IoThreads io(1);
  HttpServer server(io.io, {}, EchoHandler());
  Status s = server.ListenUnix(path_);
  EXPECT_EQ(s.code(), Status::Code::kFailedPrecondition) << s.ToString();
  EXPECT_EQ(::access(path_.c_str(), F_OK), 0);
}

TEST(HttpClientTest, ClosedPortIsUnavailable) {
  // Find a port nobody listens on: bind one, then close it.
  uint16_t port = 0;
  {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    socklen_t len = sizeof(addr);
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    port = ntohs(addr.sin_port);
    ::close(fd);
  }
  IoThreads io(1);
  auto client = MakeCurlHttpClient(io.io);
  auto r = Call(*client, Get(BaseUrl(port) + "/"));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Status::Code::kUnavailable) << r.status().ToString();
  EXPECT_FALSE(r.status().message().empty());
}

TEST(HttpClientTest, ResolvesHostNames) {
  // "localhost" goes through curl's resolver (whose wake-up descriptor the client must watch).
  IoThreads io(2);
  HttpServer server(io.io, {}, EchoHandler());
  auto port = server.ListenTcp("127.0.0.1", 0);
  ASSERT_TRUE(port.ok());
  auto client = MakeCurlHttpClient(io.io);
  for (int i = 0; i < 3; ++i) {
    auto r = Call(*client, Get("http://localhost:" + std::to_string(*port) + "/named"));
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(r->body, "GET|/named|||");
  }
}

TEST(HttpClientTest, TimeoutIsDeadlineExceededWithinBound) {
  IoThreads io(2);
  HeldResponders held;
  HttpServer server(io.io, {}, held.Handler());
  auto port = server.ListenTcp("127.0.0.1", 0);
  ASSERT_TRUE(port.ok());
  auto client = MakeCurlHttpClient(io.io);
  ClientRequest req = Get(BaseUrl(*port) + "/never");
  req.timeout_ms = 300;
  const auto start = Clock::now();
  auto r = Call(*client, req);
  const auto elapsed = Clock::now() - start;
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Status::Code::kDeadlineExceeded) << r.status().ToString();
  EXPECT_GE(elapsed, milliseconds(250));
  EXPECT_LT(elapsed, milliseconds(3000));
  held.RespondAll(200, "too late");  // to a closed connection: harmless
  EXPECT_TRUE(WaitFor([&] { return server.InFlight() == 0; }));
}

TEST(HttpClientTest, OversizedResponseIsResourceExhausted) {
  IoThreads io(2);
  HttpServer server(io.io, {}, [](HttpRequest, Responder respond) {
    HttpResponse res;
    res.body.assign(100 * 1024, 'z');
    respond(std::move(res));
  });
  auto port = server.ListenTcp("127.0.0.1", 0);
  ASSERT_TRUE(port.ok());
  auto client = MakeCurlHttpClient(io.io);
  ClientRequest req = Get(BaseUrl(*port) + "/big");
  req.max_response_bytes = 1024;
  auto r = Call(*client, req);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Status::Code::kResourceExhausted) << r.status().ToString();

  req.max_response_bytes = 100 * 1024;  // exactly the size: fine
  r = Call(*client, req);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->body.size(), 100u * 1024);
}

TEST(HttpClientTest, OversizedResponseWithoutContentLengthIsResourceExhausted) {
  CannedServer canned("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + std::string(8000, 'q'));
  IoThreads io(1);
  auto client = MakeCurlHttpClient(io.io);
  ClientRequest req = Get(BaseUrl(canned.port()) + "/stream");
  req.max_response_bytes = 1000;
  auto r = Call(*client, req);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Status::Code::kResourceExhausted) << r.status().ToString();
}

TEST(HttpClientTest, KeepsOnlyTheFinalResponsesHeaders) {
  CannedServer canned(
      "HTTP/1.1 100 Continue\r\nX-Interim: 1\r\n\r\n"
      "HTTP/1.1 201 Created\r\nX-Final: 2\r\nX-Folded: a\r\n  b\r\nContent-Length: 2\r\n"
      "Connection: close\r\n\r\nok");
  IoThreads io(1);
  auto client = MakeCurlHttpClient(io.io);
  auto r = Call(*client, Get(BaseUrl(canned.port()) + "/"));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->status, 201);
  EXPECT_EQ(r->body, "ok");
  EXPECT_EQ(FindHeader(r->headers, "x-interim"), "");
  EXPECT_EQ(FindHeader(r->headers, "x-final"), "2");
  EXPECT_EQ(FindHeader(r->headers, "x-folded"), "a b");
}

TEST(HttpClientTest, InvalidRequestFailsAsynchronously) {
  asio::io_context io;  // not running yet: a callback can only run inside io.run()
  auto client = MakeCurlHttpClient(io);
  std::optional<Result<ClientResponse>> got;
  ClientRequest req;  // empty URL
  client->Request(req, [&got](Result<ClientResponse> r) { got.emplace(std::move(r)); });
  ClientRequest bad_header = Get("http://127.0.0.1:1/");
  bad_header.headers.emplace_back("X-Bad", "a\r\nb");
  std::optional<Result<ClientResponse>> got2;
  client->Request(bad_header, [&got2](Result<ClientResponse> r) { got2.emplace(std::move(r)); });
  EXPECT_FALSE(got.has_value());
  EXPECT_FALSE(got2.has_value());
  io.run_for(seconds(5));
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->status().code(), Status::Code::kInvalidArgument);
  ASSERT_TRUE(got2.has_value());
  EXPECT_EQ(got2->status().code(), Status::Code::kInvalidArgument);
}

TEST(HttpClientTest, TwoHundredConcurrentRequestsOnTwoThreads) {
  IoThreads io(2);
  HttpServer server(io.io, {}, [](HttpRequest req, Responder respond) {
    HttpResponse res;
    res.content_type = "text/plain";
    res.body = "r:" + req.query + ":" + req.body;
    respond(std::move(res));
  });
  auto port = server.ListenTcp("127.0.0.1", 0);
  ASSERT_TRUE(port.ok());
  auto client = MakeCurlHttpClient(io.io);

  constexpr int kRequests = 200;
  std::mutex mu;
  std::condition_variable cv;
  std::map<int, Result<ClientResponse>> results;
  // Issue from several threads at once: Request() is thread-safe.
  std::vector<std::thread> issuers;
  for (int part = 0; part < 4; ++part) {
    issuers.emplace_back([&, part] {
      for (int i = part; i < kRequests; i += 4) {
        ClientRequest req = Get(BaseUrl(*port) + "/c?i=" + std::to_string(i));
        if (i % 3 == 0) {
          req.method = "POST";
          req.body = "body" + std::to_string(i);
        }
        client->Request(std::move(req), [&, i](Result<ClientResponse> r) {
          std::lock_guard<std::mutex> lock(mu);
          results.emplace(i, std::move(r));
          cv.notify_all();
        });
      }
    });
  }
  for (auto& t : issuers) t.join();
  {
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, seconds(30), [&] { return results.size() == kRequests; }))
        << results.size() << " of " << kRequests << " completed";
  }
  for (int i = 0; i < kRequests; ++i) {
    auto& r = results.at(i);
    ASSERT_TRUE(r.ok()) << i << ": " << r.status().ToString();
    EXPECT_EQ(r->status, 200);
    EXPECT_EQ(r->body,
              "r:i=" + std::to_string(i) + ":" + (i % 3 == 0 ? "body" + std::to_string(i) : ""));
  }
  EXPECT_TRUE(WaitFor([&] { return server.InFlight() == 0; }));
  // A second wave reuses the cached connections rather than opening 200 more.
  const uint64_t accepted = server.AcceptedConnections();
  for (int i = 0; i < 20; ++i) {
    auto r = Call(*client, Get(BaseUrl(*port) + "/again"));
    ASSERT_TRUE(r.ok()) << r.status().ToString();
  }
  EXPECT_EQ(server.AcceptedConnections(), accepted);
}

TEST(HttpServerTest, StopLetsTheInFlightRequestFinish) {
  IoThreads io(2);
  HeldResponders held;
  HttpServer server(io.io, {}, held.Handler());
  auto port = server.ListenTcp("127.0.0.1", 0);
  ASSERT_TRUE(port.ok());
  auto client = MakeCurlHttpClient(io.io);

  // One idle keep-alive connection (raw) and one request in flight.
  RawConnection idle(*port);
  ASSERT_TRUE(idle.connected());
  auto future = Start(*client, Get(BaseUrl(*port) + "/work"));
  ASSERT_TRUE(WaitFor([&] { return server.InFlight() == 1 && server.OpenConnections() == 2; }));

  server.Stop();
  idle.Read(milliseconds(5000));
  EXPECT_TRUE(idle.closed()) << "idle connections close at Stop()";
  EXPECT_EQ(future.wait_for(milliseconds(50)), std::future_status::timeout);
  EXPECT_EQ(server.InFlight(), 1u);

  held.RespondAll(200, "finished");
  ASSERT_EQ(future.wait_for(seconds(10)), std::future_status::ready);
  auto r = future.get();
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, "finished");
  EXPECT_EQ(FindHeader(r->headers, "connection"), "close");
  EXPECT_TRUE(WaitFor([&] { return server.InFlight() == 0 && server.OpenConnections() == 0; }));

  // No longer accepting.
  ClientRequest after = Get(BaseUrl(*port) + "/after");
  after.timeout_ms = 2000;
  auto late = Call(*client, after);
  EXPECT_FALSE(late.ok());
  EXPECT_EQ(held.Count(), 0u);
}

TEST(HttpServerTest, IdleAndSlowConnectionsTimeOut) {
  IoThreads io(1);
  HttpServerOptions options;
  options.request_timeout_ms = 200;
  HttpServer server(io.io, options, EchoHandler());
  auto port = server.ListenTcp("127.0.0.1", 0);
  ASSERT_TRUE(port.ok());

  // Keep-alive connection left idle after one request.
  RawConnection idle(*port);
  ASSERT_TRUE(idle.connected());
  const auto start = Clock::now();
  ASSERT_TRUE(idle.Send("GET /a HTTP/1.1\r\nHost: x\r\n\r\n"));
  const std::string reply = idle.Read(milliseconds(5000));
  EXPECT_EQ(reply.rfind("HTTP/1.1 200", 0), 0u) << reply;
  EXPECT_NE(reply.find("GET|/a|||"), std::string::npos) << reply;
  EXPECT_TRUE(idle.closed());
  EXPECT_GE(Clock::now() - start, milliseconds(150));

  // A request head that never completes.
  RawConnection slow(*port);
  ASSERT_TRUE(slow.connected());
  ASSERT_TRUE(slow.Send("GET /b HTTP/1.1\r\nHost: x\r\n"));
  slow.Read(milliseconds(5000));
  EXPECT_TRUE(slow.closed());
  EXPECT_TRUE(WaitFor([&] { return server.OpenConnections() == 0; }));
}

TEST(HttpServerTest, ConnectionsOverTheLimitAreClosedAtOnce) {
  IoThreads io(1);
  HttpServerOptions options;
  options.max_connections = 1;
  HttpServer server(io.io, options, EchoHandler());
  auto port = server.ListenTcp("127.0.0.1", 0);
  ASSERT_TRUE(port.ok());
  RawConnection first(*port);
  ASSERT_TRUE(first.connected());
  ASSERT_TRUE(WaitFor([&] { return server.OpenConnections() == 1; }));
  RawConnection second(*port);
  ASSERT_TRUE(second.connected());  // the kernel completes the handshake; we then close it
  const std::string got = second.Read(milliseconds(5000));
  EXPECT_TRUE(second.closed());
  EXPECT_EQ(got, "");
  EXPECT_EQ(server.AcceptedConnections(), 2u);
  ASSERT_TRUE(first.Send("GET /ok HTTP/1.1\r\nHost: x\r\n\r\n"));
  const std::string reply = first.Read(milliseconds(5000), "GET|/ok|||");
  EXPECT_EQ(reply.rfind("HTTP/1.1 200", 0), 0u) << reply;
}

TEST(HttpClientTest, DestroyingTheClientFailsRequestsInFlight) {
  IoThreads io(2);
  HeldResponders held;
  HttpServer server(io.io, {}, held.Handler());
  auto port = server.ListenTcp("127.0.0.1", 0);
  ASSERT_TRUE(port.ok());
  auto client = MakeCurlHttpClient(io.io);
  auto future = Start(*client, Get(BaseUrl(*port) + "/pending"));
  ASSERT_TRUE(WaitFor([&] { return held.Count() == 1; }));
  client.reset();
  ASSERT_EQ(future.wait_for(seconds(10)), std::future_status::ready);
  auto r = future.get();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Status::Code::kUnavailable);
  EXPECT_EQ(r.status().message(), "client shut down");
  held.RespondAll(200, "nobody listens");
  EXPECT_TRUE(WaitFor([&] { return server.InFlight() == 0; }));
}

TEST(HttpClientTest, CancelEndsATransferWhoseServerIsSilent) {
  IoThreads io(2);
  HeldResponders held;
  HttpServer server(io.io, {}, held.Handler());
  auto port = server.ListenTcp("127.0.0.1", 0);
  ASSERT_TRUE(port.ok());
  auto client = MakeCurlHttpClient(io.io);
  ClientRequest req = Get(BaseUrl(*port) + "/silent");
  req.timeout_ms = 0;  // no deadline of its own
  req.cancel = std::make_shared<std::atomic<bool>>(false);
  auto future = Start(*client, req);
  ASSERT_TRUE(WaitFor([&] { return held.Count() == 1; }));
  // No byte comes; the flag is still seen (curl's progress callback) and ends it promptly.
  req.cancel->store(true);
  ASSERT_EQ(future.wait_for(seconds(3)), std::future_status::ready);
  auto r = future.get();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Status::Code::kUnavailable);
  EXPECT_EQ(r.status().message(), "cancelled");
  // Its connection is closed: the server's request ends without an answer being read.
  held.RespondAll(200, "too late");
  EXPECT_TRUE(WaitFor([&] { return server.InFlight() == 0; }));
  // Other transfers go on.
  auto next_future = Start(*client, Get(BaseUrl(*port) + "/after"));
  ASSERT_TRUE(WaitFor([&] { return held.Count() == 1; }));
  held.RespondAll(200, "ok");
  ASSERT_EQ(next_future.wait_for(seconds(10)), std::future_status::ready);
  auto after = next_future.get();
  ASSERT_TRUE(after.ok()) << after.status().ToString();
  EXPECT_EQ(after->body, "ok");
}

TEST(HttpClientTest, BlockingRequestWorks) {
  IoThreads io(1);
  HttpServer server(io.io, {}, EchoHandler());
  auto port = server.ListenTcp("127.0.0.1", 0);
  ASSERT_TRUE(port.ok());
  ClientRequest req;
  req.method = "POST";
  req.url = BaseUrl(*port) + "/blocking?q=1";
  req.body = "payload";
  auto r = BlockingRequest(req);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, "POST|/blocking|q=1||payload");

  auto refused = BlockingRequest(Get("http://127.0.0.1:1/"));
  EXPECT_EQ(refused.status().code(), Status::Code::kUnavailable) << refused.status().ToString();
}

}  // namespace
}  // namespace parley::net
