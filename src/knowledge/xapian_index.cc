// KnowledgeIndex on a Xapian database.
//
// Layout of the database:
//   documents  one per chunk. Data: the chunk as JSON. Terms: body text, the title and heading path
//              with a higher wdf (and again under prefix "S"), "Q<file id>" (unique per file, to
//              delete a file's chunks), "XP" for a public chunk or "XT<tag>" per access tag.
//   metadata   "file:<file id>" -> JSON {key, hash, sig, path, chunks} per ingested file, written
//              in the same transaction as the file's chunks; "parley:format" -> kFormatVersion.
// <file id> is the first 32 hex digits of SHA-256(source identity + "\n" + relative path).
//
// Concurrency: Ingest holds ingest_mu_ and opens the WritableDatabase only for its duration, with
// one transaction (so one commit). Retrieve borrows a reader (Database + QueryParser + Enquire,
// none of them thread-safe) from a mutex-protected free list and returns it afterwards; a reader
// reopen()s when an Ingest in this process has committed since its last use (generation counter),
// or at most once a second to pick up commits by another process.
//
// Cache (IndexOptions::cache_bytes): results are remembered per (question, context, access tags,
// limit) as passage ids with their score and confidence, and chunks are remembered decoded, both
// for one database revision: a reader at a newer revision empties the cache, one at an older
// revision (just before an Ingest became visible to it) neither reads nor fills it.

#include <xapian.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/lru.h"
#include "core/percent.h"
#include "knowledge/analyzer.h"
#include "knowledge/knowledge.h"
#include "knowledge/source_files.h"

