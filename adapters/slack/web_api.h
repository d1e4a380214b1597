#pragma once
// Slack Web API calls over the daemon's asynchronous HTTP client: one attempt per Call, its
// outcome classified so callers can decide to retry, wait or give up. Rate limits are tracked
// per "limit key" (the method, or method + channel for chat.postMessage): after an HTTP 429 the
// key is paused for Retry-After and PausedForMs() tells callers how long to wait.
// Tokens go in the Authorization header only, never in a URL or a log line.
// Thread-safety: thread-safe; callbacks run on io threads.

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/clock.h"
#include "core/metrics.h"
#include "core/secret.h"
#include "core/status.h"
#include "net/http.h"

namespace parley::slack {

enum class Token { kBot, kApp };

// The outcome of one call.
//   kOk              ok:true; body is the response.
//   kRateLimited     HTTP 429 (or ok:false "ratelimited"); retry_after_ms from Retry-After
//                    (at least 1 s).
//   kTransient       transport error, timeout, 5xx, or a body that is not a JSON object:
//                    retry with backoff.
//   kAuth            invalid_auth, not_authed, account_inactive, token_revoked, token_expired,
//                    no_permission, missing_scope, not_allowed_token_type: a configuration
//                    problem; retrying does not help.
//   kRefused         any other ok:false error (channel_not_found, not_in_channel,
//                    msg_too_long, ...): permanent for this call.
enum class Outcome { kOk, kRateLimited, kTransient, kAuth, kRefused };
const char* OutcomeName(Outcome outcome);

struct ApiResult {
  Outcome outcome = Outcome::kTransient;
  nlohmann::json body;      // the parsed response (null when it was not JSON)
  std::string error;        // Slack's "error" string, or a transport description
  int http_status = 0;      // 0 for transport errors
  int64_t retry_after_ms = 0;
  bool ok() const { return outcome == Outcome::kOk; }
};

using ApiCallback = std::function<void(ApiResult)>;

class WebApi {
 public:
  // base_url ends in "/" (e.g. https://slack.com/api/). Metrics:
  //   parley_slack_api_calls_total{method,outcome}, parley_slack_api_errors_total{method,error}.
  WebApi(std::shared_ptr<net::HttpClient> http, std::string base_url, Secret bot_token,
         Secret app_token, const Clock& clock, MetricsRegistry& metrics);

  // POSTs args as JSON to base_url + method. limit_key: the rate-limit bucket to pause on a 429
  // (empty = method). Does not wait for a pause itself: callers check PausedForMs first.
  void Call(const std::string& method, const nlohmann::json& args, Token token,
            ApiCallback done, const std::string& limit_key = "");
  // The same with args already written as a JSON object's text (BuildPostMessageText).
  void CallWithJsonText(const std::string& method, std::string args, Token token,
                        ApiCallback done, const std::string& limit_key = "");

  // POSTs args form-encoded (application/x-www-form-urlencoded): the read methods such as
  // conversations.history and conversations.replies take no JSON bodies.
  void CallForm(const std::string& method,
                const std::vector<std::pair<std::string, std::string>>& args, Token token,
                ApiCallback done, const std::string& limit_key = "");

  // POSTs body to a response_url (slash commands, interactions); no token. kOk on any 2xx.
  void PostResponseUrl(const std::string& url, const nlohmann::json& body, ApiCallback done);

  // Milliseconds left in the pause of limit_key (0 = not paused).
  int64_t PausedForMs(const std::string& limit_key) const;

  const std::string& base_url() const { return base_url_; }

 private:
  const Secret& TokenOf(Token token) const;
  // One POST; token null = no Authorization header and no Slack body expected (response_url).
  void Post(const std::string& method, std::string url, std::string body,
            const char* content_type, const Secret* token, const std::string& limit_key,
            ApiCallback done);
  // Classifies the answer (see Outcome), pauses limit_key on a 429, counts it.
  void Finish(const std::string& method, const std::string& limit_key, bool slack_body,
              Result<net::ClientResponse> response, ApiCallback done);

  std::shared_ptr<net::HttpClient> http_;
  std::string base_url_;
  Secret bot_token_;
  Secret app_token_;
  const Clock& clock_;
  MetricsRegistry& metrics_;
  mutable std::mutex mu_;
  std::map<std::string, int64_t> paused_until_ms_;
};

// Whether url may receive a response_url POST: https:// on hooks.slack.com (Slack's), or any
// URL on the same scheme://host:port as base_url (a local test server).
bool IsAllowedResponseUrl(const std::string& url, const std::string& base_url);

}  // namespace parley::slack
