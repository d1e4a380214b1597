// Retrieval quality on a real documentation set nobody on this team wrote: the Debian Reference
// manual (package debian-reference-en). The manual is ingested once into a temporary index; the
// questions in debian_reference_questions.json (chat-style paraphrases, typos, follow-ups with
// context, and questions the manual does not answer) are run against it, and recall@1, recall@5,
// abstention and false abstention are printed and checked against floors.

#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "config/config.h"
#include "knowledge/knowledge.h"

namespace parley::knowledge {
namespace {

namespace fs = std::filesystem;

constexpr char kManualDir[] = "/usr/share/debian-reference";
constexpr char kQuestionsFile[] = PARLEY_QUALITY_QUESTIONS;

// The engine's default abstention threshold: the test measures what users get out of the box.
const double kMinConfidence = config::EngineConfig{}.min_confidence;
constexpr size_t kLimit = 5;

// Floors: a few points under what the current code measures (README.md: recall@1 0.800,
// recall@5 0.927, abstention 0.875, false abstention 0.018), i.e. two or three more misses than
// today; a regression in ranking, confidence or HTML extraction trips them.
constexpr double kRecallAt1Floor = 0.75;
constexpr double kRecallAt5Floor = 0.88;
constexpr double kAbstentionFloor = 0.80;
constexpr double kFalseAbstentionCeiling = 0.08;

struct Expected {
  std::string source;
  std::string section;  // substring of the heading path
};

struct Question {
  std::string id;
  std::string kind;
  std::string text;
  std::string context;
  std::vector<Expected> expect;  // empty: unanswerable
};

std::vector<Question> LoadQuestions(std::string* error) {
  std::ifstream in(kQuestionsFile);
  if (!in) {
    *error = std::string("cannot read ") + kQuestionsFile;
    return {};
  }
  nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || !j.contains("questions")) {
    *error = std::string(kQuestionsFile) + ": not a question file";
    return {};
  }
  std::vector<Question> out;
  for (const auto& q : j["questions"]) {
    Question question;
    question.id = q.value("id", "");
    question.kind = q.value("kind", "");
    question.text = q.value("q", "");
    question.context = q.value("context", "");
    if (q.contains("expect")) {
      for (const auto& e : q["expect"]) {
        question.expect.push_back(Expected{e.at(0).get<std::string>(), e.at(1).get<std::string>()});
      }
    }
    out.push_back(std::move(question));
  }
  return out;
}

bool IsHit(const Passage& p, const Question& q) {
  const std::string section = p.chunk.Section();
  for (const Expected& e : q.expect) {
    if (p.chunk.source == e.source && section.find(e.section) != std::string::npos) return true;
  }
  return false;
}

std::string TempDir() {
  std::string pattern = (fs::temp_directory_path() / "parley-quality-XXXXXX").string();
  std::vector<char> buf(pattern.begin(), pattern.end());
  buf.push_back('\0');
  char* dir = mkdtemp(buf.data());
  return dir == nullptr ? std::string() : std::string(dir);
}

TEST(DebianReferenceQuality, RecallAndAbstention) {
  // The corpus must be there: a missing package is a broken test environment, not a skip.
  bool have_manual = false;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(kManualDir, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.size() > 8 && name.compare(name.size() - 8, 8, ".en.html") == 0) have_manual = true;
  }
  ASSERT_TRUE(have_manual) << "The Debian Reference HTML is missing: expected " << kManualDir
                           << "/*.en.html. Install the Debian package "
                           << "debian-reference-en (apt-get install debian-reference-en).";

  std::string error;
  std::vector<Question> questions = LoadQuestions(&error);
  ASSERT_FALSE(questions.empty()) << error;

  const std::string dir = TempDir();
  ASSERT_FALSE(dir.empty()) << "mkdtemp failed";
  struct Cleanup {
    std::string dir;
    ~Cleanup() {
      std::error_code ignored;
      fs::remove_all(dir, ignored);
    }
  } cleanup{dir};

  auto opened = KnowledgeIndex::Open(dir + "/index");
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  std::unique_ptr<KnowledgeIndex> index = std::move(opened).value();
  auto report = index->Ingest({SourceSpec{kManualDir, {}, ""}}, ChunkOptions{});
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  ASSERT_TRUE(report->errors.empty()) << report->errors.front();
  ASSERT_GE(report->files_indexed, 14u);

