// The desk against a real LevelDB in a temp dir, a recording ReplySink and a manual clock.

#include "escalation/desk.h"

#include <gtest/gtest.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>

#include "store/keys.h"
#include "store/records.h"
#include "tests/support/temp_dir.h"

namespace parley::escalation {
namespace {

constexpr int64_t kMin = 60'000;
constexpr int64_t kHour = 60 * kMin;
constexpr int64_t kDay = 24 * kHour;
// Monday 2023-11-13 00:00 UTC.
constexpr int64_t kMonday = 1'699'833'600'000;

// Records everything the desk sends.
class RecordingSink : public ReplySink {
 public:
  bool DeliversDurably(const OutboundMessage& m) const override { return durable; }
  void Send(OutboundMessage m, DeliveryCallback done) override {
    {
      std::lock_guard<std::mutex> lock(mu);
      if (!drop) sent.push_back(m);
    }
    if (done) done(Status::Ok());
  }
  std::vector<OutboundMessage> Take() {
    std::lock_guard<std::mutex> lock(mu);
    std::vector<OutboundMessage> out;
    out.swap(sent);
    return out;
  }
  bool durable = true;
  bool drop = false;  // a "crash" between the write and the send
  std::mutex mu;
  std::vector<OutboundMessage> sent;
};

std::vector<OutboundMessage> To(const std::vector<OutboundMessage>& all,
                                const std::string& platform, const std::string& channel) {
  std::vector<OutboundMessage> out;
  for (const OutboundMessage& m : all) {
    if (m.conversation.platform == platform && m.conversation.channel == channel) out.push_back(m);
  }
  return out;
}

bool Contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

class DeskTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto opened = store::OpenLevelDb(dir_.Sub("db"));
    ASSERT_TRUE(opened.ok()) << opened.status().ToString();
    kv_ = std::move(opened.value());
    memory_ = std::make_unique<store::ConversationMemory>(*kv_, clock_, 0);
    options_ = DefaultOptions();
    spdlog::set_level(spdlog::level::err);
  }

  static DeskOptions DefaultOptions() {
    DeskOptions o;
    o.low_confidence_turns = 3;
    QueueOptions general;
    general.name = "general";
    general.agents = "webhook:agents";
    general.sla_minutes = 30;
    general.oncall = "@oncall";
    QueueOptions billing;
    billing.name = "billing";
    billing.agents = "slack:CBILL";
    billing.patterns = {"refund|invoice"};
    billing.topics = {"billing"};
    billing.sla_minutes = 10;
    QueueOptions security;
    security.name = "security";
    security.agents = "webhook:sec";
    security.patterns = {"security incident|data breach"};
    security.policy = true;
    security.priority = 1;
    security.agent_users = {"sam"};
    QueueOptions vip;
    vip.name = "vip";
    vip.agents = "webhook:vip-agents";
    vip.channels = {"webhook:vip-*"};
    QueueOptions matrix;
    matrix.name = "matrixq";
    matrix.agents = "matrix:!agents:example.org";
    matrix.platforms = {"matrix"};
    o.queues = {general, billing, security, vip, matrix};
    return o;
  }

  void OpenDesk() {
    desk_.reset();
    auto desk = Desk::Open(options_, *kv_, sink_, clock_, metrics_, memory_.get());
    ASSERT_TRUE(desk.ok()) << desk.status().ToString();
    desk_ = std::move(desk.value());
  }

  InboundMessage User(const std::string& text, const std::string& event_id,
                      const std::string& channel = "u1") {
    InboundMessage m;
    m.platform = "webhook";
    m.channel = channel;
    m.user = "alice";
    m.user_name = "Alice";
    m.text = text;
    m.event_id = event_id;
    m.timestamp_ms = clock_.NowMs();
    m.reply_route = "http://127.0.0.1:9/cb/" + channel;
    return m;
  }

  InboundMessage Agent(const std::string& text, const std::string& event_id,
                       const std::string& thread = "", const std::string& user = "bob",
                       const std::string& platform = "webhook",
                       const std::string& channel = "agents") {
    InboundMessage m;
    m.platform = platform;
    m.channel = channel;
    m.thread = thread;
    m.user = user;
    m.user_name = user == "bob" ? "Bob" : user == "carol" ? "Carol" : user;
    m.text = text;
    m.event_id = event_id;
    m.timestamp_ms = clock_.NowMs();
    return m;
  }

  // Opens a ticket in the general queue from conversation webhook:<channel>; returns its id.
  std::string OpenGeneral(const std::string& channel = "u1", const std::string& event = "ev-open") {
    DeskResult r = desk_->BeforeTurn(User("I want to talk to a human", event, channel));
    EXPECT_TRUE(r.handled);
    EXPECT_EQ(r.outcome, "opened");
    sink_.Take();
    return r.ticket_id;
  }

  Ticket Get(const std::string& id) {
    Result<Ticket> t = desk_->Get(id);
    EXPECT_TRUE(t.ok()) << t.status().ToString();
    return t.ok() ? t.value() : Ticket{};
  }

  testing::TempDir dir_;
  std::unique_ptr<store::KvStore> kv_;
  ManualClock clock_{kMonday + 10 * kHour};
  MetricsRegistry metrics_;
  std::unique_ptr<store::ConversationMemory> memory_;
  RecordingSink sink_;
  DeskOptions options_;
  std::unique_ptr<Desk> desk_;
};

// ---------------------------------------------------------------------------------------------
// Triggers

TEST_F(DeskTest, RequestPhraseOpensTicketWithCardAndAcknowledgement) {
  OpenDesk();
  // Earlier turns in memory become the transcript and the card's last turns.
  store::WriteBatch b;
  memory_->Append(
      b, {"webhook", "u1", ""},
      {"user", "alice", "how do I reset my password?", "t1", clock_.NowMs() - 1000, {}});
  memory_->Append(b, {"webhook", "u1", ""},
                  {"assistant",
                   "",
                   "Use the reset link.",
                   "t1",
                   clock_.NowMs() - 900,
                   {{"Password reset", "pw.md", "", ""}}});
  ASSERT_TRUE(kv_->Write(b, true).ok());

  DeskResult r = desk_->BeforeTurn(User("It did not work. Can I talk to a human, please?", "ev1"));
  EXPECT_TRUE(r.status.ok());
  EXPECT_TRUE(r.handled);
  EXPECT_EQ(r.outcome, "opened");
  EXPECT_EQ(r.ticket_id, "1");
  std::vector<OutboundMessage> sent = sink_.Take();
  ASSERT_EQ(sent.size(), 2u);
  EXPECT_EQ(r.sent.size(), 2u);

  std::vector<OutboundMessage> cards = To(sent, "webhook", "agents");
  ASSERT_EQ(cards.size(), 1u);
  const std::string& card = cards[0].text;
  EXPECT_TRUE(cards[0].conversation.thread.empty());
  EXPECT_TRUE(Contains(card, "New escalation #1")) << card;
  EXPECT_TRUE(Contains(card, "Queue: general")) << card;
  EXPECT_TRUE(Contains(card, "asked for a person")) << card;
  EXPECT_TRUE(Contains(card, "talk to a human")) << card;
  EXPECT_TRUE(Contains(card, "Alice (webhook:u1)")) << card;
  EXPECT_TRUE(Contains(card, "how do I reset my password?")) << card;
  EXPECT_TRUE(Contains(card, "Use the reset link.")) << card;
  EXPECT_TRUE(Contains(card, "Sources: Password reset")) << card;
  EXPECT_TRUE(Contains(card, "Summary:")) << card;
  EXPECT_TRUE(Contains(card, "`claim`")) << card;
  EXPECT_TRUE(Contains(card, "`claim 1`")) << card;

  std::vector<OutboundMessage> acks = To(sent, "webhook", "u1");
  ASSERT_EQ(acks.size(), 1u);
  EXPECT_EQ(acks[0].in_reply_to, "ev1");
  EXPECT_EQ(acks[0].reply_route, "http://127.0.0.1:9/cb/u1");
  EXPECT_TRUE(Contains(acks[0].text, "number 1 in the queue")) << acks[0].text;
  EXPECT_TRUE(Contains(acks[0].text, "`cancel`")) << acks[0].text;
  EXPECT_FALSE(Contains(acks[0].text, "away")) << acks[0].text;  // open hours: no "back at"

  Ticket t = Get("1");
  EXPECT_EQ(t.state, TicketState::kQueued);
  EXPECT_EQ(t.reason, "request");
  EXPECT_EQ(t.queue, "general");
  EXPECT_EQ(t.user, "alice");
  ASSERT_EQ(t.transcript.size(), 3u);
  EXPECT_EQ(t.transcript.back().event_id, "ev1");
  EXPECT_TRUE(desk_->IsEscalated({"webhook", "u1", ""}));
}

