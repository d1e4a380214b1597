#include "adapters/matrix/matrix_adapter.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>

#include "core/glob.h"
#include "core/ids.h"
#include "core/percent.h"
#include "net/backoff.h"
#include "store/keys.h"

namespace parley::matrix {

using nlohmann::json;

// One /sync batch on its way through gap filling and intake.
struct SyncWork {
  SyncResponse response;
  std::string since;                  // the since it was requested with; empty for the initial sync
  bool initial = false;               // the very first sync: its backlog is not answered
  size_t gap_room = 0;                // next room (index into response.join) to check for a gap
  std::string gap_from;               // paging token of the gap being filled
  std::vector<RoomEvent> gap_events;  // events of that gap so far (newest first)
  int gap_pages = 0;
  int attempt = 0;  // failed attempts of the current step
};

namespace {

constexpr int kMaxTransientAttempts = 10;  // per part of a reply, then it is dropped
constexpr int kPlaceholderAttempts = 3;
constexpr int kStopDrainMs = 5'000;
constexpr int kSyncHttpSlackMs = 30'000;  // HTTP timeout = sync timeout + this
constexpr int kRequestTimeoutMs = 30'000;
constexpr int kGapPageLimit = 100;
constexpr int kMaxGapPages = 50;  // 5000 events per room and gap at most
constexpr size_t kRecentEvents = 20'000;
constexpr size_t kThreadCacheLimit = 100'000;
constexpr size_t kFinalsRemembered = 4'096;
constexpr int kTypingTimeoutMs = 30'000;
constexpr int64_t kReloginIntervalMs = 60'000;
constexpr size_t kNamesPerRoom = 10'000;  // display names remembered per room

const net::BackoffPolicy kRetryBackoff{500, 30'000};
const net::BackoffPolicy kSyncBackoff{250, 30'000};
const net::BackoffPolicy kAuthBackoff{1'000, 60'000};

std::string Enc(const std::string& s) { return PercentEncode(s); }

std::string V3(const std::string& rest) { return "/_matrix/client/v3" + rest; }

bool AnyGlob(const std::vector<std::string>& patterns, const std::string& value) {
  return std::any_of(patterns.begin(), patterns.end(),
                     [&](const std::string& p) { return GlobMatch(p, value); });
}

}  // namespace

MatrixAdapter::MatrixAdapter(boost::asio::io_context& io, config::MatrixConfig config,
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
      api_(std::move(http), config_.homeserver, clock, metrics),
      outbox_(kv),
      sync_cancel_(std::make_shared<std::atomic<bool>>(false)),
      events_received_(metrics.GetCounter("parley_matrix_events_total",
                                          "Matrix timeline events by what became of them",
                                          "result=\"received\"")),
      events_ignored_(metrics.GetCounter("parley_matrix_events_total",
                                         "Matrix timeline events by what became of them",
                                         "result=\"ignored\"")),
      events_refused_(metrics.GetCounter("parley_matrix_events_total",
                                         "Matrix timeline events by what became of them",
                                         "result=\"refused_by_policy\"")),
      events_duplicate_(metrics.GetCounter("parley_matrix_events_total",
                                           "Matrix timeline events by what became of them",
                                           "result=\"duplicate\"")),
      events_accepted_(metrics.GetCounter("parley_matrix_events_total",
                                          "Matrix timeline events by what became of them",
                                          "result=\"accepted\"")),
      replies_delivered_(metrics.GetCounter("parley_matrix_replies_total",
                                            "Matrix replies by final result", "result=\"sent\"")),
      replies_dropped_(metrics.GetCounter("parley_matrix_replies_total",
                                          "Matrix replies by final result", "result=\"dropped\"")),
      sends_(metrics.GetCounter("parley_matrix_sends_total",
                                "Matrix events the homeserver confirmed (messages and edits)")),
      send_retries_(metrics.GetCounter("parley_matrix_send_retries_total",
                                       "Matrix sends retried (429, transport errors, 5xx)")),
      stream_edits_(metrics.GetCounter("parley_matrix_stream_edits_total",
                                       "m.replace edits of streamed Matrix answers")),
      syncs_(metrics.GetCounter("parley_matrix_syncs_total", "Matrix /sync batches handled")),
      sync_errors_(metrics.GetCounter("parley_matrix_sync_errors_total",
                                      "Matrix /sync requests that failed")),
      gaps_filled_(metrics.GetCounter("parley_matrix_gaps_filled_total",
                                      "Limited Matrix timelines filled from /messages")),
      replies_pending_(
          metrics.GetGauge("parley_matrix_replies_pending", "Matrix replies queued or being sent")),
      sync_lag_ms_(metrics.GetGauge("parley_matrix_sync_lag_ms",
                                    "Age of the newest event of the last Matrix sync batch")) {
  bot_.user_id = config_.user_id;
}

MatrixAdapter::~MatrixAdapter() = default;

std::string MatrixAdapter::UserId() const {
  std::lock_guard<std::mutex> lock(mu_);
  return bot_.user_id;
}

std::string MatrixAdapter::DeviceId() const {
  std::lock_guard<std::mutex> lock(mu_);
  return device_id_;
}

void MatrixAdapter::After(int64_t delay_ms, std::function<void()> fn) {
  auto timer = std::make_shared<boost::asio::steady_timer>(io_);
  timer->expires_after(std::chrono::milliseconds(std::max<int64_t>(0, delay_ms)));
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopped_) return;
    timers_.insert(timer);
  }
  std::weak_ptr<MatrixAdapter> weak = weak_from_this();
  timer->async_wait([weak, timer, fn = std::move(fn)](boost::system::error_code ec) {
    if (auto self = weak.lock()) {
      std::lock_guard<std::mutex> lock(self->mu_);
      self->timers_.erase(timer);
    }
    if (!ec) fn();
  });
}

void MatrixAdapter::Fatal(Status why) {
  if (fatal_.exchange(true)) return;
  sync_cancel_->store(true);
  spdlog::critical("matrix.stopped error=\"{}\"", why.ToString());
  if (on_fatal_) on_fatal_(why);
}

// ---------------------------------------------------------------------------------------------
// Start-up

Status MatrixAdapter::ResumeOutbox() {
  auto owed = outbox_.Load(kPlatform);
  if (!owed.ok()) return owed.status();
  for (store::OutboxEntry& entry : *owed) {
    json stored = json::parse(entry.payload, nullptr, false);
    OutboundMessage message;
    bool readable = stored.is_object();
    if (readable) {
      try {
        message = stored.get<OutboundMessage>();
      } catch (const std::exception&) {
        readable = false;
      }
    }
    if (!readable || message.conversation.channel.empty()) {
      spdlog::error("matrix.outbox.unreadable id={}", entry.id);
      store::WriteBatch batch;
      outbox_.Remove(batch, kPlatform, entry.id);
      committer_.Submit(std::move(batch), nullptr);
      continue;
    }
    Delivery d;
    d.id = entry.id;
    d.message = std::move(message);
    d.message.id = d.id;
    d.parts_done = stored.value("matrix_parts_done", 0);
    spdlog::info("matrix.reply.resume id={} room={} parts_done={}", d.id,
                 d.message.conversation.channel, d.parts_done);
    Enqueue(std::move(d));
  }
  return Status::Ok();
}

Status MatrixAdapter::Start(InboundSink& sink) {
  if (config_.homeserver.empty() || config_.user_id.empty()) {
    return Status::InvalidArgument("matrix.homeserver and matrix.user_id are required");
  }
  if (config_.access_token.empty() && config_.password.empty()) {
    return Status::InvalidArgument("matrix needs access_token or password");
  }
  sink_ = &sink;
  auto self = shared_from_this();
  boost::asio::post(io_, [self] { self->Authenticate(); });
  return Status::Ok();
}

void MatrixAdapter::Authenticate() {
  if (stopping_ || fatal_) return;
  if (!config_.access_token.empty()) {
    api_.SetAccessToken(config_.access_token);
    {
      std::lock_guard<std::mutex> lock(mu_);
      device_id_ = config_.device_id;
    }
    return WhoAmI(0);
  }
  // A session a previous password login left in the store.
  auto stored = kv_.Get(store::keys::kMatrixSession);
  if (stored.ok()) {
    json s = json::parse(*stored, nullptr, false);
    if (s.is_object() && s.value("user_id", "") == config_.user_id &&
        !s.value("access_token", "").empty()) {
      api_.SetAccessToken(Secret(s.value("access_token", "")));
      {
        std::lock_guard<std::mutex> lock(mu_);
        device_id_ = s.value("device_id", "");
        token_from_store_ = true;
      }
      spdlog::info("matrix.session.reused user={} device={}", config_.user_id,
                   s.value("device_id", ""));
      return WhoAmI(0);
    }
    if (s.is_object()) {
      std::lock_guard<std::mutex> lock(mu_);
      device_id_ = s.value("device_id", "");  // a login for another user id does not reuse it
      if (s.value("user_id", "") != config_.user_id) device_id_.clear();
    }
  }
  Login(0, [self = shared_from_this()] { self->WhoAmI(0); });
}

void MatrixAdapter::Login(int attempt, std::function<void()> then) {
  if (stopping_ || fatal_) return;
  std::string device;
  {
    std::lock_guard<std::mutex> lock(mu_);
    device = device_id_.empty() ? config_.device_id : device_id_;
  }
  json body{{"type", "m.login.password"},
            {"identifier", {{"type", "m.id.user"}, {"user", config_.user_id}}},
            {"password", config_.password.reveal()},
            {"initial_device_display_name", config_.device_name}};
  if (!device.empty()) body["device_id"] = device;
  auto self = shared_from_this();
  api_.Call(
      "POST", V3("/login"), body, "login", kRequestTimeoutMs,
      [self, attempt, then](ApiResult r) {
        if (r.ok()) {
          const std::string token = r.body.value("access_token", "");
          const std::string device_id = r.body.value("device_id", "");
          const std::string user_id = r.body.value("user_id", "");
          if (token.empty()) {
            return self->Fatal(Status::FailedPrecondition("matrix login returned no access_token"));
          }
          self->api_.SetAccessToken(Secret(token));
          {
            std::lock_guard<std::mutex> lock(self->mu_);
            self->device_id_ = device_id;
            self->token_from_store_ = true;
          }
          spdlog::info("matrix.login.ok user={} device={}", user_id, device_id);
          store::WriteBatch batch;
          batch.Put(store::keys::kMatrixSession, json{{"user_id", self->config_.user_id},
                                                      {"access_token", token},
                                                      {"device_id", device_id}}
                                                     .dump());
          self->committer_.Submit(std::move(batch), [self, then](Status written) {
            if (!written.ok()) {
              spdlog::error("matrix.session.store_failed error=\"{}\"", written.ToString());
            }
            boost::asio::post(self->io_, then);
          });
          return;
        }
        if (r.outcome == Outcome::kRateLimited || r.outcome == Outcome::kTransient) {
          const int64_t delay =
              std::max(r.retry_after_ms, net::BackoffDelayMs(kAuthBackoff, attempt));
          spdlog::warn("matrix.login.retry attempt={} in_ms={} error=\"{}\"", attempt + 1, delay,
                       r.error);
          return self->After(delay, [self, attempt, then] { self->Login(attempt + 1, then); });
        }
        self->Fatal(Status::PermissionDenied("matrix login as " + self->config_.user_id +
                                             " refused: " + r.errcode + " " + r.error));
      },
      /*auth=*/false);
}

void MatrixAdapter::WhoAmI(int attempt) {
  if (stopping_ || fatal_) return;
  auto self = shared_from_this();
  api_.Call("GET", V3("/account/whoami"), json(), "whoami", kRequestTimeoutMs,
            [self, attempt](ApiResult r) {
              if (r.ok()) {
                const std::string user = r.body.value("user_id", "");
                if (user != self->config_.user_id) {
                  return self->Fatal(Status::FailedPrecondition("matrix token belongs to " + user +
                                                                ", not matrix.user_id " +
                                                                self->config_.user_id));
                }
                {
                  std::lock_guard<std::mutex> lock(self->mu_);
                  const std::string device = r.body.value("device_id", "");
                  if (!device.empty()) self->device_id_ = device;
                }
                spdlog::info("matrix.auth.ok user={} device={}", user, self->DeviceId());
                std::vector<std::string> rooms;
                {
                  std::lock_guard<std::mutex> lock(self->mu_);
                  self->authenticated_ = true;
                  for (const auto& [room, q] : self->queues_) rooms.push_back(room);
                }
                for (const std::string& room : rooms) self->Pump(room);
                return self->FetchDisplayName();
              }
              if (r.outcome == Outcome::kUnknownToken) {
                return self->OnUnknownToken(r, [self] { self->WhoAmI(0); });
              }
              const int64_t delay =
                  std::max(r.retry_after_ms, net::BackoffDelayMs(kAuthBackoff, attempt));
              spdlog::warn("matrix.whoami.retry attempt={} in_ms={} error=\"{}\"", attempt + 1,
                           delay, r.error);
              self->After(delay, [self, attempt] { self->WhoAmI(attempt + 1); });
            });
}

void MatrixAdapter::FetchDisplayName() {
  auto self = shared_from_this();
  api_.Call("GET", V3("/profile/" + Enc(config_.user_id) + "/displayname"), json(), "profile",
            kRequestTimeoutMs, [self](ApiResult r) {
              // Best effort: without it, mentions by display name are not recognised.
              if (r.ok()) {
                std::lock_guard<std::mutex> lock(self->mu_);
                self->bot_.display_name = r.body.value("displayname", "");
              }
              self->UploadFilter(0);
            });
}

void MatrixAdapter::UploadFilter(int attempt) {
  if (stopping_ || fatal_) return;
  auto self = shared_from_this();
  api_.Call("POST", V3("/user/" + Enc(config_.user_id) + "/filter"),
            BuildFilter(config_.timeline_limit), "filter", kRequestTimeoutMs,
            [self, attempt](ApiResult r) {
              if (r.ok() && !r.body.value("filter_id", "").empty()) {
                const bool first = [&] {
                  std::lock_guard<std::mutex> lock(self->mu_);
                  const bool was_empty = self->filter_id_.empty();
                  self->filter_id_ = r.body.value("filter_id", "");
                  return was_empty;
                }();
                if (first) return self->StartSyncing();
                return self->Sync(0);
              }
              if (r.outcome == Outcome::kUnknownToken) {
                return self->OnUnknownToken(r, [self] { self->UploadFilter(0); });
              }
              const int64_t delay =
                  std::max(r.retry_after_ms, net::BackoffDelayMs(kAuthBackoff, attempt));
              spdlog::warn("matrix.filter.retry attempt={} in_ms={} error=\"{}\"", attempt + 1,
                           delay, r.error.empty() ? r.errcode : r.error);
              self->After(delay, [self, attempt] { self->UploadFilter(attempt + 1); });
            });
}

void MatrixAdapter::StartSyncing() {
  auto cursor = kv_.Get(store::keys::kMatrixCursor);
  {
    std::lock_guard<std::mutex> lock(mu_);
    since_ = cursor.ok() ? *cursor : "";
  }
  spdlog::info("matrix.sync.start resume={}", cursor.ok() ? "stored_cursor" : "first_start");
  Sync(0);
}

void MatrixAdapter::OnUnknownToken(const ApiResult& r, std::function<void()> resume) {
  bool relogin = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    const int64_t now = clock_.NowMs();
    // A token from a password login (ours, stored) may be replaced by logging in again: after a
    // soft logout (the server keeps the device), or when the stored token is simply gone. Once
    // per minute at most: never a tight loop.
    relogin = !config_.password.empty() && (r.soft_logout || token_from_store_) &&
              (last_relogin_ms_ == 0 || now - last_relogin_ms_ >= kReloginIntervalMs);
    if (relogin) last_relogin_ms_ = now;
  }
  if (!relogin) {
    return Fatal(
        Status::PermissionDenied("the homeserver refused the Matrix access token (" + r.errcode +
                                 (r.soft_logout ? ", soft logout" : "") + "): " +
                                 (config_.password.empty() ? "set a new matrix.access_token"
                                                           : "logging in again did not help") +
                                 "; the adapter stopped"));
  }
  spdlog::warn("matrix.token.refused soft_logout={} action=login_again", r.soft_logout);
  if (!r.soft_logout) {
    std::lock_guard<std::mutex> lock(mu_);
    token_from_store_ = false;  // a hard logout: the next refusal is fatal
  }
  Login(0, std::move(resume));
}

// ---------------------------------------------------------------------------------------------
// The sync loop

void MatrixAdapter::Sync(int attempt) {
  if (stopping_ || fatal_) return;
  std::string since, filter;
  {
    std::lock_guard<std::mutex> lock(mu_);
    since = since_;
    filter = filter_id_;
  }
  std::string path = V3("/sync?filter=" + Enc(filter));
  int timeout = 0;
  if (!since.empty()) {
    timeout = std::max(0, config_.sync_timeout_ms);
    path += "&since=" + Enc(since) + "&timeout=" + std::to_string(timeout);
  } else {
    path += "&timeout=0";
  }
  auto self = shared_from_this();
  api_.Call(
      "GET", path, json(), "sync", timeout + kSyncHttpSlackMs,
      [self, attempt, since](ApiResult r) {
        if (self->stopping_ || self->fatal_) return;
        if (r.ok()) {
          auto parsed = ParseSync(r.body);
          if (parsed.ok()) {
            auto work = std::make_shared<SyncWork>();
            work->response = std::move(parsed).value();
            work->since = since;
            work->initial = since.empty();
            return self->HandleSync(work);
          }
          r.outcome = Outcome::kTransient;
          r.error = parsed.status().message();
        }
        self->sync_errors_.Add();
        if (r.outcome == Outcome::kUnknownToken) {
          return self->OnUnknownToken(r, [self] { self->Sync(0); });
        }
        if (r.outcome == Outcome::kRefused && r.errcode == "M_INVALID_PARAM") {
          spdlog::warn("matrix.filter.unknown action=upload_again error=\"{}\"", r.error);
          return self->After(attempt == 0 ? 0 : net::BackoffDelayMs(kSyncBackoff, attempt),
                             [self] { self->UploadFilter(0); });
        }
        // 429: the server's delay; anything else: jittered backoff.
        const int64_t delay = r.outcome == Outcome::kRateLimited && r.retry_after_ms > 0
                                  ? r.retry_after_ms
                                  : net::BackoffDelayMs(kSyncBackoff, attempt);
        spdlog::warn("matrix.sync.retry attempt={} in_ms={} outcome={} status={} error=\"{}\"",
                     attempt + 1, delay, OutcomeName(r.outcome), r.http_status,
                     r.error.empty() ? r.errcode : r.error);
        self->After(delay, [self, attempt] { self->Sync(std::min(attempt + 1, 16)); });
      },
      /*auth=*/true, sync_cancel_);
}

void MatrixAdapter::HandleSync(std::shared_ptr<SyncWork> work) {
  SyncResponse& r = work->response;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (r.has_direct) {
      for (auto& [id, info] : rooms_) info.direct_account = r.direct_rooms.count(id) > 0;
      direct_rooms_ = r.direct_rooms;
    }
    for (const std::string& room : r.leave) {
      if (rooms_.erase(room) > 0 || joining_.count(room) > 0) {
        spdlog::info("matrix.room.left room={}", room);
      }
      joining_.erase(room);
    }
    for (const JoinedRoom& room : r.join) {
      RoomInfo& info = rooms_[room.room_id];
      joining_.erase(room.room_id);
      info.direct_account = direct_rooms_.count(room.room_id) > 0;
      if (room.joined_member_count >= 0) info.joined_count = room.joined_member_count;
      for (const RoomEvent& e : room.state) ApplyStateLocked(room.room_id, info, e);
    }
  }
  for (const InvitedRoom& invite : r.invite) HandleInvite(invite);
  FillGaps(std::move(work));
}

