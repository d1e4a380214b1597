// websocketpp 0.8.2 uses Boost.Asio's deprecated names (io_service, ...): this translation unit
// must not see the project-wide BOOST_ASIO_NO_DEPRECATED. Nothing from websocketpp or Asio's SSL
// crosses the header.
#undef BOOST_ASIO_NO_DEPRECATED

#include "adapters/slack/socket_mode.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/ssl/host_name_verification.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <cctype>
#include <chrono>
#include <exception>
#include <map>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>
#include <websocketpp/client.hpp>
#include <websocketpp/config/asio_client.hpp>
#include <websocketpp/config/asio_no_tls_client.hpp>

namespace parley::slack {
namespace {

using PlainClient = websocketpp::client<websocketpp::config::asio_client>;
using TlsClient = websocketpp::client<websocketpp::config::asio_tls_client>;
using Hdl = websocketpp::connection_hdl;
using Clock = std::chrono::steady_clock;
using SslContextPtr = std::shared_ptr<boost::asio::ssl::context>;

// Stop() runs its callback after this long even if a socket has not finished closing.
constexpr int kStopCapMs = 2'000;
// A close handshake the peer does not finish is cut after this long (below kStopCapMs, so Stop
// normally sees every socket gone before its cap).
constexpr int kCloseHandshakeTimeoutMs = 1'500;

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
      .count();
}

Clock::time_point FromNs(int64_t ns) { return Clock::time_point(std::chrono::nanoseconds(ns)); }

bool HasPrefixNoCase(const std::string& s, const char* prefix) {
  size_t n = std::char_traits<char>::length(prefix);
  if (s.size() < n) return false;
  for (size_t i = 0; i < n; ++i) {
    if (std::tolower(static_cast<unsigned char>(s[i])) != prefix[i]) return false;
  }
  return true;
}

// The TLS context shared by every wss:// connection: TLS 1.2+, the system trust store, peer
// verification. Host name verification is set on each connection's stream. Null when the trust
// store cannot be loaded (wss:// connections then fail and are retried).
SslContextPtr MakeTlsContext() {
  namespace ssl = boost::asio::ssl;
  auto ctx = std::make_shared<ssl::context>(ssl::context::tls_client);
  boost::system::error_code ec;
  ctx->set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 |
                       ssl::context::no_sslv3 | ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1,
                   ec);
  if (!ec) ctx->set_default_verify_paths(ec);
  if (!ec) ctx->set_verify_mode(ssl::verify_peer, ec);
  if (ec) {
    spdlog::error("slack.socket.tls_context_failed error=\"{}\"", ec.message());
    return nullptr;
  }
  return ctx;
}

}  // namespace

class SocketModeClient::Impl : public std::enable_shared_from_this<Impl> {
 public:
  Impl(boost::asio::io_context& io, SocketModeOptions options, OpenUrlFn open_url,
       EnvelopeHandler on_envelope, StoppedHandler on_stopped, MetricsRegistry& metrics)
      : io_(io),
        strand_(boost::asio::make_strand(io)),
        options_(std::move(options)),
        open_url_(std::move(open_url)),
        on_envelope_(std::move(on_envelope)),
        on_stopped_(std::move(on_stopped)),
        metrics_(metrics),
        malformed_(metrics.GetCounter("parley_slack_malformed_frames_total",
                                      "Socket Mode frames that did not parse")),
        ready_gauge_(metrics.GetGauge("parley_slack_sockets_ready",
                                      "Socket Mode sockets that said hello and are alive")),
        stop_timer_(io) {
    if (options_.connections < 1 || options_.connections > 10) {
      spdlog::warn("slack.socket.bad_option connections={} (using {})", options_.connections,
                   std::clamp(options_.connections, 1, 10));
      options_.connections = std::clamp(options_.connections, 1, 10);
    }
    options_.ping_interval_ms = std::max(options_.ping_interval_ms, 1);
    options_.pong_timeout_ms = std::max(options_.pong_timeout_ms, 1);
    options_.hello_timeout_ms = std::max(options_.hello_timeout_ms, 1);
    options_.silence_timeout_ms = std::max(options_.silence_timeout_ms, 1);
    options_.refresh_overlap_ms = std::max(options_.refresh_overlap_ms, 0);
    for (const char* e :
         {"connect", "hello", "drop", "dead_pong", "dead_silence", "dead_hello", "open_failed",
          "disconnect_warning", "disconnect_refresh_requested", "disconnect_link_disabled",
          "disconnect_too_many_websockets", "disconnect_other"}) {
      EventCounter(e);
    }
    for (const char* t : {"events_api", "slash_commands", "interactive", "unknown"}) {
      envelope_counters_[t] = &metrics_.GetCounter("parley_slack_envelopes_total",
                                                   "Socket Mode envelopes received, by type",
                                                   std::string("type=\"") + t + "\"");
    }
    InitClient(plain_);
    InitClient(tls_);
    SslContextPtr tls_context = MakeTlsContext();
    // Called inside get_connection(); a null context makes that call fail (then retried).
    tls_.set_tls_init_handler([tls_context](Hdl) { return tls_context; });
  }

