// KnowledgeIndex on disk: incremental ingest, access tags, ranking, restart, concurrency,
// follow-up context, confidence and failure handling.

#include <gtest/gtest.h>
#include <unistd.h>
#include <xapian.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "knowledge/knowledge.h"
#include "tests/knowledge/test_util.h"

namespace parley::knowledge {
namespace {

using testing::TempDir;
using testing::WriteFile;

std::unique_ptr<KnowledgeIndex> OpenIndex(const std::string& dir) {
  auto opened = KnowledgeIndex::Open(dir);
  EXPECT_TRUE(opened.ok()) << opened.status().ToString();
  if (!opened.ok()) return nullptr;
  return std::move(opened).value();
}

std::vector<Passage> Ask(KnowledgeIndex& index, const std::string& question,
                         const std::vector<std::string>& tags = {}, const std::string& context = "",
                         size_t limit = 5) {
  auto result = index.Retrieve(RetrievalQuery{question, context}, AccessFilter{tags}, limit);
  EXPECT_TRUE(result.ok()) << result.status().ToString();
  return result.ok() ? *result : std::vector<Passage>();
}

bool AnyFrom(const std::vector<Passage>& passages, const std::string& source) {
  for (const Passage& p : passages) {
    if (p.chunk.source == source) return true;
  }
  return false;
}

// A long filler paragraph of words that appear in no test question.
std::string Filler(int sentences) {
  std::string out;
  for (int i = 0; i < sentences; ++i) {
    out += "Lorem ipsum dolor sit amet consectetur adipiscing elit sed eiusmod tempor " +
           std::to_string(i) + ". ";
  }
  return out;
}

class IndexTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(tmp_.path().empty());
    docs_ = tmp_.Sub("docs");
    index_dir_ = tmp_.Sub("index");
  }

  TempDir tmp_;
  std::string docs_;
  std::string index_dir_;
};

TEST_F(IndexTest, IncrementalIngest) {
  ASSERT_TRUE(WriteFile(docs_ + "/a.md", "# Alpha\n\nThe aardvark lives here.\n"));
  ASSERT_TRUE(WriteFile(docs_ + "/sub/b.md", "# Beta\n\nThe bumblebee version one.\n"));
  ASSERT_TRUE(WriteFile(docs_ + "/c.txt", "Cassowary notes.\n\nSecond paragraph.\n"));
  ASSERT_TRUE(WriteFile(docs_ + "/ignored.pdf", "not ingested"));
  ASSERT_TRUE(WriteFile(docs_ + "/.hidden/d.md", "# Hidden\n\ndodo\n"));
  auto index = OpenIndex(index_dir_);
  ASSERT_TRUE(index);
  EXPECT_EQ(index->ChunkCount(), 0u);

  const std::vector<SourceSpec> sources = {SourceSpec{docs_, {}, ""}};
  auto first = index->Ingest(sources, ChunkOptions{});
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_EQ(first->files_seen, 3u);
  EXPECT_EQ(first->files_indexed, 3u);
  EXPECT_EQ(first->files_unchanged, 0u);
  EXPECT_EQ(first->chunks_total, 3u);
  EXPECT_TRUE(first->errors.empty());
  EXPECT_EQ(std::set<std::string>(first->indexed_files.begin(), first->indexed_files.end()),
            (std::set<std::string>{docs_ + "/a.md", docs_ + "/sub/b.md", docs_ + "/c.txt"}));
  EXPECT_EQ(index->ChunkCount(), 3u);
  EXPECT_EQ(index->FileCount(), 3u);
  EXPECT_TRUE(AnyFrom(Ask(*index, "bumblebee"), "sub/b.md"));
  EXPECT_TRUE(Ask(*index, "dodo").empty());  // hidden directories are skipped

  // Unchanged: nothing re-indexed.
  auto second = index->Ingest(sources, ChunkOptions{});
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(second->files_indexed, 0u);
  EXPECT_EQ(second->files_unchanged, 3u);
  EXPECT_EQ(second->files_removed, 0u);
  EXPECT_EQ(second->chunks_total, 3u);

  // Modified: the old chunks are replaced.
  ASSERT_TRUE(WriteFile(docs_ + "/sub/b.md",
                        "# Beta\n\nThe beetle version two.\n\n## More\n\nExtra section.\n"));
  auto third = index->Ingest(sources, ChunkOptions{});
  ASSERT_TRUE(third.ok());
  EXPECT_EQ(third->files_indexed, 1u);
  EXPECT_EQ(third->files_unchanged, 2u);
  ASSERT_EQ(third->indexed_files.size(), 1u);
  EXPECT_EQ(third->indexed_files[0], docs_ + "/sub/b.md");
  EXPECT_EQ(index->ChunkCount(), 4u);
  EXPECT_TRUE(Ask(*index, "bumblebee").empty());
  EXPECT_TRUE(AnyFrom(Ask(*index, "beetle"), "sub/b.md"));

  // Deleted: its chunks go.
  ASSERT_TRUE(std::filesystem::remove(docs_ + "/c.txt"));
  auto fourth = index->Ingest(sources, ChunkOptions{});
  ASSERT_TRUE(fourth.ok());
  EXPECT_EQ(fourth->files_removed, 1u);
  EXPECT_EQ(fourth->files_indexed, 0u);
  EXPECT_EQ(fourth->chunks_total, 3u);
  EXPECT_EQ(index->ChunkCount(), 3u);
  EXPECT_EQ(index->FileCount(), 2u);
  EXPECT_TRUE(Ask(*index, "cassowary").empty());

  // Changed chunk options re-index everything.
  ChunkOptions small;
  small.target_chars = 10;
  small.max_chars = 20;
  auto fifth = index->Ingest(sources, small);
  ASSERT_TRUE(fifth.ok());
  EXPECT_EQ(fifth->files_indexed, 2u);

  // Changed tags or url_base re-index the source's files.
  auto sixth = index->Ingest({SourceSpec{docs_, {}, "https://docs.example/"}}, small);
  ASSERT_TRUE(sixth.ok());
  EXPECT_EQ(sixth->files_indexed, 2u);
  auto seventh = index->Ingest({SourceSpec{docs_, {"staff"}, "https://docs.example/"}}, small);
  ASSERT_TRUE(seventh.ok());
  EXPECT_EQ(seventh->files_indexed, 2u);

  // A source dropped from the list: its files are removed.
  auto eighth = index->Ingest({}, small);
  ASSERT_TRUE(eighth.ok());
  EXPECT_EQ(eighth->files_removed, 2u);
  EXPECT_EQ(index->ChunkCount(), 0u);
  EXPECT_EQ(index->FileCount(), 0u);
}

