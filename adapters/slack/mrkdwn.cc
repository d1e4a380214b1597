#include "adapters/slack/mrkdwn.h"

#include <algorithm>
#include <cctype>

namespace parley::slack {
namespace {

constexpr int kMaxEmphasisDepth = 8;
constexpr size_t kMinSplitLimit = 16;
constexpr char kFence[] = "```";
// Scan bounds that keep conversion linear on hostile input (many unmatched '[' or '<').
constexpr size_t kMaxLinkText = 1000;
constexpr size_t kMaxUrl = 2048;

bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
// Non-ASCII bytes count as word characters, so intraword '_' in any script stays literal.
bool IsWordChar(char c) {
  auto u = static_cast<unsigned char>(c);
  return u >= 0x80 || std::isalnum(u) != 0;
}
bool IsAsciiPunct(char c) { return std::ispunct(static_cast<unsigned char>(c)) != 0; }

void AppendEscaped(std::string& out, char c) {
  switch (c) {
    case '&':
      out += "&amp;";
      break;
    case '<':
      out += "&lt;";
      break;
    case '>':
      out += "&gt;";
      break;
    default:
      out.push_back(c);
  }
}
void AppendEscaped(std::string& out, std::string_view s) {
  for (char c : s) AppendEscaped(out, c);
}

// A URL inside generated <url|text>: entity-escaped, and '|' / spaces percent-encoded because
// they would end the URL.
void AppendUrl(std::string& out, std::string_view url) {
  for (char c : url) {
    if (c == '|') {
      out += "%7C";
    } else if (c == ' ') {
      out += "%20";
    } else {
      AppendEscaped(out, c);
    }
  }
}

std::vector<std::string_view> SplitLines(std::string_view s) {
  std::vector<std::string_view> lines;
  size_t start = 0;
  while (start <= s.size()) {
    size_t nl = s.find('\n', start);
    if (nl == std::string_view::npos) nl = s.size();
    std::string_view line = s.substr(start, nl - start);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    lines.push_back(line);
    start = nl + 1;
  }
  return lines;
}

std::string_view TrimLeft(std::string_view s) {
  while (!s.empty() && IsSpace(s.front())) s.remove_prefix(1);
  return s;
}
std::string_view Trim(std::string_view s) {
  s = TrimLeft(s);
  while (!s.empty() && IsSpace(s.back())) s.remove_suffix(1);
  return s;
}

size_t RunLength(std::string_view s, size_t i, char c) {
  size_t j = i;
  while (j < s.size() && s[j] == c) ++j;
  return j - i;
}

// End (one past the closing run) of the code span opening at i, or npos when unclosed.
size_t CodeSpanEnd(std::string_view s, size_t i) {
  const size_t n = RunLength(s, i, '`');
  size_t j = i + n;
  while (j < s.size()) {
    const size_t k = s.find('`', j);
    if (k == std::string_view::npos) return std::string_view::npos;
    const size_t m = RunLength(s, k, '`');
    if (m == n) return k + m;
    j = k + m;
  }
  return std::string_view::npos;
}

bool IsAbsoluteUrl(std::string_view url) {
  return url.find("://") != std::string_view::npos || url.rfind("mailto:", 0) == 0;
}

// Link text as plain text: backslash escapes resolved, '*' and '`' dropped (Slack does not
// format inside link labels), entities escaped.
std::string PlainLabel(std::string_view text) {
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (c == '\\' && i + 1 < text.size() && IsAsciiPunct(text[i + 1])) {
      AppendEscaped(out, text[++i]);
    } else if (c != '*' && c != '`') {
      AppendEscaped(out, c);
    }
  }
  return out;
}

struct LinkMatch {
  bool ok = false;
  std::string_view text;
  std::string_view url;
  size_t end = 0;  // one past ')'
};

// Matches [text](url "title") with s[i] == '['.
LinkMatch MatchLink(std::string_view s, size_t i) {
  LinkMatch m;
  int depth = 0;
  size_t j = i;
  const size_t text_end = std::min(s.size(), i + kMaxLinkText);
  for (; j < text_end; ++j) {
    if (s[j] == '\\') {
      ++j;
    } else if (s[j] == '[') {
      ++depth;
    } else if (s[j] == ']') {
      if (--depth == 0) break;
    }
  }
  if (j >= text_end || j + 1 >= s.size() || s[j + 1] != '(') return m;
  m.text = s.substr(i + 1, j - i - 1);
  size_t k = j + 2;
  while (k < s.size() && s[k] == ' ') ++k;
  size_t url_start = k;
  if (k < s.size() && s[k] == '<') {
    size_t close = s.substr(0, std::min(s.size(), k + kMaxUrl)).find('>', k);
    if (close == std::string_view::npos) return m;
    m.url = s.substr(k + 1, close - k - 1);
    k = close + 1;
  } else {
    int parens = 0;
    const size_t url_end = std::min(s.size(), k + kMaxUrl);
    while (k < url_end && !IsSpace(s[k])) {
      if (s[k] == '(') ++parens;
      if (s[k] == ')') {
        if (parens == 0) break;
        --parens;
      }
      ++k;
    }
    m.url = s.substr(url_start, k - url_start);
  }
  while (k < s.size() && s[k] == ' ') ++k;
  if (k < s.size() && (s[k] == '"' || s[k] == '\'')) {  // optional title, dropped
    size_t close = s.substr(0, std::min(s.size(), k + kMaxLinkText)).find(s[k], k + 1);
    if (close == std::string_view::npos) return m;
    k = close + 1;
    while (k < s.size() && s[k] == ' ') ++k;
  }
  if (k >= s.size() || s[k] != ')') return m;
  m.end = k + 1;
  m.ok = true;
  return m;
}

// Matches an autolink <scheme:...> at s[i] == '<'; returns one past '>' or 0.
size_t MatchAutolink(std::string_view s, size_t i, std::string_view* url) {
  size_t close = s.substr(0, std::min(s.size(), i + kMaxUrl)).find('>', i + 1);
  if (close == std::string_view::npos) return 0;
  std::string_view inner = s.substr(i + 1, close - i - 1);
  if (!(inner.rfind("http://", 0) == 0 || inner.rfind("https://", 0) == 0 ||
        inner.rfind("mailto:", 0) == 0)) {
    return 0;
  }
  for (char c : inner) {
    if (IsSpace(c) || c == '<') return 0;
  }
  *url = inner;
  return close + 1;
}

class InlineConverter {
 public:
  explicit InlineConverter(std::string_view s) : s_(s) {}

