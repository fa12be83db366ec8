#include "coalesce/watch_coalescing_backend.h"

#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "api/errors.h"
#include "common/logging.h"
#include "common/metrics.h"
#include "spdlog/sinks/ostream_sink.h"
#include "tests/testutil/text.h"
#include "tests/testutil/fake_backend.h"
#include "tests/testutil/process.h"

namespace keel::coalesce {
namespace {

using ::etcdserverpb::WatchRequest;
using ::etcdserverpb::WatchResponse;
using testutil::FakeBackend;

constexpr absl::Duration kWait = absl::Seconds(30);

// A client's observer: records responses and the end.
class Recorder final : public api::StreamObserver<WatchResponse> {
 public:
  void OnResponse(WatchResponse r) override {
    absl::MutexLock lock(&mu_);
    responses_.push_back(std::move(r));
  }
  void OnDone(absl::Status s) override {
    absl::MutexLock lock(&mu_);
    ++done_;
    status_ = std::move(s);
  }
  bool WaitForResponses(size_t n) {
    absl::MutexLock lock(&mu_);
    auto ready = [this, n]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return responses_.size() >= n; };
    return mu_.AwaitWithTimeout(absl::Condition(&ready), kWait);
  }
  bool WaitForDone() {
    absl::MutexLock lock(&mu_);
    auto ready = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return done_ > 0; };
    return mu_.AwaitWithTimeout(absl::Condition(&ready), kWait);
  }
  std::vector<WatchResponse> responses() {
    absl::MutexLock lock(&mu_);
    return responses_;
  }
  int done() {
    absl::MutexLock lock(&mu_);
    return done_;
  }
  absl::Status status() {
    absl::MutexLock lock(&mu_);
    return status_;
  }

 private:
  absl::Mutex mu_;
  std::vector<WatchResponse> responses_ ABSL_GUARDED_BY(mu_);
  int done_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Status status_ ABSL_GUARDED_BY(mu_);
};

WatchRequest Create(const std::string& key) {
  WatchRequest r;
  r.mutable_create_request()->set_key(key);
  return r;
}

WatchResponse Event(int64_t watch_id, const std::string& key, int64_t revision) {
  WatchResponse r;
  r.mutable_header()->set_revision(revision);
  r.mutable_header()->set_cluster_id(7);
  r.set_watch_id(watch_id);
  auto* e = r.add_events();
  e->mutable_kv()->set_key(key);
  e->mutable_kv()->set_mod_revision(revision);
  e->mutable_kv()->set_value("v" + std::to_string(revision));
  return r;
}

class WatchCoalescingBackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    etcdserverpb::RangeResponse probe;
    probe.mutable_header()->set_cluster_id(7);
    probe.mutable_header()->set_member_id(8);
    probe.mutable_header()->set_raft_term(9);
    probe.mutable_header()->set_revision(5);
    fake_.SetAutoReply("Range", probe);
  }

  FakeBackend fake_;
  common::MetricsRegistry metrics_;
};

