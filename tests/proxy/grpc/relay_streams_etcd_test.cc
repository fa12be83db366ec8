// The chain's streams to etcd over the frame relay (FrameRelay::OpenToEtcd,
// RelayStreamsBackend) against a real etcd 3.4 member: keep-alives and
// watches are answered as on etcd's own stream (and ride the relay, not the
// gRPC client: the relay's gauge and etcd's own stream count say so);
// etcd's status and message come through; Cancel, a stopped relay and a
// dead etcd end a stream with the status the Backend contract names, and
// new streams then go to the gRPC client, which keeps working. The chain's
// unary KV calls ride it too: a read the relay cannot deliver, or a write
// etcd never saw, is sent again through the gRPC client; a write that may
// have reached etcd is not.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <functional>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "api/backend.h"
#include "common/metrics.h"
#include "gtest/gtest.h"
#include "proxy/grpc/frame_relay.h"
#include "proxy/grpc/relay_streams.h"
#include "proxy/grpc/remote_backend.h"
#include "tests/testutil/await.h"
#include "tests/testutil/etcd_cluster.h"
#include "tests/testutil/process.h"
#include "tests/testutil/stream_recorder.h"

namespace keel::proxy::grpcproxy {
namespace {

using ::etcdserverpb::DeleteRangeRequest;
using ::etcdserverpb::DeleteRangeResponse;
using ::etcdserverpb::LeaseKeepAliveRequest;
using ::etcdserverpb::LeaseKeepAliveResponse;
using ::etcdserverpb::PutRequest;
using ::etcdserverpb::PutResponse;
using ::etcdserverpb::RangeRequest;
using ::etcdserverpb::RangeResponse;
using ::etcdserverpb::TxnRequest;
using ::etcdserverpb::TxnResponse;
using ::etcdserverpb::WatchRequest;
using ::etcdserverpb::WatchResponse;
using ::keel::testutil::Await;
using ::keel::testutil::EtcdCluster;

// Generous: the box is a loaded 2-core VM.
constexpr absl::Duration kWait = absl::Seconds(30);
constexpr char kChainStreams[] = "keel_grpc_relay_chain_streams";

using KeepAlive = testutil::StreamRecorder<LeaseKeepAliveRequest, LeaseKeepAliveResponse>;
using WatchRecorder = testutil::StreamRecorder<WatchRequest, WatchResponse>;

// What FrameRelay::OpenToEtcd's observer saw.
class EndRecorder : public EtcdStreamObserver {
 public:
  void OnMessage(std::string_view) override {}
  void OnEnd(absl::Status status) override {
    absl::MutexLock lock(&mu_);
    EXPECT_FALSE(end_.has_value()) << "OnEnd ran twice";
    end_ = std::move(status);
  }
  std::optional<absl::Status> WaitEnd() {
    absl::MutexLock lock(&mu_);
    auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return end_.has_value(); };
    mu_.AwaitWithTimeout(absl::Condition(&ready), kWait);
    return end_;
  }

 private:
  absl::Mutex mu_;
  std::optional<absl::Status> end_ ABSL_GUARDED_BY(mu_);
};

LeaseKeepAliveRequest Ask(int64_t lease_id) {
  LeaseKeepAliveRequest r;
  r.set_id(lease_id);
  return r;
}

// etcd's grpc_server_started_total for `method`; -1 if unread.
double EtcdStreamsStarted(int port, const std::string& method) {
  return testutil::EtcdGrpcMetric(port, "grpc_server_started_total", method).value_or(-1);
}

// A socket listening on 127.0.0.1 (its port in `port`), or -1.
int ListenOnLoopback(int* port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), len) != 0 || listen(fd, 4) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    close(fd);
    return -1;
  }
  *port = ntohs(addr.sin_port);
  return fd;
}

