// Socket Mode client against the fake Slack server (plain ws://), io_context on two threads.

// websocketpp (inside the fake) needs Boost.Asio's deprecated names; keep this TU consistent.
#undef BOOST_ASIO_NO_DEPRECATED

#include "adapters/slack/socket_mode.h"

#include <gtest/gtest.h>

#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <chrono>
#include <future>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "net/http.h"
#include "tests/fakes/slack/slack_server.h"

namespace parley::slack {
namespace {

using Json = nlohmann::json;
using Clock = std::chrono::steady_clock;
using parley::testing::SlackServer;
using parley::testing::SlackServerOptions;

// Polls pred every 2 ms until it holds or timeout_ms passes (client-side state has no change
// notification to wait on).
template <typename P>
bool Eventually(P pred, int timeout_ms = 5000) {
  auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  while (Clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return pred();
}

SocketModeOptions FastOptions(int connections) {
  SocketModeOptions o;
  o.connections = connections;
  o.ping_interval_ms = 200;
  o.pong_timeout_ms = 300;
  o.hello_timeout_ms = 2000;
  o.silence_timeout_ms = 10'000;
  o.backoff = net::BackoffPolicy{50, 400};
  o.refresh_overlap_ms = 2000;
  return o;
}

Json DmEvent(const std::string& text) {
  return Json{{"type", "message"}, {"channel", "D0DM"}, {"channel_type", "im"},
              {"user", "U1"},      {"text", text},      {"ts", "1700000000.000100"}};
}

class SocketModeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (int i = 0; i < 2; ++i) threads_.emplace_back([this] { io_.run(); });
    http_ = net::MakeCurlHttpClient(io_);
  }

  void TearDown() override {
    if (client_) {
      auto done = std::make_shared<std::promise<void>>();
      client_->Stop([done] { done->set_value(); });
      EXPECT_EQ(done->get_future().wait_for(std::chrono::seconds(3)), std::future_status::ready);
      client_.reset();
    }
    http_.reset();
    guard_.reset();
    for (auto& t : threads_) t.join();
    server_.reset();
  }

  void StartServer(SlackServerOptions options = {}) {
    server_ = std::make_unique<SlackServer>(std::move(options));
  }

