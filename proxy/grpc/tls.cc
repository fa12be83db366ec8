#include "proxy/grpc/tls.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_certificate_verifier.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "proxy/grpc/client_crl.h"

namespace keel::proxy::grpcproxy {
namespace {

struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct PkeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct BnFree {
  void operator()(BIGNUM* b) const { BN_free(b); }
};
struct ExtFree {
  void operator()(X509_EXTENSION* e) const { X509_EXTENSION_free(e); }
};
using X509Ptr = std::unique_ptr<X509, X509Free>;
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyFree>;
using BioPtr = std::unique_ptr<BIO, BioFree>;
using BnPtr = std::unique_ptr<BIGNUM, BnFree>;
using ExtPtr = std::unique_ptr<X509_EXTENSION, ExtFree>;

// Where a file came from, for error messages: the flag and the path.
struct Source {
  absl::string_view flag;
  const std::string& path;
};

std::string Describe(const Source& src) { return absl::StrCat(src.flag, " \"", src.path, "\""); }

absl::StatusOr<std::string> ReadFile(const Source& src) { return ReadFlagFile(src.flag, src.path); }

}  // namespace

absl::StatusOr<std::string> ReadFlagFile(absl::string_view flag, const std::string& path) {
  const Source src{flag, path};
  std::FILE* f = std::fopen(src.path.c_str(), "rb");
  if (f == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(Describe(src), ": cannot open: ", std::strerror(errno)));
  }
  std::string data;
  char buf[8192];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) data.append(buf, n);
  const bool failed = std::ferror(f) != 0;
  const int err = errno;
  std::fclose(f);
  if (failed) {
    return absl::InvalidArgumentError(
        absl::StrCat(Describe(src), ": cannot read: ", std::strerror(err)));
  }
  return data;
}

namespace {

BioPtr MemBio(const std::string& pem) {
  return BioPtr(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
}

// Every certificate in `pem`, in order; InvalidArgument if there is none or one
// does not parse.
absl::StatusOr<std::vector<X509Ptr>> ParseCertificates(const Source& src, const std::string& pem) {
  ERR_clear_error();  // the check below must only see this parse's errors
  BioPtr bio = MemBio(pem);
  std::vector<X509Ptr> certs;
  while (X509* x = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) certs.emplace_back(x);
  // Reading stops with PEM_R_NO_START_LINE at the end of the input; anything
  // else means a damaged PEM block.
  unsigned long code = ERR_peek_last_error();
  if (code != 0 &&
      !(ERR_GET_LIB(code) == ERR_LIB_PEM && ERR_GET_REASON(code) == PEM_R_NO_START_LINE)) {
    return absl::InvalidArgumentError(
        absl::StrCat(Describe(src), ": bad PEM certificate: ", TakeOpenSslError("parse error")));
  }
  ERR_clear_error();
  if (certs.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(Describe(src), ": no PEM certificate found"));
  }
  return certs;
}

// Encrypted keys are not supported (etcd has no passphrase flag either); without
// this callback OpenSSL would prompt on the terminal.
int NoPassword(char*, int, int, void*) { return 0; }

absl::StatusOr<PkeyPtr> ParsePrivateKey(const Source& src, const std::string& pem) {
  BioPtr bio = MemBio(pem);
  PkeyPtr key(PEM_read_bio_PrivateKey(bio.get(), nullptr, NoPassword, nullptr));
  if (key == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(Describe(src), ": no PEM private key found (",
                                                   TakeOpenSslError("parse error"), ")"));
  }
  return key;
}

// A certificate chain and its private key, checked to belong together.
struct KeyPair {
  std::string cert_pem;
  std::string key_pem;
  std::vector<X509Ptr> chain;  // the leaf first
  PkeyPtr key;
};

// etcd's transport.TLSInfo message when only one of the pair is given.
absl::Status MissingPairError(const std::string& key, const std::string& cert) {
  return absl::InvalidArgumentError(
      absl::StrCat("KeyFile and CertFile must both be present[key: ", key, ", cert: ", cert, "]"));
}