void MatrixAdapter::ApplyStateLocked(const std::string& room_id, RoomInfo& info,
                                     const RoomEvent& e) {
  if (!e.state_key.has_value()) return;
  if (e.type == "m.room.encryption") {
    if (!info.encrypted) spdlog::info("matrix.room.encrypted room={}", room_id);
    info.encrypted = true;
  } else if (e.type == "m.room.member") {
    const std::string membership = e.content.value("membership", "");
    if (*e.state_key == bot_.user_id) {
      if (membership == "join" && e.content.value("is_direct", false)) info.direct_member = true;
      return;
    }
    const auto name = e.content.find("displayname");
    if (membership == "join" && name != e.content.end() && name->is_string()) {
      if (info.names.size() >= kNamesPerRoom) info.names.clear();
      info.names[*e.state_key] = name->get<std::string>();
    } else if (membership == "leave" || membership == "ban") {
      info.names.erase(*e.state_key);
    }
  }
}

void MatrixAdapter::FillGaps(std::shared_ptr<SyncWork> work) {
  if (stopping_ || fatal_) return;
  auto& rooms = work->response.join;
  while (work->gap_room < rooms.size()) {
    JoinedRoom& room = rooms[work->gap_room];
    const bool gap =
        room.limited && !work->initial && !work->since.empty() && !room.prev_batch.empty();
    if (!gap || work->gap_pages >= kMaxGapPages) {
      if (work->gap_pages >= kMaxGapPages) {
        spdlog::error("matrix.gap.too_large room={} pages={} (older events are skipped)",
                      room.room_id, work->gap_pages);
      }
      if (!work->gap_events.empty()) {
        std::reverse(work->gap_events.begin(), work->gap_events.end());
        room.timeline.insert(room.timeline.begin(), work->gap_events.begin(),
                             work->gap_events.end());
        work->gap_events.clear();
        gaps_filled_.Add();
      }
      work->gap_room += 1;
      work->gap_from.clear();
      work->gap_pages = 0;
      continue;
    }
    if (work->gap_from.empty()) work->gap_from = room.prev_batch;
    const std::string path =
        V3("/rooms/" + Enc(room.room_id) + "/messages?dir=b&from=" + Enc(work->gap_from) +
           "&to=" + Enc(work->since) + "&limit=" + std::to_string(kGapPageLimit));
    auto self = shared_from_this();
    api_.Call("GET", path, json(), "messages", kRequestTimeoutMs, [self, work](ApiResult r) {
      if (self->stopping_ || self->fatal_) return;
      JoinedRoom& room = work->response.join[work->gap_room];
      if (r.ok()) {
        auto page = ParseMessages(r.body);
        if (page.ok()) {
          work->attempt = 0;
          work->gap_pages += 1;
          for (RoomEvent& e : page->chunk) work->gap_events.push_back(std::move(e));
          if (page->end.empty() || page->chunk.empty() || page->end == work->gap_from) {
            room.limited = false;  // the gap is closed
          } else {
            work->gap_from = page->end;
          }
          return self->FillGaps(work);
        }
        r.outcome = Outcome::kTransient;
        r.error = page.status().message();
      }
      if (r.outcome == Outcome::kUnknownToken) {
        return self->OnUnknownToken(r, [self, work] { self->FillGaps(work); });
      }
      if (r.outcome == Outcome::kRefused) {
        // E.g. 403 after leaving the room: the gap cannot be read.
        spdlog::warn("matrix.gap.unreadable room={} errcode={} error=\"{}\"", room.room_id,
                     r.errcode, r.error);
        room.limited = false;
        return self->FillGaps(work);
      }
      const int64_t delay = r.outcome == Outcome::kRateLimited && r.retry_after_ms > 0
                                ? r.retry_after_ms
                                : net::BackoffDelayMs(kSyncBackoff, work->attempt);
      work->attempt = std::min(work->attempt + 1, 16);
      spdlog::warn("matrix.gap.retry room={} in_ms={} error=\"{}\"", room.room_id, delay, r.error);
      self->After(delay, [self, work] { self->FillGaps(work); });
    });
    return;
  }
  Deliver(std::move(work));
}

