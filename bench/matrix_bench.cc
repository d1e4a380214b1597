// Matrix benchmark: the real `parley serve` as a bot user on the in-process Matrix test homeserver
// (tests/fakes/matrix), open loop.
//
// The program starts the Matrix test server (client-server API over http://127.0.0.1, one io
// thread, rc_message rate limiting off), creates N rooms (default 10) with the bot
// (@parley:test.local) and a set of users joined, writes a throwaway config and store into a temp
// dir (knowledge = the shipped config/knowledge, webhook off, Matrix on with the access token in
// an environment variable set for the child only, policy rate limits off, log level warn,
// matrix.typing as asked, sync_timeout_ms default), starts the daemon, waits for /readyz (which
// with Matrix on means: the first sync, whose backlog is skipped on a first start, has been
// handled) and for one answered mention in every room, then injects mentions at fixed rates (open
// loop: message i of a step is due at t0 + i / rate whether or not earlier ones were answered).
// Every message is a question about parley with m.mentions = [the bot], round-robin over the
// rooms; most are top-level messages, a share are follow-ups in the thread of an earlier question
// (so the bot's conversation memory is read).
//
// Latency: from just before MatrixServer::SendText to the server storing the bot's reply (its
// MatrixEvent::received_ns; both use steady_clock in this process). A reply is attributed to the
// question its content["m.relates_to"]["m.in_reply_to"]["event_id"] names; edits (rel_type
// m.replace) are counted apart. The test server has no observer hook, so nothing is read while a
// step is sending: replies are collected (MatrixServer::SentBy) once the step has sent everything,
// polling until every question has its reply or the grace period ends. Then: lost = no reply,
// doubled = more than one reply to one question.
//
// Reported per step: offered and achieved rate, p50/p90/p99/max latency, lost and doubled
// messages, the daemon's CPU (utime + stime from /proc/PID/stat) per message and VmRSS / VmHWM
// (/proc/PID/status), this process's CPU per message (the test server's io thread and the
// injecting thread), the requests the daemon made per message (/sync, PUT /send, PUT /typing,
// /messages), and the daemon's per-stage turn latencies from GET /metrics. Markdown on stdout,
// progress on stderr.
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
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "bench/bench_util.h"
#include "tests/fakes/matrix/matrix_server.h"
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
using testing::MatrixEvent;
using testing::MatrixServer;
using testing::MatrixServerOptions;

std::atomic<bool> g_stop{false};

// Longest wait for an overloaded step's backlog to drain before the next step.
constexpr double kSettleMaxSeconds = 120;
// A question becomes a thread root for a follow-up this long after it was sent (by then it has
// normally been answered, so the follow-up reads a conversation with one turn in it).
constexpr int64_t kFollowupAfterNs = 1'000'000'000;

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
  std::vector<double> rates = {100, 250, 500, 750, 1000};
  double step_seconds = 10;
  double main_rate = 500;
  double main_seconds = 30;
  double no_typing_rate = 500;  // 0 = no extra run with matrix.typing = false
  double no_typing_seconds = 10;
  double grace_seconds = 10;
  double warmup_seconds = 2;  // at warmup_rate, before the first step of every daemon
  double warmup_rate = 100;
  int rooms = 10;
  int users = 20;  // each joined to every room
  double followup_fraction = 0.25;
  int daemon_threads = 0;
  int sync_timeout_ms = 0;  // 0 = the daemon's default (not written to the config)
  std::string metrics_out;  // when set, the daemon's GET /metrics after every step is appended
};

void Usage() {
  std::fprintf(
      stderr,
      "usage: matrix_bench --parley PATH [options]\n"
      "  --knowledge DIR          knowledge source (default: config/knowledge)\n"
      "  --rates R1,R2,...        messages/s per step (default 100,250,500,750,1000)\n"
      "  --step-seconds S         seconds per step (default 10)\n"
      "  --main-rate R            the step that runs --main-seconds (default 500)\n"
      "  --main-seconds S         its length (default 30)\n"
      "  --no-typing-rate R       extra step with matrix.typing = false on a fresh\n"
      "                           daemon and store (default 500; 0 = skip)\n"
      "  --no-typing-seconds S    its length (default 10)\n"
      "  --grace-seconds S        wait for late replies after each step (default 10)\n"
      "  --warmup-seconds S       warm-up before the first step of each daemon (default 2)\n"
      "  --warmup-rate R          its rate (default 100)\n"
      "  --rooms N                rooms the messages are spread over (default 10)\n"
      "  --users N                users joined to every room (default 20)\n"
      "  --followups F            share of messages that follow up in the thread of an\n"
      "                           earlier question (default 0.25)\n"
      "  --daemon-threads N       runtime.threads of the daemon (default 0 = per core)\n"
      "  --sync-timeout-ms N      matrix.sync_timeout_ms (default: the daemon's)\n"
      "  --metrics-out FILE       append the daemon's GET /metrics after every step\n");
}