// A stand-in "etcd" on a loopback port: the first connection made to it is
// served by `serve(conn, over)` on a thread of its own; `over` is set, the
// thread joined and the port closed when this goes.
class FakeEtcd {
 public:
  using Serve = std::function<void(int conn, const std::atomic<bool>& over)>;
  explicit FakeEtcd(Serve serve) : listener_(ListenOnLoopback(&port_)) {
    if (listener_ < 0) return;
    thread_ = std::thread([this, serve = std::move(serve)] {
      pollfd incoming{listener_, POLLIN, 0};
      if (poll(&incoming, 1, 10000) <= 0) return;  // nobody came: the test fails
      const int conn = accept(listener_, nullptr, nullptr);
      if (conn < 0) return;
      serve(conn, over_);
      close(conn);
    });
  }
  ~FakeEtcd() {
    over_ = true;
    if (thread_.joinable()) thread_.join();
    if (listener_ >= 0) close(listener_);
  }
  bool ok() const { return listener_ >= 0; }
  std::string endpoint() const { return "127.0.0.1:" + std::to_string(port_); }

 private:
  int port_ = 0;
  const int listener_;
  std::atomic<bool> over_{false};
  std::thread thread_;
};

// How a fake etcd tells the relay it did not process a stream.
enum class Refusal {
  kRefusedStream,  // RST_STREAM REFUSED_STREAM on it
  kGoaway,         // GOAWAY NO_ERROR with last stream id 0: none processed
};

// Speaks just enough HTTP/2 on `conn` to refuse the first request stream it
// is sent, then keeps the connection until `over`.
void RefuseFirstStream(int conn, const std::atomic<bool>& over, Refusal how) {
  auto send_frame = [conn](std::initializer_list<uint8_t> bytes) {
    const std::vector<uint8_t> frame(bytes);
    return write(conn, frame.data(), frame.size()) == static_cast<ssize_t>(frame.size());
  };
  send_frame({0, 0, 0, 4, 0, 0, 0, 0, 0});  // server preface: empty SETTINGS
  std::string in;
  size_t pos = 24;  // frames follow the client's 24-byte preface
  bool refused = false;
  while (!over.load()) {
    pollfd p{conn, POLLIN, 0};
    if (poll(&p, 1, 50) <= 0) continue;
    char buf[4096];
    const ssize_t n = read(conn, buf, sizeof(buf));
    if (n <= 0) break;
    in.append(buf, static_cast<size_t>(n));
    while (in.size() >= pos + 9) {
      const auto* f = reinterpret_cast<const uint8_t*>(in.data() + pos);
      const size_t length = (size_t{f[0]} << 16) | (size_t{f[1]} << 8) | f[2];
      if (in.size() < pos + 9 + length) break;
      const uint8_t type = f[3];
      const uint8_t flags = f[4];
      if (type == 4 && (flags & 1) == 0) send_frame({0, 0, 0, 4, 1, 0, 0, 0, 0});  // ACK
      if (type == 1 && !refused) {  // HEADERS: the request
        refused = true;
        if (how == Refusal::kRefusedStream) {
          send_frame({0, 0, 4, 3, 0, static_cast<uint8_t>(f[5] & 0x7f), f[6], f[7], f[8], 0, 0, 0,
                      7});  // RST_STREAM REFUSED_STREAM
        } else {
          send_frame({0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0});  // GOAWAY 0 NO_ERROR
        }
      }
      pos += 9 + length;
    }
  }
}

// A RelayStreamsBackend on `relay` whose gRPC client can reach nothing:
// whatever it answers came over the relay.
struct RelayOnly {
  static RemoteOptions Nowhere() {
    RemoteOptions options;
    options.endpoints = {"127.0.0.1:" + std::to_string(testutil::FreePort())};
    return options;
  }
  explicit RelayOnly(FrameRelay* relay) : unreachable(Nowhere()), backend(unreachable) {
    backend.Attach(relay);
  }
  ~RelayOnly() { backend.Detach(); }

  RemoteBackend unreachable;
  RelayStreamsBackend backend;
};

class RelayStreamsEtcdTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string error;
    ASSERT_TRUE(etcd_.Start(&error)) << error;
    RemoteOptions remote;
    remote.endpoints = {etcd_.ClientAddr(0)};
    remote_ = std::make_unique<RemoteBackend>(std::move(remote));
    streams_ = std::make_unique<RelayStreamsBackend>(*remote_);
    relay_ = NewRelay();
  }
  void TearDown() override {
    streams_->Detach();
    relay_.reset();  // may be gone already
    streams_.reset();
    remote_.reset();
  }

  // A relay whose connections go to `upstream` (default: the member).
  std::unique_ptr<FrameRelay> NewRelay(std::string upstream = "") {
    if (upstream.empty()) upstream = etcd_.ClientAddr(0);
    FrameRelayOptions options;
    options.upstream_endpoint = [upstream] { return upstream; };
    options.metrics = &metrics_;
    options.loops = 1;
    return std::make_unique<FrameRelay>(std::move(options));
  }

  // Replaces the relay with a started one to `endpoint`, attached.
  void RelayTo(const std::string& endpoint) {
    relay_ = NewRelay(endpoint);
    ASSERT_TRUE(relay_->Start().ok());
    streams_->Attach(relay_.get());
  }

  int64_t Grant(int64_t ttl) {
    etcdserverpb::LeaseGrantRequest req;
    req.set_ttl(ttl);
    auto resp = Await<etcdserverpb::LeaseGrantResponse>(
        [&](auto done) { remote_->LeaseGrant({}, std::move(req), std::move(done)); });
    EXPECT_TRUE(resp.ok()) << resp.status();
    return resp.ok() ? resp->id() : 0;
  }

  std::unique_ptr<KeepAlive> OpenKeepAlive(api::CallContext ctx = {}) {
    return std::make_unique<KeepAlive>(
        [&](KeepAlive* r) { return streams_->LeaseKeepAlive(ctx, r); });
  }

  static absl::StatusOr<RangeResponse> Range(api::Backend& backend, const api::CallContext& ctx,
                                             RangeRequest request) {
    return Await<RangeResponse>(
        [&](auto done) { backend.Range(ctx, std::move(request), std::move(done)); });
  }

  int64_t ChainStreams() { return metrics_.GetGauge(kChainStreams, "")->Value(); }

  // A Put through streams_.
  absl::StatusOr<PutResponse> Put(const std::string& key, const std::string& value) {
    PutRequest put;
    put.set_key(key);
    put.set_value(value);
    return Await<PutResponse>([&](auto done) { streams_->Put({}, put, std::move(done)); });
  }

  // `key`'s value on the member, read directly ("" when absent).
  // A put through a relay to a fake "etcd" that refuses it as `how` says:
  // the gRPC client, which reaches the member, must carry it, so the caller
  // sees only the member's answer and the value is there.
  void PutRefusedThenLands(Refusal how, const std::string& key) {
    FakeEtcd etcd(
        [how](int conn, const std::atomic<bool>& over) { RefuseFirstStream(conn, over, how); });
    ASSERT_TRUE(etcd.ok());
    ASSERT_NO_FATAL_FAILURE(RelayTo(etcd.endpoint()));
    absl::StatusOr<PutResponse> written = Put(key, "then written");
    EXPECT_TRUE(written.ok()) << written.status();
    EXPECT_EQ(ValueOnEtcd(key), "then written");
  }
  std::string ValueOnEtcd(const std::string& key) {
    testutil::CommandResult r =
        EtcdCluster::Etcdctl(etcd_.ClientAddr(0), {"get", key, "--print-value-only"});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    std::string out = r.out;
    while (!out.empty() && out.back() == '\n') out.pop_back();
    return out;
  }

  EtcdCluster etcd_;
  common::MetricsRegistry metrics_;
  std::unique_ptr<RemoteBackend> remote_;
  std::unique_ptr<RelayStreamsBackend> streams_;
  std::unique_ptr<FrameRelay> relay_;
};

