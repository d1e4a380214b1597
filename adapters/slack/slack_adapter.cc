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
constexpr size_t kThreadCacheLimit = 100'000;
constexpr int kStopDrainMs = 5'000;

const net::BackoffPolicy kRetryBackoff{500, 30'000};
const net::BackoffPolicy kAuthBackoff{1'000, 60'000};

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
    if (threads_.count(key) > 0) return true;
  }
  auto found = kv_.Get(store::keys::SlackThread(channel, thread_ts));
  if (!found.ok()) return false;
  std::lock_guard<std::mutex> lock(mu_);
  if (threads_.size() >= kThreadCacheLimit) threads_.clear();
  threads_.insert(key);
  return true;
}

void SlackAdapter::RememberThread(const std::string& channel, const std::string& thread_ts,
                                  store::WriteBatch& batch) {
  if (thread_ts.empty()) return;
  const std::string key = channel + "/" + thread_ts;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (threads_.size() >= kThreadCacheLimit) threads_.clear();
    threads_.insert(key);
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
  ClassifyOptions options;
  options.allow_bots = config_.allow_bots;
  options.thread_followups = config_.thread_followups;
  options.mention_required = config_.mention_required;
  options.own_bot_id = bot.bot_id;
  const bool in_thread = config_.thread_followups && !event.thread_ts.empty() &&
                         !event.channel.empty() && BotInThread(event.channel, event.thread_ts);
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
  } else if (!config_.channel_allowlist.empty() &&
             !Contains(config_.channel_allowlist, m.channel)) {
    refusal = "Sorry, I'm not set up to answer in this channel.";
  }
  if (refusal.empty() && !config_.allowed_users.empty() &&
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
  sink_->OnInbound(std::move(m), IntakeOptions{/*durable=*/true},
                   [self, channel, user, ts, thread, event_id, key](IntakeResult result) {
                     switch (result.status.code()) {
                       case Status::Code::kOk:
                         spdlog::debug("slack.event.accepted event_id={} key={}", event_id, key);
                         // The bot answers in this thread: follow-ups that arrive before its
                         // reply is confirmed count as addressed too. (The durable mark is
                         // written once the reply is posted.)
                         if (!thread.empty()) {
                           std::lock_guard<std::mutex> lock(self->mu_);
                           if (self->threads_.size() >= kThreadCacheLimit) self->threads_.clear();
                           self->threads_.insert(channel + "/" + thread);
                         }
                         self->SignalWorking(channel, ts, true);
                         return;
                       case Status::Code::kAlreadyExists:
                         self->metrics_
                             .GetCounter("parley_slack_events_total",
                                         "Slack events by what became of them",
                                         "result=\"duplicate\"")
                             .Add();
                         spdlog::debug("slack.event.duplicate event_id={} key={}", event_id, key);
                         return;
                       case Status::Code::kResourceExhausted:
                         spdlog::info("slack.event.rate_limited channel={} user={}", channel,
                                      user);
                         self->Refuse(channel, user,
                                      "You're asking faster than I can answer; please give me a "
                                      "few seconds and ask again.");
                         return;
                       default:
                         spdlog::error("slack.event.not_accepted event_id={} error=\"{}\"",
                                       event_id, result.status.ToString());
                         return;
                     }
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
      json reply = Ephemeral(
          "No human hand-off is set up for me in this workspace yet, so I can't pass you to a "
          "person. Please reach your support team directly.");
      ack(&reply);
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
    if (config_.post_rate_per_channel > 0) {
      q.tokens = std::min<double>(config_.post_burst,
                                  q.tokens + static_cast<double>(now - q.refilled_ms) / 1000.0 *
                                                 config_.post_rate_per_channel);
      q.refilled_ms = now;
      if (q.tokens < 1.0) {
        wait_ms = static_cast<int64_t>((1.0 - q.tokens) / config_.post_rate_per_channel * 1000) + 1;
      }
    }
    wait_ms = std::max(wait_ms, api_.PausedForMs("chat.postMessage/" + channel));
    q.busy = true;
    if (wait_ms == 0) {
      q.tokens -= 1.0;
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
  if (!d->message.reply_route.empty()) {
    json j = json::parse(d->message.reply_route, nullptr, false);
    if (j.is_object()) {
      return AttemptResponseUrl(channel, *d,
                                SlashRoute{j.value("response_url", ""), j.value("user", "")});
    }
  }

  if (d->resumed && !d->verified) return Verify(channel, *d);
  const std::string thread_ts = d->message.conversation.thread;
  const bool buttons = config_.feedback_buttons && !d->message.in_reply_to.empty();
  std::vector<json> bodies = BuildPostMessage(d->message, channel, thread_ts, buttons);
  if (d->parts_done >= static_cast<int>(bodies.size())) return Complete(channel, Status::Ok());
  const json& body = bodies[d->parts_done];
  auto self = shared_from_this();
  api_.Call(
      "chat.postMessage", body, Token::kBot,
      [self, channel, d, thread_ts, parts = bodies.size()](ApiResult r) {
        switch (r.outcome) {
          case Outcome::kOk: {
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
    const json& messages = r.body.contains("messages") ? r.body["messages"] : json();
    if (messages.is_array()) {
      for (const json& m : messages) {
        if (!m.is_object() || !m.contains("metadata") || !m["metadata"].is_object()) continue;
        const json& meta = m["metadata"];
        if (meta.value("event_type", "") != "parley_reply") continue;
        const json& payload = meta.contains("event_payload") ? meta["event_payload"] : json();
        if (!payload.is_object() || payload.value("message_id", "") != dp->id) continue;
        const json& part = payload.contains("part") ? payload["part"] : json();
        if (part.is_number_integer()) confirmed = std::max(confirmed, part.get<int>() + 1);
      }
    }
    if (confirmed > dp->parts_done) {
      spdlog::info("slack.reply.already_posted id={} channel={} parts={}", dp->id, channel,
                   confirmed);
      dp->parts_done = confirmed;
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

}  // namespace parley::slack
