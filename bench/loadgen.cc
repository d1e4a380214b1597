// Closed-loop load generator for parley's webhook (POST /v1/messages, synchronous answers).
//
// N keep-alive TCP connections to a loopback address; each sends one request, waits for the whole
// response, records its latency (steady_clock, from the first byte written to the last byte of the
// response parsed) and sends the next, until the run's duration is over. Every request carries a
// fresh signature (X-Parley-Timestamp = current unix second, X-Parley-Signature = v1=HMAC-SHA256 of
// "timestamp.body" keyed with the secret from an environment variable). Each connection rotates
// over a few conversations of its own, so a conversation never has two requests in flight and
// memory grows like a real chat's. Questions come from parley's own sample knowledge base
// (config/knowledge), so the daemon answers them rather than abstaining; each is drawn at random
// (a fixed seed per connection), so a conversation's follow-ups meet every combination of
// earlier questions rather than a short cycle.
//
// Bounded: stops issuing at the end of the duration, gives in-flight requests at most the request
// timeout to finish, then exits. Only loopback hosts are accepted.
//
// Prints a human summary, and a last line "RESULT key=value ..." for scripts (bench/run).

#include <stdlib.h>
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "net/crypto.h"

namespace parley::bench {
namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;

// Questions a user of parley might send; each is answered by config/knowledge.
const char* const kQuestions[] = {
    "How do I sign webhook requests?",
    "what does a 429 from the webhook mean?",
    "how do i make parley forget a conversation",
    "Which file formats can the knowledge base contain?",
    "How do I restrict documents to staff with access tags?",
    "where does parley keep its search index and database?",
    "what happens on SIGTERM, does it finish the turns in flight?",
    "How do I check my configuration file for mistakes?",
    "does parley need an LLM or an API key?",
    "How do I add my own documents to the knowledge base?",
    "what does /readyz return while the daemon is starting?",
    "how can I get answers asynchronously with a reply_url?",
};

struct Options {
  std::string host = "127.0.0.1";
  int port = 0;
  int connections = 1;
  double duration_s = 10;
  double warmup_s = 1;
  int timeout_ms = 5000;
  int conversations_per_connection = 4;
  int threads = 1;
  std::string secret_env = "PARLEY_WEBHOOK_SECRET";
  std::string tag = "bench";
  bool print_sample = false;
};

[[noreturn]] void Die(const std::string& message) {
  std::fprintf(stderr, "loadgen: %s\n", message.c_str());
  std::exit(2);
}

void Usage() {
  std::fprintf(stderr,
               "usage: loadgen --port PORT [--host 127.0.0.1] [--connections N] [--duration S]\n"
               "               [--warmup S] [--timeout-ms MS] [--conversations K] [--threads T]\n"
               "               [--secret-env NAME] [--tag TAG] [--print-sample]\n"
               "The signing secret is read from the environment variable NAME (default\n"
               "PARLEY_WEBHOOK_SECRET); when it is unset or empty, requests are not signed.\n");
}

bool IsLoopback(const std::string& host) {
  boost::system::error_code ec;
  const asio::ip::address address = asio::ip::make_address(host, ec);
  return !ec && address.is_loopback();
}

Options ParseArgs(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        Usage();
        Die(arg + " needs a value");
      }
      return argv[++i];
    };
    if (arg == "--host") {
      o.host = next();
    } else if (arg == "--port") {
      o.port = std::atoi(next().c_str());
    } else if (arg == "--connections") {
      o.connections = std::atoi(next().c_str());
    } else if (arg == "--duration") {
      o.duration_s = std::atof(next().c_str());
    } else if (arg == "--warmup") {
      o.warmup_s = std::atof(next().c_str());
    } else if (arg == "--timeout-ms") {
      o.timeout_ms = std::atoi(next().c_str());
    } else if (arg == "--conversations") {
      o.conversations_per_connection = std::atoi(next().c_str());
    } else if (arg == "--threads") {
      o.threads = std::atoi(next().c_str());
    } else if (arg == "--secret-env") {
      o.secret_env = next();
    } else if (arg == "--tag") {
      o.tag = next();
    } else if (arg == "--print-sample") {
      o.print_sample = true;
    } else if (arg == "-h" || arg == "--help") {
      Usage();
      std::exit(0);
    } else {
      Usage();
      Die("unknown argument " + arg);
    }
  }
  if (o.port <= 0 || o.port > 65535) Die("--port 1..65535 is required");
  if (!IsLoopback(o.host)) Die("--host must be a loopback address (127.0.0.0/8 or ::1)");
  if (o.connections < 1 || o.connections > 10000) Die("--connections must be 1..10000");
  if (o.duration_s <= 0 || o.duration_s > 600) Die("--duration must be in (0, 600] seconds");
  if (o.warmup_s < 0 || o.warmup_s > 60) Die("--warmup must be in [0, 60] seconds");
  if (o.timeout_ms < 1 || o.timeout_ms > 60000) Die("--timeout-ms must be 1..60000");
  if (o.conversations_per_connection < 1) Die("--conversations must be at least 1");
  if (o.threads < 1 || o.threads > 64) Die("--threads must be 1..64");
  return o;
}

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          out += buf;
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

