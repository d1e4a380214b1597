#include "adapters/console/console_adapter.h"

#include <chrono>
#include <cstdlib>
#include <future>
#include <istream>
#include <ostream>

#include <nlohmann/json.hpp>

#include "adapters/common/http_json.h"
#include "core/clock.h"
#include "core/ids.h"

namespace parley::console {
namespace {

using adapters::JsonError;
using nlohmann::json;

constexpr char kHelp[] =
    "Ask a question in plain words. Commands: /forget (wipe this conversation's memory), "
    "/help, /quit.";

net::HttpResponse IntakeError(const IntakeResult& result) {
  switch (result.status.code()) {
    case Status::Code::kResourceExhausted: {
      net::HttpResponse r = JsonError(429, "rate_limited", "too many messages; slow down");
      r.headers.emplace_back("Retry-After",
                             std::to_string(std::max<int64_t>(1, result.retry_after_ms / 1000)));
      return r;
    }
    case Status::Code::kInvalidArgument:
      return JsonError(422, "invalid_fields", result.status.message());
    case Status::Code::kAlreadyExists:
      return JsonError(409, "duplicate", result.status.message());
    default:
      return JsonError(503, "unavailable", result.status.message());
  }
}

}  // namespace

std::string RenderForTerminal(const OutboundMessage& reply) {
  std::string out = reply.text;
  if (!reply.citations.empty()) {
    out += "\n\nSources:";
    for (size_t i = 0; i < reply.citations.size(); ++i) {
      const Citation& c = reply.citations[i];
      out += "\n  [" + std::to_string(i + 1) + "] " + c.title;
      // The heading path usually starts with the title itself; show only what follows it.
      std::string section = c.section;
      if (section.rfind(c.title + " > ", 0) == 0) section = section.substr(c.title.size() + 3);
      if (!section.empty() && section != c.title) out += " — " + section;
      out += " (" + (c.url.empty() ? c.source : c.url) + ")";
    }
  }
  return out;
}

ConsoleAdapter::ConsoleAdapter(ConversationControl& control, std::string default_user)
    : control_(control), default_user_(std::move(default_user)) {
  if (default_user_.empty()) {
    const char* user = std::getenv("USER");
    default_user_ = user && *user ? user : "local";
  }
}

Status ConsoleAdapter::Start(InboundSink& sink) {
  sink_ = &sink;
  return Status::Ok();
}

void ConsoleAdapter::Stop(std::function<void()> done) {
  stopping_ = true;
  if (done) done();
}

void ConsoleAdapter::Send(OutboundMessage message, DeliveryCallback done) {
  std::function<void(const OutboundMessage&)> waiter;
  if (!message.in_reply_to.empty() && pending_.Take(message.in_reply_to, waiter)) {
    waiter(message);
    if (done) done(Status::Ok());
    return;
  }
  if (done) done(Status::NotFound("nobody is waiting for this console reply"));
}

bool ConsoleAdapter::Ask(const std::string& conversation, const std::string& text,
                                OutboundMessage& reply, std::string& error) {
  InboundMessage m;
  m.platform = kPlatform;
  m.channel = conversation;
  m.user = default_user_;
  m.text = text;
  m.mentions_bot = true;
  m.is_direct = true;
  m.event_id = NewId();
  m.timestamp_ms = SystemClock::Instance().NowMs();
  auto answered = std::make_shared<std::promise<std::pair<bool, OutboundMessage>>>();
  auto settled = std::make_shared<std::atomic<bool>>(false);
  auto settle = [answered, settled](bool ok, OutboundMessage r) {
    if (!settled->exchange(true)) answered->set_value({ok, std::move(r)});
  };
  auto future = answered->get_future();
  pending_.Park(m.event_id, [settle](const OutboundMessage& r) { settle(true, r); });
  const std::string event_id = m.event_id;
  sink_->OnInbound(std::move(m), IntakeOptions{false}, [this, settle, event_id](IntakeResult r) {
    if (r.status.ok()) return;
    std::function<void(const OutboundMessage&)> unused;
    pending_.Take(event_id, unused);
    OutboundMessage failure;
    failure.text = r.status.code() == Status::Code::kResourceExhausted
                       ? "You're sending messages too fast; wait a moment."
                       : r.status.message();
    settle(false, failure);
  });
  auto [ok, message] = future.get();
  if (!ok) error = message.text;
  reply = std::move(message);
  return ok;
}

TerminalBackend ConsoleAdapter::Backend(const std::string& conversation) {
  TerminalBackend backend;
  backend.ask = [this, conversation](const std::string& text, OutboundMessage& reply,
                                     std::string& error) {
    return Ask(conversation, text, reply, error);
  };
  backend.forget = [this, conversation]() -> Result<size_t> {
    // The terminal waits for the answer; this runs on the terminal's own thread.
    auto removed = std::make_shared<std::promise<Result<size_t>>>();
    auto future = removed->get_future();
    control_.Forget(ConversationKey{kPlatform, conversation, ""},
                    [removed](Result<size_t> r) { removed->set_value(std::move(r)); });
    return future.get();
  };
  return backend;
}

void RunTerminal(std::istream& in, std::ostream& out, const TerminalBackend& backend) {
  out << "parley — " << kHelp << "\n" << std::flush;
  std::string line;
  for (;;) {
    out << "\nyou> " << std::flush;
    if (!std::getline(in, line)) break;
    size_t b = line.find_first_not_of(" \t\r");
    if (b == std::string::npos) continue;
    line = line.substr(b);
    if (line == "/quit" || line == "/exit") break;
    if (line == "/help") {
      out << kHelp << "\n";
      continue;
    }
    if (line == "/forget") {
      auto removed = backend.forget();
      out << (removed.ok() ? "Forgotten: " + std::to_string(*removed) + " turns."
                           : "Could not forget: " + removed.status().message())
          << "\n";
      continue;
    }
    if (line[0] == '/') {
      out << "Unknown command " << line << ". " << kHelp << "\n";
      continue;
    }
    OutboundMessage reply;
    std::string error;
    if (backend.ask(line, reply, error)) {
      out << "\nparley> " << RenderForTerminal(reply) << "\n";
    } else {
      out << "\nparley> (" << error << ")\n";
    }
    out << std::flush;
  }
}

bool ConsoleAdapter::HandleLocal(const net::HttpRequest& request, net::Responder& respond) {
  if (request.path != "/v1/local/ask" && request.path != "/v1/local/forget") return false;
  if (request.method != "POST") {
    respond(JsonError(405, "method_not_allowed", "use POST"));
    return true;
  }
  json body = json::parse(request.body, nullptr, false);
  if (body.is_discarded() || !body.is_object()) {
    respond(JsonError(400, "invalid_json", "the body must be a JSON object"));
    return true;
  }
  std::string conversation = body.value("conversation", "terminal");
  if (conversation.empty()) conversation = "terminal";
  if (request.path == "/v1/local/forget") {
    control_.Forget(ConversationKey{kPlatform, conversation, ""},
                    [respond](Result<size_t> removed) {
                      if (!removed.ok()) {
                        return respond(JsonError(503, "unavailable", removed.status().message()));
                      }
                      net::HttpResponse r;
                      r.body = json{{"forgotten_turns", *removed}}.dump();
                      respond(std::move(r));
                    });
    return true;
  }
  if (!body.contains("text") || !body["text"].is_string()) {
    respond(JsonError(422, "invalid_fields", "text must be a non-empty string"));
    return true;
  }
  InboundMessage m;
  m.platform = kPlatform;
  m.channel = conversation;
  m.user = body.value("user", default_user_);
  m.text = body["text"].get<std::string>();
  m.mentions_bot = true;
  m.is_direct = true;
  m.event_id = NewId();
  m.timestamp_ms = SystemClock::Instance().NowMs();
  auto shared_respond = std::make_shared<net::Responder>(std::move(respond));
  pending_.Park(m.event_id, [shared_respond](const OutboundMessage& reply) {
    net::HttpResponse r;
    r.body = adapters::ReplyJson(reply).dump();
    (*shared_respond)(std::move(r));
  });
  const std::string event_id = m.event_id;
  sink_->OnInbound(std::move(m), IntakeOptions{false},
                   [this, shared_respond, event_id](IntakeResult result) {
                     if (result.status.ok()) return;
                     std::function<void(const OutboundMessage&)> unused;
                     if (pending_.Take(event_id, unused)) (*shared_respond)(IntakeError(result));
                   });
  return true;
}

}  // namespace parley::console
