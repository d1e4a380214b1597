// End-to-end: the real `parley serve` binary on a free loopback port, spoken to over HTTP.

#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "net/crypto.h"
#include "tests/fakes/callback_server.h"
#include "tests/support/daemon_process.h"
#include "tests/support/sample_kb.h"
#include "tests/support/temp_dir.h"

namespace parley::testing {
namespace {

using nlohmann::json;

constexpr char kSecret[] = "e2e-signing-secret";


std::string Signature(const std::string& ts, const std::string& body) {
  return "v1=" + net::HmacSha256Hex(kSecret, ts + "." + body);
}

net::Headers Signed(const std::string& body, long long skew_seconds = 0) {
  std::string ts = std::to_string(static_cast<long long>(std::time(nullptr)) + skew_seconds);
  return {{"X-Parley-Timestamp", ts}, {"X-Parley-Signature", Signature(ts, body)}};
}

class WebhookE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::filesystem::create_directories(dir_.Sub("kb-staff"));
    WriteSampleKnowledge(dir_.Sub("kb"));
    WriteFile(dir_.Sub("kb-staff/runbook.md"),
              "# Incident runbook\n\n## Paging the on-call engineer\n\nThe on-call pager code "
              "is zebra-kumquat; page through the escalation console.\n");
    config_ = dir_.Sub("parley.toml");
    WriteFile(config_, ConfigText());
    daemon_ = std::make_unique<DaemonProcess>(config_, dir_.Sub("port.json"), dir_.Sub("log.txt"),
                                              std::map<std::string, std::string>{
                                                  {"E2E_SECRET", kSecret}});
    ASSERT_TRUE(daemon_->Start()) << daemon_->Log();
  }
  void TearDown() override {
    if (HasFailure()) std::cerr << "---- daemon log ----\n" << daemon_->Log();
  }

  std::string ConfigText() const {
    return "[server]\nlisten = \"127.0.0.1:0\"\nport_file = \"" + dir_.Sub("port.json") +
           "\"\nmax_body_bytes = 4096\n\n[store]\npath = \"" + dir_.Sub("store") +
           "\"\n\n[[knowledge.sources]]\npath = \"" + dir_.Sub("kb") +
           "\"\nurl_base = \"https://docs.example.com/\"\n\n[[knowledge.sources]]\npath = \"" +
           dir_.Sub("kb-staff") + "\"\ntags = [\"staff\"]\n\n[[knowledge.grants]]\n"
           "conversations = [\"webhook:staff-*\"]\ntags = [\"staff\"]\n\n"
           "[policy]\nuser_rate_per_minute = 60\nuser_burst = 5\n"
           "conversation_rate_per_minute = 600\nconversation_burst = 50\n\n"
           "[webhook]\nsecret = \"${E2E_SECRET}\"\n\n[log]\nlevel = \"debug\"\n";
  }

  // Posts a signed message; returns status and parsed body.
  std::pair<int, json> Send(const json& message, const net::Headers& extra = {}) {
    std::string body = message.dump();
    net::Headers headers = Signed(body);
    headers.insert(headers.end(), extra.begin(), extra.end());
    auto r = daemon_->Post("/v1/messages", body, headers);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    if (!r.ok()) return {0, json()};
    return {r->status, json::parse(r->body, nullptr, false)};
  }

  json Ask(const std::string& conversation, const std::string& user, const std::string& text) {
    auto [status, body] = Send({{"conversation", conversation}, {"user", user}, {"text", text}});
    EXPECT_EQ(status, 200) << body.dump();
    return body;
  }

  TempDir dir_;
  std::string config_;
  std::unique_ptr<DaemonProcess> daemon_;
};

