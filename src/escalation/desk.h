#pragma once
// The escalation desk: hands conversations the bot should not or cannot answer to people working
// in agents' channels (any adapter), relays both ways once an agent claimed the ticket, and keeps
// SLA timers. All of its state lives in the store; a Desk opened over the same store after a crash
// continues every open ticket and timer.
//
// Wiring (the composition root / router), per inbound message on the conversation's serial queue:
//   1. DeskResult r = desk.BeforeTurn(message);
//      r.handled: the bot does not answer; commit only the dedupe mark and the inbox removal.
//      (!r.status.ok(): the store failed; nothing changed; treat like a failed turn.)
//   2. otherwise run the engine, then desk.AfterTurn(message, reply, info) before committing the
//      turn: it may open a ticket, in which case it appends the acknowledgement to reply.text and
//      sets reply.escalated (the user gets one message; the card goes to the agents).
// A message with InboundMessage::request_human set (a platform command such as Slack's
// `/parley human`) opens a ticket (reason "request") whatever its text; with a ticket already
// open it gets where the user stands. Cards (and their SLA re-announcements) carry
// OutboundMessage::actions Claim / Resolve / Return whose values are the commands with the ticket
// id ("claim 17"): adapters with buttons render them, and a click is an agent's message. The SLA
// notice with the on-call mention sets OutboundMessage::keep_mentions (the mention notifies).
// With a Summarizer set (the LLM), a new ticket's card carries the condensed summary and the
// ticket's summary_source is "pending"; the model's summary, when it comes, replaces it, is
// posted in the card's thread ("Summary: ...") and summary_source becomes "model". A failure
// leaves the condensed one ("turns"). A summary still pending at a restart is asked for again.
// Elsewhere: desk.Tick() every few seconds (SLA timers); desk.OnDelivered(receipt) when an
// adapter reports the platform id of a message it posted (Slack ts, Matrix event id) so that
// replies in the card's thread are recognised; desk.OnNegativeFeedback(...) from feedback
// buttons; List / Get for `parley escalations list|show ID` and GET /v1/escalations.
//
// Durability and exactly-once: each operation writes its ticket changes, the "seen" mark of the
// inbound event and the outbox entries of the messages it sends (for messages the sink delivers
// durably) in one synced batch, then hands the messages to the ReplySink. Message ids are
// deterministic ("esc-<ticket>-<source>-<n>"), so an operation replayed after a crash is
// recognised by its seen mark, changes nothing and sends nothing; the adapters resume the outbox.
//
// Messages the desk sends in reply to an inbound event in the same conversation carry
// in_reply_to = that event id and its reply_route (a webhook caller waiting on its request gets
// that message as the response); unsolicited messages carry the conversation's reply route
// (the ticket's for the user, store::RouteBook's for an agents' channel).
//
// Thread-safety: thread-safe. Every public method holds the desk's mutex while it reads and
// writes state, so ticket updates from different conversations commit in order; messages are
// handed to the sink after the write, in commit order, outside the state mutex. The sink may call
// OnDelivered from inside Send; it must not call BeforeTurn/AfterTurn/OnNegativeFeedback/Tick
// from inside Send. The store, sink, clock, metrics and memory must outlive the Desk.

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "core/channel.h"
#include "core/clock.h"
#include "core/message.h"
#include "core/metrics.h"
#include "core/status.h"
#include "escalation/business_hours.h"
#include "escalation/commands.h"
#include "escalation/options.h"
#include "escalation/ticket.h"
#include "store/kv_store.h"
#include "store/memory.h"

namespace parley::escalation {

// What the desk did with an event.
struct DeskResult {
  Status status;         // non-OK: the store failed; nothing changed and nothing was sent
  bool handled = false;  // BeforeTurn: the bot must not answer this message
  // For logs and tests: "" (not the desk's), "duplicate", "opened", "waiting", "relayed",
  // "cancelled", "command", "refused", "noticed" (Tick), "error".
  std::string outcome;
  std::string ticket_id;              // the ticket concerned, when there is one
  std::vector<OutboundMessage> sent;  // the messages handed to the sink, in order
};

// What the engine decided in a turn (for AfterTurn).
struct TurnInfo {
  std::string outcome;          // the engine's outcome label: "answered", "no_answer", "error"...
  std::string escalate_topic;   // escalate_to_human's "topic", when the reply is escalated
  std::string escalate_reason;  // escalate_to_human's "reason"
};

// A "not helpful" on one of the bot's answers.
struct FeedbackEvent {
  ConversationKey conversation;  // the user's conversation
  std::string user;
  std::string user_name;
  std::string message_id;   // the rated bot message
  std::string reply_route;  // if the adapter has one for the conversation
};

// An adapter's report of where a message landed (core/channel.h).
using DeliveryReceipt = ::parley::DeliveryReceipt;

struct TicketFilter {
  std::string state;  // StateName spelling, or "open" (queued or claimed); "" = any
  std::string queue;  // "" = any
  size_t limit = 100;
};

class Desk {
 public:
  // Reports a summary written for a ticket, or why there is none. Any thread, once.
  using SummaryCallback = std::function<void(Result<std::string>)>;
  // Asks for a summary of the ticket (transcript filled) and calls done with it, later or at
  // once. Called without the desk's locks held, from the thread of the desk call that opened or
  // found the ticket; must not block. `done` may call into the desk (it takes the desk's mutex
  // and writes to the store); it is safe to call after the Desk is gone (then it does nothing).
  using Summarizer = std::function<void(const Ticket& ticket, SummaryCallback done)>;

