#include "adapters/slack/codec.h"

#include <algorithm>
#include <cctype>

#include "adapters/slack/mrkdwn.h"
#include "core/json_write.h"
#include "core/utf8.h"

namespace parley::slack {
namespace {

using nlohmann::json;

constexpr int kMaxFrameDepth = 256;
constexpr size_t kMessageLimit = 3500;  // bytes of mrkdwn per chat.postMessage
constexpr size_t kSectionLimit = 3000;  // Slack's limit for a section's text
constexpr size_t kMaxBlocks = 50;
constexpr size_t kContextElements = 10;  // Slack's limit per context block

// nlohmann's parser recurses per nesting level; reject absurd nesting before parsing so that a
// hostile frame cannot exhaust the stack.
bool NestingWithin(std::string_view s, int max_depth) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (in_string) {
      if (c == '\\') {
        ++i;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      if (++depth > max_depth) return false;
    } else if (c == '}' || c == ']') {
      --depth;
    }
  }
  return true;
}

// Field readers. Absent and null read as "not present"; a present value of another type is an
// error. Messages name the field, never its content.
enum class Field { kAbsent, kOk, kWrongType };

Field ReadString(const json& obj, const char* key, std::string* out) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return Field::kAbsent;
  if (!it->is_string()) return Field::kWrongType;
  *out = it->get_ref<const std::string&>();
  return Field::kOk;
}

Field ReadInt(const json& obj, const char* key, int64_t* out) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return Field::kAbsent;
  if (!it->is_number_integer()) return Field::kWrongType;
  *out = it->get<int64_t>();
  return Field::kOk;
}

Field ReadBool(const json& obj, const char* key, bool* out) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return Field::kAbsent;
  if (!it->is_boolean()) return Field::kWrongType;
  *out = it->get<bool>();
  return Field::kOk;
}

// A string member or "" (absent or wrongly typed), for lenient event parsing.
std::string StringOr(const json& obj, const char* key) {
  std::string s;
  if (ReadString(obj, key, &s) != Field::kOk) return {};
  return s;
}

// obj[key] if it is an object, else nullptr.
const json* ObjectAt(const json& obj, const char* key) {
  auto it = obj.find(key);
  if (it == obj.end() || !it->is_object()) return nullptr;
  return &*it;
}

Status WrongType(const std::string& what, const char* key) {
  return Status::InvalidArgument(what + ": field '" + key + "' has the wrong type");
}

DisconnectReason ReasonFromString(const std::string& r) {
  if (r == "warning") return DisconnectReason::kWarning;
  if (r == "refresh_requested") return DisconnectReason::kRefreshRequested;
  if (r == "link_disabled") return DisconnectReason::kLinkDisabled;
  if (r == "too_many_websockets") return DisconnectReason::kTooManyWebsockets;
  return DisconnectReason::kOther;
}

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

std::string_view Trim(std::string_view s) {
  while (!s.empty() && IsSpace(s.front())) s.remove_prefix(1);
  while (!s.empty() && IsSpace(s.back())) s.remove_suffix(1);
  return s;
}

// &amp; &lt; &gt; → & < >, in one pass (so "&amp;lt;" becomes "&lt;", not "<").
void AppendUnescaped(std::string& out, std::string_view s) {
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '&') {
      if (s.substr(i, 5) == "&amp;") {
        out.push_back('&');
        i += 4;
        continue;
      }
      if (s.substr(i, 4) == "&lt;") {
        out.push_back('<');
        i += 3;
        continue;
      }
      if (s.substr(i, 4) == "&gt;") {
        out.push_back('>');
        i += 3;
        continue;
      }
    }
    out.push_back(s[i]);
  }
}

std::string Unescaped(std::string_view s) {
  std::string out;
  AppendUnescaped(out, s);
  return out;
}


// True when text mentions user id as <@ID> or <@ID|label>.
bool Mentions(std::string_view text, const std::string& id) {
  if (id.empty()) return false;
  const std::string needle = "<@" + id;
  size_t pos = 0;
  while ((pos = text.find(needle, pos)) != std::string_view::npos) {
    const size_t after = pos + needle.size();
    if (after < text.size() && (text[after] == '>' || text[after] == '|')) return true;
    pos = after;
  }
  return false;
}

}  // namespace