TEST_F(WatchCoalescingBackendTest, TwoClientsShareOneUpstreamWatcher) {
  auto backend = std::make_unique<WatchCoalescingBackend>(fake_, &metrics_);
  Recorder r1, r2;
  auto s1 = backend->Watch(api::CallContext{}, &r1);
  auto s2 = backend->Watch(api::CallContext{}, &r2);
  s1->ReadNext();
  s1->Write(Create("a"));
  ASSERT_TRUE(r1.WaitForResponses(1));
  EXPECT_TRUE(r1.responses()[0].created());
  EXPECT_EQ(r1.responses()[0].header().revision(), 5);
  EXPECT_EQ(r1.responses()[0].header().member_id(), 8u);
  s2->Write(Create("a"));
  ASSERT_TRUE(fake_.WaitForWatches(1, kWait));
  auto up = fake_.watch(0);
  ASSERT_TRUE(up->WaitForRequests(1, kWait));
  const auto cr = up->Requests()[0].create_request();
  EXPECT_EQ(cr.key(), "a");
  EXPECT_EQ(cr.start_revision(), 6);
  EXPECT_FALSE(cr.prev_kv());  // neither client asked for it
  // Client 2 has not called ReadNext: nothing reaches it yet.
  EXPECT_TRUE(r2.responses().empty());
  WatchResponse created;
  created.set_watch_id(cr.watch_id());
  created.set_created(true);
  created.mutable_header()->set_revision(5);
  up->Push(created);
  up->Push(Event(cr.watch_id(), "a", 6));
  s1->ReadNext();
  ASSERT_TRUE(r1.WaitForResponses(2));
  EXPECT_EQ(r1.responses()[1].events(0).kv().mod_revision(), 6);
  EXPECT_EQ(r1.responses()[1].watch_id(), 0);
  s2->ReadNext();
  s2->ReadNext();
  ASSERT_TRUE(r2.WaitForResponses(2));
  EXPECT_TRUE(r2.responses()[0].created());
  EXPECT_EQ(r2.responses()[1].events(0).kv().mod_revision(), 6);
  EXPECT_EQ(fake_.watch_count(), 1u);
  // Upstream is read continuously, whatever the clients do.
  EXPECT_TRUE(up->WaitForReadNext(3, kWait));

  const std::string text = metrics_.RenderText();
  EXPECT_NE(text.find("keel_watch_client_watchers 2"), std::string::npos) << text;
  EXPECT_NE(text.find("keel_watch_upstream_watchers 1"), std::string::npos);
  EXPECT_NE(text.find("keel_watch_upstream_streams 1"), std::string::npos);
  EXPECT_NE(text.find("etcd_grpc_proxy_watchers_coalescing_total 1"), std::string::npos);
  EXPECT_NE(text.find("etcd_grpc_proxy_events_coalescing_total 1"), std::string::npos);
  EXPECT_NE(text.find("keel_watch_resyncs_total 0"), std::string::npos);

  // Client 1 leaves: its OnDone once, CANCELLED; the upstream watcher stays.
  s1->Cancel();
  ASSERT_TRUE(r1.WaitForDone());
  EXPECT_EQ(r1.status().code(), absl::StatusCode::kCancelled);
  s1.reset();
  EXPECT_EQ(r1.done(), 1);
  EXPECT_EQ(up->Requests().size(), 1u);
  // Client 2 cancels its watcher: the upstream one is cancelled, then the
  // stream (nothing left on it).
  WatchRequest cancel;
  cancel.mutable_cancel_request()->set_watch_id(0);
  s2->ReadNext();
  s2->Write(cancel);
  ASSERT_TRUE(r2.WaitForResponses(3));
  EXPECT_TRUE(r2.responses()[2].canceled());
  ASSERT_TRUE(up->WaitForRequests(2, kWait));
  EXPECT_EQ(up->Requests()[1].cancel_request().watch_id(), cr.watch_id());
  EXPECT_TRUE(up->WaitForCancel(kWait));
  EXPECT_TRUE(up->WaitForDone(kWait));
  s2.reset();
  EXPECT_EQ(r2.done(), 1);
  backend.reset();
}

TEST_F(WatchCoalescingBackendTest, UpstreamLossReopensWithoutSecondCreated) {
  auto backend = std::make_unique<WatchCoalescingBackend>(fake_, nullptr);
  Recorder r;
  auto s = backend->Watch(api::CallContext{}, &r);
  for (int i = 0; i < 10; ++i) s->ReadNext();
  s->Write(Create("a"));
  ASSERT_TRUE(fake_.WaitForWatches(1, kWait));
  auto up = fake_.watch(0);
  ASSERT_TRUE(up->WaitForRequests(1, kWait));
  const int64_t uw = up->Requests()[0].create_request().watch_id();
  WatchResponse created;
  created.set_watch_id(uw);
  created.set_created(true);
  up->Push(created);
  up->Push(Event(uw, "a", 6));
  ASSERT_TRUE(r.WaitForResponses(2));
  up->Finish(absl::UnavailableError("connection reset"));
  // A response arrived on it: reopened at once, from revision 7.
  ASSERT_TRUE(fake_.WaitForWatches(2, kWait));
  auto up2 = fake_.watch(1);
  ASSERT_TRUE(up2->WaitForRequests(1, kWait));
  const auto cr = up2->Requests()[0].create_request();
  EXPECT_EQ(cr.start_revision(), 7);
  created.set_watch_id(cr.watch_id());
  up2->Push(created);
  up2->Push(Event(cr.watch_id(), "a", 7));
  ASSERT_TRUE(r.WaitForResponses(3));
  const auto got = r.responses();
  ASSERT_EQ(got.size(), 3u);
  EXPECT_FALSE(got[2].created());
  EXPECT_EQ(got[2].events(0).kv().mod_revision(), 7);
  // A second failure before any response: reopened after a backoff.
  up2->Finish(absl::UnavailableError("connection reset"));
  ASSERT_TRUE(fake_.WaitForWatches(3, kWait));
  auto up3 = fake_.watch(2);
  up3->Finish(absl::UnavailableError("refused"));
  ASSERT_TRUE(fake_.WaitForWatches(4, kWait));
  // Destruction with the client still open: OnDone(CANCELLED) once, every
  // upstream stream cancelled and done.
  backend.reset();
  ASSERT_TRUE(r.WaitForDone());
  EXPECT_EQ(r.done(), 1);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kCancelled);
  for (size_t i = 0; i < fake_.watch_count(); ++i) EXPECT_TRUE(fake_.watch(i)->done());
  s.reset();
  EXPECT_EQ(r.done(), 1);
}

