// NamespaceBackend over FakeBackend: what the inner backend sees and what the
// client gets back (spec/proxy.md 2.9 with our fixes, scenarios 40-42).

#include "namespace/namespace_backend.h"

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "api/errors.h"
#include "gtest/gtest.h"
#include "tests/testutil/fake_backend.h"

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
using ::keel::testutil::FakeBackend;
using ::keel::testutil::FakeObserve;
using ::keel::testutil::FakeWatch;
using std::string_literals::operator""s;

// Captures one completion.
template <class T>
struct Result {
  std::optional<absl::StatusOr<T>> value;
  api::Done<T> Callback() {
    return [this](absl::StatusOr<T> r) { value = std::move(r); };
  }
  const T& operator*() const { return **value; }
  const T* operator->() const { return &**value; }
  bool ok() const { return value.has_value() && value->ok(); }
};

mvccpb::KeyValue Kv(std::string key, std::string value = "v") {
  mvccpb::KeyValue kv;
  kv.set_key(std::move(key));
  kv.set_value(std::move(value));
  return kv;
}

void ExpectEmptyKeyError(const std::optional<absl::Status>& status) {
  ASSERT_TRUE(status.has_value());
  EXPECT_EQ(*status, api::EtcdStatus(api::EtcdError::kEmptyKey));
  EXPECT_EQ(status->code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status->message(), "etcdserver: key is not provided");
}

template <class T>
std::optional<absl::Status> StatusOf(const Result<T>& r) {
  if (!r.value.has_value()) return std::nullopt;
  return r.value->status();
}

class NamespaceBackendTest : public ::testing::Test {
 protected:
  FakeBackend fake_;
  NamespaceBackend ns_{fake_, "ns/"};
  api::CallContext ctx_;
};

TEST_F(NamespaceBackendTest, RangeMapsKeyAndRangeEndAndStripsResponse) {
  struct Case {
    std::string key, range_end, want_key, want_end;
  };
  const std::vector<Case> cases = {
      {"k", "", "ns/k", ""},                  // single key
      {"k", "\x00"s, "ns/k", "ns0"},          // --from-key
      {"\x00"s, "\x00"s, "ns/\x00"s, "ns0"},  // every key (get --prefix "")
      {"a", "c", "ns/a", "ns/c"},             // [a, c)
      {"k", "l", "ns/k", "ns/l"},             // --prefix k
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    RangeRequest req;
    req.set_key(cases[i].key);
    req.set_range_end(cases[i].range_end);
    req.set_limit(5);
    Result<RangeResponse> got;
    ns_.Range(ctx_, req, got.Callback());
    ASSERT_EQ(fake_.unary_count(), i + 1);
    EXPECT_EQ(fake_.Method(i), "Range");
    RangeRequest seen = fake_.Request<RangeRequest>(i);
    EXPECT_EQ(seen.key(), cases[i].want_key) << i;
    EXPECT_EQ(seen.range_end(), cases[i].want_end) << i;
    EXPECT_EQ(seen.limit(), 5);
  }

  RangeResponse resp;
  resp.mutable_header()->set_revision(9);
  *resp.add_kvs() = Kv("ns/a", "1");
  *resp.add_kvs() = Kv("ns/b", "2");
  resp.set_count(2);
  resp.set_more(true);
  Result<RangeResponse> got;
  RangeRequest req;
  req.set_key("a");
  ns_.Range(ctx_, req, got.Callback());
  fake_.Reply(fake_.unary_count() - 1, resp);
  ASSERT_TRUE(got.ok());
  ASSERT_EQ(got->kvs_size(), 2);
  EXPECT_EQ(got->kvs(0).key(), "a");
  EXPECT_EQ(got->kvs(0).value(), "1");
  EXPECT_EQ(got->kvs(1).key(), "b");
  EXPECT_EQ(got->count(), 2);
  EXPECT_TRUE(got->more());
  EXPECT_EQ(got->header().revision(), 9);
}

