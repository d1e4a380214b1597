// ToolRegistry: registration rules, schema compilation, per-conversation/user offering
// and JsonSchema messages.

#include "tools/registry.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tests/tools/test_util.h"
#include "tools/text_util.h"

namespace parley::tools {
namespace {

using nlohmann::json;
using testing::FakeTool;

json ObjectSchema() { return json{{"type", "object"}, {"properties", json::object()}}; }

std::vector<std::string> Names(const std::vector<llm::ToolSpec>& specs) {
  std::vector<std::string> out;
  for (const auto& s : specs) out.push_back(s.name);
  return out;
}

ToolContext Context(const std::string& platform, const std::string& channel,
                    const std::string& user) {
  ToolContext c;
  c.turn_id = "turn-1";
  c.conversation = ConversationKey{platform, channel, ""};
  c.user = user;
  return c;
}

TEST(RegistryTest, RejectsBadNamesDuplicatesAndBadSchemas) {
  boost::asio::io_context io;
  ToolRegistry registry;
  for (const std::string& bad :
       std::vector<std::string>{"", "has space", "dot.name", "slash/name", std::string(65, 'a'),
                                std::string("nul\0x", 5)}) {
    Status s = registry.Add(std::make_shared<FakeTool>(bad, ObjectSchema(), io), {});
    EXPECT_TRUE(s.IsInvalidArgument()) << "name '" << bad << "': " << s.ToString();
  }
  EXPECT_TRUE(
      registry.Add(std::make_shared<FakeTool>(std::string(64, 'a'), ObjectSchema(), io), {}).ok());
  ASSERT_TRUE(registry.Add(std::make_shared<FakeTool>("weather_v-2", ObjectSchema(), io), {}).ok());
  Status dup = registry.Add(std::make_shared<FakeTool>("weather_v-2", ObjectSchema(), io), {});
  EXPECT_TRUE(dup.IsInvalidArgument());
  EXPECT_NE(dup.message().find("weather_v-2"), std::string::npos) << dup.message();

  Status not_object = registry.Add(std::make_shared<FakeTool>("arr", json::array(), io), {});
  EXPECT_TRUE(not_object.IsInvalidArgument());
  EXPECT_NE(not_object.message().find("not a JSON object"), std::string::npos)
      << not_object.message();

  // valijson refuses these; the registry must turn that into a status, not abort.
  Status bad_type = registry.Add(std::make_shared<FakeTool>("bad_type", json{{"type", 5}}, io), {});
  EXPECT_TRUE(bad_type.IsInvalidArgument()) << bad_type.ToString();
  Status remote_ref = registry.Add(
      std::make_shared<FakeTool>("remote", json{{"$ref", "http://example.com/schema.json"}}, io),
      {});
  EXPECT_TRUE(remote_ref.IsInvalidArgument()) << remote_ref.ToString();

  ToolRules zero_timeout;
  zero_timeout.timeout_ms = 0;
  EXPECT_TRUE(registry.Add(std::make_shared<FakeTool>("t0", ObjectSchema(), io), zero_timeout)
                  .IsInvalidArgument());
  EXPECT_TRUE(registry.Add(nullptr, {}).IsInvalidArgument());

  EXPECT_EQ(registry.Names(), (std::vector<std::string>{std::string(64, 'a'), "weather_v-2"}));
  EXPECT_NE(registry.Find("weather_v-2"), nullptr);
  EXPECT_EQ(registry.Find("bad_type"), nullptr);
}

TEST(RegistryTest, OffersOnlyAllowedToolsInRegistrationOrder) {
  boost::asio::io_context io;
  ToolRegistry registry;
  ToolRules open;
  ToolRules channel_rule;
  channel_rule.allow_channels = {"slack:C0*", "webhook:support"};
  ToolRules user_rule;
  user_rule.allow_users = {"slack:U1", "matrix:@admin*"};
  ToolRules both;
  both.allow_channels = {"slack:C0*"};
  both.allow_users = {"slack:U1"};
  ASSERT_TRUE(registry.Add(std::make_shared<FakeTool>("zeta_open", ObjectSchema(), io), open).ok());
  ASSERT_TRUE(
      registry.Add(std::make_shared<FakeTool>("alpha_chan", ObjectSchema(), io), channel_rule)
          .ok());
  ASSERT_TRUE(
      registry.Add(std::make_shared<FakeTool>("mid_user", ObjectSchema(), io), user_rule).ok());
  ASSERT_TRUE(registry.Add(std::make_shared<FakeTool>("both", ObjectSchema(), io), both).ok());

  EXPECT_EQ(Names(registry.Offered(Context("slack", "C0123", "U1"))),
            (std::vector<std::string>{"zeta_open", "alpha_chan", "mid_user", "both"}));
  EXPECT_EQ(Names(registry.Offered(Context("slack", "C0123", "U2"))),
            (std::vector<std::string>{"zeta_open", "alpha_chan"}));
  EXPECT_EQ(Names(registry.Offered(Context("slack", "C9", "U1"))),
            (std::vector<std::string>{"zeta_open", "mid_user"}));
  EXPECT_EQ(Names(registry.Offered(Context("webhook", "support", "U1"))),
            (std::vector<std::string>{"zeta_open", "alpha_chan"}));  // U1 is slack's, not webhook's
  EXPECT_EQ(Names(registry.Offered(Context("matrix", "!room", "@admin:example.org"))),
            (std::vector<std::string>{"zeta_open", "mid_user"}));

  const auto specs = registry.Offered(Context("slack", "C0123", "U1"));
  EXPECT_EQ(specs[0].description, "a fake tool");
  EXPECT_EQ(specs[0].parameters, ObjectSchema());
}

TEST(JsonSchemaTest, ShortMessagesWithPointers) {
  const json schema = {{"type", "object"},
                       {"properties",
                        {{"city", {{"type", "string"}}},
                         {"opts",
                          {{"type", "object"},
                           {"properties", {{"unit", {{"enum", {"c", "f"}}}}}},
                           {"required", {"unit"}}}},
                         {"days", {{"type", "array"}, {"items", {{"type", "integer"}}}}}}},
                       {"required", {"city"}},
                       {"additionalProperties", false}};
  auto compiled = JsonSchema::Compile(schema);
  ASSERT_TRUE(compiled.ok()) << compiled.status().ToString();
  const JsonSchema& s = **compiled;
  EXPECT_TRUE(s.Validate(json{{"city", "Oslo"}}).empty());
  EXPECT_EQ(s.Validate(json::object()),
            std::vector<std::string>{"/city: required property missing"});
  EXPECT_EQ(s.Validate(json{{"city", 1}}), std::vector<std::string>{"/city: wrong type"});
  EXPECT_EQ(s.Validate(json{{"city", "x"}, {"x/y", 1}}),
            std::vector<std::string>{"/x~1y: property not allowed"});
  EXPECT_EQ(s.Validate(json{{"city", "x"}, {"opts", json::object()}}),
            std::vector<std::string>{"/opts/unit: required property missing"});
  EXPECT_EQ(s.Validate(json{{"city", "x"}, {"opts", {{"unit", "k"}}}}),
            std::vector<std::string>{"/opts/unit: not one of the allowed values"});
  EXPECT_EQ(s.Validate(json{{"city", "x"}, {"days", {1, "two"}}}),
            std::vector<std::string>{"/days/1: wrong type"});
  EXPECT_EQ(s.Validate(json::array()), std::vector<std::string>{"/: wrong type"});
}

TEST(TextUtilTest, Utf8IsCutAtBoundariesAndRepaired) {
  using internal::SanitizeUtf8;
  using internal::TruncateUtf8;
  EXPECT_EQ(TruncateUtf8("ab\xC3\xA9", 3), "ab");  // never half of "é"
  EXPECT_EQ(TruncateUtf8("ab\xC3\xA9", 4), "ab\xC3\xA9");
  EXPECT_EQ(TruncateUtf8("\xE2\x82\xAC\xE2\x82\xAC", 5), "\xE2\x82\xAC");
  EXPECT_EQ(SanitizeUtf8("ok \xC3\xA9 \xF0\x9F\x98\x80"), "ok \xC3\xA9 \xF0\x9F\x98\x80");
  EXPECT_EQ(SanitizeUtf8("a\xFF"
                         "b"),
            "a\xEF\xBF\xBD"
            "b");
  EXPECT_EQ(SanitizeUtf8("\xC0\xAF"), "\xEF\xBF\xBD\xEF\xBF\xBD");                  // overlong '/'
  EXPECT_EQ(SanitizeUtf8("\xED\xA0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // surrogate
  EXPECT_EQ(SanitizeUtf8("end\xE2\x82"), "end\xEF\xBF\xBD\xEF\xBF\xBD");  // truncated sequence
  EXPECT_NO_THROW((void)nlohmann::json(SanitizeUtf8("x\xFE\xFF")).dump());
}

}  // namespace
}  // namespace parley::tools