absl::StatusOr<KeyPair> LoadKeyPair(const Source& cert_src, const Source& key_src) {
  KeyPair pair;
  absl::StatusOr<std::string> cert_pem = ReadFile(cert_src);
  if (!cert_pem.ok()) return cert_pem.status();
  absl::StatusOr<std::string> key_pem = ReadFile(key_src);
  if (!key_pem.ok()) return key_pem.status();
  absl::StatusOr<std::vector<X509Ptr>> certs = ParseCertificates(cert_src, *cert_pem);
  if (!certs.ok()) return certs.status();
  absl::StatusOr<PkeyPtr> key = ParsePrivateKey(key_src, *key_pem);
  if (!key.ok()) return key.status();
  if (X509_check_private_key(certs->front().get(), key->get()) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError(absl::StrCat(Describe(key_src), " does not match ",
                                                   Describe(cert_src),
                                                   ": private key does not match public key"));
  }
  pair.cert_pem = *std::move(cert_pem);
  pair.key_pem = *std::move(key_pem);
  pair.chain = *std::move(certs);
  pair.key = *std::move(key);
  return pair;
}

// Every certificate of the PEM file `src` names.
absl::StatusOr<std::vector<X509Ptr>> LoadCertificates(const Source& src) {
  absl::StatusOr<std::string> pem = ReadFile(src);
  if (!pem.ok()) return pem.status();
  return ParseCertificates(src, *pem);
}

absl::StatusOr<std::string> LoadCa(const Source& src) {
  absl::StatusOr<std::string> pem = ReadFile(src);
  if (!pem.ok()) return pem.status();
  absl::StatusOr<std::vector<X509Ptr>> certs = ParseCertificates(src, *pem);
  if (!certs.ok()) return certs.status();
  return pem;
}

// The subject's Common Name, or "" if it has none.
std::string CommonName(X509* cert) {
  X509_NAME* subject = X509_get_subject_name(cert);
  int index = X509_NAME_get_index_by_NID(subject, NID_commonName, -1);
  if (index < 0) return "";
  ASN1_STRING* data = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, index));
  unsigned char* utf8 = nullptr;
  int len = ASN1_STRING_to_UTF8(&utf8, data);
  if (len < 0) {
    ERR_clear_error();
    return "?";  // present but not decodable: still a non-empty CN
  }
  std::string cn(reinterpret_cast<char*>(utf8), static_cast<size_t>(len));
  OPENSSL_free(utf8);
  return cn;
}

// ---- auto-TLS ----

