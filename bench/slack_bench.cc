// Slack benchmark: the real `parley serve` against the in-process Slack test server
// (tests/fakes/slack), open loop.
//
// The program starts the Slack test server (Web API over http://127.0.0.1, Socket Mode over
// ws://127.0.0.1, one io thread, no rate limits, ack deadline 3 s), writes a throwaway config and
// store into a temp dir (knowledge = the shipped config/knowledge, webhook off, Slack on with the
// tokens in environment variables set for the child only, post_rate_per_channel = 0, policy rate
// limits off, log level warn), starts the daemon, waits for /readyz and its Socket Mode
// connections, then injects app_mention events at fixed rates (open loop: event i is due at
// t0 + i / rate whether or not earlier ones were answered). Every event is a question about
// parley; most start a new thread in one of many channels, a share are follow-ups in a thread the
// bot already answered (so conversation memory is read). For every event it measures the latency
// from just before SendEvent to the test server recording the chat.postMessage reply in that
// thread (the server's on_message observer; both sides use steady_clock in this process), and
// after each step it waits a grace period and checks that every event got exactly one reply.
//
// Reported per step: offered and achieved rate, p50/p90/p99/max latency, lost and doubled
// events, the daemon's CPU (utime + stime from /proc/PID/stat) per event and VmRSS / VmHWM
// (/proc/PID/status), this process's CPU per event (the test server's io thread plus the
// injecting thread) and the injecting thread's alone, and the daemon's per-stage turn latencies
// from GET /metrics. Markdown on stdout, progress on stderr.
//
// Bounded: every step has a fixed length and a grace period; the daemon it started is sent
// SIGTERM at the end (SIGKILL if it does not stop); the temp dir is removed. Loopback only.

#include <signal.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "tests/fakes/slack/slack_server.h"
#include "bench/bench_util.h"
#include "tests/support/daemon_process.h"
#include "tests/support/temp_dir.h"

#ifndef PARLEY_BENCH_SOURCE_DIR
#define PARLEY_BENCH_SOURCE_DIR "."
#endif

