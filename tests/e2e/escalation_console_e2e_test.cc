// End-to-end: a console conversation as an escalation queue's agents' channel, in the real
// `parley serve` binary. The queue's agents are "console:agents": agents read the cards on the
// daemon's local API (GET /v1/local/listen?conversation=agents on its Unix-domain socket, a raw
// event-stream client here) and act by POST /v1/local/ask {"conversation":"agents", "text":
// "claim 1", "user":"op"}, as `parley chat --conversation agents` does. The user talks through
// the webhook (synchronous POST /v1/messages); what the daemon says to them unprompted goes to
// webhook.default_reply_url, a CallbackServer in this process. Waiting is by deadline and polling
// only.

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "adapters/console/console_adapter.h"
#include "tests/fakes/callback_server.h"
#include "tests/support/daemon_process.h"
#include "tests/support/sample_kb.h"
#include "tests/support/temp_dir.h"

namespace parley::testing {
namespace {

using nlohmann::json;

constexpr int kWaitMs = 20'000;   // a card, a callback
constexpr int kPostMs = 15'000;   // one synchronous request
constexpr int kAbsentMs = 1'500;  // how long "nothing more arrives" is watched

bool Has(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

std::string TextOf(const json& j) {
  return j.is_object() && j.contains("text") && j["text"].is_string() ? j["text"].get<std::string>()
                                                                      : std::string();
}

// A client of GET /v1/local/listen on its own thread, as `parley chat` listens
// (console::ListenToDaemon): records each message as its event data (console::ListenEventJson)
// until it is destroyed or the stream ends.
class Listener {
 public:
  Listener(const std::string& socket, const std::string& conversation) {
    thread_ = std::thread([this, socket, conversation] {
      Status ended = console::ListenToDaemon(
          socket, conversation,
          [this](const OutboundMessage& m) {
            std::lock_guard<std::mutex> lock(mu_);
            messages_.push_back(console::ListenEventJson(m));
            cv_.notify_all();
          },
          stop_,
          [this] {
            std::lock_guard<std::mutex> lock(mu_);
            open_ = true;
            cv_.notify_all();
          });
      std::lock_guard<std::mutex> lock(mu_);
      ended_ = true;
      end_ = ended;
      cv_.notify_all();
    });
  }
  ~Listener() {
    stop_ = true;
    thread_.join();
  }

  // Waits until pred(messages so far) holds; false at the deadline.
  bool WaitUntil(const std::function<bool(const std::vector<json>&)>& pred,
                 int timeout_ms = kWaitMs) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms),
                        [&] { return pred(messages_); });
  }
  // The first message whose text contains part (waiting for it).
  std::optional<json> Await(const std::string& part, int timeout_ms = kWaitMs) {
    std::optional<json> found;
    WaitUntil(
        [&](const std::vector<json>& all) {
          for (const json& m : all) {
            if (Has(TextOf(m), part)) {
              found = m;
              return true;
            }
          }
          return false;
        },
        timeout_ms);
    return found;
  }
  // How many messages contain part.
  size_t Count(const std::string& part) {
    std::lock_guard<std::mutex> lock(mu_);
    size_t n = 0;
    for (const json& m : messages_) n += Has(TextOf(m), part) ? 1 : 0;
    return n;
  }
  std::vector<json> Messages() {
    std::lock_guard<std::mutex> lock(mu_);
    return messages_;
  }
  // Waits until the stream is open (the daemon counts this listener); false at the deadline.
  bool WaitOpen(int timeout_ms = kWaitMs) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms), [&] { return open_; });
  }
  // How the stream ended, waiting for that up to timeout_ms (nullopt: still open).
  std::optional<Status> Ended(int timeout_ms) {
    std::unique_lock<std::mutex> lock(mu_);
    if (!cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms), [&] { return ended_; })) {
      return std::nullopt;
    }
    return end_;
  }

 private:
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<json> messages_;
  bool open_ = false;
  bool ended_ = false;
  Status end_;
  std::thread thread_;
};

class EscalationConsoleE2eTest : public ::testing::Test {
 protected:
  void SetUp() override { WriteSampleKnowledge(dir_.Sub("kb")); }
  void TearDown() override {
    if (HasFailure() && daemon_) std::cerr << "---- daemon log ----\n" << daemon_->Log();
  }

  bool StartDaemon() {
    config_ = dir_.Sub("parley.toml");
    WriteFile(config_,
              "[server]\nlisten = \"127.0.0.1:0\"\nport_file = \"" + dir_.Sub("port.json") +
                  "\"\n\n[store]\npath = \"" + dir_.Sub("store") +
                  "\"\n\n[[knowledge.sources]]\npath = \"" + dir_.Sub("kb") +
                  "\"\n\n[policy]\nuser_rate_per_minute = 600\nuser_burst = 100\n"
                  "conversation_rate_per_minute = 600\nconversation_burst = 100\n\n"
                  "[webhook]\ninsecure_no_auth = true\ndefault_reply_url = \"" +
                  callback_.Url("/user") +
                  "\"\n\n[escalation]\n\n"
                  "[[escalation.queues]]\nname = \"general\"\nagents = \"console:agents\"\n"
                  "sla_minutes = 30\n\n[log]\nlevel = \"debug\"\n");
    daemon_ = std::make_unique<DaemonProcess>(config_, dir_.Sub("port.json"), dir_.Sub("log.txt"));
    const bool ready = daemon_->Start();
    EXPECT_TRUE(ready) << daemon_->Log();
    return ready;
  }
  bool Restart() {
    const bool ready = daemon_->Start();
    EXPECT_TRUE(ready) << daemon_->Log();
    return ready;
  }