bool ParseArgs(int argc, char** argv, Options* o) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "matrix_bench: %s needs a value\n", a.c_str());
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
    } else if (a == "--no-typing-rate") {
      o->no_typing_rate = std::atof(next().c_str());
    } else if (a == "--no-typing-seconds") {
      o->no_typing_seconds = std::atof(next().c_str());
    } else if (a == "--grace-seconds") {
      o->grace_seconds = std::atof(next().c_str());
    } else if (a == "--warmup-seconds") {
      o->warmup_seconds = std::atof(next().c_str());
    } else if (a == "--warmup-rate") {
      o->warmup_rate = std::atof(next().c_str());
    } else if (a == "--rooms") {
      o->rooms = std::atoi(next().c_str());
    } else if (a == "--users") {
      o->users = std::atoi(next().c_str());
    } else if (a == "--followups") {
      o->followup_fraction = std::atof(next().c_str());
    } else if (a == "--daemon-threads") {
      o->daemon_threads = std::atoi(next().c_str());
    } else if (a == "--sync-timeout-ms") {
      o->sync_timeout_ms = std::atoi(next().c_str());
    } else if (a == "--metrics-out") {
      o->metrics_out = next();
    } else if (a == "--help" || a == "-h") {
      Usage();
      std::exit(0);
    } else {
      std::fprintf(stderr, "matrix_bench: unknown argument %s\n", a.c_str());
      return false;
    }
  }
  if (o->parley.empty()) {
    std::fprintf(stderr, "matrix_bench: --parley PATH is required\n");
    return false;
  }
  // Two users besides the bot, so no room counts as a DM (two members).
  if (o->rates.empty() || o->rooms < 1 || o->users < 2 || o->step_seconds <= 0 ||
      o->main_seconds <= 0 || o->grace_seconds < 0 || o->warmup_seconds < 0 ||
      o->warmup_rate <= 0 || o->no_typing_rate < 0 || o->no_typing_seconds <= 0 ||
      o->followup_fraction < 0 || o->followup_fraction > 1 || o->sync_timeout_ms < 0) {
    std::fprintf(stderr, "matrix_bench: bad option value\n");
    return false;
  }
  for (double r : o->rates) {
    if (r <= 0) {
      std::fprintf(stderr, "matrix_bench: rates must be positive\n");
      return false;
    }
  }
  return true;
}

// ---- replies ----

// The event a bot message answers: m.in_reply_to of its relation (threads and rich replies).
std::string RepliesTo(const MatrixEvent& e) {
  if (!e.content.is_object()) return "";
  auto rel = e.content.find("m.relates_to");
  if (rel == e.content.end() || !rel->is_object()) return "";
  auto irt = rel->find("m.in_reply_to");
  if (irt == rel->end() || !irt->is_object()) return "";
  auto id = irt->find("event_id");
  return id != irt->end() && id->is_string() ? id->get<std::string>() : "";
}

bool IsEdit(const MatrixEvent& e) {
  if (!e.content.is_object()) return false;
  auto rel = e.content.find("m.relates_to");
  return rel != e.content.end() && rel->is_object() && rel->value("rel_type", "") == "m.replace";
}

struct Question {
  int64_t send_ns = 0;
  int64_t reply_ns = 0;  // first reply's received_ns; 0 = none yet
  int replies = 0;
};

// The questions of one daemon run and the bot's replies to them. Used by the main thread only
// (the test server has no observer; replies are read with SentBy).
class Ledger {
 public:
  explicit Ledger(std::string bot) : bot_(std::move(bot)) {}

