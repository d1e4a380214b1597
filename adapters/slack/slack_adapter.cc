#include "adapters/slack/slack_adapter.h"

#include <algorithm>
#include <chrono>

#include <boost/asio/post.hpp>
#include <spdlog/spdlog.h>

#include "core/ids.h"
#include "net/backoff.h"
#include "store/keys.h"

namespace parley::slack {
namespace {

using nlohmann::json;

constexpr int kMaxTransientAttempts = 10;          // per part, then the reply is dropped
constexpr int64_t kRefusalNoteIntervalMs = 10 * 60 * 1000;
constexpr int kStopDrainMs = 5'000;
constexpr int64_t kStreamIdleMs = 10 * 60 * 1000;  // a stream without a final is forgotten
constexpr size_t kMaxStreams = 10'000;             // far behind: no new placeholders
constexpr size_t kFinalsRemembered = 4'096;
constexpr int kMaxEditBurst = 10;  // partial edits the workspace budget allows at once
constexpr int64_t kNameTtlMs = 60 * 60 * 1000;        // a looked-up display name
constexpr int64_t kUnknownNameTtlMs = 5 * 60 * 1000;  // a failed lookup, before trying again
constexpr size_t kNameCacheLimit = 50'000;

const net::BackoffPolicy kRetryBackoff{500, 30'000};
const net::BackoffPolicy kAuthBackoff{1'000, 60'000};

// The string at key of an object; empty when absent or not a string.
std::string JsonString(const json& j, const char* key) {
  if (!j.is_object()) return "";
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
}

bool Contains(const std::vector<std::string>& list, const std::string& value) {
  return std::find(list.begin(), list.end(), value) != list.end();
}

// "channel:ts" (codec::DedupeKey) -> ts; empty when malformed.
std::pair<std::string, std::string> SplitDedupeKey(const std::string& key) {
  const size_t colon = key.find(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 >= key.size()) return {};
  return {key.substr(0, colon), key.substr(colon + 1)};
}

std::string EncodeRoute(const std::string& response_url, const std::string& user) {
  return DumpJson(json{{"response_url", response_url}, {"user", user}});
}

json Ephemeral(const std::string& text) {
  return json{{"response_type", "ephemeral"}, {"text", text}};
}

const char* kHelpText =
    "*parley* answers questions from this workspace's knowledge base.\n"
    "• `@parley <question>` in a channel (I answer in a thread; reply in the thread to follow "
    "up), or just DM me.\n"
    "• `/parley ask <question>`: an answer only you see.\n"
    "• `/parley forget`: I forget this conversation.\n"
    "• `/parley human`: ask for a person.\n"
    "• `/parley help`: this message.";

}  // namespace

SlackAdapter::SlackAdapter(boost::asio::io_context& io, config::SlackConfig config,
                           std::shared_ptr<net::HttpClient> http, store::KvStore& kv,
                           store::Committer& committer, ConversationControl& control,
                           const Clock& clock, MetricsRegistry& metrics,
                           std::function<void(Status)> on_fatal)
    : io_(io),
      config_(std::move(config)),
      kv_(kv),
      committer_(committer),
      control_(control),
      clock_(clock),
      metrics_(metrics),
      on_fatal_(std::move(on_fatal)),
      api_(std::move(http), config_.api_base_url, config_.bot_token, config_.app_token, clock,
           metrics),
      outbox_(kv),
      events_received_(metrics.GetCounter("parley_slack_events_total",
                                          "Slack events by what became of them",
                                          "result=\"received\"")),
      events_ignored_(metrics.GetCounter("parley_slack_events_total",
                                         "Slack events by what became of them",
                                         "result=\"ignored\"")),
      events_refused_(metrics.GetCounter("parley_slack_events_total",
                                         "Slack events by what became of them",
                                         "result=\"refused_by_policy\"")),
      replies_delivered_(metrics.GetCounter("parley_slack_replies_total",
                                            "Slack replies by final result", "result=\"sent\"")),
      replies_dropped_(metrics.GetCounter("parley_slack_replies_total",
                                          "Slack replies by final result", "result=\"dropped\"")),
      feedback_helpful_(metrics.GetCounter("parley_feedback_total", "Feedback on answers",
                                           "platform=\"slack\",value=\"helpful\"")),
      feedback_unhelpful_(metrics.GetCounter("parley_feedback_total", "Feedback on answers",
                                             "platform=\"slack\",value=\"unhelpful\"")),
      stream_placeholders_(
          metrics.GetCounter("parley_slack_stream_placeholders_total",
                             "Streamed Slack answers posted early (placeholders Slack confirmed)")),
      stream_edits_partial_(metrics.GetCounter("parley_slack_stream_edits_total",
                                               "chat.update edits of streamed Slack answers",
                                               "kind=\"partial\"")),
      stream_edits_final_(metrics.GetCounter("parley_slack_stream_edits_total",
                                             "chat.update edits of streamed Slack answers",
                                             "kind=\"final\"")),
      stream_partials_dropped_(metrics.GetCounter(
          "parley_slack_stream_partials_dropped_total",
          "Partial answers never shown on Slack (coalesced into a later edit, or too late)")),
      stream_fallbacks_(metrics.GetCounter(
          "parley_slack_stream_fallbacks_total",
          "Streamed Slack answers posted anew because Slack refused the final edit")),
      replies_pending_(metrics.GetGauge("parley_slack_replies_pending",
                                        "Slack replies queued or being sent")) {}

SlackAdapter::~SlackAdapter() = default;

size_t SlackAdapter::ReadySockets() const {
  std::lock_guard<std::mutex> lock(mu_);
  return sockets_ ? sockets_->ReadySockets() : 0;
}

void SlackAdapter::After(int64_t delay_ms, std::function<void()> fn) {
  auto timer = std::make_shared<boost::asio::steady_timer>(io_);
  timer->expires_after(std::chrono::milliseconds(std::max<int64_t>(0, delay_ms)));
  timer->async_wait([timer, fn = std::move(fn)](boost::system::error_code ec) {
    if (!ec) fn();
  });
}

void SlackAdapter::Fatal(Status why) {
  if (fatal_.exchange(true)) return;
  spdlog::critical("slack.stopped error=\"{}\"", why.ToString());
  if (on_fatal_) on_fatal_(why);
}

// ---------------------------------------------------------------------------------------------
// Start-up

Status SlackAdapter::ResumeOutbox() {
  auto owed = outbox_.Load(kPlatform);
  if (!owed.ok()) return owed.status();
  for (store::OutboxEntry& entry : *owed) {
    json stored = json::parse(entry.payload, nullptr, false);
    if (!stored.is_object()) {
      spdlog::error("slack.outbox.unreadable id={}", entry.id);
      store::WriteBatch batch;
      outbox_.Remove(batch, kPlatform, entry.id);
      committer_.Submit(std::move(batch), nullptr);
      continue;
    }
    Delivery d;
    d.id = entry.id;
    d.message = stored.get<OutboundMessage>();
    d.parts_done = stored.value("slack_parts_done", 0);
    d.created_ms = entry.created_ms;
    d.resumed = true;
    spdlog::info("slack.reply.resume id={} channel={} parts_done={}", d.id,
                 d.message.conversation.channel, d.parts_done);
    Enqueue(std::move(d));
  }
  return Status::Ok();
}

Status SlackAdapter::Start(InboundSink& sink) {
  sink_ = &sink;
  auto self = shared_from_this();
  boost::asio::post(io_, [self] { self->Authenticate(0); });
  return Status::Ok();
}

void SlackAdapter::Authenticate(int attempt) {
  if (stopping_) return;
  auto self = shared_from_this();
  api_.Call("auth.test", json::object(), Token::kBot, [self, attempt](ApiResult r) {
    if (r.ok()) {
      BotIdentity bot;
      bot.user_id = r.body.value("user_id", "");
      bot.bot_id = r.body.value("bot_id", "");
      bot.team_id = r.body.value("team_id", "");
      bot.team = r.body.value("team", "");
      if (bot.user_id.empty()) {
        return self->Fatal(Status::FailedPrecondition(
            "auth.test did not return the bot's user_id: is slack.bot_token a bot token?"));
      }
      spdlog::info("slack.auth.ok team={} team_id={} bot_user={} bot_id={}", bot.team,
                   bot.team_id, bot.user_id, bot.bot_id);
      {
        std::lock_guard<std::mutex> lock(self->mu_);
        self->bot_ = bot;
      }
      self->OpenSockets();
      return;
    }
    if (r.outcome == Outcome::kAuth || r.outcome == Outcome::kRefused) {
      return self->Fatal(Status::PermissionDenied("slack.bot_token was refused by auth.test: " +
                                                  r.error));
    }
    const int64_t delay = std::max(r.retry_after_ms, net::BackoffDelayMs(kAuthBackoff, attempt));
    spdlog::warn("slack.auth.retry attempt={} in_ms={} error=\"{}\"", attempt + 1, delay, r.error);
    self->After(delay, [self, attempt] { self->Authenticate(attempt + 1); });
  });
}

void SlackAdapter::OpenSockets() {
  SocketModeOptions options;
  options.connections = config_.connections;
  options.ping_interval_ms = config_.ping_interval_ms;
  options.pong_timeout_ms = config_.pong_timeout_ms;
  options.silence_timeout_ms = config_.silence_timeout_ms;
  options.hello_timeout_ms = std::max(config_.pong_timeout_ms * 2, 10'000);
  std::weak_ptr<SlackAdapter> weak = shared_from_this();
  OpenUrlFn open_url = [weak](UrlCallback done) {
    auto self = weak.lock();
    if (!self) return done(Status::Unavailable("adapter gone"), 0);
    self->api_.Call("apps.connections.open", json::object(), Token::kApp,
                    [done = std::move(done)](ApiResult r) {
                      if (r.ok()) {
                        const json& url = r.body.contains("url") ? r.body["url"] : json();
                        if (url.is_string()) return done(url.get<std::string>(), 0);
                        return done(Status::Unavailable("apps.connections.open gave no url"), 0);
                      }
                      switch (r.outcome) {
                        case Outcome::kAuth:
                          return done(Status::PermissionDenied(
                                          "slack.app_token was refused by apps.connections.open: " +
                                          r.error),
                                      0);
                        case Outcome::kRefused:
                          return done(Status::FailedPrecondition("apps.connections.open: " +
                                                                 r.error),
                                      0);
                        case Outcome::kRateLimited:
                          return done(Status::Unavailable("apps.connections.open: ratelimited"),
                                      r.retry_after_ms);
                        default:
                          return done(Status::Unavailable("apps.connections.open: " + r.error), 0);
                      }
                    });
  };
  EnvelopeHandler on_envelope = [weak](Envelope envelope, AckFn ack) {
    if (auto self = weak.lock()) self->OnEnvelope(std::move(envelope), std::move(ack));
  };
  StoppedHandler on_stopped = [weak](Status why) {
    auto self = weak.lock();
    if (self && !self->stopping_) self->Fatal(std::move(why));
  };
  std::lock_guard<std::mutex> lock(mu_);
  if (stopping_) return;
  sockets_ = std::make_unique<SocketModeClient>(io_, options, std::move(open_url),
                                                std::move(on_envelope), std::move(on_stopped),
                                                metrics_);
  sockets_->Start();
}

void SlackAdapter::StopIntake() {
  stopping_ = true;
  // Close the sockets now: what Slack sends from here on goes to another connection or run.
  std::lock_guard<std::mutex> lock(mu_);
  if (sockets_) sockets_->Stop(nullptr);
}

void SlackAdapter::Stop(std::function<void()> done) {
  stopping_ = true;
  auto self = shared_from_this();
  // Wait for chat.postMessage calls in flight (so a reply Slack confirmed is marked sent), then
  // close the sockets. Queued replies stay in the outbox for the next start.
  auto deadline_ms = clock_.NowMs() + kStopDrainMs;
  auto finish = std::make_shared<std::function<void()>>();
  *finish = [self, done, deadline_ms, finish] {
    bool busy = false;
    {
      std::lock_guard<std::mutex> lock(self->mu_);
      for (const auto& [channel, q] : self->channels_) busy = busy || !q.queue.empty();
    }
    if (busy && self->clock_.NowMs() < deadline_ms) {
      return self->After(20, [finish] { (*finish)(); });
    }
    SocketModeClient* sockets = nullptr;
    {
      std::lock_guard<std::mutex> lock(self->mu_);
      sockets = self->sockets_.get();
    }
    self->stopped_ = true;
    auto all_done = [self, done, finish] {
      // Break the cycle outside the running function object.
      boost::asio::post(self->io_, [finish] { *finish = nullptr; });
      if (done) done();
    };
    if (sockets != nullptr) {
      sockets->Stop(all_done);
    } else {
      all_done();
    }
  };
  boost::asio::post(io_, [finish] { (*finish)(); });
}

// ---------------------------------------------------------------------------------------------
// Inbound

void SlackAdapter::OnEnvelope(Envelope envelope, AckFn ack) {
  if (stopping_) return;  // not acknowledged: Slack redelivers events to the next connection
  switch (envelope.kind) {
    case FrameKind::kEventsApi:
      ack(nullptr);  // first: Slack's 3 s deadline does not wait for the turn
      OnEvent(envelope);
      return;
    case FrameKind::kSlashCommands:
      OnSlashCommand(envelope, std::move(ack));
      return;
    case FrameKind::kInteractive:
      ack(nullptr);
      OnBlockAction(envelope);
      return;
    default:
      ack(nullptr);
      return;
  }
}

bool SlackAdapter::BotInThread(const std::string& channel, const std::string& thread_ts) {
  const std::string key = channel + "/" + thread_ts;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (threads_.Find(key) != nullptr) return true;
  }
  auto found = kv_.Get(store::keys::SlackThread(channel, thread_ts));
  if (!found.ok()) return false;
  std::lock_guard<std::mutex> lock(mu_);
  threads_.Put(key, true, 0);
  return true;
}

void SlackAdapter::RememberThread(const std::string& channel, const std::string& thread_ts,
                                  store::WriteBatch& batch) {
  if (thread_ts.empty()) return;
  const std::string key = channel + "/" + thread_ts;
  {
    std::lock_guard<std::mutex> lock(mu_);
    threads_.Put(key, true, 0);
  }
  // Written with every reply in the thread (it rides in the reply's outbox removal batch): the
  // in-memory mark may come from intake, before any reply was confirmed.
  batch.Put(store::keys::SlackThread(channel, thread_ts), std::to_string(clock_.NowMs()));
}

void SlackAdapter::OnEvent(const Envelope& envelope) {
  events_received_.Add();
  SlackEvent event = ParseEventCallback(envelope.payload);
  BotIdentity bot;
  {
    std::lock_guard<std::mutex> lock(mu_);
    bot = bot_;
  }
  // In an agents' channel the threads of the bot's cards are always addressed to it.
  const bool agents = IsAgentChannel(event.channel);
  ClassifyOptions options;
  options.allow_bots = config_.allow_bots;
  options.thread_followups = config_.thread_followups || agents;
  options.mention_required = config_.mention_required;
  options.own_bot_id = bot.bot_id;
  const bool in_thread = options.thread_followups && !event.thread_ts.empty() &&
                         !event.channel.empty() &&
                         ((!bot.user_id.empty() && event.parent_user_id == bot.user_id) ||
                          BotInThread(event.channel, event.thread_ts));
  EventDecision decision = Classify(event, bot.user_id, options, in_thread);
  if (!decision.handle) {
    events_ignored_.Add();
    spdlog::debug("slack.event.ignored event_id={} type={} reason={} retry={}", event.event_id,
                  event.type_raw, IgnoreReasonName(decision.reason), envelope.retry_attempt);
    return;
  }
  InboundMessage& m = decision.message;
  spdlog::trace("slack.event.text event_id={} raw=\"{}\"", event.event_id, event.text);

  // Access policy, by id.
  std::string refusal;
  if (m.is_direct) {
    if (config_.dm_policy == config::SlackDmPolicy::kDisabled) {
      refusal = "Sorry, I don't take direct messages here. Mention me in a channel instead.";
    } else if (config_.dm_policy == config::SlackDmPolicy::kAllowlist &&
               !Contains(config_.dm_allowlist, m.user)) {
      refusal = "Sorry, I only answer direct messages from a few people in this workspace.";
    }
  } else if (!agents && !config_.channel_allowlist.empty() &&
             !Contains(config_.channel_allowlist, m.channel)) {
    refusal = "Sorry, I'm not set up to answer in this channel.";
  }
  if (refusal.empty() && !agents && !config_.allowed_users.empty() &&
      !Contains(config_.allowed_users, m.user)) {
    refusal = "Sorry, I'm not set up to answer your questions here.";
  }
  if (!refusal.empty()) {
    events_refused_.Add();
    spdlog::info("slack.event.refused event_id={} channel={} user={}", event.event_id, m.channel,
                 m.user);
    Refuse(m.channel, m.user, refusal);
    return;
  }
  if (envelope.retry_attempt > 0) {
    spdlog::info("slack.event.redelivered event_id={} retry={} reason={}", event.event_id,
                 envelope.retry_attempt, envelope.retry_reason);
  }
  const std::string channel = m.channel, user = m.user, ts = event.ts, thread = m.thread;
  const std::string event_id = event.event_id, key = m.event_id;
  auto self = shared_from_this();
  auto shared = std::make_shared<InboundMessage>(std::move(m));
  WithUserName(
      channel, user, [self, shared, channel, user, ts, thread, event_id, key](std::string name) {
        if (shared->user_name.empty()) shared->user_name = std::move(name);
        self->sink_->OnInbound(
            std::move(*shared), IntakeOptions{/*durable=*/true},
            [self, channel, user, ts, thread, event_id, key](IntakeResult result) {
              switch (result.status.code()) {
                case Status::Code::kOk:
                  spdlog::debug("slack.event.accepted event_id={} key={}", event_id, key);
                  // The bot answers in this thread: follow-ups that arrive before its
                  // reply is confirmed count as addressed too. (The durable mark is
                  // written once the reply is posted.)
                  if (!thread.empty()) {
                    std::lock_guard<std::mutex> lock(self->mu_);
                    self->threads_.Put(channel + "/" + thread, true, 0);
                  }
                  self->SignalWorking(channel, ts, true);
                  return;
                case Status::Code::kAlreadyExists:
                  self->metrics_
                      .GetCounter("parley_slack_events_total",
                                  "Slack events by what became of them", "result=\"duplicate\"")
                      .Add();
                  spdlog::debug("slack.event.duplicate event_id={} key={}", event_id, key);
                  return;
                case Status::Code::kResourceExhausted:
                  spdlog::info("slack.event.rate_limited channel={} user={}", channel, user);
                  self->Refuse(channel, user,
                               "You're asking faster than I can answer; please give me a "
                               "few seconds and ask again.");
                  return;
                default:
                  spdlog::error("slack.event.not_accepted event_id={} error=\"{}\"", event_id,
                                result.status.ToString());
                  return;
              }
            });
      });
}

void SlackAdapter::Refuse(const std::string& channel, const std::string& user,
                          const std::string& text) {
  if (config_.refusal == config::SlackRefusal::kSilent || channel.empty() || user.empty()) return;
  const std::string key = channel + "/" + user;
  const int64_t now = clock_.NowMs();
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = refused_notes_.find(key);
    if (it != refused_notes_.end() && now - it->second < kRefusalNoteIntervalMs) return;
    if (refused_notes_.size() > 10'000) refused_notes_.clear();
    refused_notes_[key] = now;
  }
  if (api_.PausedForMs("chat.postEphemeral") > 0) return;
  api_.Call("chat.postEphemeral", json{{"channel", channel}, {"user", user}, {"text", text}},
            Token::kBot, [channel](ApiResult r) {
              if (!r.ok()) {
                spdlog::warn("slack.ephemeral.failed channel={} outcome={} error=\"{}\"", channel,
                             OutcomeName(r.outcome), r.error);
              }
            });
}

void SlackAdapter::SignalWorking(const std::string& channel, const std::string& ts, bool on) {
  if (config_.working_signal != config::SlackWorkingSignal::kReaction || channel.empty() ||
      ts.empty()) {
    return;
  }
  const std::string key = channel + "/" + ts;
  auto self = shared_from_this();
  if (on) {
    // Best effort: skipped while the method is rate limited (Tier 3, ~50/min).
    if (api_.PausedForMs("reactions.add") > 0) return;
    if (config_.working_delay_ms > 0) {
      // Shown only when the answer takes longer than working_delay_ms: a quick answer needs no
      // signal, and the two calls would cost more than the answer.
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (reactions_.size() > 100'000) return;  // far behind: no signals
        reactions_[key] = ReactionState::kPending;
      }
      After(config_.working_delay_ms, [self, key, channel, ts] {
        {
          std::lock_guard<std::mutex> lock(self->mu_);
          auto it = self->reactions_.find(key);
          if (it == self->reactions_.end() || it->second != ReactionState::kPending) return;
          it->second = ReactionState::kAdding;
        }
        self->AddReaction(channel, ts);
      });
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      reactions_[key] = ReactionState::kAdding;
    }
    AddReaction(channel, ts);
    return;
  }
  bool remove_now = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = reactions_.find(key);
    if (it == reactions_.end()) return;
    if (it->second == ReactionState::kPending) {
      reactions_.erase(it);  // answered before the signal was due: nothing to undo
    } else if (it->second == ReactionState::kAdding) {
      it->second = ReactionState::kRemoveWanted;
    } else {
      reactions_.erase(it);
      remove_now = true;
    }
  }
  if (remove_now) RemoveReaction(channel, ts);
}

void SlackAdapter::RemoveReaction(const std::string& channel, const std::string& ts) {
  api_.Call("reactions.remove",
            json{{"channel", channel}, {"timestamp", ts}, {"name", config_.working_reaction}},
            Token::kBot, [channel](ApiResult r) {
              if (!r.ok() && r.error != "no_reaction") {
                spdlog::debug("slack.reaction.remove_failed channel={} error=\"{}\"", channel,
                              r.error);
              }
            });
}

void SlackAdapter::AddReaction(const std::string& channel, const std::string& ts) {
  const std::string key = channel + "/" + ts;
  auto self = shared_from_this();
  auto remove = [self, channel, ts] { self->RemoveReaction(channel, ts); };
  {
    api_.Call("reactions.add",
              json{{"channel", channel}, {"timestamp", ts}, {"name", config_.working_reaction}},
              Token::kBot, [self, key, channel, remove](ApiResult r) {
                bool remove_now = false;
                {
                  std::lock_guard<std::mutex> lock(self->mu_);
                  auto it = self->reactions_.find(key);
                  if (it == self->reactions_.end()) return;
                  if (it->second == ReactionState::kRemoveWanted || !r.ok()) {
                    remove_now = it->second == ReactionState::kRemoveWanted && r.ok();
                    self->reactions_.erase(it);
                  } else {
                    it->second = ReactionState::kAdded;
                  }
                }
                if (!r.ok() && r.error != "already_reacted") {
                  spdlog::debug("slack.reaction.add_failed channel={} error=\"{}\"", channel,
                                r.error);
                }
                if (remove_now) remove();
              });
  }
}

void SlackAdapter::OnSlashCommand(const Envelope& envelope, AckFn ack) {
  auto parsed = ParseSlashCommand(envelope.payload);
  if (!parsed.ok()) {
    metrics_.GetCounter("parley_slack_malformed_payloads_total",
                        "Slack payloads that did not parse", "type=\"slash_commands\"")
        .Add();
    spdlog::warn("slack.slash.malformed error=\"{}\"", parsed.status().message());
    json reply = Ephemeral("Sorry, I could not read that command.");
    ack(&reply);
    return;
  }
  const SlashCommand cmd = std::move(parsed).value();
  const SlashAction action = ParseSlashText(cmd.text);
  metrics_.GetCounter("parley_slack_slash_commands_total", "Slash commands received").Add();
  const bool is_dm = !cmd.channel_id.empty() && cmd.channel_id[0] == 'D';
  // A slash command's conversation: the DM itself, or this user's private line in the channel.
  const ConversationKey conversation{kPlatform, cmd.channel_id,
                                     is_dm ? "" : "slash/" + cmd.user_id};
  switch (action.kind) {
    case SlashAction::Kind::kHelp: {
      json reply = Ephemeral(kHelpText);
      ack(&reply);
      return;
    }
    case SlashAction::Kind::kUnknown: {
      json reply = Ephemeral("I don't know the option `" + action.argument + "`. Try `" +
                             cmd.command + " help`.");
      ack(&reply);
      return;
    }
    case SlashAction::Kind::kHuman: {
      if (!desk_.active) {
        json reply = Ephemeral(
            "No human hand-off is set up for me in this workspace yet, so I can't pass you to a "
            "person. Please reach your support team directly.");
        ack(&reply);
        return;
      }
      // The conversation with the person is a DM: this one, or one the bot opens (an ephemeral
      // response_url cannot carry a two-way conversation).
      const bool agents = IsAgentChannel(cmd.channel_id);
      const bool dm_ok = config_.dm_policy != config::SlackDmPolicy::kDisabled &&
                         (config_.dm_policy != config::SlackDmPolicy::kAllowlist ||
                          Contains(config_.dm_allowlist, cmd.user_id));
      const bool allowed = dm_ok &&
                           (agents || config_.allowed_users.empty() ||
                            Contains(config_.allowed_users, cmd.user_id)) &&
                           (is_dm || agents || config_.channel_allowlist.empty() ||
                            Contains(config_.channel_allowlist, cmd.channel_id));
      if (!allowed) {
        events_refused_.Add();
        json reply = Ephemeral(
            "Sorry, I can't pass you to a person from here. Please reach your support team "
            "directly.");
        ack(&reply);
        return;
      }
      const std::string event_id = "slash:" + envelope.envelope_id;
      if (is_dm) {
        json reply = Ephemeral("Passing you to a person…");
        ack(&reply);
        RequestHuman(cmd, cmd.channel_id, event_id, action.argument);
        return;
      }
      json reply = Ephemeral(
          "Passing you to a person: we'll continue in a direct message with me, where the "
          "person will answer you.");
      ack(&reply);
      auto self = shared_from_this();
      api_.Call("conversations.open", json{{"users", cmd.user_id}}, Token::kBot,
                [self, cmd, event_id, reason = action.argument](ApiResult r) {
                  const json* channel =
                      r.ok() && r.body.contains("channel") && r.body["channel"].is_object()
                          ? &r.body["channel"]
                          : nullptr;
                  const std::string dm = channel != nullptr ? JsonString(*channel, "id") : "";
                  if (dm.empty()) {
                    spdlog::warn("slack.human.no_dm user={} outcome={} error=\"{}\"", cmd.user_id,
                                 OutcomeName(r.outcome), r.error);
                    self->api_.Call("chat.postEphemeral",
                                    json{{"channel", cmd.channel_id},
                                         {"user", cmd.user_id},
                                         {"text",
                                          "Sorry, I could not open a direct message with you just "
                                          "now, so I could not pass you to a person. Please try "
                                          "again, or write to me directly: \"talk to a human\"."}},
                                    Token::kBot, [](ApiResult) {});
                    return;
                  }
                  self->RequestHuman(cmd, dm, event_id, reason);
                });
      return;
    }
    case SlashAction::Kind::kForget: {
      auto shared_ack = std::make_shared<AckFn>(std::move(ack));
      control_.Forget(conversation, [shared_ack](Result<size_t> removed) {
        json reply = removed.ok()
                         ? Ephemeral("Done: I forgot this conversation (" +
                                     std::to_string(*removed) + " messages).")
                         : Ephemeral("Sorry, I could not forget this conversation just now; "
                                     "please try again.");
        (*shared_ack)(&reply);
      });
      return;
    }
    case SlashAction::Kind::kAsk:
      break;
  }
  // Access policy, as for messages.
  bool allowed = config_.allowed_users.empty() || Contains(config_.allowed_users, cmd.user_id);
  if (is_dm) {
    allowed = allowed && config_.dm_policy != config::SlackDmPolicy::kDisabled &&
              (config_.dm_policy != config::SlackDmPolicy::kAllowlist ||
               Contains(config_.dm_allowlist, cmd.user_id));
  } else if (!config_.channel_allowlist.empty()) {
    allowed = allowed && Contains(config_.channel_allowlist, cmd.channel_id);
  }
  if (!allowed) {
    events_refused_.Add();
    json reply = Ephemeral("Sorry, I'm not set up to answer your questions here.");
    ack(&reply);
    return;
  }
  json reply = Ephemeral("Looking that up…");
  ack(&reply);

  InboundMessage m;
  m.platform = kPlatform;
  {
    std::lock_guard<std::mutex> lock(mu_);
    m.workspace = bot_.team_id;
  }
  if (!cmd.team_id.empty()) m.workspace = cmd.team_id;
  m.channel = conversation.channel;
  m.thread = conversation.thread;
  m.user = cmd.user_id;
  m.text = NormalizeText(action.argument, "");
  m.mentions_bot = true;
  m.is_direct = true;
  m.event_id = "slash:" + envelope.envelope_id;
  m.timestamp_ms = clock_.NowMs();
  m.reply_route = EncodeRoute(
      IsAllowedResponseUrl(cmd.response_url, api_.base_url()) ? cmd.response_url : "",
      cmd.user_id);
  const std::string channel = cmd.channel_id, user = cmd.user_id;
  auto self = shared_from_this();
  sink_->OnInbound(std::move(m), IntakeOptions{/*durable=*/true},
                   [self, channel, user](IntakeResult result) {
                     if (result.status.ok() || result.status.code() == Status::Code::kAlreadyExists) {
                       return;
                     }
                     self->Refuse(channel, user,
                                  result.status.code() == Status::Code::kResourceExhausted
                                      ? "You're asking faster than I can answer; please give me "
                                        "a few seconds and ask again."
                                      : "Sorry, I can't take questions right now.");
                   });
}

void SlackAdapter::RequestHuman(const SlashCommand& cmd, const std::string& dm_channel,
                                const std::string& event_id, const std::string& reason) {
  InboundMessage m;
  m.platform = kPlatform;
  {
    std::lock_guard<std::mutex> lock(mu_);
    m.workspace = bot_.team_id;
  }
  if (!cmd.team_id.empty()) m.workspace = cmd.team_id;
  m.channel = dm_channel;
  m.user = cmd.user_id;
  // What the user typed, for the transcript; the flag, not the text, makes it a request.
  m.text = cmd.command + " human";
  if (!reason.empty()) m.text += " " + NormalizeText(reason, "");
  m.mentions_bot = true;
  m.is_direct = true;
  m.event_id = event_id;
  m.timestamp_ms = clock_.NowMs();
  m.request_human = true;
  spdlog::info("slack.human.requested user={} from={} dm={}", cmd.user_id, cmd.channel_id,
               dm_channel);
  Intake(std::move(m));
}

void SlackAdapter::Intake(InboundMessage m) {
  const std::string channel = m.channel, user = m.user;
  auto self = shared_from_this();
  auto shared = std::make_shared<InboundMessage>(std::move(m));
  WithUserName(channel, user, [self, shared, channel, user](std::string name) {
    if (shared->user_name.empty()) shared->user_name = std::move(name);
    const std::string key = shared->event_id;
    self->sink_->OnInbound(
        std::move(*shared), IntakeOptions{/*durable=*/true},
        [self, channel, user, key](IntakeResult result) {
          if (result.status.ok() || result.status.code() == Status::Code::kAlreadyExists) {
            return;
          }
          spdlog::warn("slack.intake.refused key={} error=\"{}\"", key, result.status.ToString());
          self->Refuse(channel, user,
                       result.status.code() == Status::Code::kResourceExhausted
                           ? "You're going faster than I can keep up; please give me "
                             "a few seconds and try again."
                           : "Sorry, I can't take that right now; please try again.");
        });
  });
}

bool SlackAdapter::IsAgentChannel(const std::string& channel) const {
  return !channel.empty() && Contains(desk_.agent_channels, channel);
}

void SlackAdapter::SetDesk(DeskLink link) { desk_ = std::move(link); }

void SlackAdapter::WithUserName(const std::string& channel, const std::string& user,
                                std::function<void(std::string)> fn) {
  if (!desk_.active || user.empty()) return fn("");
  bool lookup = false;
  {
    std::lock_guard<std::mutex> lock(names_mu_);
    auto waiting = name_waiters_.find(channel);
    if (waiting == name_waiters_.end()) {
      auto known = names_.find(user);
      if (known != names_.end() && known->second.expires_ms > clock_.NowMs()) {
        fn(known->second.name);  // under names_mu_: nothing of this channel runs meanwhile
        return;
      }
      names_.erase(user);  // expired: the drain must wait for the new lookup
      waiting = name_waiters_.emplace(channel, std::deque<NameWaiter>()).first;
    }
    waiting->second.push_back(NameWaiter{user, std::move(fn)});
    lookup = names_.count(user) == 0 && name_lookups_.insert(user).second;
  }
  if (lookup) LookUpName(user);
}

void SlackAdapter::LookUpName(const std::string& user) {
  auto self = shared_from_this();
  api_.CallForm("users.info", {{"user", user}}, Token::kBot, [self, user](ApiResult r) {
    std::string name;
    if (r.ok() && r.body.contains("user") && r.body["user"].is_object()) {
      const json& u = r.body["user"];
      if (const json* profile =
              u.contains("profile") && u["profile"].is_object() ? &u["profile"] : nullptr) {
        name = JsonString(*profile, "display_name");
        if (name.empty()) name = JsonString(*profile, "real_name");
      }
      if (name.empty()) name = JsonString(u, "real_name");
      if (name.empty()) name = JsonString(u, "name");
    } else {
      spdlog::debug("slack.users_info.failed user={} outcome={} error=\"{}\"", user,
                    OutcomeName(r.outcome), r.error);
    }
    {
      std::lock_guard<std::mutex> lock(self->names_mu_);
      if (self->names_.size() >= kNameCacheLimit) self->names_.clear();
      const int64_t ttl = name.empty() ? kUnknownNameTtlMs : kNameTtlMs;
      self->names_[user] = Name{name, self->clock_.NowMs() + ttl};
      self->name_lookups_.erase(user);
    }
    self->DrainNameWaiters();
  });
}

void SlackAdapter::DrainNameWaiters() {
  std::vector<std::string> lookups;
  {
    std::lock_guard<std::mutex> lock(names_mu_);
    for (auto it = name_waiters_.begin(); it != name_waiters_.end();) {
      std::deque<NameWaiter>& q = it->second;
      while (!q.empty()) {
        auto known = names_.find(q.front().user);
        if (known == names_.end()) {  // dropped from the cache meanwhile: look it up again
          if (name_lookups_.insert(q.front().user).second) lookups.push_back(q.front().user);
          break;
        }
        NameWaiter w = std::move(q.front());
        q.pop_front();
        w.fn(known->second.name);  // under names_mu_: keeps the channel's order
      }
      it = q.empty() ? name_waiters_.erase(it) : std::next(it);
    }
  }
  for (const std::string& user : lookups) LookUpName(user);
}

void SlackAdapter::OnBlockAction(const Envelope& envelope) {
  auto parsed = ParseBlockActions(envelope.payload);
  if (!parsed.ok()) {
    metrics_.GetCounter("parley_slack_malformed_payloads_total",
                        "Slack payloads that did not parse", "type=\"interactive\"")
        .Add();
    spdlog::debug("slack.interactive.ignored error=\"{}\"", parsed.status().message());
    return;
  }
  const BlockAction action = std::move(parsed).value();
  if (IsMessageAction(action)) {
    // A button of OutboundMessage::actions (e.g. Claim on a desk card): the user "says" its value
    // where the button is.
    if (action.channel_id.empty() || action.value.empty()) return;
    const bool agents = IsAgentChannel(action.channel_id);
    const bool is_dm = action.channel_id[0] == 'D';
    const bool allowed =
        agents ||
        ((config_.allowed_users.empty() || Contains(config_.allowed_users, action.user_id)) &&
         (is_dm || config_.channel_allowlist.empty() ||
          Contains(config_.channel_allowlist, action.channel_id)));
    if (!allowed) {
      events_refused_.Add();
      Refuse(action.channel_id, action.user_id, "Sorry, I'm not set up to take that here.");
      return;
    }
    InboundMessage m = MessageFromAction(action, envelope.envelope_id);
    spdlog::info("slack.action id={} user={} channel={} key={}", action.action_id, action.user_id,
                 action.channel_id, m.event_id);
    Intake(std::move(m));
    return;
  }
  const bool helpful = action.action_id == kFeedbackHelpfulAction;
  if (!helpful && action.action_id != kFeedbackUnhelpfulAction) {
    spdlog::debug("slack.interactive.unknown_action action_id={}", action.action_id);
    return;
  }
  if (action.value.empty()) return;
  (helpful ? feedback_helpful_ : feedback_unhelpful_).Add();
  spdlog::info("slack.feedback message={} user={} helpful={}", action.value, action.user_id,
               helpful);
  store::WriteBatch batch;
  batch.Put(store::keys::Feedback(action.value, kPlatform, action.user_id),
            DumpJson(json{{"helpful", helpful},
                          {"channel", action.channel_id},
                          {"message_ts", action.message_ts},
                          {"at_ms", clock_.NowMs()}}));
  committer_.Submit(std::move(batch), nullptr);
  if (!action.channel_id.empty()) {
    control_.OnFeedback(ConversationKey{kPlatform, action.channel_id, action.thread_ts},
                        action.user_id, action.value, helpful);
  }
  Refuse(action.channel_id, action.user_id,
         helpful ? "Thanks, glad it helped." : "Thanks for telling me; I'll use it to improve.");
}

// ---------------------------------------------------------------------------------------------
// Outbound

bool SlackAdapter::DeliversDurably(const OutboundMessage&) const { return true; }

void SlackAdapter::Send(OutboundMessage message, DeliveryCallback done) {
  if (message.conversation.channel.empty()) {
    if (done) done(Status::InvalidArgument("no Slack channel"));
    return;
  }
  Delivery d;
  d.id = message.id.empty() ? NewId() : message.id;
  d.message = std::move(message);
  d.message.id = d.id;
  if (!d.message.in_reply_to.empty()) {
    if (config_.stream) {
      // The complete reply is here: no more partial edits; partials still arriving are late.
      std::lock_guard<std::mutex> lock(mu_);
      if (finals_.insert(d.id).second) {
        finals_order_.push_back(d.id);
        if (finals_order_.size() > kFinalsRemembered) {
          finals_.erase(finals_order_.front());
          finals_order_.pop_front();
        }
      }
      auto it = streams_.find(d.id);
      if (it != streams_.end()) {
        if (it->second.pending) stream_partials_dropped_.Add();
        it->second.pending = false;
        it->second.final_queued = true;
      }
    }
    // A reply: the router wrote it to the outbox with the turn.
    Enqueue(std::move(d));
    if (done) done(Status::Ok());
    return;
  }
  // The bot speaks first: into the outbox, then out.
  store::OutboxEntry entry;
  entry.id = d.id;
  entry.platform = kPlatform;
  entry.payload = json(d.message).dump();
  entry.created_ms = clock_.NowMs();
  store::WriteBatch batch;
  outbox_.Put(batch, entry);
  auto self = shared_from_this();
  auto shared = std::make_shared<Delivery>(std::move(d));
  committer_.Submit(std::move(batch), [self, shared, done](Status status) {
    boost::asio::post(self->io_, [self, shared, done, status] {
      if (status.ok()) self->Enqueue(std::move(*shared));
      if (done) done(status);
    });
  });
}

void SlackAdapter::Enqueue(Delivery delivery) {
  const std::string channel = delivery.message.conversation.channel;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!queued_ids_.insert(delivery.id).second) return;  // already queued (resume + replay)
    ChannelQueue& q = channels_[channel];
    if (q.refilled_ms == 0) {
      q.tokens = config_.post_burst;
      q.refilled_ms = clock_.NowMs();
    }
    q.queue.push_back(std::move(delivery));
  }
  replies_pending_.Add(1);
  auto self = shared_from_this();
  boost::asio::post(io_, [self, channel] { self->Pump(channel); });
}

