#include "escalation/desk.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cctype>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>

#include "core/glob.h"
#include "store/keys.h"
#include "store/records.h"

namespace parley::escalation {
namespace {

constexpr int64_t kMinuteMs = 60'000;

int64_t MinutesMs(double minutes) { return static_cast<int64_t>(minutes * kMinuteMs + 0.5); }

// "30", "0.5", "1.25": minutes without trailing zeros.
std::string MinutesText(double minutes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f", minutes);
  std::string text = buf;
  while (!text.empty() && text.back() == '0') text.pop_back();
  if (!text.empty() && text.back() == '.') text.pop_back();
  return text;
}
constexpr int64_t kSeenTtlMs = 7LL * 24 * 3600 * 1000;
constexpr int64_t kSweepEveryMs = 3600 * 1000;
constexpr size_t kMaxMatchChars = 4000;
constexpr size_t kMaxEntryChars = 4000;
constexpr size_t kMaxSummaryChars = 1500;  // a model's summary beyond this is clipped
constexpr size_t kRecentTurns = 20;
constexpr size_t kRecentChars = 16000;

// Lower-cases ASCII, turns every other ASCII non-alphanumeric into a space, collapses spaces.
std::string Normalize(const std::string& text) {
  std::string out;
  bool space = true;
  for (unsigned char c : text) {
    if (c >= 0x80 || std::isalnum(c)) {
      out.push_back(static_cast<char>(std::tolower(c)));
      space = false;
    } else if (!space) {
      out.push_back(' ');
      space = true;
    }
  }
  while (!out.empty() && out.back() == ' ') out.pop_back();
  return out;
}

bool IEquals(const std::string& a, const std::string& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(a[i])) !=
        std::tolower(static_cast<unsigned char>(b[i]))) {
      return false;
    }
  }
  return true;
}

uint64_t Fnv1a(const std::string& s) {
  uint64_t h = 1469598103934665603ULL;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  return h;
}

// A deterministic message-id component for an event: safe characters only, bounded length.
std::string Sanitize(const std::string& s) {
  std::string out;
  bool changed = false;
  for (char c : s) {
    const bool ok =
        std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-' || c == ':';
    out.push_back(ok ? c : '_');
    changed |= !ok;
  }
  if (changed || out.size() > 80) {
    char hex[24];
    std::snprintf(hex, sizeof hex, "%016" PRIx64, Fnv1a(s));
    out = out.substr(0, 60) + "." + hex;
  }
  return out;
}

std::string EventSource(const std::string& platform, const std::string& event_id, int64_t now_ms) {
  if (event_id.empty()) return "t" + std::to_string(now_ms);
  return Sanitize(platform + "." + event_id);
}

std::string MsgId(const std::string& ticket, const std::string& source, const char* what) {
  return "esc-" + (ticket.empty() ? std::string("x") : ticket) + "-" + source + "-" + what;
}

int64_t IdNum(const std::string& id) { return std::strtoll(id.c_str(), nullptr, 10); }

std::string Clip(const std::string& s, size_t n) {
  if (s.size() <= n) return s;
  size_t cut = n;
  while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) --cut;  // UTF-8 boundary
  return s.substr(0, cut) + "…";
}

std::string Trim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
}

std::string Quote(const std::string& s) {
  std::string out = "> ";
  for (char c : s) {
    out.push_back(c);
    if (c == '\n') out += "> ";
  }
  return out;
}

std::string ReasonText(const Ticket& t) {
  std::string r;
  if (t.reason == "request") {
    r = "asked for a person";
  } else if (t.reason == "tool") {
    r = "the assistant handed over";
  } else if (t.reason == "low_confidence") {
    r = "low-confidence answers in a row";
  } else if (t.reason == "feedback") {
    r = "negative feedback on an answer";
  } else if (t.reason == "policy") {
    r = "policy: always handled by people";
  } else {
    r = t.reason;
  }
  if (!t.detail.empty()) r += " (\"" + Clip(t.detail, 200) + "\")";
  return r;
}

std::string DefaultSummary(const Ticket& t) {
  std::vector<const TranscriptEntry*> user;
  for (const TranscriptEntry& e : t.transcript) {
    if (e.role == "user") user.push_back(&e);
  }
  if (user.empty()) return "No messages from the user yet.";
  std::string s = "The user wrote " + std::to_string(user.size()) +
                  (user.size() == 1 ? " message" : " messages") + ", first: \"" +
                  Clip(user.front()->text, 160) + "\"";
  if (user.size() > 1) s += "; latest: \"" + Clip(user.back()->text, 160) + "\"";
  return s + ".";
}

// Fields of JSON the desk stored itself, read without throwing if the store holds junk.
std::string JsonStr(const nlohmann::json& j, const char* key) {
  if (!j.is_object()) return "";
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
}

int64_t JsonInt(const nlohmann::json& j, const char* key) {
  if (!j.is_object()) return 0;
  auto it = j.find(key);
  return it != j.end() && it->is_number_integer() ? it->get<int64_t>() : 0;
}

// The buttons of a ticket's card: each sends the command with the ticket id, so a click works
// on a re-announcement and on platforms without threads as well as in the card's thread.
std::vector<MessageAction> CardActions(const std::string& id) {
  return {{"claim", "Claim", "claim " + id, "primary"},
          {"resolve", "Resolve", "resolve " + id, ""},
          {"return", "Return to bot", "return " + id, "danger"}};
}

