#include "adapters/console/console_adapter.h"

#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <future>
#include <istream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <ostream>
#include <thread>
#include <unordered_set>
#include <vector>

#include "adapters/common/http_json.h"
#include "core/clock.h"
#include "core/ids.h"
#include "core/percent.h"

namespace parley::console {
namespace {

using adapters::JsonError;
using nlohmann::json;

// What a listen stream may have queued for a slow client: a full mailbox of large messages.
constexpr size_t kListenQueueBytes = 64 * 1024 * 1024;

constexpr char kHelp[] =
    "Ask a question in plain words. Commands: /forget (wipe this conversation's memory), "
    "/help, /quit.";

net::HttpResponse IntakeError(const IntakeResult& result) {
  switch (result.status.code()) {
    case Status::Code::kResourceExhausted: {
      net::HttpResponse r = JsonError(429, "rate_limited", "too many messages; slow down");
      r.headers.emplace_back("Retry-After",
                             std::to_string(std::max<int64_t>(1, result.retry_after_ms / 1000)));
      return r;
    }
    case Status::Code::kInvalidArgument:
      return JsonError(422, "invalid_fields", result.status.message());
    case Status::Code::kAlreadyExists:
      return JsonError(409, "duplicate", result.status.message());
    default:
      return JsonError(503, "unavailable", result.status.message());
  }
}

// The string at key; empty when absent, null or not a string.
std::string StringField(const json& body, const char* key) {
  auto it = body.find(key);
  return it != body.end() && it->is_string() ? it->get<std::string>() : std::string();
}

}  // namespace

std::string RenderForTerminal(const OutboundMessage& reply) {
  std::string out = reply.text;
  if (!reply.citations.empty()) {
    out += "\n\nSources:";
    for (size_t i = 0; i < reply.citations.size(); ++i) {
      const Citation& c = reply.citations[i];
      out += "\n  [" + std::to_string(i + 1) + "] " + c.title;
      // The heading path usually starts with the title itself; show only what follows it.
      std::string section = c.section;
      if (section.rfind(c.title + " > ", 0) == 0) section = section.substr(c.title.size() + 3);
      if (!section.empty() && section != c.title) out += " — " + section;
      out += " (" + (c.url.empty() ? c.source : c.url) + ")";
    }
  }
  // Buttons offered with the message (e.g. an escalation card's Claim): typing the value is the
  // console's click.
  if (!reply.actions.empty()) {
    out += "\n\nActions:";
    for (const MessageAction& a : reply.actions) out += "\n  [" + a.label + "] type: " + a.value;
  }
  return out;
}

nlohmann::json ListenEventJson(const OutboundMessage& message) {
  json j = adapters::ReplyJson(message);
  if (!message.actions.empty()) j["actions"] = message.actions;
  return j;
}

Result<OutboundMessage> ListenMessageFromJson(const json& j) {
  Result<OutboundMessage> message = adapters::ReplyFromJson(j);
  if (!message.ok()) return message;
  auto actions = j.find("actions");
  if (actions != j.end() && !actions->is_null()) {
    if (!actions->is_array()) return Status::InvalidArgument("actions is not an array");
    for (const json& a : *actions) {
      if (!a.is_object()) return Status::InvalidArgument("an action is not an object");
      MessageAction action;
      for (auto [key, field] : {std::pair<const char*, std::string*>{"id", &action.id},
                                {"label", &action.label},
                                {"value", &action.value},
                                {"style", &action.style}}) {
        auto it = a.find(key);
        if (it == a.end() || it->is_null()) continue;
        if (!it->is_string()) return Status::InvalidArgument(std::string("action ") + key);
        *field = it->get<std::string>();
      }
      message->actions.push_back(std::move(action));
    }
  }
  return message;
}

bool ValidConversationName(std::string_view conversation) {
  if (conversation.empty() || conversation.size() > 200) return false;
  for (char c : conversation) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) return false;
  }
  return true;
}

void ListenStreamReader::Feed(std::string_view bytes) {
  if (finished()) return;
  Status framed = parser_.Feed(bytes, [this](net::SseEvent e) {
    if (!finished()) Dispatch(std::move(e));  // events after the end are ignored
  });
  if (!framed.ok() && !finished()) error_ = framed.message();
}

void ListenStreamReader::Dispatch(net::SseEvent e) {
  const std::string event = e.event.empty() ? "message" : std::move(e.event);
  const std::string data = std::move(e.data);
  json parsed = json::parse(data, nullptr, /*allow_exceptions=*/false);
  if (event == "message") {
    Result<OutboundMessage> message = ListenMessageFromJson(parsed);
    if (!message.ok()) {
      error_ = "the daemon sent a malformed message: " + message.status().message();
      return;
    }
    if (on_message_) on_message_(*message);
  } else if (event == "error") {
    std::string why =
        parsed.is_object() && parsed.contains("message") && parsed["message"].is_string()
            ? parsed["message"].get<std::string>()
            : data;
    error_ = why.empty() ? "the daemon ended the stream" : why;
  }
}

