// End-to-end: `parley ask` / `parley chat` through a running daemon stream the answer. The real
// `parley` binary serves, its LLM is the OpenAI-compatible test server in this process (streaming
// scripted answers in small chunks with delays), and clients talk to the daemon's local API on
// its Unix-domain socket: a raw client reading the event stream, and the `parley` CLI itself.

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/fakes/llm/llm_server.h"
#include "tests/support/daemon_process.h"
#include "tests/support/sample_kb.h"
#include "tests/support/temp_dir.h"

namespace parley::testing {
namespace {

using nlohmann::json;
using SteadyClock = std::chrono::steady_clock;

constexpr char kLlmKey[] = "sk-test";
constexpr char kAnswer[] =
    "Install the frobnicator with apt: run apt install frobnicator as root, and the service "
    "starts on its own [1].";

// A `parley` subcommand whose stdout is read while it runs (RunParley only returns it at the
// end). stderr goes to a file.
class LiveCommand {
 public:
  LiveCommand(const std::vector<std::string>& args, const std::map<std::string, std::string>& env,
              const std::string& err_path)
      : err_path_(err_path) {
    int out[2];
    if (pipe(out) != 0) return;
    const int err_fd = open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    const int null_fd = open("/dev/null", O_RDONLY);
    pid_ = fork();
    if (pid_ == 0) {
      dup2(null_fd, 0);
      dup2(out[1], 1);
      dup2(err_fd, 2);
      close(out[0]);
      for (const auto& [k, v] : env) setenv(k.c_str(), v.c_str(), 1);
      std::string binary = ParleyBinary();
      std::vector<std::string> copy = args;
      std::vector<char*> argv{binary.data()};
      for (std::string& a : copy) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(binary.c_str(), argv.data());
      _exit(127);
    }
    close(out[1]);
    close(err_fd);
    close(null_fd);
    out_fd_ = out[0];
  }
  ~LiveCommand() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (out_fd_ >= 0) close(out_fd_);
  }

