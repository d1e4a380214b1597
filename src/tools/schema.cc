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

// The text between the first pair of single quotes in `s`, or empty.
std::string Quoted(const std::string& s) {
  const size_t open = s.find('\'');
  if (open == std::string::npos) return "";
  const size_t close = s.find('\'', open + 1);
  if (close == std::string::npos) return "";
  return s.substr(open + 1, close - open - 1);
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
  if (!s.empty() && s.front() >= 'A' && s.front() <= 'Z') s.front() = static_cast<char>(s.front() - 'A' + 'a');
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
  if (StartsWith(d, "Failed to match against any enum values")) return where + ": not one of the allowed values";
  return where + ": " + Lowered(d);
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