// The unsolicited messages waiting per conversation, and who listens. Owned by the adapter
// through a shared_ptr; listen streams' close callbacks hold it weakly, so a connection that
// closes after the adapter is gone touches nothing.
// Thread-safety: thread-safe. Deliveries to one listener are serialised (one drainer at a time)
// and run outside the mutex.
class Mailbox {
 public:
  // Hands one message to a listener; false when the listener is gone (nothing was taken).
  using Deliver = std::function<bool(const OutboundMessage&)>;

  Mailbox(store::KvStore& kv, store::Committer& committer) : outbox_(kv), committer_(committer) {}

  // Adds an unsolicited message (ignored when its id is already waiting) and hands it to the
  // conversation's listeners.
  void Post(OutboundMessage message, int64_t created_ms) {
    std::vector<std::shared_ptr<Listener>> to_drain;
    std::vector<std::string> dropped;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (waiting_.count(message.id) > 0) return;
      auto mail = std::make_shared<Mail>();
      mail->created_ms = created_ms;
      mail->conversation = message.conversation.channel;
      mail->message = std::move(message);
      waiting_[mail->message.id] = mail;
      Box& box = boxes_[mail->conversation];
      box.mail.push_back(mail);
      for (const auto& l : box.listeners) l->queue.push_back(mail);
      to_drain = box.listeners;
      TrimLocked(box, dropped);
    }
    RemoveFromOutbox(dropped);
    for (const auto& l : to_drain) Drain(l);
  }

  // Merges what an earlier run left in the outbox (and what was sent before Start, whose
  // entries are there too: they take the entry's created_ms); messages already taken since this
  // process started are skipped. Ends the "before restore" bookkeeping.
  void Restore(std::vector<std::pair<int64_t, OutboundMessage>> loaded) {
    std::sort(loaded.begin(), loaded.end(), [](const auto& a, const auto& b) {
      return a.first != b.first ? a.first < b.first : a.second.id < b.second.id;
    });
    std::vector<std::shared_ptr<Listener>> to_drain;
    std::vector<std::string> dropped;
    {
      std::lock_guard<std::mutex> lock(mu_);
      std::map<std::string, std::vector<std::shared_ptr<Mail>>> added;
      for (auto& [created_ms, message] : loaded) {
        if (taken_before_restore_.count(message.id) > 0) continue;
        auto waiting = waiting_.find(message.id);
        if (waiting != waiting_.end()) {
          waiting->second->created_ms = created_ms;
          added[waiting->second->conversation];  // to be sorted again
          continue;
        }
        auto mail = std::make_shared<Mail>();
        mail->created_ms = created_ms;
        mail->conversation = message.conversation.channel;
        mail->message = std::move(message);
        waiting_[mail->message.id] = mail;
        added[mail->conversation].push_back(mail);
      }
      for (auto& [conversation, mails] : added) {
        Box& box = boxes_[conversation];
        for (const auto& mail : mails) {
          box.mail.push_back(mail);
          for (const auto& l : box.listeners) l->queue.push_back(mail);
        }
        std::stable_sort(box.mail.begin(), box.mail.end(), [](const auto& a, const auto& b) {
          return a->created_ms != b->created_ms ? a->created_ms < b->created_ms
                                                : a->message.id < b->message.id;
        });
        TrimLocked(box, dropped);
        to_drain.insert(to_drain.end(), box.listeners.begin(), box.listeners.end());
      }
      restored_ = true;
      taken_before_restore_.clear();
    }
    RemoveFromOutbox(dropped);
    for (const auto& l : to_drain) Drain(l);
  }

  // Registers a listener of conversation; it is handed what is waiting at once (on this
  // thread). stream (nullable) is ended by DetachStreams.
  uint64_t AddListener(const std::string& conversation, Deliver deliver,
                       std::shared_ptr<net::ResponseStream> stream) {
    auto l = std::make_shared<Listener>();
    l->conversation = conversation;
    l->deliver = std::move(deliver);
    l->stream = std::move(stream);
    {
      std::lock_guard<std::mutex> lock(mu_);
      l->id = next_listener_++;
      Box& box = boxes_[conversation];
      box.listeners.push_back(l);
      l->queue.assign(box.mail.begin(), box.mail.end());
      listeners_[l->id] = l;
    }
    Drain(l);
    return l->id;
  }

  // Unregisters a listener. With wait, also waits for a delivery to it in progress on another
  // thread to return.
  void RemoveListener(uint64_t id, bool wait) {
    std::unique_lock<std::mutex> lock(mu_);
    auto it = listeners_.find(id);
    if (it == listeners_.end()) return;
    std::shared_ptr<Listener> l = it->second;
    DetachLocked(l);
    if (wait) {
      const auto self = std::this_thread::get_id();
      cv_.wait(lock, [&] { return !l->draining || l->drainer == self; });
    }
  }

  // Unregisters every stream listener and returns their streams (for Stop to end them).
  std::vector<std::shared_ptr<net::ResponseStream>> DetachStreams() {
    std::vector<std::shared_ptr<net::ResponseStream>> streams;
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<std::shared_ptr<Listener>> all;
    for (const auto& [id, l] : listeners_) {
      if (l->stream) all.push_back(l);
    }
    for (const auto& l : all) {
      streams.push_back(l->stream);
      DetachLocked(l);
    }
    return streams;
  }

  size_t Waiting(const std::string& conversation) const {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = boxes_.find(conversation);
    return it == boxes_.end() ? 0 : it->second.mail.size();
  }
  size_t Listeners(const std::string& conversation) const {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = boxes_.find(conversation);
    return it == boxes_.end() ? 0 : it->second.listeners.size();
  }

 private:
  struct Mail {
    int64_t created_ms = 0;
    std::string conversation;
    OutboundMessage message;
    bool done = false;  // taken by a listener, or dropped over the bound
  };
  struct Listener {
    uint64_t id = 0;
    std::string conversation;
    Deliver deliver;
    std::shared_ptr<net::ResponseStream> stream;  // null for an in-process listener
    std::deque<std::shared_ptr<Mail>> queue;      // to hand over, in order
    bool draining = false;                        // a thread is handing messages over
    std::thread::id drainer;
    bool gone = false;
  };
  struct Box {
    std::deque<std::shared_ptr<Mail>> mail;  // waiting, oldest first
    std::vector<std::shared_ptr<Listener>> listeners;
  };

  // Hands the listener its queue, one message at a time, outside the mutex. Only one thread
  // drains a listener at a time; others return at once (the drainer picks their messages up).
  void Drain(const std::shared_ptr<Listener>& l) {
    std::vector<std::string> taken;
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (l->draining) return;
      l->draining = true;
      l->drainer = std::this_thread::get_id();
      while (!l->gone && !l->queue.empty()) {
        std::shared_ptr<Mail> mail = l->queue.front();
        l->queue.pop_front();
        lock.unlock();
        bool ok = false;
        try {
          ok = l->deliver(mail->message);
        } catch (const std::exception& e) {
          spdlog::error("console.listener.failed error=\"{}\"", e.what());
        }
        lock.lock();
        if (!ok) {
          DetachLocked(l);
          break;
        }
        if (!mail->done) {
          mail->done = true;
          waiting_.erase(mail->message.id);
          if (!restored_) taken_before_restore_.insert(mail->message.id);
          auto box = boxes_.find(mail->conversation);
          if (box != boxes_.end()) {
            auto& queue = box->second.mail;
            auto at = std::find(queue.begin(), queue.end(), mail);
            if (at != queue.end()) queue.erase(at);
          }
          taken.push_back(mail->message.id);
        }
      }
      l->draining = false;
      l->drainer = std::thread::id();
    }
    cv_.notify_all();
    RemoveFromOutbox(taken);
  }

  // Drops the oldest messages beyond kMailboxLimit.
  void TrimLocked(Box& box, std::vector<std::string>& dropped) {
    while (box.mail.size() > kMailboxLimit) {
      std::shared_ptr<Mail> oldest = box.mail.front();
      box.mail.pop_front();
      oldest->done = true;
      waiting_.erase(oldest->message.id);
      dropped.push_back(oldest->message.id);
      spdlog::warn("console.mailbox.dropped conv={} id={} limit={}", oldest->conversation,
                   oldest->message.id, kMailboxLimit);
    }
  }

  void DetachLocked(const std::shared_ptr<Listener>& l) {
    if (l->gone) return;
    l->gone = true;
    l->queue.clear();
    listeners_.erase(l->id);
    auto box = boxes_.find(l->conversation);
    if (box == boxes_.end()) return;
    auto& all = box->second.listeners;
    all.erase(std::remove(all.begin(), all.end(), l), all.end());
  }

  void RemoveFromOutbox(const std::vector<std::string>& ids) {
    if (ids.empty()) return;
    store::WriteBatch batch;
    for (const std::string& id : ids) outbox_.Remove(batch, kPlatform, id);
    committer_.Submit(
        std::move(batch),
        [](Status s) {
          if (!s.ok()) spdlog::warn("console.outbox.remove_failed error=\"{}\"", s.ToString());
        },
        /*sync=*/false);
  }

  store::Outbox outbox_;
  store::Committer& committer_;
  mutable std::mutex mu_;
  std::condition_variable cv_;  // a drain ended
  std::map<std::string, Box> boxes_;
  std::unordered_map<uint64_t, std::shared_ptr<Listener>> listeners_;
  std::unordered_map<std::string, std::shared_ptr<Mail>> waiting_;  // by message id
  // Ids taken before Restore ran, so that an outbox entry whose removal is still in flight is
  // not shown again.
  std::unordered_set<std::string> taken_before_restore_;
  bool restored_ = false;
  uint64_t next_listener_ = 1;
};

