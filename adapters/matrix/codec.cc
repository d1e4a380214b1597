#include "adapters/matrix/codec.h"

#include <algorithm>
#include <cctype>

#include "adapters/matrix/html.h"

namespace parley::matrix {
namespace {

using nlohmann::json;

std::string Str(const json& j, const char* key) {
  if (!j.is_object()) return "";
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : "";
}

const json& Obj(const json& j, const char* key) {
  static const json kNull;
  if (!j.is_object()) return kNull;
  auto it = j.find(key);
  return it != j.end() && it->is_object() ? *it : kNull;
}

const json& Arr(const json& j, const char* key) {
  static const json kNull;
  if (!j.is_object()) return kNull;
  auto it = j.find(key);
  return it != j.end() && it->is_array() ? *it : kNull;
}

std::vector<RoomEvent> Events(const json& container) {
  std::vector<RoomEvent> out;
  const json& events = Arr(container, "events");
  if (!events.is_array()) return out;
  for (const json& e : events) {
    if (!e.is_object() || Str(e, "type").empty()) continue;
    out.push_back(ParseEvent(e));
  }
  return out;
}

std::string Lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

bool IsNameChar(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '_' || c == '-' || c == '.' ||
         (static_cast<unsigned char>(c) >= 0x80);
}

// Position of `needle` in `hay` (both lowercased) as a whole word, or npos.
size_t FindWord(const std::string& hay, const std::string& needle) {
  if (needle.empty()) return std::string::npos;
  size_t pos = 0;
  while ((pos = hay.find(needle, pos)) != std::string::npos) {
    const bool left = pos == 0 || !IsNameChar(hay[pos - 1]) || hay[pos - 1] == '@';
    const size_t end = pos + needle.size();
    const bool right = end >= hay.size() || !IsNameChar(hay[end]) ||
                       (hay[end] == '.' && (end + 1 >= hay.size() || hay[end + 1] == ' '));
    if (left && right) return pos;
    pos += 1;
  }
  return std::string::npos;
}

// Removes a leading mention of the bot ("@parley:x.org: ", "Parley, ", "parley ") from text.
std::string StripLeadingMention(const std::string& text, const BotIdentity& bot) {
  const std::string lower = Lower(text);
  std::vector<std::string> names = {Lower(bot.user_id)};
  if (!bot.display_name.empty()) names.push_back(Lower(bot.display_name));
  names.push_back("@" + Lower(bot.Localpart()));
  names.push_back(Lower(bot.Localpart()));
  for (const std::string& name : names) {
    if (name.empty() || lower.compare(0, name.size(), name) != 0) continue;
    size_t end = name.size();
    if (end < lower.size() && IsNameChar(lower[end]) && lower[end] != '.') continue;
    while (end < text.size() && (text[end] == ':' || text[end] == ',')) ++end;
    while (end < text.size() && std::isspace(static_cast<unsigned char>(text[end]))) ++end;
    return text.substr(end);
  }
  return text;
}

std::string TrimCopy(std::string_view s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return std::string(s.substr(b, e - b));
}

// Length of the longest prefix of s (at most limit bytes) that does not cut a UTF-8 sequence.
size_t Utf8Cut(std::string_view s, size_t limit) {
  if (limit >= s.size()) return s.size();
  size_t cut = limit;
  while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) --cut;
  return cut;
}

std::string CitationsMarkdown(const std::vector<Citation>& citations) {
  std::string out;
  int n = 0;
  for (const Citation& c : citations) {
    std::string title = c.title.empty() ? c.source : c.title;
    if (!c.section.empty() && c.section != title) title += " › " + c.section;
    out += std::to_string(++n) + ". ";
    if (!c.url.empty()) {
      std::string escaped;
      for (char ch : title) {
        if (ch == '[' || ch == ']' || ch == '\\') escaped += '\\';
        escaped += ch;
      }
      out += "[" + escaped + "](" + c.url + ")";
    } else {
      out += title;
    }
    out += "\n";
  }
  return out;
}

std::string CitationsPlain(const std::vector<Citation>& citations) {
  std::string out;
  int n = 0;
  for (const Citation& c : citations) {
    std::string title = c.title.empty() ? c.source : c.title;
    if (!c.section.empty() && c.section != title) title += " › " + c.section;
    out += std::to_string(++n) + ". " + title;
    if (!c.url.empty()) out += " (" + c.url + ")";
    out += "\n";
  }
  return out;
}

json Relation(const OutboundMessage& m, const ReplyOptions& options) {
  const std::string& thread = m.conversation.thread;
  if (!thread.empty() && options.threads) {
    return json{{"rel_type", "m.thread"},
                {"event_id", thread},
                {"is_falling_back", true},
                {"m.in_reply_to", {{"event_id", m.in_reply_to.empty() ? thread : m.in_reply_to}}}};
  }
  if (!m.in_reply_to.empty()) return json{{"m.in_reply_to", {{"event_id", m.in_reply_to}}}};
  if (!thread.empty()) {
    return json{{"rel_type", "m.thread"},
                {"event_id", thread},
                {"is_falling_back", true},
                {"m.in_reply_to", {{"event_id", thread}}}};
  }
  return json();
}

json Content(const std::string& msgtype, const std::string& body, const std::string& html,
             const json& relation) {
  json c{{"msgtype", msgtype},
         {"body", body},
         {"format", "org.matrix.custom.html"},
         {"formatted_body", html},
         {"m.mentions", json::object()}};
  if (!relation.is_null()) c["m.relates_to"] = relation;
  return c;
}

// Matrix user ids ("@local:server") and "@room" in parley's own text (keep_mentions).
json MentionsIn(const std::string& text) {
  json user_ids = json::array();
  bool room = false;
  auto local_char = [](char c) {
    return std::islower(static_cast<unsigned char>(c)) ||
           std::isdigit(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '=' ||
           c == '-' || c == '/' || c == '+';
  };
  auto server_char = [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == ':' ||
           c == '[' || c == ']';
  };
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '@' || (i > 0 && IsNameChar(text[i - 1]))) continue;
    if (text.compare(i, 5, "@room") == 0 && (i + 5 >= text.size() || !IsNameChar(text[i + 5]))) {
      room = true;
      continue;
    }
    size_t j = i + 1;
    while (j < text.size() && local_char(text[j])) ++j;
    if (j == i + 1 || j >= text.size() || text[j] != ':') continue;
    size_t k = j + 1;
    while (k < text.size() && server_char(text[k])) ++k;
    while (k > j + 1 && (text[k - 1] == '.' || text[k - 1] == ':')) --k;  // sentence punctuation
    if (k == j + 1) continue;
    const std::string id = text.substr(i, k - i);
    if (std::find(user_ids.begin(), user_ids.end(), id) == user_ids.end()) user_ids.push_back(id);
  }
  json mentions = json::object();
  if (!user_ids.empty()) mentions["user_ids"] = std::move(user_ids);
  if (room) mentions["room"] = true;
  return mentions;
}