std::string WhoLabel(const TranscriptEntry& e) {
  if (e.role == "bot") return "Bot";
  if (e.role == "note") return "Note by " + e.who;
  if (e.role == "system") return "Desk";
  return e.who.empty() ? e.role : e.who;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Opening

Desk::Desk(DeskOptions options, store::KvStore& kv, ReplySink& sink, const Clock& clock,
           MetricsRegistry& metrics, const store::ConversationMemory* memory)
    : options_(std::move(options)),
      kv_(kv),
      sink_(sink),
      clock_(clock),
      metrics_(metrics),
      memory_(memory),
      life_(std::make_shared<Life>()) {
  life_->desk = this;
}

Desk::~Desk() {
  std::lock_guard<std::mutex> lock(life_->mu);
  life_->desk = nullptr;
}

Result<std::unique_ptr<Desk>> Desk::Open(DeskOptions options, store::KvStore& kv, ReplySink& sink,
                                         const Clock& clock, MetricsRegistry& metrics,
                                         const store::ConversationMemory* memory) {
  Status valid = Validate(options);
  if (!valid.ok()) return valid;
  std::unique_ptr<Desk> desk(new Desk(std::move(options), kv, sink, clock, metrics, memory));
  desk->active_ = desk->options_.enabled && !desk->options_.queues.empty();
  bool have_default = false;
  for (size_t i = 0; i < desk->options_.queues.size(); ++i) {
    const QueueOptions& qo = desk->options_.queues[i];
    Queue q;
    q.options = qo;
    SplitAgents(qo.agents, q.platform, q.channel);
    for (const std::string& p : qo.patterns) {
      q.patterns.emplace_back(p, std::regex::ECMAScript | std::regex::icase);
    }
    Result<BusinessHours> hours = BusinessHours::Parse(qo.business_hours);
    if (hours.ok()) q.hours = *hours;
    if (!have_default && qo.HasNoRules()) {
      desk->default_queue_ = i;
      have_default = true;
    }
    desk->queues_.push_back(std::move(q));
  }
  if (desk->active_) {
    Status loaded = desk->Load();
    if (!loaded.ok()) return loaded;
  }
  return desk;
}

Status Desk::Load() {
  std::lock_guard<std::mutex> lock(mu_);
  Result<std::string> seq = kv_.Get(store::keys::kEscSeq);
  if (seq.ok()) {
    last_id_ = IdNum(*seq);
  } else if (!seq.status().IsNotFound()) {
    return seq.status();
  }
  std::vector<std::string> ids;
  Status scan = kv_.Scan(store::keys::kEscOpen, [&](std::string_view, std::string_view value) {
    ids.emplace_back(value);
    return true;
  });
  if (!scan.ok()) return scan;
  for (const std::string& id : ids) {
    Result<Ticket> t = LoadTicket(id);
    if (!t.ok()) {
      spdlog::error("esc.load.bad_ticket id={} error=\"{}\"", id, t.status().ToString());
      continue;
    }
    if (!IsOpen(t->state)) continue;
    last_id_ = std::max(last_id_, IdNum(t->id));
    open_by_conv_[t->conversation.Encode()] = t->id;
    open_[t->id] = std::move(t.value());
  }
  for (const Queue& q : queues_) {
    metrics_.GetCounter("parley_escalation_sla_breaches_total",
                        "Escalation tickets left unclaimed past their SLA, by queue",
                        "queue=\"" + q.options.name + "\"");
  }
  UpdateGauges();
  spdlog::info("esc.loaded open={} last_id={}", open_.size(), last_id_);
  return Status::Ok();
}

void Desk::SetSummarizer(Summarizer summarizer) {
  std::lock_guard<std::mutex> lock(mu_);
  summarizer_ = std::move(summarizer);
}

// ---------------------------------------------------------------------------------------------
// Lookups

const Desk::Queue* Desk::FindQueue(const std::string& name) const {
  for (const Queue& q : queues_) {
    if (q.options.name == name) return &q;
  }
  return nullptr;
}

const Desk::Queue* Desk::AgentsQueueFor(const std::string& platform,
                                        const std::string& channel) const {
  for (const Queue& q : queues_) {
    if (q.platform == platform && q.channel == channel) return &q;
  }
  return nullptr;
}

bool Desk::IsAgent(const std::string& platform, const std::string& channel,
                   const std::string& user) const {
  // A member of the agents' channel may act unless a queue of that channel names its agents and
  // the user is in none of those lists.
  bool restricted = false;
  for (const Queue& q : queues_) {
    if (q.platform != platform || q.channel != channel) continue;
    if (q.options.agent_users.empty()) return true;
    restricted = true;
    const auto& users = q.options.agent_users;
    if (std::find(users.begin(), users.end(), user) != users.end()) return true;
  }
  return !restricted;
}

Result<Ticket> Desk::LoadTicket(const std::string& id) const {
  auto it = open_.find(id);
  if (it != open_.end()) return it->second;
  Result<std::string> raw = kv_.Get(store::keys::EscTicket(id));
  if (!raw.ok()) return raw.status();
  return TicketFromJson(*raw);
}

std::string Desk::ThreadTicket(const std::string& platform, const std::string& channel,
                               const std::string& thread) const {
  Result<std::string> id = kv_.Get(store::keys::EscThread(platform, channel, thread));
  return id.ok() ? *id : std::string();
}

int Desk::PositionOf(const Ticket& t) const {
  int ahead = 0;
  for (const auto& [id, o] : open_) {
    if (id == t.id || o.state != TicketState::kQueued || o.queue != t.queue) continue;
    const bool before =
        o.priority < t.priority ||
        (o.priority == t.priority &&
         (o.queued_ms < t.queued_ms || (o.queued_ms == t.queued_ms && IdNum(id) < IdNum(t.id))));
    if (before) ++ahead;
  }
  return ahead + 1;
}

const Ticket* Desk::OpenTicketFor(const ConversationKey& conversation) const {
  auto it = open_by_conv_.find(conversation.Encode());
  if (it == open_by_conv_.end()) return nullptr;
  auto t = open_.find(it->second);
  return t == open_.end() ? nullptr : &t->second;
}

bool Desk::IsEscalated(const ConversationKey& conversation) const {
  std::lock_guard<std::mutex> lock(mu_);
  return OpenTicketFor(conversation) != nullptr;
}

int Desk::QueuePosition(const std::string& id) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = open_.find(id);
  if (it == open_.end() || it->second.state != TicketState::kQueued) return 0;
  return PositionOf(it->second);
}

// ---------------------------------------------------------------------------------------------
// Decisions

size_t Desk::Route(const std::string& text, const std::string& topic,
                   const ConversationKey& conversation) const {
  const std::string clipped = text.substr(0, kMaxMatchChars);
  // Content rules (patterns, topics) first, in queue order; then source rules (channels,
  // platforms); else the default queue.
  for (size_t i = 0; i < queues_.size(); ++i) {
    for (const std::regex& re : queues_[i].patterns) {
      try {
        if (std::regex_search(clipped, re)) return i;
      } catch (const std::regex_error&) {
        // Too complex for this text: treat as no match.
      }
    }
    if (!topic.empty()) {
      for (const std::string& t : queues_[i].options.topics) {
        if (IEquals(t, topic)) return i;
      }
    }
  }
  const std::string source = conversation.platform + ":" + conversation.channel;
  for (size_t i = 0; i < queues_.size(); ++i) {
    for (const std::string& c : queues_[i].options.channels) {
      if (GlobMatch(c, source)) return i;
    }
    for (const std::string& p : queues_[i].options.platforms) {
      if (p == conversation.platform) return i;
    }
  }
  return default_queue_;
}

std::string Desk::MatchRequestPhrase(const std::string& text) const {
  const std::string norm = Normalize(text);
  if (norm.empty()) return "";
  for (const char* word : {"human", "agent", "person", "operator", "representative"}) {
    if (norm == word) return word;
  }
  const std::string padded = " " + norm + " ";
  for (const std::string& phrase : options_.request_phrases) {
    const std::string p = Normalize(phrase);
    if (!p.empty() && padded.find(" " + p + " ") != std::string::npos) return phrase;
  }
  return "";
}

bool Desk::IsCancel(const std::string& text) const {
  const std::string norm = Normalize(text);
  if (norm.empty()) return false;
  for (const std::string& phrase : options_.cancel_phrases) {
    if (Normalize(phrase) == norm) return true;
  }
  return false;
}

int64_t Desk::SlaDue(const Queue& queue, int64_t from_ms, int64_t duration_ms) const {
  return queue.hours.AddOpenTime(from_ms, duration_ms, options_.utc_offset_minutes);
}

// ---------------------------------------------------------------------------------------------
// Messages

OutboundMessage Desk::ToUser(const Ticket& t, std::string text, std::string id,
                             const std::string& in_reply_to) const {
  OutboundMessage m;
  m.id = std::move(id);
  m.conversation = t.conversation;
  m.text = std::move(text);
  m.escalated = true;
  m.in_reply_to = in_reply_to;
  m.reply_route = t.reply_route;
  if (m.reply_route.empty() && in_reply_to.empty()) {
    Result<std::string> route = store::RouteBook(kv_).Get(t.conversation);
    if (route.ok()) m.reply_route = *route;
  }
  return m;
}

OutboundMessage Desk::ToMainLine(const Queue& q, std::string text, std::string id) const {
  OutboundMessage m;
  m.id = std::move(id);
  m.conversation = {q.platform, q.channel, ""};
  m.text = std::move(text);
  Result<std::string> route = store::RouteBook(kv_).Get(m.conversation);
  if (route.ok()) m.reply_route = *route;
  return m;
}

