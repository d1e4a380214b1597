// MatrixAdapter against the Matrix test homeserver (tests/fakes/matrix, real HTTP on 127.0.0.1),
// with a real LevelDB store in a temporary directory and a recording InboundSink standing in for
// the router. The test plays the engine: it answers recorded messages through Send/SendPartial.

#include "adapters/matrix/matrix_adapter.h"

#include <gtest/gtest.h>

#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <cstdio>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "core/clock.h"
#include "core/metrics.h"
#include "core/percent.h"
#include "net/http.h"
#include "store/committer.h"
#include "store/keys.h"
#include "store/kv_store.h"
#include "store/records.h"
#include "tests/fakes/matrix/matrix_server.h"
#include "tests/support/recording_delivery_listener.h"
#include "tests/support/io_threads.h"
#include "tests/support/recording_inbound_sink.h"
#include "tests/support/temp_dir.h"

namespace parley::matrix {
namespace {

using nlohmann::json;
using parley::testing::MatrixEvent;
using parley::testing::MatrixServer;

constexpr char kBot[] = "@parley:test.local";
constexpr char kAlice[] = "@alice:test.local";
constexpr char kBob[] = "@bob:test.local";
constexpr int kWaitMs = 10'000;

// m.mentions user ids for SendText.
std::optional<std::vector<std::string>> M(const std::string& user) {
  return std::vector<std::string>{user};
}

class FakeControl final : public ConversationControl {
 public:
  void Forget(const ConversationKey&, ForgetCallback done) override { done(size_t{0}); }
  void ForgetUser(const std::string&, const std::string&, ForgetCallback done) override {
    done(size_t{0});
  }
};


class MatrixAdapterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = MatrixServer::Start();
    auto kv = store::OpenLevelDb(dir_.Sub("db"));
    ASSERT_TRUE(kv.ok()) << kv.status().ToString();
    kv_ = std::move(*kv);
    committer_ = std::make_unique<store::Committer>(*kv_);
    for (int i = 0; i < 2; ++i) threads_.emplace_back([this] { io_.run(); });
    http_ = net::MakeCurlHttpClient(io_);
    config_.enabled = true;
    config_.homeserver = server_->base_url();
    config_.user_id = kBot;
    config_.access_token = Secret(server_->options().bot_access_token);
    config_.sync_timeout_ms = 1'000;
    config_.stream_interval_ms = 250;
    config_.stream_edits_per_minute = 600;
  }

  void TearDown() override {
    StopAdapter();
    std::promise<void> down;
    http_->Shutdown([&down] { down.set_value(); });
    down.get_future().wait();
    http_.reset();
    work_.reset();
    for (auto& t : threads_) t.join();
    committer_.reset();
  }

  void StartAdapter(bool wait_syncing = true) {
    adapter_ =
        std::make_shared<MatrixAdapter>(io_, config_, http_, *kv_, *committer_, control_,
                                        SystemClock::Instance(), metrics_, [this](Status why) {
                                          std::lock_guard<std::mutex> lock(mu_);
                                          fatal_.push_back(why);
                                        });
    listener_.kv = kv_.get();
    adapter_->SetDeliveryListener(&listener_);
    ASSERT_TRUE(adapter_->ResumeOutbox().ok());
    ASSERT_TRUE(adapter_->Start(sink_).ok());
    if (wait_syncing) {
      ASSERT_TRUE(parley::testing::WaitFor([&] { return adapter_->Syncing(); },
                                           std::chrono::milliseconds(kWaitMs)));
    }
  }

  void StopAdapter() {
    if (!adapter_) return;
    std::promise<void> stopped;
    adapter_->Stop([&stopped] { stopped.set_value(); });
    stopped.get_future().wait();
    EXPECT_TRUE(parley::testing::WaitFor([&] { return adapter_.use_count() == 1; },
                                         std::chrono::milliseconds(kWaitMs)));
    adapter_.reset();
  }

  std::string Room(const std::vector<std::string>& members = {kAlice, kBot, kBob}) {
    return server_->CreateRoom(kAlice, members);
  }

  // Waits until the sink has seen an event with this id; false on timeout.
  bool WaitInbound(const std::string& event_id) {
    return parley::testing::WaitFor(
        [&] {
          for (size_t i = 0; i < sink_.count(); ++i) {
            if (sink_.message(i).event_id == event_id) return true;
          }
          return false;
        },
        std::chrono::milliseconds(kWaitMs));
  }

  // How often each event id reached the sink.
  std::map<std::string, int> InboundCounts() {
    std::map<std::string, int> counts;
    for (size_t i = 0; i < sink_.count(); ++i) counts[sink_.message(i).event_id] += 1;
    return counts;
  }

  InboundMessage Inbound(const std::string& event_id) {
    for (size_t i = 0; i < sink_.count(); ++i) {
      if (sink_.message(i).event_id == event_id) return sink_.message(i);
    }
    return {};
  }

  OutboundMessage ReplyTo(const InboundMessage& m, const std::string& id, const std::string& text) {
    OutboundMessage r;
    r.id = id;
    r.conversation = m.conversation();
    r.in_reply_to = m.event_id;
    r.text = text;
    r.turn_id = "turn-" + id;
    return r;
  }

