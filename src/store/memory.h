#pragma once
// Per-conversation memory: the turns of each conversation, kept for a retention period, loaded
// newest-first within a budget for follow-up questions, and forgotten on request (a conversation,
// or everything a user said).
// Thread-safety: thread-safe (stateless over a thread-safe KvStore). Appends to one conversation
// are expected from its serial executor, so turns keep their order.

#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "core/clock.h"
#include "core/lru.h"
#include "core/message.h"
#include "core/metrics.h"
#include "store/kv_store.h"

namespace parley::store {

struct Turn {
  std::string role;  // "user", "assistant" (or "agent" later)
  std::string user;  // who spoke (for role "user"); empty for the bot
  std::string text;
  std::string turn_id;  // shared by a question and its answer
  int64_t ts_ms = 0;
  std::vector<Citation> citations;
};

// The cache of recent turns in front of the store.
struct MemoryCacheOptions {
  // The default budget holds the conversations of a busy webhook client (the benchmark's 512
  // conversations of 8 turns fit in under 3 MiB: 99% hits with 3 or 4 MiB, 4% with 2, since an
  // LRU smaller than the working set misses on every read) and, on Slack at 2,000 events/s, the
  // threads of the last second or two. Each MiB is about a MiB of the daemon's RSS under load.
  static constexpr size_t kDefaultBytes = 4 * 1024 * 1024;
  size_t max_bytes = kDefaultBytes;  // 0 = no cache: every Recent reads the store
  Counter* hits = nullptr;           // Recent answered from the cache
  Counter* misses = nullptr;         // Recent read the store
};

class ConversationMemory {
 public:
  // retention_days <= 0 keeps memory forever.
  ConversationMemory(KvStore& kv, const Clock& clock, int retention_days,
                     MemoryCacheOptions cache = {});

  // Adds the turn to batch (commit it with the rest of the turn's writes).
  void Append(WriteBatch& batch, const ConversationKey& conv, const Turn& turn) const;

  // The most recent turns, oldest first: at most max_turns, and at most max_chars of text in all
  // (always at least the newest turn when one exists). Expired turns are not returned.
  Result<std::vector<Turn>> Recent(const ConversationKey& conv, size_t max_turns,
                                   size_t max_chars) const;

  // The caller knows the conversation has no stored turns (its platform says this message opens
  // it): the cache remembers that, so Recent, and the follow-ups after it, need not read the store.
  void NoteNew(const ConversationKey& conv) const;

  // Deletes every turn of the conversation (synced). Returns how many turns were removed.
  Result<size_t> Forget(const ConversationKey& conv);
  // Deletes every turn the user wrote on platform and the answers to those turns (synced).
  Result<size_t> ForgetUser(const std::string& platform, const std::string& user);
  // Deletes turns older than the retention period. Returns how many.
  Result<size_t> SweepExpired();

  // Drops what the cache holds for the conversation (e.g. when a batch with its turns failed to
  // commit after Append).
  void Invalidate(const ConversationKey& conv);

 private:
  // The newest turns of recently active conversations, so a turn does not read the store. Filled
  // by Recent (and NoteNew), extended by Append; `complete` when it holds every stored turn.
  // Least recently used conversations leave first once the cache holds its budget.
  struct CachedTurns {
    std::vector<Turn> turns;
    bool complete = false;
  };
  // Enough turns for the default engine.memory_turns (6) and an LLM turn's window (+2); a larger
  // memory_turns reads the store.
  static constexpr size_t kCachedTurns = 8;
  // What an entry holds on the heap, roughly: the turns' strings and the vector's slots.
  static size_t ApproxBytes(const Turn& turn);
  static size_t ApproxBytes(const CachedTurns& cached);
  void CacheLocked(std::string encoded, CachedTurns cached) const;

  int64_t CutoffMs() const;
  std::vector<Turn> Select(const std::vector<Turn>& turns, size_t max_turns,
                           size_t max_chars) const;
  KvStore& kv_;
  const Clock& clock_;
  int64_t retention_ms_;
  mutable std::mutex mu_;
  Counter* hits_;
  Counter* misses_;
  mutable LruMap<CachedTurns> cache_;
};

}  // namespace parley::store
