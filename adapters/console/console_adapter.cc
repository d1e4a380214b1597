#include "adapters/console/console_adapter.h"

#include <chrono>
#include <cstdlib>
#include <future>
#include <istream>
#include <optional>
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

// The string at key; empty when absent, null or not a string.
std::string StringField(const json& body, const char* key) {
  auto it = body.find(key);
  return it != body.end() && it->is_string() ? it->get<std::string>() : std::string();
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
  // Buttons offered with the message (e.g. an escalation card's Claim): typing the value is the
  // console's click.
  if (!reply.actions.empty()) {
    out += "\n\nActions:";
    for (const MessageAction& a : reply.actions) out += "\n  [" + a.label + "] type: " + a.value;
  }
  return out;
}

void ProgressivePrinter::Partial(const OutboundMessage& partial) {
  if (rewritten_) return;  // the final reply is printed in full
  const std::string& text = partial.text;
  if (!started_) {
    if (text.empty()) return;
    out_ << style_.lead << style_.label;
    started_ = true;
  }
  if (text.size() >= printed_.size() && text.compare(0, printed_.size(), printed_) == 0) {
    out_ << text.substr(printed_.size()) << std::flush;
    printed_ = text;
  } else {
    // What is on the screen is no longer the reply: end that line, print the final in full.
    out_ << "\n" << std::flush;
    rewritten_ = true;
  }
}

void ProgressivePrinter::Final(const OutboundMessage& reply) {
  const std::string rendered = RenderForTerminal(reply);
  if (!started_) {
    out_ << style_.lead << style_.label << rendered << "\n";
  } else if (!rewritten_ && rendered.compare(0, printed_.size(), printed_) == 0) {
    out_ << rendered.substr(printed_.size()) << "\n";
  } else {
    if (!rewritten_) out_ << "\n";
    out_ << style_.label << rendered << "\n";
  }
  started_ = true;
  rewritten_ = true;  // done: later calls start a new line
  out_ << std::flush;
}

void ProgressivePrinter::Failed(const std::string& error) {
  Interrupt();
  out_ << (started_ ? "" : style_.lead) << style_.label << "(" << error << ")\n" << std::flush;
}

void ProgressivePrinter::Interrupt() {
  if (started_ && !rewritten_) out_ << "\n" << std::flush;
  rewritten_ = started_;
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
  // Turns have been drained by now (or are given up on): a stream still open will get no reply.
  // End it, so the server (which does not cut streams at Stop) can close its connection.
  std::unordered_map<std::string, std::shared_ptr<adapters::StreamedReply>> open;
  {
    std::lock_guard<std::mutex> lock(partials_mu_);
    open.swap(streams_);
  }
  for (auto& [event_id, stream] : open) {
    Waiter parked;
    pending_.Take(event_id, parked);
    stream->Abandon("shutting down before the reply was ready");
  }
  if (done) done();
}

void ConsoleAdapter::Send(OutboundMessage message, DeliveryCallback done) {
  Waiter waiter;
  if (!message.in_reply_to.empty() && pending_.Take(message.in_reply_to, waiter)) {
    {
      std::lock_guard<std::mutex> lock(partials_mu_);
      partials_.erase(message.in_reply_to);
      streams_.erase(message.in_reply_to);
    }
    Status delivered = waiter(message);
    if (done) done(delivered);
    return;
  }
  if (message.silent) {
    if (done) done(Status::Ok());  // nothing to show and nobody waiting
    return;
  }
  if (done) done(Status::NotFound("nobody is waiting for this console reply"));
}

void ConsoleAdapter::SendPartial(const OutboundMessage& partial) {
  if (partial.in_reply_to.empty()) return;
  std::function<void(const OutboundMessage&)> waiter;
  std::shared_ptr<adapters::StreamedReply> stream;
  {
    std::lock_guard<std::mutex> lock(partials_mu_);
    auto it = partials_.find(partial.in_reply_to);
    if (it != partials_.end()) {
      waiter = it->second;
    } else {
      auto s = streams_.find(partial.in_reply_to);
      if (s == streams_.end()) return;
      stream = s->second;
    }
  }
  if (waiter) waiter(partial);
  if (stream) stream->Partial(partial);
}

size_t ConsoleAdapter::OpenStreams() const {
  std::lock_guard<std::mutex> lock(partials_mu_);
  return streams_.size();
}

bool ConsoleAdapter::Ask(const std::string& conversation, const std::string& text,
                         OutboundMessage& reply, std::string& error) {
  return Ask(conversation, text, nullptr, reply, error);
}

