#pragma once
// HTTP server (Boost.Beast) and asynchronous HTTP client (libcurl multi driven by Boost.Asio), both
// on the daemon's one io_context. No thread per request or connection.

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
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

namespace internal {
class StreamAccess;  // the server's side of a ResponseStream; defined in http_server.cc
}  // namespace internal

// A response body sent piece by piece as it is produced (Transfer-Encoding: chunked; to an
// HTTP/1.0 client the raw bytes, with the connection closed at the end), e.g. server-sent events.
// Create one, put it in HttpResponse::stream and pass that response to the Responder; Write may
// be called before or after that (data waits until the response head is on the wire).
// Thread-safety: thread-safe; no call blocks. Lifetime: the writer and the connection each hold a
// shared_ptr; either may let go first.
class ResponseStream {
 public:
  static constexpr size_t kDefaultMaxQueuedBytes = 1024 * 1024;

  // max_queued_bytes bounds the data written but not yet handed to the socket. A Write that
  // would exceed it means the client is not reading: the stream is dropped (OnClose gets
  // ResourceExhausted) and the connection closed, so the client sees an unterminated body.
  static std::shared_ptr<ResponseStream> Create(size_t max_queued_bytes = kDefaultMaxQueuedBytes);

  // Queues data, written in order after what was queued before, each non-empty Write as one
  // chunk. Returns false (and drops data) once the stream is closed(). Empty data is ignored.
  bool Write(std::string data);
  // Ends the body after the queued data (the terminating chunk). Idempotent. If the response
  // never reaches a connection, ending it is still fine.
  void End();
  // True once Write no longer accepts data: after End(), or when the stream was dropped (client
  // gone, queue overflow, server error, the request's connection closed before the head went
  // out).
  bool closed() const;
  // Runs `callback` once when the stream is over: OK when the whole body including the
  // terminating chunk was written; Unavailable when the client went away or the connection was
  // closed first; ResourceExhausted on queue overflow; DeadlineExceeded when one write stalled
  // longer than the server's request_timeout_ms. Runs on an io thread, or at once on the calling
  // thread if the stream is already over. Several callbacks may be registered.
  void OnClose(std::function<void(Status)> callback);

  struct State;
  explicit ResponseStream(std::shared_ptr<State> state) : state_(std::move(state)) {}

 private:
  friend class internal::StreamAccess;
  std::shared_ptr<State> state_;
};

struct HttpResponse {
  int status = 200;
  std::string content_type = "application/json";
  Headers headers;  // extra headers (e.g. Retry-After, Cache-Control)
  std::string body;
  // When set, `body` is ignored and the response body is this stream: the head (status,
  // content_type, headers) goes out at once and the body follows as the stream is written. The
  // connection has no read timeout while the body streams; each write must complete within
  // request_timeout_ms. A HEAD request gets the head only and the stream is closed with OK.
  std::shared_ptr<ResponseStream> stream;
};

// Completes one request; call exactly once, from any thread. Copies share one state: the first
// call wins and later calls are ignored; if every copy is destroyed uncalled, the client gets a
// 500 JSON error. Headers that would break framing (Content-Length, Transfer-Encoding,
// Connection, Content-Type, Server, or anything containing CR/LF) are dropped from `headers`.
using Responder = std::function<void(HttpResponse)>;
// Handles one request. Runs on an io thread; must not block.
using HttpHandler = std::function<void(HttpRequest, Responder)>;

struct HttpServerOptions {
  size_t max_body_bytes = 64 * 1024;  // larger bodies get 413 with a JSON error, handler not called
  int request_timeout_ms = 10'000;    // reading a request; idle keep-alive connections close after
  size_t max_connections = 4096;      // further connections are accepted and closed at once
};

// HTTP/1.1 with keep-alive, one request at a time per connection. Bad requests get JSON errors
// and the connection closes: 400 malformed, 413 body over max_body_bytes, 431 header block over
// 16 KiB, 503 for a request that finished arriving after Stop(). The handler is not called for
// them. Every response carries Content-Type and "Server: parley", and Content-Length unless it
// is streamed (HttpResponse::stream; then Transfer-Encoding: chunked). While a response streams,
// the connection watches for the client going away (the stream is then dropped at once).
// Thread-safety: Listen*/Stop from one thread; handlers run on io threads (on the connection's
// strand). Lifetime: destroy the server before its io_context; connections still open keep the
// shared state (and the handler) alive until they close.
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
  // Stops accepting; open connections finish their current request and then close. Idle
  // connections close at once. Streamed responses are not cut: each continues until its writer
  // ends it (the connection then closes) or the client goes away, so whoever writes streams must
  // End() them at shutdown. Removes the Unix socket files this server created. Idempotent; the
  // destructor calls it.
  void Stop();
  // Requests handed to the handler whose response has not been written yet (counted down when
  // the write completes or fails; a streamed response counts until its stream is over). Drain
  // with Stop() + poll InFlight() == 0.
  size_t InFlight() const;
  // Connections accepted since construction, including ones closed at once over max_connections.
  uint64_t AcceptedConnections() const;
  // Connections open now.
  size_t OpenConnections() const;

 private:
  class Impl;
  std::shared_ptr<Impl> impl_;
};