TEST_F(IndexTest, SingleFileSourceAndCitationUrls) {
  ASSERT_TRUE(WriteFile(docs_ + "/guide.md",
                        "# User Guide\n\nPreface words.\n\n## Getting Started\n\nZeppelin boarding "
                        "instructions.\n"));
  ASSERT_TRUE(WriteFile(tmp_.Sub("notes.txt"), "Plain xylophone notes.\n"));
  auto index = OpenIndex(index_dir_);
  ASSERT_TRUE(index);
  auto report = index->Ingest({SourceSpec{docs_, {}, "https://kb.example/docs/"},
                               SourceSpec{tmp_.Sub("notes.txt"), {}, "https://kb.example/n/"}},
                              ChunkOptions{});
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  EXPECT_EQ(report->files_indexed, 2u);

  auto zeppelin = Ask(*index, "zeppelin boarding");
  ASSERT_FALSE(zeppelin.empty());
  EXPECT_EQ(zeppelin[0].chunk.url, "https://kb.example/docs/guide.md#getting-started");
  Citation citation = zeppelin[0].chunk.ToCitation();
  EXPECT_EQ(citation.title, "User Guide");
  EXPECT_EQ(citation.section, "User Guide > Getting Started");
  EXPECT_EQ(citation.source, "guide.md");

  auto xylophone = Ask(*index, "xylophone");
  ASSERT_FALSE(xylophone.empty());
  EXPECT_EQ(xylophone[0].chunk.source, "notes.txt");
  EXPECT_EQ(xylophone[0].chunk.url, "https://kb.example/n/notes.txt");  // no anchor, no '#'
}

