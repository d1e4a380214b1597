// The router over real LevelDB and a real Xapian index in a temporary directory.

#include "engine/router.h"

#include <atomic>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <future>
#include <thread>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>
#include <gtest/gtest.h>

#include "store/keys.h"
#include "tests/support/temp_dir.h"

namespace parley::engine {
namespace {

// Collects replies; waits for them with a deadline.
class CollectingSink final : public ReplySink {
 public:
  bool DeliversDurably(const OutboundMessage& m) const override { return !m.reply_route.empty(); }
  void Send(OutboundMessage m, DeliveryCallback done) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      replies_.push_back(std::move(m));
    }
    cv_.notify_all();
    if (done) done(Status::Ok());
  }
  bool WaitFor(size_t n) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, std::chrono::seconds(20), [&] { return replies_.size() >= n; });
  }
  std::vector<OutboundMessage> replies() {
    std::lock_guard<std::mutex> lock(mu_);
    return replies_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<OutboundMessage> replies_;
};

// Takes messages that start with "human" and appends a line to every answer.
class RecordingHooks final : public TurnHooks {
 public:
  bool BeforeTurn(const InboundMessage& message) override {
    std::lock_guard<std::mutex> lock(mu_);
    before_.push_back(message.event_id);
    return message.text.rfind("human", 0) == 0;
  }
  void AfterTurn(const InboundMessage& message, TurnOutput& out) override {
    std::lock_guard<std::mutex> lock(mu_);
    after_.push_back(message.event_id);
    out.reply.text += "\n(after hook)";
  }
  std::vector<std::string> before() {
    std::lock_guard<std::mutex> lock(mu_);
    return before_;
  }
  std::vector<std::string> after() {
    std::lock_guard<std::mutex> lock(mu_);
    return after_;
  }

 private:
  std::mutex mu_;
  std::vector<std::string> before_;
  std::vector<std::string> after_;
};

class RouterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::filesystem::create_directories(dir_.Sub("kb"));
    std::ofstream(dir_.Sub("kb/doc.md"))
        << "# Refunds\n\nRefunds are paid within fourteen days.\n\n# Shipping\n\nShipping is "
           "free above fifty euros.\n";
    kv_ = std::move(store::OpenLevelDb(dir_.Sub("db")).value());
    committer_ = std::make_unique<store::Committer>(*kv_);
    index_ = std::move(knowledge::KnowledgeIndex::Open(dir_.Sub("index")).value());
    ASSERT_TRUE(index_->Ingest({{dir_.Sub("kb"), {}, ""}}, knowledge::ChunkOptions{}).ok());
    memory_ = std::make_unique<store::ConversationMemory>(*kv_, clock_, 30);
    engine_ = std::make_unique<Engine>(*index_, *memory_, clock_, config::EngineConfig{},
                                       std::vector<config::AccessGrant>{}, metrics_);
    RouterOptions options;
    options.policy.user_burst = 3;
    options.policy.user_rate_per_minute = 1;
    router_ = std::make_unique<Router>(io_, *engine_, *kv_, *committer_, sink_, clock_, options,
                                       metrics_);
    for (int i = 0; i < 2; ++i) threads_.emplace_back([this] { io_.run(); });
  }
  void TearDown() override {
    // The Router's commit callbacks must run before it goes: drain the committer first.
    committer_->Shutdown();
    guard_.reset();
    io_.stop();
    for (auto& t : threads_) t.join();
  }
  IntakeResult Submit(InboundMessage m, bool durable = false) {
    std::promise<IntakeResult> p;
    auto f = p.get_future();
    router_->OnInbound(std::move(m), IntakeOptions{durable},
                       [&p](IntakeResult r) { p.set_value(r); });
    return f.get();
  }
  static InboundMessage Message(const std::string& conv, const std::string& user,
                                const std::string& text, const std::string& id) {
    InboundMessage m;
    m.platform = "test";
    m.channel = conv;
    m.user = user;
    m.text = text;
    m.event_id = id;
    return m;
  }
  size_t Count(const std::string& prefix) {
    size_t n = 0;
    EXPECT_TRUE(kv_->Scan(prefix, [&](std::string_view, std::string_view) {
      ++n;
      return true;
    }).ok());
    return n;
  }

  testing::TempDir dir_;
  ManualClock clock_;
  MetricsRegistry metrics_;
  boost::asio::io_context io_;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> guard_{
      io_.get_executor()};
  std::vector<std::thread> threads_;
  std::unique_ptr<store::KvStore> kv_;
  std::unique_ptr<store::Committer> committer_;
  std::unique_ptr<knowledge::KnowledgeIndex> index_;
  std::unique_ptr<store::ConversationMemory> memory_;
  std::unique_ptr<Engine> engine_;
  CollectingSink sink_;
  std::unique_ptr<Router> router_;
};

