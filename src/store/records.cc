#include "store/records.h"

#include <nlohmann/json.hpp>

#include "core/json_write.h"
#include "store/keys.h"

namespace parley::store {

EventDedupe::EventDedupe(KvStore& kv, const Clock& clock, int64_t ttl_ms)
    : kv_(kv), clock_(clock), ttl_ms_(ttl_ms) {}

Status EventDedupe::Claim(const std::string& platform, const std::string& event_id) {
  const std::string key = keys::Dedupe(platform, event_id);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!in_flight_.insert(key).second) {
      return Status::AlreadyExists("event " + event_id + " is being processed");
    }
  }
  Result<std::string> existing = kv_.Get(key);
  if (existing.ok()) {
    int64_t expiry = std::strtoll(existing->c_str(), nullptr, 10);
    if (expiry > clock_.NowMs()) {
      Release(platform, event_id);
      return Status::AlreadyExists("event " + event_id + " was already processed");
    }
  } else if (!existing.status().IsNotFound()) {
    Release(platform, event_id);
    return existing.status();
  }
  return Status::Ok();
}

void EventDedupe::Record(WriteBatch& batch, const std::string& platform,
                         const std::string& event_id) const {
  batch.Put(keys::Dedupe(platform, event_id), std::to_string(clock_.NowMs() + ttl_ms_));
}

void EventDedupe::Release(const std::string& platform, const std::string& event_id) {
  std::lock_guard<std::mutex> lock(mu_);
  in_flight_.erase(keys::Dedupe(platform, event_id));
}

Result<size_t> EventDedupe::SweepExpired() {
  const int64_t now = clock_.NowMs();
  WriteBatch batch;
  Status status = kv_.Scan(keys::kDedupe, [&](std::string_view key, std::string_view value) {
    if (std::strtoll(std::string(value).c_str(), nullptr, 10) <= now) {
      batch.Delete(std::string(key));
    }
    return batch.size() < 100'000;
  });
  if (!status.ok()) return status;
  if (!batch.empty()) {
    status = kv_.Write(batch, false);
    if (!status.ok()) return status;
  }
  return batch.size();
}

std::string Inbox::KeyFor(const InboundMessage& message) {
  return keys::Inbox(message.platform + ":" + message.event_id);
}

void Inbox::Add(WriteBatch& batch, const InboundMessage& message) const {
  batch.Put(KeyFor(message), nlohmann::json(message).dump());
}

void Inbox::Remove(WriteBatch& batch, const InboundMessage& message) const {
  batch.Delete(KeyFor(message));
}

Result<std::vector<InboundMessage>> Inbox::LoadAll() const {
  std::vector<InboundMessage> out;
  Status status = kv_.Scan(keys::kInbox, [&](std::string_view, std::string_view value) {
    nlohmann::json j = nlohmann::json::parse(value, nullptr, false);
    if (j.is_object()) out.push_back(j.get<InboundMessage>());
    return true;
  });
  if (!status.ok()) return status;
  std::stable_sort(out.begin(), out.end(), [](const InboundMessage& a, const InboundMessage& b) {
    return a.timestamp_ms < b.timestamp_ms;
  });
  return out;
}

void Outbox::Put(WriteBatch& batch, const OutboxEntry& e) const {
  std::string value;
  value.reserve(160 + e.payload.size() + e.payload.size() / 8);
  JsonObjectWriter w(value);
  w.Field("id", e.id).Field("platform", e.platform).Field("target", e.target);
  w.Field("payload", e.payload).Field("attempts", e.attempts).Field("created_ms", e.created_ms);
  w.Field("next_attempt_ms", e.next_attempt_ms).Field("last_error", e.last_error);
  w.Finish();
  batch.Put(keys::Outbox(e.platform, e.id), value);
}

void Outbox::Remove(WriteBatch& batch, const std::string& platform, const std::string& id) const {
  batch.Delete(keys::Outbox(platform, id));
}

Result<std::vector<OutboxEntry>> Outbox::Load(const std::string& platform) const {
  std::vector<OutboxEntry> out;
  Status status = kv_.Scan(keys::OutboxPrefix(platform), [&](std::string_view,
                                                             std::string_view value) {
    nlohmann::json j = nlohmann::json::parse(value, nullptr, false);
    if (!j.is_object()) return true;
    OutboxEntry e;
    e.id = j.value("id", "");
    e.platform = j.value("platform", "");
    e.target = j.value("target", "");
    e.payload = j.value("payload", "");
    e.attempts = j.value("attempts", 0);
    e.created_ms = j.value("created_ms", int64_t{0});
    e.next_attempt_ms = j.value("next_attempt_ms", int64_t{0});
    e.last_error = j.value("last_error", "");
    out.push_back(std::move(e));
    return true;
  });
  if (!status.ok()) return status;
  return out;
}

Result<size_t> Outbox::Count(const std::string& platform) const {
  size_t n = 0;
  Status status = kv_.Scan(keys::OutboxPrefix(platform), [&](std::string_view, std::string_view) {
    ++n;
    return true;
  });
  if (!status.ok()) return status;
  return n;
}

void RouteBook::Set(WriteBatch& batch, const ConversationKey& conv,
                    const std::string& route) const {
  batch.Put(keys::Route(conv), route);
}

Result<std::string> RouteBook::Get(const ConversationKey& conv) const {
  return kv_.Get(keys::Route(conv));
}

}  // namespace parley::store
