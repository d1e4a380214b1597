// Heading-aware chunking: blocks are grouped by heading path, and each section is packed into
// chunks near the target size, cutting only between blocks (or between sentences of one overlong
// paragraph). Code blocks and table rows are never cut.

#include <algorithm>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "core/utf8.h"
#include "knowledge/document.h"
#include "knowledge/knowledge.h"

namespace parley::knowledge {

std::string Chunk::Section() const {
  std::string out;
  for (size_t i = 0; i < heading_path.size(); ++i) {
    if (i > 0) out += " > ";
    out += heading_path[i];
  }
  return out;
}

Citation Chunk::ToCitation() const {
  Citation c;
  c.title = title;
  c.source = source;
  c.section = Section();
  c.url = url;
  return c;
}

namespace internal {
namespace {

bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

std::string_view Trim(std::string_view s) {
  while (!s.empty() && IsSpace(s.front())) s.remove_prefix(1);
  while (!s.empty() && IsSpace(s.back())) s.remove_suffix(1);
  return s;
}

// Cuts `s` (longer than `max`) into pieces of at most `max` bytes, preferring whitespace and
// never cutting inside a UTF-8 sequence.
void HardSplit(std::string_view s, size_t max, std::vector<std::string>& out) {
  while (s.size() > max) {
    size_t cut = max;
    size_t space = s.rfind(' ', max);
    if (space != std::string_view::npos && space > max / 2) {
      cut = space;
    } else {
      cut = std::max<size_t>(Utf8CutPoint(s, max), 1);  // at least one byte: always progress
    }
    std::string_view piece = Trim(s.substr(0, cut));
    if (!piece.empty()) out.emplace_back(piece);
    s.remove_prefix(cut);
    s = Trim(s);
  }
  if (!Trim(s).empty()) out.emplace_back(Trim(s));
}

// Splits an overlong paragraph at sentence ends (". ", "! ", "? ") and line breaks into pieces
// near `target` and never above `max`.
std::vector<std::string> SplitLongText(std::string_view text, size_t target, size_t max) {
  std::vector<std::string_view> sentences;
  size_t start = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    bool end = c == '\n' ||
               ((c == '.' || c == '!' || c == '?') && i + 1 < text.size() && IsSpace(text[i + 1]));
    if (end) {
      sentences.push_back(text.substr(start, i + 1 - start));
      start = i + 1;
    }
  }
  if (start < text.size()) sentences.push_back(text.substr(start));

  std::vector<std::string> pieces;
  std::string cur;
  for (std::string_view sentence : sentences) {
    if (!cur.empty() && cur.size() + sentence.size() > target) {
      if (!Trim(cur).empty()) pieces.emplace_back(Trim(cur));
      cur.clear();
    }
    if (sentence.size() > max) {
      std::vector<std::string> parts;
      HardSplit(sentence, max, parts);
      for (size_t k = 0; k + 1 < parts.size(); ++k) pieces.push_back(std::move(parts[k]));
      if (!parts.empty()) cur = std::move(parts.back());
      continue;
    }
    cur += sentence;
  }
  if (!Trim(cur).empty()) pieces.emplace_back(Trim(cur));
  return pieces;
}

struct Heading {
  int level;
  std::string text;
  std::string anchor;
};

class SectionPacker {
 public:
  SectionPacker(const ParsedDocument& doc, std::string_view source, const ChunkOptions& options,
                std::vector<Chunk>& out)
      : source_(source), out_(out) {
    target_ = options.target_chars > 0 ? options.target_chars : 1;
    max_ = options.max_chars > target_ ? options.max_chars : target_;
    title_ = doc.title;
    if (title_.empty()) {
      size_t slash = source.find_last_of("/\\");
      title_ = std::string(slash == std::string_view::npos ? source : source.substr(slash + 1));
    }
  }