TEST_F(DeskTest, RequestHumanFlagOpensTicketWhateverTheTextAndRepeatsWhereTheUserStands) {
  OpenDesk();
  InboundMessage m = User("/parley human my invoice is wrong", "slash:1");
  m.request_human = true;
  DeskResult r = desk_->BeforeTurn(m);
  EXPECT_TRUE(r.handled);
  EXPECT_EQ(r.outcome, "opened");
  Ticket t = Get(r.ticket_id);
  EXPECT_EQ(t.reason, "request");
  EXPECT_EQ(t.detail, "/parley human my invoice is wrong");
  EXPECT_EQ(t.queue, "billing");  // routed by what the user said
  std::vector<OutboundMessage> sent = sink_.Take();
  ASSERT_EQ(To(sent, "webhook", "u1").size(), 1u);
  EXPECT_TRUE(Contains(To(sent, "webhook", "u1")[0].text, "number 1 in the queue"));

  // Asking again while waiting: where the user stands; nothing new, nothing relayed.
  InboundMessage again = User("/parley human", "slash:2");
  again.request_human = true;
  DeskResult r2 = desk_->BeforeTurn(again);
  EXPECT_TRUE(r2.handled);
  EXPECT_EQ(r2.ticket_id, r.ticket_id);
  sent = sink_.Take();
  ASSERT_EQ(sent.size(), 1u);
  EXPECT_EQ(sent[0].in_reply_to, "slash:2");
  EXPECT_TRUE(Contains(sent[0].text, "already waiting")) << sent[0].text;
  EXPECT_EQ(Get(r.ticket_id).transcript.size(), t.transcript.size());
  // Replayed: nothing again.
  EXPECT_EQ(desk_->BeforeTurn(again).outcome, "duplicate");
  EXPECT_TRUE(sink_.Take().empty());

  // Without the flag the same text is not a request.
  EXPECT_FALSE(desk_->BeforeTurn(User("/parley human", "x1", "u2")).handled);
}

TEST_F(DeskTest, CardsCarryClaimResolveReturnButtonsWhoseValuesAreCommands) {
  OpenDesk();
  const std::string id = OpenGeneral();
  (void)id;
  DeskResult r = desk_->BeforeTurn(User("talk to a human", "ev9", "u9"));
  std::vector<OutboundMessage> cards = To(sink_.Take(), "webhook", "agents");
  ASSERT_EQ(cards.size(), 1u);
  ASSERT_EQ(cards[0].actions.size(), 3u);
  EXPECT_EQ(cards[0].actions[0],
            (MessageAction{"claim", "Claim", "claim " + r.ticket_id, "primary"}));
  EXPECT_EQ(cards[0].actions[1].value, "resolve " + r.ticket_id);
  EXPECT_EQ(cards[0].actions[2].value, "return " + r.ticket_id);
  // The actions survive the outbox (a restart resends the card with its buttons).
  Result<std::vector<store::OutboxEntry>> owed = store::Outbox(*kv_).Load("webhook");
  ASSERT_TRUE(owed.ok());
  bool found = false;
  for (const store::OutboxEntry& e : *owed) {
    if (e.id != cards[0].id) continue;
    found = true;
    OutboundMessage back = nlohmann::json::parse(e.payload).get<OutboundMessage>();
    EXPECT_EQ(back.actions, cards[0].actions);
  }
  EXPECT_TRUE(found);
  // A click is the command: a claim "by button" from the channel's main line works.
  DeskResult claim = desk_->BeforeTurn(Agent(cards[0].actions[0].value, "click1"));
  EXPECT_EQ(claim.outcome, "command");
  EXPECT_EQ(Get(r.ticket_id).state, TicketState::kClaimed);
  // Acknowledgements and relays carry no buttons.
  for (const OutboundMessage& m : sink_.Take()) EXPECT_TRUE(m.actions.empty()) << m.text;
}

TEST_F(DeskTest, RequestPhrasesMatchWholeWordsOnly) {
  OpenDesk();
  EXPECT_TRUE(desk_->BeforeTurn(User("Human!", "a1", "c1")).handled);
  EXPECT_TRUE(desk_->BeforeTurn(User("agent please", "a2", "c2")).handled);
  EXPECT_TRUE(desk_->BeforeTurn(User("could I SPEAK TO AN AGENT?", "a3", "c3")).handled);
  EXPECT_FALSE(desk_->BeforeTurn(User("what is the humane society?", "a4", "c4")).handled);
  EXPECT_FALSE(desk_->BeforeTurn(User("the agent software crashed", "a5", "c5")).handled);
  EXPECT_FALSE(desk_->BeforeTurn(User("how do I talk to a humanoid robot", "a6", "c6")).handled);
}

TEST_F(DeskTest, PolicyPatternGoesToPeopleBeforeTheBotAnswers) {
  OpenDesk();
  DeskResult r = desk_->BeforeTurn(User("We have a Security Incident on prod", "ev1"));
  EXPECT_TRUE(r.handled);
  Ticket t = Get(r.ticket_id);
  EXPECT_EQ(t.reason, "policy");
  EXPECT_EQ(t.queue, "security");
  EXPECT_EQ(t.priority, 1);
  EXPECT_EQ(To(sink_.Take(), "webhook", "sec").size(), 1u);
  // Not a policy queue: billing patterns alone do not escalate.
  EXPECT_FALSE(desk_->BeforeTurn(User("how do refunds work?", "ev2", "u2")).handled);
}

TEST_F(DeskTest, AfterTurnWithEscalatedReplyOpensTicketAndAmendsReply) {
  OpenDesk();
  InboundMessage m = User("my card was charged twice", "ev1");
  EXPECT_FALSE(desk_->BeforeTurn(m).handled);
  OutboundMessage reply;
  reply.id = "r1";
  reply.conversation = m.conversation();
  reply.text = "Let me get someone from billing.";
  reply.confidence = 0.8;
  reply.escalated = true;
  reply.citations = {{"Billing FAQ", "billing.md", "", ""}};
  DeskResult r = desk_->AfterTurn(m, reply, {"answered", "billing", "double charge"});
  EXPECT_EQ(r.outcome, "opened");
  EXPECT_FALSE(r.handled);
  EXPECT_TRUE(reply.escalated);
  EXPECT_TRUE(Contains(reply.text, "Let me get someone from billing.")) << reply.text;
  EXPECT_TRUE(Contains(reply.text, "number 1 in the queue")) << reply.text;
  std::vector<OutboundMessage> sent = sink_.Take();
  ASSERT_EQ(sent.size(), 1u);  // only the card: the user's ack rides on the reply
  EXPECT_EQ(sent[0].conversation.platform, "slack");
  EXPECT_EQ(sent[0].conversation.channel, "CBILL");
  EXPECT_TRUE(Contains(sent[0].text, "Bot confidence: 0.80")) << sent[0].text;
  EXPECT_TRUE(Contains(sent[0].text, "Sources: Billing FAQ")) << sent[0].text;
  EXPECT_TRUE(Contains(sent[0].text, "Let me get someone from billing.")) << sent[0].text;
  Ticket t = Get(r.ticket_id);
  EXPECT_EQ(t.reason, "tool");
  EXPECT_EQ(t.detail, "double charge");
  EXPECT_EQ(t.queue, "billing");
}

TEST_F(DeskTest, LowConfidenceStreakOpensTicketAndAConfidentAnswerResetsIt) {
  OpenDesk();
  int n = 0;
  auto turn = [&](double confidence, const std::string& outcome = "answered") {
    InboundMessage m = User("question " + std::to_string(n), "lc" + std::to_string(n));
    ++n;
    EXPECT_FALSE(desk_->BeforeTurn(m).handled);
    OutboundMessage reply;
    reply.id = "r" + std::to_string(n);
    reply.conversation = m.conversation();
    reply.text = "an answer";
    reply.confidence = confidence;
    return desk_->AfterTurn(m, reply, {outcome, "", ""});
  };
  EXPECT_EQ(turn(0.1).outcome, "");
  EXPECT_EQ(turn(0.2).outcome, "");
  EXPECT_EQ(turn(0.9).outcome, "");  // confident: the streak starts over
  EXPECT_EQ(turn(0.1).outcome, "");
  EXPECT_EQ(turn(0.9, "no_answer").outcome, "");  // "no_answer" counts as low
  EXPECT_FALSE(desk_->IsEscalated({"webhook", "u1", ""}));
  EXPECT_TRUE(sink_.Take().empty());
  DeskResult r = turn(0.3);
  EXPECT_EQ(r.outcome, "opened");
  EXPECT_EQ(Get(r.ticket_id).reason, "low_confidence");
  EXPECT_TRUE(desk_->IsEscalated({"webhook", "u1", ""}));
}

