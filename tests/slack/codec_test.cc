#include "adapters/slack/codec.h"

#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

namespace parley::slack {
namespace {

using nlohmann::json;

constexpr char kBot[] = "U0BOT1234";

std::string Fixture(const std::string& name) {
  std::ifstream in(std::string(PARLEY_SLACK_FIXTURE_DIR) + "/" + name);
  EXPECT_TRUE(in.good()) << "missing fixture " << name;
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

Envelope ParseFixture(const std::string& name) {
  Result<Envelope> r = ParseEnvelope(Fixture(name));
  EXPECT_TRUE(r.ok()) << name << ": " << r.status().ToString();
  return r.ok() ? std::move(r).value() : Envelope{};
}

SlackEvent EventFixture(const std::string& name) {
  return ParseEventCallback(ParseFixture(name).payload);
}

// ---------------------------------------------------------------------------------------------
// Frames

TEST(ParseEnvelopeTest, Hello) {
  Envelope e = ParseFixture("hello.json");
  EXPECT_EQ(e.kind, FrameKind::kHello);
  EXPECT_EQ(e.num_connections, 1);
  EXPECT_EQ(e.approximate_connection_time_s, 18060);
  EXPECT_EQ(e.app_id, "A01K58AR4RF");
  EXPECT_FALSE(e.is_envelope());
}

TEST(ParseEnvelopeTest, EachDisconnectReason) {
  const std::pair<const char*, DisconnectReason> cases[] = {
      {"disconnect_warning.json", DisconnectReason::kWarning},
      {"disconnect_refresh_requested.json", DisconnectReason::kRefreshRequested},
      {"disconnect_link_disabled.json", DisconnectReason::kLinkDisabled},
      {"disconnect_too_many_websockets.json", DisconnectReason::kTooManyWebsockets},
  };
  for (const auto& [file, reason] : cases) {
    Envelope e = ParseFixture(file);
    EXPECT_EQ(e.kind, FrameKind::kDisconnect) << file;
    EXPECT_EQ(e.disconnect_reason, reason) << file;
    EXPECT_EQ(std::string(file),
              std::string("disconnect_") + DisconnectReasonName(reason) + ".json");
  }
  Result<Envelope> other = ParseEnvelope(R"({"type":"disconnect","reason":"maintenance"})");
  ASSERT_TRUE(other.ok());
  EXPECT_EQ(other->disconnect_reason, DisconnectReason::kOther);
  EXPECT_EQ(other->disconnect_reason_raw, "maintenance");
  Result<Envelope> none = ParseEnvelope(R"({"type":"disconnect"})");
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(none->disconnect_reason, DisconnectReason::kOther);
}

TEST(ParseEnvelopeTest, EventsApiEnvelope) {
  Envelope e = ParseFixture("app_mention_envelope.json");
  EXPECT_EQ(e.kind, FrameKind::kEventsApi);
  EXPECT_TRUE(e.is_envelope());
  EXPECT_EQ(e.envelope_id, "57d6a792-4d35-4d0b-b6aa-3361493e1caf");
  EXPECT_FALSE(e.accepts_response_payload);
  EXPECT_EQ(e.retry_attempt, 0);
  EXPECT_EQ(e.retry_reason, "");
  EXPECT_EQ(e.payload.at("event_id"), "Ev06ABCDEF12");

  Envelope retry = ParseFixture("channel_message_mention_envelope.json");
  EXPECT_EQ(retry.retry_attempt, 1);
  EXPECT_EQ(retry.retry_reason, "timeout");
}

TEST(ParseEnvelopeTest, LeavesOutTheEventsBlocksOnly) {
  const std::string text = Fixture("app_mention_envelope.json");
  json full = json::parse(text);
  ASSERT_TRUE(full["payload"]["event"].contains("blocks"));  // the fixture has them, as Slack's
  full["payload"]["event"].erase("blocks");
  EXPECT_EQ(ParseFixture("app_mention_envelope.json").payload, full["payload"]);
  // The event is read the same without them.
  EXPECT_EQ(EventFixture("app_mention_envelope.json").text,
            full["payload"]["event"]["text"].get<std::string>());
}

TEST(ParseJsonWithoutTest, DropsTheKeyAtThatDepthOnly) {
  // Members named "blocks" at other depths (including inside arrays, which count as a level)
  // and the rest of every object stay; a dropped value's nested containers go with it.
  const std::string text =
      R"({"payload":{"event":{"text":"hi","blocks":[{"type":"rich_text","elements":[{"x":[1,2]}]}],)"
      R"("ts":"1","more":{"blocks":0}},"list":[{"blocks":[1]},{"k":{"blocks":2}}],"blocks":"kept",)"
      R"("after":[[{"c":1}],{"d":[2,{"blocks":5}]}]},"blocks":[3],"x":{"y":{"blocks":{"z":[]}}}})";
  json want = json::parse(text);
  want["payload"]["event"].erase("blocks");
  want["x"]["y"].erase("blocks");
  EXPECT_EQ(ParseJsonWithout(text, 3, "blocks"), want);
  json top = json::parse(text);
  top.erase("blocks");
  EXPECT_EQ(ParseJsonWithout(text, 1, "blocks"), top);
  // A dropped key that comes last, then siblings and arrays at shallower depths.
  const std::string last = R"({"a":{"x":1,"blocks":[1]},"b":[[{"c":1}],{"d":[2]}],"e":[{"f":{}}]})";
  json want_last = json::parse(last);
  want_last["a"].erase("blocks");
  EXPECT_EQ(ParseJsonWithout(last, 2, "blocks"), want_last);
  EXPECT_TRUE(ParseJsonWithout(R"({"a":{"blocks":[1,}})", 2, "blocks").is_discarded());
  EXPECT_TRUE(ParseJsonWithout("not json", 1, "blocks").is_discarded());
}

TEST(ParseEnvelopeTest, SlashAndInteractiveEnvelopes) {
  Envelope s = ParseFixture("slash_command_envelope.json");
  EXPECT_EQ(s.kind, FrameKind::kSlashCommands);
  EXPECT_TRUE(s.accepts_response_payload);
  Envelope i = ParseFixture("block_actions_envelope.json");
  EXPECT_EQ(i.kind, FrameKind::kInteractive);
  EXPECT_EQ(i.envelope_id, "c0ffee00-1234-4abc-8def-0123456789ab");
}

TEST(ParseEnvelopeTest, UnknownTypeIsNotAnError) {
  Result<Envelope> r = ParseEnvelope(R"({"type":"brand_new_thing","envelope_id":"e-9"})");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->kind, FrameKind::kUnknown);
  EXPECT_EQ(r->type, "brand_new_thing");
  EXPECT_EQ(r->envelope_id, "e-9");  // still acknowledgeable
  EXPECT_FALSE(r->is_envelope());
}

TEST(ParseEnvelopeTest, MalformedFramesAreInvalidArgumentWithoutUserText) {
  const std::string secret = "SECRET_USER_TEXT";
  const std::string frames[] = {
      "",
      "{",
      "not json " + secret,
      R"({"type":"events_api","payload":{"text":")" + secret + "\"",  // truncated
      "[\"" + secret + "\"]",
      "\"" + secret + "\"",
      R"({"payload":{"text":")" + secret + R"("}})",  // no type
      R"({"type":42})",
      R"({"type":"events_api","payload":{"text":")" + secret + R"("}})",  // no envelope_id
      R"({"type":"events_api","envelope_id":"","payload":{}})",
      R"({"type":"events_api","envelope_id":7,"payload":{}})",
      R"({"type":"events_api","envelope_id":"e1"})",  // no payload
      R"({"type":"events_api","envelope_id":"e1","payload":")" + secret + R"("})",
      R"({"type":"events_api","envelope_id":"e1","payload":{},"retry_attempt":"1"})",
      R"({"type":"events_api","envelope_id":"e1","payload":{},"retry_attempt":-1})",
      R"({"type":"events_api","envelope_id":"e1","payload":{},"accepts_response_payload":1})",
      R"({"type":"events_api","envelope_id":"e1","payload":{},"retry_reason":5})",
      R"({"type":"hello","num_connections":")" + secret + R"("})",
      R"({"type":"disconnect","reason":[")" + secret + R"("]})",
      "{\"type\":\"events_api\",\"envelope_id\":\"e\xff\",\"payload\":{}}",  // invalid UTF-8
      std::string(100000, '['),
  };
  for (const std::string& f : frames) {
    Result<Envelope> r = ParseEnvelope(f);
    ASSERT_FALSE(r.ok()) << f.substr(0, 80);
    EXPECT_TRUE(r.status().IsInvalidArgument()) << r.status().ToString();
    EXPECT_EQ(r.status().message().find(secret), std::string::npos) << r.status().ToString();
    EXPECT_EQ(r.status().message().find("\xff"), std::string::npos);
  }
}

TEST(AckFrameTest, EnvelopeIdAndOptionalPayload) {
  EXPECT_EQ(json::parse(AckFrame("abc-1")), (json{{"envelope_id", "abc-1"}}));
  json payload = {{"text", "Working on it…"}};
  json ack = json::parse(AckFrame("abc-2", &payload));
  EXPECT_EQ(ack.at("envelope_id"), "abc-2");
  EXPECT_EQ(ack.at("payload"), payload);
  // Round trip through the parser we use for frames (an ack is not a typed frame).
  EXPECT_FALSE(ParseEnvelope(AckFrame("abc-3")).ok());
}

TEST(AckFrameTest, InvalidUtf8DoesNotThrow) {
  std::string ack = AckFrame(std::string("id\xff\xfe"));
  json j = json::parse(ack, nullptr, false);
  ASSERT_FALSE(j.is_discarded());
  EXPECT_EQ(j.at("envelope_id"), "id\xEF\xBF\xBD\xEF\xBF\xBD");
}

// ---------------------------------------------------------------------------------------------
// Events

TEST(ParseEventCallbackTest, AppMentionFields) {
  SlackEvent ev = EventFixture("app_mention_envelope.json");
  EXPECT_EQ(ev.type, EventType::kAppMention);
  EXPECT_EQ(ev.team_id, "T0123ABCD");
  EXPECT_EQ(ev.event_id, "Ev06ABCDEF12");
  EXPECT_EQ(ev.channel, "C0GENERAL1");
  EXPECT_EQ(ev.channel_type, "");
  EXPECT_EQ(ev.user, "U0USER5678");
  EXPECT_EQ(ev.bot_id, "");
  EXPECT_EQ(ev.ts, "1712345678.123456");
  EXPECT_EQ(ev.thread_ts, "");
}

TEST(ParseEventCallbackTest, WrongShapesGiveOtherWithoutThrowing) {
  EXPECT_EQ(ParseEventCallback(json()).type, EventType::kOther);
  EXPECT_EQ(ParseEventCallback(json::array()).type, EventType::kOther);
  EXPECT_EQ(ParseEventCallback(json{{"type", "app_rate_limited"}}).type, EventType::kOther);
  json bad = {{"type", "event_callback"},
              {"event", {{"type", "message"}, {"text", 5}, {"channel", json::array()}}}};
  SlackEvent ev = ParseEventCallback(bad);
  EXPECT_EQ(ev.type, EventType::kMessage);
  EXPECT_EQ(ev.text, "");
  EXPECT_EQ(ev.channel, "");
  EXPECT_EQ(Classify(ev, kBot, {}).reason, IgnoreReason::kIncomplete);
}

TEST(ClassifyTest, ChannelMentionOpensThreadOnItsOwnTs) {
  EventDecision d = Classify(EventFixture("app_mention_envelope.json"), kBot, {});
  ASSERT_TRUE(d.handle) << IgnoreReasonName(d.reason);
  const InboundMessage& m = d.message;
  EXPECT_EQ(m.platform, "slack");
  EXPECT_EQ(m.workspace, "T0123ABCD");
  EXPECT_EQ(m.channel, "C0GENERAL1");
  EXPECT_EQ(m.thread, "1712345678.123456");
  EXPECT_EQ(m.user, "U0USER5678");
  EXPECT_EQ(m.text,
            "how do I reset my VPN token? see VPN page (https://wiki.example.com/vpn?a=1&b=2) & "
            "ask @U0ALICE12");
  EXPECT_TRUE(m.mentions_bot);
  EXPECT_FALSE(m.is_direct);
  EXPECT_EQ(m.event_id, "C0GENERAL1:1712345678.123456");
  EXPECT_EQ(m.timestamp_ms, 1712345678123);
  EXPECT_TRUE(m.starts_conversation);  // the thread is opened on this message
}

TEST(ClassifyTest, DoubleDeliveryMapsToOneKey) {
  SlackEvent mention = EventFixture("app_mention_envelope.json");
  SlackEvent message = EventFixture("channel_message_mention_envelope.json");
  EXPECT_NE(mention.event_id, message.event_id);  // Slack gives them different event ids
  EXPECT_EQ(DedupeKey(mention), DedupeKey(message));
  EventDecision a = Classify(mention, kBot, {});
  EventDecision b = Classify(message, kBot, {});
  ASSERT_TRUE(a.handle);
  ASSERT_TRUE(b.handle);
  EXPECT_EQ(a.message.event_id, b.message.event_id);
  EXPECT_EQ(a.message.conversation(), b.message.conversation());
  EXPECT_EQ(a.message.text, b.message.text);
  EXPECT_TRUE(b.message.mentions_bot);
}

TEST(ClassifyTest, DirectMessage) {
  EventDecision d = Classify(EventFixture("dm_message_envelope.json"), kBot, {});
  ASSERT_TRUE(d.handle) << IgnoreReasonName(d.reason);
  EXPECT_TRUE(d.message.is_direct);
  EXPECT_FALSE(d.message.mentions_bot);
  EXPECT_EQ(d.message.thread, "");  // DM root: answered in the main line
  EXPECT_FALSE(d.message.starts_conversation);  // the DM's main line has history
  EXPECT_EQ(d.message.text, "Where is the expense policy?");
  EXPECT_EQ(d.message.event_id, "D0DIRECT01:1712350000.000200");
  EXPECT_EQ(d.message.timestamp_ms, 1712350000000);

  SlackEvent in_thread = EventFixture("dm_message_envelope.json");
  in_thread.thread_ts = "1712349999.000100";
  EXPECT_EQ(Classify(in_thread, kBot, {}).message.thread, "1712349999.000100");

  SlackEvent no_type = EventFixture("dm_message_envelope.json");
  no_type.channel_type.clear();  // D… channel ids are DMs
  EXPECT_TRUE(Classify(no_type, kBot, {}).message.is_direct);
}

TEST(ClassifyTest, ThreadReplyNeedsMentionOrFollowup) {
  SlackEvent ev = EventFixture("thread_reply_envelope.json");
  EXPECT_EQ(Classify(ev, kBot, {}).reason, IgnoreReason::kNotAddressed);
  EXPECT_EQ(Classify(ev, kBot, {}, /*bot_in_thread=*/false).reason, IgnoreReason::kNotAddressed);

  EventDecision d = Classify(ev, kBot, {}, /*bot_in_thread=*/true);
  ASSERT_TRUE(d.handle);
  EXPECT_EQ(d.message.thread, "1712345678.123456");
  EXPECT_FALSE(d.message.starts_conversation);
  EXPECT_FALSE(d.message.mentions_bot);
  EXPECT_EQ(d.message.text, "and what about on Windows?");

  ClassifyOptions no_followups;
  no_followups.thread_followups = false;
  EXPECT_EQ(Classify(ev, kBot, no_followups, true).reason, IgnoreReason::kNotAddressed);

  ClassifyOptions open;
  open.mention_required = false;
  EXPECT_TRUE(Classify(ev, kBot, open, false).handle);

  SlackEvent mentioned = ev;
  mentioned.text = "<@U0BOT1234|parley> and Windows?";
  EventDecision m = Classify(mentioned, kBot, {});
  ASSERT_TRUE(m.handle);
  EXPECT_TRUE(m.message.mentions_bot);
  EXPECT_EQ(m.message.text, "and Windows?");
}

TEST(ClassifyTest, ThreadBroadcastAndFileShareAreUserMessages) {
  SlackEvent ev = EventFixture("app_mention_envelope.json");
  ev.type = EventType::kMessage;
  ev.subtype = "thread_broadcast";
  EXPECT_TRUE(Classify(ev, kBot, {}).handle);
  ev.subtype = "file_share";
  EXPECT_TRUE(Classify(ev, kBot, {}).handle);
}

TEST(ClassifyTest, EveryIgnoreReason) {
  // Own message: by user id, and by bot id even when allow_bots.
  SlackEvent own = EventFixture("own_message_envelope.json");
  EXPECT_EQ(Classify(own, kBot, {}).reason, IgnoreReason::kOwnMessage);
  ClassifyOptions allow;
  allow.allow_bots = true;
  allow.own_bot_id = "B0PARLEY01";
  own.user.clear();
  EXPECT_EQ(Classify(own, kBot, allow).reason, IgnoreReason::kOwnMessage);

  // Another bot: ignored unless allow_bots.
  SlackEvent bot = EventFixture("bot_message_envelope.json");
  EventDecision ignored = Classify(bot, kBot, {});
  EXPECT_FALSE(ignored.handle);
  EXPECT_EQ(ignored.reason, IgnoreReason::kOtherBot);
  EventDecision allowed = Classify(bot, kBot, allow);
  ASSERT_TRUE(allowed.handle) << IgnoreReasonName(allowed.reason);
  EXPECT_EQ(allowed.message.user, "B0OTHER001");
  EXPECT_EQ(allowed.message.text, "Deploy finished");
  SlackEvent app_bot = EventFixture("app_mention_envelope.json");  // bot_id without subtype
  app_bot.bot_id = "B0OTHER002";
  EXPECT_EQ(Classify(app_bot, kBot, {}).reason, IgnoreReason::kOtherBot);

  // Subtypes that are not questions.
  EXPECT_EQ(Classify(EventFixture("message_changed_envelope.json"), kBot, {}).reason,
            IgnoreReason::kSubtype);
  for (const char* subtype :
       {"message_deleted", "channel_join", "channel_leave", "channel_topic", "message_replied"}) {
    SlackEvent ev = EventFixture("dm_message_envelope.json");
    ev.subtype = subtype;
    EXPECT_EQ(Classify(ev, kBot, {}).reason, IgnoreReason::kSubtype) << subtype;
  }

  // Empty text: nothing, whitespace, or a bare mention.
  for (const char* text : {"", "   \n", "<@U0BOT1234>", "<@U0BOT1234>:  "}) {
    SlackEvent ev = EventFixture("app_mention_envelope.json");
    ev.text = text;
    EXPECT_EQ(Classify(ev, kBot, {}).reason, IgnoreReason::kEmptyText) << text;
  }

  // Not addressed: a plain channel message.
  SlackEvent plain = EventFixture("channel_message_mention_envelope.json");
  plain.text = "lunch anyone? <@U0ALICE12>";
  EXPECT_EQ(Classify(plain, kBot, {}).reason, IgnoreReason::kNotAddressed);
  SlackEvent mpim = plain;
  mpim.channel_type = "mpim";
  mpim.channel = "G0MPIM0001";
  EXPECT_EQ(Classify(mpim, kBot, {}).reason, IgnoreReason::kNotAddressed);

  // Incomplete: no ts / channel / user.
  SlackEvent no_ts = EventFixture("dm_message_envelope.json");
  no_ts.ts.clear();
  EXPECT_EQ(Classify(no_ts, kBot, {}).reason, IgnoreReason::kIncomplete);
  SlackEvent no_user = EventFixture("dm_message_envelope.json");
  no_user.user.clear();
  EXPECT_EQ(Classify(no_user, kBot, {}).reason, IgnoreReason::kIncomplete);

  // Unsupported event types.
  SlackEvent reaction;
  reaction.type_raw = "reaction_added";
  reaction.channel = "C1";
  reaction.ts = "1.2";
  EXPECT_EQ(Classify(reaction, kBot, {}).reason, IgnoreReason::kUnsupportedType);

  // A decision to ignore carries no message.
  EXPECT_FALSE(Classify(plain, kBot, {}).handle);
  EXPECT_TRUE(Classify(plain, kBot, {}).message.text.empty());
}

TEST(TsToMillisTest, ParsesAndRejects) {
  EXPECT_EQ(TsToMillis("1712345678.123456"), 1712345678123);
  EXPECT_EQ(TsToMillis("1712345678"), 1712345678000);
  EXPECT_EQ(TsToMillis("1712345678.5"), 1712345678500);
  EXPECT_EQ(TsToMillis(""), 0);
  EXPECT_EQ(TsToMillis("abc"), 0);
  EXPECT_EQ(TsToMillis("17.1x"), 0);
  EXPECT_EQ(TsToMillis("99999999999999999999999"), 0);
}

// ---------------------------------------------------------------------------------------------
// NormalizeText

TEST(NormalizeTextTest, Mentions) {
  EXPECT_EQ(NormalizeText("<@U0BOT1234> hello", kBot), "hello");
  EXPECT_EQ(NormalizeText("<@U0BOT1234>:\thello", kBot), "hello");
  EXPECT_EQ(NormalizeText("hey <@U0BOT1234>, what is X?", kBot), "hey what is X?");
  EXPECT_EQ(NormalizeText("ask <@U0ALICE12> or <@U0BOB3456|bob>", kBot), "ask @U0ALICE12 or @bob");
  UserNames names = {{"U0ALICE12", "alice"}, {"U0BOB3456", "Robert"}};
  EXPECT_EQ(NormalizeText("ask <@U0ALICE12> or <@U0BOB3456|bob>", kBot, &names),
            "ask @alice or @Robert");
  EXPECT_EQ(NormalizeText("<!here> <!channel> <!everyone> <!here|here>", kBot),
            "@here @channel @everyone @here");
  EXPECT_EQ(NormalizeText("ping <!subteam^S0123|@oncall>", kBot), "ping @oncall");
  EXPECT_EQ(NormalizeText("<!date^1392734382^{date}|Feb 18, 2014>", kBot), "Feb 18, 2014");
}

TEST(NormalizeTextTest, ChannelsLinksAndEntities) {
  EXPECT_EQ(NormalizeText("see <#C0GENERAL1|general> and <#C0RANDOM01>", kBot),
            "see #general and #C0RANDOM01");
  EXPECT_EQ(NormalizeText("<#C0GENERAL1|>", kBot), "#C0GENERAL1");
  EXPECT_EQ(NormalizeText("<https://x.example/a?b=1&amp;c=2|the docs>", kBot),
            "the docs (https://x.example/a?b=1&c=2)");
  EXPECT_EQ(NormalizeText("<https://x.example>", kBot), "https://x.example");
  EXPECT_EQ(NormalizeText("<https://x.example|https://x.example>", kBot), "https://x.example");
  EXPECT_EQ(NormalizeText("mail <mailto:a@b.example|a@b.example>", kBot), "mail a@b.example");
  EXPECT_EQ(NormalizeText("a &lt;b&gt; &amp; c", kBot), "a <b> & c");
  EXPECT_EQ(NormalizeText("&amp;lt; stays", kBot), "&lt; stays");  // unescaped once
  EXPECT_EQ(NormalizeText("x < y", kBot), "x < y");                // unmatched '<'
  EXPECT_EQ(NormalizeText("<> ok", kBot), "<> ok");
  EXPECT_EQ(NormalizeText("  padded  ", kBot), "padded");
  EXPECT_EQ(NormalizeText("<@U0BOT1234>", ""), "@U0BOT1234");  // unknown bot id: kept
}

// ---------------------------------------------------------------------------------------------
// chat.postMessage

OutboundMessage Reply(std::string text) {
  OutboundMessage m;
  m.id = "msg-42";
  m.conversation = {"slack", "C0GENERAL1", "1712345678.123456"};
  m.text = std::move(text);
  return m;
}

TEST(BuildPostMessageTest, ShortAnswerWithCitationsAndButtons) {
  OutboundMessage m = Reply("Use **the portal** & restart.");
  m.citations = {{"VPN guide", "vpn.md", "Reset > Token", "https://wiki.example/vpn#reset"},
                 {"Old notes", "notes.txt", "", ""}};
  std::vector<json> bodies = BuildPostMessage(m, "C0GENERAL1", "1712345678.123456", true);
  ASSERT_EQ(bodies.size(), 1u);
  const json& b = bodies[0];
  EXPECT_EQ(b.at("channel"), "C0GENERAL1");
  EXPECT_EQ(b.at("thread_ts"), "1712345678.123456");
  EXPECT_EQ(b.at("unfurl_links"), false);
  EXPECT_EQ(b.at("text"), "Use *the portal* &amp; restart.");
  const json& blocks = b.at("blocks");
  ASSERT_EQ(blocks.size(), 3u);
  EXPECT_EQ(blocks[0].at("type"), "section");
  EXPECT_EQ(blocks[0].at("text").at("type"), "mrkdwn");
  EXPECT_EQ(blocks[0].at("text").at("text"), "Use *the portal* &amp; restart.");
  EXPECT_EQ(blocks[1].at("type"), "context");
  ASSERT_EQ(blocks[1].at("elements").size(), 2u);
  EXPECT_EQ(blocks[1]["elements"][0].at("text"),
            "<https://wiki.example/vpn#reset|VPN guide — Reset &gt; Token>");
  EXPECT_EQ(blocks[1]["elements"][1].at("text"), "Old notes");
  EXPECT_EQ(blocks[2].at("type"), "actions");
  const json& buttons = blocks[2].at("elements");
  ASSERT_EQ(buttons.size(), 2u);
  EXPECT_EQ(buttons[0].at("action_id"), kFeedbackHelpfulAction);
  EXPECT_EQ(buttons[1].at("action_id"), kFeedbackUnhelpfulAction);
  EXPECT_EQ(buttons[0].at("value"), "msg-42");
  EXPECT_EQ(buttons[1].at("value"), "msg-42");
  EXPECT_EQ(b.at("metadata").at("event_payload").at("message_id"), "msg-42");
  // The body serialises without throwing and parses back identically.
  EXPECT_EQ(json::parse(DumpJson(b)), b);
}

TEST(BuildPostMessageTest, NoThreadNoButtonsNoCitations) {
  std::vector<json> bodies = BuildPostMessage(Reply("hi"), "D0DIRECT01", "", false);
  ASSERT_EQ(bodies.size(), 1u);
  EXPECT_FALSE(bodies[0].contains("thread_ts"));
  ASSERT_EQ(bodies[0].at("blocks").size(), 1u);
  EXPECT_EQ(bodies[0]["blocks"][0].at("type"), "section");
}

TEST(BuildPostMessageTest, EmptyTextStillHasText) {
  std::vector<json> bodies = BuildPostMessage(Reply("  \n"), "C1", "", false);
  ASSERT_EQ(bodies.size(), 1u);
  EXPECT_FALSE(bodies[0].at("text").get<std::string>().empty());
}

TEST(BuildPostMessageTest, LongAnswerSplitsWithExtrasOnLastBodyOnly) {
  std::string text;
  for (int i = 0; i < 40; ++i) {
    text += "Paragraph " + std::to_string(i) + ": " + std::string(400, 'a' + i % 26) + "\n\n";
  }
  text += "```\n" + std::string(5000, 'x') + "\n```\n";  // one code block over every limit
  OutboundMessage m = Reply(text);
  for (int i = 0; i < 25; ++i) {
    m.citations.push_back(
        {"Doc " + std::to_string(i), "d.md", "S", "https://d.example/" + std::to_string(i)});
  }
  std::vector<json> bodies = BuildPostMessage(m, "C1", "1.2", true);
  ASSERT_GT(bodies.size(), 5u);
  size_t total_paragraphs = 0;
  for (size_t i = 0; i < bodies.size(); ++i) {
    const json& b = bodies[i];
    const bool last = i + 1 == bodies.size();
    const std::string body_text = b.at("text").get<std::string>();
    EXPECT_FALSE(body_text.empty());
    EXPECT_LE(body_text.size(), 3500u);
    EXPECT_EQ(b.at("thread_ts"), "1.2");
    EXPECT_EQ(b.at("metadata").at("event_payload").at("part"), i);
    const json& blocks = b.at("blocks");
    EXPECT_LE(blocks.size(), 50u);
    size_t contexts = 0, actions = 0;
    for (const json& block : blocks) {
      if (block.at("type") == "section") {
        EXPECT_LE(block.at("text").at("text").get<std::string>().size(), 3000u);
      } else if (block.at("type") == "context") {
        ++contexts;
        EXPECT_LE(block.at("elements").size(), 10u);
      } else if (block.at("type") == "actions") {
        ++actions;
      }
    }
    EXPECT_EQ(contexts, last ? 3u : 0u) << i;  // 25 citations → 10 + 10 + 5
    EXPECT_EQ(actions, last ? 1u : 0u) << i;
    size_t pos = 0;
    while ((pos = body_text.find("Paragraph ", pos)) != std::string::npos) {
      ++total_paragraphs;
      ++pos;
    }
    // Every code fence in a body is balanced.
    size_t fences = 0;
    for (pos = 0; (pos = body_text.find("```", pos)) != std::string::npos; pos += 3) ++fences;
    EXPECT_EQ(fences % 2, 0u) << i;
  }
  EXPECT_EQ(total_paragraphs, 40u);
}

TEST(BuildPostMessageTest, CitationsAreCappedByTheBlockLimit) {
  OutboundMessage m = Reply("short");
  for (int i = 0; i < 1000; ++i) m.citations.push_back({"T|" + std::to_string(i), "", "", "u|x"});
  std::vector<json> bodies = BuildPostMessage(m, "C1", "", true);
  ASSERT_EQ(bodies.size(), 1u);
  const json& blocks = bodies[0].at("blocks");
  EXPECT_EQ(blocks.size(), 50u);
  EXPECT_EQ(blocks.back().at("type"), "actions");
  EXPECT_EQ(blocks[1]["elements"][0].at("text"), "<u%7Cx|T|0>");
}

// ---------------------------------------------------------------------------------------------
// Slash commands and interactivity

TEST(SlashCommandTest, ParsesFixture) {
  Result<SlashCommand> r = ParseSlashCommand(ParseFixture("slash_command_envelope.json").payload);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->command, "/parley");
  EXPECT_EQ(r->text, "human my laptop will not boot");
  EXPECT_EQ(r->user_id, "U0USER5678");
  EXPECT_EQ(r->channel_id, "C0GENERAL1");
  EXPECT_EQ(r->team_id, "T0123ABCD");
  EXPECT_EQ(r->response_url,
            "https://hooks.slack.com/commands/T0123ABCD/1234567890/AbCdEfGhIjKlMnOp");
  EXPECT_EQ(r->trigger_id, "1234567890.1234567890.abcdef0123456789abcdef0123456789");
  SlashAction a = ParseSlashText(r->text);
  EXPECT_EQ(a.kind, SlashAction::Kind::kHuman);
  EXPECT_EQ(a.argument, "my laptop will not boot");
}