  // apps.connections.open on the fake, as the adapter's Web API client would call it.
  OpenUrlFn OpenUrl() {
    return [this](UrlCallback done) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        open_calls_.push_back(Clock::now());
      }
      net::ClientRequest req;
      req.method = "POST";
      req.url = server_->ApiBaseUrl() + "apps.connections.open";
      req.headers = {{"Authorization", "Bearer " + app_token_}};
      auto rewrite = rewrite_url_;
      http_->Request(req, [done, rewrite](Result<net::ClientResponse> r) {
        if (!r.ok()) return done(r.status(), 0);
        if (r->status == 429) {
          int64_t s = std::atoll(net::FindHeader(r->headers, "Retry-After").c_str());
          return done(Status::ResourceExhausted("ratelimited"), s * 1000);
        }
        Json j = Json::parse(r->body, nullptr, false);
        if (j.is_discarded() || !j.is_object()) return done(Status::Unavailable("bad body"), 0);
        if (j.value("ok", false) && j.contains("url") && j["url"].is_string()) {
          std::string url = j["url"].get<std::string>();
          return done(rewrite ? rewrite(url) : url, 0);
        }
        std::string error = j.value("error", "");
        if (error == "invalid_auth" || error == "not_authed" || error == "token_revoked") {
          return done(Status::PermissionDenied(error), 0);
        }
        return done(Status::Unavailable(error), 0);
      });
    };
  }

  void StartClient(SocketModeOptions options) {
    client_ = std::make_unique<SocketModeClient>(
        io_, options, OpenUrl(),
        [this](Envelope env, AckFn ack) {
          std::lock_guard<std::mutex> lock(mu_);
          if (env.kind == FrameKind::kEventsApi) {
            event_ids_.push_back(env.payload.value("event_id", ""));
          }
          envelopes_.push_back(env);
          if (!auto_ack_) {
            held_acks_.push_back(ack);
            return;
          }
          if (env.kind == FrameKind::kSlashCommands) {
            Json payload{{"text", "ok"}};
            ack_results_.push_back(ack(&payload));
          } else {
            ack_results_.push_back(ack(nullptr));
          }
        },
        [this](Status why) {
          std::lock_guard<std::mutex> lock(mu_);
          stopped_.push_back(why);
        },
        metrics_);
    client_->Start();
  }

  uint64_t Event(const std::string& e) {
    return metrics_.GetCounter("parley_slack_socket_events_total", "", "event=\"" + e + "\"")
        .value();
  }
  uint64_t Malformed() {
    return metrics_.GetCounter("parley_slack_malformed_frames_total", "").value();
  }
  uint64_t EnvelopesOfType(const std::string& t) {
    return metrics_.GetCounter("parley_slack_envelopes_total", "", "type=\"" + t + "\"").value();
  }
  size_t OpenCalls() {
    std::lock_guard<std::mutex> lock(mu_);
    return open_calls_.size();
  }
  std::vector<Clock::time_point> OpenCallTimes() {
    std::lock_guard<std::mutex> lock(mu_);
    return open_calls_;
  }
  std::multiset<std::string> EventIds() {
    std::lock_guard<std::mutex> lock(mu_);
    return {event_ids_.begin(), event_ids_.end()};
  }
  bool Handled(const std::string& event_id) { return EventIds().count(event_id) > 0; }
  std::vector<Status> Stopped() {
    std::lock_guard<std::mutex> lock(mu_);
    return stopped_;
  }
  size_t EnvelopeCount() {
    std::lock_guard<std::mutex> lock(mu_);
    return envelopes_.size();
  }
  bool WaitReady(size_t n, int timeout_ms = 5000) {
    return Eventually([&] { return client_->ReadySockets() == n; }, timeout_ms);
  }

  MetricsRegistry metrics_;  // outlives the io threads and the client
  boost::asio::io_context io_;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> guard_{
      io_.get_executor()};
  std::vector<std::thread> threads_;
  std::shared_ptr<net::HttpClient> http_;
  std::unique_ptr<SlackServer> server_;
  std::unique_ptr<SocketModeClient> client_;
  std::string app_token_ = "xapp-1-A1-test";
  std::function<std::string(const std::string&)> rewrite_url_;

  std::mutex mu_;
  bool auto_ack_ = true;
  std::vector<Clock::time_point> open_calls_;
  std::vector<std::string> event_ids_;
  std::vector<Envelope> envelopes_;
  std::vector<bool> ack_results_;
  std::vector<AckFn> held_acks_;
  std::vector<Status> stopped_;
};

TEST_F(SocketModeTest, ConnectsNSocketsReadyAfterHello) {
  StartServer();
  StartClient(FastOptions(3));
  ASSERT_TRUE(WaitReady(3));
  EXPECT_EQ(server_->Counters().connections_open, 3u);
  EXPECT_EQ(server_->Counters().handshakes_rejected, 0u);
  EXPECT_EQ(OpenCalls(), 3u);
  EXPECT_EQ(Event("connect"), 3u);
  EXPECT_EQ(Event("hello"), 3u);
  EXPECT_EQ(metrics_.GetGauge("parley_slack_sockets_ready", "").value(), 3);
  EXPECT_TRUE(Stopped().empty());
}

TEST_F(SocketModeTest, EnvelopesDeliveredAndAckedWithoutRedelivery) {
  SlackServerOptions so;
  so.ack_deadline_ms = 300;
  StartServer(so);
  StartClient(FastOptions(1));
  ASSERT_TRUE(WaitReady(1));
  std::vector<std::string> ids;
  for (int i = 0; i < 5; ++i) ids.push_back(server_->SendEvent(DmEvent("hi " + std::to_string(i))));
  std::string slash = server_->SendSlashCommand(
      Json{{"command", "/parley"}, {"text", "help"}, {"user_id", "U1"}, {"channel_id", "C1"}});
  ASSERT_TRUE(server_->WaitForAcks(6, 5000));
  for (const auto& id : ids) EXPECT_TRUE(Handled(id)) << id;
  for (const auto& ack : server_->Acks()) {
    EXPECT_TRUE(ack.known) << ack.envelope_id;
    if (ack.envelope_id == slash) {
      EXPECT_EQ(ack.payload, (Json{{"text", "ok"}}));
    }
  }
  // Past the ack deadline nothing comes back.
  EXPECT_FALSE(server_->WaitFor([&] { return server_->Counters().redeliveries > 0; }, 600));
  EXPECT_EQ(server_->Counters().envelopes_delivered, 6u);
  EXPECT_EQ(EnvelopeCount(), 6u);
  EXPECT_EQ(EnvelopesOfType("events_api"), 5u);
  EXPECT_EQ(EnvelopesOfType("slash_commands"), 1u);
  std::lock_guard<std::mutex> lock(mu_);
  for (bool ok : ack_results_) EXPECT_TRUE(ok);
}

