#pragma once
// The console adapter: the terminal conversation of `parley chat`, and the daemon's local API
// through which `parley ask` and `parley chat` in another process reach a running daemon
// (on the store's Unix-domain socket, readable by the owner only).
// Platform "console"; the conversation is the one named by the user (default "terminal"). A
// console conversation can also be an escalation queue's agents' channel
// (`agents = "console:agents"`): `parley chat --conversation agents` is then an agents' console.
//
// Local API, POST /v1/local/ask {"text", "conversation"?, "user"?, "stream"?}:
//   Without streaming, the answer is the reply JSON (adapters::ReplyJson) once it is ready.
//   With "Accept: text/event-stream" or "stream": true in the body, the answer is a 200
//   text/event-stream response as the webhook streams it (adapters/common/reply_stream.h):
//   "delta" {"id","text": new text} / "replace" {"id","text": whole text} events while the
//   reply is written (only when the responder streams, i.e. with the LLM), then one "message"
//   event with the reply JSON and the end of the stream; or an "error" event {"error",
//   "message"} and the end when no reply will come (shutdown). Errors found before the turn
//   starts (JSON, fields, rate limit) are the usual JSON error responses. A client that hangs up
//   mid-stream costs nothing: the turn completes and is remembered, its reply is dropped.
//
// Local API, GET /v1/local/listen?conversation=NAME: the conversation's unsolicited messages
//   (escalation cards and notices in an agents' channel, an agent's relayed replies in a user's
//   conversation) as a 200 text/event-stream: first every message waiting in the conversation's
//   mailbox (oldest first), then each new one as it arrives, each as one "message" event whose
//   data is the reply JSON (adapters::ReplyJson) plus "actions": [{"id","label","value",
//   "style"}] when the message offers buttons (typing a value is the console's click). The
//   stream stays open until the client hangs up, or the daemon stops: then an "error" event
//   {"error":"unavailable","message"} and the end. Missing or invalid conversation (empty, over
//   200 bytes, control characters): 400 {"error":"invalid_conversation"}; not GET: 405; after
//   Stop: 503. Several listeners of one conversation each get every message sent while they
//   listen; a waiting message goes to the listeners connected until one of them has taken
//   it (see the mailbox below), not to a listener that connects after that. The listener is
//   counted before the 200 head goes out: a client that has the head is listening.
//   `parley chat` reads this stream with ListenToDaemon.
//
// Mailbox contract (unsolicited = durable). DeliversDurably(m) is true exactly for messages
//   that answer no request (in_reply_to empty) and are not silent. For those, the sender (the
//   router, the escalation desk) has written an outbox entry (store::Outbox, platform "console",
//   id = message id, payload = the message as JSON) before Send; Send then reports OK at once and
//   puts the message in its conversation's in-memory mailbox (a duplicate id already waiting is
//   ignored; mailboxes are per conversation = channel, threads are ignored: the console has
//   none). A sender that wrote no entry still reaches the listeners, only not across a crash
//   (`parley say` writes one, as the router and the desk do). A waiting message is handed to every listener of its
//   conversation; once one listener took it (its event was accepted by an open stream, or the
//   in-process callback returned), it leaves the mailbox and its outbox entry is deleted (through
//   the Committer, unsynced: a crash at that moment shows it again, at least once). With no
//   listener it waits; at most kMailboxLimit per conversation: beyond that the oldest is dropped
//   from the mailbox and the outbox with a warning ("console.mailbox.dropped"). Start loads the
//   console entries left in the outbox (a crash, or a run nobody listened to) into the mailboxes,
//   ordered by created_ms, then id. A message that answers a request (in_reply_to set) goes to the
//   Ask or local request waiting for it; with none waiting (the asker hung up), it is dropped.
//   Limitation: net::ResponseStream reports no per-write completion, so for a stream "taken"
//   means queued to a connection that was open at the time, not yet on the client's screen; a
//   client that vanishes in that instant loses the message.
//
// Thread-safety: thread-safe. The terminal loop runs on the thread that calls RunTerminal.

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <iosfwd>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <ostream>
#include <string>
#include <string_view>
#include <unordered_map>

