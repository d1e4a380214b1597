#pragma once
// An escalation ticket: one user conversation handed to people, as stored under
// v1/esc/ticket/<id> (JSON). Plain value; the Desk owns the live copies.
// Thread-safety: plain values.

#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "core/message.h"
#include "core/status.h"

namespace parley::escalation {

enum class TicketState { kQueued, kClaimed, kResolved, kReturned, kAbandoned };

// "queued", "claimed", "resolved", "returned_to_bot", "abandoned".
const char* StateName(TicketState state);
// False when name is none of StateName's spellings.
bool ParseState(std::string_view name, TicketState& state);
inline bool IsOpen(TicketState s) {
  return s == TicketState::kQueued || s == TicketState::kClaimed;
}

// One line of the ticket's transcript.
struct TranscriptEntry {
  std::string role;  // "user" | "bot" | "agent" | "note" | "system"
  std::string who;   // display name (user, agent); empty for the bot and the system
  std::string text;
  int64_t ts_ms = 0;
  std::string event_id;  // the inbound event it came from; empty when none
  bool operator==(const TranscriptEntry& o) const {
    return role == o.role && who == o.who && text == o.text && ts_ms == o.ts_ms &&
           event_id == o.event_id;
  }
};

struct Ticket {
  std::string id;                // short decimal number, "17"
  ConversationKey conversation;  // the user's conversation
  std::string user;
  std::string user_name;
  std::string reply_route;  // of the user's latest message; replies to the user carry it
  std::string queue;
  std::string reason;  // trigger: "request" | "tool" | "low_confidence" | "feedback" | "policy"
  std::string detail;  // phrase / pattern / tool reason / topic
  int priority = 3;
  TicketState state = TicketState::kQueued;
  int64_t created_ms = 0;
  int64_t queued_ms = 0;  // when it (re)entered its current queue: orders the queue
  int64_t claimed_ms = 0;
  int64_t closed_ms = 0;
  std::string agent;       // user id of the claiming agent
  std::string agent_name;  // display name of the claiming agent
  std::string closed_by;   // who closed it (agent name, or the user on cancel)
  std::string summary;
  // Who wrote the summary: "turns" (the user's messages condensed), "model" (the LLM), or
  // "pending" (condensed so far; the model's is on its way).
  std::string summary_source;
  std::vector<TranscriptEntry> transcript;
  std::string card_message_id;  // id of the latest card posted to the agents' channel
  std::string card_thread;      // platform thread id of that card once known (Slack ts, ...)
  int agents_seen = 0;          // transcript entries [0, agents_seen) have been shown to the agents
  int64_t sla_due_ms = 0;       // next SLA notice while queued; 0 = none
  int sla_stage = 0;            // 0 none, 1 re-announced, 2 raised + on-call, 3.. repeats
  int64_t last_notice_ms = 0;   // last "still waiting" update to the user
  double confidence = -1.0;     // of the bot's last answer before the escalation; < 0 unknown
  std::vector<std::string> sources;  // citation titles of that answer

  bool operator==(const Ticket& o) const;
};

void to_json(nlohmann::json& j, const TranscriptEntry& e);
void from_json(const nlohmann::json& j, TranscriptEntry& e);
void to_json(nlohmann::json& j, const Ticket& t);
void from_json(const nlohmann::json& j, Ticket& t);

std::string TicketToJson(const Ticket& ticket);
// Corruption when text is not a ticket (bad JSON, no id, unknown state).
Result<Ticket> TicketFromJson(std::string_view text);

}  // namespace parley::escalation
