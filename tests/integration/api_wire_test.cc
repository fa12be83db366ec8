// Proves keel's hand-written etcd v3 protos (api/) against a real etcd 3.4:
// every service is called through the generated stubs and the answers,
// error codes and error messages are checked field by field.

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "api/errors.h"
#include "api/etcdserverpb/rpc.grpc.pb.h"
#include "api/v3electionpb/v3election.grpc.pb.h"
#include "api/v3lockpb/v3lock.grpc.pb.h"
#include "tests/testutil/etcd_cluster.h"

namespace keel {
namespace {

using etcdserverpb::Compare;
using etcdserverpb::RangeRequest;

constexpr auto kCallTimeout = std::chrono::seconds(10);

// Gives `ctx` the per-call deadline every RPC in this file uses.
void SetDeadline(grpc::ClientContext& ctx) {
  ctx.set_deadline(std::chrono::system_clock::now() + kCallTimeout);
}

// The range_end that makes [prefix, end) the keys starting with `prefix`.
std::string PrefixEnd(std::string prefix) {
  while (!prefix.empty()) {
    if (static_cast<unsigned char>(prefix.back()) < 0xff) {
      prefix.back() = static_cast<char>(prefix.back() + 1);
      return prefix;
    }
    prefix.pop_back();
  }
  return std::string(1, '\0');
}

// Lowercase hex without padding, as etcd names lock and election keys.
std::string Hex(int64_t id) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%llx", static_cast<unsigned long long>(id));
  return buf;
}

// One real etcd member shared by every test; each test uses its own key prefix.
class ApiWireTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    cluster_ = new testutil::EtcdCluster();
    std::string error;
    start_error_ = cluster_->Start(&error) ? "" : error;
    channel_ = grpc::CreateChannel(cluster_->ClientAddr(0), grpc::InsecureChannelCredentials());
  }

  static void TearDownTestSuite() {
    channel_.reset();
    delete cluster_;
    cluster_ = nullptr;
  }

  void SetUp() override { ASSERT_TRUE(start_error_.empty()) << start_error_; }

  // A KV stub on the shared channel.
  static std::unique_ptr<etcdserverpb::KV::Stub> Kv() {
    return etcdserverpb::KV::NewStub(channel_);
  }

  // Puts key=value and returns the response; fails the test on error.
  static etcdserverpb::PutResponse Put(const std::string& key, const std::string& value,
                                       int64_t lease = 0) {
    etcdserverpb::PutRequest req;
    req.set_key(key);
    req.set_value(value);
    req.set_lease(lease);
    etcdserverpb::PutResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    grpc::Status s = Kv()->Put(&ctx, req, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return resp;
  }

  // Ranges one key or [key, range_end); fails the test on error.
  static etcdserverpb::RangeResponse Get(const std::string& key, const std::string& end = "") {
    RangeRequest req;
    req.set_key(key);
    req.set_range_end(end);
    etcdserverpb::RangeResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    grpc::Status s = Kv()->Range(&ctx, req, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return resp;
  }

  // Grants a lease of `ttl` seconds and returns its ID; fails the test on error.
  static int64_t GrantLease(int64_t ttl) {
    etcdserverpb::LeaseGrantRequest req;
    req.set_ttl(ttl);
    etcdserverpb::LeaseGrantResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    grpc::Status s = etcdserverpb::Lease::NewStub(channel_)->LeaseGrant(&ctx, req, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    EXPECT_NE(resp.id(), 0);
    return resp.id();
  }

  static testutil::EtcdCluster* cluster_;
  static std::string start_error_;
  static std::shared_ptr<grpc::Channel> channel_;
};

testutil::EtcdCluster* ApiWireTest::cluster_ = nullptr;
std::string ApiWireTest::start_error_;
std::shared_ptr<grpc::Channel> ApiWireTest::channel_;

TEST_F(ApiWireTest, KvPutRangeDelete) {
  const std::string p = "/api-wire/kv/";
  auto kv = Kv();

  etcdserverpb::PutResponse first = Put(p + "a", "1");
  EXPECT_GT(first.header().revision(), 0);
  EXPECT_NE(first.header().cluster_id(), 0u);
  EXPECT_NE(first.header().member_id(), 0u);
  EXPECT_GT(first.header().raft_term(), 0u);
  EXPECT_FALSE(first.has_prev_kv());

  {
    etcdserverpb::PutRequest req;
    req.set_key(p + "a");
    req.set_value("2");
    req.set_prev_kv(true);
    etcdserverpb::PutResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    ASSERT_TRUE(kv->Put(&ctx, req, &resp).ok());
    ASSERT_TRUE(resp.has_prev_kv());
    EXPECT_EQ(resp.prev_kv().key(), p + "a");
    EXPECT_EQ(resp.prev_kv().value(), "1");
    EXPECT_EQ(resp.prev_kv().version(), 1);
    EXPECT_EQ(resp.prev_kv().create_revision(), first.header().revision());
    EXPECT_EQ(resp.prev_kv().mod_revision(), first.header().revision());
    EXPECT_EQ(resp.header().revision(), first.header().revision() + 1);
  }
  Put(p + "b", "bee");
  Put(p + "c", "sea");
  Put("/api-wire/kv0", "outside the prefix");

  // Prefix scan.
  etcdserverpb::RangeResponse all = Get(p, PrefixEnd(p));
  ASSERT_EQ(all.kvs_size(), 3);
  EXPECT_EQ(all.count(), 3);
  EXPECT_FALSE(all.more());
  EXPECT_EQ(all.kvs(0).key(), p + "a");
  EXPECT_EQ(all.kvs(0).value(), "2");
  EXPECT_EQ(all.kvs(0).version(), 2);
  EXPECT_EQ(all.kvs(0).lease(), 0);
  EXPECT_EQ(all.kvs(1).key(), p + "b");
  EXPECT_EQ(all.kvs(2).key(), p + "c");

  {  // limit
    RangeRequest req;
    req.set_key(p);
    req.set_range_end(PrefixEnd(p));
    req.set_limit(2);
    etcdserverpb::RangeResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    ASSERT_TRUE(kv->Range(&ctx, req, &resp).ok());
    ASSERT_EQ(resp.kvs_size(), 2);
    EXPECT_TRUE(resp.more());
    EXPECT_EQ(resp.count(), 3);
  }
  {  // sort by value, descending: "sea" > "bee" > "2"
    RangeRequest req;
    req.set_key(p);
    req.set_range_end(PrefixEnd(p));
    req.set_sort_target(RangeRequest::VALUE);
    req.set_sort_order(RangeRequest::DESCEND);
    etcdserverpb::RangeResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    ASSERT_TRUE(kv->Range(&ctx, req, &resp).ok());
    ASSERT_EQ(resp.kvs_size(), 3);
    EXPECT_EQ(resp.kvs(0).key(), p + "c");
    EXPECT_EQ(resp.kvs(1).key(), p + "b");
    EXPECT_EQ(resp.kvs(2).key(), p + "a");
  }
  {  // count_only
    RangeRequest req;
    req.set_key(p);
    req.set_range_end(PrefixEnd(p));
    req.set_count_only(true);
    etcdserverpb::RangeResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    ASSERT_TRUE(kv->Range(&ctx, req, &resp).ok());
    EXPECT_EQ(resp.kvs_size(), 0);
    EXPECT_EQ(resp.count(), 3);
  }
  {  // keys_only
    RangeRequest req;
    req.set_key(p);
    req.set_range_end(PrefixEnd(p));
    req.set_keys_only(true);
    etcdserverpb::RangeResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    ASSERT_TRUE(kv->Range(&ctx, req, &resp).ok());
    ASSERT_EQ(resp.kvs_size(), 3);
    for (const auto& item : resp.kvs()) {
      EXPECT_TRUE(item.value().empty()) << item.key();
      EXPECT_GT(item.mod_revision(), 0);
    }
  }
  {  // DeleteRange with prev_kv
    etcdserverpb::DeleteRangeRequest req;
    req.set_key(p + "c");
    req.set_prev_kv(true);
    etcdserverpb::DeleteRangeResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    ASSERT_TRUE(kv->DeleteRange(&ctx, req, &resp).ok());
    EXPECT_EQ(resp.deleted(), 1);
    ASSERT_EQ(resp.prev_kvs_size(), 1);
    EXPECT_EQ(resp.prev_kvs(0).key(), p + "c");
    EXPECT_EQ(resp.prev_kvs(0).value(), "sea");
  }
  EXPECT_EQ(Get(p + "c").kvs_size(), 0);
  EXPECT_EQ(Get(p, PrefixEnd(p)).count(), 2);
}

TEST_F(ApiWireTest, KvTxn) {
  const std::string p = "/api-wire/txn/";
  auto kv = Kv();
  etcdserverpb::PutResponse put = Put(p + "k", "v1");
  Put(p + "other", "o");
  const int64_t mod = put.header().revision();

  {  // value == "v1" holds: success branch puts and then reads inside the txn.
    etcdserverpb::TxnRequest req;
    Compare* cmp = req.add_compare();
    cmp->set_key(p + "k");
    cmp->set_target(Compare::VALUE);
    cmp->set_result(Compare::EQUAL);
    cmp->set_value("v1");
    auto* put_op = req.add_success()->mutable_request_put();
    put_op->set_key(p + "k");
    put_op->set_value("v2");
    req.add_success()->mutable_request_range()->set_key(p + "k");
    req.add_failure()->mutable_request_range()->set_key(p + "other");
    etcdserverpb::TxnResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    ASSERT_TRUE(kv->Txn(&ctx, req, &resp).ok());
    EXPECT_TRUE(resp.succeeded());
    ASSERT_EQ(resp.responses_size(), 2);
    ASSERT_TRUE(resp.responses(0).has_response_put());
    ASSERT_TRUE(resp.responses(1).has_response_range());
    const auto& range = resp.responses(1).response_range();
    ASSERT_EQ(range.kvs_size(), 1);
    EXPECT_EQ(range.kvs(0).value(), "v2");
    EXPECT_EQ(range.kvs(0).version(), 2);
    EXPECT_EQ(resp.header().revision(), range.kvs(0).mod_revision());
  }
  {  // version == 1 fails now (it is 2): failure branch reads the other key.
    etcdserverpb::TxnRequest req;
    Compare* cmp = req.add_compare();
    cmp->set_key(p + "k");
    cmp->set_target(Compare::VERSION);
    cmp->set_result(Compare::EQUAL);
    cmp->set_version(1);
    req.add_success()->mutable_request_delete_range()->set_key(p + "k");
    req.add_failure()->mutable_request_range()->set_key(p + "other");
    etcdserverpb::TxnResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    ASSERT_TRUE(kv->Txn(&ctx, req, &resp).ok());
    EXPECT_FALSE(resp.succeeded());
    ASSERT_EQ(resp.responses_size(), 1);
    ASSERT_TRUE(resp.responses(0).has_response_range());
    ASSERT_EQ(resp.responses(0).response_range().kvs_size(), 1);
    EXPECT_EQ(resp.responses(0).response_range().kvs(0).value(), "o");
  }
  {  // mod_revision > first put holds; a nested txn (create == 0 on a missing key) runs too.
    etcdserverpb::TxnRequest req;
    Compare* cmp = req.add_compare();
    cmp->set_key(p + "k");
    cmp->set_target(Compare::MOD);
    cmp->set_result(Compare::GREATER);
    cmp->set_mod_revision(mod);
    etcdserverpb::TxnRequest* nested = req.add_success()->mutable_request_txn();
    Compare* missing = nested->add_compare();
    missing->set_key(p + "missing");
    missing->set_target(Compare::CREATE);
    missing->set_result(Compare::EQUAL);
    missing->set_create_revision(0);
    auto* nested_put = nested->add_success()->mutable_request_put();
    nested_put->set_key(p + "missing");
    nested_put->set_value("created");
    etcdserverpb::TxnResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    ASSERT_TRUE(kv->Txn(&ctx, req, &resp).ok());
    EXPECT_TRUE(resp.succeeded());
    ASSERT_EQ(resp.responses_size(), 1);
    ASSERT_TRUE(resp.responses(0).has_response_txn());
    EXPECT_TRUE(resp.responses(0).response_txn().succeeded());
    EXPECT_EQ(resp.responses(0).response_txn().responses_size(), 1);
  }
  etcdserverpb::RangeResponse created = Get(p + "missing");
  ASSERT_EQ(created.kvs_size(), 1);
  EXPECT_EQ(created.kvs(0).value(), "created");
}

TEST_F(ApiWireTest, KvCompactAndErrors) {
  const std::string key = "/api-wire/compact/k";
  auto kv = Kv();
  Put(key, "1");
  const int64_t old_rev = Put(key, "2").header().revision();
  const int64_t compact_rev = Put(key, "3").header().revision();

  {
    etcdserverpb::CompactionRequest req;
    req.set_revision(compact_rev);
    req.set_physical(true);
    etcdserverpb::CompactionResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    grpc::Status s = kv->Compact(&ctx, req, &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_GE(resp.header().revision(), compact_rev);
  }
  {  // Reading at the compacted revision itself is allowed.
    RangeRequest req;
    req.set_key(key);
    req.set_revision(compact_rev);
    etcdserverpb::RangeResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    ASSERT_TRUE(kv->Range(&ctx, req, &resp).ok());
    ASSERT_EQ(resp.kvs_size(), 1);
    EXPECT_EQ(resp.kvs(0).value(), "3");
  }
  {  // Older than that is gone.
    RangeRequest req;
    req.set_key(key);
    req.set_revision(old_rev);
    etcdserverpb::RangeResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    grpc::Status s = kv->Range(&ctx, req, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::OUT_OF_RANGE);
    EXPECT_EQ(s.error_message(), "etcdserver: mvcc: required revision has been compacted");
  }
  {  // Compacting the same revision again is an error too.
    etcdserverpb::CompactionRequest req;
    req.set_revision(compact_rev);
    etcdserverpb::CompactionResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    grpc::Status s = kv->Compact(&ctx, req, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::OUT_OF_RANGE);
    EXPECT_EQ(s.error_message(), "etcdserver: mvcc: required revision has been compacted");
  }
  {
    RangeRequest req;
    etcdserverpb::RangeResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    grpc::Status s = kv->Range(&ctx, req, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_EQ(s.error_message(), "etcdserver: key is not provided");
  }
}

TEST_F(ApiWireTest, WatchCreateEventCancel) {
  const std::string key = "/api-wire/watch/k";
  Put(key, "before");

  grpc::ClientContext ctx;
  SetDeadline(ctx);
  auto stream = etcdserverpb::Watch::NewStub(channel_)->Watch(&ctx);

  etcdserverpb::WatchRequest create;
  create.mutable_create_request()->set_key(key);
  create.mutable_create_request()->set_prev_kv(true);
  ASSERT_TRUE(stream->Write(create));

  etcdserverpb::WatchResponse resp;
  ASSERT_TRUE(stream->Read(&resp));
  EXPECT_TRUE(resp.created());
  EXPECT_FALSE(resp.canceled());
  EXPECT_EQ(resp.events_size(), 0);
  EXPECT_GT(resp.header().revision(), 0);
  const int64_t watch_id = resp.watch_id();

  const int64_t put_rev = Put(key, "after").header().revision();

  ASSERT_TRUE(stream->Read(&resp));
  EXPECT_EQ(resp.watch_id(), watch_id);
  EXPECT_EQ(resp.header().revision(), put_rev);
  ASSERT_EQ(resp.events_size(), 1);
  const mvccpb::Event& ev = resp.events(0);
  EXPECT_EQ(ev.type(), mvccpb::Event::PUT);
  EXPECT_EQ(ev.kv().key(), key);
  EXPECT_EQ(ev.kv().value(), "after");
  EXPECT_EQ(ev.kv().mod_revision(), put_rev);
  EXPECT_EQ(ev.kv().version(), 2);
  ASSERT_TRUE(ev.has_prev_kv());
  EXPECT_EQ(ev.prev_kv().value(), "before");
  EXPECT_EQ(ev.prev_kv().version(), 1);

  etcdserverpb::WatchRequest cancel;
  cancel.mutable_cancel_request()->set_watch_id(watch_id);
  ASSERT_TRUE(stream->Write(cancel));
  ASSERT_TRUE(stream->Read(&resp));
  EXPECT_TRUE(resp.canceled());
  EXPECT_EQ(resp.watch_id(), watch_id);
  EXPECT_EQ(resp.events_size(), 0);

  // etcd keeps the stream open after the client half-closes; end it here.
  ctx.TryCancel();
  stream->Finish();
}

TEST_F(ApiWireTest, LeaseLifecycle) {
  auto lease = etcdserverpb::Lease::NewStub(channel_);
  const std::string key = "/api-wire/lease/k";

  etcdserverpb::LeaseGrantResponse granted;
  {
    etcdserverpb::LeaseGrantRequest req;
    req.set_ttl(60);
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    ASSERT_TRUE(lease->LeaseGrant(&ctx, req, &granted).ok());
    EXPECT_NE(granted.id(), 0);
    EXPECT_EQ(granted.ttl(), 60);
    EXPECT_TRUE(granted.error().empty());
  }
  const int64_t id = granted.id();
  Put(key, "leased", id);
  EXPECT_EQ(Get(key).kvs(0).lease(), id);

  {
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    auto stream = lease->LeaseKeepAlive(&ctx);
    etcdserverpb::LeaseKeepAliveRequest req;
    req.set_id(id);
    ASSERT_TRUE(stream->Write(req));
    etcdserverpb::LeaseKeepAliveResponse resp;
    ASSERT_TRUE(stream->Read(&resp));
    EXPECT_EQ(resp.id(), id);
    EXPECT_GT(resp.ttl(), 0);
    ctx.TryCancel();
    stream->Finish();
  }
  {
    etcdserverpb::LeaseTimeToLiveRequest req;
    req.set_id(id);
    req.set_keys(true);
    etcdserverpb::LeaseTimeToLiveResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    ASSERT_TRUE(lease->LeaseTimeToLive(&ctx, req, &resp).ok());
    EXPECT_EQ(resp.id(), id);
    EXPECT_EQ(resp.grantedttl(), 60);
    EXPECT_GT(resp.ttl(), 0);
    EXPECT_LE(resp.ttl(), 60);
    ASSERT_EQ(resp.keys_size(), 1);
    EXPECT_EQ(resp.keys(0), key);
  }
  {
    etcdserverpb::LeaseLeasesResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    ASSERT_TRUE(lease->LeaseLeases(&ctx, etcdserverpb::LeaseLeasesRequest(), &resp).ok());
    EXPECT_TRUE(std::any_of(resp.leases().begin(), resp.leases().end(),
                            [&](const etcdserverpb::LeaseStatus& l) { return l.id() == id; }));
  }
  etcdserverpb::LeaseRevokeRequest revoke;
  revoke.set_id(id);
  {
    etcdserverpb::LeaseRevokeResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    grpc::Status s = lease->LeaseRevoke(&ctx, revoke, &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_GT(resp.header().revision(), 0);
  }
  EXPECT_EQ(Get(key).kvs_size(), 0);  // revoking deleted the attached key
  {
    etcdserverpb::LeaseTimeToLiveRequest req;
    req.set_id(id);
    etcdserverpb::LeaseTimeToLiveResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    ASSERT_TRUE(lease->LeaseTimeToLive(&ctx, req, &resp).ok());
    EXPECT_EQ(resp.ttl(), -1);
  }
  {
    etcdserverpb::LeaseRevokeResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    grpc::Status s = lease->LeaseRevoke(&ctx, revoke, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
    EXPECT_EQ(s.error_message(), "etcdserver: requested lease not found");
  }
}

TEST_F(ApiWireTest, ClusterMemberList) {
  etcdserverpb::MemberListResponse resp;
  grpc::ClientContext ctx;
  SetDeadline(ctx);
  grpc::Status s = etcdserverpb::Cluster::NewStub(channel_)->MemberList(
      &ctx, etcdserverpb::MemberListRequest(), &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_NE(resp.header().cluster_id(), 0u);
  EXPECT_NE(resp.header().member_id(), 0u);
  EXPECT_EQ(resp.header().revision(), 0);  // Cluster RPCs carry no revision
  ASSERT_EQ(resp.members_size(), 1);
  const etcdserverpb::Member& m = resp.members(0);
  EXPECT_EQ(m.id(), resp.header().member_id());
  EXPECT_EQ(m.name(), "m0");
  EXPECT_FALSE(m.islearner());
  ASSERT_EQ(m.clienturls_size(), 1);
  EXPECT_EQ(m.clienturls(0), cluster_->ClientUrl(0));
  ASSERT_EQ(m.peerurls_size(), 1);
  EXPECT_EQ(m.peerurls(0).rfind("http://127.0.0.1:", 0), 0u) << m.peerurls(0);
}

TEST_F(ApiWireTest, Maintenance) {
  auto maint = etcdserverpb::Maintenance::NewStub(channel_);
  {
    etcdserverpb::StatusResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    ASSERT_TRUE(maint->Status(&ctx, etcdserverpb::StatusRequest(), &resp).ok());
    EXPECT_EQ(resp.version(), "3.4.23");
    EXPECT_GT(resp.dbsize(), 0);
    EXPECT_GT(resp.dbsizeinuse(), 0);
    EXPECT_EQ(resp.leader(), resp.header().member_id());
    EXPECT_GT(resp.raftindex(), 0u);
    EXPECT_GT(resp.raftterm(), 0u);
    EXPECT_GT(resp.raftappliedindex(), 0u);
    EXPECT_EQ(resp.errors_size(), 0);
    EXPECT_FALSE(resp.islearner());
  }
  {  // HashKV at a fixed revision is stable.
    const int64_t rev = Put("/api-wire/maint/k", "v").header().revision();
    etcdserverpb::HashKVRequest req;
    req.set_revision(rev);
    etcdserverpb::HashKVResponse a;
    etcdserverpb::HashKVResponse b;
    grpc::ClientContext ctx_a;
    SetDeadline(ctx_a);
    ASSERT_TRUE(maint->HashKV(&ctx_a, req, &a).ok());
    grpc::ClientContext ctx_b;
    SetDeadline(ctx_b);
    ASSERT_TRUE(maint->HashKV(&ctx_b, req, &b).ok());
    EXPECT_NE(a.hash(), 0u);
    EXPECT_EQ(a.hash(), b.hash());
    EXPECT_GE(a.header().revision(), rev);
    // -1 until the first compaction, then the compacted revision.
    EXPECT_TRUE(a.compact_revision() == -1 || a.compact_revision() > 0) << a.compact_revision();
  }
  {
    etcdserverpb::AlarmRequest req;
    req.set_action(etcdserverpb::AlarmRequest::GET);
    req.set_alarm(etcdserverpb::NONE);
    etcdserverpb::AlarmResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    ASSERT_TRUE(maint->Alarm(&ctx, req, &resp).ok());
    EXPECT_EQ(resp.alarms_size(), 0);
    // etcd 3.4 answers a GET without alarms with no header at all.
    EXPECT_FALSE(resp.has_header());
  }
  {
    etcdserverpb::DefragmentResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    grpc::Status s = maint->Defragment(&ctx, etcdserverpb::DefragmentRequest(), &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_FALSE(resp.has_header());  // etcd 3.4 sends an empty DefragmentResponse
  }
  {  // Snapshot: the backend file in chunks, then its 32-byte SHA-256.
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    auto reader = maint->Snapshot(&ctx, etcdserverpb::SnapshotRequest());
    etcdserverpb::SnapshotResponse chunk;
    uint64_t total = 0;
    int messages = 0;
    uint64_t last_remaining = 1;
    size_t last_blob = 0;
    while (reader->Read(&chunk)) {
      ++messages;
      total += chunk.blob().size();
      last_remaining = chunk.remaining_bytes();
      last_blob = chunk.blob().size();
    }
    grpc::Status s = reader->Finish();
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_GE(messages, 2);
    EXPECT_GT(total, 0u);
    EXPECT_EQ(last_remaining, 0u);
    EXPECT_EQ(last_blob, 32u);
    EXPECT_EQ(total % 512, 32u);
  }
}

TEST_F(ApiWireTest, AuthUsersAndRoles) {
  auto auth = etcdserverpb::Auth::NewStub(channel_);
  {
    etcdserverpb::AuthUserAddRequest req;
    req.set_name("api-wire-user");
    req.set_password("secret");
    etcdserverpb::AuthUserAddResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    grpc::Status s = auth->UserAdd(&ctx, req, &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  {
    etcdserverpb::AuthUserListResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    ASSERT_TRUE(auth->UserList(&ctx, etcdserverpb::AuthUserListRequest(), &resp).ok());
    EXPECT_EQ(std::count(resp.users().begin(), resp.users().end(), "api-wire-user"), 1);
  }
  {
    etcdserverpb::AuthRoleAddRequest req;
    req.set_name("api-wire-role");
    etcdserverpb::AuthRoleAddResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    ASSERT_TRUE(auth->RoleAdd(&ctx, req, &resp).ok());
  }
  {  // authpb.Permission travels inside the Auth messages.
    etcdserverpb::AuthRoleGrantPermissionRequest req;
    req.set_name("api-wire-role");
    req.mutable_perm()->set_permtype(authpb::Permission::READWRITE);
    req.mutable_perm()->set_key("/app/");
    req.mutable_perm()->set_range_end("/app0");
    etcdserverpb::AuthRoleGrantPermissionResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    ASSERT_TRUE(auth->RoleGrantPermission(&ctx, req, &resp).ok());
  }
  {
    etcdserverpb::AuthRoleGetRequest req;
    req.set_role("api-wire-role");
    etcdserverpb::AuthRoleGetResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    ASSERT_TRUE(auth->RoleGet(&ctx, req, &resp).ok());
    ASSERT_EQ(resp.perm_size(), 1);
    EXPECT_EQ(resp.perm(0).permtype(), authpb::Permission::READWRITE);
    EXPECT_EQ(resp.perm(0).key(), "/app/");
    EXPECT_EQ(resp.perm(0).range_end(), "/app0");
  }
  {
    etcdserverpb::AuthRoleListResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    ASSERT_TRUE(auth->RoleList(&ctx, etcdserverpb::AuthRoleListRequest(), &resp).ok());
    EXPECT_EQ(std::count(resp.roles().begin(), resp.roles().end(), "api-wire-role"), 1);
  }
  {
    etcdserverpb::AuthUserGrantRoleRequest req;
    req.set_user("api-wire-user");
    req.set_role("api-wire-role");
    etcdserverpb::AuthUserGrantRoleResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    ASSERT_TRUE(auth->UserGrantRole(&ctx, req, &resp).ok());
  }
  {
    etcdserverpb::AuthUserGetRequest req;
    req.set_name("api-wire-user");
    etcdserverpb::AuthUserGetResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    ASSERT_TRUE(auth->UserGet(&ctx, req, &resp).ok());
    ASSERT_EQ(resp.roles_size(), 1);
    EXPECT_EQ(resp.roles(0), "api-wire-role");
  }
  {
    etcdserverpb::AuthUserDeleteRequest req;
    req.set_name("api-wire-user");
    etcdserverpb::AuthUserDeleteResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    ASSERT_TRUE(auth->UserDelete(&ctx, req, &resp).ok());
  }
  {
    etcdserverpb::AuthUserListResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    ASSERT_TRUE(auth->UserList(&ctx, etcdserverpb::AuthUserListRequest(), &resp).ok());
    EXPECT_EQ(std::count(resp.users().begin(), resp.users().end(), "api-wire-user"), 0);
  }
  {
    etcdserverpb::AuthRoleDeleteRequest req;
    req.set_role("api-wire-role");
    etcdserverpb::AuthRoleDeleteResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    ASSERT_TRUE(auth->RoleDelete(&ctx, req, &resp).ok());
  }
  {  // Auth is disabled.
    etcdserverpb::AuthenticateRequest req;
    req.set_name("root");
    req.set_password("x");
    etcdserverpb::AuthenticateResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    grpc::Status s = auth->Authenticate(&ctx, req, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
    EXPECT_EQ(s.error_message(), "etcdserver: authentication is not enabled");
  }
  {  // AuthStatus is etcd 3.5; a 3.4 server does not know the method.
    etcdserverpb::AuthStatusResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    grpc::Status s = auth->AuthStatus(&ctx, etcdserverpb::AuthStatusRequest(), &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNIMPLEMENTED) << s.error_message();
  }
}

TEST_F(ApiWireTest, LockAndUnlock) {
  auto lock = v3lockpb::Lock::NewStub(channel_);
  const int64_t lease = GrantLease(60);
  const std::string name = "/api-wire/lock";

  v3lockpb::LockResponse locked;
  {
    v3lockpb::LockRequest req;
    req.set_name(name);
    req.set_lease(lease);
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    grpc::Status s = lock->Lock(&ctx, req, &locked);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  EXPECT_EQ(locked.key(), name + "/" + Hex(lease));
  EXPECT_GT(locked.header().revision(), 0);
  etcdserverpb::RangeResponse held = Get(locked.key());
  ASSERT_EQ(held.kvs_size(), 1);
  EXPECT_EQ(held.kvs(0).lease(), lease);

  {
    v3lockpb::UnlockRequest req;
    req.set_key(locked.key());
    v3lockpb::UnlockResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    ASSERT_TRUE(lock->Unlock(&ctx, req, &resp).ok());
  }
  EXPECT_EQ(Get(locked.key()).kvs_size(), 0);
}

TEST_F(ApiWireTest, Election) {
  auto election = v3electionpb::Election::NewStub(channel_);
  const int64_t lease = GrantLease(60);
  const std::string name = "/api-wire/election";

  v3electionpb::CampaignResponse campaign;
  {
    v3electionpb::CampaignRequest req;
    req.set_name(name);
    req.set_lease(lease);
    req.set_value("first");
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    grpc::Status s = election->Campaign(&ctx, req, &campaign);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  const v3electionpb::LeaderKey& leader = campaign.leader();
  EXPECT_EQ(leader.name(), name);
  EXPECT_EQ(leader.key(), name + "/" + Hex(lease));
  EXPECT_EQ(leader.lease(), lease);
  EXPECT_GT(leader.rev(), 0);

  auto current_value = [&]() -> std::string {
    v3electionpb::LeaderRequest req;
    req.set_name(name);
    v3electionpb::LeaderResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    grpc::Status s = election->Leader(&ctx, req, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(resp.kv().key(), leader.key());
    EXPECT_EQ(resp.kv().create_revision(), leader.rev());
    return resp.kv().value();
  };
  EXPECT_EQ(current_value(), "first");

  {
    v3electionpb::ProclaimRequest req;
    *req.mutable_leader() = leader;
    req.set_value("second");
    v3electionpb::ProclaimResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    ASSERT_TRUE(election->Proclaim(&ctx, req, &resp).ok());
  }
  EXPECT_EQ(current_value(), "second");

  {
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    v3electionpb::LeaderRequest req;
    req.set_name(name);
    auto reader = election->Observe(&ctx, req);
    v3electionpb::LeaderResponse first;
    ASSERT_TRUE(reader->Read(&first));
    EXPECT_EQ(first.kv().key(), leader.key());
    EXPECT_EQ(first.kv().value(), "second");
    ctx.TryCancel();
    reader->Finish();
  }
  {
    v3electionpb::ResignRequest req;
    *req.mutable_leader() = leader;
    v3electionpb::ResignResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    ASSERT_TRUE(election->Resign(&ctx, req, &resp).ok());
  }
  EXPECT_EQ(Get(leader.key()).kvs_size(), 0);
  {  // No candidate left.
    v3electionpb::LeaderRequest req;
    req.set_name(name);
    v3electionpb::LeaderResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    grpc::Status s = election->Leader(&ctx, req, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNKNOWN);
    EXPECT_EQ(s.error_message(), "election: no leader");
  }
}

// etcd's own answers, checked against keel's error table (api/errors.h): every
// error real etcd returns here must be the table's entry, code and message.
class EtcdErrorTable : public ApiWireTest {
 protected:
  static void ExpectTableError(const grpc::Status& s, api::EtcdError expected) {
    const absl::Status got(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
    EXPECT_EQ(api::ParseEtcdError(got), expected)
        << "etcd said code " << s.error_code() << " \"" << s.error_message() << "\"";
    EXPECT_EQ(got, api::EtcdStatus(expected));
  }
};

TEST_F(EtcdErrorTable, KvErrors) {
  auto kv = Kv();
  const int64_t rev = Put("errtable/k", "v").header().revision();
  {  // a future revision
    RangeRequest req;
    req.set_key("errtable/k");
    req.set_revision(rev + 1000);
    etcdserverpb::RangeResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    ExpectTableError(kv->Range(&ctx, req, &resp), api::EtcdError::kFutureRev);
  }
  {  // ignore_value together with a value
    etcdserverpb::PutRequest req;
    req.set_key("errtable/k");
    req.set_value("v");
    req.set_ignore_value(true);
    etcdserverpb::PutResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    ExpectTableError(kv->Put(&ctx, req, &resp), api::EtcdError::kValueProvided);
  }
  {  // ignore_value on a key that does not exist
    etcdserverpb::PutRequest req;
    req.set_key("errtable/missing");
    req.set_ignore_value(true);
    etcdserverpb::PutResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    ExpectTableError(kv->Put(&ctx, req, &resp), api::EtcdError::kKeyNotFound);
  }
  {  // the same key put twice in one txn branch
    etcdserverpb::TxnRequest req;
    for (int i = 0; i < 2; ++i) {
      etcdserverpb::PutRequest* put = req.add_success()->mutable_request_put();
      put->set_key("errtable/dup");
      put->set_value("v");
    }
    etcdserverpb::TxnResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    ExpectTableError(kv->Txn(&ctx, req, &resp), api::EtcdError::kDuplicateKey);
  }
  {  // a put with a lease that does not exist
    etcdserverpb::PutRequest req;
    req.set_key("errtable/k");
    req.set_value("v");
    req.set_lease(0x7eadbeef);
    etcdserverpb::PutResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    ExpectTableError(kv->Put(&ctx, req, &resp), api::EtcdError::kLeaseNotFound);
  }
}

TEST_F(EtcdErrorTable, LeaseClusterAndAuthErrors) {
  const int64_t id = GrantLease(60);
  {  // granting an ID that is in use
    etcdserverpb::LeaseGrantRequest req;
    req.set_id(id);
    req.set_ttl(60);
    etcdserverpb::LeaseGrantResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    ExpectTableError(etcdserverpb::Lease::NewStub(channel_)->LeaseGrant(&ctx, req, &resp),
                     api::EtcdError::kLeaseExist);
  }
  {  // removing a member that does not exist
    etcdserverpb::MemberRemoveRequest req;
    req.set_id(0x1234);
    etcdserverpb::MemberRemoveResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    ExpectTableError(etcdserverpb::Cluster::NewStub(channel_)->MemberRemove(&ctx, req, &resp),
                     api::EtcdError::kMemberNotFound);
  }
  auto auth = etcdserverpb::Auth::NewStub(channel_);
  {
    etcdserverpb::AuthUserGetRequest req;
    req.set_name("errtable-nobody");
    etcdserverpb::AuthUserGetResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    ExpectTableError(auth->UserGet(&ctx, req, &resp), api::EtcdError::kUserNotFound);
  }
  {
    etcdserverpb::AuthRoleGetRequest req;
    req.set_role("errtable-norole");
    etcdserverpb::AuthRoleGetResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    ExpectTableError(auth->RoleGet(&ctx, req, &resp), api::EtcdError::kRoleNotFound);
  }
  {
    etcdserverpb::AuthUserAddRequest req;  // empty name
    req.set_password("x");
    etcdserverpb::AuthUserAddResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    ExpectTableError(auth->UserAdd(&ctx, req, &resp), api::EtcdError::kUserEmpty);
  }
  {  // enabling auth without a root user
    etcdserverpb::AuthEnableRequest req;
    etcdserverpb::AuthEnableResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(ctx);
    ExpectTableError(auth->AuthEnable(&ctx, req, &resp), api::EtcdError::kRootUserNotExist);
  }
}

}  // namespace
}  // namespace keel
