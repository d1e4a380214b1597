// `parley serve`: the daemon.

#include <atomic>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <future>
#include <iostream>

#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "adapters/common/http_json.h"
#include "adapters/console/console_adapter.h"
#include "adapters/matrix/matrix_adapter.h"
#include "adapters/slack/slack_adapter.h"
#include "adapters/webhook/webhook_adapter.h"
#include "app/allocator.h"
#include "app/commands.h"
#include "app/logging.h"
#include "app/runtime.h"
#include "core/clock.h"
#include "core/ids.h"
#include "core/percent.h"
#include "escalation/desk.h"
#include "escalation/ticket.h"
#include "net/http.h"
#include "tools/audit.h"
#include "store/records.h"

namespace parley::app {
namespace {

using adapters::JsonError;
using nlohmann::json;

net::HttpResponse Json(int status, const json& body) {
  net::HttpResponse r;
  r.status = status;
  r.body = body.dump();
  return r;
}

// Hourly: expire old memory and dedupe marks (on the work pool: disk-bound).
void ScheduleSweep(Runtime& rt, std::shared_ptr<boost::asio::steady_timer> timer) {
  timer->expires_after(std::chrono::hours(1));
  timer->async_wait([&rt, timer](boost::system::error_code ec) {
    if (ec) return;
    boost::asio::post(rt.work, [&rt] {
      auto turns = rt.memory->SweepExpired();
      store::EventDedupe dedupe(*rt.kv, SystemClock::Instance(), 0);
      auto marks = dedupe.SweepExpired();
      size_t audit = 0;
      if (rt.config.tools.audit_retention_days > 0) {
        const int64_t cutoff = SystemClock::Instance().NowMs() -
                               int64_t{rt.config.tools.audit_retention_days} * 86'400'000;
        auto swept = tools::SweepAudit(*rt.kv, cutoff);
        audit = swept.ok() ? *swept : 0;
      }
      spdlog::info("sweep.done expired_turns={} expired_event_ids={} expired_audit_records={}",
                   turns.ok() ? *turns : 0, marks.ok() ? *marks : 0, audit);
    });
    ScheduleSweep(rt, timer);
  });
}

// Every 5 s: the escalation desk's SLA timers (synced writes: on the work pool).
void ScheduleDeskTick(Runtime& rt, std::shared_ptr<boost::asio::steady_timer> timer) {
  timer->expires_after(std::chrono::seconds(5));
  timer->async_wait([&rt, timer](boost::system::error_code ec) {
    if (ec) return;
    boost::asio::post(rt.work, [&rt] {
      escalation::DeskResult r = rt.desk->Tick();
      if (!r.status.ok()) {
        spdlog::error("escalation.tick_failed error=\"{}\"", r.status.ToString());
      }
    });
    ScheduleDeskTick(rt, timer);
  });
}

// GET /v1/escalations[?state=S&queue=Q&limit=N] and GET /v1/escalations/ID.
net::HttpResponse EscalationsResponse(Runtime& rt, const net::HttpRequest& req) {
  if (req.method != "GET") return JsonError(405, "method_not_allowed", "use GET");
  const std::string prefix = "/v1/escalations/";
  if (req.path.rfind(prefix, 0) == 0) {
    auto ticket = rt.desk->Get(req.path.substr(prefix.size()));
    if (!ticket.ok()) {
      return ticket.status().code() == Status::Code::kNotFound
                 ? JsonError(404, "not_found", ticket.status().message())
                 : JsonError(503, "unavailable", ticket.status().message());
    }
    return Json(200, json(*ticket));
  }
  escalation::TicketFilter filter;
  for (const auto& [key, value] : ParseQuery(req.query)) {
    if (key == "state") {
      escalation::TicketState state;
      if (value != "open" && !value.empty() && !escalation::ParseState(value, state)) {
        return JsonError(400, "invalid_state",
                         "state must be open, queued, claimed, resolved, returned_to_bot or "
                         "abandoned");
      }
      filter.state = value;
    } else if (key == "queue") {
      filter.queue = value;
    } else if (key == "limit") {
      char* end = nullptr;
      const long n = std::strtol(value.c_str(), &end, 10);
      if (end == value.c_str() || *end != '\0' || n < 1 || n > 10'000) {
        return JsonError(400, "invalid_limit", "limit must be 1..10000");
      }
      filter.limit = static_cast<size_t>(n);
    } else {
      return JsonError(400, "unknown_parameter", "unknown query parameter: " + key);
    }
  }
  auto tickets = rt.desk->List(filter);
  if (!tickets.ok()) return JsonError(503, "unavailable", tickets.status().message());
  return Json(200, json{{"escalations", json(*tickets)}});
}

// Every 10 s: after a burst (thousands of turns waiting on a slow model at once) the allocator
// keeps freed pages, so the daemon's RSS would stay at its peak; ReleaseFreeMemory gives them
// back, on the work pool.
void ScheduleTrim(Runtime& rt, std::shared_ptr<boost::asio::steady_timer> timer) {
  timer->expires_after(std::chrono::seconds(10));
  timer->async_wait([&rt, timer](boost::system::error_code ec) {
    if (ec) return;
    boost::asio::post(rt.work, [] { ReleaseFreeMemory(); });
    ScheduleTrim(rt, timer);
  });
}

// This binary's path, relative to the working directory when inside it, for the banner.
std::string SelfPath() {
  std::error_code ec;
  std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) return "parley";
  std::filesystem::path relative = self.lexically_relative(std::filesystem::current_path(ec));
  if (!relative.empty() && *relative.begin() != "..") return relative.string();
  return self.string();
}

}  // namespace