TEST_F(NamespaceBackendTest, RangeDropsKeysOutsideThePrefix) {
  Result<RangeResponse> got;
  RangeRequest req;
  req.set_key("a");
  req.set_range_end("z");
  ns_.Range(ctx_, req, got.Callback());
  RangeResponse resp;
  *resp.add_kvs() = Kv("ns/a");
  *resp.add_kvs() = Kv("other/b");
  *resp.add_kvs() = Kv("ns/c");
  resp.set_count(3);
  fake_.Reply(0, resp);
  ASSERT_TRUE(got.ok());
  ASSERT_EQ(got->kvs_size(), 2);
  EXPECT_EQ(got->kvs(0).key(), "a");
  EXPECT_EQ(got->kvs(1).key(), "c");
  EXPECT_EQ(got->count(), 2);
}

TEST_F(NamespaceBackendTest, ErrorsPassThroughUnchanged) {
  Result<RangeResponse> got;
  RangeRequest req;
  req.set_key("a");
  ns_.Range(ctx_, req, got.Callback());
  fake_.Fail(0, api::EtcdStatus(api::EtcdError::kCompacted));
  ASSERT_TRUE(got.value.has_value());
  EXPECT_EQ(got.value->status(), api::EtcdStatus(api::EtcdError::kCompacted));
}

TEST_F(NamespaceBackendTest, ContextIsForwarded) {
  ctx_.token = "secret";
  ctx_.require_leader = true;
  Result<PutResponse> got;
  PutRequest req;
  req.set_key("k");
  ns_.Put(ctx_, req, got.Callback());
  EXPECT_EQ(fake_.Call(0).ctx.token, "secret");
  EXPECT_TRUE(fake_.Call(0).ctx.require_leader);
}

TEST_F(NamespaceBackendTest, EmptyKeysAreRefusedWithoutCallingInner) {
  Result<RangeResponse> range;
  RangeRequest rr;
  rr.set_range_end("\x00"s);
  ns_.Range(ctx_, rr, range.Callback());
  ExpectEmptyKeyError(StatusOf(range));

  Result<PutResponse> put;
  PutRequest pr;
  pr.set_value("v");
  ns_.Put(ctx_, pr, put.Callback());
  ExpectEmptyKeyError(StatusOf(put));

  Result<DeleteRangeResponse> del;
  DeleteRangeRequest dr;
  dr.set_range_end("z");
  ns_.DeleteRange(ctx_, dr, del.Callback());
  ExpectEmptyKeyError(StatusOf(del));

  // An empty key deep inside a nested txn.
  Result<TxnResponse> txn;
  TxnRequest tr;
  tr.add_success()->mutable_request_put()->set_key("ok");
  TxnRequest* nested = tr.add_failure()->mutable_request_txn();
  nested->add_success()->mutable_request_delete_range()->set_key("");
  ns_.Txn(ctx_, tr, txn.Callback());
  ExpectEmptyKeyError(StatusOf(txn));

  Result<::v3lockpb::UnlockResponse> unlock;
  ns_.Unlock(ctx_, ::v3lockpb::UnlockRequest{}, unlock.Callback());
  ExpectEmptyKeyError(StatusOf(unlock));

  Result<::v3electionpb::ProclaimResponse> proclaim;
  ::v3electionpb::ProclaimRequest proc;
  proc.mutable_leader()->set_name("e");
  ns_.Proclaim(ctx_, proc, proclaim.Callback());
  ExpectEmptyKeyError(StatusOf(proclaim));

  Result<::v3electionpb::ResignResponse> resign;
  ::v3electionpb::ResignRequest res;
  res.mutable_leader()->set_name("e");
  ns_.Resign(ctx_, res, resign.Callback());
  ExpectEmptyKeyError(StatusOf(resign));

  EXPECT_EQ(fake_.unary_count(), 0u);
}

// Without a leader field etcd itself answers `"leader" field must be
// provided`; the decorator must not answer for it with another error.
TEST_F(NamespaceBackendTest, ElectionCallsWithoutLeaderPassThrough) {
  Result<::v3electionpb::ProclaimResponse> proclaim;
  ns_.Proclaim(ctx_, ::v3electionpb::ProclaimRequest{}, proclaim.Callback());
  Result<::v3electionpb::ResignResponse> resign;
  ns_.Resign(ctx_, ::v3electionpb::ResignRequest{}, resign.Callback());
  ASSERT_EQ(fake_.unary_count(), 2u);
  EXPECT_FALSE(fake_.Request<::v3electionpb::ProclaimRequest>(0).has_leader());
  EXPECT_FALSE(fake_.Request<::v3electionpb::ResignRequest>(1).has_leader());
}

