#pragma once
// The console adapter: the terminal conversation of `parley chat`, and the daemon's local API
// through which `parley ask` and `parley chat` in another process reach a running daemon
// (POST /v1/local/ask on the store's Unix-domain socket, readable by the owner only).
// Platform "console"; the conversation is the one named by the user (default "terminal").
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
// Thread-safety: thread-safe. The terminal loop runs on the thread that calls RunTerminal.

#include <atomic>
#include <condition_variable>
#include <functional>
#include <iosfwd>
#include <memory>
#include <mutex>
#include <ostream>
#include <string>
#include <unordered_map>

#include "adapters/common/pending_replies.h"
#include "adapters/common/reply_stream.h"
#include "core/channel.h"
#include "core/control.h"
#include "net/http.h"

namespace parley::console {

inline constexpr char kPlatform[] = "console";

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
  std::string printed_;     // reply text on the screen so far
  bool started_ = false;    // lead and label are printed
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
};

// Interactive loop: reads lines from in, answers on out, until end of input or "/quit".
// Commands: /help, /forget (this conversation), /quit; other "/..." lines are refused.
// With backend.ask_streaming, partial replies are printed as they come (the new text only);
// the final reply then adds what is still missing and the sources. If a partial rewrites what
// was printed, a newline ends the printed draft and the final reply is printed in full.
void RunTerminal(std::istream& in, std::ostream& out, const TerminalBackend& backend);

class ConsoleAdapter final : public ChannelAdapter {
 public:
  ConsoleAdapter(ConversationControl& control, std::string default_user);

  std::string platform() const override { return kPlatform; }
  Status Start(InboundSink& sink) override;
  // Refuses further local requests; streamed answers still open end with an "error" event.
  void Stop(std::function<void()> done) override;
  bool DeliversDurably(const OutboundMessage&) const override { return false; }
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
  // The in-process backend for RunTerminal (with ask_streaming).
  TerminalBackend Backend(const std::string& conversation);

  // Serves POST /v1/local/ask (see the top of this file; streamed on request) and
  // POST /v1/local/forget {"conversation"}. Returns false (and leaves respond untouched) for
  // other paths. Runs on an io thread; does not block.
  bool HandleLocal(const net::HttpRequest& request, net::Responder& respond);

  // Streamed local answers still waiting for their reply (for tests and diagnostics).
  size_t OpenStreams() const;

 private:
  // Completes one waiting request with its reply; the status says whether it reached the asker.
  using Waiter = std::function<Status(const OutboundMessage&)>;

  ConversationControl& control_;
  std::string default_user_;
  InboundSink* sink_ = nullptr;
  std::atomic<bool> stopping_{false};
  adapters::PendingReplies<Waiter> pending_;
  mutable std::mutex partials_mu_;  // guards partials_ and streams_
  // Asks in this process waiting for partials, by event id.
  std::unordered_map<std::string, std::function<void(const OutboundMessage&)>> partials_;
  // Streamed local API answers, by event id; their final reply also waits in pending_.
  std::unordered_map<std::string, std::shared_ptr<adapters::StreamedReply>> streams_;
};

}  // namespace parley::console
