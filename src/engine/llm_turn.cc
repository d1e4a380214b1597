#include "engine/llm_turn.h"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <mutex>
#include <optional>

#include <boost/asio/steady_timer.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "core/utf8.h"
#include "llm/prompt.h"
#include "store/keys.h"
#include "tools/policy.h"
#include "tools/registry.h"

namespace parley::engine {

const char kLlmFallbackNote[] =
    "_The language model is not available right now, so this answer comes straight from the "
    "knowledge base._";
const char kUnsupportedNote[] =
    "_Note: this answer is not backed by the knowledge base; please double-check it._";

namespace {

constexpr int64_t kPartialIntervalNanos = 100'000'000;  // at most ~10 streaming updates a second
constexpr size_t kSummaryLineChars = 200;

std::string Lower(std::string_view s) {
  std::string out;
  for (char c : s) out += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string FirstChars(const std::string& text, size_t n) {
  std::string flat;
  for (char c : text) flat += (c == '\n' || c == '\r' || c == '\t') ? ' ' : c;
  if (flat.size() <= n) return flat;
  return std::string(Utf8Prefix(flat, n)) + "…";
}

struct Summary {
  std::string text;
  int64_t through_ms = 0;
};

struct PendingConfirm {
  llm::ToolCall call;
  std::string content;  // the assistant's text alongside the call
  int64_t expires_ms = 0;
};

std::optional<Summary> LoadSummary(store::KvStore& kv, const ConversationKey& conv) {
  auto raw = kv.Get(store::keys::Summary(conv));
  if (!raw.ok()) return std::nullopt;
  nlohmann::json j = nlohmann::json::parse(*raw, nullptr, false);
  if (!j.is_object()) return std::nullopt;
  Summary s;
  s.text = j.value("text", "");
  s.through_ms = j.value("through_ms", int64_t{0});
  return s;
}

std::optional<PendingConfirm> LoadPending(store::KvStore& kv, const ConversationKey& conv) {
  auto raw = kv.Get(store::keys::Confirm(conv));
  if (!raw.ok()) return std::nullopt;
  nlohmann::json j = nlohmann::json::parse(*raw, nullptr, false);
  if (!j.is_object() || !j.contains("call") || !j["call"].is_object()) return std::nullopt;
  PendingConfirm p;
  p.call.id = j["call"].value("id", "");
  p.call.name = j["call"].value("name", "");
  p.call.arguments = j["call"].value("arguments", "");
  p.content = j.value("content", "");
  p.expires_ms = j.value("expires_ms", int64_t{0});
  return p;
}

std::string CodeSpan(const std::string& text) {
  std::string clean;
  for (char c : text) clean += (c == '`' || c == '\n' || c == '\r') ? ' ' : c;
  return "`" + FirstChars(clean, 300) + "`";
}

class LlmTurn : public std::enable_shared_from_this<LlmTurn> {
 public:
  LlmTurn(Engine& engine, const LlmDeps& deps, const InboundMessage& message, std::string turn_id,
          PartialCallback on_partial, TurnCallback done)
      : engine_(engine),
        deps_(deps),
        message_(message),
        turn_id_(std::move(turn_id)),
        on_partial_(std::move(on_partial)),
        done_(std::move(done)),
        timer_(*deps.io) {
    const ConversationKey conv = message_.conversation();
    reply_ = engine_.NewReply(message_, turn_id_);
    context_.turn_id = turn_id_;
    context_.conversation = conv;
    context_.user = message_.user;
    context_.access_tags = engine_.AccessTagsFor(conv);
  }

  void Start() {
    std::optional<TurnOutput> out;
    {
      std::lock_guard<std::mutex> lock(mu_);
      out = Prepare();
      if (!out) ArmTimer();
    }
    if (out) Complete(std::move(*out));
  }

 private:
  // ---- preparation: memory, summary, pending confirmation, retrieval, prompt ----

  std::optional<TurnOutput> Prepare() {
    const ConversationKey conv = reply_.conversation;
    const config::EngineConfig& options = engine_.options();
    const size_t window = static_cast<size_t>(options.memory_turns);
    auto recent = engine_.memory().Recent(conv, window + 2,
                                          static_cast<size_t>(options.memory_chars) * 2 + 1);
    if (!recent.ok()) return Error("memory", recent.status());

    std::vector<store::Turn> overflow;
    std::vector<store::Turn> history;
    const size_t split = recent->size() > window ? recent->size() - window : 0;
    for (size_t i = 0; i < recent->size(); ++i) {
      (i < split ? overflow : history).push_back((*recent)[i]);
    }
    BuildSummary(overflow);

    // The two latest earlier questions: the retrieval context, kept for a fallback's retrieval.
    int questions = 0;
    for (auto it = history.rbegin(); it != history.rend() && questions < 2; ++it) {
      if (it->role != "user") continue;
      retrieval_context_.insert(retrieval_context_.begin(), *it);
      ++questions;
    }
    for (const store::Turn& turn : history) prompt_history_.push_back({turn.role, turn.text});
    Status built = BuildMessages();
    if (!built.ok()) return Error("retrieval", built);

    // A tool call that waited for this user's confirmation.
    std::optional<PendingConfirm> pending = LoadPending(*deps_.kv, conv);
    if (pending) {
      writes_.Delete(store::keys::Confirm(conv));
      const int answer = ConfirmationAnswer(message_.text);
      if (pending->expires_ms < engine_.clock().NowMs() || answer == 0 ||
          deps_.policy == nullptr) {
        spdlog::info("tool.confirm_dropped turn={} conv={} tool={}", turn_id_, conv.Display(),
                     pending->call.name);
      } else if (answer > 0) {
        RunConfirmed(*pending);
        return std::nullopt;
      } else {
        exchange_.push_back(llm::ChatMessage{"assistant", pending->content, {pending->call}, {}});
        exchange_.push_back(llm::ChatMessage{
            "tool", "The user declined: the tool was not run.", {}, pending->call.id});
      }
    }
    return CallModel();
  }

  // Retrieval and the grounded prompt (prompt_). The first call fixes the sources and their
  // confidence; later calls (a tool round after the messages were handed to the client) rebuild
  // the same messages: the request's copy is the only one kept while the model is answering,
  // since with thousands of turns waiting on the model, per-turn copies are what the memory is
  // made of. Retrieval is deterministic, so the rebuilt sources are the first ones unless the
  // index was rebuilt meanwhile; then the new sources replace them.
  Status BuildMessages() {
    const config::EngineConfig& options = engine_.options();
    const size_t max_sources =
        std::max<size_t>(static_cast<size_t>(deps_.llm.max_sources),
                         static_cast<size_t>(options.max_passages));
    auto passages = engine_.Retrieve(message_, retrieval_context_, max_sources);
    if (!passages.ok()) return passages.status();

    llm::PromptInput input;
    input.system_prompt = deps_.llm.system_prompt;
    input.summary = summary_text_;
    input.history = prompt_history_;
    for (size_t i = 0; i < passages->size() && i < static_cast<size_t>(deps_.llm.max_sources);
         ++i) {
      input.sources.push_back({(*passages)[i].chunk.ToCitation(), (*passages)[i].chunk.text});
    }
    input.question = message_.text;
    input.context_tokens = deps_.llm.context_tokens;
    llm::Prompt built = llm::BuildPrompt(input);
    bool same = built.sources.size() == prompt_.sources.size();
    for (size_t i = 0; same && i < built.sources.size(); ++i) {
      same = built.sources[i].citation == prompt_.sources[i].citation;
    }
    if (!same) {
      if (!prompt_.sources.empty()) {
        spdlog::info("llm.prompt_sources_changed turn={} (index rebuilt during the turn)",
                     turn_id_);
      }
      source_confidence_.clear();
      for (size_t i = 0; i < built.sources.size(); ++i) {
        source_confidence_.push_back((*passages)[i].confidence);
        // Only the citation is needed from here on: the text is in the messages.
        std::string().swap(built.sources[i].text);
      }
      prompt_.sources = std::move(built.sources);
    }
    prompt_.messages = std::move(built.messages);
    prompt_.estimated_tokens = built.estimated_tokens;
    prompt_.dropped_turns = built.dropped_turns;
    prompt_.dropped_sources = built.dropped_sources;
    return Status::Ok();
  }

  void BuildSummary(const std::vector<store::Turn>& overflow) {
    if (deps_.llm.summary_chars <= 0) return;
    std::optional<Summary> stored = LoadSummary(*deps_.kv, reply_.conversation);
    Summary summary = stored ? *stored : Summary{};
    bool changed = false;
    for (const store::Turn& turn : overflow) {
      if (turn.ts_ms <= summary.through_ms) continue;
      const std::string who = turn.role == "user" ? "User" : "Assistant";
      summary.text += (summary.text.empty() ? "" : "\n") + who + ": " +
                      FirstChars(turn.text, kSummaryLineChars);
      changed = true;
    }
    for (const store::Turn& turn : overflow) {
      summary.through_ms = std::max(summary.through_ms, turn.ts_ms);
    }
    const size_t limit = static_cast<size_t>(deps_.llm.summary_chars);
    while (summary.text.size() > limit) {
      const size_t nl = summary.text.find('\n');
      if (nl == std::string::npos) {
        summary.text = FirstChars(summary.text, limit);
        break;
      }
      summary.text.erase(0, nl + 1);
    }
    summary_text_ = summary.text;
    if (changed) {
      nlohmann::json j = {{"text", summary.text}, {"through_ms", summary.through_ms}};
      writes_.Put(store::keys::Summary(reply_.conversation), j.dump());
    }
  }

  // ---- the model ----

  // Starts the next model call; returns the turn's output instead when it cannot be made.
  [[nodiscard]] std::optional<TurnOutput> CallModel() {
    if (prompt_.messages.empty()) {
      Status rebuilt = BuildMessages();
      if (!rebuilt.ok()) return Fallback("prompt: " + rebuilt.ToString());
    }
    llm::ChatRequest request;
    request.messages = std::move(prompt_.messages);
    prompt_.messages.clear();
    request.messages.insert(request.messages.end(), exchange_.begin(), exchange_.end());
    request.stream = deps_.llm.stream;
    if (deps_.registry != nullptr && deps_.policy != nullptr && deps_.tools.enabled &&
        round_ < deps_.llm.max_tool_rounds) {
      request.tools = deps_.registry->Offered(context_);
    }
    round_text_.clear();
    auto self = shared_from_this();
    call_ = deps_.client->Complete(
        std::move(request), [self](std::string_view delta) { self->OnDelta(delta); },
        [self](Result<llm::ChatResult> result) { self->OnModelDone(std::move(result)); });
    return std::nullopt;
  }

  void OnDelta(std::string_view delta) {
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_ || !on_partial_) return;
    round_text_.append(delta.data(), delta.size());
    const int64_t now = MonotonicNanos();
    if (last_partial_nanos_ != 0 && now - last_partial_nanos_ < kPartialIntervalNanos) return;
    last_partial_nanos_ = now;
    OutboundMessage partial = reply_;
    const std::string text = streamed_prefix_ + round_text_;
    partial.text = llm::RenumberCitations(
        text, llm::CitedSources(text, prompt_.sources.size()), prompt_.sources.size());
    on_partial_(partial);
  }

  void OnModelDone(Result<llm::ChatResult> result) {
    std::optional<TurnOutput> out;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (finished_) return;
      if (!result.ok()) {
        out = Fallback(result.status().ToString());
      } else if (!result->tool_calls.empty() && deps_.policy != nullptr &&
                 round_ < deps_.llm.max_tool_rounds) {
        RunTools(std::move(result).value());
      } else {
        out = Answer(result->content);
      }
    }
    if (out) Complete(std::move(*out));
  }