TEST_F(IndexTest, AccessTagsFilterRestrictedChunks) {
  ASSERT_TRUE(WriteFile(docs_ + "/public/faq.md", "# FAQ\n\nOpening hours and the refund form.\n"));
  ASSERT_TRUE(WriteFile(docs_ + "/internal/runbook.md",
                        "# Runbook\n\nThe refund override password procedure for staff.\n"));
  auto index = OpenIndex(index_dir_);
  ASSERT_TRUE(index);
  auto report = index->Ingest({SourceSpec{docs_ + "/public", {}, ""},
                               SourceSpec{docs_ + "/internal", {"staff", "ops"}, ""}},
                              ChunkOptions{});
  ASSERT_TRUE(report.ok()) << report.status().ToString();

  for (const auto& tags : std::vector<std::vector<std::string>>{{}, {"sales"}, {"Staff"}}) {
    for (const char* question : {"refund override password", "runbook", "refund", "staff"}) {
      for (const Passage& p : Ask(*index, question, tags, "runbook override", 10)) {
        EXPECT_TRUE(p.chunk.tags.empty()) << question << " leaked " << p.chunk.source;
      }
    }
  }
  auto with_tag = Ask(*index, "refund override password", {"ops"});
  ASSERT_FALSE(with_tag.empty());
  EXPECT_EQ(with_tag[0].chunk.source, "runbook.md");
  EXPECT_EQ(with_tag[0].chunk.tags, (std::vector<std::string>{"staff", "ops"}));
  auto public_too = Ask(*index, "refund", {"staff"});
  EXPECT_TRUE(AnyFrom(public_too, "faq.md"));
  EXPECT_TRUE(AnyFrom(public_too, "runbook.md"));
}

TEST_F(IndexTest, HeadingMatchOutranksPassingMention) {
  ASSERT_TRUE(
      WriteFile(docs_ + "/long.md", "# Operations\n\n" + Filler(12) +
                                        "Once a year someone may mention the quokka in passing. " +
                                        Filler(12) + "\n"));
  ASSERT_TRUE(WriteFile(docs_ + "/topic.md",
                        "# Wildlife\n\n## Quokka\n\nSmall marsupials found on islands.\n"));
  auto index = OpenIndex(index_dir_);
  ASSERT_TRUE(index);
  ChunkOptions options;
  options.target_chars = 5000;
  options.max_chars = 8000;
  ASSERT_TRUE(index->Ingest({SourceSpec{docs_, {}, ""}}, options).ok());
  auto passages = Ask(*index, "tell me about the quokka");
  ASSERT_EQ(passages.size(), 2u);
  EXPECT_EQ(passages[0].chunk.source, "topic.md");
  EXPECT_EQ(passages[0].chunk.Section(), "Wildlife > Quokka");
  EXPECT_GT(passages[0].score, passages[1].score);
}

TEST_F(IndexTest, RestartNeedsNoReindexAndGivesTheSameResults) {
  for (int i = 0; i < 8; ++i) {
    ASSERT_TRUE(WriteFile(docs_ + "/doc" + std::to_string(i) + ".md",
                          "# Document " + std::to_string(i) + "\n\nShared topic galaxy words " +
                              std::string(static_cast<size_t>(i + 1), 'x') + " nebula " +
                              (i % 2 ? "comet" : "asteroid") + ".\n"));
  }
  const std::vector<SourceSpec> sources = {SourceSpec{docs_, {}, ""}};
  std::vector<Passage> before;
  {
    auto index = OpenIndex(index_dir_);
    ASSERT_TRUE(index);
    ASSERT_TRUE(index->Ingest(sources, ChunkOptions{}).ok());
    before = Ask(*index, "galaxy nebula comet");
  }
  auto index = OpenIndex(index_dir_);
  ASSERT_TRUE(index);
  EXPECT_EQ(index->ChunkCount(), 8u);
  EXPECT_EQ(index->FileCount(), 8u);
  std::vector<Passage> after = Ask(*index, "galaxy nebula comet");
  ASSERT_EQ(before.size(), after.size());
  ASSERT_FALSE(after.empty());
  for (size_t i = 0; i < after.size(); ++i) {
    EXPECT_EQ(before[i].chunk.source, after[i].chunk.source);
    EXPECT_EQ(before[i].chunk.text, after[i].chunk.text);
    EXPECT_DOUBLE_EQ(before[i].score, after[i].score);
    EXPECT_DOUBLE_EQ(before[i].confidence, after[i].confidence);
  }
  auto report = index->Ingest(sources, ChunkOptions{});
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->files_indexed, 0u);
  EXPECT_EQ(report->files_unchanged, 8u);
}