// A keep-alive through the relay is etcd's own answer, on a stream etcd
// counts once; half-closing ends it with OK, as etcd ends it.
TEST_F(RelayStreamsEtcdTest, KeepAlivesRideTheRelay) {
  // Opened before the relay runs (as the proxy's chain does): it waits.
  streams_->Attach(relay_.get());
  const int64_t lease = Grant(60);
  const double before = EtcdStreamsStarted(etcd_.ClientPort(0), "LeaseKeepAlive");
  auto client = OpenKeepAlive();
  ASSERT_TRUE(relay_->Start().ok());
  client->stream().Write(Ask(lease));
  client->stream().Write(Ask(lease + 1000));  // no such lease
  std::optional<LeaseKeepAliveResponse> first = client->Get(0);
  std::optional<LeaseKeepAliveResponse> second = client->Get(1);
  ASSERT_TRUE(first.has_value() && second.has_value());
  EXPECT_EQ(first->id(), lease);
  EXPECT_GT(first->ttl(), 50);
  EXPECT_GT(first->header().revision(), 0);
  EXPECT_EQ(second->id(), lease + 1000);
  EXPECT_EQ(second->ttl(), 0);
  EXPECT_EQ(ChainStreams(), 1);
  EXPECT_EQ(EtcdStreamsStarted(etcd_.ClientPort(0), "LeaseKeepAlive"), before + 1);

  client->stream().WritesDone();
  std::optional<absl::Status> done = client->WaitDone();
  ASSERT_TRUE(done.has_value());
  EXPECT_TRUE(done->ok()) << *done;
  client.reset();
  for (int i = 0; i < 100 && ChainStreams() != 0; ++i) absl::SleepFor(absl::Milliseconds(20));
  EXPECT_EQ(ChainStreams(), 0);
}

// A watch through the relay gets etcd's created reply and events; Cancel
// ends it with CANCELLED.
TEST_F(RelayStreamsEtcdTest, WatchesRideTheRelayAndCancel) {
  ASSERT_TRUE(relay_->Start().ok());
  streams_->Attach(relay_.get());
  WatchRecorder watch([&](WatchRecorder* r) { return streams_->Watch({}, r); });
  WatchRequest create;
  create.mutable_create_request()->set_key("k");
  watch.stream().Write(create);
  std::optional<WatchResponse> created = watch.Get(0);
  ASSERT_TRUE(created.has_value());
  EXPECT_TRUE(created->created());
  EXPECT_EQ(ChainStreams(), 1);

  etcdserverpb::PutRequest put;
  put.set_key("k");
  put.set_value(std::string(100000, 'v'));  // several DATA frames
  auto put_done = Await<etcdserverpb::PutResponse>(
      [&](auto done) { remote_->Put({}, std::move(put), std::move(done)); });
  ASSERT_TRUE(put_done.ok());
  std::optional<WatchResponse> event = watch.Get(1);
  ASSERT_TRUE(event.has_value());
  ASSERT_EQ(event->events_size(), 1);
  EXPECT_EQ(event->events(0).kv().value().size(), 100000u);
  EXPECT_EQ(event->events(0).kv().mod_revision(), put_done->header().revision());

  watch.stream().Cancel();
  std::optional<absl::Status> done = watch.WaitDone();
  ASSERT_TRUE(done.has_value());
  EXPECT_EQ(done->code(), absl::StatusCode::kCancelled) << *done;
}

// etcd's status and message reach the observer as etcd sent them, here a
// trailers-only answer to a method etcd does not have, whose message etcd
// percent-encodes (the '%' of the name).
TEST_F(RelayStreamsEtcdTest, EtcdsStatusComesThrough) {
  ASSERT_TRUE(relay_->Start().ok());
  auto observer = std::make_shared<EndRecorder>();
  std::unique_ptr<EtcdStream> stream = relay_->OpenToEtcd("/etcdserverpb.Lease/No%Such", {}, observer);
  ASSERT_NE(stream, nullptr);
  stream->Write(LeaseKeepAliveRequest());  // an empty message
  std::optional<absl::Status> end = observer->WaitEnd();
  ASSERT_TRUE(end.has_value());
  EXPECT_EQ(end->code(), absl::StatusCode::kUnimplemented) << *end;
  EXPECT_EQ(end->message(), "unknown method No%Such for service etcdserverpb.Lease") << *end;
}

