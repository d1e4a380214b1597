#include "core/metrics.h"

#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace parley {
namespace {

TEST(MetricsTest, RendersPrometheusText) {
  MetricsRegistry registry;
  registry.GetCounter("parley_messages_in_total", "Messages in", "adapter=\"webhook\"").Add(3);
  registry.GetGauge("parley_queue_depth", "Depth").Set(-2);
  Histogram& h = registry.GetHistogram("parley_stage_seconds", "Stages", "stage=\"total\"");
  h.ObserveSeconds(0.0002);   // in the 0.00025 bucket
  h.ObserveSeconds(0.003);    // in the 0.005 bucket
  h.ObserveSeconds(100.0);    // only +Inf
  std::string text = registry.RenderPrometheus();
  EXPECT_NE(text.find("# TYPE parley_messages_in_total counter\n"), std::string::npos) << text;
  EXPECT_NE(text.find("parley_messages_in_total{adapter=\"webhook\"} 3\n"), std::string::npos);
  EXPECT_NE(text.find("parley_queue_depth -2\n"), std::string::npos);
  EXPECT_NE(text.find("parley_stage_seconds_bucket{stage=\"total\",le=\"0.0001\"} 0\n"),
            std::string::npos) << text;
  EXPECT_NE(text.find("parley_stage_seconds_bucket{stage=\"total\",le=\"0.00025\"} 1\n"),
            std::string::npos);
  EXPECT_NE(text.find("parley_stage_seconds_bucket{stage=\"total\",le=\"0.005\"} 2\n"),
            std::string::npos);
  EXPECT_NE(text.find("parley_stage_seconds_bucket{stage=\"total\",le=\"10\"} 2\n"),
            std::string::npos);
  EXPECT_NE(text.find("parley_stage_seconds_bucket{stage=\"total\",le=\"+Inf\"} 3\n"),
            std::string::npos);
  EXPECT_NE(text.find("parley_stage_seconds_count{stage=\"total\"} 3\n"), std::string::npos);
}

TEST(MetricsTest, HumanScaleCountsMinutesAndHours) {
  MetricsRegistry registry;
  Histogram& h = registry.GetHistogram("parley_escalation_claim_seconds", "Claims", "",
                                       HistogramScale::kHuman);
  h.ObserveSeconds(45);        // le 60
  h.ObserveSeconds(20 * 60);   // le 1800
  h.ObserveSeconds(3 * 3600);  // le 14400
  // The scale is fixed by the first call.
  EXPECT_EQ(&registry.GetHistogram("parley_escalation_claim_seconds", "Claims"), &h);
  const std::string text = registry.RenderPrometheus();
  for (const auto& [le, n] : std::vector<std::pair<std::string, int>>{
           {"10", 0}, {"30", 0}, {"60", 1}, {"900", 1}, {"1800", 2}, {"14400", 3}, {"+Inf", 3}}) {
    EXPECT_NE(text.find("parley_escalation_claim_seconds_bucket{le=\"" + le + "\"} " +
                        std::to_string(n) + "\n"),
              std::string::npos)
        << le << "\n"
        << text;
  }
  EXPECT_EQ(text.find("le=\"0.0001\""), std::string::npos) << text;
  EXPECT_NE(text.find("parley_escalation_claim_seconds_sum 12045.000000\n"), std::string::npos)
      << text;
}

TEST(MetricsTest, SlowScaleReachesFiveMinutes) {
  MetricsRegistry registry;
  Histogram& h =
      registry.GetHistogram("parley_llm_seconds", "Calls", "", HistogramScale::kSlow);
  h.ObserveSeconds(0.05);
  h.ObserveSeconds(25);
  h.ObserveSeconds(400);
  const std::string text = registry.RenderPrometheus();
  EXPECT_NE(text.find("parley_llm_seconds_bucket{le=\"0.1\"} 1\n"), std::string::npos) << text;
  EXPECT_NE(text.find("parley_llm_seconds_bucket{le=\"20\"} 1\n"), std::string::npos) << text;
  EXPECT_NE(text.find("parley_llm_seconds_bucket{le=\"30\"} 2\n"), std::string::npos) << text;
  EXPECT_NE(text.find("parley_llm_seconds_bucket{le=\"300\"} 2\n"), std::string::npos) << text;
  EXPECT_NE(text.find("parley_llm_seconds_bucket{le=\"+Inf\"} 3\n"), std::string::npos) << text;
}

TEST(MetricsTest, SameNameAndLabelsIsTheSameCounterAcrossThreads) {
  MetricsRegistry registry;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 1000; ++i) registry.GetCounter("c_total", "help", "x=\"1\"").Add();
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(registry.GetCounter("c_total", "help", "x=\"1\"").value(), 4000u);
  EXPECT_EQ(registry.GetCounter("c_total", "help", "x=\"2\"").value(), 0u);
}

}  // namespace
}  // namespace parley
