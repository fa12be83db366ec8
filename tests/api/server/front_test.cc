#include "api/server/front.h"

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "api/errors.h"
#include "api/etcdserverpb/rpc.grpc.pb.h"
#include "api/server/grpc_status.h"
#include "api/v3electionpb/v3election.grpc.pb.h"
#include "api/v3lockpb/v3lock.grpc.pb.h"
#include "common/metrics.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/impl/client_unary_call.h"
#include "gtest/gtest.h"
#include "tests/testutil/fake_backend.h"
#include "tests/testutil/process.h"

namespace keel::api::server {
namespace {

using etcdserverpb::LeaseKeepAliveRequest;
using etcdserverpb::LeaseKeepAliveResponse;
using etcdserverpb::RangeRequest;
using etcdserverpb::RangeResponse;
using etcdserverpb::SnapshotRequest;
using etcdserverpb::SnapshotResponse;
using etcdserverpb::WatchRequest;
using etcdserverpb::WatchResponse;
using testutil::FakeBackend;
using testutil::FakeKeepAlive;
using testutil::FakeObserve;
using testutil::FakeSnapshot;
using testutil::FakeWatch;
using testutil::WaitFor;

constexpr std::chrono::seconds kWait(30);
constexpr absl::Duration kAbslWait = absl::Seconds(30);

// True if the backend stream `s` got at most `n` ReadNext calls so far.
template <class Stream>
bool ReadNextAtMost(const Stream& s, int n) {
  return !s.WaitForReadNext(n + 1, absl::ZeroDuration());
}

// A Front over a FakeBackend, served in process.
class Harness {
 public:
  explicit Harness(common::MetricsRegistry* metrics = nullptr)
      : front_(backend_, FrontOptions{metrics}) {
    grpc::ServerBuilder builder;
    front_.Register(builder);
    server_ = builder.BuildAndStart();
    channel_ = server_->InProcessChannel(grpc::ChannelArguments());
  }
  ~Harness() { Shutdown(absl::Seconds(5)); }

  // Stops the server; calls still open after `grace` are cancelled (a plain
  // Shutdown() would wait for open streams forever). Idempotent.
  void Shutdown(absl::Duration grace) {
    server_->Shutdown(absl::ToChronoTime(absl::Now() + grace));
  }

  FakeBackend& backend() { return backend_; }
  std::shared_ptr<grpc::Channel> channel() { return channel_; }

  // Waits until the backend has `n` watch streams and returns the last one.
  std::shared_ptr<FakeWatch> WaitForWatch(size_t n = 1) {
    EXPECT_TRUE(backend_.WaitForWatches(n, kAbslWait));
    return backend_.watch_count() >= n ? backend_.watch(n - 1) : nullptr;
  }

