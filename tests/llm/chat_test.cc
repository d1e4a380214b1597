// The chat-completions wire format: request bodies, non-streaming responses, every error shape of
// shared/protocols/openai.md §4, SSE framing, and recorded streams of four servers fed split at
// every byte offset.

#include "llm/chat.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace parley::llm {
namespace {

using nlohmann::json;

// ---------------------------------------------------------------- request bodies

TEST(BuildRequestBodyTest, RolesToolEchoAndStreamOptions) {
  ChatRequest req;
  req.messages.push_back({"system", "be brief", {}, ""});
  req.messages.push_back({"user", "weather in Paris?", {}, ""});
  ChatMessage assistant;
  assistant.role = "assistant";
  assistant.tool_calls = {{"call_1", "get_weather", "{\"city\":\"Paris\"}"}};
  req.messages.push_back(assistant);
  req.messages.push_back({"tool", "{\"temp\":21}", {}, "call_1"});
  ChatMessage assistant_text;
  assistant_text.role = "assistant";
  assistant_text.content = "It is 21 degrees.";
  req.messages.push_back(assistant_text);
  req.tools.push_back({"get_weather", "Current weather",
                       json{{"type", "object"},
                            {"properties", {{"city", {{"type", "string"}}}}},
                            {"required", {"city"}}}});
  req.stream = true;
  BodyOptions opts;
  opts.model = "gpt-4o";
  opts.temperature = 0.2;
  opts.max_tokens = 300;

  const json body = json::parse(BuildRequestBody(req, opts));
  EXPECT_EQ(body["model"], "gpt-4o");
  ASSERT_EQ(body["messages"].size(), 5u);
  EXPECT_EQ(body["messages"][0], (json{{"role", "system"}, {"content", "be brief"}}));
  EXPECT_EQ(body["messages"][1], (json{{"role", "user"}, {"content", "weather in Paris?"}}));
  const json& echo = body["messages"][2];
  EXPECT_EQ(echo["role"], "assistant");
  EXPECT_TRUE(echo.contains("content"));
  EXPECT_TRUE(echo["content"].is_null());
  EXPECT_EQ(echo["tool_calls"],
            json::parse(R"([{"id":"call_1","type":"function","function":{"name":"get_weather",
                            "arguments":"{\"city\":\"Paris\"}"}}])"));
  EXPECT_EQ(body["messages"][3],
            (json{{"role", "tool"}, {"tool_call_id", "call_1"}, {"content", "{\"temp\":21}"}}));
  EXPECT_EQ(body["messages"][4],
            (json{{"role", "assistant"}, {"content", "It is 21 degrees."}}));
  EXPECT_FALSE(body["messages"][4].contains("tool_calls"));
  ASSERT_EQ(body["tools"].size(), 1u);
  EXPECT_EQ(body["tools"][0]["type"], "function");
  EXPECT_EQ(body["tools"][0]["function"]["name"], "get_weather");
  EXPECT_EQ(body["tools"][0]["function"]["description"], "Current weather");
  EXPECT_EQ(body["tools"][0]["function"]["parameters"]["required"], json({"city"}));
  EXPECT_DOUBLE_EQ(body["temperature"].get<double>(), 0.2);
  EXPECT_EQ(body["max_tokens"], 300);
  EXPECT_EQ(body["stream"], true);
  EXPECT_EQ(body["stream_options"], (json{{"include_usage", true}}));
}

TEST(BuildRequestBodyTest, OptionalFieldsAbsentWhenUnset) {
  ChatRequest req;
  req.messages.push_back({"user", "hi", {}, ""});
  req.stream = false;
  BodyOptions opts;
  opts.model = "m";
  const json body = json::parse(BuildRequestBody(req, opts));
  EXPECT_FALSE(body.contains("tools"));
  EXPECT_FALSE(body.contains("temperature"));
  EXPECT_FALSE(body.contains("max_tokens"));
  EXPECT_FALSE(body.contains("stream_options"));
  EXPECT_NE(body.value("stream", false), true);
}

