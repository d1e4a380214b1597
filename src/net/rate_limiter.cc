#include "net/rate_limiter.h"

#include <algorithm>
#include <cmath>

namespace parley::net {

KeyedRateLimiter::KeyedRateLimiter(const Clock& clock, double rate_per_minute, int burst)
    : clock_(clock), per_ms_(rate_per_minute / 60'000.0), burst_(std::max(1, burst)) {}

int64_t KeyedRateLimiter::TryAcquire(const std::string& key) {
  if (per_ms_ <= 0) return 0;
  const int64_t now = clock_.NowMs();
  std::lock_guard<std::mutex> lock(mu_);
  // Forget buckets that have refilled completely; they are equivalent to new ones.
  const int64_t full_after_ms = static_cast<int64_t>(burst_ / per_ms_) + 1;
  if (now - last_sweep_ms_ > full_after_ms && buckets_.size() > 1024) {
    for (auto it = buckets_.begin(); it != buckets_.end();) {
      it = (now - it->second.updated_ms > full_after_ms) ? buckets_.erase(it) : std::next(it);
    }
    last_sweep_ms_ = now;
  }
  auto [it, inserted] = buckets_.try_emplace(key, Bucket{burst_, now});
  Bucket& b = it->second;
  if (!inserted) {
    b.tokens = std::min(burst_, b.tokens + static_cast<double>(now - b.updated_ms) * per_ms_);
    b.updated_ms = now;
  }
  if (b.tokens >= 1.0) {
    b.tokens -= 1.0;
    return 0;
  }
  return static_cast<int64_t>(std::ceil((1.0 - b.tokens) / per_ms_));
}

}  // namespace parley::net
