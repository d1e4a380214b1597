// websocketpp 0.8.2 uses Boost.Asio's deprecated names (io_service, ...): this translation unit
// must not see the project-wide BOOST_ASIO_NO_DEPRECATED. Nothing from Asio crosses the header.
#undef BOOST_ASIO_NO_DEPRECATED

#include "tests/fakes/slack/slack_server.h"

#include <algorithm>
#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <future>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <websocketpp/concurrency/none.hpp>
#include <websocketpp/config/asio_no_tls.hpp>
#include <websocketpp/server.hpp>

#include "net/http.h"

namespace parley::testing {
namespace {

// websocketpp's plain-ws server config without its locks and strands: the endpoint and its
// connections are only ever touched on the server's one io thread (handlers run there; every
// public method that writes to a socket posts to it or uses RunOnIo).
struct SingleThreadWsConfig : public websocketpp::config::asio {
  typedef SingleThreadWsConfig type;
  typedef websocketpp::config::asio base;
  typedef websocketpp::concurrency::none concurrency_type;
  typedef base::request_type request_type;
  typedef base::response_type response_type;
  typedef base::message_type message_type;
  typedef base::con_msg_manager_type con_msg_manager_type;
  typedef base::endpoint_msg_manager_type endpoint_msg_manager_type;
  typedef websocketpp::log::basic<concurrency_type, websocketpp::log::elevel> elog_type;
  typedef websocketpp::log::basic<concurrency_type, websocketpp::log::alevel> alog_type;
  typedef base::rng_type rng_type;
  static bool const enable_multithreading = false;
  struct transport_config : public base::transport_config {
    typedef type::concurrency_type concurrency_type;
    typedef type::alog_type alog_type;
    typedef type::elog_type elog_type;
    typedef type::request_type request_type;
    typedef type::response_type response_type;
    typedef websocketpp::transport::asio::basic_socket::endpoint socket_type;
    static bool const enable_multithreading = false;
  };
  typedef websocketpp::transport::asio::endpoint<transport_config> transport_type;
};

using Json = nlohmann::json;
using WsServer = websocketpp::server<SingleThreadWsConfig>;
using Hdl = websocketpp::connection_hdl;
using Clock = std::chrono::steady_clock;

std::string PercentDecode(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '+') {
      out += ' ';
    } else if (s[i] == '%' && i + 2 < s.size()) {
      unsigned int v = 0;
      if (std::sscanf(std::string(s.substr(i + 1, 2)).c_str(), "%2x", &v) == 1) {
        out += static_cast<char>(v);
        i += 2;
      } else {
        out += s[i];
      }
    } else {
      out += s[i];
    }
  }
  return out;
}

// application/x-www-form-urlencoded (or a query string) into a flat JSON object of strings.
Json ParseForm(std::string_view body) {
  Json out = Json::object();
  size_t pos = 0;
  while (pos <= body.size()) {
    size_t amp = body.find('&', pos);
    if (amp == std::string_view::npos) amp = body.size();
    std::string_view part = body.substr(pos, amp - pos);
    if (!part.empty()) {
      size_t eq = part.find('=');
      std::string key = PercentDecode(part.substr(0, eq));
      std::string value = eq == std::string_view::npos ? "" : PercentDecode(part.substr(eq + 1));
      out[key] = value;
    }
    pos = amp + 1;
  }
  return out;
}

std::string StringArg(const Json& args, const char* key) {
  auto it = args.find(key);
  if (it == args.end() || it->is_null()) return "";
  if (it->is_string()) return it->get<std::string>();
  return it->dump();
}

// Form arguments carry JSON-valued fields (blocks, metadata) as strings.
Json JsonArg(const Json& args, const char* key) {
  auto it = args.find(key);
  if (it == args.end() || it->is_null()) return nullptr;
  if (it->is_string()) {
    Json parsed = Json::parse(it->get<std::string>(), nullptr, false);
    return parsed.is_discarded() ? Json(*it) : parsed;
  }
  return *it;
}

net::HttpResponse JsonResponse(const Json& body, int status = 200) {
  net::HttpResponse r;
  r.status = status;
  r.content_type = "application/json; charset=utf-8";
  r.body = body.dump();
  return r;
}

// Appends `s` as a JSON string literal, escaped as nlohmann::json::dump() escapes it (", \\,
// \b \f \n \r \t, other control characters as \u00xx; UTF-8 passed through), so hand-built
// bodies read the same as dumped ones.
void AppendJsonString(std::string& out, std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  out += '"';
  size_t run = 0;  // start of the pending run of bytes that need no escape
  for (size_t i = 0; i < s.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c != '"' && c != '\\') continue;
    out.append(s.data() + run, i - run);
    run = i + 1;
    out += '\\';
    switch (c) {
      case '"':
      case '\\':
        out += static_cast<char>(c);
        break;
      case '\b':
        out += 'b';
        break;
      case '\f':
        out += 'f';
        break;
      case '\n':
        out += 'n';
        break;
      case '\r':
        out += 'r';
        break;
      case '\t':
        out += 't';
        break;
      default:
        out += "u00";
        out += kHex[c >> 4];
        out += kHex[c & 0xF];
    }
  }
  out.append(s.data() + run, s.size() - run);
  out += '"';
}

// For a JSON text the parser accepted as an object: the raw text of the values of its top-level
// members "blocks" and "metadata" (the last of each, as the parser keeps the last). Both empty
// when a member name uses escapes (the caller then serialises the parsed values instead).
struct RawBlocksAndMetadata {
  std::string_view blocks;
  std::string_view metadata;
};
RawBlocksAndMetadata FindRawBlocksAndMetadata(std::string_view json) {
  const size_t n = json.size();
  size_t i = 0;
  auto skip_ws = [&] {
    while (i < n && (json[i] == ' ' || json[i] == '\t' || json[i] == '\n' || json[i] == '\r')) ++i;
  };
  auto skip_string = [&] {  // at the opening quote; false when unterminated
    ++i;
    while (true) {
      i = json.find_first_of("\"\\", i);
      if (i == std::string_view::npos) return false;
      if (json[i] == '"') break;
      i += 2;  // the backslash and the escaped character
    }
    ++i;
    return true;
  };
  skip_ws();
  if (i >= n || json[i] != '{') return {};
  ++i;
  RawBlocksAndMetadata found;
  while (true) {
    skip_ws();
    if (i < n && json[i] == ',') {
      ++i;
      skip_ws();
    }
    if (i >= n) return {};
    if (json[i] == '}') return found;
    if (json[i] != '"') return {};
    const size_t name_start = i + 1;
    if (!skip_string()) return {};
    const std::string_view name = json.substr(name_start, i - 1 - name_start);
    if (name.find('\\') != std::string_view::npos) return {};
    skip_ws();
    if (i >= n || json[i] != ':') return {};
    ++i;
    skip_ws();
    if (i >= n) return {};
    const size_t value_start = i;
    if (json[i] == '"') {
      if (!skip_string()) return {};
    } else if (json[i] == '{' || json[i] == '[') {
      int depth = 0;
      while (true) {
        i = json.find_first_of("\"{}[]", i);
        if (i == std::string_view::npos) return {};
        const char c = json[i];
        if (c == '"') {
          if (!skip_string()) return {};
          continue;
        }
        ++i;
        if (c == '{' || c == '[') ++depth;
        if ((c == '}' || c == ']') && --depth == 0) break;
      }
    } else {
      while (i < n && json[i] != ',' && json[i] != '}' && json[i] != ' ' && json[i] != '\t' &&
             json[i] != '\n' && json[i] != '\r') {
        ++i;
      }
    }
    if (name == "blocks") found.blocks = json.substr(value_start, i - value_start);
    if (name == "metadata") found.metadata = json.substr(value_start, i - value_start);
  }
}

