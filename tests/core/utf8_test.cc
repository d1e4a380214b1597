#include "core/utf8.h"

#include <string>

#include <gtest/gtest.h>

namespace parley {
namespace {

// "é" is C3 A9, "€" is E2 82 AC, "😀" is F0 9F 98 80.
TEST(Utf8CutTest, CutsAtACharacterBoundaryAtOrBeforeTheLimit) {
  const std::string s = "a\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80";  // a é € 😀: 1 + 2 + 3 + 4 bytes
  EXPECT_EQ(Utf8CutPoint(s, 0), 0u);
  EXPECT_EQ(Utf8CutPoint(s, 1), 1u);
  EXPECT_EQ(Utf8CutPoint(s, 2), 1u);  // inside é
  EXPECT_EQ(Utf8CutPoint(s, 3), 3u);
  EXPECT_EQ(Utf8CutPoint(s, 4), 3u);  // inside €
  EXPECT_EQ(Utf8CutPoint(s, 5), 3u);
  EXPECT_EQ(Utf8CutPoint(s, 6), 6u);
  EXPECT_EQ(Utf8CutPoint(s, 9), 6u);  // inside 😀
  EXPECT_EQ(Utf8CutPoint(s, 10), 10u);
  EXPECT_EQ(Utf8CutPoint(s, 100), 10u);
  EXPECT_EQ(Utf8Prefix(s, 5), "a\xC3\xA9");
  EXPECT_EQ(Utf8Prefix(s, 10), s);
  EXPECT_EQ(Utf8Prefix("", 3), "");
}

TEST(Utf8CutTest, OnlyContinuationBytesMeanNothingFits) {
  const std::string s = "\x80\x80\x80\x80";
  EXPECT_EQ(Utf8CutPoint(s, 2), 0u);
  EXPECT_EQ(Utf8Prefix(s, 2), "");
  // A lone lead byte is a boundary: ill-formed text is left to SanitizeUtf8-like callers.
  EXPECT_EQ(Utf8CutPoint("ab\xE2", 2), 2u);
}

}  // namespace
}  // namespace parley