// A stopped relay (its clients closed) still carries the chain's streams,
// so that their owners close them themselves; destroying it ends what is
// left with UNAVAILABLE. Detached, streams go to the gRPC client, which
// still works. A relay that never ran ends what was opened on it when it
// is stopped.
TEST_F(RelayStreamsEtcdTest, StoppedRelayKeepsItsStreamsUntilDestroyed) {
  ASSERT_TRUE(relay_->Start().ok());
  streams_->Attach(relay_.get());
  const int64_t lease = Grant(60);
  auto on_relay = OpenKeepAlive();
  on_relay->stream().Write(Ask(lease));
  ASSERT_TRUE(on_relay->Get(0).has_value());

  streams_->Detach();
  EXPECT_TRUE(relay_->Stop(absl::ZeroDuration()));
  on_relay->stream().Write(Ask(lease));
  std::optional<LeaseKeepAliveResponse> after_stop = on_relay->Get(1);
  ASSERT_TRUE(after_stop.has_value());
  EXPECT_EQ(after_stop->id(), lease);
  EXPECT_EQ(relay_->OpenToEtcd("/etcdserverpb.Lease/LeaseKeepAlive", {},
                               std::make_shared<EndRecorder>()),
            nullptr);

  relay_.reset();
  std::optional<absl::Status> done = on_relay->WaitDone();
  ASSERT_TRUE(done.has_value());
  EXPECT_EQ(done->code(), absl::StatusCode::kUnavailable) << *done;

  auto on_grpc = OpenKeepAlive();
  on_grpc->stream().Write(Ask(lease));
  std::optional<LeaseKeepAliveResponse> reply = on_grpc->Get(0);
  ASSERT_TRUE(reply.has_value());
  EXPECT_EQ(reply->id(), lease);
  EXPECT_EQ(ChainStreams(), 0);

  std::unique_ptr<FrameRelay> never_started = NewRelay();
  auto observer = std::make_shared<EndRecorder>();
  ASSERT_NE(never_started->OpenToEtcd("/etcdserverpb.Lease/LeaseKeepAlive", {}, observer), nullptr);
  EXPECT_TRUE(never_started->Stop(absl::ZeroDuration()));
  std::optional<absl::Status> end = observer->WaitEnd();
  ASSERT_TRUE(end.has_value());
  EXPECT_EQ(end->code(), absl::StatusCode::kUnavailable) << *end;
}

// etcd going away ends a stream on the relay with UNAVAILABLE; while it
// cannot be reached, new streams go to the gRPC client; once it is back, a
// keep-alive through the backend works again.
TEST_F(RelayStreamsEtcdTest, LostEtcdEndsTheStreamAndNothingHangs) {
  ASSERT_TRUE(relay_->Start().ok());
  streams_->Attach(relay_.get());
  const int64_t lease = Grant(60);
  auto client = OpenKeepAlive();
  client->stream().Write(Ask(lease));
  ASSERT_TRUE(client->Get(0).has_value());

  etcd_.Stop(0);
  std::optional<absl::Status> done = client->WaitDone();
  ASSERT_TRUE(done.has_value());
  EXPECT_EQ(done->code(), absl::StatusCode::kUnavailable) << *done;
  client.reset();

  // The next open finds no etcd: it ends with UNAVAILABLE. (The relay then
  // refuses opens for a second: RelayStreamsBackend hands them to the gRPC
  // client, which fails over.)
  auto observer = std::make_shared<EndRecorder>();
  ASSERT_NE(relay_->OpenToEtcd("/etcdserverpb.Lease/LeaseKeepAlive", {}, observer), nullptr);
  std::optional<absl::Status> end = observer->WaitEnd();
  ASSERT_TRUE(end.has_value());
  EXPECT_EQ(end->code(), absl::StatusCode::kUnavailable) << *end;

  etcd_.Restart(0);
  ASSERT_TRUE(etcd_.WaitServing(0));
  std::optional<LeaseKeepAliveResponse> reply;
  for (int attempt = 0; attempt < 50 && !reply.has_value(); ++attempt) {
    auto again = OpenKeepAlive();
    again->stream().Write(Ask(lease));
    reply = again->Get(0);
    if (!reply.has_value()) absl::SleepFor(absl::Milliseconds(200));
  }
  ASSERT_TRUE(reply.has_value());
  EXPECT_EQ(reply->id(), lease);
  EXPECT_GT(reply->ttl(), 0);
}

