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

#include "adapters/common/pending_replies.h"
#include "core/channel.h"
#include "core/control.h"
#include "net/http.h"

namespace parley::console {

inline constexpr char kPlatform[] = "console";

// Renders a reply for a terminal: the text, then numbered sources.
std::string RenderForTerminal(const OutboundMessage& reply);

// What the terminal loop needs from whoever answers: in-process (the adapter) or a running
// daemon (its local API). Ask returns false with the reason in `error` when there is no answer.
struct TerminalBackend {
  std::function<bool(const std::string& text, OutboundMessage& reply, std::string& error)> ask;
  std::function<Result<size_t>()> forget;
};

// Interactive loop: reads lines from in, answers on out, until end of input or "/quit".
// Commands: /help, /forget (this conversation), /quit; other "/..." lines are refused.
void RunTerminal(std::istream& in, std::ostream& out, const TerminalBackend& backend);

class ConsoleAdapter final : public ChannelAdapter {
 public:
  ConsoleAdapter(ConversationControl& control, std::string default_user);

  std::string platform() const override { return kPlatform; }
  Status Start(InboundSink& sink) override;
  void Stop(std::function<void()> done) override;
  bool DeliversDurably(const OutboundMessage&) const override { return false; }
  void Send(OutboundMessage message, DeliveryCallback done) override;

  // Sends one message in conversation and waits for its answer. For `parley chat`/`ask` in
  // process; must not be called on an io thread.
  bool Ask(const std::string& conversation, const std::string& text, OutboundMessage& reply,
           std::string& error);
  // The in-process backend for RunTerminal.
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
};

}  // namespace parley::console
