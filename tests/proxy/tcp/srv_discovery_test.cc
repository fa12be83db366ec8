#include "proxy/tcp/srv_discovery.h"

#include <string>

#include "gtest/gtest.h"

// The DNS side (c-ares against a real dnsmasq, TLS validation of targets) runs
// in tests/integration/gateway_srv_test.sh; here only the pure parts.

namespace keel::proxy::tcp {
namespace {

// A DNS message built by hand, big-endian as on the wire.
class Message {
 public:
  Message& U16(uint16_t v) {
    bytes_ += static_cast<char>(v >> 8);
    bytes_ += static_cast<char>(v & 0xff);
    return *this;
  }
  Message& U32(uint32_t v) { return U16(static_cast<uint16_t>(v >> 16)).U16(v & 0xffff); }
  // Labels of `name` ("a.b"), root-terminated.
  Message& Name(const std::string& name) {
    size_t start = 0;
    while (start < name.size()) {
      size_t dot = name.find('.', start);
      if (dot == std::string::npos) dot = name.size();
      bytes_ += static_cast<char>(dot - start);
      bytes_ += name.substr(start, dot - start);
      start = dot + 1;
    }
    bytes_ += '\0';
    return *this;
  }
  // A compression pointer to `offset`.
  Message& Pointer(uint16_t offset) { return U16(static_cast<uint16_t>(0xc000 | offset)); }
  Message& Raw(const std::string& bytes) {
    bytes_ += bytes;
    return *this;
  }
  size_t size() const { return bytes_.size(); }
  const std::string& bytes() const { return bytes_; }

 private:
  std::string bytes_;
};

constexpr uint16_t kQuestionNameOffset = 12;
// Offset of "example.test" inside the question name "_etcd-client._tcp.example.test".
constexpr uint16_t kDomainOffset = kQuestionNameOffset + 1 + 12 + 1 + 4;

// Header + question for _etcd-client._tcp.example.test SRV IN.
Message Header(uint16_t answers) {
  Message m;
  m.U16(0x1234).U16(0x8580).U16(1).U16(answers).U16(0).U16(0);
  m.Name("_etcd-client._tcp.example.test").U16(33).U16(1);
  return m;
}

// One answer record with the question name as owner.
void AddRecord(Message& m, uint16_t type, uint32_t ttl, const Message& rdata) {
  m.Pointer(kQuestionNameOffset).U16(type).U16(1).U32(ttl);
  m.U16(static_cast<uint16_t>(rdata.size())).Raw(rdata.bytes());
}

TEST(ParseSrvAnswer, RecordsWithTtlsAndCompressedTargets) {
  Message m = Header(3);
  Message srv1;
  srv1.U16(0).U16(10).U16(2379).Name("m1.example.test");
  AddRecord(m, 33, 30, srv1);
  Message a;  // an A record in the answer section is skipped
  a.U16(0x7f00).U16(0x0001);
  AddRecord(m, 1, 5, a);
  Message srv2;  // target "m2" + pointer to "example.test" in the question
  srv2.U16(1).U16(0).U16(22379).Raw(std::string("\x02m2", 3)).Pointer(kDomainOffset);
  AddRecord(m, 33, 7, srv2);

  absl::StatusOr<std::vector<SrvRecord>> r = ParseSrvAnswer(m.bytes());
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->size(), 2u);
  EXPECT_EQ((*r)[0].target, "m1.example.test");
  EXPECT_EQ((*r)[0].port, 2379);
  EXPECT_EQ((*r)[0].priority, 0);
  EXPECT_EQ((*r)[0].weight, 10);
  EXPECT_EQ((*r)[0].ttl, absl::Seconds(30));
  EXPECT_EQ((*r)[1].target, "m2.example.test");
  EXPECT_EQ((*r)[1].port, 22379);
  EXPECT_EQ((*r)[1].priority, 1);
  EXPECT_EQ((*r)[1].weight, 0);
  EXPECT_EQ((*r)[1].ttl, absl::Seconds(7));
}

TEST(ParseSrvAnswer, RootTargetAndPortZeroMeanNotAvailable) {  // RFC 2782
  Message m = Header(3);
  Message root;  // target "." (the root name: one zero byte)
  root.U16(0).U16(0).U16(2379).Raw(std::string(1, '\0'));
  AddRecord(m, 33, 30, root);
  Message no_port;
  no_port.U16(0).U16(0).U16(0).Name("m1.example.test");
  AddRecord(m, 33, 30, no_port);
  Message ok;
  ok.U16(0).U16(0).U16(2379).Name("m2.example.test");
  AddRecord(m, 33, 30, ok);

  absl::StatusOr<std::vector<SrvRecord>> r = ParseSrvAnswer(m.bytes());
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->size(), 1u);
  EXPECT_EQ((*r)[0].target, "m2.example.test");
}

TEST(ParseSrvAnswer, NoAnswersIsEmptyNotAnError) {
  absl::StatusOr<std::vector<SrvRecord>> r = ParseSrvAnswer(Header(0).bytes());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->empty());
}

TEST(ParseSrvAnswer, TruncatedMessagesAreInvalid) {
  Message m = Header(1);
  Message srv;
  srv.U16(0).U16(10).U16(2379).Name("m1.example.test");
  AddRecord(m, 33, 30, srv);
  const std::string full = m.bytes();
  ASSERT_TRUE(ParseSrvAnswer(full).ok());
  // Every proper prefix fails cleanly (no crash, no partial record).
  for (size_t len = 0; len < full.size(); ++len) {
    absl::StatusOr<std::vector<SrvRecord>> r = ParseSrvAnswer(full.substr(0, len));
    ASSERT_FALSE(r.ok()) << "length " << len;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  }
}

TEST(EtcdSrvName, SrvTargetsKeepTheTrailingDotLikeEtcd) {
  const Endpoint srv{{"m1.example.test", 2379}, 0, 0, "https"};
  EXPECT_EQ(EtcdSrvName(srv, /*with_scheme=*/true), "https://m1.example.test.:2379");
  EXPECT_EQ(EtcdSrvName(srv, /*with_scheme=*/false), "m1.example.test.:2379");
  const Endpoint fixed{{"127.0.0.1", 2379}, 0, 0, ""};
  EXPECT_EQ(EtcdSrvName(fixed, /*with_scheme=*/true), "127.0.0.1:2379");
}

}  // namespace
}  // namespace keel::proxy::tcp
