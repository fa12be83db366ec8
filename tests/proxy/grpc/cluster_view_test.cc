#include "proxy/grpc/cluster_view.h"

#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "api/backend.h"
#include "api/errors.h"
#include "gtest/gtest.h"
#include "proxy/grpc/registration.h"
#include "tests/testutil/fake_backend.h"

namespace keel::proxy::grpcproxy {
namespace {

using etcdserverpb::MemberListRequest;
using etcdserverpb::MemberListResponse;
using etcdserverpb::RangeRequest;
using etcdserverpb::RangeResponse;

constexpr absl::Duration kWait = absl::Seconds(30);

// Collects one MemberList answer.
class Answer {
 public:
  api::Done<MemberListResponse> Callback() {
    return [this](absl::StatusOr<MemberListResponse> response) {
      absl::MutexLock lock(&mu_);
      result_ = std::move(response);
    };
  }
  bool has_value() {
    absl::MutexLock lock(&mu_);
    return result_.has_value();
  }
  absl::StatusOr<MemberListResponse> Get() {
    absl::MutexLock lock(&mu_);
    if (!result_.has_value()) return absl::UnknownError("no answer yet");
    return *result_;
  }

 private:
  absl::Mutex mu_;
  std::optional<absl::StatusOr<MemberListResponse>> result_;
};

ClusterViewOptions Options(std::string advertise, std::string prefix) {
  return ClusterViewOptions{std::move(advertise), std::move(prefix), "host-a"};
}

void ExpectSelfOnly(const MemberListResponse& response) {
  EXPECT_FALSE(response.has_header());
  ASSERT_EQ(response.members_size(), 1);
  const etcdserverpb::Member& m = response.members(0);
  EXPECT_EQ(m.id(), 0u);
  EXPECT_EQ(m.name(), "host-a");
  ASSERT_EQ(m.clienturls_size(), 1);
  EXPECT_EQ(m.clienturls(0), "127.0.0.1:23790");
  EXPECT_EQ(m.peerurls_size(), 0);
  EXPECT_FALSE(m.islearner());
}

TEST(ClusterView, NoAdvertisePassesThrough) {
  testutil::FakeBackend fake;
  ClusterViewBackend view(fake, Options("", "pfx"));
  api::CallContext ctx;
  ctx.token = "tok";
  MemberListRequest request;
  request.set_linearizable(true);
  Answer answer;
  view.MemberList(ctx, request, answer.Callback());

  ASSERT_TRUE(fake.WaitForUnaryCalls(1, kWait));
  ASSERT_EQ(fake.Methods(), std::vector<std::string>{"MemberList"});
  EXPECT_EQ(fake.Call(0).ctx.token, "tok");
  EXPECT_TRUE(fake.Request<MemberListRequest>(0).linearizable());
  EXPECT_FALSE(answer.has_value());

  MemberListResponse upstream;
  upstream.mutable_header()->set_cluster_id(7);
  etcdserverpb::Member* m = upstream.add_members();
  m->set_id(42);
  m->set_name("etcd-1");
  m->add_peerurls("http://127.0.0.1:2380");
  m->add_clienturls("http://127.0.0.1:2379");
  fake.Reply(0, upstream);

  absl::StatusOr<MemberListResponse> got = answer.Get();
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->SerializeAsString(), upstream.SerializeAsString());
}

TEST(ClusterView, NoAdvertisePassesErrorsThrough) {
  testutil::FakeBackend fake;
  fake.SetAutoFail("MemberList", api::EtcdStatus(api::EtcdError::kNoLeader));
  ClusterViewBackend view(fake, Options("", ""));
  Answer answer;
  view.MemberList(api::CallContext{}, MemberListRequest{}, answer.Callback());
  EXPECT_EQ(answer.Get().status(), api::EtcdStatus(api::EtcdError::kNoLeader));
}

TEST(ClusterView, AdvertiseWithoutPrefixListsOnlySelf) {
  testutil::FakeBackend fake;
  ClusterViewBackend view(fake, Options("127.0.0.1:23790", ""));
  Answer answer;
  view.MemberList(api::CallContext{}, MemberListRequest{}, answer.Callback());
  absl::StatusOr<MemberListResponse> got = answer.Get();
  ASSERT_TRUE(got.ok()) << got.status();
  ExpectSelfOnly(*got);
  EXPECT_EQ(fake.unary_count(), 0u);
}

RangeResponse Registrations(const std::vector<std::pair<std::string, std::string>>& kvs) {
  RangeResponse response;
  response.mutable_header()->set_revision(9);
  for (const auto& [key, value] : kvs) {
    mvccpb::KeyValue* kv = response.add_kvs();
    kv->set_key(key);
    kv->set_value(value);
    kv->set_lease(5);
  }
  response.set_count(kvs.size());
  return response;
}

TEST(ClusterView, PrefixListsRegisteredProxies) {
  testutil::FakeBackend fake;
  ClusterViewBackend view(fake, Options("127.0.0.1:23790", "pfx"));
  api::CallContext ctx;
  ctx.token = "tok";
  Answer answer;
  view.MemberList(ctx, MemberListRequest{}, answer.Callback());

  ASSERT_TRUE(fake.WaitForUnaryCalls(1, kWait));
  ASSERT_EQ(fake.Methods(), std::vector<std::string>{"Range"});
  EXPECT_EQ(fake.Call(0).ctx.token, "tok");
  RangeRequest range = fake.Request<RangeRequest>(0);
  EXPECT_EQ(range.key(), "pfx/");
  EXPECT_EQ(range.range_end(), "pfx0");
  EXPECT_TRUE(range.serializable());
  EXPECT_EQ(range.limit(), 0);
  EXPECT_FALSE(range.keys_only());
  EXPECT_FALSE(range.count_only());

  fake.Reply(0, Registrations({
                    {"pfx/127.0.0.1:23790", EncodeRegistrationValue("127.0.0.1:23790", "host-a")},
                    {"pfx/127.0.0.1:23791", EncodeRegistrationValue("127.0.0.1:23791", "host-b")},
                }));
  absl::StatusOr<MemberListResponse> got = answer.Get();
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_FALSE(got->has_header());
  ASSERT_EQ(got->members_size(), 2);
  EXPECT_EQ(got->members(0).name(), "host-a");
  EXPECT_EQ(got->members(1).name(), "host-b");
  for (int i = 0; i < 2; ++i) {
    const etcdserverpb::Member& m = got->members(i);
    EXPECT_EQ(m.id(), 0u);
    EXPECT_EQ(m.peerurls_size(), 0);
    ASSERT_EQ(m.clienturls_size(), 1);
    EXPECT_EQ(m.clienturls(0), i == 0 ? "127.0.0.1:23790" : "127.0.0.1:23791");
  }
}

TEST(ClusterView, PrefixWithDeletesAndDuplicates) {
  testutil::FakeBackend fake;
  fake.SetAutoReply(
      "Range", Registrations({
                   {"pfx/a", R"({"Op":1,"Addr":"10.0.0.1:1","Metadata":"{\"name\":\"gone\"}"})"},
                   {"pfx/b", R"({"Op":0,"Addr":"10.0.0.2:2","Metadata":"{\"name\":\"two\"}"})"},
                   {"pfx/c", R"({"Addr":"10.0.0.2:2","Metadata":"{\"name\":\"again\"}"})"},
                   {"pfx/d", R"({"Op":0,"Addr":"10.0.0.3:3","Metadata":"null"})"},
               }));
  ClusterViewBackend view(fake, Options("127.0.0.1:23790", "pfx"));
  Answer answer;
  view.MemberList(api::CallContext{}, MemberListRequest{}, answer.Callback());
  absl::StatusOr<MemberListResponse> got = answer.Get();
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->members_size(), 2);
  EXPECT_EQ(got->members(0).name(), "two");
  EXPECT_EQ(got->members(0).clienturls(0), "10.0.0.2:2");
  EXPECT_EQ(got->members(1).name(), "");
  EXPECT_EQ(got->members(1).clienturls(0), "10.0.0.3:3");
}

