// End-to-end: the real `parley serve` binary as a bot user on the Matrix test homeserver
// (tests/fakes/matrix, plain http://127.0.0.1): mentions, DMs, threads, ignored events, bursts
// beyond the timeline limit, restarts and SIGKILL, lost responses, 429 storms, sync faults,
// encrypted-room invites, and the escalation desk with its agents in a Matrix room.

#include <algorithm>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/fakes/callback_server.h"
#include "tests/fakes/matrix/matrix_server.h"
#include "tests/support/daemon_process.h"
#include "tests/support/sample_kb.h"
#include "tests/support/temp_dir.h"

namespace parley::testing {
namespace {

using nlohmann::json;

constexpr char kBot[] = "@parley:test.local";
constexpr char kAlice[] = "@alice:test.local";
constexpr char kBob[] = "@bob:test.local";

// The event a bot message answers: m.in_reply_to of its relation (threads and rich replies).
std::string RepliesTo(const MatrixEvent& e) {
  const json& rel = e.content.value("m.relates_to", json::object());
  if (!rel.is_object()) return "";
  if (rel.contains("m.in_reply_to") && rel["m.in_reply_to"].is_object()) {
    return rel["m.in_reply_to"].value("event_id", "");
  }
  return "";
}

bool IsEdit(const MatrixEvent& e) {
  const json& rel = e.content.value("m.relates_to", json::object());
  return rel.is_object() && rel.value("rel_type", "") == "m.replace";
}

class MatrixE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    WriteSampleKnowledge(dir_.Sub("kb"));
    server_ = MatrixServer::Start();
  }
  void TearDown() override {
    if (HasFailure() && daemon_) std::cerr << "---- daemon log ----\n" << daemon_->Log();
  }

  std::string ConfigText(const std::string& matrix_extra, const std::string& more) const {
    return "[server]\nlisten = \"127.0.0.1:0\"\nport_file = \"" + dir_.Sub("port.json") +
           "\"\n\n[store]\npath = \"" + dir_.Sub("store") +
           "\"\n\n[[knowledge.sources]]\npath = \"" + dir_.Sub("kb") +
           "\"\nurl_base = \"https://docs.example.com/\"\n\n"
           "[policy]\nuser_rate_per_minute = 6000\nuser_burst = 500\n"
           "conversation_rate_per_minute = 6000\nconversation_burst = 500\n\n"
           "[webhook]\nenabled = true\ninsecure_no_auth = true\ndefault_reply_url = \"" +
           callback_.Url("/desk") + "\"\n\n"
           "[matrix]\nenabled = true\nhomeserver = \"" +
           server_->base_url() + "\"\nuser_id = \"" + kBot +
           "\"\naccess_token = \"${MATRIX_ACCESS_TOKEN}\"\nsync_timeout_ms = 2000\n" +
           matrix_extra + "\n" + more + "\n[log]\nlevel = \"debug\"\n";
  }

  // Starts (or restarts) the daemon on the same store.
  void StartDaemon(const std::string& matrix_extra = "", const std::string& more = "",
                   bool expect_ready = true) {
    WriteFile(dir_.Sub("parley.toml"), ConfigText(matrix_extra, more));
    daemon_ = std::make_unique<DaemonProcess>(
        dir_.Sub("parley.toml"), dir_.Sub("port.json"), dir_.Sub("log.txt"),
        std::map<std::string, std::string>{
            {"MATRIX_ACCESS_TOKEN", server_->options().bot_access_token}});
    const bool ready = daemon_->Start();
    if (expect_ready) {
      ASSERT_TRUE(ready) << daemon_->Log();
    }
  }

  // The bot's messages in a room (edits excluded), in order.
  std::vector<MatrixEvent> BotMessages(const std::string& room) const {
    std::vector<MatrixEvent> out;
    for (const MatrixEvent& e : server_->Events(room)) {
      if (e.sender == kBot && e.type == "m.room.message" && !IsEdit(e)) out.push_back(e);
    }
    return out;
  }

