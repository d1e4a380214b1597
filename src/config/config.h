#pragma once
// parley's configuration: one TOML file parsed into typed per-module structs.
// Every key and its default is documented in config/parley.toml. Unknown keys, wrong types,
// out-of-range values and missing required values are errors naming the file, line and key.
// String values may reference environment variables as ${NAME}; secrets must.
// Thread-safety: plain values; load once, then share const.

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/secret.h"
#include "core/status.h"

namespace parley::config {

struct RuntimeConfig {
  int threads = 0;  // io threads; 0 = number of cores
};

struct LogConfig {
  std::string level = "info";   // trace | debug | info | warn | error
  std::string format = "text";  // text | json
  std::string file;             // empty = stderr
};

struct StoreConfig {
  std::string path = "var/parley";  // directory: LevelDB in <path>/db, index in <path>/index
  int retention_days = 30;          // conversation memory older than this is deleted; 0 = keep
  int dedupe_hours = 48;            // how long event ids are remembered for de-duplication
  // Group commit under load: synced writes start at most this often (microseconds); what arrives
  // meanwhile shares the next fdatasync. 0 = sync as soon as the previous write is done.
  int sync_interval_us = 0;
  // The cache of recent conversation turns in front of the store (MiB); 0 = none. The same
  // default as store::MemoryCacheOptions::kDefaultBytes, whose comment says why this size.
  int memory_cache_mb = 4;
};

struct ServerConfig {
  std::string listen = "127.0.0.1:8080";  // "HOST:PORT"; port 0 picks a free port
  std::string admin_listen;               // empty = admin endpoints on `listen`
  int64_t max_body_bytes = 64 * 1024;
  int request_timeout_ms = 10'000;
  std::string port_file;  // when set, the bound port(s) are written here as JSON once listening
};

struct KnowledgeSource {
  std::string path;               // directory (or file) of .md, .markdown, .txt, .html, .htm
  std::vector<std::string> tags;  // access tags; empty = everyone
  std::string url_base;           // citation url = url_base + relative path + "#" + anchor
};

// Grants access tags to conversations whose "platform:channel" matches one of the patterns
// (glob with '*').
struct AccessGrant {
  std::vector<std::string> conversations;
  std::vector<std::string> tags;
};

struct KnowledgeConfig {
  std::vector<KnowledgeSource> sources;
  std::vector<AccessGrant> grants;
  int chunk_target_chars = 1200;  // chunks are cut near this size at paragraph boundaries
  int chunk_max_chars = 3000;     // hard cap, except inside code blocks and table rows
  int cache_mb = 8;               // remembered retrieval results and decoded chunks; 0 = off
};

struct EngineConfig {
  double min_confidence = 0.35;  // below: say the knowledge base has no answer, offer a human
  int max_passages = 3;          // passages considered for an answer
  int max_answer_sentences = 3;
  int memory_turns = 6;  // recent turns loaded for follow-up questions
  int memory_chars = 4000;
};

struct PolicyConfig {
  double user_rate_per_minute = 30;  // sustained per-user turns
  int user_burst = 10;
  double conversation_rate_per_minute = 60;  // sustained per-conversation turns
  int conversation_burst = 20;
};

// An OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, llama.cpp server, Ollama).
struct LlmConfig {
  bool enabled = false;  // false (or [llm] absent) = the embedded extractive responder
  std::string base_url;  // including /v1, e.g. "https://api.openai.com/v1"; http(s)
  Secret api_key;        // "${OPENAI_API_KEY}"; may be empty for servers without auth
  std::string model;     // required when enabled
  std::string system_prompt;  // persona and rules; empty = the built-in prompt
  double temperature = 0.2;   // -1 = not sent (server default)
  int max_tokens = 800;       // 0 = not sent
  bool stream = true;         // stream tokens to the user as they arrive
  int connect_timeout_ms = 5'000;
  int first_token_timeout_ms = 30'000;  // request sent -> first byte of the answer
  int idle_timeout_ms = 30'000;         // longest silence between stream chunks
  int total_timeout_ms = 120'000;       // the whole call
  int max_retries = 2;        // 429 / 5xx / connection errors, before the first token only
  int breaker_failures = 5;   // consecutive failed calls that open the circuit breaker
  int breaker_cooldown_ms = 30'000;  // open circuit: calls fail at once for this long
  // Calls to the endpoint at once (0 = unlimited); more wait in a FIFO queue in the client.
  int max_concurrent = 1'024;
  std::vector<std::pair<std::string, std::string>> headers;  // extra request headers
  // Prompt budget (tokens, estimated at ~4 characters per token): memory turns and sources are
  // trimmed to fit, oldest turns first, then the weakest sources.
  int context_tokens = 6'000;
  int max_sources = 5;  // passages offered as numbered sources
  // Turns that fall out of the recent window (engine.memory_turns) are condensed into a rolling
  // summary of the conversation, at most this many characters (0 = no summary).
  int summary_chars = 1'500;
  // An answer that cites no source: "allow" it, "flag" it with a note, or "replace" it with the
  // extractive answer.
  std::string unsupported = "flag";
  int max_tool_rounds = 4;      // model -> tools -> model rounds per turn
  int turn_timeout_ms = 90'000; // the whole turn, tool rounds included
};

// A tool that calls an HTTP endpoint, declared in config as [[tools.http]].
struct HttpToolConfig {
  std::string name;         // ^[a-zA-Z0-9_-]{1,64}$, unique among tools
  std::string description;  // what the model reads to decide when to call it
  std::string parameters;   // JSON Schema of the arguments, as a JSON string
  std::string method = "GET";
  // URL template: {name} is replaced by the argument, percent-escaped (a path/query component);
  // {+name} unescaped (must already be a URL-safe string). Arguments not in the template go to
  // the query string for GET/DELETE.
  std::string url;
  std::vector<std::pair<std::string, std::string>> headers;  // values may use ${ENV}
  // Request body template: JSON text in which a string value that is exactly "{name}" is
  // replaced by the argument's JSON value. Empty = the arguments object itself for POST/PUT/
  // PATCH, no body otherwise.
  std::string body;
  int timeout_ms = 5'000;
  int64_t max_response_bytes = 64 * 1024;
  std::string keep;  // JSON pointer into the response given to the model; empty = all of it
  bool confirm = false;  // run only after the user confirms in the conversation
  // Conversations ("platform:channel" globs, e.g. "slack:C0123*") where the tool may run;
  // empty = everywhere.
  std::vector<std::string> allow_channels;
  std::vector<std::string> allow_users;  // user ids ("platform:user" globs); empty = everyone
  std::vector<std::string> redact;  // argument names whose values are "***" in the audit log
};

struct ToolsConfig {
  bool enabled = true;            // offer tools to the LLM (nothing runs without [llm])
  bool search_knowledge = true;   // the built-in retriever tool
  bool escalate_to_human = true;  // the built-in hand-off tool
  std::vector<HttpToolConfig> http;
  int confirm_timeout_ms = 10 * 60 * 1000;  // a pending confirmation expires after this
  int audit_retention_days = 90;
};

// One queue of human agents ([[escalation.queues]]); see escalation::QueueOptions.
struct EscalationQueueConfig {
  std::string name;    // required; letters, digits, '_', '-', '.'
  std::string agents;  // required; "<platform>:<channel>", e.g. "slack:C0123", "webhook:agents"
  std::vector<std::string> patterns;   // case-insensitive regexes over the user's text
  std::vector<std::string> topics;     // the model's stated topic
  std::vector<std::string> channels;   // source conversations "<platform>:<channel>", globs ok
  std::vector<std::string> platforms;  // source platforms
  bool policy = false;  // text matching `patterns` always goes to people, before the bot answers
  int priority = 3;     // 1 = most urgent .. 5
  double sla_minutes = 30;       // 0 = no SLA; fractions allowed
  std::string business_hours;    // "" = always; "mon-fri 09:00-17:00, sat 10:00-14:00"
  std::string oncall;            // mention put in the SLA breach notice
  std::vector<std::string> agent_users;  // empty: anyone in the agents' channel may act
};

// [escalation]: the human hand-off desk. Unset optional lists keep the desk's defaults.
struct EscalationConfig {
  bool enabled = true;  // active once at least one queue is configured
  std::optional<std::vector<std::string>> request_phrases;
  std::optional<std::vector<std::string>> cancel_phrases;
  int low_confidence_turns = 3;  // 0 = off
  double low_confidence = 0.35;
  bool negative_feedback = true;
  int utc_offset_minutes = 0;  // business hours are in this offset from UTC
  int summary_turns = 6;
  // With [llm] enabled, the model writes each ticket's summary (posted in the card's thread once
  // it arrives); otherwise, or when it fails, the summary is the user's messages condensed.
  bool llm_summary = true;
  int retention_days = 90;  // closed tickets are deleted this long after closing; 0 = keep
  int sla_renotify_minutes = 15;
  int waiting_notice_minutes = 5;
  std::vector<EscalationQueueConfig> queues;
};

struct WebhookConfig {
  bool enabled = true;
  Secret secret;                  // HMAC-SHA256 key; required unless insecure_no_auth
  bool insecure_no_auth = false;  // allowed only when server.listen is a loopback address
  std::string default_reply_url;  // where unsolicited messages go when a conversation has none
  int max_skew_seconds = 300;     // X-Parley-Timestamp older/newer than this is refused
  int delivery_timeout_ms = 10'000;
  int delivery_max_attempts = 12;  // then the delivery is dropped and logged
};

struct ConsoleConfig {
  std::string user = "";  // user id in the console; empty = $USER
};

// Who may DM the bot.
enum class SlackDmPolicy {
  kOpen,       // everyone (subject to allowed_users)
  kAllowlist,  // only the users in dm_allowlist
  kDisabled,   // nobody
};

// What a refused user sees.
enum class SlackRefusal {
  kEphemeral,  // one polite note visible only to them
  kSilent,     // nothing
};

// How the bot shows that a turn is running.
enum class SlackWorkingSignal {
  kReaction,  // a reaction (working_reaction) on the question, removed when the answer lands
  kNone,
};

// The Slack adapter (Socket Mode in, Web API out). Ids are Slack ids, never names: users
// U…/W…, channels C…/G….
struct SlackConfig {
  bool enabled = false;
  Secret app_token;  // app-level token (xapp-…) for apps.connections.open; required if enabled
  Secret bot_token;  // bot token (xoxb-…) for the Web API; required if enabled
  // Web API base; method names are appended. http(s), ends with "/"; http:// only to a
  // loopback host (test servers).
  std::string api_base_url = "https://slack.com/api/";
  int connections = 2;           // Socket Mode sockets held open at once, 1..10
  bool thread_followups = true;  // messages in a thread the bot answered count as addressed to it
  bool mention_required = true;  // in channels, answer only @mentions (and follow-ups, above)
  SlackDmPolicy dm_policy = SlackDmPolicy::kOpen;
  std::vector<std::string> dm_allowlist;       // user ids; used when dm_policy is kAllowlist
  std::vector<std::string> channel_allowlist;  // channel ids; empty = every channel it is in
  std::vector<std::string> allowed_users;      // user ids; empty = everyone
  bool allow_bots = false;                     // answer other bots' messages
  SlackRefusal refusal = SlackRefusal::kEphemeral;
  SlackWorkingSignal working_signal = SlackWorkingSignal::kReaction;
  std::string working_reaction = "eyes";  // emoji name, without colons
  int working_delay_ms = 500;  // the signal shows only when an answer takes longer (0 = at once)
  std::string slash_command = "/parley";
  bool feedback_buttons = true;   // helpful / not helpful buttons under answers
  int ping_interval_ms = 10'000;  // the client pings each socket this often
  int pong_timeout_ms = 5'000;    // no pong within this: the socket is dead
  // A socket that delivers nothing (not even pongs) for this long is dead. Greater than
  // ping_interval_ms + pong_timeout_ms.
  int silence_timeout_ms = 120'000;
  // chat.postMessage pace per channel (Slack allows about 1/s per channel with short bursts):
  // messages per second (0 = no pacing; then only Slack's 429s slow the bot down) and burst.
  double post_rate_per_channel = 1.0;
  int post_burst = 3;
  // Streaming (answers written progressively, e.g. by an LLM): the answer is posted as soon as
  // its first words exist and edited (chat.update) as it grows; the final edit carries the
  // complete answer. stream = false posts only the complete answer.
  bool stream = true;
  // Minimum gap between two edits of one answer, ms (250..60000).
  int stream_interval_ms = 1000;
  // Edits of unfinished answers across the workspace per minute (1..1000). chat.update is Slack
  // Tier 3 (about 50/min per workspace); the final edit of each answer is not held to this, so
  // keep it below Slack's limit to leave room for finals.
  int stream_edits_per_minute = 40;
};

// What the Matrix adapter does with an encrypted room (it does not do end-to-end encryption).
enum class MatrixEncryptedRooms {
  kDecline,  // an invite to an encrypted room is declined; a room that turns encrypted is left
  kNotice,   // join (or stay) and post one plaintext notice saying it cannot read the room
};

// The Matrix adapter (client-server API). Ids are Matrix ids: users "@local:server", rooms
// "!opaque:server".
struct MatrixConfig {
  bool enabled = false;
  // Base URL of the homeserver's client-server API, e.g. "https://matrix.example.org" (no
  // /_matrix suffix). http:// only to a loopback host (test servers, a local Pantalaimon).
  std::string homeserver;
  std::string user_id;  // the bot's full user id; required if enabled
  // Exactly one of the two is required when enabled. With a password the bot logs in once and
  // keeps the access token and device id in the store (later starts reuse them; a new login
  // passes the same device id).
  Secret access_token;
  Secret password;
  std::string device_id;              // requested at login; empty: the server picks one
  std::string device_name = "parley";  // initial_device_display_name at login
  int sync_timeout_ms = 30'000;       // /sync long-poll timeout (the HTTP timeout is longer)
  int timeline_limit = 50;            // the sync filter's room.timeline.limit (server default 10)
  // Invites: accepted from these users (ids; "*" globs allowed, e.g. "@*:example.org"). Empty:
  // from users of the bot's own homeserver only.
  std::vector<std::string> allowed_inviters;
  bool auto_join = true;                       // false: invites are ignored (join by hand)
  std::vector<std::string> room_allowlist;     // room ids; empty = every room it is in
  std::vector<std::string> allowed_users;      // user ids (globs); empty = everyone
  bool mention_required = true;   // in rooms (not DMs), answer only mentions (and follow-ups)
  bool thread_followups = true;   // messages in a thread the bot answered count as addressed to it
  bool threads = true;            // reply in a thread of the question; false: a rich reply
  std::string msgtype = "m.notice";  // "m.notice" (default; never auto-answered) or "m.text"
  MatrixEncryptedRooms encrypted_rooms = MatrixEncryptedRooms::kNotice;
  bool typing = true;  // typing notifications while a turn runs ...
  int typing_delay_ms = 500;  // ... once it has run this long (0 = at once), 0..60000
  // Streaming: the answer is posted with its first words and edited (m.replace) as it grows; the
  // final edit carries the complete answer. Every edit is an event and counts against the
  // server's message rate limit (Synapse: 0.2/s after a burst of 10).
  bool stream = true;
  int stream_interval_ms = 3000;     // minimum gap between two edits of one answer (250..60000)
  int stream_edits_per_minute = 6;   // edits of unfinished answers across rooms (1..1000)
};

struct Config {
  std::string file;  // the path it was loaded from
  RuntimeConfig runtime;
  LogConfig log;
  StoreConfig store;
  ServerConfig server;
  KnowledgeConfig knowledge;
  EngineConfig engine;
  PolicyConfig policy;
  LlmConfig llm;
  ToolsConfig tools;
  EscalationConfig escalation;
  WebhookConfig webhook;
  ConsoleConfig console;
  SlackConfig slack;
  MatrixConfig matrix;
};

// Reads and validates the file. Relative paths (store.path, also its default, knowledge source
// paths, log.file, server.port_file) are resolved against the current working directory and
// returned absolute and lexically normalised.
// Errors: "FILE:LINE: KEY: what is wrong" (or "FILE: ..." when no line applies), one line per
// problem; all problems found are returned together, joined by "\n", in one InvalidArgument
// status. KEY is the full dotted key, e.g. "server.listen" or "knowledge.sources[0].path".
// A file that cannot be read gives NotFound (missing) or IoError. No error message ever contains
// the value of a secret (webhook.secret, llm.api_key, slack.app_token, slack.bot_token,
// matrix.access_token, matrix.password).
Result<Config> LoadConfig(const std::string& path);

// Same, from text; `name` is used in error messages as the file name and stored in Config::file.
Result<Config> ParseConfig(const std::string& text, const std::string& name);

// Looks up an environment variable for ${NAME} references; nullopt when NAME is unset.
using EnvLookup = std::function<std::optional<std::string>(const std::string& name)>;

// Same, with the environment injected (tests). ParseConfig(text, name) uses the process
// environment (getenv).
Result<Config> ParseConfig(const std::string& text, const std::string& name, const EnvLookup& env);

// Splits "HOST:PORT" into host and port. HOST is an IPv4 address, an IPv6 address in brackets
// ("[::1]:8080"; returned without the brackets) or a DNS host name; PORT is 0..65535 in decimal.
// Errors (InvalidArgument) say what is wrong without a file or key prefix, e.g.
// `expected "HOST:PORT", got "8080"`.
Result<std::pair<std::string, uint16_t>> SplitHostPort(const std::string& host_port);

// True for "localhost" (any case, optional trailing dot), IPv4 127.0.0.0/8, "::1" (also "[::1]")
// and IPv4-mapped 127.x addresses ("::ffff:127.0.0.1"). No name resolution is done.
bool IsLoopbackHost(const std::string& host);

}  // namespace parley::config
