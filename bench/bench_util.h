#pragma once
// Small helpers shared by the benchmarks that watch a daemon process: CPU time from
// /proc/PID/stat, percentiles, number formatting.

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

namespace parley::bench {

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
