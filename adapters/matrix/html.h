#pragma once
// Markdown (as written by the engine and LLMs) → the HTML subset Matrix clients render
// (org.matrix.custom.html). The output is safe by construction: every character of the input is
// escaped, and the only tags emitted are p, br, strong, em, del, code, pre, a (href http, https or
// mailto only), ul, ol, li, blockquote, h1–h6 and hr.
// Thread-safety: reentrant.

#include <string>
#include <string_view>

namespace parley::matrix {

// Blocks: ``` fences (language → class="language-x"), # headings, - * + and 1. lists (one
// level), > quotes, --- rules, paragraphs (single newlines become <br>). Inline: `code`,
// **bold**/__bold__, *em*/_em_ (not intraword _), ~~del~~, [text](url), <https://autolinks>,
// backslash escapes. A link with another scheme is shown as its text.
std::string MarkdownToHtml(std::string_view markdown);

// Escapes & < > " ' as entities.
std::string EscapeHtml(std::string_view text);

}  // namespace parley::matrix
