// End-to-end with an LLM: the real `parley` binary, its webhook adapter, and the
// OpenAI-compatible test server in this process; an HTTP tool's endpoint is a local receiver.

#include <algorithm>
#include <ctime>
#include <map>
#include <sstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/fakes/callback_server.h"
#include "tests/fakes/llm/llm_server.h"
#include "tests/support/daemon_process.h"
#include "tests/support/sample_kb.h"
#include "tests/support/temp_dir.h"

namespace parley::testing {
namespace {

using nlohmann::json;

constexpr char kLlmKey[] = "sk-test";
constexpr char kToolToken[] = "tool-token-4711";

class LlmE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    WriteSampleKnowledge(dir_.Sub("kb"));
    config_ = dir_.Sub("parley.toml");
    WriteFile(config_, ConfigText(dir_.Sub("store")));
  }
  void TearDown() override {
    if (HasFailure() && daemon_) std::cerr << "---- daemon log ----\n" << daemon_->Log();
  }

  std::map<std::string, std::string> Env() const {
    return {{"E2E_LLM_KEY", kLlmKey}, {"E2E_TOOL_TOKEN", kToolToken}};
  }

  void StartDaemon() {
    daemon_ = std::make_unique<DaemonProcess>(config_, dir_.Sub("port.json"),
                                              dir_.Sub("log.txt"), Env());
    ASSERT_TRUE(daemon_->Start()) << daemon_->Log();
  }

  std::string ConfigText(const std::string& store) const {
    return "[server]\nlisten = \"127.0.0.1:0\"\nport_file = \"" + dir_.Sub("port.json") +
           "\"\n\n[store]\npath = \"" + store + "\"\n\n[[knowledge.sources]]\npath = \"" +
           dir_.Sub("kb") +
           "\"\n\n[webhook]\ninsecure_no_auth = true\n\n"
           "[llm]\nenabled = true\nbase_url = \"" +
           llm_.base_url() +
           "\"\napi_key = \"${E2E_LLM_KEY}\"\nmodel = \"test-model\"\nmax_retries = 1\n"
           "breaker_failures = 50\n\n"
           "[[tools.http]]\nname = \"open_ticket\"\ndescription = \"Open a support ticket\"\n"
           "parameters = '{\"type\":\"object\",\"properties\":{\"summary\":{\"type\":\"string\"},"
           "\"email\":{\"type\":\"string\"}},\"required\":[\"summary\"]}'\n"
           "method = \"POST\"\nurl = \"" +
           tool_server_.Url("/tickets") +
           "\"\nheaders = { Authorization = \"Bearer ${E2E_TOOL_TOKEN}\" }\nredact = [\"email\"]\n"
           "\n[log]\nlevel = \"info\"\n";
  }