 private:
  FakeBackend backend_;
  Front front_;
  std::unique_ptr<grpc::Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
};

WatchRequest CreateWatch(const std::string& key) {
  WatchRequest req;
  req.mutable_create_request()->set_key(key);
  return req;
}

WatchResponse WatchReply(int64_t watch_id, int64_t revision) {
  WatchResponse resp;
  resp.set_watch_id(watch_id);
  resp.mutable_header()->set_revision(revision);
  return resp;
}

TEST(FrontUnary, RequestAndContextReachBackendAndReplyComesBack) {
  Harness h;
  auto stub = etcdserverpb::KV::NewStub(h.channel());
  grpc::ClientContext ctx;
  ctx.AddMetadata("token", "secret-token");
  ctx.AddMetadata("hasleader", "true");
  const absl::Time deadline = absl::Now() + absl::Hours(1);
  ctx.set_deadline(absl::ToChronoTime(deadline));
  RangeRequest req;
  req.set_key("foo");
  req.set_range_end("fop");
  req.set_serializable(true);
  RangeResponse resp;
  grpc::Status status;
  absl::Notification finished;
  stub->async()->Range(&ctx, &req, &resp, [&](grpc::Status s) {
    status = std::move(s);
    finished.Notify();
  });

  // The backend sees the request and the call's context...
  ASSERT_TRUE(h.backend().WaitForUnaryCalls(1, kAbslWait));
  ASSERT_EQ(h.backend().unary_count(), 1u);
  FakeBackend::UnaryCall call = h.backend().Call(0);
  EXPECT_EQ(call.method, "Range");
  const RangeRequest got = h.backend().Request<RangeRequest>(0);
  EXPECT_EQ(got.key(), "foo");
  EXPECT_EQ(got.range_end(), "fop");
  EXPECT_TRUE(got.serializable());
  EXPECT_EQ(call.ctx.token, "secret-token");
  EXPECT_TRUE(call.ctx.require_leader);
  // gRPC sends the deadline as a timeout, so allow the transfer's rounding.
  EXPECT_LT(absl::AbsDuration(call.ctx.deadline - deadline), absl::Minutes(1));

  // ...and its reply (built from the request it got) comes back to the client.
  RangeResponse reply;
  reply.mutable_header()->set_revision(42);
  reply.add_kvs()->set_key(got.key());
  reply.mutable_kvs(0)->set_value("v");
  reply.set_count(1);
  h.backend().Reply(0, reply);
  ASSERT_TRUE(finished.WaitForNotificationWithTimeout(kAbslWait));
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(resp.header().revision(), 42);
  ASSERT_EQ(resp.kvs_size(), 1);
  EXPECT_EQ(resp.kvs(0).key(), "foo");
  EXPECT_EQ(resp.kvs(0).value(), "v");
  EXPECT_EQ(resp.count(), 1);
}

TEST(FrontUnary, NoMetadataNoDeadline) {
  Harness h;
  h.backend().SetAutoReply("Range", RangeResponse());
  auto stub = etcdserverpb::KV::NewStub(h.channel());
  grpc::ClientContext ctx;
  ctx.AddMetadata("hasleader", "false");
  RangeRequest req;
  req.set_key("k");
  RangeResponse resp;
  ASSERT_TRUE(stub->Range(&ctx, req, &resp).ok());
  ASSERT_EQ(h.backend().unary_count(), 1u);
  FakeBackend::UnaryCall call = h.backend().Call(0);
  EXPECT_EQ(call.ctx.token, "");
  EXPECT_FALSE(call.ctx.require_leader);
  EXPECT_EQ(call.ctx.deadline, absl::InfiniteFuture());
}

// The gRPC package of a KEEL_UNARY_METHODS service name.
std::string Package(const std::string& service) {
  if (service == "Lock") return "v3lockpb";
  if (service == "Election") return "v3electionpb";
  return "etcdserverpb";
}

// Every method of KEEL_UNARY_METHODS is served under its gRPC name and reaches
// the Backend method of the same name with its own request type.
TEST(FrontUnary, EveryUnaryMethodIsRouted) {
  Harness h;
  // Every method answers at once with its (empty) response type.
#define KEEL_TEST_AUTO_REPLY(svc, rpc, Req, Resp) h.backend().SetAutoReply(#rpc, Resp());
  KEEL_UNARY_METHODS(KEEL_TEST_AUTO_REPLY)
#undef KEEL_TEST_AUTO_REPLY
  auto channel = h.channel();
  size_t expected_calls = 0;
#define KEEL_TEST_CALL(svc, rpc, Req, Resp)                                                        \
  {                                                                                                \
    const std::string path = "/" + Package(#svc) + "." #svc "/" #rpc;                              \
    grpc::ClientContext ctx;                                                                       \
    Req req;                                                                                       \
    Resp resp;                                                                                     \
    grpc::Status status = grpc::internal::BlockingUnaryCall<Req, Resp>(                            \
        channel.get(),                                                                             \
        grpc::internal::RpcMethod(path.c_str(), grpc::internal::RpcMethod::NORMAL_RPC, channel),   \
        &ctx, req, &resp);                                                                         \
    EXPECT_TRUE(status.ok()) << path << ": " << status.error_message();                            \
    ++expected_calls;                                                                              \
    ASSERT_EQ(h.backend().unary_count(), expected_calls) << path;                                  \
    FakeBackend::UnaryCall call = h.backend().Call(expected_calls - 1);                            \
    EXPECT_EQ(call.method, #rpc) << path;                                                          \
    ASSERT_NE(call.request, nullptr) << path;                                                      \
    EXPECT_EQ(call.request->GetDescriptor()->full_name(), Req::descriptor()->full_name()) << path; \
  }
  KEEL_UNARY_METHODS(KEEL_TEST_CALL)
#undef KEEL_TEST_CALL
  EXPECT_EQ(expected_calls, 44u);
}

TEST(FrontUnary, EtcdErrorsPassThroughExactly) {
  Harness h;
  h.backend().SetAutoFail("Range", EtcdStatus(EtcdError::kCompacted));
  h.backend().SetAutoFail("DeleteRange", absl::UnavailableError("upstream: connection refused"));
  h.backend().SetAutoFail("Put", EtcdStatus(EtcdError::kKeyNotFound));
  auto kv = etcdserverpb::KV::NewStub(h.channel());
  {
    grpc::ClientContext ctx;
    RangeResponse resp;
    grpc::Status status = kv->Range(&ctx, RangeRequest(), &resp);
    absl::Status want = EtcdStatus(EtcdError::kCompacted);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::OUT_OF_RANGE);
    EXPECT_EQ(status.error_message(), std::string(want.message()));
    EXPECT_EQ(FromGrpcStatus(status), want);
  }
  {
    grpc::ClientContext ctx;
    etcdserverpb::PutResponse resp;
    grpc::Status status = kv->Put(&ctx, etcdserverpb::PutRequest(), &resp);
    absl::Status want = EtcdStatus(EtcdError::kKeyNotFound);
    EXPECT_EQ(static_cast<int>(status.error_code()), static_cast<int>(want.code()));
    EXPECT_EQ(status.error_message(), std::string(want.message()));
    EXPECT_EQ(ParseEtcdError(FromGrpcStatus(status)), EtcdError::kKeyNotFound);
  }
  {
    grpc::ClientContext ctx;
    etcdserverpb::DeleteRangeResponse resp;
    grpc::Status status = kv->DeleteRange(&ctx, etcdserverpb::DeleteRangeRequest(), &resp);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
    EXPECT_EQ(status.error_message(), "upstream: connection refused");
  }
}

// The client gives up while the backend still holds the call; the backend's
// late answer must be harmless and the server keeps serving.
TEST(FrontUnary, LateCompletionAfterClientCancel) {
  Harness h;
  // No auto reply: the call stays with the backend until the test answers it.
  auto kv = etcdserverpb::KV::NewStub(h.channel());
  grpc::ClientContext ctx;
  RangeRequest req;
  req.set_key("slow");
  RangeResponse resp;
  grpc::Status status;
  absl::Notification finished;
  kv->async()->Range(&ctx, &req, &resp, [&](grpc::Status s) {
    status = std::move(s);
    finished.Notify();
  });
  ASSERT_TRUE(h.backend().WaitForUnaryCalls(1, kAbslWait));
  ASSERT_EQ(h.backend().unary_count(), 1u);
  const std::shared_ptr<CancelSignal> cancel = h.backend().Call(0).ctx.cancel;
  ASSERT_NE(cancel, nullptr);
  EXPECT_FALSE(cancel->cancelled());
  ctx.TryCancel();
  ASSERT_TRUE(finished.WaitForNotificationWithTimeout(absl::Seconds(30)));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::CANCELLED);
  // The backend learns that the client gave up (so it can cancel upstream).
  EXPECT_TRUE(WaitFor([&] { return cancel->cancelled(); }, kWait));
  // Exactly one call is still held; the backend answers it late.
  EXPECT_EQ(h.backend().unary_count(), 1u);
  EXPECT_FALSE(h.backend().Call(0).completed);
  h.backend().Reply(0, RangeResponse());
  EXPECT_TRUE(h.backend().Call(0).completed);

  h.backend().SetAutoReply("Range", RangeResponse());
  grpc::ClientContext ctx2;
  EXPECT_TRUE(kv->Range(&ctx2, req, &resp).ok());
  EXPECT_EQ(h.backend().unary_count(), 2u);
}

TEST(FrontWatch, RelaysBothWaysInOrder) {
  Harness h;
  auto stub = etcdserverpb::Watch::NewStub(h.channel());
  grpc::ClientContext ctx;
  ctx.AddMetadata("token", "t1");
  auto stream = stub->Watch(&ctx);
  for (const char* key : {"a", "b", "c"}) ASSERT_TRUE(stream->Write(CreateWatch(key)));
  std::shared_ptr<FakeWatch> watch = h.WaitForWatch();
  ASSERT_NE(watch, nullptr);
  EXPECT_EQ(watch->ctx().token, "t1");
  ASSERT_TRUE(WaitFor([&] { return watch->Requests().size() == 3; }, kWait));
  std::vector<WatchRequest> got = watch->Requests();
  EXPECT_EQ(got[0].create_request().key(), "a");
  EXPECT_EQ(got[1].create_request().key(), "b");
  EXPECT_EQ(got[2].create_request().key(), "c");

  for (int i = 0; i < 5; ++i) watch->Push(WatchReply(i, 100 + i));
  for (int i = 0; i < 5; ++i) {
    WatchResponse resp;
    ASSERT_TRUE(stream->Read(&resp));
    EXPECT_EQ(resp.watch_id(), i);
    EXPECT_EQ(resp.header().revision(), 100 + i);
  }
  // More requests after responses still arrive, in order.
  WatchRequest cancel;
  cancel.mutable_cancel_request()->set_watch_id(1);
  ASSERT_TRUE(stream->Write(cancel));
  ASSERT_TRUE(WaitFor([&] { return watch->Requests().size() == 4; }, kWait));
  EXPECT_EQ(watch->Requests()[3].cancel_request().watch_id(), 1);
  EXPECT_FALSE(watch->writes_done());

  watch->Finish(absl::OkStatus());
  WatchResponse extra;
  EXPECT_FALSE(stream->Read(&extra));
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());
  EXPECT_TRUE(WaitFor([&] { return watch->handle_released(); }, kWait));
  EXPECT_FALSE(watch->cancelled());
}

// etcd keeps a half-closed watch stream open and delivering (etcd's proxy
// kills it, etcd #9751 / #18230).
TEST(FrontWatch, HalfClosedStreamKeepsDeliveringThenGetsBackendStatus) {
  Harness h;
  auto stub = etcdserverpb::Watch::NewStub(h.channel());
  grpc::ClientContext ctx;
  auto stream = stub->Watch(&ctx);
  ASSERT_TRUE(stream->Write(CreateWatch("k")));
  ASSERT_TRUE(stream->WritesDone());
  std::shared_ptr<FakeWatch> watch = h.WaitForWatch();
  ASSERT_NE(watch, nullptr);
  ASSERT_TRUE(WaitFor([&] { return watch->writes_done(); }, kWait));
  EXPECT_EQ(watch->Requests().size(), 1u);

  for (int i = 0; i < 3; ++i) watch->Push(WatchReply(7, 10 + i));
  for (int i = 0; i < 3; ++i) {
    WatchResponse resp;
    ASSERT_TRUE(stream->Read(&resp));
    EXPECT_EQ(resp.header().revision(), 10 + i);
  }
  watch->Finish(EtcdStatus(EtcdError::kNoLeader));
  WatchResponse extra;
  EXPECT_FALSE(stream->Read(&extra));
  grpc::Status status = stream->Finish();
  absl::Status want = EtcdStatus(EtcdError::kNoLeader);
  EXPECT_EQ(static_cast<int>(status.error_code()), static_cast<int>(want.code()));
  EXPECT_EQ(status.error_message(), std::string(want.message()));
  EXPECT_TRUE(WaitFor([&] { return watch->handle_released(); }, kWait));
  EXPECT_FALSE(watch->cancelled());
}

// The backend ends the stream while the client still has its side open (a
// read is pending in the front).
TEST(FrontWatch, BackendEndsOpenStream) {
  Harness h;
  auto stub = etcdserverpb::Watch::NewStub(h.channel());
  grpc::ClientContext ctx;
  auto stream = stub->Watch(&ctx);
  ASSERT_TRUE(stream->Write(CreateWatch("k")));
  std::shared_ptr<FakeWatch> watch = h.WaitForWatch();
  ASSERT_NE(watch, nullptr);
  ASSERT_TRUE(WaitFor([&] { return watch->Requests().size() == 1; }, kWait));
  watch->Push(WatchReply(0, 5));
  watch->Finish(EtcdStatus(EtcdError::kCompacted));
  WatchResponse resp;
  ASSERT_TRUE(stream->Read(&resp));
  EXPECT_EQ(resp.header().revision(), 5);
  EXPECT_FALSE(stream->Read(&resp));
  grpc::Status status = stream->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::OUT_OF_RANGE);
  EXPECT_EQ(status.error_message(), std::string(EtcdStatus(EtcdError::kCompacted).message()));
  EXPECT_TRUE(WaitFor([&] { return watch->handle_released(); }, kWait));
}