net::HttpResponse SlackError(const std::string& error) {
  return JsonResponse(Json{{"ok", false}, {"error", error}});
}

}  // namespace

class SlackServer::Impl {
 public:
  explicit Impl(SlackServerOptions options)
      : options_(std::move(options)), guard_(io_.get_executor()) {
    for (const auto& c : options_.channels) channels_.insert(c);
    http_ = std::make_unique<net::HttpServer>(io_, net::HttpServerOptions{},
                                              [this](net::HttpRequest req, net::Responder respond) {
                                                const int delay_ms = TakeDelay(req.path);
                                                net::HttpResponse r = HandleHttp(req);
                                                if (delay_ms > 0) {
                                                  return AnswerLater(delay_ms, std::move(r),
                                                                     std::move(respond));
                                                }
                                                respond(std::move(r));
                                                if (options_.on_message) NotifyRecorded();
                                              });
    api_port_ = http_->ListenTcp("127.0.0.1", 0).value();

    ws_.clear_access_channels(websocketpp::log::alevel::all);
    ws_.clear_error_channels(websocketpp::log::elevel::all);
    ws_.init_asio(&io_);
    ws_.set_reuse_addr(true);
    ws_.set_validate_handler([this](Hdl h) { return OnValidate(h); });
    ws_.set_open_handler([this](Hdl h) { OnOpen(h); });
    ws_.set_close_handler([this](Hdl h) { OnGone(h); });
    ws_.set_fail_handler([this](Hdl h) { OnGone(h); });
    ws_.set_message_handler([this](Hdl h, WsServer::message_ptr m) { OnMessage(h, m); });
    ws_.set_ping_handler([this](Hdl h, std::string) { return OnPing(h); });
    ws_.set_pong_handler([this](Hdl, std::string) {
      std::lock_guard<std::mutex> lock(mu_);
      ++counters_.pongs_received;
      Changed();
    });
    websocketpp::lib::error_code ec;
    ws_.listen(boost::asio::ip::tcp::endpoint(boost::asio::ip::make_address("127.0.0.1"), 0), ec);
    if (!ec) ws_.start_accept(ec);
    if (ec) std::abort();  // a test fixture that cannot listen is useless
    boost::system::error_code bec;
    ws_port_ = ws_.get_local_endpoint(bec).port();
    thread_ = std::thread([this] { io_.run(); });
  }

  ~Impl() {
    RunOnIo([this] {
      websocketpp::lib::error_code ec;
      ws_.stop_listening(ec);
      for (auto& [id, c] : conns_) {
        ws_.close(c.hdl, websocketpp::close::status::going_away, "server shutdown", ec);
      }
      ack_timer_.cancel();
    });
    http_->Stop();
    // Whatever is still open is cut (the io thread stops right after).
    RunOnIo([this] {
      websocketpp::lib::error_code ec;
      for (auto& [id, c] : conns_) {
        WsServer::connection_ptr con = ws_.get_con_from_hdl(c.hdl, ec);
        boost::system::error_code bec;
        if (con) con->get_raw_socket().close(bec);
      }
    });
    guard_.reset();
    io_.stop();
    thread_.join();
    http_.reset();
  }

  // ---------------- HTTP ----------------

  // Body arguments over query ones, moved (a chat.postMessage body is not copied).
  static void MergeInto(Json& args, Json&& more) {
    if (args.empty()) {
      args = std::move(more);
      return;
    }
    for (auto& [k, v] : more.items()) args[k] = std::move(v);
  }

  // With mu_ held, on the io thread: appends m to messages_, stamped with the receive time, and
  // queues its index for the on_message observer (if any). Returns the recorded message (valid
  // until the next RecordLocked).
  const SlackPostedMessage& RecordLocked(SlackPostedMessage&& m) {
    m.received_ns =
        std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
            .count();
    messages_.push_back(std::move(m));
    if (options_.on_message) to_notify_.push_back(messages_.size() - 1);
    return messages_.back();
  }

  // Milliseconds to hold back the answer to this request (DelayNext); 0 for none.
  int TakeDelay(const std::string& path) {
    if (path.compare(0, 5, "/api/") != 0) return 0;
    std::lock_guard<std::mutex> lock(mu_);
    auto it = delay_next_.find(path.substr(5));
    if (it == delay_next_.end() || it->second.n <= 0) return 0;
    --it->second.n;
    return it->second.delay_ms;
  }

  void AnswerLater(int delay_ms, net::HttpResponse r, net::Responder respond) {
    auto timer = std::make_shared<boost::asio::steady_timer>(io_);
    timer->expires_after(std::chrono::milliseconds(delay_ms));
    auto answer = std::make_shared<std::pair<net::HttpResponse, net::Responder>>(std::move(r),
                                                                                 std::move(respond));
    timer->async_wait([this, timer, answer](boost::system::error_code) {
      answer->second(std::move(answer->first));
      if (options_.on_message) NotifyRecorded();
    });
  }

