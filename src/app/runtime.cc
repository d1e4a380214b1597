#include "app/runtime.h"

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <future>
#include <memory>

#include <boost/asio/post.hpp>

#include <spdlog/spdlog.h>

#include "app/ticket_summary.h"
#include "tools/builtin.h"
#include "tools/http_tool.h"

namespace parley::app {

std::string DatabasePath(const config::Config& config) { return config.store.path + "/db"; }
std::string IndexPath(const config::Config& config) { return config.store.path + "/index"; }
std::string SocketPath(const config::Config& config) { return config.store.path + "/parley.sock"; }

void PlatformReplySink::Register(ChannelAdapter& adapter) {
  std::lock_guard<std::mutex> lock(mu_);
  adapters_[adapter.platform()] = &adapter;
}

ChannelAdapter* PlatformReplySink::Find(const std::string& platform) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = adapters_.find(platform);
  return it == adapters_.end() ? nullptr : it->second;
}

bool PlatformReplySink::DeliversDurably(const OutboundMessage& message) const {
  ChannelAdapter* adapter = Find(message.conversation.platform);
  return adapter != nullptr && adapter->DeliversDurably(message);
}

void PlatformReplySink::SendPartial(const OutboundMessage& partial) {
  if (ChannelAdapter* adapter = Find(partial.conversation.platform)) adapter->SendPartial(partial);
}

void PlatformReplySink::Send(OutboundMessage message, DeliveryCallback done) {
  ChannelAdapter* adapter = Find(message.conversation.platform);
  if (adapter == nullptr) {
    spdlog::error("reply.no_adapter platform={} id={}", message.conversation.platform, message.id);
    if (done) done(Status::FailedPrecondition("no adapter for " + message.conversation.platform));
    return;
  }
  adapter->Send(std::move(message), std::move(done));
}

void MemoryControl::Forget(const ConversationKey& conversation, ForgetCallback done) {
  boost::asio::post(work_, [this, conversation, done = std::move(done)] {
    done(memory_.Forget(conversation));
  });
}

void MemoryControl::ForgetUser(const std::string& platform, const std::string& user,
                               ForgetCallback done) {
  boost::asio::post(work_, [this, platform, user, done = std::move(done)] {
    done(memory_.ForgetUser(platform, user));
  });
}

void MemoryControl::OnFeedback(const ConversationKey& conversation, const std::string& user,
                               const std::string& message_id, bool helpful) {
  if (!feedback_) return;
  boost::asio::post(work_, [handler = feedback_, conversation, user, message_id, helpful] {
    handler(conversation, user, message_id, helpful);
  });
}

escalation::DeskOptions DeskOptionsFrom(const config::EscalationConfig& c) {
  escalation::DeskOptions o;
  o.enabled = c.enabled;
  if (c.request_phrases) o.request_phrases = *c.request_phrases;
  if (c.cancel_phrases) o.cancel_phrases = *c.cancel_phrases;
  o.low_confidence_turns = c.low_confidence_turns;
  o.low_confidence = c.low_confidence;
  o.negative_feedback = c.negative_feedback;
  o.utc_offset_minutes = c.utc_offset_minutes;
  o.summary_turns = c.summary_turns;
  o.retention_days = c.retention_days;
  o.sla_renotify_minutes = c.sla_renotify_minutes;
  o.waiting_notice_minutes = c.waiting_notice_minutes;
  for (const config::EscalationQueueConfig& q : c.queues) {
    escalation::QueueOptions queue;
    queue.name = q.name;
    queue.agents = q.agents;
    queue.patterns = q.patterns;
    queue.topics = q.topics;
    queue.channels = q.channels;
    queue.platforms = q.platforms;
    queue.policy = q.policy;
    queue.priority = q.priority;
    queue.sla_minutes = q.sla_minutes;
    queue.business_hours = q.business_hours;
    queue.oncall = q.oncall;
    queue.agent_users = q.agent_users;
    o.queues.push_back(std::move(queue));
  }
  return o;
}

bool DeskBridge::BeforeTurn(const InboundMessage& message) {
  return desk_.BeforeTurn(message).handled;
}

void DeskBridge::AfterTurn(const InboundMessage& message, engine::TurnOutput& out) {
  escalation::TurnInfo info;
  info.outcome = out.outcome;
  info.escalate_topic = out.escalation_topic;
  info.escalate_reason = out.escalation_reason;
  (void)desk_.AfterTurn(message, out.reply, info);
}

void DeskBridge::OnDelivered(const DeliveryReceipt& receipt) {
  // Stored before returning: the adapter forgets the message (its outbox entry) only after this,
  // so a crash cannot lose the thread of a card the platform already shows. Receipts of other
  // messages return at once; a card's costs one synced write on the adapter's thread.
  Status s = desk_.OnDelivered(receipt);
  if (!s.ok()) {
    spdlog::warn("escalation.receipt_failed message={} error=\"{}\"", receipt.message_id,
                 s.ToString());
  }
}

