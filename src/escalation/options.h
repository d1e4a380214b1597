#pragma once
// Options of the escalation desk: plain structs the composition root fills from the
// `[escalation]` config section. Validate() checks them before a Desk is opened.
// Thread-safety: plain values.

#include <string>
#include <vector>

#include "core/status.h"

namespace parley::escalation {

// One queue of human agents.
struct QueueOptions {
  std::string name;  // unique; [A-Za-z0-9_.-]+ (used in commands: "transfer NAME")
  // The agents' channel: "<platform>:<channel>", e.g. "slack:C0123", "matrix:!room:server",
  // "webhook:agents". The platform part ends at the first ':'.
  std::string agents;
  // Case-insensitive ECMAScript regexes searched in the user's text (routing, and with `policy`
  // an always-escalate rule).
  std::vector<std::string> patterns;
  // The model's stated topic (escalate_to_human "topic") equal to one of these, ignoring case.
  std::vector<std::string> topics;
  // Source conversations "<platform>:<channel>"; '*' globs allowed (core/glob.h).
  std::vector<std::string> channels;
  // Source platforms ("slack", "webhook", ...).
  std::vector<std::string> platforms;
  // A message matching `patterns` ALWAYS goes to people, before the bot answers.
  bool policy = false;
  int priority = 3;      // 1 = most urgent .. 5
  // Unclaimed longer than this (in business time) is a breach; 0 = no SLA. Fractions allowed.
  double sla_minutes = 30;
  // "" = always open; "mon-fri 09:00-17:00" or "mon-fri 09:00-17:00, sat 10:00-14:00"
  // (see business_hours.h), in DeskOptions::utc_offset_minutes.
  std::string business_hours;
  // Text put in the breach notice, e.g. "<!subteam^S123>" or "@oncall". Empty: none.
  std::string oncall;
  // Optional allowlist of agent user ids; empty = anyone in the agents' channel may act.
  std::vector<std::string> agent_users;

  // True when the queue has no routing rule (patterns, topics, channels, platforms).
  bool HasNoRules() const {
    return patterns.empty() && topics.empty() && channels.empty() && platforms.empty();
  }
};

struct DeskOptions {
  bool enabled = true;
  // Phrases that ask for a person, matched as whole words ignoring case and punctuation.
  std::vector<std::string> request_phrases = {"talk to a human", "human please",
                                              "agent please",    "speak to an agent",
                                              "real person",     "talk to someone"};
  // Words that cancel a waiting escalation when they are the user's whole message.
  std::vector<std::string> cancel_phrases = {"cancel", "cancel escalation", "never mind",
                                             "nevermind", "stop waiting"};
  int low_confidence_turns = 3;  // this many low-confidence answers in a row open a ticket; 0 = off
  double low_confidence = 0.35;  // an answer below this (or outcome "no_answer") is low-confidence
  bool negative_feedback = true;  // a "not helpful" on a bot answer opens a ticket
  int utc_offset_minutes = 0;     // business hours are in this offset from UTC (-720..840)
  int summary_turns = 6;          // turns shown on the card
  int sla_renotify_minutes =
      15;  // after the second breach notice: repeat at most this often; 0 = never
  // A waiting user who writes again gets "still waiting, number N" at most this often.
  int waiting_notice_minutes = 5;
  // Closed tickets (with their transcripts) are deleted this many days after they closed;
  // 0 = kept forever.
  int retention_days = 90;
  // The first queue without routing rules (else the first queue) is the default queue.
  std::vector<QueueOptions> queues;
};

// Checks the options: queue names (non-empty, unique, no spaces), agents syntax, regexes,
// business hours, ranges. InvalidArgument names the queue and the field. No queues is valid (the
// desk is then inactive).
Status Validate(const DeskOptions& options);

// Splits "<platform>:<channel>" at the first ':'. False when either part is empty.
bool SplitAgents(const std::string& agents, std::string& platform, std::string& channel);

}  // namespace parley::escalation
