#include "store/memory.h"

#include <gtest/gtest.h>

#include "core/clock.h"
#include "store/keys.h"
#include "tests/support/temp_dir.h"

namespace parley::store {
namespace {

class MemoryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    kv_ = std::move(OpenLevelDb(dir_.Sub("db")).value());
    memory_ = std::make_unique<ConversationMemory>(*kv_, clock_, /*retention_days=*/1);
  }
  void Say(const ConversationKey& conv, const std::string& user, const std::string& q,
           const std::string& a) {
    static int n = 0;
    std::string id = "t" + std::to_string(++n);
    WriteBatch b;
    memory_->Append(b, conv, Turn{"user", user, q, id, clock_.NowMs(), {}});
    memory_->Append(b, conv, Turn{"assistant", "", a, id, clock_.NowMs(), {}});
    ASSERT_TRUE(kv_->Write(b, true).ok());
    clock_.Advance(1000);
  }
  std::vector<std::string> Texts(const ConversationKey& conv, size_t turns = 100,
                                 size_t chars = 100000) {
    std::vector<std::string> out;
    for (const Turn& t : memory_->Recent(conv, turns, chars).value()) out.push_back(t.text);
    return out;
  }
  testing::TempDir dir_;
  ManualClock clock_;
  std::unique_ptr<KvStore> kv_;
  std::unique_ptr<ConversationMemory> memory_;
};

TEST_F(MemoryTest, RecentIsOldestFirstWithinBudget) {
  ConversationKey c{"webhook", "c1", ""};
  Say(c, "u1", "q1", "a1");
  Say(c, "u1", "q2", "a2");
  Say(c, "u1", "q3", "a3");
  EXPECT_EQ(Texts(c), (std::vector<std::string>{"q1", "a1", "q2", "a2", "q3", "a3"}));
  EXPECT_EQ(Texts(c, 3), (std::vector<std::string>{"a2", "q3", "a3"}));
  EXPECT_EQ(Texts(c, 100, 4), (std::vector<std::string>{"q3", "a3"}));
  // The newest turn is returned even when it alone exceeds the budget.
  EXPECT_EQ(Texts(c, 100, 1), (std::vector<std::string>{"a3"}));
}

TEST_F(MemoryTest, ConversationsNeverLeak) {
  ConversationKey a{"webhook", "c", ""};
  ConversationKey a_thread{"webhook", "c", "t"};
  ConversationKey b{"webhook", "c/", ""};
  Say(a, "u", "main line", "x");
  Say(a_thread, "u", "in thread", "y");
  Say(b, "u", "other", "z");
  EXPECT_EQ(Texts(a), (std::vector<std::string>{"main line", "x"}));
  EXPECT_EQ(Texts(a_thread), (std::vector<std::string>{"in thread", "y"}));
  EXPECT_EQ(Texts(b), (std::vector<std::string>{"other", "z"}));
}

TEST_F(MemoryTest, ForgetConversation) {
  ConversationKey a{"webhook", "a", ""}, b{"webhook", "b", ""};
  Say(a, "u", "q", "r");
  Say(b, "u", "q", "r");
  EXPECT_EQ(memory_->Forget(a).value(), 2u);
  EXPECT_TRUE(Texts(a).empty());
  EXPECT_EQ(Texts(b).size(), 2u);
}

TEST_F(MemoryTest, ForgetUserRemovesTheirTurnsAndAnswersOnly) {
  ConversationKey shared{"webhook", "room", ""};
  Say(shared, "alice", "alice asks", "answer to alice");
  Say(shared, "bob", "bob asks", "answer to bob");
  ConversationKey alone{"webhook", "dm-alice", ""};
  Say(alone, "alice", "private", "reply");
  EXPECT_EQ(memory_->ForgetUser("webhook", "alice").value(), 4u);
  EXPECT_EQ(Texts(shared), (std::vector<std::string>{"bob asks", "answer to bob"}));
  EXPECT_TRUE(Texts(alone).empty());
  // Same user id on another platform is someone else.
  EXPECT_EQ(memory_->ForgetUser("slack", "bob").value(), 0u);
}