OutboundMessage Desk::ToThread(const Ticket& t, std::string text, std::string id) const {
  const Queue* q = FindQueue(t.queue);
  if (q == nullptr) q = &queues_[default_queue_];
  if (t.card_thread.empty()) {
    return ToMainLine(*q, "[#" + t.id + "] " + text, std::move(id));
  }
  OutboundMessage m = ToMainLine(*q, std::move(text), std::move(id));
  m.conversation.thread = t.card_thread;
  Result<std::string> route = store::RouteBook(kv_).Get(m.conversation);
  if (route.ok()) m.reply_route = *route;
  return m;
}

OutboundMessage Desk::Answer(const InboundMessage& message, std::string text,
                             std::string id) const {
  OutboundMessage m;
  m.id = std::move(id);
  m.conversation = message.conversation();
  m.text = std::move(text);
  m.in_reply_to = message.event_id;
  m.reply_route = message.reply_route;
  return m;
}

std::string Desk::CardText(const Ticket& t, const std::string& headline) const {
  std::string s = "*" + headline + "*\n";
  s += "Queue: " + t.queue + " · Priority: P" + std::to_string(t.priority) +
       " · State: " + StateName(t.state);
  if (!t.agent_name.empty()) s += " (" + t.agent_name + ")";
  s += "\nReason: " + ReasonText(t) + "\n";
  s += "User: " + (t.user_name.empty() ? t.user : t.user_name) + " (" + t.conversation.Display() +
       ")\n";
  if (t.confidence >= 0) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.2f", t.confidence);
    s += std::string("Bot confidence: ") + buf;
  } else {
    s += "Bot confidence: n/a";
  }
  if (!t.sources.empty()) {
    s += " · Sources: ";
    for (size_t i = 0; i < t.sources.size(); ++i) s += (i ? ", " : "") + t.sources[i];
  }
  s += "\nSummary: " + t.summary + "\n";
  const size_t n = static_cast<size_t>(std::max(options_.summary_turns, 0));
  if (n > 0 && !t.transcript.empty()) {
    s += "Last turns:\n";
    const size_t from = t.transcript.size() > n ? t.transcript.size() - n : 0;
    for (size_t i = from; i < t.transcript.size(); ++i) {
      const TranscriptEntry& e = t.transcript[i];
      s += Quote("*" + WhoLabel(e) + ":* " + Clip(e.text, 500)) + "\n";
    }
  }
  s += "Reply in this thread: `claim` · `resolve` · `return` · `transfer QUEUE` · `note TEXT` "
       "(internal) — or from the channel: `claim " +
       t.id + "`.";
  return s;
}

std::string Desk::AckText(const Ticket& t, int position) const {
  std::string s = "I've passed your conversation to our team (" + t.queue + "). You are number " +
                  std::to_string(position) + " in the queue.";
  const Queue* q = FindQueue(t.queue);
  const int64_t now = clock_.NowMs();
  if (q != nullptr && !q->hours.IsOpen(now, options_.utc_offset_minutes)) {
    s += " Our team is away right now and back " +
         FormatLocalTime(q->hours.NextOpen(now, options_.utc_offset_minutes),
                         options_.utc_offset_minutes) +
         ".";
  }
  if (!options_.cancel_phrases.empty()) {
    s += " Everything you write here is passed on; write `" + options_.cancel_phrases.front() +
         "` to go back to the bot.";
  }
  return s;
}

// ---------------------------------------------------------------------------------------------
// Writes

void Desk::Stage(Txn& txn, const Ticket* before, const Ticket& after) const {
  namespace keys = store::keys;
  txn.batch.Put(keys::EscTicket(after.id), TicketToJson(after));
  const bool was_open = before != nullptr && IsOpen(before->state);
  if (IsOpen(after.state)) {
    txn.batch.Put(keys::EscOpen(after.conversation), after.id);
  } else if (was_open) {
    txn.batch.Delete(keys::EscOpen(before->conversation));
  }
  if (before != nullptr && before->state == TicketState::kQueued) {
    txn.batch.Delete(
        keys::EscQueue(before->queue, before->priority, before->queued_ms, before->id));
  }
  if (after.state == TicketState::kQueued) {
    txn.batch.Put(keys::EscQueue(after.queue, after.priority, after.queued_ms, after.id), "");
  }
  txn.tickets.push_back(after);
}

void Desk::MarkSeen(Txn& txn, const std::string& platform, const std::string& event_id,
                    const std::string& ticket_id, const std::string& kind,
                    const std::string& ack) const {
  if (event_id.empty()) return;
  nlohmann::json j{{"ticket", ticket_id}, {"kind", kind}, {"at", clock_.NowMs()}};
  if (!ack.empty()) j["ack"] = ack;
  txn.batch.Put(store::keys::EscSeen(platform, event_id), j.dump());
}

Ticket Desk::NewTicket(Txn& txn, const ConversationKey& conversation, const std::string& user,
                       const std::string& user_name, const std::string& reply_route,
                       const std::string& reason, const std::string& detail,
                       const std::string& text, const std::string& topic, int forced_queue,
                       const std::string& event_id, const std::string& source,
                       const OutboundMessage* bot_reply) const {
  const int64_t now = clock_.NowMs();
  Ticket t;
  txn.next_id = last_id_ + 1;
  t.id = std::to_string(txn.next_id);
  t.conversation = conversation;
  t.user = user;
  t.user_name = user_name.empty() ? user : user_name;
  t.reply_route = reply_route;
  if (t.reply_route.empty()) {
    Result<std::string> route = store::RouteBook(kv_).Get(conversation);
    if (route.ok()) t.reply_route = *route;
  }
  t.reason = reason;
  t.detail = detail;
  t.created_ms = now;
  t.queued_ms = now;
  if (memory_ != nullptr) {
    Result<std::vector<store::Turn>> recent =
        memory_->Recent(conversation, kRecentTurns, kRecentChars);
    if (recent.ok()) {
      for (const store::Turn& turn : *recent) {
        TranscriptEntry e;
        e.role = turn.role == "user" ? "user" : "bot";
        e.who = turn.role == "user" ? (turn.user == user ? t.user_name : turn.user) : "";
        e.text = Clip(turn.text, kMaxEntryChars);
        e.ts_ms = turn.ts_ms;
        t.transcript.push_back(std::move(e));
        if (turn.role != "user" && !turn.citations.empty()) {
          t.sources.clear();
          for (const Citation& c : turn.citations) t.sources.push_back(c.title);
        }
      }
    } else {
      spdlog::warn("esc.memory.failed conv={} error=\"{}\"", conversation.Display(),
                   recent.status().ToString());
    }
  }
  if (!text.empty()) {
    t.transcript.push_back({"user", t.user_name, Clip(text, kMaxEntryChars), now, event_id});
  }
  if (bot_reply != nullptr) {
    t.transcript.push_back({"bot", "", Clip(bot_reply->text, kMaxEntryChars), now, ""});
    t.confidence = bot_reply->confidence;
    t.sources.clear();
    for (const Citation& c : bot_reply->citations) t.sources.push_back(c.title);
  }
  // Route on everything the user said recently, newest first.
  std::string route_text = text;
  for (auto it = t.transcript.rbegin(); it != t.transcript.rend(); ++it) {
    if (it->role == "user" && it->event_id != event_id) route_text += "\n" + it->text;
  }
  const size_t qi = forced_queue >= 0 ? static_cast<size_t>(forced_queue)
                                      : Route(route_text, topic, conversation);
  const Queue& q = queues_[qi];
  t.queue = q.options.name;
  t.priority = q.options.priority;
  if (q.options.sla_minutes > 0) {
    t.sla_due_ms = SlaDue(q, now, MinutesMs(q.options.sla_minutes));
  }
  t.summary = DefaultSummary(t);
  t.summary_source = summarizer_ ? "pending" : "turns";
  const std::string card_id = MsgId(t.id, source, "card");
  txn.out.push_back(ToMainLine(q, CardText(t, "New escalation #" + t.id), card_id));
  txn.out.back().actions = CardActions(t.id);
  t.card_message_id = card_id;
  t.agents_seen = static_cast<int>(t.transcript.size());
  // Adapters without platform threads may use the desk's message id as the thread.
  txn.batch.Put(store::keys::EscThread(q.platform, q.channel, card_id), t.id);
  txn.opened_triggers.push_back(reason);
  return t;
}

