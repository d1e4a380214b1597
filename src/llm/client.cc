// OpenAiClient: chat completions over net::HttpClient.
//
// One Complete() call is a Call; each HTTP request of it is an Attempt. All mutable state of a
// call is guarded by the call's mutex, which is also held while on_delta runs, so deltas are
// serialized and ordered, and a timer that ends the call cannot overtake a delta in progress.
// on_done is posted to the io_context (never run inside Complete() or under the lock) after the
// call is marked finished, so it follows the last on_delta.
//
// Slots (max_concurrent): Core counts the calls holding a slot and keeps the waiting ones in a
// FIFO list; a call's queue position and slot flag are guarded by Core::queue_mu. Lock order:
// Call::mu_ before Core::queue_mu (and before Core::breaker_mu), never the other way round, so
// a finishing call passes its slot on by popping the next call under queue_mu and posting that
// call's start to the io_context, where it takes its own mutex.
//
// Timers: the first-token timer (headers + first data event) and the call's timer (the queue
// deadline while waiting for a slot, then the retry backoff) are asio steady_timers on the
// io_context; the first-token timer ends the attempt itself and sets the transfer's cancel flag
// so the HTTP client drops it at its next callback. Idle (between body bytes) and total
// (timeout_ms, the remaining call budget) are enforced by the HTTP client.

#include "llm/client.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <ctime>
#include <list>
#include <mutex>
#include <optional>
#include <random>

namespace parley::llm {
namespace {

namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr size_t kMaxErrorBody = 64 * 1024;
constexpr size_t kMaxStreamBytes = 32 * 1024 * 1024;
constexpr size_t kMaxPlainBody = 4 * 1024 * 1024;

bool RetryableStatus(int status) {
  return status == 408 || status == 409 || status == 429 || status >= 500;
}

// Counts toward opening the breaker: the endpoint is failing, not the request.
bool BreakerFailure(const Status& s) {
  switch (s.code()) {
    case Status::Code::kOk:
    case Status::Code::kInvalidArgument:
    case Status::Code::kNotFound:
      return false;
    default:
      return true;
  }
}

std::string ResultLabel(const Status& s) {
  if (s.ok()) return "ok";
  std::string name = Status::CodeName(s.code());
  return name;
}

// The server's wait request: retry-after-ms, else Retry-After as seconds or an HTTP date.
// nullopt when absent or unparseable.
std::optional<int64_t> RetryAfterMs(const net::Headers& headers) {
  const std::string ms = net::FindHeader(headers, "retry-after-ms");
  if (!ms.empty()) {
    char* end = nullptr;
    const double v = std::strtod(ms.c_str(), &end);
    if (end != ms.c_str() && std::isfinite(v) && v >= 0) return static_cast<int64_t>(v);
  }
  const std::string after = net::FindHeader(headers, "retry-after");
  if (after.empty()) return std::nullopt;
  char* end = nullptr;
  const double seconds = std::strtod(after.c_str(), &end);
  if (end != after.c_str() && *end == '\0' && std::isfinite(seconds) && seconds >= 0) {
    return static_cast<int64_t>(seconds * 1000);
  }
  std::tm tm{};
  if (strptime(after.c_str(), "%a, %d %b %Y %H:%M:%S", &tm) != nullptr) {
    const int64_t when = static_cast<int64_t>(timegm(&tm));
    const int64_t now = static_cast<int64_t>(std::time(nullptr));
    return std::max<int64_t>(0, (when - now) * 1000);
  }
  return std::nullopt;
}

struct Metrics {
  explicit Metrics(MetricsRegistry& r)
      : registry(r),
        retries(r.GetCounter("parley_llm_retries_total", "LLM request retries")),
        first_token(r.GetHistogram("parley_llm_first_token_seconds",
                                   "Time from the call to the first streamed data", "",
                                   HistogramScale::kSlow)),
        seconds(r.GetHistogram("parley_llm_seconds", "Duration of LLM calls", "",
                               HistogramScale::kSlow)),
        prompt_tokens(r.GetCounter("parley_llm_tokens_total", "Tokens reported by the LLM",
                                   "kind=\"prompt\"")),
        completion_tokens(r.GetCounter("parley_llm_tokens_total", "Tokens reported by the LLM",
                                       "kind=\"completion\"")),
        breaker_open(r.GetGauge("parley_llm_breaker_open", "1 while the LLM circuit is open")),
        queued(r.GetGauge("parley_llm_queued", "LLM calls waiting for a slot (max_concurrent)")),
        in_flight(r.GetGauge("parley_llm_in_flight",
                             "LLM calls holding a slot (HTTP attempt or retry backoff)")) {}

