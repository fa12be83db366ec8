#pragma once

#include <string>
#include <vector>

#include "tests/testutil/process.h"

namespace keel::testutil {

// A certificate and its private key, both PEM files.
struct CertKeyFiles {
  std::string cert;
  std::string key;
};

// What a leaf certificate made by TestPki looks like.
struct CertSpec {
  // Subject Common Name; empty gives a subject with only O=keel-test and no
  // CN (what an upstream client certificate of the grpc-proxy must be).
  std::string common_name;
  // subjectAltName entries in openssl syntax ("IP:127.0.0.1", "DNS:localhost").
  std::vector<std::string> sans = {"IP:127.0.0.1", "DNS:localhost"};
};

// A throwaway PKI made with the `openssl` CLI in its own TempDir: one CA and
// any number of EC P-256 leaf certificates, each valid for two days, with
// serverAuth and clientAuth usage (so one pair serves either side). Every file
// is removed with the object. Thread-compatible.
//
// Errors (openssl missing or failing) do not throw: ok() turns false, error()
// says why, and the failed call returns empty paths. Tests should
// `ASSERT_TRUE(pki.ok()) << pki.error();` after setting up.
class TestPki {
 public:
  // Creates the CA (subject CN=keel-test-ca).
  TestPki();
  TestPki(const TestPki&) = delete;
  TestPki& operator=(const TestPki&) = delete;

  bool ok() const { return error_.empty(); }
  const std::string& error() const { return error_; }
  // The CA certificate (PEM), for --trusted-ca-file / --cacert.
  const std::string& ca_file() const { return ca_.cert; }
  // The directory holding every file; also a place for a test's own files.
  const TempDir& dir() const { return dir_; }

  // Issues a leaf certificate signed by the CA, written as <name>.pem and
  // <name>-key.pem. REQUIRES: `name` is a plain file name, unique per object.
  CertKeyFiles Issue(const std::string& name, const CertSpec& spec = {});
  // A self-signed leaf certificate not issued by the CA (an "untrusted" peer).
  CertKeyFiles IssueSelfSigned(const std::string& name, const CertSpec& spec = {});
  // A certificate revocation list signed by the CA listing `revoked` (files
  // Issue() made), written as <name>.crl (PEM, or DER with `der`); returns
  // its path. REQUIRES: `name` is a plain file name, unique per object.
  std::string WriteCrl(const std::string& name, const std::vector<CertKeyFiles>& revoked,
                       bool der = false);

 private:
  // Runs openssl with `args`; on failure records the error and returns false.
  bool OpenSsl(const std::vector<std::string>& args);
  // Writes an openssl config with the leaf's x509v3 section; returns its path.
  std::string WriteLeafConfig(const std::string& name, const CertSpec& spec);

  TempDir dir_;
  std::string error_;
  CertKeyFiles ca_;
  int next_serial_ = 1;
};

}  // namespace keel::testutil