  // On the io thread, without mu_: hands what RecordLocked queued to the observer. messages_ is
  // only appended to on this thread (RecordLocked), so its elements can be read here without mu_
  // (other threads only read them too) and stay put while the observer runs.
  void NotifyRecorded() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (to_notify_.empty()) return;
      notify_batch_.swap(to_notify_);
    }
    for (size_t i : notify_batch_) options_.on_message(messages_[i]);
    if (!options_.keep_history) {
      std::lock_guard<std::mutex> lock(mu_);
      for (size_t i : notify_batch_) {
        messages_[i].args = Json();
        messages_[i].blocks = Json();
      }
    }
    notify_batch_.clear();
  }

  net::HttpResponse HandleHttp(const net::HttpRequest& req) {
    if (req.path.compare(0, 16, "/hooks/commands/") == 0) return HandleResponseUrl(req);
    const std::string prefix = "/api/";
    if (req.path.compare(0, prefix.size(), prefix) != 0) {
      return JsonResponse(Json{{"ok", false}, {"error", "not_found"}}, 404);
    }
    std::string method = req.path.substr(prefix.size());
    Json args = ParseForm(req.query);
    std::string content_type = net::FindHeader(req.headers, "Content-Type");
    const bool json_body = !req.body.empty() &&
                           content_type.find("application/json") != std::string::npos;
    if (!req.body.empty()) {
      if (json_body) {
        Json body = Json::parse(req.body, nullptr, false);
        if (body.is_discarded() || !body.is_object()) return SlackError("invalid_json");
        MergeInto(args, std::move(body));
      } else {
        MergeInto(args, ParseForm(req.body));
      }
    }
    std::string token;
    std::string auth = net::FindHeader(req.headers, "Authorization");
    if (auth.compare(0, 7, "Bearer ") == 0) {
      token = auth.substr(7);
    } else if (content_type.find("application/json") == std::string::npos) {
      token = StringArg(args, "token");  // form field (never for JSON bodies)
    }

    std::lock_guard<std::mutex> lock(mu_);
    ++counters_.api_calls;
    Changed();
    if (auto it = rate_limit_next_.find(method); it != rate_limit_next_.end() && it->second.n > 0) {
      --it->second.n;
      return RateLimited(it->second.retry_after_s);
    }
    if (auto it = fail_next_.find(method); it != fail_next_.end() && it->second.n > 0) {
      --it->second.n;
      ++counters_.errors_served;
      return JsonResponse(Json{{"ok", false}, {"error", "fatal_error"}}, it->second.status);
    }
    if (auto it = error_next_.find(method); it != error_next_.end() && it->second.n > 0) {
      --it->second.n;
      return SlackError(it->second.error);
    }

    if (method == "apps.connections.open") {
      if (token.empty()) return SlackError("not_authed");
      if (token != options_.app_token) return SlackError("invalid_auth");
      std::string ticket = "tk" + std::to_string(++next_ticket_) + "x" + std::to_string(ws_port_);
      tickets_.insert(ticket);
      return JsonResponse(
          Json{{"ok", true},
               {"url", "ws://127.0.0.1:" + std::to_string(ws_port_) + "/link/?ticket=" + ticket}});
    }
    if (method != "auth.test" && method != "chat.postMessage" && method != "chat.update" &&
        method != "chat.delete" && method != "chat.postEphemeral" && method != "reactions.add" &&
        method != "reactions.remove" && method != "conversations.history" &&
        method != "conversations.replies" && method != "users.info" &&
        method != "conversations.open") {
      return SlackError("unknown_method");
    }
    if (token.empty()) return SlackError("not_authed");
    if (token != options_.bot_token) return SlackError("invalid_auth");
    if (method == "users.info") {
      ++counters_.users_info_calls;
      // A read method: form or query arguments only.
      if (content_type.find("application/json") != std::string::npos) {
        return SlackError("invalid_arguments");
      }
      const std::string user = StringArg(args, "user");
      auto it = options_.users.find(user);
      if (user.empty() || it == options_.users.end()) return SlackError("user_not_found");
      return JsonResponse(Json{
          {"ok", true},
          {"user",
           {{"id", user},
            {"team_id", options_.team_id},
            {"name", "u_" + user},
            {"real_name", it->second + " Real"},
            {"profile", {{"display_name", it->second}, {"real_name", it->second + " Real"}}}}}});
    }
    if (method == "conversations.open") {
      ++counters_.conversations_open_calls;
      const std::string users = StringArg(args, "users");
      if (users.empty() || users.find(',') != std::string::npos) {
        return SlackError(users.empty() ? "users_list_not_supplied" : "not_supported");
      }
      const std::string dm = SlackServer::DmChannelFor(users);
      channels_.insert(dm);
      return JsonResponse(Json{{"ok", true}, {"channel", {{"id", dm}}}});
    }
    if (method == "conversations.history" || method == "conversations.replies") {
      // Read methods take form or query arguments only: a JSON body is not read at all.
      if (content_type.find("application/json") != std::string::npos) {
        return SlackError("invalid_arguments");
      }
      return ReadConversation(method, args);
    }
    if (method == "auth.test") {
      return JsonResponse(Json{{"ok", true},
                               {"url", "https://fake.slack.com/"},
                               {"team", "Fake"},
                               {"user", "parley"},
                               {"team_id", options_.team_id},
                               {"user_id", options_.bot_user_id},
                               {"bot_id", options_.bot_id}});
    }

    std::string channel = StringArg(args, "channel");
    if (method == "reactions.add" || method == "reactions.remove") {
      SlackReaction r;
      r.added = method == "reactions.add";
      r.channel = channel;
      r.timestamp = StringArg(args, "timestamp");
      r.name = StringArg(args, "name");
      if (r.channel.empty() || r.timestamp.empty() || r.name.empty()) {
        return SlackError("invalid_arguments");
      }
      if (!channels_.count(channel)) return SlackError("channel_not_found");
      auto key = std::make_tuple(r.channel, r.timestamp, r.name);
      if (r.added && !reacted_.insert(key).second) return SlackError("already_reacted");
      if (!r.added && reacted_.erase(key) == 0) return SlackError("no_reaction");
      ++counters_.reactions;
      if (options_.keep_history) reactions_.push_back(r);
      return JsonResponse(Json{{"ok", true}});
    }

    if (method == "chat.delete") {
      // A bot may delete its own messages; message_not_found for anything else.
      const std::string ts = StringArg(args, "ts");
      if (channel.empty() || ts.empty()) return SlackError("invalid_arguments");
      if (!channels_.count(channel)) return SlackError("channel_not_found");
      auto it = live_.find(channel + "/" + ts);
      if (it == live_.end()) return SlackError("message_not_found");
      conversation_[it->second].deleted = true;  // gone from the conversation
      live_.erase(it);
      SlackPostedMessage d;
      d.method = method;
      d.channel = channel;
      d.ts = ts;
      d.args = std::move(args);
      RecordLocked(std::move(d));
      return JsonResponse(Json{{"ok", true}, {"channel", channel}, {"ts", ts}});
    }

    SlackPostedMessage m;
    m.method = method;
    m.channel = channel;
    m.text = StringArg(args, "text");
    m.thread_ts = StringArg(args, "thread_ts");
    m.user = StringArg(args, "user");
    m.blocks = JsonArg(args, "blocks");
    m.metadata = JsonArg(args, "metadata");
    m.args = std::move(args);  // not used below: read m.args
    bool has_content = !m.text.empty() || (m.blocks.is_array() && !m.blocks.empty());
    if (channel.empty() || !has_content) return SlackError("invalid_arguments");
    if (m.blocks.is_array() && m.blocks.size() > 50) return SlackError("invalid_blocks");
    if (m.text.size() > 40000) return SlackError("msg_too_long");
    if (!channels_.count(channel)) return SlackError("channel_not_found");

    if (method == "chat.postMessage") {
      if (budget_per_second_ > 0) {
        Bucket& b = buckets_[channel];
        auto now = Clock::now();
        if (!b.init) {
          b = Bucket{true, static_cast<double>(budget_burst_), now};
        } else {
          double dt = std::chrono::duration<double>(now - b.last).count();
          b.tokens = std::min<double>(budget_burst_, b.tokens + dt * budget_per_second_);
          b.last = now;
        }
        if (b.tokens < 1.0) {
          int wait = static_cast<int>(std::ceil((1.0 - b.tokens) / budget_per_second_));
          return RateLimited(std::max(1, wait));
        }
        b.tokens -= 1.0;
      }
      m.ts = NextTs();
      live_[channel + "/" + m.ts] = conversation_.size();
      conversation_.emplace_back();
      conversation_.back().post = messages_.size();  // RecordLocked appends it there
      const SlackPostedMessage& posted = RecordLocked(std::move(m));
      if (options_.echo_bot_posts) {
        Json echo{
            {"type", "message"},         {"text", posted.text}, {"user", options_.bot_user_id},
            {"bot_id", options_.bot_id}, {"ts", posted.ts},     {"team", options_.team_id}};
        if (!posted.thread_ts.empty()) echo["thread_ts"] = posted.thread_ts;
        if (!posted.blocks.is_null()) echo["blocks"] = posted.blocks;
        if (!posted.metadata.is_null()) echo["metadata"] = posted.metadata;
        echo["channel"] = channel;
        echo["channel_type"] = channel.compare(0, 1, "D") == 0 ? "im" : "channel";
        echo["event_ts"] = posted.ts;
        EnqueueEventLocked(echo);
      }
      // The answer repeats blocks and metadata: as the client sent them when they came as JSON
      // values in a JSON body (no second serialisation), else serialised from the parsed value.
      std::string_view raw_blocks, raw_metadata;
      if (json_body) {
        auto is_json_value = [&](const char* key) {
          auto it = posted.args.find(key);
          return it != posted.args.end() && (it->is_array() || it->is_object());
        };
        const RawBlocksAndMetadata raw = FindRawBlocksAndMetadata(req.body);
        if (is_json_value("blocks")) raw_blocks = raw.blocks;
        if (is_json_value("metadata")) raw_metadata = raw.metadata;
      }
      return PostMessageResponse(posted, raw_blocks, raw_metadata);
    }
    if (method == "chat.update") {
      m.ts = StringArg(m.args, "ts");
      if (m.ts.empty()) return SlackError("invalid_arguments");
      auto live = live_.find(channel + "/" + m.ts);
      if (live == live_.end()) return SlackError("message_not_found");
      // Slack: text replaces the text; blocks and metadata replace theirs only when given.
      ConversationEntry& current = conversation_[live->second];
      current.edited = true;
      current.text = m.text;
      if (!m.blocks.is_null()) current.blocks = m.blocks;
      if (!m.metadata.is_null()) current.metadata = m.metadata;
      m.thread_ts = messages_[current.post].thread_ts;
      Json response{{"ok", true},
                    {"channel", channel},
                    {"ts", m.ts},
                    {"text", m.text},
                    {"message", Json{{"text", m.text}}}};
      RecordLocked(std::move(m));
      return JsonResponse(response);
    }
    // chat.postEphemeral
    if (m.user.empty()) return SlackError("invalid_arguments");
    m.ts = NextTs();
    const SlackPostedMessage& ephemeral = RecordLocked(std::move(m));
    return JsonResponse(Json{{"ok", true}, {"message_ts", ephemeral.ts}});
  }

  // One bot message of the conversation: the index of its chat.postMessage in messages_, and
  // what chat.update / chat.delete did to it since.
  struct ConversationEntry {
    size_t post = 0;
    bool deleted = false;
    bool edited = false;  // text replaced by `text`
    std::string text;
    Json blocks;    // replaced blocks; null = the post's
    Json metadata;  // replaced metadata; null = the post's
  };

  // chat.postMessage's answer: Slack's {"ok","channel","ts","message"} with the message object as
  // Slack returns it (type, text, user, bot_id, ts, team, and thread_ts, blocks, metadata when
  // given). Written directly, in the key order dump() uses, instead of building a DOM that copies
  // the blocks: this is the hot path of the benchmarks.
  // raw_blocks / raw_metadata: the JSON text of m.blocks / m.metadata as received, or empty to
  // serialise them.
  net::HttpResponse PostMessageResponse(const SlackPostedMessage& m, std::string_view raw_blocks,
                                        std::string_view raw_metadata) const {
    std::string blocks_dump, metadata_dump;
    if (raw_blocks.empty() && !m.blocks.is_null()) blocks_dump = m.blocks.dump();
    if (raw_metadata.empty() && !m.metadata.is_null()) metadata_dump = m.metadata.dump();
    const std::string_view blocks = raw_blocks.empty() ? blocks_dump : raw_blocks;
    const std::string_view metadata = raw_metadata.empty() ? metadata_dump : raw_metadata;
    net::HttpResponse r;
    r.status = 200;
    r.content_type = "application/json; charset=utf-8";
    std::string& b = r.body;
    b.reserve(160 + 2 * m.text.size() + blocks.size() + metadata.size() + 4 * m.channel.size());
    b += "{\"channel\":";
    AppendJsonString(b, m.channel);
    b += ",\"message\":{";
    if (!blocks.empty()) {
      b += "\"blocks\":";
      b += blocks;
      b += ',';
    }
    b += "\"bot_id\":";
    AppendJsonString(b, options_.bot_id);
    if (!metadata.empty()) {
      b += ",\"metadata\":";
      b += metadata;
    }
    b += ",\"team\":";
    AppendJsonString(b, options_.team_id);
    b += ",\"text\":";
    AppendJsonString(b, m.text);
    if (!m.thread_ts.empty()) {
      b += ",\"thread_ts\":";
      AppendJsonString(b, m.thread_ts);
    }
    b += ",\"ts\":";
    AppendJsonString(b, m.ts);
    b += ",\"type\":\"message\",\"user\":";
    AppendJsonString(b, options_.bot_user_id);
    b += "},\"ok\":true,\"ts\":";
    AppendJsonString(b, m.ts);
    b += '}';
    return r;
  }

  // A bot message as the conversation shows it now: its post with the edits applied. Caller
  // holds mu_.
  SlackPostedMessage Current(const ConversationEntry& entry) const {
    SlackPostedMessage m = messages_[entry.post];
    if (entry.edited) m.text = entry.text;
    if (!entry.blocks.is_null()) m.blocks = entry.blocks;
    if (!entry.metadata.is_null()) m.metadata = entry.metadata;
    return m;
  }

  // conversations.history (top-level messages of a channel, newest first, ts > oldest) and
  // conversations.replies (a thread: its root, if posted here, then the replies, oldest first).
  // Messages the bot posted are the ones this server knows; metadata only with
  // include_all_metadata=true. Caller holds mu_.
  net::HttpResponse ReadConversation(const std::string& method, const Json& args) {
    const std::string channel = StringArg(args, "channel");
    if (channel.empty()) return SlackError("channel_not_found");
    if (!channels_.count(channel)) return SlackError("channel_not_found");
    const std::string root = StringArg(args, "ts");
    if (method == "conversations.replies" && root.empty()) return SlackError("invalid_arguments");
    const std::string oldest = StringArg(args, "oldest");
    const bool metadata = StringArg(args, "include_all_metadata") == "true" ||
                          StringArg(args, "include_all_metadata") == "1";
    auto ts_value = [](const std::string& ts) { return std::strtod(ts.c_str(), nullptr); };
    Json list = Json::array();
    for (const ConversationEntry& entry : conversation_) {
      if (entry.deleted) continue;
      const SlackPostedMessage& m = messages_[entry.post];  // the post; edits from `entry`
      if (m.channel != channel) continue;
      if (method == "conversations.replies") {
        if (m.thread_ts != root && m.ts != root) continue;
      } else {
        if (!m.thread_ts.empty()) continue;
        if (!oldest.empty() && ts_value(m.ts) <= ts_value(oldest)) continue;
      }
      const std::string& text = entry.edited ? entry.text : m.text;
      const Json& meta = entry.metadata.is_null() ? m.metadata : entry.metadata;
      Json j{{"type", "message"},
             {"user", options_.bot_user_id},
             {"bot_id", options_.bot_id},
             {"text", text},
             {"ts", m.ts}};
      if (!m.thread_ts.empty()) j["thread_ts"] = m.thread_ts;
      if (metadata && !meta.is_null()) j["metadata"] = meta;
      list.push_back(j);
    }
    if (method == "conversations.history") std::reverse(list.begin(), list.end());
    return JsonResponse(Json{{"ok", true}, {"messages", list}, {"has_more", false}});
  }

  // A slash command's response_url (Slack: https://hooks.slack.com/commands/T…/…/…): a JSON
  // message, no token; 404 for an unknown URL.
  net::HttpResponse HandleResponseUrl(const net::HttpRequest& req) {
    std::lock_guard<std::mutex> lock(mu_);
    ++counters_.api_calls;
    Changed();
    if (req.method != "POST" || !response_urls_.count(req.path)) {
      net::HttpResponse r;
      r.status = 404;
      r.content_type = "text/plain";
      r.body = "no_service";
      return r;
    }
    Json body = Json::parse(req.body, nullptr, false);
    if (!body.is_object()) return SlackError("invalid_payload");
    SlackPostedMessage m;
    m.method = "response_url";
    m.text = StringArg(body, "text");
    m.blocks = JsonArg(body, "blocks");
    m.args = body;
    m.ts = req.path;
    if (m.text.empty() && !(m.blocks.is_array() && !m.blocks.empty())) {
      return SlackError("no_text");
    }
    RecordLocked(std::move(m));
    net::HttpResponse r;
    r.content_type = "text/plain";
    r.body = "ok";
    return r;
  }

  net::HttpResponse RateLimited(int retry_after_s) {
    ++counters_.ratelimited_served;
    net::HttpResponse r = JsonResponse(Json{{"ok", false}, {"error", "ratelimited"}}, 429);
    r.headers.emplace_back("Retry-After", std::to_string(retry_after_s));
    return r;
  }

  // Like Slack's: the posting time in epoch seconds with six decimals, unique per server (a
  // message in the same microsecond as the previous one gets the next microsecond).
  std::string NextTs() {
    const uint64_t now = static_cast<uint64_t>(
        std::chrono::duration_cast<std::chrono::microseconds>(
            std::chrono::system_clock::now().time_since_epoch())
            .count());
    next_ts_ = std::max(next_ts_ + 1, now);
    char buf[40];
    std::snprintf(buf, sizeof buf, "%llu.%06llu",
                  static_cast<unsigned long long>(next_ts_ / 1000000),
                  static_cast<unsigned long long>(next_ts_ % 1000000));
    return buf;
  }

  // ---------------- WebSocket ----------------

  bool OnValidate(Hdl h) {
    websocketpp::lib::error_code ec;
    WsServer::connection_ptr con = ws_.get_con_from_hdl(h, ec);
    if (!con) return false;
    std::string resource = con->get_resource();
    std::string ticket;
    size_t q = resource.find('?');
    if (resource.compare(0, 6, "/link/") == 0 && q != std::string::npos) {
      ticket = StringArg(ParseForm(std::string_view(resource).substr(q + 1)), "ticket");
    }
    std::lock_guard<std::mutex> lock(mu_);
    if (ticket.empty() || tickets_.erase(ticket) == 0) {
      ++counters_.handshakes_rejected;
      Changed();
      con->set_status(websocketpp::http::status_code::unauthorized);
      return false;
    }
    return true;
  }

  void OnOpen(Hdl h) {
    std::unique_lock<std::mutex> lock(mu_);
    ++counters_.connections_opened;
    websocketpp::lib::error_code ec;
    if (static_cast<int>(conns_.size()) >= options_.max_connections) {
      ++counters_.too_many_websockets;
      Changed();
      lock.unlock();
      ws_.send(h, DisconnectFrame("too_many_websockets").dump(), websocketpp::frame::opcode::text,
               ec);
      ws_.close(h, websocketpp::close::status::policy_violation, "too_many_websockets", ec);
      return;
    }
    int id = ++next_conn_id_;
    conns_[id] = Conn{h, false};
    ids_[h] = id;
    counters_.connections_open = conns_.size();
    Json hello{{"type", "hello"},
               {"num_connections", conns_.size()},
               {"debug_info", {{"host", "fake"}, {"approximate_connection_time", 3600}}},
               {"connection_info", {{"app_id", options_.app_id}}}};
    ws_.send(h, hello.dump(), websocketpp::frame::opcode::text, ec);
    Changed();
    FlushQueueLocked();
  }

  void OnGone(Hdl h) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = ids_.find(h);
    if (it == ids_.end()) return;
    conns_.erase(it->second);
    ids_.erase(it);
    counters_.connections_open = conns_.size();
    Changed();
  }

  bool OnPing(Hdl h) {
    std::lock_guard<std::mutex> lock(mu_);
    ++counters_.pings_received;
    Changed();
    auto it = ids_.find(h);
    if (!answer_pings_) return false;
    if (it != ids_.end() && conns_[it->second].zombie) return false;
    return true;
  }

  void OnMessage(Hdl h, const WsServer::message_ptr& msg) {
    std::lock_guard<std::mutex> lock(mu_);
    std::string& payload = msg->get_raw_payload();  // the message is not read after this
    if (options_.keep_history) frames_.push_back(std::move(payload));
    const std::string& text = options_.keep_history ? frames_.back() : payload;
    int conn_id = 0;
    if (auto it = ids_.find(h); it != ids_.end()) conn_id = it->second;
    Json j = Json::parse(text, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("envelope_id") ||
        !j["envelope_id"].is_string()) {
      ++counters_.malformed_frames_received;
      Changed();
      return;
    }
    SlackAck ack;
    ack.envelope_id = j["envelope_id"].get<std::string>();
    if (j.contains("payload")) ack.payload = j["payload"];
    ack.connection_id = conn_id;
    auto p = pending_.find(ack.envelope_id);
    if (p != pending_.end()) {
      ack.known = true;
      pending_.erase(p);  // its entry in ack_deadlines_ is skipped when it comes due
    }
    if (options_.keep_history) acks_.push_back(std::move(ack));
    ++counters_.acks;
    Changed();
  }

  Json DisconnectFrame(const std::string& reason) const {
    return Json{{"type", "disconnect"}, {"reason", reason}, {"debug_info", {{"host", "fake"}}}};
  }

  // An envelope waiting to be written, or written and waiting for its ack.
  struct Envelope {
    std::string envelope_id;
    std::string type;
    std::string event_id;
    std::string payload;  // serialised once: redeliveries and the frame reuse it as is
    int retry_attempt = 0;
    std::string retry_reason;
  };

  std::string NewEnvelopeId() { return "env-" + std::to_string(++next_envelope_) + "-fake"; }
  // Any thread, without mu_.
  std::string NewEventId() {
    return "Ev" + std::to_string(1000000 + next_event_.fetch_add(1) + 1) + "FAKE";
  }

  // Any thread, without mu_ (reads only options_ fields nothing changes): `event` wrapped in an
  // event_callback payload, serialised as dump() would (keys in its order), without copying
  // `event` into a DOM first.
  std::string EventPayload(const Json& event, const std::string& event_id) const {
    const auto& o = options_;
    const auto now = std::chrono::duration_cast<std::chrono::seconds>(
                         std::chrono::system_clock::now().time_since_epoch())
                         .count();
    std::string p;
    p.reserve(420);
    p += "{\"api_app_id\":";
    AppendJsonString(p, o.app_id);
    p += ",\"authorizations\":[{\"enterprise_id\":null,\"is_bot\":true,"
         "\"is_enterprise_install\":false,\"team_id\":";
    AppendJsonString(p, o.team_id);
    p += ",\"user_id\":";
    AppendJsonString(p, o.bot_user_id);
    p += "}],\"event\":";
    p += event.dump();
    p += ",\"event_id\":";
    AppendJsonString(p, event_id);
    p += ",\"event_time\":";
    p += std::to_string(now);
    p += ",\"is_ext_shared_channel\":false,\"team_id\":";
    AppendJsonString(p, o.team_id);
    p += ",\"token\":\"fake-verification-token\",\"type\":\"event_callback\"}";
    return p;
  }

  // With mu_ held: wraps `event` in an event_callback payload and queues an events_api envelope.
  std::string EnqueueEventLocked(const Json& event) {
    std::string event_id = NewEventId();
    std::string payload = EventPayload(event, event_id);
    EnqueueEventPayloadLocked(event_id, std::move(payload));
    return event_id;
  }

  // With mu_ held: queues an events_api envelope around a payload from EventPayload.
  void EnqueueEventPayloadLocked(const std::string& event_id, std::string payload) {
    Envelope e;
    e.envelope_id = NewEnvelopeId();
    e.type = "events_api";
    e.event_id = event_id;
    e.payload = std::move(payload);
    EnqueueLocked(std::move(e));
  }

  // Called with mu_ held, on any thread: queues and schedules a flush on the io thread (one
  // flush for however many envelopes are queued before it runs).
  void EnqueueLocked(Envelope e) {
    queue_.push_back(std::move(e));
    if (flush_posted_) return;
    flush_posted_ = true;
    boost::asio::post(io_, [this] {
      std::lock_guard<std::mutex> lock(mu_);
      flush_posted_ = false;
      FlushQueueLocked();
    });
  }

  // The Socket Mode frame of an envelope, serialised as dump() would.
  static std::string Frame(const Envelope& e) {
    std::string f;
    f.reserve(e.payload.size() + 160);
    f += "{\"accepts_response_payload\":";
    f += e.type != "events_api" ? "true" : "false";
    f += ",\"envelope_id\":";
    AppendJsonString(f, e.envelope_id);
    f += ",\"payload\":";
    f += e.payload;
    f += ",\"retry_attempt\":";
    f += std::to_string(e.retry_attempt);
    f += ",\"retry_reason\":";
    AppendJsonString(f, e.retry_reason);
    f += ",\"type\":";
    AppendJsonString(f, e.type);
    f += '}';
    return f;
  }

  // On the io thread with mu_ held: writes queued envelopes to healthy sockets, round-robin, and
  // starts their ack deadlines.
  void FlushQueueLocked() {
    while (!queue_.empty()) {
      int conn_id = PickConnLocked();
      if (conn_id == 0) break;  // queued until a healthy socket opens (OnOpen flushes)
      Envelope e = std::move(queue_.front());
      queue_.pop_front();
      websocketpp::lib::error_code ec;
      ws_.send(conns_[conn_id].hdl, Frame(e), websocketpp::frame::opcode::text, ec);
      if (options_.keep_history) {
        deliveries_.push_back(
            SlackDelivery{e.envelope_id, e.type, e.event_id, e.retry_attempt, conn_id});
      }
      ++counters_.envelopes_delivered;
      if (e.retry_attempt > 0) ++counters_.redeliveries;
      Changed();
      ack_deadlines_.push_back(AckDeadline{
          Clock::now() + std::chrono::milliseconds(options_.ack_deadline_ms), e.envelope_id});
      std::string id = e.envelope_id;
      pending_[std::move(id)] = std::move(e);
    }
    ArmAckTimerLocked();
  }

  // With mu_ held, on the io thread: one timer for all ack deadlines and delayed redeliveries,
  // set to the earliest. Every envelope gets the same deadline, so ack_deadlines_ is in deadline
  // order; delayed_ is ordered by its key.
  void ArmAckTimerLocked() {
    Clock::time_point next = Clock::time_point::max();
    if (!ack_deadlines_.empty()) next = ack_deadlines_.front().at;
    if (!delayed_.empty()) next = std::min(next, delayed_.begin()->first);
    if (next == Clock::time_point::max()) return;
    if (ack_timer_armed_ && next >= ack_timer_at_) return;
    ack_timer_armed_ = true;
    ack_timer_at_ = next;
    ack_timer_.expires_at(next);  // cancels a later wait (its handler sees operation_aborted)
    ack_timer_.async_wait([this](const boost::system::error_code& tec) {
      if (tec) return;
      OnAckTimer();
    });
  }

  int PickConnLocked() {
    size_t healthy = 0;
    for (const auto& [id, c] : conns_) healthy += c.zombie ? 0 : 1;
    if (healthy == 0) return 0;
    size_t pick = (rr_++) % healthy;
    for (const auto& [id, c] : conns_) {
      if (c.zombie) continue;
      if (pick-- == 0) return id;
    }
    return 0;  // not reached
  }

  // On the io thread: every envelope whose ack deadline has passed and that is still unacked is
  // redelivered (events_api, up to max_retries) or dropped.
  void OnAckTimer() {
    std::lock_guard<std::mutex> lock(mu_);
    ack_timer_armed_ = false;
    const Clock::time_point now = Clock::now();
    while (!ack_deadlines_.empty() && ack_deadlines_.front().at <= now) {
      std::string envelope_id = std::move(ack_deadlines_.front().envelope_id);
      ack_deadlines_.pop_front();
      auto it = pending_.find(envelope_id);
      if (it == pending_.end()) continue;  // acked in time
      Envelope e = std::move(it->second);
      pending_.erase(it);
      if (e.type != "events_api" || e.retry_attempt >= options_.max_retries) continue;
      e.envelope_id = NewEnvelopeId();
      e.retry_attempt += 1;
      e.retry_reason = "timeout";
      const size_t index = static_cast<size_t>(e.retry_attempt - 1);
      const int delay =
          index < options_.retry_delays_ms.size() ? options_.retry_delays_ms[index] : 0;
      if (delay <= 0) {
        queue_.push_back(std::move(e));
      } else {
        delayed_.emplace(now + std::chrono::milliseconds(delay), std::move(e));
      }
    }
    while (!delayed_.empty() && delayed_.begin()->first <= now) {
      queue_.push_back(std::move(delayed_.begin()->second));
      delayed_.erase(delayed_.begin());
    }
    FlushQueueLocked();
    ArmAckTimerLocked();
  }

  // Runs f on the io thread and waits for it.
  void RunOnIo(std::function<void()> f) {
    std::promise<void> done;
    boost::asio::post(io_, [&] {
      f();
      done.set_value();
    });
    done.get_future().wait();
  }

  void Changed() {
    ++generation_;
    cv_.notify_all();
  }

  struct Conn {
    Hdl hdl;
    bool zombie = false;
  };
  struct Limit {
    int n = 0;
    int retry_after_s = 1;
  };
  struct Failure {
    int n = 0;
    int status = 500;
  };
  struct Bucket {
    bool init = false;
    double tokens = 0;
    Clock::time_point last;
  };

  SlackServerOptions options_;
  boost::asio::io_context io_;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> guard_;
  std::unique_ptr<net::HttpServer> http_;
  WsServer ws_;
  std::thread thread_;
  uint16_t api_port_ = 0;
  uint16_t ws_port_ = 0;

  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  uint64_t generation_ = 0;
  std::set<std::string> channels_;
  std::set<std::string> tickets_;
  uint64_t next_ticket_ = 0;
  uint64_t next_ts_ = 0;
  uint64_t next_envelope_ = 0;
  std::atomic<uint64_t> next_event_{0};
  int next_conn_id_ = 0;
  size_t rr_ = 0;
  bool answer_pings_ = true;
  std::map<std::string, Limit> rate_limit_next_;
  std::map<std::string, Failure> fail_next_;
  struct ErrorReply {
    int n = 0;
    std::string error;
  };
  std::map<std::string, ErrorReply> error_next_;
  struct Delay {
    int n = 0;
    int delay_ms = 0;
  };
  std::map<std::string, Delay> delay_next_;
  // The bot's messages in the order they were posted (edits kept beside the post, applied by
  // Current()), and channel/ts -> index of the live ones.
  std::vector<ConversationEntry> conversation_;
  std::unordered_map<std::string, size_t> live_;
  double budget_per_second_ = 0;
  int budget_burst_ = 1;
  std::map<std::string, Bucket> buckets_;
  std::set<std::tuple<std::string, std::string, std::string>> reacted_;
  std::set<std::string> response_urls_;  // paths of the response_urls handed out
  uint64_t next_response_url_ = 0;
  std::map<int, Conn> conns_;
  std::map<Hdl, int, std::owner_less<Hdl>> ids_;
  std::deque<Envelope> queue_;  // a deque: flushed from the front one by one
  bool flush_posted_ = false;   // a FlushQueueLocked is posted and has not run yet
  std::unordered_map<std::string, Envelope> pending_;  // delivered, not acked, by envelope id
  struct AckDeadline {
    Clock::time_point at;
    std::string envelope_id;
  };
  std::deque<AckDeadline> ack_deadlines_;  // of delivered envelopes, earliest first
  // Redeliveries waiting for their retry delay, by when they are due.
  std::multimap<Clock::time_point, Envelope> delayed_;
  boost::asio::steady_timer ack_timer_{io_};
  bool ack_timer_armed_ = false;
  Clock::time_point ack_timer_at_;  // when the armed timer fires
  std::vector<SlackPostedMessage> messages_;
  std::vector<size_t> to_notify_;     // indices into messages_ not yet handed to on_message
  std::vector<size_t> notify_batch_;  // io thread only: the batch NotifyRecorded is handing out
  std::vector<SlackReaction> reactions_;
  std::vector<SlackDelivery> deliveries_;
  std::vector<SlackAck> acks_;
  std::vector<std::string> frames_;
  SlackCounters counters_;

  friend class SlackServer;
};

