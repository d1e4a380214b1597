#include "engine/router.h"

#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "core/ids.h"

namespace parley::engine {
namespace {

bool IsBlank(const std::string& s) {
  return s.find_first_not_of(" \t\r\n") == std::string::npos;
}

}  // namespace

struct Router::Intake {
  explicit Intake(boost::asio::io_context& io) : timer(io) {}
  enum class State {
    kDeferred,  // nothing written yet; the turn's commit may make the message durable
    kRecorded,  // the grace ended first: the inbox record is (being) written
    kCommitted  // the turn's commit makes the message durable; no record is written
  };
  std::mutex mu;
  State state = State::kDeferred;
  InboundMessage message;  // a copy, for the record
  std::function<void(IntakeResult)> accepted;
  boost::asio::steady_timer timer;
};

Router::Router(boost::asio::io_context& io, Engine& engine, store::KvStore& kv,
               store::Committer& committer, ReplySink& sink, const Clock& clock,
               RouterOptions options, MetricsRegistry& metrics)
    : io_(io),
      engine_(engine),
      committer_(committer),
      sink_(sink),
      clock_(clock),
      dedupe_(kv, clock, options.dedupe_ttl_ms),
      inbox_(kv),
      outbox_(kv),
      routes_(kv),
      user_limiter_(clock, options.policy.user_rate_per_minute, options.policy.user_burst),
      conversation_limiter_(clock, options.policy.conversation_rate_per_minute,
                            options.policy.conversation_burst),
      intake_grace_ms_(options.intake_grace_ms),
      metrics_(metrics),
      store_seconds_(metrics.GetHistogram("parley_stage_seconds",
                                          "Latency of turn stages in seconds", "stage=\"store\"")),
      total_seconds_(metrics.GetHistogram("parley_stage_seconds",
                                          "Latency of turn stages in seconds", "stage=\"total\"")) {}

void Router::OnInbound(InboundMessage message, IntakeOptions options,
                       std::function<void(IntakeResult)> accepted) {
  auto refuse = [&](Status status, const char* reason, int64_t retry_after_ms = 0) {
    metrics_
        .GetCounter("parley_inbound_refused_total", "Inbound messages refused before a turn",
                    "platform=\"" + message.platform + "\",reason=\"" + reason + "\"")
        .Add();
    if (accepted) accepted(IntakeResult{std::move(status), retry_after_ms});
    TurnDone();
  };
  bool stopping = false;
  {
    // Counted in flight from here, under the lock, so Shutdown never misses a message that is
    // being accepted.
    std::lock_guard<std::mutex> lock(mu_);
    stopping = stopping_;
    if (!stopping) in_flight_.fetch_add(1);
  }
  if (stopping) {
    metrics_
        .GetCounter("parley_inbound_refused_total", "Inbound messages refused before a turn",
                    "platform=\"" + message.platform + "\",reason=\"shutdown\"")
        .Add();
    if (accepted) accepted(IntakeResult{Status::Unavailable("shutting down"), 0});
    return;
  }
  if (IsBlank(message.text)) return refuse(Status::InvalidArgument("empty text"), "empty");
  if (message.event_id.empty()) {
    message.event_id = NewId();
    message.event_id_minted = true;
  }
  if (message.timestamp_ms == 0) message.timestamp_ms = clock_.NowMs();

  // A minted id cannot repeat: nothing to look up (a store read per message saved).
  Status claim =
      message.event_id_minted ? Status::Ok() : dedupe_.Claim(message.platform, message.event_id);
  if (!claim.ok()) {
    return refuse(claim, claim.code() == Status::Code::kAlreadyExists ? "duplicate" : "store");
  }
  int64_t wait = user_limiter_.TryAcquire(message.platform + ":" + message.user);
  if (wait == 0) wait = conversation_limiter_.TryAcquire(message.conversation().Encode());
  if (wait > 0) {
    dedupe_.Release(message.platform, message.event_id);
    return refuse(Status::ResourceExhausted("rate limited"), "rate_limited", wait);
  }
  metrics_
      .GetCounter("parley_messages_in_total", "Messages accepted for a turn, per adapter",
                  "adapter=\"" + message.platform + "\"")
      .Add();
  Job job{std::move(message), options.durable, MonotonicNanos(), nullptr};
  if (!options.durable) {
    if (accepted) accepted(IntakeResult{Status::Ok(), 0});
    Enqueue(std::move(job));
    return;
  }
  if (intake_grace_ms_ <= 0) return RecordThenEnqueue(std::move(job), std::move(accepted));
  auto intake = std::make_shared<Intake>(io_);
  intake->message = job.message;
  intake->accepted = std::move(accepted);
  job.intake = intake;
  intake->timer.expires_after(std::chrono::milliseconds(intake_grace_ms_));
  intake->timer.async_wait([this, intake](boost::system::error_code ec) {
    if (!ec) RecordIntake(intake);
  });
  Enqueue(std::move(job));
}

void Router::RecordIntake(const std::shared_ptr<Intake>& intake) {
  std::lock_guard<std::mutex> lock(intake->mu);
  if (intake->state != Intake::State::kDeferred) return;
  intake->state = Intake::State::kRecorded;
  store::WriteBatch batch;
  inbox_.Add(batch, intake->message);
  // Submitted under the lock: a commit of the turn that sees kRecorded queues its removal of
  // the record behind this write.
  committer_.Submit(std::move(batch), [intake](Status status) {
    if (!status.ok()) {
      // The turn goes on (its own commit will most likely fail too and say so to the user).
      spdlog::error("intake.error conv={} error=\"{}\"",
                    intake->message.conversation().Display(), status.ToString());
    }
    std::function<void(IntakeResult)> accepted = std::move(intake->accepted);
    if (accepted) {
      accepted(status.ok() ? IntakeResult{Status::Ok(), 0}
                           : IntakeResult{Status::Unavailable("store write failed"), 0});
    }
  });
}

void Router::RecordThenEnqueue(Job job, std::function<void(IntakeResult)> accepted) {
  store::WriteBatch batch;
  inbox_.Add(batch, job.message);
  auto shared_job = std::make_shared<Job>(std::move(job));
  committer_.Submit(std::move(batch), [this, shared_job, accepted](Status status) {
    if (!status.ok()) {
      spdlog::error("intake.error conv={} error=\"{}\"",
                    shared_job->message.conversation().Display(), status.ToString());
      dedupe_.Release(shared_job->message.platform, shared_job->message.event_id);
      if (accepted) accepted(IntakeResult{Status::Unavailable("store write failed"), 0});
      TurnDone();
      return;
    }
    if (accepted) accepted(IntakeResult{Status::Ok(), 0});
    Enqueue(std::move(*shared_job));
  });
}

Result<size_t> Router::ReplayInbox() {
  auto pending = inbox_.LoadAll();
  if (!pending.ok()) return pending.status();
  for (InboundMessage& message : *pending) {
    Status claim = dedupe_.Claim(message.platform, message.event_id);
    if (!claim.ok()) {
      // Answered before the crash but the inbox record survived (cannot happen with one atomic
      // write, but be safe): drop it.
      store::WriteBatch batch;
      inbox_.Remove(batch, message);
      committer_.Submit(std::move(batch), nullptr);
      continue;
    }
    spdlog::info("inbox.replay conv={} event={}", message.conversation().Display(),
                 message.event_id);
    in_flight_.fetch_add(1);
    Enqueue(Job{std::move(message), true, MonotonicNanos(), nullptr});
  }
  return pending->size();
}

void Router::Enqueue(Job job) {
  std::string key = job.message.conversation().Encode();
  std::lock_guard<std::mutex> lock(mu_);
  auto& queue = queues_[key];
  const bool start = queue.empty();  // else the turn running in it will start this one
  queue.push_back(std::move(job));
  if (start) {
    ready_.push_back(std::move(key));
    PostReadyLocked();
  }
}

void Router::PostReadyLocked() {
  while (posted_ < kMaxPostedTurns && !ready_.empty()) {
    ++posted_;
    boost::asio::post(io_, [this, key = std::move(ready_.front())] { DrainOne(key); });
    ready_.pop_front();
  }
}

void Router::DrainOne(std::string key) {
  Job* job = nullptr;
  {
    std::lock_guard<std::mutex> lock(mu_);
    job = &queues_[key].front();  // stays valid: only this chain pops the front
    // The next ready turn goes to the back of the io_context's queue, behind whatever socket
    // reads completed meanwhile.
    --posted_;
    PostReadyLocked();
  }
  const std::string turn_id = NewShortId();
  const InboundMessage& message = job->message;
  spdlog::debug("turn.start turn={} conv={} user={} text=\"{}\"", turn_id,
                message.conversation().Display(), message.user, message.text);
  if (hooks_ != nullptr && hooks_->BeforeTurn(message)) {
    TurnOutput out;
    out.reply = engine_.NewReply(message, turn_id);
    out.reply.silent = true;
    out.outcome = "handed_over";
    Commit(key, job, turn_id, std::move(out));
    return;
  }
  PartialCallback on_partial = [this](const OutboundMessage& partial) {
    sink_.SendPartial(partial);
  };
  engine_.Run(message, turn_id, std::move(on_partial),
              [this, key, job, turn_id](TurnOutput out) {
                if (hooks_ != nullptr) hooks_->AfterTurn(job->message, out);
                Commit(key, job, turn_id, std::move(out));
              });
}

void Router::Commit(const std::string& key, Job* job, const std::string& turn_id,
                    TurnOutput out) {
  const InboundMessage& message = job->message;
  store::WriteBatch batch = std::move(out.writes);
  if (out.outcome != "error" && !message.event_id_minted) {
    dedupe_.Record(batch, message.platform, message.event_id);
  }
  // A deferred intake is settled here: this commit makes the message durable, unless its grace
  // ended first and the inbox record exists (then this commit removes it).
  std::shared_ptr<Intake> intake;
  bool record_exists = job->durable;
  if (job->intake != nullptr) {
    std::lock_guard<std::mutex> lock(job->intake->mu);
    if (job->intake->state == Intake::State::kDeferred) {
      job->intake->state = Intake::State::kCommitted;
      job->intake->timer.cancel();
      intake = job->intake;
      record_exists = false;
    }
  }
  job->intake.reset();
  if (record_exists) inbox_.Remove(batch, message);
  if (!message.reply_route.empty()) {
    routes_.Set(batch, message.conversation(), message.reply_route);
  }
  if (!out.reply.silent && sink_.DeliversDurably(out.reply)) {
    store::OutboxEntry entry;
    entry.id = out.reply.id;
    entry.platform = out.reply.conversation.platform;
    entry.target = out.reply.reply_route;
    entry.payload = ToJsonText(out.reply);
    entry.created_ms = clock_.NowMs();
    outbox_.Put(batch, entry);
  }
  auto reply = std::make_shared<OutboundMessage>(std::move(out.reply));
  auto outcome = std::make_shared<std::string>(std::move(out.outcome));
  const int64_t accepted_nanos = job->accepted_nanos;
  const std::string platform = message.platform;
  const std::string event_id = message.event_id;
  const std::string conv_display = message.conversation().Display();
  const int64_t commit_start = MonotonicNanos();
  committer_.Submit(std::move(batch), [=](Status status) {
    boost::asio::post(io_, [=] {
      const int64_t now = MonotonicNanos();
      store_seconds_.ObserveNanos(now - commit_start);
      dedupe_.Release(platform, event_id);
      std::string final_outcome = *outcome;
      if (!status.ok() && !reply->silent) {
        // Nothing of the turn was stored; tell the user rather than go silent.
        spdlog::error("turn.error turn={} conv={} stage=store error=\"{}\"", turn_id,
                      conv_display, status.ToString());
        reply->text = kErrorText;
        reply->citations.clear();
        final_outcome = "error";
        engine_.DiscardUncommitted(reply->conversation);
      } else if (!status.ok()) {
        spdlog::error("turn.error turn={} conv={} stage=store error=\"{}\"", turn_id,
                      conv_display, status.ToString());
      }
      if (intake != nullptr && intake->accepted) {
        // Durable with this write (or not, when it failed), before the reply goes out.
        intake->accepted(status.ok() ? IntakeResult{Status::Ok(), 0}
                                     : IntakeResult{Status::Unavailable("store write failed"), 0});
        intake->accepted = nullptr;
      }
      total_seconds_.ObserveNanos(now - accepted_nanos);
      metrics_
          .GetCounter("parley_replies_total", "Replies by outcome",
                      "outcome=\"" + final_outcome + "\"")
          .Add();
      spdlog::info("turn.done turn={} conv={} ms={:.2f} outcome={} confidence={:.2f}", turn_id,
                   conv_display, static_cast<double>(now - accepted_nanos) / 1e6, final_outcome,
                   reply->confidence);
      const std::string out_platform = reply->conversation.platform;
      sink_.Send(*reply, [this, out_platform, turn_id](Status delivery) {
        metrics_
            .GetCounter("parley_messages_out_total", "Replies handed to adapters, by result",
                        "adapter=\"" + out_platform + "\",result=\"" +
                            (delivery.ok() ? "ok" : "failed") + "\"")
            .Add();
        if (!delivery.ok()) {
          spdlog::warn("reply.failed turn={} error=\"{}\"", turn_id, delivery.ToString());
        }
      });
      TurnDone();
      Finish(key);
    });
  });
}

void Router::Finish(const std::string& key) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = queues_.find(key);
  it->second.pop_front();
  if (it->second.empty()) {
    queues_.erase(it);
    return;
  }
  ready_.push_back(key);  // behind the conversations already waiting
  PostReadyLocked();
}

void Router::TurnDone() {
  if (in_flight_.fetch_sub(1) != 1) return;
  std::function<void()> done;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) done = std::move(on_drained_);
    on_drained_ = nullptr;
  }
  if (done) done();
}

void Router::Shutdown(std::function<void()> done) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    if (in_flight_.load() != 0) {
      on_drained_ = std::move(done);
      return;
    }
  }
  if (done) done();
}

}  // namespace parley::engine
