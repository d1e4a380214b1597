#include "tests/support/daemon_process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

namespace parley::testing {
namespace {

using Clock = std::chrono::steady_clock;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Polls every 20 ms: waiting on an external process has no event to block on.
template <typename F>
bool PollUntil(int timeout_ms, F done) {
  auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  while (Clock::now() < deadline) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return done();
}

pid_t Spawn(const std::vector<std::string>& args, const std::map<std::string, std::string>& env,
            int stdin_fd, int stdout_fd, int stderr_fd) {
  pid_t pid = fork();
  if (pid != 0) return pid;
  if (stdin_fd >= 0) dup2(stdin_fd, 0);
  if (stdout_fd >= 0) dup2(stdout_fd, 1);
  if (stderr_fd >= 0) dup2(stderr_fd, 2);
  for (const auto& [k, v] : env) setenv(k.c_str(), v.c_str(), 1);
  std::vector<char*> argv;
  std::string binary = ParleyBinary();
  argv.push_back(binary.data());
  std::vector<std::string> copy = args;
  for (std::string& a : copy) argv.push_back(a.data());
  argv.push_back(nullptr);
  execv(binary.c_str(), argv.data());
  _exit(127);
}

int WaitExit(pid_t pid, int timeout_ms) {
  int status = 0;
  bool done = PollUntil(timeout_ms, [&] { return waitpid(pid, &status, WNOHANG) == pid; });
  if (!done) return -1;
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

}  // namespace

std::string ParleyBinary() {
  const char* p = std::getenv("PARLEY_BINARY");
  return p ? p : "parley";
}

std::string SourceDir() {
  const char* p = std::getenv("PARLEY_SOURCE_DIR");
  return p ? p : ".";
}

CommandResult RunParley(const std::vector<std::string>& args, const std::string& input,
                        int timeout_ms, const std::map<std::string, std::string>& env) {
  char out_path[] = "/tmp/parley-out-XXXXXX";
  char err_path[] = "/tmp/parley-err-XXXXXX";
  char in_path[] = "/tmp/parley-in-XXXXXX";
  int out_fd = mkstemp(out_path), err_fd = mkstemp(err_path), in_fd = mkstemp(in_path);
  (void)!write(in_fd, input.data(), input.size());
  lseek(in_fd, 0, SEEK_SET);
  pid_t pid = Spawn(args, env, in_fd, out_fd, err_fd);
  CommandResult result;
  result.exit_code = WaitExit(pid, timeout_ms);
  if (result.exit_code == -1) {
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
  }
  close(out_fd);
  close(err_fd);
  close(in_fd);
  result.out = ReadFile(out_path);
  result.err = ReadFile(err_path);
  unlink(out_path);
  unlink(err_path);
  unlink(in_path);
  return result;
}

DaemonProcess::DaemonProcess(std::string config_path, std::string port_file, std::string log_path,
                             std::map<std::string, std::string> env)
    : config_path_(std::move(config_path)),
      port_file_(std::move(port_file)),
      log_path_(std::move(log_path)),
      env_(std::move(env)) {}

DaemonProcess::~DaemonProcess() { Kill(); }

bool DaemonProcess::Start(int timeout_ms) {
  unlink(port_file_.c_str());
  int log_fd = open(log_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  int null_fd = open("/dev/null", O_RDONLY);
  pid_ = Spawn({"serve", "--config", config_path_}, env_, null_fd, log_fd, log_fd);
  close(log_fd);
  close(null_fd);
  port_ = 0;
  return PollUntil(timeout_ms, [&] {
    if (!Running()) return true;  // exited: give up early
    if (port_ == 0) {
      auto j = nlohmann::json::parse(ReadFile(port_file_), nullptr, false);
      if (!j.is_object() || !j.contains("listen")) return false;
      port_ = j["listen"].get<uint16_t>();
      // With server.admin_listen, readiness is served on the admin listener.
      ready_port_ = j.contains("admin") ? j["admin"].get<uint16_t>() : port_;
    }
    net::ClientRequest req;
    req.url = "http://127.0.0.1:" + std::to_string(ready_port_) + "/readyz";
    req.timeout_ms = 1000;
    auto r = net::BlockingRequest(req);
    return r.ok() && r->status == 200;
  }) && Running();
}

bool DaemonProcess::Running() {
  if (pid_ <= 0) return false;
  int status = 0;
  if (waitpid(pid_, &status, WNOHANG) == pid_) {
    pid_ = -1;
    exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return false;
  }
  return true;
}

int DaemonProcess::WaitExited(int timeout_ms) {
  PollUntil(timeout_ms, [&] { return !Running(); });
  return Running() ? -1 : exit_code_;
}

int DaemonProcess::Terminate(int timeout_ms) {
  if (pid_ <= 0) return -1;
  kill(pid_, SIGTERM);
  int code = WaitExit(pid_, timeout_ms);
  if (code == -1) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  pid_ = -1;
  return code;
}

void DaemonProcess::Kill() {
  if (pid_ <= 0) return;
  kill(pid_, SIGKILL);
  waitpid(pid_, nullptr, 0);
  pid_ = -1;
}

std::string DaemonProcess::Url(const std::string& path) const {
  return "http://127.0.0.1:" + std::to_string(port_) + path;
}

std::string DaemonProcess::Log() const { return ReadFile(log_path_); }

Result<net::ClientResponse> DaemonProcess::Post(const std::string& path, const std::string& body,
                                                const net::Headers& headers, int timeout_ms) {
  net::ClientRequest req;
  req.method = "POST";
  req.url = Url(path);
  req.body = body;
  req.headers = headers;
  req.headers.emplace_back("Content-Type", "application/json");
  req.timeout_ms = timeout_ms;
  return net::BlockingRequest(std::move(req));
}

Result<net::ClientResponse> DaemonProcess::Get(const std::string& path) {
  net::ClientRequest req;
  req.url = Url(path);
  return net::BlockingRequest(std::move(req));
}

}  // namespace parley::testing
