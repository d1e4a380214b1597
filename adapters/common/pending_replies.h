#pragma once
// Requests waiting on the same connection for their answer (webhook sync mode, the local API):
// the adapter parks the HTTP responder under the message's event id, and the reply that answers
// that event completes it.
// Thread-safety: thread-safe.

#include <functional>
#include <mutex>
#include <string>
#include <unordered_map>

#include "core/message.h"

namespace parley::adapters {

template <typename Waiter>
class PendingReplies {
 public:
  // False when a request with this event id is already waiting.
  bool Park(const std::string& event_id, Waiter waiter) {
    std::lock_guard<std::mutex> lock(mu_);
    return waiting_.emplace(event_id, std::move(waiter)).second;
  }
  // Removes and returns the waiter for event_id; false when none waits.
  bool Take(const std::string& event_id, Waiter& out) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = waiting_.find(event_id);
    if (it == waiting_.end()) return false;
    out = std::move(it->second);
    waiting_.erase(it);
    return true;
  }
  size_t size() const {
    std::lock_guard<std::mutex> lock(mu_);
    return waiting_.size();
  }

 private:
  mutable std::mutex mu_;
  std::unordered_map<std::string, Waiter> waiting_;
};

}  // namespace parley::adapters
