#include "adapters/matrix/html.h"

#include <cctype>
#include <string>
#include <vector>

namespace parley::matrix {
namespace {

constexpr int kMaxDepth = 8;  // emphasis nested deeper is left as written

bool StartsWith(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}

std::string_view TrimLeft(std::string_view s) {
  size_t i = 0;
  while (i < s.size() && (s[i] == ' ' || s[i] == '\t')) ++i;
  return s.substr(i);
}

std::string_view Trim(std::string_view s) {
  s = TrimLeft(s);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) {
    s.remove_suffix(1);
  }
  return s;
}

bool SafeUrl(std::string_view url) {
  std::string lower;
  for (char c : url.substr(0, 8))
    lower += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return StartsWith(lower, "https://") || StartsWith(lower, "http://") ||
         StartsWith(lower, "mailto:");
}

bool IsWordChar(char c) { return std::isalnum(static_cast<unsigned char>(c)) != 0; }

bool IsPunct(char c) { return std::ispunct(static_cast<unsigned char>(c)) != 0; }

std::string Inline(std::string_view s, int depth);

// Finds the closing delimiter `delim` for an emphasis opened at `from` (content start).
size_t FindClose(std::string_view s, size_t from, std::string_view delim) {
  size_t pos = from;
  while (true) {
    pos = s.find(delim, pos);
    if (pos == std::string_view::npos) return pos;
    if (pos > from && s[pos - 1] != ' ' && s[pos - 1] != '\\') {
      // '_' must not close intraword.
      const size_t after = pos + delim.size();
      if (delim[0] == '_' && after < s.size() && IsWordChar(s[after])) {
        pos = after;
        continue;
      }
      return pos;
    }
    pos += 1;
  }
}

std::string Inline(std::string_view s, int depth) {
  std::string out;
  size_t i = 0;
  while (i < s.size()) {
    const char c = s[i];
    if (c == '\\' && i + 1 < s.size() && IsPunct(s[i + 1])) {
      out += EscapeHtml(s.substr(i + 1, 1));
      i += 2;
      continue;
    }
    if (c == '`') {
      size_t ticks = 0;
      while (i + ticks < s.size() && s[i + ticks] == '`') ++ticks;
      const std::string fence(ticks, '`');
      const size_t close = s.find(fence, i + ticks);
      if (close != std::string_view::npos) {
        out += "<code>" + EscapeHtml(Trim(s.substr(i + ticks, close - i - ticks))) + "</code>";
        i = close + ticks;
        continue;
      }
      out += EscapeHtml(fence);
      i += ticks;
      continue;
    }
    if (c == '!' && i + 1 < s.size() && s[i + 1] == '[') {
      // An image: shown as a link to it.
      ++i;
      continue;
    }
    if (c == '[') {
      const size_t close = s.find("](", i + 1);
      const size_t nl = s.find('\n', i + 1);
      if (close != std::string_view::npos && (nl == std::string_view::npos || nl > close)) {
        const size_t end = s.find(')', close + 2);
        if (end != std::string_view::npos) {
          const std::string_view text = s.substr(i + 1, close - i - 1);
          std::string_view url = Trim(s.substr(close + 2, end - close - 2));
          const size_t space = url.find(' ');  // [t](url "title")
          if (space != std::string_view::npos) url = url.substr(0, space);
          if (SafeUrl(url)) {
            out += "<a href=\"" + EscapeHtml(url) + "\">" +
                   (depth < kMaxDepth ? Inline(text, depth + 1) : EscapeHtml(text)) + "</a>";
          } else {
            out += depth < kMaxDepth ? Inline(text, depth + 1) : EscapeHtml(text);
          }
          i = end + 1;
          continue;
        }
      }
    }
    if (c == '<') {
      const size_t end = s.find('>', i + 1);
      if (end != std::string_view::npos) {
        const std::string_view url = s.substr(i + 1, end - i - 1);
        if (SafeUrl(url) && url.find(' ') == std::string_view::npos) {
          out += "<a href=\"" + EscapeHtml(url) + "\">" + EscapeHtml(url) + "</a>";
          i = end + 1;
          continue;
        }
      }
    }
    if ((c == '*' || c == '_' || c == '~') && depth < kMaxDepth) {
      size_t run = 0;
      while (i + run < s.size() && s[i + run] == c) ++run;
      const bool left_ok = c != '_' || i == 0 || !IsWordChar(s[i - 1]);
      const bool next_ok = i + run < s.size() && s[i + run] != ' ';
      if (left_ok && next_ok) {
        struct Try {
          size_t n;
          const char* open;
          const char* close;
        };
        std::vector<Try> tries;
        if (c == '~') {
          if (run >= 2) tries.push_back({2, "<del>", "</del>"});
        } else {
          if (run >= 3) tries.push_back({3, "<strong><em>", "</em></strong>"});
          if (run >= 2) tries.push_back({2, "<strong>", "</strong>"});
          tries.push_back({1, "<em>", "</em>"});
        }
        bool done = false;
        for (const Try& t : tries) {
          const std::string delim(t.n, c);
          const size_t close = FindClose(s, i + t.n, delim);
          if (close == std::string_view::npos || close == i + t.n) continue;
          out += t.open;
          out += Inline(s.substr(i + t.n, close - i - t.n), depth + 1);
          out += t.close;
          i = close + t.n;
          done = true;
          break;
        }
        if (done) continue;
      }
      out += EscapeHtml(s.substr(i, run));
      i += run;
      continue;
    }
    if (c == '\n') {
      out += "<br>";
      ++i;
      continue;
    }
    out += EscapeHtml(s.substr(i, 1));
    ++i;
  }
  return out;
}

bool IsRule(std::string_view line) {
  line = Trim(line);
  if (line.size() < 3) return false;
  const char c = line[0];
  if (c != '-' && c != '*' && c != '_') return false;
  for (char x : line) {
    if (x != c && x != ' ') return false;
  }
  return true;
}

// "- x", "* x", "+ x" → content; else npos.
size_t BulletContent(std::string_view line) {
  std::string_view t = TrimLeft(line);
  if (t.size() >= 2 && (t[0] == '-' || t[0] == '*' || t[0] == '+') && t[1] == ' ') {
    return line.size() - t.size() + 2;
  }
  return std::string_view::npos;
}

// "1. x" or "1) x" → content; else npos.
size_t OrderedContent(std::string_view line) {
  std::string_view t = TrimLeft(line);
  size_t d = 0;
  while (d < t.size() && d < 9 && std::isdigit(static_cast<unsigned char>(t[d]))) ++d;
  if (d == 0 || d + 1 >= t.size() || (t[d] != '.' && t[d] != ')') || t[d + 1] != ' ') {
    return std::string_view::npos;
  }
  return line.size() - t.size() + d + 2;
}

int HeadingLevel(std::string_view line) {
  int level = 0;
  while (level < static_cast<int>(line.size()) && line[level] == '#') ++level;
  if (level == 0 || level > 6) return 0;
  if (level < static_cast<int>(line.size()) && line[level] != ' ') return 0;
  return level;
}

std::vector<std::string_view> Lines(std::string_view text) {
  std::vector<std::string_view> lines;
  size_t start = 0;
  while (start <= text.size()) {
    size_t nl = text.find('\n', start);
    if (nl == std::string_view::npos) nl = text.size();
    std::string_view line = text.substr(start, nl - start);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    lines.push_back(line);
    start = nl + 1;
  }
  return lines;
}

std::string Blocks(std::string_view markdown, int depth);

std::string Blocks(std::string_view markdown, int depth) {
  const std::vector<std::string_view> lines = Lines(markdown);
  std::string out;
  size_t i = 0;
  while (i < lines.size()) {
    std::string_view line = lines[i];
    const std::string_view trimmed = Trim(line);
    if (trimmed.empty()) {
      ++i;
      continue;
    }
    if (StartsWith(TrimLeft(line), "```") || StartsWith(TrimLeft(line), "~~~")) {
      const std::string fence(TrimLeft(line).substr(0, 3));
      std::string lang(Trim(TrimLeft(line).substr(3)));
      std::string code;
      ++i;
      while (i < lines.size() && !StartsWith(TrimLeft(lines[i]), fence)) {
        code += std::string(lines[i]) + "\n";
        ++i;
      }
      if (i < lines.size()) ++i;  // the closing fence
      bool lang_ok = !lang.empty();
      for (char c : lang) {
        if (!IsWordChar(c) && c != '-' && c != '+' && c != '#') lang_ok = false;
      }
      out += lang_ok ? "<pre><code class=\"language-" + lang + "\">" : "<pre><code>";
      out += EscapeHtml(code) + "</code></pre>";
      continue;
    }
    if (const int level = HeadingLevel(trimmed); level > 0) {
      const std::string tag = "h" + std::to_string(level);
      out += "<" + tag + ">" + Inline(Trim(trimmed.substr(level)), 0) + "</" + tag + ">";
      ++i;
      continue;
    }
    if (IsRule(line)) {
      out += "<hr>";
      ++i;
      continue;
    }
    if (StartsWith(TrimLeft(line), ">")) {
      std::string inner;
      while (i < lines.size() && StartsWith(TrimLeft(lines[i]), ">")) {
        std::string_view q = TrimLeft(lines[i]).substr(1);
        if (!q.empty() && q[0] == ' ') q.remove_prefix(1);
        inner += std::string(q) + "\n";
        ++i;
      }
      out += "<blockquote>" +
             (depth < kMaxDepth ? Blocks(inner, depth + 1) : "<p>" + EscapeHtml(inner) + "</p>") +
             "</blockquote>";
      continue;
    }
    const bool bullet = BulletContent(line) != std::string_view::npos && !IsRule(line);
    const bool ordered = OrderedContent(line) != std::string_view::npos;
    if (bullet || ordered) {
      std::string items;
      std::string start_attr;
      if (ordered) {
        const std::string_view t = TrimLeft(line);
        size_t d = 0;
        while (d < t.size() && std::isdigit(static_cast<unsigned char>(t[d]))) ++d;
        const std::string number(t.substr(0, d));
        if (number != "1") start_attr = " start=\"" + std::to_string(std::stoi(number)) + "\"";
      }
      while (i < lines.size()) {
        const size_t content = bullet ? BulletContent(lines[i]) : OrderedContent(lines[i]);
        if (content == std::string_view::npos || (bullet && IsRule(lines[i]))) break;
        std::string item(lines[i].substr(content));
        ++i;
        // Continuation lines (indented, not a new item).
        while (i < lines.size() && !Trim(lines[i]).empty() &&
               (lines[i][0] == ' ' || lines[i][0] == '\t') &&
               BulletContent(lines[i]) == std::string_view::npos &&
               OrderedContent(lines[i]) == std::string_view::npos) {
          item += "\n" + std::string(Trim(lines[i]));
          ++i;
        }
        items += "<li>" + Inline(item, 0) + "</li>";
      }
      out += bullet ? "<ul>" + items + "</ul>" : "<ol" + start_attr + ">" + items + "</ol>";
      continue;
    }
    // A paragraph: up to a blank line or the start of another block.
    std::string para;
    while (i < lines.size()) {
      const std::string_view l = lines[i];
      const std::string_view t = Trim(l);
      if (t.empty()) break;
      if (!para.empty() &&
          (HeadingLevel(t) > 0 || StartsWith(TrimLeft(l), "```") || StartsWith(TrimLeft(l), ">") ||
           (BulletContent(l) != std::string_view::npos) ||
           OrderedContent(l) != std::string_view::npos || IsRule(l))) {
        break;
      }
      if (!para.empty()) para += "\n";
      para += std::string(t);
      ++i;
    }
    out += "<p>" + Inline(para, 0) + "</p>";
  }
  return out;
}

}  // namespace

std::string EscapeHtml(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
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
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::string MarkdownToHtml(std::string_view markdown) { return Blocks(markdown, 0); }

}  // namespace parley::matrix