namespace parley::knowledge {
namespace {

using nlohmann::json;

// Bump when chunking or the document layout changes: every file is then re-indexed once.
constexpr char kFormatVersion[] = "parley-knowledge-2";
constexpr char kFormatKey[] = "parley:format";
constexpr char kFileKeyPrefix[] = "file:";
constexpr char kPublicTerm[] = "XP";
constexpr char kTagPrefix[] = "XT";
constexpr char kFilePrefix[] = "Q";
constexpr char kSectionPrefix[] = "S";

// wdf increments: a body word counts 1 per occurrence; the words of the chunk's own heading, of
// its parent headings and of the document title count more, so a section about X outranks a
// passing mention of X.
constexpr Xapian::termcount kTitleWdf = 2;
constexpr Xapian::termcount kParentHeadingWdf = 2;
constexpr Xapian::termcount kHeadingWdf = 4;

// BM25 parameters. b = 0 (no document-length normalisation): chunks are cut to a narrow size
// range anyway, and reading every candidate's length is the largest single cost of a query.
constexpr double kBm25K1 = 1.2;
constexpr double kBm25B = 0.0;

// Query shape (see LimitTerms): a word in more than max(kCommonMinDf, kCommonFraction * chunks)
// chunks only boosts; at most kEliteSetSize selective subqueries take part.
constexpr double kCommonMinDf = 200;
constexpr double kCommonFraction = 0.05;
constexpr size_t kEliteSetSize = 6;

// Follow-ups: context terms are AND_MAYBE'd in at this fraction of their weight, at most
// kMaxContextTerms of them (the most recent).
constexpr double kContextWeight = 0.3;
constexpr size_t kMaxContextTerms = 12;

// Confidence (see Coverage): each question term counts with its idf times a factor. A word the
// index has never seen counts half when written plainly (it may be chat: "weird noises") and
// double when written as a name ("Netflix", "iPhone"): the question is about something the
// knowledge base does not cover. A corrected typo counts like the word it was corrected to.
constexpr double kCorrectedFactor = 1.0;
constexpr double kUnknownFactor = 0.5;
constexpr double kUnknownNameFactor = 2.0;

// Typo correction of words the index does not contain.
constexpr size_t kMinCorrectableLength = 4;               // shorter unknown words are left alone
constexpr Xapian::doccount kChunksPerCorrectionDf = 500;  // a correction needs df >= 1 + N/500
constexpr Xapian::doccount kMaxCorrectionMinDf = 5;

constexpr size_t kMaxPooledReaders = 16;
constexpr size_t kMaxFileBytes = 32u << 20;
constexpr auto kExternalReopenInterval = std::chrono::seconds(1);
constexpr int kModifiedRetries = 3;
constexpr size_t kMaxCachedTermFreqs = 50000;  // per reader handle, also for corrections

std::string TagTerm(const std::string& tag) {
  // Xapian terms are limited to ~245 bytes; very long tags are hashed.
  return kTagPrefix + (tag.size() <= 200 ? tag : internal::Sha256Hex(tag));
}

Status FromXapian(const Xapian::Error& e, const std::string& what) {
  std::string msg = what + ": " + e.get_type() + ": " + e.get_msg();
  const char* detail = e.get_error_string();
  if (detail != nullptr && *detail != '\0') msg += std::string(" (") + detail + ")";
  // Xapian::Error is not polymorphic: classify by its type name.
  const std::string type = e.get_type();
  if (type == "DatabaseLockError" || type == "DatabaseModifiedError") {
    return Status::Unavailable(msg);
  }
  if (type == "DatabaseCorruptError" || type == "DatabaseVersionError") {
    return Status::Corruption(msg);
  }
  if (type.rfind("Database", 0) == 0) return Status::IoError(msg);
  return Status::Internal(msg);
}

std::string ChunkToData(const Chunk& c) {
  json j = {{"title", c.title},   {"source", c.source}, {"headings", c.heading_path},
            {"anchor", c.anchor}, {"url", c.url},       {"text", c.text},
            {"tags", c.tags}};
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

template <typename T>
void ReadField(const json& j, const char* key, T& out) {
  auto it = j.find(key);
  if (it != j.end()) {
    try {
      it->get_to(out);
    } catch (const json::exception&) {
      // A field of the wrong type is left empty.
    }
  }
}

// A reader for the flat JSON objects this index writes (string and string-array fields), several
// times faster than a general parser; it runs on every returned passage. Returns false on anything
// unexpected, and the caller falls back to nlohmann::json.
class FlatJsonReader {
 public:
  explicit FlatJsonReader(std::string_view s) : s_(s) {}

  bool ReadChunk(Chunk& c) {
    SkipSpace();
    if (!Consume('{')) return false;
    SkipSpace();
    if (Consume('}')) return true;
    std::string key;
    while (true) {
      SkipSpace();
      if (!ReadString(key)) return false;
      SkipSpace();
      if (!Consume(':')) return false;
      SkipSpace();
      bool ok = true;
      if (key == "title") {
        ok = ReadString(c.title);
      } else if (key == "source") {
        ok = ReadString(c.source);
      } else if (key == "headings") {
        ok = ReadStringArray(c.heading_path);
      } else if (key == "anchor") {
        ok = ReadString(c.anchor);
      } else if (key == "url") {
        ok = ReadString(c.url);
      } else if (key == "text") {
        ok = ReadString(c.text);
      } else if (key == "tags") {
        ok = ReadStringArray(c.tags);
      } else {
        return false;  // unknown field: let the general parser handle it
      }
      if (!ok) return false;
      SkipSpace();
      if (Consume('}')) return true;
      if (!Consume(',')) return false;
    }
  }

 private:
  void SkipSpace() {
    while (i_ < s_.size() &&
           (s_[i_] == ' ' || s_[i_] == '\n' || s_[i_] == '\t' || s_[i_] == '\r')) {
      ++i_;
    }
  }
  bool Consume(char c) {
    if (i_ < s_.size() && s_[i_] == c) {
      ++i_;
      return true;
    }
    return false;
  }
  bool Hex4(unsigned& out) {
    if (i_ + 4 > s_.size()) return false;
    out = 0;
    for (int k = 0; k < 4; ++k) {
      char h = s_[i_++];
      out <<= 4;
      if (h >= '0' && h <= '9') {
        out |= static_cast<unsigned>(h - '0');
      } else if (h >= 'a' && h <= 'f') {
        out |= static_cast<unsigned>(h - 'a' + 10);
      } else if (h >= 'A' && h <= 'F') {
        out |= static_cast<unsigned>(h - 'A' + 10);
      } else {
        return false;
      }
    }
    return true;
  }
  bool ReadString(std::string& out) {
    out.clear();
    if (!Consume('"')) return false;
    while (i_ < s_.size()) {
      size_t run = i_;
      while (run < s_.size() && s_[run] != '"' && s_[run] != '\\') ++run;
      out.append(s_.data() + i_, run - i_);
      i_ = run;
      if (i_ >= s_.size()) return false;
      if (s_[i_] == '"') {
        ++i_;
        return true;
      }
      ++i_;  // backslash
      if (i_ >= s_.size()) return false;
      char e = s_[i_++];
      switch (e) {
        case '"':
          out.push_back('"');
          break;
        case '\\':
          out.push_back('\\');
          break;
        case '/':
          out.push_back('/');
          break;
        case 'b':
          out.push_back('\b');
          break;
        case 'f':
          out.push_back('\f');
          break;
        case 'n':
          out.push_back('\n');
          break;
        case 'r':
          out.push_back('\r');
          break;
        case 't':
          out.push_back('\t');
          break;
        case 'u': {
          unsigned cp = 0;
          if (!Hex4(cp)) return false;
          if (cp >= 0xD800 && cp <= 0xDBFF && i_ + 1 < s_.size() && s_[i_] == '\\' &&
              s_[i_ + 1] == 'u') {
            i_ += 2;
            unsigned low = 0;
            if (!Hex4(low) || low < 0xDC00 || low > 0xDFFF) return false;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
          }
          Xapian::Unicode::append_utf8(out, cp);
          break;
        }
        default:
          return false;
      }
    }
    return false;
  }
  bool ReadStringArray(std::vector<std::string>& out) {
    out.clear();
    if (!Consume('[')) return false;
    SkipSpace();
    if (Consume(']')) return true;
    while (true) {
      SkipSpace();
      out.emplace_back();
      if (!ReadString(out.back())) return false;
      SkipSpace();
      if (Consume(']')) return true;
      if (!Consume(',')) return false;
    }
  }

  std::string_view s_;
  size_t i_ = 0;
};

Chunk ChunkFromData(const std::string& data) {
  Chunk c;
  if (FlatJsonReader(data).ReadChunk(c)) return c;
  c = Chunk();
  json j = json::parse(data, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return c;
  ReadField(j, "title", c.title);
  ReadField(j, "source", c.source);
  ReadField(j, "headings", c.heading_path);
  ReadField(j, "anchor", c.anchor);
  ReadField(j, "url", c.url);
  ReadField(j, "text", c.text);
  ReadField(j, "tags", c.tags);
  return c;
}


struct FileRecord {
  std::string key;        // source identity + "\n" + relative path
  std::string hash;       // SHA-256 of the content
  std::string signature;  // of the format, chunk options, tags and url_base
};

FileRecord ParseFileRecord(const std::string& value) {
  FileRecord r;
  json j = json::parse(value, nullptr, false);
  if (!j.is_object()) return r;
  ReadField(j, "key", r.key);
  ReadField(j, "hash", r.hash);
  ReadField(j, "sig", r.signature);
  return r;
}

std::string SourceSignature(const SourceSpec& source, const ChunkOptions& options) {
  std::vector<std::string> tags = source.tags;
  std::sort(tags.begin(), tags.end());
  json j = {{"format", kFormatVersion},
            {"target", options.target_chars},
            {"max", options.max_chars},
            {"tags", tags},
            {"url_base", source.url_base}};
  return internal::Sha256Hex(j.dump(-1, ' ', false, json::error_handler_t::replace));
}

// One reader handle: none of these Xapian objects may be used by two threads at once.
struct Reader {
  explicit Reader(const std::string& directory)
      : db(directory),
        stopper(internal::EnglishStopwords().begin(), internal::EnglishStopwords().end()),
        enquire(db) {
    parser.set_stemmer(Xapian::Stem("english"));
    parser.set_stemming_strategy(Xapian::QueryParser::STEM_SOME);
    parser.set_default_op(Xapian::Query::OP_OR);
    parser.set_stopper(&stopper);
    Reset();
  }

  // After opening or reopening: a fresh Enquire, and the facts cached per revision.
  void Reset() {
    enquire = Xapian::Enquire(db);
    enquire.set_weighting_scheme(
        Xapian::BM25Weight(kBm25K1, /*k2=*/0, /*k3=*/1, kBm25B, /*min_normlen=*/0.5));
    enquire.set_docid_order(Xapian::Enquire::DONT_CARE);
    doccount = db.get_doccount();
    all_public = db.get_termfreq(kPublicTerm) == doccount;
    termfreqs.clear();
    corrections.clear();
  }

  // Document frequency of `term`, cached for this revision (each lookup in the database is a
  // B-tree search, usually a block read).
  Xapian::doccount TermFreq(const std::string& term) {
    auto it = termfreqs.find(term);
    if (it != termfreqs.end()) return it->second;
    if (termfreqs.size() >= kMaxCachedTermFreqs) termfreqs.clear();
    const Xapian::doccount df = db.get_termfreq(term);
    termfreqs.emplace(term, df);
    return df;
  }

  // Brings the handle to the latest committed revision.
  void Reopen() {
    if (db.reopen()) Reset();
  }

  Xapian::Database db;
  Xapian::SimpleStopper stopper;
  Xapian::QueryParser parser;
  Xapian::Enquire enquire;
  Xapian::doccount doccount = 0;
  bool all_public = false;  // no chunk has tags: the access filter can be skipped
  std::unordered_map<std::string, Xapian::doccount> termfreqs;
  std::unordered_map<std::string, std::string> corrections;  // unknown word -> correction or ""
  uint64_t generation = 0;
  std::chrono::steady_clock::time_point checked = std::chrono::steady_clock::now();
};

Xapian::Query TermsQuery(const std::vector<std::string>& terms) {
  if (terms.empty()) return Xapian::Query();
  return Xapian::Query(Xapian::Query::OP_OR, terms.begin(), terms.end());
}

class XapianKnowledgeIndex final : public KnowledgeIndex {
 public:
  XapianKnowledgeIndex(std::string directory, const IndexOptions& options)
      : directory_(std::move(directory)),
        options_(options),
        cached_results_(options.cache_bytes / 2),
        cached_chunks_(options.cache_bytes / 2) {}

  // Creates the database if needed and checks that it can be read.
  Status Init() {
    std::error_code ec;
    std::filesystem::create_directories(directory_, ec);
    if (ec) return Status::IoError(directory_ + ": cannot create (" + ec.message() + ")");
    try {
      bool exists = true;
      try {
        Xapian::Database probe(directory_);
      } catch (const Xapian::DatabaseVersionError&) {
        throw;
      } catch (const Xapian::DatabaseOpeningError&) {
        exists = false;
      }
      if (!exists) {
        if (!std::filesystem::is_empty(directory_, ec) && !ec) {
          return Status::FailedPrecondition(directory_ +
                                            ": exists, is not empty and is not a Xapian index");
        }
        Xapian::WritableDatabase create(directory_, Xapian::DB_CREATE_OR_OPEN);
        create.set_metadata(kFormatKey, kFormatVersion);
        create.commit();
      }
      auto reader = std::make_unique<Reader>(directory_);
      (void)reader->db.get_doccount();
      Release(std::move(reader));
    } catch (const Xapian::Error& e) {
      return FromXapian(e, "open " + directory_);
    } catch (const std::exception& e) {
      return Status::IoError("open " + directory_ + ": " + e.what());
    }
    return Status::Ok();
  }

  Result<IngestReport> Ingest(const std::vector<SourceSpec>& sources,
                              const ChunkOptions& options) override {
    std::lock_guard<std::mutex> lock(ingest_mu_);
    const auto start = std::chrono::steady_clock::now();
    IngestReport report;
    try {
      Xapian::WritableDatabase db(directory_, Xapian::DB_CREATE_OR_OPEN);
      Status s = IngestInto(db, sources, options, report);
      if (!s.ok()) return s;  // the transaction is cancelled when db is destroyed
      report.chunks_total = db.get_doccount();
      db.close();
    } catch (const Xapian::Error& e) {
      return FromXapian(e, "ingest into " + directory_);
    } catch (const std::exception& e) {
      return Status::Internal("ingest into " + directory_ + ": " + e.what());
    }
    generation_.fetch_add(1);
    report.seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return report;
  }

  Result<std::vector<Passage>> Retrieve(const RetrievalQuery& query, const AccessFilter& access,
                                        size_t limit) override {
    if (limit == 0) return std::vector<Passage>();
    try {
      if (options_.cache_bytes == 0) {
        return WithReader([&](Reader& r) { return Search(r, query, access, limit, nullptr); });
      }
      return WithReader([&](Reader& r) { return CachedSearch(r, query, access, limit); });
    } catch (const Xapian::Error& e) {
      return FromXapian(e, "retrieve from " + directory_);
    } catch (const std::exception& e) {
      return Status::Internal("retrieve from " + directory_ + ": " + e.what());
    }
  }

  // Both counts are 0 when the index cannot be read.
  size_t ChunkCount() override {
    try {
      return WithReader([](Reader& r) { return static_cast<size_t>(r.db.get_doccount()); });
    } catch (const std::exception&) {
      return 0;
    } catch (const Xapian::Error&) {
      return 0;
    }
  }

  size_t FileCount() override {
    try {
      return WithReader([](Reader& r) {
        size_t n = 0;
        for (auto it = r.db.metadata_keys_begin(kFileKeyPrefix);
             it != r.db.metadata_keys_end(kFileKeyPrefix); ++it) {
          ++n;
        }
        return n;
      });
    } catch (const std::exception&) {
      return 0;
    } catch (const Xapian::Error&) {
      return 0;
    }
  }

 private:
  // --- reader pool -----------------------------------------------------------------------------

  // A reader that has seen every commit made by this process (and, within a second, by others).
  std::unique_ptr<Reader> Acquire() {
    std::unique_ptr<Reader> reader;
    {
      std::lock_guard<std::mutex> lock(pool_mu_);
      if (!free_.empty()) {
        reader = std::move(free_.back());
        free_.pop_back();
      }
    }
    const uint64_t generation = generation_.load();
    const auto now = std::chrono::steady_clock::now();
    if (!reader) {
      reader = std::make_unique<Reader>(directory_);
      reader->generation = generation;
      reader->checked = now;
      return reader;
    }
    if (reader->generation != generation || now - reader->checked > kExternalReopenInterval) {
      reader->Reopen();
      reader->generation = generation;
      reader->checked = now;
    }
    return reader;
  }

  void Release(std::unique_ptr<Reader> reader) {
    std::lock_guard<std::mutex> lock(pool_mu_);
    if (free_.size() < kMaxPooledReaders) free_.push_back(std::move(reader));
  }

  // Runs fn(reader) on a pooled reader and returns the reader to the pool. A glass reader may
  // trail the latest commit by one revision only; when commits overtook it
  // (DatabaseModifiedError), every pooled reader is made to reopen and fn runs again on a fresh
  // handle. Other errors propagate (the reader is dropped).
  template <typename F>
  auto WithReader(F&& fn) -> decltype(fn(std::declval<Reader&>())) {
    for (int attempt = 0;; ++attempt) {
      try {
        std::unique_ptr<Reader> reader = Acquire();
        auto result = fn(*reader);
        Release(std::move(reader));
        return result;
      } catch (const Xapian::DatabaseModifiedError&) {
        generation_.fetch_add(1);
        if (attempt >= kModifiedRetries) throw;
      }
    }
  }

  // --- retrieval -------------------------------------------------------------------------------

  // The question as Xapian::QueryParser reads it; the plain terms when it cannot.
  Xapian::Query ParseQuestion(Reader& r, const std::string& text,
                              const std::vector<std::string>& terms) {
    try {
      Xapian::Query q = r.parser.parse_query(text, Xapian::QueryParser::FLAG_PHRASE);
      if (!q.empty()) return q;
    } catch (const Xapian::QueryParserError&) {
      // Fall back to the plain terms below.
    }
    return TermsQuery(terms);
  }

  // Matching cost grows with every term of the query, and chat questions are long and full of
  // common words. Words in a large part of the collection ("use", "file") only boost documents
  // that match a more selective word (their long posting lists are then skipped through, not
  // read), and past kEliteSetSize selective subqueries only the ones with the highest possible
  // weight take part.
  static Xapian::Query LimitTerms(Reader& r, const Xapian::Query& query) {
    std::vector<Xapian::Query> parts;
    std::vector<Xapian::Query> pending{query};
    while (!pending.empty()) {
      Xapian::Query q = std::move(pending.back());
      pending.pop_back();
      if (q.get_type() == Xapian::Query::OP_OR) {
        for (size_t i = 0; i < q.get_num_subqueries(); ++i) pending.push_back(q.get_subquery(i));
      } else {
        parts.push_back(std::move(q));
      }
    }
    const double common_df =
        std::max(kCommonMinDf, kCommonFraction * static_cast<double>(r.doccount));
    std::vector<Xapian::Query> selective;
    std::vector<Xapian::Query> common;
    for (Xapian::Query& q : parts) {
      bool is_common =
          q.get_type() == Xapian::Query::LEAF_TERM && r.TermFreq(*q.get_terms_begin()) > common_df;
      (is_common ? common : selective).push_back(std::move(q));
    }
    if (selective.empty()) selective.swap(common);
    Xapian::Query main =
        selective.size() <= kEliteSetSize
            ? Xapian::Query(Xapian::Query::OP_OR, selective.begin(), selective.end())
            : Xapian::Query(Xapian::Query::OP_ELITE_SET, selective.begin(), selective.end(),
                            static_cast<Xapian::termcount>(kEliteSetSize));
    if (common.empty()) return main;
    return Xapian::Query(Xapian::Query::OP_AND_MAYBE, main,
                         Xapian::Query(Xapian::Query::OP_OR, common.begin(), common.end()));
  }

  // The indexed word closest to `word` (a word the index does not contain) within a small edit
  // distance (adjacent transpositions count as one edit), preferring the most frequent; empty
  // when there is none. Only the first two letters are trusted (or swapped), which keeps the
  // candidate list short. Cached per reader revision.
  static std::string Correct(Reader& r, const std::string& word) {
    if (word.size() < kMinCorrectableLength || word.size() > 32) return "";
    for (char c : word) {
      if (c < 'a' || c > 'z') return "";
    }
    auto cached = r.corrections.find(word);
    if (cached != r.corrections.end()) return cached->second;

    const size_t max_distance = word.size() >= 8 ? 2 : 1;
    // People mistype words that are common in the knowledge base; in a large one a rare
    // candidate is more likely an unrelated word ("bake" is not a typo of "bak").
    const Xapian::doccount min_df =
        std::min<Xapian::doccount>(kMaxCorrectionMinDf, 1 + r.doccount / kChunksPerCorrectionDf);
    std::string best;
    size_t best_distance = max_distance + 1;
    Xapian::doccount best_df = 0;
    std::string prefixes[2] = {word.substr(0, 2), {word[1], word[0]}};
    for (int k = 0; k < 2; ++k) {
      if (k == 1 && prefixes[1] == prefixes[0]) break;
      const std::string& prefix = prefixes[k];
      for (auto it = r.db.allterms_begin(prefix), end = r.db.allterms_end(prefix); it != end;
           ++it) {
        const std::string candidate = *it;
        const size_t len_diff = candidate.size() > word.size() ? candidate.size() - word.size()
                                                               : word.size() - candidate.size();
        if (len_diff > max_distance) continue;
        const size_t distance = EditDistance(word, candidate, max_distance);
        if (distance > max_distance || distance == 0) continue;
        const Xapian::doccount df = it.get_termfreq();
        if (df < min_df) continue;
        if (distance < best_distance || (distance == best_distance && df > best_df)) {
          best = candidate;
          best_distance = distance;
          best_df = df;
        }
      }
    }
    if (r.corrections.size() >= kMaxCachedTermFreqs) r.corrections.clear();
    r.corrections.emplace(word, best);
    return best;
  }

  // Whether two lowercase letters are neighbours on a QWERTY keyboard (the substitutions typing
  // errors make).
  static bool KeyboardNeighbours(char a, char b) {
    static const char* const kRows[3] = {"qwertyuiop", "asdfghjkl", "zxcvbnm"};
    static const double kRowOffset[3] = {0.0, 0.25, 0.75};
    int row_a = -1;
    int row_b = -1;
    double x_a = 0;
    double x_b = 0;
    for (int row = 0; row < 3; ++row) {
      for (int col = 0; kRows[row][col] != '\0'; ++col) {
        if (kRows[row][col] == a) row_a = row, x_a = col + kRowOffset[row];
        if (kRows[row][col] == b) row_b = row, x_b = col + kRowOffset[row];
      }
    }
    if (row_a < 0 || row_b < 0 || a == b) return false;
    const double dx = std::fabs(x_a - x_b);
    if (row_a == row_b) return dx < 1.1;
    return std::abs(row_a - row_b) == 1 && dx < 0.8;
  }

  // Typing-error distance between a and b: insertions, deletions and adjacent transpositions cost
  // 1, substituting a keyboard neighbour costs 1 and any other substitution 2 (so "bread" is not
  // a typo of "break"). Returns max + 1 once the distance exceeds `max`.
  static size_t EditDistance(const std::string& a, const std::string& b, size_t max) {
    const size_t n = a.size();
    const size_t m = b.size();
    // Three rolling rows of the DP matrix (words are at most 64 bytes).
    size_t rows[3][66];
    size_t* prev2 = rows[0];
    size_t* prev = rows[1];
    size_t* cur = rows[2];
    for (size_t j = 0; j <= m; ++j) prev[j] = j;
    for (size_t i = 1; i <= n; ++i) {
      cur[0] = i;
      size_t row_min = cur[0];
      for (size_t j = 1; j <= m; ++j) {
        const size_t cost =
            a[i - 1] == b[j - 1] ? 0 : (KeyboardNeighbours(a[i - 1], b[j - 1]) ? 1 : 2);
        size_t v = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost});
        if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) {
          v = std::min(v, prev2[j - 2] + 1);
        }
        cur[j] = v;
        row_min = std::min(row_min, v);
      }
      if (row_min > max) return max + 1;
      std::swap(prev2, prev);
      std::swap(prev, cur);
    }
    return prev[m];
  }

