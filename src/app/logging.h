#pragma once
// Process-wide logging set-up (spdlog): text or JSON lines, to stderr or a file.

#include "config/config.h"
#include "core/status.h"

namespace parley::app {

Status SetUpLogging(const config::LogConfig& log);

// Reopens the log file (SIGHUP, after rotation). No-op when logging to stderr.
void ReopenLogs();

}  // namespace parley::app
