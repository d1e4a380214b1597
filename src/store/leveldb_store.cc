#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include <leveldb/cache.h>
#include <leveldb/env.h>
#include <leveldb/db.h>
#include <leveldb/write_batch.h>

#include "store/kv_store.h"

namespace parley::store {
namespace {

constexpr char kLockedMarker[] = "held by another process";

Status FromLevelDb(const leveldb::Status& s) {
  if (s.ok()) return Status::Ok();
  if (s.IsNotFound()) return Status::NotFound(s.ToString());
  if (s.IsCorruption()) return Status::Corruption(s.ToString());
  if (s.IsInvalidArgument()) return Status::InvalidArgument(s.ToString());
  return Status::IoError(s.ToString());
}

leveldb::Slice ToSlice(std::string_view s) { return leveldb::Slice(s.data(), s.size()); }

// A table file read with pread(2). LevelDB's default environment maps table files into memory
// instead, so every page a read touches stays in the daemon's resident set (20 MiB more after 30 s
// at 2,000 Slack events/s); read like this, the pages live in the kernel's page cache, and hot
// blocks in the block cache.
class PreadFile final : public leveldb::RandomAccessFile {
 public:
  PreadFile(std::string name, int fd) : name_(std::move(name)), fd_(fd) {}
  ~PreadFile() override { ::close(fd_); }
  leveldb::Status Read(uint64_t offset, size_t n, leveldb::Slice* result,
                       char* scratch) const override {
    size_t done = 0;
    while (done < n) {
      const ssize_t r = ::pread(fd_, scratch + done, n - done, static_cast<off_t>(offset + done));
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) {
        *result = leveldb::Slice(scratch, 0);
        return leveldb::Status::IOError(name_, std::strerror(errno));
      }
      if (r == 0) break;  // end of file: a short read, as LevelDB's own files report it
      done += static_cast<size_t>(r);
    }
    *result = leveldb::Slice(scratch, done);
    return leveldb::Status::OK();
  }

 private:
  std::string name_;
  int fd_;
};

// The default environment, with table files read by pread rather than mapped.
class PreadEnv final : public leveldb::EnvWrapper {
 public:
  PreadEnv() : EnvWrapper(leveldb::Env::Default()) {}
  leveldb::Status NewRandomAccessFile(const std::string& name,
                                      leveldb::RandomAccessFile** result) override {
    const int fd = ::open(name.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      *result = nullptr;
      return errno == ENOENT ? leveldb::Status::NotFound(name, std::strerror(errno))
                             : leveldb::Status::IOError(name, std::strerror(errno));
    }
    *result = new PreadFile(name, fd);
    return leveldb::Status::OK();
  }
};

class LevelDbStore final : public KvStore {
 public:
  LevelDbStore(std::unique_ptr<leveldb::DB> db, std::unique_ptr<leveldb::Cache> cache,
               std::unique_ptr<PreadEnv> env)
      : env_(std::move(env)), cache_(std::move(cache)), db_(std::move(db)) {}

  // Through an iterator rather than DB::Get. LevelDB charges a "seek" to a table each time a Get
  // passes through it without finding the key there, and after ~100 charges compacts that table
  // into the next level. Our keys are spread over the whole key range (an event id, a thread, a
  // conversation), so each memtable flush makes a table that overlaps every table below it, and
  // the daemon's Gets (each Slack event's id, absent; a thread answered minutes ago, deeper down)
  // spent its charges within milliseconds: every flushed table was merged at once with the whole
  // of the level below, rewriting it. At 2,000 Slack events/s the compaction thread was rewriting
  // 22 MB every 0.9 s by the end of 30 s, and more as the store grew. An iterator's seek is not
  // charged (its reads are only sampled, one per ~1 MB read), so tables reach the levels below at
  // the pace of LevelDB's size-based compactions. The price: an iterator reads one block per
  // level where a Get would consult Bloom filters; with no DB::Get left, the tables carry no
  // filters either (less to build in each compaction, less memory per open table). And a seek
  // steps over every deleted entry up to the next live key: after a sweep deletes many keys of
  // one family with few live ones between them (the hourly dedupe sweep after a burst of traffic
  // 48 h earlier, then quiet), a lookup in that range costs milliseconds until flushes and the
  // compactions that iterator read sampling sets off have dropped them (bench/store_bench: 100,000
  // keys deleted at once, nothing live between them: ~6 ms per lookup at first, ~1 ms a thousand
  // lookups later, 1.5 µs before the deletion). Keeping the dedupe keys in an in-memory
  // filter, so that a new event id needs no lookup at all, would remove both costs.
  Result<std::string> Get(std::string_view key) override {
    std::unique_ptr<leveldb::Iterator> it(db_->NewIterator(leveldb::ReadOptions()));
    it->Seek(ToSlice(key));
    if (!it->Valid()) {
      if (!it->status().ok()) return FromLevelDb(it->status());
      return Status::NotFound("not found");
    }
    leveldb::Slice k = it->key();
    if (std::string_view(k.data(), k.size()) != key) return Status::NotFound("not found");
    leveldb::Slice v = it->value();
    return std::string(v.data(), v.size());
  }

