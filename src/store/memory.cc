#include "store/memory.h"

#include <algorithm>
#include <atomic>
#include <cinttypes>
#include <cstdio>
#include <iterator>
#include <set>

#include <nlohmann/json.hpp>

#include "core/json_write.h"
#include "store/keys.h"

namespace parley::store {
namespace {

std::atomic<uint64_t> g_sequence{0};

std::string TurnKey(const ConversationKey& conv, int64_t ts_ms) {
  char suffix[48];
  std::snprintf(suffix, sizeof(suffix), "%016" PRId64 "-%012" PRIx64, ts_ms,
                static_cast<uint64_t>(g_sequence.fetch_add(1) & 0xffffffffffffULL));
  return keys::MemoryPrefix(conv) + suffix;
}

// The timestamp embedded in a turn key (the 16 digits after the last '/').
int64_t KeyTimestamp(std::string_view key) {
  size_t slash = key.rfind('/');
  if (slash == std::string_view::npos || key.size() < slash + 17) return 0;
  int64_t ts = 0;
  for (size_t i = slash + 1; i < slash + 17; ++i) {
    char c = key[i];
    if (c < '0' || c > '9') return 0;
    ts = ts * 10 + (c - '0');
  }
  return ts;
}

bool ParseTurn(std::string_view value, Turn& turn) {
  nlohmann::json j = nlohmann::json::parse(value, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return false;
  turn.role = j.value("role", "");
  turn.user = j.value("user", "");
  turn.text = j.value("text", "");
  turn.turn_id = j.value("turn_id", "");
  turn.ts_ms = j.value("ts_ms", int64_t{0});
  if (j.contains("citations") && j["citations"].is_array()) {
    turn.citations = j["citations"].get<std::vector<Citation>>();
  }
  return true;
}

}  // namespace

ConversationMemory::ConversationMemory(KvStore& kv, const Clock& clock, int retention_days,
                                       MemoryCacheOptions cache)
    : kv_(kv),
      clock_(clock),
      retention_ms_(int64_t{retention_days} * 86'400'000),
      hits_(cache.hits),
      misses_(cache.misses),
      cache_(cache.max_bytes) {}

int64_t ConversationMemory::CutoffMs() const {
  return retention_ms_ > 0 ? clock_.NowMs() - retention_ms_ : 0;
}

void ConversationMemory::Append(WriteBatch& batch, const ConversationKey& conv,
                                const Turn& turn) const {
  std::string value;
  value.reserve(96 + turn.text.size() + turn.citations.size() * 128);
  JsonObjectWriter w(value);
  w.Field("role", turn.role).Field("user", turn.user).Field("text", turn.text);
  w.Field("turn_id", turn.turn_id).Field("ts_ms", turn.ts_ms);
  if (!turn.citations.empty()) AppendJsonArray(w.Key("citations"), turn.citations);
  w.Finish();
  batch.Put(TurnKey(conv, turn.ts_ms), value);
  if (turn.role == "user" && !turn.user.empty()) {
    batch.Put(keys::UserPrefix(conv.platform, turn.user) + conv.Encode(), "");
  }
  std::string encoded = conv.Encode();
  std::lock_guard<std::mutex> lock(mu_);
  CachedTurns* found = cache_.Find(encoded);
  if (found == nullptr) return;
  CachedTurns cached = std::move(*found);
  cached.turns.push_back(turn);
  if (cached.turns.size() > kCachedTurns) {
    cached.turns.erase(cached.turns.begin());
    cached.complete = false;
  }
  CacheLocked(std::move(encoded), std::move(cached));
}

void ConversationMemory::CacheLocked(std::string encoded, CachedTurns cached) const {
  const size_t bytes = ApproxBytes(cached);
  cache_.Put(std::move(encoded), std::move(cached), bytes);
}

size_t ConversationMemory::ApproxBytes(const Turn& turn) {
  size_t bytes = sizeof(Turn) + turn.text.size() + turn.user.size() + turn.turn_id.size();
  for (const Citation& c : turn.citations) {
    bytes += sizeof(Citation) + c.title.size() + c.source.size() + c.section.size() + c.url.size();
  }
  return bytes;
}

size_t ConversationMemory::ApproxBytes(const CachedTurns& cached) {
  size_t bytes = (cached.turns.capacity() - cached.turns.size()) * sizeof(Turn);
  for (const Turn& t : cached.turns) bytes += ApproxBytes(t);
  return bytes;
}

void ConversationMemory::Invalidate(const ConversationKey& conv) {
  std::lock_guard<std::mutex> lock(mu_);
  cache_.Erase(conv.Encode());
}

std::vector<Turn> ConversationMemory::Select(const std::vector<Turn>& turns, size_t max_turns,
                                             size_t max_chars) const {
  std::vector<Turn> out;
  size_t chars = 0;
  const int64_t cutoff = CutoffMs();
  for (auto it = turns.rbegin(); it != turns.rend() && out.size() < max_turns; ++it) {
    if (it->ts_ms < cutoff) break;
    if (!out.empty() && chars + it->text.size() > max_chars) break;
    chars += it->text.size();
    out.push_back(*it);
  }
  std::reverse(out.begin(), out.end());
  return out;
}

Result<std::vector<Turn>> ConversationMemory::Recent(const ConversationKey& conv,
                                                     size_t max_turns, size_t max_chars) const {
  const std::string encoded = conv.Encode();
  {
    std::lock_guard<std::mutex> lock(mu_);
    const CachedTurns* cached = cache_.Find(encoded);
    if (cached != nullptr && (cached->complete || cached->turns.size() >= max_turns)) {
      if (hits_ != nullptr) hits_->Add();
      return Select(cached->turns, max_turns, max_chars);
    }
  }
  if (misses_ != nullptr) misses_->Add();
  // Read the newest turns (at least as many as the cache keeps), newest first.
  const size_t wanted = std::max(max_turns, kCachedTurns);
  std::vector<Turn> newest_first;
  const int64_t cutoff = CutoffMs();
  bool complete = true;
  Status status = kv_.ScanReverse(keys::MemoryPrefix(conv), [&](std::string_view key,
                                                                std::string_view value) {
    if (newest_first.size() >= wanted) {
      complete = false;
      return false;
    }
    if (KeyTimestamp(key) < cutoff) return false;  // older keys are older still
    Turn turn;
    if (!ParseTurn(value, turn)) return true;  // skip a damaged record rather than fail the turn
    newest_first.push_back(std::move(turn));
    return true;
  });
  if (!status.ok()) return status;
  // Oldest first; the cache keeps at most kCachedTurns of them.
  std::vector<Turn> turns(std::make_move_iterator(newest_first.rbegin()),
                          std::make_move_iterator(newest_first.rend()));
  std::vector<Turn> selected = Select(turns, max_turns, max_chars);
  if (turns.size() > kCachedTurns) {
    turns.erase(turns.begin(), turns.end() - kCachedTurns);
    complete = false;
  }
  std::lock_guard<std::mutex> lock(mu_);
  CacheLocked(encoded, CachedTurns{std::move(turns), complete});
  return selected;
}

void ConversationMemory::NoteNew(const ConversationKey& conv) const {
  std::string encoded = conv.Encode();
  std::lock_guard<std::mutex> lock(mu_);
  if (cache_.Find(encoded) != nullptr) return;
  CacheLocked(std::move(encoded), CachedTurns{{}, /*complete=*/true});
}

Result<size_t> ConversationMemory::Forget(const ConversationKey& conv) {
  WriteBatch batch;
  Status status = kv_.Scan(keys::MemoryPrefix(conv), [&](std::string_view key, std::string_view) {
    batch.Delete(std::string(key));
    return true;
  });
  if (!status.ok()) return status;
  size_t removed = batch.size();
  batch.Delete(keys::Route(conv));
  Invalidate(conv);
  status = kv_.Write(batch, /*sync=*/true);
  Invalidate(conv);  // a turn appended meanwhile must be re-read too
  if (!status.ok()) return status;
  return removed;
}

Result<size_t> ConversationMemory::ForgetUser(const std::string& platform,
                                              const std::string& user) {
  const std::string user_prefix = keys::UserPrefix(platform, user);
  std::vector<std::string> conversations;
  WriteBatch batch;
  Status status = kv_.Scan(user_prefix, [&](std::string_view key, std::string_view) {
    conversations.emplace_back(key.substr(user_prefix.size()));
    batch.Delete(std::string(key));
    return true;
  });
  if (!status.ok()) return status;
  size_t removed = 0;
  for (const std::string& encoded : conversations) {
    const std::string prefix = std::string(keys::kMemory) + encoded + "/";
    // Turn ids of this user's questions; their answers share the id.
    std::set<std::string> turn_ids;
    std::vector<std::pair<std::string, std::string>> entries;  // key, turn id
    status = kv_.Scan(prefix, [&](std::string_view key, std::string_view value) {
      Turn turn;
      if (!ParseTurn(value, turn)) return true;
      if (turn.role == "user" && turn.user == user) turn_ids.insert(turn.turn_id);
      entries.emplace_back(std::string(key), turn.turn_id);
      return true;
    });
    if (!status.ok()) return status;
    for (const auto& [key, turn_id] : entries) {
      if (turn_ids.count(turn_id) > 0) {
        batch.Delete(key);
        ++removed;
      }
    }
  }
  status = kv_.Write(batch, /*sync=*/true);
  {
    std::lock_guard<std::mutex> lock(mu_);
    cache_.Clear();
  }
  if (!status.ok()) return status;
  return removed;
}

Result<size_t> ConversationMemory::SweepExpired() {
  const int64_t cutoff = CutoffMs();
  if (cutoff <= 0) return size_t{0};
  WriteBatch batch;
  Status status = kv_.Scan(keys::kMemory, [&](std::string_view key, std::string_view) {
    if (KeyTimestamp(key) < cutoff) batch.Delete(std::string(key));
    return batch.size() < 100'000;  // bounded per sweep; the next sweep continues
  });
  if (!status.ok()) return status;
  size_t removed = batch.size();
  if (removed > 0) {
    status = kv_.Write(batch, /*sync=*/false);
    if (!status.ok()) return status;
  }
  return removed;
}

}  // namespace parley::store
