#include "knowledge/analyzer.h"

#include <xapian.h>

#include <algorithm>
#include <string>
#include <unordered_set>
#include <vector>

#include "knowledge/knowledge.h"

namespace parley::knowledge {
namespace internal {
namespace {

constexpr size_t kMaxWordBytes = 64;  // TermGenerator's default max_word_length

// Function words of English, and the words people wrap chat questions in.
// clang-format off
const char* const kStopwords[] = {
    "a", "about", "above", "after", "again", "against", "all", "am", "an", "and", "any", "are",
    "aren't", "as", "at", "be", "because", "been", "before", "being", "below", "between", "both",
    "but", "by", "can", "can't", "cannot", "could", "couldn't", "did", "didn't", "do", "does",
    "doesn't", "doing", "don't", "down", "during", "each", "else", "etc", "ever", "few", "for",
    "from", "further", "had", "hadn't", "has", "hasn't", "have", "haven't", "having", "he", "he's",
    "her", "here", "here's", "hers", "herself", "him", "himself", "his", "how", "how's", "i", "i'd",
    "i'll", "i'm", "i've", "ie", "if", "in", "into", "is", "isn't", "it", "it's", "its", "itself",
    "just", "let's", "me", "might", "more", "most", "must", "mustn't", "my", "myself", "no", "nor",
    "not", "of", "off", "on", "once", "only", "or", "other", "ought", "our", "ours", "ourselves",
    "out", "over", "own", "per", "same", "shall", "shan't", "she", "she's", "should", "shouldn't",
    "so", "some", "such", "than", "that", "that's", "the", "their", "theirs", "them", "themselves",
    "then", "there", "there's", "these", "they", "they're", "they've", "this", "those", "through",
    "thus", "to", "too", "under", "until", "up", "upon", "us", "very", "via", "was", "wasn't", "we",
    "we're", "we've", "were", "weren't", "what", "what's", "when", "when's", "where", "where's",
    "whether", "which", "while", "who", "who's", "whom", "whose", "why", "why's", "will", "with",
    "within", "without", "won't", "would", "wouldn't", "yet", "you", "you'd", "you'll", "you're",
    "you've", "your", "yours", "yourself", "yourselves",
    // Chat filler.
    "anybody", "anyone", "anything", "hello", "hey", "hi", "kindly", "maybe", "okay", "ok",
    "please", "pls", "plz", "somebody", "someone", "something", "thank", "thanks", "thx", "tell",
    "wondering", "guys", "folks", "also", "actually", "really", "basically",
    // Contractions as typed in chat, without the apostrophe.
    "whats", "hows", "wheres", "whos", "thats", "theres", "im", "ive", "dont", "doesnt", "didnt",
    "cant", "couldnt", "wont", "wouldnt", "shouldnt", "isnt", "arent", "wasnt", "youre", "ur",
};
// clang-format on

bool IsDigit(unsigned ch) {
  return Xapian::Unicode::get_category(ch) == Xapian::Unicode::DECIMAL_DIGIT_NUMBER;
}

bool IsUpper(unsigned ch) {
  return Xapian::Unicode::get_category(ch) == Xapian::Unicode::UPPERCASE_LETTER;
}

// Lowercased word character, or 0.
unsigned WordChar(unsigned ch) {
  return Xapian::Unicode::is_wordchar(ch) ? Xapian::Unicode::tolower(ch) : 0;
}

constexpr unsigned kIgnore = static_cast<unsigned>(-1);

// Characters allowed between two word characters (AT&T, don't, ...).
unsigned Infix(unsigned ch) {
  if (ch == '\'' || ch == '&' || ch == 0xB7 || ch == 0x5F4 || ch == 0x2027) return ch;
  if (ch == 0x2019 || ch == 0x201B) return '\'';
  if (ch >= 0x200B && (ch <= 0x200D || ch == 0x2060 || ch == 0xFEFF)) return kIgnore;
  return 0;
}

// Characters allowed between two digits (1,000 / 1.5).
unsigned InfixDigit(unsigned ch) {
  switch (ch) {
    case ',':
    case '.':
    case ';':
    case 0x037E:
    case 0x0589:
    case 0x060D:
    case 0x07F8:
    case 0x2044:
    case 0xFE10:
    case 0xFE13:
    case 0xFE14:
      return ch;
    default:
      break;
  }
  if (ch >= 0x200B && (ch <= 0x200D || ch == 0x2060 || ch == 0xFEFF)) return kIgnore;
  return 0;
}

const std::unordered_set<std::string_view>& StopwordSet() {
  static const std::unordered_set<std::string_view> set(std::begin(kStopwords),
                                                        std::end(kStopwords));
  return set;
}

}  // namespace

const std::vector<std::string>& EnglishStopwords() {
  static const std::vector<std::string> words(std::begin(kStopwords), std::end(kStopwords));
  return words;
}

bool IsStopword(std::string_view lowercase_word) { return StopwordSet().count(lowercase_word) > 0; }

namespace {

// Calls fn(word, begin, end) for each word of `text`: `word` lowercased, [begin, end) its bytes in
// `text`. Mirrors Xapian's TermGenerator word splitting.
template <typename Fn>
void ForEachWord(std::string_view text, Fn&& fn) {
  const Xapian::Utf8Iterator end;
  Xapian::Utf8Iterator it(text.data(), text.size());
  auto offset = [&](const Xapian::Utf8Iterator& i) -> size_t {
    return i == end ? text.size() : static_cast<size_t>(i.raw() - text.data());
  };
  std::string term;
  while (true) {
    unsigned ch = 0;
    while (it != end) {
      ch = WordChar(*it);
      if (ch != 0) break;
      ++it;
    }
    if (it == end) break;
    const size_t begin = offset(it);

    term.clear();
    // Initials separated by '.', e.g. "U.S.A." -> "usa".
    if (IsUpper(*it)) {
      Xapian::Utf8Iterator p = it;
      do {
        Xapian::Unicode::append_utf8(term, Xapian::Unicode::tolower(*p++));
      } while (p != end && *p == '.' && ++p != end && IsUpper(*p));
      if (term.size() > 1 && (p == end || !Xapian::Unicode::is_wordchar(*p))) {
        it = p;
        if (term.size() <= kMaxWordBytes) fn(term, begin, offset(it));
        continue;
      }
      term.clear();
    }

    bool at_end = false;
    while (true) {
      unsigned prev = 0;
      do {
        Xapian::Unicode::append_utf8(term, ch);
        prev = ch;
        if (++it == end) {
          at_end = true;
          break;
        }
        ch = WordChar(*it);
      } while (ch != 0);
      if (at_end) break;
      Xapian::Utf8Iterator next = it;
      ++next;
      if (next == end) break;
      unsigned next_ch = WordChar(*next);
      if (next_ch == 0) break;
      unsigned infix = (IsDigit(prev) && IsDigit(*next)) ? InfixDigit(*it) : Infix(*it);
      if (infix == 0) break;
      if (infix != kIgnore) Xapian::Unicode::append_utf8(term, infix);
      ch = next_ch;
      it = next;
    }
    if (!at_end) {
      // "C++", "C#": up to three '+'/'#' directly after the word, not followed by a word char.
      size_t len = term.size();
      unsigned count = 0;
      while (it != end && (*it == '+' || *it == '#')) {
        if (++count > 3) {
          term.resize(len);
          break;
        }
        Xapian::Unicode::append_utf8(term, *it);
        ++it;
      }
      if (it != end && Xapian::Unicode::is_wordchar(*it)) term.resize(len);
    }
    if (term.size() <= kMaxWordBytes) fn(term, begin, offset(it));
  }
}

// Whether the word at text[begin] starts a sentence: nothing but spaces and quotes/brackets
// since the start of the text or since a '.', '!' or '?'.
bool StartsSentence(std::string_view text, size_t begin) {
  for (size_t k = begin; k-- > 0;) {
    const char c = text[k];
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '"' || c == '\'' || c == '(' ||
        c == '*' || c == '_' || c == '>') {
      continue;
    }
    return c == '.' || c == '!' || c == '?' || c == ':';
  }
  return true;
}

}  // namespace

std::vector<std::string> SplitWords(std::string_view text) {
  std::vector<std::string> words;
  ForEachWord(text, [&](const std::string& word, size_t, size_t) { words.push_back(word); });
  return words;
}

std::vector<QueryWord> QueryWords(std::string_view text) {
  std::vector<QueryWord> out;
  ForEachWord(text, [&](const std::string& word, size_t begin, size_t end) {
    std::string term = IndexTerm(word);
    if (term.empty()) return;
    for (const QueryWord& w : out) {
      if (w.term == term) return;
    }
    // Capitals inside the word (iPhone, AWS) or at its start in mid-sentence (Netflix).
    bool named = false;
    for (size_t k = begin; k < end; ++k) {
      if (text[k] >= 'A' && text[k] <= 'Z' && (k > begin || !StartsSentence(text, begin))) {
        named = true;
        break;
      }
    }
    out.push_back(QueryWord{word, std::move(term), named});
  });
  return out;
}

bool ShouldStem(const std::string& lowercase_word) {
  if (lowercase_word.empty()) return false;
  Xapian::Utf8Iterator u(lowercase_word);
  switch (Xapian::Unicode::get_category(*u)) {
    case Xapian::Unicode::LOWERCASE_LETTER:
    case Xapian::Unicode::TITLECASE_LETTER:
    case Xapian::Unicode::MODIFIER_LETTER:
    case Xapian::Unicode::OTHER_LETTER:
      return true;
    default:
      return false;
  }
}

std::string Stem(const std::string& lowercase_word) {
  // Xapian::Stem keeps per-call state: one per thread.
  thread_local Xapian::Stem stemmer("english");
  try {
    return stemmer(lowercase_word);
  } catch (const Xapian::Error&) {
    return lowercase_word;
  }
}

std::string IndexTerm(const std::string& lowercase_word) {
  if (lowercase_word.empty() || IsStopword(lowercase_word)) return "";
  if (!ShouldStem(lowercase_word)) return lowercase_word;
  return "Z" + Stem(lowercase_word);
}

std::vector<std::string> ContentIndexTerms(std::string_view text) {
  std::vector<std::string> terms;
  for (QueryWord& w : QueryWords(text)) terms.push_back(std::move(w.term));
  return terms;
}

}  // namespace internal

std::vector<std::string> AnalyzeTerms(std::string_view text) {
  std::vector<std::string> out;
  try {
    for (const std::string& word : internal::SplitWords(text)) {
      if (internal::IsStopword(word)) continue;
      out.push_back(internal::ShouldStem(word) ? internal::Stem(word) : word);
    }
  } catch (const Xapian::Error&) {
    // Unreachable in practice (Unicode helpers do not throw); an empty analysis is safe.
  }
  return out;
}

}  // namespace parley::knowledge
