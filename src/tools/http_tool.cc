#include "tools/http_tool.h"

#include <cctype>
#include <exception>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "core/percent.h"
#include "tools/registry.h"
#include "tools/schema.h"
#include "tools/text_util.h"

namespace parley::tools {

using Json = nlohmann::json;

namespace {

// A piece of the URL template: literal text, or a placeholder.
struct UrlPart {
  std::string text;  // literal text, or the argument name
  bool placeholder = false;
  bool raw = false;  // {+name}
};

std::string Dump(const Json& value) {
  return value.dump(-1, ' ', false, Json::error_handler_t::replace);
}

bool IEquals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(a[i])) !=
        std::tolower(static_cast<unsigned char>(b[i]))) {
      return false;
    }
  }
  return true;
}

Result<std::vector<UrlPart>> ParseTemplate(const std::string& url) {
  std::vector<UrlPart> parts;
  std::string literal;
  for (size_t i = 0; i < url.size(); ++i) {
    if (url[i] == '}') return Status::InvalidArgument("url: unmatched '}'");
    if (url[i] != '{') {
      literal += url[i];
      continue;
    }
    const size_t close = url.find('}', i + 1);
    if (close == std::string::npos) return Status::InvalidArgument("url: unclosed '{'");
    std::string name = url.substr(i + 1, close - i - 1);
    UrlPart part;
    part.placeholder = true;
    if (!name.empty() && name[0] == '+') {
      part.raw = true;
      name.erase(0, 1);
    }
    if (name.empty() || name.find('{') != std::string::npos) {
      return Status::InvalidArgument("url: malformed placeholder {" +
                                     url.substr(i + 1, close - i - 1) + "}");
    }
    if (!literal.empty()) parts.push_back({std::move(literal), false, false});
    literal.clear();
    part.text = std::move(name);
    parts.push_back(std::move(part));
    i = close;
  }
  if (!literal.empty()) parts.push_back({std::move(literal), false, false});
  return parts;
}

// The argument as URL text before escaping: strings as they are, null/missing as "", the rest as
// JSON.
std::string ArgumentText(const Json& arguments, const std::string& name) {
  auto it = arguments.find(name);
  if (it == arguments.end() || it->is_null()) return "";
  if (it->is_string()) return it->get<std::string>();
  return Dump(*it);
}

// {name}: percent-escaped; a value made only of dots is escaped entirely so it can never act as
// a "." or ".." path segment.
std::string EscapeComponent(const std::string& value) {
  if (!value.empty() && value.find_first_not_of('.') == std::string::npos) {
    std::string out;
    for (size_t i = 0; i < value.size(); ++i) out += "%2E";
    return out;
  }
  return PercentEncode(value);
}

// {+name}: the value is inserted as is, so it may only contain characters that are legal in a
// URL and cannot end the URL early or climb out of the configured path.
bool SafeRawValue(const std::string& value) {
  static const std::string kAllowed = ":/?[]@!$&'()*+,;=%-._~";
  for (char c : value) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (std::isalnum(u) && u < 0x80) continue;
    if (kAllowed.find(c) != std::string::npos) continue;
    return false;
  }
  size_t start = 0;
  while (start <= value.size()) {
    size_t end = value.find_first_of("/?", start);
    if (end == std::string::npos) end = value.size();
    const std::string segment = value.substr(start, end - start);
    if (segment == "." || segment == "..") return false;
    if (end < value.size() && value[end] == '?') break;  // the rest is a query
    start = end + 1;
  }
  return true;
}

// Replaces every string that is exactly "{name}" with the argument's value (null when missing).
Json FillBody(const Json& tmpl, const Json& arguments) {
  if (tmpl.is_string()) {
    const std::string& s = tmpl.get_ref<const std::string&>();
    if (s.size() >= 3 && s.front() == '{' && s.back() == '}') {
      auto it = arguments.find(s.substr(1, s.size() - 2));
      return it == arguments.end() ? Json(nullptr) : *it;
    }
    return tmpl;
  }
  if (tmpl.is_object()) {
    Json out = Json::object();
    for (auto it = tmpl.begin(); it != tmpl.end(); ++it)
      out[it.key()] = FillBody(it.value(), arguments);
    return out;
  }
  if (tmpl.is_array()) {
    Json out = Json::array();
    for (const Json& item : tmpl) out.push_back(FillBody(item, arguments));
    return out;
  }
  return tmpl;
}