  // Converts s_ (one line) with emphasis nesting `depth`; inside bold, bold markers are dropped.
  std::string Convert(int depth, bool in_bold) {
    std::string out;
    size_t i = 0;
    while (i < s_.size()) {
      const char c = s_[i];
      if (c == '\\' && i + 1 < s_.size() && IsAsciiPunct(s_[i + 1])) {
        AppendEscaped(out, s_[i + 1]);
        i += 2;
      } else if (c == '`') {
        const size_t end = CodeSpanEnd(s_, i);
        const size_t n = RunLength(s_, i, '`');
        if (end == std::string_view::npos) {
          out.append(n, '`');
          i += n;
        } else {
          // Slack knows single-backtick spans only; content kept as written (escaped).
          out.push_back('`');
          AppendEscaped(out, s_.substr(i + n, end - n - i - n));
          out.push_back('`');
          i = end;
        }
      } else if (c == '[' || (c == '!' && i + 1 < s_.size() && s_[i + 1] == '[')) {
        const size_t at = c == '!' ? i + 1 : i;
        LinkMatch m = MatchLink(s_, at);
        if (!m.ok) {
          out.push_back(c);
          ++i;
          continue;
        }
        AppendLink(out, m.text, m.url);
        i = m.end;
      } else if (c == '<') {
        std::string_view url;
        const size_t end = MatchAutolink(s_, i, &url);
        if (end == 0) {
          out += "&lt;";
          ++i;
        } else {
          out.push_back('<');
          AppendUrl(out, url);
          out.push_back('>');
          i = end;
        }
      } else if ((c == '*' || c == '_' || c == '~') && depth < kMaxEmphasisDepth) {
        i = Emphasis(out, i, depth, in_bold);
      } else {
        AppendEscaped(out, c);
        ++i;
      }
    }
    return out;
  }

 private:
  static void AppendLink(std::string& out, std::string_view text, std::string_view url) {
    std::string label = PlainLabel(text);
    if (url.empty()) {
      out += label;
    } else if (!IsAbsoluteUrl(url)) {  // Slack cannot link a relative URL: show it
      if (!label.empty()) out += label + " (";
      AppendEscaped(out, url);
      if (!label.empty()) out.push_back(')');
    } else {
      out.push_back('<');
      AppendUrl(out, url);
      if (!label.empty()) out += "|" + label;
      out.push_back('>');
    }
  }

