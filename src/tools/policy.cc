#include "tools/policy.h"

#include <spdlog/spdlog.h>

#include <atomic>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <chrono>
#include <exception>
#include <memory>
#include <utility>

#include "store/keys.h"
#include "tools/text_util.h"

namespace parley::tools {

namespace asio = boost::asio;
using Json = nlohmann::json;

const char* OutcomeName(CallOutcome outcome) {
  switch (outcome) {
    case CallOutcome::kOk:
      return "ok";
    case CallOutcome::kToolError:
      return "tool_error";
    case CallOutcome::kInvalidArguments:
      return "invalid_arguments";
    case CallOutcome::kUnknownTool:
      return "unknown_tool";
    case CallOutcome::kNotAllowed:
      return "not_allowed";
    case CallOutcome::kNeedsConfirmation:
      return "needs_confirmation";
    case CallOutcome::kTimedOut:
      return "timed_out";
  }
  return "unknown";
}

Json RedactArguments(const Json& arguments, const std::vector<std::string>& names) {
  if (names.empty()) return arguments;
  if (arguments.is_object()) {
    Json out = Json::object();
    for (auto it = arguments.begin(); it != arguments.end(); ++it) {
      bool hidden = false;
      for (const std::string& name : names) hidden = hidden || it.key() == name;
      out[it.key()] = hidden ? Json("***") : RedactArguments(it.value(), names);
    }
    return out;
  }
  if (arguments.is_array()) {
    Json out = Json::array();
    for (const Json& item : arguments) out.push_back(RedactArguments(item, names));
    return out;
  }
  return arguments;
}

namespace {

bool IsBlank(const std::string& s) {
  for (char c : s) {
    if (c != ' ' && c != '\t' && c != '\n' && c != '\r') return false;
  }
  return true;
}

}  // namespace

// One call's state, shared by the tool's completion and the timeout (both on `strand`).
struct ToolPolicy::Pending {
  explicit Pending(asio::io_context& io) : strand(asio::make_strand(io)), timer(strand) {}

  asio::strand<asio::io_context::executor_type> strand;
  asio::steady_timer timer;
  std::atomic<bool> finished{false};  // set once, on the strand (or in Call before running)