TEST_F(DeskTest, LowConfidenceStreakCountsAReplayedTurnOnce) {
  OpenDesk();
  auto turn = [&](const std::string& event) {
    InboundMessage m = User("q", event);
    OutboundMessage reply;
    reply.id = "r-" + event;
    reply.conversation = m.conversation();
    reply.confidence = 0.1;
    return desk_->AfterTurn(m, reply, {"answered", "", ""});
  };
  turn("e1");
  turn("e2");
  turn("e2");  // replay after a crash: not a third low answer
  EXPECT_FALSE(desk_->IsEscalated({"webhook", "u1", ""}));
  EXPECT_EQ(turn("e3").outcome, "opened");
}

TEST_F(DeskTest, NegativeFeedbackOpensTicketOnce) {
  OpenDesk();
  FeedbackEvent f{{"webhook", "u1", ""}, "alice", "Alice", "msg-9", "http://127.0.0.1:9/cb/u1"};
  DeskResult r = desk_->OnNegativeFeedback(f);
  EXPECT_EQ(r.outcome, "opened");
  Ticket t = Get(r.ticket_id);
  EXPECT_EQ(t.reason, "feedback");
  std::vector<OutboundMessage> sent = sink_.Take();
  std::vector<OutboundMessage> user = To(sent, "webhook", "u1");
  ASSERT_EQ(user.size(), 1u);
  EXPECT_TRUE(Contains(user[0].text, "number 1 in the queue"));
  EXPECT_EQ(user[0].reply_route, "http://127.0.0.1:9/cb/u1");
  EXPECT_EQ(To(sent, "webhook", "agents").size(), 1u);
  // Again (a second click, or a replay): nothing new.
  EXPECT_EQ(desk_->OnNegativeFeedback(f).outcome, "");
  EXPECT_TRUE(sink_.Take().empty());
  options_.negative_feedback = false;
  OpenDesk();
  f.conversation.channel = "u2";
  EXPECT_EQ(desk_->OnNegativeFeedback(f).outcome, "");
  EXPECT_FALSE(desk_->IsEscalated({"webhook", "u2", ""}));
}

// ---------------------------------------------------------------------------------------------
// Routing

TEST_F(DeskTest, RoutesByPatternTopicChannelPlatformAndDefault) {
  OpenDesk();
  auto queue_of = [&](InboundMessage m) {
    DeskResult r = desk_->BeforeTurn(m);
    EXPECT_TRUE(r.handled) << m.text;
    return Get(r.ticket_id).queue;
  };
  EXPECT_EQ(queue_of(User("talk to a human about my invoice", "p1", "c1")), "billing");
  EXPECT_EQ(queue_of(User("talk to a human", "p2", "vip-acme")), "vip");
  InboundMessage matrix = User("human please", "p3", "!room:example.org");
  matrix.platform = "matrix";
  EXPECT_EQ(queue_of(matrix), "matrixq");
  EXPECT_EQ(queue_of(User("talk to a human", "p4", "c4")), "general");
  // Content rules win over source rules: a refund from a VIP channel goes to billing.
  EXPECT_EQ(queue_of(User("talk to a human, refund!", "p5", "vip-other")), "billing");

  // The model's topic (AfterTurn).
  InboundMessage m = User("it is complicated", "p6", "c6");
  OutboundMessage reply;
  reply.id = "r6";
  reply.conversation = m.conversation();
  reply.escalated = true;
  reply.confidence = 0.9;
  DeskResult r = desk_->AfterTurn(m, reply, {"answered", "Billing", ""});
  EXPECT_EQ(Get(r.ticket_id).queue, "billing");
}

TEST_F(DeskTest, AcknowledgementGivesQueuePositionAndOutOfHoursReturn) {
  options_.queues[0].business_hours = "mon-fri 09:00-17:00";
  options_.utc_offset_minutes = 60;
  clock_.Set(kMonday + 4 * kDay + 18 * kHour);  // Friday 19:00 at UTC+01:00
  OpenDesk();
  desk_->BeforeTurn(User("talk to a human", "e1", "c1"));
  sink_.Take();
  desk_->BeforeTurn(User("talk to a human", "e2", "c2"));
  std::vector<OutboundMessage> acks = To(sink_.Take(), "webhook", "c2");
  ASSERT_EQ(acks.size(), 1u);
  EXPECT_TRUE(Contains(acks[0].text, "number 2 in the queue")) << acks[0].text;
  EXPECT_TRUE(Contains(acks[0].text, "back Monday 09:00 (UTC+01:00)")) << acks[0].text;
  EXPECT_EQ(desk_->QueuePosition("1"), 1);
  EXPECT_EQ(desk_->QueuePosition("2"), 2);
}

// ---------------------------------------------------------------------------------------------
// The agents' side

TEST_F(DeskTest, ClaimAndRelayBothWaysThroughASlackThread) {
  OpenDesk();
  DeskResult opened = desk_->BeforeTurn(User("talk to a human about a refund", "ev1"));
  ASSERT_TRUE(opened.handled);
  const std::string id = opened.ticket_id;
  std::vector<OutboundMessage> sent = sink_.Take();
  std::vector<OutboundMessage> cards = To(sent, "slack", "CBILL");
  ASSERT_EQ(cards.size(), 1u);
  // Slack reports where the card landed; replies in its thread carry that ts.
  ASSERT_TRUE(desk_->OnDelivered({cards[0].id, {"slack", "CBILL", ""}, "1700000000.000100"}).ok());
  EXPECT_EQ(Get(id).card_thread, "1700000000.000100");

  // While queued, the user's messages go to the transcript only.
  EXPECT_TRUE(desk_->BeforeTurn(User("are you there?", "ev2")).handled);
  EXPECT_TRUE(To(sink_.Take(), "slack", "CBILL").empty());

  DeskResult claim =
      desk_->BeforeTurn(Agent("claim", "a1", "1700000000.000100", "U_BOB", "slack", "CBILL"));
  EXPECT_TRUE(claim.handled);
  EXPECT_EQ(claim.outcome, "command");
  sent = sink_.Take();
  std::vector<OutboundMessage> to_user = To(sent, "webhook", "u1");
  ASSERT_EQ(to_user.size(), 1u);
  EXPECT_TRUE(Contains(to_user[0].text, "U_BOB has joined")) << to_user[0].text;
  EXPECT_EQ(to_user[0].reply_route, "http://127.0.0.1:9/cb/u1");
  std::vector<OutboundMessage> to_thread = To(sent, "slack", "CBILL");
  ASSERT_EQ(to_thread.size(), 1u);
  EXPECT_EQ(to_thread[0].conversation.thread, "1700000000.000100");
  EXPECT_TRUE(Contains(to_thread[0].text, "are you there?")) << to_thread[0].text;  // while waiting
  Ticket t = Get(id);
  EXPECT_EQ(t.state, TicketState::kClaimed);
  EXPECT_EQ(t.agent, "U_BOB");

  // User -> card thread.
  DeskResult relay = desk_->BeforeTurn(User("my order is 42", "ev3"));
  EXPECT_EQ(relay.outcome, "relayed");
  sent = sink_.Take();
  ASSERT_EQ(sent.size(), 1u);
  EXPECT_EQ(sent[0].conversation.platform, "slack");
  EXPECT_EQ(sent[0].conversation.thread, "1700000000.000100");
  EXPECT_EQ(sent[0].text, "*Alice:* my order is 42");

  // Agent reply in the thread -> the user's conversation, with the reply route and the name.
  InboundMessage reply =
      Agent("Refund sent, Alice!", "a2", "1700000000.000100", "U_BOB", "slack", "CBILL");
  reply.user_name = "Bob";
  DeskResult back = desk_->BeforeTurn(reply);
  EXPECT_EQ(back.outcome, "relayed");
  sent = sink_.Take();
  ASSERT_EQ(sent.size(), 1u);
  EXPECT_EQ(sent[0].conversation, (ConversationKey{"webhook", "u1", ""}));
  EXPECT_EQ(sent[0].reply_route, "http://127.0.0.1:9/cb/u1");
  EXPECT_EQ(sent[0].text, "**Bob:** Refund sent, Alice!");

  // Notes stay internal.
  DeskResult note = desk_->BeforeTurn(
      Agent("note customer is a VIP", "a3", "1700000000.000100", "U_BOB", "slack", "CBILL"));
  EXPECT_TRUE(note.handled);
  EXPECT_TRUE(To(sink_.Take(), "webhook", "u1").empty());
  t = Get(id);
  ASSERT_FALSE(t.transcript.empty());
  EXPECT_EQ(t.transcript.back().role, "note");
  EXPECT_EQ(t.transcript.back().text, "customer is a VIP");
  std::set<std::string> roles;
  for (const TranscriptEntry& e : t.transcript) roles.insert(e.role);
  EXPECT_TRUE(roles.count("agent"));
  EXPECT_TRUE(roles.count("user"));
}