  // Handles a delimiter run at i; returns the index after what it consumed.
  size_t Emphasis(std::string& out, size_t i, int depth, bool in_bold) {
    const char c = s_[i];
    const size_t r = RunLength(s_, i, c);
    const bool usable = c == '~' ? r == 2 : r <= 3;
    const bool next_ok = i + r < s_.size() && !IsSpace(s_[i + r]);
    const bool prev_ok = c != '_' || i == 0 || !IsWordChar(s_[i - 1]);
    size_t close = std::string_view::npos;
    if (usable && next_ok && prev_ok) close = FindCloser(c, r, i + r);
    if (close == std::string_view::npos) {
      out.append(r, c);
      return i + r;
    }
    InlineConverter inner(s_.substr(i + r, close - i - r));
    if (c == '~') {
      out += "~" + inner.Convert(depth + 1, in_bold) + "~";
    } else if (r == 1) {
      out += "_" + inner.Convert(depth + 1, in_bold) + "_";
    } else if (r == 2) {
      out += in_bold ? inner.Convert(depth + 1, true) : "*" + inner.Convert(depth + 1, true) + "*";
    } else {
      out += in_bold ? "_" + inner.Convert(depth + 1, true) + "_"
                     : "*_" + inner.Convert(depth + 1, true) + "_*";
    }
    return close + r;
  }

  // Position of a closing run of exactly r c's at or after `from`, or npos. A failed search is
  // remembered: a later opener of the same kind would scan the same tail, so it fails at once
  // (keeps the scan linear on lines full of unmatched delimiters).
  size_t FindCloser(char c, size_t r, size_t from) {
    size_t& failed_from = failed_from_[c == '*' ? 0 : c == '_' ? 1 : 2][r];
    if (from >= failed_from) return std::string_view::npos;
    size_t j = from;
    while (j < s_.size()) {
      const char d = s_[j];
      if (d == '\\') {
        j += 2;
      } else if (d == '`') {
        const size_t end = CodeSpanEnd(s_, j);
        j = end == std::string_view::npos ? j + RunLength(s_, j, '`') : end;
      } else if (d == c) {
        const size_t m = RunLength(s_, j, c);
        const bool prev_ok = j > from && !IsSpace(s_[j - 1]);
        const bool next_ok = c != '_' || j + m >= s_.size() || !IsWordChar(s_[j + m]);
        if (m == r && prev_ok && next_ok) return j;
        j += m;
      } else {
        ++j;
      }
    }
    failed_from = std::min(failed_from, from);
    return std::string_view::npos;
  }

  std::string_view s_;
  size_t failed_from_[3][4] = {{std::string_view::npos, std::string_view::npos,
                                std::string_view::npos, std::string_view::npos},
                               {std::string_view::npos, std::string_view::npos,
                                std::string_view::npos, std::string_view::npos},
                               {std::string_view::npos, std::string_view::npos,
                                std::string_view::npos, std::string_view::npos}};
};

std::string ConvertInline(std::string_view s, bool in_bold) {
  return InlineConverter(s).Convert(0, in_bold);
}

size_t LeadingSpaces(std::string_view s) {
  size_t n = 0;
  while (n < s.size() && (s[n] == ' ' || s[n] == '\t')) ++n;
  return n;
}

// A fence line: ≤ 3 spaces, then ≥ 3 '`' or '~'. Returns the run length, 0 if not a fence.
size_t FenceRun(std::string_view line, char* fence_char) {
  const size_t indent = LeadingSpaces(line);
  if (indent > 3 || indent >= line.size()) return 0;
  const char c = line[indent];
  if (c != '`' && c != '~') return 0;
  const size_t n = RunLength(line, indent, c);
  if (n < 3) return 0;
  if (c == '`' && line.find('`', indent + n) != std::string_view::npos) return 0;
  *fence_char = c;
  return n;
}

bool IsRule(std::string_view line) {
  std::string_view t = Trim(line);
  if (t.empty() || LeadingSpaces(line) > 3) return false;
  const char c = t[0];
  if (c != '-' && c != '*' && c != '_') return false;
  size_t count = 0;
  for (char d : t) {
    if (d == c) {
      ++count;
    } else if (d != ' ') {
      return false;
    }
  }
  return count >= 3;
}

}  // namespace

