// LLM concurrency benchmark: N conversations at once through the webhook adapter of the real
// `parley serve`, every turn answered by the OpenAI-compatible test server after 2 s.
//
// The program starts, in its own process, the LLM test server (tests/fakes/llm, `--llm-threads`
// io threads; every request is answered after `--llm-delay-ms` with a short streamed answer that
// cites [1]) and a receiver for the webhook's reply_url callbacks (net::HttpServer, one io
// thread, stamps every callback on arrival). It writes a throwaway config and store into a temp
// dir (knowledge = the shipped config/knowledge, webhook on with insecure_no_auth on 127.0.0.1:0,
// [llm] on at the test server with the API key in an environment variable set for the child
// only, policy rate limits off, log level warn, runtime.threads = `--daemon-threads`), starts the
// daemon and sends N turns, each in its own conversation, as POST /v1/messages with a reply_url
// (asynchronous mode: 202, the answer is POSTed to reply_url) over `--connections` keep-alive
// connections as fast as the daemon accepts them. Since every answer takes 2 s, all N turns wait
// on the model at the same time once intake is faster than N / 2 s.
//
// Measured: 202s, callbacks delivered (every turn must get exactly one), latency from the POST's
// first byte written to the callback received, the test server's peak of requests being answered
// at once (MaxConcurrent) and when it was reached, and the daemon's VmRSS / VmHWM and thread
// count (/proc/PID/status every 100 ms: min and max), open fds, CPU time (utime + stime from
// /proc/PID/stat) over the run and per turn, wall time, the kernel's listen-queue overflow
// counters and the daemon's parley_llm_* metrics. One fresh daemon, store and test server per N;
// then, unless --long-delay-ms 0, one more run at the largest N with a model delay long enough
// (default 20 s) that every turn is taken in before the first answer, so all N wait at once.
// Markdown on stdout, progress on stderr.
//
// Bounded: every run has a deadline (`--deadline-seconds`); the daemon is sent SIGTERM at the end
// (SIGKILL if it does not stop); the temp dir is removed. Loopback only.

#include <signal.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "net/http.h"
#include "tests/fakes/llm/llm_server.h"
#include "bench/bench_util.h"
#include "tests/support/daemon_process.h"
#include "tests/support/temp_dir.h"

#ifndef PARLEY_BENCH_SOURCE_DIR
#define PARLEY_BENCH_SOURCE_DIR "."
#endif

namespace parley::bench {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = boost::beast::http;
using tcp = boost::asio::ip::tcp;
using Clock = std::chrono::steady_clock;
using Json = nlohmann::json;
using testing::DaemonProcess;
using testing::LlmReply;
using testing::LlmServer;
using testing::LlmServerOptions;

constexpr char kLlmKey[] = "sk-llm-bench";
constexpr char kModel[] = "test-model";
// Every answer contains this, so a callback can be told from the extractive fallback.
constexpr char kMarker[] = "llm-bench-answer";

std::atomic<bool> g_stop{false};

void OnSignal(int) { g_stop = true; }

const char* const kQuestions[] = {
    "How do I sign webhook requests?",
    "how can I get answers asynchronously with a reply_url?",
    "where does parley keep its search index and database?",
    "what happens on SIGTERM, does it finish the turns in flight?",
    "How do I add my own documents to the knowledge base?",
    "does parley remember earlier messages in a thread?",
    "how do I make parley forget a conversation",
    "where do secrets go in the config, can I use environment variables?",
};
constexpr size_t kQuestionCount = sizeof(kQuestions) / sizeof(kQuestions[0]);

struct Options {
  std::string parley;
  std::string knowledge = std::string(PARLEY_BENCH_SOURCE_DIR) + "/config/knowledge";
  std::vector<size_t> turns = {1000, 5000, 10000};
  int connections = 64;
  int daemon_threads = 2;
  int llm_threads = 2;
  int llm_delay_ms = 2000;
  int chunk_delay_ms = 10;
  double deadline_seconds = 120;
  // One more run at the largest N with this model delay (long enough for every turn to be taken
  // in before the first answer, so all N wait at once); 0 = none.
  int long_delay_ms = 20000;
  int llm_max_concurrent = -1;  // [llm] max_concurrent; < 0: not set (the daemon's default)
  std::string metrics_out;
};

void Usage() {
  std::fprintf(stderr,
               "usage: llm_bench --parley PATH [options]\n"
               "  --knowledge DIR        knowledge source (default: config/knowledge)\n"
               "  --turns N1,N2,...      concurrent turns per run, one fresh daemon each\n"
               "                         (default 1000,5000,10000)\n"
               "  --connections N        keep-alive connections sending the turns (default 64)\n"
               "  --daemon-threads N     runtime.threads of the daemon (default 2)\n"
               "  --llm-threads N        io threads of the LLM test server (default 2)\n"
               "  --llm-delay-ms MS      the model's time to the first byte (default 2000)\n"
               "  --chunk-delay-ms MS    between the streamed chunks of an answer (default 10)\n"
               "  --deadline-seconds S   longest run, from the first POST (default 120)\n"
               "  --long-delay-ms MS     one more run at the largest N with this model delay,\n"
               "                         so that all N turns wait at once (default 20000; 0 = no)\n"
               "  --llm-max-concurrent N [llm] max_concurrent of the daemon (default: not set,\n"
               "                         i.e. the daemon's default 1024; 0 = unlimited)\n"
               "  --metrics-out FILE     append the daemon's GET /metrics after every run\n");
}

bool ParseArgs(int argc, char** argv, Options* o) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "llm_bench: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--parley") {
      o->parley = next();
    } else if (a == "--knowledge") {
      o->knowledge = next();
    } else if (a == "--turns") {
      o->turns.clear();
      std::stringstream ss(next());
      std::string part;
      while (std::getline(ss, part, ',')) {
        if (!part.empty()) o->turns.push_back(std::strtoul(part.c_str(), nullptr, 10));
      }
    } else if (a == "--connections") {
      o->connections = std::atoi(next().c_str());
    } else if (a == "--daemon-threads") {
      o->daemon_threads = std::atoi(next().c_str());
    } else if (a == "--llm-threads") {
      o->llm_threads = std::atoi(next().c_str());
    } else if (a == "--llm-delay-ms") {
      o->llm_delay_ms = std::atoi(next().c_str());
    } else if (a == "--chunk-delay-ms") {
      o->chunk_delay_ms = std::atoi(next().c_str());
    } else if (a == "--deadline-seconds") {
      o->deadline_seconds = std::atof(next().c_str());
    } else if (a == "--long-delay-ms") {
      o->long_delay_ms = std::atoi(next().c_str());
    } else if (a == "--llm-max-concurrent") {
      o->llm_max_concurrent = std::atoi(next().c_str());
    } else if (a == "--metrics-out") {
      o->metrics_out = next();
    } else if (a == "--help" || a == "-h") {
      Usage();
      std::exit(0);
    } else {
      std::fprintf(stderr, "llm_bench: unknown argument %s\n", a.c_str());
      return false;
    }
  }
  if (o->parley.empty()) {
    std::fprintf(stderr, "llm_bench: --parley PATH is required\n");
    return false;
  }
  if (o->turns.empty() || o->connections < 1 || o->daemon_threads < 0 || o->llm_threads < 1 ||
      o->llm_delay_ms < 0 || o->chunk_delay_ms < 0 || o->deadline_seconds <= 0 ||
      o->long_delay_ms < 0) {
    std::fprintf(stderr, "llm_bench: bad option value\n");
    return false;
  }
  for (size_t n : o->turns) {
    if (n == 0) {
      std::fprintf(stderr, "llm_bench: turn counts must be positive\n");
      return false;
    }
  }
  return true;
}