TEST(BuildRequestBodyTest, AssistantToolCallWithTextKeepsContentAndInvalidUtf8IsReplaced) {
  ChatRequest req;
  ChatMessage assistant;
  assistant.role = "assistant";
  assistant.content = "Let me check.";
  assistant.tool_calls = {{"c", "f", "{}"}};
  req.messages.push_back(assistant);
  req.messages.push_back({"user", std::string("bad \xff byte"), {}, ""});
  const json body = json::parse(BuildRequestBody(req, BodyOptions{"m"}));
  EXPECT_EQ(body["messages"][0]["content"], "Let me check.");
  EXPECT_EQ(body["messages"][0]["tool_calls"][0]["id"], "c");
  EXPECT_TRUE(body["messages"][1]["content"].is_string());
}

// ---------------------------------------------------------------- non-streaming responses

TEST(ParseCompletionTest, RealGpt4oToolCallCapture) {
  const char* body = R"({"id":"chatcmpl-B","object":"chat.completion","created":1741000000,
    "model":"gpt-4o-2024-08-06","choices":[{"index":0,"message":{"role":"assistant","content":null,
    "refusal":null,"annotations":[],"tool_calls":[{"id":"call_Xy","type":"function","function":{
    "name":"get_weather","arguments":"{\"location\":\"Shanghai\"}"}}]},"logprobs":null,
    "finish_reason":"tool_calls"}],"usage":{"prompt_tokens":91,"completion_tokens":14,
    "total_tokens":105,"prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{}},
    "service_tier":"default","system_fingerprint":"fp_1"})";
  Result<ChatResult> r = ParseCompletion(body);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->content, "");
  ASSERT_EQ(r->tool_calls.size(), 1u);
  EXPECT_EQ(r->tool_calls[0].id, "call_Xy");
  EXPECT_EQ(r->tool_calls[0].name, "get_weather");
  EXPECT_EQ(r->tool_calls[0].arguments, "{\"location\":\"Shanghai\"}");
  EXPECT_EQ(r->finish_reason, "tool_calls");
  EXPECT_TRUE(r->usage.present);
  EXPECT_EQ(r->usage.prompt_tokens, 91);
  EXPECT_EQ(r->usage.completion_tokens, 14);
  EXPECT_EQ(r->usage.total_tokens, 105);
}

TEST(ParseCompletionTest, TextNullsPartsAndMissingIds) {
  Result<ChatResult> text = ParseCompletion(
      R"({"choices":[{"index":0,"message":{"role":"assistant","content":"Hello","reasoning":"x"},
          "finish_reason":"stop"}],"usage":null,"timings":{}})");
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(text->content, "Hello");
  EXPECT_EQ(text->finish_reason, "stop");
  EXPECT_FALSE(text->usage.present);

  Result<ChatResult> parts = ParseCompletion(
      R"({"choices":[{"message":{"content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]},
          "finish_reason":null}]})");
  ASSERT_TRUE(parts.ok());
  EXPECT_EQ(parts->content, "ab");
  EXPECT_EQ(parts->finish_reason, "");

  Result<ChatResult> ids = ParseCompletion(
      R"({"choices":[{"index":0,"message":{"content":null,"tool_calls":[
          {"function":{"name":"a","arguments":{"x":1}}},{"id":null,"function":{"name":"b"}}]}}]})");
  ASSERT_TRUE(ids.ok());
  ASSERT_EQ(ids->tool_calls.size(), 2u);
  EXPECT_EQ(ids->tool_calls[0].id, "call_0");
  EXPECT_EQ(ids->tool_calls[0].arguments, "{\"x\":1}");
  EXPECT_EQ(ids->tool_calls[1].id, "call_1");
  EXPECT_EQ(ids->tool_calls[1].name, "b");
  EXPECT_EQ(ids->tool_calls[1].arguments, "");

  Result<ChatResult> empty = ParseCompletion(R"({"choices":[],"usage":{"prompt_tokens":3}})");
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(empty->content, "");
  EXPECT_EQ(empty->usage.prompt_tokens, 3);
}

TEST(ParseCompletionTest, NotACompletionIsInvalidArgument) {
  for (const char* body : {"", "{not json", "[]", "42", R"({"object":"list"})",
                           R"({"choices":{"a":1}})", R"({"error":{"message":"boom"}})"}) {
    Result<ChatResult> r = ParseCompletion(body);
    ASSERT_FALSE(r.ok()) << body;
    EXPECT_EQ(r.status().code(), Status::Code::kInvalidArgument) << body;
    EXPECT_EQ(r.status().message().find("boom"), std::string::npos);
  }
}