class HttpTool final : public Tool, public std::enable_shared_from_this<HttpTool> {
 public:
  HttpTool(config::HttpToolConfig config, Json parameters, std::vector<UrlPart> url,
           std::optional<Json> body, std::optional<Json::json_pointer> keep,
           std::shared_ptr<net::HttpClient> http)
      : config_(std::move(config)),
        parameters_(std::move(parameters)),
        url_(std::move(url)),
        body_(std::move(body)),
        keep_(std::move(keep)),
        http_(std::move(http)) {
    for (const UrlPart& part : url_) {
      if (part.placeholder) in_template_.insert(part.text);
    }
    for (const auto& header : config_.headers) {
      if (IEquals(header.first, "content-type")) has_content_type_ = true;
    }
  }

  const std::string& name() const override { return config_.name; }
  const std::string& description() const override { return config_.description; }
  const Json& parameters() const override { return parameters_; }

  void Invoke(Json arguments, const ToolContext& context, ToolDone done) override {
    if (!arguments.is_object()) arguments = Json::object();
    net::ClientRequest request;
    request.method = config_.method;
    for (const UrlPart& part : url_) {
      if (!part.placeholder) {
        request.url += part.text;
        continue;
      }
      const std::string value = ArgumentText(arguments, part.text);
      if (part.raw) {
        if (!SafeRawValue(value)) {
          done(ToolResult{
              false, "argument " + part.text + " has characters not allowed in this URL", false});
          return;
        }
        request.url += value;
      } else {
        request.url += EscapeComponent(value);
      }
    }
    const bool query_method = config_.method == "GET" || config_.method == "DELETE";
    if (query_method) {
      std::string query;
      for (auto it = arguments.begin(); it != arguments.end(); ++it) {
        if (in_template_.count(it.key()) || it->is_null()) continue;
        if (!query.empty()) query += '&';
        query += PercentEncode(it.key()) + "=" + PercentEncode(ArgumentText(arguments, it.key()));
      }
      if (!query.empty()) {
        request.url += (request.url.find('?') == std::string::npos ? "?" : "&") + query;
      }
    }
    bool has_body = false;
    if (body_) {
      request.body = Dump(FillBody(*body_, arguments));
      has_body = true;
    } else if (!query_method) {
      request.body = Dump(arguments);
      has_body = true;
    }
    request.headers = config_.headers;
    if (has_body && !has_content_type_) {
      request.headers.emplace_back("Content-Type", "application/json");
    }
    request.timeout_ms = config_.timeout_ms;
    request.max_response_bytes = static_cast<size_t>(config_.max_response_bytes);

    auto self = shared_from_this();
    http_->Request(std::move(request),
                   [self, done = std::move(done)](Result<net::ClientResponse> response) {
                     done(self->Interpret(response));
                   });
  }

 private:
  ToolResult Interpret(const Result<net::ClientResponse>& response) const {
    const size_t max = static_cast<size_t>(config_.max_response_bytes);
    if (!response.ok()) {
      const Status& status = response.status();
      if (status.code() == Status::Code::kResourceExhausted) {
        return {false, "response too large", false};
      }
      if (status.code() == Status::Code::kDeadlineExceeded) {
        return {false, "request timed out", false};
      }
      return {false, "request failed: " + internal::TruncateUtf8(status.message(), 200), false};
    }
    const net::ClientResponse& r = response.value();
    if (r.status < 200 || r.status > 299) {
      return {false,
              "HTTP " + std::to_string(r.status) + ": " + internal::TruncateUtf8(r.body, 200),
              false};
    }
    if (r.body.size() > max) return {false, "response too large", false};
    if (!keep_) return {true, r.body, false};
    Json parsed = Json::parse(r.body, nullptr, /*allow_exceptions=*/false);
    if (parsed.is_discarded()) return {false, "response is not JSON", false};
    try {
      if (parsed.contains(*keep_))
        return {true, internal::TruncateUtf8(Dump(parsed.at(*keep_)), max), false};
    } catch (const std::exception&) {
      // An array index that is not a number, etc.: the pointer does not resolve.
    }
    return {false, "response has no " + config_.keep, false};
  }

