#pragma once
// Glob patterns for ids ("webhook:staff-*", "slack:C0123*"): '*' matches any run of characters
// (including none); every other character matches itself, case-sensitively.
// Thread-safety: pure function.

#include <string_view>

namespace parley {

bool GlobMatch(std::string_view pattern, std::string_view text);

}  // namespace parley
