#pragma once
// Reading and pruning the tool-call audit log that ToolPolicy writes (keys::kAudit, one JSON
// record per call, keyed by the call's start time), and formatting it for `parley audit`.
// Record fields: ts_ms, turn, conversation (ConversationKey::Display()), user, tool, call_id,
// arguments (redacted; {"_invalid": true} for non-JSON), outcome, error (failures only),
// duration_ms, confirmed.
// Thread-safety: functions are thread-safe (the store is).

#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/status.h"
#include "store/kv_store.h"

namespace parley::tools {

struct AuditQuery {
  int64_t since_ms = 0;      // records with ts_ms >= since_ms
  int64_t until_ms = 0;      // and ts_ms <= until_ms; 0 = no upper bound (up to now)
  std::string conversation;  // Display() form ("slack:C1#t"), exact; empty = any
  std::string tool;          // exact tool name; empty = any
  size_t limit = 100;        // at most this many records (after filtering); 0 = none
  bool newest_first = true;
};

// Matching records, newest first (or oldest first). Records that are not valid JSON are
// skipped (logged). Errors: the store's scan status.
[[nodiscard]] Result<std::vector<nlohmann::json>> ListAudit(store::KvStore& store,
                                                            const AuditQuery& query);

// Deletes the records with ts_ms < older_than_ms; returns how many. Writes in batches of at most
// 1000 deletes (not synced: a crash at worst leaves records for the next sweep).
[[nodiscard]] Result<size_t> SweepAudit(store::KvStore& store, int64_t older_than_ms);

// One line for humans, e.g.
//   2023-11-14T22:13:20.000Z ok get_weather conv=slack:C1 user=U1 ms=12 args={"city":"Paris"}
// with ` error="..."` appended for failures. Control characters are replaced by '?', so a record
// cannot forge extra lines. Missing fields print as "-".
std::string FormatAuditLine(const nlohmann::json& record);

}  // namespace parley::tools