TEST_F(IndexTest, ConcurrentRetrieveDuringIngest) {
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(
        WriteFile(docs_ + "/f" + std::to_string(i) + ".md",
                  "# File " + std::to_string(i) + "\n\nStable walrus content " + Filler(3) + "\n"));
  }
  auto index = OpenIndex(index_dir_);
  ASSERT_TRUE(index);
  const std::vector<SourceSpec> sources = {SourceSpec{docs_, {}, ""}};
  ASSERT_TRUE(index->Ingest(sources, ChunkOptions{}).ok());

  std::atomic<bool> stop{false};
  std::atomic<int> queries{0};
  std::atomic<int> failures{0};
  std::atomic<int> empty_results{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 4; ++t) {
    readers.emplace_back([&, t] {
      const std::string questions[] = {"walrus", "walrus content file", "revision penguin",
                                       "\"unbalanced quote", "lorem ipsum"};
      for (int i = t; !stop.load(); ++i) {
        const int which = i % 5;
        auto r = index->Retrieve(RetrievalQuery{questions[which], ""}, AccessFilter{}, 5);
        if (!r.ok()) {
          ADD_FAILURE() << r.status().ToString();
          ++failures;
        } else if (r->empty() && which < 2) {
          ++empty_results;  // "walrus" is in every revision of every file
        }
        ++queries;
      }
    });
  }
  for (int round = 0; round < 12; ++round) {
    ASSERT_TRUE(WriteFile(
        docs_ + "/f" + std::to_string(round % 20) + ".md",
        "# File\n\nStable walrus content, revision " + std::to_string(round) + " penguin.\n"));
    if (round % 4 == 3) std::filesystem::remove(docs_ + "/f" + std::to_string(round) + ".md");
    auto report = index->Ingest(sources, ChunkOptions{});
    EXPECT_TRUE(report.ok()) << report.status().ToString();
  }
  // Let the readers run against the final revision too (poll with a deadline, no sleeping).
  const int target = queries.load() + 200;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (queries.load() < target && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::yield();
  }
  stop = true;
  for (auto& t : readers) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(empty_results.load(), 0);
  EXPECT_GT(queries.load(), 200);
  auto final_results = Ask(*index, "revision 10 penguin");
  ASSERT_FALSE(final_results.empty());
  EXPECT_NE(final_results[0].chunk.text.find("revision 10"), std::string::npos);
}

TEST_F(IndexTest, ContextOnlyBoosts) {
  ASSERT_TRUE(WriteFile(docs_ + "/backup.md",
                        "# Backups\n\n## Restore on Linux\n\nRestore with the tarball command.\n\n"
                        "## Restore on Windows\n\nRestore with the wizard tool.\n"));
  ASSERT_TRUE(WriteFile(docs_ + "/windows.md",
                        "# Windows\n\nWindows installation and the registry editor.\n"));
  auto index = OpenIndex(index_dir_);
  ASSERT_TRUE(index);
  ASSERT_TRUE(index->Ingest({SourceSpec{docs_, {}, ""}}, ChunkOptions{}).ok());

  // Without context the two restore sections tie on "restore".
  auto plain = Ask(*index, "how do I restore?");
  ASSERT_EQ(plain.size(), 2u);

  // The context reorders the question's matches...
  auto with_context = Ask(*index, "how do I restore?", {}, "I am on Windows, using the wizard");
  ASSERT_EQ(with_context.size(), 2u);  // ...but never adds a chunk the question does not match
  EXPECT_EQ(with_context[0].chunk.Section(), "Backups > Restore on Windows");
  for (const Passage& p : with_context) EXPECT_NE(p.chunk.source, "windows.md");
  auto other_context = Ask(*index, "how do I restore?", {}, "tarball on Linux");
  ASSERT_EQ(other_context.size(), 2u);
  EXPECT_EQ(other_context[0].chunk.Section(), "Backups > Restore on Linux");

  // A question with no content words uses the context alone.
  auto follow_up = Ask(*index, "and then?", {}, "registry editor");
  ASSERT_FALSE(follow_up.empty());
  EXPECT_EQ(follow_up[0].chunk.source, "windows.md");
  EXPECT_TRUE(Ask(*index, "and then?").empty());
  EXPECT_TRUE(Ask(*index, "").empty());
}

