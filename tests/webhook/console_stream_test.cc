// Console progressive output: RunTerminal with a streaming backend, and ConsoleAdapter::Ask /
// Backend with partial replies sent as the engine sends them (SendPartial..., then Send); the
// streamed local API (POST /v1/local/ask with Accept: text/event-stream) behind a real
// net::HttpServer on a Unix-domain socket in a temp dir, read with StreamedReplyReader.
// (Kept under tests/webhook/ because the console adapter has no test directory yet.)

#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "adapters/common/http_json.h"
#include "adapters/common/reply_stream.h"
#include "adapters/console/console_adapter.h"
#include "store/committer.h"
#include "store/kv_store.h"
#include "tests/support/io_threads.h"
#include "tests/support/recording_inbound_sink.h"
#include "tests/support/temp_dir.h"

namespace parley::console {
namespace {

// A LevelDB store in a temp dir with its committer, for the adapter's outbox.
struct TestStore {
  TestStore() : kv(Open(dir)), committer(*kv) {}
  static std::unique_ptr<store::KvStore> Open(const testing::TempDir& dir) {
    auto opened = store::OpenLevelDb(dir.Sub("db"));
    EXPECT_TRUE(opened.ok()) << opened.status().ToString();
    return opened.ok() ? std::move(opened).value() : nullptr;
  }
  testing::TempDir dir;
  std::unique_ptr<store::KvStore> kv;
  store::Committer committer;
};

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
  TestStore db;
  ConsoleAdapter adapter(control, "tester", *db.kv, db.committer);
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
  TestStore db;
  ConsoleAdapter adapter(control, "tester", *db.kv, db.committer);
  StreamingEngine engine(adapter, {"The", "The answer", "The answer is"}, "The answer is 42.");
  ASSERT_TRUE(adapter.Start(engine).ok());
  const std::string out = Converse(adapter.Backend("terminal"));
  // However the partials were coalesced, the screen shows the reply exactly once.
  EXPECT_EQ(out, "\nparley> The answer is 42.\n");
  // Partials for a request nobody waits for are ignored.
  adapter.SendPartial(Text("stray"));
}

// ---- `parley ask` style printing (no label) ----

TEST(ConsoleProgressTest, AskStylePrintsTheAnswerAloneWithSources) {
  OutboundMessage final_reply = Text("Run apt install gizmo [1].");
  final_reply.citations.push_back(Citation{"Install", "install.md", "Install > Linux", ""});
  std::ostringstream out;
  ProgressivePrinter printer(out, ProgressivePrinter::Style{"", ""});
  printer.Partial(Text("Run apt"));
  EXPECT_EQ(out.str(), "Run apt");
  printer.Partial(Text("Run apt install"));
  EXPECT_EQ(out.str(), "Run apt install");
  printer.Final(final_reply);
  EXPECT_EQ(out.str(), RenderForTerminal(final_reply) + "\n");
}

TEST(ConsoleProgressTest, AskStyleWithoutPartialsIsTheRenderedReply) {
  std::ostringstream out;
  ProgressivePrinter printer(out, ProgressivePrinter::Style{"", ""});
  printer.Final(Text("Just this"));
  EXPECT_EQ(out.str(), "Just this\n");
}

TEST(ConsoleProgressTest, InterruptEndsTheDraftLineOnce) {
  std::ostringstream out;
  ProgressivePrinter printer(out, ProgressivePrinter::Style{"", ""});
  printer.Interrupt();  // nothing printed: nothing to end
  EXPECT_EQ(out.str(), "");
  printer.Partial(Text("Half"));
  printer.Interrupt();
  printer.Interrupt();
  EXPECT_EQ(out.str(), "Half\n");
}

// ---- StreamedReplyReader ----

TEST(StreamedReplyReaderTest, DecodesEventsCutAnywhere) {
  OutboundMessage final_reply = Text("Help me, please");
  final_reply.citations.push_back(Citation{"Install", "install.md", "Install > Linux", "u"});
  final_reply.confidence = 0.5;
  const std::string body = ": a comment\r\n\r\n" +
                           adapters::SseEvent("delta", {{"id", "r1"}, {"text", "Hel"}}) +
                           adapters::SseEvent("delta", {{"id", "r1"}, {"text", "lo"}}) +
                           "event: replace\r\ndata: {\"id\":\"r1\",\"text\":\"Help\"}\r\n\r\n" +
                           adapters::SseEvent("unknown", {{"x", 1}}) +
                           adapters::SseEvent("delta", {{"id", "r1"}, {"text", " me \xC3\xA9"}}) +
                           adapters::SseEvent("message", adapters::ReplyJson(final_reply)) +
                           adapters::SseEvent("delta", {{"id", "r1"}, {"text", "after the end"}});
  for (size_t piece : {size_t{1}, size_t{2}, size_t{7}, body.size()}) {
    std::vector<std::string> partials;
    adapters::StreamedReplyReader reader(
        [&](const OutboundMessage& p) { partials.push_back(p.text); });
    for (size_t i = 0; i < body.size(); i += piece)
      reader.Feed(std::string_view(body).substr(i, piece));
    EXPECT_EQ(partials, (std::vector<std::string>{"Hel", "Hello", "Help", "Help me \xC3\xA9"}))
        << "piece " << piece;
    ASSERT_TRUE(reader.finished());
    ASSERT_TRUE(reader.reply().has_value()) << reader.error();
    EXPECT_EQ(reader.reply()->text, "Help me, please");
    EXPECT_EQ(reader.reply()->citations, final_reply.citations);
    EXPECT_DOUBLE_EQ(reader.reply()->confidence, 0.5);
    EXPECT_TRUE(reader.error().empty());
  }
}

TEST(StreamedReplyReaderTest, ErrorEventEndsWithoutReply) {
  adapters::StreamedReplyReader reader(nullptr);
  reader.Feed(adapters::SseEvent("delta", {{"id", "r1"}, {"text", "Half"}}));
  EXPECT_FALSE(reader.finished());
  reader.Feed(adapters::SseEvent("error", {{"error", "unavailable"}, {"message", "going down"}}));
  EXPECT_TRUE(reader.finished());
  EXPECT_FALSE(reader.reply().has_value());
  EXPECT_EQ(reader.error(), "going down");
  EXPECT_EQ(reader.text(), "Half");
}

TEST(StreamedReplyReaderTest, MalformedEventsAreErrorsNotCrashes) {
  for (const std::string& bad :
       {std::string("event: delta\ndata: {not json\n\n"), std::string("event: delta\ndata: 42\n\n"),
        std::string("event: message\ndata: [1]\n\n"),
        std::string("event: message\ndata: {\"text\":\"x\",\"citations\":[7]}\n\n"),
        std::string("event: message\ndata: {\"text\":5}\n\n")}) {
    adapters::StreamedReplyReader reader(nullptr);
    reader.Feed(bad);
    EXPECT_TRUE(reader.finished()) << bad;
    EXPECT_FALSE(reader.reply().has_value()) << bad;
    EXPECT_FALSE(reader.error().empty()) << bad;
  }
  adapters::StreamedReplyReader unfinished(nullptr);
  unfinished.Feed("event: message\ndata: {\"text\":\"no blank line yet\"}\n");
  EXPECT_FALSE(unfinished.finished());
}

// ---- The streamed local API (HandleLocal) ----

using nlohmann::json;
using parley::testing::WaitFor;

using RecordingSink = parley::testing::RecordingInboundSink;

// What a client of the local API saw: the response head and the decoded stream, observable
// while the request is still running. Thread-safe.
struct ClientView {
  std::mutex mu;
  int status = 0;
  std::string content_type;
  std::string raw;  // the whole body so far
  std::vector<std::string> partials;
  std::optional<OutboundMessage> reply;
  std::string error;

