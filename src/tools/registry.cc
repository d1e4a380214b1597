#include "tools/registry.h"

#include <utility>

#include "core/glob.h"

namespace parley::tools {

bool IsValidToolName(std::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

namespace {

bool AnyMatches(const std::vector<std::string>& patterns, const std::string& subject) {
  if (patterns.empty()) return true;
  for (const std::string& pattern : patterns) {
    if (GlobMatch(pattern, subject)) return true;
  }
  return false;
}

}  // namespace

Status ToolRegistry::Add(std::shared_ptr<Tool> tool, ToolRules rules) {
  if (!tool) return Status::InvalidArgument("tool: null tool");
  const std::string& name = tool->name();
  if (!IsValidToolName(name)) {
    return Status::InvalidArgument("tool \"" + name.substr(0, 80) +
                                   "\": name must match ^[a-zA-Z0-9_-]{1,64}$");
  }
  if (Find(name) != nullptr) {
    return Status::InvalidArgument("tool " + name + ": registered twice");
  }
  if (rules.timeout_ms <= 0) {
    return Status::InvalidArgument("tool " + name + ": timeout_ms must be positive");
  }
  auto schema = JsonSchema::Compile(tool->parameters());
  if (!schema.ok()) {
    return Status::InvalidArgument("tool " + name + ": parameters: " + schema.status().message());
  }
  auto entry = std::make_unique<RegisteredTool>();
  entry->tool = std::move(tool);
  entry->rules = std::move(rules);
  entry->schema = std::move(schema).value();
  entries_.push_back(std::move(entry));
  return Status::Ok();
}

bool ToolRegistry::Allowed(const RegisteredTool& entry, const ToolContext& context) {
  const std::string& platform = context.conversation.platform;
  return AnyMatches(entry.rules.allow_channels, platform + ":" + context.conversation.channel) &&
         AnyMatches(entry.rules.allow_users, platform + ":" + context.user);
}

std::vector<llm::ToolSpec> ToolRegistry::Offered(const ToolContext& context) const {
  std::vector<llm::ToolSpec> out;
  for (const auto& entry : entries_) {
    if (!Allowed(*entry, context)) continue;
    out.push_back({entry->tool->name(), entry->tool->description(), entry->tool->parameters()});
  }
  return out;
}

const RegisteredTool* ToolRegistry::Find(std::string_view name) const {
  for (const auto& entry : entries_) {
    if (entry->tool->name() == name) return entry.get();
  }
  return nullptr;
}

std::vector<std::string> ToolRegistry::Names() const {
  std::vector<std::string> out;
  out.reserve(entries_.size());
  for (const auto& entry : entries_) out.push_back(entry->tool->name());
  return out;
}

}  // namespace parley::tools
