#include "core/metrics.h"

#include <cstdio>

namespace parley {

Histogram::Histogram(HistogramScale scale)
    : bounds_(Bounds(scale)), buckets_(new std::atomic<uint64_t>[Bounds(scale).size() + 1]) {
  for (size_t i = 0; i <= bounds_.size(); ++i) buckets_[i].store(0, std::memory_order_relaxed);
}

const std::vector<double>& Histogram::Bounds(HistogramScale scale) {
  static const std::vector<double> kFast = {0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                                            0.005,  0.01,    0.025,  0.05,  0.1,
                                            0.25,   0.5,     1.0,    10.0};
  static const std::vector<double> kSlow = {0.1, 0.25, 0.5, 1,  2.5, 5,
                                            10,  20,   30,  60, 120, 300};
  static const std::vector<double> kHuman = {10,   30,   60,    120,   300,   600,  900,
                                             1800, 3600, 7200, 14400, 28800, 86400};
  switch (scale) {
    case HistogramScale::kSlow:
      return kSlow;
    case HistogramScale::kHuman:
      return kHuman;
    case HistogramScale::kFast:
      break;
  }
  return kFast;
}

void Histogram::ObserveSeconds(double seconds) {
  size_t i = 0;
  while (i < bounds_.size() && seconds > bounds_[i]) ++i;
  buckets_[i].fetch_add(1, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
  sum_nanos_.fetch_add(static_cast<uint64_t>(seconds * 1e9), std::memory_order_relaxed);
}

void Histogram::Render(std::string& out, const std::string& name,
                       const std::string& labels) const {
  const std::string sep = labels.empty() ? "" : ",";
  uint64_t cumulative = 0;
  char buf[64];
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    cumulative += buckets_[i].load(std::memory_order_relaxed);
    std::string le = "+Inf";
    if (i < bounds_.size()) {
      std::snprintf(buf, sizeof(buf), "%g", bounds_[i]);
      le = buf;
    }
    out += name + "_bucket{" + labels + sep + "le=\"" + le + "\"} " + std::to_string(cumulative) +
           "\n";
  }
  std::snprintf(buf, sizeof(buf), "%.6f",
                static_cast<double>(sum_nanos_.load(std::memory_order_relaxed)) / 1e9);
  const std::string braces = labels.empty() ? "" : "{" + labels + "}";
  out += name + "_sum" + braces + " " + buf + "\n";
  out += name + "_count" + braces + " " + std::to_string(count()) + "\n";
}

MetricsRegistry::Family& MetricsRegistry::GetFamily(const std::string& name,
                                                    const std::string& type,
                                                    const std::string& help) {
  Family& f = families_[name];
  if (f.type.empty()) {
    f.type = type;
    f.help = help;
  }
  return f;
}

Counter& MetricsRegistry::GetCounter(const std::string& name, const std::string& help,
                                     const std::string& labels) {
  std::lock_guard<std::mutex> lock(mu_);
  auto& slot = GetFamily(name, "counter", help).counters[labels];
  if (!slot) slot = std::make_unique<Counter>();
  return *slot;
}

Gauge& MetricsRegistry::GetGauge(const std::string& name, const std::string& help,
                                 const std::string& labels) {
  std::lock_guard<std::mutex> lock(mu_);
  auto& slot = GetFamily(name, "gauge", help).gauges[labels];
  if (!slot) slot = std::make_unique<Gauge>();
  return *slot;
}

Histogram& MetricsRegistry::GetHistogram(const std::string& name, const std::string& help,
                                         const std::string& labels, HistogramScale scale) {
  std::lock_guard<std::mutex> lock(mu_);
  auto& slot = GetFamily(name, "histogram", help).histograms[labels];
  if (!slot) slot = std::make_unique<Histogram>(scale);
  return *slot;
}

std::string MetricsRegistry::RenderPrometheus() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::string out;
  for (const auto& [name, f] : families_) {
    out += "# HELP " + name + " " + f.help + "\n# TYPE " + name + " " + f.type + "\n";
    auto braces = [](const std::string& l) { return l.empty() ? std::string() : "{" + l + "}"; };
    for (const auto& [labels, c] : f.counters) {
      out += name + braces(labels) + " " + std::to_string(c->value()) + "\n";
    }
    for (const auto& [labels, g] : f.gauges) {
      out += name + braces(labels) + " " + std::to_string(g->value()) + "\n";
    }
    for (const auto& [labels, h] : f.histograms) h->Render(out, name, labels);
  }
  return out;
}

}  // namespace parley