  // ---- tools ----

  void RunTools(llm::ChatResult result) {
    if (!result.content.empty()) streamed_prefix_ += result.content + "\n\n";
    exchange_.push_back(llm::ChatMessage{"assistant", result.content, result.tool_calls, {}});
    calls_ = result.tool_calls;
    assistant_content_ = result.content;
    results_.assign(calls_.size(), tools::CallResult{});
    auto remaining = std::make_shared<std::atomic<size_t>>(calls_.size());
    auto self = shared_from_this();
    for (size_t i = 0; i < calls_.size(); ++i) {
      deps_.policy->Call(calls_[i], context_, /*confirmed=*/false,
                         [self, i, remaining](tools::CallResult r) {
                           self->OnToolDone(i, std::move(r), *remaining);
                         });
    }
  }

  void RunConfirmed(const PendingConfirm& pending) {
    exchange_.push_back(llm::ChatMessage{"assistant", pending.content, {pending.call}, {}});
    calls_ = {pending.call};
    assistant_content_ = pending.content;
    results_.assign(1, tools::CallResult{});
    auto remaining = std::make_shared<std::atomic<size_t>>(1);
    auto self = shared_from_this();
    deps_.policy->Call(pending.call, context_, /*confirmed=*/true,
                       [self, remaining](tools::CallResult r) {
                         self->OnToolDone(0, std::move(r), *remaining);
                       });
  }