#include "adapters/common/pending_replies.h"
#include "adapters/common/reply_stream.h"
#include "core/channel.h"
#include "core/control.h"
#include "net/http.h"
#include "net/sse.h"
#include "store/committer.h"
#include "store/kv_store.h"
#include "store/records.h"

namespace parley::console {

inline constexpr char kPlatform[] = "console";

// Unsolicited messages kept per conversation while nobody listens (see the top of this file).
// 1,000 holds days of cards for a busy queue and bounds memory at about 1,000 message sizes.
inline constexpr size_t kMailboxLimit = 1000;

// Called with one unsolicited message of the conversation listened to.
using MessageCallback = std::function<void(const OutboundMessage& message)>;

// The data of a listen stream's "message" event: adapters::ReplyJson(message), plus "actions"
// when the message has any.
nlohmann::json ListenEventJson(const OutboundMessage& message);
// The reverse (adapters::ReplyFromJson, plus actions). InvalidArgument on a wrong shape.
Result<OutboundMessage> ListenMessageFromJson(const nlohmann::json& j);

// True when `conversation` is acceptable as a console conversation name for listening:
// 1..200 bytes, no control characters.
bool ValidConversationName(std::string_view conversation);

// Decodes a GET /v1/local/listen stream fed in pieces of any size: on_message for each
// "message" event; an "error" event (or an undecodable event) ends it. Comments and unknown
// events are ignored; CR LF line ends are accepted.
// Thread-safety: not thread-safe; one reader per stream.
class ListenStreamReader {
 public:
  explicit ListenStreamReader(MessageCallback on_message) : on_message_(std::move(on_message)) {}
  void Feed(std::string_view bytes);
  // True once an "error" event or an undecodable event was read.
  bool finished() const { return !error_.empty(); }
  // The error event's message (or what was wrong with the stream).
  const std::string& error() const { return error_; }

 private:
  void Dispatch(net::SseEvent e);

  MessageCallback on_message_;
  net::SseParser parser_;
  std::string error_;
};

// Reads GET /v1/local/listen?conversation=NAME from the daemon's local API at socket_path, on
// the calling thread, calling on_message for each message. Speaks HTTP/1.0 over the Unix-domain
// socket, so the body is the raw event stream, and polls `stop` every 100 ms (net's
// BlockingRequest cannot be cancelled while a stream is idle). Returns OK when stopped;
// Unavailable when it cannot connect or the stream ended (the daemon's "error" event or its
// closing the connection: the message says which); NotFound when the daemon has no such
// endpoint (404); InvalidArgument for another refusal (the daemon's error message). on_open
// (optional) runs once the 200 head arrived: from then on the daemon counts this listener.
// Thread-safety: blocking; one call per thread. For `parley chat` and tests.
Status ListenToDaemon(const std::string& socket_path, const std::string& conversation,
                      const MessageCallback& on_message, const std::atomic<bool>& stop,
                      const std::function<void()>& on_open = nullptr);

// Renders a reply for a terminal: the text, then numbered sources.
std::string RenderForTerminal(const OutboundMessage& reply);

// Called with the reply written so far (the whole text, as ReplySink::SendPartial gets it).
using PartialCallback = std::function<void(const OutboundMessage& partial)>;

// Prints one reply progressively: the partials as they come (only the new text), then the rest
// of the final reply with its sources (RenderForTerminal). If a partial rewrites what was
// printed, a newline ends the printed draft and the final reply is printed in full.
// Thread-safety: not thread-safe; call from the thread that owns `out`.
class ProgressivePrinter {
 public:
  struct Style {
    std::string lead = "\n";         // before the first line of the answer
    std::string label = "parley> ";  // starts every line that (re)starts the answer
  };
  // The `parley chat` style: "\nparley> " before the answer.
  explicit ProgressivePrinter(std::ostream& out) : ProgressivePrinter(out, Style{}) {}
  ProgressivePrinter(std::ostream& out, Style style) : out_(out), style_(std::move(style)) {}