// The actions of a message (buttons elsewhere) as text: Matrix has no buttons, so the user sends
// the action's value as a message in the thread.
std::string ActionsMarkdown(const std::vector<MessageAction>& actions) {
  std::string out = "Reply with:";
  for (const MessageAction& a : actions) out += "\n- `" + a.value + "`: " + a.label;
  return out;
}

size_t Bytes(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace).size();
}

}  // namespace

RoomEvent ParseEvent(const json& e) {
  RoomEvent ev;
  ev.event_id = Str(e, "event_id");
  ev.sender = Str(e, "sender");
  ev.type = Str(e, "type");
  if (e.is_object()) {
    auto sk = e.find("state_key");
    if (sk != e.end() && sk->is_string()) ev.state_key = sk->get<std::string>();
    auto content = e.find("content");
    if (content != e.end() && content->is_object()) ev.content = *content;
    auto us = e.find("unsigned");
    if (us != e.end() && us->is_object()) ev.unsigned_data = *us;
    auto ts = e.find("origin_server_ts");
    if (ts != e.end() && ts->is_number_integer()) ev.origin_server_ts = ts->get<int64_t>();
    ev.redacts = Str(e, "redacts");
    if (ev.redacts.empty()) ev.redacts = Str(ev.content, "redacts");
  }
  return ev;
}