const char* FrameKindName(FrameKind kind) {
  switch (kind) {
    case FrameKind::kHello:
      return "hello";
    case FrameKind::kDisconnect:
      return "disconnect";
    case FrameKind::kEventsApi:
      return "events_api";
    case FrameKind::kSlashCommands:
      return "slash_commands";
    case FrameKind::kInteractive:
      return "interactive";
    case FrameKind::kUnknown:
      return "unknown";
  }
  return "unknown";
}

const char* DisconnectReasonName(DisconnectReason reason) {
  switch (reason) {
    case DisconnectReason::kWarning:
      return "warning";
    case DisconnectReason::kRefreshRequested:
      return "refresh_requested";
    case DisconnectReason::kLinkDisabled:
      return "link_disabled";
    case DisconnectReason::kTooManyWebsockets:
      return "too_many_websockets";
    case DisconnectReason::kOther:
      return "other";
  }
  return "other";
}

const char* IgnoreReasonName(IgnoreReason reason) {
  switch (reason) {
    case IgnoreReason::kNone:
      return "none";
    case IgnoreReason::kUnsupportedType:
      return "unsupported_type";
    case IgnoreReason::kIncomplete:
      return "incomplete";
    case IgnoreReason::kOwnMessage:
      return "own_message";
    case IgnoreReason::kOtherBot:
      return "other_bot";
    case IgnoreReason::kSubtype:
      return "subtype";
    case IgnoreReason::kEmptyText:
      return "empty_text";
    case IgnoreReason::kNotAddressed:
      return "not_addressed";
  }
  return "none";
}

// ---------------------------------------------------------------------------------------------

json ParseJsonWithout(std::string_view text, int depth, std::string_view key) {
  bool dropping = false;  // the last key at `depth` was `key`: its value is being left out
  json::parser_callback_t drop = [&](int at, json::parse_event_t event, json& parsed) {
    using E = json::parse_event_t;
    if (event == E::key && at <= depth) {
      dropping = at == depth && parsed.is_string() && parsed.get_ref<const std::string&>() == key;
      return !dropping;
    }
    if ((event == E::object_end || event == E::array_end) && at < depth) dropping = false;
    // Refuse every container inside the dropped value, so nothing below it is built either.
    return !(dropping && (at > depth || (at == depth && (event == E::object_start ||
                                                         event == E::array_start))));
  };
  // allow_exceptions=false: a parse error gives a discarded value instead of an exception whose
  // message would quote the input.
  return json::parse(text.begin(), text.end(), drop, /*allow_exceptions=*/false);
}

