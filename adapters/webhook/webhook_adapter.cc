#include "adapters/webhook/webhook_adapter.h"

#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "adapters/common/http_json.h"
#include "adapters/common/reply_stream.h"
#include "core/ids.h"
#include "core/percent.h"
#include "net/backoff.h"
#include "net/crypto.h"

namespace parley::webhook {
namespace {

using adapters::JsonError;
using nlohmann::json;

bool IsHttpUrl(const std::string& url) {
  return (url.rfind("http://", 0) == 0 && url.size() > 7) ||
         (url.rfind("https://", 0) == 0 && url.size() > 8);
}

// A display name ("user_name") is shown to agents and written into tickets: short, one line.
constexpr size_t kMaxUserNameBytes = 200;

bool IsDisplayName(const std::string& name) {
  if (name.size() > kMaxUserNameBytes) return false;
  for (unsigned char c : name) {
    if (c < 0x20 || c == 0x7f) return false;
  }
  return true;
}

// Reads an optional string field; false when present with another type.
bool OptionalString(const json& body, const char* key, std::string& out) {
  auto it = body.find(key);
  if (it == body.end() || it->is_null()) return true;
  if (!it->is_string()) return false;
  out = it->get<std::string>();
  return true;
}

int64_t ParseRetryAfterMs(const net::Headers& headers) {
  std::string value = net::FindHeader(headers, "retry-after");
  if (value.empty()) return 0;
  char* end = nullptr;
  long long seconds = std::strtoll(value.c_str(), &end, 10);
  if (end == value.c_str() || seconds < 0) return 0;
  return std::min<long long>(seconds, 3600) * 1000;
}

// The callback body for an outbox payload (an OutboundMessage as JSON):
// {"id","conversation","thread","text","citations","confidence","escalated","in_reply_to"?,
// "actions"?}.
std::string CallbackBody(const std::string& payload) {
  json stored = json::parse(payload, nullptr, false);
  if (!stored.is_object()) return payload;  // not ours to reinterpret; send as stored
  OutboundMessage message = stored.get<OutboundMessage>();
  json body = adapters::ReplyJson(message);
  if (!message.in_reply_to.empty()) body["in_reply_to"] = message.in_reply_to;
  // Buttons offered with the message (e.g. an escalation card's Claim): [{id,label,value,style?}];
  // the caller "clicks" one by posting its value as a message in the same conversation/thread.
  if (!message.actions.empty()) body["actions"] = message.actions;
  return body.dump();
}

// True when the query asks for a streamed answer: stream=1 or stream=true.
bool QueryAsksForStream(const std::string& query) {
  for (const auto& [name, value] : ParseQuery(query)) {
    if (name == "stream" && (value == "1" || value == "true")) return true;
  }
  return false;
}

// True when the request asks for a streamed answer (query flag or Accept header).
bool WantsStream(const net::HttpRequest& request) {
  return QueryAsksForStream(request.query) || adapters::AcceptsEventStream(request);
}

// The turn id recorded with an outbox payload, for log lines; "-" when none.
std::string TurnOf(const std::string& payload) {
  json stored = json::parse(payload, nullptr, false);
  std::string turn = stored.is_object() ? stored.value("turn_id", "") : "";
  return turn.empty() ? "-" : turn;
}

}  // namespace

std::string Sign(const std::string& secret, const std::string& timestamp, const std::string& body) {
  std::string data;
  data.reserve(timestamp.size() + 1 + body.size());
  data.append(timestamp).append(".").append(body);
  return "v1=" + net::HmacSha256Hex(secret, data);
}

WebhookAdapter::WebhookAdapter(boost::asio::io_context& io, config::WebhookConfig config,
                               std::shared_ptr<net::HttpClient> http, store::KvStore& kv,
                               store::Committer& committer, ConversationControl& control,
                               const Clock& clock, MetricsRegistry& metrics)
    : io_(io),
      config_(std::move(config)),
      http_(std::move(http)),
      kv_(kv),
      committer_(committer),
      control_(control),
      clock_(clock),
      metrics_(metrics),
      outbox_(kv),
      routes_(kv),
      delivered_(metrics.GetCounter("parley_webhook_deliveries_total",
                                    "Webhook callback deliveries by result", "result=\"ok\"")),
      delivery_failures_(metrics.GetCounter("parley_webhook_deliveries_total",
                                            "Webhook callback deliveries by result",
                                            "result=\"dropped\"")),
      bad_requests_(metrics.GetCounter("parley_webhook_bad_requests_total",
                                       "Webhook requests refused as invalid or unauthenticated")),
      deliveries_in_flight_(metrics.GetGauge("parley_webhook_deliveries_in_flight",
                                             "Webhook callback POSTs under way")) {}

Status WebhookAdapter::ResumeDeliveries() {
  auto owed = outbox_.Load(kPlatform);
  if (!owed.ok()) return owed.status();
  for (store::OutboxEntry& entry : *owed) {
    spdlog::info("webhook.delivery.resume id={} attempts={}", entry.id, entry.attempts);
    int64_t delay = std::max<int64_t>(0, entry.next_attempt_ms - clock_.NowMs());
    ScheduleDelivery(std::move(entry), delay);
  }
  return Status::Ok();
}

Status WebhookAdapter::Start(InboundSink& sink) {
  sink_ = &sink;
  if (config_.secret.empty()) {
    spdlog::warn(
        "webhook.auth.disabled: no webhook.secret is set and insecure_no_auth = true; requests "
        "are NOT authenticated (allowed only because the listener is loopback)");
  }
  return Status::Ok();
}

void WebhookAdapter::Stop(std::function<void()> done) {
  stopping_ = true;
  // Turns have been drained by now; a stream still open will get no reply: end it, so the
  // server (which does not cut streams at Stop) can close its connection.
  std::unordered_map<std::string, std::shared_ptr<adapters::StreamedReply>> open;
  {
    std::lock_guard<std::mutex> lock(streams_mu_);
    open.swap(streams_);
  }
  for (auto& [event_id, sse] : open) {
    net::Responder parked;
    pending_.Take(event_id, parked);
    sse->Abandon("shutting down before the reply was ready");
  }
  if (done) done();
}

bool WebhookAdapter::DeliversDurably(const OutboundMessage& message) const {
  return !message.reply_route.empty() || message.in_reply_to.empty();
}

bool WebhookAdapter::Handle(const net::HttpRequest& request, net::Responder& respond) {
  if (request.path == "/v1/messages") {
    HandleMessage(request, std::move(respond));
    return true;
  }
  if (request.path == "/v1/forget") {
    HandleForget(request, std::move(respond));
    return true;
  }
  return false;
}

std::optional<net::HttpResponse> WebhookAdapter::Authenticate(
    const net::HttpRequest& request) const {
  if (config_.secret.empty()) return std::nullopt;  // insecure_no_auth (validated: loopback only)
  const std::string timestamp = net::FindHeader(request.headers, "x-parley-timestamp");
  const std::string signature = net::FindHeader(request.headers, "x-parley-signature");
  if (timestamp.empty() || signature.empty()) {
    return JsonError(401, "unauthenticated",
                     "X-Parley-Timestamp and X-Parley-Signature headers are required");
  }
  char* end = nullptr;
  long long ts = std::strtoll(timestamp.c_str(), &end, 10);
  if (end == timestamp.c_str() || *end != '\0') {
    return JsonError(401, "unauthenticated", "X-Parley-Timestamp must be unix seconds");
  }
  if (std::llabs(clock_.NowSeconds() - ts) > config_.max_skew_seconds) {
    return JsonError(401, "stale_timestamp",
                     "X-Parley-Timestamp is more than " +
                         std::to_string(config_.max_skew_seconds) + " s from the server's clock");
  }
  if (!net::ConstantTimeEquals(Sign(config_.secret.reveal(), timestamp, request.body),
                               signature)) {
    return JsonError(401, "bad_signature", "X-Parley-Signature does not match the body");
  }
  return std::nullopt;
}

void WebhookAdapter::HandleMessage(const net::HttpRequest& request, net::Responder respond) {
  if (request.method != "POST") {
    net::HttpResponse r = JsonError(405, "method_not_allowed", "use POST");
    r.headers.emplace_back("Allow", "POST");
    return respond(std::move(r));
  }
  if (stopping_) return respond(JsonError(503, "unavailable", "shutting down"));
  if (auto refused = Authenticate(request)) {
    bad_requests_.Add();
    return respond(std::move(*refused));
  }
  json body = json::parse(request.body, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded()) {
    bad_requests_.Add();
    return respond(JsonError(400, "invalid_json", "the body is not valid JSON"));
  }
  if (!body.is_object()) {
    bad_requests_.Add();
    return respond(JsonError(422, "invalid_fields", "the body must be a JSON object"));
  }
  InboundMessage m;
  m.platform = kPlatform;
  std::string reply_url, id;
  std::string problems;
  for (auto [key, field] : {std::pair<const char*, std::string*>{"conversation", &m.channel},
                            {"user", &m.user},
                            {"text", &m.text}}) {
    auto it = body.find(key);
    if (it == body.end() || !it->is_string() ||
        it->get_ref<const std::string&>().find_first_not_of(" \t\r\n") == std::string::npos) {
      problems += std::string(problems.empty() ? "" : "; ") + key + " must be a non-empty string";
    } else {
      *field = it->get<std::string>();
    }
  }
  if (!OptionalString(body, "thread", m.thread)) problems += "; thread must be a string";
  if (!OptionalString(body, "user_name", m.user_name) || !IsDisplayName(m.user_name)) {
    problems += "; user_name must be a string of at most " + std::to_string(kMaxUserNameBytes) +
                " bytes without control characters";
  }
  if (!OptionalString(body, "reply_url", reply_url)) problems += "; reply_url must be a string";
  if (!OptionalString(body, "id", id)) problems += "; id must be a string";
  if (!reply_url.empty() && !IsHttpUrl(reply_url)) {
    problems += "; reply_url must be an http:// or https:// URL";
  }
  if (!problems.empty()) {
    bad_requests_.Add();
    if (problems.rfind("; ", 0) == 0) problems = problems.substr(2);
    return respond(JsonError(422, "invalid_fields", problems));
  }
  m.mentions_bot = true;
  m.is_direct = true;
  m.event_id = id.empty() ? NewId() : id;
  m.event_id_minted = id.empty();
  m.timestamp_ms = clock_.NowMs();
  m.reply_route = reply_url;
  const bool sync = reply_url.empty();
  const std::string event_id = m.event_id;

  // A streamed answer: everything that would answer the request goes through the StreamedReply,
  // which passes error responses through until its 200 head is out.
  std::shared_ptr<adapters::StreamedReply> sse;
  if (sync && WantsStream(request)) {
    sse = std::make_shared<adapters::StreamedReply>(std::move(respond));
    respond = [sse](net::HttpResponse r) { sse->Refuse(std::move(r)); };
  }
  auto shared_respond = std::make_shared<net::Responder>(std::move(respond));
  if (sync && !pending_.Park(event_id, *shared_respond)) {
    return (*shared_respond)(JsonError(409, "duplicate", "a request with this id is in progress"));
  }
  if (sse) {
    std::lock_guard<std::mutex> lock(streams_mu_);
    streams_[event_id] = sse;
  }
  auto self = shared_from_this();
  sink_->OnInbound(
      std::move(m), IntakeOptions{/*durable=*/!sync},
      [self, shared_respond, sync, event_id, sse](IntakeResult result) {
        net::Responder respond = *shared_respond;
        if (sync && !result.status.ok()) {
          net::Responder parked;
          if (!self->pending_.Take(event_id, parked)) return;  // cannot happen: not yet answered
          if (sse) self->TakeStream(event_id);
        }
        switch (result.status.code()) {
          case Status::Code::kOk:
            if (sse) sse->Start();  // the turn is on its way: open the event stream
            if (!sync) {
              net::HttpResponse r;
              r.status = 202;
              r.body = json{{"id", event_id}, {"status", "accepted"}}.dump();
              respond(std::move(r));
            }
            return;
          case Status::Code::kAlreadyExists:
            return respond(JsonError(409, "duplicate",
                                     "a message with this id was already received"));
          case Status::Code::kResourceExhausted: {
            net::HttpResponse r = JsonError(429, "rate_limited", "too many messages; slow down");
            int64_t seconds = std::max<int64_t>(1, (result.retry_after_ms + 999) / 1000);
            r.headers.emplace_back("Retry-After", std::to_string(seconds));
            return respond(std::move(r));
          }
          case Status::Code::kInvalidArgument:
            return respond(JsonError(422, "invalid_fields", result.status.message()));
          default:
            return respond(JsonError(503, "unavailable", result.status.message()));
        }
      });
}

void WebhookAdapter::HandleForget(const net::HttpRequest& request, net::Responder respond) {
  if (request.method != "POST") {
    net::HttpResponse r = JsonError(405, "method_not_allowed", "use POST");
    r.headers.emplace_back("Allow", "POST");
    return respond(std::move(r));
  }
  if (auto refused = Authenticate(request)) {
    bad_requests_.Add();
    return respond(std::move(*refused));
  }
  json body = json::parse(request.body, nullptr, false);
  if (body.is_discarded()) return respond(JsonError(400, "invalid_json", "invalid JSON"));
  std::string conversation, thread, user;
  if (!body.is_object() || !OptionalString(body, "conversation", conversation) ||
      !OptionalString(body, "thread", thread) || !OptionalString(body, "user", user) ||
      (conversation.empty() == user.empty())) {
    return respond(JsonError(422, "invalid_fields",
                             "give either \"conversation\" (and optional \"thread\") or \"user\""));
  }
  auto done = [respond](Result<size_t> removed) {
    if (!removed.ok()) return respond(JsonError(503, "unavailable", removed.status().message()));
    net::HttpResponse r;
    r.body = json{{"forgotten_turns", *removed}}.dump();
    respond(std::move(r));
  };
  if (conversation.empty()) {
    control_.ForgetUser(kPlatform, user, std::move(done));
  } else {
    control_.Forget(ConversationKey{kPlatform, conversation, thread}, std::move(done));
  }
}

std::shared_ptr<adapters::StreamedReply> WebhookAdapter::TakeStream(const std::string& event_id) {
  std::lock_guard<std::mutex> lock(streams_mu_);
  auto it = streams_.find(event_id);
  if (it == streams_.end()) return nullptr;
  std::shared_ptr<adapters::StreamedReply> sse = std::move(it->second);
  streams_.erase(it);
  return sse;
}

void WebhookAdapter::SendPartial(const OutboundMessage& partial) {
  if (partial.in_reply_to.empty() || !partial.reply_route.empty()) return;
  std::shared_ptr<adapters::StreamedReply> sse;
  {
    std::lock_guard<std::mutex> lock(streams_mu_);
    auto it = streams_.find(partial.in_reply_to);
    if (it == streams_.end()) return;
    sse = it->second;
  }
  sse->Partial(partial);
}

void WebhookAdapter::Send(OutboundMessage message, DeliveryCallback done) {
  if (message.silent && (message.in_reply_to.empty() || !message.reply_route.empty())) {
    if (done) done(Status::Ok());  // nothing to show, and nobody waits on a connection
    return;
  }
  // A request waiting on its connection gets the answer as its response.
  if (!message.in_reply_to.empty() && message.reply_route.empty()) {
    if (std::shared_ptr<adapters::StreamedReply> sse = TakeStream(message.in_reply_to)) {
      net::Responder parked;
      pending_.Take(message.in_reply_to, parked);  // frees the id; the StreamedReply answers
      Status status = sse->Final(message);
      if (done) done(status);
      return;
    }
    net::Responder respond;
    if (pending_.Take(message.in_reply_to, respond)) {
      net::HttpResponse r;
      r.body = adapters::ReplyJson(message).dump();
      respond(std::move(r));
      if (done) done(Status::Ok());
    } else if (message.silent) {
      if (done) done(Status::Ok());  // the request was answered already (e.g. by the desk)
    } else if (done) {
      done(Status::NotFound("the request waiting for this reply is gone"));
    }
    return;
  }
  store::OutboxEntry entry;
  entry.id = message.id;
  entry.platform = kPlatform;
  entry.target = message.reply_route;
  entry.payload = ToJsonText(message);  // the outbox keeps the message; Deliver renders it
  entry.created_ms = clock_.NowMs();
  if (!entry.target.empty()) {
    // The router recorded this delivery in the outbox with the turn; deliver it.
    Deliver(std::move(entry));
    if (done) done(Status::Ok());
    return;
  }
  // The bot speaks first: to the conversation's latest reply_url, else the default.
  Result<std::string> route = routes_.Get(message.conversation);
  entry.target = route.ok() ? *route : config_.default_reply_url;
  if (entry.target.empty()) {
    spdlog::warn("webhook.send.no_route conv={} id={}", message.conversation.Display(), entry.id);
    if (done) done(Status::FailedPrecondition("no reply_url known and no default_reply_url"));
    return;
  }
  store::WriteBatch batch;
  outbox_.Put(batch, entry);
  auto self = shared_from_this();
  committer_.Submit(std::move(batch), [self, entry, done](Status status) {
    boost::asio::post(self->io_, [self, entry, done, status] {
      if (!status.ok()) {
        if (done) done(status);
        return;
      }
      self->Deliver(entry);
      if (done) done(Status::Ok());
    });
  });
}

void WebhookAdapter::ScheduleDelivery(store::OutboxEntry entry, int64_t delay_ms) {
  auto timer = std::make_shared<boost::asio::steady_timer>(io_);
  timer->expires_after(std::chrono::milliseconds(delay_ms));
  auto self = shared_from_this();
  timer->async_wait([self, timer, entry = std::move(entry)](boost::system::error_code ec) mutable {
    if (ec) return;
    self->Deliver(std::move(entry));
  });
}

void WebhookAdapter::ReportDelivered(const store::OutboxEntry& entry) {
  DeliveryListener* listener = delivery_listener();
  if (listener == nullptr) return;
  json stored = json::parse(entry.payload, nullptr, false);
  if (!stored.is_object()) return;
  DeliveryReceipt receipt;
  receipt.message_id = entry.id;
  receipt.conversation.platform = kPlatform;
  receipt.conversation.channel = stored.value("channel", "");
  receipt.conversation.thread = stored.value("thread", "");
  // The callback's "id": a client replies in this message's thread with "thread": id.
  receipt.platform_message_id = entry.id;
  listener->OnDelivered(receipt);
}

void WebhookAdapter::Deliver(store::OutboxEntry entry) {
  if (stopping_) return;  // stays in the outbox; resumed at the next start
  if (entry.target.empty()) {
    // Written by another module (the escalation desk) for a conversation without a reply_url
    // of its own, and not yet routed (e.g. a crash came first): route it as Send does when the
    // bot speaks first.
    json stored = json::parse(entry.payload, nullptr, false);
    if (stored.is_object()) {
      const ConversationKey conv{kPlatform, stored.value("channel", ""),
                                 stored.value("thread", "")};
      Result<std::string> route = routes_.Get(conv);
      entry.target = route.ok() ? *route : config_.default_reply_url;
    }
    if (entry.target.empty()) {
      spdlog::warn("webhook.send.no_route id={} (no reply_url known and no default_reply_url; "
                   "dropped)",
                   entry.id);
      deliveries_in_flight_.Add(1);
      return DeliveryDone(entry, /*remove=*/true);
    }
  }
  deliveries_in_flight_.Add(1);
  net::ClientRequest request;
  request.method = "POST";
  request.url = entry.target;
  request.body = CallbackBody(entry.payload);
  request.timeout_ms = config_.delivery_timeout_ms;
  request.headers.emplace_back("Content-Type", "application/json");
  request.headers.emplace_back("X-Parley-Delivery", entry.id);
  if (!config_.secret.empty()) {
    const std::string ts = std::to_string(clock_.NowSeconds());
    request.headers.emplace_back("X-Parley-Timestamp", ts);
    request.headers.emplace_back("X-Parley-Signature",
                                 Sign(config_.secret.reveal(), ts, request.body));
  }
  auto self = shared_from_this();
  http_->Request(std::move(request), [self, entry](Result<net::ClientResponse> result) mutable {
    entry.attempts += 1;
    int64_t retry_after_ms = 0;
    bool permanent = false;
    if (result.ok()) {
      const int status = result->status;
      if (status >= 200 && status < 300) {
        self->delivered_.Add();
        spdlog::info("webhook.delivered turn={} id={} status={} attempts={}",
                     TurnOf(entry.payload), entry.id, status, entry.attempts);
        self->ReportDelivered(entry);
        return self->DeliveryDone(entry, /*remove=*/true);
      }
      entry.last_error = "HTTP " + std::to_string(status);
      retry_after_ms = ParseRetryAfterMs(result->headers);
      permanent = status >= 400 && status < 500 && status != 408 && status != 429;
    } else {
      entry.last_error = result.status().ToString();
    }
    if (permanent || entry.attempts >= self->config_.delivery_max_attempts) {
      self->delivery_failures_.Add();
      spdlog::error("webhook.delivery.dropped turn={} id={} attempts={} error=\"{}\"",
                    TurnOf(entry.payload), entry.id, entry.attempts, entry.last_error);
      return self->DeliveryDone(entry, /*remove=*/true);
    }
    int64_t delay = std::max(retry_after_ms,
                             net::BackoffDelayMs(net::BackoffPolicy{500, 60'000}, entry.attempts - 1));
    entry.next_attempt_ms = self->clock_.NowMs() + delay;
    spdlog::warn("webhook.delivery.retry turn={} id={} attempt={} in_ms={} error=\"{}\"",
                 TurnOf(entry.payload), entry.id, entry.attempts, delay, entry.last_error);
    store::WriteBatch batch;
    self->outbox_.Put(batch, entry);
    self->committer_.Submit(std::move(batch), nullptr);
    self->deliveries_in_flight_.Add(-1);
    self->ScheduleDelivery(std::move(entry), delay);
  });
}

void WebhookAdapter::DeliveryDone(const store::OutboxEntry& entry, bool remove) {
  if (remove) {
    store::WriteBatch batch;
    outbox_.Remove(batch, kPlatform, entry.id);
    committer_.Submit(std::move(batch), nullptr);
  }
  deliveries_in_flight_.Add(-1);
}

}  // namespace parley::webhook
