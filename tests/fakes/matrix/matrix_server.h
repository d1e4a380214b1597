#pragma once
// A Matrix homeserver test server ("fake"), written from the Matrix client-server API (v1.19; see
// shared/protocols/matrix.md) and, where the spec leaves room, Synapse's behaviour. Plain HTTP at
// base_url() (http://127.0.0.1:PORT), one io thread owned by the server.
//
// Endpoints (all under /_matrix/client; "endpoint name" in brackets, used by RequestCount and the
// fault methods):
//   GET  /versions                                     [versions]
//   GET  /v3/login, POST /v3/login (m.login.password)  [login]
//   GET  /v3/account/whoami                            [whoami]
//   POST /v3/user/{userId}/filter, GET .../filter/{id} [filter]
//   GET  /v3/profile/{userId}[/displayname]            [profile]
//   GET  /v3/sync (filter, since, timeout, full_state) [sync]   long-polls up to `timeout` ms
//   GET  /v3/rooms/{roomId}/messages                   [messages]
//   POST /v3/join/{roomIdOrAlias}, /v3/rooms/{roomId}/join  [join]
//   POST /v3/rooms/{roomId}/leave                      [leave]
//   GET  /v3/rooms/{roomId}/joined_members             [joined_members]
//   GET  /v3/rooms/{roomId}/state/{type}/{stateKey}    [state]
//   GET  /v3/rooms/{roomId}/event/{eventId}            [event]
//   PUT  /v3/rooms/{roomId}/send/{type}/{txnId}        [send]
//   PUT  /v3/rooms/{roomId}/typing/{userId}            [typing]
// (v1 and r0 prefixes are accepted as aliases of v3.) Anything else: 404 M_UNRECOGNIZED (405
// M_UNRECOGNIZED for a known path with the wrong method).
//
// Auth: "Authorization: Bearer <token>" or the deprecated ?access_token=. Missing: 401
// M_MISSING_TOKEN; unknown or invalidated: 401 M_UNKNOWN_TOKEN with soft_logout. Errors are JSON
// {"errcode","error"} with the spec's status codes.
//
// Sync tokens (next_batch, prev_batch, /messages start/end) are opaque strings encoding a
// position in the server's single global event stream; they are interchangeable between /sync
// and /messages. Only the bot and users given a password (SetPassword) have access tokens; the
// other users act through the world-building methods below.
//
// /sync: `filter` is a stored filter id (unknown: 400 M_INVALID_PARAM "No such filter") or inline
// JSON (unparsable: 400 M_NOT_JSON). Honoured: room.timeline.limit (else
// default_timeline_limit, capped at max_timeline_limit), room.timeline / room.state
// types, not_types (with '*' globs), senders, not_senders, room.rooms / not_rooms,
// room.include_leave; the rest is accepted and ignored. Without `since`, or with full_state,
// or timeout 0, it answers at once; otherwise it is held until something for the user happens or
// `timeout` ms pass (then {"next_batch"} only). Empty sections are omitted, as Synapse does.
//   rooms.join:   timeline {events, limited, prev_batch}; state = state at the START of the
//                 timeline (initial sync / newly joined / full_state: all of it; incremental and
//                 limited: what changed in the gap; otherwise empty); summary
//                 (m.joined_member_count, m.invited_member_count, m.heroes for unnamed rooms);
//                 ephemeral, account_data (empty), unread_notifications (zeros). A newly joined
//                 room gets the room's last `limit` events, like Synapse.
//   rooms.invite: invite_state.events, stripped (sender, type, state_key, content): m.room.create,
//                 m.room.name, m.room.join_rules, m.room.canonical_alias, m.room.avatar,
//                 m.room.topic, m.room.encryption (those present), the inviter's m.room.member,
//                 and last the invite itself (is_direct when direct).
//   rooms.leave:  rooms left, kicked or banned from since `since` (initial sync: only with
//                 include_leave), timeline up to and including the membership event.
// Timeline events carry event_id, sender, type, content, origin_server_ts, state_key (state),
// unsigned.age and unsigned.transaction_id (only for the device that PUT it).
// /messages: dir required; from optional (b: the end, f: the start); to bounds the walk; limit
// default 10; `end` is omitted when no further events exist in that direction (within `to`);
// filter (RoomEventFilter JSON) honours types/senders/not_* and lazy_load_members (then `state`
// holds the chunk senders' member events). prev_batch + dir=b + to=<old since> yields exactly the
// events a limited timeline skipped (with the same filter).
// PUT /send: idempotent per (user, device, request path): a repeat returns the first event_id and
// stores nothing; failed requests (4xx/429) are not remembered. 403 M_FORBIDDEN unless joined,
// 400 M_NOT_JSON / M_BAD_JSON for a body that is not a JSON object, 413 M_TOO_LARGE when the
// event (plus ~512 bytes of federation fields, as Synapse counts them) exceeds 65536 bytes, 400
// M_UNKNOWN for an m.thread relation to an event that itself has a relation, 429
// M_LIMIT_EXCEEDED from the rc_message bucket (SetRateLimit).
// Reading endpoints (/messages, joined_members, state, event, typing) need the user to be joined
// (403 M_FORBIDDEN otherwise; /event answers 404).
//
// Thread-safety: every public method is thread-safe. World-building methods wake long-polling
// /sync requests of the users they affect. WaitFor's predicate runs on the calling thread without
// the server's lock held, so it may call the inspection methods.

