#pragma once
// The router: policy before work (de-duplication by event id, rate limits per user and per
// conversation, durable intake), then one serial queue per conversation so turns of a conversation
// run in order while different conversations run in parallel on the io threads. Each finished turn
// is committed (memory, dedupe mark, inbox removal, outbox entry) in one atomic synced write
// before its reply is sent.
//
// Durable intake: a message accepted durably starts its turn at once. When the turn is committed
// within RouterOptions::intake_grace_ms, that one synced write (which records the event as
// answered and the reply in the outbox) is also what makes the message durable: `accepted` runs
// once it is on disk, just before the reply goes to the sink, and no inbox record is ever
// written. A turn still running when the grace ends (an LLM answer, a queue behind a busy
// conversation) gets its inbox record then, in a synced write of its own, and `accepted` runs
// when that is on disk; its commit later removes the record. Either way `accepted` means what it
// always meant: a crash from then on loses nothing (the turn is replayed, or was answered).
//
// Turns wait in the router, not in the io_context: conversations whose next turn may start queue
// in a ready list, and at most kMaxPostedTurns of them are posted to the io_context at a time
// (each posts the next as it starts). asio runs posted handlers in order and polls the sockets
// only between them, so a backlog of thousands of posted turns would hold back every socket read
// behind it, and with the reads the acknowledgements platforms wait for (Slack redelivers what is
// not acknowledged within 3 s, which only adds work). This way reads and turns take turns.
// Thread-safety: thread-safe.

#include <atomic>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include <boost/asio/io_context.hpp>

#include "config/config.h"
#include "core/channel.h"
#include "core/clock.h"
#include "core/metrics.h"
#include "engine/engine.h"
#include "engine/turn_hooks.h"
#include "net/rate_limiter.h"
#include "store/committer.h"
#include "store/records.h"

namespace parley::engine {

struct RouterOptions {
  config::PolicyConfig policy;
  int64_t dedupe_ttl_ms = 48LL * 3600 * 1000;
  // How long a durably accepted message may wait for its turn's commit before its inbox record
  // is written on its own (see above). 0 = write the record at once, before the turn starts.
  int64_t intake_grace_ms = 50;
};

class Router final : public InboundSink {
 public:
  // All references must outlive the Router. sink receives every reply. The committer must be
  // drained (Committer::Shutdown) before the Router is destroyed: its callbacks call back in.
  Router(boost::asio::io_context& io, Engine& engine, store::KvStore& kv,
         store::Committer& committer, ReplySink& sink, const Clock& clock, RouterOptions options,
         MetricsRegistry& metrics);

  void OnInbound(InboundMessage message, IntakeOptions options,
                 std::function<void(IntakeResult)> accepted) override;

  // Plugs in work around every turn (the escalation desk). Call before the first message; hooks
  // must outlive the Router.
  void SetHooks(TurnHooks* hooks) { hooks_ = hooks; }

  // Queues the turns of messages accepted before a crash or restart (the inbox). Call once at
  // start-up, before adapters start. Returns how many were queued.
  Result<size_t> ReplayInbox();

  // Stops intake (new messages get Unavailable) and runs done once every accepted turn has been
  // committed and handed to the sink.
  void Shutdown(std::function<void()> done);

  size_t InFlight() const { return in_flight_.load(); }

 private:
  // A durably accepted message whose inbox record is written only if its turn is slow.
  struct Intake;
  struct Job {
    InboundMessage message;
    bool durable = false;  // an inbox record exists or may be written
    int64_t accepted_nanos = 0;
    std::shared_ptr<Intake> intake;  // while the record is deferred; null otherwise
  };
  // Writes the inbox record of a message whose grace ended before its turn was committed.
  void RecordIntake(const std::shared_ptr<Intake>& intake);
  // Writes the inbox record now; the job is enqueued once it is durable (intake_grace_ms = 0).
  void RecordThenEnqueue(Job job, std::function<void(IntakeResult)> accepted);
  void Enqueue(Job job);
  // With mu_ held: posts ready conversations' turns up to kMaxPostedTurns.
  void PostReadyLocked();
  void DrainOne(std::string key);
  // Records the finished turn in one atomic write, then hands the reply to the sink.
  void Commit(const std::string& key, Job* job, const std::string& turn_id, TurnOutput out);
  void Finish(const std::string& key);
  void TurnDone();

  boost::asio::io_context& io_;
  Engine& engine_;
  TurnHooks* hooks_ = nullptr;
  store::Committer& committer_;
  ReplySink& sink_;
  const Clock& clock_;
  store::EventDedupe dedupe_;
  store::Inbox inbox_;
  store::Outbox outbox_;
  store::RouteBook routes_;
  net::KeyedRateLimiter user_limiter_;
  net::KeyedRateLimiter conversation_limiter_;
  const int64_t intake_grace_ms_;

  // Turns posted to the io_context and not yet started: enough to keep every io thread busy,
  // few enough that socket reads are never far behind.
  static constexpr size_t kMaxPostedTurns = 2;

  std::mutex mu_;
  std::map<std::string, std::deque<Job>> queues_;  // conversations with queued or running turns
  std::deque<std::string> ready_;  // conversations whose front job may start, oldest first
  size_t posted_ = 0;              // DrainOne handlers posted and not yet running
  bool stopping_ = false;
  std::function<void()> on_drained_;
  std::atomic<size_t> in_flight_{0};

  MetricsRegistry& metrics_;
  Histogram& store_seconds_;
  Histogram& total_seconds_;
};

}  // namespace parley::engine