std::string MarkdownToMrkdwn(std::string_view markdown) {
  std::string out;
  out.reserve(markdown.size() + markdown.size() / 8);
  const std::vector<std::string_view> lines = SplitLines(markdown);
  bool in_code = false;
  char fence_char = 0;
  size_t fence_len = 0;
  for (size_t n = 0; n < lines.size(); ++n) {
    const std::string_view line = lines[n];
    if (n > 0) out.push_back('\n');
    char c = 0;
    const size_t run = FenceRun(line, &c);
    if (in_code) {
      if (run >= fence_len && c == fence_char &&
          Trim(line.substr(LeadingSpaces(line) + run)).empty()) {
        out += kFence;
        in_code = false;
      } else {
        AppendEscaped(out, line);
      }
      continue;
    }
    if (run > 0) {  // opening fence; the info string (language) is dropped
      out += kFence;
      in_code = true;
      fence_char = c;
      fence_len = run;
      continue;
    }
    const size_t indent = LeadingSpaces(line);
    const std::string_view body = line.substr(indent);
    if (indent <= 3 && !body.empty() && body[0] == '#') {
      const size_t hashes = RunLength(body, 0, '#');
      if (hashes <= 6 && (hashes == body.size() || body[hashes] == ' ')) {
        std::string_view text = Trim(body.substr(hashes));
        while (!text.empty() && text.back() == '#') text.remove_suffix(1);  // closing #s
        text = Trim(text);
        if (!text.empty()) out += "*" + ConvertInline(text, /*in_bold=*/true) + "*";
        continue;
      }
    }
    if (IsRule(line)) {
      out += "──────────";
      continue;
    }
    if (body.size() >= 2 && (body[0] == '-' || body[0] == '*' || body[0] == '+') &&
        body[1] == ' ') {
      std::string_view item = body.substr(2);
      out.append(line.substr(0, indent));
      out += "• ";
      if (item.rfind("[ ] ", 0) == 0) {
        out += "☐ ";
        item.remove_prefix(4);
      } else if (item.rfind("[x] ", 0) == 0 || item.rfind("[X] ", 0) == 0) {
        out += "☑ ";
        item.remove_prefix(4);
      }
      out += ConvertInline(item, false);
      continue;
    }
    const size_t digits = [&] {
      size_t d = 0;
      while (d < body.size() && d < 9 && std::isdigit(static_cast<unsigned char>(body[d]))) ++d;
      return d;
    }();
    if (digits > 0 && digits + 1 < body.size() && (body[digits] == '.' || body[digits] == ')') &&
        body[digits + 1] == ' ') {
      out.append(line.substr(0, indent + digits + 2));
      out += ConvertInline(body.substr(digits + 2), false);
      continue;
    }
    if (indent <= 3 && !body.empty() && body[0] == '>') {  // Slack quotes use a raw '>'
      std::string_view quoted = body.substr(1);
      if (!quoted.empty() && quoted[0] == ' ') quoted.remove_prefix(1);
      out += "> " + ConvertInline(quoted, false);
      continue;
    }
    out += ConvertInline(line, false);
  }
  if (in_code) out += "\n```";
  return out;
}

// ---------------------------------------------------------------------------------------------
// Splitting

namespace {

bool IsUtf8Continuation(char c) { return (static_cast<unsigned char>(c) & 0xC0) == 0x80; }

// The largest cut position ≤ max (and > 0 when possible) that splits neither a UTF-8 sequence
// nor an &amp; / &lt; / &gt; entity.
size_t SafeCut(std::string_view s, size_t max) {
  if (max >= s.size()) return s.size();
  size_t p = max;
  while (p > 0 && IsUtf8Continuation(s[p])) --p;
  const size_t back = p >= 4 ? p - 4 : 0;
  const size_t amp = s.rfind('&', p == 0 ? 0 : p - 1);
  if (amp != std::string_view::npos && amp >= back && amp > 0) {
    for (std::string_view e : {"&amp;", "&lt;", "&gt;"}) {
      if (s.substr(amp, e.size()) == e && amp + e.size() > p) p = amp;
    }
  }
  return p == 0 ? max : p;  // a degenerate input still makes progress
}

// Splits one over-long line into pieces ≤ limit: at the last whitespace outside <…> when there
// is one, else at a safe byte position.
void SplitLongLine(std::string_view line, size_t limit, std::vector<std::string>* pieces) {
  while (line.size() > limit) {
    size_t cut = std::string_view::npos;
    bool in_angle = false;
    for (size_t i = 0; i <= limit && i < line.size(); ++i) {
      if (line[i] == '<') in_angle = true;
      if (line[i] == '>') in_angle = false;
      if (!in_angle && i > 0 && (line[i] == ' ' || line[i] == '\t')) cut = i;
    }
    if (cut != std::string_view::npos) {
      pieces->emplace_back(line.substr(0, cut));
      line.remove_prefix(cut);
      line = TrimLeft(line);
    } else {
      cut = SafeCut(line, limit);
      pieces->emplace_back(line.substr(0, cut));
      line.remove_prefix(cut);
    }
  }
  if (!line.empty()) pieces->emplace_back(line);
}

// Packs lines (each ≤ limit) joined by '\n' into pieces ≤ limit.
void PackLines(const std::vector<std::string>& lines, size_t limit,
               std::vector<std::string>* pieces) {
  std::string cur;
  bool has = false;
  for (const std::string& l : lines) {
    if (has && cur.size() + 1 + l.size() <= limit) {
      cur += "\n" + l;
    } else {
      if (has) pieces->push_back(std::move(cur));
      cur = l;
      has = true;
    }
  }
  if (has) pieces->push_back(std::move(cur));
}

// A paragraph longer than limit → pieces at line boundaries, then within lines.
void SplitParagraph(std::string_view para, size_t limit, std::vector<std::string>* pieces) {
  std::vector<std::string> lines;
  for (std::string_view l : SplitLines(para)) {
    if (l.size() <= limit) {
      lines.emplace_back(l);
    } else {
      SplitLongLine(l, limit, &lines);
    }
  }
  PackLines(lines, limit, pieces);
}

// A code block longer than limit → several complete fenced blocks ≤ limit.
void SplitCode(const std::vector<std::string_view>& content, size_t limit,
               std::vector<std::string>* pieces) {
  const size_t budget = limit - 8;  // "```\n" + content + "\n```"
  std::vector<std::string> lines;
  for (std::string_view l : content) {
    while (l.size() > budget) {
      const size_t cut = SafeCut(l, budget);
      lines.emplace_back(l.substr(0, cut));
      l.remove_prefix(cut);
    }
    lines.emplace_back(l);
  }
  std::vector<std::string> packed;
  PackLines(lines, budget, &packed);
  for (std::string& p : packed) pieces->push_back("```\n" + p + "\n```");
}

}  // namespace

