// Watch coalescing in `keel grpc-proxy start`, seen by clients nobody here
// wrote: etcdctl's watch output through the proxy is byte for byte what it
// prints against etcd directly (events, prev_kv, history, compaction cancel),
// an etcd restart under a watch loses and repeats nothing, and
// python3-etcd3's multiplexed watches each get their own key's events.

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/integration/grpc_proxy_helpers.h"
#include "tests/testutil/etcd_cluster.h"
#include "tests/testutil/process.h"

namespace keel::testutil {
namespace {

using std::chrono::seconds;

class WatchProxyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string error;
    ASSERT_TRUE(etcd_.Start(&error)) << error;
    proxy_ = std::make_unique<GrpcProxyProcess>(
        dir_, std::vector<std::string>{"--endpoints=" + etcd_.ClientUrl(0)});
    ASSERT_TRUE(proxy_->Ready()) << proxy_->Log();
  }

  // etcd's current revision.
  int64_t Revision() {
    CommandResult r = EtcdCluster::Etcdctl(etcd_.ClientAddr(0), {"get", "nokey", "-w", "json"});
    const size_t pos = r.out.find("\"revision\":");
    if (pos == std::string::npos) {
      ADD_FAILURE() << r.out << r.err;
      return 0;
    }
    return std::stoll(r.out.substr(pos + 11));
  }

  void Etcdctl(std::vector<std::string> args) {
    CommandResult r = EtcdCluster::Etcdctl(etcd_.ClientAddr(0), std::move(args));
    ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  }

  // `etcdctl watch args...` against `endpoint`, in the background.
  std::unique_ptr<Subprocess> Watch(const std::string& endpoint, std::vector<std::string> args,
                                    const std::string& name) {
    std::vector<std::string> argv = {"etcdctl", "--endpoints=" + endpoint, "watch"};
    for (auto& a : args) argv.push_back(std::move(a));
    return std::make_unique<Subprocess>(argv, dir_.File(name + ".log"),
                                        std::map<std::string, std::string>{{"ETCDCTL_API", "3"}});
  }

  TempDir dir_;
  EtcdCluster etcd_;
  std::unique_ptr<GrpcProxyProcess> proxy_;
};

// The same etcdctl watches directly and through the proxy print the same.
TEST_F(WatchProxyTest, EtcdctlWatchPrintsWhatEtcdPrints) {
  Etcdctl({"put", "wa", "0"});
  Etcdctl({"put", "wb", "0"});
  // etcdctl prints nothing on `created`, so a "from now" watch could start
  // before or after a write: every watch starts at an explicit revision.
  const std::string next = std::to_string(Revision() + 1);
  const std::vector<std::vector<std::string>> watches = {
      {"--prefix", "w", "--rev=" + next},
      {"--prefix", "w", "--prev-kv", "--rev=" + next},
      {"wa", "--rev=" + next},
      {"--prefix", "w", "--rev=1"},
      {"wa", "wc", "--rev=" + next}};
  std::vector<std::unique_ptr<Subprocess>> direct, proxied;
  for (size_t i = 0; i < watches.size(); ++i) {
    direct.push_back(Watch(etcd_.ClientAddr(0), watches[i], "direct" + std::to_string(i)));
    proxied.push_back(Watch(proxy_->addr(), watches[i], "proxied" + std::to_string(i)));
  }
  Etcdctl({"put", "wb", "1"});
  Etcdctl({"del", "wa"});
  Etcdctl({"put", "wc", "2"});
  Etcdctl({"del", "--prefix", "w"});
  Etcdctl({"put", "wa", "end"});
  for (size_t i = 0; i < watches.size(); ++i) {
    ASSERT_TRUE(direct[i]->WaitForLog("end", seconds(30))) << direct[i]->Log();
    ASSERT_TRUE(proxied[i]->WaitForLog("end", seconds(30))) << proxied[i]->Log();
    EXPECT_EQ(proxied[i]->Log(), direct[i]->Log()) << "etcdctl watch " << watches[i][0];
  }
}