// ---------------------------------------------------------------- error responses

struct ErrorCase {
  const char* name;
  int status;
  const char* body;
  Status::Code code;
  const char* mentions;  // text the message must contain
};

TEST(StatusFromErrorResponseTest, EveryShapeOfOpenAiMd) {
  const ErrorCase cases[] = {
      {"openai 401", 401,
       R"({"error":{"message":"Incorrect API key provided: sk-abc***","type":"invalid_request_error","param":null,"code":"invalid_api_key"}})",
       Status::Code::kPermissionDenied, "invalid_api_key"},
      {"openai 429", 429,
       R"({"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}})",
       Status::Code::kResourceExhausted, "Rate limit reached"},
      {"openai 400 context", 400,
       R"({"error":{"message":"maximum context length is 8192 tokens","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}})",
       Status::Code::kInvalidArgument, "context_length_exceeded"},
      {"openai 404 model", 404,
       R"({"error":{"message":"The model `gpt-9` does not exist","type":"invalid_request_error","param":null,"code":"model_not_found"}})",
       Status::Code::kNotFound, "gpt-9"},
      {"openai 404 url", 404,
       R"j({"error":{"message":"Invalid URL (POST /v1/chat)","type":"invalid_request_error","param":null,"code":null}})j",
       Status::Code::kNotFound, "Invalid URL"},
      {"vllm 400 int code", 400,
       R"({"error":{"message":"bad temperature","type":"BadRequestError","param":null,"code":400}})",
       Status::Code::kInvalidArgument, "bad temperature"},
      {"vllm 401 bare string", 401, R"({"error":"Unauthorized"})",
       Status::Code::kPermissionDenied, "Unauthorized"},
      {"vllm 500", 500,
       R"({"error":{"message":"engine dead","type":"Internal Server Error","param":null,"code":500}})",
       Status::Code::kUnavailable, "engine dead"},
      {"llama.cpp 401", 401,
       R"({"error":{"code":401,"message":"Invalid API Key","type":"authentication_error"}})",
       Status::Code::kPermissionDenied, "Invalid API Key"},
      {"llama.cpp 503 loading", 503,
       R"({"error":{"code":503,"message":"Loading model","type":"unavailable_error"}})",
       Status::Code::kUnavailable, "Loading model"},
      {"llama.cpp 501", 501,
       R"({"error":{"code":501,"message":"not supported","type":"not_supported_error"}})",
       Status::Code::kUnavailable, "not_supported_error"},
      {"llama.cpp 400 context", 400,
       R"({"error":{"code":400,"message":"request exceeds context","type":"exceed_context_size_error"}})",
       Status::Code::kInvalidArgument, "exceed_context_size_error"},
      {"ollama 404", 404,
       R"({"error":{"message":"model \"llama9\" not found, try pulling it first","type":"not_found_error","param":null,"code":null}})",
       Status::Code::kNotFound, "try pulling it first"},
      {"ollama 500", 500,
       R"({"error":{"message":"llama runner process has terminated","type":"api_error","param":null,"code":null}})",
       Status::Code::kUnavailable, "runner process"},
      {"proxy html 502", 502, "<html><head><title>502 Bad Gateway</title></head></html>",
       Status::Code::kUnavailable, "Bad Gateway"},
      {"403 plain text", 403, "Forbidden", Status::Code::kPermissionDenied, "Forbidden"},
      {"408 empty", 408, "", Status::Code::kDeadlineExceeded, "408"},
      {"504 gateway", 504, "upstream timed out", Status::Code::kDeadlineExceeded, "timed out"},
      {"error null", 500, R"({"error":null})", Status::Code::kUnavailable, "500"},
      {"error number", 418, R"({"error":7})", Status::Code::kUnavailable, "418"},
      {"fastapi detail", 422, R"({"detail":[{"msg":"field required"}]})",
       Status::Code::kUnavailable, "field required"},
  };
  for (const ErrorCase& c : cases) {
    const Status s = StatusFromErrorResponse(c.status, c.body);
    EXPECT_EQ(s.code(), c.code) << c.name << ": " << s.ToString();
    EXPECT_NE(s.message().find(c.mentions), std::string::npos) << c.name << ": " << s.ToString();
  }
}