  void Start() {
    auto self = shared_from_this();
    boost::asio::post(strand_, [self] { self->DoStart(); });
  }

  void Stop(std::function<void()> done) {
    auto self = shared_from_this();
    boost::asio::post(strand_,
                      [self, done = std::move(done)]() mutable { self->DoStop(std::move(done)); });
  }

  size_t ReadySockets() const { return ready_.load(std::memory_order_relaxed); }

 private:
  enum class SockState { kConnecting, kOpen, kReady };

  // One WebSocket. Fields marked "strand" are touched only on strand_; the atomics are written
  // by websocketpp's handlers (on the connection's own strand) and read on strand_.
  struct Sock {
    explicit Sock(boost::asio::io_context& io) : timer(io) {}
    int id = 0;
    int slot = 0;
    bool tls = false;
    Hdl hdl;
    // strand:
    SockState state = SockState::kConnecting;
    bool primary = true;   // the socket its slot counts on (false once replaced)
    bool closing = false;  // we are closing it on purpose: its loss is not a drop
    bool gone = false;     // closed or failed; erased from socks_
    bool counted_ready = false;
    Clock::time_point hello_deadline;
    Clock::time_point next_ping;
    bool ping_outstanding = false;
    Clock::time_point ping_sent;
    uint64_t pongs_at_ping = 0;
    std::optional<Clock::time_point> close_at;  // refresh: close by then at the latest
    boost::asio::steady_timer timer;            // the watchdog (strand)
    // any thread:
    std::atomic<int64_t> last_rx_ns{0};
    std::atomic<uint64_t> pongs{0};
  };
  using SockPtr = std::shared_ptr<Sock>;

  // One of the `connections` places a socket is kept open in.
  struct Slot {
    explicit Slot(boost::asio::io_context& io) : retry(io) {}
    int primary = 0;       // socket id; 0 = none
    bool pending = false;  // an open_url call or a retry timer is under way
    int attempts = 0;      // reconnects since the last hello
    uint64_t generation = 0;
    boost::asio::steady_timer retry;
  };

  template <typename Client>
  void InitClient(Client& c) {
    c.clear_access_channels(websocketpp::log::alevel::all);
    c.clear_error_channels(websocketpp::log::elevel::all);
    websocketpp::lib::error_code ec;
    c.init_asio(&io_, ec);
    if (ec) spdlog::error("slack.socket.init_failed error=\"{}\"", ec.message());
    c.set_user_agent("parley");
  }

  Counter& EventCounter(const std::string& event) {
    return metrics_.GetCounter("parley_slack_socket_events_total", "Socket Mode connection events",
                               "event=\"" + event + "\"");
  }
  void CountEvent(const std::string& event) { EventCounter(event).Add(); }
  // Any thread (the map is read-only after construction).
  Counter& EnvelopeCounter(const std::string& type) { return *envelope_counters_.at(type); }

  bool Halted() const { return halted_ || stop_requested_; }

  // ---------------------------------------------------------------- strand: lifecycle

  void DoStart() {
    if (started_ || Halted()) return;
    started_ = true;
    spdlog::info("slack.socket.start connections={}", options_.connections);
    for (int i = 0; i < options_.connections; ++i) slots_.push_back(std::make_unique<Slot>(io_));
    for (int i = 0; i < options_.connections; ++i) OpenSlot(i);
  }

