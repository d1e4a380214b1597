// WebApi against a local HTTP server that answers the way Slack's Web API does: how each answer
// is classified, what is sent (token header, body encoding), and the per-key 429 pause.

#include "adapters/slack/web_api.h"

#include <gtest/gtest.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <future>
#include <mutex>
#include <thread>

namespace parley::slack {
namespace {

using nlohmann::json;

class WebApiTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = std::make_unique<net::HttpServer>(
        io_, net::HttpServerOptions{}, [this](net::HttpRequest req, net::Responder respond) {
          net::HttpResponse r;
          {
            std::lock_guard<std::mutex> lock(mu_);
            requests_.push_back(req);
            r = next_;
          }
          respond(std::move(r));
        });
    auto port = server_->ListenTcp("127.0.0.1", 0);
    ASSERT_TRUE(port.ok());
    base_ = "http://127.0.0.1:" + std::to_string(*port) + "/api/";
    thread_ = std::thread([this] { io_.run(); });
    http_ = net::MakeCurlHttpClient(io_);
    api_ = std::make_unique<WebApi>(http_, base_, Secret("xoxb-bot"), Secret("xapp-app"), clock_,
                                    metrics_);
  }
  void TearDown() override {
    api_.reset();
    http_.reset();
    server_->Stop();
    guard_.reset();
    io_.stop();
    thread_.join();
  }

  void Answer(int status, const std::string& body, net::Headers headers = {}) {
    std::lock_guard<std::mutex> lock(mu_);
    next_.status = status;
    next_.body = body;
    next_.headers = std::move(headers);
  }

  ApiResult Call(const std::string& method, const json& args, Token token = Token::kBot,
                 const std::string& key = "") {
    std::promise<ApiResult> done;
    api_->Call(method, args, token, [&](ApiResult r) { done.set_value(std::move(r)); }, key);
    return done.get_future().get();
  }

  net::HttpRequest LastRequest() {
    std::lock_guard<std::mutex> lock(mu_);
    return requests_.back();
  }

  boost::asio::io_context io_;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> guard_{
      io_.get_executor()};
  std::unique_ptr<net::HttpServer> server_;
  std::thread thread_;
  std::shared_ptr<net::HttpClient> http_;
  ManualClock clock_;
  MetricsRegistry metrics_;
  std::unique_ptr<WebApi> api_;
  std::string base_;
  std::mutex mu_;
  net::HttpResponse next_;
  std::vector<net::HttpRequest> requests_;
};

TEST_F(WebApiTest, OkAndWhatIsSent) {
  Answer(200, R"({"ok":true,"ts":"1.2"})");
  ApiResult r = Call("chat.postMessage", {{"channel", "C1"}, {"text", "héllo"}});
  EXPECT_EQ(r.outcome, Outcome::kOk);
  EXPECT_EQ(r.body["ts"], "1.2");
  net::HttpRequest req = LastRequest();
  EXPECT_EQ(req.method, "POST");
  EXPECT_EQ(req.path, "/api/chat.postMessage");
  EXPECT_EQ(net::FindHeader(req.headers, "authorization"), "Bearer xoxb-bot");
  EXPECT_EQ(net::FindHeader(req.headers, "content-type"), "application/json; charset=utf-8");
  EXPECT_EQ(json::parse(req.body)["text"], "héllo");
  EXPECT_EQ(req.query, "");  // never a token in the URL

  Call("apps.connections.open", json::object(), Token::kApp);
  EXPECT_EQ(net::FindHeader(LastRequest().headers, "authorization"), "Bearer xapp-app");
}

// chat.postMessage echoes the whole message back; nobody reads it, so it is not kept. Everything
// else, nested objects included, is.
TEST_F(WebApiTest, TheEchoedMessageIsDroppedTheRestKept) {
  Answer(200, R"({"ok":true,"channel":"C1","ts":"1.2","message":{"type":"message","text":"x",)"
              R"("blocks":[{"type":"section","text":{"type":"mrkdwn","text":"x"}}],"ts":"1.2"},)"
              R"("response_metadata":{"warnings":["missing_charset"]},"user":{"id":"U1",)"
              R"("profile":{"display_name":"Ann"}}})");
  ApiResult r = Call("chat.postMessage", {{"channel", "C1"}});
  EXPECT_EQ(r.outcome, Outcome::kOk);
  EXPECT_EQ(r.body, json::parse(R"({"ok":true,"channel":"C1","ts":"1.2",)"
                                R"("response_metadata":{"warnings":["missing_charset"]},)"
                                R"("user":{"id":"U1","profile":{"display_name":"Ann"}}})"));
  // A scalar "message" goes too; a nested one is ordinary data.
  Answer(200, R"({"ok":false,"message":"x","error":"e","detail":{"message":{"a":1}}})");
  ApiResult refused = Call("chat.postMessage", {{"channel", "C1"}});
  EXPECT_EQ(refused.error, "e");
  EXPECT_EQ(refused.body, json::parse(R"({"ok":false,"error":"e","detail":{"message":{"a":1}}})"));
  // Not JSON: still a transient failure without a body.
  Answer(200, R"({"ok":true,"message":{"text":)");
  EXPECT_EQ(Call("chat.postMessage", {{"channel", "C1"}}).outcome, Outcome::kTransient);
}

