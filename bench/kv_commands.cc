#include <memory>
#include <mutex>
#include <random>

#include "absl/strings/str_cat.h"
#include "bench/commands.h"
#include "bench/keys.h"
#include "bench/unary_runner.h"

namespace keel::bench {

namespace {

// Per-client key generators (each client loop touches only its own).
std::vector<KeyGenerator> MakeGenerators(const GlobalOptions& g) {
  std::vector<KeyGenerator> gens;
  for (int i = 0; i < std::max(1, g.clients); ++i) {
    gens.emplace_back(g.key_size, std::max<uint64_t>(1, g.key_space_size), g.sequential_keys,
                      /*seed=*/0x6b65656cULL + static_cast<uint64_t>(i));
  }
  return gens;
}

class PutWorkload : public Workload {
 public:
  explicit PutWorkload(const GlobalOptions& g)
      : gens_(MakeGenerators(g)), value_(MakeValue(g.val_size)) {}
  Request Build(int client, uint64_t seq) override {
    etcdserverpb::PutRequest req;
    req.set_key(gens_[static_cast<size_t>(client)].Next(seq));
    req.set_value(value_);
    return {kPutMethod, req.SerializeAsString()};
  }

 private:
  std::vector<KeyGenerator> gens_;
  std::string value_;
};

class RangeWorkload : public Workload {
 public:
  RangeWorkload(const GlobalOptions& g, const KvOptions& o) : random_keys_(o.random_keys) {
    req_.set_key(o.range_key);
    req_.set_range_end(o.range_end);
    req_.set_serializable(o.consistency == "s");
    body_ = req_.SerializeAsString();
    if (random_keys_) gens_ = MakeGenerators(g);
  }
  Request Build(int client, uint64_t seq) override {
    if (!random_keys_) return {kRangeMethod, body_};
    etcdserverpb::RangeRequest req = req_;
    req.set_key(gens_[static_cast<size_t>(client)].Next(seq));
    return {kRangeMethod, req.SerializeAsString()};
  }

 private:
  bool random_keys_;
  std::vector<KeyGenerator> gens_;
  etcdserverpb::RangeRequest req_;
  std::string body_;
};

class TxnPutWorkload : public Workload {
 public:
  TxnPutWorkload(const GlobalOptions& g, int ops)
      : gens_(MakeGenerators(g)), value_(MakeValue(g.val_size)), ops_(ops) {}
  Request Build(int client, uint64_t seq) override {
    etcdserverpb::TxnRequest req;
    for (int i = 0; i < ops_; ++i) {
      etcdserverpb::PutRequest* put = req.add_success()->mutable_request_put();
      // Distinct keys within one txn: etcd rejects duplicate keys in a txn.
      put->set_key(gens_[static_cast<size_t>(client)].Next(seq * static_cast<uint64_t>(ops_) +
                                                           static_cast<uint64_t>(i)));
      put->set_value(value_);
    }
    return {kTxnMethod, req.SerializeAsString()};
  }

 private:
  std::vector<KeyGenerator> gens_;
  std::string value_;
  int ops_;
};

class TxnMixedWorkload : public Workload {
 public:
  TxnMixedWorkload(const GlobalOptions& g, const KvOptions& o)
      : gens_(MakeGenerators(g)),
        value_(MakeValue(g.val_size)),
        read_ratio_(o.rw_ratio / (1 + o.rw_ratio)),
        end_key_(o.end_key),
        serializable_(o.consistency == "s") {
    for (int i = 0; i < std::max(1, g.clients); ++i) {
      rngs_.emplace_back(0x6d697865ULL + static_cast<uint64_t>(i));
    }
  }
  std::vector<std::string> Categories() const override { return {"read", "write"}; }
  Request Build(int client, uint64_t seq) override {
    const size_t ci = static_cast<size_t>(client);
    std::uniform_real_distribution<double> coin(0, 1);
    const bool read = coin(rngs_[ci]) < read_ratio_;
    etcdserverpb::TxnRequest req;
    const std::string key = gens_[ci].Next(seq);
    if (read) {
      etcdserverpb::RangeRequest* r = req.add_success()->mutable_request_range();
      r->set_key(key);
      r->set_range_end(end_key_);
      r->set_serializable(serializable_);
    } else {
      etcdserverpb::PutRequest* p = req.add_success()->mutable_request_put();
      p->set_key(key);
      p->set_value(value_);
    }
    return {kTxnMethod, req.SerializeAsString(), read ? 0 : 1};
  }

 private:
  std::vector<KeyGenerator> gens_;
  std::vector<std::mt19937_64> rngs_;
  std::string value_;
  double read_ratio_;
  std::string end_key_;
  bool serializable_;
};

absl::Status RunUnary(const GlobalOptions& g, const std::string& title,
                      const std::function<std::unique_ptr<Workload>()>& make) {
  absl::StatusOr<std::unique_ptr<Transport>> transport = Transport::Dial(g);
  if (!transport.ok()) return transport.status();
  std::unique_ptr<Workload> workload = make();
  UnaryRunner runner(g, **transport);
  RunResult r = runner.Run(*workload, g.total, g.rate, g.duration, g.clients, true);
  (*transport)->Shutdown();
  PrintRunResult(r, g.json, title);
  if (r.overall.requests == 0 && r.overall.error_count() > 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("every request failed: ", r.overall.errors.begin()->first));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status RunPut(const GlobalOptions& g) {
  return RunUnary(g, "put", [&] { return std::make_unique<PutWorkload>(g); });
}

absl::Status RunRange(const GlobalOptions& g, const KvOptions& o) {
  if (o.consistency != "l" && o.consistency != "s") {
    return absl::InvalidArgumentError("--consistency must be l or s");
  }
  if (o.range_key.empty() && !o.random_keys) {
    return absl::InvalidArgumentError("range needs a key argument or --random-keys");
  }
  if (!o.range_key.empty() && o.random_keys) {
    return absl::InvalidArgumentError("range takes a key argument or --random-keys, not both");
  }
  return RunUnary(g, "range", [&] { return std::make_unique<RangeWorkload>(g, o); });
}

absl::Status RunTxnPut(const GlobalOptions& g, const KvOptions& o) {
  if (o.txn_ops < 1) return absl::InvalidArgumentError("--txn-ops must be at least 1");
  return RunUnary(g, "txn-put", [&] { return std::make_unique<TxnPutWorkload>(g, o.txn_ops); });
}

absl::Status RunTxnMixed(const GlobalOptions& g, const KvOptions& o) {
  if (o.rw_ratio < 0) return absl::InvalidArgumentError("--rw-ratio must be >= 0");
  if (o.consistency != "l" && o.consistency != "s") {
    return absl::InvalidArgumentError("--consistency must be l or s");
  }
  return RunUnary(g, "txn-mixed", [&] { return std::make_unique<TxnMixedWorkload>(g, o); });
}

}  // namespace keel::bench
