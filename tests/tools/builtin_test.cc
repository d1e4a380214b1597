// The built-in tools over a real knowledge index (temporary Markdown files) and through the
// policy: access tags, result shape, argument limits, escalation.

#include "tools/builtin.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "tests/tools/test_util.h"
#include "tools/policy.h"
#include "tools/registry.h"

namespace parley::tools {
namespace {

using nlohmann::json;
using testing::CallAndWait;
using testing::IoThreads;

void Write(const std::string& path, const std::string& text) {
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  std::ofstream(path) << text;
}

class BuiltinTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(dir_.path().empty());
    Write(dir_.Sub("public/frobnicator.md"),
          "# Installing the Frobnicator\n\n## On Linux\n\nInstall the frobnicator package with "
          "apt: run `apt install frobnicator` as root.\n\n## On Windows\n\nRun the Frobnicator "
          "MSI installer as an administrator.\n");
    Write(dir_.Sub("public/long.md"), "# Frobnicator tuning\n\n" +
                                          std::string("The frobnicator tuning knob ") +
                                          std::string(2000, 'k') + "\n");
    Write(dir_.Sub("staff/pricing.md"),
          "# Frobnicator internal pricing\n\n## Discounts\n\nStaff may grant frobnicator "
          "discounts up to twenty percent.\n");
    auto opened = knowledge::KnowledgeIndex::Open(dir_.Sub("index"));
    ASSERT_TRUE(opened.ok()) << opened.status().ToString();
    index_ = std::move(opened).value();
    auto report = index_->Ingest({knowledge::SourceSpec{dir_.Sub("public"), {}, "https://docs/"},
                                  knowledge::SourceSpec{dir_.Sub("staff"), {"staff"}, ""}},
                                 knowledge::ChunkOptions{});
    ASSERT_TRUE(report.ok()) << report.status().ToString();
    ASSERT_GE(report->chunks_total, 4u);

    auto kv = store::OpenLevelDb(dir_.Sub("db"));
    ASSERT_TRUE(kv.ok());
    kv_ = std::move(kv).value();
    committer_ = std::make_unique<store::Committer>(*kv_);
    ASSERT_TRUE(registry_.Add(MakeSearchKnowledgeTool(io_.io, *index_, 5), {}).ok());
    ASSERT_TRUE(registry_.Add(MakeEscalateTool(io_.io), {}).ok());
    policy_ = std::make_unique<ToolPolicy>(io_.io, registry_, *committer_, clock_, metrics_);
    context_.conversation = {"slack", "C1", ""};
    context_.user = "U1";
  }
  void TearDown() override {
    if (committer_) committer_->Shutdown();
  }

  testing::Outcome Run(const std::string& name, const json& arguments) {
    return CallAndWait(*policy_, io_, llm::ToolCall{"c", name, arguments.dump()}, context_);
  }

  parley::testing::TempDir dir_;
  IoThreads io_{2};
  std::unique_ptr<knowledge::KnowledgeIndex> index_;
  std::unique_ptr<store::KvStore> kv_;
  std::unique_ptr<store::Committer> committer_;
  ManualClock clock_;
  MetricsRegistry metrics_;
  ToolRegistry registry_;
  std::unique_ptr<ToolPolicy> policy_;
  ToolContext context_;
};

TEST_F(BuiltinTest, SearchKnowledgeReturnsVisiblePassagesAsJson) {
  auto out = Run("search_knowledge", {{"query", "install frobnicator on linux with apt"}});
  ASSERT_TRUE(out.result.has_value());
  ASSERT_EQ(out.result->outcome, CallOutcome::kOk) << out.result->content;
  EXPECT_TRUE(out.on_io_thread);
  const json passages = json::parse(out.result->content);
  ASSERT_TRUE(passages.is_array());
  ASSERT_FALSE(passages.empty());
  const json& top = passages[0];
  EXPECT_EQ(top["title"], "Installing the Frobnicator");
  EXPECT_EQ(top["section"], "Installing the Frobnicator > On Linux");
  EXPECT_EQ(top["source"], "frobnicator.md");
  EXPECT_EQ(top["url"].get<std::string>().rfind("https://docs/frobnicator.md#", 0), 0u)
      << top["url"];
  EXPECT_NE(top["text"].get<std::string>().find("apt install frobnicator"), std::string::npos);
  for (const json& p : passages) {
    EXPECT_EQ(p.size(), 5u);
    EXPECT_NE(p["source"], "pricing.md");  // restricted: no access tag
    EXPECT_LE(p["text"].get<std::string>().size(), 800u + 3u);
  }
}

TEST_F(BuiltinTest, SearchKnowledgeHonoursAccessTagsAndLimits) {
  const json query = {{"query", "frobnicator discounts pricing"}};
  auto without = Run("search_knowledge", query);
  ASSERT_EQ(without.result->outcome, CallOutcome::kOk);
  EXPECT_EQ(without.result->content.find("twenty percent"), std::string::npos);

  context_.access_tags = {"staff"};
  auto with = Run("search_knowledge", query);
  ASSERT_EQ(with.result->outcome, CallOutcome::kOk);
  EXPECT_NE(with.result->content.find("twenty percent"), std::string::npos);

  auto one = Run("search_knowledge", {{"query", "frobnicator"}, {"max_results", 1}});
  ASSERT_EQ(one.result->outcome, CallOutcome::kOk);
  EXPECT_EQ(json::parse(one.result->content).size(), 1u);

  auto long_text = Run("search_knowledge", {{"query", "tuning knob"}, {"max_results", 1}});
  ASSERT_EQ(long_text.result->outcome, CallOutcome::kOk);
  const std::string text = json::parse(long_text.result->content)[0]["text"];
  EXPECT_LE(text.size(), 803u);
  EXPECT_GE(text.size(), 700u);

  EXPECT_EQ(Run("search_knowledge", {{"query", ""}}).result->outcome,
            CallOutcome::kInvalidArguments);
  EXPECT_EQ(Run("search_knowledge", {{"query", std::string(501, 'q')}}).result->outcome,
            CallOutcome::kInvalidArguments);
  EXPECT_EQ(Run("search_knowledge", {{"query", "x"}, {"max_results", 11}}).result->content,
            "invalid arguments: /max_results: expected number less than or equal to 10");
  EXPECT_EQ(Run("search_knowledge", {{"max_results", 2}}).result->content,
            "invalid arguments: /query: required property missing");
}

TEST_F(BuiltinTest, EscalateAsksForAHuman) {
  auto out = Run("escalate_to_human", {{"reason", "user asked for a person"}, {"topic", "refund"}});
  ASSERT_TRUE(out.result.has_value());
  EXPECT_EQ(out.result->outcome, CallOutcome::kOk);
  EXPECT_TRUE(out.result->escalate);
  EXPECT_EQ(out.result->content, "A human agent will be asked to help with this conversation.");
  EXPECT_TRUE(out.on_io_thread);
  auto missing = Run("escalate_to_human", json::object());
  EXPECT_EQ(missing.result->outcome, CallOutcome::kInvalidArguments);
  EXPECT_FALSE(missing.result->escalate);
}

}  // namespace
}  // namespace parley::tools