  // partial.text is the whole reply so far. Flushes out.
  void Partial(const OutboundMessage& partial);
  // Completes the answer with the final reply and a newline. Flushes out.
  void Final(const OutboundMessage& reply);
  // Ends the answer with "(error)" on its own labelled line. Flushes out.
  void Failed(const std::string& error);
  // Ends a draft line left open by partials (so an error can go elsewhere, e.g. stderr).
  void Interrupt();

  // True once any reply text was printed.
  bool started() const { return started_; }

 private:
  std::ostream& out_;
  Style style_;
  std::string printed_;   // reply text on the screen so far
  bool started_ = false;  // lead and label are printed
  // A partial did not extend printed_, or the answer was ended: later partials are ignored.
  bool rewritten_ = false;
};

// What the terminal loop needs from whoever answers: in-process (the adapter) or a running
// daemon (its local API). Ask returns false with the reason in `error` when there is no answer.
struct TerminalBackend {
  std::function<bool(const std::string& text, OutboundMessage& reply, std::string& error)> ask;
  // Optional; used instead of `ask` when set: like ask, and calls on_partial (on the calling
  // thread, before returning) as the reply is being written.
  std::function<bool(const std::string& text, const PartialCallback& on_partial,
                     OutboundMessage& reply, std::string& error)>
      ask_streaming;
  std::function<Result<size_t>()> forget;
  // Optional: starts delivering the conversation's unsolicited messages to on_message (any
  // thread) and returns the function that stops it. RunTerminal prints them between turns.
  std::function<std::function<void()>(MessageCallback on_message)> listen;
};

// Interactive loop: reads lines from in, answers on out, until end of input or "/quit".
// With backend.listen, unsolicited messages are printed as "\n[message] " + RenderForTerminal
// as they arrive while the user is at the prompt (the prompt is then repeated), or after the
// reply when a question is being answered: never inside a reply's lines. Output to `out` from
// the listener's thread and the loop is serialised by a mutex. A silent reply (the line was
// relayed to a person, or taken by the escalation desk without an answer) prints nothing.
// Commands: /help, /forget (this conversation), /quit; other "/..." lines are refused.
// With backend.ask_streaming, partial replies are printed as they come (the new text only);
// the final reply then adds what is still missing and the sources. If a partial rewrites what
// was printed, a newline ends the printed draft and the final reply is printed in full.
void RunTerminal(std::istream& in, std::ostream& out, const TerminalBackend& backend);

class Mailbox;

// Stops an in-process listener when cancelled or destroyed. Move-only; may outlive the adapter
// (then it does nothing).
class ListenHandle {
 public:
  ListenHandle() = default;
  ~ListenHandle() { Cancel(); }
  ListenHandle(ListenHandle&& other) noexcept;
  ListenHandle& operator=(ListenHandle&& other) noexcept;
  ListenHandle(const ListenHandle&) = delete;
  ListenHandle& operator=(const ListenHandle&) = delete;
  // After Cancel returns, the callback is not running and will not run again (unless Cancel is
  // called from inside the callback: then it only will not run again). Idempotent.
  void Cancel();

 private:
  friend class ConsoleAdapter;
  ListenHandle(std::weak_ptr<Mailbox> mailbox, uint64_t id)
      : mailbox_(std::move(mailbox)), id_(id) {}
  std::weak_ptr<Mailbox> mailbox_;
  uint64_t id_ = 0;
};

class ConsoleAdapter final : public ChannelAdapter {
 public:
  // kv holds the outbox of unsolicited messages; removals go through committer. Both must
  // outlive the adapter. default_user: empty = $USER (else "local").
  ConsoleAdapter(ConversationControl& control, std::string default_user, store::KvStore& kv,
                 store::Committer& committer);
  ~ConsoleAdapter() override;

