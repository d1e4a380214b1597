#include "tests/fakes/matrix/matrix_server.h"

#include <algorithm>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <future>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>
#include <tuple>
#include <utility>

#include "net/http.h"

namespace parley::testing {
namespace {

using Json = nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr size_t kMaxEventBytes = 65536;  // spec "Size limits": the whole event
// What a stored PDU carries beyond the client fields (auth_events, prev_events, depth, hashes,
// signatures): Synapse counts those too.
constexpr size_t kPduOverheadBytes = 512;

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

int64_t SteadyNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
      .count();
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Percent-decoding; `plus_is_space` for query strings (as Twisted, under Synapse, decodes them).
std::string PercentDecode(std::string_view s, bool plus_is_space) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '+' && plus_is_space) {
      out += ' ';
    } else if (s[i] == '%' && i + 2 < s.size() && HexValue(s[i + 1]) >= 0 &&
               HexValue(s[i + 2]) >= 0) {
      out += static_cast<char>(HexValue(s[i + 1]) * 16 + HexValue(s[i + 2]));
      i += 2;
    } else {
      out += s[i];
    }
  }
  return out;
}

std::map<std::string, std::string> ParseQuery(std::string_view query) {
  std::map<std::string, std::string> out;
  size_t pos = 0;
  while (pos <= query.size()) {
    size_t amp = query.find('&', pos);
    if (amp == std::string_view::npos) amp = query.size();
    std::string_view pair = query.substr(pos, amp - pos);
    if (!pair.empty()) {
      size_t eq = pair.find('=');
      std::string key = PercentDecode(pair.substr(0, eq), true);
      std::string value =
          eq == std::string_view::npos ? "" : PercentDecode(pair.substr(eq + 1), true);
      out.emplace(std::move(key), std::move(value));  // first occurrence wins
    }
    pos = amp + 1;
  }
  return out;
}

std::vector<std::string> SplitPath(std::string_view path) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos < path.size()) {
    size_t slash = path.find('/', pos);
    if (slash == std::string_view::npos) slash = path.size();
    out.push_back(PercentDecode(path.substr(pos, slash - pos), false));
    pos = slash + 1;
  }
  if (!path.empty() && path.back() == '/') out.emplace_back();  // trailing empty segment
  return out;
}

net::HttpResponse JsonResponse(int status, const Json& body) {
  net::HttpResponse r;
  r.status = status;
  r.content_type = "application/json";
  r.body = body.dump();
  return r;
}

net::HttpResponse MatrixError(int status, const std::string& errcode, const std::string& error,
                              Json extra = Json::object()) {
  Json body = {{"errcode", errcode}, {"error", error}};
  for (auto it = extra.begin(); it != extra.end(); ++it) body[it.key()] = it.value();
  return JsonResponse(status, body);
}

net::HttpResponse RateLimited(int64_t retry_after_ms, bool header) {
  net::HttpResponse r = MatrixError(429, "M_LIMIT_EXCEEDED", "Too Many Requests",
                                    Json{{"retry_after_ms", retry_after_ms}});
  if (header) {
    r.headers.emplace_back("Retry-After",
                           std::to_string(std::max<int64_t>(0, (retry_after_ms + 999) / 1000)));
  }
  return r;
}

// A response that never completes: the connection writes a head and then closes (HttpServer has
// no way to close without a head). The stream is overflowed before it is handed over, so the
// connection closes as soon as the head is out and the client sees a truncated chunked body.
net::HttpResponse DroppedResponse() {
  net::HttpResponse r;
  r.status = 200;
  r.stream = net::ResponseStream::Create(1);
  (void)r.stream->Write("dropped");
  return r;
}

std::string Localpart(const std::string& user_id) {
  size_t colon = user_id.find(':');
  size_t start = user_id.empty() || user_id[0] != '@' ? 0 : 1;
  return user_id.substr(start, colon == std::string::npos ? std::string::npos : colon - start);
}

