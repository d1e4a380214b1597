#pragma once
// Random identifiers for turns, messages and deliveries.
// Thread-safety: thread-safe.

#include <string>

namespace parley {

// 128 random bits as 32 lowercase hex characters.
std::string NewId();
// A shorter id (64 bits, 16 hex characters) for turn ids in log lines.
std::string NewShortId();

}  // namespace parley