  // Sends a reply as the engine does: the outbox record first (the router writes it with the
  // turn), then Send.
  Status SendReply(const OutboundMessage& reply) {
    store::OutboxEntry entry;
    entry.id = reply.id;
    entry.platform = "matrix";
    entry.payload = json(reply).dump();
    entry.created_ms = SystemClock::Instance().NowMs();
    store::WriteBatch batch;
    store::Outbox(*kv_).Put(batch, entry);
    Status written = kv_->Write(batch, true);
    if (!written.ok()) return written;
    std::promise<Status> queued;
    adapter_->Send(reply, [&queued](Status s) { queued.set_value(s); });
    return queued.get_future().get();
  }

  // The bot's m.room.message events in room (edits included).
  std::vector<MatrixEvent> BotMessages(const std::string& room) {
    std::vector<MatrixEvent> out;
    for (const MatrixEvent& e : server_->Events(room)) {
      if (e.sender == kBot && e.type == "m.room.message") out.push_back(e);
    }
    return out;
  }

  std::vector<MatrixEvent> BotMessagesWithBody(const std::string& room, const std::string& body) {
    std::vector<MatrixEvent> out;
    for (const MatrixEvent& e : BotMessages(room)) {
      if (e.content.value("body", "") == body) out.push_back(e);
    }
    return out;
  }

  bool OutboxEmpty() {
    return parley::testing::WaitFor(
        [&] {
          auto n = store::Outbox(*kv_).Count("matrix");
          return n.ok() && *n == 0;
        },
        std::chrono::milliseconds(kWaitMs));
  }

  size_t FatalCount() {
    std::lock_guard<std::mutex> lock(mu_);
    return fatal_.size();
  }

  std::unique_ptr<MatrixServer> server_;
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
  config::MatrixConfig config_;
  parley::testing::RecordingInboundSink sink_;
  parley::testing::RecordingDeliveryListener listener_{"matrix"};
  std::shared_ptr<MatrixAdapter> adapter_;
  std::mutex mu_;
  std::vector<Status> fatal_;
};

TEST_F(MatrixAdapterTest, FirstStartSkipsBacklogAndTakesOnlyMessagesAddressedToIt) {
  const std::string room = Room();
  const std::string backlog = server_->SendText(room, kAlice, "parley: an old question", M(kBot));
  StartAdapter();
  EXPECT_EQ(server_->UploadedFilters().size(), 1u);
  const json filter = server_->UploadedFilters()[0];
  EXPECT_EQ(filter["room"]["timeline"]["limit"], config_.timeline_limit);

  const std::string via_mentions =
      server_->SendText(room, kAlice, "Parley: what is the VPN address?", M(kBot));
  const std::string legacy = server_->SendText(room, kBob, "parley what about wifi?");
  const std::string other_mention =
      server_->SendText(room, kBob, "parley is asleep, ask alice", M(kAlice));
  const std::string unaddressed = server_->SendText(room, kBob, "lunch?");
  const std::string own = server_->SendText(room, kBot, "parley: talking to myself", M(kBot));
  const std::string notice = server_->SendEvent(
      room, kBob, "m.room.message",
      {{"msgtype", "m.notice"}, {"body", "parley: hi"}, {"m.mentions", {{"user_ids", {kBot}}}}});
  const std::string edit = server_->SendEvent(
      room, kAlice, "m.room.message",
      {{"msgtype", "m.text"},
       {"body", "* parley: edited"},
       {"m.mentions", {{"user_ids", {kBot}}}},
       {"m.new_content", {{"msgtype", "m.text"}, {"body", "parley: edited"}}},
       {"m.relates_to", {{"rel_type", "m.replace"}, {"event_id", via_mentions}}}});
  const std::string sentinel = server_->SendText(room, kAlice, "last one", M(kBot));
  ASSERT_TRUE(WaitInbound(sentinel));

  auto counts = InboundCounts();
  EXPECT_EQ(counts.size(), 3u);
  EXPECT_EQ(counts[via_mentions], 1);
  EXPECT_EQ(counts[legacy], 1);
  EXPECT_EQ(counts[sentinel], 1);
  for (const std::string& id : {backlog, other_mention, unaddressed, own, notice, edit}) {
    EXPECT_EQ(counts.count(id), 0u) << id;
  }
  const InboundMessage m = Inbound(via_mentions);
  EXPECT_EQ(m.platform, "matrix");
  EXPECT_EQ(m.channel, room);
  EXPECT_EQ(m.user, kAlice);
  EXPECT_EQ(m.user_name, "alice");  // the member event's displayname
  EXPECT_EQ(m.text, "what is the VPN address?");
  EXPECT_TRUE(m.mentions_bot);
  EXPECT_FALSE(m.is_direct);
  EXPECT_EQ(m.thread, via_mentions);
  EXPECT_EQ(Inbound(legacy).text, "what about wifi?");
}

