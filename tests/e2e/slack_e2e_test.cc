// End-to-end: the real `parley serve` binary connected to the Slack test server (Socket Mode over
// ws://127.0.0.1, Web API over http://127.0.0.1).

#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/fakes/slack/slack_server.h"
#include "tests/support/daemon_process.h"
#include "tests/support/sample_kb.h"
#include "tests/support/temp_dir.h"

namespace parley::testing {
namespace {

using nlohmann::json;

SlackServerOptions FakeOptions() {
  SlackServerOptions o;
  o.ack_deadline_ms = 1000;
  o.refresh_close_delay_ms = 300;
  o.echo_bot_posts = true;  // as Slack does with message.channels / message.im subscribed
  o.channels = {"C0GENERAL", "C0OTHER", "D0DM"};
  return o;
}

// A Slack ts; distinct per n.
std::string Ts(int n) { return "1700000" + std::to_string(100 + n) + ".000100"; }

json Mention(const std::string& channel, const std::string& ts, const std::string& text,
             const std::string& thread_ts = "", const std::string& user = "U0ALICE") {
  json e{{"type", "app_mention"}, {"channel", channel},      {"user", user},
         {"text", "<@U0BOT> " + text}, {"ts", ts},          {"event_ts", ts},
         {"team", "T0TEAM"}};
  if (!thread_ts.empty()) e["thread_ts"] = thread_ts;
  return e;
}

json Message(const std::string& channel, const std::string& channel_type, const std::string& ts,
             const std::string& text, const std::string& thread_ts = "",
             const std::string& user = "U0ALICE") {
  json e{{"type", "message"},  {"channel", channel}, {"channel_type", channel_type},
         {"user", user},       {"text", text},       {"ts", ts},
         {"event_ts", ts},     {"team", "T0TEAM"}};
  if (!thread_ts.empty()) e["thread_ts"] = thread_ts;
  return e;
}

class SlackE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    WriteSampleKnowledge(dir_.Sub("kb"));
  }
  void TearDown() override {
    if (HasFailure() && daemon_) std::cerr << "---- daemon log ----\n" << daemon_->Log();
  }

  std::string ConfigText(const std::string& slack_extra) const {
    return "[server]\nlisten = \"127.0.0.1:0\"\nport_file = \"" + dir_.Sub("port.json") +
           "\"\n\n[store]\npath = \"" + dir_.Sub("store") +
           "\"\n\n[[knowledge.sources]]\npath = \"" + dir_.Sub("kb") +
           "\"\nurl_base = \"https://docs.example.com/\"\n\n"
           "[policy]\nuser_rate_per_minute = 6000\nuser_burst = 500\n"
           "conversation_rate_per_minute = 6000\nconversation_burst = 500\n\n"
           "[webhook]\nenabled = false\n\n"
           "[slack]\nenabled = true\napp_token = \"${SLACK_APP_TOKEN}\"\n"
           "bot_token = \"${SLACK_BOT_TOKEN}\"\napi_base_url = \"" +
           slack_.ApiBaseUrl() +
           "\"\nconnections = 2\nping_interval_ms = 1000\npong_timeout_ms = 1000\n"
           "silence_timeout_ms = 5000\npost_rate_per_channel = 0\n" +
           slack_extra + "\n[log]\nlevel = \"debug\"\n";
  }

  // Starts (or restarts) the daemon on the same store.
  void StartDaemon(const std::string& slack_extra = "",
                   const std::string& bot_token = "xoxb-test-bot", bool expect_ready = true) {
    WriteFile(dir_.Sub("parley.toml"), ConfigText(slack_extra));
    daemon_ = std::make_unique<DaemonProcess>(
        dir_.Sub("parley.toml"), dir_.Sub("port.json"), dir_.Sub("log.txt"),
        std::map<std::string, std::string>{{"SLACK_APP_TOKEN", slack_.options().app_token},
                                           {"SLACK_BOT_TOKEN", bot_token}});
    const bool ready = daemon_->Start();
    if (expect_ready) {
      ASSERT_TRUE(ready) << daemon_->Log();
    }
  }

  // chat.postMessage calls answered ok, in order.
  std::vector<SlackPostedMessage> Posted() const { return slack_.Posted(); }

  std::vector<SlackPostedMessage> PostedInThread(const std::string& thread_ts) const {
    std::vector<SlackPostedMessage> out;
    for (const auto& m : slack_.Posted()) {
      if (m.thread_ts == thread_ts) out.push_back(m);
    }
    return out;
  }