TEST_F(RouterTest, AnswersAndRecordsTheTurn) {
  ASSERT_TRUE(Submit(Message("c1", "u1", "when are refunds paid?", "e1")).status.ok());
  ASSERT_TRUE(sink_.WaitFor(1));
  OutboundMessage reply = sink_.replies()[0];
  EXPECT_EQ(reply.in_reply_to, "e1");
  EXPECT_NE(reply.text.find("fourteen days"), std::string::npos) << reply.text;
  EXPECT_EQ(memory_->Recent({"test", "c1", ""}, 10, 10000)->size(), 2u);
}

TEST_F(RouterTest, OnlyPlatformEventIdsAreRecordedForDeDuplication) {
  // An id the platform gave: recorded, and a second delivery is refused.
  ASSERT_TRUE(Submit(Message("c1", "u1", "when are refunds paid?", "platform-1")).status.ok());
  ASSERT_TRUE(sink_.WaitFor(1));
  // No id at all, and one the adapter minted: answered, nothing recorded (they cannot repeat).
  ASSERT_TRUE(Submit(Message("c2", "u1", "when are refunds paid?", "")).status.ok());
  InboundMessage minted = Message("c3", "u1", "when are refunds paid?", "minted-1");
  minted.event_id_minted = true;
  ASSERT_TRUE(Submit(minted).status.ok());
  ASSERT_TRUE(sink_.WaitFor(3));
  committer_->Shutdown();  // drain so every turn's write is visible
  EXPECT_EQ(Count(store::keys::kDedupe), 1u);
  EXPECT_EQ(Submit(Message("c1", "u1", "again", "platform-1")).status.code(),
            Status::Code::kAlreadyExists);
}

TEST_F(RouterTest, HooksTakeMessagesBeforeTheBotAndAmendItsAnswers) {
  RecordingHooks hooks;
  router_->SetHooks(&hooks);
  InboundMessage handed = Message("c1", "u1", "human please", "h1");
  handed.reply_route = "route-1";
  ASSERT_TRUE(Submit(handed, /*durable=*/true).status.ok());
  ASSERT_TRUE(sink_.WaitFor(1));
  OutboundMessage silent = sink_.replies()[0];
  EXPECT_TRUE(silent.silent);
  EXPECT_EQ(silent.in_reply_to, "h1");
  EXPECT_EQ(silent.reply_route, "route-1");
  EXPECT_TRUE(silent.text.empty());
  // The bot did not answer: no memory, no outbox entry; the event is recorded as handled and
  // the inbox record is gone.
  EXPECT_TRUE(memory_->Recent({"test", "c1", ""}, 10, 10000)->empty());
  EXPECT_EQ(Count(store::keys::kOutbox), 0u);
  EXPECT_EQ(Count(store::keys::kInbox), 0u);
  EXPECT_EQ(Submit(handed).status.code(), Status::Code::kAlreadyExists);

  ASSERT_TRUE(Submit(Message("c1", "u1", "when are refunds paid?", "q1")).status.ok());
  ASSERT_TRUE(sink_.WaitFor(2));
  OutboundMessage answer = sink_.replies()[1];
  EXPECT_FALSE(answer.silent);
  EXPECT_NE(answer.text.find("fourteen days"), std::string::npos) << answer.text;
  EXPECT_NE(answer.text.find("(after hook)"), std::string::npos) << answer.text;
  EXPECT_EQ(hooks.before(), (std::vector<std::string>{"h1", "q1"}));
  EXPECT_EQ(hooks.after(), (std::vector<std::string>{"q1"}));
  // Memory keeps the bot's own answer, not what the hook added for the user.
  auto recent = memory_->Recent({"test", "c1", ""}, 10, 10000);
  ASSERT_EQ(recent->size(), 2u);
  EXPECT_NE((*recent)[1].text.find("fourteen days"), std::string::npos);
  EXPECT_EQ((*recent)[1].text.find("(after hook)"), std::string::npos);
}

TEST_F(RouterTest, DuplicateEventIsRefused) {
  ASSERT_TRUE(Submit(Message("c1", "u1", "refunds?", "same")).status.ok());
  ASSERT_TRUE(sink_.WaitFor(1));
  IntakeResult again = Submit(Message("c1", "u1", "refunds?", "same"));
  EXPECT_EQ(again.status.code(), Status::Code::kAlreadyExists);
  EXPECT_EQ(sink_.replies().size(), 1u);
}

TEST_F(RouterTest, EmptyTextIsInvalid) {
  EXPECT_EQ(Submit(Message("c1", "u1", "  \n", "e")).status.code(),
            Status::Code::kInvalidArgument);
}

