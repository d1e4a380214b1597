// The OpenAI-compatible LLM client over the real curl HTTP client against the scripted fake LLM
// server (tests/fakes/llm): streaming, tool calls, retries, timeouts, the circuit breaker and the
// request the server received.

#include "llm/client.h"

#include <gtest/gtest.h>

#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "tests/fakes/llm/llm_server.h"
#include "tests/support/io_threads.h"

namespace parley::llm {
namespace {

using parley::testing::IoThreads;
using parley::testing::WaitFor;

namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;
using Kind = testing::LlmReply::Kind;
using nlohmann::json;
using std::chrono::milliseconds;
using testing::LlmReply;
using testing::LlmServer;

// Everything one Complete() call reported.
struct Observed {
  std::mutex mu;
  std::vector<std::string> deltas;
  std::optional<Result<ChatResult>> result;
  int done_calls = 0;
  bool delta_after_done = false;
  bool done_on_caller_thread = false;
};

struct CallOutcome {
  std::vector<std::string> deltas;
  Result<ChatResult> result = Status::Internal("test: no result");
  Clock::duration elapsed{};
  std::string text() const {
    std::string out;
    for (const auto& d : deltas) out += d;
    return out;
  }
};

class LlmClientTest : public ::testing::Test {
 protected:
  LlmOptions Options() {
    LlmOptions o;
    o.base_url = server_.base_url();
    o.api_key = Secret("sk-test");
    o.model = "test-model";
    o.headers = {{"X-Parley-Test", "1"}};
    o.connect_timeout_ms = 2'000;
    o.first_token_timeout_ms = 3'000;
    o.idle_timeout_ms = 3'000;
    o.total_timeout_ms = 8'000;
    o.retry_base_ms = 20;
    o.retry_max_ms = 2'000;
    o.breaker_failures = 100;
    o.breaker_cooldown_ms = 1'000;
    return o;
  }

  std::shared_ptr<LlmClient> Client(LlmOptions o) {
    return MakeOpenAiClient(io_.io, http_, std::move(o), metrics_);
  }

  static ChatRequest UserRequest(const std::string& text, bool stream = true) {
    ChatRequest req;
    req.messages.push_back({"system", "You are terse.", {}, ""});
    req.messages.push_back({"user", text, {}, ""});
    req.stream = stream;
    return req;
  }

