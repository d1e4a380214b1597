// websocketpp 0.8.2 needs Boost.Asio's deprecated names (see slack_server.cc).
#undef BOOST_ASIO_NO_DEPRECATED

#include "tests/fakes/slack/slack_server.h"

#include <gtest/gtest.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <vector>
#include <websocketpp/client.hpp>
#include <websocketpp/config/asio_no_tls_client.hpp>

#include "net/http.h"

namespace parley::testing {
namespace {

using Json = nlohmann::json;
using WsClient = websocketpp::client<websocketpp::config::asio_client>;

// A minimal Socket Mode client for the tests: records frames, can auto-ack.
class TestSocket {
 public:
  explicit TestSocket(bool auto_ack = false) : auto_ack_(auto_ack), guard_(io_.get_executor()) {
    client_.clear_access_channels(websocketpp::log::alevel::all);
    client_.clear_error_channels(websocketpp::log::elevel::all);
    client_.init_asio(&io_);
    client_.set_open_handler([this](websocketpp::connection_hdl) { Set([&] { open_ = true; }); });
    client_.set_fail_handler([this](websocketpp::connection_hdl h) {
      int code = client_.get_con_from_hdl(h)->get_response_code();
      Set([&] {
        failed_ = true;
        http_status_ = code;
      });
    });
    client_.set_close_handler([this](websocketpp::connection_hdl h) {
      auto con = client_.get_con_from_hdl(h);
      std::string reason = con->get_remote_close_reason();
      Set([&] {
        closed_ = true;
        close_reason_ = reason;
      });
    });
    client_.set_message_handler([this](websocketpp::connection_hdl h, WsClient::message_ptr m) {
      std::string text = m->get_payload();
      if (auto_ack_) {
        Json j = Json::parse(text, nullptr, false);
        if (!j.is_discarded() && j.contains("envelope_id")) {
          websocketpp::lib::error_code ec;
          client_.send(h, Json{{"envelope_id", j["envelope_id"]}}.dump(),
                       websocketpp::frame::opcode::text, ec);
        }
      }
      Set([&] { frames_.push_back(text); });
    });
    client_.set_pong_handler(
        [this](websocketpp::connection_hdl, std::string) { Set([&] { ++pongs_; }); });
    thread_ = std::thread([this] { io_.run(); });
  }
  ~TestSocket() {
    boost::asio::post(io_, [this] {
      websocketpp::lib::error_code ec;
      if (hdl_.lock()) client_.close(hdl_, websocketpp::close::status::normal, "bye", ec);
    });
    WaitUntil([&] { return closed_ || failed_ || !started_; }, 2000);
    guard_.reset();
    io_.stop();
    thread_.join();
  }

  void Connect(const std::string& url) {
    websocketpp::lib::error_code ec;
    auto con = client_.get_connection(url, ec);
    ASSERT_FALSE(ec) << ec.message();
    hdl_ = con->get_handle();
    started_ = true;
    client_.connect(con);
  }
  void Ping() {
    boost::asio::post(io_, [this] {
      websocketpp::lib::error_code ec;
      client_.ping(hdl_, "client-ping", ec);
    });
  }
  bool WaitPongs(int n) {
    return WaitUntil([&] { return pongs_ >= n; }, 3000);
  }
  int pongs() {
    std::lock_guard<std::mutex> lock(mu_);
    return pongs_;
  }
  void Send(const std::string& text) {
    boost::asio::post(io_, [this, text] {
      websocketpp::lib::error_code ec;
      client_.send(hdl_, text, websocketpp::frame::opcode::text, ec);
    });
  }

  bool WaitOpen() {
    return WaitUntil([&] { return open_; }, 3000);
  }
  bool WaitFailed() {
    return WaitUntil([&] { return failed_; }, 3000);
  }
  bool WaitClosed() {
    return WaitUntil([&] { return closed_; }, 3000);
  }
  bool WaitFrames(size_t n, int timeout_ms = 3000) {
    return WaitUntil([&] { return frames_.size() >= n; }, timeout_ms);
  }
  Json Frame(size_t i) {
    std::lock_guard<std::mutex> lock(mu_);
    return i < frames_.size() ? Json::parse(frames_[i], nullptr, false) : Json();
  }
  size_t FrameCount() {
    std::lock_guard<std::mutex> lock(mu_);
    return frames_.size();
  }
  int http_status() {
    std::lock_guard<std::mutex> lock(mu_);
    return http_status_;
  }
  std::string close_reason() {
    std::lock_guard<std::mutex> lock(mu_);
    return close_reason_;
  }