TEST_F(WebhookE2eTest, AnswersWithCitations) {
  json reply = Ask("c-basic", "u-basic", "how do i install the frobnicator on linux?");
  EXPECT_NE(reply["text"].get<std::string>().find("apt install frobnicator"), std::string::npos)
      << reply.dump();
  ASSERT_FALSE(reply["citations"].empty()) << reply.dump();
  json c = reply["citations"][0];
  EXPECT_EQ(c["source"], "frobnicator.md");
  EXPECT_NE(c["section"].get<std::string>().find("On Linux"), std::string::npos) << c.dump();
  EXPECT_EQ(c["url"].get<std::string>().rfind("https://docs.example.com/frobnicator.md#", 0), 0u)
      << c.dump();
  EXPECT_GT(reply["confidence"].get<double>(), 0.35);
  EXPECT_FALSE(reply["escalated"].get<bool>());
}

TEST_F(WebhookE2eTest, SaysPlainlyWhenItHasNoAnswer) {
  json reply = Ask("c-none", "u-none", "what will the weather be on mars tomorrow?");
  EXPECT_NE(reply["text"].get<std::string>().find("couldn't find"), std::string::npos)
      << reply.dump();
  EXPECT_NE(reply["text"].get<std::string>().find("human"), std::string::npos);
  EXPECT_TRUE(reply["citations"].empty());
}

TEST_F(WebhookE2eTest, FollowUpUsesThisConversationOnly) {
  Ask("c-fu-widget", "u-fu1", "how do I install the widget?");
  json widget = Ask("c-fu-widget", "u-fu1", "and on linux?");
  ASSERT_FALSE(widget["citations"].empty()) << widget.dump();
  EXPECT_EQ(widget["citations"][0]["source"], "widget.md") << widget.dump();

  Ask("c-fu-frob", "u-fu2", "how do I install the frobnicator?");
  json frob = Ask("c-fu-frob", "u-fu2", "and on linux?");
  ASSERT_FALSE(frob["citations"].empty()) << frob.dump();
  EXPECT_EQ(frob["citations"][0]["source"], "frobnicator.md") << frob.dump();
}

TEST_F(WebhookE2eTest, RestrictedSourcesNeedTheTag) {
  json outsider = Ask("public-1", "u-tag1", "what is the on-call pager code?");
  for (const auto& c : outsider["citations"]) EXPECT_NE(c["source"], "runbook.md");
  EXPECT_EQ(outsider["text"].get<std::string>().find("zebra"), std::string::npos);
  json staff = Ask("staff-1", "u-tag2", "what is the on-call pager code?");
  ASSERT_FALSE(staff["citations"].empty()) << staff.dump();
  EXPECT_EQ(staff["citations"][0]["source"], "runbook.md");
  EXPECT_NE(staff["text"].get<std::string>().find("zebra-kumquat"), std::string::npos);
}

TEST_F(WebhookE2eTest, RefusesBadSignatures) {
  const std::string body = json{{"conversation", "c"}, {"user", "u-sig"}, {"text", "hi"}}.dump();
  auto missing = daemon_->Post("/v1/messages", body);
  EXPECT_EQ(missing->status, 401);
  EXPECT_EQ(json::parse(missing->body)["error"], "unauthenticated");

  net::Headers wrong = Signed(body);
  wrong[1].second = "v1=" + std::string(64, '0');
  EXPECT_EQ(daemon_->Post("/v1/messages", body, wrong)->status, 401);

  net::Headers tampered = Signed(body);
  EXPECT_EQ(daemon_->Post("/v1/messages", body + " ", tampered)->status, 401);

  auto stale = daemon_->Post("/v1/messages", body, Signed(body, -6 * 60));
  EXPECT_EQ(stale->status, 401);
  EXPECT_EQ(json::parse(stale->body)["error"], "stale_timestamp");

  EXPECT_EQ(daemon_->Post("/v1/messages", body, Signed(body))->status, 200);
}