  std::string Socket() const { return dir_.Sub("store") + "/parley.sock"; }
  // A listener of the agents' channel, once the daemon counts it.
  std::unique_ptr<Listener> Listen() {
    auto listener = std::make_unique<Listener>(Socket(), "agents");
    EXPECT_TRUE(listener->WaitOpen()) << daemon_->Log();
    return listener;
  }

  // A user's synchronous webhook message; the parsed answer.
  json User(const std::string& text, const std::string& conversation = "u1",
            const std::string& user = "alice") {
    json message = {{"conversation", conversation}, {"user", user}, {"text", text}};
    auto r = daemon_->Post("/v1/messages", message.dump(), {{"Content-Type", "application/json"}},
                           kPostMs);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    if (!r.ok()) return json();
    EXPECT_EQ(r->status, 200) << r->body;
    return json::parse(r->body, nullptr, false);
  }

  // An agent's line in the console agents' channel, through the local API (as `parley chat`).
  json Agent(const std::string& text, const std::string& user = "op") {
    net::ClientRequest r;
    r.method = "POST";
    r.url = "http://localhost/v1/local/ask";
    r.unix_socket_path = Socket();
    r.body = json{{"conversation", "agents"}, {"text", text}, {"user", user}}.dump();
    r.headers.emplace_back("Content-Type", "application/json");
    r.timeout_ms = kPostMs;
    auto response = net::BlockingRequest(r);
    EXPECT_TRUE(response.ok()) << response.status().ToString();
    if (!response.ok()) return json();
    EXPECT_EQ(response->status, 200) << response->body;
    return json::parse(response->body, nullptr, false);
  }

  // Messages the user got unprompted (the callback server), by text part.
  std::optional<std::string> AwaitUser(const std::string& part, int timeout_ms = kWaitMs) {
    std::optional<std::string> found;
    callback_.WaitUntil(
        [&](const std::vector<ReceivedCallback>& all) {
          for (const ReceivedCallback& c : all) {
            json j = json::parse(c.body, nullptr, false);
            if (Has(TextOf(j), part)) {
              found = TextOf(j);
              return true;
            }
          }
          return false;
        },
        timeout_ms);
    return found;
  }
  bool UserEverSaw(const std::string& part) const {
    for (const ReceivedCallback& c : callback_.Delivered()) {
      if (Has(c.body, part)) return true;
    }
    return false;
  }

  TempDir dir_;
  CallbackServer callback_;
  std::string config_;
  std::unique_ptr<DaemonProcess> daemon_;
};

TEST_F(EscalationConsoleE2eTest, AgentsWorkATicketFromTheConsole) {
  ASSERT_TRUE(StartDaemon());
  {
    // The stream's head, as a plain HTTP client sees it (nothing is waiting yet: hanging up
    // right after the head costs no message).
    net::ClientRequest r;
    r.url = "http://localhost/v1/local/listen?conversation=agents";
    r.unix_socket_path = Socket();
    r.timeout_ms = kPostMs;
    int status = 0;
    std::string type;
    r.on_headers = [&](int code, const net::Headers& headers) {
      status = code;
      type = net::FindHeader(headers, "content-type");
      return false;  // hang up
    };
    (void)net::BlockingRequest(r);
    EXPECT_EQ(status, 200);
    EXPECT_EQ(type.rfind("text/event-stream", 0), 0u) << type;
  }
  auto agents = Listen();

  json ack = User("Can I talk to a human, please?");
  ASSERT_TRUE(Has(TextOf(ack), "number 1 in the queue")) << ack.dump();
  std::optional<json> card = agents->Await("New escalation #1");
  ASSERT_TRUE(card.has_value()) << daemon_->Log();
  EXPECT_TRUE(Has(TextOf(*card), "alice (webhook:u1)")) << card->dump();
  EXPECT_EQ((*card)["conversation"], "agents") << card->dump();
  // The card's buttons come along: typing the value is the console's click.
  bool has_claim = false;
  if (card->contains("actions") && (*card)["actions"].is_array()) {
    for (const json& a : (*card)["actions"])
      has_claim = has_claim || a.value("value", "") == "claim 1";
  }
  EXPECT_TRUE(has_claim) << card->dump();

  json claimed = Agent("claim 1");
  EXPECT_TRUE(Has(TextOf(claimed), "op claimed #1")) << claimed.dump();
  ASSERT_TRUE(AwaitUser("op has joined the conversation.").has_value()) << daemon_->Log();

  json relayed = Agent("reply 1 Hello from the team, what went wrong?");
  EXPECT_TRUE(relayed.value("silent", false) || TextOf(relayed).empty()) << relayed.dump();
  ASSERT_TRUE(AwaitUser("**op:** Hello from the team, what went wrong?").has_value())
      << daemon_->Log();

  User("The widget will not start after the update.");
  std::optional<json> from_user = agents->Await("The widget will not start after the update.");
  ASSERT_TRUE(from_user.has_value()) << daemon_->Log();
  EXPECT_TRUE(Has(TextOf(*from_user), "alice")) << from_user->dump();

  json noted = Agent("note 1 secret internal remark");
  EXPECT_TRUE(Has(TextOf(noted), "Noted on #1")) << noted.dump();

  json resolved = Agent("resolve 1");
  EXPECT_TRUE(Has(TextOf(resolved), "Resolved #1")) << resolved.dump();
  ASSERT_TRUE(AwaitUser("marked this as resolved").has_value()) << daemon_->Log();
  EXPECT_FALSE(UserEverSaw("secret internal remark"));
  // The card came once.
  EXPECT_EQ(agents->Count("New escalation #1"), 1u);

  // Shutdown ends the listen stream with an "error" event.
  EXPECT_EQ(daemon_->Terminate(), 0);
  std::optional<Status> ended = agents->Ended(kWaitMs);
  ASSERT_TRUE(ended.has_value());
  EXPECT_EQ(ended->code(), Status::Code::kUnavailable);
  EXPECT_EQ(ended->message(), "the daemon is shutting down");
}