  // Validates options and loads every open ticket. `memory` (nullable) supplies the recent turns
  // of a conversation when a ticket is opened. InvalidArgument for bad options; the store's error
  // when loading fails. With no queues (or enabled = false) the desk is inactive: every hook
  // returns "not handled" and does nothing.
  static Result<std::unique_ptr<Desk>> Open(DeskOptions options, store::KvStore& kv,
                                            ReplySink& sink, const Clock& clock,
                                            MetricsRegistry& metrics,
                                            const store::ConversationMemory* memory = nullptr);
  ~Desk();
  Desk(const Desk&) = delete;
  Desk& operator=(const Desk&) = delete;

  bool active() const { return active_; }
  // Sets who writes tickets' summaries (the model); without one the summary is the user's
  // messages condensed. Call before the first event.
  void SetSummarizer(Summarizer summarizer);

  // Before the engine: replays, agents' commands and relays, messages of escalated
  // conversations, and the triggers checked before the bot answers (request phrases, policy
  // patterns).
  DeskResult BeforeTurn(const InboundMessage& message);
  // After the engine, before the turn's commit: the model's escalate_to_human
  // (reply.escalated) and the low-confidence streak. May amend reply (text, escalated).
  DeskResult AfterTurn(const InboundMessage& message, OutboundMessage& reply, const TurnInfo& info);
  // Opens a ticket (reason "feedback") unless the conversation has one or feedback is off.
  DeskResult OnNegativeFeedback(const FeedbackEvent& feedback);
  // Records where a desk message landed; maps a card's platform id to its ticket.
  Status OnDelivered(const DeliveryReceipt& receipt);
  // SLA timers of queued tickets. The SLA clock counts business time only: due = queued time +
  // sla_minutes of the queue's open hours; notices go out only while the queue is open. Stage 1:
  // the card is re-announced in the agents' channel; stage 2 (another SLA period later):
  // priority raised by one and the on-call mention posted; then a re-announcement every
  // sla_renotify_minutes (0: none). Each stage also updates the waiting user. Call every few
  // seconds; a missed period is caught up with one notice, not several. Once an hour it also
  // deletes closed tickets older than retention_days.
  DeskResult Tick();

  // Tickets (open and closed), newest first.
  Result<std::vector<Ticket>> List(const TicketFilter& filter) const;
  // NotFound for an unknown id.
  Result<Ticket> Get(const std::string& id) const;
  // The open ticket of a conversation, if any.
  bool IsEscalated(const ConversationKey& conversation) const;
  // The 1-based position of a queued ticket in its queue; 0 when not queued.
  int QueuePosition(const std::string& id) const;

 private:
  struct Queue {
    QueueOptions options;
    std::string platform;  // of the agents' channel
    std::string channel;
    std::vector<std::regex> patterns;
    BusinessHours hours;
  };
  // One operation's writes and messages, committed together.
  struct Txn {
    store::WriteBatch batch;
    std::vector<OutboundMessage> out;
    std::vector<Ticket> tickets;  // new versions of changed tickets (applied to memory on commit)
    int64_t next_id = 0;          // > 0: the id counter after this txn
    std::vector<std::string> opened_triggers;  // metrics, applied on commit
    std::vector<std::pair<std::string, double>> claim_seconds;
    std::vector<double> resolve_seconds;
    std::vector<std::string> breaches;  // queue names
  };

  Desk(DeskOptions options, store::KvStore& kv, ReplySink& sink, const Clock& clock,
       MetricsRegistry& metrics, const store::ConversationMemory* memory);
  Status Load();

  // Lookups (callers hold mu_).
  const Queue* FindQueue(const std::string& name) const;
  const Queue* AgentsQueueFor(const std::string& platform, const std::string& channel) const;
  bool IsAgent(const std::string& platform, const std::string& channel,
               const std::string& user) const;
  Result<Ticket> LoadTicket(const std::string& id) const;
  std::string ThreadTicket(const std::string& platform, const std::string& channel,
                           const std::string& thread) const;
  int PositionOf(const Ticket& ticket) const;
  const Ticket* OpenTicketFor(const ConversationKey& conversation) const;