// A reopen waiting for its backoff whose watchers all left meanwhile is
// never left open upstream (nobody would ever close it).
TEST_F(WatchCoalescingBackendTest, DelayedReopenWhoseWatchersLeftIsNotLeftOpen) {
  auto backend = std::make_unique<WatchCoalescingBackend>(fake_, nullptr);
  Recorder r;
  auto s = backend->Watch(api::CallContext{}, &r);
  for (int i = 0; i < 10; ++i) s->ReadNext();
  s->Write(Create("a"));
  ASSERT_TRUE(r.WaitForResponses(1));
  const int64_t id = r.responses()[0].watch_id();
  // Streams failing before any event or progress: the backoff grows
  // (50, 100, 200, 400 ms), so the cancel below lands inside the last one.
  for (size_t n = 1; n <= 4; ++n) {
    ASSERT_TRUE(fake_.WaitForWatches(n, kWait));
    fake_.watch(n - 1)->Finish(absl::UnavailableError("refused"));
  }
  WatchRequest cancel;
  cancel.mutable_cancel_request()->set_watch_id(id);
  s->Write(cancel);
  ASSERT_TRUE(r.WaitForResponses(2));
  EXPECT_TRUE(r.responses()[1].canceled());
  // A later stream of the same identity: its (backed-off) open runs after
  // the abandoned one's would have.
  s->Write(Create("b"));
  size_t b_stream = 0;
  ASSERT_TRUE(testutil::WaitFor(
      [&] {
        for (size_t i = 0; i < fake_.watch_count(); ++i) {
          const auto reqs = fake_.watch(i)->Requests();
          if (!reqs.empty() && reqs[0].create_request().key() == "b") {
            b_stream = i;
            return true;
          }
        }
        return false;
      },
      std::chrono::seconds(30)));
  for (size_t i = 0; i < fake_.watch_count(); ++i) {
    if (i == b_stream) continue;
    EXPECT_TRUE(fake_.watch(i)->WaitForDone(kWait)) << "upstream stream " << i << " left open";
  }
}

// An upstream stream that fails right after `created` (no event, no
// progress) does not reset the reconnect backoff: the failures form one
// streak (logged once), not a string of healthy streams lost.
TEST_F(WatchCoalescingBackendTest, CreatedAloneDoesNotResetTheBackoff) {
  std::ostringstream log;
  common::SetLogSinkForTest(std::make_shared<spdlog::sinks::ostream_sink_mt>(log));
  {
    auto backend = std::make_unique<WatchCoalescingBackend>(fake_, nullptr);
    Recorder r;
    auto s = backend->Watch(api::CallContext{}, &r);
    s->ReadNext();
    s->Write(Create("a"));
    for (size_t n = 1; n <= 3; ++n) {
      ASSERT_TRUE(fake_.WaitForWatches(n, kWait));
      auto up = fake_.watch(n - 1);
      ASSERT_TRUE(up->WaitForRequests(1, kWait));
      WatchResponse created;
      created.set_watch_id(up->Requests()[0].create_request().watch_id());
      created.set_created(true);
      up->Push(created);
      up->Finish(absl::UnavailableError("reset after created"));
    }
    ASSERT_TRUE(fake_.WaitForWatches(4, kWait));
    backend.reset();
  }
  common::SetLogSinkForTest(nullptr);
  const std::string text = log.str();
  auto count = [&](std::string_view what) { return testutil::CountOf(text, what); };
  EXPECT_EQ(count("retrying with backoff"), 1u) << text;
  EXPECT_EQ(count("re-creating its watchers"), 0u) << text;
}