// ---- /proc ----

// Numeric "Key:   N ..." fields of a /proc file (status, smaps_rollup); the value in its unit.
std::map<std::string, long> ProcFields(const std::string& path) {
  std::map<std::string, long> out;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    const char* v = line.c_str() + colon + 1;
    while (*v == ' ' || *v == '\t') ++v;
    if (*v < '0' || *v > '9') continue;
    out[line.substr(0, colon)] = std::atol(v);
  }
  return out;
}

long Field(const std::map<std::string, long>& m, const std::string& key) {
  auto it = m.find(key);
  return it == m.end() ? 0 : it->second;
}

// "name×count, ..." of the process's threads (/proc/PID/task/*/comm).
std::string ThreadNames(pid_t pid) {
  std::map<std::string, int> names;
  std::error_code ec;
  for (auto it = std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/task", ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    std::string comm;
    std::getline(std::ifstream(it->path() / "comm"), comm);
    ++names[comm];
  }
  std::string out;
  for (const auto& [name, count] : names) {
    out += (out.empty() ? "" : ", ") + name + (count > 1 ? " ×" + std::to_string(count) : "");
  }
  return out;
}

// TcpExt counters of /proc/net/netstat (system-wide, since boot): ListenOverflows, ListenDrops.
std::map<std::string, long> TcpExt() {
  std::ifstream in("/proc/net/netstat");
  std::string names, values;
  std::map<std::string, long> out;
  while (std::getline(in, names) && std::getline(in, values)) {
    if (names.compare(0, 7, "TcpExt:") != 0) continue;
    std::stringstream n(names.substr(7)), v(values.substr(7));
    std::string key;
    long value = 0;
    while (n >> key && v >> value) out[key] = value;
  }
  return out;
}

size_t OpenFds(pid_t pid) {
  std::error_code ec;
  size_t n = 0;
  for (auto it = std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    ++n;
  }
  return n;
}

double Mib(long kib) { return static_cast<double>(kib) / 1024.0; }

// ---- the turns of one run ----

// Shared by the sending connections (load io thread) and the callback receiver (its io thread).
class Ledger {
 public:
  explicit Ledger(size_t n) : send_ns_(n, 0), accepted_ns_(n, 0), reply_ns_(n, 0), status_(n, 0) {}

  size_t size() const { return send_ns_.size(); }