void SlackAdapter::Pump(const std::string& channel) {
  int64_t wait_ms = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = channels_.find(channel);
    if (it == channels_.end()) return;
    ChannelQueue& q = it->second;
    if (q.busy || q.queue.empty() || stopped_) return;
    const int64_t now = clock_.NowMs();
    // The final edit of a streamed reply's placeholder posts nothing: no token, no post pause.
    const bool post = NeedsPostLocked(q.queue.front());
    if (config_.post_rate_per_channel > 0) {
      q.tokens = std::min<double>(config_.post_burst,
                                  q.tokens + static_cast<double>(now - q.refilled_ms) / 1000.0 *
                                                 config_.post_rate_per_channel);
      q.refilled_ms = now;
      if (post && q.tokens < 1.0) {
        wait_ms = static_cast<int64_t>((1.0 - q.tokens) / config_.post_rate_per_channel * 1000) + 1;
      }
    }
    if (post) wait_ms = std::max(wait_ms, api_.PausedForMs("chat.postMessage/" + channel));
    q.busy = true;
    if (wait_ms == 0) {
      if (post) q.tokens -= 1.0;
      q.in_flight = true;
    }
  }
  auto self = shared_from_this();
  if (wait_ms > 0) {
    After(wait_ms, [self, channel] {
      {
        std::lock_guard<std::mutex> lock(self->mu_);
        self->channels_[channel].busy = false;
      }
      self->Pump(channel);
    });
    return;
  }
  Attempt(channel);
}

