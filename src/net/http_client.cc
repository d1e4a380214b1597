// CurlHttpClient: one libcurl multi handle driven by the io_context.
//
// Design:
// - Every call into the multi handle, and every curl callback it triggers (socket, timer, open/
//   close socket, write, header), runs on one strand, so the client's state needs no lock.
// - Sockets curl connects with are opened by us (CURLOPT_OPENSOCKETFUNCTION) and owned by an asio
//   posix::stream_descriptor; curl closes them through CURLOPT_CLOSESOCKETFUNCTION, which closes
//   the descriptor. asio and curl therefore never disagree about who closes an fd. Idle
//   connections stay open in the multi handle's connection cache and are reused.
// - curl may also ask us to watch descriptors it did not open through us (the threaded
//   resolver's wake-up socketpair). Those are watched through a dup() that we own and close when
//   curl says CURL_POLL_REMOVE, so curl's own close is never disturbed.
// - Readiness is observed with async_wait; curl does the reading and writing itself.
// - Completion callbacks are posted to the io_context (never run inside Request() and never on
//   the strand while curl is on the stack).
// - Streaming callbacks (on_headers/on_body) run on the strand inside curl's header/write
//   callbacks, so they are serialized per transfer (and across transfers) and precede the posted
//   completion. Aborts by the caller (false return, `cancel`) make curl fail the transfer; the
//   idle timer is a per-transfer asio timer on the strand that removes the easy handle itself.

#include <curl/curl.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <charconv>
#include <chrono>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <string_view>
#include <unordered_map>

#include "net/ascii.h"
#include "net/http.h"

namespace parley::net {
namespace {

namespace asio = boost::asio;
using Strand = asio::strand<asio::io_context::executor_type>;
using ErrorCode = boost::system::error_code;
using Descriptor = asio::posix::basic_stream_descriptor<Strand>;
using Timer = asio::basic_waitable_timer<std::chrono::steady_clock,
                                         asio::wait_traits<std::chrono::steady_clock>, Strand>;

void GlobalInitOnce() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

constexpr long kMaxCachedConnections = 256;

bool HasLineBreak(std::string_view s) { return s.find_first_of("\r\n") != std::string_view::npos; }

using internal::AsciiIEquals;
using internal::AsciiLower;

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() &&
         (s.back() == ' ' || s.back() == '\t' || s.back() == '\r' || s.back() == '\n')) {
    s.remove_suffix(1);
  }
  return s;
}

class CurlCore;

// One request from Request() to its callback. Owned by the client's transfer table while the
// easy handle is in the multi handle.
struct Transfer {
  Transfer() { error[0] = '\0'; }
  Transfer(const Transfer&) = delete;
  Transfer& operator=(const Transfer&) = delete;
  ~Transfer() {
    if (easy != nullptr) curl_easy_cleanup(easy);  // after removal from the multi handle
    if (header_list != nullptr) curl_slist_free_all(header_list);
  }

  CURL* easy = nullptr;
  CurlCore* core = nullptr;  // the owner; set before the transfer is added
  curl_slist* header_list = nullptr;
  ClientRequest request;  // owns the URL and body curl points into
  ClientCallback callback;
  ClientResponse response;
  bool too_large = false;
  bool is_head = false;
  char error[CURL_ERROR_SIZE];

  // Streaming state (strand only).
  enum class Abort { kNone, kCancelled, kIdle };
  Abort abort = Abort::kNone;
  uint64_t id = 0;             // unique per client; guards late timer completions
  int header_status = 0;       // status line of the response whose headers are being read
  bool headers_reported = false;
  size_t received = 0;         // body bytes so far (also when streamed to on_body)
  std::chrono::steady_clock::time_point last_data;  // idle timer reference
  std::unique_ptr<Timer> idle_timer;                // only with idle_timeout_ms > 0
};

