#include <gtest/gtest.h>

#include "config/config.h"

namespace parley::config {
namespace {

void ExpectSplit(const std::string& in, const std::string& host, uint16_t port) {
  Result<std::pair<std::string, uint16_t>> r = SplitHostPort(in);
  ASSERT_TRUE(r.ok()) << in << ": " << r.status().ToString();
  EXPECT_EQ(r->first, host) << in;
  EXPECT_EQ(r->second, port) << in;
}

TEST(SplitHostPortTest, Accepts) {
  ExpectSplit("127.0.0.1:8080", "127.0.0.1", 8080);
  ExpectSplit("0.0.0.0:0", "0.0.0.0", 0);
  ExpectSplit("[::1]:443", "::1", 443);
  ExpectSplit("[::]:65535", "::", 65535);
  ExpectSplit("[fe80::1:2]:1", "fe80::1:2", 1);
  ExpectSplit("localhost:9090", "localhost", 9090);
  ExpectSplit("chat-bot.example.org:80", "chat-bot.example.org", 80);
  ExpectSplit("a.example.:80", "a.example.", 80);
  ExpectSplit("db1:5432", "db1", 5432);
}

TEST(SplitHostPortTest, RejectsWithReason) {
  auto message = [](const std::string& in) {
    Result<std::pair<std::string, uint16_t>> r = SplitHostPort(in);
    EXPECT_FALSE(r.ok()) << in;
    if (!r.ok()) {
      EXPECT_TRUE(r.status().IsInvalidArgument()) << in;
    }
    return r.ok() ? std::string() : r.status().message();
  };
  EXPECT_EQ(message("8080"), "expected \"HOST:PORT\", got \"8080\"");
  EXPECT_EQ(message(""), "expected \"HOST:PORT\", got \"\"");
  EXPECT_NE(message(":8080").find("missing host"), std::string::npos);
  EXPECT_NE(message("::1:8080").find("must be in brackets"), std::string::npos);
  EXPECT_NE(message("[::1]8080").find("[IPv6]:PORT"), std::string::npos);
  EXPECT_NE(message("[::1]").find("[IPv6]:PORT"), std::string::npos);
  EXPECT_NE(message("[1.2.3.4]:80").find("invalid IPv6 address"), std::string::npos);
  EXPECT_NE(message("[zz::1]:80").find("invalid IPv6 address"), std::string::npos);
  EXPECT_NE(message("127.0.0.1:65536").find("invalid port \"65536\""), std::string::npos);
  EXPECT_NE(message("127.0.0.1:").find("invalid port"), std::string::npos);
  EXPECT_NE(message("127.0.0.1:-1").find("invalid port"), std::string::npos);
  EXPECT_NE(message("127.0.0.1:80a").find("invalid port"), std::string::npos);
  EXPECT_NE(message("127.0.0.1:999999").find("invalid port"), std::string::npos);
  EXPECT_NE(message("256.0.0.1:80").find("invalid host \"256.0.0.1\""), std::string::npos);
  EXPECT_NE(message("1.2.3:80").find("invalid host"), std::string::npos);
  EXPECT_NE(message("bad_host:80").find("invalid host"), std::string::npos);
  EXPECT_NE(message("-lead.example:80").find("invalid host"), std::string::npos);
  EXPECT_NE(message("a..b:80").find("invalid host"), std::string::npos);
  EXPECT_NE(message("host name:80").find("invalid host"), std::string::npos);
  EXPECT_NE(message(std::string(64, 'a') + ".com:80").find("invalid host"), std::string::npos);
}

TEST(IsLoopbackHostTest, Loopback) {
  for (const char* h : {"localhost", "LocalHost", "localhost.", "127.0.0.1", "127.1.2.3",
                        "127.255.255.255", "::1", "[::1]", "0:0:0:0:0:0:0:1", "::ffff:127.0.0.1"}) {
    EXPECT_TRUE(IsLoopbackHost(h)) << h;
  }
}

TEST(IsLoopbackHostTest, NotLoopback) {
  for (const char* h :
       {"0.0.0.0", "::", "[::]", "128.0.0.1", "10.0.0.1", "192.168.1.1", "example.org",
        "localhost.example.org", "mylocalhost", "::2", "::ffff:10.0.0.1", "", "126.255.255.255"}) {
    EXPECT_FALSE(IsLoopbackHost(h)) << h;
  }
}

}  // namespace
}  // namespace parley::config
