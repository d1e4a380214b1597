#include "escalation/options.h"

#include <regex>
#include <set>

#include "escalation/business_hours.h"

namespace parley::escalation {

bool SplitAgents(const std::string& agents, std::string& platform, std::string& channel) {
  const size_t colon = agents.find(':');
  if (colon == std::string::npos) return false;
  platform = agents.substr(0, colon);
  channel = agents.substr(colon + 1);
  return !platform.empty() && !channel.empty();
}

namespace {

bool ValidQueueName(const std::string& name) {
  if (name.empty()) return false;
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '_' || c == '-' || c == '.';
    if (!ok) return false;
  }
  return true;
}

}  // namespace

Status Validate(const DeskOptions& o) {
  if (o.low_confidence_turns < 0) {
    return Status::InvalidArgument("escalation.low_confidence_turns must be >= 0");
  }
  if (o.low_confidence < 0.0 || o.low_confidence > 1.0) {
    return Status::InvalidArgument("escalation.low_confidence must be within 0..1");
  }
  if (o.utc_offset_minutes < -720 || o.utc_offset_minutes > 840) {
    return Status::InvalidArgument("escalation.utc_offset_minutes must be within -720..840");
  }
  if (o.summary_turns < 0 || o.sla_renotify_minutes < 0 || o.waiting_notice_minutes < 0) {
    return Status::InvalidArgument(
        "escalation.summary_turns, sla_renotify_minutes and waiting_notice_minutes must be >= 0");
  }
  for (const std::string& phrase : o.request_phrases) {
    if (phrase.find_first_not_of(" \t") == std::string::npos) {
      return Status::InvalidArgument("escalation.request_phrases: empty phrase");
    }
  }
  std::set<std::string> names;
  for (size_t i = 0; i < o.queues.size(); ++i) {
    const QueueOptions& q = o.queues[i];
    const std::string where = "escalation.queues[" + std::to_string(i) + "] (" + q.name + ")";
    if (!ValidQueueName(q.name)) {
      return Status::InvalidArgument(where + ": name must be non-empty [A-Za-z0-9_.-]");
    }
    if (!names.insert(q.name).second) {
      return Status::InvalidArgument(where + ": duplicate queue name");
    }
    std::string platform, channel;
    if (!SplitAgents(q.agents, platform, channel)) {
      return Status::InvalidArgument(where + ": agents must be \"<platform>:<channel>\", got \"" +
                                     q.agents + "\"");
    }
    for (const std::string& pattern : q.patterns) {
      try {
        std::regex re(pattern, std::regex::ECMAScript | std::regex::icase);
        (void)re;
      } catch (const std::regex_error& e) {
        return Status::InvalidArgument(where + ": bad pattern \"" + pattern + "\": " + e.what());
      }
    }
    if (q.policy && q.patterns.empty()) {
      return Status::InvalidArgument(where + ": policy = true needs patterns");
    }
    if (q.priority < 1 || q.priority > 5) {
      return Status::InvalidArgument(where + ": priority must be within 1..5");
    }
    if (q.sla_minutes < 0) return Status::InvalidArgument(where + ": sla_minutes must be >= 0");
    Result<BusinessHours> hours = BusinessHours::Parse(q.business_hours);
    if (!hours.ok()) {
      return Status::InvalidArgument(where + ": business_hours: " + hours.status().message());
    }
  }
  return Status::Ok();
}

}  // namespace parley::escalation