TEST_F(NamespaceBackendTest, PutPrefixesKeyAndStripsPrevKv) {
  Result<PutResponse> got;
  PutRequest req;
  req.set_key("k");
  req.set_value("v");
  req.set_lease(7);
  req.set_prev_kv(true);
  ns_.Put(ctx_, req, got.Callback());
  PutRequest seen = fake_.Request<PutRequest>(0);
  EXPECT_EQ(seen.key(), "ns/k");
  EXPECT_EQ(seen.value(), "v");
  EXPECT_EQ(seen.lease(), 7);
  EXPECT_TRUE(seen.prev_kv());
  PutResponse resp;
  *resp.mutable_prev_kv() = Kv("ns/k", "old");
  fake_.Reply(0, resp);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->prev_kv().key(), "k");
  EXPECT_EQ(got->prev_kv().value(), "old");
}

TEST_F(NamespaceBackendTest, PutClearsAForeignPrevKv) {
  Result<PutResponse> got;
  PutRequest req;
  req.set_key("k");
  ns_.Put(ctx_, req, got.Callback());
  PutResponse resp;
  *resp.mutable_prev_kv() = Kv("elsewhere", "secret");
  fake_.Reply(0, resp);
  ASSERT_TRUE(got.ok());
  EXPECT_FALSE(got->has_prev_kv());
}

TEST_F(NamespaceBackendTest, DeleteRangeMapsAndStripsPrevKvs) {
  Result<DeleteRangeResponse> got;
  DeleteRangeRequest req;
  req.set_key("a");
  req.set_range_end("\x00"s);
  req.set_prev_kv(true);
  ns_.DeleteRange(ctx_, req, got.Callback());
  DeleteRangeRequest seen = fake_.Request<DeleteRangeRequest>(0);
  EXPECT_EQ(seen.key(), "ns/a");
  EXPECT_EQ(seen.range_end(), "ns0");
  EXPECT_TRUE(seen.prev_kv());
  DeleteRangeResponse resp;
  resp.set_deleted(2);
  *resp.add_prev_kvs() = Kv("ns/a");
  *resp.add_prev_kvs() = Kv("ns/b");
  fake_.Reply(0, resp);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->deleted(), 2);
  ASSERT_EQ(got->prev_kvs_size(), 2);
  EXPECT_EQ(got->prev_kvs(0).key(), "a");
  EXPECT_EQ(got->prev_kvs(1).key(), "b");
}

