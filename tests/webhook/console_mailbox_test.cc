// The console adapter's mailbox of unsolicited messages (messages that answer no request: cards
// in an agents' console, an agent's replies to a console user): DeliversDurably, the outbox
// entries the sender writes and the adapter removes once a listener took the message, resuming
// from the outbox at Start, the per-conversation bound, in-process listeners (Listen), the
// GET /v1/local/listen event stream behind a real net::HttpServer on a Unix-domain socket, and
// RunTerminal printing such messages between turns. The store is a real LevelDB in a temp dir.
// (Kept under tests/webhook/ because the console adapter has no test directory yet.)

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <streambuf>
#include <string>
#include <thread>
#include <vector>

#include "adapters/common/http_json.h"
#include "adapters/common/reply_stream.h"
#include "adapters/console/console_adapter.h"
#include "core/clock.h"
#include "core/percent.h"
#include "store/committer.h"
#include "store/keys.h"
#include "store/kv_store.h"
#include "store/records.h"
#include "tests/support/io_threads.h"
#include "tests/support/recording_inbound_sink.h"
#include "tests/support/temp_dir.h"

namespace parley::console {
namespace {

using nlohmann::json;
using parley::testing::WaitFor;

constexpr std::chrono::milliseconds kSlowWait{20'000};  // a thousand messages over a socket

class NoControl final : public ConversationControl {
 public:
  void Forget(const ConversationKey&, ForgetCallback done) override { done(size_t{0}); }
  void ForgetUser(const std::string&, const std::string&, ForgetCallback done) override {
    done(size_t{0});
  }
};

// An unsolicited message in a console conversation.
OutboundMessage Unsolicited(const std::string& id, const std::string& text,
                            const std::string& conversation = "agents") {
  OutboundMessage m;
  m.id = id;
  m.conversation = ConversationKey{kPlatform, conversation, ""};
  m.text = text;
  return m;
}

std::vector<std::string> Ids(const std::vector<OutboundMessage>& messages) {
  std::vector<std::string> ids;
  for (const auto& m : messages) ids.push_back(m.id);
  return ids;
}

// What a client of GET /v1/local/listen saw. Thread-safe.
struct ListenView {
  std::mutex mu;
  int status = 0;
  std::string content_type;
  std::string raw;
  std::vector<OutboundMessage> messages;
  std::string error;

  std::vector<std::string> MessageIds() {
    std::lock_guard<std::mutex> lock(mu);
    return Ids(messages);
  }
  std::vector<OutboundMessage> Messages() {
    std::lock_guard<std::mutex> lock(mu);
    return messages;
  }
};

class MailboxTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto opened = store::OpenLevelDb(dir_.Sub("db"));
    ASSERT_TRUE(opened.ok()) << opened.status().ToString();
    kv_ = std::move(opened).value();
    committer_ = std::make_unique<store::Committer>(*kv_);
    adapter_ = std::make_unique<ConsoleAdapter>(control_, "tester", *kv_, *committer_);
    server_ = std::make_unique<net::HttpServer>(
        io_.io, net::HttpServerOptions{},
        [adapter = adapter_.get()](net::HttpRequest req, net::Responder respond) {
          if (!adapter->HandleLocal(req, respond)) {
            respond(adapters::JsonError(404, "not_found", "no such path"));
          }
        });
    socket_ = dir_.Sub("parley.sock");
    ASSERT_TRUE(server_->ListenUnix(socket_).ok());
  }
  void TearDown() override {
    // Ends the listen streams still open, so their clients return.
    if (adapter_) adapter_->Stop(nullptr);
    for (auto& client : clients_) client.wait();
    if (server_) server_->Stop();
  }

  void Start() { ASSERT_TRUE(adapter_->Start(sink_).ok()); }

