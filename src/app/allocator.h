// The daemon's memory allocator: which one the binary was linked with, its set-up before any
// thread starts, and the periodic return of freed memory to the system.
#pragma once

namespace parley::app {

// "jemalloc" or "glibc".
const char* AllocatorName();

// Call first thing in main, before any thread starts. glibc: two arenas and fixed 128 KiB trim
// and mmap thresholds, unless the operator set GLIBC_TUNABLES or MALLOC_ARENA_MAX. jemalloc:
// nothing to do (its options are compiled in; MALLOC_CONF overrides them).
void TuneAllocator();

// Gives freed memory back to the system after a burst; runs every 10 s on the work pool. glibc:
// malloc_trim, only when more than 32 MiB and more than half of the heap are free (it locks each
// arena while it walks it). jemalloc: purges the dirty pages that have outlived their decay time
// in every arena (jemalloc purges as it allocates, so an idle daemon would otherwise keep them).
void ReleaseFreeMemory();

}  // namespace parley::app