TEST_F(NamespaceBackendTest, TxnMapsComparesAndOpsRecursively) {
  TxnRequest req;
  Compare* c1 = req.add_compare();
  c1->set_key("k");
  c1->set_target(Compare::VALUE);
  c1->set_value("x");
  Compare* c2 = req.add_compare();
  c2->set_key("a");
  c2->set_range_end("c");
  c2->set_target(Compare::VERSION);
  Compare* c3 = req.add_compare();
  c3->set_key("f");
  c3->set_range_end("\x00"s);
  RangeRequest* r = req.add_success()->mutable_request_range();
  r->set_key("r");
  r->set_range_end("\x00"s);
  req.add_success()->mutable_request_put()->set_key("p");
  DeleteRangeRequest* d = req.add_failure()->mutable_request_delete_range();
  d->set_key("d");
  d->set_range_end("e");
  TxnRequest* nested = req.add_failure()->mutable_request_txn();
  nested->add_compare()->set_key("nc");
  nested->add_success()->mutable_request_put()->set_key("np");
  nested->add_failure()->mutable_request_range()->set_key("nr");

  Result<TxnResponse> got;
  ns_.Txn(ctx_, req, got.Callback());
  TxnRequest seen = fake_.Request<TxnRequest>(0);
  ASSERT_EQ(seen.compare_size(), 3);
  EXPECT_EQ(seen.compare(0).key(), "ns/k");
  EXPECT_EQ(seen.compare(0).range_end(), "");
  EXPECT_EQ(seen.compare(0).value(), "x");
  EXPECT_EQ(seen.compare(1).key(), "ns/a");
  EXPECT_EQ(seen.compare(1).range_end(), "ns/c");
  EXPECT_EQ(seen.compare(2).key(), "ns/f");
  EXPECT_EQ(seen.compare(2).range_end(), "ns0");
  ASSERT_EQ(seen.success_size(), 2);
  EXPECT_EQ(seen.success(0).request_range().key(), "ns/r");
  EXPECT_EQ(seen.success(0).request_range().range_end(), "ns0");
  EXPECT_EQ(seen.success(1).request_put().key(), "ns/p");
  ASSERT_EQ(seen.failure_size(), 2);
  EXPECT_EQ(seen.failure(0).request_delete_range().key(), "ns/d");
  EXPECT_EQ(seen.failure(0).request_delete_range().range_end(), "ns/e");
  const TxnRequest& seen_nested = seen.failure(1).request_txn();
  EXPECT_EQ(seen_nested.compare(0).key(), "ns/nc");
  EXPECT_EQ(seen_nested.success(0).request_put().key(), "ns/np");
  EXPECT_EQ(seen_nested.failure(0).request_range().key(), "ns/nr");

  TxnResponse resp;
  resp.set_succeeded(false);
  DeleteRangeResponse* dr = resp.add_responses()->mutable_response_delete_range();
  *dr->add_prev_kvs() = Kv("ns/d1");
  TxnResponse* nr = resp.add_responses()->mutable_response_txn();
  *nr->add_responses()->mutable_response_range()->add_kvs() = Kv("ns/nr");
  *nr->add_responses()->mutable_response_put()->mutable_prev_kv() = Kv("ns/np");
  TxnResponse* deeper = nr->add_responses()->mutable_response_txn();
  RangeResponse* deep_range = deeper->add_responses()->mutable_response_range();
  *deep_range->add_kvs() = Kv("ns/deep");
  *deep_range->add_kvs() = Kv("foreign");
  fake_.Reply(0, resp);
  ASSERT_TRUE(got.ok());
  EXPECT_FALSE(got->succeeded());
  ASSERT_EQ(got->responses_size(), 2);
  EXPECT_EQ(got->responses(0).response_delete_range().prev_kvs(0).key(), "d1");
  const TxnResponse& got_nested = got->responses(1).response_txn();
  EXPECT_EQ(got_nested.responses(0).response_range().kvs(0).key(), "nr");
  EXPECT_EQ(got_nested.responses(1).response_put().prev_kv().key(), "np");
  const RangeResponse& got_deep =
      got_nested.responses(2).response_txn().responses(0).response_range();
  ASSERT_EQ(got_deep.kvs_size(), 1);
  EXPECT_EQ(got_deep.kvs(0).key(), "deep");
}

TEST_F(NamespaceBackendTest, KeylessCallsPassThrough) {
  ::etcdserverpb::CompactionRequest compact;
  compact.set_revision(42);
  Result<::etcdserverpb::CompactionResponse> compacted;
  ns_.Compact(ctx_, compact, compacted.Callback());
  ::etcdserverpb::LeaseGrantRequest grant;
  grant.set_ttl(60);
  Result<::etcdserverpb::LeaseGrantResponse> granted;
  ns_.LeaseGrant(ctx_, grant, granted.Callback());
  Result<::etcdserverpb::MemberListResponse> members;
  ns_.MemberList(ctx_, ::etcdserverpb::MemberListRequest{}, members.Callback());
  ::etcdserverpb::AuthRoleGrantPermissionRequest perm;
  perm.set_name("r");
  perm.mutable_perm()->set_key("k");
  Result<::etcdserverpb::AuthRoleGrantPermissionResponse> granted_perm;
  ns_.RoleGrantPermission(ctx_, perm, granted_perm.Callback());

  EXPECT_EQ(fake_.Methods(), (std::vector<std::string>{"Compact", "LeaseGrant", "MemberList",
                                                       "RoleGrantPermission"}));
  EXPECT_EQ(fake_.Request<::etcdserverpb::CompactionRequest>(0).revision(), 42);
  EXPECT_EQ(fake_.Request<::etcdserverpb::LeaseGrantRequest>(1).ttl(), 60);
  EXPECT_EQ(fake_.Request<::etcdserverpb::AuthRoleGrantPermissionRequest>(3).perm().key(), "k");
  ::etcdserverpb::LeaseGrantResponse lease;
  lease.set_id(5);
  fake_.Reply(1, lease);
  ASSERT_TRUE(granted.ok());
  EXPECT_EQ(granted->id(), 5);
}