SlackServer::SlackServer(SlackServerOptions options)
    : impl_(std::make_unique<Impl>(std::move(options))) {}
SlackServer::~SlackServer() = default;

uint16_t SlackServer::api_port() const { return impl_->api_port_; }
uint16_t SlackServer::ws_port() const { return impl_->ws_port_; }
std::string SlackServer::ApiBaseUrl() const {
  return "http://127.0.0.1:" + std::to_string(impl_->api_port_) + "/api/";
}
const SlackServerOptions& SlackServer::options() const { return impl_->options_; }
std::string SlackServer::NewResponseUrl() {
  std::lock_guard<std::mutex> lock(impl_->mu_);
  const std::string path = "/hooks/commands/" + impl_->options_.team_id + "/" +
                           std::to_string(++impl_->next_response_url_) + "/s3cr3t";
  impl_->response_urls_.insert(path);
  return "http://127.0.0.1:" + std::to_string(impl_->api_port_) + path;
}

void SlackServer::AddChannel(const std::string& channel_id) {
  std::lock_guard<std::mutex> lock(impl_->mu_);
  impl_->channels_.insert(channel_id);
}

void SlackServer::SetUser(const std::string& user_id, const std::string& display_name) {
  std::lock_guard<std::mutex> lock(impl_->mu_);
  impl_->options_.users[user_id] = display_name;
}