 private:
  template <typename F>
  void Set(F f) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      f();
    }
    cv_.notify_all();
  }
  template <typename P>
  bool WaitUntil(P pred, int timeout_ms) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms), pred);
  }

  bool auto_ack_;
  boost::asio::io_context io_;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> guard_;
  WsClient client_;
  websocketpp::connection_hdl hdl_;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool started_ = false;
  bool open_ = false;
  bool failed_ = false;
  bool closed_ = false;
  int http_status_ = 0;
  int pongs_ = 0;
  std::string close_reason_;
  std::vector<std::string> frames_;
};

struct ApiAnswer {
  int status = 0;
  std::string retry_after;
  Json body;
};

ApiAnswer Call(const SlackServer& server, const std::string& method, const std::string& token,
               const Json& body = Json::object()) {
  net::ClientRequest req;
  req.method = "POST";
  req.url = server.ApiBaseUrl() + method;
  if (!token.empty()) req.headers.emplace_back("Authorization", "Bearer " + token);
  req.headers.emplace_back("Content-Type", "application/json; charset=utf-8");
  req.body = body.dump();
  auto r = net::BlockingRequest(req);
  ApiAnswer a;
  if (!r.ok()) {
    ADD_FAILURE() << r.status().ToString();
    return a;
  }
  a.status = r->status;
  a.retry_after = net::FindHeader(r->headers, "Retry-After");
  a.body = Json::parse(r->body, nullptr, false);
  return a;
}

// A form-encoded call (conversations.* take no JSON bodies).
ApiAnswer CallForm(const SlackServer& server, const std::string& method, const std::string& token,
                   const std::string& form) {
  net::ClientRequest req;
  req.method = "POST";
  req.url = server.ApiBaseUrl() + method;
  req.headers.emplace_back("Authorization", "Bearer " + token);
  req.headers.emplace_back("Content-Type", "application/x-www-form-urlencoded");
  req.body = form;
  auto r = net::BlockingRequest(req);
  ApiAnswer a;
  if (!r.ok()) {
    ADD_FAILURE() << r.status().ToString();
    return a;
  }
  a.status = r->status;
  a.body = Json::parse(r->body, nullptr, false);
  return a;
}

std::string OpenUrl(const SlackServer& server) {
  ApiAnswer a = Call(server, "apps.connections.open", server.options().app_token);
  EXPECT_EQ(a.status, 200);
  EXPECT_EQ(a.body.value("ok", false), true) << a.body.dump();
  return a.body.value("url", "");
}

TEST(FakeSlackTest, ConnectionsOpenHandshakeAndHello) {
  SlackServer server;
  std::string url = OpenUrl(server);
  EXPECT_EQ(url.rfind("ws://127.0.0.1:" + std::to_string(server.ws_port()) + "/link/?ticket=", 0),
            0u)
      << url;
  TestSocket s;
  s.Connect(url);
  ASSERT_TRUE(s.WaitOpen());
  ASSERT_TRUE(s.WaitFrames(1));
  Json hello = s.Frame(0);
  EXPECT_EQ(hello["type"], "hello");
  EXPECT_EQ(hello["num_connections"], 1);
  EXPECT_EQ(hello["debug_info"]["approximate_connection_time"], 3600);
  EXPECT_EQ(hello["connection_info"]["app_id"], "A1");
  EXPECT_TRUE(server.WaitForOpenConnections(1, 2000));
  EXPECT_EQ(server.Counters().connections_opened, 1u);
}