  void OnToolDone(size_t index, tools::CallResult result, std::atomic<size_t>& remaining) {
    std::optional<TurnOutput> out;
    {
      std::lock_guard<std::mutex> lock(mu_);
      results_[index] = std::move(result);
      if (remaining.fetch_sub(1) != 1) return;
      if (finished_) return;
      std::optional<size_t> needs_confirmation;
      for (size_t i = 0; i < calls_.size(); ++i) {
        const tools::CallResult& r = results_[i];
        exchange_.push_back(llm::ChatMessage{"tool", r.content, {}, calls_[i].id});
        if (r.escalate) {
          escalated_ = true;
          if (r.arguments.is_object()) {
            escalation_reason_ = r.arguments.value("reason", escalation_reason_);
            escalation_topic_ = r.arguments.value("topic", escalation_topic_);
          }
        }
        if (r.outcome == tools::CallOutcome::kNeedsConfirmation && !needs_confirmation) {
          needs_confirmation = i;
        }
      }
      if (needs_confirmation) {
        out = AskConfirmation(calls_[*needs_confirmation]);
      } else {
        ++round_;
        out = CallModel();
      }
    }
    if (out) Complete(std::move(*out));
  }

  TurnOutput AskConfirmation(const llm::ToolCall& call) {
    PendingConfirm pending;
    pending.call = call;
    pending.content = assistant_content_;
    pending.expires_ms = engine_.clock().NowMs() + deps_.tools.confirm_timeout_ms;
    nlohmann::json j = {
        {"call", {{"id", call.id}, {"name", call.name}, {"arguments", call.arguments}}},
        {"content", pending.content},
        {"expires_ms", pending.expires_ms},
        {"turn", turn_id_}};
    writes_.Put(store::keys::Confirm(reply_.conversation), j.dump());
    std::string text = streamed_prefix_;
    text += "Before I run **" + call.name + "** with " + CodeSpan(call.arguments) +
            ", please confirm: reply **yes** to go ahead or **no** to cancel.";
    TurnOutput out = Output(text, {}, 0.0, "confirm");
    return out;
  }

