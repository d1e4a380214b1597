// SlackAdapter as a side of the escalation desk (SetDesk): agents' channels, card threads without
// mentions, buttons from OutboundMessage::actions, users' names, `/parley human`. The adapter
// against the Slack test server (Socket Mode + Web API on 127.0.0.1) and a recording sink.

#include <gtest/gtest.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <future>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "adapters/slack/codec.h"
#include "adapters/slack/slack_adapter.h"
#include "core/clock.h"
#include "core/metrics.h"
#include "net/http.h"
#include "store/committer.h"
#include "store/kv_store.h"
#include "store/records.h"
#include "tests/fakes/slack/slack_server.h"
#include "tests/support/io_threads.h"
#include "tests/support/recording_inbound_sink.h"
#include "tests/support/temp_dir.h"

namespace parley::slack {
namespace {

using nlohmann::json;
using parley::testing::RecordingInboundSink;
using parley::testing::SlackServer;
using parley::testing::SlackServerOptions;
using parley::testing::WaitFor;

constexpr char kAgents[] = "C0AGENTS";
constexpr char kGeneral[] = "C0GENERAL";
constexpr char kOther[] = "C0OTHER";

class FakeControl final : public ConversationControl {
 public:
  void Forget(const ConversationKey&, ForgetCallback done) override { done(size_t{0}); }
  void ForgetUser(const std::string&, const std::string&, ForgetCallback done) override {
    done(size_t{0});
  }
};

SlackServerOptions Options() {
  SlackServerOptions o;
  o.channels = {kAgents, kGeneral, kOther, "D0DM"};
  o.users = {{"U0BOB", "Bob"}, {"U0ALICE", "Alice"}};
  return o;
}

class SlackDeskTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto kv = store::OpenLevelDb(dir_.Sub("db"));
    ASSERT_TRUE(kv.ok()) << kv.status().ToString();
    kv_ = std::move(*kv);
    committer_ = std::make_unique<store::Committer>(*kv_);
    for (int i = 0; i < 2; ++i) threads_.emplace_back([this] { io_.run(); });
    http_ = net::MakeCurlHttpClient(io_);
    config_.enabled = true;
    config_.api_base_url = server_.ApiBaseUrl();
    config_.app_token = Secret(server_.options().app_token);
    config_.bot_token = Secret(server_.options().bot_token);
    config_.working_signal = config::SlackWorkingSignal::kNone;
    config_.connections = 1;
    config_.channel_allowlist = {kGeneral};
  }
  void TearDown() override {
    if (adapter_) {
      std::promise<void> stopped;
      adapter_->Stop([&stopped] { stopped.set_value(); });
      stopped.get_future().wait();
      EXPECT_TRUE(WaitFor([&] { return adapter_.use_count() == 1; }));
      adapter_.reset();
    }
    http_.reset();
    work_.reset();
    for (auto& t : threads_) t.join();
    committer_.reset();
  }

