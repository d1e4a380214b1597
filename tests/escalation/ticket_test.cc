#include "escalation/ticket.h"

#include <gtest/gtest.h>

namespace parley::escalation {
namespace {

TEST(TicketTest, JsonRoundTripKeepsEveryField) {
  Ticket t;
  t.id = "17";
  t.conversation = {"slack", "C1/x", "1700.01"};
  t.user = "U1";
  t.user_name = "Ann";
  t.reply_route = "http://127.0.0.1/cb";
  t.queue = "billing";
  t.reason = "tool";
  t.detail = "refund over limit";
  t.priority = 2;
  t.state = TicketState::kClaimed;
  t.created_ms = 1;
  t.queued_ms = 2;
  t.claimed_ms = 3;
  t.closed_ms = 4;
  t.agent = "U9";
  t.agent_name = "Bob";
  t.closed_by = "Bob";
  t.summary = "wants a refund";
  t.transcript = {{"user", "Ann", "refund please \"now\"", 5, "ev1"},
                  {"note", "Bob", "vip", 6, ""}};
  t.card_message_id = "esc-17-x-card";
  t.card_thread = "1700.02";
  t.agents_seen = 2;
  t.sla_due_ms = 7;
  t.sla_stage = 1;
  t.last_notice_ms = 8;
  t.confidence = 0.25;
  t.sources = {"Refunds", "FAQ"};
  Result<Ticket> back = TicketFromJson(TicketToJson(t));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(*back, t);
  for (TicketState s : {TicketState::kQueued, TicketState::kClaimed, TicketState::kResolved,
                        TicketState::kReturned, TicketState::kAbandoned}) {
    t.state = s;
    EXPECT_EQ(TicketFromJson(TicketToJson(t))->state, s);
  }
}

TEST(TicketTest, RejectsGarbage) {
  EXPECT_FALSE(TicketFromJson("not json").ok());
  EXPECT_FALSE(TicketFromJson("[]").ok());
  EXPECT_FALSE(TicketFromJson(R"({"id":"1","state":"flying"})").ok());
  EXPECT_FALSE(TicketFromJson(R"({"state":"queued"})").ok());
  EXPECT_FALSE(TicketFromJson(R"({"id":"1","state":"queued","priority":"high"})").ok());
  EXPECT_TRUE(TicketFromJson(R"({"id":"1","state":"queued"})").ok());
}

}  // namespace
}  // namespace parley::escalation