  std::string tool;  // the name as the model wrote it (truncated for unknown tools)
  bool known = false;
  std::string call_id;
  ToolContext context;
  bool confirmed = false;
  int64_t start_ms = 0;     // wall clock, for the audit key
  int64_t start_nanos = 0;  // monotonic, for the duration
  Json arguments;           // parsed; null when not JSON
  bool arguments_valid_json = false;
  std::vector<std::string> redact;
  std::function<void(CallResult)> done;
};

ToolPolicy::ToolPolicy(asio::io_context& io, const ToolRegistry& registry,
                       store::Committer& committer, const Clock& clock, MetricsRegistry& metrics)
    : io_(io), registry_(registry), committer_(committer), clock_(clock), metrics_(metrics) {}

void ToolPolicy::Call(const llm::ToolCall& call, const ToolContext& context, bool confirmed,
                      std::function<void(CallResult)> done) {
  auto pending = std::make_shared<Pending>(io_);
  pending->call_id = call.id;
  pending->context = context;
  pending->confirmed = confirmed;
  pending->start_ms = clock_.NowMs();
  pending->start_nanos = MonotonicNanos();
  pending->done = std::move(done);

  auto refuse = [&](CallOutcome outcome, std::string content) {
    pending->finished = true;
    CallResult result;
    result.outcome = outcome;
    result.content = content;
    Finish(pending, std::move(result), std::move(content));
  };

  // Parse first so every audit record (refusals included) carries the arguments.
  if (IsBlank(call.arguments)) {
    pending->arguments = Json::object();
    pending->arguments_valid_json = true;
  } else {
    pending->arguments = Json::parse(call.arguments, nullptr, /*allow_exceptions=*/false);
    pending->arguments_valid_json = !pending->arguments.is_discarded();
    if (!pending->arguments_valid_json) pending->arguments = nullptr;
  }

  const RegisteredTool* entry = registry_.Find(call.name);
  if (entry == nullptr) {
    pending->tool = internal::SanitizeUtf8(internal::TruncateUtf8(call.name, 64));
    refuse(CallOutcome::kUnknownTool, "unknown tool " + pending->tool);
    return;
  }
  pending->known = true;
  pending->tool = entry->tool->name();
  pending->redact = entry->rules.redact;
  const std::string& name = pending->tool;

  if (!ToolRegistry::Allowed(*entry, context)) {
    refuse(CallOutcome::kNotAllowed, "tool " + name + " is not allowed here");
    return;
  }
  if (!pending->arguments_valid_json) {
    refuse(CallOutcome::kInvalidArguments, "invalid arguments: not valid JSON");
    return;
  }
  if (!pending->arguments.is_object()) {
    refuse(CallOutcome::kInvalidArguments, "invalid arguments: expected a JSON object");
    return;
  }
  const std::vector<std::string> errors = entry->schema->Validate(pending->arguments);
  if (!errors.empty()) {
    std::string message = "invalid arguments: ";
    for (size_t i = 0; i < errors.size(); ++i) message += (i ? "; " : "") + errors[i];
    refuse(CallOutcome::kInvalidArguments, internal::TruncateUtf8(message, 500));
    return;
  }
  if (entry->rules.confirm && !confirmed) {
    refuse(CallOutcome::kNeedsConfirmation,
           "tool " + name + " needs the user's confirmation; ask them");
    return;
  }

  const int timeout_ms = entry->rules.timeout_ms;
  pending->timer.expires_after(std::chrono::milliseconds(timeout_ms));
  pending->timer.async_wait([this, pending, timeout_ms](const boost::system::error_code& ec) {
    if (ec || pending->finished.exchange(true)) return;
    CallResult result;
    result.outcome = CallOutcome::kTimedOut;
    result.content =
        "tool " + pending->tool + " timed out after " + std::to_string(timeout_ms) + " ms";
    std::string error = result.content;
    Finish(pending, std::move(result), std::move(error));
  });

  // The tool may answer on any thread, late or never. A late answer only reads `finished`.
  auto complete = [this, pending](ToolResult tool_result) {
    if (pending->finished.load()) return;
    asio::post(pending->strand, [this, pending, tool_result = std::move(tool_result)]() mutable {
      if (pending->finished.exchange(true)) return;
      pending->timer.cancel();
      CallResult result;
      result.outcome = tool_result.ok ? CallOutcome::kOk : CallOutcome::kToolError;
      result.escalate = tool_result.escalate;
      std::string error =
          tool_result.ok ? ""
                         : internal::TruncateUtf8(internal::SanitizeUtf8(tool_result.content), 200);
      // Whatever the tool produced, the model gets valid UTF-8 (it goes into a JSON request).
      result.content = internal::SanitizeUtf8(tool_result.content);
      Finish(pending, std::move(result), std::move(error));
    });
  };
  try {
    entry->tool->Invoke(pending->arguments, pending->context, complete);
  } catch (const std::exception& e) {
    spdlog::error("tool.threw tool={} what={}", name, e.what());
    complete(ToolResult{false, "tool " + name + " failed", false});
  } catch (...) {
    spdlog::error("tool.threw tool={}", name);
    complete(ToolResult{false, "tool " + name + " failed", false});
  }
}

void ToolPolicy::Finish(const std::shared_ptr<Pending>& pending, CallResult result,
                        std::string error) {
  const int64_t elapsed_nanos = MonotonicNanos() - pending->start_nanos;
  result.duration_ms = elapsed_nanos / 1'000'000;
  result.arguments = pending->arguments;
  const bool ran = result.outcome == CallOutcome::kOk ||
                   result.outcome == CallOutcome::kToolError ||
                   result.outcome == CallOutcome::kTimedOut;
  const char* outcome = OutcomeName(result.outcome);

  Json record = {
      {"ts_ms", pending->start_ms},
      {"turn", pending->context.turn_id},
      {"conversation", pending->context.conversation.Display()},
      {"user", pending->context.user},
      {"tool", pending->tool},
      {"call_id", pending->call_id},
      {"arguments", pending->arguments_valid_json
                        ? RedactArguments(pending->arguments, pending->redact)
                        : Json{{"_invalid", true}}},
      {"outcome", outcome},
      {"duration_ms", result.duration_ms},
      {"confirmed", pending->confirmed},
  };
  if (result.outcome != CallOutcome::kOk) record["error"] = error;
  store::WriteBatch batch;
  batch.Put(store::keys::Audit(pending->start_ms, pending->context.turn_id, pending->call_id),
            record.dump(-1, ' ', false, Json::error_handler_t::replace));
  committer_.Submit(std::move(batch), nullptr, /*sync=*/false);

  const std::string tool_label = pending->known ? pending->tool : "unknown";
  metrics_
      .GetCounter("parley_tool_calls_total", "Tool calls the model asked for, by outcome",
                  "tool=\"" + tool_label + "\",outcome=\"" + outcome + "\"")
      .Add();
  if (ran) {
    metrics_
        .GetHistogram("parley_tool_seconds", "Time tools took to answer (or time out)",
                      "tool=\"" + tool_label + "\"")
        .ObserveNanos(elapsed_nanos);
  }
  spdlog::info("tool.call tool={} call={} conv={} outcome={} ms={}", tool_label, pending->call_id,
               pending->context.conversation.Display(), outcome, result.duration_ms);

  // Always posted: `done` never runs inside Call, and never under the strand of a late answer.
  asio::post(io_, [pending, result = std::move(result)]() mutable {
    auto done = std::move(pending->done);
    pending->done = nullptr;
    if (!done) return;
    try {
      done(std::move(result));
    } catch (const std::exception& e) {
      spdlog::error("tool.done_threw what={}", e.what());
    } catch (...) {
      spdlog::error("tool.done_threw");
    }
  });
}

}  // namespace parley::tools
