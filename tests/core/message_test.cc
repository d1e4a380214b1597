#include "core/message.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace parley {
namespace {

TEST(ConversationKeyTest, EncodeEscapesSeparators) {
  ConversationKey a{"webhook", "a/b", ""};
  ConversationKey b{"webhook", "a", "b"};
  EXPECT_NE(a.Encode(), b.Encode());
  EXPECT_EQ(a.Encode(), "webhook/a%2Fb/");
  EXPECT_EQ(EscapeKeyPart("100%\n"), "100%25%0A");
}

TEST(ConversationKeyTest, DisplayShowsThread) {
  EXPECT_EQ((ConversationKey{"slack", "C1", "17.5"}).Display(), "slack:C1#17.5");
  EXPECT_EQ((ConversationKey{"slack", "C1", ""}).Display(), "slack:C1");
}

TEST(MessageJsonTest, InboundRoundTrip) {
  InboundMessage m;
  m.platform = "webhook";
  m.channel = "c";
  m.thread = "t";
  m.user = "u";
  m.text = "héllo \"quoted\"";
  m.mentions_bot = true;
  m.event_id = "e1";
  m.timestamp_ms = 42;
  m.reply_route = "http://127.0.0.1:1/x";
  nlohmann::json j = m;
  InboundMessage back = j.get<InboundMessage>();
  EXPECT_EQ(back.text, m.text);
  EXPECT_EQ(back.thread, "t");
  EXPECT_TRUE(back.mentions_bot);
  EXPECT_EQ(back.timestamp_ms, 42);
  EXPECT_EQ(back.reply_route, m.reply_route);
  EXPECT_FALSE(back.starts_conversation);
  m.starts_conversation = true;
  EXPECT_TRUE(nlohmann::json(m).get<InboundMessage>().starts_conversation);
}

TEST(MessageJsonTest, OutboundRoundTrip) {
  OutboundMessage m;
  m.id = "id1";
  m.conversation = {"webhook", "c", "t"};
  m.text = "answer";
  m.citations = {Citation{"Title", "a.md", "Install > Linux", "https://x/a.md#linux"}};
  m.confidence = 0.5;
  nlohmann::json j = m;
  OutboundMessage back = j.get<OutboundMessage>();
  EXPECT_EQ(back.conversation, m.conversation);
  ASSERT_EQ(back.citations.size(), 1u);
  EXPECT_EQ(back.citations[0], m.citations[0]);
  EXPECT_DOUBLE_EQ(back.confidence, 0.5);
}

// ToJsonText writes what to_json builds, without the tree, for every field.
TEST(MessageJsonTest, ToJsonTextMatchesToJson) {
  OutboundMessage m;
  m.id = "id1";
  m.conversation = {"slack", "C1", "1700000000.000100"};
  m.text = "line \"one\"\n\ttwo — ünïcode `code` \\ end";
  m.citations = {Citation{"Title", "a.md", "Install > Linux", "https://x/a.md#linux"},
                 Citation{"Other \"t\"", "b/c.md", "", ""}};
  m.confidence = 0.7315;
  m.in_reply_to = "slack:C1:1.2";
  m.reply_route = "{\"url\":\"http://127.0.0.1:1/x\"}";
  m.turn_id = "t1";
  EXPECT_EQ(nlohmann::json::parse(ToJsonText(m)), nlohmann::json(m));
  m.escalated = true;
  m.silent = true;
  m.keep_mentions = true;
  m.confidence = 1.0;
  m.actions = {MessageAction{"claim", "Claim", "claim 17", "primary"},
               MessageAction{"close", "Close", "close 17", ""}};
  EXPECT_EQ(nlohmann::json::parse(ToJsonText(m)), nlohmann::json(m));
  EXPECT_EQ(nlohmann::json::parse(ToJsonText(m)).get<OutboundMessage>().actions, m.actions);
  m = OutboundMessage{};
  EXPECT_EQ(nlohmann::json::parse(ToJsonText(m)), nlohmann::json(m));
}

}  // namespace
}  // namespace parley