  std::vector<SlackPostedMessage> ByMethod(const std::string& method) const {
    std::vector<SlackPostedMessage> out;
    for (const auto& m : slack_.Messages()) {
      if (m.method == method) out.push_back(m);
    }
    return out;
  }

  bool WaitPosted(size_t n, int timeout_ms = 15'000) const {
    return slack_.WaitForPosted(n, timeout_ms);
  }

  // Every event delivered so far has been acknowledged (in one of its deliveries: an envelope sent
  // to a socket that died is redelivered in a new one), and so has every other envelope: the
  // events the daemon ignores have been decided on (that happens right after the ack).
  bool WaitAllAcked(int timeout_ms = 10'000) const {
    return slack_.WaitFor(
        [&] {
          std::set<std::string> acked_envelopes, acked_events;
          for (const auto& a : slack_.Acks()) acked_envelopes.insert(a.envelope_id);
          const auto deliveries = slack_.Deliveries();
          for (const auto& d : deliveries) {
            if (acked_envelopes.count(d.envelope_id) && !d.event_id.empty()) {
              acked_events.insert(d.event_id);
            }
          }
          for (const auto& d : deliveries) {
            const bool settled = d.event_id.empty() ? acked_envelopes.count(d.envelope_id) > 0
                                                    : acked_events.count(d.event_id) > 0;
            if (!settled) return false;
          }
          return true;
        },
        timeout_ms);
  }

  bool WaitEventAcked(const std::string& event_id, int timeout_ms = 10'000) const {
    return slack_.WaitFor(
        [&] {
          std::set<std::string> acked;
          for (const auto& a : slack_.Acks()) acked.insert(a.envelope_id);
          for (const auto& d : slack_.Deliveries()) {
            if (d.event_id == event_id && acked.count(d.envelope_id)) return true;
          }
          return false;
        },
        timeout_ms);
  }

