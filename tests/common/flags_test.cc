#include "common/flags.h"

#include <stdlib.h>

#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace keel::common {
namespace {

// Parses argv (without the program name) and returns the error text, or ""
// when parsing succeeded.
std::string Parse(CLI::App& app, std::vector<std::string> args) {
  args.insert(args.begin(), "prog");
  std::vector<const char*> argv;
  for (const std::string& a : args) argv.push_back(a.c_str());
  try {
    app.parse(static_cast<int>(argv.size()), argv.data());
  } catch (const CLI::ParseError& e) {
    return e.what();
  }
  return "";
}

// Sets an environment variable for the life of the object.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) { setenv(name, value, 1); }
  ~ScopedEnv() { unsetenv(name_); }

 private:
  const char* name_;
};

TEST(AddDurationFlag, ParsesGoDurations) {
  CLI::App app;
  absl::Duration d = absl::Minutes(1);
  AddDurationFlag(app, "--retry-delay", &d, "delay");
  EXPECT_EQ(Parse(app, {"--retry-delay=1.5s"}), "");
  EXPECT_EQ(d, absl::Milliseconds(1500));

  CLI::App app2;
  absl::Duration d2 = absl::Minutes(1);
  AddDurationFlag(app2, "--retry-delay", &d2, "delay");
  EXPECT_EQ(Parse(app2, {"--retry-delay", "2h3m"}), "");
  EXPECT_EQ(d2, absl::Hours(2) + absl::Minutes(3));
}

TEST(AddDurationFlag, KeepsDefaultWhenAbsent) {
  CLI::App app;
  absl::Duration d = absl::Minutes(1);
  AddDurationFlag(app, "--retry-delay", &d, "delay");
  EXPECT_EQ(Parse(app, {}), "");
  EXPECT_EQ(d, absl::Minutes(1));
}

TEST(AddDurationFlag, LastOccurrenceWins) {
  CLI::App app;
  absl::Duration d = absl::Minutes(1);
  AddDurationFlag(app, "--retry-delay", &d, "delay");
  EXPECT_EQ(Parse(app, {"--retry-delay=1s", "--retry-delay=2s"}), "");
  EXPECT_EQ(d, absl::Seconds(2));
}

TEST(AddDurationFlag, BadValueHasEtcdWording) {
  CLI::App app;
  absl::Duration d = absl::Minutes(1);
  AddDurationFlag(app, "--retry-delay", &d, "delay");
  EXPECT_EQ(Parse(app, {"--retry-delay=123"}),
            "invalid argument \"123\" for \"--retry-delay\" flag: "
            "time: missing unit in duration \"123\"");
  EXPECT_EQ(d, absl::Minutes(1));

  CLI::App app2;
  AddDurationFlag(app2, "--retry-delay", &d, "delay");
  EXPECT_EQ(Parse(app2, {"--retry-delay", "1d"}),
            "invalid argument \"1d\" for \"--retry-delay\" flag: "
            "time: unknown unit \"d\" in duration \"1d\"");

  CLI::App app3;
  AddDurationFlag(app3, "-r,--retry-delay", &d, "delay");
  EXPECT_EQ(Parse(app3, {"-r", "x"}),
            "invalid argument \"x\" for \"-r, --retry-delay\" flag: time: invalid duration \"x\"");
}

TEST(AddDurationFlag, HelpShowsGoFormattedDefault) {
  CLI::App app;
  absl::Duration d = absl::Minutes(1);
  CLI::Option* opt = AddDurationFlag(app, "--retry-delay", &d, "retry delay");
  EXPECT_EQ(opt->get_default_str(), "1m0s");
  EXPECT_NE(app.help().find("1m0s"), std::string::npos) << app.help();
  EXPECT_NE(app.help().find("--retry-delay"), std::string::npos);

  CLI::App app2;
  absl::Duration d2 = absl::Milliseconds(500);
  AddDurationFlag(app2, "--dial-timeout", &d2, "timeout");
  EXPECT_NE(app2.help().find("500ms"), std::string::npos) << app2.help();
}

TEST(ReportParseError, PrintsCobraStyleErrorAndReturnsOne) {
  CLI::App app("etcd gateway start");
  absl::Duration d = absl::Minutes(1);
  AddDurationFlag(app, "--retry-delay", &d, "delay");
  std::vector<const char*> argv = {"prog", "--retry-delay=123"};
  std::ostringstream out;
  std::ostringstream err;
  int code = -1;
  try {
    app.parse(static_cast<int>(argv.size()), argv.data());
  } catch (const CLI::ParseError& e) {
    code = ReportParseError(app, e, out, err);
  }
  EXPECT_EQ(code, 1);
  EXPECT_EQ(out.str(), "");
  const std::string msg =
      "invalid argument \"123\" for \"--retry-delay\" flag: time: missing unit in duration \"123\"";
  EXPECT_EQ(err.str().rfind("Error: " + msg + "\n", 0), 0u) << err.str();
  EXPECT_NE(err.str().find("--retry-delay"), std::string::npos);
  EXPECT_EQ(err.str().substr(err.str().size() - msg.size() - 1), msg + "\n");
}

TEST(ReportParseError, HelpGoesToOutWithZero) {
  CLI::App app("tool");
  absl::Duration d = absl::Minutes(1);
  AddDurationFlag(app, "--retry-delay", &d, "delay");
  std::vector<const char*> argv = {"prog", "--help"};
  std::ostringstream out;
  std::ostringstream err;
  int code = -1;
  try {
    app.parse(static_cast<int>(argv.size()), argv.data());
  } catch (const CLI::ParseError& e) {
    code = ReportParseError(app, e, out, err);
  }
  EXPECT_EQ(code, 0);
  EXPECT_NE(out.str().find("--retry-delay"), std::string::npos);
  EXPECT_EQ(err.str(), "");
}

