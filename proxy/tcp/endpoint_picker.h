#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/random/bit_gen_ref.h"
#include "proxy/tcp/endpoint.h"

namespace keel::proxy::tcp {

// An immutable view the data path reads: the endpoints plus which of them are
// active. Published by HealthTracker::Snapshot() as shared_ptr<const EndpointSet>;
// safe to read from any thread once published.
struct EndpointSet {
  std::vector<Endpoint> endpoints;
  std::vector<bool> active;  // same size as `endpoints`
  uint64_t generation = 0;   // bumps on every change (membership or activity)
};

// The order in which a new client connection should try the endpoints of `set`
// (indices into set.endpoints, each exactly once). Pure: no I/O, clocks or
// threads; randomness only from `rng`. Thread-compatible (`rng` is the caller's).
//
//  1. Active endpoints, priority classes in ascending SRV priority. Within a
//     class: if any weight > 0, the first choice is an RFC 2782 weighted random
//     draw (r uniform in [1, sum], which fixes etcd's off-by-one), except that
//     with probability 1/100 a weight-0 member of the class is chosen first
//     (etcd's behaviour); the other weighted members follow in repeated weighted
//     draws, then the weight-0 members in round-robin order by `ticket`. If all
//     weights are 0, the class is in round-robin order by `ticket` (rotated by
//     ticket % size, config order otherwise): static endpoints thus get exactly
//     even round robin over the active ones.
//  2. Then the inactive endpoints, in config order rotated by `ticket`, so that
//     when all are marked down the caller still tries every one before refusing
//     a client.
//
// `ticket` is a per-connection counter the caller takes from a shared atomic.
// Returns an empty vector only for an empty set.
std::vector<size_t> PickOrder(const EndpointSet& set, uint64_t ticket, absl::BitGenRef rng);

}  // namespace keel::proxy::tcp
