// A small, tolerant HTML reader: tokenizer plus a stack of open elements with the implied-end-tag
// rules that matter for text extraction. It is not a conforming HTML5 parser; it aims to turn real
// documentation pages (hand-written, DocBook, Sphinx, static-site generators) into headings,
// paragraphs, list items, code blocks and table rows, and to survive any input: every step of the
// tokenizer consumes at least one byte, the element stack is bounded, and there is no recursion.

#include <algorithm>
#include <array>
#include <cstring>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "knowledge/document.h"

namespace parley::knowledge::internal {
namespace {

constexpr size_t kMaxStackDepth = 1024;
constexpr size_t kMaxAttributes = 64;
constexpr size_t kMaxAnchorSearch = 32;  // ancestors examined for a heading's container id

bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f'; }
bool IsAsciiAlpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
bool IsNameChar(char c) {
  return IsAsciiAlpha(c) || (c >= '0' && c <= '9') || c == '-' || c == ':' || c == '_';
}
char ToLowerAscii(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

std::string ToLower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = ToLowerAscii(c);
  return out;
}

std::string_view Trim(std::string_view s) {
  size_t b = 0;
  size_t e = s.size();
  while (b < e && IsSpace(s[b])) ++b;
  while (e > b && IsSpace(s[e - 1])) --e;
  return s.substr(b, e - b);
}

// Case-insensitive search for an ASCII `needle` (lowercase) in `hay` from `from`.
size_t FindCaseInsensitive(std::string_view hay, std::string_view needle, size_t from) {
  if (needle.empty()) return from;
  for (size_t i = from; i + needle.size() <= hay.size(); ++i) {
    size_t k = 0;
    while (k < needle.size() && ToLowerAscii(hay[i + k]) == needle[k]) ++k;
    if (k == needle.size()) return i;
  }
  return std::string_view::npos;
}

bool OneOf(std::string_view name, std::initializer_list<std::string_view> names) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

bool IsVoidElement(std::string_view n) {
  return OneOf(n, {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
                   "param", "source", "track", "wbr", "keygen", "basefont", "frame"});
}

// Elements whose content is raw text: skipped up to their end tag, never parsed as markup.
bool IsRawTextSkipped(std::string_view n) {
  return OneOf(
      n, {"script", "style", "textarea", "xmp", "noembed", "noframes", "iframe", "plaintext"});
}

bool IsBlockElement(std::string_view n) {
  return OneOf(n, {"p",          "div",     "ul",      "ol",     "dl",       "dt",     "dd",
                   "blockquote", "section", "article", "main",   "body",     "figure", "figcaption",
                   "caption",    "address", "center",  "form",   "fieldset", "legend", "details",
                   "summary",    "dialog",  "header",  "footer", "hgroup",   "html",   "menu",
                   "td",         "th",      "tbody",   "thead",  "tfoot"});
}

// Start tags that close an open <p> (HTML's "close a p element in button scope").
bool ClosesParagraph(std::string_view n) {
  return OneOf(n, {"address",  "article",    "aside",  "blockquote", "details", "div",    "dl",
                   "fieldset", "figcaption", "figure", "footer",     "form",    "h1",     "h2",
                   "h3",       "h4",         "h5",     "h6",         "header",  "hgroup", "hr",
                   "main",     "menu",       "nav",    "ol",         "p",       "pre",    "section",
                   "table",    "ul",         "li",     "dd",         "dt"});
}

int HeadingLevel(std::string_view n) {
  if (n.size() == 2 && n[0] == 'h' && n[1] >= '1' && n[1] <= '6') return n[1] - '0';
  return 0;
}

struct Attribute {
  std::string name;
  std::string value;
};

const std::string* FindAttribute(const std::vector<Attribute>& attrs, std::string_view name) {
  for (const auto& a : attrs) {
    if (a.name == name) return &a.value;
  }
  return nullptr;
}

bool HasClassToken(const std::vector<Attribute>& attrs,
                   std::initializer_list<std::string_view> tokens) {
  const std::string* cls = FindAttribute(attrs, "class");
  if (cls == nullptr) return false;
  std::string lowered = ToLower(*cls);
  std::string_view rest = lowered;
  while (!rest.empty()) {
    size_t b = 0;
    while (b < rest.size() && IsSpace(rest[b])) ++b;
    size_t e = b;
    while (e < rest.size() && !IsSpace(rest[e])) ++e;
    if (e > b && OneOf(rest.substr(b, e - b), tokens)) return true;
    rest.remove_prefix(e);
  }
  return false;
}

enum class Role {
  kNone,
  kSkip,
  kHeading,
  kPre,
  kTable,
  kNestedTable,
  kRow,
  kCell,
  kListItem,
  kInlineCode,
  kBlock
};

struct Element {
  std::string name;
  std::string id;
  Role role = Role::kNone;
  bool heading_seen = false;  // a heading has started inside this element
  bool admonition = false;    // a note/tip/warning box: its heading is a label, not a section
};

class HtmlReader {
 public:
  explicit HtmlReader(std::string_view in) : in_(in) {}

