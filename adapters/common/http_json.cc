#include "adapters/common/http_json.h"

namespace parley::adapters {

net::HttpResponse JsonError(int status, const std::string& code, const std::string& message) {
  net::HttpResponse r;
  r.status = status;
  r.body = nlohmann::json{{"error", code}, {"message", message}}.dump();
  return r;
}

nlohmann::json ReplyJson(const OutboundMessage& reply) {
  nlohmann::json j{{"id", reply.id},
                    {"conversation", reply.conversation.channel},
                    {"thread", reply.conversation.thread},
                    {"text", reply.text},
                    {"citations", reply.citations},
                    {"confidence", reply.confidence},
                    {"escalated", reply.escalated}};
  if (reply.silent) j["silent"] = true;
  return j;
}

Result<OutboundMessage> ReplyFromJson(const nlohmann::json& j) {
  if (!j.is_object()) return Status::InvalidArgument("the reply is not a JSON object");
  try {
    OutboundMessage reply;
    reply.id = j.value("id", "");
    reply.conversation.channel = j.value("conversation", "");
    reply.conversation.thread = j.value("thread", "");
    reply.text = j.value("text", "");
    reply.silent = j.value("silent", false);
    auto citations = j.find("citations");
    if (citations != j.end() && !citations->is_null()) {
      if (!citations->is_array()) return Status::InvalidArgument("citations is not an array");
      for (const nlohmann::json& c : *citations) {
        if (!c.is_object()) return Status::InvalidArgument("a citation is not an object");
        reply.citations.push_back(c.get<Citation>());
      }
    }
    reply.confidence = j.value("confidence", 0.0);
    reply.escalated = j.value("escalated", false);
    return reply;
  } catch (const nlohmann::json::exception& e) {
    return Status::InvalidArgument(std::string("the reply has a field of the wrong type: ") +
                                   e.what());
  }
}

}  // namespace parley::adapters