TEST(FakeSlackTest, UsedOrUnknownTicketIsRefused) {
  SlackServer server;
  std::string url = OpenUrl(server);
  TestSocket first;
  first.Connect(url);
  ASSERT_TRUE(first.WaitOpen());
  TestSocket second;
  second.Connect(url);
  ASSERT_TRUE(second.WaitFailed());
  EXPECT_EQ(second.http_status(), 401);
  TestSocket third;
  third.Connect("ws://127.0.0.1:" + std::to_string(server.ws_port()) + "/link/?ticket=bogus");
  ASSERT_TRUE(third.WaitFailed());
  EXPECT_EQ(server.Counters().handshakes_rejected, 2u);
  EXPECT_EQ(server.Counters().connections_open, 1u);
}

TEST(FakeSlackTest, InvalidTokens) {
  SlackServer server;
  ApiAnswer a = Call(server, "apps.connections.open", "xapp-wrong");
  EXPECT_EQ(a.status, 200);
  EXPECT_EQ(a.body, (Json{{"ok", false}, {"error", "invalid_auth"}}));
  a = Call(server, "apps.connections.open", server.options().bot_token);
  EXPECT_EQ(a.body["error"], "invalid_auth");
  a = Call(server, "auth.test", "xoxb-wrong");
  EXPECT_EQ(a.body["error"], "invalid_auth");
  a = Call(server, "auth.test", "");
  EXPECT_EQ(a.body["error"], "not_authed");
  a = Call(server, "auth.test", server.options().bot_token);
  EXPECT_EQ(a.body["ok"], true);
  EXPECT_EQ(a.body["user_id"], "U0BOT");
  EXPECT_EQ(a.body["bot_id"], "B0BOT");
  EXPECT_EQ(a.body["team_id"], "T0TEAM");
  a = Call(server, "chat.postMessage", "xoxb-wrong", {{"channel", "C0GENERAL"}, {"text", "x"}});
  EXPECT_EQ(a.body["error"], "invalid_auth");
  EXPECT_TRUE(server.Posted().empty());
}

TEST(FakeSlackTest, EventDeliveredAndAcked) {
  SlackServer server;
  TestSocket s(/*auto_ack=*/true);
  s.Connect(OpenUrl(server));
  ASSERT_TRUE(s.WaitFrames(1));
  std::string event_id = server.SendEvent({{"type", "app_mention"},
                                           {"user", "U1"},
                                           {"text", "<@U0BOT> hi"},
                                           {"channel", "C0GENERAL"},
                                           {"ts", "1700000001.000100"}});
  ASSERT_TRUE(s.WaitFrames(2));
  Json env = s.Frame(1);
  EXPECT_EQ(env["type"], "events_api");
  EXPECT_EQ(env["retry_attempt"], 0);
  EXPECT_EQ(env["retry_reason"], "");
  EXPECT_EQ(env["accepts_response_payload"], false);
  EXPECT_EQ(env["payload"]["type"], "event_callback");
  EXPECT_EQ(env["payload"]["event_id"], event_id);
  EXPECT_EQ(env["payload"]["team_id"], "T0TEAM");
  EXPECT_EQ(env["payload"]["api_app_id"], "A1");
  EXPECT_EQ(env["payload"]["event"]["text"], "<@U0BOT> hi");
  ASSERT_TRUE(server.WaitForAcks(1, 3000));
  auto acks = server.Acks();
  EXPECT_EQ(acks[0].envelope_id, env["envelope_id"]);
  EXPECT_TRUE(acks[0].known);
  auto d = server.Deliveries();
  ASSERT_EQ(d.size(), 1u);
  EXPECT_EQ(d[0].event_id, event_id);
}