  std::vector<std::string> Partials() {
    std::lock_guard<std::mutex> lock(mu);
    return partials;
  }
  std::string Raw() {
    std::lock_guard<std::mutex> lock(mu);
    return raw;
  }
};

class LocalStreamTest : public ::testing::Test {
 protected:
  void SetUp() override {
    adapter_ = std::make_unique<ConsoleAdapter>(control_, "tester", *db_.kv, db_.committer);
    ASSERT_TRUE(adapter_->Start(sink_).ok());
    server_ = std::make_unique<net::HttpServer>(
        io_.io, net::HttpServerOptions{},
        [adapter = adapter_.get()](net::HttpRequest req, net::Responder respond) {
          if (!adapter->HandleLocal(req, respond)) {
            respond(adapters::JsonError(404, "not_found", "no such path"));
          }
        });
    socket_ = dir_.Sub("parley.sock");
    ASSERT_TRUE(server_->ListenUnix(socket_).ok());
  }
  void TearDown() override {
    if (server_) server_->Stop();
  }

  // Starts POST /v1/local/ask in the background, feeding the body to a StreamedReplyReader
  // when it is an event stream. abort_after_partials > 0: hang up after that many partials.
  std::future<Result<net::ClientResponse>> Ask(json body, bool accept_stream,
                                               std::shared_ptr<ClientView> view,
                                               size_t abort_after_partials = 0) {
    net::ClientRequest r;
    r.method = "POST";
    r.url = "http://localhost/v1/local/ask";
    r.unix_socket_path = socket_;
    r.body = body.dump();
    r.timeout_ms = 10'000;
    r.headers.emplace_back("Content-Type", "application/json");
    if (accept_stream) r.headers.emplace_back("Accept", "text/event-stream");
    auto reader = std::make_shared<adapters::StreamedReplyReader>(
        [view](const OutboundMessage& p) { view->partials.push_back(p.text); });  // under view->mu
    r.on_headers = [view](int status, const net::Headers& headers) {
      std::lock_guard<std::mutex> lock(view->mu);
      view->status = status;
      view->content_type = net::FindHeader(headers, "content-type");
      return true;
    };
    r.on_body = [view, reader, abort_after_partials](std::string_view bytes) {
      std::lock_guard<std::mutex> lock(view->mu);
      view->raw.append(bytes);
      if (view->content_type.rfind("text/event-stream", 0) != 0) return true;
      reader->Feed(bytes);
      view->reply = reader->reply();
      view->error = reader->error();
      return abort_after_partials == 0 || view->partials.size() < abort_after_partials;
    };
    return std::async(std::launch::async,
                      [r]() mutable { return net::BlockingRequest(std::move(r)); });
  }

