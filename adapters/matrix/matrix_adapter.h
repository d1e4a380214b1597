#pragma once
// The Matrix adapter: a bot user on any homeserver over the client-server API (/sync long-poll in,
// PUT /send out), through the daemon's asynchronous HttpClient. No end-to-end encryption.
//
// Start-up: the access token is matrix.access_token, or the one a previous password login left in
// the store (v1/matrix/session), or a new m.login.password login (which passes the stored or
// configured device id, so the device and the txnId scope stay the same); then GET whoami checks
// it. M_UNKNOWN_TOKEN (at any call of the sync loop): with a password configured and either
// soft_logout:true or a token from the adapter's own stored login, it logs in again (same device,
// at most once a minute) and carries on; otherwise one error line and on_fatal. A sync filter is
// uploaded once per start (timeline limit from matrix.timeline_limit, presence off, lazy-loaded
// members) and uploaded again when the server answers M_INVALID_PARAM for its id.
//
// Inbound: one /sync long-poll at a time (timeout matrix.sync_timeout_ms; the HTTP timeout is 30 s
// longer). The batch's next_batch is stored (v1/cursor/matrix; not synced of its own, it rides on
// the next synced write; the next long-poll does not wait for it) only after every message of the batch was accepted by the InboundSink
// (durable intake), so a crash replays at most unstored batches and
// the router's de-duplication (event id = the Matrix event id) answers each message once. With no
// stored cursor (the very first start) the initial sync's backlog is skipped. A `limited`
// timeline is filled with GET /messages from prev_batch back to the previous since before the
// batch is handed on, so a burst larger than the timeline limit loses nothing. Transport errors,
// 5xx, HTML pages and malformed JSON back off with jitter; 429 waits Retry-After (then
// retry_after_ms).
//
// Rooms: invites are joined when the inviter is allowed (matrix.allowed_inviters; default: users
// of the bot's own server) and auto_join is on; others are declined (leave). An invite to an
// encrypted room is declined with encrypted_rooms = decline (a joined room that turns encrypted is
// left); with encrypted_rooms = notice the bot joins and posts one plaintext notice (once per room,
// remembered in the store). A join refused with 429 is retried after the server's delay. Leaving,
// kicks and bans drop the room from memory; a later invite is handled anew.
// Classification (codec.h): own events, m.notice, edits, redactions, encrypted and non-text
// events are ignored; messages in DMs (is_direct invite, m.direct, or two joined members) are
// addressed to the bot; in rooms when they mention it (m.mentions authoritative when present; else
// user id, localpart, display name or a matrix.to pill) or follow up in a thread it posted in
// (matrix.thread_followups; durable: v1/matrix/thread). Messages outside matrix.room_allowlist or
// from users not in matrix.allowed_users are ignored silently (counted, logged at info).
//
// Outbound: one send queue per room (order kept within a room; a 429 in one room pauses only that
// room, for Retry-After, then retry_after_ms). Each reply is in the store's outbox (written with
// the turn by the router; unsolicited messages are written here first) until the homeserver
// confirmed all its parts; the txnId of part n is "<message id>.<n>": the message id is in the
// outbox before the first attempt, so every retry (also after a restart) reuses the txnId and no
// other message ever has it. Transport errors and 5xx are retried with jittered backoff (10
// attempts per part), 429 without limit; other refusals (403 after a kick, ...) drop the reply.
// Progress through a multi-part reply (each part below ~28 KiB of content) is recorded in the
// outbox entry. Sends wait until whoami confirmed the token. The first part's event id is
// reported to the DeliveryListener. Typing notifications run from intake to the reply
// once a turn has taken matrix.typing_delay_ms (matrix.typing; renewed every 20 s).
//
// Streaming (matrix.stream): the first partial posts the answer so far (txnId "<id>.s"); later
// partials edit it (m.replace with the full m.new_content, "m.mentions": {} at the top level),
// at most one edit in flight per answer, matrix.stream_interval_ms apart, within a budget of
// matrix.stream_edits_per_minute edits across rooms; partials that arrive meanwhile are
// coalesced. The final Send waits for an edit in flight, then replaces the placeholder with the
// complete first part (txnId "<id>.0e") and posts any further parts. A placeholder posted before
// a crash is not found again: the replayed answer is posted as a new message.
//
// Thread-safety: thread-safe. Lifetime: create with std::make_shared; Stop() before destroying the
// io_context.

#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "adapters/matrix/client_api.h"
#include "adapters/matrix/codec.h"
#include "config/config.h"
#include "core/channel.h"
#include "core/clock.h"
#include "core/control.h"
#include "core/metrics.h"
#include "net/http.h"
#include "store/committer.h"
#include "store/kv_store.h"
#include "store/records.h"