TEST_F(MatrixAdapterTest, DirectMessageInviteIsJoinedAndEveryMessageAnswered) {
  StartAdapter();
  const std::string dm = server_->CreateRoom(kAlice, {kAlice});
  server_->Invite(dm, kAlice, kBot, /*is_direct=*/true);
  ASSERT_TRUE(server_->WaitFor([&] {
    auto members = server_->JoinedMembers(dm);
    return std::find(members.begin(), members.end(), kBot) != members.end();
  }));
  const std::string hello = server_->SendText(dm, kAlice, "hello, how do I get a badge?");
  ASSERT_TRUE(WaitInbound(hello));
  const InboundMessage m = Inbound(hello);
  EXPECT_TRUE(m.is_direct);
  EXPECT_EQ(m.thread, "");
  EXPECT_EQ(m.text, "hello, how do I get a badge?");

  // An invite from another server is declined (default policy: own server only).
  const std::string foreign = server_->CreateRoom("@mallory:evil.example", {});
  server_->Invite(foreign, "@mallory:evil.example", kBot);
  ASSERT_TRUE(server_->WaitFor([&] { return server_->RequestCount("leave") >= 1; }));
  auto members = server_->JoinedMembers(foreign);
  EXPECT_EQ(std::find(members.begin(), members.end(), kBot), members.end());
}

TEST_F(MatrixAdapterTest, RepliesGoInTheThreadWithFallbackTypingAndReceipts) {
  const std::string room = Room();
  StartAdapter();
  const std::string question = server_->SendText(room, kAlice, "parley: how to reset?", M(kBot));
  ASSERT_TRUE(WaitInbound(question));
  ASSERT_TRUE(server_->WaitFor([&] { return !server_->TypingCalls().empty(); }));
  EXPECT_EQ(server_->TypingCalls()[0].value("typing", false), true);

  OutboundMessage reply = ReplyTo(Inbound(question), "reply-1", "Use **reset** in settings.");
  reply.citations.push_back(Citation{"Reset guide", "reset.md", "", "https://kb.example/reset"});
  ASSERT_TRUE(SendReply(reply).ok());
  ASSERT_TRUE(server_->WaitFor([&] { return BotMessages(room).size() == 1; }));
  const MatrixEvent posted = BotMessages(room)[0];
  EXPECT_EQ(posted.content["msgtype"], "m.notice");
  EXPECT_EQ(posted.content["format"], "org.matrix.custom.html");
  EXPECT_NE(posted.content["formatted_body"].get<std::string>().find("<strong>reset</strong>"),
            std::string::npos);
  EXPECT_NE(posted.content["formatted_body"].get<std::string>().find(
                "<a href=\"https://kb.example/reset\">Reset guide</a>"),
            std::string::npos);
  const json& rel = posted.content["m.relates_to"];
  EXPECT_EQ(rel["rel_type"], "m.thread");
  EXPECT_EQ(rel["event_id"], question);
  EXPECT_EQ(rel["is_falling_back"], true);
  EXPECT_EQ(rel["m.in_reply_to"]["event_id"], question);
  EXPECT_EQ(posted.txn_id, "reply-1.0");
  EXPECT_TRUE(OutboxEmpty());
  ASSERT_TRUE(parley::testing::WaitFor([&] { return !listener_.all().empty(); }));
  EXPECT_EQ(listener_.all()[0].platform_message_id, posted.event_id);
  EXPECT_EQ(listener_.all()[0].message_id, "reply-1");
  EXPECT_TRUE(listener_.in_outbox()[0]);  // reported before the outbox entry was removed
  ASSERT_TRUE(server_->WaitFor([&] {
    auto calls = server_->TypingCalls();
    return !calls.empty() && calls.back().value("typing", true) == false;
  }));

  // A follow-up in the thread needs no mention.
  const std::string followup =
      server_->SendText(room, kBob, "and on Windows?", std::nullopt, question);
  ASSERT_TRUE(WaitInbound(followup));
  EXPECT_EQ(Inbound(followup).thread, question);
}

TEST_F(MatrixAdapterTest, RichReplyWhenThreadsAreOff) {
  config_.threads = false;
  config_.msgtype = "m.text";
  const std::string room = Room();
  StartAdapter();
  const std::string question = server_->SendText(room, kAlice, "parley: hi", M(kBot));
  ASSERT_TRUE(WaitInbound(question));
  EXPECT_EQ(Inbound(question).thread, "");
  ASSERT_TRUE(SendReply(ReplyTo(Inbound(question), "rich-1", "hello")).ok());
  ASSERT_TRUE(server_->WaitFor([&] { return BotMessages(room).size() == 1; }));
  const json content = BotMessages(room)[0].content;
  EXPECT_EQ(content["msgtype"], "m.text");
  EXPECT_EQ(content["m.relates_to"], (json{{"m.in_reply_to", {{"event_id", question}}}}));
}

