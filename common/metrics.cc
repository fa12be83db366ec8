#include "common/metrics.h"

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"

namespace keel::common {

struct MetricsRegistry::Family {
  std::string help;
  std::string type;  // "counter" or "gauge"
  std::map<Labels, std::unique_ptr<Counter>> counters;
  std::map<Labels, std::unique_ptr<Gauge>> gauges;
  std::map<Labels, std::function<double()>> callbacks;
};

namespace {

bool ValidName(const std::string& name, bool allow_colon) {
  if (name.empty()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
                    (allow_colon && c == ':') || (i > 0 && c >= '0' && c <= '9');
    if (!ok) return false;
  }
  return true;
}

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "keel metrics: %s\n", what.c_str());
  std::abort();
}

void CheckLabels(const std::string& name, const Labels& labels) {
  for (const auto& [label, value] : labels) {
    if (!ValidName(label, /*allow_colon=*/false) || label.rfind("__", 0) == 0) {
      Die(absl::StrCat("invalid label name \"", label, "\" for metric ", name));
    }
  }
}

// HELP text escaping: backslash and newline.
std::string EscapeHelp(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

// Label value escaping: backslash, double quote and newline.
std::string EscapeLabelValue(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

std::string RenderLabels(const Labels& labels) {
  if (labels.empty()) return "";
  std::string out = "{";
  bool first = true;
  for (const auto& [k, v] : labels) {
    if (!first) out += ",";
    first = false;
    absl::StrAppend(&out, k, "=\"", EscapeLabelValue(v), "\"");
  }
  out += "}";
  return out;
}

// Go's strconv.FormatFloat(v, 'g', -1, 64), which Prometheus' Go client
// uses: the shortest digits that round-trip, in exponent form when the
// decimal exponent is < -4 or >= 6 ("1.79523642e+09", "123456", "0.0001").
std::string FormatFloat(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (v == 0) return std::signbit(v) ? "-0" : "0";
  char sci[64];
  auto [sci_end, ec] = std::to_chars(sci, sci + sizeof(sci), v, std::chars_format::scientific);
  if (ec != std::errc()) return "NaN";
  const std::string s(sci, sci_end);
  const int exp = std::atoi(s.c_str() + s.find('e') + 1);
  // Both Go and to_chars print at least two exponent digits ("e+06").
  if (exp < -4 || exp >= 6) return s;
  char fixed[400];
  auto [fixed_end, fec] = std::to_chars(fixed, fixed + sizeof(fixed), v, std::chars_format::fixed);
  if (fec != std::errc()) return s;
  return std::string(fixed, fixed_end);
}

bool ReadFile(const char* path, std::string& out) {
  std::ifstream in(path);
  if (!in) return false;
  std::stringstream ss;
  ss << in.rdbuf();
  out = ss.str();
  return true;
}

// Fields of /proc/self/stat after the ")" closing the command name; index 0
// is field 3 (state) of proc(5).
bool ReadProcStat(std::vector<std::string>& fields) {
  std::string text;
  if (!ReadFile("/proc/self/stat", text)) return false;
  const size_t close = text.rfind(')');
  if (close == std::string::npos) return false;
  std::istringstream in(text.substr(close + 1));
  fields.clear();
  for (std::string f; in >> f;) fields.push_back(f);
  return fields.size() > 20;
}

double StatField(int field_number) {
  std::vector<std::string> fields;
  if (!ReadProcStat(fields)) return NAN;
  return std::strtod(fields[static_cast<size_t>(field_number - 3)].c_str(), nullptr);
}

double ClockTicks() { return static_cast<double>(sysconf(_SC_CLK_TCK)); }

double CpuSeconds() {
  std::vector<std::string> fields;
  if (!ReadProcStat(fields)) return NAN;
  const double utime = std::strtod(fields[14 - 3].c_str(), nullptr);
  const double stime = std::strtod(fields[15 - 3].c_str(), nullptr);
  return (utime + stime) / ClockTicks();
}

double ResidentBytes() {
  std::string text;
  if (!ReadFile("/proc/self/statm", text)) return NAN;
  std::istringstream in(text);
  double size = 0;
  double resident = 0;
  if (!(in >> size >> resident)) return NAN;
  return resident * static_cast<double>(sysconf(_SC_PAGESIZE));
}

double OpenFds() {
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return NAN;
  double count = 0;
  while (dirent* entry = readdir(dir)) {
    if (entry->d_name[0] != '.') ++count;
  }
  closedir(dir);
  return count;
}

double MaxFds() {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0) return NAN;
  if (limit.rlim_cur == RLIM_INFINITY) return INFINITY;
  return static_cast<double>(limit.rlim_cur);
}

double BootTime() {
  std::string text;
  if (!ReadFile("/proc/stat", text)) return NAN;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("btime ", 0) == 0) return std::strtod(line.c_str() + 6, nullptr);
  }
  return NAN;
}

}  // namespace

