#pragma once
// Group commit: many concurrent durable writes share one synced write. Callers submit a batch and
// are told when it is on stable storage; a dedicated thread merges everything pending into one
// atomic, synced write. This keeps fsync off the io threads and makes durable writes cheap under
// load (one fsync serves every turn that finished meanwhile).
//
// With CommitterOptions::min_sync_interval_us, under load synced writes start at most that often:
// batches that arrive sooner wait for the next one. Each fdatasync costs the kernel CPU and
// rewrites the log's last page however little it adds, so a short wait (a millisecond or two)
// buys fewer, larger syncs. "Under load" means the previous synced write carried more than one
// synced batch; while each sync carries one, nothing waits, so a quiet daemon's latency is
// unchanged.
// Thread-safety: thread-safe. Callbacks run on the committer's thread and must be short (post
// real work elsewhere).

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "core/metrics.h"
#include "store/kv_store.h"

namespace parley::store {

struct CommitterOptions {
  int64_t min_sync_interval_us = 0;    // 0 = sync as soon as the previous write is done
  // Where writes and batches are counted (parley_store_writes_total{sync},
  // parley_store_batches_total); null = counters of the committer's own.
  MetricsRegistry* metrics = nullptr;
};

class Committer {
 public:
  explicit Committer(KvStore& store, CommitterOptions options = {});
  // Flushes what is pending, then stops the thread.
  ~Committer();
  Committer(const Committer&) = delete;
  Committer& operator=(const Committer&) = delete;

  // Queues the batch; done(status) runs once it is written (or failed). With sync, it is on
  // stable storage by then; without, it is in the log (survives a process crash, not a power
  // failure) and costs no fsync of its own: it shares the next write, synced only if another
  // batch in it asks for that. After Shutdown(), done runs at once with Unavailable.
  void Submit(WriteBatch batch, std::function<void(Status)> done, bool sync = true);
  // Drains pending batches and stops accepting new ones.
  void Shutdown();

  // Writes done (synced or not) and batches written: the counters above.
  uint64_t commits() const { return writes_synced_->value() + writes_unsynced_->value(); }
  uint64_t batches() const { return batches_written_->value(); }

 private:
  struct Pending {
    WriteBatch batch;
    std::function<void(Status)> done;
    bool sync = true;
  };
  void Run();

  KvStore& store_;
  const std::chrono::microseconds min_sync_interval_;
  Counter own_[3];  // when no registry is given
  Counter* writes_synced_ = &own_[0];
  Counter* writes_unsynced_ = &own_[1];
  Counter* batches_written_ = &own_[2];
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Pending> queue_;
  size_t queued_syncs_ = 0;  // batches in queue_ that ask for a sync
  size_t last_syncs_ = 0;    // synced batches the previous synced write carried
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace parley::store
