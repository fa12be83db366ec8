#include "common/logging.h"

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "spdlog/sinks/ostream_sink.h"
#include "tests/testutil/process.h"

namespace keel::common {
namespace {

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

double NowSeconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// Captures every keel logger into `out` with the given options; restores
// stderr and the defaults at the end of the test.
class LoggingTest : public ::testing::Test {
 protected:
  void Capture(LogFormat format, spdlog::level::level_enum level = spdlog::level::info) {
    SetupLogging(LogOptions{format, level});
    SetLogSinkForTest(std::make_shared<spdlog::sinks::ostream_sink_mt>(out_));
  }
  void TearDown() override {
    SetLogSinkForTest(nullptr);
    SetupLogging(LogOptions{});
  }
  std::ostringstream out_;
};

TEST_F(LoggingTest, JsonLineHasZapShape) {
  Capture(LogFormat::kJson);
  const double before = NowSeconds();
  LogEvent(*Logger("gateway"), spdlog::level::info, "ready to proxy client requests",
           {{"endpoints", {"127.0.0.1:2379"}}});
  const double after = NowSeconds();
  std::vector<std::string> lines = Lines(out_.str());
  ASSERT_EQ(lines.size(), 1u) << out_.str();
  const std::string& line = lines[0];
  EXPECT_EQ(line.rfind("{\"level\":\"info\",\"ts\":", 0), 0u) << line;
  EXPECT_NE(line.find(",\"caller\":\"gateway\",\"msg\":\"ready to proxy client requests\","
                      "\"endpoints\":[\"127.0.0.1:2379\"]}"),
            std::string::npos)
      << line;
  nlohmann::json j = nlohmann::json::parse(line);
  EXPECT_EQ(j["level"], "info");
  EXPECT_EQ(j["caller"], "gateway");
  EXPECT_EQ(j["msg"], "ready to proxy client requests");
  EXPECT_EQ(j["endpoints"], nlohmann::json::array({"127.0.0.1:2379"}));
  ASSERT_TRUE(j["ts"].is_number_float()) << line;
  EXPECT_GE(j["ts"].get<double>(), before - 0.001);
  EXPECT_LE(j["ts"].get<double>(), after + 0.001);
  // Sub-second precision, like zap's float seconds.
  EXPECT_TRUE(std::regex_search(line, std::regex(R"("ts":\d{10}\.\d+,)"))) << line;
}

TEST_F(LoggingTest, JsonLevelNamesFollowZap) {
  Capture(LogFormat::kJson, spdlog::level::debug);
  auto logger = Logger("grpc-proxy");
  LogEvent(*logger, spdlog::level::debug, "d");
  LogEvent(*logger, spdlog::level::warn, "w");
  LogEvent(*logger, spdlog::level::err, "e");
  LogEvent(*logger, spdlog::level::critical, "c");
  std::vector<std::string> lines = Lines(out_.str());
  ASSERT_EQ(lines.size(), 4u) << out_.str();
  EXPECT_EQ(nlohmann::json::parse(lines[0])["level"], "debug");
  EXPECT_EQ(nlohmann::json::parse(lines[1])["level"], "warn");
  EXPECT_EQ(nlohmann::json::parse(lines[2])["level"], "error");
  EXPECT_EQ(nlohmann::json::parse(lines[3])["level"], "fatal");
}

TEST_F(LoggingTest, TextLineIsCapnslogLike) {
  Capture(LogFormat::kText);
  LogEvent(*Logger("gateway"), spdlog::level::info, "ready to proxy client requests",
           {{"endpoints", {"127.0.0.1:2379"}}, {"port", 23790}, {"name", "a b"}, {"id", "x1"}});
  LogEvent(*Logger("gateway"), spdlog::level::warn, "deactivated endpoint");
  std::vector<std::string> lines = Lines(out_.str());
  ASSERT_EQ(lines.size(), 2u) << out_.str();
  EXPECT_TRUE(std::regex_match(
      lines[0], std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z I \| gateway: )"
                           R"(ready to proxy client requests endpoints=\["127\.0\.0\.1:2379"\] )"
                           R"(id=x1 name="a b" port=23790)")))
      << lines[0];
  EXPECT_TRUE(std::regex_match(lines[1], std::regex(R"(\S+Z W \| gateway: deactivated endpoint)")))
      << lines[1];
}

