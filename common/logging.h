#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "spdlog/spdlog.h"

namespace keel::common {

enum class LogFormat { kJson, kText };

struct LogOptions {
  LogFormat format = LogFormat::kJson;  // etcd 3.4's gateway/proxy log zap JSON
  spdlog::level::level_enum level = spdlog::level::info;
};

// Configures every keel logger: output to stderr, format and level. Call once
// at start-up, before other threads log. Thread-safe afterwards.
void SetupLogging(const LogOptions& options);

// Parses "json"/"text" (InvalidArgument otherwise).
absl::StatusOr<LogFormat> ParseLogFormat(std::string_view text);

// The named logger of one module ("gateway", "grpc-proxy", ...), created on
// first use with the current options. Thread-safe.
std::shared_ptr<spdlog::logger> Logger(const std::string& module);

// Logs one structured event. JSON format renders, on one line,
//   {"level":"info","ts":<unix seconds, float>,"caller":"<module>","msg":"<msg>",<fields...>}
// the shape etcd's zap logger prints; text format renders
//   <time> <L> | <module>: <msg> key=value ...
// so operators' scripts that grep for the message work in both.
void LogEvent(spdlog::logger& logger, spdlog::level::level_enum level, std::string_view msg,
              const nlohmann::json& fields = nlohmann::json::object());

}  // namespace keel::common