  size_t Add(const std::string& event_id, int64_t send_ns) {
    const size_t i = questions_.size();
    questions_.push_back(Question{send_ns, 0, 0});
    index_.emplace(event_id, i);
    return i;
  }

  // Everything the bot sent so far is not a reply to be attributed (its room joins).
  void SkipExisting(const MatrixServer& server) { seen_ = server.SentBy(bot_).size(); }

  // Reads the bot's events stored since the last call and attributes the replies.
  void Collect(const MatrixServer& server) {
    const std::vector<MatrixEvent> sent = server.SentBy(bot_);  // in stream order: appends only
    for (size_t i = seen_; i < sent.size(); ++i) {
      const MatrixEvent& e = sent[i];
      if (e.type != "m.room.message") {
        ++other_types_[e.type];
        continue;
      }
      if (IsEdit(e)) {
        ++edits_;
        continue;
      }
      auto it = index_.find(RepliesTo(e));
      if (it == index_.end()) {
        ++unknown_replies_;
        continue;
      }
      Question& q = questions_[it->second];
      ++q.replies;
      if (q.reply_ns == 0) q.reply_ns = e.received_ns;
    }
    seen_ = std::max(seen_, sent.size());
  }

  size_t Count() const { return questions_.size(); }
  size_t Unanswered(size_t from, size_t to) const {
    size_t n = 0;
    for (size_t i = from; i < to && i < questions_.size(); ++i) n += questions_[i].reply_ns == 0;
    return n;
  }
  size_t Doubled(size_t from, size_t to) const {
    size_t n = 0;
    for (size_t i = from; i < to && i < questions_.size(); ++i) {
      n += questions_[i].replies > 1 ? static_cast<size_t>(questions_[i].replies - 1) : 0;
    }
    return n;
  }
  const Question& at(size_t i) const { return questions_[i]; }
  size_t edits() const { return edits_; }
  size_t unknown_replies() const { return unknown_replies_; }
  const std::map<std::string, size_t>& other_types() const { return other_types_; }

 private:
  std::string bot_;
  std::vector<Question> questions_;
  std::unordered_map<std::string, size_t> index_;  // event id -> questions_ index
  size_t seen_ = 0;                                // SentBy(bot) entries already read
  size_t edits_ = 0;
  size_t unknown_replies_ = 0;
  std::map<std::string, size_t> other_types_;
};

struct StepResult {
  std::string name;
  bool typing = true;
  double rate = 0;
  double seconds = 0;
  size_t messages = 0;
  double achieved_rps = 0;  // replies stored within the sending window / its length
  double p50 = 0, p90 = 0, p99 = 0, max = 0;  // ms
  size_t lost = 0;
  size_t doubled = 0;
  double drain_ms = 0;
  double max_send_lag_ms = 0;
  size_t late_sends = 0;  // sent more than 1 ms after their due time
  double send_text_us = 0;
  double daemon_cpu_pct = 0;
  double daemon_cpu_us = 0;
  double bench_cpu_us = 0;
  double injector_cpu_us = 0;
  double rss_mib = 0, hwm_mib = 0;
  std::map<std::string, double> stage_mean_ms;
  // Requests the daemon made to the homeserver during the step (and its grace period).
  int syncs = 0, sends = 0, typing_calls = 0, messages_calls = 0;
  size_t answered_after_grace = 0;  // lost messages answered while settling before the next step
  double settle_s = 0;
};