Result<std::unique_ptr<Runtime>> Runtime::Open(const config::Config& config) {
  std::unique_ptr<Runtime> rt(new Runtime());
  rt->config = config;
  std::error_code ec;
  std::filesystem::create_directories(config.store.path, ec);
  if (ec) {
    return Status::IoError("cannot create store directory " + config.store.path + ": " +
                           ec.message());
  }
  auto kv = store::OpenLevelDb(DatabasePath(config));
  if (!kv.ok()) return kv.status();
  rt->kv = std::move(kv.value());
  store::CommitterOptions committer_options;
  committer_options.metrics = &rt->metrics;
  committer_options.min_sync_interval_us = config.store.sync_interval_us;
  rt->committer = std::make_unique<store::Committer>(*rt->kv, committer_options);
  knowledge::IndexOptions index_options;
  index_options.cache_bytes = static_cast<size_t>(config.knowledge.cache_mb) << 20;
  index_options.cache_hits = &rt->metrics.GetCounter(
      "parley_retrieval_cache_total", "Retrievals answered from the result cache, or searched",
      "result=\"hit\"");
  index_options.cache_misses = &rt->metrics.GetCounter(
      "parley_retrieval_cache_total", "Retrievals answered from the result cache, or searched",
      "result=\"miss\"");
  auto index = knowledge::KnowledgeIndex::Open(IndexPath(config), index_options);
  if (!index.ok()) return index.status();
  rt->index = std::move(index.value());
  const Clock& clock = SystemClock::Instance();
  store::MemoryCacheOptions memory_cache;
  memory_cache.max_bytes = static_cast<size_t>(config.store.memory_cache_mb) << 20;
  const char* memory_cache_help =
      "Conversation memory reads answered from the cache of recent turns, or from the store";
  memory_cache.hits =
      &rt->metrics.GetCounter("parley_memory_cache_total", memory_cache_help, "result=\"hit\"");
  memory_cache.misses =
      &rt->metrics.GetCounter("parley_memory_cache_total", memory_cache_help, "result=\"miss\"");
  rt->memory = std::make_unique<store::ConversationMemory>(
      *rt->kv, clock, config.store.retention_days, memory_cache);
  rt->control = std::make_unique<MemoryControl>(*rt->memory, rt->work);
  rt->engine = std::make_unique<engine::Engine>(*rt->index, *rt->memory, clock, config.engine,
                                                config.knowledge.grants, rt->metrics);
  engine::RouterOptions router_options;
  router_options.policy = config.policy;
  router_options.dedupe_ttl_ms = int64_t{config.store.dedupe_hours} * 3600 * 1000;
  rt->router = std::make_unique<engine::Router>(rt->io, *rt->engine, *rt->kv, *rt->committer,
                                                rt->replies, clock, router_options, rt->metrics);
  auto desk = escalation::Desk::Open(DeskOptionsFrom(config.escalation), *rt->kv, rt->replies,
                                     clock, rt->metrics, rt->memory.get());
  if (!desk.ok()) return desk.status();
  rt->desk = std::move(desk.value());
  if (rt->desk->active()) {
    rt->desk_bridge = std::make_unique<DeskBridge>(*rt->desk);
    rt->router->SetHooks(rt->desk_bridge.get());
    escalation::Desk* desk_ptr = rt->desk.get();
    rt->control->SetFeedbackHandler([desk_ptr](const ConversationKey& conversation,
                                               const std::string& user,
                                               const std::string& message_id, bool helpful) {
      if (helpful) return;
      escalation::FeedbackEvent feedback;
      feedback.conversation = conversation;
      feedback.user = user;
      feedback.message_id = message_id;
      escalation::DeskResult r = desk_ptr->OnNegativeFeedback(feedback);
      if (!r.status.ok()) {
        spdlog::error("escalation.feedback_failed error=\"{}\"", r.status.ToString());
      }
    });
  }
  rt->http = net::MakeCurlHttpClient(rt->io);
  if (config.llm.enabled) {
    Status llm = rt->EnableLlm();
    if (!llm.ok()) return llm;
  }
  return rt;
}