bool MatrixAdapter::SeenLocked(const std::string& event_id) const {
  return recent_set_.count(event_id) > 0;
}

void MatrixAdapter::RememberSeenLocked(const std::string& event_id) {
  if (!recent_set_.insert(event_id).second) return;
  recent_events_.push_back(event_id);
  while (recent_events_.size() > kRecentEvents) {
    recent_set_.erase(recent_events_.front());
    recent_events_.pop_front();
  }
}

void MatrixAdapter::Deliver(std::shared_ptr<SyncWork> work) {
  std::vector<InboundMessage> messages;
  std::vector<std::string> encrypted_notices;
  std::vector<std::string> leave_encrypted;
  int64_t newest_ms = 0;
  ClassifyOptions options;
  options.mention_required = config_.mention_required;
  options.thread_followups = config_.thread_followups;
  options.threads = config_.threads;
  for (JoinedRoom& room : work->response.join) {
    std::unordered_set<std::string> in_batch;
    for (const RoomEvent& e : room.timeline) {
      if (e.event_id.empty() || !in_batch.insert(e.event_id).second) continue;
      newest_ms = std::max(newest_ms, e.origin_server_ts);
      RoomContext context;
      BotIdentity bot;
      {
        std::lock_guard<std::mutex> lock(mu_);
        RoomInfo& info = rooms_[room.room_id];
        ApplyStateLocked(room.room_id, info, e);
        context.direct = info.direct_member || info.direct_account || info.joined_count == 2;
        bot = bot_;
      }
      if (work->initial) continue;  // the backlog of the very first sync is not answered
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (SeenLocked(e.event_id)) {
          events_duplicate_.Add();
          continue;
        }
      }
      if (e.type == "m.room.encrypted" && e.sender != bot.user_id) {
        std::lock_guard<std::mutex> lock(mu_);
        rooms_[room.room_id].encrypted = true;
      }
      if (e.type != "m.room.message" && e.type != "m.room.encrypted") continue;
      events_received_.Add();
      const std::string root = ThreadRootOf(e);
      context.bot_in_thread = !root.empty() && BotInThread(room.room_id, root);
      EventDecision decision = Classify(e, room.room_id, bot, context, options);
      if (!decision.handle) {
        events_ignored_.Add();
        spdlog::debug("matrix.event.ignored room={} event_id={} reason={}", room.room_id,
                      e.event_id, IgnoreReasonName(decision.reason));
        continue;
      }
      InboundMessage& m = decision.message;
      {
        std::lock_guard<std::mutex> lock(mu_);
        const RoomInfo& info = rooms_[room.room_id];
        auto name = info.names.find(m.user);
        if (name != info.names.end()) m.user_name = name->second;
      }
      spdlog::trace("matrix.event.text event_id={} text=\"{}\"", e.event_id, m.text);
      if ((!config_.room_allowlist.empty() &&
           std::find(config_.room_allowlist.begin(), config_.room_allowlist.end(), m.channel) ==
               config_.room_allowlist.end()) ||
          (!config_.allowed_users.empty() && !AnyGlob(config_.allowed_users, m.user))) {
        events_refused_.Add();
        spdlog::info("matrix.event.refused room={} user={} event_id={}", m.channel, m.user,
                     m.event_id);
        continue;
      }
      messages.push_back(std::move(m));
    }
    bool notice = false, leave = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      RoomInfo& info = rooms_[room.room_id];
      if (info.encrypted && !info.notice_checked) {
        if (config_.encrypted_rooms == config::MatrixEncryptedRooms::kDecline) {
          leave = true;
        } else {
          notice = true;
        }
        info.notice_checked = true;
      }
    }
    if (notice) encrypted_notices.push_back(room.room_id);
    if (leave) leave_encrypted.push_back(room.room_id);
  }
  for (const std::string& room : encrypted_notices) PostEncryptedNotice(room);
  for (const std::string& room : leave_encrypted) Leave(room, "encrypted");
  if (newest_ms > 0) sync_lag_ms_.Set(std::max<int64_t>(0, clock_.NowMs() - newest_ms));

  if (messages.empty()) return FinishBatch(work, true);
  struct Pending {
    size_t left;
    bool retry = false;
    std::mutex mu;
  };
  auto pending = std::make_shared<Pending>();
  pending->left = messages.size();
  auto self = shared_from_this();
  for (InboundMessage& m : messages) {
    const std::string room = m.channel, event_id = m.event_id, thread = m.thread;
    const bool direct = m.is_direct;
    sink_->OnInbound(
        std::move(m), IntakeOptions{/*durable=*/true},
        [self, work, pending, room, event_id, thread, direct](IntakeResult result) {
          bool seen = false;
          switch (result.status.code()) {
            case Status::Code::kOk:
              self->events_accepted_.Add();
              spdlog::debug("matrix.event.accepted room={} event_id={}", room, event_id);
              if (!thread.empty() && !direct) {
                std::lock_guard<std::mutex> lock(self->mu_);
                if (self->threads_.size() >= kThreadCacheLimit) self->threads_.clear();
                self->threads_.insert(room + "/" + thread);
              }
              self->Typing(room, true);
              seen = true;
              break;
            case Status::Code::kAlreadyExists:
              self->events_duplicate_.Add();
              seen = true;
              break;
            case Status::Code::kResourceExhausted:
              spdlog::info("matrix.event.rate_limited room={} event_id={}", room, event_id);
              seen = true;  // refused by the rate limit: not retried
              break;
            case Status::Code::kInvalidArgument:
              seen = true;
              break;
            default:
              spdlog::error("matrix.event.not_accepted event_id={} error=\"{}\"", event_id,
                            result.status.ToString());
              break;
          }
          bool last = false, retry = false;
          {
            std::lock_guard<std::mutex> lock(pending->mu);
            if (!seen) pending->retry = true;
            last = --pending->left == 0;
            retry = pending->retry;
          }
          if (seen) {
            std::lock_guard<std::mutex> lock(self->mu_);
            self->RememberSeenLocked(event_id);
          }
          if (last) {
            boost::asio::post(self->io_, [self, work, retry] { self->FinishBatch(work, !retry); });
          }
        });
  }
}