std::string SlackServer::DmChannelFor(const std::string& user_id) { return "D" + user_id; }

void SlackServer::RateLimitNext(const std::string& method, int n, int retry_after_s) {
  std::lock_guard<std::mutex> lock(impl_->mu_);
  impl_->rate_limit_next_[method] = Impl::Limit{n, retry_after_s};
}

void SlackServer::FailNext(const std::string& method, int n, int status) {
  std::lock_guard<std::mutex> lock(impl_->mu_);
  impl_->fail_next_[method] = Impl::Failure{n, status};
}

void SlackServer::SetPostMessageBudget(double per_second, int burst) {
  std::lock_guard<std::mutex> lock(impl_->mu_);
  impl_->budget_per_second_ = per_second;
  impl_->budget_burst_ = std::max(1, burst);
  impl_->buckets_.clear();
}

std::string SlackServer::SendEvent(const nlohmann::json& event) {
  // Serialised before taking the lock: the io thread is not held up by the caller's work.
  std::string event_id = impl_->NewEventId();
  std::string payload = impl_->EventPayload(event, event_id);
  std::lock_guard<std::mutex> lock(impl_->mu_);
  impl_->EnqueueEventPayloadLocked(event_id, std::move(payload));
  return event_id;
}

std::string SlackServer::SendSlashCommand(const nlohmann::json& payload) {
  std::lock_guard<std::mutex> lock(impl_->mu_);
  Impl::Envelope e;
  e.envelope_id = impl_->NewEnvelopeId();
  e.type = "slash_commands";
  e.payload = payload.dump();
  std::string id = e.envelope_id;
  impl_->EnqueueLocked(std::move(e));
  return id;
}

