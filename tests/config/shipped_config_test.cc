// The shipped config/parley.toml: it loads, it is what `./dev run` promises, and its comments
// document every key with the right default.

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>

#include "config/config.h"

namespace parley::config {
namespace {

std::string ShippedPath() {
  const char* dir = std::getenv("PARLEY_SOURCE_DIR");
  EXPECT_NE(dir, nullptr) << "PARLEY_SOURCE_DIR is not set (run the test through ctest)";
  return std::string(dir ? dir : ".") + "/config/parley.toml";
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << path;
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Sets or unsets an environment variable for the life of the object, restoring it after.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    const char* old = std::getenv(name);
    if (old != nullptr) old_ = old;
    if (value != nullptr) {
      setenv(name, value, 1);
    } else {
      unsetenv(name);
    }
  }
  ~ScopedEnv() {
    if (old_) {
      setenv(name_.c_str(), old_->c_str(), 1);
    } else {
      unsetenv(name_.c_str());
    }
  }

 private:
  std::string name_;
  std::optional<std::string> old_;
};

TEST(ShippedConfigTest, LoadsAndIsTheLocalDevelopmentSetup) {
  ScopedEnv no_secret("PARLEY_WEBHOOK_SECRET", nullptr);
  Result<Config> r = LoadConfig(ShippedPath());
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const Config& c = r.value();
  const std::filesystem::path cwd = std::filesystem::current_path();
  EXPECT_EQ(c.server.listen, "127.0.0.1:8080");
  EXPECT_EQ(c.server.admin_listen, "");
  EXPECT_EQ(c.store.path, (cwd / "var/parley").string());
  ASSERT_EQ(c.knowledge.sources.size(), 1u);
  EXPECT_EQ(c.knowledge.sources[0].path, (cwd / "config/knowledge").string());
  EXPECT_TRUE(c.knowledge.sources[0].tags.empty());
  EXPECT_EQ(c.knowledge.sources[0].url_base, "");
  EXPECT_TRUE(c.knowledge.grants.empty());
  EXPECT_TRUE(c.webhook.enabled);
  EXPECT_TRUE(c.webhook.insecure_no_auth);
  EXPECT_TRUE(c.webhook.secret.empty());
  EXPECT_FALSE(c.llm.enabled);
  EXPECT_TRUE(c.llm.api_key.empty());
  EXPECT_FALSE(c.slack.enabled);
  EXPECT_TRUE(c.slack.app_token.empty());
  EXPECT_TRUE(c.slack.bot_token.empty());
}

TEST(ShippedConfigTest, WebhookSecretComesFromTheEnvironment) {
  ScopedEnv secret("PARLEY_WEBHOOK_SECRET", "dev-secret");
  Result<Config> r = LoadConfig(ShippedPath());
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->webhook.secret.reveal(), "dev-secret");
  EXPECT_TRUE(r->webhook.insecure_no_auth);
}

