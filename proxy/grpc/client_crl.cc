#include "proxy/grpc/client_crl.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <memory>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/tcp_listen.h"
#include "proxy/grpc/tls.h"

namespace keel::proxy::grpcproxy {
namespace {

spdlog::logger& Log() { return *common::Logger("grpc-proxy"); }

struct CrlFree {
  void operator()(X509_CRL* crl) const { X509_CRL_free(crl); }
};
using CrlPtr = std::unique_ptr<X509_CRL, CrlFree>;

// What identifies one version of the file: a rewrite or a rename over it
// changes at least one of these.
struct FileVersion {
  dev_t dev = 0;
  ino_t ino = 0;
  off_t size = 0;
  timespec mtime{};
  bool operator==(const FileVersion& o) const {
    return dev == o.dev && ino == o.ino && size == o.size && mtime.tv_sec == o.mtime.tv_sec &&
           mtime.tv_nsec == o.mtime.tv_nsec;
  }
};

std::optional<FileVersion> Stat(const std::string& path) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) return std::nullopt;
  return FileVersion{st.st_dev, st.st_ino, st.st_size, st.st_mtim};
}

// The list in `path`, PEM or DER (as Go's x509.ParseCRL takes either).
absl::StatusOr<CrlPtr> ReadCrl(const std::string& path) {
  absl::StatusOr<std::string> read = ReadFlagFile("--client-crl-file", path);
  if (!read.ok()) return read.status();
  const std::string& bytes = *read;
  ERR_clear_error();
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(
      BIO_new_mem_buf(bytes.data(), static_cast<int>(bytes.size())), BIO_free);
  CrlPtr crl(PEM_read_bio_X509_CRL(bio.get(), nullptr, nullptr, nullptr));
  if (crl == nullptr) {
    const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
    crl.reset(d2i_X509_CRL(nullptr, &p, static_cast<long>(bytes.size())));
  }
  ERR_clear_error();
  if (crl == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--client-crl-file \"", path, "\": no certificate revocation list found (PEM or DER)"));
  }
  return crl;
}

// The list and its file, shared by every handshake of one SSL_CTX.
class ClientCrl {
 public:
  ClientCrl(std::string path, CrlPtr crl, FileVersion version)
      : path_(std::move(path)), crl_(std::move(crl)), version_(version) {}

  // True if one of `certs` is listed, or the list cannot be read any more.
  bool AnyRevoked(const std::vector<X509*>& certs) {
    std::lock_guard<std::mutex> lock(mu_);
    Refresh();
    if (crl_ == nullptr) return true;
    X509_REVOKED* entry = nullptr;
    // Like etcd: the serial number alone, whoever issued the list.
    return std::any_of(certs.begin(), certs.end(), [&](X509* cert) {
      return X509_CRL_get0_by_serial(crl_.get(), &entry, X509_get_serialNumber(cert)) != 0;
    });
  }

 private:
  // Reads the file again if it changed since it was last read. A failed
  // read is tried again at the next handshake (etcd reads the file at every
  // connection), so a passing error refuses no more than it must.
  void Refresh() {
    const std::optional<FileVersion> now = Stat(path_);
    if (now.has_value() && version_.has_value() && *now == *version_) return;
    absl::StatusOr<CrlPtr> crl =
        now.has_value() ? ReadCrl(path_)
                        : absl::StatusOr<CrlPtr>(absl::InvalidArgumentError(absl::StrCat(
                              "--client-crl-file \"", path_, "\": ", common::ErrnoText(ENOENT))));
    if (!crl.ok()) {
      crl_.reset();
      version_.reset();
      if (!said_broken_) {
        said_broken_ = true;
        KEEL_LOG_EVENT(
            Log(), spdlog::level::warn,
            "client certificate revocation list unreadable: refusing client certificates",
            {{"error", std::string(crl.status().message())}});
      }
      return;
    }
    crl_ = *std::move(crl);
    version_ = now;
    said_broken_ = false;
    KEEL_LOG_EVENT(Log(), spdlog::level::info, "client certificate revocation list reloaded",
                   {{"path", path_}});
  }

  std::mutex mu_;
  const std::string path_;
  CrlPtr crl_;                          // guarded by mu_; null while unreadable
  std::optional<FileVersion> version_;  // guarded by mu_; what crl_ was read from
  bool said_broken_ = false;            // guarded by mu_; logged since the last good read
};

int CrlIndex() {
  static const int index = SSL_CTX_get_ex_new_index(
      0, nullptr, nullptr, nullptr, [](void*, void* ptr, CRYPTO_EX_DATA*, int, long, void*) {
        delete static_cast<ClientCrl*>(ptr);
      });
  return index;
}

// OpenSSL's chain check first; then, once per handshake (at the client's
// own certificate, the last one checked), its chain against the list: all
// but the trust anchor (the listener's own CA), unless the client's
// certificate is itself the one trusted.
int VerifyNotRevoked(int preverified, X509_STORE_CTX* store) {
  if (preverified != 1 || X509_STORE_CTX_get_error_depth(store) != 0) return preverified;
  auto* ssl =
      static_cast<SSL*>(X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx()));
  auto* crl = ssl == nullptr
                  ? nullptr
                  : static_cast<ClientCrl*>(SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), CrlIndex()));
  if (crl == nullptr) return 1;
  STACK_OF(X509)* chain = X509_STORE_CTX_get0_chain(store);
  const int length = chain == nullptr ? 0 : sk_X509_num(chain);
  std::vector<X509*> sent = {X509_STORE_CTX_get_current_cert(store)};
  for (int i = 1; i < length - 1; ++i) sent.push_back(sk_X509_value(chain, i));
  if (crl->AnyRevoked(sent)) {
    X509_STORE_CTX_set_error(store, X509_V_ERR_CERT_REVOKED);
    return 0;
  }
  return 1;
}

}  // namespace

absl::Status InstallClientCrl(SSL_CTX* ctx, const std::string& path) {
  const std::optional<FileVersion> version = Stat(path);
  absl::StatusOr<CrlPtr> crl = ReadCrl(path);
  if (!crl.ok()) return crl.status();
  auto holder = std::make_unique<ClientCrl>(path, *std::move(crl), version.value_or(FileVersion{}));
  if (SSL_CTX_set_ex_data(ctx, CrlIndex(), holder.get()) != 1) {
    return absl::InternalError("--client-crl-file: cannot attach the list to the TLS context");
  }
  holder.release();  // the context frees it (CrlIndex's free function)
  SSL_CTX_set_verify(ctx, SSL_CTX_get_verify_mode(ctx), VerifyNotRevoked);
  // A resumed session skips the certificate check: a client revoked since
  // would get in on its ticket. etcd checks every connection; so does keel.
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
  SSL_CTX_set_num_tickets(ctx, 0);
  return absl::OkStatus();
}

}  // namespace keel::proxy::grpcproxy