  // The context's content terms that the question lacks and the index has, most recent first.
  std::vector<std::string> ContextTerms(Reader& r, const std::string& context,
                                        const std::vector<std::string>& question_terms) {
    std::vector<std::string> out;
    if (context.empty()) return out;
    std::vector<std::string> terms = internal::ContentIndexTerms(context);
    for (size_t k = terms.size(); k-- > 0 && out.size() < kMaxContextTerms;) {
      const std::string& t = terms[k];
      if (std::find(question_terms.begin(), question_terms.end(), t) != question_terms.end()) {
        continue;
      }
      if (r.TermFreq(t) == 0) continue;
      out.push_back(t);
    }
    return out;
  }

  // A term that confidence is computed over, and how much its idf counts.
  struct ScoredTerm {
    std::string term;
    double factor;
  };

  // --- cache ---------------------------------------------------------------------------------

  // One passage of a remembered result.
  struct CachedHit {
    Xapian::docid docid;
    double score;
    double confidence;
  };

  // Every part is length-prefixed, so no text (separators included) can pose as another key.
  static std::string CacheKey(const RetrievalQuery& query, const AccessFilter& access,
                              size_t limit) {
    std::string key;
    key.reserve(32 + query.text.size() + query.context.size());
    auto part = [&key](std::string_view s) {
      key += std::to_string(s.size());
      key += ':';
      key += s;
    };
    key += std::to_string(limit);
    key += '/';
    key += std::to_string(access.tags.size());
    for (const std::string& tag : access.tags) part(tag);
    part(query.text);
    part(query.context);
    return key;
  }

