#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <random>
#include <thread>

#include <gtest/gtest.h>

#include "core/clock.h"
#include "store/committer.h"
#include "store/kv_store.h"
#include "store/records.h"
#include "tests/support/temp_dir.h"

namespace parley::store {
namespace {

class StoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto opened = OpenLevelDb(dir_.Sub("db"));
    ASSERT_TRUE(opened.ok()) << opened.status().ToString();
    kv_ = std::move(opened.value());
  }
  testing::TempDir dir_;
  std::unique_ptr<KvStore> kv_;
};

std::vector<std::string> Keys(KvStore& kv, const std::string& prefix, bool reverse = false) {
  std::vector<std::string> out;
  auto visit = [&](std::string_view k, std::string_view) {
    out.emplace_back(k);
    return true;
  };
  Status s = reverse ? kv.ScanReverse(prefix, visit) : kv.Scan(prefix, visit);
  EXPECT_TRUE(s.ok()) << s.ToString();
  return out;
}

TEST_F(StoreTest, PutGetDeleteAtomically) {
  WriteBatch b;
  b.Put("a/1", "x");
  b.Put("a/2", "y");
  ASSERT_TRUE(kv_->Write(b, true).ok());
  EXPECT_EQ(kv_->Get("a/1").value(), "x");
  WriteBatch d;
  d.Delete("a/1");
  ASSERT_TRUE(kv_->Write(d, true).ok());
  EXPECT_TRUE(kv_->Get("a/1").status().IsNotFound());
  EXPECT_EQ(kv_->Get("a/2").value(), "y");
}

TEST_F(StoreTest, ScanStaysInsidePrefixBothWays) {
  WriteBatch b;
  for (const char* k : {"p/a", "p/b", "p/c", "pq/x", "o/z", "p0"}) b.Put(k, "v");
  ASSERT_TRUE(kv_->Write(b, false).ok());
  EXPECT_EQ(Keys(*kv_, "p/"), (std::vector<std::string>{"p/a", "p/b", "p/c"}));
  EXPECT_EQ(Keys(*kv_, "p/", true), (std::vector<std::string>{"p/c", "p/b", "p/a"}));
  EXPECT_EQ(Keys(*kv_, "pq/", true), (std::vector<std::string>{"pq/x"}));
  EXPECT_TRUE(Keys(*kv_, "zz/", true).empty());
  EXPECT_TRUE(Keys(*kv_, "a", true).empty());
}

TEST_F(StoreTest, SecondOpenIsReportedAsLocked) {
  auto second = OpenLevelDb(dir_.Sub("db"));
  ASSERT_FALSE(second.ok());
  EXPECT_TRUE(IsLockedByOtherProcess(second.status())) << second.status().ToString();
}

TEST_F(StoreTest, DataSurvivesReopen) {
  WriteBatch b;
  b.Put("k", "v");
  ASSERT_TRUE(kv_->Write(b, true).ok());
  kv_.reset();
  auto again = OpenLevelDb(dir_.Sub("db"));
  ASSERT_TRUE(again.ok());
  EXPECT_EQ((*again)->Get("k").value(), "v");
}

// Enough data for several memtable flushes and compactions: every key reads back from the table
// files (read with pread, not mapped), in order, before and after a reopen, with the reads
// crossing files and levels.
TEST_F(StoreTest, TablesReadBackAfterFlushesAndReopen) {
  const std::string value(1000, 'v');
  const int kKeys = 40'000;  // ~40 MB: five 8 MiB memtables
  for (int batch = 0; batch < kKeys / 1000; ++batch) {
    WriteBatch b;
    for (int i = batch * 1000; i < (batch + 1) * 1000; ++i) {
      char key[16];
      std::snprintf(key, sizeof(key), "t/%08d", i);
      b.Put(key, value + std::to_string(i));
    }
    ASSERT_TRUE(kv_->Write(b, false).ok());
  }
  for (int round = 0; round < 2; ++round) {
    for (int i : {0, 1, 9'999, 20'000, kKeys - 1}) {
      char key[16];
      std::snprintf(key, sizeof(key), "t/%08d", i);
      EXPECT_EQ(kv_->Get(key).value(), value + std::to_string(i)) << key;
    }
    int seen = 0;
    ASSERT_TRUE(kv_->Scan("t/", [&](std::string_view key, std::string_view v) {
                     char want[16];
                     std::snprintf(want, sizeof(want), "t/%08d", seen);
                     EXPECT_EQ(key, want);
                     EXPECT_EQ(v.size(), value.size() + std::to_string(seen).size());
                     ++seen;
                     return true;
                   }).ok());
    EXPECT_EQ(seen, kKeys);
    kv_.reset();
    kv_ = std::move(OpenLevelDb(dir_.Sub("db")).value());
  }
}