Result<Envelope> ParseEnvelope(std::string_view frame) {
  if (!NestingWithin(frame, kMaxFrameDepth)) {
    return Status::InvalidArgument("slack frame: nested too deeply");
  }
  // Without the rich-text "blocks" of payload.event (events) and payload.message (interactions):
  // the same text again, as a tree nothing here reads.
  json j = ParseJsonWithout(frame, 3, "blocks");
  if (j.is_discarded()) return Status::InvalidArgument("slack frame: not valid JSON");
  if (!j.is_object()) return Status::InvalidArgument("slack frame: not a JSON object");
  Envelope e;
  switch (ReadString(j, "type", &e.type)) {
    case Field::kAbsent:
      return Status::InvalidArgument("slack frame: no 'type'");
    case Field::kWrongType:
      return WrongType("slack frame", "type");
    case Field::kOk:
      break;
  }
  if (e.type == "hello") {
    e.kind = FrameKind::kHello;
    if (ReadInt(j, "num_connections", &e.num_connections) == Field::kWrongType) {
      return WrongType("slack hello", "num_connections");
    }
    if (const json* debug = ObjectAt(j, "debug_info")) {
      if (ReadInt(*debug, "approximate_connection_time", &e.approximate_connection_time_s) ==
          Field::kWrongType) {
        return WrongType("slack hello", "approximate_connection_time");
      }
    }
    if (const json* info = ObjectAt(j, "connection_info")) {
      if (ReadString(*info, "app_id", &e.app_id) == Field::kWrongType) {
        return WrongType("slack hello", "app_id");
      }
    }
    return e;
  }
  if (e.type == "disconnect") {
    e.kind = FrameKind::kDisconnect;
    if (ReadString(j, "reason", &e.disconnect_reason_raw) == Field::kWrongType) {
      return WrongType("slack disconnect", "reason");
    }
    e.disconnect_reason = ReasonFromString(e.disconnect_reason_raw);
    return e;
  }
  if (e.type == "events_api") {
    e.kind = FrameKind::kEventsApi;
  } else if (e.type == "slash_commands") {
    e.kind = FrameKind::kSlashCommands;
  } else if (e.type == "interactive") {
    e.kind = FrameKind::kInteractive;
  } else {
    e.kind = FrameKind::kUnknown;
    (void)ReadString(j, "envelope_id", &e.envelope_id);  // best effort, to ack it anyway
    return e;
  }
  const std::string what = std::string("slack ") + e.type + " envelope";
  switch (ReadString(j, "envelope_id", &e.envelope_id)) {
    case Field::kAbsent:
      return Status::InvalidArgument(what + ": no 'envelope_id'");
    case Field::kWrongType:
      return WrongType(what, "envelope_id");
    case Field::kOk:
      break;
  }
  if (e.envelope_id.empty()) return Status::InvalidArgument(what + ": empty 'envelope_id'");
  auto payload = j.find("payload");
  if (payload == j.end() || !payload->is_object()) {
    return Status::InvalidArgument(what + ": no object 'payload'");
  }
  e.payload = std::move(*payload);
  if (ReadBool(j, "accepts_response_payload", &e.accepts_response_payload) == Field::kWrongType) {
    return WrongType(what, "accepts_response_payload");
  }
  if (ReadInt(j, "retry_attempt", &e.retry_attempt) == Field::kWrongType || e.retry_attempt < 0) {
    return WrongType(what, "retry_attempt");
  }
  if (ReadString(j, "retry_reason", &e.retry_reason) == Field::kWrongType) {
    return WrongType(what, "retry_reason");
  }
  return e;
}

std::string DumpJson(const json& j) {
  return j.dump(-1, ' ', /*ensure_ascii=*/false, json::error_handler_t::replace);
}

std::string AckFrame(const std::string& envelope_id, const json* payload) {
  json ack = {{"envelope_id", envelope_id}};
  if (payload != nullptr) ack["payload"] = *payload;
  return DumpJson(ack);
}

// ---------------------------------------------------------------------------------------------

SlackEvent ParseEventCallback(const json& payload) {
  SlackEvent ev;
  if (!payload.is_object()) return ev;
  ev.team_id = StringOr(payload, "team_id");
  ev.event_id = StringOr(payload, "event_id");
  const json* event = ObjectAt(payload, "event");
  if (StringOr(payload, "type") != "event_callback" || event == nullptr) return ev;
  ev.type_raw = StringOr(*event, "type");
  if (ev.type_raw == "app_mention") {
    ev.type = EventType::kAppMention;
  } else if (ev.type_raw == "message") {
    ev.type = EventType::kMessage;
  }
  if (ev.team_id.empty()) ev.team_id = StringOr(*event, "team");
  ev.channel = StringOr(*event, "channel");
  ev.channel_type = StringOr(*event, "channel_type");
  ev.user = StringOr(*event, "user");
  ev.bot_id = StringOr(*event, "bot_id");
  ev.subtype = StringOr(*event, "subtype");
  ev.text = StringOr(*event, "text");
  ev.ts = StringOr(*event, "ts");
  ev.thread_ts = StringOr(*event, "thread_ts");
  ev.parent_user_id = StringOr(*event, "parent_user_id");
  return ev;
}

std::string DedupeKey(const SlackEvent& event) { return event.channel + ":" + event.ts; }

