// ToolPolicy over a real LevelDB + Committer and a real io_context: the refusal order, that the
// refused outcomes never invoke the tool, confirmation, timeouts, the audit records (redaction,
// listing, filtering, sweeping, formatting) and the metrics.

#include "tools/policy.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "store/keys.h"
#include "tests/tools/test_util.h"
#include "tools/audit.h"

namespace parley::tools {
namespace {

using nlohmann::json;
using testing::CallAndWait;
using testing::FakeTool;
using testing::IoThreads;
using testing::Outcome;
using testing::WaitFor;

json WeatherSchema() {
  return {{"type", "object"},
          {"properties",
           {{"city", {{"type", "string"}}},
            {"days", {{"type", "integer"}, {"minimum", 1}}},
            {"password", {{"type", "string"}}},
            {"auth", {{"type", "object"}}}}},
          {"required", {"city"}},
          {"additionalProperties", false}};
}

class PolicyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(dir_.path().empty());
    auto opened = store::OpenLevelDb(dir_.Sub("db"));
    ASSERT_TRUE(opened.ok()) << opened.status().ToString();
    kv_ = std::move(opened).value();
    committer_ = std::make_unique<store::Committer>(*kv_);
    weather_ = std::make_shared<FakeTool>("weather", WeatherSchema(), io_.io);
    ToolRules rules;
    rules.redact = {"password", "token"};
    rules.timeout_ms = 150;
    ASSERT_TRUE(registry_.Add(weather_, rules).ok());
    restricted_ = std::make_shared<FakeTool>("restricted", WeatherSchema(), io_.io);
    ToolRules restricted_rules;
    restricted_rules.allow_channels = {"slack:C0*"};
    restricted_rules.allow_users = {"slack:U1"};
    ASSERT_TRUE(registry_.Add(restricted_, restricted_rules).ok());
    refund_ = std::make_shared<FakeTool>("refund", WeatherSchema(), io_.io);
    ToolRules confirm_rules;
    confirm_rules.confirm = true;
    ASSERT_TRUE(registry_.Add(refund_, confirm_rules).ok());
    policy_ = std::make_unique<ToolPolicy>(io_.io, registry_, *committer_, clock_, metrics_);
    context_.turn_id = "turn-7";
    context_.conversation = ConversationKey{"slack", "C0123", "1700.5"};
    context_.user = "U1";
  }
  void TearDown() override {
    if (committer_) committer_->Shutdown();
  }

  Outcome Run(const std::string& name, const std::string& arguments, bool confirmed = false,
              const std::string& id = "call-1") {
    return CallAndWait(*policy_, io_, llm::ToolCall{id, name, arguments}, context_, confirmed);
  }

  // Waits until `n` audit records are listable.
  std::vector<json> WaitAudit(size_t n, AuditQuery query = {}) {
    std::vector<json> records;
    WaitFor([&] {
      auto listed = ListAudit(*kv_, query);
      if (listed.ok()) records = *listed;
      return records.size() >= n;
    });
    return records;
  }

  std::vector<json> List(const AuditQuery& query) {
    auto listed = ListAudit(*kv_, query);
    EXPECT_TRUE(listed.ok()) << listed.status().ToString();
    return listed.ok() ? *listed : std::vector<json>();
  }

  parley::testing::TempDir dir_;
  IoThreads io_{2};
  std::unique_ptr<store::KvStore> kv_;
  std::unique_ptr<store::Committer> committer_;
  ManualClock clock_{1'700'000'000'000};
  MetricsRegistry metrics_;
  ToolRegistry registry_;
  std::shared_ptr<FakeTool> weather_, restricted_, refund_;
  std::unique_ptr<ToolPolicy> policy_;
  ToolContext context_;
};

TEST_F(PolicyTest, ValidCallRunsOnceAndReturnsTheToolsOutput) {
  Outcome out = Run("weather", R"({"city":"Oslo","days":2})");
  ASSERT_TRUE(out.result.has_value());
  EXPECT_EQ(out.result->outcome, CallOutcome::kOk);
  EXPECT_EQ(out.result->content, R"(result for {"city":"Oslo","days":2})");
  EXPECT_EQ(out.result->arguments, (json{{"city", "Oslo"}, {"days", 2}}));
  EXPECT_FALSE(out.result->escalate);
  EXPECT_TRUE(out.on_io_thread);
  EXPECT_EQ(weather_->invocations.load(), 1);
  EXPECT_EQ(weather_->last_arguments(), (json{{"city", "Oslo"}, {"days", 2}}));
}