namespace parley::bench {
namespace {

using Clock = std::chrono::steady_clock;
using Json = nlohmann::json;
using testing::DaemonProcess;
using testing::SlackPostedMessage;
using testing::SlackServer;
using testing::SlackServerOptions;

std::atomic<bool> g_stop{false};

// Longest wait for an overloaded step's backlog to drain before the next step.
constexpr double kSettleMaxSeconds = 120;

void OnSignal(int) { g_stop = true; }

// Questions people ask about parley; config/knowledge answers each.
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
    "how do I back up parley's data?",
    "can I run two daemons on the same store?",
    "does parley remember earlier messages in a thread?",
    "how do I rotate the log file?",
    "how fast is parley?",
    "how do I run the tests?",
    "where do secrets go in the config, can I use environment variables?",
    "why did parley say it has no answer?",
};
constexpr size_t kQuestionCount = sizeof(kQuestions) / sizeof(kQuestions[0]);

struct Options {
  std::string parley;
  std::string knowledge = std::string(PARLEY_BENCH_SOURCE_DIR) + "/config/knowledge";
  std::vector<double> rates = {250, 500, 1000, 2000, 3000};
  double step_seconds = 10;
  double main_rate = 2000;
  double main_seconds = 30;
  double reaction_rate = 2000;  // 0 = no extra step with working_signal = "reaction"
  double reaction_seconds = 10;
  double grace_seconds = 10;
  double warmup_seconds = 2;  // at 200 events/s, before every run
  int channels = 200;
  int users = 500;
  double followup_fraction = 0.25;
  int connections = 2;
  int daemon_threads = 0;
  bool timeline = false;    // print each second's p50/p99/max of the main step to stderr
  int sync_interval_us = 0;  // store.sync_interval_us of the daemon
  int cache_mb = -1;         // knowledge.cache_mb of the daemon; -1 = its default
  int memory_cache_mb = -1;  // store.memory_cache_mb of the daemon; -1 = its default
  std::string metrics_out;  // when set, the daemon's GET /metrics after every step is appended
};

void Usage() {
  std::fprintf(stderr,
               "usage: slack_bench --parley PATH [options]\n"
               "  --knowledge DIR          knowledge source (default: config/knowledge)\n"
               "  --rates R1,R2,...        events/s per step (default 250,500,1000,2000,3000)\n"
               "  --step-seconds S         seconds per step (default 10)\n"
               "  --main-rate R            the step that runs --main-seconds (default 2000)\n"
               "  --main-seconds S         its length (default 30)\n"
               "  --reaction-rate R        extra step with working_signal=reaction on a fresh\n"
               "                           daemon and store (default 2000; 0 = skip)\n"
               "  --reaction-seconds S     its length (default 10)\n"
               "  --grace-seconds S        wait for late replies after each step (default 10)\n"
               "  --warmup-seconds S       warm-up at 200 events/s before each run (default 2)\n"
               "  --channels N             channels events are spread over (default 200)\n"
               "  --users N                distinct users (default 500)\n"
               "  --followups F            share of events that follow up in an answered thread\n"
               "                           (default 0.25)\n"
               "  --connections N          slack.connections of the daemon (default 2)\n"
               "  --daemon-threads N       runtime.threads of the daemon (default 0 = per core)\n"
               "  --sync-interval-us N     store.sync_interval_us of the daemon (default 0)\n"
               "  --cache-mb N             knowledge.cache_mb of the daemon (default: its own)\n"
               "  --memory-cache-mb N      store.memory_cache_mb of the daemon (default: its own)\n"
               "  --metrics-out FILE       append the daemon's GET /metrics after every step\n"
               "  --timeline               print every second's latency percentiles to stderr\n");
}

bool ParseArgs(int argc, char** argv, Options* o) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "slack_bench: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--parley") {
      o->parley = next();
    } else if (a == "--knowledge") {
      o->knowledge = next();
    } else if (a == "--rates") {
      o->rates.clear();
      std::stringstream ss(next());
      std::string part;
      while (std::getline(ss, part, ',')) {
        if (!part.empty()) o->rates.push_back(std::atof(part.c_str()));
      }
    } else if (a == "--step-seconds") {
      o->step_seconds = std::atof(next().c_str());
    } else if (a == "--main-rate") {
      o->main_rate = std::atof(next().c_str());
    } else if (a == "--main-seconds") {
      o->main_seconds = std::atof(next().c_str());
    } else if (a == "--reaction-rate") {
      o->reaction_rate = std::atof(next().c_str());
    } else if (a == "--reaction-seconds") {
      o->reaction_seconds = std::atof(next().c_str());
    } else if (a == "--grace-seconds") {
      o->grace_seconds = std::atof(next().c_str());
    } else if (a == "--warmup-seconds") {
      o->warmup_seconds = std::atof(next().c_str());
    } else if (a == "--channels") {
      o->channels = std::atoi(next().c_str());
    } else if (a == "--users") {
      o->users = std::atoi(next().c_str());
    } else if (a == "--followups") {
      o->followup_fraction = std::atof(next().c_str());
    } else if (a == "--connections") {
      o->connections = std::atoi(next().c_str());
    } else if (a == "--daemon-threads") {
      o->daemon_threads = std::atoi(next().c_str());
    } else if (a == "--timeline") {
      o->timeline = true;
    } else if (a == "--sync-interval-us") {
      o->sync_interval_us = std::atoi(next().c_str());
    } else if (a == "--cache-mb") {
      o->cache_mb = std::atoi(next().c_str());
    } else if (a == "--memory-cache-mb") {
      o->memory_cache_mb = std::atoi(next().c_str());
    } else if (a == "--metrics-out") {
      o->metrics_out = next();
    } else if (a == "--help" || a == "-h") {
      Usage();
      std::exit(0);
    } else {
      std::fprintf(stderr, "slack_bench: unknown argument %s\n", a.c_str());
      return false;
    }
  }
  if (o->parley.empty()) {
    std::fprintf(stderr, "slack_bench: --parley PATH is required\n");
    return false;
  }
  if (o->rates.empty() || o->channels < 1 || o->users < 1 || o->step_seconds <= 0 ||
      o->main_seconds <= 0 || o->grace_seconds < 0 || o->connections < 1) {
    std::fprintf(stderr, "slack_bench: bad option value\n");
    return false;
  }
  for (double r : o->rates) {
    if (r <= 0) {
      std::fprintf(stderr, "slack_bench: rates must be positive\n");
      return false;
    }
  }
  return true;
}

// ---- the bookkeeping of one daemon run ----

struct EventRecord {
  int64_t send_ns = 0;
  int64_t reply_ns = 0;  // first reply attributed to it; 0 = none yet
};

struct ThreadState {
  std::string channel;
  std::string root_ts;
  int64_t outstanding = -1;  // index of the event waiting for its reply, -1 = none
  int events = 0;
  int replies = 0;  // part-0 chat.postMessage calls in this thread
};