// Every key of every struct in config.h, as "section.key".
const std::set<std::string> kAllKeys = {
    "runtime.threads",
    "log.level",
    "log.format",
    "log.file",
    "store.path",
    "store.retention_days",
    "store.dedupe_hours",
    "store.sync_interval_us",
    "store.memory_cache_mb",
    "server.listen",
    "server.admin_listen",
    "server.max_body_bytes",
    "server.request_timeout_ms",
    "server.port_file",
    "knowledge.chunk_target_chars",
    "knowledge.chunk_max_chars",
    "knowledge.cache_mb",
    "knowledge.sources.path",
    "knowledge.sources.tags",
    "knowledge.sources.url_base",
    "knowledge.grants.conversations",
    "knowledge.grants.tags",
    "engine.min_confidence",
    "engine.max_passages",
    "engine.max_answer_sentences",
    "engine.memory_turns",
    "engine.memory_chars",
    "policy.user_rate_per_minute",
    "policy.user_burst",
    "policy.conversation_rate_per_minute",
    "policy.conversation_burst",
    "llm.enabled",
    "llm.base_url",
    "llm.api_key",
    "llm.model",
    "llm.system_prompt",
    "llm.temperature",
    "llm.max_tokens",
    "llm.stream",
    "llm.connect_timeout_ms",
    "llm.first_token_timeout_ms",
    "llm.idle_timeout_ms",
    "llm.total_timeout_ms",
    "llm.max_retries",
    "llm.breaker_failures",
    "llm.breaker_cooldown_ms",
    "llm.max_concurrent",
    "llm.headers",
    "llm.context_tokens",
    "llm.max_sources",
    "llm.summary_chars",
    "llm.unsupported",
    "llm.max_tool_rounds",
    "llm.turn_timeout_ms",
    "tools.enabled",
    "tools.search_knowledge",
    "tools.escalate_to_human",
    "tools.confirm_timeout_ms",
    "tools.audit_retention_days",
    "tools.http.name",
    "tools.http.description",
    "tools.http.parameters",
    "tools.http.method",
    "tools.http.url",
    "tools.http.headers",
    "tools.http.body",
    "tools.http.timeout_ms",
    "tools.http.max_response_bytes",
    "tools.http.keep",
    "tools.http.confirm",
    "tools.http.allow_channels",
    "tools.http.allow_users",
    "tools.http.redact",
    "escalation.enabled",
    "escalation.request_phrases",
    "escalation.cancel_phrases",
    "escalation.low_confidence_turns",
    "escalation.low_confidence",
    "escalation.negative_feedback",
    "escalation.utc_offset_minutes",
    "escalation.summary_turns",
    "escalation.llm_summary",
    "escalation.retention_days",
    "escalation.sla_renotify_minutes",
    "escalation.waiting_notice_minutes",
    "escalation.queues.name",
    "escalation.queues.agents",
    "escalation.queues.patterns",
    "escalation.queues.topics",
    "escalation.queues.channels",
    "escalation.queues.platforms",
    "escalation.queues.policy",
    "escalation.queues.priority",
    "escalation.queues.sla_minutes",
    "escalation.queues.business_hours",
    "escalation.queues.oncall",
    "escalation.queues.agent_users",
    "webhook.enabled",
    "webhook.secret",
    "webhook.insecure_no_auth",
    "webhook.default_reply_url",
    "webhook.max_skew_seconds",
    "webhook.delivery_timeout_ms",
    "webhook.delivery_max_attempts",
    "console.user",
    "slack.enabled",
    "slack.app_token",
    "slack.bot_token",
    "slack.api_base_url",
    "slack.connections",
    "slack.thread_followups",
    "slack.mention_required",
    "slack.dm_policy",
    "slack.dm_allowlist",
    "slack.channel_allowlist",
    "slack.allowed_users",
    "slack.allow_bots",
    "slack.refusal",
    "slack.working_signal",
    "slack.working_reaction",
    "slack.working_delay_ms",
    "slack.slash_command",
    "slack.feedback_buttons",
    "slack.ping_interval_ms",
    "slack.pong_timeout_ms",
    "slack.silence_timeout_ms",
    "slack.post_rate_per_channel",
    "slack.post_burst",
    "slack.stream",
    "slack.stream_interval_ms",
    "slack.stream_edits_per_minute",
    "matrix.enabled",
    "matrix.homeserver",
    "matrix.user_id",
    "matrix.access_token",
    "matrix.password",
    "matrix.device_id",
    "matrix.device_name",
    "matrix.sync_timeout_ms",
    "matrix.timeline_limit",
    "matrix.allowed_inviters",
    "matrix.auto_join",
    "matrix.room_allowlist",
    "matrix.allowed_users",
    "matrix.mention_required",
    "matrix.thread_followups",
    "matrix.threads",
    "matrix.msgtype",
    "matrix.encrypted_rooms",
    "matrix.typing",
    "matrix.typing_delay_ms",
    "matrix.stream",
    "matrix.stream_interval_ms",
    "matrix.stream_edits_per_minute",
};

