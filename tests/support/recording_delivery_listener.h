#pragma once
// A DeliveryListener for adapter tests: records every receipt and, with kv set, whether the
// message was still in the platform's outbox when it was reported (adapters must report before
// they forget a message, so that a listener that stores the receipt keeps it across a crash).
// Thread-safety: thread-safe.

#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "core/channel.h"
#include "store/kv_store.h"
#include "store/records.h"

namespace parley::testing {

class RecordingDeliveryListener final : public DeliveryListener {
 public:
  explicit RecordingDeliveryListener(std::string platform) : platform_(std::move(platform)) {}

  void OnDelivered(const DeliveryReceipt& receipt) override {
    bool queued = false;
    if (kv != nullptr) {
      auto entries = store::Outbox(*kv).Load(platform_);
      if (entries.ok()) {
        for (const store::OutboxEntry& e : *entries) queued = queued || e.id == receipt.message_id;
      }
    }
    std::lock_guard<std::mutex> lock(mu_);
    all_.push_back(receipt);
    in_outbox_.push_back(queued);
  }
  std::vector<DeliveryReceipt> all() const {
    std::lock_guard<std::mutex> lock(mu_);
    return all_;
  }
  // Per receipt, in order: the message was in the outbox when reported (false without kv).
  std::vector<bool> in_outbox() const {
    std::lock_guard<std::mutex> lock(mu_);
    return in_outbox_;
  }

  store::KvStore* kv = nullptr;  // set before the adapter starts

 private:
  const std::string platform_;
  mutable std::mutex mu_;
  std::vector<DeliveryReceipt> all_;
  std::vector<bool> in_outbox_;
};

}  // namespace parley::testing
