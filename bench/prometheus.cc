#include "bench/prometheus.h"

#include <cstdlib>

#include "absl/strings/ascii.h"

namespace keel::bench {

namespace {

std::string_view Trim(std::string_view s) {
  while (!s.empty() && absl::ascii_isspace(static_cast<unsigned char>(s.front())))
    s.remove_prefix(1);
  while (!s.empty() && absl::ascii_isspace(static_cast<unsigned char>(s.back())))
    s.remove_suffix(1);
  return s;
}

// Parses `{a="x",b="y"}` starting at text[pos] == '{'; returns the position
// after '}' or npos on malformed input.
size_t ParseLabels(std::string_view text, size_t pos, std::map<std::string, std::string>* out) {
  ++pos;
  while (pos < text.size()) {
    while (pos < text.size() && (text[pos] == ' ' || text[pos] == ',')) ++pos;
    if (pos < text.size() && text[pos] == '}') return pos + 1;
    const size_t eq = text.find('=', pos);
    if (eq == std::string_view::npos || eq + 1 >= text.size() || text[eq + 1] != '"') {
      return std::string_view::npos;
    }
    std::string name(Trim(text.substr(pos, eq - pos)));
    std::string value;
    size_t i = eq + 2;
    for (; i < text.size() && text[i] != '"'; ++i) {
      if (text[i] == '\\' && i + 1 < text.size()) {
        ++i;
        value.push_back(text[i] == 'n' ? '\n' : text[i]);
      } else {
        value.push_back(text[i]);
      }
    }
    if (i >= text.size()) return std::string_view::npos;
    (*out)[name] = value;
    pos = i + 1;
  }
  return std::string_view::npos;
}

}  // namespace

std::vector<PromSample> ParsePrometheusText(std::string_view text) {
  std::vector<PromSample> samples;
  size_t start = 0;
  while (start <= text.size()) {
    size_t nl = text.find('\n', start);
    if (nl == std::string_view::npos) nl = text.size();
    std::string_view line = Trim(text.substr(start, nl - start));
    start = nl + 1;
    if (line.empty() || line[0] == '#') continue;
    PromSample s;
    size_t pos = 0;
    while (pos < line.size() && line[pos] != '{' && line[pos] != ' ' && line[pos] != '\t') ++pos;
    s.name = std::string(line.substr(0, pos));
    if (s.name.empty()) continue;
    if (pos < line.size() && line[pos] == '{') {
      pos = ParseLabels(line, pos, &s.labels);
      if (pos == std::string_view::npos) continue;
    }
    std::string_view rest = Trim(line.substr(pos));
    // A timestamp may follow the value.
    const size_t space = rest.find_first_of(" \t");
    std::string value(rest.substr(0, space));
    if (value.empty()) continue;
    char* end = nullptr;
    s.value = std::strtod(value.c_str(), &end);
    if (end == value.c_str() || *end != '\0') continue;
    samples.push_back(std::move(s));
  }
  return samples;
}

std::optional<double> SumSamples(const std::vector<PromSample>& samples, std::string_view name,
                                 const std::map<std::string, std::string>& match) {
  std::optional<double> sum;
  for (const PromSample& s : samples) {
    if (s.name != name) continue;
    bool ok = true;
    for (const auto& [k, v] : match) {
      auto it = s.labels.find(k);
      if (it == s.labels.end() || it->second != v) {
        ok = false;
        break;
      }
    }
    if (!ok) continue;
    sum = sum.value_or(0) + s.value;
  }
  return sum;
}

}  // namespace keel::bench
