#pragma once
// Internal to the knowledge module (and its tests): the block model that the Markdown, HTML and
// plain-text readers produce and the chunker consumes. Not part of the public API.
// Thread-safety: pure functions over values; safe to call concurrently.

#include <string>
#include <string_view>
#include <vector>

#include "knowledge/knowledge.h"

namespace parley::knowledge::internal {

enum class BlockKind {
  kHeading,    // `level` 1..6, `text` the heading text, `anchor` its id or slug
  kParagraph,  // prose; may be split at sentence boundaries when longer than max_chars
  kListItem,   // one list item ("- text"); split like a paragraph when too long
  kCode,       // a code block (Markdown fence included); never split
  kTableRow,   // one table row ("a | b | c"); never split
};

struct Block {
  BlockKind kind = BlockKind::kParagraph;
  int level = 0;  // headings only
  std::string text;
  std::string anchor;   // headings only; may be empty
  int table = -1;       // table rows: which table of the document (0, 1, ...)
  bool header = false;  // table rows: the table's header row (repeated when a table is split)
};

struct ParsedDocument {
  std::string title;  // <title>, first h1, first "# " heading; empty when none
  std::vector<Block> blocks;
};

// Tolerant HTML reader: never fails, never loops, whatever the input. Drops scripts, styles,
// navigation, headers/footers, asides, forms controls and generated-doc navigation (DocBook
// navheader/navfooter, tables of contents, breadcrumbs, Sphinx sidebars and header links).
ParsedDocument ParseHtml(std::string_view html);

// CommonMark-ish Markdown reader: ATX and setext headings (with GitHub-style slug anchors, or an
// explicit trailing {#id}), fenced code (``` and ~~~), pipe tables, lists, paragraphs, YAML front
// matter skipped.
ParsedDocument ParseMarkdown(std::string_view markdown);

// Plain text: paragraphs separated by blank lines; no headings, no title.
ParsedDocument ParsePlainText(std::string_view text);

// Groups blocks into chunks by heading path, cutting near options.target_chars at block
// boundaries (see ChunkDocument). `title` and `source` are copied into every chunk; url is left
// empty (the index fills it from the source's url_base).
std::vector<Chunk> ChunkBlocks(const ParsedDocument& document, std::string_view source,
                               const ChunkOptions& options);

// GitHub's heading anchor: lowercase, punctuation other than '-' and '_' removed, spaces to '-'.
// Non-ASCII letters are kept (lowercased when ASCII only). Duplicate handling is the caller's.
std::string GithubSlug(std::string_view heading);

// Decodes HTML character references (named, decimal, hex). &nbsp; becomes a plain space;
// unknown names are left as they are; invalid code points become U+FFFD.
std::string DecodeEntities(std::string_view text);

// Appends the UTF-8 encoding of `code_point` (U+FFFD for surrogates and values > U+10FFFF).
void AppendUtf8(std::string& out, unsigned code_point);

// The lowercase file extension of `path` without the dot ("md"), or empty.
std::string LowercaseExtension(std::string_view path);

}  // namespace parley::knowledge::internal