  static std::string ChunkKey(Xapian::docid docid) { return std::to_string(docid); }

  static size_t ChunkBytes(const Chunk& c) {
    size_t n = sizeof(Chunk) + c.title.size() + c.source.size() + c.anchor.size() + c.url.size() +
               c.text.size();
    for (const std::string& h : c.heading_path) n += sizeof(std::string) + h.size();
    for (const std::string& t : c.tags) n += sizeof(std::string) + t.size();
    return n;
  }

  // Whether the cache may be used at `revision`: a newer revision than the cache's empties it;
  // an older one may not use it. Call with cache_mu_ held.
  bool CacheUsableAt(Xapian::rev revision) {
    if (revision > cache_revision_ || !cache_revision_known_) {
      cached_results_.Clear();
      cached_chunks_.Clear();
      cache_revision_ = revision;
      cache_revision_known_ = true;
    }
    return revision == cache_revision_;
  }

  std::vector<Passage> CachedSearch(Reader& r, const RetrievalQuery& query,
                                    const AccessFilter& access, size_t limit) {
    const Xapian::rev revision = r.db.get_revision();
    std::string key = CacheKey(query, access, limit);
    std::vector<CachedHit> hits;
    std::vector<std::shared_ptr<const Chunk>> chunks;
    bool found = false;
    bool usable = false;
    {
      std::lock_guard<std::mutex> lock(cache_mu_);
      usable = CacheUsableAt(revision);
      if (usable) {
        if (const std::vector<CachedHit>* cached = cached_results_.Find(key)) {
          found = true;
          hits = *cached;
          for (const CachedHit& hit : hits) {
            auto* chunk = cached_chunks_.Find(ChunkKey(hit.docid));
            chunks.push_back(chunk != nullptr ? *chunk : nullptr);
          }
        }
      }
    }
    if (!found) {
      if (options_.cache_misses != nullptr) options_.cache_misses->Add();
      std::vector<std::shared_ptr<const Chunk>> decoded;
      std::vector<Passage> passages = Search(r, query, access, limit, &hits);
      if (!usable) return passages;
      decoded.reserve(passages.size());
      for (const Passage& p : passages) decoded.push_back(std::make_shared<const Chunk>(p.chunk));
      const size_t bytes = hits.size() * sizeof(CachedHit);
      std::lock_guard<std::mutex> lock(cache_mu_);
      if (!CacheUsableAt(revision)) return passages;
      for (size_t i = 0; i < decoded.size(); ++i) {
        const size_t chunk_bytes = ChunkBytes(*decoded[i]);
        cached_chunks_.Put(ChunkKey(hits[i].docid), std::move(decoded[i]), chunk_bytes);
      }
      cached_results_.Put(std::move(key), std::move(hits), bytes);
      return passages;
    }
    if (options_.cache_hits != nullptr) options_.cache_hits->Add();
    std::vector<Passage> passages;
    passages.reserve(hits.size());
    std::vector<std::pair<Xapian::docid, std::shared_ptr<const Chunk>>> loaded;
    for (size_t i = 0; i < hits.size(); ++i) {
      Passage p;
      if (chunks[i] != nullptr) {
        p.chunk = *chunks[i];
      } else {
        p.chunk = ChunkFromData(r.db.get_document(hits[i].docid).get_data());
        loaded.emplace_back(hits[i].docid, std::make_shared<const Chunk>(p.chunk));
      }
      p.score = hits[i].score;
      p.confidence = hits[i].confidence;
      passages.push_back(std::move(p));
    }
    if (!loaded.empty()) {
      std::lock_guard<std::mutex> lock(cache_mu_);
      if (CacheUsableAt(revision)) {
        for (auto& [docid, chunk] : loaded) {
          const size_t chunk_bytes = ChunkBytes(*chunk);
          cached_chunks_.Put(ChunkKey(docid), std::move(chunk), chunk_bytes);
        }
      }
    }
    return passages;
  }