TEST_F(RouterTest, RateLimitedWithRetryAfter) {
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(Submit(Message("c" + std::to_string(i), "u", "refunds?", "r" + std::to_string(i)))
                    .status.ok());
  }
  IntakeResult limited = Submit(Message("c9", "u", "refunds?", "r9"));
  EXPECT_EQ(limited.status.code(), Status::Code::kResourceExhausted);
  EXPECT_GT(limited.retry_after_ms, 0);
  // The refused event was not recorded: after the wait, the same event is accepted.
  clock_.Advance(limited.retry_after_ms);
  EXPECT_TRUE(Submit(Message("c9", "u", "refunds?", "r9")).status.ok());
}

TEST_F(RouterTest, TurnsOfOneConversationStayInOrder) {
  constexpr int kTurns = 20;
  for (int i = 0; i < kTurns; ++i) {
    InboundMessage m = Message("ordered", "u" + std::to_string(i), "question " + std::to_string(i),
                               "o" + std::to_string(i));
    router_->OnInbound(std::move(m), IntakeOptions{false}, nullptr);
  }
  ASSERT_TRUE(sink_.WaitFor(kTurns));
  auto replies = sink_.replies();
  for (int i = 0; i < kTurns; ++i) EXPECT_EQ(replies[i].in_reply_to, "o" + std::to_string(i));
  auto turns = memory_->Recent({"test", "ordered", ""}, 100, 1'000'000).value();
  ASSERT_EQ(turns.size(), 2u * kTurns);
  for (int i = 0; i < kTurns; ++i) EXPECT_EQ(turns[2 * i].text, "question " + std::to_string(i));
}

TEST_F(RouterTest, DurableIntakeIsReplayedAfterACrash) {
  // A message accepted durably but never answered (the process died): its inbox record remains.
  InboundMessage m = Message("c-crash", "u", "refunds?", "crashed");
  m.reply_route = "http://127.0.0.1:1/cb";
  store::WriteBatch b;
  store::Inbox(*kv_).Add(b, m);
  ASSERT_TRUE(kv_->Write(b, true).ok());
  EXPECT_EQ(router_->ReplayInbox().value(), 1u);
  ASSERT_TRUE(sink_.WaitFor(1));
  EXPECT_EQ(sink_.replies()[0].in_reply_to, "crashed");
  committer_->Shutdown();  // drain so the turn's write is visible
  EXPECT_EQ(Count(store::keys::kInbox), 0u);
  EXPECT_EQ(Count(store::keys::kOutbox), 1u);  // the answer is owed to the reply route
  EXPECT_EQ(Count(store::keys::kRoute), 1u);
}

TEST_F(RouterTest, ShutdownWaitsForTurnsInFlight) {
  for (int i = 0; i < 10; ++i) {
    router_->OnInbound(Message("s" + std::to_string(i % 3), "u" + std::to_string(i), "refunds?",
                               "s" + std::to_string(i)),
                       IntakeOptions{true}, nullptr);
  }
  std::promise<void> drained;
  router_->Shutdown([&] { drained.set_value(); });
  ASSERT_EQ(drained.get_future().wait_for(std::chrono::seconds(20)), std::future_status::ready);
  EXPECT_EQ(sink_.replies().size(), 10u);
  EXPECT_EQ(Submit(Message("late", "u", "refunds?", "late")).status.code(),
            Status::Code::kUnavailable);
}

// Counts the turns that started.
class CountingHooks final : public TurnHooks {
 public:
  bool BeforeTurn(const InboundMessage&) override {
    ++started;
    return false;
  }
  void AfterTurn(const InboundMessage&, TurnOutput&) override {}
  std::atomic<int> started{0};
};

TEST_F(RouterTest, ABacklogOfTurnsDoesNotHoldBackOtherWork) {
  // A router on an io_context of its own that this thread runs, one handler at a time.
  boost::asio::io_context io;
  auto work = boost::asio::make_work_guard(io);  // commits complete from the committer's thread
  RouterOptions options;
  Router router(io, *engine_, *kv_, *committer_, sink_, clock_, options, metrics_);
  CountingHooks hooks;
  router.SetHooks(&hooks);
  constexpr int kTurns = 50;
  for (int i = 0; i < kTurns; ++i) {  // a burst of new conversations, as a socket read brings it
    router.OnInbound(Message("burst" + std::to_string(i), "u" + std::to_string(i), "refunds?",
                             "b" + std::to_string(i)),
                     IntakeOptions{false}, nullptr);
  }
  // Then other work, e.g. the next socket read with an acknowledgement to send: it runs after
  // the turns already posted to the io_context (at most two), not after the whole backlog.
  int started_before_other_work = -1;
  boost::asio::post(io, [&] { started_before_other_work = hooks.started.load(); });
  while (started_before_other_work < 0 && io.run_one() > 0) {
  }
  EXPECT_GE(started_before_other_work, 1);
  EXPECT_LE(started_before_other_work, 2);
  // And the backlog is answered in full.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (sink_.replies().size() < kTurns && std::chrono::steady_clock::now() < deadline) {
    io.run_one_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(sink_.replies().size(), size_t{kTurns});
  EXPECT_EQ(hooks.started.load(), kTurns);
  EXPECT_EQ(router.InFlight(), 0u);
}