TEST(StatusFromErrorResponseTest, LongMessagesAreTruncated) {
  const std::string long_message(5000, 'x');
  const Status s =
      StatusFromErrorResponse(500, R"({"error":{"message":")" + long_message + R"("}})");
  EXPECT_EQ(s.code(), Status::Code::kUnavailable);
  EXPECT_LT(s.message().size(), 260u);
  const Status html = StatusFromErrorResponse(502, std::string(10000, '<'));
  EXPECT_LT(html.message().size(), 260u);
}

// ---------------------------------------------------------------- SSE framing

std::vector<SseEvent> ParseAll(const std::string& bytes) {
  SseParser parser;
  std::vector<SseEvent> events;
  auto sink = [&events](SseEvent e) { events.push_back(std::move(e)); };
  EXPECT_TRUE(parser.Feed(bytes, sink).ok());
  parser.Finish(sink);
  return events;
}

TEST(SseParserTest, FieldsCommentsAndLineEnds) {
  const std::vector<SseEvent> events = ParseAll(
      ": comment\n\n"
      "event: delta\ndata: a\ndata:b\nid: 7\nretry: 10\nunknown: x\n\n"
      "data\n\n"                 // a data line with no colon: empty data
      "event: lonely\n\n"        // no data: not reported
      "data: cr\r\rdata: crlf\r\n\r\n"
      "data:  two spaces\n\n"
      "data: tail");  // no final blank line: reported by Finish
  ASSERT_EQ(events.size(), 6u);
  EXPECT_EQ(events[0].event, "delta");
  EXPECT_EQ(events[0].data, "a\nb");
  EXPECT_EQ(events[1].event, "");
  EXPECT_EQ(events[1].data, "");
  EXPECT_EQ(events[2].data, "cr");
  EXPECT_EQ(events[2].event, "");
  EXPECT_EQ(events[3].data, "crlf");
  EXPECT_EQ(events[4].data, " two spaces");
  EXPECT_EQ(events[5].data, "tail");
}

TEST(SseParserTest, CrLfSplitAcrossFeedsIsOneLineEnd) {
  SseParser parser;
  std::vector<SseEvent> events;
  auto sink = [&events](SseEvent e) { events.push_back(std::move(e)); };
  ASSERT_TRUE(parser.Feed("data: x\r", sink).ok());
  ASSERT_TRUE(parser.Feed("\n", sink).ok());
  EXPECT_TRUE(events.empty());  // "\r\n" is one line end, not a line end plus a blank line
  ASSERT_TRUE(parser.Feed("\r", sink).ok());
  ASSERT_EQ(events.size(), 1u);
  ASSERT_TRUE(parser.Feed("\ndata: y\n\n", sink).ok());
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[1].data, "y");
}

TEST(SseParserTest, OversizedEventIsResourceExhausted) {
  SseParser parser;
  parser.max_event_bytes = 64;
  int calls = 0;
  auto sink = [&calls](SseEvent) { ++calls; };
  ASSERT_TRUE(parser.Feed("data: short\n\n", sink).ok());
  const Status s = parser.Feed("data: " + std::string(100, 'x'), sink);
  EXPECT_EQ(s.code(), Status::Code::kResourceExhausted);
  SseParser lines;
  lines.max_event_bytes = 64;
  Status many = Status::Ok();
  for (int i = 0; i < 20 && many.ok(); ++i) many = lines.Feed("data: 0123456789\n", sink);
  EXPECT_EQ(many.code(), Status::Code::kResourceExhausted);
  EXPECT_EQ(calls, 1);
}

// ---------------------------------------------------------------- recorded streams

struct Outcome {
  std::vector<std::string> deltas;
  Status error = Status::Ok();
  bool done = false;
  bool finished = false;
  ChatResult result;
};

