#pragma once
// A map from string keys to values that keeps what was used most recently within a byte budget.

#include <cstddef>
#include <list>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>

namespace parley {

// Each entry costs its key's size, the `bytes` its owner declares for the value, and a fixed
// overhead for the bookkeeping (kEntryOverhead). Put drops least recently used entries until the
// total is within `max_bytes`; an entry that alone exceeds the budget is not stored. A budget of
// 0 stores nothing.
// Thread-safety: none; the owner locks.
template <typename V>
class LruMap {
 public:
  static constexpr size_t kEntryOverhead = 96;

  explicit LruMap(size_t max_bytes) : max_bytes_(max_bytes) {}

  // The value under `key`, now the most recently used; nullptr when absent. The pointer is valid
  // until the next Put or Clear.
  V* Find(std::string_view key) {
    auto it = index_.find(key);
    if (it == index_.end()) return nullptr;
    order_.splice(order_.begin(), order_, it->second);
    return &it->second->value;
  }

  // Stores `value` under `key` (replacing what was there) as the most recently used entry.
  void Put(std::string key, V value, size_t bytes) {
    const size_t cost = key.size() + bytes + kEntryOverhead;
    Erase(key);
    if (cost > max_bytes_) return;
    while (bytes_ + cost > max_bytes_ && !order_.empty()) Erase(order_.back().key);
    order_.push_front(Entry{std::move(key), std::move(value), cost});
    index_.emplace(order_.front().key, order_.begin());
    bytes_ += cost;
  }

  // Drops the entry under `key`, if any.
  void Erase(std::string_view key) {
    auto it = index_.find(key);
    if (it == index_.end()) return;
    bytes_ -= it->second->cost;
    auto entry = it->second;
    index_.erase(it);  // before the entry: the index's key views the entry's string
    order_.erase(entry);
  }
  void Clear() {
    index_.clear();
    order_.clear();
    bytes_ = 0;
  }

  size_t size() const { return order_.size(); }
  size_t bytes() const { return bytes_; }

 private:
  struct Entry {
    std::string key;
    V value;
    size_t cost;
  };


  size_t max_bytes_;
  size_t bytes_ = 0;
  std::list<Entry> order_;  // most recently used first
  std::unordered_map<std::string_view, typename std::list<Entry>::iterator> index_;
};

}  // namespace parley