TEST_F(DeskTest, ClaimBySecondAgentAndRepliesByOthersAreRefused) {
  OpenDesk();
  const std::string id = OpenGeneral();
  // Unclaimed: a reply is not relayed; the agent is told to claim first.
  DeskResult early = desk_->BeforeTurn(Agent("reply " + id + " hello", "a0"));
  EXPECT_EQ(early.outcome, "refused");
  std::vector<OutboundMessage> sent = sink_.Take();
  ASSERT_EQ(sent.size(), 1u);
  EXPECT_TRUE(Contains(sent[0].text, "Claim #" + id + " first")) << sent[0].text;
  EXPECT_EQ(sent[0].conversation.channel, "agents");

  EXPECT_EQ(desk_->BeforeTurn(Agent("claim " + id, "a1")).outcome, "command");
  sink_.Take();
  Ticket before = Get(id);
  DeskResult second = desk_->BeforeTurn(Agent("claim " + id, "a2", "", "carol"));
  EXPECT_EQ(second.outcome, "refused");
  sent = sink_.Take();
  ASSERT_EQ(sent.size(), 1u);
  EXPECT_TRUE(Contains(sent[0].text, "already claimed by Bob")) << sent[0].text;
  EXPECT_EQ(sent[0].in_reply_to, "a2");
  EXPECT_EQ(Get(id), before);

  DeskResult other = desk_->BeforeTurn(Agent("reply " + id + " I can help too", "a3", "", "carol"));
  EXPECT_EQ(other.outcome, "refused");
  sent = sink_.Take();
  EXPECT_TRUE(To(sent, "webhook", "u1").empty());
  EXPECT_EQ(Get(id), before);

  DeskResult own = desk_->BeforeTurn(Agent("reply " + id + " Hi Alice", "a4"));
  EXPECT_EQ(own.outcome, "relayed");
  sent = To(sink_.Take(), "webhook", "u1");
  ASSERT_EQ(sent.size(), 1u);
  EXPECT_EQ(sent[0].text, "**Bob:** Hi Alice");
}

TEST_F(DeskTest, ReturnHandsTheConversationBackToTheBot) {
  OpenDesk();
  const std::string id = OpenGeneral();
  desk_->BeforeTurn(Agent("claim " + id, "a1"));
  sink_.Take();
  DeskResult r = desk_->BeforeTurn(Agent("return " + id, "a2"));
  EXPECT_EQ(r.outcome, "command");
  std::vector<OutboundMessage> user = To(sink_.Take(), "webhook", "u1");
  ASSERT_EQ(user.size(), 1u);
  EXPECT_TRUE(Contains(user[0].text, "talking to the bot again")) << user[0].text;
  EXPECT_EQ(Get(id).state, TicketState::kReturned);
  EXPECT_FALSE(desk_->IsEscalated({"webhook", "u1", ""}));
  // The bot answers again.
  EXPECT_FALSE(desk_->BeforeTurn(User("thanks, one more question", "ev9")).handled);
  // Commands on the closed ticket change nothing.
  DeskResult late = desk_->BeforeTurn(Agent("resolve " + id, "a3"));
  EXPECT_EQ(late.outcome, "refused");
  EXPECT_TRUE(Contains(sink_.Take()[0].text, "already returned_to_bot"));
  EXPECT_EQ(Get(id).state, TicketState::kReturned);
}

TEST_F(DeskTest, ResolveClosesTheTicketAndTellsTheUser) {
  OpenDesk();
  const std::string id = OpenGeneral();
  desk_->BeforeTurn(Agent("claim " + id, "a1"));
  clock_.Advance(5 * kMin);
  sink_.Take();
  EXPECT_EQ(desk_->BeforeTurn(Agent("/resolve #" + id, "a2")).outcome, "command");
  std::vector<OutboundMessage> user = To(sink_.Take(), "webhook", "u1");
  ASSERT_EQ(user.size(), 1u);
  EXPECT_TRUE(Contains(user[0].text, "Bob marked this as resolved")) << user[0].text;
  Ticket t = Get(id);
  EXPECT_EQ(t.state, TicketState::kResolved);
  EXPECT_EQ(t.closed_by, "Bob");
  EXPECT_EQ(t.closed_ms, clock_.NowMs());
  EXPECT_FALSE(desk_->IsEscalated({"webhook", "u1", ""}));
}

TEST_F(DeskTest, TransferMovesTheTicketAndUnknownQueueChangesNothing) {
  OpenDesk();
  const std::string id = OpenGeneral();
  desk_->BeforeTurn(Agent("claim " + id, "a1"));
  sink_.Take();
  Ticket before = Get(id);
  DeskResult bad = desk_->BeforeTurn(Agent("transfer " + id + " nowhere", "a2"));
  EXPECT_EQ(bad.outcome, "refused");
  std::vector<OutboundMessage> sent = sink_.Take();
  ASSERT_EQ(sent.size(), 1u);
  EXPECT_TRUE(Contains(sent[0].text, "no queue `nowhere`")) << sent[0].text;
  EXPECT_TRUE(Contains(sent[0].text, "billing")) << sent[0].text;
  EXPECT_EQ(Get(id), before);

  DeskResult ok = desk_->BeforeTurn(Agent("transfer " + id + " billing", "a3"));
  EXPECT_EQ(ok.outcome, "command");
  sent = sink_.Take();
  std::vector<OutboundMessage> card = To(sent, "slack", "CBILL");
  ASSERT_EQ(card.size(), 1u);
  EXPECT_TRUE(Contains(card[0].text, "transferred from general")) << card[0].text;
  EXPECT_EQ(To(sent, "webhook", "agents").size(), 1u);  // the old channel is told
  EXPECT_TRUE(Contains(To(sent, "webhook", "u1")[0].text, "billing"));
  Ticket t = Get(id);
  EXPECT_EQ(t.queue, "billing");
  EXPECT_EQ(t.state, TicketState::kQueued);
  EXPECT_TRUE(t.agent.empty());
  // The old agents' channel can no longer act on it.
  EXPECT_EQ(desk_->BeforeTurn(Agent("claim " + id, "a4")).outcome, "refused");
  EXPECT_TRUE(Contains(sink_.Take()[0].text, "in queue billing"));
  // The new one can.
  EXPECT_EQ(desk_->BeforeTurn(Agent("claim " + id, "a5", "", "U_X", "slack", "CBILL")).outcome,
            "command");
  EXPECT_EQ(Get(id).state, TicketState::kClaimed);
}

TEST_F(DeskTest, UserCancelAbandonsTheTicket) {
  OpenDesk();
  const std::string id = OpenGeneral();
  DeskResult r = desk_->BeforeTurn(User("Cancel", "ev2"));
  EXPECT_EQ(r.outcome, "cancelled");
  std::vector<OutboundMessage> sent = sink_.Take();
  std::vector<OutboundMessage> user = To(sent, "webhook", "u1");
  ASSERT_EQ(user.size(), 1u);
  EXPECT_TRUE(Contains(user[0].text, "talking to the bot again"));
  std::vector<OutboundMessage> agents = To(sent, "webhook", "agents");
  ASSERT_EQ(agents.size(), 1u);
  EXPECT_TRUE(Contains(agents[0].text, "cancelled #" + id)) << agents[0].text;
  EXPECT_EQ(Get(id).state, TicketState::kAbandoned);
  EXPECT_FALSE(desk_->IsEscalated({"webhook", "u1", ""}));
}