TEST(FrontWatch, ClientCancelCancelsBackendStream) {
  Harness h;
  auto stub = etcdserverpb::Watch::NewStub(h.channel());
  grpc::ClientContext ctx;
  auto stream = stub->Watch(&ctx);
  ASSERT_TRUE(stream->Write(CreateWatch("k")));
  std::shared_ptr<FakeWatch> watch = h.WaitForWatch();
  ASSERT_NE(watch, nullptr);
  watch->Push(WatchReply(0, 1));
  WatchResponse resp;
  ASSERT_TRUE(stream->Read(&resp));
  EXPECT_FALSE(watch->cancelled());
  ctx.TryCancel();
  EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(WaitFor([&] { return watch->cancelled(); }, kWait));
  // The reactor goes away (and with it the backend handle).
  EXPECT_TRUE(WaitFor([&] { return watch->handle_released(); }, kWait));
}

// A client that stops reading holds back the backend: the front asks for one
// response at a time, the next only after the previous one reached the
// client (the in-process transport completes a write when the client reads).
TEST(FrontWatch, FlowControlAsksOneResponseBeyondWhatTheClientRead) {
  Harness h;
  auto stub = etcdserverpb::Watch::NewStub(h.channel());
  grpc::ClientContext ctx;
  auto stream = stub->Watch(&ctx);
  ASSERT_TRUE(stream->Write(CreateWatch("k")));
  std::shared_ptr<FakeWatch> watch = h.WaitForWatch();
  ASSERT_NE(watch, nullptr);
  constexpr int kQueued = 20;
  for (int i = 0; i < kQueued; ++i) watch->Push(WatchReply(0, i));
  constexpr int kRead = 5;
  for (int read = 0; read < kRead; ++read) {
    EXPECT_TRUE(ReadNextAtMost(*watch, read + 1));
    WatchResponse resp;
    ASSERT_TRUE(stream->Read(&resp));
    EXPECT_EQ(resp.header().revision(), read);
  }
  // The next response is asked for and handed to gRPC, and no more
  // (delivered = pushed - still queued).
  ASSERT_TRUE(WaitFor([&] { return watch->queued() == static_cast<size_t>(kQueued - (kRead + 1)); },
                      kWait));
  EXPECT_TRUE(watch->WaitForReadNext(kRead + 1, absl::ZeroDuration()));
  EXPECT_TRUE(ReadNextAtMost(*watch, kRead + 1));
  EXPECT_LE(watch->max_credits(), 1);
  // Then the client reads the rest.
  for (int read = kRead; read < kQueued; ++read) {
    EXPECT_TRUE(ReadNextAtMost(*watch, read + 1));
    WatchResponse resp;
    ASSERT_TRUE(stream->Read(&resp));
    EXPECT_EQ(resp.header().revision(), read);
  }
  EXPECT_EQ(watch->queued(), 0u);
  EXPECT_LE(watch->max_credits(), 1);
  ctx.TryCancel();
  stream->Finish();
  EXPECT_TRUE(WaitFor([&] { return watch->handle_released(); }, kWait));
}