Status ListenToDaemon(const std::string& socket_path, const std::string& conversation,
                      const MessageCallback& on_message, const std::atomic<bool>& stop,
                      const std::function<void()>& on_open) {
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (socket_path.size() >= sizeof(address.sun_path)) {
    return Status::InvalidArgument("socket path too long: " + socket_path);
  }
  std::memcpy(address.sun_path, socket_path.c_str(), socket_path.size() + 1);
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Status::Unavailable(std::string("socket: ") + std::strerror(errno));
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof(address)) != 0) {
    return Status::Unavailable("cannot reach the daemon at " + socket_path + ": " +
                               std::strerror(errno));
  }
  const std::string request = "GET /v1/local/listen?conversation=" + PercentEncode(conversation) +
                              " HTTP/1.0\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n";
  for (size_t sent = 0; sent < request.size();) {
    const ssize_t n = ::send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return Status::Unavailable(std::string("send: ") + std::strerror(errno));
    sent += static_cast<size_t>(n);
  }
  ListenStreamReader reader(on_message);
  std::string head;  // until the blank line ending the response head
  bool in_body = false;
  int status = 0;
  std::string refusal;                        // a non-200 response's body
  size_t refusal_length = std::string::npos;  // its Content-Length, when given
  char buffer[16 * 1024];
  for (;;) {
    if (stop.load()) return Status::Ok();
    pollfd p{fd, POLLIN, 0};
    const int ready = ::poll(&p, 1, 100);
    if (ready < 0 && errno != EINTR) {
      return Status::Unavailable(std::string("poll: ") + std::strerror(errno));
    }
    if (ready <= 0) continue;
    const ssize_t n = ::recv(fd, buffer, sizeof buffer, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // the daemon closed the connection (or it broke)
    std::string_view bytes(buffer, static_cast<size_t>(n));
    if (!in_body) {
      head.append(bytes);
      const size_t end = head.find("\r\n\r\n");
      if (end == std::string::npos) {
        if (head.size() > 64 * 1024) return Status::Unavailable("the daemon sent no valid answer");
        continue;
      }
      // "HTTP/1.x NNN reason"
      if (head.rfind("HTTP/1.", 0) == 0 && head.size() > 12) status = std::atoi(head.c_str() + 9);
      bytes = std::string_view(head).substr(end + 4);
      in_body = true;
      if (status != 200) {
        std::string lower = head.substr(0, end);
        for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        const size_t at = lower.find("\r\ncontent-length:");
        if (at != std::string::npos) {
          refusal_length = static_cast<size_t>(std::atol(lower.c_str() + at + 17));
        }
        refusal.assign(bytes);
        if (refusal.size() >= refusal_length) break;
        continue;
      }
      if (on_open) on_open();
      std::string rest(bytes);
      reader.Feed(rest);
    } else if (status != 200) {
      refusal.append(bytes);
      if (refusal.size() >= refusal_length) break;
      continue;
    } else {
      reader.Feed(bytes);
    }
    if (reader.finished()) return Status::Unavailable(reader.error());
  }
  if (status == 404) return Status::NotFound("the daemon has no listen endpoint");
  if (status != 200 && status != 0) {
    json body = json::parse(refusal, nullptr, false);
    std::string why = body.is_object() && body.contains("message") && body["message"].is_string()
                          ? body["message"].get<std::string>()
                          : refusal;
    return Status::InvalidArgument("the daemon answered " + std::to_string(status) + ": " + why);
  }
  return Status::Unavailable("the daemon closed the stream");
}

