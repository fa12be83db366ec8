#include "proxy/grpc/health.h"

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "api/backend.h"
#include "api/errors.h"
#include "common/http_server.h"
#include "common/metrics.h"
#include "gtest/gtest.h"
#include "tests/testutil/fake_backend.h"

namespace keel::proxy::grpcproxy {
namespace {

constexpr char kHealthy[] = R"({"health":"true","reason":""})";

common::HttpRequest Get() { return common::HttpRequest{"GET", "/health", ""}; }

uint64_t Successes(common::MetricsRegistry& metrics) {
  return metrics.GetCounter("etcd_server_health_success", "")->Value();
}
uint64_t Failures(common::MetricsRegistry& metrics) {
  return metrics.GetCounter("etcd_server_health_failures", "")->Value();
}

TEST(Health, BackendAnswersOk) {
  testutil::FakeBackend fake;
  fake.SetAutoReply("Range", etcdserverpb::RangeResponse{});
  common::MetricsRegistry metrics;
  HealthChecker health(fake, &metrics);

  common::HttpResponse response = health.Handle(Get());
  EXPECT_EQ(response.status, 200);
  EXPECT_EQ(response.body, kHealthy);
  EXPECT_EQ(response.content_type, "text/plain; charset=utf-8");

  ASSERT_EQ(fake.Methods(), std::vector<std::string>{"Range"});
  etcdserverpb::RangeRequest range = fake.Request<etcdserverpb::RangeRequest>(0);
  EXPECT_EQ(range.key(), "a");
  EXPECT_EQ(range.range_end(), "");
  EXPECT_FALSE(range.serializable());  // linearizable: proves there is a leader
  testutil::FakeBackend::UnaryCall call = fake.Call(0);
  EXPECT_EQ(call.ctx.token, "");
  EXPECT_NE(call.ctx.deadline, absl::InfiniteFuture());
  EXPECT_EQ(Successes(metrics), 1u);
  EXPECT_EQ(Failures(metrics), 0u);
  EXPECT_NE(metrics.RenderText().find("etcd_server_health_success 1"), std::string::npos);
}

TEST(Health, AuthErrorsMeanTheBackendAnswered) {
  for (api::EtcdError error : {api::EtcdError::kPermissionDenied, api::EtcdError::kUserEmpty,
                               api::EtcdError::kInvalidAuthToken}) {
    SCOPED_TRACE(api::EtcdStatus(error).ToString());
    testutil::FakeBackend fake;
    fake.SetAutoFail("Range", api::EtcdStatus(error));
    common::MetricsRegistry metrics;
    HealthChecker health(fake, &metrics);
    common::HttpResponse response = health.Handle(Get());
    EXPECT_EQ(response.status, 200);
    EXPECT_EQ(response.body, kHealthy);
    EXPECT_EQ(Successes(metrics), 1u);
  }
}

TEST(Health, UnavailableBackendIsUnhealthy) {
  testutil::FakeBackend fake;
  fake.SetAutoFail("Range", absl::UnavailableError("connection refused"));
  common::MetricsRegistry metrics;
  HealthChecker health(fake, &metrics);

  common::HttpResponse response = health.Handle(Get());
  EXPECT_EQ(response.status, 503);
  EXPECT_EQ(response.body,
            R"({"health":"false","reason":"GET ERROR:rpc error: code = Unavailable desc = )"
            R"(connection refused"})"
            "\n");
  EXPECT_EQ(Successes(metrics), 0u);
  EXPECT_EQ(Failures(metrics), 1u);

  // A second probe counts again.
  EXPECT_EQ(health.Handle(Get()).status, 503);
  EXPECT_EQ(Failures(metrics), 2u);
}

TEST(Health, EtcdErrorIsReportedWithItsMessage) {
  testutil::FakeBackend fake;
  fake.SetAutoFail("Range", api::EtcdStatus(api::EtcdError::kNoLeader));
  HealthChecker health(fake, nullptr);
  common::HttpResponse response = health.Handle(Get());
  EXPECT_EQ(response.status, 503);
  EXPECT_EQ(response.body, R"({"health":"false","reason":"GET ERROR:etcdserver: no leader"})"
                           "\n");
}

TEST(Health, ReasonIsEscapedAsGoDoes) {
  testutil::FakeBackend fake;
  fake.SetAutoFail("Range", absl::InternalError("a<b>&\"c\""));
  HealthChecker health(fake, nullptr);
  common::HttpResponse response = health.Handle(Get());
  EXPECT_EQ(response.status, 503);
  EXPECT_EQ(response.body,
            R"({"health":"false","reason":"GET ERROR:rpc error: code = Internal desc = )"
            R"(a\u003cb\u003e\u0026\"c\""})"
            "\n");
}

TEST(Health, SilentBackendTimesOut) {
  testutil::FakeBackend fake;  // never answers the Range
  common::MetricsRegistry metrics;
  HealthChecker health(fake, &metrics);
  common::HttpResponse response = health.Handle(Get());
  EXPECT_EQ(response.status, 503);
  EXPECT_EQ(response.body, R"({"health":"false","reason":"GET ERROR:context deadline exceeded"})"
                           "\n");
  EXPECT_EQ(Failures(metrics), 1u);
  // The late answer is dropped safely (and lets the checker's destructor,
  // which waits for it, return).
  fake.Reply(0, etcdserverpb::RangeResponse{});
}

TEST(Health, DestructorWaitsForAProbeInFlight) {
  testutil::FakeBackend fake;  // never answers by itself
  auto health = std::make_unique<HealthChecker>(fake, nullptr);
  EXPECT_EQ(health->Handle(Get()).status, 503);
  std::atomic<bool> destroyed{false};
  std::thread destroyer([&health, &destroyed] {
    health.reset();
    destroyed = true;
  });
  EXPECT_FALSE(destroyed.load());
  fake.Fail(0, absl::DeadlineExceededError("Deadline Exceeded"));
  destroyer.join();
  EXPECT_TRUE(destroyed.load());
}

TEST(Health, DeadlineFromTheBackendReadsAsGoContextError) {
  testutil::FakeBackend fake;
  fake.SetAutoFail("Range", absl::DeadlineExceededError("Deadline Exceeded"));
  HealthChecker health(fake, nullptr);
  common::HttpResponse response = health.Handle(Get());
  EXPECT_EQ(response.status, 503);
  EXPECT_EQ(response.body, R"({"health":"false","reason":"GET ERROR:context deadline exceeded"})"
                           "\n");
}

TEST(Health, OnlyGetIsAllowed) {
  testutil::FakeBackend fake;
  fake.SetAutoReply("Range", etcdserverpb::RangeResponse{});
  common::MetricsRegistry metrics;
  HealthChecker health(fake, &metrics);
  for (const char* method : {"POST", "PUT", "DELETE", "HEAD"}) {
    SCOPED_TRACE(method);
    common::HttpResponse response = health.Handle(common::HttpRequest{method, "/health", ""});
    EXPECT_EQ(response.status, 405);
    EXPECT_EQ(response.body, "Method Not Allowed\n");
  }
  EXPECT_EQ(fake.unary_count(), 0u);
  EXPECT_EQ(Successes(metrics), 0u);
  EXPECT_EQ(Failures(metrics), 0u);
}

}  // namespace
}  // namespace keel::proxy::grpcproxy