Status Desk::Commit(std::unique_lock<std::mutex>& lock, Txn& txn, DeskResult& result) {
  const int64_t now = clock_.NowMs();
  store::Outbox outbox(kv_);
  for (const OutboundMessage& m : txn.out) {
    if (!sink_.DeliversDurably(m)) continue;
    store::OutboxEntry entry;
    entry.id = m.id;
    entry.platform = m.conversation.platform;
    entry.target = m.reply_route;
    entry.payload = ToJsonText(m);
    entry.created_ms = now;
    outbox.Put(txn.batch, entry);
  }
  if (txn.next_id > 0) txn.batch.Put(store::keys::kEscSeq, std::to_string(txn.next_id));
  if (!txn.batch.empty()) {
    Status s = kv_.Write(txn.batch, /*sync=*/true);
    if (!s.ok()) {
      spdlog::error("esc.store.failed error=\"{}\"", s.ToString());
      result.status = s;
      result.outcome = "error";
      result.sent.clear();
      return s;
    }
  }
  if (txn.next_id > 0) last_id_ = std::max(last_id_, txn.next_id);
  const std::vector<Ticket> ask = SummariesToAsk(txn.tickets);
  for (Ticket& t : txn.tickets) {
    const std::string conv = t.conversation.Encode();
    if (IsOpen(t.state)) {
      open_by_conv_[conv] = t.id;
      open_[t.id] = std::move(t);
    } else {
      open_.erase(t.id);
      auto it = open_by_conv_.find(conv);
      if (it != open_by_conv_.end() && it->second == t.id) open_by_conv_.erase(it);
    }
  }
  for (const std::string& trigger : txn.opened_triggers) {
    metrics_
        .GetCounter("parley_escalation_tickets_total", "Escalation tickets opened, by trigger",
                    "trigger=\"" + trigger + "\"")
        .Add();
  }
  for (const auto& [queue, seconds] : txn.claim_seconds) {
    metrics_
        .GetHistogram("parley_escalation_claim_seconds",
                      "Time from queueing to an agent's claim, seconds", "",
                      HistogramScale::kHuman)
        .ObserveSeconds(seconds);
  }
  for (double seconds : txn.resolve_seconds) {
    metrics_
        .GetHistogram("parley_escalation_resolve_seconds",
                      "Time from opening a ticket to its resolution, seconds", "",
                      HistogramScale::kHuman)
        .ObserveSeconds(seconds);
  }
  for (const std::string& queue : txn.breaches) {
    metrics_
        .GetCounter("parley_escalation_sla_breaches_total",
                    "Escalation tickets left unclaimed past their SLA, by queue",
                    "queue=\"" + queue + "\"")
        .Add();
  }
  UpdateGauges();
  result.sent = txn.out;
  if (txn.out.empty()) {
    // Nothing to send (e.g. a receipt, which may come from inside Send: no send_mu_ then).
    lock.unlock();
    AskSummaries(ask);
    return Status::Ok();
  }
  {
    // Hand the messages over in commit order, without holding the state mutex.
    std::unique_lock<std::mutex> send_lock(send_mu_);
    lock.unlock();
    for (OutboundMessage& m : txn.out) {
      std::string id = m.id;
      std::string where = m.conversation.Display();
      sink_.Send(std::move(m), [id, where](Status s) {
        if (!s.ok()) {
          spdlog::warn("esc.send.failed id={} to={} error=\"{}\"", id, where, s.ToString());
        }
      });
    }
  }
  AskSummaries(ask);
  return Status::Ok();
}

std::vector<Ticket> Desk::SummariesToAsk(const std::vector<Ticket>& tickets) {
  std::vector<Ticket> ask;
  if (!summarizer_) return ask;
  for (const Ticket& t : tickets) {
    if (IsOpen(t.state) && t.summary_source == "pending" && summarizing_.insert(t.id).second) {
      ask.push_back(t);
    }
  }
  return ask;
}

void Desk::AskSummaries(const std::vector<Ticket>& tickets) {
  for (const Ticket& t : tickets) {
    std::weak_ptr<Life> life = life_;
    summarizer_(t, [life, id = t.id](Result<std::string> summary) {
      std::shared_ptr<Life> alive = life.lock();
      if (!alive) return;
      std::lock_guard<std::mutex> guard(alive->mu);
      if (alive->desk != nullptr) alive->desk->OnSummary(id, std::move(summary));
    });
  }
}

void Desk::OnSummary(const std::string& id, Result<std::string> summary) {
  std::unique_lock<std::mutex> lock(mu_);
  summarizing_.erase(id);
  auto it = open_.find(id);
  // Closed meanwhile, or already settled (a late second answer): nothing to do.
  if (it == open_.end() || it->second.summary_source != "pending") return;
  const Ticket before = it->second;
  Ticket t = before;
  Txn txn;
  std::string text = summary.ok() ? Clip(Trim(*summary), kMaxSummaryChars) : std::string();
  if (!text.empty()) {
    t.summary = text;
    t.summary_source = "model";
    txn.out.push_back(ToThread(t, "*Summary:* " + text, MsgId(id, "summary", "s")));
  } else {
    t.summary_source = "turns";
    spdlog::warn("esc.summary.failed id={} error=\"{}\"", id,
                 summary.ok() ? "empty summary" : summary.status().ToString());
  }
  metrics_
      .GetCounter("parley_escalation_summaries_total",
                  "Ticket summaries asked of the model, by result",
                  text.empty() ? "result=\"failed\"" : "result=\"ok\"")
      .Add();
  Stage(txn, &before, t);
  DeskResult ignored;
  (void)Commit(lock, txn, ignored);
}

void Desk::UpdateGauges() const {
  for (const Queue& q : queues_) {
    int64_t depth = 0;
    for (const auto& [id, t] : open_) {
      if (t.state == TicketState::kQueued && t.queue == q.options.name) ++depth;
    }
    metrics_
        .GetGauge("parley_escalation_queue_depth", "Unclaimed escalation tickets, by queue",
                  "queue=\"" + q.options.name + "\"")
        .Set(depth);
  }
}

// ---------------------------------------------------------------------------------------------
// BeforeTurn