TEST(SlashCommandTest, RejectsMissingOrWronglyTypedFields) {
  json good = ParseFixture("slash_command_envelope.json").payload;
  for (const char* key : {"command", "user_id", "channel_id"}) {
    json p = good;
    p.erase(key);
    EXPECT_TRUE(ParseSlashCommand(p).status().IsInvalidArgument()) << key;
  }
  json p = good;
  p["text"] = 12;
  EXPECT_TRUE(ParseSlashCommand(p).status().IsInvalidArgument());
  json no_text = good;
  no_text.erase("text");
  ASSERT_TRUE(ParseSlashCommand(no_text).ok());
  EXPECT_EQ(ParseSlashCommand(no_text)->text, "");
  EXPECT_FALSE(ParseSlashCommand(json::array()).ok());
}

TEST(SlashCommandTest, ParseSlashText) {
  using K = SlashAction::Kind;
  struct Case {
    const char* text;
    K kind;
    const char* argument;
  } cases[] = {
      {"", K::kHelp, ""},
      {"   ", K::kHelp, ""},
      {"help", K::kHelp, ""},
      {"HELP me", K::kHelp, ""},
      {"--help", K::kHelp, ""},
      {"ask how do I reset my token?", K::kAsk, "how do I reset my token?"},
      {"Ask  spaced  ", K::kAsk, "spaced"},
      {"ask", K::kHelp, ""},
      {"forget", K::kForget, ""},
      {"human", K::kHuman, ""},
      {"human  printer on fire ", K::kHuman, "printer on fire"},
      {"--reset now", K::kUnknown, "--reset"},
      {"how do I reset my token?", K::kAsk, "how do I reset my token?"},
      {"forgetful users?", K::kAsk, "forgetful users?"},
  };
  for (const Case& c : cases) {
    SlashAction a = ParseSlashText(c.text);
    EXPECT_EQ(a.kind, c.kind) << c.text;
    EXPECT_EQ(a.argument, c.argument) << c.text;
  }
}