  ParsedDocument Run() {
    const size_t n = in_.size();
    size_t i = 0;
    while (i < n) {
      size_t lt = in_.find('<', i);
      if (lt == std::string_view::npos) {
        OnText(in_.substr(i));
        break;
      }
      if (lt > i) OnText(in_.substr(i, lt - i));
      i = lt;
      if (in_.compare(i, 4, "<!--") == 0) {
        size_t end = in_.find("-->", i + 4);
        i = end == std::string_view::npos ? n : end + 3;
        continue;
      }
      if (in_.compare(i, 9, "<![CDATA[") == 0) {
        size_t end = in_.find("]]>", i + 9);
        size_t stop = end == std::string_view::npos ? n : end;
        OnText(in_.substr(i + 9, stop - (i + 9)), /*decode=*/false);
        i = end == std::string_view::npos ? n : end + 3;
        continue;
      }
      if (i + 1 < n && (in_[i + 1] == '!' || in_[i + 1] == '?')) {  // doctype, <?xml ...?>
        size_t end = in_.find('>', i);
        i = end == std::string_view::npos ? n : end + 1;
        continue;
      }
      const bool end_tag = i + 1 < n && in_[i + 1] == '/';
      const size_t name_start = i + (end_tag ? 2 : 1);
      if (name_start >= n || !IsAsciiAlpha(in_[name_start])) {
        OnText("<");  // a lone '<' is text
        i += 1;
        continue;
      }
      size_t j = name_start;
      while (j < n && IsNameChar(in_[j])) ++j;
      std::string name = ToLower(in_.substr(name_start, j - name_start));
      std::vector<Attribute> attrs;
      bool self_closing = false;
      j = ParseAttributes(j, attrs, self_closing);
      if (end_tag) {
        OnEndTag(name);
        i = j;
        continue;
      }
      if (IsRawTextSkipped(name) && !self_closing) {
        i = SkipRawText(name, j, nullptr);
        continue;
      }
      if (name == "title" && !self_closing) {
        std::string title;
        i = SkipRawText(name, j, &title);
        if (title_.empty()) title_ = Collapse(DecodeEntities(title));
        continue;
      }
      OnStartTag(name, attrs, self_closing);
      i = j;
    }
    PopTo(0);
    FlushBuffer();
    ParsedDocument doc;
    doc.title = !title_.empty() ? title_ : first_h1_;
    doc.blocks = std::move(blocks_);
    return doc;
  }

 private:
  // Parses attributes after the tag name at `j`; returns the position after '>' (or the end).
  size_t ParseAttributes(size_t j, std::vector<Attribute>& attrs, bool& self_closing) {
    const size_t n = in_.size();
    while (j < n) {
      char c = in_[j];
      if (c == '>') return j + 1;
      if (IsSpace(c)) {
        ++j;
        continue;
      }
      if (c == '/') {
        if (j + 1 < n && in_[j + 1] == '>') {
          self_closing = true;
          return j + 2;
        }
        ++j;
        continue;
      }
      size_t name_start = j;
      while (j < n && !IsSpace(in_[j]) && in_[j] != '>' && in_[j] != '=' &&
             !(in_[j] == '/' && j + 1 < n && in_[j + 1] == '>')) {
        ++j;
      }
      if (j == name_start) {  // e.g. a stray '='
        ++j;
        continue;
      }
      Attribute attr;
      attr.name = ToLower(in_.substr(name_start, j - name_start));
      while (j < n && IsSpace(in_[j])) ++j;
      if (j < n && in_[j] == '=') {
        ++j;
        while (j < n && IsSpace(in_[j])) ++j;
        if (j < n && (in_[j] == '"' || in_[j] == '\'')) {
          char quote = in_[j];
          size_t close = in_.find(quote, j + 1);
          size_t stop = close == std::string_view::npos ? n : close;
          attr.value = DecodeEntities(in_.substr(j + 1, stop - (j + 1)));
          j = close == std::string_view::npos ? n : close + 1;
        } else {
          size_t value_start = j;
          while (j < n && !IsSpace(in_[j]) && in_[j] != '>') ++j;
          attr.value = DecodeEntities(in_.substr(value_start, j - value_start));
        }
      }
      if (attrs.size() < kMaxAttributes) attrs.push_back(std::move(attr));
    }
    return n;
  }

