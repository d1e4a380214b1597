// SplitHostPort and IsLoopbackHost (declared in config/config.h).

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cstring>

#include "config/config.h"

namespace parley::config {
namespace {

std::string Quoted(const std::string& s) { return "\"" + s + "\""; }

bool IsDigit(char c) { return c >= '0' && c <= '9'; }

bool IsIpv4(const std::string& host) {
  in_addr addr{};
  return inet_pton(AF_INET, host.c_str(), &addr) == 1;
}

bool IsIpv6(const std::string& host) {
  in6_addr addr{};
  return inet_pton(AF_INET6, host.c_str(), &addr) == 1;
}

// RFC 1123 host name: dot-separated labels of 1..63 letters, digits and '-', not starting or
// ending with '-'; at most 253 characters; an optional trailing dot. The last label must not be
// all digits (that would be a malformed IPv4 address).
bool IsHostName(const std::string& host) {
  std::string name = host;
  if (!name.empty() && name.back() == '.') name.pop_back();
  if (name.empty() || name.size() > 253) return false;
  size_t start = 0;
  bool last_all_digits = false;
  while (start <= name.size()) {
    size_t dot = name.find('.', start);
    if (dot == std::string::npos) dot = name.size();
    const std::string label = name.substr(start, dot - start);
    if (label.empty() || label.size() > 63 || label.front() == '-' || label.back() == '-') {
      return false;
    }
    last_all_digits = true;
    for (char c : label) {
      const bool alnum = IsDigit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
      if (!alnum && c != '-') return false;
      if (!IsDigit(c)) last_all_digits = false;
    }
    start = dot + 1;
  }
  return !last_all_digits;
}

}  // namespace

Result<std::pair<std::string, uint16_t>> SplitHostPort(const std::string& host_port) {
  const std::string bad_form = "expected \"HOST:PORT\", got " + Quoted(host_port);
  std::string host;
  std::string port;
  if (!host_port.empty() && host_port.front() == '[') {
    const size_t close = host_port.find(']');
    if (close == std::string::npos || close + 1 >= host_port.size() ||
        host_port[close + 1] != ':') {
      return Status::InvalidArgument("expected \"[IPv6]:PORT\", got " + Quoted(host_port));
    }
    host = host_port.substr(1, close - 1);
    port = host_port.substr(close + 2);
    if (!IsIpv6(host)) {
      return Status::InvalidArgument("invalid IPv6 address " + Quoted(host) + " in " +
                                     Quoted(host_port));
    }
  } else {
    const size_t colon = host_port.rfind(':');
    if (colon == std::string::npos) return Status::InvalidArgument(bad_form);
    host = host_port.substr(0, colon);
    port = host_port.substr(colon + 1);
    if (host.find(':') != std::string::npos) {
      return Status::InvalidArgument(
          "an IPv6 address must be in brackets, e.g. \"[::1]:8080\", got " + Quoted(host_port));
    }
    if (host.empty()) {
      return Status::InvalidArgument("missing host in " + Quoted(host_port) +
                                     " (use 0.0.0.0 or [::] for all interfaces)");
    }
    bool dotted_digits = true;
    for (char c : host) dotted_digits = dotted_digits && (IsDigit(c) || c == '.');
    if (dotted_digits ? !IsIpv4(host) : !IsHostName(host)) {
      return Status::InvalidArgument("invalid host " + Quoted(host) + " in " + Quoted(host_port));
    }
  }
  if (port.empty() || port.size() > 5) {
    return Status::InvalidArgument("invalid port " + Quoted(port) + " in " + Quoted(host_port) +
                                   " (expected 0..65535)");
  }
  uint32_t value = 0;
  for (char c : port) {
    if (!IsDigit(c)) {
      return Status::InvalidArgument("invalid port " + Quoted(port) + " in " + Quoted(host_port) +
                                     " (expected 0..65535)");
    }
    value = value * 10 + static_cast<uint32_t>(c - '0');
  }
  if (value > 65535) {
    return Status::InvalidArgument("invalid port " + Quoted(port) + " in " + Quoted(host_port) +
                                   " (expected 0..65535)");
  }
  return std::make_pair(host, static_cast<uint16_t>(value));
}

bool IsLoopbackHost(const std::string& host) {
  std::string h = host;
  if (h.size() >= 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  std::string lower;
  for (char c : h) lower += (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
  if (lower == "localhost" || lower == "localhost.") return true;
  in_addr v4{};
  if (inet_pton(AF_INET, h.c_str(), &v4) == 1) {
    return (ntohl(v4.s_addr) >> 24) == 127;
  }
  in6_addr v6{};
  if (inet_pton(AF_INET6, h.c_str(), &v6) == 1) {
    static const unsigned char kLoopback[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
    if (std::memcmp(v6.s6_addr, kLoopback, 16) == 0) return true;
    static const unsigned char kMappedPrefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    return std::memcmp(v6.s6_addr, kMappedPrefix, 12) == 0 && v6.s6_addr[12] == 127;
  }
  return false;
}

}  // namespace parley::config