ListenHandle::ListenHandle(ListenHandle&& other) noexcept
    : mailbox_(std::move(other.mailbox_)), id_(other.id_) {
  other.id_ = 0;
}

ListenHandle& ListenHandle::operator=(ListenHandle&& other) noexcept {
  if (this != &other) {
    Cancel();
    mailbox_ = std::move(other.mailbox_);
    id_ = other.id_;
    other.id_ = 0;
  }
  return *this;
}

void ListenHandle::Cancel() {
  if (id_ == 0) return;
  if (auto mailbox = mailbox_.lock()) mailbox->RemoveListener(id_, /*wait=*/true);
  id_ = 0;
  mailbox_.reset();
}

void ProgressivePrinter::Partial(const OutboundMessage& partial) {
  if (rewritten_) return;  // the final reply is printed in full
  const std::string& text = partial.text;
  if (!started_) {
    if (text.empty()) return;
    out_ << style_.lead << style_.label;
    started_ = true;
  }
  if (text.size() >= printed_.size() && text.compare(0, printed_.size(), printed_) == 0) {
    out_ << text.substr(printed_.size()) << std::flush;
    printed_ = text;
  } else {
    // What is on the screen is no longer the reply: end that line, print the final in full.
    out_ << "\n" << std::flush;
    rewritten_ = true;
  }
}

