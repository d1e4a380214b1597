#pragma once
// HTTP server (Boost.Beast) and asynchronous HTTP client (libcurl multi driven by Boost.Asio), both
// on the daemon's one io_context. No thread per request or connection.

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <boost/asio/io_context.hpp>

#include "core/status.h"

namespace parley::net {

using Headers = std::vector<std::pair<std::string, std::string>>;

// Case-insensitive header lookup; empty string when absent.
std::string FindHeader(const Headers& headers, std::string_view name);

struct HttpRequest {
  std::string method;  // "GET", "POST", ...
  std::string target;  // path and query as sent, e.g. "/v1/messages?stream=1"
  std::string path;    // target without the query
  std::string query;   // after '?', without it; may be empty
  Headers headers;
  std::string body;
  std::string remote_address;  // "127.0.0.1", or "unix" for a Unix-domain socket
  bool remote_is_local = false;  // loopback TCP peer or Unix-domain socket
};

struct HttpResponse {
  int status = 200;
  std::string content_type = "application/json";
  Headers headers;  // extra headers (e.g. Retry-After)
  std::string body;
};

// Completes one request; call exactly once, from any thread.
using Responder = std::function<void(HttpResponse)>;
// Handles one request. Runs on an io thread; must not block.
using HttpHandler = std::function<void(HttpRequest, Responder)>;

struct HttpServerOptions {
  size_t max_body_bytes = 64 * 1024;  // larger bodies get 413 with a JSON error, handler not called
  int request_timeout_ms = 10'000;    // reading a request; idle keep-alive connections close after
  size_t max_connections = 4096;      // further connections are accepted and closed at once
};

// Thread-safety: Listen*/Stop from one thread; handlers run on io threads.
class HttpServer {
 public:
  HttpServer(boost::asio::io_context& io, HttpServerOptions options, HttpHandler handler);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds and starts accepting on host:port (port 0 = any free port); returns the bound port.
  Result<uint16_t> ListenTcp(const std::string& host, uint16_t port);
  // Binds a Unix-domain socket at path (mode 0600; an existing stale socket file is replaced).
  Status ListenUnix(const std::string& path);
  // Stops accepting; open connections finish their current request and then close.
  void Stop();
  // Requests whose handler has not responded yet.
  size_t InFlight() const;

 private:
  class Impl;
  std::shared_ptr<Impl> impl_;
};

struct ClientRequest {
  std::string method = "GET";
  std::string url;
  Headers headers;
  std::string body;
  int timeout_ms = 10'000;          // whole transfer
  int connect_timeout_ms = 3'000;
  std::string unix_socket_path;     // when set, connect here instead of the URL's host
  size_t max_response_bytes = 8 * 1024 * 1024;  // larger responses fail with ResourceExhausted
};

struct ClientResponse {
  int status = 0;
  Headers headers;
  std::string body;
};

using ClientCallback = std::function<void(Result<ClientResponse>)>;

// Thread-safety: Request is thread-safe. Callbacks run on an io thread.
class HttpClient {
 public:
  virtual ~HttpClient() = default;
  // Transport failures (DNS, connect, timeout, reset) are Unavailable / DeadlineExceeded; any
  // HTTP status, including 4xx/5xx, is a successful Result carrying that status.
  virtual void Request(ClientRequest request, ClientCallback callback) = 0;
};

// libcurl multi interface on the io_context (CURLMOPT_SOCKETFUNCTION / CURLMOPT_TIMERFUNCTION),
// with connection reuse.
std::shared_ptr<HttpClient> MakeCurlHttpClient(boost::asio::io_context& io);

// Runs one request to completion on a private io_context. For command-line tools only, never on a
// daemon io thread.
Result<ClientResponse> BlockingRequest(ClientRequest request);

}  // namespace parley::net