TEST_F(DeskTest, WaitingUserGetsAnUpdateAtMostEveryFewMinutes) {
  OpenDesk();
  const std::string id = OpenGeneral();
  EXPECT_EQ(desk_->BeforeTurn(User("hello?", "w1")).outcome, "waiting");
  EXPECT_TRUE(sink_.Take().empty());  // just acknowledged: no update yet
  clock_.Advance(5 * kMin);
  DeskResult r = desk_->BeforeTurn(User("anyone?", "w2"));
  EXPECT_EQ(r.outcome, "waiting");
  std::vector<OutboundMessage> sent = sink_.Take();
  ASSERT_EQ(sent.size(), 1u);
  EXPECT_EQ(sent[0].in_reply_to, "w2");
  EXPECT_TRUE(Contains(sent[0].text, "Still waiting for a person: you are number 1"))
      << sent[0].text;
  EXPECT_TRUE(desk_->BeforeTurn(User("hmm", "w3")).sent.empty());
  // Nothing is lost: everything is in the transcript the agent sees.
  Ticket t = Get(id);
  std::vector<std::string> texts;
  for (const TranscriptEntry& e : t.transcript) texts.push_back(e.text);
  for (const char* text : {"hello?", "anyone?", "hmm"}) {
    EXPECT_NE(std::find(texts.begin(), texts.end(), text), texts.end()) << text;
  }
}

TEST_F(DeskTest, NonDurableSinkGetsNoOutboxEntries) {
  sink_.durable = false;
  OpenDesk();
  OpenGeneral();
  EXPECT_TRUE(store::Outbox(*kv_).Load("webhook").value().empty());
  sink_.durable = true;
  OpenGeneral("u2", "e2");
  EXPECT_EQ(store::Outbox(*kv_).Load("webhook").value().size(), 2u);
}

TEST_F(DeskTest, BadInputGetsAClearReplyAndChangesNothing) {
  OpenDesk();
  const std::string id = OpenGeneral();
  Ticket before = Get(id);

  DeskResult unknown = desk_->BeforeTurn(Agent("claim 999", "b1"));
  EXPECT_EQ(unknown.outcome, "refused");
  EXPECT_TRUE(Contains(sink_.Take()[0].text, "no ticket #999"));

  // Unknown command in the card's thread (webhook: the card's message id is its thread).
  DeskResult cmd = desk_->BeforeTurn(Agent("!frobnicate", "b2", before.card_message_id));
  EXPECT_EQ(cmd.outcome, "refused");
  EXPECT_TRUE(Contains(sink_.Take()[0].text, "Unknown command `frobnicate`"));

  // Which ticket?
  EXPECT_EQ(desk_->BeforeTurn(Agent("claim", "b3")).outcome, "refused");
  EXPECT_TRUE(Contains(sink_.Take()[0].text, "Which ticket?"));

  // A plain message in the agents' channel main line is not the desk's.
  DeskResult chat = desk_->BeforeTurn(Agent("anyone up for lunch?", "b4"));
  EXPECT_FALSE(chat.handled);
  EXPECT_TRUE(sink_.Take().empty());

  // Non-agents of a queue with agent_users.
  DeskResult sec = desk_->BeforeTurn(User("data breach reported", "b5", "u9"));
  ASSERT_TRUE(sec.handled);
  sink_.Take();
  Ticket sec_before = Get(sec.ticket_id);
  DeskResult intruder =
      desk_->BeforeTurn(Agent("claim " + sec.ticket_id, "b6", "", "mallory", "webhook", "sec"));
  EXPECT_EQ(intruder.outcome, "refused");
  EXPECT_TRUE(Contains(sink_.Take()[0].text, "Only the agents"));
  EXPECT_EQ(Get(sec.ticket_id), sec_before);
  EXPECT_EQ(
      desk_->BeforeTurn(Agent("claim " + sec.ticket_id, "b7", "", "sam", "webhook", "sec")).outcome,
      "command");

  // A ticket of another queue, from this channel.
  EXPECT_EQ(desk_->BeforeTurn(Agent("claim " + sec.ticket_id, "b8")).outcome, "refused");
  sink_.Take();
  EXPECT_EQ(Get(id), before);
}

TEST_F(DeskTest, HelpAndShow) {
  OpenDesk();
  const std::string id = OpenGeneral();
  EXPECT_EQ(desk_->BeforeTurn(Agent("help", "h1")).outcome, "command");
  EXPECT_TRUE(Contains(sink_.Take()[0].text, "transfer"));
  EXPECT_EQ(desk_->BeforeTurn(Agent("show " + id, "h2")).outcome, "command");
  EXPECT_TRUE(Contains(sink_.Take()[0].text, "Escalation #" + id));
}

// ---------------------------------------------------------------------------------------------
// SLA

TEST_F(DeskTest, SlaReannouncesThenRaisesPriorityWithOncallAndUpdatesTheUser) {
  OpenDesk();
  const std::string id = OpenGeneral();  // general: SLA 30 min, on-call "@oncall", P3
  clock_.Advance(29 * kMin);
  EXPECT_TRUE(desk_->Tick().sent.empty());
  clock_.Advance(1 * kMin);
  DeskResult first = desk_->Tick();
  std::vector<OutboundMessage> sent = sink_.Take();
  std::vector<OutboundMessage> agents = To(sent, "webhook", "agents");
  ASSERT_EQ(agents.size(), 1u);
  EXPECT_TRUE(Contains(agents[0].text, "Still waiting: escalation #" + id)) << agents[0].text;
  EXPECT_TRUE(agents[0].conversation.thread.empty());
  ASSERT_EQ(agents[0].actions.size(), 3u);  // the re-announced card has its buttons
  EXPECT_EQ(agents[0].actions[0].value, "claim " + id);
  EXPECT_FALSE(agents[0].keep_mentions);
  std::vector<OutboundMessage> user = To(sent, "webhook", "u1");
  ASSERT_EQ(user.size(), 1u);
  EXPECT_TRUE(Contains(user[0].text, "number 1 in the queue")) << user[0].text;
  EXPECT_EQ(user[0].reply_route, "http://127.0.0.1:9/cb/u1");
  EXPECT_EQ(Get(id).sla_stage, 1);
  EXPECT_EQ(Get(id).priority, 3);
  EXPECT_TRUE(desk_->Tick().sent.empty());  // not again right away

  clock_.Advance(30 * kMin);
  desk_->Tick();
  agents = To(sink_.Take(), "webhook", "agents");
  ASSERT_EQ(agents.size(), 1u);
  EXPECT_TRUE(Contains(agents[0].text, "Priority raised to P2")) << agents[0].text;
  EXPECT_TRUE(Contains(agents[0].text, "@oncall")) << agents[0].text;
  EXPECT_TRUE(agents[0].keep_mentions);  // the configured mention notifies
  EXPECT_TRUE(agents[0].actions.empty());
  EXPECT_EQ(Get(id).priority, 2);
  EXPECT_EQ(Get(id).sla_stage, 2);

  // Later notices at most every sla_renotify_minutes (15).
  clock_.Advance(14 * kMin);
  EXPECT_TRUE(desk_->Tick().sent.empty());
  clock_.Advance(1 * kMin);
  EXPECT_EQ(desk_->Tick().sent.size(), 2u);
  agents = To(sink_.Take(), "webhook", "agents");
  ASSERT_EQ(agents.size(), 1u);
  EXPECT_EQ(agents[0].actions.size(), 3u);

  // A claim stops the timers.
  desk_->BeforeTurn(Agent("claim " + id, "a1"));
  sink_.Take();
  clock_.Advance(2 * kHour);
  EXPECT_TRUE(desk_->Tick().sent.empty());
  EXPECT_TRUE(sink_.Take().empty());
}