TEST_F(MatrixAdapterTest, BurstLargerThanTheTimelineLimitIsDeliveredOnce) {
  config_.timeline_limit = 5;
  const std::string room = Room();
  StartAdapter();
  std::vector<std::string> ids;
  for (int i = 0; i < 40; ++i) {
    ids.push_back(server_->SendText(room, kAlice, "parley: q" + std::to_string(i), M(kBot)));
  }
  ASSERT_TRUE(WaitInbound(ids.back()));
  // The batch is finished (its cursor stored) once the next long-poll is held: a batch cut off
  // by the stop would come again after the restart (which the router's de-duplication absorbs,
  // but this sink counts).
  ASSERT_TRUE(server_->WaitFor([&] { return server_->PendingSyncs() >= 1; }));
  // While stopped: a larger burst, answered after the restart from the gap.
  StopAdapter();
  std::vector<std::string> later;
  for (int i = 0; i < 30; ++i) {
    later.push_back(server_->SendText(room, kBob, "parley: later " + std::to_string(i), M(kBot)));
  }
  StartAdapter();
  for (const std::string& id : later) ASSERT_TRUE(WaitInbound(id)) << id;
  auto counts = InboundCounts();
  for (const std::string& id : ids) EXPECT_EQ(counts[id], 1) << id;
  for (const std::string& id : later) EXPECT_EQ(counts[id], 1) << id;
  EXPECT_EQ(counts.size(), ids.size() + later.size());
  EXPECT_GE(server_->RequestCount("messages"), 1);
  // In order within the room.
  size_t last_pos = 0;
  for (const std::string& id : later) {
    for (size_t i = 0; i < sink_.count(); ++i) {
      if (sink_.message(i).event_id == id) {
        EXPECT_GT(i, last_pos);
        last_pos = i;
      }
    }
  }
}

TEST_F(MatrixAdapterTest, RestartResumesFromTheStoredCursorWithoutReplay) {
  const std::string room = Room();
  StartAdapter();
  const std::string before = server_->SendText(room, kAlice, "parley: first", M(kBot));
  ASSERT_TRUE(WaitInbound(before));
  // Its batch is finished once the next long-poll is held (see the burst test).
  ASSERT_TRUE(server_->WaitFor([&] { return server_->PendingSyncs() >= 1; }));
  StopAdapter();
  const std::string during =
      server_->SendText(room, kAlice, "parley: while you were down", M(kBot));
  StartAdapter();
  ASSERT_TRUE(WaitInbound(during));
  const std::string after = server_->SendText(room, kAlice, "parley: after", M(kBot));
  ASSERT_TRUE(WaitInbound(after));
  auto counts = InboundCounts();
  EXPECT_EQ(counts[before], 1);
  EXPECT_EQ(counts[during], 1);
  EXPECT_EQ(counts[after], 1);
  EXPECT_EQ(counts.size(), 3u);
}

TEST_F(MatrixAdapterTest, LostSendResponseIsRetriedWithTheSameTxnIdAndShownOnce) {
  const std::string room = Room();
  StartAdapter();
  const std::string q = server_->SendText(room, kAlice, "parley: q", M(kBot));
  ASSERT_TRUE(WaitInbound(q));
  server_->LoseResponseNext("send");
  ASSERT_TRUE(SendReply(ReplyTo(Inbound(q), "lost-1", "the answer")).ok());
  ASSERT_TRUE(OutboxEmpty());
  EXPECT_GE(server_->RequestCount("send"), 2);
  auto shown = BotMessagesWithBody(room, "the answer");
  ASSERT_EQ(shown.size(), 1u);
  EXPECT_EQ(shown[0].txn_id, "lost-1.0");
  ASSERT_TRUE(parley::testing::WaitFor([&] { return !listener_.all().empty(); }));
  EXPECT_EQ(listener_.all().back().platform_message_id, shown[0].event_id);
}

TEST_F(MatrixAdapterTest, ReplyInTheOutboxAfterACrashIsSentOnceWithItsTxnId) {
  const std::string room = Room();
  OutboundMessage reply;
  reply.id = "crash-1";
  reply.conversation = ConversationKey{"matrix", room, ""};
  reply.in_reply_to = "$question";
  reply.text = "answer from before the crash";
  // The previous run sent it (its response was lost), then crashed before removing the entry.
  const auto contents = BuildReplyContents(reply, ReplyOptions{});
  net::ClientRequest put;
  put.method = "PUT";
  // The same path as the adapter's (the txnId scope is the path, as sent).
  put.url = server_->base_url() + "/_matrix/client/v3/rooms/" + PercentEncode(room) +
            "/send/m.room.message/crash-1.0";
  put.headers = {{"Authorization", "Bearer " + server_->options().bot_access_token},
                 {"Content-Type", "application/json"}};
  put.body = contents[0].dump();
  auto sent = net::BlockingRequest(put);
  ASSERT_TRUE(sent.ok());
  ASSERT_EQ(sent->status, 200) << sent->body;
  store::OutboxEntry entry;
  entry.id = reply.id;
  entry.platform = "matrix";
  entry.payload = json(reply).dump();
  store::WriteBatch batch;
  store::Outbox(*kv_).Put(batch, entry);
  ASSERT_TRUE(kv_->Write(batch, true).ok());

  StartAdapter();
  ASSERT_TRUE(OutboxEmpty());
  EXPECT_EQ(BotMessagesWithBody(room, "answer from before the crash").size(), 1u);
}