TEST_F(PolicyTest, InvalidArgumentsNeverInvokeAndSayWhy) {
  struct Case {
    std::string arguments;
    std::string content;
  };
  const std::vector<Case> cases = {
      {"{}", "invalid arguments: /city: required property missing"},
      {R"({"city":5})", "invalid arguments: /city: wrong type"},
      {R"({"city":"x","days":"2"})", "invalid arguments: /days: wrong type"},
      {R"({"city":"x","days":0})",
       "invalid arguments: /days: expected number greater than or equal to 1"},
      {R"({"city":"x","extra":1})", "invalid arguments: /extra: property not allowed"},
      {R"({"city": "x")", "invalid arguments: not valid JSON"},
      {"city=Oslo", "invalid arguments: not valid JSON"},
      {R"(["Oslo"])", "invalid arguments: expected a JSON object"},
      {R"("Oslo")", "invalid arguments: expected a JSON object"},
      {"  ", "invalid arguments: /city: required property missing"},  // blank counts as {}
  };
  for (const Case& c : cases) {
    Outcome out = Run("weather", c.arguments);
    ASSERT_TRUE(out.result.has_value()) << c.arguments;
    EXPECT_EQ(out.result->outcome, CallOutcome::kInvalidArguments) << c.arguments;
    EXPECT_EQ(out.result->content, c.content) << c.arguments;
    EXPECT_EQ(out.done_calls, 1);
  }
  EXPECT_EQ(weather_->invocations.load(), 0);
  Outcome array = Run("weather", "[1]");
  EXPECT_EQ(array.result->arguments, json::array({1}));  // parsed even when refused
}

TEST_F(PolicyTest, UnknownAndNotAllowedToolsAreRefusedFirst) {
  Outcome unknown = Run("nope", "not even json");
  ASSERT_TRUE(unknown.result.has_value());
  EXPECT_EQ(unknown.result->outcome, CallOutcome::kUnknownTool);
  EXPECT_EQ(unknown.result->content, "unknown tool nope");
  EXPECT_TRUE(unknown.on_io_thread);

  context_.conversation.channel = "C9";                      // not slack:C0*
  Outcome elsewhere = Run("restricted", "not json either");  // not_allowed beats invalid JSON
  EXPECT_EQ(elsewhere.result->outcome, CallOutcome::kNotAllowed);
  EXPECT_EQ(elsewhere.result->content, "tool restricted is not allowed here");

  context_.conversation.channel = "C0999";
  context_.user = "U2";
  Outcome other_user = Run("restricted", R"({"city":"x"})");
  EXPECT_EQ(other_user.result->outcome, CallOutcome::kNotAllowed);

  context_.user = "U1";
  Outcome allowed = Run("restricted", R"({"city":"x"})");
  EXPECT_EQ(allowed.result->outcome, CallOutcome::kOk);
  EXPECT_EQ(restricted_->invocations.load(), 1);
}

TEST_F(PolicyTest, ConfirmationIsAskedForThenTheConfirmedCallRuns) {
  Outcome first = Run("refund", R"({"city":"x"})", /*confirmed=*/false, "c1");
  EXPECT_EQ(first.result->outcome, CallOutcome::kNeedsConfirmation);
  EXPECT_EQ(first.result->content, "tool refund needs the user's confirmation; ask them");
  EXPECT_EQ(refund_->invocations.load(), 0);
  // Validation still comes before confirmation: a bad call is not put to the user.
  Outcome bad = Run("refund", R"({"town":"x"})", /*confirmed=*/false, "c2");
  EXPECT_EQ(bad.result->outcome, CallOutcome::kInvalidArguments);

  clock_.Advance(1000);
  Outcome confirmed = Run("refund", R"({"city":"x"})", /*confirmed=*/true, "c1");
  EXPECT_EQ(confirmed.result->outcome, CallOutcome::kOk);
  EXPECT_EQ(refund_->invocations.load(), 1);

  auto records = WaitAudit(3);
  ASSERT_EQ(records.size(), 3u);
  EXPECT_EQ(records[0]["outcome"], "ok");
  EXPECT_EQ(records[0]["confirmed"], true);
  EXPECT_EQ(records[2]["outcome"], "needs_confirmation");
  EXPECT_EQ(records[2]["confirmed"], false);
}