void ProgressivePrinter::Final(const OutboundMessage& reply) {
  const std::string rendered = RenderForTerminal(reply);
  if (!started_) {
    out_ << style_.lead << style_.label << rendered << "\n";
  } else if (!rewritten_ && rendered.compare(0, printed_.size(), printed_) == 0) {
    out_ << rendered.substr(printed_.size()) << "\n";
  } else {
    if (!rewritten_) out_ << "\n";
    out_ << style_.label << rendered << "\n";
  }
  started_ = true;
  rewritten_ = true;  // done: later calls start a new line
  out_ << std::flush;
}

void ProgressivePrinter::Failed(const std::string& error) {
  Interrupt();
  out_ << (started_ ? "" : style_.lead) << style_.label << "(" << error << ")\n" << std::flush;
}

void ProgressivePrinter::Interrupt() {
  if (started_ && !rewritten_) out_ << "\n" << std::flush;
  rewritten_ = started_;
}

ConsoleAdapter::ConsoleAdapter(ConversationControl& control, std::string default_user,
                               store::KvStore& kv, store::Committer& committer)
    : control_(control),
      default_user_(std::move(default_user)),
      mailbox_(std::make_shared<Mailbox>(kv, committer)),
      outbox_(kv) {
  if (default_user_.empty()) {
    const char* user = std::getenv("USER");
    default_user_ = user && *user ? user : "local";
  }
}

ConsoleAdapter::~ConsoleAdapter() = default;

Status ConsoleAdapter::Start(InboundSink& sink) {
  sink_ = &sink;
  auto owed = outbox_.Load(kPlatform);
  if (!owed.ok()) {
    mailbox_->Restore({});
    return owed.status();
  }
  std::vector<std::pair<int64_t, OutboundMessage>> loaded;
  for (const store::OutboxEntry& entry : *owed) {
    json payload = json::parse(entry.payload, nullptr, false);
    OutboundMessage message;
    bool ok = payload.is_object();
    if (ok) {
      try {
        message = payload.get<OutboundMessage>();
      } catch (const std::exception&) {
        ok = false;
      }
    }
    if (!ok || message.id.empty()) {
      spdlog::warn("console.outbox.undecodable id={}", entry.id);
      continue;
    }
    loaded.emplace_back(entry.created_ms, std::move(message));
  }
  if (!loaded.empty()) spdlog::info("console.mailbox.resumed messages={}", loaded.size());
  mailbox_->Restore(std::move(loaded));
  return Status::Ok();
}

bool ConsoleAdapter::DeliversDurably(const OutboundMessage& message) const {
  return message.in_reply_to.empty() && !message.silent;
}

ListenHandle ConsoleAdapter::Listen(const std::string& conversation, MessageCallback on_message) {
  auto callback = std::make_shared<MessageCallback>(std::move(on_message));
  const uint64_t id = mailbox_->AddListener(
      conversation,
      [callback](const OutboundMessage& m) {
        (*callback)(m);
        return true;
      },
      nullptr);
  return ListenHandle(mailbox_, id);
}

size_t ConsoleAdapter::Waiting(const std::string& conversation) const {
  return mailbox_->Waiting(conversation);
}

size_t ConsoleAdapter::Listeners(const std::string& conversation) const {
  return mailbox_->Listeners(conversation);
}

void ConsoleAdapter::Stop(std::function<void()> done) {
  stopping_ = true;
  // Turns have been drained by now (or are given up on): a stream still open will get no reply.
  // End it, so the server (which does not cut streams at Stop) can close its connection.
  std::unordered_map<std::string, std::shared_ptr<adapters::StreamedReply>> open;
  {
    std::lock_guard<std::mutex> lock(partials_mu_);
    open.swap(streams_);
  }
  for (auto& [event_id, stream] : open) {
    Waiter parked;
    pending_.Take(event_id, parked);
    stream->Abandon("shutting down before the reply was ready");
  }
  // Listen streams end too (their messages not yet taken stay in the outbox for the next run).
  for (const auto& stream : mailbox_->DetachStreams()) {
    stream->Write(adapters::SseEvent(
        "error", json{{"error", "unavailable"}, {"message", "the daemon is shutting down"}}));
    stream->End();
  }
  if (done) done();
}

void ConsoleAdapter::Send(OutboundMessage message, DeliveryCallback done) {
  Waiter waiter;
  if (!message.in_reply_to.empty() && pending_.Take(message.in_reply_to, waiter)) {
    {
      std::lock_guard<std::mutex> lock(partials_mu_);
      partials_.erase(message.in_reply_to);
      streams_.erase(message.in_reply_to);
    }
    Status delivered = waiter(message);
    if (done) done(delivered);
    return;
  }
  if (message.silent) {
    if (done) done(Status::Ok());  // nothing to show and nobody waiting
    return;
  }
  if (DeliversDurably(message)) {
    // Its outbox entry is written (the sender's part of the contract): kept until taken.
    mailbox_->Post(std::move(message), SystemClock::Instance().NowMs());
    if (done) done(Status::Ok());
    return;
  }
  if (done) done(Status::NotFound("nobody is waiting for this console reply"));
}

