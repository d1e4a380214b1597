#pragma once
// Every key prefix in the store, in one place. The leading "v1/" versions the layout: a future
// incompatible layout uses "v2/" and a migration, never a silent reinterpretation.
//
//   v1/meta/schema                          "1"
//   v1/mem/<conv>/<ts_ms:016>-<seq:012x>    Turn (JSON), per conversation, in time order
//   v1/user/<platform>/<user>/<conv>        "" — conversations a user spoke in (for forget-user)
//   v1/dedupe/<platform>/<event_id>         expiry (unix ms, decimal)
//   v1/inbox/<id>                           accepted inbound message not yet answered (JSON)
//   v1/outbox/<platform>/<id>               delivery owed to a platform (JSON)
//   v1/route/<conv>                         the conversation's latest reply route (webhook reply_url)
//   v1/feedback/<message_id>/<platform>/<user>  feedback on an answer (JSON)
//   v1/slack/thread/<channel>/<thread_ts>   unix ms: the bot answered in this Slack thread
//   v1/sum/<conv>                           rolling summary of the conversation's older turns (JSON)
//   v1/confirm/<conv>                       a tool call waiting for the user's confirmation (JSON)
//   v1/audit/<ts_ms:016>/<turn>/<call_id>   one tool call's audit record (JSON), in time order
//   v1/esc/seq                              last escalation ticket id issued (decimal)
//   v1/esc/ticket/<id>                      escalation ticket (JSON, escalation/ticket.h)
//   v1/esc/open/<conv>                      id of the conversation's open ticket (one at most)
//   v1/esc/thread/<platform>/<channel>/<thread>  id of the ticket whose card opened this thread
//   v1/esc/seen/<platform>/<event_id>       an inbound event the desk applied (JSON: ticket, time)
//   v1/esc/queue/<queue>/<prio>/<ts_ms:016>/<id>  "" — queued (unclaimed) tickets in queue order
//   v1/esc/streak/<conv>                    low-confidence answers in a row (JSON)
//   --- Matrix adapter (adapters/matrix) ---
//   v1/cursor/matrix                        the /sync next_batch of the last batch fully accepted
//   v1/matrix/session                       the password login's token and device (JSON)
//   v1/matrix/thread/<room>/<root>          unix ms: the bot answered in this thread
//   v1/matrix/enotice/<room>                unix ms: the encrypted-room notice was posted here
// <conv> is ConversationKey::Encode() (three escaped parts joined by '/'), and every other variable
// part is escaped with EscapeKeyPart, so a prefix ending in '/' never matches a longer sibling.

#include <cstdint>
#include <cstdio>
#include <string>

#include "core/message.h"

