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

// Configures every keel logger: output to stderr, format and level. Applies
// to loggers already handed out by Logger() too, and makes spdlog's default
// logger (spdlog::info(...)) write the same format as module "keel". Call
// once at start-up, before other threads log. Thread-safe afterwards.
void SetupLogging(const LogOptions& options);

// Parses "json"/"text" (InvalidArgument otherwise).
absl::StatusOr<LogFormat> ParseLogFormat(std::string_view text);

// The named logger of one module ("gateway", "grpc-proxy", ...), created on
// first use with the current options. Plain spdlog calls on it
// (logger->info("x {}", 1)) render in the same format, without fields.
// Thread-safe.
std::shared_ptr<spdlog::logger> Logger(const std::string& module);

// Logs one structured event. JSON format renders, on one line,
//   {"level":"info","ts":<unix seconds, float>,"caller":"<module>","msg":"<msg>",<fields...>}
// the shape etcd's zap logger prints (levels "debug", "info", "warn",
// "error", and "fatal" for spdlog's critical; trace prints as "debug");
// text format renders
//   2026-11-21T04:41:46.123Z I | <module>: <msg> key=value ...
// (capnslog-like; level letters T D I W E C) so operators' scripts that grep
// for the message work in both. Fields print in key order; a non-object
// `fields` prints under "fields". Returns at once if `level` is disabled on
// `logger`; use KEEL_LOG_EVENT to also skip building `fields`.
// The fields reach the line only through a keel formatter (the loggers of
// Logger(), or any sink given MakeLogFormatter()). Thread-safe.
void LogEvent(spdlog::logger& logger, spdlog::level::level_enum level, std::string_view msg,
              const nlohmann::json& fields = nlohmann::json::object());

// Like LogEvent(logger, level, msg[, fields]) but evaluates `fields` only if
// `level` is enabled. `logger` is an spdlog::logger lvalue (e.g. *Logger("x")).
#define KEEL_LOG_EVENT(keel_logger, keel_level, keel_msg, ...)       \
  do {                                                               \
    ::spdlog::logger& keel_log_event_logger_ = (keel_logger);        \
    if (keel_log_event_logger_.should_log(keel_level)) {             \
      ::keel::common::LogEvent(keel_log_event_logger_, keel_level,   \
                               keel_msg __VA_OPT__(, ) __VA_ARGS__); \
    }                                                                \
  } while (false)

// A formatter rendering lines as described at LogEvent, for sinks outside
// the keel loggers (e.g. a test's ostream sink). Thread-compatible, as every
// spdlog formatter (sinks lock around it).
std::unique_ptr<spdlog::formatter> MakeLogFormatter(LogFormat format);

// Test hook: sends every keel logger (existing and future, and spdlog's
// default logger once SetupLogging ran) to `sink` instead of stderr, with the
// current format set on it; nullptr restores stderr. Example:
//   std::ostringstream out;
//   SetLogSinkForTest(std::make_shared<spdlog::sinks::ostream_sink_mt>(out));
// Not safe while other threads log; call from the test's main thread.
void SetLogSinkForTest(spdlog::sink_ptr sink);

}  // namespace keel::common
