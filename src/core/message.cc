#include "core/message.h"

#include <tuple>

#include <nlohmann/json.hpp>

#include "core/json_write.h"

namespace parley {

std::string EscapeKeyPart(const std::string& part) {
  static const char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(part.size());
  for (unsigned char c : part) {
    if (c == '/' || c == '%' || c < 0x20 || c == 0x7f) {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 0xf]);
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  return out;
}

std::string ConversationKey::Encode() const {
  return EscapeKeyPart(platform) + "/" + EscapeKeyPart(channel) + "/" + EscapeKeyPart(thread);
}

std::string ConversationKey::Display() const {
  std::string s = platform + ":" + channel;
  if (!thread.empty()) s += "#" + thread;
  return s;
}

bool ConversationKey::operator<(const ConversationKey& o) const {
  return std::tie(platform, channel, thread) < std::tie(o.platform, o.channel, o.thread);
}

void to_json(nlohmann::json& j, const Citation& c) {
  j = nlohmann::json{{"title", c.title}, {"source", c.source}, {"section", c.section},
                     {"url", c.url}};
}

void from_json(const nlohmann::json& j, Citation& c) {
  c.title = j.value("title", "");
  c.source = j.value("source", "");
  c.section = j.value("section", "");
  c.url = j.value("url", "");
}

void to_json(nlohmann::json& j, const InboundMessage& m) {
  j = nlohmann::json{{"platform", m.platform},
                     {"workspace", m.workspace},
                     {"channel", m.channel},
                     {"thread", m.thread},
                     {"user", m.user},
                     {"user_name", m.user_name},
                     {"text", m.text},
                     {"mentions_bot", m.mentions_bot},
                     {"is_direct", m.is_direct},
                     {"event_id", m.event_id},
                     {"timestamp_ms", m.timestamp_ms},
                     {"reply_route", m.reply_route}};
  if (m.request_human) j["request_human"] = true;
  if (m.starts_conversation) j["starts_conversation"] = true;
  if (m.event_id_minted) j["event_id_minted"] = true;
}

void to_json(nlohmann::json& j, const MessageAction& a) {
  j = nlohmann::json{{"id", a.id}, {"label", a.label}, {"value", a.value}};
  if (!a.style.empty()) j["style"] = a.style;
}

void from_json(const nlohmann::json& j, MessageAction& a) {
  a.id = j.value("id", "");
  a.label = j.value("label", "");
  a.value = j.value("value", "");
  a.style = j.value("style", "");
}

void from_json(const nlohmann::json& j, InboundMessage& m) {
  m.platform = j.value("platform", "");
  m.workspace = j.value("workspace", "");
  m.channel = j.value("channel", "");
  m.thread = j.value("thread", "");
  m.user = j.value("user", "");
  m.user_name = j.value("user_name", "");
  m.text = j.value("text", "");
  m.mentions_bot = j.value("mentions_bot", false);
  m.is_direct = j.value("is_direct", false);
  m.event_id = j.value("event_id", "");
  m.timestamp_ms = j.value("timestamp_ms", int64_t{0});
  m.reply_route = j.value("reply_route", "");
  m.request_human = j.value("request_human", false);
  m.event_id_minted = j.value("event_id_minted", false);
  m.starts_conversation = j.value("starts_conversation", false);
}

void to_json(nlohmann::json& j, const OutboundMessage& m) {
  j = nlohmann::json{{"id", m.id},
                     {"platform", m.conversation.platform},
                     {"channel", m.conversation.channel},
                     {"thread", m.conversation.thread},
                     {"text", m.text},
                     {"citations", m.citations},
                     {"confidence", m.confidence},
                     {"escalated", m.escalated},
                     {"in_reply_to", m.in_reply_to},
                     {"reply_route", m.reply_route},
                     {"turn_id", m.turn_id}};
  if (m.silent) j["silent"] = true;
  if (!m.actions.empty()) j["actions"] = m.actions;
  if (m.keep_mentions) j["keep_mentions"] = true;
}

void from_json(const nlohmann::json& j, OutboundMessage& m) {
  m.id = j.value("id", "");
  m.conversation.platform = j.value("platform", "");
  m.conversation.channel = j.value("channel", "");
  m.conversation.thread = j.value("thread", "");
  m.text = j.value("text", "");
  m.citations = j.value("citations", std::vector<Citation>{});
  m.confidence = j.value("confidence", 0.0);
  m.escalated = j.value("escalated", false);
  m.in_reply_to = j.value("in_reply_to", "");
  m.reply_route = j.value("reply_route", "");
  m.turn_id = j.value("turn_id", "");
  m.silent = j.value("silent", false);
  m.actions = j.value("actions", std::vector<MessageAction>{});
  m.keep_mentions = j.value("keep_mentions", false);
}

void AppendJsonArray(std::string& out, const std::vector<Citation>& citations) {
  out.push_back('[');
  for (size_t i = 0; i < citations.size(); ++i) {
    if (i > 0) out.push_back(',');
    const Citation& c = citations[i];
    JsonObjectWriter w(out);
    w.Field("title", c.title).Field("source", c.source).Field("section", c.section);
    w.Field("url", c.url);
    w.Finish();
  }
  out.push_back(']');
}

std::string ToJsonText(const OutboundMessage& m) {
  std::string out;
  out.reserve(256 + m.text.size() + m.citations.size() * 128);
  JsonObjectWriter w(out);
  w.Field("id", m.id)
      .Field("platform", m.conversation.platform)
      .Field("channel", m.conversation.channel)
      .Field("thread", m.conversation.thread)
      .Field("text", m.text);
  AppendJsonArray(w.Key("citations"), m.citations);
  w.Field("confidence", m.confidence)
      .Field("escalated", m.escalated)
      .Field("in_reply_to", m.in_reply_to)
      .Field("reply_route", m.reply_route)
      .Field("turn_id", m.turn_id);
  if (m.silent) w.Field("silent", true);
  if (!m.actions.empty()) {
    std::string& a = w.Key("actions");
    a.push_back('[');
    for (size_t i = 0; i < m.actions.size(); ++i) {
      if (i > 0) a.push_back(',');
      const MessageAction& action = m.actions[i];
      JsonObjectWriter aw(a);
      aw.Field("id", action.id).Field("label", action.label).Field("value", action.value);
      if (!action.style.empty()) aw.Field("style", action.style);
      aw.Finish();
    }
    a.push_back(']');
  }
  if (m.keep_mentions) w.Field("keep_mentions", true);
  w.Finish();
  return out;
}

}  // namespace parley
