#pragma once
// The composition root: builds every module from the configuration and wires them together.
// Only src/app names concrete classes from several modules.

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <boost/asio/thread_pool.hpp>

#include "config/config.h"
#include "core/channel.h"
#include "core/control.h"
#include "core/metrics.h"
#include "engine/engine.h"
#include "engine/router.h"
#include "engine/turn_hooks.h"
#include "escalation/desk.h"
#include "knowledge/knowledge.h"
#include "llm/client.h"
#include "net/http.h"
#include "store/committer.h"
#include "store/kv_store.h"
#include "store/memory.h"
#include "tools/policy.h"
#include "tools/registry.h"

namespace parley::app {

// Where a store directory keeps its parts.
std::string DatabasePath(const config::Config& config);  // LevelDB
std::string IndexPath(const config::Config& config);     // Xapian
std::string SocketPath(const config::Config& config);    // the daemon's local API

// Routes each outbound message to the adapter that owns its platform.
class PlatformReplySink final : public ReplySink {
 public:
  void Register(ChannelAdapter& adapter);
  bool DeliversDurably(const OutboundMessage& message) const override;
  void Send(OutboundMessage message, DeliveryCallback done) override;
  void SendPartial(const OutboundMessage& partial) override;

 private:
  ChannelAdapter* Find(const std::string& platform) const;
  mutable std::mutex mu_;
  std::map<std::string, ChannelAdapter*> adapters_;
};

// Runs deletions on the work pool (they fsync), never on an io thread.
class MemoryControl final : public ConversationControl {
 public:
  MemoryControl(store::ConversationMemory& memory, boost::asio::thread_pool& work)
      : memory_(memory), work_(work) {}
  void Forget(const ConversationKey& conversation, ForgetCallback done) override;
  void ForgetUser(const std::string& platform, const std::string& user,
                  ForgetCallback done) override;
  // Feedback goes to handler, on the work pool (it may write to the store). Set before adapters
  // start.
  using FeedbackHandler = std::function<void(const ConversationKey& conversation,
                                             const std::string& user,
                                             const std::string& message_id, bool helpful)>;
  void SetFeedbackHandler(FeedbackHandler handler) { feedback_ = std::move(handler); }
  void OnFeedback(const ConversationKey& conversation, const std::string& user,
                  const std::string& message_id, bool helpful) override;

 private:
  store::ConversationMemory& memory_;
  boost::asio::thread_pool& work_;
  FeedbackHandler feedback_;
};

// The desk's options from the configuration (unset lists keep the desk's defaults).
escalation::DeskOptions DeskOptionsFrom(const config::EscalationConfig& config);

// Connects the escalation desk to the router (before/after every turn) and to the adapters'
// delivery receipts. Thread-safety: as the Desk (thread-safe).
class DeskBridge final : public engine::TurnHooks, public DeliveryListener {
 public:
  // A card's receipt is recorded (a synced write) before OnDelivered returns; see
  // DeliveryListener.
  explicit DeskBridge(escalation::Desk& desk) : desk_(desk) {}
  bool BeforeTurn(const InboundMessage& message) override;
  void AfterTurn(const InboundMessage& message, engine::TurnOutput& out) override;
  void OnDelivered(const DeliveryReceipt& receipt) override;

 private:
  escalation::Desk& desk_;
};

// Everything a turn needs, opened from the configuration. Members are public: this is wiring.
class Runtime {
 public:
  // Opens the store (Unavailable + IsLockedByOtherProcess when a daemon holds it) and the index.
  static Result<std::unique_ptr<Runtime>> Open(const config::Config& config);
  ~Runtime();

  // Runs the io_context on n threads (n <= 0: one per core) until Stop().
  void StartThreads(int n);
  // Stops the io_context and joins its threads; flushes the store.
  void StopThreads();

  // Brings the index in line with the configured sources (blocking; not on an io thread).
  Result<knowledge::IngestReport> Ingest();

  config::Config config;
  MetricsRegistry metrics;
  boost::asio::io_context io;
  boost::asio::thread_pool work{1};  // long work off the io threads: ingest, sweeps
  std::shared_ptr<net::HttpClient> http;  // the one HTTP client (libcurl multi on io)
  std::unique_ptr<store::KvStore> kv;
  std::unique_ptr<store::Committer> committer;
  std::unique_ptr<knowledge::KnowledgeIndex> index;
  std::unique_ptr<store::ConversationMemory> memory;
  std::unique_ptr<MemoryControl> control;
  std::shared_ptr<llm::LlmClient> llm_client;          // with [llm] enabled
  std::unique_ptr<tools::ToolRegistry> tool_registry;    // with [llm] enabled
  std::unique_ptr<tools::ToolPolicy> tool_policy;
  std::unique_ptr<engine::Engine> engine;
  PlatformReplySink replies;
  std::unique_ptr<engine::Router> router;
  std::unique_ptr<escalation::Desk> desk;  // always open; active() once a queue is configured
  std::unique_ptr<DeskBridge> desk_bridge;  // set on the router when the desk is active

 private:
  Runtime() = default;
  // Builds the LLM client, the tools and their policy, and turns LLM answers on in the engine.
  Status EnableLlm();
  std::vector<std::thread> threads_;
  std::unique_ptr<boost::asio::executor_work_guard<boost::asio::io_context::executor_type>> guard_;
};

// Prints an ingest report for people.
std::string DescribeIngest(const knowledge::IngestReport& report);

}  // namespace parley::app