  void Sent(size_t i) {
    std::lock_guard<std::mutex> lock(mu_);
    send_ns_[i] = NowNs();
  }
  void Answered(size_t i, int status) {
    std::lock_guard<std::mutex> lock(mu_);
    accepted_ns_[i] = NowNs();
    status_[i] = status;
    if (status == 202) {
      ++accepted_;
    } else {
      ++refused_;
      if (sample_refusal_.empty()) sample_refusal_ = std::to_string(status);
    }
  }
  void Failed(const std::string& what) {
    std::lock_guard<std::mutex> lock(mu_);
    ++send_errors_;
    if (sample_error_.empty()) sample_error_ = what;
  }
  // A callback: body of the webhook's reply JSON.
  void Callback(const std::string& body) {
    const int64_t now = NowNs();
    Json j = Json::parse(body, nullptr, false);
    std::string conversation;
    std::string text;
    if (j.is_object()) {
      conversation = j.value("conversation", "");
      text = j.value("text", "");
    }
    std::lock_guard<std::mutex> lock(mu_);
    ++callbacks_;
    const size_t dash = conversation.rfind('-');
    size_t i = send_ns_.size();
    if (conversation.compare(0, prefix_.size(), prefix_) == 0 && dash != std::string::npos) {
      i = std::strtoul(conversation.c_str() + dash + 1, nullptr, 10);
    }
    if (i >= send_ns_.size()) {
      ++unknown_;
      return;
    }
    if (reply_ns_[i] != 0) {
      ++doubled_;
      return;
    }
    reply_ns_[i] = now;
    ++delivered_;
    if (text.find(kMarker) != std::string::npos) {
      ++from_model_;
    } else if (sample_other_.empty()) {
      sample_other_ = text.substr(0, 300);
    }
    if (sample_answer_.empty()) sample_answer_ = text.substr(0, 300);
  }

  void set_prefix(std::string p) { prefix_ = std::move(p); }
  const std::string& prefix() const { return prefix_; }

  struct Snapshot {
    size_t accepted, refused, send_errors, callbacks, delivered, doubled, unknown, from_model;
  };
  Snapshot Counts() const {
    std::lock_guard<std::mutex> lock(mu_);
    return {accepted_,  refused_, send_errors_, callbacks_,
            delivered_, doubled_, unknown_,     from_model_};
  }

  struct Times {
    std::vector<double> latency_ms;  // sorted, delivered turns
    std::vector<double> accept_ms;   // sorted, POST to 202
    int64_t first_send = 0, last_send = 0, last_accept = 0, last_reply = 0;
  };
  Times GetTimes() const {
    std::lock_guard<std::mutex> lock(mu_);
    Times t;
    for (size_t i = 0; i < send_ns_.size(); ++i) {
      if (send_ns_[i] == 0) continue;
      if (t.first_send == 0 || send_ns_[i] < t.first_send) t.first_send = send_ns_[i];
      t.last_send = std::max(t.last_send, send_ns_[i]);
      if (accepted_ns_[i] != 0) {
        t.accept_ms.push_back(static_cast<double>(accepted_ns_[i] - send_ns_[i]) / 1e6);
        t.last_accept = std::max(t.last_accept, accepted_ns_[i]);
      }
      if (reply_ns_[i] != 0) {
        t.latency_ms.push_back(static_cast<double>(reply_ns_[i] - send_ns_[i]) / 1e6);
        t.last_reply = std::max(t.last_reply, reply_ns_[i]);
      }
    }
    std::sort(t.latency_ms.begin(), t.latency_ms.end());
    std::sort(t.accept_ms.begin(), t.accept_ms.end());
    return t;
  }

  std::string sample_answer() const {
    std::lock_guard<std::mutex> lock(mu_);
    return sample_answer_;
  }
  std::string sample_other() const {
    std::lock_guard<std::mutex> lock(mu_);
    return sample_other_;
  }
  std::string sample_error() const {
    std::lock_guard<std::mutex> lock(mu_);
    return sample_error_.empty() ? sample_refusal_ : sample_error_;
  }

 private:
  mutable std::mutex mu_;
  std::string prefix_;
  std::vector<int64_t> send_ns_, accepted_ns_, reply_ns_;
  std::vector<int> status_;
  size_t accepted_ = 0, refused_ = 0, send_errors_ = 0, callbacks_ = 0, delivered_ = 0,
         doubled_ = 0, unknown_ = 0, from_model_ = 0;
  std::string sample_answer_, sample_other_, sample_error_, sample_refusal_;
};

// ---- the sender: `connections` keep-alive connections, closed loop, one io thread ----

class Sender {
 public:
  Sender(Ledger& ledger, uint16_t port, std::string reply_url, int connections)
      : ledger_(ledger), port_(port), reply_url_(std::move(reply_url)) {
    for (int i = 0; i < connections; ++i) conns_.push_back(std::make_shared<Conn>(io_));
  }
  ~Sender() { Stop(); }

  void Start() {
    for (auto& c : conns_) Connect(c);
    thread_ = std::thread([this] { io_.run(); });
  }
  // Idempotent; closes every connection and joins the io thread.
  void Stop() {
    if (!thread_.joinable()) return;
    asio::post(io_, [this] {
      for (auto& c : conns_) {
        beast::error_code ec;
        c->socket.close(ec);
      }
    });
    io_.stop();
    thread_.join();
  }
  bool Done() const { return finished_.load() >= conns_.size(); }

