#include "tools/audit.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <ctime>
#include <limits>

#include "store/keys.h"

namespace parley::tools {

using Json = nlohmann::json;

namespace {

constexpr size_t kTsDigits = 16;

// The ts_ms encoded in an audit key; -1 when the key is malformed.
int64_t KeyTimestamp(std::string_view key) {
  const std::string_view prefix = store::keys::kAudit;
  if (key.size() < prefix.size() + kTsDigits) return -1;
  int64_t ts = 0;
  for (size_t i = 0; i < kTsDigits; ++i) {
    const char c = key[prefix.size() + i];
    if (c < '0' || c > '9') return -1;
    ts = ts * 10 + (c - '0');
  }
  return ts;
}

std::string TsKey(int64_t ts_ms) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%016" PRId64, std::max<int64_t>(0, ts_ms));
  return std::string(store::keys::kAudit) + buf;
}

std::string Field(const Json& record, const char* name) {
  auto it = record.find(name);
  if (it == record.end() || it->is_null()) return "-";
  if (it->is_string()) return it->get<std::string>();
  return it->dump(-1, ' ', false, Json::error_handler_t::replace);
}

std::string Clean(std::string s) {
  for (char& c : s) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
  }
  return s;
}

std::string IsoTime(int64_t ts_ms) {
  const std::time_t seconds = static_cast<std::time_t>(ts_ms / 1000);
  std::tm tm{};
  if (gmtime_r(&seconds, &tm) == nullptr) return "-";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                static_cast<int>(ts_ms % 1000));
  return buf;
}

}  // namespace

Result<std::vector<Json>> ListAudit(store::KvStore& store, const AuditQuery& query) {
  const int64_t until = query.until_ms > 0 ? query.until_ms : std::numeric_limits<int64_t>::max();
  const size_t limit = query.limit;
  std::vector<Json> out;
  if (limit == 0) return out;

  auto visit = [&](std::string_view key, std::string_view value) -> bool {
    const int64_t ts = KeyTimestamp(key);
    if (ts < 0) return true;
    if (query.newest_first && ts < query.since_ms) return false;
    if (!query.newest_first && ts > until) return false;
    if (ts < query.since_ms || ts > until) return true;
    Json record = Json::parse(value, nullptr, /*allow_exceptions=*/false);
    if (record.is_discarded() || !record.is_object()) {
      spdlog::warn("audit.bad_record key_len={}", key.size());
      return true;
    }
    if (!query.conversation.empty() &&
        record.value("conversation", std::string()) != query.conversation) {
      return true;
    }
    if (!query.tool.empty() && record.value("tool", std::string()) != query.tool) return true;
    out.push_back(std::move(record));
    return out.size() < limit;
  };

  Status status = query.newest_first
                      ? store.ScanReverse(store::keys::kAudit, visit)
                      : store.Scan(store::keys::kAudit, visit, TsKey(query.since_ms));
  if (!status.ok()) return status;
  return out;
}

Result<size_t> SweepAudit(store::KvStore& store, int64_t older_than_ms) {
  // Collect a bounded batch, then write it outside the scan (KvStore does not promise that
  // writes during a scan are safe), and repeat until a scan finds fewer than a full batch.
  constexpr size_t kBatch = 1000;
  size_t deleted = 0;
  while (true) {
    store::WriteBatch batch;
    Status scan_status =
        store.Scan(store::keys::kAudit, [&](std::string_view key, std::string_view) {
          if (KeyTimestamp(key) >= older_than_ms) return false;
          batch.Delete(std::string(key));
          return batch.size() < kBatch;
        });
    if (!scan_status.ok()) return scan_status;
    if (batch.empty()) break;
    Status write_status = store.Write(batch, /*sync=*/false);
    if (!write_status.ok()) return write_status;
    deleted += batch.size();
    if (batch.size() < kBatch) break;
  }
  return deleted;
}

std::string FormatAuditLine(const Json& record) {
  if (!record.is_object()) return "-";
  auto ts = record.find("ts_ms");
  std::string line = (ts != record.end() && ts->is_number_integer()) ? IsoTime(ts->get<int64_t>())
                                                                     : std::string("-");
  line += " " + Field(record, "outcome");
  line += " " + Field(record, "tool");
  line += " conv=" + Field(record, "conversation");
  line += " user=" + Field(record, "user");
  line += " ms=" + Field(record, "duration_ms");
  line += " args=" + Field(record, "arguments");
  auto error = record.find("error");
  if (error != record.end() && error->is_string() && !error->get<std::string>().empty()) {
    line += " error=" + error->dump(-1, ' ', false, Json::error_handler_t::replace);
  }
  return Clean(line);
}

}  // namespace parley::tools