TEST_F(IndexTest, ConfidenceReflectsCoverage) {
  ASSERT_TRUE(WriteFile(docs_ + "/printer.md",
                        "# Printers\n\n## Paper jam\n\nOpen the tray and remove the jammed paper."
                        "\n\n## Toner\n\nReplace the toner cartridge when prints fade.\n"));
  ASSERT_TRUE(WriteFile(docs_ + "/other.md", "# Other\n\nUnrelated gardening advice.\n"));
  auto index = OpenIndex(index_dir_);
  ASSERT_TRUE(index);
  ASSERT_TRUE(index->Ingest({SourceSpec{docs_, {}, ""}}, ChunkOptions{}).ok());

  auto full = Ask(*index, "how to remove jammed paper from the tray");
  ASSERT_FALSE(full.empty());
  EXPECT_EQ(full[0].chunk.Section(), "Printers > Paper jam");
  EXPECT_GT(full[0].confidence, 0.9);
  for (const Passage& p : full) {
    EXPECT_GE(p.confidence, 0.0);
    EXPECT_LE(p.confidence, 1.0);
  }
  // Same topic words, but about a product the knowledge base never mentions.
  auto unknown = Ask(*index, "how to remove jammed paper from my Brother MFC-L2710");
  ASSERT_FALSE(unknown.empty());
  EXPECT_LT(unknown[0].confidence, 0.35);
  // A typo is corrected to a known word.
  auto typo = Ask(*index, "replace the tonner cartrige");
  ASSERT_FALSE(typo.empty());
  EXPECT_EQ(typo[0].chunk.Section(), "Printers > Toner");
  EXPECT_GT(typo[0].confidence, 0.9);
}

TEST_F(IndexTest, ToleratesAnyQueryText) {
  ASSERT_TRUE(WriteFile(docs_ + "/a.md", "# A\n\nSome apt-get text about C++ and AT&T.\n"));
  auto index = OpenIndex(index_dir_);
  ASSERT_TRUE(index);
  ASSERT_TRUE(index->Ingest({SourceSpec{docs_, {}, ""}}, ChunkOptions{}).ok());
  for (const char* q :
       {"\"unbalanced", "AND OR NOT", "NOT", "(((", "apt-get", "-minus +plus", "title:foo",
        "a* b? ~c", "C++ AT&T", "\xF0\x9F\x98\x80 emoji \xE2\x9C\x93", "\xff\xfe\xfd invalid",
        "\"\"", "))) AND (", "*", "NEAR apt", "apt-get\" install \"c++"}) {
    auto r = index->Retrieve(RetrievalQuery{q, q}, AccessFilter{}, 3);
    EXPECT_TRUE(r.ok()) << q << ": " << r.status().ToString();
  }
  EXPECT_FALSE(Ask(*index, "apt-get").empty());
  EXPECT_FALSE(Ask(*index, "C++").empty());
  EXPECT_TRUE(Ask(*index, "apt-get", {}, "", 0).empty());
}

TEST_F(IndexTest, ChunkDataRoundTripsExactly) {
  const std::string content =
      "# T\xC3\xADtulo \"quoted\"\n\nA \"quoted\" back\\slash, tab\there, ctrl\x01char, "
      "emoji \xF0\x9F\x98\x80, CJK \xE6\x97\xA5\xE6\x9C\xAC, slash / and } ] braces { [.\n";
  ASSERT_TRUE(WriteFile(docs_ + "/special.md", content));
  ASSERT_TRUE(WriteFile(docs_ + "/broken.txt", "Invalid \xC3\x28 utf8 \xFF marmoset.\n"));
  auto index = OpenIndex(index_dir_);
  ASSERT_TRUE(index);
  ASSERT_TRUE(
      index->Ingest({SourceSpec{docs_, {"t\"ag"}, "https://x.example/"}}, ChunkOptions{}).ok());
  std::vector<Chunk> expected = ChunkDocument("special.md", content, ChunkOptions{});
  ASSERT_EQ(expected.size(), 1u);
  auto got = Ask(*index, "quoted backslash emoji", {"t\"ag"});
  ASSERT_FALSE(got.empty());
  const Chunk& c = got[0].chunk;
  EXPECT_EQ(c.text, expected[0].text);
  EXPECT_EQ(c.title, expected[0].title);
  EXPECT_EQ(c.heading_path, expected[0].heading_path);
  EXPECT_EQ(c.anchor, expected[0].anchor);
  EXPECT_EQ(c.tags, (std::vector<std::string>{"t\"ag"}));
  EXPECT_EQ(c.url, "https://x.example/special.md#t%C3%ADtulo-quoted");  // percent-encoded
  // Invalid UTF-8 is stored with replacement characters, and still found.
  auto broken = Ask(*index, "marmoset", {"t\"ag"});
  ASSERT_FALSE(broken.empty());
  EXPECT_NE(broken[0].chunk.text.find("\xEF\xBF\xBD"), std::string::npos);
}

