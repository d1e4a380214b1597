#pragma once
// A reply streamed as server-sent events, both ends: StreamedReply writes it (the daemon's side
// of a synchronous request that asked for streaming), StreamedReplyReader reads it (a client such
// as `parley ask` through a running daemon).
//
// Wire format (text/event-stream, one JSON object per "data:" line):
//   event: delta    data: {"id","text": new text since the last event}
//   event: replace  data: {"id","text": the whole text so far} (the draft was rewritten)
//   event: message  data: the reply JSON (adapters::ReplyJson), then the end of the stream
//   event: error    data: {"error","message"}, then the end of the stream (no reply will come)
// A delta never splits a UTF-8 character. The webhook's ?stream=1 answers use the same shapes.

#include <functional>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "core/message.h"
#include "net/sse.h"
#include "core/status.h"
#include "net/http.h"

namespace parley::adapters {

// True when the request's Accept header names text/event-stream.
bool AcceptsEventStream(const net::HttpRequest& request);

// Length of the longest prefix of text that does not end inside a UTF-8 sequence.
size_t CompleteUtf8Prefix(const std::string& text);

// One event: "event: NAME\ndata: JSON\n\n". Invalid UTF-8 in data is replaced, not thrown on.
std::string SseEvent(const char* event, const nlohmann::json& data);

// The streamed answer to one request. The 200 text/event-stream head goes out at Start() (when
// the turn is accepted) or at the first partial, whichever comes first; until then the request
// can still be answered with a normal (JSON error) response through Refuse().
// A client that goes away is not an error here: later writes are dropped and Final() says so.
// Thread-safety: thread-safe (partials and the final reply may come from any thread).
class StreamedReply {
 public:
  explicit StreamedReply(net::Responder respond);

  // Answers with `response` instead if the stream has not started; else ignored.
  void Refuse(net::HttpResponse response);
  // Sends the 200 text/event-stream head (once; ignored after the end).
  void Start();
  // Sends what `partial.text` (the whole reply so far) adds as a "delta", or a "replace" when it
  // does not extend what was sent. Ignored after the end.
  void Partial(const OutboundMessage& partial);
  // Sends the reply as the "message" event and ends the stream. Ok when it was queued to a
  // client still connected; FailedPrecondition when already ended; Unavailable when the client
  // went away.
  Status Final(const OutboundMessage& message);
  // Ends without a reply: a 503 JSON error if nothing was sent yet, else an "error" event
  // {"error":"unavailable","message": why} and the end of the stream. Ignored after the end.
  void Abandon(const std::string& why);

 private:
  void StartLocked();

  std::mutex mu_;
  net::Responder respond_;  // until the head or an error response is sent
  std::shared_ptr<net::ResponseStream> stream_;
  std::string sent_;  // the text the client has so far (deltas and replaces applied)
  bool started_ = false;
  bool finished_ = false;
};

// Decodes a streamed reply from the bytes of its body, fed in pieces of any size (events, lines,
// CR LF pairs and UTF-8 sequences may be cut anywhere). Tolerates CR LF line ends, comments and
// unknown events (ignored). Thread-safety: not thread-safe; one reader per stream.
class StreamedReplyReader {
 public:
  // Called after each delta or replace with the whole text so far (partial.text, as
  // ReplySink::SendPartial gives it; partial.id is the reply's id).
  using PartialCallback = std::function<void(const OutboundMessage& partial)>;

  explicit StreamedReplyReader(PartialCallback on_partial);

  // Consumes body bytes, running on_partial for the events they complete. Events after the
  // "message" or "error" event are ignored.
  void Feed(std::string_view bytes);

  // True once a "message" or "error" event (or an undecodable event) was read.
  bool finished() const { return reply_.has_value() || !error_.empty(); }
  // The final reply, once the "message" event was read.
  const std::optional<OutboundMessage>& reply() const { return reply_; }
  // Why there will be no reply: the "error" event's message, or what was wrong with the stream.
  const std::string& error() const { return error_; }
  // The text assembled from deltas and replaces so far.
  const std::string& text() const { return text_; }

 private:
  void Dispatch(net::SseEvent e);

  PartialCallback on_partial_;
  net::SseParser parser_;
  std::string id_;
  std::string text_;
  std::optional<OutboundMessage> reply_;
  std::string error_;
};

}  // namespace parley::adapters