TEST(FakeSlackTest, UnackedEventIsRedeliveredWithSameEventId) {
  SlackServerOptions o;
  o.ack_deadline_ms = 150;
  o.retry_delays_ms = {0, 0, 0};
  SlackServer server(o);
  TestSocket s(/*auto_ack=*/false);
  s.Connect(OpenUrl(server));
  ASSERT_TRUE(s.WaitFrames(1));
  std::string event_id = server.SendEvent({{"type", "message"}, {"channel", "D0DM"}});
  ASSERT_TRUE(s.WaitFrames(3));
  Json first = s.Frame(1);
  Json retry = s.Frame(2);
  EXPECT_EQ(first["retry_attempt"], 0);
  EXPECT_EQ(retry["retry_attempt"], 1);
  EXPECT_EQ(retry["retry_reason"], "timeout");
  EXPECT_EQ(retry["payload"]["event_id"], event_id);
  EXPECT_NE(retry["envelope_id"], first["envelope_id"]);
  // Acking the retry stops further redeliveries.
  s.Send(Json{{"envelope_id", retry["envelope_id"]}}.dump());
  ASSERT_TRUE(server.WaitForAcks(1, 2000));
  EXPECT_TRUE(server.Acks()[0].known);
  // Slash commands are not redelivered: wait past the deadline using a later event as a marker.
  server.SendSlashCommand({{"command", "/parley"}, {"text", "help"}});
  ASSERT_TRUE(s.WaitFrames(4));
  EXPECT_EQ(s.Frame(3)["type"], "slash_commands");
  EXPECT_EQ(s.Frame(3)["accepts_response_payload"], true);
  // Up to three retries for events, then nothing more.
  std::string e2 = server.SendEvent({{"type", "message"}, {"channel", "D0DM"}});
  ASSERT_TRUE(server.WaitFor(
      [&] {
        int n = 0;
        for (const auto& d : server.Deliveries()) n += d.event_id == e2;
        return n == 4;
      },
      3000));
  auto d = server.Deliveries();
  EXPECT_EQ(d.back().retry_attempt, 3);
  EXPECT_EQ(d.back().event_id, e2);
  for (const auto& x : d) EXPECT_NE(x.type == "slash_commands" && x.retry_attempt > 0, true);
}

TEST(FakeSlackTest, LaterRedeliveriesWaitTheirRetryDelay) {
  SlackServerOptions o;
  o.ack_deadline_ms = 100;
  o.max_retries = 2;
  o.retry_delays_ms = {0, 500};
  SlackServer server(o);
  TestSocket s(/*auto_ack=*/false);
  s.Connect(OpenUrl(server));
  ASSERT_TRUE(s.WaitFrames(1));
  const std::string e = server.SendEvent({{"type", "message"}, {"channel", "D0DM"}});
  auto deliveries = [&] {
    int n = 0;
    for (const auto& d : server.Deliveries()) n += d.event_id == e;
    return n;
  };
  ASSERT_TRUE(server.WaitFor([&] { return deliveries() == 2; }, 3000));  // first + retry 1
  const auto first_retry = std::chrono::steady_clock::now();
  ASSERT_TRUE(server.WaitFor([&] { return deliveries() == 3; }, 5000));
  // Retry 2 comes the ack deadline plus its 500 ms delay after retry 1, never sooner.
  EXPECT_GE(std::chrono::steady_clock::now() - first_retry, std::chrono::milliseconds(500));
  EXPECT_EQ(server.Deliveries().back().retry_attempt, 2);
}