  // Skips the raw text of <name> starting at `from` up to and including its end tag; returns the
  // position after it (the end of input when it is missing). Stores the raw text when asked.
  size_t SkipRawText(const std::string& name, size_t from, std::string* text) {
    std::string needle = "</" + name;
    size_t end = FindCaseInsensitive(in_, needle, from);
    if (end == std::string_view::npos) {
      if (text != nullptr) *text = std::string(in_.substr(from));
      return in_.size();
    }
    if (text != nullptr) *text = std::string(in_.substr(from, end - from));
    size_t gt = in_.find('>', end);
    return gt == std::string_view::npos ? in_.size() : gt + 1;
  }

  // --- element stack ---------------------------------------------------------------------------

  // Index of the topmost element named one of `names`, searching down from the top and stopping
  // (returning npos) at any element named one of `boundaries`.
  size_t FindOpen(std::initializer_list<std::string_view> names,
                  std::initializer_list<std::string_view> boundaries) const {
    bool any_open = false;
    for (std::string_view n : names) any_open = any_open || IsOpen(n);
    if (!any_open) return std::string::npos;  // the common case: no stack walk
    for (size_t k = stack_.size(); k-- > 0;) {
      if (OneOf(stack_[k].name, names)) return k;
      if (OneOf(stack_[k].name, boundaries)) return std::string::npos;
    }
    return std::string::npos;
  }

  // Closes the elements at stack positions [index, top], innermost first.
  void PopTo(size_t index) {
    while (stack_.size() > index) {
      Element e = std::move(stack_.back());
      stack_.pop_back();
      --open_counts_[e.name];
      Close(e);
    }
  }

  void Push(Element e) {
    ++open_counts_[e.name];
    stack_.push_back(std::move(e));
  }

  bool IsOpen(std::string_view name) const {
    auto it = open_counts_.find(std::string(name));
    return it != open_counts_.end() && it->second > 0;
  }

  void ImplyEndTags(std::string_view name) {
    if (ClosesParagraph(name)) {
      size_t k =
          FindOpen({"p"}, {"table", "td", "th", "caption", "html", "button", "object", "template"});
      if (k != std::string::npos) PopTo(k);
    }
    if (name == "li") {
      size_t k = FindOpen({"li"}, {"ul", "ol", "menu", "table", "td", "th", "html"});
      if (k != std::string::npos) PopTo(k);
    } else if (name == "dt" || name == "dd") {
      size_t k = FindOpen({"dt", "dd"}, {"dl", "table", "td", "th", "html"});
      if (k != std::string::npos) PopTo(k);
    } else if (name == "tr") {
      size_t k = FindOpen({"tr"}, {"table"});
      if (k != std::string::npos) PopTo(k);
    } else if (name == "td" || name == "th") {
      size_t k = FindOpen({"td", "th"}, {"tr", "table"});
      if (k != std::string::npos) PopTo(k);
    } else if (name == "tbody" || name == "thead" || name == "tfoot") {
      size_t k = FindOpen({"tr", "tbody", "thead", "tfoot"}, {"table"});
      if (k != std::string::npos) PopTo(k);
    } else if (HeadingLevel(name) > 0 && !stack_.empty() && HeadingLevel(stack_.back().name) > 0) {
      PopTo(stack_.size() - 1);
    }
  }

  bool InsideAny(std::initializer_list<std::string_view> names) const {
    for (std::string_view n : names) {
      if (IsOpen(n)) return true;
    }
    return false;
  }

  // DocBook/Sphinx/GitHub-style callout boxes.
  static bool IsAdmonition(std::string_view name, const std::vector<Attribute>& attrs) {
    return (name == "div" || name == "aside" || name == "section" || name == "blockquote") &&
           HasClassToken(attrs, {"note", "tip", "warning", "caution", "important", "admonition",
                                 "attention", "danger", "hint", "callout", "alert"});
  }