// Glob with '*' (any sequence), as the spec's event filters use.
bool GlobMatch(const std::string& pattern, const std::string& s) {
  size_t p = 0, i = 0, star = std::string::npos, mark = 0;
  while (i < s.size()) {
    if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      mark = i;
    } else if (p < pattern.size() && pattern[p] == s[i]) {
      ++p;
      ++i;
    } else if (star != std::string::npos) {
      p = star + 1;
      i = ++mark;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

// The value at a path of object keys, or null.
const Json* Find(const Json& j, std::initializer_list<const char*> keys) {
  const Json* cur = &j;
  for (const char* k : keys) {
    if (!cur->is_object()) return nullptr;
    auto it = cur->find(k);
    if (it == cur->end()) return nullptr;
    cur = &*it;
  }
  return cur;
}

bool AnyMatch(const Json* list, const std::string& value, bool glob) {
  if (list == nullptr || !list->is_array()) return false;
  for (const Json& p : *list) {
    if (!p.is_string()) continue;
    if (glob ? GlobMatch(p.get<std::string>(), value) : p.get<std::string>() == value) return true;
  }
  return false;
}

// A RoomEventFilter (or EventFilter) applied to one event: not_* wins over the allow-lists.
bool EventPasses(const Json* filter, const MatrixEvent& e) {
  if (filter == nullptr || !filter->is_object()) return true;
  if (AnyMatch(Find(*filter, {"not_types"}), e.type, true)) return false;
  if (AnyMatch(Find(*filter, {"not_senders"}), e.sender, false)) return false;
  if (AnyMatch(Find(*filter, {"not_rooms"}), e.room_id, false)) return false;
  const Json* types = Find(*filter, {"types"});
  if (types != nullptr && types->is_array() && !AnyMatch(types, e.type, true)) return false;
  const Json* senders = Find(*filter, {"senders"});
  if (senders != nullptr && senders->is_array() && !AnyMatch(senders, e.sender, false)) {
    return false;
  }
  const Json* rooms = Find(*filter, {"rooms"});
  if (rooms != nullptr && rooms->is_array() && !AnyMatch(rooms, e.room_id, false)) return false;
  return true;
}

bool RoomPasses(const Json& filter, const std::string& room_id) {
  if (AnyMatch(Find(filter, {"room", "not_rooms"}), room_id, false)) return false;
  const Json* rooms = Find(filter, {"room", "rooms"});
  if (rooms != nullptr && rooms->is_array() && !AnyMatch(rooms, room_id, false)) return false;
  return true;
}

// Stream tokens: "s<pos>_0" from /sync, "t<pos>" from /messages and prev_batch; both name the
// point just after stream position <pos> and are accepted everywhere.
std::string SyncToken(int64_t pos) { return "s" + std::to_string(pos) + "_0"; }
std::string PageToken(int64_t pos) { return "t" + std::to_string(pos); }
std::optional<int64_t> ParseToken(const std::string& token) {
  if (token.size() < 2 || (token[0] != 's' && token[0] != 't')) return std::nullopt;
  int64_t v = 0;
  size_t i = 1;
  for (; i < token.size() && token[i] >= '0' && token[i] <= '9'; ++i) {
    v = v * 10 + (token[i] - '0');
    if (v > (int64_t{1} << 50)) return std::nullopt;
  }
  if (i == 1) return std::nullopt;
  if (i < token.size() && token[i] != '_') return std::nullopt;
  return v;
}

const char kHtmlPage[] =
    "<html>\r\n<head><title>%d Bad Gateway</title></head>\r\n<body>\r\n<center><h1>%d Bad "
    "Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";

}  // namespace

class MatrixServer::Impl {
 public:
  // ---- Data ----
  struct Stored {
    MatrixEvent ev;
    int64_t pos = 0;  // stream position, index + 1
  };
  using StateMap = std::map<std::pair<std::string, std::string>, size_t>;  // -> event index
  struct Room {
    std::vector<size_t> events;  // indexes into events_, ascending stream position
    StateMap current;            // state now
    // user -> (stream position, membership) for every m.room.member event, in order.
    std::map<std::string, std::vector<std::pair<int64_t, std::string>>> memberships;
  };
  struct Token {
    std::string user, device;
    bool valid = true;
    bool soft_logout = false;
  };
  enum class FaultKind { kFail, kHtml, kMalformed, kDrop, kLose };
  struct Fault {
    FaultKind kind = FaultKind::kFail;
    int status = 500;
    int count = 1;
    int retry_after_ms = 0;
    bool retry_after_header = true;
  };
  struct Bucket {
    double tokens = 0;
    Clock::time_point last;
  };
  struct SyncParams {
    std::string token, user, device;
    std::optional<int64_t> since;
    Json filter = Json::object();
    bool full_state = false;
  };
  struct PendingSync {
    SyncParams params;
    net::Responder respond;
    std::shared_ptr<boost::asio::steady_timer> timer;
  };
  struct Route {
    std::string endpoint;  // empty: unknown path
    bool method_ok = false;
    bool needs_auth = true;
    std::vector<std::string> args;
  };

  explicit Impl(MatrixServerOptions options)
      : options_(std::move(options)), guard_(io_.get_executor()), rng_(std::random_device{}()) {
    EnsureUserLocked(options_.bot_user_id);
    users_[options_.bot_user_id] = options_.bot_display_name;
    passwords_[options_.bot_user_id] = options_.bot_password;
    tokens_[options_.bot_access_token] = Token{options_.bot_user_id, "BOTDEVICE", true, false};
    rate_on_ = options_.rate_limit_messages;
    rate_per_second_ = options_.messages_per_second;
    rate_burst_ = options_.burst_count;
    net::HttpServerOptions http_options;
    http_options.max_body_bytes = 1024 * 1024;  // so oversized events reach M_TOO_LARGE
    http_ = std::make_unique<net::HttpServer>(
        io_, http_options,
        [this](net::HttpRequest req, net::Responder respond) { Handle(req, std::move(respond)); });
    auto port = http_->ListenTcp("127.0.0.1", 0);
    if (!port.ok()) {
      std::fprintf(stderr, "MatrixServer: cannot listen: %s\n", port.status().ToString().c_str());
      std::abort();
    }
    port_ = port.value();
    thread_ = std::thread([this] { io_.run(); });
  }

  ~Impl() {
    // Answer every held /sync (empty), then stop.
    RunOnIo([this] {
      std::vector<std::pair<net::Responder, net::HttpResponse>> out;
      {
        std::lock_guard<std::mutex> lock(mu_);
        for (auto& [id, p] : pending_) {
          p.timer->cancel();
          out.emplace_back(std::move(p.respond),
                           JsonResponse(200, ComputeSyncLocked(p.params).first));
        }
        pending_.clear();
      }
      for (auto& [respond, r] : out) respond(std::move(r));
    });
    http_->Stop();
    guard_.reset();
    io_.stop();
    thread_.join();
    http_.reset();
  }

  void RunOnIo(std::function<void()> f) {
    std::promise<void> done;
    boost::asio::post(io_, [&] {
      f();
      done.set_value();
    });
    done.get_future().wait();
  }

  void ChangedLocked() {
    ++generation_;
    cv_.notify_all();
  }

  // Wakes long-polls from any thread (runs on the io thread).
  void PostWake() {
    boost::asio::post(io_, [this] { WakeSyncs(); });
  }

  // ---- World state helpers (mu_ held) ----

  void EnsureUserLocked(const std::string& user) {
    if (users_.count(user) == 0) users_[user] = Localpart(user);
  }

  Room& RoomOrDie(const std::string& room_id) {
    auto it = rooms_.find(room_id);
    if (it == rooms_.end()) {
      std::fprintf(stderr, "MatrixServer: unknown room %s\n", room_id.c_str());
      std::abort();
    }
    return it->second;
  }

  std::string NewEventId() {
    static const char kAlphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    std::string id = "$";
    std::uniform_int_distribution<int> d(0, 63);
    for (int i = 0; i < 43; ++i) id += kAlphabet[d(rng_)];
    return id;
  }

  std::string NewDeviceId() {
    std::string id;
    std::uniform_int_distribution<int> d(0, 25);
    for (int i = 0; i < 10; ++i) id += static_cast<char>('A' + d(rng_));
    return id;
  }

  // The event as a server would store it (for the size limit).
  Json PduJson(const MatrixEvent& e) const {
    Json j = {{"room_id", e.room_id}, {"event_id", e.event_id},
              {"sender", e.sender},   {"type", e.type},
              {"content", e.content}, {"origin_server_ts", e.origin_server_ts}};
    if (e.state_key) j["state_key"] = *e.state_key;
    return j;
  }

  size_t AppendLocked(MatrixEvent e) {
    EnsureUserLocked(e.sender);
    e.event_id = NewEventId();
    e.origin_server_ts = NowMs();
    e.received_ns = SteadyNs();
    if (!e.content.is_object()) e.content = Json::object();
    size_t index = events_.size();
    events_.push_back(Stored{std::move(e), static_cast<int64_t>(index + 1)});
    event_index_[events_.back().ev.event_id] = index;
    const Stored& stored = events_.back();
    Room& room = rooms_[stored.ev.room_id];
    room.events.push_back(index);
    if (stored.ev.state_key) {
      room.current[{stored.ev.type, *stored.ev.state_key}] = index;
      if (stored.ev.type == "m.room.member") {
        auto m = stored.ev.content.find("membership");
        room.memberships[*stored.ev.state_key].emplace_back(
            stored.pos,
            m != stored.ev.content.end() && m->is_string() ? m->get<std::string>() : "");
      }
    }
    ChangedLocked();
    return index;
  }

  size_t AppendStateLocked(const std::string& room_id, const std::string& sender,
                           const std::string& type, const std::string& state_key, Json content) {
    MatrixEvent e;
    e.room_id = room_id;
    e.sender = sender;
    e.type = type;
    e.state_key = state_key;
    e.content = std::move(content);
    return AppendLocked(std::move(e));
  }

  size_t MemberLocked(const std::string& room_id, const std::string& sender,
                      const std::string& user, const std::string& membership, bool is_direct) {
    EnsureUserLocked(user);
    Json content = {{"membership", membership}};
    if (membership == "join" || membership == "invite") content["displayname"] = users_[user];
    if (is_direct) content["is_direct"] = true;
    return AppendStateLocked(room_id, sender, "m.room.member", user, std::move(content));
  }

  int64_t Now() const { return static_cast<int64_t>(events_.size()); }

  // The first of room.events with a stream position above pos.
  std::vector<size_t>::const_iterator FirstAfter(const Room& room, int64_t pos) const {
    return std::partition_point(room.events.begin(), room.events.end(),
                                [&](size_t idx) { return events_[idx].pos <= pos; });
  }

  StateMap StateAt(const Room& room, int64_t pos) const {
    if (pos >= Now()) return room.current;
    StateMap state;
    for (size_t idx : room.events) {
      const Stored& s = events_[idx];
      if (s.pos > pos) break;
      if (s.ev.state_key) state[{s.ev.type, *s.ev.state_key}] = idx;
    }
    return state;
  }

  std::string MembershipIn(const StateMap& state, const std::string& user) const {
    auto it = state.find({"m.room.member", user});
    if (it == state.end()) return "";
    const Json& c = events_[it->second].ev.content;
    auto m = c.find("membership");
    return m != c.end() && m->is_string() ? m->get<std::string>() : "";
  }

  std::string MembershipAt(const std::string& room_id, const std::string& user, int64_t pos) const {
    auto it = rooms_.find(room_id);
    if (it == rooms_.end()) return "";
    auto history = it->second.memberships.find(user);
    if (history == it->second.memberships.end()) return "";
    const auto& h = history->second;
    auto after = std::partition_point(h.begin(), h.end(),
                                      [&](const auto& entry) { return entry.first <= pos; });
    return after == h.begin() ? "" : std::prev(after)->second;
  }

  std::vector<std::string> MembersWith(const StateMap& state, const std::string& membership) const {
    std::vector<std::string> out;
    for (const auto& [key, idx] : state) {
      if (key.first == "m.room.member" && MembershipIn(state, key.second) == membership) {
        out.push_back(key.second);
      }
    }
    return out;
  }

  // ---- Event formats ----

  Json ClientEvent(const Stored& s, const std::string& viewer, const std::string& device,
                   bool with_room_id) const {
    const MatrixEvent& e = s.ev;
    Json j = {{"event_id", e.event_id},
              {"sender", e.sender},
              {"type", e.type},
              {"content", e.content},
              {"origin_server_ts", e.origin_server_ts}};
    if (with_room_id) j["room_id"] = e.room_id;
    if (e.state_key) j["state_key"] = *e.state_key;
    Json unsigned_ = {{"age", std::max<int64_t>(0, NowMs() - e.origin_server_ts)}};
    if (!e.txn_id.empty() && e.sender == viewer && e.device_id == device) {
      unsigned_["transaction_id"] = e.txn_id;
    }
    j["unsigned"] = std::move(unsigned_);
    return j;
  }

  Json Stripped(const Stored& s) const {
    return Json{{"sender", s.ev.sender},
                {"type", s.ev.type},
                {"state_key", s.ev.state_key.value_or("")},
                {"content", s.ev.content}};
  }

  // ---- /sync ----

  int TimelineLimit(const Json& filter) const {
    int limit = options_.default_timeline_limit;
    const Json* l = Find(filter, {"room", "timeline", "limit"});
    if (l != nullptr && l->is_number_integer()) limit = l->get<int>();
    limit = std::max(0, limit);
    return std::min(limit, options_.max_timeline_limit);
  }

  // The per-room timeline section for events of `room` with lo < pos <= hi (lo = -1: from the
  // start), filtered, limited to the last `limit`. Returns {timeline json, start position
  // (state is taken at it), limited}.
  struct TimelinePart {
    Json json;
    int64_t start = 0;
    bool limited = false;
    bool empty = true;
  };
  TimelinePart BuildTimeline(const Room& room, int64_t lo, int64_t hi, const Json& filter,
                             const SyncParams& p, bool only_own_member = false) const {
    const Json* tfilter = Find(filter, {"room", "timeline"});
    std::vector<size_t> candidates;
    for (auto it = FirstAfter(room, lo); it != room.events.end(); ++it) {
      const size_t idx = *it;
      const Stored& s = events_[idx];
      if (s.pos > hi) break;
      if (only_own_member &&
          !(s.ev.type == "m.room.member" && s.ev.state_key.value_or("") == p.user)) {
        continue;
      }
      if (!EventPasses(tfilter, s.ev)) continue;
      candidates.push_back(idx);
    }
    const size_t limit = static_cast<size_t>(TimelineLimit(filter));
    TimelinePart part;
    part.limited = candidates.size() > limit;
    if (part.limited) {
      candidates.erase(candidates.begin(), candidates.end() - static_cast<std::ptrdiff_t>(limit));
    }
    Json events = Json::array();
    for (size_t idx : candidates)
      events.push_back(ClientEvent(events_[idx], p.user, p.device, false));
    part.empty = candidates.empty();
    part.start = candidates.empty() ? hi : events_[candidates.front()].pos - 1;
    part.json = {{"events", std::move(events)},
                 {"limited", part.limited},
                 {"prev_batch", PageToken(part.start)}};
    return part;
  }

  Json StateEvents(const Room& room, int64_t at, std::optional<int64_t> changed_after,
                   const SyncParams& p, const Json& filter) const {
    const Json* sfilter = Find(filter, {"room", "state"});
    Json events = Json::array();
    if (changed_after && *changed_after >= at) return events;  // nothing can have changed
    for (const auto& [key, idx] : StateAt(room, at)) {
      const Stored& s = events_[idx];
      if (changed_after && s.pos <= *changed_after) continue;
      if (!EventPasses(sfilter, s.ev)) continue;
      events.push_back(ClientEvent(s, p.user, p.device, false));
    }
    return events;
  }

  Json Summary(const Room& room, int64_t at, const std::string& user) const {
    StateMap state = StateAt(room, at);
    std::vector<std::string> joined = MembersWith(state, "join");
    std::vector<std::string> invited = MembersWith(state, "invite");
    Json summary = {{"m.joined_member_count", joined.size()},
                    {"m.invited_member_count", invited.size()}};
    bool named = false;
    for (const char* t : {"m.room.name", "m.room.canonical_alias"}) {
      auto it = state.find({t, ""});
      if (it == state.end()) continue;
      const Json& c = events_[it->second].ev.content;
      const char* field = std::string(t) == "m.room.name" ? "name" : "alias";
      auto f = c.find(field);
      if (f != c.end() && f->is_string() && !f->get<std::string>().empty()) named = true;
    }
    if (!named) {
      std::vector<std::string> heroes;
      for (const auto& list : {joined, invited}) {
        for (const auto& u : list) {
          if (u != user && heroes.size() < 5) heroes.push_back(u);
        }
      }
      std::sort(heroes.begin(), heroes.end());
      summary["m.heroes"] = heroes;
    }
    return summary;
  }

  // Computes a /sync answer; second = whether it carries anything for the user.
  std::pair<Json, bool> ComputeSyncLocked(const SyncParams& p) const {
    const int64_t now = Now();
    const bool initial = !p.since.has_value();
    const int64_t since = initial ? 0 : std::min(*p.since, now);
    Json join = Json::object(), invite = Json::object(), leave = Json::object();
    const bool include_leave = [&] {
      const Json* il = Find(p.filter, {"room", "include_leave"});
      return il != nullptr && il->is_boolean() && il->get<bool>();
    }();
    for (const auto& [room_id, room] : rooms_) {
      if (!RoomPasses(p.filter, room_id)) continue;
      const StateMap state_now = StateAt(room, now);
      const std::string now_m = MembershipIn(state_now, p.user);
      const std::string then_m = initial ? "" : MembershipAt(room_id, p.user, since);
      if (now_m == "join") {
        const bool newly_joined = !initial && then_m != "join";
        Json entry;
        if (initial || newly_joined) {
          TimelinePart t = BuildTimeline(room, -1, now, p.filter, p);
          entry["timeline"] = t.json;
          entry["state"] = {{"events", StateEvents(room, t.start, std::nullopt, p, p.filter)}};
        } else {
          TimelinePart t = BuildTimeline(room, since, now, p.filter, p);
          if (t.empty && !p.full_state) continue;
          entry["timeline"] = t.json;
          std::optional<int64_t> after;
          if (!p.full_state) after = t.limited ? since : t.start;  // not limited: nothing new
          entry["state"] = {{"events", StateEvents(room, t.start, after, p, p.filter)}};
        }
        entry["summary"] = Summary(room, now, p.user);
        entry["ephemeral"] = {{"events", Json::array()}};
        entry["account_data"] = {{"events", Json::array()}};
        entry["unread_notifications"] = {{"highlight_count", 0}, {"notification_count", 0}};
        join[room_id] = std::move(entry);
      } else if (now_m == "invite") {
        auto it = state_now.find({"m.room.member", p.user});
        const Stored& inv = events_[it->second];
        if (!initial && inv.pos <= since) continue;
        Json events = Json::array();
        for (const char* t :
             {"m.room.create", "m.room.name", "m.room.join_rules", "m.room.canonical_alias",
              "m.room.avatar", "m.room.topic", "m.room.encryption"}) {
          auto s = state_now.find({t, ""});
          if (s != state_now.end()) events.push_back(Stripped(events_[s->second]));
        }
        auto inviter = state_now.find({"m.room.member", inv.ev.sender});
        if (inviter != state_now.end() && inv.ev.sender != p.user) {
          events.push_back(Stripped(events_[inviter->second]));
        }
        events.push_back(Stripped(inv));
        invite[room_id] = {{"invite_state", {{"events", std::move(events)}}}};
      } else if (now_m == "leave" || now_m == "ban") {
        auto it = state_now.find({"m.room.member", p.user});
        const Stored& left = events_[it->second];
        if (initial ? !include_leave : left.pos <= since) continue;
        // Joined or invited at `since`, or at some point in the gap before leaving.
        bool was_joined = initial || then_m == "join";
        bool was_member = was_joined || then_m == "invite";
        for (const auto& [pos, membership] : room.memberships.at(p.user)) {
          if (pos <= since || pos >= left.pos) continue;
          was_joined = was_joined || membership == "join";
          was_member = was_member || membership == "invite" || membership == "join";
        }
        if (!was_member) continue;
        // What the user may see: up to their leave; before it only if they were joined.
        TimelinePart t = BuildTimeline(room, initial ? -1 : since, left.pos, p.filter, p,
                                       /*only_own_member=*/!was_joined);
        Json entry;
        entry["timeline"] = t.json;
        std::optional<int64_t> after;
        if (!initial && !p.full_state) after = t.limited ? since : t.start;
        entry["state"] = {{"events", was_joined ? StateEvents(room, t.start, after, p, p.filter)
                                                : Json::array()}};
        entry["account_data"] = {{"events", Json::array()}};
        leave[room_id] = std::move(entry);
      }
    }
    Json body = {{"next_batch", SyncToken(now)}};
    const bool has = !join.empty() || !invite.empty() || !leave.empty();
    if (has) {
      Json rooms = Json::object();
      if (!join.empty()) rooms["join"] = std::move(join);
      if (!invite.empty()) rooms["invite"] = std::move(invite);
      if (!leave.empty()) rooms["leave"] = std::move(leave);
      body["rooms"] = std::move(rooms);
    }
    return {std::move(body), has};
  }

  // Answers held /syncs that now have something (or whose token died). io thread.
  void WakeSyncs() {
    std::vector<std::pair<net::Responder, net::HttpResponse>> out;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto it = pending_.begin(); it != pending_.end();) {
        std::optional<net::HttpResponse> r = TokenErrorLocked(it->second.params.token);
        if (!r) {
          auto [body, has] = ComputeSyncLocked(it->second.params);
          if (has) r = JsonResponse(200, body);
        }
        if (r) {
          it->second.timer->cancel();
          out.emplace_back(std::move(it->second.respond), std::move(*r));
          it = pending_.erase(it);
        } else {
          ++it;
        }
      }
      ChangedLocked();
    }
    for (auto& [respond, r] : out) respond(std::move(r));
  }

  std::optional<net::HttpResponse> TokenErrorLocked(const std::string& token) const {
    auto it = tokens_.find(token);
    if (it == tokens_.end()) {
      return MatrixError(401, "M_UNKNOWN_TOKEN", "Unrecognised access token",
                         Json{{"soft_logout", false}});
    }
    if (!it->second.valid) {
      return MatrixError(401, "M_UNKNOWN_TOKEN", "Access token has expired",
                         Json{{"soft_logout", it->second.soft_logout}});
    }
    return std::nullopt;
  }

  // ---- Routing ----

  Route RouteFor(const net::HttpRequest& req) const {
    Route r;
    std::vector<std::string> seg = SplitPath(req.path);
    // seg[0] is "" (leading slash).
    if (seg.size() < 4 || seg[1] != "_matrix" || seg[2] != "client") return r;
    const std::string& m = req.method;
    if (seg.size() == 4 && seg[3] == "versions") {
      r.endpoint = "versions";
      r.method_ok = m == "GET";
      r.needs_auth = false;
      return r;
    }
    const std::string& version = seg[3];
    if (version != "v3" && version != "r0" && version != "v1") return r;
    std::vector<std::string> s(seg.begin() + 4, seg.end());
    if (s.empty()) return r;
    auto set = [&](const char* name, bool ok, std::vector<std::string> args = {}) {
      r.endpoint = name;
      r.method_ok = ok;
      r.args = std::move(args);
    };
    if (s.size() == 1 && s[0] == "login") {
      set("login", m == "GET" || m == "POST");
      r.needs_auth = false;
    } else if (s.size() == 2 && s[0] == "account" && s[1] == "whoami") {
      set("whoami", m == "GET");
    } else if (s.size() == 3 && s[0] == "user" && s[2] == "filter") {
      set("filter", m == "POST", {s[1]});
    } else if (s.size() == 4 && s[0] == "user" && s[2] == "filter") {
      set("filter", m == "GET", {s[1], s[3]});
    } else if ((s.size() == 2 || s.size() == 3) && s[0] == "profile") {
      set("profile", m == "GET", {s[1], s.size() == 3 ? s[2] : ""});
      r.needs_auth = false;
      if (s.size() == 3 && s[2] != "displayname" && s[2] != "avatar_url") r.endpoint.clear();
    } else if (s.size() == 1 && s[0] == "sync") {
      set("sync", m == "GET");
    } else if (s.size() == 2 && s[0] == "join") {
      set("join", m == "POST", {s[1]});
    } else if (s.size() >= 3 && s[0] == "rooms") {
      const std::string& room = s[1];
      const std::string& what = s[2];
      if (s.size() == 3 && what == "messages") {
        set("messages", m == "GET", {room});
      } else if (s.size() == 3 && what == "join") {
        set("join", m == "POST", {room});
      } else if (s.size() == 3 && what == "leave") {
        set("leave", m == "POST", {room});
      } else if (s.size() == 3 && what == "joined_members") {
        set("joined_members", m == "GET", {room});
      } else if ((s.size() == 4 || s.size() == 5) && what == "state") {
        set("state", m == "GET", {room, s[3], s.size() == 5 ? s[4] : ""});
      } else if (s.size() == 4 && what == "event") {
        set("event", m == "GET", {room, s[3]});
      } else if (s.size() == 5 && what == "send") {
        set("send", m == "PUT", {room, s[3], s[4]});
      } else if (s.size() == 4 && what == "typing") {
        set("typing", m == "PUT", {room, s[3]});
      }
    }
    return r;
  }

  std::string TokenOf(const net::HttpRequest& req) const {
    std::string auth = net::FindHeader(req.headers, "Authorization");
    if (auth.size() > 7 &&
        (auth.compare(0, 7, "Bearer ") == 0 || auth.compare(0, 7, "bearer ") == 0)) {
      return auth.substr(7);
    }
    auto q = ParseQuery(req.query);
    auto it = q.find("access_token");
    return it == q.end() ? "" : it->second;
  }

  void Handle(const net::HttpRequest& req, net::Responder respond) {
    Route route = RouteFor(req);
    if (route.endpoint.empty()) {
      std::lock_guard<std::mutex> lock(mu_);
      ++counts_["unknown"];
      ChangedLocked();
      return respond(MatrixError(404, "M_UNRECOGNIZED", "Unrecognized request"));
    }
    std::optional<Fault> fault;
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++counts_[route.endpoint];
      auto it = faults_.find(route.endpoint);
      if (it != faults_.end() && !it->second.empty()) {
        fault = it->second.front();
        if (--it->second.front().count <= 0) it->second.pop_front();
      }
      ChangedLocked();
    }
    if (!route.method_ok) {
      return respond(MatrixError(405, "M_UNRECOGNIZED", "Unrecognized request"));
    }
    if (fault) {
      switch (fault->kind) {
        case FaultKind::kFail:
          return respond(InjectedError(*fault));
        case FaultKind::kHtml: {
          net::HttpResponse r;
          r.status = fault->status;
          r.content_type = "text/html";
          char page[512];
          std::snprintf(page, sizeof(page), kHtmlPage, fault->status, fault->status);
          r.body = page;
          return respond(std::move(r));
        }
        case FaultKind::kMalformed: {
          net::HttpResponse r;
          r.body = "{\"next_batch\": \"s1_0\", \"rooms\": {\"join\": {";
          return respond(std::move(r));
        }
        case FaultKind::kDrop:
          return respond(DroppedResponse());
        case FaultKind::kLose:
          respond = [inner = std::move(respond)](net::HttpResponse) { inner(DroppedResponse()); };
          break;
      }
    }
    Token who;
    std::string token;
    if (route.needs_auth) {
      token = TokenOf(req);
      if (token.empty()) {
        return respond(MatrixError(401, "M_MISSING_TOKEN", "Missing access token"));
      }
      std::lock_guard<std::mutex> lock(mu_);
      if (auto err = TokenErrorLocked(token)) return respond(std::move(*err));
      who = tokens_[token];
    }
    const std::string& e = route.endpoint;
    if (e == "sync") return HandleSync(req, token, who, std::move(respond));
    net::HttpResponse r;
    bool changed = false;
    if (e == "versions") {
      r = JsonResponse(200, Json{{"versions", {"r0.6.1", "v1.1", "v1.5", "v1.11", "v1.19"}},
                                 {"unstable_features", Json::object()}});
    } else if (e == "login") {
      r = req.method == "GET" ? JsonResponse(200, Json{{"flows", {{{"type", "m.login.password"}}}}})
                              : HandleLogin(req);
    } else if (e == "whoami") {
      r = JsonResponse(200,
                       Json{{"user_id", who.user}, {"device_id", who.device}, {"is_guest", false}});
    } else if (e == "filter") {
      r = HandleFilter(req, route, who);
    } else if (e == "profile") {
      r = HandleProfile(route);
    } else if (e == "messages") {
      r = HandleMessages(req, route, who);
    } else if (e == "join") {
      r = HandleJoin(route, who, &changed);
    } else if (e == "leave") {
      r = HandleLeave(route, who, &changed);
    } else if (e == "joined_members") {
      r = HandleJoinedMembers(route, who);
    } else if (e == "state") {
      r = HandleState(route, who);
    } else if (e == "event") {
      r = HandleEvent(route, who);
    } else if (e == "send") {
      r = HandleSend(req, route, who, &changed);
    } else if (e == "typing") {
      r = HandleTyping(req, route, who);
    }
    respond(std::move(r));
    if (changed) WakeSyncs();
  }

  net::HttpResponse InjectedError(const Fault& f) const {
    switch (f.status) {
      case 429:
        return RateLimited(f.retry_after_ms, f.retry_after_header);
      case 401:
        return MatrixError(401, "M_UNKNOWN_TOKEN", "Unrecognised access token",
                           Json{{"soft_logout", false}});
      case 403:
        return MatrixError(403, "M_FORBIDDEN", "Forbidden");
      case 404:
        return MatrixError(404, "M_NOT_FOUND", "Not found");
      default:
        return MatrixError(f.status, "M_UNKNOWN", "Internal server error");
    }
  }

  // Parses a JSON object body: M_NOT_JSON when unparsable, M_BAD_JSON when not an object.
  static std::optional<net::HttpResponse> ParseObject(const std::string& body, Json* out) {
    *out = Json::parse(body, nullptr, false);
    if (out->is_discarded()) return MatrixError(400, "M_NOT_JSON", "Content not JSON.");
    if (!out->is_object()) return MatrixError(400, "M_BAD_JSON", "Content must be a JSON object.");
    return std::nullopt;
  }

  std::string FullUserId(const std::string& user) const {
    if (!user.empty() && user[0] == '@') return user;
    return "@" + user + ":" + options_.server_name;
  }

  net::HttpResponse HandleLogin(const net::HttpRequest& req) {
    Json body;
    if (auto err = ParseObject(req.body, &body)) return *err;
    auto str = [&](const Json& j, const char* key) -> std::string {
      auto it = j.find(key);
      return it != j.end() && it->is_string() ? it->get<std::string>() : "";
    };
    if (str(body, "type") != "m.login.password") {
      return MatrixError(400, "M_UNKNOWN", "Unknown login type " + str(body, "type"));
    }
    std::string user;
    auto ident = body.find("identifier");
    if (ident != body.end() && ident->is_object()) {
      if (str(*ident, "type") != "m.id.user") {
        return MatrixError(400, "M_UNKNOWN", "Unknown login identifier type");
      }
      user = str(*ident, "user");
    } else {
      user = str(body, "user");  // deprecated top-level form
    }
    if (user.empty())
      return MatrixError(400, "M_INVALID_PARAM", "User identifier is missing 'user' key");
    if (body.find("password") == body.end() || !body["password"].is_string()) {
      return MatrixError(400, "M_BAD_JSON", "Missing JSON keys.");
    }
    user = FullUserId(user);
    std::lock_guard<std::mutex> lock(mu_);
    auto pw = passwords_.find(user);
    if (pw == passwords_.end() || pw->second != body["password"].get<std::string>()) {
      return MatrixError(403, "M_FORBIDDEN", "Invalid username or password");
    }
    std::string device = str(body, "device_id");
    if (device.empty()) device = NewDeviceId();
    std::string token =
        "syt_" + Localpart(user) + "_" + NewDeviceId() + "_" + std::to_string(++token_serial_);
    tokens_[token] = Token{user, device, true, false};
    ChangedLocked();
    return JsonResponse(200, Json{{"user_id", user},
                                  {"access_token", token},
                                  {"device_id", device},
                                  {"home_server", options_.server_name}});
  }

  net::HttpResponse HandleFilter(const net::HttpRequest& req, const Route& route,
                                 const Token& who) {
    const std::string& user = route.args[0];
    if (req.method == "POST") {
      if (user != who.user) {
        return MatrixError(403, "M_FORBIDDEN", "Cannot create filters for other users");
      }
      Json body;
      if (auto err = ParseObject(req.body, &body)) return *err;
      std::lock_guard<std::mutex> lock(mu_);
      std::string id = std::to_string(next_filter_++);
      filters_[{user, id}] = body;
      uploaded_filters_.push_back(body);
      ChangedLocked();
      return JsonResponse(200, Json{{"filter_id", id}});
    }
    if (user != who.user) {
      return MatrixError(403, "M_FORBIDDEN", "Cannot get filters for other users");
    }
    std::lock_guard<std::mutex> lock(mu_);
    auto it = filters_.find({user, route.args[1]});
    if (it == filters_.end()) return MatrixError(404, "M_NOT_FOUND", "No such filter");
    return JsonResponse(200, it->second);
  }

  net::HttpResponse HandleProfile(const Route& route) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = users_.find(route.args[0]);
    if (it == users_.end()) return MatrixError(404, "M_NOT_FOUND", "Profile was not found");
    if (route.args[1] == "avatar_url") return JsonResponse(200, Json::object());
    if (route.args[1] == "displayname") return JsonResponse(200, Json{{"displayname", it->second}});
    return JsonResponse(200, Json{{"displayname", it->second}});
  }

  void HandleSync(const net::HttpRequest& req, const std::string& token, const Token& who,
                  net::Responder respond) {
    auto q = ParseQuery(req.query);
    SyncParams p;
    p.token = token;
    p.user = who.user;
    p.device = who.device;
    p.full_state = q.count("full_state") != 0 && q["full_state"] == "true";
    int64_t timeout_ms = 0;
    if (q.count("timeout") != 0) {
      char* end = nullptr;
      long long v = std::strtoll(q["timeout"].c_str(), &end, 10);
      if (end == q["timeout"].c_str() || *end != '\0' || v < 0) {
        return respond(
            MatrixError(400, "M_INVALID_PARAM", "Query parameter \"timeout\" must be an integer"));
      }
      timeout_ms = v;
    }
    if (q.count("since") != 0) {
      p.since = ParseToken(q["since"]);
      if (!p.since) return respond(MatrixError(400, "M_INVALID_PARAM", "Invalid stream token"));
    }
    std::lock_guard<std::mutex> lock(mu_);
    sync_queries_.push_back(req.query);
    if (q.count("filter") != 0) {
      const std::string& f = q["filter"];
      if (!f.empty() && f[0] == '{') {
        Json inline_filter = Json::parse(f, nullptr, false);
        if (inline_filter.is_discarded()) {
          return respond(MatrixError(400, "M_NOT_JSON", "`filter` JSON is not valid JSON"));
        }
        if (!inline_filter.is_object()) {
          return respond(MatrixError(400, "M_BAD_JSON", "`filter` must be a JSON object"));
        }
        uploaded_filters_.push_back(inline_filter);
        p.filter = std::move(inline_filter);
      } else {
        auto it = filters_.find({p.user, f});
        if (it == filters_.end()) {
          return respond(MatrixError(400, "M_INVALID_PARAM", "No such filter"));
        }
        p.filter = it->second;
      }
    }
    auto [body, has] = ComputeSyncLocked(p);
    if (has || !p.since || timeout_ms <= 0 || p.full_state) {
      return respond(JsonResponse(200, body));
    }
    // Hold it.
    const uint64_t id = next_pending_++;
    auto timer = std::make_shared<boost::asio::steady_timer>(io_);
    timer->expires_after(std::chrono::milliseconds(timeout_ms));
    pending_[id] = PendingSync{std::move(p), std::move(respond), timer};
    ChangedLocked();
    timer->async_wait([this, id](const boost::system::error_code&) {
      net::Responder r;
      net::HttpResponse answer;
      {
        std::lock_guard<std::mutex> lock(mu_);
        auto it = pending_.find(id);
        if (it == pending_.end()) return;
        r = std::move(it->second.respond);
        answer = JsonResponse(200, ComputeSyncLocked(it->second.params).first);
        pending_.erase(it);
        ChangedLocked();
      }
      r(std::move(answer));
    });
  }

  // Whether `user` may read the room now: joined (Synapse also lets former members read up to
  // their leave; this fake keeps it simple).
  bool JoinedLocked(const std::string& room_id, const std::string& user) const {
    return MembershipAt(room_id, user, Now()) == "join";
  }

  net::HttpResponse HandleMessages(const net::HttpRequest& req, const Route& route,
                                   const Token& who) {
    auto q = ParseQuery(req.query);
    const std::string& room_id = route.args[0];
    std::string dir = q.count("dir") != 0 ? q["dir"] : "";
    if (dir != "b" && dir != "f") {
      return MatrixError(400, "M_INVALID_PARAM",
                         "Query parameter \"dir\" must be one of ['b', 'f']");
    }
    int limit = 10;
    if (q.count("limit") != 0) {
      char* end = nullptr;
      long v = std::strtol(q["limit"].c_str(), &end, 10);
      if (end == q["limit"].c_str() || *end != '\0' || v < 0) {
        return MatrixError(400, "M_INVALID_PARAM", "Query parameter \"limit\" must be an integer");
      }
      limit = static_cast<int>(std::min<long>(v, 1000));
    }
    Json filter = Json::object();
    if (q.count("filter") != 0) {
      filter = Json::parse(q["filter"], nullptr, false);
      if (filter.is_discarded() || !filter.is_object()) {
        return MatrixError(400, "M_NOT_JSON", "Invalid filter JSON");
      }
      const Json* l = Find(filter, {"limit"});
      if (l != nullptr && l->is_number_integer() && q.count("limit") == 0) limit = l->get<int>();
    }
    std::lock_guard<std::mutex> lock(mu_);
    auto room_it = rooms_.find(room_id);
    if (room_it == rooms_.end() || !JoinedLocked(room_id, who.user)) {
      return MatrixError(403, "M_FORBIDDEN", "User " + who.user + " not in room " + room_id);
    }
    const int64_t now = Now();
    std::optional<int64_t> from, to;
    if (q.count("from") != 0) {
      from = ParseToken(q["from"]);
      if (!from) return MatrixError(400, "M_INVALID_PARAM", "Invalid token");
      from = std::min(*from, now);
    }
    if (q.count("to") != 0) {
      to = ParseToken(q["to"]);
      if (!to) return MatrixError(400, "M_INVALID_PARAM", "Invalid token");
    }
    const int64_t start = from ? *from : (dir == "b" ? now : 0);
    std::vector<size_t> matching;  // in the direction of travel
    const Room& room = room_it->second;
    if (dir == "b") {
      for (auto it = std::make_reverse_iterator(FirstAfter(room, start)); it != room.events.rend();
           ++it) {
        const Stored& s = events_[*it];
        if (to && s.pos <= *to) break;
        if (EventPasses(&filter, s.ev)) matching.push_back(*it);
      }
    } else {
      for (auto it = FirstAfter(room, start); it != room.events.end(); ++it) {
        const size_t idx = *it;
        const Stored& s = events_[idx];
        if (to && s.pos > *to) break;
        if (EventPasses(&filter, s.ev)) matching.push_back(idx);
      }
    }
    const bool more = matching.size() > static_cast<size_t>(limit);
    if (more) matching.resize(static_cast<size_t>(limit));
    Json chunk = Json::array();
    for (size_t idx : matching)
      chunk.push_back(ClientEvent(events_[idx], who.user, who.device, true));
    Json body = {{"chunk", std::move(chunk)},
                 {"start", q.count("from") != 0 ? q["from"] : PageToken(start)}};
    if (more && !matching.empty()) {
      const int64_t last = events_[matching.back()].pos;
      body["end"] = PageToken(dir == "b" ? last - 1 : last);
    }
    const Json* lazy = Find(filter, {"lazy_load_members"});
    if (lazy != nullptr && lazy->is_boolean() && lazy->get<bool>()) {
      // The current membership of each sender in the chunk.
      const StateMap state = StateAt(room, now);
      std::set<std::string> senders;
      Json members = Json::array();
      for (size_t idx : matching) {
        const std::string& sender = events_[idx].ev.sender;
        if (!senders.insert(sender).second) continue;
        auto m = state.find({"m.room.member", sender});
        if (m != state.end())
          members.push_back(ClientEvent(events_[m->second], who.user, who.device, true));
      }
      body["state"] = std::move(members);
    }
    return JsonResponse(200, body);
  }

  net::HttpResponse HandleJoin(const Route& route, const Token& who, bool* changed) {
    const std::string& target = route.args[0];
    if (!target.empty() && target[0] == '#') {
      return MatrixError(404, "M_NOT_FOUND", "Room alias " + target + " not found");
    }
    std::lock_guard<std::mutex> lock(mu_);
    auto it = rooms_.find(target);
    if (it == rooms_.end()) return MatrixError(404, "M_NOT_FOUND", "No known servers");
    const StateMap state = StateAt(it->second, Now());
    const std::string m = MembershipIn(state, who.user);
    if (m == "join") return JsonResponse(200, Json{{"room_id", target}});
    if (m == "ban") return MatrixError(403, "M_FORBIDDEN", "You are banned from this room");
    std::string rule = "invite";
    auto jr = state.find({"m.room.join_rules", ""});
    if (jr != state.end()) rule = events_[jr->second].ev.content.value("join_rule", "invite");
    if (m != "invite" && rule != "public") {
      return MatrixError(403, "M_FORBIDDEN", "You are not invited to this room.");
    }
    MemberLocked(target, who.user, who.user, "join", false);
    *changed = true;
    return JsonResponse(200, Json{{"room_id", target}});
  }

  net::HttpResponse HandleLeave(const Route& route, const Token& who, bool* changed) {
    const std::string& room_id = route.args[0];
    std::lock_guard<std::mutex> lock(mu_);
    const std::string m = MembershipAt(room_id, who.user, Now());
    if (m != "join" && m != "invite") {
      if (m == "leave") return JsonResponse(200, Json::object());
      return MatrixError(403, "M_FORBIDDEN", "User " + who.user + " not in room " + room_id);
    }
    MemberLocked(room_id, who.user, who.user, "leave", false);
    *changed = true;
    return JsonResponse(200, Json::object());
  }

  net::HttpResponse HandleJoinedMembers(const Route& route, const Token& who) {
    const std::string& room_id = route.args[0];
    std::lock_guard<std::mutex> lock(mu_);
    if (!JoinedLocked(room_id, who.user)) {
      return MatrixError(403, "M_FORBIDDEN", "User " + who.user + " not in room " + room_id);
    }
    const StateMap state = StateAt(rooms_.at(room_id), Now());
    Json joined = Json::object();
    for (const std::string& u : MembersWith(state, "join")) {
      const Json& c = events_[state.at({"m.room.member", u})].ev.content;
      Json entry = Json::object();
      entry["display_name"] = c.contains("displayname") ? c["displayname"] : Json(nullptr);
      entry["avatar_url"] = nullptr;
      joined[u] = std::move(entry);
    }
    return JsonResponse(200, Json{{"joined", std::move(joined)}});
  }

  net::HttpResponse HandleState(const Route& route, const Token& who) {
    const std::string& room_id = route.args[0];
    std::lock_guard<std::mutex> lock(mu_);
    if (!JoinedLocked(room_id, who.user)) {
      return MatrixError(403, "M_FORBIDDEN", "User " + who.user + " not in room " + room_id);
    }
    const StateMap state = StateAt(rooms_.at(room_id), Now());
    auto it = state.find({route.args[1], route.args[2]});
    if (it == state.end()) return MatrixError(404, "M_NOT_FOUND", "Event not found.");
    return JsonResponse(200, events_[it->second].ev.content);
  }

  net::HttpResponse HandleEvent(const Route& route, const Token& who) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = event_index_.find(route.args[1]);
    if (it == event_index_.end() || events_[it->second].ev.room_id != route.args[0] ||
        !JoinedLocked(route.args[0], who.user)) {
      return MatrixError(404, "M_NOT_FOUND", "Event not found.");
    }
    return JsonResponse(200, ClientEvent(events_[it->second], who.user, who.device, true));
  }

  net::HttpResponse HandleSend(const net::HttpRequest& req, const Route& route, const Token& who,
                               bool* changed) {
    const std::string& room_id = route.args[0];
    const std::string& type = route.args[1];
    const std::string& txn = route.args[2];
    std::lock_guard<std::mutex> lock(mu_);
    const auto key = std::make_tuple(who.user, who.device, req.path);
    auto cached = txns_.find(key);
    if (cached != txns_.end()) return JsonResponse(200, Json{{"event_id", cached->second}});
    Json content;
    if (auto err = ParseObject(req.body, &content)) return *err;
    if (rooms_.count(room_id) == 0 || !JoinedLocked(room_id, who.user)) {
      return MatrixError(403, "M_FORBIDDEN", "User " + who.user + " not in room " + room_id);
    }
    auto rel = content.find("m.relates_to");
    if (rel != content.end() && rel->is_object() && rel->value("rel_type", "") == "m.thread") {
      auto target = event_index_.find(rel->value("event_id", ""));
      if (target != event_index_.end() && events_[target->second].ev.room_id != room_id) {
        return MatrixError(400, "M_UNKNOWN", "Relations must be in the same room");
      }
      if (target != event_index_.end()) {
        const Json& tc = events_[target->second].ev.content;
        auto trel = tc.find("m.relates_to");
        if (trel != tc.end() && trel->is_object() && trel->contains("rel_type")) {
          return MatrixError(400, "M_UNKNOWN",
                             "Cannot start threads from an event with a relation");
        }
      }
    }
    MatrixEvent e;
    e.room_id = room_id;
    e.sender = who.user;
    e.type = type;
    e.content = std::move(content);
    e.txn_id = txn;
    e.device_id = who.device;
    e.event_id = "$" + std::string(43, 'x');  // size estimate only
    e.origin_server_ts = NowMs();
    if (PduJson(e).dump().size() + kPduOverheadBytes > kMaxEventBytes) {
      return MatrixError(413, "M_TOO_LARGE", "event too large");
    }
    if (rate_on_) {
      Bucket& b = buckets_[who.user];
      auto now = Clock::now();
      if (b.last == Clock::time_point{}) {
        b.tokens = rate_burst_;
      } else {
        b.tokens = std::min<double>(
            rate_burst_,
            b.tokens + std::chrono::duration<double>(now - b.last).count() * rate_per_second_);
      }
      b.last = now;
      if (b.tokens < 1.0) {
        const double wait_s = rate_per_second_ > 0 ? (1.0 - b.tokens) / rate_per_second_ : 1.0;
        return RateLimited(static_cast<int64_t>(std::ceil(wait_s * 1000)), true);
      }
      b.tokens -= 1.0;
    }
    size_t idx = AppendLocked(std::move(e));
    const std::string event_id = events_[idx].ev.event_id;
    txns_[key] = event_id;
    *changed = true;
    return JsonResponse(200, Json{{"event_id", event_id}});
  }

  net::HttpResponse HandleTyping(const net::HttpRequest& req, const Route& route,
                                 const Token& who) {
    const std::string& room_id = route.args[0];
    if (route.args[1] != who.user) {
      return MatrixError(403, "M_FORBIDDEN", "Cannot set another user's typing state");
    }
    Json body;
    if (auto err = ParseObject(req.body, &body)) return *err;
    auto typing = body.find("typing");
    if (typing == body.end() || !typing->is_boolean()) {
      return MatrixError(400, "M_BAD_JSON", "Missing or invalid 'typing' key");
    }
    std::lock_guard<std::mutex> lock(mu_);
    if (!JoinedLocked(room_id, who.user)) {
      return MatrixError(403, "M_FORBIDDEN", "User " + who.user + " not in room " + room_id);
    }
    typing_calls_.push_back(body);
    typing_rooms_.push_back(room_id);
    ChangedLocked();
    return JsonResponse(200, Json::object());
  }

  // ---- State ----
  MatrixServerOptions options_;
  boost::asio::io_context io_;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> guard_;
  std::unique_ptr<net::HttpServer> http_;
  std::thread thread_;
  uint16_t port_ = 0;

  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  uint64_t generation_ = 0;
  std::mt19937_64 rng_;
  std::vector<Stored> events_;
  std::map<std::string, size_t> event_index_;
  std::map<std::string, Room> rooms_;
  int next_room_ = 1;
  std::map<std::string, std::string> users_;      // user id -> display name
  std::map<std::string, std::string> passwords_;  // user id -> password
  std::map<std::string, Token> tokens_;
  uint64_t token_serial_ = 0;
  std::map<std::pair<std::string, std::string>, Json> filters_;  // (user, id) -> filter
  uint64_t next_filter_ = 0;
  std::vector<Json> uploaded_filters_;
  std::map<std::string, int> counts_;
  std::map<std::string, std::deque<Fault>> faults_;
  std::map<std::tuple<std::string, std::string, std::string>, std::string> txns_;
  bool rate_on_ = false;
  double rate_per_second_ = 0.2;
  int rate_burst_ = 10;
  std::map<std::string, Bucket> buckets_;
  std::vector<Json> typing_calls_;
  std::vector<std::string> typing_rooms_;
  std::vector<std::string> sync_queries_;
  std::map<uint64_t, PendingSync> pending_;
  uint64_t next_pending_ = 0;
};