absl::Status WriteFile0600(const std::string& path, const std::string& data) {
  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("auto-TLS: cannot create \"", tmp, "\": ", std::strerror(errno)));
  }
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      return absl::InvalidArgumentError(
          absl::StrCat("auto-TLS: cannot write \"", tmp, "\": ", std::strerror(err)));
    }
    done += static_cast<size_t>(n);
  }
  const bool synced = ::fsync(fd) == 0;
  const bool closed = ::close(fd) == 0;
  if (!synced || !closed || ::rename(tmp.c_str(), path.c_str()) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("auto-TLS: cannot save \"", path, "\": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

// True if `host` is an IPv4 or IPv6 address (without brackets).
bool IsIpLiteral(const std::string& host) {
  unsigned char addr[sizeof(in6_addr)];
  return inet_pton(AF_INET, host.c_str(), addr) == 1 ||
         inet_pton(AF_INET6, host.c_str(), addr) == 1;
}

// "IP:<host>" or "DNS:<host>" for the certificate's subjectAltName.
std::string SubjectAltName(std::string host) {
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  if (host.empty()) host = "localhost";
  return (IsIpLiteral(host) ? "IP:" : "DNS:") + host;
}

absl::Status AddExtension(X509* cert, X509V3_CTX* ctx, int nid, const std::string& value) {
  ExtPtr ext(X509V3_EXT_conf_nid(nullptr, ctx, nid, value.c_str()));
  if (ext == nullptr || X509_add_ext(cert, ext.get(), -1) != 1) {
    return absl::InternalError(absl::StrCat("auto-TLS: cannot add extension \"", value,
                                            "\": ", TakeOpenSslError("unknown error")));
  }
  return absl::OkStatus();
}

// A fresh EC P-256 key and a self-signed certificate for `host`, valid one
// year from now, as PEM (what etcd's transport.SelfCert makes for the proxy).
absl::StatusOr<std::pair<std::string, std::string>> GenerateSelfSigned(const std::string& host) {
  auto fail = [](absl::string_view what) {
    return absl::InternalError(
        absl::StrCat("auto-TLS: ", what, ": ", TakeOpenSslError("unknown error")));
  };
  PkeyPtr key(EVP_EC_gen("P-256"));
  if (key == nullptr) return fail("cannot generate key");
  X509Ptr cert(X509_new());
  if (cert == nullptr || X509_set_version(cert.get(), 2) != 1) return fail("X509_new");
  BnPtr serial(BN_new());
  if (serial == nullptr || BN_rand(serial.get(), 127, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) != 1 ||
      BN_to_ASN1_INTEGER(serial.get(), X509_get_serialNumber(cert.get())) == nullptr) {
    return fail("serial number");
  }
  constexpr long kOneYear = 365L * 24 * 60 * 60;
  X509_NAME* name = X509_get_subject_name(cert.get());
  if (X509_gmtime_adj(X509_getm_notBefore(cert.get()), 0) == nullptr ||
      X509_gmtime_adj(X509_getm_notAfter(cert.get()), kOneYear) == nullptr ||
      X509_set_pubkey(cert.get(), key.get()) != 1 ||
      X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC,
                                 reinterpret_cast<const unsigned char*>("keel"), -1, -1, 0) != 1 ||
      X509_set_issuer_name(cert.get(), name) != 1) {
    return fail("certificate fields");
  }
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, cert.get(), cert.get(), nullptr, nullptr, 0);
  for (const auto& [nid, value] : std::vector<std::pair<int, std::string>>{
           {NID_basic_constraints, "critical,CA:FALSE"},
           {NID_key_usage, "critical,digitalSignature,keyEncipherment"},
           {NID_ext_key_usage, "serverAuth"},
           {NID_subject_alt_name, SubjectAltName(host)}}) {
    if (absl::Status s = AddExtension(cert.get(), &ctx, nid, value); !s.ok()) return s;
  }
  if (X509_sign(cert.get(), key.get(), EVP_sha256()) <= 0) return fail("cannot sign");

  BioPtr cert_bio(BIO_new(BIO_s_mem()));
  BioPtr key_bio(BIO_new(BIO_s_mem()));
  if (cert_bio == nullptr || key_bio == nullptr ||
      PEM_write_bio_X509(cert_bio.get(), cert.get()) != 1 ||
      PEM_write_bio_PrivateKey(key_bio.get(), key.get(), nullptr, nullptr, 0, nullptr, nullptr) !=
          1) {
    return fail("cannot encode PEM");
  }
  auto text = [](BIO* bio) {
    char* data = nullptr;
    long len = BIO_get_mem_data(bio, &data);
    return std::string(data, static_cast<size_t>(len));
  };
  return std::make_pair(text(cert_bio.get()), text(key_bio.get()));
}

// etcd's SelfCert: reuse <data_dir>/fixtures/proxy/{cert,key}.pem when both
// exist, else create them (directory 0700, files 0600).
absl::StatusOr<KeyPair> LoadOrCreateAutoTls(const ServerTlsOptions& options) {
  if (options.data_dir.empty()) {
    return absl::InvalidArgumentError("--auto-tls needs a --data-dir to store its certificate");
  }
  const std::filesystem::path dir = std::filesystem::path(options.data_dir) / "fixtures" / "proxy";
  const std::string cert_path = (dir / "cert.pem").string();
  const std::string key_path = (dir / "key.pem").string();
  const Source cert_src{"auto-TLS certificate", cert_path};
  const Source key_src{"auto-TLS key", key_path};
  std::error_code ec;
  if (std::filesystem::exists(cert_path, ec) && std::filesystem::exists(key_path, ec)) {
    return LoadKeyPair(cert_src, key_src);
  }
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    return absl::InvalidArgumentError(
        absl::StrCat("auto-TLS: cannot create \"", dir.string(), "\": ", ec.message()));
  }
  ::chmod(dir.c_str(), 0700);
  absl::StatusOr<std::pair<std::string, std::string>> generated =
      GenerateSelfSigned(options.listen_host);
  if (!generated.ok()) return generated.status();
  if (absl::Status s = WriteFile0600(key_path, generated->second); !s.ok()) return s;
  if (absl::Status s = WriteFile0600(cert_path, generated->first); !s.ok()) return s;
  return LoadKeyPair(cert_src, key_src);
}

}  // namespace