void ConsoleAdapter::SendPartial(const OutboundMessage& partial) {
  if (partial.in_reply_to.empty()) return;
  std::function<void(const OutboundMessage&)> waiter;
  std::shared_ptr<adapters::StreamedReply> stream;
  {
    std::lock_guard<std::mutex> lock(partials_mu_);
    auto it = partials_.find(partial.in_reply_to);
    if (it != partials_.end()) {
      waiter = it->second;
    } else {
      auto s = streams_.find(partial.in_reply_to);
      if (s == streams_.end()) return;
      stream = s->second;
    }
  }
  if (waiter) waiter(partial);
  if (stream) stream->Partial(partial);
}

size_t ConsoleAdapter::OpenStreams() const {
  std::lock_guard<std::mutex> lock(partials_mu_);
  return streams_.size();
}

bool ConsoleAdapter::Ask(const std::string& conversation, const std::string& text,
                         OutboundMessage& reply, std::string& error) {
  return Ask(conversation, text, nullptr, reply, error);
}

bool ConsoleAdapter::Ask(const std::string& conversation, const std::string& text,
                         const PartialCallback& on_partial, OutboundMessage& reply,
                         std::string& error) {
  InboundSink* sink = sink_.load();
  if (sink == nullptr) {
    error = "the console is not started";
    return false;
  }
  InboundMessage m;
  m.platform = kPlatform;
  m.channel = conversation;
  m.user = default_user_;
  m.text = text;
  m.mentions_bot = true;
  m.is_direct = true;
  m.event_id = NewId();
  m.timestamp_ms = SystemClock::Instance().NowMs();
  // The answer, and the latest partial not yet shown, handed from the engine's threads to this
  // one (which runs on_partial, so the caller's output stays on its own thread).
  struct Waiting {
    std::mutex mu;
    std::condition_variable cv;
    std::optional<OutboundMessage> partial;
    std::optional<std::pair<bool, OutboundMessage>> answer;
  };
  auto waiting = std::make_shared<Waiting>();
  auto settle = [waiting](bool ok, OutboundMessage r) {
    {
      std::lock_guard<std::mutex> lock(waiting->mu);
      if (waiting->answer) return;
      waiting->answer.emplace(ok, std::move(r));
    }
    waiting->cv.notify_all();
  };
  const std::string event_id = m.event_id;
  if (on_partial) {
    std::lock_guard<std::mutex> lock(partials_mu_);
    partials_[event_id] = [waiting](const OutboundMessage& partial) {
      {
        std::lock_guard<std::mutex> lock(waiting->mu);
        if (waiting->answer) return;
        waiting->partial = partial;  // coalesce: only the latest whole text matters
      }
      waiting->cv.notify_all();
    };
  }
  pending_.Park(m.event_id, [settle](const OutboundMessage& r) {
    settle(true, r);
    return Status::Ok();
  });
  sink->OnInbound(std::move(m), IntakeOptions{false}, [this, settle, event_id](IntakeResult r) {
    if (r.status.ok()) return;
    Waiter unused;
    pending_.Take(event_id, unused);
    OutboundMessage failure;
    failure.text = r.status.code() == Status::Code::kResourceExhausted
                       ? "You're sending messages too fast; wait a moment."
                       : r.status.message();
    settle(false, failure);
  });
  std::pair<bool, OutboundMessage> answer;
  for (;;) {
    std::unique_lock<std::mutex> lock(waiting->mu);
    waiting->cv.wait(lock, [&] { return waiting->answer || waiting->partial; });
    if (waiting->answer) {
      answer = std::move(*waiting->answer);
      break;
    }
    OutboundMessage partial = std::move(*waiting->partial);
    waiting->partial.reset();
    lock.unlock();
    on_partial(partial);
  }
  if (on_partial) {
    std::lock_guard<std::mutex> lock(partials_mu_);
    partials_.erase(event_id);
  }
  auto& [ok, message] = answer;
  if (!ok) error = message.text;
  reply = std::move(message);
  return ok;
}

TerminalBackend ConsoleAdapter::Backend(const std::string& conversation) {
  TerminalBackend backend;
  backend.ask = [this, conversation](const std::string& text, OutboundMessage& reply,
                                     std::string& error) {
    return Ask(conversation, text, reply, error);
  };
  backend.ask_streaming = [this, conversation](const std::string& text,
                                               const PartialCallback& on_partial,
                                               OutboundMessage& reply, std::string& error) {
    return Ask(conversation, text, on_partial, reply, error);
  };
  backend.listen = [this, conversation](MessageCallback on_message) {
    auto handle = std::make_shared<ListenHandle>(Listen(conversation, std::move(on_message)));
    return std::function<void()>([handle] { handle->Cancel(); });
  };
  backend.forget = [this, conversation]() -> Result<size_t> {
    // The terminal waits for the answer; this runs on the terminal's own thread.
    auto removed = std::make_shared<std::promise<Result<size_t>>>();
    auto future = removed->get_future();
    control_.Forget(ConversationKey{kPlatform, conversation, ""},
                    [removed](Result<size_t> r) { removed->set_value(std::move(r)); });
    return future.get();
  };
  return backend;
}

