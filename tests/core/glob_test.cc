// GlobMatch: the id patterns of access grants and tool rules.

#include "core/glob.h"

#include <gtest/gtest.h>

namespace parley {
namespace {

TEST(GlobMatchTest, StarMatchesAnyRun) {
  EXPECT_TRUE(GlobMatch("slack:C0*", "slack:C0123"));
  EXPECT_TRUE(GlobMatch("slack:C0*", "slack:C0"));
  EXPECT_FALSE(GlobMatch("slack:C0*", "slack:C1123"));
  EXPECT_TRUE(GlobMatch("*", ""));
  EXPECT_TRUE(GlobMatch("*:admin-*", "matrix:admin-bob"));
  EXPECT_FALSE(GlobMatch("slack:U1", "slack:U12"));
  EXPECT_TRUE(GlobMatch("a*b*c", "axxbyyc"));
  EXPECT_FALSE(GlobMatch("a*b*c", "axxbyy"));
  EXPECT_FALSE(GlobMatch("Slack:*", "slack:C1"));  // case-sensitive
}

TEST(GlobMatchTest, Stars) {
  EXPECT_TRUE(GlobMatch("webhook:staff-*", "webhook:staff-1"));
  EXPECT_TRUE(GlobMatch("*", "anything"));
  EXPECT_TRUE(GlobMatch("*:C01*", "slack:C0123"));
  EXPECT_FALSE(GlobMatch("webhook:staff-*", "webhook:public"));
  EXPECT_FALSE(GlobMatch("webhook:staff", "webhook:staff-1"));
  EXPECT_TRUE(GlobMatch("a*b*c", "aXXbYYc"));
  EXPECT_FALSE(GlobMatch("a*b*c", "aXXbYY"));
}

}  // namespace
}  // namespace parley