std::string TakeOpenSslError(std::string_view fallback) {
  unsigned long code = ERR_get_error();
  ERR_clear_error();
  if (code == 0) return std::string(fallback);
  char buf[256];
  ERR_error_string_n(code, buf, sizeof(buf));
  return buf;
}

bool ServerTlsEnabled(const ServerTlsOptions& options) {
  return !options.cert_file.empty() || !options.key_file.empty() ||
         !options.trusted_ca_file.empty() || options.auto_tls;
}

namespace {

struct SslCtxFree {
  void operator()(SSL_CTX* ctx) const { SSL_CTX_free(ctx); }
};

constexpr unsigned char kAlpnHttp11[] = {'h', 't', 't', 'p', '/', '1', '.', '1'};
constexpr unsigned char kAlpnH2[] = {'h', '2'};

// True if the client's ALPN list (length-prefixed names) offers `name`.
bool Offers(const unsigned char* in, unsigned int in_len, const unsigned char* name,
            unsigned int name_len) {
  for (unsigned int i = 0; i < in_len;) {
    const unsigned int len = in[i];
    if (i + 1 + len > in_len) return false;
    if (len == name_len && std::memcmp(in + i + 1, name, len) == 0) return true;
    i += 1 + len;
  }
  return false;
}

// gRPC clients offer only h2 (grpc-go, grpc-java) or grpc-exp and h2 (gRPC
// core); HTTP clients (curl, Go's net/http, Prometheus) offer http/1.1 as
// well and get it, so /health and /metrics work on the TLS port without
// `curl --http1.1` (etcd's proxy routes every h2 connection to gRPC).
int SelectAlpn(SSL*, const unsigned char** out, unsigned char* out_len, const unsigned char* in,
               unsigned int in_len, void*) {
  if (Offers(in, in_len, kAlpnHttp11, sizeof(kAlpnHttp11))) {
    *out = kAlpnHttp11;
    *out_len = sizeof(kAlpnHttp11);
    return SSL_TLSEXT_ERR_OK;
  }
  if (Offers(in, in_len, kAlpnH2, sizeof(kAlpnH2))) {
    *out = kAlpnH2;
    *out_len = sizeof(kAlpnH2);
    return SSL_TLSEXT_ERR_OK;
  }
  return SSL_TLSEXT_ERR_NOACK;
}

// The TLS 1.2 suites etcd's --listen-cipher-suites takes (Go's names, as
// etcd's tlsutil lists them; the ChaCha20 ones also with Go's newer
// "_SHA256" spelling), with OpenSSL's names.
constexpr std::pair<absl::string_view, const char*> kCipherSuites[] = {
    {"TLS_RSA_WITH_RC4_128_SHA", "RC4-SHA"},
    {"TLS_RSA_WITH_3DES_EDE_CBC_SHA", "DES-CBC3-SHA"},
    {"TLS_RSA_WITH_AES_128_CBC_SHA", "AES128-SHA"},
    {"TLS_RSA_WITH_AES_256_CBC_SHA", "AES256-SHA"},
    {"TLS_RSA_WITH_AES_128_CBC_SHA256", "AES128-SHA256"},
    {"TLS_RSA_WITH_AES_128_GCM_SHA256", "AES128-GCM-SHA256"},
    {"TLS_RSA_WITH_AES_256_GCM_SHA384", "AES256-GCM-SHA384"},
    {"TLS_ECDHE_ECDSA_WITH_RC4_128_SHA", "ECDHE-ECDSA-RC4-SHA"},
    {"TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA", "ECDHE-ECDSA-AES128-SHA"},
    {"TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA", "ECDHE-ECDSA-AES256-SHA"},
    {"TLS_ECDHE_RSA_WITH_RC4_128_SHA", "ECDHE-RSA-RC4-SHA"},
    {"TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA", "ECDHE-RSA-DES-CBC3-SHA"},
    {"TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA", "ECDHE-RSA-AES128-SHA"},
    {"TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA", "ECDHE-RSA-AES256-SHA"},
    {"TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256", "ECDHE-ECDSA-AES128-SHA256"},
    {"TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256", "ECDHE-RSA-AES128-SHA256"},
    {"TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "ECDHE-RSA-AES128-GCM-SHA256"},
    {"TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "ECDHE-ECDSA-AES128-GCM-SHA256"},
    {"TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", "ECDHE-RSA-AES256-GCM-SHA384"},
    {"TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", "ECDHE-ECDSA-AES256-GCM-SHA384"},
    {"TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305", "ECDHE-RSA-CHACHA20-POLY1305"},
    {"TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305", "ECDHE-ECDSA-CHACHA20-POLY1305"},
    {"TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256", "ECDHE-RSA-CHACHA20-POLY1305"},
    {"TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305"},
};

// Restricts `ctx`'s TLS 1.2 suites to `go_names` (see ServerTlsOptions).
absl::Status SetCipherSuites(SSL_CTX* ctx, const std::vector<std::string>& go_names) {
  std::string list;
  for (const std::string& go_name : go_names) {
    const auto* known = std::find_if(std::begin(kCipherSuites), std::end(kCipherSuites),
                                     [&](const auto& suite) { return suite.first == go_name; });
    if (known == std::end(kCipherSuites)) {
      return absl::InvalidArgumentError(
          absl::StrCat("unexpected TLS cipher suite \"", go_name, "\""));
    }
    // One at a time, so a suite this OpenSSL lacks is named, not skipped.
    if (SSL_CTX_set_cipher_list(ctx, known->second) != 1) {
      ERR_clear_error();
      return absl::InvalidArgumentError(absl::StrCat("--listen-cipher-suites: TLS cipher suite \"",
                                                     go_name, "\" is not available in ",
                                                     OpenSSL_version(OPENSSL_VERSION)));
    }
    absl::StrAppend(&list, list.empty() ? "" : ":", known->second);
  }
  if (SSL_CTX_set_cipher_list(ctx, list.c_str()) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--listen-cipher-suites: ", TakeOpenSslError("no usable cipher suite")));
  }
  return absl::OkStatus();
}

// What both sides' contexts share: TLS 1.2 at least (etcd's minimum), no
// renegotiation (it only serves attacks here), and the way the
// TlsTerminator and the frame relay read and write.
void SetStreamModes(SSL_CTX* ctx) {
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION);
  // Idle connections keep no read/write buffers; writes take what they can
  // (partial writes), from a buffer that may grow and move between tries.
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                            SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  // Read what the socket has in one read(2), not a record header and then
  // its body: a busy connection's records arrive many at once.
  SSL_CTX_set_read_ahead(ctx, 1);
  SSL_CTX_set_default_read_buffer_len(ctx, 64 * 1024);
}

// Installs `pair` (the leaf, its chain, the key) as `ctx`'s own; the failed
// step's name otherwise.
const char* UseKeyPair(SSL_CTX* ctx, const KeyPair& pair) {
  if (SSL_CTX_use_certificate(ctx, pair.chain.front().get()) != 1) return "certificate";
  for (size_t i = 1; i < pair.chain.size(); ++i) {
    if (SSL_CTX_add1_chain_cert(ctx, pair.chain[i].get()) != 1) return "certificate chain";
  }
  if (SSL_CTX_use_PrivateKey(ctx, pair.key.get()) != 1) return "private key";
  return nullptr;
}

absl::Status UpstreamSslError(absl::string_view what) {
  return absl::InternalError(
      absl::StrCat("TLS to etcd: ", what, ": ", TakeOpenSslError("OpenSSL error")));
}

absl::Status SslContextError(absl::string_view what) {
  return absl::InternalError(
      absl::StrCat("TLS listener: ", what, ": ", TakeOpenSslError("OpenSSL error")));
}

}  // namespace

absl::StatusOr<std::shared_ptr<SSL_CTX>> MakeServerSslContext(const ServerTlsOptions& options) {
  if (!ServerTlsEnabled(options)) {
    return absl::InvalidArgumentError(
        "TLS listener: no --cert-file, --key-file, "
        "--trusted-ca-file or --auto-tls");
  }
  const bool files_given =
      !options.cert_file.empty() || !options.key_file.empty() || !options.trusted_ca_file.empty();
  absl::StatusOr<KeyPair> pair;
  std::vector<X509Ptr> trusted_cas;  // empty: client certificates not asked for
  if (!files_given) {
    // Like etcd, --auto-tls applies only when no listener file is given.
    pair = LoadOrCreateAutoTls(options);
  } else {
    if (options.cert_file.empty() || options.key_file.empty()) {
      return MissingPairError(options.key_file, options.cert_file);
    }
    pair = LoadKeyPair({"--cert-file", options.cert_file}, {"--key-file", options.key_file});
    if (pair.ok() && !options.trusted_ca_file.empty()) {
      absl::StatusOr<std::vector<X509Ptr>> cas =
          LoadCertificates({"--trusted-ca-file", options.trusted_ca_file});
      if (!cas.ok()) return cas.status();
      trusted_cas = *std::move(cas);
    }
  }
  if (!pair.ok()) return pair.status();

  std::unique_ptr<SSL_CTX, SslCtxFree> ctx(SSL_CTX_new(TLS_server_method()));
  if (ctx == nullptr) return SslContextError("SSL_CTX_new");
  SetStreamModes(ctx.get());
  // A client closing without close_notify (Go's often do) has ended, not
  // failed: what it sent is still delivered.
  SSL_CTX_set_options(ctx.get(), SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_IGNORE_UNEXPECTED_EOF);
  if (const char* failed = UseKeyPair(ctx.get(), *pair); failed != nullptr) {
    return SslContextError(failed);
  }

  if (!trusted_cas.empty()) {
    X509_STORE* store = SSL_CTX_get_cert_store(ctx.get());
    for (const X509Ptr& ca : trusted_cas) {
      if (X509_STORE_add_cert(store, ca.get()) != 1) return SslContextError("trusted CA");
      // Named in the handshake's CertificateRequest, as Go's server does.
      if (SSL_CTX_add_client_CA(ctx.get(), ca.get()) != 1) return SslContextError("trusted CA");
    }
    SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  }
  if (!options.client_crl_file.empty()) {
    if (absl::Status s = InstallClientCrl(ctx.get(), options.client_crl_file); !s.ok()) return s;
  }
  if (!options.cipher_suites.empty()) {
    if (absl::Status s = SetCipherSuites(ctx.get(), options.cipher_suites); !s.ok()) return s;
  }
  // Without one, OpenSSL fails the handshake of a client that resumes a
  // session (a TLS 1.3 ticket) while client certificates are verified.
  static constexpr unsigned char kSessionContext[] = "keel-grpc-proxy";
  SSL_CTX_set_session_id_context(ctx.get(), kSessionContext, sizeof(kSessionContext) - 1);
  SSL_CTX_set_alpn_select_cb(ctx.get(), SelectAlpn, nullptr);
  return std::shared_ptr<SSL_CTX>(ctx.release(), SslCtxFree());
}

bool ClientTlsEnabled(const ClientTlsOptions& options) {
  return !options.cert.empty() || !options.key.empty() || !options.cacert.empty() ||
         options.insecure_skip_verify || options.tls_endpoints;
}

namespace {

// --cert/--key for the connections to etcd, checked; empty without them.
absl::StatusOr<KeyPair> LoadUpstreamKeyPair(const ClientTlsOptions& options) {
  if (options.cert.empty() != options.key.empty()) {
    return MissingPairError(options.key, options.cert);
  }
  if (options.cert.empty()) return KeyPair{};
  absl::StatusOr<KeyPair> pair = LoadKeyPair({"--cert", options.cert}, {"--key", options.key});
  if (!pair.ok()) return pair.status();
  // etcd 3.4 transport (TLSInfo.EmptyCN): with --client-cert-auth etcd would
  // take this CN as the user of every client behind the proxy (#9521).
  if (std::string cn = CommonName(pair->chain.front().get()); !cn.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("cert has non empty Common Name (", cn, ")"));
  }
  return pair;
}

}  // namespace

