// The frame relay's local unary calls (proxy/grpc/local_call.h) over a
// FakeBackend chain: a call that must see a layer (here every keyed call,
// the routes being those of a namespaced proxy) reaches the chain's Backend
// with the client's metadata, its answer and status reach the client, a
// client that gives up fires the call's CancelSignal, and Stop() reports a
// call the chain never ended, so that the chain is not destroyed under it;
// a stream's queued responses and its end reach the client in order;
// connections are spread over the relay's loops; a call waiting on the
// chain's own stream to etcd ends when Stop() closes its client.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "api/etcdserverpb/rpc.grpc.pb.h"
#include "common/metrics.h"
#include "grpcpp/create_channel_posix.h"
#include "gtest/gtest.h"
#include "proxy/grpc/frame_relay.h"
#include "proxy/grpc/relay_routes.h"
#include "proxy/grpc/relay_streams.h"
#include "tests/testutil/fake_backend.h"

namespace keel::proxy::grpcproxy {
namespace {

using ::keel::testutil::FakeBackend;

constexpr absl::Duration kWait = absl::Seconds(30);

class FrameRelayLocalTest : public ::testing::Test {
 protected:
  void SetUp() override {
    routes_ = std::make_unique<RelayRoutes>(RelayRouteOptions{/*cache=*/false, /*namespaced=*/true},
                                            &metrics_);
    relay_ = std::make_unique<FrameRelay>(OptionsFor(&fake_));
    ASSERT_TRUE(relay_->Start().ok());
    int fds[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
    relay_->Serve(fds[0]);
    kv_ = etcdserverpb::KV::NewStub(grpc::CreateInsecureChannelFromFd("relay", fds[1]));
  }
  // A relay serving every call from `chain`.
  FrameRelayOptions OptionsFor(api::Backend* chain) {
    FrameRelayOptions options;
    options.routes = routes_.get();
    // Nothing here is passed through; a refused loopback port if it were.
    options.upstream_endpoint = [] { return std::string("127.0.0.1:1"); };
    options.serve_internal = [](int fd) { ::close(fd); };
    options.chain = chain;
    options.metrics = &metrics_;
    return options;
  }
  void TearDown() override {
    if (relay_ != nullptr) relay_->Stop(absl::ZeroDuration());
    fake_.FailAllPending(absl::CancelledError("test over"));
  }

  common::MetricsRegistry metrics_;
  FakeBackend fake_;
  std::unique_ptr<RelayRoutes> routes_;
  std::unique_ptr<FrameRelay> relay_;
  std::unique_ptr<etcdserverpb::KV::Stub> kv_;
};

TEST_F(FrameRelayLocalTest, CallReachesTheChainWithItsMetadataAndGetsItsAnswer) {
  grpc::ClientContext ctx;
  ctx.AddMetadata("token", "t0k3n");
  ctx.AddMetadata("hasleader", "true");
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  etcdserverpb::RangeRequest req;
  req.set_key("k");
  etcdserverpb::RangeResponse resp;
  grpc::Status status;
  std::thread client([&] { status = kv_->Range(&ctx, req, &resp); });
  ASSERT_TRUE(fake_.WaitForUnaryCalls(1, kWait));
  FakeBackend::UnaryCall call = fake_.Call(0);
  EXPECT_EQ(call.method, "Range");
  EXPECT_EQ(call.ctx.token, "t0k3n");
  EXPECT_TRUE(call.ctx.require_leader);
  EXPECT_LT(call.ctx.deadline, absl::Now() + absl::Seconds(31));
  EXPECT_EQ(fake_.Request<etcdserverpb::RangeRequest>(0).key(), "k");
  etcdserverpb::RangeResponse answer;
  answer.mutable_header()->set_revision(7);
  answer.set_count(3);
  fake_.Reply(0, answer);
  client.join();
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(resp.header().revision(), 7);
  EXPECT_EQ(resp.count(), 3);

  // An error status reaches the client as the front would map it.
  grpc::ClientContext ctx2;
  std::thread failing([&] { status = kv_->Range(&ctx2, req, &resp); });
  ASSERT_TRUE(fake_.WaitForUnaryCalls(2, kWait));
  fake_.Fail(1, absl::FailedPreconditionError("etcdserver: no leader"));
  failing.join();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(status.error_message(), "etcdserver: no leader");
}

TEST_F(FrameRelayLocalTest, ClientThatGivesUpFiresTheCallsCancelSignal) {
  grpc::ClientContext ctx;
  etcdserverpb::PutRequest req;
  req.set_key("k");
  etcdserverpb::PutResponse resp;
  grpc::Status status;
  std::thread client([&] { status = kv_->Put(&ctx, req, &resp); });
  ASSERT_TRUE(fake_.WaitForUnaryCalls(1, kWait));
  std::shared_ptr<api::CancelSignal> cancel = fake_.Call(0).ctx.cancel;
  ASSERT_NE(cancel, nullptr);
  EXPECT_FALSE(cancel->cancelled());
  ctx.TryCancel();
  client.join();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::CANCELLED);
  for (absl::Time end = absl::Now() + kWait; !cancel->cancelled() && absl::Now() < end;) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_TRUE(cancel->cancelled());
  // The chain's late answer is taken and dropped.
  fake_.Fail(0, absl::CancelledError("cancelled"));
  EXPECT_TRUE(relay_->Stop(absl::ZeroDuration()));
}

// A call the chain never ends (a hung member) outlives the relay's drain:
// Stop() says so (the proxy then leaves its chain in place).
TEST_F(FrameRelayLocalTest, StopReportsACallTheChainNeverEnded) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  etcdserverpb::RangeRequest req;
  req.set_key("k");
  etcdserverpb::RangeResponse resp;
  std::thread client([&] { (void)kv_->Range(&ctx, req, &resp); });
  ASSERT_TRUE(fake_.WaitForUnaryCalls(1, kWait));
  EXPECT_FALSE(relay_->Stop(absl::ZeroDuration()));
  client.join();
  fake_.FailAllPending(absl::CancelledError("test over"));
}

// Streams whose backends have many responses queued, then their end: the
// relay takes each stream's responses one after the other, across rounds
// and its per-stream backlog bound, yet every stream's responses and end
// reach its client in order, and no backend is asked for more than one
// response at a time (what taking the next one out of turn relies on).
TEST_F(FrameRelayLocalTest, StreamResponsesQueuedAtTheBackendAndTheirEndArriveInOrder) {
  int fds[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
  relay_->Serve(fds[0]);
  auto watch = etcdserverpb::Watch::NewStub(grpc::CreateInsecureChannelFromFd("relay", fds[1]));
  constexpr int kStreams = 4;
  constexpr int kResponses = 300;  // of ~300 bytes: more than a round and a backlog each
  std::vector<grpc::ClientContext> contexts(kStreams);
  std::vector<std::unique_ptr<
      grpc::ClientReaderWriter<etcdserverpb::WatchRequest, etcdserverpb::WatchResponse>>>
      streams;
  for (int i = 0; i < kStreams; ++i) {
    contexts[i].set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    streams.push_back(watch->Watch(&contexts[i]));
    etcdserverpb::WatchRequest create;
    create.mutable_create_request()->set_key("k");
    ASSERT_TRUE(streams[i]->Write(create));
    ASSERT_TRUE(fake_.WaitForWatches(i + 1, kWait));  // so fake_.watch(i) is stream i's
  }
  for (int r = 0; r < kResponses; ++r) {
    for (int i = 0; i < kStreams; ++i) {
      etcdserverpb::WatchResponse response;
      response.set_watch_id(r);
      auto* kv = response.add_events()->mutable_kv();
      kv->set_key("s" + std::to_string(i) + "-" + std::to_string(r));
      kv->set_value(std::string(256, 'v'));
      fake_.watch(i)->Push(response);
    }
  }
  for (int i = 0; i < kStreams; ++i) fake_.watch(i)->Finish(absl::OkStatus());
  std::vector<int> in_order(kStreams, 0);
  std::vector<grpc::Status> statuses(kStreams);
  std::vector<std::thread> readers;
  for (int i = 0; i < kStreams; ++i) {
    readers.emplace_back([&, i] {
      etcdserverpb::WatchResponse r;
      while (streams[i]->Read(&r)) {
        const std::string want = "s" + std::to_string(i) + "-" + std::to_string(in_order[i]);
        if (r.watch_id() != in_order[i] || r.events(0).kv().key() != want) break;
        ++in_order[i];
      }
      statuses[i] = streams[i]->Finish();
    });
  }
  for (std::thread& t : readers) t.join();
  for (int i = 0; i < kStreams; ++i) {
    EXPECT_EQ(in_order[i], kResponses) << "stream " << i;
    EXPECT_TRUE(statuses[i].ok()) << "stream " << i << ": " << statuses[i].error_message();
    EXPECT_EQ(fake_.watch(i)->max_credits(), 1) << "stream " << i;
  }
}

// Client connections are handed to the loops in turn, so that a proxy uses
// more than one core: six connections over three loops reach the chain from
// three threads, every call gets its own answer, and Stop() hears from every
// loop (a hung call on the first loop is reported, whatever the others say).
TEST_F(FrameRelayLocalTest, ConnectionsAreSpreadOverTheLoops) {
  FakeBackend fake;
  FrameRelayOptions options = OptionsFor(&fake);
  options.loops = 3;
  FrameRelay relay(std::move(options));
  ASSERT_TRUE(relay.Start().ok());
  constexpr int kConns = 6;
  std::vector<std::unique_ptr<etcdserverpb::KV::Stub>> stubs;
  for (int i = 0; i < kConns; ++i) {
    int fds[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
    relay.Serve(fds[0]);
    stubs.push_back(etcdserverpb::KV::NewStub(grpc::CreateInsecureChannelFromFd("relay", fds[1])));
  }
  std::vector<etcdserverpb::RangeResponse> responses(kConns);
  std::vector<grpc::Status> statuses(kConns);
  std::vector<grpc::ClientContext> contexts(kConns);
  std::vector<std::thread> clients;
  bool all_arrived = true;
  for (int i = 0; i < kConns && all_arrived; ++i) {
    contexts[i].set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    etcdserverpb::RangeRequest req;
    req.set_key("k" + std::to_string(i));
    clients.emplace_back(
        [&, i, req] { statuses[i] = stubs[i]->Range(&contexts[i], req, &responses[i]); });
    // One call at a time, so that call i is the one of connection i.
    all_arrived = fake.WaitForUnaryCalls(i + 1, kWait);
  }
  EXPECT_TRUE(all_arrived);
  if (all_arrived) {
    std::set<std::thread::id> threads;
    for (int i = 0; i < kConns; ++i) threads.insert(fake.Call(i).thread);
    EXPECT_EQ(threads.size(), 3u);
    // Each connection's answer reaches that connection; the first call (on
    // the first loop) is left hanging.
    for (int i = 1; i < kConns; ++i) {
      etcdserverpb::RangeResponse answer;
      answer.set_count(100 + i);
      fake.Reply(i, answer);
    }
    for (int i = 1; i < kConns; ++i) {
      clients[i].join();
      EXPECT_TRUE(statuses[i].ok()) << statuses[i].error_message();
      EXPECT_EQ(responses[i].count(), 100 + i);
    }
  }
  EXPECT_FALSE(relay.Stop(absl::ZeroDuration()));
  fake.FailAllPending(absl::CancelledError("test over"));
  for (std::thread& t : clients) {
    if (t.joinable()) t.join();
  }
}

// A call the relay serves against the chain may wait on the chain's own
// stream to etcd on the same loop (a namespaced Put over the relay; here the
// "etcd" accepts the connection and never answers). When Stop() closes the
// client, the call's cancel resets that stream and the call ends, so Stop()
// finds every call over (the loop carries out its own streams' commands
// while it waits for its calls).
TEST_F(FrameRelayLocalTest, StopEndsACallWaitingOnItsOwnStreamToEtcd) {
  const int silent = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(silent, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(::bind(silent, reinterpret_cast<sockaddr*>(&addr), len), 0);
  ASSERT_EQ(::listen(silent, 4), 0);
  ASSERT_EQ(::getsockname(silent, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  const std::string etcd = "127.0.0.1:" + std::to_string(ntohs(addr.sin_port));

  RelayStreamsBackend chain(fake_);  // the relay's own streams to etcd
  FrameRelayOptions options = OptionsFor(&chain);
  options.upstream_endpoint = [etcd] { return etcd; };
  options.loops = 1;
  FrameRelay relay(std::move(options));
  chain.Attach(&relay);
  ASSERT_TRUE(relay.Start().ok());
  int fds[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
  relay.Serve(fds[0]);
  auto kv = etcdserverpb::KV::NewStub(grpc::CreateInsecureChannelFromFd("relay", fds[1]));

  grpc::ClientContext ctx;
  etcdserverpb::PutRequest req;
  req.set_key("k");
  etcdserverpb::PutResponse resp;
  std::thread client([&] { (void)kv->Put(&ctx, req, &resp); });
  common::Gauge* chain_streams = metrics_.GetGauge("keel_grpc_relay_chain_streams", "");
  for (absl::Time end = absl::Now() + kWait; chain_streams->Value() == 0 && absl::Now() < end;) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_EQ(chain_streams->Value(), 1);  // the Put is on its way to the silent "etcd"
  EXPECT_TRUE(relay.Stop(absl::ZeroDuration()));
  client.join();
  EXPECT_EQ(chain_streams->Value(), 0);
  EXPECT_EQ(fake_.unary_count(), 0u);  // not sent again through the gRPC client
  chain.Detach();
  ::close(silent);
}

}  // namespace
}  // namespace keel::proxy::grpcproxy