int64_t TsToMillis(std::string_view ts) {
  if (ts.empty() || ts.size() > 32) return 0;
  int64_t seconds = 0;
  size_t i = 0;
  for (; i < ts.size() && ts[i] != '.'; ++i) {
    if (!std::isdigit(static_cast<unsigned char>(ts[i])) || i >= 12) return 0;
    seconds = seconds * 10 + (ts[i] - '0');
  }
  int64_t millis = 0;
  int digits = 0;
  if (i < ts.size()) {
    for (++i; i < ts.size(); ++i) {
      if (!std::isdigit(static_cast<unsigned char>(ts[i]))) return 0;
      if (digits < 3) {
        millis = millis * 10 + (ts[i] - '0');
        ++digits;
      }
    }
  }
  for (; digits < 3; ++digits) millis *= 10;
  return seconds * 1000 + millis;
}

EventDecision Classify(const SlackEvent& event, const std::string& bot_user_id,
                       const ClassifyOptions& options, bool bot_in_thread) {
  EventDecision d;
  auto ignore = [&d](IgnoreReason r) {
    d.handle = false;
    d.reason = r;
    return d;
  };
  if (event.type == EventType::kOther) return ignore(IgnoreReason::kUnsupportedType);
  if (event.channel.empty() || event.ts.empty()) return ignore(IgnoreReason::kIncomplete);
  const bool own = (!bot_user_id.empty() && event.user == bot_user_id) ||
                   (!options.own_bot_id.empty() && event.bot_id == options.own_bot_id);
  if (own) return ignore(IgnoreReason::kOwnMessage);
  const bool bot_subtype = event.subtype == "bot_message";
  if (!event.subtype.empty() && !bot_subtype && event.subtype != "thread_broadcast" &&
      event.subtype != "file_share") {
    return ignore(IgnoreReason::kSubtype);
  }
  const bool is_bot = bot_subtype || !event.bot_id.empty();
  if (is_bot && !options.allow_bots) return ignore(IgnoreReason::kOtherBot);
  std::string user = event.user.empty() && is_bot ? event.bot_id : event.user;
  if (user.empty()) return ignore(IgnoreReason::kIncomplete);

  // app_mention never comes from DMs; channel_type is absent on it. A message without
  // channel_type is a DM when its channel id is a D… id.
  const bool is_direct =
      event.type == EventType::kMessage &&
      (event.channel_type == "im" || (event.channel_type.empty() && event.channel[0] == 'D'));
  const bool mentions = event.type == EventType::kAppMention || Mentions(event.text, bot_user_id);

  std::string text = NormalizeText(event.text, bot_user_id);
  if (text.empty()) return ignore(IgnoreReason::kEmptyText);

  const bool followup = options.thread_followups && bot_in_thread && !event.thread_ts.empty();
  if (!is_direct && !mentions && !followup && options.mention_required) {
    return ignore(IgnoreReason::kNotAddressed);
  }

  d.handle = true;
  d.reason = IgnoreReason::kNone;
  InboundMessage& m = d.message;
  m.platform = kPlatform;
  m.workspace = event.team_id;
  m.channel = event.channel;
  // In a channel the reply always goes in a thread: the existing one, or one opened on this
  // message. In a DM a root message is answered in the main line.
  m.thread = !event.thread_ts.empty() ? event.thread_ts : (is_direct ? "" : event.ts);
  // A thread opened on this message is a new conversation: nothing to remember in it yet.
  m.starts_conversation = event.thread_ts.empty() && !is_direct;
  m.user = std::move(user);
  m.text = std::move(text);
  m.mentions_bot = mentions;
  m.is_direct = is_direct;
  // The message identity, not Slack's event_id: app_mention and message deliveries of one
  // mention have different event_ids but the same channel:ts, so the router's de-duplication by
  // event id lets exactly one of them through. Retries keep channel:ts as well.
  m.event_id = DedupeKey(event);
  m.timestamp_ms = TsToMillis(event.ts);
  return d;
}