// A Range (the range cache's revision probe) rides the relay: with a gRPC
// client that can reach nothing, it still gets etcd's answer, with or
// without a deadline or a cancel hook, and etcd's own error (status and
// message) for a bad one.
TEST_F(RelayStreamsEtcdTest, RangeRidesTheRelay) {
  ASSERT_TRUE(relay_->Start().ok());
  RelayOnly only(relay_.get());
  RelayStreamsBackend& backend = only.backend;
  ASSERT_EQ(EtcdCluster::Etcdctl(etcd_.ClientAddr(0), {"put", "k", "v"}).exit_code, 0);

  RangeRequest get;
  get.set_key("k");
  absl::StatusOr<RangeResponse> got = Range(backend, {}, get);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->kvs_size(), 1);
  EXPECT_EQ(got->kvs(0).value(), "v");
  EXPECT_GT(got->header().revision(), 1);

  api::CallContext with_deadline;
  with_deadline.deadline = absl::Now() + absl::Seconds(20);
  absl::StatusOr<RangeResponse> in_time = Range(backend, with_deadline, get);
  ASSERT_TRUE(in_time.ok()) << in_time.status();
  EXPECT_EQ(in_time->kvs_size(), 1);

  RangeRequest future = get;
  future.set_revision(got->header().revision() + 100);
  absl::StatusOr<RangeResponse> refused = Range(backend, {}, future);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kOutOfRange) << refused.status();
  EXPECT_EQ(refused.status().message(), "etcdserver: mvcc: required revision is a future revision");

  api::CallContext with_cancel;
  with_cancel.cancel = std::make_shared<api::CancelSignal>();
  absl::StatusOr<RangeResponse> cancellable = Range(backend, with_cancel, get);
  ASSERT_TRUE(cancellable.ok()) << cancellable.status();
  EXPECT_EQ(cancellable->kvs_size(), 1);
}

