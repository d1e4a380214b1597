// The Matrix codec: sync/messages parsing on spec-shaped fixtures, classification (mentions,
// DMs, threads, ignored events), reply/edit contents and Markdown → HTML.

#include "adapters/matrix/codec.h"

#include <gtest/gtest.h>

#include <fstream>
#include <sstream>
#include <string>

#include "adapters/matrix/client_api.h"
#include "adapters/matrix/html.h"

namespace parley::matrix {
namespace {

using nlohmann::json;

json Fixture(const std::string& name) {
  std::ifstream in(std::string(PARLEY_MATRIX_FIXTURE_DIR) + "/" + name);
  std::stringstream ss;
  ss << in.rdbuf();
  return json::parse(ss.str());
}

BotIdentity Bot() { return BotIdentity{"@parley:example.org", "Parley Bot"}; }

RoomEvent Message(json content, const std::string& sender = "@alice:example.org",
                  const std::string& id = "$ev1:example.org") {
  RoomEvent e;
  e.event_id = id;
  e.sender = sender;
  e.type = "m.room.message";
  e.content = std::move(content);
  e.origin_server_ts = 1700000000000;
  return e;
}

EventDecision Decide(const RoomEvent& e, bool direct = false, bool in_thread = false,
                     ClassifyOptions options = {}) {
  return Classify(e, "!room:example.org", Bot(), RoomContext{direct, in_thread}, options);
}

TEST(MatrixSyncTest, ParsesTheSpecShapedSyncResponse) {
  auto parsed = ParseSync(Fixture("sync.json"));
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  const SyncResponse& r = *parsed;
  EXPECT_EQ(r.next_batch, "s72595_4483_1934");
  ASSERT_EQ(r.join.size(), 1u);
  const JoinedRoom& room = r.join[0];
  EXPECT_EQ(room.room_id, "!726s6s6q:example.com");
  EXPECT_TRUE(room.limited);
  EXPECT_EQ(room.prev_batch, "t34-23535_0_0");
  EXPECT_EQ(room.joined_member_count, 3);
  ASSERT_EQ(room.state.size(), 1u);
  EXPECT_EQ(room.state[0].state_key.value_or("-"), "@alice:example.org");
  ASSERT_EQ(room.timeline.size(), 4u);
  EXPECT_EQ(room.timeline[0].event_id, "$143273582443PhrSn:example.org");
  EXPECT_EQ(room.timeline[0].origin_server_ts, 1432735824653);
  EXPECT_TRUE(room.timeline[2].state_key.has_value());
  ASSERT_EQ(r.invite.size(), 1u);
  EXPECT_EQ(r.invite[0].room_id, "!696r7674:example.com");
  EXPECT_EQ(r.invite[0].invite_state.size(), 4u);
  EXPECT_EQ(r.leave, std::vector<std::string>{"!gone:example.org"});
  EXPECT_TRUE(r.has_direct);
  EXPECT_EQ(r.direct_rooms.count("!dm:example.org"), 1u);
}

TEST(MatrixSyncTest, RejectsResponsesWithoutNextBatchAndSkipsMalformedEvents) {
  EXPECT_FALSE(ParseSync(json::parse(R"({"rooms":{}})")).ok());
  EXPECT_FALSE(ParseSync(json::parse(R"([1,2])")).ok());
  auto parsed = ParseSync(json::parse(
      R"({"next_batch":"n1","rooms":{"join":{"!r:x":{"timeline":{"events":[1,"x",{"no":"type"},
      {"type":"m.room.message","event_id":"$a","sender":"@b:x","content":"not an object"}]}}}}})"));
  ASSERT_TRUE(parsed.ok());
  ASSERT_EQ(parsed->join.size(), 1u);
  ASSERT_EQ(parsed->join[0].timeline.size(), 1u);
  EXPECT_TRUE(parsed->join[0].timeline[0].content.is_object());
  EXPECT_FALSE(parsed->join[0].limited);
}

TEST(MatrixSyncTest, ParsesAMessagesPage) {
  auto page = ParseMessages(Fixture("messages.json"));
  ASSERT_TRUE(page.ok());
  ASSERT_EQ(page->chunk.size(), 2u);
  EXPECT_EQ(page->chunk[0].event_id, "$gap2:example.org");
  EXPECT_EQ(page->end, "t47409-4357353_219380_26003_2265");
  auto last = ParseMessages(json::parse(R"({"chunk":[],"start":"a"})"));
  ASSERT_TRUE(last.ok());
  EXPECT_TRUE(last->end.empty());
  EXPECT_FALSE(ParseMessages(json::parse(R"({"start":"a"})")).ok());
}

