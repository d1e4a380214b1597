#include <gtest/gtest.h>

#include "adapters/webhook/webhook_adapter.h"
#include "net/crypto.h"

namespace parley::webhook {
namespace {

TEST(SignatureTest, HmacMatchesRfc4231Vector) {
  // RFC 4231, test case 1.
  EXPECT_EQ(net::HmacSha256Hex(std::string(20, '\x0b'), "Hi There"),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
}

TEST(SignatureTest, SignsTimestampDotBody) {
  EXPECT_EQ(Sign("k", "1700000000", "{}"), "v1=" + net::HmacSha256Hex("k", "1700000000.{}"));
  EXPECT_NE(Sign("k", "1700000000", "{}"), Sign("k", "1700000001", "{}"));
  EXPECT_NE(Sign("k", "1700000000", "{}"), Sign("other", "1700000000", "{}"));
}

TEST(SignatureTest, ConstantTimeEquals) {
  EXPECT_TRUE(net::ConstantTimeEquals("abc", "abc"));
  EXPECT_FALSE(net::ConstantTimeEquals("abc", "abd"));
  EXPECT_FALSE(net::ConstantTimeEquals("abc", "abcd"));
}

}  // namespace
}  // namespace parley::webhook