TEST(FakeSlackTest, PostMessageRecordedWithThreadTs) {
  SlackServer server;
  const std::string bot = server.options().bot_token;
  ApiAnswer a = Call(server, "chat.postMessage", bot,
                     {{"channel", "C0GENERAL"},
                      {"text", "answer"},
                      {"thread_ts", "1700000001.000100"},
                      {"blocks", Json::array({{{"type", "section"}}})}});
  EXPECT_EQ(a.body["ok"], true) << a.body.dump();
  EXPECT_EQ(a.body["channel"], "C0GENERAL");
  EXPECT_EQ(a.body["message"]["thread_ts"], "1700000001.000100");
  std::string ts1 = a.body["ts"];
  a = Call(server, "chat.postMessage", bot, {{"channel", "C0GENERAL"}, {"text", "second"}});
  std::string ts2 = a.body["ts"];
  EXPECT_LT(ts1, ts2);
  EXPECT_EQ(ts1.size(), std::string("1700000000.000100").size());
  a = Call(server, "chat.postMessage", bot, {{"channel", "C0NOPE"}, {"text", "x"}});
  EXPECT_EQ(a.body["error"], "channel_not_found");
  a = Call(server, "chat.postMessage", bot, {{"channel", "C0GENERAL"}});
  EXPECT_EQ(a.body["error"], "invalid_arguments");
  a = Call(server, "chat.update", bot, {{"channel", "C0GENERAL"}, {"ts", ts2}, {"text", "edit"}});
  EXPECT_EQ(a.body["ok"], true);
  a = Call(server, "reactions.add", bot,
           {{"channel", "C0GENERAL"}, {"timestamp", ts1}, {"name", "eyes"}});
  EXPECT_EQ(a.body["ok"], true);
  a = Call(server, "reactions.add", bot,
           {{"channel", "C0GENERAL"}, {"timestamp", ts1}, {"name", "eyes"}});
  EXPECT_EQ(a.body["error"], "already_reacted");
  a = Call(server, "reactions.remove", bot,
           {{"channel", "C0GENERAL"}, {"timestamp", ts1}, {"name", "eyes"}});
  EXPECT_EQ(a.body["ok"], true);

  auto posted = server.Posted();
  ASSERT_EQ(posted.size(), 2u);
  EXPECT_EQ(posted[0].thread_ts, "1700000001.000100");
  EXPECT_EQ(posted[0].text, "answer");
  EXPECT_TRUE(posted[0].blocks.is_array());
  EXPECT_EQ(posted[1].thread_ts, "");
  EXPECT_EQ(server.Messages().size(), 3u);
  EXPECT_EQ(server.Messages()[2].text, "edit");
  auto reactions = server.Reactions();
  ASSERT_EQ(reactions.size(), 2u);
  EXPECT_TRUE(reactions[0].added);
  EXPECT_FALSE(reactions[1].added);
}

TEST(FakeSlackTest, WithoutHistoryTheObserverSeesAllAndLaterCallsStillWork) {
  SlackServerOptions o;
  o.keep_history = false;
  std::mutex mu;
  std::vector<SlackPostedMessage> seen;
  o.on_message = [&](const SlackPostedMessage& m) {
    std::lock_guard<std::mutex> lock(mu);
    seen.push_back(m);
  };
  SlackServer server(o);
  const std::string bot = server.options().bot_token;
  const Json meta{{"event_type", "parley_reply"}, {"event_payload", {{"message_id", "m1"}}}};
  ApiAnswer a = Call(server, "chat.postMessage", bot,
                     {{"channel", "C0GENERAL"},
                      {"text", "answer"},
                      {"thread_ts", "1700000001.000100"},
                      {"blocks", Json::array({{{"type", "section"}}})},
                      {"metadata", meta}});
  ASSERT_EQ(a.body["ok"], true) << a.body.dump();
  const std::string ts = a.body["ts"];
  EXPECT_EQ(a.body["message"]["blocks"], Json::array({{{"type", "section"}}}));

  // The observer gets the whole message; the server then forgets its arguments and blocks.
  ASSERT_TRUE(server.WaitFor(
      [&] {
        auto m = server.Messages();
        return m.size() == 1 && m[0].args.is_null() && m[0].blocks.is_null();
      },
      3000));
  {
    std::lock_guard<std::mutex> lock(mu);
    ASSERT_EQ(seen.size(), 1u);
    EXPECT_EQ(seen[0].blocks, Json::array({{{"type", "section"}}}));
    EXPECT_EQ(seen[0].args.value("text", ""), "answer");
  }

  // What later calls need is kept: the thread with its metadata, edits and reactions.
  a = CallForm(server, "conversations.replies", bot,
               "channel=C0GENERAL&ts=1700000001.000100&include_all_metadata=true");
  ASSERT_EQ(a.body["ok"], true) << a.body.dump();
  ASSERT_EQ(a.body["messages"].size(), 1u);
  EXPECT_EQ(a.body["messages"][0]["ts"], ts);
  EXPECT_EQ(a.body["messages"][0]["metadata"], meta);
  a = Call(server, "chat.update", bot, {{"channel", "C0GENERAL"}, {"ts", ts}, {"text", "v2"}});
  EXPECT_EQ(a.body["ok"], true) << a.body.dump();
  a = Call(server, "reactions.add", bot,
           {{"channel", "C0GENERAL"}, {"timestamp", ts}, {"name", "eyes"}});
  EXPECT_EQ(a.body["ok"], true);
  a = Call(server, "reactions.add", bot,
           {{"channel", "C0GENERAL"}, {"timestamp", ts}, {"name", "eyes"}});
  EXPECT_EQ(a.body["error"], "already_reacted");
  EXPECT_TRUE(server.Reactions().empty());
  EXPECT_EQ(server.Counters().reactions, 1u);

  // Envelopes, acks and frames are counted, not kept.
  TestSocket s(/*auto_ack=*/true);
  s.Connect(OpenUrl(server));
  ASSERT_TRUE(s.WaitFrames(1));
  server.SendEvent({{"type", "app_mention"},
                    {"user", "U1"},
                    {"text", "<@U0BOT> hi"},
                    {"channel", "C0GENERAL"},
                    {"ts", "1700000002.000100"}});
  ASSERT_TRUE(server.WaitFor([&] { return server.Counters().acks == 1; }, 3000));
  EXPECT_EQ(server.Counters().envelopes_delivered, 1u);
  EXPECT_TRUE(server.Deliveries().empty());
  EXPECT_TRUE(server.Acks().empty());
  EXPECT_TRUE(server.FramesReceived().empty());
}

