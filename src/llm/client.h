#pragma once
// The LLM client: OpenAI-compatible chat completions over the daemon's shared asynchronous HTTP
// client (net::HttpClient), streaming or not, with retries before the first token, timeouts
// (connect, first token, idle between chunks, total), a circuit breaker and a bound on concurrent
// calls (LlmOptions::max_concurrent) with a FIFO queue for the rest.
// Thread-safety: Complete is thread-safe; callbacks run on io threads, on_delta calls for one
// request in order and never concurrently, on_done exactly once after the last on_delta.

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <boost/asio/io_context.hpp>

#include "core/metrics.h"
#include "core/secret.h"
#include "core/status.h"
#include "llm/chat.h"
#include "net/http.h"

namespace parley::llm {

struct LlmOptions {
  std::string base_url;  // e.g. "https://api.openai.com/v1"; "/chat/completions" is appended
  Secret api_key;        // empty: no Authorization header
  std::string model;
  double temperature = -1;  // < 0: not sent
  int max_tokens = 0;       // 0: not sent
  std::vector<std::pair<std::string, std::string>> headers;  // extra request headers
  int connect_timeout_ms = 5'000;
  int first_token_timeout_ms = 30'000;  // until the response headers and first data arrive
  int idle_timeout_ms = 30'000;         // longest gap between chunks of a streamed answer
  int total_timeout_ms = 120'000;
  int max_retries = 2;  // for 408/409/429/5xx/transport errors, only before any on_delta call
  int retry_base_ms = 500;   // backoff: base * 2^n, capped at retry_max_ms, minus up to 25 %
  int retry_max_ms = 8'000;  // Retry-After / retry-after-ms longer than this: not retried
  int breaker_failures = 5;  // consecutive failed calls that open the breaker
  int breaker_cooldown_ms = 30'000;
  // Calls that may hold a slot at once (0 = unlimited). A call holds a slot while an HTTP attempt
  // of it is in flight or it waits in retry backoff; HTTP/1.1 cannot multiplex, so this also
  // bounds the connections (and the endpoint's load) the client causes. Further calls wait in a
  // FIFO queue inside the client; see LlmClient::Complete.
  int max_concurrent = 1024;
};

using DeltaCallback = std::function<void(std::string_view text)>;
using DoneCallback = std::function<void(Result<ChatResult>)>;

// One call in flight. Thread-safety: Cancel is thread-safe and may be called any number of times.
class LlmCall {
 public:
  virtual ~LlmCall() = default;
  // Abandons the call: no further on_delta; on_done gets Unavailable("cancelled") unless it ran
  // already; the HTTP transfer is aborted and its connection closed. A call still queued for a
  // slot leaves the queue at once and never sends anything. A cancel counts as neither
  // a success nor a failure for the circuit breaker. Must not be called from inside the call's
  // own on_delta (it would deadlock); from on_done or any other code it is fine.
  virtual void Cancel() = 0;
};

// Errors reported to on_done: Unavailable (transport, 5xx after retries, circuit open: message
// "circuit open"), ResourceExhausted (429 after retries), DeadlineExceeded (a timeout),
// PermissionDenied (401/403), InvalidArgument (400, or a response that is not a completion),
// Corruption (malformed or truncated stream: no [DONE] and no finish_reason), Unavailable
// ("cancelled") after LlmCall::Cancel.
class LlmClient {
 public:
  virtual ~LlmClient() = default;
  // Streams when request.stream is true (text pieces go to on_delta as they arrive), otherwise
  // one request whose content is passed to on_delta once before on_done.
  // The returned handle may be dropped; the call runs on without it.
  //
  // Queue (max_concurrent > 0): a call starts at once when a slot is free and nobody waits;
  // otherwise it waits in FIFO order, holding only its prepared request. A finished call (any
  // outcome) passes its slot to the oldest waiting call; that call starts on an io thread, never
  // inside Complete() or another call's callbacks. While a call waits:
  // - the circuit breaker is consulted when it gets its slot, not when it is queued: if the
  //   circuit is open by then it ends with Unavailable("circuit open") without a request and
  //   passes the slot on (a call made while the circuit is open still fails at once);
  // - total_timeout_ms counts from Complete(), queue time included: a call whose deadline passes
  //   while it waits ends with DeadlineExceeded without a request; first_token_timeout_ms counts
  //   from the start of each HTTP attempt;
  // - LlmCall::Cancel ends it at once; it never sends and holds nobody up.
  // A waiting call is owned by the client's queue (dropping the handle does not end it).
  virtual std::shared_ptr<LlmCall> Complete(ChatRequest request, DeltaCallback on_delta,
                                            DoneCallback on_done) = 0;
};

// Metrics: parley_llm_requests_total{result}, parley_llm_retries_total,
// parley_llm_first_token_seconds, parley_llm_seconds (both from Complete(), queue time included),
// parley_llm_tokens_total{kind=prompt|completion}, parley_llm_breaker_open (gauge 0/1),
// parley_llm_queued (gauge: calls waiting for a slot), parley_llm_in_flight (gauge: calls holding
// a slot, counted with max_concurrent = 0 too).
std::shared_ptr<LlmClient> MakeOpenAiClient(boost::asio::io_context& io,
                                            std::shared_ptr<net::HttpClient> http,
                                            LlmOptions options, MetricsRegistry& metrics);

}  // namespace parley::llm
