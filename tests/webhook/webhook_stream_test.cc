// WebhookAdapter streaming (POST /v1/messages?stream=1 / Accept: text/event-stream): the adapter
// behind a real net::HttpServer on 127.0.0.1 port 0, a fake InboundSink standing in for the
// router, and the test calling SendPartial/Send as the engine does.

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
#include <future>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "adapters/common/http_json.h"
#include "adapters/webhook/webhook_adapter.h"
#include "tests/support/recording_inbound_sink.h"
#include "tests/support/io_threads.h"
#include "tests/support/temp_dir.h"

namespace parley::webhook {
namespace {

using parley::testing::WaitFor;

namespace asio = boost::asio;
using nlohmann::json;
using std::chrono::milliseconds;
using SteadyClock = std::chrono::steady_clock;

constexpr char kSecret[] = "test-secret";

using FakeSink = parley::testing::RecordingInboundSink;

class FakeControl final : public ConversationControl {
 public:
  void Forget(const ConversationKey&, ForgetCallback done) override { done(size_t{0}); }
  void ForgetUser(const std::string&, const std::string&, ForgetCallback done) override {
    done(size_t{0});
  }
};

struct SseEvent {
  std::string event;
  json data;
};

// Splits a text/event-stream body into events; data must be JSON.
std::vector<SseEvent> ParseSse(const std::string& body) {
  std::vector<SseEvent> out;
  size_t pos = 0;
  while (pos < body.size()) {
    size_t end = body.find("\n\n", pos);
    if (end == std::string::npos) end = body.size();
    std::string block = body.substr(pos, end - pos);
    pos = end + 2;
    SseEvent e;
    size_t line_start = 0;
    while (line_start < block.size()) {
      size_t line_end = block.find('\n', line_start);
      if (line_end == std::string::npos) line_end = block.size();
      const std::string line = block.substr(line_start, line_end - line_start);
      if (line.rfind("event: ", 0) == 0) e.event = line.substr(7);
      if (line.rfind("data: ", 0) == 0) e.data = json::parse(line.substr(6), nullptr, false);
      line_start = line_end + 1;
    }
    if (!e.event.empty()) out.push_back(std::move(e));
  }
  return out;
}

class WebhookStreamTest : public ::testing::Test {
 protected:
  WebhookStreamTest() : work_(io_.get_executor()) {}

  void SetUp() override {
    auto kv = store::OpenLevelDb(dir_.Sub("db"));
    ASSERT_TRUE(kv.ok()) << kv.status().ToString();
    kv_ = std::move(*kv);
    committer_ = std::make_unique<store::Committer>(*kv_);
    config::WebhookConfig config;
    config.secret = Secret(kSecret);
    adapter_ = std::make_shared<WebhookAdapter>(io_, config, nullptr, *kv_, *committer_, control_,
                                                clock_, metrics_);
    ASSERT_TRUE(adapter_->Start(sink_).ok());
    server_ = std::make_unique<net::HttpServer>(
        io_, net::HttpServerOptions{},
        [adapter = adapter_](net::HttpRequest req, net::Responder respond) {
          if (!adapter->Handle(req, respond)) {
            respond(adapters::JsonError(404, "not_found", "no such path"));
          }
        });
    auto port = server_->ListenTcp("127.0.0.1", 0);
    ASSERT_TRUE(port.ok());
    port_ = *port;
    for (int i = 0; i < 2; ++i) threads_.emplace_back([this] { io_.run(); });
  }

  void TearDown() override {
    if (server_) server_->Stop();
    work_.reset();
    io_.stop();
    for (auto& t : threads_) t.join();
    server_.reset();
    adapter_.reset();
    committer_.reset();
  }

  net::ClientRequest Post(const std::string& target, const json& body, bool sign = true) {
    net::ClientRequest r;
    r.method = "POST";
    r.url = "http://127.0.0.1:" + std::to_string(port_) + target;
    r.body = body.dump();
    r.timeout_ms = 10'000;
    r.headers.emplace_back("Content-Type", "application/json");
    const std::string ts = std::to_string(clock_.NowSeconds());
    r.headers.emplace_back("X-Parley-Timestamp", ts);
    r.headers.emplace_back("X-Parley-Signature", sign ? Sign(kSecret, ts, r.body) : "v1=00");
    return r;
  }

  // Starts a request in the background (BlockingRequest has its own io_context).
  std::future<Result<net::ClientResponse>> Start(net::ClientRequest request) {
    return std::async(std::launch::async,
                      [request]() mutable { return net::BlockingRequest(std::move(request)); });
  }