TEST(MatrixSyncTest, FilterRaisesTheTimelineLimitAndTurnsPresenceOff) {
  json f = BuildFilter(50);
  EXPECT_EQ(f["room"]["timeline"]["limit"], 50);
  EXPECT_EQ(f["room"]["state"]["lazy_load_members"], true);
  EXPECT_EQ(f["presence"]["not_types"], json::array({"*"}));
}

TEST(MatrixClassifyTest, MentionsInMMentionsAreAuthoritative) {
  auto d = Decide(Message({{"msgtype", "m.text"},
                           {"body", "Parley Bot: how do I reset my password?"},
                           {"m.mentions", {{"user_ids", {"@parley:example.org"}}}}}));
  ASSERT_TRUE(d.handle);
  EXPECT_TRUE(d.message.mentions_bot);
  EXPECT_EQ(d.message.text, "how do I reset my password?");
  EXPECT_EQ(d.message.platform, "matrix");
  EXPECT_EQ(d.message.channel, "!room:example.org");
  EXPECT_EQ(d.message.event_id, "$ev1:example.org");
  EXPECT_EQ(d.message.thread, "$ev1:example.org");  // the reply opens a thread on it
  EXPECT_EQ(d.message.workspace, "example.org");
  EXPECT_EQ(d.message.timestamp_ms, 1700000000000);

  // m.mentions present without the bot: the body's name does not count.
  auto other = Decide(Message({{"msgtype", "m.text"},
                               {"body", "parley is great, says @bob"},
                               {"m.mentions", {{"user_ids", {"@bob:example.org"}}}}}));
  EXPECT_FALSE(other.handle);
  EXPECT_EQ(other.reason, IgnoreReason::kNotAddressed);
  auto empty = Decide(Message(
      {{"msgtype", "m.text"}, {"body", "@parley:example.org hi"}, {"m.mentions", json::object()}}));
  EXPECT_FALSE(empty.handle);
}

TEST(MatrixClassifyTest, LegacyBodyMentionsWhenMMentionsIsAbsent) {
  for (const char* body : {"@parley:example.org what is X?", "parley: what is X?",
                           "hey Parley Bot, what is X?", "what is X, parley?"}) {
    auto d = Decide(Message({{"msgtype", "m.text"}, {"body", body}}));
    EXPECT_TRUE(d.handle) << body;
    EXPECT_TRUE(d.message.mentions_bot) << body;
  }
  auto stripped =
      Decide(Message({{"msgtype", "m.text"}, {"body", "@parley:example.org what is X?"}}));
  EXPECT_EQ(stripped.message.text, "what is X?");
  // Not a whole word.
  EXPECT_FALSE(Decide(Message({{"msgtype", "m.text"}, {"body", "parleyvous?"}})).handle);
  // A pill in formatted_body.
  auto pill = Decide(Message(
      {{"msgtype", "m.text"},
       {"body", "Botty: hi"},
       {"format", "org.matrix.custom.html"},
       {"formatted_body", "<a href=\"https://matrix.to/#/@parley:example.org\">Botty</a>: hi"}}));
  EXPECT_TRUE(pill.handle);
}

TEST(MatrixClassifyTest, DirectMessagesAreAlwaysAddressed) {
  auto d = Decide(Message({{"msgtype", "m.text"}, {"body", "hello there"}}), /*direct=*/true);
  ASSERT_TRUE(d.handle);
  EXPECT_TRUE(d.message.is_direct);
  EXPECT_FALSE(d.message.mentions_bot);
  EXPECT_EQ(d.message.thread, "");  // DM replies stay in the main line
}

TEST(MatrixClassifyTest, ThreadFollowUpsCountWhenTheBotIsInTheThread) {
  json content{{"msgtype", "m.text"},
               {"body", "and on Windows?"},
               {"m.relates_to",
                {{"rel_type", "m.thread"},
                 {"event_id", "$root"},
                 {"is_falling_back", true},
                 {"m.in_reply_to", {{"event_id", "$last"}}}}}};
  EXPECT_FALSE(Decide(Message(content), false, /*in_thread=*/false).handle);
  auto d = Decide(Message(content), false, /*in_thread=*/true);
  ASSERT_TRUE(d.handle);
  EXPECT_EQ(d.message.thread, "$root");
  EXPECT_EQ(d.thread_root, "$root");
  ClassifyOptions off;
  off.thread_followups = false;
  EXPECT_FALSE(Decide(Message(content), false, true, off).handle);
}

