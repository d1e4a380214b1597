#pragma once
// The Slack adapter: Socket Mode in (SocketModeClient), Web API out (WebApi).
//
// Inbound: every envelope is acknowledged first, then handled. Events go through the codec's
// Classify (mentions, DMs, thread follow-ups, bots, subtypes) and the access policy, and reach the
// engine as durable messages whose event id is "channel:ts", so Slack's redeliveries and the
// app_mention + message double delivery are answered once (the router's de-duplication).
// Slash commands (`/parley ask|help|forget|human`) and feedback buttons are handled here.
//
// Escalation desk (SetDesk): the adapter knows only that a desk exists and which Slack channels
// are agents' channels; it never calls the desk. The threads of the bot's own root posts (cards)
// count as addressed to it: replies there need no mention (also with thread_followups off in an
// agents' channel), recognised by the durable thread mark written when the post is confirmed or
// by the event's parent_user_id. Agents' channels are exempt from channel_allowlist and
// allowed_users (the desk's agent_users decides who acts there); their main line still needs a
// mention. Buttons rendered from OutboundMessage::actions come back as messages from the
// clicking user whose text is the button's value (event id per click). With a desk, inbound
// messages carry user_name (users.info, cached for an hour; messages of one channel keep their
// order while a name is looked up), and `/parley human` asks for a person: in a DM the DM is the
// conversation; in a channel the bot opens a DM with the user (conversations.open) and the
// hand-off continues there. The command is acknowledged at once with an ephemeral note.
// Feedback buttons are left off hand-off messages (OutboundMessage::escalated) and off everything
// posted in agents' channels.
//
// Outbound: replies go to a per-channel queue: at most one chat.postMessage in flight per
// channel, paced by a token bucket (slack.post_rate_per_channel, post_burst), so replies to one
// conversation keep their order. A 429 pauses that channel's queue for Retry-After and the same
// message is sent again; transport errors and 5xx are retried with jittered backoff; ok:false
// errors are logged with the channel and counted, and the reply is dropped. Every reply is in the
// store's outbox (written with the turn) until Slack confirmed all its parts; progress through a
// multi-part reply is recorded, so a restart resends only what was not confirmed.
// Replies to slash commands go to the command's response_url (ephemeral).
//
// Streaming (slack.stream): the first partial of a reply queues a placeholder post in the reply's
// channel queue (so it keeps the conversation's order and the channel's pacing) with metadata
// event_type parley_partial, which a resend's check never takes for a delivered part. Later
// partials edit it with chat.update: at most one edit in flight per answer, at least
// slack.stream_interval_ms apart, within a workspace-wide budget (stream_edits_per_minute);
// partials that arrive meanwhile are coalesced (only the latest text is sent). The final Send
// waits for an edit in flight, then replaces the placeholder with the complete first part (blocks,
// citations, buttons, metadata parley_reply) and posts any further parts. If Slack refuses that
// edit, the answer is posted normally and the placeholder deleted. If the placeholder post may or
// may not have reached Slack (transport error), the final first looks for it (as after a crash);
// a resend after a crash finds a parley_partial placeholder of its reply and edits it.
//
// Thread-safety: thread-safe. Lifetime: create with std::make_shared; Stop() before destroying
// the io_context.

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

#include "adapters/slack/codec.h"
#include "adapters/slack/socket_mode.h"
#include "adapters/slack/web_api.h"
#include "config/config.h"
#include "core/channel.h"
#include "core/clock.h"
#include "core/control.h"
#include "core/lru.h"
#include "core/metrics.h"
#include "net/http.h"
#include "store/committer.h"
#include "store/kv_store.h"
#include "store/records.h"

