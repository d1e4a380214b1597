#pragma once
// The console adapter: the terminal conversation of `parley chat`, and the daemon's local API
// through which `parley ask` and `parley chat` in another process reach a running daemon
// (POST /v1/local/ask on the store's Unix-domain socket, readable by the owner only).
// Platform "console"; the conversation is the one named by the user (default "terminal").
// Thread-safety: thread-safe. The terminal loop runs on the thread that calls RunTerminal.

#include <atomic>
#include <condition_variable>
#include <functional>
#include <iosfwd>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "adapters/common/pending_replies.h"
#include "core/channel.h"
#include "core/control.h"
#include "net/http.h"

namespace parley::console {

inline constexpr char kPlatform[] = "console";

// Renders a reply for a terminal: the text, then numbered sources.
std::string RenderForTerminal(const OutboundMessage& reply);

// Called with the reply written so far (the whole text, as ReplySink::SendPartial gets it).
using PartialCallback = std::function<void(const OutboundMessage& partial)>;

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
  void Stop(std::function<void()> done) override;
  bool DeliversDurably(const OutboundMessage&) const override { return false; }
  void Send(OutboundMessage message, DeliveryCallback done) override;
  // Hands the partial reply to the Ask waiting for it (if it asked for partials).
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

  // Serves POST /v1/local/ask {"text", "conversation"?, "user"?} with the reply JSON, and
  // POST /v1/local/forget {"conversation"}. Returns false for other paths.
  bool HandleLocal(const net::HttpRequest& request, net::Responder& respond);

 private:
  ConversationControl& control_;
  std::string default_user_;
  InboundSink* sink_ = nullptr;
  std::atomic<bool> stopping_{false};
  adapters::PendingReplies<std::function<void(const OutboundMessage&)>> pending_;
  std::mutex partials_mu_;  // guards partials_
  // Asks waiting for partials, by event id.
  std::unordered_map<std::string, std::function<void(const OutboundMessage&)>> partials_;
};

}  // namespace parley::console