TEST_F(MemoryTest, RetentionHidesAndSweepsOldTurns) {
  ConversationKey c{"webhook", "c", ""};
  Say(c, "u", "old", "old answer");
  clock_.Advance(2 * 86'400'000);
  Say(c, "u", "new", "new answer");
  EXPECT_EQ(Texts(c), (std::vector<std::string>{"new", "new answer"}));
  EXPECT_EQ(memory_->SweepExpired().value(), 2u);
  EXPECT_EQ(memory_->SweepExpired().value(), 0u);
}

TEST_F(MemoryTest, CacheAgreesWithTheStore) {
  ConversationKey c{"webhook", "cached", ""};
  for (int i = 0; i < 12; ++i) Say(c, "u", "q" + std::to_string(i), "a" + std::to_string(i));
  auto cached = Texts(c, 6);  // fills the cache, then served from it
  EXPECT_EQ(cached, (std::vector<std::string>{"q9", "a9", "q10", "a10", "q11", "a11"}));
  Say(c, "u", "q12", "a12");  // appended to the cache as well as the store
  EXPECT_EQ(Texts(c, 2), (std::vector<std::string>{"q12", "a12"}));
  // A fresh memory object (no cache) reads the same from the store.
  ConversationMemory fresh(*kv_, clock_, 1);
  std::vector<std::string> from_store;
  for (const Turn& t : fresh.Recent(c, 6, 100000).value()) from_store.push_back(t.text);
  EXPECT_EQ(from_store, Texts(c, 6));
  // More turns than the cache holds are read from the store.
  EXPECT_EQ(Texts(c, 100).size(), 26u);
}

TEST_F(MemoryTest, ForgetClearsTheCache) {
  ConversationKey c{"webhook", "gone", ""};
  Say(c, "u", "q", "a");
  EXPECT_EQ(Texts(c).size(), 2u);
  ASSERT_TRUE(memory_->Forget(c).ok());
  EXPECT_TRUE(Texts(c).empty());
  Say(c, "u", "q2", "a2");
  ASSERT_TRUE(memory_->ForgetUser("webhook", "u").ok());
  EXPECT_TRUE(Texts(c).empty());
}

// A conversation its platform says is new is answered from the cache: Recent is empty without
// a store read (a turn written behind the cache's back is not seen), and the turns appended
// after it are.
TEST_F(MemoryTest, NewConversationNeedsNoRead) {
  ConversationKey c{"slack", "C1", "1.000001"};
  memory_->NoteNew(c);
  WriteBatch behind;
  behind.Put(keys::MemoryPrefix(c) + "0000000000000001-000000000000",
             R"({"role":"user","text":"unseen","ts_ms":1})");
  ASSERT_TRUE(kv_->Write(behind, true).ok());
  EXPECT_TRUE(Texts(c).empty());
  Say(c, "u", "q", "a");
  EXPECT_EQ(Texts(c), (std::vector<std::string>{"q", "a"}));
  // A fresh memory object reads the store: the turn written behind the cache is there.
  ConversationMemory fresh(*kv_, clock_, 0);
  EXPECT_EQ(fresh.Recent(c, 10, 100000).value().size(), 3u);
  // Noting a conversation the cache already holds changes nothing.
  memory_->NoteNew(c);
  EXPECT_EQ(Texts(c), (std::vector<std::string>{"q", "a"}));
}

