#include "store/committer.h"

#include <algorithm>

namespace parley::store {

Committer::Committer(KvStore& store, CommitterOptions options)
    : store_(store), min_sync_interval_(std::max<int64_t>(0, options.min_sync_interval_us)) {
  if (options.metrics != nullptr) {
    constexpr const char* kWrites = "parley_store_writes_total";
    constexpr const char* kWritesHelp = "Store writes by the group committer, synced or not";
    writes_synced_ = &options.metrics->GetCounter(kWrites, kWritesHelp, "sync=\"true\"");
    writes_unsynced_ = &options.metrics->GetCounter(kWrites, kWritesHelp, "sync=\"false\"");
    batches_written_ = &options.metrics->GetCounter(
        "parley_store_batches_total", "Batches submitted to the group committer and written");
  }
  // Started last: Run reads the members above.
  thread_ = std::thread([this] { Run(); });
}

Committer::~Committer() { Shutdown(); }

void Committer::Submit(WriteBatch batch, std::function<void(Status)> done, bool sync) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!stopping_) {
      queue_.push_back({std::move(batch), std::move(done), sync});
      if (sync) ++queued_syncs_;
      cv_.notify_one();
      return;
    }
  }
  if (done) done(Status::Unavailable("store is shutting down"));
}

void Committer::Shutdown() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_ && !thread_.joinable()) return;
    stopping_ = true;
    cv_.notify_one();
  }
  if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
}

void Committer::Run() {
  std::vector<Pending> work;
  // When the last synced write started; the next may not start before min_sync_interval_ after.
  auto last_sync = std::chrono::steady_clock::time_point::min();
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty() && stopping_) return;
      if (queued_syncs_ > 0 && last_syncs_ > 1 && min_sync_interval_.count() > 0) {
        // Under load: a sync waits out the interval, and everything that arrives meanwhile
        // shares it. Unsynced batches alone are written at once. Shutdown does not wait.
        cv_.wait_until(lock, last_sync + min_sync_interval_, [this] { return stopping_; });
      }
      work.swap(queue_);
      if (queued_syncs_ > 0) last_syncs_ = queued_syncs_;
      queued_syncs_ = 0;
    }
    // The batches are moved, not copied, into one: nobody reads them after this.
    WriteBatch merged;
    bool sync = false;
    for (Pending& p : work) {
      merged.Append(std::move(p.batch));
      sync = sync || p.sync;
    }
    if (sync) last_sync = std::chrono::steady_clock::now();
    Status status = store_.Write(merged, sync);
    (sync ? writes_synced_ : writes_unsynced_)->Add();
    batches_written_->Add(work.size());
    for (Pending& p : work) {
      if (p.done) p.done(status);
    }
    work.clear();
  }
}

}  // namespace parley::store
