#include "core/json_write.h"

#include <charconv>
#include <cmath>

#include "core/utf8.h"

namespace parley {

void AppendJsonString(std::string& out, std::string_view s) {
  static const char kHex[] = "0123456789abcdef";
  out.reserve(out.size() + s.size() + 2);
  out.push_back('"');
  size_t i = 0;
  while (i < s.size()) {
    // Copy the longest run that needs no escaping in one go.
    size_t run = i;
    while (run < s.size()) {
      const auto c = static_cast<unsigned char>(s[run]);
      if (c < 0x20 || c == '"' || c == '\\' || c >= 0x80) break;
      ++run;
    }
    out.append(s.data() + i, run - i);
    i = run;
    if (i >= s.size()) break;
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x80) {
      const size_t len = Utf8SequenceLength(s, i);
      if (len == 0) {
        out.append("\xEF\xBF\xBD");  // U+FFFD
        ++i;
      } else {
        out.append(s.data() + i, len);
        i += len;
      }
      continue;
    }
    switch (c) {
      case '"': out.append("\\\""); break;
      case '\\': out.append("\\\\"); break;
      case '\b': out.append("\\b"); break;
      case '\f': out.append("\\f"); break;
      case '\n': out.append("\\n"); break;
      case '\r': out.append("\\r"); break;
      case '\t': out.append("\\t"); break;
      default:
        out.append("\\u00");
        out.push_back(kHex[c >> 4]);
        out.push_back(kHex[c & 0xf]);
    }
    ++i;
  }
  out.push_back('"');
}

void AppendJsonNumber(std::string& out, double v) {
  if (!std::isfinite(v)) {
    out.append("null");
    return;
  }
  char buf[32];
  const auto r = std::to_chars(buf, buf + sizeof(buf), v);
  std::string_view text(buf, static_cast<size_t>(r.ptr - buf));
  out.append(text);
  // nlohmann writes integral doubles with ".0" so they read back as floats; do the same.
  if (text.find_first_of(".eE") == std::string_view::npos) out.append(".0");
}

void AppendJsonNumber(std::string& out, int64_t v) {
  char buf[24];
  const auto r = std::to_chars(buf, buf + sizeof(buf), v);
  out.append(buf, static_cast<size_t>(r.ptr - buf));
}

std::string& JsonObjectWriter::Key(std::string_view key) {
  if (!first_) out_.push_back(',');
  first_ = false;
  AppendJsonString(out_, key);
  out_.push_back(':');
  return out_;
}

JsonObjectWriter& JsonObjectWriter::Field(std::string_view key, std::string_view value) {
  AppendJsonString(Key(key), value);
  return *this;
}

JsonObjectWriter& JsonObjectWriter::Field(std::string_view key, bool value) {
  Key(key).append(value ? "true" : "false");
  return *this;
}

JsonObjectWriter& JsonObjectWriter::Field(std::string_view key, int64_t value) {
  AppendJsonNumber(Key(key), value);
  return *this;
}

JsonObjectWriter& JsonObjectWriter::Field(std::string_view key, double value) {
  AppendJsonNumber(Key(key), value);
  return *this;
}

}  // namespace parley