TEST_F(NamespaceBackendTest, LeaseTimeToLiveShowsOnlyKeysInsideThePrefix) {
  ::etcdserverpb::LeaseTimeToLiveRequest req;
  req.set_id(5);
  req.set_keys(true);
  Result<::etcdserverpb::LeaseTimeToLiveResponse> got;
  ns_.LeaseTimeToLive(ctx_, req, got.Callback());
  auto seen = fake_.Request<::etcdserverpb::LeaseTimeToLiveRequest>(0);
  EXPECT_EQ(seen.id(), 5);
  EXPECT_TRUE(seen.keys());
  ::etcdserverpb::LeaseTimeToLiveResponse resp;
  resp.set_id(5);
  resp.set_ttl(30);
  resp.add_keys("ns/a");
  resp.add_keys("other/b");
  resp.add_keys("ns");
  resp.add_keys("ns/c");
  fake_.Reply(0, resp);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->ttl(), 30);
  ASSERT_EQ(got->keys_size(), 2);
  EXPECT_EQ(got->keys(0), "a");
  EXPECT_EQ(got->keys(1), "c");
}

// Scenario 42: the lock's key lives inside the namespace.
TEST_F(NamespaceBackendTest, LockAndUnlockAreNamespaced) {
  ::v3lockpb::LockRequest lock;
  lock.set_name("L");
  lock.set_lease(0x1234);
  Result<::v3lockpb::LockResponse> locked;
  ns_.Lock(ctx_, lock, locked.Callback());
  auto seen = fake_.Request<::v3lockpb::LockRequest>(0);
  EXPECT_EQ(seen.name(), "ns/L");
  EXPECT_EQ(seen.lease(), 0x1234);
  ::v3lockpb::LockResponse resp;
  resp.set_key("ns/L/1234");
  fake_.Reply(0, resp);
  ASSERT_TRUE(locked.ok());
  EXPECT_EQ(locked->key(), "L/1234");

  ::v3lockpb::UnlockRequest unlock;
  unlock.set_key(locked->key());
  Result<::v3lockpb::UnlockResponse> unlocked;
  ns_.Unlock(ctx_, unlock, unlocked.Callback());
  EXPECT_EQ(fake_.Request<::v3lockpb::UnlockRequest>(1).key(), "ns/L/1234");
  fake_.Reply(1, ::v3lockpb::UnlockResponse{});
  EXPECT_TRUE(unlocked.ok());

  // A foreign key is never shown.
  Result<::v3lockpb::LockResponse> odd;
  ns_.Lock(ctx_, lock, odd.Callback());
  resp.set_key("L/1234");
  fake_.Reply(2, resp);
  ASSERT_TRUE(odd.ok());
  EXPECT_EQ(odd->key(), "");
}