// Shared between the injecting thread and the test server's io thread (the observer).
class Ledger {
 public:
  // On the test server's io thread.
  void OnMessage(const SlackPostedMessage& m) {
    int part = 0;
    if (m.metadata.is_object()) {
      auto p = m.metadata.find("event_payload");
      if (p != m.metadata.end() && p->is_object()) part = p->value("part", 0);
    }
    const std::string key = m.channel + "/" + m.thread_ts;
    std::lock_guard<std::mutex> lock(mu_);
    if (m.method != "chat.postMessage") {
      ++other_messages_[m.method];
      return;
    }
    if (part > 0) {
      ++extra_parts_;
      return;
    }
    auto it = threads_.find(key);
    if (it == threads_.end()) {
      ++unknown_replies_;
      return;
    }
    ThreadState& t = it->second;
    ++t.replies;
    if (t.outstanding >= 0) {
      events_[static_cast<size_t>(t.outstanding)].reply_ns = m.received_ns;
      t.outstanding = -1;
      idle_threads_.push_back(key);
    }
  }

  // Registers event `index` (== events so far) in a thread; returns the thread's key. A follow-up
  // goes to the oldest answered thread with nothing in flight, if any.
  struct Planned {
    std::string channel;
    std::string root_ts;
    std::string ts;
  };
  Planned Plan(bool followup, const std::vector<std::string>& channels) {
    std::lock_guard<std::mutex> lock(mu_);
    Planned p;
    p.ts = NextTs();
    std::string key;
    if (followup && !idle_threads_.empty()) {
      key = idle_threads_.front();
      idle_threads_.pop_front();
    } else {
      p.channel = channels[next_thread_++ % channels.size()];
      key = p.channel + "/" + p.ts;
      threads_[key] = ThreadState{p.channel, p.ts, -1, 0, 0};
    }
    ThreadState& t = threads_[key];
    p.channel = t.channel;
    p.root_ts = t.root_ts;
    t.outstanding = static_cast<int64_t>(events_.size());
    ++t.events;
    events_.push_back(EventRecord{NowNs(), 0});
    return p;
  }

  size_t EventCount() const {
    std::lock_guard<std::mutex> lock(mu_);
    return events_.size();
  }

  // Events [from, to) still without a reply.
  size_t Unanswered(size_t from, size_t to) const {
    std::lock_guard<std::mutex> lock(mu_);
    size_t n = 0;
    for (size_t i = from; i < to && i < events_.size(); ++i) n += events_[i].reply_ns == 0;
    return n;
  }

  std::vector<EventRecord> Events(size_t from, size_t to) const {
    std::lock_guard<std::mutex> lock(mu_);
    to = std::min(to, events_.size());
    return std::vector<EventRecord>(events_.begin() + static_cast<long>(from),
                                    events_.begin() + static_cast<long>(to));
  }

  // Sum over threads of replies beyond one per event (exact at quiescence).
  size_t Doubled() const {
    std::lock_guard<std::mutex> lock(mu_);
    size_t n = 0;
    for (const auto& [k, t] : threads_) n += t.replies > t.events ? t.replies - t.events : 0;
    return n;
  }

  struct Extras {
    size_t extra_parts = 0;
    size_t unknown_replies = 0;
    std::map<std::string, size_t> other_messages;
    size_t threads = 0;
    size_t events = 0;
    size_t unanswered = 0;
    size_t doubled = 0;
  };
  Extras GetExtras() const {
    const size_t doubled = Doubled();
    std::lock_guard<std::mutex> lock(mu_);
    size_t unanswered = 0;
    for (const EventRecord& e : events_) unanswered += e.reply_ns == 0;
    return Extras{extra_parts_,   unknown_replies_, other_messages_, threads_.size(),
                  events_.size(), unanswered,       doubled};
  }

 private:
  // A Slack ts, unique per event.
  std::string NextTs() {
    const uint64_t n = ++ts_counter_;
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%llu.%06llu",
                  static_cast<unsigned long long>(1700000000ULL + n / 1000000ULL),
                  static_cast<unsigned long long>(n % 1000000ULL));
    return buf;
  }

  mutable std::mutex mu_;
  std::vector<EventRecord> events_;
  std::unordered_map<std::string, ThreadState> threads_;
  std::deque<std::string> idle_threads_;
  uint64_t ts_counter_ = 0;
  uint64_t next_thread_ = 0;
  size_t extra_parts_ = 0;
  size_t unknown_replies_ = 0;
  std::map<std::string, size_t> other_messages_;
};