TEST_F(SocketModeTest, SeveralSocketsAllReceiveAndAckOnTheirOwnSocket) {
  StartServer();
  StartClient(FastOptions(3));
  ASSERT_TRUE(WaitReady(3));
  std::vector<std::string> ids;
  for (int i = 0; i < 12; ++i) ids.push_back(server_->SendEvent(DmEvent("e")));
  ASSERT_TRUE(server_->WaitForAcks(12, 5000));
  std::map<std::string, int> delivered_on;
  std::set<int> conns;
  for (const auto& d : server_->Deliveries()) {
    delivered_on[d.envelope_id] = d.connection_id;
    conns.insert(d.connection_id);
  }
  EXPECT_EQ(conns.size(), 3u);
  for (const auto& ack : server_->Acks()) {
    EXPECT_TRUE(ack.known);
    EXPECT_EQ(ack.connection_id, delivered_on[ack.envelope_id]) << ack.envelope_id;
  }
  for (const auto& id : ids) EXPECT_TRUE(Handled(id));
}

TEST_F(SocketModeTest, RefreshUnderTrafficLosesNoEvent) {
  SlackServerOptions so;
  so.refresh_close_delay_ms = 300;
  // The fake counts an envelope written to a socket it is already closing as delivered (the
  // write fails); such envelopes come back after the ack deadline, so keep it short.
  so.ack_deadline_ms = 500;
  StartServer(so);
  StartClient(FastOptions(2));
  ASSERT_TRUE(WaitReady(2));

  constexpr int kEvents = 150;
  std::vector<std::string> ids(kEvents);
  std::thread traffic([&] {
    for (int i = 0; i < kEvents; ++i) {
      ids[i] = server_->SendEvent(DmEvent("traffic"));
      std::this_thread::sleep_for(std::chrono::milliseconds(3));  // pacing, not waiting
    }
  });
  ASSERT_TRUE(server_->WaitForDeliveries(30, 5000));
  server_->Disconnect("refresh_requested");
  traffic.join();
  // Every event reaches the handler, and every envelope the client received is acked once.
  ASSERT_TRUE(Eventually([&] {
    auto handled = EventIds();
    for (const auto& id : ids) {
      if (!handled.count(id)) return false;
    }
    return true;
  })) << "handled="
      << EventIds().size() << " acks=" << server_->Counters().acks;
  std::map<std::string, int> acks_per_envelope;
  for (const auto& ack : server_->Acks()) {
    EXPECT_TRUE(ack.known) << ack.envelope_id;
    ++acks_per_envelope[ack.envelope_id];
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    // Each envelope acked at most once; an ack the closing server ignored shows as a
    // redelivery, which is acked on a new socket.
    for (const auto& env : envelopes_) {
      EXPECT_LE(acks_per_envelope[env.envelope_id], 1) << env.envelope_id;
    }
    EXPECT_GE(acks_per_envelope.size() + 4, envelopes_.size());
    for (bool ok : ack_results_) EXPECT_TRUE(ok);
  }
  auto c = server_->Counters();
  EXPECT_EQ(c.handshakes_rejected, 0u);  // every URL used once
  EXPECT_EQ(Event("disconnect_refresh_requested"), 2u);
  ASSERT_TRUE(Eventually(
      [&] { return client_->ReadySockets() == 2 && server_->Counters().connections_open == 2; }));
  EXPECT_EQ(server_->Counters().connections_opened, 4u);
  EXPECT_EQ(OpenCalls(), 4u);
  EXPECT_EQ(Event("drop"), 0u);  // the server closing a replaced socket is not a drop
  // No first delivery reaches the handler twice (a redelivery may, if the server dropped an
  // ack that arrived while it was closing the socket: websocketpp ignores data frames then).
  std::set<std::string> first_deliveries;
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& env : envelopes_) {
    if (env.retry_attempt > 0) continue;
    EXPECT_TRUE(first_deliveries.insert(env.payload.value("event_id", "")).second);
  }
}

