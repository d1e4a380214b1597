// parley: a team-chat AI bot daemon. main only hands over to the composition root.

#include <malloc.h>

#include <cstdlib>

#include "app/commands.h"

int main(int argc, char** argv) {
  // glibc's allocator, tuned for a small resident set under load, before any thread starts:
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
  return parley::app::Main(argc, argv);
}