TEST_F(PolicyTest, ToolOutputIsRepairedToValidUtf8) {
  Outcome out = Run("weather", "{\"city\":\"\\u00e9\"}");  // tool echoes its arguments
  ASSERT_EQ(out.result->outcome, CallOutcome::kOk);
  EXPECT_EQ(out.result->content, "result for {\"city\":\"\xC3\xA9\"}");
  weather_->mode = FakeTool::Mode::kInvalidUtf8;
  Outcome bad = Run("weather", R"({"city":"x"})");
  ASSERT_EQ(bad.result->outcome, CallOutcome::kOk);
  EXPECT_EQ(bad.result->content, "bytes \xEF\xBF\xBD\xEF\xBF\xBD end");
  Outcome unknown =
      Run("bad\xFF"
          "name",
          "{}");
  EXPECT_EQ(unknown.result->content, "unknown tool bad\xEF\xBF\xBDname");
}

TEST_F(PolicyTest, ToolErrorsPassThrough) {
  weather_->mode = FakeTool::Mode::kError;
  Outcome out = Run("weather", R"({"city":"x"})");
  EXPECT_EQ(out.result->outcome, CallOutcome::kToolError);
  EXPECT_EQ(out.result->content, "backend said no");
  auto records = WaitAudit(1);
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(records[0]["outcome"], "tool_error");
  EXPECT_EQ(records[0]["error"], "backend said no");
}

TEST_F(PolicyTest, ATimeoutAnswersOnceAndTheLateResultIsDropped) {
  weather_->mode = FakeTool::Mode::kNever;
  struct Seen {
    std::mutex mu;
    std::vector<CallResult> results;
  };
  auto seen = std::make_shared<Seen>();
  auto count = [seen] {
    std::lock_guard<std::mutex> lock(seen->mu);
    return seen->results.size();
  };
  policy_->Call(llm::ToolCall{"call-1", "weather", R"({"city":"x"})"}, context_, false,
                [seen](CallResult r) {
                  std::lock_guard<std::mutex> lock(seen->mu);
                  seen->results.push_back(std::move(r));
                });
  ASSERT_TRUE(WaitFor([&] { return count() == 1; }));
  {
    std::lock_guard<std::mutex> lock(seen->mu);
    const CallResult& r = seen->results[0];
    EXPECT_EQ(r.outcome, CallOutcome::kTimedOut);
    EXPECT_EQ(r.content, "tool weather timed out after 150 ms");
    EXPECT_GE(r.duration_ms, 140);
  }
  EXPECT_EQ(weather_->parked(), 1u);

  // Answer late, then run a normal call to completion: the late answer must not reach `done`
  // a second time, nor write a second audit record.
  weather_->AnswerParked();
  weather_->mode = FakeTool::Mode::kOk;
  Outcome next = Run("weather", R"({"city":"y"})", false, "call-2");
  EXPECT_EQ(next.result->outcome, CallOutcome::kOk);
  EXPECT_EQ(count(), 1u);

  auto records = WaitAudit(2);
  ASSERT_EQ(records.size(), 2u);
  EXPECT_EQ(records[0]["outcome"], "ok");  // call-2: same ms, key order by call id
  EXPECT_EQ(records[1]["outcome"], "timed_out");
  EXPECT_EQ(records[1]["error"], "tool weather timed out after 150 ms");
}

