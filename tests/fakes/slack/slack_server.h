#pragma once
// A Slack test server written from Slack's public documentation (see shared/protocols/slack.md):
// the Web API methods the Slack adapter uses over plain HTTP at http://127.0.0.1:PORT/api/, and
// Socket Mode over plain WebSocket on a second port (ws://127.0.0.1:WSPORT/link/?ticket=T).
//
// Web API: apps.connections.open (app token), auth.test, chat.postMessage, chat.update,
// chat.delete, chat.postEphemeral, reactions.add, reactions.remove, conversations.history and
// conversations.replies (form arguments only; bot token), users.info (form arguments only; the
// users of SlackServerOptions::users / SetUser, else user_not_found) and conversations.open
// (users = one user id: the DM channel DmChannelFor(user), which chat.* then accept). chat.update
// and chat.delete work on the bot's own live messages (message_not_found otherwise); chat.update
// replaces the text, and the blocks and metadata only when given (as Slack documents); the
// conversations.* methods show messages as they are now (edits applied, deleted ones gone). Errors
// are HTTP 200 with {"ok":false,"error":...}; injected rate limits are HTTP 429 + Retry-After +
// error "ratelimited".
// Socket Mode: single-use tickets, `hello` first, at most max_connections sockets (the next one is
// told `disconnect` reason too_many_websockets and closed), envelopes delivered round-robin to
// live sockets, acks tracked, events_api envelopes not acked within the ack deadline redelivered
// with retry_attempt 1..max_retries, retry_reason "timeout", same event_id, new envelope_id.
//
// Everything binds 127.0.0.1 on free ports and runs on one io thread owned by the server.
// Thread-safety: every public method is thread-safe. WaitFor's predicate runs on the calling
// thread without the server's lock held, so it may call the inspection methods.

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace parley::testing {

// A chat.postMessage / chat.update / chat.delete / chat.postEphemeral call that was answered ok.
struct SlackPostedMessage {
  // "chat.postMessage", "chat.update", "chat.delete", "chat.postEphemeral", "response_url"
  std::string method;
  std::string channel;
  std::string ts;         // assigned ts (postMessage), edited ts (update), message_ts (ephemeral)
  std::string thread_ts;  // empty when absent (chat.update: the edited message's thread)
  std::string user;       // postEphemeral's recipient
  std::string text;
  nlohmann::json blocks;    // null when absent
  nlohmann::json metadata;  // null when absent
  nlohmann::json args;      // every argument as received
  // When the call was recorded: std::chrono::steady_clock, nanoseconds since its epoch (the same
  // clock in every thread of the process, so a benchmark can subtract its own send times).
  int64_t received_ns = 0;
};

struct SlackServerOptions {
  std::string app_token = "xapp-1-A1-test";
  std::string bot_token = "xoxb-test-bot";
  std::string team_id = "T0TEAM";
  std::string app_id = "A1";
  std::string bot_user_id = "U0BOT";
  std::string bot_id = "B0BOT";
  // Channels chat.* and reactions.* accept; anything else is channel_not_found. AddChannel adds.
  std::vector<std::string> channels = {"C0GENERAL", "D0DM"};
  int ack_deadline_ms = 3000;         // Slack: 3 s
  int max_retries = 3;                // events_api redeliveries after the first delivery
  // When redelivery r (1-based) is sent: retry_delays_ms[r - 1] after the previous delivery's ack
  // deadline passed (0 when the list is shorter). Slack: "nearly immediately, after about 1
  // minute, after about 5 minutes" from the first delivery: 3 s, ~60 s and ~300 s here.
  std::vector<int> retry_delays_ms = {0, 57'000, 237'000};
  int refresh_close_delay_ms = 1000;  // after disconnect refresh_requested / link_disabled
  int max_connections = 10;
  // When true, every ok chat.postMessage comes back as a `message` event carrying the bot's
  // bot_id and user (as Slack does with message.channels / message.im subscribed).
  bool echo_bot_posts = false;
  // users.info: user id -> display name (profile.display_name; real_name is "<name> Real").
  std::map<std::string, std::string> users;
  // Optional observer of every message Messages() records (ok chat.postMessage, chat.update,
  // chat.postEphemeral, response_url POSTs), called once per message on the server's io thread
  // after the HTTP answer has been handed to the connection, WITHOUT the server's lock held (it
  // may call the inspection methods). It must be quick: it delays the next request. For
  // benchmarks, which must not copy Messages() over and over at tens of thousands of messages.
  std::function<void(const SlackPostedMessage&)> on_message;
  // False (benchmarks): the server keeps only what later Web API calls need. A message's `args`
  // and `blocks` are dropped once on_message has seen it (Messages() and Conversation() show them
  // null; conversations.history / replies, chat.update and chat.delete work as before), and
  // Reactions(), Deliveries(), Acks() and FramesReceived() stay empty (Counters() still counts).
  // Tens of thousands of kept requests would otherwise grow the benchmark's heap by megabytes a
  // second, and every fresh page is a page fault on the machine the daemon is measured on.
  bool keep_history = true;
};

struct SlackReaction {
  bool added = true;  // reactions.add (true) or reactions.remove (false)
  std::string channel;
  std::string timestamp;
  std::string name;
};

// One envelope written to a socket (first deliveries and redeliveries).
struct SlackDelivery {
  std::string envelope_id;
  std::string type;      // events_api | slash_commands | interactive
  std::string event_id;  // events_api only
  int retry_attempt = 0;
  int connection_id = 0;
};

// One {"envelope_id":...} frame received from a client.
struct SlackAck {
  std::string envelope_id;
  nlohmann::json payload;  // null when absent
  bool known = false;      // the envelope id was delivered and not yet acked
  int connection_id = 0;
};

struct SlackCounters {
  uint64_t connections_opened = 0;   // handshakes accepted (including refused 11th ones)
  uint64_t connections_open = 0;     // open now
  uint64_t handshakes_rejected = 0;  // bad or used ticket
  uint64_t too_many_websockets = 0;
  uint64_t envelopes_delivered = 0;
  uint64_t redeliveries = 0;
  uint64_t acks = 0;
  uint64_t malformed_frames_received = 0;
  uint64_t ratelimited_served = 0;  // HTTP 429 answers
  uint64_t errors_served = 0;       // injected 5xx answers
  uint64_t api_calls = 0;
  uint64_t pings_received = 0;
  uint64_t pongs_received = 0;
  uint64_t users_info_calls = 0;
  uint64_t conversations_open_calls = 0;
  uint64_t reactions = 0;  // ok reactions.add and reactions.remove calls
};

class SlackServer {
 public:
  explicit SlackServer(SlackServerOptions options = {});
  ~SlackServer();
  SlackServer(const SlackServer&) = delete;
  SlackServer& operator=(const SlackServer&) = delete;

  uint16_t api_port() const;
  uint16_t ws_port() const;
  // "http://127.0.0.1:PORT/api/" (for slack.api_base_url).
  std::string ApiBaseUrl() const;
  const SlackServerOptions& options() const;

  // ---- Web API behaviour ----
  void AddChannel(const std::string& channel_id);
  // Adds or renames a user of users.info.
  void SetUser(const std::string& user_id, const std::string& display_name);
  // The DM channel conversations.open gives for user ("D" + user id).
  static std::string DmChannelFor(const std::string& user_id);
  // The next n calls of `method` get HTTP 429, Retry-After: retry_after_s, error "ratelimited".
  void RateLimitNext(const std::string& method, int n, int retry_after_s);
  // The next n calls of `method` get HTTP `status` (5xx) with a JSON error body.
  void FailNext(const std::string& method, int n, int status = 500);
  // The next n calls of `method` get HTTP 200 {"ok":false,"error":error} (e.g. chat.update's
  // cant_update_message or edit_window_closed) and change nothing.
  void ErrorNext(const std::string& method, int n, const std::string& error);
  // The next n calls of `method` are carried out at once but answered only after delay_ms (a
  // slow Slack: the caller sees the call in flight that long).
  void DelayNext(const std::string& method, int n, int delay_ms);
  // Per-channel chat.postMessage token bucket (burst tokens, refilled at per_second); over budget
  // is 429 with Retry-After. per_second <= 0 turns it off (the default).
  void SetPostMessageBudget(double per_second, int burst);

  // ---- Socket Mode ----
  // Wraps `event` in an event_callback payload and an events_api envelope and delivers it to one
  // live socket (round-robin; queued until one exists). Returns the event_id ("Ev...").
  std::string SendEvent(const nlohmann::json& event);
  // A fresh response_url (http://127.0.0.1:PORT/hooks/commands/T…/N/secret) for a slash command
  // payload: POSTed JSON messages to it are recorded in Messages() with method "response_url"
  // (ts = the URL's path); other URLs under /hooks/ get 404.
  std::string NewResponseUrl();
  // Delivers a slash_commands / interactive envelope with `payload` as is (not redelivered).
  // Returns the envelope_id.
  std::string SendSlashCommand(const nlohmann::json& payload);
  std::string SendBlockAction(const nlohmann::json& payload);
  // Writes `text` as one text frame to one live socket (round-robin). False when none is open.
  bool SendRaw(const std::string& text);
  // Sends {"type":"disconnect","reason":reason,...} to socket `connection_id` (0 = all open
  // sockets). For refresh_requested and link_disabled the socket is then closed after
  // refresh_close_delay_ms.
  void Disconnect(const std::string& reason, int connection_id = 0);
  // Closes every socket abruptly (TCP close, no close frame).
  void DropAll();
  // When false, client pings are not answered with pongs.
  void SetAnswerPings(bool answer);
  // Makes every socket open now a zombie: it stays open but gets no envelopes and no pongs.
  // Sockets opened later are healthy. Envelopes go to healthy sockets only.
  void ZombifyOpenSockets();
  // Sends a ping to every open socket (pongs are counted).
  void PingAll();

  // ---- Inspection ----
  std::vector<SlackPostedMessage> Messages() const;  // all ok chat.* calls, in order
  std::vector<SlackPostedMessage> Posted() const;    // chat.postMessage only
  // The bot's messages in `channel` as users see them now, in the order they were posted: edits
  // applied (text, blocks, metadata; ts, thread_ts of the post), deleted ones left out.
  std::vector<SlackPostedMessage> Conversation(const std::string& channel) const;
  std::vector<SlackReaction> Reactions() const;
  std::vector<SlackDelivery> Deliveries() const;
  std::vector<SlackAck> Acks() const;
  std::vector<int> OpenConnectionIds() const;
  SlackCounters Counters() const;
  // Every text frame received from clients (acks included), in order.
  std::vector<std::string> FramesReceived() const;

  // Waits until pred() is true or timeout_ms passes; re-evaluates after every state change.
  bool WaitFor(const std::function<bool()>& pred, int timeout_ms) const;
  bool WaitForOpenConnections(size_t n, int timeout_ms) const;
  bool WaitForPosted(size_t n, int timeout_ms) const;
  bool WaitForAcks(size_t n, int timeout_ms) const;
  bool WaitForDeliveries(size_t n, int timeout_ms) const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace parley::testing
