#pragma once
// The generic signed HTTP webhook adapter.
//
// Inbound: POST /v1/messages {"conversation","user","text","thread"?,"user_name"?,"reply_url"?,
//   "id"?} ("user_name": the display name agents see; at most 200 bytes, no control characters)
//   signed with X-Parley-Timestamp and X-Parley-Signature: v1=<hex HMAC-SHA256(secret,
//   timestamp + "." + raw body)>. Without reply_url the answer is the response (200); with it the
//   response is 202 {"id"} and the answer is POSTed to reply_url, signed the same way, retried with
//   backoff, and kept in the outbox until delivered (it survives restarts).
//   Streaming (synchronous mode only): with ?stream=1 (or stream=true) in the query, or
//   "Accept: text/event-stream", the answer is a 200 text/event-stream response: "delta" events
//   {"id","text": new text since the last event}, a "replace" event {"id","text": whole text}
//   when the text was rewritten, then one "message" event carrying the reply JSON of the
//   non-streaming response, and the end of the stream. Errors found before the turn starts
//   (auth, JSON, fields, duplicate, rate limit) are the usual JSON error responses. With
//   reply_url the stream flag is ignored.
//   POST /v1/forget {"conversation","thread"?} or {"user"}: deletes memory (signed too).
// Outbound without a request (the bot speaks first): POSTed to the conversation's latest
//   reply_url, else to webhook.default_reply_url. Each delivered callback is reported to the
//   delivery listener with its own id as the platform id: a client replies in the thread of a
//   message by sending "thread": that message's id.
// Thread-safety: thread-safe; HTTP handlers run on io threads.

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include <boost/asio/io_context.hpp>

#include "adapters/common/pending_replies.h"
#include "adapters/common/reply_stream.h"
#include "config/config.h"
#include "core/channel.h"
#include "core/clock.h"
#include "core/control.h"
#include "core/metrics.h"
#include "net/http.h"
#include "store/committer.h"
#include "store/kv_store.h"
#include "store/records.h"

namespace parley::webhook {

inline constexpr char kPlatform[] = "webhook";

// Signature header value for body at timestamp: "v1=" + hex HMAC-SHA256(secret, ts + "." + body).
std::string Sign(const std::string& secret, const std::string& timestamp, const std::string& body);

class WebhookAdapter final : public ChannelAdapter,
                             public std::enable_shared_from_this<WebhookAdapter> {
 public:
  WebhookAdapter(boost::asio::io_context& io, config::WebhookConfig config,
                 std::shared_ptr<net::HttpClient> http, store::KvStore& kv,
                 store::Committer& committer, ConversationControl& control, const Clock& clock,
                 MetricsRegistry& metrics);

  std::string platform() const override { return kPlatform; }
  // Resumes the deliveries left in the outbox by an earlier run. Call once, before the router
  // replays its inbox (whose replies arrive through Send) and before Start.
  Status ResumeDeliveries();
  // Begins accepting requests.
  Status Start(InboundSink& sink) override;
  // Stops intake. Streamed answers still open (their turn was not answered by now) end with an
  // "error" event, or a 503 if their head was not sent yet.
  void Stop(std::function<void()> done) override;
  bool DeliversDurably(const OutboundMessage& message) const override;
  void Send(OutboundMessage message, DeliveryCallback done) override;
  // Streams the partial reply to a synchronous request that asked for streaming; ignored
  // otherwise (no stream, callback delivery, or the request is gone).
  void SendPartial(const OutboundMessage& partial) override;

  // Serves the adapter's paths; returns false (and leaves the responder untouched) for others.
  bool Handle(const net::HttpRequest& request, net::Responder& respond);

 private:
  void HandleMessage(const net::HttpRequest& request, net::Responder respond);
  // Tells the delivery listener (if any) that a callback delivery succeeded.
  void ReportDelivered(const store::OutboxEntry& entry);
  // Removes and returns the stream waiting for event_id; null when none.
  std::shared_ptr<adapters::StreamedReply> TakeStream(const std::string& event_id);
  void HandleForget(const net::HttpRequest& request, net::Responder respond);
  // Empty when authentic; else the error response to send.
  std::optional<net::HttpResponse> Authenticate(const net::HttpRequest& request) const;
  void Deliver(store::OutboxEntry entry);
  void ScheduleDelivery(store::OutboxEntry entry, int64_t delay_ms);
  void DeliveryDone(const store::OutboxEntry& entry, bool remove);

  boost::asio::io_context& io_;
  config::WebhookConfig config_;
  std::shared_ptr<net::HttpClient> http_;
  store::KvStore& kv_;
  store::Committer& committer_;
  ConversationControl& control_;
  const Clock& clock_;
  MetricsRegistry& metrics_;
  store::Outbox outbox_;
  store::RouteBook routes_;
  InboundSink* sink_ = nullptr;
  std::atomic<bool> stopping_{false};
  adapters::PendingReplies<net::Responder> pending_;
  std::mutex streams_mu_;  // guards streams_
  // Synchronous requests that asked for streaming, by event id; also parked in pending_.
  std::unordered_map<std::string, std::shared_ptr<adapters::StreamedReply>> streams_;
  Counter& delivered_;
  Counter& delivery_failures_;
  Counter& bad_requests_;
  Gauge& deliveries_in_flight_;  // callback POSTs under way
};

}  // namespace parley::webhook