TEST(ClusterView, PrefixWithoutRegistrationsListsSelf) {
  testutil::FakeBackend fake;
  fake.SetAutoReply("Range", Registrations({}));
  ClusterViewBackend view(fake, Options("127.0.0.1:23790", "pfx"));
  Answer answer;
  view.MemberList(api::CallContext{}, MemberListRequest{}, answer.Callback());
  absl::StatusOr<MemberListResponse> got = answer.Get();
  ASSERT_TRUE(got.ok()) << got.status();
  ExpectSelfOnly(*got);
}

TEST(ClusterView, PrefixWithUndecodableValueFails) {
  for (const std::string& bad :
       {std::string("not json"), std::string("[1]"), std::string(R"({"Op":0,"Addr":"x:1"})"),
        std::string(R"({"Op":0,"Addr":"x:1","Metadata":{"name":"n"}})"),
        std::string(R"({"Op":"add","Addr":"x:1","Metadata":"{}"})"),
        std::string(R"({"Op":0,"Addr":7,"Metadata":"{}"})"),
        std::string(R"({"Op":0,"Addr":"x:1","Metadata":"{\"name\":1}"})")}) {
    SCOPED_TRACE(bad);
    testutil::FakeBackend fake;
    fake.SetAutoReply("Range", Registrations({{"pfx/ok", EncodeRegistrationValue("h:1", "h")},
                                              {"pfx/bad", bad}}));
    ClusterViewBackend view(fake, Options("127.0.0.1:23790", "pfx"));
    Answer answer;
    view.MemberList(api::CallContext{}, MemberListRequest{}, answer.Callback());
    absl::StatusOr<MemberListResponse> got = answer.Get();
    ASSERT_FALSE(got.ok());
    EXPECT_EQ(got.status().code(), absl::StatusCode::kInternal);
    EXPECT_NE(got.status().message().find("grpcproxy: cannot decode the registration at pfx/bad"),
              absl::string_view::npos)
        << got.status();
  }
}

TEST(ClusterView, PrefixRangeErrorIsReturnedUnchanged) {
  testutil::FakeBackend fake;
  ClusterViewBackend view(fake, Options("127.0.0.1:23790", "pfx"));
  Answer answer;
  view.MemberList(api::CallContext{}, MemberListRequest{}, answer.Callback());
  ASSERT_TRUE(fake.WaitForUnaryCalls(1, kWait));
  fake.Fail(0, api::EtcdStatus(api::EtcdError::kUserEmpty));
  EXPECT_EQ(answer.Get().status(), api::EtcdStatus(api::EtcdError::kUserEmpty));
}

TEST(ClusterView, OtherCallsPassThrough) {
  testutil::FakeBackend fake;
  fake.SetAutoReply("MemberAdd", etcdserverpb::MemberAddResponse{});
  ClusterViewBackend view(fake, Options("127.0.0.1:23790", "pfx"));
  std::optional<absl::Status> status;
  view.MemberAdd(
      api::CallContext{}, etcdserverpb::MemberAddRequest{},
      [&status](absl::StatusOr<etcdserverpb::MemberAddResponse> r) { status = r.status(); });
  ASSERT_TRUE(status.has_value());
  EXPECT_TRUE(status->ok());
  EXPECT_EQ(fake.Methods(), std::vector<std::string>{"MemberAdd"});
}

TEST(RegistrationValue, EncodesAsEtcdsProxy) {
  // The bytes etcd 3.4.23's grpc-proxy writes (read back with etcdctl).
  EXPECT_EQ(EncodeRegistrationValue("127.0.0.1:32395", "vm"),
            R"({"Op":0,"Addr":"127.0.0.1:32395","Metadata":"{\"name\":\"vm\"}"})");
  absl::StatusOr<RegisteredEndpoint> back =
      DecodeRegistrationValue(EncodeRegistrationValue("10.1.2.3:2379", "h\"x"));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->op, 0);
  EXPECT_EQ(back->addr, "10.1.2.3:2379");
  EXPECT_EQ(back->name, "h\"x");
}

}  // namespace
}  // namespace keel::proxy::grpcproxy
