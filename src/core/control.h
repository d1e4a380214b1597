#pragma once
// User-data controls that adapters expose to users (a "forget" command, a webhook call) without
// depending on the engine or the store.
// Thread-safety: implementations are thread-safe.

#include <cstddef>
#include <functional>
#include <string>

#include "core/message.h"
#include "core/status.h"

namespace parley {

using ForgetCallback = std::function<void(Result<size_t>)>;

// The deletions are synced writes: implementations run them off the io threads and report on
// another thread, so adapters may call these from an io thread.
class ConversationControl {
 public:
  virtual ~ConversationControl() = default;
  // Deletes the conversation's memory; done gets the number of turns removed.
  virtual void Forget(const ConversationKey& conversation, ForgetCallback done) = 0;
  // Deletes what the user said on platform, and the answers to it.
  virtual void ForgetUser(const std::string& platform, const std::string& user,
                          ForgetCallback done) = 0;
  // A user rated one of the bot's answers (message_id: the OutboundMessage id) in conversation.
  // Returns at once. Default: ignored.
  virtual void OnFeedback(const ConversationKey& conversation, const std::string& user,
                          const std::string& message_id, bool helpful) {
    (void)conversation;
    (void)user;
    (void)message_id;
    (void)helpful;
  }
};

}  // namespace parley