  Counter& Requests(const std::string& result) {
    return registry.GetCounter("parley_llm_requests_total", "LLM calls by outcome",
                               "result=\"" + result + "\"");
  }

  MetricsRegistry& registry;
  Counter& retries;
  Histogram& first_token;
  Histogram& seconds;
  Counter& prompt_tokens;
  Counter& completion_tokens;
  Gauge& breaker_open;
  Gauge& queued;
  Gauge& in_flight;
};

class Call;

// Shared by the client and its in-flight calls.
struct Core {
  Core(asio::io_context& io_in, std::shared_ptr<net::HttpClient> http_in, LlmOptions options_in,
       MetricsRegistry& registry)
      : io(io_in), http(std::move(http_in)), options(std::move(options_in)), metrics(registry) {}

  asio::io_context& io;
  std::shared_ptr<net::HttpClient> http;
  const LlmOptions options;
  Metrics metrics;

  // Circuit breaker.
  std::mutex breaker_mu;
  int consecutive_failures = 0;
  bool open = false;
  Clock::time_point open_until;
  bool trial_in_flight = false;

  // Slots. Guarded by queue_mu (as are Call::queue_pos_, queued_ and has_slot_).
  std::mutex queue_mu;
  int holding = 0;                         // calls holding a slot
  std::list<std::shared_ptr<Call>> queue;  // waiting calls, oldest first

  // Gives `call` a slot (true) or appends it to the queue (false). Called under call->mu_.
  bool Enter(const std::shared_ptr<Call>& call);
  // Takes a finishing call out of the queue, or passes its slot on. Called under call.mu_.
  // Returns the queue's reference to the call (if it was queued), to be dropped by the caller.
  std::shared_ptr<Call> Leave(Call& call);

  // True while the circuit rejects every call (open, cooldown running or trial in flight).
  bool Rejecting() {
    std::lock_guard<std::mutex> lock(breaker_mu);
    return open && (Clock::now() < open_until || trial_in_flight);
  }

  // True when the call may proceed; sets *trial when it is the half-open trial.
  bool Admit(bool* trial) {
    std::lock_guard<std::mutex> lock(breaker_mu);
    *trial = false;
    if (!open) return true;
    if (Clock::now() < open_until || trial_in_flight) return false;
    trial_in_flight = true;
    *trial = true;
    return true;
  }

  void Record(const Status& status, bool trial, bool cancelled) {
    std::lock_guard<std::mutex> lock(breaker_mu);
    if (trial) trial_in_flight = false;
    if (cancelled) return;  // says nothing about the endpoint
    if (!BreakerFailure(status)) {
      consecutive_failures = 0;
      if (open) {
        open = false;
        metrics.breaker_open.Set(0);
        spdlog::info("llm.breaker state=closed");
      }
      return;
    }
    ++consecutive_failures;
    if (trial || (!open && consecutive_failures >= std::max(1, options.breaker_failures))) {
      open = true;
      open_until = Clock::now() + milliseconds(options.breaker_cooldown_ms);
      metrics.breaker_open.Set(1);
      spdlog::warn("llm.breaker state=open failures={} cooldown_ms={}", consecutive_failures,
                   options.breaker_cooldown_ms);
    }
  }

