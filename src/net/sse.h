#pragma once
// Server-sent events (text/event-stream) framing for clients: the LLM client's streamed
// completions, and the daemon's own streams read back by `parley ask` / `parley chat`.
// Thread-safety: SseParser is single-owner.

#include <cstddef>
#include <functional>
#include <string>
#include <string_view>

#include "core/status.h"

namespace parley::net {

// One server-sent event: the `event:` field (empty when absent) and the `data:` lines joined by
// "\n".
struct SseEvent {
  std::string event;
  std::string data;
};

// Incremental SSE framing: bytes may be split anywhere (inside a line, a "\r\n", a UTF-8
// sequence). Lines end in "\n", "\r\n" or "\r"; a blank line ends an event; lines starting with
// ':' are comments; `id:` and `retry:` are ignored; unknown fields are ignored.
class SseParser {
 public:
  // Feeds bytes; calls on_event for each complete event, in order. An event with no data lines is
  // not reported. Returns ResourceExhausted if one pending line/event exceeds max_event_bytes
  // (the parser is then unusable).
  Status Feed(std::string_view bytes, const std::function<void(SseEvent)>& on_event);
  // The stream ended: an event still being collected (no trailing blank line) is reported.
  void Finish(const std::function<void(SseEvent)>& on_event);

  size_t max_event_bytes = 4 * 1024 * 1024;

 private:
  std::string line_;
  bool pending_cr_ = false;
  SseEvent current_;
  bool has_data_ = false;
  size_t current_bytes_ = 0;
};

}  // namespace parley::net