TEST(FakeSlackTest, UpdatesAndDeletesChangeTheConversation) {
  SlackServer server;
  const std::string bot = server.options().bot_token;
  const Json meta{{"event_type", "parley_partial"}, {"event_payload", {{"message_id", "m1"}}}};
  ApiAnswer a = Call(server, "chat.postMessage", bot,
                     {{"channel", "C0GENERAL"},
                      {"text", "draft"},
                      {"thread_ts", "1700000001.000100"},
                      {"blocks", Json::array({{{"type", "section"}}})},
                      {"metadata", meta}});
  ASSERT_EQ(a.body["ok"], true) << a.body.dump();
  const std::string ts = a.body["ts"];
  // Text replaced; blocks and metadata kept when not given.
  a = Call(server, "chat.update", bot, {{"channel", "C0GENERAL"}, {"ts", ts}, {"text", "v2"}});
  EXPECT_EQ(a.body["ok"], true);
  auto conv = server.Conversation("C0GENERAL");
  ASSERT_EQ(conv.size(), 1u);
  EXPECT_EQ(conv[0].text, "v2");
  EXPECT_EQ(conv[0].metadata, meta);
  EXPECT_EQ(conv[0].blocks.size(), 1u);
  EXPECT_EQ(conv[0].thread_ts, "1700000001.000100");
  const Json final_meta{{"event_type", "parley_reply"},
                        {"event_payload", {{"message_id", "m1"}, {"part", 0}}}};
  a = Call(server, "chat.update", bot,
           {{"channel", "C0GENERAL"}, {"ts", ts}, {"text", "final"}, {"metadata", final_meta}});
  EXPECT_EQ(a.body["ok"], true);
  EXPECT_EQ(server.Conversation("C0GENERAL").at(0).metadata, final_meta);
  // Injected refusals change nothing.
  server.ErrorNext("chat.update", 1, "edit_window_closed");
  a = Call(server, "chat.update", bot, {{"channel", "C0GENERAL"}, {"ts", ts}, {"text", "no"}});
  EXPECT_EQ(a.status, 200);
  EXPECT_EQ(a.body["error"], "edit_window_closed");
  EXPECT_EQ(server.Conversation("C0GENERAL").at(0).text, "final");
  // A slow answer: the call is carried out at once, answered later.
  server.DelayNext("chat.update", 1, 200);
  const auto before = std::chrono::steady_clock::now();
  a = Call(server, "chat.update", bot, {{"channel", "C0GENERAL"}, {"ts", ts}, {"text", "slow"}});
  EXPECT_EQ(a.body["ok"], true);
  EXPECT_GE(std::chrono::steady_clock::now() - before, std::chrono::milliseconds(200));
  // Deleted: gone from the conversation; later edits and deletes find nothing.
  a = Call(server, "chat.delete", bot, {{"channel", "C0GENERAL"}, {"ts", ts}});
  EXPECT_EQ(a.body["ok"], true);
  EXPECT_TRUE(server.Conversation("C0GENERAL").empty());
  a = Call(server, "chat.update", bot, {{"channel", "C0GENERAL"}, {"ts", ts}, {"text", "x"}});
  EXPECT_EQ(a.body["error"], "message_not_found");
  a = Call(server, "chat.delete", bot, {{"channel", "C0GENERAL"}, {"ts", ts}});
  EXPECT_EQ(a.body["error"], "message_not_found");
  a = Call(server, "chat.update", bot,
           {{"channel", "C0GENERAL"}, {"ts", "1.000001"}, {"text", "x"}});
  EXPECT_EQ(a.body["error"], "message_not_found");
  EXPECT_EQ(server.Posted().size(), 1u);
}

