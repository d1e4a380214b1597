#pragma once
// Small helpers shared by the benchmarks that watch a daemon process: clocks, CPU time and
// memory from /proc and getrusage, the daemon's stage metrics, percentiles, number formatting.

#include <malloc.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <sstream>
#include <string>
#include <vector>

namespace parley::bench {

// steady_clock now, in nanoseconds.
inline int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// For the benchmark's own process (the test servers and the load it generates share the two
// cores with the daemon): glibc gives freed memory back to the kernel and asks for it again in
// small steps, and under this load that churn (page faults and heap growth) cost about a tenth of
// the process's CPU. Keep the heaps grown instead; the process's RSS is not what is measured.
inline void KeepHeapsGrown() {
  mallopt(M_TRIM_THRESHOLD, 512 << 20);
  mallopt(M_TOP_PAD, 64 << 20);
}

// A "Key:   N kB" field of /proc/PID/status, in KiB (0 when absent).
inline long StatusKib(pid_t pid, const std::string& key) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.compare(0, key.size() + 1, key + ":") == 0) {
      return std::atol(line.c_str() + key.size() + 1);
    }
  }
  return 0;
}

// User + system CPU seconds of getrusage(who): RUSAGE_SELF, RUSAGE_THREAD, ...
inline double RusageSeconds(int who) {
  rusage u{};
  getrusage(who, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

// parley_stage_seconds_{sum,count}{stage="..."} from a /metrics body.
struct StageTotals {
  std::map<std::string, double> sum;
  std::map<std::string, double> count;
};

inline StageTotals ParseStages(const std::string& body) {
  StageTotals t;
  std::stringstream ss(body);
  std::string line;
  const std::string prefix = "parley_stage_seconds_";
  while (std::getline(ss, line)) {
    if (line.compare(0, prefix.size(), prefix) != 0) continue;
    const bool is_sum = line.compare(prefix.size(), 4, "sum{") == 0;
    const bool is_count = line.compare(prefix.size(), 6, "count{") == 0;
    if (!is_sum && !is_count) continue;
    size_t q1 = line.find("stage=\"");
    if (q1 == std::string::npos) continue;
    q1 += 7;
    size_t q2 = line.find('"', q1);
    size_t sp = line.rfind(' ');
    if (q2 == std::string::npos || sp == std::string::npos) continue;
    const std::string stage = line.substr(q1, q2 - q1);
    const double v = std::atof(line.c_str() + sp + 1);
    (is_sum ? t.sum : t.count)[stage] = v;
  }
  return t;
}

// utime + stime of a process in seconds.
inline double ProcCpuSeconds(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  size_t close = s.rfind(')');
  if (close == std::string::npos) return 0;
  std::stringstream ss(s.substr(close + 2));
  std::vector<std::string> f;
  std::string x;
  while (ss >> x) f.push_back(x);
  // After ")": state(0) ppid(1) ... utime is field 14 of the line = index 11 here, stime 12.
  if (f.size() < 13) return 0;
  const double hz = static_cast<double>(sysconf(_SC_CLK_TCK));
  return (std::atof(f[11].c_str()) + std::atof(f[12].c_str())) / hz;
}

// The p-th percentile (nearest rank) of sorted values; 0 when empty.
inline double Percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  size_t rank = static_cast<size_t>(std::ceil(p / 100.0 * static_cast<double>(sorted.size())));
  rank = std::min(std::max<size_t>(rank, 1), sorted.size());
  return sorted[rank - 1];
}

// The pid of this process's child (the daemon DaemonProcess started); -1 when there is none.
inline pid_t FindChildPid() {
  const pid_t self = getpid();
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const std::string name = entry.path().filename().string();
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream in(entry.path() / "stat");
    std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    size_t close = s.rfind(')');
    if (close == std::string::npos || close + 4 >= s.size()) continue;
    std::stringstream ss(s.substr(close + 2));
    std::string state;
    long ppid = 0;
    ss >> state >> ppid;
    if (ppid == self) return static_cast<pid_t>(std::atol(name.c_str()));
  }
  return -1;
}

// printf-style formatting of one number.
inline std::string Fmt(const char* format, double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), format, v);
  return buf;
}

}  // namespace parley::bench