  // The reply the engine would produce for sink message i.
  OutboundMessage ReplyTo(size_t i, const std::string& text) {
    InboundMessage in = sink_.message(i);
    OutboundMessage out;
    out.id = "reply-" + in.event_id;
    out.conversation = in.conversation();
    out.text = text;
    out.in_reply_to = in.event_id;
    out.reply_route = in.reply_route;
    out.turn_id = "turn-1";
    return out;
  }

  Status SendFinal(OutboundMessage message) {
    std::promise<Status> delivered;
    auto future = delivered.get_future();
    adapter_->Send(std::move(message), [&delivered](Status s) { delivered.set_value(s); });
    return future.get();  // Send's done runs before Send returns in sync mode
  }

  asio::io_context io_;
  asio::executor_work_guard<asio::io_context::executor_type> work_;
  std::vector<std::thread> threads_;
  testing::TempDir dir_;
  std::unique_ptr<store::KvStore> kv_;
  std::unique_ptr<store::Committer> committer_;
  FakeControl control_;
  ManualClock clock_{SystemClock::Instance().NowMs()};
  MetricsRegistry metrics_;
  FakeSink sink_;
  std::shared_ptr<WebhookAdapter> adapter_;
  std::unique_ptr<net::HttpServer> server_;
  uint16_t port_ = 0;
};

const json kMessage = {{"conversation", "c1"}, {"user", "u1"}, {"text", "hello?"}};

TEST_F(WebhookStreamTest, PartialsBecomeDeltasThenOneMessageEvent) {
  auto response = Start(Post("/v1/messages?stream=1", kMessage));
  ASSERT_TRUE(WaitFor([&] { return sink_.count() == 1; }));
  for (const char* text : {"Hel", "Hello", "Hello", "Hello, wor", "Hello, world"}) {
    adapter_->SendPartial(ReplyTo(0, text));
  }
  OutboundMessage final_reply = ReplyTo(0, "Hello, world!");
  final_reply.citations.push_back(Citation{"Install", "install.md", "Install > Linux", ""});
  final_reply.confidence = 0.75;
  EXPECT_TRUE(SendFinal(final_reply).ok());

  auto result = response.get();
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  EXPECT_EQ(result->status, 200);
  EXPECT_EQ(net::FindHeader(result->headers, "content-type").rfind("text/event-stream", 0), 0u);
  EXPECT_EQ(net::FindHeader(result->headers, "cache-control"), "no-cache");
  auto events = ParseSse(result->body);
  ASSERT_EQ(events.size(), 5u) << result->body;
  const std::vector<std::string> deltas = {"Hel", "lo", ", wor", "ld"};
  for (size_t i = 0; i < deltas.size(); ++i) {
    EXPECT_EQ(events[i].event, "delta");
    EXPECT_EQ(events[i].data, (json{{"id", final_reply.id}, {"text", deltas[i]}}));
  }
  EXPECT_EQ(events[4].event, "message");
  // Exactly the body of the non-streaming response.
  EXPECT_EQ(events[4].data, adapters::ReplyJson(final_reply));
  // Synchronous intake is not durable, as without streaming.
  EXPECT_TRUE(WaitFor([&] { return server_->InFlight() == 0; }));
}

TEST_F(WebhookStreamTest, RewriteIsSentAsReplace) {
  auto response = Start(Post("/v1/messages?x=y&stream=true", kMessage));
  ASSERT_TRUE(WaitFor([&] { return sink_.count() == 1; }));
  adapter_->SendPartial(ReplyTo(0, "Hello"));
  adapter_->SendPartial(ReplyTo(0, "Help"));
  adapter_->SendPartial(ReplyTo(0, "Help me"));
  EXPECT_TRUE(SendFinal(ReplyTo(0, "Help me, please")).ok());
  auto result = response.get();
  ASSERT_TRUE(result.ok());
  auto events = ParseSse(result->body);
  ASSERT_EQ(events.size(), 4u) << result->body;
  EXPECT_EQ(events[0].event, "delta");
  EXPECT_EQ(events[0].data["text"], "Hello");
  EXPECT_EQ(events[1].event, "replace");
  EXPECT_EQ(events[1].data["text"], "Help");
  EXPECT_EQ(events[2].event, "delta");
  EXPECT_EQ(events[2].data["text"], " me");
  EXPECT_EQ(events[3].event, "message");
  EXPECT_EQ(events[3].data["text"], "Help me, please");
}

TEST_F(WebhookStreamTest, DeltaNeverSplitsAUtf8Character) {
  auto response = Start(Post("/v1/messages?stream=1", kMessage));
  ASSERT_TRUE(WaitFor([&] { return sink_.count() == 1; }));
  adapter_->SendPartial(ReplyTo(0, "caf\xC3"));               // half of "é"
  adapter_->SendPartial(ReplyTo(0, "caf\xC3\xA9 \xE2\x82"));  // "café " + 2/3 of "€"
  adapter_->SendPartial(ReplyTo(0, "caf\xC3\xA9 \xE2\x82\xAC"));
  EXPECT_TRUE(SendFinal(ReplyTo(0, "caf\xC3\xA9 \xE2\x82\xAC")).ok());
  auto result = response.get();
  ASSERT_TRUE(result.ok());
  auto events = ParseSse(result->body);
  ASSERT_EQ(events.size(), 4u) << result->body;
  EXPECT_EQ(events[0].data["text"], "caf");
  EXPECT_EQ(events[1].data["text"], "\xC3\xA9 ");
  EXPECT_EQ(events[2].data["text"], "\xE2\x82\xAC");
  EXPECT_EQ(events[3].event, "message");
}

TEST_F(WebhookStreamTest, WithoutPartialsOnlyTheMessageEvent) {
  net::ClientRequest request = Post("/v1/messages", kMessage);
  request.headers.emplace_back("Accept", "text/event-stream");
  auto response = Start(std::move(request));
  ASSERT_TRUE(WaitFor([&] { return sink_.count() == 1; }));
  OutboundMessage final_reply = ReplyTo(0, "From the docs: run `apt install parley`.");
  EXPECT_TRUE(SendFinal(final_reply).ok());
  auto result = response.get();
  ASSERT_TRUE(result.ok());
  EXPECT_EQ(result->status, 200);
  auto events = ParseSse(result->body);
  ASSERT_EQ(events.size(), 1u) << result->body;
  EXPECT_EQ(events[0].event, "message");
  EXPECT_EQ(events[0].data, adapters::ReplyJson(final_reply));
}

TEST_F(WebhookStreamTest, WithoutTheFlagTheAnswerIsPlainJsonAndPartialsAreIgnored) {
  auto response = Start(Post("/v1/messages?stream=0", kMessage));
  ASSERT_TRUE(WaitFor([&] { return sink_.count() == 1; }));
  adapter_->SendPartial(ReplyTo(0, "Hel"));
  OutboundMessage final_reply = ReplyTo(0, "Hello");
  EXPECT_TRUE(SendFinal(final_reply).ok());
  auto result = response.get();
  ASSERT_TRUE(result.ok());
  EXPECT_EQ(result->status, 200);
  EXPECT_EQ(net::FindHeader(result->headers, "content-type"), "application/json");
  EXPECT_EQ(json::parse(result->body), adapters::ReplyJson(final_reply));
}

TEST_F(WebhookStreamTest, ErrorsBeforeTheTurnKeepTheirJsonResponses) {
  // Bad signature.
  auto bad = net::BlockingRequest(Post("/v1/messages?stream=1", kMessage, /*sign=*/false));
  ASSERT_TRUE(bad.ok());
  EXPECT_EQ(bad->status, 401);
  EXPECT_EQ(json::parse(bad->body)["error"], "bad_signature");
  // Bad JSON.
  net::ClientRequest broken = Post("/v1/messages?stream=1", kMessage);
  broken.body = "{not json";
  broken.headers.pop_back();
  broken.headers.emplace_back("X-Parley-Signature",
                              Sign(kSecret, std::to_string(clock_.NowSeconds()), broken.body));
  auto invalid = net::BlockingRequest(broken);
  ASSERT_TRUE(invalid.ok());
  EXPECT_EQ(invalid->status, 400);
  // Rate limited by the router.
  sink_.AnswerNextWith({Status::ResourceExhausted("slow down"), 2500});
  auto limited = net::BlockingRequest(Post("/v1/messages?stream=1", kMessage));
  ASSERT_TRUE(limited.ok());
  EXPECT_EQ(limited->status, 429);
  EXPECT_EQ(net::FindHeader(limited->headers, "retry-after"), "3");
  EXPECT_EQ(json::parse(limited->body)["error"], "rate_limited");
  // Duplicate event id.
  sink_.AnswerNextWith({Status::AlreadyExists("seen"), 0});
  json with_id = kMessage;
  with_id["id"] = "evt-1";
  auto duplicate = net::BlockingRequest(Post("/v1/messages?stream=1", with_id));
  ASSERT_TRUE(duplicate.ok());
  EXPECT_EQ(duplicate->status, 409);
  EXPECT_EQ(json::parse(duplicate->body)["error"], "duplicate");
  EXPECT_EQ(net::FindHeader(duplicate->headers, "content-type"), "application/json");

  // A request whose id is in progress (streaming) refuses a second one with 409 JSON.
  sink_.AnswerNextWith({Status::Ok(), 0});
  with_id["id"] = "evt-2";
  const size_t before = sink_.count();
  auto first = Start(Post("/v1/messages?stream=1", with_id));
  ASSERT_TRUE(WaitFor([&] { return sink_.count() == before + 1; }));
  auto second = net::BlockingRequest(Post("/v1/messages?stream=1", with_id));
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(second->status, 409);
  EXPECT_TRUE(SendFinal(ReplyTo(before, "done")).ok());
  auto first_result = first.get();
  ASSERT_TRUE(first_result.ok());
  EXPECT_EQ(first_result->status, 200);
  auto events = ParseSse(first_result->body);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].data["text"], "done");
}

