// Markdown and plain-text readers: a line-oriented subset of CommonMark/GFM that is enough to find
// headings, fenced code, tables, list items and paragraphs. Inline markup is kept as written in
// block text (chunks are "Markdown-ish"); heading text is cleaned for the heading path and slug.

#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "knowledge/document.h"

namespace parley::knowledge::internal {
namespace {

bool IsBlank(std::string_view s) {
  for (char c : s) {
    if (c != ' ' && c != '\t' && c != '\r' && c != '\f' && c != '\v') return false;
  }
  return true;
}

std::string_view TrimRight(std::string_view s) {
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) {
    s.remove_suffix(1);
  }
  return s;
}

std::string_view TrimBoth(std::string_view s) {
  s = TrimRight(s);
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  return s;
}

// Column width of the leading whitespace (tab = 4) and the rest of the line.
size_t Indent(std::string_view line, std::string_view* rest) {
  size_t width = 0;
  size_t i = 0;
  while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) {
    width += line[i] == '\t' ? 4 : 1;
    ++i;
  }
  if (rest != nullptr) *rest = line.substr(i);
  return width;
}

std::vector<std::string_view> SplitLines(std::string_view text) {
  std::vector<std::string_view> lines;
  size_t start = 0;
  while (start <= text.size()) {
    size_t nl = text.find('\n', start);
    if (nl == std::string_view::npos) {
      if (start < text.size()) lines.push_back(text.substr(start));
      break;
    }
    std::string_view line = text.substr(start, nl - start);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    lines.push_back(line);
    start = nl + 1;
  }
  return lines;
}

std::string_view StripBom(std::string_view text) {
  if (text.size() >= 3 && static_cast<unsigned char>(text[0]) == 0xEF &&
      static_cast<unsigned char>(text[1]) == 0xBB && static_cast<unsigned char>(text[2]) == 0xBF) {
    text.remove_prefix(3);
  }
  return text;
}

// "```lang" / "~~~" (indent <= 3): returns the fence char and length, or 0.
size_t FenceLength(std::string_view line, char* fence_char) {
  std::string_view rest;
  if (Indent(line, &rest) > 3 || rest.size() < 3) return 0;
  char c = rest[0];
  if (c != '`' && c != '~') return 0;
  size_t len = 0;
  while (len < rest.size() && rest[len] == c) ++len;
  if (len < 3) return 0;
  if (c == '`' && rest.substr(len).find('`') != std::string_view::npos) return 0;  // inline code
  *fence_char = c;
  return len;
}

bool IsClosingFence(std::string_view line, char fence_char, size_t fence_len) {
  std::string_view rest;
  if (Indent(line, &rest) > 3) return false;
  size_t len = 0;
  while (len < rest.size() && rest[len] == fence_char) ++len;
  return len >= fence_len && IsBlank(rest.substr(len));
}

// "## Heading ##" -> level 2 and "Heading"; 0 when not an ATX heading.
int AtxHeading(std::string_view line, std::string_view* text) {
  std::string_view rest;
  if (Indent(line, &rest) > 3) return 0;
  int level = 0;
  while (static_cast<size_t>(level) < rest.size() && rest[level] == '#') ++level;
  if (level < 1 || level > 6) return 0;
  if (static_cast<size_t>(level) < rest.size() && rest[level] != ' ' && rest[level] != '\t') {
    return 0;
  }
  std::string_view t = TrimBoth(rest.substr(level));
  // Optional closing sequence of '#'s preceded by a space.
  size_t end = t.size();
  while (end > 0 && t[end - 1] == '#') --end;
  if (end == 0) {
    t = std::string_view();
  } else if (end < t.size() && (t[end - 1] == ' ' || t[end - 1] == '\t')) {
    t = TrimBoth(t.substr(0, end));
  }
  *text = t;
  return level;
}

// "====" -> 1, "----" -> 2 (setext underline), else 0.
int SetextLevel(std::string_view line) {
  std::string_view rest;
  if (Indent(line, &rest) > 3) return 0;
  rest = TrimRight(rest);
  if (rest.empty()) return 0;
  char c = rest[0];
  if (c != '=' && c != '-') return 0;
  for (char d : rest) {
    if (d != c) return 0;
  }
  return c == '=' ? 1 : 2;
}