std::string NormalizeText(std::string_view raw, const std::string& bot_user_id,
                          const UserNames* names) {
  std::string out;
  size_t i = 0;
  while (i < raw.size()) {
    const size_t open = raw.find('<', i);
    const size_t close = open == std::string_view::npos ? open : raw.find('>', open + 1);
    if (open == std::string_view::npos || close == std::string_view::npos) {
      AppendUnescaped(out, raw.substr(i));
      break;
    }
    AppendUnescaped(out, raw.substr(i, open - i));
    i = close + 1;
    const std::string_view inner = raw.substr(open + 1, close - open - 1);
    const size_t bar = inner.find('|');
    const std::string_view target = inner.substr(0, bar);
    const std::string_view label =
        bar == std::string_view::npos ? std::string_view() : inner.substr(bar + 1);
    if (target.size() > 1 && target[0] == '@') {
      const std::string id(target.substr(1));
      if (!bot_user_id.empty() && id == bot_user_id) {
        if (i < raw.size() && (raw[i] == ':' || raw[i] == ',')) ++i;
        while (i < raw.size() && IsSpace(raw[i])) ++i;
        continue;
      }
      auto it = names != nullptr ? names->find(id) : UserNames::const_iterator();
      if (names != nullptr && it != names->end() && !it->second.empty()) {
        out += "@" + it->second;
      } else if (!label.empty()) {
        out += "@" + Unescaped(label);
      } else {
        out += "@" + id;
      }
    } else if (target.size() > 1 && target[0] == '#') {
      out += "#" + Unescaped(label.empty() ? target.substr(1) : label);
    } else if (target.size() > 1 && target[0] == '!') {
      const std::string_view cmd = target.substr(1);
      if (!label.empty()) {  // <!subteam^S1|@team>, <!date^…|fallback>, <!here|here>
        const std::string l = Unescaped(label);
        const bool special = cmd == "here" || cmd == "channel" || cmd == "everyone";
        out += special && l[0] != '@' ? "@" + l : l;
      } else {
        out += "@" + Unescaped(cmd.substr(0, cmd.find('^')));
      }
    } else if (!target.empty()) {  // a link
      const std::string url = Unescaped(target);
      const std::string l = Unescaped(label);
      if (l.empty() || l == url || "mailto:" + l == url) {
        out += l.empty() ? url : l;
      } else {
        out += l + " (" + url + ")";
      }
    } else {
      // "<>" or "<|x>": not Slack markup; keep as written.
      out.push_back('<');
      AppendUnescaped(out, inner);
      out.push_back('>');
    }
  }
  return std::string(Trim(out));
}

// ---------------------------------------------------------------------------------------------