  // Packs one section's blocks (no headings among them) under `path`.
  void Pack(const std::vector<const Block*>& blocks, const std::vector<Heading>& path) {
    if (blocks.empty()) return;
    path_.clear();
    anchor_.clear();
    for (const auto& h : path) path_.push_back(h.text);
    for (size_t k = path.size(); k-- > 0;) {  // deepest heading with an anchor
      if (!path[k].anchor.empty()) {
        anchor_ = path[k].anchor;
        break;
      }
    }
    std::string cur;
    const Block* prev = nullptr;
    for (const Block* b : blocks) {
      if (b->kind == BlockKind::kTableRow && b->header) table_headers_[b->table] = b->text;
      std::vector<std::string> pieces;
      if ((b->kind == BlockKind::kParagraph || b->kind == BlockKind::kListItem) &&
          b->text.size() > max_) {
        pieces = SplitLongText(b->text, target_, max_);
      } else {
        pieces.push_back(b->text);
      }
      for (size_t k = 0; k < pieces.size(); ++k) {
        const std::string& piece = pieces[k];
        std::string_view sep = cur.empty() ? "" : (k == 0 && Tight(prev, b) ? "\n" : "\n\n");
        const size_t combined = cur.size() + sep.size() + piece.size();
        if (!cur.empty() && combined > target_) {
          const bool tiny = cur.size() < target_ / 4 && combined <= max_;
          if (!tiny) {
            Emit(cur);
            cur.clear();
            sep = "";
            // A table cut in two: the continuation starts with the header row again.
            if (b->kind == BlockKind::kTableRow && !b->header && prev != nullptr &&
                prev->kind == BlockKind::kTableRow && prev->table == b->table) {
              auto it = table_headers_.find(b->table);
              if (it != table_headers_.end() && it->second.size() + 1 + piece.size() <= max_) {
                cur = it->second;
                sep = "\n";
              }
            }
          }
        }
        cur += sep;
        cur += piece;
      }
      prev = b;
    }
    Emit(cur);
  }

 private:
  // Rows of one table and items of one list are joined by a single newline.
  static bool Tight(const Block* prev, const Block* b) {
    if (prev == nullptr) return false;
    if (prev->kind == BlockKind::kTableRow && b->kind == BlockKind::kTableRow) {
      return prev->table == b->table;
    }
    return prev->kind == BlockKind::kListItem && b->kind == BlockKind::kListItem;
  }

  void Emit(const std::string& text) {
    std::string_view t = Trim(text);
    if (t.empty()) return;
    Chunk c;
    c.title = title_;
    c.source = std::string(source_);
    c.heading_path = path_;
    c.anchor = anchor_;
    c.text = std::string(t);
    out_.push_back(std::move(c));
  }

  std::string_view source_;
  std::vector<Chunk>& out_;
  size_t target_ = 0;
  size_t max_ = 0;
  std::string title_;
  std::vector<std::string> path_;
  std::string anchor_;
  std::map<int, std::string> table_headers_;
};

}  // namespace

std::vector<Chunk> ChunkBlocks(const ParsedDocument& document, std::string_view source,
                               const ChunkOptions& options) {
  std::vector<Chunk> chunks;
  SectionPacker packer(document, source, options, chunks);
  std::vector<Heading> path;
  std::vector<const Block*> section;
  for (const Block& b : document.blocks) {
    if (b.kind != BlockKind::kHeading) {
      section.push_back(&b);
      continue;
    }
    packer.Pack(section, path);
    section.clear();
    while (!path.empty() && path.back().level >= b.level) path.pop_back();
    path.push_back(Heading{b.level, b.text, b.anchor});
  }
  packer.Pack(section, path);
  return chunks;
}

}  // namespace internal

std::vector<Chunk> ChunkDocument(std::string_view relative_path, std::string_view content,
                                 const ChunkOptions& options) {
  const std::string ext = internal::LowercaseExtension(relative_path);
  internal::ParsedDocument doc;
  if (ext == "md" || ext == "markdown") {
    doc = internal::ParseMarkdown(content);
  } else if (ext == "html" || ext == "htm" || ext == "xhtml") {
    doc = internal::ParseHtml(content);
  } else {
    doc = internal::ParsePlainText(content);
  }
  return internal::ChunkBlocks(doc, relative_path, options);
}

}  // namespace parley::knowledge
