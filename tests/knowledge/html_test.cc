// The HTML reader: boilerplate stripped, entities decoded, headings and anchors kept, and any
// input survives.

#include <gtest/gtest.h>

#include <chrono>
#include <random>
#include <string>
#include <vector>

#include "knowledge/document.h"
#include "knowledge/knowledge.h"

namespace parley::knowledge::internal {
namespace {

std::string AllText(const ParsedDocument& doc) {
  std::string out;
  for (const Block& b : doc.blocks) out += b.text + "\n";
  return out;
}

std::vector<const Block*> Headings(const ParsedDocument& doc) {
  std::vector<const Block*> out;
  for (const Block& b : doc.blocks) {
    if (b.kind == BlockKind::kHeading) out.push_back(&b);
  }
  return out;
}

TEST(HtmlTest, StripsScriptsStylesAndPageChrome) {
  const std::string html = R"(<!DOCTYPE html>
<html><head><title>Install guide</title>
<style>body { color: red; } .secret-style {}</style>
<script>var secretScript = "<p>not text</p>";</script>
</head><body>
<header><a href="/">Site logo banner</a></header>
<nav><ul><li>Home menu</li><li>Docs menu</li></ul></nav>
<div class="breadcrumb">Home &gt; Docs &gt; Install</div>
<main>
<h1>Installing</h1>
<p>Run the installer.</p>
<noscript>Enable javascript please</noscript>
<aside>Related sidebar links</aside>
</main>
<div role="navigation">Previous | Next</div>
<footer>Copyright footer text</footer>
<script type="text/javascript">
  document.write("</div>");  // a tag-like string inside a script
</script>
</body></html>)";
  ParsedDocument doc = ParseHtml(html);
  const std::string text = AllText(doc);
  EXPECT_NE(text.find("Run the installer."), std::string::npos) << text;
  for (const char* gone :
       {"secret-style", "secretScript", "not text", "Site logo", "Home menu", "Docs &gt;",
        "Docs > Install", "javascript", "sidebar", "Previous", "Copyright", "document.write"}) {
    EXPECT_EQ(text.find(gone), std::string::npos) << gone << " in:\n" << text;
  }
  EXPECT_EQ(doc.title, "Install guide");
}

TEST(HtmlTest, StripsGeneratedDocNavigation) {
  const std::string html = R"(<html><body>
<div class="navheader"><table summary="Navigation header"><tr><th>Chapter 2. Tools</th></tr>
<tr><td><a href="ch01.html">Prev</a></td><td><a href="ch03.html">Next</a></td></tr></table></div>
<div class="chapter"><div class="titlepage"><h1 class="title"><a id="_tools"/>Chapter 2. Tools</h1></div>
<div class="toc"><p><strong>Table of Contents</strong></p><dl class="toc"><dt>2.1. Hammers</dt></dl></div>
<div class="section"><h2 class="title"><a id="_hammers"></a>2.1. Hammers</h2>
<p>Hammers drive nails.</p></div></div>
<div class="navfooter"><table summary="Navigation footer"><tr><td>Up</td><td>Home</td></tr></table></div>
</body></html>)";
  ParsedDocument doc = ParseHtml(html);
  const std::string text = AllText(doc);
  EXPECT_NE(text.find("Hammers drive nails."), std::string::npos);
  EXPECT_EQ(text.find("Table of Contents"), std::string::npos) << text;
  EXPECT_EQ(text.find("Prev"), std::string::npos) << text;
  EXPECT_EQ(text.find("Up | Home"), std::string::npos) << text;
  auto headings = Headings(doc);
  ASSERT_EQ(headings.size(), 2u);
  EXPECT_EQ(headings[0]->text, "Chapter 2. Tools");
  EXPECT_EQ(headings[0]->anchor, "_tools");
  EXPECT_EQ(headings[1]->text, "2.1. Hammers");
  EXPECT_EQ(headings[1]->anchor, "_hammers");
  EXPECT_EQ(doc.title, "Chapter 2. Tools");  // no <title>: the first h1
}

