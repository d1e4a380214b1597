#pragma once
// Tools declared in config ([[tools.http]]) that call an HTTP endpoint with the model's
// arguments: URL template, query string, JSON body template, fixed headers, a time and size
// bound, and an optional JSON pointer selecting what the model gets back.
// Thread-safety: the tool is immutable after construction; Invoke is thread-safe.

#include <memory>

#include "config/config.h"
#include "core/status.h"
#include "net/http.h"
#include "tools/tool.h"

namespace parley::tools {

// Validates the config: InvalidArgument "http tool <name>: <problem>" when the name is not
// ^[a-zA-Z0-9_-]{1,64}$, parameters is not a loadable JSON Schema object, the method is not
// GET/POST/PUT/PATCH/DELETE, the url is not an absolute http(s) URL, a {name} / {+name}
// placeholder is malformed or names no property of the schema, body is set but not JSON, keep is
// not a JSON pointer, or timeout_ms / max_response_bytes is not positive.
//
// Invoke: {name} becomes the argument percent-escaped (RFC 3986 unreserved kept; a value of only
// dots is escaped too, so it cannot be a dot segment); {+name} is inserted as is, but a value
// with characters that would change the URL's structure (whitespace, control characters, '#',
// non-ASCII, "<>\"{}|\\^`", or a "." / ".." path segment) makes the call a tool error. Numbers
// and booleans are rendered as JSON; missing or null arguments as "". For GET/DELETE the
// arguments not in the template go to the query string (escaped, in name order). The body is the
// template with every string exactly "{name}" replaced by the argument's JSON value (null when
// missing), or, with no template, the arguments object for POST/PUT/PATCH; it is sent as
// application/json unless a configured header sets Content-Type. Headers are sent as configured
// and never logged.
// Result: 2xx -> ok with the body (or, with `keep`, the JSON value at that pointer, compact; a
// body that is not JSON or lacks the pointer is a tool error); other statuses -> tool error
// "HTTP <status>: <first 200 characters of the body>"; a response over max_response_bytes ->
// "response too large"; transport failures -> "request failed: ..." / "request timed out".
// Content is capped at max_response_bytes.
[[nodiscard]] Result<std::shared_ptr<Tool>> MakeHttpTool(const config::HttpToolConfig& config,
                                                         std::shared_ptr<net::HttpClient> http);

}  // namespace parley::tools