  // --- search ----------------------------------------------------------------------------------

  // The best `limit` passages; their ids, scores and confidences also go to `hits` when set.
  std::vector<Passage> Search(Reader& r, const RetrievalQuery& query, const AccessFilter& access,
                              size_t limit, std::vector<CachedHit>* hits) {
    std::vector<Passage> passages;
    std::vector<std::string> question_terms;
    std::vector<std::string> corrected_terms;  // typo corrections, added to the query
    std::vector<ScoredTerm> scored;
    for (internal::QueryWord& w : internal::QueryWords(query.text)) {
      question_terms.push_back(w.term);
      if (r.TermFreq(w.term) > 0) {
        scored.push_back(ScoredTerm{std::move(w.term), 1.0});
        continue;
      }
      const std::string corrected = internal::IndexTerm(Correct(r, w.word));
      if (!corrected.empty() && r.TermFreq(corrected) > 0) {
        corrected_terms.push_back(corrected);
        scored.push_back(ScoredTerm{corrected, kCorrectedFactor});
        continue;
      }
      // A word the knowledge base has never seen: a name it does not know ("Netflix") says the
      // question is about something else; a plain word may just be chat ("weird noises").
      scored.push_back(
          ScoredTerm{std::move(w.term), w.named ? kUnknownNameFactor : kUnknownFactor});
    }
    const std::vector<std::string> context_terms = ContextTerms(r, query.context, question_terms);

    Xapian::Query main;
    if (!question_terms.empty()) {
      main = ParseQuestion(r, query.text, question_terms);
      if (!corrected_terms.empty()) {
        main = Xapian::Query(Xapian::Query::OP_OR, main, TermsQuery(corrected_terms));
      }
      main = LimitTerms(r, main);
      if (!context_terms.empty()) {
        main = Xapian::Query(Xapian::Query::OP_AND_MAYBE, main,
                             Xapian::Query(Xapian::Query::OP_SCALE_WEIGHT,
                                           TermsQuery(context_terms), kContextWeight));
      }
    } else {
      // No content words in the question ("and then?"): the context carries the query.
      main = TermsQuery(context_terms);
      for (const std::string& t : context_terms) scored.push_back(ScoredTerm{t, 1.0});
    }
    if (main.empty()) return passages;

    Xapian::Query filtered = main;
    if (!r.all_public) {
      std::vector<Xapian::Query> visible;
      visible.reserve(access.tags.size() + 1);
      visible.emplace_back(kPublicTerm);
      for (const std::string& tag : access.tags) visible.emplace_back(TagTerm(tag));
      filtered = Xapian::Query(Xapian::Query::OP_FILTER, main,
                               Xapian::Query(Xapian::Query::OP_OR, visible.begin(), visible.end()));
    }
    r.enquire.set_query(filtered);
    Xapian::MSet mset = r.enquire.get_mset(0, static_cast<Xapian::doccount>(limit));
    if (mset.empty()) return passages;

    std::vector<double> coverage = Coverage(r, mset, scored);
    passages.reserve(mset.size());
    size_t index = 0;
    for (auto it = mset.begin(); it != mset.end(); ++it, ++index) {
      Passage p;
      p.chunk = ChunkFromData(it.get_document().get_data());
      p.score = it.get_weight();
      p.confidence = coverage[index];
      if (hits != nullptr) hits->push_back(CachedHit{*it, p.score, p.confidence});
      passages.push_back(std::move(p));
    }
    return passages;
  }