TEST(HtmlTest, DecodesEntities) {
  ParsedDocument doc = ParseHtml(
      "<p>AT&amp;T &lt;tag&gt; &quot;q&quot; it&#39;s &#x41;&#66; caf&eacute; wait&hellip; "
      "a&nbsp;b &copy 2024 &bogus; R&D 5 &lt 6 &#0; &#x110000;</p>");
  ASSERT_EQ(doc.blocks.size(), 1u);
  EXPECT_EQ(doc.blocks[0].text,
            "AT&T <tag> \"q\" it's AB caf\xC3\xA9 wait\xE2\x80\xA6 a b \xC2\xA9 2024 &bogus; R&D 5 "
            "< 6 \xEF\xBF\xBD \xEF\xBF\xBD");
  EXPECT_EQ(DecodeEntities("&#128512;"), "\xF0\x9F\x98\x80");
  EXPECT_EQ(DecodeEntities("&#150;"), "\xE2\x80\x93");  // Windows-1252 en dash
  EXPECT_EQ(DecodeEntities("&"), "&");
  EXPECT_EQ(DecodeEntities("&#"), "&#");
  EXPECT_EQ(DecodeEntities("&#x;"), "&#x;");
}

TEST(HtmlTest, KeepsHeadingAnchorsFromEveryConvention) {
  const std::string html = R"(<html><head><title>Anchors</title></head><body>
<h1 id="top">Top heading</h1>
<h2><a name="inner"></a>Inner anchor</h2>
<a id="before"></a>
<h2>Preceding anchor</h2>
<section id="sec"><h2>Section anchor</h2><p>x</p><h3>Second in section</h3></section>
<h2 id="own"><a id="ignored"></a>Own id wins</h2>
<h2>No anchor</h2>
</body></html>)";
  ParsedDocument doc = ParseHtml(html);
  auto h = Headings(doc);
  ASSERT_EQ(h.size(), 7u);
  EXPECT_EQ(h[0]->anchor, "top");
  EXPECT_EQ(h[0]->level, 1);
  EXPECT_EQ(h[1]->anchor, "inner");
  EXPECT_EQ(h[2]->anchor, "before");
  EXPECT_EQ(h[2]->text, "Preceding anchor");
  EXPECT_EQ(h[3]->anchor, "sec");
  EXPECT_EQ(h[4]->anchor, "");  // the section's id belongs to its first heading only
  EXPECT_EQ(h[4]->level, 3);
  EXPECT_EQ(h[5]->anchor, "own");
  EXPECT_EQ(h[6]->anchor, "");
  EXPECT_EQ(doc.title, "Anchors");
}

TEST(HtmlTest, ListsCodeAndTables) {
  const std::string html = R"(<body>
<p>Steps:</p>
<ul><li>First <b>step</b></li><li><p>Second step</p><ul><li>nested</li></ul></li></ul>
<pre>
line one
  indented &lt;two&gt;
</pre>
<p>Use <code>apt-get</code> here.</p>
<table><tr><th>Name</th><th>Value</th></tr><tr><td>alpha</td><td><p>1</p></td></tr>
<tr><td>beta<td>2</tr></table>
</body>)";
  ParsedDocument doc = ParseHtml(html);
  std::vector<std::string> texts;
  std::vector<BlockKind> kinds;
  for (const Block& b : doc.blocks) {
    texts.push_back(b.text);
    kinds.push_back(b.kind);
  }
  ASSERT_EQ(texts.size(), 9u) << AllText(doc);
  EXPECT_EQ(texts[0], "Steps:");
  EXPECT_EQ(texts[1], "- First step");
  EXPECT_EQ(kinds[1], BlockKind::kListItem);
  EXPECT_EQ(texts[2], "- Second step");
  EXPECT_EQ(texts[3], "  - nested");
  EXPECT_EQ(texts[4], "```\nline one\n  indented <two>\n```");
  EXPECT_EQ(kinds[4], BlockKind::kCode);
  EXPECT_EQ(texts[5], "Use `apt-get` here.");
  EXPECT_EQ(texts[6], "Name | Value");
  EXPECT_EQ(kinds[6], BlockKind::kTableRow);
  EXPECT_TRUE(doc.blocks[6].header);
  EXPECT_EQ(texts[7], "alpha | 1");
  EXPECT_FALSE(doc.blocks[7].header);
  EXPECT_EQ(texts[8], "beta | 2");  // implied </td> and </tr>
  EXPECT_EQ(doc.blocks[8].table, doc.blocks[6].table);
}

TEST(HtmlTest, ArticleHeaderIsContentButPageHeaderIsNot) {
  ParsedDocument doc = ParseHtml(
      "<header><h1>Site name</h1></header><article><header><h1>Post title</h1></header>"
      "<p>Body</p></article>");
  auto h = Headings(doc);
  ASSERT_EQ(h.size(), 1u);
  EXPECT_EQ(h[0]->text, "Post title");
}