class Run {
 public:
  Run(const Options& o, bool typing, std::string dir)
      : o_(o), typing_(typing), dir_(std::move(dir)), ledger_(MatrixServerOptions{}.bot_user_id) {
    server_ = MatrixServer::Start();  // rate limiting (rc_message) is off by default
    bot_ = server_->options().bot_user_id;
    const std::string& domain = server_->options().server_name;
    for (int u = 0; u < o_.users; ++u) users_.push_back("@user" + std::to_string(u) + ":" + domain);
    std::vector<std::string> members = {bot_};
    members.insert(members.end(), users_.begin() + 1, users_.end());
    for (int r = 0; r < o_.rooms; ++r) {
      rooms_.push_back(
          server_->CreateRoom(users_[0], members, false, "bench room " + std::to_string(r)));
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
        std::map<std::string, std::string>{
            {"MATRIX_ACCESS_TOKEN", server_->options().bot_access_token}});
    // Ready = index loaded and the first /sync (backlog skipped on a first start) handled.
    if (!daemon_->Start(60'000)) {
      std::fprintf(stderr, "matrix_bench: the daemon did not become ready:\n%s\n",
                   daemon_->Log().c_str());
      return false;
    }
    pid_ = FindChildPid();
    if (pid_ <= 0) {
      std::fprintf(stderr, "matrix_bench: cannot find the daemon's pid\n");
      return false;
    }
    ledger_.SkipExisting(*server_);
    std::this_thread::sleep_for(std::chrono::seconds(1));  // settle: idle means idle
    idle_rss_mib_ = static_cast<double>(StatusKib(pid_, "VmRSS")) / 1024.0;
    idle_hwm_mib_ = static_cast<double>(StatusKib(pid_, "VmHWM")) / 1024.0;
    // One mention per room, answered, before anything is measured: the bot is joined and
    // listening everywhere.
    const size_t first = ledger_.Count();
    for (const std::string& room : rooms_) {
      const int64_t t = NowNs();
      ledger_.Add(server_->SendText(room, users_[1], std::string("Parley: ") + kQuestions[0],
                                    std::vector<std::string>{bot_}),
                  t);
    }
    const int64_t deadline = NowNs() + 30'000'000'000LL;
    while (!g_stop && NowNs() < deadline) {
      ledger_.Collect(*server_);
      if (ledger_.Unanswered(first, ledger_.Count()) == 0) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (ledger_.Unanswered(first, ledger_.Count()) != 0) {
      std::fprintf(stderr, "matrix_bench: the bot did not answer in every room within 30 s:\n%s\n",
                   daemon_->Log().c_str());
      return false;
    }
    std::fprintf(stderr,
                 "matrix_bench: daemon pid %d ready (typing %s), answering in %d rooms, idle "
                 "VmRSS %.1f MiB\n",
                 static_cast<int>(pid_), typing_ ? "on" : "off", o_.rooms, idle_rss_mib_);
    return true;
  }

  // One open-loop step at `rate` messages/s for `seconds`.
  StepResult Step(const std::string& name, double rate, double seconds, bool quiet = false) {
    StepResult r;
    r.name = name;
    r.typing = typing_;
    r.rate = rate;
    r.seconds = seconds;
    const size_t n = static_cast<size_t>(std::llround(rate * seconds));
    const size_t first = ledger_.Count();
    const StageTotals stages0 = Stages();
    const int syncs0 = server_->RequestCount("sync");
    const int sends0 = server_->RequestCount("send");
    const int typing0 = server_->RequestCount("typing");
    const int messages0 = server_->RequestCount("messages");
    const double dcpu0 = ProcCpuSeconds(pid_);
    const double bcpu0 = RusageSeconds(RUSAGE_SELF);
    const double icpu0 = RusageSeconds(RUSAGE_THREAD);
    std::mt19937 rng(static_cast<unsigned>(first + 1));
    std::uniform_real_distribution<double> uni(0.0, 1.0);
    if (!quiet) {
      std::fprintf(stderr, "matrix_bench: %s: %.0f messages/s for %.0f s (%zu messages)\n",
                   name.c_str(), rate, seconds, n);
    }

    struct Root {
      std::string room, event_id;
      int64_t send_ns;
    };
    std::deque<Root> roots;  // top-level questions of this step not followed up yet
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
      const std::string& user = users_[1 + rng() % (users_.size() - 1)];
      const std::string body = std::string("Parley: ") + kQuestions[rng() % kQuestionCount];
      const bool followup = uni(rng) < o_.followup_fraction && !roots.empty() &&
                            now - roots.front().send_ns >= kFollowupAfterNs;
      std::string room, thread_root;
      if (followup) {
        room = roots.front().room;
        thread_root = roots.front().event_id;
        roots.pop_front();
      } else {
        room = rooms_[next_room_++ % rooms_.size()];
      }
      const int64_t s0 = NowNs();
      std::string id =
          server_->SendText(room, user, body, std::vector<std::string>{bot_}, thread_root);
      send_total_ns += NowNs() - s0;
      ledger_.Add(id, s0);
      if (!followup) roots.push_back(Root{room, std::move(id), s0});
      ++sent;
    }
    const int64_t t_end = NowNs();
    const double icpu1 = RusageSeconds(RUSAGE_THREAD);
    const size_t last = first + sent;

    // Grace: wait for the replies still missing. The request counter is cheap; SentBy copies the
    // server's events under its lock, so it is read only once enough sends have arrived (and
    // then every 250 ms).
    const int64_t grace_deadline = t_end + static_cast<int64_t>(o_.grace_seconds * 1e9);
    int64_t next_collect = 0;
    while (!g_stop) {
      const int64_t now = NowNs();
      const bool enough = server_->RequestCount("send") - sends0 >= static_cast<int>(sent);
      if ((enough && now >= next_collect) || now >= grace_deadline) {
        ledger_.Collect(*server_);
        if (ledger_.Unanswered(first, last) == 0 || now >= grace_deadline) break;
        next_collect = now + 250'000'000;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    const double dcpu1 = ProcCpuSeconds(pid_);
    const double bcpu1 = RusageSeconds(RUSAGE_SELF);
    const int64_t t_done = NowNs();
    r.syncs = server_->RequestCount("sync") - syncs0;
    r.sends = server_->RequestCount("send") - sends0;
    r.typing_calls = server_->RequestCount("typing") - typing0;
    r.messages_calls = server_->RequestCount("messages") - messages0;

    std::vector<double> lat;
    lat.reserve(sent);
    size_t in_window = 0;
    int64_t last_reply = t0;
    for (size_t i = first; i < last; ++i) {
      const Question& q = ledger_.at(i);
      if (q.reply_ns == 0) {
        ++r.lost;
        continue;
      }
      lat.push_back(static_cast<double>(q.reply_ns - q.send_ns) / 1e6);
      in_window += q.reply_ns <= t_end;
      last_reply = std::max(last_reply, q.reply_ns);
    }
    std::sort(lat.begin(), lat.end());
    r.messages = sent;
    const double window_s = static_cast<double>(t_end - t0) / 1e9;
    r.achieved_rps = window_s > 0 ? static_cast<double>(in_window) / window_s : 0;
    r.p50 = Percentile(lat, 50);
    r.p90 = Percentile(lat, 90);
    r.p99 = Percentile(lat, 99);
    r.max = lat.empty() ? 0 : lat.back();
    r.drain_ms = static_cast<double>(std::max<int64_t>(0, last_reply - t_end)) / 1e6;
    r.max_send_lag_ms = static_cast<double>(max_lag) / 1e6;
    r.late_sends = late;
    r.send_text_us =
        sent ? static_cast<double>(send_total_ns) / 1e3 / static_cast<double>(sent) : 0;
    const double per = sent ? 1e6 / static_cast<double>(sent) : 0;
    r.daemon_cpu_us = (dcpu1 - dcpu0) * per;
    r.daemon_cpu_pct = 100.0 * (dcpu1 - dcpu0) / (static_cast<double>(t_done - t0) / 1e9);
    r.bench_cpu_us = (bcpu1 - bcpu0) * per;
    r.injector_cpu_us = (icpu1 - icpu0) * per;
    r.rss_mib = static_cast<double>(StatusKib(pid_, "VmRSS")) / 1024.0;
    r.hwm_mib = static_cast<double>(StatusKib(pid_, "VmHWM")) / 1024.0;
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
    // Settle: an overloaded step leaves a backlog behind; let it drain (up to kSettleMaxSeconds,
    // until 5 s pass without progress) so the next step starts from a quiet daemon. Replies
    // arriving now stay lost for this step's figures but are counted in answered_after_grace.
    if (r.lost > 0 && !g_stop) {
      const int64_t s0 = NowNs();
      const int64_t settle_deadline = s0 + static_cast<int64_t>(kSettleMaxSeconds * 1e9);
      size_t left = r.lost;
      int64_t last_progress = s0;
      while (left > 0 && NowNs() < settle_deadline && !g_stop &&
             NowNs() - last_progress < 5'000'000'000LL) {
        std::this_thread::sleep_for(std::chrono::milliseconds(500));
        ledger_.Collect(*server_);
        const size_t now_left = ledger_.Unanswered(first, last);
        if (now_left < left) last_progress = NowNs();
        left = now_left;
      }
      r.answered_after_grace = r.lost - left;
      r.settle_s = static_cast<double>(NowNs() - s0) / 1e9;
    }
    // Doubles can arrive late (a retried send): judged after the grace (and settle) wait.
    ledger_.Collect(*server_);
    r.doubled = ledger_.Doubled(first, last);
    if (!quiet) {
      std::fprintf(stderr,
                   "matrix_bench: %s: %.0f replies/s, p50 %.2f p99 %.2f max %.2f ms, lost %zu, "
                   "doubled %zu, daemon %.0f us/message, RSS %.1f MiB\n",
                   name.c_str(), r.achieved_rps, r.p50, r.p99, r.max, r.lost, r.doubled,
                   r.daemon_cpu_us, r.rss_mib);
    }
    return r;
  }

  // Whole run, counted at its end (2 s after the last step, for late doubles).
  struct Totals {
    size_t messages = 0, unanswered = 0, doubled = 0, edits = 0, unknown = 0;
    std::map<std::string, size_t> other_types;
  };
  Totals Finish() {
    std::this_thread::sleep_for(std::chrono::seconds(2));
    ledger_.Collect(*server_);
    Totals t;
    t.messages = ledger_.Count();
    t.unanswered = ledger_.Unanswered(0, t.messages);
    t.doubled = ledger_.Doubled(0, t.messages);
    t.edits = ledger_.edits();
    t.unknown = ledger_.unknown_replies();
    t.other_types = ledger_.other_types();
    return t;
  }

  StageTotals Stages() {
    auto m = daemon_->Get("/metrics");
    return m.ok() ? ParseStages(m->body) : StageTotals{};
  }

  void DumpMetrics(const std::string& step) {
    if (o_.metrics_out.empty()) return;
    auto m = daemon_->Get("/metrics");
    std::ofstream(o_.metrics_out, std::ios::app)
        << "# ---- matrix_bench: after step " << step << " (typing " << (typing_ ? "on" : "off")
        << ")\n"
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

 private:
  std::string ConfigText() const {
    std::string s;
    s += "# Written by matrix_bench for one run; deleted afterwards.\n";
    s += "[runtime]\nthreads = " + std::to_string(o_.daemon_threads) + "\n\n";
    s += "[log]\nlevel = \"warn\"\nfile = \"" + dir_ + "/parley.log\"\n\n";
    s += "[store]\npath = \"" + dir_ + "/store\"\n\n";
    s += "[server]\nlisten = \"127.0.0.1:0\"\nport_file = \"" + dir_ + "/port.json\"\n\n";
    s += "[[knowledge.sources]]\npath = \"" + o_.knowledge + "\"\n\n";
    s += "[policy]\nuser_rate_per_minute = 0\nconversation_rate_per_minute = 0\n\n";
    s += "[webhook]\nenabled = false\n\n";
    s += "[matrix]\nenabled = true\nhomeserver = \"" + server_->base_url() + "\"\nuser_id = \"" +
         bot_ +
         "\"\naccess_token = \"${MATRIX_ACCESS_TOKEN}\"\ntyping = " + (typing_ ? "true" : "false") +
         "\n";
    if (o_.sync_timeout_ms > 0)
      s += "sync_timeout_ms = " + std::to_string(o_.sync_timeout_ms) + "\n";
    return s;
  }

  const Options& o_;
  bool typing_;
  std::string dir_;
  Ledger ledger_;
  std::unique_ptr<MatrixServer> server_;
  std::string bot_;
  std::vector<std::string> users_;  // users_[0] created the rooms; the others ask
  std::vector<std::string> rooms_;
  size_t next_room_ = 0;
  std::unique_ptr<DaemonProcess> daemon_;
  pid_t pid_ = -1;
  double idle_rss_mib_ = 0;
  double idle_hwm_mib_ = 0;
};

std::string Row(const StepResult& r) {
  return "| " + r.name + " | " + (r.typing ? "on" : "off") + " | " + Fmt("%.0f", r.rate) + " | " +
         Fmt("%.0f", r.seconds) + " | " + std::to_string(r.messages) + " | " +
         Fmt("%.0f", r.achieved_rps) + " | " + Fmt("%.2f", r.p50) + " | " + Fmt("%.2f", r.p90) +
         " | " + Fmt("%.2f", r.p99) + " | " + Fmt("%.1f", r.max) + " | " + std::to_string(r.lost) +
         " | " + std::to_string(r.doubled) + " | " + Fmt("%.0f", r.daemon_cpu_pct) + "% | " +
         Fmt("%.0f", r.daemon_cpu_us) + " | " + Fmt("%.0f", r.bench_cpu_us) + " | " +
         Fmt("%.1f", r.rss_mib) + " | " + Fmt("%.1f", r.hwm_mib) + " |";
}

std::string DetailRow(const StepResult& r) {
  auto stage = [&](const char* k) {
    auto it = r.stage_mean_ms.find(k);
    return it == r.stage_mean_ms.end() ? std::string("–") : Fmt("%.2f", it->second);
  };
  const double m = r.messages ? static_cast<double>(r.messages) : 1;
  return "| " + r.name + (r.typing ? "" : " (typing off)") + " | " + Fmt("%.0f", r.drain_ms) +
         " | " + Fmt("%.1f", r.max_send_lag_ms) + " | " + std::to_string(r.late_sends) + " | " +
         Fmt("%.1f", r.send_text_us) + " | " + std::to_string(r.answered_after_grace) + " | " +
         Fmt("%.0f", r.settle_s) + " | " + Fmt("%.0f", r.injector_cpu_us) + " | " +
         std::to_string(r.syncs) + " | " + Fmt("%.1f", r.syncs ? m / r.syncs : 0) + " | " +
         Fmt("%.2f", r.sends / m) + " | " + Fmt("%.2f", r.typing_calls / m) + " | " +
         std::to_string(r.messages_calls) + " | " + stage("memory_load") + " | " +
         stage("retrieval") + " | " + stage("store") + " | " + stage("total") + " |";
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
    std::fprintf(stderr, "matrix_bench: cannot create a temp dir\n");
    return 1;
  }

  std::vector<StepResult> results;
  double idle_rss = 0, idle_hwm = 0, no_typing_idle_rss = 0;
  std::string stopped, no_typing_stopped;
  Run::Totals totals, no_typing_totals;
  {
    Run run(o, true, tmp.Sub("main"));
    if (!run.Start()) return 1;
    idle_rss = run.idle_rss_mib();
    idle_hwm = run.idle_hwm_mib();
    if (o.warmup_seconds > 0) run.Step("warm-up", o.warmup_rate, o.warmup_seconds, true);
    for (double rate : o.rates) {
      if (g_stop) break;
      const double secs = rate == o.main_rate ? o.main_seconds : o.step_seconds;
      results.push_back(run.Step(Fmt("%.0f/s", rate), rate, secs));
    }
    totals = run.Finish();
    stopped = run.Stop();
  }
  if (o.no_typing_rate > 0 && !g_stop) {
    Run run(o, false, tmp.Sub("no-typing"));
    if (!run.Start()) return 1;
    no_typing_idle_rss = run.idle_rss_mib();
    if (o.warmup_seconds > 0) run.Step("warm-up", o.warmup_rate, o.warmup_seconds, true);
    results.push_back(
        run.Step(Fmt("%.0f/s", o.no_typing_rate), o.no_typing_rate, o.no_typing_seconds));
    no_typing_totals = run.Finish();
    no_typing_stopped = run.Stop();
  }

  std::printf(
      "The real daemon (`parley serve`, runtime.threads = %d, policy rate limits off, log level "
      "warn, embedded extractive responder, knowledge = %s, fresh store in a temp dir, "
      "matrix.sync_timeout_ms = %s) as the bot @parley:test.local against the Matrix test "
      "homeserver running in the benchmark process (tests/fakes/matrix: one io thread, "
      "rc_message rate limiting off), joined to %d rooms with %d users. Open loop: message i of "
      "a step is sent at t0 + i/rate with `MatrixServer::SendText` as an m.text question about "
      "parley with `m.mentions` = [the bot], round-robin over the rooms; %.0f%% are follow-ups "
      "in the thread of an earlier question of the step (sent at least 1 s before), the rest "
      "are top-level. Latency: steady_clock from just before `SendText` to the test server "
      "storing the bot's reply (`MatrixEvent::received_ns`), the reply being the bot's "
      "m.room.message whose `m.in_reply_to` names the question (edits apart). After each step "
      "the benchmark waits up to %.0f s for missing replies: **lost** = no reply by then, "
      "**doubled** = replies beyond one per question. Before measuring, each daemon answered "
      "one mention in every room and a %.0f s warm-up at %.0f messages/s.\n\n",
      o.daemon_threads, o.knowledge.c_str(),
      o.sync_timeout_ms > 0 ? std::to_string(o.sync_timeout_ms).c_str() : "default (30000)",
      o.rooms, o.users, 100 * o.followup_fraction, o.grace_seconds, o.warmup_seconds,
      o.warmup_rate);
  std::printf(
      "Daemon VmRSS idle (ready, first sync handled, before any message): %.1f MiB "
      "(VmHWM %.1f MiB)",
      idle_rss, idle_hwm);
  if (o.no_typing_rate > 0) {
    std::printf("; the second daemon (matrix.typing = false): %.1f MiB", no_typing_idle_rss);
  }
  std::printf(".\n\n");
  std::printf(
      "| step | typing | offered msg/s | s | messages | replies/s | p50 ms | p90 ms | p99 ms | "
      "max ms | lost | doubled | daemon CPU | daemon CPU µs/msg | bench CPU µs/msg | VmRSS MiB | "
      "VmHWM MiB |\n");
  std::printf(
      "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  for (const StepResult& r : results) std::printf("%s\n", Row(r).c_str());
  std::printf(
      "\nreplies/s = replies stored while the step was sending / its length. daemon CPU = its "
      "utime + stime over the step and its grace wait (100%% = one core of %u); µs/msg = that "
      "CPU time / messages. bench CPU = this process (the test homeserver's io thread, which "
      "computes every /sync answer, and the injecting thread) per message. Memory: the daemon's "
      "/proc status after the step.\n\n",
      std::thread::hardware_concurrency());
  std::printf(
      "| step | drain ms | max send lag ms | sends >1 ms late | SendText µs | lost, answered "
      "later | settle s | injector CPU µs/msg | /sync requests | messages per /sync | PUT /send "
      "per msg | PUT /typing per msg | /messages | memory_load ms | retrieval ms | store ms | "
      "turn total ms |\n");
  std::printf(
      "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  for (const StepResult& r : results) std::printf("%s\n", DetailRow(r).c_str());
  std::printf(
      "\ndrain = last reply after the last message was sent. send lag = how late the injecting "
      "thread was against the open-loop schedule (it never waits for replies). SendText = mean "
      "time in `MatrixServer::SendText` (stores the event under the server's lock and posts the "
      "wake-up of held /syncs). lost, answered later / settle: when a step loses messages the "
      "benchmark then waits (up to %.0f s, until 5 s pass without progress) for the backlog to "
      "drain so the next step starts quiet; those replies still count as lost. Request columns: "
      "what the daemon asked the homeserver during the step and its grace wait (messages per "
      "/sync = messages / /sync requests, i.e. the batch size; /messages = gap fills of limited "
      "timelines). Stage columns: mean of the daemon's `parley_stage_seconds` histograms over "
      "the step (GET /metrics).\n\n",
      kSettleMaxSeconds);
  auto totals_line = [](const char* what, const Run::Totals& t) {
    std::printf(
        "%s: %zu questions, %zu never answered, %zu doubled; %zu edits, %zu replies to "
        "unknown events",
        what, t.messages, t.unanswered, t.doubled, t.edits, t.unknown);
    for (const auto& [type, count] : t.other_types) std::printf(", %zu %s", count, type.c_str());
    std::printf(" (counted 2 s after the last step; warm-up and the per-room probes included).\n");
  };
  totals_line("Main run", totals);
  if (o.no_typing_rate > 0) totals_line("\nTyping-off run", no_typing_totals);
  std::printf("\nMain run: %s\n", stopped.c_str());
  if (o.no_typing_rate > 0) std::printf("Typing-off run: %s\n", no_typing_stopped.c_str());
  return g_stop ? 130 : 0;
}

}  // namespace
}  // namespace parley::bench

int main(int argc, char** argv) { return parley::bench::Main(argc, argv); }