TEST(BlockActionsTest, ParsesFixture) {
  Result<BlockAction> r = ParseBlockActions(ParseFixture("block_actions_envelope.json").payload);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->user_id, "U0USER5678");
  EXPECT_EQ(r->team_id, "T0123ABCD");
  EXPECT_EQ(r->channel_id, "C0GENERAL1");
  EXPECT_EQ(r->message_ts, "1712345690.000100");
  EXPECT_EQ(r->action_id, kFeedbackHelpfulAction);
  EXPECT_EQ(r->value, "msg-42");
  EXPECT_EQ(r->response_url,
            "https://hooks.slack.com/actions/T0123ABCD/1234567890/ZyXwVuTsRqPoNmLk");
  EXPECT_FALSE(r->trigger_id.empty());
}

TEST(BlockActionsTest, ButtonsBuiltHereRoundTrip) {
  // The value our buttons carry comes back as the action's value.
  OutboundMessage m = Reply("answer");
  json actions = BuildPostMessage(m, "C1", "", true)[0].at("blocks").back();
  json payload = ParseFixture("block_actions_envelope.json").payload;
  payload["actions"] = json::array({actions.at("elements")[1]});
  Result<BlockAction> r = ParseBlockActions(payload);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->action_id, kFeedbackUnhelpfulAction);
  EXPECT_EQ(r->value, m.id);
}