namespace {

std::string CitationText(const Citation& c) {
  std::string title = c.title.empty() ? c.source : c.title;
  std::string label = c.section.empty() ? title : title + " — " + c.section;
  label.resize(Utf8CutPoint(label, 2000));  // keeps the element well under 3000
  if (c.url.empty()) return EscapeMrkdwn(label);
  std::string url;
  for (char ch : c.url) {
    if (ch == '|') {
      url += "%7C";
    } else if (ch == ' ') {
      url += "%20";
    } else {
      url.push_back(ch);
    }
  }
  if (url.size() > 900) return EscapeMrkdwn(label);  // an absurd URL: show the title only
  return "<" + EscapeMrkdwn(url) + "|" + EscapeMrkdwn(label) + ">";
}

// The bodies are written as JSON text straight away (core/json_write.h): they are built for every
// reply, and a tree of them cost a tenth of the reply path. Blocks are appended to `out`.

void AppendSection(std::string& out, std::string_view mrkdwn) {
  out += R"({"type":"section","text":{"type":"mrkdwn","text":)";
  AppendJsonString(out, mrkdwn);
  out += "}}";
}

void AppendButton(std::string& out, std::string_view action_id, std::string_view label,
                  std::string_view value, std::string_view style = {}) {
  JsonObjectWriter button(out);
  button.Field("type", "button").Field("action_id", action_id);
  JsonObjectWriter text(button.Key("text"));
  text.Field("type", "plain_text").Field("text", label).Field("emoji", true);
  text.Finish();
  button.Field("value", value);
  if (!style.empty()) button.Field("style", style);
  button.Finish();
}

void AppendFeedbackActions(std::string& out, const std::string& message_id) {
  out += R"({"type":"actions","block_id":"parley_feedback","elements":[)";
  AppendButton(out, kFeedbackHelpfulAction, "Helpful", message_id);
  out.push_back(',');
  AppendButton(out, kFeedbackUnhelpfulAction, "Not helpful", message_id);
  out += "]}";
}

constexpr size_t kMaxButtons = 25;      // Slack's limit per actions block
constexpr size_t kMaxButtonLabel = 75;  // bytes of a button's plain_text
constexpr size_t kMaxButtonValue = 2000;

// The actions block of m.actions, or "" when none is usable.
std::string MessageActions(const std::vector<MessageAction>& actions) {
  std::string out = R"({"type":"actions","block_id":"parley_actions","elements":[)";
  size_t buttons = 0;
  for (const MessageAction& a : actions) {
    if (buttons == kMaxButtons) break;
    if (a.id.empty() || a.label.empty()) continue;
    if (buttons++ > 0) out.push_back(',');
    AppendButton(out, std::string(kMessageActionPrefix) + std::string(Utf8Prefix(a.id, 200)),
                 Utf8Prefix(a.label, kMaxButtonLabel), Utf8Prefix(a.value, kMaxButtonValue),
                 a.style == "primary" || a.style == "danger" ? a.style : std::string());
  }
  if (buttons == 0) return "";
  out += "]}";
  return out;
}

// Appends the body's members after blocks: unfurl_links, thread_ts, metadata.
void FinishBody(JsonObjectWriter& body, const std::string& thread_ts, const std::string& id,
                const char* event_type, int64_t part) {
  body.Field("unfurl_links", false);
  if (!thread_ts.empty()) body.Field("thread_ts", thread_ts);
  if (!id.empty()) {
    JsonObjectWriter metadata(body.Key("metadata"));
    metadata.Field("event_type", event_type);
    JsonObjectWriter payload(metadata.Key("event_payload"));
    payload.Field("message_id", id);
    if (part >= 0) payload.Field("part", part);
    payload.Finish();
    metadata.Finish();
  }
  body.Finish();
}

std::vector<json> ParseEach(const std::vector<std::string>& texts) {
  std::vector<json> out;
  out.reserve(texts.size());
  for (const std::string& text : texts) out.push_back(json::parse(text));
  return out;
}

// Undoes the entity escaping of Slack's mention markup (<!here>, <!subteam^S1|@team>, <@U1>,
// <#C1>) in mrkdwn made by MarkdownToMrkdwn, for texts parley wrote itself (keep_mentions).
std::string RestoreMentions(const std::string& mrkdwn) {
  std::string out;
  out.reserve(mrkdwn.size());
  size_t i = 0;
  while (i < mrkdwn.size()) {
    if (mrkdwn.compare(i, 4, "&lt;") == 0 && i + 5 < mrkdwn.size() &&
        (mrkdwn[i + 4] == '!' || mrkdwn[i + 4] == '@' || mrkdwn[i + 4] == '#')) {
      size_t j = i + 5;
      while (j < mrkdwn.size() && j - i < 200 &&
             (std::isalnum(static_cast<unsigned char>(mrkdwn[j])) || mrkdwn[j] == '^' ||
              mrkdwn[j] == '|' || mrkdwn[j] == '@' || mrkdwn[j] == '.' || mrkdwn[j] == '_' ||
              mrkdwn[j] == '-')) {
        ++j;
      }
      if (j > i + 5 && mrkdwn.compare(j, 4, "&gt;") == 0) {
        out += "<" + mrkdwn.substr(i + 4, j - i - 4) + ">";
        i = j + 4;
        continue;
      }
    }
    out.push_back(mrkdwn[i++]);
  }
  return out;
}

}  // namespace