std::string SlackServer::SendBlockAction(const nlohmann::json& payload) {
  std::lock_guard<std::mutex> lock(impl_->mu_);
  Impl::Envelope e;
  e.envelope_id = impl_->NewEnvelopeId();
  e.type = "interactive";
  e.payload = payload.dump();
  std::string id = e.envelope_id;
  impl_->EnqueueLocked(std::move(e));
  return id;
}

bool SlackServer::SendRaw(const std::string& text) {
  bool sent = false;
  impl_->RunOnIo([&] {
    std::lock_guard<std::mutex> lock(impl_->mu_);
    int id = impl_->PickConnLocked();
    if (id == 0) return;
    websocketpp::lib::error_code ec;
    impl_->ws_.send(impl_->conns_[id].hdl, text, websocketpp::frame::opcode::text, ec);
    sent = !ec;
  });
  return sent;
}

void SlackServer::Disconnect(const std::string& reason, int connection_id) {
  Impl* impl = impl_.get();
  impl->RunOnIo([impl, reason, connection_id] {
    std::lock_guard<std::mutex> lock(impl->mu_);
    std::string frame = impl->DisconnectFrame(reason).dump();
    bool closes = reason == "refresh_requested" || reason == "link_disabled";
    for (auto& [id, c] : impl->conns_) {
      if (connection_id != 0 && id != connection_id) continue;
      websocketpp::lib::error_code ec;
      impl->ws_.send(c.hdl, frame, websocketpp::frame::opcode::text, ec);
      if (!closes) continue;
      auto timer = std::make_shared<boost::asio::steady_timer>(
          impl->io_, std::chrono::milliseconds(impl->options_.refresh_close_delay_ms));
      Hdl h = c.hdl;
      timer->async_wait([impl, timer, h, reason](const boost::system::error_code& tec) {
        if (tec) return;
        websocketpp::lib::error_code cec;
        impl->ws_.close(h, websocketpp::close::status::normal, reason, cec);
      });
    }
  });
}