void MatrixAdapter::FinishBatch(std::shared_ptr<SyncWork> work, bool all_accepted) {
  if (stopping_ || fatal_) return;
  auto self = shared_from_this();
  if (!all_accepted) {
    // Not stored: the same since is synced again and what was accepted is skipped as seen.
    const int64_t delay = net::BackoffDelayMs(kSyncBackoff, work->attempt);
    spdlog::warn("matrix.sync.batch_not_accepted in_ms={}", delay);
    return After(delay, [self] { self->Sync(0); });
  }
  const std::string next = work->response.next_batch;
  store::WriteBatch batch;
  batch.Put(store::keys::kMatrixCursor, next);
  if (!work->initial) {
    // Every message of the batch is accepted (durably, by the sink): the cursor may move on. The
    // next long-poll starts at once while the committer writes it (in order, synced); a cursor
    // write that is lost or fails only replays batches, which de-duplication absorbs.
    {
      std::lock_guard<std::mutex> lock(mu_);
      since_ = next;
    }
    cursor_writes_pending_ += 1;
    // Not synced of its own: it rides on the next synced write (the intake of the next
    // messages); after a crash an older cursor only replays batches already de-duplicated.
    committer_.Submit(
        std::move(batch),
        [self](Status written) {
          if (!written.ok()) {
            spdlog::error("matrix.cursor.store_failed error=\"{}\"", written.ToString());
          }
          self->cursor_writes_pending_ -= 1;
        },
        /*sync=*/false);
    syncs_.Add();
    syncing_ = true;
    return Sync(0);
  }
  // The very first batch: stored before anything else, so a restart never takes the backlog for
  // new messages.
  committer_.Submit(std::move(batch), [self, next, initial = work->initial](Status written) {
    boost::asio::post(self->io_, [self, next, written, initial] {
      if (!written.ok()) {
        spdlog::error("matrix.cursor.store_failed error=\"{}\"", written.ToString());
        return self->After(net::BackoffDelayMs(kSyncBackoff, 3), [self] { self->Sync(0); });
      }
      {
        std::lock_guard<std::mutex> lock(self->mu_);
        self->since_ = next;
      }
      self->syncs_.Add();
      if (initial) spdlog::info("matrix.sync.initial_skipped (backlog not answered)");
      self->syncing_ = true;
      self->Sync(0);
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Rooms

void MatrixAdapter::HandleInvite(const InvitedRoom& room) {
  std::string inviter;
  bool encrypted = false, direct = false;
  const std::string me = config_.user_id;
  for (const RoomEvent& e : room.invite_state) {
    if (e.type == "m.room.encryption") encrypted = true;
    if (e.type == "m.room.member" && e.state_key.has_value() && *e.state_key == me &&
        e.content.value("membership", "") == "invite") {
      inviter = e.sender;
      direct = e.content.value("is_direct", false);
    }
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    // Invites repeat in every sync until the join shows; one join at a time. An invite also
    // means the bot is not in the room (any more): what was known about it is forgotten.
    if (joining_.count(room.room_id) > 0) return;
    joining_.insert(room.room_id);
    rooms_.erase(room.room_id);
  }
  const bool allowed = config_.allowed_inviters.empty()
                           ? (!inviter.empty() && ServerOf(inviter) == ServerOf(me))
                           : AnyGlob(config_.allowed_inviters, inviter);
  if (!config_.auto_join) {
    spdlog::info("matrix.invite.ignored room={} inviter={} reason=auto_join_off", room.room_id,
                 inviter);
    return;
  }
  if (!allowed) {
    spdlog::info("matrix.invite.declined room={} inviter={} reason=inviter_not_allowed",
                 room.room_id, inviter);
    return Leave(room.room_id, "inviter_not_allowed");
  }
  if (encrypted && config_.encrypted_rooms == config::MatrixEncryptedRooms::kDecline) {
    spdlog::info("matrix.invite.declined room={} inviter={} reason=encrypted", room.room_id,
                 inviter);
    return Leave(room.room_id, "encrypted");
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    pending_invites_[room.room_id] = PendingInvite{direct, encrypted};
  }
  spdlog::info("matrix.invite.accepting room={} inviter={} direct={} encrypted={}", room.room_id,
               inviter, direct, encrypted);
  Join(room.room_id, 0);
}

void MatrixAdapter::Join(const std::string& room_id, int attempt) {
  if (stopping_ || fatal_) return;
  auto self = shared_from_this();
  api_.Call(
      "POST", V3("/rooms/" + Enc(room_id) + "/join"), json::object(), "join", kRequestTimeoutMs,
      [self, room_id, attempt](ApiResult r) {
        if (r.ok()) {
          bool notice = false;
          {
            std::lock_guard<std::mutex> lock(self->mu_);
            RoomInfo& info = self->rooms_[room_id];
            auto it = self->pending_invites_.find(room_id);
            if (it != self->pending_invites_.end()) {
              info.direct_member = info.direct_member || it->second.direct;
              if (it->second.encrypted) info.encrypted = true;
              self->pending_invites_.erase(it);
            }
            if (info.encrypted && !info.notice_checked) {
              info.notice_checked = true;
              notice = true;
            }
            // A later invite (after a kick, say) is handled again. An invite in a sync
            // computed before the join may make a second join call, which is harmless.
            self->joining_.erase(room_id);
          }
          spdlog::info("matrix.room.joined room={}", room_id);
          if (notice) self->PostEncryptedNotice(room_id);
          return;
        }
        if ((r.outcome == Outcome::kRateLimited || r.outcome == Outcome::kTransient) &&
            attempt < kMaxTransientAttempts) {
          const int64_t delay = r.outcome == Outcome::kRateLimited && r.retry_after_ms > 0
                                    ? r.retry_after_ms
                                    : net::BackoffDelayMs(kRetryBackoff, attempt);
          spdlog::warn("matrix.join.retry room={} in_ms={} error=\"{}\"", room_id, delay, r.error);
          return self->After(delay, [self, room_id, attempt] { self->Join(room_id, attempt + 1); });
        }
        spdlog::error("matrix.join.failed room={} errcode={} error=\"{}\"", room_id, r.errcode,
                      r.error);
        std::lock_guard<std::mutex> lock(self->mu_);
        self->joining_.erase(room_id);
        self->pending_invites_.erase(room_id);
      });
}

void MatrixAdapter::Leave(const std::string& room_id, const std::string& why) {
  auto self = shared_from_this();
  api_.Call("POST", V3("/rooms/" + Enc(room_id) + "/leave"), json::object(), "leave",
            kRequestTimeoutMs, [self, room_id, why](ApiResult r) {
              if (!r.ok()) {
                spdlog::warn("matrix.leave.failed room={} reason={} error=\"{}\"", room_id, why,
                             r.error);
              } else {
                spdlog::info("matrix.room.leave room={} reason={}", room_id, why);
              }
              std::lock_guard<std::mutex> lock(self->mu_);
              self->rooms_.erase(room_id);
              self->joining_.erase(room_id);
            });
}

void MatrixAdapter::PostEncryptedNotice(const std::string& room_id) {
  if (kv_.Get(store::keys::MatrixNotice(room_id)).ok()) return;  // posted by an earlier run
  store::WriteBatch batch;
  batch.Put(store::keys::MatrixNotice(room_id), std::to_string(clock_.NowMs()));
  committer_.Submit(std::move(batch), nullptr, /*sync=*/false);
  OutboundMessage m;
  m.id = NewId();
  m.conversation = ConversationKey{kPlatform, room_id, ""};
  m.text =
      "This room is end-to-end encrypted, and I can't read encrypted messages, so I won't see "
      "questions asked here. To reach me, mention me in an unencrypted room or start a direct "
      "message with encryption turned off.";
  spdlog::info("matrix.room.encrypted_notice room={}", room_id);
  Send(std::move(m), nullptr);
}

void MatrixAdapter::Typing(const std::string& room_id, bool on) {
  if (!config_.typing || room_id.empty()) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    int& count = typing_[room_id];
    if (on) {
      if (++count > 1) return;
    } else {
      if (count == 0) {
        typing_.erase(room_id);
        return;
      }
      if (--count > 0) return;
      typing_.erase(room_id);
    }
  }
  if (!on) {
    // Only a notification that was shown needs switching off.
    bool shown = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      shown = typing_shown_.erase(room_id) > 0;
    }
    if (shown) SendTyping(room_id, false);
    return;
  }
  uint64_t generation = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    generation = ++typing_generation_;
    typing_chain_[room_id] = generation;
  }
  // Shown only once the turn has taken typing_delay_ms: quick answers cost no request.
  auto self = shared_from_this();
  auto show = [self, room_id, generation] {
    {
      std::lock_guard<std::mutex> lock(self->mu_);
      auto chain = self->typing_chain_.find(room_id);
      if (chain == self->typing_chain_.end() || chain->second != generation) return;
      if (self->typing_.count(room_id) == 0 || self->stopping_) {
        self->typing_chain_.erase(chain);
        return;
      }
      self->typing_shown_.insert(room_id);
    }
    self->SendTyping(room_id, true);
    self->RefreshTyping(room_id, generation);
  };
  if (config_.typing_delay_ms <= 0) return show();
  After(config_.typing_delay_ms, std::move(show));
}

void MatrixAdapter::RefreshTyping(const std::string& room_id, uint64_t generation) {
  // The server drops the notification after its timeout: renew it while a turn still runs.
  auto self = shared_from_this();
  After(kTypingTimeoutMs * 2 / 3, [self, room_id, generation] {
    {
      std::lock_guard<std::mutex> lock(self->mu_);
      auto chain = self->typing_chain_.find(room_id);
      if (chain == self->typing_chain_.end() || chain->second != generation) return;
      if (self->typing_.count(room_id) == 0 || self->stopping_) {
        self->typing_chain_.erase(chain);
        return;
      }
    }
    self->SendTyping(room_id, true);
    self->RefreshTyping(room_id, generation);
  });
}

void MatrixAdapter::SendTyping(const std::string& room_id, bool on) {
  json body{{"typing", on}};
  if (on) body["timeout"] = kTypingTimeoutMs;
  api_.Call("PUT", V3("/rooms/" + Enc(room_id) + "/typing/" + Enc(config_.user_id)), body, "typing",
            kRequestTimeoutMs, [room_id](ApiResult r) {
              if (!r.ok()) {
                spdlog::debug("matrix.typing.failed room={} error=\"{}\"", room_id, r.error);
              }
            });
}

bool MatrixAdapter::BotInThread(const std::string& room_id, const std::string& root) {
  const std::string key = room_id + "/" + root;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (threads_.count(key) > 0) return true;
  }
  if (!kv_.Get(store::keys::MatrixThread(room_id, root)).ok()) return false;
  std::lock_guard<std::mutex> lock(mu_);
  if (threads_.size() >= kThreadCacheLimit) threads_.clear();
  threads_.insert(key);
  return true;
}

// ---------------------------------------------------------------------------------------------
// Outbound

bool MatrixAdapter::DeliversDurably(const OutboundMessage&) const { return true; }

void MatrixAdapter::Send(OutboundMessage message, DeliveryCallback done) {
  if (message.silent) {
    if (!message.in_reply_to.empty()) Typing(message.conversation.channel, false);
    if (done) done(Status::Ok());
    return;
  }
  if (message.conversation.channel.empty()) {
    if (done) done(Status::InvalidArgument("no Matrix room"));
    return;
  }
  Delivery d;
  d.id = message.id.empty() ? NewId() : message.id;
  d.message = std::move(message);
  d.message.id = d.id;
  if (!d.message.in_reply_to.empty()) {
    {
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

void MatrixAdapter::Enqueue(Delivery delivery) {
  const std::string room = delivery.message.conversation.channel;
  {
    std::lock_guard<std::mutex> lock(mu_);
    const std::string key = delivery.placeholder ? delivery.id + "#s" : delivery.id;
    if (!queued_ids_.insert(key).second) return;  // already queued (resume + replay)
    queues_[room].queue.push_back(std::move(delivery));
  }
  replies_pending_.Add(1);
  auto self = shared_from_this();
  boost::asio::post(io_, [self, room] { self->Pump(room); });
}

void MatrixAdapter::Pump(const std::string& room) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = queues_.find(room);
    if (it == queues_.end() || it->second.busy || it->second.queue.empty() || stopped_ ||
        !authenticated_) {
      return;  // not before whoami confirmed the token (then every queue is pumped)
    }
    it->second.busy = true;
  }
  Attempt(room);
}

std::string MatrixAdapter::SendPath(const std::string& room, const std::string& txn) const {
  return V3("/rooms/" + Enc(room) + "/send/m.room.message/" + Enc(txn));
}

ReplyOptions MatrixAdapter::Options() const {
  ReplyOptions options;
  options.msgtype = config_.msgtype;
  options.threads = config_.threads;
  return options;
}

void MatrixAdapter::Attempt(const std::string& room) {
  Delivery* d = nullptr;
  std::string placeholder_event;
  {
    std::lock_guard<std::mutex> lock(mu_);
    RoomQueue& q = queues_[room];
    if (stopped_ || q.queue.empty()) {
      q.busy = false;  // stays in the outbox for the next start
      return;
    }
    d = &q.queue.front();  // stays valid: only this room's chain pops the front
    if (!d->placeholder && d->parts_done == 0) {
      auto it = streams_.find(d->id);
      if (it != streams_.end() && !it->second.event_id.empty()) {
        if (it->second.edit_in_flight) {
          it->second.final_waiting = true;  // the edit's answer resumes this delivery
          return;
        }
        placeholder_event = it->second.event_id;
      }
    }
  }
  if (!d->placeholder && d->parts_done == 0 && placeholder_event.empty() &&
      !d->message.in_reply_to.empty()) {
    // A partial answer posted by an earlier run (a crash mid-stream): finish that message.
    auto orphan = kv_.Get(store::keys::MatrixPartial(room, d->message.in_reply_to));
    if (orphan.ok() && !orphan->empty()) placeholder_event = *orphan;
  }
  if (d->placeholder) return AttemptPlaceholder(room, *d);
  std::vector<json> parts = BuildReplyContents(d->message, Options());
  if (d->parts_done >= static_cast<int>(parts.size())) return Complete(room, Status::Ok());
  json content = std::move(parts[d->parts_done]);
  std::string txn = d->id + "." + std::to_string(d->parts_done);
  if (!placeholder_event.empty()) {
    content = BuildEditContent(placeholder_event, content);
    txn = d->id + ".0e";
  }
  auto self = shared_from_this();
  api_.Call("PUT", SendPath(room, txn), content, "send", kRequestTimeoutMs,
            [self, room, d, placeholder_event, total = parts.size()](ApiResult r) {
              switch (r.outcome) {
                case Outcome::kOk: {
                  self->sends_.Add();
                  const std::string event_id = r.body.value("event_id", "");
                  if (d->parts_done == 0) {
                    d->first_event_id = placeholder_event.empty() ? event_id : placeholder_event;
                    self->ReportDelivered(*d, d->first_event_id);
                  }
                  d->parts_done += 1;
                  d->attempts = 0;
                  if (d->parts_done >= static_cast<int>(total)) {
                    return self->Complete(room, Status::Ok());
                  }
                  return self->PartDone(room);
                }
                case Outcome::kRateLimited:
                  return self->Retry(room, std::max<int64_t>(r.retry_after_ms, 1), "rate_limited");
                case Outcome::kTransient:
                case Outcome::kUnknownToken:  // the sync loop logs in again or stops the daemon
                  if (++d->attempts >= kMaxTransientAttempts) {
                    return self->Complete(room, Status::Unavailable(r.error));
                  }
                  return self->Retry(room, net::BackoffDelayMs(kRetryBackoff, d->attempts - 1),
                                     r.error.empty() ? r.errcode : r.error);
                case Outcome::kRefused:
                  return self->Complete(room,
                                        Status::FailedPrecondition(r.errcode + ": " + r.error));
              }
            });
}

void MatrixAdapter::AttemptPlaceholder(const std::string& room, Delivery& d) {
  OutboundMessage partial;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = streams_.find(d.id);
    if (it == streams_.end() || it->second.final_queued) {
      // The final came first (or the stream is gone): no placeholder; the final posts.
      if (it != streams_.end()) it->second.posting = false;
      partial = d.message;
      partial.text.clear();
    } else {
      partial = d.message;
      partial.text = it->second.text;
      it->second.pending = false;
    }
  }
  if (partial.text.empty()) return PlaceholderDone(room, "");
  std::vector<json> parts = BuildReplyContents(partial, Options());
  Delivery* dp = &d;
  auto self = shared_from_this();
  api_.Call("PUT", SendPath(room, d.id + ".s"), parts[0], "send", kRequestTimeoutMs,
            [self, room, dp](ApiResult r) {
              if (r.ok()) {
                self->sends_.Add();
                return self->PlaceholderDone(room, r.body.value("event_id", ""));
              }
              if ((r.outcome == Outcome::kRateLimited || r.outcome == Outcome::kTransient) &&
                  ++dp->attempts < kPlaceholderAttempts) {
                return self->Retry(room,
                                   std::max(r.retry_after_ms,
                                            net::BackoffDelayMs(kRetryBackoff, dp->attempts - 1)),
                                   "placeholder: " + r.error);
              }
              spdlog::warn("matrix.stream.placeholder_failed id={} room={} error=\"{}\"", dp->id,
                           room, r.error);
              self->PlaceholderDone(room, "");
            });
}

void MatrixAdapter::PlaceholderDone(const std::string& room, const std::string& event_id) {
  std::string id;
  {
    std::lock_guard<std::mutex> lock(mu_);
    RoomQueue& q = queues_[room];
    Delivery d = std::move(q.queue.front());
    q.queue.pop_front();
    q.busy = false;
    queued_ids_.erase(d.id + "#s");
    id = d.id;
    auto it = streams_.find(id);
    if (it != streams_.end()) {
      it->second.posting = false;
      it->second.event_id = event_id;
      if (event_id.empty()) it->second.failed = true;
      it->second.next_edit_ms = clock_.NowMs() + config_.stream_interval_ms;
    }
    if (!event_id.empty() && !d.message.in_reply_to.empty()) {
      // Remembered until the final lands, so that after a crash the answer of the turn run again
      // finishes this message instead of leaving it half-written next to a new one. Not synced:
      // losing it only means a new message, as without it.
      store::WriteBatch batch;
      batch.Put(store::keys::MatrixPartial(room, d.message.in_reply_to), event_id);
      committer_.Submit(std::move(batch), nullptr, /*sync=*/false);
    }
  }
  replies_pending_.Add(-1);
  ScheduleEdit(id);
  Pump(room);
}

void MatrixAdapter::ReportDelivered(const Delivery& d, const std::string& event_id) {
  DeliveryListener* listener = delivery_listener();
  if (listener == nullptr || event_id.empty()) return;
  DeliveryReceipt receipt;
  receipt.message_id = d.id;
  receipt.conversation = d.message.conversation;
  receipt.conversation.platform = kPlatform;
  receipt.platform_message_id = event_id;
  listener->OnDelivered(receipt);
}

void MatrixAdapter::PartDone(const std::string& room) {
  // Record progress through a multi-part reply so a restart resends only the rest.
  store::OutboxEntry entry;
  {
    std::lock_guard<std::mutex> lock(mu_);
    RoomQueue& q = queues_[room];
    const Delivery& d = q.queue.front();
    json payload = d.message;
    payload["matrix_parts_done"] = d.parts_done;
    entry.id = d.id;
    entry.platform = kPlatform;
    entry.payload = payload.dump();
    entry.created_ms = clock_.NowMs();
  }
  store::WriteBatch batch;
  outbox_.Put(batch, entry);
  committer_.Submit(std::move(batch), nullptr, /*sync=*/false);
  Attempt(room);
}

void MatrixAdapter::Retry(const std::string& room, int64_t delay_ms, const std::string& why) {
  send_retries_.Add();
  std::string id;
  {
    std::lock_guard<std::mutex> lock(mu_);
    id = queues_[room].queue.front().id;
  }
  spdlog::warn("matrix.reply.retry id={} room={} in_ms={} error=\"{}\"", id, room, delay_ms, why);
  auto self = shared_from_this();
  After(delay_ms, [self, room] { self->Attempt(room); });
}

void MatrixAdapter::Complete(const std::string& room, Status outcome) {
  Delivery d;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = queues_.find(room);
    RoomQueue& q = it->second;
    d = std::move(q.queue.front());
    q.queue.pop_front();
    q.busy = false;
    queued_ids_.erase(d.id);
    if (q.queue.empty()) queues_.erase(it);
    streams_.erase(d.id);
  }
  replies_pending_.Add(-1);
  if (outcome.ok()) {
    replies_delivered_.Add();
    spdlog::info("matrix.reply.sent id={} turn={} room={}", d.id,
                 d.message.turn_id.empty() ? "-" : d.message.turn_id, room);
  } else {
    replies_dropped_.Add();
    spdlog::error("matrix.reply.dropped id={} turn={} room={} error=\"{}\"", d.id,
                  d.message.turn_id.empty() ? "-" : d.message.turn_id, room, outcome.message());
  }
  store::WriteBatch batch;
  outbox_.Remove(batch, kPlatform, d.id);
  if (!d.message.in_reply_to.empty()) {
    batch.Delete(store::keys::MatrixPartial(room, d.message.in_reply_to));
  }
  // The bot is in the reply's thread; a message it posted on the main line (e.g. an escalation
  // card) roots threads it takes part in.
  const std::string& thread = d.message.conversation.thread;
  const std::string root = !thread.empty() ? thread : d.first_event_id;
  if (outcome.ok() && !root.empty()) {
    batch.Put(store::keys::MatrixThread(room, root), std::to_string(clock_.NowMs()));
    std::lock_guard<std::mutex> lock(mu_);
    if (threads_.size() >= kThreadCacheLimit) threads_.clear();
    threads_.insert(room + "/" + root);
  }
  // Not synced: a removal lost to a power failure only resends with the same txnIds, which the
  // homeserver answers from its transaction cache.
  committer_.Submit(
      std::move(batch),
      [id = d.id](Status written) {
        if (!written.ok()) {
          spdlog::error("matrix.outbox.remove_failed id={} error=\"{}\"", id, written.ToString());
        }
      },
      /*sync=*/false);
  if (!d.message.in_reply_to.empty()) Typing(room, false);
  if (d.done) d.done(outcome);
  auto self = shared_from_this();
  boost::asio::post(io_, [self, room] { self->Pump(room); });
}