// Feeds `pieces` through SseParser and StreamAssembler as a client would.
Outcome Assemble(const std::vector<std::string>& pieces) {
  SseParser parser;
  StreamAssembler assembler;
  Outcome out;
  auto on_event = [&](SseEvent e) {
    if (!out.error.ok()) return;
    out.error = assembler.OnData(
        e.data, [&out](std::string_view text) { out.deltas.emplace_back(text); });
  };
  for (const std::string& piece : pieces) {
    if (!out.error.ok()) break;
    const Status fed = parser.Feed(piece, on_event);
    EXPECT_TRUE(fed.ok());
  }
  if (out.error.ok()) parser.Finish(on_event);
  out.done = assembler.done();
  out.finished = assembler.finished();
  out.result = assembler.Take();
  return out;
}

void ExpectSame(const Outcome& a, const Outcome& b, const std::string& where) {
  EXPECT_EQ(a.deltas, b.deltas) << where;
  EXPECT_EQ(a.error.code(), b.error.code()) << where;
  EXPECT_EQ(a.done, b.done) << where;
  EXPECT_EQ(a.result.content, b.result.content) << where;
  EXPECT_EQ(a.result.finish_reason, b.result.finish_reason) << where;
  ASSERT_EQ(a.result.tool_calls.size(), b.result.tool_calls.size()) << where;
  for (size_t i = 0; i < a.result.tool_calls.size(); ++i) {
    EXPECT_EQ(a.result.tool_calls[i].id, b.result.tool_calls[i].id) << where;
    EXPECT_EQ(a.result.tool_calls[i].name, b.result.tool_calls[i].name) << where;
    EXPECT_EQ(a.result.tool_calls[i].arguments, b.result.tool_calls[i].arguments) << where;
  }
  EXPECT_EQ(a.result.usage.present, b.result.usage.present) << where;
  EXPECT_EQ(a.result.usage.total_tokens, b.result.usage.total_tokens) << where;
}

// The expected outcome must hold for the whole stream, for every two-piece split and for one
// byte at a time.
void CheckEverySplit(const std::string& stream, const std::function<void(const Outcome&)>& check) {
  const Outcome whole = Assemble({stream});
  check(whole);
  for (size_t i = 0; i <= stream.size(); ++i) {
    const Outcome split = Assemble({stream.substr(0, i), stream.substr(i)});
    ExpectSame(split, whole, "split at " + std::to_string(i));
    if (::testing::Test::HasFailure()) return;
  }
  std::vector<std::string> bytes;
  for (char c : stream) bytes.emplace_back(1, c);
  ExpectSame(Assemble(bytes), whole, "one byte at a time");
}

const char kOpenAiText[] =
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":"
    "\"gpt-4.1\",\"service_tier\":\"default\",\"system_fingerprint\":\"fp_1\",\"choices\":[{"
    "\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null},"
    "\"logprobs\":null,\"finish_reason\":null}],\"usage\":null,\"obfuscation\":\"Zx\"}\n\n"
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":"
    "\"gpt-4.1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"},\"logprobs\":null,"
    "\"finish_reason\":null}],\"usage\":null,\"obfuscation\":\"a\"}\n\n"
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":"
    "\"gpt-4.1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\", w\xC3\xB6rld\"},"
    "\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n"
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":"
    "\"gpt-4.1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"!\"},\"logprobs\":null,"
    "\"finish_reason\":null}],\"usage\":null}\n\n"
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":"
    "\"gpt-4.1\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":"
    "\"stop\"}],\"usage\":null}\n\n"
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":"
    "\"gpt-4.1\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":3,"
    "\"total_tokens\":12,\"prompt_tokens_details\":{\"cached_tokens\":0}}}\n\n"
    "data: [DONE]\n\n";

TEST(RecordedStreamTest, OpenAiTextWithUsageChunk) {
  CheckEverySplit(kOpenAiText, [](const Outcome& o) {
    EXPECT_TRUE(o.error.ok()) << o.error.ToString();
    EXPECT_EQ(o.deltas, (std::vector<std::string>{"Hello", ", w\xC3\xB6rld", "!"}));
    EXPECT_EQ(o.result.content, "Hello, w\xC3\xB6rld!");
    EXPECT_EQ(o.result.finish_reason, "stop");
    EXPECT_TRUE(o.done);
    EXPECT_TRUE(o.result.tool_calls.empty());
    EXPECT_TRUE(o.result.usage.present);
    EXPECT_EQ(o.result.usage.prompt_tokens, 9);
    EXPECT_EQ(o.result.usage.completion_tokens, 3);
    EXPECT_EQ(o.result.usage.total_tokens, 12);
  });
}