TEST(FakeSlackTest, RateLimitInjectionAndBudget) {
  SlackServer server;
  const std::string bot = server.options().bot_token;
  server.RateLimitNext("chat.postMessage", 2, 7);
  Json msg{{"channel", "C0GENERAL"}, {"text", "hi"}};
  for (int i = 0; i < 2; ++i) {
    ApiAnswer a = Call(server, "chat.postMessage", bot, msg);
    EXPECT_EQ(a.status, 429);
    EXPECT_EQ(a.retry_after, "7");
    EXPECT_EQ(a.body["error"], "ratelimited");
  }
  // Other methods are not limited.
  EXPECT_EQ(Call(server, "auth.test", bot).status, 200);
  EXPECT_EQ(Call(server, "chat.postMessage", bot, msg).status, 200);
  EXPECT_EQ(server.Counters().ratelimited_served, 2u);
  EXPECT_EQ(server.Posted().size(), 1u);

  server.FailNext("chat.postMessage", 1, 503);
  EXPECT_EQ(Call(server, "chat.postMessage", bot, msg).status, 503);
  EXPECT_EQ(Call(server, "chat.postMessage", bot, msg).status, 200);

  server.SetPostMessageBudget(1.0, 2);
  EXPECT_EQ(Call(server, "chat.postMessage", bot, msg).status, 200);
  EXPECT_EQ(Call(server, "chat.postMessage", bot, msg).status, 200);
  ApiAnswer limited = Call(server, "chat.postMessage", bot, msg);
  EXPECT_EQ(limited.status, 429);
  EXPECT_EQ(limited.retry_after, "1");
  // The budget is per channel.
  EXPECT_EQ(Call(server, "chat.postMessage", bot, {{"channel", "D0DM"}, {"text", "x"}}).status,
            200);
}

TEST(FakeSlackTest, EleventhConnectionGetsTooManyWebsockets) {
  SlackServer server;
  std::vector<std::unique_ptr<TestSocket>> sockets;
  for (int i = 0; i < 10; ++i) {
    sockets.push_back(std::make_unique<TestSocket>());
    sockets.back()->Connect(OpenUrl(server));
    ASSERT_TRUE(sockets.back()->WaitFrames(1));
  }
  EXPECT_EQ(sockets.back()->Frame(0)["num_connections"], 10);
  TestSocket eleventh;
  eleventh.Connect(OpenUrl(server));
  ASSERT_TRUE(eleventh.WaitFrames(1));
  EXPECT_EQ(eleventh.Frame(0)["type"], "disconnect");
  EXPECT_EQ(eleventh.Frame(0)["reason"], "too_many_websockets");
  ASSERT_TRUE(eleventh.WaitClosed());
  EXPECT_EQ(server.Counters().too_many_websockets, 1u);
  EXPECT_TRUE(server.WaitFor([&] { return server.Counters().connections_open == 10; }, 2000));
}