// ---------------- MatrixServer ----------------

MatrixServer::MatrixServer() = default;
MatrixServer::~MatrixServer() = default;

std::unique_ptr<MatrixServer> MatrixServer::Start(MatrixServerOptions options) {
  std::unique_ptr<MatrixServer> server(new MatrixServer());
  server->impl_ = std::make_unique<Impl>(std::move(options));
  return server;
}

std::string MatrixServer::base_url() const {
  return "http://127.0.0.1:" + std::to_string(impl_->port_);
}
uint16_t MatrixServer::port() const { return impl_->port_; }
const MatrixServerOptions& MatrixServer::options() const { return impl_->options_; }

std::string MatrixServer::CreateRoom(const std::string& creator,
                                     const std::vector<std::string>& members, bool encrypted,
                                     const std::string& name) {
  std::string room_id;
  {
    std::lock_guard<std::mutex> lock(impl_->mu_);
    room_id = "!" + std::to_string(impl_->next_room_++) + ":" + impl_->options_.server_name;
    impl_->rooms_[room_id];
    impl_->AppendStateLocked(room_id, creator, "m.room.create", "",
                             Json{{"creator", creator}, {"room_version", "10"}});
    impl_->MemberLocked(room_id, creator, creator, "join", false);
    impl_->AppendStateLocked(room_id, creator, "m.room.power_levels", "",
                             Json{{"users", {{creator, 100}}},
                                  {"users_default", 0},
                                  {"events_default", 0},
                                  {"state_default", 50},
                                  {"ban", 50},
                                  {"kick", 50},
                                  {"invite", 0},
                                  {"redact", 50}});
    impl_->AppendStateLocked(room_id, creator, "m.room.join_rules", "",
                             Json{{"join_rule", "invite"}});
    impl_->AppendStateLocked(room_id, creator, "m.room.history_visibility", "",
                             Json{{"history_visibility", "shared"}});
    if (!name.empty()) {
      impl_->AppendStateLocked(room_id, creator, "m.room.name", "", Json{{"name", name}});
    }
    if (encrypted) {
      impl_->AppendStateLocked(room_id, creator, "m.room.encryption", "",
                               Json{{"algorithm", "m.megolm.v1.aes-sha2"}});
    }
    for (const std::string& m : members) {
      if (m == creator) continue;
      impl_->MemberLocked(room_id, m, m, "join", false);
    }
  }
  impl_->PostWake();
  return room_id;
}