TEST_F(PolicyTest, AuditRecordsEveryOutcomeWithRedactionAtAnyDepth) {
  const std::string args =
      R"({"city":"Oslo","password":"hunter2","auth":{"token":"tok-123","list":[{"password":"p2","keep":1}]}})";
  Outcome ok = Run("weather", args, false, "call-ok");
  ASSERT_EQ(ok.result->outcome, CallOutcome::kOk) << ok.result->content;
  // The tool itself gets the real values; only the audit hides them.
  EXPECT_EQ(weather_->last_arguments()["password"], "hunter2");
  clock_.Advance(5);
  Outcome invalid = Run("weather", R"({"city":"Oslo","password":"hunter3")", false, "call-bad");
  ASSERT_EQ(invalid.result->outcome, CallOutcome::kInvalidArguments);
  clock_.Advance(5);
  Outcome unknown = Run("nope\nINJECTED", "{}", false, "call-unknown");
  ASSERT_EQ(unknown.result->outcome, CallOutcome::kUnknownTool);

  AuditQuery oldest_first;
  oldest_first.newest_first = false;
  auto records = WaitAudit(3, oldest_first);
  ASSERT_EQ(records.size(), 3u);
  const json& r = records[0];
  EXPECT_EQ(r["ts_ms"], 1'700'000'000'000);
  EXPECT_EQ(r["turn"], "turn-7");
  EXPECT_EQ(r["conversation"], "slack:C0123#1700.5");
  EXPECT_EQ(r["user"], "U1");
  EXPECT_EQ(r["tool"], "weather");
  EXPECT_EQ(r["call_id"], "call-ok");
  EXPECT_EQ(r["outcome"], "ok");
  EXPECT_EQ(r["confirmed"], false);
  EXPECT_TRUE(r["duration_ms"].is_number_integer());
  EXPECT_FALSE(r.contains("error"));
  EXPECT_EQ(r["arguments"], json::parse(R"({"city":"Oslo","password":"***",
      "auth":{"token":"***","list":[{"password":"***","keep":1}]}})"));

  EXPECT_EQ(records[1]["outcome"], "invalid_arguments");
  EXPECT_EQ(records[1]["arguments"], (json{{"_invalid", true}}));
  EXPECT_EQ(records[1]["error"], "invalid arguments: not valid JSON");
  EXPECT_EQ(records[1]["call_id"], "call-bad");
  EXPECT_EQ(records[2]["outcome"], "unknown_tool");
  EXPECT_EQ(records[2]["tool"], "nope\nINJECTED");
  EXPECT_EQ(records[2]["error"], "unknown tool nope\nINJECTED");

  // Exactly at the documented key, and no secret anywhere in the stored bytes.
  auto stored = kv_->Get(store::keys::Audit(1'700'000'000'000, "turn-7", "call-ok"));
  ASSERT_TRUE(stored.ok()) << stored.status().ToString();
  std::string all;
  ASSERT_TRUE(kv_->Scan(store::keys::kAudit,
                        [&](std::string_view, std::string_view v) {
                          all.append(v.data(), v.size());
                          return true;
                        })
                  .ok());
  for (const char* secret : {"hunter2", "hunter3", "tok-123", "p2\""}) {
    EXPECT_EQ(all.find(secret), std::string::npos) << secret;
  }

  // A forged tool name cannot break the one-line format.
  const std::string line = FormatAuditLine(records[2]);
  EXPECT_EQ(line.find('\n'), std::string::npos);
}