// Scenario 27 with etcdctl: a compacted start revision is cancelled with
// etcd's message, through the proxy as directly.
TEST_F(WatchProxyTest, EtcdctlCompactedWatchFailsLikeEtcd) {
  for (int i = 0; i < 4; ++i) Etcdctl({"put", "cw", std::to_string(i)});
  Etcdctl({"compact", "4"});
  CommandResult want =
      RunCommand({"etcdctl", "--endpoints=" + etcd_.ClientAddr(0), "watch", "cw", "--rev=2"},
                 {{"ETCDCTL_API", "3"}}, seconds(30));
  CommandResult got =
      RunCommand({"etcdctl", "--endpoints=" + proxy_->addr(), "watch", "cw", "--rev=2"},
                 {{"ETCDCTL_API", "3"}}, seconds(30));
  EXPECT_NE(want.err.find("required revision has been compacted"), std::string::npos) << want.err;
  EXPECT_EQ(got.exit_code, want.exit_code);
  EXPECT_EQ(got.out, want.out);
  EXPECT_EQ(got.err, want.err);
}

// Scenario 31 with etcdctl: etcd restarts under a watch through the proxy;
// every event is printed exactly once.
TEST_F(WatchProxyTest, EtcdRestartUnderEtcdctlWatch) {
  auto w = Watch(proxy_->addr(), {"--prefix", "rw", "--rev=" + std::to_string(Revision() + 1)},
                 "restart");
  Etcdctl({"put", "rw", "ready"});
  ASSERT_TRUE(w->WaitForLog("ready", seconds(30))) << w->Log();
  Etcdctl({"put", "rw", "before"});
  ASSERT_TRUE(w->WaitForLog("before", seconds(30))) << w->Log();
  etcd_.Stop(0);
  etcd_.Restart(0);
  ASSERT_TRUE(etcd_.WaitWritable(0));
  Etcdctl({"put", "rw", "after"});
  Etcdctl({"put", "rw", "last"});
  ASSERT_TRUE(w->WaitForLog("last", seconds(30))) << w->Log();
  EXPECT_EQ(w->Log(), "PUT\nrw\nready\nPUT\nrw\nbefore\nPUT\nrw\nafter\nPUT\nrw\nlast\n");
  EXPECT_TRUE(w->Running());
}

// python3-etcd3 binds watch replies to its watches over one stream: each of
// its callbacks must get only its own key's events (etcd #21881's victims).
TEST_F(WatchProxyTest, Python3Etcd3MultiplexedWatches) {
  const std::string script = R"PY(
import sys, threading, etcd3
host, port = sys.argv[1].split(':')
c = etcd3.client(host=host, port=int(port))
got = {'pa': [], 'pb': []}
done = threading.Event()
def cb(key):
    def f(resp):
        for e in resp.events:
            got[key].append(e.key.decode() + '=' + e.value.decode())
            if e.value == b'end':
                done.set()
    return f
ids = [c.add_watch_callback('pa', cb('pa')), c.add_watch_callback('pb', cb('pb'))]
direct = etcd3.client(host=host, port=int(sys.argv[2]))
for v in ['1', '2']:
    direct.put('pa', 'a' + v)
    direct.put('pb', 'b' + v)
direct.put('pb', 'end')
if not done.wait(30):
    print('timeout', got)
    sys.exit(1)
print('pa', ','.join(got['pa']))
print('pb', ','.join(got['pb']))
for i in ids:
    c.cancel_watch(i)
c.close()
direct.close()
)PY";
  const std::string path = dir_.File("multiplex.py");
  {
    FILE* f = fopen(path.c_str(), "w");
    ASSERT_NE(f, nullptr);
    fputs(script.c_str(), f);
    fclose(f);
  }
  CommandResult r =
      RunCommand({"/usr/bin/python3", path, proxy_->addr(), std::to_string(etcd_.ClientPort(0))},
                 {}, seconds(60));
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("pa pa=a1,pa=a2\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("pb pb=b1,pb=b2,pb=end\n"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace keel::testutil