// ---------------------------------------------------------------------------------------------
// Streaming

void MatrixAdapter::SendPartial(const OutboundMessage& partial) {
  if (!config_.stream || stopping_ || partial.id.empty() || partial.in_reply_to.empty() ||
      partial.conversation.channel.empty() || partial.text.empty()) {
    return;
  }
  bool first = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (finals_.count(partial.id) > 0) return;  // the complete reply is on its way
    Stream& s = streams_[partial.id];
    s.touched_ms = clock_.NowMs();
    s.text = partial.text;
    s.pending = true;
    if (s.room.empty()) {
      s.room = partial.conversation.channel;
      s.posting = true;
      first = true;
    }
  }
  if (first) {
    Delivery d;
    d.id = partial.id;
    d.message = partial;
    d.placeholder = true;
    Enqueue(std::move(d));
    return;
  }
  ScheduleEdit(partial.id);
}

void MatrixAdapter::ScheduleEdit(const std::string& id) {
  std::string room, event_id, text;
  OutboundMessage message;
  int64_t wait_ms = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = streams_.find(id);
    if (it == streams_.end()) return;
    Stream& s = it->second;
    if (!s.pending || s.event_id.empty() || s.edit_in_flight || s.final_queued || s.timer_armed ||
        stopping_) {
      return;
    }
    const int64_t now = clock_.NowMs();
    // Budget across rooms: stream_edits_per_minute, a burst of a few.
    const double per_ms = std::max(1, config_.stream_edits_per_minute) / 60'000.0;
    const double burst = std::max(1.0, std::min(10.0, config_.stream_edits_per_minute / 6.0));
    if (edit_refilled_ms_ == 0) {
      edit_tokens_ = burst;
      edit_refilled_ms_ = now;
    }
    edit_tokens_ =
        std::min(burst, edit_tokens_ + static_cast<double>(now - edit_refilled_ms_) * per_ms);
    edit_refilled_ms_ = now;
    wait_ms = std::max<int64_t>(0, s.next_edit_ms - now);
    if (wait_ms == 0 && edit_tokens_ < 1.0) {
      wait_ms = static_cast<int64_t>((1.0 - edit_tokens_) / per_ms) + 1;
    }
    if (wait_ms > 0) {
      s.timer_armed = true;
    } else {
      edit_tokens_ -= 1.0;
      s.edit_in_flight = true;
      s.pending = false;
      s.next_edit_ms = now + config_.stream_interval_ms;
      room = s.room;
      event_id = s.event_id;
      text = s.text;
      message.conversation = ConversationKey{kPlatform, s.room, ""};
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
  message.text = text;
  std::vector<json> parts = BuildReplyContents(message, Options());
  json edit = BuildEditContent(event_id, parts[0]);
  api_.Call("PUT", SendPath(room, id + ".e" + NewShortId()), edit, "send", kRequestTimeoutMs,
            [self, id, room](ApiResult r) {
              bool resume = false;
              {
                std::lock_guard<std::mutex> lock(self->mu_);
                auto it = self->streams_.find(id);
                if (it != self->streams_.end()) {
                  it->second.edit_in_flight = false;
                  resume = it->second.final_waiting;
                  it->second.final_waiting = false;
                  if (r.outcome == Outcome::kRateLimited) {
                    it->second.next_edit_ms = self->clock_.NowMs() + r.retry_after_ms;
                  }
                }
              }
              if (r.ok()) {
                self->sends_.Add();
                self->stream_edits_.Add();
              } else {
                spdlog::debug("matrix.stream.edit_failed id={} room={} error=\"{}\"", id, room,
                              r.error);
              }
              if (resume) return self->Attempt(room);
              self->ScheduleEdit(id);
            });
}

// ---------------------------------------------------------------------------------------------
// Shutdown

void MatrixAdapter::StopIntake() {
  stopping_ = true;
  sync_cancel_->store(true);
}

void MatrixAdapter::Stop(std::function<void()> done) {
  StopIntake();
  auto self = shared_from_this();
  const int64_t deadline_ms = clock_.NowMs() + kStopDrainMs;
  auto finish = std::make_shared<std::function<void()>>();
  *finish = [self, done, deadline_ms, finish] {
    bool busy = false;
    {
      std::lock_guard<std::mutex> lock(self->mu_);
      for (const auto& [room, q] : self->queues_) busy = busy || !q.queue.empty();
    }
    busy = busy || self->cursor_writes_pending_ > 0;
    if (busy && self->clock_.NowMs() < deadline_ms) {
      return self->After(20, [finish] { (*finish)(); });
    }
    std::set<std::shared_ptr<boost::asio::steady_timer>> timers;
    {
      std::lock_guard<std::mutex> lock(self->mu_);
      self->stopped_ = true;
      timers.swap(self->timers_);
    }
    // Pending retries and backoffs end now (their callbacks see operation_aborted).
    for (const auto& timer : timers) timer->cancel();
    // The reset below may run on another io thread at once and destroy this closure: nothing
    // captured is touched after it is posted.
    std::function<void()> done_now = done;
    boost::asio::post(self->io_, [finish] { *finish = nullptr; });
    if (done_now) done_now();
  };
  boost::asio::post(io_, [finish] { (*finish)(); });
}

}  // namespace parley::matrix