TEST(FrontLease, KeepAlivePipelinedAndHalfClose) {
  Harness h;
  auto stub = etcdserverpb::Lease::NewStub(h.channel());
  grpc::ClientContext ctx;
  auto stream = stub->LeaseKeepAlive(&ctx);
  for (int64_t id = 1; id <= 5; ++id) {
    LeaseKeepAliveRequest req;
    req.set_id(id);
    ASSERT_TRUE(stream->Write(req));
  }
  ASSERT_TRUE(h.backend().WaitForKeepAlives(1, kAbslWait));
  std::shared_ptr<FakeKeepAlive> ka = h.backend().keepalive(0);
  ASSERT_NE(ka, nullptr);
  ASSERT_TRUE(WaitFor([&] { return ka->Requests().size() == 5; }, kWait));
  for (int64_t i = 0; i < 5; ++i) EXPECT_EQ(ka->Requests()[i].id(), i + 1);
  for (int64_t id = 1; id <= 4; ++id) {
    LeaseKeepAliveResponse resp;
    resp.set_id(id);
    resp.set_ttl(60);
    ka->Push(resp);
  }
  for (int64_t id = 1; id <= 4; ++id) {
    LeaseKeepAliveResponse resp;
    ASSERT_TRUE(stream->Read(&resp));
    EXPECT_EQ(resp.id(), id);
    EXPECT_EQ(resp.ttl(), 60);
  }
  // Half-close with one answer outstanding: it still arrives, then OK (the
  // etcd proxy answers CANCELLED with no reply, etcd #9751).
  ASSERT_TRUE(stream->WritesDone());
  ASSERT_TRUE(WaitFor([&] { return ka->writes_done(); }, kWait));
  LeaseKeepAliveResponse last;
  last.set_id(5);
  last.set_ttl(59);
  ka->Push(last);
  ka->Finish(absl::OkStatus());
  LeaseKeepAliveResponse resp;
  ASSERT_TRUE(stream->Read(&resp));
  EXPECT_EQ(resp.id(), 5);
  EXPECT_FALSE(stream->Read(&resp));
  EXPECT_TRUE(stream->Finish().ok());
  EXPECT_TRUE(WaitFor([&] { return ka->handle_released(); }, kWait));
}

