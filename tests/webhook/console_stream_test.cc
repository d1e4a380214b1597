// Console progressive output: RunTerminal with a streaming backend, and ConsoleAdapter::Ask /
// Backend with partial replies sent as the engine sends them (SendPartial..., then Send).
// (Kept under tests/webhook/ because the console adapter has no test directory yet.)

#include <gtest/gtest.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "adapters/console/console_adapter.h"

namespace parley::console {
namespace {

OutboundMessage Text(const std::string& text) {
  OutboundMessage m;
  m.id = "r1";
  m.text = text;
  return m;
}

// A backend that "streams" the given partials, then answers with final.
TerminalBackend ScriptedBackend(std::vector<std::string> partials, OutboundMessage final_reply,
                                bool ok = true) {
  TerminalBackend backend;
  backend.ask = [](const std::string&, OutboundMessage&, std::string& error) {
    error = "ask must not be used when ask_streaming is set";
    return false;
  };
  backend.ask_streaming = [partials, final_reply, ok](const std::string&,
                                                      const PartialCallback& on_partial,
                                                      OutboundMessage& reply, std::string& error) {
    for (const auto& p : partials) on_partial(Text(p));
    if (!ok) {
      error = "engine failed";
      return false;
    }
    reply = final_reply;
    return true;
  };
  backend.forget = []() -> Result<size_t> { return size_t{0}; };
  return backend;
}

// What RunTerminal prints for one question, without the banner and prompts.
std::string Converse(const TerminalBackend& backend) {
  std::istringstream in("question\n");
  std::ostringstream out;
  RunTerminal(in, out, backend);
  std::string s = out.str();
  const std::string prompt = "\nyou> ";
  const size_t first = s.find(prompt);
  const size_t last = s.rfind(prompt);
  if (first == std::string::npos || first == last) return "<no answer: " + s + ">";
  return s.substr(first + prompt.size(), last - first - prompt.size());
}

TEST(ConsoleProgressTest, PrintsDeltasThenOnlyTheRestAndSources) {
  OutboundMessage final_reply = Text("Hello, world!");
  final_reply.citations.push_back(Citation{"Install", "install.md", "Install > Linux", ""});
  const std::string out =
      Converse(ScriptedBackend({"Hel", "Hello", "Hello", "Hello, wor"}, final_reply));
  EXPECT_EQ(out, "\nparley> " + RenderForTerminal(final_reply) + "\n");
}

TEST(ConsoleProgressTest, DeltasAreWrittenAsTheyCome) {
  // Observe the stream between partials: each partial adds exactly its new text.
  std::ostringstream out;
  std::vector<std::string> seen;
  TerminalBackend backend;
  backend.ask_streaming = [&](const std::string&, const PartialCallback& on_partial,
                              OutboundMessage& reply, std::string&) {
    for (const char* p : {"One", "One two", "One two three"}) {
      on_partial(Text(p));
      seen.push_back(out.str());
    }
    reply = Text("One two three.");
    return true;
  };
  std::istringstream in("q\n");
  RunTerminal(in, out, backend);
  ASSERT_EQ(seen.size(), 3u);
  ASSERT_GE(seen[0].size(), 12u);
  EXPECT_EQ(seen[0].substr(seen[0].size() - 12), "\nparley> One");
  EXPECT_EQ(seen[1].substr(seen[0].size()), " two");
  EXPECT_EQ(seen[2].substr(seen[1].size()), " three");
  EXPECT_EQ(out.str().substr(seen[2].size(), 2), ".\n");
}

TEST(ConsoleProgressTest, RewriteEndsTheDraftAndPrintsTheFinalInFull) {
  const std::string out = Converse(ScriptedBackend({"Hello", "Help", "Help me"}, Text("Help me.")));
  EXPECT_EQ(out, "\nparley> Hello\nparley> Help me.\n");
}

TEST(ConsoleProgressTest, FinalThatDoesNotExtendTheDraftIsPrintedInFull) {
  const std::string out = Converse(ScriptedBackend({"Draft"}, Text("Other answer")));
  EXPECT_EQ(out, "\nparley> Draft\nparley> Other answer\n");
}

TEST(ConsoleProgressTest, NoPartialsPrintsAsBefore) {
  const std::string out = Converse(ScriptedBackend({}, Text("Just this")));
  EXPECT_EQ(out, "\nparley> Just this\n");
}

TEST(ConsoleProgressTest, FailureAfterPartials) {
  const std::string out = Converse(ScriptedBackend({"Half"}, Text(""), /*ok=*/false));
  EXPECT_EQ(out, "\nparley> Half\nparley> (engine failed)\n");
}

class NoControl final : public ConversationControl {
 public:
  void Forget(const ConversationKey&, ForgetCallback done) override { done(size_t{0}); }
  void ForgetUser(const std::string&, const std::string&, ForgetCallback done) override {
    done(size_t{0});
  }
};

// Accepts every message and answers it from another thread, as the engine would: several
// partials, then the final reply.
class StreamingEngine final : public InboundSink {
 public:
  StreamingEngine(ChannelAdapter& adapter, std::vector<std::string> partials, std::string final)
      : adapter_(adapter), partials_(std::move(partials)), final_(std::move(final)) {}
  ~StreamingEngine() override {
    for (auto& t : threads_) t.join();
  }
  void OnInbound(InboundMessage message, IntakeOptions,
                 std::function<void(IntakeResult)> accepted) override {
    accepted(IntakeResult{});
    std::lock_guard<std::mutex> lock(mu_);
    threads_.emplace_back([this, message] {
      OutboundMessage reply;
      reply.id = "reply-" + message.event_id;
      reply.conversation = message.conversation();
      reply.in_reply_to = message.event_id;
      for (const auto& p : partials_) {
        reply.text = p;
        adapter_.SendPartial(reply);
      }
      reply.text = final_;
      adapter_.Send(reply, [this](Status s) { delivered_ok_ = s.ok(); });
    });
  }
  std::atomic<bool> delivered_ok_{false};