TEST_F(WebhookE2eTest, BadInputGetsAClearErrorAndStoresNothing) {
  auto post = [&](const std::string& body) {
    auto r = daemon_->Post("/v1/messages", body, Signed(body));
    EXPECT_TRUE(r.ok());
    return std::make_pair(r->status, json::parse(r->body, nullptr, false));
  };
  auto [s1, b1] = post("{not json");
  EXPECT_EQ(s1, 400);
  EXPECT_EQ(b1["error"], "invalid_json");
  auto [s2, b2] = post(R"({"conversation":"c-bad","user":"u-bad"})");
  EXPECT_EQ(s2, 422);
  EXPECT_NE(b2["message"].get<std::string>().find("text"), std::string::npos);
  EXPECT_EQ(post(R"({"conversation":"c-bad","user":"u-bad","text":"   "})").first, 422);
  EXPECT_EQ(post(R"({"conversation":5,"user":"u-bad","text":"hi"})").first, 422);
  EXPECT_EQ(post(R"({"conversation":"c-bad","user":"u-bad","text":"hi","reply_url":"ftp://x"})")
                .first,
            422);
  EXPECT_EQ(post("[1,2]").first, 422);
  EXPECT_EQ(post(R"({"conversation":"c-bad","user":"u-bad","text":"hi","user_name":7})").first,
            422);
  auto [s4, b4] = post(json{{"conversation", "c-bad"},
                            {"user", "u-bad"},
                            {"text", "hi"},
                            {"user_name", std::string(201, 'n')}}
                           .dump());
  EXPECT_EQ(s4, 422);
  EXPECT_NE(b4["message"].get<std::string>().find("user_name"), std::string::npos);
  auto [s3, b3] = post(json{{"conversation", "c-bad"}, {"user", "u-bad"},
                            {"text", std::string(5000, 'a')}}
                           .dump());
  EXPECT_EQ(s3, 413);
  EXPECT_EQ(b3["error"], "body_too_large");

  auto unknown = daemon_->Post("/v1/nothing", "{}");
  EXPECT_EQ(unknown->status, 404);
  EXPECT_EQ(json::parse(unknown->body)["error"], "not_found");
  auto wrong_method = daemon_->Get("/v1/messages");
  EXPECT_EQ(wrong_method->status, 405);

  // Nothing of the refused requests reached memory.
  const std::string forget = json{{"conversation", "c-bad"}}.dump();
  auto forgot = daemon_->Post("/v1/forget", forget, Signed(forget));
  ASSERT_EQ(forgot->status, 200);
  EXPECT_EQ(json::parse(forgot->body)["forgotten_turns"], 0);
}

TEST_F(WebhookE2eTest, RateLimitsPerUserWithRetryAfter) {
  int limited = 0;
  std::string retry_after;
  for (int i = 0; i < 8; ++i) {
    std::string body =
        json{{"conversation", "c-rate-" + std::to_string(i)}, {"user", "u-rate"}, {"text", "hi"}}
            .dump();
    auto r = daemon_->Post("/v1/messages", body, Signed(body));
    if (r->status == 429) {
      ++limited;
      retry_after = net::FindHeader(r->headers, "retry-after");
      EXPECT_EQ(json::parse(r->body)["error"], "rate_limited");
    } else {
      EXPECT_EQ(r->status, 200);
    }
  }
  EXPECT_GE(limited, 2);
  EXPECT_FALSE(retry_after.empty());
  EXPECT_GE(std::stoi(retry_after), 1);
  // Another user is not affected.
  Ask("c-rate-other", "u-rate-other", "hi");
}

TEST_F(WebhookE2eTest, SameIdIsAnsweredOnce) {
  json m{{"conversation", "c-dup"}, {"user", "u-dup"}, {"text", "refunds?"}, {"id", "evt-1"}};
  EXPECT_EQ(Send(m).first, 200);
  auto [status, body] = Send(m);
  EXPECT_EQ(status, 409);
  EXPECT_EQ(body["error"], "duplicate");
}

TEST_F(WebhookE2eTest, ReplyUrlGetsSignedDeliveryWithRetries) {
  CallbackServer callback;
  callback.FailNext(2, 503);
  auto [status, body] = Send({{"conversation", "c-async"},
                              {"user", "u-async"},
                              {"text", "how long do refunds take?"},
                              {"reply_url", callback.Url()}});
  ASSERT_EQ(status, 202) << body.dump();
  ASSERT_TRUE(body["id"].is_string());
  ASSERT_TRUE(callback.WaitDelivered(1, 20'000)) << daemon_->Log();
  auto all = callback.Received();
  EXPECT_EQ(all.size(), 3u);  // two refused, then delivered
  ReceivedCallback d = callback.Delivered()[0];
  json reply = json::parse(d.body);
  EXPECT_EQ(reply["conversation"], "c-async");
  EXPECT_NE(reply["text"].get<std::string>().find("fourteen days"), std::string::npos);
  EXPECT_EQ(reply["in_reply_to"], body["id"]);
  std::string ts = net::FindHeader(d.headers, "x-parley-timestamp");
  EXPECT_EQ(net::FindHeader(d.headers, "x-parley-signature"), Signature(ts, d.body));
  EXPECT_EQ(net::FindHeader(d.headers, "x-parley-delivery"), reply["id"]);
  // Every attempt carried the same delivery id.
  for (const auto& r : all) EXPECT_EQ(net::FindHeader(r.headers, "x-parley-delivery"), reply["id"]);
}

TEST_F(WebhookE2eTest, BotSpeaksFirstToTheLatestReplyUrl) {
  CallbackServer callback;
  auto [status, body] = Send({{"conversation", "c-first"},
                              {"user", "u-first"},
                              {"text", "refunds?"},
                              {"reply_url", callback.Url("/first")}});
  ASSERT_EQ(status, 202);
  ASSERT_TRUE(callback.WaitDelivered(1, 20'000));
  std::map<std::string, std::string> env{{"E2E_SECRET", kSecret}};
  auto said = RunParley({"say", "An agent will join shortly.", "--conversation", "c-first",
                         "--config", config_},
                        "", 60'000, env);
  ASSERT_EQ(said.exit_code, 0) << said.err;
  ASSERT_TRUE(callback.WaitDelivered(2, 20'000)) << daemon_->Log();
  auto d = callback.Delivered()[1];
  EXPECT_EQ(d.path, "/first");
  json message = json::parse(d.body);
  EXPECT_EQ(message["text"], "An agent will join shortly.");
  EXPECT_EQ(message["conversation"], "c-first");
  EXPECT_FALSE(message.contains("in_reply_to"));
  std::string ts = net::FindHeader(d.headers, "x-parley-timestamp");
  EXPECT_EQ(net::FindHeader(d.headers, "x-parley-signature"), Signature(ts, d.body));

  // A conversation with no reply_url and no default_reply_url: a clear refusal.
  auto nowhere = RunParley({"say", "hello?", "--conversation", "c-never-seen", "--config", config_},
                           "", 60'000, env);
  EXPECT_EQ(nowhere.exit_code, 1);
  EXPECT_NE(nowhere.err.find("default_reply_url"), std::string::npos) << nowhere.err;
}

TEST_F(WebhookE2eTest, RestartKeepsMemory) {
  Ask("c-mem", "u-mem", "how do refunds work?");
  EXPECT_EQ(daemon_->Terminate(), 0) << daemon_->Log();
  ASSERT_TRUE(daemon_->Start()) << daemon_->Log();
  const std::string forget = json{{"conversation", "c-mem"}}.dump();
  auto forgot = daemon_->Post("/v1/forget", forget, Signed(forget));
  ASSERT_EQ(forgot->status, 200);
  EXPECT_EQ(json::parse(forgot->body)["forgotten_turns"], 2);
  // Gone for good.
  forgot = daemon_->Post("/v1/forget", forget, Signed(forget));
  EXPECT_EQ(json::parse(forgot->body)["forgotten_turns"], 0);
}

TEST_F(WebhookE2eTest, ForgetUserRemovesOnlyTheirTurns) {
  Ask("c-room", "alice-f", "refunds?");
  Ask("c-room", "bob-f", "install the widget?");
  const std::string forget_alice = json{{"user", "alice-f"}}.dump();
  auto r = daemon_->Post("/v1/forget", forget_alice, Signed(forget_alice));
  ASSERT_EQ(r->status, 200);
  EXPECT_EQ(json::parse(r->body)["forgotten_turns"], 2);
  const std::string forget_room = json{{"conversation", "c-room"}}.dump();
  r = daemon_->Post("/v1/forget", forget_room, Signed(forget_room));
  EXPECT_EQ(json::parse(r->body)["forgotten_turns"], 2);  // bob's question and answer remained
}

TEST_F(WebhookE2eTest, PendingDeliverySurvivesRestart) {
  auto callback = std::make_unique<CallbackServer>();
  callback->FailNext(1000, 500);
  auto [status, body] = Send({{"conversation", "c-owed"},
                              {"user", "u-owed"},
                              {"text", "refunds?"},
                              {"reply_url", callback->Url()}});
  ASSERT_EQ(status, 202);
  // Wait for a failed attempt, so the answer is known to be in the outbox.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (callback->Received().empty() && std::chrono::steady_clock::now() < deadline) {
    callback->WaitDelivered(1, 50);
  }
  ASSERT_FALSE(callback->Received().empty());
  EXPECT_EQ(daemon_->Terminate(), 0);
  callback->FailNext(0, 200);
  ASSERT_TRUE(daemon_->Start()) << daemon_->Log();
  ASSERT_TRUE(callback->WaitDelivered(1, 20'000)) << daemon_->Log();
  json reply = json::parse(callback->Delivered()[0].body);
  EXPECT_EQ(reply["in_reply_to"], body["id"]);
  EXPECT_EQ(reply["conversation"], "c-owed");
  EXPECT_NE(reply["text"].get<std::string>().find("fourteen days"), std::string::npos);
  EXPECT_FALSE(reply.contains("reply_route"));  // the wire shape, not the stored one
}

TEST_F(WebhookE2eTest, AcceptedMessageSurvivesSigkill) {
  CallbackServer callback;
  std::set<std::string> accepted;
  for (int i = 0; i < 5; ++i) {
    auto [status, body] = Send({{"conversation", "c-kill-" + std::to_string(i)},
                                {"user", "u-kill"},
                                {"text", "how do I install the widget on linux?"},
                                {"reply_url", callback.Url()}});
    ASSERT_EQ(status, 202);
    accepted.insert(body["id"].get<std::string>());
  }
  daemon_->Kill();  // no chance to flush anything that was not already durable
  ASSERT_TRUE(daemon_->Start()) << daemon_->Log();
  // Every accepted message is answered. A delivery cut off by the kill may arrive twice, but
  // always with the same delivery id: one answer per message, never two different ones.
  std::map<std::string, std::set<std::string>> ids_by_message;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  for (;;) {
    ids_by_message.clear();
    auto delivered = callback.Delivered();
    for (const auto& d : delivered) {
      json reply = json::parse(d.body);
      EXPECT_EQ(reply["conversation"].get<std::string>().rfind("c-kill-", 0), 0u) << d.body;
      ids_by_message[reply["in_reply_to"].get<std::string>()].insert(
          net::FindHeader(d.headers, "x-parley-delivery"));
    }
    if (ids_by_message.size() >= accepted.size() || std::chrono::steady_clock::now() > deadline) {
      break;
    }
    callback.WaitDelivered(delivered.size() + 1, 100);
  }
  std::set<std::string> answered;
  for (const auto& [message, ids] : ids_by_message) {
    answered.insert(message);
    EXPECT_EQ(ids.size(), 1u) << message;
  }
  EXPECT_EQ(answered, accepted) << daemon_->Log();
}

TEST_F(WebhookE2eTest, OpsEndpoints) {
  Ask("c-ops", "u-ops", "refunds?");
  EXPECT_EQ(daemon_->Get("/healthz")->status, 200);
  auto ready = daemon_->Get("/readyz");
  EXPECT_EQ(ready->status, 200);
  EXPECT_GT(json::parse(ready->body)["chunks"].get<int>(), 0);
  auto metrics = daemon_->Get("/metrics");
  ASSERT_EQ(metrics->status, 200);
  EXPECT_NE(metrics->body.find("parley_messages_in_total{adapter=\"webhook\"}"),
            std::string::npos);
  EXPECT_NE(metrics->body.find("parley_stage_seconds_bucket{stage=\"retrieval\""),
            std::string::npos);
  EXPECT_NE(metrics->body.find("parley_replies_total{outcome=\"answered\"}"), std::string::npos);
}

TEST(AdminListenerE2eTest, MetricsMoveToTheAdminListener) {
  TempDir dir;
  std::filesystem::create_directories(dir.Sub("kb"));
  WriteFile(dir.Sub("kb/a.md"), "# A\n\nSome text.\n");
  const std::string config = dir.Sub("parley.toml");
  WriteFile(config, "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n"
                    "port_file = \"" + dir.Sub("port.json") + "\"\n[store]\npath = \"" +
                        dir.Sub("store") + "\"\n[[knowledge.sources]]\npath = \"" +
                        dir.Sub("kb") + "\"\n[webhook]\ninsecure_no_auth = true\n");
  DaemonProcess daemon(config, dir.Sub("port.json"), dir.Sub("log.txt"));
  ASSERT_TRUE(daemon.Start()) << daemon.Log();
  std::ifstream in(dir.Sub("port.json"));
  json ports = json::parse(in, nullptr, false);
  ASSERT_TRUE(ports.contains("admin")) << ports.dump();
  const int admin = ports["admin"].get<int>();
  ASSERT_NE(admin, daemon.port());
  // The public listener keeps /healthz and the webhook; metrics and readiness are admin-only.
  EXPECT_EQ(daemon.Get("/metrics")->status, 404);
  EXPECT_EQ(daemon.Get("/healthz")->status, 200);
  net::ClientRequest req;
  req.url = "http://127.0.0.1:" + std::to_string(admin) + "/metrics";
  auto metrics = net::BlockingRequest(req);
  ASSERT_TRUE(metrics.ok());
  EXPECT_EQ(metrics->status, 200);
  EXPECT_NE(metrics->body.find("parley_stage_seconds"), std::string::npos);
  req.url = "http://127.0.0.1:" + std::to_string(admin) + "/v1/messages";
  EXPECT_EQ(net::BlockingRequest(req)->status, 404);  // no webhook on the admin listener
  EXPECT_EQ(daemon.Terminate(), 0);
}

TEST_F(WebhookE2eTest, SigtermDrainsAndExitsZero) {
  Ask("c-term", "u-term", "refunds?");
  EXPECT_EQ(daemon_->Terminate(), 0);
  std::string log = daemon_->Log();
  EXPECT_NE(log.find("shutdown.done"), std::string::npos) << log;
}

TEST_F(WebhookE2eTest, SecretsNeverReachTheLog) {
  Ask("c-log", "u-log", "refunds?");
  daemon_->Terminate();
  EXPECT_EQ(daemon_->Log().find(kSecret), std::string::npos);
}

TEST_F(WebhookE2eTest, CliGoesThroughTheRunningDaemon) {
  auto r = RunParley({"ask", "how long do refunds take?", "--json", "--config", config_}, "",
                     60'000, {{"E2E_SECRET", kSecret}});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("daemon is running"), std::string::npos) << r.err;
  json reply = json::parse(r.out);
  EXPECT_NE(reply["text"].get<std::string>().find("fourteen days"), std::string::npos);
  EXPECT_EQ(reply["citations"][0]["source"], "billing.md");
  EXPECT_EQ(reply.size(), 4u);  // text, citations, confidence, escalated
}

}  // namespace
}  // namespace parley::testing
