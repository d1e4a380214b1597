// Retrieval benchmark: parley's knowledge index (Xapian, through the public KnowledgeIndex API)
// against SQLite FTS5 over exactly the same chunks of a large real corpus (by default Debian's
// PostgreSQL 15 manual, package postgresql-doc-15).
//
// For each engine: chunk count, build time, size on disk, warm single-thread query latency
// (p50/p90/p99/mean over many rounds of a question set, each query timed with steady_clock from
// the raw question to the top-5 results read out) and recall@1 / recall@5 against the expected
// answer locations in the question file. Prints Markdown on stdout; progress goes to stderr.
//
// Fairness:
//   - Both engines index the chunks that knowledge::ChunkDocument makes with the daemon's default
//     ChunkOptions; FTS5's build time includes reading and chunking the files, like Ingest's.
//   - FTS5 uses the 'porter unicode61' tokenizer (stemming, like parley's Snowball stemmer) and
//     bm25 column weights mirroring parley's wdf boosts (title 2, headings 4, body 1 by default).
//   - Stopwords: the question is split with parley's own word splitter and parley's stopword list
//     is dropped from the FTS5 query too, so both engines see the same content words; each
//     remaining word is quoted and the words are OR-ed (parley's default operator is OR as well).
//   - FTS5 runs on one prepared statement (prepared once, reset and re-bound per query) with the
//     weights stored as the table's persistent rank function, so ORDER BY rank LIMIT 5 takes
//     FTS5's optimised path. parley's timing includes everything Retrieve does (query parsing,
//     access filter, BM25 top-k, confidence, decoding the stored chunk).

#include <sqlite3.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <nlohmann/json.hpp>
#include <numeric>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "knowledge/analyzer.h"
#include "knowledge/knowledge.h"

namespace parley::bench {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr char kDefaultCorpus[] = "/usr/share/doc/postgresql-doc-15/html";
constexpr size_t kTopK = 5;

struct Options {
  std::string corpus = kDefaultCorpus;
  std::string questions = PARLEY_BENCH_QUESTIONS;
  int rounds = 20;
  double w_title = 2.0;
  double w_headings = 4.0;
  double w_body = 1.0;
  bool fts_order_by_bm25 = false;  // ORDER BY bm25(chunks, w...) instead of ORDER BY rank
  bool run_xapian = true;
  bool run_fts5 = true;
  bool details = true;
  bool dump_sections = false;  // print "source<TAB>section<TAB>chars" per chunk and exit
};

struct Expected {
  std::string source;
  std::string section;  // substring of the heading path ("A > B > C")
};

struct Question {
  std::string id;
  std::string text;
  std::vector<Expected> expect;
};

// What one engine returned for a question, best first.
struct Hit {
  std::string source;
  std::string section;
};

struct EngineResult {
  std::string name;
  size_t chunks = 0;
  double build_seconds = 0;
  uint64_t disk_bytes = 0;
  std::vector<double> micros;           // every timed query
  std::vector<std::vector<double>> per_question;  // timed latencies of each question
  std::vector<size_t> rank;             // per question: 1-based rank of the first hit, 0 = none
  std::vector<std::string> top;         // per question: "source | section" of the first result
  bool ran = false;
};

[[noreturn]] void Die(const std::string& message) {
  std::fprintf(stderr, "retrieval_bench: %s\n", message.c_str());
  std::exit(1);
}

void Progress(const std::string& message) {
  std::fprintf(stderr, "retrieval_bench: %s\n", message.c_str());
}

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

void Usage() {
  std::fprintf(stderr,
               "usage: retrieval_bench [--corpus DIR] [--questions FILE] [--rounds N]\n"
               "                       [--weights TITLE,HEADINGS,BODY] [--engine xapian|fts5|both]\n"
               "                       [--fts-order rank|bm25] [--no-details] [--dump-sections]\n"
               "--fts-order bm25 sorts FTS5 by an explicit bm25(chunks, weights) call instead of\n"
               "the table's rank function configured with the same weights.\n"
               "--dump-sections prints source, heading path and size of every chunk (for writing\n"
               "questions) and exits.\n"
               "Defaults: --corpus %s --rounds 20 --weights 2,4,1 --engine both\n",
               kDefaultCorpus);
}

Options ParseArgs(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        Usage();
        Die(arg + " needs a value");
      }
      return argv[++i];
    };
    if (arg == "--corpus") {
      o.corpus = next();
    } else if (arg == "--questions") {
      o.questions = next();
    } else if (arg == "--rounds") {
      o.rounds = std::atoi(next().c_str());
      if (o.rounds < 1) Die("--rounds must be at least 1");
    } else if (arg == "--weights") {
      const std::string w = next();
      if (std::sscanf(w.c_str(), "%lf,%lf,%lf", &o.w_title, &o.w_headings, &o.w_body) != 3) {
        Die("--weights wants TITLE,HEADINGS,BODY, e.g. 2,4,1");
      }
    } else if (arg == "--fts-order") {
      const std::string order = next();
      if (order != "rank" && order != "bm25") Die("--fts-order is rank or bm25");
      o.fts_order_by_bm25 = order == "bm25";
    } else if (arg == "--engine") {
      const std::string e = next();
      o.run_xapian = e == "xapian" || e == "both";
      o.run_fts5 = e == "fts5" || e == "both";
      if (!o.run_xapian && !o.run_fts5) Die("--engine is xapian, fts5 or both");
    } else if (arg == "--dump-sections") {
      o.dump_sections = true;
    } else if (arg == "--no-details") {
      o.details = false;
    } else if (arg == "-h" || arg == "--help") {
      Usage();
      std::exit(0);
    } else {
      Usage();
      Die("unknown argument " + arg);
    }
  }
  return o;
}

