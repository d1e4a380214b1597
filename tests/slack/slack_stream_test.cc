// SlackAdapter streaming (slack.stream): the adapter against the Slack test server (real HTTP on
// 127.0.0.1), with the test calling SendPartial/Send as the engine does. Checks what a user of the
// channel sees (tests/fakes/slack's Conversation: the bot's messages with edits applied) and what
// the adapter sent (Messages: every ok chat.* call).

#include <gtest/gtest.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <future>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "adapters/slack/codec.h"
#include "adapters/slack/mrkdwn.h"
#include "adapters/slack/slack_adapter.h"
#include "core/clock.h"
#include "core/metrics.h"
#include "net/http.h"
#include "store/committer.h"
#include "store/kv_store.h"
#include "store/records.h"
#include "tests/fakes/slack/slack_server.h"
#include "tests/support/recording_delivery_listener.h"
#include "tests/support/io_threads.h"
#include "tests/support/temp_dir.h"

namespace parley::slack {
namespace {

using nlohmann::json;
using parley::testing::SlackPostedMessage;
using parley::testing::SlackServer;

constexpr char kChannel[] = "C0GENERAL";
constexpr char kThread[] = "1700000000.000001";
constexpr int kWaitMs = 10'000;

class FakeControl final : public ConversationControl {
 public:
  void Forget(const ConversationKey&, ForgetCallback done) override { done(size_t{0}); }
  void ForgetUser(const std::string&, const std::string&, ForgetCallback done) override {
    done(size_t{0});
  }
};

std::string EventType(const SlackPostedMessage& m) {
  return m.metadata.is_object() ? m.metadata.value("event_type", "") : "";
}

class SlackStreamTest : public ::testing::Test {
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
    config_.stream = true;
    config_.stream_interval_ms = 250;
  }

  // The adapter's timers and calls in flight keep it alive; wait until none is left, so nothing
  // runs on the io threads after the store, metrics and HTTP client it uses are gone.
  void TearDown() override {
    StopAdapter();
    http_.reset();
    work_.reset();
    for (auto& t : threads_) t.join();
    committer_.reset();
  }

  std::shared_ptr<SlackAdapter> MakeAdapter() {
    return std::make_shared<SlackAdapter>(io_, config_, http_, *kv_, *committer_, control_,
                                          SystemClock::Instance(), metrics_, [](Status) {});
  }

  void StartAdapter() { adapter_ = MakeAdapter(); }

  void StopAdapter() {
    if (!adapter_) return;
    std::promise<void> stopped;
    adapter_->Stop([&stopped] { stopped.set_value(); });
    stopped.get_future().wait();
    EXPECT_TRUE(parley::testing::WaitFor([&] { return adapter_.use_count() == 1; }));
    adapter_.reset();
  }

  OutboundMessage Reply(const std::string& id, const std::string& text,
                        const std::string& thread = kThread) {
    OutboundMessage m;
    m.id = id;
    m.conversation = ConversationKey{"slack", kChannel, thread};
    m.text = text;
    m.in_reply_to = std::string(kChannel) + ":" + (thread.empty() ? "1700000000.000009" : thread);
    m.turn_id = "turn-" + id;
    return m;
  }

  void Partial(const OutboundMessage& reply, const std::string& text) {
    OutboundMessage p = reply;
    p.text = text;
    p.citations.clear();
    adapter_->SendPartial(p);
  }

  Status SendFinal(OutboundMessage message) {
    std::promise<Status> queued;
    adapter_->Send(std::move(message), [&queued](Status s) { queued.set_value(s); });
    return queued.get_future().get();
  }

  std::vector<SlackPostedMessage> Calls(const std::string& method) const {
    std::vector<SlackPostedMessage> out;
    for (const auto& m : server_.Messages()) {
      if (m.method == method) out.push_back(m);
    }
    return out;
  }

  // chat.update calls that showed a partial answer (not the final edit).
  std::vector<SlackPostedMessage> PartialEdits() const {
    std::vector<SlackPostedMessage> out;
    for (const auto& m : Calls("chat.update")) {
      if (EventType(m) == kPartialEventType) out.push_back(m);
    }
    return out;
  }

  // Waits until the conversation shows reply `id` part 0 as a delivered reply.
  bool WaitDelivered(const std::string& id) {
    return server_.WaitFor(
        [&] {
          for (const auto& m : server_.Conversation(kChannel)) {
            if (EventType(m) == kReplyEventType &&
                m.metadata["event_payload"].value("message_id", "") == id) {
              return true;
            }
          }
          return false;
        },
        kWaitMs);
  }