  // For each MSet item: the idf-weighted fraction of `terms` present in the document, each idf
  // scaled by the term's factor. A term the index does not know at all has the highest idf, so a
  // question about something absent from the knowledge base gets a low confidence however well
  // its other words match.
  std::vector<double> Coverage(Reader& r, const Xapian::MSet& mset,
                               const std::vector<ScoredTerm>& terms) {
    std::vector<double> covered(mset.size(), 0.0);
    if (terms.empty()) return covered;
    const double n = static_cast<double>(r.doccount);
    std::vector<std::pair<Xapian::docid, size_t>> docs;  // docid ascending -> mset index
    docs.reserve(mset.size());
    size_t index = 0;
    for (auto it = mset.begin(); it != mset.end(); ++it, ++index) docs.emplace_back(*it, index);
    std::sort(docs.begin(), docs.end());
    double total = 0;
    for (const ScoredTerm& t : terms) {
      const Xapian::doccount df = r.TermFreq(t.term);
      const double weight = t.factor * std::log((n + 1.0) / (static_cast<double>(df) + 0.5));
      total += weight;
      if (df == 0) continue;
      Xapian::PostingIterator post = r.db.postlist_begin(t.term);
      const Xapian::PostingIterator end = r.db.postlist_end(t.term);
      for (const auto& [docid, i] : docs) {
        post.skip_to(docid);
        if (post == end) break;
        if (*post == docid) covered[i] += weight;
      }
    }
    if (total <= 0) return covered;
    for (double& c : covered) c = std::min(1.0, c / total);
    return covered;
  }