std::vector<Question> LoadQuestions(const std::string& path) {
  std::ifstream in(path);
  if (!in) Die("cannot read " + path);
  nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || !j.contains("questions") || !j["questions"].is_array()) {
    Die(path + ": not a question file (want {\"questions\": [...]})");
  }
  std::vector<Question> out;
  for (const auto& q : j["questions"]) {
    Question question;
    question.id = q.value("id", "");
    question.text = q.value("q", "");
    if (!q.contains("expect") || !q["expect"].is_array() || q["expect"].empty()) {
      Die(path + ": question " + question.id + " has no expected location");
    }
    for (const auto& e : q["expect"]) {
      if (!e.is_array() || e.size() != 2 || !e[0].is_string() || !e[1].is_string()) {
        Die(path + ": question " + question.id + ": expect entries are [file, section]");
      }
      question.expect.push_back(Expected{e[0].get<std::string>(), e[1].get<std::string>()});
    }
    out.push_back(std::move(question));
  }
  if (out.empty()) Die(path + ": no questions");
  return out;
}

bool IsHit(const Hit& hit, const Question& q) {
  for (const Expected& e : q.expect) {
    if (hit.source == e.source && hit.section.find(e.section) != std::string::npos) return true;
  }
  return false;
}

size_t FirstHitRank(const std::vector<Hit>& hits, const Question& q) {
  for (size_t i = 0; i < hits.size(); ++i) {
    if (IsHit(hits[i], q)) return i + 1;
  }
  return 0;
}

// The files Ingest would read: the knowledge module's extensions, relative paths sorted.
std::vector<std::string> ListCorpus(const std::string& root) {
  std::vector<std::string> files;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(root, ec); !ec && it != fs::end(it);
       it.increment(ec)) {
    if (!it->is_regular_file()) continue;
    std::string ext = it->path().extension().string();
    std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) {
      return static_cast<char>(std::tolower(c));
    });
    if (ext == ".html" || ext == ".htm" || ext == ".md" || ext == ".markdown" || ext == ".txt") {
      files.push_back(fs::relative(it->path(), root).generic_string());
    }
  }
  if (ec) Die(root + ": " + ec.message());
  std::sort(files.begin(), files.end());
  return files;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) Die("cannot read " + path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Like du: allocated blocks of every file under `path` (a file or a directory).
uint64_t DiskUsage(const std::string& path) {
  uint64_t total = 0;
  struct stat st;
  if (::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode)) {
    return static_cast<uint64_t>(st.st_blocks) * 512;
  }
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(path, ec); !ec && it != fs::end(it);
       it.increment(ec)) {
    if (::lstat(it->path().c_str(), &st) == 0 && S_ISREG(st.st_mode)) {
      total += static_cast<uint64_t>(st.st_blocks) * 512;
    }
  }
  return total;
}

std::string MakeTempDir() {
  const char* tmp = std::getenv("TMPDIR");
  std::string pattern = std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") +
                        "/parley-retrieval-bench-XXXXXX";
  std::vector<char> buf(pattern.begin(), pattern.end());
  buf.push_back('\0');
  if (mkdtemp(buf.data()) == nullptr) Die("mkdtemp failed: " + std::string(std::strerror(errno)));
  return std::string(buf.data());
}