TEST(FakeSlackTest, DisconnectFramesAndRefreshClose) {
  SlackServerOptions o;
  o.refresh_close_delay_ms = 50;
  SlackServer server(o);
  TestSocket a;
  TestSocket b;
  a.Connect(OpenUrl(server));
  ASSERT_TRUE(a.WaitFrames(1));  // a gets the lower connection id
  b.Connect(OpenUrl(server));
  ASSERT_TRUE(b.WaitFrames(1));
  server.Disconnect("warning");
  ASSERT_TRUE(a.WaitFrames(2));
  ASSERT_TRUE(b.WaitFrames(2));
  EXPECT_EQ(a.Frame(1)["type"], "disconnect");
  EXPECT_EQ(a.Frame(1)["reason"], "warning");
  EXPECT_EQ(server.Counters().connections_open, 2u);
  int first = server.OpenConnectionIds().front();
  server.Disconnect("refresh_requested", first);
  ASSERT_TRUE(a.WaitFrames(3));
  EXPECT_EQ(a.Frame(2)["reason"], "refresh_requested");
  ASSERT_TRUE(a.WaitClosed());
  EXPECT_TRUE(server.WaitFor([&] { return server.Counters().connections_open == 1; }, 2000));
  EXPECT_EQ(b.FrameCount(), 2u);
  // Raw and abrupt: a malformed frame reaches the client; DropAll closes without a close frame.
  EXPECT_TRUE(server.SendRaw("{not json"));
  ASSERT_TRUE(b.WaitFrames(3));
  server.DropAll();
  ASSERT_TRUE(b.WaitClosed());
  EXPECT_TRUE(server.WaitFor([&] { return server.Counters().connections_open == 0; }, 2000));
}

TEST(FakeSlackTest, EventsQueueUntilAHealthySocketExists) {
  SlackServer server;
  TestSocket zombie(/*auto_ack=*/true);
  zombie.Connect(OpenUrl(server));
  ASSERT_TRUE(zombie.WaitFrames(1));
  server.ZombifyOpenSockets();
  std::string id = server.SendEvent({{"type", "message"}});
  TestSocket healthy(/*auto_ack=*/true);
  healthy.Connect(OpenUrl(server));
  ASSERT_TRUE(healthy.WaitFrames(2));
  EXPECT_EQ(healthy.Frame(1)["payload"]["event_id"], id);
  EXPECT_EQ(zombie.FrameCount(), 1u);
  EXPECT_TRUE(server.WaitForAcks(1, 2000));
}

TEST(FakeSlackTest, BotPostsEchoedWhenAsked) {
  SlackServerOptions o;
  o.echo_bot_posts = true;
  SlackServer server(o);
  TestSocket s(/*auto_ack=*/true);
  s.Connect(OpenUrl(server));
  ASSERT_TRUE(s.WaitFrames(1));
  ApiAnswer a = Call(server, "chat.postMessage", o.bot_token,
                     {{"channel", "D0DM"}, {"text", "hello"}, {"thread_ts", "1.000100"}});
  ASSERT_EQ(a.body["ok"], true);
  ASSERT_TRUE(s.WaitFrames(2));
  Json event = s.Frame(1)["payload"]["event"];
  EXPECT_EQ(event["type"], "message");
  EXPECT_EQ(event["bot_id"], "B0BOT");
  EXPECT_EQ(event["channel_type"], "im");
  EXPECT_EQ(event["ts"], a.body["ts"]);
  EXPECT_EQ(event["thread_ts"], "1.000100");
}

TEST(FakeSlackTest, PingsAnsweredUnlessSilenced) {
  SlackServer server;
  TestSocket s;
  s.Connect(OpenUrl(server));
  ASSERT_TRUE(s.WaitFrames(1));
  s.Ping();
  ASSERT_TRUE(s.WaitPongs(1));
  server.SetAnswerPings(false);
  s.Ping();
  ASSERT_TRUE(server.WaitFor([&] { return server.Counters().pings_received == 2; }, 2000));
  server.SetAnswerPings(true);
  s.Ping();
  ASSERT_TRUE(s.WaitPongs(2));
  // Frames are ordered: had the silenced ping been answered, its pong would have come first.
  EXPECT_EQ(s.pongs(), 2);
  // The server's own pings are answered by the client.
  server.PingAll();
  EXPECT_TRUE(server.WaitFor([&] { return server.Counters().pongs_received == 1; }, 2000));
}

}  // namespace
}  // namespace parley::testing