void RunTerminal(std::istream& in, std::ostream& out, const TerminalBackend& backend) {
  // Shared with the listener's thread. While `busy` (from reading a line until the next prompt)
  // only this thread writes to `out`, and unsolicited messages are held; otherwise the listener
  // prints them under `mu`. After `closed`, the listener no longer touches `out`.
  struct Screen {
    std::mutex mu;
    bool busy = true;  // until the first prompt: the banner comes first
    bool at_prompt = false;
    bool closed = false;
    std::vector<std::string> held;
  };
  auto screen = std::make_shared<Screen>();
  out << "parley — " << kHelp << "\n" << std::flush;
  std::function<void()> stop_listening;
  if (backend.listen) {
    std::ostream* screen_out = &out;
    stop_listening = backend.listen([screen, screen_out](const OutboundMessage& message) {
      if (message.silent) return;
      std::string text = "\n[message] " + RenderForTerminal(message) + "\n";
      std::lock_guard<std::mutex> lock(screen->mu);
      if (screen->closed) return;
      if (screen->busy) {
        screen->held.push_back(std::move(text));
        return;
      }
      *screen_out << text;
      if (screen->at_prompt) *screen_out << "\nyou> ";
      *screen_out << std::flush;
    });
  }
  std::string line;
  for (;;) {
    {
      std::lock_guard<std::mutex> lock(screen->mu);
      for (const std::string& text : screen->held) out << text;
      screen->held.clear();
      out << "\nyou> " << std::flush;
      screen->busy = false;
      screen->at_prompt = true;
    }
    const bool got = static_cast<bool>(std::getline(in, line));
    {
      std::lock_guard<std::mutex> lock(screen->mu);
      screen->busy = true;
      screen->at_prompt = false;
    }
    if (!got) break;
    size_t b = line.find_first_not_of(" \t\r");
    if (b == std::string::npos) continue;
    line = line.substr(b);
    if (line == "/quit" || line == "/exit") break;
    if (line == "/help") {
      out << kHelp << "\n";
      continue;
    }
    if (line == "/forget") {
      auto removed = backend.forget();
      out << (removed.ok() ? "Forgotten: " + std::to_string(*removed) + " turns."
                           : "Could not forget: " + removed.status().message())
          << "\n";
      continue;
    }
    if (line[0] == '/') {
      out << "Unknown command " << line << ". " << kHelp << "\n";
      continue;
    }
    OutboundMessage reply;
    std::string error;
    if (backend.ask_streaming) {
      ProgressivePrinter printer(out);
      if (backend.ask_streaming(
              line, [&printer](const OutboundMessage& partial) { printer.Partial(partial); }, reply,
              error)) {
        // A message relayed to a person (or a command the desk took) has no bot reply.
        if (!reply.silent) printer.Final(reply);
      } else {
        printer.Failed(error);
      }
    } else if (backend.ask(line, reply, error)) {
      if (!reply.silent) out << "\nparley> " << RenderForTerminal(reply) << "\n";
    } else {
      out << "\nparley> (" << error << ")\n";
    }
    out << std::flush;
  }
  {
    std::lock_guard<std::mutex> lock(screen->mu);
    screen->closed = true;
  }
  if (stop_listening) stop_listening();
}

void ConsoleAdapter::HandleListen(const net::HttpRequest& request, net::Responder& respond) {
  if (request.method != "GET") {
    respond(JsonError(405, "method_not_allowed", "use GET"));
    return;
  }
  std::string conversation;
  bool given = false;
  for (auto& [name, value] : ParseQuery(request.query)) {
    if (name != "conversation") continue;
    conversation = std::move(value);
    given = true;
  }
  if (!given || !ValidConversationName(conversation)) {
    respond(JsonError(400, "invalid_conversation",
                      "conversation must be given: 1 to 200 bytes without control characters"));
    return;
  }
  if (stopping_) {
    respond(JsonError(503, "unavailable", "shutting down"));
    return;
  }
  // Room for a whole mailbox handed over at once (a message counts as taken once queued, so a
  // stream dropped for overflow would lose what it had queued).
  auto stream = net::ResponseStream::Create(kListenQueueBytes);
  net::HttpResponse head;
  head.content_type = "text/event-stream";
  head.headers.emplace_back("Cache-Control", "no-cache");
  head.stream = stream;
  // Registered before the head goes out: a client that has the head is listening.
  const uint64_t id = mailbox_->AddListener(
      conversation,
      [stream](const OutboundMessage& m) {
        return stream->Write(adapters::SseEvent("message", ListenEventJson(m)));
      },
      stream);
  // A client that hangs up is unregistered at once (not only at the next write).
  std::weak_ptr<Mailbox> mailbox = mailbox_;
  stream->OnClose([mailbox, id](Status) {
    if (auto box = mailbox.lock()) box->RemoveListener(id, /*wait=*/false);
  });
  if (stopping_) {  // Stop ran meanwhile and did not see this listener
    mailbox_->RemoveListener(id, /*wait=*/false);
    stream->Write(adapters::SseEvent(
        "error", json{{"error", "unavailable"}, {"message", "the daemon is shutting down"}}));
    stream->End();
  }
  respond(std::move(head));
}