TEST(BlockActionsTest, FallsBackToContainerAndRejectsMalformed) {
  json p = ParseFixture("block_actions_envelope.json").payload;
  p.erase("message");
  p.erase("channel");
  Result<BlockAction> r = ParseBlockActions(p);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->message_ts, "1712345690.000100");
  EXPECT_EQ(r->channel_id, "C0GENERAL1");

  json base = ParseFixture("block_actions_envelope.json").payload;
  std::vector<json> bad(6, base);
  bad[0]["type"] = "view_submission";
  bad[1].erase("user");
  bad[2]["actions"] = json::array();
  bad[3]["actions"] = "x";
  bad[4]["actions"][0].erase("action_id");
  bad[5]["actions"][0]["value"] = 3;
  for (size_t i = 0; i < bad.size(); ++i) {
    EXPECT_TRUE(ParseBlockActions(bad[i]).status().IsInvalidArgument()) << i;
  }
  EXPECT_FALSE(ParseBlockActions(json()).ok());
}

TEST(ParseEventCallbackTest, ThreadReplyCarriesTheRootsPoster) {
  json payload = ParseFixture("thread_reply_envelope.json").payload;
  EXPECT_TRUE(ParseEventCallback(payload).parent_user_id.empty() ||
              payload["event"].contains("parent_user_id"));
  payload["event"]["parent_user_id"] = "U0BOT1234";
  EXPECT_EQ(ParseEventCallback(payload).parent_user_id, "U0BOT1234");
  payload["event"]["parent_user_id"] = 7;  // wrong type: ignored
  EXPECT_EQ(ParseEventCallback(payload).parent_user_id, "");
}

