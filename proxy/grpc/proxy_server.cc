#include "proxy/grpc/proxy_server.h"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "api/grpc_framing.h"
#include "api/server/front.h"
#include "cache/caching_backend.h"
#include "coalesce/lease_coalescing_backend.h"
#include "coalesce/watch_coalescing_backend.h"
#include "common/logging.h"
#include "common/tcp_listen.h"
#include "grpc/grpc.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "grpcpp/server_posix.h"
#include "namespace/namespace_backend.h"
#include "proxy/grpc/cluster_view.h"
#include "proxy/grpc/first_bytes.h"
#include "proxy/grpc/frame_relay.h"
#include "proxy/grpc/health.h"
#include "proxy/grpc/registration.h"
#include "proxy/grpc/relay_routes.h"
#include "proxy/grpc/relay_streams.h"
#include "proxy/grpc/remote_backend.h"
#include "proxy/grpc/tls.h"
#include "proxy/grpc/tls_terminator.h"

namespace keel::proxy::grpcproxy {
namespace {

using Clock = std::chrono::steady_clock;

// A connection that sent too little to be told apart within this time is closed.
constexpr auto kSniffTimeout = std::chrono::seconds(10);
// How long a connection that sent a partial first token waits before it is peeked again.
constexpr auto kSniffRetry = std::chrono::milliseconds(10);
// At most this many accepted connections wait to be classified; beyond it
// the listener is not polled (the kernel's backlog holds the rest).
constexpr size_t kMaxPending = 1024;
// How long TLS clients get, at shutdown, to receive what the servers sent
// last (they have closed their ends by then).
constexpr absl::Duration kTlsDrain = absl::Seconds(1);
// How long the listener is left alone after accept(2) ran out of descriptors.
constexpr auto kAcceptPause = std::chrono::milliseconds(100);
// etcd's server accepts requests up to its limit plus this much gRPC overhead.
constexpr int64_t kRequestOverheadBytes = 512 * 1024;
// Short: the HTTP server has one thread, and /health waits behind a slow fetch.
constexpr absl::Duration kBackendHttpTimeout = absl::Seconds(3);

spdlog::logger& Log() { return *common::Logger("grpc-proxy"); }

std::string Hostname() {
  char name[HOST_NAME_MAX + 1] = {};
  if (gethostname(name, sizeof(name) - 1) != 0) return "";
  return name;
}

// The frame relay is used unless the environment says KEEL_FRAME_RELAY=off
// (for side-by-side measurements of the two paths).
bool FrameRelayWanted() {
  const char* value = std::getenv("KEEL_FRAME_RELAY");
  return value == nullptr || std::string_view(value) != "off";
}

void CloseFd(int& fd) {
  if (fd >= 0) close(fd);
  fd = -1;
}

}  // namespace

ProxyServer::ProxyServer(ProxyConfig config) : config_(std::move(config)) {}

ProxyServer::~ProxyServer() { Stop(); }

absl::Status ProxyServer::Start() {
  started_ = true;
  absl::Status status = [this]() -> absl::Status {
    ClientTlsOptions client_tls;
    client_tls.cert = config_.cert;
    client_tls.key = config_.key;
    client_tls.cacert = config_.cacert;
    client_tls.insecure_skip_verify = config_.insecure_skip_tls_verify;
    client_tls.tls_endpoints = config_.endpoints_tls;
    absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> channel_creds =
        MakeChannelCredentials(client_tls);
    if (!channel_creds.ok()) return channel_creds.status();

    ServerTlsOptions server_tls;
    server_tls.cert_file = config_.cert_file;
    server_tls.key_file = config_.key_file;
    server_tls.trusted_ca_file = config_.trusted_ca_file;
    server_tls.auto_tls = config_.auto_tls;
    server_tls.data_dir = config_.data_dir;
    server_tls.listen_host = config_.listen.host;
    server_tls.cipher_suites = config_.listen_cipher_suites;
    server_tls.client_crl_file = config_.client_crl_file;
    std::shared_ptr<SSL_CTX> server_context;  // null: plain text
    if (ServerTlsEnabled(server_tls)) {
      absl::StatusOr<std::shared_ptr<SSL_CTX>> context = MakeServerSslContext(server_tls);
      if (!context.ok()) return context.status();
      server_context = *std::move(context);
    }

    // Bound before the chain exists: a port in use fails at once, before
    // any layer has started talking to etcd.
    absl::StatusOr<int> fd = common::ListenTcp(config_.listen);
    if (!fd.ok()) return fd.status();
    listen_fd_ = *fd;
    port_ = common::BoundPort(listen_fd_);

    common::AddProcessMetrics(metrics_);
    RemoteOptions remote;
    remote.endpoints = config_.endpoints;
    remote.credentials = *channel_creds;
    remote.max_send_bytes = static_cast<int>(config_.max_send_bytes);
    remote.max_recv_bytes = static_cast<int>(config_.max_recv_bytes);
    remote_ = std::make_unique<RemoteBackend>(std::move(remote));
    relay_streams_ = std::make_unique<RelayStreamsBackend>(
        *remote_, static_cast<size_t>(config_.max_send_bytes));
    const bool cache_on = config_.range_cache_max_bytes > 0;
    // The relay does not decode responses, so a response size limit keeps
    // to gRPC.
    if (config_.max_recv_bytes >= INT32_MAX && FrameRelayWanted()) {
      relay_routes_ = std::make_unique<RelayRoutes>(
          RelayRouteOptions{cache_on, !config_.ns.empty()}, &metrics_);
      FrameRelayOptions relay;
      relay.routes = relay_routes_.get();
      relay.upstream_endpoint = [this] { return remote_->CurrentEndpoint(); };
      if (ClientTlsEnabled(client_tls)) {
        // (The same files MakeChannelCredentials checked above.)
        absl::StatusOr<std::shared_ptr<SSL_CTX>> context = MakeClientSslContext(client_tls);
        if (!context.ok()) return context.status();
        relay.upstream_tls = *std::move(context);
      }
      relay.serve_internal = [this](int fd) {
        grpc::AddInsecureChannelFromFd(grpc_server_.get(), fd);
      };
      if (cache_on) {
        // The cache is built below, before the relay starts.
        relay.on_ok = [this](OkHook hook, int64_t revision) {
          auto* cache = static_cast<cache::CachingBackend*>(cache_.get());
          if (hook == OkHook::kNoteWriteRevision) cache->NoteWriteAcknowledged(revision);
          if (hook == OkHook::kFlushCache) cache->FlushForAuthChange();
        };
        relay.cached_range = [this](std::string_view message) -> CachedRange {
          auto* cache = static_cast<cache::CachingBackend*>(cache_.get());
          ::etcdserverpb::RangeRequest request;
          if (!request.ParseFromArray(message.data(), static_cast<int>(message.size()))) {
            return {};  // the chain's gRPC server answers a bad message
          }
          if (!request.serializable()) {
            return {std::nullopt, cache->BeginExternalFill(request, kMaxFillResponseBytes)};
          }
          std::optional<::etcdserverpb::RangeResponse> hit = cache->TryServeSerializable(request);
          if (!hit.has_value()) return {};
          return {api::GrpcFramed(*hit), std::nullopt};
        };
        relay.end_fill = [this](uint64_t ticket, std::optional<std::string_view> response_bytes) {
          auto* cache = static_cast<cache::CachingBackend*>(cache_.get());
          ::etcdserverpb::RangeResponse response;
          if (response_bytes.has_value() &&
              response.ParseFromArray(response_bytes->data(),
                                      static_cast<int>(response_bytes->size()))) {
            cache->FinishExternalFill(ticket, std::move(response));
          } else {
            cache->AbandonExternalFill(ticket);
          }
        };
      }
      relay.max_request_bytes =
          static_cast<uint64_t>(config_.max_send_bytes + kRequestOverheadBytes);
      relay.max_concurrent_streams = config_.max_concurrent_streams;
      relay.max_send_bytes = static_cast<uint64_t>(config_.max_send_bytes);
      relay.metrics = &metrics_;
      relay_ = std::make_unique<FrameRelay>(std::move(relay));
      // Before the layers above are built: the coalescers' and the cache's
      // upstream streams go over the relay's connections from the first.
      relay_streams_->Attach(relay_.get());
    }
    lease_coalescing_ =
        std::make_unique<coalesce::LeaseCoalescingBackend>(*relay_streams_, &metrics_);
    watch_coalescing_ =
        std::make_unique<coalesce::WatchCoalescingBackend>(*lease_coalescing_, &metrics_);
    api::Backend* inner = watch_coalescing_.get();
    if (cache_on) {
      cache::CacheOptions cache_options;
      cache_options.max_bytes = static_cast<uint64_t>(config_.range_cache_max_bytes);
      // The cache's watch goes below the coalescers: no client shares it, so
      // their per-client work (a probe per create, queues) would buy nothing.
      cache_ = std::make_unique<cache::CachingBackend>(*inner, cache_options, &metrics_,
                                                       relay_streams_.get());
      inner = cache_.get();
    }
    if (!config_.ns.empty()) {
      namespace_ = std::make_unique<ns::NamespaceBackend>(*inner, config_.ns);
      inner = namespace_.get();
    }
    const std::string hostname = Hostname();
    cluster_view_ = std::make_unique<ClusterViewBackend>(
        *inner,
        ClusterViewOptions{config_.advertise_client_url, config_.resolver_prefix, hostname});
    api::server::FrontOptions front_options;
    front_options.metrics = &metrics_;
    front_ = std::make_unique<api::server::Front>(*cluster_view_, front_options);
    health_ = std::make_unique<HealthChecker>(*inner, &metrics_);

    grpc::ServerBuilder builder;
    front_->Register(builder);
    builder.SetMaxReceiveMessageSize(
        static_cast<int>(config_.max_send_bytes + kRequestOverheadBytes));
    builder.SetMaxSendMessageSize(INT_MAX);
    builder.AddChannelArgument(
        GRPC_ARG_MAX_CONCURRENT_STREAMS,
        static_cast<int>(std::min<uint32_t>(config_.max_concurrent_streams, INT_MAX)));
    // etcd's clients ping on their own schedule (etcdctl every 2 s by
    // default), also without calls. Like etcd's server (5 s minimum), accept
    // that and never close a client for pinging: 0 strikes = unlimited.
    builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 5000);
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
    builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0);
    // No listening port: every connection is handed over (Dispatch).
    grpc_server_ = builder.BuildAndStart();
    if (grpc_server_ == nullptr) {
      return absl::UnavailableError(
          absl::StrCat("listen tcp ", config_.listen.ToString(), ": gRPC server did not start"));
    }

