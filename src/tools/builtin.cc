#include "tools/builtin.h"

#include <algorithm>
#include <boost/asio/post.hpp>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>

#include "tools/text_util.h"

namespace parley::tools {

using Json = nlohmann::json;

namespace {

constexpr size_t kTextChars = 800;

// At most about `max` bytes: cut at a UTF-8 boundary, with "…" appended when cut.
std::string Truncated(const std::string& s, size_t max) {
  if (s.size() <= max) return s;
  return internal::TruncateUtf8(s, max) + "\xE2\x80\xA6";
}

class SearchKnowledgeTool final : public Tool {
 public:
  SearchKnowledgeTool(boost::asio::io_context& io, knowledge::KnowledgeIndex& index,
                      size_t max_results)
      : io_(io), index_(index), max_results_(std::max<size_t>(1, max_results)) {
    parameters_ = {
        {"type", "object"},
        {"properties",
         {{"query",
           {{"type", "string"},
            {"minLength", 1},
            {"maxLength", 500},
            {"description", "What to look up in the knowledge base, in a few words"}}},
          {"max_results",
           {{"type", "integer"},
            {"minimum", 1},
            {"maximum", 10},
            {"description", "How many passages to return"}}}}},
        {"required", {"query"}},
        {"additionalProperties", false},
    };
  }

  const std::string& name() const override { return name_; }
  const std::string& description() const override { return description_; }
  const Json& parameters() const override { return parameters_; }

  void Invoke(Json arguments, const ToolContext& context, ToolDone done) override {
    ToolResult result;
    const std::string query =
        arguments.is_object() && arguments.contains("query") && arguments["query"].is_string()
            ? arguments["query"].get<std::string>()
            : std::string();
    size_t limit = max_results_;
    if (arguments.is_object() && arguments.contains("max_results") &&
        arguments["max_results"].is_number_integer()) {
      const int64_t asked = arguments["max_results"].get<int64_t>();
      if (asked >= 1) limit = std::min(limit, static_cast<size_t>(asked));
    }
    auto passages = index_.Retrieve(knowledge::RetrievalQuery{query, ""},
                                    knowledge::AccessFilter{context.access_tags}, limit);
    if (!passages.ok()) {
      result.ok = false;
      result.content = "knowledge search failed";
    } else {
      Json out = Json::array();
      for (const knowledge::Passage& p : *passages) {
        out.push_back({{"title", p.chunk.title},
                       {"section", p.chunk.Section()},
                       {"source", p.chunk.source},
                       {"url", p.chunk.url},
                       {"text", Truncated(p.chunk.text, kTextChars)}});
      }
      result.content = out.dump(-1, ' ', false, Json::error_handler_t::replace);
    }
    boost::asio::post(io_, [done = std::move(done), result = std::move(result)]() mutable {
      done(std::move(result));
    });
  }

 private:
  boost::asio::io_context& io_;
  knowledge::KnowledgeIndex& index_;
  const size_t max_results_;
  const std::string name_ = "search_knowledge";
  const std::string description_ =
      "Search the knowledge base (documentation) and return the most relevant passages with "
      "their title, section, source and URL. Use it to answer questions from the documentation.";
  Json parameters_;
};

class EscalateTool final : public Tool {
 public:
  explicit EscalateTool(boost::asio::io_context& io) : io_(io) {
    parameters_ = {
        {"type", "object"},
        {"properties",
         {{"reason",
           {{"type", "string"}, {"minLength", 1}, {"description", "Why a human should take over"}}},
          {"topic", {{"type", "string"}, {"description", "What the conversation is about"}}}}},
        {"required", {"reason"}},
        {"additionalProperties", false},
    };
  }

  const std::string& name() const override { return name_; }
  const std::string& description() const override { return description_; }
  const Json& parameters() const override { return parameters_; }

  void Invoke(Json arguments, const ToolContext& context, ToolDone done) override {
    ToolResult result;
    result.ok = true;
    result.escalate = true;
    result.content = "A human agent will be asked to help with this conversation.";
    boost::asio::post(io_, [done = std::move(done), result = std::move(result)]() mutable {
      done(std::move(result));
    });
  }

 private:
  boost::asio::io_context& io_;
  const std::string name_ = "escalate_to_human";
  const std::string description_ =
      "Hand the conversation over to a human agent: when the user asks for a person, when you "
      "cannot help, or when the request needs a human decision.";
  Json parameters_;
};

}  // namespace

std::shared_ptr<Tool> MakeSearchKnowledgeTool(boost::asio::io_context& io,
                                              knowledge::KnowledgeIndex& index,
                                              size_t max_results) {
  return std::make_shared<SearchKnowledgeTool>(io, index, max_results);
}

std::shared_ptr<Tool> MakeEscalateTool(boost::asio::io_context& io) {
  return std::make_shared<EscalateTool>(io);
}

}  // namespace parley::tools
