// `parley ask`, `parley chat`, `parley ingest`, `parley check-config`, and argument parsing.
// LevelDB admits one process: when a daemon holds the store, ask/chat/ingest go through its
// local API (a Unix-domain socket in the store directory) and say so.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <iostream>
#include <map>
#include <mutex>
#include <string_view>
#include <thread>

#include <nlohmann/json.hpp>

#include "adapters/common/http_json.h"
#include "adapters/common/reply_stream.h"
#include "adapters/console/console_adapter.h"
#include "app/commands.h"
#include "app/logging.h"
#include "app/runtime.h"
#include "core/percent.h"
#include "escalation/desk.h"
#include "escalation/ticket.h"
#include "net/http.h"
#include "store/kv_store.h"
#include "tools/audit.h"

namespace parley::app {
namespace {

using nlohmann::json;

constexpr char kVersion[] = "0.1.0";

// {"text","citations","confidence","escalated"}: the `ask --json` shape.
json AskJson(const OutboundMessage& reply) {
  return json{{"text", reply.text},
              {"citations", reply.citations},
              {"confidence", reply.confidence},
              {"escalated", reply.escalated}};
}

// Opens the runtime for in-process use; nullptr with `daemon` = true when a daemon holds the
// store, nullptr with a message printed on other failures.
std::unique_ptr<Runtime> OpenInProcess(const config::Config& config, bool& daemon) {
  daemon = false;
  auto rt = Runtime::Open(config);
  if (rt.ok()) return std::move(rt.value());
  if (store::IsLockedByOtherProcess(rt.status())) {
    daemon = true;
  } else {
    std::fprintf(stderr, "parley: cannot open the store: %s\n", rt.status().ToString().c_str());
  }
  return nullptr;
}

void SayViaDaemon(const config::Config& config) {
  std::fprintf(stderr, "parley: a daemon is running on this store; going through it (%s)\n",
               SocketPath(config).c_str());
}

// The JSON answer of the daemon's local API: the parsed body of a 200, else the error it gave.
Result<json> DaemonJson(int status, const std::string& body) {
  json parsed = json::parse(body, nullptr, false);
  if (status != 200) {
    std::string message =
        parsed.is_object() && parsed.contains("message") && parsed["message"].is_string()
            ? parsed["message"].get<std::string>()
            : body;
    return Status::Unavailable("the daemon answered " + std::to_string(status) + ": " + message);
  }
  if (parsed.is_discarded()) return Status::Internal("the daemon sent invalid JSON");
  return parsed;
}

net::ClientRequest DaemonRequest(const config::Config& config, const std::string& path,
                                 const json& body, int timeout_ms) {
  net::ClientRequest request;
  request.method = "POST";
  request.url = "http://localhost" + path;
  request.unix_socket_path = SocketPath(config);
  request.body = body.dump();
  request.headers.emplace_back("Content-Type", "application/json");
  request.timeout_ms = timeout_ms;
  return request;
}

// POSTs body to the daemon's local API.
Result<json> CallDaemon(const config::Config& config, const std::string& path, const json& body,
                        int timeout_ms) {
  auto response = net::BlockingRequest(DaemonRequest(config, path, body, timeout_ms));
  if (!response.ok()) {
    return Status::Unavailable("cannot reach the daemon at " + SocketPath(config) + ": " +
                               response.status().message());
  }
  return DaemonJson(response->status, response->body);
}

constexpr int kAskTimeoutMs = 60'000;

// One turn through the daemon's /v1/local/ask. With on_partial, asks for the streamed answer and
// calls on_partial (on this thread, before returning) with the reply written so far; the
// returned reply is the complete final one either way. The error says, in one line, why there
// is no reply (daemon unreachable or gone mid-answer, an "error" event, a refusal).
Result<OutboundMessage> AskDaemon(const config::Config& config, const std::string& text,
                                  const std::string& conversation,
                                  const console::PartialCallback& on_partial) {
  json body{{"text", text}, {"conversation", conversation}};
  // `--user` (or console.user): who is speaking; else the daemon's own console user.
  if (!config.console.user.empty()) body["user"] = config.console.user;
  if (!on_partial) {
    auto answer = CallDaemon(config, "/v1/local/ask", body, kAskTimeoutMs);
    if (!answer.ok()) return answer.status();
    return adapters::ReplyFromJson(*answer);
  }
  net::ClientRequest request = DaemonRequest(config, "/v1/local/ask", body, kAskTimeoutMs);
  request.headers.emplace_back("Accept", "text/event-stream");
  // The callbacks run inside BlockingRequest, on this thread; nothing outlives the call.
  int status = 0;
  bool streamed = false;
  std::string plain;  // the body when the daemon did not stream (an error, or an older daemon)
  adapters::StreamedReplyReader reader(on_partial);
  request.on_headers = [&](int code, const net::Headers& headers) {
    status = code;
    const std::string type = net::FindHeader(headers, "content-type");
    streamed = code == 200 && type.rfind("text/event-stream", 0) == 0;
    return true;
  };
  request.on_body = [&](std::string_view bytes) {
    if (streamed) {
      reader.Feed(bytes);
    } else {
      plain.append(bytes);
    }
    return true;
  };
  auto response = net::BlockingRequest(std::move(request));
  if (streamed) {
    if (reader.reply()) return *reader.reply();  // complete, whatever happened after it
    if (!reader.error().empty()) {
      return Status::Unavailable("the daemon could not answer: " + reader.error());
    }
    if (!response.ok()) {
      return Status::Unavailable("the daemon went away before the reply was complete (" +
                                 response.status().message() + ")");
    }
    return Status::Unavailable("the daemon ended the answer without a reply");
  }
  if (!response.ok()) {
    return Status::Unavailable("cannot reach the daemon at " + SocketPath(config) + ": " +
                               response.status().message());
  }
  auto answer = DaemonJson(status, plain);
  if (!answer.ok()) return answer.status();
  return adapters::ReplyFromJson(*answer);
}

// Listens to the daemon's GET /v1/local/listen for the conversation's unsolicited messages on a
// background thread, calling on_message (on that thread) for each, until the returned function
// is called (it stops the stream and joins the thread, within about 100 ms). When the stream
// ends while the chat goes on (the daemon restarted), it reconnects every 2 s; a daemon that
// refuses the request (an older one: 404) is not asked again.
std::function<void()> ListenViaDaemon(const config::Config& config, const std::string& conversation,
                                      console::MessageCallback on_message) {
  struct State {
    std::mutex mu;
    std::condition_variable cv;
    std::atomic<bool> stop{false};
  };
  auto state = std::make_shared<State>();
  const std::string socket = SocketPath(config);
  auto thread = std::make_shared<std::thread>([state, socket, conversation, on_message] {
    for (;;) {
      Status ended = console::ListenToDaemon(socket, conversation, on_message, state->stop);
      if (ended.code() == Status::Code::kNotFound ||
          ended.code() == Status::Code::kInvalidArgument) {
        return;  // refused: this daemon does not offer it
      }
      std::unique_lock<std::mutex> lock(state->mu);
      if (state->cv.wait_for(lock, std::chrono::seconds(2), [&] { return state->stop.load(); })) {
        return;
      }
    }
  });
  return [state, thread] {
    {
      std::lock_guard<std::mutex> lock(state->mu);
      state->stop = true;
    }
    state->cv.notify_all();
    if (thread->joinable()) thread->join();
  };
}

// Makes sure an in-process index has content: indexes on first use.
bool EnsureIndexed(Runtime& rt) {
  if (rt.index->FileCount() > 0) return true;
  std::fprintf(stderr, "parley: indexing the knowledge base (first use)...\n");
  auto report = rt.Ingest();
  if (!report.ok()) {
    std::fprintf(stderr, "parley: ingest failed: %s\n", report.status().ToString().c_str());
    return false;
  }
  return true;
}

struct InProcess {
  std::unique_ptr<Runtime> rt;
  std::unique_ptr<console::ConsoleAdapter> console;
};

// Wires the console adapter to an in-process runtime and starts its threads.
bool StartInProcess(InProcess& p) {
  if (!EnsureIndexed(*p.rt)) return false;
  p.console = std::make_unique<console::ConsoleAdapter>(*p.rt->control, p.rt->config.console.user,
                                                        *p.rt->kv, *p.rt->committer);
  p.rt->replies.Register(*p.console);
  Status s = p.console->Start(*p.rt->router);
  if (!s.ok()) return false;
  p.rt->StartThreads(1);
  return true;
}

}  // namespace

int Ask(const config::Config& config, const std::string& question,
        const std::string& conversation, bool as_json) {
  bool daemon = false;
  InProcess p;
  p.rt = OpenInProcess(config, daemon);
  // Without --json the answer is printed as it is written (when the responder streams); --json
  // prints only the final reply.
  console::ProgressivePrinter printer(std::cout, console::ProgressivePrinter::Style{"", ""});
  console::PartialCallback on_partial;
  if (!as_json) {
    on_partial = [&printer](const OutboundMessage& partial) { printer.Partial(partial); };
  }
  OutboundMessage reply;
  if (daemon) {
    SayViaDaemon(config);
    auto answer = AskDaemon(config, question, conversation, on_partial);
    if (!answer.ok()) {
      printer.Interrupt();
      std::fprintf(stderr, "parley: %s\n", answer.status().message().c_str());
      return 1;
    }
    reply = std::move(answer).value();
  } else {
    if (!p.rt || !StartInProcess(p)) return 1;
    std::string error;
    if (!p.console->Ask(conversation, question, on_partial, reply, error)) {
      printer.Interrupt();
      std::fprintf(stderr, "parley: %s\n", error.c_str());
      return 1;
    }
  }
  if (as_json) {
    std::cout << AskJson(reply).dump() << std::endl;
  } else {
    printer.Final(reply);
  }
  return 0;
}

int Chat(const config::Config& config, const std::string& conversation) {
  bool daemon = false;
  InProcess p;
  p.rt = OpenInProcess(config, daemon);
  if (daemon) {
    SayViaDaemon(config);
    console::TerminalBackend backend;
    backend.ask = [&](const std::string& text, OutboundMessage& reply, std::string& error) {
      auto answer = AskDaemon(config, text, conversation, nullptr);
      if (!answer.ok()) {
        error = answer.status().message();
        return false;
      }
      reply = std::move(answer).value();
      return true;
    };
    backend.ask_streaming = [&](const std::string& text, const console::PartialCallback& partial,
                                OutboundMessage& reply, std::string& error) {
      auto answer = AskDaemon(config, text, conversation, partial);
      if (!answer.ok()) {
        error = answer.status().message();
        return false;
      }
      reply = std::move(answer).value();
      return true;
    };
    backend.forget = [&]() -> Result<size_t> {
      auto answer = CallDaemon(config, "/v1/local/forget", json{{"conversation", conversation}},
                               10'000);
      if (!answer.ok()) return answer.status();
      return answer->value("forgotten_turns", size_t{0});
    };
    // Unsolicited messages of the conversation (an agent's replies, or cards in an agents'
    // console) are printed between turns.
    backend.listen = [&](console::MessageCallback on_message) {
      return ListenViaDaemon(config, conversation, std::move(on_message));
    };
    console::RunTerminal(std::cin, std::cout, backend);
    return 0;
  }
  if (!p.rt || !StartInProcess(p)) return 1;
  console::RunTerminal(std::cin, std::cout, p.console->Backend(conversation));
  return 0;
}

int IngestCommand(const config::Config& config) {
  bool daemon = false;
  auto rt = OpenInProcess(config, daemon);
  if (daemon) {
    SayViaDaemon(config);
    auto answer = CallDaemon(config, "/v1/local/ingest", json::object(), 30 * 60'000);
    if (!answer.ok()) {
      std::fprintf(stderr, "parley: %s\n", answer.status().message().c_str());
      return 1;
    }
    std::cout << answer->value("report", "") << std::endl;
    return 0;
  }
  if (!rt) return 1;
  auto report = rt->Ingest();
  if (!report.ok()) {
    std::fprintf(stderr, "parley: ingest failed: %s\n", report.status().ToString().c_str());
    return 1;
  }
  std::cout << DescribeIngest(*report) << std::endl;
  return report->errors.empty() ? 0 : 1;
}

int Say(const config::Config& config, const std::string& platform,
        const std::string& conversation, const std::string& thread, const std::string& text) {
  bool daemon = false;
  auto rt = OpenInProcess(config, daemon);
  if (!daemon) {
    if (rt) std::fprintf(stderr, "parley: say needs a running daemon on this store\n");
    return 1;
  }
  auto answer = CallDaemon(config, "/v1/local/say",
                           json{{"platform", platform},
                                {"conversation", conversation},
                                {"thread", thread},
                                {"text", text}},
                           10'000);
  if (!answer.ok()) {
    std::fprintf(stderr, "parley: %s\n", answer.status().message().c_str());
    return 1;
  }
  std::cout << "queued " << answer->value("id", "") << std::endl;
  return 0;
}

// "30m", "2h", "7d", "45s" -> milliseconds; -1 when malformed.
int64_t ParseDurationMs(const std::string& text) {
  if (text.size() < 2) return -1;
  const char unit = text.back();
  const std::string digits = text.substr(0, text.size() - 1);
  if (digits.empty() || digits.size() > 9 ||
      !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return -1;
  }
  const int64_t n = std::stoll(digits);
  switch (unit) {
    case 's': return n * 1000;
    case 'm': return n * 60'000;
    case 'h': return n * 3'600'000;
    case 'd': return n * 86'400'000;
    default: return -1;
  }
}

int Audit(const config::Config& config, const tools::AuditQuery& query, bool as_json) {
  std::vector<json> records;
  bool daemon = false;
  auto rt = OpenInProcess(config, daemon);
  if (daemon) {
    SayViaDaemon(config);
    auto answer = CallDaemon(config, "/v1/local/audit",
                             json{{"since_ms", query.since_ms},
                                  {"conversation", query.conversation},
                                  {"tool", query.tool},
                                  {"limit", query.limit}},
                             30'000);
    if (!answer.ok()) {
      std::fprintf(stderr, "parley: %s\n", answer.status().message().c_str());
      return 1;
    }
    for (const json& r : answer->value("records", json::array())) records.push_back(r);
  } else {
    if (!rt) return 1;
    auto listed = tools::ListAudit(*rt->kv, query);
    if (!listed.ok()) {
      std::fprintf(stderr, "parley: %s\n", listed.status().ToString().c_str());
      return 1;
    }
    records = std::move(listed).value();
  }
  for (const json& r : records) {
    std::cout << (as_json ? r.dump() : tools::FormatAuditLine(r)) << "\n";
  }
  std::cout.flush();
  if (!as_json && records.empty()) std::fprintf(stderr, "parley: no tool calls recorded\n");
  return 0;
}

// What `parley escalations` lists or shows.
struct EscalationsQuery {
  std::string action;  // "list" | "show"
  std::string id;      // show
  escalation::TicketFilter filter;
};

namespace {

std::string FormatTime(int64_t ms) {
  if (ms <= 0) return "-";
  const std::time_t t = static_cast<std::time_t>(ms / 1000);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%SZ", &tm);
  return buf;
}

// One line per ticket: id, state, queue, priority, age, conversation, reason, agent.
std::string FormatTicketLine(const escalation::Ticket& t) {
  std::string line = "#" + t.id + "  " + escalation::StateName(t.state) + "  queue=" + t.queue +
                     "  p" + std::to_string(t.priority) + "  opened " +
                     FormatTime(t.created_ms) + "  " + t.conversation.Display() + "  reason=" +
                     t.reason;
  if (!t.agent_name.empty() || !t.agent.empty()) {
    line += "  agent=" + (t.agent_name.empty() ? t.agent : t.agent_name);
  }
  return line;
}

std::string FormatTicket(const escalation::Ticket& t) {
  std::string out = FormatTicketLine(t) + "\n";
  out += "  user: " + (t.user_name.empty() ? t.user : t.user_name + " (" + t.user + ")") + "\n";
  if (!t.detail.empty()) out += "  detail: " + t.detail + "\n";
  if (t.claimed_ms > 0) out += "  claimed: " + FormatTime(t.claimed_ms) + "\n";
  if (t.closed_ms > 0) out += "  closed: " + FormatTime(t.closed_ms) + "\n";
  if (!t.summary.empty()) out += "  summary:\n    " + t.summary + "\n";
  out += "  transcript:\n";
  for (const escalation::TranscriptEntry& e : t.transcript) {
    out += "    " + FormatTime(e.ts_ms) + " " + e.role + (e.who.empty() ? "" : " " + e.who) +
           ": " + e.text + "\n";
  }
  return out;
}

}  // namespace

int Escalations(const config::Config& config, const EscalationsQuery& query, bool as_json) {
  std::vector<escalation::Ticket> tickets;
  bool daemon = false;
  auto rt = OpenInProcess(config, daemon);
  if (daemon) {
    SayViaDaemon(config);
    std::string path = "/v1/escalations";
    if (query.action == "show") {
      path += "/" + PercentEncode(query.id);
    } else {
      path += "?limit=" + std::to_string(query.filter.limit);
      if (!query.filter.state.empty()) path += "&state=" + PercentEncode(query.filter.state);
      if (!query.filter.queue.empty()) path += "&queue=" + PercentEncode(query.filter.queue);
    }
    net::ClientRequest request = DaemonRequest(config, path, json(), 30'000);
    request.method = "GET";
    request.body.clear();
    auto response = net::BlockingRequest(std::move(request));
    if (!response.ok()) {
      std::fprintf(stderr, "parley: cannot reach the daemon at %s: %s\n",
                   SocketPath(config).c_str(), response.status().message().c_str());
      return 1;
    }
    auto answer = DaemonJson(response->status, response->body);
    if (!answer.ok()) {
      std::fprintf(stderr, "parley: %s\n", answer.status().message().c_str());
      return 1;
    }
    try {
      if (query.action == "show") {
        tickets.push_back(answer->get<escalation::Ticket>());
      } else {
        for (const json& t : answer->value("escalations", json::array())) {
          tickets.push_back(t.get<escalation::Ticket>());
        }
      }
    } catch (const std::exception& e) {
      std::fprintf(stderr, "parley: the daemon sent a ticket this version cannot read: %s\n",
                   e.what());
      return 1;
    }
  } else {
    if (!rt) return 1;
    if (query.action == "show") {
      auto ticket = rt->desk->Get(query.id);
      if (!ticket.ok()) {
        std::fprintf(stderr, "parley: %s\n", ticket.status().message().c_str());
        return 1;
      }
      tickets.push_back(std::move(ticket).value());
    } else {
      auto listed = rt->desk->List(query.filter);
      if (!listed.ok()) {
        std::fprintf(stderr, "parley: %s\n", listed.status().ToString().c_str());
        return 1;
      }
      tickets = std::move(listed).value();
    }
  }
  for (const escalation::Ticket& t : tickets) {
    if (as_json) {
      std::cout << json(t).dump() << "\n";
    } else {
      std::cout << (query.action == "show" ? FormatTicket(t) : FormatTicketLine(t) + "\n");
    }
  }
  std::cout.flush();
  if (!as_json && tickets.empty()) std::fprintf(stderr, "parley: no escalations\n");
  return 0;
}

int CheckConfig(const config::Config& config) {
  Status desk = escalation::Validate(DeskOptionsFrom(config.escalation));
  if (!desk.ok()) {
    std::fprintf(stderr, "%s: %s\n", config.file.c_str(), desk.message().c_str());
    return 2;
  }
  std::cout << "config OK: " << config.file << "\n"
            << "  listen " << config.server.listen << ", store " << config.store.path << ", "
            << config.knowledge.sources.size() << " knowledge source(s), webhook "
            << (config.webhook.enabled
                    ? (config.webhook.secret.empty() ? "on (UNAUTHENTICATED, loopback)"
                                                     : "on (signed)")
                    : "off")
            << ", responder " << (config.llm.enabled ? "LLM" : "embedded (extractive)")
            << ", escalation "
            << (config.escalation.enabled && !config.escalation.queues.empty()
                    ? std::to_string(config.escalation.queues.size()) + " queue(s)"
                    : "off")
            << std::endl;
  return 0;
}

namespace {

constexpr char kUsage[] =
    "usage: parley <command> [options]\n"
    "\n"
    "commands:\n"
    "  serve          run the daemon\n"
    "  ask QUESTION   one turn through the engine and print the answer\n"
    "  chat           talk to the bot in this terminal\n"
    "  ingest         (re)build the knowledge index and print what was indexed\n"
    "  check-config   validate the configuration and exit\n"
    "  say TEXT       have the running daemon write first in a conversation\n"
    "  audit          list the tool calls the LLM made (newest first)\n"
    "  escalations    list the hand-offs to human agents, or show one\n"
    "  version        print the version\n"
    "\n"
    "Every command takes --config FILE (default: $PARLEY_CONFIG, else config/parley.toml)\n"
    "and --help.\n";

const std::map<std::string, std::string>& CommandHelp() {
  static const std::map<std::string, std::string> help = {
      {"audit",
       "usage: parley audit [--since DURATION] [--conversation PLATFORM:CHANNEL] [--tool NAME]\n"
       "                    [--limit N] [--json] [--config FILE]\n\nLists the tool calls from "
       "the audit log, newest first: time, outcome, tool, conversation,\nuser, duration and "
       "arguments (redacted fields as \"***\"). DURATION is e.g. 30m, 2h, 7d.\n--json prints "
       "one JSON record per line. When a daemon is running on the same store,\nthe list comes "
       "through it.\n"},
      {"escalations",
       "usage: parley escalations list [--state STATE] [--queue NAME] [--limit N] [--json]\n"
       "       parley escalations show ID [--json]          [--config FILE]\n\nLists the "
       "escalation tickets, newest first (STATE: open, queued, claimed, resolved,\n"
       "returned_to_bot, abandoned), or shows one with its transcript. When a daemon is\n"
       "running on the same store, the list comes through it.\n"},
      {"serve",
       "usage: parley serve [--config FILE]\n\nRuns the daemon: the adapters enabled in the "
       "config, the engine, /healthz, /readyz and /metrics.\nSIGTERM or SIGINT drains turns in "
       "flight and exits 0.\n"},
      {"ask",
       "usage: parley ask \"QUESTION\" [--conversation ID] [--user ID] [--json] [--config FILE]"
       "\n\nOne turn "
       "through the full engine, memory included: a second ask with the same\n--conversation is a "
       "follow-up (default conversation: \"terminal\").\nThe answer is printed as it is written "
       "(with an LLM), then its sources.\n--json prints only the final reply: {\"text\", "
       "\"citations\":[{\"title\",\"source\",\"section\",\"url\"}], \"confidence\", "
       "\"escalated\"}.\nWhen a daemon is running on the same store, the question goes through "
       "it.\n"},
      {"chat",
       "usage: parley chat [--conversation ID] [--user ID] [--config FILE]\n\nAn interactive "
       "conversation in this terminal. Commands: /forget, /help, /quit.\nWhen a daemon is "
       "running on the same store, the conversation goes through it.\nMessages nobody asked for "
       "(an agent's replies after a hand-over) are printed\nbetween turns as \"[message] ...\".\n"
       "--user: who you are in the conversation (default: console.user, else $USER).\n"
       "An escalation queue with agents = \"console:NAME\" is worked with\n"
       "--conversation NAME: its cards appear here; type claim 1, reply 1 TEXT,\nnote 1 TEXT, "
       "resolve 1, help.\n"},
      {"ingest",
       "usage: parley ingest [--config FILE]\n\nBrings the knowledge index in line with the "
       "configured sources (only new, changed\nand removed files are processed) and prints what "
       "was indexed.\n"},
      {"check-config",
       "usage: parley check-config [--config FILE]\n\nValidates the configuration; prints every "
       "problem with file, line and key and\nexits 2, or prints a summary and exits 0.\n"},
      {"say",
       "usage: parley say \"TEXT\" --conversation ID [--platform NAME] [--thread ID] "
       "[--config FILE]\n\nHas the running daemon send TEXT as the bot into a conversation "
       "(default platform:\nwebhook, which POSTs it to the conversation's latest reply_url, else "
       "to\nwebhook.default_reply_url). Needs a running daemon.\n"},
      {"version", "usage: parley version\n"},
  };
  return help;
}

int UsageError(const std::string& message, const std::string& command) {
  std::fprintf(stderr, "parley: %s\n\n", message.c_str());
  auto it = CommandHelp().find(command);
  std::fputs(it != CommandHelp().end() ? it->second.c_str() : kUsage, stderr);
  return 2;
}

}  // namespace

int Main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
    std::fputs(kUsage, args.empty() ? stderr : stdout);
    return args.empty() ? 2 : 0;
  }
  const std::string command = args[0];
  if (CommandHelp().count(command) == 0) {
    return UsageError("unknown command \"" + command + "\"", "");
  }
  const char* env_config = std::getenv("PARLEY_CONFIG");
  std::string config_path = env_config && *env_config ? env_config : "config/parley.toml";
  std::string conversation = "terminal";
  std::string user;  // --user for ask and chat
  std::string platform = "webhook", thread;
  bool conversation_given = false;
  bool as_json = false;
  tools::AuditQuery audit_query;
  audit_query.limit = 50;
  EscalationsQuery escalations_query;
  std::vector<std::string> positional;
  for (size_t i = 1; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto value = [&](std::string& out) {
      if (i + 1 >= args.size()) return false;
      out = args[++i];
      return true;
    };
    if (a == "--help" || a == "-h") {
      std::fputs(CommandHelp().at(command).c_str(), stdout);
      return 0;
    } else if (a == "--config") {
      if (!value(config_path)) return UsageError("--config needs a file", command);
    } else if (a.rfind("--config=", 0) == 0) {
      config_path = a.substr(9);
    } else if (a == "--platform" && command == "say") {
      if (!value(platform) || platform.empty()) return UsageError("--platform needs a name", command);
    } else if (a == "--thread" && command == "say") {
      if (!value(thread)) return UsageError("--thread needs an id", command);
    } else if (a == "--conversation" &&
               (command == "ask" || command == "chat" || command == "say")) {
      if (!value(conversation) || conversation.empty()) {
        return UsageError("--conversation needs an id", command);
      }
      conversation_given = true;
    } else if (a == "--user" && (command == "ask" || command == "chat")) {
      if (!value(user) || user.empty()) return UsageError("--user needs an id", command);
    } else if (a == "--json" && (command == "ask" || command == "audit")) {
      as_json = true;
    } else if (a == "--since" && command == "audit") {
      std::string since;
      const int64_t ms = value(since) ? ParseDurationMs(since) : -1;
      if (ms < 0) return UsageError("--since needs a duration such as 30m, 2h or 7d", command);
      audit_query.since_ms = SystemClock::Instance().NowMs() - ms;
    } else if (a == "--tool" && command == "audit") {
      if (!value(audit_query.tool) || audit_query.tool.empty()) {
        return UsageError("--tool needs a name", command);
      }
    } else if (a == "--limit" && command == "audit") {
      std::string limit;
      if (!value(limit) || limit.empty() || limit.size() > 7 ||
          !std::all_of(limit.begin(), limit.end(), [](char c) { return c >= '0' && c <= '9'; })) {
        return UsageError("--limit needs a number", command);
      }
      audit_query.limit = static_cast<size_t>(std::stoul(limit));
    } else if (a == "--conversation" && command == "audit") {
      if (!value(audit_query.conversation) || audit_query.conversation.empty()) {
        return UsageError("--conversation needs PLATFORM:CHANNEL", command);
      }
    } else if (a == "--state" && command == "escalations") {
      if (!value(escalations_query.filter.state)) return UsageError("--state needs a state", command);
      escalation::TicketState state;
      const std::string& st = escalations_query.filter.state;
      if (st != "open" && !escalation::ParseState(st, state)) {
        return UsageError("unknown state \"" + st + "\"", command);
      }
    } else if (a == "--queue" && command == "escalations") {
      if (!value(escalations_query.filter.queue) || escalations_query.filter.queue.empty()) {
        return UsageError("--queue needs a name", command);
      }
    } else if (a == "--limit" && command == "escalations") {
      std::string limit;
      if (!value(limit) || limit.empty() || limit.size() > 5 ||
          !std::all_of(limit.begin(), limit.end(), [](char c) { return c >= '0' && c <= '9'; }) ||
          std::stoul(limit) == 0) {
        return UsageError("--limit needs a number from 1", command);
      }
      escalations_query.filter.limit = static_cast<size_t>(std::stoul(limit));
    } else if (a == "--json" && command == "escalations") {
      as_json = true;
    } else if (a.rfind("--", 0) == 0 && a.size() > 2) {
      return UsageError("unknown option " + a, command);
    } else {
      positional.push_back(a);
    }
  }
  if (command == "version") {
    std::printf("parley %s\n", kVersion);
    return 0;
  }
  if (command == "escalations") {
    const std::string action = positional.empty() ? "" : positional[0];
    if (action == "list" && positional.size() == 1) {
      escalations_query.action = action;
    } else if (action == "show" && positional.size() == 2) {
      escalations_query.action = action;
      escalations_query.id = positional[1];
    } else {
      return UsageError("use: escalations list [options] | escalations show ID", command);
    }
    positional.clear();
  }
  const bool takes_text = command == "ask" || command == "say";
  if (takes_text ? positional.size() != 1 : !positional.empty()) {
    return UsageError(takes_text ? command + " takes exactly one text argument (quote it)"
                                 : "unexpected argument " + positional[0],
                      command);
  }
  if (command == "say" && !conversation_given) {
    return UsageError("say needs --conversation", command);
  }
  auto config = config::LoadConfig(config_path);
  if (!config.ok()) {
    std::fprintf(stderr, "%s\n", config.status().message().c_str());
    return 2;
  }
  if (command == "serve") return Serve(*config);
  // One-shot commands keep the terminal for answers: routine events are not shown.
  config::LogConfig log = config->log;
  if (log.level == "info") log.level = "warn";
  Status logging = SetUpLogging(log);
  if (!logging.ok()) {
    std::fprintf(stderr, "parley: %s\n", logging.ToString().c_str());
    return 2;
  }
  if (!user.empty()) config->console.user = user;  // ask and chat only
  if (command == "ask") return Ask(*config, positional[0], conversation, as_json);
  if (command == "chat") return Chat(*config, conversation);
  if (command == "ingest") return IngestCommand(*config);
  if (command == "say") return Say(*config, platform, conversation, thread, positional[0]);
  if (command == "audit") return Audit(*config, audit_query, as_json);
  if (command == "escalations") return Escalations(*config, escalations_query, as_json);
  return CheckConfig(*config);
}

}  // namespace parley::app