    if (relay_ != nullptr) {
      relay_->SetChain(cluster_view_.get());
      if (absl::Status s = relay_->Start(); !s.ok()) return s;
    }

    http_.Handle("/health",
                 [this](const common::HttpRequest& request) { return health_->Handle(request); });
    http_.Handle("/metrics", [this](const common::HttpRequest&) {
      return common::HttpResponse{200, "text/plain; version=0.0.4; charset=utf-8",
                                  metrics_.RenderText()};
    });
    http_.Handle("/backend/metrics", [this](const common::HttpRequest& request) {
      return FetchFromBackend(request, "/metrics");
    });
    http_.Handle("/version", [this](const common::HttpRequest& request) {
      return FetchFromBackend(request, "/version");
    });
    if (config_.metrics_listen.has_value()) {
      if (absl::Status s = StartMetricsListener(); !s.ok()) return s;
      KEEL_LOG_EVENT(Log(), spdlog::level::info, "gRPC proxy server metrics URL serving",
                     {{"address", config_.metrics_listen->url}});
    } else {
      if (absl::Status s = http_.Start(); !s.ok()) return s;
    }
    if (server_context != nullptr) {
      TlsTerminatorOptions tls;
      tls.context = server_context;
      tls.dispatch = [this](int fd, bool http2) { Dispatch(fd, http2); };
      if (relay_ != nullptr) {
        // The relay speaks TLS to its clients itself (no thread hop).
        tls.adopt_http2 = [this](int fd, SSL* ssl, std::string first_bytes) {
          relay_->ServeTls(fd, ssl, std::move(first_bytes));
        };
      }
      tls_ = std::make_unique<TlsTerminator>(std::move(tls));
      if (absl::Status s = tls_->Start(); !s.ok()) return s;
    }
    if (pipe2(wake_pipe_, O_NONBLOCK | O_CLOEXEC) != 0) {
      return absl::UnavailableError(absl::StrCat("grpc-proxy: pipe: ", common::ErrnoText(errno)));
    }
    accept_thread_ = std::thread(&ProxyServer::AcceptLoop, this);
    KEEL_LOG_EVENT(Log(), spdlog::level::info, "listening for gRPC proxy client requests",
                   {{"address", config_.listen_addr}});
    if (!config_.resolver_prefix.empty()) {
      RegistrationOptions options;
      options.prefix = config_.resolver_prefix;
      options.ttl_seconds = static_cast<int>(std::min<int64_t>(config_.resolver_ttl, INT_MAX));
      options.advertise = config_.advertise_client_url;
      options.hostname = hostname;
      registration_ = std::make_unique<Registration>(*inner, std::move(options));
      registration_->Start();
    }
    KEEL_LOG_EVENT(Log(), spdlog::level::info, "started gRPC proxy",
                   {{"address", config_.listen_addr}});
    return absl::OkStatus();
  }();
  if (!status.ok()) Stop(absl::ZeroDuration());
  return status;
}