bool ConsoleAdapter::HandleLocal(const net::HttpRequest& request, net::Responder& respond) {
  if (request.path == "/v1/local/listen") {
    HandleListen(request, respond);
    return true;
  }
  if (request.path != "/v1/local/ask" && request.path != "/v1/local/forget") return false;
  if (request.method != "POST") {
    respond(JsonError(405, "method_not_allowed", "use POST"));
    return true;
  }
  json body = json::parse(request.body, nullptr, false);
  if (body.is_discarded() || !body.is_object()) {
    respond(JsonError(400, "invalid_json", "the body must be a JSON object"));
    return true;
  }
  // "conversation" and "user" are optional strings; another type is refused (not thrown on).
  for (const char* key : {"conversation", "user"}) {
    auto it = body.find(key);
    if (it != body.end() && !it->is_null() && !it->is_string()) {
      respond(JsonError(422, "invalid_fields", std::string(key) + " must be a string"));
      return true;
    }
  }
  std::string conversation = StringField(body, "conversation");
  if (conversation.empty()) conversation = "terminal";
  if (request.path == "/v1/local/forget") {
    control_.Forget(ConversationKey{kPlatform, conversation, ""},
                    [respond](Result<size_t> removed) {
                      if (!removed.ok()) {
                        return respond(JsonError(503, "unavailable", removed.status().message()));
                      }
                      net::HttpResponse r;
                      r.body = json{{"forgotten_turns", *removed}}.dump();
                      respond(std::move(r));
                    });
    return true;
  }
  if (!body.contains("text") || !body["text"].is_string()) {
    respond(JsonError(422, "invalid_fields", "text must be a non-empty string"));
    return true;
  }
  auto stream_field = body.find("stream");
  if (stream_field != body.end() && !stream_field->is_null() && !stream_field->is_boolean()) {
    respond(JsonError(422, "invalid_fields", "stream must be true or false"));
    return true;
  }
  const bool wants_stream =
      adapters::AcceptsEventStream(request) ||
      (stream_field != body.end() && stream_field->is_boolean() && stream_field->get<bool>());
  InboundSink* sink = sink_.load();
  if (stopping_ || sink == nullptr) {
    respond(JsonError(503, "unavailable", stopping_ ? "shutting down" : "starting up"));
    return true;
  }
  InboundMessage m;
  m.platform = kPlatform;
  m.channel = conversation;
  m.user = StringField(body, "user");
  if (m.user.empty()) m.user = default_user_;
  m.text = body["text"].get<std::string>();
  m.mentions_bot = true;
  m.is_direct = true;
  m.event_id = NewId();
  m.timestamp_ms = SystemClock::Instance().NowMs();
  const std::string event_id = m.event_id;

  if (wants_stream) {
    // Everything that answers this request goes through the StreamedReply, which passes error
    // responses through until its 200 head is out.
    auto stream = std::make_shared<adapters::StreamedReply>(std::move(respond));
    {
      std::lock_guard<std::mutex> lock(partials_mu_);
      streams_[event_id] = stream;
    }
    pending_.Park(event_id,
                  [stream](const OutboundMessage& reply) { return stream->Final(reply); });
    sink->OnInbound(std::move(m), IntakeOptions{false},
                    [this, stream, event_id](IntakeResult result) {
                      if (result.status.ok()) return stream->Start();  // the turn is on its way
                      Waiter unused;
                      if (!pending_.Take(event_id, unused)) return;
                      {
                        std::lock_guard<std::mutex> lock(partials_mu_);
                        streams_.erase(event_id);
                      }
                      stream->Refuse(IntakeError(result));
                    });
    return true;
  }

  auto shared_respond = std::make_shared<net::Responder>(std::move(respond));
  pending_.Park(event_id, [shared_respond](const OutboundMessage& reply) {
    net::HttpResponse r;
    r.body = adapters::ReplyJson(reply).dump();
    (*shared_respond)(std::move(r));
    return Status::Ok();
  });
  sink->OnInbound(std::move(m), IntakeOptions{false},
                  [this, shared_respond, event_id](IntakeResult result) {
                    if (result.status.ok()) return;
                    Waiter unused;
                    if (pending_.Take(event_id, unused)) (*shared_respond)(IntakeError(result));
                  });
  return true;
}

}  // namespace parley::console
