#include <cstdio>
#include <map>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "bench/commands.h"
#include "bench/keys.h"
#include "bench/report.h"
#include "bench/server_metrics.h"
#include "bench/unary_runner.h"
#include "bench/watch_stream.h"

namespace keel::bench {

namespace {

constexpr char kTimestampPrefix[] = "ts=";

// The key watched by key slot `i`.
std::string WatchKey(int i) { return absl::StrCat("keel-bench/watch/", i); }

// A value carrying its send time, so that any watcher can compute the
// put → event delivery latency: "ts=<unix nanos>;" then filler.
std::string StampedValue(int size) {
  std::string v = absl::StrCat(kTimestampPrefix, absl::ToUnixNanos(absl::Now()), ";");
  if (static_cast<int>(v.size()) < size) v.resize(static_cast<size_t>(size), 'x');
  return v;
}

// The send time in a StampedValue, or nullopt.
std::optional<absl::Time> StampOf(const std::string& value) {
  if (value.rfind(kTimestampPrefix, 0) != 0) return std::nullopt;
  const size_t end = value.find(';');
  if (end == std::string::npos) return std::nullopt;
  int64_t nanos = 0;
  if (!absl::SimpleAtoi(value.substr(3, end - 3), &nanos)) return std::nullopt;
  return absl::FromUnixNanos(nanos);
}

// Puts stamped values round-robin over the watched keys and tracks how many
// events the successful ones must produce.
class StampedPutWorkload : public Workload {
 public:
  StampedPutWorkload(int val_size, std::vector<int64_t> watchers_per_key)
      : val_size_(val_size), watchers_per_key_(std::move(watchers_per_key)) {}
  Request Build(int, uint64_t seq) override {
    const uint64_t slot = seq % watchers_per_key_.size();
    etcdserverpb::PutRequest req;
    req.set_key(WatchKey(static_cast<int>(slot)));
    req.set_value(StampedValue(val_size_));
    return {kPutMethod, req.SerializeAsString(), 0, slot};
  }
  std::string Completed(int, const Request& request, std::string_view) override {
    expected_events.fetch_add(watchers_per_key_[request.cookie]);
    return "";
  }
  std::atomic<int64_t> expected_events{0};

