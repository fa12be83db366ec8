#include "proxy/tcp/endpoint_picker.h"

#include <algorithm>
#include <map>

#include "absl/random/distributions.h"

namespace keel::proxy::tcp {
namespace {

// Appends `members` rotated left by ticket % size (round robin by ticket).
void AppendRotated(const std::vector<size_t>& members, uint64_t ticket, std::vector<size_t>& out) {
  if (members.empty()) return;
  const size_t start = static_cast<size_t>(ticket % members.size());
  for (size_t i = 0; i < members.size(); ++i) {
    out.push_back(members[(start + i) % members.size()]);
  }
}

// Appends the order of one priority class (all members active).
void AppendClass(const EndpointSet& set, const std::vector<size_t>& members, uint64_t ticket,
                 absl::BitGenRef rng, std::vector<size_t>& out) {
  std::vector<size_t> weighted;
  std::vector<size_t> zeros;
  for (size_t i : members) {
    (set.endpoints[i].weight > 0 ? weighted : zeros).push_back(i);
  }
  if (weighted.empty()) {
    AppendRotated(members, ticket, out);
    return;
  }
  // RFC 2782 gives weight-0 records "a very small chance" of selection; etcd
  // uses 1/100 and picks one of them round robin.
  if (!zeros.empty() && absl::Bernoulli(rng, 0.01)) {
    const size_t pos = static_cast<size_t>(ticket % zeros.size());
    out.push_back(zeros[pos]);
    zeros.erase(zeros.begin() + static_cast<std::ptrdiff_t>(pos));
  }
  // Weighted selection without replacement. r is drawn in [1, sum] and the
  // first record whose running sum reaches r wins, so every record gets
  // exactly `weight` of the `sum` slots (etcd draws in [0, sum) and compares
  // with <= 0, giving the first record one slot too many).
  uint64_t sum = 0;
  for (size_t i : weighted) sum += set.endpoints[i].weight;
  while (!weighted.empty()) {
    const uint64_t r = absl::Uniform<uint64_t>(absl::IntervalClosed, rng, 1, sum);
    uint64_t running = 0;
    size_t pos = 0;
    for (; pos < weighted.size(); ++pos) {
      running += set.endpoints[weighted[pos]].weight;
      if (running >= r) break;
    }
    out.push_back(weighted[pos]);
    sum -= set.endpoints[weighted[pos]].weight;
    weighted.erase(weighted.begin() + static_cast<std::ptrdiff_t>(pos));
  }
  AppendRotated(zeros, ticket, out);
}

}  // namespace

std::vector<size_t> PickOrder(const EndpointSet& set, uint64_t ticket, absl::BitGenRef rng) {
  const size_t n = set.endpoints.size();
  std::map<uint16_t, std::vector<size_t>> classes;  // priority -> active members, config order
  std::vector<size_t> inactive;
  for (size_t i = 0; i < n; ++i) {
    const bool active = i < set.active.size() && set.active[i];
    if (active) {
      classes[set.endpoints[i].priority].push_back(i);
    } else {
      inactive.push_back(i);
    }
  }
  std::vector<size_t> order;
  order.reserve(n);
  for (const auto& [priority, members] : classes) {
    AppendClass(set, members, ticket, rng, order);
  }
  AppendRotated(inactive, ticket, order);
  return order;
}

}  // namespace keel::proxy::tcp
