#include "escalation/ticket.h"

#include <nlohmann/json.hpp>

namespace parley::escalation {

const char* StateName(TicketState state) {
  switch (state) {
    case TicketState::kQueued:
      return "queued";
    case TicketState::kClaimed:
      return "claimed";
    case TicketState::kResolved:
      return "resolved";
    case TicketState::kReturned:
      return "returned_to_bot";
    case TicketState::kAbandoned:
      return "abandoned";
  }
  return "queued";
}

bool ParseState(std::string_view name, TicketState& state) {
  for (TicketState s : {TicketState::kQueued, TicketState::kClaimed, TicketState::kResolved,
                        TicketState::kReturned, TicketState::kAbandoned}) {
    if (name == StateName(s)) {
      state = s;
      return true;
    }
  }
  return false;
}

bool Ticket::operator==(const Ticket& o) const {
  return id == o.id && conversation == o.conversation && user == o.user &&
         user_name == o.user_name && reply_route == o.reply_route && queue == o.queue &&
         reason == o.reason && detail == o.detail && priority == o.priority && state == o.state &&
         created_ms == o.created_ms && queued_ms == o.queued_ms && claimed_ms == o.claimed_ms &&
         closed_ms == o.closed_ms && agent == o.agent && agent_name == o.agent_name &&
         closed_by == o.closed_by && summary == o.summary &&
         summary_source == o.summary_source && transcript == o.transcript &&
         card_message_id == o.card_message_id && card_thread == o.card_thread &&
         agents_seen == o.agents_seen && sla_due_ms == o.sla_due_ms && sla_stage == o.sla_stage &&
         last_notice_ms == o.last_notice_ms && confidence == o.confidence && sources == o.sources;
}

void to_json(nlohmann::json& j, const TranscriptEntry& e) {
  j = nlohmann::json{{"role", e.role}, {"who", e.who}, {"text", e.text}, {"ts_ms", e.ts_ms}};
  if (!e.event_id.empty()) j["event_id"] = e.event_id;
}

void from_json(const nlohmann::json& j, TranscriptEntry& e) {
  e.role = j.value("role", "");
  e.who = j.value("who", "");
  e.text = j.value("text", "");
  e.ts_ms = j.value("ts_ms", int64_t{0});
  e.event_id = j.value("event_id", "");
}

void to_json(nlohmann::json& j, const Ticket& t) {
  j = nlohmann::json{
      {"id", t.id},
      {"conversation",
       {{"platform", t.conversation.platform},
        {"channel", t.conversation.channel},
        {"thread", t.conversation.thread}}},
      {"user", t.user},
      {"user_name", t.user_name},
      {"reply_route", t.reply_route},
      {"queue", t.queue},
      {"reason", t.reason},
      {"detail", t.detail},
      {"priority", t.priority},
      {"state", StateName(t.state)},
      {"created_ms", t.created_ms},
      {"queued_ms", t.queued_ms},
      {"claimed_ms", t.claimed_ms},
      {"closed_ms", t.closed_ms},
      {"agent", t.agent},
      {"agent_name", t.agent_name},
      {"closed_by", t.closed_by},
      {"summary", t.summary},
      {"summary_source", t.summary_source},
      {"transcript", t.transcript},
      {"card_message_id", t.card_message_id},
      {"card_thread", t.card_thread},
      {"agents_seen", t.agents_seen},
      {"sla_due_ms", t.sla_due_ms},
      {"sla_stage", t.sla_stage},
      {"last_notice_ms", t.last_notice_ms},
      {"confidence", t.confidence},
      {"sources", t.sources},
  };
}

void from_json(const nlohmann::json& j, Ticket& t) {
  t.id = j.value("id", "");
  if (j.contains("conversation") && j["conversation"].is_object()) {
    const nlohmann::json& c = j["conversation"];
    t.conversation = {c.value("platform", ""), c.value("channel", ""), c.value("thread", "")};
  }
  t.user = j.value("user", "");
  t.user_name = j.value("user_name", "");
  t.reply_route = j.value("reply_route", "");
  t.queue = j.value("queue", "");
  t.reason = j.value("reason", "");
  t.detail = j.value("detail", "");
  t.priority = j.value("priority", 3);
  t.state = TicketState::kQueued;
  ParseState(j.value("state", "queued"), t.state);
  t.created_ms = j.value("created_ms", int64_t{0});
  t.queued_ms = j.value("queued_ms", int64_t{0});
  t.claimed_ms = j.value("claimed_ms", int64_t{0});
  t.closed_ms = j.value("closed_ms", int64_t{0});
  t.agent = j.value("agent", "");
  t.agent_name = j.value("agent_name", "");
  t.closed_by = j.value("closed_by", "");
  t.summary = j.value("summary", "");
  t.summary_source = j.value("summary_source", "");
  t.transcript.clear();
  if (j.contains("transcript") && j["transcript"].is_array()) {
    t.transcript = j["transcript"].get<std::vector<TranscriptEntry>>();
  }
  t.card_message_id = j.value("card_message_id", "");
  t.card_thread = j.value("card_thread", "");
  t.agents_seen = j.value("agents_seen", 0);
  t.sla_due_ms = j.value("sla_due_ms", int64_t{0});
  t.sla_stage = j.value("sla_stage", 0);
  t.last_notice_ms = j.value("last_notice_ms", int64_t{0});
  t.confidence = j.value("confidence", -1.0);
  t.sources.clear();
  if (j.contains("sources") && j["sources"].is_array()) {
    t.sources = j["sources"].get<std::vector<std::string>>();
  }
}

std::string TicketToJson(const Ticket& ticket) { return nlohmann::json(ticket).dump(); }

Result<Ticket> TicketFromJson(std::string_view text) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (!j.is_object()) return Status::Corruption("ticket is not a JSON object");
  try {
    TicketState state;
    if (!ParseState(j.value("state", std::string()), state)) {
      return Status::Corruption("ticket has an unknown state");
    }
    Ticket t = j.get<Ticket>();
    if (t.id.empty()) return Status::Corruption("ticket has no id");
    return t;
  } catch (const nlohmann::json::exception& e) {
    return Status::Corruption(std::string("ticket JSON: ") + e.what());
  }
}

}  // namespace parley::escalation