DeskResult Desk::BeforeTurn(const InboundMessage& m) {
  DeskResult result;
  if (!active_) return result;
  std::unique_lock<std::mutex> lock(mu_);
  if (!m.event_id.empty()) {
    Result<std::string> seen = kv_.Get(store::keys::EscSeen(m.platform, m.event_id));
    if (seen.ok()) {
      nlohmann::json j = nlohmann::json::parse(*seen, nullptr, false);
      const std::string kind = JsonStr(j, "kind");
      result.ticket_id = JsonStr(j, "ticket");
      // A ticket opened after the engine answered: the turn was not committed; let the engine
      // run again and AfterTurn repeat the acknowledgement.
      if (kind == "after") return result;
      result.handled = true;
      result.outcome = "duplicate";
      return result;
    }
    if (!seen.status().IsNotFound()) {
      result.status = seen.status();
      result.handled = true;
      result.outcome = "error";
      return result;
    }
  }
  if (AgentsQueueFor(m.platform, m.channel) != nullptr) return HandleAgentMessage(lock, m);
  if (const Ticket* open = OpenTicketFor(m.conversation())) {
    const Ticket copy = *open;
    if (m.request_human) return AlreadyEscalated(lock, m, copy);
    return HandleUserMessage(lock, m, copy);
  }
  // Triggers checked before the bot answers: policy routes, then requests for a person.
  std::string reason;
  std::string detail;
  int forced = -1;
  const std::string clipped = m.text.substr(0, kMaxMatchChars);
  for (size_t i = 0; i < queues_.size() && forced < 0; ++i) {
    if (!queues_[i].options.policy) continue;
    for (size_t p = 0; p < queues_[i].patterns.size(); ++p) {
      bool hit = false;
      try {
        hit = std::regex_search(clipped, queues_[i].patterns[p]);
      } catch (const std::regex_error&) {
        hit = false;
      }
      if (hit) {
        reason = "policy";
        detail = queues_[i].options.patterns[p];
        forced = static_cast<int>(i);
        break;
      }
    }
  }
  if (reason.empty() && m.request_human) {
    // A platform command or button: a request whatever the text says.
    reason = "request";
    detail = Clip(m.text, 200);
  }
  if (reason.empty()) {
    detail = MatchRequestPhrase(m.text);
    if (!detail.empty()) reason = "request";
  }
  if (reason.empty()) return result;

  Txn txn;
  const std::string source = EventSource(m.platform, m.event_id, clock_.NowMs());
  Ticket t = NewTicket(txn, m.conversation(), m.user, m.user_name, m.reply_route, reason, detail,
                       m.text, "", forced, m.event_id, source, nullptr);
  OutboundMessage ack = Answer(m, AckText(t, PositionOf(t)), MsgId(t.id, source, "ack"));
  ack.escalated = true;
  txn.out.push_back(std::move(ack));
  t.last_notice_ms = clock_.NowMs();
  MarkSeen(txn, m.platform, m.event_id, t.id, "before", "");
  Stage(txn, nullptr, t);
  spdlog::info("esc.open id={} conv={} queue={} reason={}", t.id, t.conversation.Display(), t.queue,
               reason);
  result.handled = true;
  result.ticket_id = t.id;
  result.outcome = "opened";
  if (!Commit(lock, txn, result).ok()) result.outcome = "error";
  return result;
}

DeskResult Desk::AlreadyEscalated(std::unique_lock<std::mutex>& lock, const InboundMessage& m,
                                  const Ticket& ticket) {
  DeskResult result;
  result.handled = true;
  result.outcome = "waiting";
  result.ticket_id = ticket.id;
  const std::string text = ticket.state == TicketState::kClaimed
                               ? ticket.agent_name + " from our " + ticket.queue +
                                     " team is already with you here; just write your message."
                               : "You are already waiting for a person: you are number " +
                                     std::to_string(PositionOf(ticket)) + " in the " +
                                     ticket.queue +
                                     " queue. Everything you write here is passed on.";
  Txn txn;
  const std::string source = EventSource(m.platform, m.event_id, clock_.NowMs());
  OutboundMessage answer = Answer(m, text, MsgId(ticket.id, source, "u"));
  answer.escalated = true;
  txn.out.push_back(std::move(answer));
  MarkSeen(txn, m.platform, m.event_id, ticket.id, "user", "");
  if (!Commit(lock, txn, result).ok()) result.outcome = "error";
  return result;
}

DeskResult Desk::Refuse(std::unique_lock<std::mutex>& lock, const InboundMessage& m,
                        const std::string& ticket_id, const std::string& text) {
  DeskResult result;
  result.handled = true;
  result.outcome = "refused";
  result.ticket_id = ticket_id;
  Txn txn;
  const std::string source = EventSource(m.platform, m.event_id, clock_.NowMs());
  txn.out.push_back(Answer(m, text, MsgId(ticket_id, source, "r")));
  MarkSeen(txn, m.platform, m.event_id, ticket_id, "agent", "");
  (void)Commit(lock, txn, result);
  return result;
}