 private:
  struct Conn {
    explicit Conn(asio::io_context& io) : socket(io) {}
    tcp::socket socket;
    beast::flat_buffer buffer;
    http::request<http::string_body> req;
    http::response<http::string_body> res;
    size_t index = 0;
    int reconnects = 0;
  };

  void Connect(const std::shared_ptr<Conn>& c) {
    beast::error_code ec;
    c->socket.close(ec);
    c->socket = tcp::socket(io_);
    c->buffer.clear();
    c->socket.async_connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port_),
                            [this, c](const beast::error_code& e) {
                              if (e) {
                                ledger_.Failed("connect: " + e.message());
                                if (++c->reconnects > 20) return Finish();
                                return Connect(c);
                              }
                              c->socket.set_option(tcp::no_delay(true));
                              Next(c);
                            });
  }

  void Next(const std::shared_ptr<Conn>& c) {
    const size_t i = next_.fetch_add(1);
    if (i >= ledger_.size()) return Finish();
    c->index = i;
    Json body{{"conversation", ledger_.prefix() + std::to_string(i)},
              {"user", "u" + std::to_string(i % 5000)},
              {"text", kQuestions[i % kQuestionCount]},
              {"reply_url", reply_url_}};
    c->req = {};
    c->req.method(http::verb::post);
    c->req.target("/v1/messages");
    c->req.version(11);
    c->req.set(http::field::host, "127.0.0.1");
    c->req.set(http::field::content_type, "application/json");
    c->req.keep_alive(true);
    c->req.body() = body.dump();
    c->req.prepare_payload();
    ledger_.Sent(i);
    http::async_write(c->socket, c->req, [this, c](const beast::error_code& e, size_t) {
      if (e) return Broken(c, "write: " + e.message());
      c->res = {};
      http::async_read(c->socket, c->buffer, c->res,
                       [this, c](const beast::error_code& e2, size_t) {
                         if (e2) return Broken(c, "read: " + e2.message());
                         ledger_.Answered(c->index, static_cast<int>(c->res.result_int()));
                         if (!c->res.keep_alive()) return Connect(c);
                         Next(c);
                       });
    });
  }

  // The turn in flight on c is counted as failed (not retried: a retry could double it).
  void Broken(const std::shared_ptr<Conn>& c, const std::string& what) {
    ledger_.Failed(what);
    if (++c->reconnects > 20) return Finish();
    Connect(c);
  }

  void Finish() { finished_.fetch_add(1); }

  Ledger& ledger_;
  uint16_t port_;
  std::string reply_url_;
  asio::io_context io_;
  std::vector<std::shared_ptr<Conn>> conns_;
  std::atomic<size_t> next_{0};
  std::atomic<size_t> finished_{0};
  std::thread thread_;
};

// ---- the reply_url receiver ----

class Receiver {
 public:
  explicit Receiver(Ledger& ledger) : guard_(io_.get_executor()) {
    net::HttpServerOptions options;
    options.max_connections = 16'000;
    options.max_body_bytes = 1 << 20;
    server_ = std::make_unique<net::HttpServer>(
        io_, options, [&ledger](net::HttpRequest req, net::Responder respond) {
          ledger.Callback(req.body);
          net::HttpResponse r;
          r.body = "{}";
          respond(std::move(r));
        });
    auto port = server_->ListenTcp("127.0.0.1", 0);
    if (!port.ok()) {
      std::fprintf(stderr, "llm_bench: the callback receiver cannot listen\n");
      std::abort();
    }
    port_ = *port;
    thread_ = std::thread([this] { io_.run(); });
  }
  ~Receiver() {
    server_->Stop();
    guard_.reset();
    io_.stop();
    thread_.join();
    server_.reset();
  }
  std::string Url() const { return "http://127.0.0.1:" + std::to_string(port_) + "/reply"; }
  size_t OpenConnections() const { return server_->OpenConnections(); }
  uint64_t AcceptedConnections() const { return server_->AcceptedConnections(); }

 private:
  asio::io_context io_;
  asio::executor_work_guard<asio::io_context::executor_type> guard_;
  std::unique_ptr<net::HttpServer> server_;
  std::thread thread_;
  uint16_t port_ = 0;
};

// ---- one run ----

struct RunResult {
  size_t n = 0;
  int delay_ms = 0;
  std::string idle_thread_names, max_thread_names;
  Ledger::Snapshot counts{};
  double p50 = 0, p90 = 0, p99 = 0, max = 0, min = 0;
  double accept_p50 = 0, accept_p99 = 0, accept_max = 0;
  double intake_s = 0;   // first POST to last 202
  double peak_at_s = 0;  // first POST to the LLM server's concurrency reaching its peak
  size_t llm_max_concurrent = 0;
  size_t llm_requests = 0;
  size_t llm_connections = 0;
  double wall_s = 0;        // first POST to last callback
  double daemon_cpu_s = 0;  // over the run (first POST to the end of the run)
  double bench_cpu_s = 0;
  long idle_rss_kib = 0, peak_rss_kib = 0, end_rss_kib = 0, hwm_kib = 0;
  long threads_min = 0, threads_max = 0, idle_threads = 0;
  size_t fds_max = 0;
  size_t samples = 0;
  size_t receiver_conns_max = 0;
  long listen_overflows = 0, listen_drops = 0;  // system-wide increase over the run
  std::map<std::string, long> smaps;            // smaps_rollup at the end of the run, kB
  std::string llm_metrics;                      // parley_llm_* lines of GET /metrics
  std::string stopped;
  bool timed_out = false;
  std::string sample_answer, sample_other, sample_error;
};