  int64_t Backoff(int retry) {
    const double base = std::max(1, options.retry_base_ms);
    const double cap = std::max(1, options.retry_max_ms);
    const double raw = std::min(cap, base * std::pow(2.0, std::min(retry, 30)));
    thread_local std::minstd_rand rng(std::random_device{}());
    std::uniform_real_distribution<double> jitter(0.0, 0.25);
    return static_cast<int64_t>(raw * (1.0 - jitter(rng)));
  }
};

// One HTTP request of a call. Guarded by Call::mu.
struct Attempt {
  explicit Attempt(asio::io_context& io) : first_token_timer(io) {}
  int number = 0;
  std::shared_ptr<std::atomic<bool>> cancel = std::make_shared<std::atomic<bool>>(false);
  asio::steady_timer first_token_timer;
  bool ended = false;  // the call no longer listens to this attempt
  int http_status = 0;
  net::Headers headers;
  std::string error_body;  // body of a non-2xx response, bounded
  SseParser parser;
  StreamAssembler assembler;
  bool first_data = false;
  // The body so far while no event has been parsed: a server that ignores "stream": true
  // answers with a plain JSON completion, which is then parsed from here.
  std::string raw;
  Status stream_error;  // set when the stream itself failed (parse error, in-band error)
};

class Call final : public LlmCall, public std::enable_shared_from_this<Call> {
 public:
  Call(std::shared_ptr<Core> core, ChatRequest request, DeltaCallback on_delta,
       DoneCallback on_done)
      : core_(std::move(core)),
        streaming_(request.stream),
        on_delta_(std::move(on_delta)),
        on_done_(std::move(on_done)),
        start_(Clock::now()),
        // total_timeout_ms <= 0: no overall deadline (a year stands in for "none").
        deadline_(start_ + (core_->options.total_timeout_ms > 0
                                ? milliseconds(core_->options.total_timeout_ms)
                                : milliseconds(int64_t{365} * 24 * 3600 * 1000))),
        timer_(core_->io) {
    BodyOptions body_options;
    body_options.model = core_->options.model;
    body_options.temperature = core_->options.temperature;
    body_options.max_tokens = core_->options.max_tokens;
    body_ = std::make_shared<const std::string>(BuildRequestBody(request, body_options));
  }

  // Starts the call now if it gets a slot, else queues it (with its deadline timer armed).
  void Submit() {
    std::lock_guard<std::mutex> lock(mu_);
    if (core_->Enter(shared_from_this())) {
      StartWithSlotLocked();
      return;
    }
    waiting_ = true;
    if (core_->options.total_timeout_ms > 0) {
      timer_.expires_at(deadline_);
      timer_.async_wait([self = shared_from_this()](const boost::system::error_code& ec) {
        if (ec) return;
        self->OnQueueDeadline();
      });
    }
  }

  // Io thread: the slot passed on by a finished call.
  void OnSlot() {
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_) return;  // finished meanwhile; Leave() passed the slot on
    StartWithSlotLocked();
  }

  void Cancel() override {
    const std::shared_ptr<Call> keep = shared_from_this();  // the queue may hold the last owner
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_) return;
    cancelled_ = true;
    FinishLocked(Status::Unavailable("cancelled"));
  }

 private:
  friend struct Core;

  // The call holds a slot: admission by the circuit breaker, then the first attempt.
  void StartWithSlotLocked() {
    if (waiting_) {
      waiting_ = false;
      timer_.cancel();
    }
    if (RemainingMs() <= 0) {
      FinishLocked(Status::DeadlineExceeded("LLM call exceeded " +
                                            std::to_string(core_->options.total_timeout_ms) +
                                            " ms waiting for a free slot"));
      return;
    }
    bool trial = false;
    if (!core_->Admit(&trial)) {
      circuit_open_ = true;
      FinishLocked(Status::Unavailable("circuit open"));
      return;
    }
    admitted_ = true;
    trial_ = trial;
    StartAttemptLocked();
  }

