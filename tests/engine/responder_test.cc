#include "engine/responder.h"

#include <gtest/gtest.h>

#include "engine/engine.h"

namespace parley::engine {
namespace {

knowledge::Passage MakePassage(const std::string& source, const std::string& section,
                               const std::string& text, double confidence) {
  knowledge::Passage p;
  p.chunk.title = "Doc " + source;
  p.chunk.source = source;
  p.chunk.heading_path = {section};
  p.chunk.text = text;
  p.confidence = confidence;
  p.score = confidence * 10;
  return p;
}

TEST(SplitSentencesTest, KeepsCodeBlocksAndListItemsWhole) {
  auto units = SplitSentences(
      "First sentence here. Second one, e.g. with an abbreviation. Third!\n\n"
      "Run this:\n```\nmake\nmake install\n```\n- item one. Still item one\n- item two\n");
  ASSERT_EQ(units.size(), 7u) << ::testing::PrintToString(units);
  EXPECT_EQ(units[0], "First sentence here.");
  EXPECT_EQ(units[1], "Second one, e.g. with an abbreviation.");
  EXPECT_EQ(units[2], "Third!");
  EXPECT_EQ(units[3], "Run this:");
  EXPECT_EQ(units[4], "```\nmake\nmake install\n```");
  EXPECT_EQ(units[5], "- item one. Still item one");
  EXPECT_EQ(units[6], "- item two");
}

TEST(ResponderTest, PicksTheSentencesThatMatchTheQuestion) {
  auto p = MakePassage("a.md", "Refunds",
                       "Our shop opened in 1999. Refunds are paid within fourteen days. The "
                       "office cat is called Mo. Shipping is free above fifty euros.",
                       0.8);
  ResponderOptions options;
  options.max_answer_sentences = 1;
  Answer a = ComposeExtractiveAnswer("how long until refunds are paid", {p}, options);
  EXPECT_TRUE(a.answered);
  EXPECT_EQ(a.text, "Refunds are paid within fourteen days.");
  ASSERT_EQ(a.citations.size(), 1u);
  EXPECT_EQ(a.citations[0].source, "a.md");
  EXPECT_DOUBLE_EQ(a.confidence, 0.8);
}

TEST(ResponderTest, AnIntroducingSentenceBringsItsCodeBlock) {
  auto p = MakePassage("b.md", "Install",
                       "To install the tool, run:\n\n```\napt install tool\n```\n\nIt has no "
                       "other dependencies.",
                       0.9);
  Answer a = ComposeExtractiveAnswer("how to install the tool", {p}, ResponderOptions{});
  EXPECT_NE(a.text.find("```\napt install tool\n```"), std::string::npos) << a.text;
}

TEST(ResponderTest, AbstainsBelowTheThreshold) {
  auto p = MakePassage("c.md", "X", "Something loosely related.", 0.2);
  ResponderOptions options;
  options.min_confidence = 0.35;
  Answer a = ComposeExtractiveAnswer("question", {p}, options);
  EXPECT_FALSE(a.answered);
  EXPECT_EQ(a.text, kNoAnswerText);
  EXPECT_TRUE(a.citations.empty());
  EXPECT_FALSE(ComposeExtractiveAnswer("question", {}, options).answered);
}

TEST(ResponderTest, CitesNearlyAsGoodPassagesOnceEach) {
  auto best = MakePassage("a.md", "S1", "Alpha beta gamma.", 0.9);
  auto same_section = MakePassage("a.md", "S1", "Alpha again.", 0.85);
  auto close = MakePassage("b.md", "S2", "Alpha beta.", 0.8);
  auto weak = MakePassage("c.md", "S3", "Beta.", 0.4);
  Answer a = ComposeExtractiveAnswer("alpha beta", {best, same_section, close, weak},
                                     ResponderOptions{});
  ASSERT_EQ(a.citations.size(), 2u);
  EXPECT_EQ(a.citations[0].source, "a.md");
  EXPECT_EQ(a.citations[1].source, "b.md");
}

}  // namespace
}  // namespace parley::engine
