#pragma once
// Helpers for the tools tests: io threads, bounded polling, a scriptable fake tool, a store with
// a committer, and a blocking wrapper around ToolPolicy::Call.

#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <chrono>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "store/committer.h"
#include "store/kv_store.h"
#include "tests/support/io_threads.h"
#include "tests/support/temp_dir.h"
#include "tools/policy.h"
#include "tools/tool.h"

namespace parley::tools::testing {

using parley::testing::IoThreads;
using parley::testing::WaitFor;

// A tool whose behaviour the test sets: answer ok / with an error / never (the done callbacks
// are kept so the test can answer late).
class FakeTool : public Tool {
 public:
  enum class Mode { kOk, kError, kNever, kInvalidUtf8 };
  FakeTool(std::string name, nlohmann::json parameters, boost::asio::io_context& io)
      : name_(std::move(name)), parameters_(std::move(parameters)), io_(io) {}

  const std::string& name() const override { return name_; }
  const std::string& description() const override { return description_; }
  const nlohmann::json& parameters() const override { return parameters_; }
  void Invoke(nlohmann::json arguments, const ToolContext& context, ToolDone done) override {
    invocations++;
    {
      std::lock_guard<std::mutex> lock(mu_);
      last_arguments_ = arguments;
    }
    if (mode == Mode::kNever) {
      std::lock_guard<std::mutex> lock(mu_);
      parked_.push_back(std::move(done));
      return;
    }
    ToolResult result;
    result.ok = mode == Mode::kOk || mode == Mode::kInvalidUtf8;
    result.content = mode == Mode::kOk ? "result for " + arguments.dump() : "backend said no";
    if (mode == Mode::kInvalidUtf8) result.content = "bytes \xFF\xFE end";
    boost::asio::post(io_, [done = std::move(done), result]() { done(result); });
  }
  nlohmann::json last_arguments() {
    std::lock_guard<std::mutex> lock(mu_);
    return last_arguments_;
  }
  // Answers every parked call now (late, after a timeout).
  void AnswerParked() {
    std::vector<ToolDone> parked;
    {
      std::lock_guard<std::mutex> lock(mu_);
      parked.swap(parked_);
    }
    for (auto& done : parked) done(ToolResult{true, "late", false});
  }
  size_t parked() {
    std::lock_guard<std::mutex> lock(mu_);
    return parked_.size();
  }

  std::atomic<Mode> mode{Mode::kOk};
  std::atomic<int> invocations{0};

 private:
  const std::string name_;
  const std::string description_ = "a fake tool";
  const nlohmann::json parameters_;
  boost::asio::io_context& io_;
  std::mutex mu_;
  nlohmann::json last_arguments_;
  std::vector<ToolDone> parked_;
};

// One ToolPolicy::Call, waited for (bounded). Records how often and on which thread done ran.
struct Outcome {
  std::optional<CallResult> result;
  int done_calls = 0;
  bool on_io_thread = false;
};

inline Outcome CallAndWait(ToolPolicy& policy, const IoThreads& io, const llm::ToolCall& call,
                           const ToolContext& context, bool confirmed = false) {
  struct Shared {
    std::mutex mu;
    std::optional<CallResult> result;
    std::atomic<int> calls{0};
    bool on_io = false;
  };
  auto shared = std::make_shared<Shared>();
  const IoThreads* threads = &io;
  policy.Call(call, context, confirmed, [shared, threads](CallResult result) {
    std::lock_guard<std::mutex> lock(shared->mu);
    shared->result = std::move(result);
    shared->on_io = threads->IsIoThread(std::this_thread::get_id());
    shared->calls++;
  });
  WaitFor([&] { return shared->calls.load() > 0; });
  Outcome out;
  std::lock_guard<std::mutex> lock(shared->mu);
  out.result = shared->result;
  out.done_calls = shared->calls.load();
  out.on_io_thread = shared->on_io;
  return out;
}

}  // namespace parley::tools::testing