void MatrixServer::SetDisplayName(const std::string& user, const std::string& name) {
  bool emitted = false;
  {
    std::lock_guard<std::mutex> lock(impl_->mu_);
    impl_->users_[user] = name;
    // Like Synapse: a profile change updates the member event in every room the user is in.
    std::vector<std::string> joined_rooms;
    for (const auto& [room_id, room] : impl_->rooms_) {
      if (impl_->JoinedLocked(room_id, user)) joined_rooms.push_back(room_id);
    }
    for (const std::string& room_id : joined_rooms) {
      impl_->MemberLocked(room_id, user, user, "join", false);
      emitted = true;
    }
    impl_->ChangedLocked();
  }
  if (emitted) impl_->PostWake();
}

void MatrixServer::SetPassword(const std::string& user, const std::string& password) {
  std::lock_guard<std::mutex> lock(impl_->mu_);
  impl_->EnsureUserLocked(user);
  impl_->passwords_[user] = password;
}

void MatrixServer::Invite(const std::string& room_id, const std::string& inviter,
                          const std::string& invitee, bool is_direct) {
  {
    std::lock_guard<std::mutex> lock(impl_->mu_);
    impl_->RoomOrDie(room_id);
    impl_->MemberLocked(room_id, inviter, invitee, "invite", is_direct);
  }
  impl_->PostWake();
}