int FilesAtLevel(KvStore& kv, int level) {
  auto files = kv.Property("leveldb.num-files-at-level" + std::to_string(level));
  EXPECT_TRUE(files.has_value());
  return files ? std::stoi(*files) : -1;
}

// Writes `n` keys spread over the whole key range, as the daemon's are (event ids, threads).
void WriteSpreadKeys(KvStore& kv, std::mt19937_64& random, int n) {
  const std::string value(1000, 'v');
  for (int done = 0; done < n;) {
    WriteBatch b;
    for (int i = 0; i < 100 && done < n; ++i, ++done) {
      char key[32];
      std::snprintf(key, sizeof(key), "k/%016llx", static_cast<unsigned long long>(random()));
      b.Put(key, value);
    }
    ASSERT_TRUE(kv.Write(b, false).ok());
  }
}

// LevelDB compacts a table into the level below once ~100 DB::Get calls passed through it without
// finding their key there. Every table a memtable flush makes overlaps every table below (the keys
// are spread), so lookups of absent keys (each new event's id) used to merge each new table with
// the whole level below within milliseconds. The store's Get must not do that.
TEST_F(StoreTest, LookupsOfAbsentKeysDoNotCompactTheNewestTable) {
  std::mt19937_64 random(7);
  // ~6 MB: the first 4 MiB memtable is flushed, and with nothing below it goes to level 2.
  WriteSpreadKeys(*kv_, random, 6'000);
  // ~4 MB more: the next flush overlaps that table, so it stops at level 1.
  WriteSpreadKeys(*kv_, random, 4'000);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (FilesAtLevel(*kv_, 1) == 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::yield();
  }
  ASSERT_EQ(FilesAtLevel(*kv_, 1), 1) << kv_->Property("leveldb.stats").value_or("");
  ASSERT_GE(FilesAtLevel(*kv_, 2), 1);
  ASSERT_EQ(FilesAtLevel(*kv_, 0), 0);

  for (int i = 0; i < 2'000; ++i) {
    char key[32];
    std::snprintf(key, sizeof(key), "k/%016llx", static_cast<unsigned long long>(random()));
    ASSERT_TRUE(kv_->Get(key).status().IsNotFound()) << key;
  }
  // A compaction the lookups set off would start at once and take a few milliseconds; give it a
  // second, checking all along.
  const auto quiet_until = std::chrono::steady_clock::now() + std::chrono::seconds(1);
  while (std::chrono::steady_clock::now() < quiet_until) {
    ASSERT_EQ(FilesAtLevel(*kv_, 1), 1) << kv_->Property("leveldb.stats").value_or("");
    std::this_thread::yield();
  }
}

TEST_F(StoreTest, PropertyIsEmptyForAnUnknownName) {
  EXPECT_FALSE(kv_->Property("leveldb.no-such-property").has_value());
  EXPECT_TRUE(kv_->Property("leveldb.stats").has_value());
}

TEST_F(StoreTest, CommitterGroupsConcurrentWrites) {
  Committer committer(*kv_);
  constexpr int kThreads = 8, kPerThread = 200;
  std::atomic<int> done{0}, failed{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        WriteBatch b;
        b.Put("c/" + std::to_string(t) + "/" + std::to_string(i), "v");
        committer.Submit(std::move(b), [&](Status s) {
          if (!s.ok()) ++failed;
          ++done;
        });
      }
    });
  }
  for (auto& th : threads) th.join();
  committer.Shutdown();  // drains
  EXPECT_EQ(done.load(), kThreads * kPerThread);
  EXPECT_EQ(failed.load(), 0);
  EXPECT_EQ(Keys(*kv_, "c/").size(), size_t{kThreads * kPerThread});
  EXPECT_EQ(committer.batches(), uint64_t{kThreads * kPerThread});
  EXPECT_LT(committer.commits(), committer.batches());  // fsyncs were shared
  // After shutdown, submissions are refused, not lost silently.
  Status after;
  committer.Submit(WriteBatch(), [&](Status s) { after = s; });
  EXPECT_EQ(after.code(), Status::Code::kUnavailable);
}

