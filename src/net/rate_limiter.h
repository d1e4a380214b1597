#pragma once
// Token buckets keyed by string (per user, per conversation). Idle buckets are forgotten.
// Thread-safety: thread-safe.

#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>

#include "core/clock.h"

namespace parley::net {

class KeyedRateLimiter {
 public:
  // rate_per_minute tokens refill per minute up to burst. rate_per_minute <= 0 disables limiting.
  KeyedRateLimiter(const Clock& clock, double rate_per_minute, int burst);

  // Takes a token for key. Returns 0 when allowed, else the milliseconds until one is available
  // (nothing is taken).
  int64_t TryAcquire(const std::string& key);

 private:
  struct Bucket {
    double tokens;
    int64_t updated_ms;
  };
  const Clock& clock_;
  double per_ms_;
  double burst_;
  std::mutex mu_;
  std::unordered_map<std::string, Bucket> buckets_;
  int64_t last_sweep_ms_ = 0;
};

}  // namespace parley::net
