#pragma once
// UTF-8 well-formedness, for code that must hand on only valid text (JSON writers, tool output),
// and cutting text to a byte limit without splitting a character.
// Thread-safety: pure functions.

#include <cstddef>
#include <string_view>

namespace parley {

// Length of the well-formed UTF-8 sequence starting at s[i] (1 for ASCII), or 0 when none starts
// there (RFC 3629: no overlong forms, no surrogates, nothing above U+10FFFF, not truncated).
inline size_t Utf8SequenceLength(std::string_view s, size_t i) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  if (b0 < 0x80) return 1;
  size_t len = 0;
  unsigned char lo = 0x80;
  unsigned char hi = 0xBF;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    len = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    len = 3;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    len = 4;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  if (i + len > s.size()) return 0;
  const auto b1 = static_cast<unsigned char>(s[i + 1]);
  if (b1 < lo || b1 > hi) return 0;
  for (size_t k = 2; k < len; ++k) {
    const auto b = static_cast<unsigned char>(s[i + k]);
    if (b < 0x80 || b > 0xBF) return 0;
  }
  return len;
}

// Where to cut s to at most max bytes without splitting a UTF-8 sequence: s.size() when it fits,
// else the largest n <= max with s[n] not a continuation byte (0 when s[1..max] all are). Only
// continuation bytes are looked at; text that must be well-formed is sanitized separately.
inline size_t Utf8CutPoint(std::string_view s, size_t max) {
  if (s.size() <= max) return s.size();
  size_t cut = max;
  while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) --cut;
  return cut;
}

// At most max bytes of s, cut at a character boundary (see Utf8CutPoint).
inline std::string_view Utf8Prefix(std::string_view s, size_t max) {
  return s.substr(0, Utf8CutPoint(s, max));
}

}  // namespace parley