TEST(BuildPostMessageTest, MessageActionsBecomeButtonsOnTheLastBody) {
  OutboundMessage m;
  m.id = "esc-3-x-card";
  m.text = "*New escalation #3*";
  m.actions = {{"claim", "Claim", "claim 3", "primary"},
               {"resolve", "Resolve", "resolve 3", ""},
               {"return", "Return to bot", "return 3", "danger"},
               {"", "no id", "x", ""}};  // not renderable: skipped
  std::vector<json> bodies = BuildPostMessage(m, "C0AGENTS", "", false);
  ASSERT_EQ(bodies.size(), 1u);
  EXPECT_FALSE(bodies[0].contains("thread_ts"));
  const json& last = bodies[0].at("blocks").back();
  EXPECT_EQ(last.at("type"), "actions");
  EXPECT_EQ(last.at("block_id"), "parley_actions");
  ASSERT_EQ(last.at("elements").size(), 3u);
  const json& claim = last.at("elements")[0];
  EXPECT_EQ(claim.at("action_id"), "parley_action:claim");
  EXPECT_EQ(claim.at("value"), "claim 3");
  EXPECT_EQ(claim.at("style"), "primary");
  EXPECT_EQ(claim.at("text").at("text"), "Claim");
  EXPECT_FALSE(last.at("elements")[1].contains("style"));
  EXPECT_EQ(last.at("elements")[2].at("style"), "danger");

  // With feedback buttons too: both blocks, feedback last; long text: only the last body.
  m.text = std::string(5000, 'a') + "\n\n" + std::string(3000, 'b');
  bodies = BuildPostMessage(m, "C0AGENTS", "", true);
  ASSERT_GE(bodies.size(), 2u);
  EXPECT_EQ(bodies[0].at("blocks").dump().find("parley_action:"), std::string::npos);
  const json& blocks = bodies.back().at("blocks");
  EXPECT_EQ(blocks[blocks.size() - 2].at("block_id"), "parley_actions");
  EXPECT_EQ(blocks.back().at("block_id"), "parley_feedback");

  // Many actions: at most 25 buttons; labels cut to 75 bytes.
  m.text = "x";
  m.actions.clear();
  for (int i = 0; i < 30; ++i) {
    m.actions.push_back({"a" + std::to_string(i), std::string(100, 'L'), "v", ""});
  }
  const json buttons = BuildPostMessage(m, "C1", "", false)[0].at("blocks").back().at("elements");
  EXPECT_EQ(buttons.size(), 25u);
  EXPECT_EQ(buttons[0].at("text").at("text").get<std::string>().size(), 75u);
}