TEST_F(IndexTest, UnreadableFilesAreReportedAndTheRestIndexed) {
  ASSERT_TRUE(WriteFile(docs_ + "/good.md", "# Good\n\nReadable ocelot.\n"));
  std::filesystem::create_symlink(docs_ + "/missing-target.md", docs_ + "/dangling.md");
  std::string unreadable = docs_ + "/locked.md";
  ASSERT_TRUE(WriteFile(unreadable, "# Locked\n\nsecret\n"));
  std::filesystem::permissions(unreadable, std::filesystem::perms::none);
  const bool root = geteuid() == 0;  // root reads it anyway

  auto index = OpenIndex(index_dir_);
  ASSERT_TRUE(index);
  auto report = index->Ingest({SourceSpec{docs_, {}, ""}, SourceSpec{tmp_.Sub("nope"), {}, ""}},
                              ChunkOptions{});
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  EXPECT_EQ(report->errors.size(), root ? 2u : 3u);
  bool dangling_reported = false;
  bool missing_source_reported = false;
  for (const std::string& e : report->errors) {
    if (e.find("dangling.md") != std::string::npos) dangling_reported = true;
    if (e.find("nope") != std::string::npos) missing_source_reported = true;
  }
  EXPECT_TRUE(dangling_reported);
  EXPECT_TRUE(missing_source_reported);
  EXPECT_TRUE(AnyFrom(Ask(*index, "ocelot"), "good.md"));
  std::filesystem::permissions(unreadable, std::filesystem::perms::owner_all);
}

TEST_F(IndexTest, MissingSourceKeepsItsChunks) {
  ASSERT_TRUE(WriteFile(docs_ + "/mount/a.md", "# A\n\nPangolin facts.\n"));
  auto index = OpenIndex(index_dir_);
  ASSERT_TRUE(index);
  const std::vector<SourceSpec> sources = {SourceSpec{docs_ + "/mount", {}, ""}};
  ASSERT_TRUE(index->Ingest(sources, ChunkOptions{}).ok());
  std::filesystem::rename(docs_ + "/mount", docs_ + "/unmounted");
  auto report = index->Ingest(sources, ChunkOptions{});
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->errors.size(), 1u);
  EXPECT_EQ(report->files_removed, 0u);  // a source that cannot be listed is not emptied
  EXPECT_TRUE(AnyFrom(Ask(*index, "pangolin"), "a.md"));
}

TEST_F(IndexTest, CorruptIndexReturnsStatus) {
  ASSERT_TRUE(WriteFile(index_dir_ + "/iamglass", "this is not a glass version file"));
  ASSERT_TRUE(WriteFile(index_dir_ + "/postlist.glass", std::string(20000, '\x7f')));
  auto opened = KnowledgeIndex::Open(index_dir_);
  EXPECT_FALSE(opened.ok());

  ASSERT_TRUE(WriteFile(tmp_.Sub("junk/notes.txt"), "not an index"));
  auto junk = KnowledgeIndex::Open(tmp_.Sub("junk"));
  EXPECT_FALSE(junk.ok());
  ASSERT_TRUE(WriteFile(tmp_.Sub("file-not-dir"), "x"));
  EXPECT_FALSE(KnowledgeIndex::Open(tmp_.Sub("file-not-dir")).ok());
}

TEST_F(IndexTest, LockedIndexReturnsUnavailable) {
  ASSERT_TRUE(WriteFile(docs_ + "/a.md", "# A\n\nText.\n"));
  auto index = OpenIndex(index_dir_);
  ASSERT_TRUE(index);
  {
    Xapian::WritableDatabase other_writer(index_dir_, Xapian::DB_OPEN);
    auto report = index->Ingest({SourceSpec{docs_, {}, ""}}, ChunkOptions{});
    ASSERT_FALSE(report.ok());
    EXPECT_EQ(report.status().code(), Status::Code::kUnavailable) << report.status().ToString();
    // Reading still works while another writer holds the lock.
    EXPECT_TRUE(index->Retrieve(RetrievalQuery{"text", ""}, AccessFilter{}, 3).ok());
  }
  auto report = index->Ingest({SourceSpec{docs_, {}, ""}}, ChunkOptions{});
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  EXPECT_EQ(report->files_indexed, 1u);
}

// --- the result cache -----------------------------------------------------------------------