  void Start(bool desk = true) {
    adapter_ = std::make_shared<SlackAdapter>(io_, config_, http_, *kv_, *committer_, control_,
                                              SystemClock::Instance(), metrics_, [](Status) {});
    if (desk) adapter_->SetDesk({true, {kAgents}});
    ASSERT_TRUE(adapter_->Start(sink_).ok());
    ASSERT_TRUE(server_.WaitForOpenConnections(1, 10'000));
    ASSERT_TRUE(WaitFor([&] { return adapter_->ReadySockets() == 1; }));
  }

  std::string Ts() { return "1700000" + std::to_string(100 + ++n_) + ".000100"; }
  std::string Say(const std::string& channel, const std::string& user, const std::string& text,
                  const std::string& thread = "") {
    const std::string ts = Ts();
    json e{{"type", "message"},
           {"channel", channel},
           {"channel_type", channel[0] == 'D' ? "im" : "channel"},
           {"user", user},
           {"text", text},
           {"ts", ts},
           {"team", "T0TEAM"}};
    if (!thread.empty()) e["thread_ts"] = thread;
    server_.SendEvent(e);
    return ts;
  }
  // Posts a desk card (a root message in the agents' channel) and returns its ts.
  std::string PostCard(const std::string& id) {
    OutboundMessage card;
    card.id = id;
    card.conversation = {"slack", kAgents, ""};
    card.text = "*New escalation #1*";
    card.actions = {{"claim", "Claim", "claim 1", "primary"}};
    std::promise<Status> queued;
    adapter_->Send(card, [&queued](Status s) { queued.set_value(s); });
    EXPECT_TRUE(queued.get_future().get().ok());
    std::string ts;
    EXPECT_TRUE(server_.WaitFor(
        [&] {
          for (const auto& m : server_.Posted()) {
            if (m.channel == kAgents && m.text.find("escalation #1") != std::string::npos) {
              ts = m.ts;
            }
          }
          return !ts.empty();
        },
        10'000));
    // Slack's answer has reached the adapter too (the delivery is complete): it knows the ts.
    EXPECT_TRUE(WaitFor([&] {
      auto n = store::Outbox(*kv_).Count(kPlatform);
      return n.ok() && *n == 0;
    }));
    return ts;
  }
  // Waits until every envelope sent so far was acknowledged (decided on: ignored ones too).
  bool AllAcked() {
    return server_.WaitFor([&] { return server_.Acks().size() >= server_.Deliveries().size(); },
                           10'000);
  }
  std::vector<parley::testing::SlackPostedMessage> Calls(const std::string& method) const {
    std::vector<parley::testing::SlackPostedMessage> out;
    for (const auto& m : server_.Messages()) {
      if (m.method == method) out.push_back(m);
    }
    return out;
  }

  SlackServer server_{Options()};
  boost::asio::io_context io_;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work_{
      io_.get_executor()};
  std::vector<std::thread> threads_;
  parley::testing::TempDir dir_;
  std::unique_ptr<store::KvStore> kv_;
  std::unique_ptr<store::Committer> committer_;
  std::shared_ptr<net::HttpClient> http_;
  FakeControl control_;
  MetricsRegistry metrics_;
  config::SlackConfig config_;
  RecordingInboundSink sink_;
  std::shared_ptr<SlackAdapter> adapter_;
  int n_ = 0;
};

TEST_F(SlackDeskTest, CardThreadRepliesNeedNoMentionAndAgentsChannelsSkipTheAllowlist) {
  config_.thread_followups = false;  // the agents' channel's card threads count anyway
  Start();
  const std::string card = PostCard("esc-1-x-card");
  ASSERT_FALSE(card.empty());
  Say(kAgents, "U0BOB", "claim", card);           // in the card's thread, no mention
  Say(kAgents, "U0BOB", "just chatting");         // main line, no mention: not for the bot
  Say(kOther, "U0BOB", "claim", "1700000000.1");  // another channel: not addressed
  ASSERT_TRUE(WaitFor([&] { return sink_.count() >= 1; }));
  ASSERT_TRUE(AllAcked());
  Say(kGeneral, "U0ALICE", "<@U0BOT> marker");  // allowlisted: after the others
  ASSERT_TRUE(WaitFor([&] { return sink_.count() >= 2; }));
  ASSERT_EQ(sink_.count(), 2u);
  InboundMessage m = sink_.message(0);
  EXPECT_EQ(m.channel, kAgents);
  EXPECT_EQ(m.thread, card);
  EXPECT_EQ(m.text, "claim");
  EXPECT_EQ(m.user_name, "Bob");
  EXPECT_EQ(sink_.message(1).text, "marker");
  EXPECT_EQ(sink_.message(1).user_name, "Alice");
  // A mention on the agents' main line is for the bot although the channel is not allowlisted;
  // the same in a channel that is neither: refused.
  Say(kAgents, "U0BOB", "<@U0BOT> claim 1");
  ASSERT_TRUE(WaitFor([&] { return sink_.count() >= 3; }));
  Say(kOther, "U0BOB", "<@U0BOT> claim 1");
  ASSERT_TRUE(server_.WaitFor([&] { return !Calls("chat.postEphemeral").empty(); }, 10'000));
  EXPECT_EQ(sink_.count(), 3u);
}

TEST_F(SlackDeskTest, CardThreadKnownFromParentUserIdAfterARestartWithoutTheMark) {
  Start();
  // Not posted by this run: the event's parent_user_id says the bot started the thread.
  json e{{"type", "message"},         {"channel", kAgents},
         {"channel_type", "channel"}, {"user", "U0BOB"},
         {"text", "resolve"},         {"ts", Ts()},
         {"team", "T0TEAM"},          {"thread_ts", "1699999999.000001"},
         {"parent_user_id", "U0BOT"}};
  server_.SendEvent(e);
  e["ts"] = Ts();
  // Another thread, started by a person: needs a mention. (Not the same thread: once its first
  // message was taken, the bot's thread is remembered.)
  e["thread_ts"] = "1699999999.000002";
  e["parent_user_id"] = "U0SOMEONE";
  server_.SendEvent(e);
  ASSERT_TRUE(WaitFor([&] { return sink_.count() >= 1; }));
  ASSERT_TRUE(AllAcked());
  Say(kGeneral, "U0ALICE", "<@U0BOT> marker");
  ASSERT_TRUE(WaitFor([&] { return sink_.count() >= 2; }));
  EXPECT_EQ(sink_.count(), 2u);
  EXPECT_EQ(sink_.message(0).text, "resolve");
  EXPECT_EQ(sink_.message(0).thread, "1699999999.000001");
}

TEST_F(SlackDeskTest, NamesAreLookedUpOnceAndAChannelKeepsItsOrderMeanwhile) {
  Start();
  Say(kGeneral, "U0ALICE", "<@U0BOT> one");
  ASSERT_TRUE(WaitFor([&] { return sink_.count() == 1; }));
  // Bob's name takes a while; Alice's (cached) message after his must not overtake it.
  server_.DelayNext("users.info", 1, 400);
  Say(kGeneral, "U0BOB", "<@U0BOT> two");
  Say(kGeneral, "U0ALICE", "<@U0BOT> three");
  Say(kGeneral, "U0BOB", "<@U0BOT> four");
  ASSERT_TRUE(WaitFor([&] { return sink_.count() == 4; }));
  EXPECT_EQ(sink_.message(1).text, "two");
  EXPECT_EQ(sink_.message(1).user_name, "Bob");
  EXPECT_EQ(sink_.message(2).text, "three");
  EXPECT_EQ(sink_.message(2).user_name, "Alice");
  EXPECT_EQ(sink_.message(3).text, "four");
  EXPECT_EQ(server_.Counters().users_info_calls, 2u);  // once per user
  // An unknown user: no name, and the message still goes through.
  Say(kGeneral, "U0NOBODY", "<@U0BOT> five");
  ASSERT_TRUE(WaitFor([&] { return sink_.count() == 5; }));
  EXPECT_EQ(sink_.message(4).user_name, "");
}

TEST_F(SlackDeskTest, WithoutADeskNoNamesAndSlashHumanSaysThereIsNoHandOff) {
  Start(/*desk=*/false);
  Say(kGeneral, "U0ALICE", "<@U0BOT> hello");
  ASSERT_TRUE(WaitFor([&] { return sink_.count() == 1; }));
  EXPECT_EQ(sink_.message(0).user_name, "");
  const std::string env = server_.SendSlashCommand({{"command", "/parley"},
                                                    {"text", "human"},
                                                    {"user_id", "U0ALICE"},
                                                    {"channel_id", kGeneral},
                                                    {"response_url", server_.NewResponseUrl()}});
  ASSERT_TRUE(server_.WaitFor(
      [&] {
        for (const auto& a : server_.Acks()) {
          if (a.envelope_id == env) return true;
        }
        return false;
      },
      10'000));
  for (const auto& a : server_.Acks()) {
    if (a.envelope_id == env) {
      EXPECT_NE(a.payload.dump().find("No human hand-off"), std::string::npos) << a.payload;
    }
  }
  EXPECT_EQ(server_.Counters().users_info_calls, 0u);
  EXPECT_EQ(sink_.count(), 1u);
}

TEST_F(SlackDeskTest, SlashHumanInADmAndInAChannelAsksForAPersonInADm) {
  Start();
  server_.SendSlashCommand({{"command", "/parley"},
                            {"text", "human"},
                            {"user_id", "U0ALICE"},
                            {"channel_id", "D0DM"},
                            {"team_id", "T0TEAM"},
                            {"response_url", server_.NewResponseUrl()}});
  ASSERT_TRUE(WaitFor([&] { return sink_.count() == 1; }));
  InboundMessage dm = sink_.message(0);
  EXPECT_TRUE(dm.request_human);
  EXPECT_EQ(dm.channel, "D0DM");
  EXPECT_EQ(dm.thread, "");
  EXPECT_TRUE(dm.is_direct);
  EXPECT_EQ(dm.text, "/parley human");
  EXPECT_EQ(dm.user_name, "Alice");
  EXPECT_TRUE(dm.reply_route.empty());  // answered in the DM, not ephemerally
  EXPECT_EQ(dm.event_id.rfind("slash:", 0), 0u);

  server_.SendSlashCommand({{"command", "/parley"},
                            {"text", "human  refund please"},
                            {"user_id", "U0BOB"},
                            {"channel_id", kGeneral},
                            {"response_url", server_.NewResponseUrl()}});
  ASSERT_TRUE(WaitFor([&] { return sink_.count() == 2; }));
  InboundMessage ch = sink_.message(1);
  EXPECT_TRUE(ch.request_human);
  EXPECT_EQ(ch.channel, SlackServer::DmChannelFor("U0BOB"));
  EXPECT_EQ(ch.text, "/parley human refund please");
  EXPECT_EQ(server_.Counters().conversations_open_calls, 1u);

  // conversations.open failing: the user is told (ephemerally), nothing reaches the sink.
  server_.ErrorNext("conversations.open", 1, "not_allowed");
  server_.SendSlashCommand({{"command", "/parley"},
                            {"text", "human"},
                            {"user_id", "U0ALICE"},
                            {"channel_id", kGeneral},
                            {"response_url", server_.NewResponseUrl()}});
  ASSERT_TRUE(server_.WaitFor([&] { return !Calls("chat.postEphemeral").empty(); }, 10'000));
  EXPECT_NE(Calls("chat.postEphemeral")[0].text.find("could not open a direct message"),
            std::string::npos);
  EXPECT_EQ(sink_.count(), 2u);
}

TEST_F(SlackDeskTest, ButtonClickIsTheButtonsValueFromTheClickerOncePerClick) {
  Start();
  const std::string card = PostCard("esc-1-x-card");
  const auto posted = server_.Posted();
  ASSERT_FALSE(posted.empty());
  const json button = posted.back().blocks.back().at("elements")[0];
  EXPECT_EQ(button.at("action_id"), "parley_action:claim");
  json payload{{"type", "block_actions"},         {"user", {{"id", "U0BOB"}}},
               {"team", {{"id", "T0TEAM"}}},      {"channel", {{"id", kAgents}}},
               {"message", {{"ts", card}}},       {"trigger_id", "trig-1"},
               {"actions", json::array({button})}};
  payload["actions"][0]["action_ts"] = "1700000500.000001";
  server_.SendBlockAction(payload);
  server_.SendBlockAction(payload);  // the same click delivered again: the same event id
  payload["actions"][0]["action_ts"] = "1700000501.000001";
  server_.SendBlockAction(payload);  // another click
  ASSERT_TRUE(WaitFor([&] { return sink_.count() == 3; }));
  InboundMessage click = sink_.message(0);
  EXPECT_EQ(click.text, "claim 1");
  EXPECT_EQ(click.channel, kAgents);
  EXPECT_EQ(click.thread, card);
  EXPECT_EQ(click.user, "U0BOB");
  EXPECT_EQ(click.user_name, "Bob");
  EXPECT_EQ(sink_.message(1).event_id, click.event_id);
  EXPECT_NE(sink_.message(2).event_id, click.event_id);
}

}  // namespace
}  // namespace parley::slack