namespace parley::matrix {

struct SyncWork;  // one /sync batch being handled (matrix_adapter.cc)

class MatrixAdapter final : public ChannelAdapter,
                            public std::enable_shared_from_this<MatrixAdapter> {
 public:
  // on_fatal runs (once, on any thread) when the adapter cannot go on: the token is refused
  // (M_UNKNOWN_TOKEN without a way to log in again), the login is refused, or the configured
  // user id is not the token's. The daemon should stop.
  MatrixAdapter(boost::asio::io_context& io, config::MatrixConfig config,
                std::shared_ptr<net::HttpClient> http, store::KvStore& kv,
                store::Committer& committer, ConversationControl& control, const Clock& clock,
                MetricsRegistry& metrics, std::function<void(Status)> on_fatal);
  ~MatrixAdapter() override;

  std::string platform() const override { return kPlatform; }

  // Queues the replies left in the outbox by an earlier run. Call once, before the router replays
  // its inbox and before Start.
  Status ResumeOutbox();

  // Login (if needed), whoami, filter, then the sync loop. Returns at once.
  Status Start(InboundSink& sink) override;
  // Stops the sync loop (the batch being handled is not stored as done, so the next run gets it
  // again). Call first when shutting down, before the router stops taking messages.
  void StopIntake();
  // Stops intake, lets queued replies go out (5 s at most); what is left stays in the outbox.
  void Stop(std::function<void()> done) override;

  bool DeliversDurably(const OutboundMessage& message) const override;
  void Send(OutboundMessage message, DeliveryCallback done) override;
  void SendPartial(const OutboundMessage& partial) override;

  // For tests and /readyz: true once the first sync after start-up has been handled.
  bool Syncing() const { return syncing_.load(); }
  // The bot's user id and device once authenticated (empty before).
  std::string UserId() const;
  std::string DeviceId() const;

 private:
  struct Delivery {
    std::string id;
    OutboundMessage message;
    int parts_done = 0;          // parts the homeserver confirmed
    int attempts = 0;            // failed attempts of the current part
    bool placeholder = false;    // the first post of a streamed answer (not durable)
    std::string first_event_id;  // part 0's event, once confirmed
    DeliveryCallback done;
  };
  struct RoomQueue {
    std::deque<Delivery> queue;
    bool busy = false;  // the front delivery is being worked on (call or timer pending)
  };
  // A reply being streamed, by reply id. Guarded by mu_.
  struct Stream {
    std::string room;
    std::string event_id;  // the posted placeholder; empty until confirmed (or if it failed)
    bool posting = false;  // the placeholder is queued or in flight
    bool failed = false;   // the placeholder was not posted: the final posts normally
    std::string text;      // latest partial (Markdown)
    bool pending = false;  // text not shown yet
    bool edit_in_flight = false;
    bool timer_armed = false;
    bool final_queued = false;   // Send has the complete reply: no more partial edits
    bool final_waiting = false;  // the final waits for the edit in flight, which resumes it
    int64_t next_edit_ms = 0;
    int64_t touched_ms = 0;
  };
  struct RoomInfo {
    bool direct_member = false;   // the bot's membership says is_direct (the invite)
    bool direct_account = false;  // listed in m.direct account data
    bool encrypted = false;
    bool notice_checked = false;  // encrypted-room handling (notice or leave) done
    int64_t joined_count = -1;    // summary.m.joined_member_count when the server gave it
    std::unordered_map<std::string, std::string> names;  // display names of members seen
  };
  struct PendingInvite {
    bool direct = false;
    bool encrypted = false;
  };

  // Start-up chain: Authenticate → [Login] → WhoAmI → FetchDisplayName → UploadFilter →
  // StartSyncing → Sync loop.
  void Authenticate();
  void Login(int attempt, std::function<void()> then);
  void WhoAmI(int attempt);
  void FetchDisplayName();
  void UploadFilter(int attempt);
  void StartSyncing();
  // A refused token: log in again (password, soft logout or our own stored token; once a minute
  // at most) and resume, else Fatal.
  void OnUnknownToken(const ApiResult& r, std::function<void()> resume);
  void Fatal(Status why);
  void After(int64_t delay_ms, std::function<void()> fn);

  // The sync loop: Sync → HandleSync (rooms, invites) → FillGaps (/messages) → Deliver (to the
  // sink) → FinishBatch (store next_batch) → Sync.
  void Sync(int attempt);
  void HandleSync(std::shared_ptr<SyncWork> work);
  void FillGaps(std::shared_ptr<SyncWork> work);
  void Deliver(std::shared_ptr<SyncWork> work);
  void FinishBatch(std::shared_ptr<SyncWork> work, bool all_accepted);
  void ApplyStateLocked(const std::string& room_id, RoomInfo& info, const RoomEvent& e);
  bool SeenLocked(const std::string& event_id) const;
  void RememberSeenLocked(const std::string& event_id);

  // Rooms.
  void HandleInvite(const InvitedRoom& room);
  void Join(const std::string& room_id, int attempt);
  void Leave(const std::string& room_id, const std::string& why);
  void PostEncryptedNotice(const std::string& room_id);
  // Counts turns running per room: typing on at the first, off after the last (renewed every
  // 20 s in between).
  void Typing(const std::string& room_id, bool on);
  void RefreshTyping(const std::string& room_id, uint64_t generation);
  void SendTyping(const std::string& room_id, bool on);
  bool BotInThread(const std::string& room_id, const std::string& root);

  // Outbound.
  std::string SendPath(const std::string& room, const std::string& txn) const;
  ReplyOptions Options() const;
  void Enqueue(Delivery delivery);
  void Pump(const std::string& room);
  void Attempt(const std::string& room);
  void AttemptPlaceholder(const std::string& room, Delivery& d);
  void PlaceholderDone(const std::string& room, const std::string& event_id);
  void Retry(const std::string& room, int64_t delay_ms, const std::string& why);
  void PartDone(const std::string& room);
  void Complete(const std::string& room, Status outcome);
  void ReportDelivered(const Delivery& d, const std::string& event_id);
  // Starts the next partial edit of reply id now or arms a timer for it, if one is due.
  void ScheduleEdit(const std::string& id);

  boost::asio::io_context& io_;
  config::MatrixConfig config_;
  store::KvStore& kv_;
  store::Committer& committer_;
  ConversationControl& control_;  // reserved for user commands (forget)
  const Clock& clock_;
  MetricsRegistry& metrics_;
  std::function<void(Status)> on_fatal_;
  ClientApi api_;
  store::Outbox outbox_;
  std::shared_ptr<std::atomic<bool>> sync_cancel_;  // aborts the long-poll at shutdown
  InboundSink* sink_ = nullptr;
  std::atomic<bool> stopping_{false};
  std::atomic<bool> stopped_{false};
  std::atomic<bool> fatal_{false};
  std::atomic<bool> syncing_{false};
  std::atomic<int> cursor_writes_pending_{0};  // cursor writes submitted, not yet done

  mutable std::mutex mu_;
  BotIdentity bot_;
  std::string device_id_;
  std::string filter_id_;
  std::string since_;              // the stored cursor; empty before the first sync
  bool token_from_store_ = false;  // the token came from a password login (ours)
  bool authenticated_ = false;     // whoami confirmed the token: replies may go out
  int64_t last_relogin_ms_ = 0;
  std::unordered_map<std::string, RoomInfo> rooms_;
  std::set<std::string> direct_rooms_;  // m.direct
  std::unordered_set<std::string> joining_;
  std::unordered_map<std::string, PendingInvite> pending_invites_;
  std::map<std::string, RoomQueue> queues_;
  std::unordered_set<std::string> queued_ids_;   // delivery ids queued ("<id>#s": placeholders)
  std::unordered_set<std::string> threads_;      // "room/root" the bot answers in (cache)
  std::unordered_map<std::string, int> typing_;  // room -> turns running
  std::unordered_map<std::string, uint64_t> typing_chain_;  // room -> its refresh chain
  uint64_t typing_generation_ = 0;
  std::unordered_set<std::string> typing_shown_;  // rooms whose notification was sent
  std::unordered_map<std::string, Stream> streams_;
  std::unordered_set<std::string> finals_;  // reply ids whose final was sent: late partials ignored
  std::deque<std::string> finals_order_;
  std::deque<std::string> recent_events_;  // event ids accepted (or refused) lately, oldest first
  std::unordered_set<std::string> recent_set_;
  std::set<std::shared_ptr<boost::asio::steady_timer>> timers_;  // pending After() timers
  double edit_tokens_ = 0;  // budget of partial edits across rooms
  int64_t edit_refilled_ms_ = 0;

  Counter& events_received_;
  Counter& events_ignored_;
  Counter& events_refused_;
  Counter& events_duplicate_;
  Counter& events_accepted_;
  Counter& replies_delivered_;
  Counter& replies_dropped_;
  Counter& sends_;
  Counter& send_retries_;
  Counter& stream_edits_;
  Counter& syncs_;
  Counter& sync_errors_;
  Counter& gaps_filled_;
  Gauge& replies_pending_;
  Gauge& sync_lag_ms_;
};

}  // namespace parley::matrix