TEST(HtmlTest, AdmonitionHeadingsAreLabelsNotSections) {
  ParsedDocument doc = ParseHtml(
      "<div class=\"sect1\"><h2 id=\"json\">8.14. JSON Types</h2><p>Intro.</p>"
      "<div class=\"note\"><h3 class=\"title\">Note</h3><p>Boxed remark.</p></div>"
      "<p>Back in the section.</p><h3 id=\"ix\">8.14.4. Indexing</h3><p>GIN.</p></div>");
  std::vector<Chunk> chunks = ChunkBlocks(doc, "datatype-json.html", ChunkOptions{});
  ASSERT_EQ(chunks.size(), 2u);
  EXPECT_EQ(chunks[0].Section(), "8.14. JSON Types");
  EXPECT_EQ(chunks[0].text, "Intro.\n\nNote\n\nBoxed remark.\n\nBack in the section.");
  EXPECT_EQ(chunks[1].Section(), "8.14. JSON Types > 8.14.4. Indexing");
  EXPECT_EQ(chunks[1].anchor, "ix");
}

TEST(HtmlTest, MalformedInputSurvives) {
  const std::vector<std::string> inputs = {
      "",
      "<",
      "<<<>>>",
      "a < b and c > d",
      "<p>unclosed <b>bold <i>italic",
      "</div></div></p>text after stray end tags",
      "<!-- unterminated comment <p>hidden</p>",
      "<p title=\"unterminated attribute>text</p>",
      "<script>never closed",
      "<title>unterminated title",
      "<div class=toc><p>toc never closed<h2>Heading</h2>",
      "<h1><h2>nested headings</h2></h1>",
      "<table><td>cell without row<tr><td>x</table>",
      "<pre><pre>double pre</pre>",
      "<a id=x/><a name='y'>text",
      "&#xFFFFFFFFFFFF; &#99999999999; &;",
      std::string("\0\xff\xfe<p>\x80\x81 binary</p>", 18),
      "<![CDATA[ raw <p> ]]> after",
      "<?xml version='1.0'?><!DOCTYPE x><x:y z:w='1'>ns</x:y>",
  };
  for (const std::string& in : inputs) {
    ParsedDocument doc = ParseHtml(in);
    for (const Block& b : doc.blocks) EXPECT_FALSE(b.text.empty()) << in;
  }
  EXPECT_NE(AllText(ParseHtml("</div></div></p>text after stray end tags")).find("text after"),
            std::string::npos);
  EXPECT_NE(AllText(ParseHtml("a < b and c > d")).find("a < b and c > d"), std::string::npos);
  EXPECT_EQ(AllText(ParseHtml("<!-- unterminated comment <p>hidden</p>")), "");
}

TEST(HtmlTest, DeepNestingAndRandomInputTerminateQuickly) {
  std::string deep;
  for (int i = 0; i < 100000; ++i) deep += "<div><span>";
  deep += "deep text";
  const auto start = std::chrono::steady_clock::now();
  ParsedDocument doc = ParseHtml(deep);
  EXPECT_NE(AllText(doc).find("deep text"), std::string::npos);

  // Random soup of HTML fragments: never crash, never hang.
  const std::vector<std::string> pieces = {
      "<",        ">",         "</",    "/>",    "<p>",      "</p>",      "<div class=\"toc\">",
      "</div>",   "<h2 id=a>", "</h2>", "<pre>", "</pre>",   "<table>",   "<tr>",
      "<td>",     "</table>",  "<li>",  "<ul>",  "</ul>",    "&amp;",     "&#",
      "&#x1F",    ";",         "\"",    "'",     "=",        "<!--",      "-->",
      "<script>", "</script>", "text ", "\n",    "<a name=", "<![CDATA[", "]]>",
      "<br/>",    "\xC3",      "\xA9",  "<nav>", "</nav>",   "<title>"};
  std::mt19937 rng(12345);
  for (int round = 0; round < 3000; ++round) {
    std::string soup;
    const int n = static_cast<int>(rng() % 60);
    for (int k = 0; k < n; ++k) soup += pieces[rng() % pieces.size()];
    ParsedDocument random_doc = ParseHtml(soup);
    std::vector<Chunk> chunks = ChunkBlocks(random_doc, "soup.html", ChunkOptions{});
    for (const Chunk& c : chunks) EXPECT_FALSE(c.text.empty());
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(20));
}

}  // namespace
}  // namespace parley::knowledge::internal