  // ---- endings ----

  TurnOutput Answer(const std::string& model_text) {
    std::string text = model_text;
    if (text.find_first_not_of(" \t\r\n") == std::string::npos) {
      return Fallback("the model returned no text");
    }
    const size_t n = prompt_.sources.size();
    const std::vector<size_t> cited = llm::CitedSources(text, n);
    text = llm::RenumberCitations(text, cited, n);
    std::vector<Citation> citations;
    double confidence = 0;
    for (size_t number : cited) {
      citations.push_back(prompt_.sources[number - 1].citation);
      confidence = std::max(confidence, source_confidence_[number - 1]);
    }
    if (cited.empty()) {
      if (deps_.llm.unsupported == "replace") {
        parley::engine::Answer extractive = ExtractiveAnswer();
        return Output(extractive.text, extractive.citations, extractive.confidence,
                      extractive.answered ? "answered" : "no_answer");
      }
      if (deps_.llm.unsupported == "flag") text += "\n\n" + std::string(kUnsupportedNote);
    }
    return Output(streamed_prefix_ + text, std::move(citations), confidence, "answered");
  }

  TurnOutput Fallback(const std::string& why) {
    spdlog::warn("llm.fallback turn={} conv={} reason=\"{}\"", turn_id_,
                 reply_.conversation.Display(), why);
    engine_.metrics()
        .GetCounter("parley_llm_fallbacks_total",
                    "Turns answered extractively because the LLM could not answer")
        .Add();
    parley::engine::Answer extractive = ExtractiveAnswer();
    return Output(std::string(kLlmFallbackNote) + "\n\n" + extractive.text,
                  extractive.citations, extractive.confidence, "fallback");
  }

  // The embedded responder's answer, over passages retrieved again (the turn does not keep them
  // while it waits on the model).
  parley::engine::Answer ExtractiveAnswer() {
    auto passages = engine_.Retrieve(message_, retrieval_context_,
                                     static_cast<size_t>(engine_.options().max_passages));
    if (!passages.ok()) {
      spdlog::error("turn.error turn={} conv={} stage=fallback_retrieval error=\"{}\"", turn_id_,
                    reply_.conversation.Display(), passages.status().ToString());
      return engine_.Extractive(message_.text, {});
    }
    return engine_.Extractive(message_.text, *passages);
  }

  std::optional<TurnOutput> Error(const char* stage, const Status& status) {
    spdlog::error("turn.error turn={} conv={} stage={} error=\"{}\"", turn_id_,
                  reply_.conversation.Display(), stage, status.ToString());
    TurnOutput out;
    out.reply = reply_;
    out.reply.text = kErrorText;
    out.outcome = "error";
    return out;
  }