TEST_F(MatrixAdapterTest, RateLimitStormsAndSyncFaultsLoseNothing) {
  const std::string room = Room();
  const std::string room2 = Room();
  StartAdapter();
  server_->HtmlErrorNext("sync", 502, 1);
  server_->MalformedNext("sync", 1);
  server_->DropNext("sync", 1);
  server_->FailNext("sync", 500, 1);
  server_->FailNext("sync", 429, 2, 50, /*retry_after_header=*/false);
  std::vector<std::string> questions;
  for (int i = 0; i < 6; ++i) {
    questions.push_back(server_->SendText(i % 2 ? room2 : room, kAlice,
                                          "parley: storm " + std::to_string(i), M(kBot)));
  }
  for (const std::string& q : questions) ASSERT_TRUE(WaitInbound(q)) << q;
  server_->FailNext("send", 429, 6, 40, /*retry_after_header=*/false);
  server_->FailNext("send", 503, 1);
  server_->HtmlErrorNext("send", 504, 1);
  server_->DropNext("send", 1);
  for (size_t i = 0; i < questions.size(); ++i) {
    ASSERT_TRUE(SendReply(ReplyTo(Inbound(questions[i]), "storm-" + std::to_string(i),
                                  "answer " + std::to_string(i)))
                    .ok());
  }
  ASSERT_TRUE(OutboxEmpty());
  for (size_t i = 0; i < questions.size(); ++i) {
    const std::string& r = i % 2 ? room2 : room;
    EXPECT_EQ(BotMessagesWithBody(r, "answer " + std::to_string(i)).size(), 1u) << i;
  }
  // Order within each room.
  for (const std::string& r : {room, room2}) {
    int last = -1;
    for (const MatrixEvent& e : BotMessages(r)) {
      const int n = std::stoi(e.content.value("body", "answer -1").substr(7));
      EXPECT_GT(n, last);
      last = n;
    }
  }
  auto counts = InboundCounts();
  for (const std::string& q : questions) EXPECT_EQ(counts[q], 1);
  EXPECT_EQ(FatalCount(), 0u);
}

TEST_F(MatrixAdapterTest, EncryptedRoomInviteIsDeclinedWhenConfigured) {
  config_.encrypted_rooms = config::MatrixEncryptedRooms::kDecline;
  StartAdapter();
  const std::string room = server_->CreateRoom(kAlice, {kAlice}, /*encrypted=*/true);
  server_->Invite(room, kAlice, kBot);
  ASSERT_TRUE(server_->WaitFor([&] { return server_->RequestCount("leave") >= 1; }));
  EXPECT_EQ(server_->RequestCount("join"), 0);
  auto members = server_->JoinedMembers(room);
  EXPECT_EQ(std::find(members.begin(), members.end(), kBot), members.end());
}

TEST_F(MatrixAdapterTest, EncryptedRoomGetsOneNoticeWhenConfigured) {
  config_.encrypted_rooms = config::MatrixEncryptedRooms::kNotice;
  StartAdapter();
  const std::string room = server_->CreateRoom(kAlice, {kAlice}, /*encrypted=*/true);
  server_->Invite(room, kAlice, kBot);
  ASSERT_TRUE(server_->WaitFor([&] { return BotMessages(room).size() == 1; }));
  const MatrixEvent notice = BotMessages(room)[0];
  EXPECT_EQ(notice.content["msgtype"], "m.notice");
  EXPECT_NE(notice.content["body"].get<std::string>().find("encrypted"), std::string::npos);
  // Encrypted traffic afterwards is not answered and no second notice follows.
  server_->SendEvent(room, kAlice, "m.room.encrypted",
                     {{"algorithm", "m.megolm.v1.aes-sha2"}, {"ciphertext", "xyz"}});
  const std::string plain = Room({kAlice, kBot});
  (void)plain;
  const std::string sentinel = server_->SendText(plain, kAlice, "parley: ping", M(kBot));
  ASSERT_TRUE(WaitInbound(sentinel));
  EXPECT_EQ(BotMessages(room).size(), 1u);
  EXPECT_EQ(sink_.count(), 1u);
}

TEST_F(MatrixAdapterTest, UnknownTokenCallsOnFatalOnceAndStopsSyncing) {
  StartAdapter();
  server_->InvalidateToken(/*soft_logout=*/false);
  ASSERT_TRUE(parley::testing::WaitFor([&] { return FatalCount() >= 1; },
                                       std::chrono::milliseconds(kWaitMs)));
  const int syncs = server_->RequestCount("sync");
  // A few more round trips of the fake: no new syncs, no second fatal.
  const std::string room = Room();
  server_->SendText(room, kAlice, "parley: anyone?", M(kBot));
  EXPECT_FALSE(server_->WaitFor([&] { return server_->RequestCount("sync") > syncs; }, 300));
  EXPECT_EQ(FatalCount(), 1u);
  EXPECT_EQ(fatal_[0].code(), Status::Code::kPermissionDenied);
}