DeskResult Desk::HandleAgentMessage(std::unique_lock<std::mutex>& lock, const InboundMessage& m) {
  DeskResult result;
  const std::string thread_ticket =
      m.thread.empty() ? std::string() : ThreadTicket(m.platform, m.channel, m.thread);
  Command cmd = ParseCommand(m.text, !thread_ticket.empty());
  // The main line (or an unrelated thread) of an agents' channel: only commands are the desk's.
  if (thread_ticket.empty() && cmd.verb == Verb::kNone) return result;
  if (!IsAgent(m.platform, m.channel, m.user)) {
    return Refuse(lock, m, thread_ticket,
                  "Only the agents of this queue can act on tickets; nothing changed.");
  }
  if (cmd.verb == Verb::kUnknown) {
    return Refuse(lock, m, thread_ticket,
                  "Unknown command `" + cmd.word + "`; nothing changed.\n" + CommandHelp());
  }
  if (!cmd.error.empty()) return Refuse(lock, m, thread_ticket, "Usage: " + cmd.error.substr(7));
  if (cmd.verb == Verb::kHelp) {
    DeskResult r = Refuse(lock, m, thread_ticket, CommandHelp());
    r.outcome = "command";
    return r;
  }
  const std::string id = cmd.ticket_id.empty() ? thread_ticket : cmd.ticket_id;
  if (id.empty()) {
    return Refuse(lock, m, "",
                  "Which ticket? Write e.g. `" + cmd.word +
                      " 17`, or act in the ticket's thread; nothing changed.");
  }
  Result<Ticket> loaded = LoadTicket(id);
  if (!loaded.ok()) {
    if (loaded.status().IsNotFound()) {
      return Refuse(lock, m, "", "There is no ticket #" + id + "; nothing changed.");
    }
    result.status = loaded.status();
    result.handled = true;
    result.outcome = "error";
    return result;
  }
  const Ticket before = loaded.value();
  const Queue* tq = FindQueue(before.queue);
  if (tq == nullptr || tq->platform != m.platform || tq->channel != m.channel) {
    return Refuse(lock, m, id,
                  "Ticket #" + id + " is in queue " + before.queue +
                      "; act on it in that queue's channel. Nothing changed.");
  }
  if (cmd.verb == Verb::kShow) {
    DeskResult r = Refuse(lock, m, id, CardText(before, "Escalation #" + id));
    r.outcome = "command";
    return r;
  }
  if (!IsOpen(before.state)) {
    return Refuse(
        lock, m, id,
        "Ticket #" + id + " is already " + StateName(before.state) + "; nothing changed.");
  }
  const std::string agent_name = m.user_name.empty() ? m.user : m.user_name;
  const int64_t now = clock_.NowMs();
  const std::string source = EventSource(m.platform, m.event_id, now);
  Ticket t = before;
  Txn txn;
  result.handled = true;
  result.ticket_id = id;
  result.outcome = "command";
  switch (cmd.verb) {
    case Verb::kClaim: {
      if (t.state == TicketState::kClaimed) {
        if (t.agent == m.user) {
          return Refuse(lock, m, id, "You already have ticket #" + id + ".");
        }
        return Refuse(
            lock, m, id,
            "Ticket #" + id + " is already claimed by " + t.agent_name + "; nothing changed.");
      }
      t.state = TicketState::kClaimed;
      t.agent = m.user;
      t.agent_name = agent_name;
      t.claimed_ms = now;
      t.sla_due_ms = 0;
      std::string text = agent_name + " claimed #" + id + ". What you write in this thread now " +
                         "goes to " + t.user_name + "; use `note TEXT` for internal notes.";
      std::string waiting;
      for (size_t i = static_cast<size_t>(std::max(t.agents_seen, 0)); i < t.transcript.size();
           ++i) {
        if (t.transcript[i].role == "user") waiting += "\n" + Quote(t.transcript[i].text);
      }
      if (!waiting.empty()) text += "\nWhile waiting, " + t.user_name + " wrote:" + waiting;
      t.transcript.push_back({"system", agent_name, "claimed by " + agent_name, now, m.event_id});
      t.agents_seen = static_cast<int>(t.transcript.size());
      txn.out.push_back(Answer(m, text, MsgId(id, source, "a")));
      txn.out.push_back(
          ToUser(t, agent_name + " has joined the conversation.", MsgId(id, source, "u"), ""));
      txn.claim_seconds.emplace_back(t.queue, static_cast<double>(now - t.queued_ms) / 1000.0);
      break;
    }
    case Verb::kResolve:
    case Verb::kReturn: {
      const bool resolve = cmd.verb == Verb::kResolve;
      t.state = resolve ? TicketState::kResolved : TicketState::kReturned;
      t.closed_ms = now;
      t.closed_by = agent_name;
      t.sla_due_ms = 0;
      t.transcript.push_back({"system", agent_name,
                              (resolve ? "resolved by " : "returned to the bot by ") + agent_name,
                              now, m.event_id});
      txn.out.push_back(
          Answer(m, (resolve ? "Resolved #" : "Returned #") + id + (resolve ? "." : " to the bot."),
                 MsgId(id, source, "a")));
      txn.out.push_back(ToUser(t,
                               resolve ? agent_name + " marked this as resolved. You are talking "
                                                      "to the bot again."
                                       : agent_name + " handed you back to the bot. You are "
                                                      "talking to the bot again.",
                               MsgId(id, source, "u"), ""));
      if (resolve) txn.resolve_seconds.push_back(static_cast<double>(now - t.created_ms) / 1000.0);
      break;
    }
    case Verb::kTransfer: {
      const Queue* to = FindQueue(cmd.arg);
      if (to == nullptr) {
        std::string names;
        for (const Queue& q : queues_) names += (names.empty() ? "" : ", ") + q.options.name;
        return Refuse(
            lock, m, id,
            "There is no queue `" + cmd.arg + "` (queues: " + names + "); nothing changed.");
      }
      if (to->options.name == t.queue) {
        return Refuse(lock, m, id, "Ticket #" + id + " is already in queue " + t.queue + ".");
      }
      const std::string from = t.queue;
      t.queue = to->options.name;
      t.state = TicketState::kQueued;
      t.priority = std::min(t.priority, to->options.priority);
      t.agent.clear();
      t.agent_name.clear();
      t.claimed_ms = 0;
      t.queued_ms = now;
      t.sla_stage = 0;
      t.sla_due_ms =
          to->options.sla_minutes > 0 ? SlaDue(*to, now, MinutesMs(to->options.sla_minutes)) : 0;
      t.card_thread.clear();
      t.transcript.push_back({"system", agent_name,
                              "transferred from " + from + " to " + t.queue + " by " + agent_name,
                              now, m.event_id});
      txn.out.push_back(
          Answer(m, "Transferred #" + id + " to " + t.queue + ".", MsgId(id, source, "a")));
      const std::string card_id = MsgId(id, source, "card");
      t.card_message_id = card_id;
      t.agents_seen = static_cast<int>(t.transcript.size());
      txn.out.push_back(ToMainLine(
          *to, CardText(t, "Escalation #" + id + " (transferred from " + from + ")"), card_id));
      txn.out.back().actions = CardActions(id);
      txn.batch.Put(store::keys::EscThread(to->platform, to->channel, card_id), id);
      txn.out.push_back(ToUser(t,
                               "I've passed your conversation to our " + t.queue +
                                   " team. You are number " + std::to_string(PositionOf(t)) +
                                   " in the queue.",
                               MsgId(id, source, "u"), ""));
      break;
    }
    case Verb::kNote: {
      t.transcript.push_back({"note", agent_name, Clip(cmd.arg, kMaxEntryChars), now, m.event_id});
      t.agents_seen = static_cast<int>(t.transcript.size());
      if (thread_ticket != id) {
        txn.out.push_back(Answer(m, "Noted on #" + id + " (internal, not shown to the user).",
                                 MsgId(id, source, "a")));
      }
      break;
    }
    case Verb::kReply:
    case Verb::kNone: {
      if (t.state != TicketState::kClaimed) {
        return Refuse(lock, m, id,
                      "Claim #" + id + " first (`claim`) to talk to the user; nothing was sent.");
      }
      if (t.agent != m.user) {
        return Refuse(lock, m, id,
                      "Ticket #" + id + " is claimed by " + t.agent_name +
                          "; only they can reply to the user. Nothing was sent.");
      }
      const std::string text = cmd.verb == Verb::kReply ? cmd.arg : m.text;
      t.transcript.push_back({"agent", agent_name, Clip(text, kMaxEntryChars), now, m.event_id});
      t.agents_seen = static_cast<int>(t.transcript.size());
      txn.out.push_back(ToUser(t, "**" + agent_name + ":** " + text, MsgId(id, source, "u"), ""));
      result.outcome = "relayed";
      break;
    }
    default:
      return Refuse(lock, m, id, CommandHelp());
  }
  MarkSeen(txn, m.platform, m.event_id, id, "agent", "");
  Stage(txn, &before, t);
  spdlog::info("esc.{} id={} agent={} state={}", cmd.verb == Verb::kNone ? "relay" : cmd.word, id,
               m.user, StateName(t.state));
  if (!Commit(lock, txn, result).ok()) result.outcome = "error";
  return result;
}