// Shared by all connections; counters are atomics, the rest is read-only during the run.
struct Run {
  Options options;
  std::string secret;
  tcp::endpoint endpoint;
  Clock::time_point measure_from;  // end of warm-up
  Clock::time_point end;           // no request is started after this
  std::atomic<uint64_t> connect_errors{0};
  std::atomic<uint64_t> io_errors{0};  // reset, EOF mid-response, unparseable response
  std::atomic<uint64_t> timeouts{0};
  std::atomic<uint64_t> reconnects{0};  // server said Connection: close
  std::atomic<uint64_t> completed{0};   // every response, warm-up included (for CPU per request)
  std::atomic<bool> sample_printed{false};
  std::mutex status_mu;
  std::map<int, uint64_t> non_200;  // measured window only
};

// One keep-alive connection running its closed loop. All of its handlers run on its strand.
class Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(asio::io_context& io, Run& run, int id)
      : strand_(asio::make_strand(io)),
        socket_(strand_),
        timer_(strand_),
        run_(run),
        id_(id),
        random_(static_cast<std::mt19937::result_type>(id) + 1) {}

  void Start() {
    asio::post(strand_, [self = shared_from_this()] { self->Connect(); });
  }

  const std::vector<float>& latencies_us() const { return latencies_us_; }

 private:
  void Connect() {
    if (Clock::now() >= run_.end) return;
    boost::system::error_code ignored;
    socket_.close(ignored);
    socket_ = tcp::socket(strand_);
    socket_.async_connect(run_.endpoint, [self = shared_from_this()](boost::system::error_code ec) {
      if (ec) {
        self->run_.connect_errors.fetch_add(1);
        // Back off a little so a refused port does not spin the CPU for the whole run.
        self->timer_.expires_after(std::chrono::milliseconds(50));
        self->timer_.async_wait([self](boost::system::error_code) { self->Connect(); });
        return;
      }
      boost::system::error_code opt_ec;
      self->socket_.set_option(tcp::no_delay(true), opt_ec);
      self->SendNext();
    });
  }

  void BuildRequest() {
    const int k = static_cast<int>(sequence_ % static_cast<uint64_t>(
                                                   run_.options.conversations_per_connection));
    const size_t q = static_cast<size_t>(random_() % (sizeof(kQuestions) / sizeof(kQuestions[0])));
    ++sequence_;
    const std::string body = "{\"conversation\":" +
                             JsonString(run_.options.tag + "-c" + std::to_string(id_) + "-" +
                                        std::to_string(k)) +
                             ",\"user\":" +
                             JsonString(run_.options.tag + "-u" + std::to_string(id_)) +
                             ",\"text\":" + JsonString(kQuestions[q]) + "}";
    request_.clear();
    request_ += "POST /v1/messages HTTP/1.1\r\nHost: ";
    request_ += run_.options.host;
    request_ += "\r\nContent-Type: application/json\r\nContent-Length: ";
    request_ += std::to_string(body.size());
    request_ += "\r\n";
    if (!run_.secret.empty()) {
      const std::string timestamp = std::to_string(static_cast<long long>(std::time(nullptr)));
      request_ += "X-Parley-Timestamp: " + timestamp + "\r\n";
      request_ += "X-Parley-Signature: v1=" +
                  net::HmacSha256Hex(run_.secret, timestamp + "." + body) + "\r\n";
    }
    request_ += "\r\n";
    request_ += body;
  }

  void SendNext() {
    if (Clock::now() >= run_.end) {
      boost::system::error_code ignored;
      socket_.close(ignored);
      return;
    }
    BuildRequest();
    const uint64_t this_request = ++request_id_;
    timer_.expires_after(std::chrono::milliseconds(run_.options.timeout_ms));
    timer_.async_wait([self = shared_from_this(), this_request](boost::system::error_code ec) {
      if (ec || self->request_id_ != this_request || self->done_id_ == this_request) return;
      self->timed_out_ = true;
      boost::system::error_code ignored;
      self->socket_.close(ignored);
    });
    timed_out_ = false;
    started_ = Clock::now();
    asio::async_write(socket_, asio::buffer(request_),
                      [self = shared_from_this()](boost::system::error_code ec, size_t) {
                        if (ec) return self->Fail();
                        self->ReadMore();
                      });
  }

  void ReadMore() {
    const size_t old_size = in_.size();
    in_.resize(old_size + 16384);
    socket_.async_read_some(
        asio::buffer(&in_[old_size], 16384),
        [self = shared_from_this(), old_size](boost::system::error_code ec, size_t n) {
          self->in_.resize(old_size + n);
          if (ec) return self->Fail();
          self->Parse();
        });
  }

  // Parses a response from the front of in_: status line, headers, Content-Length body.
  void Parse() {
    const size_t header_end = in_.find("\r\n\r\n");
    if (header_end == std::string::npos) {
      if (in_.size() > 65536) return Fail();
      return ReadMore();
    }
    int status = 0;
    if (std::sscanf(in_.c_str(), "HTTP/1.%*d %d", &status) != 1) return Fail();
    size_t content_length = 0;
    bool have_length = false;
    bool close_after = false;
    size_t line = in_.find("\r\n") + 2;
    while (line < header_end) {
      size_t eol = in_.find("\r\n", line);
      const std::string header = in_.substr(line, eol - line);
      const size_t colon = header.find(':');
      if (colon != std::string::npos) {
        std::string name = header.substr(0, colon);
        std::transform(name.begin(), name.end(), name.begin(),
                       [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
        size_t v = colon + 1;
        while (v < header.size() && header[v] == ' ') ++v;
        std::string value = header.substr(v);
        std::transform(value.begin(), value.end(), value.begin(),
                       [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
        if (name == "content-length") {
          content_length = static_cast<size_t>(std::strtoull(value.c_str(), nullptr, 10));
          have_length = true;
        } else if (name == "transfer-encoding" && value != "identity") {
          return Fail();  // the daemon answers with Content-Length; chunked is unexpected
        } else if (name == "connection" && value.find("close") != std::string::npos) {
          close_after = true;
        }
      }
      line = eol + 2;
    }
    if (!have_length) return Fail();
    const size_t total = header_end + 4 + content_length;
    if (in_.size() < total) return ReadMore();

    const auto now = Clock::now();
    done_id_ = request_id_;
    timer_.cancel();
    run_.completed.fetch_add(1);
    if (run_.options.print_sample && status == 200 && !run_.sample_printed.exchange(true)) {
      std::fprintf(stderr, "loadgen: sample response: %s\n",
                   in_.substr(header_end + 4, content_length).c_str());
    }
    if (started_ >= run_.measure_from && now <= run_.end) {
      latencies_us_.push_back(
          static_cast<float>(std::chrono::duration<double, std::micro>(now - started_).count()));
      if (status != 200) {
        std::lock_guard<std::mutex> lock(run_.status_mu);
        ++run_.non_200[status];
      }
    }
    in_.erase(0, total);
    if (close_after) {
      run_.reconnects.fetch_add(1);
      in_.clear();
      return Connect();
    }
    SendNext();
  }

  void Fail() {
    done_id_ = request_id_;
    timer_.cancel();
    if (timed_out_) {
      run_.timeouts.fetch_add(1);
    } else if (Clock::now() < run_.end) {
      run_.io_errors.fetch_add(1);
    }
    in_.clear();
    Connect();
  }

  asio::strand<asio::io_context::executor_type> strand_;
  tcp::socket socket_;
  asio::steady_timer timer_;
  Run& run_;
  const int id_;
  uint64_t sequence_ = 0;
  std::mt19937 random_;
  uint64_t request_id_ = 0;
  uint64_t done_id_ = 0;
  bool timed_out_ = false;
  Clock::time_point started_;
  std::string request_;
  std::string in_;
  std::vector<float> latencies_us_;
};

double CpuSeconds() {
  struct rusage usage;
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) +
         static_cast<double>(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6;
}

int Main(int argc, char** argv) {
  Run run;
  run.options = ParseArgs(argc, argv);
  const Options& o = run.options;
  const char* secret = std::getenv(o.secret_env.c_str());
  run.secret = secret != nullptr ? secret : "";
  run.endpoint = tcp::endpoint(asio::ip::make_address(o.host), static_cast<uint16_t>(o.port));

  asio::io_context io(o.threads);
  std::vector<std::shared_ptr<Connection>> connections;
  connections.reserve(static_cast<size_t>(o.connections));
  for (int i = 0; i < o.connections; ++i) {
    connections.push_back(std::make_shared<Connection>(io, run, i));
  }
  const auto start = Clock::now();
  run.measure_from = start + std::chrono::duration_cast<Clock::duration>(
                                 std::chrono::duration<double>(o.warmup_s));
  run.end = run.measure_from + std::chrono::duration_cast<Clock::duration>(
                                   std::chrono::duration<double>(o.duration_s));
  const double cpu_start = CpuSeconds();
  for (auto& c : connections) c->Start();

  // Hard stop: whatever is still in flight a request timeout after the end is abandoned.
  asio::steady_timer hard_stop(io);
  hard_stop.expires_at(run.end + std::chrono::milliseconds(o.timeout_ms + 500));
  hard_stop.async_wait([&io](boost::system::error_code ec) {
    if (!ec) io.stop();
  });
  auto work = asio::make_work_guard(io);
  // The work guard keeps run() going until the hard stop or until every connection is done; the
  // watcher below releases it once all loops have ended.
  asio::steady_timer watcher(io);
  std::function<void()> watch = [&] {
    watcher.expires_after(std::chrono::milliseconds(20));
    watcher.async_wait([&](boost::system::error_code ec) {
      if (ec) return;
      bool all_done = Clock::now() >= run.end;
      if (all_done) {
        for (auto& c : connections) {
          if (c.use_count() > 1) {  // a handler still holds it: a request is in flight
            all_done = false;
            break;
          }
        }
      }
      if (all_done) {
        hard_stop.cancel();
        work.reset();
        return;
      }
      watch();
    });
  };
  watch();

  std::vector<std::thread> threads;
  for (int t = 1; t < o.threads; ++t) threads.emplace_back([&io] { io.run(); });
  io.run();
  for (std::thread& t : threads) t.join();
  const double cpu = CpuSeconds() - cpu_start;
  const double window =
      std::chrono::duration<double>(run.end - run.measure_from).count();

  std::vector<float> all;
  for (auto& c : connections) {
    all.insert(all.end(), c->latencies_us().begin(), c->latencies_us().end());
  }
  std::sort(all.begin(), all.end());
  auto pct = [&](double p) -> double {
    if (all.empty()) return 0;
    size_t i = std::min(all.size() - 1, static_cast<size_t>(p / 100.0 * all.size()));
    return all[i] / 1000.0;
  };
  uint64_t non_200 = 0;
  std::string statuses;
  for (const auto& [status, count] : run.non_200) {
    non_200 += count;
    statuses += (statuses.empty() ? "" : ",") + std::to_string(status) + ":" +
                std::to_string(count);
  }
  const uint64_t errors = run.connect_errors + run.io_errors + run.timeouts;
  const double rps = static_cast<double>(all.size()) / window;
  std::printf("connections %d, %.1f s measured after %.1f s warm-up, %s\n", o.connections, window,
              o.warmup_s, run.secret.empty() ? "unsigned" : "signed (HMAC per request)");
  std::printf("requests    %zu  (%.0f/s)\n", all.size(), rps);
  std::printf("latency ms  p50 %.3f  p90 %.3f  p99 %.3f  max %.3f\n", pct(50), pct(90), pct(99),
              all.empty() ? 0.0 : all.back() / 1000.0);
  std::printf("non-200     %llu %s\n", static_cast<unsigned long long>(non_200),
              statuses.empty() ? "" : ("(" + statuses + ")").c_str());
  std::printf("errors      %llu (connect %llu, io %llu, timeout %llu); server closes %llu\n",
              static_cast<unsigned long long>(errors),
              static_cast<unsigned long long>(run.connect_errors.load()),
              static_cast<unsigned long long>(run.io_errors.load()),
              static_cast<unsigned long long>(run.timeouts.load()),
              static_cast<unsigned long long>(run.reconnects.load()));
  std::printf("loadgen cpu %.2f s (%.0f%% of one core)\n", cpu,
              100.0 * cpu / std::max(1e-9, window + o.warmup_s));
  std::printf(
      "RESULT connections=%d requests=%zu seconds=%.2f rps=%.0f p50_ms=%.3f p90_ms=%.3f "
      "p99_ms=%.3f max_ms=%.3f non200=%llu statuses=%s errors=%llu loadgen_cpu_s=%.2f "
      "completed_all=%llu\n",
      o.connections, all.size(), window, rps, pct(50), pct(90), pct(99),
      all.empty() ? 0.0 : all.back() / 1000.0, static_cast<unsigned long long>(non_200),
      statuses.empty() ? "-" : statuses.c_str(), static_cast<unsigned long long>(errors), cpu,
      static_cast<unsigned long long>(run.completed.load()));
  return all.empty() ? 1 : 0;
}

}  // namespace
}  // namespace parley::bench

int main(int argc, char** argv) { return parley::bench::Main(argc, argv); }
