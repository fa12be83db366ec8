#include "namespace/namespace_backend.h"

#include <algorithm>
#include <atomic>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "api/errors.h"
#include "google/protobuf/repeated_ptr_field.h"

namespace keel::ns {
namespace {

using ::etcdserverpb::Compare;
using ::etcdserverpb::DeleteRangeRequest;
using ::etcdserverpb::DeleteRangeResponse;
using ::etcdserverpb::PutRequest;
using ::etcdserverpb::PutResponse;
using ::etcdserverpb::RangeRequest;
using ::etcdserverpb::RangeResponse;
using ::etcdserverpb::RequestOp;
using ::etcdserverpb::ResponseOp;
using ::etcdserverpb::TxnRequest;
using ::etcdserverpb::TxnResponse;
using ::etcdserverpb::WatchRequest;
using ::etcdserverpb::WatchResponse;
using ::google::protobuf::RepeatedPtrField;
using ::mvccpb::KeyValue;

// ----- Requests: prefix. False when a key etcd requires is empty. -----

bool PrefixRange(const KeyPrefix& p, RangeRequest& r) {
  if (r.key().empty()) return false;
  r.set_range_end(p.RangeEnd(r.range_end()));
  r.set_key(p.Key(r.key()));
  return true;
}

bool PrefixPut(const KeyPrefix& p, PutRequest& r) {
  if (r.key().empty()) return false;
  r.set_key(p.Key(r.key()));
  return true;
}

bool PrefixDelete(const KeyPrefix& p, DeleteRangeRequest& r) {
  if (r.key().empty()) return false;
  r.set_range_end(p.RangeEnd(r.range_end()));
  r.set_key(p.Key(r.key()));
  return true;
}

bool PrefixTxn(const KeyPrefix& p, TxnRequest& r);

bool PrefixOp(const KeyPrefix& p, RequestOp& op) {
  switch (op.request_case()) {
    case RequestOp::kRequestRange:
      return PrefixRange(p, *op.mutable_request_range());
    case RequestOp::kRequestPut:
      return PrefixPut(p, *op.mutable_request_put());
    case RequestOp::kRequestDeleteRange:
      return PrefixDelete(p, *op.mutable_request_delete_range());
    case RequestOp::kRequestTxn:
      return PrefixTxn(p, *op.mutable_request_txn());
    case RequestOp::REQUEST_NOT_SET:
      return true;
  }
  return true;
}

// etcd rejects an empty key in any txn operation ("key is not provided"), so
// we do too rather than turn it into the key P. Compares are prefixed as the
// etcd proxy does, even with an empty key: a compare reads, never writes.
bool PrefixTxn(const KeyPrefix& p, TxnRequest& r) {
  for (Compare& c : *r.mutable_compare()) {
    c.set_range_end(p.RangeEnd(c.range_end()));
    c.set_key(p.Key(c.key()));
  }
  for (RequestOp& op : *r.mutable_success()) {
    if (!PrefixOp(p, op)) return false;
  }
  for (RequestOp& op : *r.mutable_failure()) {
    if (!PrefixOp(p, op)) return false;
  }
  return true;
}

// ----- Responses: strip. -----
//
// A key outside P can only come from a broken backend (every key we send is
// inside P and so is everything it selects), but returning it would show the
// client a key of another tenant with a wrong name: such a key is dropped
// from lists and cleared from single fields, never returned unstripped.

bool StripKv(const KeyPrefix& p, KeyValue& kv) {
  std::optional<std::string> key = p.Strip(kv.key());
  if (!key.has_value()) return false;
  kv.set_key(std::move(*key));
  return true;
}

// Keeps the elements for which `keep` (which may modify them) says true, in
// order; returns how many were dropped.
template <class T, class Keep>
int KeepIf(RepeatedPtrField<T>& list, Keep keep) {
  int kept = 0;
  for (int i = 0; i < list.size(); ++i) {
    if (!keep(*list.Mutable(i))) continue;
    if (kept != i) list.SwapElements(kept, i);
    ++kept;
  }
  const int dropped = list.size() - kept;
  list.DeleteSubrange(kept, dropped);
  return dropped;
}

int StripKvs(const KeyPrefix& p, RepeatedPtrField<KeyValue>& kvs) {
  return KeepIf(kvs, [&p](KeyValue& kv) { return StripKv(p, kv); });
}

void StripRange(const KeyPrefix& p, RangeResponse& r) {
  const int dropped = StripKvs(p, *r.mutable_kvs());
  if (dropped > 0) r.set_count(std::max<int64_t>(0, r.count() - dropped));
}

void StripPut(const KeyPrefix& p, PutResponse& r) {
  if (r.has_prev_kv() && !StripKv(p, *r.mutable_prev_kv())) r.clear_prev_kv();
}

void StripDelete(const KeyPrefix& p, DeleteRangeResponse& r) { StripKvs(p, *r.mutable_prev_kvs()); }

void StripTxn(const KeyPrefix& p, TxnResponse& r) {
  for (ResponseOp& op : *r.mutable_responses()) {
    switch (op.response_case()) {
      case ResponseOp::kResponseRange:
        StripRange(p, *op.mutable_response_range());
        break;
      case ResponseOp::kResponsePut:
        StripPut(p, *op.mutable_response_put());
        break;
      case ResponseOp::kResponseDeleteRange:
        StripDelete(p, *op.mutable_response_delete_range());
        break;
      case ResponseOp::kResponseTxn:
        StripTxn(p, *op.mutable_response_txn());
        break;
      case ResponseOp::RESPONSE_NOT_SET:
        break;
    }
  }
}

void StripWatch(const KeyPrefix& p, WatchResponse& r) {
  KeepIf(*r.mutable_events(), [&p](::mvccpb::Event& e) {
    if (!StripKv(p, *e.mutable_kv())) return false;
    if (e.has_prev_kv() && !StripKv(p, *e.mutable_prev_kv())) e.clear_prev_kv();
    return true;
  });
}

void StripLeaderKey(const KeyPrefix& p, ::v3electionpb::LeaderKey& k) {
  std::optional<std::string> name = p.Strip(k.name());
  std::optional<std::string> key = p.Strip(k.key());
  k.set_name(name.value_or(std::string()));
  k.set_key(key.value_or(std::string()));
}

void StripLeader(const KeyPrefix& p, ::v3electionpb::LeaderResponse& r) {
  if (r.has_kv() && !StripKv(p, *r.mutable_kv())) r.clear_kv();
}

bool PrefixLeaderKey(const KeyPrefix& p, ::v3electionpb::LeaderKey& k) {
  if (k.key().empty()) return false;
  k.set_name(p.Key(k.name()));
  k.set_key(p.Key(k.key()));
  return true;
}

// `done`, after `strip` has rewritten a successful response.
template <class Response, class Strip>
api::Done<Response> Then(api::Done<Response> done, Strip strip) {
  return
      [done = std::move(done), strip = std::move(strip)](absl::StatusOr<Response> result) mutable {
        if (result.ok()) strip(*result);
        std::move(done)(std::move(result));
      };
}

// ----- Streams -----

// The inner stream's observer: maps each response and hands it to the
// caller's observer. Owns the inner handle. Keeps itself alive until the
// inner stream's OnDone (the caller may drop its handle first: that cancels
// the inner stream, whose OnDone must still reach the caller).
template <class InnerStream, class Response>
class Relay final : public api::StreamObserver<Response> {
 public:
  using Map = void (*)(const KeyPrefix&, Response&);