// A client that writes without reading is ended with RESOURCE_EXHAUSTED
// instead of growing its queues without bound.
TEST_F(WatchCoalescingBackendTest, ClientThatNeverReadsIsEnded) {
  auto backend = std::make_unique<WatchCoalescingBackend>(fake_, nullptr);
  Recorder r;
  auto s = backend->Watch(api::CallContext{}, &r);
  WatchRequest progress;
  progress.mutable_progress_request();
  for (int i = 0; i < 100000 && r.done() == 0; ++i) s->Write(progress);
  ASSERT_TRUE(r.WaitForDone());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(r.responses().empty());
  s.reset();
  EXPECT_EQ(r.done(), 1);
}

TEST_F(WatchCoalescingBackendTest, HalfClosedClientKeepsReceiving) {
  WatchCoalescingBackend backend(fake_, nullptr);
  Recorder r;
  auto s = backend.Watch(api::CallContext{}, &r);
  for (int i = 0; i < 5; ++i) s->ReadNext();
  s->Write(Create("a"));
  s->WritesDone();
  ASSERT_TRUE(fake_.WaitForWatches(1, kWait));
  auto up = fake_.watch(0);
  ASSERT_TRUE(up->WaitForRequests(1, kWait));
  const int64_t uw = up->Requests()[0].create_request().watch_id();
  up->Push(Event(uw, "a", 6));
  ASSERT_TRUE(r.WaitForResponses(2));
  EXPECT_EQ(r.done(), 0);
  s.reset();  // destroying the handle cancels
  ASSERT_TRUE(r.WaitForDone());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kCancelled);
}

TEST_F(WatchCoalescingBackendTest, NoLeaderEndsRequireLeaderClients) {
  WatchCoalescingBackend backend(fake_, nullptr);
  Recorder rl, plain;
  api::CallContext ctx;
  ctx.require_leader = true;
  auto s1 = backend.Watch(ctx, &rl);
  auto s2 = backend.Watch(api::CallContext{}, &plain);
  s1->ReadNext();
  s2->ReadNext();
  s1->Write(Create("a"));
  s2->Write(Create("a"));
  ASSERT_TRUE(fake_.WaitForWatches(2, kWait));
  std::shared_ptr<testutil::FakeWatch> rl_up;
  for (size_t i = 0; i < 2; ++i) {
    if (fake_.watch(i)->ctx().require_leader) rl_up = fake_.watch(i);
  }
  ASSERT_NE(rl_up, nullptr);
  ASSERT_TRUE(rl_up->WaitForRequests(1, kWait));
  rl_up->Finish(api::EtcdStatus(api::EtcdError::kNoLeader));
  ASSERT_TRUE(rl.WaitForDone());
  EXPECT_EQ(rl.status(), api::EtcdStatus(api::EtcdError::kNoLeader));
  EXPECT_EQ(plain.done(), 0);
  s1.reset();
  s2.reset();
}

// A probe still in flight when the decorator is destroyed completes later
// into a state that ignores it.
TEST_F(WatchCoalescingBackendTest, ProbeCompletingAfterDestructionIsIgnored) {
  fake_.ClearAuto("Range");
  auto backend = std::make_unique<WatchCoalescingBackend>(fake_, &metrics_);
  Recorder r;
  auto s = backend->Watch(api::CallContext{}, &r);
  s->ReadNext();
  s->Write(Create("a"));
  ASSERT_TRUE(fake_.WaitForUnaryCalls(1, kWait));
  EXPECT_EQ(fake_.Method(0), "Range");
  s.reset();
  ASSERT_TRUE(r.WaitForDone());
  backend.reset();
  etcdserverpb::RangeResponse probe;
  probe.mutable_header()->set_revision(9);
  fake_.Reply(0, probe);
  EXPECT_EQ(fake_.watch_count(), 0u);
  EXPECT_EQ(r.done(), 1);
  EXPECT_TRUE(r.responses().empty());
  // The metrics still render (they read the shared state).
  EXPECT_NE(metrics_.RenderText().find("keel_watch_client_watchers 0"), std::string::npos);
}