void MatrixServer::Join(const std::string& room_id, const std::string& user) {
  {
    std::lock_guard<std::mutex> lock(impl_->mu_);
    impl_->RoomOrDie(room_id);
    impl_->MemberLocked(room_id, user, user, "join", false);
  }
  impl_->PostWake();
}

void MatrixServer::Leave(const std::string& room_id, const std::string& user) {
  {
    std::lock_guard<std::mutex> lock(impl_->mu_);
    impl_->RoomOrDie(room_id);
    impl_->MemberLocked(room_id, user, user, "leave", false);
  }
  impl_->PostWake();
}

void MatrixServer::Kick(const std::string& room_id, const std::string& by,
                        const std::string& user) {
  {
    std::lock_guard<std::mutex> lock(impl_->mu_);
    impl_->RoomOrDie(room_id);
    impl_->MemberLocked(room_id, by, user, "leave", false);
  }
  impl_->PostWake();
}

void MatrixServer::Ban(const std::string& room_id, const std::string& by, const std::string& user) {
  {
    std::lock_guard<std::mutex> lock(impl_->mu_);
    impl_->RoomOrDie(room_id);
    impl_->MemberLocked(room_id, by, user, "ban", false);
  }
  impl_->PostWake();
}

void MatrixServer::EnableEncryption(const std::string& room_id, const std::string& by) {
  SendState(room_id, by, "m.room.encryption", "", Json{{"algorithm", "m.megolm.v1.aes-sha2"}});
}