std::vector<std::string> SplitForSlack(std::string_view mrkdwn, size_t limit) {
  limit = std::max(limit, kMinSplitLimit);
  // 1. Units: paragraphs (separated by blank lines) and code blocks, each ≤ limit.
  std::vector<std::string> units;
  std::string para;
  auto flush_para = [&] {
    if (para.empty()) return;
    if (para.size() <= limit) {
      units.push_back(std::move(para));
    } else {
      SplitParagraph(para, limit, &units);
    }
    para.clear();
  };
  std::vector<std::string_view> code;  // lines of the open code block, fences included
  bool in_code = false;
  auto flush_code = [&] {
    size_t total = 0;
    for (std::string_view l : code) total += l.size() + 1;
    if (total - 1 <= limit) {
      std::string block;
      for (size_t i = 0; i < code.size(); ++i) block += (i ? "\n" : "") + std::string(code[i]);
      units.push_back(std::move(block));
    } else {
      // Content: text after the opening ``` and before the closing ``` belongs to the code too.
      std::vector<std::string_view> content;
      std::string_view first = TrimLeft(code.front()).substr(3);
      if (code.size() == 1) {  // one-line block ```…```
        first = first.substr(0, first.size() >= 3 ? first.size() - 3 : 0);
        content.push_back(first);
      } else {
        if (!Trim(first).empty()) content.push_back(first);
        for (size_t i = 1; i + 1 < code.size(); ++i) content.push_back(code[i]);
        std::string_view last = code.back();
        const size_t fence = last.rfind(kFence);
        if (fence != std::string_view::npos && !Trim(last.substr(0, fence)).empty()) {
          content.push_back(last.substr(0, fence));
        }
      }
      SplitCode(content, limit, &units);
    }
    code.clear();
  };
  for (std::string_view line : SplitLines(mrkdwn)) {
    const std::string_view t = Trim(line);
    if (in_code) {
      code.push_back(line);
      if (t.size() >= 3 && t.substr(t.size() - 3) == kFence) {
        in_code = false;
        flush_code();
      }
      continue;
    }
    if (t.rfind(kFence, 0) == 0) {
      flush_para();
      code.push_back(line);
      if (t.size() >= 6 && t.substr(t.size() - 3) == kFence) {
        flush_code();
      } else {
        in_code = true;
      }
      continue;
    }
    if (t.empty()) {
      flush_para();
      continue;
    }
    if (!para.empty()) para.push_back('\n');
    para.append(line);
  }
  flush_para();
  if (in_code) {  // unclosed block: close it so every part stays balanced
    code.push_back(kFence);
    flush_code();
  }
  // 2. Pack units greedily, joined by a blank line.
  std::vector<std::string> parts;
  for (std::string& u : units) {
    if (!parts.empty() && parts.back().size() + 2 + u.size() <= limit) {
      parts.back() += "\n\n" + u;
    } else {
      parts.push_back(std::move(u));
    }
  }
  return parts;
}

std::string EscapeMrkdwn(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  AppendEscaped(out, text);
  return out;
}

}  // namespace parley::slack
