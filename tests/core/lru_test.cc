#include "core/lru.h"

#include <gtest/gtest.h>

#include <memory>
#include <string>

namespace parley {
namespace {

constexpr size_t kOverhead = LruMap<int>::kEntryOverhead;

TEST(LruMapTest, FindsWhatWasPutAndNothingElse) {
  LruMap<int> map(10 * (kOverhead + 10));
  map.Put("a", 1, 0);
  map.Put("b", 2, 0);
  ASSERT_NE(map.Find("a"), nullptr);
  EXPECT_EQ(*map.Find("a"), 1);
  EXPECT_EQ(*map.Find("b"), 2);
  EXPECT_EQ(map.Find("c"), nullptr);
  map.Put("a", 3, 0);  // replaces
  EXPECT_EQ(*map.Find("a"), 3);
  EXPECT_EQ(map.size(), 2u);
  EXPECT_EQ(map.bytes(), 2 * (kOverhead + 1));
}

TEST(LruMapTest, DropsTheLeastRecentlyUsedToStayWithinItsBudget) {
  // Room for exactly three entries of one-byte keys and 10-byte values.
  const size_t entry = kOverhead + 1 + 10;
  LruMap<int> map(3 * entry);
  map.Put("a", 1, 10);
  map.Put("b", 2, 10);
  map.Put("c", 3, 10);
  ASSERT_NE(map.Find("a"), nullptr);  // "b" is now the least recently used
  map.Put("d", 4, 10);
  EXPECT_EQ(map.Find("b"), nullptr);
  EXPECT_NE(map.Find("a"), nullptr);
  EXPECT_NE(map.Find("c"), nullptr);
  EXPECT_NE(map.Find("d"), nullptr);
  EXPECT_EQ(map.size(), 3u);
  EXPECT_EQ(map.bytes(), 3 * entry);
  // A large entry pushes out as many as it needs.
  map.Put("e", 5, 2 * entry - kOverhead - 1);
  EXPECT_EQ(map.size(), 2u);
  EXPECT_NE(map.Find("e"), nullptr);
  EXPECT_NE(map.Find("d"), nullptr);
  EXPECT_LE(map.bytes(), 3 * entry);
}

TEST(LruMapTest, AnEntryLargerThanTheBudgetIsNotStoredAndReplacesNothing) {
  LruMap<std::string> map(200);
  map.Put("k", "small", 5);
  map.Put("big", std::string(500, 'x'), 500);
  EXPECT_EQ(map.Find("big"), nullptr);
  ASSERT_NE(map.Find("k"), nullptr);
  // Replacing a key with a value too large removes the old value: it is stale.
  map.Put("k", std::string(500, 'y'), 500);
  EXPECT_EQ(map.Find("k"), nullptr);
  EXPECT_EQ(map.bytes(), 0u);
}

TEST(LruMapTest, ABudgetOfZeroStoresNothingAndClearEmpties) {
  LruMap<int> off(0);
  off.Put("a", 1, 0);
  EXPECT_EQ(off.Find("a"), nullptr);
  EXPECT_EQ(off.size(), 0u);

  LruMap<std::shared_ptr<int>> map(1 << 20);
  auto value = std::make_shared<int>(7);
  map.Put("a", value, sizeof(int));
  EXPECT_EQ(value.use_count(), 2);
  map.Clear();
  EXPECT_EQ(value.use_count(), 1);
  EXPECT_EQ(map.Find("a"), nullptr);
  EXPECT_EQ(map.bytes(), 0u);
}

TEST(LruMapTest, KeysWithEmbeddedSeparatorsAndLongKeysStayDistinct) {
  LruMap<int> map(1 << 20);
  const std::string long_a = std::string(100, 'q') + "a";
  const std::string long_b = std::string(100, 'q') + "b";
  map.Put(long_a, 1, 0);
  map.Put(long_b, 2, 0);
  map.Put(std::string("x\x1ey", 3), 3, 0);
  map.Put(std::string("x\0y", 3), 4, 0);
  EXPECT_EQ(*map.Find(long_a), 1);
  EXPECT_EQ(*map.Find(long_b), 2);
  EXPECT_EQ(*map.Find(std::string("x\x1ey", 3)), 3);
  EXPECT_EQ(*map.Find(std::string("x\0y", 3)), 4);
  EXPECT_EQ(map.size(), 4u);
}

}  // namespace
}  // namespace parley