  // Records the outbox entry as the engine or the desk does (before Send), then sends.
  Status Owe(const OutboundMessage& m, int64_t created_ms = 0) {
    EXPECT_TRUE(adapter_->DeliversDurably(m));
    PutEntry(m, created_ms == 0 ? SystemClock::Instance().NowMs() : created_ms);
    Status delivered = Status::Internal("done not called");
    adapter_->Send(m, [&delivered](Status s) { delivered = s; });  // done runs inside Send
    return delivered;
  }
  void PutEntry(const OutboundMessage& m, int64_t created_ms, const std::string& platform = "",
                std::string payload = "") {
    store::OutboxEntry entry;
    entry.id = m.id;
    entry.platform = platform.empty() ? m.conversation.platform : platform;
    entry.payload = payload.empty() ? json(m).dump() : std::move(payload);
    entry.created_ms = created_ms;
    store::WriteBatch batch;
    store::Outbox(*kv_).Put(batch, entry);
    ASSERT_TRUE(kv_->Write(batch, /*sync=*/false).ok());
  }
  // Console outbox entries in the store now.
  size_t Owed() {
    auto n = store::Outbox(*kv_).Count(kPlatform);
    EXPECT_TRUE(n.ok());
    return n.ok() ? *n : 0;
  }
  bool InOutbox(const std::string& id) { return kv_->Get(store::keys::Outbox(kPlatform, id)).ok(); }

  // Opens GET /v1/local/listen?QUERY in the background. hang_up_after > 0: the client hangs up
  // once it got that many messages.
  std::shared_ptr<ListenView> Listen(const std::string& query, size_t hang_up_after = 0,
                                     const std::string& method = "GET") {
    auto view = std::make_shared<ListenView>();
    net::ClientRequest r;
    r.method = method;
    r.url = "http://localhost/v1/local/listen" + (query.empty() ? "" : "?" + query);
    r.unix_socket_path = socket_;
    r.timeout_ms = 20'000;
    r.headers.emplace_back("Accept", "text/event-stream");
    auto reader = std::make_shared<ListenStreamReader>(
        [view](const OutboundMessage& m) { view->messages.push_back(m); });  // under view->mu
    r.on_headers = [view](int status, const net::Headers& headers) {
      std::lock_guard<std::mutex> lock(view->mu);
      view->status = status;
      view->content_type = net::FindHeader(headers, "content-type");
      return true;
    };
    r.on_body = [view, reader, hang_up_after](std::string_view bytes) {
      std::lock_guard<std::mutex> lock(view->mu);
      view->raw.append(bytes);
      if (view->content_type.rfind("text/event-stream", 0) != 0) return true;
      reader->Feed(bytes);
      view->error = reader->error();
      return hang_up_after == 0 || view->messages.size() < hang_up_after;
    };
    clients_.push_back(std::async(std::launch::async,
                                  [r]() mutable { return net::BlockingRequest(std::move(r)); }));
    return view;
  }
  std::shared_ptr<ListenView> ListenTo(const std::string& conversation, size_t hang_up_after = 0) {
    return Listen("conversation=" + PercentEncode(conversation), hang_up_after);
  }

