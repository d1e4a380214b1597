#pragma once
// The key-value port all durable state goes through. LevelDbStore implements it today; another
// backend (e.g. one shared by several replicas) can implement it without touching the modules above.
// Key layout: see store/keys.h.

#include <functional>
#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace parley::store {

// An ordered list of puts and deletes applied atomically.
class WriteBatch {
 public:
  struct Op {
    bool is_delete;
    std::string key;
    std::string value;
  };
  void Put(std::string key, std::string value) {
    ops_.push_back({false, std::move(key), std::move(value)});
  }
  void Delete(std::string key) { ops_.push_back({true, std::move(key), {}}); }
  // Moves other's operations to the end of this batch; other is left empty.
  void Append(WriteBatch&& other) {
    if (ops_.empty()) {
      ops_.swap(other.ops_);
      return;
    }
    ops_.insert(ops_.end(), std::make_move_iterator(other.ops_.begin()),
                std::make_move_iterator(other.ops_.end()));
    other.ops_.clear();
  }
  bool empty() const { return ops_.empty(); }
  size_t size() const { return ops_.size(); }
  const std::vector<Op>& ops() const { return ops_; }

 private:
  std::vector<Op> ops_;
};

// Return false to stop a scan early.
using ScanVisitor = std::function<bool(std::string_view key, std::string_view value)>;

// Thread-safety: thread-safe.
class KvStore {
 public:
  virtual ~KvStore() = default;
  // NotFound when absent.
  virtual Result<std::string> Get(std::string_view key) = 0;
  // Applies the batch atomically. With sync, it is on stable storage when this returns OK.
  virtual Status Write(const WriteBatch& batch, bool sync) = 0;
  // Visits keys starting with prefix in key order, from `start` (inclusive; empty = the prefix).
  virtual Status Scan(std::string_view prefix, const ScanVisitor& visit,
                      std::string_view start = {}) = 0;
  // Visits keys starting with prefix in reverse key order (last first).
  virtual Status ScanReverse(std::string_view prefix, const ScanVisitor& visit) = 0;
  // A figure the backend reports about itself (LevelDB: "leveldb.stats",
  // "leveldb.num-files-at-level<N>", ...); nullopt when it has no such figure.
  virtual std::optional<std::string> Property(std::string_view name) {
    (void)name;
    return std::nullopt;
  }
};

// Opens (creating) a LevelDB database in directory. Fails with Unavailable when another process
// holds it (LevelDB admits one process).
Result<std::unique_ptr<KvStore>> OpenLevelDb(const std::string& directory);

// True when status is the "held by another process" failure of OpenLevelDb.
bool IsLockedByOtherProcess(const Status& status);

}  // namespace parley::store