  // Reads stdout until `done(out so far)` holds or EOF; false at the deadline. Each read is
  // recorded as it came.
  bool ReadUntil(const std::function<bool(const std::string&)>& done, int timeout_ms) {
    const auto deadline = SteadyClock::now() + std::chrono::milliseconds(timeout_ms);
    while (!done(out_)) {
      if (eof_) return false;
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - SteadyClock::now())
              .count();
      if (left <= 0) return false;
      pollfd p{out_fd_, POLLIN, 0};
      if (poll(&p, 1, static_cast<int>(left)) <= 0) continue;  // waits for output, no sleep
      char buffer[4096];
      const ssize_t n = read(out_fd_, buffer, sizeof buffer);
      if (n <= 0) {
        eof_ = true;
        continue;
      }
      reads_.emplace_back(buffer, static_cast<size_t>(n));
      out_.append(buffer, static_cast<size_t>(n));
    }
    return true;
  }
  // Reads to the end of stdout, then waits for the exit code (-1 at the deadline).
  int Finish(int timeout_ms) {
    ReadUntil([](const std::string&) { return false; }, timeout_ms);
    const auto deadline = SteadyClock::now() + std::chrono::milliseconds(timeout_ms);
    int status = 0;
    // stdout is closed, so the process is exiting: poll its exit with a deadline.
    while (waitpid(pid_, &status, WNOHANG) != pid_) {
      if (SteadyClock::now() > deadline) return -1;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  const std::string& out() const { return out_; }
  const std::vector<std::string>& reads() const { return reads_; }
  std::string err() const {
    std::ifstream in(err_path_);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

 private:
  std::string err_path_;
  pid_t pid_ = -1;
  int out_fd_ = -1;
  bool eof_ = false;
  std::string out_;
  std::vector<std::string> reads_;
};

// One event of a stream, as a raw client saw it, and in which body read it came.
struct SeenEvent {
  std::string name;
  json data;
  size_t read_index = 0;
};

class LocalStreamE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    WriteSampleKnowledge(dir_.Sub("kb"));
    config_ = dir_.Sub("parley.toml");
    WriteFile(config_,
              "[server]\nlisten = \"127.0.0.1:0\"\nport_file = \"" + dir_.Sub("port.json") +
                  "\"\n\n[store]\npath = \"" + dir_.Sub("store") +
                  "\"\n\n[[knowledge.sources]]\npath = \"" + dir_.Sub("kb") +
                  "\"\n\n[webhook]\nenabled = false\n\n"
                  "[llm]\nenabled = true\nbase_url = \"" +
                  llm_.base_url() +
                  "\"\napi_key = \"${E2E_LLM_KEY}\"\nmodel = \"test-model\"\nmax_retries = 1\n"
                  "breaker_failures = 50\n\n[log]\nlevel = \"info\"\n");
    daemon_ =
        std::make_unique<DaemonProcess>(config_, dir_.Sub("port.json"), dir_.Sub("log.txt"), Env());
    ASSERT_TRUE(daemon_->Start()) << daemon_->Log();
  }
  void TearDown() override {
    if (HasFailure() && daemon_) std::cerr << "---- daemon log ----\n" << daemon_->Log();
  }

  std::map<std::string, std::string> Env() const { return {{"E2E_LLM_KEY", kLlmKey}}; }
  std::string Socket() const { return dir_.Sub("store") + "/parley.sock"; }

  // The answer streamed slowly: 3 characters every 40 ms (the engine passes on at most ~10
  // partials a second, so this gives several).
  static LlmReply Slow(const std::string& text, int chunk_delay_ms = 40) {
    LlmReply r;
    r.text = text;
    r.chunk_chars = 3;
    r.chunk_delay_ms = chunk_delay_ms;
    return r;
  }

  net::ClientRequest LocalAsk(const std::string& conversation, bool stream) const {
    net::ClientRequest r;
    r.method = "POST";
    r.url = "http://localhost/v1/local/ask";
    r.unix_socket_path = Socket();
    r.body =
        json{{"text", "how do i install the frobnicator on linux?"}, {"conversation", conversation}}
            .dump();
    r.timeout_ms = 30'000;
    r.headers.emplace_back("Content-Type", "application/json");
    if (stream) r.headers.emplace_back("Accept", "text/event-stream");
    return r;
  }

  // POSTs a streamed ask and collects its events; with hang_up_after > 0, hangs up once that
  // many events were read.
  Result<net::ClientResponse> StreamedAsk(const std::string& conversation,
                                          std::vector<SeenEvent>& events,
                                          size_t hang_up_after = 0) {
    net::ClientRequest r = LocalAsk(conversation, /*stream=*/true);
    auto buffer = std::make_shared<std::string>();
    auto reads = std::make_shared<size_t>(0);
    r.on_body = [&events, buffer, reads, hang_up_after](std::string_view bytes) {
      buffer->append(bytes);
      for (size_t end; (end = buffer->find("\n\n")) != std::string::npos;) {
        SeenEvent e;
        e.read_index = *reads;
        std::istringstream block(buffer->substr(0, end));
        buffer->erase(0, end + 2);
        for (std::string line; std::getline(block, line);) {
          if (line.rfind("event: ", 0) == 0) e.name = line.substr(7);
          if (line.rfind("data: ", 0) == 0) e.data = json::parse(line.substr(6), nullptr, false);
        }
        events.push_back(std::move(e));
      }
      ++*reads;
      return hang_up_after == 0 || events.size() < hang_up_after;
    };
    return net::BlockingRequest(std::move(r));
  }

  TempDir dir_;
  LlmServer llm_;
  std::string config_;
  std::unique_ptr<DaemonProcess> daemon_;
};

TEST_F(LocalStreamE2eTest, RawClientSeesDeltasBeforeOneMessageEvent) {
  llm_.Push(Slow(kAnswer));
  std::vector<SeenEvent> events;
  auto r = StreamedAsk("raw", events);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(net::FindHeader(r->headers, "content-type").rfind("text/event-stream", 0), 0u);
  ASSERT_GE(events.size(), 3u);
  std::string text;  // the client's copy, from deltas and replaces
  size_t deltas = 0;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    ASSERT_TRUE(events[i].name == "delta" || events[i].name == "replace") << events[i].name;
    if (events[i].name == "delta") {
      ++deltas;
      text += events[i].data["text"].get<std::string>();
    } else {
      text = events[i].data["text"].get<std::string>();
    }
  }
  EXPECT_GE(deltas, 2u);
  const SeenEvent& last = events.back();
  ASSERT_EQ(last.name, "message");
  const std::string final_text = last.data["text"];
  EXPECT_NE(final_text.find("apt install frobnicator as root"), std::string::npos) << final_text;
  ASSERT_FALSE(last.data["citations"].empty()) << last.data.dump();
  EXPECT_EQ(last.data["citations"][0]["source"], "frobnicator.md");
  EXPECT_EQ(final_text.rfind(text, 0), 0u) << text;
  // The first partial came in an earlier read than the reply: it was sent while the model was
  // still writing, not with the answer.
  EXPECT_LT(events.front().read_index, last.read_index);
}