TEST_F(DeskTest, SlaClockRunsOnlyInBusinessHours) {
  options_.queues[0].business_hours = "mon-fri 09:00-17:00";
  clock_.Set(kMonday + 4 * kDay + 16 * kHour + 50 * kMin);  // Friday 16:50 UTC
  OpenDesk();
  const std::string id = OpenGeneral();
  EXPECT_EQ(Get(id).sla_due_ms, kMonday + 7 * kDay + 9 * kHour + 20 * kMin);
  clock_.Set(kMonday + 4 * kDay + 17 * kHour + 30 * kMin);  // Friday 17:30: 40 min later, closed
  EXPECT_TRUE(desk_->Tick().sent.empty());
  clock_.Set(kMonday + 6 * kDay + 12 * kHour);  // Sunday
  EXPECT_TRUE(desk_->Tick().sent.empty());
  clock_.Set(kMonday + 7 * kDay + 9 * kHour + 19 * kMin);
  EXPECT_TRUE(desk_->Tick().sent.empty());
  clock_.Set(kMonday + 7 * kDay + 9 * kHour + 20 * kMin);
  EXPECT_EQ(desk_->Tick().sent.size(), 2u);
  EXPECT_EQ(Get(id).sla_stage, 1);
}

// ---------------------------------------------------------------------------------------------
// Durability

TEST_F(DeskTest, RestartContinuesOpenTicketsAndTimers) {
  OpenDesk();
  const std::string a = OpenGeneral("u1", "e1");
  const std::string b = OpenGeneral("u2", "e2");
  desk_->BeforeTurn(Agent("claim " + a, "a1"));
  sink_.Take();
  desk_.reset();  // "stop"

  OpenDesk();
  EXPECT_TRUE(desk_->IsEscalated({"webhook", "u1", ""}));
  EXPECT_TRUE(desk_->IsEscalated({"webhook", "u2", ""}));
  EXPECT_EQ(Get(a).state, TicketState::kClaimed);
  // Relays continue.
  EXPECT_EQ(desk_->BeforeTurn(User("still there?", "e3", "u1")).outcome, "relayed");
  EXPECT_EQ(desk_->BeforeTurn(Agent("reply " + a + " yes", "a2")).outcome, "relayed");
  sink_.Take();
  // New tickets continue the numbering.
  const std::string c = OpenGeneral("u3", "e4");
  EXPECT_EQ(std::stoi(c), std::stoi(b) + 1);
  desk_.reset();

  // The timer of the queued ticket fires after another restart.
  clock_.Advance(31 * kMin);
  OpenDesk();
  DeskResult tick = desk_->Tick();
  std::vector<OutboundMessage> user = To(tick.sent, "webhook", "u2");
  EXPECT_EQ(user.size(), 1u);
  EXPECT_EQ(Get(b).sla_stage, 1);
  EXPECT_EQ(Get(a).sla_stage, 0);  // claimed: no timer
  EXPECT_EQ(desk_->QueuePosition(b), 1);
  EXPECT_EQ(desk_->QueuePosition(c), 2);
}

// A summarizer that holds the requests until the test answers them (as the LLM would, later).
class HeldSummaries {
 public:
  Desk::Summarizer Summarizer() {
    return [this](const Ticket& t, Desk::SummaryCallback done) {
      std::lock_guard<std::mutex> lock(mu_);
      asked_.push_back(t);
      done_.push_back(std::move(done));
    };
  }
  std::vector<Ticket> asked() {
    std::lock_guard<std::mutex> lock(mu_);
    return asked_;
  }
  // Answers request i (in asking order).
  void Answer(size_t i, Result<std::string> summary) {
    Desk::SummaryCallback done;
    {
      std::lock_guard<std::mutex> lock(mu_);
      done = done_.at(i);
    }
    done(std::move(summary));
  }

 private:
  std::mutex mu_;
  std::vector<Ticket> asked_;
  std::vector<Desk::SummaryCallback> done_;
};

TEST_F(DeskTest, ModelSummaryReplacesTheCondensedOneAndIsPostedInTheCardThread) {
  HeldSummaries held;
  OpenDesk();
  desk_->SetSummarizer(held.Summarizer());
  DeskResult r = desk_->BeforeTurn(User("My parcel is lost. Can I talk to a human?", "ev1"));
  ASSERT_EQ(r.outcome, "opened");
  const std::string id = r.ticket_id;
  // The card goes out at once with the condensed summary; the model is asked once.
  std::vector<OutboundMessage> cards = To(sink_.Take(), "webhook", "agents");
  ASSERT_EQ(cards.size(), 1u);
  EXPECT_TRUE(Contains(cards[0].text, "Summary: The user wrote 1 message")) << cards[0].text;
  ASSERT_EQ(held.asked().size(), 1u);
  EXPECT_EQ(held.asked()[0].id, id);
  EXPECT_EQ(held.asked()[0].transcript.back().text, "My parcel is lost. Can I talk to a human?");
  EXPECT_EQ(Get(id).summary_source, "pending");
  ASSERT_TRUE(desk_->OnDelivered({cards[0].id, {"webhook", "agents", ""}, cards[0].id}).ok());
  // Nothing else asks again while the answer is on its way.
  desk_->BeforeTurn(User("hello?", "ev2"));
  desk_->Tick();
  EXPECT_EQ(held.asked().size(), 1u);
  sink_.Take();

  held.Answer(0, std::string("  Alice's parcel (order 42) is lost; she wants it found.\n"));
  Ticket t = Get(id);
  EXPECT_EQ(t.summary, "Alice's parcel (order 42) is lost; she wants it found.");
  EXPECT_EQ(t.summary_source, "model");
  std::vector<OutboundMessage> sent = To(sink_.Take(), "webhook", "agents");
  ASSERT_EQ(sent.size(), 1u);
  // The webhook has no platform threads: the card's own message id is its thread.
  EXPECT_EQ(sent[0].conversation.thread, cards[0].id);
  EXPECT_EQ(sent[0].text, "*Summary:* Alice's parcel (order 42) is lost; she wants it found.");
  // A re-announced card carries it.
  clock_.Advance(31 * kMin);
  std::vector<OutboundMessage> again = To(desk_->Tick().sent, "webhook", "agents");
  ASSERT_FALSE(again.empty());
  EXPECT_TRUE(Contains(again[0].text, "Summary: Alice's parcel (order 42) is lost")) << again[0].text;
  EXPECT_EQ(held.asked().size(), 1u);
}

TEST_F(DeskTest, FailedModelSummaryKeepsTheCondensedOneAndSaysNothing) {
  HeldSummaries held;
  OpenDesk();
  desk_->SetSummarizer(held.Summarizer());
  const std::string a = OpenGeneral("u1", "e1");
  const std::string b = OpenGeneral("u2", "e2");
  ASSERT_EQ(held.asked().size(), 2u);
  const std::string condensed = Get(a).summary;
  held.Answer(0, Status::Unavailable("circuit open"));
  held.Answer(1, std::string(" \n "));  // an empty answer is a failure too
  EXPECT_EQ(Get(a).summary, condensed);
  EXPECT_EQ(Get(a).summary_source, "turns");
  EXPECT_EQ(Get(b).summary_source, "turns");
  EXPECT_TRUE(sink_.Take().empty());
  desk_->Tick();  // not asked again
  EXPECT_EQ(held.asked().size(), 2u);

  // An answer for a ticket closed meanwhile changes nothing.
  const std::string c = OpenGeneral("u3", "e3");
  desk_->BeforeTurn(Agent("resolve " + c, "a1"));
  sink_.Take();
  held.Answer(2, std::string("late"));
  EXPECT_NE(Get(c).summary, "late");
  EXPECT_TRUE(sink_.Take().empty());
}

TEST_F(DeskTest, PendingSummaryIsAskedAgainAfterARestartAndALateAnswerIsHarmless) {
  HeldSummaries before_crash;
  OpenDesk();
  desk_->SetSummarizer(before_crash.Summarizer());
  const std::string id = OpenGeneral();
  const std::string closed = OpenGeneral("u2", "e2");
  desk_->BeforeTurn(Agent("resolve " + closed, "a1"));
  sink_.Take();
  desk_.reset();  // the crash: the model's answer never arrived

  HeldSummaries after;
  OpenDesk();
  desk_->SetSummarizer(after.Summarizer());
  EXPECT_EQ(Get(id).summary_source, "pending");
  desk_->Tick();
  desk_->Tick();
  ASSERT_EQ(after.asked().size(), 1u);  // once, and not for the resolved ticket
  EXPECT_EQ(after.asked()[0].id, id);
  // The answer to the request of the desk that is gone does nothing.
  before_crash.Answer(0, std::string("stale"));
  EXPECT_EQ(Get(id).summary_source, "pending");
  after.Answer(0, std::string("Wants a person about a lost parcel."));
  EXPECT_EQ(Get(id).summary, "Wants a person about a lost parcel.");
  EXPECT_EQ(To(sink_.Take(), "webhook", "agents").size(), 1u);
}