std::string MatrixServer::SendEvent(const std::string& room_id, const std::string& sender,
                                    const std::string& type, nlohmann::json content) {
  std::string id;
  {
    std::lock_guard<std::mutex> lock(impl_->mu_);
    impl_->RoomOrDie(room_id);
    MatrixEvent e;
    e.room_id = room_id;
    e.sender = sender;
    e.type = type;
    e.content = std::move(content);
    id = impl_->events_[impl_->AppendLocked(std::move(e))].ev.event_id;
  }
  impl_->PostWake();
  return id;
}

std::string MatrixServer::SendState(const std::string& room_id, const std::string& sender,
                                    const std::string& type, const std::string& state_key,
                                    nlohmann::json content) {
  std::string id;
  {
    std::lock_guard<std::mutex> lock(impl_->mu_);
    impl_->RoomOrDie(room_id);
    id = impl_
             ->events_[impl_->AppendStateLocked(room_id, sender, type, state_key,
                                                std::move(content))]
             .ev.event_id;
  }
  impl_->PostWake();
  return id;
}

namespace {
Json TextContent(const std::string& body, const std::optional<std::vector<std::string>>& mentions,
                 const std::string& thread_root) {
  Json c = {{"msgtype", "m.text"}, {"body", body}};
  if (mentions) c["m.mentions"] = {{"user_ids", *mentions}};
  if (!thread_root.empty()) {
    c["m.relates_to"] = {{"rel_type", "m.thread"},
                         {"event_id", thread_root},
                         {"is_falling_back", true},
                         {"m.in_reply_to", {{"event_id", thread_root}}}};
  }
  return c;
}
}  // namespace