const char kOpenAiParallelTools[] =
    "data: {\"id\":\"c2\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":"
    "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"index\":0,\"id\":\"call_abc\","
    "\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"\"}}],"
    "\"refusal\":null},\"finish_reason\":null}],\"usage\":null}\n\n"
    "data: {\"id\":\"c2\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,"
    "\"function\":{\"arguments\":\"{\\\"loc\"}}]},\"finish_reason\":null}]}\n\n"
    "data: {\"id\":\"c2\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,"
    "\"id\":\"call_def\",\"type\":\"function\",\"function\":{\"name\":\"get_time\","
    "\"arguments\":\"\"}}]},\"finish_reason\":null}]}\n\n"
    // Fragments of both calls in one delta, index 1 listed first: matched by index.
    "data: {\"id\":\"c2\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,"
    "\"function\":{\"arguments\":\"{\\\"tz\\\":\"}},{\"index\":0,\"function\":{\"arguments\":"
    "\"ation\\\": \\\"Paris\\\"}\"}}]},\"finish_reason\":null}]}\n\n"
    "data: {\"id\":\"c2\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,"
    "\"function\":{\"arguments\":\"\\\"CET\\\"}\"}}]},\"finish_reason\":null}]}\n\n"
    "data: {\"id\":\"c2\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":"
    "\"tool_calls\"}],\"usage\":null}\n\n"
    "data: {\"id\":\"c2\",\"choices\":[],\"usage\":{\"prompt_tokens\":50,\"completion_tokens\":"
    "20,\"total_tokens\":70}}\n\n"
    "data: [DONE]\n\n";

TEST(RecordedStreamTest, OpenAiParallelToolCallFragments) {
  CheckEverySplit(kOpenAiParallelTools, [](const Outcome& o) {
    EXPECT_TRUE(o.error.ok()) << o.error.ToString();
    EXPECT_TRUE(o.deltas.empty());
    EXPECT_EQ(o.result.content, "");
    EXPECT_EQ(o.result.finish_reason, "tool_calls");
    ASSERT_EQ(o.result.tool_calls.size(), 2u);
    EXPECT_EQ(o.result.tool_calls[0].id, "call_abc");
    EXPECT_EQ(o.result.tool_calls[0].name, "get_weather");
    EXPECT_EQ(o.result.tool_calls[0].arguments, "{\"location\": \"Paris\"}");
    EXPECT_EQ(o.result.tool_calls[1].id, "call_def");
    EXPECT_EQ(o.result.tool_calls[1].name, "get_time");
    EXPECT_EQ(o.result.tool_calls[1].arguments, "{\"tz\":\"CET\"}");
    EXPECT_EQ(o.result.usage.total_tokens, 70);
  });
}

const char kLlamaCpp[] =
    "data: {\"choices\":[{\"finish_reason\":null,\"index\":0,\"delta\":{\"role\":\"assistant\","
    "\"content\":null}}],\"created\":1,\"id\":\"chatcmpl-l\",\"model\":\"qwen\",\"object\":"
    "\"chat.completion.chunk\"}\r\n\r\n"
    ": ping\r\n\r\n"
    "data: {\"choices\":[{\"finish_reason\":null,\"index\":0,\"delta\":{\"content\":\"Hi\"}}],"
    "\"object\":\"chat.completion.chunk\"}\r\n\r\n"
    ": ping\r\n\r\n"
    "data: {\"choices\":[{\"finish_reason\":null,\"index\":0,\"delta\":{\"content\":null}}]}\r\n"
    "\r\n"
    "data: {\"choices\":[{\"finish_reason\":null,\"index\":0,\"delta\":{\"reasoning_content\":"
    "\"hmm\",\"content\":\" there\"}}]}\r\n\r\n"
    "data: {\"choices\":[{\"finish_reason\":\"stop\",\"index\":0,\"delta\":{}}],\"usage\":null,"
    "\"timings\":{\"prompt_n\":5,\"predicted_n\":2}}\r\n\r\n"
    "data: [DONE]\r\n\r\n";

