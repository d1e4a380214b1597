// End-to-end: the escalation desk with Slack as the agents' channel, in the real `parley serve`
// binary against the Slack test server (Socket Mode + Web API on 127.0.0.1). Users are on Slack
// (a DM, a channel thread, `/parley human`) or on the webhook (synchronous POST /v1/messages;
// what the daemon says unprompted goes to webhook.default_reply_url, a CallbackServer here).
// Agents work in the Slack channels C0AGENTS (queue general) and C0BILLING (queue billing), which
// are NOT in slack.channel_allowlist. Waiting is by deadline and polling only.

#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <regex>
#include <set>

#include "tests/fakes/callback_server.h"
#include "tests/fakes/slack/slack_server.h"
#include "tests/support/daemon_process.h"
#include "tests/support/sample_kb.h"
#include "tests/support/temp_dir.h"

namespace parley::testing {
namespace {

using nlohmann::json;

constexpr int kWaitMs = 15'000;
constexpr char kAgents[] = "C0AGENTS";
constexpr char kBilling[] = "C0BILLING";
constexpr char kGeneral[] = "C0GENERAL";
constexpr char kDm[] = "D0DM";          // Alice's DM with the bot
constexpr char kCarolDm[] = "D0CAROL";  // Carol's (sentinel questions)

SlackServerOptions FakeOptions() {
  SlackServerOptions o;
  o.ack_deadline_ms = 1000;
  o.echo_bot_posts = true;  // as Slack does with message.channels / message.im subscribed
  o.channels = {kGeneral, kAgents, kBilling, kDm, kCarolDm};
  o.users = {{"U0ALICE", "Alice"}, {"U0BOB", "Bob"}, {"U0CAROL", "Carol"}, {"U0DAVE", "Dave"}};
  return o;
}

bool Has(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

std::string TicketIdIn(const std::string& text) {
  std::smatch m;
  static const std::regex re("#([0-9]+)");
  return std::regex_search(text, m, re) ? m[1].str() : std::string();
}

class EscalationSlackE2eTest : public ::testing::Test {
 protected:
  void SetUp() override { WriteSampleKnowledge(dir_.Sub("kb")); }
  void TearDown() override {
    if (HasFailure() && daemon_) std::cerr << "---- daemon log ----\n" << daemon_->Log();
  }

  std::string ConfigText(const std::string& general_sla) const {
    return "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nport_file = \"" +
           dir_.Sub("port.json") + "\"\n\n[store]\npath = \"" + dir_.Sub("store") +
           "\"\n\n[[knowledge.sources]]\npath = \"" + dir_.Sub("kb") +
           "\"\n\n[policy]\nuser_rate_per_minute = 6000\nuser_burst = 500\n"
           "conversation_rate_per_minute = 6000\nconversation_burst = 500\n\n"
           "[webhook]\ninsecure_no_auth = true\ndefault_reply_url = \"" +
           callback_.Url("/desk") +
           "\"\n\n[escalation]\n\n"
           "[[escalation.queues]]\nname = \"general\"\nagents = \"slack:C0AGENTS\"\n"
           "sla_minutes = " +
           general_sla +
           "\noncall = \"<!subteam^S0ONCALL|@oncall>\"\n\n"
           "[[escalation.queues]]\nname = \"billing\"\nagents = \"slack:C0BILLING\"\n"
           "patterns = [\"invoice\"]\n\n"
           "[slack]\nenabled = true\napp_token = \"${SLACK_APP_TOKEN}\"\n"
           "bot_token = \"${SLACK_BOT_TOKEN}\"\napi_base_url = \"" +
           slack_.ApiBaseUrl() +
           "\"\nconnections = 1\npost_rate_per_channel = 0\n"
           "channel_allowlist = [\"C0GENERAL\"]\n\n[log]\nlevel = \"debug\"\n";
  }

  bool StartDaemon(const std::string& general_sla = "30") {
    WriteFile(dir_.Sub("parley.toml"), ConfigText(general_sla));
    daemon_ = std::make_unique<DaemonProcess>(
        dir_.Sub("parley.toml"), dir_.Sub("port.json"), dir_.Sub("log.txt"),
        std::map<std::string, std::string>{{"SLACK_APP_TOKEN", slack_.options().app_token},
                                           {"SLACK_BOT_TOKEN", slack_.options().bot_token}});
    const bool ready = daemon_->Start();
    EXPECT_TRUE(ready) << daemon_->Log();
    return ready;
  }

  // A fresh Slack ts for an event from a person.
  std::string NextTs() { return "1700000" + std::to_string(1000 + ++ts_) + ".000100"; }

  // A message event; in a thread of the bot's (parent_user_id = the bot, as Slack sends it) unless
  // parent is empty.
  std::string Say(const std::string& channel, const std::string& user, const std::string& text,
                  const std::string& thread_ts = "", const std::string& parent = "U0BOT") {
    const std::string ts = NextTs();
    json e{{"type", "message"},
           {"channel", channel},
           {"channel_type", channel[0] == 'D' ? "im" : "channel"},
           {"user", user},
           {"text", text},
           {"ts", ts},
           {"event_ts", ts},
           {"team", "T0TEAM"}};
    if (!thread_ts.empty()) {
      e["thread_ts"] = thread_ts;
      if (!parent.empty()) e["parent_user_id"] = parent;
    }
    slack_.SendEvent(e);
    return ts;
  }
  std::string Mention(const std::string& channel, const std::string& user,
                      const std::string& text) {
    const std::string ts = NextTs();
    slack_.SendEvent(json{{"type", "app_mention"},
                          {"channel", channel},
                          {"user", user},
                          {"text", "<@U0BOT> " + text},
                          {"ts", ts},
                          {"event_ts", ts},
                          {"team", "T0TEAM"}});
    return ts;
  }
  // A click on the button `action_id` of the bot's message `message` in `channel`.
  void Click(const std::string& channel, const SlackPostedMessage& message,
             const std::string& action_id, const std::string& user) {
    json button;
    if (message.blocks.is_array()) {
      for (const json& block : message.blocks) {
        if (block.value("type", "") != "actions") continue;
        for (const json& e : block["elements"]) {
          if (e.value("action_id", "") == action_id) button = e;
        }
      }
    }
    ASSERT_FALSE(button.is_null()) << action_id << " not on " << message.blocks.dump();
    button["action_ts"] = NextTs();
    json msg{{"ts", message.ts}};
    if (!message.thread_ts.empty()) msg["thread_ts"] = message.thread_ts;
    slack_.SendBlockAction({{"type", "block_actions"},
                            {"user", {{"id", user}}},
                            {"team", {{"id", "T0TEAM"}}},
                            {"channel", {{"id", channel}}},
                            {"message", msg},
                            {"trigger_id", "trig" + std::to_string(++ts_)},
                            {"actions", json::array({button})}});
  }

  // The first chat.postMessage in channel (thread: "-" = any, "" = main line) containing every
  // part, waiting up to timeout_ms.
  std::optional<SlackPostedMessage> Await(const std::string& channel, const std::string& thread,
                                          const std::vector<std::string>& parts,
                                          int timeout_ms = kWaitMs) const {
    std::optional<SlackPostedMessage> found;
    slack_.WaitFor(
        [&] {
          for (const SlackPostedMessage& m : slack_.Posted()) {
            if (m.channel != channel || (thread != "-" && m.thread_ts != thread)) continue;
            bool all = true;
            for (const std::string& p : parts) all = all && Has(m.text, p);
            if (all) {
              found = m;
              return true;
            }
          }
          return false;
        },
        timeout_ms);
    return found;
  }
  size_t Count(const std::string& channel, const std::string& part) const {
    size_t n = 0;
    for (const SlackPostedMessage& m : slack_.Posted())
      n += m.channel == channel && Has(m.text, part);
    return n;
  }
  // Posts after a mark (the size of Posted() then) in channel.
  std::vector<SlackPostedMessage> PostedSince(size_t mark, const std::string& channel) const {
    std::vector<SlackPostedMessage> out;
    std::vector<SlackPostedMessage> all = slack_.Posted();
    for (size_t i = mark; i < all.size(); ++i) {
      if (all[i].channel == channel) out.push_back(all[i]);
    }
    return out;
  }
  // A DM question answered by the bot: everything sent before it on Slack has been decided on.
  void Sentinel(const std::string& question = "how do I install the frobnicator on linux?") {
    const size_t before = slack_.Posted().size();
    Say(kCarolDm, "U0CAROL", question);
    ASSERT_TRUE(slack_.WaitFor(
        [&] {
          for (const auto& m : PostedSince(before, kCarolDm)) {
            if (Has(m.text, "apt install frobnicator")) return true;
          }
          return false;
        },
        kWaitMs))
        << "sentinel not answered";
  }

  uint16_t AdminPort() const {
    std::ifstream in(dir_.Sub("port.json"));
    json ports = json::parse(in, nullptr, false);
    if (!ports.is_object() || !ports.contains("admin")) return 0;
    return static_cast<uint16_t>(ports["admin"].get<int>());
  }
  json Ticket(const std::string& id) const {
    net::ClientRequest req;
    req.url = "http://127.0.0.1:" + std::to_string(AdminPort()) + "/v1/escalations/" + id;
    auto r = net::BlockingRequest(req);
    if (!r.ok() || r->status != 200) return json();
    return json::parse(r->body, nullptr, false);
  }
  static std::string Field(const json& t, const char* key) {
    return t.is_object() && t.contains(key) && t[key].is_string() ? t[key].get<std::string>()
                                                                  : std::string();
  }
  bool AwaitTicket(const std::string& id, const std::function<bool(const json&)>& pred) const {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kWaitMs);
    for (;;) {
      if (pred(Ticket(id))) return true;
      if (std::chrono::steady_clock::now() > deadline) return false;
      slack_.WaitFor([] { return false; }, 50);  // poll interval
    }
  }

  // Every post carries its message id and part (metadata): none may appear twice.
  void ExpectNothingPostedTwice() const {
    std::set<std::string> seen;
    for (const SlackPostedMessage& m : slack_.Posted()) {
      if (!m.metadata.is_object() || !m.metadata.contains("event_payload")) continue;
      const json& p = m.metadata["event_payload"];
      const std::string key = p.value("message_id", "") + "/" + p.value("part", json(0)).dump();
      EXPECT_TRUE(seen.insert(key).second) << "posted twice: " << key << ": " << m.text;
    }
    EXPECT_FALSE(seen.empty());
  }

  // Webhook user: a synchronous message; the answer's text.
  std::string WebhookUser(const std::string& text) {
    json message = {{"conversation", "u1"}, {"user", "alice"}, {"text", text}};
    auto r = daemon_->Post("/v1/messages", message.dump(), {{"Content-Type", "application/json"}},
                           kWaitMs);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    if (!r.ok()) return "";
    EXPECT_EQ(r->status, 200) << r->body;
    json body = json::parse(r->body, nullptr, false);
    return body.is_object() ? body.value("text", "") : "";
  }
  bool AwaitCallback(const std::vector<std::string>& parts) const {
    return callback_.WaitUntil(
        [&](const std::vector<ReceivedCallback>& all) {
          for (const ReceivedCallback& r : all) {
            json j = json::parse(r.body, nullptr, false);
            if (!j.is_object() || j.value("conversation", "") != "u1") continue;
            bool every = true;
            for (const std::string& p : parts) every = every && Has(j.value("text", ""), p);
            if (every) return true;
          }
          return false;
        },
        kWaitMs);
  }

  TempDir dir_;
  SlackServer slack_{FakeOptions()};
  CallbackServer callback_;
  std::unique_ptr<DaemonProcess> daemon_;
  int ts_ = 0;
};

// A Slack user in a DM; agents in Slack channels: the whole life of a ticket.
TEST_F(EscalationSlackE2eTest, SlackUserAndSlackAgentsFromRequestToReturnAndResolve) {
  ASSERT_TRUE(StartDaemon());
  ASSERT_TRUE(slack_.WaitForOpenConnections(1, 10'000));

  // Trigger by phrase in a DM: the user is told where they stand; the card lands in the agents'
  // channel (not in channel_allowlist) with Claim / Resolve / Return buttons.
  Say(kDm, "U0ALICE", "my widget is broken, can I talk to a human?");
  auto ack = Await(kDm, "", {"number 1 in the queue"});
  ASSERT_TRUE(ack.has_value());
  auto card = Await(kAgents, "", {"New escalation #"});
  ASSERT_TRUE(card.has_value());
  const std::string id = TicketIdIn(card->text);
  ASSERT_FALSE(id.empty());
  EXPECT_TRUE(Has(card->text, "Alice")) << card->text;  // the user's name from users.info
  EXPECT_TRUE(Has(card->text, "my widget is broken")) << card->text;
  const std::string blocks = card->blocks.dump();
  EXPECT_TRUE(Has(blocks, "parley_action:claim")) << blocks;
  EXPECT_TRUE(Has(blocks, "parley_action:resolve")) << blocks;
  EXPECT_TRUE(Has(blocks, "parley_action:return")) << blocks;
  EXPECT_FALSE(Has(ack->blocks.dump(), "parley_feedback")) << "no feedback asked on a hand-off";
  ASSERT_TRUE(AwaitTicket(id, [&](const json& t) { return Field(t, "card_thread") == card->ts; }));
  const std::string thread = card->ts;

  // Before a claim, a reply in the thread (no mention needed) is refused, nothing relayed.
  size_t mark = slack_.Posted().size();
  Say(kAgents, "U0BOB", "hello, are you still there?", thread);
  auto refused = Await(kAgents, thread, {"Claim #" + id + " first"});
  ASSERT_TRUE(refused.has_value());
  EXPECT_FALSE(Has(refused->blocks.dump(), "parley_feedback")) << "no feedback asked of agents";

  // Claim by button: the thread and the user are told, with the agent's name.
  Click(kAgents, *card, "parley_action:claim", "U0BOB");
  ASSERT_TRUE(Await(kAgents, thread, {"Bob claimed #" + id}).has_value());
  ASSERT_TRUE(Await(kDm, "", {"Bob has joined the conversation."}).has_value());
  EXPECT_EQ(Field(Ticket(id), "state"), "claimed");
  EXPECT_EQ(Field(Ticket(id), "agent"), "U0BOB");

  // Bad input in the thread: a second claim by someone else, an unknown command. Carol's event
  // carries no parent_user_id: the adapter knows the card's thread from its own mark.
  Say(kAgents, "U0CAROL", "claim", thread, "");
  ASSERT_TRUE(Await(kAgents, thread, {"already claimed by Bob"}).has_value());
  Say(kAgents, "U0CAROL", "!frobnicate now", thread);
  ASSERT_TRUE(Await(kAgents, thread, {"Unknown command"}).has_value());
  EXPECT_EQ(Field(Ticket(id), "agent"), "U0BOB");

  // Relay both ways: the user's message to the thread, the agent's reply to the DM with the
  // agent's name.
  Say(kDm, "U0ALICE", "the widget shows error 42");
  ASSERT_TRUE(Await(kAgents, thread, {"Alice:", "the widget shows error 42"}).has_value());
  Say(kAgents, "U0BOB", "Thanks Alice, resetting it now.", thread);
  auto relayed = Await(kDm, "", {"Bob:", "Thanks Alice, resetting it now."});
  ASSERT_TRUE(relayed.has_value());
  EXPECT_TRUE(Has(relayed->text, "*Bob:*")) << relayed->text;

  // A note stays internal.
  Say(kAgents, "U0BOB", "note customer is on the legacy plan", thread);

  // Transfer to another Slack-channel queue: a new card there; the old thread is told.
  Say(kAgents, "U0BOB", "transfer billing", thread);
  ASSERT_TRUE(Await(kAgents, thread, {"Transferred #" + id + " to billing"}).has_value());
  auto card2 = Await(kBilling, "", {"Escalation #" + id, "transferred from general"});
  ASSERT_TRUE(card2.has_value());
  ASSERT_TRUE(Await(kDm, "", {"billing team"}).has_value());
  ASSERT_TRUE(AwaitTicket(id, [&](const json& t) { return Field(t, "card_thread") == card2->ts; }));
  // The old thread is no longer where the ticket is worked.
  Say(kAgents, "U0BOB", "claim", thread);
  ASSERT_TRUE(Await(kAgents, thread, {"is in queue billing"}).has_value());

  // Claim by text in the new card's thread, then return to the bot.
  Say(kBilling, "U0DAVE", "claim", card2->ts);
  ASSERT_TRUE(Await(kBilling, card2->ts, {"Dave claimed #" + id}).has_value());
  ASSERT_TRUE(Await(kDm, "", {"Dave has joined"}).has_value());
  Say(kBilling, "U0DAVE", "return", card2->ts);
  ASSERT_TRUE(
      Await(kDm, "", {"handed you back to the bot", "talking to the bot again"}).has_value());
  EXPECT_EQ(Field(Ticket(id), "state"), "returned_to_bot");
  // The bot answers again.
  mark = slack_.Posted().size();
  Say(kDm, "U0ALICE", "how do I install the frobnicator on linux?");
  ASSERT_TRUE(slack_.WaitFor(
      [&] {
        for (const auto& m : PostedSince(mark, kDm)) {
          if (Has(m.text, "apt install frobnicator")) return true;
        }
        return false;
      },
      kWaitMs));

  // A second ticket, resolved by button.
  Say(kDm, "U0ALICE", "agent please");
  auto card3 = Await(kAgents, "", {"New escalation #"}, kWaitMs);
  ASSERT_TRUE(slack_.WaitFor([&] { return Count(kAgents, "New escalation #") == 2; }, kWaitMs));
  for (const auto& m : slack_.Posted()) {
    if (m.channel == kAgents && Has(m.text, "New escalation #") && m.ts != card->ts) card3 = m;
  }
  const std::string id3 = TicketIdIn(card3->text);
  ASSERT_NE(id3, id);
  Click(kAgents, *card3, "parley_action:resolve", "U0CAROL");
  ASSERT_TRUE(Await(kDm, "", {"Carol marked this as resolved"}).has_value());
  EXPECT_EQ(Field(Ticket(id3), "state"), "resolved");

  // Nothing of the note reached the user; nothing was posted twice.
  Sentinel();
  for (const SlackPostedMessage& m : slack_.Posted()) {
    if (m.channel == kDm) {
      EXPECT_FALSE(Has(m.text, "legacy plan")) << m.text;
    }
  }
  ExpectNothingPostedTwice();
}

// A webhook user; agents on Slack.
TEST_F(EscalationSlackE2eTest, WebhookUserAndSlackAgentsRelayBothWays) {
  ASSERT_TRUE(StartDaemon());
  ASSERT_TRUE(slack_.WaitForOpenConnections(1, 10'000));
  const std::string ack = WebhookUser("Can I talk to a human, please?");
  EXPECT_TRUE(Has(ack, "number 1 in the queue")) << ack;
  auto card = Await(kAgents, "", {"New escalation #", "webhook:u1"});
  ASSERT_TRUE(card.has_value());
  const std::string id = TicketIdIn(card->text);
  ASSERT_TRUE(AwaitTicket(id, [&](const json& t) { return Field(t, "card_thread") == card->ts; }));

  // Claim by text in the thread, without mentioning the bot.
  Say(kAgents, "U0BOB", "claim", card->ts);
  ASSERT_TRUE(Await(kAgents, card->ts, {"Bob claimed #" + id}).has_value());
  ASSERT_TRUE(AwaitCallback({"Bob has joined the conversation."}));
  // The user's message goes to the thread; the bot stays silent.
  EXPECT_EQ(WebhookUser("my order number is 42"), "");
  ASSERT_TRUE(Await(kAgents, card->ts, {"alice:", "my order number is 42"}).has_value());
  // The agent's reply goes to the user, labelled with the agent's name.
  Say(kAgents, "U0BOB", "Found it, shipping today.", card->ts);
  ASSERT_TRUE(AwaitCallback({"**Bob:** Found it, shipping today."}));
  // Resolve by text.
  Say(kAgents, "U0BOB", "resolve", card->ts);
  ASSERT_TRUE(AwaitCallback({"Bob marked this as resolved", "talking to the bot again"}));
  EXPECT_EQ(Field(Ticket(id), "state"), "resolved");
  // The bot is back.
  EXPECT_TRUE(Has(WebhookUser("how do I install the frobnicator on linux?"), "apt install"));
}

// `/parley human` (in a channel: continued in a DM the bot opens) and a "Not helpful" click.
TEST_F(EscalationSlackE2eTest, SlashHumanAndNotHelpfulFeedbackOpenTickets) {
  ASSERT_TRUE(StartDaemon());
  ASSERT_TRUE(slack_.WaitForOpenConnections(1, 10'000));

  // /parley human in a channel: acked at once (ephemeral); the hand-off continues in a DM.
  const std::string env = slack_.SendSlashCommand({{"command", "/parley"},
                                                   {"text", "human my invoice is wrong"},
                                                   {"user_id", "U0ALICE"},
                                                   {"channel_id", kGeneral},
                                                   {"team_id", "T0TEAM"},
                                                   {"response_url", slack_.NewResponseUrl()},
                                                   {"trigger_id", "t1"}});
  ASSERT_TRUE(slack_.WaitForAcks(1, 10'000));
  bool acked = false;
  for (const SlackAck& a : slack_.Acks()) {
    if (a.envelope_id != env) continue;
    acked = true;
    EXPECT_EQ(a.payload.value("response_type", ""), "ephemeral") << a.payload.dump();
    EXPECT_TRUE(Has(a.payload.dump(), "direct message")) << a.payload.dump();
  }
  EXPECT_TRUE(acked);
  const std::string dm = SlackServer::DmChannelFor("U0ALICE");
  ASSERT_TRUE(Await(dm, "", {"number 1 in the queue"}).has_value());
  // Routed by what the user said ("invoice": billing), reason request.
  auto card = Await(kBilling, "", {"New escalation #", "asked for a person"});
  ASSERT_TRUE(card.has_value());
  const std::string id = TicketIdIn(card->text);
  EXPECT_EQ(Field(Ticket(id), "reason"), "request");
  // Asking again: where the user stands, no second ticket.
  slack_.SendSlashCommand({{"command", "/parley"},
                           {"text", "human"},
                           {"user_id", "U0ALICE"},
                           {"channel_id", dm},
                           {"team_id", "T0TEAM"},
                           {"response_url", slack_.NewResponseUrl()},
                           {"trigger_id", "t2"}});
  ASSERT_TRUE(Await(dm, "", {"already waiting"}).has_value());
  // Relay after a claim by button reaches the DM.
  ASSERT_TRUE(AwaitTicket(id, [&](const json& t) { return Field(t, "card_thread") == card->ts; }));
  Click(kBilling, *card, "parley_action:claim", "U0DAVE");
  ASSERT_TRUE(Await(dm, "", {"Dave has joined"}).has_value());
  Say(dm, "U0ALICE", "it charges me twice");
  ASSERT_TRUE(Await(kBilling, card->ts, {"it charges me twice"}).has_value());

  // "Not helpful" on a bot answer in a channel thread opens a ticket (reason feedback).
  const std::string q = Mention(kGeneral, "U0CAROL", "how do I install the frobnicator on linux?");
  auto answer = Await(kGeneral, q, {"apt install frobnicator"});
  ASSERT_TRUE(answer.has_value());
  std::string message_id;
  for (const json& block : answer->blocks) {
    if (block.value("block_id", "") != "parley_feedback") continue;
    message_id = block["elements"][1].value("value", "");
  }
  ASSERT_FALSE(message_id.empty()) << answer->blocks.dump();
  Click(kGeneral, *answer, "parley_feedback_unhelpful", "U0CAROL");
  auto fb_card = Await(kAgents, "", {"New escalation #", "negative feedback"});
  ASSERT_TRUE(fb_card.has_value());
  EXPECT_EQ(Field(Ticket(TicketIdIn(fb_card->text)), "reason"), "feedback");
  ASSERT_TRUE(Await(kGeneral, q, {"Sorry that didn't help", "in the queue"}).has_value());
  EXPECT_EQ(slack_.Counters().conversations_open_calls, 1u);
}

// SLA: the card is re-announced (with buttons) in the agents' channel, then the on-call mention.
TEST_F(EscalationSlackE2eTest, SlaReannouncesAndMentionsOncallInTheChannel) {
  ASSERT_TRUE(StartDaemon("0.005"));  // 0.3 s
  ASSERT_TRUE(slack_.WaitForOpenConnections(1, 10'000));
  Say(kDm, "U0ALICE", "talk to a human");
  auto card = Await(kAgents, "", {"New escalation #"});
  ASSERT_TRUE(card.has_value());
  auto again = Await(kAgents, "", {"Still waiting: escalation #"}, 20'000);
  ASSERT_TRUE(again.has_value());
  EXPECT_TRUE(Has(again->blocks.dump(), "parley_action:claim")) << again->blocks.dump();
  auto oncall = Await(kAgents, "", {"Priority raised"}, 20'000);
  ASSERT_TRUE(oncall.has_value());
  EXPECT_TRUE(Has(oncall->text, "<!subteam^S0ONCALL|@oncall>")) << oncall->text;  // notifies
  ASSERT_TRUE(Await(kDm, "", {"Sorry for the wait"}).has_value());
  // The re-announcement's button works too.
  const std::string id = TicketIdIn(card->text);
  Click(kAgents, *again, "parley_action:claim", "U0BOB");
  ASSERT_TRUE(Await(kDm, "", {"Bob has joined"}).has_value());
  EXPECT_EQ(Field(Ticket(id), "state"), "claimed");
}

// SIGKILL after the card was posted, before the claim: the card's thread still maps to the
// ticket after the restart, and nothing is shown twice.
TEST_F(EscalationSlackE2eTest, SigkillAfterTheCardThenClaimInItsThreadWorks) {
  ASSERT_TRUE(StartDaemon());
  ASSERT_TRUE(slack_.WaitForOpenConnections(1, 10'000));
  Say(kDm, "U0ALICE", "talk to a human");
  auto card = Await(kAgents, "", {"New escalation #"});
  ASSERT_TRUE(card.has_value());
  const std::string id = TicketIdIn(card->text);
  ASSERT_TRUE(AwaitTicket(id, [&](const json& t) { return Field(t, "card_thread") == card->ts; }));
  daemon_->Kill();
  ASSERT_TRUE(daemon_->Start()) << daemon_->Log();
  ASSERT_TRUE(slack_.WaitForOpenConnections(1, 10'000));

  Say(kAgents, "U0BOB", "claim", card->ts);
  ASSERT_TRUE(Await(kAgents, card->ts, {"Bob claimed #" + id}).has_value());
  ASSERT_TRUE(Await(kDm, "", {"Bob has joined"}).has_value());
  Say(kAgents, "U0BOB", "How can I help?", card->ts);
  ASSERT_TRUE(Await(kDm, "", {"Bob:", "How can I help?"}).has_value());

  Sentinel();
  ExpectNothingPostedTwice();
  EXPECT_EQ(Count(kAgents, "New escalation #"), 1u);
  EXPECT_EQ(Count(kDm, "number 1 in the queue"), 1u);
  EXPECT_EQ(Count(kAgents, "Bob claimed #"), 1u);
  EXPECT_EQ(Count(kDm, "Bob has joined"), 1u);
}

}  // namespace
}  // namespace parley::testing