  std::string platform() const override { return kPlatform; }
  // Loads the console outbox entries into the mailboxes (see the top of this file); the
  // store's error when it cannot be read (intake works anyway).
  Status Start(InboundSink& sink) override;
  // Refuses further local requests; streamed answers still open end with an "error" event, and
  // so do listen streams. Messages still waiting stay in the outbox for the next run.
  void Stop(std::function<void()> done) override;
  // True for messages answering no request (in_reply_to empty) that are not silent.
  bool DeliversDurably(const OutboundMessage& message) const override;
  // A reply goes to its waiting request (NotFound when none waits, OK for a silent one); an
  // unsolicited message goes to its conversation's mailbox (OK at once).
  void Send(OutboundMessage message, DeliveryCallback done) override;
  // Hands the partial reply to the Ask or streamed local request waiting for it (if it asked
  // for partials); ignored otherwise.
  void SendPartial(const OutboundMessage& partial) override;

  // Sends one message in conversation and waits for its answer. For `parley chat`/`ask` in
  // process; must not be called on an io thread.
  bool Ask(const std::string& conversation, const std::string& text, OutboundMessage& reply,
           std::string& error);
  // Same, and calls on_partial on the calling thread while waiting, with the latest partial
  // reply (partials arriving faster than on_partial returns are coalesced: each call has the
  // whole text so far). Never after Ask returns.
  bool Ask(const std::string& conversation, const std::string& text,
           const PartialCallback& on_partial, OutboundMessage& reply, std::string& error);
  // The in-process backend for RunTerminal (with ask_streaming and listen).
  TerminalBackend Backend(const std::string& conversation);

  // Delivers the unsolicited messages of `conversation` to on_message, as a listen stream does:
  // first those waiting in the mailbox, then each new one. on_message runs on the thread that
  // sends the message (an engine or io thread), one call at a time per listener, in order; a
  // message counts as delivered when on_message returns. on_message must not block for long;
  // it may call Cancel on its own handle.
  ListenHandle Listen(const std::string& conversation, MessageCallback on_message);

  // Messages waiting in conversation's mailbox (for tests and diagnostics).
  size_t Waiting(const std::string& conversation) const;
  // Listeners of conversation, streams and in-process (for tests and diagnostics).
  size_t Listeners(const std::string& conversation) const;

  // Serves POST /v1/local/ask (see the top of this file; streamed on request),
  // GET /v1/local/listen?conversation=NAME and POST /v1/local/forget {"conversation"}. Returns
  // false (and leaves respond untouched) for other paths. Runs on an io thread; does not block.
  bool HandleLocal(const net::HttpRequest& request, net::Responder& respond);

  // Streamed local answers still waiting for their reply (for tests and diagnostics).
  size_t OpenStreams() const;

 private:
  // Completes one waiting request with its reply; the status says whether it reached the asker.
  using Waiter = std::function<Status(const OutboundMessage&)>;

  void HandleListen(const net::HttpRequest& request, net::Responder& respond);

  ConversationControl& control_;
  std::string default_user_;
  std::shared_ptr<Mailbox> mailbox_;
  store::Outbox outbox_;
  std::atomic<InboundSink*> sink_{nullptr};
  std::atomic<bool> stopping_{false};
  adapters::PendingReplies<Waiter> pending_;
  mutable std::mutex partials_mu_;  // guards partials_ and streams_
  // Asks in this process waiting for partials, by event id.
  std::unordered_map<std::string, std::function<void(const OutboundMessage&)>> partials_;
  // Streamed local API answers, by event id; their final reply also waits in pending_.
  std::unordered_map<std::string, std::shared_ptr<adapters::StreamedReply>> streams_;
};

}  // namespace parley::console
