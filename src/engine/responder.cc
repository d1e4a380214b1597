#include "engine/responder.h"

#include <algorithm>
#include <cctype>
#include <memory>
#include <mutex>
#include <set>
#include <unordered_map>

namespace parley::engine {

const char kNoAnswerText[] =
    "I couldn't find an answer to that in the knowledge base. A person from the team can help: "
    "reply \"human\" and I'll pass your question on.";

namespace {

struct Unit {
  std::string text;
  size_t paragraph = 0;
  bool is_code = false;
  bool is_list_item = false;
};

bool IsListItem(const std::string& line) {
  size_t i = line.find_first_not_of(' ');
  if (i == std::string::npos) return false;
  if ((line[i] == '-' || line[i] == '*' || line[i] == '+') && i + 1 < line.size() &&
      line[i + 1] == ' ') {
    return true;
  }
  size_t j = i;
  while (j < line.size() && std::isdigit(static_cast<unsigned char>(line[j]))) ++j;
  return j > i && j + 1 < line.size() && (line[j] == '.' || line[j] == ')') && line[j + 1] == ' ';
}

// Sentence ends: '.', '!' or '?' followed by a space and an upper-case letter, digit, quote or
// opening bracket; common abbreviations are not ends.
void SplitProse(const std::string& text, size_t paragraph, std::vector<Unit>& out) {
  static const std::set<std::string> kAbbreviations = {"e.g.", "i.e.", "etc.", "vs.", "cf.",
                                                       "Dr.",  "Mr.",  "Ms.",  "No.", "approx."};
  size_t start = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if ((c != '.' && c != '!' && c != '?') || i + 2 >= text.size() || text[i + 1] != ' ') continue;
    unsigned char next = static_cast<unsigned char>(text[i + 2]);
    if (!(std::isupper(next) || std::isdigit(next) || next == '"' || next == '(' || next == '`')) {
      continue;
    }
    size_t word_start = text.rfind(' ', i);
    word_start = word_start == std::string::npos ? start : word_start + 1;
    if (kAbbreviations.count(text.substr(word_start, i + 1 - word_start)) > 0) continue;
    out.push_back({text.substr(start, i + 1 - start), paragraph, false, false});
    start = i + 2;
  }
  if (start < text.size()) out.push_back({text.substr(start), paragraph, false, false});
}

std::vector<Unit> SplitUnits(const std::string& text) {
  std::vector<Unit> units;
  size_t paragraph = 0;
  std::string prose;
  std::string code;
  bool in_fence = false;
  auto flush_prose = [&] {
    size_t b = prose.find_first_not_of(" \n");
    if (b != std::string::npos) {
      size_t e = prose.find_last_not_of(" \n");
      SplitProse(prose.substr(b, e - b + 1), paragraph, units);
    }
    prose.clear();
  };
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) nl = text.size();
    std::string line = text.substr(pos, nl - pos);
    pos = nl + 1;
    std::string trimmed = line.substr(std::min(line.size(), line.find_first_not_of(' ')));
    bool fence = trimmed.rfind("```", 0) == 0 || trimmed.rfind("~~~", 0) == 0;
    if (in_fence) {
      code += line + "\n";
      if (fence) {
        units.push_back({code.substr(0, code.size() - 1), paragraph, true, false});
        code.clear();
        in_fence = false;
        ++paragraph;
      }
      continue;
    }
    if (fence) {
      flush_prose();
      ++paragraph;
      in_fence = true;
      code = line + "\n";
      continue;
    }
    if (trimmed.empty()) {
      flush_prose();
      ++paragraph;
      continue;
    }
    // An indented line right after a list item continues that item.
    if (line[0] == ' ' && prose.empty() && !units.empty() && units.back().is_list_item &&
        units.back().paragraph == paragraph) {
      units.back().text += " " + trimmed;
      continue;
    }
    if (IsListItem(line) || trimmed[0] == '|' || trimmed[0] == '#') {
      flush_prose();
      units.push_back({trimmed, paragraph, false, IsListItem(line)});
      continue;
    }
    if (!prose.empty()) prose += ' ';
    prose += trimmed;
  }
  if (in_fence && !code.empty()) units.push_back({code + "```", paragraph, true, false});
  flush_prose();
  return units;
}

// A chunk split into units, with each unit's distinct analysed terms.
struct AnalysedChunk {
  std::vector<Unit> units;
  std::vector<std::vector<std::string>> terms;  // sorted, distinct, per unit
};

