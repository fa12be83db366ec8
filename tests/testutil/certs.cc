#include "tests/testutil/certs.h"

#include <fstream>

namespace keel::testutil {
namespace {

constexpr char kCurve[] = "ec_paramgen_curve:prime256v1";
// `openssl req` needs a [req] section; the subject always comes from -subj.
constexpr char kReqSection[] = "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\n";

std::string Subject(const CertSpec& spec) {
  std::string subject = "/O=keel-test";
  if (!spec.common_name.empty()) subject += "/CN=" + spec.common_name;
  return subject;
}

}  // namespace

TestPki::TestPki() {
  ca_ = {dir_.File("ca.pem"), dir_.File("ca-key.pem")};
  std::string config = dir_.File("ca.cnf");
  std::ofstream(config) << kReqSection
                        << "[v3_ca]\n"
                           "basicConstraints = critical, CA:TRUE\n"
                           "keyUsage = critical, keyCertSign, cRLSign, digitalSignature\n"
                           "subjectKeyIdentifier = hash\n";
  OpenSsl({"req", "-x509", "-newkey", "ec", "-pkeyopt", kCurve, "-nodes", "-keyout", ca_.key,
           "-out", ca_.cert, "-days", "2", "-subj", "/O=keel-test/CN=keel-test-ca", "-config",
           config, "-extensions", "v3_ca"});
}

std::string TestPki::WriteLeafConfig(const std::string& name, const CertSpec& spec) {
  std::string path = dir_.File(name + ".cnf");
  std::ofstream out(path);
  out << kReqSection
      << "[v3_leaf]\n"
         "basicConstraints = critical, CA:FALSE\n"
         "keyUsage = critical, digitalSignature, keyEncipherment\n"
         "extendedKeyUsage = serverAuth, clientAuth\n";
  if (!spec.sans.empty()) {
    out << "subjectAltName = ";
    for (size_t i = 0; i < spec.sans.size(); ++i) out << (i ? ", " : "") << spec.sans[i];
    out << "\n";
  }
  return path;
}

CertKeyFiles TestPki::Issue(const std::string& name, const CertSpec& spec) {
  if (!ok()) return {};
  CertKeyFiles files{dir_.File(name + ".pem"), dir_.File(name + "-key.pem")};
  std::string csr = dir_.File(name + ".csr");
  std::string config = WriteLeafConfig(name, spec);
  if (!OpenSsl({"req", "-new", "-newkey", "ec", "-pkeyopt", kCurve, "-nodes", "-keyout", files.key,
                "-out", csr, "-subj", Subject(spec), "-config", config})) {
    return {};
  }
  if (!OpenSsl({"x509", "-req", "-in", csr, "-CA", ca_.cert, "-CAkey", ca_.key, "-set_serial",
                std::to_string(1000 + next_serial_++), "-days", "2", "-sha256", "-extfile", config,
                "-extensions", "v3_leaf", "-out", files.cert})) {
    return {};
  }
  return files;
}

CertKeyFiles TestPki::IssueSelfSigned(const std::string& name, const CertSpec& spec) {
  if (!ok()) return {};
  CertKeyFiles files{dir_.File(name + ".pem"), dir_.File(name + "-key.pem")};
  std::string config = WriteLeafConfig(name, spec);
  if (!OpenSsl({"req", "-x509", "-newkey", "ec", "-pkeyopt", kCurve, "-nodes", "-keyout", files.key,
                "-out", files.cert, "-days", "2", "-subj", Subject(spec), "-config", config,
                "-extensions", "v3_leaf"})) {
    return {};
  }
  return files;
}

std::string TestPki::WriteCrl(const std::string& name, const std::vector<CertKeyFiles>& revoked,
                              bool der) {
  if (!ok()) return "";
  // `openssl ca` keeps what it revoked in a database file of its own.
  const std::string database = dir_.File(name + ".index");
  const std::string config = dir_.File(name + "-crl.cnf");
  std::ofstream(database).flush();
  std::ofstream(config) << "[ca]\ndefault_ca = crl\n[crl]\ndatabase = " << database
                        << "\ndefault_md = sha256\ndefault_crl_days = 2\n";
  const std::vector<std::string> ca = {"-config", config, "-keyfile", ca_.key, "-cert", ca_.cert};
  for (const CertKeyFiles& files : revoked) {
    std::vector<std::string> args = {"ca"};
    args.insert(args.end(), ca.begin(), ca.end());
    args.insert(args.end(), {"-revoke", files.cert});
    if (!OpenSsl(args)) return "";
  }
  const std::string pem = dir_.File(name + ".crl.pem");
  std::vector<std::string> args = {"ca"};
  args.insert(args.end(), ca.begin(), ca.end());
  args.insert(args.end(), {"-gencrl", "-out", pem});
  if (!OpenSsl(args)) return "";
  const std::string path = dir_.File(name + ".crl");
  if (!OpenSsl({"crl", "-in", pem, "-outform", der ? "DER" : "PEM", "-out", path})) return "";
  return path;
}

bool TestPki::OpenSsl(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {"openssl"};
  argv.insert(argv.end(), args.begin(), args.end());
  CommandResult r = RunCommand(argv);
  if (r.exit_code == 0) return true;
  std::string cmd;
  for (const auto& a : argv) cmd += a + " ";
  error_ = "`" + cmd + "` exited " + std::to_string(r.exit_code) + ": " + r.err;
  return false;
}

}  // namespace keel::testutil