TEST_F(NamespaceBackendTest, ElectionIsNamespaced) {
  ::v3electionpb::CampaignRequest campaign;
  campaign.set_name("e");
  campaign.set_lease(9);
  campaign.set_value("me");
  Result<::v3electionpb::CampaignResponse> campaigned;
  ns_.Campaign(ctx_, campaign, campaigned.Callback());
  auto seen_campaign = fake_.Request<::v3electionpb::CampaignRequest>(0);
  EXPECT_EQ(seen_campaign.name(), "ns/e");
  EXPECT_EQ(seen_campaign.value(), "me");
  ::v3electionpb::CampaignResponse cresp;
  cresp.mutable_leader()->set_name("ns/e");
  cresp.mutable_leader()->set_key("ns/e/9");
  cresp.mutable_leader()->set_rev(3);
  cresp.mutable_leader()->set_lease(9);
  fake_.Reply(0, cresp);
  ASSERT_TRUE(campaigned.ok());
  const ::v3electionpb::LeaderKey leader = campaigned->leader();
  EXPECT_EQ(leader.name(), "e");
  EXPECT_EQ(leader.key(), "e/9");
  EXPECT_EQ(leader.rev(), 3);
  EXPECT_EQ(leader.lease(), 9);

  ::v3electionpb::ProclaimRequest proclaim;
  *proclaim.mutable_leader() = leader;
  proclaim.set_value("new");
  Result<::v3electionpb::ProclaimResponse> proclaimed;
  ns_.Proclaim(ctx_, proclaim, proclaimed.Callback());
  auto seen_proclaim = fake_.Request<::v3electionpb::ProclaimRequest>(1);
  EXPECT_EQ(seen_proclaim.leader().name(), "ns/e");
  EXPECT_EQ(seen_proclaim.leader().key(), "ns/e/9");
  EXPECT_EQ(seen_proclaim.leader().rev(), 3);
  EXPECT_EQ(seen_proclaim.value(), "new");

  ::v3electionpb::LeaderRequest who;
  who.set_name("e");
  Result<::v3electionpb::LeaderResponse> current;
  ns_.Leader(ctx_, who, current.Callback());
  EXPECT_EQ(fake_.Request<::v3electionpb::LeaderRequest>(2).name(), "ns/e");
  ::v3electionpb::LeaderResponse lresp;
  *lresp.mutable_kv() = Kv("ns/e/9", "new");
  fake_.Reply(2, lresp);
  ASSERT_TRUE(current.ok());
  EXPECT_EQ(current->kv().key(), "e/9");
  EXPECT_EQ(current->kv().value(), "new");

  ::v3electionpb::ResignRequest resign;
  *resign.mutable_leader() = leader;
  Result<::v3electionpb::ResignResponse> resigned;
  ns_.Resign(ctx_, resign, resigned.Callback());
  auto seen_resign = fake_.Request<::v3electionpb::ResignRequest>(3);
  EXPECT_EQ(seen_resign.leader().name(), "ns/e");
  EXPECT_EQ(seen_resign.leader().key(), "ns/e/9");
  EXPECT_EQ(fake_.Methods(),
            (std::vector<std::string>{"Campaign", "Proclaim", "Leader", "Resign"}));
}

// Scenario 41: namespace "a\xff" must not see the key "b".
TEST(NamespaceBackendEdgeTest, AllKeysOfAnFfEndedPrefixStopBeforeTheNextKey) {
  FakeBackend fake;
  NamespaceBackend ns(fake, "a\xff");
  RangeRequest req;
  req.set_key("\x00"s);
  req.set_range_end("\x00"s);
  Result<RangeResponse> got;
  ns.Range(api::CallContext{}, req, got.Callback());
  RangeRequest seen = fake.Request<RangeRequest>(0);
  EXPECT_EQ(seen.key(), "a\xff\x00"s);
  EXPECT_EQ(seen.range_end(), "b");
}

// Records a stream's callbacks, checking the observer contract.
template <class Response>
class Recorder : public api::StreamObserver<Response> {
 public:
  void OnResponse(Response r) override {
    EXPECT_FALSE(status.has_value()) << "OnResponse after OnDone";
    responses.push_back(std::move(r));
  }
  void OnDone(absl::Status s) override {
    EXPECT_FALSE(status.has_value()) << "OnDone twice";
    status = std::move(s);
  }
  std::vector<Response> responses;
  std::optional<absl::Status> status;
};

