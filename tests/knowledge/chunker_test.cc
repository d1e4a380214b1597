// Markdown / plain-text reading and heading-aware chunking.

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "knowledge/document.h"
#include "knowledge/knowledge.h"

namespace parley::knowledge {
namespace {

std::string Repeat(const std::string& s, int n) {
  std::string out;
  for (int i = 0; i < n; ++i) out += s;
  return out;
}

// "Sentence number N of the paragraph." repeated: ~40 chars per sentence.
std::string Paragraph(int sentences, const std::string& word = "filler") {
  std::string out;
  for (int i = 0; i < sentences; ++i) {
    if (i > 0) out += " ";
    out += "This " + word + " sentence is number " + std::to_string(i) + ".";
  }
  return out;
}

TEST(ChunkerTest, HeadingPathsAnchorsAndTitle) {
  const std::string md =
      "---\ntitle: front matter is skipped\n---\n"
      "# Install Guide\n\nIntro text.\n\n"
      "## On Linux\n\nUse the package.\n\n"
      "### Debian & Ubuntu\n\nRun apt.\n\n"
      "## On Windows ##\n\nRun the installer.\n\n"
      "## On Linux\n\nA second section with the same name.\n\n"
      "Setext heading\n--------------\n\nUnder setext.\n\n"
      "## Custom anchor {#my-anchor}\n\nCustom.\n";
  std::vector<Chunk> chunks = ChunkDocument("docs/install.md", md, ChunkOptions{});
  ASSERT_EQ(chunks.size(), 7u);
  EXPECT_EQ(chunks[0].title, "Install Guide");
  EXPECT_EQ(chunks[0].source, "docs/install.md");
  EXPECT_EQ(chunks[0].Section(), "Install Guide");
  EXPECT_EQ(chunks[0].anchor, "install-guide");
  EXPECT_EQ(chunks[0].text, "Intro text.");
  EXPECT_EQ(chunks[1].Section(), "Install Guide > On Linux");
  EXPECT_EQ(chunks[1].anchor, "on-linux");
  EXPECT_EQ(chunks[2].heading_path,
            (std::vector<std::string>{"Install Guide", "On Linux", "Debian & Ubuntu"}));
  EXPECT_EQ(chunks[2].anchor, "debian--ubuntu");
  EXPECT_EQ(chunks[3].Section(), "Install Guide > On Windows");  // closing #s removed
  EXPECT_EQ(chunks[4].anchor, "on-linux-1");                     // duplicate slug
  EXPECT_EQ(chunks[5].Section(), "Install Guide > Setext heading");
  EXPECT_EQ(chunks[6].anchor, "my-anchor");
  EXPECT_EQ(chunks[6].Section(), "Install Guide > Custom anchor");
  for (const Chunk& c : chunks) {
    EXPECT_EQ(c.text.find("front matter"), std::string::npos);
    EXPECT_EQ(c.ToCitation().source, "docs/install.md");
  }
}

TEST(ChunkerTest, GithubSlugs) {
  using internal::GithubSlug;
  EXPECT_EQ(GithubSlug("Hello, World!"), "hello-world");
  EXPECT_EQ(GithubSlug("API v2.0 (beta)"), "api-v20-beta");
  EXPECT_EQ(GithubSlug("snake_case and-dash"), "snake_case-and-dash");
  EXPECT_EQ(GithubSlug("C++ & Rust"), "c--rust");
  EXPECT_EQ(GithubSlug("Caf\xC3\xA9 \xE2\x80\x94 menu"), "caf\xC3\xA9--menu");
}

TEST(ChunkerTest, TitleFallsBackToFileName) {
  std::vector<Chunk> md = ChunkDocument("a/notes.md", "Just text.\n\n## Sub\n\nMore.", {});
  ASSERT_FALSE(md.empty());
  EXPECT_EQ(md[0].title, "notes.md");
  EXPECT_TRUE(md[0].heading_path.empty());
  std::vector<Chunk> txt = ChunkDocument("readme.txt", "# not a heading in plain text\n", {});
  ASSERT_EQ(txt.size(), 1u);
  EXPECT_EQ(txt[0].title, "readme.txt");
  EXPECT_TRUE(txt[0].heading_path.empty());
  EXPECT_EQ(txt[0].anchor, "");
}

TEST(ChunkerTest, CodeFencesAreNeverSplitNorParsed) {
  const std::string code_body = Repeat("    do_something();  // # not a heading\n", 120);
  const std::string md = "# Guide\n\n" + Paragraph(10) + "\n\n```cpp\n# not a heading either\n" +
                         code_body + "```\n\nAfter the code.\n\n~~~\nshort tilde fence\n~~~\n";
  ChunkOptions options;
  options.target_chars = 400;
  options.max_chars = 800;
  std::vector<Chunk> chunks = ChunkDocument("guide.md", md, options);
  int fences_seen = 0;
  for (const Chunk& c : chunks) {
    EXPECT_EQ(c.Section(), "Guide");  // the '#' lines inside fences are not headings
    size_t open = c.text.find("```cpp");
    if (open != std::string::npos) {
      ++fences_seen;
      // The whole block is in this one chunk although it is longer than max_chars.
      EXPECT_NE(c.text.find(code_body), std::string::npos);
      EXPECT_NE(c.text.find("```", open + 6), std::string::npos);
      EXPECT_GT(c.text.size(), options.max_chars);
    }
    if (c.text.find("short tilde fence") != std::string::npos) {
      EXPECT_NE(c.text.find("~~~\nshort tilde fence\n~~~"), std::string::npos);
    }
  }
  EXPECT_EQ(fences_seen, 1);
}

TEST(ChunkerTest, UnclosedFenceRunsToTheEnd) {
  std::vector<Chunk> chunks =
      ChunkDocument("x.md", "# T\n\n```\ncode\n## still code\n", ChunkOptions{});
  ASSERT_EQ(chunks.size(), 1u);
  EXPECT_EQ(chunks[0].Section(), "T");
  EXPECT_NE(chunks[0].text.find("## still code"), std::string::npos);
}

TEST(ChunkerTest, TableRowsAreNeverSplitAndHeadersRepeat) {
  std::string table = "| key | value |\n|-----|-------|\n";
  std::vector<std::string> rows;
  for (int i = 0; i < 60; ++i) {
    std::string row = "| k" + std::to_string(i) + " | " + Repeat("v", 20 + i % 7) + " |";
    rows.push_back(row);
    table += row + "\n";
  }
  ChunkOptions options;
  options.target_chars = 300;
  options.max_chars = 600;
  std::vector<Chunk> chunks = ChunkDocument("t.md", "# Table\n\n" + table, options);
  ASSERT_GT(chunks.size(), 3u);
  size_t rows_found = 0;
  for (const Chunk& c : chunks) {
    EXPECT_LE(c.text.size(), options.max_chars);
    // Every line is a whole row (or the repeated header).
    size_t start = 0;
    while (start < c.text.size()) {
      size_t end = c.text.find('\n', start);
      if (end == std::string::npos) end = c.text.size();
      const std::string line = c.text.substr(start, end - start);
      EXPECT_TRUE(line.front() == '|' && line.back() == '|') << line;
      if (line.size() > 3 && line.rfind("| k", 0) == 0 && line[3] >= '0' && line[3] <= '9') {
        ++rows_found;
      }
      start = end + 1;
    }
    EXPECT_EQ(c.text.rfind("| key | value |\n|-----|-------|", 0), 0u) << c.text;
  }
  EXPECT_EQ(rows_found, rows.size());
}

TEST(ChunkerTest, SizeTargetsRespected) {
  std::string md = "# Long\n\n";
  for (int p = 0; p < 40; ++p) md += Paragraph(3 + p % 5) + "\n\n";
  md += "## Overlong paragraph\n\n" + Paragraph(200, "long") + "\n";
  ChunkOptions options;
  options.target_chars = 500;
  options.max_chars = 900;
  std::vector<Chunk> chunks = ChunkDocument("long.md", md, options);
  ASSERT_GT(chunks.size(), 10u);
  size_t near_target = 0;
  size_t overlong_pieces = 0;
  for (const Chunk& c : chunks) {
    EXPECT_LE(c.text.size(), options.max_chars) << c.text;
    if (c.text.size() >= options.target_chars / 2) ++near_target;
    if (c.Section() == "Long > Overlong paragraph") {
      ++overlong_pieces;
      // Cut at sentence ends.
      EXPECT_EQ(c.text.back(), '.') << c.text;
      EXPECT_EQ(c.text.rfind("This long sentence", 0), 0u) << c.text;
    }
  }
  EXPECT_GT(overlong_pieces, 5u);
  EXPECT_GE(near_target * 10, chunks.size() * 8);  // most chunks are near the target
}

TEST(ChunkerTest, UnbreakableTextIsHardSplitAtMax) {
  std::string blob = Repeat("x", 5000);
  ChunkOptions options;
  options.target_chars = 1000;
  options.max_chars = 2000;
  std::vector<Chunk> chunks = ChunkDocument("blob.txt", blob, options);
  ASSERT_GE(chunks.size(), 3u);
  size_t total = 0;
  for (const Chunk& c : chunks) {
    EXPECT_LE(c.text.size(), options.max_chars);
    total += c.text.size();
  }
  EXPECT_EQ(total, blob.size());
}

TEST(ChunkerTest, ChunksNeverSpanSections) {
  std::string md;
  for (int s = 0; s < 12; ++s) {
    md +=
        "## Section " + std::to_string(s) + "\n\n" + Paragraph(2, "s" + std::to_string(s)) + "\n\n";
  }
  std::vector<Chunk> chunks = ChunkDocument("s.md", md, ChunkOptions{});
  ASSERT_EQ(chunks.size(), 12u);  // short sections are not merged
  for (size_t i = 0; i < chunks.size(); ++i) {
    EXPECT_EQ(chunks[i].Section(), "Section " + std::to_string(i));
    EXPECT_NE(chunks[i].text.find("This s" + std::to_string(i) + " sentence"), std::string::npos);
  }
}

TEST(ChunkerTest, ListsAndParagraphs) {
  const std::string md =
      "# L\n\nIntro paragraph\ncontinues here.\n\n- one\n- two\n  continued\n* three\n1. four\n";
  std::vector<Chunk> chunks = ChunkDocument("l.markdown", md, ChunkOptions{});
  ASSERT_EQ(chunks.size(), 1u);
  EXPECT_EQ(chunks[0].text,
            "Intro paragraph\ncontinues here.\n\n- one\n- two\n  continued\n* three\n1. four");
}

TEST(ChunkerTest, HtmlFilesGoThroughTheHtmlReader) {
  std::vector<Chunk> chunks = ChunkDocument(
      "page.HTM", "<title>T</title><h2 id=\"s\">Sec</h2><p>Body &amp; more</p>", ChunkOptions{});
  ASSERT_EQ(chunks.size(), 1u);
  EXPECT_EQ(chunks[0].title, "T");
  EXPECT_EQ(chunks[0].Section(), "Sec");
  EXPECT_EQ(chunks[0].anchor, "s");
  EXPECT_EQ(chunks[0].text, "Body & more");
}

TEST(AnalyzeTermsTest, LowercasesStemsAndDropsStopwords) {
  EXPECT_EQ(AnalyzeTerms("How do I install the Packages? Running installers!"),
            (std::vector<std::string>{"instal", "packag", "run", "instal"}));
  EXPECT_EQ(AnalyzeTerms("C++ and AT&T don't 3.14 e-mail"),
            (std::vector<std::string>{"c++", "at&t", "3.14", "e", "mail"}));
  EXPECT_TRUE(AnalyzeTerms("").empty());
  EXPECT_TRUE(AnalyzeTerms("the of and is ?!").empty());
  EXPECT_EQ(AnalyzeTerms("Caf\xC3\xA9S"), (std::vector<std::string>{"caf\xC3\xA9"}));
}

}  // namespace
}  // namespace parley::knowledge
