#include "common/flags.h"

#include <memory>

#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "common/duration.h"
#include "common/go_quote.h"

namespace keel::common {
namespace {

// How pflag names a flag in its errors: "--name", or "-n, --name" when the
// flag has a shorthand.
std::string PflagName(const CLI::Option& opt) {
  std::string name;
  if (!opt.get_snames().empty()) name = absl::StrCat("-", opt.get_snames().front(), ", ");
  if (!opt.get_lnames().empty()) {
    absl::StrAppend(&name, "--", opt.get_lnames().front());
  } else if (!opt.get_snames().empty()) {
    name = absl::StrCat("-", opt.get_snames().front());
  } else {
    name = opt.get_name();
  }
  return name;
}

void BindOptionsEnv(CLI::App& app) {
  for (CLI::Option* opt : app.get_options()) {
    if (opt->get_lnames().empty()) continue;
    if (opt == app.get_help_ptr() || opt == app.get_help_all_ptr()) continue;
    const std::string& lname = opt->get_lnames().front();
    if (lname == "version") continue;
    opt->envname(
        absl::StrCat("ETCD_", absl::AsciiStrToUpper(absl::StrReplaceAll(lname, {{"-", "_"}}))));
  }
  // Option groups are unnamed subcommands holding options of this app.
  for (CLI::App* sub : app.get_subcommands([](CLI::App* s) { return s->get_name().empty(); })) {
    BindOptionsEnv(*sub);
  }
}

}  // namespace

CLI::Option* AddDurationFlag(CLI::App& app, const std::string& name, absl::Duration* target,
                             const std::string& description) {
  // The callback needs the option's own names, known only once it exists.
  auto flag_name = std::make_shared<std::string>();
  CLI::callback_t callback = [target, flag_name](const CLI::results_t& results) {
    const std::string value = results.empty() ? std::string() : results.back();
    absl::StatusOr<absl::Duration> d = ParseGoDuration(value);
    if (!d.ok()) {
      // pflag: `invalid argument %q for %q flag: %v`. CLI11 passes a callback's
      // ValidationError through unchanged (validators would prefix the name).
      throw CLI::ValidationError(absl::StrCat("invalid argument ", GoQuote(value), " for ",
                                              GoQuote(*flag_name),
                                              " flag: ", d.status().message()));
    }
    *target = *d;
    return true;
  };
  CLI::Option* opt = app.add_option(name, std::move(callback), description);
  *flag_name = PflagName(*opt);
  opt->type_name("duration");
  opt->type_size(1);
  opt->expected(1);
  opt->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  opt->default_str(FormatGoDuration(*target));
  return opt;
}

void BindEtcdEnv(CLI::App& app) { BindOptionsEnv(app); }

std::string CobraErrorText(const CLI::ParseError& e) {
  const std::string what = e.what();
  if (dynamic_cast<const CLI::ExtrasError*>(&e) != nullptr) {
    // CLI11: "The following argument(s) was/were not expected: <args...>".
    const size_t colon = what.find(": ");
    if (colon != std::string::npos) {
      std::string arg = what.substr(colon + 2);
      arg = arg.substr(0, arg.find(' '));
      if (arg.rfind("--", 0) == 0 && arg.size() > 2) {
        return absl::StrCat("unknown flag: ", arg.substr(0, arg.find('=')));
      }
      if (arg.size() > 1 && arg[0] == '-') {
        return absl::StrCat("unknown shorthand flag: '", arg.substr(1, 1), "' in ", arg);
      }
    }
    return what;
  }
  if (dynamic_cast<const CLI::ArgumentMismatch*>(&e) != nullptr) {
    // CLI11: "--name: 1 required TYPE missing".
    const size_t colon = what.find(": ");
    if (colon != std::string::npos && what.rfind("-", 0) == 0 &&
        what.find(" required ", colon) != std::string::npos && what.size() >= 8 &&
        what.compare(what.size() - 8, 8, " missing") == 0) {
      return absl::StrCat("flag needs an argument: ", what.substr(0, colon));
    }
  }
  return what;
}

int ReportParseError(const CLI::App& app, const CLI::ParseError& e, std::ostream& out,
                     std::ostream& err) {
  const std::string kind = e.get_name();
  if (kind == "CallForHelp" || kind == "CallForAllHelp" || kind == "CallForVersion" ||
      e.get_exit_code() == static_cast<int>(CLI::ExitCodes::Success)) {
    app.exit(e, out, err);
    return 0;
  }
  const std::string msg = CobraErrorText(e);
  err << "Error: " << msg << "\n" << app.help() << "\n" << msg << "\n" << std::flush;
  return 1;
}

}  // namespace keel::common
