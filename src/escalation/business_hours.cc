#include "escalation/business_hours.h"

#include <algorithm>
#include <cctype>
#include <cstdio>

namespace parley::escalation {
namespace {

constexpr int64_t kMinuteMs = 60'000;
constexpr int64_t kDayMs = 86'400'000;
constexpr const char* kDayNames[7] = {"mon", "tue", "wed", "thu", "fri", "sat", "sun"};
constexpr const char* kLongDayNames[7] = {"Monday", "Tuesday",  "Wednesday", "Thursday",
                                          "Friday", "Saturday", "Sunday"};

int64_t FloorDiv(int64_t a, int64_t b) {
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}

// Local day number since the epoch and its weekday (0 = Monday; 1970-01-01 was a Thursday).
struct LocalTime {
  int64_t day;
  int weekday;
  int64_t ms_of_day;
};

LocalTime Local(int64_t local_ms) {
  LocalTime t;
  t.day = FloorDiv(local_ms, kDayMs);
  t.ms_of_day = local_ms - t.day * kDayMs;
  t.weekday = static_cast<int>(((t.day + 3) % 7 + 7) % 7);
  return t;
}

std::string Trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t");
  if (b == std::string::npos) return "";
  size_t e = s.find_last_not_of(" \t");
  return s.substr(b, e - b + 1);
}

std::string Lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

int DayIndex(const std::string& word) {
  const std::string w = Lower(word);
  if (w.size() < 3) return -1;
  for (int i = 0; i < 7; ++i) {
    if (w.compare(0, 3, kDayNames[i]) == 0) {
      const std::string full = Lower(kLongDayNames[i]);
      if (w.size() == 3 || w == full) return i;
    }
  }
  return -1;
}

// "09:30" -> 570; -1 when malformed. "24:00" is allowed.
int ParseClock(const std::string& s) {
  if (s.size() != 5 || s[2] != ':') return -1;
  for (size_t i : {0, 1, 3, 4}) {
    if (!std::isdigit(static_cast<unsigned char>(s[i]))) return -1;
  }
  const int h = (s[0] - '0') * 10 + (s[1] - '0');
  const int m = (s[3] - '0') * 10 + (s[4] - '0');
  if (m > 59 || h > 24 || (h == 24 && m != 0)) return -1;
  return h * 60 + m;
}

}  // namespace

Result<BusinessHours> BusinessHours::Parse(const std::string& spec) {
  BusinessHours hours;
  if (Trim(spec).empty()) return hours;
  hours.always_ = false;
  size_t pos = 0;
  while (pos <= spec.size()) {
    size_t comma = spec.find(',', pos);
    if (comma == std::string::npos) comma = spec.size();
    const std::string item = Trim(spec.substr(pos, comma - pos));
    pos = comma + 1;
    const std::string bad = "bad item \"" + item + "\" (want e.g. \"mon-fri 09:00-17:00\")";
    const size_t space = item.find(' ');
    if (item.empty() || space == std::string::npos) return Status::InvalidArgument(bad);
    const std::string days = item.substr(0, space);
    const std::string range = Trim(item.substr(space + 1));
    std::vector<int> day_list;
    if (Lower(days) == "daily") {
      for (int d = 0; d < 7; ++d) day_list.push_back(d);
    } else {
      const size_t dash = days.find('-');
      if (dash == std::string::npos) {
        const int d = DayIndex(days);
        if (d < 0) return Status::InvalidArgument(bad + ": unknown day");
        day_list.push_back(d);
      } else {
        const int a = DayIndex(days.substr(0, dash));
        const int b = DayIndex(days.substr(dash + 1));
        if (a < 0 || b < 0) return Status::InvalidArgument(bad + ": unknown day");
        for (int d = a;; d = (d + 1) % 7) {
          day_list.push_back(d);
          if (d == b) break;
        }
      }
    }
    const size_t dash = range.find('-');
    if (dash == std::string::npos) return Status::InvalidArgument(bad);
    const int start = ParseClock(Trim(range.substr(0, dash)));
    const int end = ParseClock(Trim(range.substr(dash + 1)));
    if (start < 0 || end < 0) return Status::InvalidArgument(bad + ": times are HH:MM");
    if (end <= start) return Status::InvalidArgument(bad + ": end must be after start");
    for (int d : day_list) hours.days_[d].emplace_back(start, end);
    if (comma == spec.size()) break;
  }
  for (auto& intervals : hours.days_) {
    std::sort(intervals.begin(), intervals.end());
    std::vector<std::pair<int, int>> merged;
    for (const auto& iv : intervals) {
      if (!merged.empty() && iv.first <= merged.back().second) {
        merged.back().second = std::max(merged.back().second, iv.second);
      } else {
        merged.push_back(iv);
      }
    }
    intervals = std::move(merged);
  }
  return hours;
}

