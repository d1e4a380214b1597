#include "core/status.h"

#include <gtest/gtest.h>

namespace parley {
namespace {

TEST(StatusTest, OkAndErrors) {
  EXPECT_TRUE(Status::Ok().ok());
  Status s = Status::NotFound("no such key");
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(s.IsNotFound());
  EXPECT_EQ(s.ToString(), "NotFound: no such key");
}

TEST(ResultTest, ValueOrStatus) {
  Result<int> good(7);
  ASSERT_TRUE(good.ok());
  EXPECT_EQ(good.value(), 7);
  Result<int> bad(Status::InvalidArgument("x"));
  EXPECT_FALSE(bad.ok());
  EXPECT_TRUE(bad.status().IsInvalidArgument());
  // An OK status without a value is itself an error, never a silent success.
  Result<int> odd(Status::Ok());
  EXPECT_FALSE(odd.ok());
  EXPECT_EQ(odd.status().code(), Status::Code::kInternal);
}

TEST(ResultDeathTest, ValueOfErrorAborts) {
  Result<int> bad(Status::Internal("boom"));
  EXPECT_DEATH((void)bad.value(), "boom");
}

}  // namespace
}  // namespace parley
