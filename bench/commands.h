#pragma once

#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "bench/client.h"

namespace keel::bench {

// Options of the KV subcommands.
struct KvOptions {
  // range
  std::string range_key;
  std::string range_end;
  // Each request reads one key drawn like put's keys (--key-size,
  // --key-space-size, --sequential-keys) instead of range_key.
  bool random_keys = false;
  std::string consistency = "l";  // l: linearizable, s: serializable
  // txn-put
  int txn_ops = 1;
  // txn-mixed
  double rw_ratio = 1;
  std::string end_key;  // reads range [key, end_key) when set
};

// Options of watch and watch-latency.
struct WatchOptions {
  int streams = 10;
  int watch_per_stream = 100;
  int watched_key_total = 1;
  uint64_t put_total = 1000;
  double put_rate = 0;
  absl::Duration event_timeout = absl::Seconds(30);
  std::string metrics_url;
};

// Options of lease-keepalive.
struct LeaseOptions {
  int leases = 100;
  int streams = 1;
  int64_t ttl = 30;
  absl::Duration interval;  // between a lease's reply and its next keepalive
  // Each lease's first keepalive at a random point within `interval` rather
  // than all at once, as independent clients would send them.
  bool spread = false;
  std::string metrics_url;
};

// Each runs one subcommand to completion and prints its report. Errors:
// Unavailable if the endpoints cannot be reached, InvalidArgument for bad
// flags, FailedPrecondition if every request failed.
absl::Status RunPut(const GlobalOptions& g);
absl::Status RunRange(const GlobalOptions& g, const KvOptions& o);
absl::Status RunTxnPut(const GlobalOptions& g, const KvOptions& o);
absl::Status RunTxnMixed(const GlobalOptions& g, const KvOptions& o);
absl::Status RunWatch(const GlobalOptions& g, const WatchOptions& o);
absl::Status RunWatchLatency(const GlobalOptions& g, const WatchOptions& o);
absl::Status RunLeaseKeepalive(const GlobalOptions& g, const LeaseOptions& o);

// A small blocking HTTP/1.0 GET of an http:// URL; returns the body.
// Unavailable on connection errors, Internal on a non-200 answer.
absl::StatusOr<std::string> HttpGet(const std::string& url, absl::Duration timeout);

}  // namespace keel::bench