void SlackAdapter::Attempt(const std::string& channel) {
  Delivery* d = nullptr;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ChannelQueue& q = channels_[channel];
    if (stopped_ || q.queue.empty()) {
      q.busy = false;  // stays in the outbox for the next start
      return;
    }
    q.in_flight = true;
    d = &q.queue.front();  // stays valid: only this channel's chain pops the front
  }
  if (d->placeholder) return AttemptPlaceholder(channel, *d);
  if (!d->message.reply_route.empty()) {
    json j = json::parse(d->message.reply_route, nullptr, false);
    if (j.is_object()) {
      return AttemptResponseUrl(channel, *d,
                                SlashRoute{j.value("response_url", ""), j.value("user", "")});
    }
  }

  std::string placeholder_ts;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = streams_.find(d->id);
    if (it != streams_.end() && d->parts_done == 0) {
      Stream& stream = it->second;
      if (stream.placeholder == Stream::Placeholder::kUncertain && !d->verified) {
        d->resumed = true;  // the placeholder may be there: look first, as after a crash
      } else if (stream.placeholder == Stream::Placeholder::kPosted) {
        if (stream.edit_in_flight) {
          // An older partial edit must not land after the final one: wait for it.
          stream.final_waiting = true;
          channels_[channel].in_flight = false;
          return;  // the edit's answer resumes this delivery
        }
        placeholder_ts = stream.ts;
      }
    }
  }
  if (d->resumed && !d->verified) return Verify(channel, *d);
  const std::string thread_ts = d->message.conversation.thread;
  // No feedback asked on hand-off messages (the desk's acknowledgements and notices), nor in
  // agents' channels (the desk's answers to agents).
  const bool buttons = config_.feedback_buttons && !d->message.in_reply_to.empty() &&
                       !d->message.escalated && !IsAgentChannel(channel);
  std::vector<std::string> bodies = BuildPostMessageText(d->message, channel, thread_ts, buttons);
  if (d->parts_done >= static_cast<int>(bodies.size())) return Complete(channel, Status::Ok());
  if (!placeholder_ts.empty()) {
    return AttemptFinalEdit(channel, *d, json::parse(bodies[0]), placeholder_ts, bodies.size());
  }
  auto self = shared_from_this();
  api_.CallWithJsonText(
      "chat.postMessage", std::move(bodies[d->parts_done]), Token::kBot,
      [self, channel, d, thread_ts, parts = bodies.size()](ApiResult r) {
        switch (r.outcome) {
          case Outcome::kOk: {
            if (d->parts_done == 0 && r.body.contains("ts") && r.body["ts"].is_string()) {
              self->ReportDelivered(channel, *d, r.body["ts"].get<std::string>());
            }
            d->parts_done += 1;
            d->attempts = 0;
            if (d->parts_done >= static_cast<int>(parts)) {
              return self->Complete(channel, Status::Ok());
            }
            return self->PartDone(channel);
          }
          case Outcome::kRateLimited:
            return self->Retry(channel, r.retry_after_ms, "ratelimited");
          case Outcome::kTransient:
            if (++d->attempts >= kMaxTransientAttempts) {
              return self->Complete(channel, Status::Unavailable(r.error));
            }
            return self->Retry(channel, net::BackoffDelayMs(kRetryBackoff, d->attempts - 1),
                               r.error);
          case Outcome::kAuth:
          case Outcome::kRefused:
            return self->Complete(channel, Status::FailedPrecondition(r.error));
        }
      },
      "chat.postMessage/" + channel);
}