  // Runs one call to completion (bounded) and checks the callback contract on the way.
  CallOutcome Run(LlmClient& client, ChatRequest req, milliseconds limit = milliseconds(12'000)) {
    auto seen = std::make_shared<Observed>();
    const auto caller = std::this_thread::get_id();
    const auto start = Clock::now();
    client.Complete(
        std::move(req),
        [seen](std::string_view text) {
          std::lock_guard<std::mutex> lock(seen->mu);
          if (seen->done_calls > 0) seen->delta_after_done = true;
          seen->deltas.emplace_back(text);
        },
        [seen, caller](Result<ChatResult> r) {
          std::lock_guard<std::mutex> lock(seen->mu);
          if (std::this_thread::get_id() == caller) seen->done_on_caller_thread = true;
          ++seen->done_calls;
          if (!seen->result) seen->result.emplace(std::move(r));
        });
    const auto deadline = Clock::now() + limit;
    CallOutcome out;
    while (Clock::now() < deadline) {
      {
        std::lock_guard<std::mutex> lock(seen->mu);
        if (seen->result) {
          out.elapsed = Clock::now() - start;
          out.deltas = seen->deltas;
          out.result = *seen->result;
          EXPECT_EQ(seen->done_calls, 1);
          EXPECT_FALSE(seen->delta_after_done);
          EXPECT_FALSE(seen->done_on_caller_thread);
          observed_.push_back(seen);
          return out;
        }
      }
      std::this_thread::sleep_for(milliseconds(2));
    }
    ADD_FAILURE() << "no on_done within " << limit.count() << " ms";
    return out;
  }

  void TearDown() override {
    for (const auto& seen : observed_) {
      std::lock_guard<std::mutex> lock(seen->mu);
      EXPECT_EQ(seen->done_calls, 1);
      EXPECT_FALSE(seen->delta_after_done);
    }
  }

  std::string Metrics() const { return metrics_.RenderPrometheus(); }

  IoThreads io_{2};
  std::shared_ptr<net::HttpClient> http_ = net::MakeCurlHttpClient(io_.io);
  LlmServer server_;
  MetricsRegistry metrics_;
  std::vector<std::shared_ptr<Observed>> observed_;
};

LlmReply Text(const std::string& text) {
  LlmReply r;
  r.kind = Kind::kText;
  r.text = text;
  return r;
}

LlmReply HttpError(int status, int retry_after_s = -1) {
  LlmReply r;
  r.kind = Kind::kHttpError;
  r.status = status;
  r.retry_after_s = retry_after_s;
  return r;
}

LlmReply OfKind(Kind kind, const std::string& text = "abcdefghijklmnop") {
  LlmReply r;
  r.kind = kind;
  r.text = text;
  r.chunk_chars = 2;
  return r;
}

TEST_F(LlmClientTest, StreamsTextDeltasInOrderAndSendsTheRightRequest) {
  auto client = Client(Options());
  LlmReply reply = Text("The quick brown fox jumps over the lazy dog.");
  reply.chunk_chars = 4;
  reply.split_bytes = 7;  // events cut anywhere on the wire
  reply.prompt_tokens = 11;
  reply.completion_tokens = 9;
  server_.Push(reply);
  ChatRequest req = UserRequest("Tell me about foxes.");
  req.tools.push_back({"get_weather", "Weather now",
                       json{{"type", "object"}, {"properties", {{"city", {{"type", "string"}}}}}}});
  CallOutcome out = Run(*client, req);
  ASSERT_TRUE(out.result.ok()) << out.result.status().ToString();
  EXPECT_EQ(out.text(), "The quick brown fox jumps over the lazy dog.");
  EXPECT_GE(out.deltas.size(), 10u);
  for (const auto& d : out.deltas) EXPECT_LE(d.size(), 4u);
  EXPECT_EQ(out.result->content, "The quick brown fox jumps over the lazy dog.");
  EXPECT_EQ(out.result->finish_reason, "stop");
  EXPECT_TRUE(out.result->tool_calls.empty());
  EXPECT_TRUE(out.result->usage.present);
  EXPECT_EQ(out.result->usage.prompt_tokens, 11);
  EXPECT_EQ(out.result->usage.completion_tokens, 9);

  ASSERT_EQ(server_.RequestCount(), 1u);
  const json body = server_.Requests()[0];
  EXPECT_EQ(body["model"], "test-model");
  EXPECT_EQ(body["stream"], true);
  EXPECT_EQ(body["stream_options"]["include_usage"], true);
  ASSERT_EQ(body["messages"].size(), 2u);
  EXPECT_EQ(body["messages"][0]["role"], "system");
  EXPECT_EQ(body["messages"][1]["role"], "user");
  EXPECT_EQ(body["messages"][1]["content"], "Tell me about foxes.");
  ASSERT_EQ(body["tools"].size(), 1u);
  EXPECT_EQ(body["tools"][0]["function"]["name"], "get_weather");
  const auto headers = server_.RequestHeaders()[0];
  bool saw_extra = false, saw_auth = false;
  for (const auto& [name, value] : headers) {
    if (name == "X-Parley-Test" && value == "1") saw_extra = true;
    if (name == "Authorization" && value == "Bearer sk-test") saw_auth = true;
  }
  EXPECT_TRUE(saw_extra);
  EXPECT_TRUE(saw_auth);
  const std::string m = Metrics();
  EXPECT_NE(m.find("parley_llm_requests_total{result=\"ok\"} 1"), std::string::npos) << m;
  EXPECT_NE(m.find("parley_llm_tokens_total{kind=\"prompt\"} 11"), std::string::npos) << m;
  EXPECT_NE(m.find("parley_llm_first_token_seconds_count 1"), std::string::npos) << m;
}

TEST_F(LlmClientTest, CrlfPingsAndNoDoneWithFinishReasonAreAccepted) {
  auto client = Client(Options());
  LlmReply reply = Text("pings and carriage returns");
  reply.kind = Kind::kNoDone;
  reply.crlf = true;
  reply.comment_pings = true;
  reply.split_bytes = 3;
  server_.Push(reply);
  CallOutcome out = Run(*client, UserRequest("hi"));
  ASSERT_TRUE(out.result.ok()) << out.result.status().ToString();
  EXPECT_EQ(out.text(), "pings and carriage returns");
  EXPECT_EQ(out.result->finish_reason, "stop");
}

TEST_F(LlmClientTest, NonStreamingPassesTheWholeAnswerOnce) {
  auto client = Client(Options());
  server_.Push(Text("A whole answer."));
  CallOutcome out = Run(*client, UserRequest("hi", /*stream=*/false));
  ASSERT_TRUE(out.result.ok()) << out.result.status().ToString();
  EXPECT_EQ(out.deltas, (std::vector<std::string>{"A whole answer."}));
  EXPECT_EQ(out.result->content, "A whole answer.");
  const json body = server_.Requests().at(0);
  EXPECT_FALSE(body.contains("stream_options"));
  EXPECT_NE(body.value("stream", false), true);
}

LlmReply TwoToolCalls(bool whole) {
  LlmReply r;
  r.kind = Kind::kToolCalls;
  r.tool_calls = {{"call_weather1", "get_weather", "{\"city\":\"Paris\",\"unit\":\"C\"}"},
                  {"", "get_time", "{\"tz\":\"Europe/Paris\"}"}};
  r.chunk_chars = 3;
  r.whole_tool_calls = whole;
  return r;
}

void ExpectTwoToolCalls(const CallOutcome& out) {
  ASSERT_TRUE(out.result.ok()) << out.result.status().ToString();
  EXPECT_TRUE(out.deltas.empty());
  EXPECT_EQ(out.result->finish_reason, "tool_calls");
  ASSERT_EQ(out.result->tool_calls.size(), 2u);
  EXPECT_EQ(out.result->tool_calls[0].id, "call_weather1");
  EXPECT_EQ(out.result->tool_calls[0].name, "get_weather");
  EXPECT_EQ(out.result->tool_calls[0].arguments, "{\"city\":\"Paris\",\"unit\":\"C\"}");
  EXPECT_EQ(out.result->tool_calls[1].id.rfind("call_", 0), 0u);
  EXPECT_NE(out.result->tool_calls[1].id, "call_weather1");
  EXPECT_EQ(out.result->tool_calls[1].name, "get_time");
  EXPECT_EQ(out.result->tool_calls[1].arguments, "{\"tz\":\"Europe/Paris\"}");
}

TEST_F(LlmClientTest, FragmentedToolCalls) {
  auto client = Client(Options());
  server_.Push(TwoToolCalls(/*whole=*/false));
  ExpectTwoToolCalls(Run(*client, UserRequest("weather and time?")));
}

TEST_F(LlmClientTest, WholeToolCallsOllamaStyle) {
  auto client = Client(Options());
  server_.Push(TwoToolCalls(/*whole=*/true));
  ExpectTwoToolCalls(Run(*client, UserRequest("weather and time?")));
}

TEST_F(LlmClientTest, ToolRoundTripIsEchoedToTheServer) {
  auto client = Client(Options());
  server_.Push(Text("It is 21 C."));
  ChatRequest req = UserRequest("weather?");
  ChatMessage assistant;
  assistant.role = "assistant";
  assistant.tool_calls = {{"call_w", "get_weather", "{\"city\":\"Paris\"}"}};
  req.messages.push_back(assistant);
  req.messages.push_back({"tool", "{\"temp\":21}", {}, "call_w"});
  CallOutcome out = Run(*client, req);
  ASSERT_TRUE(out.result.ok()) << out.result.status().ToString();
  const json body = server_.Requests().at(0);
  ASSERT_EQ(body["messages"].size(), 4u);
  EXPECT_TRUE(body["messages"][2]["content"].is_null());
  EXPECT_EQ(body["messages"][2]["tool_calls"][0]["id"], "call_w");
  EXPECT_EQ(body["messages"][2]["tool_calls"][0]["type"], "function");
  EXPECT_EQ(body["messages"][3]["role"], "tool");
  EXPECT_EQ(body["messages"][3]["tool_call_id"], "call_w");
}

TEST_F(LlmClientTest, RateLimitWithRetryAfterIsRetriedAfterTheWait) {
  auto client = Client(Options());
  server_.Push(HttpError(429, /*retry_after_s=*/1));
  server_.Push(Text("after the wait"));
  CallOutcome out = Run(*client, UserRequest("hi"));
  ASSERT_TRUE(out.result.ok()) << out.result.status().ToString();
  EXPECT_EQ(out.text(), "after the wait");
  EXPECT_EQ(server_.RequestCount(), 2u);
  EXPECT_GE(out.elapsed, milliseconds(950));  // Retry-After: 1 honoured (backoff would be ~20 ms)
  EXPECT_NE(Metrics().find("parley_llm_retries_total 1"), std::string::npos);
}

TEST_F(LlmClientTest, RetryAfterLongerThanRetryMaxIsNotRetried) {
  LlmOptions o = Options();
  o.retry_max_ms = 500;
  auto client = Client(o);
  server_.Push(HttpError(429, /*retry_after_s=*/2));
  server_.Push(Text("never"));
  CallOutcome out = Run(*client, UserRequest("hi"));
  ASSERT_FALSE(out.result.ok());
  EXPECT_EQ(out.result.status().code(), Status::Code::kResourceExhausted);
  EXPECT_EQ(server_.RequestCount(), 1u);
  EXPECT_LT(out.elapsed, milliseconds(1500));
}

TEST_F(LlmClientTest, ServerErrorsAreRetriedUpToMaxRetries) {
  auto client = Client(Options());
  server_.Push(HttpError(500));
  server_.Push(HttpError(503));
  server_.Push(Text("third time lucky"));
  CallOutcome ok = Run(*client, UserRequest("hi"));
  ASSERT_TRUE(ok.result.ok()) << ok.result.status().ToString();
  EXPECT_EQ(ok.text(), "third time lucky");
  EXPECT_EQ(server_.RequestCount(), 3u);

  for (int i = 0; i < 4; ++i) server_.Push(HttpError(502));
  CallOutcome failed = Run(*client, UserRequest("hi"));
  ASSERT_FALSE(failed.result.ok());
  EXPECT_EQ(failed.result.status().code(), Status::Code::kUnavailable);
  EXPECT_EQ(server_.RequestCount(), 6u);  // 1 + max_retries (2)
  EXPECT_EQ(server_.Pending(), 1u);
}

TEST_F(LlmClientTest, UnauthorizedIsNotRetried) {
  auto client = Client(Options());
  server_.Push(HttpError(401));
  server_.Push(Text("never"));
  CallOutcome out = Run(*client, UserRequest("hi"));
  ASSERT_FALSE(out.result.ok());
  EXPECT_EQ(out.result.status().code(), Status::Code::kPermissionDenied);
  EXPECT_EQ(server_.RequestCount(), 1u);

  LlmOptions wrong_key = Options();
  wrong_key.api_key = Secret("sk-wrong");
  auto bad = Client(wrong_key);
  CallOutcome rejected = Run(*bad, UserRequest("hi"));
  ASSERT_FALSE(rejected.result.ok());
  EXPECT_EQ(rejected.result.status().code(), Status::Code::kPermissionDenied);
  EXPECT_NE(rejected.result.status().message().find("invalid_api_key"), std::string::npos);
  EXPECT_EQ(rejected.result.status().message().find("sk-wrong"), std::string::npos);
  EXPECT_EQ(server_.RequestCount(), 2u);
}

TEST_F(LlmClientTest, BadRequestIsNotRetried) {
  auto client = Client(Options());
  server_.Push(HttpError(400));
  CallOutcome out = Run(*client, UserRequest("hi"));
  EXPECT_EQ(out.result.status().code(), Status::Code::kInvalidArgument);
  EXPECT_EQ(server_.RequestCount(), 1u);
}

TEST_F(LlmClientTest, DropBeforeHeadersIsRetried) {
  auto client = Client(Options());
  server_.Push(OfKind(Kind::kDropBeforeHeaders));
  server_.Push(Text("second try"));
  CallOutcome out = Run(*client, UserRequest("hi"));
  ASSERT_TRUE(out.result.ok()) << out.result.status().ToString();
  EXPECT_EQ(out.text(), "second try");
  EXPECT_EQ(server_.RequestCount(), 2u);
}

TEST_F(LlmClientTest, DropMidStreamAfterDeltasIsNotRetried) {
  auto client = Client(Options());
  LlmReply drop = OfKind(Kind::kDropMidStream, "abcdefghijklmnopqrstuvwxyz");
  drop.drop_after_chunks = 4;  // the role chunk and three deltas
  server_.Push(drop);
  server_.Push(Text("must not be used"));
  CallOutcome out = Run(*client, UserRequest("hi"));
  ASSERT_FALSE(out.result.ok());
  const Status::Code code = out.result.status().code();
  EXPECT_TRUE(code == Status::Code::kUnavailable || code == Status::Code::kCorruption)
      << out.result.status().ToString();
  EXPECT_FALSE(out.deltas.empty());
  EXPECT_EQ(out.text().substr(0, 2), "ab");
  EXPECT_EQ(server_.RequestCount(), 1u);
  EXPECT_EQ(server_.Pending(), 1u);
}

TEST_F(LlmClientTest, MalformedChunkIsCorruption) {
  auto client = Client(Options());
  server_.Push(OfKind(Kind::kMalformedChunk));
  CallOutcome out = Run(*client, UserRequest("hi"));
  ASSERT_FALSE(out.result.ok());
  EXPECT_EQ(out.result.status().code(), Status::Code::kCorruption);
  EXPECT_EQ(server_.RequestCount(), 1u);
}

TEST_F(LlmClientTest, InBandErrorEndsTheCallWithTheMappedStatus) {
  auto client = Client(Options());
  LlmReply reply = OfKind(Kind::kInBandError);
  reply.drop_after_chunks = 3;
  server_.Push(reply);
  CallOutcome out = Run(*client, UserRequest("hi"));
  ASSERT_FALSE(out.result.ok());
  EXPECT_EQ(out.result.status().code(), Status::Code::kUnavailable);
  EXPECT_EQ(out.text(), "abcd");  // the two deltas before the error
  EXPECT_EQ(server_.RequestCount(), 1u);

  LlmReply bad_request = OfKind(Kind::kInBandError);
  bad_request.error_body = R"({"error":{"message":"prompt too long","code":400}})";
  server_.Push(bad_request);
  CallOutcome invalid = Run(*client, UserRequest("hi"));
  EXPECT_EQ(invalid.result.status().code(), Status::Code::kInvalidArgument);
  EXPECT_NE(invalid.result.status().message().find("prompt too long"), std::string::npos);
}

TEST_F(LlmClientTest, FirstTokenTimeoutIsDeadlineExceededAndRetried) {
  LlmOptions o = Options();
  o.first_token_timeout_ms = 300;
  o.max_retries = 1;
  auto client = Client(o);
  LlmReply slow = Text("too late");
  slow.delay_ms = 3'000;
  server_.Push(slow);
  server_.Push(slow);
  CallOutcome out = Run(*client, UserRequest("hi"));
  ASSERT_FALSE(out.result.ok());
  EXPECT_EQ(out.result.status().code(), Status::Code::kDeadlineExceeded);
  EXPECT_EQ(server_.RequestCount(), 2u);
  EXPECT_GE(out.elapsed, milliseconds(600));
  EXPECT_LT(out.elapsed, milliseconds(2'000));

  server_.Push(slow);
  server_.Push(Text("fast"));
  CallOutcome retried = Run(*client, UserRequest("hi"));
  ASSERT_TRUE(retried.result.ok()) << retried.result.status().ToString();
  EXPECT_EQ(retried.text(), "fast");
}

TEST_F(LlmClientTest, IdleTimeoutAfterTheFirstChunk) {
  LlmOptions o = Options();
  o.idle_timeout_ms = 300;
  o.max_retries = 0;
  auto client = Client(o);
  LlmReply stall = OfKind(Kind::kStall);
  stall.stall_ms = 4'000;
  server_.Push(stall);
  CallOutcome out = Run(*client, UserRequest("hi"));
  ASSERT_FALSE(out.result.ok());
  EXPECT_EQ(out.result.status().code(), Status::Code::kDeadlineExceeded)
      << out.result.status().ToString();
  EXPECT_GE(out.elapsed, milliseconds(280));
  EXPECT_LT(out.elapsed, milliseconds(2'000));
}

TEST_F(LlmClientTest, TotalTimeoutBoundsATricklingStream) {
  LlmOptions o = Options();
  o.total_timeout_ms = 700;
  auto client = Client(o);
  LlmReply trickle = Text(std::string(200, 'x'));
  trickle.chunk_chars = 1;
  trickle.chunk_delay_ms = 50;  // 10 s in all, never idle for long
  server_.Push(trickle);
  CallOutcome out = Run(*client, UserRequest("hi"));
  ASSERT_FALSE(out.result.ok());
  EXPECT_EQ(out.result.status().code(), Status::Code::kDeadlineExceeded)
      << out.result.status().ToString();
  EXPECT_FALSE(out.deltas.empty());
  EXPECT_GE(out.elapsed, milliseconds(650));
  EXPECT_LT(out.elapsed, milliseconds(2'500));
  EXPECT_EQ(server_.RequestCount(), 1u);
}

TEST_F(LlmClientTest, StreamRequestAnsweredWithPlainJsonIsParsed) {
  // A server that ignores "stream": true (here net::HttpServer, not the fake).
  net::HttpServer plain(io_.io, {}, [](net::HttpRequest, net::Responder respond) {
    net::HttpResponse response;
    response.body =
        R"({"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":)"
        R"("assistant","content":"plain answer"},"finish_reason":"stop"}]})";
    respond(std::move(response));
  });
  auto port = plain.ListenTcp("127.0.0.1", 0);
  ASSERT_TRUE(port.ok());
  LlmOptions o = Options();
  o.base_url = "http://127.0.0.1:" + std::to_string(*port) + "/v1";
  auto client = Client(o);
  CallOutcome out = Run(*client, UserRequest("hi"));
  ASSERT_TRUE(out.result.ok()) << out.result.status().ToString();
  EXPECT_EQ(out.deltas, (std::vector<std::string>{"plain answer"}));
  EXPECT_EQ(out.result->finish_reason, "stop");
  plain.Stop();
}

TEST_F(LlmClientTest, BreakerOpensFailsFastAndHalfOpensAfterTheCooldown) {
  LlmOptions o = Options();
  o.max_retries = 0;
  o.breaker_failures = 2;
  o.breaker_cooldown_ms = 400;
  auto client = Client(o);
  server_.Push(HttpError(500));
  server_.Push(HttpError(500));
  EXPECT_EQ(Run(*client, UserRequest("1")).result.status().code(), Status::Code::kUnavailable);
  EXPECT_EQ(Run(*client, UserRequest("2")).result.status().code(), Status::Code::kUnavailable);
  ASSERT_EQ(server_.RequestCount(), 2u);
  EXPECT_NE(Metrics().find("parley_llm_breaker_open 1"), std::string::npos);

  CallOutcome fast = Run(*client, UserRequest("3"));
  ASSERT_FALSE(fast.result.ok());
  EXPECT_EQ(fast.result.status().code(), Status::Code::kUnavailable);
  EXPECT_EQ(fast.result.status().message(), "circuit open");
  EXPECT_EQ(server_.RequestCount(), 2u);  // no HTTP request

  // After the cooldown a trial call goes through; its failure reopens the breaker at once.
  server_.Push(HttpError(500));
  const auto deadline = Clock::now() + milliseconds(5'000);
  while (server_.RequestCount() < 3 && Clock::now() < deadline) {
    CallOutcome probe = Run(*client, UserRequest("probe"));
    if (server_.RequestCount() < 3) {
      EXPECT_EQ(probe.result.status().message(), "circuit open");
      std::this_thread::sleep_for(milliseconds(20));  // poll interval
    }
  }
  ASSERT_EQ(server_.RequestCount(), 3u);
  EXPECT_EQ(Run(*client, UserRequest("4")).result.status().message(), "circuit open");

  // Next cooldown: the trial succeeds and closes the breaker.
  server_.Push(Text("healthy again"));
  bool closed = false;
  const auto deadline2 = Clock::now() + milliseconds(5'000);
  while (!closed && Clock::now() < deadline2) {
    CallOutcome probe = Run(*client, UserRequest("probe"));
    closed = probe.result.ok();
    if (!closed) std::this_thread::sleep_for(milliseconds(20));
  }
  ASSERT_TRUE(closed);
  EXPECT_EQ(server_.RequestCount(), 4u);
  EXPECT_NE(Metrics().find("parley_llm_breaker_open 0"), std::string::npos);
  server_.Push(Text("and again"));
  CallOutcome after = Run(*client, UserRequest("5"));
  ASSERT_TRUE(after.result.ok()) << after.result.status().ToString();
  EXPECT_EQ(server_.RequestCount(), 5u);
}


TEST_F(LlmClientTest, CancelEndsTheCallAtOnceAndDoesNotTripTheBreaker) {
  LlmOptions o = Options();
  o.breaker_failures = 1;  // one counted failure would open the breaker
  o.first_token_timeout_ms = 20'000;
  o.total_timeout_ms = 30'000;
  auto client = Client(o);
  LlmReply slow = Text("far too late");
  slow.delay_ms = 6'000;
  server_.Push(slow);
  auto seen = std::make_shared<Observed>();
  std::shared_ptr<LlmCall> call = client->Complete(
      UserRequest("slow"),
      [seen](std::string_view text) {
        std::lock_guard<std::mutex> lock(seen->mu);
        seen->deltas.emplace_back(text);
      },
      [seen](Result<ChatResult> r) {
        std::lock_guard<std::mutex> lock(seen->mu);
        ++seen->done_calls;
        if (!seen->result) seen->result.emplace(std::move(r));
      });
  ASSERT_TRUE(server_.WaitForRequests(1, 5'000));
  const auto cancelled_at = Clock::now();
  call->Cancel();
  call->Cancel();  // twice is harmless
  ASSERT_TRUE(WaitFor([&] {
    std::lock_guard<std::mutex> lock(seen->mu);
    return seen->result.has_value();
  }));
  EXPECT_LT(Clock::now() - cancelled_at, milliseconds(3'000));  // not the model's 6 s
  {
    std::lock_guard<std::mutex> lock(seen->mu);
    ASSERT_FALSE(seen->result->ok());
    EXPECT_EQ(seen->result->status().message(), "cancelled");
    EXPECT_TRUE(seen->deltas.empty());
    EXPECT_EQ(seen->done_calls, 1);
  }
  EXPECT_NE(Metrics().find("parley_llm_requests_total{result=\"cancelled\"} 1"),
            std::string::npos)
      << Metrics();
  EXPECT_NE(Metrics().find("parley_llm_breaker_open 0"), std::string::npos);
  // The breaker stayed closed: the next call goes to the server and succeeds.
  server_.Push(Text("fine"));
  CallOutcome next = Run(*client, UserRequest("next"));
  ASSERT_TRUE(next.result.ok()) << next.result.status().ToString();
  EXPECT_EQ(next.text(), "fine");
  call->Cancel();  // after the end: nothing happens
}

// --- max_concurrent: the slot queue ---------------------------------------------------------

// A call started without waiting for it, and what it reported.
struct Launched {
  std::shared_ptr<LlmCall> handle;
  std::shared_ptr<Observed> seen;
  bool Done() const {
    std::lock_guard<std::mutex> lock(seen->mu);
    return seen->result.has_value();
  }
  Result<ChatResult> Outcome() const {
    std::lock_guard<std::mutex> lock(seen->mu);
    return seen->result ? *seen->result : Result<ChatResult>(Status::Internal("test: no result"));
  }
};

class LlmQueueTest : public LlmClientTest {
 protected:
  Launched Launch(LlmClient& client, const std::string& text) {
    Launched l;
    l.seen = std::make_shared<Observed>();
    auto seen = l.seen;
    l.handle = client.Complete(
        UserRequest(text),
        [seen](std::string_view delta) {
          std::lock_guard<std::mutex> lock(seen->mu);
          if (seen->done_calls > 0) seen->delta_after_done = true;
          seen->deltas.emplace_back(delta);
        },
        [seen](Result<ChatResult> r) {
          std::lock_guard<std::mutex> lock(seen->mu);
          ++seen->done_calls;
          if (!seen->result) seen->result.emplace(std::move(r));
        });
    observed_.push_back(seen);
    return l;
  }

  static bool AllDone(const std::vector<Launched>& calls) {
    for (const auto& c : calls) {
      if (!c.Done()) return false;
    }
    return true;
  }

  // Every request is answered "You said: <text>" after delay_ms.
  void AnswerAfter(int delay_ms) {
    server_.SetResponder([delay_ms](const json& request) {
      LlmReply r;
      r.kind = Kind::kText;
      r.text = "You said: " + request["messages"].back()["content"].get<std::string>();
      r.delay_ms = delay_ms;
      return r;
    });
  }

  // The user text of every request the server received, in arrival order.
  std::vector<std::string> ServerSaw() const {
    std::vector<std::string> out;
    for (const json& body : server_.Requests()) {
      out.push_back(body["messages"].back()["content"].get<std::string>());
    }
    return out;
  }

  bool HasMetric(const std::string& line) const {
    return Metrics().find(line + "\n") != std::string::npos;
  }
};

TEST_F(LlmQueueTest, AtMostMaxConcurrentCallsReachTheServerAndTheRestStartInOrder) {
  LlmOptions o = Options();
  o.max_concurrent = 3;
  auto client = Client(o);
  AnswerAfter(400);
  std::vector<Launched> calls;
  for (int i = 0; i < 10; ++i) calls.push_back(Launch(*client, "call " + std::to_string(i)));
  // 400 ms before any answer: three calls hold a slot, seven wait.
  EXPECT_TRUE(HasMetric("parley_llm_in_flight 3")) << Metrics();
  EXPECT_TRUE(HasMetric("parley_llm_queued 7")) << Metrics();
  ASSERT_TRUE(WaitFor([&] { return AllDone(calls); }, milliseconds(15'000)));
  for (int i = 0; i < 10; ++i) {
    Result<ChatResult> r = calls[i].Outcome();
    ASSERT_TRUE(r.ok()) << i << ": " << r.status().ToString();
    EXPECT_EQ(r->content, "You said: call " + std::to_string(i));
  }
  EXPECT_EQ(server_.MaxConcurrent(), 3u);
  // FIFO: the calls start in waves of three (a wave's calls start at about the same time and
  // may reach the server in any order among themselves, but never before an earlier wave).
  const std::vector<std::string> saw = ServerSaw();
  ASSERT_EQ(saw.size(), 10u);
  for (size_t position = 0; position < saw.size(); ++position) {
    const int call = std::stoi(saw[position].substr(5));
    EXPECT_EQ(static_cast<size_t>(call) / 3, position / 3)
        << "call " << call << " was request " << position;
  }
  EXPECT_TRUE(HasMetric("parley_llm_in_flight 0")) << Metrics();
  EXPECT_TRUE(HasMetric("parley_llm_queued 0")) << Metrics();
  EXPECT_TRUE(HasMetric("parley_llm_requests_total{result=\"ok\"} 10")) << Metrics();
}

TEST_F(LlmQueueTest, ZeroMeansUnlimited) {
  EXPECT_EQ(LlmOptions().max_concurrent, 1024);  // the documented default
  LlmOptions o = Options();
  o.max_concurrent = 0;
  auto client = Client(o);
  AnswerAfter(400);
  std::vector<Launched> calls;
  for (int i = 0; i < 10; ++i) calls.push_back(Launch(*client, "call " + std::to_string(i)));
  EXPECT_TRUE(HasMetric("parley_llm_queued 0")) << Metrics();
  EXPECT_TRUE(HasMetric("parley_llm_in_flight 10")) << Metrics();
  ASSERT_TRUE(server_.WaitForRequests(10, 5'000));  // all at once, none waits for an answer
  ASSERT_TRUE(WaitFor([&] { return AllDone(calls); }, milliseconds(10'000)));
  for (const auto& c : calls) EXPECT_TRUE(c.Outcome().ok()) << c.Outcome().status().ToString();
  EXPECT_EQ(server_.MaxConcurrent(), 10u);
  EXPECT_TRUE(HasMetric("parley_llm_in_flight 0")) << Metrics();
}

TEST_F(LlmQueueTest, CancelledQueuedCallEndsAtOnceAndNeverReachesTheServer) {
  LlmOptions o = Options();
  o.max_concurrent = 1;
  auto client = Client(o);
  AnswerAfter(800);
  Launched a = Launch(*client, "A");
  Launched b = Launch(*client, "B");
  Launched c = Launch(*client, "C");
  ASSERT_TRUE(server_.WaitForRequests(1, 5'000));
  EXPECT_TRUE(HasMetric("parley_llm_queued 2")) << Metrics();
  const auto cancelled_at = Clock::now();
  b.handle->Cancel();
  ASSERT_TRUE(WaitFor([&] { return b.Done(); }));
  EXPECT_LT(Clock::now() - cancelled_at, milliseconds(400));  // not after A's answer
  EXPECT_FALSE(a.Done());
  EXPECT_EQ(b.Outcome().status().code(), Status::Code::kUnavailable);
  EXPECT_EQ(b.Outcome().status().message(), "cancelled");
  EXPECT_TRUE(HasMetric("parley_llm_queued 1")) << Metrics();
  b.handle->Cancel();  // again: nothing happens

  // C takes the slot after A as if B had never been there.
  ASSERT_TRUE(WaitFor([&] { return a.Done() && c.Done(); }, milliseconds(10'000)));
  ASSERT_TRUE(a.Outcome().ok()) << a.Outcome().status().ToString();
  ASSERT_TRUE(c.Outcome().ok()) << c.Outcome().status().ToString();
  EXPECT_EQ(c.Outcome()->content, "You said: C");
  EXPECT_EQ(ServerSaw(), (std::vector<std::string>{"A", "C"}));
  EXPECT_EQ(server_.MaxConcurrent(), 1u);
  EXPECT_TRUE(HasMetric("parley_llm_requests_total{result=\"cancelled\"} 1")) << Metrics();
  EXPECT_TRUE(HasMetric("parley_llm_in_flight 0")) << Metrics();
  EXPECT_TRUE(HasMetric("parley_llm_queued 0")) << Metrics();
}

// Passes requests on with no overall transfer deadline: a slot holder that overruns its own
// total timeout. With one total timeout for every call and a FIFO queue, a waiting call's
// deadline can only pass while it waits when the calls ahead of it take longer than theirs
// (here deterministically; in production by a small overrun at the boundary).
class OverrunningHttp final : public net::HttpClient {
 public:
  explicit OverrunningHttp(std::shared_ptr<net::HttpClient> inner) : inner_(std::move(inner)) {}
  void Request(net::ClientRequest request, net::ClientCallback callback) override {
    request.timeout_ms = 0;
    inner_->Request(std::move(request), std::move(callback));
  }

 private:
  std::shared_ptr<net::HttpClient> inner_;
};

TEST_F(LlmQueueTest, QueuedCallWhoseDeadlinePassesEndsWithoutARequest) {
  LlmOptions o = Options();
  o.max_concurrent = 1;
  o.total_timeout_ms = 400;
  o.first_token_timeout_ms = 20'000;
  auto client = MakeOpenAiClient(io_.io, std::make_shared<OverrunningHttp>(http_), o, metrics_);
  AnswerAfter(1'500);
  const auto start = Clock::now();
  Launched a = Launch(*client, "A");
  Launched b = Launch(*client, "B");
  ASSERT_TRUE(WaitFor([&] { return b.Done(); }));
  const auto waited = Clock::now() - start;
  EXPECT_FALSE(a.Done());  // B's slot never came
  EXPECT_EQ(b.Outcome().status().code(), Status::Code::kDeadlineExceeded)
      << b.Outcome().status().ToString();
  EXPECT_NE(b.Outcome().status().message().find("waiting for a free slot"), std::string::npos);
  EXPECT_GE(waited, milliseconds(390));
  EXPECT_LT(waited, milliseconds(1'400));
  EXPECT_TRUE(HasMetric("parley_llm_queued 0")) << Metrics();
  EXPECT_TRUE(HasMetric("parley_llm_in_flight 1")) << Metrics();

  ASSERT_TRUE(WaitFor([&] { return a.Done(); }, milliseconds(10'000)));
  ASSERT_TRUE(a.Outcome().ok()) << a.Outcome().status().ToString();
  EXPECT_EQ(ServerSaw(), (std::vector<std::string>{"A"}));  // B never sent
  EXPECT_TRUE(HasMetric("parley_llm_in_flight 0")) << Metrics();
}

TEST_F(LlmQueueTest, QueuedCallsFailFastWithoutRequestsOnceTheBreakerOpened) {
  LlmOptions o = Options();
  o.max_concurrent = 1;
  o.max_retries = 0;
  o.breaker_failures = 1;
  o.breaker_cooldown_ms = 60'000;
  auto client = Client(o);
  LlmReply failing = HttpError(500);
  failing.delay_ms = 500;  // the others queue up behind it while the endpoint still looks fine
  server_.Push(failing);
  Launched a = Launch(*client, "A");
  std::vector<Launched> queued;
  for (int i = 0; i < 4; ++i) queued.push_back(Launch(*client, "Q" + std::to_string(i)));
  EXPECT_TRUE(HasMetric("parley_llm_queued 4")) << Metrics();
  ASSERT_TRUE(WaitFor([&] { return a.Done() && AllDone(queued); }, milliseconds(10'000)));
  EXPECT_EQ(a.Outcome().status().code(), Status::Code::kUnavailable);
  EXPECT_NE(a.Outcome().status().message(), "circuit open");
  for (const auto& q : queued) {
    EXPECT_EQ(q.Outcome().status().code(), Status::Code::kUnavailable);
    EXPECT_EQ(q.Outcome().status().message(), "circuit open");
  }
  EXPECT_EQ(server_.RequestCount(), 1u);
  EXPECT_TRUE(HasMetric("parley_llm_requests_total{result=\"circuit_open\"} 4")) << Metrics();
  EXPECT_TRUE(HasMetric("parley_llm_breaker_open 1")) << Metrics();
  EXPECT_TRUE(HasMetric("parley_llm_in_flight 0")) << Metrics();
  EXPECT_TRUE(HasMetric("parley_llm_queued 0")) << Metrics();

  // A call made while the circuit is open is still refused at once, without queueing.
  CallOutcome late = Run(*client, UserRequest("late"));
  EXPECT_EQ(late.result.status().message(), "circuit open");
  EXPECT_EQ(server_.RequestCount(), 1u);
}

}  // namespace
}  // namespace parley::llm
