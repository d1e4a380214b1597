#include "net/backoff.h"

#include <algorithm>
#include <random>

namespace parley::net {

int64_t BackoffDelayMs(const BackoffPolicy& policy, int attempt) {
  int64_t ceiling = policy.base_ms;
  for (int i = 0; i < attempt && ceiling < policy.max_ms; ++i) ceiling *= 2;
  ceiling = std::min(ceiling, policy.max_ms);
  thread_local std::mt19937_64 engine{std::random_device{}()};
  std::uniform_int_distribution<int64_t> dist(ceiling / 2, std::max<int64_t>(ceiling, 1));
  return dist(engine);
}

}  // namespace parley::net
