#pragma once
// User-data controls that adapters expose to users (a "forget" command, a webhook call) without
// depending on the engine or the store.
// Thread-safety: implementations are thread-safe.

#include <cstddef>
#include <string>

#include "core/message.h"
#include "core/status.h"

namespace parley {

class ConversationControl {
 public:
  virtual ~ConversationControl() = default;
  // Deletes the conversation's memory. Returns the number of turns removed.
  virtual Result<size_t> Forget(const ConversationKey& conversation) = 0;
  // Deletes what the user said on platform, and the answers to it.
  virtual Result<size_t> ForgetUser(const std::string& platform, const std::string& user) = 0;
};

}  // namespace parley