TEST_F(NamespaceBackendTest, WatchMapsCreateRequestsAndStripsEvents) {
  Recorder<WatchResponse> rec;
  std::unique_ptr<api::WatchStream> h = ns_.Watch(ctx_, &rec);
  ASSERT_EQ(fake_.watch_count(), 1u);
  std::shared_ptr<FakeWatch> w = fake_.watch(0);

  WatchRequest create;
  create.mutable_create_request()->set_key("\x00"s);  // watch --prefix ""
  create.mutable_create_request()->set_range_end("\x00"s);
  create.mutable_create_request()->set_prev_kv(true);
  create.mutable_create_request()->set_start_revision(4);
  h->Write(create);
  WatchRequest exact;
  exact.mutable_create_request()->set_key("");  // exactly the key P
  h->Write(exact);
  WatchRequest range;
  range.mutable_create_request()->set_key("a");
  range.mutable_create_request()->set_range_end("c");
  h->Write(range);
  WatchRequest cancel;
  cancel.mutable_cancel_request()->set_watch_id(3);
  h->Write(cancel);
  WatchRequest progress;
  progress.mutable_progress_request();
  h->Write(progress);
  h->WritesDone();

  std::vector<WatchRequest> seen = w->Requests();
  ASSERT_EQ(seen.size(), 5u);
  EXPECT_EQ(seen[0].create_request().key(), "ns/\x00"s);
  EXPECT_EQ(seen[0].create_request().range_end(), "ns0");
  EXPECT_TRUE(seen[0].create_request().prev_kv());
  EXPECT_EQ(seen[0].create_request().start_revision(), 4);
  EXPECT_EQ(seen[1].create_request().key(), "ns/");
  EXPECT_EQ(seen[1].create_request().range_end(), "");
  EXPECT_EQ(seen[2].create_request().key(), "ns/a");
  EXPECT_EQ(seen[2].create_request().range_end(), "ns/c");
  EXPECT_EQ(seen[3].cancel_request().watch_id(), 3);
  EXPECT_TRUE(seen[4].has_progress_request());
  EXPECT_TRUE(w->writes_done());

  WatchResponse created;
  created.set_watch_id(1);
  created.set_created(true);
  w->Push(created);
  WatchResponse events;
  events.set_watch_id(1);
  mvccpb::Event* e1 = events.add_events();
  *e1->mutable_kv() = Kv("ns/x", "2");
  *e1->mutable_prev_kv() = Kv("ns/x", "1");
  mvccpb::Event* foreign = events.add_events();
  *foreign->mutable_kv() = Kv("elsewhere");
  mvccpb::Event* e2 = events.add_events();
  e2->set_type(mvccpb::Event::DELETE);
  *e2->mutable_kv() = Kv("ns/", "");
  w->Push(events);
  EXPECT_TRUE(rec.responses.empty());  // no ReadNext yet: flow control passes through
  h->ReadNext();
  ASSERT_EQ(rec.responses.size(), 1u);
  EXPECT_TRUE(rec.responses[0].created());
  h->ReadNext();
  ASSERT_EQ(rec.responses.size(), 2u);
  const WatchResponse& got = rec.responses[1];
  EXPECT_EQ(got.watch_id(), 1);
  ASSERT_EQ(got.events_size(), 2);
  EXPECT_EQ(got.events(0).kv().key(), "x");
  EXPECT_EQ(got.events(0).kv().value(), "2");
  EXPECT_EQ(got.events(0).prev_kv().key(), "x");
  EXPECT_EQ(got.events(0).prev_kv().value(), "1");
  EXPECT_EQ(got.events(1).kv().key(), "");
  EXPECT_EQ(got.events(1).type(), mvccpb::Event::DELETE);

  w->Finish(api::EtcdStatus(api::EtcdError::kNoLeader));
  ASSERT_TRUE(rec.status.has_value());
  EXPECT_EQ(*rec.status, api::EtcdStatus(api::EtcdError::kNoLeader));
  h.reset();
  EXPECT_TRUE(w->handle_released());
  EXPECT_FALSE(w->cancelled());
}

TEST_F(NamespaceBackendTest, WatchCancelIsForwarded) {
  Recorder<WatchResponse> rec;
  std::unique_ptr<api::WatchStream> h = ns_.Watch(ctx_, &rec);
  std::shared_ptr<FakeWatch> w = fake_.watch(0);
  h->Cancel();
  EXPECT_TRUE(w->cancelled());
  ASSERT_TRUE(rec.status.has_value());
  EXPECT_EQ(rec.status->code(), absl::StatusCode::kCancelled);
}

