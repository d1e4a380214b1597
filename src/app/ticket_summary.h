#pragma once
// The escalation desk's ticket summaries written by the model (Desk::Summarizer over the LLM
// client): one short, non-streamed completion per ticket, from the ticket's reason and
// transcript.
// Thread-safety: the summarizer is thread-safe; answers reach the desk on the work pool (the desk
// writes to the store then, which must not happen on an io thread).

#include <memory>

#include <boost/asio/thread_pool.hpp>

#include "escalation/desk.h"
#include "escalation/ticket.h"
#include "llm/chat.h"
#include "llm/client.h"

namespace parley::app {

// The request for one ticket: a system prompt asking for a hand-over note of at most three
// sentences, then the reason and the transcript (the latest 30 entries, each clipped).
llm::ChatRequest TicketSummaryRequest(const escalation::Ticket& ticket);

// A summarizer asking `client`; `client` and `work` must outlive the calls it starts.
escalation::Desk::Summarizer MakeLlmSummarizer(std::shared_ptr<llm::LlmClient> client,
                                               boost::asio::thread_pool& work);

}  // namespace parley::app