TEST_F(DeskTest, WithoutASummarizerTheSummaryIsTheCondensedTurns) {
  OpenDesk();
  const std::string id = OpenGeneral();
  EXPECT_EQ(Get(id).summary_source, "turns");
  EXPECT_TRUE(Contains(Get(id).summary, "I want to talk to a human")) << Get(id).summary;
}

TEST_F(DeskTest, ClosedTicketsAreDeletedAfterTheRetentionPeriod) {
  options_.retention_days = 2;
  OpenDesk();
  const std::string old_closed = OpenGeneral("u1", "e1");
  const std::string young_closed = OpenGeneral("u2", "e2");
  const std::string still_open = OpenGeneral("u3", "e3");
  desk_->BeforeTurn(Agent("resolve " + old_closed, "a1"));
  desk_->Tick();  // sweeps: nothing is old enough
  EXPECT_TRUE(desk_->Get(old_closed).ok());
  clock_.Advance(kDay + kHour);
  desk_->BeforeTurn(Agent("resolve " + young_closed, "a2"));
  clock_.Advance(kDay + kHour);  // old_closed closed 2 days 2 hours ago, young_closed 1 day ago
  desk_->Tick();
  EXPECT_TRUE(desk_->Get(old_closed).status().IsNotFound());
  EXPECT_TRUE(desk_->Get(young_closed).ok());
  EXPECT_TRUE(desk_->Get(still_open).ok());  // open tickets are never swept
  // Its card thread is forgotten too; the others' stay.
  std::set<std::string> mapped;
  ASSERT_TRUE(kv_->Scan(store::keys::kEscThread, [&](std::string_view, std::string_view v) {
                   mapped.insert(std::string(v));
                   return true;
                 }).ok());
  EXPECT_EQ(mapped.count(old_closed), 0u);
  EXPECT_EQ(mapped.count(young_closed), 1u);
  EXPECT_EQ(mapped.count(still_open), 1u);
  Result<std::vector<Ticket>> all = desk_->List({});
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->size(), 2u);
}

TEST_F(DeskTest, RetentionZeroKeepsClosedTickets) {
  options_.retention_days = 0;
  OpenDesk();
  const std::string id = OpenGeneral();
  desk_->BeforeTurn(Agent("resolve " + id, "a1"));
  clock_.Advance(400 * kDay);
  desk_->Tick();
  EXPECT_TRUE(desk_->Get(id).ok());
}

TEST_F(DeskTest, ReplayOfAnAppliedEventChangesNothingAndSendsNothing) {
  OpenDesk();
  InboundMessage open = User("talk to a human", "ev1");
  ASSERT_TRUE(desk_->BeforeTurn(open).handled);
  const std::string id = "1";
  desk_->BeforeTurn(Agent("claim 1", "a1"));
  desk_->BeforeTurn(User("hello?", "ev2"));
  desk_->BeforeTurn(Agent("reply 1 hi", "a2"));
  sink_.Take();
  Ticket before = Get(id);
  for (const InboundMessage& m : {open, Agent("claim 1", "a1"), User("hello?", "ev2"),
                                  Agent("reply 1 hi", "a2"), Agent("claim 999", "a1")}) {
    DeskResult r = desk_->BeforeTurn(m);
    EXPECT_TRUE(r.handled) << m.text;
    EXPECT_EQ(r.outcome, "duplicate") << m.text;
    EXPECT_TRUE(r.sent.empty());
  }
  EXPECT_TRUE(sink_.Take().empty());
  EXPECT_EQ(Get(id), before);
}

TEST_F(DeskTest, CrashBetweenWriteAndSendStillSendsEachMessageOnce) {
  OpenDesk();
  // The first process writes (ticket + outbox) and dies before handing anything to the sink.
  sink_.drop = true;
  InboundMessage m = User("talk to a human", "ev1");
  DeskResult first = desk_->BeforeTurn(m);
  ASSERT_EQ(first.sent.size(), 2u);
  std::set<std::string> ids;
  for (const OutboundMessage& o : first.sent) ids.insert(o.id);
  desk_.reset();

  // The outbox holds each message once, under its deterministic id; adapters resume it.
  std::set<std::string> owed;
  for (const std::string platform : {"webhook", "slack"}) {
    Result<std::vector<store::OutboxEntry>> entries = store::Outbox(*kv_).Load(platform);
    ASSERT_TRUE(entries.ok());
    for (const store::OutboxEntry& e : *entries) {
      EXPECT_TRUE(owed.insert(e.id).second) << e.id;
      OutboundMessage payload = nlohmann::json::parse(e.payload).get<OutboundMessage>();
      EXPECT_EQ(payload.id, e.id);
    }
  }
  EXPECT_EQ(owed, ids);

  // The restarted router replays its inbox: the desk applied it already and sends nothing.
  sink_.drop = false;
  OpenDesk();
  DeskResult replay = desk_->BeforeTurn(m);
  EXPECT_TRUE(replay.handled);
  EXPECT_EQ(replay.outcome, "duplicate");
  EXPECT_TRUE(sink_.Take().empty());
  Result<std::vector<Ticket>> all = desk_->List({});
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->size(), 1u);

  // Applying the same message in a second process twice over gives the same ids.
  testing::TempDir other;
  auto kv2 = store::OpenLevelDb(other.Sub("db"));
  ASSERT_TRUE(kv2.ok());
  RecordingSink sink2;
  auto desk2 = Desk::Open(options_, *kv2.value(), sink2, clock_, metrics_, nullptr);
  ASSERT_TRUE(desk2.ok());
  DeskResult again = desk2.value()->BeforeTurn(m);
  std::set<std::string> ids2;
  for (const OutboundMessage& o : again.sent) ids2.insert(o.id);
  EXPECT_EQ(ids2, ids);
  EXPECT_TRUE(desk2.value()->BeforeTurn(m).sent.empty());
  EXPECT_EQ(sink2.Take().size(), 2u);
}

TEST_F(DeskTest, ReplayedTurnAfterAfterTurnRepeatsTheAcknowledgementOnly) {
  OpenDesk();
  InboundMessage m = User("something odd", "ev1");
  auto run = [&]() {
    EXPECT_FALSE(desk_->BeforeTurn(m).handled);  // the engine runs (again)
    OutboundMessage reply;
    reply.id = "r1";
    reply.conversation = m.conversation();
    reply.text = "I'll hand you over.";
    reply.escalated = true;
    DeskResult r = desk_->AfterTurn(m, reply, {"answered", "", "unclear"});
    return std::make_pair(r, reply.text);
  };
  auto [first, text1] = run();
  EXPECT_EQ(first.outcome, "opened");
  EXPECT_EQ(sink_.Take().size(), 1u);
  // Crash before the router committed the turn: the turn is replayed.
  desk_.reset();
  OpenDesk();
  // Not escalated-and-handled for this event: the engine must run again for the reply.
  auto [second, text2] = run();
  EXPECT_EQ(second.outcome, "duplicate");
  EXPECT_EQ(text2, text1);
  EXPECT_TRUE(sink_.Take().empty());
  EXPECT_EQ(desk_->List({}).value().size(), 1u);
}

