#pragma once
// JSON bodies shared by the HTTP-facing adapters: errors and the reply shape of `ask --json`.

#include <string>

#include <nlohmann/json.hpp>

#include "core/message.h"
#include "core/status.h"
#include "net/http.h"

namespace parley::adapters {

// {"error": code, "message": message} with the given HTTP status.
net::HttpResponse JsonError(int status, const std::string& code, const std::string& message);

// {"id","conversation","thread","text","citations":[{title,source,section,url}],"confidence",
//  "escalated"} plus "silent": true for a turn that produced no bot reply (the text is empty):
// the reply as the webhook and `parley ask --json` show it.
nlohmann::json ReplyJson(const OutboundMessage& reply);

// The reverse of ReplyJson, for clients: id, conversation, thread, text, citations, confidence,
// escalated, silent (absent fields keep their defaults). InvalidArgument when j is not an object or a
// field has the wrong type.
Result<OutboundMessage> ReplyFromJson(const nlohmann::json& j);

}  // namespace parley::adapters