TEST(MatrixClassifyTest, IgnoresOwnEventsNoticesEditsRedactionsAndOtherTypes) {
  json text{{"msgtype", "m.text"}, {"body", "@parley:example.org hi"}};
  EXPECT_EQ(Decide(Message(text, "@parley:example.org")).reason, IgnoreReason::kOwnEvent);
  EXPECT_EQ(Decide(Message({{"msgtype", "m.notice"}, {"body", "@parley:example.org hi"}})).reason,
            IgnoreReason::kNotice);
  json edit = text;
  edit["m.relates_to"] = {{"rel_type", "m.replace"}, {"event_id", "$orig"}};
  edit["m.new_content"] = text;
  EXPECT_EQ(Decide(Message(edit)).reason, IgnoreReason::kEdit);
  RoomEvent redaction = Message(json::object());
  redaction.type = "m.room.redaction";
  EXPECT_EQ(Decide(redaction).reason, IgnoreReason::kRedacted);
  EXPECT_EQ(Decide(Message(json::object())).reason, IgnoreReason::kRedacted);
  RoomEvent enc = Message(json{{"algorithm", "m.megolm.v1.aes-sha2"}});
  enc.type = "m.room.encrypted";
  EXPECT_EQ(Decide(enc).reason, IgnoreReason::kEncrypted);
  EXPECT_EQ(Decide(Message({{"msgtype", "m.image"}, {"body", "@parley:example.org x.png"}})).reason,
            IgnoreReason::kNotMessage);
  EXPECT_EQ(Decide(Message({{"msgtype", "m.text"}, {"body", "@parley:example.org"}})).reason,
            IgnoreReason::kEmpty);
}

TEST(MatrixClassifyTest, ReplyFallbacksAreStripped) {
  auto d =
      Decide(Message({{"msgtype", "m.text"},
                      {"body",
                       "> <@parley:example.org> the old answer\n> second line\n\nthanks, "
                       "but what about Y?"},
                      {"format", "org.matrix.custom.html"},
                      {"formatted_body",
                       "<mx-reply><blockquote><a href=\"https://matrix.to/#/@parley:example.org\">"
                       "parley</a> old</blockquote></mx-reply>thanks"},
                      {"m.relates_to", {{"m.in_reply_to", {{"event_id", "$old"}}}}}}),
             /*direct=*/true);
  ASSERT_TRUE(d.handle);
  EXPECT_EQ(d.message.text, "thanks, but what about Y?");
  // In a room, the pill inside the fallback is not a mention.
  auto room = Decide(Message({{"msgtype", "m.text"},
                              {"body", "> <@bob:example.org> x\n\nthanks"},
                              {"format", "org.matrix.custom.html"},
                              {"formatted_body",
                               "<mx-reply><a href=\"https://matrix.to/#/@parley:example.org\">p</a>"
                               "</mx-reply>thanks"}}));
  EXPECT_FALSE(room.handle);
  EXPECT_EQ(StripReplyFallback("no fallback\n> quoted later"), "no fallback\n> quoted later");
  EXPECT_EQ(StripMxReply("<mx-reply>x</mx-reply>rest"), "rest");
}

TEST(MatrixReplyTest, ThreadedReplyCarriesThreadRelationAndFallback) {
  OutboundMessage m;
  m.id = "r1";
  m.conversation = ConversationKey{"matrix", "!room:x", "$root"};
  m.in_reply_to = "$question";
  m.text = "Use **the VPN** at <https://vpn.example.org>.";
  m.citations.push_back(Citation{"VPN guide", "vpn.md", "Setup", "https://kb.example.org/vpn"});
  auto parts = BuildReplyContents(m, ReplyOptions{});
  ASSERT_EQ(parts.size(), 1u);
  const json& c = parts[0];
  EXPECT_EQ(c["msgtype"], "m.notice");
  EXPECT_EQ(c["format"], "org.matrix.custom.html");
  EXPECT_EQ(c["m.mentions"], json::object());
  EXPECT_EQ(c["m.relates_to"]["rel_type"], "m.thread");
  EXPECT_EQ(c["m.relates_to"]["event_id"], "$root");
  EXPECT_EQ(c["m.relates_to"]["is_falling_back"], true);
  EXPECT_EQ(c["m.relates_to"]["m.in_reply_to"]["event_id"], "$question");
  const std::string html = c["formatted_body"];
  EXPECT_NE(html.find("<strong>the VPN</strong>"), std::string::npos) << html;
  EXPECT_NE(html.find("<a href=\"https://kb.example.org/vpn\">VPN guide › Setup</a>"),
            std::string::npos)
      << html;
  const std::string body = c["body"];
  EXPECT_NE(body.find("VPN guide › Setup (https://kb.example.org/vpn)"), std::string::npos) << body;
}

