#pragma once
// The Slack codec: pure translation between Slack's Socket Mode / Events API / Web API JSON and
// parley's platform-neutral values. No sockets, no clock, no logging: every function here is a
// function of its arguments, so the adapter can be tested on recorded payloads.
//
// Error contract: untrusted input (frames, payloads) never throws and never aborts. Malformed
// input comes back as Status::InvalidArgument whose message names fields only and never quotes
// user text, so it is safe to log at any level.
// Thread-safety: all functions are reentrant; the types are plain values.

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/message.h"
#include "core/status.h"

namespace parley::slack {

inline constexpr char kPlatform[] = "slack";
inline constexpr char kFeedbackHelpfulAction[] = "parley_feedback_helpful";
inline constexpr char kFeedbackUnhelpfulAction[] = "parley_feedback_unhelpful";
// action_id prefix of the buttons rendered from OutboundMessage::actions ("parley_action:claim");
// the button's value is the MessageAction's value.
inline constexpr char kMessageActionPrefix[] = "parley_action:";
// Message metadata event types. A delivered reply's parts carry kReplyEventType (a resend after a
// crash looks for it); the placeholder of an answer still being written (streaming) carries
// kPartialEventType, so it is never mistaken for a delivered part. Both have event_payload
// {message_id} (and "part" for replies).
inline constexpr char kReplyEventType[] = "parley_reply";
inline constexpr char kPartialEventType[] = "parley_partial";
// Appended to the text of an answer still being written.
inline constexpr char kPartialMarker[] = " \xE2\x80\xA6";  // " …"

// ---------------------------------------------------------------------------------------------
// Socket Mode frames

enum class FrameKind {
  kHello,          // connection is ready
  kDisconnect,     // server asks us to reconnect (see DisconnectReason)
  kEventsApi,      // envelope, type "events_api": payload is an event_callback wrapper
  kSlashCommands,  // envelope, type "slash_commands"
  kInteractive,    // envelope, type "interactive" (block_actions, view_submission, ...)
  kUnknown,        // a well-formed frame of a type we do not know; not an error
};

enum class DisconnectReason {
  kWarning,            // a refresh follows in about 10 s
  kRefreshRequested,   // open a new connection now
  kLinkDisabled,       // Socket Mode was turned off for the app: do not reconnect in a loop
  kTooManyWebsockets,  // over the 10-connection limit
  kOther,              // missing or unrecognised reason
};

const char* FrameKindName(FrameKind kind);
const char* DisconnectReasonName(DisconnectReason reason);

// One parsed Socket Mode frame. Only the fields of its kind are set; the others keep defaults.
struct Envelope {
  FrameKind kind = FrameKind::kUnknown;
  std::string type;  // the frame's "type" as sent (useful in logs for kUnknown)

  // kHello
  int64_t num_connections = 0;
  int64_t approximate_connection_time_s = 0;  // debug_info.approximate_connection_time; 0 if absent
  std::string app_id;                         // connection_info.app_id; may be empty

  // kDisconnect
  DisconnectReason disconnect_reason = DisconnectReason::kOther;
  std::string disconnect_reason_raw;  // as sent; empty if absent

  // Envelopes (kEventsApi, kSlashCommands, kInteractive). A kUnknown frame that carries a
  // string envelope_id keeps it too, so the adapter can still acknowledge it.
  std::string envelope_id;
  nlohmann::json payload;  // always an object for the three envelope kinds
  bool accepts_response_payload = false;
  int64_t retry_attempt = 0;  // 0 on first delivery
  std::string retry_reason;   // e.g. "timeout"; empty on first delivery