class IndexCacheTest : public IndexTest {
 protected:
  std::unique_ptr<KnowledgeIndex> OpenCached(size_t cache_bytes = 1 << 20) {
    IndexOptions options;
    options.cache_bytes = cache_bytes;
    options.cache_hits = &hits_;
    options.cache_misses = &misses_;
    auto opened = KnowledgeIndex::Open(index_dir_, options);
    EXPECT_TRUE(opened.ok()) << opened.status().ToString();
    return opened.ok() ? std::move(opened).value() : nullptr;
  }

  Counter hits_;
  Counter misses_;
};

TEST_F(IndexCacheTest, AQuestionAskedAgainIsAnsweredFromTheCacheWithTheSamePassages) {
  ASSERT_TRUE(WriteFile(docs_ + "/a.md", "# Ferrets\n\nFerrets sleep fourteen hours a day.\n"));
  ASSERT_TRUE(WriteFile(docs_ + "/b.md", "# Otters\n\nOtters hold hands while sleeping.\n"));
  auto index = OpenCached();
  ASSERT_TRUE(index);
  ASSERT_TRUE(index->Ingest({SourceSpec{docs_, {}, "https://docs.example/"}}, ChunkOptions{}).ok());

  const auto first = Ask(*index, "how long do ferrets sleep", {}, "otters");
  ASSERT_FALSE(first.empty());
  EXPECT_EQ(hits_.value(), 0u);
  EXPECT_EQ(misses_.value(), 1u);
  const auto second = Ask(*index, "how long do ferrets sleep", {}, "otters");
  EXPECT_EQ(hits_.value(), 1u);
  ASSERT_EQ(second.size(), first.size());
  for (size_t i = 0; i < first.size(); ++i) {
    EXPECT_EQ(second[i].chunk.source, first[i].chunk.source);
    EXPECT_EQ(second[i].chunk.text, first[i].chunk.text);
    EXPECT_EQ(second[i].chunk.url, first[i].chunk.url);
    EXPECT_EQ(second[i].chunk.heading_path, first[i].chunk.heading_path);
    EXPECT_DOUBLE_EQ(second[i].score, first[i].score);
    EXPECT_DOUBLE_EQ(second[i].confidence, first[i].confidence);
  }
  // Anything else about the question is another entry: its context, its limit, its text.
  Ask(*index, "how long do ferrets sleep", {}, "");
  Ask(*index, "how long do ferrets sleep", {}, "otters", 1);
  Ask(*index, "How long do ferrets sleep", {}, "otters");
  EXPECT_EQ(hits_.value(), 1u);
  EXPECT_EQ(misses_.value(), 4u);
  // Whatever the text contains, a question and its context never pose as another pair.
  Ask(*index, "ferrets\x1e" "otters", {}, "");
  Ask(*index, "ferrets", {}, "otters\x1e");
  Ask(*index, "ferrets", {"x\x1f" "y"}, "");
  Ask(*index, "ferrets", {"x", "y"}, "");
  EXPECT_EQ(hits_.value(), 1u);
  EXPECT_EQ(misses_.value(), 8u);
}

TEST_F(IndexCacheTest, RestrictedPassagesNeverReachAnotherAccessThroughTheCache) {
  ASSERT_TRUE(WriteFile(docs_ + "/public/faq.md", "# FAQ\n\nOpening hours and the refund form.\n"));
  ASSERT_TRUE(WriteFile(docs_ + "/internal/runbook.md",
                        "# Runbook\n\nThe refund override password procedure for staff.\n"));
  auto index = OpenCached();
  ASSERT_TRUE(index);
  ASSERT_TRUE(index
                  ->Ingest({SourceSpec{docs_ + "/public", {}, ""},
                            SourceSpec{docs_ + "/internal", {"staff"}, ""}},
                           ChunkOptions{})
                  .ok());
  const auto staff = Ask(*index, "refund override password", {"staff"});
  ASSERT_TRUE(AnyFrom(staff, "runbook.md"));
  for (int round = 0; round < 2; ++round) {
    for (const Passage& p : Ask(*index, "refund override password", {})) {
      EXPECT_TRUE(p.chunk.tags.empty()) << "leaked " << p.chunk.source;
    }
  }
  EXPECT_TRUE(AnyFrom(Ask(*index, "refund override password", {"staff"}), "runbook.md"));
  EXPECT_EQ(hits_.value(), 2u);
}