TEST(ReportParseError, UnknownFlagFails) {
  CLI::App app("tool");
  std::vector<const char*> argv = {"prog", "--no-such-flag"};
  std::ostringstream out;
  std::ostringstream err;
  int code = -1;
  try {
    app.parse(static_cast<int>(argv.size()), argv.data());
  } catch (const CLI::ParseError& e) {
    code = ReportParseError(app, e, out, err);
  }
  EXPECT_EQ(code, 1);
  EXPECT_EQ(err.str().rfind("Error: unknown flag: --no-such-flag\n", 0), 0u) << err.str();
}

// The cobra text for a failed parse of `args` against a gateway-like app.
std::string CobraText(std::vector<std::string> args) {
  CLI::App app("tool");
  std::string listen_addr;
  absl::Duration d = absl::Minutes(1);
  app.add_option("--listen-addr", listen_addr, "listen");
  AddDurationFlag(app, "--retry-delay", &d, "delay");
  args.insert(args.begin(), "prog");
  std::vector<const char*> argv;
  for (const std::string& a : args) argv.push_back(a.c_str());
  try {
    app.parse(static_cast<int>(argv.size()), argv.data());
  } catch (const CLI::ParseError& e) {
    return CobraErrorText(e);
  }
  return "parsed";
}

TEST(CobraErrorText, MapsCommonErrorsToCobraWording) {
  EXPECT_EQ(CobraText({"--foo"}), "unknown flag: --foo");
  EXPECT_EQ(CobraText({"--foo=bar"}), "unknown flag: --foo");
  EXPECT_EQ(CobraText({"-x"}), "unknown shorthand flag: 'x' in -x");
  EXPECT_EQ(CobraText({"--listen-addr"}), "flag needs an argument: --listen-addr");
  EXPECT_EQ(CobraText({"--retry-delay=5"}),
            "invalid argument \"5\" for \"--retry-delay\" flag: "
            "time: missing unit in duration \"5\"");
  EXPECT_EQ(CobraText({"--retry-delay=5s"}), "parsed");
}

TEST(BindEtcdEnv, ReadsEtcdVariables) {
  ScopedEnv listen("ETCD_LISTEN_ADDR", "127.0.0.1:1234");
  ScopedEnv delay("ETCD_RETRY_DELAY", "5s");
  ScopedEnv insecure("ETCD_INSECURE_DISCOVERY", "true");
  CLI::App app;
  std::string listen_addr = "127.0.0.1:23790";
  absl::Duration d = absl::Minutes(1);
  bool insecure_discovery = false;
  app.add_option("--listen-addr", listen_addr, "listen");
  AddDurationFlag(app, "--retry-delay", &d, "delay");
  app.add_flag("--insecure-discovery", insecure_discovery, "insecure");
  BindEtcdEnv(app);
  EXPECT_EQ(app.get_option("--listen-addr")->get_envname(), "ETCD_LISTEN_ADDR");
  EXPECT_EQ(app.get_option("--retry-delay")->get_envname(), "ETCD_RETRY_DELAY");
  EXPECT_EQ(app.get_help_ptr()->get_envname(), "");
  EXPECT_EQ(Parse(app, {}), "");
  EXPECT_EQ(listen_addr, "127.0.0.1:1234");
  EXPECT_EQ(d, absl::Seconds(5));
  EXPECT_TRUE(insecure_discovery);
}

TEST(BindEtcdEnv, CommandLineWinsOverEnvironment) {
  ScopedEnv listen("ETCD_LISTEN_ADDR", "127.0.0.1:1234");
  ScopedEnv delay("ETCD_RETRY_DELAY", "5s");
  CLI::App app;
  std::string listen_addr;
  absl::Duration d = absl::Minutes(1);
  app.add_option("--listen-addr", listen_addr, "listen");
  AddDurationFlag(app, "--retry-delay", &d, "delay");
  BindEtcdEnv(app);
  EXPECT_EQ(Parse(app, {"--listen-addr=127.0.0.1:9", "--retry-delay=7s"}), "");
  EXPECT_EQ(listen_addr, "127.0.0.1:9");
  EXPECT_EQ(d, absl::Seconds(7));
}

TEST(BindEtcdEnv, BadEnvironmentValueUsesFlagWording) {
  ScopedEnv delay("ETCD_RETRY_DELAY", "123");
  CLI::App app;
  absl::Duration d = absl::Minutes(1);
  AddDurationFlag(app, "--retry-delay", &d, "delay");
  BindEtcdEnv(app);
  EXPECT_EQ(Parse(app, {}),
            "invalid argument \"123\" for \"--retry-delay\" flag: "
            "time: missing unit in duration \"123\"");
}

TEST(BindEtcdEnv, CoversOptionGroupsNotSubcommands) {
  CLI::App app;
  std::string a;
  std::string b;
  std::string c;
  app.add_option_group("tls")->add_option("--trusted-ca-file", a, "ca");
  CLI::App* sub = app.add_subcommand("start", "start it");
  sub->add_option("--listen-addr", b, "listen");
  app.add_option("--data-dir", c, "dir");
  BindEtcdEnv(app);
  EXPECT_EQ(app.get_option("--data-dir")->get_envname(), "ETCD_DATA_DIR");
  EXPECT_EQ(app.get_option("--trusted-ca-file")->get_envname(), "ETCD_TRUSTED_CA_FILE");
  EXPECT_EQ(sub->get_option("--listen-addr")->get_envname(), "");
}

}  // namespace
}  // namespace keel::common