void ProxyServer::Stop(absl::Duration grace) {
  if (!started_ || stopped_) return;
  stopped_ = true;
  if (registration_ != nullptr) registration_->Stop();
  if (accept_thread_.joinable()) {
    const char byte = 'x';
    [[maybe_unused]] ssize_t n = write(wake_pipe_[1], &byte, 1);
    accept_thread_.join();
  }
  CloseFd(listen_fd_);
  CloseFd(metrics_tls_fd_);
  CloseFd(wake_pipe_[0]);
  CloseFd(wake_pipe_[1]);
  // Before the gRPC server: the relay's streams into it finish first. The
  // chain's streams to etcd on the relay go on until the layers are gone
  // (they close them); new ones go to the gRPC client.
  if (relay_streams_ != nullptr) relay_streams_->Detach();
  // TLS connections go on being carried while the servers drain them; one
  // whose handshake ends from now on is closed here or refused by the
  // server it would go to (each refuses once stopping).
  draining_.store(true);
  const bool chain_idle = relay_ == nullptr || relay_->Stop(grace);
  if (grpc_server_ != nullptr) {
    grpc_server_->Shutdown(std::chrono::system_clock::now() +
                           std::chrono::milliseconds(absl::ToInt64Milliseconds(grace)));
    grpc_server_->Wait();
  }
  http_.Stop();
  if (!metrics_unix_path_.empty()) {
    unlink(metrics_unix_path_.c_str());
  }
  // The servers have closed their ends: what they wrote last still reaches
  // the TLS clients.
  if (tls_ != nullptr) tls_->Stop(kTlsDrain);
  if (!chain_idle) {
    // A call the relay served against the chain is still running in it (a
    // hung member): destroying the layers would free what it uses. The
    // process is on its way out; leave them.
    KEEL_LOG_EVENT(Log(), spdlog::level::warn,
                   "grpc-proxy: calls still running in the backend chain at shutdown; "
                   "its layers are left in place", {});
    [[maybe_unused]] auto* chain = cluster_view_.release();
    [[maybe_unused]] auto* ns = namespace_.release();
    [[maybe_unused]] auto* cache = cache_.release();
    [[maybe_unused]] auto* watch = watch_coalescing_.release();
    [[maybe_unused]] auto* lease = lease_coalescing_.release();
    [[maybe_unused]] auto* relay_streams = relay_streams_.release();
    [[maybe_unused]] auto* remote = remote_.release();
  }
  // The layers go in the reverse order of their construction: each one's
  // inner Backend must outlive it. The relay goes after the coalescers, whose
  // upstream streams it carries.
  registration_.reset();
  tls_.reset();
  grpc_server_.reset();
  health_.reset();
  front_.reset();
  cluster_view_.reset();
  namespace_.reset();
  cache_.reset();
  watch_coalescing_.reset();
  lease_coalescing_.reset();
  relay_.reset();
  relay_routes_.reset();
  relay_streams_.reset();
  remote_.reset();
}