TEST_F(PolicyTest, MetricsCountOutcomesPerToolWithoutModelChosenLabels) {
  (void)Run("weather", R"({"city":"x"})");
  (void)Run("weather", "{}");
  (void)Run("made_up_tool", "{}");
  const std::string text = metrics_.RenderPrometheus();
  EXPECT_NE(text.find(R"(parley_tool_calls_total{tool="weather",outcome="ok"} 1)"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find(R"(parley_tool_calls_total{tool="weather",outcome="invalid_arguments"} 1)"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find(R"(parley_tool_calls_total{tool="unknown",outcome="unknown_tool"} 1)"),
            std::string::npos)
      << text;
  EXPECT_EQ(text.find("made_up_tool"), std::string::npos);
  EXPECT_NE(text.find(R"(parley_tool_seconds_count{tool="weather"} 1)"), std::string::npos) << text;
}

TEST_F(PolicyTest, ListFilterSweepAndFormatTheAuditLog) {
  const int64_t t0 = 1'700'000'000'000;
  struct Step {
    int64_t at;
    std::string channel;
    std::string tool;
    std::string id;
  };
  const std::vector<Step> steps = {{t0, "C01", "weather", "a"},
                                   {t0 + 1000, "C02", "weather", "b"},
                                   {t0 + 2000, "C01", "refund", "c"},
                                   {t0 + 3000, "C01", "weather", "d"},
                                   {t0 + 4000, "C02", "restricted", "e"}};
  for (const Step& step : steps) {
    clock_.Set(step.at);
    context_.conversation = ConversationKey{"slack", step.channel, ""};
    (void)Run(step.tool, R"({"city":"Oslo"})", false, step.id);
  }
  ASSERT_EQ(WaitAudit(5).size(), 5u);

  auto ids = [](const std::vector<json>& records) {
    std::string out;
    for (const json& r : records) out += r["call_id"].get<std::string>();
    return out;
  };
  AuditQuery q;
  EXPECT_EQ(ids(List(q)), "edcba");
  q.newest_first = false;
  EXPECT_EQ(ids(List(q)), "abcde");
  q.limit = 2;
  EXPECT_EQ(ids(List(q)), "ab");
  q = AuditQuery{};
  q.since_ms = t0 + 1000;
  q.until_ms = t0 + 3000;
  EXPECT_EQ(ids(List(q)), "dcb");
  q.newest_first = false;
  EXPECT_EQ(ids(List(q)), "bcd");
  q = AuditQuery{};
  q.conversation = "slack:C01";
  EXPECT_EQ(ids(List(q)), "dca");
  q.tool = "weather";
  EXPECT_EQ(ids(List(q)), "da");
  q.limit = 1;
  EXPECT_EQ(ids(List(q)), "d");
  q = AuditQuery{};
  q.tool = "restricted";  // refused (U1 in C02 is outside slack:C0*? no: C02 matches) -> ran
  auto restricted = List(q);
  ASSERT_EQ(restricted.size(), 1u);
  EXPECT_EQ(restricted[0]["outcome"], "ok");

  // Format: one line, fixed field order.
  json record = (List(AuditQuery{}))[0];
  record["duration_ms"] = 12;
  EXPECT_EQ(
      FormatAuditLine(record),
      R"(2023-11-14T22:13:24.000Z ok restricted conv=slack:C02 user=U1 ms=12 args={"city":"Oslo"})");
  json failed = {{"ts_ms", 1'700'000'000'123},
                 {"outcome", "tool_error"},
                 {"tool", "weather"},
                 {"conversation", "webhook:x"},
                 {"user", "u\r\n2"},
                 {"duration_ms", 3},
                 {"arguments", {{"_invalid", true}}},
                 {"error", "HTTP 500: \"boom\""}};
  EXPECT_EQ(FormatAuditLine(failed),
            R"(2023-11-14T22:13:20.123Z tool_error weather conv=webhook:x user=u??2 ms=3 )"
            R"(args={"_invalid":true} error="HTTP 500: \"boom\"")");

  // Sweep: strictly older than the cut-off.
  auto swept = SweepAudit(*kv_, t0 + 2000);
  ASSERT_TRUE(swept.ok()) << swept.status().ToString();
  EXPECT_EQ(*swept, 2u);
  EXPECT_EQ(ids(List(AuditQuery{})), "edc");
  auto again = SweepAudit(*kv_, t0 + 2000);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, 0u);
  auto everything = SweepAudit(*kv_, t0 + 1'000'000);
  ASSERT_TRUE(everything.ok());
  EXPECT_EQ(*everything, 3u);
  EXPECT_TRUE(ListAudit(*kv_, AuditQuery{})->empty());
}

TEST_F(PolicyTest, ManyConcurrentCallsEachAnswerExactlyOnce) {
  constexpr int kCalls = 200;
  std::atomic<int> done{0};
  std::atomic<int> ok{0};
  std::vector<std::thread> callers;
  for (int t = 0; t < 4; ++t) {
    callers.emplace_back([&, t] {
      for (int i = 0; i < kCalls / 4; ++i) {
        policy_->Call(llm::ToolCall{"c" + std::to_string(t) + "-" + std::to_string(i), "weather",
                                    R"({"city":"x"})"},
                      context_, false, [&](CallResult r) {
                        ok += r.outcome == CallOutcome::kOk;
                        done++;
                      });
      }
    });
  }
  for (auto& c : callers) c.join();
  EXPECT_TRUE(WaitFor([&] { return done.load() == kCalls; }));
  EXPECT_EQ(ok.load(), kCalls);
  EXPECT_EQ(weather_->invocations.load(), kCalls);
  EXPECT_EQ(WaitAudit(kCalls, AuditQuery{0, 0, "", "", 1000, true}).size(),
            static_cast<size_t>(kCalls));
}

}  // namespace
}  // namespace parley::tools
