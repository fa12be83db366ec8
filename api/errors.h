#pragma once

#include <optional>
#include <string_view>

#include "absl/status/status.h"

namespace keel::api {

// Every error etcd's v3 API returns with a fixed (gRPC code, message) pair.
// Clients match these byte for byte (clientv3 maps a status to its typed
// error only when the message is in its table), so no message is ever typed
// anywhere else: call EtcdStatus(EtcdError::kX).
enum class EtcdError {
  kEmptyKey,
  kKeyNotFound,
  kValueProvided,
  kLeaseProvided,
  kTooManyOps,
  kDuplicateKey,
  kCompacted,
  kFutureRev,
  kNoSpace,
  kLeaseNotFound,
  kLeaseExist,
  kLeaseTtlTooLarge,
  kWatchCanceled,
  kMemberExist,
  kPeerUrlExist,
  kMemberNotEnoughStarted,
  kMemberBadUrls,
  kMemberNotFound,
  kMemberNotLearner,
  kLearnerNotReady,
  kTooManyLearners,
  kRequestTooLarge,
  kTooManyRequests,
  kRootUserNotExist,
  kRootRoleNotExist,
  kUserAlreadyExist,
  kUserEmpty,
  kUserNotFound,
  kRoleAlreadyExist,
  kRoleNotFound,
  kRoleEmpty,
  kAuthFailed,
  kPermissionDenied,
  kRoleNotGranted,
  kPermissionNotGranted,
  kAuthNotEnabled,
  kInvalidAuthToken,
  kInvalidAuthMgmt,
  kAuthOldRevision,
  kNoLeader,
  kNotLeader,
  kLeaderChanged,
  kNotCapable,
  kStopped,
  kTimeout,
  kTimeoutDueToLeaderFail,
  kTimeoutDueToConnectionLost,
  kTimeoutWaitAppliedIndex,
  kUnhealthy,
  kCorrupt,
  kNotSupportedForLearner,
  kBadLeaderTransferee,
};

// The status etcd answers for `error`, e.g. kCompacted → OutOfRange
// "etcdserver: mvcc: required revision has been compacted". absl's codes
// have gRPC's numbers, so converting at the gRPC edge keeps them.
absl::Status EtcdStatus(EtcdError error);

// The EtcdError whose code and message `status` carries exactly; nullopt for
// anything else (e.g. a message etcd does not put in its table).
std::optional<EtcdError> ParseEtcdError(const absl::Status& status);

// etcd's mvcc errors that reach clients only as a Watch response's
// cancel_reason (mvcc/watcher.go ErrEmptyWatcherRange, ErrWatcherDuplicateID),
// never as a gRPC status.
inline constexpr std::string_view kWatchRangeEmptyReason = "mvcc: watcher range is empty";
// The prefix gRPC-Go prints before a PermissionDenied error's message; etcd
// 3.4.23 uses "<prefix><etcd's message>" as a refused watch create's
// cancel_reason.
inline constexpr std::string_view kGrpcPermissionDeniedPrefix =
    "rpc error: code = PermissionDenied desc = ";
inline constexpr std::string_view kWatchDuplicateIdReason =
    "mvcc: duplicate watch ID provided on the WatchStream";

}  // namespace keel::api