  // Io thread (asio timer): the deadline passed while the call waited for a slot.
  void OnQueueDeadline() {
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_ || !waiting_) return;
    FinishLocked(Status::DeadlineExceeded("LLM call exceeded " +
                                          std::to_string(core_->options.total_timeout_ms) +
                                          " ms waiting for a free slot"));
  }

  int64_t RemainingMs() const {
    return std::chrono::duration_cast<milliseconds>(deadline_ - Clock::now()).count();
  }

  void StartAttemptLocked() {
    const LlmOptions& o = core_->options;
    const int64_t remaining = RemainingMs();
    if (remaining <= 0) {
      FinishLocked(Status::DeadlineExceeded("LLM call exceeded " +
                                            std::to_string(o.total_timeout_ms) + " ms"));
      return;
    }
    auto attempt = std::make_shared<Attempt>(core_->io);
    attempt->number = attempts_++;
    attempt_ = attempt;

    net::ClientRequest req;
    req.method = "POST";
    std::string base = o.base_url;
    while (!base.empty() && base.back() == '/') base.pop_back();
    req.url = base + "/chat/completions";
    req.headers.emplace_back("Content-Type", "application/json");
    if (streaming_) req.headers.emplace_back("Accept", "text/event-stream");
    if (!o.api_key.empty()) req.headers.emplace_back("Authorization", "Bearer " + o.api_key.reveal());
    for (const auto& h : o.headers) req.headers.push_back(h);
    req.shared_body = body_;
    req.timeout_ms =
        o.total_timeout_ms > 0 ? static_cast<int>(std::min<int64_t>(remaining, INT32_MAX)) : 0;
    req.connect_timeout_ms = o.connect_timeout_ms;
    req.cancel = attempt->cancel;
    std::weak_ptr<Call> weak = weak_from_this();
    req.on_headers = [weak, attempt](int status, const net::Headers& headers) {
      auto self = weak.lock();
      return self != nullptr && self->OnHeaders(attempt, status, headers);
    };
    if (streaming_) {
      req.max_response_bytes = kMaxStreamBytes;
      req.idle_timeout_ms = std::max(0, o.idle_timeout_ms);
      req.on_body = [weak, attempt](std::string_view bytes) {
        auto self = weak.lock();
        return self != nullptr && self->OnBody(attempt, bytes);
      };
    }

    if (o.first_token_timeout_ms > 0) {
      attempt->first_token_timer.expires_after(milliseconds(o.first_token_timeout_ms));
      attempt->first_token_timer.async_wait(
          [self = shared_from_this(), attempt](const boost::system::error_code& ec) {
            if (ec) return;
            self->OnFirstTokenTimeout(attempt);
          });
    }
    spdlog::debug("llm.request attempt={} stream={} bytes={}", attempt->number, streaming_,
                  req.body.size());
    core_->http->Request(std::move(req),
                         [self = shared_from_this(), attempt](Result<net::ClientResponse> r) {
                           self->OnResponse(attempt, std::move(r));
                         });
  }

  // Io thread (HTTP client strand).
  bool OnHeaders(const std::shared_ptr<Attempt>& attempt, int status,
                 const net::Headers& headers) {
    std::lock_guard<std::mutex> lock(mu_);
    if (attempt->ended || finished_) return false;
    attempt->http_status = status;
    attempt->headers = headers;
    if (!streaming_) attempt->first_token_timer.cancel();  // the answer arrives whole
    return true;
  }

  // Io thread (HTTP client strand).
  bool OnBody(const std::shared_ptr<Attempt>& attempt, std::string_view bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    if (attempt->ended || finished_) return false;
    if (attempt->http_status < 200 || attempt->http_status >= 300) {
      const size_t room = kMaxErrorBody - std::min(kMaxErrorBody, attempt->error_body.size());
      attempt->error_body.append(bytes.data(), std::min(room, bytes.size()));
      return true;
    }
    if (!attempt->first_data && attempt->raw.size() + bytes.size() <= kMaxPlainBody) {
      attempt->raw.append(bytes.data(), bytes.size());
    }
    Status fed = attempt->parser.Feed(
        bytes, [this, &attempt](SseEvent event) { OnEventLocked(*attempt, event); });
    if (!fed.ok() && attempt->stream_error.ok()) attempt->stream_error = Corruption(fed);
    return attempt->stream_error.ok();
  }

  static Status Corruption(const Status& s) {
    return Status::Corruption("malformed stream: " + s.message());
  }

  void OnEventLocked(Attempt& attempt, const SseEvent& event) {
    if (!attempt.stream_error.ok()) return;
    if (!attempt.first_data) {
      attempt.first_data = true;
      attempt.raw = std::string();
      attempt.first_token_timer.cancel();
      core_->metrics.first_token.ObserveNanos(
          std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - start_).count());
    }
    Status s = attempt.assembler.OnData(event.data, [this](std::string_view text) {
      delta_sent_ = true;
      if (!on_delta_) return;
      try {
        on_delta_(text);
      } catch (...) {
        // A throwing callback must not unwind into the HTTP client.
      }
    });
    if (!s.ok()) attempt.stream_error = std::move(s);
  }

  // Io thread (asio timer).
  void OnFirstTokenTimeout(const std::shared_ptr<Attempt>& attempt) {
    std::lock_guard<std::mutex> lock(mu_);
    if (attempt->ended || finished_ || attempt->first_data) return;
    if (!streaming_ && attempt->http_status != 0) return;
    EndAttemptLocked(*attempt);
    const Status s = Status::DeadlineExceeded(
        "no first token within " + std::to_string(core_->options.first_token_timeout_ms) + " ms");
    RetryOrFinishLocked(s, /*retryable=*/true, std::nullopt);
  }

  void EndAttemptLocked(Attempt& attempt) {
    attempt.ended = true;
    attempt.cancel->store(true, std::memory_order_release);
    attempt.first_token_timer.cancel();
  }

  // Io thread. The HTTP client is done with the attempt.
  void OnResponse(const std::shared_ptr<Attempt>& attempt, Result<net::ClientResponse> r) {
    std::lock_guard<std::mutex> lock(mu_);
    if (attempt->ended || finished_) return;  // already decided (timeout)
    EndAttemptLocked(*attempt);
    if (!attempt->stream_error.ok()) {
      // The stream itself failed after a 200: never retried (openai.md §4).
      FinishLocked(attempt->stream_error);
      return;
    }
    if (!r.ok()) {
      const Status& s = r.status();
      const bool after_data = delta_sent_;
      Status out = s;
      if (after_data && s.code() == Status::Code::kUnavailable) {
        out = Status::Unavailable("stream broken after partial answer: " + s.message());
      }
      RetryOrFinishLocked(out, /*retryable=*/s.code() != Status::Code::kInvalidArgument,
                          std::nullopt);
      return;
    }
    net::ClientResponse& response = *r;
    const int status = response.status;
    if (status < 200 || status >= 300) {
      const std::string& body = streaming_ ? attempt->error_body : response.body;
      const Status s = StatusFromErrorResponse(status, body);
      const net::Headers& headers = response.headers.empty() ? attempt->headers : response.headers;
      bool retryable = RetryableStatus(status);
      const std::string should = net::FindHeader(headers, "x-should-retry");
      if (should == "true") retryable = true;
      if (should == "false") retryable = false;
      RetryOrFinishLocked(s, retryable, RetryAfterMs(headers));
      return;
    }
    if (streaming_) {
      attempt->parser.Finish(
          [this, &attempt](SseEvent event) { OnEventLocked(*attempt, event); });
    }
    const bool plain_json =
        streaming_ && !attempt->first_data &&
        net::FindHeader(response.headers, "content-type").find("json") != std::string::npos;
    if (!streaming_ || plain_json) {
      Result<ChatResult> parsed = ParseCompletion(streaming_ ? attempt->raw : response.body);
      if (!parsed.ok()) {
        FinishLocked(parsed.status());
        return;
      }
      if (!parsed->content.empty() && on_delta_) {
        delta_sent_ = true;
        try {
          on_delta_(parsed->content);
        } catch (...) {
        }
      }
      FinishLocked(std::move(parsed).value());
      return;
    }
    if (!attempt->stream_error.ok()) {
      FinishLocked(attempt->stream_error);
      return;
    }
    if (!attempt->assembler.done() && !attempt->assembler.finished()) {
      FinishLocked(Status::Corruption("stream ended without [DONE] or finish_reason"));
      return;
    }
    FinishLocked(attempt->assembler.Take());
  }

  void RetryOrFinishLocked(Status s, bool retryable, std::optional<int64_t> retry_after_ms) {
    const LlmOptions& o = core_->options;
    if (!retryable || delta_sent_ || attempts_ > o.max_retries) {
      FinishLocked(std::move(s));
      return;
    }
    int64_t wait_ms;
    if (retry_after_ms) {
      if (*retry_after_ms > o.retry_max_ms) {
        FinishLocked(std::move(s));  // the server asks for longer than we wait
        return;
      }
      wait_ms = *retry_after_ms;
    } else {
      wait_ms = core_->Backoff(attempts_ - 1);
    }
    if (wait_ms >= RemainingMs()) {
      FinishLocked(std::move(s));
      return;
    }
    core_->metrics.retries.Add();
    spdlog::warn("llm.retry attempt={} wait_ms={} status=\"{}\"", attempts_, wait_ms,
                 s.ToString());
    timer_.expires_after(milliseconds(wait_ms));
    timer_.async_wait([self = shared_from_this()](const boost::system::error_code& ec) {
      if (ec) return;
      std::lock_guard<std::mutex> lock(self->mu_);
      if (self->finished_) return;
      self->StartAttemptLocked();
    });
  }

  void FinishLocked(Result<ChatResult> result) {
    if (finished_) return;
    finished_ = true;
    waiting_ = false;
    timer_.cancel();
    if (attempt_ != nullptr && !attempt_->ended) EndAttemptLocked(*attempt_);
    const Status status = result.ok() ? Status::Ok() : result.status();
    // A call the breaker never admitted sent nothing: it tells nothing about the endpoint.
    if (admitted_) core_->Record(status, trial_, cancelled_);
    // Out of the queue, or the slot to the next waiting call; after Record(), so that the next
    // call's admission sees the breaker state this call's outcome left. The queue's reference
    // (if any) is dropped at the end of this function; the caller of the Call method holds
    // another.
    const std::shared_ptr<Call> queue_ref = core_->Leave(*this);
    Metrics& m = core_->metrics;
    const std::string label = cancelled_      ? "cancelled"
                              : circuit_open_ ? "circuit_open"
                                              : ResultLabel(status);
    m.Requests(label).Add();
    const Clock::duration elapsed = Clock::now() - start_;
    const int64_t ms = std::chrono::duration_cast<milliseconds>(elapsed).count();
    // No duration sample for a call the breaker refused (as for one refused by Complete()).
    if (!circuit_open_) {
      m.seconds.ObserveNanos(std::chrono::duration_cast<std::chrono::nanoseconds>(elapsed).count());
    }
    if (circuit_open_) {
      spdlog::debug("llm.circuit_open queued_ms={}", ms);
    } else if (result.ok()) {
      const Usage& u = result->usage;
      if (u.present) {
        m.prompt_tokens.Add(static_cast<uint64_t>(std::max<int64_t>(0, u.prompt_tokens)));
        m.completion_tokens.Add(static_cast<uint64_t>(std::max<int64_t>(0, u.completion_tokens)));
      }
      spdlog::info("llm.done attempts={} ms={} finish={} tool_calls={} prompt_tokens={} "
                   "completion_tokens={}",
                   attempts_, ms, result->finish_reason, result->tool_calls.size(),
                   u.prompt_tokens, u.completion_tokens);
    } else if (cancelled_) {
      spdlog::info("llm.cancelled attempts={} ms={}", attempts_, ms);
    } else {
      spdlog::warn("llm.failed attempts={} ms={} status=\"{}\"", attempts_, ms,
                   status.ToString());
    }
    DoneCallback done = std::move(on_done_);
    on_delta_ = nullptr;
    if (!done) return;
    asio::post(core_->io, [done = std::move(done), result = std::move(result)]() mutable {
      try {
        done(std::move(result));
      } catch (...) {
      }
    });
  }

  const std::shared_ptr<Core> core_;
  const bool streaming_;
  std::shared_ptr<const std::string> body_;  // one copy for every attempt
  std::mutex mu_;
  // Guarded by mu_:
  DeltaCallback on_delta_;
  DoneCallback on_done_;
  const Clock::time_point start_;
  const Clock::time_point deadline_;
  // While waiting_: the queue deadline; after the slot: the retry backoff.
  asio::steady_timer timer_;
  std::shared_ptr<Attempt> attempt_;
  int attempts_ = 0;
  bool waiting_ = false;       // queued, or given a slot whose OnSlot has not run yet
  bool admitted_ = false;      // passed the circuit breaker (then Record() must follow)
  bool trial_ = false;         // admitted as the half-open trial
  bool circuit_open_ = false;  // refused by the breaker when the slot came
  bool delta_sent_ = false;
  bool finished_ = false;
  bool cancelled_ = false;
  // Guarded by Core::queue_mu:
  std::list<std::shared_ptr<Call>>::iterator queue_pos_;
  bool queued_ = false;    // in Core::queue at queue_pos_
  bool has_slot_ = false;  // counted in Core::holding
};

