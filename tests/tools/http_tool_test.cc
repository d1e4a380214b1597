// HTTP tools against a real HttpServer on 127.0.0.1 (port 0) through the real curl client:
// config validation, URL escaping observed at the server, {+name} refusal, query strings, body
// templates, headers, `keep`, non-2xx, size and time limits.

#include "tools/http_tool.h"

#include <gtest/gtest.h>

#include <mutex>
#include <string>
#include <vector>

#include "tests/tools/test_util.h"
#include "tools/registry.h"

namespace parley::tools {
namespace {

using nlohmann::json;
using testing::IoThreads;
using testing::WaitFor;

struct Seen {
  std::string method;
  std::string target;
  net::Headers headers;
  std::string body;
};

class HttpToolTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = std::make_unique<net::HttpServer>(
        io_.io, net::HttpServerOptions{}, [this](net::HttpRequest request, net::Responder respond) {
          {
            std::lock_guard<std::mutex> lock(mu_);
            seen_.push_back({request.method, request.target, request.headers, request.body});
          }
          net::HttpResponse response;
          if (request.path == "/json") {
            response.body = R"({"data":{"items":[1,2],"note":"ok"},"noise":"x"})";
          } else if (request.path == "/text") {
            response.content_type = "text/plain";
            response.body = "plain answer";
          } else if (request.path == "/fail") {
            response.status = 503;
            response.body = "upstream down " + std::string(300, 'z');
          } else if (request.path == "/big") {
            response.body = std::string(5000, 'b');
          } else if (request.path == "/slow") {
            std::lock_guard<std::mutex> lock(mu_);
            parked_.push_back(std::move(respond));
            return;
          } else {
            response.body = R"({"echo":true})";
          }
          respond(std::move(response));
        });
    auto port = server_->ListenTcp("127.0.0.1", 0);
    ASSERT_TRUE(port.ok()) << port.status().ToString();
    base_ = "http://127.0.0.1:" + std::to_string(*port);
    client_ = net::MakeCurlHttpClient(io_.io);
  }
  void TearDown() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      parked_.clear();
    }
    client_.reset();
    if (server_) server_->Stop();
    server_.reset();
  }

  config::HttpToolConfig Config(const std::string& url, const std::string& method = "GET") {
    config::HttpToolConfig c;
    c.name = "lookup";
    c.description = "looks things up";
    c.parameters = R"({"type":"object","properties":{"q":{"type":"string"},
        "path":{"type":"string"},"limit":{"type":"integer"},"flag":{"type":"boolean"},
        "title":{"type":"string"},"n":{"type":"number"},"tags":{"type":"array"}}})";
    c.method = method;
    c.url = url;
    c.timeout_ms = 3000;
    return c;
  }

  std::shared_ptr<Tool> Make(const config::HttpToolConfig& c) {
    auto tool = MakeHttpTool(c, client_);
    EXPECT_TRUE(tool.ok()) << tool.status().ToString();
    return tool.ok() ? *tool : nullptr;
  }

  ToolResult Invoke(Tool& tool, json arguments) {
    struct Shared {
      std::mutex mu;
      std::optional<ToolResult> result;
    };
    auto shared = std::make_shared<Shared>();
    tool.Invoke(std::move(arguments), ToolContext{}, [shared](ToolResult r) {
      std::lock_guard<std::mutex> lock(shared->mu);
      shared->result = std::move(r);
    });
    WaitFor([&] {
      std::lock_guard<std::mutex> lock(shared->mu);
      return shared->result.has_value();
    });
    std::lock_guard<std::mutex> lock(shared->mu);
    EXPECT_TRUE(shared->result.has_value()) << "no result within the deadline";
    return shared->result.value_or(ToolResult{false, "<none>", false});
  }

  std::vector<Seen> SeenRequests() {
    std::lock_guard<std::mutex> lock(mu_);
    return seen_;
  }
  Seen LastSeen() {
    std::lock_guard<std::mutex> lock(mu_);
    return seen_.empty() ? Seen{} : seen_.back();
  }

  IoThreads io_{2};
  std::unique_ptr<net::HttpServer> server_;
  std::shared_ptr<net::HttpClient> client_;
  std::string base_;
  std::mutex mu_;
  std::vector<Seen> seen_;
  std::vector<net::Responder> parked_;
};