std::vector<std::string> BuildPostMessageText(const OutboundMessage& m, const std::string& channel,
                                              const std::string& thread_ts,
                                              bool feedback_buttons) {
  std::string mrkdwn = MarkdownToMrkdwn(m.text);
  if (m.keep_mentions) mrkdwn = RestoreMentions(mrkdwn);
  std::vector<std::string> parts = SplitForSlack(mrkdwn, kMessageLimit);
  if (parts.empty()) parts.emplace_back("…");  // text must never be empty
  std::vector<std::string> bodies;
  bodies.reserve(parts.size());
  for (size_t p = 0; p < parts.size(); ++p) {
    const bool last = p + 1 == parts.size();
    std::string out;
    out.reserve(parts[p].size() * 2 + 512);
    JsonObjectWriter body(out);
    body.Field("channel", channel).Field("text", parts[p]);
    body.Key("blocks").push_back('[');
    size_t blocks = 0;
    auto next_block = [&]() -> std::string& {
      if (blocks++ > 0) out.push_back(',');
      return out;
    };
    for (const std::string& section : SplitForSlack(parts[p], kSectionLimit)) {
      AppendSection(next_block(), section);
    }
    if (last) {
      const std::string actions = MessageActions(m.actions);
      const size_t reserved = (feedback_buttons ? 1 : 0) + (actions.empty() ? 0 : 1);
      std::string context;  // the context block being filled
      size_t elements = 0;
      for (const Citation& c : m.citations) {
        if (blocks + reserved >= kMaxBlocks) break;
        context += elements == 0 ? R"({"type":"context","elements":[)" : ",";
        context += R"({"type":"mrkdwn","text":)";
        AppendJsonString(context, CitationText(c));
        context.push_back('}');
        if (++elements == kContextElements) {
          next_block() += context + "]}";
          context.clear();
          elements = 0;
        }
      }
      if (elements > 0 && blocks + reserved < kMaxBlocks) next_block() += context + "]}";
      if (!actions.empty()) next_block() += actions;
      if (feedback_buttons) AppendFeedbackActions(next_block(), m.id);
    }
    out.push_back(']');
    FinishBody(body, thread_ts, m.id, kReplyEventType, static_cast<int64_t>(p));
    bodies.push_back(std::move(out));
  }
  return bodies;
}

std::vector<json> BuildPostMessage(const OutboundMessage& m, const std::string& channel,
                                   const std::string& thread_ts, bool feedback_buttons) {
  return ParseEach(BuildPostMessageText(m, channel, thread_ts, feedback_buttons));
}

json BuildPartialMessage(const OutboundMessage& m, const std::string& channel,
                         const std::string& thread_ts) {
  const std::string marker = kPartialMarker;
  std::vector<std::string> parts =
      SplitForSlack(MarkdownToMrkdwn(m.text), kMessageLimit - marker.size());
  std::string first = parts.empty() ? std::string() : std::move(parts.front());
  std::vector<std::string> sections = SplitForSlack(first, kSectionLimit - marker.size());
  if (sections.empty()) sections.emplace_back();
  sections.back() += marker;
  std::string out;
  JsonObjectWriter body(out);
  body.Field("channel", channel).Field("text", first + marker);
  body.Key("blocks").push_back('[');
  for (size_t i = 0; i < sections.size(); ++i) {
    if (i > 0) out.push_back(',');
    AppendSection(out, sections[i]);
  }
  out.push_back(']');
  FinishBody(body, thread_ts, m.id, kPartialEventType, /*part=*/-1);
  return json::parse(out);
}

json UpdateBody(json post_body, const std::string& ts) {
  post_body.erase("thread_ts");
  post_body.erase("unfurl_links");
  post_body["ts"] = ts;
  return post_body;
}

// ---------------------------------------------------------------------------------------------

Result<SlashCommand> ParseSlashCommand(const json& payload) {
  if (!payload.is_object()) return Status::InvalidArgument("slack slash command: not an object");
  SlashCommand c;
  struct {
    const char* key;
    std::string* out;
    bool required;
  } fields[] = {{"command", &c.command, true},       {"text", &c.text, false},
                {"user_id", &c.user_id, true},       {"channel_id", &c.channel_id, true},
                {"team_id", &c.team_id, false},      {"response_url", &c.response_url, false},
                {"trigger_id", &c.trigger_id, false}};
  for (const auto& f : fields) {
    const Field r = ReadString(payload, f.key, f.out);
    if (r == Field::kWrongType) return WrongType("slack slash command", f.key);
    if (f.required && f.out->empty()) {
      return Status::InvalidArgument(std::string("slack slash command: no '") + f.key + "'");
    }
  }
  return c;
}