// --- SQLite FTS5 -------------------------------------------------------------------------------

void Check(sqlite3* db, int rc, const char* what) {
  if (rc != SQLITE_OK && rc != SQLITE_DONE && rc != SQLITE_ROW) {
    Die(std::string("sqlite: ") + what + ": " + sqlite3_errmsg(db));
  }
}

void Exec(sqlite3* db, const std::string& sql) {
  char* error = nullptr;
  if (sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &error) != SQLITE_OK) {
    std::string message = error != nullptr ? error : "?";
    sqlite3_free(error);
    Die("sqlite: " + sql + ": " + message);
  }
}

class Statement {
 public:
  Statement(sqlite3* db, const std::string& sql) : db_(db) {
    Check(db, sqlite3_prepare_v3(db, sql.c_str(), static_cast<int>(sql.size()),
                                 SQLITE_PREPARE_PERSISTENT, &stmt_, nullptr),
          sql.c_str());
  }
  ~Statement() { sqlite3_finalize(stmt_); }
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;
  sqlite3_stmt* get() { return stmt_; }
  sqlite3* db() { return db_; }

 private:
  sqlite3* db_;
  sqlite3_stmt* stmt_ = nullptr;
};

std::string ColumnText(sqlite3_stmt* stmt, int column) {
  const unsigned char* text = sqlite3_column_text(stmt, column);
  const int size = sqlite3_column_bytes(stmt, column);
  return text == nullptr ? std::string() : std::string(reinterpret_cast<const char*>(text), size);
}

// A chat question as a safe FTS5 MATCH expression: parley's word splitting, parley's stopwords
// dropped, duplicates dropped, each word a quoted string (quotes doubled), OR-ed. Empty when the
// question has no content words.
std::string MatchExpression(std::string_view question) {
  std::string expr;
  std::vector<std::string> seen;
  for (const std::string& word : knowledge::internal::SplitWords(question)) {
    if (knowledge::internal::IsStopword(word)) continue;
    if (std::find(seen.begin(), seen.end(), word) != seen.end()) continue;
    seen.push_back(word);
    if (!expr.empty()) expr += " OR ";
    expr += '"';
    for (char c : word) {
      if (c == '"') expr += '"';
      expr += c;
    }
    expr += '"';
  }
  return expr;
}

class Fts5Engine {
 public:
  explicit Fts5Engine(const std::string& path) : path_(path) {
    Check(db_, sqlite3_open(path.c_str(), &db_), "open");
    // A page cache larger than the whole database (64 MiB), so queries never wait for a read.
    Exec(db_, "PRAGMA cache_size = -65536");
  }
  ~Fts5Engine() {
    query_.reset();
    sqlite3_close(db_);
  }

  void Build(const std::vector<knowledge::Chunk>& chunks, const Options& o) {
    Exec(db_,
         "CREATE VIRTUAL TABLE chunks USING fts5(title, headings, body, source UNINDEXED, "
         "section UNINDEXED, tokenize = 'porter unicode61')");
    char rank[160];
    std::snprintf(rank, sizeof(rank),
                  "INSERT INTO chunks(chunks, rank) VALUES('rank', 'bm25(%g, %g, %g)')", o.w_title,
                  o.w_headings, o.w_body);
    Exec(db_, rank);
    Exec(db_, "BEGIN");
    {
      Statement insert(db_,
                       "INSERT INTO chunks(title, headings, body, source, section) "
                       "VALUES(?1, ?2, ?3, ?4, ?5)");
      for (const knowledge::Chunk& c : chunks) {
        const std::string section = c.Section();
        sqlite3_stmt* s = insert.get();
        sqlite3_reset(s);
        sqlite3_bind_text(s, 1, c.title.data(), static_cast<int>(c.title.size()), SQLITE_STATIC);
        sqlite3_bind_text(s, 2, section.data(), static_cast<int>(section.size()), SQLITE_STATIC);
        sqlite3_bind_text(s, 3, c.text.data(), static_cast<int>(c.text.size()), SQLITE_STATIC);
        sqlite3_bind_text(s, 4, c.source.data(), static_cast<int>(c.source.size()),
                          SQLITE_STATIC);
        sqlite3_bind_text(s, 5, section.data(), static_cast<int>(section.size()), SQLITE_STATIC);
        Check(db_, sqlite3_step(s), "insert");
      }
    }
    Exec(db_, "COMMIT");
    // Merge the b-tree segments into one, as a production build would before serving.
    Exec(db_, "INSERT INTO chunks(chunks) VALUES('optimize')");
  }