#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace parley::testing {

struct MatrixServerOptions {
  std::string server_name = "test.local";
  std::string bot_user_id = "@parley:test.local";
  std::string bot_password = "bot-password";       // m.login.password for the bot
  std::string bot_access_token = "syt_bot_token";  // valid from the start (device "BOTDEVICE")
  std::string bot_display_name = "Parley";
  int default_timeline_limit = 10;  // Synapse's default when the filter sets none
  // A filter's room.timeline.limit is capped here (Synapse: filter_timeline_limit, 100).
  int max_timeline_limit = 100;
  // rc_message emulation (per sender, like Synapse): off by default. A token bucket of
  // burst_count tokens refilled at messages_per_second; PUT /send over budget is 429
  // M_LIMIT_EXCEEDED with retry_after_ms and Retry-After.
  bool rate_limit_messages = false;
  double messages_per_second = 0.2;
  int burst_count = 10;
};

// An event the server stored (any sender).
struct MatrixEvent {
  std::string room_id, event_id, sender, type;
  std::optional<std::string> state_key;  // set for state events
  nlohmann::json content;
  // For PUT /send: the txnId (only the sender's device sees it as unsigned.transaction_id).
  // Empty for events made by the world-building methods.
  std::string txn_id;
  std::string device_id;         // sender's device for PUT /send
  int64_t origin_server_ts = 0;  // ms since the Unix epoch
  // When stored: std::chrono::steady_clock, ns since its epoch (benchmarks subtract their own
  // send times).
  int64_t received_ns = 0;
};

class MatrixServer {
 public:
  // Binds 127.0.0.1 on a free port and starts the io thread. Never null (aborts if it cannot
  // bind, which is a broken test environment).
  static std::unique_ptr<MatrixServer> Start(MatrixServerOptions options = {});
  // Answers pending long-polls, stops the server and joins the io thread.
  ~MatrixServer();
  MatrixServer(const MatrixServer&) = delete;
  MatrixServer& operator=(const MatrixServer&) = delete;

  std::string base_url() const;  // "http://127.0.0.1:PORT" (homeserver URL, no trailing slash)
  uint16_t port() const;
  const MatrixServerOptions& options() const;

  // ---- World building ----
  // Acting as other users; users are created on first use (display name = localpart). Room ids
  // are "!N:server_name". These never fail: misuse (unknown room) is a test bug and aborts.