  bool ShouldSkip(std::string_view name, const std::vector<Attribute>& attrs) const {
    if (OneOf(name, {"nav", "aside", "noscript", "template", "svg", "button", "select", "object",
                     "canvas", "datalist", "map"})) {
      return true;
    }
    // A page-level header/footer is site chrome; one inside an article or section belongs to it.
    if ((name == "header" || name == "footer") && !InsideAny({"article", "main", "section"})) {
      return true;
    }
    if (FindAttribute(attrs, "hidden") != nullptr) return true;
    if (const std::string* v = FindAttribute(attrs, "aria-hidden"); v && ToLower(*v) == "true") {
      return true;
    }
    if (const std::string* role = FindAttribute(attrs, "role")) {
      if (OneOf(ToLower(*role),
                {"navigation", "banner", "contentinfo", "search", "complementary"})) {
        return true;
      }
    }
    if (HasClassToken(attrs, {"navheader", "navfooter", "toc", "breadcrumb", "breadcrumbs",
                              "sphinxsidebar", "headerlink", "navbar", "skip-link", "sr-only",
                              "visually-hidden", "list-of-tables", "list-of-figures",
                              "list-of-examples", "toc-backref", "sidebar"})) {
      return true;
    }
    if (const std::string* id = FindAttribute(attrs, "id")) {
      if (OneOf(ToLower(*id),
                {"toc", "breadcrumbs", "breadcrumb", "sidebar", "navigation", "navbar"})) {
        return true;
      }
    }
    if (name == "table") {
      if (const std::string* summary = FindAttribute(attrs, "summary")) {
        if (ToLower(*summary).rfind("navigation", 0) == 0) return true;
      }
    }
    return false;
  }

  void OnStartTag(const std::string& name, const std::vector<Attribute>& attrs, bool self_closing) {
    if (name == "br") {
      if (skip_depth_ == 0) AppendBreak();
      return;
    }
    if (IsVoidElement(name)) {
      if (name == "hr" && skip_depth_ == 0 && row_depth_ == 0 && heading_level_ == 0) {
        FlushBuffer();
      }
      return;
    }
    ImplyEndTags(name);
    Element e;
    e.name = name;
    if (const std::string* id = FindAttribute(attrs, "id")) e.id = *id;
    if (skip_depth_ == 0 && IsAdmonition(name, attrs)) {
      e.admonition = true;
      ++admonition_depth_;
    }
    if (skip_depth_ > 0) {
      e.role = Role::kNone;  // inside a skipped region: tracked for matching only
    } else if (ShouldSkip(name, attrs)) {
      e.role = Role::kSkip;
      ++skip_depth_;
    } else {
      e.role = Open(name, attrs);
    }
    if (self_closing || stack_.size() >= kMaxStackDepth) {
      Close(e);
    } else {
      Push(std::move(e));
    }
  }

  void OnEndTag(const std::string& name) {
    if (name == "br") {  // </br> is treated as <br>
      if (skip_depth_ == 0) AppendBreak();
      return;
    }
    if (!IsOpen(name)) return;  // an end tag with no open element is ignored
    for (size_t k = stack_.size(); k-- > 0;) {
      if (stack_[k].name == name) {
        PopTo(k);
        return;
      }
    }
  }

