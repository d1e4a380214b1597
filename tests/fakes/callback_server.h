#pragma once
// A receiver for the webhook's signed callbacks (a stand-in for a customer's reply_url endpoint):
// records every POST, verifies nothing itself, and can be told to fail the next N requests with a
// given status (and Retry-After) to exercise retries. Binds 127.0.0.1 on a free port.
// Thread-safety: thread-safe.

#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>

#include "net/http.h"

namespace parley::testing {

struct ReceivedCallback {
  std::string path;
  net::Headers headers;
  std::string body;
  int answered_status = 0;
};

class CallbackServer {
 public:
  CallbackServer();
  ~CallbackServer();

  uint16_t port() const { return port_; }
  std::string Url(const std::string& path = "/callback") const;
  // The next n requests are answered with status (and Retry-After: retry_after when > 0).
  void FailNext(int n, int status, int retry_after = 0);
  // Every request so far, in arrival order, failed ones included.
  std::vector<ReceivedCallback> Received() const;
  // Requests answered 2xx.
  std::vector<ReceivedCallback> Delivered() const;
  // Waits until at least n requests were answered 2xx, up to timeout_ms. Returns whether they were.
  bool WaitDelivered(size_t n, int timeout_ms) const;
  // Waits until pred(requests answered 2xx, in arrival order) is true, up to timeout_ms; returns
  // whether it was. pred runs under the server's lock on every arrival: it must be quick and must
  // not call back into the server.
  bool WaitUntil(const std::function<bool(const std::vector<ReceivedCallback>&)>& pred,
                 int timeout_ms) const;

 private:
  boost::asio::io_context io_;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> guard_;
  std::unique_ptr<net::HttpServer> server_;
  std::thread thread_;
  uint16_t port_ = 0;
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  std::vector<ReceivedCallback> received_;
  int fail_next_ = 0;
  int fail_status_ = 500;
  int fail_retry_after_ = 0;
};

}  // namespace parley::testing
