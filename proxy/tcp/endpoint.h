#pragma once

#include <cstdint>
#include <string>

#include "common/url.h"

namespace keel::proxy::tcp {

// One upstream etcd endpoint the gateway relays to: a static --endpoints item
// or an SRV target. A plain value; compared by all fields.
struct Endpoint {
  common::HostPort addr;  // as configured / as the SRV target says (host may be a name)
  uint16_t priority = 0;  // SRV priority (static endpoints: 0); lower is preferred
  uint16_t weight = 0;    // SRV weight (static endpoints: 0)
  std::string scheme;     // "http"/"https" from the SRV record kind or the
                          // --endpoints item's scheme; "" if it had none
  bool operator==(const Endpoint&) const = default;
};

}  // namespace keel::proxy::tcp