// Delegates to a real store, records the sync flag of every write, and can hold a write until
// released (so that later submissions pile up behind it).
class GatedStore final : public KvStore {
 public:
  explicit GatedStore(KvStore& inner) : inner_(inner) {}
  Result<std::string> Get(std::string_view key) override { return inner_.Get(key); }
  Status Write(const WriteBatch& batch, bool sync) override {
    std::unique_lock<std::mutex> lock(mu_);
    syncs_.push_back(sync);
    cv_.notify_all();
    cv_.wait(lock, [&] { return !hold_; });
    return inner_.Write(batch, sync);
  }
  Status Scan(std::string_view prefix, const ScanVisitor& visit,
              std::string_view start) override {
    return inner_.Scan(prefix, visit, start);
  }
  Status ScanReverse(std::string_view prefix, const ScanVisitor& visit) override {
    return inner_.ScanReverse(prefix, visit);
  }
  void Hold() {
    std::lock_guard<std::mutex> lock(mu_);
    hold_ = true;
  }
  void Release() {
    std::lock_guard<std::mutex> lock(mu_);
    hold_ = false;
    cv_.notify_all();
  }
  // Waits until n writes have started; returns their sync flags.
  std::vector<bool> WaitWrites(size_t n) {
    std::unique_lock<std::mutex> lock(mu_);
    EXPECT_TRUE(cv_.wait_for(lock, std::chrono::seconds(10), [&] { return syncs_.size() >= n; }));
    return syncs_;
  }

 private:
  KvStore& inner_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool hold_ = false;
  std::vector<bool> syncs_;
};

TEST_F(StoreTest, CommitterSyncsOnlyWhenABatchAsksForIt) {
  GatedStore gated(*kv_);
  Committer committer(gated);
  auto put = [](const std::string& key) {
    WriteBatch b;
    b.Put(key, "v");
    return b;
  };
  gated.Hold();
  committer.Submit(put("s/1"), nullptr);  // write 1 (synced), held
  gated.WaitWrites(1);
  committer.Submit(put("s/2"), nullptr, /*sync=*/false);
  committer.Submit(put("s/3"), nullptr, /*sync=*/false);  // together: write 2, not synced
  gated.Release();
  gated.WaitWrites(2);
  gated.Hold();
  committer.Submit(put("s/4"), nullptr, /*sync=*/false);  // write 3 (alone, not synced), held
  gated.WaitWrites(3);
  committer.Submit(put("s/5"), nullptr, /*sync=*/false);
  committer.Submit(put("s/6"), nullptr, /*sync=*/true);  // together: write 4, synced
  gated.Release();
  committer.Shutdown();
  EXPECT_EQ(gated.WaitWrites(4), (std::vector<bool>{true, false, false, true}));
  EXPECT_EQ(Keys(*kv_, "s/").size(), 6u);
}