 private:
  ChannelAdapter& adapter_;
  std::vector<std::string> partials_;
  std::string final_;
  std::mutex mu_;
  std::vector<std::thread> threads_;
};

TEST(ConsoleAdapterStreamTest, AskHandsPartialsToTheCallingThread) {
  NoControl control;
  ConsoleAdapter adapter(control, "tester");
  StreamingEngine engine(adapter, {"A", "A b", "A b c"}, "A b c d");
  ASSERT_TRUE(adapter.Start(engine).ok());
  const auto caller = std::this_thread::get_id();
  std::vector<std::string> partials;
  bool on_caller_thread = true;
  OutboundMessage reply;
  std::string error;
  ASSERT_TRUE(adapter.Ask(
      "terminal", "q",
      [&](const OutboundMessage& p) {
        on_caller_thread = on_caller_thread && std::this_thread::get_id() == caller;
        partials.push_back(p.text);
      },
      reply, error))
      << error;
  EXPECT_EQ(reply.text, "A b c d");
  EXPECT_TRUE(on_caller_thread);
  // Partials may be coalesced, never reordered; each is one the engine sent.
  ASSERT_LE(partials.size(), 3u);
  const std::vector<std::string> sent = {"A", "A b", "A b c"};
  size_t next = 0;
  for (const auto& p : partials) {
    while (next < sent.size() && sent[next] != p) ++next;
    EXPECT_LT(next, sent.size()) << "unexpected or reordered partial " << p;
  }
}

TEST(ConsoleAdapterStreamTest, TerminalOverTheAdapterPrintsTheWholeReplyOnce) {
  NoControl control;
  ConsoleAdapter adapter(control, "tester");
  StreamingEngine engine(adapter, {"The", "The answer", "The answer is"}, "The answer is 42.");
  ASSERT_TRUE(adapter.Start(engine).ok());
  const std::string out = Converse(adapter.Backend("terminal"));
  // However the partials were coalesced, the screen shows the reply exactly once.
  EXPECT_EQ(out, "\nparley> The answer is 42.\n");
  // Partials for a request nobody waits for are ignored.
  adapter.SendPartial(Text("stray"));
}

}  // namespace
}  // namespace parley::console
