#pragma once
// A JSON Schema (draft 7) compiled once and used to validate tool arguments many times. Wraps
// valijson, which never appears in a public header.
// Thread-safety: Validate is thread-safe (the compiled schema is read-only after Compile).

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/status.h"

namespace parley::tools {

class JsonSchema {
 public:
  // InvalidArgument (with a short reason) when `schema` is not a JSON object or valijson cannot
  // load it (bad keyword values, unresolvable or remote $ref, ...).
  [[nodiscard]] static Result<std::shared_ptr<const JsonSchema>> Compile(
      const nlohmann::json& schema);
  ~JsonSchema();
  JsonSchema(const JsonSchema&) = delete;
  JsonSchema& operator=(const JsonSchema&) = delete;

  // Empty when `value` conforms. Otherwise short messages "<JSON pointer>: <reason>", innermost
  // first, at most `max_errors` of them, e.g. "/city: required property missing",
  // "/days: wrong type", "/extra: property not allowed". The root is written "/".
  std::vector<std::string> Validate(const nlohmann::json& value, size_t max_errors = 5) const;

 private:
  struct Impl;
  explicit JsonSchema(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace parley::tools