void SlackAdapter::ReportDelivered(const std::string& channel, Delivery& d, const std::string& ts) {
  if (ts.empty()) return;
  d.first_ts = ts;
  if (d.message.conversation.thread.empty() && !channel.empty() && channel[0] != 'D') {
    // A root post in a channel (e.g. an escalation card): its thread is the bot's from now on.
    std::lock_guard<std::mutex> lock(mu_);
    threads_.Put(channel + "/" + ts, true, 0);
  }
  DeliveryListener* listener = delivery_listener();
  if (listener == nullptr) return;
  DeliveryReceipt receipt;
  receipt.message_id = d.id;
  receipt.conversation = ConversationKey{kPlatform, channel, d.message.conversation.thread};
  receipt.platform_message_id = ts;
  listener->OnDelivered(receipt);
}

void SlackAdapter::Verify(const std::string& channel, Delivery& d) {
  // Finds the parts of this reply already in the conversation by their metadata
  // (event_type parley_reply, event_payload.message_id), so none is posted twice.
  const std::string thread_ts = d.message.conversation.thread;
  std::vector<std::pair<std::string, std::string>> args = {
      {"channel", channel}, {"include_all_metadata", "true"}, {"limit", "200"}};
  std::string method = "conversations.replies";
  if (!thread_ts.empty()) {
    args.emplace_back("ts", thread_ts);
  } else {
    method = "conversations.history";
    const int64_t oldest_s = std::max<int64_t>(0, d.created_ms / 1000 - 60);
    args.emplace_back("oldest", std::to_string(oldest_s) + ".000000");
  }
  Delivery* dp = &d;
  auto self = shared_from_this();
  api_.CallForm(method, args, Token::kBot, [self, channel, dp, method](ApiResult r) {
    if (r.outcome == Outcome::kRateLimited) {
      return self->Retry(channel, r.retry_after_ms, method + " ratelimited");
    }
    if (r.outcome == Outcome::kTransient && ++dp->attempts < 3) {
      return self->Retry(channel, net::BackoffDelayMs(kRetryBackoff, dp->attempts - 1), r.error);
    }
    dp->attempts = 0;
    dp->verified = true;
    if (!r.ok()) {
      spdlog::warn("slack.reply.unverified id={} channel={} method={} error=\"{}\" (posting; a "
                   "part Slack already has may appear twice)",
                   dp->id, channel, method, r.error);
      return self->Attempt(channel);
    }
    int confirmed = 0;
    std::string placeholder_ts;  // a streamed placeholder of this reply (parley_partial)
    std::string first_ts;        // the reply's first part, when Slack has it already
    const json& messages = r.body.contains("messages") ? r.body["messages"] : json();
    if (messages.is_array()) {
      for (const json& m : messages) {
        if (!m.is_object() || !m.contains("metadata") || !m["metadata"].is_object()) continue;
        const json& meta = m["metadata"];
        const std::string type = meta.value("event_type", "");
        if (type != kReplyEventType && type != kPartialEventType) continue;
        const json& payload = meta.contains("event_payload") ? meta["event_payload"] : json();
        if (!payload.is_object() || payload.value("message_id", "") != dp->id) continue;
        if (type == kPartialEventType) {
          const json& ts = m.contains("ts") ? m["ts"] : json();
          if (ts.is_string() && !ts.get<std::string>().empty()) {
            placeholder_ts = ts.get<std::string>();
          }
          continue;
        }
        const json& part = payload.contains("part") ? payload["part"] : json();
        if (part.is_number_integer()) confirmed = std::max(confirmed, part.get<int>() + 1);
        if (part.is_number_integer() && part.get<int>() == 0 && m.contains("ts") &&
            m["ts"].is_string()) {
          first_ts = m["ts"].get<std::string>();
        }
      }
    }
    if (confirmed > dp->parts_done) {
      spdlog::info("slack.reply.already_posted id={} channel={} parts={}", dp->id, channel,
                   confirmed);
      dp->parts_done = confirmed;
    }
    if (!first_ts.empty()) self->ReportDelivered(channel, *dp, first_ts);
    {
      std::lock_guard<std::mutex> lock(self->mu_);
      auto it = self->streams_.find(dp->id);
      if (!placeholder_ts.empty()) {
        Stream& stream = self->streams_[dp->id];
        stream.channel = channel;
        stream.thread_ts = dp->message.conversation.thread;
        stream.final_queued = true;
        stream.pending = false;
        stream.touched_ms = self->clock_.NowMs();
        if (dp->parts_done == 0) {
          // Replace it with the reply instead of posting a second message.
          spdlog::info("slack.reply.placeholder_found id={} channel={} ts={}", dp->id, channel,
                       placeholder_ts);
          stream.placeholder = Stream::Placeholder::kPosted;
          stream.ts = placeholder_ts;
        } else {
          // The reply is there already: the placeholder is a leftover.
          stream.placeholder = Stream::Placeholder::kFailed;
          stream.stale_ts = placeholder_ts;
        }
      } else if (it != self->streams_.end() &&
                 it->second.placeholder == Stream::Placeholder::kUncertain) {
        it->second.placeholder = Stream::Placeholder::kFailed;  // it never reached Slack
      }
    }
    self->Attempt(channel);
  });
}

