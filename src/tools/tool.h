#pragma once
// Tools the model may call, and the policy layer between the model and them: every call is
// validated against the tool's JSON Schema, authorised for the conversation and user, run only
// after the user's confirmation when the tool demands it, bounded in time, and audited.
// The model never decides what runs; this layer does.
// Thread-safety: Tool::Invoke and ToolPolicy::Call are thread-safe; callbacks run on io threads.

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/message.h"
#include "core/status.h"

namespace parley::tools {

// Who is asking, where.
struct ToolContext {
  std::string turn_id;
  ConversationKey conversation;
  std::string user;                      // platform user id
  std::vector<std::string> access_tags;  // the conversation's knowledge access tags
};

// What a tool produced. `content` goes back to the model as the tool message (plain text or
// JSON text). A failed tool (ok == false) still has content: a short error the model can read.
struct ToolResult {
  bool ok = true;
  std::string content;
  // Set by tools that change the conversation's course (escalate_to_human): the engine reads it.
  bool escalate = false;
};

using ToolDone = std::function<void(ToolResult)>;

class Tool {
 public:
  virtual ~Tool() = default;
  virtual const std::string& name() const = 0;         // ^[a-zA-Z0-9_-]{1,64}$
  virtual const std::string& description() const = 0;
  virtual const nlohmann::json& parameters() const = 0;  // JSON Schema (an object)
  // Runs with arguments already validated against parameters(). Calls done exactly once, on any
  // thread, never inside Invoke itself unless it cannot start (then at once is allowed).
  virtual void Invoke(nlohmann::json arguments, const ToolContext& context, ToolDone done) = 0;
};

}  // namespace parley::tools
