#pragma once
// Runs the real `parley` binary for end-to-end tests: writes a config into a temp directory,
// starts `parley serve` on 127.0.0.1 port 0, learns the port from server.port_file, and waits for
// /readyz by polling with a deadline. Also runs one-shot subcommands and captures their output.

#include <sys/types.h>

#include <map>
#include <string>
#include <vector>

#include "net/http.h"

namespace parley::testing {

// Path of the parley binary under test (PARLEY_BINARY, set by ctest).
std::string ParleyBinary();
// The source tree (PARLEY_SOURCE_DIR, set by ctest).
std::string SourceDir();

struct CommandResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};

// Runs the binary with args (stdin from `input`), waits up to timeout_ms, returns its output.
CommandResult RunParley(const std::vector<std::string>& args, const std::string& input = "",
                        int timeout_ms = 60'000, const std::map<std::string, std::string>& env = {});

class DaemonProcess {
 public:
  // config_path: a config whose server.port_file is port_file.
  DaemonProcess(std::string config_path, std::string port_file, std::string log_path,
                std::map<std::string, std::string> env = {});
  ~DaemonProcess();  // kills the process if still running

  // Starts and waits until /readyz answers 200 (or the process exits, or timeout). Returns ready.
  bool Start(int timeout_ms = 30'000);
  // SIGTERM and wait; returns the exit status (-1 on timeout, then killed).
  int Terminate(int timeout_ms = 20'000);
  // SIGKILL and reap.
  void Kill();
  bool Running();
  // Waits (polling) until the process has exited by itself; its exit code (128 + signal when
  // killed by one), or -1 when still running at the deadline.
  int WaitExited(int timeout_ms);

  uint16_t port() const { return port_; }
  std::string Url(const std::string& path) const;
  std::string Log() const;

  // A request to this daemon; headers as given.
  Result<net::ClientResponse> Post(const std::string& path, const std::string& body,
                                   const net::Headers& headers = {}, int timeout_ms = 10'000);
  Result<net::ClientResponse> Get(const std::string& path);

 private:
  std::string config_path_;
  std::string port_file_;
  std::string log_path_;
  std::map<std::string, std::string> env_;
  pid_t pid_ = -1;
  uint16_t port_ = 0;
  uint16_t ready_port_ = 0;
  int exit_code_ = -1;
};

}  // namespace parley::testing
