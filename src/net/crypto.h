#pragma once
// Message signing for the webhook: HMAC-SHA256 (OpenSSL) and constant-time comparison.
// Thread-safety: pure functions.

#include <string>
#include <string_view>

namespace parley::net {

// Lowercase hex of HMAC-SHA256(key, data).
std::string HmacSha256Hex(std::string_view key, std::string_view data);
// Lowercase hex of SHA-256(data).
std::string Sha256Hex(std::string_view data);
// Compares in time independent of where the inputs differ (lengths may leak).
bool ConstantTimeEquals(std::string_view a, std::string_view b);

}  // namespace parley::net
