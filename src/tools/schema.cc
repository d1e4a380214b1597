#include "tools/schema.h"

#include <exception>
#include <utility>
#include <valijson/adapters/nlohmann_json_adapter.hpp>
#include <valijson/schema.hpp>
#include <valijson/schema_parser.hpp>
#include <valijson/validation_results.hpp>
#include <valijson/validator.hpp>

namespace parley::tools {

struct JsonSchema::Impl {
  // valijson's compiled schema refers to nothing outside itself once parsed, but keep the source
  // document alive anyway: it is small and makes the lifetime question moot.
  nlohmann::json document;
  valijson::Schema schema;
};

namespace {

bool StartsWith(const std::string& s, const std::string& prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

// The text between the last pair of single quotes in `s` (valijson puts the property name
// last), or empty.
std::string Quoted(const std::string& s) {
  const size_t close = s.rfind('\'');
  if (close == std::string::npos || close == 0) return "";
  const size_t open = s.rfind('\'', close - 1);
  if (open == std::string::npos) return "";
  return s.substr(open + 1, close - open - 1);
}

// valijson prints limits with std::to_string ("1.000000"): drop the trailing zeros.
std::string TrimNumbers(const std::string& s) {
  std::string out;
  size_t i = 0;
  while (i < s.size()) {
    const bool digit_before = !out.empty() && out.back() >= '0' && out.back() <= '9';
    if (s[i] == '.' && digit_before && i + 1 < s.size() && s[i + 1] >= '0' && s[i + 1] <= '9') {
      size_t end = i + 1;
      while (end < s.size() && s[end] >= '0' && s[end] <= '9') ++end;
      std::string fraction = s.substr(i + 1, end - i - 1);
      while (!fraction.empty() && fraction.back() == '0') fraction.pop_back();
      if (!fraction.empty()) out += "." + fraction;
      i = end;
      continue;
    }
    out += s[i++];
  }
  return out;
}

// One JSON Pointer reference token (RFC 6901 escaping).
std::string PointerToken(const std::string& token) {
  std::string out;
  for (char c : token) {
    if (c == '~') {
      out += "~0";
    } else if (c == '/') {
      out += "~1";
    } else {
      out += c;
    }
  }
  return out;
}

// valijson's context is {"<root>", "[name]", "[0]", ...}.
std::string ContextPointer(const std::vector<std::string>& context) {
  std::string out;
  for (const std::string& part : context) {
    if (part == "<root>") continue;
    std::string token = part;
    if (token.size() >= 2 && token.front() == '[' && token.back() == ']') {
      token = token.substr(1, token.size() - 2);
    }
    out += "/" + PointerToken(token);
  }
  return out;
}

std::string Lowered(std::string s) {
  if (!s.empty() && s.front() >= 'A' && s.front() <= 'Z')
    s.front() = static_cast<char>(s.front() - 'A' + 'a');
  while (!s.empty() && s.back() == '.') s.pop_back();
  return s;
}

// Maps one valijson error to a short message, or empty for the summary errors valijson adds
// around a nested failure (the nested one is reported already).
std::string ShortError(const valijson::ValidationResults::Error& error) {
  const std::string& d = error.description;
  const std::string path = ContextPointer(error.context);
  if (StartsWith(d, "Failed to validate against schema associated with property") ||
      StartsWith(d, "Failed to validate item #") ||
      StartsWith(d, "Failed to validate against additional properties schema") ||
      StartsWith(d, "Failed to validate against schema associated with pattern")) {
    return "";
  }
  if (StartsWith(d, "Missing required property")) {
    return path + "/" + PointerToken(Quoted(d)) + ": required property missing";
  }
  if (StartsWith(d, "Object contains a property that could not be validated")) {
    return path + "/" + PointerToken(Quoted(d)) + ": property not allowed";
  }
  const std::string where = path.empty() ? "/" : path;
  if (StartsWith(d, "Value type not permitted")) return where + ": wrong type";
  if (StartsWith(d, "Failed to match against any enum values"))
    return where + ": not one of the allowed values";
  return where + ": " + TrimNumbers(Lowered(d));
}

}  // namespace

JsonSchema::JsonSchema(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
JsonSchema::~JsonSchema() = default;

Result<std::shared_ptr<const JsonSchema>> JsonSchema::Compile(const nlohmann::json& schema) {
  if (!schema.is_object()) return Status::InvalidArgument("schema is not a JSON object");
  auto impl = std::make_unique<Impl>();
  impl->document = schema;
  try {
    valijson::SchemaParser parser(valijson::SchemaParser::kDraft7);
    valijson::adapters::NlohmannJsonAdapter adapter(impl->document);
    parser.populateSchema(adapter, impl->schema);
  } catch (const std::exception& e) {
    return Status::InvalidArgument(std::string("schema not loadable: ") + e.what());
  }
  return std::shared_ptr<const JsonSchema>(new JsonSchema(std::move(impl)));
}

std::vector<std::string> JsonSchema::Validate(const nlohmann::json& value,
                                              size_t max_errors) const {
  std::vector<std::string> out;
  try {
    valijson::Validator validator;  // holds a regex cache: one per call keeps this thread-safe
    valijson::ValidationResults results;
    valijson::adapters::NlohmannJsonAdapter adapter(value);
    if (validator.validate(impl_->schema, adapter, &results)) return out;
    valijson::ValidationResults::Error error;
    while (results.popError(error)) {
      std::string message = ShortError(error);
      if (message.empty()) continue;
      if (out.size() >= max_errors) break;
      out.push_back(std::move(message));
    }
    if (out.empty()) out.push_back("/: does not match the schema");
  } catch (const std::exception& e) {
    out.assign(1, std::string("/: cannot be validated: ") + e.what());
  }
  return out;
}

}  // namespace parley::tools
