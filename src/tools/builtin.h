#pragma once
// The built-in tools: search_knowledge (the retriever, as a tool) and escalate_to_human.
// Thread-safety: Invoke is thread-safe. Lifetime: the borrowed io_context and index must outlive
// the tools.

#include <boost/asio/io_context.hpp>
#include <cstddef>
#include <memory>

#include "knowledge/knowledge.h"
#include "tools/tool.h"

namespace parley::tools {

// "search_knowledge": {"query": string, 1..500 characters, required; "max_results": integer
// 1..10, optional (capped at `max_results`)}. Retrieves passages visible under the context's
// access tags; content is a JSON array of {"title","section","source","url","text"} (text cut to
// about 800 bytes, at a UTF-8 boundary, with "…" appended when cut). A retrieval failure is a
// tool error "knowledge search failed". Retrieval runs inline (short CPU work); done is posted
// to `io`.
std::shared_ptr<Tool> MakeSearchKnowledgeTool(boost::asio::io_context& io,
                                              knowledge::KnowledgeIndex& index, size_t max_results);

// "escalate_to_human": {"reason": string required, "topic": string optional}. Returns
// escalate = true and "A human agent will be asked to help with this conversation."; done is
// posted to `io`.
std::shared_ptr<Tool> MakeEscalateTool(boost::asio::io_context& io);

}  // namespace parley::tools