  // --- ingest ----------------------------------------------------------------------------------

  Status IngestInto(Xapian::WritableDatabase& db, const std::vector<SourceSpec>& sources,
                    const ChunkOptions& options, IngestReport& report) {
    std::map<std::string, FileRecord> existing;  // metadata key -> record
    for (auto it = db.metadata_keys_begin(kFileKeyPrefix);
         it != db.metadata_keys_end(kFileKeyPrefix); ++it) {
      existing[*it] = ParseFileRecord(db.get_metadata(*it));
    }

    Xapian::SimpleStopper stopper(internal::EnglishStopwords().begin(),
                                  internal::EnglishStopwords().end());
    Xapian::TermGenerator generator;
    generator.set_stemmer(Xapian::Stem("english"));
    generator.set_stemming_strategy(Xapian::TermGenerator::STEM_SOME);
    generator.set_stopper(&stopper);
    generator.set_stopper_strategy(Xapian::TermGenerator::STOP_STEMMED);

    db.begin_transaction(/*flushed=*/true);
    std::set<std::string> seen;  // metadata keys of files still listed
    for (const SourceSpec& source : sources) {
      const std::string identity = internal::SourceIdentity(source.path);
      const std::string signature = SourceSignature(source, options);
      bool root_ok = false;
      std::vector<internal::SourceFile> files =
          internal::ListSourceFiles(source.path, report.errors, root_ok);
      if (!root_ok) {
        // A source that cannot be listed right now keeps what it had in the index.
        for (const auto& [key, record] : existing) {
          if (record.key.compare(0, identity.size() + 1, identity + "\n") == 0) seen.insert(key);
        }
        continue;
      }
      for (const internal::SourceFile& file : files) {
        ++report.files_seen;
        const std::string file_key = identity + "\n" + file.relative;
        const std::string file_id = internal::Sha256Hex(file_key).substr(0, 32);
        const std::string meta_key = kFileKeyPrefix + file_id;
        seen.insert(meta_key);
        Result<std::string> content = internal::ReadWholeFile(file.path, kMaxFileBytes);
        if (!content.ok()) {
          report.errors.push_back(content.status().message());
          continue;  // its earlier chunks, if any, stay
        }
        const std::string hash = internal::Sha256Hex(*content);
        auto old = existing.find(meta_key);
        if (old != existing.end() && old->second.hash == hash &&
            old->second.signature == signature) {
          ++report.files_unchanged;
          continue;
        }
        std::vector<Chunk> chunks = ChunkDocument(file.relative, *content, options);
        const std::string file_term = kFilePrefix + file_id;
        db.delete_document(file_term);
        for (Chunk& chunk : chunks) {
          chunk.tags = source.tags;
          if (!source.url_base.empty()) {
            chunk.url = source.url_base + PercentEncode(chunk.source, "/");
            if (!chunk.anchor.empty()) chunk.url += "#" + PercentEncode(chunk.anchor, "/");
          }
          db.add_document(MakeDocument(generator, chunk, file_term));
        }
        json record = {{"key", file_key},
                       {"hash", hash},
                       {"sig", signature},
                       {"path", file.display},
                       {"chunks", chunks.size()}};
        db.set_metadata(meta_key, record.dump(-1, ' ', false, json::error_handler_t::replace));
        ++report.files_indexed;
        report.indexed_files.push_back(file.display);
      }
    }
    for (const auto& [key, record] : existing) {
      if (seen.count(key) > 0) continue;
      db.delete_document(kFilePrefix + key.substr(std::string(kFileKeyPrefix).size()));
      db.set_metadata(key, "");  // an empty value deletes the entry
      ++report.files_removed;
    }
    db.set_metadata(kFormatKey, kFormatVersion);
    db.commit_transaction();
    return Status::Ok();
  }