  // Sends a mention that must be answered and waits for its reply: everything sent before it on
  // other conversations has been decided on by then (used to show that nothing else was posted).
  void Sentinel(int n) {
    ASSERT_TRUE(WaitAllAcked());
    const std::string ts = Ts(9000 + n);
    slack_.SendEvent(Mention("C0OTHER", ts, "how are refunds paid?"));
    ASSERT_TRUE(slack_.WaitFor([&] { return !PostedInThread(ts).empty(); }, 15'000))
        << "sentinel not answered";
  }

  std::string Metrics() {
    auto r = daemon_->Get("/metrics");
    return r.ok() ? r->body : "";
  }

  static std::string BlocksText(const json& blocks) { return blocks.dump(); }

  TempDir dir_;
  SlackServer slack_{FakeOptions()};
  std::unique_ptr<DaemonProcess> daemon_;
};

TEST_F(SlackE2eTest, MentionIsAnsweredInItsThreadWithCitationsAndAWorkingSignal) {
  StartDaemon("working_delay_ms = 0\n");
  ASSERT_TRUE(slack_.WaitForOpenConnections(2, 10'000));
  const std::string ts = Ts(1);
  slack_.SendEvent(Mention("C0GENERAL", ts, "how do I install the frobnicator on linux?"));
  ASSERT_TRUE(WaitPosted(1));
  SlackPostedMessage reply = Posted()[0];
  EXPECT_EQ(reply.channel, "C0GENERAL");
  EXPECT_EQ(reply.thread_ts, ts);
  EXPECT_NE(reply.text.find("apt install frobnicator"), std::string::npos) << reply.text;
  const std::string blocks = BlocksText(reply.blocks);
  EXPECT_NE(blocks.find("\"type\":\"context\""), std::string::npos) << blocks;
  EXPECT_NE(blocks.find("https://docs.example.com/frobnicator.md"), std::string::npos) << blocks;
  EXPECT_NE(blocks.find("parley_feedback_helpful"), std::string::npos) << blocks;
  // The working signal: eyes added on the question, then removed once the answer landed.
  ASSERT_TRUE(slack_.WaitFor(
      [&] {
        auto r = slack_.Reactions();
        return r.size() >= 2;
      },
      10'000));
  auto reactions = slack_.Reactions();
  EXPECT_TRUE(reactions[0].added);
  EXPECT_EQ(reactions[0].timestamp, ts);
  EXPECT_EQ(reactions[0].name, "eyes");
  EXPECT_FALSE(reactions[1].added);
  EXPECT_EQ(reactions[1].timestamp, ts);
  // The bot's own post came back as a message event (echo) and was not answered.
  Sentinel(1);
  EXPECT_EQ(Posted().size(), 2u);
}

TEST_F(SlackE2eTest, DirectMessageIsAnsweredInTheDm) {
  StartDaemon("working_signal = \"none\"\n");
  slack_.SendEvent(Message("D0DM", "im", Ts(2), "how are refunds paid?"));
  ASSERT_TRUE(WaitPosted(1));
  SlackPostedMessage reply = Posted()[0];
  EXPECT_EQ(reply.channel, "D0DM");
  EXPECT_EQ(reply.thread_ts, "");
  EXPECT_NE(reply.text.find("fourteen days"), std::string::npos) << reply.text;
  EXPECT_TRUE(slack_.Reactions().empty());
  // SIGTERM: the sockets close and the daemon exits 0.
  EXPECT_EQ(daemon_->Terminate(), 0);
  EXPECT_TRUE(slack_.WaitForOpenConnections(0, 5'000));
}

TEST_F(SlackE2eTest, ThreadFollowUpsAreAnsweredAndUnaddressedChannelMessagesAreNot) {
  StartDaemon("working_delay_ms = 60000\n");  // answers quicker than this get no reaction
  const std::string root = Ts(3);
  slack_.SendEvent(Mention("C0GENERAL", root, "how do I install the frobnicator on linux?"));
  ASSERT_TRUE(WaitPosted(1));
  // A follow-up in the thread, without a mention.
  slack_.SendEvent(Message("C0GENERAL", "channel", Ts(4), "and on windows?", root));
  ASSERT_TRUE(slack_.WaitFor([&] { return PostedInThread(root).size() == 2; }, 15'000));
  EXPECT_NE(PostedInThread(root)[1].text.find("MSI"), std::string::npos)
      << PostedInThread(root)[1].text;
  // A channel message that does not mention the bot, outside its threads: not for the bot.
  slack_.SendEvent(Message("C0GENERAL", "channel", Ts(5), "how are refunds paid?"));
  Sentinel(3);
  EXPECT_TRUE(PostedInThread(Ts(5)).empty());
  EXPECT_TRUE(slack_.Reactions().empty());
}

TEST_F(SlackE2eTest, OwnAndOtherBotsMessagesEditsAndJoinsAreIgnored) {
  StartDaemon();
  json other_bot = Mention("C0GENERAL", Ts(6), "how are refunds paid?");
  other_bot["bot_id"] = "B0OTHER";
  other_bot["subtype"] = "bot_message";
  slack_.SendEvent(other_bot);
  json own = Message("C0GENERAL", "channel", Ts(7), "<@U0BOT> how are refunds paid?", "", "U0BOT");
  own["bot_id"] = "B0BOT";
  slack_.SendEvent(own);
  json edit = Message("C0GENERAL", "channel", Ts(8), "<@U0BOT> how are refunds paid?");
  edit["subtype"] = "message_changed";
  slack_.SendEvent(edit);
  json join = Message("C0GENERAL", "channel", Ts(9), "<@U0ALICE> has joined the channel");
  join["subtype"] = "channel_join";
  slack_.SendEvent(join);
  Sentinel(4);
  EXPECT_EQ(Posted().size(), 1u);
}

TEST_F(SlackE2eTest, RedeliveredAndDoublyDeliveredEventsAreAnsweredOnce) {
  StartDaemon();
  ASSERT_TRUE(slack_.WaitForOpenConnections(2, 10'000));
  // One channel mention arrives twice: as app_mention and as message (different event ids).
  const std::string ts = Ts(10);
  slack_.SendEvent(Mention("C0GENERAL", ts, "how are refunds paid?"));
  slack_.SendEvent(Message("C0GENERAL", "channel", ts, "<@U0BOT> how are refunds paid?"));
  // Slack's redelivery: the same event_id again with retry_attempt 1 (a new envelope id).
  const std::string ts2 = Ts(11);
  json event = Mention("C0GENERAL", ts2, "how do I install the widget on macos?");
  for (int attempt = 0; attempt < 2; ++attempt) {
    json envelope{{"envelope_id", "env-redeliver-" + std::to_string(attempt)},
                  {"type", "events_api"},
                  {"accepts_response_payload", false},
                  {"retry_attempt", attempt},
                  {"retry_reason", attempt == 0 ? "" : "timeout"},
                  {"payload",
                   {{"type", "event_callback"},
                    {"team_id", "T0TEAM"},
                    {"api_app_id", "A1"},
                    {"event_id", "Ev0REDELIVERED"},
                    {"event_time", 1700000000},
                    {"event", event}}}};
    ASSERT_TRUE(slack_.SendRaw(envelope.dump()));
  }
  ASSERT_TRUE(slack_.WaitFor([&] { return !PostedInThread(ts2).empty(); }, 15'000));
  Sentinel(5);
  EXPECT_EQ(PostedInThread(ts).size(), 1u);
  EXPECT_EQ(PostedInThread(ts2).size(), 1u);
}

TEST_F(SlackE2eTest, RefreshAndDroppedSocketsUnderTrafficLoseNothing) {
  StartDaemon("working_signal = \"none\"\n");
  ASSERT_TRUE(slack_.WaitForOpenConnections(2, 10'000));
  const int kEvents = 60;
  for (int i = 0; i < kEvents; ++i) {
    if (i == 20) slack_.Disconnect("refresh_requested");
    if (i == 40) slack_.DropAll();
    slack_.SendEvent(Mention("C0GENERAL", Ts(100 + i), "how are refunds paid?"));
    if (i % 10 == 9) {
      // Let a few be answered in between, so the sockets change under live traffic.
      slack_.WaitFor([&] { return Posted().size() >= static_cast<size_t>(i - 15); }, 5'000);
    }
  }
  ASSERT_TRUE(WaitPosted(kEvents, 30'000)) << "posted " << Posted().size();
  Sentinel(6);
  std::map<std::string, int> per_thread;
  for (const auto& m : Posted()) per_thread[m.thread_ts]++;
  for (int i = 0; i < kEvents; ++i) {
    EXPECT_EQ(per_thread[Ts(100 + i)], 1) << "event " << i;
  }
  EXPECT_EQ(Posted().size(), static_cast<size_t>(kEvents + 1));
}

TEST_F(SlackE2eTest, RateLimitStormDeliversEveryReplyOnceAndInOrder) {
  StartDaemon("working_signal = \"none\"\n");
  slack_.RateLimitNext("chat.postMessage", 4, 1);
  const std::string root = Ts(200);
  const std::vector<std::pair<std::string, std::string>> questions = {
      {"how are refunds paid?", "fourteen days"},
      {"how do I install the widget on macos?", "Applications"},
      {"how do I install the frobnicator on windows?", "MSI"},
      {"how do I install the frobnicator on linux?", "apt install"},
  };
  // Slack delivers over several sockets at once, so the order of a conversation is the order the
  // daemon took the messages in: send each once the previous one was acknowledged.
  for (size_t i = 0; i < questions.size(); ++i) {
    const std::string event_id =
        i == 0 ? slack_.SendEvent(Mention("C0GENERAL", root, questions[i].first))
               : slack_.SendEvent(Mention("C0GENERAL", Ts(200 + static_cast<int>(i)),
                                          questions[i].first, root));
    ASSERT_TRUE(WaitEventAcked(event_id));
  }
  ASSERT_TRUE(slack_.WaitFor([&] { return PostedInThread(root).size() >= questions.size(); },
                             30'000))
      << PostedInThread(root).size();
  EXPECT_GE(slack_.Counters().ratelimited_served, 4u);
  Sentinel(7);
  auto replies = PostedInThread(root);
  ASSERT_EQ(replies.size(), questions.size());
  for (size_t i = 0; i < questions.size(); ++i) {
    EXPECT_NE(replies[i].text.find(questions[i].second), std::string::npos)
        << "reply " << i << ": " << replies[i].text;
  }
}

TEST_F(SlackE2eTest, MalformedFramesAreCountedAndTheConnectionSurvives) {
  StartDaemon();
  ASSERT_TRUE(slack_.WaitForOpenConnections(2, 10'000));
  const auto opened = slack_.Counters().connections_opened;
  ASSERT_TRUE(slack_.SendRaw("{not json"));
  ASSERT_TRUE(slack_.SendRaw("[1,2,3]"));
  ASSERT_TRUE(slack_.SendRaw(R"({"type":"events_api","payload":{}})"));  // no envelope_id
  slack_.SendEvent(Mention("C0GENERAL", Ts(300), "how are refunds paid?"));
  ASSERT_TRUE(WaitPosted(1));
  EXPECT_EQ(slack_.Counters().connections_opened, opened);  // no socket was replaced
  const std::string metrics = Metrics();
  EXPECT_NE(metrics.find("parley_slack_malformed_frames_total 3"), std::string::npos) << metrics;
}

TEST_F(SlackE2eTest, KilledWithRepliesPendingDeliversEachExactlyOnceAfterRestart) {
  slack_.FailNext("chat.postMessage", 1'000'000, 503);
  StartDaemon("working_signal = \"none\"\n");
  const int kQuestions = 3;
  for (int i = 0; i < kQuestions; ++i) {
    slack_.SendEvent(Mention("C0GENERAL", Ts(400 + i), "how are refunds paid?"));
  }
  // Every reply has been tried (and failed) at least once: they are owed, in the outbox.
  ASSERT_TRUE(slack_.WaitFor([&] { return slack_.Counters().errors_served >= kQuestions; },
                             15'000));
  daemon_->Kill();
  slack_.FailNext("chat.postMessage", 0);
  StartDaemon("working_signal = \"none\"\n");
  ASSERT_TRUE(WaitPosted(kQuestions));
  Sentinel(8);
  std::map<std::string, int> per_thread;
  for (const auto& m : Posted()) per_thread[m.thread_ts]++;
  for (int i = 0; i < kQuestions; ++i) EXPECT_EQ(per_thread[Ts(400 + i)], 1) << i;
  EXPECT_EQ(Posted().size(), static_cast<size_t>(kQuestions + 1));
}

TEST_F(SlackE2eTest, KilledBeforeRepliesWereConfirmedNeverPostsAConfirmedReplyTwice) {
  StartDaemon("working_signal = \"none\"\n");
  for (int i = 0; i < 5; ++i) {
    slack_.SendEvent(Mention("C0GENERAL", Ts(450 + i), "how are refunds paid?"));
  }
  ASSERT_TRUE(WaitPosted(5));
  daemon_->Kill();
  StartDaemon("working_signal = \"none\"\n");
  Sentinel(9);
  EXPECT_EQ(Posted().size(), 6u);
}

TEST_F(SlackE2eTest, SigtermUnderTrafficThenRestartAnswersEveryEventOnce) {
  StartDaemon("working_signal = \"none\"\n");
  ASSERT_TRUE(slack_.WaitForOpenConnections(2, 10'000));
  const int kEvents = 30;
  for (int i = 0; i < kEvents / 2; ++i) {
    slack_.SendEvent(Mention("C0GENERAL", Ts(700 + i), "how are refunds paid?"));
  }
  // Stop while events are arriving: what the daemon acknowledged it answers (or keeps in its
  // store); what it did not acknowledge, Slack redelivers to the next run.
  std::thread stopper([&] { EXPECT_EQ(daemon_->Terminate(), 0); });
  for (int i = kEvents / 2; i < kEvents; ++i) {
    slack_.SendEvent(Mention("C0GENERAL", Ts(700 + i), "how are refunds paid?"));
  }
  stopper.join();
  StartDaemon("working_signal = \"none\"\n");
  ASSERT_TRUE(slack_.WaitFor(
      [&] {
        std::set<std::string> answered;
        for (const auto& m : Posted()) answered.insert(m.thread_ts);
        for (int i = 0; i < kEvents; ++i) {
          if (!answered.count(Ts(700 + i))) return false;
        }
        return true;
      },
      30'000));
  Sentinel(10);
  std::map<std::string, int> per_thread;
  for (const auto& m : Posted()) per_thread[m.thread_ts]++;
  for (int i = 0; i < kEvents; ++i) EXPECT_EQ(per_thread[Ts(700 + i)], 1) << i;
  EXPECT_EQ(Posted().size(), static_cast<size_t>(kEvents + 1));
}

TEST_F(SlackE2eTest, BadBotTokenIsOneClearErrorAndANonZeroExit) {
  StartDaemon("", "xoxb-wrong", /*expect_ready=*/false);
  EXPECT_EQ(daemon_->WaitExited(15'000), 1) << daemon_->Log();
  const std::string log = daemon_->Log();
  EXPECT_NE(log.find("slack.bot_token was refused by auth.test: invalid_auth"), std::string::npos)
      << log;
  EXPECT_EQ(log.find("xoxb-wrong"), std::string::npos) << "the token must never be logged";
  EXPECT_LE(slack_.Counters().api_calls, 2u);  // no retry loop
  EXPECT_EQ(slack_.Counters().connections_opened, 0u);
}

TEST_F(SlackE2eTest, SlashCommandsAnswerPrivatelyAndFeedbackIsStored) {
  StartDaemon();
  // help: the ack carries the answer.
  const std::string help_env = slack_.SendSlashCommand(
      {{"command", "/parley"}, {"text", "help"}, {"user_id", "U0ALICE"},
       {"channel_id", "C0GENERAL"}, {"team_id", "T0TEAM"},
       {"response_url", slack_.NewResponseUrl()}, {"trigger_id", "t1"}});
  // ask: acked at once, the answer goes to the response_url.
  const std::string url = slack_.NewResponseUrl();
  slack_.SendSlashCommand({{"command", "/parley"}, {"text", "ask how are refunds paid?"},
                           {"user_id", "U0ALICE"}, {"channel_id", "C0GENERAL"},
                           {"team_id", "T0TEAM"}, {"response_url", url}, {"trigger_id", "t2"}});
  ASSERT_TRUE(slack_.WaitFor([&] { return !ByMethod("response_url").empty(); }, 15'000));
  SlackPostedMessage answer = ByMethod("response_url")[0];
  EXPECT_NE(url.find(answer.ts), std::string::npos);
  EXPECT_NE(answer.text.find("fourteen days"), std::string::npos) << answer.text;
  EXPECT_EQ(answer.args.value("response_type", ""), "ephemeral");
  bool help_acked = false;
  for (const auto& a : slack_.Acks()) {
    if (a.envelope_id == help_env) {
      help_acked = true;
      EXPECT_NE(a.payload.dump().find("/parley ask"), std::string::npos) << a.payload.dump();
    }
  }
  EXPECT_TRUE(help_acked);
  EXPECT_TRUE(Posted().empty());  // nothing public

  // Feedback on a channel answer.
  slack_.SendEvent(Mention("C0GENERAL", Ts(500), "how are refunds paid?"));
  ASSERT_TRUE(WaitPosted(1));
  const json blocks = Posted()[0].blocks;
  std::string message_id;
  for (const auto& b : blocks) {
    if (b.value("type", "") != "actions") continue;
    for (const auto& e : b["elements"]) {
      if (e.value("action_id", "") == "parley_feedback_helpful") message_id = e.value("value", "");
    }
  }
  ASSERT_FALSE(message_id.empty()) << blocks.dump();
  slack_.SendBlockAction({{"type", "block_actions"},
                          {"user", {{"id", "U0ALICE"}}},
                          {"team", {{"id", "T0TEAM"}}},
                          {"channel", {{"id", "C0GENERAL"}}},
                          {"message", {{"ts", Posted()[0].ts}}},
                          {"actions",
                           {{{"action_id", "parley_feedback_helpful"},
                             {"value", message_id},
                             {"type", "button"}}}}});
  ASSERT_TRUE(slack_.WaitFor([&] { return !ByMethod("chat.postEphemeral").empty(); }, 10'000));
  EXPECT_EQ(ByMethod("chat.postEphemeral")[0].user, "U0ALICE");
  EXPECT_NE(Metrics().find("parley_feedback_total{platform=\"slack\",value=\"helpful\"} 1"),
            std::string::npos)
      << Metrics();
}

TEST_F(SlackE2eTest, AccessPolicyRefusesPolitelyOnce) {
  StartDaemon("channel_allowlist = [\"C0GENERAL\"]\ndm_policy = \"disabled\"\n");
  slack_.SendEvent(Mention("C0OTHER", Ts(600), "how are refunds paid?"));
  slack_.SendEvent(Mention("C0OTHER", Ts(601), "how are refunds paid, really?"));
  slack_.SendEvent(Message("D0DM", "im", Ts(602), "how are refunds paid?"));
  ASSERT_TRUE(slack_.WaitFor([&] { return ByMethod("chat.postEphemeral").size() >= 2; }, 10'000));
  slack_.SendEvent(Mention("C0GENERAL", Ts(603), "how are refunds paid?"));
  ASSERT_TRUE(WaitPosted(1));
  ASSERT_TRUE(WaitAllAcked());
  auto notes = ByMethod("chat.postEphemeral");
  ASSERT_EQ(notes.size(), 2u);  // one per channel and user, not one per message
  std::set<std::string> channels{notes[0].channel, notes[1].channel};
  EXPECT_EQ(channels, (std::set<std::string>{"C0OTHER", "D0DM"}));
  EXPECT_EQ(Posted().size(), 1u);
  EXPECT_EQ(Posted()[0].thread_ts, Ts(603));
}

}  // namespace
}  // namespace parley::testing