TEST_F(IndexCacheTest, AnIngestMakesTheCacheForgetWhatItAnswered) {
  ASSERT_TRUE(WriteFile(docs_ + "/a.md", "# Kettles\n\nDescale the kettle with vinegar.\n"));
  auto index = OpenCached();
  ASSERT_TRUE(index);
  ASSERT_TRUE(index->Ingest({SourceSpec{docs_, {}, ""}}, ChunkOptions{}).ok());
  auto before = Ask(*index, "descale kettle");
  ASSERT_EQ(before.size(), 1u);
  EXPECT_NE(before[0].chunk.text.find("vinegar"), std::string::npos);
  Ask(*index, "descale kettle");
  EXPECT_EQ(hits_.value(), 1u);

  ASSERT_TRUE(WriteFile(docs_ + "/a.md", "# Kettles\n\nDescale the kettle with citric acid.\n"));
  ASSERT_TRUE(index->Ingest({SourceSpec{docs_, {}, ""}}, ChunkOptions{}).ok());
  auto after = Ask(*index, "descale kettle");
  ASSERT_EQ(after.size(), 1u);
  EXPECT_NE(after[0].chunk.text.find("citric acid"), std::string::npos) << after[0].chunk.text;
  EXPECT_EQ(hits_.value(), 1u);
}

TEST_F(IndexCacheTest, ACommitByAnotherWriterIsSeenWithinTheReopenInterval) {
  ASSERT_TRUE(WriteFile(docs_ + "/a.md", "# Kettles\n\nDescale the kettle with vinegar.\n"));
  auto index = OpenCached();
  ASSERT_TRUE(index);
  ASSERT_TRUE(index->Ingest({SourceSpec{docs_, {}, ""}}, ChunkOptions{}).ok());
  ASSERT_EQ(Ask(*index, "descale kettle").size(), 1u);
  Ask(*index, "descale kettle");
  ASSERT_EQ(hits_.value(), 1u);

  // Another handle on the same directory (as another process would) changes the file's chunk.
  ASSERT_TRUE(WriteFile(docs_ + "/a.md", "# Kettles\n\nDescale the kettle with citric acid.\n"));
  auto other = OpenIndex(index_dir_);
  ASSERT_TRUE(other);
  ASSERT_TRUE(other->Ingest({SourceSpec{docs_, {}, ""}}, ChunkOptions{}).ok());
  other.reset();

  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  bool updated = false;
  while (!updated && std::chrono::steady_clock::now() < deadline) {
    auto passages = Ask(*index, "descale kettle");
    updated = passages.size() == 1 && passages[0].chunk.text.find("citric") != std::string::npos;
    if (!updated) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(updated) << "the cache kept answering from the old revision";
}

TEST_F(IndexCacheTest, ABudgetOfZeroTurnsTheCacheOff) {
  ASSERT_TRUE(WriteFile(docs_ + "/a.md", "# Kettles\n\nDescale the kettle with vinegar.\n"));
  auto index = OpenCached(0);
  ASSERT_TRUE(index);
  ASSERT_TRUE(index->Ingest({SourceSpec{docs_, {}, ""}}, ChunkOptions{}).ok());
  for (int i = 0; i < 3; ++i) EXPECT_EQ(Ask(*index, "descale kettle").size(), 1u);
  EXPECT_EQ(hits_.value(), 0u);
  EXPECT_EQ(misses_.value(), 0u);
}

TEST_F(IndexCacheTest, ResultsBeyondTheBudgetAreSearchedAgain) {
  for (int i = 0; i < 40; ++i) {
    ASSERT_TRUE(WriteFile(docs_ + "/f" + std::to_string(i) + ".md",
                          "# Topic " + std::to_string(i) + "\n\nword" + std::to_string(i) +
                              " explained at length.\n"));
  }
  // Room for a few results and their chunks only.
  auto index = OpenCached(4096);
  ASSERT_TRUE(index);
  ASSERT_TRUE(index->Ingest({SourceSpec{docs_, {}, ""}}, ChunkOptions{}).ok());
  for (int i = 0; i < 40; ++i) ASSERT_FALSE(Ask(*index, "word" + std::to_string(i)).empty());
  EXPECT_EQ(misses_.value(), 40u);
  // The most recent question is still there; the first one was dropped to make room.
  ASSERT_FALSE(Ask(*index, "word39").empty());
  EXPECT_EQ(hits_.value(), 1u);
  auto first = Ask(*index, "word0");
  ASSERT_FALSE(first.empty());
  EXPECT_EQ(first[0].chunk.source, "f0.md");
  EXPECT_EQ(hits_.value(), 1u);
  EXPECT_EQ(misses_.value(), 41u);
}

}  // namespace
}  // namespace parley::knowledge
