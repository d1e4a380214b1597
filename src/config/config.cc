#include "config/config.h"

#include <fcntl.h>
#include <nlohmann/json.hpp>
#include <toml++/toml.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <set>
#include <sstream>
#include <string_view>

#include "config/env_expand.h"

namespace parley::config {
namespace {

constexpr int64_t kMaxInt = std::numeric_limits<int>::max();

const char* TypeName(toml::node_type type) {
  switch (type) {
    case toml::node_type::table:
      return "a table";
    case toml::node_type::array:
      return "an array";
    case toml::node_type::string:
      return "a string";
    case toml::node_type::integer:
      return "an integer";
    case toml::node_type::floating_point:
      return "a float";
    case toml::node_type::boolean:
      return "a boolean";
    case toml::node_type::date:
      return "a date";
    case toml::node_type::time:
      return "a time";
    case toml::node_type::date_time:
      return "a date-time";
    case toml::node_type::none:
      break;
  }
  return "nothing";
}

// A value for an error message: quoted, control characters escaped, long values cut.
std::string Quote(std::string_view s) {
  constexpr size_t kMax = 80;
  std::string out = "\"";
  for (size_t i = 0; i < s.size() && i < kMax; ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20 || c == 0x7f) {
      static const char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 0xf];
    } else {
      out += static_cast<char>(c);
    }
  }
  if (s.size() > kMax) out += "...";
  return out + "\"";
}

// A key as written in TOML: bare when possible, else quoted.
std::string KeyText(std::string_view key) {
  const bool bare = !key.empty() && std::all_of(key.begin(), key.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-';
  });
  return bare ? std::string(key) : Quote(key);
}

std::string FormatNumber(double v) {
  std::ostringstream os;
  os.precision(15);
  os << v;
  return os.str();
}

std::string RangeText(int64_t min, int64_t max) {
  if (max == kMaxInt || max == std::numeric_limits<int64_t>::max()) {
    return "must be at least " + std::to_string(min);
  }
  return "must be between " + std::to_string(min) + " and " + std::to_string(max);
}

uint32_t LineOf(const toml::node& node) { return node.source().begin.line; }

bool IsHttpUrl(const std::string& url) {
  for (std::string_view scheme : {"http://", "https://"}) {
    if (url.size() > scheme.size() && url.compare(0, scheme.size(), scheme) == 0) return true;
  }
  return false;
}

// Matrix ids: the sigil, a non-empty local part, ':' and a non-empty server name; no spaces or
// control characters.
bool IsMatrixId(std::string_view s, char sigil) {
  if (s.size() < 4 || s[0] != sigil) return false;
  const size_t colon = s.find(':');
  if (colon == std::string_view::npos || colon < 2 || colon + 1 >= s.size()) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    const auto u = static_cast<unsigned char>(c);
    return u > 0x20 && u != 0x7f;
  });
}