TEST_F(WebhookStreamTest, WithReplyUrlTheFlagIsIgnored) {
  json with_url = kMessage;
  with_url["reply_url"] = "http://127.0.0.1:9/callback";
  auto result = net::BlockingRequest(Post("/v1/messages?stream=1", with_url));
  ASSERT_TRUE(result.ok());
  EXPECT_EQ(result->status, 202);
  EXPECT_EQ(json::parse(result->body)["status"], "accepted");
  ASSERT_EQ(sink_.count(), 1u);
  adapter_->SendPartial(ReplyTo(0, "ignored"));  // callback mode does not stream
}

// A plain socket client that reads the start of the stream and hangs up.
class HangingUpClient {
 public:
  explicit HangingUpClient(uint16_t port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    timeval tv{5, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  }
  ~HangingUpClient() { Close(); }
  bool connected() const { return connected_; }
  bool Send(const std::string& data) {
    return ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(data.size());
  }
  bool ReadUntil(const std::string& needle) {
    while (buffer_.find(needle) == std::string::npos) {
      char chunk[4096];
      ssize_t n = ::recv(fd_, chunk, sizeof(chunk), 0);
      if (n <= 0) return false;
      buffer_.append(chunk, static_cast<size_t>(n));
    }
    return true;
  }
  void Close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
  bool connected_ = false;
  std::string buffer_;
};

TEST_F(WebhookStreamTest, ClientHangingUpMidStreamChangesNothingElse) {
  net::ClientRequest request = Post("/v1/messages?stream=1", kMessage);
  HangingUpClient client(port_);
  ASSERT_TRUE(client.connected());
  std::string raw = "POST /v1/messages?stream=1 HTTP/1.1\r\nHost: x\r\n";
  for (const auto& [name, value] : request.headers) raw += name + ": " + value + "\r\n";
  raw += "Content-Length: " + std::to_string(request.body.size()) + "\r\n\r\n" + request.body;
  ASSERT_TRUE(client.Send(raw));
  ASSERT_TRUE(WaitFor([&] { return sink_.count() == 1; }));
  adapter_->SendPartial(ReplyTo(0, "Partial"));
  ASSERT_TRUE(client.ReadUntil("Partial"));
  client.Close();
  ASSERT_TRUE(WaitFor([&] { return server_->InFlight() == 0; }));  // the hang-up was seen
  adapter_->SendPartial(ReplyTo(0, "Partial answer"));             // harmless
  // The turn completes; delivery reports that nobody was listening.
  Status delivered = SendFinal(ReplyTo(0, "Partial answer, complete."));
  EXPECT_EQ(delivered.code(), Status::Code::kUnavailable) << delivered.ToString();
  // Nothing is left waiting under that id: the same id is accepted again.
  json with_id = kMessage;
  with_id["id"] = sink_.message(0).event_id;
  auto again = Start(Post("/v1/messages?stream=1", with_id));
  ASSERT_TRUE(WaitFor([&] { return sink_.count() == 2; }));
  EXPECT_TRUE(SendFinal(ReplyTo(1, "again")).ok());
  auto result = again.get();
  ASSERT_TRUE(result.ok());
  EXPECT_EQ(result->status, 200);
}

TEST_F(WebhookStreamTest, StopEndsOpenStreamsWithAnErrorEvent) {
  auto response = Start(Post("/v1/messages?stream=1", kMessage));
  ASSERT_TRUE(WaitFor([&] { return sink_.count() == 1; }));
  adapter_->SendPartial(ReplyTo(0, "Half"));
  server_->Stop();
  bool stopped = false;
  adapter_->Stop([&] { stopped = true; });
  EXPECT_TRUE(stopped);
  auto result = response.get();
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  auto events = ParseSse(result->body);
  ASSERT_EQ(events.size(), 2u) << result->body;
  EXPECT_EQ(events[0].event, "delta");
  EXPECT_EQ(events[1].event, "error");
  EXPECT_EQ(events[1].data["error"], "unavailable");
  // A late reply finds nobody waiting.
  EXPECT_FALSE(SendFinal(ReplyTo(0, "Half done")).ok());
  EXPECT_TRUE(WaitFor([&] { return server_->InFlight() == 0; }));
}

}  // namespace
}  // namespace parley::webhook
