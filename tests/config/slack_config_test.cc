// The [slack] section: defaults, every key, types, enums, ranges, tokens, ids and the URL rule.

#include <gtest/gtest.h>

#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "config/config.h"

namespace parley::config {
namespace {

// Lines 1-4; a [slack] header written after it is line 5, its first key line 6.
const std::string kBase =
    "[[knowledge.sources]]\n"
    "path = \"docs\"\n"
    "[webhook]\n"
    "enabled = false\n";

const std::string kAppToken = "xapp-1-A0TEST-1234-abcdefSECRETAPP";
const std::string kBotToken = "xoxb-1234-5678-SECRETBOTabcdef";

// Valid tokens for "${APP}" and "${BOT}", plus `extra`.
EnvLookup Env(std::map<std::string, std::string> extra = {}) {
  extra.emplace("APP", kAppToken);
  extra.emplace("BOT", kBotToken);
  return [vars = std::move(extra)](const std::string& name) -> std::optional<std::string> {
    auto it = vars.find(name);
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
}

// The lines of an enabled section with valid tokens; a test appends its keys (line 9 onwards).
const std::string kEnabled = kBase +
                             "[slack]\n"                  // 5
                             "enabled = true\n"           // 6
                             "app_token = \"${APP}\"\n"   // 7
                             "bot_token = \"${BOT}\"\n";  // 8

Result<Config> ParseTest(const std::string& text, std::map<std::string, std::string> env = {}) {
  return ParseConfig(text, "t.toml", Env(std::move(env)));
}

Config ParseOk(const std::string& text, std::map<std::string, std::string> env = {}) {
  Result<Config> r = ParseTest(text, std::move(env));
  EXPECT_TRUE(r.ok()) << r.status().ToString() << "\n--- text:\n" << text;
  return r.ok() ? r.value() : Config{};
}

std::string ErrorOf(const std::string& text, std::map<std::string, std::string> env = {}) {
  Result<Config> r = ParseTest(text, std::move(env));
  EXPECT_FALSE(r.ok()) << "parsed unexpectedly:\n" << text;
  if (r.ok()) return "";
  EXPECT_TRUE(r.status().IsInvalidArgument()) << r.status().ToString();
  return r.status().message();
}

void ExpectNoTokens(const std::string& message) {
  EXPECT_EQ(message.find(kAppToken), std::string::npos) << message;
  EXPECT_EQ(message.find(kBotToken), std::string::npos) << message;
  EXPECT_EQ(message.find("SECRET"), std::string::npos) << message;
}

TEST(SlackConfigTest, Defaults) {
  for (const std::string& text :
       {kBase, kBase + "[slack]\n", kBase + "[slack]\nenabled = false\n"}) {
    Config c = ParseOk(text);
    const SlackConfig& s = c.slack;
    EXPECT_FALSE(s.enabled);
    EXPECT_TRUE(s.app_token.empty());
    EXPECT_TRUE(s.bot_token.empty());
    EXPECT_EQ(s.api_base_url, "https://slack.com/api/");
    EXPECT_EQ(s.connections, 2);
    EXPECT_TRUE(s.thread_followups);
    EXPECT_TRUE(s.mention_required);
    EXPECT_EQ(s.dm_policy, SlackDmPolicy::kOpen);
    EXPECT_TRUE(s.dm_allowlist.empty());
    EXPECT_TRUE(s.channel_allowlist.empty());
    EXPECT_TRUE(s.allowed_users.empty());
    EXPECT_FALSE(s.allow_bots);
    EXPECT_EQ(s.refusal, SlackRefusal::kEphemeral);
    EXPECT_EQ(s.working_signal, SlackWorkingSignal::kReaction);
    EXPECT_EQ(s.working_reaction, "eyes");
    EXPECT_EQ(s.slash_command, "/parley");
    EXPECT_TRUE(s.feedback_buttons);
    EXPECT_EQ(s.ping_interval_ms, 10'000);
    EXPECT_EQ(s.pong_timeout_ms, 5'000);
    EXPECT_EQ(s.silence_timeout_ms, 120'000);
  }
  // The normal path accepts a disabled section with every key set.
  Result<Config> r = ParseConfig(kBase +
                                     "[slack]\nenabled = false\napp_token = \"${APP}\"\n"
                                     "bot_token = \"${BOT}\"\nconnections = 3\n",
                                 "t.toml", Env());
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->slack.connections, 3);
}

TEST(SlackConfigTest, EveryKeyParsed) {
  Config c = ParseOk(kEnabled +
                         "api_base_url = \"http://127.0.0.1:${FAKE_PORT}/api/\"\n"
                         "connections = 10\n"
                         "thread_followups = false\n"
                         "mention_required = false\n"
                         "dm_policy = \"allowlist\"\n"
                         "dm_allowlist = [\"U012AB3CD\", \"W0123ABCD\"]\n"
                         "channel_allowlist = [\"C0123ABCD\", \"G0456EFGH\"]\n"
                         "allowed_users = [\"U999\"]\n"
                         "allow_bots = true\n"
                         "refusal = \"silent\"\n"
                         "working_signal = \"none\"\n"
                         "working_reaction = \"hourglass_flowing_sand\"\n"
                         "slash_command = \"/ask-docs\"\n"
                         "feedback_buttons = false\n"
                         "ping_interval_ms = 2000\n"
                         "pong_timeout_ms = 1000\n"
                         "silence_timeout_ms = 30000\n",
                     {{"FAKE_PORT", "45123"}});
  const SlackConfig& s = c.slack;
  EXPECT_TRUE(s.enabled);
  EXPECT_EQ(s.app_token.reveal(), kAppToken);
  EXPECT_EQ(s.bot_token.reveal(), kBotToken);
  EXPECT_EQ(s.api_base_url, "http://127.0.0.1:45123/api/");
  EXPECT_EQ(s.connections, 10);
  EXPECT_FALSE(s.thread_followups);
  EXPECT_FALSE(s.mention_required);
  EXPECT_EQ(s.dm_policy, SlackDmPolicy::kAllowlist);
  EXPECT_EQ(s.dm_allowlist, (std::vector<std::string>{"U012AB3CD", "W0123ABCD"}));
  EXPECT_EQ(s.channel_allowlist, (std::vector<std::string>{"C0123ABCD", "G0456EFGH"}));
  EXPECT_EQ(s.allowed_users, (std::vector<std::string>{"U999"}));
  EXPECT_TRUE(s.allow_bots);
  EXPECT_EQ(s.refusal, SlackRefusal::kSilent);
  EXPECT_EQ(s.working_signal, SlackWorkingSignal::kNone);
  EXPECT_EQ(s.working_reaction, "hourglass_flowing_sand");
  EXPECT_EQ(s.slash_command, "/ask-docs");
  EXPECT_FALSE(s.feedback_buttons);
  EXPECT_EQ(s.ping_interval_ms, 2000);
  EXPECT_EQ(s.pong_timeout_ms, 1000);
  EXPECT_EQ(s.silence_timeout_ms, 30000);
}

TEST(SlackConfigTest, EnabledWithTokensIsAccepted) {
  Config c = ParseOk(kEnabled);
  EXPECT_TRUE(c.slack.enabled);
  EXPECT_EQ(c.slack.app_token.reveal(), kAppToken);
  EXPECT_EQ(c.slack.bot_token.reveal(), kBotToken);
  EXPECT_EQ(c.slack.post_rate_per_channel, 1.0);
  EXPECT_EQ(c.slack.post_burst, 3);
  Config paced = ParseOk(kEnabled + "post_rate_per_channel = 0\npost_burst = 10\n");
  EXPECT_EQ(paced.slack.post_rate_per_channel, 0.0);
  EXPECT_EQ(paced.slack.post_burst, 10);
  EXPECT_EQ(ErrorOf(kEnabled + "post_rate_per_channel = -1\n"),
            "t.toml:9: slack.post_rate_per_channel: must be between 0 and 100, got -1");
  EXPECT_EQ(ErrorOf(kEnabled + "post_burst = 0\n"),
            "t.toml:9: slack.post_burst: must be between 1 and 100, got 0");
}

TEST(SlackConfigTest, StreamingKeys) {
  Config c = ParseOk(kEnabled);
  EXPECT_TRUE(c.slack.stream);
  EXPECT_EQ(c.slack.stream_interval_ms, 1000);
  EXPECT_EQ(c.slack.stream_edits_per_minute, 40);
  Config set = ParseOk(kEnabled +
                       "stream = false\nstream_interval_ms = 2500\nstream_edits_per_minute = 20\n");
  EXPECT_FALSE(set.slack.stream);
  EXPECT_EQ(set.slack.stream_interval_ms, 2500);
  EXPECT_EQ(set.slack.stream_edits_per_minute, 20);
  EXPECT_EQ(ErrorOf(kEnabled + "stream_interval_ms = 100\n"),
            "t.toml:9: slack.stream_interval_ms: must be between 250 and 60000, got 100");
  EXPECT_EQ(ErrorOf(kEnabled + "stream_edits_per_minute = 0\n"),
            "t.toml:9: slack.stream_edits_per_minute: must be between 1 and 1000, got 0");
  EXPECT_EQ(ErrorOf(kEnabled + "stream = 1\n"),
            "t.toml:9: slack.stream: expected a boolean (true or false), got an integer");
}

TEST(SlackConfigTest, WrongTypes) {
  struct Case {
    std::string line;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {"enabled = \"yes\"", "slack.enabled: expected a boolean (true or false), got a string"},
      {"app_token = 1", "slack.app_token: expected a string, got an integer"},
      {"bot_token = [\"${BOT}\"]", "slack.bot_token: expected a string, got an array"},
      {"api_base_url = true", "slack.api_base_url: expected a string, got a boolean"},
      {"connections = \"2\"", "slack.connections: expected an integer, got a string"},
      {"connections = 2.0", "slack.connections: expected an integer, got a float"},
      {"thread_followups = 1",
       "slack.thread_followups: expected a boolean (true or false), got an integer"},
      {"mention_required = \"true\"",
       "slack.mention_required: expected a boolean (true or false), got a string"},
      {"dm_policy = 1", "slack.dm_policy: expected a string, got an integer"},
      {"dm_allowlist = \"U1\"", "slack.dm_allowlist: expected an array of strings, got a string"},
      {"channel_allowlist = [1]", "slack.channel_allowlist[0]: expected a string, got an integer"},
      {"allowed_users = { a = 1 }",
       "slack.allowed_users: expected an array of strings, got a table"},
      {"allow_bots = 0", "slack.allow_bots: expected a boolean (true or false), got an integer"},
      {"refusal = false", "slack.refusal: expected a string, got a boolean"},
      {"working_signal = 1", "slack.working_signal: expected a string, got an integer"},
      {"working_reaction = 1", "slack.working_reaction: expected a string, got an integer"},
      {"slash_command = []", "slack.slash_command: expected a string, got an array"},
      {"feedback_buttons = \"no\"",
       "slack.feedback_buttons: expected a boolean (true or false), got a string"},
      {"ping_interval_ms = \"10s\"", "slack.ping_interval_ms: expected an integer, got a string"},
      {"pong_timeout_ms = 5.5", "slack.pong_timeout_ms: expected an integer, got a float"},
      {"silence_timeout_ms = true", "slack.silence_timeout_ms: expected an integer, got a boolean"},
      {"token = \"${BOT}\"", "slack.token: unknown key"},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(ErrorOf(kBase + "[slack]\n" + c.line + "\n"), "t.toml:6: " + c.expected) << c.line;
  }
  EXPECT_EQ(ErrorOf("slack = []\n" + kBase), "t.toml:1: slack: expected a table, got an array");
}

TEST(SlackConfigTest, Enums) {
  const std::vector<std::pair<std::string, SlackDmPolicy>> dm = {
      {"open", SlackDmPolicy::kOpen},
      {"allowlist", SlackDmPolicy::kAllowlist},
      {"disabled", SlackDmPolicy::kDisabled}};
  for (const auto& [name, value] : dm) {
    Config c = ParseOk(kBase + "[slack]\ndm_policy = \"" + name + "\"\ndm_allowlist = [\"U1\"]\n");
    EXPECT_EQ(c.slack.dm_policy, value) << name;
  }
  EXPECT_EQ(ParseOk(kBase + "[slack]\nrefusal = \"silent\"\n").slack.refusal,
            SlackRefusal::kSilent);
  EXPECT_EQ(ParseOk(kBase + "[slack]\nrefusal = \"ephemeral\"\n").slack.refusal,
            SlackRefusal::kEphemeral);
  EXPECT_EQ(ParseOk(kBase + "[slack]\nworking_signal = \"none\"\n").slack.working_signal,
            SlackWorkingSignal::kNone);
  EXPECT_EQ(ParseOk(kBase + "[slack]\nworking_signal = \"reaction\"\n").slack.working_signal,
            SlackWorkingSignal::kReaction);

  EXPECT_EQ(ErrorOf(kBase + "[slack]\ndm_policy = \"Open\"\n"),
            "t.toml:6: slack.dm_policy: expected one of open, allowlist, disabled; got \"Open\"");
  EXPECT_EQ(ErrorOf(kBase + "[slack]\ndm_policy = \"\"\n"),
            "t.toml:6: slack.dm_policy: expected one of open, allowlist, disabled; got \"\"");
  EXPECT_EQ(ErrorOf(kBase + "[slack]\nrefusal = \"loud\"\n"),
            "t.toml:6: slack.refusal: expected one of ephemeral, silent; got \"loud\"");
  EXPECT_EQ(ErrorOf(kBase + "[slack]\nworking_signal = \"${SIG}\"\n", {{"SIG", "status"}}),
            "t.toml:6: slack.working_signal: expected one of reaction, none; got \"status\" "
            "(from \"${SIG}\")");
}

TEST(SlackConfigTest, DmAllowlistPolicyNeedsUsers) {
  const std::string kWhat =
      "slack.dm_allowlist: must list at least one user id when slack.dm_policy = \"allowlist\" "
      "(use \"disabled\" to refuse every DM)";
  EXPECT_EQ(ErrorOf(kBase + "[slack]\ndm_policy = \"allowlist\"\n"), "t.toml:6: " + kWhat);
  EXPECT_EQ(ErrorOf(kBase + "[slack]\ndm_policy = \"allowlist\"\ndm_allowlist = []\n"),
            "t.toml:7: " + kWhat);
  // A bad entry is reported as such, not as an empty list.
  EXPECT_EQ(ErrorOf(kBase + "[slack]\ndm_policy = \"allowlist\"\ndm_allowlist = [\"@bob\"]\n"),
            "t.toml:7: slack.dm_allowlist[0]: use the user id (U…), not a name");
}

TEST(SlackConfigTest, Ranges) {
  struct Case {
    std::string line;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {"connections = 0", "slack.connections: must be between 1 and 10, got 0"},
      {"connections = 11", "slack.connections: must be between 1 and 10, got 11"},
      {"ping_interval_ms = 999",
       "slack.ping_interval_ms: must be between 1000 and 600000, got 999"},
      {"ping_interval_ms = 600001",
       "slack.ping_interval_ms: must be between 1000 and 600000, got 600001"},
      {"pong_timeout_ms = 99", "slack.pong_timeout_ms: must be between 100 and 600000, got 99"},
      {"pong_timeout_ms = -1", "slack.pong_timeout_ms: must be between 100 and 600000, got -1"},
      {"silence_timeout_ms = 999",
       "slack.silence_timeout_ms: must be between 1000 and 3600000, got 999"},
      {"silence_timeout_ms = 3600001",
       "slack.silence_timeout_ms: must be between 1000 and 3600000, got 3600001"},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(ErrorOf(kBase + "[slack]\n" + c.line + "\n"), "t.toml:6: " + c.expected) << c.line;
  }
  Config c = ParseOk(kBase +
                     "[slack]\nconnections = 1\nping_interval_ms = 1000\npong_timeout_ms = 100\n"
                     "silence_timeout_ms = 1101\n");
  EXPECT_EQ(c.slack.connections, 1);
  EXPECT_EQ(c.slack.ping_interval_ms, 1000);
  EXPECT_EQ(c.slack.pong_timeout_ms, 100);
  EXPECT_EQ(c.slack.silence_timeout_ms, 1101);
  EXPECT_EQ(ParseOk(kBase + "[slack]\nconnections = 10\nping_interval_ms = 600000\n"
                            "silence_timeout_ms = 3600000\n")
                .slack.connections,
            10);
}

TEST(SlackConfigTest, SilenceTimeoutMustOutlastAPingRoundTrip) {
  EXPECT_EQ(ErrorOf(kBase + "[slack]\nsilence_timeout_ms = 15000\n"),
            "t.toml:6: slack.silence_timeout_ms: slack.silence_timeout_ms (15000) must be greater "
            "than slack.ping_interval_ms + slack.pong_timeout_ms (15000)");
  // Blamed on the key that was given when the silence timeout is the default.
  EXPECT_EQ(ErrorOf(kBase + "[slack]\nping_interval_ms = 120000\n"),
            "t.toml:6: slack.ping_interval_ms: slack.silence_timeout_ms (120000) must be greater "
            "than slack.ping_interval_ms + slack.pong_timeout_ms (125000)");
  EXPECT_EQ(ErrorOf(kBase + "[slack]\npong_timeout_ms = 110001\n"),
            "t.toml:6: slack.pong_timeout_ms: slack.silence_timeout_ms (120000) must be greater "
            "than slack.ping_interval_ms + slack.pong_timeout_ms (120001)");
  // An out-of-range value is reported once, not again by the cross check.
  EXPECT_EQ(ErrorOf(kBase + "[slack]\nsilence_timeout_ms = 10\n"),
            "t.toml:6: slack.silence_timeout_ms: must be between 1000 and 3600000, got 10");
}

TEST(SlackConfigTest, TokensRequiredWhenEnabled) {
  EXPECT_EQ(ErrorOf(kBase + "[slack]\nenabled = true\n"),
            "t.toml:6: slack.app_token: required when slack.enabled = true: an app-level token "
            "(xapp-…) from the environment, e.g. \"${SLACK_APP_TOKEN}\"\n"
            "t.toml:6: slack.bot_token: required when slack.enabled = true: a bot token (xoxb-…) "
            "from the environment, e.g. \"${SLACK_BOT_TOKEN}\"");
  // Set to an empty variable.
  EXPECT_EQ(ErrorOf(kBase + "[slack]\nenabled = true\napp_token = \"${APP}\"\n"
                            "bot_token = \"${EMPTY}\"\n",
                    {{"EMPTY", ""}}),
            "t.toml:8: slack.bot_token: required when slack.enabled = true: a bot token (xoxb-…) "
            "from the environment, e.g. \"${SLACK_BOT_TOKEN}\" (it is empty)");
  // An unset variable is reported once, as such.
  EXPECT_EQ(ErrorOf(kBase + "[slack]\nenabled = true\napp_token = \"${NOPE}\"\n"
                            "bot_token = \"${BOT}\"\n"),
            "t.toml:7: slack.app_token: environment variable NOPE is not set (write "
            "${NOPE:-default} to make it optional)");
  // Not required while disabled.
  EXPECT_TRUE(ParseOk(kBase + "[slack]\nenabled = false\n").slack.app_token.empty());
}

TEST(SlackConfigTest, TokensMustBeEnvReferences) {
  std::string m = ErrorOf(kBase + "[slack]\napp_token = \"" + kAppToken + "\"\n");
  EXPECT_EQ(m, "t.toml:6: slack.app_token: secrets must be given as ${ENV_VAR}, not literally");
  m = ErrorOf(kBase + "[slack]\nbot_token = \"${B:-" + kBotToken + "}\"\n");
  EXPECT_EQ(m.rfind("t.toml:6: slack.bot_token: secrets must be given as ${ENV_VAR}", 0), 0u) << m;
  ExpectNoTokens(m);
}

TEST(SlackConfigTest, TokenPrefixesCheckedWithoutPrintingThem) {
  struct Case {
    std::string app, bot;
    std::vector<std::string> expected;
  };
  const std::string kAppWrong =
      "t.toml:7: slack.app_token: must be an app-level token starting with xapp-; the "
      "variable's value does not";
  const std::string kBotWrong =
      "t.toml:8: slack.bot_token: must be a bot token starting with xoxb-; the variable's value "
      "does not";
  const std::vector<Case> cases = {
      {"SECRETnotatoken", kBotToken, {kAppWrong}},
      {kAppToken, "SECRETnotatoken", {kBotWrong}},
      {kBotToken,
       kAppToken,
       {kAppWrong + " (it is a bot token, xoxb-…: are app_token and bot_token swapped?)",
        kBotWrong + " (it is an app-level token, xapp-…: are app_token and bot_token swapped?)"}},
      {kAppToken,
       "xoxp-SECRET-user-token",
       {kBotWrong + " (it is a user token, xoxp-…: use the "
                    "bot token)"}},
      {"xapp-",
       kBotToken,
       {"t.toml:7: slack.app_token: must be an app-level token starting with xapp-; the "
        "variable holds the prefix only"}},
      {"Xapp-SECRET", kBotToken, {kAppWrong}},  // case matters
      {kAppToken + "\n",
       kBotToken,
       {"t.toml:7: slack.app_token: the variable's value contains whitespace or control "
        "characters (a trailing newline?)"}},
      {kAppToken,
       "xoxb-SECRET with space",
       {"t.toml:8: slack.bot_token: the variable's value contains whitespace or control "
        "characters (a trailing newline?)"}},
  };
  for (const Case& c : cases) {
    const std::string m = ErrorOf(kEnabled, {{"APP", c.app}, {"BOT", c.bot}});
    std::string expected;
    for (const std::string& e : c.expected) expected += (expected.empty() ? "" : "\n") + e;
    EXPECT_EQ(m, expected) << c.app << " / " << c.bot;
    // (A bare prefix such as "xapp-" is no secret and may be named.)
    if (c.app.size() > 5) {
      EXPECT_EQ(m.find(c.app), std::string::npos) << m;
    }
    if (c.bot.size() > 5) {
      EXPECT_EQ(m.find(c.bot), std::string::npos) << m;
    }
    EXPECT_EQ(m.find("SECRET"), std::string::npos) << m;
  }
  // Prefixes are not checked while disabled (placeholders are fine there).
  Config c = ParseOk(kBase + "[slack]\napp_token = \"${APP}\"\nbot_token = \"${BOT}\"\n",
                     {{"APP", "placeholder"}, {"BOT", "placeholder"}});
  EXPECT_EQ(c.slack.app_token.reveal(), "placeholder");
}

TEST(SlackConfigTest, ChannelAllowlistTakesIdsNotNames) {
  for (const char* name : {"general", "#general", "c0123abcd", "C0123abcd", "C", "X0123ABCD",
                           "<#C0123ABCD|general>"}) {
    EXPECT_EQ(ErrorOf(kBase + "[slack]\nchannel_allowlist = [\"" + name + "\"]\n"),
              "t.toml:6: slack.channel_allowlist[0]: use the channel id (C…), not its name")
        << name;
  }
  EXPECT_EQ(ErrorOf(kBase + "[slack]\nchannel_allowlist = [\"C0123ABCD\", \"random\",\n"
                            "  \"\", \"D0123ABCD\"]\n"),
            "t.toml:6: slack.channel_allowlist[1]: use the channel id (C…), not its name\n"
            "t.toml:7: slack.channel_allowlist[2]: must not be empty\n"
            "t.toml:7: slack.channel_allowlist[3]: a DM id does not belong here: DMs follow "
            "slack.dm_policy");
  Config c = ParseOk(kBase + "[slack]\nchannel_allowlist = [\"C0123ABCD\", \"G01\", \"${CH}\"]\n",
                     {{"CH", "C999ZZZ"}});
  EXPECT_EQ(c.slack.channel_allowlist, (std::vector<std::string>{"C0123ABCD", "G01", "C999ZZZ"}));
}

TEST(SlackConfigTest, UserListsTakeIdsNotNames) {
  for (const char* key : {"dm_allowlist", "allowed_users"}) {
    for (const char* name : {"@alice", "alice", "u012ab3cd", "C0123ABCD", "B0123ABCD", "U"}) {
      EXPECT_EQ(ErrorOf(kBase + "[slack]\n" + key + " = [\"" + name + "\"]\n"),
                std::string("t.toml:6: slack.") + key + "[0]: use the user id (U…), not a name")
          << key << " " << name;
    }
  }
  Config c = ParseOk(kBase + "[slack]\nallowed_users = [\"U012AB3CD\", \"W0ENTERPRISE1\"]\n");
  EXPECT_EQ(c.slack.allowed_users, (std::vector<std::string>{"U012AB3CD", "W0ENTERPRISE1"}));
}

TEST(SlackConfigTest, ApiBaseUrl) {
  for (const char* ok :
       {"https://slack.com/api/", "https://slack.example.org:8443/api/",
        "http://127.0.0.1:4000/api/", "http://127.8.9.10/", "http://localhost:1/",
        "http://LOCALHOST/api/", "http://[::1]:4000/api/", "https://[2001:db8::1]/"}) {
    Config c = ParseOk(kBase + "[slack]\napi_base_url = \"" + ok + "\"\n");
    EXPECT_EQ(c.slack.api_base_url, ok);
  }
  struct Case {
    std::string url;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {"http://slack.com/api/",
       "http:// is allowed only for a loopback host (127.0.0.0/8, [::1], localhost); use "
       "https://, got \"http://slack.com/api/\""},
      {"http://10.0.0.5:8080/api/",
       "http:// is allowed only for a loopback host (127.0.0.0/8, [::1], localhost); use "
       "https://, got \"http://10.0.0.5:8080/api/\""},
      {"http://[::]:80/",
       "http:// is allowed only for a loopback host (127.0.0.0/8, [::1], localhost); use "
       "https://, got \"http://[::]:80/\""},
      {"http://127.0.0.1.example.org/",
       "http:// is allowed only for a loopback host (127.0.0.0/8, [::1], localhost); use "
       "https://, got \"http://127.0.0.1.example.org/\""},
      {"https://slack.com/api",
       "expected an http:// or https:// URL ending in \"/\", got \"https://slack.com/api\""},
      {"wss://slack.com/",
       "expected an http:// or https:// URL ending in \"/\", got "
       "\"wss://slack.com/\""},
      {"slack.com/api/",
       "expected an http:// or https:// URL ending in \"/\", got \"slack.com/api/\""},
      {"", "expected an http:// or https:// URL ending in \"/\", got \"\""},
      {"https:///api/", "has no host, got \"https:///api/\""},
      {"https://slack.com/api/?x=/",
       "must not have a query or fragment, got \"https://slack.com/api/?x=/\""},
      {"http://127.0.0.1@evil.example/", "must not contain user info (user@ or user:password@)"},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(ErrorOf(kBase + "[slack]\napi_base_url = \"" + c.url + "\"\n"),
              "t.toml:6: slack.api_base_url: " + c.expected)
        << c.url;
  }
  std::string m = ErrorOf(kBase + "[slack]\napi_base_url = \"https://slack.com:99999/api/\"\n");
  EXPECT_EQ(m.rfind("t.toml:6: slack.api_base_url: invalid host or port in", 0), 0u) << m;
}

TEST(SlackConfigTest, SlashCommandAndReaction) {
  for (const char* bad : {"parley", "/", "", "/par ley", " /parley"}) {
    EXPECT_EQ(ErrorOf(kBase + "[slack]\nslash_command = \"" + bad + "\"\n"),
              std::string("t.toml:6: slack.slash_command: must be \"/\" and a name without "
                          "spaces, e.g. \"/parley\", got \"") +
                  bad + "\"")
        << bad;
  }
  for (const char* bad : {":eyes:", "", "eyes:", "hour glass"}) {
    EXPECT_EQ(ErrorOf(kBase + "[slack]\nworking_reaction = \"" + bad + "\"\n"),
              std::string("t.toml:6: slack.working_reaction: expected an emoji name without "
                          "colons or spaces, e.g. \"eyes\", got \"") +
                  bad + "\"")
        << bad;
  }
  Config c = ParseOk(kBase +
                     "[slack]\nslash_command = \"/kb\"\n"
                     "working_reaction = \"thumbsup::skin-tone-2\"\n");
  EXPECT_EQ(c.slack.slash_command, "/kb");
  EXPECT_EQ(c.slack.working_reaction, "thumbsup::skin-tone-2");
}

TEST(SlackConfigTest, AllErrorsOfTheSectionTogether) {
  const std::string m = ErrorOf(kBase +
                                      "[slack]\n"                               // 5
                                      "enabled = true\n"                        // 6
                                      "app_token = \"${BOT}\"\n"                // 7
                                      "connections = 20\n"                      // 8
                                      "channel_allowlist = [\"#support\"]\n"    // 9
                                      "api_base_url = \"http://slack.com/\"\n"  // 10
                                      "colour = \"blue\"\n");                   // 11
  EXPECT_EQ(m,
            "t.toml:6: slack.bot_token: required when slack.enabled = true: a bot token (xoxb-…) "
            "from the environment, e.g. \"${SLACK_BOT_TOKEN}\"\n"
            "t.toml:7: slack.app_token: must be an app-level token starting with xapp-; the "
            "variable's value does not (it is a bot token, xoxb-…: are app_token and bot_token "
            "swapped?)\n"
            "t.toml:8: slack.connections: must be between 1 and 10, got 20\n"
            "t.toml:9: slack.channel_allowlist[0]: use the channel id (C…), not its name\n"
            "t.toml:10: slack.api_base_url: http:// is allowed only for a loopback host "
            "(127.0.0.0/8, [::1], localhost); use https://, got \"http://slack.com/\"\n"
            "t.toml:11: slack.colour: unknown key");
  ExpectNoTokens(m);
}

}  // namespace
}  // namespace parley::config