TEST_F(LocalStreamE2eTest, NonStreamingLocalAskIsUnchanged) {
  llm_.Push(Slow(kAnswer, 5));
  auto r = net::BlockingRequest(LocalAsk("plain", /*stream=*/false));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(net::FindHeader(r->headers, "content-type"), "application/json");
  json reply = json::parse(r->body, nullptr, false);
  ASSERT_TRUE(reply.is_object()) << r->body;
  for (const char* key :
       {"id", "conversation", "thread", "text", "citations", "confidence", "escalated"}) {
    EXPECT_TRUE(reply.contains(key)) << key << " in " << r->body;
  }
  EXPECT_EQ(reply["conversation"], "plain");
  EXPECT_NE(reply["text"].get<std::string>().find("apt install frobnicator"), std::string::npos);
  EXPECT_FALSE(reply["citations"].empty());
}

TEST_F(LocalStreamE2eTest, AskPrintsTheAnswerAsItIsWrittenThenTheSources) {
  llm_.Push(Slow(kAnswer, 60));
  LiveCommand ask({"ask", "--conversation", "cli", "--config", config_,
                   "how do i install the frobnicator on linux?"},
                  Env(), dir_.Sub("ask.err"));
  // Some of the answer is on the screen while the rest is still being written.
  ASSERT_TRUE(ask.ReadUntil([](const std::string& out) { return !out.empty(); }, 30'000))
      << ask.err();
  const std::string first = ask.out();
  const int code = ask.Finish(30'000);
  ASSERT_EQ(code, 0) << ask.err();
  const std::string& out = ask.out();
  EXPECT_NE(ask.err().find("going through it"), std::string::npos) << ask.err();
  const size_t sources = out.find("\n\nSources:\n  [1] Installing the Frobnicator");
  ASSERT_NE(sources, std::string::npos) << out;
  const std::string text = out.substr(0, sources);
  EXPECT_NE(text.find("apt install frobnicator as root"), std::string::npos) << out;
  EXPECT_EQ(out.find("parley>"), std::string::npos) << out;  // no chat prompt in ask
  EXPECT_EQ(out.back(), '\n');
  // The first read was a strict beginning of the answer's text, and more reads followed.
  EXPECT_LT(first.size(), text.size()) << first;
  EXPECT_EQ(text.rfind(first, 0), 0u) << first;
  EXPECT_GE(ask.reads().size(), 2u);
}

TEST_F(LocalStreamE2eTest, AskJsonPrintsOnlyTheFinalJson) {
  llm_.Push(Slow(kAnswer, 5));
  CommandResult r = RunParley({"ask", "--json", "--conversation", "cli-json", "--config", config_,
                               "how do i install the frobnicator on linux?"},
                              "", 60'000, Env());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ASSERT_FALSE(r.out.empty());
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
  json reply = json::parse(r.out, nullptr, false);
  ASSERT_TRUE(reply.is_object()) << r.out;
  EXPECT_NE(reply["text"].get<std::string>().find("apt install frobnicator"), std::string::npos);
  EXPECT_FALSE(reply["citations"].empty());
}

TEST_F(LocalStreamE2eTest, ChatThroughTheDaemonShowsTheWholeReplyOnce) {
  llm_.Push(Slow(kAnswer, 20));
  CommandResult r = RunParley({"chat", "--conversation", "chat", "--config", config_},
                              "how do i install the frobnicator on linux?\n/quit\n", 60'000, Env());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const size_t start = r.out.find("\nparley> ");
  ASSERT_NE(start, std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("\nparley> ", start + 1), std::string::npos) << r.out;  // printed once
  const std::string answer = r.out.substr(start + 9);
  EXPECT_EQ(answer.rfind("Install the frobnicator with apt", 0), 0u) << r.out;
  EXPECT_NE(answer.find("\n\nSources:\n  [1] Installing the Frobnicator"), std::string::npos)
      << r.out;
}

TEST_F(LocalStreamE2eTest, HangingUpMidStreamLeavesTheDaemonHealthy) {
  llm_.Push(Slow(kAnswer, 40));
  std::vector<SeenEvent> events;
  auto aborted = StreamedAsk("hang-up", events, /*hang_up_after=*/1);
  EXPECT_FALSE(aborted.ok());
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].name, "delta");

  // The daemon finishes that turn (its reply goes nowhere) and answers the next one.
  llm_.Push(Slow(kAnswer, 5));
  CommandResult next = RunParley({"ask", "--conversation", "after", "--config", config_,
                                  "how do i install the frobnicator on linux?"},
                                 "", 60'000, Env());
  ASSERT_EQ(next.exit_code, 0) << next.err;
  EXPECT_NE(next.out.find("apt install frobnicator as root"), std::string::npos) << next.out;
  EXPECT_NE(next.out.find("Sources:"), std::string::npos) << next.out;
  EXPECT_TRUE(daemon_->Running());
  auto health = daemon_->Get("/healthz");
  ASSERT_TRUE(health.ok()) << health.status().ToString();
  EXPECT_EQ(health->status, 200);
  EXPECT_EQ(llm_.RequestCount(), 2u);
}

TEST_F(LocalStreamE2eTest, DaemonGoneMidAnswerIsAOneLineErrorForAsk) {
  // The answer trickles in for seconds; the daemon dies after its first piece was printed.
  llm_.Push(Slow(kAnswer, 300));
  LiveCommand ask({"ask", "--conversation", "gone", "--config", config_,
                   "how do i install the frobnicator on linux?"},
                  Env(), dir_.Sub("gone.err"));
  ASSERT_TRUE(ask.ReadUntil([](const std::string& out) { return !out.empty(); }, 30'000))
      << ask.err();
  EXPECT_EQ(std::string(kAnswer).rfind(ask.out(), 0), 0u) << ask.out();
  daemon_->Kill();
  const int code = ask.Finish(30'000);
  EXPECT_EQ(code, 1) << ask.out() << ask.err();
  EXPECT_EQ(ask.out().back(), '\n');  // the draft line is ended
  const std::string err = ask.err();
  const size_t line = err.find("parley: the daemon went away before the reply was complete");
  ASSERT_NE(line, std::string::npos) << err;
  EXPECT_EQ(err.find('\n', line), err.size() - 1) << err;  // one line, the last
}

}  // namespace
}  // namespace parley::testing