// Turns are written with citations and odd text intact, and read back the same.
TEST_F(MemoryTest, TurnsRoundTripThroughTheStore) {
  ConversationKey c{"webhook", "rt", ""};
  Turn answer{"assistant", "", "quote \" tab \t — ünï \xFF", "t9", clock_.NowMs(),
              {Citation{"T", "a.md", "S > 1", "https://x/a"}, Citation{"U", "b.md", "", ""}}};
  WriteBatch b;
  memory_->Append(b, c, Turn{"user", "U1", "q", "t9", clock_.NowMs(), {}});
  memory_->Append(b, c, answer);
  ASSERT_TRUE(kv_->Write(b, true).ok());
  ConversationMemory fresh(*kv_, clock_, 1);
  auto turns = fresh.Recent(c, 10, 100000).value();
  ASSERT_EQ(turns.size(), 2u);
  EXPECT_EQ(turns[0].user, "U1");
  EXPECT_EQ(turns[1].role, "assistant");
  EXPECT_EQ(turns[1].text, "quote \" tab \t — ünï \xEF\xBF\xBD");  // invalid UTF-8 replaced
  EXPECT_EQ(turns[1].turn_id, "t9");
  EXPECT_EQ(turns[1].ts_ms, answer.ts_ms);
  EXPECT_EQ(turns[1].citations, answer.citations);
}

// More conversations than the cache's budget holds: the least recently used leave it, and what
// Recent answers is the same whether it comes from the cache or the store.
TEST_F(MemoryTest, EvictionKeepsAnswersRight) {
  const std::string long_text(3000, 'x');
  const int kConversations = 2000;  // ~12 MB of turns against a 4 MiB cache
  WriteBatch b;
  for (int i = 0; i < kConversations; ++i) {
    ConversationKey c{"slack", "C1", std::to_string(i)};
    memory_->NoteNew(c);
    memory_->Append(b, c, Turn{"user", "u", "q" + std::to_string(i), "t", clock_.NowMs(), {}});
    memory_->Append(b, c, Turn{"assistant", "", long_text + std::to_string(i), "t", clock_.NowMs(),
                               {}});
  }
  ASSERT_TRUE(kv_->Write(b, true).ok());
  for (int i : {0, 1, kConversations / 2, kConversations - 1}) {
    ConversationKey c{"slack", "C1", std::to_string(i)};
    EXPECT_EQ(Texts(c), (std::vector<std::string>{"q" + std::to_string(i),
                                                  long_text + std::to_string(i)}))
        << i;
  }
}

// The counters tell a read the cache answered from one that went to the store; with no cache
// every read goes to the store, and the answers are the same.
TEST_F(MemoryTest, CacheHitsAndMissesAreCountedAndZeroBudgetMeansNoCache) {
  Counter hits, misses;
  ConversationMemory counted(*kv_, clock_, 1, MemoryCacheOptions{1 << 20, &hits, &misses});
  ConversationMemory uncached(*kv_, clock_, 1, MemoryCacheOptions{0, &hits, &misses});
  ConversationKey c{"webhook", "counted", ""};
  Say(c, "u", "q1", "a1");
  EXPECT_EQ(counted.Recent(c, 10, 100000).value().size(), 2u);  // first read: the store
  EXPECT_EQ(hits.value(), 0u);
  EXPECT_EQ(misses.value(), 1u);
  WriteBatch b;
  counted.Append(b, c, Turn{"user", "u", "q2", "t2", clock_.NowMs(), {}});
  ASSERT_TRUE(kv_->Write(b, true).ok());
  EXPECT_EQ(counted.Recent(c, 10, 100000).value().size(), 3u);  // cached, appended to
  EXPECT_EQ(hits.value(), 1u);
  EXPECT_EQ(misses.value(), 1u);
  for (int i = 0; i < 3; ++i) {
    uncached.NoteNew(c);  // not even a new conversation is remembered without a budget
    EXPECT_EQ(uncached.Recent(c, 10, 100000).value().size(), 3u);
  }
  EXPECT_EQ(hits.value(), 1u);
  EXPECT_EQ(misses.value(), 4u);
}

TEST_F(MemoryTest, UncommittedAppendIsDiscarded) {
  ConversationKey c{"webhook", "failed", ""};
  Say(c, "u", "q", "a");
  EXPECT_EQ(Texts(c).size(), 2u);
  WriteBatch never_written;
  memory_->Append(never_written, c, Turn{"user", "u", "lost", "t", clock_.NowMs(), {}});
  memory_->Invalidate(c);
  EXPECT_EQ(Texts(c), (std::vector<std::string>{"q", "a"}));
}

}  // namespace
}  // namespace parley::store