// One descriptor curl asked us to watch.
struct Watch {
  explicit Watch(const Strand& strand) : descriptor(strand) {}
  Descriptor descriptor;
  curl_socket_t fd = CURL_SOCKET_BAD;  // curl's number for it
  bool owned = false;                  // opened by OnOpenSocket; closed by OnCloseSocket
  bool closed = false;                 // descriptor closed; late completions must not touch curl
  int want = 0;                        // CURL_POLL_IN / CURL_POLL_OUT bits curl asked for
  bool reading = false;                // an async_wait(wait_read) is pending
  bool writing = false;                // an async_wait(wait_write) is pending
};

class CurlCore : public std::enable_shared_from_this<CurlCore> {
 public:
  explicit CurlCore(asio::io_context& io)
      : io_(io), strand_(asio::make_strand(io)), timer_(strand_) {}

  CurlCore(const CurlCore&) = delete;
  CurlCore& operator=(const CurlCore&) = delete;

  ~CurlCore() {
    // Reached without Shutdown() only when the io_context stopped running before the client's
    // shutdown ran: callbacks of unfinished requests are dropped (there is no io to run them).
    tearing_down_ = true;
    if (!shut_down_) {
      shut_down_ = true;
      for (auto& entry : transfers_) {
        if (multi_ != nullptr) curl_multi_remove_handle(multi_, entry.second->easy);
      }
      transfers_.clear();
      CleanupMulti();
    }
  }

  // Creates the multi handle. Called once, before any Request.
  void Init() {
    GlobalInitOnce();
    multi_ = curl_multi_init();
    if (multi_ == nullptr) return;
    curl_multi_setopt(multi_, CURLMOPT_SOCKETFUNCTION, &CurlCore::OnSocket);
    curl_multi_setopt(multi_, CURLMOPT_SOCKETDATA, this);
    curl_multi_setopt(multi_, CURLMOPT_TIMERFUNCTION, &CurlCore::OnTimer);
    curl_multi_setopt(multi_, CURLMOPT_TIMERDATA, this);
    // Keep idle connections after a burst instead of curl's default of 4 per running transfer.
    curl_multi_setopt(multi_, CURLMOPT_MAXCONNECTS, kMaxCachedConnections);
  }

  // Any thread.
  void Submit(ClientRequest request, ClientCallback callback) {
    auto transfer = std::make_unique<Transfer>();
    transfer->core = this;
    transfer->callback = std::move(callback);
    Status status = Configure(*transfer, std::move(request));
    if (!status.ok()) {
      Deliver(std::move(transfer->callback), std::move(status));
      return;
    }
    asio::post(strand_, [self = shared_from_this(), transfer = std::move(transfer)]() mutable {
      self->Add(std::move(transfer));
    });
  }

  // Any thread. Fails unfinished requests with Unavailable("client shut down") and closes every
  // connection, on the strand.
  void ShutdownAsync(std::function<void()> done = nullptr) {
    try {
      asio::post(strand_, [self = shared_from_this(), done = std::move(done)] {
        self->Shutdown();
        if (done) done();
      });
    } catch (...) {
      // Allocation failure: the destructor cleans up when the last handler lets go.
    }
  }