TEST_F(SocketModeTest, WarningOpensReplacementAndClosesOldAfterOverlap) {
  StartServer();
  auto o = FastOptions(2);
  o.refresh_overlap_ms = 200;
  StartClient(o);
  ASSERT_TRUE(WaitReady(2));
  server_->Disconnect("warning");  // the fake does not close on warning: the client must
  ASSERT_TRUE(server_->WaitFor(
      [&] {
        auto c = server_->Counters();
        return c.connections_opened == 4 && c.connections_open == 2;
      },
      5000));
  EXPECT_TRUE(WaitReady(2));
  EXPECT_EQ(Event("disconnect_warning"), 2u);
  std::string id = server_->SendEvent(DmEvent("after warning"));
  ASSERT_TRUE(server_->WaitForAcks(1, 5000));
  EXPECT_TRUE(Eventually([&] { return Handled(id); }));
}

TEST_F(SocketModeTest, DropAllReconnectsWithBackoffAndContinues) {
  StartServer();
  StartClient(FastOptions(2));
  ASSERT_TRUE(WaitReady(2));
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto_ack_ = false;  // hold this one's ack until its socket is gone
  }
  server_->SendEvent(DmEvent("held"));
  ASSERT_TRUE(Eventually([&] { return EnvelopeCount() == 1; }));
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto_ack_ = true;
  }
  auto dropped_at = Clock::now();
  server_->DropAll();
  ASSERT_TRUE(Eventually(
      [&] { return server_->Counters().connections_opened == 4 && client_->ReadySockets() == 2; }));
  EXPECT_EQ(Event("drop"), 2u);
  auto calls = OpenCallTimes();
  ASSERT_EQ(calls.size(), 4u);
  // Backoff attempt 0 with base 50 ms waits at least 25 ms.
  EXPECT_GE(calls[2] - dropped_at, std::chrono::milliseconds(20));
  EXPECT_GE(calls[3] - dropped_at, std::chrono::milliseconds(20));
  AckFn held;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ASSERT_EQ(held_acks_.size(), 1u);
    held = held_acks_[0];
  }
  EXPECT_FALSE(held(nullptr));  // its socket is gone
  std::string id = server_->SendEvent(DmEvent("after drop"));
  EXPECT_TRUE(Eventually([&] { return Handled(id); }));
  EXPECT_TRUE(server_->WaitFor(
      [&] {
        for (const auto& a : server_->Acks()) {
          if (a.known) return true;
        }
        return false;
      },
      5000));
}

TEST_F(SocketModeTest, ZombieSocketsDetectedByPongTimeoutAndReplaced) {
  StartServer();
  auto o = FastOptions(2);
  o.ping_interval_ms = 100;
  o.pong_timeout_ms = 200;
  StartClient(o);
  ASSERT_TRUE(WaitReady(2));
  server_->ZombifyOpenSockets();
  std::string id = server_->SendEvent(DmEvent("to a healthy socket"));
  ASSERT_TRUE(Eventually([&] { return Handled(id); }));
  EXPECT_GE(Event("dead_pong"), 2u);
  EXPECT_TRUE(Eventually([&] { return server_->Counters().connections_opened >= 4; }));
  EXPECT_TRUE(Eventually(
      [&] { return client_->ReadySockets() == 2 && server_->Counters().connections_open == 2; }));
  EXPECT_EQ(Event("drop"), 0u);
}

TEST_F(SocketModeTest, SilentSocketIsReplaced) {
  StartServer();
  auto o = FastOptions(1);
  o.ping_interval_ms = 60'000;  // no client pings, so no pongs either
  o.silence_timeout_ms = 300;
  StartClient(o);
  ASSERT_TRUE(WaitReady(1));
  ASSERT_TRUE(Eventually([&] { return Event("dead_silence") >= 1; }));
  EXPECT_TRUE(Eventually([&] { return server_->Counters().connections_opened >= 2; }));
}