namespace parley::store::keys {

inline constexpr char kSchema[] = "v1/meta/schema";
inline constexpr char kMemory[] = "v1/mem/";
inline constexpr char kUser[] = "v1/user/";
inline constexpr char kDedupe[] = "v1/dedupe/";
inline constexpr char kInbox[] = "v1/inbox/";
inline constexpr char kOutbox[] = "v1/outbox/";
inline constexpr char kRoute[] = "v1/route/";
inline constexpr char kFeedback[] = "v1/feedback/";
inline constexpr char kSlackThread[] = "v1/slack/thread/";
inline constexpr char kSummary[] = "v1/sum/";
inline constexpr char kConfirm[] = "v1/confirm/";
inline constexpr char kAudit[] = "v1/audit/";
inline constexpr char kEscSeq[] = "v1/esc/seq";
inline constexpr char kEscTicket[] = "v1/esc/ticket/";
inline constexpr char kEscOpen[] = "v1/esc/open/";
inline constexpr char kEscThread[] = "v1/esc/thread/";
inline constexpr char kEscSeen[] = "v1/esc/seen/";
inline constexpr char kEscQueue[] = "v1/esc/queue/";
inline constexpr char kEscStreak[] = "v1/esc/streak/";

inline std::string MemoryPrefix(const ConversationKey& conv) {
  return kMemory + conv.Encode() + "/";
}
inline std::string UserPrefix(const std::string& platform, const std::string& user) {
  return kUser + EscapeKeyPart(platform) + "/" + EscapeKeyPart(user) + "/";
}
inline std::string Dedupe(const std::string& platform, const std::string& event_id) {
  return kDedupe + EscapeKeyPart(platform) + "/" + EscapeKeyPart(event_id);
}
inline std::string Inbox(const std::string& id) { return kInbox + EscapeKeyPart(id); }
inline std::string OutboxPrefix(const std::string& platform) {
  return kOutbox + EscapeKeyPart(platform) + "/";
}
inline std::string Outbox(const std::string& platform, const std::string& id) {
  return OutboxPrefix(platform) + EscapeKeyPart(id);
}
inline std::string Route(const ConversationKey& conv) { return kRoute + conv.Encode(); }
inline std::string Feedback(const std::string& message_id, const std::string& platform,
                            const std::string& user) {
  return kFeedback + EscapeKeyPart(message_id) + "/" + EscapeKeyPart(platform) + "/" +
         EscapeKeyPart(user);
}
inline std::string SlackThread(const std::string& channel, const std::string& thread_ts) {
  return kSlackThread + EscapeKeyPart(channel) + "/" + EscapeKeyPart(thread_ts);
}

inline std::string Summary(const ConversationKey& conv) { return kSummary + conv.Encode(); }
inline std::string Confirm(const ConversationKey& conv) { return kConfirm + conv.Encode(); }
// ts_ms is zero-padded to 16 digits so keys sort in time order.
inline std::string Audit(int64_t ts_ms, const std::string& turn_id, const std::string& call_id) {
  char ts[24];
  std::snprintf(ts, sizeof ts, "%016lld", static_cast<long long>(ts_ms));
  return kAudit + std::string(ts) + "/" + EscapeKeyPart(turn_id) + "/" + EscapeKeyPart(call_id);
}

inline std::string EscTicket(const std::string& id) { return kEscTicket + EscapeKeyPart(id); }
inline std::string EscOpen(const ConversationKey& conv) { return kEscOpen + conv.Encode(); }
inline std::string EscThread(const std::string& platform, const std::string& channel,
                             const std::string& thread) {
  return kEscThread + EscapeKeyPart(platform) + "/" + EscapeKeyPart(channel) + "/" +
         EscapeKeyPart(thread);
}
inline std::string EscSeen(const std::string& platform, const std::string& event_id) {
  return kEscSeen + EscapeKeyPart(platform) + "/" + EscapeKeyPart(event_id);
}
inline std::string EscQueuePrefix(const std::string& queue) {
  return kEscQueue + EscapeKeyPart(queue) + "/";
}
// prio is one digit (1..5); ts_ms is zero-padded to 16 digits so keys sort in queue order.
inline std::string EscQueue(const std::string& queue, int prio, int64_t ts_ms,
                            const std::string& id) {
  char ts[24];
  std::snprintf(ts, sizeof ts, "%016lld", static_cast<long long>(ts_ms));
  return EscQueuePrefix(queue) + std::to_string(prio) + "/" + ts + "/" + EscapeKeyPart(id);
}
inline std::string EscStreak(const ConversationKey& conv) { return kEscStreak + conv.Encode(); }

// --- Matrix adapter (adapters/matrix) ---
inline constexpr char kMatrixCursor[] = "v1/cursor/matrix";
inline constexpr char kMatrixSession[] = "v1/matrix/session";
inline constexpr char kMatrixThread[] = "v1/matrix/thread/";
inline constexpr char kMatrixNotice[] = "v1/matrix/enotice/";
inline std::string MatrixThread(const std::string& room, const std::string& root) {
  return kMatrixThread + EscapeKeyPart(room) + "/" + EscapeKeyPart(root);
}
// The posted first part of a streamed answer, by the message it answers (the answer's own id is
// new when a crash made the turn run again): a replayed final edits it instead of posting anew.
inline constexpr char kMatrixPartial[] = "v1/matrix/partial/";
inline std::string MatrixPartial(const std::string& room, const std::string& in_reply_to) {
  return kMatrixPartial + EscapeKeyPart(room) + "/" + EscapeKeyPart(in_reply_to);
}
inline std::string MatrixNotice(const std::string& room) {
  return kMatrixNotice + EscapeKeyPart(room);
}

}  // namespace parley::store::keys