TEST_F(HttpToolTest, ConfigIsValidatedWithTheToolNameAndTheProblem) {
  struct Case {
    std::function<void(config::HttpToolConfig&)> change;
    std::string problem;
  };
  const std::vector<Case> cases = {
      {[](auto& c) { c.name = "bad name"; }, "name must match"},
      {[](auto& c) { c.parameters = "[]"; }, "parameters is not a JSON object"},
      {[](auto& c) { c.parameters = "{oops"; }, "parameters is not a JSON object"},
      {[](auto& c) { c.parameters = R"({"type":"string"})"; }, "object schema"},
      {[](auto& c) { c.parameters = R"({"type":"object","required":5})"; }, "parameters:"},
      {[](auto& c) { c.method = "TRACE"; }, "method must be"},
      {[](auto& c) { c.url = "ftp://example.com/x"; }, "absolute http"},
      {[](auto& c) { c.url = "/relative/{q}"; }, "absolute http"},
      {[](auto& c) { c.url = "http:///nohost"; }, "no host"},
      {[](auto& c) { c.url = "http://h/a b"; }, "whitespace"},
      {[](auto& c) { c.url = "http://h/{nope}"; }, "{nope} names no property"},
      {[](auto& c) { c.url = "http://h/{+nope}"; }, "{+nope} names no property"},
      {[](auto& c) { c.url = "http://h/{q"; }, "unclosed"},
      {[](auto& c) { c.url = "http://h/{}"; }, "malformed placeholder"},
      {[](auto& c) { c.body = "{not json"; }, "body is not valid JSON"},
      {[](auto& c) { c.keep = "data/items"; }, "keep is not a JSON pointer"},
      {[](auto& c) { c.timeout_ms = 0; }, "timeout_ms must be positive"},
      {[](auto& c) { c.max_response_bytes = -1; }, "max_response_bytes must be positive"},
  };
  for (const Case& k : cases) {
    config::HttpToolConfig c = Config("http://h/{q}");
    k.change(c);
    auto made = MakeHttpTool(c, client_);
    ASSERT_FALSE(made.ok()) << k.problem;
    EXPECT_TRUE(made.status().IsInvalidArgument());
    EXPECT_NE(made.status().message().find("http tool " + c.name.substr(0, 80) + ": "),
              std::string::npos)
        << made.status().message();
    EXPECT_NE(made.status().message().find(k.problem), std::string::npos)
        << made.status().message();
  }
  config::HttpToolConfig lower = Config("https://h/{q}/{+path}", "post");
  EXPECT_TRUE(MakeHttpTool(lower, client_).ok());
}

TEST_F(HttpToolTest, PlaceholdersAreEscapedExactlyAsTheServerSeesThem) {
  auto tool = Make(Config(base_ + "/items/{q}/x"));
  ASSERT_NE(tool, nullptr);
  struct Case {
    json value;
    std::string target;
  };
  const std::vector<Case> cases = {
      {"a/b?c=d&e#f", "/items/a%2Fb%3Fc%3Dd%26e%23f/x"},
      {"caf\xC3\xA9 \xE2\x82\xAC", "/items/caf%C3%A9%20%E2%82%AC/x"},
      {"a b", "/items/a%20b/x"},
      {"%2F", "/items/%252F/x"},
      {"..", "/items/%2E%2E/x"},
      {"a.b-c_d~e", "/items/a.b-c_d~e/x"},
      {"line\r\nX-Injected: 1", "/items/line%0D%0AX-Injected%3A%201/x"},
  };
  for (const Case& c : cases) {
    ToolResult r = Invoke(*tool, json{{"q", c.value}});
    EXPECT_TRUE(r.ok) << r.content;
    EXPECT_EQ(LastSeen().target, c.target) << c.value.dump();
    EXPECT_EQ(LastSeen().method, "GET");
  }
  // Numbers and booleans as JSON, a missing argument as "".
  auto typed = Make(Config(base_ + "/n/{limit}/{flag}/{q}"));
  ASSERT_NE(typed, nullptr);
  EXPECT_TRUE(Invoke(*typed, json{{"limit", 7}, {"flag", true}}).ok);
  EXPECT_EQ(LastSeen().target, "/n/7/true/");
}

