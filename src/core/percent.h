#pragma once
// Percent-encoding (RFC 3986) for URLs and form bodies.
// Thread-safety: pure functions.

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace parley {

// Keeps the unreserved characters (A-Z a-z 0-9 - . _ ~) and those in also_keep (e.g. "/" for a
// URL path); every other byte becomes %XX (upper-case hex). For
// application/x-www-form-urlencoded, use the default (spaces become %20, which servers accept).
std::string PercentEncode(std::string_view s, std::string_view also_keep = {});

// Decodes %XX sequences and, with plus_is_space (query strings, forms), '+' as a space. A '%'
// not followed by two hex digits is kept as it is.
std::string PercentDecode(std::string_view s, bool plus_is_space = true);

// The name=value pairs of a URL query string ("a=1&b=x%20y"), decoded, in order; a pair without
// '=' has an empty value; empty pairs are skipped.
std::vector<std::pair<std::string, std::string>> ParseQuery(std::string_view query);

}  // namespace parley
