#pragma once
// Small text helpers shared by the tools module's sources. Internal: not for other modules.
// Thread-safety: pure functions.

#include <cstddef>
#include <string>

#include "core/utf8.h"

namespace parley::tools::internal {

// At most `max` bytes of s, cut at a UTF-8 character boundary (never inside a sequence).
inline std::string TruncateUtf8(const std::string& s, size_t max) {
  return std::string(Utf8Prefix(s, max));
}

// s with every byte that is not part of a well-formed UTF-8 sequence (RFC 3629: no overlongs,
// no surrogates, nothing above U+10FFFF) replaced by U+FFFD, so it can go into a JSON request.
inline std::string SanitizeUtf8(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    const size_t len = Utf8SequenceLength(s, i);
    if (len == 0) {
      out += "\xEF\xBF\xBD";
      ++i;
    } else {
      out.append(s, i, len);
      i += len;
    }
  }
  return out;
}

}  // namespace parley::tools::internal
