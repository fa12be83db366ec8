#include "common/logging.h"

#include <charconv>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <map>
#include <mutex>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "spdlog/sinks/stdout_sinks.h"

namespace keel::common {
namespace {

// The fields of the LogEvent running on this thread. spdlog's synchronous
// loggers format inside logger.log(), on the caller's thread, so the
// formatter can read them here instead of from the payload.
thread_local const nlohmann::json* t_fields = nullptr;

struct LoggingState {
  std::mutex mu;
  LogOptions options;
  spdlog::sink_ptr sink;  // shared by every keel logger
  std::map<std::string, std::shared_ptr<spdlog::logger>> loggers;
  bool default_logger_installed = false;
};

// Never destroyed: loggers may be used from static destructors.
LoggingState& State() {
  static LoggingState* state = [] {
    auto* s = new LoggingState;
    s->sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
    s->sink->set_formatter(MakeLogFormatter(s->options.format));
    return s;
  }();
  return *state;
}

std::string Dump(const nlohmann::json& j) {
  // Replace invalid UTF-8 rather than throw: a log line must never fail.
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

void Append(spdlog::memory_buf_t& dest, std::string_view s) {
  dest.append(s.data(), s.data() + s.size());
}

std::string_view ZapLevel(spdlog::level::level_enum level) {
  switch (level) {
    case spdlog::level::trace:
    case spdlog::level::debug:
      return "debug";
    case spdlog::level::info:
      return "info";
    case spdlog::level::warn:
      return "warn";
    case spdlog::level::err:
      return "error";
    case spdlog::level::critical:
      return "fatal";
    default:
      return "info";
  }
}

char LevelLetter(spdlog::level::level_enum level) {
  switch (level) {
    case spdlog::level::trace:
      return 'T';
    case spdlog::level::debug:
      return 'D';
    case spdlog::level::info:
      return 'I';
    case spdlog::level::warn:
      return 'W';
    case spdlog::level::err:
      return 'E';
    case spdlog::level::critical:
      return 'C';
    default:
      return 'I';
  }
}

// Unix seconds as zap's epoch encoder prints them: float64 seconds in the
// shortest 'f' form that round-trips (1795236271.1800752).
std::string EpochSeconds(std::chrono::system_clock::time_point t) {
  const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch());
  const double seconds = static_cast<double>(ns.count()) / 1e9;
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), seconds, std::chars_format::fixed);
  if (ec != std::errc()) return "0";
  return std::string(buf, end);
}

// 2026-11-21T04:41:46.123Z
std::string Rfc3339Millis(std::chrono::system_clock::time_point t) {
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch());
  const std::time_t secs = static_cast<std::time_t>(ms.count() / 1000);
  int millis = static_cast<int>(ms.count() % 1000);
  std::time_t whole = secs;
  if (millis < 0) {
    millis += 1000;
    whole -= 1;
  }
  std::tm tm{};
  gmtime_r(&whole, &tm);
  char buf[64];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
  char out[80];
  std::snprintf(out, sizeof(out), "%s.%03dZ", buf, millis);
  return out;
}

// A field value in text format: strings bare unless they need quoting.
std::string TextValue(const nlohmann::json& v) {
  if (v.is_string()) {
    const std::string& s = v.get_ref<const std::string&>();
    if (!s.empty() && s.find_first_of(" \"=\t\n\r\\") == std::string::npos) return s;
  }
  return Dump(v);
}

