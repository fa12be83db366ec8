#include "bench/client.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/cpus.h"

namespace keel::bench {

namespace {

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

const char* CodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::OK:
      return "OK";
    case grpc::CANCELLED:
      return "Canceled";
    case grpc::UNKNOWN:
      return "Unknown";
    case grpc::INVALID_ARGUMENT:
      return "InvalidArgument";
    case grpc::DEADLINE_EXCEEDED:
      return "DeadlineExceeded";
    case grpc::NOT_FOUND:
      return "NotFound";
    case grpc::ALREADY_EXISTS:
      return "AlreadyExists";
    case grpc::PERMISSION_DENIED:
      return "PermissionDenied";
    case grpc::RESOURCE_EXHAUSTED:
      return "ResourceExhausted";
    case grpc::FAILED_PRECONDITION:
      return "FailedPrecondition";
    case grpc::ABORTED:
      return "Aborted";
    case grpc::OUT_OF_RANGE:
      return "OutOfRange";
    case grpc::UNIMPLEMENTED:
      return "Unimplemented";
    case grpc::INTERNAL:
      return "Internal";
    case grpc::UNAVAILABLE:
      return "Unavailable";
    case grpc::DATA_LOSS:
      return "DataLoss";
    case grpc::UNAUTHENTICATED:
      return "Unauthenticated";
    default:
      return "Code";
  }
}

// Splits "https://host:port" into the scheme's TLS wish and "host:port".
std::string StripScheme(const std::string& endpoint, bool* tls) {
  *tls = false;
  std::string e = endpoint;
  if (absl::StartsWith(e, "https://")) {
    *tls = true;
    e = e.substr(8);
  } else if (absl::StartsWith(e, "http://")) {
    e = e.substr(7);
  }
  if (size_t slash = e.find('/'); slash != std::string::npos) e.resize(slash);
  return e;
}

}  // namespace

std::string GrpcErrorText(const grpc::Status& status) {
  return absl::StrCat("rpc error: code = ", CodeName(status.error_code()),
                      " desc = ", status.error_message());
}

CqPool::CqPool(int threads) {
  if (threads <= 0) threads = common::UsableCpus();
  for (int i = 0; i < threads; ++i) cqs_.push_back(std::make_unique<grpc::CompletionQueue>());
  for (int i = 0; i < threads; ++i) {
    grpc::CompletionQueue* cq = cqs_[static_cast<size_t>(i)].get();
    threads_.emplace_back([cq] {
      void* tag = nullptr;
      bool ok = false;
      while (cq->Next(&tag, &ok)) static_cast<Tagged*>(tag)->Proceed(ok);
    });
  }
}

CqPool::~CqPool() { Shutdown(); }

void CqPool::Shutdown() {
  if (shut_down_) return;
  shut_down_ = true;
  for (auto& cq : cqs_) cq->Shutdown();
  for (std::thread& t : threads_) t.join();
}