  Relay(std::shared_ptr<const KeyPrefix> prefix, api::StreamObserver<Response>* outer, Map map)
      : prefix_(std::move(prefix)), outer_(outer), map_(map) {}

  // Opens the inner stream with `open(observer)`. Returns the relay, which
  // the caller's handle holds.
  template <class Open>
  static std::shared_ptr<Relay> Start(std::shared_ptr<const KeyPrefix> prefix,
                                      api::StreamObserver<Response>* outer, Map map, Open open) {
    auto relay = std::make_shared<Relay>(std::move(prefix), outer, map);
    relay->self_ = relay;  // released by OnDone, which may come before open() returns
    relay->inner_ = open(relay.get());
    return relay;
  }

  void OnResponse(Response response) override {
    map_(*prefix_, response);
    outer_->OnResponse(std::move(response));
  }
  void OnDone(absl::Status status) override {
    done_.store(true);
    std::shared_ptr<Relay> keep = std::move(self_);
    outer_->OnDone(std::move(status));
  }

  InnerStream& inner() { return *inner_; }
  const KeyPrefix& prefix() const { return *prefix_; }
  // The caller dropped its handle: cancel unless the stream is over already.
  void Release() {
    if (!done_.load()) inner_->Cancel();
  }

 private:
  const std::shared_ptr<const KeyPrefix> prefix_;
  api::StreamObserver<Response>* const outer_;
  const Map map_;
  // Set once in Start before the caller's handle exists; read-only after.
  std::unique_ptr<InnerStream> inner_;
  std::shared_ptr<Relay> self_;
  std::atomic<bool> done_{false};
};

using WatchRelay = Relay<api::WatchStream, WatchResponse>;
using ObserveRelay = Relay<api::ReadStream, ::v3electionpb::LeaderResponse>;

class WatchHandle final : public api::WatchStream {
 public:
  explicit WatchHandle(std::shared_ptr<WatchRelay> relay) : relay_(std::move(relay)) {}
  ~WatchHandle() override { relay_->Release(); }

