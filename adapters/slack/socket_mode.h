#pragma once
// Socket Mode: a pool of WebSocket connections to Slack on the daemon's io_context (websocketpp:
// asio_tls_client with certificate and host name verification for wss://, asio_client for ws://
// test servers). Frames are parsed with the codec; hello, disconnect and keep-alive are handled
// here, envelopes go to the handler with a function that acknowledges them on the socket they
// arrived on.
//
// Behaviour:
// - Start() opens `connections` sockets. Each socket gets a fresh single-use URL from open_url
//   (apps.connections.open) before every connect; it is ready only after `hello`.
// - disconnect warning / refresh_requested: a replacement socket is opened first; the old one is
//   closed once the replacement has said hello (or when the server closes it), so no envelope
//   falls in a gap. too_many_websockets: that socket closes and is not replaced until backoff.
//   link_disabled: every socket closes, nothing reconnects, on_stopped gets FailedPrecondition.
// - Keep-alive: server pings are answered; the client pings every ping_interval_ms and a socket
//   with no pong (nor any other frame) within pong_timeout_ms, no hello within hello_timeout_ms, or no frame at all
//   within silence_timeout_ms is dead: it is closed and replaced.
// - Lost sockets (dropped, refused, dead) are replaced with jittered exponential backoff; the
//   attempt count resets once a socket has said hello.
// - open_url failing with PermissionDenied (invalid_auth, not_authed, token_revoked, ...) or
//   FailedPrecondition is fatal: every socket closes and on_stopped gets that status; other
//   failures are retried with backoff (at least retry_after_ms when the callback gives one).
// - A frame that does not parse is logged (kind and size only, never its text) and counted; the
//   socket stays open.
// Thread-safety: thread-safe. Handlers run on io threads; several may run at once (different
// sockets). Lifetime: call Stop() and wait for its callback before destroying the io_context;
// the destructor stops too (without waiting).

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include <boost/asio/io_context.hpp>
#include <nlohmann/json.hpp>

#include "adapters/slack/codec.h"
#include "core/metrics.h"
#include "core/status.h"
#include "net/backoff.h"

namespace parley::slack {

struct SocketModeOptions {
  int connections = 2;  // 1..10
  int ping_interval_ms = 10'000;
  int pong_timeout_ms = 5'000;
  int hello_timeout_ms = 10'000;
  int silence_timeout_ms = 120'000;
  net::BackoffPolicy backoff{1'000, 60'000};
  // A socket told `warning` or `refresh_requested` is closed this long after its replacement
  // said hello at the latest (the server normally closes it first).
  int refresh_overlap_ms = 2'000;
};

// The outcome of one apps.connections.open call: the WebSocket URL, or why not.
// retry_after_ms > 0 when the API said how long to wait (HTTP 429).
using UrlCallback = std::function<void(Result<std::string> url, int64_t retry_after_ms)>;
using OpenUrlFn = std::function<void(UrlCallback done)>;

// Acknowledges one envelope ({"envelope_id":…[,"payload":…]}) on the socket it arrived on. Call
// at most once, from any thread; payload may be null. False when that socket is gone (the
// envelope will be redelivered, if it is an events_api one).
using AckFn = std::function<bool(const nlohmann::json* payload)>;
using EnvelopeHandler = std::function<void(Envelope envelope, AckFn ack)>;
using StoppedHandler = std::function<void(Status why)>;

class SocketModeClient {
 public:
  // Metrics (registered on construction):
  //   parley_slack_socket_events_total{event="connect|hello|disconnect_<reason>|drop|
  //     dead_pong|dead_silence|dead_hello|open_failed"}
  //   parley_slack_malformed_frames_total, parley_slack_envelopes_total{type=...},
  //   parley_slack_sockets_ready (gauge).
  SocketModeClient(boost::asio::io_context& io, SocketModeOptions options, OpenUrlFn open_url,
                   EnvelopeHandler on_envelope, StoppedHandler on_stopped,
                   MetricsRegistry& metrics);
  ~SocketModeClient();
  SocketModeClient(const SocketModeClient&) = delete;
  SocketModeClient& operator=(const SocketModeClient&) = delete;

  void Start();
  // Closes every socket (close frame, going away) and stops reconnecting; done runs once all are
  // closed (or after 2 s at most). Idempotent.
  void Stop(std::function<void()> done);

  // Sockets that have said hello and are not known dead.
  size_t ReadySockets() const;

 private:
  class Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace parley::slack
