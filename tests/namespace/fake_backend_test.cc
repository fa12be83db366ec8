// Tests of tests/testutil/fake_backend.h itself, so the layers tested over it
// can trust it.

#include "tests/testutil/fake_backend.h"

#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace keel::testutil {
namespace {

using ::etcdserverpb::PutRequest;
using ::etcdserverpb::PutResponse;
using ::etcdserverpb::RangeRequest;
using ::etcdserverpb::RangeResponse;
using ::etcdserverpb::WatchRequest;
using ::etcdserverpb::WatchResponse;

template <class T>
struct Result {
  std::optional<absl::StatusOr<T>> value;
  api::Done<T> Callback() {
    return [this](absl::StatusOr<T> r) { value = std::move(r); };
  }
};

TEST(FakeBackendTest, RecordsUnaryCallsAndRepliesInAnyOrder) {
  FakeBackend fake;
  api::CallContext ctx;
  ctx.token = "tok";
  Result<RangeResponse> range;
  Result<PutResponse> put;
  RangeRequest rr;
  rr.set_key("k");
  fake.Range(ctx, rr, range.Callback());
  PutRequest pr;
  pr.set_key("p");
  fake.Put(api::CallContext{}, pr, put.Callback());

  ASSERT_EQ(fake.unary_count(), 2u);
  EXPECT_EQ(fake.Methods(), (std::vector<std::string>{"Range", "Put"}));
  EXPECT_EQ(fake.CallsTo("Put"), std::vector<size_t>{1});
  EXPECT_EQ(fake.Call(0).ctx.token, "tok");
  EXPECT_EQ(fake.Request<RangeRequest>(0).key(), "k");
  EXPECT_EQ(fake.Request<PutRequest>(1).key(), "p");
  EXPECT_FALSE(range.value.has_value());

  PutResponse presp;
  presp.mutable_header()->set_revision(7);
  fake.Reply(1, presp);
  ASSERT_TRUE(put.value.has_value());
  ASSERT_TRUE(put.value->ok());
  EXPECT_EQ((*put.value)->header().revision(), 7);
  EXPECT_TRUE(fake.Call(1).completed);
  EXPECT_FALSE(fake.Call(0).completed);

  fake.Fail(0, absl::UnavailableError("down"));
  ASSERT_TRUE(range.value.has_value());
  EXPECT_EQ(range.value->status().code(), absl::StatusCode::kUnavailable);
}

TEST(FakeBackendTest, AutoReplyAndFailAllPending) {
  FakeBackend fake;
  RangeResponse canned;
  canned.set_count(3);
  fake.SetAutoReply("Range", canned);
  Result<RangeResponse> a;
  fake.Range(api::CallContext{}, RangeRequest{}, a.Callback());
  ASSERT_TRUE(a.value.has_value());
  EXPECT_EQ((*a.value)->count(), 3);

  fake.SetAutoFail("Range", absl::NotFoundError("x"));
  Result<RangeResponse> b;
  fake.Range(api::CallContext{}, RangeRequest{}, b.Callback());
  ASSERT_TRUE(b.value.has_value());
  EXPECT_EQ(b.value->status().code(), absl::StatusCode::kNotFound);

  fake.ClearAuto("Range");
  Result<RangeResponse> c;
  Result<PutResponse> d;
  fake.Range(api::CallContext{}, RangeRequest{}, c.Callback());
  fake.Put(api::CallContext{}, PutRequest{}, d.Callback());
  EXPECT_FALSE(c.value.has_value());
  fake.FailAllPending(absl::CancelledError("bye"));
  ASSERT_TRUE(c.value.has_value() && d.value.has_value());
  EXPECT_EQ(c.value->status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(d.value->status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(fake.unary_count(), 4u);
}

TEST(FakeBackendTest, WaitsForCallsFromAnotherThread) {
  FakeBackend fake;
  Result<RangeResponse> r;
  std::thread t([&] { fake.Range(api::CallContext{}, RangeRequest{}, r.Callback()); });
  EXPECT_TRUE(fake.WaitForUnaryCalls(1, absl::Seconds(60)));
  t.join();
  fake.Reply(0, RangeResponse{});
  ASSERT_TRUE(r.value.has_value());
  EXPECT_TRUE(r.value->ok());
}

// Records what a stream delivers; ReadNext again after each response when
// `auto_read` is set.
class Recorder : public api::StreamObserver<WatchResponse> {
 public:
  void OnResponse(WatchResponse r) override {
    responses.push_back(std::move(r));
    if (auto_read && handle != nullptr) handle->ReadNext();
  }
  void OnDone(absl::Status s) override {
    ++done_calls;
    status = std::move(s);
  }
  std::vector<WatchResponse> responses;
  std::optional<absl::Status> status;
  int done_calls = 0;
  bool auto_read = false;
  api::WatchStream* handle = nullptr;
};

TEST(FakeBackendTest, StreamRespectsReadNextCredits) {
  FakeBackend fake;
  Recorder rec;
  std::unique_ptr<api::WatchStream> h = fake.Watch(api::CallContext{}, &rec);
  ASSERT_EQ(fake.watch_count(), 1u);
  std::shared_ptr<FakeWatch> w = fake.watch(0);
  WatchRequest req;
  req.mutable_create_request()->set_key("a");
  h->Write(req);
  ASSERT_EQ(w->Requests().size(), 1u);
  EXPECT_EQ(w->Requests()[0].create_request().key(), "a");

  WatchResponse r1;
  r1.set_watch_id(1);
  WatchResponse r2;
  r2.set_watch_id(2);
  w->Push(r1);
  w->Push(r2);
  EXPECT_TRUE(rec.responses.empty());
  EXPECT_EQ(w->queued(), 2u);
  h->ReadNext();
  ASSERT_EQ(rec.responses.size(), 1u);
  EXPECT_EQ(rec.responses[0].watch_id(), 1);
  w->Finish(absl::OkStatus());
  EXPECT_FALSE(rec.status.has_value());  // r2 still undelivered
  h->ReadNext();
  ASSERT_EQ(rec.responses.size(), 2u);
  ASSERT_TRUE(rec.status.has_value());
  EXPECT_TRUE(rec.status->ok());
  EXPECT_TRUE(w->done());
  h->WritesDone();
  EXPECT_TRUE(w->writes_done());
  h.reset();
  EXPECT_TRUE(w->handle_released());
  EXPECT_EQ(rec.done_calls, 1);
}

TEST(FakeBackendTest, ReadNextInsideOnResponseDoesNotRecurse) {
  FakeBackend fake;
  Recorder rec;
  rec.auto_read = true;
  std::unique_ptr<api::WatchStream> h = fake.Watch(api::CallContext{}, &rec);
  rec.handle = h.get();
  std::shared_ptr<FakeWatch> w = fake.watch(0);
  for (int i = 0; i < 5; ++i) w->Push(WatchResponse{});
  h->ReadNext();
  EXPECT_EQ(rec.responses.size(), 5u);
  EXPECT_EQ(w->credits(), 1);
}

TEST(FakeBackendTest, CancelAndHandleDestructionEndTheStreamOnce) {
  FakeBackend fake;
  Recorder rec;
  std::unique_ptr<api::WatchStream> h = fake.Watch(api::CallContext{}, &rec);
  std::shared_ptr<FakeWatch> w = fake.watch(0);
  w->Push(WatchResponse{});
  h->Cancel();
  EXPECT_TRUE(w->cancelled());
  ASSERT_TRUE(rec.status.has_value());
  EXPECT_EQ(rec.status->code(), absl::StatusCode::kCancelled);
  EXPECT_TRUE(rec.responses.empty());
  h.reset();
  EXPECT_EQ(rec.done_calls, 1);

  Recorder rec2;
  std::unique_ptr<api::WatchStream> h2 = fake.Watch(api::CallContext{}, &rec2);
  h2.reset();
  EXPECT_TRUE(fake.watch(1)->cancelled());
  EXPECT_EQ(rec2.done_calls, 1);
}

TEST(FakeBackendTest, FinishAllStreamsEndsEveryOpenStream) {
  FakeBackend fake;
  Recorder a;
  Recorder b;
  std::unique_ptr<api::WatchStream> ha = fake.Watch(api::CallContext{}, &a);
  std::unique_ptr<api::WatchStream> hb = fake.Watch(api::CallContext{}, &b);
  ha->Cancel();
  fake.FinishAllStreams(absl::UnavailableError("shutting down"));
  ASSERT_TRUE(a.status.has_value() && b.status.has_value());
  EXPECT_EQ(a.status->code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(b.status->code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(a.done_calls + b.done_calls, 2);
}

TEST(FakeBackendTest, ReadStreamsRecordTheirRequest) {
  FakeBackend fake;
  struct Obs : api::StreamObserver<::v3electionpb::LeaderResponse> {
    void OnResponse(::v3electionpb::LeaderResponse r) override { got.push_back(r); }
    void OnDone(absl::Status s) override { status = s; }
    std::vector<::v3electionpb::LeaderResponse> got;
    std::optional<absl::Status> status;
  } obs;
  ::v3electionpb::LeaderRequest req;
  req.set_name("e");
  std::unique_ptr<api::ReadStream> h = fake.Observe(api::CallContext{}, req, &obs);
  ASSERT_TRUE(fake.WaitForObserves(1, absl::Seconds(60)));
  std::shared_ptr<FakeObserve> o = fake.observe(0);
  ASSERT_EQ(o->Requests().size(), 1u);
  EXPECT_EQ(o->Requests()[0].name(), "e");
  h->ReadNext();
  o->Push(::v3electionpb::LeaderResponse{});
  EXPECT_EQ(obs.got.size(), 1u);
  o->Finish(absl::UnavailableError("gone"));
  ASSERT_TRUE(obs.status.has_value());
  EXPECT_EQ(obs.status->code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace keel::testutil