bool BusinessHours::IsOpen(int64_t ms, int utc_offset_minutes) const {
  if (always_) return true;
  const LocalTime t = Local(ms + utc_offset_minutes * kMinuteMs);
  for (const auto& [start, end] : days_[t.weekday]) {
    if (t.ms_of_day >= start * kMinuteMs && t.ms_of_day < end * kMinuteMs) return true;
  }
  return false;
}

int64_t BusinessHours::NextOpen(int64_t ms, int utc_offset_minutes) const {
  if (always_) return ms;
  const int64_t offset_ms = utc_offset_minutes * kMinuteMs;
  const LocalTime t = Local(ms + offset_ms);
  for (int i = 0; i <= 7; ++i) {
    const int weekday = (t.weekday + i) % 7;
    const int64_t day_start = (t.day + i) * kDayMs;
    for (const auto& [start, end] : days_[weekday]) {
      const int64_t s = day_start + start * kMinuteMs;
      const int64_t e = day_start + end * kMinuteMs;
      const int64_t local = ms + offset_ms;
      if (e <= local) continue;
      return std::max(s, local) - offset_ms;
    }
  }
  return ms;  // no open window at all (cannot happen after Parse: every item has a day)
}

int64_t BusinessHours::WindowEnd(int64_t ms, int utc_offset_minutes) const {
  const int64_t offset_ms = utc_offset_minutes * kMinuteMs;
  const LocalTime t = Local(ms + offset_ms);
  for (const auto& [start, end] : days_[t.weekday]) {
    if (t.ms_of_day >= start * kMinuteMs && t.ms_of_day < end * kMinuteMs) {
      return t.day * kDayMs + end * kMinuteMs - offset_ms;
    }
  }
  return ms;
}

int64_t BusinessHours::AddOpenTime(int64_t start_ms, int64_t duration_ms,
                                   int utc_offset_minutes) const {
  if (always_ || duration_ms <= 0) return start_ms + std::max<int64_t>(duration_ms, 0);
  int64_t t = start_ms;
  int64_t remaining = duration_ms;
  // Each round consumes one open window; bounded for safety (a year of daily windows).
  for (int round = 0; round < 5000; ++round) {
    t = NextOpen(t, utc_offset_minutes);
    const int64_t end = WindowEnd(t, utc_offset_minutes);
    if (end <= t) return t + remaining;  // defensive: no window found
    if (t + remaining <= end) return t + remaining;
    remaining -= end - t;
    t = end;
  }
  return t + remaining;
}

std::string FormatLocalTime(int64_t ms, int utc_offset_minutes) {
  const LocalTime t = Local(ms + utc_offset_minutes * kMinuteMs);
  const int64_t minutes = t.ms_of_day / kMinuteMs;
  const int off = utc_offset_minutes < 0 ? -utc_offset_minutes : utc_offset_minutes;
  char buf[64];
  std::snprintf(buf, sizeof buf, "%s %02d:%02d (UTC%c%02d:%02d)", kLongDayNames[t.weekday],
                static_cast<int>(minutes / 60), static_cast<int>(minutes % 60),
                utc_offset_minutes < 0 ? '-' : '+', off / 60, off % 60);
  return buf;
}

}  // namespace parley::escalation
