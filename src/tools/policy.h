#pragma once
// The layer between the model and the tools: every call the model asks for is looked up,
// authorised for the conversation and user, parsed and validated against the tool's schema, held
// back until the user confirmed it when the tool demands that, bounded in time, measured and
// audited. The refused outcomes never run the tool.
// Thread-safety: Call is thread-safe. Lifetime: the policy and everything it borrows must
// outlive every call until its `done` ran (at most the tool's timeout_ms after Call plus
// scheduling); a tool's late answer after a timeout touches only the call's own shared state.

#include <boost/asio/io_context.hpp>
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>

#include "core/clock.h"
#include "core/metrics.h"
#include "llm/chat.h"
#include "store/committer.h"
#include "tools/registry.h"
#include "tools/tool.h"

namespace parley::tools {

enum class CallOutcome {
  kOk,
  kToolError,
  kInvalidArguments,
  kUnknownTool,
  kNotAllowed,
  kNeedsConfirmation,
  kTimedOut,
};

// "ok", "tool_error", "invalid_arguments", "unknown_tool", "not_allowed", "needs_confirmation",
// "timed_out" (the audit's and the metrics' spelling).
const char* OutcomeName(CallOutcome outcome);

struct CallResult {
  CallOutcome outcome = CallOutcome::kOk;
  // The tool message for the model: the tool's output, or a short clear error ("invalid
  // arguments: /city: required property missing", "unknown tool x", "tool x is not allowed
  // here", "tool x needs the user's confirmation; ask them", "tool x timed out after 500 ms").
  std::string content;
  bool escalate = false;     // from the tool's result
  int64_t duration_ms = 0;   // from Call to the outcome
  nlohmann::json arguments;  // parsed, when the text was valid JSON; null otherwise
};

class ToolPolicy {
 public:
  ToolPolicy(boost::asio::io_context& io, const ToolRegistry& registry, store::Committer& committer,
             const Clock& clock, MetricsRegistry& metrics);
  ToolPolicy(const ToolPolicy&) = delete;
  ToolPolicy& operator=(const ToolPolicy&) = delete;

  // Decides, in this order: unknown tool -> kUnknownTool; not allowed for the conversation/user
  // -> kNotAllowed; arguments not JSON or not an object -> kInvalidArguments (an empty or
  // all-blank arguments text counts as {}: some servers send it for parameterless tools);
  // schema violations -> kInvalidArguments; rules.confirm && !confirmed -> kNeedsConfirmation;
  // else the tool runs, bounded by rules.timeout_ms (kTimedOut; its late answer is dropped),
  // giving kOk or kToolError.
  // Every call writes one audit record (keys::Audit(start ms, turn_id, call.id); not synced)
  // and counts in parley_tool_calls_total{tool,outcome} (tool="unknown" for unknown names, so a
  // model cannot grow the label set); calls that ran are timed in parley_tool_seconds{tool}.
  // `done` runs exactly once, on an io thread, never inside Call.
  void Call(const llm::ToolCall& call, const ToolContext& context, bool confirmed,
            std::function<void(CallResult)> done);

 private:
  struct Pending;
  void Finish(const std::shared_ptr<Pending>& pending, CallResult result, std::string error);

  boost::asio::io_context& io_;
  const ToolRegistry& registry_;
  store::Committer& committer_;
  const Clock& clock_;
  MetricsRegistry& metrics_;
};

// A copy of `arguments` with the value of every object member named in `names` replaced by
// "***", at any depth (inside nested objects and arrays).
nlohmann::json RedactArguments(const nlohmann::json& arguments,
                               const std::vector<std::string>& names);

}  // namespace parley::tools
