// keel-bench: the load generator behind keel's performance figures, modelled
// on etcd's tools/benchmark (same subcommands, flags and report layout).

#include <cstdio>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "bench/commands.h"
#include "bench/tcp_tools.h"
#include "common/duration.h"
#include "common/url.h"

namespace {

using keel::bench::GlobalOptions;

// A Go-style duration flag ("5s", "1m30s") parsed with common::ParseGoDuration.
CLI::Option* AddDuration(CLI::App* app, const std::string& name, absl::Duration* target,
                         const std::string& help) {
  return app
      ->add_option_function<std::string>(
          name,
          [target, name](const std::string& text) {
            absl::StatusOr<absl::Duration> d = keel::common::ParseGoDuration(text);
            if (!d.ok()) {
              throw CLI::ValidationError(name, std::string(d.status().message()));
            }
            *target = *d;
          },
          help)
      ->default_str(keel::common::FormatGoDuration(*target));
}

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "keel-bench: %s\n", std::string(s.message()).c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"keel-bench: etcd v3 load generator (etcd tools/benchmark compatible)"};
  app.require_subcommand(1);
  app.fallthrough();

  GlobalOptions g;
  std::string endpoints = "127.0.0.1:2379";
  app.add_option("--endpoints", endpoints, "comma-separated gRPC endpoints")->capture_default_str();
  app.add_option("--conns", g.conns, "number of gRPC connections")->capture_default_str();
  app.add_option("--clients", g.clients, "number of concurrent request loops")
      ->capture_default_str();
  CLI::Option* total_opt =
      app.add_option("--total", g.total, "total number of requests")->capture_default_str();
  app.add_option("--rate", g.rate, "maximum requests per second (0 is no limit)")
      ->capture_default_str();
  AddDuration(&app, "--duration", &g.duration, "run for this long instead of --total");
  app.add_option("--key-size", g.key_size, "key size in bytes")->capture_default_str();
  app.add_option("--val-size", g.val_size, "value size in bytes")->capture_default_str();
  app.add_option("--key-space-size", g.key_space_size, "maximum possible keys")
      ->capture_default_str();
  app.add_flag("--sequential-keys", g.sequential_keys, "use sequential keys");
  app.add_flag("--target-leader", g.target_leader, "connect only to the leader (via Status)");
  app.add_option("--cacert", g.cacert, "CA bundle to verify servers");
  app.add_option("--cert", g.cert, "client certificate");
  app.add_option("--key", g.key, "client private key");
  app.add_option("--user", g.user, "user:password: authenticate and send the token");
  AddDuration(&app, "--dial-timeout", &g.dial_timeout, "time to wait for each connection");
  app.add_option("--threads", g.threads, "completion-queue or loop threads (0: one per core)")
      ->capture_default_str();
  app.add_option("--transport", g.transport,
                 "grpc (gRPC C++) or h2 (gRPC framing on nghttp2: far less client CPU; "
                 "plaintext only)")
      ->capture_default_str();
  app.add_flag("--json", g.json, "print one JSON object instead of the text report");
  bool no_progress = false;
  app.add_flag("--no-progress", no_progress, "never draw the progress bar");

  keel::bench::KvOptions kv;
  CLI::App* put = app.add_subcommand("put", "benchmark put");
  CLI::App* range = app.add_subcommand("range", "benchmark range");
  range->add_option("key", kv.range_key, "key to range over");
  range->add_option("end", kv.range_end, "range end (exclusive)");
  range->add_flag("--random-keys", kv.random_keys,
                  "read one key per request drawn like put's keys (no key argument)");
  range->add_option("--consistency", kv.consistency, "l (linearizable) or s (serializable)")
      ->capture_default_str();
  CLI::App* txn_put = app.add_subcommand("txn-put", "benchmark txn with puts");
  txn_put->add_option("--txn-ops", kv.txn_ops, "puts per txn")->capture_default_str();
  CLI::App* txn_mixed = app.add_subcommand("txn-mixed", "benchmark txns mixing reads and puts");
  txn_mixed->add_option("--rw-ratio", kv.rw_ratio, "reads per write")->capture_default_str();
  txn_mixed->add_option("--end-key", kv.end_key, "reads range [key, end-key) when set");
  txn_mixed->add_option("--consistency", kv.consistency, "read consistency: l or s")
      ->capture_default_str();

  keel::bench::WatchOptions wo;
  CLI::App* watch = app.add_subcommand("watch", "benchmark watch event delivery");
  CLI::App* watch_latency =
      app.add_subcommand("watch-latency", "time from a put until every watcher saw it");
  for (CLI::App* w : {watch, watch_latency}) {
    w->add_option("--streams", wo.streams, "watch streams")->capture_default_str();
    w->add_option("--watch-per-stream", wo.watch_per_stream, "watchers per stream")
        ->capture_default_str();
    w->add_option("--put-rate", wo.put_rate, "puts per second (0 is no limit)")
        ->capture_default_str();
    w->add_option("--put-total", wo.put_total, "number of puts")->capture_default_str();
    AddDuration(w, "--event-timeout", &wo.event_timeout, "time to wait for expected events");
    w->add_option("--metrics-url", wo.metrics_url,
                  "server /metrics URL to read stream counts and CPU from");
  }
  watch->add_option("--watched-key-total", wo.watched_key_total, "number of watched keys")
      ->capture_default_str();

  keel::bench::LeaseOptions lo;
  CLI::App* lease = app.add_subcommand("lease-keepalive", "benchmark lease keepalives");
  lease->add_option("--leases", lo.leases, "number of leases")->capture_default_str();
  lease->add_option("--streams", lo.streams, "LeaseKeepAlive streams")->capture_default_str();
  lease->add_option("--ttl", lo.ttl, "lease TTL in seconds")->capture_default_str();
  AddDuration(lease, "--interval", &lo.interval,
              "wait between a lease's reply and its next keepalive");
  lease->add_flag("--spread", lo.spread,
                  "send each lease's first keepalive at a random point within --interval "
                  "(default: all at once)");
  lease->add_option("--metrics-url", lo.metrics_url,
                    "server /metrics URL to read stream counts and CPU from");

  keel::bench::EchoServerOptions eo;
  std::string echo_listen;
  CLI::App* echo = app.add_subcommand("tcp-echo-server", "raw TCP echo server");
  echo->add_option("--listen", echo_listen, "host:port to listen on")->required();
  echo->add_option("--threads", eo.threads, "event loops (0: one per core)");

  keel::bench::TcpRttOptions ro;
  std::string rtt_target;
  CLI::App* rtt = app.add_subcommand("tcp-rtt", "raw TCP ping-pong round trips");
  rtt->add_option("--target", rtt_target, "host:port of an echo server")->required();
  rtt->add_option("--conns", ro.conns, "connections")->capture_default_str();
  rtt->add_option("--size", ro.size, "bytes per round trip")->capture_default_str();
  AddDuration(rtt, "--duration", &ro.duration, "how long to run");
  rtt->add_option("--threads", ro.threads, "client threads")->capture_default_str();

  CLI11_PARSE(app, argc, argv);

  g.endpoints = keel::common::SplitCommaList(endpoints);
  g.progress = !no_progress && !g.json;
  if (g.clients < 1) return Fail(absl::InvalidArgumentError("--clients must be at least 1"));
  // watch and watch-latency take their put count from --put-total; --total
  // given explicitly overrides it.
  if (total_opt->count() > 0) wo.put_total = g.total;

  absl::Status s;
  if (*put) {
    s = keel::bench::RunPut(g);
  } else if (*range) {
    s = keel::bench::RunRange(g, kv);
  } else if (*txn_put) {
    s = keel::bench::RunTxnPut(g, kv);
  } else if (*txn_mixed) {
    s = keel::bench::RunTxnMixed(g, kv);
  } else if (*watch) {
    s = keel::bench::RunWatch(g, wo);
  } else if (*watch_latency) {
    s = keel::bench::RunWatchLatency(g, wo);
  } else if (*lease) {
    s = keel::bench::RunLeaseKeepalive(g, lo);
  } else if (*echo) {
    absl::StatusOr<keel::common::HostPort> hp = keel::common::ParseHostPort(echo_listen);
    if (!hp.ok()) return Fail(hp.status());
    eo.listen = *hp;
    s = keel::bench::RunTcpEchoServer(eo);
  } else if (*rtt) {
    absl::StatusOr<keel::common::HostPort> hp = keel::common::ParseHostPort(rtt_target);
    if (!hp.ok()) return Fail(hp.status());
    ro.target = *hp;
    ro.json = g.json;
    s = keel::bench::RunTcpRtt(ro);
  }
  if (!s.ok()) return Fail(s);
  return 0;
}
