#pragma once
// The router's side of an adapter test: records every message that arrives and answers intake
// as told (OK unless AnswerNextWith says otherwise). Thread-safety: thread-safe.

#include <functional>
#include <mutex>
#include <vector>

#include "core/channel.h"
#include "core/message.h"

namespace parley::testing {

class RecordingInboundSink final : public InboundSink {
 public:
  void OnInbound(InboundMessage message, IntakeOptions,
                 std::function<void(IntakeResult)> accepted) override {
    IntakeResult result;
    {
      std::lock_guard<std::mutex> lock(mu_);
      messages_.push_back(message);
      result = next_result_;
    }
    accepted(result);
  }
  void AnswerNextWith(IntakeResult result) {
    std::lock_guard<std::mutex> lock(mu_);
    next_result_ = std::move(result);
  }
  size_t count() {
    std::lock_guard<std::mutex> lock(mu_);
    return messages_.size();
  }
  InboundMessage message(size_t i) {
    std::lock_guard<std::mutex> lock(mu_);
    return messages_.at(i);
  }

 private:
  std::mutex mu_;
  std::vector<InboundMessage> messages_;
  IntakeResult next_result_;
};

}  // namespace parley::testing
