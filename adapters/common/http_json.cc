#include "adapters/common/http_json.h"

namespace parley::adapters {

net::HttpResponse JsonError(int status, const std::string& code, const std::string& message) {
  net::HttpResponse r;
  r.status = status;
  r.body = nlohmann::json{{"error", code}, {"message", message}}.dump();
  return r;
}

nlohmann::json ReplyJson(const OutboundMessage& reply) {
  return nlohmann::json{{"id", reply.id},
                        {"conversation", reply.conversation.channel},
                        {"thread", reply.conversation.thread},
                        {"text", reply.text},
                        {"citations", reply.citations},
                        {"confidence", reply.confidence},
                        {"escalated", reply.escalated}};
}

}  // namespace parley::adapters
