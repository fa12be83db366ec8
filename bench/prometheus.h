#pragma once

#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace keel::bench {

// One sample line of the Prometheus text format: name{labels} value.
struct PromSample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

// Parses Prometheus text exposition (comments and blank lines skipped;
// malformed lines ignored). Pure.
std::vector<PromSample> ParsePrometheusText(std::string_view text);

// Sum of the samples named `name` whose labels include every pair of
// `match`; nullopt if none matched.
std::optional<double> SumSamples(const std::vector<PromSample>& samples, std::string_view name,
                                 const std::map<std::string, std::string>& match = {});

}  // namespace keel::bench
