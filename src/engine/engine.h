#pragma once
// One conversation turn, without I/O of its own: load memory, build the retrieval query (earlier
// questions of the conversation as context for follow-ups), retrieve with the conversation's
// access tags, answer (embedded extractive responder), and return the reply plus the writes that
// record the turn. The Router commits those writes and sends the reply.
// Thread-safety: RunTurn is thread-safe; calls for one conversation must be serial (the Router
// guarantees it) so that memory stays in order.

#include <string>
#include <vector>

#include "config/config.h"
#include "core/clock.h"
#include "core/message.h"
#include "core/metrics.h"
#include "engine/responder.h"
#include "knowledge/knowledge.h"
#include "store/kv_store.h"
#include "store/memory.h"

namespace parley::engine {

struct TurnOutput {
  OutboundMessage reply;
  store::WriteBatch writes;  // the question and the answer in memory
  std::string outcome;       // "answered" | "no_answer" | "error"
};

class Engine {
 public:
  Engine(knowledge::KnowledgeIndex& index, store::ConversationMemory& memory, const Clock& clock,
         const config::EngineConfig& options, std::vector<config::AccessGrant> grants,
         MetricsRegistry& metrics);

  // Runs the turn for message. Never fails: an internal error yields an apology reply with
  // outcome "error" and no memory writes.
  TurnOutput RunTurn(const InboundMessage& message, const std::string& turn_id);

  // The turn's writes were not committed: drop what memory caches of the conversation.
  void DiscardUncommitted(const ConversationKey& conversation) {
    memory_.Invalidate(conversation);
  }

  // Access tags the conversation holds (from knowledge.grants).
  std::vector<std::string> AccessTagsFor(const ConversationKey& conversation) const;

 private:
  knowledge::KnowledgeIndex& index_;
  store::ConversationMemory& memory_;
  const Clock& clock_;
  config::EngineConfig options_;
  std::vector<config::AccessGrant> grants_;
  Histogram& retrieval_seconds_;
  Histogram& memory_seconds_;
};

// Glob match with '*' (any run of characters). Exposed for tests.
bool GlobMatch(const std::string& pattern, const std::string& text);

// The apology sent when a turn fails internally.
extern const char kErrorText[];

}  // namespace parley::engine
