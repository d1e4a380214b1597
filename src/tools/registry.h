#pragma once
// The tools the application offers, each with its rules (where, for whom, with confirmation or
// not, how long it may run, what the audit hides) and its compiled argument schema.
// Thread-safety: Add is for wiring time only (not concurrent with anything else); every const
// method is thread-safe afterwards. Entries never move: pointers from Find stay valid for the
// registry's life.

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "llm/chat.h"
#include "tools/schema.h"
#include "tools/tool.h"

namespace parley::tools {

struct ToolRules {
  bool confirm = false;  // run only after the user confirmed this call
  // Conversations where the tool may run, as "platform:channel" globs ('*' matches any run of
  // characters, including none); empty = everywhere.
  std::vector<std::string> allow_channels;
  // Users who may have it run, as "platform:user" globs; empty = everyone.
  std::vector<std::string> allow_users;
  // Argument names whose values are written as "***" in the audit log, at any depth.
  std::vector<std::string> redact;
  int timeout_ms = 10'000;  // the call is abandoned (kTimedOut) after this
};

// One registered tool.
struct RegisteredTool {
  std::shared_ptr<Tool> tool;
  ToolRules rules;
  std::shared_ptr<const JsonSchema> schema;  // tool->parameters(), compiled
};

// ^[a-zA-Z0-9_-]{1,64}$
bool IsValidToolName(std::string_view name);

class ToolRegistry {
 public:
  ToolRegistry() = default;
  ToolRegistry(const ToolRegistry&) = delete;
  ToolRegistry& operator=(const ToolRegistry&) = delete;

  // InvalidArgument (naming the tool) when the tool is null, its name is not
  // ^[a-zA-Z0-9_-]{1,64}$ or already registered, its parameters are not a JSON object or valijson
  // cannot load them, or timeout_ms is not positive.
  [[nodiscard]] Status Add(std::shared_ptr<Tool> tool, ToolRules rules);

  // The tools allowed in this conversation for this user, in registration order.
  std::vector<llm::ToolSpec> Offered(const ToolContext& context) const;

  // nullptr when no tool has that name.
  const RegisteredTool* Find(std::string_view name) const;

  // True when the entry's allow_channels / allow_users admit the context's conversation
  // ("platform:channel") and user ("platform:user").
  static bool Allowed(const RegisteredTool& entry, const ToolContext& context);

  // Registered names, in registration order.
  std::vector<std::string> Names() const;
  size_t size() const { return entries_.size(); }

 private:
  std::vector<std::unique_ptr<RegisteredTool>> entries_;
};

}  // namespace parley::tools