// No redirects are followed, TLS peers are verified, "Expect: 100-continue" is never sent, and a
// body is sent without Content-Type unless `headers` has one.
struct ClientRequest {
  std::string method = "GET";
  std::string url;
  Headers headers;
  std::string body;
  // When set, sent as the body instead of `body`, without a copy (a caller that retries keeps one
  // serialised body for every attempt).
  std::shared_ptr<const std::string> shared_body;
  int timeout_ms = 10'000;          // whole transfer; 0 = none
  int connect_timeout_ms = 3'000;
  std::string unix_socket_path;     // when set, connect here instead of the URL's host
  size_t max_response_bytes = 8 * 1024 * 1024;  // larger responses fail with ResourceExhausted

  // Streaming (all optional). Every callback runs on an io thread, never concurrently with
  // another callback of the same transfer, and before the ClientCallback; an exception thrown
  // from one aborts the transfer like a false return.
  // Called once when the final (non-1xx) response's headers are complete, before any body byte.
  // Return false to abort the transfer.
  std::function<bool(int status, const Headers& headers)> on_headers;
  // When set, body bytes are passed here as they arrive instead of being accumulated in
  // ClientResponse::body (which stays empty); max_response_bytes still bounds the total. Return
  // false to abort the transfer.
  std::function<bool(std::string_view bytes)> on_body;
  // Aborts with DeadlineExceeded when no body byte arrives for this long, measured from the end
  // of the final response's headers (0 = off). Independent of timeout_ms.
  int idle_timeout_ms = 0;
  // Set to true (from any thread) to abort: checked whenever curl calls back for the transfer
  // (body data and its progress callback, which curl calls at least about once a second).
  std::shared_ptr<std::atomic<bool>> cancel;
  // A transfer aborted by `cancel` or a false return completes with Unavailable("cancelled");
  // the ClientCallback still runs exactly once.
};

struct ClientResponse {
  int status = 0;
  Headers headers;  // of the final response only (not of 1xx interim responses)
  std::string body;
};

using ClientCallback = std::function<void(Result<ClientResponse>)>;

// Thread-safety: Request is thread-safe. Callbacks run on an io thread.
class HttpClient {
 public:
  virtual ~HttpClient() = default;
  // Transport failures (DNS, connect, timeout, reset) are Unavailable / DeadlineExceeded; any
  // HTTP status, including 4xx/5xx, is a successful Result carrying that status. Also:
  // InvalidArgument for a malformed request (bad URL, CR/LF in a header), ResourceExhausted when
  // the response exceeds max_response_bytes. The callback runs once, on an io thread, never
  // inside Request() itself (it is lost only if the io_context stops for good first).
  virtual void Request(ClientRequest request, ClientCallback callback) = 0;
  // Fails every unfinished request with Unavailable("client shut down") and closes every
  // connection; later requests fail the same way. Asynchronous: `done` (may be empty) runs on an
  // io thread once that has happened. Call it before the io_context stops for good, so that no
  // request (and nothing its callback holds) is left behind.
  virtual void Shutdown(std::function<void()> done) {
    if (done) done();
  }
};

// libcurl multi interface on the io_context (CURLMOPT_SOCKETFUNCTION / CURLMOPT_TIMERFUNCTION),
// with connection reuse.
// Lifetime: may be destroyed with requests in flight, from any thread (including inside one of
// its callbacks). Their callbacks then get Unavailable("client shut down") on an io thread (as
// after Shutdown); if the io_context stops running before that happens, they are destroyed
// without being called.
// Destroy the client before its io_context.
std::shared_ptr<HttpClient> MakeCurlHttpClient(boost::asio::io_context& io);

// Runs one request to completion on a private io_context. For command-line tools only, never on a
// daemon io thread.
Result<ClientResponse> BlockingRequest(ClientRequest request);

}  // namespace parley::net
