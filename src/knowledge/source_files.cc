#include "knowledge/source_files.h"

#include <openssl/evp.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <system_error>

#include "knowledge/document.h"

namespace parley::knowledge::internal {

namespace fs = std::filesystem;

std::string SourceIdentity(const std::string& path) {
  std::error_code ec;
  fs::path p = fs::weakly_canonical(fs::absolute(path, ec), ec);
  if (ec || p.empty()) return path;
  return p.generic_string();
}

bool IsIngestibleFile(std::string_view path) {
  const std::string ext = LowercaseExtension(path);
  return ext == "md" || ext == "markdown" || ext == "txt" || ext == "html" || ext == "htm" ||
         ext == "xhtml";
}

std::vector<SourceFile> ListSourceFiles(const std::string& root, std::vector<std::string>& errors,
                                        bool& root_ok) {
  std::vector<SourceFile> files;
  root_ok = false;
  std::error_code ec;
  const fs::path root_path(root);
  fs::file_status status = fs::status(root_path, ec);
  if (ec || !fs::exists(status)) {
    errors.push_back(root + ": source not found" + (ec ? " (" + ec.message() + ")" : ""));
    return files;
  }
  if (fs::is_regular_file(status)) {
    root_ok = true;
    if (IsIngestibleFile(root)) {
      files.push_back(SourceFile{root, root_path.filename().generic_string(), root});
    } else {
      errors.push_back(root + ": not a .md/.markdown/.txt/.html/.htm file");
    }
    return files;
  }
  if (!fs::is_directory(status)) {
    errors.push_back(root + ": neither a file nor a directory");
    return files;
  }
  fs::recursive_directory_iterator it(root_path, fs::directory_options::skip_permission_denied, ec);
  if (ec) {
    errors.push_back(root + ": cannot list directory (" + ec.message() + ")");
    return files;
  }
  root_ok = true;
  const fs::recursive_directory_iterator end;
  while (it != end) {
    const fs::directory_entry& entry = *it;
    const std::string name = entry.path().filename().string();
    std::error_code entry_ec;
    if (!name.empty() && name[0] == '.') {
      if (entry.is_directory(entry_ec)) it.disable_recursion_pending();
    } else if (IsIngestibleFile(name) &&
               (entry.is_regular_file(entry_ec) ||
                (entry.is_symlink(entry_ec) && !entry.exists(entry_ec)))) {
      // A dangling symlink is listed so that reading it reports the problem.
      fs::path rel = entry.path().lexically_relative(root_path);
      files.push_back(SourceFile{entry.path().string(), rel.generic_string(),
                                 (root_path / rel).generic_string()});
    }
    it.increment(ec);
    if (ec) {
      errors.push_back(root + ": error while listing (" + ec.message() + ")");
      break;
    }
  }
  std::sort(files.begin(), files.end(),
            [](const SourceFile& a, const SourceFile& b) { return a.relative < b.relative; });
  return files;
}

Result<std::string> ReadWholeFile(const std::string& path, size_t max_bytes) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::IoError(path + ": cannot open (" + std::strerror(errno) + ")");
  std::string data;
  char buffer[1 << 16];
  while (in) {
    in.read(buffer, sizeof(buffer));
    std::streamsize got = in.gcount();
    if (got <= 0) break;
    data.append(buffer, static_cast<size_t>(got));
    if (data.size() > max_bytes) {
      return Status::ResourceExhausted(path + ": larger than " + std::to_string(max_bytes) +
                                       " bytes");
    }
  }
  if (in.bad()) return Status::IoError(path + ": read error");
  return data;
}

std::string Sha256Hex(std::string_view data) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_Digest(data.data(), data.size(), digest, &len, EVP_sha256(), nullptr) != 1) {
    // OpenSSL failing to hash in memory is a broken environment, not a recoverable error.
    std::abort();
  }
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(len * 2);
  for (unsigned int i = 0; i < len; ++i) {
    out.push_back(kHex[digest[i] >> 4]);
    out.push_back(kHex[digest[i] & 0xF]);
  }
  return out;
}

}  // namespace parley::knowledge::internal
