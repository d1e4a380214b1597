#include "escalation/business_hours.h"

#include <gtest/gtest.h>

#include "escalation/options.h"

namespace parley::escalation {
namespace {

constexpr int64_t kMin = 60'000;
constexpr int64_t kHour = 60 * kMin;
constexpr int64_t kDay = 24 * kHour;
// Monday 2023-11-13 00:00 UTC.
constexpr int64_t kMonday = 1'699'833'600'000;

TEST(BusinessHoursTest, EmptyIsAlwaysOpen) {
  Result<BusinessHours> h = BusinessHours::Parse("  ");
  ASSERT_TRUE(h.ok());
  EXPECT_TRUE(h->always_open());
  EXPECT_TRUE(h->IsOpen(kMonday + 3 * kHour, 0));
  EXPECT_EQ(h->NextOpen(kMonday + 3 * kHour, 0), kMonday + 3 * kHour);
  EXPECT_EQ(h->AddOpenTime(kMonday, 30 * kMin, 0), kMonday + 30 * kMin);
}

TEST(BusinessHoursTest, ParsesDaysRangesAndSeveralItems) {
  Result<BusinessHours> h = BusinessHours::Parse("mon-fri 09:00-17:00, sat 10:00-14:00");
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  EXPECT_FALSE(h->always_open());
  EXPECT_FALSE(h->IsOpen(kMonday + 8 * kHour + 59 * kMin, 0));
  EXPECT_TRUE(h->IsOpen(kMonday + 9 * kHour, 0));
  EXPECT_TRUE(h->IsOpen(kMonday + 16 * kHour + 59 * kMin, 0));
  EXPECT_FALSE(h->IsOpen(kMonday + 17 * kHour, 0));             // end is exclusive
  EXPECT_TRUE(h->IsOpen(kMonday + 4 * kDay + 12 * kHour, 0));   // Friday
  EXPECT_TRUE(h->IsOpen(kMonday + 5 * kDay + 11 * kHour, 0));   // Saturday
  EXPECT_FALSE(h->IsOpen(kMonday + 5 * kDay + 15 * kHour, 0));  // Saturday afternoon
  EXPECT_FALSE(h->IsOpen(kMonday + 6 * kDay + 11 * kHour, 0));  // Sunday
}

TEST(BusinessHoursTest, OffsetShiftsTheWindow) {
  Result<BusinessHours> h = BusinessHours::Parse("mon-fri 09:00-17:00");
  ASSERT_TRUE(h.ok());
  // 08:30 UTC is 09:30 at UTC+01:00.
  EXPECT_FALSE(h->IsOpen(kMonday + 8 * kHour + 30 * kMin, 0));
  EXPECT_TRUE(h->IsOpen(kMonday + 8 * kHour + 30 * kMin, 60));
  // Sunday 23:30 UTC is Monday 01:30 at +02:00: closed, next open Monday 09:00 local = 07:00 UTC.
  EXPECT_EQ(h->NextOpen(kMonday - 30 * kMin, 120), kMonday + 7 * kHour);
}

TEST(BusinessHoursTest, NextOpenSkipsToTheNextWindow) {
  Result<BusinessHours> h = BusinessHours::Parse("mon-fri 09:00-17:00, sat 10:00-14:00");
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->NextOpen(kMonday + 10 * kHour, 0), kMonday + 10 * kHour);  // open now
  EXPECT_EQ(h->NextOpen(kMonday + 18 * kHour, 0), kMonday + kDay + 9 * kHour);
  EXPECT_EQ(h->NextOpen(kMonday + 4 * kDay + 18 * kHour, 0), kMonday + 5 * kDay + 10 * kHour);
  EXPECT_EQ(h->NextOpen(kMonday + 5 * kDay + 15 * kHour, 0), kMonday + 7 * kDay + 9 * kHour);
  EXPECT_EQ(FormatLocalTime(kMonday + 7 * kDay + 9 * kHour, 0), "Monday 09:00 (UTC+00:00)");
  EXPECT_EQ(FormatLocalTime(kMonday + 7 * kDay + 9 * kHour, -330), "Monday 03:30 (UTC-05:30)");
}

TEST(BusinessHoursTest, AddOpenTimeCountsOnlyOpenTime) {
  Result<BusinessHours> h = BusinessHours::Parse("mon-fri 09:00-17:00");
  ASSERT_TRUE(h.ok());
  // Friday 16:50 + 30 min of business time = Monday 09:20.
  EXPECT_EQ(h->AddOpenTime(kMonday + 4 * kDay + 16 * kHour + 50 * kMin, 30 * kMin, 0),
            kMonday + 7 * kDay + 9 * kHour + 20 * kMin);
  // Started before opening: counts from 09:00.
  EXPECT_EQ(h->AddOpenTime(kMonday + 7 * kHour, 30 * kMin, 0), kMonday + 9 * kHour + 30 * kMin);
  // Inside one window.
  EXPECT_EQ(h->AddOpenTime(kMonday + 10 * kHour, 30 * kMin, 0), kMonday + 10 * kHour + 30 * kMin);
}

TEST(BusinessHoursTest, MergesAdjacentAndWrapsDayRanges) {
  Result<BusinessHours> h = BusinessHours::Parse("fri-mon 00:00-24:00");
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  EXPECT_TRUE(h->IsOpen(kMonday + 23 * kHour, 0));
  EXPECT_FALSE(h->IsOpen(kMonday + kDay + kHour, 0));     // Tuesday
  EXPECT_TRUE(h->IsOpen(kMonday + 6 * kDay + kHour, 0));  // Sunday
  // Saturday 23:00 + 2 h crosses midnight inside open time.
  EXPECT_EQ(h->AddOpenTime(kMonday + 5 * kDay + 23 * kHour, 2 * kHour, 0),
            kMonday + 6 * kDay + kHour);
  Result<BusinessHours> daily = BusinessHours::Parse("Daily 08:00-12:00, daily 11:00-13:00");
  ASSERT_TRUE(daily.ok());
  EXPECT_TRUE(daily->IsOpen(kMonday + 2 * kDay + 12 * kHour + 30 * kMin, 0));
}

TEST(BusinessHoursTest, RejectsMalformedSpecs) {
  for (const char* bad :
       {"mon-fri", "mon-fri 9:00-17:00", "xyz 09:00-17:00", "mon-fri 17:00-09:00",
        "mon 09:00-25:00", "mon 09:00-17:00,", "mon 09:60-17:00", "mo 09:00-10:00"}) {
    EXPECT_FALSE(BusinessHours::Parse(bad).ok()) << bad;
  }
}

TEST(OptionsTest, ValidateNamesTheProblem) {
  DeskOptions o;
  EXPECT_TRUE(Validate(o).ok());  // no queues: inactive, valid
  QueueOptions q;
  q.name = "general";
  q.agents = "webhook:agents";
  o.queues.push_back(q);
  EXPECT_TRUE(Validate(o).ok());

  DeskOptions dup = o;
  dup.queues.push_back(q);
  Status s = Validate(dup);
  EXPECT_TRUE(s.IsInvalidArgument());
  EXPECT_NE(s.message().find("duplicate"), std::string::npos) << s.ToString();

  DeskOptions bad_agents = o;
  bad_agents.queues[0].agents = "webhook";
  EXPECT_NE(Validate(bad_agents).message().find("agents"), std::string::npos);

  DeskOptions bad_regex = o;
  bad_regex.queues[0].patterns = {"refund("};
  EXPECT_NE(Validate(bad_regex).message().find("pattern"), std::string::npos);

  DeskOptions bad_hours = o;
  bad_hours.queues[0].business_hours = "weekdays 9-5";
  EXPECT_NE(Validate(bad_hours).message().find("business_hours"), std::string::npos);

  DeskOptions bad_prio = o;
  bad_prio.queues[0].priority = 9;
  EXPECT_FALSE(Validate(bad_prio).ok());

  DeskOptions policy_without_patterns = o;
  policy_without_patterns.queues[0].policy = true;
  EXPECT_FALSE(Validate(policy_without_patterns).ok());

  std::string platform, channel;
  ASSERT_TRUE(SplitAgents("matrix:!room:server", platform, channel));
  EXPECT_EQ(platform, "matrix");
  EXPECT_EQ(channel, "!room:server");
}

}  // namespace
}  // namespace parley::escalation
