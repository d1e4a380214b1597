#pragma once
// A turn answered by the LLM, as an explicit chain of asynchronous steps:
//   memory + rolling summary + pending confirmation -> retrieval -> grounded prompt
//   -> model call (streamed to the user) -> tool calls through the policy layer, concurrently,
//      and back to the model, at most llm.max_tool_rounds times -> citations mapped to sources
//   -> the reply and the writes that record the turn.
// When the model cannot answer (error, circuit open, timeout, turn time limit), the user gets the
// extractive answer with a short note instead: never silence, never an internal error text.
// A tool marked `confirm` is not run until the user says yes in the conversation: the turn ends
// with a question, the pending call is stored (v1/confirm/<conv>), and the next turn runs or
// drops it.
// Thread-safety: each turn's state is guarded by its own mutex; callbacks arrive on io threads.

#include <string>

#include "core/message.h"
#include "engine/engine.h"

namespace parley::engine {

void StartLlmTurn(Engine& engine, const LlmDeps& deps, const InboundMessage& message,
                  const std::string& turn_id, PartialCallback on_partial, TurnCallback done);

// The user's reply to a confirmation question: 1 = yes, -1 = no, 0 = neither. Exposed for tests.
int ConfirmationAnswer(const std::string& text);

// The note put before an extractive answer given because the LLM failed.
extern const char kLlmFallbackNote[];
// The note after an answer that cites no source (llm.unsupported = "flag").
extern const char kUnsupportedNote[];

}  // namespace parley::engine