// A call on the relay that etcd does not answer by its deadline ends with
// DEADLINE_EXCEEDED, as on gRPC's client (here the "etcd" is a socket that
// is never read), and is not sent again; one whose caller gives up ends
// with CANCELLED at once.
TEST_F(RelayStreamsEtcdTest, UnansweredRangeEndsAtItsDeadlineOrCancel) {
  int port = 0;
  const int silent = ListenOnLoopback(&port);
  ASSERT_GE(silent, 0);
  ASSERT_NO_FATAL_FAILURE(RelayTo("127.0.0.1:" + std::to_string(port)));

  RangeRequest get;
  get.set_key("k");
  api::CallContext ctx;
  ctx.deadline = absl::Now() + absl::Milliseconds(500);
  absl::StatusOr<RangeResponse> got = Range(*streams_, ctx, get);
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDeadlineExceeded) << got.status();
  for (int i = 0; i < 100 && ChainStreams() != 0; ++i) absl::SleepFor(absl::Milliseconds(20));
  EXPECT_EQ(ChainStreams(), 0);  // reset and forgotten

  struct Outcome {
    absl::Notification ended;
    absl::Status status;
  };
  auto outcome = std::make_shared<Outcome>();  // outlives the test if the call hangs
  api::CallContext cancellable;
  cancellable.cancel = std::make_shared<api::CancelSignal>();
  streams_->Range(cancellable, get, [outcome](absl::StatusOr<RangeResponse> r) {
    outcome->status = r.status();
    outcome->ended.Notify();
  });
  absl::SleepFor(absl::Milliseconds(200));
  EXPECT_FALSE(outcome->ended.HasBeenNotified());  // no answer, no deadline: waiting
  cancellable.cancel->Cancel();
  ASSERT_TRUE(outcome->ended.WaitForNotificationWithTimeout(kWait));
  EXPECT_EQ(outcome->status.code(), absl::StatusCode::kCancelled) << outcome->status;
  for (int i = 0; i < 100 && ChainStreams() != 0; ++i) absl::SleepFor(absl::Milliseconds(20));
  EXPECT_EQ(ChainStreams(), 0);  // reset and forgotten
  streams_->Detach();
  relay_.reset();
  close(silent);
}

// A Range the relay cannot deliver (its etcd endpoint is dead) is sent again
// through the gRPC client, which reaches the member: the caller sees only
// the answer.
TEST_F(RelayStreamsEtcdTest, RangeTheRelayCannotCarryGoesToTheGrpcClient) {
  ASSERT_NO_FATAL_FAILURE(RelayTo("127.0.0.1:" + std::to_string(testutil::FreePort())));
  ASSERT_EQ(EtcdCluster::Etcdctl(etcd_.ClientAddr(0), {"put", "k", "v2"}).exit_code, 0);
  RangeRequest get;
  get.set_key("k");
  // The relay takes the first (it has not found etcd down yet): that one is
  // sent again; it refuses the next at once.
  for (int i = 0; i < 3; ++i) {
    absl::StatusOr<RangeResponse> got = Range(*streams_, {}, get);
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_EQ(got->kvs_size(), 1);
    EXPECT_EQ(got->kvs(0).value(), "v2");
  }
}

// A namespaced proxy's writes ride the relay too: with a gRPC client that
// can reach nothing, Put, Txn and DeleteRange get etcd's answers, and etcd's
// own errors come through with their codes and messages.
TEST_F(RelayStreamsEtcdTest, WritesRideTheRelay) {
  ASSERT_TRUE(relay_->Start().ok());
  RelayOnly only(relay_.get());
  RelayStreamsBackend& backend = only.backend;

  PutRequest put;
  put.set_key("w");
  put.set_value("1");
  absl::StatusOr<PutResponse> written =
      Await<PutResponse>([&](auto done) { backend.Put({}, put, std::move(done)); });
  ASSERT_TRUE(written.ok()) << written.status();
  EXPECT_GT(written->header().revision(), 1);
  EXPECT_EQ(ValueOnEtcd("w"), "1");

  TxnRequest txn;
  auto* compare = txn.add_compare();
  compare->set_key("w");
  compare->set_target(::etcdserverpb::Compare::VALUE);
  compare->set_result(::etcdserverpb::Compare::EQUAL);
  compare->set_value("1");
  auto* then = txn.add_success()->mutable_request_put();
  then->set_key("w");
  then->set_value("2");
  absl::StatusOr<TxnResponse> swapped =
      Await<TxnResponse>([&](auto done) { backend.Txn({}, txn, std::move(done)); });
  ASSERT_TRUE(swapped.ok()) << swapped.status();
  EXPECT_TRUE(swapped->succeeded());
  EXPECT_EQ(ValueOnEtcd("w"), "2");

  DeleteRangeRequest del;
  del.set_key("w");
  absl::StatusOr<DeleteRangeResponse> deleted =
      Await<DeleteRangeResponse>([&](auto done) { backend.DeleteRange({}, del, std::move(done)); });
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_EQ(deleted->deleted(), 1);
  EXPECT_EQ(ValueOnEtcd("w"), "");

  PutRequest keep_value = put;
  keep_value.set_ignore_value(true);
  keep_value.clear_value();
  absl::StatusOr<PutResponse> missing =
      Await<PutResponse>([&](auto done) { backend.Put({}, keep_value, std::move(done)); });
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kInvalidArgument) << missing.status();
  EXPECT_EQ(missing.status().message(), "etcdserver: key not found");

  TxnRequest twice;
  for (int i = 0; i < 2; ++i) twice.add_success()->mutable_request_put()->set_key("w");
  absl::StatusOr<TxnResponse> refused =
      Await<TxnResponse>([&](auto done) { backend.Txn({}, twice, std::move(done)); });
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument) << refused.status();
  EXPECT_EQ(refused.status().message(), "etcdserver: duplicate key given in txn request");
}