void SlackAdapter::AttemptResponseUrl(const std::string& channel, Delivery& d,
                                      const SlashRoute& route) {
  std::vector<json> bodies = BuildPostMessage(d.message, "", "", false);
  if (d.parts_done >= static_cast<int>(bodies.size())) return Complete(channel, Status::Ok());
  json body = std::move(bodies[d.parts_done]);
  Delivery* dp = &d;
  auto self = shared_from_this();
  auto on_result = [self, channel, dp, parts = bodies.size()](ApiResult r) {
    switch (r.outcome) {
      case Outcome::kOk:
        dp->parts_done += 1;
        dp->attempts = 0;
        if (dp->parts_done >= static_cast<int>(parts)) return self->Complete(channel, Status::Ok());
        return self->PartDone(channel);
      case Outcome::kRateLimited:
        return self->Retry(channel, r.retry_after_ms, "ratelimited");
      case Outcome::kTransient:
        if (++dp->attempts >= kMaxTransientAttempts) {
          return self->Complete(channel, Status::Unavailable(r.error));
        }
        return self->Retry(channel, net::BackoffDelayMs(kRetryBackoff, dp->attempts - 1), r.error);
      default:
        return self->Complete(channel, Status::FailedPrecondition(r.error));
    }
  };
  if (!route.response_url.empty()) {
    json hook{{"response_type", "ephemeral"},
              {"text", body.value("text", "")},
              {"blocks", body.contains("blocks") ? body["blocks"] : json::array()}};
    api_.PostResponseUrl(route.response_url, hook, std::move(on_result));
    return;
  }
  // No usable response_url: an ephemeral message in the channel.
  json eph{{"channel", channel},
           {"user", route.user},
           {"text", body.value("text", "")},
           {"blocks", body.contains("blocks") ? body["blocks"] : json::array()}};
  api_.Call("chat.postEphemeral", eph, Token::kBot, std::move(on_result));
}