  size_t answerable = 0, hit1 = 0, hit5 = 0, false_abstain = 0;
  size_t unanswerable = 0, abstained = 0;
  std::ostringstream details;
  for (const Question& q : questions) {
    auto result = index->Retrieve(RetrievalQuery{q.text, q.context}, AccessFilter{}, kLimit);
    ASSERT_TRUE(result.ok()) << q.id << ": " << result.status().ToString();
    const std::vector<Passage>& passages = *result;
    const double top = passages.empty() ? 0.0 : passages[0].confidence;
    const bool abstain = top < kMinConfidence;
    char line[512];
    if (q.expect.empty()) {
      ++unanswerable;
      if (abstain) ++abstained;
      std::snprintf(line, sizeof(line), "  %-28s %-12s conf=%.2f %s  top=[%s] %s\n", q.id.c_str(),
                    q.kind.c_str(), top, abstain ? "abstain " : "ANSWERED",
                    passages.empty() ? "" : passages[0].chunk.source.c_str(),
                    passages.empty() ? "" : passages[0].chunk.Section().substr(0, 70).c_str());
    } else {
      ++answerable;
      size_t rank = 0;
      for (size_t i = 0; i < passages.size(); ++i) {
        if (IsHit(passages[i], q)) {
          rank = i + 1;
          break;
        }
      }
      if (rank == 1) ++hit1;
      if (rank >= 1) ++hit5;
      if (abstain) ++false_abstain;
      std::snprintf(line, sizeof(line), "  %-28s %-12s conf=%.2f %s rank=%s  top=[%s] %s\n",
                    q.id.c_str(), q.kind.c_str(), top, abstain ? "ABSTAIN" : "answer ",
                    rank == 0 ? "-" : std::to_string(rank).c_str(),
                    passages.empty() ? "" : passages[0].chunk.source.c_str(),
                    passages.empty() ? "" : passages[0].chunk.Section().substr(0, 70).c_str());
    }
    details << line;
  }
  ASSERT_GT(answerable, 0u);
  ASSERT_GT(unanswerable, 0u);

  // Rough latency: every question (with its context) many times over, on a warm index.
  constexpr int kRounds = 30;
  std::vector<double> micros;
  micros.reserve(questions.size() * kRounds);
  for (int round = 0; round < kRounds; ++round) {
    for (const Question& q : questions) {
      const auto start = std::chrono::steady_clock::now();
      auto r = index->Retrieve(RetrievalQuery{q.text, q.context}, AccessFilter{}, kLimit);
      const auto end = std::chrono::steady_clock::now();
      ASSERT_TRUE(r.ok());
      micros.push_back(std::chrono::duration<double, std::micro>(end - start).count());
    }
  }
  std::sort(micros.begin(), micros.end());
  const double median = micros[micros.size() / 2];
  const double p95 = micros[micros.size() * 95 / 100];

  const double recall1 = static_cast<double>(hit1) / answerable;
  const double recall5 = static_cast<double>(hit5) / answerable;
  const double abstention = static_cast<double>(abstained) / unanswerable;
  const double false_abstention = static_cast<double>(false_abstain) / answerable;

  std::printf("Per question (threshold %.2f, limit %zu):\n%s", kMinConfidence, kLimit,
              details.str().c_str());
  std::printf(
      "\n==== Debian Reference retrieval quality ====\n"
      "corpus              : %zu files, %zu chunks, ingested in %.2f s\n"
      "questions           : %zu answerable, %zu unanswerable\n"
      "recall@1            : %.3f (%zu/%zu)   floor %.2f\n"
      "recall@5            : %.3f (%zu/%zu)   floor %.2f\n"
      "abstention          : %.3f (%zu/%zu)   floor %.2f  (unanswerable, top confidence < %.2f)\n"
      "false abstention    : %.3f (%zu/%zu)   ceiling %.2f (answerable)\n"
      "latency per query   : median %.1f us, p95 %.1f us (%zu queries, limit %zu)\n"
      "============================================\n",
      report->files_indexed, report->chunks_total, report->seconds, answerable, unanswerable,
      recall1, hit1, answerable, kRecallAt1Floor, recall5, hit5, answerable, kRecallAt5Floor,
      abstention, abstained, unanswerable, kAbstentionFloor, kMinConfidence, false_abstention,
      false_abstain, answerable, kFalseAbstentionCeiling, median, p95, micros.size(), kLimit);
  std::fflush(stdout);

  EXPECT_GE(recall1, kRecallAt1Floor);
  EXPECT_GE(recall5, kRecallAt5Floor);
  EXPECT_GE(abstention, kAbstentionFloor);
  EXPECT_LE(false_abstention, kFalseAbstentionCeiling);
}

}  // namespace
}  // namespace parley::knowledge
