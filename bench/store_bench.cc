// store_bench: what a lookup of an absent key costs in parley's LevelDB store (KvStore::Get, which
// reads through an iterator; see LevelDbStore::Get), with live keys around it and after a run of
// them was deleted at once, as the hourly dedupe sweep does when nothing newer is live.
//
//   build-bench/bench/store_bench [--keys N] [--lookups N]
//
// Writes N dedupe-like keys (v1/dedupe/slack/Ev<i*7>) to a fresh store in a temp dir, times
// `lookups` Gets of absent keys between them, deletes all N in batches of 1,000, times the same
// lookups again, then ten times as many more (while flushes and the compactions iterator read
// sampling sets off drop the deletions). Prints µs per lookup for each phase. The temp dir is
// removed.

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "store/kv_store.h"
#include "tests/support/temp_dir.h"

namespace parley::bench {
namespace {

std::string Key(int i) {
  char key[64];
  std::snprintf(key, sizeof(key), "v1/dedupe/slack/Ev%08d", i);
  return key;
}

// µs per Get of `lookups` absent keys (odd multiples of 7, plus 1), or -1 on a wrong answer.
double TimeAbsentLookups(store::KvStore& kv, int lookups, int keys) {
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < lookups; ++i) {
    if (!kv.Get(Key((i % keys) * 7 + 1)).status().IsNotFound()) return -1;
  }
  const auto us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() -
                                                            start).count();
  return us / lookups;
}

int Main(int argc, char** argv) {
  int keys = 100'000;
  int lookups = 100;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if ((a == "--keys" || a == "--lookups") && i + 1 < argc) {
      (a == "--keys" ? keys : lookups) = std::atoi(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: store_bench [--keys N] [--lookups N]\n");
      return 2;
    }
  }
  if (keys < 1000 || lookups < 1) {
    std::fprintf(stderr, "store_bench: --keys must be at least 1000, --lookups at least 1\n");
    return 2;
  }
  testing::TempDir tmp;
  auto opened = store::OpenLevelDb(tmp.Sub("db"));
  if (!opened.ok()) {
    std::fprintf(stderr, "store_bench: %s\n", opened.status().ToString().c_str());
    return 1;
  }
  store::KvStore& kv = **opened;
  auto write_all = [&](bool put) {
    for (int b = 0; b < keys / 1000; ++b) {
      store::WriteBatch batch;
      for (int i = b * 1000; i < (b + 1) * 1000; ++i) {
        if (put) {
          batch.Put(Key(i * 7), "1234567890123");
        } else {
          batch.Delete(Key(i * 7));
        }
      }
      if (!kv.Write(batch, false).ok()) return false;
    }
    return true;
  };
  if (!write_all(true)) return 1;
  const double live = TimeAbsentLookups(kv, lookups, keys);
  if (!write_all(false)) return 1;
  const double deleted = TimeAbsentLookups(kv, lookups, keys);
  const double later = TimeAbsentLookups(kv, lookups * 10, keys);
  if (live < 0 || deleted < 0 || later < 0) {
    std::fprintf(stderr, "store_bench: a lookup of an absent key found something\n");
    return 1;
  }
  std::printf("absent-key Get, %d keys: %.1f us with the keys live; %.1f us right after deleting "
              "them all; %.1f us over the next %d lookups\n",
              (keys / 1000) * 1000, live, deleted, later, lookups * 10);
  return 0;
}

}  // namespace
}  // namespace parley::bench

int main(int argc, char** argv) { return parley::bench::Main(argc, argv); }
