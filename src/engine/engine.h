#pragma once
// One conversation turn: load memory, build the retrieval query (earlier questions of the
// conversation as context for follow-ups), retrieve with the conversation's access tags, answer,
// and return the reply plus the writes that record the turn. The Router commits those writes and
// sends the reply. Answers come from the embedded extractive responder, or, once EnableLlm was
// called, from an LLM with tool rounds through the tools policy layer (engine/llm_turn.h), falling
// back to the extractive answer when the LLM cannot answer.
// Thread-safety: Run/RunTurn are thread-safe; turns of one conversation must be serial (the Router
// guarantees it) so that memory stays in order.

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <boost/asio/io_context.hpp>

#include "config/config.h"
#include "core/clock.h"
#include "core/message.h"
#include "core/metrics.h"
#include "engine/responder.h"
#include "knowledge/knowledge.h"
#include "llm/client.h"
#include "store/kv_store.h"
#include "store/memory.h"

namespace parley::tools {
class ToolRegistry;
class ToolPolicy;
}  // namespace parley::tools

namespace parley::engine {

struct TurnOutput {
  OutboundMessage reply;
  store::WriteBatch writes;  // the question and the answer in memory (and turn state)
  // "answered" | "no_answer" | "error" | "fallback" (the LLM failed; the extractive answer went
  // out) | "confirm" (a tool call waits for the user's yes) | "handed_over" (a TurnHooks took
  // the message; the reply is silent)
  std::string outcome;
  // When the model asked for a human (reply.escalated through escalate_to_human): its stated
  // reason and topic (may be empty).
  std::string escalation_reason;
  std::string escalation_topic;
};

// The reply so far while an answer streams (see ReplySink::SendPartial).
using PartialCallback = std::function<void(const OutboundMessage& partial)>;
using TurnCallback = std::function<void(TurnOutput)>;

// What LLM answers need. Every pointer must outlive the Engine.
struct LlmDeps {
  boost::asio::io_context* io = nullptr;
  std::shared_ptr<llm::LlmClient> client;
  const tools::ToolRegistry* registry = nullptr;  // null: no tools offered
  tools::ToolPolicy* policy = nullptr;            // required with registry
  store::KvStore* kv = nullptr;                   // summary and pending confirmations
  config::LlmConfig llm;
  config::ToolsConfig tools;
};

class Engine {
 public:
  Engine(knowledge::KnowledgeIndex& index, store::ConversationMemory& memory, const Clock& clock,
         const config::EngineConfig& options, std::vector<config::AccessGrant> grants,
         MetricsRegistry& metrics);

  // Answers with the LLM from now on. Call before the first turn.
  void EnableLlm(LlmDeps deps);
  bool llm_enabled() const { return llm_ != nullptr; }

  // Runs the turn; done gets the result exactly once (inline for the extractive responder, on an
  // io thread for the LLM). on_partial (may be empty) sees the answer grow while it streams, never
  // after done. Never fails: an internal error yields an apology with outcome "error".
  void Run(const InboundMessage& message, const std::string& turn_id, PartialCallback on_partial,
           TurnCallback done);

  // The extractive turn, synchronously. Never fails: an internal error yields an apology reply
  // with outcome "error" and no memory writes.
  TurnOutput RunTurn(const InboundMessage& message, const std::string& turn_id);

  // The turn's writes were not committed: drop what memory caches of the conversation.
  void DiscardUncommitted(const ConversationKey& conversation) {
    memory_.Invalidate(conversation);
  }

  // Access tags the conversation holds (from knowledge.grants).
  std::vector<std::string> AccessTagsFor(const ConversationKey& conversation) const;

  // The extractive answer to message over passages (used by the LLM path as its fallback).
  Answer Extractive(const std::string& question,
                    const std::vector<knowledge::Passage>& passages) const;

  // The reply to message, without text yet: a new id, the conversation, in_reply_to, the reply
  // route and the turn id.
  OutboundMessage NewReply(const InboundMessage& message, const std::string& turn_id) const;
  // Passages for message, visible to its conversation, with the latest earlier questions in
  // `recent` (oldest first) as context for follow-ups. Timed in parley_stage_seconds.
  Result<std::vector<knowledge::Passage>> Retrieve(const InboundMessage& message,
                                                   const std::vector<store::Turn>& recent,
                                                   size_t max_passages);
  // Adds the question and the reply to the conversation's memory in writes.
  void RecordTurn(store::WriteBatch& writes, const InboundMessage& message,
                  const OutboundMessage& reply) const;

  store::ConversationMemory& memory() { return memory_; }
  const Clock& clock() const { return clock_; }
  const config::EngineConfig& options() const { return options_; }
  MetricsRegistry& metrics() { return metrics_; }

 private:
  knowledge::KnowledgeIndex& index_;
  store::ConversationMemory& memory_;
  const Clock& clock_;
  config::EngineConfig options_;
  std::vector<config::AccessGrant> grants_;
  Histogram& retrieval_seconds_;
  Histogram& memory_seconds_;
  MetricsRegistry& metrics_;
  std::unique_ptr<LlmDeps> llm_;
};

// The apology sent when a turn fails internally.
extern const char kErrorText[];

}  // namespace parley::engine