TEST_F(HttpToolTest, RawPlaceholdersRefuseStructureChangingValues) {
  auto tool = Make(Config(base_ + "/docs/{+path}"));
  ASSERT_NE(tool, nullptr);
  ToolResult ok = Invoke(*tool, json{{"path", "guide/v1/install"}});
  EXPECT_TRUE(ok.ok) << ok.content;
  EXPECT_EQ(LastSeen().target, "/docs/guide/v1/install");
  const size_t before = SeenRequests().size();
  for (const std::string bad : {"a b", "a#frag", "a\nb", "tab\there", "../admin", "x/../../y",
                                "./x", "caf\xC3\xA9", "a\"b", "a<b>"}) {
    ToolResult r = Invoke(*tool, json{{"path", bad}});
    EXPECT_FALSE(r.ok) << bad;
    EXPECT_EQ(r.content, "argument path has characters not allowed in this URL") << bad;
  }
  EXPECT_EQ(SeenRequests().size(), before);  // none of them reached the server
}

TEST_F(HttpToolTest, GetPutsTheOtherArgumentsInTheQuery) {
  auto tool = Make(Config(base_ + "/search/{q}"));
  ASSERT_NE(tool, nullptr);
  ToolResult r = Invoke(
      *tool,
      json{{"q", "x"}, {"title", "a b&c=d"}, {"limit", 5}, {"flag", false}, {"path", nullptr}});
  EXPECT_TRUE(r.ok) << r.content;
  EXPECT_EQ(LastSeen().target, "/search/x?flag=false&limit=5&title=a%20b%26c%3Dd");
  EXPECT_EQ(LastSeen().body, "");

  auto with_query = Make(Config(base_ + "/search?fixed=1", "DELETE"));
  ASSERT_NE(with_query, nullptr);
  EXPECT_TRUE(Invoke(*with_query, json{{"q", "z"}}).ok);
  EXPECT_EQ(LastSeen().method, "DELETE");
  EXPECT_EQ(LastSeen().target, "/search?fixed=1&q=z");
}

TEST_F(HttpToolTest, PostFillsTheBodyTemplateAndSendsHeaders) {
  config::HttpToolConfig c = Config(base_ + "/tickets/{q}", "POST");
  c.body = R"({"ticket":{"title":"{title}","count":"{n}","tags":"{tags}","missing":"{limit}",
      "literal":"title: {title}"},"fixed":[1,"{flag}"]})";
  c.headers = {{"X-Api-Key", "s3cret-value"}, {"Accept", "application/json"}};
  auto tool = Make(c);
  ASSERT_NE(tool, nullptr);
  ToolResult r = Invoke(*tool, json{{"q", "a/b"},
                                    {"title", "Printer \"on fire\""},
                                    {"n", 2.5},
                                    {"tags", {"x", "y"}},
                                    {"flag", true}});
  EXPECT_TRUE(r.ok) << r.content;
  const Seen seen = LastSeen();
  EXPECT_EQ(seen.method, "POST");
  EXPECT_EQ(seen.target, "/tickets/a%2Fb");  // no query string for POST
  EXPECT_EQ(json::parse(seen.body), json::parse(R"({"ticket":{"title":"Printer \"on fire\"",
      "count":2.5,"tags":["x","y"],"missing":null,"literal":"title: {title}"},
      "fixed":[1,true]})"));
  EXPECT_EQ(net::FindHeader(seen.headers, "x-api-key"), "s3cret-value");
  EXPECT_EQ(net::FindHeader(seen.headers, "Accept"), "application/json");
  EXPECT_EQ(net::FindHeader(seen.headers, "Content-Type"), "application/json");

  // Without a template, POST/PUT/PATCH send the arguments object.
  auto plain = Make(Config(base_ + "/plain", "PUT"));
  ASSERT_NE(plain, nullptr);
  EXPECT_TRUE(Invoke(*plain, json{{"q", "v"}, {"limit", 3}}).ok);
  EXPECT_EQ(LastSeen().method, "PUT");
  EXPECT_EQ(LastSeen().target, "/plain");
  EXPECT_EQ(json::parse(LastSeen().body), (json{{"q", "v"}, {"limit", 3}}));
}

