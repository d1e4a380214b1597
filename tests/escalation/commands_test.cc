#include "escalation/commands.h"

#include <gtest/gtest.h>

namespace parley::escalation {
namespace {

TEST(CommandsTest, BareAndPrefixedForms) {
  for (const char* text : {"claim", "Claim", "!claim", "/claim", "  claim  "}) {
    Command c = ParseCommand(text, true);
    EXPECT_EQ(c.verb, Verb::kClaim) << text;
    EXPECT_TRUE(c.ticket_id.empty()) << text;
    EXPECT_TRUE(c.error.empty()) << text;
  }
  for (const char* text : {"claim 17", "claim #17", "!claim 17", "/claim #17"}) {
    Command c = ParseCommand(text, false);
    EXPECT_EQ(c.verb, Verb::kClaim) << text;
    EXPECT_EQ(c.ticket_id, "17") << text;
  }
  EXPECT_EQ(ParseCommand("resolve 3", false).verb, Verb::kResolve);
  EXPECT_EQ(ParseCommand("return", true).verb, Verb::kReturn);
  EXPECT_EQ(ParseCommand("show 4", false).ticket_id, "4");
  EXPECT_EQ(ParseCommand("help", false).verb, Verb::kHelp);
}

TEST(CommandsTest, SentencesAreNotCommands) {
  EXPECT_EQ(ParseCommand("Return the item to the store, please", true).verb, Verb::kNone);
  EXPECT_EQ(ParseCommand("claim your refund here", true).verb, Verb::kNone);
  EXPECT_EQ(ParseCommand("help is on the way", true).verb, Verb::kNone);
  EXPECT_EQ(ParseCommand("transfer the money to me", true).verb, Verb::kNone);
  EXPECT_EQ(ParseCommand("reply soon please", true).verb, Verb::kNone);
  EXPECT_EQ(ParseCommand("hello there", false).verb, Verb::kNone);
  EXPECT_EQ(ParseCommand("", false).verb, Verb::kNone);
}

TEST(CommandsTest, PrefixedMalformedOrUnknownIsReported) {
  Command unknown = ParseCommand("!frobnicate 3", true);
  EXPECT_EQ(unknown.verb, Verb::kUnknown);
  EXPECT_EQ(unknown.word, "frobnicate");
  Command bad = ParseCommand("!claim the thing", true);
  EXPECT_EQ(bad.verb, Verb::kClaim);
  EXPECT_FALSE(bad.error.empty());
  Command transfer = ParseCommand("/transfer a b c", true);
  EXPECT_EQ(transfer.verb, Verb::kTransfer);
  EXPECT_FALSE(transfer.error.empty());
}

TEST(CommandsTest, TransferTakesQueueAndOptionalId) {
  Command a = ParseCommand("transfer billing", true);
  EXPECT_EQ(a.verb, Verb::kTransfer);
  EXPECT_EQ(a.arg, "billing");
  EXPECT_TRUE(a.ticket_id.empty());
  Command b = ParseCommand("transfer #12 billing", false);
  EXPECT_EQ(b.ticket_id, "12");
  EXPECT_EQ(b.arg, "billing");
}

TEST(CommandsTest, NoteAndReply) {
  Command in_thread = ParseCommand("note 5 minutes ago the user called", true);
  EXPECT_EQ(in_thread.verb, Verb::kNote);
  EXPECT_TRUE(in_thread.ticket_id.empty());
  EXPECT_EQ(in_thread.arg, "5 minutes ago the user called");
  Command with_hash = ParseCommand("note #7 vip customer", true);
  EXPECT_EQ(with_hash.ticket_id, "7");
  EXPECT_EQ(with_hash.arg, "vip customer");
  Command main_line = ParseCommand("note 7 vip customer", false);
  EXPECT_EQ(main_line.ticket_id, "7");
  EXPECT_EQ(main_line.arg, "vip customer");
  EXPECT_TRUE(main_line.error.empty());
  EXPECT_FALSE(ParseCommand("note vip customer", false).error.empty());  // which ticket?
  EXPECT_FALSE(ParseCommand("note", true).error.empty());
  Command reply = ParseCommand("reply 7 Hello there", false);
  EXPECT_EQ(reply.verb, Verb::kReply);
  EXPECT_EQ(reply.ticket_id, "7");
  EXPECT_EQ(reply.arg, "Hello there");
}

}  // namespace
}  // namespace parley::escalation