// "---", "***", "___" (with optional spaces): a thematic break.
bool IsThematicBreak(std::string_view line) {
  std::string_view rest;
  if (Indent(line, &rest) > 3 || rest.empty()) return false;
  char c = rest[0];
  if (c != '-' && c != '*' && c != '_') return false;
  int count = 0;
  for (char d : rest) {
    if (d == c) {
      ++count;
    } else if (d != ' ' && d != '\t') {
      return false;
    }
  }
  return count >= 3;
}

// "- item", "* item", "+ item", "1. item", "1) item".
bool IsListItemStart(std::string_view line) {
  std::string_view rest;
  Indent(line, &rest);
  if (rest.size() >= 2 && (rest[0] == '-' || rest[0] == '*' || rest[0] == '+') &&
      (rest[1] == ' ' || rest[1] == '\t')) {
    return true;
  }
  size_t digits = 0;
  while (digits < rest.size() && digits < 10 && rest[digits] >= '0' && rest[digits] <= '9') {
    ++digits;
  }
  return digits > 0 && digits < 10 && digits + 1 < rest.size() &&
         (rest[digits] == '.' || rest[digits] == ')') &&
         (rest[digits + 1] == ' ' || rest[digits + 1] == '\t');
}

// A GFM table delimiter row: "| --- | :---: |" or "---|---" (a pipe is required).
bool IsTableDelimiter(std::string_view line) {
  std::string_view t = TrimBoth(line);
  if (t.empty()) return false;
  bool dash = false;
  bool pipe = false;
  for (char c : t) {
    if (c == '-') {
      dash = true;
    } else if (c == '|') {
      pipe = true;
    } else if (c != ':' && c != ' ' && c != '\t') {
      return false;
    }
  }
  return dash && pipe;
}

bool StartsWithPipe(std::string_view line) {
  std::string_view rest;
  return Indent(line, &rest) <= 3 && !rest.empty() && rest[0] == '|';
}

// Heading text as rendered: inline code ticks, emphasis markers and link targets removed.
std::string CleanHeading(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (c == '`') continue;
    if (c == '*') continue;
    if (c == '_' && (i + 1 < text.size() && text[i + 1] == '_')) {  // "__bold__"
      ++i;
      continue;
    }
    if (c == '!' && i + 1 < text.size() && text[i + 1] == '[') continue;  // image alt text
    if (c == '[') {
      size_t close = text.find(']', i + 1);
      if (close != std::string_view::npos && close + 1 < text.size() && text[close + 1] == '(') {
        size_t paren = text.find(')', close + 2);
        if (paren != std::string_view::npos) {
          out.append(text.substr(i + 1, close - i - 1));
          i = paren;
          continue;
        }
      }
    }
    if (c == '\\' && i + 1 < text.size()) {  // backslash escape
      out.push_back(text[++i]);
      continue;
    }
    out.push_back(c);
  }
  return std::string(TrimBoth(out));
}

// Removes an explicit "{#id}" at the end of a heading and returns the id.
std::string TakeExplicitId(std::string& heading) {
  std::string_view t = TrimRight(heading);
  if (t.size() < 4 || t.back() != '}') return "";
  size_t open = t.rfind("{#");
  if (open == std::string_view::npos) return "";
  std::string id(t.substr(open + 2, t.size() - open - 3));
  if (id.empty() || id.find_first_of(" \t{}") != std::string::npos) return "";
  heading = std::string(TrimBoth(t.substr(0, open)));
  return id;
}

// Decodes one UTF-8 sequence at s[i]; advances i. Invalid bytes decode as themselves (Latin-1).
unsigned NextCodePoint(std::string_view s, size_t& i) {
  unsigned char c = static_cast<unsigned char>(s[i]);
  int extra = c >= 0xF0 ? 3 : c >= 0xE0 ? 2 : c >= 0xC0 ? 1 : 0;
  if (extra == 0 || i + static_cast<size_t>(extra) >= s.size()) {
    ++i;
    return c;
  }
  unsigned cp = c & (0x3F >> extra);
  for (int k = 1; k <= extra; ++k) {
    unsigned char d = static_cast<unsigned char>(s[i + k]);
    if ((d & 0xC0) != 0x80) {
      ++i;
      return c;
    }
    cp = (cp << 6) | (d & 0x3F);
  }
  i += extra + 1;
  return cp;
}

