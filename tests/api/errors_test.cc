#include "api/errors.h"

#include "gtest/gtest.h"

namespace keel::api {
namespace {

TEST(EtcdStatus, CodesAndMessagesAreEtcds) {
  EXPECT_EQ(EtcdStatus(EtcdError::kCompacted),
            absl::OutOfRangeError("etcdserver: mvcc: required revision has been compacted"));
  EXPECT_EQ(EtcdStatus(EtcdError::kEmptyKey),
            absl::InvalidArgumentError("etcdserver: key is not provided"));
  EXPECT_EQ(EtcdStatus(EtcdError::kLeaseNotFound),
            absl::NotFoundError("etcdserver: requested lease not found"));
  EXPECT_EQ(EtcdStatus(EtcdError::kPermissionDenied),
            absl::PermissionDeniedError("etcdserver: permission denied"));
  EXPECT_EQ(EtcdStatus(EtcdError::kNoLeader), absl::UnavailableError("etcdserver: no leader"));
  EXPECT_EQ(EtcdStatus(EtcdError::kInvalidAuthToken),
            absl::UnauthenticatedError("etcdserver: invalid auth token"));
  EXPECT_EQ(EtcdStatus(EtcdError::kCorrupt), absl::DataLossError("etcdserver: corrupt cluster"));
}

TEST(EtcdStatus, AbslCodesHaveGrpcNumbers) {
  // The front converts by number; these are the gRPC codes etcd uses.
  EXPECT_EQ(static_cast<int>(EtcdStatus(EtcdError::kCompacted).code()), 11);
  EXPECT_EQ(static_cast<int>(EtcdStatus(EtcdError::kLeaseExist).code()), 9);
  EXPECT_EQ(static_cast<int>(EtcdStatus(EtcdError::kWatchCanceled).code()), 1);
  EXPECT_EQ(static_cast<int>(EtcdStatus(EtcdError::kNoSpace).code()), 8);
}

TEST(ParseEtcdError, EveryEntryRoundTrips) {
  for (int i = 0; i <= static_cast<int>(EtcdError::kBadLeaderTransferee); ++i) {
    const auto error = static_cast<EtcdError>(i);
    EXPECT_EQ(ParseEtcdError(EtcdStatus(error)), error) << EtcdStatus(error);
  }
}

TEST(ParseEtcdError, NeedsTheExactCodeAndMessage) {
  EXPECT_EQ(ParseEtcdError(absl::UnknownError("etcdserver: key is not provided")), std::nullopt);
  EXPECT_EQ(ParseEtcdError(absl::InvalidArgumentError("etcdserver: key is not provided ")),
            std::nullopt);
  EXPECT_EQ(ParseEtcdError(absl::UnknownError("etcdserver: request cancelled")), std::nullopt);
  EXPECT_EQ(ParseEtcdError(absl::OkStatus()), std::nullopt);
}

}  // namespace
}  // namespace keel::api