TEST_F(MatrixAdapterTest, PasswordLoginIsStoredReusedAndRenewedAfterSoftLogout) {
  config_.access_token = Secret();
  config_.password = Secret(server_->options().bot_password);
  config_.device_id = "PARLEYDEV";
  const std::string room = Room();
  StartAdapter();
  EXPECT_EQ(server_->RequestCount("login"), 1);
  const std::string device = adapter_->DeviceId();
  EXPECT_EQ(device, "PARLEYDEV");
  StopAdapter();
  StartAdapter();
  EXPECT_EQ(server_->RequestCount("login"), 1);  // the stored token is reused
  EXPECT_EQ(adapter_->DeviceId(), device);

  server_->InvalidateToken(/*soft_logout=*/true);
  ASSERT_TRUE(server_->WaitFor([&] { return server_->RequestCount("login") == 2; }));
  const std::string q = server_->SendText(room, kAlice, "parley: still there?", M(kBot));
  ASSERT_TRUE(WaitInbound(q));
  EXPECT_EQ(adapter_->DeviceId(), device);
  EXPECT_EQ(FatalCount(), 0u);
}

TEST_F(MatrixAdapterTest, ForgottenFilterIsUploadedAgain) {
  const std::string room = Room();
  StartAdapter();
  server_->ForgetFilters();
  // Wake the long-poll so the next /sync uses the forgotten id.
  server_->SendText(room, kBob, "noise");
  ASSERT_TRUE(server_->WaitFor([&] { return server_->UploadedFilters().size() >= 2; }));
  const std::string q = server_->SendText(room, kAlice, "parley: after the wipe", M(kBot));
  ASSERT_TRUE(WaitInbound(q));
}

TEST_F(MatrixAdapterTest, StreamingPostsOnceThenEditsToTheCompleteAnswer) {
  const std::string room = Room();
  StartAdapter();
  const std::string q = server_->SendText(room, kAlice, "parley: stream please", M(kBot));
  ASSERT_TRUE(WaitInbound(q));
  OutboundMessage reply = ReplyTo(Inbound(q), "stream-1", "The complete answer, with details.");
  OutboundMessage partial = reply;
  partial.text = "The complete";
  adapter_->SendPartial(partial);
  ASSERT_TRUE(server_->WaitFor([&] { return BotMessages(room).size() == 1; }));
  partial.text = "The complete answer";
  adapter_->SendPartial(partial);
  ASSERT_TRUE(server_->WaitFor([&] { return BotMessages(room).size() == 2; }));
  ASSERT_TRUE(SendReply(reply).ok());
  ASSERT_TRUE(OutboxEmpty());
  auto events = BotMessages(room);
  ASSERT_GE(events.size(), 3u);
  const MatrixEvent original = events[0];
  EXPECT_EQ(original.content["body"], "The complete");
  EXPECT_EQ(original.content["m.relates_to"]["rel_type"], "m.thread");
  for (size_t i = 1; i < events.size(); ++i) {
    const json& c = events[i].content;
    EXPECT_EQ(c["m.relates_to"]["rel_type"], "m.replace");
    EXPECT_EQ(c["m.relates_to"]["event_id"], original.event_id);
    EXPECT_EQ(c["m.mentions"], json::object());
    EXPECT_TRUE(c["m.new_content"].contains("formatted_body"));
  }
  EXPECT_EQ(events.back().content["m.new_content"]["body"], "The complete answer, with details.");
  ASSERT_TRUE(parley::testing::WaitFor([&] { return !listener_.all().empty(); }));
  EXPECT_EQ(listener_.all().back().platform_message_id, original.event_id);
  // A late partial changes nothing.
  partial.text = "stale";
  adapter_->SendPartial(partial);
  EXPECT_FALSE(server_->WaitFor([&] { return BotMessages(room).size() > events.size(); }, 300));
}

TEST_F(MatrixAdapterTest, PartialAnswerLeftByACrashIsFinishedByTheAnswerOfTheReplayedTurn) {
  const std::string room = Room();
  StartAdapter();
  const std::string q = server_->SendText(room, kAlice, "parley: stream please", M(kBot));
  ASSERT_TRUE(WaitInbound(q));
  OutboundMessage partial = ReplyTo(Inbound(q), "turn-before-crash", "The compl");
  adapter_->SendPartial(partial);
  ASSERT_TRUE(server_->WaitFor([&] { return BotMessages(room).size() == 1; }));
  const std::string posted = BotMessages(room)[0].event_id;
  // The daemon dies before the final: the turn runs again after the restart, with a new id.
  StopAdapter();
  StartAdapter();
  ASSERT_TRUE(SendReply(ReplyTo(Inbound(q), "turn-after-restart", "The complete answer.")).ok());
  ASSERT_TRUE(OutboxEmpty());
  const auto events = BotMessages(room);
  ASSERT_EQ(events.size(), 2u);  // the partial and one edit of it: no second answer
  EXPECT_EQ(events[1].content["m.relates_to"]["rel_type"], "m.replace");
  EXPECT_EQ(events[1].content["m.relates_to"]["event_id"], posted);
  EXPECT_EQ(events[1].content["m.new_content"]["body"], "The complete answer.");
  ASSERT_TRUE(parley::testing::WaitFor([&] { return !listener_.all().empty(); }));
  EXPECT_EQ(listener_.all().back().platform_message_id, posted);
  // Done with: once its record is gone, the next answer to the same question posts normally.
  ASSERT_TRUE(
      parley::testing::WaitFor([&] { return !kv_->Get(store::keys::MatrixPartial(room, q)).ok(); },
                               std::chrono::milliseconds(kWaitMs)));
  ASSERT_TRUE(SendReply(ReplyTo(Inbound(q), "another", "Another answer.")).ok());
  ASSERT_TRUE(server_->WaitFor([&] { return BotMessages(room).size() >= 3; }));
  const auto after = BotMessages(room);
  ASSERT_EQ(after.size(), 3u);
  EXPECT_FALSE(after[2].content["m.relates_to"].contains("rel_type") &&
               after[2].content["m.relates_to"]["rel_type"] == "m.replace");
}

