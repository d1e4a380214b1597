#pragma once
// Percent-encoding (RFC 3986) for URLs and form bodies.
// Thread-safety: pure functions.

#include <string>
#include <string_view>

namespace parley {

// Keeps the unreserved characters (A-Z a-z 0-9 - . _ ~) and those in also_keep (e.g. "/" for a
// URL path); every other byte becomes %XX (upper-case hex). For
// application/x-www-form-urlencoded, use the default (spaces become %20, which servers accept).
std::string PercentEncode(std::string_view s, std::string_view also_keep = {});

}  // namespace parley
