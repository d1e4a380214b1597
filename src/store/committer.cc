#include "store/committer.h"

namespace parley::store {

Committer::Committer(KvStore& store) : store_(store), thread_([this] { Run(); }) {}

Committer::~Committer() { Shutdown(); }

void Committer::Submit(WriteBatch batch, std::function<void(Status)> done, bool sync) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!stopping_) {
      queue_.push_back({std::move(batch), std::move(done), sync});
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

uint64_t Committer::commits() const {
  std::lock_guard<std::mutex> lock(mu_);
  return commits_;
}

uint64_t Committer::batches() const {
  std::lock_guard<std::mutex> lock(mu_);
  return batches_;
}

void Committer::Run() {
  std::vector<Pending> work;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty() && stopping_) return;
      work.swap(queue_);
    }
    WriteBatch merged;
    bool sync = false;
    for (const Pending& p : work) {
      merged.Append(p.batch);
      sync = sync || p.sync;
    }
    Status status = store_.Write(merged, sync);
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++commits_;
      batches_ += work.size();
    }
    for (Pending& p : work) {
      if (p.done) p.done(status);
    }
    work.clear();
  }
}

}  // namespace parley::store
