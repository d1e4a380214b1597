#include "engine/engine.h"

#include <spdlog/spdlog.h>

#include "core/glob.h"
#include "core/ids.h"
#include "engine/llm_turn.h"

namespace parley::engine {

const char kErrorText[] =
    "Sorry, something went wrong on my side and I couldn't answer. Please try again in a moment.";

Engine::Engine(knowledge::KnowledgeIndex& index, store::ConversationMemory& memory,
               const Clock& clock, const config::EngineConfig& options,
               std::vector<config::AccessGrant> grants, MetricsRegistry& metrics)
    : index_(index),
      memory_(memory),
      clock_(clock),
      options_(options),
      grants_(std::move(grants)),
      retrieval_seconds_(metrics.GetHistogram("parley_stage_seconds",
                                              "Latency of turn stages in seconds",
                                              "stage=\"retrieval\"")),
      memory_seconds_(metrics.GetHistogram("parley_stage_seconds",
                                           "Latency of turn stages in seconds",
                                           "stage=\"memory_load\"")),
      metrics_(metrics) {}

void Engine::EnableLlm(LlmDeps deps) { llm_ = std::make_unique<LlmDeps>(std::move(deps)); }

void Engine::Run(const InboundMessage& message, const std::string& turn_id,
                 PartialCallback on_partial, TurnCallback done) {
  // A message that opens its conversation has nothing to remember: no store read for memory.
  if (message.starts_conversation) memory_.NoteNew(message.conversation());
  if (llm_ == nullptr) {
    done(RunTurn(message, turn_id));
    return;
  }
  StartLlmTurn(*this, *llm_, message, turn_id, std::move(on_partial), std::move(done));
}

Answer Engine::Extractive(const std::string& question,
                          const std::vector<knowledge::Passage>& passages) const {
  ResponderOptions responder;
  responder.min_confidence = options_.min_confidence;
  responder.max_answer_sentences = static_cast<size_t>(options_.max_answer_sentences);
  return ComposeExtractiveAnswer(question, passages, responder);
}

std::vector<std::string> Engine::AccessTagsFor(const ConversationKey& conversation) const {
  std::vector<std::string> tags;
  const std::string subject = conversation.platform + ":" + conversation.channel;
  for (const config::AccessGrant& grant : grants_) {
    for (const std::string& pattern : grant.conversations) {
      if (GlobMatch(pattern, subject)) {
        tags.insert(tags.end(), grant.tags.begin(), grant.tags.end());
        break;
      }
    }
  }
  return tags;
}

OutboundMessage Engine::NewReply(const InboundMessage& message, const std::string& turn_id) const {
  OutboundMessage reply;
  reply.id = NewId();
  reply.conversation = message.conversation();
  reply.in_reply_to = message.event_id;
  reply.reply_route = message.reply_route;
  reply.turn_id = turn_id;
  return reply;
}

Result<std::vector<knowledge::Passage>> Engine::Retrieve(const InboundMessage& message,
                                                         const std::vector<store::Turn>& recent,
                                                         size_t max_passages) {
  // Follow-ups: the latest earlier questions give the retrieval query its context ("and on
  // Windows?" after a question about installing). Context only boosts; the new question's own
  // terms decide what matches.
  knowledge::RetrievalQuery query;
  query.text = message.text;
  int questions = 0;
  for (auto it = recent.rbegin(); it != recent.rend() && questions < 2; ++it) {
    if (it->role != "user") continue;
    query.context = it->text + (query.context.empty() ? "" : "\n" + query.context);
    ++questions;
  }
  const int64_t t0 = MonotonicNanos();
  auto passages = index_.Retrieve(query, knowledge::AccessFilter{AccessTagsFor(
                                             message.conversation())},
                                  max_passages);
  retrieval_seconds_.ObserveNanos(MonotonicNanos() - t0);
  return passages;
}

void Engine::RecordTurn(store::WriteBatch& writes, const InboundMessage& message,
                        const OutboundMessage& reply) const {
  const int64_t now = clock_.NowMs();
  const ConversationKey conv = message.conversation();
  memory_.Append(writes, conv,
                 store::Turn{"user", message.user, message.text, reply.turn_id, now, {}});
  memory_.Append(writes, conv,
                 store::Turn{"assistant", "", reply.text, reply.turn_id, now, reply.citations});
}

TurnOutput Engine::RunTurn(const InboundMessage& message, const std::string& turn_id) {
  TurnOutput out;
  const ConversationKey conv = message.conversation();
  OutboundMessage& reply = out.reply;
  reply = NewReply(message, turn_id);

  const int64_t t0 = MonotonicNanos();
  auto recent = memory_.Recent(conv, static_cast<size_t>(options_.memory_turns),
                               static_cast<size_t>(options_.memory_chars));
  memory_seconds_.ObserveNanos(MonotonicNanos() - t0);
  if (!recent.ok()) {
    spdlog::error("turn.error turn={} conv={} stage=memory error=\"{}\"", turn_id,
                  conv.Display(), recent.status().ToString());
    reply.text = kErrorText;
    out.outcome = "error";
    return out;
  }

  auto passages = Retrieve(message, *recent, static_cast<size_t>(options_.max_passages));
  if (!passages.ok()) {
    spdlog::error("turn.error turn={} conv={} stage=retrieval error=\"{}\"", turn_id,
                  conv.Display(), passages.status().ToString());
    reply.text = kErrorText;
    out.outcome = "error";
    return out;
  }

  Answer answer = Extractive(message.text, *passages);
  reply.text = answer.text;
  reply.citations = answer.citations;
  reply.confidence = answer.confidence;
  out.outcome = answer.answered ? "answered" : "no_answer";
  RecordTurn(out.writes, message, reply);
  return out;
}

}  // namespace parley::engine
