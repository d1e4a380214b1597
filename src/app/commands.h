#pragma once
// The subcommands of the `parley` binary. Each returns the process exit code:
// 0 success, 1 runtime failure, 2 usage or configuration error.

#include <string>
#include <vector>

#include "config/config.h"

namespace parley::app {

int Serve(const config::Config& config);
int Ask(const config::Config& config, const std::string& question,
        const std::string& conversation, bool json);
int Chat(const config::Config& config, const std::string& conversation);
int IngestCommand(const config::Config& config);
int CheckConfig(const config::Config& config);
int Say(const config::Config& config, const std::string& platform,
        const std::string& conversation, const std::string& thread, const std::string& text);

// Parses argv and dispatches.
int Main(int argc, char** argv);

}  // namespace parley::app