TEST(MatrixReplyTest, RichReplyWhenThreadsAreOffAndMsgtypeConfigurable) {
  OutboundMessage m;
  m.conversation = ConversationKey{"matrix", "!room:x", ""};
  m.in_reply_to = "$question";
  m.text = "hi";
  ReplyOptions options;
  options.msgtype = "m.text";
  options.threads = false;
  auto parts = BuildReplyContents(m, options);
  ASSERT_EQ(parts.size(), 1u);
  EXPECT_EQ(parts[0]["msgtype"], "m.text");
  EXPECT_EQ(parts[0]["m.relates_to"], (json{{"m.in_reply_to", {{"event_id", "$question"}}}}));
  m.in_reply_to.clear();
  EXPECT_FALSE(BuildReplyContents(m, options)[0].contains("m.relates_to"));
}

TEST(MatrixReplyTest, LongRepliesAreSplitBelowTheEventSizeLimit) {
  OutboundMessage m;
  m.conversation = ConversationKey{"matrix", "!room:x", "$root"};
  m.in_reply_to = "$q";
  std::string text;
  for (int i = 0; i < 4000; ++i) text += "word <&> " + std::to_string(i) + (i % 20 ? " " : "\n\n");
  m.text = text;
  auto parts = BuildReplyContents(m, ReplyOptions{});
  ASSERT_GT(parts.size(), 1u);
  std::string joined;
  for (const json& p : parts) {
    EXPECT_LT(p.dump().size(), kMaxContentBytes + 1);
    EXPECT_LT(BuildEditContent("$orig", p).dump().size(), 60'000u);
    EXPECT_EQ(p["m.relates_to"]["rel_type"], "m.thread");
    joined += p["body"].get<std::string>() + " ";
  }
  EXPECT_NE(joined.find("word <&> 3999"), std::string::npos);
  EXPECT_NE(joined.find("word <&> 1 "), std::string::npos);
}

TEST(MatrixReplyTest, ActionsAreListedAndOwnMentionsNotify) {
  OutboundMessage m;
  m.conversation = ConversationKey{"matrix", "!agents:x", ""};
  m.text = "Ticket 17 waits, @oncall:example.org (and @room).";
  m.actions.push_back(MessageAction{"claim", "Claim", "claim 17", "primary"});
  auto plain = BuildReplyContents(m, ReplyOptions{});
  ASSERT_EQ(plain.size(), 1u);
  EXPECT_EQ(plain[0]["m.mentions"], json::object());  // not parley's own text: nobody notified
  EXPECT_NE(plain[0]["body"].get<std::string>().find("`claim 17`: Claim"), std::string::npos);
  EXPECT_NE(plain[0]["formatted_body"].get<std::string>().find("<code>claim 17</code>"),
            std::string::npos);
  m.keep_mentions = true;
  auto own = BuildReplyContents(m, ReplyOptions{});
  EXPECT_EQ(own[0]["m.mentions"], (json{{"user_ids", {"@oncall:example.org"}}, {"room", true}}));
}

TEST(MatrixReplyTest, EditsReplaceTheWholeContentWithoutNewMentions) {
  json content{{"msgtype", "m.notice"},
               {"body", "full text"},
               {"format", "org.matrix.custom.html"},
               {"formatted_body", "<p>full text</p>"},
               {"m.mentions", json::object()},
               {"m.relates_to", {{"rel_type", "m.thread"}, {"event_id", "$root"}}}};
  json edit = BuildEditContent("$orig", content);
  EXPECT_EQ(edit["m.relates_to"], (json{{"rel_type", "m.replace"}, {"event_id", "$orig"}}));
  EXPECT_EQ(edit["body"], "* full text");
  EXPECT_EQ(edit["m.mentions"], json::object());
  EXPECT_EQ(edit["m.new_content"]["body"], "full text");
  EXPECT_EQ(edit["m.new_content"]["formatted_body"], "<p>full text</p>");
  EXPECT_EQ(edit["m.new_content"]["msgtype"], "m.notice");
  EXPECT_FALSE(edit["m.new_content"].contains("m.relates_to"));
}

TEST(MatrixHtmlTest, ConvertsCommonMarkdown) {
  EXPECT_EQ(MarkdownToHtml("Hello **world** and *you*"),
            "<p>Hello <strong>world</strong> and <em>you</em></p>");
  EXPECT_EQ(MarkdownToHtml("# Title\n\n- a\n- b `x<y`"),
            "<h1>Title</h1><ul><li>a</li><li>b <code>x&lt;y</code></li></ul>");
  EXPECT_EQ(MarkdownToHtml("1. one\n2. two"), "<ol><li>one</li><li>two</li></ol>");
  EXPECT_EQ(MarkdownToHtml("```sh\nrm -rf <dir>\n```"),
            "<pre><code class=\"language-sh\">rm -rf &lt;dir&gt;\n</code></pre>");
  EXPECT_EQ(MarkdownToHtml("> quoted\n\nline one\nline two"),
            "<blockquote><p>quoted</p></blockquote><p>line one<br>line two</p>");
  EXPECT_EQ(MarkdownToHtml("see [docs](https://d.example/x?a=1&b=2)"),
            "<p>see <a href=\"https://d.example/x?a=1&amp;b=2\">docs</a></p>");
  EXPECT_EQ(MarkdownToHtml("snake_case_name ~~old~~"), "<p>snake_case_name <del>old</del></p>");
}

TEST(MatrixHtmlTest, OutputIsSanitised) {
  const std::string html = MarkdownToHtml(
      "<script>alert(1)</script> [x](javascript:alert(1)) <img src=x onerror=y> \"q\"");
  EXPECT_EQ(html.find("<script"), std::string::npos) << html;
  EXPECT_EQ(html.find("<img"), std::string::npos) << html;
  EXPECT_EQ(html.find("javascript:"), std::string::npos) << html;
  EXPECT_NE(html.find("&lt;script&gt;"), std::string::npos) << html;
  EXPECT_NE(html.find("&quot;q&quot;"), std::string::npos) << html;
}

TEST(MatrixApiTest, ClassifiesHomeserverAnswers) {
  auto answer = [](int status, std::string body, net::Headers headers = {}) {
    net::ClientResponse r;
    r.status = status;
    r.body = std::move(body);
    r.headers = std::move(headers);
    return Classify(Result<net::ClientResponse>(std::move(r)), 1'000'000);
  };
  EXPECT_EQ(answer(200, R"({"event_id":"$a"})").outcome, Outcome::kOk);
  EXPECT_EQ(answer(200, "<html>oops</html>").outcome, Outcome::kTransient);
  EXPECT_EQ(answer(200, "{\"next_batch\":").outcome, Outcome::kTransient);
  EXPECT_EQ(answer(502, "<html><body>Bad Gateway</body></html>").outcome, Outcome::kTransient);
  EXPECT_EQ(answer(500, R"({"errcode":"M_UNKNOWN","error":"x"})").outcome, Outcome::kTransient);
  auto limited = answer(429, R"({"errcode":"M_LIMIT_EXCEEDED","retry_after_ms":2500})",
                        {{"Retry-After", "4"}});
  EXPECT_EQ(limited.outcome, Outcome::kRateLimited);
  EXPECT_EQ(limited.retry_after_ms, 4000);  // the header wins
  EXPECT_EQ(answer(429, R"({"errcode":"M_LIMIT_EXCEEDED","retry_after_ms":2500})").retry_after_ms,
            2500);
  EXPECT_EQ(answer(429, "").retry_after_ms, 1000);
  auto token = answer(401, R"({"errcode":"M_UNKNOWN_TOKEN","error":"x","soft_logout":true})");
  EXPECT_EQ(token.outcome, Outcome::kUnknownToken);
  EXPECT_TRUE(token.soft_logout);
  auto filter = answer(400, R"({"errcode":"M_INVALID_PARAM","error":"No such filter"})");
  EXPECT_EQ(filter.outcome, Outcome::kRefused);
  EXPECT_EQ(filter.errcode, "M_INVALID_PARAM");
  EXPECT_EQ(Classify(Result<net::ClientResponse>(Status::Unavailable("reset")), 0).outcome,
            Outcome::kTransient);
}

TEST(MatrixApiTest, ParsesRetryAfter) {
  EXPECT_EQ(ParseRetryAfterMs("3", 0), 3000);
  EXPECT_EQ(ParseRetryAfterMs(" 0 ", 0), 0);
  EXPECT_EQ(ParseRetryAfterMs("", 0), -1);
  EXPECT_EQ(ParseRetryAfterMs("soon", 0), -1);
  // Sun, 06 Nov 1994 08:49:37 GMT = 784111777 s.
  EXPECT_EQ(ParseRetryAfterMs("Sun, 06 Nov 1994 08:49:37 GMT", 784111770'000), 7000);
}

}  // namespace
}  // namespace parley::matrix
