#pragma once
// The platform-neutral message model. Adapters translate platform events into InboundMessage and
// OutboundMessage into platform calls; nothing past an adapter sees platform JSON.
// Thread-safety: plain values.

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace parley {

// Identifies one conversation: memory, ordering and de-duplication are per key.
struct ConversationKey {
  std::string platform;  // "webhook", "console", "slack", "matrix"
  std::string channel;   // platform channel / room / webhook conversation id
  std::string thread;    // thread id within the channel; empty for the channel's main line

  // Stable, reversible encoding used in store keys and logs: each part percent-escaped so that it
  // contains no '/', joined by '/'. Example: "webhook/support%2F1/".
  std::string Encode() const;
  // Human-readable "platform:channel[#thread]" for log lines.
  std::string Display() const;
  bool operator==(const ConversationKey& o) const {
    return platform == o.platform && channel == o.channel && thread == o.thread;
  }
  bool operator<(const ConversationKey& o) const;
};

// Percent-escapes '/', '%' and bytes below 0x20 so the result can be a store-key component.
std::string EscapeKeyPart(const std::string& part);

struct InboundMessage {
  std::string platform;
  std::string workspace;  // team / homeserver; may be empty
  std::string channel;
  std::string thread;     // empty when not in a thread
  std::string user;
  std::string user_name;  // display name when the platform gives one
  std::string text;       // normalised text for the engine (bot mention stripped)
  bool mentions_bot = false;
  bool is_direct = false;
  std::string event_id;   // platform's id for de-duplication; unique per platform
  // The adapter minted event_id itself (the platform sent none, e.g. a webhook request without
  // "id"): it can never arrive again, so the router keeps no de-duplication record for it.
  bool event_id_minted = false;
  int64_t timestamp_ms = 0;
  // Adapter-private routing data the engine carries through untouched to the reply (e.g. the
  // webhook's reply_url). Never interpreted outside the adapter that set it.
  std::string reply_route;
  // The user asked for a person through a platform command or button (e.g. Slack's
  // `/parley human`) rather than in words: the escalation desk opens a ticket (reason "request")
  // whatever the text says. text still carries what the user typed, for the transcript.
  bool request_human = false;
  // The platform says this message opens its conversation (a Slack channel mention that starts
  // a thread: the conversation is that new thread), so nothing can be remembered for it yet and
  // the engine does not read memory. Left false whenever that is not certain.
  bool starts_conversation = false;

  ConversationKey conversation() const { return {platform, channel, thread}; }
};

// A button (or its platform's nearest equivalent) offered on an OutboundMessage, e.g. Claim on an
// escalation card. Adapters render actions natively (Slack: an actions block of buttons; webhook:
// an "actions" array in the JSON it posts; console: listed under the text) or not at all. A click
// comes back as an InboundMessage from the clicking user in the message's conversation (its
// thread, where the platform has threads) whose text is `value`, with an event id unique per
// click: the receiver cannot tell a click from typing the value.
struct MessageAction {
  std::string id;     // stable within the message, [a-z0-9_] (e.g. "claim")
  std::string label;  // the button's text, short (e.g. "Claim")
  std::string value;  // the text a click sends back (e.g. "claim 17")
  std::string style;  // "" | "primary" | "danger": a hint; adapters may ignore it
  bool operator==(const MessageAction& o) const {
    return id == o.id && label == o.label && value == o.value && style == o.style;
  }
};

struct Citation {
  std::string title;
  std::string source;   // source file, relative to its knowledge source
  std::string section;  // heading path, e.g. "Install > On Windows"
  std::string url;      // url_base + source + #anchor when url_base is configured; else empty
  bool operator==(const Citation& o) const {
    return title == o.title && source == o.source && section == o.section && url == o.url;
  }
};

// What the bot says: one reply or one unsolicited message.
struct OutboundMessage {
  std::string id;             // unique id of this message (idempotency key for delivery)
  ConversationKey conversation;
  std::string text;           // Markdown
  std::vector<Citation> citations;
  double confidence = 0.0;
  bool escalated = false;     // a human was offered / the conversation was handed over
  std::string in_reply_to;    // event_id of the InboundMessage this answers; empty if unsolicited
  std::string reply_route;    // copied from the InboundMessage
  std::string turn_id;
  // Nothing to show: the turn was dealt with without a bot reply (e.g. the message was relayed
  // to a human agent, or the answer went out as another message). Sent only so that a caller
  // still waiting for the answer (a synchronous webhook request, a local ask) is completed;
  // adapters show nothing on a chat platform, and it is never durable.
  bool silent = false;
  // Buttons offered with the message (see MessageAction); empty for ordinary replies.
  std::vector<MessageAction> actions;
  // The text is parley's own, built from its configuration (no user or model text in it), so
  // platform mention markup in it is sent as such and notifies (e.g. an escalation queue's
  // on-call "<!subteam^S123>" on Slack). Otherwise adapters escape such markup.
  bool keep_mentions = false;
};

void to_json(nlohmann::json& j, const Citation& c);
void from_json(const nlohmann::json& j, Citation& c);
void to_json(nlohmann::json& j, const MessageAction& a);
void from_json(const nlohmann::json& j, MessageAction& a);
void to_json(nlohmann::json& j, const InboundMessage& m);
void from_json(const nlohmann::json& j, InboundMessage& m);
void to_json(nlohmann::json& j, const OutboundMessage& m);
void from_json(const nlohmann::json& j, OutboundMessage& m);

// The JSON text of to_json, written without building a tree: these are written on every turn.
std::string ToJsonText(const OutboundMessage& m);
// Appends citations as the JSON array to_json(std::vector<Citation>) makes.
void AppendJsonArray(std::string& out, const std::vector<Citation>& citations);

}  // namespace parley
