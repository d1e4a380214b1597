#pragma once
// Internal to the knowledge module: the text analysis shared by indexing, querying and
// AnalyzeTerms — one English stopword list, Xapian-compatible word splitting and stemming.
// Thread-safety: all functions are thread-safe (each thread has its own stemmer).

#include <string>
#include <string_view>
#include <vector>

namespace parley::knowledge::internal {

// The English stopword list (lowercase, unstemmed): function words plus the filler words of chat
// questions ("please", "hi", "thanks").
const std::vector<std::string>& EnglishStopwords();
bool IsStopword(std::string_view lowercase_word);

// Splits text into lowercase words the way Xapian's TermGenerator does (word characters, infix
// apostrophes and '&', digit groups with '.' or ',', "C++"/"C#" suffixes, initials like "U.S.A");
// words longer than 64 bytes are dropped.
std::vector<std::string> SplitWords(std::string_view text);

// Whether the TermGenerator adds a stemmed "Z" term for this (lowercase) word: it starts with a
// letter.
bool ShouldStem(const std::string& lowercase_word);

// English Snowball stem of a lowercase word.
std::string Stem(const std::string& lowercase_word);

// The index term that a content word matches in the knowledge index: "Z" + stem for words that
// are stemmed, else the word itself; empty for stopwords.
std::string IndexTerm(const std::string& lowercase_word);

// A content word of a question.
struct QueryWord {
  std::string word;    // lowercase
  std::string term;    // its index term (see IndexTerm)
  bool named = false;  // written with capitals other than a sentence's first letter ("Netflix",
                       // "iPhone", "AWS"): likely the name of a product, place or project
};

// The content words of `text`, distinct by index term, in first-occurrence order.
std::vector<QueryWord> QueryWords(std::string_view text);

// Distinct index terms of the content words of `text`, in first-occurrence order.
std::vector<std::string> ContentIndexTerms(std::string_view text);

}  // namespace parley::knowledge::internal
