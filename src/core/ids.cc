#include "core/ids.h"

#include <cstdint>
#include <random>

namespace parley {
namespace {

uint64_t RandomWord() {
  thread_local std::mt19937_64 engine([] {
    std::random_device device;
    std::seed_seq seq{device(), device(), device(), device()};
    return std::mt19937_64(seq);
  }());
  return engine();
}

std::string Hex(uint64_t v) {
  static const char kHex[] = "0123456789abcdef";
  std::string s(16, '0');
  for (int i = 15; i >= 0; --i) {
    s[i] = kHex[v & 0xf];
    v >>= 4;
  }
  return s;
}

}  // namespace

std::string NewId() { return Hex(RandomWord()) + Hex(RandomWord()); }
std::string NewShortId() { return Hex(RandomWord()); }

}  // namespace parley
