#include "app/ticket_summary.h"

#include <string>
#include <utility>

#include <boost/asio/post.hpp>

#include "core/utf8.h"

namespace parley::app {
namespace {

constexpr size_t kEntries = 30;       // the latest transcript entries shown to the model
constexpr size_t kEntryChars = 1000;  // each clipped to this many bytes

std::string Clip(const std::string& s, size_t n) {
  if (s.size() <= n) return s;
  return std::string(Utf8Prefix(s, n)) + "…";
}

std::string Speaker(const escalation::TranscriptEntry& e) {
  if (e.role == "user") return "User" + (e.who.empty() ? "" : " (" + e.who + ")");
  if (e.role == "bot") return "Bot";
  if (e.role == "agent") return "Agent" + (e.who.empty() ? "" : " (" + e.who + ")");
  return "";  // notes and system lines are not the conversation
}

}  // namespace

llm::ChatRequest TicketSummaryRequest(const escalation::Ticket& t) {
  llm::ChatRequest request;
  request.stream = false;
  request.messages.push_back(
      {"system",
       "You write the hand-over note a human support agent reads before taking over a "
       "conversation from a bot. In at most three short sentences say what the user needs, what "
       "was already tried or answered, and anything urgent. Use only facts from the "
       "conversation; plain text, no greeting, no headings.",
       {},
       ""});
  std::string text = "Why it was handed over: " + t.reason;
  if (!t.detail.empty()) text += " (" + Clip(t.detail, 200) + ")";
  text += "\n\nConversation:\n";
  const size_t from = t.transcript.size() > kEntries ? t.transcript.size() - kEntries : 0;
  for (size_t i = from; i < t.transcript.size(); ++i) {
    const std::string who = Speaker(t.transcript[i]);
    if (!who.empty()) text += who + ": " + Clip(t.transcript[i].text, kEntryChars) + "\n";
  }
  request.messages.push_back({"user", std::move(text), {}, ""});
  return request;
}

escalation::Desk::Summarizer MakeLlmSummarizer(std::shared_ptr<llm::LlmClient> client,
                                               boost::asio::thread_pool& work) {
  return [client = std::move(client), &work](const escalation::Ticket& ticket,
                                             escalation::Desk::SummaryCallback done) {
    client->Complete(
        TicketSummaryRequest(ticket), [](std::string_view) {},
        [&work, done = std::move(done)](Result<llm::ChatResult> result) {
          Result<std::string> summary =
              result.ok() ? Result<std::string>(std::move(result->content))
                          : Result<std::string>(result.status());
          boost::asio::post(work, [done, summary = std::move(summary)]() mutable {
            done(std::move(summary));
          });
        });
  };
}

}  // namespace parley::app