  const config::HttpToolConfig config_;
  const Json parameters_;
  const std::vector<UrlPart> url_;
  const std::optional<Json> body_;
  const std::optional<Json::json_pointer> keep_;
  std::shared_ptr<net::HttpClient> http_;
  std::set<std::string> in_template_;
  bool has_content_type_ = false;
};

}  // namespace

Result<std::shared_ptr<Tool>> MakeHttpTool(const config::HttpToolConfig& config,
                                           std::shared_ptr<net::HttpClient> http) {
  const std::string label = "http tool " + config.name.substr(0, 80) + ": ";
  auto fail = [&](const std::string& problem) { return Status::InvalidArgument(label + problem); };
  if (!IsValidToolName(config.name)) return fail("name must match ^[a-zA-Z0-9_-]{1,64}$");
  if (!http) return fail("no HTTP client");

  Json parameters = Json::parse(config.parameters, nullptr, /*allow_exceptions=*/false);
  if (parameters.is_discarded() || !parameters.is_object()) {
    return fail("parameters is not a JSON object");
  }
  if (parameters.value("type", Json()) != Json("object")) {
    return fail("parameters must be an object schema (\"type\": \"object\")");
  }
  auto compiled = JsonSchema::Compile(parameters);
  if (!compiled.ok()) return fail("parameters: " + compiled.status().message());

  config::HttpToolConfig normalized = config;
  for (char& c : normalized.method)
    c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  const std::string& method = normalized.method;
  if (method != "GET" && method != "POST" && method != "PUT" && method != "PATCH" &&
      method != "DELETE") {
    return fail("method must be GET, POST, PUT, PATCH or DELETE");
  }

  const std::string& url = config.url;
  size_t host_start = 0;
  if (url.size() > 7 && IEquals(url.substr(0, 7), "http://")) {
    host_start = 7;
  } else if (url.size() > 8 && IEquals(url.substr(0, 8), "https://")) {
    host_start = 8;
  } else {
    return fail("url must be an absolute http:// or https:// URL");
  }
  if (host_start >= url.size() || url[host_start] == '/' || url[host_start] == '?' ||
      url[host_start] == '#') {
    return fail("url has no host");
  }
  for (char c : url) {
    if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f) {
      return fail("url contains whitespace or control characters");
    }
  }
  auto parts = ParseTemplate(url);
  if (!parts.ok()) return fail(parts.status().message());
  const Json properties = parameters.value("properties", Json::object());
  for (const UrlPart& part : *parts) {
    if (part.placeholder && (!properties.is_object() || !properties.contains(part.text))) {
      return fail("url placeholder {" + std::string(part.raw ? "+" : "") + part.text +
                  "} names no property of the parameters schema");
    }
  }

  std::optional<Json> body;
  if (!config.body.empty()) {
    Json parsed = Json::parse(config.body, nullptr, /*allow_exceptions=*/false);
    if (parsed.is_discarded()) return fail("body is not valid JSON");
    body = std::move(parsed);
  }

  std::optional<Json::json_pointer> keep;
  if (!config.keep.empty()) {
    try {
      keep = Json::json_pointer(config.keep);
    } catch (const std::exception&) {
      return fail("keep is not a JSON pointer (e.g. \"/data/items\")");
    }
  }
  if (config.timeout_ms <= 0) return fail("timeout_ms must be positive");
  if (config.max_response_bytes <= 0) return fail("max_response_bytes must be positive");

  return std::shared_ptr<Tool>(std::make_shared<HttpTool>(
      std::move(normalized), std::move(parameters), std::move(parts).value(), std::move(body),
      std::move(keep), std::move(http)));
}

}  // namespace parley::tools