  // Runs the effects of an element's start; returns the role its end has to undo.
  Role Open(const std::string& name, const std::vector<Attribute>& attrs) {
    if (int level = HeadingLevel(name); level > 0) {
      if (heading_level_ > 0 || row_depth_ > 0) return Role::kNone;  // treated as inline text
      if (admonition_depth_ > 0) {
        // "Note", "Warning": a label inside the box; the text after the box still belongs to
        // the enclosing section.
        FlushBuffer();
        return Role::kBlock;
      }
      FlushBuffer();
      heading_level_ = level;
      heading_text_.clear();
      heading_id_ = FindAttribute(attrs, "id") ? *FindAttribute(attrs, "id") : std::string();
      heading_inner_anchor_.clear();
      heading_preceding_anchor_ = std::move(pending_anchor_);
      pending_anchor_.clear();
      heading_container_id_.clear();
      // The nearest enclosing section/div/article with an id whose first heading this is
      // (looking at the nearest ancestors only, which bounds the work on pathological input).
      const size_t lowest = stack_.size() > kMaxAnchorSearch ? stack_.size() - kMaxAnchorSearch : 0;
      for (size_t k = stack_.size(); k-- > lowest;) {
        Element& e = stack_[k];
        if (!OneOf(e.name, {"section", "div", "article", "main"})) continue;
        if (!e.heading_seen && !e.id.empty() && heading_container_id_.empty()) {
          heading_container_id_ = e.id;
        }
        e.heading_seen = true;
      }
      return Role::kHeading;
    }
    if (name == "pre" || name == "listing") {
      if (pre_depth_++ == 0) {
        if (row_depth_ == 0 && heading_level_ == 0) FlushBuffer();
        pre_text_.clear();
      }
      return Role::kPre;
    }
    if (name == "table") {
      if (row_depth_ > 0) {
        ++nested_table_depth_;
        AppendSpace();
        return Role::kNestedTable;
      }
      FlushBuffer();
      tables_.push_back(TableState{table_count_++, true});
      return Role::kTable;
    }
    if (name == "tr") {
      if (row_depth_ > 0) {
        AppendSpace();
        return Role::kNone;
      }
      FlushBuffer();
      row_depth_ = 1;
      cells_.clear();
      cell_.clear();
      in_cell_ = false;
      row_has_th_ = false;
      return Role::kRow;
    }
    if (name == "td" || name == "th") {
      if (row_depth_ > 0 && nested_table_depth_ == 0) {
        if (in_cell_) FinishCell();
        in_cell_ = true;
        cell_.clear();
        if (name == "th") row_has_th_ = true;
        return Role::kCell;
      }
      if (row_depth_ > 0) {
        AppendSpace();
        return Role::kNone;
      }
      FlushBuffer();  // a cell outside any row: a plain block
      return Role::kBlock;
    }
    if (name == "li") {
      if (row_depth_ > 0 || heading_level_ > 0) {
        AppendSpace();
        return Role::kNone;
      }
      FlushBuffer();
      ++list_depth_;
      list_item_fresh_ = true;
      return Role::kListItem;
    }
    if (name == "a") {
      const std::string* id = FindAttribute(attrs, "id");
      if (id == nullptr || id->empty()) id = FindAttribute(attrs, "name");
      if (id != nullptr && !id->empty()) {
        if (heading_level_ > 0) {
          if (heading_inner_anchor_.empty()) heading_inner_anchor_ = *id;
        } else {
          pending_anchor_ = *id;
        }
      }
      return Role::kNone;
    }
    if (OneOf(name, {"code", "kbd", "tt", "samp"})) {
      if (pre_depth_ > 0 || heading_level_ > 0) return Role::kNone;
      AppendInline("`");
      return Role::kInlineCode;
    }
    if (IsBlockElement(name)) {
      if (row_depth_ > 0 || heading_level_ > 0) {
        AppendSpace();
      } else {
        FlushBuffer();
      }
      return Role::kBlock;
    }
    return Role::kNone;
  }

  void Close(const Element& e) {
    if (e.admonition) --admonition_depth_;
    switch (e.role) {
      case Role::kNone:
        return;
      case Role::kSkip:
        --skip_depth_;
        return;
      case Role::kHeading:
        FinishHeading();
        return;
      case Role::kPre:
        if (--pre_depth_ == 0) FinishPre();
        return;
      case Role::kTable:
        if (!tables_.empty()) tables_.pop_back();
        FlushBuffer();
        return;
      case Role::kNestedTable:
        --nested_table_depth_;
        AppendSpace();
        return;
      case Role::kRow:
        FinishRow();
        return;
      case Role::kCell:
        if (in_cell_) FinishCell();
        return;
      case Role::kListItem:
        FlushBuffer();
        --list_depth_;
        list_item_fresh_ = false;
        return;
      case Role::kInlineCode:
        AppendInline("`");
        return;
      case Role::kBlock:
        if (row_depth_ > 0 || heading_level_ > 0) {
          AppendSpace();
        } else {
          FlushBuffer();
        }
        return;
    }
  }

  // --- text ------------------------------------------------------------------------------------

  static std::string Collapse(std::string_view text) {
    std::string out;
    AppendCollapsed(out, text);
    return std::string(Trim(out));
  }

  // Appends text with runs of whitespace (including U+00A0 no-break space) as one space.
  static void AppendCollapsed(std::string& out, std::string_view text) {
    for (size_t i = 0; i < text.size(); ++i) {
      const char c = text[i];
      const bool nbsp = c == '\xC2' && i + 1 < text.size() && text[i + 1] == '\xA0';
      if (IsSpace(c) || nbsp) {
        if (nbsp) ++i;
        if (!out.empty() && out.back() != ' ' && out.back() != '\n') out.push_back(' ');
      } else {
        out.push_back(c);
      }
    }
  }

