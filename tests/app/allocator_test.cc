#include "app/allocator.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

namespace parley::app {
namespace {

// VmRSS of this process, in KiB.
long ResidentKib() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.compare(0, 6, "VmRSS:") == 0) return std::atol(line.c_str() + 6);
  }
  return -1;
}

TEST(AllocatorTest, NamesTheAllocatorTheBinaryUses) {
  const std::string name = AllocatorName();
#ifdef PARLEY_TEST_EXPECTS_JEMALLOC
  EXPECT_EQ(name, "jemalloc");
#else
  EXPECT_EQ(name, "glibc");
#endif
}

// A burst allocates 64 MiB in blocks the size of a turn's working buffers and frees them: within
// a few rounds of the daemon's periodic release the memory is back with the system.
TEST(AllocatorTest, MemoryFreedAfterABurstGoesBackToTheSystem) {
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "AddressSanitizer keeps freed memory in its quarantine";
#endif
  TuneAllocator();
  const long before = ResidentKib();
  ASSERT_GT(before, 0);
  constexpr size_t kBlock = 16 * 1024;
  constexpr size_t kBlocks = 4096;
  {
    std::vector<std::unique_ptr<char[]>> blocks;
    blocks.reserve(kBlocks);
    for (size_t i = 0; i < kBlocks; ++i) {
      blocks.emplace_back(new char[kBlock]);
      std::memset(blocks.back().get(), 1, kBlock);
    }
    ASSERT_GT(ResidentKib() - before, 48 * 1024) << "the burst did not make memory resident";
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(15);
  long now = ResidentKib();
  while (now - before > 16 * 1024 && std::chrono::steady_clock::now() < deadline) {
    ReleaseFreeMemory();
    now = ResidentKib();
  }
  EXPECT_LE(now - before, 16 * 1024) << "resident before " << before << " KiB, now " << now;
}

}  // namespace
}  // namespace parley::app