  testing::IoThreads io_{2};
  testing::TempDir dir_;
  std::unique_ptr<store::KvStore> kv_;
  std::unique_ptr<store::Committer> committer_;
  NoControl control_;
  testing::RecordingInboundSink sink_;
  std::unique_ptr<ConsoleAdapter> adapter_;
  std::unique_ptr<net::HttpServer> server_;
  std::string socket_;
  std::vector<std::future<Result<net::ClientResponse>>> clients_;
};

TEST_F(MailboxTest, OnlyMessagesAnsweringNoRequestAreDurable) {
  OutboundMessage m = Unsolicited("m1", "card");
  EXPECT_TRUE(adapter_->DeliversDurably(m));
  m.in_reply_to = "event-1";
  EXPECT_FALSE(adapter_->DeliversDurably(m));
  OutboundMessage silent = Unsolicited("m2", "");
  silent.silent = true;
  EXPECT_FALSE(adapter_->DeliversDurably(silent));
}

TEST_F(MailboxTest, ReplyNobodyWaitsForIsDroppedNotKept) {
  Start();
  OutboundMessage reply = Unsolicited("r1", "answer");
  reply.in_reply_to = "event-of-a-client-that-hung-up";
  Status delivered = Status::Ok();
  adapter_->Send(reply, [&delivered](Status s) { delivered = s; });
  EXPECT_EQ(delivered.code(), Status::Code::kNotFound) << delivered.ToString();
  EXPECT_EQ(adapter_->Waiting("agents"), 0u);
}

TEST_F(MailboxTest, WaitingMessagesComeInOrderThenNewOnesAndTheOutboxEmpties) {
  Start();
  ASSERT_TRUE(Owe(Unsolicited("m1", "one")).ok());
  ASSERT_TRUE(Owe(Unsolicited("m2", "two")).ok());
  ASSERT_TRUE(Owe(Unsolicited("m3", "three")).ok());
  ASSERT_TRUE(Owe(Unsolicited("x1", "elsewhere", "terminal")).ok());
  ASSERT_TRUE(Owe(Unsolicited("m2", "two")).ok());  // the same id again: kept once
  EXPECT_EQ(adapter_->Waiting("agents"), 3u);
  EXPECT_EQ(adapter_->Waiting("terminal"), 1u);
  EXPECT_EQ(Owed(), 4u);

  std::mutex mu;
  std::vector<OutboundMessage> got;
  ListenHandle handle = adapter_->Listen("agents", [&](const OutboundMessage& m) {
    std::lock_guard<std::mutex> lock(mu);
    got.push_back(m);
  });
  {
    std::lock_guard<std::mutex> lock(mu);  // the waiting ones are handed over within Listen
    EXPECT_EQ(Ids(got), (std::vector<std::string>{"m1", "m2", "m3"}));
    EXPECT_EQ(got[1].text, "two");
  }
  EXPECT_EQ(adapter_->Waiting("agents"), 0u);
  EXPECT_EQ(adapter_->Listeners("agents"), 1u);
  ASSERT_TRUE(WaitFor([&] { return Owed() == 1; })) << Owed();  // only the "terminal" one
  EXPECT_TRUE(InOutbox("x1"));

  ASSERT_TRUE(Owe(Unsolicited("m4", "four")).ok());
  {
    std::lock_guard<std::mutex> lock(mu);
    EXPECT_EQ(Ids(got), (std::vector<std::string>{"m1", "m2", "m3", "m4"}));
  }
  ASSERT_TRUE(WaitFor([&] { return !InOutbox("m4"); }));

  handle.Cancel();
  EXPECT_EQ(adapter_->Listeners("agents"), 0u);
  ASSERT_TRUE(Owe(Unsolicited("m5", "five")).ok());
  {
    std::lock_guard<std::mutex> lock(mu);
    EXPECT_EQ(got.size(), 4u);
  }
  EXPECT_EQ(adapter_->Waiting("agents"), 1u);
  EXPECT_TRUE(InOutbox("m5"));
}

TEST_F(MailboxTest, OutboxEntryStaysUntilTheListenerHasTakenTheMessage) {
  Start();
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  std::atomic<bool> entered{false};
  ListenHandle handle = adapter_->Listen("agents", [&, released](const OutboundMessage&) {
    entered = true;
    released.wait();
  });
  std::thread sender([&] { EXPECT_TRUE(Owe(Unsolicited("m1", "card")).ok()); });
  ASSERT_TRUE(WaitFor([&] { return entered.load(); }));
  // Being handed over, not yet taken: still in the mailbox and in the outbox.
  EXPECT_EQ(adapter_->Waiting("agents"), 1u);
  EXPECT_TRUE(InOutbox("m1"));
  release.set_value();
  sender.join();
  EXPECT_EQ(adapter_->Waiting("agents"), 0u);
  ASSERT_TRUE(WaitFor([&] { return !InOutbox("m1"); }));
}

TEST_F(MailboxTest, StartResumesTheOutboxByCreationTimeThenId) {
  // Left by an earlier run: out of order, a tie on created_ms, another conversation, another
  // platform and an entry that does not decode.
  PutEntry(Unsolicited("a", "third"), 300);
  PutEntry(Unsolicited("z", "second"), 100);
  PutEntry(Unsolicited("b", "first"), 100);
  PutEntry(Unsolicited("t1", "for the terminal", "terminal"), 50);
  PutEntry(Unsolicited("w1", "a webhook delivery", "agents"), 10, "webhook");
  PutEntry(Unsolicited("bad", "x"), 20, "", "{not json");
  // Sent before Start (its entry is in the outbox too): merged in its place, once.
  ASSERT_TRUE(Owe(Unsolicited("m", "between"), 200).ok());
  EXPECT_EQ(adapter_->Waiting("agents"), 1u);
  Start();
  EXPECT_EQ(adapter_->Waiting("agents"), 4u);
  EXPECT_EQ(adapter_->Waiting("terminal"), 1u);

  std::vector<OutboundMessage> got;
  ListenHandle handle =
      adapter_->Listen("agents", [&](const OutboundMessage& m) { got.push_back(m); });
  EXPECT_EQ(Ids(got), (std::vector<std::string>{"b", "z", "m", "a"}));
  ASSERT_EQ(got.size(), 4u);
  EXPECT_EQ(got[0].text, "first");
  EXPECT_EQ(got[0].conversation.platform, kPlatform);
  EXPECT_TRUE(WaitFor([&] { return !InOutbox("a") && !InOutbox("b") && !InOutbox("m"); }));
  EXPECT_TRUE(InOutbox("t1"));
  EXPECT_TRUE(kv_->Get(store::keys::Outbox("webhook", "w1")).ok());
}

TEST_F(MailboxTest, TheOldestBeyondTheLimitAreDroppedFromMailboxAndOutbox) {
  Start();
  const size_t over = 3;
  auto id = [](size_t i) {
    std::string s = std::to_string(i);
    return "m" + std::string(5 - s.size(), '0') + s;
  };
  for (size_t i = 0; i < kMailboxLimit + over; ++i) {
    ASSERT_TRUE(Owe(Unsolicited(id(i), "card " + std::to_string(i)), 1000 + i).ok());
  }
  EXPECT_EQ(adapter_->Waiting("agents"), kMailboxLimit);
  ASSERT_TRUE(WaitFor([&] { return Owed() == kMailboxLimit; })) << Owed();
  EXPECT_FALSE(InOutbox(id(0)));
  EXPECT_FALSE(InOutbox(id(over - 1)));
  EXPECT_TRUE(InOutbox(id(over)));
  std::vector<OutboundMessage> got;
  ListenHandle handle =
      adapter_->Listen("agents", [&](const OutboundMessage& m) { got.push_back(m); });
  ASSERT_EQ(got.size(), kMailboxLimit);
  EXPECT_EQ(got.front().id, id(over));
  EXPECT_EQ(got.back().id, id(kMailboxLimit + over - 1));
  ASSERT_TRUE(WaitFor([&] { return Owed() == 0; })) << Owed();
}

TEST_F(MailboxTest, AFullMailboxOfLargeMessagesGoesOutOverOneStream) {
  Start();
  // 1,000 messages of 2 KB: more than a stream's default queue bound (1 MiB) at once.
  const std::string text(2048, 'x');
  for (size_t i = 0; i < kMailboxLimit; ++i) {
    ASSERT_TRUE(Owe(Unsolicited("m" + std::to_string(i), text)).ok());
  }
  auto view = ListenTo("agents");
  ASSERT_TRUE(WaitFor([&] { return view->MessageIds().size() == kMailboxLimit; }, kSlowWait))
      << view->MessageIds().size();
  ASSERT_TRUE(WaitFor([&] { return Owed() == 0; }));
  EXPECT_EQ(view->Messages().back().text, text);
  EXPECT_EQ(adapter_->Listeners("agents"), 1u);  // still connected
}

TEST_F(MailboxTest, TwoListenersEachGetEveryMessageAsAnEventStream) {
  Start();
  auto a = ListenTo("agents");
  auto b = ListenTo("agents");
  ASSERT_TRUE(WaitFor([&] { return adapter_->Listeners("agents") == 2; }));
  OutboundMessage card = Unsolicited("c1", "*New escalation #1*");
  card.actions.push_back(MessageAction{"claim", "Claim", "claim 1", "primary"});
  ASSERT_TRUE(Owe(card).ok());
  ASSERT_TRUE(Owe(Unsolicited("c2", "second")).ok());
  const std::vector<std::string> both{"c1", "c2"};
  ASSERT_TRUE(WaitFor([&] { return a->MessageIds() == both && b->MessageIds() == both; }))
      << a->raw << " / " << b->raw;
  ASSERT_TRUE(WaitFor([&] { return Owed() == 0; }));
  std::lock_guard<std::mutex> lock(a->mu);
  EXPECT_EQ(a->status, 200);
  EXPECT_EQ(a->content_type.rfind("text/event-stream", 0), 0u);
  EXPECT_EQ(a->messages[0].text, card.text);
  EXPECT_EQ(a->messages[0].actions, card.actions);
  // Each message is one "message" event whose data is the reply JSON (plus its actions).
  const std::string event = adapters::SseEvent("message", ListenEventJson(card));
  EXPECT_EQ(a->raw.find(event), 0u) << a->raw;
  EXPECT_EQ(ListenEventJson(card)["text"], adapters::ReplyJson(card)["text"]);
}

TEST_F(MailboxTest, AWaitingMessageGoesToTheFirstListenerNotToOneWhoComesLater) {
  Start();
  ASSERT_TRUE(Owe(Unsolicited("c1", "waiting card")).ok());
  auto first = ListenTo("agents");
  ASSERT_TRUE(WaitFor([&] { return first->MessageIds() == std::vector<std::string>{"c1"}; }));
  ASSERT_TRUE(WaitFor([&] { return !InOutbox("c1"); }));
  EXPECT_EQ(adapter_->Waiting("agents"), 0u);
  auto second = ListenTo("agents");
  ASSERT_TRUE(WaitFor([&] { return adapter_->Listeners("agents") == 2; }));
  ASSERT_TRUE(Owe(Unsolicited("c2", "new card")).ok());
  ASSERT_TRUE(WaitFor([&] {
    return first->MessageIds() == std::vector<std::string>{"c1", "c2"} &&
           second->MessageIds() == std::vector<std::string>{"c2"};
  })) << second->raw;
}

TEST_F(MailboxTest, AMessageForAListenerThatHungUpStaysForTheNextOne) {
  Start();
  auto gone = ListenTo("agents", /*hang_up_after=*/1);
  ASSERT_TRUE(WaitFor([&] { return adapter_->Listeners("agents") == 1; }));
  ASSERT_TRUE(Owe(Unsolicited("c1", "seen before hanging up")).ok());
  ASSERT_TRUE(WaitFor([&] { return gone->MessageIds() == std::vector<std::string>{"c1"}; }));
  // The server notices the client went away and the listener is dropped without a write.
  ASSERT_TRUE(WaitFor([&] { return adapter_->Listeners("agents") == 0; }));
  ASSERT_TRUE(Owe(Unsolicited("c2", "nobody listens")).ok());
  EXPECT_EQ(adapter_->Waiting("agents"), 1u);
  ASSERT_TRUE(WaitFor([&] { return !InOutbox("c1"); }));
  EXPECT_TRUE(InOutbox("c2"));
  EXPECT_EQ(gone->MessageIds(), std::vector<std::string>{"c1"});

  auto next = ListenTo("agents");
  ASSERT_TRUE(WaitFor([&] { return next->MessageIds() == std::vector<std::string>{"c2"}; }));
  ASSERT_TRUE(WaitFor([&] { return !InOutbox("c2"); }));
}

TEST_F(MailboxTest, ListenersOfOtherConversationsGetNothing) {
  Start();
  auto other = ListenTo("terminal");
  ASSERT_TRUE(WaitFor([&] { return adapter_->Listeners("terminal") == 1; }));
  ASSERT_TRUE(Owe(Unsolicited("c1", "for agents")).ok());
  ASSERT_TRUE(Owe(Unsolicited("t1", "for the terminal", "terminal")).ok());
  ASSERT_TRUE(WaitFor([&] { return other->MessageIds() == std::vector<std::string>{"t1"}; }));
  EXPECT_EQ(adapter_->Waiting("agents"), 1u);
  EXPECT_TRUE(InOutbox("c1"));
}

TEST_F(MailboxTest, BadListenRequestsAreJsonErrors) {
  Start();
  struct Case {
    std::string query;
    std::string method;
    int status;
    std::string error;
  };
  for (const Case& c :
       {Case{"", "GET", 400, "invalid_conversation"},
        Case{"conversation=", "GET", 400, "invalid_conversation"},
        Case{"other=agents", "GET", 400, "invalid_conversation"},
        Case{"conversation=a%0Ab", "GET", 400, "invalid_conversation"},
        Case{"conversation=" + std::string(201, 'x'), "GET", 400, "invalid_conversation"},
        Case{"conversation=agents", "POST", 405, "method_not_allowed"}}) {
    auto view = Listen(c.query, 0, c.method);
    auto result = clients_.back().get();
    clients_.pop_back();
    ASSERT_TRUE(result.ok()) << result.status().ToString();
    EXPECT_EQ(result->status, c.status) << c.query;
    std::lock_guard<std::mutex> lock(view->mu);
    EXPECT_EQ(view->content_type, "application/json") << c.query;
    EXPECT_EQ(json::parse(view->raw, nullptr, false).value("error", ""), c.error) << view->raw;
  }
  EXPECT_EQ(adapter_->Listeners("agents"), 0u);
}

TEST_F(MailboxTest, StopEndsListenStreamsWithAnErrorEventAndKeepsWhatIsOwed) {
  Start();
  auto view = ListenTo("agents");
  ASSERT_TRUE(WaitFor([&] { return adapter_->Listeners("agents") == 1; }));
  adapter_->Stop(nullptr);
  auto result = clients_.back().get();
  clients_.pop_back();
  ASSERT_TRUE(result.ok()) << result.status().ToString();  // a well-ended stream
  {
    std::lock_guard<std::mutex> lock(view->mu);
    EXPECT_EQ(view->error, "the daemon is shutting down") << view->raw;
    EXPECT_NE(view->raw.find("event: error\n"), std::string::npos) << view->raw;
    EXPECT_NE(view->raw.find("\"unavailable\""), std::string::npos) << view->raw;
  }
  EXPECT_EQ(adapter_->Listeners("agents"), 0u);
  ASSERT_TRUE(Owe(Unsolicited("c1", "after stop")).ok());
  EXPECT_TRUE(InOutbox("c1"));  // for the next run
  Listen("conversation=agents");
  auto late = clients_.back().get();
  clients_.pop_back();
  ASSERT_TRUE(late.ok());
  EXPECT_EQ(late->status, 503);
}

TEST_F(MailboxTest, ListenToDaemonReadsTheStreamUntilStoppedOrEnded) {
  Start();
  ASSERT_TRUE(Owe(Unsolicited("c1", "waiting")).ok());
  struct Seen {
    std::mutex mu;
    std::vector<std::string> ids;
    bool open = false;
    std::optional<Status> end;
  };
  auto run = [&](std::shared_ptr<Seen> seen, std::atomic<bool>& stop) {
    return std::thread([this, seen, &stop] {
      Status end = ListenToDaemon(
          socket_, "agents",
          [seen](const OutboundMessage& m) {
            std::lock_guard<std::mutex> lock(seen->mu);
            seen->ids.push_back(m.id);
          },
          stop,
          [seen] {
            std::lock_guard<std::mutex> lock(seen->mu);
            seen->open = true;
          });
      std::lock_guard<std::mutex> lock(seen->mu);
      seen->end = end;
    });
  };
  // Stopped by the caller.
  auto first = std::make_shared<Seen>();
  std::atomic<bool> stop_first{false};
  std::thread t1 = run(first, stop_first);
  ASSERT_TRUE(WaitFor([&] {
    std::lock_guard<std::mutex> lock(first->mu);
    return first->open && first->ids == std::vector<std::string>{"c1"};
  }));
  stop_first = true;
  ASSERT_TRUE(WaitFor([&] {
    std::lock_guard<std::mutex> lock(first->mu);
    return first->end.has_value();
  }));
  t1.join();
  EXPECT_TRUE(first->end->ok()) << first->end->ToString();
  ASSERT_TRUE(WaitFor([&] { return adapter_->Listeners("agents") == 0; }));

  // Ended by the daemon's Stop.
  auto second = std::make_shared<Seen>();
  std::atomic<bool> stop_second{false};
  std::thread t2 = run(second, stop_second);
  ASSERT_TRUE(WaitFor([&] {
    std::lock_guard<std::mutex> lock(second->mu);
    return second->open;
  }));
  ASSERT_TRUE(Owe(Unsolicited("c2", "live")).ok());
  ASSERT_TRUE(WaitFor([&] {
    std::lock_guard<std::mutex> lock(second->mu);
    return second->ids == std::vector<std::string>{"c2"};
  }));
  adapter_->Stop(nullptr);
  t2.join();
  ASSERT_TRUE(second->end.has_value());
  EXPECT_EQ(second->end->code(), Status::Code::kUnavailable);
  EXPECT_EQ(second->end->message(), "the daemon is shutting down");

  // Refused: a JSON error, not a retry loop.
  std::atomic<bool> never{false};
  Status refused = ListenToDaemon(socket_, "", nullptr, never);
  EXPECT_EQ(refused.code(), Status::Code::kInvalidArgument) << refused.ToString();
  Status nobody = ListenToDaemon(dir_.Sub("absent.sock"), "agents", nullptr, never);
  EXPECT_EQ(nobody.code(), Status::Code::kUnavailable) << nobody.ToString();
}

TEST(ListenStreamReaderTest, DecodesMessagesCutAnywhereUntilAnError) {
  OutboundMessage card = Unsolicited("c1", "New escalation #1");
  card.actions.push_back(MessageAction{"claim", "Claim", "claim 1", ""});
  const std::string body =
      ": hello\r\n\r\n" + adapters::SseEvent("message", ListenEventJson(card)) +
      adapters::SseEvent("other", {{"x", 1}}) +
      "event: message\r\ndata: {\"id\":\"c2\",\"text\":\"two\"}\r\n\r\n" +
      adapters::SseEvent("error", {{"error", "unavailable"}, {"message", "going down"}}) +
      adapters::SseEvent("message", ListenEventJson(card));
  for (size_t piece : {size_t{1}, size_t{3}, body.size()}) {
    std::vector<OutboundMessage> got;
    ListenStreamReader reader([&](const OutboundMessage& m) { got.push_back(m); });
    for (size_t i = 0; i < body.size(); i += piece) {
      reader.Feed(std::string_view(body).substr(i, piece));
    }
    ASSERT_EQ(Ids(got), (std::vector<std::string>{"c1", "c2"})) << piece;
    EXPECT_EQ(got[0].actions, card.actions);
    EXPECT_TRUE(reader.finished());
    EXPECT_EQ(reader.error(), "going down");
  }
  ListenStreamReader bad(nullptr);
  bad.Feed("event: message\ndata: {\"text\":\"x\",\"actions\":[5]}\n\n");
  EXPECT_TRUE(bad.finished());
}

// ---- RunTerminal with a listener ----

// An input whose first read runs `hook` (while the terminal waits at its prompt), then yields
// `text`.
class HookedInput : public std::streambuf {
 public:
  HookedInput(std::function<void()> hook, std::string text)
      : hook_(std::move(hook)), text_(std::move(text)) {}

