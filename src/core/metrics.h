#pragma once
// Process metrics rendered in the Prometheus text format (GET /metrics).
// Counters and histograms are created once (at wiring time or lazily) and updated lock-free.
// Thread-safety: thread-safe.

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace parley {

class Counter {
 public:
  void Add(uint64_t n = 1) { value_.fetch_add(n, std::memory_order_relaxed); }
  uint64_t value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> value_{0};
};

class Gauge {
 public:
  void Set(int64_t v) { value_.store(v, std::memory_order_relaxed); }
  void Add(int64_t d) { value_.fetch_add(d, std::memory_order_relaxed); }
  int64_t value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<int64_t> value_{0};
};

// Bucket bounds of a histogram (seconds), fixed per metric.
enum class HistogramScale {
  kFast,   // 100 us .. 10 s: request handling, store, retrieval, HTTP calls
  kSlow,   // 100 ms .. 5 min: model calls and whole model turns
  kHuman,  // 10 s .. 1 day: waits on people (time to claim, to resolve)
};

// Histogram in seconds.
class Histogram {
 public:
  explicit Histogram(HistogramScale scale = HistogramScale::kFast);
  // The upper bounds of the scale's buckets, ascending (+Inf comes after the last).
  static const std::vector<double>& Bounds(HistogramScale scale);
  void ObserveSeconds(double seconds);
  void ObserveNanos(int64_t nanos) { ObserveSeconds(static_cast<double>(nanos) / 1e9); }
  uint64_t count() const { return count_.load(std::memory_order_relaxed); }
  // Appends the _bucket/_sum/_count lines for name{labels}.
  void Render(std::string& out, const std::string& name, const std::string& labels) const;

 private:
  const std::vector<double>& bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> buckets_;  // bounds_.size() + 1
  std::atomic<uint64_t> count_{0};
  std::atomic<uint64_t> sum_nanos_{0};
};

class MetricsRegistry {
 public:
  // labels: Prometheus label text without braces, e.g. `adapter="webhook"`; may be empty.
  // The same name+labels returns the same object. References stay valid for the registry's life.
  Counter& GetCounter(const std::string& name, const std::string& help,
                      const std::string& labels = "");
  Gauge& GetGauge(const std::string& name, const std::string& help,
                  const std::string& labels = "");
  // The scale is fixed by the first call for a name+labels.
  Histogram& GetHistogram(const std::string& name, const std::string& help,
                          const std::string& labels = "",
                          HistogramScale scale = HistogramScale::kFast);
  std::string RenderPrometheus() const;

 private:
  struct Family {
    std::string type;
    std::string help;
    std::map<std::string, std::unique_ptr<Counter>> counters;
    std::map<std::string, std::unique_ptr<Gauge>> gauges;
    std::map<std::string, std::unique_ptr<Histogram>> histograms;
  };
  Family& GetFamily(const std::string& name, const std::string& type, const std::string& help);
  mutable std::mutex mu_;
  std::map<std::string, Family> families_;
};

}  // namespace parley