  void DoStop(std::function<void()> done) {
    if (done) stop_waiters_.push_back(std::move(done));
    if (stop_finished_) {
      FinishStop();
      return;
    }
    if (!stop_requested_) {
      stop_requested_ = true;
      spdlog::info("slack.socket.stop sockets={}", socks_.size());
      for (auto& slot : slots_) slot->retry.cancel();
      for (auto& [id, s] : socks_) CloseSock(s, websocketpp::close::status::going_away, "stop");
      stop_timer_.expires_after(std::chrono::milliseconds(kStopCapMs));
      auto self = shared_from_this();
      stop_timer_.async_wait(
          boost::asio::bind_executor(strand_, [self](const boost::system::error_code& ec) {
            if (ec) return;
            if (!self->socks_.empty()) {
              spdlog::warn("slack.socket.stop_cap sockets_left={}", self->socks_.size());
            }
            self->FinishStop();
          }));
    }
    if (socks_.empty()) FinishStop();
  }

  void FinishStop() {
    if (!stop_finished_) {
      stop_finished_ = true;
      stop_timer_.cancel();
      spdlog::info("slack.socket.stopped");
    }
    std::vector<std::function<void()>> waiters;
    waiters.swap(stop_waiters_);
    for (auto& w : waiters) {
      try {
        w();
      } catch (const std::exception& e) {
        spdlog::error("slack.socket.stop_callback_exception error=\"{}\"", e.what());
      } catch (...) {
        spdlog::error("slack.socket.stop_callback_exception");
      }
    }
  }

  // A fatal condition (link_disabled, unusable token): close everything, never reconnect.
  void Fatal(Status why) {
    if (Halted()) return;
    halted_ = true;
    spdlog::error("slack.socket.fatal status={} sockets={}", Status::CodeName(why.code()),
                  socks_.size());
    for (auto& slot : slots_) slot->retry.cancel();
    for (auto& [id, s] : socks_) CloseSock(s, websocketpp::close::status::normal, "fatal");
    if (on_stopped_) {
      try {
        on_stopped_(std::move(why));
      } catch (const std::exception& e) {
        spdlog::error("slack.socket.stopped_handler_exception error=\"{}\"", e.what());
      } catch (...) {
        spdlog::error("slack.socket.stopped_handler_exception");
      }
    }
  }

  // ---------------------------------------------------------------- strand: slots

  // Asks for a fresh URL for slot i and connects it.
  void OpenSlot(int i) {
    Slot& slot = *slots_[i];
    if (Halted() || slot.pending || slot.primary != 0) return;
    slot.pending = true;
    uint64_t gen = ++slot.generation;
    auto self = shared_from_this();
    UrlCallback done = [self, i, gen](Result<std::string> url, int64_t retry_after_ms) {
      boost::asio::post(self->strand_, [self, i, gen, url = std::move(url), retry_after_ms]() {
        self->OnUrl(i, gen, url, retry_after_ms);
      });
    };
    try {
      open_url_(std::move(done));
    } catch (const std::exception& e) {
      spdlog::error("slack.socket.open_url_exception slot={} error=\"{}\"", i, e.what());
      slot.pending = false;
      RetrySlot(i, 0);
    } catch (...) {
      spdlog::error("slack.socket.open_url_exception slot={}", i);
      slot.pending = false;
      RetrySlot(i, 0);
    }
  }

  void OnUrl(int i, uint64_t gen, const Result<std::string>& url, int64_t retry_after_ms) {
    Slot& slot = *slots_[i];
    if (gen != slot.generation || !slot.pending) return;  // a stale or duplicate callback
    slot.pending = false;
    if (Halted()) return;
    if (!url.ok()) {
      const Status& st = url.status();
      if (st.code() == Status::Code::kPermissionDenied ||
          st.code() == Status::Code::kFailedPrecondition) {
        spdlog::error("slack.socket.open_url_fatal slot={} error=\"{}\"", i, st.ToString());
        Fatal(st);
        return;
      }
      CountEvent("open_failed");
      spdlog::warn("slack.socket.open_failed slot={} error=\"{}\"", i, st.ToString());
      RetrySlot(i, retry_after_ms);
      return;
    }
    Connect(i, url.value());
  }