void SlackAdapter::PartDone(const std::string& channel) {
  // Record progress through a multi-part reply so a restart resends only the rest.
  store::OutboxEntry entry;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ChannelQueue& q = channels_[channel];
    const Delivery& d = q.queue.front();
    json payload = d.message;
    payload["slack_parts_done"] = d.parts_done;
    entry.id = d.id;
    entry.platform = kPlatform;
    entry.payload = payload.dump();
    entry.created_ms = clock_.NowMs();
    q.busy = false;
    q.in_flight = false;
  }
  store::WriteBatch batch;
  outbox_.Put(batch, entry);
  committer_.Submit(std::move(batch), nullptr);
  Pump(channel);
}

void SlackAdapter::Retry(const std::string& channel, int64_t delay_ms, const std::string& why) {
  std::string id;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ChannelQueue& q = channels_[channel];
    q.in_flight = false;
    id = q.queue.front().id;
  }
  spdlog::warn("slack.reply.retry id={} channel={} in_ms={} error=\"{}\"", id, channel, delay_ms,
               why);
  auto self = shared_from_this();
  After(delay_ms, [self, channel] { self->Attempt(channel); });
}

void SlackAdapter::Complete(const std::string& channel, Status outcome) {
  Delivery d;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = channels_.find(channel);
    ChannelQueue& q = it->second;
    d = std::move(q.queue.front());
    q.queue.pop_front();
    q.busy = false;
    q.in_flight = false;
    queued_ids_.erase(d.id);
    if (q.queue.empty() && config_.post_rate_per_channel <= 0) channels_.erase(it);
  }
  replies_pending_.Add(-1);
  EndStream(d.id, outcome.ok());
  if (outcome.ok()) {
    replies_delivered_.Add();
    spdlog::info("slack.reply.sent id={} turn={} channel={}", d.id,
                 d.message.turn_id.empty() ? "-" : d.message.turn_id, channel);
  } else {
    replies_dropped_.Add();
    spdlog::error("slack.reply.dropped id={} turn={} channel={} error=\"{}\"", d.id,
                  d.message.turn_id.empty() ? "-" : d.message.turn_id, channel,
                  outcome.message());
  }
  // Not synced (no fsync of its own): a removal lost to a power failure only makes the next
  // start ask Slack whether the reply is there (Verify), which finds it.
  store::WriteBatch batch;
  outbox_.Remove(batch, kPlatform, d.id);
  if (d.parts_done > 0 && d.message.reply_route.empty()) {
    RememberThread(channel, d.message.conversation.thread, batch);
    // A root post in a channel starts a thread of the bot's (durable with the outbox removal).
    if (d.message.conversation.thread.empty() && !channel.empty() && channel[0] != 'D') {
      RememberThread(channel, d.first_ts, batch);
    }
  }
  committer_.Submit(
      std::move(batch),
      [id = d.id](Status written) {
        if (!written.ok()) {
          spdlog::error("slack.outbox.remove_failed id={} error=\"{}\"", id, written.ToString());
        }
      },
      /*sync=*/false);
  auto [reply_channel, ts] = SplitDedupeKey(d.message.in_reply_to);
  if (!ts.empty()) SignalWorking(reply_channel, ts, false);
  if (d.done) d.done(outcome);
  auto self = shared_from_this();
  boost::asio::post(io_, [self, channel] { self->Pump(channel); });
}

