#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"

namespace keel::common {

// Label name → value, e.g. {{"endpoint", "127.0.0.1:2379"}}.
using Labels = std::map<std::string, std::string>;

// A monotonically increasing count. Thread-safe, lock-free (relaxed atomics),
// cheap enough for the data path.
class Counter {
 public:
  void Increment(uint64_t n = 1) { value_.fetch_add(n, std::memory_order_relaxed); }
  uint64_t Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> value_{0};
};

// A value that goes up and down. Thread-safe, lock-free.
class Gauge {
 public:
  void Set(int64_t v) { value_.store(v, std::memory_order_relaxed); }
  void Add(int64_t d) { value_.fetch_add(d, std::memory_order_relaxed); }
  int64_t Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<int64_t> value_{0};
};

// Holds metric families and renders them in the Prometheus text exposition
// format (version 0.0.4). Returned pointers stay valid for the registry's
// life; asking again for the same name and labels returns the same object.
// Thread-safe: registration takes a lock, updates do not.
class MetricsRegistry {
 public:
  MetricsRegistry();
  ~MetricsRegistry();
  MetricsRegistry(const MetricsRegistry&) = delete;
  MetricsRegistry& operator=(const MetricsRegistry&) = delete;

  // REQUIRES: `name` is a valid Prometheus metric name ([a-zA-Z_:][a-zA-Z0-9_:]*),
  // label names are valid ([a-zA-Z_][a-zA-Z0-9_]*) and `name` is not
  // registered with another type; a violation is a programming error, logged
  // to stderr before abort(). The first registration's help text is kept.
  Counter* GetCounter(const std::string& name, const std::string& help, const Labels& labels = {});
  Gauge* GetGauge(const std::string& name, const std::string& help, const Labels& labels = {});
  // A gauge whose value is read from `read` at render time (e.g. process RSS).
  // `read` runs on the RenderText() caller's thread, without the registry's
  // lock held; it must be thread-safe and quick. Adding the same name and
  // labels again replaces the function.
  void AddCallbackGauge(const std::string& name, const std::string& help,
                        std::function<double()> read, const Labels& labels = {});
  // The same for a counter family (e.g. process_cpu_seconds_total): `read`
  // must not decrease.
  void AddCallbackCounter(const std::string& name, const std::string& help,
                          std::function<double()> read, const Labels& labels = {});

  // The whole registry, families sorted by name, with # HELP and # TYPE lines,
  // series sorted by labels; label values escaped (\\, \", \n). Counter and
  // Gauge values print as integers, callback values as Go's Prometheus client
  // prints floats ("1.7952364e+09", "NaN", "+Inf"). Families without series are
  // left out.
  std::string RenderText() const;

 private:
  struct Family;
  Family& FamilyFor(const std::string& name, const std::string& help, const std::string& type)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable absl::Mutex mu_;
  std::map<std::string, std::unique_ptr<Family>> families_ ABSL_GUARDED_BY(mu_);
};

// Adds process_cpu_seconds_total, process_resident_memory_bytes,
// process_virtual_memory_bytes, process_open_fds, process_max_fds and
// process_start_time_seconds (read from /proc at render time, with the help
// texts of Prometheus' Go client). A value that cannot be read renders as NaN.
void AddProcessMetrics(MetricsRegistry& registry);

}  // namespace keel::common