int Serve(const config::Config& config) {
  Status logging = SetUpLogging(config.log);
  if (!logging.ok()) {
    std::fprintf(stderr, "parley: %s\n", logging.ToString().c_str());
    return 2;
  }
  auto opened = Runtime::Open(config);
  if (!opened.ok()) {
    if (store::IsLockedByOtherProcess(opened.status())) {
      spdlog::critical("start.failed another parley daemon is already using the store {}",
                       config.store.path);
    } else {
      spdlog::critical("start.failed error=\"{}\"", opened.status().ToString());
    }
    return 1;
  }
  Runtime& rt = **opened;
  std::atomic<bool> ready{false};
  std::atomic<bool> stopping{false};

  const std::shared_ptr<net::HttpClient>& http = rt.http;
  std::shared_ptr<webhook::WebhookAdapter> hook;
  if (config.webhook.enabled) {
    hook = std::make_shared<webhook::WebhookAdapter>(rt.io, config.webhook, http, *rt.kv,
                                                     *rt.committer, *rt.control,
                                                     SystemClock::Instance(), rt.metrics);
    rt.replies.Register(*hook);
    if (rt.desk_bridge) hook->SetDeliveryListener(rt.desk_bridge.get());
  }
  console::ConsoleAdapter console(*rt.control, config.console.user, *rt.kv, *rt.committer);
  rt.replies.Register(console);
  // Set by an adapter that cannot go on (e.g. a Slack token refused): the daemon stops, exit 1.
  std::atomic<int> exit_code{0};
  std::function<void(const std::string&)> begin_shutdown;  // assigned below
  std::shared_ptr<slack::SlackAdapter> slack_adapter;
  if (config.slack.enabled) {
    slack_adapter = std::make_shared<slack::SlackAdapter>(
        rt.io, config.slack, http, *rt.kv, *rt.committer, *rt.control, SystemClock::Instance(),
        rt.metrics, [&](Status why) {
          exit_code = 1;
          boost::asio::post(rt.io, [&, why] { begin_shutdown("slack: " + why.message()); });
          // begin_shutdown is assigned before the io threads start, so before this can run.
        });
    rt.replies.Register(*slack_adapter);
    if (rt.desk_bridge) slack_adapter->SetDeliveryListener(rt.desk_bridge.get());
    if (rt.desk_bridge) {
      // The escalation desk on Slack: agents' channels, `/parley human`, users' names.
      slack::SlackAdapter::DeskLink link;
      link.active = true;
      for (const config::EscalationQueueConfig& q : config.escalation.queues) {
        std::string platform, channel;
        if (escalation::SplitAgents(q.agents, platform, channel) && platform == slack::kPlatform) {
          link.agent_channels.push_back(channel);
        }
      }
      slack_adapter->SetDesk(std::move(link));
    }
  }

  std::shared_ptr<matrix::MatrixAdapter> matrix_adapter;
  if (config.matrix.enabled) {
    matrix_adapter = std::make_shared<matrix::MatrixAdapter>(
        rt.io, config.matrix, http, *rt.kv, *rt.committer, *rt.control, SystemClock::Instance(),
        rt.metrics, [&](Status why) {
          exit_code = 1;
          boost::asio::post(rt.io, [&, why] { begin_shutdown("matrix: " + why.message()); });
        });
    rt.replies.Register(*matrix_adapter);
    if (rt.desk_bridge) matrix_adapter->SetDeliveryListener(rt.desk_bridge.get());
  }

  auto ops = [&](const net::HttpRequest& req, net::Responder& respond) -> bool {
    if (req.path == "/healthz") {
      respond(Json(200, {{"status", "ok"}}));
    } else if (req.path == "/readyz") {
      // Ready: the index is loaded and, with Slack on, at least one socket has said hello.
      // With Matrix on, its first sync has been handled.
      const size_t sockets = slack_adapter ? slack_adapter->ReadySockets() : 0;
      const bool matrix_ok = !matrix_adapter || matrix_adapter->Syncing();
      const bool ok =
          ready.load() && !stopping.load() && (!slack_adapter || sockets > 0) && matrix_ok;
      json body{{"status", ok ? "ready" : (stopping.load() ? "stopping" : "starting")},
                {"chunks", rt.index->ChunkCount()}};
      if (slack_adapter) body["slack_sockets"] = sockets;
      if (matrix_adapter) body["matrix_syncing"] = matrix_adapter->Syncing();
      respond(Json(ok ? 200 : 503, body));
    } else if (req.path == "/v1/escalations" || req.path.rfind("/v1/escalations/", 0) == 0) {
      // Reads tickets from the store: on the work pool, not an io thread.
      auto shared = std::make_shared<net::Responder>(std::move(respond));
      boost::asio::post(rt.work, [&rt, req, shared] { (*shared)(EscalationsResponse(rt, req)); });
    } else if (req.path == "/metrics") {
      net::HttpResponse r;
      r.content_type = "text/plain; version=0.0.4";
      r.body = rt.metrics.RenderPrometheus();
      respond(std::move(r));
    } else {
      return false;
    }
    return true;
  };
  const bool separate_admin = !config.server.admin_listen.empty();
  auto public_handler = [&](net::HttpRequest req, net::Responder respond) {
    if (!separate_admin && ops(req, respond)) return;
    if (req.path == "/healthz" && ops(req, respond)) return;
    if (hook && (req.path == "/v1/messages" || req.path == "/v1/forget")) {
      if (!ready.load()) {
        return respond(JsonError(503, "unavailable", "starting: the knowledge index is loading"));
      }
      hook->Handle(req, respond);
      return;
    }
    respond(JsonError(404, "not_found", "no such path: " + req.path));
  };
  auto admin_handler = [&](net::HttpRequest req, net::Responder respond) {
    if (ops(req, respond)) return;
    respond(JsonError(404, "not_found", "no such path: " + req.path));
  };
  auto local_handler = [&](net::HttpRequest req, net::Responder respond) {
    if (ops(req, respond)) return;
    if (req.path == "/v1/local/ingest") {
      if (req.method != "POST") return respond(JsonError(405, "method_not_allowed", "use POST"));
      auto shared = std::make_shared<net::Responder>(std::move(respond));
      boost::asio::post(rt.work, [&rt, shared] {
        auto report = rt.Ingest();
        if (!report.ok()) {
          return (*shared)(JsonError(500, "ingest_failed", report.status().ToString()));
        }
        (*shared)(Json(200, {{"report", DescribeIngest(*report)}}));
      });
      return;
    }
    if (!ready.load()) {
      return respond(JsonError(503, "unavailable", "starting: the knowledge index is loading"));
    }
    if (req.path == "/v1/local/audit") {
      if (req.method != "POST") return respond(JsonError(405, "method_not_allowed", "use POST"));
      json body = json::parse(req.body, nullptr, false);
      if (!body.is_object()) return respond(JsonError(400, "invalid_json", "expected an object"));
      tools::AuditQuery query;
      query.since_ms = body.value("since_ms", int64_t{0});
      query.conversation = body.value("conversation", "");
      query.tool = body.value("tool", "");
      query.limit = body.value("limit", size_t{100});
      // A scan of the audit log may be long: on the work pool, not an io thread.
      auto shared = std::make_shared<net::Responder>(std::move(respond));
      boost::asio::post(rt.work, [&rt, shared, query] {
        auto records = tools::ListAudit(*rt.kv, query);
        if (!records.ok()) {
          return (*shared)(JsonError(500, "store_error", records.status().ToString()));
        }
        (*shared)(Json(200, {{"records", *records}}));
      });
      return;
    }
    if (req.path == "/v1/local/say") {
      // The bot speaks first in a conversation (operators; later the escalation desk).
      if (req.method != "POST") return respond(JsonError(405, "method_not_allowed", "use POST"));
      json body = json::parse(req.body, nullptr, false);
      if (!body.is_object() || !body.contains("conversation") || !body.contains("text") ||
          !body["conversation"].is_string() || !body["text"].is_string() ||
          body["text"].get<std::string>().empty()) {
        return respond(JsonError(422, "invalid_fields",
                                 "conversation and text must be non-empty strings"));
      }
      OutboundMessage message;
      message.id = NewId();
      message.conversation = ConversationKey{body.value("platform", "webhook"),
                                             body["conversation"].get<std::string>(),
                                             body.value("thread", "")};
      message.text = body["text"].get<std::string>();
      auto shared = std::make_shared<net::Responder>(std::move(respond));
      // As the engine does for a reply: the outbox entry first (synced, so on the work pool),
      // then the send; the adapter removes the entry once delivered, so a crash loses nothing.
      boost::asio::post(rt.work, [&rt, shared, message = std::move(message)]() mutable {
        if (rt.replies.DeliversDurably(message)) {
          store::OutboxEntry entry;
          entry.id = message.id;
          entry.platform = message.conversation.platform;
          entry.target = message.reply_route;
          entry.payload = ToJsonText(message);
          entry.created_ms = SystemClock::Instance().NowMs();
          store::WriteBatch batch;
          store::Outbox(*rt.kv).Put(batch, entry);
          Status written = rt.kv->Write(batch, /*sync=*/true);
          if (!written.ok()) return (*shared)(JsonError(503, "store_error", written.ToString()));
        }
        const std::string id = message.id;
        rt.replies.Send(std::move(message), [shared, id](Status status) {
          if (!status.ok()) return (*shared)(JsonError(409, "not_sent", status.message()));
          (*shared)(Json(200, {{"id", id}, {"status", "queued"}}));
        });
      });
      return;
    }
    if (console.HandleLocal(req, respond)) return;
    respond(JsonError(404, "not_found", "no such path: " + req.path));
  };

  net::HttpServerOptions server_options;
  server_options.max_body_bytes = static_cast<size_t>(config.server.max_body_bytes);
  server_options.request_timeout_ms = config.server.request_timeout_ms;
  net::HttpServer public_server(rt.io, server_options, public_handler);
  net::HttpServer admin_server(rt.io, server_options, admin_handler);
  net::HttpServer local_server(rt.io, server_options, local_handler);

  auto host_port = config::SplitHostPort(config.server.listen);
  if (!host_port.ok()) {
    spdlog::critical("start.failed server.listen: {}", host_port.status().message());
    return 2;
  }
  auto port = public_server.ListenTcp(host_port->first, host_port->second);
  if (!port.ok()) {
    spdlog::critical("start.failed cannot listen on {}: {}", config.server.listen,
                     port.status().message());
    return 1;
  }
  json ports{{"listen", *port}};
  if (separate_admin) {
    auto admin_hp = config::SplitHostPort(config.server.admin_listen);
    auto admin_port = admin_hp.ok() ? admin_server.ListenTcp(admin_hp->first, admin_hp->second)
                                    : Result<uint16_t>(admin_hp.status());
    if (!admin_port.ok()) {
      spdlog::critical("start.failed cannot listen on {}: {}", config.server.admin_listen,
                       admin_port.status().message());
      return 1;
    }
    ports["admin"] = *admin_port;
  }
  Status local = local_server.ListenUnix(SocketPath(config));
  if (!local.ok()) {
    spdlog::warn("local_api.unavailable path={} error=\"{}\" (parley ask/chat cannot reach "
                 "this daemon)",
                 SocketPath(config), local.ToString());
  }
  if (!config.server.port_file.empty()) {
    std::ofstream(config.server.port_file + ".tmp") << ports.dump() << "\n";
    std::rename((config.server.port_file + ".tmp").c_str(), config.server.port_file.c_str());
  }

  auto sweep = std::make_shared<boost::asio::steady_timer>(rt.io);
  ScheduleSweep(rt, sweep);
  auto trim = std::make_shared<boost::asio::steady_timer>(rt.io);
  ScheduleTrim(rt, trim);
  auto desk_tick = std::make_shared<boost::asio::steady_timer>(rt.io);
  if (rt.desk->active()) ScheduleDeskTick(rt, desk_tick);

  // SIGTERM/SIGINT: stop accepting, finish turns in flight, flush, exit 0.
  std::promise<void> finished;
  boost::asio::signal_set signals(rt.io, SIGINT, SIGTERM);
  auto deadline = std::make_shared<boost::asio::steady_timer>(rt.io);
  std::atomic<bool> finished_once{false};
  auto finish = [&] {
    if (!finished_once.exchange(true)) finished.set_value();
  };
  std::atomic<bool> shutdown_begun{false};
  begin_shutdown = [&](const std::string& reason) {
    if (shutdown_begun.exchange(true)) return;
    spdlog::info("shutdown.start reason=\"{}\" in_flight={}", reason, rt.router->InFlight());
    stopping = true;
    if (slack_adapter) slack_adapter->StopIntake();  // unacknowledged events go to the next run
    if (matrix_adapter) matrix_adapter->StopIntake();  // an unfinished batch comes again
    public_server.Stop();
    admin_server.Stop();
    local_server.Stop();
    sweep->cancel();
    trim->cancel();
    desk_tick->cancel();
    deadline->expires_after(std::chrono::seconds(10));
    deadline->async_wait([&](boost::system::error_code e) {
      if (e) return;
      spdlog::warn("shutdown.deadline in_flight={}", rt.router->InFlight());
      console.Stop(nullptr);
      finish();
    });
    rt.router->Shutdown([&] {
      if (hook) hook->Stop(nullptr);
      console.Stop(nullptr);  // streamed local asks still open end with an "error" event
      auto drained = [&] {
        spdlog::info("shutdown.drained");
        finish();
      };
      // Each adapter lets its queued replies go out; the daemon finishes when all have.
      auto pending = std::make_shared<std::atomic<int>>(1 + (slack_adapter ? 1 : 0) +
                                                        (matrix_adapter ? 1 : 0));
      auto one_done = [pending, drained] {
        if (pending->fetch_sub(1) == 1) drained();
      };
      if (slack_adapter) slack_adapter->Stop(one_done);
      if (matrix_adapter) matrix_adapter->Stop(one_done);
      one_done();
    });
  };
  signals.async_wait([&](boost::system::error_code ec, int signo) {
    if (ec) return;
    begin_shutdown("signal " + std::to_string(signo));
  });
  rt.StartThreads(config.runtime.threads);

  // Initial ingest off the io threads; adapters start once the index is loaded.
  boost::asio::post(rt.work, [&] {
    auto report = rt.Ingest();
    if (!report.ok()) {
      spdlog::error("ingest.failed error=\"{}\"", report.status().ToString());
    } else {
      spdlog::info("ingest.done files={} indexed={} unchanged={} removed={} chunks={} s={:.2f}",
                   report->files_seen, report->files_indexed, report->files_unchanged,
                   report->files_removed, report->chunks_total, report->seconds);
      for (const std::string& e : report->errors) spdlog::warn("ingest.file_error {}", e);
    }
    // Deliveries owed by an earlier run first, then its unanswered messages (whose replies are
    // new deliveries), then new intake: nothing is answered or delivered twice.
    Status resumed = hook ? hook->ResumeDeliveries() : Status::Ok();
    if (!resumed.ok()) spdlog::error("webhook.resume_failed error=\"{}\"", resumed.ToString());
    resumed = slack_adapter ? slack_adapter->ResumeOutbox() : Status::Ok();
    if (!resumed.ok()) spdlog::error("slack.resume_failed error=\"{}\"", resumed.ToString());
    resumed = matrix_adapter ? matrix_adapter->ResumeOutbox() : Status::Ok();
    if (!resumed.ok()) spdlog::error("matrix.resume_failed error=\"{}\"", resumed.ToString());
    auto replayed = rt.router->ReplayInbox();
    if (!replayed.ok()) spdlog::error("inbox.replay_failed error=\"{}\"", replayed.status().ToString());
    Status started = hook ? hook->Start(*rt.router) : Status::Ok();
    if (!started.ok()) spdlog::error("webhook.start_failed error=\"{}\"", started.ToString());
    started = slack_adapter ? slack_adapter->Start(*rt.router) : Status::Ok();
    if (!started.ok()) spdlog::error("slack.start_failed error=\"{}\"", started.ToString());
    started = matrix_adapter ? matrix_adapter->Start(*rt.router) : Status::Ok();
    if (!started.ok()) spdlog::error("matrix.start_failed error=\"{}\"", started.ToString());
    Status console_started = console.Start(*rt.router);  // loads its mailboxes from the outbox
    if (!console_started.ok()) {
      spdlog::error("console.start_failed error=\"{}\"", console_started.ToString());
    }
    ready = true;
    spdlog::info("ready chunks={}", rt.index->ChunkCount());
  });

  const std::string base = "http://" + host_port->first + ":" + std::to_string(*port);
  spdlog::info("listening url={} local_api={} store={} allocator={}", base, SocketPath(config),
               config.store.path, AllocatorName());
  std::string chat = SelfPath() + " chat";
  if (config.file != "config/parley.toml") chat += " --config " + config.file;
  std::string banner = "\nparley is listening on " + base + "\n  talk to it:   " + chat + "\n";
  if (hook) {
    banner += "  or webhook:   curl -s " + base +
              "/v1/messages -H 'Content-Type: application/json' \\\n"
              "                  -d '{\"conversation\":\"demo\",\"user\":\"me\",\"text\":\"How do I "
              "configure the webhook?\"}'\n";
    if (!config.webhook.secret.empty()) banner += "                (signed: see README)\n";
  }
  if (slack_adapter) banner += "  slack:        connecting (Socket Mode); mention the bot or DM it\n";
  if (matrix_adapter) {
    banner += "  matrix:       " + config.matrix.user_id + " on " + config.matrix.homeserver +
              "; invite it to a room and mention it, or DM it\n";
  }
  banner += "  health:       " + base + "/healthz   metrics: " + base + "/metrics\n\n";
  std::fputs(banner.c_str(), stderr);

  boost::asio::signal_set hangup(rt.io, SIGHUP);
  std::function<void()> wait_hangup = [&] {
    hangup.async_wait([&](boost::system::error_code ec, int) {
      if (ec) return;
      ReopenLogs();
      spdlog::info("log.reopened");
      wait_hangup();
    });
  };
  wait_hangup();
  finished.get_future().wait();
  hangup.cancel();
  rt.committer->Shutdown();
  rt.StopThreads();
  rt.work.join();
  spdlog::info("shutdown.done exit_code={}", exit_code.load());
  spdlog::default_logger()->flush();
  return exit_code.load();
}

}  // namespace parley::app