TEST_F(SocketModeTest, ServerPingsAreAnsweredAndCountAsTraffic) {
  StartServer();
  auto o = FastOptions(1);
  o.ping_interval_ms = 60'000;
  o.silence_timeout_ms = 500;
  StartClient(o);
  ASSERT_TRUE(WaitReady(1));
  for (int i = 0; i < 12; ++i) {
    server_->PingAll();
    std::this_thread::sleep_for(std::chrono::milliseconds(100));  // pacing the server's pings
  }
  EXPECT_TRUE(server_->WaitFor([&] { return server_->Counters().pongs_received >= 12; }, 3000));
  EXPECT_EQ(Event("dead_silence"), 0u);
  EXPECT_EQ(server_->Counters().connections_opened, 1u);
}

TEST_F(SocketModeTest, NoHelloWithinTimeoutIsDead) {
  // A listener that never answers the WebSocket handshake.
  boost::asio::io_context silent_io;
  boost::asio::ip::tcp::acceptor acceptor(
      silent_io, boost::asio::ip::tcp::endpoint(boost::asio::ip::make_address("127.0.0.1"), 0));
  int port = acceptor.local_endpoint().port();
  rewrite_url_ = [port](const std::string&) {
    return "ws://127.0.0.1:" + std::to_string(port) + "/link/?ticket=x";
  };
  StartServer();
  auto o = FastOptions(1);
  o.hello_timeout_ms = 200;
  StartClient(o);
  ASSERT_TRUE(Eventually([&] { return Event("dead_hello") >= 2; }));
  EXPECT_EQ(client_->ReadySockets(), 0u);
  EXPECT_TRUE(Stopped().empty());
}

TEST_F(SocketModeTest, LinkDisabledStopsWithoutReconnecting) {
  StartServer();
  StartClient(FastOptions(2));
  ASSERT_TRUE(WaitReady(2));
  server_->Disconnect("link_disabled", server_->OpenConnectionIds().front());
  ASSERT_TRUE(Eventually([&] { return !Stopped().empty(); }));
  EXPECT_EQ(Stopped().front().code(), Status::Code::kFailedPrecondition);
  EXPECT_TRUE(server_->WaitFor([&] { return server_->Counters().connections_open == 0; }, 3000));
  EXPECT_FALSE(server_->WaitFor([&] { return server_->Counters().connections_opened > 2; }, 500));
  EXPECT_EQ(OpenCalls(), 2u);
  EXPECT_EQ(Stopped().size(), 1u);
  EXPECT_EQ(client_->ReadySockets(), 0u);
}

TEST_F(SocketModeTest, BadAppTokenIsFatalWithoutRetryLoop) {
  StartServer();
  app_token_ = "xapp-wrong";
  StartClient(FastOptions(2));
  ASSERT_TRUE(Eventually([&] { return !Stopped().empty(); }));
  EXPECT_EQ(Stopped().front().code(), Status::Code::kPermissionDenied);
  EXPECT_FALSE(server_->WaitFor([&] { return server_->Counters().api_calls > 2; }, 500));
  EXPECT_LE(OpenCalls(), 2u);
  EXPECT_EQ(Stopped().size(), 1u);
  EXPECT_EQ(server_->Counters().connections_opened, 0u);
}

TEST_F(SocketModeTest, RateLimitedOpenWaitsRetryAfter) {
  StartServer();
  server_->RateLimitNext("apps.connections.open", 1, 1);
  StartClient(FastOptions(1));
  ASSERT_TRUE(WaitReady(1, 5000));
  auto calls = OpenCallTimes();
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_GE(calls[1] - calls[0], std::chrono::milliseconds(950));
  EXPECT_EQ(Event("open_failed"), 1u);
  EXPECT_TRUE(Stopped().empty());
}

TEST_F(SocketModeTest, UnusableUrlsAreRetried) {
  StartServer();
  auto calls = std::make_shared<std::atomic<int>>(0);
  rewrite_url_ = [calls](const std::string& url) -> std::string {
    // Alternates an unsupported scheme and wss:// to the plain-text server (its TLS handshake
    // never completes, so the hello timeout ends it).
    if ((*calls)++ % 2 == 0) return "http://127.0.0.1:1/";
    return "wss" + url.substr(2);
  };
  auto o = FastOptions(1);
  o.hello_timeout_ms = 300;
  StartClient(o);
  ASSERT_TRUE(Eventually([&] { return Event("open_failed") >= 2 && Event("dead_hello") >= 2; }));
  EXPECT_TRUE(Stopped().empty());
  EXPECT_EQ(client_->ReadySockets(), 0u);
  EXPECT_EQ(server_->Counters().connections_opened, 0u);
}