// ---------------------------------------------------------------------------------------------
// Streaming

void SlackAdapter::SendPartial(const OutboundMessage& partial) {
  if (!config_.stream || stopping_ || partial.id.empty() || partial.in_reply_to.empty() ||
      !partial.reply_route.empty() || partial.conversation.channel.empty()) {
    return;
  }
  const int64_t now = clock_.NowMs();
  bool first = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (finals_.count(partial.id) > 0) {
      stream_partials_dropped_.Add();  // the complete reply is on its way
      return;
    }
    auto it = streams_.find(partial.id);
    if (it == streams_.end()) {
      if (partial.text.find_first_not_of(" \t\r\n") == std::string::npos) return;
      SweepStreamsLocked(now);
      if (streams_.size() >= kMaxStreams) {
        stream_partials_dropped_.Add();
        return;
      }
      Stream& stream = streams_[partial.id];
      stream.channel = partial.conversation.channel;
      stream.thread_ts = partial.conversation.thread;
      stream.text = partial.text;
      stream.pending = true;
      stream.touched_ms = now;
      first = true;
    } else {
      Stream& stream = it->second;
      if (stream.final_queued) return;
      if (stream.pending) stream_partials_dropped_.Add();  // coalesced: never shown
      stream.text = partial.text;
      stream.pending = true;
      stream.touched_ms = now;
    }
  }
  if (first) return EnqueuePlaceholder(partial);
  ScheduleEdit(partial.id);
}

void SlackAdapter::SweepStreamsLocked(int64_t now_ms) {
  if (now_ms - swept_ms_ < 60'000) return;
  swept_ms_ = now_ms;
  for (auto it = streams_.begin(); it != streams_.end();) {
    const Stream& stream = it->second;
    if (now_ms - stream.touched_ms > kStreamIdleMs && !stream.edit_in_flight &&
        !stream.final_queued) {
      it = streams_.erase(it);  // the final never came (a queued placeholder finds it gone)
    } else {
      ++it;
    }
  }
}

void SlackAdapter::EnqueuePlaceholder(const OutboundMessage& partial) {
  const std::string channel = partial.conversation.channel;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ChannelQueue& q = channels_[channel];
    if (q.refilled_ms == 0) {
      q.tokens = config_.post_burst;
      q.refilled_ms = clock_.NowMs();
    }
    Delivery d;
    d.id = partial.id;
    d.message.id = partial.id;
    d.message.conversation = partial.conversation;
    d.message.in_reply_to = partial.in_reply_to;
    d.placeholder = true;
    q.queue.push_back(std::move(d));
  }
  auto self = shared_from_this();
  boost::asio::post(io_, [self, channel] { self->Pump(channel); });
}

bool SlackAdapter::NeedsPostLocked(const Delivery& d) const {
  auto it = streams_.find(d.id);
  if (d.placeholder) return it != streams_.end() && !it->second.final_queued;
  if (!d.message.reply_route.empty() || it == streams_.end() || d.parts_done != 0) return true;
  return it->second.placeholder != Stream::Placeholder::kPosted || (d.resumed && !d.verified);
}

