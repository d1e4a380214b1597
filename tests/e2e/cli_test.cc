// End-to-end: the `parley` subcommands run in-process (no daemon) on a temporary store.

#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/support/daemon_process.h"
#include "tests/support/temp_dir.h"

namespace parley::testing {
namespace {

using nlohmann::json;

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::filesystem::create_directories(dir_.Sub("kb"));
    std::ofstream(dir_.Sub("kb/install.md"))
        << "# Installing the Gizmo\n\n## On Linux\n\nRun `apt install gizmo` and start it with "
           "`gizmo --daemon`.\n\n## On Windows\n\nRun GizmoSetup.exe as an administrator.\n";
    std::ofstream(dir_.Sub("kb/refunds.txt"))
        << "Refund policy\n\nRefunds are paid back within fourteen days.\n";
    config_ = dir_.Sub("parley.toml");
    std::ofstream(config_) << "[server]\nlisten = \"127.0.0.1:0\"\n[store]\npath = \""
                           << dir_.Sub("store") << "\"\n[[knowledge.sources]]\npath = \""
                           << dir_.Sub("kb") << "\"\n[webhook]\nenabled = false\n[log]\nlevel = \"warn\"\n";
  }
  CommandResult Parley(std::vector<std::string> args, const std::string& input = "") {
    args.push_back("--config");
    args.push_back(config_);
    return RunParley(args, input);
  }
  TempDir dir_;
  std::string config_;
};

TEST_F(CliTest, AskJsonHasTheDocumentedShape) {
  auto r = Parley({"ask", "how do I install gizmo on linux", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  json reply = json::parse(r.out);
  EXPECT_NE(reply["text"].get<std::string>().find("apt install gizmo"), std::string::npos);
  ASSERT_FALSE(reply["citations"].empty());
  json c = reply["citations"][0];
  for (const char* key : {"title", "source", "section", "url"}) EXPECT_TRUE(c.contains(key)) << key;
  EXPECT_EQ(c["source"], "install.md");
  EXPECT_EQ(c["title"], "Installing the Gizmo");
  EXPECT_TRUE(reply["confidence"].is_number());
  EXPECT_EQ(reply["escalated"], false);
}

TEST_F(CliTest, SecondAskWithSameConversationIsAFollowUp) {
  ASSERT_EQ(Parley({"ask", "how do I install the gizmo?", "--conversation", "c1"}).exit_code, 0);
  auto r = Parley({"ask", "and on windows?", "--conversation", "c1", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  json reply = json::parse(r.out);
  EXPECT_NE(reply["text"].get<std::string>().find("GizmoSetup.exe"), std::string::npos)
      << reply.dump();
}

TEST_F(CliTest, ChatAnswersAndForgets) {
  auto r = Parley({"chat"}, "when are refunds paid back?\n/forget\n/bogus\n/quit\n");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("fourteen days"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("Forgotten: 2 turns."), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("Unknown command /bogus"), std::string::npos) << r.out;
}

TEST_F(CliTest, IngestIsIncremental) {
  auto first = Parley({"ingest"});
  ASSERT_EQ(first.exit_code, 0) << first.err;
  EXPECT_NE(first.out.find("2 indexed"), std::string::npos) << first.out;
  auto second = Parley({"ingest"});
  EXPECT_NE(second.out.find("0 indexed, 2 unchanged"), std::string::npos) << second.out;
  std::filesystem::remove(dir_.Sub("kb/refunds.txt"));
  auto third = Parley({"ingest"});
  EXPECT_NE(third.out.find("1 removed"), std::string::npos) << third.out;
}

TEST_F(CliTest, CheckConfigNamesFileLineAndKey) {
  auto ok = Parley({"check-config"});
  EXPECT_EQ(ok.exit_code, 0) << ok.err;
  EXPECT_NE(ok.out.find("config OK"), std::string::npos);
  std::ofstream(config_, std::ios::app) << "[engine]\nmin_confidense = 0.5\n";
  auto bad = Parley({"check-config"});
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_NE(bad.err.find("parley.toml:"), std::string::npos) << bad.err;
  EXPECT_NE(bad.err.find("engine.min_confidense"), std::string::npos) << bad.err;
}

TEST_F(CliTest, UsageErrors) {
  EXPECT_EQ(RunParley({"frobnicate"}).exit_code, 2);
  EXPECT_EQ(Parley({"ask"}).exit_code, 2);
  EXPECT_EQ(Parley({"ask", "q", "--bogus"}).exit_code, 2);
  for (const char* cmd : {"serve", "ask", "chat", "ingest", "check-config"}) {
    auto help = RunParley({cmd, "--help"});
    EXPECT_EQ(help.exit_code, 0) << cmd;
    EXPECT_NE(help.out.find("usage: parley"), std::string::npos) << cmd;
  }
}

TEST_F(CliTest, ShippedDefaultConfigIsValid) {
  auto r = RunParley({"check-config", "--config", SourceDir() + "/config/parley.toml"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
}

}  // namespace
}  // namespace parley::testing