absl::StatusOr<std::shared_ptr<SSL_CTX>> MakeClientSslContext(const ClientTlsOptions& options) {
  absl::StatusOr<KeyPair> pair = LoadUpstreamKeyPair(options);
  if (!pair.ok()) return pair.status();
  std::vector<X509Ptr> cas;
  if (!options.cacert.empty()) {
    absl::StatusOr<std::vector<X509Ptr>> loaded = LoadCertificates({"--cacert", options.cacert});
    if (!loaded.ok()) return loaded.status();
    cas = *std::move(loaded);
  }
  std::unique_ptr<SSL_CTX, SslCtxFree> ctx(SSL_CTX_new(TLS_client_method()));
  if (ctx == nullptr) return UpstreamSslError("SSL_CTX_new");
  SetStreamModes(ctx.get());  // as on the listener: the relay writes the same way to both
  if (!pair->chain.empty()) {
    if (const char* failed = UseKeyPair(ctx.get(), *pair); failed != nullptr) {
      return UpstreamSslError(failed);
    }
  }
  if (options.insecure_skip_verify) {
    SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_NONE, nullptr);
  } else {
    if (cas.empty()) {
      if (SSL_CTX_set_default_verify_paths(ctx.get()) != 1) {
        return UpstreamSslError("system CA certificates");
      }
    } else {
      X509_STORE* store = SSL_CTX_get_cert_store(ctx.get());
      for (const X509Ptr& ca : cas) {
        if (X509_STORE_add_cert(store, ca.get()) != 1) return UpstreamSslError("--cacert");
      }
    }
    SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
  }
  static constexpr unsigned char kAlpn[] = {2, 'h', '2'};
  if (SSL_CTX_set_alpn_protos(ctx.get(), kAlpn, sizeof(kAlpn)) != 0) {
    return UpstreamSslError("ALPN");
  }
  return std::shared_ptr<SSL_CTX>(ctx.release(), SslCtxFree());
}