void SlackServer::DropAll() {
  impl_->RunOnIo([this] {
    std::lock_guard<std::mutex> lock(impl_->mu_);
    for (auto& [id, c] : impl_->conns_) {
      websocketpp::lib::error_code ec;
      WsServer::connection_ptr con = impl_->ws_.get_con_from_hdl(c.hdl, ec);
      if (!con) continue;
      boost::system::error_code bec;
      con->get_raw_socket().shutdown(boost::asio::ip::tcp::socket::shutdown_both, bec);
      con->get_raw_socket().close(bec);
    }
  });
}

void SlackServer::SetAnswerPings(bool answer) {
  std::lock_guard<std::mutex> lock(impl_->mu_);
  impl_->answer_pings_ = answer;
}

void SlackServer::ZombifyOpenSockets() {
  std::lock_guard<std::mutex> lock(impl_->mu_);
  for (auto& [id, c] : impl_->conns_) c.zombie = true;
}

void SlackServer::PingAll() {
  impl_->RunOnIo([this] {
    std::lock_guard<std::mutex> lock(impl_->mu_);
    for (auto& [id, c] : impl_->conns_) {
      websocketpp::lib::error_code ec;
      impl_->ws_.ping(c.hdl, "fake-ping", ec);
    }
  });
}

std::vector<SlackPostedMessage> SlackServer::Messages() const {
  std::lock_guard<std::mutex> lock(impl_->mu_);
  return impl_->messages_;
}

