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
