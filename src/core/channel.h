#pragma once
// The ports between adapters and the engine. The engine never includes an adapter and adapters
// never include the engine: adapters push into an InboundSink and implement ChannelAdapter; the
// engine replies through a ReplySink which routes by platform to the adapter that owns it.

#include <functional>
#include <string>

#include "core/message.h"
#include "core/status.h"

namespace parley {

struct IntakeOptions {
  // Record the message durably (the inbox) before reporting it accepted, so a crash before the
  // answer is sent loses nothing: the turn is replayed at start-up. Adapters whose caller waits
  // for the answer on the same connection (and retries on failure) may turn this off.
  bool durable = true;
};

struct IntakeResult {
  // OK: accepted for a turn. AlreadyExists: duplicate event (already answered or in progress).
  // ResourceExhausted: rate limited, retry after retry_after_ms. Unavailable: shutting down or
  // the store failed. InvalidArgument: the message is unusable (e.g. empty text).
  Status status;
  int64_t retry_after_ms = 0;
};

// Receives messages from adapters. Thread-safety: thread-safe; returns at once (work is queued).
class InboundSink {
 public:
  virtual ~InboundSink() = default;
  // Queues the message for a turn; `accepted` runs once (on any thread) when the message is
  // accepted (durably, per options) or refused.
  virtual void OnInbound(InboundMessage message, IntakeOptions options,
                         std::function<void(IntakeResult)> accepted) = 0;
};

using DeliveryCallback = std::function<void(Status)>;

// Sends what the bot says. Thread-safety: thread-safe.
class ReplySink {
 public:
  virtual ~ReplySink() = default;
  // Whether delivering this message must survive a crash. If so, the engine records it in the
  // outbox (store::Outbox, platform = message.conversation.platform, payload = the message as
  // JSON) in the same atomic write as the turn, and the sink removes that record once delivered.
  virtual bool DeliversDurably(const OutboundMessage& message) const = 0;
  // Delivers the message (asynchronously); done reports the final outcome. A message that is
  // accepted for durable delivery reports OK once queued durably.
  virtual void Send(OutboundMessage message, DeliveryCallback done) = 0;
  // The reply being written, so far (streaming): `partial.text` is the whole text up to now, not
  // a delta, with the same id, conversation and reply_route as the final message that Send will
  // get. Best effort and never durable: an adapter may drop, throttle or ignore updates; the
  // final Send always carries the complete reply. Called in order for one reply, from any
  // thread. Default: ignored.
  virtual void SendPartial(const OutboundMessage& partial) { (void)partial; }
};

// Where a delivered message landed on its platform, for platforms that name messages themselves
// (a Slack ts, a Matrix event id): replies in the message's thread carry that id as
// InboundMessage::thread. Reported after the platform confirmed the post (also when a restart
// finds the post already made); may come more than once for one message.
struct DeliveryReceipt {
  std::string message_id;           // OutboundMessage::id
  ConversationKey conversation;     // where it was posted (thread empty: the channel's main line)
  std::string platform_message_id;  // the platform's id of the posted message
};

// Receives delivery receipts. Adapters report a message before they forget it (remove its
// outbox entry), so a listener that stores the receipt before returning keeps it across a crash.
// Thread-safety: called from any thread (also from inside ReplySink::Send); must not block for
// long: at most a store write for the messages it cares about.
class DeliveryListener {
 public:
  virtual ~DeliveryListener() = default;
  virtual void OnDelivered(const DeliveryReceipt& receipt) = 0;
};

// One platform connection. Thread-safety: start/stop from the composition root; send from any
// thread.
class ChannelAdapter : public ReplySink {
 public:
  virtual std::string platform() const = 0;
  // Begins receiving; messages go to sink, which outlives the adapter.
  virtual Status Start(InboundSink& sink) = 0;
  // Stops intake; done runs when in-flight platform work has finished.
  virtual void Stop(std::function<void()> done) = 0;
  // Receipts of delivered messages go here (adapters whose platform names messages report them;
  // others never call it). Set before Start; the listener must outlive the adapter.
  void SetDeliveryListener(DeliveryListener* listener) { delivery_listener_ = listener; }

 protected:
  DeliveryListener* delivery_listener() const { return delivery_listener_; }

 private:
  DeliveryListener* delivery_listener_ = nullptr;
};

}  // namespace parley