namespace parley::slack {

// Who the bot is, from auth.test.
struct BotIdentity {
  std::string user_id;  // U…
  std::string bot_id;   // B…
  std::string team_id;  // T…
  std::string team;     // workspace name (logs)
};

class SlackAdapter final : public ChannelAdapter,
                           public std::enable_shared_from_this<SlackAdapter> {
 public:
  // on_fatal runs (once, on any thread) when the adapter cannot go on: a bad token at start or
  // later, or Socket Mode turned off for the app (link_disabled). The daemon should stop.
  SlackAdapter(boost::asio::io_context& io, config::SlackConfig config,
               std::shared_ptr<net::HttpClient> http, store::KvStore& kv,
               store::Committer& committer, ConversationControl& control, const Clock& clock,
               MetricsRegistry& metrics, std::function<void(Status)> on_fatal);
  ~SlackAdapter() override;

  std::string platform() const override { return kPlatform; }

  // The escalation desk as the adapter sees it. Set before Start.
  struct DeskLink {
    bool active = false;                      // a desk with at least one queue
    std::vector<std::string> agent_channels;  // Slack channel ids of agents' channels
  };
  void SetDesk(DeskLink link);

  // Queues the replies left in the outbox by an earlier run. Call once, before the router replays
  // its inbox (whose replies arrive through Send) and before Start.
  Status ResumeOutbox();

  // auth.test (transport failures retried with backoff; a bad token calls on_fatal), then opens
  // the Socket Mode connections. Returns at once; intake starts when the first socket says hello.
  Status Start(InboundSink& sink) override;
  // Stops acknowledging envelopes and closes the sockets (Slack redelivers what was not
  // acknowledged to the next run or another replica). Call first when shutting down, before the router stops taking messages, so no acknowledged
  // event is refused.
  void StopIntake();
  // Stops intake, lets queued replies go out (5 s at most), then closes the sockets.
  // Replies still queued then stay in the outbox for the next start.
  void Stop(std::function<void()> done) override;

  bool DeliversDurably(const OutboundMessage& message) const override;
  void Send(OutboundMessage message, DeliveryCallback done) override;
  // Shows a reply still being written (see Streaming above). Ignored unless slack.stream, for
  // messages that are not replies, for slash command answers (ephemeral), and after Send.
  void SendPartial(const OutboundMessage& partial) override;

  // Sockets that have said hello.
  size_t ReadySockets() const;

 private:
  struct Delivery {
    std::string id;
    OutboundMessage message;
    int parts_done = 0;  // chat.postMessage bodies Slack has confirmed
    int attempts = 0;    // failed attempts of the current part
    int64_t created_ms = 0;
    // Loaded from the outbox at start: the previous run may have been stopped after Slack
    // confirmed a part and before that was recorded, so Slack is asked first (verified).
    bool resumed = false;
    bool verified = false;
    // Not a reply but the placeholder of the streamed reply `id` (not durable, not counted).
    bool placeholder = false;
    std::string first_ts;  // the first part's ts once Slack confirmed it
    DeliveryCallback done;
  };
  // A reply being streamed, by reply id. Guarded by mu_.
  struct Stream {
    enum class Placeholder {
      kQueued,     // its post is queued or in flight
      kPosted,     // Slack confirmed it: ts is set
      kFailed,     // not posted (or given up on): the final is posted normally
      kUncertain,  // the post failed in transport and may have reached Slack: look first
    };
    std::string channel;
    std::string thread_ts;
    Placeholder placeholder = Placeholder::kQueued;
    std::string ts;        // the placeholder's ts (kPosted)
    std::string text;      // the latest partial (Markdown)
    bool pending = false;  // text has not been sent yet
    bool edit_in_flight = false;
    bool timer_armed = false;    // a timer will try the next edit
    bool edits_stopped = false;  // Slack refused an edit: no more partial edits
    bool final_queued = false;   // Send has the complete reply: no more partial edits
    bool final_waiting = false;  // the final waits for the edit in flight, which resumes it
    int64_t next_edit_ms = 0;    // earliest time of the next partial edit
    int64_t touched_ms = 0;
    std::string stale_ts;  // a placeholder to delete once the reply is delivered
  };
  struct ChannelQueue {
    std::deque<Delivery> queue;
    bool busy = false;       // the front delivery is being worked on (call or timer pending)
    bool in_flight = false;  // a call for the front delivery is under way
    double tokens = 0;     // pacing bucket
    int64_t refilled_ms = 0;
  };

  // The adapter-private reply route of a slash command's answer.
  struct SlashRoute {
    std::string response_url;  // empty: answer with chat.postEphemeral instead
    std::string user;
  };
  enum class ReactionState { kPending, kAdding, kAdded, kRemoveWanted };

  void Authenticate(int attempt);
  void OpenSockets();
  void OnEnvelope(Envelope envelope, AckFn ack);
  void OnEvent(const Envelope& envelope);
  void OnSlashCommand(const Envelope& envelope, AckFn ack);
  void OnBlockAction(const Envelope& envelope);
  // `/parley human` with a desk: hands the user's DM (dm_channel) to the desk.
  void RequestHuman(const SlashCommand& cmd, const std::string& dm_channel,
                    const std::string& event_id, const std::string& reason);
  bool IsAgentChannel(const std::string& channel) const;
  // Runs fn with the user's display name ("" when unknown or without a desk), in arrival order
  // per channel: a message waiting for users.info holds back later ones of its channel.
  void WithUserName(const std::string& channel, const std::string& user,
                    std::function<void(std::string)> fn);
  void LookUpName(const std::string& user);
  void DrainNameWaiters();
  // Hands m to the sink (durable); refusals are told to the user ephemerally.
  void Intake(InboundMessage m);
  void Refuse(const std::string& channel, const std::string& user, const std::string& text);
  bool BotInThread(const std::string& channel, const std::string& thread_ts);
  // Notes that the bot answered in the thread; adds the durable mark to batch when it is new.
  void RememberThread(const std::string& channel, const std::string& thread_ts,
                      store::WriteBatch& batch);
  void SignalWorking(const std::string& channel, const std::string& ts, bool on);
  // Calls reactions.add; the caller has set reactions_[channel/ts] to kAdding.
  void AddReaction(const std::string& channel, const std::string& ts);
  void RemoveReaction(const std::string& channel, const std::string& ts);
  void Fatal(Status why);

  void Enqueue(Delivery delivery);
  void Pump(const std::string& channel);
  void Attempt(const std::string& channel);
  void AttemptResponseUrl(const std::string& channel, Delivery& d, const SlashRoute& route);
  void Verify(const std::string& channel, Delivery& d);
  // Tells the delivery listener (if any) that the reply's first part is on Slack as ts.
  // Remembers ts as the delivery's first part (a root post's ts starts a bot thread).
  void ReportDelivered(const std::string& channel, Delivery& d, const std::string& ts);
  void PartDone(const std::string& channel);
  void Retry(const std::string& channel, int64_t delay_ms, const std::string& why);
  void Complete(const std::string& channel, Status outcome);

  // Streaming (see the class comment). Callers do not hold mu_ unless the name says Locked.
  void EnqueuePlaceholder(const OutboundMessage& partial);
  void AttemptPlaceholder(const std::string& channel, Delivery& d);
  void PlaceholderDone(const std::string& channel);
  // Starts the next partial edit of reply id now or arms a timer for it, if one is due.
  void ScheduleEdit(const std::string& id);
  // The final edit: replaces the placeholder ts with body (part 0 of the complete reply).
  void AttemptFinalEdit(const std::string& channel, Delivery& d, const nlohmann::json& body,
                        const std::string& ts, size_t parts);
  // Forgets the reply's stream once the reply is done; deletes a stale placeholder if delivered.
  void EndStream(const std::string& id, bool delivered);
  // Whether the front delivery d needs a chat.postMessage (a pacing token).
  bool NeedsPostLocked(const Delivery& d) const;
  void SweepStreamsLocked(int64_t now_ms);
  void After(int64_t delay_ms, std::function<void()> fn);

  boost::asio::io_context& io_;
  config::SlackConfig config_;
  store::KvStore& kv_;
  store::Committer& committer_;
  ConversationControl& control_;
  const Clock& clock_;
  MetricsRegistry& metrics_;
  std::function<void(Status)> on_fatal_;
  WebApi api_;
  store::Outbox outbox_;
  std::unique_ptr<SocketModeClient> sockets_;
  InboundSink* sink_ = nullptr;
  std::atomic<bool> stopping_{false};
  std::atomic<bool> fatal_{false};
  std::atomic<bool> stopped_{false};  // Stop() finished: no new Web API deliveries start

  mutable std::mutex mu_;
  BotIdentity bot_;
  std::map<std::string, ChannelQueue> channels_;
  std::unordered_set<std::string> queued_ids_;  // delivery ids queued or in flight
  // "channel/thread_ts" the bot answered in: a cache of the store's marks, least recently used
  // leaving first past 2 MiB (~15,000 threads).
  LruMap<bool> threads_{2 << 20};
  std::unordered_map<std::string, int64_t> refused_notes_;  // "channel/user" -> last note ms
  std::unordered_map<std::string, ReactionState> reactions_;  // "channel/ts" working signals
  std::unordered_map<std::string, Stream> streams_;           // streamed replies by id
  std::unordered_set<std::string> finals_;  // reply ids whose final was sent: late partials ignored
  std::deque<std::string> finals_order_;    // bounds finals_
  DeskLink desk_;                           // set before Start; read-only afterwards
  // Display names: user -> (name, expiry ms); "" = unknown (looked up again after expiry).
  struct Name {
    std::string name;
    int64_t expires_ms = 0;
  };
  struct NameWaiter {
    std::string user;
    std::function<void(std::string)> fn;
  };
  std::mutex names_mu_;  // guards the three below; held while waiters run (keeps their order)
  std::unordered_map<std::string, Name> names_;
  std::unordered_set<std::string> name_lookups_;                // users.info in flight
  std::map<std::string, std::deque<NameWaiter>> name_waiters_;  // by channel, arrival order
  double edit_tokens_ = 0;                  // workspace-wide budget of partial edits
  int64_t edit_refilled_ms_ = 0;
  int64_t swept_ms_ = 0;

  Counter& events_received_;
  Counter& events_ignored_;
  Counter& events_refused_;
  Counter& replies_delivered_;
  Counter& replies_dropped_;
  Counter& feedback_helpful_;
  Counter& feedback_unhelpful_;
  Counter& stream_placeholders_;
  Counter& stream_edits_partial_;
  Counter& stream_edits_final_;
  Counter& stream_partials_dropped_;
  Counter& stream_fallbacks_;
  Gauge& replies_pending_;
};

}  // namespace parley::slack