void SlackAdapter::AttemptPlaceholder(const std::string& channel, Delivery& d) {
  json body;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = streams_.find(d.id);
    if (it == streams_.end() || it->second.final_queued || stopping_) {
      if (it != streams_.end() && it->second.placeholder == Stream::Placeholder::kQueued) {
        it->second.placeholder = Stream::Placeholder::kFailed;  // not needed any more
      }
    } else {
      Stream& stream = it->second;
      OutboundMessage partial;
      partial.id = d.id;
      partial.text = stream.text;
      body = BuildPartialMessage(partial, channel, stream.thread_ts);
      stream.pending = false;
    }
  }
  if (body.is_null()) return PlaceholderDone(channel);
  Delivery* dp = &d;
  auto self = shared_from_this();
  api_.Call(
      "chat.postMessage", body, Token::kBot,
      [self, channel, dp](ApiResult r) {
        const std::string id = dp->id;
        bool edit = false;
        bool retry = false;
        {
          std::lock_guard<std::mutex> lock(self->mu_);
          auto it = self->streams_.find(id);
          if (it == self->streams_.end()) {
            // Forgotten meanwhile (idle sweep): nothing to update.
          } else {
            Stream& stream = it->second;
            const json& ts = r.ok() && r.body.contains("ts") ? r.body["ts"] : json();
            if (r.ok() && ts.is_string() && !ts.get<std::string>().empty()) {
              self->stream_placeholders_.Add();
              stream.placeholder = Stream::Placeholder::kPosted;
              stream.ts = ts.get<std::string>();
              stream.next_edit_ms = self->clock_.NowMs() + self->config_.stream_interval_ms;
              edit = stream.pending && !stream.final_queued;
            } else if (r.outcome == Outcome::kRateLimited && !stream.final_queued &&
                       !self->stopping_) {
              // Not posted: the channel is paused anyway; post it (with the latest text) after.
              if (!stream.pending) stream.pending = true;
              retry = true;
            } else if (r.outcome == Outcome::kTransient) {
              stream.placeholder = Stream::Placeholder::kUncertain;
              spdlog::warn("slack.stream.placeholder_uncertain id={} channel={} error=\"{}\"", id,
                           channel, r.error);
            } else {
              stream.placeholder = Stream::Placeholder::kFailed;
              if (!r.ok()) {
                spdlog::warn("slack.stream.placeholder_failed id={} channel={} error=\"{}\"", id,
                             channel, r.error);
              }
            }
          }
        }
        if (retry) return self->Retry(channel, r.retry_after_ms, "ratelimited");
        self->PlaceholderDone(channel);
        if (edit) self->ScheduleEdit(id);
      },
      "chat.postMessage/" + channel);
}

void SlackAdapter::PlaceholderDone(const std::string& channel) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = channels_.find(channel);
    if (it == channels_.end()) return;
    ChannelQueue& q = it->second;
    q.queue.pop_front();
    q.busy = false;
    q.in_flight = false;
    if (q.queue.empty() && config_.post_rate_per_channel <= 0) channels_.erase(it);
  }
  auto self = shared_from_this();
  boost::asio::post(io_, [self, channel] { self->Pump(channel); });
}

void SlackAdapter::ScheduleEdit(const std::string& id) {
  json body;
  int64_t wait_ms = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = streams_.find(id);
    if (it == streams_.end() || stopping_) return;
    Stream& stream = it->second;
    if (stream.placeholder != Stream::Placeholder::kPosted || !stream.pending ||
        stream.final_queued || stream.edits_stopped || stream.edit_in_flight ||
        stream.timer_armed) {
      return;
    }
    const int64_t now = clock_.NowMs();
    wait_ms = std::max(stream.next_edit_ms - now, api_.PausedForMs("chat.update"));
    // The workspace-wide budget of partial edits (chat.update is Tier 3).
    const double per_minute = config_.stream_edits_per_minute;
    const double burst = std::min<double>(kMaxEditBurst, per_minute);
    if (edit_refilled_ms_ == 0) {
      edit_tokens_ = burst;
      edit_refilled_ms_ = now;
    }
    edit_tokens_ = std::min(
        burst, edit_tokens_ + static_cast<double>(now - edit_refilled_ms_) / 60'000.0 * per_minute);
    edit_refilled_ms_ = now;
    if (wait_ms <= 0 && edit_tokens_ < 1.0) {
      wait_ms = static_cast<int64_t>((1.0 - edit_tokens_) / per_minute * 60'000.0) + 1;
    }
    if (wait_ms > 0) {
      stream.timer_armed = true;
    } else {
      edit_tokens_ -= 1.0;
      OutboundMessage partial;
      partial.id = id;
      partial.text = stream.text;
      body = UpdateBody(BuildPartialMessage(partial, stream.channel, stream.thread_ts), stream.ts);
      stream.pending = false;
      stream.edit_in_flight = true;
      stream.next_edit_ms = now + config_.stream_interval_ms;
    }
  }
  auto self = shared_from_this();
  if (wait_ms > 0) {
    After(wait_ms, [self, id] {
      {
        std::lock_guard<std::mutex> lock(self->mu_);
        auto it = self->streams_.find(id);
        if (it == self->streams_.end()) return;
        it->second.timer_armed = false;
      }
      self->ScheduleEdit(id);
    });
    return;
  }
  api_.Call("chat.update", body, Token::kBot, [self, id](ApiResult r) {
    std::string resume_channel;
    bool again = false;
    {
      std::lock_guard<std::mutex> lock(self->mu_);
      auto it = self->streams_.find(id);
      if (it == self->streams_.end()) return;
      Stream& stream = it->second;
      stream.edit_in_flight = false;
      switch (r.outcome) {
        case Outcome::kOk:
          self->stream_edits_partial_.Add();
          break;
        case Outcome::kRateLimited:  // chat.update is paused for Retry-After: try again after
        case Outcome::kTransient:
          if (!stream.pending && !stream.final_queued) stream.pending = true;
          break;
        case Outcome::kAuth:
        case Outcome::kRefused:
          // e.g. message_not_found (deleted), cant_update_message, edit_window_closed: the
          // final tries once more and falls back to a new post.
          stream.edits_stopped = true;
          spdlog::warn("slack.stream.edit_refused id={} channel={} error=\"{}\"", id,
                       stream.channel, r.error);
          break;
      }
      if (stream.final_waiting) {
        stream.final_waiting = false;
        resume_channel = stream.channel;
      } else {
        again = stream.pending && !stream.final_queued && !stream.edits_stopped;
      }
    }
    if (!resume_channel.empty()) return self->Attempt(resume_channel);
    if (again) self->ScheduleEdit(id);
  });
}

void SlackAdapter::AttemptFinalEdit(const std::string& channel, Delivery& d, const json& body,
                                    const std::string& ts, size_t parts) {
  if (const int64_t paused = api_.PausedForMs("chat.update"); paused > 0) {
    return Retry(channel, paused, "chat.update ratelimited");
  }
  Delivery* dp = &d;
  auto self = shared_from_this();
  api_.Call("chat.update", UpdateBody(body, ts), Token::kBot,
            [self, channel, dp, ts, parts](ApiResult r) {
              switch (r.outcome) {
                case Outcome::kOk:
                  self->stream_edits_final_.Add();
                  self->ReportDelivered(channel, *dp, ts);
                  dp->parts_done = 1;
                  dp->attempts = 0;
                  if (dp->parts_done >= static_cast<int>(parts)) {
                    return self->Complete(channel, Status::Ok());
                  }
                  return self->PartDone(channel);
                case Outcome::kRateLimited:
                  return self->Retry(channel, r.retry_after_ms, "chat.update ratelimited");
                case Outcome::kTransient:
                  if (++dp->attempts >= kMaxTransientAttempts) {
                    return self->Complete(channel, Status::Unavailable(r.error));
                  }
                  return self->Retry(channel, net::BackoffDelayMs(kRetryBackoff, dp->attempts - 1),
                                     r.error);
                case Outcome::kAuth:
                  return self->Complete(channel, Status::FailedPrecondition(r.error));
                case Outcome::kRefused: {
                  // The placeholder cannot become the answer: post the answer anew and remove
                  // the placeholder once it is delivered (unless it is gone already).
                  self->stream_fallbacks_.Add();
                  spdlog::warn(
                      "slack.stream.final_edit_refused id={} channel={} error=\"{}\" "
                      "(posting the answer instead)",
                      dp->id, channel, r.error);
                  {
                    std::lock_guard<std::mutex> lock(self->mu_);
                    auto it = self->streams_.find(dp->id);
                    if (it != self->streams_.end()) {
                      it->second.placeholder = Stream::Placeholder::kFailed;
                      if (r.error != "message_not_found") it->second.stale_ts = ts;
                    }
                    dp->attempts = 0;
                    // Back through the queue's pacing: this time it is a post.
                    ChannelQueue& q = self->channels_[channel];
                    q.busy = false;
                    q.in_flight = false;
                  }
                  return self->Pump(channel);
                }
              }
            });
}

void SlackAdapter::EndStream(const std::string& id, bool delivered) {
  Stream stream;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = streams_.find(id);
    if (it == streams_.end()) return;
    stream = std::move(it->second);
    streams_.erase(it);
  }
  if (!delivered || stream.stale_ts.empty()) return;
  const std::string channel = stream.channel, ts = stream.stale_ts;
  api_.Call("chat.delete", json{{"channel", channel}, {"ts", ts}}, Token::kBot,
            [id, channel, ts](ApiResult r) {
              if (!r.ok() && r.error != "message_not_found") {
                spdlog::warn("slack.stream.delete_failed id={} channel={} ts={} error=\"{}\"", id,
                             channel, ts, r.error);
              }
            });
}

}  // namespace parley::slack