 protected:
  int_type underflow() override {
    if (hook_) {
      auto hook = std::move(hook_);
      hook_ = nullptr;
      hook();
    }
    if (served_) return traits_type::eof();
    served_ = true;
    setg(text_.data(), text_.data(), text_.data() + text_.size());
    return traits_type::to_int_type(text_[0]);
  }

 private:
  std::function<void()> hook_;
  std::string text_;
  bool served_ = false;
};

TEST(TerminalListenTest, MessagesPrintAtThePromptAndNeverInsideAReply) {
  MessageCallback deliver;
  bool stopped = false;
  TerminalBackend backend;
  backend.listen = [&](MessageCallback on_message) {
    deliver = on_message;
    deliver(Unsolicited("w1", "waiting before the banner"));  // held until the first prompt
    return std::function<void()>([&] { stopped = true; });
  };
  backend.ask_streaming = [&](const std::string&, const PartialCallback& on_partial,
                              OutboundMessage& reply, std::string&) {
    OutboundMessage partial = Unsolicited("r1", "Half");
    on_partial(partial);
    deliver(Unsolicited("m2", "during the reply"));  // must wait for the reply's end
    reply = Unsolicited("r1", "Half done.");
    return true;
  };
  backend.forget = []() -> Result<size_t> { return size_t{0}; };
  HookedInput input([&] { deliver(Unsolicited("m1", "at the prompt")); }, "question\n");
  std::istream in(&input);
  std::ostringstream out;
  RunTerminal(in, out, backend);
  EXPECT_TRUE(stopped);
  const std::string s = out.str();
  const std::string banner_end = s.substr(0, s.find('\n') + 1);
  EXPECT_EQ(s.substr(banner_end.size()),
            "\n[message] waiting before the banner\n"
            "\nyou> \n[message] at the prompt\n\nyou> "
            "\nparley> Half done.\n"
            "\n[message] during the reply\n"
            "\nyou> ")
      << s;
  // After the loop ended, a late message touches nothing.
  deliver(Unsolicited("m3", "too late"));
  EXPECT_EQ(out.str(), s);
}

TEST_F(MailboxTest, InProcessTerminalShowsTheConversationsMessages) {
  Start();
  OutboundMessage card = Unsolicited("c1", "New escalation #1");
  card.actions.push_back(MessageAction{"claim", "Claim", "claim 1", ""});
  ASSERT_TRUE(Owe(card).ok());
  std::istringstream in("/quit\n");
  std::ostringstream out;
  RunTerminal(in, out, adapter_->Backend("agents"));
  EXPECT_NE(out.str().find("\n[message] " + RenderForTerminal(card) + "\n"), std::string::npos)
      << out.str();
  EXPECT_NE(RenderForTerminal(card).find("[Claim] type: claim 1"), std::string::npos);
  EXPECT_EQ(adapter_->Listeners("agents"), 0u);  // stopped when the loop ended
  ASSERT_TRUE(WaitFor([&] { return !InOutbox("c1"); }));
}

}  // namespace
}  // namespace parley::console
