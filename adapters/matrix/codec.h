#pragma once
// The Matrix codec: pure translation between client-server API JSON and plain structs (sync
// responses, /messages pages, the filter, reply and edit contents) and the decision whether an
// event is addressed to the bot. No I/O.
// Thread-safety: reentrant (pure functions of their arguments).

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "core/message.h"
#include "core/status.h"

namespace parley::matrix {

inline constexpr char kPlatform[] = "matrix";
// The largest event the spec allows is 65 536 bytes; replies are split to stay well below (an
// edit carries the content twice: m.new_content and the fallback).
inline constexpr size_t kMaxContentBytes = 28 * 1024;

// A room event (client format, as in /sync timelines, state, /messages chunks, and stripped
// invite state, which has only sender/type/state_key/content).
struct RoomEvent {
  std::string event_id;
  std::string sender;
  std::string type;
  std::optional<std::string> state_key;
  nlohmann::json content = nlohmann::json::object();
  nlohmann::json unsigned_data = nlohmann::json::object();
  int64_t origin_server_ts = 0;
  std::string redacts;
};

struct JoinedRoom {
  std::string room_id;
  std::vector<RoomEvent> state;     // state at the start of the timeline
  std::vector<RoomEvent> timeline;  // in order
  bool limited = false;
  std::string prev_batch;
  int64_t joined_member_count = -1;  // summary.m.joined_member_count, when given
};

struct InvitedRoom {
  std::string room_id;
  std::vector<RoomEvent> invite_state;
};

struct SyncResponse {
  std::string next_batch;
  std::vector<JoinedRoom> join;
  std::vector<InvitedRoom> invite;
  std::vector<std::string> leave;      // rooms the bot left, was kicked or banned from
  std::set<std::string> direct_rooms;  // from m.direct account data (when in this batch)
  bool has_direct = false;             // m.direct was in this batch
};

// InvalidArgument when j is not a sync response (no next_batch). Malformed events are skipped.
Result<SyncResponse> ParseSync(const nlohmann::json& j);

struct MessagesPage {
  std::vector<RoomEvent> chunk;  // in the order of the request's dir
  std::string end;               // empty: nothing more
};
Result<MessagesPage> ParseMessages(const nlohmann::json& j);

RoomEvent ParseEvent(const nlohmann::json& j);

// The sync filter: room.timeline.limit = timeline_limit, lazy-loaded members, presence off,
// no account data but m.direct, no receipts in room ephemeral data.
nlohmann::json BuildFilter(int timeline_limit);

// Who the bot is.
struct BotIdentity {
  std::string user_id;       // "@parley:example.org"
  std::string display_name;  // may be empty
  std::string Localpart() const;
  std::string ServerName() const;
};

// The server name of a user id ("@a:b.org" -> "b.org"); empty when malformed.
std::string ServerOf(const std::string& user_id);

struct ClassifyOptions {
  bool mention_required = true;
  bool thread_followups = true;
  bool threads = true;  // replies go in a thread (the InboundMessage's thread is the reply's)
};

struct RoomContext {
  bool direct = false;         // a DM (is_direct or two members)
  bool bot_in_thread = false;  // the bot answered in the event's thread (when it is in one)
};

enum class IgnoreReason {
  kNone,
  kOwnEvent,      // sent by the bot itself
  kNotMessage,    // not m.room.message, or a msgtype the bot does not read (images, files)
  kNotice,        // m.notice: never answered automatically (spec)
  kEdit,          // m.replace
  kRedacted,      // redacted, or a redaction
  kEncrypted,     // m.room.encrypted: cannot be read
  kEmpty,         // nothing left after reply fallbacks and the mention were removed
  kNotAddressed,  // a room message that does not mention the bot (and is no follow-up)
};
const char* IgnoreReasonName(IgnoreReason reason);

struct EventDecision {
  bool handle = false;
  IgnoreReason reason = IgnoreReason::kNone;
  InboundMessage message;   // when handle
  std::string thread_root;  // the event's thread root (m.thread relation); empty when none
};

// The InboundMessage: platform "matrix", workspace = the bot's server name, channel = room id,
// thread = the event's thread root, or (threads on, not a DM) the event itself, which the reply
// roots its thread on; empty otherwise. event_id = the Matrix event id. text: body with reply
// fallbacks and a leading mention of the bot removed.
EventDecision Classify(const RoomEvent& event, const std::string& room_id, const BotIdentity& bot,
                       const RoomContext& room, const ClassifyOptions& options);

// The thread root of an event (m.relates_to rel_type m.thread), or empty.
std::string ThreadRootOf(const RoomEvent& event);
// Whether the message addresses the bot: m.mentions.user_ids when m.mentions is present (then
// authoritative); else the user id, localpart or display name in body, or a matrix.to pill of the
// bot in formatted_body.
bool MentionsBot(const nlohmann::json& content, const BotIdentity& bot);
// Removes a rich-reply fallback: leading "> " lines (and the blank line after them) of body.
std::string StripReplyFallback(std::string_view body);
// Removes a leading <mx-reply>…</mx-reply> from formatted_body.
std::string StripMxReply(std::string_view html);

// Replies.
struct ReplyOptions {
  std::string msgtype = "m.notice";
  bool threads = true;
  size_t max_bytes = kMaxContentBytes;  // per event content (split beyond)
};

// The m.room.message contents of a reply, one per part (several when it is too long for one
// event): msgtype, body (the Markdown, citations as "title: url" lines), format
// org.matrix.custom.html + formatted_body (HTML, citations as links), "m.mentions": {} and the
// relation: in a thread (message.conversation.thread non-empty) rel_type m.thread to the thread
// root with m.in_reply_to = message.in_reply_to (or the root) and is_falling_back true; without a
// thread but with in_reply_to, a rich reply (m.in_reply_to only). Every part carries the relation.
// message.actions (Matrix has no buttons) are listed after the text as values to send back.
// With message.keep_mentions (parley's own text), the first part's m.mentions lists the Matrix
// user ids in the text and "room": true for "@room"; otherwise nobody is notified.
std::vector<nlohmann::json> BuildReplyContents(const OutboundMessage& message,
                                               const ReplyOptions& options);

// An edit (m.replace) of original_event_id whose m.new_content is `content` without its
// m.relates_to; body "* " + body; "m.mentions": {} at the top level (no new notifications).
nlohmann::json BuildEditContent(const std::string& original_event_id,
                                const nlohmann::json& content);

// Splits Markdown into pieces of at most limit bytes, preferring paragraph, then line, then
// whitespace boundaries, never inside a UTF-8 sequence. Empty input: no pieces.
std::vector<std::string> SplitText(std::string_view text, size_t limit);

}  // namespace parley::matrix