TEST(FrontMaintenance, SnapshotStreamsChunksInOrder) {
  Harness h;
  auto stub = etcdserverpb::Maintenance::NewStub(h.channel());
  grpc::ClientContext ctx;
  ctx.AddMetadata("token", "snap-token");
  auto reader = stub->Snapshot(&ctx, SnapshotRequest());
  ASSERT_TRUE(h.backend().WaitForSnapshots(1, kAbslWait));
  std::shared_ptr<FakeSnapshot> snap = h.backend().snapshot(0);
  ASSERT_NE(snap, nullptr);
  EXPECT_EQ(snap->ctx().token, "snap-token");
  EXPECT_EQ(snap->Requests().size(), 1u);
  constexpr int kChunks = 6;
  for (int i = 0; i < kChunks; ++i) {
    SnapshotResponse chunk;
    chunk.set_blob(std::string(64 * 1024, static_cast<char>('a' + i)));
    chunk.set_remaining_bytes(kChunks - 1 - i);
    snap->Push(chunk);
  }
  snap->Finish(absl::OkStatus());
  for (int i = 0; i < kChunks; ++i) {
    EXPECT_TRUE(ReadNextAtMost(*snap, i + 1));
    SnapshotResponse chunk;
    ASSERT_TRUE(reader->Read(&chunk));
    EXPECT_EQ(chunk.blob(), std::string(64 * 1024, static_cast<char>('a' + i)));
    EXPECT_EQ(chunk.remaining_bytes(), static_cast<uint64_t>(kChunks - 1 - i));
  }
  SnapshotResponse extra;
  EXPECT_FALSE(reader->Read(&extra));
  EXPECT_TRUE(reader->Finish().ok());
  EXPECT_LE(snap->max_credits(), 1);
  EXPECT_TRUE(WaitFor([&] { return snap->handle_released(); }, kWait));
}