// Chunks recur across turns (popular passages), and stemming every sentence on every answer is
// a large share of a turn's CPU, so analyses are cached by the chunk's text. The cache is
// bounded; it is dropped whole when full.
std::shared_ptr<const AnalysedChunk> Analyse(const std::string& text) {
  static std::mutex mu;
  static std::unordered_map<std::string, std::shared_ptr<const AnalysedChunk>> cache;
  constexpr size_t kMaxCached = 2048;
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = cache.find(text);
    if (it != cache.end()) return it->second;
  }
  auto analysed = std::make_shared<AnalysedChunk>();
  analysed->units = SplitUnits(text);
  for (const Unit& unit : analysed->units) {
    std::vector<std::string> terms = knowledge::AnalyzeTerms(unit.text);
    std::sort(terms.begin(), terms.end());
    terms.erase(std::unique(terms.begin(), terms.end()), terms.end());
    analysed->terms.push_back(std::move(terms));
  }
  std::lock_guard<std::mutex> lock(mu);
  if (cache.size() >= kMaxCached) cache.clear();
  cache.emplace(text, analysed);
  return analysed;
}

size_t Overlap(const std::set<std::string>& query, const std::vector<std::string>& terms) {
  size_t n = 0;
  for (const std::string& t : terms) n += query.count(t);
  return n;
}

}  // namespace

std::vector<std::string> SplitSentences(const std::string& text) {
  std::vector<std::string> out;
  for (Unit& u : SplitUnits(text)) out.push_back(std::move(u.text));
  return out;
}

Answer ComposeExtractiveAnswer(const std::string& question,
                               const std::vector<knowledge::Passage>& passages,
                               const ResponderOptions& options) {
  Answer answer;
  if (passages.empty() || passages[0].confidence < options.min_confidence) {
    answer.text = kNoAnswerText;
    answer.confidence = passages.empty() ? 0.0 : passages[0].confidence;
    return answer;
  }
  const knowledge::Passage& best = passages[0];
  answer.answered = true;
  answer.confidence = best.confidence;

  const auto terms = knowledge::AnalyzeTerms(question);
  const std::set<std::string> query(terms.begin(), terms.end());
  const std::shared_ptr<const AnalysedChunk> analysed = Analyse(best.chunk.text);
  const std::vector<Unit>& units = analysed->units;
  // Drop a leading unit that only repeats the section heading.
  std::vector<std::pair<double, size_t>> scored;
  for (size_t i = 0; i < units.size(); ++i) {
    if (units[i].text.rfind("#", 0) == 0) continue;
    double score = static_cast<double>(Overlap(query, analysed->terms[i]));
    score -= 0.01 * static_cast<double>(i);  // prefer earlier sentences on ties
    scored.push_back({score, i});
  }
  std::sort(scored.begin(), scored.end(),
            [](const auto& a, const auto& b) { return a.first > b.first; });
  std::set<size_t> chosen;
  for (const auto& [score, i] : scored) {
    if (chosen.size() >= options.max_answer_sentences) break;
    if (score <= 0 && !chosen.empty()) break;
    chosen.insert(i);
    // A sentence that introduces a code block or a list ("Run:", "You need:") brings it along.
    const std::string& t = units[i].text;
    if (!t.empty() && t.back() == ':') {
      if (i + 1 < units.size() && units[i + 1].is_code) chosen.insert(i + 1);
      for (size_t j = i + 1; j < units.size() && j <= i + 8 && units[j].is_list_item; ++j) {
        chosen.insert(j);
      }
    }
  }
  std::string text;
  size_t previous = 0;
  bool first = true;
  for (size_t i : chosen) {
    if (!first) {
      bool same_paragraph = units[i].paragraph == units[previous].paragraph && i == previous + 1 &&
                            !units[i].is_code && !units[previous].is_code;
      if (units[i].is_list_item && i == previous + 1) {
        text += "\n";
      } else {
        text += same_paragraph ? " " : "\n\n";
      }
    }
    text += units[i].text;
    previous = i;
    first = false;
  }
  if (text.empty()) text = best.chunk.text;
  answer.text = text;

  // Cite the passage used, and others that are nearly as good, once each.
  std::set<std::pair<std::string, std::string>> cited;
  for (const knowledge::Passage& p : passages) {
    if (answer.citations.size() >= options.max_citations) break;
    if (&p != &best && p.confidence < std::max(options.min_confidence, best.confidence * 0.8)) {
      continue;
    }
    Citation c = p.chunk.ToCitation();
    if (cited.insert({c.source, c.section}).second) answer.citations.push_back(std::move(c));
  }
  return answer;
}

}  // namespace parley::engine