// Slack ids: one of `prefixes` followed by upper-case letters and digits ("C0123ABCD").
bool IsSlackId(std::string_view s, std::string_view prefixes) {
  if (s.size() < 2 || prefixes.find(s[0]) == std::string_view::npos) return false;
  return std::all_of(s.begin() + 1, s.end(),
                     [](char c) { return (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'); });
}

bool StartsWith(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && s.compare(0, prefix.size(), prefix) == 0;
}

// A string value after ${...} expansion, with what was written in the file.
struct StringValue {
  std::string value;
  std::string raw;
  // For error messages: `"8080"` or `"8080" (from "${PORT}")`.
  std::string Describe() const {
    return raw == value ? Quote(value) : Quote(value) + " (from " + Quote(raw) + ")";
  }
};

struct ErrorLine {
  uint32_t line;  // 0 = none applies
  size_t order;
  std::string text;
};

// Parses one document. Not thread-safe; one instance per parse.
class Parser {
 public:
  Parser(std::string file, const EnvLookup& env) : file_(std::move(file)), env_(env) {
    config_.file = file_;
  }

  Result<Config> Run(const std::string& text) {
    toml::table root;
    try {
      root = toml::parse(text, file_);
    } catch (const toml::parse_error& e) {
      const toml::source_position& at = e.source().begin;
      std::string where = file_;
      if (at.line > 0) where += ":" + std::to_string(at.line) + ":" + std::to_string(at.column);
      return Status::InvalidArgument(where +
                                     ": TOML syntax error: " + std::string(e.description()));
    }
    ReadRoot(root);
    ResolveDefaultStorePath();
    CheckAcrossKeys();
    if (!errors_.empty()) return Status::InvalidArgument(JoinErrors());
    return std::move(config_);
  }

 private:
  // Reads one key's value; `key` is the full dotted key, `line` the value's line.
  using Handler =
      std::function<void(const toml::node& value, const std::string& key, uint32_t line)>;
  using Fields = std::vector<std::pair<std::string_view, Handler>>;

  void Error(uint32_t line, const std::string& key, const std::string& what) {
    std::string text = file_;
    if (line > 0) text += ":" + std::to_string(line);
    text += ": " + key + ": " + what;
    errors_.push_back({line, errors_.size(), std::move(text)});
    bad_keys_.insert(key);
  }

  std::string JoinErrors() {
    // In file order; errors that have no line (missing values) last.
    std::sort(errors_.begin(), errors_.end(), [](const ErrorLine& a, const ErrorLine& b) {
      const uint32_t la = a.line == 0 ? std::numeric_limits<uint32_t>::max() : a.line;
      const uint32_t lb = b.line == 0 ? std::numeric_limits<uint32_t>::max() : b.line;
      return la != lb ? la < lb : a.order < b.order;
    });
    std::string out;
    for (const ErrorLine& e : errors_) {
      if (!out.empty()) out += '\n';
      out += e.text;
    }
    return out;
  }

  uint32_t KeyLine(const std::string& key) const {
    auto it = lines_.find(key);
    return it == lines_.end() ? 0 : it->second;
  }
  bool Given(const std::string& key) const { return lines_.count(key) > 0; }
  bool Bad(const std::string& key) const { return bad_keys_.count(key) > 0; }
  // True when `key` or anything inside it ("key.x", "key[0]...") has an error.
  bool BadUnder(const std::string& key) const {
    for (auto it = bad_keys_.lower_bound(key); it != bad_keys_.end(); ++it) {
      if (it->compare(0, key.size(), key) != 0) break;
      if (it->size() == key.size() || (*it)[key.size()] == '.' || (*it)[key.size()] == '[') {
        return true;
      }
    }
    return false;
  }

  void ReadTable(const toml::table& table, const std::string& prefix, const Fields& fields) {
    for (auto&& [k, v] : table) {
      const std::string key = prefix + "." + KeyText(k.str());
      const uint32_t line = LineOf(v) > 0 ? LineOf(v) : k.source().begin.line;
      const std::string_view name = k.str();
      auto it = std::find_if(fields.begin(), fields.end(),
                             [name](const auto& f) { return f.first == name; });
      if (it == fields.end()) {
        Error(k.source().begin.line > 0 ? k.source().begin.line : line, key, "unknown key");
        continue;
      }
      lines_[key] = line;
      it->second(v, key, line);
    }
  }

  const toml::table* Table(const toml::node& node, const std::string& key, uint32_t line) {
    const toml::table* t = node.as_table();
    if (t == nullptr) {
      Error(line, key, std::string("expected a table, got ") + TypeName(node.type()));
    }
    return t;
  }

  // ---- typed readers: nullopt after reporting an error ----

  std::optional<StringValue> String(const toml::node& node, const std::string& key, uint32_t line) {
    const auto* s = node.as_string();
    if (s == nullptr) {
      Error(line, key, std::string("expected a string, got ") + TypeName(node.type()));
      return std::nullopt;
    }
    StringValue out;
    out.raw = s->get();
    Result<std::string> expanded = internal::ExpandEnv(out.raw, env_);
    if (!expanded.ok()) {
      Error(line, key, expanded.status().message());
      return std::nullopt;
    }
    out.value = std::move(expanded).value();
    return out;
  }

  std::optional<int64_t> Integer(const toml::node& node, const std::string& key, uint32_t line,
                                 int64_t min, int64_t max) {
    const auto* i = node.as_integer();
    if (i == nullptr) {
      Error(line, key, std::string("expected an integer, got ") + TypeName(node.type()));
      return std::nullopt;
    }
    const int64_t v = i->get();
    if (v < min || v > max) {
      Error(line, key, RangeText(min, max) + ", got " + std::to_string(v));
      return std::nullopt;
    }
    return v;
  }

  std::optional<double> Number(const toml::node& node, const std::string& key, uint32_t line,
                               double min, double max) {
    double v = 0;
    if (const auto* f = node.as_floating_point()) {
      v = f->get();
    } else if (const auto* i = node.as_integer()) {
      v = static_cast<double>(i->get());
    } else {
      Error(line, key, std::string("expected a number, got ") + TypeName(node.type()));
      return std::nullopt;
    }
    if (!(v >= min && v <= max)) {  // also catches nan
      const std::string range =
          max == std::numeric_limits<double>::max()
              ? "must be at least " + FormatNumber(min)
              : "must be between " + FormatNumber(min) + " and " + FormatNumber(max);
      Error(line, key, range + ", got " + FormatNumber(v));
      return std::nullopt;
    }
    return v;
  }

  std::optional<bool> Bool(const toml::node& node, const std::string& key, uint32_t line) {
    const auto* b = node.as_boolean();
    if (b == nullptr) {
      Error(line, key,
            std::string("expected a boolean (true or false), got ") + TypeName(node.type()));
      return std::nullopt;
    }
    return b->get();
  }

  // An array of strings; each element is ${...}-expanded and, when `word` is set, must be
  // non-empty and free of whitespace.
  std::optional<std::vector<std::string>> StringList(const toml::node& node, const std::string& key,
                                                     uint32_t line, bool word) {
    const toml::array* a = node.as_array();
    if (a == nullptr) {
      Error(line, key, std::string("expected an array of strings, got ") + TypeName(node.type()));
      return std::nullopt;
    }
    std::vector<std::string> out;
    bool ok = true;
    for (size_t i = 0; i < a->size(); ++i) {
      const toml::node& item = *a->get(i);
      const std::string item_key = key + "[" + std::to_string(i) + "]";
      const uint32_t item_line = LineOf(item) > 0 ? LineOf(item) : line;
      std::optional<StringValue> s = String(item, item_key, item_line);
      if (!s) {
        ok = false;
        continue;
      }
      if (word && s->value.empty()) {
        Error(item_line, item_key, "must not be empty");
        ok = false;
        continue;
      }
      if (word && std::any_of(s->value.begin(), s->value.end(),
                              [](char c) { return std::isspace(static_cast<unsigned char>(c)); })) {
        Error(item_line, item_key, "must not contain whitespace, got " + s->Describe());
        ok = false;
        continue;
      }
      out.push_back(std::move(s->value));
    }
    if (!ok) return std::nullopt;
    return out;
  }

  // ---- handlers for the field tables ----

  Handler IntField(int* out, int64_t min, int64_t max) {
    return [this, out, min, max](const toml::node& n, const std::string& key, uint32_t line) {
      if (auto v = Integer(n, key, line, min, max)) *out = static_cast<int>(*v);
    };
  }

  Handler Int64Field(int64_t* out, int64_t min, int64_t max) {
    return [this, out, min, max](const toml::node& n, const std::string& key, uint32_t line) {
      if (auto v = Integer(n, key, line, min, max)) *out = *v;
    };
  }

  Handler NumberField(double* out, double min, double max) {
    return [this, out, min, max](const toml::node& n, const std::string& key, uint32_t line) {
      if (auto v = Number(n, key, line, min, max)) *out = *v;
    };
  }

  Handler BoolField(bool* out) {
    return [this, out](const toml::node& n, const std::string& key, uint32_t line) {
      if (auto v = Bool(n, key, line)) *out = *v;
    };
  }

  // A string taken literally: no ${NAME} expansion (JSON Schemas hold '$' in patterns).
  Handler LiteralStringField(std::string* out) {
    return [this, out](const toml::node& n, const std::string& key, uint32_t line) {
      const auto* s = n.as_string();
      if (s == nullptr) {
        Error(line, key, std::string("expected a string, got ") + TypeName(n.type()));
        return;
      }
      *out = s->get();
    };
  }

  Handler StringField(std::string* out) {
    return [this, out](const toml::node& n, const std::string& key, uint32_t line) {
      if (auto v = String(n, key, line)) *out = std::move(v->value);
    };
  }

  Handler EnumField(std::string* out, std::vector<std::string> allowed) {
    return [this, out, allowed = std::move(allowed)](const toml::node& n, const std::string& key,
                                                     uint32_t line) {
      auto v = String(n, key, line);
      if (!v) return;
      if (std::find(allowed.begin(), allowed.end(), v->value) == allowed.end()) {
        std::string list;
        for (const std::string& a : allowed) list += (list.empty() ? "" : ", ") + a;
        Error(line, key, "expected one of " + list + "; got " + v->Describe());
        return;
      }
      *out = std::move(v->value);
    };
  }

  // A file system path; relative paths are made absolute against the working directory.
  Handler PathField(std::string* out, bool required) {
    return [this, out, required](const toml::node& n, const std::string& key, uint32_t line) {
      auto v = String(n, key, line);
      if (!v) return;
      if (v->value.empty()) {
        if (required) {
          Error(line, key, "must not be empty");
        } else {
          out->clear();
        }
        return;
      }
      std::error_code ec;
      std::filesystem::path p = std::filesystem::absolute(v->value, ec);
      if (ec) {
        Error(line, key, "cannot make " + v->Describe() + " absolute: " + ec.message());
        return;
      }
      *out = p.lexically_normal().string();
    };
  }

  Handler ListenField(std::string* out, bool required) {
    return [this, out, required](const toml::node& n, const std::string& key, uint32_t line) {
      auto v = String(n, key, line);
      if (!v) return;
      if (v->value.empty() && !required) {
        out->clear();
        return;
      }
      Result<std::pair<std::string, uint16_t>> hp = SplitHostPort(v->value);
      if (!hp.ok()) {
        std::string what = hp.status().message();
        if (v->raw != v->value) what += " (from " + Quote(v->raw) + ")";
        Error(line, key, what);
        return;
      }
      *out = std::move(v->value);
    };
  }

  Handler UrlField(std::string* out) {
    return [this, out](const toml::node& n, const std::string& key, uint32_t line) {
      auto v = String(n, key, line);
      if (!v) return;
      if (!v->value.empty() && !IsHttpUrl(v->value)) {
        Error(line, key, "expected an http:// or https:// URL, got " + v->Describe());
        return;
      }
      *out = std::move(v->value);
    };
  }

  // Secrets must be one ${NAME} reference (an empty default allowed) or "" for none. Nothing
  // about the value reaches an error message.
  Handler SecretField(Secret* out) {
    return [this, out](const toml::node& n, const std::string& key, uint32_t line) {
      const auto* s = n.as_string();
      if (s == nullptr) {
        Error(line, key, std::string("expected a string, got ") + TypeName(n.type()));
        return;
      }
      const std::string& raw = s->get();
      if (raw.empty()) {
        *out = Secret();
        return;
      }
      std::optional<internal::EnvReference> ref = internal::ParseSoleReference(raw);
      if (!ref) {
        Error(line, key, "secrets must be given as ${ENV_VAR}, not literally");
        return;
      }
      if (ref->fallback && !ref->fallback->empty()) {
        Error(line, key,
              "secrets must be given as ${ENV_VAR}, not literally (a default in ${" + ref->name +
                  ":-...} must be empty)");
        return;
      }
      Result<std::string> value = internal::ExpandEnv(raw, env_);
      if (!value.ok()) {
        Error(line, key, value.status().message());
        return;
      }
      *out = Secret(std::move(value).value());
    };
  }

  // A string naming one of `choices`.
  template <typename E>
  Handler ChoiceField(E* out, std::vector<std::pair<std::string, E>> choices) {
    return [this, out, choices = std::move(choices)](const toml::node& n, const std::string& key,
                                                     uint32_t line) {
      auto v = String(n, key, line);
      if (!v) return;
      for (const auto& [name, value] : choices) {
        if (name == v->value) {
          *out = value;
          return;
        }
      }
      std::string list;
      for (const auto& choice : choices) list += (list.empty() ? "" : ", ") + choice.first;
      Error(line, key, "expected one of " + list + "; got " + v->Describe());
    };
  }

  // An array of strings, each checked by `problem` (empty: fine; otherwise what is wrong with
  // that item). Sets *out only when every item is fine.
  Handler CheckedStringListField(std::vector<std::string>* out,
                                 std::function<std::string(const StringValue&)> problem) {
    return [this, out, problem = std::move(problem)](const toml::node& n, const std::string& key,
                                                     uint32_t line) {
      const toml::array* a = n.as_array();
      if (a == nullptr) {
        Error(line, key, std::string("expected an array of strings, got ") + TypeName(n.type()));
        return;
      }
      std::vector<std::string> items;
      bool ok = true;
      for (size_t i = 0; i < a->size(); ++i) {
        const toml::node& item = *a->get(i);
        const std::string item_key = key + "[" + std::to_string(i) + "]";
        const uint32_t item_line = LineOf(item) > 0 ? LineOf(item) : line;
        std::optional<StringValue> v = String(item, item_key, item_line);
        if (!v) {
          ok = false;
          continue;
        }
        const std::string what = problem(*v);
        if (!what.empty()) {
          Error(item_line, item_key, what);
          ok = false;
          continue;
        }
        items.push_back(std::move(v->value));
      }
      if (ok) *out = std::move(items);
    };
  }

  enum class SlackIdKind { kUser, kChannel };

  // A list of Slack ids: users U…/W…, channels C…/G…. Names are refused: they can be renamed
  // and reused, ids cannot.
  Handler SlackIdListField(std::vector<std::string>* out, SlackIdKind kind) {
    return CheckedStringListField(out, [kind](const StringValue& v) -> std::string {
      const std::string& id = v.value;
      if (id.empty()) return "must not be empty";
      if (kind == SlackIdKind::kChannel) {
        if (IsSlackId(id, "D")) return "a DM id does not belong here: DMs follow slack.dm_policy";
        if (!IsSlackId(id, "CG")) return "use the channel id (C…), not its name";
        return "";
      }
      return IsSlackId(id, "UW") ? "" : "use the user id (U…), not a name";
    });
  }

  // The Web API base URL: http(s), ending in "/", no user info, query or fragment; plain
  // http:// only to a loopback host (a local test server), since the bot token travels in it.
  Handler SlackApiBaseUrlField(std::string* out) {
    return [this, out](const toml::node& n, const std::string& key, uint32_t line) {
      auto v = String(n, key, line);
      if (!v) return;
      if (!IsHttpUrl(v->value) || v->value.back() != '/') {
        Error(line, key,
              "expected an http:// or https:// URL ending in \"/\", got " + v->Describe());
        return;
      }
      if (CheckApiUrl(*v, key, line)) *out = v->value;
    };
  }

  // The homeserver's base URL: as for SlackApiBaseUrlField, without a path of /_matrix; a
  // trailing "/" is dropped.
  Handler MatrixHomeserverField(std::string* out) {
    return [this, out](const toml::node& n, const std::string& key, uint32_t line) {
      auto v = String(n, key, line);
      if (!v) return;
      if (!IsHttpUrl(v->value)) {
        Error(line, key,
              "expected an http:// or https:// URL, e.g. \"https://matrix.example.org\", got " +
                  v->Describe());
        return;
      }
      if (v->value.find("/_matrix") != std::string::npos) {
        Error(line, key,
              "give the homeserver's base URL without /_matrix/..., got " + v->Describe());
        return;
      }
      if (!CheckApiUrl(*v, key, line)) return;
      std::string url = v->value;
      while (url.size() > 8 && url.back() == '/') url.pop_back();
      *out = url;
    };
  }

  // An http(s) URL that a token travels to: no user info, query or fragment, a host, and plain
  // http:// only to a loopback host. Reports the problem and returns false.
  bool CheckApiUrl(const StringValue& v, const std::string& key, uint32_t line) {
    const std::string& url = v.value;
    const size_t start = url.find("://") + 3;
    const size_t end = url.find_first_of("/?#", start);
    const std::string authority = url.substr(start, end - start);
    if (authority.find('@') != std::string::npos) {
      // Not quoted: user info may hold a password.
      Error(line, key, "must not contain user info (user@ or user:password@)");
      return false;
    }
    if (url.find_first_of("?#") != std::string::npos) {
      Error(line, key, "must not have a query or fragment, got " + v.Describe());
      return false;
    }
    std::string host = authority;
    const size_t bracket = authority.find(']');
    const size_t colon = authority.find(':', bracket == std::string::npos ? 0 : bracket);
    if (colon != std::string::npos) {
      Result<std::pair<std::string, uint16_t>> hp = SplitHostPort(authority);
      if (!hp.ok()) {
        Error(line, key, "invalid host or port in " + v.Describe() + ": " + hp.status().message());
        return false;
      }
      host = hp->first;
    }
    if (host.empty()) {
      Error(line, key, "has no host, got " + v.Describe());
      return false;
    }
    if (StartsWith(url, "http://") && !IsLoopbackHost(host)) {
      Error(line, key,
            "http:// is allowed only for a loopback host (127.0.0.0/8, [::1], localhost); "
            "use https://, got " +
                v.Describe());
      return false;
    }
    return true;
  }

  // A list of Matrix ids with the given sigil ('@' users, '!' rooms): "<sigil>local:server".
  // With globs, '*' may stand for any run of characters (e.g. "@*:example.org").
  Handler MatrixIdListField(std::vector<std::string>* out, char sigil, bool globs) {
    return CheckedStringListField(out, [sigil, globs](const StringValue& v) -> std::string {
      if (IsMatrixId(v.value, sigil) && (globs || v.value.find('*') == std::string::npos)) {
        return "";
      }
      return std::string("expected a Matrix ") + (sigil == '@' ? "user" : "room") + " id (" +
             (sigil == '@' ? "@name:server" : "!id:server") +
             (globs ? "; * matches any characters" : "") + "), got " + v.Describe();
    });
  }

  Handler MatrixUserIdField(std::string* out) {
    return [this, out](const toml::node& n, const std::string& key, uint32_t line) {
      auto v = String(n, key, line);
      if (!v) return;
      if (!v->value.empty() &&
          (!IsMatrixId(v->value, '@') || v->value.find('*') != std::string::npos)) {
        Error(line, key,
              "expected the bot's full Matrix user id, e.g. \"@parley:example.org\", got " +
                  v->Describe());
        return;
      }
      *out = std::move(v->value);
    };
  }

  Handler DeviceIdField(std::string* out) {
    return [this, out](const toml::node& n, const std::string& key, uint32_t line) {
      auto v = String(n, key, line);
      if (!v) return;
      const bool ok = v->value.size() <= 128 &&
                      std::all_of(v->value.begin(), v->value.end(), [](char c) {
                        const auto u = static_cast<unsigned char>(c);
                        return u > 0x20 && u < 0x7f && c != '/';
                      });
      if (!ok) {
        Error(line, key,
              "expected printable ASCII without spaces or '/', at most 128 characters, got " +
                  v->Describe());
        return;
      }
      *out = std::move(v->value);
    };
  }

  Handler SlashCommandField(std::string* out) {
    return [this, out](const toml::node& n, const std::string& key, uint32_t line) {
      auto v = String(n, key, line);
      if (!v) return;
      const std::string& cmd = v->value;
      const bool spaces = std::any_of(cmd.begin(), cmd.end(), [](char c) {
        return std::isspace(static_cast<unsigned char>(c)) || static_cast<unsigned char>(c) < 0x20;
      });
      if (cmd.size() < 2 || cmd[0] != '/' || spaces) {
        Error(line, key,
              "must be \"/\" and a name without spaces, e.g. \"/parley\", got " + v->Describe());
        return;
      }
      *out = cmd;
    };
  }

  // An emoji name for reactions.add: "eyes", not ":eyes:".
  Handler ReactionField(std::string* out) {
    return [this, out](const toml::node& n, const std::string& key, uint32_t line) {
      auto v = String(n, key, line);
      if (!v) return;
      const std::string& name = v->value;
      const bool spaces = std::any_of(name.begin(), name.end(), [](char c) {
        return std::isspace(static_cast<unsigned char>(c)) || static_cast<unsigned char>(c) < 0x20;
      });
      if (name.empty() || spaces || name.front() == ':' || name.back() == ':') {
        Error(
            line, key,
            "expected an emoji name without colons or spaces, e.g. \"eyes\", got " + v->Describe());
        return;
      }
      *out = name;
    };
  }

  Handler TagsField(std::vector<std::string>* out) {
    return [this, out](const toml::node& n, const std::string& key, uint32_t line) {
      if (auto v = StringList(n, key, line, /*word=*/true)) *out = std::move(*v);
    };
  }

  // A table of HTTP header names to values ({ "X-Org" = "acme", "X-Key" = "${KEY}" }). Names
  // are tokens; values may not hold CR/LF. Values are never quoted in errors (they may be secret).
  Handler HeadersField(std::vector<std::pair<std::string, std::string>>* out) {
    return [this, out](const toml::node& n, const std::string& key, uint32_t line) {
      const toml::table* t = Table(n, key, line);
      if (t == nullptr) return;
      std::vector<std::pair<std::string, std::string>> headers;
      for (auto&& [k, v] : *t) {
        const std::string item_key = key + "." + KeyText(k.str());
        const uint32_t item_line = LineOf(v) > 0 ? LineOf(v) : line;
        const std::string name(k.str());
        const bool token = !name.empty() && std::all_of(name.begin(), name.end(), [](char ch) {
          return std::isalnum(static_cast<unsigned char>(ch)) || ch == '-' || ch == '_';
        });
        if (!token) {
          Error(item_line, item_key, "not a valid header name");
          continue;
        }
        auto value = String(v, item_key, item_line);
        if (!value) continue;
        if (value->value.find_first_of("\r\n") != std::string::npos) {
          Error(item_line, item_key, "header values must not contain line breaks");
          continue;
        }
        headers.emplace_back(name, std::move(value->value));
      }
      *out = std::move(headers);
    };
  }

  void ReadHttpTools(const toml::node& node, const std::string& key, uint32_t line) {
    ReadTableArray(node, key, line, [this](const toml::table& t, const std::string& item_key,
                                           uint32_t item_line) {
      HttpToolConfig tool;
      ReadTable(t, item_key,
                {
                    {"name", StringField(&tool.name)},
                    {"description", LiteralStringField(&tool.description)},
                    {"parameters", LiteralStringField(&tool.parameters)},
                    {"method", EnumField(&tool.method, {"GET", "POST", "PUT", "PATCH", "DELETE"})},
                    {"url", UrlField(&tool.url)},
                    {"headers", HeadersField(&tool.headers)},
                    {"body", LiteralStringField(&tool.body)},
                    {"timeout_ms", IntField(&tool.timeout_ms, 1, 600'000)},
                    {"max_response_bytes", Int64Field(&tool.max_response_bytes, 1, 64 << 20)},
                    {"keep", StringField(&tool.keep)},
                    {"confirm", BoolField(&tool.confirm)},
                    {"allow_channels", [this, &tool](const toml::node& n, const std::string& k,
                                                     uint32_t l) {
                       if (auto v = StringList(n, k, l, /*word=*/true)) tool.allow_channels = *v;
                     }},
                    {"allow_users", [this, &tool](const toml::node& n, const std::string& k,
                                                  uint32_t l) {
                       if (auto v = StringList(n, k, l, /*word=*/true)) tool.allow_users = *v;
                     }},
                    {"redact", [this, &tool](const toml::node& n, const std::string& k,
                                             uint32_t l) {
                       if (auto v = StringList(n, k, l, /*word=*/true)) tool.redact = *v;
                     }},
                });
      for (const char* required : {"name", "description", "parameters", "url"}) {
        const std::string k = item_key + "." + required;
        if (!Given(k)) Error(item_line, k, "required");
      }
      const bool name_ok =
          !tool.name.empty() && tool.name.size() <= 64 &&
          std::all_of(tool.name.begin(), tool.name.end(), [](char ch) {
            return std::isalnum(static_cast<unsigned char>(ch)) || ch == '_' || ch == '-';
          });
      if (Given(item_key + ".name") && !Bad(item_key + ".name") && !name_ok) {
        Error(KeyLine(item_key + ".name"), item_key + ".name",
              "must be 1 to 64 letters, digits, '_' or '-', got " + Quote(tool.name));
      }
      if (Given(item_key + ".parameters") && !Bad(item_key + ".parameters")) {
        nlohmann::json schema = nlohmann::json::parse(tool.parameters, nullptr, false);
        if (schema.is_discarded() || !schema.is_object()) {
          Error(KeyLine(item_key + ".parameters"), item_key + ".parameters",
                "must be a JSON Schema object, as a JSON string");
        }
      }
      if (!tool.body.empty() && !Bad(item_key + ".body")) {
        if (nlohmann::json::parse(tool.body, nullptr, false).is_discarded()) {
          Error(KeyLine(item_key + ".body"), item_key + ".body", "must be JSON text");
        }
      }
      for (const HttpToolConfig& other : config_.tools.http) {
        if (!tool.name.empty() && other.name == tool.name) {
          Error(KeyLine(item_key + ".name"), item_key + ".name",
                "duplicate tool name " + Quote(tool.name));
        }
      }
      config_.tools.http.push_back(std::move(tool));
    });
  }

  // A list of phrases (non-empty strings, spaces allowed).
  Handler PhraseListField(std::optional<std::vector<std::string>>* out) {
    return [this, out](const toml::node& n, const std::string& key, uint32_t line) {
      auto v = StringList(n, key, line, /*word=*/false);
      if (!v) return;
      for (size_t i = 0; i < v->size(); ++i) {
        if ((*v)[i].find_first_not_of(" \t") == std::string::npos) {
          Error(line, key + "[" + std::to_string(i) + "]", "must not be empty");
          return;
        }
      }
      *out = std::move(*v);
    };
  }

  Handler WordListField(std::vector<std::string>* out) {
    return [this, out](const toml::node& n, const std::string& key, uint32_t line) {
      if (auto v = StringList(n, key, line, /*word=*/true)) *out = std::move(*v);
    };
  }

  void ReadEscalationQueues(const toml::node& node, const std::string& key, uint32_t line) {
    ReadTableArray(node, key, line, [this](const toml::table& t, const std::string& item_key,
                                           uint32_t item_line) {
      EscalationQueueConfig q;
      ReadTable(t, item_key,
                {
                    {"name", StringField(&q.name)},
                    {"agents", StringField(&q.agents)},
                    {"patterns", [this, &q](const toml::node& n, const std::string& k,
                                            uint32_t l) {
                       if (auto v = StringList(n, k, l, /*word=*/false)) q.patterns = *v;
                     }},
                    {"topics", [this, &q](const toml::node& n, const std::string& k,
                                          uint32_t l) {
                       if (auto v = StringList(n, k, l, /*word=*/false)) q.topics = *v;
                     }},
                    {"channels", WordListField(&q.channels)},
                    {"platforms", WordListField(&q.platforms)},
                    {"policy", BoolField(&q.policy)},
                    {"priority", IntField(&q.priority, 1, 5)},
                    {"sla_minutes", NumberField(&q.sla_minutes, 0, 525'600)},
                    {"business_hours", StringField(&q.business_hours)},
                    {"oncall", StringField(&q.oncall)},
                    {"agent_users", WordListField(&q.agent_users)},
                });
      for (const char* required : {"name", "agents"}) {
        const std::string k = item_key + "." + required;
        if (!Given(k)) Error(item_line, k, "required");
      }
      const std::string agents_key = item_key + ".agents";
      if (Given(agents_key) && !Bad(agents_key)) {
        const size_t colon = q.agents.find(':');
        const std::string platform = q.agents.substr(0, colon);
        const bool known = platform == "webhook" || platform == "console" ||
                           platform == "slack" || platform == "matrix";
        if (colon == std::string::npos || colon + 1 >= q.agents.size() || !known) {
          Error(KeyLine(agents_key), agents_key,
                "must be \"<platform>:<channel>\" with platform webhook, console, slack or "
                "matrix, got " + Quote(q.agents));
        }
      }
      for (const EscalationQueueConfig& other : config_.escalation.queues) {
        if (!q.name.empty() && other.name == q.name) {
          Error(KeyLine(item_key + ".name"), item_key + ".name",
                "duplicate queue name " + Quote(q.name));
        }
      }
      config_.escalation.queues.push_back(std::move(q));
    });
  }

  // ---- sections ----

  void ReadRoot(const toml::table& root) {
    for (auto&& [k, v] : root) {
      const std::string key = KeyText(k.str());
      const uint32_t line = LineOf(v) > 0 ? LineOf(v) : k.source().begin.line;
      const std::string_view name = k.str();
          Fields fields = SectionFields(name);
      if (fields.empty()) {
        Error(k.source().begin.line > 0 ? k.source().begin.line : line, key,
              v.is_table() ? "unknown section" : "unknown key");
        continue;
      }
      lines_[key] = line;
      if (const toml::table* t = Table(v, key, line)) ReadTable(*t, key, fields);
    }
  }

  Fields SectionFields(std::string_view name) {
    Config& c = config_;
    if (name == "runtime") return {{"threads", IntField(&c.runtime.threads, 0, 256)}};
    if (name == "log") {
      return {
          {"level", EnumField(&c.log.level, {"trace", "debug", "info", "warn", "error"})},
          {"format", EnumField(&c.log.format, {"text", "json"})},
          {"file", PathField(&c.log.file, /*required=*/false)},
      };
    }
    if (name == "store") {
      return {
          {"path", PathField(&c.store.path, /*required=*/true)},
          {"retention_days", IntField(&c.store.retention_days, 0, 36500)},
          {"dedupe_hours", IntField(&c.store.dedupe_hours, 1, 87600)},
          {"sync_interval_us", IntField(&c.store.sync_interval_us, 0, 100'000)},
          {"memory_cache_mb", IntField(&c.store.memory_cache_mb, 0, 4096)},
      };
    }
    if (name == "server") {
      return {
          {"listen", ListenField(&c.server.listen, /*required=*/true)},
          {"admin_listen", ListenField(&c.server.admin_listen, /*required=*/false)},
          {"max_body_bytes", Int64Field(&c.server.max_body_bytes, 1, int64_t{1} << 30)},
          {"request_timeout_ms", IntField(&c.server.request_timeout_ms, 1, 3'600'000)},
          {"port_file", PathField(&c.server.port_file, /*required=*/false)},
      };
    }
    if (name == "knowledge") {
      return {
          {"sources", [this](const toml::node& n, const std::string& key,
                             uint32_t line) { ReadSources(n, key, line); }},
          {"grants", [this](const toml::node& n, const std::string& key,
                            uint32_t line) { ReadGrants(n, key, line); }},
          {"chunk_target_chars", IntField(&c.knowledge.chunk_target_chars, 1, 1'000'000)},
          {"chunk_max_chars", IntField(&c.knowledge.chunk_max_chars, 1, 10'000'000)},
          {"cache_mb", IntField(&c.knowledge.cache_mb, 0, 4096)},
      };
    }
    if (name == "engine") {
      return {
          {"min_confidence", NumberField(&c.engine.min_confidence, 0, 1)},
          {"max_passages", IntField(&c.engine.max_passages, 1, 100)},
          {"max_answer_sentences", IntField(&c.engine.max_answer_sentences, 1, 100)},
          {"memory_turns", IntField(&c.engine.memory_turns, 0, 1000)},
          {"memory_chars", IntField(&c.engine.memory_chars, 0, 10'000'000)},
      };
    }
    if (name == "policy") {
      return {
          {"user_rate_per_minute", NumberField(&c.policy.user_rate_per_minute, 0, 1e6)},
          {"user_burst", IntField(&c.policy.user_burst, 1, 1'000'000)},
          {"conversation_rate_per_minute",
           NumberField(&c.policy.conversation_rate_per_minute, 0, 1e6)},
          {"conversation_burst", IntField(&c.policy.conversation_burst, 1, 1'000'000)},
      };
    }
    if (name == "llm") {
      LlmConfig& l = c.llm;
      return {
          {"enabled", BoolField(&l.enabled)},
          {"base_url", UrlField(&l.base_url)},
          {"api_key", SecretField(&l.api_key)},
          {"model", StringField(&l.model)},
          {"system_prompt", StringField(&l.system_prompt)},
          {"temperature", NumberField(&l.temperature, -1, 2)},
          {"max_tokens", IntField(&l.max_tokens, 0, 1'000'000)},
          {"stream", BoolField(&l.stream)},
          {"connect_timeout_ms", IntField(&l.connect_timeout_ms, 1, 600'000)},
          {"first_token_timeout_ms", IntField(&l.first_token_timeout_ms, 1, 3'600'000)},
          {"idle_timeout_ms", IntField(&l.idle_timeout_ms, 1, 3'600'000)},
          {"total_timeout_ms", IntField(&l.total_timeout_ms, 1, 3'600'000)},
          {"max_retries", IntField(&l.max_retries, 0, 10)},
          {"breaker_failures", IntField(&l.breaker_failures, 1, 1000)},
          {"breaker_cooldown_ms", IntField(&l.breaker_cooldown_ms, 1, 3'600'000)},
          {"max_concurrent", IntField(&l.max_concurrent, 0, 100'000)},
          {"headers", HeadersField(&l.headers)},
          {"context_tokens", IntField(&l.context_tokens, 256, 10'000'000)},
          {"max_sources", IntField(&l.max_sources, 0, 50)},
          {"summary_chars", IntField(&l.summary_chars, 0, 100'000)},
          {"unsupported", EnumField(&l.unsupported, {"allow", "flag", "replace"})},
          {"max_tool_rounds", IntField(&l.max_tool_rounds, 0, 20)},
          {"turn_timeout_ms", IntField(&l.turn_timeout_ms, 1, 3'600'000)},
      };
    }
    if (name == "tools") {
      ToolsConfig& t = c.tools;
      return {
          {"enabled", BoolField(&t.enabled)},
          {"search_knowledge", BoolField(&t.search_knowledge)},
          {"escalate_to_human", BoolField(&t.escalate_to_human)},
          {"confirm_timeout_ms", IntField(&t.confirm_timeout_ms, 1000, 7 * 86'400'000)},
          {"audit_retention_days", IntField(&t.audit_retention_days, 0, 36500)},
          {"http", [this](const toml::node& n, const std::string& key,
                          uint32_t line) { ReadHttpTools(n, key, line); }},
      };
    }
    if (name == "escalation") {
      EscalationConfig& e = c.escalation;
      return {
          {"enabled", BoolField(&e.enabled)},
          {"request_phrases", PhraseListField(&e.request_phrases)},
          {"cancel_phrases", PhraseListField(&e.cancel_phrases)},
          {"low_confidence_turns", IntField(&e.low_confidence_turns, 0, 100)},
          {"low_confidence", NumberField(&e.low_confidence, 0, 1)},
          {"negative_feedback", BoolField(&e.negative_feedback)},
          {"utc_offset_minutes", IntField(&e.utc_offset_minutes, -720, 840)},
          {"summary_turns", IntField(&e.summary_turns, 1, 50)},
          {"llm_summary", BoolField(&e.llm_summary)},
          {"retention_days", IntField(&e.retention_days, 0, 36'500)},
          {"sla_renotify_minutes", IntField(&e.sla_renotify_minutes, 0, 10'080)},
          {"waiting_notice_minutes", IntField(&e.waiting_notice_minutes, 0, 1'440)},
          {"queues", [this](const toml::node& n, const std::string& key,
                            uint32_t line) { ReadEscalationQueues(n, key, line); }},
      };
    }
    if (name == "webhook") {
      return {
          {"enabled", BoolField(&c.webhook.enabled)},
          {"secret", SecretField(&c.webhook.secret)},
          {"insecure_no_auth", BoolField(&c.webhook.insecure_no_auth)},
          {"default_reply_url", UrlField(&c.webhook.default_reply_url)},
          {"max_skew_seconds", IntField(&c.webhook.max_skew_seconds, 1, 86'400)},
          {"delivery_timeout_ms", IntField(&c.webhook.delivery_timeout_ms, 1, 600'000)},
          {"delivery_max_attempts", IntField(&c.webhook.delivery_max_attempts, 1, 1000)},
      };
    }
    if (name == "console") return {{"user", StringField(&c.console.user)}};
    if (name == "slack") {
      SlackConfig& s = c.slack;
      return {
          {"enabled", BoolField(&s.enabled)},
          {"app_token", SecretField(&s.app_token)},
          {"bot_token", SecretField(&s.bot_token)},
          {"api_base_url", SlackApiBaseUrlField(&s.api_base_url)},
          {"connections", IntField(&s.connections, 1, 10)},
          {"thread_followups", BoolField(&s.thread_followups)},
          {"mention_required", BoolField(&s.mention_required)},
          {"dm_policy", ChoiceField(&s.dm_policy, {{"open", SlackDmPolicy::kOpen},
                                                   {"allowlist", SlackDmPolicy::kAllowlist},
                                                   {"disabled", SlackDmPolicy::kDisabled}})},
          {"dm_allowlist", SlackIdListField(&s.dm_allowlist, SlackIdKind::kUser)},
          {"channel_allowlist", SlackIdListField(&s.channel_allowlist, SlackIdKind::kChannel)},
          {"allowed_users", SlackIdListField(&s.allowed_users, SlackIdKind::kUser)},
          {"allow_bots", BoolField(&s.allow_bots)},
          {"refusal", ChoiceField(&s.refusal, {{"ephemeral", SlackRefusal::kEphemeral},
                                               {"silent", SlackRefusal::kSilent}})},
          {"working_signal",
           ChoiceField(&s.working_signal, {{"reaction", SlackWorkingSignal::kReaction},
                                           {"none", SlackWorkingSignal::kNone}})},
          {"working_reaction", ReactionField(&s.working_reaction)},
          {"working_delay_ms", IntField(&s.working_delay_ms, 0, 60'000)},
          {"slash_command", SlashCommandField(&s.slash_command)},
          {"feedback_buttons", BoolField(&s.feedback_buttons)},
          {"ping_interval_ms", IntField(&s.ping_interval_ms, 1000, 600'000)},
          {"pong_timeout_ms", IntField(&s.pong_timeout_ms, 100, 600'000)},
          {"silence_timeout_ms", IntField(&s.silence_timeout_ms, 1000, 3'600'000)},
          {"post_rate_per_channel", NumberField(&s.post_rate_per_channel, 0, 100)},
          {"post_burst", IntField(&s.post_burst, 1, 100)},
          {"stream", BoolField(&s.stream)},
          {"stream_interval_ms", IntField(&s.stream_interval_ms, 250, 60'000)},
          {"stream_edits_per_minute", IntField(&s.stream_edits_per_minute, 1, 1000)},
      };
    }
    if (name == "matrix") {
      MatrixConfig& m = c.matrix;
      return {
          {"enabled", BoolField(&m.enabled)},
          {"homeserver", MatrixHomeserverField(&m.homeserver)},
          {"user_id", MatrixUserIdField(&m.user_id)},
          {"access_token", SecretField(&m.access_token)},
          {"password", SecretField(&m.password)},
          {"device_id", DeviceIdField(&m.device_id)},
          {"device_name", StringField(&m.device_name)},
          {"sync_timeout_ms", IntField(&m.sync_timeout_ms, 0, 300'000)},
          {"timeline_limit", IntField(&m.timeline_limit, 1, 1000)},
          {"allowed_inviters", MatrixIdListField(&m.allowed_inviters, '@', true)},
          {"auto_join", BoolField(&m.auto_join)},
          {"room_allowlist", MatrixIdListField(&m.room_allowlist, '!', false)},
          {"allowed_users", MatrixIdListField(&m.allowed_users, '@', true)},
          {"mention_required", BoolField(&m.mention_required)},
          {"thread_followups", BoolField(&m.thread_followups)},
          {"threads", BoolField(&m.threads)},
          {"msgtype", EnumField(&m.msgtype, {"m.notice", "m.text"})},
          {"encrypted_rooms",
           ChoiceField(&m.encrypted_rooms, {{"decline", MatrixEncryptedRooms::kDecline},
                                            {"notice", MatrixEncryptedRooms::kNotice}})},
          {"typing", BoolField(&m.typing)},
          {"typing_delay_ms", IntField(&m.typing_delay_ms, 0, 60'000)},
          {"stream", BoolField(&m.stream)},
          {"stream_interval_ms", IntField(&m.stream_interval_ms, 250, 60'000)},
          {"stream_edits_per_minute", IntField(&m.stream_edits_per_minute, 1, 1000)},
      };
    }
    return {};
  }

  // An array of tables ([[key]]); calls `read` for each with its key "key[i]".
  template <typename Fn>
  void ReadTableArray(const toml::node& node, const std::string& key, uint32_t line, Fn read) {
    const toml::array* a = node.as_array();
    if (a == nullptr) {
      Error(line, key,
            "expected an array of tables ([[" + key + "]]), got " + TypeName(node.type()));
      return;
    }
    for (size_t i = 0; i < a->size(); ++i) {
      const toml::node& item = *a->get(i);
      const std::string item_key = key + "[" + std::to_string(i) + "]";
      const uint32_t item_line = LineOf(item) > 0 ? LineOf(item) : line;
      const toml::table* t = item.as_table();
      if (t == nullptr) {
        Error(item_line, item_key, std::string("expected a table, got ") + TypeName(item.type()));
        continue;
      }
      read(*t, item_key, item_line);
    }
  }

  void ReadSources(const toml::node& node, const std::string& key, uint32_t line) {
    ReadTableArray(node, key, line,
                   [this](const toml::table& t, const std::string& item_key, uint32_t item_line) {
                     KnowledgeSource source;
                     ReadTable(t, item_key,
                               {
                                   {"path", PathField(&source.path, /*required=*/true)},
                                   {"tags", TagsField(&source.tags)},
                                   {"url_base", StringField(&source.url_base)},
                               });
                     if (!Given(item_key + ".path")) {
                       Error(item_line, item_key + ".path", "required");
                     }
                     config_.knowledge.sources.push_back(std::move(source));
                   });
  }

  void ReadGrants(const toml::node& node, const std::string& key, uint32_t line) {
    ReadTableArray(
        node, key, line,
        [this](const toml::table& t, const std::string& item_key, uint32_t item_line) {
          AccessGrant grant;
          ReadTable(t, item_key,
                    {
                        {"conversations",
                         [this, &grant](const toml::node& n, const std::string& k, uint32_t l) {
                           if (auto v = StringList(n, k, l, /*word=*/true)) {
                             grant.conversations = std::move(*v);
                           }
                         }},
                        {"tags", TagsField(&grant.tags)},
                    });
          for (const char* field : {"conversations", "tags"}) {
            const std::string k = item_key + "." + field;
            if (BadUnder(k)) continue;
            const bool empty = std::string_view(field) == "tags" ? grant.tags.empty()
                                                                 : grant.conversations.empty();
            if (empty) {
              Error(Given(k) ? KeyLine(k) : item_line, k,
                    std::string("at least one ") +
                        (std::string_view(field) == "tags" ? "tag" : "conversation pattern") +
                        " is required");
            }
          }
          config_.knowledge.grants.push_back(std::move(grant));
        });
  }

  // The default store.path is relative too; resolve it like a value from the file.
  void ResolveDefaultStorePath() {
    if (std::filesystem::path(config_.store.path).is_absolute()) return;
    std::error_code ec;
    std::filesystem::path p = std::filesystem::absolute(config_.store.path, ec);
    if (ec) {
      Error(0, "store.path",
            "cannot make " + Quote(config_.store.path) + " absolute: " + ec.message());
      return;
    }
    config_.store.path = p.lexically_normal().string();
  }

  // ---- validation across keys ----

  void CheckAcrossKeys() {
    const Config& c = config_;
    if (c.knowledge.sources.empty() && !BadUnder("knowledge.sources")) {
      Error(Given("knowledge.sources") ? KeyLine("knowledge.sources") : 0, "knowledge.sources",
            "at least one source is required");
    }
    if (!Bad("knowledge.chunk_max_chars") && !Bad("knowledge.chunk_target_chars") &&
        c.knowledge.chunk_max_chars < c.knowledge.chunk_target_chars) {
      if (Given("knowledge.chunk_max_chars")) {
        Error(KeyLine("knowledge.chunk_max_chars"), "knowledge.chunk_max_chars",
              "must be at least knowledge.chunk_target_chars (" +
                  std::to_string(c.knowledge.chunk_target_chars) + "), got " +
                  std::to_string(c.knowledge.chunk_max_chars));
      } else {
        Error(KeyLine("knowledge.chunk_target_chars"), "knowledge.chunk_target_chars",
              "must be at most knowledge.chunk_max_chars (" +
                  std::to_string(c.knowledge.chunk_max_chars) + "), got " +
                  std::to_string(c.knowledge.chunk_target_chars));
      }
    }

    Result<std::pair<std::string, uint16_t>> listen = SplitHostPort(c.server.listen);
    if (listen.ok() && !Bad("server.listen") && !c.server.admin_listen.empty() &&
        !Bad("server.admin_listen")) {
      Result<std::pair<std::string, uint16_t>> admin = SplitHostPort(c.server.admin_listen);
      if (admin.ok() && admin->second != 0 && *admin == *listen) {
        Error(KeyLine("server.admin_listen"), "server.admin_listen",
              "must differ from server.listen (leave it empty to serve admin endpoints there)");
      }
    }

    if (c.webhook.insecure_no_auth && listen.ok() && !Bad("server.listen") &&
        !IsLoopbackHost(listen->first)) {
      Error(KeyLine("webhook.insecure_no_auth"), "webhook.insecure_no_auth",
            "allowed only when server.listen is a loopback address (127.0.0.0/8, [::1], "
            "localhost), got " +
                Quote(c.server.listen));
    }
    if (c.webhook.enabled && c.webhook.secret.empty() && !c.webhook.insecure_no_auth &&
        !Bad("webhook.secret") && !Bad("webhook.enabled") && !Bad("webhook.insecure_no_auth")) {
      uint32_t line = KeyLine("webhook.secret");
      if (line == 0) line = KeyLine("webhook.enabled");
      if (line == 0) line = KeyLine("webhook");
      Error(line, "webhook.secret",
            "required when the webhook is enabled: set it from ${ENV_VAR} (the variable is "
            "unset or empty), or set webhook.insecure_no_auth = true on a loopback "
            "server.listen, or webhook.enabled = false");
    }
    CheckSlack();
    CheckMatrix();
    CheckLlm();
  }

  void CheckMatrix() {
    const MatrixConfig& m = config_.matrix;
    if (!m.enabled || Bad("matrix.enabled")) return;
    uint32_t section_line = KeyLine("matrix.enabled");
    if (section_line == 0) section_line = KeyLine("matrix");
    auto line_of = [&](const std::string& key) {
      const uint32_t l = KeyLine(key);
      return l > 0 ? l : section_line;
    };
    if (m.homeserver.empty() && !Bad("matrix.homeserver")) {
      Error(line_of("matrix.homeserver"), "matrix.homeserver",
            "required when matrix.enabled = true: the homeserver's URL, e.g. "
            "\"https://matrix.example.org\"");
    }
    if (m.user_id.empty() && !Bad("matrix.user_id")) {
      Error(line_of("matrix.user_id"), "matrix.user_id",
            "required when matrix.enabled = true: the bot's user id, e.g. "
            "\"@parley:example.org\"");
    }
    if (Bad("matrix.access_token") || Bad("matrix.password")) return;
    const bool token = !m.access_token.empty();
    const bool password = !m.password.empty();
    if (token == password) {
      const std::string key = Given("matrix.password") ? "matrix.password" : "matrix.access_token";
      Error(line_of(key), key,
            token ? "give matrix.access_token or matrix.password, not both"
                  : "required when matrix.enabled = true: matrix.access_token (e.g. "
                    "\"${MATRIX_ACCESS_TOKEN}\") or matrix.password (e.g. "
                    "\"${MATRIX_PASSWORD}\"), from the environment" +
                        std::string(Given(key) ? " (the variable is unset or empty)" : ""));
    }
  }

  void CheckLlm() {
    const LlmConfig& l = config_.llm;
    if (!l.enabled || Bad("llm.enabled")) return;
    uint32_t section_line = KeyLine("llm.enabled");
    if (section_line == 0) section_line = KeyLine("llm");
    if (l.base_url.empty() && !Bad("llm.base_url")) {
      Error(section_line, "llm.base_url",
            "required when llm.enabled = true, e.g. \"https://api.openai.com/v1\" or "
            "\"http://127.0.0.1:8000/v1\"");
    }
    if (l.model.empty() && !Bad("llm.model")) {
      Error(Given("llm.model") ? KeyLine("llm.model") : section_line, "llm.model",
            "required when llm.enabled = true");
    }
    if (!l.base_url.empty() && !Bad("llm.base_url") && l.base_url.back() == '/') {
      Error(KeyLine("llm.base_url"), "llm.base_url",
            "must not end in \"/\" (\"/chat/completions\" is appended), got " +
                Quote(l.base_url));
    }
    if (!l.base_url.empty() && !Bad("llm.base_url") && StartsWith(l.base_url, "http://") &&
        !l.api_key.empty()) {
      const size_t start = 7;
      const size_t end = l.base_url.find_first_of("/?#", start);
      Result<std::pair<std::string, uint16_t>> hp =
          SplitHostPort(l.base_url.substr(start, end - start));
      const std::string host = hp.ok() ? hp->first : l.base_url.substr(start, end - start);
      if (!IsLoopbackHost(host)) {
        Error(KeyLine("llm.base_url"), "llm.base_url",
              "an API key would travel in clear text: use https://, or a loopback host for a "
              "local server");
      }
    }
  }

  void CheckSlack() {
    const SlackConfig& s = config_.slack;
    if (s.enabled) {
      CheckSlackToken(s.app_token, "slack.app_token", "an app-level token", "xapp-",
                      "SLACK_APP_TOKEN");
      CheckSlackToken(s.bot_token, "slack.bot_token", "a bot token", "xoxb-", "SLACK_BOT_TOKEN");
    }

    if (s.dm_policy == SlackDmPolicy::kAllowlist && s.dm_allowlist.empty() &&
        !BadUnder("slack.dm_allowlist") && !Bad("slack.dm_policy")) {
      const std::string k = Given("slack.dm_allowlist") ? "slack.dm_allowlist" : "slack.dm_policy";
      Error(KeyLine(k), "slack.dm_allowlist",
            "must list at least one user id when slack.dm_policy = \"allowlist\" (use "
            "\"disabled\" to refuse every DM)");
    }

    const int64_t liveness = int64_t{s.ping_interval_ms} + s.pong_timeout_ms;
    if (!Bad("slack.ping_interval_ms") && !Bad("slack.pong_timeout_ms") &&
        !Bad("slack.silence_timeout_ms") && s.silence_timeout_ms <= liveness) {
      // A healthy idle socket hears a pong once per ping interval; a shorter silence deadline
      // would drop it.
      std::string key = "slack.silence_timeout_ms";
      if (!Given(key))
        key = Given("slack.ping_interval_ms") ? "slack.ping_interval_ms" : "slack.pong_timeout_ms";
      Error(KeyLine(key), key,
            "slack.silence_timeout_ms (" + std::to_string(s.silence_timeout_ms) +
                ") must be greater than slack.ping_interval_ms + slack.pong_timeout_ms (" +
                std::to_string(liveness) + ")");
    }
  }

  // A token of an enabled adapter: present and of the right kind. Only fixed, public token
  // prefixes are ever named in a message, never the value.
  void CheckSlackToken(const Secret& token, const std::string& key, const std::string& kind,
                       std::string_view prefix, const std::string& example_var) {
    if (Bad(key)) return;
    uint32_t line = KeyLine(key);
    if (line == 0) line = KeyLine("slack.enabled");
    if (line == 0) line = KeyLine("slack");
    const std::string& v = token.reveal();
    if (v.empty()) {
      Error(line, key,
            "required when slack.enabled = true: " + kind + " (" + std::string(prefix) +
                "…) from the environment, e.g. \"${" + example_var + "}\"" +
                (Given(key) ? " (it is empty)" : ""));
      return;
    }
    if (!StartsWith(v, prefix) || v.size() == prefix.size()) {
      std::string what = "must be " + kind + " starting with " + std::string(prefix) +
                         "; the variable's value does not";
      if (v == prefix) {
        what = "must be " + kind + " starting with " + std::string(prefix) +
               "; the variable holds the prefix only";
      } else if (StartsWith(v, "xoxb-")) {
        what += " (it is a bot token, xoxb-…: are app_token and bot_token swapped?)";
      } else if (StartsWith(v, "xapp-")) {
        what += " (it is an app-level token, xapp-…: are app_token and bot_token swapped?)";
      } else if (StartsWith(v, "xoxp-")) {
        what += " (it is a user token, xoxp-…: use the bot token)";
      }
      Error(line, key, what);
      return;
    }
    if (std::any_of(v.begin(), v.end(), [](char c) {
          const auto u = static_cast<unsigned char>(c);
          return u <= 0x20 || u == 0x7f;
        })) {
      Error(line, key,
            "the variable's value contains whitespace or control characters (a trailing "
            "newline?)");
    }
  }

  std::string file_;
  const EnvLookup& env_;
  Config config_;
  std::vector<ErrorLine> errors_;
  std::map<std::string, uint32_t> lines_;  // full key -> line of every key given in the file
  std::set<std::string> bad_keys_;         // keys that already have an error
};

std::optional<std::string> ProcessEnv(const std::string& name) {
  const char* v = std::getenv(name.c_str());
  if (v == nullptr) return std::nullopt;
  return std::string(v);
}

}  // namespace

Result<Config> ParseConfig(const std::string& text, const std::string& name, const EnvLookup& env) {
  try {
    Parser parser(name, env);
    return parser.Run(text);
  } catch (const std::exception& e) {
    return Status::Internal(name +
                            ": unexpected error while reading the configuration: " + e.what());
  }
}

Result<Config> ParseConfig(const std::string& text, const std::string& name) {
  return ParseConfig(text, name, EnvLookup(ProcessEnv));
}

Result<Config> LoadConfig(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    const std::string what = path + ": cannot open: " + std::strerror(err);
    return err == ENOENT ? Status::NotFound(what) : Status::IoError(what);
  }
  std::string text;
  char buf[64 * 1024];
  while (true) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      return Status::IoError(path + ": cannot read: " + std::strerror(err));
    }
    text.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return ParseConfig(text, path);
}

}  // namespace parley::config