SlashAction ParseSlashText(std::string_view text) {
  text = Trim(text);
  SlashAction a;
  if (text.empty()) return a;  // help
  size_t end = 0;
  while (end < text.size() && !IsSpace(text[end])) ++end;
  const std::string verb = Lower(text.substr(0, end));
  const std::string rest(Trim(text.substr(end)));
  if (verb == "help" || verb == "-h" || verb == "--help") return a;
  if (verb == "ask") {
    if (!rest.empty()) a = {SlashAction::Kind::kAsk, rest};
    return a;
  }
  if (verb == "forget") return {SlashAction::Kind::kForget, ""};
  if (verb == "human") return {SlashAction::Kind::kHuman, rest};
  if (verb[0] == '-') return {SlashAction::Kind::kUnknown, std::string(text.substr(0, end))};
  return {SlashAction::Kind::kAsk, std::string(text)};
}

Result<BlockAction> ParseBlockActions(const json& payload) {
  const char* what = "slack block_actions";
  if (!payload.is_object()) return Status::InvalidArgument("slack interactive: not an object");
  std::string type;
  if (ReadString(payload, "type", &type) != Field::kOk || type != "block_actions") {
    return Status::InvalidArgument("slack interactive: not a block_actions payload");
  }
  BlockAction a;
  const json* user = ObjectAt(payload, "user");
  if (user == nullptr || ReadString(*user, "id", &a.user_id) != Field::kOk || a.user_id.empty()) {
    return Status::InvalidArgument(std::string(what) + ": no 'user.id'");
  }
  auto actions = payload.find("actions");
  if (actions == payload.end() || !actions->is_array() || actions->empty() ||
      !actions->front().is_object()) {
    return Status::InvalidArgument(std::string(what) + ": no 'actions'");
  }
  const json& first = actions->front();
  if (ReadString(first, "action_id", &a.action_id) != Field::kOk || a.action_id.empty()) {
    return Status::InvalidArgument(std::string(what) + ": no 'action_id'");
  }
  if (ReadString(first, "value", &a.value) == Field::kWrongType) return WrongType(what, "value");
  if (const json* team = ObjectAt(payload, "team")) a.team_id = StringOr(*team, "id");
  if (const json* ch = ObjectAt(payload, "channel")) a.channel_id = StringOr(*ch, "id");
  if (const json* msg = ObjectAt(payload, "message")) {
    a.message_ts = StringOr(*msg, "ts");
    a.thread_ts = StringOr(*msg, "thread_ts");
  }
  if (const json* container = ObjectAt(payload, "container")) {
    if (a.message_ts.empty()) a.message_ts = StringOr(*container, "message_ts");
    if (a.thread_ts.empty()) a.thread_ts = StringOr(*container, "thread_ts");
    if (a.channel_id.empty()) a.channel_id = StringOr(*container, "channel_id");
  }
  if (ReadString(payload, "response_url", &a.response_url) == Field::kWrongType) {
    return WrongType(what, "response_url");
  }
  (void)ReadString(payload, "trigger_id", &a.trigger_id);
  (void)ReadString(first, "action_ts", &a.action_ts);
  return a;
}

bool IsMessageAction(const BlockAction& action) {
  return action.action_id.compare(0, sizeof(kMessageActionPrefix) - 1, kMessageActionPrefix) == 0;
}

InboundMessage MessageFromAction(const BlockAction& action, const std::string& fallback_id) {
  InboundMessage m;
  m.platform = kPlatform;
  m.workspace = action.team_id;
  m.channel = action.channel_id;
  m.is_direct = !action.channel_id.empty() && action.channel_id[0] == 'D';
  m.thread = !action.thread_ts.empty() ? action.thread_ts
                                       : (m.is_direct ? std::string() : action.message_ts);
  m.user = action.user_id;
  m.text = action.value;
  m.mentions_bot = true;
  const std::string& click = !action.action_ts.empty()
                                 ? action.action_ts
                                 : (!action.trigger_id.empty() ? action.trigger_id : fallback_id);
  m.event_id = "action:" + action.channel_id + ":" + action.message_ts + ":" + click;
  m.timestamp_ms = TsToMillis(action.action_ts);
  return m;
}

}  // namespace parley::slack
