// Defaults that live in two places (the config a user sees, the component's own options for
// code that builds it directly) must agree.

#include <gtest/gtest.h>

#include "config/config.h"
#include "store/memory.h"

namespace parley {
namespace {

TEST(DefaultsTest, MemoryCacheBudgetIsTheSameInConfigAndStore) {
  const config::StoreConfig store_config;
  EXPECT_EQ(static_cast<size_t>(store_config.memory_cache_mb) << 20,
            store::MemoryCacheOptions::kDefaultBytes);
}

}  // namespace
}  // namespace parley