  bool is_envelope() const {
    return kind == FrameKind::kEventsApi || kind == FrameKind::kSlashCommands ||
           kind == FrameKind::kInteractive;
  }
};

// Parses text as json::parse(text, nullptr, /*allow_exceptions=*/false) would (discarded when it
// is not valid JSON), leaving out every member named `key` that `depth` objects and arrays enclose
// (1 = a member of the top-level object; payload.event.blocks of a frame is at 3, and a member of
// an object inside a top-level array at 2): no tree is built for parts nobody reads, such as the
// blocks repeated in every event and every reply's echo.
[[nodiscard]] nlohmann::json ParseJsonWithout(std::string_view text, int depth,
                                              std::string_view key);

// Parses one text frame. InvalidArgument for: invalid JSON (including invalid UTF-8 and nesting
// deeper than 256), a non-object frame, a missing or non-string "type", an envelope kind without
// a non-empty string envelope_id or without an object payload, and known fields of the wrong type.
[[nodiscard]] Result<Envelope> ParseEnvelope(std::string_view frame);

// The acknowledgement frame {"envelope_id":…[,"payload":…]}. payload (nullable, borrowed) is the
// immediate visible response for slash commands and interactions. Never throws: invalid UTF-8 is
// replaced with U+FFFD.
std::string AckFrame(const std::string& envelope_id, const nlohmann::json* payload = nullptr);

// Serialises j compactly; invalid UTF-8 in strings is replaced with U+FFFD instead of throwing
// (nlohmann's dump() throws on it). Use it for every body built here.
std::string DumpJson(const nlohmann::json& j);

// ---------------------------------------------------------------------------------------------
// Events API

enum class EventType { kAppMention, kMessage, kOther };

// The fields of an event_callback that decide whether and how the bot answers. Missing or
// wrongly typed fields are left empty; Classify() decides what that means.
struct SlackEvent {
  std::string team_id;   // payload.team_id (falls back to event.team)
  std::string event_id;  // payload.event_id ("Ev…"); the same on every retry
  EventType type = EventType::kOther;
  std::string type_raw;  // event.type as sent
  std::string channel;
  std::string channel_type;  // "im" | "channel" | "group" | "mpim"; absent on app_mention
  std::string user;
  std::string bot_id;
  std::string subtype;
  std::string text;       // raw Slack-formatted text
  std::string ts;         // the message's own ts
  std::string thread_ts;  // the thread root's ts; empty for a root message
  std::string parent_user_id;  // in a thread: who posted its root (Slack sends it on replies)
};

// Never fails: a payload that is not an event_callback gives type kOther.
SlackEvent ParseEventCallback(const nlohmann::json& payload);

// The message's identity: channel + ":" + ts. With message.channels subscribed, one channel
// mention arrives twice (app_mention and message, with different event_ids) but with the same
// channel and ts; Classify() uses this key as InboundMessage::event_id so the router's
// de-duplication by event id answers it once. Retries of one event keep channel and ts too.
std::string DedupeKey(const SlackEvent& event);

struct ClassifyOptions {
  // Answer messages from other bots (default false: prevents bot loops). The bot's own messages
  // are always ignored.
  bool allow_bots = false;
  // A channel message in a thread the bot is in counts as addressed without a mention (needs the
  // caller to know the bot is in the thread: see Classify's bot_in_thread). Default true.
  bool thread_followups = true;
  // In channels (and multi-person DMs), only mentions are answered. Default true. Direct
  // messages never need a mention.
  bool mention_required = true;
  // The bot's own bot id (B…, from auth.test), so its messages are recognised even when an event
  // carries only bot_id. Empty: recognise the bot by bot_user_id only.
  std::string own_bot_id;
};

enum class IgnoreReason {
  kNone,             // not ignored
  kUnsupportedType,  // not app_mention / message
  kIncomplete,       // no channel, ts or user
  kOwnMessage,       // the bot's own post coming back
  kOtherBot,         // another bot, and allow_bots is false
  kSubtype,          // message_changed, message_deleted, channel_join, ...
  kEmptyText,        // nothing left after normalisation (e.g. a bare mention)
  kNotAddressed,     // channel message without mention (and no thread follow-up)
};
const char* IgnoreReasonName(IgnoreReason reason);

struct EventDecision {
  bool handle = false;
  IgnoreReason reason = IgnoreReason::kNone;  // kNone when handle
  InboundMessage message;                     // set when handle
};

// Decides whether the bot answers event. bot_user_id is the bot's user id (U…, from auth.test).
// bot_in_thread: the caller's knowledge that the bot has taken part in event.thread_ts's thread
// (used only with options.thread_followups).
// The InboundMessage: platform "slack", workspace = team_id, channel, thread = thread_ts or, for a
// channel message that starts no thread yet, the message's own ts (the reply opens a thread); in a
// DM thread = thread_ts or "" (the reply stays in the DM's main line). event_id = DedupeKey().
// Allowed subtypes: none, "thread_broadcast", "file_share"; "bot_message" is a bot.
EventDecision Classify(const SlackEvent& event, const std::string& bot_user_id,
                       const ClassifyOptions& options, bool bot_in_thread = false);

// User id → display name, for NormalizeText.
using UserNames = std::unordered_map<std::string, std::string>;

// Slack text → plain text for the engine:
//   <@BOTID> / <@BOTID|x> removed, with a directly following ':' or ',' and the whitespace after;
//   <@U1> → @name (names) or @label (<@U1|label>) or @U1;   <#C1|general> → #general, <#C1> → #C1;
//   <https://x|label> → "label (https://x)", <https://x> → https://x, <mailto:a@b|a@b> → a@b;
//   <!here> <!channel> <!everyone> → @here @channel @everyone; <!subteam^S1|@team> → @team;
//   <!date^…|fallback> → fallback;  &amp; &lt; &gt; unescaped (once);  result trimmed.
// An unmatched '<' is kept literally.
std::string NormalizeText(std::string_view raw, const std::string& bot_user_id,
                          const UserNames* names = nullptr);

// Milliseconds since the epoch from a Slack ts ("1712345678.123456"); 0 if malformed.
int64_t TsToMillis(std::string_view ts);

// ---------------------------------------------------------------------------------------------
// Web API: chat.postMessage

// Builds the chat.postMessage bodies for m (Markdown) in channel (thread_ts may be empty).
// The text is converted to mrkdwn (with m.keep_mentions, Slack's mention markup such as
// <!subteam^S1> or <@U1> is kept as such instead of escaped) and split into bodies of at most 3500
// bytes at paragraph boundaries (never inside a code block). Each body: channel, text (the mrkdwn
// of that body — the notification/accessibility fallback; never empty), blocks (section blocks of ≤
// 3000 bytes), unfurl_links false, thread_ts when non-empty, and metadata {event_type
// "parley_reply", event_payload {message_id, part}} when m.id is set (lets a resend after a crash
// be recognised). The last body also gets a context block of citations (≤ 10 elements per block),
// an actions block (block_id parley_actions) of m.actions as buttons (action_id
// kMessageActionPrefix + id, value = the action's value, style primary/danger when given; at most
// 25, labels cut to 75 characters) and, when feedback_buttons, an actions block with two buttons
// whose value is m.id. ≤ 50 blocks per body.
std::vector<nlohmann::json> BuildPostMessage(const OutboundMessage& m, const std::string& channel,
                                             const std::string& thread_ts, bool feedback_buttons);
// The same bodies as JSON text, ready to send: what the reply path uses (no tree is built).
std::vector<std::string> BuildPostMessageText(const OutboundMessage& m, const std::string& channel,
                                              const std::string& thread_ts,
                                              bool feedback_buttons);

// The chat.postMessage body of an answer still being written (m.text is the text so far): the
// first part of its mrkdwn (as BuildPostMessage would split it, a little shorter) followed by
// kPartialMarker, in text and in section blocks; no citations, no buttons; unfurl_links false;
// thread_ts when non-empty; metadata {event_type "parley_partial", event_payload {message_id}}
// when m.id is set. Text is never empty.
nlohmann::json BuildPartialMessage(const OutboundMessage& m, const std::string& channel,
                                   const std::string& thread_ts);

// A chat.update body from a chat.postMessage body (BuildPostMessage / BuildPartialMessage): the
// same channel, text, blocks and metadata, with ts set and the arguments chat.update does not
// take (thread_ts, unfurl_links) removed.
nlohmann::json UpdateBody(nlohmann::json post_body, const std::string& ts);

// ---------------------------------------------------------------------------------------------
// Slash commands and interactivity

struct SlashCommand {
  std::string command;  // e.g. "/parley"
  std::string text;
  std::string user_id;
  std::string channel_id;
  std::string team_id;
  std::string response_url;
  std::string trigger_id;
};

// InvalidArgument unless command, user_id and channel_id are non-empty strings; other fields are
// optional but must be strings when present.
[[nodiscard]] Result<SlashCommand> ParseSlashCommand(const nlohmann::json& payload);

struct SlashAction {
  enum class Kind { kAsk, kHelp, kForget, kHuman, kUnknown };
  Kind kind = Kind::kHelp;
  std::string
      argument;  // kAsk: the question; kHuman: the reason (may be empty); kUnknown: the word
};

// "/parley <text>": empty → help; "help" → help; "ask Q" → ask Q ("ask" alone → help);
// "forget" → forget; "human [reason]" → human; a first word starting with '-' is an option we do
// not know → unknown with that word ("-h"/"--help" → help); anything else is a question: ask with
// the whole text. Verbs are matched case-insensitively.
SlashAction ParseSlashText(std::string_view text);

struct BlockAction {
  std::string user_id;
  std::string team_id;
  std::string channel_id;  // empty outside channels (e.g. App Home)
  std::string message_ts;  // the message carrying the button; empty if none
  std::string thread_ts;   // that message's thread; empty when it is not in one
  std::string action_id;
  std::string value;
  std::string action_ts;  // the click's own ts (unique per click); may be empty
  std::string response_url;
  std::string trigger_id;
};

// The first action of a block_actions payload. InvalidArgument unless type is "block_actions",
// user.id is a string and actions is a non-empty array whose first element has a string action_id.
[[nodiscard]] Result<BlockAction> ParseBlockActions(const nlohmann::json& payload);

// Whether the action is a button rendered from OutboundMessage::actions.
bool IsMessageAction(const BlockAction& action);

// The message a click on such a button stands for: from the clicking user, in the clicked
// message's channel and thread (its thread, or the thread it roots when it is a channel's root
// message; a DM's main line for a root message in a DM), text = the button's value,
// mentions_bot true (a click is addressed to the bot), is_direct for D… channels, event_id
// "action:" + channel + ":" + message_ts + ":" + (action_ts, else trigger_id, else fallback_id):
// one per click, the same for a redelivered envelope.
InboundMessage MessageFromAction(const BlockAction& action, const std::string& fallback_id);

}  // namespace parley::slack