struct StepResult {
  std::string name;
  std::string signal;
  double rate = 0;
  double seconds = 0;
  size_t events = 0;
  double achieved_rps = 0;   // replies received within the sending window / its length
  double completed_rps = 0;  // events answered / (last reply - first send)
  double p50 = 0, p90 = 0, p99 = 0, max = 0;  // ms
  size_t lost = 0;
  size_t doubled = 0;  // cumulative over the run, reported as the increase in this step
  double drain_ms = 0;
  double max_send_lag_ms = 0;
  size_t late_sends = 0;  // sent more than 1 ms after their due time
  double send_event_us = 0;
  double daemon_cpu_pct = 0;
  double daemon_cpu_us = 0;
  double bench_cpu_us = 0;
  double injector_cpu_us = 0;
  double rss_mib = 0, hwm_mib = 0;
  std::map<std::string, double> stage_mean_ms;
  uint64_t redeliveries = 0;
  size_t answered_after_grace = 0;  // lost events answered while settling before the next step
  double settle_s = 0;              // time spent settling after the grace period
};

class Run {
 public:
  Run(const Options& o, std::string signal, std::string dir)
      : o_(o), signal_(std::move(signal)), dir_(std::move(dir)) {
    SlackServerOptions so;
    so.ack_deadline_ms = 3000;
    so.echo_bot_posts = false;
    so.on_message = [this](const SlackPostedMessage& m) { ledger_.OnMessage(m); };
    so.keep_history = false;  // the ledger sees every message; counters cover the rest
    slack_ = std::make_unique<SlackServer>(so);
    for (int i = 0; i < o_.channels; ++i) {
      char buf[16];
      std::snprintf(buf, sizeof(buf), "C0B%05d", i);
      channels_.push_back(buf);
      slack_->AddChannel(buf);
    }
  }