Result<SyncResponse> ParseSync(const json& j) {
  if (!j.is_object()) return Status::InvalidArgument("sync response is not an object");
  SyncResponse r;
  r.next_batch = Str(j, "next_batch");
  if (r.next_batch.empty()) return Status::InvalidArgument("sync response without next_batch");
  const json& rooms = Obj(j, "rooms");
  const json& join = Obj(rooms, "join");
  if (join.is_object()) {
    for (auto it = join.begin(); it != join.end(); ++it) {
      JoinedRoom room;
      room.room_id = it.key();
      room.state = Events(Obj(it.value(), "state"));
      const json& timeline = Obj(it.value(), "timeline");
      room.timeline = Events(timeline);
      auto limited = timeline.is_object() ? timeline.find("limited") : json::const_iterator();
      room.limited = timeline.is_object() && limited != timeline.end() && limited->is_boolean() &&
                     limited->get<bool>();
      room.prev_batch = Str(timeline, "prev_batch");
      const json& summary = Obj(it.value(), "summary");
      if (summary.is_object()) {
        auto count = summary.find("m.joined_member_count");
        if (count != summary.end() && count->is_number_integer()) {
          room.joined_member_count = count->get<int64_t>();
        }
      }
      r.join.push_back(std::move(room));
    }
  }
  const json& invite = Obj(rooms, "invite");
  if (invite.is_object()) {
    for (auto it = invite.begin(); it != invite.end(); ++it) {
      InvitedRoom room;
      room.room_id = it.key();
      room.invite_state = Events(Obj(it.value(), "invite_state"));
      r.invite.push_back(std::move(room));
    }
  }
  const json& leave = Obj(rooms, "leave");
  if (leave.is_object()) {
    for (auto it = leave.begin(); it != leave.end(); ++it) r.leave.push_back(it.key());
  }
  for (const RoomEvent& e : Events(Obj(j, "account_data"))) {
    if (e.type != "m.direct") continue;
    r.has_direct = true;
    for (auto it = e.content.begin(); it != e.content.end(); ++it) {
      if (!it->is_array()) continue;
      for (const json& room : *it) {
        if (room.is_string()) r.direct_rooms.insert(room.get<std::string>());
      }
    }
  }
  return r;
}

Result<MessagesPage> ParseMessages(const json& j) {
  if (!j.is_object() || !j.contains("chunk") || !j["chunk"].is_array()) {
    return Status::InvalidArgument("messages response without chunk");
  }
  MessagesPage page;
  for (const json& e : j["chunk"]) {
    if (e.is_object() && !Str(e, "type").empty()) page.chunk.push_back(ParseEvent(e));
  }
  page.end = Str(j, "end");
  return page;
}

json BuildFilter(int timeline_limit) {
  return json{{"presence", {{"not_types", {"*"}}}},
              {"account_data", {{"types", {"m.direct"}}}},
              {"room",
               {{"timeline", {{"limit", std::max(1, timeline_limit)}, {"lazy_load_members", true}}},
                {"state", {{"lazy_load_members", true}}},
                {"ephemeral", {{"not_types", {"m.receipt", "m.typing"}}}},
                {"account_data", {{"not_types", {"*"}}}}}}};
}

std::string ServerOf(const std::string& user_id) {
  const size_t colon = user_id.find(':');
  if (colon == std::string::npos || colon + 1 >= user_id.size()) return "";
  return user_id.substr(colon + 1);
}

std::string BotIdentity::Localpart() const {
  const size_t colon = user_id.find(':');
  const size_t start = !user_id.empty() && user_id[0] == '@' ? 1 : 0;
  return user_id.substr(start, colon == std::string::npos ? std::string::npos : colon - start);
}

std::string BotIdentity::ServerName() const { return ServerOf(user_id); }

const char* IgnoreReasonName(IgnoreReason reason) {
  switch (reason) {
    case IgnoreReason::kNone:
      return "none";
    case IgnoreReason::kOwnEvent:
      return "own_event";
    case IgnoreReason::kNotMessage:
      return "not_message";
    case IgnoreReason::kNotice:
      return "notice";
    case IgnoreReason::kEdit:
      return "edit";
    case IgnoreReason::kRedacted:
      return "redacted";
    case IgnoreReason::kEncrypted:
      return "encrypted";
    case IgnoreReason::kEmpty:
      return "empty";
    case IgnoreReason::kNotAddressed:
      return "not_addressed";
  }
  return "unknown";
}

std::string ThreadRootOf(const RoomEvent& event) {
  const json& rel = Obj(event.content, "m.relates_to");
  if (Str(rel, "rel_type") == "m.thread") return Str(rel, "event_id");
  return "";
}