TEST_F(WebApiTest, FormCallsAreUrlEncoded) {
  Answer(200, R"({"ok":true,"messages":[]})");
  std::promise<ApiResult> done;
  api_->CallForm("conversations.replies", {{"channel", "C1"}, {"ts", "1.2"}, {"q", "a b&c=d"}},
                 Token::kBot, [&](ApiResult r) { done.set_value(std::move(r)); });
  EXPECT_EQ(done.get_future().get().outcome, Outcome::kOk);
  net::HttpRequest req = LastRequest();
  EXPECT_EQ(net::FindHeader(req.headers, "content-type"), "application/x-www-form-urlencoded");
  EXPECT_EQ(req.body, "channel=C1&ts=1.2&q=a%20b%26c%3Dd");
}

TEST_F(WebApiTest, ErrorsAreClassified) {
  Answer(200, R"({"ok":false,"error":"invalid_auth"})");
  EXPECT_EQ(Call("auth.test", json::object()).outcome, Outcome::kAuth);
  Answer(200, R"({"ok":false,"error":"channel_not_found"})");
  ApiResult refused = Call("chat.postMessage", {{"channel", "C9"}});
  EXPECT_EQ(refused.outcome, Outcome::kRefused);
  EXPECT_EQ(refused.error, "channel_not_found");
  Answer(503, R"({"ok":false,"error":"fatal_error"})");
  EXPECT_EQ(Call("chat.postMessage", {{"channel", "C1"}}).outcome, Outcome::kTransient);
  Answer(200, "<html>bad gateway</html>");
  EXPECT_EQ(Call("chat.postMessage", {{"channel", "C1"}}).outcome, Outcome::kTransient);
  Answer(200, R"({"ok":false,"error":"internal_error"})");
  EXPECT_EQ(Call("chat.postMessage", {{"channel", "C1"}}).outcome, Outcome::kTransient);
  EXPECT_NE(metrics_.RenderPrometheus().find(
                "parley_slack_api_errors_total{method=\"chat.postMessage\",error="
                "\"channel_not_found\"} 1"),
            std::string::npos)
      << metrics_.RenderPrometheus();
}

TEST_F(WebApiTest, RateLimitPausesOnlyItsKey) {
  Answer(429, R"({"ok":false,"error":"ratelimited"})", {{"Retry-After", "7"}});
  ApiResult r = Call("chat.postMessage", {{"channel", "C1"}}, Token::kBot, "chat.postMessage/C1");
  EXPECT_EQ(r.outcome, Outcome::kRateLimited);
  EXPECT_EQ(r.retry_after_ms, 7000);
  EXPECT_EQ(api_->PausedForMs("chat.postMessage/C1"), 7000);
  EXPECT_EQ(api_->PausedForMs("chat.postMessage/C2"), 0);
  EXPECT_EQ(api_->PausedForMs("reactions.add"), 0);
  clock_.Advance(6000);
  EXPECT_EQ(api_->PausedForMs("chat.postMessage/C1"), 1000);
  clock_.Advance(1500);
  EXPECT_EQ(api_->PausedForMs("chat.postMessage/C1"), 0);
  // A 429 without Retry-After waits a second.
  Answer(429, R"({"ok":false,"error":"ratelimited"})");
  EXPECT_EQ(Call("reactions.add", json::object()).retry_after_ms, 1000);
}

TEST_F(WebApiTest, TransportFailureIsTransient) {
  WebApi dead(http_, "http://127.0.0.1:1/api/", Secret("xoxb-bot"), Secret("xapp-app"), clock_,
              metrics_);
  std::promise<ApiResult> done;
  dead.Call("auth.test", json::object(), Token::kBot,
            [&](ApiResult r) { done.set_value(std::move(r)); });
  ApiResult r = done.get_future().get();
  EXPECT_EQ(r.outcome, Outcome::kTransient);
  EXPECT_EQ(r.http_status, 0);
}

TEST(ResponseUrlTest, OnlySlackHooksOrTheConfiguredApiHost) {
  const std::string slack = "https://slack.com/api/";
  EXPECT_TRUE(IsAllowedResponseUrl("https://hooks.slack.com/commands/T1/2/x", slack));
  EXPECT_FALSE(IsAllowedResponseUrl("http://hooks.slack.com/commands/T1/2/x", slack));
  EXPECT_FALSE(IsAllowedResponseUrl("https://hooks.slack.com.evil.example/x", slack));
  EXPECT_FALSE(IsAllowedResponseUrl("https://evil.example/commands", slack));
  EXPECT_FALSE(IsAllowedResponseUrl("https://user@hooks.slack.com/x", slack));
  EXPECT_FALSE(IsAllowedResponseUrl("not a url", slack));
  const std::string local = "http://127.0.0.1:4000/api/";
  EXPECT_TRUE(IsAllowedResponseUrl("http://127.0.0.1:4000/hooks/commands/T/1/s", local));
  EXPECT_FALSE(IsAllowedResponseUrl("http://127.0.0.1:4001/hooks/commands/T/1/s", local));
}

}  // namespace
}  // namespace parley::slack
