#include "escalation/commands.h"

#include <cctype>
#include <vector>

namespace parley::escalation {
namespace {

std::string_view Trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

// Splits off the first whitespace-separated word.
std::string_view NextWord(std::string_view& rest) {
  rest = Trim(rest);
  size_t i = 0;
  while (i < rest.size() && !std::isspace(static_cast<unsigned char>(rest[i]))) ++i;
  std::string_view word = rest.substr(0, i);
  rest = Trim(rest.substr(i));
  return word;
}

// "17" or "#17" -> "17"; empty when not an id.
std::string AsId(std::string_view word, bool require_hash) {
  bool hash = false;
  if (!word.empty() && word.front() == '#') {
    hash = true;
    word.remove_prefix(1);
  }
  if (require_hash && !hash) return "";
  if (word.empty() || word.size() > 18) return "";
  for (char c : word) {
    if (!std::isdigit(static_cast<unsigned char>(c))) return "";
  }
  return std::string(word);
}

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

Verb Lookup(const std::string& word) {
  if (word == "claim") return Verb::kClaim;
  if (word == "resolve" || word == "resolved") return Verb::kResolve;
  if (word == "return") return Verb::kReturn;
  if (word == "transfer") return Verb::kTransfer;
  if (word == "note") return Verb::kNote;
  if (word == "show") return Verb::kShow;
  if (word == "help") return Verb::kHelp;
  if (word == "reply") return Verb::kReply;
  return Verb::kNone;
}

}  // namespace

Command ParseCommand(std::string_view text, bool in_thread) {
  Command cmd;
  std::string_view rest = Trim(text);
  bool explicit_form = false;
  if (!rest.empty() && (rest.front() == '!' || rest.front() == '/')) {
    explicit_form = true;
    rest.remove_prefix(1);
  }
  const std::string word = Lower(NextWord(rest));
  const Verb verb = Lookup(word);
  if (verb == Verb::kNone) {
    if (explicit_form && !word.empty()) {
      cmd.verb = Verb::kUnknown;
      cmd.word = word;
    }
    return cmd;
  }
  cmd.word = word;
  switch (verb) {
    case Verb::kClaim:
    case Verb::kResolve:
    case Verb::kReturn:
    case Verb::kShow:
    case Verb::kHelp: {
      std::vector<std::string_view> args;
      std::string_view r = rest;
      while (!r.empty()) args.push_back(NextWord(r));
      std::string id = args.size() == 1 ? AsId(args[0], false) : "";
      if (args.empty() || !id.empty()) {
        cmd.verb = verb;
        cmd.ticket_id = id;
        if (verb == Verb::kHelp) cmd.ticket_id.clear();
        return cmd;
      }
      if (!explicit_form) return Command{};
      cmd.verb = verb;
      cmd.error = "usage: " + word + " [ID]";
      return cmd;
    }
    case Verb::kTransfer: {
      std::vector<std::string_view> args;
      std::string_view r = rest;
      while (!r.empty()) args.push_back(NextWord(r));
      if (args.size() == 1) {
        cmd.verb = verb;
        cmd.arg = std::string(args[0]);
        return cmd;
      }
      if (args.size() == 2 && !AsId(args[0], false).empty()) {
        cmd.verb = verb;
        cmd.ticket_id = AsId(args[0], false);
        cmd.arg = std::string(args[1]);
        return cmd;
      }
      if (!explicit_form) return Command{};
      cmd.verb = verb;
      cmd.error = "usage: transfer [ID] QUEUE";
      return cmd;
    }
    case Verb::kNote:
    case Verb::kReply: {
      std::string_view r = rest;
      std::string_view first = NextWord(r);
      // In a thread the id is optional and must be written "#17" (so "note 5 minutes..." is text).
      std::string id = AsId(first, in_thread && verb == Verb::kNote);
      if (!id.empty()) rest = r;
      if (verb == Verb::kReply && id.empty()) {
        if (!explicit_form) return Command{};
        cmd.verb = verb;
        cmd.error = "usage: reply ID TEXT";
        return cmd;
      }
      cmd.verb = verb;
      cmd.ticket_id = id;
      cmd.arg = std::string(rest);
      if (cmd.arg.empty()) {
        cmd.error = verb == Verb::kNote ? (in_thread ? "usage: note TEXT" : "usage: note ID TEXT")
                                        : "usage: reply ID TEXT";
      } else if (verb == Verb::kNote && !in_thread && id.empty()) {
        cmd.error = "usage: note ID TEXT (or write the note in the ticket's thread)";
      }
      return cmd;
    }
    default:
      return cmd;
  }
}

std::string CommandHelp() {
  return "In a ticket's thread: `claim` · `resolve` · `return` (hand back to the bot) · "
         "`transfer QUEUE` · `note TEXT` (internal) · `show` · any other text is sent to the user "
         "once you have claimed the ticket.\nFrom the channel: `claim 17`, `resolve 17`, `return "
         "17`, `transfer 17 QUEUE`, `note 17 TEXT`, `reply 17 TEXT`, `show 17`.";
}

}  // namespace parley::escalation