TEST_F(NamespaceBackendTest, DroppingTheWatchHandleCancelsAndStillEndsTheStream) {
  Recorder<WatchResponse> rec;
  std::unique_ptr<api::WatchStream> h = ns_.Watch(ctx_, &rec);
  std::shared_ptr<FakeWatch> w = fake_.watch(0);
  h->ReadNext();
  h.reset();
  EXPECT_TRUE(w->cancelled());
  ASSERT_TRUE(rec.status.has_value());
  EXPECT_EQ(rec.status->code(), absl::StatusCode::kCancelled);
  EXPECT_TRUE(w->done());
}

// An observer that drops its handle from inside OnDone, as a gRPC reactor
// deleting itself does.
class SelfDestroyingRecorder : public api::StreamObserver<WatchResponse> {
 public:
  void OnResponse(WatchResponse) override { ++responses; }
  void OnDone(absl::Status s) override {
    status = s;
    handle.reset();
  }
  std::unique_ptr<api::WatchStream> handle;
  std::optional<absl::Status> status;
  int responses = 0;
};

TEST_F(NamespaceBackendTest, HandleMayBeDestroyedInsideOnDone) {
  SelfDestroyingRecorder rec;
  rec.handle = ns_.Watch(ctx_, &rec);
  std::shared_ptr<FakeWatch> w = fake_.watch(0);
  rec.handle->ReadNext();
  w->Push(WatchResponse{});
  EXPECT_EQ(rec.responses, 1);
  w->Finish(absl::OkStatus());
  ASSERT_TRUE(rec.status.has_value());
  EXPECT_TRUE(rec.status->ok());
  EXPECT_EQ(rec.handle, nullptr);
  EXPECT_TRUE(w->handle_released());
  EXPECT_FALSE(w->cancelled());
}

TEST_F(NamespaceBackendTest, ObserveIsNamespaced) {
  Recorder<::v3electionpb::LeaderResponse> rec;
  ::v3electionpb::LeaderRequest req;
  req.set_name("e");
  std::unique_ptr<api::ReadStream> h = ns_.Observe(ctx_, req, &rec);
  ASSERT_EQ(fake_.observe_count(), 1u);
  std::shared_ptr<FakeObserve> o = fake_.observe(0);
  ASSERT_EQ(o->Requests().size(), 1u);
  EXPECT_EQ(o->Requests()[0].name(), "ns/e");
  h->ReadNext();
  ::v3electionpb::LeaderResponse resp;
  *resp.mutable_kv() = Kv("ns/e/9", "leader");
  o->Push(resp);
  ASSERT_EQ(rec.responses.size(), 1u);
  EXPECT_EQ(rec.responses[0].kv().key(), "e/9");
  EXPECT_EQ(rec.responses[0].kv().value(), "leader");
  h->Cancel();
  ASSERT_TRUE(rec.status.has_value());
  EXPECT_EQ(rec.status->code(), absl::StatusCode::kCancelled);
  EXPECT_TRUE(o->cancelled());
}

TEST_F(NamespaceBackendTest, KeepAliveAndSnapshotPassThrough) {
  Recorder<::etcdserverpb::LeaseKeepAliveResponse> rec;
  std::unique_ptr<api::LeaseKeepAliveStream> h = ns_.LeaseKeepAlive(ctx_, &rec);
  ASSERT_EQ(fake_.keepalive_count(), 1u);
  ::etcdserverpb::LeaseKeepAliveRequest ka;
  ka.set_id(5);
  h->Write(ka);
  EXPECT_EQ(fake_.keepalive(0)->Requests().at(0).id(), 5);
  Recorder<::etcdserverpb::SnapshotResponse> snap_rec;
  std::unique_ptr<api::ReadStream> s =
      ns_.Snapshot(ctx_, ::etcdserverpb::SnapshotRequest{}, &snap_rec);
  EXPECT_EQ(fake_.snapshot_count(), 1u);
}

}  // namespace
}  // namespace keel::ns
