#include "config/env_expand.h"

namespace parley::config::internal {
namespace {

bool IsValidName(std::string_view name) {
  if (name.empty()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool alpha = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
    const bool digit = c >= '0' && c <= '9';
    if (!alpha && !(digit && i > 0)) return false;
  }
  return true;
}

// Parses the reference starting at raw[pos] == '$', raw[pos + 1] == '{'. On success sets `end`
// to the index just past the closing '}'.
Result<EnvReference> ParseReferenceAt(std::string_view raw, size_t pos, size_t* end) {
  const size_t close = raw.find('}', pos + 2);
  if (close == std::string_view::npos) {
    return Status::InvalidArgument("unterminated ${...} (missing '}')");
  }
  const std::string_view body = raw.substr(pos + 2, close - pos - 2);
  const size_t sep = body.find(":-");
  const std::string_view name = body.substr(0, sep);
  if (!IsValidName(name)) {
    return Status::InvalidArgument(
        "invalid ${...} reference: write ${NAME} or ${NAME:-default}, NAME made of letters, "
        "digits and '_'");
  }
  EnvReference ref;
  ref.name = std::string(name);
  if (sep != std::string_view::npos) ref.fallback = std::string(body.substr(sep + 2));
  *end = close + 1;
  return ref;
}

}  // namespace

Result<std::string> ExpandEnv(std::string_view raw, const EnvLookup& env) {
  std::string out;
  out.reserve(raw.size());
  size_t i = 0;
  while (i < raw.size()) {
    const char c = raw[i];
    if (c != '$') {
      out += c;
      ++i;
      continue;
    }
    if (i + 1 < raw.size() && raw[i + 1] == '$') {
      out += '$';
      i += 2;
      continue;
    }
    if (i + 1 >= raw.size() || raw[i + 1] != '{') {
      return Status::InvalidArgument("a '$' must start ${NAME}; write $$ for a literal '$'");
    }
    size_t end = 0;
    Result<EnvReference> ref = ParseReferenceAt(raw, i, &end);
    if (!ref.ok()) return ref.status();
    const std::optional<std::string> value = env ? env(ref->name) : std::nullopt;
    if (value && !value->empty()) {
      out += *value;
    } else if (ref->fallback) {
      out += *ref->fallback;
    } else if (!value) {
      return Status::InvalidArgument("environment variable " + ref->name + " is not set (write ${" +
                                     ref->name + ":-default} to make it optional)");
    }
    i = end;
  }
  return out;
}

std::optional<EnvReference> ParseSoleReference(std::string_view raw) {
  if (raw.size() < 3 || raw[0] != '$' || raw[1] != '{') return std::nullopt;
  size_t end = 0;
  Result<EnvReference> ref = ParseReferenceAt(raw, 0, &end);
  if (!ref.ok() || end != raw.size()) return std::nullopt;
  return std::move(ref).value();
}

}  // namespace parley::config::internal
