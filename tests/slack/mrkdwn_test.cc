#include "adapters/slack/mrkdwn.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace parley::slack {
namespace {

TEST(MarkdownToMrkdwnTest, Emphasis) {
  EXPECT_EQ(MarkdownToMrkdwn("**bold** and __bold__"), "*bold* and *bold*");
  EXPECT_EQ(MarkdownToMrkdwn("*italic* and _italic_"), "_italic_ and _italic_");
  EXPECT_EQ(MarkdownToMrkdwn("~~gone~~"), "~gone~");
  EXPECT_EQ(MarkdownToMrkdwn("***both***"), "*_both_*");
  EXPECT_EQ(MarkdownToMrkdwn("**bold with *italic* inside**"), "*bold with _italic_ inside*");
  EXPECT_EQ(MarkdownToMrkdwn("snake_case_name stays"), "snake_case_name stays");
  EXPECT_EQ(MarkdownToMrkdwn("2 * 3 * 4"), "2 * 3 * 4");
  EXPECT_EQ(MarkdownToMrkdwn("a **unclosed"), "a **unclosed");
  EXPECT_EQ(MarkdownToMrkdwn("\\*not italic\\*"), "*not italic*");
}

TEST(MarkdownToMrkdwnTest, LinksAndEscaping) {
  EXPECT_EQ(MarkdownToMrkdwn("see [the docs](https://x.example/a?b=1&c=2)"),
            "see <https://x.example/a?b=1&amp;c=2|the docs>");
  EXPECT_EQ(MarkdownToMrkdwn("[**Docs**](https://x.example/a_(b))"),
            "<https://x.example/a_(b)|Docs>");
  EXPECT_EQ(MarkdownToMrkdwn("[t](https://x.example \"title\")"), "<https://x.example|t>");
  EXPECT_EQ(MarkdownToMrkdwn("![diagram](https://x.example/d.png)"),
            "<https://x.example/d.png|diagram>");
  EXPECT_EQ(MarkdownToMrkdwn("[a<b](https://x.example/p|q)"), "<https://x.example/p%7Cq|a&lt;b>");
  EXPECT_EQ(MarkdownToMrkdwn("[guide](docs/guide.md)"), "guide (docs/guide.md)");
  EXPECT_EQ(MarkdownToMrkdwn("<https://x.example/?a&b>"), "<https://x.example/?a&amp;b>");
  EXPECT_EQ(MarkdownToMrkdwn("a < b && c > d"), "a &lt; b &amp;&amp; c &gt; d");
  EXPECT_EQ(MarkdownToMrkdwn("<@U123> <!here>"), "&lt;@U123&gt; &lt;!here&gt;");  // no pings
  EXPECT_EQ(MarkdownToMrkdwn("[not a link] (x)"), "[not a link] (x)");
}

TEST(MarkdownToMrkdwnTest, CodeIsNotConverted) {
  EXPECT_EQ(MarkdownToMrkdwn("run `make **all** <x>` now"), "run `make **all** &lt;x&gt;` now");
  EXPECT_EQ(MarkdownToMrkdwn("```cpp\nint *p = **q; // [a](b)\n# not a heading\n- no\n```"),
            "```\nint *p = **q; // [a](b)\n# not a heading\n- no\n```");
  EXPECT_EQ(MarkdownToMrkdwn("~~~\na && b\n~~~"), "```\na &amp;&amp; b\n```");
  // An unclosed fence is closed so the rest of the message is not swallowed.
  EXPECT_EQ(MarkdownToMrkdwn("```\ncode"), "```\ncode\n```");
  // ```` fences may contain ``` lines.
  EXPECT_EQ(MarkdownToMrkdwn("````\n```\n````"), "```\n```\n```");
}

TEST(MarkdownToMrkdwnTest, BlocksAndLists) {
  EXPECT_EQ(MarkdownToMrkdwn("# Title"), "*Title*");
  EXPECT_EQ(MarkdownToMrkdwn("### **Bold** title ##"), "*Bold title*");
  EXPECT_EQ(MarkdownToMrkdwn("#hashtag"), "#hashtag");
  EXPECT_EQ(MarkdownToMrkdwn("- one\n* two\n  + nested"), "• one\n• two\n  • nested");
  EXPECT_EQ(MarkdownToMrkdwn("1. first\n2) second"), "1. first\n2) second");
  EXPECT_EQ(MarkdownToMrkdwn("- [ ] todo\n- [x] done"), "• ☐ todo\n• ☑ done");
  EXPECT_EQ(MarkdownToMrkdwn("> quoted **text**"), "> quoted *text*");
  EXPECT_EQ(MarkdownToMrkdwn("a\n\n---\n\nb"), "a\n\n──────────\n\nb");
  EXPECT_EQ(MarkdownToMrkdwn("line\r\nnext"), "line\nnext");
  EXPECT_EQ(MarkdownToMrkdwn(""), "");
}

TEST(MarkdownToMrkdwnTest, HostileInputStaysFastAndBounded) {
  std::string stars = "a" + std::string(20000, '*');
  EXPECT_EQ(MarkdownToMrkdwn(stars), stars);
  std::string angles;
  for (int i = 0; i < 20000; ++i) angles += "<http://a ";
  EXPECT_EQ(MarkdownToMrkdwn(angles).size(), angles.size() + 3 * 20000);
  std::string unmatched;
  for (int i = 0; i < 20000; ++i) unmatched += "*a _b ~~c [d ";
  EXPECT_FALSE(MarkdownToMrkdwn(unmatched).empty());
  std::string nested;
  for (int i = 0; i < 5000; ++i) nested += i % 2 ? "_x " : "*x ";
  for (int i = 0; i < 5000; ++i) nested += i % 2 ? " x*" : " x_";
  EXPECT_FALSE(MarkdownToMrkdwn(nested).empty());
}

// ---------------------------------------------------------------------------------------------

size_t CountFences(const std::string& s) {
  size_t n = 0;
  for (size_t pos = 0; (pos = s.find("```", pos)) != std::string::npos; pos += 3) ++n;
  return n;
}

std::string Join(const std::vector<std::string>& parts) {
  std::string all;
  for (const std::string& p : parts) all += p;
  return all;
}

TEST(SplitForSlackTest, ShortTextIsOnePart) {
  EXPECT_EQ(SplitForSlack("hello\n\nworld"), (std::vector<std::string>{"hello\n\nworld"}));
  EXPECT_TRUE(SplitForSlack("").empty());
  EXPECT_TRUE(SplitForSlack("\n\n  \n").empty());
}

TEST(SplitForSlackTest, SplitsAtParagraphBoundaries) {
  const std::string a(60, 'a'), b(60, 'b'), c(60, 'c');
  std::vector<std::string> parts = SplitForSlack(a + "\n\n" + b + "\n\n" + c, 130);
  ASSERT_EQ(parts.size(), 2u);
  EXPECT_EQ(parts[0], a + "\n\n" + b);
  EXPECT_EQ(parts[1], c);
}

TEST(SplitForSlackTest, LongParagraphSplitsAtLinesThenWords) {
  std::string para;
  for (int i = 0; i < 30; ++i) para += "word" + std::to_string(i) + " ";
  para += "<https://x.example/a|a long link label that must stay whole>";
  std::vector<std::string> parts = SplitForSlack(para, 50);
  ASSERT_GT(parts.size(), 3u);
  for (const std::string& p : parts) {
    EXPECT_LE(p.size(), 50u) << p;
    EXPECT_NE(p.front(), ' ');
  }
  EXPECT_EQ(parts[0], "word0 word1 word2 word3 word4 word5 word6 word7");
  // Spaces inside <…> are not cut points: the cut falls before the link, which (being longer
  // than the limit on its own) is then cut at a byte position.
  bool link_starts_a_part = false;
  for (const std::string& p : parts) link_starts_a_part |= p.rfind("<https://x.example/a|", 0) == 0;
  EXPECT_TRUE(link_starts_a_part);
}

TEST(SplitForSlackTest, CodeBlockIsNeverSplitWhenItFits) {
  const std::string intro(80, 'i');
  const std::string code = "```\nline one\n\nline two after a blank line\n```";
  std::vector<std::string> parts = SplitForSlack(intro + "\n\n" + code + "\n\noutro", 100);
  ASSERT_EQ(parts.size(), 2u);
  EXPECT_EQ(parts[0], intro);
  EXPECT_EQ(parts[1], code + "\n\noutro");
}

TEST(SplitForSlackTest, OversizedCodeBlockBecomesSeveralFencedBlocks) {
  std::string code = "```\n";
  for (int i = 0; i < 200; ++i) code += "x = " + std::to_string(i) + " &amp; y\n";
  code += std::string(300, 'z') + "\n```";
  std::vector<std::string> parts = SplitForSlack("before\n\n" + code + "\n\nafter", 200);
  ASSERT_GT(parts.size(), 10u);
  std::string content;
  for (const std::string& p : parts) {
    EXPECT_LE(p.size(), 200u);
    EXPECT_EQ(CountFences(p) % 2, 0u) << p;
    EXPECT_EQ(p.find("&am\n"), std::string::npos);
  }
  EXPECT_EQ(parts.front().rfind("before\n\n```\nx = 0 &amp; y\n", 0), 0u) << parts.front();
  EXPECT_EQ(parts.back().substr(parts.back().size() - 5), "after");
  // Nothing lost: every numbered line and all 300 z's survive.
  const std::string all = Join(parts);
  for (int i = 0; i < 200; ++i) {
    EXPECT_NE(all.find("x = " + std::to_string(i) + " &amp; y"), std::string::npos) << i;
  }
  size_t zs = 0;
  for (char c : all) zs += c == 'z';
  EXPECT_EQ(zs, 300u);
}

TEST(SplitForSlackTest, NeverCutsUtf8OrEntities) {
  std::string s;
  for (int i = 0; i < 300; ++i) s += "é&amp;€";  // no whitespace: hard cuts only
  std::vector<std::string> parts = SplitForSlack(s, 37);
  ASSERT_GT(parts.size(), 1u);
  std::string all;
  for (const std::string& p : parts) {
    EXPECT_LE(p.size(), 37u);
    EXPECT_NE(static_cast<unsigned char>(p[0]) & 0xC0, 0x80u) << "starts mid-sequence";
    EXPECT_NE(p[0], 'a');  // would be the middle of "&amp;"
    EXPECT_NE(p[0], ';');
    all += p;
  }
  EXPECT_EQ(all, s);
}

TEST(SplitForSlackTest, TinyLimitIsClampedAndUnclosedFenceIsClosed) {
  std::vector<std::string> parts = SplitForSlack("```\nabcdefghijklmnopqrstuvwxyz", 1);
  ASSERT_GT(parts.size(), 1u);
  for (const std::string& p : parts) {
    EXPECT_LE(p.size(), 16u);
    EXPECT_EQ(CountFences(p), 2u) << p;
  }
}

TEST(SplitForSlackTest, ConvertedMarkdownRoundTrip) {
  std::string md;
  for (int i = 0; i < 50; ++i) {
    md += "## Step " + std::to_string(i) + "\n\nRun **this** & that:\n\n```bash\necho " +
          std::to_string(i) + " > out.txt\n```\n\n";
  }
  std::vector<std::string> parts = SplitForSlack(MarkdownToMrkdwn(md), 500);
  ASSERT_GT(parts.size(), 4u);
  size_t steps = 0;
  for (const std::string& p : parts) {
    EXPECT_LE(p.size(), 500u);
    EXPECT_EQ(CountFences(p) % 2, 0u);
    for (size_t pos = 0; (pos = p.find("*Step ", pos)) != std::string::npos; ++pos) ++steps;
  }
  EXPECT_EQ(steps, 50u);
}

}  // namespace
}  // namespace parley::slack
