#pragma once
// The embedded extractive responder: answers with the most relevant sentences of the best
// passage(s), with citations, or says plainly that the knowledge base has no answer.
// Thread-safety: stateless; thread-safe.

#include <string>
#include <vector>

#include "core/message.h"
#include "knowledge/knowledge.h"

namespace parley::engine {

struct ResponderOptions {
  double min_confidence = 0.35;
  size_t max_answer_sentences = 3;
  size_t max_citations = 3;
};

struct Answer {
  std::string text;  // Markdown
  std::vector<Citation> citations;
  double confidence = 0;
  bool answered = false;  // false: abstained (no good passage)
};

// The reply given when the knowledge base has nothing good enough. Mentions that a person can help.
extern const char kNoAnswerText[];

Answer ComposeExtractiveAnswer(const std::string& question,
                               const std::vector<knowledge::Passage>& passages,
                               const ResponderOptions& options);

// Splits text into sentences and code blocks (a fenced block or an indented/line-structured block
// stays whole). Exposed for tests.
std::vector<std::string> SplitSentences(const std::string& text);

}  // namespace parley::engine
