// End-to-end: the escalation desk in the real `parley serve` binary. A user talks in the webhook
// conversation "u1" (synchronous POST /v1/messages: the HTTP response is the answer); agents talk
// in the webhook conversations "agents" (queue general) and "billing" (queue billing, a policy
// queue for refunds). Everything the daemon says unprompted (cards, notices, relayed replies)
// goes to webhook.default_reply_url: a CallbackServer in this process. Waiting is by deadline
// and polling only.

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <regex>
#include <set>
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

constexpr int kWaitMs = 20'000;   // a callback, an SLA notice
constexpr int kPostMs = 15'000;   // one synchronous POST /v1/messages
constexpr int kAbsentMs = 1'500;  // how long "nothing more arrives" is watched

// A message the daemon delivered to the callback server.
struct Delivery {
  std::string id;  // the message id (also X-Parley-Delivery)
  std::string conversation;
  std::string thread;
  std::string text;
  bool escalated = false;
  std::string body;
};

bool Has(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

std::vector<Delivery> Parse(const std::vector<ReceivedCallback>& received) {
  std::vector<Delivery> out;
  for (const ReceivedCallback& r : received) {
    json j = json::parse(r.body, nullptr, false);
    if (!j.is_object()) continue;
    Delivery d;
    d.id = j.value("id", "");
    d.conversation = j.value("conversation", "");
    d.thread = j.value("thread", "");
    d.text = j.value("text", "");
    d.escalated = j.value("escalated", false);
    d.body = r.body;
    out.push_back(std::move(d));
  }
  return out;
}

// The ticket number in a desk text ("New escalation #3", "[#3] ...").
std::string TicketIdIn(const std::string& text) {
  std::smatch m;
  static const std::regex re("#([0-9]+)");
  return std::regex_search(text, m, re) ? m[1].str() : std::string();
}

// The tickets of a GET /v1/escalations answer: {"escalations": [ticket, ...]}.
json TicketArray(const json& body) {
  if (body.is_object() && body.contains("escalations") && body["escalations"].is_array()) {
    return body["escalations"];
  }
  return json::array();
}

std::string IdOf(const json& ticket) {
  if (!ticket.is_object() || !ticket.contains("id")) return "";
  return ticket["id"].is_string() ? ticket["id"].get<std::string>() : ticket["id"].dump();
}

class EscalationE2eTest : public ::testing::Test {
 protected:
  void SetUp() override { WriteSampleKnowledge(dir_.Sub("kb")); }
  void TearDown() override {
    if (HasFailure() && daemon_) std::cerr << "---- daemon log ----\n" << daemon_->Log();
  }

  // general_sla: the general queue's sla_minutes as TOML text; extra: more TOML at the end.
  std::string ConfigText(const std::string& general_sla, const std::string& extra = "") const {
    return "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nport_file = \"" +
           dir_.Sub("port.json") + "\"\n\n[store]\npath = \"" + dir_.Sub("store") +
           "\"\n\n[[knowledge.sources]]\npath = \"" + dir_.Sub("kb") +
           "\"\n\n[policy]\nuser_rate_per_minute = 600\nuser_burst = 100\n"
           "conversation_rate_per_minute = 600\nconversation_burst = 100\n\n"
           "[webhook]\ninsecure_no_auth = true\ndefault_reply_url = \"" +
           callback_.Url("/desk") +
           "\"\n\n[escalation]\n\n"
           "[[escalation.queues]]\nname = \"general\"\nagents = \"webhook:agents\"\n"
           "sla_minutes = " +
           general_sla +
           "\noncall = \"@oncall\"\nagent_users = [\"bob\", \"carol\"]\n\n"
           "[[escalation.queues]]\nname = \"billing\"\nagents = \"webhook:billing\"\n"
           "patterns = [\"refund\"]\ntopics = [\"billing\"]\npolicy = true\nagent_users = "
           "[\"dave\"]\n\n"
           "[log]\nlevel = \"debug\"\n" +
           extra;
  }

  // Writes the config and starts the daemon; false (with a test failure) when it does not start.
  bool StartDaemon(const std::string& general_sla = "30", const std::string& extra = "") {
    config_ = dir_.Sub("parley.toml");
    WriteFile(config_, ConfigText(general_sla, extra));
    daemon_ = std::make_unique<DaemonProcess>(
        config_, dir_.Sub("port.json"), dir_.Sub("log.txt"),
        std::map<std::string, std::string>{{"E2E_LLM_KEY", "sk-test"}});
    const bool ready = daemon_->Start();
    EXPECT_TRUE(ready) << daemon_->Log();
    return ready;
  }

  bool Restart() {
    const bool ready = daemon_->Start();
    EXPECT_TRUE(ready) << daemon_->Log();
    return ready;
  }

  // A synchronous message; the parsed response (null when the request failed).
  json Post(const std::string& conversation, const std::string& user, const std::string& text,
            const std::string& thread = "", const std::string& user_name = "") {
    json message = {{"conversation", conversation}, {"user", user}, {"text", text}};
    if (!thread.empty()) message["thread"] = thread;
    if (!user_name.empty()) message["user_name"] = user_name;
    auto r = daemon_->Post("/v1/messages", message.dump(), {{"Content-Type", "application/json"}},
                           kPostMs);
    EXPECT_TRUE(r.ok()) << "POST " << message.dump() << ": " << r.status().ToString();
    if (!r.ok()) return json();
    EXPECT_EQ(r->status, 200) << message.dump() << " -> " << r->body;
    json body = json::parse(r->body, nullptr, false);
    return body.is_discarded() ? json() : body;
  }
  // A message with the client's own event id; {status, parsed body} (a retry may get 409).
  std::pair<int, json> PostWithId(const std::string& conversation, const std::string& user,
                                  const std::string& text, const std::string& thread,
                                  const std::string& id) {
    json message = {{"conversation", conversation}, {"user", user}, {"text", text}, {"id", id}};
    if (!thread.empty()) message["thread"] = thread;
    auto r = daemon_->Post("/v1/messages", message.dump(), {{"Content-Type", "application/json"}},
                           kPostMs);
    EXPECT_TRUE(r.ok()) << "POST " << message.dump() << ": " << r.status().ToString();
    if (!r.ok()) return {0, json()};
    return {r->status, json::parse(r->body, nullptr, false)};
  }
  json User(const std::string& text, const std::string& conversation = "u1",
            const std::string& user = "alice") {
    return Post(conversation, user, text);
  }
  json Agent(const std::string& text, const std::string& thread = "",
             const std::string& user = "bob", const std::string& channel = "agents") {
    return Post(channel, user, text, thread);
  }
  static std::string Text(const json& reply) {
    return reply.is_object() && reply.contains("text") && reply["text"].is_string()
               ? reply["text"].get<std::string>()
               : std::string();
  }

  std::vector<Delivery> Delivered() const { return Parse(callback_.Delivered()); }

  // The first delivered message to `conversation` whose text contains every part, waiting up to
  // timeout_ms (nullopt at the deadline).
  std::optional<Delivery> Await(const std::string& conversation,
                                const std::vector<std::string>& parts,
                                int timeout_ms = kWaitMs) const {
    auto find = [&](const std::vector<ReceivedCallback>& all) -> std::optional<Delivery> {
      for (const Delivery& d : Parse(all)) {
        if (d.conversation != conversation) continue;
        bool all_parts = true;
        for (const std::string& p : parts) all_parts = all_parts && Has(d.text, p);
        if (all_parts) return d;
      }
      return std::nullopt;
    };
    std::optional<Delivery> found;
    callback_.WaitUntil(
        [&](const std::vector<ReceivedCallback>& all) {
          found = find(all);
          return found.has_value();
        },
        timeout_ms);
    return found;
  }

  // Messages delivered to `conversation` so far.
  std::vector<Delivery> To(const std::string& conversation) const {
    std::vector<Delivery> out;
    for (Delivery& d : Delivered()) {
      if (d.conversation == conversation) out.push_back(std::move(d));
    }
    return out;
  }

  // Opens a ticket from u1 with a request phrase; returns {ticket id, card}.
  std::pair<std::string, Delivery> Open(const std::string& conversation = "u1",
                                        const std::string& user = "alice") {
    json ack = User("Can I talk to a human, please?", conversation, user);
    EXPECT_TRUE(Has(Text(ack), "number")) << ack.dump();
    std::optional<Delivery> card = Await("agents", {"New escalation #", user});
    EXPECT_TRUE(card.has_value()) << "no card for " << conversation;
    if (!card) return {"", Delivery{}};
    return {TicketIdIn(card->text), *card};
  }

  // Claims ticket `id` by `agent` in the card's thread; returns the agent's answer.
  json Claim(const Delivery& card, const std::string& agent = "bob") {
    json answer = Agent("claim", card.id, agent);
    EXPECT_TRUE(Has(Text(answer), agent + " claimed #")) << answer.dump();
    return answer;
  }

  uint16_t AdminPort() const {
    std::ifstream in(dir_.Sub("port.json"));
    json ports = json::parse(in, nullptr, false);
    if (!ports.is_object() || !ports.contains("admin")) return 0;
    return static_cast<uint16_t>(ports["admin"].get<int>());
  }

  // GET on the admin listener; {status, parsed body}.
  std::pair<int, json> AdminGet(const std::string& path_and_query) const {
    net::ClientRequest req;
    req.url = "http://127.0.0.1:" + std::to_string(AdminPort()) + path_and_query;
    auto r = net::BlockingRequest(req);
    if (!r.ok()) return {0, json()};
    return {r->status, json::parse(r->body, nullptr, false)};
  }

  // The ticket as the admin listener shows it (null when absent).
  json Ticket(const std::string& id) const {
    auto [status, body] = AdminGet("/v1/escalations/" + id);
    EXPECT_EQ(status, 200) << body.dump();
    return status == 200 ? body : json();
  }
  // Polls the admin listener until pred(ticket) holds, up to timeout_ms.
  bool AwaitTicket(const std::string& id, const std::function<bool(const json&)>& pred,
                   int timeout_ms = kWaitMs) const {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    for (;;) {
      if (pred(Ticket(id))) return true;
      if (std::chrono::steady_clock::now() > deadline) return false;
      callback_.WaitDelivered(callback_.Delivered().size() + 1, 50);  // poll interval
    }
  }
  static std::string Field(const json& ticket, const char* key) {
    return ticket.is_object() && ticket.contains(key) && ticket[key].is_string()
               ? ticket[key].get<std::string>()
               : std::string();
  }

  CommandResult Cli(const std::vector<std::string>& args) const {
    std::vector<std::string> full = args;
    full.push_back("--config");
    full.push_back(config_);
    return RunParley(full, "", 30'000);
  }

  // No two different message ids carry the same message (conversation and text): nothing was
  // shown twice. A redelivery under the same id (the webhook's at-least-once contract, receivers
  // dedupe by X-Parley-Delivery) must repeat the same body. Returns the number of redeliveries.
  int ExpectNothingShownTwice() const {
    std::map<std::string, std::string> body_by_id;
    std::map<std::pair<std::string, std::string>, std::string> id_by_message;
    int redeliveries = 0;
    for (const ReceivedCallback& r : callback_.Delivered()) {
      for (const Delivery& d : Parse({r})) {
        EXPECT_EQ(net::FindHeader(r.headers, "x-parley-delivery"), d.id) << d.body;
        auto [it, fresh] = body_by_id.emplace(d.id, d.body);
        if (!fresh) {
          ++redeliveries;
          std::cerr << "redelivered (same id): " << d.conversation << " " << d.id << ": "
                    << d.text.substr(0, 60) << "\n";
          EXPECT_EQ(it->second, d.body) << "id " << d.id << " delivered with different bodies";
          continue;
        }
        auto [m, new_message] = id_by_message.emplace(std::make_pair(d.conversation, d.text), d.id);
        EXPECT_TRUE(new_message) << "shown twice under ids " << m->second << " and " << d.id << ": "
                                 << d.conversation << ": " << d.text;
      }
    }
    return redeliveries;
  }

  TempDir dir_;
  CallbackServer callback_;
  std::string config_;
  std::unique_ptr<DaemonProcess> daemon_;
};

// ---------------------------------------------------------------------------------------------
// Triggers and routing

TEST_F(EscalationE2eTest, RequestPhraseQueuesTheUserAndPostsTheCard) {
  ASSERT_TRUE(StartDaemon());
  json answer = User("how do I install the widget on linux?");
  ASSERT_TRUE(Has(Text(answer), "widget-setup")) << answer.dump();

  json ack = User("It did not work. Can I talk to a human, please?");
  EXPECT_TRUE(Has(Text(ack), "passed your conversation to our team (general)")) << ack.dump();
  EXPECT_TRUE(Has(Text(ack), "You are number 1 in the queue")) << ack.dump();
  EXPECT_TRUE(Has(Text(ack), "`cancel`")) << ack.dump();
  EXPECT_TRUE(ack.value("escalated", false)) << ack.dump();

  std::optional<Delivery> card = Await("agents", {"New escalation #"});
  ASSERT_TRUE(card.has_value()) << daemon_->Log();
  EXPECT_TRUE(card->thread.empty()) << card->body;
  EXPECT_FALSE(card->id.empty());
  const std::string id = TicketIdIn(card->text);
  ASSERT_FALSE(id.empty()) << card->text;
  EXPECT_TRUE(Has(card->text, "Queue: general")) << card->text;
  EXPECT_TRUE(Has(card->text, "Reason: asked for a person")) << card->text;
  EXPECT_TRUE(Has(card->text, "talk to a human")) << card->text;
  EXPECT_TRUE(Has(card->text, "alice (webhook:u1)")) << card->text;
  // The conversation so far is on the card: the earlier question and the bot's answer.
  EXPECT_TRUE(Has(card->text, "install the widget on linux")) << card->text;
  EXPECT_TRUE(Has(card->text, "widget-setup")) << card->text;
  EXPECT_TRUE(Has(card->text, "`claim " + id + "`")) << card->text;

  // A second user waits behind the first.
  json second = User("agent please", "u2", "erin");
  EXPECT_TRUE(Has(Text(second), "You are number 2 in the queue")) << second.dump();
  ASSERT_TRUE(Await("agents", {"New escalation #", "erin (webhook:u2)"}).has_value());
  // Nothing went to the users' conversations unprompted: their answers were the responses.
  EXPECT_TRUE(To("u1").empty());
  EXPECT_TRUE(To("u2").empty());
}

TEST_F(EscalationE2eTest, PolicyPatternGoesToBillingBeforeTheBotAnswers) {
  ASSERT_TRUE(StartDaemon());
  json ack = User("I want a refund for order 42");
  EXPECT_TRUE(Has(Text(ack), "passed your conversation to our team (billing)")) << ack.dump();
  EXPECT_TRUE(Has(Text(ack), "number 1 in the queue")) << ack.dump();
  // The bot did not answer (the knowledge base knows about refunds: "fourteen days").
  EXPECT_FALSE(Has(Text(ack), "fourteen days")) << ack.dump();
  EXPECT_TRUE(!ack.contains("citations") || ack["citations"].empty()) << ack.dump();

  std::optional<Delivery> card = Await("billing", {"New escalation #"});
  ASSERT_TRUE(card.has_value()) << daemon_->Log();
  EXPECT_TRUE(Has(card->text, "Queue: billing")) << card->text;
  EXPECT_TRUE(Has(card->text, "policy: always handled by people")) << card->text;
  EXPECT_TRUE(Has(card->text, "refund")) << card->text;
  EXPECT_TRUE(Has(card->text, "I want a refund for order 42")) << card->text;
  EXPECT_TRUE(To("agents").empty());  // not the general queue's
}

TEST_F(EscalationE2eTest, LowConfidenceStreakOpensATicketWithTheThirdAnswer) {
  ASSERT_TRUE(StartDaemon());
  for (const char* q :
       {"what will the weather be on mars tomorrow?", "which football team won the cup in 1954?"}) {
    json reply = User(q);
    EXPECT_TRUE(Has(Text(reply), "couldn't find")) << reply.dump();
    EXPECT_FALSE(reply.value("escalated", true)) << reply.dump();
  }
  json third = User("what is the airspeed of an unladen swallow?");
  EXPECT_TRUE(Has(Text(third), "couldn't find")) << third.dump();  // the bot's answer, then
  EXPECT_TRUE(Has(Text(third), "passed your conversation to our team (general)")) << third.dump();
  EXPECT_TRUE(third.value("escalated", false)) << third.dump();
  std::optional<Delivery> card = Await("agents", {"New escalation #"});
  ASSERT_TRUE(card.has_value()) << daemon_->Log();
  EXPECT_TRUE(Has(card->text, "Reason: low-confidence answers in a row")) << card->text;
  EXPECT_TRUE(Has(card->text, "unladen swallow")) << card->text;
  EXPECT_EQ(Field(Ticket(TicketIdIn(card->text)), "reason"), "low_confidence");
}

TEST_F(EscalationE2eTest, ModelHandsOverWithTheEscalateTool) {
  LlmServer llm;
  LlmReply call;
  call.kind = LlmReply::Kind::kToolCalls;
  call.tool_calls = {
      {"call_1", "escalate_to_human", R"({"reason":"double charge","topic":"billing"})"}};
  llm.Push(call);
  LlmReply text;
  text.text = "Let me get someone from billing for you.";
  llm.Push(text);
  ASSERT_TRUE(StartDaemon("30", "\n[llm]\nenabled = true\nbase_url = \"" + llm.base_url() +
                                    "\"\napi_key = \"${E2E_LLM_KEY}\"\nmodel = \"test-model\"\n"
                                    "max_retries = 1\n"));
  json reply = User("my card was charged twice for one order");
  EXPECT_TRUE(reply.value("escalated", false)) << reply.dump();
  EXPECT_TRUE(Has(Text(reply), "passed your conversation to our team (billing)")) << reply.dump();
  // Routed by the model's topic to billing (the text matches no pattern).
  std::optional<Delivery> card = Await("billing", {"New escalation #"});
  ASSERT_TRUE(card.has_value()) << daemon_->Log();
  EXPECT_TRUE(Has(card->text, "Reason: the assistant handed over")) << card->text;
  EXPECT_TRUE(Has(card->text, "double charge")) << card->text;
  EXPECT_TRUE(Has(card->text, "charged twice")) << card->text;
  // The tool was offered to the model.
  ASSERT_GE(llm.RequestCount(), 1u);
  EXPECT_TRUE(Has(llm.Requests()[0].dump(), "escalate_to_human"));
}

TEST_F(EscalationE2eTest, ModelWritesTheTicketSummaryForTheAgents) {
  LlmServer llm;
  const std::string summary = "Alice's order 42 arrived broken and she wants a replacement.";
  llm.SetResponder([&](const json& request) {
    LlmReply reply;
    const std::string system = request["messages"][0].value("content", "");
    if (!Has(system, "hand-over note")) {
      reply.text = "I am sorry to hear that.";
    } else if (Has(request.dump(), "charged twice")) {
      reply.kind = LlmReply::Kind::kHttpError;  // 400: not retried
      reply.status = 400;
    } else {
      reply.text = summary;
    }
    return reply;
  });
  ASSERT_TRUE(StartDaemon("30", "\n[llm]\nenabled = true\nbase_url = \"" + llm.base_url() +
                                    "\"\napi_key = \"${E2E_LLM_KEY}\"\nmodel = \"test-model\"\n"
                                    "max_retries = 0\n"));
  User("My order 42 arrived broken.");
  const auto [id, card] = Open();
  ASSERT_FALSE(id.empty());
  // The card goes out at once with the condensed summary; the model's follows in its thread.
  EXPECT_TRUE(Has(card.text, "Summary: The user wrote")) << card.text;
  std::optional<Delivery> posted = Await("agents", {"*Summary:* " + summary});
  ASSERT_TRUE(posted.has_value()) << daemon_->Log();
  // In the card's thread; or, when the summary beat the card's delivery receipt, on the main
  // line naming the ticket.
  EXPECT_TRUE(posted->thread == card.id || Has(posted->text, "[#" + id + "]")) << posted->body;
  json ticket = Ticket(id);
  EXPECT_EQ(Field(ticket, "summary"), summary) << ticket.dump();
  EXPECT_EQ(Field(ticket, "summary_source"), "model") << ticket.dump();
  // The model saw the conversation, asked without streaming.
  json asked;
  for (const json& r : llm.Requests()) {
    if (Has(r.dump(), "hand-over note")) asked = r;
  }
  ASSERT_TRUE(asked.is_object());
  EXPECT_FALSE(asked.value("stream", false)) << asked.dump();
  EXPECT_TRUE(Has(asked.dump(), "My order 42 arrived broken.")) << asked.dump();
  EXPECT_TRUE(Has(asked.dump(), "I am sorry to hear that.")) << asked.dump();

  // The model failing leaves the condensed summary and says nothing more.
  User("I was charged twice.", "u2", "erin");
  const auto [id2, card2] = Open("u2", "erin");
  ASSERT_FALSE(id2.empty());
  EXPECT_TRUE(AwaitTicket(id2, [](const json& t) { return Field(t, "summary_source") == "turns"; }))
      << Ticket(id2).dump();
  EXPECT_TRUE(Has(Field(Ticket(id2), "summary"), "charged twice")) << Ticket(id2).dump();
  for (const Delivery& d : To("agents")) {
    EXPECT_FALSE(d.thread == card2.id && Has(d.text, "Summary")) << d.text;
  }
  ExpectNothingShownTwice();
}

// ---------------------------------------------------------------------------------------------
// Claim, relay, notes

TEST_F(EscalationE2eTest, ClaimThenRelayBothWays) {
  ASSERT_TRUE(StartDaemon());
  auto [id, card] = Open();
  ASSERT_FALSE(id.empty());

  // While queued the bot stays silent and the message is kept for the agent.
  json waiting = User("are you there?");
  EXPECT_TRUE(Text(waiting).empty() || Has(Text(waiting), "Still waiting")) << waiting.dump();
  EXPECT_TRUE(!waiting.contains("citations") || waiting["citations"].empty()) << waiting.dump();

  // Claim in the card's thread: the agent sees what the user wrote while waiting.
  json claimed = Claim(card);
  EXPECT_TRUE(Has(Text(claimed), "bob claimed #" + id)) << claimed.dump();
  EXPECT_TRUE(Has(Text(claimed), "are you there?")) << claimed.dump();
  std::optional<Delivery> joined = Await("u1", {"bob has joined the conversation."});
  ASSERT_TRUE(joined.has_value()) << daemon_->Log();
  EXPECT_TRUE(joined->escalated);

  // The webhook reported the card delivered: its own message id is the ticket's thread.
  EXPECT_TRUE(AwaitTicket(id, [&](const json& t) { return Field(t, "card_thread") == card.id; }))
      << Ticket(id).dump();

  // User -> the card's thread.
  json relayed = User("my order number is 42");
  EXPECT_TRUE(Text(relayed).empty()) << relayed.dump();  // the bot stays silent
  std::optional<Delivery> up = Await("agents", {"my order number is 42"});
  ASSERT_TRUE(up.has_value()) << daemon_->Log();
  EXPECT_EQ(up->thread, card.id) << up->body;
  EXPECT_EQ(up->text, "*alice:* my order number is 42");

  // Agent (in the thread) -> the user, labelled with the agent's name.
  json sent = Agent("Order 42 ships today.", card.id);
  EXPECT_TRUE(Text(sent).empty()) << sent.dump();  // nothing to show the agent; no bot answer
  std::optional<Delivery> down = Await("u1", {"Order 42 ships today."});
  ASSERT_TRUE(down.has_value()) << daemon_->Log();
  EXPECT_EQ(down->text, "**bob:** Order 42 ships today.");
  EXPECT_TRUE(down->escalated);

  // From the channel's main line with the ticket number.
  Agent("reply " + id + " Anything else?");
  ASSERT_TRUE(Await("u1", {"**bob:** Anything else?"}).has_value()) << daemon_->Log();
  ExpectNothingShownTwice();
}

TEST_F(EscalationE2eTest, DisplayNamesLabelTheUserAndTheAgent) {
  ASSERT_TRUE(StartDaemon());
  json ack = Post("u1", "U-7731", "Can I talk to a human, please?", "", "Alice Jones");
  EXPECT_TRUE(Has(Text(ack), "number")) << ack.dump();
  std::optional<Delivery> card = Await("agents", {"New escalation #", "User: Alice Jones"});
  ASSERT_TRUE(card.has_value()) << daemon_->Log();
  const std::string id = TicketIdIn(card->text);

  json claimed = Post("agents", "bob", "claim", card->id, "Bob Smith");
  EXPECT_TRUE(Has(Text(claimed), "Bob Smith claimed #" + id)) << claimed.dump();
  ASSERT_TRUE(Await("u1", {"Bob Smith has joined the conversation."}).has_value())
      << daemon_->Log();
  Post("agents", "bob", "Hello Alice, how can I help?", card->id, "Bob Smith");
  ASSERT_TRUE(Await("u1", {"**Bob Smith:** Hello Alice, how can I help?"}).has_value())
      << daemon_->Log();
  Post("u1", "U-7731", "My parcel is late.", "", "Alice Jones");
  std::optional<Delivery> up = Await("agents", {"My parcel is late."});
  ASSERT_TRUE(up.has_value()) << daemon_->Log();
  EXPECT_EQ(up->text, "*Alice Jones:* My parcel is late.");
  json ticket = Ticket(id);
  EXPECT_EQ(Field(ticket, "user"), "U-7731") << ticket.dump();
  EXPECT_EQ(Field(ticket, "user_name"), "Alice Jones") << ticket.dump();
  EXPECT_EQ(Field(ticket, "agent"), "bob") << ticket.dump();  // the id; agent_users lists ids
  EXPECT_EQ(Field(ticket, "agent_name"), "Bob Smith") << ticket.dump();

  // A name that is not one short line is refused like any malformed field.
  auto bad = daemon_->Post(
      "/v1/messages",
      json{{"conversation", "u1"}, {"user", "U-7731"}, {"text", "hi"}, {"user_name", "a\nb"}}
          .dump(),
      {{"Content-Type", "application/json"}}, kPostMs);
  ASSERT_TRUE(bad.ok());
  EXPECT_EQ(bad->status, 422) << bad->body;
  EXPECT_NE(bad->body.find("user_name"), std::string::npos) << bad->body;
  ExpectNothingShownTwice();
}

TEST_F(EscalationE2eTest, NotesNeverReachTheUser) {
  ASSERT_TRUE(StartDaemon());
  auto [id, card] = Open();
  ASSERT_FALSE(id.empty());
  Claim(card);
  ASSERT_TRUE(Await("u1", {"has joined"}).has_value());

  json in_thread = Agent("note customer is a VIP, be nice", card.id);
  EXPECT_FALSE(Has(Text(in_thread), "VIP")) << in_thread.dump();
  json from_channel = Agent("note " + id + " second internal remark");
  EXPECT_TRUE(Has(Text(from_channel), "Noted on #" + id + " (internal, not shown to the user)"))
      << from_channel.dump();
  // A later relay arrives; the notes, sent before it, never do.
  Agent("Hello from the team.", card.id);
  ASSERT_TRUE(Await("u1", {"**bob:** Hello from the team."}).has_value()) << daemon_->Log();
  for (const Delivery& d : To("u1")) {
    EXPECT_FALSE(Has(d.text, "VIP")) << d.text;
    EXPECT_FALSE(Has(d.text, "internal remark")) << d.text;
  }
  // The notes are in the ticket for the agents and operators.
  json ticket = Ticket(id);
  ASSERT_TRUE(ticket.is_object()) << "ticket " << id << " not listed";
  bool first = false, second = false;
  for (const json& e : ticket.value("transcript", json::array())) {
    if (e.value("role", "") != "note") continue;
    first = first || Has(e.value("text", ""), "customer is a VIP");
    second = second || Has(e.value("text", ""), "second internal remark");
  }
  EXPECT_TRUE(first && second) << ticket.dump();
}

// ---------------------------------------------------------------------------------------------
// Closing: return, resolve, cancel

TEST_F(EscalationE2eTest, ReturnHandsTheUserBackToTheBot) {
  ASSERT_TRUE(StartDaemon());
  auto [id, card] = Open();
  ASSERT_FALSE(id.empty());
  Claim(card);
  json returned = Agent("return", card.id);
  EXPECT_TRUE(Has(Text(returned), "Returned #" + id + " to the bot.")) << returned.dump();
  std::optional<Delivery> back = Await("u1", {"You are talking to the bot again."});
  ASSERT_TRUE(back.has_value()) << daemon_->Log();
  EXPECT_TRUE(Has(back->text, "bob handed you back to the bot")) << back->text;

  json answer = User("how do I install the frobnicator on linux?");
  EXPECT_TRUE(Has(Text(answer), "apt install frobnicator")) << answer.dump();
  ASSERT_TRUE(answer.contains("citations") && !answer["citations"].empty()) << answer.dump();
  EXPECT_EQ(answer["citations"][0]["source"], "frobnicator.md") << answer.dump();
  EXPECT_FALSE(answer.value("escalated", true)) << answer.dump();
  EXPECT_EQ(Field(Ticket(id), "state"), "returned_to_bot");
}

TEST_F(EscalationE2eTest, ResolveClosesTheTicket) {
  ASSERT_TRUE(StartDaemon());
  auto [id, card] = Open();
  ASSERT_FALSE(id.empty());
  Claim(card);
  json resolved = Agent("resolve " + id);
  EXPECT_TRUE(Has(Text(resolved), "Resolved #" + id + ".")) << resolved.dump();
  std::optional<Delivery> told = Await("u1", {"bob marked this as resolved."});
  ASSERT_TRUE(told.has_value()) << daemon_->Log();
  EXPECT_TRUE(Has(told->text, "talking to the bot again")) << told->text;
  EXPECT_EQ(Field(Ticket(id), "state"), "resolved");

  // Closed: a second resolve changes nothing; the bot answers the user again.
  json again = Agent("resolve " + id);
  EXPECT_TRUE(Has(Text(again), "already resolved; nothing changed")) << again.dump();
  json answer = User("how do I install the widget on linux?");
  EXPECT_TRUE(Has(Text(answer), "widget-setup")) << answer.dump();
  EXPECT_FALSE(answer.value("escalated", true));
}

TEST_F(EscalationE2eTest, UserCancelsWhileWaiting) {
  ASSERT_TRUE(StartDaemon());
  auto [id, card] = Open();
  ASSERT_FALSE(id.empty());
  json cancelled = User("cancel");
  EXPECT_TRUE(Has(Text(cancelled), "cancelled your request for a person")) << cancelled.dump();
  EXPECT_TRUE(Has(Text(cancelled), "talking to the bot again")) << cancelled.dump();
  std::optional<Delivery> agents = Await("agents", {"alice cancelled #" + id});
  ASSERT_TRUE(agents.has_value()) << daemon_->Log();
  EXPECT_EQ(Field(Ticket(id), "state"), "abandoned");

  json late = Agent("claim", card.id);
  EXPECT_TRUE(Has(Text(late), "already abandoned; nothing changed")) << late.dump();
  json answer = User("how do I install the widget on linux?");
  EXPECT_TRUE(Has(Text(answer), "widget-setup")) << answer.dump();
}

// ---------------------------------------------------------------------------------------------
// Transfer and bad input

TEST_F(EscalationE2eTest, TransferToBillingAndToAnUnknownQueue) {
  ASSERT_TRUE(StartDaemon());
  auto [id, card] = Open();
  ASSERT_FALSE(id.empty());
  Claim(card);
  ASSERT_TRUE(Await("u1", {"has joined"}).has_value());

  json nowhere = Agent("transfer nowhere", card.id);
  EXPECT_TRUE(Has(Text(nowhere),
                  "There is no queue `nowhere` (queues: general, billing); "
                  "nothing changed."))
      << nowhere.dump();
  json unchanged = Ticket(id);
  EXPECT_EQ(Field(unchanged, "state"), "claimed") << unchanged.dump();
  EXPECT_EQ(Field(unchanged, "queue"), "general") << unchanged.dump();
  EXPECT_EQ(Field(unchanged, "agent"), "bob") << unchanged.dump();

  json moved = Agent("transfer billing", card.id);
  EXPECT_TRUE(Has(Text(moved), "Transferred #" + id + " to billing.")) << moved.dump();
  std::optional<Delivery> new_card = Await("billing", {"transferred from general"});
  ASSERT_TRUE(new_card.has_value()) << daemon_->Log();
  EXPECT_TRUE(Has(new_card->text, "Escalation #" + id)) << new_card->text;
  std::optional<Delivery> user = Await("u1", {"our billing team", "number 1 in the queue"});
  ASSERT_TRUE(user.has_value()) << daemon_->Log();
  json t = Ticket(id);
  EXPECT_EQ(Field(t, "queue"), "billing") << t.dump();
  EXPECT_EQ(Field(t, "state"), "queued") << t.dump();

  // The old channel can no longer act; billing's agent claims in the new card's thread.
  json old = Agent("claim " + id);
  EXPECT_TRUE(Has(Text(old), "is in queue billing")) << old.dump();
  json taken = Agent("claim", new_card->id, "dave", "billing");
  EXPECT_TRUE(Has(Text(taken), "dave claimed #" + id)) << taken.dump();
  ASSERT_TRUE(Await("u1", {"dave has joined the conversation."}).has_value());
}

TEST_F(EscalationE2eTest, BadCommandsGetAClearReplyAndChangeNothing) {
  ASSERT_TRUE(StartDaemon());
  auto [id, card] = Open();
  ASSERT_FALSE(id.empty());

  json unknown = Agent("claim 999");
  EXPECT_TRUE(Has(Text(unknown), "There is no ticket #999; nothing changed.")) << unknown.dump();
  // Not one of the queue's agent_users.
  json intruder = Agent("claim " + id, "", "mallory");
  EXPECT_TRUE(Has(Text(intruder), "Only the agents of this queue can act on tickets"))
      << intruder.dump();
  json early = Agent("I can help you", card.id);
  EXPECT_TRUE(Has(Text(early), "Claim #" + id + " first")) << early.dump();
  json unknown_verb = Agent("!frobnicate", card.id);
  EXPECT_TRUE(Has(Text(unknown_verb), "Unknown command `frobnicate`")) << unknown_verb.dump();
  // The billing channel cannot act on a general ticket.
  json foreign = Agent("claim " + id, "", "dave", "billing");
  EXPECT_TRUE(Has(Text(foreign), "is in queue general")) << foreign.dump();
  EXPECT_EQ(Field(Ticket(id), "state"), "queued");

  Claim(card, "bob");
  ASSERT_TRUE(Await("u1", {"bob has joined"}).has_value());
  json second = Agent("claim " + id, "", "carol");
  EXPECT_TRUE(Has(Text(second), "already claimed by bob; nothing changed.")) << second.dump();
  json other = Agent("I can take this one", card.id, "carol");
  EXPECT_TRUE(Has(Text(other), "only they can reply to the user. Nothing was sent."))
      << other.dump();
  json t = Ticket(id);
  EXPECT_EQ(Field(t, "state"), "claimed") << t.dump();
  EXPECT_EQ(Field(t, "agent"), "bob") << t.dump();

  // A plain message on the channel's main line is not a command (no desk reply, no change).
  Agent("anyone up for lunch?");
  // The user heard only that bob joined, then bob's next reply.
  Agent("Still with you.", card.id);
  ASSERT_TRUE(Await("u1", {"**bob:** Still with you."}).has_value());
  for (const Delivery& d : To("u1")) {
    EXPECT_FALSE(Has(d.text, "carol")) << d.text;
    EXPECT_FALSE(Has(d.text, "I can help you")) << d.text;
    EXPECT_FALSE(Has(d.text, "mallory")) << d.text;
  }
  EXPECT_EQ(To("u1").size(), 2u);
}

// ---------------------------------------------------------------------------------------------
// SLA

TEST_F(EscalationE2eTest, SlaBreachReannouncesTheCardRaisesPriorityAndUpdatesTheUser) {
  // 0.05 min = 3 s; the daemon checks SLA timers every few seconds.
  ASSERT_TRUE(StartDaemon("0.05"));
  auto [first, first_card] = Open("u2", "erin");
  auto [second, second_card] = Open("u1", "alice");
  ASSERT_FALSE(first.empty());
  ASSERT_FALSE(second.empty());

  // Stage 1: the card re-announced on the main line, the waiting user updated. Then a claim
  // stops the first ticket's timers.
  std::optional<Delivery> again = Await("agents", {"Still waiting: escalation #" + first});
  ASSERT_TRUE(again.has_value()) << daemon_->Log();
  EXPECT_TRUE(again->thread.empty()) << again->body;
  EXPECT_TRUE(Has(again->text, "SLA 0.05 min")) << again->text;
  std::optional<Delivery> erin = Await("u2", {"Sorry for the wait", "number 1 in the queue"});
  ASSERT_TRUE(erin.has_value()) << daemon_->Log();
  EXPECT_TRUE(erin->escalated);
  Claim(first_card);
  ASSERT_TRUE(Await("agents", {"Still waiting: escalation #" + second}).has_value())
      << daemon_->Log();
  ASSERT_TRUE(Await("u1", {"Sorry for the wait", "in the queue"}).has_value()) << daemon_->Log();

  // Stage 2 of the second ticket, one SLA period later: priority raised, on-call mentioned.
  std::optional<Delivery> raised = Await(
      "agents", {"Escalation #" + second + " has waited", "Priority raised to P2", "@oncall"});
  ASSERT_TRUE(raised.has_value()) << daemon_->Log();
  EXPECT_EQ(Ticket(second).value("priority", 0), 2);
  EXPECT_EQ(Ticket(second).value("sla_stage", 0), 2);
  ASSERT_TRUE(Await("u1", {"Sorry for the wait", "number 1 in the queue"}).has_value());
  // The claimed ticket, due earlier, would have been raised by the same timer check.
  EXPECT_FALSE(callback_.WaitUntil(
      [&](const std::vector<ReceivedCallback>& all) {
        for (const Delivery& d : Parse(all)) {
          if (Has(d.text, "Escalation #" + first + " has waited")) return true;
        }
        return false;
      },
      kAbsentMs))
      << "an SLA notice for the claimed ticket";
  json claimed = Ticket(first);
  EXPECT_EQ(claimed.value("sla_stage", 0), 1) << claimed.dump();
  EXPECT_EQ(claimed.value("priority", 0), 3) << claimed.dump();
}

// ---------------------------------------------------------------------------------------------
// Operators

TEST_F(EscalationE2eTest, OperatorsListShowAndQueryTickets) {
  ASSERT_TRUE(StartDaemon());
  auto [first, card] = Open();
  ASSERT_FALSE(first.empty());
  Claim(card);
  User("my order number is 42");
  User("I need a refund", "u2", "erin");
  std::optional<Delivery> billing_card = Await("billing", {"New escalation #"});
  ASSERT_TRUE(billing_card.has_value());
  const std::string second = TicketIdIn(billing_card->text);

  CommandResult list = Cli({"escalations", "list"});
  ASSERT_EQ(list.exit_code, 0) << list.err;
  // One line per ticket, newest first: "#ID  STATE  queue=Q  pN  opened ...  CONV  reason=R".
  std::vector<std::string> lines;
  std::istringstream in(list.out);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  ASSERT_EQ(lines.size(), 2u) << list.out;
  EXPECT_EQ(lines[0].rfind("#" + second + "  queued  queue=billing  p3", 0), 0u) << lines[0];
  EXPECT_TRUE(Has(lines[0], "webhook:u2  reason=policy")) << lines[0];
  EXPECT_EQ(lines[1].rfind("#" + first + "  claimed  queue=general  p3", 0), 0u) << lines[1];
  EXPECT_TRUE(Has(lines[1], "webhook:u1  reason=request  agent=bob")) << lines[1];

  CommandResult show = Cli({"escalations", "show", first});
  ASSERT_EQ(show.exit_code, 0) << show.err;
  EXPECT_EQ(show.out.rfind("#" + first + "  claimed  queue=general", 0), 0u) << show.out;
  EXPECT_TRUE(Has(show.out, "user alice: Can I talk to a human, please?")) << show.out;
  EXPECT_TRUE(Has(show.out, "system bob: claimed by bob")) << show.out;
  EXPECT_TRUE(Has(show.out, "user alice: my order number is 42")) << show.out;
  CommandResult missing = Cli({"escalations", "show", "999"});
  EXPECT_NE(missing.exit_code, 0) << missing.out;
  EXPECT_FALSE(missing.err.empty());

  auto [status, queued] = AdminGet("/v1/escalations?state=queued");
  ASSERT_EQ(status, 200) << queued.dump();
  std::vector<std::string> ids;
  for (const json& t : TicketArray(queued)) {
    ids.push_back(IdOf(t));
    EXPECT_EQ(Field(t, "state"), "queued") << t.dump();
  }
  EXPECT_EQ(ids, std::vector<std::string>{second}) << queued.dump();
  auto [status2, general] = AdminGet("/v1/escalations?queue=general");
  ASSERT_EQ(status2, 200);
  ids.clear();
  for (const json& t : TicketArray(general)) ids.push_back(IdOf(t));
  EXPECT_EQ(ids, std::vector<std::string>{first}) << general.dump();
  auto [status3, bad] = AdminGet("/v1/escalations?state=sleeping");
  EXPECT_EQ(status3, 400) << bad.dump();
  EXPECT_EQ(AdminGet("/v1/escalations/999").first, 404);
  // Admin only: not on the public listener.
  EXPECT_NE(daemon_->Get("/v1/escalations")->status, 200);
}

// ---------------------------------------------------------------------------------------------
// SIGKILL at several points

TEST_F(EscalationE2eTest, SigkillAfterOpenAndAfterClaimLosesNothing) {
  // The desk's outbox entry for an unsolicited webhook message has no target until the adapter
  // routes it: a kill in between must not lose it (it is routed when the delivery resumes).
  ASSERT_TRUE(StartDaemon());
  // Right after the acknowledgement: the card is owed, not necessarily delivered.
  json ack = User("talk to a human");
  ASSERT_TRUE(Has(Text(ack), "number 1 in the queue")) << ack.dump();
  daemon_->Kill();
  ASSERT_TRUE(Restart());
  std::optional<Delivery> card = Await("agents", {"New escalation #"});
  ASSERT_TRUE(card.has_value()) << daemon_->Log();
  const std::string id = TicketIdIn(card->text);
  ASSERT_FALSE(id.empty());

  // Right after the claim.
  Claim(*card);
  daemon_->Kill();
  ASSERT_TRUE(Restart());
  std::optional<Delivery> joined = Await("u1", {"bob has joined the conversation."});
  ASSERT_TRUE(joined.has_value()) << daemon_->Log();
  json t = Ticket(id);
  EXPECT_EQ(Field(t, "state"), "claimed") << t.dump();
  EXPECT_EQ(Field(t, "agent"), "bob") << t.dump();
  // The conversation goes on: relays both ways, the card's thread still recognised.
  User("still there?");
  ASSERT_TRUE(Await("agents", {"still there?"}).has_value()) << daemon_->Log();
  Agent("Yes, still here.", card->id);
  ASSERT_TRUE(Await("u1", {"**bob:** Yes, still here."}).has_value()) << daemon_->Log();
  // Let a late duplicate show up if there is one.
  callback_.WaitUntil([](const std::vector<ReceivedCallback>&) { return false; }, kAbsentMs);
  const int redeliveries = ExpectNothingShownTwice();
  RecordProperty("same_id_redeliveries", redeliveries);
  // Exactly one ticket.
  auto [status, all] = AdminGet("/v1/escalations");
  EXPECT_EQ(status, 200);
  EXPECT_EQ(TicketArray(all).size(), 1u) << all.dump();
}

TEST_F(EscalationE2eTest, SigkillAfterRelayedMessagesLosesAndDuplicatesNothing) {
  ASSERT_TRUE(StartDaemon());
  auto [id, card] = Open();
  ASSERT_FALSE(id.empty());
  Claim(card);
  ASSERT_TRUE(Await("u1", {"has joined"}).has_value());

  // Agent -> user, killed right after the agent's request was answered; then the agent's client
  // retries the same event (it never saw the answer): applied once.
  const std::string reply = "Your replacement is on its way.";
  auto [s1, b1] = PostWithId("agents", "bob", reply, card.id, "agent-evt-1");
  EXPECT_EQ(s1, 200) << b1.dump();
  daemon_->Kill();
  ASSERT_TRUE(Restart());
  ASSERT_TRUE(Await("u1", {"**bob:** " + reply}).has_value()) << daemon_->Log();
  auto [s2, b2] = PostWithId("agents", "bob", reply, card.id, "agent-evt-1");
  EXPECT_TRUE(s2 == 200 || s2 == 409) << s2 << " " << b2.dump();
  RecordProperty("agent_retry_status", s2);
  EXPECT_FALSE(Has(Text(b2), "Claim #")) << b2.dump();

  // User -> agents, likewise.
  const std::string question = "thank you, what is the tracking number?";
  auto [s3, b3] = PostWithId("u1", "alice", question, "", "user-evt-1");
  EXPECT_EQ(s3, 200) << b3.dump();
  daemon_->Kill();
  ASSERT_TRUE(Restart());
  ASSERT_TRUE(Await("agents", {"what is the tracking number?"}).has_value()) << daemon_->Log();
  auto [s4, b4] = PostWithId("u1", "alice", question, "", "user-evt-1");
  EXPECT_TRUE(s4 == 200 || s4 == 409) << s4 << " " << b4.dump();
  RecordProperty("user_retry_status", s4);
  EXPECT_TRUE(Text(b4).empty()) << b4.dump();  // no bot answer to a replayed message
  // A marker after the retries: once it arrived, anything the retries caused has too.
  Agent("marker", card.id);
  ASSERT_TRUE(Await("u1", {"**bob:** marker"}).has_value()) << daemon_->Log();
  User("marker from alice");
  ASSERT_TRUE(Await("agents", {"marker from alice"}).has_value()) << daemon_->Log();

  // Nothing lost: the ticket is claimed and its transcript has both messages.
  json t = Ticket(id);
  EXPECT_EQ(Field(t, "state"), "claimed") << t.dump();
  std::string transcript;
  for (const json& e : t.value("transcript", json::array())) {
    transcript += e.value("role", "") + ": " + e.value("text", "") + "\n";
  }
  EXPECT_TRUE(Has(transcript, "agent: Your replacement is on its way.")) << transcript;
  EXPECT_TRUE(Has(transcript, "user: thank you, what is the tracking number?")) << transcript;
  // Each once in the transcript.
  auto count = [&](const std::string& part) {
    size_t n = 0;
    for (size_t at = transcript.find(part); at != std::string::npos;
         at = transcript.find(part, at + 1)) {
      ++n;
    }
    return n;
  };
  EXPECT_EQ(count("Your replacement is on its way."), 1u) << transcript;
  EXPECT_EQ(count("what is the tracking number?"), 1u) << transcript;
  CommandResult show = Cli({"escalations", "show", id});
  EXPECT_EQ(show.exit_code, 0) << show.err;
  EXPECT_TRUE(Has(show.out, "agent bob: Your replacement is on its way.")) << show.out;
  EXPECT_TRUE(Has(show.out, "user alice: thank you, what is the tracking number?")) << show.out;

  callback_.WaitUntil([](const std::vector<ReceivedCallback>&) { return false; }, kAbsentMs);
  const int redeliveries = ExpectNothingShownTwice();
  RecordProperty("same_id_redeliveries", redeliveries);
  // Each relayed message arrived under one id.
  std::set<std::string> agent_reply, user_msg;
  for (const Delivery& d : Delivered()) {
    if (Has(d.text, "Your replacement is on its way.")) agent_reply.insert(d.id);
    if (Has(d.text, "what is the tracking number?")) user_msg.insert(d.id);
  }
  EXPECT_EQ(agent_reply.size(), 1u);
  EXPECT_EQ(user_msg.size(), 1u);
}

}  // namespace
}  // namespace parley::testing
