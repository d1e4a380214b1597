#include "adapters/slack/web_api.h"

#include <algorithm>
#include <cstdlib>
#include <unordered_set>

#include <spdlog/spdlog.h>

#include "adapters/slack/codec.h"
#include "core/percent.h"

namespace parley::slack {
namespace {

using nlohmann::json;

// ok:false errors that are about the token or the app's permissions.
bool IsAuthError(const std::string& error) {
  static const std::unordered_set<std::string> kAuth = {
      "invalid_auth",  "not_authed",      "account_inactive", "token_revoked",
      "token_expired", "no_permission",   "missing_scope",    "not_allowed_token_type",
      "org_login_required", "ekm_access_denied", "team_access_not_granted"};
  return kAuth.count(error) > 0;
}

int64_t RetryAfterMs(const net::Headers& headers) {
  const std::string value = net::FindHeader(headers, "retry-after");
  char* end = nullptr;
  const long long seconds = std::strtoll(value.c_str(), &end, 10);
  if (value.empty() || end == value.c_str() || seconds < 1) return 1000;
  return std::min<long long>(seconds, 3600) * 1000;
}

// Parses a Web API response without the echo of the posted message (the top-level "message" of
// chat.postMessage and chat.update: every block of the reply again, which no caller reads), so
// the reply path does not build a tree for it. Discarded (not an object) when it is not JSON.
json ParseResponse(const std::string& body) { return ParseJsonWithout(body, 1, "message"); }

// "scheme://host[:port]" of url, lowercased scheme and host; empty when malformed.
std::string Origin(const std::string& url) {
  const size_t scheme_end = url.find("://");
  if (scheme_end == std::string::npos) return "";
  const size_t host_end = url.find('/', scheme_end + 3);
  std::string origin = url.substr(0, host_end);
  std::transform(origin.begin(), origin.end(), origin.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (origin.find_first_of("@?#\\ ") != std::string::npos) return "";
  return origin;
}

}  // namespace

const char* OutcomeName(Outcome outcome) {
  switch (outcome) {
    case Outcome::kOk: return "ok";
    case Outcome::kRateLimited: return "rate_limited";
    case Outcome::kTransient: return "transient";
    case Outcome::kAuth: return "auth";
    case Outcome::kRefused: return "refused";
  }
  return "unknown";
}

bool IsAllowedResponseUrl(const std::string& url, const std::string& base_url) {
  const std::string origin = Origin(url);
  if (origin.empty()) return false;
  if (origin == "https://hooks.slack.com") return true;
  return origin == Origin(base_url);
}

WebApi::WebApi(std::shared_ptr<net::HttpClient> http, std::string base_url, Secret bot_token,
               Secret app_token, const Clock& clock, MetricsRegistry& metrics)
    : http_(std::move(http)),
      base_url_(std::move(base_url)),
      bot_token_(std::move(bot_token)),
      app_token_(std::move(app_token)),
      clock_(clock),
      metrics_(metrics) {}

int64_t WebApi::PausedForMs(const std::string& limit_key) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = paused_until_ms_.find(limit_key);
  if (it == paused_until_ms_.end()) return 0;
  return std::max<int64_t>(0, it->second - clock_.NowMs());
}

void WebApi::Call(const std::string& method, const json& args, Token token, ApiCallback done,
                  const std::string& limit_key) {
  CallWithJsonText(method, DumpJson(args), token, std::move(done), limit_key);
}

void WebApi::CallWithJsonText(const std::string& method, std::string args, Token token,
                              ApiCallback done, const std::string& limit_key) {
  Post(method, base_url_ + method, std::move(args), "application/json; charset=utf-8",
       &TokenOf(token), limit_key.empty() ? method : limit_key, std::move(done));
}

void WebApi::CallForm(const std::string& method,
                      const std::vector<std::pair<std::string, std::string>>& args, Token token,
                      ApiCallback done, const std::string& limit_key) {
  std::string body;
  for (const auto& [key, value] : args) {
    if (!body.empty()) body += '&';
    body += PercentEncode(key) + "=" + PercentEncode(value);
  }
  Post(method, base_url_ + method, std::move(body), "application/x-www-form-urlencoded",
       &TokenOf(token), limit_key.empty() ? method : limit_key, std::move(done));
}

void WebApi::PostResponseUrl(const std::string& url, const json& body, ApiCallback done) {
  Post("response_url", url, DumpJson(body), "application/json; charset=utf-8",
       /*token=*/nullptr, "response_url", std::move(done));
}

const Secret& WebApi::TokenOf(Token token) const {
  return token == Token::kBot ? bot_token_ : app_token_;
}

void WebApi::Post(const std::string& method, std::string url, std::string body,
                  const char* content_type, const Secret* token, const std::string& limit_key,
                  ApiCallback done) {
  net::ClientRequest request;
  request.method = "POST";
  request.url = std::move(url);
  request.body = std::move(body);
  request.timeout_ms = 15'000;
  request.headers.emplace_back("Content-Type", content_type);
  if (token != nullptr) request.headers.emplace_back("Authorization", "Bearer " + token->reveal());
  http_->Request(std::move(request),
                 [this, method, limit_key, slack_body = token != nullptr,
                  done = std::move(done)](Result<net::ClientResponse> response) mutable {
                   Finish(method, limit_key, slack_body, std::move(response), std::move(done));
                 });
}

void WebApi::Finish(const std::string& method, const std::string& limit_key, bool slack_body,
                    Result<net::ClientResponse> response, ApiCallback done) {
  ApiResult r;
  if (!response.ok()) {
    r.outcome = Outcome::kTransient;
    r.error = response.status().ToString();
  } else {
    r.http_status = response->status;
    r.body = ParseResponse(response->body);
    if (r.body.is_discarded() || !r.body.is_object()) r.body = nullptr;
    if (response->status == 429) {
      r.outcome = Outcome::kRateLimited;
      r.error = "ratelimited";
      r.retry_after_ms = RetryAfterMs(response->headers);
    } else if (!slack_body && response->status < 500) {
      // A response_url answers with any 2xx; 4xx (e.g. 404: the URL expired) is final.
      r.outcome = response->status >= 200 && response->status < 300 ? Outcome::kOk
                                                                      : Outcome::kRefused;
      if (!r.ok()) r.error = "HTTP " + std::to_string(response->status);
    } else if (response->status >= 500 || r.body.is_null()) {
      r.outcome = Outcome::kTransient;
      r.error = "HTTP " + std::to_string(response->status) +
                (r.body.is_null() ? " without a JSON body" : "");
    } else {
      const json& ok = r.body.contains("ok") ? r.body["ok"] : json();
      if (ok.is_boolean() && ok.get<bool>()) {
        r.outcome = Outcome::kOk;
      } else {
        const json& error = r.body.contains("error") ? r.body["error"] : json();
        r.error = error.is_string() ? error.get<std::string>() : "unknown_error";
        if (r.error == "ratelimited" || r.error == "rate_limited") {
          r.outcome = Outcome::kRateLimited;
          r.retry_after_ms = RetryAfterMs(response->headers);
        } else if (r.error == "internal_error" || r.error == "fatal_error" ||
                   r.error == "service_unavailable" || r.error == "request_timeout") {
          r.outcome = Outcome::kTransient;
        } else {
          r.outcome = IsAuthError(r.error) ? Outcome::kAuth : Outcome::kRefused;
        }
      }
    }
  }
  if (r.outcome == Outcome::kRateLimited) {
    std::lock_guard<std::mutex> lock(mu_);
    int64_t& until = paused_until_ms_[limit_key];
    until = std::max(until, clock_.NowMs() + r.retry_after_ms);
  }
  metrics_
      .GetCounter("parley_slack_api_calls_total", "Slack Web API calls by outcome",
                  "method=\"" + method + "\",outcome=\"" + OutcomeName(r.outcome) + "\"")
      .Add();
  if (r.outcome == Outcome::kAuth || r.outcome == Outcome::kRefused) {
    // Slack's error codes are short [a-z_] words; anything else is not used as a label.
    const bool plain = !r.error.empty() && r.error.size() <= 64 &&
                       r.error.find_first_not_of("abcdefghijklmnopqrstuvwxyz_") ==
                           std::string::npos;
    metrics_
        .GetCounter("parley_slack_api_errors_total", "Slack Web API ok:false errors",
                    "method=\"" + method + "\",error=\"" + (plain ? r.error : "other") + "\"")
        .Add();
  }
  done(std::move(r));
}

}  // namespace parley::slack
