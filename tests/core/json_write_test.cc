// The direct JSON writer against nlohmann: what it writes must parse back to the same values.

#include "core/json_write.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <nlohmann/json.hpp>

namespace parley {
namespace {

using nlohmann::json;

std::string Quoted(std::string_view s) {
  std::string out;
  AppendJsonString(out, s);
  return out;
}

TEST(JsonWriteTest, StringsReadBackUnchanged) {
  const std::string samples[] = {"",
                                 "plain",
                                 "quote \" backslash \\ slash /",
                                 "tab\tnewline\ncr\rbs\bff\f",
                                 std::string("nul \0 and \x01\x1f\x7f", 13),
                                 "héllo wörld — 日本語 𝄞 emoji 😀",
                                 "<@U123> *bold* `code`"};
  for (const std::string& s : samples) {
    const std::string text = Quoted(s);
    json parsed = json::parse(text);
    ASSERT_TRUE(parsed.is_string()) << text;
    EXPECT_EQ(parsed.get<std::string>(), s);
    // Valid input is written as nlohmann writes it (same escapes, same bytes).
    EXPECT_EQ(text, json(s).dump()) << s;
  }
}

TEST(JsonWriteTest, InvalidUtf8BecomesReplacementCharacters) {
  struct Case {
    std::string in;
    std::string out;
  };
  const std::string r = "\xEF\xBF\xBD";
  const Case cases[] = {
      {"a\xFF" "b", "a" + r + "b"},                       // never valid
      {"\xC3", r},                                        // truncated at the end
      {"\xC3(", r + "("},                                 // bad continuation
      {"\xC0\xAF", r + r},                                // overlong
      {"\xED\xA0\x80", r + r + r},                        // surrogate
      {"\xF4\x90\x80\x80", r + r + r + r},                // above U+10FFFF
      {"ok \xE2\x82\xAC \x80 end", "ok \xE2\x82\xAC " + r + " end"},
  };
  for (const Case& c : cases) {
    json parsed = json::parse(Quoted(c.in));  // always parses
    EXPECT_EQ(parsed.get<std::string>(), c.out);
  }
}

TEST(JsonWriteTest, RandomBytesAlwaysParse) {
  std::mt19937 rng(7);
  for (int i = 0; i < 2000; ++i) {
    std::string s(rng() % 40, '\0');
    for (char& c : s) c = static_cast<char>(rng() % 256);
    const std::string text = Quoted(s);
    json parsed = json::parse(text, nullptr, /*allow_exceptions=*/false);
    ASSERT_TRUE(parsed.is_string()) << i;
    // Where the input is valid UTF-8 it survives exactly.
    json strict = json::parse("\"" + s + "\"", nullptr, false);
    if (strict.is_string() && s.find_first_of(std::string("\"\\\0", 3)) == std::string::npos) {
      bool control = false;
      for (char c : s) control = control || static_cast<unsigned char>(c) < 0x20;
      if (!control) {
        EXPECT_EQ(parsed, strict);
      }
    }
  }
}

TEST(JsonWriteTest, NumbersAndObjects) {
  const double doubles[] = {0.0, 0.5, 1.0, -2.0, 0.1, 1.0 / 3.0, 1e-7, 123456789.125, 1e300};
  for (double d : doubles) {
    std::string out;
    AppendJsonNumber(out, d);
    json parsed = json::parse(out);
    EXPECT_TRUE(parsed.is_number_float()) << out;
    EXPECT_EQ(parsed.get<double>(), d) << out;
  }
  std::string nan;
  AppendJsonNumber(nan, std::numeric_limits<double>::quiet_NaN());
  EXPECT_EQ(nan, "null");
  std::string ints;
  AppendJsonNumber(ints, int64_t{-9007199254740993});
  EXPECT_EQ(ints, "-9007199254740993");

  std::string obj;
  JsonObjectWriter w(obj);
  w.Field("s", "x\"y").Field("b", false).Field("i", 42).Field("d", 0.25);
  w.Key("a").append("[1,2]");
  w.Finish();
  EXPECT_EQ(json::parse(obj), json({{"s", "x\"y"}, {"b", false}, {"i", 42}, {"d", 0.25},
                                    {"a", {1, 2}}}));
  std::string empty;
  JsonObjectWriter(empty).Finish();
  EXPECT_EQ(empty, "{}");
}

}  // namespace
}  // namespace parley