TEST_F(LoggingTest, DisabledLevelLogsNothingAndSkipsFields) {
  Capture(LogFormat::kJson, spdlog::level::info);
  auto logger = Logger("gateway");
  LogEvent(*logger, spdlog::level::debug, "hidden", {{"k", 1}});
  int built = 0;
  auto fields = [&built] {
    ++built;
    return nlohmann::json{{"k", 1}};
  };
  KEEL_LOG_EVENT(*logger, spdlog::level::debug, "hidden too", fields());
  EXPECT_EQ(built, 0);
  EXPECT_EQ(out_.str(), "");
  KEEL_LOG_EVENT(*logger, spdlog::level::info, "shown", fields());
  KEEL_LOG_EVENT(*logger, spdlog::level::info, "no fields");
  EXPECT_EQ(built, 1);
  std::vector<std::string> lines = Lines(out_.str());
  ASSERT_EQ(lines.size(), 2u) << out_.str();
  EXPECT_EQ(nlohmann::json::parse(lines[0])["k"], 1);
  EXPECT_EQ(nlohmann::json::parse(lines[1])["msg"], "no fields");
}

TEST_F(LoggingTest, SetupLoggingChangesLevelOfExistingLoggers) {
  Capture(LogFormat::kJson, spdlog::level::info);
  auto logger = Logger("member");
  EXPECT_FALSE(logger->should_log(spdlog::level::debug));
  SetupLogging(LogOptions{LogFormat::kJson, spdlog::level::debug});
  EXPECT_TRUE(logger->should_log(spdlog::level::debug));
  EXPECT_EQ(Logger("member").get(), logger.get());
}

TEST_F(LoggingTest, PlainSpdlogCallsUseTheSameFormat) {
  Capture(LogFormat::kJson);
  Logger("proxy")->info("started {} listeners", 2);
  spdlog::warn("from the default logger");
  std::vector<std::string> lines = Lines(out_.str());
  ASSERT_EQ(lines.size(), 2u) << out_.str();
  nlohmann::json first = nlohmann::json::parse(lines[0]);
  EXPECT_EQ(first["msg"], "started 2 listeners");
  EXPECT_EQ(first["caller"], "proxy");
  nlohmann::json second = nlohmann::json::parse(lines[1]);
  EXPECT_EQ(second["level"], "warn");
  EXPECT_EQ(second["caller"], "keel");
}

TEST_F(LoggingTest, EscapesAndSurvivesBadUtf8) {
  Capture(LogFormat::kJson);
  LogEvent(*Logger("gateway"), spdlog::level::info, "quote \" newline \n bad \xff",
           {{"v", "\xfe"}});
  std::vector<std::string> lines = Lines(out_.str());
  ASSERT_EQ(lines.size(), 1u) << out_.str();
  nlohmann::json j = nlohmann::json::parse(lines[0]);
  EXPECT_EQ(j["msg"].get<std::string>().rfind("quote \" newline \n bad ", 0), 0u);
}

TEST_F(LoggingTest, FormatterWorksOnOwnLogger) {
  std::ostringstream out;
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(out);
  sink->set_formatter(MakeLogFormatter(LogFormat::kJson));
  spdlog::logger logger("core", sink);
  LogEvent(logger, spdlog::level::info, "hello", {{"n", 3}});
  nlohmann::json j = nlohmann::json::parse(out.str());
  EXPECT_EQ(j["caller"], "core");
  EXPECT_EQ(j["msg"], "hello");
  EXPECT_EQ(j["n"], 3);
}

TEST(ParseLogFormat, AcceptsJsonAndText) {
  EXPECT_EQ(*ParseLogFormat("json"), LogFormat::kJson);
  EXPECT_EQ(*ParseLogFormat("text"), LogFormat::kText);
  EXPECT_EQ(ParseLogFormat("xml").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseLogFormat("").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(LoggingStderr, DefaultSinkIsStderr) {
  testutil::TempDir dir;
  const std::string path = dir.File("stderr.txt");
  SetupLogging(LogOptions{LogFormat::kJson, spdlog::level::info});
  SetLogSinkForTest(nullptr);
  fflush(stderr);
  const int saved = dup(STDERR_FILENO);
  ASSERT_GE(saved, 0);
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(dup2(fd, STDERR_FILENO), STDERR_FILENO);
  close(fd);
  LogEvent(*Logger("gateway"), spdlog::level::info, "to stderr", {{"x", 1}});
  fflush(stderr);
  dup2(saved, STDERR_FILENO);
  close(saved);
  std::ifstream in(path);
  std::stringstream got;
  got << in.rdbuf();
  std::vector<std::string> lines = Lines(got.str());
  ASSERT_EQ(lines.size(), 1u) << got.str();
  EXPECT_EQ(nlohmann::json::parse(lines[0])["msg"], "to stderr");
}

}  // namespace
}  // namespace keel::common