bool MentionsBot(const json& content, const BotIdentity& bot) {
  if (content.is_object() && content.contains("m.mentions")) {
    const json& ids = Arr(Obj(content, "m.mentions"), "user_ids");
    if (!ids.is_array()) return false;
    for (const json& id : ids) {
      if (id.is_string() && id.get<std::string>() == bot.user_id) return true;
    }
    return false;
  }
  const std::string body = Lower(StripReplyFallback(Str(content, "body")));
  if (FindWord(body, Lower(bot.user_id)) != std::string::npos) return true;
  if (FindWord(body, Lower(bot.Localpart())) != std::string::npos) return true;
  if (!bot.display_name.empty() && FindWord(body, Lower(bot.display_name)) != std::string::npos) {
    return true;
  }
  const std::string html = Lower(StripMxReply(Str(content, "formatted_body")));
  if (!html.empty()) {
    const std::string id = Lower(bot.user_id);
    std::string encoded = "%40" + id.substr(id.empty() ? 0 : 1);
    const size_t colon = encoded.find(':');
    std::string encoded_colon = encoded;
    if (colon != std::string::npos) encoded_colon.replace(colon, 1, "%3a");
    for (const std::string& pill :
         {"matrix.to/#/" + id, "matrix.to/#/" + encoded, "matrix.to/#/" + encoded_colon}) {
      const size_t pos = html.find(pill);
      if (pos == std::string::npos) continue;
      const size_t end = pos + pill.size();
      if (end >= html.size() || html[end] == '"' || html[end] == '\'' || html[end] == '?') {
        return true;
      }
    }
  }
  return false;
}

std::string StripReplyFallback(std::string_view body) {
  size_t pos = 0;
  bool quoted = false;
  while (pos < body.size() && body[pos] == '>') {
    quoted = true;
    const size_t nl = body.find('\n', pos);
    if (nl == std::string_view::npos) return "";
    pos = nl + 1;
  }
  if (!quoted) return std::string(body);
  if (pos < body.size() && body[pos] == '\n') ++pos;  // the blank line after the fallback
  return std::string(body.substr(pos));
}

std::string StripMxReply(std::string_view html) {
  const std::string lower = Lower(html.substr(0, std::min<size_t>(html.size(), 16)));
  if (lower.rfind("<mx-reply>", 0) != 0) return std::string(html);
  const std::string all = Lower(html);
  const size_t end = all.find("</mx-reply>");
  if (end == std::string::npos) return std::string(html);
  return std::string(html.substr(end + std::string("</mx-reply>").size()));
}

EventDecision Classify(const RoomEvent& event, const std::string& room_id, const BotIdentity& bot,
                       const RoomContext& room, const ClassifyOptions& options) {
  EventDecision d;
  auto ignore = [&d](IgnoreReason why) {
    d.handle = false;
    d.reason = why;
    return d;
  };
  if (event.sender == bot.user_id) return ignore(IgnoreReason::kOwnEvent);
  if (event.type == "m.room.redaction") return ignore(IgnoreReason::kRedacted);
  if (event.type == "m.room.encrypted") return ignore(IgnoreReason::kEncrypted);
  if (event.type != "m.room.message" || event.state_key.has_value() || event.event_id.empty()) {
    return ignore(IgnoreReason::kNotMessage);
  }
  if (event.unsigned_data.is_object() && event.unsigned_data.contains("redacted_because")) {
    return ignore(IgnoreReason::kRedacted);
  }
  const std::string msgtype = Str(event.content, "msgtype");
  if (msgtype.empty()) return ignore(IgnoreReason::kRedacted);  // redacted content is empty
  if (msgtype == "m.notice") return ignore(IgnoreReason::kNotice);
  const json& rel = Obj(event.content, "m.relates_to");
  if (Str(rel, "rel_type") == "m.replace") return ignore(IgnoreReason::kEdit);
  if (msgtype != "m.text" && msgtype != "m.emote") return ignore(IgnoreReason::kNotMessage);

  d.thread_root = ThreadRootOf(event);
  const bool mentioned = MentionsBot(event.content, bot);
  const bool followup = options.thread_followups && !d.thread_root.empty() && room.bot_in_thread;
  if (!room.direct && options.mention_required && !mentioned && !followup) {
    return ignore(IgnoreReason::kNotAddressed);
  }
  std::string text = TrimCopy(StripReplyFallback(Str(event.content, "body")));
  if (mentioned) text = TrimCopy(StripLeadingMention(text, bot));
  if (text.empty()) return ignore(IgnoreReason::kEmpty);

  InboundMessage& m = d.message;
  m.platform = kPlatform;
  m.workspace = bot.ServerName();
  m.channel = room_id;
  if (!d.thread_root.empty()) {
    m.thread = d.thread_root;
  } else if (options.threads && !room.direct) {
    m.thread = event.event_id;
  }
  m.user = event.sender;
  m.text = std::move(text);
  m.mentions_bot = mentioned;
  m.is_direct = room.direct;
  m.event_id = event.event_id;
  m.timestamp_ms = event.origin_server_ts;
  d.handle = true;
  return d;
}