TEST(BuildPostMessageTest, MentionMarkupNotifiesOnlyInParleysOwnTexts) {
  OutboundMessage m;
  m.text = "Waited 30 min. <!subteam^S0ONCALL|@oncall> <@U0LEAD> <#C0OPS> <!here> a < b & c > d";
  const std::string escaped = BuildPostMessage(m, "C1", "", false)[0].at("text");
  EXPECT_EQ(escaped.find("<!subteam"), std::string::npos) << escaped;
  EXPECT_NE(escaped.find("&lt;!here&gt;"), std::string::npos) << escaped;
  m.keep_mentions = true;
  const std::string kept = BuildPostMessage(m, "C1", "", false)[0].at("text");
  EXPECT_NE(kept.find("<!subteam^S0ONCALL|@oncall>"), std::string::npos) << kept;
  EXPECT_NE(kept.find("<@U0LEAD>"), std::string::npos) << kept;
  EXPECT_NE(kept.find("<#C0OPS>"), std::string::npos) << kept;
  EXPECT_NE(kept.find("<!here>"), std::string::npos) << kept;
  EXPECT_NE(kept.find("a &lt; b &amp; c &gt; d"), std::string::npos) << kept;  // other text
}

TEST(BlockActionsTest, MessageActionClickIsAMessageFromTheClicker) {
  OutboundMessage card;
  card.id = "esc-3-x-card";
  card.text = "card";
  card.actions = {{"claim", "Claim", "claim 3", "primary"}};
  json button =
      BuildPostMessage(card, "C0AGENTS", "", false)[0].at("blocks").back().at("elements")[0];
  json payload = ParseFixture("block_actions_envelope.json").payload;
  payload["actions"] = json::array({button});
  payload["actions"][0]["action_ts"] = "1712345999.000001";
  payload["channel"]["id"] = "C0AGENTS";
  payload["message"]["ts"] = "1712345690.000100";
  payload["message"].erase("thread_ts");
  payload["container"].erase("thread_ts");
  Result<BlockAction> r = ParseBlockActions(payload);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(IsMessageAction(*r));
  EXPECT_EQ(r->action_ts, "1712345999.000001");
  InboundMessage m = MessageFromAction(*r, "env-1");
  EXPECT_EQ(m.platform, "slack");
  EXPECT_EQ(m.channel, "C0AGENTS");
  EXPECT_EQ(m.thread, "1712345690.000100");  // the card roots the thread
  EXPECT_EQ(m.user, "U0USER5678");
  EXPECT_EQ(m.text, "claim 3");
  EXPECT_TRUE(m.mentions_bot);
  EXPECT_FALSE(m.is_direct);
  EXPECT_EQ(m.event_id, "action:C0AGENTS:1712345690.000100:1712345999.000001");
  EXPECT_GT(m.timestamp_ms, 0);

  // In a thread: that thread. Another click: another event id. No action_ts: trigger_id.
  payload["message"]["thread_ts"] = "1712345000.000001";
  payload["actions"][0]["action_ts"] = "1712346000.000002";
  InboundMessage m2 = MessageFromAction(ParseBlockActions(payload).value(), "env-2");
  EXPECT_EQ(m2.thread, "1712345000.000001");
  EXPECT_NE(m2.event_id, m.event_id);
  payload["actions"][0].erase("action_ts");
  InboundMessage m3 = MessageFromAction(ParseBlockActions(payload).value(), "env-3");
  EXPECT_NE(m3.event_id.find(payload.value("trigger_id", "?")), std::string::npos);

  // Feedback buttons are not message actions.
  EXPECT_FALSE(IsMessageAction(
      ParseBlockActions(ParseFixture("block_actions_envelope.json").payload).value()));
}

}  // namespace
}  // namespace parley::slack