  // The string that inline text currently goes to.
  std::string& Target() {
    if (heading_level_ > 0) return heading_text_;
    if (row_depth_ > 0) return cell_;
    return buffer_;
  }

  void OnText(std::string_view raw, bool decode = true) {
    if (skip_depth_ > 0) return;
    std::string decoded = decode ? DecodeEntities(raw) : std::string(raw);
    if (pre_depth_ > 0) {
      pre_text_ += decoded;
      return;
    }
    std::string& target = Target();
    if (&target == &buffer_ && !Trim(decoded).empty()) pending_anchor_.clear();
    AppendCollapsed(target, decoded);
  }

  void AppendInline(std::string_view s) {
    if (skip_depth_ > 0) return;
    if (pre_depth_ > 0) return;
    Target() += s;
  }

  void AppendSpace() {
    if (pre_depth_ > 0) return;
    std::string& t = Target();
    if (!t.empty() && t.back() != ' ' && t.back() != '\n') t.push_back(' ');
  }

  void AppendBreak() {
    if (pre_depth_ > 0) {
      pre_text_.push_back('\n');
      return;
    }
    if (heading_level_ > 0 || row_depth_ > 0) {
      AppendSpace();
      return;
    }
    while (!buffer_.empty() && buffer_.back() == ' ') buffer_.pop_back();
    if (!buffer_.empty() && buffer_.back() != '\n') buffer_.push_back('\n');
  }

  void Emit(BlockKind kind, std::string text) {
    Block b;
    b.kind = kind;
    b.text = std::move(text);
    blocks_.push_back(std::move(b));
  }

  void FlushBuffer() {
    std::string_view text = Trim(buffer_);
    if (text.empty() || text == "``") {
      buffer_.clear();
      return;
    }
    if (list_depth_ > 0) {
      std::string item(static_cast<size_t>(2 * (list_depth_ - 1)), ' ');
      item += list_item_fresh_ ? "- " : "  ";
      item += text;
      list_item_fresh_ = false;
      Emit(BlockKind::kListItem, std::move(item));
    } else {
      Emit(BlockKind::kParagraph, std::string(text));
    }
    buffer_.clear();
  }

  void FinishHeading() {
    std::string text(Trim(heading_text_));
    const int level = heading_level_;
    heading_level_ = 0;
    heading_text_.clear();
    if (text.empty()) return;
    Block b;
    b.kind = BlockKind::kHeading;
    b.level = level;
    b.text = text;
    if (!heading_id_.empty()) {
      b.anchor = heading_id_;
    } else if (!heading_inner_anchor_.empty()) {
      b.anchor = heading_inner_anchor_;
    } else if (!heading_preceding_anchor_.empty()) {
      b.anchor = heading_preceding_anchor_;
    } else {
      b.anchor = heading_container_id_;
    }
    blocks_.push_back(std::move(b));
    if (level == 1 && first_h1_.empty()) first_h1_ = text;
  }

  void FinishPre() {
    std::string text;
    text.swap(pre_text_);
    // Written with indexes, not front(): GCC 12 at -O3 misreports front() after a move.
    size_t lead = 0;
    if (lead < text.size() && text[lead] == '\n') ++lead;
    if (lead < text.size() && text[lead] == '\r') ++lead;
    text.erase(0, lead);
    while (!text.empty() && IsSpace(text.back())) text.pop_back();
    if (Trim(text).empty()) return;
    if (row_depth_ > 0 || heading_level_ > 0) {
      AppendCollapsed(Target(), text);
      return;
    }
    Emit(BlockKind::kCode, "```\n" + text + "\n```");
  }

  void FinishCell() {
    std::string text(Trim(cell_));
    cells_.push_back(std::move(text));
    cell_.clear();
    in_cell_ = false;
  }

  void FinishRow() {
    if (in_cell_) FinishCell();
    std::string stray(Trim(cell_));  // text directly inside <tr>
    if (!stray.empty()) cells_.push_back(std::move(stray));
    cell_.clear();
    row_depth_ = 0;
    std::string text;  // empty cells (icons, spacers) are left out
    for (const std::string& cell : cells_) {
      if (cell.empty()) continue;
      if (!text.empty()) text += " | ";
      text += cell;
    }
    cells_.clear();
    if (text.empty()) return;
    Block b;
    b.kind = BlockKind::kTableRow;
    b.text = std::move(text);
    if (!tables_.empty()) {
      b.table = tables_.back().id;
      b.header = tables_.back().first_row && row_has_th_;
      tables_.back().first_row = false;
    } else {
      b.table = table_count_++;  // a row outside any table: a table of its own
    }
    blocks_.push_back(std::move(b));
  }