 private:
  int val_size_;
  std::vector<int64_t> watchers_per_key_;
};

// Opens the streams, creating watcher w on key slot key_of(w); waits until
// every watcher is confirmed. Returns the creation time or an error.
absl::StatusOr<absl::Duration> OpenWatchers(
    const WatchOptions& o, Transport& transport, WatchStream::Counters& counters,
    std::vector<std::unique_ptr<WatchStream>>& streams, const std::function<int(int)>& key_of,
    const std::function<void(const etcdserverpb::WatchResponse&)>& on_events) {
  const int64_t total_watchers = static_cast<int64_t>(o.streams) * o.watch_per_stream;
  for (int s = 0; s < o.streams; ++s) {
    std::vector<std::string> keys;
    for (int j = 0; j < o.watch_per_stream; ++j)
      keys.push_back(WatchKey(key_of(s * o.watch_per_stream + j)));
    const int conn = s % transport.conns();
    streams.push_back(std::make_unique<WatchStream>(transport, conn, transport.QueueFor(s, conn),
                                                    std::move(keys), counters, on_events));
  }
  const absl::Time start = absl::Now();
  for (auto& s : streams) s->Start();
  // Creation is bounded by the event timeout plus a second per 1,000 watchers.
  const absl::Time deadline =
      start + o.event_timeout + absl::Seconds(static_cast<double>(total_watchers) / 1000);
  while (counters.created.load() < total_watchers) {
    if (counters.failed.load() > 0) {
      for (auto& s : streams) {
        if (!s->error().empty()) {
          return absl::UnavailableError(absl::StrCat("watch stream failed: ", s->error()));
        }
      }
    }
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(absl::StrCat("only ", counters.created.load(), " of ",
                                                      total_watchers, " watchers created"));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return absl::Now() - start;
}

void CloseWatchers(WatchStream::Counters& counters,
                   std::vector<std::unique_ptr<WatchStream>>& streams) {
  for (auto& s : streams) s->Cancel();
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (counters.finished.load() < static_cast<int64_t>(streams.size()) &&
         absl::Now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

absl::Status CheckWatchOptions(const WatchOptions& o) {
  if (o.streams < 1 || o.watch_per_stream < 1 || o.watched_key_total < 1) {
    return absl::InvalidArgumentError(
        "--streams, --watch-per-stream and --watched-key-total must be at least 1");
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status RunWatch(const GlobalOptions& g, const WatchOptions& o) {
  if (absl::Status s = CheckWatchOptions(o); !s.ok()) return s;
  absl::StatusOr<std::unique_ptr<Transport>> transport = Transport::Dial(g);
  if (!transport.ok()) return transport.status();
  WatchStream::Counters counters;
  Recorder delivery;
  std::atomic<int64_t> events{0};
  std::atomic<int64_t> last_event_nanos{0};
  auto on_events = [&](const etcdserverpb::WatchResponse& resp) {
    const absl::Time now = absl::Now();
    for (const mvccpb::Event& ev : resp.events()) {
      std::optional<absl::Time> sent = StampOf(ev.kv().value());
      if (sent) {
        delivery.AddLatency(now - *sent);
      } else {
        delivery.AddError("event without a keel-bench timestamp");
      }
    }
    events.fetch_add(resp.events_size());
    last_event_nanos.store(absl::ToUnixNanos(now));
  };
  const int keys = o.watched_key_total;
  std::vector<int64_t> per_key(static_cast<size_t>(keys), 0);
  const int64_t total_watchers = static_cast<int64_t>(o.streams) * o.watch_per_stream;
  for (int64_t w = 0; w < total_watchers; ++w) ++per_key[static_cast<size_t>(w % keys)];

  std::vector<std::unique_ptr<WatchStream>> streams;
  absl::StatusOr<absl::Duration> created = OpenWatchers(
      o, **transport, counters, streams, [keys](int w) { return w % keys; }, on_events);
  if (!created.ok()) {
    CloseWatchers(counters, streams);
    (*transport)->Shutdown();
    return created.status();
  }
  std::optional<ServerMetrics> before;
  if (!o.metrics_url.empty()) before = ScrapeServerMetrics(o.metrics_url);

  StampedPutWorkload puts(g.val_size, per_key);
  UnaryRunner runner(g, **transport);
  const absl::Time put_start = absl::Now();
  RunResult put_result = runner.Run(puts, o.put_total, o.put_rate, g.duration, g.clients, true);
  // Wait for the events the successful puts must produce.
  const int64_t expected = puts.expected_events.load();
  const absl::Time deadline = absl::Now() + o.event_timeout;
  while (events.load() < expected && absl::Now() < deadline && counters.failed.load() == 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  const int64_t got = events.load();
  std::optional<ServerMetrics> after;
  if (before) after = ScrapeServerMetrics(o.metrics_url);
  CloseWatchers(counters, streams);
  (*transport)->Shutdown();
  for (auto& s : streams) {
    if (!s->error().empty()) delivery.AddError(s->error());
  }
  if (got < expected) {
    delivery.AddError(absl::StrCat(expected - got, " events not delivered within ",
                                   absl::FormatDuration(o.event_timeout)));
  }
  const absl::Time last_event = absl::FromUnixNanos(last_event_nanos.load());
  Summary ev = delivery.Finish(std::max(last_event, put_start) - put_start);

  if (g.json) {
    nlohmann::json j;
    j["name"] = "watch";
    j["watchers"] = total_watchers;
    j["streams"] = o.streams;
    j["keys"] = keys;
    j["create_secs"] = absl::ToDoubleSeconds(*created);
    j["expected_events"] = expected;
    j["put"] = ToJson(put_result.overall);
    j["events"] = ToJson(ev);
    if (before && after)
      j["server"] = ServerMetricsJson(*before, *after, put_result.overall.requests);
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("Watchers:\t%lld on %d streams over %d keys, created in %.4f secs.\n",
                static_cast<long long>(total_watchers), o.streams, keys,
                absl::ToDoubleSeconds(*created));
    std::printf("\nPuts:%s", FormatText(put_result.overall).c_str());
    std::printf("\nWatch events (put sent -> event received), %lld of %lld expected:%s",
                static_cast<long long>(got), static_cast<long long>(expected),
                FormatText(ev).c_str());
    if (before && after) {
      std::printf("%s", FormatServerMetrics(*before, *after, put_result.overall.requests).c_str());
    }
  }
  std::fflush(stdout);
  if (ev.requests == 0 && ev.error_count() > 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("no event delivered: ", ev.errors.begin()->first));
  }
  return absl::OkStatus();
}

absl::Status RunWatchLatency(const GlobalOptions& g, const WatchOptions& o) {
  if (absl::Status s = CheckWatchOptions(o); !s.ok()) return s;
  absl::StatusOr<std::unique_ptr<Transport>> transport = Transport::Dial(g);
  if (!transport.ok()) return transport.status();
  WatchStream::Counters counters;
  const int64_t total_watchers = static_cast<int64_t>(o.streams) * o.watch_per_stream;

  // revision -> (watchers that saw it, when the last one did).
  struct Seen {
    int64_t count = 0;
    absl::Time last;
  };
  absl::Mutex mu;
  std::map<int64_t, Seen> seen;
  auto on_events = [&](const etcdserverpb::WatchResponse& resp) {
    const absl::Time now = absl::Now();
    absl::MutexLock lock(&mu);
    for (const mvccpb::Event& ev : resp.events()) {
      Seen& s = seen[ev.kv().mod_revision()];
      ++s.count;
      s.last = now;
    }
  };
  std::vector<std::unique_ptr<WatchStream>> streams;
  absl::StatusOr<absl::Duration> created = OpenWatchers(
      o, **transport, counters, streams, [](int) { return 0; }, on_events);
  if (!created.ok()) {
    CloseWatchers(counters, streams);
    (*transport)->Shutdown();
    return created.status();
  }
  std::optional<ServerMetrics> before;
  if (!o.metrics_url.empty()) before = ScrapeServerMetrics(o.metrics_url);

  Recorder fanout;   // put sent -> last watcher saw it
  Recorder put_lat;  // put round trip
  const std::string value = MakeValue(g.val_size);
  const absl::Time start = absl::Now();
  std::atomic<uint64_t> done{0};
  {
    ProgressBar bar(g.progress, [&] {
      return static_cast<double>(done.load()) /
             static_cast<double>(std::max<uint64_t>(1, o.put_total));
    });
    constexpr int kMaxMissedInARow = 3;
    int missed_in_a_row = 0;
    for (uint64_t i = 0; i < o.put_total; ++i, ++done) {
      if (g.duration > absl::ZeroDuration() && absl::Now() - start >= g.duration) break;
      if (o.put_rate > 0) {
        const absl::Time due = start + absl::Seconds(static_cast<double>(i) / o.put_rate);
        if (due > absl::Now()) absl::SleepFor(due - absl::Now());
      }
      etcdserverpb::PutRequest req;
      req.set_key(WatchKey(0));
      req.set_value(value);
      std::string resp_bytes;
      const absl::Time t0 = absl::Now();
      grpc::Status st =
          (*transport)
              ->CallSync(0, kPutMethod, req.SerializeAsString(), &resp_bytes, o.event_timeout);
      etcdserverpb::PutResponse resp;
      if (st.ok() && !resp.ParseFromString(resp_bytes)) {
        st = grpc::Status(grpc::StatusCode::INTERNAL, "undecodable PutResponse");
      }
      if (!st.ok()) {
        put_lat.AddError(GrpcErrorText(st));
        fanout.AddError(GrpcErrorText(st));
        continue;
      }
      put_lat.AddLatency(absl::Now() - t0);
      const int64_t rev = resp.header().revision();
      absl::MutexLock lock(&mu);
      auto all_seen = [&] {
        auto it = seen.find(rev);
        return it != seen.end() && it->second.count >= total_watchers;
      };
      const bool ok = mu.AwaitWithTimeout(absl::Condition(&all_seen), o.event_timeout);
      if (ok) {
        fanout.AddLatency(seen[rev].last - t0);
        missed_in_a_row = 0;
      } else {
        fanout.AddError(absl::StrCat("not every watcher saw the put within ",
                                     absl::FormatDuration(o.event_timeout)));
        ++missed_in_a_row;
      }
      seen.erase(seen.begin(), seen.upper_bound(rev));
      if (missed_in_a_row >= kMaxMissedInARow) {
        // The watchers are not keeping up at all; more puts would only
        // wait out the timeout again.
        fanout.AddError(absl::StrCat("gave up after ", kMaxMissedInARow,
                                     " puts in a row were not seen by every watcher"));
        break;
      }
    }
  }
  const absl::Duration elapsed = absl::Now() - start;
  std::optional<ServerMetrics> after;
  if (before) after = ScrapeServerMetrics(o.metrics_url);
  CloseWatchers(counters, streams);
  (*transport)->Shutdown();
  for (auto& s : streams) {
    if (!s->error().empty()) fanout.AddError(s->error());
  }
  Summary put_summary = put_lat.Finish(elapsed);
  Summary fan = fanout.Finish(elapsed);
  if (g.json) {
    nlohmann::json j;
    j["name"] = "watch-latency";
    j["watchers"] = total_watchers;
    j["streams"] = o.streams;
    j["create_secs"] = absl::ToDoubleSeconds(*created);
    j["put"] = ToJson(put_summary);
    j["fanout"] = ToJson(fan);
    if (before && after) j["server"] = ServerMetricsJson(*before, *after, put_summary.requests);
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("Watchers:\t%lld on %d streams on one key, created in %.4f secs.\n",
                static_cast<long long>(total_watchers), o.streams, absl::ToDoubleSeconds(*created));
    std::printf("\nPuts:%s", FormatText(put_summary).c_str());
    std::printf("\nPut sent -> seen by all %lld watchers:%s",
                static_cast<long long>(total_watchers), FormatText(fan).c_str());
    if (before && after) {
      std::printf("%s", FormatServerMetrics(*before, *after, put_summary.requests).c_str());
    }
  }
  std::fflush(stdout);
  if (fan.requests == 0 && fan.error_count() > 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("no put fanned out: ", fan.errors.begin()->first));
  }
  return absl::OkStatus();
}

}  // namespace keel::bench