class Run {
 public:
  Run(const Options& o, size_t n, int delay_ms, std::string dir)
      : o_(o), n_(n), delay_ms_(delay_ms), dir_(std::move(dir)) {}

  bool Start() {
    LlmServerOptions lo;
    lo.api_key = kLlmKey;
    lo.model = kModel;
    lo.threads = o_.llm_threads;
    llm_ = std::make_unique<LlmServer>(lo);
    const int delay = delay_ms_;
    const int chunk_delay = o_.chunk_delay_ms;
    llm_->SetResponder([delay, chunk_delay](const Json&) {
      LlmReply r;
      r.text = std::string(
                   "Parley answers this from its knowledge base [1]; see the linked "
                   "page for the details (") +
               kMarker + ").";
      r.chunk_chars = 30;  // a role chunk, 4 content chunks, the finish chunk
      r.delay_ms = delay;
      r.chunk_delay_ms = chunk_delay;
      return r;
    });
    std::filesystem::create_directories(dir_);
    std::ofstream(dir_ + "/parley.toml") << ConfigText();
    daemon_ = std::make_unique<DaemonProcess>(
        dir_ + "/parley.toml", dir_ + "/port.json", dir_ + "/daemon.out",
        std::map<std::string, std::string>{{"PARLEY_BENCH_LLM_KEY", kLlmKey}});
    if (!daemon_->Start(60'000)) {
      std::fprintf(stderr, "llm_bench: the daemon did not become ready:\n%s\n",
                   daemon_->Log().c_str());
      return false;
    }
    pid_ = FindChildPid();
    if (pid_ <= 0) {
      std::fprintf(stderr, "llm_bench: cannot find the daemon's pid\n");
      return false;
    }
    return true;
  }

  ~Run() {
    if (daemon_) daemon_->Terminate(15'000);
  }

  RunResult Load() {
    RunResult r;
    r.n = n_;
    r.delay_ms = delay_ms_;
    Ledger ledger(n_);
    ledger.set_prefix("llm-bench-" + std::to_string(n_) + "-" + std::to_string(delay_ms_) + "-");
    Receiver receiver(ledger);
    std::this_thread::sleep_for(std::chrono::seconds(1));  // settle: idle means idle
    const auto idle = ProcFields("/proc/" + std::to_string(pid_) + "/status");
    r.idle_rss_kib = Field(idle, "VmRSS");
    r.idle_threads = Field(idle, "Threads");
    r.threads_min = r.threads_max = r.idle_threads;
    r.idle_thread_names = r.max_thread_names = ThreadNames(pid_);
    std::fprintf(stderr,
                 "llm_bench: N=%zu, model delay %d ms: daemon pid %d ready, idle VmRSS %.1f MiB, "
                 "%ld threads (%s)\n",
                 n_, delay_ms_, static_cast<int>(pid_), Mib(r.idle_rss_kib), r.idle_threads,
                 r.idle_thread_names.c_str());

    const auto tcp0 = TcpExt();
    const double dcpu0 = ProcCpuSeconds(pid_);
    const double bcpu0 = RusageSeconds(RUSAGE_SELF);
    const int64_t t0 = NowNs();
    const int64_t deadline = t0 + static_cast<int64_t>(o_.deadline_seconds * 1e9);
    Sender sender(ledger, daemon_->port(), receiver.Url(), o_.connections);
    sender.Start();

    size_t peak = 0;
    int64_t peak_ns = 0;
    int64_t last_sample = 0;
    int64_t last_progress_log = t0;
    while (!g_stop) {
      const int64_t now = NowNs();
      const size_t active = llm_->ActiveRequests();
      if (active > peak) {
        peak = active;
        peak_ns = now;
      }
      if (now - last_sample >= 100'000'000) {
        last_sample = now;
        Sample(&r);
        r.receiver_conns_max = std::max(r.receiver_conns_max, receiver.OpenConnections());
      }
      const Ledger::Snapshot c = ledger.Counts();
      if (now - last_progress_log >= 2'000'000'000) {
        last_progress_log = now;
        std::fprintf(stderr,
                     "llm_bench: N=%zu: %.0f s: %zu accepted, %zu at the model now (peak %zu), "
                     "%zu delivered, VmRSS %.1f MiB\n",
                     n_, static_cast<double>(now - t0) / 1e9, c.accepted, active, peak, c.delivered,
                     Mib(r.end_rss_kib));
      }
      if (sender.Done() && c.delivered + c.refused + c.send_errors >= n_) break;
      if (now >= deadline) {
        r.timed_out = true;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    const double dcpu1 = ProcCpuSeconds(pid_);
    const double bcpu1 = RusageSeconds(RUSAGE_SELF);
    Sample(&r);
    sender.Stop();
    // Late or doubled callbacks would arrive within moments; wait a little to count them.
    std::this_thread::sleep_for(std::chrono::milliseconds(500));

    const auto tcp1 = TcpExt();
    r.listen_overflows = Field(tcp1, "ListenOverflows") - Field(tcp0, "ListenOverflows");
    r.listen_drops = Field(tcp1, "ListenDrops") - Field(tcp0, "ListenDrops");
    r.counts = ledger.Counts();
    const Ledger::Times t = ledger.GetTimes();
    r.p50 = Percentile(t.latency_ms, 50);
    r.p90 = Percentile(t.latency_ms, 90);
    r.p99 = Percentile(t.latency_ms, 99);
    r.max = t.latency_ms.empty() ? 0 : t.latency_ms.back();
    r.min = t.latency_ms.empty() ? 0 : t.latency_ms.front();
    r.accept_p50 = Percentile(t.accept_ms, 50);
    r.accept_p99 = Percentile(t.accept_ms, 99);
    r.accept_max = t.accept_ms.empty() ? 0 : t.accept_ms.back();
    r.intake_s =
        t.last_accept > t.first_send ? static_cast<double>(t.last_accept - t.first_send) / 1e9 : 0;
    r.wall_s = t.last_reply > t.first_send ? static_cast<double>(t.last_reply - t.first_send) / 1e9
                                           : static_cast<double>(NowNs() - t0) / 1e9;
    r.peak_at_s = peak_ns > t.first_send ? static_cast<double>(peak_ns - t.first_send) / 1e9 : 0;
    r.llm_max_concurrent = llm_->MaxConcurrent();
    r.llm_requests = llm_->RequestCount();
    r.llm_connections = llm_->TotalConnections();
    r.daemon_cpu_s = dcpu1 - dcpu0;
    r.bench_cpu_s = bcpu1 - bcpu0;
    r.hwm_kib = Field(ProcFields("/proc/" + std::to_string(pid_) + "/status"), "VmHWM");
    r.smaps = ProcFields("/proc/" + std::to_string(pid_) + "/smaps_rollup");
    r.sample_answer = ledger.sample_answer();
    r.sample_other = ledger.sample_other();
    r.sample_error = ledger.sample_error();
    auto m = daemon_->Get("/metrics");
    if (m.ok()) {
      std::stringstream ss(m->body);
      std::string line;
      while (std::getline(ss, line)) {
        if (line.compare(0, 11, "parley_llm_") == 0 && line.find("_bucket") == std::string::npos) {
          r.llm_metrics += line + "\n";
        }
      }
      if (!o_.metrics_out.empty()) {
        std::ofstream(o_.metrics_out, std::ios::app) << "# ---- llm_bench: after N = " << n_ << "\n"
                                                     << m->body;
      }
    }
    r.stopped = Stop();
    std::fprintf(stderr,
                 "llm_bench: N=%zu: %zu accepted, %zu delivered (%zu from the model), p50 %.0f "
                 "p99 %.0f max %.0f ms, peak at the model %zu, VmRSS peak %.1f MiB, threads "
                 "%ld..%ld, daemon CPU %.1f s\n",
                 n_, r.counts.accepted, r.counts.delivered, r.counts.from_model, r.p50, r.p99,
                 r.max, r.llm_max_concurrent, Mib(r.peak_rss_kib), r.threads_min, r.threads_max,
                 r.daemon_cpu_s);
    return r;
  }

 private:
  void Sample(RunResult* r) {
    const auto s = ProcFields("/proc/" + std::to_string(pid_) + "/status");
    if (s.empty()) return;
    ++r->samples;
    const long rss = Field(s, "VmRSS");
    const long threads = Field(s, "Threads");
    r->end_rss_kib = rss;
    r->peak_rss_kib = std::max(r->peak_rss_kib, rss);
    r->threads_min = std::min(r->threads_min, threads);
    if (threads > r->threads_max) r->max_thread_names = ThreadNames(pid_);
    r->threads_max = std::max(r->threads_max, threads);
    r->fds_max = std::max(r->fds_max, OpenFds(pid_));
  }

  std::string Stop() {
    const auto t = Clock::now();
    const int code = daemon_->Terminate(15'000);
    const double s = std::chrono::duration<double>(Clock::now() - t).count();
    std::string log;
    std::ifstream in(dir_ + "/parley.log");
    size_t lines = 0;
    std::string line;
    while (std::getline(in, line)) {
      if (lines < 5) log += "    " + line.substr(0, 240) + "\n";
      ++lines;
    }
    daemon_.reset();
    return "stopped on SIGTERM in " + Fmt("%.1f", s) + " s with exit status " +
           std::to_string(code) + "; it logged " + std::to_string(lines) +
           " line(s) at warn or above" + (lines ? ", the first:\n\n" + log : ".");
  }

  std::string ConfigText() const {
    std::string s;
    s += "# Written by llm_bench for one run; deleted afterwards.\n";
    s += "[runtime]\nthreads = " + std::to_string(o_.daemon_threads) + "\n\n";
    s += "[log]\nlevel = \"warn\"\nfile = \"" + dir_ + "/parley.log\"\n\n";
    s += "[store]\npath = \"" + dir_ + "/store\"\n\n";
    s += "[server]\nlisten = \"127.0.0.1:0\"\nport_file = \"" + dir_ + "/port.json\"\n\n";
    s += "[[knowledge.sources]]\npath = \"" + o_.knowledge + "\"\n\n";
    s += "[policy]\nuser_rate_per_minute = 0\nconversation_rate_per_minute = 0\n\n";
    s += "[webhook]\nenabled = true\ninsecure_no_auth = true\n\n";
    s += "[llm]\nenabled = true\nbase_url = \"" + llm_->base_url() +
         "\"\napi_key = \"${PARLEY_BENCH_LLM_KEY}\"\nmodel = \"" + kModel + "\"\nstream = true\n";
    if (o_.llm_max_concurrent >= 0) {
      s += "max_concurrent = " + std::to_string(o_.llm_max_concurrent) + "\n";
    }
    return s;
  }

  const Options& o_;
  size_t n_;
  int delay_ms_;
  std::string dir_;
  std::unique_ptr<LlmServer> llm_;
  std::unique_ptr<DaemonProcess> daemon_;
  pid_t pid_ = -1;
};

std::string Row(const RunResult& r) {
  const double per_turn_us = r.n ? 1e6 * r.daemon_cpu_s / static_cast<double>(r.n) : 0;
  return "| " + std::to_string(r.n) + " | " + std::to_string(r.delay_ms) + " | " +
         std::to_string(r.counts.accepted) + " | " + std::to_string(r.counts.delivered) + " | " +
         std::to_string(r.n - r.counts.delivered) + " | " + std::to_string(r.llm_max_concurrent) +
         " | " + Fmt("%.2f", r.peak_at_s) + " | " + Fmt("%.2f", r.intake_s) + " | " +
         Fmt("%.0f", r.p50) + " | " + Fmt("%.0f", r.p90) + " | " + Fmt("%.0f", r.p99) + " | " +
         Fmt("%.0f", r.max) + " | " + Fmt("%.1f", Mib(r.idle_rss_kib)) + " | " +
         Fmt("%.1f", Mib(r.peak_rss_kib)) + " | " + Fmt("%.1f", Mib(r.hwm_kib)) + " | " +
         std::to_string(r.threads_min) + " / " + std::to_string(r.threads_max) + " | " +
         Fmt("%.2f", r.daemon_cpu_s) + " | " + Fmt("%.0f", per_turn_us) + " | " +
         Fmt("%.2f", r.wall_s) + " |";
}

std::string DetailRow(const RunResult& r) {
  return "| " + std::to_string(r.n) + " | " + std::to_string(r.delay_ms) + " | " +
         Fmt("%.1f", r.accept_p50) + " | " + Fmt("%.1f", r.accept_p99) + " | " +
         Fmt("%.0f", r.accept_max) + " | " + Fmt("%.0f", r.min) + " | " +
         std::to_string(r.counts.from_model) + " | " + std::to_string(r.counts.refused) + " | " +
         std::to_string(r.counts.send_errors) + " | " + std::to_string(r.counts.doubled) + " | " +
         std::to_string(r.llm_requests) + " | " + std::to_string(r.llm_connections) + " | " +
         std::to_string(r.fds_max) + " | " + std::to_string(r.receiver_conns_max) + " | " +
         std::to_string(r.listen_overflows) + " / " + std::to_string(r.listen_drops) + " | " +
         Fmt("%.0f", r.n ? 1e6 * r.bench_cpu_s / static_cast<double>(r.n) : 0) + " | " +
         Fmt("%.1f", static_cast<double>(Field(r.smaps, "Anonymous")) / 1024.0) + " | " +
         Fmt("%.1f", Mib(r.end_rss_kib)) + " | " + std::to_string(r.samples) + " |";
}

int Main(int argc, char** argv) {
  KeepHeapsGrown();
  Options o;
  if (!ParseArgs(argc, argv, &o)) {
    Usage();
    return 2;
  }
  signal(SIGINT, OnSignal);
  signal(SIGTERM, OnSignal);
  signal(SIGPIPE, SIG_IGN);
  setenv("PARLEY_BINARY", o.parley.c_str(), 1);  // read by DaemonProcess in the forked child
  testing::TempDir tmp;
  if (tmp.path().empty()) {
    std::fprintf(stderr, "llm_bench: cannot create a temp dir\n");
    return 1;
  }
  rlimit nofile{};
  getrlimit(RLIMIT_NOFILE, &nofile);
  long somaxconn = 0;
  std::ifstream("/proc/sys/net/core/somaxconn") >> somaxconn;

  std::vector<RunResult> results;
  std::vector<std::pair<size_t, int>> plan;
  for (size_t n : o.turns) plan.emplace_back(n, o.llm_delay_ms);
  if (o.long_delay_ms > 0) {
    plan.emplace_back(*std::max_element(o.turns.begin(), o.turns.end()), o.long_delay_ms);
  }
  for (const auto& [n, delay] : plan) {
    if (g_stop) break;
    Run run(o, n, delay, tmp.Sub("n" + std::to_string(n) + "-d" + std::to_string(delay)));
    if (!run.Start()) return 1;
    results.push_back(run.Load());
  }

  std::printf(
      "The real daemon (`parley serve`, runtime.threads = %d, webhook with insecure_no_auth on "
      "127.0.0.1, [llm] enabled with stream = true against the LLM test server, policy rate "
      "limits off, log level warn, knowledge = %s, fresh store in a temp dir for every N). The "
      "LLM test server (tests/fakes/llm, %d io threads) runs in the benchmark process and answers "
      "every request after %d ms (the last row: %d ms) with a short streamed answer citing [1] "
      "(6 SSE events, %d ms apart). N turns, each in its own conversation, are sent as POST "
      "/v1/messages with a "
      "reply_url (202, answer POSTed back) over %d keep-alive connections as fast as the daemon "
      "answers them; the callbacks go to a receiver in the benchmark process. File descriptors: "
      "soft limit %llu, hard %llu (both processes); net.core.somaxconn %ld.\n\n",
      o.daemon_threads, o.knowledge.c_str(), o.llm_threads, o.llm_delay_ms, o.long_delay_ms,
      o.chunk_delay_ms, o.connections, static_cast<unsigned long long>(nofile.rlim_cur),
      static_cast<unsigned long long>(nofile.rlim_max), somaxconn);
  std::printf(
      "| N | model delay ms | 202s | replies delivered | lost | LLM max concurrent | peak reached "
      "at s | intake s | "
      "p50 ms | p90 ms | p99 ms | max ms | VmRSS idle MiB | VmRSS peak MiB | VmHWM MiB | "
      "threads min / max | daemon CPU s | daemon CPU µs/turn | wall s |\n");
  std::printf(
      "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
      "---:|\n");
  for (const RunResult& r : results) std::printf("%s\n", Row(r).c_str());
  std::printf(
      "\nLatency: steady_clock from the POST's first byte written to its callback received "
      "(includes the model's delay). lost = N − turns whose reply arrived before the deadline "
      "(%.0f s from the first POST). LLM max concurrent = the test server's peak of requests "
      "being answered at once (`LlmServer::MaxConcurrent`); peak reached at = seconds from the "
      "first POST until that peak (polled every 5 ms); intake = first POST to last 202. Memory "
      "and threads: /proc/PID/status sampled every 100 ms from the first POST to the last "
      "callback (VmRSS peak = highest sample; VmHWM = the kernel's high-water mark at the end, "
      "start-up included). daemon CPU = utime + stime over the same span; µs/turn = that / N. "
      "wall = first POST to last callback.\n\n",
      o.deadline_seconds);
  std::printf(
      "| N | model delay ms | 202 p50 ms | 202 p99 ms | 202 max ms | min latency ms | answers from "
      "the model | "
      "refused (non-202) | send errors | doubled | LLM requests | LLM connections | daemon fds "
      "max | callback conns max | listen overflows / drops | bench CPU µs/turn | daemon Anonymous "
      "MiB (end) | VmRSS end "
      "MiB | samples |\n");
  std::printf(
      "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
      "---:|---:|\n");
  for (const RunResult& r : results) std::printf("%s\n", DetailRow(r).c_str());
  std::printf(
      "\n202 = POST to its 202 response. answers from the model = callbacks whose text holds the "
      "test server's answer (the rest would be the extractive fallback). LLM connections = TCP "
      "connections the test server accepted from the daemon. daemon fds max = highest count of "
      "/proc/PID/fd over the samples. listen overflows / drops = increase of the kernel's TcpExt "
      "ListenOverflows / ListenDrops (/proc/net/netstat, whole machine) over the run: SYNs or "
      "connections dropped because an accept queue was full. bench CPU = this process (test "
      "server, receiver, sender). "
      "Anonymous = smaps_rollup after the last callback.\n");
  for (const RunResult& r : results) {
    std::printf("\nN = %zu, model delay %d ms: the daemon %s%s%s", r.n, r.delay_ms,
                r.stopped.c_str(), r.stopped.back() == '\n' ? "\n" : " ",
                r.timed_out ? "The run hit its deadline. " : "");
    std::printf("Threads idle: %s; at the highest count: %s.\n", r.idle_thread_names.c_str(),
                r.max_thread_names.c_str());
    if (!r.sample_answer.empty()) std::printf("A reply: `%s`.\n", r.sample_answer.c_str());
    if (!r.sample_other.empty()) {
      std::printf("A reply not from the model: `%s`.\n", r.sample_other.c_str());
    }
    if (!r.sample_error.empty()) std::printf("First send error: %s.\n", r.sample_error.c_str());
    if (!r.llm_metrics.empty()) {
      std::printf("\n```\n%s```\n", r.llm_metrics.c_str());
    }
  }
  bool ok = !g_stop;
  for (const RunResult& r : results) ok = ok && r.counts.delivered == r.n;
  return g_stop ? 130 : (ok ? 0 : 1);
}

}  // namespace
}  // namespace parley::bench

int main(int argc, char** argv) { return parley::bench::Main(argc, argv); }