DeskResult Desk::HandleUserMessage(std::unique_lock<std::mutex>& lock, const InboundMessage& m,
                                   const Ticket& before) {
  DeskResult result;
  result.handled = true;
  result.ticket_id = before.id;
  const int64_t now = clock_.NowMs();
  const std::string source = EventSource(m.platform, m.event_id, now);
  Ticket t = before;
  if (!m.reply_route.empty()) t.reply_route = m.reply_route;
  Txn txn;
  if (IsCancel(m.text)) {
    t.state = TicketState::kAbandoned;
    t.closed_ms = now;
    t.closed_by = t.user_name;
    t.sla_due_ms = 0;
    t.transcript.push_back({"user", t.user_name, m.text, now, m.event_id});
    t.transcript.push_back({"system", "", "cancelled by the user", now, m.event_id});
    OutboundMessage bye = Answer(m,
                                 "OK, I've cancelled your request for a person. You are talking "
                                 "to the bot again.",
                                 MsgId(t.id, source, "u"));
    bye.escalated = true;
    txn.out.push_back(std::move(bye));
    txn.out.push_back(ToThread(t,
                               t.user_name + " cancelled #" + t.id + " and is back with the bot.",
                               MsgId(t.id, source, "a")));
    result.outcome = "cancelled";
  } else {
    t.transcript.push_back({"user", t.user_name, Clip(m.text, kMaxEntryChars), now, m.event_id});
    if (t.state == TicketState::kClaimed) {
      txn.out.push_back(ToThread(t, "*" + t.user_name + ":* " + m.text, MsgId(t.id, source, "a")));
      t.agents_seen = static_cast<int>(t.transcript.size());
      result.outcome = "relayed";
    } else {
      result.outcome = "waiting";
      const int64_t every = options_.waiting_notice_minutes * kMinuteMs;
      if (every > 0 && now - t.last_notice_ms >= every) {
        OutboundMessage wait =
            Answer(m,
                   "Still waiting for a person: you are number " + std::to_string(PositionOf(t)) +
                       " in the queue. Everything you write here is passed on.",
                   MsgId(t.id, source, "u"));
        wait.escalated = true;
        txn.out.push_back(std::move(wait));
        t.last_notice_ms = now;
      }
    }
  }
  MarkSeen(txn, m.platform, m.event_id, t.id, "user", "");
  Stage(txn, &before, t);
  if (!Commit(lock, txn, result).ok()) result.outcome = "error";
  return result;
}

// ---------------------------------------------------------------------------------------------
// AfterTurn, feedback, receipts

DeskResult Desk::AfterTurn(const InboundMessage& m, OutboundMessage& reply, const TurnInfo& info) {
  DeskResult result;
  if (!active_) return result;
  std::unique_lock<std::mutex> lock(mu_);
  if (AgentsQueueFor(m.platform, m.channel) != nullptr) return result;
  // First the replay check: the ticket this very turn opened is open now.
  if (!m.event_id.empty()) {
    Result<std::string> seen = kv_.Get(store::keys::EscSeen(m.platform, m.event_id));
    if (seen.ok()) {
      nlohmann::json j = nlohmann::json::parse(*seen, nullptr, false);
      if (JsonStr(j, "kind") == "after") {
        // Replay of a turn whose ticket is already open: the same acknowledgement again.
        reply.text += "\n\n" + JsonStr(j, "ack");
        reply.escalated = true;
        result.ticket_id = JsonStr(j, "ticket");
        result.outcome = "duplicate";
      }
      return result;
    }
  }
  if (OpenTicketFor(m.conversation()) != nullptr) return result;
  const std::string streak_key = store::keys::EscStreak(m.conversation());
  std::string reason;
  std::string detail;
  int streak = 0;
  std::string streak_last;
  Result<std::string> raw = kv_.Get(streak_key);
  if (raw.ok()) {
    nlohmann::json j = nlohmann::json::parse(*raw, nullptr, false);
    streak = static_cast<int>(JsonInt(j, "n"));
    streak_last = JsonStr(j, "last");
  }
  if (reply.escalated) {
    reason = "tool";
    detail = !info.escalate_reason.empty() ? info.escalate_reason : info.escalate_topic;
  } else if (info.outcome == "error") {
    return result;
  } else {
    const bool low = info.outcome == "no_answer" || reply.confidence < options_.low_confidence;
    if (!low) {
      if (streak > 0) {
        store::WriteBatch b;
        b.Delete(streak_key);
        result.status = kv_.Write(b, false);
      }
      return result;
    }
    if (options_.low_confidence_turns <= 0) return result;
    if (!m.event_id.empty() && streak_last == m.event_id) return result;  // counted already
    ++streak;
    if (streak < options_.low_confidence_turns) {
      store::WriteBatch b;
      b.Put(streak_key, nlohmann::json{{"n", streak}, {"last", m.event_id}}.dump());
      result.status = kv_.Write(b, false);
      return result;
    }
    reason = "low_confidence";
    detail = std::to_string(streak) + " answers in a row below " +
             std::to_string(static_cast<int>(options_.low_confidence * 100)) + "% confidence";
  }
  Txn txn;
  const std::string source = EventSource(m.platform, m.event_id, clock_.NowMs());
  Ticket t = NewTicket(txn, m.conversation(), m.user, m.user_name, m.reply_route, reason, detail,
                       m.text, info.escalate_topic, -1, m.event_id, source, &reply);
  const std::string ack = AckText(t, PositionOf(t));
  t.last_notice_ms = clock_.NowMs();
  txn.batch.Delete(streak_key);
  MarkSeen(txn, m.platform, m.event_id, t.id, "after", ack);
  Stage(txn, nullptr, t);
  spdlog::info("esc.open id={} conv={} queue={} reason={}", t.id, t.conversation.Display(), t.queue,
               reason);
  result.ticket_id = t.id;
  result.outcome = "opened";
  if (!Commit(lock, txn, result).ok()) {
    result.outcome = "error";
    return result;
  }
  reply.text += "\n\n" + ack;
  reply.escalated = true;
  return result;
}

DeskResult Desk::OnNegativeFeedback(const FeedbackEvent& f) {
  DeskResult result;
  if (!active_ || !options_.negative_feedback) return result;
  std::unique_lock<std::mutex> lock(mu_);
  if (AgentsQueueFor(f.conversation.platform, f.conversation.channel) != nullptr) return result;
  if (OpenTicketFor(f.conversation) != nullptr) return result;
  const std::string event_id = "feedback:" + f.message_id + ":" + f.user;
  Result<std::string> seen = kv_.Get(store::keys::EscSeen(f.conversation.platform, event_id));
  if (seen.ok()) {
    result.outcome = "duplicate";
    return result;
  }
  Txn txn;
  const std::string source = "fb." + Sanitize(f.message_id + "." + f.user);
  Ticket t = NewTicket(txn, f.conversation, f.user, f.user_name, f.reply_route, "feedback",
                       "not helpful: " + f.message_id, "", "", -1, "", source, nullptr);
  txn.out.push_back(ToUser(t, "Sorry that didn't help. " + AckText(t, PositionOf(t)),
                           MsgId(t.id, source, "ack"), ""));
  t.last_notice_ms = clock_.NowMs();
  MarkSeen(txn, f.conversation.platform, event_id, t.id, "feedback", "");
  Stage(txn, nullptr, t);
  spdlog::info("esc.open id={} conv={} queue={} reason=feedback", t.id, t.conversation.Display(),
               t.queue);
  result.ticket_id = t.id;
  result.outcome = "opened";
  if (!Commit(lock, txn, result).ok()) result.outcome = "error";
  return result;
}