TEST(FrontMaintenance, SnapshotCancelReachesBackend) {
  Harness h;
  auto stub = etcdserverpb::Maintenance::NewStub(h.channel());
  grpc::ClientContext ctx;
  auto reader = stub->Snapshot(&ctx, SnapshotRequest());
  ASSERT_TRUE(h.backend().WaitForSnapshots(1, kAbslWait));
  std::shared_ptr<FakeSnapshot> snap = h.backend().snapshot(0);
  ASSERT_NE(snap, nullptr);
  SnapshotResponse chunk;
  chunk.set_blob("x");
  snap->Push(chunk);
  ASSERT_TRUE(reader->Read(&chunk));
  ctx.TryCancel();
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(WaitFor([&] { return snap->cancelled(); }, kWait));
  EXPECT_TRUE(WaitFor([&] { return snap->handle_released(); }, kWait));
}

TEST(FrontElection, ObserveRelaysLeaderChanges) {
  Harness h;
  auto stub = v3electionpb::Election::NewStub(h.channel());
  grpc::ClientContext ctx;
  v3electionpb::LeaderRequest req;
  req.set_name("elect");
  auto reader = stub->Observe(&ctx, req);
  ASSERT_TRUE(h.backend().WaitForObserves(1, kAbslWait));
  std::shared_ptr<FakeObserve> observe = h.backend().observe(0);
  ASSERT_NE(observe, nullptr);
  ASSERT_EQ(observe->Requests().size(), 1u);
  EXPECT_EQ(observe->Requests()[0].name(), "elect");
  for (const char* value : {"leader-1", "leader-2"}) {
    v3electionpb::LeaderResponse resp;
    resp.mutable_kv()->set_value(value);
    observe->Push(resp);
  }
  observe->Finish(EtcdStatus(EtcdError::kNoLeader));
  v3electionpb::LeaderResponse resp;
  ASSERT_TRUE(reader->Read(&resp));
  EXPECT_EQ(resp.kv().value(), "leader-1");
  ASSERT_TRUE(reader->Read(&resp));
  EXPECT_EQ(resp.kv().value(), "leader-2");
  EXPECT_FALSE(reader->Read(&resp));
  grpc::Status status = reader->Finish();
  EXPECT_EQ(status.error_message(), std::string(EtcdStatus(EtcdError::kNoLeader).message()));
}