bool Core::Enter(const std::shared_ptr<Call>& call) {
  std::lock_guard<std::mutex> lock(queue_mu);
  if (options.max_concurrent <= 0 || (holding < options.max_concurrent && queue.empty())) {
    ++holding;
    call->has_slot_ = true;
    metrics.in_flight.Set(holding);
    return true;
  }
  call->queue_pos_ = queue.insert(queue.end(), call);
  call->queued_ = true;
  metrics.queued.Set(static_cast<int64_t>(queue.size()));
  return false;
}

std::shared_ptr<Call> Core::Leave(Call& call) {
  std::shared_ptr<Call> queue_ref;
  std::lock_guard<std::mutex> lock(queue_mu);
  if (call.queued_) {
    queue_ref = std::move(*call.queue_pos_);
    queue.erase(call.queue_pos_);
    call.queued_ = false;
  }
  if (call.has_slot_) {
    call.has_slot_ = false;
    if (queue.empty()) {
      --holding;
    } else {
      // The slot goes to the oldest waiting call (finished calls have left the queue), which
      // starts on an io thread: not under this call's mutex, and no recursion through a chain
      // of calls that end at once (circuit open, deadline passed).
      std::shared_ptr<Call> next = std::move(queue.front());
      queue.pop_front();
      next->queued_ = false;
      next->has_slot_ = true;
      asio::post(io, [next]() { next->OnSlot(); });
    }
  }
  metrics.queued.Set(static_cast<int64_t>(queue.size()));
  metrics.in_flight.Set(holding);
  return queue_ref;
}

