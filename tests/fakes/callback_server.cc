#include "tests/fakes/callback_server.h"

#include <chrono>

namespace parley::testing {

CallbackServer::CallbackServer() : guard_(io_.get_executor()) {
  server_ = std::make_unique<net::HttpServer>(
      io_, net::HttpServerOptions{}, [this](net::HttpRequest req, net::Responder respond) {
        ReceivedCallback cb{req.path, req.headers, req.body, 200};
        net::HttpResponse r;
        {
          std::lock_guard<std::mutex> lock(mu_);
          if (fail_next_ > 0) {
            --fail_next_;
            cb.answered_status = fail_status_;
            if (fail_retry_after_ > 0) {
              r.headers.emplace_back("Retry-After", std::to_string(fail_retry_after_));
            }
          }
          received_.push_back(cb);
        }
        cv_.notify_all();
        r.status = cb.answered_status;
        r.body = "{}";
        respond(std::move(r));
      });
  port_ = server_->ListenTcp("127.0.0.1", 0).value();
  thread_ = std::thread([this] { io_.run(); });
}

CallbackServer::~CallbackServer() {
  server_->Stop();
  guard_.reset();
  io_.stop();
  thread_.join();
}

std::string CallbackServer::Url(const std::string& path) const {
  return "http://127.0.0.1:" + std::to_string(port_) + path;
}

void CallbackServer::FailNext(int n, int status, int retry_after) {
  std::lock_guard<std::mutex> lock(mu_);
  fail_next_ = n;
  fail_status_ = status;
  fail_retry_after_ = retry_after;
}

std::vector<ReceivedCallback> CallbackServer::Received() const {
  std::lock_guard<std::mutex> lock(mu_);
  return received_;
}

std::vector<ReceivedCallback> CallbackServer::Delivered() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<ReceivedCallback> out;
  for (const auto& r : received_) {
    if (r.answered_status >= 200 && r.answered_status < 300) out.push_back(r);
  }
  return out;
}

bool CallbackServer::WaitDelivered(size_t n, int timeout_ms) const {
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms), [&] {
    size_t ok = 0;
    for (const auto& r : received_) ok += (r.answered_status >= 200 && r.answered_status < 300);
    return ok >= n;
  });
}

bool CallbackServer::WaitUntil(
    const std::function<bool(const std::vector<ReceivedCallback>&)>& pred, int timeout_ms) const {
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms), [&] {
    std::vector<ReceivedCallback> delivered;
    for (const auto& r : received_) {
      if (r.answered_status >= 200 && r.answered_status < 300) delivered.push_back(r);
    }
    return pred(delivered);
  });
}

}  // namespace parley::testing
