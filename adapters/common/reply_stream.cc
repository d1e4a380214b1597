#include "adapters/common/reply_stream.h"

#include <boost/algorithm/string/predicate.hpp>

#include "adapters/common/http_json.h"

namespace parley::adapters {

using nlohmann::json;

bool AcceptsEventStream(const net::HttpRequest& request) {
  return boost::algorithm::icontains(net::FindHeader(request.headers, "accept"),
                                     "text/event-stream");
}

size_t CompleteUtf8Prefix(const std::string& text) {
  const size_t n = text.size();
  // Walk back over at most 3 continuation bytes to the lead byte of the last sequence.
  size_t i = n;
  int continuation = 0;
  while (i > 0 && continuation < 4 && (static_cast<unsigned char>(text[i - 1]) & 0xC0) == 0x80) {
    --i;
    ++continuation;
  }
  if (i == 0) return n;  // no lead byte: not UTF-8 we can judge; send as is
  const unsigned char lead = static_cast<unsigned char>(text[i - 1]);
  size_t need = 1;
  if ((lead & 0xE0) == 0xC0) {
    need = 2;
  } else if ((lead & 0xF0) == 0xE0) {
    need = 3;
  } else if ((lead & 0xF8) == 0xF0) {
    need = 4;
  }
  const size_t have = static_cast<size_t>(continuation) + 1;
  return have < need ? i - 1 : n;
}

std::string SseEvent(const char* event, const json& data) {
  // A dump never contains a raw newline, so the data is one line.
  return std::string("event: ") + event +
         "\ndata: " + data.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n";
}

// ---- StreamedReply ----

StreamedReply::StreamedReply(net::Responder respond) : respond_(std::move(respond)) {}

void StreamedReply::Refuse(net::HttpResponse response) {
  net::Responder respond;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (started_ || finished_) return;
    finished_ = true;
    respond = std::move(respond_);
    respond_ = nullptr;
  }
  if (respond) respond(std::move(response));
}

void StreamedReply::Start() {
  std::lock_guard<std::mutex> lock(mu_);
  if (!finished_) StartLocked();
}

void StreamedReply::Partial(const OutboundMessage& partial) {
  std::lock_guard<std::mutex> lock(mu_);
  if (finished_) return;
  StartLocked();
  const std::string& text = partial.text;
  const size_t end = CompleteUtf8Prefix(text);  // a split character waits for the next partial
  if (text.size() >= sent_.size() && text.compare(0, sent_.size(), sent_) == 0) {
    if (end <= sent_.size()) return;  // nothing new (yet)
    stream_->Write(SseEvent(
        "delta",
        json{{"id", partial.id}, {"text", text.substr(sent_.size(), end - sent_.size())}}));
  } else {
    stream_->Write(SseEvent("replace", json{{"id", partial.id}, {"text", text.substr(0, end)}}));
  }
  sent_.assign(text, 0, end);
}

Status StreamedReply::Final(const OutboundMessage& message) {
  std::lock_guard<std::mutex> lock(mu_);
  if (finished_) return Status::FailedPrecondition("the stream was already answered");
  finished_ = true;
  StartLocked();
  const bool queued = stream_->Write(SseEvent("message", ReplyJson(message)));
  stream_->End();
  return queued ? Status::Ok() : Status::Unavailable("the client of this stream went away");
}

void StreamedReply::Abandon(const std::string& why) {
  net::Responder respond;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_) return;
    finished_ = true;
    if (started_) {
      stream_->Write(SseEvent("error", json{{"error", "unavailable"}, {"message", why}}));
      stream_->End();
      return;
    }
    respond = std::move(respond_);
    respond_ = nullptr;
  }
  if (respond) respond(JsonError(503, "unavailable", why));
}

void StreamedReply::StartLocked() {
  if (started_) return;
  started_ = true;
  stream_ = net::ResponseStream::Create();
  net::HttpResponse r;
  r.content_type = "text/event-stream; charset=utf-8";
  r.headers.emplace_back("Cache-Control", "no-cache");
  r.headers.emplace_back("X-Accel-Buffering", "no");  // tell nginx-style proxies not to buffer
  r.stream = stream_;
  net::Responder respond = std::move(respond_);
  respond_ = nullptr;
  if (respond) respond(std::move(r));  // posts to the connection; does not re-enter us
}

// ---- StreamedReplyReader ----

StreamedReplyReader::StreamedReplyReader(PartialCallback on_partial)
    : on_partial_(std::move(on_partial)) {}

void StreamedReplyReader::Feed(std::string_view bytes) {
  if (finished()) return;
  Status framed = parser_.Feed(bytes, [this](net::SseEvent e) {
    if (!finished()) Dispatch(std::move(e));  // events after the end are ignored
  });
  if (!framed.ok() && !finished()) error_ = framed.message();
}

void StreamedReplyReader::Dispatch(net::SseEvent e) {
  const std::string event = e.event.empty() ? "message" : std::move(e.event);
  const std::string data = std::move(e.data);
  json parsed = json::parse(data, nullptr, /*allow_exceptions=*/false);
  if (event == "delta" || event == "replace") {
    if (!parsed.is_object() || !parsed.contains("text") || !parsed["text"].is_string()) {
      error_ = "the daemon sent a malformed \"" + event + "\" event";
      return;
    }
    if (event == "delta") {
      text_ += parsed["text"].get<std::string>();
    } else {
      text_ = parsed["text"].get<std::string>();
    }
    OutboundMessage partial;
    if (parsed.contains("id") && parsed["id"].is_string()) partial.id = parsed["id"];
    partial.text = text_;
    if (on_partial_) on_partial_(partial);
  } else if (event == "message") {
    Result<OutboundMessage> reply = ReplyFromJson(parsed);
    if (!reply.ok()) {
      error_ = "the daemon sent a malformed reply: " + reply.status().message();
      return;
    }
    reply_ = std::move(reply).value();
  } else if (event == "error") {
    std::string message =
        parsed.is_object() && parsed.contains("message") && parsed["message"].is_string()
            ? parsed["message"].get<std::string>()
            : data;
    error_ = message.empty() ? "the daemon gave up on the reply" : message;
  }
}

}  // namespace parley::adapters
