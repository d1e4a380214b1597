#include "tests/fakes/matrix/matrix_server.h"

#include <gtest/gtest.h>

#include <chrono>
#include <future>
#include <set>
#include <string>
#include <vector>

#include "net/http.h"

namespace parley::testing {
namespace {

using Json = nlohmann::json;
using Clock = std::chrono::steady_clock;

const char kAlice[] = "@alice:test.local";
const char kBob[] = "@bob:test.local";

struct Answer {
  bool transport_ok = false;
  int status = 0;
  net::Headers headers;
  std::string raw;
  Json body;  // discarded when not JSON
};

std::string Encode(const std::string& s) {
  static const char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

Answer Call(const MatrixServer& server, const std::string& method, const std::string& path,
            const std::string& token, const std::string& body = "", int timeout_ms = 5000) {
  net::ClientRequest req;
  req.method = method;
  req.url = server.base_url() + path;
  req.timeout_ms = timeout_ms;
  if (!token.empty()) req.headers.emplace_back("Authorization", "Bearer " + token);
  if (!body.empty()) {
    req.headers.emplace_back("Content-Type", "application/json");
    req.body = body;
  }
  auto r = net::BlockingRequest(req);
  Answer a;
  if (!r.ok()) return a;
  a.transport_ok = true;
  a.status = r->status;
  a.headers = r->headers;
  a.raw = r->body;
  a.body = Json::parse(r->body, nullptr, false);
  return a;
}

class FakeMatrixTest : public ::testing::Test {
 protected:
  void SetUp() override { server_ = MatrixServer::Start(); }

  const std::string& bot() const { return server_->options().bot_user_id; }
  const std::string& token() const { return server_->options().bot_access_token; }

  Answer Get(const std::string& path, const std::string& tok) {
    return Call(*server_, "GET", path, tok);
  }
  Answer Sync(const std::string& query, const std::string& tok = "", int timeout_ms = 5000) {
    return Call(*server_, "GET", "/_matrix/client/v3/sync" + query, tok.empty() ? token() : tok, "",
                timeout_ms);
  }
  Answer SendMsg(const std::string& room, const std::string& txn, const Json& content,
                 const std::string& tok = "") {
    return Call(*server_, "PUT",
                "/_matrix/client/v3/rooms/" + Encode(room) + "/send/m.room.message/" + txn,
                tok.empty() ? token() : tok, content.dump());
  }
  Answer Login(const std::string& user, const std::string& password,
               const std::string& device = "") {
    Json body = {{"type", "m.login.password"},
                 {"identifier", {{"type", "m.id.user"}, {"user", user}}},
                 {"password", password}};
    if (!device.empty()) body["device_id"] = device;
    return Call(*server_, "POST", "/_matrix/client/v3/login", "", body.dump());
  }
  std::string NextBatch(const std::string& tok = "") {
    Answer a = Sync("", tok);
    EXPECT_EQ(a.status, 200) << a.raw;
    return a.body.value("next_batch", "");
  }

  std::unique_ptr<MatrixServer> server_;
};

std::vector<std::string> Bodies(const Json& events) {
  std::vector<std::string> out;
  for (const Json& e : events) {
    if (e.value("type", "") == "m.room.message") out.push_back(e["content"].value("body", ""));
  }
  return out;
}

// The last event of `type` with `key` in `events` (state applies in order), or null.
const Json* FindState(const Json& events, const std::string& type, const std::string& key) {
  const Json* found = nullptr;
  for (const Json& e : events) {
    if (e.value("type", "") == type && e.value("state_key", "") == key) found = &e;
  }
  return found;
}

// The m.room.message events a user sent (SentBy also lists their membership events).
std::vector<MatrixEvent> MessagesBy(const MatrixServer& server, const std::string& user) {
  std::vector<MatrixEvent> out;
  for (const MatrixEvent& e : server.SentBy(user)) {
    if (e.type == "m.room.message") out.push_back(e);
  }
  return out;
}

TEST_F(FakeMatrixTest, VersionsLoginWhoami) {
  Answer v = Get("/_matrix/client/versions", "");
  ASSERT_EQ(v.status, 200);
  EXPECT_TRUE(v.body["versions"].is_array());

  Answer flows = Get("/_matrix/client/v3/login", "");
  ASSERT_EQ(flows.status, 200);
  EXPECT_EQ(flows.body["flows"][0]["type"], "m.login.password");

  Answer a = Login("parley", "bot-password", "MYDEVICE");
  ASSERT_EQ(a.status, 200) << a.raw;
  EXPECT_EQ(a.body["user_id"], bot());
  EXPECT_EQ(a.body["device_id"], "MYDEVICE");
  Answer b = Login(bot(), "bot-password");
  ASSERT_EQ(b.status, 200) << b.raw;
  EXPECT_NE(b.body["access_token"], a.body["access_token"]);
  EXPECT_NE(b.body["device_id"], "MYDEVICE");
  EXPECT_FALSE(b.body.value("device_id", "").empty());

  Answer who = Get("/_matrix/client/v3/account/whoami", a.body["access_token"]);
  ASSERT_EQ(who.status, 200);
  EXPECT_EQ(who.body["user_id"], bot());
  EXPECT_EQ(who.body["device_id"], "MYDEVICE");
  Answer who_bot = Get("/_matrix/client/v3/account/whoami", token());
  EXPECT_EQ(who_bot.body["device_id"], "BOTDEVICE");

  Answer wrong = Login("parley", "nope");
  EXPECT_EQ(wrong.status, 403);
  EXPECT_EQ(wrong.body["errcode"], "M_FORBIDDEN");
  EXPECT_EQ(server_->RequestCount("login"), 4);
  EXPECT_EQ(server_->RequestCount("whoami"), 2);
}

TEST_F(FakeMatrixTest, AuthErrors) {
  Answer missing = Get("/_matrix/client/v3/account/whoami", "");
  EXPECT_EQ(missing.status, 401);
  EXPECT_EQ(missing.body["errcode"], "M_MISSING_TOKEN");
  Answer unknown = Get("/_matrix/client/v3/account/whoami", "bogus");
  EXPECT_EQ(unknown.status, 401);
  EXPECT_EQ(unknown.body["errcode"], "M_UNKNOWN_TOKEN");
  EXPECT_EQ(unknown.body["soft_logout"], false);
  Answer query = Get("/_matrix/client/v3/account/whoami?access_token=" + token(), "");
  EXPECT_EQ(query.status, 200);

  server_->InvalidateToken(/*soft_logout=*/true);
  Answer soft = Get("/_matrix/client/v3/account/whoami", token());
  EXPECT_EQ(soft.status, 401);
  EXPECT_EQ(soft.body["errcode"], "M_UNKNOWN_TOKEN");
  EXPECT_EQ(soft.body["soft_logout"], true);
  Answer relog = Login("parley", "bot-password", "BOTDEVICE");
  ASSERT_EQ(relog.status, 200);
  EXPECT_EQ(Get("/_matrix/client/v3/account/whoami", relog.body["access_token"]).status, 200);
  server_->InvalidateToken(/*soft_logout=*/false);
  Answer hard = Get("/_matrix/client/v3/account/whoami", relog.body["access_token"]);
  EXPECT_EQ(hard.body["soft_logout"], false);

  Answer nowhere = Get("/_matrix/client/v3/nonsense", token());
  EXPECT_EQ(nowhere.status, 404);
  EXPECT_EQ(nowhere.body["errcode"], "M_UNRECOGNIZED");
  Answer method = Call(*server_, "DELETE", "/_matrix/client/v3/account/whoami", token());
  EXPECT_EQ(method.status, 405);
  EXPECT_EQ(method.body["errcode"], "M_UNRECOGNIZED");
}

TEST_F(FakeMatrixTest, FiltersUploadGetForgetAndInline) {
  Json filter = {{"room", {{"timeline", {{"limit", 50}}}}}};
  Answer up = Call(*server_, "POST", "/_matrix/client/v3/user/" + Encode(bot()) + "/filter",
                   token(), filter.dump());
  ASSERT_EQ(up.status, 200) << up.raw;
  std::string id = up.body.value("filter_id", "");
  ASSERT_FALSE(id.empty());
  EXPECT_NE(id[0], '{');
  Answer got = Get("/_matrix/client/v3/user/" + Encode(bot()) + "/filter/" + id, token());
  EXPECT_EQ(got.body, filter);
  Answer other = Call(*server_, "POST", "/_matrix/client/v3/user/" + Encode(kAlice) + "/filter",
                      token(), filter.dump());
  EXPECT_EQ(other.status, 403);
  EXPECT_EQ(other.body["errcode"], "M_FORBIDDEN");

  EXPECT_EQ(Sync("?filter=" + id).status, 200);
  server_->ForgetFilters();
  Answer gone = Sync("?filter=" + id);
  EXPECT_EQ(gone.status, 400);
  EXPECT_EQ(gone.body["errcode"], "M_INVALID_PARAM");
  EXPECT_EQ(gone.body["error"], "No such filter");

  Json inline_filter = {{"room", {{"timeline", {{"limit", 1}}}}}};
  EXPECT_EQ(Sync("?filter=" + Encode(inline_filter.dump())).status, 200);
  Answer bad = Sync("?filter=" + Encode("{nope"));
  EXPECT_EQ(bad.status, 400);
  EXPECT_EQ(bad.body["errcode"], "M_NOT_JSON");
  auto uploaded = server_->UploadedFilters();
  ASSERT_EQ(uploaded.size(), 2u);
  EXPECT_EQ(uploaded[0], filter);
  EXPECT_EQ(uploaded[1], inline_filter);
}

TEST_F(FakeMatrixTest, InitialThenIncrementalSync) {
  std::string room = server_->CreateRoom(kAlice, {bot(), kBob}, false, "General");
  server_->SendText(room, kAlice, "one");
  server_->SendText(room, kBob, "two");
  server_->SendText(room, kAlice, "three");

  Answer initial = Sync("");
  ASSERT_EQ(initial.status, 200);
  const Json& r = initial.body["rooms"]["join"][room];
  EXPECT_EQ(Bodies(r["timeline"]["events"]), (std::vector<std::string>{"one", "two", "three"}));
  EXPECT_EQ(r["summary"]["m.joined_member_count"], 3);
  EXPECT_EQ(r["summary"]["m.invited_member_count"], 0);
  EXPECT_FALSE(r["summary"].contains("m.heroes"));  // the room is named
  for (const Json& e : r["timeline"]["events"]) {
    EXPECT_EQ(e.value("event_id", "").substr(0, 1), "$");
    EXPECT_TRUE(e.contains("origin_server_ts"));
    EXPECT_FALSE(e.contains("room_id"));
    EXPECT_FALSE(e["unsigned"].contains("transaction_id"));
  }

  // Timeline limit 2: the last two, limited, state at the start of the timeline.
  Json f = {{"room", {{"timeline", {{"limit", 2}}}}}};
  Answer small = Sync("?filter=" + Encode(f.dump()));
  const Json& s = small.body["rooms"]["join"][room];
  EXPECT_EQ(Bodies(s["timeline"]["events"]), (std::vector<std::string>{"two", "three"}));
  EXPECT_TRUE(s["timeline"]["limited"].get<bool>());
  EXPECT_NE(FindState(s["state"]["events"], "m.room.create", ""), nullptr);
  EXPECT_NE(FindState(s["state"]["events"], "m.room.member", bot()), nullptr);
  EXPECT_NE(FindState(s["state"]["events"], "m.room.name", ""), nullptr);

  std::string since = initial.body["next_batch"];
  Answer none = Sync("?since=" + since + "&timeout=0");
  ASSERT_EQ(none.status, 200);
  EXPECT_FALSE(none.body.contains("rooms"));
  EXPECT_FALSE(none.body.value("next_batch", "").empty());

  server_->SendText(room, kBob, "four");
  Answer inc = Sync("?since=" + since + "&timeout=0");
  const Json& ir = inc.body["rooms"]["join"][room];
  EXPECT_EQ(Bodies(ir["timeline"]["events"]), (std::vector<std::string>{"four"}));
  EXPECT_FALSE(ir["timeline"]["limited"].get<bool>());
  EXPECT_TRUE(ir["state"]["events"].empty());
  EXPECT_NE(inc.body["next_batch"], since);
  // Nothing new since the new token.
  Answer again = Sync("?since=" + inc.body["next_batch"].get<std::string>() + "&timeout=0");
  EXPECT_FALSE(again.body.contains("rooms"));
}

TEST_F(FakeMatrixTest, LongPollWakesOnEventAndTimesOutEmpty) {
  std::string room = server_->CreateRoom(kAlice, {bot()});
  std::string since = NextBatch();

  auto start = Clock::now();
  Answer empty = Sync("?since=" + since + "&timeout=200");
  auto waited = Clock::now() - start;
  ASSERT_EQ(empty.status, 200);
  EXPECT_FALSE(empty.body.contains("rooms"));
  EXPECT_GE(waited, std::chrono::milliseconds(150));

  start = Clock::now();
  auto pending = std::async(std::launch::async,
                            [&] { return Sync("?since=" + since + "&timeout=5000", "", 10000); });
  ASSERT_TRUE(server_->WaitFor([&] { return server_->PendingSyncs() == 1; }, 3000));
  server_->SendText(room, kAlice, "wake up");
  Answer woke = pending.get();
  EXPECT_LT(Clock::now() - start, std::chrono::milliseconds(4000));
  ASSERT_EQ(woke.status, 200);
  EXPECT_EQ(Bodies(woke.body["rooms"]["join"][room]["timeline"]["events"]),
            (std::vector<std::string>{"wake up"}));

  // An event in a room the bot is not in does not wake it.
  std::string other = server_->CreateRoom(kAlice, {kBob});
  std::string since2 = woke.body["next_batch"];
  auto pending2 = std::async(std::launch::async,
                             [&] { return Sync("?since=" + since2 + "&timeout=300", "", 5000); });
  ASSERT_TRUE(server_->WaitFor([&] { return server_->PendingSyncs() == 1; }, 3000));
  server_->SendText(other, kAlice, "not for you");
  Answer quiet = pending2.get();
  EXPECT_FALSE(quiet.body.contains("rooms")) << quiet.raw;
}

TEST_F(FakeMatrixTest, LimitedGapIsFilledExactlyByMessages) {
  std::string room = server_->CreateRoom(kAlice, {bot()});
  std::string since = NextBatch();
  std::vector<std::string> sent;
  for (int i = 0; i < 15; ++i) {
    sent.push_back("m" + std::to_string(i));
    server_->SendText(room, kAlice, sent.back());
  }
  server_->SendState(room, kAlice, "m.room.topic", "", Json{{"topic", "gap topic"}});
  server_->SendText(room, kAlice, "last");
  sent.push_back("last");

  Answer inc = Sync("?since=" + since + "&timeout=0");
  const Json& t = inc.body["rooms"]["join"][room]["timeline"];
  ASSERT_TRUE(t["limited"].get<bool>());
  ASSERT_EQ(t["events"].size(), 10u);  // default_timeline_limit
  // The topic change lies inside the timeline, so it is not in state.
  std::vector<std::string> got = Bodies(t["events"]);
  // Walk the gap backwards from prev_batch to the old since, two at a time.
  std::string from = t["prev_batch"];
  std::vector<std::string> gap;
  for (int page = 0; page < 20; ++page) {
    Answer m = Get("/_matrix/client/v3/rooms/" + Encode(room) +
                       "/messages?dir=b&limit=2&from=" + Encode(from) + "&to=" + Encode(since),
                   token());
    ASSERT_EQ(m.status, 200) << m.raw;
    EXPECT_EQ(m.body["start"], from);
    for (const Json& e : m.body["chunk"]) {
      EXPECT_EQ(e["room_id"], room);
      if (e["type"] == "m.room.message")
        gap.insert(gap.begin(), e["content"]["body"].get<std::string>());
    }
    if (!m.body.contains("end")) break;
    from = m.body["end"];
  }
  gap.insert(gap.end(), got.begin(), got.end());
  EXPECT_EQ(gap, sent);

  // Forward pagination from the old since reaches the same events.
  Answer fwd = Get("/_matrix/client/v3/rooms/" + Encode(room) +
                       "/messages?dir=f&limit=100&from=" + Encode(since),
                   token());
  EXPECT_EQ(Bodies(fwd.body["chunk"]), sent);
  EXPECT_FALSE(fwd.body.contains("end"));
  // lazy_load_members: the senders' member events come along in `state`.
  Json lazy = {{"lazy_load_members", true}};
  Answer with_state = Get("/_matrix/client/v3/rooms/" + Encode(room) +
                              "/messages?dir=b&limit=1&filter=" + Encode(lazy.dump()),
                          token());
  ASSERT_EQ(with_state.body["chunk"].size(), 1u);
  EXPECT_TRUE(with_state.body.contains("end"));
  ASSERT_EQ(with_state.body["state"].size(), 1u);
  EXPECT_EQ(with_state.body["state"][0]["state_key"], kAlice);
  Answer no_dir = Get("/_matrix/client/v3/rooms/" + Encode(room) + "/messages", token());
  EXPECT_EQ(no_dir.status, 400);
}

TEST_F(FakeMatrixTest, LimitedStateHoldsTheDeltaOverTheGap) {
  std::string room = server_->CreateRoom(kAlice, {bot()});
  std::string since = NextBatch();
  server_->SendState(room, kAlice, "m.room.topic", "", Json{{"topic", "new"}});
  for (int i = 0; i < 12; ++i) server_->SendText(room, kAlice, "x" + std::to_string(i));
  Answer inc = Sync("?since=" + since + "&timeout=0");
  const Json& r = inc.body["rooms"]["join"][room];
  ASSERT_TRUE(r["timeline"]["limited"].get<bool>());
  const Json& state = r["state"]["events"];
  ASSERT_EQ(state.size(), 1u) << state.dump();
  EXPECT_EQ(state[0]["type"], "m.room.topic");
  EXPECT_EQ(state[0]["content"]["topic"], "new");
}

TEST_F(FakeMatrixTest, InviteStrippedStateThenJoin) {
  std::string room = server_->CreateRoom(kAlice, {}, /*encrypted=*/true, "Secret");
  std::string since = NextBatch();
  server_->Invite(room, kAlice, bot(), /*is_direct=*/true);
  Answer inc = Sync("?since=" + since + "&timeout=0");
  ASSERT_EQ(inc.status, 200);
  const Json& events = inc.body["rooms"]["invite"][room]["invite_state"]["events"];
  for (const char* type :
       {"m.room.create", "m.room.name", "m.room.join_rules", "m.room.encryption"}) {
    EXPECT_NE(FindState(events, type, ""), nullptr) << type;
  }
  const Json* me = FindState(events, "m.room.member", bot());
  ASSERT_NE(me, nullptr);
  EXPECT_EQ((*me)["content"]["membership"], "invite");
  EXPECT_EQ((*me)["content"]["is_direct"], true);
  EXPECT_EQ((*me)["sender"], kAlice);
  for (const Json& e : events) {
    std::set<std::string> keys;
    for (auto it = e.begin(); it != e.end(); ++it) keys.insert(it.key());
    EXPECT_EQ(keys, (std::set<std::string>{"sender", "type", "state_key", "content"}));
  }

  // A room the bot was not invited to is refused.
  std::string closed = server_->CreateRoom(kBob, {});
  Answer refused =
      Call(*server_, "POST", "/_matrix/client/v3/join/" + Encode(closed), token(), "{}");
  EXPECT_EQ(refused.status, 403);
  EXPECT_EQ(refused.body["errcode"], "M_FORBIDDEN");

  Answer joined = Call(*server_, "POST", "/_matrix/client/v3/join/" + Encode(room), token(), "{}");
  ASSERT_EQ(joined.status, 200) << joined.raw;
  EXPECT_EQ(joined.body["room_id"], room);
  Answer after = Sync("?since=" + inc.body["next_batch"].get<std::string>() + "&timeout=0");
  const Json& jr = after.body["rooms"]["join"][room];
  ASSERT_TRUE(jr.is_object()) << after.raw;
  EXPECT_FALSE(after.body["rooms"].contains("invite"));
  // Newly joined: full state at the start of the timeline plus the timeline.
  Json all = jr["state"]["events"];
  for (const Json& e : jr["timeline"]["events"]) all.push_back(e);
  EXPECT_NE(FindState(all, "m.room.encryption", ""), nullptr);
  const Json* mine = FindState(all, "m.room.member", bot());
  ASSERT_NE(mine, nullptr);
  EXPECT_EQ((*mine)["content"]["membership"], "join");
  EXPECT_EQ(server_->JoinedMembers(room), (std::vector<std::string>{kAlice, bot()}));
  EXPECT_EQ(server_->RequestCount("join"), 2);
}

TEST_F(FakeMatrixTest, KickAndLeaveShowInRoomsLeave) {
  std::string room = server_->CreateRoom(kAlice, {bot()});
  std::string since = NextBatch();
  server_->SendText(room, kAlice, "bye bot");
  server_->Kick(room, kAlice, bot());
  Answer inc = Sync("?since=" + since + "&timeout=0");
  const Json& left = inc.body["rooms"]["leave"][room];
  ASSERT_TRUE(left.is_object()) << inc.raw;
  const Json* member = FindState(left["timeline"]["events"], "m.room.member", bot());
  ASSERT_NE(member, nullptr);
  EXPECT_EQ((*member)["content"]["membership"], "leave");
  EXPECT_EQ((*member)["sender"], kAlice);
  EXPECT_FALSE(inc.body["rooms"].contains("join"));
  Answer send = SendMsg(room, "t1", Json{{"msgtype", "m.text"}, {"body", "hi"}});
  EXPECT_EQ(send.status, 403);
  EXPECT_EQ(send.body["errcode"], "M_FORBIDDEN");
  // Later events in the room are not shown.
  std::string since2 = inc.body["next_batch"];
  server_->SendText(room, kAlice, "after");
  EXPECT_FALSE(Sync("?since=" + since2 + "&timeout=0").body.contains("rooms"));

  // Own leave through the API.
  std::string room2 = server_->CreateRoom(kBob, {bot()});
  std::string since3 = NextBatch();
  Answer l =
      Call(*server_, "POST", "/_matrix/client/v3/rooms/" + Encode(room2) + "/leave", token(), "{}");
  ASSERT_EQ(l.status, 200);
  Answer inc2 = Sync("?since=" + since3 + "&timeout=0");
  EXPECT_TRUE(inc2.body["rooms"]["leave"].contains(room2)) << inc2.raw;
  EXPECT_TRUE(server_->JoinedMembers(room2) == std::vector<std::string>{kBob});

  // Joined and banned within one gap: still reported in rooms.leave.
  std::string room3 = server_->CreateRoom(kAlice, {});
  std::string since4 = NextBatch();
  server_->Join(room3, bot());
  server_->SendText(room3, kAlice, "welcome");
  server_->Ban(room3, kAlice, bot());
  Answer inc3 = Sync("?since=" + since4 + "&timeout=0");
  const Json& banned = inc3.body["rooms"]["leave"][room3];
  ASSERT_TRUE(banned.is_object()) << inc3.raw;
  EXPECT_EQ(Bodies(banned["timeline"]["events"]), (std::vector<std::string>{"welcome"}));
  const Json* ban = FindState(banned["timeline"]["events"], "m.room.member", bot());
  ASSERT_NE(ban, nullptr);
  EXPECT_EQ((*ban)["content"]["membership"], "ban");
  Answer rejoin =
      Call(*server_, "POST", "/_matrix/client/v3/rooms/" + Encode(room3) + "/join", token(), "{}");
  EXPECT_EQ(rejoin.status, 403);
}

TEST_F(FakeMatrixTest, TxnIdsAreIdempotentPerDevice) {
  std::string room = server_->CreateRoom(kAlice, {bot()});
  std::string since = NextBatch();
  Json content = {{"msgtype", "m.notice"}, {"body", "answer"}};
  Answer a = SendMsg(room, "txn-1", content);
  ASSERT_EQ(a.status, 200) << a.raw;
  Answer b = SendMsg(room, "txn-1", content);
  ASSERT_EQ(b.status, 200);
  EXPECT_EQ(a.body["event_id"], b.body["event_id"]);
  EXPECT_EQ(MessagesBy(*server_, bot()).size(), 1u);

  Answer other_login = Login("parley", "bot-password", "OTHERDEVICE");
  std::string other = other_login.body["access_token"];
  Answer c = SendMsg(room, "txn-1", content, other);
  ASSERT_EQ(c.status, 200);
  EXPECT_NE(c.body["event_id"], a.body["event_id"]);
  auto sent = MessagesBy(*server_, bot());
  ASSERT_EQ(sent.size(), 2u);
  EXPECT_EQ(sent[0].txn_id, "txn-1");
  EXPECT_EQ(sent[0].device_id, "BOTDEVICE");
  EXPECT_EQ(sent[1].device_id, "OTHERDEVICE");

  // The remote echo carries transaction_id only for the sending device.
  auto echo = [&](const std::string& tok) {
    Answer s = Sync("?since=" + since + "&timeout=0", tok);
    std::map<std::string, std::string> txn_by_event;
    for (const Json& e : s.body["rooms"]["join"][room]["timeline"]["events"]) {
      txn_by_event[e["event_id"]] = e["unsigned"].value("transaction_id", "");
    }
    return txn_by_event;
  };
  auto mine = echo(token());
  EXPECT_EQ(mine[a.body["event_id"]], "txn-1");
  EXPECT_EQ(mine[c.body["event_id"]], "");
  auto theirs = echo(other);
  EXPECT_EQ(theirs[a.body["event_id"]], "");
  EXPECT_EQ(theirs[c.body["event_id"]], "txn-1");
}

TEST_F(FakeMatrixTest, LostResponseThenRetryStoresOneEvent) {
  std::string room = server_->CreateRoom(kAlice, {bot()});
  server_->LoseResponseNext("send");
  Json content = {{"msgtype", "m.text"}, {"body", "once"}};
  Answer lost = SendMsg(room, "t-lost", content);
  EXPECT_FALSE(lost.transport_ok) << lost.status << " " << lost.raw;
  ASSERT_EQ(MessagesBy(*server_, bot()).size(), 1u);  // it was stored
  Answer retry = SendMsg(room, "t-lost", content);
  ASSERT_EQ(retry.status, 200) << retry.raw;
  auto sent = MessagesBy(*server_, bot());
  ASSERT_EQ(sent.size(), 1u);
  EXPECT_EQ(retry.body["event_id"], sent[0].event_id);
  EXPECT_EQ(server_->RequestCount("send"), 2);
}

TEST_F(FakeMatrixTest, RateLimitAndInjected429) {
  std::string room = server_->CreateRoom(kAlice, {bot()});
  server_->SetRateLimit(true, 1.0, 2);
  Json content = {{"msgtype", "m.text"}, {"body", "x"}};
  EXPECT_EQ(SendMsg(room, "r1", content).status, 200);
  EXPECT_EQ(SendMsg(room, "r2", content).status, 200);
  Answer limited = SendMsg(room, "r3", content);
  ASSERT_EQ(limited.status, 429);
  EXPECT_EQ(limited.body["errcode"], "M_LIMIT_EXCEEDED");
  EXPECT_GT(limited.body["retry_after_ms"].get<int>(), 0);
  EXPECT_LE(limited.body["retry_after_ms"].get<int>(), 1000);
  EXPECT_EQ(net::FindHeader(limited.headers, "Retry-After"), "1");
  // The failure is not cached: the same txn runs again (and is still limited right now).
  EXPECT_EQ(SendMsg(room, "r3", content).status, 429);
  // A retransmission of a stored txn is answered from the cache, not rate limited.
  EXPECT_EQ(SendMsg(room, "r1", content).status, 200);
  EXPECT_EQ(MessagesBy(*server_, bot()).size(), 2u);
  server_->SetRateLimit(false);
  EXPECT_EQ(SendMsg(room, "r3", content).status, 200);

  server_->FailNext("send", 429, 1, 1500);
  Answer injected = SendMsg(room, "r4", content);
  EXPECT_EQ(injected.status, 429);
  EXPECT_EQ(injected.body["retry_after_ms"], 1500);
  EXPECT_EQ(net::FindHeader(injected.headers, "Retry-After"), "2");
  server_->FailNext("send", 429, 1, 300, /*retry_after_header=*/false);
  Answer no_header = SendMsg(room, "r4", content);
  EXPECT_EQ(no_header.status, 429);
  EXPECT_EQ(net::FindHeader(no_header.headers, "Retry-After"), "");
  Answer ok = SendMsg(room, "r4", content);
  EXPECT_EQ(ok.status, 200);
  EXPECT_EQ(MessagesBy(*server_, bot()).size(), 4u);

  server_->FailNext("sync", 500, 2);
  EXPECT_EQ(Sync("").status, 500);
  EXPECT_EQ(Sync("").body["errcode"], "M_UNKNOWN");
  EXPECT_EQ(Sync("").status, 200);
}

TEST_F(FakeMatrixTest, HtmlMalformedAndDroppedFaults) {
  server_->HtmlErrorNext("sync", 502);
  Answer html = Sync("");
  EXPECT_EQ(html.status, 502);
  EXPECT_NE(html.raw.find("<html>"), std::string::npos);
  EXPECT_EQ(net::FindHeader(html.headers, "Content-Type").find("text/html"), 0u);
  EXPECT_TRUE(html.body.is_discarded());

  server_->MalformedNext("whoami");
  Answer bad = Get("/_matrix/client/v3/account/whoami", token());
  EXPECT_EQ(bad.status, 200);
  EXPECT_TRUE(bad.body.is_discarded());

  server_->DropNext("whoami");
  Answer dropped = Get("/_matrix/client/v3/account/whoami", token());
  EXPECT_FALSE(dropped.transport_ok) << dropped.status << " " << dropped.raw;
  Answer fine = Get("/_matrix/client/v3/account/whoami", token());
  EXPECT_EQ(fine.status, 200);
  EXPECT_EQ(server_->RequestCount("whoami"), 3);
}

TEST_F(FakeMatrixTest, SendValidation) {
  std::string room = server_->CreateRoom(kAlice, {bot()});
  Answer big = SendMsg(room, "big", Json{{"msgtype", "m.text"}, {"body", std::string(70000, 'a')}});
  EXPECT_EQ(big.status, 413);
  EXPECT_EQ(big.body["errcode"], "M_TOO_LARGE");
  Answer array =
      Call(*server_, "PUT", "/_matrix/client/v3/rooms/" + Encode(room) + "/send/m.room.message/arr",
           token(), "[1,2]");
  EXPECT_EQ(array.status, 400);
  EXPECT_EQ(array.body["errcode"], "M_BAD_JSON");

  std::string root = server_->SendText(room, kAlice, "root");
  std::string in_thread = server_->SendText(room, kAlice, "reply", std::nullopt, root);
  Json threaded = {{"msgtype", "m.text"},
                   {"body", "ok"},
                   {"m.relates_to", {{"rel_type", "m.thread"}, {"event_id", root}}}};
  EXPECT_EQ(SendMsg(room, "th1", threaded).status, 200);
  threaded["m.relates_to"]["event_id"] = in_thread;
  Answer nested = SendMsg(room, "th2", threaded);
  EXPECT_EQ(nested.status, 400);
  EXPECT_TRUE(nested.body.contains("errcode"));
  EXPECT_EQ(MessagesBy(*server_, bot()).size(), 1u);
}

TEST_F(FakeMatrixTest, TypingProfileMembersStateAndEvent) {
  std::string room = server_->CreateRoom(kAlice, {bot()}, false, "Room");
  server_->SetDisplayName(kAlice, "Alice A.");
  // The profile change reached the room as a new member event.
  EXPECT_EQ(server_->Events(room).back().type, "m.room.member");
  EXPECT_EQ(server_->Events(room).back().content["displayname"], "Alice A.");
  Json typing = {{"typing", true}, {"timeout", 30000}};
  Answer t =
      Call(*server_, "PUT", "/_matrix/client/v3/rooms/" + Encode(room) + "/typing/" + Encode(bot()),
           token(), typing.dump());
  EXPECT_EQ(t.status, 200);
  Answer other = Call(*server_, "PUT",
                      "/_matrix/client/v3/rooms/" + Encode(room) + "/typing/" + Encode(kAlice),
                      token(), typing.dump());
  EXPECT_EQ(other.status, 403);
  ASSERT_EQ(server_->TypingCalls().size(), 1u);
  EXPECT_EQ(server_->TypingCalls()[0], typing);
  EXPECT_EQ(server_->TypingRoomIds()[0], room);

  Answer dn = Get("/_matrix/client/v3/profile/" + Encode(kAlice) + "/displayname", token());
  EXPECT_EQ(dn.body["displayname"], "Alice A.");
  Answer prof = Get("/_matrix/client/v3/profile/" + Encode(bot()), token());
  EXPECT_EQ(prof.body["displayname"], "Parley");
  EXPECT_EQ(Get("/_matrix/client/v3/profile/" + Encode("@nobody:test.local"), token()).status, 404);

  Answer members = Get("/_matrix/client/v3/rooms/" + Encode(room) + "/joined_members", token());
  ASSERT_EQ(members.status, 200);
  EXPECT_TRUE(members.body["joined"].contains(kAlice));
  EXPECT_TRUE(members.body["joined"].contains(bot()));

  Answer name = Get("/_matrix/client/v3/rooms/" + Encode(room) + "/state/m.room.name/", token());
  EXPECT_EQ(name.body["name"], "Room");
  Answer name2 = Get("/_matrix/client/v3/rooms/" + Encode(room) + "/state/m.room.name", token());
  EXPECT_EQ(name2.body["name"], "Room");
  Answer enc =
      Get("/_matrix/client/v3/rooms/" + Encode(room) + "/state/m.room.encryption/", token());
  EXPECT_EQ(enc.status, 404);
  EXPECT_EQ(enc.body["errcode"], "M_NOT_FOUND");
  server_->EnableEncryption(room, kAlice);
  EXPECT_EQ(Get("/_matrix/client/v3/rooms/" + Encode(room) + "/state/m.room.encryption/", token())
                .body["algorithm"],
            "m.megolm.v1.aes-sha2");

  std::string id = server_->SendText(room, kAlice, "hello", std::vector<std::string>{bot()});
  Answer ev = Get("/_matrix/client/v3/rooms/" + Encode(room) + "/event/" + Encode(id), token());
  ASSERT_EQ(ev.status, 200);
  EXPECT_EQ(ev.body["content"]["m.mentions"]["user_ids"][0], bot());
  EXPECT_EQ(ev.body["room_id"], room);
  EXPECT_EQ(Get("/_matrix/client/v3/rooms/" + Encode(room) + "/event/%24nope", token()).status,
            404);
}

TEST_F(FakeMatrixTest, InvalidateTokenAnswersHeldSync) {
  server_->CreateRoom(kAlice, {bot()});
  std::string since = NextBatch();
  auto pending = std::async(std::launch::async,
                            [&] { return Sync("?since=" + since + "&timeout=5000", "", 10000); });
  ASSERT_TRUE(server_->WaitFor([&] { return server_->PendingSyncs() == 1; }, 3000));
  server_->InvalidateToken(/*soft_logout=*/false);
  Answer a = pending.get();
  EXPECT_EQ(a.status, 401);
  EXPECT_EQ(a.body["errcode"], "M_UNKNOWN_TOKEN");
  EXPECT_EQ(a.body["soft_logout"], false);
}

}  // namespace
}  // namespace parley::testing