  Status Write(const WriteBatch& batch, bool sync) override {
    leveldb::WriteBatch b;
    for (const auto& op : batch.ops()) {
      if (op.is_delete) {
        b.Delete(op.key);
      } else {
        b.Put(op.key, op.value);
      }
    }
    leveldb::WriteOptions options;
    options.sync = sync;
    return FromLevelDb(db_->Write(options, &b));
  }

  Status Scan(std::string_view prefix, const ScanVisitor& visit, std::string_view start) override {
    leveldb::ReadOptions options;
    options.fill_cache = false;
    std::unique_ptr<leveldb::Iterator> it(db_->NewIterator(options));
    it->Seek(ToSlice(start.empty() ? prefix : start));
    for (; it->Valid(); it->Next()) {
      leveldb::Slice k = it->key();
      std::string_view key(k.data(), k.size());
      if (key.substr(0, prefix.size()) != prefix) break;
      leveldb::Slice v = it->value();
      if (!visit(key, std::string_view(v.data(), v.size()))) break;
    }
    return FromLevelDb(it->status());
  }

  Status ScanReverse(std::string_view prefix, const ScanVisitor& visit) override {
    leveldb::ReadOptions options;
    std::unique_ptr<leveldb::Iterator> it(db_->NewIterator(options));
    // Nothing under the prefix (a new conversation, say): one forward seek says so. Stepping
    // backwards is the expensive move of a LevelDB iterator (every level re-seeks), so it is only
    // made when there is something to read.
    it->Seek(leveldb::Slice(prefix.data(), prefix.size()));
    if (!it->Valid()) return FromLevelDb(it->status());
    {
      leveldb::Slice first = it->key();
      if (std::string_view(first.data(), first.size()).substr(0, prefix.size()) != prefix) {
        return FromLevelDb(it->status());
      }
    }
    // Position after the last key with the prefix: the prefix followed by 0xff bytes sorts above
    // every key we write (keys are text).
    std::string upper(prefix);
    upper.append(4, '\xff');
    it->Seek(upper);
    if (it->Valid()) {
      it->Prev();
    } else {
      it->SeekToLast();
    }
    for (; it->Valid(); it->Prev()) {
      leveldb::Slice k = it->key();
      std::string_view key(k.data(), k.size());
      if (key.substr(0, prefix.size()) != prefix) {
        if (key < prefix) break;
        continue;
      }
      leveldb::Slice v = it->value();
      if (!visit(key, std::string_view(v.data(), v.size()))) break;
    }
    return FromLevelDb(it->status());
  }

  std::optional<std::string> Property(std::string_view name) override {
    std::string value;
    if (!db_->GetProperty(ToSlice(name), &value)) return std::nullopt;
    return value;
  }

 private:
  // Destroyed after db_ (declaration order is reverse destruction order).
  std::unique_ptr<PreadEnv> env_;  // destroyed after db_, which uses it
  std::unique_ptr<leveldb::Cache> cache_;
  std::unique_ptr<leveldb::DB> db_;
};

}  // namespace

Result<std::unique_ptr<KvStore>> OpenLevelDb(const std::string& directory) {
  std::error_code ec;
  std::filesystem::create_directories(std::filesystem::path(directory).parent_path(), ec);
  // Sized for a small daemon (resident set under 50 MB at 2,000 Slack events/s): a 2 MiB block
  // cache, since reads that miss it are served from the page cache, and 4 MiB memtables (two can
  // be resident while one is flushed). With 8 MiB of each the daemon held ~10 MiB more; before
  // this session's cuts in per-event CPU, 4 MiB memtables (twice the flushes and level-0
  // compactions) fell behind at 2,000 events/s, and no longer do (bench/README.md). The keys
  // are spread and hot records live in the daemon's own caches, so a 4 MiB block cache bought
  // nothing over 2 MiB but 2 MiB of resident memory (A/B in bench/README.md, Slack).
  auto cache = std::unique_ptr<leveldb::Cache>(leveldb::NewLRUCache(2 << 20));
  auto env = std::make_unique<PreadEnv>();
  leveldb::Options options;
  options.env = env.get();
  // Each open table holds a descriptor here (LevelDB's default of 1,000 would risk the process's
  // descriptor limit next to its sockets); tables past this are reopened when read.
  options.max_open_files = 256;
  options.create_if_missing = true;
  options.block_cache = cache.get();
  options.write_buffer_size = 4 << 20;
  leveldb::DB* raw = nullptr;
  leveldb::Status s = leveldb::DB::Open(options, directory, &raw);
  if (!s.ok()) {
    // LevelDB reports a held LOCK file as an IO error mentioning "lock".
    std::string text = s.ToString();
    if (text.find("lock") != std::string::npos || text.find("LOCK") != std::string::npos) {
      return Status::Unavailable("store " + directory + " is " + kLockedMarker + " (" + text + ")");
    }
    return FromLevelDb(s);
  }
  return std::unique_ptr<KvStore>(std::make_unique<LevelDbStore>(
      std::unique_ptr<leveldb::DB>(raw), std::move(cache), std::move(env)));
}

bool IsLockedByOtherProcess(const Status& status) {
  return status.code() == Status::Code::kUnavailable &&
         status.message().find(kLockedMarker) != std::string::npos;
}

}  // namespace parley::store