bool ConfigureUpstreamSsl(SSL* ssl, const std::string& host) {
  bool ok = true;
  if (IsIpLiteral(host)) {
    ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host.c_str()) == 1;
  } else {
    ok = SSL_set_tlsext_host_name(ssl, host.c_str()) == 1 && SSL_set1_host(ssl, host.c_str()) == 1;
  }
  ERR_clear_error();
  return ok;
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(
    const ClientTlsOptions& options) {
  if (!ClientTlsEnabled(options)) return grpc::InsecureChannelCredentials();
  absl::StatusOr<KeyPair> loaded = LoadUpstreamKeyPair(options);
  if (!loaded.ok()) return loaded.status();
  KeyPair pair = *std::move(loaded);
  std::string ca_pem;
  if (!options.cacert.empty()) {
    absl::StatusOr<std::string> ca = LoadCa({"--cacert", options.cacert});
    if (!ca.ok()) return ca.status();
    ca_pem = *std::move(ca);
  }
  if (!options.insecure_skip_verify) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = ca_pem;  // empty: gRPC's default (system) roots
    ssl.pem_private_key = pair.key_pem;
    ssl.pem_cert_chain = pair.cert_pem;
    return grpc::SslCredentials(ssl);
  }
  // --insecure-skip-tls-verify: no chain and no host name check, but still
  // present our client certificate if one was given.
  grpc::experimental::TlsChannelCredentialsOptions tls;
  if (!pair.cert_pem.empty() || !ca_pem.empty()) {
    std::vector<grpc::experimental::IdentityKeyCertPair> identity;
    if (!pair.cert_pem.empty()) identity.push_back({pair.key_pem, pair.cert_pem});
    tls.set_certificate_provider(
        std::make_shared<grpc::experimental::StaticDataCertificateProvider>(ca_pem, identity));
    if (!ca_pem.empty()) tls.watch_root_certs();
    if (!identity.empty()) tls.watch_identity_key_cert_pairs();
  }
  tls.set_verify_server_certs(false);
  tls.set_check_call_host(false);
  tls.set_certificate_verifier(std::make_shared<grpc::experimental::NoOpCertificateVerifier>());
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::experimental::TlsCredentials(tls);
  if (creds == nullptr) {
    return absl::InvalidArgumentError("--insecure-skip-tls-verify: cannot build TLS credentials");
  }
  return creds;
}

}  // namespace keel::proxy::grpcproxy