// The handle of a call that never started (circuit open).
class NoCall final : public LlmCall {
 public:
  void Cancel() override {}
};

class OpenAiClient final : public LlmClient {
 public:
  explicit OpenAiClient(std::shared_ptr<Core> core) : core_(std::move(core)) {}

  std::shared_ptr<LlmCall> Complete(ChatRequest request, DeltaCallback on_delta,
                                    DoneCallback on_done) override {
    // Refused at once while the circuit is open; otherwise the breaker admits the call when it
    // gets its slot (now, or when its turn in the queue comes).
    if (core_->Rejecting()) {
      core_->metrics.Requests("circuit_open").Add();
      asio::post(core_->io, [done = std::move(on_done)]() {
        if (!done) return;
        try {
          done(Status::Unavailable("circuit open"));
        } catch (...) {
        }
      });
      return std::make_shared<NoCall>();
    }
    auto call =
        std::make_shared<Call>(core_, std::move(request), std::move(on_delta), std::move(on_done));
    call->Submit();
    return call;
  }

 private:
  std::shared_ptr<Core> core_;
};

}  // namespace

std::shared_ptr<LlmClient> MakeOpenAiClient(boost::asio::io_context& io,
                                            std::shared_ptr<net::HttpClient> http,
                                            LlmOptions options, MetricsRegistry& metrics) {
  return std::make_shared<OpenAiClient>(
      std::make_shared<Core>(io, std::move(http), std::move(options), metrics));
}

}  // namespace parley::llm