TEST_F(StoreTest, CommitterSyncIntervalGathersSyncedBatchesUnderLoad) {
  GatedStore gated(*kv_);
  MetricsRegistry metrics;
  CommitterOptions options;
  options.min_sync_interval_us = 60'000'000;  // longer than the test: only shutdown ends the wait
  options.metrics = &metrics;
  Committer committer(gated, options);
  auto put = [](const std::string& key) {
    WriteBatch b;
    b.Put(key, "v");
    return b;
  };
  std::atomic<int> done{0};
  auto count = [&](Status s) {
    EXPECT_TRUE(s.ok()) << s.ToString();
    ++done;
  };
  auto wait_done = [&](int n) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (done.load() < n && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::yield();
    }
    return done.load();
  };
  gated.Hold();
  committer.Submit(put("i/1"), count);  // write 1: alone, held
  gated.WaitWrites(1);
  committer.Submit(put("i/2"), count);  // write 2: these two together
  committer.Submit(put("i/3"), count);
  gated.Release();
  // A sync after one that carried a single batch does not wait (a quiet daemon's latency).
  ASSERT_EQ(wait_done(3), 3);
  committer.Submit(put("i/4"), count, /*sync=*/false);  // nor does an unsynced write
  ASSERT_EQ(wait_done(4), 4);
  // The last sync carried two batches: under load, the next waits out the interval, and what
  // arrives meanwhile shares it.
  committer.Submit(put("i/5"), count);
  committer.Submit(put("i/6"), count, /*sync=*/false);
  committer.Submit(put("i/7"), count);
  EXPECT_EQ(gated.WaitWrites(3).size(), 3u);
  committer.Shutdown();  // does not wait out the interval
  EXPECT_EQ(done.load(), 7);
  EXPECT_EQ(gated.WaitWrites(4), (std::vector<bool>{true, true, false, true}));
  EXPECT_EQ(Keys(*kv_, "i/").size(), 7u);
  const std::string text = metrics.RenderPrometheus();
  EXPECT_NE(text.find("parley_store_writes_total{sync=\"true\"} 3\n"), std::string::npos) << text;
  EXPECT_NE(text.find("parley_store_writes_total{sync=\"false\"} 1\n"), std::string::npos)
      << text;
  EXPECT_NE(text.find("parley_store_batches_total 7\n"), std::string::npos) << text;
}

TEST_F(StoreTest, DedupeClaimsOnceAndExpires) {
  ManualClock clock;
  EventDedupe dedupe(*kv_, clock, 60'000);
  ASSERT_TRUE(dedupe.Claim("slack", "Ev1").ok());
  // In flight: a concurrent redelivery is refused.
  EXPECT_EQ(dedupe.Claim("slack", "Ev1").code(), Status::Code::kAlreadyExists);
  // Another platform's event with the same id is independent.
  EXPECT_TRUE(dedupe.Claim("matrix", "Ev1").ok());
  WriteBatch b;
  dedupe.Record(b, "slack", "Ev1");
  ASSERT_TRUE(kv_->Write(b, true).ok());
  dedupe.Release("slack", "Ev1");
  EXPECT_EQ(dedupe.Claim("slack", "Ev1").code(), Status::Code::kAlreadyExists);
  // A claim released without recording may be processed again.
  dedupe.Release("matrix", "Ev1");
  EXPECT_TRUE(dedupe.Claim("matrix", "Ev1").ok());
  clock.Advance(60'001);
  EXPECT_TRUE(dedupe.Claim("slack", "Ev1").ok());
  dedupe.Release("slack", "Ev1");
  EXPECT_EQ(dedupe.SweepExpired().value(), 1u);
}

TEST_F(StoreTest, InboxAndOutboxRoundTrip) {
  Inbox inbox(*kv_);
  Outbox outbox(*kv_);
  InboundMessage m;
  m.platform = "webhook";
  m.event_id = "e/1";
  m.text = "hello";
  m.timestamp_ms = 5;
  OutboxEntry e;
  e.id = "o1";
  e.platform = "webhook";
  e.target = "http://127.0.0.1:9/x";
  e.payload = "{}";
  e.attempts = 2;
  WriteBatch b;
  inbox.Add(b, m);
  outbox.Put(b, e);
  ASSERT_TRUE(kv_->Write(b, true).ok());
  auto pending = inbox.LoadAll();
  ASSERT_EQ(pending->size(), 1u);
  EXPECT_EQ((*pending)[0].text, "hello");
  auto owed = outbox.Load("webhook");
  ASSERT_EQ(owed->size(), 1u);
  EXPECT_EQ((*owed)[0].attempts, 2);
  EXPECT_EQ((*owed)[0].target, e.target);
  EXPECT_EQ(outbox.Load("slack")->size(), 0u);
  WriteBatch r;
  inbox.Remove(r, m);
  outbox.Remove(r, "webhook", "o1");
  ASSERT_TRUE(kv_->Write(r, true).ok());
  EXPECT_TRUE(inbox.LoadAll()->empty());
  EXPECT_EQ(outbox.Count("webhook").value(), 0u);
}

}  // namespace
}  // namespace parley::store