  json Ask(const std::string& conversation, const std::string& text) {
    json message = {{"conversation", conversation}, {"user", "u1"}, {"text", text}};
    auto r = daemon_->Post("/v1/messages", message.dump(),
                           {{"Content-Type", "application/json"}}, 30'000);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    if (!r.ok()) return json();
    EXPECT_EQ(r->status, 200) << r->body;
    return json::parse(r->body, nullptr, false);
  }

  static LlmReply Text(std::string text) {
    LlmReply r;
    r.text = std::move(text);
    return r;
  }

  TempDir dir_;
  LlmServer llm_;
  CallbackServer tool_server_;
  std::string config_;
  std::unique_ptr<DaemonProcess> daemon_;
};

TEST_F(LlmE2eTest, AnswersFromTheModelWithCitationsMappedToSources) {
  StartDaemon();
  llm_.Push(Text("Install it with `sudo apt install frobnicator` [2]."));
  json reply = Ask("c1", "how do i install the frobnicator on linux?");
  ASSERT_TRUE(reply.is_object());
  // The model cited its second source; the reply renumbers it as the first and only citation.
  EXPECT_EQ(reply["text"], "Install it with `sudo apt install frobnicator` [1].");
  ASSERT_EQ(reply["citations"].size(), 1u) << reply.dump();

  ASSERT_EQ(llm_.RequestCount(), 1u);
  const json request = llm_.Requests()[0];
  const json& messages = request["messages"];
  EXPECT_EQ(messages[0]["role"], "system");
  EXPECT_EQ(messages.back()["role"], "user");
  const std::string user = messages.back()["content"];
  // The cited source is the second <source> block the daemon sent.
  const size_t second = user.find("<source n=\"2\"");
  ASSERT_NE(second, std::string::npos) << user;
  const std::string cited_source = reply["citations"][0]["source"];
  EXPECT_NE(user.find(cited_source.substr(0, cited_source.find('.'))), std::string::npos);
  // The API key went in the Authorization header and nowhere into the log.
  bool auth = false;
  const auto headers = llm_.RequestHeaders();
  for (const auto& [name, value] : headers[0]) {
    if (name == "Authorization" || name == "authorization") auth = value == "Bearer sk-test";
  }
  EXPECT_TRUE(auth);
  EXPECT_EQ(daemon_->Log().find(kLlmKey), std::string::npos);
}

TEST_F(LlmE2eTest, WebhookStreamsTheAnswerAsServerSentEvents) {
  StartDaemon();
  LlmReply slow = Text("Install the frobnicator with apt, then run it once as root [1].");
  slow.chunk_chars = 3;
  slow.chunk_delay_ms = 40;
  llm_.Push(slow);
  json message = {{"conversation", "c-sse"}, {"user", "u1"}, {"text", "install frobnicator?"}};
  auto r = daemon_->Post("/v1/messages?stream=1", message.dump(),
                         {{"Content-Type", "application/json"}}, 30'000);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->status, 200);
  // Parse the event stream: "event: NAME\ndata: JSON\n\n" blocks.
  std::string deltas;
  std::vector<std::string> names;
  json final_message;
  std::istringstream in(r->body);
  std::string event;
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("event: ", 0) == 0) event = line.substr(7);
    if (line.rfind("data: ", 0) != 0) continue;
    json data = json::parse(line.substr(6));
    names.push_back(event);
    if (event == "delta") deltas += data["text"].get<std::string>();
    if (event == "message") final_message = data;
  }
  ASSERT_FALSE(names.empty()) << r->body;
  EXPECT_EQ(names.back(), "message") << r->body;
  EXPECT_GE(std::count(names.begin(), names.end(), "delta"), 2) << r->body;
  EXPECT_EQ(final_message["text"],
            "Install the frobnicator with apt, then run it once as root [1].");
  EXPECT_FALSE(deltas.empty());
  EXPECT_EQ(final_message["text"].get<std::string>().rfind(deltas, 0), 0u) << deltas;
}

