#include "config/env_expand.h"

#include <gtest/gtest.h>

#include <map>

namespace parley::config::internal {
namespace {

EnvLookup MapEnv(std::map<std::string, std::string> vars) {
  return [vars = std::move(vars)](const std::string& name) -> std::optional<std::string> {
    auto it = vars.find(name);
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
}

std::string Expand(const std::string& raw, const EnvLookup& env) {
  Result<std::string> r = ExpandEnv(raw, env);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() ? r.value() : "<error>";
}

TEST(EnvExpandTest, PlainTextUnchanged) {
  EXPECT_EQ(Expand("", MapEnv({})), "");
  EXPECT_EQ(Expand("hello world {x}", MapEnv({})), "hello world {x}");
}

TEST(EnvExpandTest, SetVariable) {
  auto env = MapEnv({{"HOST", "example.org"}, {"PORT", "80"}});
  EXPECT_EQ(Expand("${HOST}", env), "example.org");
  EXPECT_EQ(Expand("http://${HOST}:${PORT}/x", env), "http://example.org:80/x");
}

TEST(EnvExpandTest, DefaultUsedWhenUnsetOrEmpty) {
  auto env = MapEnv({{"EMPTY", ""}, {"SET", "v"}});
  EXPECT_EQ(Expand("${UNSET:-fallback}", env), "fallback");
  EXPECT_EQ(Expand("${EMPTY:-fallback}", env), "fallback");
  EXPECT_EQ(Expand("${SET:-fallback}", env), "v");
  EXPECT_EQ(Expand("a${UNSET:-}b", env), "ab");
  EXPECT_EQ(Expand("${UNSET:-with:colon and space}", env), "with:colon and space");
}

TEST(EnvExpandTest, SetButEmptyWithoutDefaultIsEmpty) {
  EXPECT_EQ(Expand("[${EMPTY}]", MapEnv({{"EMPTY", ""}})), "[]");
}

TEST(EnvExpandTest, DoubleDollarIsLiteral) {
  auto env = MapEnv({{"A", "x"}});
  EXPECT_EQ(Expand("$$", env), "$");
  EXPECT_EQ(Expand("cost: 5$$", env), "cost: 5$");
  EXPECT_EQ(Expand("$${A}", env), "${A}");
  EXPECT_EQ(Expand("$$$${A}", env), "$${A}");
  EXPECT_EQ(Expand("$$${A}", env), "$x");
}

TEST(EnvExpandTest, ValuesAreNotExpandedAgain) {
  EXPECT_EQ(Expand("${A}", MapEnv({{"A", "${B}$$"}, {"B", "no"}})), "${B}$$");
}

TEST(EnvExpandTest, UnsetWithoutDefaultNamesTheVariable) {
  Result<std::string> r = ExpandEnv("x${MISSING_VAR}y", MapEnv({}));
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(r.status().IsInvalidArgument());
  EXPECT_NE(r.status().message().find("MISSING_VAR is not set"), std::string::npos)
      << r.status().message();
}

TEST(EnvExpandTest, MalformedReferences) {
  for (const char* raw :
       {"$", "a$b", "${", "${A", "${}", "${1A}", "${A-B}", "${A:default}", "${:-x}", "$ {A}"}) {
    Result<std::string> r = ExpandEnv(raw, MapEnv({{"A", "x"}}));
    EXPECT_FALSE(r.ok()) << raw;
  }
}

TEST(EnvExpandTest, ParseSoleReference) {
  auto ref = ParseSoleReference("${TOKEN}");
  ASSERT_TRUE(ref);
  EXPECT_EQ(ref->name, "TOKEN");
  EXPECT_FALSE(ref->fallback);

  ref = ParseSoleReference("${TOKEN:-}");
  ASSERT_TRUE(ref);
  EXPECT_EQ(ref->name, "TOKEN");
  ASSERT_TRUE(ref->fallback);
  EXPECT_EQ(*ref->fallback, "");

  ref = ParseSoleReference("${TOKEN:-abc}");
  ASSERT_TRUE(ref);
  EXPECT_EQ(*ref->fallback, "abc");

  for (const char* raw :
       {"", "TOKEN", "x${TOKEN}", "${TOKEN}x", "${A}${B}", "$${A}", "${A", "${bad name}"}) {
    EXPECT_FALSE(ParseSoleReference(raw)) << raw;
  }
}

}  // namespace
}  // namespace parley::config::internal