// A key line, commented out or not: "key = value" with a TOML-looking value.
const std::regex kKeyLine(R"(^(# )?([a-z_]+) = ("|'|\[|\{|-?[0-9]|true\b|false\b).*$)");
const std::regex kHeaderLine(R"(^(# )?\[\[?([a-z_.]+)\]\]?\s*$)");

TEST(ShippedConfigTest, DocumentsEveryKey) {
  const std::string text = ReadFile(ShippedPath());
  std::istringstream in(text);
  std::string section;
  std::set<std::string> documented;
  for (std::string line; std::getline(in, line);) {
    std::smatch m;
    if (std::regex_match(line, m, kHeaderLine)) {
      section = m[2];
    } else if (std::regex_match(line, m, kKeyLine)) {
      documented.insert(section + "." + std::string(m[2]));
    }
  }
  for (const std::string& key : kAllKeys) {
    EXPECT_EQ(documented.count(key), 1u) << key << " is not documented in config/parley.toml";
  }
  for (const std::string& key : documented) {
    EXPECT_EQ(kAllKeys.count(key), 1u) << key << " is documented but is no config key";
  }
}

// With every commented-out key line uncommented, the file still loads and the values it shows
// are the struct defaults (except the keys documented with an example instead).
TEST(ShippedConfigTest, DocumentedDefaultsAreTheRealDefaults) {
  const std::string text = ReadFile(ShippedPath());
  std::istringstream in(text);
  std::string uncommented;
  int uncommented_lines = 0;
  for (std::string line; std::getline(in, line);) {
    if (std::regex_match(line, kKeyLine) || std::regex_match(line, kHeaderLine)) {
      if (line.rfind("# ", 0) == 0) {
        line = line.substr(2);
        ++uncommented_lines;
      }
    }
    uncommented += line + "\n";
  }
  EXPECT_GT(uncommented_lines, 25);
  Result<Config> r = ParseConfig(uncommented, "uncommented.toml",
                                 [](const std::string& name) -> std::optional<std::string> {
                                   if (name == "PARLEY_LLM_API_KEY") return "k";
                                   if (name == "SLACK_APP_TOKEN") return "xapp-1-A1-1-x";
                                   if (name == "SLACK_BOT_TOKEN") return "xoxb-1-2-x";
                                   if (name == "MATRIX_ACCESS_TOKEN") return "syt_x";
                                   if (name == "MATRIX_PASSWORD") return "pw";
                                   return std::nullopt;
                                 });
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const Config& c = r.value();
  const Config d;
  EXPECT_EQ(c.runtime.threads, d.runtime.threads);
  EXPECT_EQ(c.log.level, d.log.level);
  EXPECT_EQ(c.log.format, d.log.format);
  EXPECT_EQ(c.log.file, d.log.file);
  EXPECT_EQ(c.store.retention_days, d.store.retention_days);
  EXPECT_EQ(c.store.dedupe_hours, d.store.dedupe_hours);
  EXPECT_EQ(c.store.sync_interval_us, d.store.sync_interval_us);
  EXPECT_EQ(c.store.memory_cache_mb, d.store.memory_cache_mb);
  EXPECT_EQ(c.server.listen, d.server.listen);
  EXPECT_EQ(c.server.max_body_bytes, d.server.max_body_bytes);
  EXPECT_EQ(c.server.request_timeout_ms, d.server.request_timeout_ms);
  EXPECT_EQ(c.server.port_file, d.server.port_file);
  EXPECT_EQ(c.knowledge.chunk_target_chars, d.knowledge.chunk_target_chars);
  EXPECT_EQ(c.knowledge.chunk_max_chars, d.knowledge.chunk_max_chars);
  EXPECT_EQ(c.knowledge.cache_mb, d.knowledge.cache_mb);
  EXPECT_DOUBLE_EQ(c.engine.min_confidence, d.engine.min_confidence);
  EXPECT_EQ(c.engine.max_passages, d.engine.max_passages);
  EXPECT_EQ(c.engine.max_answer_sentences, d.engine.max_answer_sentences);
  EXPECT_EQ(c.engine.memory_turns, d.engine.memory_turns);
  EXPECT_EQ(c.engine.memory_chars, d.engine.memory_chars);
  EXPECT_DOUBLE_EQ(c.policy.user_rate_per_minute, d.policy.user_rate_per_minute);
  EXPECT_EQ(c.policy.user_burst, d.policy.user_burst);
  EXPECT_DOUBLE_EQ(c.policy.conversation_rate_per_minute, d.policy.conversation_rate_per_minute);
  EXPECT_EQ(c.policy.conversation_burst, d.policy.conversation_burst);
  EXPECT_EQ(c.llm.enabled, d.llm.enabled);
  EXPECT_EQ(c.llm.model, d.llm.model);
  EXPECT_EQ(c.llm.system_prompt, d.llm.system_prompt);
  EXPECT_DOUBLE_EQ(c.llm.temperature, d.llm.temperature);
  EXPECT_EQ(c.llm.max_tokens, d.llm.max_tokens);
  EXPECT_EQ(c.llm.stream, d.llm.stream);
  EXPECT_EQ(c.llm.connect_timeout_ms, d.llm.connect_timeout_ms);
  EXPECT_EQ(c.llm.first_token_timeout_ms, d.llm.first_token_timeout_ms);
  EXPECT_EQ(c.llm.idle_timeout_ms, d.llm.idle_timeout_ms);
  EXPECT_EQ(c.llm.total_timeout_ms, d.llm.total_timeout_ms);
  EXPECT_EQ(c.llm.max_retries, d.llm.max_retries);
  EXPECT_EQ(c.llm.breaker_failures, d.llm.breaker_failures);
  EXPECT_EQ(c.llm.breaker_cooldown_ms, d.llm.breaker_cooldown_ms);
  EXPECT_EQ(c.llm.max_concurrent, d.llm.max_concurrent);
  EXPECT_EQ(c.llm.context_tokens, d.llm.context_tokens);
  EXPECT_EQ(c.llm.max_sources, d.llm.max_sources);
  EXPECT_EQ(c.llm.summary_chars, d.llm.summary_chars);
  EXPECT_EQ(c.llm.unsupported, d.llm.unsupported);
  EXPECT_EQ(c.llm.max_tool_rounds, d.llm.max_tool_rounds);
  EXPECT_EQ(c.llm.turn_timeout_ms, d.llm.turn_timeout_ms);
  EXPECT_EQ(c.tools.enabled, d.tools.enabled);
  EXPECT_EQ(c.tools.search_knowledge, d.tools.search_knowledge);
  EXPECT_EQ(c.tools.escalate_to_human, d.tools.escalate_to_human);
  EXPECT_EQ(c.tools.confirm_timeout_ms, d.tools.confirm_timeout_ms);
  EXPECT_EQ(c.tools.audit_retention_days, d.tools.audit_retention_days);
  ASSERT_EQ(c.tools.http.size(), 1u);  // the documented example
  const config::HttpToolConfig example;
  EXPECT_EQ(c.tools.http[0].method, example.method);
  EXPECT_EQ(c.tools.http[0].timeout_ms, example.timeout_ms);
  EXPECT_EQ(c.tools.http[0].max_response_bytes, example.max_response_bytes);
  EXPECT_EQ(c.tools.http[0].confirm, example.confirm);
  EXPECT_EQ(c.escalation.enabled, d.escalation.enabled);
  EXPECT_EQ(c.escalation.low_confidence_turns, d.escalation.low_confidence_turns);
  EXPECT_DOUBLE_EQ(c.escalation.low_confidence, d.escalation.low_confidence);
  EXPECT_EQ(c.escalation.negative_feedback, d.escalation.negative_feedback);
  EXPECT_EQ(c.escalation.utc_offset_minutes, d.escalation.utc_offset_minutes);
  EXPECT_EQ(c.escalation.summary_turns, d.escalation.summary_turns);
  EXPECT_EQ(c.escalation.llm_summary, d.escalation.llm_summary);
  EXPECT_EQ(c.escalation.retention_days, d.escalation.retention_days);
  EXPECT_EQ(c.escalation.sla_renotify_minutes, d.escalation.sla_renotify_minutes);
  EXPECT_EQ(c.escalation.waiting_notice_minutes, d.escalation.waiting_notice_minutes);
  ASSERT_EQ(c.escalation.queues.size(), 1u);  // the documented example
  const config::EscalationQueueConfig queue;
  EXPECT_EQ(c.escalation.queues[0].policy, queue.policy);
  EXPECT_EQ(c.escalation.queues[0].priority, queue.priority);
  EXPECT_DOUBLE_EQ(c.escalation.queues[0].sla_minutes, queue.sla_minutes);
  EXPECT_EQ(c.escalation.queues[0].business_hours, queue.business_hours);
  EXPECT_EQ(c.webhook.default_reply_url, d.webhook.default_reply_url);
  EXPECT_EQ(c.webhook.max_skew_seconds, d.webhook.max_skew_seconds);
  EXPECT_EQ(c.webhook.delivery_timeout_ms, d.webhook.delivery_timeout_ms);
  EXPECT_EQ(c.webhook.delivery_max_attempts, d.webhook.delivery_max_attempts);
  EXPECT_EQ(c.console.user, d.console.user);
  EXPECT_EQ(c.slack.enabled, d.slack.enabled);
  EXPECT_EQ(c.slack.api_base_url, d.slack.api_base_url);
  EXPECT_EQ(c.slack.connections, d.slack.connections);
  EXPECT_EQ(c.slack.thread_followups, d.slack.thread_followups);
  EXPECT_EQ(c.slack.mention_required, d.slack.mention_required);
  EXPECT_EQ(c.slack.dm_policy, d.slack.dm_policy);
  EXPECT_EQ(c.slack.dm_allowlist, d.slack.dm_allowlist);
  EXPECT_EQ(c.slack.channel_allowlist, d.slack.channel_allowlist);
  EXPECT_EQ(c.slack.allowed_users, d.slack.allowed_users);
  EXPECT_EQ(c.slack.allow_bots, d.slack.allow_bots);
  EXPECT_EQ(c.slack.refusal, d.slack.refusal);
  EXPECT_EQ(c.slack.working_signal, d.slack.working_signal);
  EXPECT_EQ(c.slack.working_reaction, d.slack.working_reaction);
  EXPECT_EQ(c.slack.slash_command, d.slack.slash_command);
  EXPECT_EQ(c.slack.feedback_buttons, d.slack.feedback_buttons);
  EXPECT_EQ(c.slack.ping_interval_ms, d.slack.ping_interval_ms);
  EXPECT_EQ(c.slack.pong_timeout_ms, d.slack.pong_timeout_ms);
  EXPECT_EQ(c.slack.silence_timeout_ms, d.slack.silence_timeout_ms);
  EXPECT_EQ(c.matrix.enabled, d.matrix.enabled);
  EXPECT_EQ(c.matrix.device_id, d.matrix.device_id);
  EXPECT_EQ(c.matrix.device_name, d.matrix.device_name);
  EXPECT_EQ(c.matrix.sync_timeout_ms, d.matrix.sync_timeout_ms);
  EXPECT_EQ(c.matrix.timeline_limit, d.matrix.timeline_limit);
  EXPECT_EQ(c.matrix.allowed_inviters, d.matrix.allowed_inviters);
  EXPECT_EQ(c.matrix.auto_join, d.matrix.auto_join);
  EXPECT_EQ(c.matrix.room_allowlist, d.matrix.room_allowlist);
  EXPECT_EQ(c.matrix.allowed_users, d.matrix.allowed_users);
  EXPECT_EQ(c.matrix.mention_required, d.matrix.mention_required);
  EXPECT_EQ(c.matrix.thread_followups, d.matrix.thread_followups);
  EXPECT_EQ(c.matrix.threads, d.matrix.threads);
  EXPECT_EQ(c.matrix.msgtype, d.matrix.msgtype);
  EXPECT_EQ(c.matrix.encrypted_rooms, d.matrix.encrypted_rooms);
  EXPECT_EQ(c.matrix.typing, d.matrix.typing);
  EXPECT_EQ(c.matrix.typing_delay_ms, d.matrix.typing_delay_ms);
  EXPECT_EQ(c.matrix.stream, d.matrix.stream);
  EXPECT_EQ(c.matrix.stream_interval_ms, d.matrix.stream_interval_ms);
  EXPECT_EQ(c.matrix.stream_edits_per_minute, d.matrix.stream_edits_per_minute);
  // The examples.
  EXPECT_EQ(c.server.admin_listen, "127.0.0.1:9090");
  EXPECT_EQ(c.llm.api_key.reveal(), "k");
  EXPECT_EQ(c.slack.app_token.reveal(), "xapp-1-A1-1-x");
  EXPECT_EQ(c.slack.bot_token.reveal(), "xoxb-1-2-x");
  EXPECT_EQ(c.matrix.homeserver, "https://matrix.example.org");
  EXPECT_EQ(c.matrix.user_id, "@parley:example.org");
  EXPECT_EQ(c.knowledge.grants.size(), 1u);
  // The desk's default phrases, shown in full (unset in the struct: the desk's defaults apply).
  ASSERT_TRUE(c.escalation.request_phrases.has_value());
  EXPECT_EQ(c.escalation.request_phrases->size(), 6u);
  ASSERT_TRUE(c.escalation.cancel_phrases.has_value());
  EXPECT_EQ(c.escalation.cancel_phrases->size(), 5u);
}

TEST(ShippedConfigTest, HoldsNoLiteralSecrets) {
  const std::string text = ReadFile(ShippedPath());
  const std::regex secret_line(R"re(^#? ?([a-z_]*_)?(secret|api_key|token|password) = "(.*)")re");
  std::istringstream in(text);
  int secrets = 0;
  for (std::string line; std::getline(in, line);) {
    std::smatch m;
    if (std::regex_search(line, m, secret_line)) {
      ++secrets;
      EXPECT_EQ(std::string(m[3]).rfind("${", 0), 0u) << line;
    }
  }
  EXPECT_GE(secrets, 4);
}

}  // namespace
}  // namespace parley::config