class KeelFormatter final : public spdlog::formatter {
 public:
  explicit KeelFormatter(LogFormat format) : format_(format) {}

  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    const std::string_view module(msg.logger_name.data(), msg.logger_name.size());
    const std::string_view text(msg.payload.data(), msg.payload.size());
    const nlohmann::json* fields = t_fields;
    if (format_ == LogFormat::kJson) {
      Append(dest, "{\"level\":\"");
      Append(dest, ZapLevel(msg.level));
      Append(dest, "\",\"ts\":");
      Append(dest, EpochSeconds(msg.time));
      Append(dest, ",\"caller\":");
      Append(dest, Dump(std::string(module)));
      Append(dest, ",\"msg\":");
      Append(dest, Dump(std::string(text)));
      if (fields != nullptr && fields->is_object()) {
        for (const auto& [key, value] : fields->items()) {
          Append(dest, ",");
          Append(dest, Dump(key));
          Append(dest, ":");
          Append(dest, Dump(value));
        }
      } else if (fields != nullptr && !fields->is_null()) {
        Append(dest, ",\"fields\":");
        Append(dest, Dump(*fields));
      }
      Append(dest, "}\n");
      return;
    }
    Append(dest, Rfc3339Millis(msg.time));
    Append(dest, " ");
    dest.push_back(LevelLetter(msg.level));
    Append(dest, " | ");
    Append(dest, module);
    Append(dest, ": ");
    Append(dest, text);
    if (fields != nullptr && fields->is_object()) {
      for (const auto& [key, value] : fields->items()) {
        Append(dest, " ");
        Append(dest, key);
        Append(dest, "=");
        Append(dest, TextValue(value));
      }
    } else if (fields != nullptr && !fields->is_null()) {
      Append(dest, " fields=");
      Append(dest, Dump(*fields));
    }
    Append(dest, "\n");
  }

  std::unique_ptr<spdlog::formatter> clone() const override {
    return std::make_unique<KeelFormatter>(format_);
  }

 private:
  LogFormat format_;
};

// REQUIRES: state.mu held.
void InstallDefaultLoggerLocked(LoggingState& state) {
  auto logger = std::make_shared<spdlog::logger>("keel", state.sink);
  logger->set_level(state.options.level);
  spdlog::set_default_logger(std::move(logger));
  state.default_logger_installed = true;
}

}  // namespace

std::unique_ptr<spdlog::formatter> MakeLogFormatter(LogFormat format) {
  return std::make_unique<KeelFormatter>(format);
}

void SetupLogging(const LogOptions& options) {
  LoggingState& state = State();
  std::lock_guard<std::mutex> lock(state.mu);
  state.options = options;
  state.sink->set_formatter(MakeLogFormatter(options.format));
  for (auto& [name, logger] : state.loggers) logger->set_level(options.level);
  InstallDefaultLoggerLocked(state);
}

absl::StatusOr<LogFormat> ParseLogFormat(std::string_view text) {
  if (text == "json") return LogFormat::kJson;
  if (text == "text") return LogFormat::kText;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown log format \"", ToAbsl(text), "\" (want \"json\" or \"text\")"));
}

std::shared_ptr<spdlog::logger> Logger(const std::string& module) {
  LoggingState& state = State();
  std::lock_guard<std::mutex> lock(state.mu);
  auto it = state.loggers.find(module);
  if (it != state.loggers.end()) return it->second;
  auto logger = std::make_shared<spdlog::logger>(module, state.sink);
  logger->set_level(state.options.level);
  state.loggers.emplace(module, logger);
  return logger;
}

void LogEvent(spdlog::logger& logger, spdlog::level::level_enum level, std::string_view msg,
              const nlohmann::json& fields) {
  if (!logger.should_log(level)) return;
  const nlohmann::json* previous = t_fields;
  t_fields = &fields;
  logger.log(level, spdlog::string_view_t(msg.data(), msg.size()));
  t_fields = previous;
}

void SetLogSinkForTest(spdlog::sink_ptr sink) {
  LoggingState& state = State();
  std::lock_guard<std::mutex> lock(state.mu);
  state.sink = sink ? std::move(sink) : std::make_shared<spdlog::sinks::stderr_sink_mt>();
  state.sink->set_formatter(MakeLogFormatter(state.options.format));
  for (auto& [name, logger] : state.loggers) logger->sinks() = {state.sink};
  if (state.default_logger_installed) InstallDefaultLoggerLocked(state);
}

}  // namespace keel::common
