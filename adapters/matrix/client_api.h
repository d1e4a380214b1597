#pragma once
// Matrix client-server API calls over the daemon's asynchronous HttpClient: one attempt per Call,
// its outcome classified so callers decide to retry, wait, re-authenticate or give up. The access
// token goes in the Authorization header only, never in a URL or a log line.
// Thread-safety: thread-safe; callbacks run on io threads.

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>

#include "core/clock.h"
#include "core/metrics.h"
#include "core/secret.h"
#include "net/http.h"

namespace parley::matrix {

// The outcome of one call.
//   kOk            2xx with a JSON object body.
//   kRateLimited   429 (or errcode M_LIMIT_EXCEEDED); retry_after_ms from Retry-After (seconds
//                  or an HTTP date), else the body's retry_after_ms, else 1 s.
//   kTransient     transport error, timeout, 5xx, a body that is not a JSON object (proxy HTML
//                  pages, truncated JSON): retry with backoff.
//   kUnknownToken  401 M_UNKNOWN_TOKEN / M_MISSING_TOKEN; soft_logout as the server said.
//   kRefused       any other error ({errcode, error}): permanent for this call.
enum class Outcome { kOk, kRateLimited, kTransient, kUnknownToken, kRefused };
const char* OutcomeName(Outcome outcome);

struct ApiResult {
  Outcome outcome = Outcome::kTransient;
  nlohmann::json body;  // the parsed response (null when it was not JSON)
  std::string errcode;  // "M_FORBIDDEN", ... (empty for transport errors / non-JSON)
  std::string error;    // the server's message, or a transport description
  int http_status = 0;  // 0 for transport errors
  int64_t retry_after_ms = 0;
  bool soft_logout = false;
  bool ok() const { return outcome == Outcome::kOk; }
};

using ApiCallback = std::function<void(ApiResult)>;

// Parses a Retry-After header value: delta seconds or an IMF-fixdate (relative to now_ms).
// Returns -1 when absent or unparsable.
int64_t ParseRetryAfterMs(const std::string& value, int64_t now_ms);

// Classifies one HTTP answer (exposed for tests).
ApiResult Classify(Result<net::ClientResponse> response, int64_t now_ms);

class ClientApi {
 public:
  // homeserver: base URL without a trailing slash. Metrics:
  //   parley_matrix_requests_total{endpoint,outcome}.
  ClientApi(std::shared_ptr<net::HttpClient> http, std::string homeserver, const Clock& clock,
            MetricsRegistry& metrics);

  void SetAccessToken(Secret token);
  bool HasAccessToken() const;

  // method "GET"/"PUT"/"POST"; path starts with "/_matrix/..." (already percent-encoded);
  // body: null sends none (GET) — otherwise serialised. endpoint: a short name for metrics and
  // logs ("sync", "send", ...). timeout_ms: the whole transfer.
  // cancel (optional): set it to abort the request (it then completes as kTransient).
  void Call(const std::string& method, const std::string& path, const nlohmann::json& body,
            const std::string& endpoint, int timeout_ms, ApiCallback done, bool auth = true,
            std::shared_ptr<std::atomic<bool>> cancel = nullptr);

  const std::string& homeserver() const { return homeserver_; }

 private:
  std::shared_ptr<net::HttpClient> http_;
  std::string homeserver_;
  const Clock& clock_;
  MetricsRegistry& metrics_;
  mutable std::mutex mu_;
  Secret token_;
};

}  // namespace parley::matrix
