#include "core/percent.h"

#include <gtest/gtest.h>

namespace parley {
namespace {

TEST(PercentEncodeTest, KeepsUnreservedEncodesTheRest) {
  EXPECT_EQ(PercentEncode("AZaz09-._~"), "AZaz09-._~");
  EXPECT_EQ(PercentEncode("a b&c=d/e"), "a%20b%26c%3Dd%2Fe");
  EXPECT_EQ(PercentEncode("é"), "%C3%A9");
  EXPECT_EQ(PercentEncode(std::string("\0x", 2)), "%00x");
  EXPECT_EQ(PercentEncode(""), "");
}

TEST(PercentEncodeTest, AlsoKeep) {
  EXPECT_EQ(PercentEncode("docs/a b.md", "/"), "docs/a%20b.md");
  EXPECT_EQ(PercentEncode("x#y", "/"), "x%23y");
}

}  // namespace
}  // namespace parley

namespace parley {
namespace {

TEST(PercentDecodeTest, DecodesEscapesAndPlus) {
  EXPECT_EQ(PercentDecode("a%20b+c%2Fd"), "a b c/d");
  EXPECT_EQ(PercentDecode("a+b", /*plus_is_space=*/false), "a+b");
  EXPECT_EQ(PercentDecode("%e2%82%AC"), "\xE2\x82\xAC");
  // Broken escapes stay as they are.
  EXPECT_EQ(PercentDecode("100%"), "100%");
  EXPECT_EQ(PercentDecode("%zz%4"), "%zz%4");
  EXPECT_EQ(PercentDecode(PercentEncode("x/y z&=%")), "x/y z&=%");
}

TEST(ParseQueryTest, PairsInOrderDecoded) {
  using Pairs = std::vector<std::pair<std::string, std::string>>;
  EXPECT_EQ(ParseQuery("state=queued&queue=bill%20ing&flag&&x="),
            (Pairs{{"state", "queued"}, {"queue", "bill ing"}, {"flag", ""}, {"x", ""}}));
  EXPECT_EQ(ParseQuery(""), Pairs{});
  EXPECT_EQ(ParseQuery("a=1=2"), (Pairs{{"a", "1=2"}}));
}

}  // namespace
}  // namespace parley