void ProxyServer::AcceptLoop() {
  struct Pending {
    int fd;
    Clock::time_point deadline;
    Clock::time_point retry_at;  // before it, the fd is not polled (partial preface)
  };
  std::vector<Pending> pending;
  std::vector<pollfd> fds;
  Clock::time_point accept_paused_until = Clock::time_point::min();
  while (true) {
    fds.clear();
    fds.push_back({wake_pipe_[0], POLLIN, 0});
    Clock::time_point now = Clock::now();
    // Connections not yet classified are bounded, so idle connects cannot
    // use up the descriptors the backend calls need.
    // TLS connections still in their handshake count the same (looked at
    // again every kAcceptPause: nothing wakes this loop when they finish).
    const bool tls_full = tls_ != nullptr && tls_->Waiting() >= kMaxPending;
    const bool accept_paused =
        now < accept_paused_until || pending.size() >= kMaxPending || tls_full;
    fds.push_back({listen_fd_, static_cast<short>(accept_paused ? 0 : POLLIN), 0});
    // (-1 without an https:// --metrics-addr: poll(2) skips it.)
    fds.push_back({metrics_tls_fd_, static_cast<short>(accept_paused ? 0 : POLLIN), 0});
    Clock::time_point next =
        now < accept_paused_until ? accept_paused_until : Clock::time_point::max();
    if (tls_full) next = std::min(next, now + kAcceptPause);
    for (const Pending& p : pending) {
      const bool wait = now < p.retry_at;
      fds.push_back({p.fd, static_cast<short>(wait ? 0 : POLLIN), 0});
      next = std::min(next, wait ? p.retry_at : p.deadline);
    }
    int timeout_ms = -1;
    if (next != Clock::time_point::max()) {
      const auto wait = std::chrono::ceil<std::chrono::milliseconds>(next - now);
      timeout_ms = static_cast<int>(std::max<int64_t>(0, wait.count()));
    }
    const int ready = poll(fds.data(), fds.size(), timeout_ms);
    if (ready < 0) {
      // Only Stop() ends the loop: a transient failure (ENOMEM) must not
      // leave a bound listener that nobody accepts on.
      if (errno != EINTR) {
        KEEL_LOG_EVENT(Log(), spdlog::level::warn, "accept loop: poll failed, retrying",
                       {{"error", common::ErrnoText(errno)}});
        std::this_thread::sleep_for(kAcceptPause);
      }
      continue;
    }
    if (ready > 0 && fds[0].revents != 0) break;  // Stop()
    // Takes what `listener` has: to the TLS terminator (`http_only` for
    // the metrics port), or to wait for its first bytes.
    const auto accept_all = [&](int listener, bool http_only) {
      while (pending.size() < kMaxPending) {
        const int fd = accept4(listener, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
          // Out of descriptors: the listener stays readable, so leave it
          // alone for a moment instead of spinning.
          if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
            accept_paused_until = Clock::now() + kAcceptPause;
          }
          return;
        }
        const int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (tls_ != nullptr) {
          tls_->Serve(fd, http_only);  // it sniffs the decrypted bytes itself
          // Handshakes not done yet are bounded like unclassified plaintext
          // connections (tls_full, above).
          if (tls_->Waiting() >= kMaxPending) return;
          continue;
        }
        pending.push_back({fd, Clock::now() + kSniffTimeout, Clock::time_point::min()});
      }
    };
    if (ready > 0 && (fds[1].revents & POLLIN) != 0) accept_all(listen_fd_, false);
    if (ready > 0 && (fds[2].revents & POLLIN) != 0) accept_all(metrics_tls_fd_, true);
    now = Clock::now();
    std::vector<Pending> still;
    for (size_t i = 0; i < pending.size(); ++i) {
      Pending p = pending[i];
      // Entries accepted in this round have no pollfd yet.
      const short revents = i + 3 < fds.size() ? fds[i + 3].revents : 0;
      if (revents == 0) {
        if (now >= p.deadline) {
          close(p.fd);
        } else {
          still.push_back(p);
        }
        continue;
      }
      char head[kFirstBytesNeeded];
      const ssize_t n = recv(p.fd, head, sizeof(head), MSG_PEEK);
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
        still.push_back(p);
        continue;
      }
      if (n <= 0) {  // EOF or error before anything was sent
        close(p.fd);
        continue;
      }
      const FirstBytes kind = ClassifyFirstBytes(std::string_view(head, static_cast<size_t>(n)));
      if (kind == FirstBytes::kTooFew) {
        p.retry_at = now + kSniffRetry;
        still.push_back(p);
        continue;
      }
      Dispatch(p.fd, kind == FirstBytes::kHttp2);
    }
    pending = std::move(still);
  }
  for (const Pending& p : pending) close(p.fd);
}

