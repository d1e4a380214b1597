// Helpers shared by the HTTP server and client.

#include "net/ascii.h"
#include "net/http.h"

namespace parley::net {
namespace {

using internal::AsciiIEquals;
using internal::AsciiLower;

}  // namespace

std::string FindHeader(const Headers& headers, std::string_view name) {
  for (const auto& [key, value] : headers) {
    if (AsciiIEquals(key, name)) return value;
  }
  return std::string();
}

}  // namespace parley::net
