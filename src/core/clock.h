#pragma once
// Injectable time source. Production uses SystemClock; tests use ManualClock.
// Thread-safety: implementations are thread-safe.

#include <atomic>
#include <cstdint>

namespace parley {

class Clock {
 public:
  virtual ~Clock() = default;
  // Milliseconds since the Unix epoch (wall clock: stored timestamps, expiry, signatures).
  virtual int64_t NowMs() const = 0;
  int64_t NowSeconds() const { return NowMs() / 1000; }
};

class SystemClock final : public Clock {
 public:
  int64_t NowMs() const override;
  // The process-wide instance.
  static SystemClock& Instance();
};

// A clock that moves only when told. For tests.
class ManualClock final : public Clock {
 public:
  explicit ManualClock(int64_t start_ms = 1'700'000'000'000) : now_ms_(start_ms) {}
  int64_t NowMs() const override { return now_ms_.load(); }
  void Advance(int64_t ms) { now_ms_ += ms; }
  void Set(int64_t ms) { now_ms_ = ms; }

 private:
  std::atomic<int64_t> now_ms_;
};

// Monotonic nanoseconds for measuring durations (latency histograms); not wall time.
int64_t MonotonicNanos();

}  // namespace parley