std::string MatrixServer::SendText(const std::string& room_id, const std::string& sender,
                                   const std::string& body,
                                   std::optional<std::vector<std::string>> mentions,
                                   const std::string& thread_root) {
  return SendEvent(room_id, sender, "m.room.message", TextContent(body, mentions, thread_root));
}

std::string MatrixServer::SendHtml(const std::string& room_id, const std::string& sender,
                                   const std::string& body, const std::string& formatted_body,
                                   std::optional<std::vector<std::string>> mentions,
                                   const std::string& thread_root) {
  Json c = TextContent(body, mentions, thread_root);
  c["format"] = "org.matrix.custom.html";
  c["formatted_body"] = formatted_body;
  return SendEvent(room_id, sender, "m.room.message", std::move(c));
}

std::vector<MatrixEvent> MatrixServer::Events(const std::string& room_id) const {
  std::lock_guard<std::mutex> lock(impl_->mu_);
  std::vector<MatrixEvent> out;
  auto it = impl_->rooms_.find(room_id);
  if (it == impl_->rooms_.end()) return out;
  for (size_t idx : it->second.events) out.push_back(impl_->events_[idx].ev);
  return out;
}

std::vector<MatrixEvent> MatrixServer::SentBy(const std::string& user) const {
  std::lock_guard<std::mutex> lock(impl_->mu_);
  std::vector<MatrixEvent> out;
  for (const auto& s : impl_->events_) {
    if (s.ev.sender == user) out.push_back(s.ev);
  }
  return out;
}