  // The reply the engine would produce for sink message i.
  OutboundMessage ReplyTo(size_t i, const std::string& text) {
    InboundMessage in = sink_.message(i);
    OutboundMessage out;
    out.id = "reply-" + in.event_id;
    out.conversation = in.conversation();
    out.text = text;
    out.in_reply_to = in.event_id;
    return out;
  }

  Status SendFinal(OutboundMessage message) {
    std::promise<Status> delivered;
    auto future = delivered.get_future();
    adapter_->Send(std::move(message), [&delivered](Status s) { delivered.set_value(s); });
    return future.get();  // Send's done runs before Send returns
  }

  testing::IoThreads io_{2};
  testing::TempDir dir_;
  TestStore db_;
  NoControl control_;
  RecordingSink sink_;
  std::unique_ptr<ConsoleAdapter> adapter_;
  std::unique_ptr<net::HttpServer> server_;
  std::string socket_;
};

const json kQuestion = {{"text", "how do i install it?"}, {"conversation", "c1"}};

TEST_F(LocalStreamTest, PartialsReachTheClientBeforeTheReply) {
  auto view = std::make_shared<ClientView>();
  auto response = Ask(kQuestion, /*accept_stream=*/true, view);
  ASSERT_TRUE(WaitFor([&] { return sink_.count() == 1; }));
  EXPECT_EQ(sink_.message(0).channel, "c1");
  EXPECT_EQ(sink_.message(0).platform, "console");
  EXPECT_EQ(adapter_->OpenStreams(), 1u);
  // Each partial is on the client's screen before the next is written: the answer streams.
  adapter_->SendPartial(ReplyTo(0, "Run"));
  ASSERT_TRUE(WaitFor([&] { return view->Partials().size() == 1; })) << view->Raw();
  adapter_->SendPartial(ReplyTo(0, "Run apt"));
  ASSERT_TRUE(WaitFor([&] { return view->Partials().size() == 2; })) << view->Raw();
  adapter_->SendPartial(ReplyTo(0, "Run apt install"));
  ASSERT_TRUE(WaitFor([&] { return view->Partials().size() == 3; })) << view->Raw();
  OutboundMessage final_reply = ReplyTo(0, "Run apt install gizmo [1].");
  final_reply.citations.push_back(Citation{"Install", "install.md", "Install > Linux", ""});
  EXPECT_TRUE(SendFinal(final_reply).ok());

  auto result = response.get();
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  EXPECT_EQ(result->status, 200);
  std::lock_guard<std::mutex> lock(view->mu);
  EXPECT_EQ(view->content_type.rfind("text/event-stream", 0), 0u);
  EXPECT_EQ(view->partials, (std::vector<std::string>{"Run", "Run apt", "Run apt install"}));
  ASSERT_TRUE(view->reply.has_value()) << view->raw;
  EXPECT_EQ(view->reply->text, "Run apt install gizmo [1].");
  EXPECT_EQ(view->reply->citations, final_reply.citations);
  // The "message" event carries exactly the body of the non-streaming answer.
  const std::string message_event = adapters::SseEvent("message", adapters::ReplyJson(final_reply));
  EXPECT_EQ(view->raw.size() - view->raw.rfind(message_event), message_event.size()) << view->raw;
  EXPECT_EQ(adapter_->OpenStreams(), 0u);
}

TEST_F(LocalStreamTest, StreamFieldInTheBodyAlsoStreams) {
  auto view = std::make_shared<ClientView>();
  json body = kQuestion;
  body["stream"] = true;
  auto response = Ask(body, /*accept_stream=*/false, view);
  ASSERT_TRUE(WaitFor([&] { return sink_.count() == 1; }));
  adapter_->SendPartial(ReplyTo(0, "Hello"));
  adapter_->SendPartial(ReplyTo(0, "Help"));  // a rewrite
  EXPECT_TRUE(SendFinal(ReplyTo(0, "Help me")).ok());
  auto result = response.get();
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  std::lock_guard<std::mutex> lock(view->mu);
  EXPECT_EQ(view->partials, (std::vector<std::string>{"Hello", "Help"}));
  EXPECT_NE(view->raw.find("event: replace\n"), std::string::npos) << view->raw;
  ASSERT_TRUE(view->reply.has_value()) << view->raw;
  EXPECT_EQ(view->reply->text, "Help me");
}

TEST_F(LocalStreamTest, WithoutStreamingTheAnswerIsTheReplyJsonAsBefore) {
  for (json body : {kQuestion, json{{"text", "q"}, {"stream", false}}}) {
    const size_t n = sink_.count();
    auto view = std::make_shared<ClientView>();
    auto response = Ask(body, /*accept_stream=*/false, view);
    ASSERT_TRUE(WaitFor([&] { return sink_.count() == n + 1; }));
    EXPECT_EQ(adapter_->OpenStreams(), 0u);
    adapter_->SendPartial(ReplyTo(n, "ignored draft"));
    OutboundMessage final_reply = ReplyTo(n, "The answer.");
    final_reply.citations.push_back(Citation{"Install", "install.md", "Install", ""});
    EXPECT_TRUE(SendFinal(final_reply).ok());
    auto result = response.get();
    ASSERT_TRUE(result.ok()) << result.status().ToString();
    EXPECT_EQ(result->status, 200);
    std::lock_guard<std::mutex> lock(view->mu);
    EXPECT_EQ(view->content_type, "application/json");
    EXPECT_EQ(json::parse(view->raw, nullptr, false), adapters::ReplyJson(final_reply))
        << view->raw;
  }
}

TEST_F(LocalStreamTest, RefusedTurnIsAJsonErrorNotAStream) {
  IntakeResult limited;
  limited.status = Status::ResourceExhausted("slow down");
  limited.retry_after_ms = 3000;
  sink_.AnswerNextWith(limited);
  auto view = std::make_shared<ClientView>();
  auto result = Ask(kQuestion, /*accept_stream=*/true, view).get();
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  EXPECT_EQ(result->status, 429);
  std::lock_guard<std::mutex> lock(view->mu);
  EXPECT_EQ(view->content_type, "application/json");
  EXPECT_EQ(json::parse(view->raw, nullptr, false).value("error", ""), "rate_limited");
  EXPECT_EQ(adapter_->OpenStreams(), 0u);
}

TEST_F(LocalStreamTest, BadStreamFieldIsRefused) {
  auto view = std::make_shared<ClientView>();
  json body = kQuestion;
  body["stream"] = "yes";
  auto result = Ask(body, /*accept_stream=*/true, view).get();
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  EXPECT_EQ(result->status, 422);
  json wrong_user = kQuestion;
  wrong_user["user"] = 5;
  result = Ask(wrong_user, /*accept_stream=*/true, view).get();
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  EXPECT_EQ(result->status, 422);
  EXPECT_EQ(sink_.count(), 0u);
}

TEST_F(LocalStreamTest, ClientHangingUpMidStreamLeavesTheAdapterHealthy) {
  auto view = std::make_shared<ClientView>();
  auto response = Ask(kQuestion, /*accept_stream=*/true, view, /*abort_after_partials=*/1);
  ASSERT_TRUE(WaitFor([&] { return sink_.count() == 1; }));
  adapter_->SendPartial(ReplyTo(0, "Half"));
  auto aborted = response.get();
  EXPECT_FALSE(aborted.ok());  // the client hung up
  // The server notices and drops the stream; the turn goes on and its output goes nowhere.
  ASSERT_TRUE(WaitFor([&] { return server_->InFlight() == 0; }));
  adapter_->SendPartial(ReplyTo(0, "Half an answer"));
  Status delivered = SendFinal(ReplyTo(0, "Half an answer, whole."));
  EXPECT_EQ(delivered.code(), Status::Code::kUnavailable) << delivered.ToString();
  EXPECT_EQ(adapter_->OpenStreams(), 0u);

  // The next request is answered normally.
  auto next_view = std::make_shared<ClientView>();
  auto next = Ask(kQuestion, /*accept_stream=*/true, next_view);
  ASSERT_TRUE(WaitFor([&] { return sink_.count() == 2; }));
  adapter_->SendPartial(ReplyTo(1, "Again"));
  EXPECT_TRUE(SendFinal(ReplyTo(1, "Again, fine.")).ok());
  auto result = next.get();
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  std::lock_guard<std::mutex> lock(next_view->mu);
  ASSERT_TRUE(next_view->reply.has_value()) << next_view->raw;
  EXPECT_EQ(next_view->reply->text, "Again, fine.");
}

TEST_F(LocalStreamTest, StopEndsOpenStreamsWithAnErrorEvent) {
  auto view = std::make_shared<ClientView>();
  auto response = Ask(kQuestion, /*accept_stream=*/true, view);
  ASSERT_TRUE(WaitFor([&] { return sink_.count() == 1; }));
  adapter_->SendPartial(ReplyTo(0, "Half"));
  ASSERT_TRUE(WaitFor([&] { return view->Partials().size() == 1; }));
  bool stopped = false;
  adapter_->Stop([&] { stopped = true; });
  EXPECT_TRUE(stopped);
  auto result = response.get();
  ASSERT_TRUE(result.ok()) << result.status().ToString();  // a well-ended stream
  {
    std::lock_guard<std::mutex> lock(view->mu);
    EXPECT_FALSE(view->reply.has_value());
    EXPECT_EQ(view->error, "shutting down before the reply was ready");
  }
  // The reply that comes late finds nobody; new requests are refused.
  EXPECT_EQ(SendFinal(ReplyTo(0, "Too late")).code(), Status::Code::kNotFound);
  auto refused = Ask(kQuestion, /*accept_stream=*/true, std::make_shared<ClientView>()).get();
  ASSERT_TRUE(refused.ok());
  EXPECT_EQ(refused->status, 503);
}

}  // namespace
}  // namespace parley::console
