#pragma once
// Jittered exponential backoff ("full jitter"): attempt n waits a random time in
// [base * 2^n / 2, base * 2^n], capped at max.
// Thread-safety: value type; use one per retried operation.

#include <cstdint>

namespace parley::net {

struct BackoffPolicy {
  int64_t base_ms = 500;
  int64_t max_ms = 60'000;
};

// Delay before retry number `attempt` (0 = first retry).
int64_t BackoffDelayMs(const BackoffPolicy& policy, int attempt);

}  // namespace parley::net