TEST_F(DeskTest, OnDeliveredMapsTheCardThreadAndIgnoresOthers) {
  OpenDesk();
  DeskResult r = desk_->BeforeTurn(User("talk to a human about my invoice", "ev1"));
  std::vector<OutboundMessage> cards = To(sink_.Take(), "slack", "CBILL");
  ASSERT_EQ(cards.size(), 1u);
  // Before the receipt that thread is not the ticket's: "claim" there names no ticket.
  DeskResult early = desk_->BeforeTurn(Agent("claim", "x0", "1700.5", "U1", "slack", "CBILL"));
  EXPECT_EQ(early.outcome, "refused");
  ASSERT_EQ(early.sent.size(), 1u);
  EXPECT_TRUE(Contains(early.sent[0].text, "Which ticket?"));
  EXPECT_FALSE(desk_->BeforeTurn(Agent("Hello?", "x00", "1700.5", "U1", "slack", "CBILL")).handled);
  EXPECT_EQ(Get(r.ticket_id).state, TicketState::kQueued);
  // Receipts for other messages or places are ignored.
  EXPECT_TRUE(desk_->OnDelivered({"r-123", {"slack", "CBILL", ""}, "1700.9"}).ok());
  EXPECT_TRUE(desk_->OnDelivered({cards[0].id, {"slack", "CBILL", "1700.1"}, "1700.8"}).ok());
  EXPECT_TRUE(Get(r.ticket_id).card_thread.empty());
  ASSERT_TRUE(desk_->OnDelivered({cards[0].id, {"slack", "CBILL", ""}, "1700.5"}).ok());
  EXPECT_EQ(Get(r.ticket_id).card_thread, "1700.5");
  DeskResult claim = desk_->BeforeTurn(Agent("claim", "x1", "1700.5", "U1", "slack", "CBILL"));
  EXPECT_TRUE(claim.handled);
  EXPECT_EQ(claim.ticket_id, r.ticket_id);
  EXPECT_EQ(Get(r.ticket_id).state, TicketState::kClaimed);
  // The mapping survives a restart.
  OpenDesk();
  EXPECT_EQ(desk_->BeforeTurn(Agent("Hello!", "x2", "1700.5", "U1", "slack", "CBILL")).outcome,
            "relayed");
}

// A store that fails writes on demand (disk full).
class FlakyStore : public store::KvStore {
 public:
  explicit FlakyStore(store::KvStore& inner) : inner_(inner) {}
  Result<std::string> Get(std::string_view key) override { return inner_.Get(key); }
  Status Write(const store::WriteBatch& batch, bool sync) override {
    if (fail) return Status::IoError("disk full");
    return inner_.Write(batch, sync);
  }
  Status Scan(std::string_view prefix, const store::ScanVisitor& visit,
              std::string_view start) override {
    return inner_.Scan(prefix, visit, start);
  }
  Status ScanReverse(std::string_view prefix, const store::ScanVisitor& visit) override {
    return inner_.ScanReverse(prefix, visit);
  }
  bool fail = false;

 private:
  store::KvStore& inner_;
};

TEST_F(DeskTest, StoreFailureChangesNothingAndSendsNothing) {
  FlakyStore flaky(*kv_);
  auto opened = Desk::Open(options_, flaky, sink_, clock_, metrics_, memory_.get());
  ASSERT_TRUE(opened.ok());
  Desk& desk = *opened.value();
  flaky.fail = true;
  InboundMessage m = User("talk to a human", "ev1");
  DeskResult r = desk.BeforeTurn(m);
  EXPECT_FALSE(r.status.ok());
  EXPECT_TRUE(r.handled);  // the bot must not answer what may be an escalation
  EXPECT_EQ(r.outcome, "error");
  EXPECT_TRUE(r.sent.empty());
  EXPECT_TRUE(sink_.Take().empty());
  EXPECT_FALSE(desk.IsEscalated(m.conversation()));
  EXPECT_TRUE(desk.List({}).value().empty());
  // The retry (the router keeps the message in its inbox) opens the ticket, once.
  flaky.fail = false;
  DeskResult retry = desk.BeforeTurn(m);
  EXPECT_EQ(retry.outcome, "opened");
  EXPECT_EQ(retry.ticket_id, "1");
  EXPECT_EQ(sink_.Take().size(), 2u);
}

TEST_F(DeskTest, UnsolicitedMessagesToAgentsCarryTheChannelsReplyRoute) {
  store::WriteBatch b;
  store::RouteBook(*kv_).Set(b, {"webhook", "agents", ""}, "http://127.0.0.1:9/agents");
  ASSERT_TRUE(kv_->Write(b, true).ok());
  OpenDesk();
  DeskResult r = desk_->BeforeTurn(User("talk to a human", "ev1"));
  std::vector<OutboundMessage> cards = To(r.sent, "webhook", "agents");
  ASSERT_EQ(cards.size(), 1u);
  EXPECT_EQ(cards[0].reply_route, "http://127.0.0.1:9/agents");
  EXPECT_TRUE(cards[0].in_reply_to.empty());
  // Durable delivery: the outbox entry targets that route.
  Result<std::vector<store::OutboxEntry>> owed = store::Outbox(*kv_).Load("webhook");
  ASSERT_TRUE(owed.ok());
  bool found = false;
  for (const store::OutboxEntry& e : *owed) {
    if (e.id == cards[0].id) {
      found = true;
      EXPECT_EQ(e.target, "http://127.0.0.1:9/agents");
    }
  }
  EXPECT_TRUE(found);
}

// ---------------------------------------------------------------------------------------------
// Operators and metrics

TEST_F(DeskTest, ListAndGetWithFilters) {
  OpenDesk();
  const std::string a = OpenGeneral("u1", "e1");
  DeskResult b = desk_->BeforeTurn(User("human please, refund", "e2", "u2"));
  const std::string c = OpenGeneral("u3", "e3");
  desk_->BeforeTurn(Agent("resolve " + c, "a1"));
  Result<std::vector<Ticket>> all = desk_->List({});
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 3u);
  EXPECT_EQ((*all)[0].id, c);  // newest first
  auto ids = [&](TicketFilter f) {
    std::vector<std::string> out;
    for (const Ticket& t : desk_->List(f).value()) out.push_back(t.id);
    return out;
  };
  EXPECT_EQ(ids({"queued", "", 100}), (std::vector<std::string>{b.ticket_id, a}));
  EXPECT_EQ(ids({"resolved", "", 100}), (std::vector<std::string>{c}));
  EXPECT_EQ(ids({"open", "", 100}), (std::vector<std::string>{b.ticket_id, a}));
  EXPECT_EQ(ids({"", "billing", 100}), (std::vector<std::string>{b.ticket_id}));
  EXPECT_EQ(ids({"", "general", 1}), (std::vector<std::string>{c}));
  EXPECT_TRUE(ids({"claimed", "", 100}).empty());
  EXPECT_TRUE(desk_->Get("42").status().IsNotFound());
  EXPECT_EQ(desk_->Get(a)->queue, "general");
}

TEST_F(DeskTest, MetricsCountTriggersDepthClaimResolveAndBreaches) {
  OpenDesk();
  auto depth = [&](const std::string& q) {
    return metrics_.GetGauge("parley_escalation_queue_depth", "", "queue=\"" + q + "\"").value();
  };
  auto tickets = [&](const std::string& trigger) {
    return metrics_.GetCounter("parley_escalation_tickets_total", "", "trigger=\"" + trigger + "\"")
        .value();
  };
  const std::string a = OpenGeneral("u1", "e1");
  const std::string b = OpenGeneral("u2", "e2");
  desk_->BeforeTurn(User("security incident!", "e3", "u3"));
  EXPECT_EQ(tickets("request"), 2u);
  EXPECT_EQ(tickets("policy"), 1u);
  EXPECT_EQ(depth("general"), 2);
  EXPECT_EQ(depth("security"), 1);
  clock_.Advance(31 * kMin);
  desk_->Tick();
  EXPECT_EQ(
      metrics_.GetCounter("parley_escalation_sla_breaches_total", "", "queue=\"general\"").value(),
      2u);
  desk_->BeforeTurn(Agent("claim " + a, "a1"));
  EXPECT_EQ(depth("general"), 1);
  Histogram& claim = metrics_.GetHistogram("parley_escalation_claim_seconds", "");
  EXPECT_EQ(claim.count(), 1u);
  desk_->BeforeTurn(Agent("resolve " + a, "a2"));
  desk_->BeforeTurn(Agent("resolve " + b, "a3"));
  EXPECT_EQ(metrics_.GetHistogram("parley_escalation_resolve_seconds", "").count(), 2u);
  EXPECT_EQ(depth("general"), 0);
  std::string text = metrics_.RenderPrometheus();
  EXPECT_NE(text.find("parley_escalation_queue_depth{queue=\"security\"} 1"), std::string::npos)
      << text;
}

TEST_F(DeskTest, InactiveWithoutQueues) {
  options_.queues.clear();
  OpenDesk();
  EXPECT_FALSE(desk_->active());
  EXPECT_FALSE(desk_->BeforeTurn(User("talk to a human", "e1")).handled);
  EXPECT_TRUE(sink_.Take().empty());
  options_ = DefaultOptions();
  options_.queues[1].patterns = {"("};
  EXPECT_TRUE(Desk::Open(options_, *kv_, sink_, clock_, metrics_).status().IsInvalidArgument());
}

}  // namespace
}  // namespace parley::escalation
