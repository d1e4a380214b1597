#pragma once
// Writing JSON text straight into a string, for the records written on every turn (memory turns,
// outbox entries): building an nlohmann::json tree first costs an allocation per node. The output
// is compact JSON that nlohmann::json::parse reads back; readers stay on nlohmann.
// Thread-safety: free functions on caller-owned strings.

#include <cstdint>
#include <string>
#include <string_view>

namespace parley {

// Appends s as a JSON string literal: quoted, with '"', '\\' and control characters escaped.
// Invalid UTF-8 becomes U+FFFD, one per offending byte, so the result always parses (nlohmann's
// dump would throw instead).
void AppendJsonString(std::string& out, std::string_view s);

// Appends a number the way nlohmann::json::dump does: shortest text that reads back to the same
// double; NaN and infinities (which JSON cannot hold) as null.
void AppendJsonNumber(std::string& out, double v);
void AppendJsonNumber(std::string& out, int64_t v);

// A small builder for one object: Field("k", v) in any order, Finish() closes the braces.
//   JsonObjectWriter w(out); w.Field("id", id).Field("n", 3); w.Finish();
class JsonObjectWriter {
 public:
  explicit JsonObjectWriter(std::string& out) : out_(out) { out_.push_back('{'); }
  JsonObjectWriter& Field(std::string_view key, std::string_view value);
  JsonObjectWriter& Field(std::string_view key, const char* value) {
    return Field(key, std::string_view(value));
  }
  JsonObjectWriter& Field(std::string_view key, const std::string& value) {
    return Field(key, std::string_view(value));
  }
  JsonObjectWriter& Field(std::string_view key, bool value);
  JsonObjectWriter& Field(std::string_view key, int64_t value);
  JsonObjectWriter& Field(std::string_view key, int value) {
    return Field(key, static_cast<int64_t>(value));
  }
  JsonObjectWriter& Field(std::string_view key, double value);
  // Appends `"key":` and leaves the value to the caller (an array or a nested object).
  std::string& Key(std::string_view key);
  void Finish() { out_.push_back('}'); }

 private:
  std::string& out_;
  bool first_ = true;
};

}  // namespace parley
