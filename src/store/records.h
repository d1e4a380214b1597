#pragma once
// Small durable records on the store: event de-duplication, the inbox of accepted messages not yet
// answered, the outbox of deliveries owed to platforms, and each conversation's reply route.
// Thread-safety: all classes are thread-safe.

#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_set>
#include <vector>

#include "core/clock.h"
#include "core/message.h"
#include "store/kv_store.h"

namespace parley::store {

// Remembers platform event ids for ttl so a redelivered event is answered once.
class EventDedupe {
 public:
  EventDedupe(KvStore& kv, const Clock& clock, int64_t ttl_ms);

  // Claims the event for processing. AlreadyExists when it was recorded before (and has not
  // expired) or is being processed right now.
  Status Claim(const std::string& platform, const std::string& event_id);
  // Adds the durable mark to batch; commit it with the turn's other writes.
  void Record(WriteBatch& batch, const std::string& platform, const std::string& event_id) const;
  // Ends the in-memory claim: after the batch with Record is durable, or to give up on the event
  // (then a redelivery may process it again).
  void Release(const std::string& platform, const std::string& event_id);
  // Deletes expired marks. Returns how many.
  Result<size_t> SweepExpired();

 private:
  KvStore& kv_;
  const Clock& clock_;
  int64_t ttl_ms_;
  std::mutex mu_;
  std::unordered_set<std::string> in_flight_;
};

// Accepted inbound messages whose turn has not completed. Written (synced) before a platform is
// told "accepted"; removed in the same batch as the turn's answer; replayed at start-up.
class Inbox {
 public:
  explicit Inbox(KvStore& kv) : kv_(kv) {}
  static std::string KeyFor(const InboundMessage& message);
  void Add(WriteBatch& batch, const InboundMessage& message) const;
  void Remove(WriteBatch& batch, const InboundMessage& message) const;
  Result<std::vector<InboundMessage>> LoadAll() const;

 private:
  KvStore& kv_;
};

// A delivery owed to a platform: written before the first attempt, updated per attempt, removed
// once delivered (or given up).
struct OutboxEntry {
  std::string id;        // the OutboundMessage id; the platform's idempotency key
  std::string platform;
  std::string target;    // platform-specific destination (e.g. a URL)
  std::string payload;   // platform-specific body
  int attempts = 0;
  int64_t created_ms = 0;
  int64_t next_attempt_ms = 0;
  std::string last_error;
};

class Outbox {
 public:
  explicit Outbox(KvStore& kv) : kv_(kv) {}
  void Put(WriteBatch& batch, const OutboxEntry& entry) const;  // add or update
  void Remove(WriteBatch& batch, const std::string& platform, const std::string& id) const;
  Result<std::vector<OutboxEntry>> Load(const std::string& platform) const;
  Result<size_t> Count(const std::string& platform) const;

 private:
  KvStore& kv_;
};

// The latest reply route per conversation (e.g. the webhook's most recent reply_url), so the bot
// can speak first in a conversation.
class RouteBook {
 public:
  explicit RouteBook(KvStore& kv) : kv_(kv) {}
  void Set(WriteBatch& batch, const ConversationKey& conv, const std::string& route) const;
  // NotFound when the conversation has none.
  Result<std::string> Get(const ConversationKey& conv) const;

 private:
  KvStore& kv_;
};

}  // namespace parley::store