bool IsUnicodePunctuation(unsigned cp) {
  if (cp >= 0x2000 && cp <= 0x206F) return true;  // general punctuation
  if (cp >= 0x3000 && cp <= 0x303F) return true;  // CJK punctuation
  if (cp >= 0xA1 && cp <= 0xBF) {
    return cp != 0xAA && cp != 0xB5 && cp != 0xBA && cp != 0xB2 && cp != 0xB3 && cp != 0xB9 &&
           !(cp >= 0xBC && cp <= 0xBE);
  }
  return cp == 0xD7 || cp == 0xF7;
}

class MarkdownReader {
 public:
  explicit MarkdownReader(std::string_view text) : lines_(SplitLines(StripBom(text))) {}

  ParsedDocument Run() {
    size_t i = SkipFrontMatter();
    const size_t n = lines_.size();
    while (i < n) {
      std::string_view line = lines_[i];
      char fence_char = 0;
      if (size_t fence_len = FenceLength(line, &fence_char); fence_len > 0) {
        FlushParagraph();
        std::string code(TrimRight(line));
        ++i;
        bool closed = false;
        while (i < n) {
          code += '\n';
          code += lines_[i];
          if (IsClosingFence(lines_[i], fence_char, fence_len)) {
            closed = true;
            ++i;
            break;
          }
          ++i;
        }
        if (!closed) code += "\n" + std::string(fence_len, fence_char);  // close it for display
        Emit(BlockKind::kCode, std::move(code));
        in_list_ = false;
        continue;
      }
      if (IsBlank(line)) {
        FlushParagraph();
        ++i;
        continue;
      }
      std::string_view heading_text;
      if (int level = AtxHeading(line, &heading_text); level > 0) {
        FlushParagraph();
        EmitHeading(level, heading_text);
        in_list_ = false;
        ++i;
        continue;
      }
      if (int level = SetextLevel(line);
          level > 0 && paragraph_.size() == 1 && paragraph_kind_ == BlockKind::kParagraph) {
        std::string_view text = TrimBoth(paragraph_[0]);
        paragraph_.clear();
        EmitHeading(level, text);
        in_list_ = false;
        ++i;
        continue;
      }
      if (IsThematicBreak(line)) {
        FlushParagraph();
        in_list_ = false;
        ++i;
        continue;
      }
      const bool delimiter_next =
          i + 1 < n && IsTableDelimiter(lines_[i + 1]) && line.find('|') != std::string_view::npos;
      if (StartsWithPipe(line) || delimiter_next) {
        FlushParagraph();
        i = ReadTable(i, delimiter_next);
        in_list_ = false;
        continue;
      }
      std::string_view rest;
      size_t indent = Indent(line, &rest);
      if (IsListItemStart(line) && indent < 4 + (in_list_ ? 8 : 0)) {
        FlushParagraph();
        paragraph_kind_ = BlockKind::kListItem;
        paragraph_.push_back(TrimRight(line));
        in_list_ = true;
        ++i;
        continue;
      }
      if (indent >= 4 && paragraph_.empty() && !in_list_) {  // indented code block
        std::string code;
        while (i < n && (IsBlank(lines_[i]) || Indent(lines_[i], nullptr) >= 4)) {
          if (!code.empty()) code += '\n';
          code += lines_[i];
          ++i;
        }
        while (!code.empty() && (code.back() == '\n' || code.back() == ' ')) code.pop_back();
        Emit(BlockKind::kCode, std::move(code));
        continue;
      }
      if (paragraph_.empty()) {
        // A paragraph indented under a list item continues the list; anything else ends it.
        paragraph_kind_ = (in_list_ && indent >= 2) ? BlockKind::kListItem : BlockKind::kParagraph;
        if (paragraph_kind_ == BlockKind::kParagraph) in_list_ = false;
      }
      paragraph_.push_back(TrimRight(line));
      ++i;
    }
    FlushParagraph();
    ParsedDocument doc;
    doc.title = title_;
    doc.blocks = std::move(blocks_);
    return doc;
  }

 private:
  size_t SkipFrontMatter() const {
    if (lines_.empty() || TrimRight(lines_[0]) != "---") return 0;
    for (size_t k = 1; k < lines_.size() && k < 200; ++k) {
      std::string_view t = TrimRight(lines_[k]);
      if (t == "---" || t == "...") return k + 1;
    }
    return 0;
  }

