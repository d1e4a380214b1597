#pragma once
// ${NAME} expansion in configuration string values (internal to src/config; tests include it).
//   ${NAME}            the value of environment variable NAME; an error when NAME is unset
//                      (set but empty gives "").
//   ${NAME:-default}   the value of NAME, or `default` when NAME is unset or empty.
//   $$                 a literal '$'.
// Any other '$' is an error. NAME is [A-Za-z_][A-Za-z0-9_]*; `default` is literal text up to the
// first '}'. Values taken from the environment are not expanded again.
// Error messages name the variable but never contain a value.
// Thread-safety: stateless functions; `env` is called on the caller's thread.

#include <optional>
#include <string>
#include <string_view>

#include "config/config.h"
#include "core/status.h"

namespace parley::config::internal {

// Expands all references in `raw`.
Result<std::string> ExpandEnv(std::string_view raw, const EnvLookup& env);

struct EnvReference {
  std::string name;
  std::optional<std::string> fallback;  // the `default` of ${NAME:-default}
};

// When `raw` is exactly one reference and nothing else, returns it; else nullopt.
std::optional<EnvReference> ParseSoleReference(std::string_view raw);

}  // namespace parley::config::internal
