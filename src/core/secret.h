#pragma once
// A secret (token, signing key). Its value is reachable only through reveal(); streaming or
// formatting it prints "***", so it cannot end up in a log line by accident.
// Thread-safety: value type.

#include <ostream>
#include <string>

namespace parley {

class Secret {
 public:
  Secret() = default;
  explicit Secret(std::string value) : value_(std::move(value)) {}
  const std::string& reveal() const { return value_; }
  bool empty() const { return value_.empty(); }
  friend std::ostream& operator<<(std::ostream& os, const Secret&) { return os << "***"; }

 private:
  std::string value_;
};

}  // namespace parley