TEST_F(SocketModeTest, MalformedFrameCountedSocketSurvives) {
  StartServer();
  StartClient(FastOptions(1));
  ASSERT_TRUE(WaitReady(1));
  ASSERT_TRUE(server_->SendRaw("{not json"));
  ASSERT_TRUE(Eventually([&] { return Malformed() == 1; }));
  // A well-formed frame of an unknown type with an envelope id is acked and ignored.
  ASSERT_TRUE(server_->SendRaw(R"({"type":"brand_new","envelope_id":"unk-1","payload":{}})"));
  ASSERT_TRUE(server_->WaitForAcks(1, 3000));
  EXPECT_EQ(server_->Acks().front().envelope_id, "unk-1");
  EXPECT_EQ(EnvelopesOfType("unknown"), 1u);
  std::string id = server_->SendEvent(DmEvent("still here"));
  ASSERT_TRUE(Eventually([&] { return Handled(id); }));
  EXPECT_EQ(EnvelopeCount(), 1u);  // the unknown one never reached the handler
  EXPECT_EQ(client_->ReadySockets(), 1u);
  EXPECT_EQ(server_->Counters().connections_opened, 1u);
  EXPECT_EQ(Malformed(), 1u);
}

TEST_F(SocketModeTest, TooManyWebsocketsRetriesWithBackoff) {
  SlackServerOptions so;
  so.max_connections = 1;
  StartServer(so);
  auto o = FastOptions(2);
  o.backoff = net::BackoffPolicy{100, 800};
  StartClient(o);
  ASSERT_TRUE(Eventually([&] { return server_->Counters().too_many_websockets >= 3; }));
  EXPECT_GE(Event("disconnect_too_many_websockets"), 2u);
  EXPECT_EQ(client_->ReadySockets(), 1u);
  // Retried with backoff, not in a loop: 1 good socket + one call per refused socket (+1 under
  // way).
  EXPECT_LE(OpenCalls(), 2 + server_->Counters().too_many_websockets);
  std::string id = server_->SendEvent(DmEvent("one socket is enough"));
  EXPECT_TRUE(Eventually([&] { return Handled(id); }));
  EXPECT_TRUE(Stopped().empty());
}

TEST_F(SocketModeTest, StopClosesEverythingAndCallsDone) {
  StartServer();
  StartClient(FastOptions(2));
  ASSERT_TRUE(WaitReady(2));
  auto done = std::make_shared<std::promise<void>>();
  auto t0 = Clock::now();
  client_->Stop([done] { done->set_value(); });
  ASSERT_EQ(done->get_future().wait_for(std::chrono::milliseconds(2500)),
            std::future_status::ready);
  EXPECT_LT(Clock::now() - t0, std::chrono::milliseconds(2100));
  EXPECT_EQ(client_->ReadySockets(), 0u);
  EXPECT_TRUE(server_->WaitFor([&] { return server_->Counters().connections_open == 0; }, 2000));
  EXPECT_FALSE(server_->WaitFor([&] { return server_->Counters().connections_opened > 2; }, 300));
  // Idempotent: a second Stop calls its callback too.
  auto again = std::make_shared<std::promise<void>>();
  client_->Stop([again] { again->set_value(); });
  EXPECT_EQ(again->get_future().wait_for(std::chrono::seconds(1)), std::future_status::ready);
  EXPECT_TRUE(Stopped().empty());  // Stop is not a failure
}

TEST_F(SocketModeTest, DestructorClosesSocketsWithoutStop) {
  StartServer();
  StartClient(FastOptions(2));
  ASSERT_TRUE(WaitReady(2));
  client_.reset();  // no Stop(): the destructor starts closing
  EXPECT_TRUE(server_->WaitFor([&] { return server_->Counters().connections_open == 0; }, 3000));
  EXPECT_FALSE(server_->WaitFor([&] { return server_->Counters().connections_opened > 2; }, 300));
}

}  // namespace
}  // namespace parley::slack