  // The bot's messages answering event `id`.
  std::vector<MatrixEvent> AnswersTo(const std::string& room, const std::string& id) const {
    std::vector<MatrixEvent> out;
    for (const MatrixEvent& e : BotMessages(room)) {
      if (RepliesTo(e) == id) out.push_back(e);
    }
    return out;
  }

  bool WaitAnswered(const std::string& room, const std::vector<std::string>& ids,
                    int timeout_ms = 20'000) const {
    return server_->WaitFor(
        [&] {
          for (const std::string& id : ids) {
            if (AnswersTo(room, id).empty()) return false;
          }
          return true;
        },
        timeout_ms);
  }

  // Sends a marker message that needs an answer and waits for it: everything sent before it in
  // the same room has been decided on by then (one room's events are handled in order).
  void Settle(const std::string& room) {
    const std::string marker =
        server_->SendText(room, kAlice, "Parley: how do I install the widget on macOS?",
                          std::vector<std::string>{kBot});
    ASSERT_TRUE(WaitAnswered(room, {marker}));
  }

  // A room with alice and the bot joined (through an invite the daemon accepts).
  std::string JoinedRoom(const std::string& name = "help") {
    const std::string room = server_->CreateRoom(kAlice, {kBob}, false, name);
    server_->Invite(room, kAlice, kBot);
    EXPECT_TRUE(server_->WaitFor(
        [&] {
          const auto members = server_->JoinedMembers(room);
          return std::find(members.begin(), members.end(), kBot) != members.end();
        },
        15'000))
        << "the bot did not join " << room;
    return room;
  }

  TempDir dir_;
  CallbackServer callback_;  // the webhook user's unsolicited messages (desk relays)
  std::unique_ptr<MatrixServer> server_;
  std::unique_ptr<DaemonProcess> daemon_;
};

TEST_F(MatrixE2eTest, MentionsAreAnsweredInTheirThreadAsNoticesWithLinkedSources) {
  StartDaemon("typing_delay_ms = 0");  // the answers are quicker than the default delay
  const std::string room = JoinedRoom();
  // m.mentions (authoritative), and a legacy mention by display name in the body.
  const std::string q1 = server_->SendText(room, kAlice, "How do I install the frobnicator on Linux?",
                                           std::vector<std::string>{kBot});
  const std::string q2 = server_->SendText(room, kBob, "Parley: how are refunds paid?");
  ASSERT_TRUE(WaitAnswered(room, {q1, q2})) << daemon_->Log();

  const MatrixEvent a1 = AnswersTo(room, q1).at(0);
  EXPECT_EQ(a1.content["msgtype"], "m.notice");
  EXPECT_NE(a1.content["body"].get<std::string>().find("apt install frobnicator"),
            std::string::npos)
      << a1.content.dump();
  EXPECT_EQ(a1.content["format"], "org.matrix.custom.html");
  const std::string html = a1.content.value("formatted_body", "");
  EXPECT_NE(html.find("href=\"https://docs.example.com/frobnicator.md"), std::string::npos)
      << html;
  // A thread rooted on the question, with the reply fallback to it.
  const json& rel = a1.content["m.relates_to"];
  EXPECT_EQ(rel["rel_type"], "m.thread");
  EXPECT_EQ(rel["event_id"], q1);
  EXPECT_EQ(rel["is_falling_back"], true);
  EXPECT_EQ(rel["m.in_reply_to"]["event_id"], q1);

  const MatrixEvent a2 = AnswersTo(room, q2).at(0);
  EXPECT_NE(a2.content["body"].get<std::string>().find("fourteen days"), std::string::npos);
  // Typing was shown while the turns ran, and switched off.
  ASSERT_TRUE(server_->WaitFor([&] {
    const auto typing = server_->TypingCalls();
    return !typing.empty() && !typing.back().value("typing", true);
  })) << "typing was not switched off";
  const auto typing = server_->TypingCalls();
  EXPECT_TRUE(typing.front().value("typing", false));
}

TEST_F(MatrixE2eTest, ThreadFollowUpsAreAnsweredInTheThreadAndUnaddressedMessagesAreNot) {
  StartDaemon();
  const std::string room = JoinedRoom();
  const std::string q = server_->SendText(room, kAlice, "How do I install the frobnicator?",
                                          std::vector<std::string>{kBot});
  ASSERT_TRUE(WaitAnswered(room, {q}));
  // A follow-up in the bot's thread without a mention, and chatter in the room.
  const std::string chatter =
      server_->SendText(room, kBob, "lunch anyone?", std::vector<std::string>{});
  const std::string follow = server_->SendText(room, kAlice, "and on Windows?", std::nullopt, q);
  ASSERT_TRUE(WaitAnswered(room, {follow})) << daemon_->Log();
  const MatrixEvent a = AnswersTo(room, follow).at(0);
  EXPECT_EQ(a.content["m.relates_to"]["event_id"], q);  // the thread's root, not the follow-up
  EXPECT_NE(a.content["body"].get<std::string>().find("MSI"), std::string::npos)
      << a.content.dump();
  Settle(room);
  EXPECT_TRUE(AnswersTo(room, chatter).empty());
}

TEST_F(MatrixE2eTest, DirectMessageInviteIsJoinedAndEverythingInItIsForTheBot) {
  StartDaemon();
  const std::string dm = server_->CreateRoom(kAlice, {});
  server_->Invite(dm, kAlice, kBot, /*is_direct=*/true);
  ASSERT_TRUE(server_->WaitFor([&] {
    const auto m = server_->JoinedMembers(dm);
    return std::find(m.begin(), m.end(), kBot) != m.end();
  }));
  const std::string q = server_->SendText(dm, kAlice, "how long do refunds take?");
  ASSERT_TRUE(WaitAnswered(dm, {q})) << daemon_->Log();
  EXPECT_NE(AnswersTo(dm, q)[0].content["body"].get<std::string>().find("fourteen days"),
            std::string::npos);
}

TEST_F(MatrixE2eTest, OwnEventsNoticesEditsAndUninvitedServersAreIgnored) {
  StartDaemon();
  const std::string room = JoinedRoom();
  // Another bot's notice that mentions parley: never answered (the spec forbids it).
  const std::string notice = server_->SendEvent(
      room, kBob, "m.room.message",
      json{{"msgtype", "m.notice"}, {"body", "Parley: build finished"},
           {"m.mentions", {{"user_ids", {kBot}}}}});
  // An edit of a message that mentions parley.
  const std::string original = server_->SendText(room, kAlice, "hello", std::vector<std::string>{});
  const std::string edit = server_->SendEvent(
      room, kAlice, "m.room.message",
      json{{"msgtype", "m.text"},
           {"body", "* Parley: how are refunds paid?"},
           {"m.new_content", {{"msgtype", "m.text"}, {"body", "Parley: how are refunds paid?"}}},
           {"m.relates_to", {{"rel_type", "m.replace"}, {"event_id", original}}}});
  // m.mentions present without the bot: the body's "parley" is not a mention.
  const std::string not_for_bot =
      server_->SendText(room, kAlice, "parley is slow today", std::vector<std::string>{kBob});
  Settle(room);
  EXPECT_TRUE(AnswersTo(room, notice).empty());
  EXPECT_TRUE(AnswersTo(room, edit).empty());
  EXPECT_TRUE(AnswersTo(room, not_for_bot).empty());
  // The bot never answers itself: exactly one message per question so far (the marker).
  EXPECT_EQ(BotMessages(room).size(), 1u);

  // An invite from a user of another server is not accepted (default policy: own server only).
  const std::string foreign = server_->CreateRoom("@mallory:evil.example", {});
  server_->Invite(foreign, "@mallory:evil.example", kBot);
  const std::string ok_room = JoinedRoom("second");  // a later, allowed invite is handled
  const auto members = server_->JoinedMembers(foreign);
  EXPECT_EQ(std::find(members.begin(), members.end(), kBot), members.end());
  (void)ok_room;
}

TEST_F(MatrixE2eTest, FirstStartSkipsTheBacklogAndARestartAnswersWhatCameMeanwhileOnce) {
  // The bot is already in a room with history before parley ever runs.
  const std::string room = server_->CreateRoom(kAlice, {kBot});
  const std::string old = server_->SendText(room, kAlice, "Parley: how are refunds paid?",
                                            std::vector<std::string>{kBot});
  StartDaemon();
  const std::string q1 = server_->SendText(room, kAlice, "Parley: and the frobnicator on Linux?",
                                           std::vector<std::string>{kBot});
  ASSERT_TRUE(WaitAnswered(room, {q1}));
  EXPECT_TRUE(AnswersTo(room, old).empty()) << "the first start answered the backlog";

  ASSERT_EQ(daemon_->Terminate(), 0);
  // While the daemon is down: more than the timeline limit (5) of questions.
  std::vector<std::string> asked;
  for (int i = 0; i < 12; ++i) {
    asked.push_back(server_->SendText(room, kAlice,
                                      "Parley: question " + std::to_string(i) +
                                          ": how do I install the widget on Linux?",
                                      std::vector<std::string>{kBot}));
  }
  StartDaemon("timeline_limit = 5");
  ASSERT_TRUE(WaitAnswered(room, asked, 30'000)) << daemon_->Log();
  EXPECT_GE(server_->RequestCount("messages"), 1);  // the gap was filled from prev_batch
  Settle(room);
  for (const std::string& id : asked) EXPECT_EQ(AnswersTo(room, id).size(), 1u) << id;
  EXPECT_EQ(AnswersTo(room, q1).size(), 1u);
  EXPECT_TRUE(AnswersTo(room, old).empty());
}

TEST_F(MatrixE2eTest, KilledMidBurstThenRestartedAnswersEveryMessageExactlyOnce) {
  StartDaemon();
  const std::string room = JoinedRoom();
  std::vector<std::string> asked;
  for (int i = 0; i < 20; ++i) {
    asked.push_back(server_->SendText(room, kAlice,
                                      "Parley: #" + std::to_string(i) +
                                          " how do I install the frobnicator on Windows?",
                                      std::vector<std::string>{kBot}));
  }
  // Kill once some, not necessarily all, are answered.
  ASSERT_TRUE(server_->WaitFor([&] { return BotMessages(room).size() >= 3; }));
  daemon_->Kill();
  StartDaemon();
  ASSERT_TRUE(WaitAnswered(room, asked, 30'000)) << daemon_->Log();
  Settle(room);
  for (const std::string& id : asked) EXPECT_EQ(AnswersTo(room, id).size(), 1u) << id;
}

TEST_F(MatrixE2eTest, ALostSendResponseIsRetriedWithTheSameTxnIdAndShownOnce) {
  StartDaemon();
  const std::string room = JoinedRoom();
  server_->LoseResponseNext("send", 2);
  const std::string q = server_->SendText(room, kAlice, "Parley: how are refunds paid?",
                                          std::vector<std::string>{kBot});
  ASSERT_TRUE(WaitAnswered(room, {q})) << daemon_->Log();
  Settle(room);
  EXPECT_EQ(AnswersTo(room, q).size(), 1u);
  // The retries reused the txnId: the server saw more sends than it stored events.
  int bot_events = 0;
  for (const MatrixEvent& e : server_->SentBy(kBot)) bot_events += e.type == "m.room.message";
  EXPECT_GT(server_->RequestCount("send"), bot_events);
}

TEST_F(MatrixE2eTest, RateLimitStormsAndSyncFaultsLoseNothingAndDoubleNothing) {
  StartDaemon();
  const std::string room = JoinedRoom();
  const std::string room2 = JoinedRoom("other");
  server_->FailNext("send", 429, 6, 200);
  server_->FailNext("sync", 500, 1);
  server_->HtmlErrorNext("sync", 502, 1);
  server_->MalformedNext("sync", 1);
  server_->DropNext("sync", 1);
  // In room: one conversation (a thread), whose answers must keep its order; in room2: eight.
  std::vector<std::string> asked, asked2;
  for (int i = 0; i < 8; ++i) {
    asked.push_back(server_->SendText(room, kAlice,
                                      "Parley: " + std::to_string(i) + " refunds?",
                                      std::vector<std::string>{kBot},
                                      asked.empty() ? "" : asked.front()));
    asked2.push_back(server_->SendText(room2, kBob,
                                       "Parley: " + std::to_string(i) + " widget on macOS?",
                                       std::vector<std::string>{kBot}));
  }
  ASSERT_TRUE(WaitAnswered(room, asked, 40'000)) << daemon_->Log();
  ASSERT_TRUE(WaitAnswered(room2, asked2, 40'000)) << daemon_->Log();
  for (const std::string& id : asked) EXPECT_EQ(AnswersTo(room, id).size(), 1u);
  for (const std::string& id : asked2) EXPECT_EQ(AnswersTo(room2, id).size(), 1u);
  // The conversation's answers keep its order, through the 429s.
  std::vector<std::string> order;
  for (const MatrixEvent& e : BotMessages(room)) order.push_back(RepliesTo(e));
  std::vector<std::string> expected(asked.begin(), asked.end());
  std::vector<std::string> got;
  for (const std::string& id : order) {
    if (std::find(asked.begin(), asked.end(), id) != asked.end()) got.push_back(id);
  }
  EXPECT_EQ(got, expected);
}

TEST_F(MatrixE2eTest, EncryptedRoomInviteGetsOneNoticeOrIsDeclinedAsConfigured) {
  StartDaemon();  // encrypted_rooms = "notice" (default)
  const std::string enc = server_->CreateRoom(kAlice, {}, /*encrypted=*/true);
  server_->Invite(enc, kAlice, kBot);
  ASSERT_TRUE(server_->WaitFor([&] { return !BotMessages(enc).empty(); }, 15'000))
      << daemon_->Log();
  const std::string body = BotMessages(enc)[0].content.value("body", "");
  EXPECT_NE(body.find("encrypt"), std::string::npos) << body;
  // Messages in it (ciphertext) are not answered, and the notice is posted once.
  server_->SendEvent(enc, kAlice, "m.room.encrypted",
                     json{{"algorithm", "m.megolm.v1.aes-sha2"}, {"ciphertext", "AwgAEn..."}});
  const std::string room = JoinedRoom();
  Settle(room);
  EXPECT_EQ(BotMessages(enc).size(), 1u);

  ASSERT_EQ(daemon_->Terminate(), 0);
  StartDaemon("encrypted_rooms = \"decline\"");
  const std::string enc2 = server_->CreateRoom(kAlice, {}, /*encrypted=*/true);
  server_->Invite(enc2, kAlice, kBot);
  const std::string room2 = JoinedRoom("after");  // handled after the encrypted invite
  Settle(room2);
  const auto members = server_->JoinedMembers(enc2);
  EXPECT_EQ(std::find(members.begin(), members.end(), kBot), members.end());
  EXPECT_TRUE(BotMessages(enc2).empty());
}

TEST_F(MatrixE2eTest, RevokedTokenIsOneClearErrorAndANonZeroExit) {
  server_->InvalidateToken(/*soft_logout=*/false);
  StartDaemon("", "", /*expect_ready=*/false);
  EXPECT_EQ(daemon_->WaitExited(20'000), 1) << daemon_->Log();
  EXPECT_NE(daemon_->Log().find("M_UNKNOWN_TOKEN"), std::string::npos) << daemon_->Log();
  EXPECT_LE(server_->RequestCount("whoami") + server_->RequestCount("sync"), 3);
}

// The escalation desk with the user on the webhook and the agents in a Matrix room: the card is
// posted in the room, agents act in the card's thread, and the relay runs both ways.
TEST_F(MatrixE2eTest, EscalationDeskWithAgentsInAMatrixRoom) {
  const std::string agents = server_->CreateRoom(kBob, {kBot});
  StartDaemon("",
              "[escalation]\nenabled = true\n\n[[escalation.queues]]\nname = \"support\"\n"
              "agents = \"matrix:" +
                  agents + "\"\nsla_minutes = 30\n");
  auto ask = [&](const std::string& text) {
    json body{{"conversation", "cust-1"}, {"user", "carol"}, {"text", text}};
    auto r = daemon_->Post("/v1/messages", body.dump(),
                           {{"Content-Type", "application/json"}}, 20'000);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? json::parse(r->body, nullptr, false) : json();
  };
  const json ack = ask("I want to talk to a human please");
  ASSERT_TRUE(ack.is_object()) << ack.dump();
  EXPECT_TRUE(ack.value("escalated", false)) << ack.dump();

  // The card lands in the agents' room.
  ASSERT_TRUE(server_->WaitFor([&] { return !BotMessages(agents).empty(); }, 15'000))
      << daemon_->Log();
  const MatrixEvent card = BotMessages(agents)[0];
  EXPECT_NE(card.content.value("body", "").find("claim"), std::string::npos)
      << card.content.dump();

  // An agent claims in the card's thread (no mention needed) and replies.
  server_->SendText(agents, kBob, "claim", std::nullopt, card.event_id);
  ASSERT_TRUE(server_->WaitFor(
      [&] {
        for (const MatrixEvent& e : BotMessages(agents)) {
          const std::string b = e.content.value("body", "");
          if (e.event_id != card.event_id && b.find("laim") != std::string::npos) return true;
        }
        return false;
      },
      15'000))
      << daemon_->Log();
  auto ticket_state = [&]() -> std::string {
    auto r = daemon_->Get("/v1/escalations?queue=support");
    if (!r.ok()) return "";
    json j = json::parse(r->body, nullptr, false);
    if (!j.is_object() || !j.contains("escalations") || !j["escalations"].is_array() ||
        j["escalations"].empty()) {
      return "";
    }
    return j["escalations"][0].value("state", "");
  };
  ASSERT_TRUE(server_->WaitFor([&] { return ticket_state() == "claimed"; }, 15'000))
      << daemon_->Log();
  const size_t before = BotMessages(agents).size();
  // The user's next message goes to the card's thread.
  ask("my order number is 4711");
  ASSERT_TRUE(server_->WaitFor(
      [&] {
        for (const MatrixEvent& e : BotMessages(agents)) {
          if (e.content.value("body", "").find("4711") != std::string::npos) {
            const json& rel = e.content.value("m.relates_to", json::object());
            return rel.is_object() && rel.value("event_id", "") == card.event_id;
          }
        }
        return false;
      },
      15'000))
      << daemon_->Log();
  EXPECT_GT(BotMessages(agents).size(), before);
  // The agent's reply in the thread reaches the user, labelled with the agent's name.
  server_->SetDisplayName(kBob, "Bob Agent");
  server_->SendText(agents, kBob, "Found it, a refund is on its way", std::nullopt,
                    card.event_id);
  auto delivered_with = [&](const std::string& part) {
    return callback_.WaitUntil(
        [&](const std::vector<ReceivedCallback>& all) {
          for (const ReceivedCallback& r : all) {
            json j = json::parse(r.body, nullptr, false);
            if (j.is_object() && j.value("conversation", "") == "cust-1" &&
                j.value("text", "").find(part) != std::string::npos) {
              return true;
            }
          }
          return false;
        },
        15'000);
  };
  ASSERT_TRUE(delivered_with("a refund is on its way")) << daemon_->Log();
  EXPECT_TRUE(delivered_with("Bob Agent")) << daemon_->Log();
  // An internal note stays in the thread; resolve closes the ticket.
  server_->SendText(agents, kBob, "note customer is a VIP", std::nullopt, card.event_id);
  server_->SendText(agents, kBob, "resolve", std::nullopt, card.event_id);
  ASSERT_TRUE(server_->WaitFor([&] { return ticket_state() == "resolved"; }, 15'000))
      << daemon_->Log();
  for (const ReceivedCallback& r : callback_.Delivered()) {
    EXPECT_EQ(r.body.find("VIP"), std::string::npos) << "an internal note reached the user";
  }
}

}  // namespace
}  // namespace parley::testing