  void Prepare(const Options& o) {
    char order[96];
    if (o.fts_order_by_bm25) {
      std::snprintf(order, sizeof(order), "bm25(chunks, %g, %g, %g)", o.w_title, o.w_headings,
                    o.w_body);
    } else {
      std::snprintf(order, sizeof(order), "rank");
    }
    query_ = std::make_unique<Statement>(
        db_, std::string("SELECT source, section, title, body FROM chunks WHERE chunks MATCH ?1 "
                         "ORDER BY ") +
                 order + " LIMIT " + std::to_string(kTopK));
  }

  size_t Count() {
    Statement count(db_, "SELECT count(*) FROM chunks");
    Check(db_, sqlite3_step(count.get()), "count");
    return static_cast<size_t>(sqlite3_column_int64(count.get(), 0));
  }

  // Everything a caller needs to answer: the MATCH expression, the ranked query and the top
  // results' text read out of the row.
  std::vector<Hit> Query(const std::string& question) {
    std::vector<Hit> hits;
    const std::string match = MatchExpression(question);
    if (match.empty()) return hits;
    sqlite3_stmt* s = query_->get();
    sqlite3_reset(s);
    sqlite3_bind_text(s, 1, match.data(), static_cast<int>(match.size()), SQLITE_TRANSIENT);
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
      Hit h;
      h.source = ColumnText(s, 0);
      h.section = ColumnText(s, 1);
      text_ = ColumnText(s, 2);
      text_ = ColumnText(s, 3);
      hits.push_back(std::move(h));
    }
    Check(db_, rc, "query");
    return hits;
  }

 private:
  std::string path_;
  sqlite3* db_ = nullptr;
  std::unique_ptr<Statement> query_;
  std::string text_;  // the passage text is read like a caller would, then dropped
};

// --- measuring ---------------------------------------------------------------------------------

double Percentile(std::vector<double> sorted, double p) {
  if (sorted.empty()) return 0;
  std::sort(sorted.begin(), sorted.end());
  const size_t index = std::min(sorted.size() - 1,
                                static_cast<size_t>(p / 100.0 * static_cast<double>(sorted.size())));
  return sorted[index];
}

double Mean(const std::vector<double>& v) {
  return v.empty() ? 0 : std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
}

template <typename QueryFn>
void RunQuestions(const std::vector<Question>& questions, int rounds, EngineResult& result,
                  QueryFn&& query) {
  result.rank.assign(questions.size(), 0);
  result.top.assign(questions.size(), "");
  result.per_question.assign(questions.size(), {});
  // Round 0 warms caches and is where recall is taken (results are deterministic); rounds
  // 1..N are timed.
  for (int round = 0; round <= rounds; ++round) {
    for (size_t i = 0; i < questions.size(); ++i) {
      const auto start = Clock::now();
      std::vector<Hit> hits = query(questions[i].text);
      const auto end = Clock::now();
      if (round == 0) {
        result.rank[i] = FirstHitRank(hits, questions[i]);
        if (!hits.empty()) result.top[i] = hits[0].source + " | " + hits[0].section;
      } else {
        const double micros = std::chrono::duration<double, std::micro>(end - start).count();
        result.micros.push_back(micros);
        result.per_question[i].push_back(micros);
      }
    }
  }
  result.ran = true;
}

std::string Mib(uint64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f MiB", static_cast<double>(bytes) / (1024.0 * 1024.0));
  return buf;
}

std::string Fixed(double v, int digits) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.*f", digits, v);
  return buf;
}

std::string Recall(const EngineResult& r, size_t at) {
  size_t hits = 0;
  for (size_t rank : r.rank) {
    if (rank >= 1 && rank <= at) ++hits;
  }
  const double fraction = r.rank.empty() ? 0 : static_cast<double>(hits) / r.rank.size();
  return Fixed(fraction, 3) + " (" + std::to_string(hits) + "/" + std::to_string(r.rank.size()) +
         ")";
}

std::string Cell(const EngineResult& r, const std::string& value) { return r.ran ? value : "–"; }

std::string Escape(std::string s) {
  std::string out;
  for (char c : s) {
    if (c == '|') {
      out += "\\|";
    } else if (c == '\n') {
      out += ' ';
    } else {
      out += c;
    }
  }
  return out;
}