std::vector<std::string> MatrixServer::JoinedMembers(const std::string& room_id) const {
  std::lock_guard<std::mutex> lock(impl_->mu_);
  auto it = impl_->rooms_.find(room_id);
  if (it == impl_->rooms_.end()) return {};
  return impl_->MembersWith(impl_->StateAt(it->second, impl_->Now()), "join");
}

int MatrixServer::RequestCount(const std::string& endpoint) const {
  std::lock_guard<std::mutex> lock(impl_->mu_);
  auto it = impl_->counts_.find(endpoint);
  return it == impl_->counts_.end() ? 0 : it->second;
}

std::vector<nlohmann::json> MatrixServer::TypingCalls() const {
  std::lock_guard<std::mutex> lock(impl_->mu_);
  return impl_->typing_calls_;
}

std::vector<std::string> MatrixServer::TypingRoomIds() const {
  std::lock_guard<std::mutex> lock(impl_->mu_);
  return impl_->typing_rooms_;
}

std::vector<nlohmann::json> MatrixServer::UploadedFilters() const {
  std::lock_guard<std::mutex> lock(impl_->mu_);
  return impl_->uploaded_filters_;
}

std::vector<std::string> MatrixServer::SyncQueries() const {
  std::lock_guard<std::mutex> lock(impl_->mu_);
  return impl_->sync_queries_;
}

int MatrixServer::PendingSyncs() const {
  std::lock_guard<std::mutex> lock(impl_->mu_);
  return static_cast<int>(impl_->pending_.size());
}

bool MatrixServer::WaitFor(const std::function<bool()>& pred, int timeout_ms) const {
  auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  std::unique_lock<std::mutex> lock(impl_->mu_);
  while (true) {
    uint64_t gen = impl_->generation_;
    lock.unlock();
    if (pred()) return true;
    lock.lock();
    // Re-check at least every few ms: pred may depend on things outside the server.
    auto until = std::min(deadline, Clock::now() + std::chrono::milliseconds(5));
    impl_->cv_.wait_until(lock, until, [&] { return impl_->generation_ != gen; });
    if (Clock::now() >= deadline) {
      lock.unlock();
      return pred();
    }
  }
}

void MatrixServer::FailNext(const std::string& endpoint, int status, int count, int retry_after_ms,
                            bool retry_after_header) {
  std::lock_guard<std::mutex> lock(impl_->mu_);
  impl_->faults_[endpoint].push_back(
      Impl::Fault{Impl::FaultKind::kFail, status, count, retry_after_ms, retry_after_header});
}

void MatrixServer::HtmlErrorNext(const std::string& endpoint, int status, int count) {
  std::lock_guard<std::mutex> lock(impl_->mu_);
  impl_->faults_[endpoint].push_back(Impl::Fault{Impl::FaultKind::kHtml, status, count, 0, true});
}

void MatrixServer::MalformedNext(const std::string& endpoint, int count) {
  std::lock_guard<std::mutex> lock(impl_->mu_);
  impl_->faults_[endpoint].push_back(Impl::Fault{Impl::FaultKind::kMalformed, 200, count, 0, true});
}

void MatrixServer::DropNext(const std::string& endpoint, int count) {
  std::lock_guard<std::mutex> lock(impl_->mu_);
  impl_->faults_[endpoint].push_back(Impl::Fault{Impl::FaultKind::kDrop, 0, count, 0, true});
}

void MatrixServer::LoseResponseNext(const std::string& endpoint, int count) {
  std::lock_guard<std::mutex> lock(impl_->mu_);
  impl_->faults_[endpoint].push_back(Impl::Fault{Impl::FaultKind::kLose, 0, count, 0, true});
}

void MatrixServer::InvalidateToken(bool soft_logout) {
  {
    std::lock_guard<std::mutex> lock(impl_->mu_);
    for (auto& [token, t] : impl_->tokens_) {
      if (t.user == impl_->options_.bot_user_id && t.valid) {
        t.valid = false;
        t.soft_logout = soft_logout;
      }
    }
    impl_->ChangedLocked();
  }
  impl_->PostWake();
}

void MatrixServer::ForgetFilters() {
  std::lock_guard<std::mutex> lock(impl_->mu_);
  impl_->filters_.clear();
  impl_->ChangedLocked();
}

void MatrixServer::SetRateLimit(bool on, double per_second, int burst) {
  std::lock_guard<std::mutex> lock(impl_->mu_);
  impl_->rate_on_ = on;
  impl_->rate_per_second_ = per_second;
  impl_->rate_burst_ = burst;
  impl_->buckets_.clear();
}

}  // namespace parley::testing