// A write whose connection to "etcd" (here a socket that reads the request
// and closes) was lost after it left may have been applied: it ends with
// UNAVAILABLE and is not sent again through the gRPC client, which would
// have reached the member and written it.
TEST_F(RelayStreamsEtcdTest, AWriteEtcdMayHaveSeenIsNotSentAgain) {
  // Reads what the relay sends (preface, settings, the request) until it
  // has been quiet for a moment, then drops the connection.
  FakeEtcd etcd([](int conn, const std::atomic<bool>&) {
    char buf[4096];
    size_t total = 0;
    for (int quiet = 0; quiet < 3;) {
      pollfd p{conn, POLLIN, 0};
      if (poll(&p, 1, 100) <= 0) {
        quiet += total > 0 ? 1 : 0;
        continue;
      }
      const ssize_t n = read(conn, buf, sizeof(buf));
      if (n <= 0) break;
      total += static_cast<size_t>(n);
    }
  });
  ASSERT_TRUE(etcd.ok());
  ASSERT_NO_FATAL_FAILURE(RelayTo(etcd.endpoint()));

  absl::StatusOr<PutResponse> lost = Put("maybe", "once");
  EXPECT_EQ(lost.status().code(), absl::StatusCode::kUnavailable) << lost.status();
  EXPECT_EQ(ValueOnEtcd("maybe"), "");  // the gRPC client (to the member) never sent it
}

// A write etcd refused before processing it (REFUSED_STREAM, as for the
// streams beyond a GOAWAY) is sent through the gRPC client, which reaches
// the member: the caller sees only the answer.
TEST_F(RelayStreamsEtcdTest, AWriteEtcdRefusedGoesToTheGrpcClient) {
  PutRefusedThenLands(Refusal::kRefusedStream, "refused");
}

// The same when etcd goes away (GOAWAY, as a member shutting down or
// enforcing its keepalive policy sends) without having processed the
// write's stream.
TEST_F(RelayStreamsEtcdTest, AWriteBeyondEtcdsGoawayGoesToTheGrpcClient) {
  PutRefusedThenLands(Refusal::kGoaway, "gone away");
}

// A write the relay could not deliver because etcd never saw it (its
// endpoint is dead: no connection) is sent through the gRPC client, which
// reaches the member: the caller sees only the answer.
TEST_F(RelayStreamsEtcdTest, AWriteEtcdNeverSawGoesToTheGrpcClient) {
  ASSERT_NO_FATAL_FAILURE(RelayTo("127.0.0.1:" + std::to_string(testutil::FreePort())));
  // The relay takes the first (it has not found etcd down yet): that one is
  // sent again; it refuses the next at once.
  for (int i = 0; i < 3; ++i) {
    const std::string key = "k" + std::to_string(i);
    absl::StatusOr<PutResponse> written = Put(key, "v");
    ASSERT_TRUE(written.ok()) << written.status();
    EXPECT_EQ(ValueOnEtcd(key), "v");
  }
}

}  // namespace
}  // namespace keel::proxy::grpcproxy