TEST(RecordedStreamTest, LlamaCppNullContentPingsAndCrLf) {
  CheckEverySplit(kLlamaCpp, [](const Outcome& o) {
    EXPECT_TRUE(o.error.ok()) << o.error.ToString();
    EXPECT_EQ(o.deltas, (std::vector<std::string>{"Hi", " there"}));
    EXPECT_EQ(o.result.content, "Hi there");
    EXPECT_EQ(o.result.finish_reason, "stop");
    EXPECT_TRUE(o.done);
    EXPECT_FALSE(o.result.usage.present);
    EXPECT_TRUE(o.result.tool_calls.empty());
  });
}

const char kOllamaWholeCalls[] =
    "data: {\"id\":\"chatcmpl-9\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":"
    "\"llama3.1\",\"system_fingerprint\":\"fp_ollama\",\"choices\":[{\"index\":0,\"delta\":{"
    "\"role\":\"assistant\",\"content\":\"\",\"reasoning\":\"\",\"tool_calls\":[{\"id\":"
    "\"call_x1\",\"index\":0,\"type\":\"function\",\"function\":{\"name\":\"get_weather\","
    "\"arguments\":\"{\\\"city\\\":\\\"Paris\\\"}\"}},{\"id\":\"call_x2\",\"index\":0,\"type\":"
    "\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":"
    "\"{\\\"city\\\":\\\"Rome\\\"}\"}}]},\"finish_reason\":null}]}\n\n"
    "data: {\"id\":\"chatcmpl-9\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,"
    "\"delta\":{\"tool_calls\":[{\"index\":2,\"type\":\"function\",\"function\":{\"name\":"
    "\"get_time\",\"arguments\":\"{}\"}}]},\"finish_reason\":null}]}\n\n"
    "data: {\"id\":\"chatcmpl-9\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,"
    "\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":\"tool_calls\"}]}\n\n"
    "data: {\"id\":\"chatcmpl-9\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":"
    "{\"prompt_tokens\":30,\"completion_tokens\":12,\"total_tokens\":42}}\n\n"
    "data: [DONE]\n\n";

TEST(RecordedStreamTest, OllamaWholeCallsWithReusedIndexAndMissingId) {
  CheckEverySplit(kOllamaWholeCalls, [](const Outcome& o) {
    EXPECT_TRUE(o.error.ok()) << o.error.ToString();
    EXPECT_TRUE(o.deltas.empty());
    EXPECT_EQ(o.result.finish_reason, "tool_calls");
    ASSERT_EQ(o.result.tool_calls.size(), 3u);
    EXPECT_EQ(o.result.tool_calls[0].id, "call_x1");
    EXPECT_EQ(o.result.tool_calls[0].name, "get_weather");
    EXPECT_EQ(o.result.tool_calls[0].arguments, "{\"city\":\"Paris\"}");
    EXPECT_EQ(o.result.tool_calls[1].id, "call_x2");
    EXPECT_EQ(o.result.tool_calls[1].name, "get_weather");
    EXPECT_EQ(o.result.tool_calls[1].arguments, "{\"city\":\"Rome\"}");
    EXPECT_EQ(o.result.tool_calls[2].id, "call_2");  // the server sent none
    EXPECT_EQ(o.result.tool_calls[2].name, "get_time");
    EXPECT_EQ(o.result.tool_calls[2].arguments, "{}");
    EXPECT_EQ(o.result.usage.total_tokens, 42);
  });
}

const char kVllmInBandError[] =
    "data: {\"id\":\"chatcmpl-v\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":"
    "\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},"
    "\"logprobs\":null,\"finish_reason\":null}]}\n\n"
    "data: {\"id\":\"chatcmpl-v\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":"
    "\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Part\"},\"logprobs\":null,"
    "\"finish_reason\":null,\"stop_reason\":null}]}\n\n"
    "data: {\"error\":{\"message\":\"The engine crashed\",\"type\":\"InternalServerError\","
    "\"param\":null,\"code\":500}}\n\n"
    "data: [DONE]\n\n";