std::vector<SlackPostedMessage> SlackServer::Posted() const {
  std::lock_guard<std::mutex> lock(impl_->mu_);
  std::vector<SlackPostedMessage> out;
  for (const auto& m : impl_->messages_) {
    if (m.method == "chat.postMessage") out.push_back(m);
  }
  return out;
}

std::vector<SlackPostedMessage> SlackServer::Conversation(const std::string& channel) const {
  std::lock_guard<std::mutex> lock(impl_->mu_);
  std::vector<SlackPostedMessage> out;
  for (const auto& entry : impl_->conversation_) {
    if (entry.deleted || impl_->messages_[entry.post].channel != channel) continue;
    out.push_back(impl_->Current(entry));
  }
  return out;
}

void SlackServer::DelayNext(const std::string& method, int n, int delay_ms) {
  std::lock_guard<std::mutex> lock(impl_->mu_);
  impl_->delay_next_[method] = Impl::Delay{n, delay_ms};
}

void SlackServer::ErrorNext(const std::string& method, int n, const std::string& error) {
  std::lock_guard<std::mutex> lock(impl_->mu_);
  impl_->error_next_[method] = Impl::ErrorReply{n, error};
}

std::vector<SlackReaction> SlackServer::Reactions() const {
  std::lock_guard<std::mutex> lock(impl_->mu_);
  return impl_->reactions_;
}

std::vector<SlackDelivery> SlackServer::Deliveries() const {
  std::lock_guard<std::mutex> lock(impl_->mu_);
  return impl_->deliveries_;
}

std::vector<SlackAck> SlackServer::Acks() const {
  std::lock_guard<std::mutex> lock(impl_->mu_);
  return impl_->acks_;
}

std::vector<int> SlackServer::OpenConnectionIds() const {
  std::lock_guard<std::mutex> lock(impl_->mu_);
  std::vector<int> out;
  for (const auto& [id, c] : impl_->conns_) out.push_back(id);
  return out;
}

SlackCounters SlackServer::Counters() const {
  std::lock_guard<std::mutex> lock(impl_->mu_);
  return impl_->counters_;
}

std::vector<std::string> SlackServer::FramesReceived() const {
  std::lock_guard<std::mutex> lock(impl_->mu_);
  return impl_->frames_;
}

bool SlackServer::WaitFor(const std::function<bool()>& pred, int timeout_ms) const {
  auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  std::unique_lock<std::mutex> lock(impl_->mu_);
  while (true) {
    uint64_t gen = impl_->generation_;
    lock.unlock();
    if (pred()) return true;
    lock.lock();
    if (!impl_->cv_.wait_until(lock, deadline, [&] { return impl_->generation_ != gen; })) {
      lock.unlock();
      return pred();
    }
  }
}

bool SlackServer::WaitForOpenConnections(size_t n, int timeout_ms) const {
  return WaitFor([&] { return Counters().connections_open >= n; }, timeout_ms);
}
bool SlackServer::WaitForPosted(size_t n, int timeout_ms) const {
  return WaitFor([&] { return Posted().size() >= n; }, timeout_ms);
}
bool SlackServer::WaitForAcks(size_t n, int timeout_ms) const {
  return WaitFor([&] { return Counters().acks >= n; }, timeout_ms);
}
bool SlackServer::WaitForDeliveries(size_t n, int timeout_ms) const {
  return WaitFor([&] { return Counters().envelopes_delivered >= n; }, timeout_ms);
}

}  // namespace parley::testing