  size_t ReadTable(size_t i, bool has_header) {
    const int table = table_count_++;
    const size_t n = lines_.size();
    if (has_header) {
      Block b;
      b.kind = BlockKind::kTableRow;
      b.text = std::string(TrimBoth(lines_[i])) + "\n" + std::string(TrimBoth(lines_[i + 1]));
      b.table = table;
      b.header = true;
      blocks_.push_back(std::move(b));
      i += 2;
    }
    char fence_char = 0;
    while (i < n && !IsBlank(lines_[i]) && lines_[i].find('|') != std::string_view::npos &&
           FenceLength(lines_[i], &fence_char) == 0) {
      Block b;
      b.kind = BlockKind::kTableRow;
      b.text = std::string(TrimBoth(lines_[i]));
      b.table = table;
      blocks_.push_back(std::move(b));
      ++i;
    }
    return i;
  }

  void EmitHeading(int level, std::string_view raw) {
    std::string text = CleanHeading(raw);
    std::string anchor = TakeExplicitId(text);
    if (text.empty()) return;
    if (anchor.empty()) {
      std::string slug = GithubSlug(text);
      int& count = slug_counts_[slug];
      anchor = count == 0 ? slug : slug + "-" + std::to_string(count);
      ++count;
    }
    if (level == 1 && title_.empty()) title_ = text;
    Block b;
    b.kind = BlockKind::kHeading;
    b.level = level;
    b.text = std::move(text);
    b.anchor = std::move(anchor);
    blocks_.push_back(std::move(b));
  }

  void Emit(BlockKind kind, std::string text) {
    Block b;
    b.kind = kind;
    b.text = std::move(text);
    blocks_.push_back(std::move(b));
  }

  void FlushParagraph() {
    if (paragraph_.empty()) return;
    std::string text;
    for (size_t k = 0; k < paragraph_.size(); ++k) {
      if (k > 0) text += '\n';
      text += paragraph_[k];
    }
    paragraph_.clear();
    // Paragraph text loses its common indentation; list items keep theirs (nesting).
    if (paragraph_kind_ == BlockKind::kParagraph) text = std::string(TrimBoth(text));
    Emit(paragraph_kind_, std::move(text));
    paragraph_kind_ = BlockKind::kParagraph;
  }

  std::vector<std::string_view> lines_;
  std::vector<Block> blocks_;
  std::vector<std::string_view> paragraph_;
  BlockKind paragraph_kind_ = BlockKind::kParagraph;
  bool in_list_ = false;
  std::string title_;
  std::map<std::string, int> slug_counts_;
  int table_count_ = 0;
};

}  // namespace

std::string GithubSlug(std::string_view heading) {
  std::string out;
  size_t i = 0;
  while (i < heading.size()) {
    unsigned char c = static_cast<unsigned char>(heading[i]);
    if (c < 0x80) {
      ++i;
      if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_') {
        out.push_back(static_cast<char>(c));
      } else if (c >= 'A' && c <= 'Z') {
        out.push_back(static_cast<char>(c - 'A' + 'a'));
      } else if (c == ' ') {
        out.push_back('-');
      }
      continue;
    }
    size_t start = i;
    unsigned cp = NextCodePoint(heading, i);
    if (IsUnicodePunctuation(cp)) continue;
    out.append(heading.substr(start, i - start));
  }
  return out;
}

std::string LowercaseExtension(std::string_view path) {
  size_t slash = path.find_last_of("/\\");
  std::string_view name = slash == std::string_view::npos ? path : path.substr(slash + 1);
  size_t dot = name.rfind('.');
  if (dot == std::string_view::npos || dot == 0) return "";
  std::string ext(name.substr(dot + 1));
  for (char& c : ext) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return ext;
}

ParsedDocument ParseMarkdown(std::string_view markdown) { return MarkdownReader(markdown).Run(); }

ParsedDocument ParsePlainText(std::string_view text) {
  ParsedDocument doc;
  std::vector<std::string_view> lines = SplitLines(StripBom(text));
  std::string paragraph;
  auto flush = [&] {
    std::string_view t = TrimBoth(paragraph);
    if (!t.empty()) {
      Block b;
      b.kind = BlockKind::kParagraph;
      b.text = std::string(t);
      doc.blocks.push_back(std::move(b));
    }
    paragraph.clear();
  };
  for (std::string_view line : lines) {
    if (IsBlank(line)) {
      flush();
      continue;
    }
    if (!paragraph.empty()) paragraph += '\n';
    paragraph += TrimRight(line);
  }
  flush();
  return doc;
}

}  // namespace parley::knowledge::internal
