#pragma once
// Parsing of the commands agents type in an agents' channel (the leading bot mention already
// stripped by the adapter).
//
// Forms: "claim", "claim 17", "claim #17", "!claim 17", "/claim 17"; likewise resolve, return,
// show, help; "transfer QUEUE", "transfer 17 QUEUE"; "note TEXT", "note 17 TEXT"; "reply 17 TEXT"
// (relay to the user from outside the card thread, for platforms without threads).
// Without a '!' or '/' prefix a message is a command only when it has exactly a command's shape
// ("claim", "return 17", "transfer billing"), so an agent's reply such as "Return the item and
// ..." in a card thread is relayed, not taken as a command. Exception: "note ..." is always a note
// (erring on the side of keeping text internal). With a prefix, a malformed command is reported
// (Command::error) and an unknown verb is kUnknown.
// Outside a card thread (in_thread = false) note takes the ticket id first: "note 17 TEXT".
// Thread-safety: pure functions.

#include <string>
#include <string_view>

namespace parley::escalation {

enum class Verb {
  kNone,
  kClaim,
  kResolve,
  kReturn,
  kTransfer,
  kNote,
  kShow,
  kHelp,
  kReply,
  kUnknown
};

struct Command {
  Verb verb = Verb::kNone;  // kNone: not a command (plain text)
  std::string word;       // the verb as typed, lower-cased ("claim"; for kUnknown the unknown word)
  std::string ticket_id;  // "17" when given (without '#'); empty otherwise
  std::string arg;        // transfer: the queue; note / reply: the text
  std::string error;      // non-empty: recognised verb but bad arguments (the usage line)
};

Command ParseCommand(std::string_view text, bool in_thread);

// The usage text listed by "help".
std::string CommandHelp();

}  // namespace parley::escalation