 private:
  Status Configure(Transfer& t, ClientRequest request) {
    t.request = std::move(request);
    const ClientRequest& r = t.request;
    if (r.url.empty()) return Status::InvalidArgument("empty URL");
    if (r.method.empty() || HasLineBreak(r.method) || r.method.find(' ') != std::string::npos) {
      return Status::InvalidArgument("invalid HTTP method");
    }
    t.easy = curl_easy_init();
    if (t.easy == nullptr) return Status::Internal("curl_easy_init failed");
    CURL* e = t.easy;
    bool ok = true;
    auto set = [&ok](CURLcode code) { ok = ok && code == CURLE_OK; };

    set(curl_easy_setopt(e, CURLOPT_URL, r.url.c_str()));
    set(curl_easy_setopt(e, CURLOPT_PRIVATE, static_cast<void*>(&t)));
    set(curl_easy_setopt(e, CURLOPT_ERRORBUFFER, t.error));
    set(curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L));
    set(curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L));
    set(curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https"));
    set(curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, static_cast<long>(std::max(0, r.timeout_ms))));
    set(curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
                         static_cast<long>(std::max(0, r.connect_timeout_ms))));
    set(curl_easy_setopt(e, CURLOPT_USERAGENT, "parley"));
    // 4 KiB receive buffer instead of 16 KiB: thousands of transfers wait on slow LLM answers at
    // once, and their buffers dominate the daemon's memory; answers arrive in small pieces anyway.
    set(curl_easy_setopt(e, CURLOPT_BUFFERSIZE, 4096L));
    set(curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, &CurlCore::OnBody));
    set(curl_easy_setopt(e, CURLOPT_WRITEDATA, static_cast<void*>(&t)));
    set(curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, &CurlCore::OnHeaderLine));
    set(curl_easy_setopt(e, CURLOPT_HEADERDATA, static_cast<void*>(&t)));
    set(curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, &CurlCore::OnOpenSocket));
    set(curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, static_cast<void*>(this)));
    set(curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, &CurlCore::OnCloseSocket));
    set(curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, static_cast<void*>(this)));
    if (!r.unix_socket_path.empty()) {
      set(curl_easy_setopt(e, CURLOPT_UNIX_SOCKET_PATH, r.unix_socket_path.c_str()));
    }
    if (r.cancel != nullptr) {
      set(curl_easy_setopt(e, CURLOPT_XFERINFOFUNCTION, &CurlCore::OnProgress));
      set(curl_easy_setopt(e, CURLOPT_XFERINFODATA, static_cast<void*>(&t)));
      set(curl_easy_setopt(e, CURLOPT_NOPROGRESS, 0L));
    }

    // Method and body. curl sends POSTFIELDS as the body for any method set by CUSTOMREQUEST.
    const std::string& body = r.shared_body ? *r.shared_body : r.body;
    const bool has_body = !body.empty();
    if (r.method == "GET" && !has_body) {
      set(curl_easy_setopt(e, CURLOPT_HTTPGET, 1L));
    } else if (r.method == "HEAD") {
      t.is_head = true;
      set(curl_easy_setopt(e, CURLOPT_NOBODY, 1L));
    } else {
      if (has_body || r.method == "POST" || r.method == "PUT" || r.method == "PATCH") {
        set(curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE,
                             static_cast<curl_off_t>(body.size())));
        set(curl_easy_setopt(e, CURLOPT_POSTFIELDS, body.data()));
      }
      if (r.method != "POST") set(curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, r.method.c_str()));
    }

    bool has_content_type = false;
    std::string line;
    for (const auto& [name, value] : r.headers) {
      if (name.empty() || HasLineBreak(name) || name.find(':') != std::string::npos ||
          name.find(' ') != std::string::npos || HasLineBreak(value)) {
        return Status::InvalidArgument("invalid request header '" + name + "'");
      }
      if (AsciiIEquals(name, "content-type")) has_content_type = true;
      line.assign(name);
      if (value.empty()) {
        line += ';';  // curl's syntax for a header with an empty value
      } else {
        line += ": ";
        line += value;
      }
      if (!Append(t, line.c_str())) return Status::Internal("out of memory");
    }
    // No "Expect: 100-continue" round trip; and no form content type curl would invent for a
    // POST body the caller did not label.
    if (!Append(t, "Expect:")) return Status::Internal("out of memory");
    if (!has_content_type && !Append(t, "Content-Type:")) return Status::Internal("out of memory");
    set(curl_easy_setopt(e, CURLOPT_HTTPHEADER, t.header_list));

    if (!ok) return Status::InvalidArgument("curl rejected a request option");
    return Status::Ok();
  }

  static bool Append(Transfer& t, const char* line) {
    curl_slist* next = curl_slist_append(t.header_list, line);
    if (next == nullptr) return false;
    t.header_list = next;
    return true;
  }

  // Strand.
  void Add(std::unique_ptr<Transfer> transfer) {
    if (shut_down_) {
      Deliver(std::move(transfer->callback), Status::Unavailable("client shut down"));
      return;
    }
    if (multi_ == nullptr) {
      Deliver(std::move(transfer->callback), Status::Internal("curl_multi_init failed"));
      return;
    }
    Transfer* raw = transfer.get();
    raw->id = ++next_id_;
    if (raw->request.cancel != nullptr && raw->request.cancel->load()) {
      Deliver(std::move(transfer->callback), Status::Unavailable("cancelled"));
      return;
    }
    transfers_.emplace(raw, std::move(transfer));
    const CURLMcode code = curl_multi_add_handle(multi_, raw->easy);
    if (code != CURLM_OK) {
      auto owned = std::move(transfers_[raw]);
      transfers_.erase(raw);
      Deliver(std::move(owned->callback),
              Status::Internal(std::string("curl_multi_add_handle: ") + curl_multi_strerror(code)));
    }
  }

  // Strand. Starts (or re-arms) the idle timer of `t` to fire idle_timeout_ms after its last
  // body byte.
  void ArmIdleTimer(Transfer& t) {
    if (tearing_down_) return;
    if (t.idle_timer == nullptr) t.idle_timer = std::make_unique<Timer>(strand_);
    const auto idle = std::chrono::milliseconds(t.request.idle_timeout_ms);
    t.idle_timer->expires_at(t.last_data + idle);
    t.idle_timer->async_wait([self = shared_from_this(), raw = &t, id = t.id](ErrorCode ec) {
      if (ec) return;
      try {
        self->OnIdleTimer(raw, id);
      } catch (...) {
        // Allocation failure: the transfer ends at its overall timeout.
      }
    });
  }

  // Strand.
  void OnIdleTimer(Transfer* raw, uint64_t id) {
    if (tearing_down_ || multi_ == nullptr) return;
    auto it = transfers_.find(raw);
    if (it == transfers_.end() || it->second->id != id) return;  // finished meanwhile
    Transfer& t = *it->second;
    const auto idle = std::chrono::milliseconds(t.request.idle_timeout_ms);
    if (std::chrono::steady_clock::now() < t.last_data + idle) {
      ArmIdleTimer(t);  // data arrived since the timer was set
      return;
    }
    // curl is not on the stack here: take the transfer out of the multi handle ourselves.
    t.abort = Transfer::Abort::kIdle;
    std::unique_ptr<Transfer> owned = std::move(it->second);
    transfers_.erase(it);
    curl_multi_remove_handle(multi_, owned->easy);
    ClientCallback callback = std::move(owned->callback);
    Result<ClientResponse> result = MakeResult(*owned, CURLE_OPERATION_TIMEDOUT);
    owned.reset();
    Deliver(std::move(callback), std::move(result));
  }

  // Strand.
  void Shutdown() {
    if (shut_down_) return;
    shut_down_ = true;
    tearing_down_ = true;
    for (auto& entry : transfers_) {
      Transfer& t = *entry.second;
      curl_multi_remove_handle(multi_, t.easy);
      Deliver(std::move(t.callback), Status::Unavailable("client shut down"));
    }
    transfers_.clear();
    CleanupMulti();
  }

  // Strand (or the destructor). Closes every connection and descriptor.
  void CleanupMulti() {
    tearing_down_ = true;
    if (multi_ != nullptr) {
      curl_multi_cleanup(multi_);  // closes cached connections through OnCloseSocket
      multi_ = nullptr;
    }
    timer_.cancel();
    for (auto& entry : watches_) {
      Watch& w = *entry.second;
      w.closed = true;
      ErrorCode ec;
      w.descriptor.close(ec);
    }
    watches_.clear();
  }

  static void Deliver(ClientCallback callback, Result<ClientResponse> result,
                      asio::io_context& io) {
    if (!callback) return;
    asio::post(io, [callback = std::move(callback), result = std::move(result)]() mutable {
      try {
        callback(std::move(result));
      } catch (...) {
        // A throwing callback must not unwind through the io_context.
      }
    });
  }
  void Deliver(ClientCallback callback, Result<ClientResponse> result) {
    try {
      Deliver(std::move(callback), std::move(result), io_);
    } catch (...) {
      // Allocation failure while posting: the callback is dropped.
    }
  }

  // Strand.
  void SocketAction(curl_socket_t fd, int flags) {
    int running = 0;
    curl_multi_socket_action(multi_, fd, flags, &running);
    DrainMessages();
  }

  // Strand.
  void DrainMessages() {
    int left = 0;
    while (multi_ != nullptr) {
      CURLMsg* msg = curl_multi_info_read(multi_, &left);
      if (msg == nullptr) break;
      if (msg->msg != CURLMSG_DONE) continue;
      CURL* easy = msg->easy_handle;
      const CURLcode code = msg->data.result;  // msg is invalid after remove_handle
      Finish(easy, code);
    }
  }

  // Strand.
  void Finish(CURL* easy, CURLcode code) {
    char* priv = nullptr;
    curl_easy_getinfo(easy, CURLINFO_PRIVATE, &priv);
    auto* raw = reinterpret_cast<Transfer*>(priv);
    curl_multi_remove_handle(multi_, easy);
    auto it = transfers_.find(raw);
    if (it == transfers_.end()) return;  // not ours: cannot happen
    std::unique_ptr<Transfer> t = std::move(it->second);
    transfers_.erase(it);
    Result<ClientResponse> result = MakeResult(*t, code);
    ClientCallback callback = std::move(t->callback);
    t.reset();  // curl_easy_cleanup; the connection stays in the multi handle's cache
    Deliver(std::move(callback), std::move(result));
  }

  static Result<ClientResponse> MakeResult(Transfer& t, CURLcode code) {
    if (t.abort == Transfer::Abort::kIdle) {
      return Status::DeadlineExceeded("no data from " + t.request.url + " for " +
                                      std::to_string(t.request.idle_timeout_ms) + " ms");
    }
    if (t.abort == Transfer::Abort::kCancelled) return Status::Unavailable("cancelled");
    if (code == CURLE_OK) {
      long status = 0;
      curl_easy_getinfo(t.easy, CURLINFO_RESPONSE_CODE, &status);
      t.response.status = static_cast<int>(status);
      return std::move(t.response);
    }
    if (t.too_large) {
      return Status::ResourceExhausted("response from " + t.request.url + " exceeds " +
                                       std::to_string(t.request.max_response_bytes) + " bytes");
    }
    std::string message = curl_easy_strerror(code);
    if (t.error[0] != '\0') {
      message += ": ";
      message += t.error;
    }
    switch (code) {
      case CURLE_OPERATION_TIMEDOUT:
        return Status::DeadlineExceeded(std::move(message));
      case CURLE_URL_MALFORMAT:
      case CURLE_UNSUPPORTED_PROTOCOL:
      case CURLE_BAD_FUNCTION_ARGUMENT:
        return Status::InvalidArgument(std::move(message));
      case CURLE_FILESIZE_EXCEEDED:
        return Status::ResourceExhausted(std::move(message));
      default:
        return Status::Unavailable(std::move(message));
    }
  }

  // --- curl callbacks; all run on the strand, inside a multi call. ---

  static int OnSocket(CURL* /*easy*/, curl_socket_t fd, int what, void* userp, void* /*socketp*/) {
    auto* self = static_cast<CurlCore*>(userp);
    try {
      self->UpdateWatch(fd, what);
    } catch (...) {
      // Cannot watch: the transfer ends at its timeout.
    }
    return 0;
  }

  void UpdateWatch(curl_socket_t fd, int what) {
    auto it = watches_.find(fd);
    if (what == CURL_POLL_REMOVE) {
      if (it == watches_.end()) return;
      Watch& w = *it->second;
      w.want = 0;
      ErrorCode ec;
      if (!w.owned) {  // our dup: done with it
        w.closed = true;
        w.descriptor.close(ec);
        watches_.erase(it);
      } else if (w.reading || w.writing) {
        w.descriptor.cancel(ec);  // idle cached connection: no waits left behind
      }
      return;
    }
    if (tearing_down_) return;
    std::shared_ptr<Watch> w;
    if (it != watches_.end()) {
      w = it->second;
    } else {
      // Not opened through us (e.g. the resolver's socketpair): watch a duplicate we own.
      const int dup_fd = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
      if (dup_fd < 0) return;
      w = std::make_shared<Watch>(strand_);
      ErrorCode ec;
      w->descriptor.assign(dup_fd, ec);
      if (ec) {
        ::close(dup_fd);
        return;
      }
      w->fd = fd;
      watches_.emplace(fd, w);
    }
    w->want = what & (CURL_POLL_IN | CURL_POLL_OUT);
    if (w->want & CURL_POLL_IN) Arm(w, /*read=*/true);
    if (w->want & CURL_POLL_OUT) Arm(w, /*read=*/false);
  }

  void Arm(const std::shared_ptr<Watch>& w, bool read) {
    bool& pending = read ? w->reading : w->writing;
    if (pending || w->closed) return;
    pending = true;
    w->descriptor.async_wait(
        read ? Descriptor::wait_read : Descriptor::wait_write,
        [self = shared_from_this(), w, read](ErrorCode ec) { self->OnReady(w, read, ec); });
  }

  void OnReady(const std::shared_ptr<Watch>& w, bool read, ErrorCode ec) {
    (read ? w->reading : w->writing) = false;
    if (w->closed || multi_ == nullptr || tearing_down_) return;
    const int bit = read ? CURL_POLL_IN : CURL_POLL_OUT;
    if ((w->want & bit) == 0) return;  // curl lost interest meanwhile
    try {
      if (ec != asio::error::operation_aborted) {
        int flags = read ? CURL_CSELECT_IN : CURL_CSELECT_OUT;
        if (ec) flags |= CURL_CSELECT_ERR;
        SocketAction(w->fd, flags);
      }
      // Aborted by a cancel after CURL_POLL_REMOVE, and curl wants the socket again: re-arm.
      if (!w->closed && !tearing_down_ && (w->want & bit) != 0) Arm(w, read);
    } catch (...) {
      // Allocation failure: the transfer ends at its timeout.
    }
  }

  static int OnTimer(CURLM* /*multi*/, long timeout_ms, void* userp) {
    auto* self = static_cast<CurlCore*>(userp);
    if (self->tearing_down_) return 0;
    try {
      if (timeout_ms < 0) {
        self->timer_.cancel();
        return 0;
      }
      if (timeout_ms == 0) {
        // "As soon as possible" (every new transfer asks for it): a handler posted to the strand,
        // not the timer, which would reprogram the reactor's timerfd (a system call) each time.
        // curl must not be re-entered from here. A timer still set for later may fire too;
        // curl takes a timeout with nothing due as a no-op.
        if (self->timeout_posted_) return 0;
        self->timeout_posted_ = true;
        asio::post(self->strand_, [self = self->shared_from_this()] {
          self->timeout_posted_ = false;
          if (self->multi_ == nullptr || self->tearing_down_) return;
          try {
            self->SocketAction(CURL_SOCKET_TIMEOUT, 0);
          } catch (...) {
          }
        });
        return 0;
      }
      self->timer_.expires_after(std::chrono::milliseconds(timeout_ms));
      self->timer_.async_wait([self = self->shared_from_this()](ErrorCode ec) {
        if (ec || self->multi_ == nullptr || self->tearing_down_) return;
        try {
          self->SocketAction(CURL_SOCKET_TIMEOUT, 0);
        } catch (...) {
        }
      });
    } catch (...) {
      return -1;
    }
    return 0;
  }

  static curl_socket_t OnOpenSocket(void* clientp, curlsocktype purpose, curl_sockaddr* address) {
    auto* self = static_cast<CurlCore*>(clientp);
    if (purpose != CURLSOCKTYPE_IPCXN || self->tearing_down_) return CURL_SOCKET_BAD;
    const int fd = ::socket(address->family, address->socktype | SOCK_CLOEXEC, address->protocol);
    if (fd < 0) return CURL_SOCKET_BAD;
    try {
      auto w = std::make_shared<Watch>(self->strand_);
      ErrorCode ec;
      w->descriptor.assign(fd, ec);
      if (ec) {
        ::close(fd);
        return CURL_SOCKET_BAD;
      }
      w->fd = fd;
      w->owned = true;
      auto [it, inserted] = self->watches_.emplace(fd, w);
      if (!inserted) {  // a leftover dup under a reused number: retire it
        it->second->closed = true;
        it->second->descriptor.close(ec);
        it->second = std::move(w);
      }
      return fd;
    } catch (...) {
      ::close(fd);
      return CURL_SOCKET_BAD;
    }
  }

  static int OnCloseSocket(void* clientp, curl_socket_t fd) {
    auto* self = static_cast<CurlCore*>(clientp);
    auto it = self->watches_.find(fd);
    if (it == self->watches_.end() || !it->second->owned) return ::close(fd);
    Watch& w = *it->second;
    w.closed = true;
    ErrorCode ec;
    w.descriptor.close(ec);  // closes fd and aborts pending waits
    self->watches_.erase(it);
    return 0;
  }

  static bool Cancelled(const Transfer& t) {
    return t.request.cancel != nullptr && t.request.cancel->load(std::memory_order_acquire);
  }

  static int OnProgress(void* userp, curl_off_t /*dltotal*/, curl_off_t /*dlnow*/,
                        curl_off_t /*ultotal*/, curl_off_t /*ulnow*/) {
    auto* t = static_cast<Transfer*>(userp);
    if (!Cancelled(*t)) return 0;
    t->abort = Transfer::Abort::kCancelled;
    return 1;  // CURLE_ABORTED_BY_CALLBACK
  }

  static size_t OnBody(char* data, size_t size, size_t count, void* userp) {
    auto* t = static_cast<Transfer*>(userp);
    const size_t n = size * count;
    if (Cancelled(*t)) {
      t->abort = Transfer::Abort::kCancelled;
      return 0;
    }
    if (t->received + n > t->request.max_response_bytes) {
      t->too_large = true;
      return 0;  // aborts the transfer (CURLE_WRITE_ERROR)
    }
    t->received += n;
    if (t->idle_timer != nullptr) t->last_data = std::chrono::steady_clock::now();
    try {
      if (t->request.on_body) {
        if (!t->request.on_body(std::string_view(data, n))) {
          t->abort = Transfer::Abort::kCancelled;
          return 0;
        }
      } else {
        t->response.body.append(data, n);
      }
    } catch (...) {
      t->abort = Transfer::Abort::kCancelled;
      return 0;
    }
    return n;
  }

  // The blank line after a response's headers. Returns false to abort.
  bool OnHeadersComplete(Transfer& t) {
    if (t.header_status >= 100 && t.header_status < 200) return true;  // interim response
    if (t.headers_reported) return true;  // trailers
    t.headers_reported = true;
    if (t.request.idle_timeout_ms > 0 && !t.is_head) {
      t.last_data = std::chrono::steady_clock::now();
      ArmIdleTimer(t);
    }
    if (!t.request.on_headers) return true;
    bool go_on = false;
    try {
      go_on = !Cancelled(t) && t.request.on_headers(t.header_status, t.response.headers);
    } catch (...) {
      go_on = false;  // a throwing callback aborts like a false return
    }
    if (!go_on) t.abort = Transfer::Abort::kCancelled;
    return go_on;
  }

  // Parses the status code of a status line ("HTTP/1.1 200 OK", "HTTP/2 200"); 0 if malformed.
  static int ParseStatusLine(std::string_view line) {
    const size_t space = line.find(' ');
    if (space == std::string_view::npos) return 0;
    line.remove_prefix(space + 1);
    int status = 0;
    auto [end, err] = std::from_chars(line.data(), line.data() + std::min<size_t>(3, line.size()),
                                      status);
    (void)end;
    return err == std::errc() ? status : 0;
  }

  static size_t OnHeaderLine(char* data, size_t size, size_t count, void* userp) {
    auto* t = static_cast<Transfer*>(userp);
    const size_t n = size * count;
    try {
      std::string_view line(data, n);
      if (line.substr(0, 5) == "HTTP/") {
        // A new response (after 1xx, or a redirect we do not follow): keep only the last one's.
        t->response.headers.clear();
        t->header_status = ParseStatusLine(line);
        return n;
      }
      if (line == "\r\n" || line == "\n") {
        return t->core->OnHeadersComplete(*t) ? n : 0;
      }
      Headers& headers = t->response.headers;
      if (!line.empty() && (line.front() == ' ' || line.front() == '\t')) {
        // Obsolete line folding: continues the previous header's value.
        const std::string_view more = Trim(line);
        if (!headers.empty() && !more.empty()) {
          headers.back().second += ' ';
          headers.back().second.append(more.data(), more.size());
        }
        return n;
      }
      const size_t colon = line.find(':');
      if (colon == std::string_view::npos) return n;  // the blank line, or garbage
      const std::string_view name = Trim(line.substr(0, colon));
      const std::string_view value = Trim(line.substr(colon + 1));
      if (!t->is_head && AsciiIEquals(name, "content-length")) {
        uint64_t length = 0;
        auto [end, err] = std::from_chars(value.data(), value.data() + value.size(), length);
        if (err == std::errc() && end == value.data() + value.size()) {
          if (length > t->request.max_response_bytes) {
            t->too_large = true;
            return 0;  // fail before reading the body
          }
          if (!t->request.on_body) t->response.body.reserve(static_cast<size_t>(length));
        }
      }
      headers.emplace_back(std::string(name), std::string(value));
    } catch (...) {
      return 0;
    }
    return n;
  }

  asio::io_context& io_;
  Strand strand_;
  Timer timer_;
  CURLM* multi_ = nullptr;
  // Strand only:
  std::unordered_map<curl_socket_t, std::shared_ptr<Watch>> watches_;
  std::unordered_map<Transfer*, std::unique_ptr<Transfer>> transfers_;
  uint64_t next_id_ = 0;
  bool timeout_posted_ = false;  // an "at once" timeout handler is on its way (OnTimer)
  bool shut_down_ = false;     // no more transfers are accepted
  bool tearing_down_ = false;  // no new waits or sockets; the multi handle is going away
};

