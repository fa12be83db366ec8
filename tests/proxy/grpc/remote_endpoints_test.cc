// The failure classification behind RemoteBackend's failover.

#include "proxy/grpc/remote_endpoints.h"

#include <string>

#include "absl/status/status.h"
#include "api/errors.h"
#include "grpcpp/support/status.h"
#include "gtest/gtest.h"

namespace keel::proxy::grpcproxy {
namespace {

::grpc::Status Unavailable(const std::string& message) {
  return ::grpc::Status(::grpc::StatusCode::UNAVAILABLE, message);
}

// What etcd puts on the wire for `status`.
::grpc::Status ToGrpc(const absl::Status& status) {
  return ::grpc::Status(static_cast<::grpc::StatusCode>(status.code()),
                        std::string(status.message()));
}

TEST(ClassifyAttempt, EtcdAnswersAreReturnedAsIs) {
  EXPECT_EQ(ClassifyAttempt(::grpc::Status::OK), AttemptFailure::kNone);
  for (api::EtcdError e : {api::EtcdError::kNoLeader, api::EtcdError::kTimeout,
                           api::EtcdError::kLeaderChanged, api::EtcdError::kStopped}) {
    absl::Status s = api::EtcdStatus(e);
    ASSERT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
    EXPECT_EQ(ClassifyAttempt(ToGrpc(s)), AttemptFailure::kNone) << s;
  }
  EXPECT_EQ(
      ClassifyAttempt(::grpc::Status(::grpc::StatusCode::DEADLINE_EXCEEDED, "Deadline Exceeded")),
      AttemptFailure::kNone);
  EXPECT_EQ(ClassifyAttempt(ToGrpc(api::EtcdStatus(api::EtcdError::kEmptyKey))),
            AttemptFailure::kNone);
}

TEST(ClassifyAttempt, ConnectFailuresWereNotSent) {
  EXPECT_EQ(ClassifyAttempt(Unavailable(
                "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: "
                "Failed to connect to remote host: Connection refused")),
            AttemptFailure::kNotSent);
  EXPECT_EQ(ClassifyAttempt(Unavailable("DNS resolution failed for nosuchhost:2379")),
            AttemptFailure::kNotSent);
}

TEST(ClassifyAttempt, OtherTransportFailuresMayHaveBeenSent) {
  EXPECT_EQ(ClassifyAttempt(Unavailable("Socket closed")), AttemptFailure::kTransport);
  EXPECT_EQ(ClassifyAttempt(Unavailable("Connection reset by peer")), AttemptFailure::kTransport);
  EXPECT_EQ(ClassifyAttempt(Unavailable("Broken pipe")), AttemptFailure::kTransport);
}

TEST(ToAbslStatus, KeepsCodeAndMessage) {
  EXPECT_TRUE(ToAbslStatus(::grpc::Status::OK).ok());
  const absl::Status compacted = api::EtcdStatus(api::EtcdError::kCompacted);
  EXPECT_EQ(ToAbslStatus(ToGrpc(compacted)), compacted);
}

}  // namespace
}  // namespace keel::proxy::grpcproxy
