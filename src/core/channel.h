#pragma once
// The ports between adapters and the engine. The engine never includes an adapter and adapters
// never include the engine: adapters push into an InboundSink and implement ChannelAdapter; the
// engine replies through a ReplySink which routes by platform to the adapter that owns it.

#include <functional>
#include <string>

#include "core/message.h"
#include "core/status.h"

namespace parley {

// Receives messages from adapters. Thread-safety: thread-safe; returns at once (work is queued).
class InboundSink {
 public:
  virtual ~InboundSink() = default;
  // Queues the message for a turn. The callback, when set, runs once the message has been
  // accepted durably (or refused): adapters that acknowledge only durable intake wait for it.
  // Refusals: AlreadyExists (duplicate event), ResourceExhausted (rate limited),
  // Unavailable (shutting down), PermissionDenied (policy).
  virtual void OnInbound(InboundMessage message, std::function<void(Status)> accepted) = 0;
};

using DeliveryCallback = std::function<void(Status)>;

// Sends what the bot says. Thread-safety: thread-safe.
class ReplySink {
 public:
  virtual ~ReplySink() = default;
  // Delivers the message (asynchronously); done reports the final outcome. A message that is
  // accepted for durable delivery reports OK once queued durably.
  virtual void Send(OutboundMessage message, DeliveryCallback done) = 0;
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
};

}  // namespace parley