class CurlHttpClient final : public HttpClient {
 public:
  explicit CurlHttpClient(std::shared_ptr<CurlCore> core) : core_(std::move(core)) {}
  ~CurlHttpClient() override { core_->ShutdownAsync(); }

  void Request(ClientRequest request, ClientCallback callback) override {
    core_->Submit(std::move(request), std::move(callback));
  }

  void Shutdown(std::function<void()> done) override { core_->ShutdownAsync(std::move(done)); }

 private:
  std::shared_ptr<CurlCore> core_;
};

}  // namespace

std::shared_ptr<HttpClient> MakeCurlHttpClient(boost::asio::io_context& io) {
  auto core = std::make_shared<CurlCore>(io);
  core->Init();
  return std::make_shared<CurlHttpClient>(std::move(core));
}

Result<ClientResponse> BlockingRequest(ClientRequest request) {
  asio::io_context io(1);
  std::optional<Result<ClientResponse>> outcome;
  {
    auto client = MakeCurlHttpClient(io);
    // The callback does not outlive this function: io runs only here.
    client->Request(std::move(request), [&outcome](Result<ClientResponse> result) {
      outcome.emplace(std::move(result));
    });
    while (!outcome && io.run_one() > 0) {
    }
  }  // the client's destructor posts its shutdown; run it so every connection is closed
  io.restart();
  io.run();
  if (!outcome) return Status::Internal("request did not complete");
  return std::move(*outcome);
}

}  // namespace parley::net