// Several watch streams at once, each relayed independently.
TEST(FrontWatch, ConcurrentStreamsAreIndependent) {
  Harness h;
  auto stub = etcdserverpb::Watch::NewStub(h.channel());
  constexpr int kStreams = 8;
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<std::unique_ptr<grpc::ClientReaderWriter<WatchRequest, WatchResponse>>> streams;
  for (int i = 0; i < kStreams; ++i) {
    contexts.push_back(std::make_unique<grpc::ClientContext>());
    streams.push_back(stub->Watch(contexts.back().get()));
    ASSERT_TRUE(streams.back()->Write(CreateWatch("key-" + std::to_string(i))));
  }
  ASSERT_TRUE(h.backend().WaitForWatches(kStreams, kAbslWait));
  ASSERT_EQ(h.backend().watch_count(), static_cast<size_t>(kStreams));
  std::vector<std::shared_ptr<FakeWatch>> watches;
  for (int i = 0; i < kStreams; ++i) {
    watches.push_back(h.backend().watch(i));
    ASSERT_NE(watches.back(), nullptr);
  }
  for (auto& watch : watches) {
    ASSERT_TRUE(WaitFor([&] { return watch->Requests().size() == 1; }, kWait));
    // Answer each stream with its own key's number.
    const std::string key = watch->Requests()[0].create_request().key();
    watch->Push(WatchReply(std::stoi(key.substr(4)), 1));
  }
  for (int i = 0; i < kStreams; ++i) {
    WatchResponse resp;
    ASSERT_TRUE(streams[i]->Read(&resp));
    EXPECT_EQ(resp.watch_id(), i);
  }
  for (int i = 0; i < kStreams; ++i) contexts[i]->TryCancel();
  for (int i = 0; i < kStreams; ++i) streams[i]->Finish();
  for (auto& watch : watches) {
    EXPECT_TRUE(WaitFor([&] { return watch->handle_released(); }, kWait));
  }
}

// Server shutdown with a stream still open: at the grace deadline gRPC
// cancels it, the backend stream is cancelled and everything ends.
TEST(FrontWatch, ServerShutdownEndsOpenStreams) {
  Harness h;
  auto stub = etcdserverpb::Watch::NewStub(h.channel());
  grpc::ClientContext ctx;
  auto stream = stub->Watch(&ctx);
  ASSERT_TRUE(stream->Write(CreateWatch("k")));
  std::shared_ptr<FakeWatch> watch = h.WaitForWatch();
  ASSERT_NE(watch, nullptr);
  ASSERT_TRUE(WaitFor([&] { return watch->Requests().size() == 1; }, kWait));
  EXPECT_FALSE(watch->cancelled());
  h.Shutdown(absl::Milliseconds(100));
  EXPECT_TRUE(watch->cancelled());
  EXPECT_TRUE(WaitFor([&] { return watch->handle_released(); }, kWait));
  EXPECT_FALSE(stream->Finish().ok());
}

std::string Series(const std::string& name, const std::string& labels) {
  return name + "{" + labels + "} ";
}

// Returns the value of the series `name{labels}` in `text`, or -1.
int64_t Value(const std::string& text, const std::string& name, const std::string& labels) {
  const std::string prefix = Series(name, labels);
  size_t pos = text.find("\n" + prefix);
  if (pos == std::string::npos) return -1;
  pos += 1 + prefix.size();
  return std::stoll(text.substr(pos, text.find('\n', pos) - pos));
}