  struct TableState {
    int id;
    bool first_row;
  };

  std::string_view in_;
  std::vector<Element> stack_;
  std::unordered_map<std::string, int> open_counts_;  // elements on stack_ by name
  std::vector<Block> blocks_;
  std::string title_;
  std::string first_h1_;
  int skip_depth_ = 0;
  int admonition_depth_ = 0;

  std::string buffer_;  // inline text of the current paragraph / list item
  int list_depth_ = 0;
  bool list_item_fresh_ = false;  // the next flushed block starts a list item ("- ")
  std::string pending_anchor_;    // an <a id/name> seen since the last text

  int heading_level_ = 0;
  std::string heading_text_;
  std::string heading_id_;
  std::string heading_inner_anchor_;
  std::string heading_preceding_anchor_;
  std::string heading_container_id_;

  int pre_depth_ = 0;
  std::string pre_text_;

  std::vector<TableState> tables_;
  int table_count_ = 0;
  int nested_table_depth_ = 0;
  int row_depth_ = 0;
  bool in_cell_ = false;
  bool row_has_th_ = false;
  std::string cell_;
  std::vector<std::string> cells_;
};

struct NamedEntity {
  const char* name;
  unsigned code_point;
};

// The named references documentation pages actually use; others are left as written.
constexpr NamedEntity kEntities[] = {
    {"amp", '&'},       {"lt", '<'},        {"gt", '>'},       {"quot", '"'},
    {"apos", '\''},     {"nbsp", ' '},      {"copy", 0xA9},    {"reg", 0xAE},
    {"trade", 0x2122},  {"hellip", 0x2026}, {"mdash", 0x2014}, {"ndash", 0x2013},
    {"lsquo", 0x2018},  {"rsquo", 0x2019},  {"sbquo", 0x201A}, {"ldquo", 0x201C},
    {"rdquo", 0x201D},  {"bdquo", 0x201E},  {"laquo", 0xAB},   {"raquo", 0xBB},
    {"lsaquo", 0x2039}, {"rsaquo", 0x203A}, {"bull", 0x2022},  {"middot", 0xB7},
    {"deg", 0xB0},      {"times", 0xD7},    {"divide", 0xF7},  {"plusmn", 0xB1},
    {"euro", 0x20AC},   {"pound", 0xA3},    {"yen", 0xA5},     {"cent", 0xA2},
    {"sect", 0xA7},     {"para", 0xB6},     {"shy", 0xAD},     {"ensp", 0x2002},
    {"emsp", 0x2003},   {"thinsp", 0x2009}, {"zwnj", 0x200C},  {"zwj", 0x200D},
    {"larr", 0x2190},   {"rarr", 0x2192},   {"uarr", 0x2191},  {"darr", 0x2193},
    {"harr", 0x2194},   {"lArr", 0x21D0},   {"rArr", 0x21D2},  {"hArr", 0x21D4},
    {"le", 0x2264},     {"ge", 0x2265},     {"ne", 0x2260},    {"asymp", 0x2248},
    {"infin", 0x221E},  {"minus", 0x2212},  {"micro", 0xB5},   {"frac12", 0xBD},
    {"frac14", 0xBC},   {"frac34", 0xBE},   {"sup1", 0xB9},    {"sup2", 0xB2},
    {"sup3", 0xB3},     {"iexcl", 0xA1},    {"iquest", 0xBF},  {"dagger", 0x2020},
    {"Dagger", 0x2021}, {"prime", 0x2032},  {"Prime", 0x2033}, {"oline", 0x203E},
    {"check", 0x2713},  {"agrave", 0xE0},   {"aacute", 0xE1},  {"acirc", 0xE2},
    {"atilde", 0xE3},   {"auml", 0xE4},     {"aring", 0xE5},   {"aelig", 0xE6},
    {"ccedil", 0xE7},   {"egrave", 0xE8},   {"eacute", 0xE9},  {"ecirc", 0xEA},
    {"euml", 0xEB},     {"igrave", 0xEC},   {"iacute", 0xED},  {"icirc", 0xEE},
    {"iuml", 0xEF},     {"ntilde", 0xF1},   {"ograve", 0xF2},  {"oacute", 0xF3},
    {"ocirc", 0xF4},    {"otilde", 0xF5},   {"ouml", 0xF6},    {"oslash", 0xF8},
    {"ugrave", 0xF9},   {"uacute", 0xFA},   {"ucirc", 0xFB},   {"uuml", 0xFC},
    {"yacute", 0xFD},   {"yuml", 0xFF},     {"szlig", 0xDF},   {"Agrave", 0xC0},
    {"Aacute", 0xC1},   {"Acirc", 0xC2},    {"Auml", 0xC4},    {"Aring", 0xC5},
    {"AElig", 0xC6},    {"Ccedil", 0xC7},   {"Egrave", 0xC8},  {"Eacute", 0xC9},
    {"Ecirc", 0xCA},    {"Ntilde", 0xD1},   {"Oacute", 0xD3},  {"Ouml", 0xD6},
    {"Oslash", 0xD8},   {"Uacute", 0xDA},   {"Uuml", 0xDC},    {"alpha", 0x3B1},
    {"beta", 0x3B2},    {"gamma", 0x3B3},   {"delta", 0x3B4},  {"epsilon", 0x3B5},
    {"lambda", 0x3BB},  {"mu", 0x3BC},      {"pi", 0x3C0},     {"sigma", 0x3C3},
    {"omega", 0x3C9},   {"Delta", 0x394},   {"Omega", 0x3A9},  {"Sigma", 0x3A3},
};

// Entities accepted without the trailing ';' (as browsers do for these legacy names).
bool IsLegacyEntity(std::string_view name) {
  return OneOf(name, {"amp", "lt", "gt", "quot", "nbsp", "copy", "reg"});
}

// Windows-1252 meanings of numeric references 0x80-0x9F, as HTML specifies.
unsigned RemapC1(unsigned cp) {
  static constexpr std::array<unsigned, 32> kC1 = {
      0x20AC, 0x81,   0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160,
      0x2039, 0x0152, 0x8D,   0x017D, 0x8F,   0x90,   0x2018, 0x2019, 0x201C, 0x201D, 0x2022,
      0x2013, 0x2014, 0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0x9D,   0x017E, 0x0178};
  if (cp >= 0x80 && cp <= 0x9F) return kC1[cp - 0x80];
  return cp;
}

bool IsHexDigit(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

}  // namespace

void AppendUtf8(std::string& out, unsigned cp) {
  if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) cp = 0xFFFD;
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

std::string DecodeEntities(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    size_t amp = text.find('&', i);
    if (amp == std::string_view::npos) {
      out.append(text.substr(i));
      break;
    }
    out.append(text.substr(i, amp - i));
    i = amp;
    size_t j = i + 1;
    if (j < n && text[j] == '#') {
      ++j;
      bool hex = j < n && (text[j] == 'x' || text[j] == 'X');
      if (hex) ++j;
      size_t digits_start = j;
      unsigned long value = 0;
      while (j < n && (hex ? IsHexDigit(text[j]) : (text[j] >= '0' && text[j] <= '9'))) {
        if (value <= 0x10FFFF) {
          char c = text[j];
          unsigned d = (c >= '0' && c <= '9') ? static_cast<unsigned>(c - '0')
                                              : static_cast<unsigned>(ToLowerAscii(c) - 'a' + 10);
          value = value * (hex ? 16 : 10) + d;
        }
        ++j;
      }
      if (j == digits_start) {  // "&#" without digits: literal
        out.push_back('&');
        ++i;
        continue;
      }
      if (j < n && text[j] == ';') ++j;
      unsigned cp = value > 0x10FFFF ? 0xFFFD : static_cast<unsigned>(value);
      if (cp == 0) cp = 0xFFFD;
      AppendUtf8(out, RemapC1(cp));
      i = j;
      continue;
    }
    size_t name_start = j;
    while (j < n && j - name_start < 32 &&
           (IsAsciiAlpha(text[j]) || (text[j] >= '0' && text[j] <= '9'))) {
      ++j;
    }
    std::string_view name = text.substr(name_start, j - name_start);
    bool semicolon = j < n && text[j] == ';';
    unsigned cp = 0;
    if (!name.empty() && (semicolon || IsLegacyEntity(name))) {
      for (const auto& e : kEntities) {
        if (name == e.name) {
          cp = e.code_point;
          break;
        }
      }
    }
    if (cp == 0) {
      out.push_back('&');
      ++i;
      continue;
    }
    AppendUtf8(out, cp);
    i = j + (semicolon ? 1 : 0);
  }
  return out;
}

ParsedDocument ParseHtml(std::string_view html) { return HtmlReader(html).Run(); }

}  // namespace parley::knowledge::internal