  bool WaitPlaceholder() {
    return server_.WaitFor(
        [&] {
          auto posted = server_.Posted();
          return !posted.empty() && EventType(posted.back()) == kPartialEventType;
        },
        kWaitMs);
  }

  // Sum of a counter's samples whose line starts with `prefix` in the Prometheus text.
  double Metric(const std::string& prefix) const {
    const std::string text = metrics_.RenderPrometheus();
    double total = 0;
    size_t pos = 0;
    while ((pos = text.find(prefix, pos)) != std::string::npos) {
      if (pos == 0 || text[pos - 1] == '\n') {
        const size_t space = text.find(' ', pos + prefix.size());
        const size_t end = text.find('\n', space);
        total += std::stod(text.substr(space + 1, end - space - 1));
      }
      pos += prefix.size();
    }
    return total;
  }

  bool OutboxEmpty() {
    return parley::testing::WaitFor([&] {
      auto n = store::Outbox(*kv_).Count(kPlatform);
      return n.ok() && *n == 0;
    });
  }

  SlackServer server_;
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
  std::shared_ptr<SlackAdapter> adapter_;
};

TEST_F(SlackStreamTest, PartialsEditOnePlaceholderIntoTheCompleteAnswer) {
  StartAdapter();
  OutboundMessage reply = Reply("r1", "The **answer** is 42, see the handbook.");
  reply.citations.push_back(Citation{"Handbook", "handbook.md", "", "https://example.com/hb"});

  Partial(reply, "   ");  // blank: nothing to show yet
  Partial(reply, "The **answer**");
  ASSERT_TRUE(WaitPlaceholder());
  const SlackPostedMessage placeholder = server_.Posted().at(0);
  EXPECT_EQ(placeholder.thread_ts, kThread);
  EXPECT_EQ(placeholder.metadata["event_payload"].value("message_id", ""), "r1");
  EXPECT_EQ(placeholder.text, std::string("The *answer*") + kPartialMarker);
  for (const json& block : placeholder.blocks) EXPECT_EQ(block.value("type", ""), "section");

  Partial(reply, "The **answer** is");
  ASSERT_TRUE(server_.WaitFor([&] { return PartialEdits().size() >= 1; }, kWaitMs));
  Partial(reply, "The **answer** is 42");
  ASSERT_TRUE(server_.WaitFor(
      [&] {
        auto edits = PartialEdits();
        return !edits.empty() &&
               edits.back().text == std::string("The *answer* is 42") + kPartialMarker;
      },
      kWaitMs));
  // Throttled: partial edits at least stream_interval_ms apart (placeholder post included).
  std::vector<int64_t> times = {placeholder.received_ns};
  for (const auto& e : PartialEdits()) times.push_back(e.received_ns);
  for (size_t i = 1; i < times.size(); ++i) {
    EXPECT_GE(times[i] - times[i - 1], (config_.stream_interval_ms - 50) * 1'000'000LL);
  }

  ASSERT_TRUE(SendFinal(reply).ok());
  ASSERT_TRUE(WaitDelivered("r1"));
  ASSERT_TRUE(parley::testing::WaitFor(
      [&] { return Metric("parley_slack_replies_total{result=\"sent\"}") == 1; }));

  // One message in the thread, the placeholder itself, now the complete answer.
  auto conversation = server_.Conversation(kChannel);
  ASSERT_EQ(conversation.size(), 1u);
  const SlackPostedMessage& shown = conversation[0];
  EXPECT_EQ(shown.ts, placeholder.ts);
  EXPECT_EQ(shown.text, "The *answer* is 42, see the handbook.");
  EXPECT_EQ(shown.metadata["event_payload"].value("part", -1), 0);
  bool citations = false, buttons = false;
  for (const json& block : shown.blocks) {
    citations = citations || block.value("type", "") == "context";
    buttons = buttons || block.value("type", "") == "actions";
  }
  EXPECT_TRUE(citations);
  EXPECT_TRUE(buttons);
  EXPECT_EQ(server_.Posted().size(), 1u);
  auto updates = Calls("chat.update");
  ASSERT_FALSE(updates.empty());
  EXPECT_EQ(EventType(updates.back()), kReplyEventType);
  EXPECT_FALSE(updates.back().args.contains("thread_ts"));
  EXPECT_EQ(Metric("parley_slack_stream_edits_total{kind=\"final\"}"), 1);
  EXPECT_EQ(Metric("parley_slack_stream_edits_total{kind=\"partial\"}"),
            static_cast<double>(PartialEdits().size()));
  EXPECT_EQ(Metric("parley_slack_stream_placeholders_total"), 1);
  EXPECT_EQ(Metric("parley_slack_replies_total{result=\"sent\"}"), 1);

  // A partial arriving after the final changes nothing: no placeholder is queued ahead of the
  // next reply in the channel.
  const size_t calls = server_.Messages().size();
  Partial(reply, "late");
  ASSERT_TRUE(SendFinal(Reply("r1b", "Next.")).ok());
  ASSERT_TRUE(WaitDelivered("r1b"));
  auto all = server_.Messages();
  ASSERT_EQ(all.size(), calls + 1);
  EXPECT_EQ(EventType(all.back()), kReplyEventType);
  EXPECT_GE(Metric("parley_slack_stream_partials_dropped_total"), 1);
}

TEST_F(SlackStreamTest, BurstOfPartialsIsCoalescedIntoFewEdits) {
  config_.stream_interval_ms = 1000;
  StartAdapter();
  OutboundMessage reply = Reply("r2", "");
  std::string text = "Word";
  Partial(reply, text);
  ASSERT_TRUE(WaitPlaceholder());
  for (int i = 0; i < 60; ++i) {
    text += " w" + std::to_string(i);
    Partial(reply, text);
  }
  ASSERT_TRUE(server_.WaitFor(
      [&] {
        auto edits = PartialEdits();
        return !edits.empty() && edits.back().text == text + kPartialMarker;
      },
      kWaitMs));
  EXPECT_LE(PartialEdits().size(), 2u);
  EXPECT_GE(Metric("parley_slack_stream_partials_dropped_total"), 58);

  reply.text = text + " done.";
  ASSERT_TRUE(SendFinal(reply).ok());
  ASSERT_TRUE(WaitDelivered("r2"));
  auto conversation = server_.Conversation(kChannel);
  ASSERT_EQ(conversation.size(), 1u);
  EXPECT_EQ(conversation[0].text, text + " done.");
  EXPECT_EQ(server_.Posted().size(), 1u);
}

TEST_F(SlackStreamTest, RateLimitedEditsDoNotLoseTheFinalText) {
  StartAdapter();
  OutboundMessage reply = Reply("r3", "First line.\n\nSecond line, complete.");
  Partial(reply, "First");
  ASSERT_TRUE(WaitPlaceholder());
  server_.RateLimitNext("chat.update", 2, 1);
  Partial(reply, "First line.");
  ASSERT_TRUE(server_.WaitFor([&] { return server_.Counters().ratelimited_served >= 1; }, kWaitMs));
  Partial(reply, "First line.\n\nSecond");  // coalesced while chat.update is paused
  ASSERT_TRUE(SendFinal(reply).ok());
  ASSERT_TRUE(WaitDelivered("r3"));
  EXPECT_EQ(server_.Counters().ratelimited_served, 2u);
  auto conversation = server_.Conversation(kChannel);
  ASSERT_EQ(conversation.size(), 1u);
  EXPECT_EQ(conversation[0].text, "First line.\n\nSecond line, complete.");
  EXPECT_EQ(server_.Posted().size(), 1u);
  // Nothing partial landed after the final edit.
  auto updates = Calls("chat.update");
  ASSERT_FALSE(updates.empty());
  EXPECT_EQ(EventType(updates.back()), kReplyEventType);
  EXPECT_TRUE(OutboxEmpty());
}

TEST_F(SlackStreamTest, FinalWaitsForTheEditInFlight) {
  StartAdapter();
  OutboundMessage reply = Reply("r13", "Complete answer.");
  Partial(reply, "Complete");
  ASSERT_TRUE(WaitPlaceholder());
  server_.DelayNext("chat.update", 1, 400);
  Partial(reply, "Complete ans");
  ASSERT_TRUE(server_.WaitFor([&] { return PartialEdits().size() == 1; }, kWaitMs));
  ASSERT_TRUE(SendFinal(reply).ok());  // the partial edit is still unanswered
  ASSERT_TRUE(WaitDelivered("r13"));
  auto updates = Calls("chat.update");
  ASSERT_EQ(updates.size(), 2u);
  EXPECT_EQ(EventType(updates[1]), kReplyEventType);
  // The final edit went out only after the partial edit was answered.
  EXPECT_GE(updates[1].received_ns - updates[0].received_ns, 350'000'000LL);
  EXPECT_EQ(server_.Conversation(kChannel).at(0).text, "Complete answer.");
}

TEST_F(SlackStreamTest, ReplyWithoutPartialsIsPostedAsBefore) {
  StartAdapter();
  OutboundMessage reply = Reply("r4", "Plain answer.");
  ASSERT_TRUE(SendFinal(reply).ok());
  ASSERT_TRUE(WaitDelivered("r4"));
  auto posted = server_.Posted();
  ASSERT_EQ(posted.size(), 1u);
  EXPECT_EQ(posted[0].text, "Plain answer.");
  EXPECT_EQ(posted[0].thread_ts, kThread);
  EXPECT_EQ(posted[0].args, BuildPostMessage(reply, kChannel, kThread, true).at(0));
  EXPECT_TRUE(Calls("chat.update").empty());
}

TEST_F(SlackStreamTest, StreamOffIgnoresPartials) {
  config_.stream = false;
  StartAdapter();
  OutboundMessage reply = Reply("r5", "Complete.");
  Partial(reply, "Comp");
  ASSERT_TRUE(SendFinal(reply).ok());
  ASSERT_TRUE(WaitDelivered("r5"));
  auto posted = server_.Posted();
  ASSERT_EQ(posted.size(), 1u);
  EXPECT_EQ(EventType(posted[0]), kReplyEventType);
  EXPECT_TRUE(Calls("chat.update").empty());
}

TEST_F(SlackStreamTest, PlaceholderKeepsTheChannelOrderAndPace) {
  config_.post_rate_per_channel = 2.0;
  config_.post_burst = 1;
  StartAdapter();
  OutboundMessage earlier = Reply("r6a", "Earlier answer.");
  OutboundMessage streamed = Reply("r6b", "Streamed answer, complete.");
  ASSERT_TRUE(SendFinal(earlier).ok());
  Partial(streamed, "Streamed");
  ASSERT_TRUE(WaitPlaceholder());
  auto posted = server_.Posted();
  ASSERT_EQ(posted.size(), 2u);
  EXPECT_EQ(posted[0].text, "Earlier answer.");
  EXPECT_EQ(EventType(posted[1]), kPartialEventType);
  // Paced: the placeholder waited for the channel's token (2/s, burst 1).
  EXPECT_GE(posted[1].received_ns - posted[0].received_ns, 450'000'000LL);
  ASSERT_TRUE(SendFinal(streamed).ok());
  ASSERT_TRUE(WaitDelivered("r6b"));
  EXPECT_EQ(server_.Conversation(kChannel).size(), 2u);
  EXPECT_EQ(server_.Posted().size(), 2u);
}

TEST_F(SlackStreamTest, LongAnswerEditsTheFirstPartAndPostsTheRest) {
  StartAdapter();
  std::string text;
  for (int i = 0; i < 80; ++i) {
    text += "Paragraph " + std::to_string(i) + " " + std::string(60, 'x') + ".\n\n";
  }
  OutboundMessage reply = Reply("r7", text);
  const auto bodies = BuildPostMessage(reply, kChannel, kThread, true);
  ASSERT_GE(bodies.size(), 2u);
  Partial(reply, text.substr(0, 200));
  ASSERT_TRUE(WaitPlaceholder());
  Partial(reply, text.substr(0, 5000));  // longer than one message: the first part is shown
  ASSERT_TRUE(server_.WaitFor([&] { return PartialEdits().size() >= 1; }, kWaitMs));
  EXPECT_LE(PartialEdits().back().text.size(), 3500u);
  ASSERT_TRUE(SendFinal(reply).ok());
  ASSERT_TRUE(server_.WaitFor(
      [&] { return server_.Conversation(kChannel).size() == bodies.size(); }, kWaitMs));
  ASSERT_TRUE(OutboxEmpty());
  auto conversation = server_.Conversation(kChannel);
  for (size_t p = 0; p < bodies.size(); ++p) {
    EXPECT_EQ(conversation[p].text, bodies[p]["text"]);
    EXPECT_EQ(conversation[p].metadata, bodies[p]["metadata"]);
  }
  EXPECT_EQ(server_.Posted().size(), bodies.size());  // placeholder + the further parts
}

TEST_F(SlackStreamTest, RefusedFinalEditPostsTheAnswerAndRemovesThePlaceholder) {
  StartAdapter();
  OutboundMessage reply = Reply("r8", "The full answer.");
  Partial(reply, "The full");
  ASSERT_TRUE(WaitPlaceholder());
  const std::string placeholder_ts = server_.Posted().at(0).ts;
  server_.ErrorNext("chat.update", 1, "cant_update_message");
  ASSERT_TRUE(SendFinal(reply).ok());
  ASSERT_TRUE(WaitDelivered("r8"));
  ASSERT_TRUE(server_.WaitFor([&] { return Calls("chat.delete").size() == 1; }, kWaitMs));
  EXPECT_EQ(Calls("chat.delete")[0].ts, placeholder_ts);
  auto conversation = server_.Conversation(kChannel);
  ASSERT_EQ(conversation.size(), 1u);
  EXPECT_EQ(conversation[0].text, "The full answer.");
  EXPECT_EQ(EventType(conversation[0]), kReplyEventType);
  EXPECT_EQ(Metric("parley_slack_stream_fallbacks_total"), 1);
}

TEST_F(SlackStreamTest, DeletedPlaceholderStillGetsTheAnswer) {
  StartAdapter();
  OutboundMessage reply = Reply("r9", "Answer after all.");
  Partial(reply, "Answer");
  ASSERT_TRUE(WaitPlaceholder());
  server_.ErrorNext("chat.update", 5, "message_not_found");
  Partial(reply, "Answer after");  // refused: no more partial edits
  ASSERT_TRUE(server_.WaitFor([&] { return server_.Counters().api_calls >= 2; }, kWaitMs));
  ASSERT_TRUE(SendFinal(reply).ok());
  ASSERT_TRUE(WaitDelivered("r9"));
  EXPECT_TRUE(Calls("chat.delete").empty());  // gone already
  EXPECT_EQ(server_.Posted().size(), 2u);
}

TEST_F(SlackStreamTest, PlaceholderPostLostInTransportIsLookedUpFirst) {
  StartAdapter();
  OutboundMessage reply = Reply("r10", "Answer.");
  server_.FailNext("chat.postMessage", 1, 502);
  Partial(reply, "Ans");
  ASSERT_TRUE(server_.WaitFor([&] { return server_.Counters().errors_served == 1; }, kWaitMs));
  ASSERT_TRUE(SendFinal(reply).ok());
  ASSERT_TRUE(WaitDelivered("r10"));
  auto conversation = server_.Conversation(kChannel);
  ASSERT_EQ(conversation.size(), 1u);
  EXPECT_EQ(conversation[0].text, "Answer.");
}

TEST_F(SlackStreamTest, ReplayAfterCrashEditsThePlaceholderInsteadOfPostingAgain) {
  StartAdapter();
  OutboundMessage reply = Reply("r11", "The answer, delivered after a restart.");
  Partial(reply, "The answer");
  ASSERT_TRUE(WaitPlaceholder());
  // The turn finished (the router wrote the reply to the outbox) but the process died before the
  // adapter delivered it.
  StopAdapter();
  store::OutboxEntry entry;
  entry.id = reply.id;
  entry.platform = kPlatform;
  entry.payload = json(reply).dump();
  entry.created_ms = SystemClock::Instance().NowMs();
  store::WriteBatch batch;
  store::Outbox(*kv_).Put(batch, entry);
  ASSERT_TRUE(kv_->Write(batch, true).ok());

  adapter_ = MakeAdapter();
  ASSERT_TRUE(adapter_->ResumeOutbox().ok());
  ASSERT_TRUE(WaitDelivered("r11"));
  ASSERT_TRUE(OutboxEmpty());
  EXPECT_EQ(server_.Posted().size(), 1u);
  auto conversation = server_.Conversation(kChannel);
  ASSERT_EQ(conversation.size(), 1u);
  EXPECT_EQ(conversation[0].text, "The answer, delivered after a restart.");
  EXPECT_EQ(EventType(conversation[0]), kReplyEventType);

  // A second replay (say the outbox removal was lost) finds the reply and posts nothing.
  StopAdapter();
  store::WriteBatch again;
  store::Outbox(*kv_).Put(again, entry);
  ASSERT_TRUE(kv_->Write(again, true).ok());
  adapter_ = MakeAdapter();
  ASSERT_TRUE(adapter_->ResumeOutbox().ok());
  ASSERT_TRUE(OutboxEmpty());
  EXPECT_EQ(server_.Posted().size(), 1u);
  EXPECT_EQ(server_.Conversation(kChannel).size(), 1u);
}


TEST_F(SlackStreamTest, DeliveryReceiptsNameTheMessagesTs) {
  parley::testing::RecordingDeliveryListener receipts(kPlatform);
  adapter_ = MakeAdapter();
  adapter_->SetDeliveryListener(&receipts);
  // A plain post: the receipt carries the ts Slack assigned.
  OutboundMessage plain = Reply("rc1", "A card for the agents.", "");
  plain.in_reply_to.clear();
  ASSERT_TRUE(SendFinal(plain).ok());
  ASSERT_TRUE(WaitDelivered("rc1"));
  ASSERT_TRUE(parley::testing::WaitFor([&] { return receipts.all().size() == 1; }));
  const std::string posted_ts = server_.Posted().at(0).ts;
  ASSERT_FALSE(posted_ts.empty());
  EXPECT_EQ(receipts.all()[0].message_id, "rc1");
  EXPECT_EQ(receipts.all()[0].platform_message_id, posted_ts);
  EXPECT_EQ(receipts.all()[0].conversation, (ConversationKey{"slack", kChannel, ""}));

  // A streamed answer: the placeholder's ts, which the final edit keeps.
  OutboundMessage streamed = Reply("rc2", "Streamed to the end.");
  Partial(streamed, "Streamed");
  ASSERT_TRUE(WaitPlaceholder());
  const std::string placeholder_ts = server_.Posted().back().ts;
  ASSERT_TRUE(SendFinal(streamed).ok());
  ASSERT_TRUE(WaitDelivered("rc2"));
  ASSERT_TRUE(parley::testing::WaitFor([&] { return receipts.all().size() == 2; }));
  EXPECT_EQ(receipts.all()[1].message_id, "rc2");
  EXPECT_EQ(receipts.all()[1].platform_message_id, placeholder_ts);
  EXPECT_EQ(receipts.all()[1].conversation.thread, kThread);

  // A replay after a crash finds the post already made and reports it again.
  StopAdapter();
  store::OutboxEntry entry;
  entry.id = plain.id;
  entry.platform = kPlatform;
  entry.payload = json(plain).dump();
  entry.created_ms = SystemClock::Instance().NowMs();
  store::WriteBatch batch;
  store::Outbox(*kv_).Put(batch, entry);
  ASSERT_TRUE(kv_->Write(batch, true).ok());
  receipts.kv = kv_.get();
  adapter_ = MakeAdapter();
  adapter_->SetDeliveryListener(&receipts);
  ASSERT_TRUE(adapter_->ResumeOutbox().ok());
  ASSERT_TRUE(OutboxEmpty());
  ASSERT_TRUE(parley::testing::WaitFor([&] { return receipts.all().size() == 3; }));
  EXPECT_EQ(receipts.all()[2].message_id, "rc1");
  EXPECT_TRUE(receipts.in_outbox()[2]);  // reported before the outbox entry was removed
  EXPECT_EQ(receipts.all()[2].platform_message_id, posted_ts);
  EXPECT_EQ(server_.Posted().size(), 2u);  // nothing posted twice
  StopAdapter();                           // before `receipts` goes
}

TEST_F(SlackStreamTest, DirectMessageStreamsInTheMainLine) {
  StartAdapter();
  OutboundMessage reply = Reply("r12", "DM answer.", "");
  reply.conversation.channel = "D0DM";
  reply.in_reply_to = "D0DM:1700000000.000009";
  Partial(reply, "DM");
  ASSERT_TRUE(WaitPlaceholder());
  EXPECT_TRUE(server_.Posted().at(0).thread_ts.empty());
  ASSERT_TRUE(SendFinal(reply).ok());
  ASSERT_TRUE(server_.WaitFor(
      [&] {
        auto c = server_.Conversation("D0DM");
        return c.size() == 1 && EventType(c[0]) == kReplyEventType;
      },
      kWaitMs));
  EXPECT_EQ(server_.Conversation("D0DM")[0].text, "DM answer.");
}

}  // namespace
}  // namespace parley::slack