bool ConsoleAdapter::Ask(const std::string& conversation, const std::string& text,
                         const PartialCallback& on_partial, OutboundMessage& reply,
                         std::string& error) {
  InboundMessage m;
  m.platform = kPlatform;
  m.channel = conversation;
  m.user = default_user_;
  m.text = text;
  m.mentions_bot = true;
  m.is_direct = true;
  m.event_id = NewId();
  m.timestamp_ms = SystemClock::Instance().NowMs();
  // The answer, and the latest partial not yet shown, handed from the engine's threads to this
  // one (which runs on_partial, so the caller's output stays on its own thread).
  struct Waiting {
    std::mutex mu;
    std::condition_variable cv;
    std::optional<OutboundMessage> partial;
    std::optional<std::pair<bool, OutboundMessage>> answer;
  };
  auto waiting = std::make_shared<Waiting>();
  auto settle = [waiting](bool ok, OutboundMessage r) {
    {
      std::lock_guard<std::mutex> lock(waiting->mu);
      if (waiting->answer) return;
      waiting->answer.emplace(ok, std::move(r));
    }
    waiting->cv.notify_all();
  };
  const std::string event_id = m.event_id;
  if (on_partial) {
    std::lock_guard<std::mutex> lock(partials_mu_);
    partials_[event_id] = [waiting](const OutboundMessage& partial) {
      {
        std::lock_guard<std::mutex> lock(waiting->mu);
        if (waiting->answer) return;
        waiting->partial = partial;  // coalesce: only the latest whole text matters
      }
      waiting->cv.notify_all();
    };
  }
  pending_.Park(m.event_id, [settle](const OutboundMessage& r) {
    settle(true, r);
    return Status::Ok();
  });
  sink_->OnInbound(std::move(m), IntakeOptions{false}, [this, settle, event_id](IntakeResult r) {
    if (r.status.ok()) return;
    Waiter unused;
    pending_.Take(event_id, unused);
    OutboundMessage failure;
    failure.text = r.status.code() == Status::Code::kResourceExhausted
                       ? "You're sending messages too fast; wait a moment."
                       : r.status.message();
    settle(false, failure);
  });
  std::pair<bool, OutboundMessage> answer;
  for (;;) {
    std::unique_lock<std::mutex> lock(waiting->mu);
    waiting->cv.wait(lock, [&] { return waiting->answer || waiting->partial; });
    if (waiting->answer) {
      answer = std::move(*waiting->answer);
      break;
    }
    OutboundMessage partial = std::move(*waiting->partial);
    waiting->partial.reset();
    lock.unlock();
    on_partial(partial);
  }
  if (on_partial) {
    std::lock_guard<std::mutex> lock(partials_mu_);
    partials_.erase(event_id);
  }
  auto& [ok, message] = answer;
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
  backend.ask_streaming = [this, conversation](const std::string& text,
                                               const PartialCallback& on_partial,
                                               OutboundMessage& reply, std::string& error) {
    return Ask(conversation, text, on_partial, reply, error);
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
    if (backend.ask_streaming) {
      ProgressivePrinter printer(out);
      if (backend.ask_streaming(
              line, [&printer](const OutboundMessage& partial) { printer.Partial(partial); }, reply,
              error)) {
        printer.Final(reply);
      } else {
        printer.Failed(error);
      }
    } else if (backend.ask(line, reply, error)) {
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
  // "conversation" and "user" are optional strings; another type is refused (not thrown on).
  for (const char* key : {"conversation", "user"}) {
    auto it = body.find(key);
    if (it != body.end() && !it->is_null() && !it->is_string()) {
      respond(JsonError(422, "invalid_fields", std::string(key) + " must be a string"));
      return true;
    }
  }
  std::string conversation = StringField(body, "conversation");
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
  auto stream_field = body.find("stream");
  if (stream_field != body.end() && !stream_field->is_null() && !stream_field->is_boolean()) {
    respond(JsonError(422, "invalid_fields", "stream must be true or false"));
    return true;
  }
  const bool wants_stream =
      adapters::AcceptsEventStream(request) ||
      (stream_field != body.end() && stream_field->is_boolean() && stream_field->get<bool>());
  if (stopping_) {
    respond(JsonError(503, "unavailable", "shutting down"));
    return true;
  }
  InboundMessage m;
  m.platform = kPlatform;
  m.channel = conversation;
  m.user = StringField(body, "user");
  if (m.user.empty()) m.user = default_user_;
  m.text = body["text"].get<std::string>();
  m.mentions_bot = true;
  m.is_direct = true;
  m.event_id = NewId();
  m.timestamp_ms = SystemClock::Instance().NowMs();
  const std::string event_id = m.event_id;

  if (wants_stream) {
    // Everything that answers this request goes through the StreamedReply, which passes error
    // responses through until its 200 head is out.
    auto stream = std::make_shared<adapters::StreamedReply>(std::move(respond));
    {
      std::lock_guard<std::mutex> lock(partials_mu_);
      streams_[event_id] = stream;
    }
    pending_.Park(event_id,
                  [stream](const OutboundMessage& reply) { return stream->Final(reply); });
    sink_->OnInbound(std::move(m), IntakeOptions{false},
                     [this, stream, event_id](IntakeResult result) {
                       if (result.status.ok()) return stream->Start();  // the turn is on its way
                       Waiter unused;
                       if (!pending_.Take(event_id, unused)) return;
                       {
                         std::lock_guard<std::mutex> lock(partials_mu_);
                         streams_.erase(event_id);
                       }
                       stream->Refuse(IntakeError(result));
                     });
    return true;
  }

  auto shared_respond = std::make_shared<net::Responder>(std::move(respond));
  pending_.Park(event_id, [shared_respond](const OutboundMessage& reply) {
    net::HttpResponse r;
    r.body = adapters::ReplyJson(reply).dump();
    (*shared_respond)(std::move(r));
    return Status::Ok();
  });
  sink_->OnInbound(std::move(m), IntakeOptions{false},
                   [this, shared_respond, event_id](IntakeResult result) {
                     if (result.status.ok()) return;
                     Waiter unused;
                     if (pending_.Take(event_id, unused)) (*shared_respond)(IntakeError(result));
                   });
  return true;
}

}  // namespace parley::console