TEST_F(LlmE2eTest, HttpToolIsCalledValidatedAndAudited) {
  StartDaemon();
  LlmReply bad;
  bad.kind = LlmReply::Kind::kToolCalls;
  bad.tool_calls = {{"call_bad", "open_ticket", R"({"email":"x@example.org"})"}};  // no summary
  llm_.Push(bad);
  LlmReply good;
  good.kind = LlmReply::Kind::kToolCalls;
  good.tool_calls = {{"call_ok", "open_ticket",
                      R"({"summary":"printer on fire","email":"ann@example.org"})"}};
  llm_.Push(good);
  llm_.Push(Text("I opened a ticket for you."));
  json reply = Ask("c-tool", "please open a ticket: the printer is on fire");
  EXPECT_EQ(reply["text"].get<std::string>().find("I opened a ticket for you."), 0u)
      << reply.dump();

  // Only the valid call reached the endpoint, with the configured secret header and the body.
  ASSERT_TRUE(tool_server_.WaitDelivered(1, 10'000));
  const auto received = tool_server_.Received();
  ASSERT_EQ(received.size(), 1u);
  EXPECT_EQ(received[0].path, "/tickets");
  EXPECT_EQ(json::parse(received[0].body),
            json({{"summary", "printer on fire"}, {"email", "ann@example.org"}}));
  std::string auth;
  for (const auto& [name, value] : received[0].headers) {
    if (name == "Authorization" || name == "authorization") auth = value;
  }
  EXPECT_EQ(auth, std::string("Bearer ") + kToolToken);

  // The model saw the validation error for the first call.
  const json second = llm_.Requests()[1];
  EXPECT_EQ(second["messages"].back()["tool_call_id"], "call_bad");
  EXPECT_NE(second["messages"].back()["content"].get<std::string>().find("invalid arguments"),
            std::string::npos);

  // `parley audit` goes through the running daemon and lists both calls, the email redacted.
  CommandResult audit = RunParley({"audit", "--json", "--config", config_}, "", 30'000, Env());
  ASSERT_EQ(audit.exit_code, 0) << audit.err;
  std::vector<json> records;
  std::istringstream lines(audit.out);
  for (std::string line; std::getline(lines, line);) records.push_back(json::parse(line));
  ASSERT_EQ(records.size(), 2u) << audit.out;
  EXPECT_EQ(records[0]["outcome"], "ok");  // newest first
  EXPECT_EQ(records[0]["arguments"]["email"], "***");
  EXPECT_EQ(records[0]["arguments"]["summary"], "printer on fire");
  EXPECT_EQ(records[1]["outcome"], "invalid_arguments");
  EXPECT_EQ(audit.out.find("ann@example.org"), std::string::npos);
  EXPECT_EQ(records[0]["conversation"], "webhook:c-tool");

  CommandResult human = RunParley({"audit", "--tool", "open_ticket", "--config", config_}, "",
                                  30'000, Env());
  ASSERT_EQ(human.exit_code, 0) << human.err;
  EXPECT_NE(human.out.find(" ok open_ticket "), std::string::npos) << human.out;
  EXPECT_NE(human.out.find("invalid_arguments open_ticket"), std::string::npos) << human.out;
}

TEST_F(LlmE2eTest, ModelDownMeansTheExtractiveAnswerWithANote) {
  StartDaemon();
  LlmReply down;
  down.kind = LlmReply::Kind::kHttpError;
  down.status = 502;
  down.content_type = "text/html";
  down.error_body = "<html><body>Bad Gateway</body></html>";
  llm_.Push(down);
  llm_.Push(down);
  json reply = Ask("c-down", "how do i install the frobnicator on linux?");
  const std::string text = reply["text"];
  EXPECT_NE(text.find("not available right now"), std::string::npos) << text;
  EXPECT_NE(text.find("apt install frobnicator"), std::string::npos) << text;
  EXPECT_FALSE(reply["citations"].empty());
  EXPECT_EQ(llm_.RequestCount(), 2u);
  auto metrics = daemon_->Get("/metrics");
  ASSERT_TRUE(metrics.ok());
  EXPECT_NE(metrics->body.find("parley_llm_fallbacks_total 1"), std::string::npos);
}

TEST_F(LlmE2eTest, AskInProcessUsesTheModelAndRemembersTheConversation) {
  llm_.Push(Text("First answer."));
  CommandResult first = RunParley({"ask", "--json", "--conversation", "cli-1", "--config",
                                   config_, "what is the frobnicator?"},
                                  "", 60'000, Env());
  ASSERT_EQ(first.exit_code, 0) << first.err;
  EXPECT_EQ(json::parse(first.out)["text"].get<std::string>().find("First answer."), 0u);
  llm_.Push(Text("Second answer."));
  CommandResult second = RunParley({"ask", "--json", "--conversation", "cli-1", "--config",
                                    config_, "and on windows?"},
                                   "", 60'000, Env());
  ASSERT_EQ(second.exit_code, 0) << second.err;
  const json messages = llm_.Requests()[1]["messages"];
  ASSERT_EQ(messages.size(), 4u);
  EXPECT_EQ(messages[1]["content"], "what is the frobnicator?");
  EXPECT_EQ(messages[2]["content"].get<std::string>().find("First answer."), 0u);
}

}  // namespace
}  // namespace parley::testing