// Probes carry a bounded deadline (a hung read fails, and is then tried
// again or answered from what is known), and after destruction a completing
// probe sends no further Range for the callers that were waiting for the next
// one.
TEST_F(WatchCoalescingBackendTest, ProbesHaveADeadlineAndStopAtDestruction) {
  fake_.ClearAuto("Range");
  auto backend = std::make_unique<WatchCoalescingBackend>(fake_, nullptr);
  Recorder r1, r2;
  auto s1 = backend->Watch(api::CallContext{}, &r1);
  auto s2 = backend->Watch(api::CallContext{}, &r2);
  s1->Write(Create("a"));
  ASSERT_TRUE(fake_.WaitForUnaryCalls(1, kWait));
  EXPECT_LT(fake_.Call(0).ctx.deadline, absl::InfiniteFuture());
  // Same probe key (no token): this one waits for the next probe.
  s2->Write(Create("b"));
  backend.reset();
  ASSERT_TRUE(r1.WaitForDone());
  ASSERT_TRUE(r2.WaitForDone());
  etcdserverpb::RangeResponse probe;
  probe.mutable_header()->set_revision(9);
  fake_.Reply(0, probe);
  EXPECT_EQ(fake_.unary_count(), 1u);
  EXPECT_EQ(fake_.watch_count(), 0u);
}

// A create whose probe fails for want of a quorum is not refused: the probe
// is sent again after a backoff, and the create is answered once it succeeds.
TEST_F(WatchCoalescingBackendTest, ACreateWhoseProbeTimesOutIsProbedAgain) {
  std::ostringstream log;
  common::SetLogSinkForTest(std::make_shared<spdlog::sinks::ostream_sink_mt>(log));
  fake_.ClearAuto("Range");
  WatchCoalescingBackend backend(fake_, nullptr);
  Recorder r;
  auto s = backend.Watch(api::CallContext{}, &r);
  s->ReadNext();
  s->Write(Create("a"));
  ASSERT_TRUE(fake_.WaitForUnaryCalls(1, kWait));
  fake_.Fail(0, absl::DeadlineExceededError("context deadline exceeded"));
  ASSERT_TRUE(fake_.WaitForUnaryCalls(2, kWait));
  EXPECT_EQ(fake_.Method(1), "Range");
  fake_.Fail(1, absl::UnavailableError("etcdserver: request timed out"));
  ASSERT_TRUE(fake_.WaitForUnaryCalls(3, kWait));
  EXPECT_TRUE(r.responses().empty());
  etcdserverpb::RangeResponse probe;
  probe.mutable_header()->set_revision(9);
  fake_.Reply(2, probe);
  ASSERT_TRUE(r.WaitForResponses(1));
  EXPECT_TRUE(r.responses()[0].created());
  EXPECT_FALSE(r.responses()[0].canceled());
  EXPECT_EQ(r.responses()[0].header().revision(), 9);
  ASSERT_TRUE(fake_.WaitForWatches(1, kWait));
  ASSERT_TRUE(fake_.watch(0)->WaitForRequests(1, kWait));
  EXPECT_EQ(fake_.watch(0)->Requests()[0].create_request().start_revision(), 10);
  s.reset();
  common::SetLogSinkForTest(nullptr);
  // Said once (rate-limited), with the first failure's error.
  const std::string text = log.str();
  EXPECT_EQ(testutil::CountOf(text, "watch creates wait"), 1u) << text;
  EXPECT_NE(text.find("context deadline exceeded"), std::string::npos) << text;
}

// Destroyed while a create waits out its backoff: the retry never runs.
TEST_F(WatchCoalescingBackendTest, DestructionDuringAProbeBackoffSendsNoMoreReads) {
  fake_.ClearAuto("Range");
  auto backend = std::make_unique<WatchCoalescingBackend>(fake_, nullptr);
  Recorder r;
  auto s = backend->Watch(api::CallContext{}, &r);
  s->Write(Create("a"));
  ASSERT_TRUE(fake_.WaitForUnaryCalls(1, kWait));
  fake_.Fail(0, absl::UnavailableError("etcdserver: request timed out"));
  s.reset();
  ASSERT_TRUE(r.WaitForDone());
  backend.reset();
  EXPECT_EQ(fake_.unary_count(), 1u);
  EXPECT_EQ(fake_.watch_count(), 0u);
}

TEST_F(WatchCoalescingBackendTest, OtherCallsAreForwarded) {
  WatchCoalescingBackend backend(fake_, nullptr);
  bool done = false;
  backend.Put(api::CallContext{}, etcdserverpb::PutRequest(),
              [&](absl::StatusOr<etcdserverpb::PutResponse>) { done = true; });
  ASSERT_TRUE(fake_.WaitForUnaryCalls(1, kWait));
  EXPECT_EQ(fake_.Method(0), "Put");
  fake_.Reply(0, etcdserverpb::PutResponse());
  EXPECT_TRUE(done);
}

}  // namespace
}  // namespace keel::coalesce
