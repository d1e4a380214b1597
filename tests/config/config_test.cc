#include "config/config.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "tests/support/temp_dir.h"

namespace parley::config {
namespace {

EnvLookup MapEnv(std::map<std::string, std::string> vars) {
  return [vars = std::move(vars)](const std::string& name) -> std::optional<std::string> {
    auto it = vars.find(name);
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
}

// The smallest valid file (4 lines). Tests append sections after it, so their lines start at 5.
const std::string kBase =
    "[[knowledge.sources]]\n"
    "path = \"docs\"\n"
    "[webhook]\n"
    "enabled = false\n";

// Only a knowledge source (2 lines): for tests that write their own [webhook] section.
const std::string kSource = "[[knowledge.sources]]\npath = \"docs\"\n";

Result<Config> Parse(const std::string& text, std::map<std::string, std::string> env = {}) {
  return ParseConfig(text, "t.toml", MapEnv(std::move(env)));
}

// Parses text that must fail; returns the error message.
std::string ErrorOf(const std::string& text, std::map<std::string, std::string> env = {}) {
  Result<Config> r = Parse(text, std::move(env));
  EXPECT_FALSE(r.ok()) << "parsed unexpectedly:\n" << text;
  if (r.ok()) return "";
  EXPECT_TRUE(r.status().IsInvalidArgument()) << r.status().ToString();
  return r.status().message();
}

Config ParseOk(const std::string& text, std::map<std::string, std::string> env = {}) {
  Result<Config> r = Parse(text, std::move(env));
  EXPECT_TRUE(r.ok()) << r.status().ToString() << "\n--- text:\n" << text;
  return r.ok() ? r.value() : Config{};
}

std::string Abs(const std::string& relative) {
  return (std::filesystem::current_path() / relative).lexically_normal().string();
}

std::vector<std::string> Lines(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream in(s);
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

TEST(ConfigTest, DefaultsFromMinimalFile) {
  Result<Config> r = Parse(kBase);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const Config& c = r.value();
  const Config d;
  EXPECT_EQ(c.file, "t.toml");
  EXPECT_EQ(c.runtime.threads, 0);
  EXPECT_EQ(c.log.level, "info");
  EXPECT_EQ(c.log.format, "text");
  EXPECT_EQ(c.log.file, "");
  EXPECT_EQ(d.store.path, "var/parley");
  EXPECT_EQ(c.store.path, Abs("var/parley"));  // the default is resolved like a file value
  EXPECT_EQ(c.store.retention_days, 30);
  EXPECT_EQ(c.store.dedupe_hours, 48);
  EXPECT_EQ(c.store.sync_interval_us, 0);
  EXPECT_EQ(c.store.memory_cache_mb, 4);
  EXPECT_EQ(c.server.listen, "127.0.0.1:8080");
  EXPECT_EQ(c.server.admin_listen, "");
  EXPECT_EQ(c.server.max_body_bytes, 64 * 1024);
  EXPECT_EQ(c.server.request_timeout_ms, 10'000);
  EXPECT_EQ(c.server.port_file, "");
  ASSERT_EQ(c.knowledge.sources.size(), 1u);
  EXPECT_EQ(c.knowledge.sources[0].path, Abs("docs"));
  EXPECT_TRUE(c.knowledge.sources[0].tags.empty());
  EXPECT_EQ(c.knowledge.sources[0].url_base, "");
  EXPECT_TRUE(c.knowledge.grants.empty());
  EXPECT_EQ(c.knowledge.chunk_target_chars, 1200);
  EXPECT_EQ(c.knowledge.chunk_max_chars, 3000);
  EXPECT_EQ(c.knowledge.cache_mb, 8);
  EXPECT_DOUBLE_EQ(c.engine.min_confidence, 0.35);
  EXPECT_EQ(c.engine.max_passages, 3);
  EXPECT_EQ(c.engine.max_answer_sentences, 3);
  EXPECT_EQ(c.engine.memory_turns, 6);
  EXPECT_EQ(c.engine.memory_chars, 4000);
  EXPECT_DOUBLE_EQ(c.policy.user_rate_per_minute, 30);
  EXPECT_EQ(c.policy.user_burst, 10);
  EXPECT_DOUBLE_EQ(c.policy.conversation_rate_per_minute, 60);
  EXPECT_EQ(c.policy.conversation_burst, 20);
  EXPECT_FALSE(c.llm.enabled);
  EXPECT_TRUE(c.llm.api_key.empty());
  EXPECT_FALSE(c.webhook.enabled);
  EXPECT_TRUE(c.webhook.secret.empty());
  EXPECT_FALSE(c.webhook.insecure_no_auth);
  EXPECT_EQ(c.webhook.max_skew_seconds, 300);
  EXPECT_EQ(c.webhook.delivery_timeout_ms, 10'000);
  EXPECT_EQ(c.webhook.delivery_max_attempts, 12);
  EXPECT_EQ(c.console.user, "");
}

const char kFull[] = R"([runtime]
threads = 4
[log]
level = "debug"
format = "json"
file = "/var/log/parley.log"
[store]
path = "/srv/parley"
retention_days = 7
dedupe_hours = 12
sync_interval_us = 500
memory_cache_mb = 16
[server]
listen = "127.0.0.1:9000"
admin_listen = "[::1]:9001"
max_body_bytes = 1048576
request_timeout_ms = 2500
port_file = "/run/parley/ports.json"
[knowledge]
chunk_target_chars = 800
chunk_max_chars = 2000
cache_mb = 0
[[knowledge.sources]]
path = "/srv/docs/public"
[[knowledge.sources]]
path = "/srv/docs/internal"
tags = ["internal", "staff"]
url_base = "https://docs.example.org/internal/"
[[knowledge.grants]]
conversations = ["slack:C0123*", "webhook:*"]
tags = ["internal"]
[[knowledge.grants]]
conversations = ["matrix:!room"]
tags = ["staff", "internal"]
[engine]
min_confidence = 0.5
max_passages = 5
max_answer_sentences = 4
memory_turns = 10
memory_chars = 8000
[policy]
user_rate_per_minute = 12.5
user_burst = 3
conversation_rate_per_minute = 0
conversation_burst = 7
[llm]
enabled = false
base_url = "http://127.0.0.1:11434/v1"
api_key = "${LLM_KEY}"
model = "small-model"
[webhook]
enabled = true
secret = "${HOOK_SECRET}"
insecure_no_auth = false
default_reply_url = "https://hooks.example.org/reply"
max_skew_seconds = 60
delivery_timeout_ms = 3000
delivery_max_attempts = 5
[console]
user = "alice"
[slack]
enabled = false
[matrix]
enabled = false
[tools]
enabled = false
[escalation]
enabled = false
)";

TEST(ConfigTest, EverySectionParsed) {
  Config c = ParseOk(kFull, {{"LLM_KEY", "llm-key-value"}, {"HOOK_SECRET", "hook-secret-value"}});
  EXPECT_EQ(c.runtime.threads, 4);
  EXPECT_EQ(c.log.level, "debug");
  EXPECT_EQ(c.log.format, "json");
  EXPECT_EQ(c.log.file, "/var/log/parley.log");
  EXPECT_EQ(c.store.path, "/srv/parley");
  EXPECT_EQ(c.store.retention_days, 7);
  EXPECT_EQ(c.store.dedupe_hours, 12);
  EXPECT_EQ(c.store.sync_interval_us, 500);
  EXPECT_EQ(c.store.memory_cache_mb, 16);
  EXPECT_EQ(c.server.listen, "127.0.0.1:9000");
  EXPECT_EQ(c.server.admin_listen, "[::1]:9001");
  EXPECT_EQ(c.server.max_body_bytes, 1048576);
  EXPECT_EQ(c.server.request_timeout_ms, 2500);
  EXPECT_EQ(c.server.port_file, "/run/parley/ports.json");
  EXPECT_EQ(c.knowledge.chunk_target_chars, 800);
  EXPECT_EQ(c.knowledge.chunk_max_chars, 2000);
  EXPECT_EQ(c.knowledge.cache_mb, 0);
  ASSERT_EQ(c.knowledge.sources.size(), 2u);
  EXPECT_EQ(c.knowledge.sources[0].path, "/srv/docs/public");
  EXPECT_TRUE(c.knowledge.sources[0].tags.empty());
  EXPECT_EQ(c.knowledge.sources[0].url_base, "");
  EXPECT_EQ(c.knowledge.sources[1].path, "/srv/docs/internal");
  EXPECT_EQ(c.knowledge.sources[1].tags, (std::vector<std::string>{"internal", "staff"}));
  EXPECT_EQ(c.knowledge.sources[1].url_base, "https://docs.example.org/internal/");
  ASSERT_EQ(c.knowledge.grants.size(), 2u);
  EXPECT_EQ(c.knowledge.grants[0].conversations,
            (std::vector<std::string>{"slack:C0123*", "webhook:*"}));
  EXPECT_EQ(c.knowledge.grants[0].tags, (std::vector<std::string>{"internal"}));
  EXPECT_EQ(c.knowledge.grants[1].conversations, (std::vector<std::string>{"matrix:!room"}));
  EXPECT_EQ(c.knowledge.grants[1].tags, (std::vector<std::string>{"staff", "internal"}));
  EXPECT_DOUBLE_EQ(c.engine.min_confidence, 0.5);
  EXPECT_EQ(c.engine.max_passages, 5);
  EXPECT_EQ(c.engine.max_answer_sentences, 4);
  EXPECT_EQ(c.engine.memory_turns, 10);
  EXPECT_EQ(c.engine.memory_chars, 8000);
  EXPECT_DOUBLE_EQ(c.policy.user_rate_per_minute, 12.5);
  EXPECT_EQ(c.policy.user_burst, 3);
  EXPECT_DOUBLE_EQ(c.policy.conversation_rate_per_minute, 0);
  EXPECT_EQ(c.policy.conversation_burst, 7);
  EXPECT_FALSE(c.llm.enabled);
  EXPECT_EQ(c.llm.base_url, "http://127.0.0.1:11434/v1");
  EXPECT_EQ(c.llm.api_key.reveal(), "llm-key-value");
  EXPECT_EQ(c.llm.model, "small-model");
  EXPECT_TRUE(c.webhook.enabled);
  EXPECT_EQ(c.webhook.secret.reveal(), "hook-secret-value");
  EXPECT_FALSE(c.webhook.insecure_no_auth);
  EXPECT_EQ(c.webhook.default_reply_url, "https://hooks.example.org/reply");
  EXPECT_EQ(c.webhook.max_skew_seconds, 60);
  EXPECT_EQ(c.webhook.delivery_timeout_ms, 3000);
  EXPECT_EQ(c.webhook.delivery_max_attempts, 5);
  EXPECT_EQ(c.console.user, "alice");
}

TEST(ConfigTest, IntegerAcceptedForFloatKeys) {
  Config c = ParseOk(kBase + "[engine]\nmin_confidence = 1\n[policy]\nuser_rate_per_minute = 5\n");
  EXPECT_DOUBLE_EQ(c.engine.min_confidence, 1.0);
  EXPECT_DOUBLE_EQ(c.policy.user_rate_per_minute, 5.0);
}

TEST(ConfigTest, DottedKeysAndInlineTables) {
  Config c = ParseOk("server.listen = \"127.0.0.1:1\"\nengine = { max_passages = 7 }\n" + kBase);
  EXPECT_EQ(c.server.listen, "127.0.0.1:1");
  EXPECT_EQ(c.engine.max_passages, 7);
}

TEST(ConfigTest, RelativePathsResolvedAgainstWorkingDirectory) {
  Config c = ParseOk(
      "[[knowledge.sources]]\npath = \"./kb/../docs\"\n[[knowledge.sources]]\npath = \"/abs/kb\"\n"
      "[webhook]\nenabled = false\n"
      "[store]\npath = \"data/store\"\n[log]\nfile = \"logs/p.log\"\n"
      "[server]\nport_file = \"run/ports.json\"\n");
  EXPECT_EQ(c.knowledge.sources[0].path, Abs("docs"));
  EXPECT_EQ(c.knowledge.sources[1].path, "/abs/kb");
  EXPECT_EQ(c.store.path, Abs("data/store"));
  EXPECT_EQ(c.log.file, Abs("logs/p.log"));
  EXPECT_EQ(c.server.port_file, Abs("run/ports.json"));
  EXPECT_TRUE(std::filesystem::path(c.store.path).is_absolute());
}

// ---- ${ENV} ----

TEST(ConfigTest, EnvSubstitutionInAnyString) {
  Config c = ParseOk(kBase +
                         "[server]\nlisten = \"${HOST}:${PORT:-7000}\"\n"
                         "[log]\nlevel = \"${LEVEL:-warn}\"\n"
                         "[console]\nuser = \"$${USER}-$$\"\n"
                         "[[knowledge.sources]]\npath = \"/kb\"\ntags = [\"${TAG}\"]\n",
                     {{"HOST", "127.0.0.2"}, {"LEVEL", ""}, {"TAG", "ops"}});
  EXPECT_EQ(c.server.listen, "127.0.0.2:7000");
  EXPECT_EQ(c.log.level, "warn");  // set but empty: the default applies
  EXPECT_EQ(c.console.user, "${USER}-$");
  ASSERT_EQ(c.knowledge.sources.size(), 2u);
  EXPECT_EQ(c.knowledge.sources[1].tags, std::vector<std::string>{"ops"});
}

TEST(ConfigTest, EnvSubstitutionFromProcessEnvironment) {
  ASSERT_EQ(setenv("PARLEY_CONFIG_TEST_PORT", "8123", 1), 0);
  Result<Config> r = ParseConfig(
      kBase + "[server]\nlisten = \"127.0.0.1:${PARLEY_CONFIG_TEST_PORT}\"\n", "t.toml");
  unsetenv("PARLEY_CONFIG_TEST_PORT");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->server.listen, "127.0.0.1:8123");

  r = ParseConfig(kBase + "[server]\nlisten = \"127.0.0.1:${PARLEY_CONFIG_TEST_PORT}\"\n",
                  "t.toml");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("PARLEY_CONFIG_TEST_PORT is not set"), std::string::npos);
}

TEST(ConfigTest, MissingEnvVariableNamesKeyLineAndVariable) {
  std::string m = ErrorOf(kBase + "[console]\nuser = \"${NOBODY_SET_THIS}\"\n");
  EXPECT_EQ(m.rfind("t.toml:6: console.user: environment variable NOBODY_SET_THIS is not set", 0),
            0u)
      << m;
}

TEST(ConfigTest, MalformedDollarIsAnError) {
  std::string m = ErrorOf(kBase + "[console]\nuser = \"costs $5\"\n");
  EXPECT_EQ(m, "t.toml:6: console.user: a '$' must start ${NAME}; write $$ for a literal '$'");
  m = ErrorOf(kBase + "[console]\nuser = \"${OPEN\"\n");
  EXPECT_EQ(m.rfind("t.toml:6: console.user: unterminated", 0), 0u) << m;
}

TEST(ConfigTest, EnvValueShownWithItsReferenceInErrors) {
  std::string m = ErrorOf(kBase + "[server]\nlisten = \"${LISTEN}\"\n", {{"LISTEN", "8080"}});
  EXPECT_EQ(m,
            "t.toml:6: server.listen: expected \"HOST:PORT\", got \"8080\" (from \"${LISTEN}\")");
}

// ---- secrets ----

TEST(ConfigTest, SecretsFromEnvironment) {
  Config c = ParseOk(kBase + "[llm]\napi_key = \"${K}\"\n", {{"K", "v1"}});
  EXPECT_EQ(c.llm.api_key.reveal(), "v1");
  c = ParseOk(kBase + "[llm]\napi_key = \"${K:-}\"\n");
  EXPECT_TRUE(c.llm.api_key.empty());
  c = ParseOk(kBase + "[llm]\napi_key = \"\"\n");
  EXPECT_TRUE(c.llm.api_key.empty());
}

TEST(ConfigTest, LiteralSecretRejected) {
  EXPECT_EQ(ErrorOf(kBase + "secret = \"hunter2-literal\"\n"),
            "t.toml:5: webhook.secret: secrets must be given as ${ENV_VAR}, not literally");
  EXPECT_EQ(ErrorOf(kBase + "[llm]\napi_key = \"sk-literal\"\n"),
            "t.toml:6: llm.api_key: secrets must be given as ${ENV_VAR}, not literally");
  for (const char* value : {"x${K}", "${K}x", "${K}${K}", "$${K}"}) {
    std::string m = ErrorOf(kBase + "[llm]\napi_key = \"" + value + "\"\n", {{"K", "v"}});
    EXPECT_NE(m.find("llm.api_key: secrets must be given as ${ENV_VAR}"), std::string::npos) << m;
  }
  std::string m = ErrorOf(kBase + "[llm]\napi_key = \"${K:-hunter2}\"\n");
  EXPECT_NE(m.find("t.toml:6: llm.api_key: secrets must be given as ${ENV_VAR}, not literally"),
            std::string::npos)
      << m;
  EXPECT_EQ(m.find("hunter2"), std::string::npos) << m;
}

TEST(ConfigTest, MissingSecretVariableIsAnError) {
  std::string m = ErrorOf(kSource + "[webhook]\nenabled = true\nsecret = \"${HOOK_SECRET}\"\n");
  EXPECT_EQ(m.rfind("t.toml:5: webhook.secret: environment variable HOOK_SECRET is not set", 0), 0u)
      << m;
  EXPECT_EQ(Lines(m).size(), 1u) << m;  // no second "secret required" error
}

TEST(ConfigTest, ErrorMessagesNeverContainSecretValues) {
  const std::string kValue = "TopSecretValue-9f3c";
  const std::map<std::string, std::string> env = {{"S", kValue}};
  const std::vector<std::string> texts = {
      // Secrets set from the environment, and many other errors around them.
      std::string("[server]\nlisten = \"0.0.0.0:80\"\nbogus = 1\n[webhook]\nsecret = \"${S}\"\n") +
          "insecure_no_auth = true\nmax_skew_seconds = -5\n[llm]\nenabled = true\n" +
          "api_key = \"${S}\"\n[slack]\ntoken = \"${S}\"\n",
      // Secrets combined or with text around them.
      kSource + "[webhook]\nsecret = \"${S}${S}\"\n[llm]\napi_key = \"Bearer ${S}\"\n",
      // Wrong types near secrets.
      kSource + "[webhook]\nsecret = [\"${S}\"]\n[llm]\napi_key = { v = \"${S}\" }\n",
      // A literal secret in the file.
      kSource + "[webhook]\nsecret = \"" + kValue + "\"\n",
      kSource + "[webhook]\nsecret = \"${NOPE:-" + kValue + "}\"\n",
      // Slack tokens of the wrong kind, literal or with a literal default.
      kBase + "[slack]\nenabled = true\napp_token = \"${S}\"\nbot_token = \"${S}\"\n",
      kBase + "[slack]\napp_token = \"" + kValue + "\"\nbot_token = \"${X:-" + kValue + "}\"\n",
      kBase + "[slack]\napi_base_url = \"https://u:" + kValue + "@slack.example/api/\"\n",
  };
  for (const std::string& text : texts) {
    std::string m = ErrorOf(text, env);
    EXPECT_FALSE(m.empty());
    EXPECT_EQ(m.find("TOML syntax error"), std::string::npos) << m;  // got past the parser
    EXPECT_EQ(m.find(kValue), std::string::npos) << m;
    EXPECT_EQ(m.find("TopSecret"), std::string::npos) << m;
  }
}

// ---- unknown keys, types, ranges ----

TEST(ConfigTest, UnknownKeyWithLine) {
  EXPECT_EQ(ErrorOf(kBase + "[store]\npath = \"x\"\npathh = \"y\"\n"),
            "t.toml:7: store.pathh: unknown key");
  EXPECT_EQ(ErrorOf(kBase + "[server]\n\"weird key\" = 1\n"),
            "t.toml:6: server.\"weird key\": unknown key");
  EXPECT_EQ(ErrorOf("threads = 4\n" + kBase), "t.toml:1: threads: unknown key");
  EXPECT_EQ(
      ErrorOf("[[knowledge.sources]]\npath = \"d\"\npth = \"x\"\n[webhook]\nenabled = false\n"),
      "t.toml:3: knowledge.sources[0].pth: unknown key");
  EXPECT_EQ(ErrorOf(kBase + "[llm]\nenabled = false\ntemprature = 0.2\n"),
            "t.toml:7: llm.temprature: unknown key");
}

TEST(ConfigTest, UnknownSectionWithLine) {
  EXPECT_EQ(ErrorOf(kBase + "\n[stor]\npath = \"x\"\n"), "t.toml:6: stor: unknown section");
  EXPECT_EQ(ErrorOf(kBase + "[server.tls]\ncert = \"x\"\n"), "t.toml:5: server.tls: unknown key");
}

TEST(ConfigTest, WrongTypes) {
  EXPECT_EQ(ErrorOf(kBase + "[engine]\nmax_passages = \"3\"\n"),
            "t.toml:6: engine.max_passages: expected an integer, got a string");
  EXPECT_EQ(ErrorOf(kBase + "[runtime]\nthreads = 1.5\n"),
            "t.toml:6: runtime.threads: expected an integer, got a float");
  EXPECT_EQ(ErrorOf(kBase + "[engine]\nmin_confidence = \"high\"\n"),
            "t.toml:6: engine.min_confidence: expected a number, got a string");
  EXPECT_EQ(ErrorOf(kBase + "[server]\nlisten = 8080\n"),
            "t.toml:6: server.listen: expected a string, got an integer");
  EXPECT_EQ(ErrorOf(kBase + "[log]\nfile = 1979-05-27\n"),
            "t.toml:6: log.file: expected a string, got a date");
  EXPECT_EQ(ErrorOf("[[knowledge.sources]]\npath = \"d\"\n[webhook]\nenabled = \"no\"\n"),
            "t.toml:4: webhook.enabled: expected a boolean (true or false), got a string");
  EXPECT_EQ(ErrorOf("server = 1\n" + kBase), "t.toml:1: server: expected a table, got an integer");
  EXPECT_EQ(
      ErrorOf("[[knowledge.sources]]\npath = \"d\"\ntags = \"a\"\n[webhook]\nenabled = false\n"),
      "t.toml:3: knowledge.sources[0].tags: expected an array of strings, got a string");
  EXPECT_EQ(
      ErrorOf(
          "[[knowledge.sources]]\npath = \"d\"\ntags = [\"a\", 1]\n[webhook]\nenabled = false\n"),
      "t.toml:3: knowledge.sources[0].tags[1]: expected a string, got an integer");
}

TEST(ConfigTest, KnowledgeSourcesMustBeAnArrayOfTables) {
  EXPECT_EQ(ErrorOf("[knowledge.sources]\npath = \"d\"\n[webhook]\nenabled = false\n"),
            "t.toml:1: knowledge.sources: expected an array of tables ([[knowledge.sources]]), "
            "got a table");
  EXPECT_EQ(ErrorOf("[knowledge]\nsources = [1]\n[webhook]\nenabled = false\n"),
            "t.toml:2: knowledge.sources[0]: expected a table, got an integer");
}

TEST(ConfigTest, RangeChecks) {
  struct Case {
    std::string section_and_key;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {"[runtime]\nthreads = 257", "runtime.threads: must be between 0 and 256, got 257"},
      {"[runtime]\nthreads = -1", "runtime.threads: must be between 0 and 256, got -1"},
      {"[log]\nlevel = \"verbose\"",
       "log.level: expected one of trace, debug, info, warn, error; got \"verbose\""},
      {"[log]\nformat = \"xml\"", "log.format: expected one of text, json; got \"xml\""},
      {"[store]\npath = \"\"", "store.path: must not be empty"},
      {"[store]\nretention_days = -1", "store.retention_days: must be between 0 and 36500, got -1"},
      {"[store]\ndedupe_hours = 0", "store.dedupe_hours: must be between 1 and 87600, got 0"},
      {"[store]\nsync_interval_us = -1",
       "store.sync_interval_us: must be between 0 and 100000, got -1"},
      {"[store]\nmemory_cache_mb = 5000",
       "store.memory_cache_mb: must be between 0 and 4096, got 5000"},
      {"[server]\nmax_body_bytes = 0",
       "server.max_body_bytes: must be between 1 and 1073741824, got 0"},
      {"[server]\nrequest_timeout_ms = 0",
       "server.request_timeout_ms: must be between 1 and 3600000, got 0"},
      {"[server]\nlisten = \"127.0.0.1:65536\"",
       "server.listen: invalid port \"65536\" in \"127.0.0.1:65536\" (expected 0..65535)"},
      {"[knowledge]\nchunk_target_chars = 0",
       "knowledge.chunk_target_chars: must be between 1 and 1000000, got 0"},
      {"[knowledge]\ncache_mb = -1", "knowledge.cache_mb: must be between 0 and 4096, got -1"},
      {"[engine]\nmin_confidence = 1.5", "engine.min_confidence: must be between 0 and 1, got 1.5"},
      {"[engine]\nmin_confidence = -0.1",
       "engine.min_confidence: must be between 0 and 1, got -0.1"},
      {"[engine]\nmin_confidence = nan", "engine.min_confidence: must be between 0 and 1, got nan"},
      {"[engine]\nmax_passages = 0", "engine.max_passages: must be between 1 and 100, got 0"},
      {"[engine]\nmemory_turns = -1", "engine.memory_turns: must be between 0 and 1000, got -1"},
      {"[policy]\nuser_rate_per_minute = -1",
       "policy.user_rate_per_minute: must be between 0 and 1000000, got -1"},
      {"[policy]\nconversation_rate_per_minute = inf",
       "policy.conversation_rate_per_minute: must be between 0 and 1000000, got inf"},
      {"[policy]\nuser_burst = 0", "policy.user_burst: must be between 1 and 1000000, got 0"},
      {"[webhook]\nmax_skew_seconds = 0",
       "webhook.max_skew_seconds: must be between 1 and 86400, got 0"},
      {"[webhook]\ndelivery_max_attempts = 0",
       "webhook.delivery_max_attempts: must be between 1 and 1000, got 0"},
      {"[webhook]\ndelivery_timeout_ms = 9999999",
       "webhook.delivery_timeout_ms: must be between 1 and 600000, got 9999999"},
      {"[llm]\nbase_url = \"ftp://x\"",
       "llm.base_url: expected an http:// or https:// URL, got \"ftp://x\""},
      {"[webhook]\ndefault_reply_url = \"example.org/x\"",
       "webhook.default_reply_url: expected an http:// or https:// URL, got \"example.org/x\""},
  };
  for (const Case& c : cases) {
    // The webhook section of kBase is replaced so that [webhook] cases do not repeat it.
    const std::string text =
        "[[knowledge.sources]]\npath = \"docs\"\n" + c.section_and_key + "\n" +
        (c.section_and_key.rfind("[webhook]", 0) == 0 ? "enabled = false\n"
                                                      : "[webhook]\nenabled = false\n");
    EXPECT_EQ(ErrorOf(text), "t.toml:4: " + c.expected) << text;
  }
}

TEST(ConfigTest, RangeBoundsAccepted) {
  Config c = ParseOk(kBase +
                     "[runtime]\nthreads = 256\n[engine]\nmin_confidence = 0\nmemory_turns = 0\n"
                     "[store]\nretention_days = 0\n[policy]\nuser_rate_per_minute = 0\n"
                     "[server]\nlisten = \"127.0.0.1:65535\"\n");
  EXPECT_EQ(c.runtime.threads, 256);
  EXPECT_EQ(c.store.retention_days, 0);
  EXPECT_EQ(c.server.listen, "127.0.0.1:65535");
}

TEST(ConfigTest, ChunkMaxBelowTargetRefused) {
  EXPECT_EQ(ErrorOf(kBase + "[knowledge]\nchunk_target_chars = 2000\nchunk_max_chars = 1000\n"),
            "t.toml:7: knowledge.chunk_max_chars: must be at least knowledge.chunk_target_chars "
            "(2000), got 1000");
  EXPECT_EQ(ErrorOf(kBase + "[knowledge]\nchunk_target_chars = 5000\n"),
            "t.toml:6: knowledge.chunk_target_chars: must be at most knowledge.chunk_max_chars "
            "(3000), got 5000");
}

// ---- listen addresses and the webhook's authentication ----

TEST(ConfigTest, ListenParsing) {
  EXPECT_EQ(ErrorOf(kBase + "[server]\nlisten = \"8080\"\n"),
            "t.toml:6: server.listen: expected \"HOST:PORT\", got \"8080\"");
  EXPECT_EQ(ErrorOf(kBase + "[server]\nlisten = \"\"\n"),
            "t.toml:6: server.listen: expected \"HOST:PORT\", got \"\"");
  EXPECT_EQ(ErrorOf(kBase + "[server]\nadmin_listen = \"::1:9\"\n"),
            "t.toml:6: server.admin_listen: an IPv6 address must be in brackets, e.g. "
            "\"[::1]:8080\", got \"::1:9\"");
  for (const char* ok :
       {"0.0.0.0:0", "[::]:8080", "[::1]:1", "bot.example.org:443", "localhost:0"}) {
    Config c = ParseOk(kBase + "[server]\nlisten = \"" + ok + "\"\nadmin_listen = \"\"\n");
    EXPECT_EQ(c.server.listen, ok);
  }
}

TEST(ConfigTest, AdminListenMustDifferFromListen) {
  EXPECT_EQ(
      ErrorOf(kBase + "[server]\nlisten = \"127.0.0.1:80\"\nadmin_listen = \"127.0.0.1:80\"\n"),
      "t.toml:7: server.admin_listen: must differ from server.listen (leave it empty to "
      "serve admin endpoints there)");
  // Port 0 on both means two different free ports.
  ParseOk(kBase + "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n");
}

TEST(ConfigTest, InsecureNoAuthOnlyOnLoopback) {
  for (const char* listen : {"127.0.0.1:8080", "127.9.9.9:0", "[::1]:8080", "localhost:8080"}) {
    Config c = ParseOk(kSource + "[server]\nlisten = \"" + listen +
                       "\"\n[webhook]\ninsecure_no_auth = true\n");
    EXPECT_TRUE(c.webhook.enabled);
    EXPECT_TRUE(c.webhook.insecure_no_auth);
    EXPECT_TRUE(c.webhook.secret.empty());
  }
  for (const char* listen : {"0.0.0.0:8080", "[::]:8080", "10.1.2.3:80", "bot.example.org:80"}) {
    std::string m = ErrorOf(kSource + "[server]\nlisten = \"" + listen +
                            "\"\n[webhook]\ninsecure_no_auth = true\n");
    EXPECT_EQ(m, std::string("t.toml:6: webhook.insecure_no_auth: allowed only when server.listen "
                             "is a loopback address (127.0.0.0/8, [::1], localhost), got \"") +
                     listen + "\"");
  }
  // Also refused when a secret is configured: the flag itself is the hazard.
  std::string m = ErrorOf(kSource +
                              "[server]\nlisten = \"0.0.0.0:8080\"\n[webhook]\nsecret = \"${S}\"\n"
                              "insecure_no_auth = true\n",
                          {{"S", "k"}});
  EXPECT_NE(m.find("t.toml:7: webhook.insecure_no_auth: allowed only when"), std::string::npos)
      << m;
}

TEST(ConfigTest, InsecureNoAuthWithSecretKeepsSecret) {
  Config c =
      ParseOk(kSource + "[webhook]\nsecret = \"${S:-}\"\ninsecure_no_auth = true\n", {{"S", "k"}});
  EXPECT_EQ(c.webhook.secret.reveal(), "k");
  EXPECT_TRUE(c.webhook.insecure_no_auth);
}

TEST(ConfigTest, EnabledWebhookNeedsSecretOrInsecureFlag) {
  const std::string kRequired =
      "webhook.secret: required when the webhook is enabled: set it from ${ENV_VAR} (the "
      "variable is unset or empty), or set webhook.insecure_no_auth = true on a loopback "
      "server.listen, or webhook.enabled = false";
  // No [webhook] section at all: enabled by default, no line applies.
  EXPECT_EQ(ErrorOf(kSource), "t.toml: " + kRequired);
  EXPECT_EQ(ErrorOf(kSource + "[webhook]\nsecret = \"${S:-}\"\n"), "t.toml:4: " + kRequired);
  EXPECT_EQ(ErrorOf(kSource + "[webhook]\nenabled = true\n"), "t.toml:4: " + kRequired);
  Config c = ParseOk(kSource + "[webhook]\nsecret = \"${S}\"\n", {{"S", "k"}});
  EXPECT_EQ(c.webhook.secret.reveal(), "k");
  ParseOk(kSource + "[webhook]\nenabled = false\n");
}

// ---- syntax errors and several errors at once ----

TEST(ConfigTest, TomlSyntaxErrorReportsLineAndColumn) {
  std::string m = ErrorOf(kBase + "[server]\nlisten = = \"x\"\n");
  EXPECT_EQ(m.rfind("t.toml:6:", 0), 0u) << m;
  EXPECT_NE(m.find("TOML syntax error: "), std::string::npos) << m;
  EXPECT_EQ(Lines(m).size(), 1u) << m;

  m = ErrorOf(kBase + "[server]\nlisten = \"127.0.0.1:1\"\nlisten = \"127.0.0.1:2\"\n");
  EXPECT_EQ(m.rfind("t.toml:7:", 0), 0u) << m;

  m = ErrorOf("[[knowledge.sources]]\npath = \"unterminated\n");
  EXPECT_EQ(m.rfind("t.toml:2:", 0), 0u) << m;
}

TEST(ConfigTest, SeveralErrorsReportedTogetherInFileOrder) {
  std::string m = ErrorOf(
      "[runtime]\n"             // 1
      "threads = 999\n"         // 2
      "[engine]\n"              // 3
      "max_passages = \"x\"\n"  // 4
      "[store]\n"               // 5
      "pathh = \"y\"\n"         // 6
      "[server]\n"              // 7
      "listen = \"nowhere\"\n"  // 8
      "[slack]\n"               // 9
      "enabled = true\n"        // 10
      "[webhook]\n"             // 11
      "enabled = false\n");     // 12
  EXPECT_EQ(m,
            "t.toml:2: runtime.threads: must be between 0 and 256, got 999\n"
            "t.toml:4: engine.max_passages: expected an integer, got a string\n"
            "t.toml:6: store.pathh: unknown key\n"
            "t.toml:8: server.listen: expected \"HOST:PORT\", got \"nowhere\"\n"
            "t.toml:10: slack.app_token: required when slack.enabled = true: an app-level token "
            "(xapp-…) from the environment, e.g. \"${SLACK_APP_TOKEN}\"\n"
            "t.toml:10: slack.bot_token: required when slack.enabled = true: a bot token "
            "(xoxb-…) from the environment, e.g. \"${SLACK_BOT_TOKEN}\"\n"
            "t.toml: knowledge.sources: at least one source is required");
}

// ---- [escalation] ----

TEST(ConfigTest, EscalationQueuesParsed) {
  Config c = ParseOk(kBase + R"([escalation]
request_phrases = ["get me a person", "human"]
low_confidence_turns = 2
low_confidence = 0.5
utc_offset_minutes = 60
[[escalation.queues]]
name = "billing"
agents = "slack:C0AGENTS"
patterns = ["refund(s)?", "invoice"]
topics = ["billing"]
priority = 2
sla_minutes = 15
business_hours = "mon-fri 09:00-17:00"
oncall = "@oncall"
[[escalation.queues]]
name = "general"
agents = "webhook:agents"
policy = false
)");
  const EscalationConfig& e = c.escalation;
  EXPECT_TRUE(e.enabled);
  ASSERT_TRUE(e.request_phrases.has_value());
  EXPECT_EQ(*e.request_phrases, (std::vector<std::string>{"get me a person", "human"}));
  EXPECT_FALSE(e.cancel_phrases.has_value());
  EXPECT_EQ(e.low_confidence_turns, 2);
  EXPECT_DOUBLE_EQ(e.low_confidence, 0.5);
  EXPECT_EQ(e.utc_offset_minutes, 60);
  ASSERT_EQ(e.queues.size(), 2u);
  EXPECT_EQ(e.queues[0].name, "billing");
  EXPECT_EQ(e.queues[0].agents, "slack:C0AGENTS");
  EXPECT_EQ(e.queues[0].patterns, (std::vector<std::string>{"refund(s)?", "invoice"}));
  EXPECT_EQ(e.queues[0].topics, (std::vector<std::string>{"billing"}));
  EXPECT_EQ(e.queues[0].priority, 2);
  EXPECT_DOUBLE_EQ(e.queues[0].sla_minutes, 15);
  EXPECT_EQ(e.queues[0].business_hours, "mon-fri 09:00-17:00");
  EXPECT_EQ(e.queues[0].oncall, "@oncall");
  EXPECT_EQ(e.queues[1].agents, "webhook:agents");
  EXPECT_DOUBLE_EQ(e.queues[1].sla_minutes, 30);
}

TEST(ConfigTest, EscalationQueueErrors) {
  EXPECT_EQ(ErrorOf(kBase + "[[escalation.queues]]\nname = \"a\"\n"),
            "t.toml:5: escalation.queues[0].agents: required");
  EXPECT_EQ(ErrorOf(kBase + "[[escalation.queues]]\nname = \"a\"\nagents = \"irc:#help\"\n"),
            "t.toml:7: escalation.queues[0].agents: must be \"<platform>:<channel>\" with "
            "platform webhook, console, slack or matrix, got \"irc:#help\"");
  EXPECT_EQ(ErrorOf(kBase + "[[escalation.queues]]\nname = \"a\"\nagents = \"webhook:x\"\n"
                    "[[escalation.queues]]\nname = \"a\"\nagents = \"webhook:y\"\n"),
            "t.toml:9: escalation.queues[1].name: duplicate queue name \"a\"");
  EXPECT_EQ(ErrorOf(kBase + "[[escalation.queues]]\nname = \"a\"\nagents = \"webhook:x\"\n"
                    "priority = 9\n"),
            "t.toml:8: escalation.queues[0].priority: must be between 1 and 5, got 9");
  EXPECT_EQ(ErrorOf(kBase + "[escalation]\nrequest_phrases = [\"  \"]\n"),
            "t.toml:6: escalation.request_phrases[0]: must not be empty");
}

// ---- sections off by default ----

TEST(ConfigTest, AdapterSectionsOffByDefault) {
  Config c = ParseOk(kBase + "[slack]\nenabled = false\n[matrix]\nenabled = false\n[tools]\n");
  EXPECT_FALSE(c.matrix.enabled);
  EXPECT_EQ(ErrorOf(kBase + "[tools]\nenabled = \"no\"\n"),
            "t.toml:6: tools.enabled: expected a boolean (true or false), got a string");
  EXPECT_EQ(ErrorOf(kBase + "[tools]\nhttp = 3\n"),
            "t.toml:6: tools.http: expected an array of tables ([[tools.http]]), got an integer");
  EXPECT_EQ(ErrorOf("slack = 1\n" + kBase), "t.toml:1: slack: expected a table, got an integer");
  EXPECT_EQ(ErrorOf("matrix = 1\n" + kBase), "t.toml:1: matrix: expected a table, got an integer");
}

// ---- [matrix] ----

TEST(ConfigTest, MatrixParsed) {
  Config c = ParseOk(kBase + R"([matrix]
enabled = true
homeserver = "https://matrix.example.org/"
user_id = "@parley:example.org"
password = "${MX_PASS}"
device_id = "PARLEYBOT"
sync_timeout_ms = 20000
timeline_limit = 100
allowed_inviters = ["@*:example.org", "@ops:other.org"]
room_allowlist = ["!abc:example.org"]
allowed_users = ["@alice:example.org"]
mention_required = false
threads = false
msgtype = "m.text"
encrypted_rooms = "decline"
stream_interval_ms = 5000
stream_edits_per_minute = 12
)",
                     {{"MX_PASS", "hunter2-secret"}});
  const config::MatrixConfig& m = c.matrix;
  EXPECT_TRUE(m.enabled);
  EXPECT_EQ(m.homeserver, "https://matrix.example.org");  // trailing "/" dropped
  EXPECT_EQ(m.user_id, "@parley:example.org");
  EXPECT_EQ(m.password.reveal(), "hunter2-secret");
  EXPECT_TRUE(m.access_token.empty());
  EXPECT_EQ(m.device_id, "PARLEYBOT");
  EXPECT_EQ(m.sync_timeout_ms, 20000);
  EXPECT_EQ(m.timeline_limit, 100);
  EXPECT_EQ(m.allowed_inviters,
            (std::vector<std::string>{"@*:example.org", "@ops:other.org"}));
  EXPECT_EQ(m.room_allowlist, (std::vector<std::string>{"!abc:example.org"}));
  EXPECT_EQ(m.allowed_users, (std::vector<std::string>{"@alice:example.org"}));
  EXPECT_FALSE(m.mention_required);
  EXPECT_FALSE(m.threads);
  EXPECT_EQ(m.msgtype, "m.text");
  EXPECT_EQ(m.encrypted_rooms, config::MatrixEncryptedRooms::kDecline);
  EXPECT_EQ(m.stream_interval_ms, 5000);
  EXPECT_EQ(m.stream_edits_per_minute, 12);
}

TEST(ConfigTest, MatrixDefaults) {
  Config c = ParseOk(kBase);
  const config::MatrixConfig& m = c.matrix;
  EXPECT_FALSE(m.enabled);
  EXPECT_EQ(m.msgtype, "m.notice");
  EXPECT_EQ(m.encrypted_rooms, config::MatrixEncryptedRooms::kNotice);
  EXPECT_TRUE(m.threads);
  EXPECT_TRUE(m.mention_required);
  EXPECT_GT(m.timeline_limit, 10);  // above Synapse's default, so bursts are not cut
}

TEST(ConfigTest, MatrixErrors) {
  EXPECT_EQ(ErrorOf(kBase + "[matrix]\nenabled = true\nhomeserver = \"https://m.org\"\n"
                            "user_id = \"@bot:m.org\"\n"),
            "t.toml:6: matrix.access_token: required when matrix.enabled = true: "
            "matrix.access_token (e.g. \"${MATRIX_ACCESS_TOKEN}\") or matrix.password (e.g. "
            "\"${MATRIX_PASSWORD}\"), from the environment");
  EXPECT_EQ(ErrorOf(kBase + "[matrix]\nenabled = true\nhomeserver = \"https://m.org\"\n"
                            "user_id = \"@bot:m.org\"\naccess_token = \"${A}\"\n"
                            "password = \"${B}\"\n",
                    {{"A", "tok-value"}, {"B", "pw-value"}}),
            "t.toml:10: matrix.password: give matrix.access_token or matrix.password, not both");
  EXPECT_EQ(ErrorOf(kBase + "[matrix]\nenabled = true\naccess_token = \"${A}\"\n",
                    {{"A", "tok-value"}}),
            "t.toml:6: matrix.homeserver: required when matrix.enabled = true: the homeserver's "
            "URL, e.g. \"https://matrix.example.org\"\n"
            "t.toml:6: matrix.user_id: required when matrix.enabled = true: the bot's user id, "
            "e.g. \"@parley:example.org\"");
  EXPECT_EQ(ErrorOf(kBase + "[matrix]\nhomeserver = \"http://matrix.example.org\"\n"),
            "t.toml:6: matrix.homeserver: http:// is allowed only for a loopback host "
            "(127.0.0.0/8, [::1], localhost); use https://, got \"http://matrix.example.org\"");
  EXPECT_EQ(ErrorOf(kBase + "[matrix]\nhomeserver = \"https://m.org/_matrix/client/v3\"\n"),
            "t.toml:6: matrix.homeserver: give the homeserver's base URL without /_matrix/..., "
            "got \"https://m.org/_matrix/client/v3\"");
  EXPECT_EQ(ErrorOf(kBase + "[matrix]\nuser_id = \"parley\"\n"),
            "t.toml:6: matrix.user_id: expected the bot's full Matrix user id, e.g. "
            "\"@parley:example.org\", got \"parley\"");
  EXPECT_EQ(ErrorOf(kBase + "[matrix]\nroom_allowlist = [\"#general:m.org\"]\n"),
            "t.toml:6: matrix.room_allowlist[0]: expected a Matrix room id (!id:server), got "
            "\"#general:m.org\"");
  EXPECT_EQ(ErrorOf(kBase + "[matrix]\nmsgtype = \"m.emote\"\n"),
            "t.toml:6: matrix.msgtype: expected one of m.notice, m.text; got \"m.emote\"");
  EXPECT_EQ(ErrorOf(kBase + "[matrix]\naccess_token = \"syt_literal\"\n"),
            "t.toml:6: matrix.access_token: secrets must be given as ${ENV_VAR}, not literally");
  EXPECT_EQ(ErrorOf(kBase + "[matrix]\nbogus = 1\n"), "t.toml:6: matrix.bogus: unknown key");
}

TEST(ConfigTest, LlmEnabledNeedsUrlAndModel) {
  EXPECT_EQ(ErrorOf(kBase + "[llm]\nenabled = true\n"),
            "t.toml:6: llm.base_url: required when llm.enabled = true, e.g. "
            "\"https://api.openai.com/v1\" or \"http://127.0.0.1:8000/v1\"\n"
            "t.toml:6: llm.model: required when llm.enabled = true");
  EXPECT_EQ(ErrorOf(kBase + "[llm]\nenabled = true\nbase_url = \"https://a.example/v1/\"\n"
                            "model = \"m\"\n"),
            "t.toml:7: llm.base_url: must not end in \"/\" (\"/chat/completions\" is appended), "
            "got \"https://a.example/v1/\"");
  EXPECT_EQ(ErrorOf(kBase + "[llm]\nenabled = true\nbase_url = \"http://llm.example/v1\"\n"
                            "model = \"m\"\napi_key = \"${K}\"\n",
                    {{"K", "sk-1"}}),
            "t.toml:7: llm.base_url: an API key would travel in clear text: use https://, or a "
            "loopback host for a local server");
  EXPECT_EQ(ErrorOf(kBase + "[llm]\nunsupported = \"hide\"\n"),
            "t.toml:6: llm.unsupported: expected one of allow, flag, replace; got \"hide\"");
  EXPECT_EQ(ErrorOf(kBase + "[llm]\nheaders = { \"Bad Name\" = \"x\" }\n"),
            "t.toml:6: llm.headers.\"Bad Name\": not a valid header name");
}

TEST(ConfigTest, LlmEnabled) {
  Config c = ParseOk(kBase +
                         "[llm]\nenabled = true\nbase_url = \"http://127.0.0.1:8000/v1\"\n"
                         "api_key = \"${K}\"\nmodel = \"m\"\ntemperature = 0.5\nmax_tokens = 99\n"
                         "stream = false\nfirst_token_timeout_ms = 1234\n"
                         "headers = { \"X-Org\" = \"${ORG}\" }\ncontext_tokens = 3000\n"
                         "unsupported = \"replace\"\nmax_tool_rounds = 2\n",
                     {{"K", "key"}, {"ORG", "acme"}});
  EXPECT_TRUE(c.llm.enabled);
  EXPECT_EQ(c.llm.base_url, "http://127.0.0.1:8000/v1");
  EXPECT_EQ(c.llm.api_key.reveal(), "key");
  EXPECT_EQ(c.llm.model, "m");
  EXPECT_DOUBLE_EQ(c.llm.temperature, 0.5);
  EXPECT_EQ(c.llm.max_tokens, 99);
  EXPECT_FALSE(c.llm.stream);
  EXPECT_EQ(c.llm.first_token_timeout_ms, 1234);
  ASSERT_EQ(c.llm.headers.size(), 1u);
  EXPECT_EQ(c.llm.headers[0].first, "X-Org");
  EXPECT_EQ(c.llm.headers[0].second, "acme");
  EXPECT_EQ(c.llm.context_tokens, 3000);
  EXPECT_EQ(c.llm.unsupported, "replace");
  EXPECT_EQ(c.llm.max_tool_rounds, 2);
}

TEST(ConfigTest, HttpTools) {
  const std::string tool =
      "[[tools.http]]\nname = \"weather\"\ndescription = \"Weather for a city\"\n"
      "parameters = '{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\"}}}'\n"
      "url = \"https://api.example.org/weather/{city}\"\n"
      "headers = { Authorization = \"Bearer ${W}\" }\ntimeout_ms = 2000\nkeep = \"/current\"\n"
      "confirm = true\nallow_channels = [\"slack:C0*\"]\nredact = [\"city\"]\n";
  Config c = ParseOk(kBase + tool, {{"W", "wkey"}});
  ASSERT_EQ(c.tools.http.size(), 1u);
  const HttpToolConfig& t = c.tools.http[0];
  EXPECT_EQ(t.name, "weather");
  EXPECT_EQ(t.method, "GET");
  EXPECT_EQ(t.url, "https://api.example.org/weather/{city}");
  ASSERT_EQ(t.headers.size(), 1u);
  EXPECT_EQ(t.headers[0].second, "Bearer wkey");
  EXPECT_EQ(t.timeout_ms, 2000);
  EXPECT_EQ(t.keep, "/current");
  EXPECT_TRUE(t.confirm);
  EXPECT_EQ(t.allow_channels, std::vector<std::string>{"slack:C0*"});
  EXPECT_EQ(t.redact, std::vector<std::string>{"city"});

  EXPECT_EQ(ErrorOf(kBase + "[[tools.http]]\nname = \"a b\"\n"),
            "t.toml:5: tools.http[0].description: required\n"
            "t.toml:5: tools.http[0].parameters: required\n"
            "t.toml:5: tools.http[0].url: required\n"
            "t.toml:6: tools.http[0].name: must be 1 to 64 letters, digits, '_' or '-', got "
            "\"a b\"");
  EXPECT_EQ(ErrorOf(kBase + tool + tool, {{"W", "wkey"}}),
            "t.toml:17: tools.http[1].name: duplicate tool name \"weather\"");
  EXPECT_EQ(ErrorOf(kBase + "[[tools.http]]\nname = \"x\"\ndescription = \"d\"\n"
                            "parameters = \"[1]\"\nurl = \"https://a.example/\"\n"),
            "t.toml:8: tools.http[0].parameters: must be a JSON Schema object, as a JSON string");
}

// ---- knowledge ----

TEST(ConfigTest, KnowledgeSourcesRequired) {
  EXPECT_EQ(ErrorOf("[webhook]\nenabled = false\n"),
            "t.toml: knowledge.sources: at least one source is required");
  EXPECT_EQ(ErrorOf("[knowledge]\nsources = []\n[webhook]\nenabled = false\n"),
            "t.toml:2: knowledge.sources: at least one source is required");
  EXPECT_EQ(ErrorOf("[[knowledge.sources]]\ntags = [\"a\"]\n[webhook]\nenabled = false\n"),
            "t.toml:1: knowledge.sources[0].path: required");
  EXPECT_EQ(ErrorOf("[[knowledge.sources]]\npath = \"\"\n[webhook]\nenabled = false\n"),
            "t.toml:2: knowledge.sources[0].path: must not be empty");
  EXPECT_EQ(
      ErrorOf("[[knowledge.sources]]\npath = \"d\"\ntags = [\"\"]\n[webhook]\nenabled = false\n"),
      "t.toml:3: knowledge.sources[0].tags[0]: must not be empty");
  EXPECT_EQ(
      ErrorOf(
          "[[knowledge.sources]]\npath = \"d\"\ntags = [\"a b\"]\n[webhook]\nenabled = false\n"),
      "t.toml:3: knowledge.sources[0].tags[0]: must not contain whitespace, got \"a b\"");
}

TEST(ConfigTest, GrantsNeedConversationsAndTags) {
  EXPECT_EQ(ErrorOf(kBase + "[[knowledge.grants]]\nconversations = [\"webhook:*\"]\n"),
            "t.toml:5: knowledge.grants[0].tags: at least one tag is required");
  EXPECT_EQ(ErrorOf(kBase + "[[knowledge.grants]]\nconversations = []\ntags = [\"t\"]\n"),
            "t.toml:6: knowledge.grants[0].conversations: at least one conversation pattern is "
            "required");
  EXPECT_EQ(ErrorOf(kBase + "[[knowledge.grants]]\nconversations = [\"x:*\"]\ntags = [\"t\"]\n"
                            "[[knowledge.grants]]\nconversations = [\"\"]\ntags = [\"t\"]\n"),
            "t.toml:9: knowledge.grants[1].conversations[0]: must not be empty");
}

// ---- files ----

TEST(ConfigTest, LoadConfigUsesThePathInErrors) {
  parley::testing::TempDir dir;
  ASSERT_FALSE(dir.path().empty());
  const std::string path = dir.Sub("my.toml");
  {
    std::ofstream out(path);
    out << kBase << "[runtime]\nthreads = \"many\"\n";
  }
  Result<Config> r = LoadConfig(path);
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(r.status().IsInvalidArgument());
  EXPECT_EQ(r.status().message(), path + ":6: runtime.threads: expected an integer, got a string");

  {
    std::ofstream out(path);
    out << kBase;
  }
  r = LoadConfig(path);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->file, path);
}

TEST(ConfigTest, LoadConfigMissingFile) {
  parley::testing::TempDir dir;
  Result<Config> r = LoadConfig(dir.Sub("absent.toml"));
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(r.status().IsNotFound()) << r.status().ToString();
  EXPECT_NE(r.status().message().find("absent.toml"), std::string::npos);

  r = LoadConfig(dir.path());  // a directory
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Status::Code::kIoError) << r.status().ToString();
}

}  // namespace
}  // namespace parley::config