TEST_F(HttpToolTest, KeepSelectsThePartTheModelSees) {
  config::HttpToolConfig c = Config(base_ + "/json");
  c.keep = "/data/items";
  auto tool = Make(c);
  ASSERT_NE(tool, nullptr);
  ToolResult r = Invoke(*tool, json::object());
  EXPECT_TRUE(r.ok);
  EXPECT_EQ(r.content, "[1,2]");

  c.keep = "/data/nope";
  auto missing = Make(c);
  ToolResult m = Invoke(*missing, json::object());
  EXPECT_FALSE(m.ok);
  EXPECT_EQ(m.content, "response has no /data/nope");

  c.keep = "/data/items/x";
  ToolResult bad_index = Invoke(*Make(c), json::object());
  EXPECT_FALSE(bad_index.ok);

  c.url = base_ + "/text";
  c.keep = "/data";
  ToolResult not_json = Invoke(*Make(c), json::object());
  EXPECT_FALSE(not_json.ok);
  EXPECT_EQ(not_json.content, "response is not JSON");

  c.keep.clear();
  ToolResult whole = Invoke(*Make(c), json::object());
  EXPECT_TRUE(whole.ok);
  EXPECT_EQ(whole.content, "plain answer");
}

TEST_F(HttpToolTest, FailuresBecomeShortToolErrors) {
  ToolResult fail = Invoke(*Make(Config(base_ + "/fail")), json::object());
  EXPECT_FALSE(fail.ok);
  EXPECT_EQ(fail.content, "HTTP 503: upstream down " + std::string(200 - 14, 'z'));

  config::HttpToolConfig big = Config(base_ + "/big");
  big.max_response_bytes = 1000;
  ToolResult too_large = Invoke(*Make(big), json::object());
  EXPECT_FALSE(too_large.ok);
  EXPECT_EQ(too_large.content, "response too large");
  big.max_response_bytes = 5000;
  ToolResult fits = Invoke(*Make(big), json::object());
  EXPECT_TRUE(fits.ok) << fits.content;
  EXPECT_EQ(fits.content.size(), 5000u);

  config::HttpToolConfig slow = Config(base_ + "/slow");
  slow.timeout_ms = 200;
  const auto start = std::chrono::steady_clock::now();
  ToolResult timed_out = Invoke(*Make(slow), json::object());
  EXPECT_FALSE(timed_out.ok);
  EXPECT_EQ(timed_out.content, "request timed out");
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(3));

  config::HttpToolConfig refused = Config("http://127.0.0.1:1/x");
  ToolResult transport = Invoke(*Make(refused), json::object());
  EXPECT_FALSE(transport.ok);
  EXPECT_EQ(transport.content.rfind("request failed: ", 0), 0u) << transport.content;
}

TEST_F(HttpToolTest, RegistersAndRunsThroughThePolicy) {
  auto dir = std::make_unique<parley::testing::TempDir>();
  auto kv = store::OpenLevelDb(dir->Sub("db"));
  ASSERT_TRUE(kv.ok());
  store::Committer committer(**kv);
  ManualClock clock;
  MetricsRegistry metrics;
  ToolRegistry registry;
  config::HttpToolConfig c = Config(base_ + "/json");
  c.parameters = R"({"type":"object","properties":{"q":{"type":"string"}},"required":["q"]})";
  c.keep = "/data/note";
  ASSERT_TRUE(registry.Add(Make(c), ToolRules{}).ok());
  ToolPolicy policy(io_.io, registry, committer, clock, metrics);
  ToolContext context;
  context.conversation = {"webhook", "w1", ""};
  auto out =
      testing::CallAndWait(policy, io_, llm::ToolCall{"1", "lookup", R"({"q":"hi"})"}, context);
  ASSERT_TRUE(out.result.has_value());
  EXPECT_EQ(out.result->outcome, CallOutcome::kOk);
  EXPECT_EQ(out.result->content, R"("ok")");
  EXPECT_EQ(LastSeen().target, "/json?q=hi");
  auto refused = testing::CallAndWait(policy, io_, llm::ToolCall{"2", "lookup", "{}"}, context);
  EXPECT_EQ(refused.result->outcome, CallOutcome::kInvalidArguments);
  committer.Shutdown();
}

}  // namespace
}  // namespace parley::tools