void ProxyServer::Dispatch(int fd, bool http2) {
  if (draining_.load()) {
    close(fd);
  } else if (http2 && relay_ != nullptr) {
    relay_->Serve(fd);
  } else if (http2) {
    grpc::AddInsecureChannelFromFd(grpc_server_.get(), fd);
  } else {
    http_.ServeConnection(fd);  // (closed if the HTTP server is not running)
  }
}

absl::Status ProxyServer::StartMetricsListener() {
  const MetricsListen& metrics = *config_.metrics_listen;
  absl::StatusOr<int> fd = metrics.tcp.has_value() ? common::ListenTcp(*metrics.tcp)
                                                   : common::ListenUnix(metrics.unix_path);
  if (!fd.ok()) return fd.status();
  metrics_unix_path_ = metrics.unix_path;
  if (!metrics.tls) return http_.Start(*fd);
  // TLS: the accept loop takes its connections to the listener's
  // terminator, which hands them on, decrypted, to the HTTP server only.
  metrics_tls_fd_ = *fd;
  return http_.Start();
}

common::HttpResponse ProxyServer::FetchFromBackend(const common::HttpRequest& request,
                                                   const std::string& path) {
  if (request.method != "GET" && request.method != "HEAD") {
    return common::HttpResponse{405, "text/plain; charset=utf-8", "Method Not Allowed\n"};
  }
  const std::string endpoint = remote_->CurrentEndpoint();
  absl::StatusOr<common::HostPort> host_port = common::ParseHostPort(endpoint);
  absl::StatusOr<common::HttpResponse> response =
      host_port.ok() ? common::HttpGet(*host_port, path, kBackendHttpTimeout)
                     : absl::StatusOr<common::HttpResponse>(host_port.status());
  if (!response.ok()) {
    KEEL_LOG_EVENT(Log(), spdlog::level::warn, "failed to fetch from the backend",
                   {{"endpoint", endpoint},
                    {"path", path},
                    {"error", std::string(response.status().message())}});
    return common::HttpResponse{500, "text/plain; charset=utf-8",
                                absl::StrCat(response.status().message(), "\n")};
  }
  if (response->content_type.empty()) response->content_type = "text/plain; charset=utf-8";
  return *std::move(response);
}

}  // namespace keel::proxy::grpcproxy