Status Runtime::EnableLlm() {
  const config::LlmConfig& c = config.llm;
  llm::LlmOptions options;
  options.base_url = c.base_url;
  options.api_key = c.api_key;
  options.model = c.model;
  options.temperature = c.temperature;
  options.max_tokens = c.max_tokens;
  options.headers = c.headers;
  options.connect_timeout_ms = c.connect_timeout_ms;
  options.first_token_timeout_ms = c.first_token_timeout_ms;
  options.idle_timeout_ms = c.idle_timeout_ms;
  options.total_timeout_ms = c.total_timeout_ms;
  options.max_retries = c.max_retries;
  options.breaker_failures = c.breaker_failures;
  options.breaker_cooldown_ms = c.breaker_cooldown_ms;
  options.max_concurrent = c.max_concurrent;
  llm_client = llm::MakeOpenAiClient(io, http, options, metrics);

  tool_registry = std::make_unique<tools::ToolRegistry>();
  if (config.tools.enabled) {
    std::vector<std::pair<std::shared_ptr<tools::Tool>, tools::ToolRules>> enabled;
    if (config.tools.search_knowledge) {
      enabled.emplace_back(tools::MakeSearchKnowledgeTool(io, *index, 5), tools::ToolRules{});
    }
    // Offered only when there are people to hand over to (an active escalation desk).
    if (config.tools.escalate_to_human && desk != nullptr && desk->active()) {
      enabled.emplace_back(tools::MakeEscalateTool(io), tools::ToolRules{});
    }
    for (const config::HttpToolConfig& spec : config.tools.http) {
      auto tool = tools::MakeHttpTool(spec, http);
      if (!tool.ok()) return tool.status();
      tools::ToolRules rules;
      rules.confirm = spec.confirm;
      rules.allow_channels = spec.allow_channels;
      rules.allow_users = spec.allow_users;
      rules.redact = spec.redact;
      rules.timeout_ms = spec.timeout_ms + 1000;  // the tool's own HTTP timeout fires first
      enabled.emplace_back(std::move(tool).value(), std::move(rules));
    }
    for (auto& [tool, rules] : enabled) {
      Status added = tool_registry->Add(std::move(tool), std::move(rules));
      if (!added.ok()) return added;
    }
  }
  const Clock& clock = SystemClock::Instance();
  tool_policy = std::make_unique<tools::ToolPolicy>(io, *tool_registry, *committer, clock, metrics);
  engine::LlmDeps deps;
  deps.io = &io;
  deps.client = llm_client;
  deps.registry = tool_registry.get();
  deps.policy = tool_policy.get();
  deps.kv = kv.get();
  deps.llm = config.llm;
  deps.tools = config.tools;
  engine->EnableLlm(std::move(deps));
  if (config.escalation.llm_summary && desk != nullptr && desk->active()) {
    desk->SetSummarizer(MakeLlmSummarizer(llm_client, work));
  }
  return Status::Ok();
}

Runtime::~Runtime() {
  StopThreads();
  work.join();
  if (committer) committer->Shutdown();
}

void Runtime::StartThreads(int n) {
  if (n <= 0) n = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  guard_ = std::make_unique<
      boost::asio::executor_work_guard<boost::asio::io_context::executor_type>>(
      io.get_executor());
  for (int i = 0; i < n; ++i) {
    threads_.emplace_back([this] {
      for (;;) {
        try {
          io.run();
          return;
        } catch (const std::exception& e) {
          // A handler let an exception escape: a bug. Log it and keep the thread serving.
          spdlog::critical("io.handler_exception error=\"{}\"", e.what());
        }
      }
    });
  }
}

void Runtime::StopThreads() {
  if (http != nullptr && !threads_.empty()) {
    // Requests still waiting on the network (an LLM call a turn gave up on, a delivery) end now,
    // while the io threads can still run their callbacks: nothing is left holding memory.
    auto stopped = std::make_shared<std::promise<void>>();
    std::future<void> waited = stopped->get_future();
    http->Shutdown([stopped] { stopped->set_value(); });
    if (waited.wait_for(std::chrono::seconds(2)) != std::future_status::ready) {
      spdlog::warn("shutdown.http_client_slow");
    }
  }
  guard_.reset();
  io.stop();
  for (std::thread& t : threads_) {
    if (t.joinable()) t.join();
  }
  threads_.clear();
}

Result<knowledge::IngestReport> Runtime::Ingest() {
  std::vector<knowledge::SourceSpec> sources;
  for (const config::KnowledgeSource& s : config.knowledge.sources) {
    sources.push_back(knowledge::SourceSpec{s.path, s.tags, s.url_base});
  }
  knowledge::ChunkOptions options;
  options.target_chars = static_cast<size_t>(config.knowledge.chunk_target_chars);
  options.max_chars = static_cast<size_t>(config.knowledge.chunk_max_chars);
  return index->Ingest(sources, options);
}

std::string DescribeIngest(const knowledge::IngestReport& r) {
  char line[256];
  std::snprintf(line, sizeof(line),
                "%zu files seen: %zu indexed, %zu unchanged, %zu removed; %zu chunks in the index "
                "(%.2f s)",
                r.files_seen, r.files_indexed, r.files_unchanged, r.files_removed, r.chunks_total,
                r.seconds);
  std::string out = line;
  for (const std::string& f : r.indexed_files) out += "\n  indexed " + f;
  for (const std::string& e : r.errors) out += "\n  error: " + e;
  return out;
}

}  // namespace parley::app