TEST_F(MatrixAdapterTest, RateLimitInOneRoomDoesNotStallAnother) {
  const std::string slow = Room();
  const std::string fast = Room();
  StartAdapter();
  const std::string q1 = server_->SendText(slow, kAlice, "parley: one", M(kBot));
  const std::string q2 = server_->SendText(fast, kAlice, "parley: two", M(kBot));
  ASSERT_TRUE(WaitInbound(q1));
  ASSERT_TRUE(WaitInbound(q2));
  // The first send (room `slow`) must wait 3 s.
  server_->FailNext("send", 429, 1, 3'000, /*retry_after_header=*/true);
  ASSERT_TRUE(SendReply(ReplyTo(Inbound(q1), "slow-1", "slow answer")).ok());
  ASSERT_TRUE(server_->WaitFor([&] { return server_->RequestCount("send") >= 1; }));
  ASSERT_TRUE(SendReply(ReplyTo(Inbound(q2), "fast-1", "fast answer")).ok());
  ASSERT_TRUE(server_->WaitFor([&] { return BotMessages(fast).size() == 1; }, 2'000));
  EXPECT_EQ(BotMessages(slow).size(), 0u);  // still waiting for Retry-After
  ASSERT_TRUE(server_->WaitFor([&] { return BotMessages(slow).size() == 1; }));
}

TEST_F(MatrixAdapterTest, JoinRetriesAfterRateLimitAndKickIsForgotten) {
  StartAdapter();
  const std::string room = server_->CreateRoom(kAlice, {kAlice, kBob});
  server_->FailNext("join", 429, 2, 30, /*retry_after_header=*/false);
  server_->Invite(room, kAlice, kBot);
  auto joined = [&] {
    auto members = server_->JoinedMembers(room);
    return std::find(members.begin(), members.end(), kBot) != members.end();
  };
  ASSERT_TRUE(server_->WaitFor(joined));
  EXPECT_GE(server_->RequestCount("join"), 3);  // two refused, then joined
  server_->Kick(room, kAlice, kBot);
  ASSERT_TRUE(server_->WaitFor([&] { return !joined(); }));
  // Invited again: the room was forgotten, so the bot joins again.
  server_->Invite(room, kAlice, kBot);
  ASSERT_TRUE(server_->WaitFor(joined));
  const std::string q = server_->SendText(room, kAlice, "parley: welcome back", M(kBot));
  ASSERT_TRUE(WaitInbound(q));
}

TEST_F(MatrixAdapterTest, LongReplyIsSplitIntoSeveralEventsInTheThread) {
  const std::string room = Room();
  StartAdapter();
  const std::string q = server_->SendText(room, kAlice, "parley: tell me everything", M(kBot));
  ASSERT_TRUE(WaitInbound(q));
  std::string text;
  for (int i = 0; i < 9'000; ++i) text += "line " + std::to_string(i) + (i % 10 ? " " : "\n\n");
  ASSERT_GT(text.size(), 65'536u);
  ASSERT_TRUE(SendReply(ReplyTo(Inbound(q), "long-1", text)).ok());
  ASSERT_TRUE(OutboxEmpty());
  auto events = BotMessages(room);
  ASSERT_GT(events.size(), 1u);
  std::string all;
  for (size_t i = 0; i < events.size(); ++i) {
    EXPECT_EQ(events[i].txn_id, "long-1." + std::to_string(i));
    EXPECT_EQ(events[i].content["m.relates_to"]["event_id"], q);
    EXPECT_LT(events[i].content.dump().size(), 65'536u);
    all += events[i].content["body"].get<std::string>() + " ";
  }
  EXPECT_NE(all.find("line 0"), std::string::npos);
  EXPECT_NE(all.find("line 8999"), std::string::npos);
}

TEST_F(MatrixAdapterTest, BurstOfPartialsIsCoalescedIntoFewEdits) {
  config_.stream_interval_ms = 300;
  const std::string room = Room();
  StartAdapter();
  const std::string q = server_->SendText(room, kAlice, "parley: stream a lot", M(kBot));
  ASSERT_TRUE(WaitInbound(q));
  OutboundMessage reply = ReplyTo(Inbound(q), "burst-1", "");
  std::string text;
  for (int i = 0; i < 40; ++i) {
    text += "word" + std::to_string(i) + " ";
    OutboundMessage partial = reply;
    partial.text = text;
    adapter_->SendPartial(partial);
  }
  reply.text = text + "done.";
  ASSERT_TRUE(SendReply(reply).ok());
  ASSERT_TRUE(OutboxEmpty());
  auto events = BotMessages(room);
  // One post (the placeholder, unless the final came before it went out), few partial edits, and
  // the final edit; what users see is the complete answer.
  ASSERT_GE(events.size(), 1u);
  EXPECT_LE(events.size(), 5u);
  const json& last = events.back().content;
  const std::string shown = last.contains("m.new_content") ? last["m.new_content"].value("body", "")
                                                           : last.value("body", "");
  EXPECT_EQ(shown, reply.text);
}

TEST_F(MatrixAdapterTest, MessageTheBotPostedFirstRootsAThreadItFollows) {
  // E.g. an escalation desk card in an agents' room: agents answer in its thread, unmentioned.
  const std::string room = Room();
  StartAdapter();
  OutboundMessage card;
  card.id = "card-1";
  card.conversation = ConversationKey{"matrix", room, ""};
  card.text = "Ticket #7: someone needs help";
  std::promise<Status> queued;
  adapter_->Send(card, [&queued](Status s) { queued.set_value(s); });
  ASSERT_TRUE(queued.get_future().get().ok());
  ASSERT_TRUE(parley::testing::WaitFor([&] { return !listener_.all().empty(); },
                                       std::chrono::milliseconds(kWaitMs)));
  const DeliveryReceipt receipt = listener_.all()[0];
  EXPECT_EQ(receipt.message_id, "card-1");
  ASSERT_EQ(BotMessages(room).size(), 1u);
  EXPECT_EQ(receipt.platform_message_id, BotMessages(room)[0].event_id);
  EXPECT_FALSE(BotMessages(room)[0].content.contains("m.relates_to"));
  ASSERT_TRUE(OutboxEmpty());
  const std::string command =
      server_->SendText(room, kBob, "claim", std::nullopt, receipt.platform_message_id);
  ASSERT_TRUE(WaitInbound(command));
  EXPECT_EQ(Inbound(command).thread, receipt.platform_message_id);
}

TEST_F(MatrixAdapterTest, ManyRoomsManyMessagesNoneLostOrDoubled) {
  constexpr int kRooms = 10;
  constexpr int kPerRoom = 50;
  std::vector<std::string> rooms;
  for (int r = 0; r < kRooms; ++r) rooms.push_back(Room());
  StartAdapter();
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::string> ids;
  for (int i = 0; i < kPerRoom; ++i) {
    for (int r = 0; r < kRooms; ++r) {
      ids.push_back(server_->SendText(
          rooms[r], kAlice, "parley: q" + std::to_string(r) + "-" + std::to_string(i), M(kBot)));
    }
  }
  // The engine's part: answer each message as it arrives.
  size_t answered = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (answered < ids.size() && std::chrono::steady_clock::now() < deadline) {
    if (sink_.count() == answered) {
      parley::testing::WaitFor([&] { return sink_.count() > answered; },
                               std::chrono::milliseconds(50));
      continue;
    }
    const InboundMessage m = sink_.message(answered);
    ASSERT_TRUE(SendReply(ReplyTo(m, "many-" + std::to_string(answered), "a: " + m.text)).ok());
    answered += 1;
  }
  ASSERT_EQ(answered, ids.size());
  ASSERT_TRUE(OutboxEmpty());
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("matrix: %zu messages in %d rooms received and answered in %.2f s (%.0f/s)\n",
              ids.size(), kRooms, seconds, static_cast<double>(ids.size()) / seconds);
  auto counts = InboundCounts();
  EXPECT_EQ(counts.size(), ids.size());
  for (const std::string& id : ids) EXPECT_EQ(counts[id], 1) << id;
  size_t replies = 0;
  for (const std::string& room : rooms) replies += BotMessages(room).size();
  EXPECT_EQ(replies, ids.size());
}

TEST_F(MatrixAdapterTest, HardLogoutOfTheStoredLoginLogsInOnceThenStops) {
  config_.access_token = Secret();
  config_.password = Secret(server_->options().bot_password);
  const std::string room = Room();
  StartAdapter();
  EXPECT_EQ(server_->RequestCount("login"), 1);
  server_->InvalidateToken(/*soft_logout=*/false);
  ASSERT_TRUE(server_->WaitFor([&] { return server_->RequestCount("login") == 2; }));
  const std::string q = server_->SendText(room, kAlice, "parley: back?", M(kBot));
  ASSERT_TRUE(WaitInbound(q));
  EXPECT_EQ(FatalCount(), 0u);
  // Again within the minute: no login loop, one clear stop.
  server_->InvalidateToken(/*soft_logout=*/false);
  ASSERT_TRUE(parley::testing::WaitFor([&] { return FatalCount() == 1; },
                                       std::chrono::milliseconds(kWaitMs)));
  EXPECT_EQ(server_->RequestCount("login"), 2);
  EXPECT_FALSE(server_->WaitFor([&] { return FatalCount() > 1; }, 300));
}

}  // namespace
}  // namespace parley::matrix