  ~Run() {
    if (daemon_) daemon_->Terminate(15'000);
  }

  bool Start() {
    std::filesystem::create_directories(dir_);
    std::ofstream(dir_ + "/parley.toml") << ConfigText();
    daemon_ = std::make_unique<DaemonProcess>(
        dir_ + "/parley.toml", dir_ + "/port.json", dir_ + "/daemon.out",
        std::map<std::string, std::string>{{"SLACK_APP_TOKEN", slack_->options().app_token},
                                           {"SLACK_BOT_TOKEN", slack_->options().bot_token}});
    if (!daemon_->Start(60'000)) {
      std::fprintf(stderr, "slack_bench: the daemon did not become ready:\n%s\n",
                   daemon_->Log().c_str());
      return false;
    }
    pid_ = FindChildPid();
    if (pid_ <= 0) {
      std::fprintf(stderr, "slack_bench: cannot find the daemon's pid\n");
      return false;
    }
    if (!slack_->WaitForOpenConnections(static_cast<size_t>(o_.connections), 30'000)) {
      std::fprintf(stderr, "slack_bench: the daemon opened no Socket Mode connection\n");
      return false;
    }
    std::this_thread::sleep_for(std::chrono::seconds(1));  // settle: idle means idle
    idle_rss_mib_ = static_cast<double>(StatusKib(pid_, "VmRSS")) / 1024.0;
    idle_hwm_mib_ = static_cast<double>(StatusKib(pid_, "VmHWM")) / 1024.0;
    std::fprintf(stderr, "slack_bench: daemon pid %d ready (%s), idle VmRSS %.1f MiB\n",
                 static_cast<int>(pid_), signal_.c_str(), idle_rss_mib_);
    return true;
  }

  // One open-loop step at `rate` events/s for `seconds`.
  // Latency by the second the event was sent in: where in a step the slow replies cluster.
  static void PrintTimeline(const std::vector<EventRecord>& ev, int64_t t0) {
    std::vector<std::vector<double>> by_second;
    for (const EventRecord& e : ev) {
      const auto sec = static_cast<size_t>(std::max<int64_t>(0, e.send_ns - t0) / 1'000'000'000);
      if (by_second.size() <= sec) by_second.resize(sec + 1);
      by_second[sec].push_back(e.reply_ns == 0 ? 1e9 : static_cast<double>(e.reply_ns - e.send_ns) / 1e6);
    }
    for (size_t s = 0; s < by_second.size(); ++s) {
      std::vector<double>& l = by_second[s];
      std::sort(l.begin(), l.end());
      std::fprintf(stderr, "slack_bench: second %zu: %zu events, p50 %.2f p99 %.2f max %.2f ms\n", s,
                   l.size(), Percentile(l, 50), Percentile(l, 99), l.empty() ? 0.0 : l.back());
    }
  }

  StepResult Step(const std::string& name, double rate, double seconds, bool quiet = false) {
    StepResult r;
    r.name = name;
    r.signal = signal_;
    r.rate = rate;
    r.seconds = seconds;
    const size_t n = static_cast<size_t>(std::llround(rate * seconds));
    const size_t first = ledger_.EventCount();
    const StageTotals stages0 = Stages();
    const uint64_t redeliveries0 = slack_->Counters().redeliveries;
    const size_t doubled0 = ledger_.Doubled();
    const double dcpu0 = ProcCpuSeconds(pid_);
    const double bcpu0 = RusageSeconds(RUSAGE_SELF);
    const double icpu0 = RusageSeconds(RUSAGE_THREAD);
    std::mt19937 rng(static_cast<unsigned>(first + 1));
    std::uniform_real_distribution<double> uni(0.0, 1.0);
    if (!quiet) {
      std::fprintf(stderr, "slack_bench: %s: %.0f events/s for %.0f s (%zu events)\n", name.c_str(),
                   rate, seconds, n);
    }

    const int64_t t0 = NowNs() + 20'000'000;
    const double interval_ns = 1e9 / rate;
    int64_t send_total_ns = 0;
    int64_t max_lag = 0;
    size_t late = 0;
    size_t sent = 0;
    for (size_t i = 0; i < n && !g_stop; ++i) {
      const int64_t due = t0 + static_cast<int64_t>(static_cast<double>(i) * interval_ns);
      int64_t now = NowNs();
      if (now < due) {
        std::this_thread::sleep_for(std::chrono::nanoseconds(due - now));
        now = NowNs();
      }
      const int64_t lag = now - due;
      max_lag = std::max(max_lag, lag);
      late += lag > 1'000'000;
      const bool followup = uni(rng) < o_.followup_fraction;
      const Ledger::Planned p = ledger_.Plan(followup, channels_);
      const std::string user = "U0USER" + std::to_string(rng() % static_cast<unsigned>(o_.users));
      Json e{{"type", "app_mention"},
             {"channel", p.channel},
             {"user", user},
             {"text", std::string("<@U0BOT> ") + kQuestions[rng() % kQuestionCount]},
             {"ts", p.ts},
             {"event_ts", p.ts},
             {"team", "T0TEAM"}};
      if (p.root_ts != p.ts) e["thread_ts"] = p.root_ts;
      const int64_t s0 = NowNs();
      slack_->SendEvent(e);
      send_total_ns += NowNs() - s0;
      ++sent;
    }
    const int64_t t_end = NowNs();
    const double icpu1 = RusageSeconds(RUSAGE_THREAD);
    const size_t last = first + sent;

    // Grace: wait (polling; the daemon is another process) for the replies still missing.
    const int64_t grace_deadline = t_end + static_cast<int64_t>(o_.grace_seconds * 1e9);
    while (ledger_.Unanswered(first, last) > 0 && NowNs() < grace_deadline && !g_stop) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    const double dcpu1 = ProcCpuSeconds(pid_);
    const double bcpu1 = RusageSeconds(RUSAGE_SELF);
    const int64_t t_done = NowNs();

    const std::vector<EventRecord> ev = ledger_.Events(first, last);
    std::vector<double> lat;
    lat.reserve(ev.size());
    size_t in_window = 0;
    int64_t last_reply = t0;
    for (const EventRecord& e : ev) {
      if (e.reply_ns == 0) {
        ++r.lost;
        continue;
      }
      lat.push_back(static_cast<double>(e.reply_ns - e.send_ns) / 1e6);
      in_window += e.reply_ns <= t_end;
      last_reply = std::max(last_reply, e.reply_ns);
    }
    if (o_.timeline && !quiet) PrintTimeline(ev, t0);
    std::sort(lat.begin(), lat.end());
    r.events = ev.size();
    const double window_s = static_cast<double>(t_end - t0) / 1e9;
    r.achieved_rps = window_s > 0 ? static_cast<double>(in_window) / window_s : 0;
    r.completed_rps = last_reply > t0 ? static_cast<double>(lat.size()) /
                                            (static_cast<double>(last_reply - t0) / 1e9)
                                      : 0;
    r.p50 = Percentile(lat, 50);
    r.p90 = Percentile(lat, 90);
    r.p99 = Percentile(lat, 99);
    r.max = lat.empty() ? 0 : lat.back();
    r.drain_ms = static_cast<double>(std::max<int64_t>(0, last_reply - t_end)) / 1e6;
    r.max_send_lag_ms = static_cast<double>(max_lag) / 1e6;
    r.late_sends = late;
    r.send_event_us =
        sent ? static_cast<double>(send_total_ns) / 1e3 / static_cast<double>(sent) : 0;
    const double per = sent ? 1e6 / static_cast<double>(sent) : 0;
    r.daemon_cpu_us = (dcpu1 - dcpu0) * per;
    r.daemon_cpu_pct = 100.0 * (dcpu1 - dcpu0) / (static_cast<double>(t_done - t0) / 1e9);
    r.bench_cpu_us = (bcpu1 - bcpu0) * per;
    r.injector_cpu_us = (icpu1 - icpu0) * per;
    r.rss_mib = static_cast<double>(StatusKib(pid_, "VmRSS")) / 1024.0;
    r.hwm_mib = static_cast<double>(StatusKib(pid_, "VmHWM")) / 1024.0;
    // Replies beyond one per event can only be judged once nothing is in flight.
    r.doubled = ledger_.Doubled() - doubled0;
    r.redeliveries = slack_->Counters().redeliveries - redeliveries0;
    const StageTotals stages1 = Stages();
    DumpMetrics(name);
    for (const auto& [stage, count] : stages1.count) {
      const double dc = count - (stages0.count.count(stage) ? stages0.count.at(stage) : 0);
      const double ds =
          stages1.sum.count(stage)
              ? stages1.sum.at(stage) - (stages0.sum.count(stage) ? stages0.sum.at(stage) : 0)
              : 0;
      if (dc > 0) r.stage_mean_ms[stage] = 1e3 * ds / dc;
    }
    // Settle: an overloaded step leaves a backlog (and redeliveries) behind; let it drain, up to
    // settle_max_s, so the next step starts from a quiet daemon. Replies arriving now stay lost
    // for this step's figures but are counted in answered_after_grace.
    if (r.lost > 0 && !g_stop) {
      const int64_t s0 = NowNs();
      const int64_t settle_deadline = s0 + static_cast<int64_t>(kSettleMaxSeconds * 1e9);
      size_t left = ledger_.Unanswered(first, last);
      int64_t last_progress = s0;
      while (left > 0 && NowNs() < settle_deadline && !g_stop &&
             NowNs() - last_progress < 5'000'000'000LL) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        const size_t now_left = ledger_.Unanswered(first, last);
        if (now_left < left) last_progress = NowNs();
        left = now_left;
      }
      r.answered_after_grace = r.lost - left;
      r.settle_s = static_cast<double>(NowNs() - s0) / 1e9;
      std::this_thread::sleep_for(std::chrono::seconds(2));  // redeliveries still queued
    }
    if (!quiet) {
      std::fprintf(stderr,
                   "slack_bench: %s: %.0f replies/s, p50 %.2f p99 %.2f max %.2f ms, lost %zu, "
                   "doubled %zu, daemon %.0f us/event, RSS %.1f MiB\n",
                   name.c_str(), r.achieved_rps, r.p50, r.p99, r.max, r.lost, r.doubled,
                   r.daemon_cpu_us, r.rss_mib);
    }
    return r;
  }

  StageTotals Stages() {
    auto m = daemon_->Get("/metrics");
    return m.ok() ? ParseStages(m->body) : StageTotals{};
  }

  void DumpMetrics(const std::string& step) {
    if (o_.metrics_out.empty()) return;
    auto m = daemon_->Get("/metrics");
    std::ofstream(o_.metrics_out, std::ios::app)
        << "# ---- slack_bench: after step " << step << " (" << signal_ << ")\n"
        << (m.ok() ? m->body : std::string("# GET /metrics failed\n"));
  }

  // SIGTERM; returns a sentence about how it went.
  std::string Stop() {
    const auto t = Clock::now();
    const int code = daemon_->Terminate(15'000);
    const double s = std::chrono::duration<double>(Clock::now() - t).count();
    std::string log;
    std::ifstream in(dir_ + "/parley.log");
    size_t lines = 0;
    std::string line;
    while (std::getline(in, line)) {
      if (lines < 5) log += "    " + line.substr(0, 200) + "\n";
      ++lines;
    }
    daemon_.reset();
    return "the daemon stopped on SIGTERM in " + Fmt("%.1f", s) + " s with exit status " +
           std::to_string(code) + "; it logged " + std::to_string(lines) +
           " line(s) at warn or above" + (lines ? ", the first:\n\n" + log : ".");
  }

  double idle_rss_mib() const { return idle_rss_mib_; }
  double idle_hwm_mib() const { return idle_hwm_mib_; }
  Ledger& ledger() { return ledger_; }
  SlackServer& slack() { return *slack_; }

 private:
  std::string ConfigText() const {
    std::string s;
    s += "# Written by slack_bench for one run; deleted afterwards.\n";
    s += "[runtime]\nthreads = " + std::to_string(o_.daemon_threads) + "\n\n";
    s += "[log]\nlevel = \"warn\"\nfile = \"" + dir_ + "/parley.log\"\n\n";
    s += "[store]\npath = \"" + dir_ + "/store\"\nsync_interval_us = " +
         std::to_string(o_.sync_interval_us) + "\n";
    if (o_.memory_cache_mb >= 0) {
      s += "memory_cache_mb = " + std::to_string(o_.memory_cache_mb) + "\n";
    }
    s += "\n[server]\nlisten = \"127.0.0.1:0\"\nport_file = \"" + dir_ + "/port.json\"\n\n";
    s += "[knowledge]\n";
    if (o_.cache_mb >= 0) s += "cache_mb = " + std::to_string(o_.cache_mb) + "\n";
    s += "[[knowledge.sources]]\npath = \"" + o_.knowledge + "\"\n\n";
    s += "[policy]\nuser_rate_per_minute = 0\nconversation_rate_per_minute = 0\n\n";
    s += "[webhook]\nenabled = false\n\n";
    s += "[slack]\nenabled = true\napp_token = \"${SLACK_APP_TOKEN}\"\n"
         "bot_token = \"${SLACK_BOT_TOKEN}\"\napi_base_url = \"" +
         slack_->ApiBaseUrl() + "\"\nconnections = " + std::to_string(o_.connections) +
         "\npost_rate_per_channel = 0\nworking_signal = \"" + signal_ + "\"\n";
    return s;
  }

  const Options& o_;
  std::string signal_;
  std::string dir_;
  Ledger ledger_;  // before slack_: the server's observer points into it
  std::unique_ptr<SlackServer> slack_;
  std::vector<std::string> channels_;
  std::unique_ptr<DaemonProcess> daemon_;
  pid_t pid_ = -1;
  double idle_rss_mib_ = 0;
  double idle_hwm_mib_ = 0;
};

std::string Row(const StepResult& r) {
  std::string s = "| " + r.name + " | " + r.signal + " | " + Fmt("%.0f", r.rate) + " | " +
                  Fmt("%.0f", r.seconds) + " | " + std::to_string(r.events) + " | " +
                  Fmt("%.0f", r.achieved_rps) + " | " + Fmt("%.2f", r.p50) + " | " +
                  Fmt("%.2f", r.p90) + " | " + Fmt("%.2f", r.p99) + " | " + Fmt("%.1f", r.max) +
                  " | " + std::to_string(r.lost) + " | " + std::to_string(r.doubled) + " | " +
                  Fmt("%.0f", r.daemon_cpu_pct) + "% | " + Fmt("%.0f", r.daemon_cpu_us) + " | " +
                  Fmt("%.0f", r.bench_cpu_us) + " | " + Fmt("%.1f", r.rss_mib) + " | " +
                  Fmt("%.1f", r.hwm_mib) + " |";
  return s;
}

std::string DetailRow(const StepResult& r) {
  auto stage = [&](const char* k) {
    auto it = r.stage_mean_ms.find(k);
    return it == r.stage_mean_ms.end() ? std::string("–") : Fmt("%.2f", it->second);
  };
  return "| " + r.name + " | " + Fmt("%.0f", r.drain_ms) + " | " + Fmt("%.1f", r.max_send_lag_ms) +
         " | " + std::to_string(r.late_sends) + " | " + Fmt("%.1f", r.send_event_us) + " | " +
         std::to_string(r.answered_after_grace) + " | " + Fmt("%.0f", r.settle_s) + " | " +
         Fmt("%.0f", r.injector_cpu_us) + " | " + std::to_string(r.redeliveries) + " | " +
         stage("memory_load") + " | " + stage("retrieval") + " | " + stage("store") + " | " +
         stage("total") + " |";
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
    std::fprintf(stderr, "slack_bench: cannot create a temp dir\n");
    return 1;
  }

  std::vector<StepResult> results;
  double idle_rss = 0, idle_hwm = 0, reaction_idle_rss = 0;
  std::string stopped, reaction_stopped;
  size_t reactions_seen = 0;
  Ledger::Extras extras, reaction_extras;
  {
    Run run(o, "none", tmp.Sub("main"));
    if (!run.Start()) return 1;
    idle_rss = run.idle_rss_mib();
    idle_hwm = run.idle_hwm_mib();
    run.Step("warm-up", 200, o.warmup_seconds, true);
    for (double rate : o.rates) {
      if (g_stop) break;
      const double secs = rate == o.main_rate ? o.main_seconds : o.step_seconds;
      results.push_back(run.Step(Fmt("%.0f/s", rate), rate, secs));
    }
    extras = run.ledger().GetExtras();
    stopped = run.Stop();
  }
  if (o.reaction_rate > 0 && !g_stop) {
    Run run(o, "reaction", tmp.Sub("reaction"));
    if (!run.Start()) return 1;
    reaction_idle_rss = run.idle_rss_mib();
    run.Step("warm-up", 200, o.warmup_seconds, true);
    results.push_back(run.Step(Fmt("%.0f/s", o.reaction_rate) + " +reaction", o.reaction_rate,
                               o.reaction_seconds));
    reactions_seen = run.slack().Counters().reactions;
    reaction_extras = run.ledger().GetExtras();
    reaction_stopped = run.Stop();
  }

  std::printf(
      "The real daemon (`parley serve`, runtime.threads = %d, slack.connections = %d, "
      "post_rate_per_channel = 0, policy rate limits off, log level warn, embedded extractive "
      "responder, knowledge = %s, fresh store in a temp dir) against the Slack test server "
      "running in the benchmark process (one io thread, no rate limits, ack deadline 3 s). "
      "Open loop: event i of a step is injected at t0 + i/rate as an `app_mention` with a question "
      "about parley, over %d channels and %d users; %.0f%% of events are follow-ups in a thread "
      "the bot already answered (conversation memory is read), the rest start a new thread. "
      "Latency: steady_clock from just before `SendEvent` to the test server recording the "
      "`chat.postMessage` reply in the event's thread. After each step the benchmark waits up to "
      "%.0f s for missing replies: **lost** = no reply by then, **doubled** = replies beyond one "
      "per event. A %.0f s warm-up at 200 events/s precedes the first step of each daemon.\n\n",
      o.daemon_threads, o.connections, o.knowledge.c_str(), o.channels, o.users,
      100 * o.followup_fraction, o.grace_seconds, o.warmup_seconds);
  std::printf(
      "Daemon VmRSS idle (ready, sockets open, before any event): %.1f MiB (VmHWM %.1f MiB)",
      idle_rss, idle_hwm);
  if (o.reaction_rate > 0) {
    std::printf("; the second daemon (working_signal = \"reaction\"): %.1f MiB", reaction_idle_rss);
  }
  std::printf(".\n\n");
  std::printf(
      "| step | working signal | offered events/s | s | events | replies/s | p50 ms | p90 ms | "
      "p99 ms | max ms | lost | doubled | daemon CPU | daemon CPU µs/event | bench CPU µs/event | "
      "VmRSS MiB | VmHWM MiB |\n");
  std::printf(
      "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  for (const StepResult& r : results) std::printf("%s\n", Row(r).c_str());
  std::printf(
      "\nreplies/s = replies received while the step was sending / its length. daemon CPU = its "
      "utime + stime over the step and its grace wait (100%% = one core of %u); µs/event = that "
      "CPU time / events. bench CPU = this process (the Slack test server's io thread, the "
      "observer and the injecting thread) per event. Memory: the daemon's /proc status after the "
      "step.\n\n",
      std::thread::hardware_concurrency());
  std::printf(
      "| step | drain ms | max send lag ms | sends >1 ms late | SendEvent µs | lost, answered "
      "later | settle s | injector CPU µs/event | redeliveries | memory_load ms | retrieval ms | "
      "store ms | turn total ms |\n");
  std::printf("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  for (const StepResult& r : results) std::printf("%s\n", DetailRow(r).c_str());
  std::printf(
      "\ndrain = last reply after the last event was sent. send lag = how late the injecting "
      "thread was against the open-loop schedule (it never waits for replies). SendEvent = mean "
      "time in `SlackServer::SendEvent` (builds the envelope under the server's lock). lost, "
      "answered later / settle: when a step loses events the benchmark then waits (up to %.0f s, "
      "until 5 s pass without progress) for the backlog to drain so the next step starts quiet; "
      "those replies still count as lost. "
      "redeliveries = envelopes not acked within 3 s. Stage columns: mean of the daemon's "
      "`parley_stage_seconds` histograms over the step (GET /metrics).\n\n",
      kSettleMaxSeconds);
  std::printf("Other messages: %zu extra reply parts, %zu replies in unknown threads",
              extras.extra_parts + reaction_extras.extra_parts,
              extras.unknown_replies + reaction_extras.unknown_replies);
  for (const auto& [method, count] : extras.other_messages) {
    std::printf(", %zu %s", count, method.c_str());
  }
  std::printf(
      "; %zu conversation threads in the main run. Over the whole main run (warm-up included, "
      "counted at its end): %zu events, %zu never answered, %zu doubled.",
      extras.threads, extras.events, extras.unanswered, extras.doubled);
  if (o.reaction_rate > 0) {
    std::printf(
        " The reaction run made %zu reactions.add/remove calls; %zu events, %zu never answered, "
        "%zu doubled.",
        reactions_seen, reaction_extras.events, reaction_extras.unanswered,
        reaction_extras.doubled);
  }
  std::printf("\n\nMain run: %s\n", stopped.c_str());
  if (o.reaction_rate > 0) std::printf("Reaction run: %s\n", reaction_stopped.c_str());
  return g_stop ? 130 : 0;
}

}  // namespace
}  // namespace parley::bench

int main(int argc, char** argv) { return parley::bench::Main(argc, argv); }
