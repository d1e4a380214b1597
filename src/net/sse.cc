#include "net/sse.h"

#include <utility>

namespace parley::net {

Status SseParser::Feed(std::string_view bytes, const std::function<void(SseEvent)>& on_event) {
  auto end_line = [&]() {
    std::string_view line(line_);
    if (line.empty()) {
      if (has_data_) on_event(std::move(current_));
      current_ = SseEvent();
      has_data_ = false;
      current_bytes_ = 0;
    } else if (line.front() != ':') {
      const size_t colon = line.find(':');
      std::string_view field = line.substr(0, colon);
      std::string_view value;
      if (colon != std::string_view::npos) {
        value = line.substr(colon + 1);
        if (!value.empty() && value.front() == ' ') value.remove_prefix(1);
      }
      if (field == "data") {
        if (has_data_) current_.data += '\n';
        current_.data.append(value.data(), value.size());
        has_data_ = true;
      } else if (field == "event") {
        current_.event.assign(value.data(), value.size());
      }
      current_bytes_ += line.size();
    }
    line_.clear();
  };
  for (size_t i = 0; i < bytes.size(); ++i) {
    const char c = bytes[i];
    if (pending_cr_) {
      pending_cr_ = false;
      if (c == '\n') continue;  // the second half of "\r\n"
    }
    if (c == '\r' || c == '\n') {
      pending_cr_ = c == '\r';
      end_line();
      continue;
    }
    // Append the run up to the next line break in one go.
    size_t j = i;
    while (j < bytes.size() && bytes[j] != '\r' && bytes[j] != '\n') ++j;
    line_.append(bytes.data() + i, j - i);
    i = j - 1;
    if (line_.size() + current_bytes_ > max_event_bytes) {
      return Status::ResourceExhausted("server-sent event over " +
                                       std::to_string(max_event_bytes) + " bytes");
    }
  }
  return Status::Ok();
}

void SseParser::Finish(const std::function<void(SseEvent)>& on_event) {
  // A last line without its line break, then the event without its blank line.
  if (!line_.empty()) {
    Status ignored = Feed("\n", on_event);
    (void)ignored;
  }
  if (has_data_) on_event(std::move(current_));
  current_ = SseEvent();
  has_data_ = false;
  current_bytes_ = 0;
  pending_cr_ = false;
}

}  // namespace parley::net
