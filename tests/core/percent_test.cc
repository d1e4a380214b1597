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
