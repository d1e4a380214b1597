#pragma once
// Weekly business hours of a queue: "mon-fri 09:00-17:00, sat 10:00-14:00".
//
// Grammar: items separated by ','; an item is "<days> <HH:MM>-<HH:MM>" where <days> is a day
// ("mon".."sun", case-insensitive; longer names like "monday" work too), a range "mon-fri"
// (wrapping ranges like "fri-mon" are allowed) or "daily". The end is exclusive and may be
// "24:00"; it must be after the start (no overnight windows: write "mon-fri 22:00-24:00, tue-sat
// 00:00-06:00" instead). Overlapping items are merged. An empty spec means always open.
// Times are local to a fixed UTC offset (no daylight saving), given to each query.
// Thread-safety: immutable after Parse; safe to share.

#include <array>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/status.h"

namespace parley::escalation {

class BusinessHours {
 public:
  // Always open.
  BusinessHours() = default;
  // InvalidArgument with the offending item when the spec does not parse.
  static Result<BusinessHours> Parse(const std::string& spec);

  bool always_open() const { return always_; }
  bool IsOpen(int64_t ms, int utc_offset_minutes) const;
  // The earliest instant >= ms at which the hours are open: ms itself when open now.
  int64_t NextOpen(int64_t ms, int utc_offset_minutes) const;
  // The instant at which `duration_ms` of open time has passed since start_ms: closed time does
  // not count. Always open: start_ms + duration_ms.
  int64_t AddOpenTime(int64_t start_ms, int64_t duration_ms, int utc_offset_minutes) const;

 private:
  // The end of the open window containing ms (ms must be open).
  int64_t WindowEnd(int64_t ms, int utc_offset_minutes) const;
  bool always_ = true;
  // Per weekday (0 = Monday) sorted, merged open intervals in minutes of the day [start, end).
  std::array<std::vector<std::pair<int, int>>, 7> days_;
};

// "Monday 09:00 (UTC+01:00)": the local weekday and time of ms at the offset.
std::string FormatLocalTime(int64_t ms, int utc_offset_minutes);

}  // namespace parley::escalation