TEST_F(EscalationConsoleE2eTest, ACardPostedWithNobodyListeningSurvivesSigkillAndComesOnce) {
  ASSERT_TRUE(StartDaemon());
  // Acknowledged: the card's outbox entry is durable by now; nobody listens.
  json ack = User("talk to a human");
  ASSERT_TRUE(Has(TextOf(ack), "number 1 in the queue")) << ack.dump();
  daemon_->Kill();
  ASSERT_TRUE(Restart());

  auto first = Listen();
  ASSERT_TRUE(first->Await("New escalation #1").has_value()) << daemon_->Log();
  // A second listener, connected after the first got it, does not get it again...
  auto second = Listen();
  // ...but is live: the next card reaches both.
  json ack2 = User("Can I talk to a human, please?", "u2", "bert");
  ASSERT_TRUE(Has(TextOf(ack2), "number 2 in the queue")) << ack2.dump();
  ASSERT_TRUE(first->Await("New escalation #2").has_value()) << daemon_->Log();
  ASSERT_TRUE(second->Await("New escalation #2").has_value()) << daemon_->Log();
  // Let a late duplicate show up if there is one.
  first->WaitUntil([](const std::vector<json>&) { return false; }, kAbsentMs);
  EXPECT_EQ(first->Count("New escalation #1"), 1u);
  EXPECT_EQ(second->Count("New escalation #1"), 0u);
  EXPECT_EQ(first->Count("New escalation #2"), 1u);
  EXPECT_EQ(second->Count("New escalation #2"), 1u);

  // Delivered cards left the outbox: after a restart a new listener gets neither.
  first.reset();
  second.reset();
  EXPECT_EQ(daemon_->Terminate(), 0);
  ASSERT_TRUE(Restart());
  auto third = Listen();
  third->WaitUntil([](const std::vector<json>&) { return false; }, kAbsentMs);
  EXPECT_TRUE(third->Messages().empty()) << third->Messages().size();
}

TEST_F(EscalationConsoleE2eTest, SayToAConsoleConversationWaitsForItsReaderAcrossSigkill) {
  ASSERT_TRUE(StartDaemon());
  CommandResult said = RunParley({"say", "Maintenance at 18:00 UTC.", "--platform", "console",
                                  "--conversation", "agents", "--config", config_},
                                 "", 30'000);
  ASSERT_EQ(said.exit_code, 0) << said.out << said.err;
  daemon_->Kill();
  ASSERT_TRUE(Restart());
  auto listener = Listen();
  ASSERT_TRUE(listener->Await("Maintenance at 18:00 UTC.").has_value()) << daemon_->Log();
  listener->WaitUntil([](const std::vector<json>&) { return false; }, kAbsentMs);
  EXPECT_EQ(listener->Count("Maintenance at 18:00 UTC."), 1u);
}

TEST_F(EscalationConsoleE2eTest, BadListenRequestIsAJsonError) {
  ASSERT_TRUE(StartDaemon());
  net::ClientRequest r;
  r.url = "http://localhost/v1/local/listen?conversation=";
  r.unix_socket_path = Socket();
  auto response = net::BlockingRequest(r);
  ASSERT_TRUE(response.ok()) << response.status().ToString();
  EXPECT_EQ(response->status, 400);
  EXPECT_EQ(json::parse(response->body, nullptr, false).value("error", ""), "invalid_conversation")
      << response->body;
  // The chat's client reports the refusal instead of retrying.
  std::atomic<bool> stop{false};
  Status refused = console::ListenToDaemon(Socket(), "", nullptr, stop);
  EXPECT_EQ(refused.code(), Status::Code::kInvalidArgument) << refused.ToString();
}

}  // namespace
}  // namespace parley::testing