absl::StatusOr<std::unique_ptr<Connections>> Connections::Dial(const GlobalOptions& options) {
  if (options.endpoints.empty()) return absl::InvalidArgumentError("no --endpoints given");
  if (options.conns < 1) return absl::InvalidArgumentError("--conns must be at least 1");
  auto c = std::unique_ptr<Connections>(new Connections());

  // Credentials: TLS when a certificate flag is set or an endpoint says https.
  bool any_tls = !options.cacert.empty() || !options.cert.empty();
  for (const std::string& e : options.endpoints) {
    bool tls = false;
    StripScheme(e, &tls);
    any_tls = any_tls || tls;
  }
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
  if (any_tls) {
    grpc::SslCredentialsOptions ssl;
    if (!options.cacert.empty()) {
      absl::StatusOr<std::string> ca = ReadFile(options.cacert);
      if (!ca.ok()) return ca.status();
      ssl.pem_root_certs = *ca;
    }
    if (!options.cert.empty() || !options.key.empty()) {
      absl::StatusOr<std::string> cert = ReadFile(options.cert);
      if (!cert.ok()) return cert.status();
      absl::StatusOr<std::string> key = ReadFile(options.key);
      if (!key.ok()) return key.status();
      ssl.pem_cert_chain = *cert;
      ssl.pem_private_key = *key;
    }
    creds = grpc::SslCredentials(ssl);
  }

  std::vector<std::string> targets;
  for (const std::string& e : options.endpoints) {
    bool tls = false;
    targets.push_back(StripScheme(e, &tls));
  }
  const auto make_channel = [&](const std::string& target, int index) {
    grpc::ChannelArguments args;
    // Separate subchannel pools and a distinct argument make each channel
    // its own TCP connection.
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    args.SetInt("keel.bench.conn", index);
    args.SetMaxReceiveMessageSize(-1);
    return grpc::CreateCustomChannel(target, creds, args);
  };
  const auto wait_connected = [&](const std::shared_ptr<grpc::Channel>& ch,
                                  const std::string& target) -> absl::Status {
    const auto deadline =
        std::chrono::system_clock::now() + absl::ToChronoMilliseconds(options.dial_timeout);
    if (!ch->WaitForConnected(deadline)) {
      return absl::UnavailableError(absl::StrCat("cannot connect to ", target, " within ",
                                                 absl::FormatDuration(options.dial_timeout),
                                                 " (is the endpoint up?)"));
    }
    return absl::OkStatus();
  };

  if (options.target_leader) {
    std::string leader;
    std::string last_error;
    for (const std::string& t : targets) {
      auto ch = make_channel(t, -1);
      if (absl::Status s = wait_connected(ch, t); !s.ok()) {
        last_error = std::string(s.message());
        continue;
      }
      auto stub = etcdserverpb::Maintenance::NewStub(ch);
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() +
                       absl::ToChronoMilliseconds(options.dial_timeout));
      etcdserverpb::StatusResponse resp;
      grpc::Status st = stub->Status(&ctx, etcdserverpb::StatusRequest(), &resp);
      if (!st.ok()) {
        last_error = absl::StrCat(t, ": ", GrpcErrorText(st));
        continue;
      }
      if (resp.leader() != 0 && resp.leader() == resp.header().member_id()) {
        leader = t;
        break;
      }
    }
    if (leader.empty()) {
      return absl::UnavailableError(absl::StrCat("no leader found among --endpoints",
                                                 last_error.empty() ? "" : ": ", last_error));
    }
    targets = {leader};
  }
  c->endpoints_ = targets;

  for (int i = 0; i < options.conns; ++i) {
    const std::string& target = targets[static_cast<size_t>(i) % targets.size()];
    auto ch = make_channel(target, i);
    c->channels_.push_back(ch);
  }
  for (int i = 0; i < options.conns; ++i) {
    const std::string& target = targets[static_cast<size_t>(i) % targets.size()];
    if (absl::Status s = wait_connected(c->channels_[static_cast<size_t>(i)], target); !s.ok()) {
      return s;
    }
  }
  if (!options.user.empty()) {
    const size_t colon = options.user.find(':');
    if (colon == std::string::npos) {
      return absl::InvalidArgumentError("--user must be user:password");
    }
    etcdserverpb::AuthenticateRequest req;
    req.set_name(options.user.substr(0, colon));
    req.set_password(options.user.substr(colon + 1));
    auto stub = etcdserverpb::Auth::NewStub(c->channels_[0]);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() +
                     absl::ToChronoMilliseconds(options.dial_timeout));
    etcdserverpb::AuthenticateResponse resp;
    grpc::Status st = stub->Authenticate(&ctx, req, &resp);
    if (!st.ok()) {
      return absl::PermissionDeniedError(
          absl::StrCat("authentication failed: ", GrpcErrorText(st)));
    }
    c->token_ = resp.token();
  }
  return c;
}

void Connections::Prepare(grpc::ClientContext* ctx) const {
  if (!token_.empty()) ctx->AddMetadata("token", token_);
}

ProgressBar::ProgressBar(bool enabled, std::function<double()> fraction) {
  if (!enabled || !::isatty(STDERR_FILENO)) return;
  thread_ = std::thread([this, fraction = std::move(fraction)] {
    constexpr int kWidth = 50;
    while (!stop_.load()) {
      double f = std::clamp(fraction(), 0.0, 1.0);
      const int done = static_cast<int>(f * kWidth);
      std::string bar(static_cast<size_t>(done), '=');
      bar.resize(kWidth, ' ');
      std::fprintf(stderr, "\r[%s] %5.1f%%", bar.c_str(), f * 100);
      std::fflush(stderr);
      for (int i = 0; i < 20 && !stop_.load(); ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
    }
    std::fprintf(stderr, "\r%*s\r", kWidth + 10, "");
    std::fflush(stderr);
  });
}

ProgressBar::~ProgressBar() {
  stop_.store(true);
  if (thread_.joinable()) thread_.join();
}

}  // namespace keel::bench
