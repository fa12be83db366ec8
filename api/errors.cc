#include "api/errors.h"

#include <array>
#include <utility>

namespace keel::api {
namespace {

struct Entry {
  EtcdError error;
  absl::StatusCode code;
  std::string_view message;
};

using C = absl::StatusCode;

// etcd 3.4's rpctypes table (../shared/spec/member.md section 2), in enum order.
constexpr std::array kTable = {
    Entry{EtcdError::kEmptyKey, C::kInvalidArgument, "etcdserver: key is not provided"},
    Entry{EtcdError::kKeyNotFound, C::kInvalidArgument, "etcdserver: key not found"},
    Entry{EtcdError::kValueProvided, C::kInvalidArgument, "etcdserver: value is provided"},
    Entry{EtcdError::kLeaseProvided, C::kInvalidArgument, "etcdserver: lease is provided"},
    Entry{EtcdError::kTooManyOps, C::kInvalidArgument,
          "etcdserver: too many operations in txn request"},
    Entry{EtcdError::kDuplicateKey, C::kInvalidArgument,
          "etcdserver: duplicate key given in txn request"},
    Entry{EtcdError::kCompacted, C::kOutOfRange,
          "etcdserver: mvcc: required revision has been compacted"},
    Entry{EtcdError::kFutureRev, C::kOutOfRange,
          "etcdserver: mvcc: required revision is a future revision"},
    Entry{EtcdError::kNoSpace, C::kResourceExhausted,
          "etcdserver: mvcc: database space exceeded"},
    Entry{EtcdError::kLeaseNotFound, C::kNotFound, "etcdserver: requested lease not found"},
    Entry{EtcdError::kLeaseExist, C::kFailedPrecondition, "etcdserver: lease already exists"},
    Entry{EtcdError::kLeaseTtlTooLarge, C::kOutOfRange, "etcdserver: too large lease TTL"},
    Entry{EtcdError::kWatchCanceled, C::kCancelled, "etcdserver: watch canceled"},
    Entry{EtcdError::kMemberExist, C::kFailedPrecondition, "etcdserver: member ID already exist"},
    Entry{EtcdError::kPeerUrlExist, C::kFailedPrecondition,
          "etcdserver: Peer URLs already exists"},
    Entry{EtcdError::kMemberNotEnoughStarted, C::kFailedPrecondition,
          "etcdserver: re-configuration failed due to not enough started members"},
    Entry{EtcdError::kMemberBadUrls, C::kInvalidArgument,
          "etcdserver: given member URLs are invalid"},
    Entry{EtcdError::kMemberNotFound, C::kNotFound, "etcdserver: member not found"},
    Entry{EtcdError::kMemberNotLearner, C::kFailedPrecondition,
          "etcdserver: can only promote a learner member"},
    Entry{EtcdError::kLearnerNotReady, C::kFailedPrecondition,
          "etcdserver: can only promote a learner member which is in sync with leader"},
    Entry{EtcdError::kTooManyLearners, C::kFailedPrecondition,
          "etcdserver: too many learner members in cluster"},
    Entry{EtcdError::kRequestTooLarge, C::kInvalidArgument, "etcdserver: request is too large"},
    Entry{EtcdError::kTooManyRequests, C::kResourceExhausted, "etcdserver: too many requests"},
    Entry{EtcdError::kRootUserNotExist, C::kFailedPrecondition,
          "etcdserver: root user does not exist"},
    Entry{EtcdError::kRootRoleNotExist, C::kFailedPrecondition,
          "etcdserver: root user does not have root role"},
    Entry{EtcdError::kUserAlreadyExist, C::kFailedPrecondition,
          "etcdserver: user name already exists"},
    Entry{EtcdError::kUserEmpty, C::kInvalidArgument, "etcdserver: user name is empty"},
    Entry{EtcdError::kUserNotFound, C::kFailedPrecondition, "etcdserver: user name not found"},
    Entry{EtcdError::kRoleAlreadyExist, C::kFailedPrecondition,
          "etcdserver: role name already exists"},
    Entry{EtcdError::kRoleNotFound, C::kFailedPrecondition, "etcdserver: role name not found"},
    Entry{EtcdError::kRoleEmpty, C::kInvalidArgument, "etcdserver: role name is empty"},
    Entry{EtcdError::kAuthFailed, C::kInvalidArgument,
          "etcdserver: authentication failed, invalid user ID or password"},
    Entry{EtcdError::kPermissionDenied, C::kPermissionDenied, "etcdserver: permission denied"},
    Entry{EtcdError::kRoleNotGranted, C::kFailedPrecondition,
          "etcdserver: role is not granted to the user"},
    Entry{EtcdError::kPermissionNotGranted, C::kFailedPrecondition,
          "etcdserver: permission is not granted to the role"},
    Entry{EtcdError::kAuthNotEnabled, C::kFailedPrecondition,
          "etcdserver: authentication is not enabled"},
    Entry{EtcdError::kInvalidAuthToken, C::kUnauthenticated, "etcdserver: invalid auth token"},
    Entry{EtcdError::kInvalidAuthMgmt, C::kInvalidArgument,
          "etcdserver: invalid auth management"},
    Entry{EtcdError::kAuthOldRevision, C::kInvalidArgument,
          "etcdserver: revision of auth store is old"},
    Entry{EtcdError::kNoLeader, C::kUnavailable, "etcdserver: no leader"},
    Entry{EtcdError::kNotLeader, C::kFailedPrecondition, "etcdserver: not leader"},
    Entry{EtcdError::kLeaderChanged, C::kUnavailable, "etcdserver: leader changed"},
    Entry{EtcdError::kNotCapable, C::kUnavailable, "etcdserver: not capable"},
    Entry{EtcdError::kStopped, C::kUnavailable, "etcdserver: server stopped"},
    Entry{EtcdError::kTimeout, C::kUnavailable, "etcdserver: request timed out"},
    Entry{EtcdError::kTimeoutDueToLeaderFail, C::kUnavailable,
          "etcdserver: request timed out, possibly due to previous leader failure"},
    Entry{EtcdError::kTimeoutDueToConnectionLost, C::kUnavailable,
          "etcdserver: request timed out, possibly due to connection lost"},
    Entry{EtcdError::kTimeoutWaitAppliedIndex, C::kUnavailable,
          "etcdserver: request timed out, waiting for the applied index took too long"},
    Entry{EtcdError::kUnhealthy, C::kUnavailable, "etcdserver: unhealthy cluster"},
    Entry{EtcdError::kCorrupt, C::kDataLoss, "etcdserver: corrupt cluster"},
    Entry{EtcdError::kNotSupportedForLearner, C::kUnavailable,
          "etcdserver: rpc not supported for learner"},
    Entry{EtcdError::kBadLeaderTransferee, C::kFailedPrecondition,
          "etcdserver: bad leader transferee"},
};

// The table is indexed by the enum: a missing or misplaced row is a compile error.
constexpr bool TableFollowsEnum() {
  for (size_t i = 0; i < kTable.size(); ++i) {
    if (static_cast<size_t>(kTable[i].error) != i) return false;
  }
  return static_cast<size_t>(EtcdError::kBadLeaderTransferee) + 1 == kTable.size();
}
static_assert(TableFollowsEnum(), "kTable rows must follow EtcdError's order");

}  // namespace

absl::Status EtcdStatus(EtcdError error) {
  const Entry& e = kTable[static_cast<size_t>(error)];
  return absl::Status(e.code, absl::string_view(e.message.data(), e.message.size()));
}

std::optional<EtcdError> ParseEtcdError(const absl::Status& status) {
  const absl::string_view message = status.message();
  for (const Entry& e : kTable) {
    if (e.code == status.code() &&
        message == absl::string_view(e.message.data(), e.message.size())) {
      return e.error;
    }
  }
  return std::nullopt;
}

}  // namespace keel::api
