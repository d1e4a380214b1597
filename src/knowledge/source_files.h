#pragma once
// Internal to the knowledge module: finding a source's files on disk, reading them, hashing.
// Thread-safety: stateless functions; safe to call concurrently.

#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace parley::knowledge::internal {

struct SourceFile {
  std::string path;      // path to open
  std::string relative;  // '/'-separated path relative to the source root (the file name for a
                         // single-file source)
  std::string display;   // the source path joined with `relative` (the source path for a file)
};

// The canonical absolute form of a source path (its identity in the index); the path as given
// when it cannot be resolved.
std::string SourceIdentity(const std::string& path);

// True for the extensions the knowledge base reads: .md .markdown .txt .html .htm .xhtml.
bool IsIngestibleFile(std::string_view path);

// Lists the ingestible files under `root` (or `root` itself when it is a file), sorted by relative
// path. Hidden files and directories (".git") are skipped; directory symlinks are not followed.
// Problems (a missing root, an unreadable directory) are appended to `errors`; `root_ok` is false
// when the root itself could not be listed.
std::vector<SourceFile> ListSourceFiles(const std::string& root, std::vector<std::string>& errors,
                                        bool& root_ok);

// Reads a whole file; IoError when it cannot be read, ResourceExhausted above `max_bytes`.
Result<std::string> ReadWholeFile(const std::string& path, size_t max_bytes);

// Lowercase hex SHA-256 of `data`.
std::string Sha256Hex(std::string_view data);

}  // namespace parley::knowledge::internal
