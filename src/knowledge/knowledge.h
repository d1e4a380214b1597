#pragma once
// The knowledge base: ingest of Markdown / plain text / HTML trees into heading-aware chunks, and
// ranked retrieval over them with Xapian (BM25, English Snowball stemming, title and heading terms
// weighted above body terms, access tags as boolean filter terms).
// The index lives on disk in one directory; a restart does not re-index, and ingest is
// incremental (only files whose content hash changed, plus removals).

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/message.h"
#include "core/metrics.h"
#include "core/status.h"

namespace parley::knowledge {

// One retrievable piece of a document.
struct Chunk {
  std::string title;                      // document title (first h1 / <title> / file name)
  std::string source;                     // file path relative to its knowledge source root
  std::vector<std::string> heading_path;  // e.g. {"Install", "On Windows"}; may be empty
  std::string anchor;                     // section anchor (HTML id or GitHub-style slug)
  std::string url;                        // url_base + source + "#" + anchor, or empty
  std::string text;                       // the chunk's text, Markdown-ish plain text
  std::vector<std::string> tags;          // access tags; empty = everyone

  // "Install > On Windows".
  std::string Section() const;
  Citation ToCitation() const;
};

struct ChunkOptions {
  size_t target_chars = 1200;  // cut near this size at paragraph boundaries
  size_t max_chars = 3000;     // hard cap, except inside a code block or a table row
};

// Splits one file's content into chunks. `format` is decided from the file name's extension:
// .md/.markdown = Markdown, .html/.htm = HTML (navigation, scripts, styles, headers/footers and
// other boilerplate stripped), anything else = plain text. Never splits inside a fenced code block
// or a table row; every chunk keeps the heading path it sits under.
std::vector<Chunk> ChunkDocument(std::string_view relative_path, std::string_view content,
                                 const ChunkOptions& options);

// Lowercased, stemmed (English Snowball) terms of text with stopwords removed, in text order
// (duplicates kept). Used by the responder to score sentences against a query.
std::vector<std::string> AnalyzeTerms(std::string_view text);

struct SourceSpec {
  std::string path;               // directory or single file
  std::vector<std::string> tags;  // access tags for every chunk from this source
  std::string url_base;
};

struct IngestReport {
  size_t files_seen = 0;
  size_t files_indexed = 0;    // new or changed, (re)indexed this run
  size_t files_unchanged = 0;  // skipped: content hash unchanged
  size_t files_removed = 0;    // in the index but no longer on disk
  size_t chunks_total = 0;     // chunks in the index after the run
  std::vector<std::string> indexed_files;  // relative paths (prefixed by the source path)
  std::vector<std::string> errors;         // unreadable files etc.; the rest is still indexed
  double seconds = 0;
};

// Which restricted chunks a conversation may see: a chunk is visible when it has no tags or
// shares one with `tags` (tags compare exactly, case-sensitively).
struct AccessFilter {
  std::vector<std::string> tags;
};

struct RetrievalQuery {
  std::string text;     // the user's question
  std::string context;  // earlier turns for follow-ups; weighted well below `text`; may be empty
                        // It only re-ranks passages that match `text`, except when `text` has no
                        // content words at all ("and then?"): then the context is the query.
};

struct Passage {
  Chunk chunk;
  double score = 0;       // BM25 weight
  double confidence = 0;  // 0..1: how well the passage covers the query's terms (idf-weighted)
                          // Words the index has never seen lower it (names like "Netflix"
                          // most); below ~0.35 the knowledge base most likely has no answer.
};

struct IndexOptions {
  // Memory for recent retrieval results: a question asked again with the same context, access
  // tags and limit, while the index is unchanged, is answered from memory without searching. Half
  // holds the results (question, context and passage ids), half the decoded chunks. 0 = off.
  size_t cache_bytes = 8 << 20;
  Counter* cache_hits = nullptr;    // counted when set; must outlive the index
  Counter* cache_misses = nullptr;  // (searches while the cache is on)
};

// Thread-safety: Retrieve is thread-safe and may run concurrently on many threads; Ingest is
// serialised internally and readers see its result atomically once it commits.
class KnowledgeIndex {
 public:
  // Opens (creating if missing) the index in `directory`. A directory that holds something else,
  // or a corrupt index, gives an error status (Corruption, IoError, FailedPrecondition).
  static Result<std::unique_ptr<KnowledgeIndex>> Open(const std::string& directory,
                                                      const IndexOptions& options = {});
  virtual ~KnowledgeIndex() = default;

  // Brings the index in line with the sources: indexes new and changed files, removes chunks of
  // files that are gone (or whose source was removed from the list), commits once. A file is
  // also re-indexed when the chunk options or its source's tags/url_base change. A source whose
  // path cannot be listed keeps its chunks (and is reported in `errors`). Unavailable when
  // another writer (e.g. a second process) holds the index's lock. Blocks for the whole run:
  // call it off the io threads.
  virtual Result<IngestReport> Ingest(const std::vector<SourceSpec>& sources,
                                      const ChunkOptions& options) = 0;

  // Up to `limit` passages, best first, visible under `access`. Any text is accepted (quotes,
  // operators, invalid UTF-8); an empty question and context give no passages. Cheap enough to
  // call inline (~0.1-0.3 ms on a 10k-chunk index).
  virtual Result<std::vector<Passage>> Retrieve(const RetrievalQuery& query,
                                                const AccessFilter& access, size_t limit) = 0;

  // Chunks / files in the index; 0 when it cannot be read.
  virtual size_t ChunkCount() = 0;
  virtual size_t FileCount() = 0;
};

}  // namespace parley::knowledge
