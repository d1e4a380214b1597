#pragma once
// Files and the small knowledge base the end-to-end tests share. For tests.

#include <filesystem>
#include <fstream>
#include <string>

namespace parley::testing {

inline void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream(path) << text;
}

// Writes frobnicator.md (Linux: apt; Windows: MSI), widget.md (Linux: tarball; macOS:
// Applications) and billing.md (refunds: fourteen days) into dir (created).
inline void WriteSampleKnowledge(const std::string& dir) {
  std::filesystem::create_directories(dir);
  WriteFile(dir + "/frobnicator.md",
            "# Installing the Frobnicator\n\nThe Frobnicator ships for two systems.\n\n"
            "## On Linux\n\nInstall the frobnicator package with apt: run `apt install "
            "frobnicator` as root. The service starts on its own.\n\n"
            "## On Windows\n\nDownload the Frobnicator MSI installer from the portal and run it "
            "as an administrator.\n");
  WriteFile(dir + "/widget.md",
            "# Installing the Widget\n\n## On Linux\n\nThe widget is a tarball: unpack "
            "widget.tar.gz into /opt and run widget-setup.\n\n## On macOS\n\nDrag the widget "
            "app into Applications.\n");
  WriteFile(dir + "/billing.md",
            "# Billing\n\n## Refunds\n\nRefunds are paid back to the original card within "
            "fourteen days of the request.\n");
}

}  // namespace parley::testing