TEST(FrontMetrics, CountersInGoGrpcPrometheusNames) {
  common::MetricsRegistry registry;
  Harness h(&registry);
  h.backend().SetAutoReply("Range", RangeResponse());
  h.backend().SetAutoFail("Put", EtcdStatus(EtcdError::kKeyNotFound));
  auto kv = etcdserverpb::KV::NewStub(h.channel());
  for (int i = 0; i < 2; ++i) {
    grpc::ClientContext ctx;
    RangeResponse resp;
    ASSERT_TRUE(kv->Range(&ctx, RangeRequest(), &resp).ok());
  }
  {
    grpc::ClientContext ctx;
    etcdserverpb::PutResponse resp;
    ASSERT_FALSE(kv->Put(&ctx, etcdserverpb::PutRequest(), &resp).ok());
  }
  {
    auto watch_stub = etcdserverpb::Watch::NewStub(h.channel());
    grpc::ClientContext ctx;
    auto stream = watch_stub->Watch(&ctx);
    ASSERT_TRUE(stream->Write(CreateWatch("a")));
    ASSERT_TRUE(stream->Write(CreateWatch("b")));
    std::shared_ptr<FakeWatch> watch = h.WaitForWatch();
    ASSERT_NE(watch, nullptr);
    ASSERT_TRUE(WaitFor([&] { return watch->Requests().size() == 2; }, kWait));
    for (int i = 0; i < 3; ++i) watch->Push(WatchReply(i, i));
    for (int i = 0; i < 3; ++i) {
      WatchResponse resp;
      ASSERT_TRUE(stream->Read(&resp));
    }
    stream->WritesDone();
    watch->Finish(absl::OkStatus());
    ASSERT_TRUE(stream->Finish().ok());
  }
  const std::string text = registry.RenderText();
  const std::string range =
      "grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"";
  const std::string put =
      "grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"";
  const std::string watch =
      "grpc_method=\"Watch\",grpc_service=\"etcdserverpb.Watch\",grpc_type=\"bidi_stream\"";
  EXPECT_EQ(Value(text, "grpc_server_started_total", range), 2) << text;
  EXPECT_EQ(Value(text, "grpc_server_handled_total", "grpc_code=\"OK\"," + range), 2);
  EXPECT_EQ(Value(text, "grpc_server_msg_received_total", range), 2);
  EXPECT_EQ(Value(text, "grpc_server_msg_sent_total", range), 2);
  EXPECT_EQ(Value(text, "grpc_server_started_total", put), 1);
  EXPECT_EQ(Value(text, "grpc_server_handled_total", "grpc_code=\"OK\"," + put), 0);
  EXPECT_EQ(Value(text, "grpc_server_handled_total", "grpc_code=\"InvalidArgument\"," + put), 1);
  EXPECT_EQ(Value(text, "grpc_server_msg_sent_total", put), 0);
  EXPECT_EQ(Value(text, "grpc_server_started_total", watch), 1);
  EXPECT_EQ(Value(text, "grpc_server_msg_received_total", watch), 2);
  EXPECT_EQ(Value(text, "grpc_server_msg_sent_total", watch), 3);
  EXPECT_EQ(Value(text, "grpc_server_handled_total", "grpc_code=\"OK\"," + watch), 1);
  // Registered up front, as go-grpc-prometheus does.
  EXPECT_EQ(Value(text, "grpc_server_started_total",
                  "grpc_method=\"Observe\",grpc_service=\"v3electionpb.Election\","
                  "grpc_type=\"server_stream\""),
            0);
  EXPECT_EQ(Value(text, "grpc_server_handled_total",
                  "grpc_code=\"Unauthenticated\",grpc_method=\"Lock\","
                  "grpc_service=\"v3lockpb.Lock\",grpc_type=\"unary\""),
            0);
}

TEST(FrontMetrics, NoRegistryNoCounters) {
  Harness h;
  h.backend().SetAutoReply("Range", RangeResponse());
  auto kv = etcdserverpb::KV::NewStub(h.channel());
  grpc::ClientContext ctx;
  RangeResponse resp;
  EXPECT_TRUE(kv->Range(&ctx, RangeRequest(), &resp).ok());
}

}  // namespace
}  // namespace keel::api::server