TEST(RecordedStreamTest, VllmInBandError) {
  CheckEverySplit(kVllmInBandError, [](const Outcome& o) {
    EXPECT_EQ(o.error.code(), Status::Code::kUnavailable);
    EXPECT_NE(o.error.message().find("The engine crashed"), std::string::npos);
    EXPECT_EQ(o.deltas, (std::vector<std::string>{"Part"}));
    EXPECT_FALSE(o.done);
    EXPECT_FALSE(o.finished);
  });
}

// ---------------------------------------------------------------- assembler edge cases

TEST(StreamAssemblerTest, InBandErrorCodesMapLikeHttpStatuses) {
  auto ignore = [](std::string_view) {};
  StreamAssembler a;
  EXPECT_EQ(a.OnData(R"({"error":{"message":"too long","code":400}})", ignore).code(),
            Status::Code::kInvalidArgument);
  StreamAssembler b;
  EXPECT_EQ(b.OnData(R"({"error":"overloaded"})", ignore).code(), Status::Code::kUnavailable);
  StreamAssembler c;
  EXPECT_EQ(c.OnData(R"({"error":{"message":"slow down","code":"rate_limit_exceeded"}})", ignore)
                .code(),
            Status::Code::kUnavailable);  // no numeric status: as a 500
}

TEST(StreamAssemblerTest, MalformedDataIsCorruption) {
  auto ignore = [](std::string_view) {};
  for (const char* data : {"{not json", "[1,2]", "\"text\"", R"({"choices":"x"})"}) {
    StreamAssembler a;
    EXPECT_EQ(a.OnData(data, ignore).code(), Status::Code::kCorruption) << data;
  }
}

TEST(StreamAssemblerTest, NullsEverywhereAndTruncationIsVisible) {
  StreamAssembler a;
  std::string text;
  auto collect = [&text](std::string_view t) { text.append(t); };
  ASSERT_TRUE(a.OnData(R"({"choices":null,"usage":null})", collect).ok());
  ASSERT_TRUE(a.OnData(R"({"choices":[null,{"index":0,"delta":null,"finish_reason":null}]})",
                       collect)
                  .ok());
  ASSERT_TRUE(a.OnData(R"({"choices":[{"index":0,"delta":{"content":"x","tool_calls":null}}]})",
                       collect)
                  .ok());
  ASSERT_TRUE(a.OnData(R"({"choices":[{"index":1,"delta":{"content":"other choice"}}]})", collect)
                  .ok());
  EXPECT_FALSE(a.done());
  EXPECT_FALSE(a.finished());  // a stream ending here was truncated
  ASSERT_TRUE(a.OnData(R"({"choices":[{"index":0,"delta":{},"finish_reason":"length"}]})",
                       collect)
                  .ok());
  EXPECT_TRUE(a.finished());
  EXPECT_FALSE(a.done());
  const ChatResult r = a.Take();
  EXPECT_EQ(text, "x");
  EXPECT_EQ(r.content, "x");
  EXPECT_EQ(r.finish_reason, "length");
}

TEST(StreamAssemblerTest, FragmentsWithoutIndexContinueTheLastCall) {
  StreamAssembler a;
  auto ignore = [](std::string_view) {};
  ASSERT_TRUE(a.OnData(R"({"choices":[{"delta":{"tool_calls":[{"id":"a","function":{"name":"f",
      "arguments":"{\"x\""}}]}}]})",
                       ignore)
                  .ok());
  ASSERT_TRUE(
      a.OnData(R"({"choices":[{"delta":{"tool_calls":[{"function":{"arguments":":1}"}}]}}]})",
               ignore)
          .ok());
  ASSERT_TRUE(a.OnData("[DONE]", ignore).ok());
  const ChatResult r = a.Take();
  ASSERT_EQ(r.tool_calls.size(), 1u);
  EXPECT_EQ(r.tool_calls[0].id, "a");
  EXPECT_EQ(r.tool_calls[0].name, "f");
  EXPECT_EQ(r.tool_calls[0].arguments, "{\"x\":1}");
}

}  // namespace
}  // namespace parley::llm