  // Creates a room with m.room.create, the creator's join, m.room.power_levels,
  // m.room.join_rules (invite), m.room.name when `name` is given, m.room.encryption when
  // `encrypted`; then every user in `members` joins (no invite needed). Returns the room id.
  std::string CreateRoom(const std::string& creator, const std::vector<std::string>& members,
                         bool encrypted = false, const std::string& name = "");
  // Changes the profile display name (GET /profile) and, like Synapse, emits an updated
  // m.room.member join event in every room the user is joined to.
  void SetDisplayName(const std::string& user, const std::string& name);
  // Lets `user` log in with m.login.password (the bot's password comes from the options).
  void SetPassword(const std::string& user, const std::string& password);
  // Invites the bot (or another user) with stripped invite_state (m.room.create, m.room.name,
  // m.room.join_rules, m.room.encryption when encrypted, the m.room.member invite with
  // is_direct when direct).
  void Invite(const std::string& room_id, const std::string& inviter, const std::string& invitee,
              bool is_direct = false);
  void Join(const std::string& room_id, const std::string& user);   // no invite needed
  void Leave(const std::string& room_id, const std::string& user);  // own leave
  void Kick(const std::string& room_id, const std::string& by, const std::string& user);
  // Bans `user` (membership ban); like Kick, the room moves to the user's rooms.leave.
  void Ban(const std::string& room_id, const std::string& by, const std::string& user);
  void EnableEncryption(const std::string& room_id,
                        const std::string& by);  // m.room.encryption state
  // A user sends an event; returns its event id. SendText builds m.room.message/m.text with
  // body, and m.mentions when `mentions` is given (user ids), a thread relation when thread_root
  // is given, formatted_body when given.
  std::string SendEvent(const std::string& room_id, const std::string& sender,
                        const std::string& type, nlohmann::json content);
  std::string SendText(const std::string& room_id, const std::string& sender,
                       const std::string& body,
                       std::optional<std::vector<std::string>> mentions = std::nullopt,
                       const std::string& thread_root = "");
  // Like SendText with format org.matrix.custom.html and formatted_body.
  std::string SendHtml(const std::string& room_id, const std::string& sender,
                       const std::string& body, const std::string& formatted_body,
                       std::optional<std::vector<std::string>> mentions = std::nullopt,
                       const std::string& thread_root = "");
  // A state event (any type, e.g. m.room.name or m.room.topic) with state_key; returns its id.
  std::string SendState(const std::string& room_id, const std::string& sender,
                        const std::string& type, const std::string& state_key,
                        nlohmann::json content);

  // ---- Inspection ----
  std::vector<MatrixEvent> Events(
      const std::string& room_id) const;                           // the room's timeline, in order
  std::vector<MatrixEvent> SentBy(const std::string& user) const;  // every room, in order
  std::vector<std::string> JoinedMembers(const std::string& room_id) const;
  // Requests received per endpoint name (see the list above), faulted ones included.
  int RequestCount(const std::string& endpoint)
      const;  // e.g. "login", "whoami", "sync", "filter", "send", "join", "typing", "messages"
  std::vector<nlohmann::json> TypingCalls() const;  // bodies of PUT /typing, in order
  std::vector<std::string> TypingRoomIds() const;   // the room of each TypingCalls() entry
  // Every filter uploaded with POST /filter and every inline filter passed to /sync, in order.
  std::vector<nlohmann::json> UploadedFilters() const;
  // The query parameters of every /sync request, in order (e.g. to check `since`).
  std::vector<std::string> SyncQueries() const;
  // Long-polling /sync requests being held now.
  int PendingSyncs() const;
  // Polls pred (called without the server lock) every few ms until true or timeout.
  bool WaitFor(const std::function<bool()>& pred, int timeout_ms = 10'000) const;

  // ---- Faults ----
  // Endpoint names as in RequestCount. Each applies to the next `count` matching requests (after
  // they are counted, before authentication), in the order the faults were registered.
  // status 429: body {"errcode":"M_LIMIT_EXCEEDED","error":...,"retry_after_ms":retry_after_ms}
  // plus a Retry-After header (seconds, rounded up) unless retry_after_header is false.
  // Other statuses: {"errcode":"M_UNKNOWN","error":...}. Nothing is changed.
  void FailNext(const std::string& endpoint, int status, int count = 1, int retry_after_ms = 0,
                bool retry_after_header = true);
  void HtmlErrorNext(const std::string& endpoint, int status = 502,
                     int count = 1);                               // proxy HTML page
  void MalformedNext(const std::string& endpoint, int count = 1);  // 200 with broken JSON
  // Closes the connection without a complete response (HttpServer always writes a response
  // head first: the client sees a 200 head with a chunked body cut off, i.e. a transport error).
  // Nothing is changed.
  void DropNext(const std::string& endpoint, int count = 1);
  // Performs the request (e.g. a send: the event IS stored) and then drops the connection
  // without answering: the "lost response" case.
  void LoseResponseNext(const std::string& endpoint, int count = 1);
  // The current bot token becomes M_UNKNOWN_TOKEN (soft_logout as given): every access token of
  // the bot issued so far (the initial one and those from POST /login). Pending /syncs with it are
  // answered with that error. Logging in again (POST /login) issues a new valid token.
  void InvalidateToken(bool soft_logout);
  void ForgetFilters();  // stored filter ids unknown -> 400 M_INVALID_PARAM
  void SetRateLimit(bool on, double per_second = 0.2, int burst = 10);

 private:
  MatrixServer();
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace parley::testing