  void ReadNext() override { relay_->inner().ReadNext(); }
  void Cancel() override { relay_->inner().Cancel(); }
  void WritesDone() override { relay_->inner().WritesDone(); }
  // Create requests are mapped like a Range (an empty key is the key P, as
  // etcd's proxy does); cancel and progress requests carry no key.
  void Write(WatchRequest request) override {
    if (request.has_create_request()) {
      ::etcdserverpb::WatchCreateRequest& c = *request.mutable_create_request();
      const KeyPrefix& p = relay_->prefix();
      c.set_range_end(p.RangeEnd(c.range_end()));
      c.set_key(p.Key(c.key()));
    }
    relay_->inner().Write(std::move(request));
  }

 private:
  std::shared_ptr<WatchRelay> relay_;
};

class ObserveHandle final : public api::ReadStream {
 public:
  explicit ObserveHandle(std::shared_ptr<ObserveRelay> relay) : relay_(std::move(relay)) {}
  ~ObserveHandle() override { relay_->Release(); }

  void ReadNext() override { relay_->inner().ReadNext(); }
  void Cancel() override { relay_->inner().Cancel(); }

 private:
  std::shared_ptr<ObserveRelay> relay_;
};

}  // namespace

NamespaceBackend::NamespaceBackend(api::Backend& inner, std::string prefix)
    : api::ForwardingBackend(inner),
      prefix_(std::make_shared<const KeyPrefix>(std::move(prefix))) {}

void NamespaceBackend::Range(const api::CallContext& ctx, RangeRequest request,
                             api::Done<RangeResponse> done) {
  if (!PrefixRange(*prefix_, request)) {
    std::move(done)(api::EtcdStatus(api::EtcdError::kEmptyKey));
    return;
  }
  inner().Range(ctx, std::move(request),
                Then(std::move(done), [p = prefix_](RangeResponse& r) { StripRange(*p, r); }));
}

void NamespaceBackend::Put(const api::CallContext& ctx, PutRequest request,
                           api::Done<PutResponse> done) {
  if (!PrefixPut(*prefix_, request)) {
    std::move(done)(api::EtcdStatus(api::EtcdError::kEmptyKey));
    return;
  }
  inner().Put(ctx, std::move(request),
              Then(std::move(done), [p = prefix_](PutResponse& r) { StripPut(*p, r); }));
}

void NamespaceBackend::DeleteRange(const api::CallContext& ctx, DeleteRangeRequest request,
                                   api::Done<DeleteRangeResponse> done) {
  if (!PrefixDelete(*prefix_, request)) {
    std::move(done)(api::EtcdStatus(api::EtcdError::kEmptyKey));
    return;
  }
  inner().DeleteRange(
      ctx, std::move(request),
      Then(std::move(done), [p = prefix_](DeleteRangeResponse& r) { StripDelete(*p, r); }));
}

void NamespaceBackend::Txn(const api::CallContext& ctx, TxnRequest request,
                           api::Done<TxnResponse> done) {
  if (!PrefixTxn(*prefix_, request)) {
    std::move(done)(api::EtcdStatus(api::EtcdError::kEmptyKey));
    return;
  }
  inner().Txn(ctx, std::move(request),
              Then(std::move(done), [p = prefix_](TxnResponse& r) { StripTxn(*p, r); }));
}

void NamespaceBackend::LeaseTimeToLive(const api::CallContext& ctx,
                                       ::etcdserverpb::LeaseTimeToLiveRequest request,
                                       api::Done<::etcdserverpb::LeaseTimeToLiveResponse> done) {
  inner().LeaseTimeToLive(
      ctx, std::move(request),
      Then(std::move(done), [p = prefix_](::etcdserverpb::LeaseTimeToLiveResponse& r) {
        // The lease may hold keys of other namespaces: those are not ours to show.
        std::vector<std::string> keys(r.keys().begin(), r.keys().end());
        r.clear_keys();
        for (std::string& key : p->Filter(keys)) r.add_keys(std::move(key));
      }));
}

void NamespaceBackend::Lock(const api::CallContext& ctx, ::v3lockpb::LockRequest request,
                            api::Done<::v3lockpb::LockResponse> done) {
  request.set_name(prefix_->Key(request.name()));
  inner().Lock(ctx, std::move(request),
               Then(std::move(done), [p = prefix_](::v3lockpb::LockResponse& r) {
                 r.set_key(p->Strip(r.key()).value_or(std::string()));
               }));
}

void NamespaceBackend::Unlock(const api::CallContext& ctx, ::v3lockpb::UnlockRequest request,
                              api::Done<::v3lockpb::UnlockResponse> done) {
  // etcd deletes the key; an empty one would become the key P.
  if (request.key().empty()) {
    std::move(done)(api::EtcdStatus(api::EtcdError::kEmptyKey));
    return;
  }
  request.set_key(prefix_->Key(request.key()));
  inner().Unlock(ctx, std::move(request), std::move(done));
}

void NamespaceBackend::Campaign(const api::CallContext& ctx,
                                ::v3electionpb::CampaignRequest request,
                                api::Done<::v3electionpb::CampaignResponse> done) {
  request.set_name(prefix_->Key(request.name()));
  inner().Campaign(ctx, std::move(request),
                   Then(std::move(done), [p = prefix_](::v3electionpb::CampaignResponse& r) {
                     if (r.has_leader()) StripLeaderKey(*p, *r.mutable_leader());
                   }));
}

void NamespaceBackend::Proclaim(const api::CallContext& ctx,
                                ::v3electionpb::ProclaimRequest request,
                                api::Done<::v3electionpb::ProclaimResponse> done) {
  // Without a leader etcd answers `"leader" field must be provided`: let it.
  // etcd writes the leader key in a txn; an empty one would become the key P.
  if (request.has_leader() && !PrefixLeaderKey(*prefix_, *request.mutable_leader())) {
    std::move(done)(api::EtcdStatus(api::EtcdError::kEmptyKey));
    return;
  }
  inner().Proclaim(ctx, std::move(request), std::move(done));
}

void NamespaceBackend::Leader(const api::CallContext& ctx, ::v3electionpb::LeaderRequest request,
                              api::Done<::v3electionpb::LeaderResponse> done) {
  request.set_name(prefix_->Key(request.name()));
  inner().Leader(ctx, std::move(request),
                 Then(std::move(done),
                      [p = prefix_](::v3electionpb::LeaderResponse& r) { StripLeader(*p, r); }));
}

void NamespaceBackend::Resign(const api::CallContext& ctx, ::v3electionpb::ResignRequest request,
                              api::Done<::v3electionpb::ResignResponse> done) {
  // Without a leader etcd answers `"leader" field must be provided`: let it.
  // etcd deletes the leader key in a txn; an empty one would become the key P.
  if (request.has_leader() && !PrefixLeaderKey(*prefix_, *request.mutable_leader())) {
    std::move(done)(api::EtcdStatus(api::EtcdError::kEmptyKey));
    return;
  }
  inner().Resign(ctx, std::move(request), std::move(done));
}

std::unique_ptr<api::WatchStream> NamespaceBackend::Watch(
    const api::CallContext& ctx, api::StreamObserver<WatchResponse>* observer) {
  auto relay = WatchRelay::Start(prefix_, observer, &StripWatch,
                                 [&](api::StreamObserver<WatchResponse>* relay_observer) {
                                   return inner().Watch(ctx, relay_observer);
                                 });
  return std::make_unique<WatchHandle>(std::move(relay));
}

std::unique_ptr<api::ReadStream> NamespaceBackend::Observe(
    const api::CallContext& ctx, ::v3electionpb::LeaderRequest request,
    api::StreamObserver<::v3electionpb::LeaderResponse>* observer) {
  request.set_name(prefix_->Key(request.name()));
  auto relay =
      ObserveRelay::Start(prefix_, observer, &StripLeader,
                          [&](api::StreamObserver<::v3electionpb::LeaderResponse>* relay_observer) {
                            return inner().Observe(ctx, std::move(request), relay_observer);
                          });
  return std::make_unique<ObserveHandle>(std::move(relay));
}

}  // namespace keel::ns
