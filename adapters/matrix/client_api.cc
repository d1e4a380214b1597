#include "adapters/matrix/client_api.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <ctime>

namespace parley::matrix {
namespace {

using nlohmann::json;

constexpr int64_t kDefaultRetryMs = 1'000;
constexpr int64_t kMaxRetryMs = 3'600'000;

int MonthIndex(const std::string& m) {
  static const char* kMonths[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                  "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  for (int i = 0; i < 12; ++i) {
    if (m == kMonths[i]) return i;
  }
  return -1;
}

}  // namespace

const char* OutcomeName(Outcome outcome) {
  switch (outcome) {
    case Outcome::kOk:
      return "ok";
    case Outcome::kRateLimited:
      return "rate_limited";
    case Outcome::kTransient:
      return "transient";
    case Outcome::kUnknownToken:
      return "unknown_token";
    case Outcome::kRefused:
      return "refused";
  }
  return "unknown";
}

int64_t ParseRetryAfterMs(const std::string& raw, int64_t now_ms) {
  size_t b = 0, e = raw.size();
  while (b < e && std::isspace(static_cast<unsigned char>(raw[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(raw[e - 1]))) --e;
  const std::string value = raw.substr(b, e - b);
  if (value.empty()) return -1;
  if (std::all_of(value.begin(), value.end(),
                  [](unsigned char c) { return std::isdigit(c) != 0; })) {
    if (value.size() > 9) return kMaxRetryMs;
    return std::min<int64_t>(std::atoll(value.c_str()) * 1000, kMaxRetryMs);
  }
  // IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT".
  char wday[4] = {}, mon[4] = {}, zone[4] = {};
  int day = 0, year = 0, hh = 0, mm = 0, ss = 0;
  if (std::sscanf(value.c_str(), "%3s, %d %3s %d %d:%d:%d %3s", wday, &day, mon, &year, &hh, &mm,
                  &ss, zone) != 8) {
    return -1;
  }
  const int month = MonthIndex(mon);
  if (month < 0 || std::string(zone) != "GMT") return -1;
  std::tm tm{};
  tm.tm_year = year - 1900;
  tm.tm_mon = month;
  tm.tm_mday = day;
  tm.tm_hour = hh;
  tm.tm_min = mm;
  tm.tm_sec = ss;
  const int64_t at_ms = static_cast<int64_t>(timegm(&tm)) * 1000;
  return std::clamp<int64_t>(at_ms - now_ms, 0, kMaxRetryMs);
}

ApiResult Classify(Result<net::ClientResponse> response, int64_t now_ms) {
  ApiResult r;
  if (!response.ok()) {
    r.outcome = Outcome::kTransient;
    r.error = response.status().ToString();
    return r;
  }
  r.http_status = response->status;
  r.body = json::parse(response->body, nullptr, /*allow_exceptions=*/false);
  if (r.body.is_discarded()) r.body = json();
  if (r.body.is_object()) {
    const auto errcode = r.body.find("errcode");
    if (errcode != r.body.end() && errcode->is_string()) r.errcode = errcode->get<std::string>();
    const auto error = r.body.find("error");
    if (error != r.body.end() && error->is_string()) r.error = error->get<std::string>();
  }
  const int status = r.http_status;
  if (status == 429 || r.errcode == "M_LIMIT_EXCEEDED") {
    r.outcome = Outcome::kRateLimited;
    int64_t ms = ParseRetryAfterMs(net::FindHeader(response->headers, "retry-after"), now_ms);
    if (ms < 0 && r.body.is_object()) {
      const auto after = r.body.find("retry_after_ms");
      if (after != r.body.end() && after->is_number()) ms = after->get<int64_t>();
    }
    r.retry_after_ms = std::clamp<int64_t>(ms < 0 ? kDefaultRetryMs : ms, 0, kMaxRetryMs);
    if (r.error.empty()) r.error = "rate limited";
    return r;
  }
  if (status >= 200 && status < 300) {
    if (r.body.is_object()) {
      r.outcome = Outcome::kOk;
    } else {
      r.outcome = Outcome::kTransient;
      r.error = "response is not a JSON object (HTTP " + std::to_string(status) + ")";
    }
    return r;
  }
  if (status >= 500 || !r.body.is_object() || r.errcode.empty()) {
    // 5xx, or an error page that is not the Matrix error shape (a proxy's HTML, a 404 from
    // something that is not a homeserver): may pass.
    r.outcome = status >= 500 || !r.body.is_object() ? Outcome::kTransient : Outcome::kRefused;
    if (r.error.empty()) r.error = "HTTP " + std::to_string(status);
    return r;
  }
  if (status == 401 && (r.errcode == "M_UNKNOWN_TOKEN" || r.errcode == "M_MISSING_TOKEN")) {
    r.outcome = Outcome::kUnknownToken;
    const auto soft = r.body.find("soft_logout");
    r.soft_logout = soft != r.body.end() && soft->is_boolean() && soft->get<bool>();
    return r;
  }
  r.outcome = Outcome::kRefused;
  return r;
}

ClientApi::ClientApi(std::shared_ptr<net::HttpClient> http, std::string homeserver,
                     const Clock& clock, MetricsRegistry& metrics)
    : http_(std::move(http)), homeserver_(std::move(homeserver)), clock_(clock), metrics_(metrics) {
  while (!homeserver_.empty() && homeserver_.back() == '/') homeserver_.pop_back();
}

void ClientApi::SetAccessToken(Secret token) {
  std::lock_guard<std::mutex> lock(mu_);
  token_ = std::move(token);
}

bool ClientApi::HasAccessToken() const {
  std::lock_guard<std::mutex> lock(mu_);
  return !token_.empty();
}

void ClientApi::Call(const std::string& method, const std::string& path, const json& body,
                     const std::string& endpoint, int timeout_ms, ApiCallback done, bool auth,
                     std::shared_ptr<std::atomic<bool>> cancel) {
  net::ClientRequest req;
  req.method = method;
  req.url = homeserver_ + path;
  req.timeout_ms = timeout_ms;
  req.cancel = std::move(cancel);
  if (!body.is_null()) {
    req.body = body.dump(-1, ' ', false, json::error_handler_t::replace);
    req.headers.emplace_back("Content-Type", "application/json");
  }
  if (auth) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!token_.empty()) req.headers.emplace_back("Authorization", "Bearer " + token_.reveal());
  }
  req.headers.emplace_back("Accept", "application/json");
  const Clock* clock = &clock_;
  MetricsRegistry* metrics = &metrics_;
  http_->Request(std::move(req), [clock, metrics, endpoint,
                                  done = std::move(done)](Result<net::ClientResponse> response) {
    ApiResult r = Classify(std::move(response), clock->NowMs());
    metrics
        ->GetCounter("parley_matrix_requests_total", "Matrix client-server API requests",
                     "endpoint=\"" + endpoint + "\",outcome=\"" + OutcomeName(r.outcome) + "\"")
        .Add();
    if (!r.ok()) {
      spdlog::debug("matrix.api.error endpoint={} status={} errcode={} outcome={} error=\"{}\"",
                    endpoint, r.http_status, r.errcode, OutcomeName(r.outcome), r.error);
    }
    done(std::move(r));
  });
}

}  // namespace parley::matrix