  TurnOutput Output(std::string text, std::vector<Citation> citations, double confidence,
                    const std::string& outcome) {
    TurnOutput out;
    out.reply = reply_;
    out.reply.text = std::move(text);
    out.reply.citations = std::move(citations);
    out.reply.confidence = confidence;
    out.reply.escalated = escalated_;
    out.escalation_reason = escalation_reason_;
    out.escalation_topic = escalation_topic_;
    out.outcome = outcome;
    out.writes = std::move(writes_);
    writes_ = store::WriteBatch();
    engine_.RecordTurn(out.writes, message_, out.reply);
    return out;
  }

  void ArmTimer() {
    timer_.expires_after(std::chrono::milliseconds(deps_.llm.turn_timeout_ms));
    auto weak = weak_from_this();
    timer_.async_wait([weak](const boost::system::error_code& ec) {
      if (ec) return;
      auto self = weak.lock();
      if (!self) return;
      std::optional<TurnOutput> out;
      std::shared_ptr<llm::LlmCall> abandoned;
      {
        std::lock_guard<std::mutex> lock(self->mu_);
        if (self->finished_) return;
        out = self->Fallback("turn time limit");
        abandoned = std::move(self->call_);
      }
      // Outside mu_: the call's callbacks take its lock, then ours. Tool calls still running
      // finish on their own (each has its own timeout); their results are dropped.
      if (abandoned) abandoned->Cancel();
      self->Complete(std::move(*out));
    });
  }

  // Called without mu_ held, once.
  void Complete(TurnOutput out) {
    TurnCallback done;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (finished_ && !done_) return;
      finished_ = true;
      done = std::move(done_);
      done_ = nullptr;
      timer_.cancel();
      call_.reset();
    }
    if (done) done(std::move(out));
  }

  Engine& engine_;
  const LlmDeps& deps_;
  const InboundMessage message_;
  const std::string turn_id_;
  PartialCallback on_partial_;
  TurnCallback done_;
  boost::asio::steady_timer timer_;

  std::mutex mu_;
  bool finished_ = false;
  OutboundMessage reply_;
  tools::ToolContext context_;
  store::WriteBatch writes_;  // summary and confirmation state, then memory
  std::string summary_text_;
  std::vector<store::Turn> retrieval_context_;  // earlier questions for retrieval
  std::vector<llm::PromptTurn> prompt_history_;  // the memory turns in the prompt
  // Sources without their text; messages only until they are handed to the model call.
  llm::Prompt prompt_;
  std::vector<double> source_confidence_;
  std::shared_ptr<llm::LlmCall> call_;  // the latest model call
  std::vector<llm::ChatMessage> exchange_;  // tool rounds after the prompt
  int round_ = 0;
  std::string streamed_prefix_;  // text of earlier rounds
  std::string round_text_;
  int64_t last_partial_nanos_ = 0;
  bool escalated_ = false;
  std::string escalation_reason_;
  std::string escalation_topic_;
  std::vector<llm::ToolCall> calls_;
  std::string assistant_content_;
  std::vector<tools::CallResult> results_;
};

}  // namespace

int ConfirmationAnswer(const std::string& text) {
  std::string t = Lower(text);
  // Trim spaces and trailing punctuation.
  while (!t.empty() && (std::isspace(static_cast<unsigned char>(t.back())) ||
                        t.back() == '.' || t.back() == '!' || t.back() == ',')) {
    t.pop_back();
  }
  size_t start = t.find_first_not_of(" \t\r\n");
  t = start == std::string::npos ? "" : t.substr(start);
  static const char* const kYes[] = {"yes", "y", "yeah", "yep", "sure", "ok", "okay",
                                     "confirm", "confirmed", "go ahead", "do it", "please do",
                                     "yes please", "yes, please", "proceed"};
  static const char* const kNo[] = {"no", "n", "nope", "cancel", "stop", "don't", "do not",
                                    "no thanks", "no, thanks", "abort"};
  for (const char* yes : kYes) {
    if (t == yes) return 1;
  }
  for (const char* no : kNo) {
    if (t == no) return -1;
  }
  return 0;
}

void StartLlmTurn(Engine& engine, const LlmDeps& deps, const InboundMessage& message,
                  const std::string& turn_id, PartialCallback on_partial, TurnCallback done) {
  auto turn = std::make_shared<LlmTurn>(engine, deps, message, turn_id, std::move(on_partial),
                                        std::move(done));
  turn->Start();
}

}  // namespace parley::engine
