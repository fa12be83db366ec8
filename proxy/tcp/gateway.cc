#include "proxy/tcp/gateway.h"

#include <errno.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/cpus.h"
#include "common/duration.h"
#include "common/logging.h"
#include "proxy/tcp/event_loop.h"
#include "proxy/tcp/monitor.h"
#include "proxy/tcp/sockets.h"
#include "proxy/tcp/worker.h"

namespace keel::proxy::tcp {
namespace {

void SetPort(SockAddr& addr, int port) {
  if (addr.storage.ss_family == AF_INET) {
    reinterpret_cast<sockaddr_in*>(&addr.storage)->sin_port = htons(static_cast<uint16_t>(port));
  } else {
    reinterpret_cast<sockaddr_in6*>(&addr.storage)->sin6_port = htons(static_cast<uint16_t>(port));
  }
}

int PortOf(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return 0;
  if (ss.ss_family == AF_INET) return ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  return ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
}

// SO_REUSEPORT would let us share the port with another SO_REUSEPORT
// process, silently splitting its traffic. A plain bind first fails like
// etcd's gateway does when anything already listens there.
absl::Status CheckPortFree(const SockAddr& addr) {
  UniqueFd fd(::socket(addr.storage.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return GoErrnoStatus(errno, "socket");
  const int one = 1;
  setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (::bind(fd.get(), addr.get(), addr.len) != 0) {
    return GoErrnoStatus(errno, absl::StrCat("listen tcp ", addr.ToString(), ": bind"));
  }
  return absl::OkStatus();
}

}  // namespace

Gateway::Gateway(GatewayOptions options) : options_(std::move(options)) {}

Gateway::~Gateway() {
  options_.drain_timeout = absl::ZeroDuration();
  Drain();
  StopThreads();
}

int Gateway::metrics_port() const { return http_ == nullptr ? 0 : http_->port(); }

absl::Status Gateway::Start() {
  logger_ = common::Logger("gateway");
  absl::StatusOr<ResolvedEndpoints> resolved = ResolveEndpoints(options_.endpoints);
  if (!resolved.ok()) return resolved.status();
  if (resolved->endpoints.empty()) return absl::InvalidArgumentError("no endpoints");

  int loops = options_.loops;
  if (loops <= 0) loops = common::UsableCpus();

  common::AddProcessMetrics(metrics_);
  WorkerShared shared;
  shared.dial_timeout = options_.dial_timeout;
  shared.tickets = &tickets_;
  shared.connections_total = metrics_.GetCounter("keel_gateway_connections_total",
                                                 "Client connections accepted by the gateway.");
  shared.active_connections =
      metrics_.GetGauge("keel_gateway_active_connections", "Client connections currently open.");

  absl::StatusOr<std::unique_ptr<EventLoop>> monitor_loop = EventLoop::Create("monitor");
  if (!monitor_loop.ok()) return monitor_loop.status();
  monitor_loop_ = *std::move(monitor_loop);
  MonitorOptions mo;
  mo.retry_delay = options_.retry_delay;
  mo.dial_timeout = options_.dial_timeout;
  mo.health_check_interval = options_.health_check_interval;
  mo.refresh_srv = resolved->from_srv;
  mo.srv_ttl = resolved->srv_ttl;
  mo.config = options_.endpoints;
  mo.seed = static_cast<uint64_t>(absl::ToUnixNanos(absl::Now()));
  nlohmann::json endpoint_names = nlohmann::json::array();
  for (const Endpoint& e : resolved->endpoints) endpoint_names.push_back(e.addr.ToString());
  monitor_ = std::make_unique<Monitor>(
      *monitor_loop_, metrics_, logger_, std::move(mo), resolved->endpoints,
      [this](std::shared_ptr<const Routes> routes) {
        for (size_t i = 0; i < loops_.size(); ++i) {
          loops_[i]->Post([w = workers_[i].get(), routes]() { w->SetRoutes(routes); });
        }
      });
  shared.observer = monitor_.get();

  for (int i = 0; i < loops; ++i) {
    absl::StatusOr<std::unique_ptr<EventLoop>> loop = EventLoop::Create(absl::StrCat("loop-", i));
    if (!loop.ok()) return loop.status();
    loops_.push_back(*std::move(loop));
    workers_.push_back(std::make_unique<Worker>(*loops_.back(), shared, mo.seed + i + 1));
  }
  if (absl::Status s = Listen(); !s.ok()) return s;

  std::shared_ptr<const Routes> routes = monitor_->InitialRoutes();
  for (auto& w : workers_) w->SetRoutes(routes);

  if (options_.metrics_addr.has_value()) {
    http_ = std::make_unique<common::HttpServer>();
    http_->Handle("/metrics", [this](const common::HttpRequest&) {
      common::HttpResponse r;
      r.content_type = "text/plain; version=0.0.4; charset=utf-8";
      r.body = metrics_.RenderText();
      return r;
    });
    http_->Handle("/health", [this](const common::HttpRequest&) {
      common::HttpResponse r;
      r.content_type = "application/json";
      const bool up = monitor_->AnyActive();
      r.status = up ? 200 : 503;
      r.body = up ? R"({"health":"true"})" : R"({"health":"false"})";
      return r;
    });
    if (absl::Status s = http_->Start(*options_.metrics_addr); !s.ok()) {
      http_.reset();
      return s;
    }
  }

  monitor_loop_->Start();
  for (auto& loop : loops_) loop->Start();
  monitor_->Start();
  running_ = true;
  nlohmann::json fields = {{"endpoints", endpoint_names}};
  common::LogEvent(*logger_, spdlog::level::info, "ready to proxy client requests", fields);
  if (http_ != nullptr) {
    common::LogEvent(
        *logger_, spdlog::level::info, "serving metrics and health",
        {{"address", absl::StrCat("http://", options_.metrics_addr->host, ":", http_->port())}});
  }
  return absl::OkStatus();
}

absl::Status Gateway::Listen() {
  const common::HostPort& listen = options_.endpoints.listen;
  absl::StatusOr<std::vector<SockAddr>> addrs = ResolveHostPort(listen);
  if (!addrs.ok()) {
    return absl::UnavailableError(absl::StrCat("failed to resolve listen host: ", listen.host));
  }
  // Like Go's net.Listen (so etcd's gateway): a name such as "localhost",
  // which glibc may resolve to ::1 first, binds its IPv4 address.
  auto ipv4 = std::find_if(addrs->begin(), addrs->end(),
                           [](const SockAddr& a) { return a.storage.ss_family == AF_INET; });
  SockAddr addr = ipv4 != addrs->end() ? *ipv4 : addrs->front();
  if (listen.port != 0) {
    if (absl::Status s = CheckPortFree(addr); !s.ok()) return s;
  }
  for (size_t i = 0; i < workers_.size(); ++i) {
    SetPort(addr, listen_port_ != 0 ? listen_port_ : listen.port);
    if (absl::Status s = workers_[i]->Listen(addr); !s.ok()) return s;
    if (listen_port_ == 0) listen_port_ = PortOf(workers_[i]->listener_fd());
  }
  return absl::OkStatus();
}

size_t Gateway::Drain() {
  if (!running_) return 0;
  running_ = false;
  const size_t n = workers_.size();
  {
    absl::MutexLock lock(&mu_);
    idle_workers_ = 0;
  }
  for (size_t i = 0; i < n; ++i) {
    loops_[i]->Post([this, w = workers_[i].get()]() {
      w->StopAccepting([this] {
        absl::MutexLock lock(&mu_);
        ++idle_workers_;
      });
    });
  }
  const int64_t open = metrics_.GetGauge("keel_gateway_active_connections", "")->Value();
  common::LogEvent(
      *logger_, spdlog::level::info, "stopped accepting; draining connections",
      {{"connections", open}, {"timeout", common::FormatGoDuration(options_.drain_timeout)}});
  bool drained = false;
  {
    auto all_idle = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return idle_workers_ == n; };
    mu_.LockWhenWithTimeout(absl::Condition(&all_idle), options_.drain_timeout);
    drained = idle_workers_ == n;
    mu_.Unlock();
  }
  std::atomic<size_t> forced{0};
  if (!drained) {
    for (size_t i = 0; i < n; ++i) {
      loops_[i]->Post([w = workers_[i].get(), &forced]() {
        forced += w->connection_count();
        w->CloseAll();
      });
    }
  }
  StopThreads();  // runs the posts above first
  if (forced > 0) {
    common::LogEvent(*logger_, spdlog::level::warn, "closed connections after the drain timeout",
                     {{"connections", forced.load()}});
  }
  common::LogEvent(*logger_, spdlog::level::info, "gateway stopped");
  return forced;
}

void Gateway::StopThreads() {
  if (http_ != nullptr) http_->Stop();
  if (monitor_ != nullptr) monitor_->Stop();
  for (auto& loop : loops_) loop->Stop();
  if (monitor_loop_ != nullptr) monitor_loop_->Stop();
  // Every thread is gone: objects bound to a loop can go now, before it.
  workers_.clear();
  monitor_.reset();
  http_.reset();
}

}  // namespace keel::proxy::tcp