int Main(int argc, char** argv) {
  const Options o = ParseArgs(argc, argv);
  const std::vector<std::string> files = ListCorpus(o.corpus);
  if (files.empty()) {
    Die(o.corpus + " holds no documents. The PostgreSQL manual comes with the Debian package "
        "postgresql-doc-15 (apt-get install postgresql-doc-15).");
  }
  if (o.dump_sections) {
    for (const std::string& rel : files) {
      for (const knowledge::Chunk& c :
           knowledge::ChunkDocument(rel, ReadFile(o.corpus + "/" + rel), knowledge::ChunkOptions())) {
        std::printf("%s\t%s\t%zu\n", c.source.c_str(), c.Section().c_str(), c.text.size());
      }
    }
    return 0;
  }
  const std::vector<Question> questions = LoadQuestions(o.questions);
  const std::string tmp = MakeTempDir();
  struct Cleanup {
    std::string dir;
    ~Cleanup() {
      std::error_code ignored;
      fs::remove_all(dir, ignored);
    }
  } cleanup{tmp};

  // Read and chunk every file once, as FTS5's input (timed: it is part of FTS5's build).
  Progress("reading and chunking " + std::to_string(files.size()) + " files of " + o.corpus);
  const knowledge::ChunkOptions chunk_options;  // the daemon's defaults (1200 / 3000)
  uint64_t corpus_bytes = 0;
  std::vector<knowledge::Chunk> chunks;
  const auto chunk_start = Clock::now();
  for (const std::string& rel : files) {
    const std::string content = ReadFile(o.corpus + "/" + rel);
    corpus_bytes += content.size();
    std::vector<knowledge::Chunk> part = knowledge::ChunkDocument(rel, content, chunk_options);
    std::move(part.begin(), part.end(), std::back_inserter(chunks));
  }
  const double chunk_seconds = Seconds(chunk_start, Clock::now());

  EngineResult xapian;
  xapian.name = "parley (Xapian)";
  EngineResult fts5;
  fts5.name = "SQLite FTS5";

  if (o.run_xapian) {
    Progress("xapian: ingest");
    const std::string dir = tmp + "/xapian";
    const auto start = Clock::now();
    // The result cache is off: every round must search, as FTS5 does.
    knowledge::IndexOptions no_cache;
    no_cache.cache_bytes = 0;
    auto opened = knowledge::KnowledgeIndex::Open(dir, no_cache);
    if (!opened.ok()) Die("KnowledgeIndex::Open: " + opened.status().ToString());
    std::unique_ptr<knowledge::KnowledgeIndex> index = std::move(opened).value();
    auto report = index->Ingest({knowledge::SourceSpec{o.corpus, {}, ""}}, chunk_options);
    if (!report.ok()) Die("Ingest: " + report.status().ToString());
    xapian.build_seconds = Seconds(start, Clock::now());
    for (const std::string& e : report->errors) Progress("xapian: ingest error: " + e);
    xapian.chunks = index->ChunkCount();
    xapian.disk_bytes = DiskUsage(dir);
    Progress("xapian: " + std::to_string(questions.size()) + " questions x " +
             std::to_string(o.rounds) + " rounds");
    RunQuestions(questions, o.rounds, xapian, [&](const std::string& text) {
      std::vector<Hit> hits;
      auto passages = index->Retrieve(knowledge::RetrievalQuery{text, ""},
                                      knowledge::AccessFilter{}, kTopK);
      if (!passages.ok()) Die("Retrieve: " + passages.status().ToString());
      hits.reserve(passages->size());
      for (const knowledge::Passage& p : *passages) {
        hits.push_back(Hit{p.chunk.source, p.chunk.Section()});
      }
      return hits;
    });
  }

  if (o.run_fts5) {
    Progress("fts5: build");
    const std::string path = tmp + "/fts5.db";
    Fts5Engine engine(path);
    const auto start = Clock::now();
    engine.Build(chunks, o);
    fts5.build_seconds = Seconds(start, Clock::now()) + chunk_seconds;
    fts5.chunks = engine.Count();
    fts5.disk_bytes = DiskUsage(path);
    engine.Prepare(o);
    Progress("fts5: " + std::to_string(questions.size()) + " questions x " +
             std::to_string(o.rounds) + " rounds");
    RunQuestions(questions, o.rounds, fts5,
                 [&](const std::string& text) { return engine.Query(text); });
  }

  // --- report ----------------------------------------------------------------------------------
  std::printf("## Retrieval: parley (Xapian) vs SQLite FTS5\n\n");
  std::printf("Corpus: `%s`, %zu files, %s of HTML, %zu chunks (ChunkDocument with the daemon's "
              "defaults, target %zu / max %zu chars; reading + chunking took %.2f s).  \n",
              o.corpus.c_str(), files.size(), Mib(corpus_bytes).c_str(), chunks.size(),
              chunk_options.target_chars, chunk_options.max_chars, chunk_seconds);
  std::printf("Questions: %zu from `%s`; %d timed rounds after one warm-up round, single thread, "
              "top %zu. FTS5: tokenize 'porter unicode61', bm25 weights title %g, headings %g, "
              "body %g, %s LIMIT %zu, one prepared statement.\n\n",
              questions.size(), fs::path(o.questions).filename().c_str(), o.rounds, kTopK,
              o.w_title, o.w_headings, o.w_body,
              o.fts_order_by_bm25 ? "ORDER BY bm25(chunks, ...)" : "ORDER BY rank (rank = bm25 "
                                                                    "with these weights)",
              kTopK);

  std::printf("| | %s | %s |\n|---|---:|---:|\n", xapian.name.c_str(), fts5.name.c_str());
  auto row = [&](const char* label, const std::string& a, const std::string& b) {
    std::printf("| %s | %s | %s |\n", label, Cell(xapian, a).c_str(), Cell(fts5, b).c_str());
  };
  row("chunks", std::to_string(xapian.chunks), std::to_string(fts5.chunks));
  row("build time (s)", Fixed(xapian.build_seconds, 2), Fixed(fts5.build_seconds, 2));
  row("size on disk (du)", Mib(xapian.disk_bytes), Mib(fts5.disk_bytes));
  row("queries timed", std::to_string(xapian.micros.size()), std::to_string(fts5.micros.size()));
  row("latency p50 (µs)", Fixed(Percentile(xapian.micros, 50), 1),
      Fixed(Percentile(fts5.micros, 50), 1));
  row("latency p90 (µs)", Fixed(Percentile(xapian.micros, 90), 1),
      Fixed(Percentile(fts5.micros, 90), 1));
  row("latency p99 (µs)", Fixed(Percentile(xapian.micros, 99), 1),
      Fixed(Percentile(fts5.micros, 99), 1));
  row("latency mean (µs)", Fixed(Mean(xapian.micros), 1), Fixed(Mean(fts5.micros), 1));
  row("recall@1", Recall(xapian, 1), Recall(fts5, 1));
  row("recall@5", Recall(xapian, 5), Recall(fts5, 5));
  if (xapian.ran && fts5.ran) {
    const double ratio = Percentile(fts5.micros, 50) / Percentile(xapian.micros, 50);
    std::printf("\n**FTS5 p50 / Xapian p50 = %.1fx** (target: at least 10x).\n", ratio);
  }
  std::printf("\nBuild time: parley = KnowledgeIndex::Open + Ingest (read, hash, chunk, index, "
              "commit); FTS5 = reading + chunking (above) + inserts in one transaction + "
              "'optimize'. FTS5 keeps stopwords in its index; both engines' queries drop parley's "
              "stopword list.\n");

  if (o.details) {
    std::printf("\n### Per question\n\nRank of the first expected passage in the top %zu (- = "
                "missed) and the question's median latency.\n\n"
                "| id | Xapian rank | FTS5 rank | Xapian µs | FTS5 µs | Xapian top result | "
                "FTS5 top result |\n|---|---:|---:|---:|---:|---|---|\n",
                kTopK);
    for (size_t i = 0; i < questions.size(); ++i) {
      auto rank = [&](const EngineResult& r) -> std::string {
        if (!r.ran) return "–";
        return r.rank[i] == 0 ? "-" : std::to_string(r.rank[i]);
      };
      auto top = [&](const EngineResult& r) -> std::string {
        if (!r.ran) return "–";
        std::string t = r.top[i];
        if (t.size() > 70) t = t.substr(0, 67) + "...";
        return Escape(t);
      };
      auto median = [&](const EngineResult& r) -> std::string {
        if (!r.ran) return "–";
        return Fixed(Percentile(r.per_question[i], 50), 0);
      };
      std::printf("| %s | %s | %s | %s | %s | %s | %s |\n", Escape(questions[i].id).c_str(),
                  rank(xapian).c_str(), rank(fts5).c_str(), median(xapian).c_str(),
                  median(fts5).c_str(), top(xapian).c_str(), top(fts5).c_str());
    }
  }
  return 0;
}

}  // namespace
}  // namespace parley::bench

int main(int argc, char** argv) { return parley::bench::Main(argc, argv); }