// Holds every turn in BeforeTurn until released (the bot then answers as usual).
class GateHooks final : public TurnHooks {
 public:
  bool BeforeTurn(const InboundMessage&) override {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, std::chrono::seconds(20), [&] { return open_; });
    return false;
  }
  void AfterTurn(const InboundMessage&, TurnOutput&) override {}
  void Open() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      open_ = true;
    }
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = false;
};

class RouterIntakeTest : public RouterTest {
 protected:
  void Rebuild(int64_t grace_ms) {
    RouterOptions options;
    options.intake_grace_ms = grace_ms;
    router_ = std::make_unique<Router>(io_, *engine_, *kv_, *committer_, sink_, clock_, options,
                                       metrics_);
  }
  // Submits durably; the result arrives on `accepted` (and the sink's reply count at that moment
  // on `replies_when_accepted`).
  void SubmitDurably(InboundMessage m) {
    router_->OnInbound(std::move(m), IntakeOptions{true}, [this](IntakeResult r) {
      replies_when_accepted_ = sink_.replies().size();
      accepted_.set_value(r);
    });
  }
  std::promise<IntakeResult> accepted_;
  size_t replies_when_accepted_ = 0;
};

TEST_F(RouterIntakeTest, AFastTurnsCommitIsItsDurableIntake) {
  Rebuild(/*grace_ms=*/60'000);
  const uint64_t batches_before = committer_->batches();
  InboundMessage m = Message("fast", "u", "when are refunds paid?", "f1");
  m.reply_route = "route-f";
  SubmitDurably(m);
  auto accepted = accepted_.get_future();
  ASSERT_EQ(accepted.wait_for(std::chrono::seconds(20)), std::future_status::ready);
  EXPECT_TRUE(accepted.get().status.ok());
  ASSERT_TRUE(sink_.WaitFor(1));
  EXPECT_EQ(replies_when_accepted_, 0u) << "accepted must come before the reply is sent";
  // One synced write: the turn's (answer, dedupe mark, outbox entry); no inbox record at all.
  EXPECT_EQ(committer_->batches() - batches_before, 1u);
  EXPECT_EQ(Count(store::keys::kInbox), 0u);
  EXPECT_EQ(Count(store::keys::kOutbox), 1u);
  EXPECT_EQ(Submit(m).status.code(), Status::Code::kAlreadyExists);
}

TEST_F(RouterIntakeTest, ASlowTurnGetsItsInboxRecordWhenTheGraceEnds) {
  Rebuild(/*grace_ms=*/20);
  GateHooks gate;
  router_->SetHooks(&gate);
  InboundMessage m = Message("slow", "u", "when are refunds paid?", "s1");
  m.reply_route = "route-s";
  SubmitDurably(m);
  auto accepted = accepted_.get_future();
  // Accepted while the turn is still held: the inbox record is on disk.
  ASSERT_EQ(accepted.wait_for(std::chrono::seconds(20)), std::future_status::ready);
  EXPECT_TRUE(accepted.get().status.ok());
  EXPECT_EQ(Count(store::keys::kInbox), 1u);
  EXPECT_TRUE(sink_.replies().empty());
  // A duplicate meanwhile is refused (the event is claimed).
  EXPECT_EQ(Submit(m).status.code(), Status::Code::kAlreadyExists);

  gate.Open();
  ASSERT_TRUE(sink_.WaitFor(1));
  EXPECT_NE(sink_.replies()[0].text.find("fourteen days"), std::string::npos);
  // The turn's commit removed the record (the reply is sent after the commit).
  EXPECT_EQ(Count(store::keys::kInbox), 0u);
  EXPECT_EQ(Count(store::keys::kOutbox), 1u);
}

TEST_F(RouterIntakeTest, AGraceOfZeroRecordsTheIntakeBeforeTheTurnStarts) {
  Rebuild(/*grace_ms=*/0);
  GateHooks gate;
  router_->SetHooks(&gate);
  SubmitDurably(Message("zero", "u", "when are refunds paid?", "z1"));
  auto accepted = accepted_.get_future();
  ASSERT_EQ(accepted.wait_for(std::chrono::seconds(20)), std::future_status::ready);
  EXPECT_TRUE(accepted.get().status.ok());
  EXPECT_EQ(Count(store::keys::kInbox), 1u);
  gate.Open();
  ASSERT_TRUE(sink_.WaitFor(1));
  EXPECT_EQ(Count(store::keys::kInbox), 0u);
}

}  // namespace
}  // namespace parley::engine
