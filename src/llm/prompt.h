#pragma once
// Grounded prompt assembly: the roles are kept apart and the prompt fits a token budget.
//
// - The system message holds only the configured persona and rules (or the built-in ones): no
//   text from documents, users or tools ever reaches the system role.
// - Earlier turns of this conversation go in as alternating user / assistant messages.
// - The last user message carries, inside delimiters, the rolling summary of older turns, the
//   retrieved passages as numbered sources with their titles, and then the user's own words.
//   Delimiter look-alikes inside those texts are defused, so a document cannot close its own
//   block and pose as something else.
// - Budget: the oldest turns are dropped first, then the weakest sources (the last ones); the
//   system prompt and the question are always kept.
// Thread-safety: pure functions.

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "core/message.h"
#include "llm/chat.h"

namespace parley::llm {

// The built-in system prompt (used when llm.system_prompt is empty).
extern const char kDefaultSystemPrompt[];

struct PromptSource {
  Citation citation;  // title, section, source, url
  std::string text;
};

struct PromptTurn {
  std::string role;  // "user" | "assistant"
  std::string text;
};

struct PromptInput {
  std::string system_prompt;         // empty = kDefaultSystemPrompt
  std::string summary;               // rolling summary of turns older than `history`
  std::vector<PromptTurn> history;   // oldest first
  std::vector<PromptSource> sources;  // best first
  std::string question;
  int context_tokens = 6000;
};

struct Prompt {
  std::vector<ChatMessage> messages;
  std::vector<PromptSource> sources;  // the sources kept, numbered from 1 in this order
  int estimated_tokens = 0;
  size_t dropped_turns = 0;
  size_t dropped_sources = 0;
};

// Rough token count: ~4 bytes per token, plus a per-message overhead in BuildPrompt.
int EstimateTokens(std::string_view text);

Prompt BuildPrompt(const PromptInput& input);

// The answer's citation markers: "[n]" and "[n, m]" / "[n][m]" forms, for 1 <= n <= sources.
// Returns the cited source numbers in order of first appearance, without repeats.
std::vector<size_t> CitedSources(std::string_view answer, size_t sources);

// Rewrites the answer's markers so the cited sources are numbered 1.. in order of first
// appearance (`cited` as returned by CitedSources); markers naming no source are removed.
std::string RenumberCitations(std::string_view answer, const std::vector<size_t>& cited,
                              size_t sources);

}  // namespace parley::llm