  // Schedules the next attempt of slot i with jittered exponential backoff.
  void RetrySlot(int i, int64_t min_delay_ms) {
    Slot& slot = *slots_[i];
    if (Halted() || slot.pending || slot.primary != 0) return;
    int64_t delay = std::max(net::BackoffDelayMs(options_.backoff, slot.attempts), min_delay_ms);
    ++slot.attempts;
    slot.pending = true;
    spdlog::info("slack.socket.retry slot={} attempt={} in_ms={}", i, slot.attempts, delay);
    slot.retry.expires_after(std::chrono::milliseconds(delay));
    auto self = shared_from_this();
    slot.retry.async_wait(
        boost::asio::bind_executor(strand_, [self, i](const boost::system::error_code& ec) {
          Slot& s = *self->slots_[i];
          if (ec) {
            if (ec == boost::asio::error::operation_aborted && self->Halted()) s.pending = false;
            return;
          }
          s.pending = false;
          self->OpenSlot(i);
        }));
  }

  // ---------------------------------------------------------------- strand: sockets

  void Connect(int i, const std::string& url) {
    bool tls = HasPrefixNoCase(url, "wss://");
    if (!tls && !HasPrefixNoCase(url, "ws://")) {
      CountEvent("open_failed");
      spdlog::warn("slack.socket.open_failed slot={} error=\"unsupported URL scheme\"", i);
      RetrySlot(i, 0);
      return;
    }
    auto sock = std::make_shared<Sock>(io_);
    sock->id = ++next_sock_id_;
    sock->slot = i;
    sock->tls = tls;
    websocketpp::lib::error_code ec;
    if (tls) {
      ec = StartConnection(tls_, sock, url);
    } else {
      ec = StartConnection(plain_, sock, url);
    }
    if (ec) {
      CountEvent("open_failed");
      spdlog::warn("slack.socket.open_failed slot={} id={} error=\"{}\"", i, sock->id,
                   ec.message());
      RetrySlot(i, 0);
      return;
    }
    slots_[i]->primary = sock->id;
    socks_[sock->id] = sock;
    sock->hello_deadline = Clock::now() + std::chrono::milliseconds(options_.hello_timeout_ms);
    spdlog::info("slack.socket.connecting id={} slot={} tls={}", sock->id, i, tls);
    Watchdog(sock);
  }