MetricsRegistry::MetricsRegistry() = default;
MetricsRegistry::~MetricsRegistry() = default;

MetricsRegistry::Family& MetricsRegistry::FamilyFor(const std::string& name,
                                                    const std::string& help,
                                                    const std::string& type) {
  if (!ValidName(name, /*allow_colon=*/true))
    Die(absl::StrCat("invalid metric name \"", name, "\""));
  auto it = families_.find(name);
  if (it == families_.end()) {
    auto family = std::make_unique<Family>();
    family->help = help;
    family->type = type;
    it = families_.emplace(name, std::move(family)).first;
  } else if (it->second->type != type) {
    Die(absl::StrCat("metric ", name, " registered as ", it->second->type, ", requested as ",
                     type));
  }
  return *it->second;
}

Counter* MetricsRegistry::GetCounter(const std::string& name, const std::string& help,
                                     const Labels& labels) {
  CheckLabels(name, labels);
  absl::MutexLock lock(&mu_);
  std::unique_ptr<Counter>& slot = FamilyFor(name, help, "counter").counters[labels];
  if (slot == nullptr) slot = std::make_unique<Counter>();
  return slot.get();
}

Gauge* MetricsRegistry::GetGauge(const std::string& name, const std::string& help,
                                 const Labels& labels) {
  CheckLabels(name, labels);
  absl::MutexLock lock(&mu_);
  std::unique_ptr<Gauge>& slot = FamilyFor(name, help, "gauge").gauges[labels];
  if (slot == nullptr) slot = std::make_unique<Gauge>();
  return slot.get();
}

void MetricsRegistry::AddCallbackGauge(const std::string& name, const std::string& help,
                                       std::function<double()> read, const Labels& labels) {
  CheckLabels(name, labels);
  absl::MutexLock lock(&mu_);
  FamilyFor(name, help, "gauge").callbacks[labels] = std::move(read);
}

void MetricsRegistry::AddCallbackCounter(const std::string& name, const std::string& help,
                                         std::function<double()> read, const Labels& labels) {
  CheckLabels(name, labels);
  absl::MutexLock lock(&mu_);
  FamilyFor(name, help, "counter").callbacks[labels] = std::move(read);
}

std::string MetricsRegistry::RenderText() const {
  // Snapshot under the lock; read values and run callbacks after it.
  struct Series {
    const Counter* counter = nullptr;
    const Gauge* gauge = nullptr;
    std::function<double()> read;
  };
  struct Snapshot {
    std::string name;
    std::string help;
    std::string type;
    std::map<Labels, Series> series;
  };
  std::vector<Snapshot> snapshot;
  {
    absl::MutexLock lock(&mu_);
    snapshot.reserve(families_.size());
    for (const auto& [name, family] : families_) {
      Snapshot s{name, family->help, family->type, {}};
      for (const auto& [labels, c] : family->counters) s.series[labels].counter = c.get();
      for (const auto& [labels, g] : family->gauges) s.series[labels].gauge = g.get();
      for (const auto& [labels, fn] : family->callbacks) {
        Series& series = s.series[labels];
        series = Series{nullptr, nullptr, fn};  // a callback replaces a plain series
      }
      snapshot.push_back(std::move(s));
    }
  }
  std::string out;
  for (const Snapshot& family : snapshot) {
    if (family.series.empty()) continue;
    absl::StrAppend(&out, "# HELP ", family.name, " ", EscapeHelp(family.help), "\n");
    absl::StrAppend(&out, "# TYPE ", family.name, " ", family.type, "\n");
    for (const auto& [labels, series] : family.series) {
      std::string value;
      if (series.read) {
        value = FormatFloat(series.read());
      } else if (series.counter != nullptr) {
        value = std::to_string(series.counter->Value());
      } else {
        value = std::to_string(series.gauge->Value());
      }
      absl::StrAppend(&out, family.name, RenderLabels(labels), " ", value, "\n");
    }
  }
  return out;
}

void AddProcessMetrics(MetricsRegistry& registry) {
  registry.AddCallbackCounter("process_cpu_seconds_total",
                              "Total user and system CPU time spent in seconds.", CpuSeconds);
  registry.AddCallbackGauge("process_resident_memory_bytes", "Resident memory size in bytes.",
                            ResidentBytes);
  registry.AddCallbackGauge("process_virtual_memory_bytes", "Virtual memory size in bytes.",
                            [] { return StatField(23); });
  registry.AddCallbackGauge("process_open_fds", "Number of open file descriptors.", OpenFds);
  registry.AddCallbackGauge("process_max_fds", "Maximum number of open file descriptors.", MaxFds);
  registry.AddCallbackGauge("process_start_time_seconds",
                            "Start time of the process since unix epoch in seconds.",
                            [] { return StatField(22) / ClockTicks() + BootTime(); });
}

}  // namespace keel::common