std::vector<std::string> SplitText(std::string_view text, size_t limit) {
  std::vector<std::string> parts;
  limit = std::max<size_t>(limit, 16);
  std::string_view rest = text;
  while (!rest.empty()) {
    if (rest.size() <= limit) {
      parts.emplace_back(rest);
      break;
    }
    const size_t max = Utf8Cut(rest, limit);
    const std::string_view window = rest.substr(0, max);
    size_t cut = window.rfind("\n\n");
    if (cut == std::string_view::npos || cut < max / 2) cut = window.rfind('\n');
    if (cut == std::string_view::npos || cut < max / 2) cut = window.rfind(' ');
    if (cut == std::string_view::npos || cut == 0) cut = max;
    std::string piece = TrimCopy(rest.substr(0, cut));
    if (!piece.empty()) parts.push_back(std::move(piece));
    rest = rest.substr(cut);
    while (!rest.empty() && std::isspace(static_cast<unsigned char>(rest[0]))) {
      rest.remove_prefix(1);
    }
  }
  return parts;
}

std::vector<json> BuildReplyContents(const OutboundMessage& message, const ReplyOptions& options) {
  const json relation = Relation(message, options);
  const std::string msgtype = options.msgtype.empty() ? "m.notice" : options.msgtype;
  std::string text = message.text;
  if (text.empty() && message.citations.empty()) text = "…";
  std::vector<std::string> pieces = SplitText(text, options.max_bytes / 3);
  if (pieces.empty()) pieces.emplace_back();
  std::vector<json> parts;
  for (size_t i = 0; i < pieces.size(); ++i) {
    std::string md = pieces[i];
    std::string plain = pieces[i];
    if (i + 1 == pieces.size() && !message.actions.empty()) {
      md += (md.empty() ? "" : "\n\n") + ActionsMarkdown(message.actions);
      plain += (plain.empty() ? "" : "\n\n") + ActionsMarkdown(message.actions);
    }
    if (i + 1 == pieces.size() && !message.citations.empty()) {
      md += (md.empty() ? "" : "\n\n") + std::string("Sources:\n\n") +
            CitationsMarkdown(message.citations);
      plain += (plain.empty() ? "" : "\n\n") + std::string("Sources:\n") +
               CitationsPlain(message.citations);
    }
    json content = Content(msgtype, TrimCopy(plain), MarkdownToHtml(md), relation);
    if (Bytes(content) > options.max_bytes) {
      // Escaping blew it up (many '<' or '&'): split this piece finer.
      ReplyOptions finer = options;
      finer.max_bytes = options.max_bytes / 2;
      if (finer.max_bytes < 1024) {
        content["formatted_body"] = "";
        content.erase("format");
        content.erase("formatted_body");
        content["body"] = std::string(plain, 0, Utf8Cut(plain, options.max_bytes / 2));
        parts.push_back(std::move(content));
        continue;
      }
      OutboundMessage sub = message;
      sub.text = pieces[i];
      if (i + 1 != pieces.size()) sub.citations.clear();
      for (json& p : BuildReplyContents(sub, finer)) parts.push_back(std::move(p));
      continue;
    }
    parts.push_back(std::move(content));
  }
  // Mentions notify only from the first message, and only in parley's own text.
  if (message.keep_mentions && !parts.empty()) parts[0]["m.mentions"] = MentionsIn(message.text);
  return parts;
}

json BuildEditContent(const std::string& original_event_id, const json& content) {
  json new_content = content;
  new_content.erase("m.relates_to");
  new_content["m.mentions"] = json::object();
  json edit = new_content;
  edit["body"] = "* " + Str(content, "body");
  if (edit.contains("formatted_body"))
    edit["formatted_body"] = "* " + Str(content, "formatted_body");
  edit["m.new_content"] = std::move(new_content);
  edit["m.relates_to"] = json{{"rel_type", "m.replace"}, {"event_id", original_event_id}};
  edit["m.mentions"] = json::object();
  return edit;
}

}  // namespace parley::matrix
