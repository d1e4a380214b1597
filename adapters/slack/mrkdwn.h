#pragma once
// Markdown (as written by the engine and LLMs) → Slack mrkdwn, and splitting long mrkdwn into
// messages Slack accepts. Pure functions of their arguments.
// Thread-safety: reentrant.

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace parley::slack {

// Converts Markdown to mrkdwn:
//   **b** / __b__ → *b*;  *i* / _i_ → _i_ (intraword '_' is left alone);  ***bi*** → *_bi_*;
//   ~~s~~ → ~s~;  `code` and fenced blocks kept (fence language tag dropped, no conversion inside);
//   [text](url) and ![alt](url) → <url|text>;  <https://x> autolinks → <https://x>;
//   # Heading → *Heading*;  - x / * x / + x → • x (indent kept);  1. x kept;  > quote kept;
//   --- rules → a line of box-drawing characters;  \* backslash escapes → the literal character.
// '&', '<', '>' are escaped as &amp; &lt; &gt; everywhere except the link syntax it generates and
// a '>' quote marker — inside code too: that is Slack's wire format, and Slack shows the
// characters themselves. Emphasis nested deeper than 8 levels is left as written.
std::string MarkdownToMrkdwn(std::string_view markdown);

// Entity-escapes `&`, `<` and `>` for mrkdwn text (nothing else changes).
std::string EscapeMrkdwn(std::string_view text);

// Splits mrkdwn into parts of at most limit bytes (a limit below 16 is treated as 16), preferring
// paragraph boundaries (blank lines), then line boundaries, then whitespace, never cutting a UTF-8
// sequence or an &…; entity. A ``` code block is never split across parts unless it alone exceeds
// the limit; then it becomes several complete fenced blocks. Parts are trimmed of surrounding
// blank lines; an empty input gives no parts. Byte limits are conservative for Slack's character
// limits.
std::vector<std::string> SplitForSlack(std::string_view mrkdwn, size_t limit = 3500);

}  // namespace parley::slack
