#include "app/allocator.h"

#include <malloc.h>

#include <atomic>
#include <cstdlib>
#include <string>

#include <spdlog/spdlog.h>

#include "core/clock.h"

#ifdef PARLEY_WITH_JEMALLOC
#include <jemalloc/jemalloc.h>

// jemalloc reads this when it initialises, at the first allocation; MALLOC_CONF in the
// environment overrides it. At 2,000 Slack events/s for 30 s (bench/README.md, Slack), against
// glibc's allocator tuned as in TuneAllocator: p99 15–16 ms instead of 30–48, ~7% less CPU per
// event, and the same resident set:
// - narenas:2: one arena per core. The default (four per core) keeps freed memory in each, for
//   about 1.5 MiB more RSS at the same speed, since the thread caches take most of the traffic.
// - dirty_decay_ms:1000: freed pages go back to the system after ~1 s instead of ~10 s.
// - muzzy_decay_ms:0: they are given back with MADV_DONTNEED, so RSS shows it at once, rather
//   than MADV_FREE, which leaves them counted until the kernel runs short.
extern "C" {
// NOLINTNEXTLINE: the name and type jemalloc looks up.
const char* malloc_conf = "narenas:2,dirty_decay_ms:1000,muzzy_decay_ms:0";
}
#endif

namespace parley::app {

#ifdef PARLEY_WITH_JEMALLOC

const char* AllocatorName() { return "jemalloc"; }

void TuneAllocator() {}

void ReleaseFreeMemory() {
  const std::string all = "arena." + std::to_string(MALLCTL_ARENAS_ALL) + ".decay";
  const int64_t t0 = MonotonicNanos();
  const int rc = mallctl(all.c_str(), nullptr, nullptr, nullptr, 0);
  if (rc != 0) {
    static std::atomic<bool> warned{false};
    if (!warned.exchange(true)) spdlog::warn("memory.release_failed mallctl={} error={}", all, rc);
    return;
  }
  spdlog::trace("memory.released ms={:.1f}", static_cast<double>(MonotonicNanos() - t0) / 1e6);
}

#else

const char* AllocatorName() { return "glibc"; }

void TuneAllocator() {
  // - at most two arenas (the default is 8 per core, each holding freed memory of its own);
  // - allocations of 128 KiB and more mapped on their own and returned when freed, and free
  //   memory above 128 KiB at an arena's top given back (by default both thresholds grow with
  //   the largest block freed, up to 32 MiB, and freed memory then stays resident).
  // Measured at 2,000 Slack events/s for 30 s: 28 MiB anonymous memory instead of 32, at the same
  // CPU per event (bench/README.md). An operator who tunes the allocator (GLIBC_TUNABLES or
  // MALLOC_ARENA_MAX) keeps their settings: then none of this is applied.
  if (std::getenv("GLIBC_TUNABLES") == nullptr && std::getenv("MALLOC_ARENA_MAX") == nullptr) {
    mallopt(M_ARENA_MAX, 2);
    mallopt(M_TRIM_THRESHOLD, 128 * 1024);
    mallopt(M_MMAP_THRESHOLD, 128 * 1024);
  }
}

void ReleaseFreeMemory() {
  constexpr size_t kMinFree = 32u << 20;
  const struct mallinfo2 info = mallinfo2();
  const size_t free_bytes = info.fordblks;
  if (free_bytes < kMinFree || free_bytes < info.uordblks) return;
  const int64_t t0 = MonotonicNanos();
  malloc_trim(0);
  spdlog::debug("memory.trimmed free_mib={} in_use_mib={} ms={:.1f}", free_bytes >> 20,
                info.uordblks >> 20, static_cast<double>(MonotonicNanos() - t0) / 1e6);
}

#endif

}  // namespace parley::app
