#pragma once
// Work another module does around the bot's turns (the escalation desk): it may take a message
// before the bot answers it, and see the answer before it is committed and sent. The engine
// knows the interface only; the composition root (src/app) plugs the implementation in.
// Thread-safety: implementations must be thread-safe; for one conversation the calls come in
// order (the Router's serial queue), for different conversations concurrently.

#include "core/message.h"
#include "engine/engine.h"

namespace parley::engine {

class TurnHooks {
 public:
  virtual ~TurnHooks() = default;
  // Before the engine runs. True when the hook dealt with the message: the bot does not answer
  // it, the Router records the event as handled (de-duplication mark, inbox removal) and
  // completes a caller still waiting with a silent reply. Whatever the hook sends, it sends (and
  // makes durable) itself, with in_reply_to = message.event_id and the message's reply_route
  // when it answers the message.
  virtual bool BeforeTurn(const InboundMessage& message) = 0;
  // After the engine answered, before the turn is committed and the reply sent: may amend the
  // reply (e.g. add an acknowledgement; memory keeps the bot's own answer, already in
  // out.writes) and send messages of its own.
  virtual void AfterTurn(const InboundMessage& message, TurnOutput& out) = 0;
};

}  // namespace parley::engine