  static Xapian::Document MakeDocument(Xapian::TermGenerator& generator, const Chunk& chunk,
                                       const std::string& file_term) {
    Xapian::Document doc;
    generator.set_document(doc);
    const std::vector<std::string>& path = chunk.heading_path;
    std::string section_text;
    if (!chunk.title.empty() && (path.empty() || path.front() != chunk.title)) {
      generator.index_text(chunk.title, kTitleWdf);
      generator.increase_termpos();
      section_text = chunk.title;
    }
    for (size_t i = 0; i < path.size(); ++i) {
      generator.index_text(path[i], i + 1 == path.size() ? kHeadingWdf : kParentHeadingWdf);
      generator.increase_termpos();
      section_text += "\n" + path[i];
    }
    generator.index_text(section_text, 1, kSectionPrefix);
    generator.increase_termpos();
    generator.index_text(chunk.text);
    doc.add_boolean_term(file_term);
    if (chunk.tags.empty()) {
      doc.add_boolean_term(kPublicTerm);
    } else {
      for (const std::string& tag : chunk.tags) doc.add_boolean_term(TagTerm(tag));
    }
    doc.set_data(ChunkToData(chunk));
    return doc;
  }

  const std::string directory_;
  const IndexOptions options_;
  std::mutex cache_mu_;
  bool cache_revision_known_ = false;
  Xapian::rev cache_revision_ = 0;
  LruMap<std::vector<CachedHit>> cached_results_;        // CacheKey -> passages
  LruMap<std::shared_ptr<const Chunk>> cached_chunks_;  // ChunkKey -> decoded chunk
  std::mutex ingest_mu_;
  std::atomic<uint64_t> generation_{0};
  std::mutex pool_mu_;
  std::vector<std::unique_ptr<Reader>> free_;
};

}  // namespace

Result<std::unique_ptr<KnowledgeIndex>> KnowledgeIndex::Open(const std::string& directory,
                                                             const IndexOptions& options) {
  auto index = std::make_unique<XapianKnowledgeIndex>(directory, options);
  Status s = index->Init();
  if (!s.ok()) return s;
  return std::unique_ptr<KnowledgeIndex>(std::move(index));
}

}  // namespace parley::knowledge