  // Decisions.
  size_t Route(const std::string& text, const std::string& topic,
               const ConversationKey& conversation) const;
  std::string MatchRequestPhrase(const std::string& text) const;
  bool IsCancel(const std::string& text) const;

  // Building messages and writes.
  OutboundMessage ToUser(const Ticket& ticket, std::string text, std::string id,
                         const std::string& in_reply_to) const;
  OutboundMessage ToThread(const Ticket& ticket, std::string text, std::string id) const;
  OutboundMessage ToMainLine(const Queue& queue, std::string text, std::string id) const;
  OutboundMessage Answer(const InboundMessage& message, std::string text, std::string id) const;
  std::string CardText(const Ticket& ticket, const std::string& headline) const;
  std::string AckText(const Ticket& ticket, int position) const;
  // Puts the ticket and its indexes (open, queue) into txn, given its stored version (nullptr
  // when new).
  void Stage(Txn& txn, const Ticket* before, const Ticket& after) const;
  void MarkSeen(Txn& txn, const std::string& platform, const std::string& event_id,
                const std::string& ticket_id, const std::string& kind,
                const std::string& ack) const;
  // Creates a ticket (routing, transcript, summary, card, SLA) into txn; returns it.
  Ticket NewTicket(Txn& txn, const ConversationKey& conversation, const std::string& user,
                   const std::string& user_name, const std::string& reply_route,
                   const std::string& reason, const std::string& detail, const std::string& text,
                   const std::string& topic, int forced_queue, const std::string& event_id,
                   const std::string& source, const OutboundMessage* bot_reply) const;
  int64_t SlaDue(const Queue& queue, int64_t from_ms, int64_t duration_ms) const;

  // Writes txn (synced), applies it to memory and metrics, then sends its messages after
  // releasing `lock` (which holds mu_), and asks for the summaries its tickets await. Returns the
  // store's status. `lock` is released on return.
  Status Commit(std::unique_lock<std::mutex>& lock, Txn& txn, DeskResult& result);
  // Of `tickets`, those whose summary is pending and not asked for yet; marks them asked.
  // Callers hold mu_.
  std::vector<Ticket> SummariesToAsk(const std::vector<Ticket>& tickets);
  // Hands the tickets to the summarizer. Callers hold no desk lock.
  void AskSummaries(const std::vector<Ticket>& tickets);
  // The summarizer's answer for ticket `id`.
  void OnSummary(const std::string& id, Result<std::string> summary);

  // Event handlers (callers hold mu_; they commit through `lock`).
  DeskResult HandleAgentMessage(std::unique_lock<std::mutex>& lock, const InboundMessage& m);
  DeskResult HandleUserMessage(std::unique_lock<std::mutex>& lock, const InboundMessage& m,
                               const Ticket& ticket);
  // A request for a person (InboundMessage::request_human) in a conversation that has a ticket.
  DeskResult AlreadyEscalated(std::unique_lock<std::mutex>& lock, const InboundMessage& m,
                              const Ticket& ticket);
  DeskResult Refuse(std::unique_lock<std::mutex>& lock, const InboundMessage& m,
                    const std::string& ticket_id, const std::string& text);
  void UpdateGauges() const;
  Status SweepSeen(int64_t now);
  // Deletes closed tickets older than options_.retention_days and their thread mappings.
  Status SweepClosed(int64_t now);

  const DeskOptions options_;
  store::KvStore& kv_;
  ReplySink& sink_;
  const Clock& clock_;
  MetricsRegistry& metrics_;
  const store::ConversationMemory* memory_;
  bool active_ = false;
  std::vector<Queue> queues_;
  size_t default_queue_ = 0;

  mutable std::mutex mu_;  // guards everything below
  std::mutex send_mu_;     // keeps sends in commit order; taken before mu_ is released
  Summarizer summarizer_;
  std::set<std::string> summarizing_;                // ticket ids whose summary was asked for
  std::map<std::string, Ticket> open_;               // open tickets by id
  std::map<std::string, std::string> open_by_conv_;  // ConversationKey::Encode() -> id
  int64_t last_id_ = 0;
  int64_t last_sweep_ms_ = 0;

  // Lets summary callbacks outlive the desk: they reach it through `desk` under `mu`, which the
  // destructor clears.
  struct Life {
    std::mutex mu;
    Desk* desk = nullptr;
  };
  std::shared_ptr<Life> life_;
};

}  // namespace parley::escalation