  // Creates the connection with its handlers and starts connecting. Handlers keep this Impl
  // (and so the endpoints the connection borrows) alive until the connection is destroyed.
  template <typename Client>
  websocketpp::lib::error_code StartConnection(Client& client, const SockPtr& sock,
                                               const std::string& url) {
    websocketpp::lib::error_code ec;
    typename Client::connection_ptr con = client.get_connection(url, ec);
    if (ec || !con) {
      return ec ? ec : websocketpp::error::make_error_code(websocketpp::error::general);
    }
    sock->hdl = con->get_handle();
    auto self = shared_from_this();
    Client* c = &client;
    if constexpr (std::is_same_v<Client, TlsClient>) {
      // websocketpp sets SNI itself (from the URI); the certificate must name the host.
      namespace ssl = boost::asio::ssl;
      boost::system::error_code bec;
      con->get_socket().set_verify_mode(ssl::verify_peer, bec);
      if (!bec) {
        con->get_socket().set_verify_callback(ssl::host_name_verification(con->get_host()), bec);
      }
      if (bec) return std::make_error_code(std::errc::invalid_argument);
    }
    // A backstop only: the watchdog's hello deadline (which covers the handshake) comes first.
    con->set_open_handshake_timeout(options_.hello_timeout_ms + 1'000);
    con->set_close_handshake_timeout(kCloseHandshakeTimeoutMs);
    con->set_open_handler([self, sock](Hdl) {
      sock->last_rx_ns.store(NowNs(), std::memory_order_relaxed);
      boost::asio::post(self->strand_, [self, sock] { self->OnOpen(sock); });
    });
    con->set_fail_handler([self, sock, c](Hdl h) {
      std::string why;
      int http_status = 0;
      websocketpp::lib::error_code gec;
      if (auto fc = c->get_con_from_hdl(h, gec)) {
        why = fc->get_ec().message();
        http_status = static_cast<int>(fc->get_response_code());
      }
      boost::asio::post(self->strand_, [self, sock, why, http_status] {
        self->OnGone(sock, false, why, http_status);
      });
    });
    con->set_close_handler([self, sock, c](Hdl h) {
      int code = 0;
      websocketpp::lib::error_code gec;
      if (auto cc = c->get_con_from_hdl(h, gec)) code = cc->get_remote_close_code();
      boost::asio::post(self->strand_,
                        [self, sock, code] { self->OnGone(sock, true, "closed", code); });
    });
    con->set_ping_handler([sock](Hdl, std::string) {
      sock->last_rx_ns.store(NowNs(), std::memory_order_relaxed);
      return true;  // websocketpp answers with a pong
    });
    con->set_pong_handler([sock](Hdl, std::string) {
      sock->last_rx_ns.store(NowNs(), std::memory_order_relaxed);
      sock->pongs.fetch_add(1, std::memory_order_relaxed);
    });
    // Acks are small writes: do not let Nagle hold them back.
    con->set_tcp_pre_init_handler([c](Hdl h) {
      websocketpp::lib::error_code gec;
      if (auto tc = c->get_con_from_hdl(h, gec)) {
        boost::system::error_code bec;
        tc->get_raw_socket().set_option(boost::asio::ip::tcp::no_delay(true), bec);
      }
    });
    // Used by Stop()/dead checks to cut a socket that is still connecting (close() needs an
    // open connection). Runs on the connection's strand, where its socket is used.
    con->set_interrupt_handler([c](Hdl h) {
      websocketpp::lib::error_code gec;
      if (auto ic = c->get_con_from_hdl(h, gec)) {
        boost::system::error_code bec;
        ic->get_raw_socket().cancel(bec);
        ic->get_raw_socket().close(bec);
      }
    });
    con->set_message_handler([self, sock](Hdl, typename Client::message_ptr msg) {
      self->OnMessage(sock, msg->get_opcode(), msg->get_payload());
    });
    client.connect(con);
    return ec;
  }

  void OnOpen(const SockPtr& sock) {
    if (sock->gone) return;
    CountEvent("connect");
    sock->state = SockState::kOpen;
    auto now = Clock::now();
    sock->next_ping = now + std::chrono::milliseconds(options_.ping_interval_ms);
    spdlog::info("slack.socket.connect id={} slot={}", sock->id, sock->slot);
    if (sock->closing) {
      CloseSock(sock, websocketpp::close::status::going_away, "not needed");
      return;
    }
    Watchdog(sock);
  }

  void OnGone(const SockPtr& sock, bool was_open, const std::string& why, int code) {
    if (sock->gone) return;
    sock->gone = true;
    sock->timer.cancel();
    Unready(sock);
    socks_.erase(sock->id);
    if (!sock->closing && !sock->primary) {
      // Replaced after warning / refresh_requested: the server closing it is expected.
      spdlog::info("slack.socket.closed id={} slot={} replaced=true", sock->id, sock->slot);
    } else if (!sock->closing) {
      if (was_open) {
        CountEvent("drop");
        spdlog::warn("slack.socket.drop id={} slot={} close_code={}", sock->id, sock->slot, code);
      } else {
        CountEvent("open_failed");
        spdlog::warn("slack.socket.open_failed slot={} id={} error=\"{}\" http_status={}",
                     sock->slot, sock->id, why, code);
      }
    } else {
      spdlog::info("slack.socket.closed id={} slot={}", sock->id, sock->slot);
    }
    Slot& slot = *slots_[sock->slot];
    if (slot.primary == sock->id) {
      slot.primary = 0;
      RetrySlot(sock->slot, 0);
    }
    if (stop_requested_ && socks_.empty()) FinishStop();
  }

  void OnHello(const SockPtr& sock, int64_t num_connections) {
    if (sock->gone || sock->closing) return;
    CountEvent("hello");
    spdlog::info("slack.socket.hello id={} slot={} num_connections={}", sock->id, sock->slot,
                 num_connections);
    sock->state = SockState::kReady;
    if (!sock->counted_ready) {
      sock->counted_ready = true;
      ready_.fetch_add(1, std::memory_order_relaxed);
      ready_gauge_.Add(1);
    }
    if (!sock->primary) return;
    Slot& slot = *slots_[sock->slot];
    slot.attempts = 0;
    // The replacement is ready: the sockets it replaces close soon at the latest.
    auto close_at = Clock::now() + std::chrono::milliseconds(options_.refresh_overlap_ms);
    for (auto& [id, other] : socks_) {
      if (other->slot != sock->slot || other->primary || other->closing) continue;
      if (!other->close_at || *other->close_at > close_at) other->close_at = close_at;
      Watchdog(other);
    }
    Watchdog(sock);
  }

  void OnDisconnect(const SockPtr& sock, DisconnectReason reason) {
    if (sock->gone) return;
    CountEvent(std::string("disconnect_") + DisconnectReasonName(reason));
    spdlog::info("slack.socket.disconnect id={} slot={} reason={}", sock->id, sock->slot,
                 DisconnectReasonName(reason));
    switch (reason) {
      case DisconnectReason::kLinkDisabled:
        Fatal(Status::FailedPrecondition("slack socket mode: link_disabled"));
        return;
      case DisconnectReason::kTooManyWebsockets:
        // Closed now; its slot reconnects after backoff (no hello, so attempts keep growing).
        CloseSock(sock, websocketpp::close::status::normal, "too_many_websockets");
        return;
      case DisconnectReason::kWarning:
      case DisconnectReason::kRefreshRequested:
      case DisconnectReason::kOther:
        // Open the replacement first; this socket keeps delivering until the server closes
        // it or the replacement has said hello (plus refresh_overlap_ms).
        if (!sock->primary || sock->closing || Halted()) return;
        Slot& slot = *slots_[sock->slot];
        sock->primary = false;
        if (slot.primary == sock->id) slot.primary = 0;
        OpenSlot(sock->slot);
        return;
    }
  }

  void Unready(const SockPtr& sock) {
    if (!sock->counted_ready) return;
    sock->counted_ready = false;
    ready_.fetch_sub(1, std::memory_order_relaxed);
    ready_gauge_.Add(-1);
  }

  // Closes a socket on purpose. A primary socket's slot starts reconnecting (with backoff)
  // without waiting for the close to finish.
  void CloseSock(const SockPtr& sock, websocketpp::close::status::value code,
                 const std::string& reason) {
    if (sock->gone) return;
    sock->closing = true;
    sock->close_at.reset();
    Unready(sock);
    Slot& slot = *slots_[sock->slot];
    if (sock->primary) {
      sock->primary = false;
      if (slot.primary == sock->id) {
        slot.primary = 0;
        RetrySlot(sock->slot, 0);
      }
    }
    if (sock->state == SockState::kConnecting) {
      // Not open yet: cut the TCP/TLS connection (the fail handler follows).
      WithCon(sock, [](auto& con) { con->interrupt(); });
    } else {
      WithCon(sock, [code, &reason](auto& con) {
        websocketpp::lib::error_code ec;
        con->close(code, reason, ec);
        if (ec) con->interrupt();  // e.g. already closing: make sure it ends
      });
    }
    // Safety net: if neither close nor fail handler has run by the time the close handshake
    // timeout passed, the watchdog stops caring (OnGone still cleans up when it comes).
    sock->timer.cancel();
  }

  void Kill(const SockPtr& sock, const char* event) {
    if (sock->gone || sock->closing) return;
    CountEvent(event);
    spdlog::warn("slack.socket.dead id={} slot={} why={}", sock->id, sock->slot, event);
    CloseSock(sock, websocketpp::close::status::going_away, event);
  }

  template <typename F>
  void WithCon(const SockPtr& sock, F f) {
    websocketpp::lib::error_code ec;
    if (sock->tls) {
      TlsClient::connection_ptr con = tls_.get_con_from_hdl(sock->hdl, ec);
      if (con) f(con);
    } else {
      PlainClient::connection_ptr con = plain_.get_con_from_hdl(sock->hdl, ec);
      if (con) f(con);
    }
  }

  // Checks the socket's deadlines (hello, pong, silence, refresh close), sends the client ping
  // when due, and re-arms itself for the next deadline.
  void Watchdog(const SockPtr& sock) {
    if (sock->gone || sock->closing) return;
    auto now = Clock::now();
    std::optional<Clock::time_point> next;
    auto consider = [&next](Clock::time_point t) {
      if (!next || t < *next) next = t;
    };
    if (sock->state != SockState::kReady) {
      if (now >= sock->hello_deadline) return Kill(sock, "dead_hello");
      consider(sock->hello_deadline);
    }
    if (sock->state != SockState::kConnecting) {
      auto silence_deadline = FromNs(sock->last_rx_ns.load(std::memory_order_relaxed)) +
                              std::chrono::milliseconds(options_.silence_timeout_ms);
      if (now >= silence_deadline) return Kill(sock, "dead_silence");
      consider(silence_deadline);
      // The ping is answered by its pong or by any frame received after it: under a burst the
      // pong queues behind envelopes, and a socket that is delivering is alive.
      if (sock->ping_outstanding &&
          (sock->pongs.load(std::memory_order_relaxed) != sock->pongs_at_ping ||
           FromNs(sock->last_rx_ns.load(std::memory_order_relaxed)) > sock->ping_sent)) {
        sock->ping_outstanding = false;
      }
      if (sock->ping_outstanding) {
        auto pong_deadline = sock->ping_sent + std::chrono::milliseconds(options_.pong_timeout_ms);
        if (now >= pong_deadline) return Kill(sock, "dead_pong");
        consider(pong_deadline);
      }
      if (now >= sock->next_ping) {
        if (!sock->ping_outstanding) {
          sock->pongs_at_ping = sock->pongs.load(std::memory_order_relaxed);
          sock->ping_outstanding = true;
          sock->ping_sent = now;
          WithCon(sock, [](auto& con) {
            websocketpp::lib::error_code ec;
            con->ping("parley", ec);
          });
          consider(now + std::chrono::milliseconds(options_.pong_timeout_ms));
        }
        sock->next_ping = now + std::chrono::milliseconds(options_.ping_interval_ms);
      }
      consider(sock->next_ping);
    }
    if (sock->close_at) {
      if (now >= *sock->close_at) {
        spdlog::info("slack.socket.refresh_close id={} slot={}", sock->id, sock->slot);
        CloseSock(sock, websocketpp::close::status::normal, "refreshed");
        return;
      }
      consider(*sock->close_at);
    }
    if (!next) return;
    sock->timer.expires_at(*next);
    auto self = shared_from_this();
    std::weak_ptr<Sock> weak = sock;
    sock->timer.async_wait(
        boost::asio::bind_executor(strand_, [self, weak](const boost::system::error_code& ec) {
          if (ec) return;
          if (auto s = weak.lock()) self->Watchdog(s);
        }));
  }

  // ---------------------------------------------------------------- connection strands

  // Runs on the connection's strand (several sockets' messages may be handled at once).
  void OnMessage(const SockPtr& sock, websocketpp::frame::opcode::value opcode,
                 const std::string& text) noexcept {
    try {
      sock->last_rx_ns.store(NowNs(), std::memory_order_relaxed);
      if (opcode != websocketpp::frame::opcode::text) {
        malformed_.Add();
        spdlog::warn("slack.socket.malformed_frame id={} kind=binary bytes={}", sock->id,
                     text.size());
        return;
      }
      Result<Envelope> parsed = ParseEnvelope(text);
      if (!parsed.ok()) {
        malformed_.Add();
        spdlog::warn("slack.socket.malformed_frame id={} kind=text bytes={}", sock->id,
                     text.size());
        return;
      }
      Envelope env = std::move(parsed).value();
      auto self = shared_from_this();
      switch (env.kind) {
        case FrameKind::kHello: {
          int64_t n = env.num_connections;
          boost::asio::post(strand_, [self, sock, n] { self->OnHello(sock, n); });
          return;
        }
        case FrameKind::kDisconnect: {
          DisconnectReason r = env.disconnect_reason;
          boost::asio::post(strand_, [self, sock, r] { self->OnDisconnect(sock, r); });
          return;
        }
        case FrameKind::kUnknown: {
          if (env.envelope_id.empty()) {
            spdlog::debug("slack.socket.unknown_frame id={} bytes={}", sock->id, text.size());
            return;
          }
          // Acknowledged so that Slack does not redeliver it, then ignored.
          EnvelopeCounter("unknown").Add();
          bool sent = SendText(sock->tls, sock->hdl, AckFrame(env.envelope_id));
          spdlog::info("slack.socket.unknown_envelope id={} acked={}", sock->id, sent);
          return;
        }
        case FrameKind::kEventsApi:
        case FrameKind::kSlashCommands:
        case FrameKind::kInteractive:
          break;
      }
      EnvelopeCounter(FrameKindName(env.kind)).Add();
      if (!on_envelope_) return;
      std::weak_ptr<Impl> weak_self = self;
      bool tls = sock->tls;
      Hdl hdl = sock->hdl;
      std::string envelope_id = env.envelope_id;
      AckFn ack = [weak_self, tls, hdl, envelope_id](const nlohmann::json* payload) {
        auto impl = weak_self.lock();
        if (!impl) return false;
        return impl->SendText(tls, hdl, AckFrame(envelope_id, payload));
      };
      on_envelope_(std::move(env), std::move(ack));
    } catch (const std::exception& e) {
      spdlog::error("slack.socket.message_exception id={} error=\"{}\"", sock->id, e.what());
    } catch (...) {
      spdlog::error("slack.socket.message_exception id={}", sock->id);
    }
  }

  // Any thread. False when the connection is gone or not open.
  bool SendText(bool tls, const Hdl& hdl, const std::string& text) {
    websocketpp::lib::error_code ec;
    if (tls) {
      TlsClient::connection_ptr con = tls_.get_con_from_hdl(hdl, ec);
      if (!con) return false;
      ec = con->send(text, websocketpp::frame::opcode::text);
    } else {
      PlainClient::connection_ptr con = plain_.get_con_from_hdl(hdl, ec);
      if (!con) return false;
      ec = con->send(text, websocketpp::frame::opcode::text);
    }
    return !ec;
  }

  boost::asio::io_context& io_;
  boost::asio::strand<boost::asio::io_context::executor_type> strand_;
  SocketModeOptions options_;
  OpenUrlFn open_url_;
  EnvelopeHandler on_envelope_;
  StoppedHandler on_stopped_;
  MetricsRegistry& metrics_;
  Counter& malformed_;
  Gauge& ready_gauge_;
  std::map<std::string, Counter*> envelope_counters_;  // filled in the constructor, then read-only
  std::atomic<size_t> ready_{0};

  // Endpoints: thread-safe for get_connection/get_con_from_hdl/connect (asio configs with
  // multithreading); they outlive every connection (connections' handlers own this Impl).
  PlainClient plain_;
  TlsClient tls_;

  // strand:
  bool started_ = false;
  bool halted_ = false;          // fatal: no reconnects
  bool stop_requested_ = false;  // Stop() called: no reconnects
  bool stop_finished_ = false;   // Stop's callbacks have run (all closed or cap reached)
  std::vector<std::function<void()>> stop_waiters_;
  boost::asio::steady_timer stop_timer_;
  std::vector<std::unique_ptr<Slot>> slots_;
  std::map<int, SockPtr> socks_;
  int next_sock_id_ = 0;
};

SocketModeClient::SocketModeClient(boost::asio::io_context& io, SocketModeOptions options,
                                   OpenUrlFn open_url, EnvelopeHandler on_envelope,
                                   StoppedHandler on_stopped, MetricsRegistry& metrics)
    : impl_(std::make_shared<Impl>(io, std::move(options), std::move(open_url),
                                   std::move(on_envelope), std::move(on_stopped), metrics)) {}

SocketModeClient::~SocketModeClient() {
  if (impl_) impl_->Stop(nullptr);
}

void SocketModeClient::Start() { impl_->Start(); }

void SocketModeClient::Stop(std::function<void()> done) { impl_->Stop(std::move(done)); }

size_t SocketModeClient::ReadySockets() const { return impl_->ReadySockets(); }

}  // namespace parley::slack