Status Desk::OnDelivered(const DeliveryReceipt& receipt) {
  if (!active_ || receipt.platform_message_id.empty()) return Status::Ok();
  const std::string& mid = receipt.message_id;
  if (mid.compare(0, 4, "esc-") != 0) return Status::Ok();
  const size_t dash = mid.find('-', 4);
  if (dash == std::string::npos) return Status::Ok();
  const std::string id = mid.substr(4, dash - 4);
  if (id.empty() || id.find_first_not_of("0123456789") != std::string::npos) return Status::Ok();
  // Only messages posted to an agents' channel's main line start a card thread.
  if (!receipt.conversation.thread.empty()) return Status::Ok();
  std::unique_lock<std::mutex> lock(mu_);
  if (AgentsQueueFor(receipt.conversation.platform, receipt.conversation.channel) == nullptr) {
    return Status::Ok();
  }
  Result<Ticket> loaded = LoadTicket(id);
  if (!loaded.ok()) return loaded.status().IsNotFound() ? Status::Ok() : loaded.status();
  const Ticket before = loaded.value();
  Txn txn;
  txn.batch.Put(store::keys::EscThread(receipt.conversation.platform, receipt.conversation.channel,
                                       receipt.platform_message_id),
                id);
  if (mid == before.card_message_id && before.card_thread != receipt.platform_message_id) {
    Ticket t = before;
    t.card_thread = receipt.platform_message_id;
    Stage(txn, &before, t);
  }
  DeskResult ignored;
  return Commit(lock, txn, ignored);
}

// ---------------------------------------------------------------------------------------------
// Timers

DeskResult Desk::Tick() {
  DeskResult result;
  if (!active_) return result;
  std::unique_lock<std::mutex> lock(mu_);
  const int64_t now = clock_.NowMs();
  Txn txn;
  for (const auto& [id, before] : open_) {
    if (before.state != TicketState::kQueued || before.sla_due_ms <= 0 || now < before.sla_due_ms) {
      continue;
    }
    const Queue* q = FindQueue(before.queue);
    if (q == nullptr || !q->hours.IsOpen(now, options_.utc_offset_minutes)) continue;
    Ticket t = before;
    ++t.sla_stage;
    const std::string source = "sla" + std::to_string(t.sla_stage);
    const std::string waited = std::to_string((now - t.queued_ms) / kMinuteMs) + " min";
    const std::string sla = MinutesText(q->options.sla_minutes) + " min";
    std::string agents_text;
    if (t.sla_stage == 2) {
      t.priority = std::max(1, t.priority - 1);
      agents_text = "Escalation #" + id + " has waited " + waited + " without an agent (SLA " +
                    sla + "). Priority raised to P" + std::to_string(t.priority) + ".";
      if (!q->options.oncall.empty()) agents_text += " " + q->options.oncall;
      agents_text += " Claim it with `claim " + id + "`.";
    } else {
      agents_text =
          CardText(t, "Still waiting: escalation #" + id + " (" + waited + ", SLA " + sla + ")");
    }
    if (t.sla_stage == 1) txn.breaches.push_back(q->options.name);
    txn.out.push_back(ToMainLine(*q, agents_text, MsgId(id, source, "a")));
    if (t.sla_stage != 2) txn.out.back().actions = CardActions(id);  // a re-announced card
    // The on-call mention comes from the configuration: let it notify.
    if (t.sla_stage == 2) txn.out.back().keep_mentions = true;
    txn.out.push_back(ToUser(t,
                             "Sorry for the wait: everyone is busy right now. You are number " +
                                 std::to_string(PositionOf(t)) +
                                 " in the queue and will hear from us here.",
                             MsgId(id, source, "u"), ""));
    t.last_notice_ms = now;
    if (t.sla_stage == 1) {
      t.sla_due_ms = SlaDue(*q, now, MinutesMs(q->options.sla_minutes));
    } else if (options_.sla_renotify_minutes > 0) {
      t.sla_due_ms = SlaDue(*q, now, options_.sla_renotify_minutes * kMinuteMs);
    } else {
      t.sla_due_ms = 0;
    }
    t.transcript.push_back({"system", "", "SLA notice " + std::to_string(t.sla_stage), now, ""});
    spdlog::warn("esc.sla id={} queue={} stage={} waited_ms={}", id, t.queue, t.sla_stage,
                 now - t.queued_ms);
    Stage(txn, &before, t);
  }
  if (now - last_sweep_ms_ >= kSweepEveryMs) {
    last_sweep_ms_ = now;
    Status swept = SweepSeen(now);
    if (swept.ok()) swept = SweepClosed(now);
    if (!swept.ok()) spdlog::warn("esc.sweep.failed error=\"{}\"", swept.ToString());
  }
  // Summaries still pending after a restart (or whose answer was lost) are asked for again.
  std::vector<Ticket> pending;
  for (const auto& [id, t] : open_) {
    if (t.summary_source == "pending") pending.push_back(t);
  }
  const std::vector<Ticket> ask = SummariesToAsk(pending);
  if (txn.batch.empty()) {
    lock.unlock();
    AskSummaries(ask);
    return result;
  }
  result.outcome = "noticed";
  (void)Commit(lock, txn, result);
  AskSummaries(ask);
  return result;
}

Status Desk::SweepSeen(int64_t now) {
  store::WriteBatch batch;
  Status scan = kv_.Scan(store::keys::kEscSeen, [&](std::string_view key, std::string_view value) {
    nlohmann::json j = nlohmann::json::parse(value, nullptr, false);
    const int64_t at = JsonInt(j, "at");
    if (now - at > kSeenTtlMs) batch.Delete(std::string(key));
    return true;
  });
  if (!scan.ok()) return scan;
  if (batch.empty()) return Status::Ok();
  return kv_.Write(batch, false);
}

Status Desk::SweepClosed(int64_t now) {
  if (options_.retention_days <= 0) return Status::Ok();
  const int64_t cutoff = now - int64_t{options_.retention_days} * 24 * 3600 * 1000;
  store::WriteBatch batch;
  std::set<std::string> gone;
  Status scan = kv_.Scan(store::keys::kEscTicket, [&](std::string_view key, std::string_view value) {
    Result<Ticket> t = TicketFromJson(value);
    if (t.ok() && !IsOpen(t->state) && t->closed_ms > 0 && t->closed_ms < cutoff) {
      batch.Delete(std::string(key));
      gone.insert(t->id);
    }
    return true;
  });
  if (!scan.ok()) return scan;
  if (gone.empty()) return Status::Ok();
  // The card threads that led to them.
  scan = kv_.Scan(store::keys::kEscThread, [&](std::string_view key, std::string_view value) {
    if (gone.count(std::string(value)) > 0) batch.Delete(std::string(key));
    return true;
  });
  if (!scan.ok()) return scan;
  spdlog::info("esc.sweep.closed deleted={} older_than_days={}", gone.size(),
               options_.retention_days);
  return kv_.Write(batch, false);
}

// ---------------------------------------------------------------------------------------------
// Operators

Result<std::vector<Ticket>> Desk::List(const TicketFilter& filter) const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<Ticket> out;
  Status scan = kv_.Scan(store::keys::kEscTicket, [&](std::string_view, std::string_view value) {
    Result<Ticket> t = TicketFromJson(value);
    if (!t.ok()) return true;
    if (!filter.queue.empty() && t->queue != filter.queue) return true;
    if (filter.state == "open") {
      if (!IsOpen(t->state)) return true;
    } else if (!filter.state.empty() && filter.state != StateName(t->state)) {
      return true;
    }
    out.push_back(std::move(t.value()));
    return true;
  });
  if (!scan.ok()) return scan;
  std::sort(out.begin(), out.end(),
            [](const Ticket& a, const Ticket& b) { return IdNum(a.id) > IdNum(b.id); });
  if (out.size() > filter.limit) out.resize(filter.limit);
  return out;
}

Result<Ticket> Desk::Get(const std::string& id) const {
  std::lock_guard<std::mutex> lock(mu_);
  return LoadTicket(id);
}

}  // namespace parley::escalation
